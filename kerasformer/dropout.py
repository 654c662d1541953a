"""Dropout with half the random numbers: the `fused` path's dropout (section 5.4's P_drop).

A training step of the small model spends about a quarter of its time drawing
dropout's random numbers (benchmarks/dropout_cost.py): `keras.layers.Dropout`
draws one 32-bit uniform per element and keeps the element if it is at least
P_drop. A float32 uniform carries 23 random bits, and a keep-or-drop decision at
P_drop's resolution needs far fewer, so `PairedDropout` takes two decisions
from each uniform and draws half as many.
"""

import keras
from keras import ops

# Each decision reads 11 of the uniform's 23 random mantissa bits: a number
# `a` in 0..2047, kept if a >= K, K = round(2048 P_drop). The rate used is
# therefore K / 2048 (0.1 -> 205 / 2048 = 0.10010), and kept elements are
# scaled by 2048 / (2048 - K) so that the expected output is the input.
LEVELS = 2048

# The backends where the paired mask is the cheaper one. Under torch, `keras.layers.Dropout`
# is torch's own dropout kernel (`F.dropout`, unseeded), faster than a mask built from ops
# (7.1-7.8 ms against 6.3-6.5 ms for forward and backward of 32 x 32 x 512, 2026-12-03, one
# thread, measured beside a training run: a rough figure), and
# a seeded draw is a graph break under `torch.compile`; there PairedDropout is keras's Dropout.
PAIRED_BACKENDS = ("tensorflow", "jax")


def drop_threshold(rate):
    """K of a rate: elements whose 11-bit number is below K are dropped (at least 1 for a rate > 0)."""
    return max(1, round(LEVELS * rate)) if rate > 0 else 0


def paired_keep_mask(uniform, rate, axis=-1):
    """Two keep-or-drop decisions from each float32 uniform in [0, 1).

    With u = m / 2^23 (m a 23-bit integer, as every backend draws it):
        a = floor(2048 u)                 the top 11 bits of m
        b = floor(2^22 u) - 2048 a        the next 11 bits of m
    a and b are independent and uniform on 0..2047; every product is exact in float32.

    Args:
        uniform: float32 in [0, 1), `n` long on `axis`.
        rate: the drop rate P_drop.
        axis: the axis the two halves of the mask lie along.

    Returns:
        bool, `2 n` long on `axis`: True where the element is kept; the first
        `n` along `axis` from a, the next `n` from b.
    """
    uniform = ops.cast(uniform, "float32")
    a = ops.floor(uniform * LEVELS)
    b = ops.floor(uniform * (LEVELS * LEVELS)) - a * LEVELS
    threshold = drop_threshold(rate)
    return ops.concatenate([a >= threshold, b >= threshold], axis=axis)


def pairing_axis(shape):
    """The axis a paired mask is split along: the last one whose static size is even
    (attention weights `(batch, heads, queries, keys)` in a TensorFlow graph that serves
    every bucket's length have no static key length, but a static number of heads);
    None if there is none."""
    return next((axis for axis in reversed(range(len(shape)))
                 if shape[axis] is not None and shape[axis] % 2 == 0), None)


@keras.saving.register_keras_serializable(package="kerasformer")
class PairedDropout(keras.layers.Dropout):
    """Dropout(x) = x * mask / (1 - P_drop), mask ~ Bernoulli(1 - P_drop), from half the random numbers.

    The same layer as `keras.layers.Dropout` (arguments, `get_config`, seed
    state, so the weights and `.keras` files of a model are the same with
    either), except where the mask comes from: for an input with an axis of even
    static size 2n (the last such axis, `pairing_axis`), one uniform n long on
    that axis gives the whole mask (`paired_keep_mask`), and the rate is P_drop
    rounded to a multiple of 1/2048. An input with no even static axis, a
    `noise_shape` or the torch backend (`PAIRED_BACKENDS`) falls back to
    `keras.layers.Dropout`'s own mask.
    Identity at inference.

    Args:
        rate: P_drop.
        noise_shape, seed: as `keras.layers.Dropout`.

    Call arguments:
        inputs: `(..., d)`.
        training: apply dropout.

    Returns:
        `(..., d)`.

    Example:
        >>> dropout = PairedDropout(0.1, seed=1)
        >>> dropout(keras.ops.ones((2, 4)), training=False).shape
        (2, 4)
    """

    def call(self, inputs, training=False):
        axis = pairing_axis(inputs.shape)
        paired = self.noise_shape is None and axis is not None and keras.backend.backend() in PAIRED_BACKENDS
        if not (training and self.rate > 0) or self.rate >= 1 or not paired:
            return super().call(inputs, training=training)
        half_shape = list(ops.shape(inputs))
        half_shape[axis] = inputs.shape[axis] // 2
        uniform = keras.random.uniform(tuple(half_shape), dtype="float32", seed=self.seed_generator)
        keep = paired_keep_mask(uniform, self.rate, axis)
        scale = ops.cast(LEVELS / (LEVELS - drop_threshold(self.rate)), inputs.dtype)
        return ops.where(keep, inputs * scale, ops.zeros_like(inputs))


def dropout_layer(rate, fused, **kwargs):
    """The dropout of a layer with this `fused` switch: `PairedDropout` if fused, else `keras.layers.Dropout`."""
    return PairedDropout(rate, **kwargs) if fused else keras.layers.Dropout(rate, **kwargs)
