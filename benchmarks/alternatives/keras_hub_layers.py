"""The encoder-decoder Transformer assembled from keras-hub's layers, and
keras-hub's cached greedy decoding for it: the alternative a Keras user would
reach for instead of kerasformer.

The model follows keras-hub's BART (`keras_hub/src/models/bart/bart_backbone.py`):
token embedding + position encoding, `TransformerEncoder` blocks,
`TransformerDecoder` blocks, then the pre-softmax projection (the transposed
target embedding through `ReversibleEmbedding(reverse=True)` when tied, as BART
does, else a `Dense`). It takes the same inputs as `kerasformer.build_seq2seq`
and has the same sizes; its weights are its own.

The decoding follows `BartSeq2SeqLM` (`bart_seq_2_seq_lm.py`): `_build_cache`
runs the decoder once over the whole padded prompt to seed the self-attention
cache `(batch, num_layers, 2, max_length, num_heads, head_dim)` and the
cross-attention cache; `generate_step` then hands a `next(prompt, cache, index)`
that feeds one token through `call_decoder_with_cache` to
`keras_hub.samplers.GreedySampler`, which runs it in `ops.while_loop` and writes
each token with `ops.slice_update`. keras-hub's `generate` compiles this with
`tf.function(jit_compile=True)` under TensorFlow.

Differences from keras-hub's own model, none of which changes the work per step:
our dict inputs, sinusoidal positions from `SinePositionEncoding` (BART learns
them; `positional="learned"` uses `PositionEmbedding`), no embedding LayerNorm
(the paper has none), and a final LayerNorm only with `norm_first`.
"""

import keras
import keras_hub
from keras import ops


def _embedding(config, vocab_size, max_length, side, dtype):
    """Token embedding, position encoding, their sum and dropout, named `{side}_...`."""
    # Tied: the decoder's projection is this matrix transposed (reverse=True);
    # untied, a Dense does the projection, so no separate reverse matrix either way.
    tokens = keras_hub.layers.ReversibleEmbedding(
        vocab_size, config.d_model, tie_weights=True, name=f"{side}_token_embedding", dtype=dtype
    )
    if config.positional == "learned":
        positions = keras_hub.layers.PositionEmbedding(max_length, name=f"{side}_position_embedding", dtype=dtype)
    else:
        positions = keras_hub.layers.SinePositionEncoding(name=f"{side}_position_embedding", dtype=dtype)
    add = keras.layers.Add(name=f"{side}_embeddings_add", dtype=dtype)
    dropout = keras.layers.Dropout(config.dropout, name=f"{side}_embeddings_dropout", dtype=dtype)
    return tokens, positions, add, dropout


def build_keras_hub_seq2seq(config, name="keras_hub_transformer", dtype=None):
    """The Transformer of `config` from keras-hub layers, as a functional model.

    Args:
        config: a `kerasformer.TransformerConfig` (d_model, num_heads, d_ff,
            num_layers, dropout, vocabularies, maximum lengths, positional,
            norm_first, tie_embeddings).
        name: the model's name.
        dtype: a Keras dtype policy for every layer; None uses the global one.

    Inputs (a dict, as `kerasformer.build_seq2seq`):
        encoder_tokens: int32 `(batch, source_length)`, 0 = padding.
        decoder_tokens: int32 `(batch, target_length)`, `[START]` + target.

    Output:
        float32 logits `(batch, target_length, config.target_vocab_size)`.
    """
    encoder_tokens = keras.Input(shape=(None,), dtype="int32", name="encoder_tokens")
    decoder_tokens = keras.Input(shape=(None,), dtype="int32", name="decoder_tokens")
    encoder_padding_mask = ops.not_equal(encoder_tokens, 0)
    decoder_padding_mask = ops.not_equal(decoder_tokens, 0)
    blocks = dict(
        intermediate_dim=config.d_ff, num_heads=config.num_heads, dropout=config.dropout,
        normalize_first=config.norm_first, dtype=dtype,
    )

    token_embedding, position_embedding, add, dropout = _embedding(
        config, config.source_vocab_size, config.max_source_length, "encoder", dtype
    )
    x = token_embedding(encoder_tokens)
    x = dropout(add([x, position_embedding(x)]))
    for i in range(config.num_layers):
        x = keras_hub.layers.TransformerEncoder(name=f"encoder_layer_{i}", **blocks)(
            x, padding_mask=encoder_padding_mask
        )
    if config.norm_first:
        x = keras.layers.LayerNormalization(epsilon=1e-5, name="encoder_final_norm", dtype=dtype)(x)
    encoder_output = x

    token_embedding, position_embedding, add, dropout = _embedding(
        config, config.target_vocab_size, config.max_target_length, "decoder", dtype
    )
    x = token_embedding(decoder_tokens)
    x = dropout(add([x, position_embedding(x)]))
    for i in range(config.num_layers):
        x = keras_hub.layers.TransformerDecoder(name=f"decoder_layer_{i}", **blocks)(
            x, encoder_output,
            decoder_padding_mask=decoder_padding_mask,
            encoder_padding_mask=encoder_padding_mask,
        )
    if config.norm_first:
        x = keras.layers.LayerNormalization(epsilon=1e-5, name="decoder_final_norm", dtype=dtype)(x)
    if config.tie_embeddings:
        logits = token_embedding(x, reverse=True)
    else:
        logits = keras.layers.Dense(config.target_vocab_size, name="output_projection", dtype=dtype)(x)
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(logits)
    return keras.Model(
        inputs={"encoder_tokens": encoder_tokens, "decoder_tokens": decoder_tokens},
        outputs=logits,
        name=name,
    )


