"""benchmarks/trainer_jit.py's settings: a setting may name its backend (`jax:on`), so one run
compares the main job under each backend's own default."""

import pytest

from benchmarks.trainer_jit import SETTINGS, parse_args, split_setting

pytestmark = pytest.mark.backend_independent  # see tests/run.sh


def test_a_setting_names_its_backend_or_takes_the_default():
    assert split_setting("jax:on", "tensorflow") == ("jax", "on")
    assert split_setting("off", "torch") == ("torch", "off")
    args = parse_args(["--settings", "tensorflow:off, jax:on", "--backend", "torch"])
    assert args.settings == ["tensorflow:off", "jax:on"]
    assert [split_setting(s, args.backend)[1] for s in args.settings] == ["off", "on"]
    assert all(split_setting(s, args.backend)[1] in SETTINGS for s in args.settings)


@pytest.mark.parametrize("bad", ["mxnet:on", "jax:maybe", "fast"])
def test_an_unknown_backend_or_setting_is_refused_by_name(bad, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--settings", f"off,{bad}"])
    assert repr(bad) in capsys.readouterr().err


@pytest.mark.parametrize("argv, refused", [(["--settings", "jax:on,torch:on"], "torch:on"),
                                            (["--backend", "torch"], "on")])  # the default settings
def test_a_setting_the_trainer_refuses_is_refused_before_any_run(argv, refused, capsys):
    """A compiled step under torch (training/config.py, check_jit_compile), here as in kerasformer-train."""
    with pytest.raises(SystemExit):
        parse_args(argv)
    error = capsys.readouterr().err
    assert f"--settings: {refused!r}: jit_compile=true is not supported under KERAS_BACKEND=torch" in error
