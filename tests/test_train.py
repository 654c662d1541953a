"""End to end: kerasformer.training.train on a few hundred pairs writes a complete run folder and
the run translates (also Chinese->English). Interrupted runs: tests/test_resume.py."""

import dataclasses
import gzip
import json
import math
import os
import types

import keras
import numpy as np
import pytest

from kerasformer.training import callbacks
from kerasformer.training.config import TrainConfig, check_jit_compile
from kerasformer.training.distribute import check_distribution
from kerasformer.training.evaluate import evaluate
from kerasformer.training.train import check_backend, main, parse_args, train
from kerasformer.training.translator import Translator

TINY = dict(preset="tiny", max_train_pairs=200, vocabulary_size=300, batch_tokens=512, warmup_steps=20, patience=50)
DEFAULT_CORPUS = os.path.join(os.path.dirname(__file__), os.pardir, "training", "corpus", "en-es")


def tiny_config(run_dir, **changes):
    """200 training pairs of the default corpus; 60 validation pairs."""
    validation = os.path.join(run_dir, "validation.tsv")
    if not os.path.exists(validation):
        with gzip.open(os.path.join(DEFAULT_CORPUS, "validation.tsv.gz"), "rt", encoding="utf-8") as file:
            lines = file.readlines()[:60]
        os.makedirs(run_dir, exist_ok=True)
        with open(validation, "w", encoding="utf-8") as file:
            file.writelines(lines)
    return TrainConfig(run_dir=str(run_dir), validation_file=validation, **{**TINY, **changes})