def _layers(model, prefix):
    """The model's layers named `{prefix}0`, `{prefix}1`, ... in order."""
    found = [layer for layer in model.layers if layer.name.startswith(prefix)]
    return sorted(found, key=lambda layer: int(layer.name[len(prefix):]))


def _optional_layer(model, name):
    return next((layer for layer in model.layers if layer.name == name), None)


def call_encoder(model, encoder_tokens, encoder_padding_mask):
    """`BartSeq2SeqLM.call_encoder`: `(batch, source_length, d_model)`."""
    x = model.get_layer("encoder_token_embedding")(encoder_tokens)
    x = model.get_layer("encoder_embeddings_add")([x, model.get_layer("encoder_position_embedding")(x)])
    x = model.get_layer("encoder_embeddings_dropout")(x)
    for layer in _layers(model, "encoder_layer_"):
        x = layer(x, padding_mask=encoder_padding_mask)
    final_norm = _optional_layer(model, "encoder_final_norm")
    return x if final_norm is None else final_norm(x)


def call_decoder_with_cache(
    model,
    encoder_output,
    encoder_padding_mask,
    decoder_token_ids,
    self_attention_cache,
    self_attention_cache_update_index,
    cross_attention_cache,
    cross_attention_cache_update_index,
):
    """`BartSeq2SeqLM.call_decoder_with_cache`: the decoder on `decoder_token_ids`
    `(batch, length)` at `self_attention_cache_update_index`, reading and
    updating the caches `(batch, num_layers, 2, max_length | source_length,
    num_heads, head_dim)`.

    Returns:
        `(logits, hidden_states, self_attention_cache, cross_attention_cache)`.
    """
    token_embedding = model.get_layer("decoder_token_embedding")
    x = token_embedding(decoder_token_ids)
    positions = model.get_layer("decoder_position_embedding")(x, start_index=self_attention_cache_update_index)
    x = model.get_layer("decoder_embeddings_add")([x, positions])
    x = model.get_layer("decoder_embeddings_dropout")(x)
    self_attention_caches, cross_attention_caches = [], []
    for i, layer in enumerate(_layers(model, "decoder_layer_")):
        x, next_self_attention_cache, next_cross_attention_cache = layer(
            decoder_sequence=x,
            encoder_sequence=encoder_output,
            encoder_padding_mask=encoder_padding_mask,
            self_attention_cache=self_attention_cache[:, i, ...],
            self_attention_cache_update_index=self_attention_cache_update_index,
            cross_attention_cache=cross_attention_cache[:, i, ...],
            cross_attention_cache_update_index=cross_attention_cache_update_index,
        )
        if self_attention_cache_update_index is not None:
            self_attention_caches.append(next_self_attention_cache)
        if cross_attention_cache_update_index is not None:
            cross_attention_caches.append(next_cross_attention_cache)
    if self_attention_cache_update_index is not None:
        self_attention_cache = ops.stack(self_attention_caches, axis=1)
    if cross_attention_cache_update_index is not None:
        cross_attention_cache = ops.stack(cross_attention_caches, axis=1)
    final_norm = _optional_layer(model, "decoder_final_norm")
    hidden_states = x if final_norm is None else final_norm(x)
    output_projection = _optional_layer(model, "output_projection")
    if output_projection is None:
        logits = token_embedding(hidden_states, reverse=True)
    else:
        logits = output_projection(hidden_states)
    return logits, hidden_states, self_attention_cache, cross_attention_cache


