"""The command lines (training/cli.py, training/progress.py): every flag's help shows its
default, `--version` everywhere from pyproject.toml, `--flag/--no-flag` booleans (the older
`--flag true` still read), `--log-level`, and progress reports on a terminal and in a log."""

import argparse
import io
import json
import logging
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib

import keras
import numpy as np
import pytest

import kerasformer

from kerasformer.export import exporter, session_check
from kerasformer.export.serving import client
from test_train import TINY, tiny_config
from kerasformer.training import config, evaluate, progress, train
from kerasformer.training.callbacks import TrainingProgress
from kerasformer.training.cli import configure, package_version
from kerasformer.training.progress import Progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARSERS = {  # the console scripts of pyproject.toml, and session_check
    "kerasformer-train": config.make_parser,
    "kerasformer-evaluate": evaluate.make_parser,
    "kerasformer-export": exporter.make_parser,
    "kerasformer-translate": client.make_parser,
    "session_check": session_check.make_parser,
}
MAINS = {"kerasformer-train": train.main, "kerasformer-evaluate": evaluate.main,
         "kerasformer-export": exporter.main, "kerasformer-translate": client.main,
         "session_check": session_check.main}


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture(autouse=True)
def package_log_level():
    """A command's `configure` sets the package loggers' level: each test starts and ends unset."""
    logger = logging.getLogger("kerasformer")
    before = logger.level
    logger.setLevel(logging.NOTSET)
    yield
    logger.setLevel(before)


@pytest.fixture
def fake_clock(monkeypatch):
    """Progress's clock, one second later at each reading; terminals redrawn at every update
    and 200 columns wide."""
    seconds = iter(range(10**6))
    monkeypatch.setattr(progress, "clock", lambda: float(next(seconds)))
    monkeypatch.setattr(progress, "REDRAW_SECONDS", 0)
    monkeypatch.setenv("COLUMNS", "200")


@pytest.fixture
def progress_log(caplog):
    """Progress reports enabled (INFO), as every command's default --log-level makes them."""
    caplog.set_level(logging.INFO, logger="kerasformer.progress")
    return caplog


def help_entries(parser):
    """{first option (or positional name): its help text, whitespace collapsed} of `--help`."""
    entries, current = {}, None
    for line in parser.format_help().splitlines():
        match = re.match(r"  (\S+)", line)
        if match:
            current = match.group(1).rstrip(",")
            entries[current] = line
        elif current and line.startswith("    "):
            entries[current] += line
        else:
            current = None
    return {name: " ".join(text.split()) for name, text in entries.items()}


@pytest.mark.parametrize("command", PARSERS)
def test_every_flag_has_help_with_its_default(command):
    parser = PARSERS[command]()
    entries = help_entries(parser)
    for action in parser._actions:
        if argparse.SUPPRESS in (action.help, action.default) or action.required:  # no default to show
            continue
        name = (action.option_strings or [action.dest])[0]
        assert name in entries, f"{command}: {name} is missing from --help"
        assert "default" in entries[name], f"{command}: {name} has no default in its help: {entries[name]!r}"


def test_help_shows_the_real_defaults():
    entries = help_entries(config.make_parser())
    assert "(default: 30)" in entries["--epochs"] and "(default: 'small')" in entries["--preset"]
    assert "--jit-compile, --no-jit-compile" in entries["--jit-compile"] and "(default: auto)" in entries["--jit-compile"]
    entries = help_entries(exporter.make_parser())
    assert f"(default: {exporter.BEAM_SIZE})" in entries["--beam-size"]
    assert "(default: the next free one)" in entries["--model-version"]


