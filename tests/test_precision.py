"""TrainConfig.precision and jit_compile on the current backend (kerasformer.training.train.compile_model):
half-precision compute with float32 weights, softmax, logits and loss; loss
scaling for float16; a training step runs compiled (XLA under TensorFlow,
jax.jit under JAX, torch.compile under torch)."""

import keras
import numpy as np
import pytest

from kerasformer.training.config import PRECISIONS, TrainConfig
from kerasformer.training.train import compile_model

HALF = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}
TORCH = keras.backend.backend() == "torch"
# torch.compile builds C++ kernels for the CPU: 2 to 5 minutes for this model.
SLOW_UNDER_TORCH = [pytest.mark.slow] if TORCH else []
# The quick way to run a step on each backend: jax.jit under JAX (op by op
# takes longer), plain graphs or eager under TensorFlow and torch (XLA and
# torch.compile take longer to compile).
QUICK_JIT = keras.backend.backend() == "jax"


def tiny_model(precision, jit_compile=False):
    config = TrainConfig(preset="tiny", precision=precision, jit_compile=jit_compile, warmup_steps=4,
                         model={"num_layers": 1})
    return compile_model(config, config.model_config(50, 60))


def batch():
    rng = np.random.default_rng(0)
    inputs = {
        "encoder_tokens": rng.integers(1, 50, (4, 8)).astype("int32"),
        "decoder_tokens": rng.integers(1, 60, (4, 8)).astype("int32"),
    }
    labels = rng.integers(1, 60, (4, 8)).astype("int32")
    labels[:, 6:] = 0  # padding
    return inputs, labels


@pytest.mark.parametrize("precision", sorted(HALF))
def test_half_precision_compute_with_float32_weights_softmax_logits_and_loss(precision, monkeypatch):
    model = tiny_model(precision)
    inputs, labels = batch()
    half = HALF[precision]
    for name in ("encoder", "decoder"):
        assert model.get_layer(name).dtype_policy.compute_dtype == half
    assert {keras.backend.standardize_dtype(w.dtype) for w in model.weights} == {"float32"}
    encoder_output = model.get_layer("encoder")(inputs["encoder_tokens"])
    assert keras.backend.standardize_dtype(encoder_output.dtype) == half

    softmax_inputs = []
    softmax = keras.ops.softmax

    def recording_softmax(x, axis=-1):
        softmax_inputs.append(keras.backend.standardize_dtype(x.dtype))
        return softmax(x, axis=axis)

    monkeypatch.setattr(keras.ops, "softmax", recording_softmax)
    logits = model(inputs)  # eager, so every attention softmax is recorded
    # One encoder self-attention, one decoder self- and one cross-attention.
    assert softmax_inputs == ["float32"] * 3
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    loss = model.compute_loss(x=inputs, y=labels, y_pred=logits)
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    # float16 gradients underflow without loss scaling; bfloat16 has float32's exponent range.
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (precision == "mixed_float16")


@pytest.mark.parametrize(
    "precision, jit_compile",
    [
        pytest.param("float32", True, marks=SLOW_UNDER_TORCH),
        ("mixed_bfloat16", QUICK_JIT),
        ("mixed_float16", QUICK_JIT),
        pytest.param("mixed_bfloat16", not QUICK_JIT, marks=pytest.mark.slow),
        pytest.param("mixed_float16", not QUICK_JIT, marks=pytest.mark.slow),
    ],
)
def test_a_training_step_runs(precision, jit_compile):
    assert precision in PRECISIONS
    model = tiny_model(precision, jit_compile)
    assert model.jit_compile == jit_compile
    inputs, labels = batch()
    before = [keras.ops.convert_to_numpy(w).copy() for w in model.trainable_weights]
    logs = model.train_on_batch(inputs, labels, return_dict=True)
    assert np.isfinite(logs["loss"]) and logs["loss"] > 0
    after = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    # float16's loss scale starts high and a first step whose gradients overflow
    # is skipped; any other step updates the weights.
    if precision != "mixed_float16":
        assert any(not np.array_equal(b, a) for b, a in zip(before, after))
    assert {w.dtype for w in after} == {np.dtype("float32")}