def build_cache(model, encoder_tokens, encoder_padding_mask, decoder_token_ids):
    """`BartSeq2SeqLM._initialize_cache` + `_build_cache`: zero caches, then one
    decoder pass over the whole padded prompt that fills both.

    Returns:
        `(hidden_states, encoder_output, self_attention_cache, cross_attention_cache)`.
    """
    encoder_output = call_encoder(model, encoder_tokens, encoder_padding_mask)
    first = _layers(model, "decoder_layer_")[0]
    d_model = model.get_layer("decoder_token_embedding").output_dim
    num_layers, num_heads = len(_layers(model, "decoder_layer_")), first.num_heads
    shape = [ops.shape(encoder_tokens)[0], num_layers, 2, ops.shape(decoder_token_ids)[1], num_heads, d_model // num_heads]
    self_attention_cache = ops.zeros(shape, dtype=model.compute_dtype)
    shape[3] = ops.shape(encoder_tokens)[1]
    cross_attention_cache = ops.zeros(shape, dtype=model.compute_dtype)
    _, hidden_states, self_attention_cache, cross_attention_cache = call_decoder_with_cache(
        model, encoder_output, encoder_padding_mask, decoder_token_ids,
        self_attention_cache, 0, cross_attention_cache, 0,
    )
    return hidden_states, encoder_output, self_attention_cache, cross_attention_cache


def greedy_generate(model, encoder_tokens, start_id, num_tokens, sampler=None):
    """`BartSeq2SeqLM.generate_step` with `GreedySampler` and no stop token:
    exactly `num_tokens` tokens after `[START]`.

    Args:
        model: from `build_keras_hub_seq2seq`.
        encoder_tokens: int32 `(batch, source_length)`, 0-padded.
        start_id: the `[START]` id that opens the prompt.
        num_tokens: how many tokens to generate (a Python int).
        sampler: a `keras_hub.samplers.Sampler`; default `GreedySampler()`.

    Returns:
        int32 `(batch, num_tokens)`.
    """
    sampler = sampler or keras_hub.samplers.GreedySampler()
    encoder_tokens = ops.convert_to_tensor(encoder_tokens, dtype="int32")
    encoder_padding_mask = ops.not_equal(encoder_tokens, 0)
    batch_size = ops.shape(encoder_tokens)[0]
    # The preprocessor's prompt: [START] then padding up to the output length.
    decoder_token_ids = ops.pad(ops.full((batch_size, 1), start_id, dtype="int32"), [[0, 0], [0, num_tokens]])
    decoder_padding_mask = ops.not_equal(decoder_token_ids, 0)
    hidden_states, encoder_output, self_attention_cache, cross_attention_cache = build_cache(
        model, encoder_tokens, encoder_padding_mask, decoder_token_ids
    )
    index = ops.min(ops.sum(ops.cast(decoder_padding_mask, "int32"), axis=-1))

    def next(prompt, cache, index):
        cache_index = index - 1
        prompt = ops.slice(prompt, [0, cache_index], [ops.shape(prompt)[0], 1])
        self_attention_cache, encoder_output, encoder_padding_mask, cross_attention_cache = cache
        logits, hidden_states, self_attention_cache, _ = call_decoder_with_cache(
            model, encoder_output, encoder_padding_mask, prompt,
            self_attention_cache, cache_index, cross_attention_cache, None,
        )
        cache = (self_attention_cache, encoder_output, encoder_padding_mask, cross_attention_cache)
        return ops.squeeze(logits, axis=1), ops.squeeze(hidden_states, axis=1), cache

    tokens = sampler(
        next=next,
        prompt=decoder_token_ids,
        cache=(self_attention_cache, encoder_output, encoder_padding_mask, cross_attention_cache),
        index=index,
        mask=decoder_padding_mask,
        stop_token_ids=None,
        hidden_states=hidden_states,
        model=model,
    )
    return tokens[:, 1:]
