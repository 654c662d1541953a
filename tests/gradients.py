"""Gradients of a scalar loss with respect to Keras variables, on the backend under test.

Used by the tests that hold a layer's `fused=True` path equal to its plain path:
equal outputs are not enough, training follows the gradients.
"""

import keras
from conftest import numpy


def variable_gradients(variables, loss):
    """d loss() / d variable for each variable, as NumPy arrays.

    Args:
        variables: Keras variables (e.g. `layer.trainable_variables`).
        loss: a function of no arguments returning a scalar tensor computed
            from those variables (e.g. a layer's output times fixed weights).
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            value = loss()
        return [numpy(gradient) for gradient in tape.gradient(value, [v.value for v in variables])]
    if backend == "jax":
        import jax

        def loss_of(values):
            # Inside the scope every read of a variable returns the value being differentiated.
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return loss()

        return [numpy(gradient) for gradient in jax.grad(loss_of)([v.value for v in variables])]
    if backend == "torch":
        import torch

        return [numpy(gradient) for gradient in torch.autograd.grad(loss(), [v.value for v in variables])]
    raise NotImplementedError(f"no gradients for KERAS_BACKEND={backend}")


def fused_and_plain(make_layer, *inputs, **call_arguments):
    """The same layer twice, `fused=True` and `fused=False`, with the same weights.

    Args:
        make_layer: a function `fused -> layer`.
        inputs, call_arguments: a first call that builds both layers.
    """
    fused, plain = make_layer(True), make_layer(False)
    fused(*inputs, **call_arguments)
    plain(*inputs, **call_arguments)
    plain.set_weights(fused.get_weights())
    return fused, plain
