"""Token embedding scaled by sqrt(d_model) plus positional encoding (sections 3.4, 3.5)."""

import math

import keras
from keras import ops

from kerasformer.dropout import dropout_layer
from kerasformer.masks import padding_mask


def positional_encoding(length, d_model, start=0):
    """The sinusoidal positional encoding of section 3.5.

        PE(pos, 2i)   = sin(pos / 10000^(2i / d_model))
        PE(pos, 2i+1) = cos(pos / 10000^(2i / d_model))

    Sines fill the even dimensions and cosines the odd ones, interleaved as the
    paper writes them (some tutorials concatenate them instead).

    Args:
        length: number of positions.
        d_model: encoding width (even).
        start: first position (the step index when decoding incrementally).

    Returns:
        float32 `(length, d_model)`.
    """
    pos = ops.cast(ops.arange(length) + start, "float32")[:, None]
    two_i = ops.cast(ops.arange(0, d_model, 2), "float32")[None, :]
    angle = pos / ops.power(10000.0, two_i / d_model)
    # stack -> (length, d_model / 2, 2) so that reshaping interleaves sin, cos.
    return ops.reshape(ops.stack([ops.sin(angle), ops.cos(angle)], axis=-1), (-1, d_model))


def _concrete(x):
    """`x` as a NumPy array in an eager call; None while a graph is traced."""
    try:
        return ops.convert_to_numpy(x)
    except Exception:  # symbolic tensors of every backend refuse conversion
        return None


@keras.saving.register_keras_serializable(package="kerasformer")
class PositionalEmbedding(keras.layers.Layer):
    """Embedding(token) * sqrt(d_model) + PE(position), then dropout.

    "In the embedding layers, we multiply those weights by sqrt(d_model)"
    (section 3.4); "we apply dropout to the sums of the embeddings and the
    positional encodings" (section 5.4). Token id 0 is padding: the layer's
    mask (`compute_mask`) is False there.

    Args:
        vocab_size: number of token ids.
        d_model: embedding width.
        max_length: longest sequence accepted (start index included).
        positional: "sinusoidal" (the paper) or "learned" (section 3.5 notes that
            learned positions performed nearly identically).
        dropout: dropout rate on the sum.
        fused: the dropout draws half the random numbers (`PairedDropout`).
        token_embedding: a `keras.layers.Embedding` owned elsewhere and shared (the
            encoder's and decoder's, one vocabulary for both languages); None creates
            one. Not part of `get_config`: the model that shares it (`Seq2Seq`) builds
            the sharing again when it is loaded.

    Call arguments:
        token_ids: int `(batch, length)`.
        start_index: position of the first token (incremental decoding).

    Returns:
        `(batch, length, d_model)`.

    Example:
        >>> embedding = PositionalEmbedding(vocab_size=100, d_model=16, max_length=20)
        >>> embedding(ops.convert_to_tensor([[5, 7, 0]])).shape
        (1, 3, 16)
    """

    def __init__(
        self, vocab_size, d_model, max_length, positional="sinusoidal", dropout=0.0, token_embedding=None,
        fused=True, **kwargs,
    ):
        super().__init__(**kwargs)
        if positional not in ("sinusoidal", "learned"):
            raise ValueError(f"positional={positional!r} must be 'sinusoidal' or 'learned'")
        if d_model % 2:
            raise ValueError(f"d_model={d_model} must be even for sinusoidal positions")
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.max_length = max_length
        self.positional = positional
        self.dropout = dropout
        self.fused = fused
        if token_embedding is not None and (token_embedding.input_dim, token_embedding.output_dim) != (vocab_size, d_model):
            raise ValueError(
                f"the shared token embedding is ({token_embedding.input_dim}, {token_embedding.output_dim}), "
                f"this layer's (vocab_size, d_model) is ({vocab_size}, {d_model})"
            )
        self.token_embedding = token_embedding
        self.supports_masking = True

    def build(self, token_ids_shape):
        if self.token_embedding is None:
            self.token_embedding = keras.layers.Embedding(
                self.vocab_size, self.d_model, name="token_embedding", dtype=self.dtype_policy
            )
        if not self.token_embedding.built:
            self.token_embedding.build(token_ids_shape)
        if self.positional == "learned":
            self.position_embedding = keras.layers.Embedding(
                self.max_length, self.d_model, name="position_embedding", dtype=self.dtype_policy
            )
            self.position_embedding.build((None,))
        self.sum_dropout = dropout_layer(self.dropout, self.fused, dtype=self.dtype_policy)

    @property
    def embeddings(self):
        """The token embedding matrix `(vocab_size, d_model)`, shared when tied."""
        return self.token_embedding.embeddings

    def check_token_ids(self, token_ids, start_index=0):
        """Raises ValueError for ids outside [0, vocab_size) or an over-long input.

        Checked in eager calls only, where the values are known (inside a traced
        graph JAX would clamp a bad id silently, TensorFlow and torch raise).
        """
        values = _concrete(token_ids)
        if values is None:
            return
        length = int(_concrete(start_index)) + values.shape[-1]
        if length > self.max_length:
            raise ValueError(
                f"{self.name}: sequence length {length} exceeds max_length={self.max_length}"
            )
        if values.size:
            low, high = int(values.min()), int(values.max())
            if low < 0 or high >= self.vocab_size:
                bad = low if low < 0 else high
                raise ValueError(
                    f"{self.name}: token id {bad} is outside [0, vocab_size={self.vocab_size})"
                )

    def call(self, token_ids, start_index=0, training=None):
        if not training:
            self.check_token_ids(token_ids, start_index)
        length = ops.shape(token_ids)[-1]
        x = self.token_embedding(token_ids) * ops.cast(math.sqrt(self.d_model), self.compute_dtype)
        if self.positional == "learned":
            positions = self.position_embedding(ops.arange(length) + start_index)
        else:
            positions = positional_encoding(length, self.d_model, start_index)
        x = x + ops.cast(positions, self.compute_dtype)
        return self.sum_dropout(x, training=training)

    def compute_mask(self, token_ids, mask=None):
        return padding_mask(token_ids)

    def get_config(self):
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "d_model": self.d_model,
            "max_length": self.max_length,
            "positional": self.positional,
            "dropout": self.dropout,
            "fused": self.fused,
        }
