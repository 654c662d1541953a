"""The model of the keras.io example "English-to-Spanish translation with a
sequence-to-sequence Transformer" (fchollet, Keras 3 version,
`examples/nlp/neural_machine_translation_with_transformer.py`), generalised from
one encoder and one decoder layer to `config.num_layers` of each.

Its published structure, kept here:

- `PositionalEmbedding`: token embedding + *learned* position embedding, no
  sqrt(d_model) scaling, no dropout; its Keras mask is `token != 0`.
- `TransformerEncoder`: `keras.layers.MultiHeadAttention` self-attention whose
  `attention_mask` is the Keras padding mask `(batch, 1, source_length)`, then
  post-norm `LayerNormalization(inputs + attention)`, then a `Sequential` of
  `Dense(dense_dim, relu)` and `Dense(embed_dim)`, then post-norm again.
- `TransformerDecoder` (called on `[x, encoder_outputs]`): causal
  self-attention with the example's `get_causal_attention_mask`, materialised
  for the whole batch `(batch, target_length, target_length)`, and `query_mask`; cross-attention
  with `query_mask` and `key_mask`; three post-norm LayerNormalizations
  (Keras's default epsilon 1e-3); the same two-Dense projection.
- No dropout inside the blocks; `Dropout(0.5)` before the final `Dense` to
  the target vocabulary; a separate (untied) output matrix.
- Loss: sparse categorical cross-entropy ignoring class 0 (`keras_io_loss`).

It lives with the tests, which check that its masks hold with N layers (tests/test_keras_io_example.py),
and the training-throughput benchmark times it (benchmarks/train_throughput.py, through
benchmarks/alternatives/keras_io_example.py): tests never import benchmarks.

Changes, each stated where it is made:

- The final `Dense` outputs logits (no softmax), in float32, so that every
  model of the benchmark feeds the same loss; softmax followed by
  cross-entropy on probabilities is the same function as cross-entropy from
  logits.
- Inputs are our dict `{"encoder_tokens", "decoder_tokens"}` of int32.
- N layers instead of one: each decoder layer gets the padding masks
  explicitly (see `build_keras_io_seq2seq`) and passes on the decoder-side one
  (`TransformerDecoder.compute_mask`).
- `key_dim`: the example passes `key_dim=embed_dim`, so each of its h heads is
  d_model wide and every attention projection is d_model x (h * d_model), h
  times the paper's. By default we use the paper's d_k = d_model / h, so the
  model has the same sizes as ours and a throughput comparison measures the
  implementation, not a larger model; `key_dim=config.d_model` rebuilds the
  example exactly.
"""

import keras
from keras import ops


class PositionalEmbedding(keras.layers.Layer):
    """Token embedding + learned position embedding `(batch, length, embed_dim)`."""

    def __init__(self, sequence_length, vocab_size, embed_dim, **kwargs):
        super().__init__(**kwargs)
        self.token_embeddings = keras.layers.Embedding(input_dim=vocab_size, output_dim=embed_dim)
        self.position_embeddings = keras.layers.Embedding(input_dim=sequence_length, output_dim=embed_dim)
        self.sequence_length = sequence_length
        self.vocab_size = vocab_size
        self.embed_dim = embed_dim

    def call(self, inputs):
        length = ops.shape(inputs)[-1]
        positions = ops.arange(0, length, 1)
        return self.token_embeddings(inputs) + self.position_embeddings(positions)

    def compute_mask(self, inputs, mask=None):
        return ops.not_equal(inputs, 0)


