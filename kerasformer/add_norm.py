"""The residual connection around each sublayer: "Add & Norm" (section 3.1)."""

import keras

from kerasformer.dropout import dropout_layer
from kerasformer.layer_norm import LayerNorm


@keras.saving.register_keras_serializable(package="kerasformer")
class AddNorm(keras.layers.Layer):
    """A sublayer with its residual connection, residual dropout and LayerNorm.

    Post-norm (the paper, section 3.1, with the dropout of section 5.4):

        LayerNorm(x + Dropout(Sublayer(x)))

    Pre-norm (`norm_first=True`, Xiong et al. 2020), which trains deep stacks
    without warmup; the stack then ends in a LayerNorm:

        x + Dropout(Sublayer(LayerNorm(x)))

    Args:
        dropout: rate applied to the sublayer output ("residual dropout", 5.4).
        norm_first: pre-norm instead of post-norm.
        fused: the dropout draws half the random numbers (`PairedDropout`), and the
            LayerNorm writes out its gradient where that is faster (`LayerNorm`).
        epsilon: LayerNorm epsilon.

    Call arguments:
        x: `(batch, length, d_model)`.
        sublayer: a function `(batch, length, d_model)` -> `(batch, length,
            d_model)`, e.g. self-attention or the feed-forward network. It
            may return a tuple whose first item is that output: the other
            items (attention weights, an updated cache) are returned after
            the result, unchanged.

    Returns:
        `(batch, length, d_model)`, then the sublayer's other outputs if any.

    Example:
        >>> from kerasformer import FeedForward
        >>> add_norm, ffn = AddNorm(dropout=0.1), FeedForward(d_ff=64)
        >>> add_norm(keras.random.normal((2, 5, 16)), sublayer=ffn).shape
        (2, 5, 16)
    """

    def __init__(self, dropout=0.0, norm_first=False, epsilon=1e-6, fused=True, **kwargs):
        super().__init__(**kwargs)
        self.dropout = dropout
        self.norm_first = norm_first
        self.epsilon = epsilon
        self.fused = fused
        # Passes the padding mask of its first input through unchanged.
        self.supports_masking = True

    def build(self, x_shape):
        self.layer_norm = LayerNorm(fused=self.fused, epsilon=self.epsilon, name="layer_norm", dtype=self.dtype_policy)
        self.layer_norm.build(x_shape)
        self.residual_dropout = dropout_layer(self.dropout, self.fused, dtype=self.dtype_policy)

    def call(self, x, sublayer, training=None):
        if self.norm_first:  # x + Dropout(Sublayer(LayerNorm(x)))
            output, *others = outputs_of(sublayer(self.layer_norm(x)))
            result = x + self.residual_dropout(output, training=training)
        else:  # LayerNorm(x + Dropout(Sublayer(x)))
            output, *others = outputs_of(sublayer(x))
            result = self.layer_norm(x + self.residual_dropout(output, training=training))
        return (result, *others) if others else result

    def get_config(self):
        return {
            **super().get_config(),
            "dropout": self.dropout,
            "norm_first": self.norm_first,
            "epsilon": self.epsilon,
            "fused": self.fused,
        }


def outputs_of(sublayer_result):
    """A sublayer's result as a tuple: `(output, *others)`."""
    return sublayer_result if isinstance(sublayer_result, tuple) else (sublayer_result,)
