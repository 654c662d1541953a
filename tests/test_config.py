import pytest

from kerasformer import PRESETS, TransformerConfig, preset

pytestmark = pytest.mark.backend_independent  # see tests/run.sh


def test_base_preset_is_the_papers_base_model():
    config = preset("base")
    assert (config.d_model, config.num_heads, config.d_ff, config.num_layers, config.dropout) == (512, 8, 2048, 6, 0.1)
    assert config.d_k == 64
    # P_drop where the paper applies it (section 5.4): sublayer outputs and embedding sums only.
    assert (config.attention_dropout, config.activation_dropout) == (0.0, 0.0)


def test_every_preset_is_valid_and_presets_grow():
    sizes = [preset(name).d_model for name in ("tiny", "small", "base", "big")]
    assert sizes == sorted(sizes) and set(PRESETS) == {"tiny", "small", "base", "big"}


def test_overrides_and_dict_round_trip():
    config = preset("small", source_vocab_size=123, norm_first=True)
    assert config.source_vocab_size == 123 and config.norm_first
    assert TransformerConfig.from_dict(config.to_dict()) == config
    assert config.replace(dropout=0.2).dropout == 0.2


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"d_model": 500, "num_heads": 8}, "d_model=500 is not divisible by num_heads=8"),
        ({"d_model": 9, "num_heads": 3}, "d_model=9 must be even"),
        ({"dropout": -0.1}, r"dropout=-0.1 must be in \[0, 1\)"),
        ({"dropout": 1.0}, r"dropout=1.0 must be in \[0, 1\)"),
        ({"max_target_length": 1}, "max_target_length=1 must be at least 2"),
        ({"num_layers": 0}, "num_layers=0 must be a positive integer"),
        ({"d_ff": "2048"}, "d_ff='2048' must be a positive integer"),
        ({"norm_first": "yes"}, "norm_first='yes' must be true or false"),
        ({"positional": "rotary"}, "positional='rotary' must be one of"),
        ({"num_heads": True}, "num_heads=True must be a positive integer"),
        ({"num_layers": 2.0}, "num_layers=2.0 must be a positive integer"),
        ({"dropout": float("nan")}, r"dropout=nan must be in \[0, 1\)"),
        ({"dropout": "0.1"}, r"dropout='0.1' must be in \[0, 1\)"),
        ({"attention_dropout": 1.0}, r"attention_dropout=1.0 must be in \[0, 1\)"),
        ({"activation_dropout": -0.5}, r"activation_dropout=-0.5 must be in \[0, 1\)"),
        ({"max_source_length": 1}, "max_source_length=1 must be at least 2"),
        ({"num_decoder_layers": 0}, r"num_decoder_layers=0 must be a positive integer \(or None"),
        ({"num_decoder_layers": 1.5}, "num_decoder_layers=1.5 must be a positive integer"),
    ],
)
def test_impossible_values_are_refused_naming_the_key(changes, message):
    with pytest.raises(ValueError, match=message):
        preset("tiny").replace(**changes)


def test_unknown_keys_and_presets_are_refused():
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['dmodel'\]"):
        TransformerConfig.from_dict({"dmodel": 3})
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        preset("huge")


def test_unknown_keys_of_mixed_types_are_named():
    # A YAML config can give number keys; naming them must not fail on sorting.
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \[1, 'x'\]"):
        TransformerConfig.from_dict({1: 2, "x": 3})


def test_decoder_depth_follows_num_layers_unless_given():
    assert preset("small").decoder_layers == 3
    assert preset("small", num_decoder_layers=1).decoder_layers == 1
    assert preset("small", num_decoder_layers=1).num_layers == 3
