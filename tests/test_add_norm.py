import numpy as np
import pytest
import reference
from conftest import layer_model, numpy, round_trip

from kerasformer import AddNorm


def random(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def sublayer(x):
    return np.tanh(x) * 2.0 + 0.5  # any function stands for the sublayer


@pytest.mark.parametrize("norm_first", [False, True])
def test_add_norm_matches_reference(norm_first):
    layer = AddNorm(norm_first=norm_first)
    x = random(2, 5, 16) * 3 + 1
    out = numpy(layer(x, sublayer(numpy(layer.sublayer_input(x)))))
    np.testing.assert_allclose(out, reference.add_norm(x, sublayer, layer), atol=1e-5)


def test_post_norm_output_is_normalized_per_position():
    layer = AddNorm()
    out = numpy(layer(random(2, 5, 16) * 5, random(2, 5, 16, seed=1)))
    np.testing.assert_allclose(out.mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(-1), 1, atol=1e-3)


def test_pre_norm_keeps_the_residual_path_unnormalized():
    layer = AddNorm(norm_first=True)
    x = random(2, 5, 16) * 5
    np.testing.assert_allclose(numpy(layer(x, np.zeros_like(x))), x, atol=1e-6)


def test_residual_dropout_only_in_training():
    layer = AddNorm(dropout=0.5, norm_first=True)
    x, y = np.zeros((1, 4, 64), "float32"), np.ones((1, 4, 64), "float32")
    np.testing.assert_array_equal(numpy(layer(x, y)), y)
    assert (numpy(layer(x, y, training=True)) == 0).mean() > 0.2


@pytest.mark.parametrize("norm_first", [False, True])
def test_round_trip(tmp_path, norm_first):
    layer = AddNorm(dropout=0.1, norm_first=norm_first, epsilon=1e-5)
    assert AddNorm.from_config(layer.get_config()).get_config() == layer.get_config()
    model = layer_model(layer, ((None, 16), "float32"), ((None, 16), "float32"))
    before, after, _ = round_trip(model, tmp_path, [random(2, 5, 16), random(2, 5, 16, seed=1)])
    np.testing.assert_array_equal(before, after)