def test_run_folder_is_complete(tmp_path):
    metrics = train(tiny_config(tmp_path, epochs=2))
    for name in ("config.json", "best.keras", "last.keras", "metrics.json", "curves.png",
                 "tokenizers/source.model", "tokenizers/target.model", "tokenizers/target.vocab"):
        assert (tmp_path / name).exists(), name
    assert os.listdir(tmp_path / "logs")
    state = json.loads((tmp_path / "backup" / "state.json").read_text())
    assert state["finished"] == 2 and state["epoch"] == 2 and state["step"] == metrics["total_steps"]
    assert sorted(os.listdir(tmp_path / "backup")) == sorted(["state.json", state["weights"]])
    assert metrics["epochs_run"] == 2 and metrics["train_tokens_per_second"] > 0
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["train"]["preset"] == "tiny" and saved["model"]["d_model"] == 32
    assert set(metrics["history"]) >= {"loss", "val_loss", "masked_accuracy", "perplexity"}
    for name in ("val_loss", "val_perplexity"):
        assert metrics[f"best_{name}"] == round(min(metrics["history"][name]), 4) == round(state["lowest"][name], 4)
    assert metrics["best_model_by"] == state["monitor"] == "val_perplexity"
    translator = Translator.from_run(str(tmp_path))
    translations = translator.translate(["In the beginning.", "Jesus wept."])
    assert len(translations) == 2 and all(isinstance(t, str) for t in translations)
    source, target, weights = translator.cross_attention("Jesus wept.")
    assert weights.shape == (4, len(target), len(source))  # tiny preset: 4 heads
    np.testing.assert_allclose(weights.sum(-1), 1, atol=1e-5)
    png = translator.plot_attention("Jesus wept.", str(tmp_path / "attention.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.backend_independent  # the tokenizers' part; the model's sharing is tested per backend in test_model.py
def test_a_shared_vocabulary_run_has_one_tokenizer_and_one_embedding_matrix(tmp_path):
    train(tiny_config(tmp_path, epochs=1, shared_vocabulary=True))
    source, target = (tmp_path / "tokenizers" / name for name in ("source.model", "target.model"))
    assert source.read_bytes() == target.read_bytes()
    assert json.loads((tmp_path / "config.json").read_text())["model"]["share_embeddings"] is True
    translator = Translator.from_run(str(tmp_path))
    encoder, decoder = translator.model.get_layer("encoder"), translator.model.get_layer("decoder")
    assert encoder.embedding.embeddings is decoder.embedding.embeddings
    assert len(translator.translate(["Jesus wept."])) == 1
    with pytest.raises(ValueError, match="model.share_embeddings=True: the tokenizers decide it; set shared_vocabulary"):
        tiny_config(tmp_path / "other", model={"share_embeddings": True})
    target.write_bytes((tmp_path / "tokenizers" / "target.model").read_bytes() + b"x")  # no longer one tokenizer
    with pytest.raises(ValueError, match="holds two different tokenizers, and shared_vocabulary needs one"):
        train(tiny_config(tmp_path, epochs=2, shared_vocabulary=True))


def test_a_time_budget_decays_the_rate_to_zero_when_it_ends_and_keeps_its_clock_on_resume(tmp_path, monkeypatch):
    """learning_rate_schedule "auto" with a time budget is the budget schedule: warmup, then a
    decay that reaches 0 as the budget's time runs out; the rates used go to TensorBoard and
    curves.png; the time spent is saved, so a rerun of the same command has nothing left.
    The budget's clock is a fake one that moves a second each time it is read, so the test
    does not depend on how fast this machine trains (a loaded machine may spend a real
    36-second budget on the first step)."""
    clock = iter(range(10**6))
    monkeypatch.setattr(callbacks, "time", types.SimpleNamespace(monotonic=lambda: float(next(clock))))
    config = tiny_config(tmp_path, epochs=50, time_budget_minutes=0.6, warmup_steps=3, peak_learning_rate=0.002)
    assert config.schedule == "budget"
    metrics = train(config)
    assert metrics["stopped_by_time_budget"]
    state = json.loads((tmp_path / "backup" / "state.json").read_text())
    assert 36 <= state["seconds"] < 36 + 60  # checked at batch ends: an epoch end (validation, saves) may overrun it
    steps, rates = zip(*state["learning_rates"])
    assert list(steps) == sorted(steps) and steps[0] == 0
    # Each rate is budget_rate(step, f): the share of the budget spent, f, only grows (compiling
    # the first step may take much of a small budget) and the last step ran near the end.
    spent = [1 - rate / (0.002 * min(1.0, (step + 1) / 3)) for step, rate in zip(steps, rates)]
    assert all(0 <= f <= 1 for f in spent) and all(a <= b + 1e-9 for a, b in zip(spent, spent[1:])), spent
    assert spent[-1] > 0.7, spent[-5:]
    assert os.listdir(tmp_path / "logs" / "learning_rate")
    # The epoch the budget cut short was validated too: the lowest figures count it, history does not.
    for name in ("val_loss", "val_perplexity"):
        assert metrics[f"best_{name}"] == round(state["lowest"][name], 4)
        assert metrics[f"best_{name}"] <= min(metrics["history"].get(name, [math.inf]))
    again = train(config)
    assert again["total_steps"] == metrics["total_steps"]  # nothing left to train


@pytest.mark.parametrize("precision", ["mixed_bfloat16", pytest.param("mixed_float16", marks=pytest.mark.slow)])
def test_mixed_precision_trains_with_float32_loss(tmp_path, precision):
    metrics = train(tiny_config(tmp_path, epochs=1, precision=precision, max_train_pairs=60))
    model = keras.saving.load_model(str(tmp_path / "last.keras"))
    assert model.get_layer("decoder").dtype_policy.name == precision
    assert np.isfinite(metrics["history"]["loss"][0])
    assert keras.mixed_precision.dtype_policy().name == "float32"  # the global policy is untouched


@pytest.mark.backend_independent
def test_a_compiled_training_step_is_refused_under_torch_only():
    """torch.compile compiles the step again for every bucket's batch shape (training/config.py)."""
    for backend in ("tensorflow", "jax", "torch"):
        check_jit_compile(backend, False)
    for backend in ("tensorflow", "jax"):
        check_jit_compile(backend, True)
    with pytest.raises(ValueError, match=r"jit_compile=true is not supported under KERAS_BACKEND=torch: "
                                         r"torch.compile compiles .* every batch shape .* set jit_compile=false"):
        check_jit_compile("torch", True)


def test_auto_compiles_the_step_where_the_trainer_runs_faster_compiled():
    """`jit_compile = "auto"` (the default): compiled under JAX and TensorFlow, where the main job
    makes more steps compiled (benchmarks/README.md, "XLA in the trainer"), except TensorFlow's data-parallel step,
    which XLA cannot compile (training/distribute.py); eager under torch, which refuses a compiled
    step. An explicit setting is kept as written."""
    backend = keras.backend.backend()
    assert TrainConfig(preset="tiny").compiled is (backend in ("jax", "tensorflow"))
    data_parallel = TrainConfig(preset="tiny", distribution="data_parallel")
    assert data_parallel.compiled is (backend == "jax")
    if backend != "torch":  # where data-parallel runs, auto gives a setting it accepts
        check_distribution(data_parallel.distribution, backend, data_parallel.compiled)
    assert TrainConfig(preset="tiny", jit_compile=False).compiled is False
    assert TrainConfig(preset="tiny", jit_compile=True).compiled is True


def test_the_trainer_checks_jit_compile_where_training_starts(tmp_path, capsys):
    """Under torch a compiled step is refused before anything is written (the command: one line,
    exit 2); a config that asks for one still reads there (a JAX run is evaluated under torch).
    Elsewhere it is accepted."""
    config = TrainConfig(preset="tiny", run_dir=str(tmp_path / "run"), jit_compile=True)
    assert config.compiled
    if keras.backend.backend() == "torch":
        with pytest.raises(ValueError, match="jit_compile=true is not supported under KERAS_BACKEND=torch"):
            train(config)
        with pytest.raises(SystemExit) as exit:
            main(["--run-dir", str(tmp_path / "run"), "--preset", "tiny", "--jit-compile"])
        assert exit.value.code == 2
        error = capsys.readouterr().err
        assert error.startswith("kerasformer-train: error: jit_compile=true is not supported under KERAS_BACKEND=torch")
        assert error.count("\n") == 1 and "--no-jit-compile" in error
        assert not (tmp_path / "run").exists()
        check_backend(dataclasses.replace(config, jit_compile="auto"))  # eager under torch
    else:
        check_backend(config)


def test_flags_override_the_config_file_and_unknown_keys_are_refused(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('preset = "tiny"\nepochs = 7\n[model]\nnum_layers = 1\n')
    config = parse_args(["--config", str(path), "--epochs", "2"])
    assert (config.preset, config.epochs, config.model) == ("tiny", 2, {"num_layers": 1})
    path.write_text("epochz = 3\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['epochz'\]"):
        parse_args(["--config", str(path)])
    with pytest.raises(ValueError, match="d_model=30 is not divisible by num_heads=4"):
        TrainConfig(preset="tiny", model={"d_model": 30})


ZH_EN = [
    ("我爱你。", "I love you."), ("你好吗？", "How are you?"), ("我很好。", "I am fine."),
    ("他是学生。", "He is a student."), ("她是老师。", "She is a teacher."), ("我们是朋友。", "We are friends."),
    ("谢谢你。", "Thank you."), ("再见。", "Goodbye."),
]


def chinese_english_config(folder, pairs, epochs):
    """A tiny Chinese->English run on `pairs` (each 12 times): a 60-piece vocabulary (characters
    and short words), trained, validated and tested on the same TSV."""
    corpus = folder / "zh-en.tsv"
    corpus.write_text("".join(f"{zh}\t{en}\n" for zh, en in pairs * 12), encoding="utf-8")
    return TrainConfig(
        run_dir=str(folder / "run"), preset="tiny", train_file=str(corpus), validation_file=str(corpus),
        test_file=str(corpus), vocabulary_size=60, batch_tokens=256, epochs=epochs, warmup_steps=30, patience=100,
        label_smoothing=0.0, model={"dropout": 0.0},
    )


# 40 short epochs: about a minute under TensorFlow, more under JAX and torch. An end-to-end run,
# left to `-m slow` on every backend so that the default run stays within CI's time: there the
# course notes' direction is trained, exported and served by tests/test_attention_page.py, and
# Chinese round-trips through the tokenizers in tests/test_tokenizers.py.
@pytest.mark.slow
def test_chinese_to_english_trains_and_translates(tmp_path):
    config = chinese_english_config(tmp_path, ZH_EN, epochs=40)
    train(config)
    translator = Translator.from_run(config.run_dir)
    pieces = translator.source_tokenizer.tokenize("我们是朋友。")
    assert len(pieces) >= 3  # characters or subwords, not one whole-sentence word
    translations = translator.translate([zh for zh, _ in ZH_EN])
    correct = sum(t == en for t, (_, en) in zip(translations, ZH_EN))
    assert correct >= 6, translations
    scores, _ = evaluate(config.run_dir, split="test", examples=0)
    assert scores["bleu"] > 50
    assert scores["beam"]["beam_size"] == 4 and scores["beam"]["bleu"] > 50  # the paper's beam search
    for name in ("test.hyp.txt", "test.beam.hyp.txt"):
        assert len((tmp_path / "run" / "eval" / name).read_text(encoding="utf-8").splitlines()) == len(ZH_EN) * 12
