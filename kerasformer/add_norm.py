"""The residual connection around each sublayer: "Add & Norm" (section 3.1)."""

import keras


@keras.saving.register_keras_serializable(package="kerasformer")
class AddNorm(keras.layers.Layer):
    """Post-norm (the paper): LayerNorm(x + Dropout(Sublayer(x))).

    Pre-norm (`norm_first=True`, Xiong et al. 2020): x + Dropout(Sublayer(LayerNorm(x))),
    which trains deep stacks without warmup; the stack then ends in a LayerNorm.
    A block feeds its sublayer `add_norm.sublayer_input(x)` and then calls
    `add_norm(x, sublayer_output)`, so the same code serves both orders.

    Args:
        dropout: rate applied to the sublayer output ("residual dropout", 5.4).
        norm_first: pre-norm instead of post-norm.
        epsilon: LayerNorm epsilon.

    Call arguments:
        x: the sublayer's input `(batch, length, d_model)`.
        sublayer_output: `(batch, length, d_model)`.

    Returns:
        `(batch, length, d_model)`.

    Example:
        >>> add_norm = AddNorm(dropout=0.1)
        >>> x = keras.random.normal((2, 5, 16))
        >>> add_norm(x, keras.random.normal((2, 5, 16))).shape
        (2, 5, 16)
    """

    def __init__(self, dropout=0.0, norm_first=False, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.dropout = dropout
        self.norm_first = norm_first
        self.epsilon = epsilon
        # Passes the padding mask of its first input through unchanged.
        self.supports_masking = True

    def build(self, x_shape, sublayer_output_shape=None):
        self.layer_norm = keras.layers.LayerNormalization(
            epsilon=self.epsilon, name="layer_norm", dtype=self.dtype_policy
        )
        self.layer_norm.build(x_shape)
        self.residual_dropout = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)

    def sublayer_input(self, x):
        """What the sublayer reads: LayerNorm(x) in pre-norm, x in post-norm."""
        if not self.built:  # called before the layer's first __call__
            self.build(tuple(x.shape))
            self.built = True
        return self.layer_norm(x) if self.norm_first else x

    def call(self, x, sublayer_output, training=None):
        residual = x + self.residual_dropout(sublayer_output, training=training)
        return residual if self.norm_first else self.layer_norm(residual)

    def get_config(self):
        return {
            **super().get_config(),
            "dropout": self.dropout,
            "norm_first": self.norm_first,
            "epsilon": self.epsilon,
        }
