import numpy as np
import pytest
import reference
from conftest import layer_model, numpy, round_trip
from gradients import fused_and_plain, variable_gradients
from keras import ops

from kerasformer import FeedForward


def random(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


@pytest.mark.parametrize("fused", [True, False])
def test_feed_forward_matches_equation_2(fused):
    layer = FeedForward(d_ff=64, fused=fused)
    x = random(2, 5, 16)
    out = numpy(layer(x))
    assert out.shape == (2, 5, 16)
    assert layer.inner_dense.kernel.shape == (16, 64)
    np.testing.assert_allclose(out, reference.feed_forward(x, layer), atol=1e-5)


def test_applied_to_each_position_separately_and_identically():
    layer = FeedForward(d_ff=64)
    x = random(1, 5, 16)
    whole = numpy(layer(x))
    for t in range(5):
        np.testing.assert_allclose(numpy(layer(x[:, t : t + 1])), whole[:, t : t + 1], atol=1e-6)


def test_fused_path_equals_the_plain_path_forward_and_gradients():
    x = ops.convert_to_tensor(random(2, 5, 16))
    fused, plain = fused_and_plain(lambda fused: FeedForward(d_ff=64, fused=fused), x)
    np.testing.assert_allclose(numpy(fused(x)), numpy(plain(x)), atol=1e-5)
    weights = ops.convert_to_tensor(random(2, 5, 16, seed=1))
    fused_gradients = variable_gradients(fused.trainable_variables, lambda: ops.sum(fused(x) * weights))
    plain_gradients = variable_gradients(plain.trainable_variables, lambda: ops.sum(plain(x) * weights))
    assert len(plain_gradients) == 4  # W_1, b_1, W_2, b_2
    for fused_gradient, plain_gradient in zip(fused_gradients, plain_gradients):
        np.testing.assert_allclose(fused_gradient, plain_gradient, atol=1e-4)


@pytest.mark.parametrize("fused", [True, False])
def test_round_trip(tmp_path, fused):
    layer = FeedForward(d_ff=64, dropout=0.1, fused=fused)
    assert FeedForward.from_config(layer.get_config()).get_config() == layer.get_config()
    model = layer_model(layer, ((None, 16), "float32"))
    before, after, _ = round_trip(model, tmp_path, random(2, 5, 16))
    np.testing.assert_array_equal(before, after)
