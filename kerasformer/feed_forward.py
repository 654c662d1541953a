"""The position-wise feed-forward network (section 3.3)."""

import keras
from keras import ops

from kerasformer.dropout import dropout_layer


def position_wise(function, x):
    """`function` applied to every position of `x` at once, through the 2-D view of `x`:
    `(batch, length, d)` -> `(batch * length, d)` -> `function` -> `(batch, length, d')`.

    For a function that treats "each position separately and identically"
    (section 3.3: the feed-forward network, the attention projections, the
    final linear transformation) this is the same function, with every matmul
    2-D instead of 3-D: XLA on CPU computes the kernel gradient of a 2-D matmul
    1.5x (feed-forward) to more than 2x (the logits, the model's largest
    matmul) faster. Used only when a layer's `fused` is True.
    """
    batch, length = ops.shape(x)[0], ops.shape(x)[1]
    rows = function(ops.reshape(x, (-1, x.shape[-1])))
    return ops.reshape(rows, (batch, length, rows.shape[-1]))


@keras.saving.register_keras_serializable(package="kerasformer")
class FeedForward(keras.layers.Layer):
    """FFN(x) = max(0, x W_1 + b_1) W_2 + b_2   (equation 2).

    Applied to each position separately and identically. The paper's residual
    dropout lives in `AddNorm`; dropout on the inner activation is an option
    the paper does not use (tensor2tensor's `relu_dropout`,
    `TransformerConfig.activation_dropout`).

    Args:
        d_ff: inner width (2048 in the base model).
        dropout: dropout rate on the inner activation (0: none, the paper).
        fused: run on the 2-D view of `x` (`position_wise`), the same function,
            and draw the dropout from half the random numbers (`PairedDropout`).

    Call arguments:
        x: `(batch, length, d_model)`.

    Returns:
        `(batch, length, d_model)`.

    Example:
        >>> ffn = FeedForward(d_ff=64)
        >>> ffn(keras.random.normal((2, 5, 16))).shape
        (2, 5, 16)
    """

    def __init__(self, d_ff, dropout=0.0, fused=True, **kwargs):
        super().__init__(**kwargs)
        self.d_ff = d_ff
        self.dropout = dropout
        self.fused = fused
        # Passes the padding mask of its first input through unchanged.
        self.supports_masking = True

    def build(self, x_shape):
        d_model = x_shape[-1]
        self.inner_dense = keras.layers.Dense(
            self.d_ff, activation="relu", name="inner", dtype=self.dtype_policy
        )  # max(0, x W_1 + b_1)
        self.inner_dense.build(x_shape)
        self.inner_dropout = dropout_layer(self.dropout, self.fused, dtype=self.dtype_policy)
        self.output_dense = keras.layers.Dense(d_model, name="output", dtype=self.dtype_policy)
        self.output_dense.build(tuple(x_shape[:-1]) + (self.d_ff,))  # (.) W_2 + b_2

    def call(self, x, training=None):
        def ffn(x):
            return self.output_dense(self.inner_dropout(self.inner_dense(x), training=training))

        return position_wise(ffn, x) if self.fused else ffn(x)

    def get_config(self):
        return {**super().get_config(), "d_ff": self.d_ff, "dropout": self.dropout, "fused": self.fused}
