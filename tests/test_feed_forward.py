import numpy as np
import reference
from conftest import layer_model, numpy, round_trip

from kerasformer import FeedForward


def random(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def test_feed_forward_matches_equation_2():
    layer = FeedForward(d_ff=64)
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


def test_round_trip(tmp_path):
    layer = FeedForward(d_ff=64, dropout=0.1)
    assert FeedForward.from_config(layer.get_config()).get_config() == layer.get_config()
    model = layer_model(layer, ((None, 16), "float32"))
    before, after, _ = round_trip(model, tmp_path, random(2, 5, 16))
    np.testing.assert_array_equal(before, after)
