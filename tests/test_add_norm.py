import keras
import numpy as np
import pytest
import reference
from conftest import layer_model, numpy, round_trip

from kerasformer import AddNorm


def random(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def sublayer(x):
    return np.tanh(x) * 2.0 + 0.5  # any function stands for the sublayer


def backend_sublayer(x):
    return keras.ops.tanh(x) * 2.0 + 0.5  # `sublayer` on backend tensors


@pytest.mark.parametrize("norm_first", [False, True])
def test_add_norm_matches_reference(norm_first):
    layer = AddNorm(norm_first=norm_first)
    x = random(2, 5, 16) * 3 + 1
    out = numpy(layer(x, sublayer=backend_sublayer))
    np.testing.assert_allclose(out, reference.add_norm(x, sublayer, layer), atol=1e-5)


def test_post_norm_output_is_normalized_per_position():
    layer = AddNorm()
    y = keras.ops.convert_to_tensor(random(2, 5, 16, seed=1))
    out = numpy(layer(random(2, 5, 16) * 5, sublayer=lambda x: y))
    np.testing.assert_allclose(out.mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(-1), 1, atol=1e-3)


def test_pre_norm_normalizes_the_sublayer_input_and_keeps_the_residual_path_unnormalized():
    layer = AddNorm(norm_first=True)
    x = random(2, 5, 16) * 5 + 3
    seen = []

    def zero_sublayer(normalized):
        seen.append(numpy(normalized))
        return keras.ops.zeros_like(normalized)

    np.testing.assert_allclose(numpy(layer(x, sublayer=zero_sublayer)), x, atol=1e-6)
    np.testing.assert_allclose(seen[0].mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(seen[0].std(-1), 1, atol=1e-3)


def test_a_sublayer_s_other_outputs_come_back_after_the_result():
    layer = AddNorm()
    x = random(2, 5, 16)
    out, weights, cache = layer(x, sublayer=lambda x: (backend_sublayer(x), "weights", ("key", "value")))
    np.testing.assert_allclose(numpy(out), reference.add_norm(x, sublayer, layer), atol=1e-5)
    assert (weights, cache) == ("weights", ("key", "value"))


def test_residual_dropout_only_in_training():
    layer = AddNorm(dropout=0.5, norm_first=True)
    x, y = np.zeros((1, 4, 64), "float32"), keras.ops.ones((1, 4, 64))
    np.testing.assert_array_equal(numpy(layer(x, sublayer=lambda x: y)), numpy(y))
    assert (numpy(layer(x, sublayer=lambda x: y, training=True)) == 0).mean() > 0.2


@keras.saving.register_keras_serializable(package="test_add_norm")
class DenseSublayer(keras.layers.Layer):
    """A Dense sublayer in Add & Norm, as a block uses them: a layer to save."""

    def __init__(self, norm_first=False, **kwargs):
        super().__init__(**kwargs)
        self.norm_first = norm_first

    def build(self, x_shape):
        self.dense = keras.layers.Dense(x_shape[-1], name="dense")
        self.dense.build(x_shape)
        self.add_norm = AddNorm(dropout=0.1, norm_first=self.norm_first, epsilon=1e-5, name="add_norm")
        self.add_norm.build(x_shape)

    def call(self, x):
        return self.add_norm(x, sublayer=self.dense)

    def get_config(self):
        return {**super().get_config(), "norm_first": self.norm_first}


@pytest.mark.parametrize("norm_first", [False, True])
def test_round_trip(tmp_path, norm_first):
    layer = AddNorm(dropout=0.1, norm_first=norm_first, epsilon=1e-5)
    assert AddNorm.from_config(layer.get_config()).get_config() == layer.get_config()
    model = layer_model(DenseSublayer(norm_first), ((None, 16), "float32"))
    before, after, loaded = round_trip(model, tmp_path, random(2, 5, 16))
    np.testing.assert_array_equal(before, after)
    assert loaded.layers[-1].add_norm.get_config() == model.layers[-1].add_norm.get_config()
