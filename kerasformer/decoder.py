"""The decoder: N identical blocks of masked self-attention, cross-attention and
feed-forward, then the final linear transformation (sections 3.1, 3.4)."""

import keras
from keras import ops

from kerasformer.add_norm import AddNorm, outputs_of
from kerasformer.attention import MultiHeadAttention
from kerasformer.embedding import PositionalEmbedding
from kerasformer.feed_forward import FeedForward, position_wise
from kerasformer.layer_norm import LayerNorm
from kerasformer.masks import padding_mask


@keras.saving.register_keras_serializable(package="kerasformer")
class DecoderBlock(keras.layers.Layer):
    """One decoder layer, each sublayer in Add & Norm:

        x = AddNorm(x, MaskedMultiHeadAttention(x, x, x))        # causal
        x = AddNorm(x, MultiHeadAttention(Q=x, K=V=encoder_output))
        x = AddNorm(x, FFN(x))

    Args:
        num_heads, d_ff, dropout, norm_first, fused, attention_dropout,
        activation_dropout: as in `TransformerConfig`.

    Call arguments:
        x: `(batch, target_length, d_model)`.
        encoder_output: `(batch, source_length, d_model)`; may be None when
            `cross_attention_cache` holds its keys and values.
        decoder_padding_mask: bool `(batch, target_length)`.
        encoder_padding_mask: bool `(batch, source_length)`.
        self_attention_cache: `(key, value)`, each `(batch, num_heads,
            max_target_length, d_k)`, updated at `cache_update_index`
            (incremental decoding).
        cache_update_index: position of `x`'s first token.
        cross_attention_cache: `(key, value)`, each `(batch, num_heads,
            source_length, d_k)`, from `Decoder.compute_cross_attention_cache`.
        return_attention_scores: also return the attention weights, a dict:
            "self_attention" `(batch, num_heads, target_length, key_length)`
            (key_length: target_length, or the cache's max_target_length) and
            "cross_attention" `(batch, num_heads, target_length, source_length)`.

    Returns:
        `(batch, target_length, d_model)`; then the weights if requested; then
        the updated self-attention cache if one was given.
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

    def build(self, x_shape, encoder_output_shape=None):
        policy = self.dtype_policy
        encoder_output_shape = encoder_output_shape or x_shape

        def add_norm(name):
            layer = AddNorm(self.dropout, self.norm_first, fused=self.fused, name=name, dtype=policy)
            layer.build(x_shape)
            return layer

        self.self_attention = MultiHeadAttention(
            self.num_heads, self.attention_dropout, self.fused, name="self_attention", dtype=policy
        )
        self.self_attention.build(x_shape, x_shape)
        self.self_attention_add_norm = add_norm("self_attention_add_norm")
        self.cross_attention = MultiHeadAttention(
            self.num_heads, self.attention_dropout, self.fused, name="cross_attention", dtype=policy
        )
        self.cross_attention.build(x_shape, encoder_output_shape)
        self.cross_attention_add_norm = add_norm("cross_attention_add_norm")
        self.feed_forward = FeedForward(
            self.d_ff, self.activation_dropout, self.fused, name="feed_forward", dtype=policy
        )
        self.feed_forward.build(x_shape)
        self.feed_forward_add_norm = add_norm("feed_forward_add_norm")

    def call(
        self,
        x,
        encoder_output=None,
        decoder_padding_mask=None,
        encoder_padding_mask=None,
        self_attention_cache=None,
        cache_update_index=None,
        cross_attention_cache=None,
        return_attention_scores=False,
        training=None,
    ):
        def masked_self_attention(x):  # position t sees positions <= t only
            return self.self_attention(
                x, x,
                key_padding_mask=decoder_padding_mask,
                use_causal_mask=True,
                cache=self_attention_cache,
                cache_update_index=cache_update_index,
                return_attention_scores=return_attention_scores,
                training=training,
            )

        def cross_attention(x):  # queries from the decoder, keys and values from the encoder
            return self.cross_attention(
                x, encoder_output,
                key_padding_mask=encoder_padding_mask,
                cache=cross_attention_cache,
                return_attention_scores=return_attention_scores,
                training=training,
            )

        def feed_forward(x):
            return self.feed_forward(x, training=training)

        x, *others = outputs_of(self.self_attention_add_norm(x, sublayer=masked_self_attention, training=training))
        if return_attention_scores:
            self_attention_weights, *others = others
        if self_attention_cache is not None:
            (self_attention_cache,) = others
        x = self.cross_attention_add_norm(x, sublayer=cross_attention, training=training)
        if return_attention_scores:
            x, cross_attention_weights = x
        x = self.feed_forward_add_norm(x, sublayer=feed_forward, training=training)

        results = (x,)
        if return_attention_scores:
            results += ({"self_attention": self_attention_weights, "cross_attention": cross_attention_weights},)
        if self_attention_cache is not None:
            results += (self_attention_cache,)
        return results[0] if len(results) == 1 else results

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
class Decoder(keras.layers.Layer):
    """Output embedding + positional encoding, N `DecoderBlock`s, then the final
    linear transformation to target-vocabulary logits (the softmax lives in the
    loss and in decoding).

    With `tie_embeddings` the pre-softmax projection is the transpose of the
    target embedding matrix: "we share the same weight matrix between the two
    embedding layers and the pre-softmax linear transformation" (section 3.4).

    Args:
        vocab_size, num_layers, d_model, num_heads, d_ff, dropout, max_length,
        positional, norm_first, tie_embeddings, fused, attention_dropout,
        activation_dropout: as in `TransformerConfig` (target side).
        token_embedding: a `keras.layers.Embedding` shared with the encoder
            (`TransformerConfig.share_embeddings`); None: the decoder's own.

    Call arguments:
        token_ids: int `(batch, target_length)`, 0 = padding; `[START]` first.
        encoder_output: `(batch, source_length, d_model)`.
        encoder_padding_mask: bool `(batch, source_length)`.
        return_attention_scores: also return each block's attention weights, a
            dict of lists: "self_attention" `(batch, num_heads, target_length,
            target_length)` and "cross_attention" `(batch, num_heads,
            target_length, source_length)`, one per block.

    Returns:
        float32 logits `(batch, target_length, vocab_size)`.
    """

    def __init__(
        self, vocab_size, num_layers, d_model, num_heads, d_ff, dropout=0.0,
        max_length=512, positional="sinusoidal", norm_first=False, tie_embeddings=True,
        fused=True, token_embedding=None,
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
        self.tie_embeddings = tie_embeddings
        self.fused = fused
        self.token_embedding = token_embedding
        self.attention_dropout = attention_dropout
        self.activation_dropout = activation_dropout

    def build(self, token_ids_shape, encoder_output_shape=None):
        policy = self.dtype_policy
        self.embedding = PositionalEmbedding(
            self.vocab_size, self.d_model, self.max_length, self.positional, self.dropout,
            token_embedding=self.token_embedding, fused=self.fused, name="embedding", dtype=policy,
        )
        self.embedding.build(token_ids_shape)
        x_shape = tuple(token_ids_shape) + (self.d_model,)
        self.blocks = []
        for i in range(self.num_layers):
            block = DecoderBlock(
                self.num_heads, self.d_ff, self.dropout, self.norm_first, self.fused,
                self.attention_dropout, self.activation_dropout, name=f"block_{i}", dtype=policy,
            )
            block.build(x_shape, encoder_output_shape)
            self.blocks.append(block)
        self.final_norm = None
        if self.norm_first:
            self.final_norm = LayerNorm(fused=self.fused, epsilon=1e-6, name="final_norm", dtype=policy)
            self.final_norm.build(x_shape)
        self.output_projection = None
        if not self.tie_embeddings:
            self.output_projection = keras.layers.Dense(
                self.vocab_size, name="output_projection", dtype=policy
            )
            self.output_projection.build(x_shape)

    def logits(self, x):
        """The final linear transformation `(batch, length, d_model)` ->
        float32 `(batch, length, vocab_size)`."""

        def linear(x):
            if self.output_projection is not None:
                return self.output_projection(x)
            return ops.matmul(x, ops.transpose(ops.cast(self.embedding.embeddings, x.dtype)))

        logits = position_wise(linear, x) if self.fused else linear(x)
        return ops.cast(logits, "float32")

    def compute_cross_attention_cache(self, encoder_output):
        """Every block's cross-attention keys and values, computed once per source.

        Returns:
            A tuple with one `(key, value)` pair per block, each `(batch,
            num_heads, source_length, d_k)`. Kept apart, not stacked into one
            tensor: a decoding step then reads them without slicing copies.
        """
        return tuple(
            block.cross_attention.project(key=encoder_output, value=encoder_output)[1:] for block in self.blocks
        )

    def empty_self_attention_cache(self, batch_size, max_length):
        """Zeros to decode into: a tuple with one `(key, value)` pair per block,
        each `(batch, num_heads, max_length, d_k)`."""
        num_heads = self.blocks[0].num_heads
        shape = (batch_size, num_heads, max_length, self.d_model // num_heads)
        return tuple(
            (ops.zeros(shape, dtype=self.compute_dtype), ops.zeros(shape, dtype=self.compute_dtype))
            for _ in self.blocks
        )

    def decode_step(self, token_ids, index, self_attention_cache, cross_attention_cache, encoder_padding_mask=None,
                    return_attention_scores=False):
        """One step of incremental decoding: the same blocks as `call`, fed one
        position and the keys/values of the positions before it.

        Args:
            token_ids: int `(batch, 1)`, the token at position `index`.
            index: position of `token_ids` (a scalar tensor or int).
            self_attention_cache: from `empty_self_attention_cache` or the last step.
            cross_attention_cache: from `compute_cross_attention_cache`.
            encoder_padding_mask: bool `(batch, source_length)`.
            return_attention_scores: also return this position's attention
                weights: a dict of lists, one per block, "self_attention"
                `(batch, num_heads, cache_length)` (0 after `index`) and
                "cross_attention" `(batch, num_heads, source_length)`.

        Returns:
            `(logits, self_attention_cache)`: float32 logits `(batch, vocab_size)`
            for the token at position index + 1, and the updated cache; then
            the weights if requested.
        """
        x = self.embedding(token_ids, start_index=index)
        updated = []
        all_weights = {"self_attention": [], "cross_attention": []}
        for block, block_cache, block_cross_cache in zip(self.blocks, self_attention_cache, cross_attention_cache):
            x, *weights, block_cache = block(
                x,
                encoder_padding_mask=encoder_padding_mask,
                self_attention_cache=block_cache,
                cache_update_index=index,
                cross_attention_cache=block_cross_cache,
                return_attention_scores=return_attention_scores,
            )
            updated.append(tuple(block_cache))
            for kind in weights[0] if weights else ():
                all_weights[kind].append(weights[0][kind][:, :, 0])  # the one query position
        if self.final_norm is not None:
            x = self.final_norm(x)
        if return_attention_scores:
            return self.logits(x)[:, 0], tuple(updated), all_weights
        return self.logits(x)[:, 0], tuple(updated)

    def call(
        self,
        token_ids,
        encoder_output,
        encoder_padding_mask=None,
        return_attention_scores=False,
        training=None,
    ):
        decoder_padding_mask = padding_mask(token_ids)
        x = self.embedding(token_ids, training=training)
        all_weights = {"self_attention": [], "cross_attention": []}
        for block in self.blocks:
            x = block(
                x, encoder_output,
                decoder_padding_mask=decoder_padding_mask,
                encoder_padding_mask=encoder_padding_mask,
                return_attention_scores=return_attention_scores,
                training=training,
            )
            if return_attention_scores:
                x, weights = x
                for kind in all_weights:
                    all_weights[kind].append(weights[kind])
        if self.final_norm is not None:
            x = self.final_norm(x)
        logits = self.logits(x)
        return (logits, all_weights) if return_attention_scores else logits

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
            "tie_embeddings": self.tie_embeddings,
            "fused": self.fused,
            "attention_dropout": self.attention_dropout,
            "activation_dropout": self.activation_dropout,
        }
