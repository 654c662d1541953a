"""benchmarks/backend_step.py's settings and shapes, and the one list of backends that
tests/run.sh, the benchmarks and the tests share (`kerasformer.BACKENDS`)."""

import os
import re
import types

import pytest

from benchmarks import backend_step
from benchmarks.backend_step import CONFIG, parse_args, parse_setting, shapes
from kerasformer import BACKENDS

pytestmark = pytest.mark.backend_independent  # see tests/run.sh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_setting_is_a_backend_and_its_process_environment():
    assert parse_setting("jax") == ("jax", {})
    assert parse_setting("tensorflow:TF_NUM_INTEROP_THREADS=1") == ("tensorflow", {"TF_NUM_INTEROP_THREADS": "1"})
    # A value may itself hold '=' (XLA flags do); several variables are joined by ':'.
    assert parse_setting("jax:XLA_FLAGS=--xla_cpu_enable_fast_math=true:A=") == \
        ("jax", {"XLA_FLAGS": "--xla_cpu_enable_fast_math=true", "A": ""})
    assert parse_args(["--settings", "tensorflow, jax"]).settings == ["tensorflow", "jax"]
    assert parse_setting("torch:ALLOCATOR=glibc") == ("torch", {"ALLOCATOR": "glibc"})


def test_the_default_settings_are_the_packages_backends():
    assert parse_args([]).settings == list(BACKENDS)


@pytest.mark.parametrize("argv, says", [
    (["--steps", "0"], "--steps must be at least 1, not 0"),
    (["--settings", " , "], "name at least one"),
    (["--settings", "jax,tensorflow,jax"], "['jax'] given more than once"),
    (["--lengths", "8,x"], "--lengths '8,x': comma-separated whole numbers"),
])
def test_bad_arguments_are_refused_by_name(argv, says, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert says in capsys.readouterr().err


def test_the_step_clock_times_from_the_first_step_end_and_reads_each_loss(monkeypatch):
    ticks = iter([10.0, 10.5, 11.5, 13.0])
    monkeypatch.setattr(backend_step.time, "perf_counter", lambda: next(ticks))
    faults = iter([100, 150, 400, 700])  # the process's minor page faults at each step's end
    monkeypatch.setattr(backend_step.resource, "getrusage", lambda who: types.SimpleNamespace(ru_minflt=next(faults)))
    clock = backend_step.step_clock()()
    read = []

    class Loss:  # what the trainer's callbacks do with a step's loss: float() waits for it
        def __float__(self):
            read.append(True)
            return 1.0

    for batch in range(4):
        clock.on_train_batch_end(batch, {"loss": Loss()})
    assert (clock.steps, clock.seconds) == (3, 3.0)  # 10.0 (first step's end) to 13.0, three steps
    assert clock.page_faults == 600  # over the same three steps
    assert len(read) == 4


@pytest.mark.parametrize("bad, says", [("mxnet", "backend"), ("jax:FLAG", "NAME=VALUE"), ("jax:=1", "NAME=VALUE"),
                                       ("jax:ALLOCATOR=jemalloc", "ALLOCATOR must be one of ('trainer', 'kept', 'glibc')")])
def test_a_bad_setting_is_refused_by_name(bad, says, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--settings", f"tensorflow,{bad}"])
    error = capsys.readouterr().err
    assert repr(bad) in error and says in error


def test_the_shapes_are_the_main_jobs_buckets():
    from kerasformer.training.config import parse_args as parse_train_args

    config = parse_train_args(["--config", CONFIG])
    assert config.batch_tokens == 1024
    assert shapes(config, [8, 32, 96]) == [(8, 128), (32, 32), (96, 10)]
    with pytest.raises(SystemExit, match=r"\[30\].*buckets pad to \[8, 16"):
        shapes(config, [30])


def test_tests_run_sh_runs_the_backends_the_package_names():
    with open(os.path.join(ROOT, "tests", "run.sh"), encoding="utf-8") as file:
        default = re.search(r"\$\{KERASFORMER_BACKENDS:-([^}]*)\}", file.read()).group(1)
    assert tuple(default.split()) == BACKENDS