@pytest.mark.parametrize("command", MAINS)
def test_version_everywhere_is_the_one_written_in_the_package(command, capsys):
    """`kerasformer.__version__` is the one place; pyproject.toml reads it (dynamic), so the
    installed metadata says the same."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as file:
        project = tomllib.load(file)
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "kerasformer.__version__"}
    version = kerasformer.__version__
    assert package_version() == version == importlib.metadata.version("kerasformer")
    with pytest.raises(SystemExit) as exit:
        MAINS[command](["--version"])
    assert exit.value.code in (0, None)
    out = capsys.readouterr().out
    assert out.endswith(f" {version}\n") and out.count("\n") == 1, out
    if command != "session_check":  # named after the file it runs as
        assert out == f"{command} {version}\n"


@pytest.mark.backend_independent  # a version string: the same under every backend
def test_the_version_of_a_fresh_process():
    result = subprocess.run([sys.executable, "-m", "kerasformer.export.serving.client", "--version"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout == f"kerasformer-translate {package_version()}\n", result


def test_model_flag_changes_the_config_files_model_table_setting_by_setting(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('model = { norm_first = true, dropout = 0.0, num_decoder_layers = 1 }\n')
    assert config.parse_args(["--config", str(path), "--model", '{"dropout": 0.1}']).model == {
        "norm_first": True, "dropout": 0.1, "num_decoder_layers": 1}
    assert config.parse_args(["--config", str(path)]).model == {"norm_first": True, "dropout": 0.0,
                                                                "num_decoder_layers": 1}
    assert config.parse_args(["--model", '{"dropout": 0.1}']).model == {"dropout": 0.1}  # no file: the flag's table
    shipped = config.parse_args(["--config", os.path.join(ROOT, "training", "configs", "small_en_es.toml"),
                                 "--model", '{"num_layers": 3}']).model_config(4000, 4000)
    assert (shipped.num_layers, shipped.num_decoder_layers, shipped.norm_first) == (3, 2, True)


def test_booleans_take_flag_and_no_flag(tmp_path, capsys):
    path = tmp_path / "run.toml"
    path.write_text("skip_malformed = true\n")
    assert config.parse_args(["--jit-compile"]).jit_compile is True
    assert config.parse_args(["--jit-compile", "--no-jit-compile"]).jit_compile is False
    assert config.parse_args(["--config", str(path)]).skip_malformed is True
    assert config.parse_args(["--config", str(path), "--no-skip-malformed"]).skip_malformed is False
    assert config.parse_args([]).jit_compile == "auto"
    # auto: compiled under JAX and TensorFlow (training/config.py, TrainConfig.compiled)
    assert config.parse_args([]).compiled is (keras.backend.backend() in ("jax", "tensorflow"))
    assert capsys.readouterr().err == ""
    assert exporter.make_parser().parse_args(["run", "--no-warmup"]).warmup is False
    assert exporter.make_parser().parse_args(["run"]).warmup is True
    assert client.make_parser().parse_args(["--beam", "hi"]).beam is True
    assert session_check.make_parser().parse_args(["dir", "--warmup"]).warmup is True


def test_the_older_boolean_spelling_still_works_with_a_note(capsys):
    assert config.parse_args(["--jit-compile", "true"]).jit_compile is True  # README, training/distribute.py
    assert "'--jit-compile true' is deprecated; write --jit-compile" in capsys.readouterr().err
    assert config.parse_args(["--skip-malformed", "no"]).skip_malformed is False
    assert "write --no-skip-malformed" in capsys.readouterr().err
    for argv, problem in ((["--skip-malformed", "maybe"], "'maybe' is not one of"),
                          (["--no-jit-compile", "true"], "--no-jit-compile takes no value")):
        with pytest.raises(SystemExit) as exit:
            config.parse_args(argv)
        assert exit.value.code == 2 and problem in capsys.readouterr().err


@pytest.mark.parametrize("make_parser, before", [(exporter.make_parser, ["run"]), (client.make_parser, [])])
def test_model_version_and_its_older_spelling(make_parser, before, capsys):
    assert make_parser().parse_args(before + ["--model-version", "3"]).model_version == 3
    assert make_parser().parse_args(before).model_version is None
    assert capsys.readouterr().err == ""
    assert make_parser().parse_args(before + ["--version", "4"]).model_version == 4
    assert "'--version 4' is deprecated; write '--model-version 4'" in capsys.readouterr().err


def test_a_bad_setting_is_one_line_not_a_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        train.main(["--run-dir", str(tmp_path / "run"), "--epochs", "0"])
    assert exit.value.code == 2
    assert capsys.readouterr().err == "kerasformer-train: error: epochs=0 must be a positive integer\n"
    assert not (tmp_path / "run").exists()


def test_log_level(capsys):
    parser = evaluate.make_parser()
    package_logger = logging.getLogger("kerasformer")
    configure(parser.parse_args(["run", "--log-level", "WARNING"]))
    assert package_logger.level == logging.WARNING and not Progress("x").enabled
    configure(parser.parse_args(["run", "--log-level", "info"]))
    assert package_logger.level == logging.INFO and Progress("x").enabled
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--log-level", "loud"])
    assert "invalid choice: 'loud'" in capsys.readouterr().err


def test_progress_on_a_terminal_is_one_line_redrawn(fake_clock, progress_log):
    terminal = Terminal()
    with Progress("epoch 1/3", total=4, rates={"tokens/s": 100}, stream=terminal) as report:
        for step in range(1, 5):
            report.update(step, {"loss": 5.0 - step})
    frames = terminal.getvalue().split("\r")[1:]
    assert len(frames) == 5 and terminal.getvalue().endswith("\n") and terminal.getvalue().count("\n") == 1
    # One reading of the clock per update: one step a second from the first update on.
    assert frames[1].startswith("epoch 1/3  [##########----------]  2/4 steps  50%  loss 3  100 tokens/s")
    assert "0:02 left" in frames[1]
    assert frames[-1].startswith("epoch 1/3  [####################]  4/4 steps in ")
    assert not progress_log.records  # a terminal gets the bar, not log lines


def test_progress_in_a_log_is_a_line_every_interval(fake_clock, progress_log, monkeypatch):
    monkeypatch.setattr(progress, "EVERY_SECONDS", 3)
    with Progress("decoding", total=10, unit="sentences", stream=io.StringIO()) as report:
        for _ in range(10):
            report.advance()
    lines = [record.getMessage() for record in progress_log.records]
    assert lines[0].startswith("decoding: 3/10 sentences, 30%,") and lines[0].endswith("left")
    assert lines[-1].startswith("decoding: 10/10 sentences in ")
    assert len(lines) == 4  # at 3, 6 and 9 seconds, and the end


def test_progress_is_silent_when_logging_is_not_configured(fake_clock):
    terminal = Terminal()
    with Progress("quiet", total=2, stream=terminal) as report:
        report.advance(2)
    assert terminal.getvalue() == ""


def test_training_progress_callback_on_a_terminal(fake_clock, progress_log):
    terminal = Terminal()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.ones((16, 3), "float32"), np.zeros((16, 1), "float32")
    callback = TrainingProgress(epochs=2, steps_per_epoch=4, tokens_per_step=100, stream=terminal)
    model.fit(x, y, batch_size=4, epochs=2, validation_data=(x, y), callbacks=[callback], verbose=0)
    epochs = terminal.getvalue().split("\n")[:-1]
    assert len(epochs) == 2
    for number, text in enumerate(epochs, 1):
        frames = text.split("\r")[1:]
        assert frames[0].startswith(f"epoch {number}/2  [#####---------------]  1/4 steps  25%  loss ")
        assert "tokens/s" in frames[2] and "left" in frames[2]
        assert frames[-1].startswith(f"epoch {number}/2  [####################]  4/4 steps in ")
        assert "val_loss" in frames[-1]


# The progress lines come from our callbacks and Progress, the same code on every backend
# (two processes, ~40 s under JAX): run once, in the first backend pass.
@pytest.mark.backend_independent
def test_training_and_evaluation_report_progress_in_a_log(tmp_path):
    """kerasformer-train and kerasformer-evaluate with stderr in a file: log lines, not a bar."""
    run = tiny_config(tmp_path / "run", epochs=1)
    flags = [item for key, value in TINY.items() for item in ("--" + key.replace("_", "-"), str(value))]
    environment = {**os.environ, "PYTHONPATH": ROOT}

    def command(module, *args):
        with open(tmp_path / "log.txt", "w+") as log:  # a file: stderr is not a terminal
            result = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=environment, stderr=log,
                                    stdout=subprocess.PIPE, text=True, timeout=600)
            log.seek(0)
            text = log.read()
        assert result.returncode == 0, text[-3000:]
        return result.stdout, [line.split(" INFO ", 1)[1] for line in text.splitlines() if " INFO kerasformer." in line]

    out, lines = command("kerasformer.training.train", *flags, "--run-dir", run.run_dir, "--validation-file", run.validation_file,
                         "--epochs", "1", "--progress-seconds", "0")
    steps = int(re.search(r"(\d+) steps per epoch", out).group(1))
    assert json.loads(out[out.index("{"):])["epochs_run"] == 1
    assert "kerasformer.train: source tokenizer: training SentencePiece on 200 sentences (vocabulary_size 300)" in lines
    assert any(line.startswith("kerasformer.train: target tokenizer: ") for line in lines)
    assert any(line.startswith(f"kerasformer.progress: counting one epoch of training batches: {steps} batches in ")
               for line in lines)
    epoch = [line for line in lines if line.startswith("kerasformer.progress: epoch 1/1: ")]
    assert len(epoch) == steps + 1  # --progress-seconds 0: a line a step, and the epoch's
    for step, line in enumerate(epoch[:-1], 1):
        assert f": {step}/{steps} steps, " in line and ", loss " in line, line
        if step > 1:
            assert " tokens/s, " in line and line.endswith(" left"), line
    assert f": {steps}/{steps} steps in " in epoch[-1] and ", val_loss " in epoch[-1]

    _, lines = command("kerasformer.training.evaluate", run.run_dir, "--file", run.validation_file, "--beam-size", "1",
                       "--examples", "0", "--progress-seconds", "0")
    assert any(line.startswith("kerasformer.progress: greedy decoding: 60/60 sentences in ") for line in lines), lines
