"""The encoder: N identical blocks of self-attention and feed-forward (section 3.1)."""

import keras

from kerasformer.add_norm import AddNorm
from kerasformer.attention import MultiHeadAttention
from kerasformer.embedding import PositionalEmbedding
from kerasformer.feed_forward import FeedForward
from kerasformer.layer_norm import LayerNorm
from kerasformer.masks import padding_mask


@keras.saving.register_keras_serializable(package="kerasformer")
class EncoderBlock(keras.layers.Layer):
    """One encoder layer: multi-head self-attention, then the FFN, each in Add & Norm.

        x = AddNorm(x, MultiHeadAttention(x, x, x))
        x = AddNorm(x, FFN(x))

    Args:
        num_heads, d_ff, dropout, norm_first, fused, attention_dropout,
        activation_dropout: as in `TransformerConfig`.

    Call arguments:
        x: `(batch, source_length, d_model)`.
        padding_mask: bool `(batch, source_length)`, False at padding.
        return_attention_scores: also return the self-attention weights
            `(batch, num_heads, source_length, source_length)`.

    Returns:
        `(batch, source_length, d_model)`; then the weights if requested.
    """

    def __init__(self, num_heads, d_ff, dropout=0.0, norm_first=False, fused=True,
                 attention_dropout=0.0, activation_dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.d_ff = d_ff
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.activation_dropout = activation_dropout
        self.norm_first = norm_first
        self.fused = fused
        self.supports_masking = True

    def build(self, x_shape):
        policy = self.dtype_policy
        self.self_attention = MultiHeadAttention(
            self.num_heads, self.attention_dropout, self.fused, name="self_attention", dtype=policy
        )
        self.self_attention.build(x_shape, x_shape)
        self.self_attention_add_norm = AddNorm(
            self.dropout, self.norm_first, fused=self.fused, name="self_attention_add_norm", dtype=policy
        )
        self.self_attention_add_norm.build(x_shape)
        self.feed_forward = FeedForward(
            self.d_ff, self.activation_dropout, self.fused, name="feed_forward", dtype=policy
        )
        self.feed_forward.build(x_shape)
        self.feed_forward_add_norm = AddNorm(
            self.dropout, self.norm_first, fused=self.fused, name="feed_forward_add_norm", dtype=policy
        )
        self.feed_forward_add_norm.build(x_shape)

    def call(self, x, padding_mask=None, return_attention_scores=False, training=None):
        def self_attention(x):
            return self.self_attention(
                x, x, key_padding_mask=padding_mask, return_attention_scores=return_attention_scores, training=training
            )

        def feed_forward(x):
            return self.feed_forward(x, training=training)

        x = self.self_attention_add_norm(x, sublayer=self_attention, training=training)
        if return_attention_scores:
            x, weights = x
        x = self.feed_forward_add_norm(x, sublayer=feed_forward, training=training)
        return (x, weights) if return_attention_scores else x

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "d_ff": self.d_ff,
            "dropout": self.dropout,
            "norm_first": self.norm_first,
            "fused": self.fused,
            "attention_dropout": self.attention_dropout,
            "activation_dropout": self.activation_dropout,
        }


@keras.saving.register_keras_serializable(package="kerasformer")
class Encoder(keras.layers.Layer):
    """Input embedding + positional encoding, then N `EncoderBlock`s.

    With pre-norm blocks the stack ends in a LayerNorm, since no block normalizes
    its own output.

    Args:
        vocab_size, num_layers, d_model, num_heads, d_ff, dropout, max_length,
        positional, norm_first, fused, attention_dropout, activation_dropout:
        as in `TransformerConfig` (source side).
        token_embedding: a `keras.layers.Embedding` shared with the decoder
            (`TransformerConfig.share_embeddings`); None: the encoder's own.

    Call arguments:
        token_ids: int `(batch, source_length)`, 0 = padding.
        return_attention_scores: also return a list with each block's
            self-attention weights `(batch, num_heads, source_length, source_length)`.

    Returns:
        encoder_output `(batch, source_length, d_model)`; then the list if requested.
    """

    def __init__(
        self, vocab_size, num_layers, d_model, num_heads, d_ff, dropout=0.0,
        max_length=512, positional="sinusoidal", norm_first=False, fused=True, token_embedding=None,
        attention_dropout=0.0, activation_dropout=0.0, **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.num_layers = num_layers
        self.d_model = d_model
        self.num_heads = num_heads
        self.d_ff = d_ff
        self.dropout = dropout
        self.max_length = max_length
        self.positional = positional
        self.norm_first = norm_first
        self.fused = fused
        self.token_embedding = token_embedding
        self.attention_dropout = attention_dropout
        self.activation_dropout = activation_dropout

    def build(self, token_ids_shape):
        policy = self.dtype_policy
        self.embedding = PositionalEmbedding(
            self.vocab_size, self.d_model, self.max_length, self.positional, self.dropout,
            token_embedding=self.token_embedding, fused=self.fused, name="embedding", dtype=policy,
        )
        self.embedding.build(token_ids_shape)
        x_shape = tuple(token_ids_shape) + (self.d_model,)
        self.blocks = []
        for i in range(self.num_layers):
            block = EncoderBlock(
                self.num_heads, self.d_ff, self.dropout, self.norm_first, self.fused,
                self.attention_dropout, self.activation_dropout, name=f"block_{i}", dtype=policy,
            )
            block.build(x_shape)
            self.blocks.append(block)
        self.final_norm = None
        if self.norm_first:
            self.final_norm = LayerNorm(fused=self.fused, epsilon=1e-6, name="final_norm", dtype=policy)
            self.final_norm.build(x_shape)

    def call(self, token_ids, return_attention_scores=False, training=None):
        mask = padding_mask(token_ids)
        x = self.embedding(token_ids, training=training)
        all_weights = []
        for block in self.blocks:
            x = block(x, padding_mask=mask, return_attention_scores=return_attention_scores, training=training)
            if return_attention_scores:
                x, weights = x
                all_weights.append(weights)
        x = x if self.final_norm is None else self.final_norm(x)
        return (x, all_weights) if return_attention_scores else x

    def get_config(self):
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "num_layers": self.num_layers,
            "d_model": self.d_model,
            "num_heads": self.num_heads,
            "d_ff": self.d_ff,
            "dropout": self.dropout,
            "max_length": self.max_length,
            "positional": self.positional,
            "norm_first": self.norm_first,
            "fused": self.fused,
            "attention_dropout": self.attention_dropout,
            "activation_dropout": self.activation_dropout,
        }