class TransformerEncoder(keras.layers.Layer):
    """Post-norm self-attention and two-Dense projection `(batch, source_length, embed_dim)`."""

    def __init__(self, embed_dim, dense_dim, num_heads, key_dim, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim = embed_dim
        self.dense_dim = dense_dim
        self.num_heads = num_heads
        self.attention = keras.layers.MultiHeadAttention(num_heads=num_heads, key_dim=key_dim)
        self.dense_proj = keras.Sequential(
            [keras.layers.Dense(dense_dim, activation="relu"), keras.layers.Dense(embed_dim)]
        )
        self.layernorm_1 = keras.layers.LayerNormalization()
        self.layernorm_2 = keras.layers.LayerNormalization()
        self.supports_masking = True

    def call(self, inputs, mask=None):
        padding_mask = None if mask is None else ops.cast(mask[:, None, :], dtype="int32")
        attention_output = self.attention(query=inputs, value=inputs, key=inputs, attention_mask=padding_mask)
        proj_input = self.layernorm_1(inputs + attention_output)
        proj_output = self.dense_proj(proj_input)
        return self.layernorm_2(proj_input + proj_output)


class TransformerDecoder(keras.layers.Layer):
    """Causal self-attention, cross-attention, projection; called on `[inputs, encoder_outputs]`."""

    def __init__(self, embed_dim, latent_dim, num_heads, key_dim, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim = embed_dim
        self.latent_dim = latent_dim
        self.num_heads = num_heads
        self.attention_1 = keras.layers.MultiHeadAttention(num_heads=num_heads, key_dim=key_dim)
        self.attention_2 = keras.layers.MultiHeadAttention(num_heads=num_heads, key_dim=key_dim)
        self.dense_proj = keras.Sequential(
            [keras.layers.Dense(latent_dim, activation="relu"), keras.layers.Dense(embed_dim)]
        )
        self.layernorm_1 = keras.layers.LayerNormalization()
        self.layernorm_2 = keras.layers.LayerNormalization()
        self.layernorm_3 = keras.layers.LayerNormalization()
        self.supports_masking = True

    def call(self, inputs, mask=None):
        inputs, encoder_outputs = inputs
        causal_mask = self.get_causal_attention_mask(inputs)
        if mask is None:
            inputs_padding_mask, encoder_outputs_padding_mask = None, None
        else:
            inputs_padding_mask, encoder_outputs_padding_mask = mask

        attention_output_1 = self.attention_1(
            query=inputs, value=inputs, key=inputs,
            attention_mask=causal_mask, query_mask=inputs_padding_mask,
        )
        out_1 = self.layernorm_1(inputs + attention_output_1)
        attention_output_2 = self.attention_2(
            query=out_1, value=encoder_outputs, key=encoder_outputs,
            query_mask=inputs_padding_mask, key_mask=encoder_outputs_padding_mask,
        )
        out_2 = self.layernorm_2(out_1 + attention_output_2)
        proj_output = self.dense_proj(out_2)
        return self.layernorm_3(out_2 + proj_output)

    def compute_mask(self, inputs, mask=None):
        # The next decoder layer needs the decoder-side padding mask only.
        return None if mask is None else mask[0]

    def get_causal_attention_mask(self, inputs):
        """int32 `(batch, length, length)`, 1 where i >= j, tiled over the batch."""
        input_shape = ops.shape(inputs)
        batch_size, sequence_length = input_shape[0], input_shape[1]
        i = ops.arange(sequence_length)[:, None]
        j = ops.arange(sequence_length)
        mask = ops.cast(i >= j, dtype="int32")
        mask = ops.reshape(mask, (1, input_shape[1], input_shape[1]))
        # The example tiles with `ops.tile(mask, [batch_size, 1, 1])` built by
        # `ops.concatenate`; Keras 3.15 refuses a tensor of repeats under
        # TensorFlow and JAX, so we broadcast: the same (batch, length, length) tensor.
        return ops.broadcast_to(mask, (batch_size, sequence_length, sequence_length))


def build_keras_io_seq2seq(config, key_dim=None, name="keras_io_transformer"):
    """The keras.io example's Transformer with `config`'s sizes.

    Args:
        config: a `kerasformer.TransformerConfig`; its d_model (embed_dim),
            d_ff (dense_dim / latent_dim), num_heads, num_layers, vocabularies
            and maximum lengths (position table sizes) are used. Its dropout,
            positional, norm_first and tie_embeddings are not: the example has
            no dropout but the final 0.5, learned positions, post-norm and an
            untied output layer.
        key_dim: width of each head; None for d_model / num_heads, or
            `config.d_model` for the example's `key_dim=embed_dim`.
        name: the model's name.

    Inputs (a dict, as `kerasformer.build_seq2seq`):
        encoder_tokens: int32 `(batch, source_length)`, 0 = padding.
        decoder_tokens: int32 `(batch, target_length)`, `[START]` + target.

    Output:
        float32 logits `(batch, target_length, config.target_vocab_size)`.
    """
    key_dim = key_dim or config.d_model // config.num_heads
    encoder_tokens = keras.Input(shape=(None,), dtype="int32", name="encoder_tokens")
    decoder_tokens = keras.Input(shape=(None,), dtype="int32", name="decoder_tokens")

    x = PositionalEmbedding(config.max_source_length, config.source_vocab_size, config.d_model)(encoder_tokens)
    for _ in range(config.num_layers):
        x = TransformerEncoder(config.d_model, config.d_ff, config.num_heads, key_dim)(x)
    encoder_outputs = x

    # The Keras masks of `PositionalEmbedding`, passed explicitly: the first
    # decoder layer's MultiHeadAttention clears the Keras mask of the encoder
    # output it reads, so later layers would not see the source padding.
    masks = [ops.not_equal(decoder_tokens, 0), ops.not_equal(encoder_tokens, 0)]
    x = PositionalEmbedding(config.max_target_length, config.target_vocab_size, config.d_model)(decoder_tokens)
    for _ in range(config.num_layers):
        x = TransformerDecoder(config.d_model, config.d_ff, config.num_heads, key_dim)([x, encoder_outputs], mask=masks)
    x = keras.layers.Dropout(0.5)(x)
    # Logits instead of the example's softmax probabilities: see the module docstring.
    logits = keras.layers.Dense(config.target_vocab_size, dtype="float32")(x)
    return keras.Model(
        inputs={"encoder_tokens": encoder_tokens, "decoder_tokens": decoder_tokens},
        outputs=logits,
        name=name,
    )


def keras_io_loss():
    """The example's loss, `SparseCategoricalCrossentropy(ignore_class=0)`, on logits."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)
