"""LayerNorm (Ba et al. 2016), the "Norm" of Add & Norm (section 3.1), with its gradient written out.

    LayerNorm(x) = gamma * (x - mean(x)) / sqrt(var(x) + epsilon) + beta

over the last axis (d_model) of each position. The plain path is `keras.layers.LayerNormalization`
and the backend's autodiff of it. The `fused` path computes the same function and writes out its
gradient instead, as one expression per input. With x_hat = (x - mean) / sqrt(var + epsilon),
g = dL/dy * gamma and means over the last axis:

    dL/dx     = (g - mean(g) - x_hat * mean(g * x_hat)) / sqrt(var + epsilon)
    dL/dgamma = sum over positions of dL/dy * x_hat
    dL/dbeta  = sum over positions of dL/dy

JAX's autodiff of Keras's layer normalization (`jnp.var` differentiated through its own mean, and
each reduction a separate YNNPACK call on XLA:CPU) took about twice as long as this for forward and
backward together: 4.3-4.7 ms against 2.1 ms for eight chained LayerNorms of 32 x 32 x 128 on a
2-core Intel Xeon (2026-12-05; TensorFlow-XLA's autodiff 1.9 ms there, this 2.0 ms), and the main
job's training step 2-4% less time (benchmarks/README.md, "Page faults under JAX and torch"). Under TensorFlow the
autodiff is as fast, and under torch Keras's layer normalization is torch's own fused kernel
(`F.layer_norm`), so only the backends in `WRITTEN_GRADIENT_BACKENDS` take the written gradient.
"""

import keras
from keras import ops

# The backends where `fused` LayerNorm uses the written-out gradient (see the module docstring).
WRITTEN_GRADIENT_BACKENDS = ("jax",)


def layer_norm_with_gradient(x, gamma, beta, epsilon):
    """gamma * x_hat + beta over the last axis of `x`, with the gradient written out.

    Computed in float32 (a bfloat16 or float16 `x` is cast first): the variance of a
    position's d_model values loses too much in half precision.

    Args:
        x: `(..., d)`.
        gamma, beta: `(d,)`.
        epsilon: added to the variance.

    Returns:
        float32 `(..., d)`.
    """
    x = ops.cast(x, "float32")
    gamma, beta = ops.cast(gamma, "float32"), ops.cast(beta, "float32")
    positions = tuple(range(len(x.shape) - 1))  # the axes dgamma and dbeta sum over

    @ops.custom_gradient
    def normalized(x, gamma, beta):
        centered = x - ops.mean(x, axis=-1, keepdims=True)
        inverse_std = ops.rsqrt(ops.mean(ops.square(centered), axis=-1, keepdims=True) + epsilon)
        x_hat = centered * inverse_std

        def gradient(*args, upstream=None):
            if upstream is None:  # by position or by name, as the backend passes it
                (upstream,) = args
            upstream = ops.cast(upstream, "float32")
            g = upstream * gamma
            dx = inverse_std * (g - ops.mean(g, axis=-1, keepdims=True)
                                - x_hat * ops.mean(g * x_hat, axis=-1, keepdims=True))
            return dx, ops.sum(upstream * x_hat, axis=positions), ops.sum(upstream, axis=positions)

        return x_hat * gamma + beta, gradient

    return normalized(x, gamma, beta)


@keras.saving.register_keras_serializable(package="kerasformer")
class LayerNorm(keras.layers.LayerNormalization):
    """`keras.layers.LayerNormalization` over the last axis, with a `fused` switch.

    The same layer as `keras.layers.LayerNormalization` (arguments, weights `gamma` and
    `beta`, so a model's weights and `.keras` files are the same with either); with
    `fused=True` on a backend of `WRITTEN_GRADIENT_BACKENDS` it computes the same values with
    the gradient written out (`layer_norm_with_gradient`). Anything else (`fused=False`,
    another backend, another axis, no centering or scaling) is `keras.layers.LayerNormalization`'s
    own call.

    Args:
        fused: take the written-out gradient where it is the faster one.
        epsilon and the rest: as `keras.layers.LayerNormalization`.

    Call arguments:
        inputs: `(..., d)`.

    Returns:
        `(..., d)` in the layer's compute dtype.

    Example:
        >>> norm = LayerNorm(epsilon=1e-6)
        >>> norm(keras.ops.ones((2, 3, 8))).shape
        (2, 3, 8)
    """

    def __init__(self, fused=True, **kwargs):
        super().__init__(**kwargs)
        self.fused = fused

    def written_gradient(self, ndim):
        """Whether a call on an input of `ndim` axes takes `layer_norm_with_gradient`."""
        axes = self.axis if isinstance(self.axis, (list, tuple)) else [self.axis]
        return (self.fused and keras.backend.backend() in WRITTEN_GRADIENT_BACKENDS
                and [axis % ndim for axis in axes] == [ndim - 1]
                and self.center and self.scale and not self.rms_scaling)

    def call(self, inputs):
        if not self.written_gradient(len(inputs.shape)):
            return super().call(inputs)
        outputs = layer_norm_with_gradient(inputs, self.gamma, self.beta, self.epsilon)
        return ops.cast(outputs, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "fused": self.fused}
