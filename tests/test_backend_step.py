"""benchmarks/backend_step.py's settings and shapes, and the one list of backends that
tests/run.sh, the benchmarks and the tests share (`kerasformer.BACKENDS`)."""

import os
import re

import pytest

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


def test_a_count_below_one_is_refused(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--steps", "0"])
    assert "--steps must be at least 1, not 0" in capsys.readouterr().err


@pytest.mark.parametrize("bad, says", [("mxnet", "backend"), ("jax:FLAG", "NAME=VALUE"), ("jax:=1", "NAME=VALUE")])
def test_a_bad_setting_is_refused_by_name(bad, says, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--settings", f"tensorflow,{bad}"])
    error = capsys.readouterr().err
    assert repr(bad) in error and says in error


def test_the_shapes_are_the_main_jobs_buckets():
    from training.config import parse_args as parse_train_args

    config = parse_train_args(["--config", CONFIG])
    assert shapes(config, [8, 32, 96]) == [(8, config.batch_tokens // 8), (32, config.batch_tokens // 32),
                                           (96, config.batch_tokens // 96)]
    with pytest.raises(SystemExit, match=r"\[30\].*buckets pad to \[8, 16"):
        shapes(config, [30])


def test_tests_run_sh_runs_the_backends_the_package_names():
    with open(os.path.join(ROOT, "tests", "run.sh"), encoding="utf-8") as file:
        default = re.search(r"\$\{KERASFORMER_BACKENDS:-([^}]*)\}", file.read()).group(1)
    assert tuple(default.split()) == BACKENDS
