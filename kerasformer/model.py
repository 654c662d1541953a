"""The encoder-decoder Transformer as a functional Keras model (figure 1)."""

import keras

from kerasformer.config import TransformerConfig
from kerasformer.decoder import Decoder
from kerasformer.encoder import Encoder
from kerasformer.masks import padding_mask


def build_seq2seq(config: TransformerConfig, name="transformer", dtype=None):
    """Builds the Transformer of "Attention Is All You Need" from a config.

    Args:
        config: the hyperparameters.
        name: the model's name.
        dtype: a Keras dtype policy for every layer, e.g. "mixed_bfloat16"
            (float32 weights, bfloat16 compute; the softmax and the logits stay
            float32). None uses the global policy.

    Inputs (a dict keyed by these names):
        encoder_tokens: int32 `(batch, source_length)`, source_length <=
            `config.max_source_length`, 0 = padding.
        decoder_tokens: int32 `(batch, target_length)`, target_length <=
            `config.max_target_length`: `[START]` + target (teacher forcing).

    Output:
        float32 logits `(batch, target_length, config.target_vocab_size)`;
        position t predicts target token t from source and decoder tokens <= t.

    Example:
        >>> from kerasformer import build_seq2seq, preset
        >>> model = build_seq2seq(preset("tiny", source_vocab_size=50, target_vocab_size=60))
        >>> tokens = {"encoder_tokens": [[5, 6, 7, 0]], "decoder_tokens": [[1, 9, 0]]}
        >>> model(tokens).shape
        (1, 3, 60)
    """
    encoder_tokens = keras.Input(shape=(None,), dtype="int32", name="encoder_tokens")
    decoder_tokens = keras.Input(shape=(None,), dtype="int32", name="decoder_tokens")
    shared = dict(
        num_layers=config.num_layers,
        d_model=config.d_model,
        num_heads=config.num_heads,
        d_ff=config.d_ff,
        dropout=config.dropout,
        positional=config.positional,
        norm_first=config.norm_first,
        fused=config.fused,
        dtype=dtype,
    )
    encoder = Encoder(
        config.source_vocab_size, max_length=config.max_source_length, name="encoder", **shared
    )
    decoder = Decoder(
        config.target_vocab_size,
        max_length=config.max_target_length,
        tie_embeddings=config.tie_embeddings,
        name="decoder",
        **shared,
    )
    encoder_output = encoder(encoder_tokens)
    logits = decoder(decoder_tokens, encoder_output, encoder_padding_mask=padding_mask(encoder_tokens))
    return keras.Model(
        inputs={"encoder_tokens": encoder_tokens, "decoder_tokens": decoder_tokens},
        outputs=logits,
        name=name,
    )
