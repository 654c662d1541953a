import keras
import numpy as np
import pytest
import reference
from conftest import layer_model, numpy, round_trip
from gradients import fused_and_plain, variable_gradients
from keras import ops

from kerasformer import LayerNorm
from kerasformer.layer_norm import WRITTEN_GRADIENT_BACKENDS, layer_norm_with_gradient


def random(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def built(fused, x, epsilon=1e-6, seed=0):
    """A LayerNorm with random gamma and beta (the initial ones, 1 and 0, would hide a
    wrong gradient of either)."""
    layer = LayerNorm(fused=fused, epsilon=epsilon)
    layer.build(x.shape)
    layer.gamma.assign(random(x.shape[-1], seed=seed + 1) + 1.0)
    layer.beta.assign(random(x.shape[-1], seed=seed + 2))
    return layer


def numpy_layer_norm(x, gamma, beta, epsilon):
    """The paper's LayerNorm (`reference.layer_norm_of`) in float64."""
    return reference.layer_norm_of(x.astype("float64"), gamma, beta, epsilon)


def central_differences(f, values, step=1e-6):
    """d sum(f(*values) * upstream) / d each of `values`, by central differences in float64."""
    gradients = []
    for i, value in enumerate(values):
        gradient = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            shifted = [v.copy() for v in values]
            shifted[i][index] += step
            plus = f(*shifted)
            shifted[i][index] -= 2 * step
            gradient[index] = (plus - f(*shifted)) / (2 * step)
        gradients.append(gradient)
    return gradients


@pytest.mark.parametrize("fused", [True, False])
def test_layer_norm_matches_the_numpy_formula(fused):
    x = random(2, 5, 16) * 3 + 1
    layer = built(fused, x)
    expected = numpy_layer_norm(x, layer.gamma.numpy(), layer.beta.numpy(), 1e-6)
    np.testing.assert_allclose(numpy(layer(x)), expected, atol=1e-5)
    np.testing.assert_allclose(numpy(layer(x)), reference.layer_norm(x, layer), atol=1e-5)


def test_the_written_gradient_matches_central_differences_of_the_numpy_formula():
    """dL/dx, dL/dgamma and dL/dbeta of L = sum(LayerNorm(x) * upstream), on every backend
    (the function itself, whichever backends the layer gives it to)."""
    x, gamma, beta = random(2, 3, 8) * 2 + 0.5, random(8, seed=1) + 1, random(8, seed=2)
    upstream = random(2, 3, 8, seed=3)
    variables = [keras.Variable(value) for value in (x, gamma, beta)]
    written = variable_gradients(
        variables, lambda: ops.sum(layer_norm_with_gradient(*variables, 1e-6) * ops.convert_to_tensor(upstream)))
    expected = central_differences(
        lambda *values: (numpy_layer_norm(*values, 1e-6) * upstream).sum(), [v.astype("float64") for v in (x, gamma, beta)])
    for name, got, want in zip(("x", "gamma", "beta"), written, expected):
        np.testing.assert_allclose(got, want, atol=2e-4, err_msg=name)


def test_fused_layer_norm_equals_the_plain_layer_forward_and_gradients():
    x = random(4, 7, 32, seed=4) * 5 - 2
    fused, plain = fused_and_plain(lambda fused: built(fused, x), x)
    np.testing.assert_allclose(numpy(fused(x)), numpy(plain(x)), atol=1e-5)
    upstream = ops.convert_to_tensor(random(4, 7, 32, seed=5))
    x_fused, x_plain = keras.Variable(x), keras.Variable(x)
    fused_gradients = variable_gradients([x_fused, *fused.trainable_variables], lambda: ops.sum(fused(x_fused) * upstream))
    plain_gradients = variable_gradients([x_plain, *plain.trainable_variables], lambda: ops.sum(plain(x_plain) * upstream))
    for name, got, want in zip(("x", "gamma", "beta"), fused_gradients, plain_gradients):
        np.testing.assert_allclose(got, want, atol=1e-4, err_msg=name)


def test_the_written_gradient_is_taken_on_its_backends_only():
    x = random(2, 3, 8)
    assert built(True, x).written_gradient(3) == (keras.backend.backend() in WRITTEN_GRADIENT_BACKENDS)
    assert not built(False, x).written_gradient(3)
    other_axis = LayerNorm(axis=1)
    other_axis.build(x.shape)
    assert not other_axis.written_gradient(3)
    assert not LayerNorm(center=False).written_gradient(3)


def test_half_precision_input_is_normalized_in_float32():
    x = random(2, 5, 16) * 40 + 300  # a large mean: float16/bfloat16 statistics would lose it
    layer = LayerNorm(epsilon=1e-6, dtype="mixed_bfloat16")
    out = layer(ops.cast(x, "bfloat16"))
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    rounded = numpy(ops.cast(ops.cast(x, "bfloat16"), "float32"))
    expected = numpy_layer_norm(rounded, 1.0, 0.0, 1e-6)
    np.testing.assert_allclose(numpy(ops.cast(out, "float32")), expected, atol=0.05)


@pytest.mark.parametrize("fused", [True, False])
def test_round_trip(tmp_path, fused):
    layer = LayerNorm(fused=fused, epsilon=1e-5)
    config = LayerNorm.from_config(layer.get_config()).get_config()
    assert config == layer.get_config() and config["fused"] is fused
    model = layer_model(layer, ((None, 16), "float32"))
    model.layers[-1].gamma.assign(random(16, seed=1))
    before, after, loaded = round_trip(model, tmp_path, random(2, 5, 16))
    np.testing.assert_array_equal(before, after)
    assert isinstance(loaded.layers[-1], LayerNorm) and loaded.layers[-1].fused is fused


def test_weights_are_those_of_keras_layer_normalization():
    """Same variables, so weights saved with `keras.layers.LayerNormalization` load into LayerNorm."""
    x = random(2, 5, 16)
    ours, keras_layer = LayerNorm(epsilon=1e-6), keras.layers.LayerNormalization(epsilon=1e-6)
    ours.build(x.shape)
    keras_layer.build(x.shape)
    assert [v.name for v in ours.weights] == [v.name for v in keras_layer.weights] == ["gamma", "beta"]
    keras_layer.set_weights([random(16, seed=1), random(16, seed=2)])
    ours.set_weights(keras_layer.get_weights())
    np.testing.assert_allclose(numpy(ours(x)), numpy(keras_layer(x)), atol=1e-5)
