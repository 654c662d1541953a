"""The encoder-decoder Transformer as a functional Keras model (figure 1)."""

import keras

from kerasformer.config import TransformerConfig
from kerasformer.decoder import Decoder
from kerasformer.encoder import Encoder
from kerasformer.masks import padding_mask


@keras.saving.register_keras_serializable(package="kerasformer")
class Seq2Seq(keras.Model):
    """The Transformer of "Attention Is All You Need": a functional model built
    from a `TransformerConfig`, saved and loaded as that config.

    Inputs (a dict keyed by these names):
        encoder_tokens: int32 `(batch, source_length)`, source_length <=
            `config.max_source_length`, 0 = padding.
        decoder_tokens: int32 `(batch, target_length)`, target_length <=
            `config.max_target_length`: `[START]` + target (teacher forcing).

    Output:
        float32 logits `(batch, target_length, config.target_vocab_size)`;
        position t predicts target token t from source and decoder tokens <= t.

    The layers are named "encoder" and "decoder" (`model.get_layer`). With
    `config.share_embeddings` both hold one `keras.layers.Embedding`,
    "shared_token_embedding": one variable, one vocabulary for both languages
    (and the output projection too with `tie_embeddings`). `get_config` is the
    config, so loading a `.keras` file builds the same sharing again; it also names the
    layers frozen with `layer.trainable = False` (by path, e.g. "encoder/block_0"), so a model
    saved half-frozen for fine-tuning loads half-frozen.

    Args:
        config: a `TransformerConfig` (or its dict).
        layer_dtype: a Keras dtype policy name for every layer, e.g.
            "mixed_bfloat16"; None: the global policy's (recorded in `get_config`).
        name: the model's name.
        frozen_layers: paths of the nested layers to freeze (`trainable = False`), as
            `get_config` records them; every other layer stays trainable.
    """

    def __init__(self, config, layer_dtype=None, name="transformer", frozen_layers=(), **kwargs):
        if isinstance(config, dict):
            config = TransformerConfig.from_dict(config)
        # Recorded by name, so a file saved under a global policy loads in that policy.
        layer_dtype = layer_dtype or keras.config.dtype_policy().name
        encoder_tokens = keras.Input(shape=(None,), dtype="int32", name="encoder_tokens")
        decoder_tokens = keras.Input(shape=(None,), dtype="int32", name="decoder_tokens")
        token_embedding = None
        if config.share_embeddings:
            token_embedding = keras.layers.Embedding(
                config.target_vocab_size, config.d_model, name="shared_token_embedding", dtype=layer_dtype
            )
        shared = dict(
            d_model=config.d_model,
            num_heads=config.num_heads,
            d_ff=config.d_ff,
            dropout=config.dropout,
            attention_dropout=config.attention_dropout,
            activation_dropout=config.activation_dropout,
            positional=config.positional,
            norm_first=config.norm_first,
            fused=config.fused,
            token_embedding=token_embedding,
            dtype=layer_dtype,
        )
        encoder = Encoder(
            config.source_vocab_size,
            num_layers=config.num_layers,
            max_length=config.max_source_length,
            name="encoder",
            **shared,
        )
        decoder = Decoder(
            config.target_vocab_size,
            num_layers=config.decoder_layers,
            max_length=config.max_target_length,
            tie_embeddings=config.tie_embeddings,
            name="decoder",
            **shared,
        )
        encoder_output = encoder(encoder_tokens)
        logits = decoder(decoder_tokens, encoder_output, encoder_padding_mask=padding_mask(encoder_tokens))
        super().__init__(
            inputs={"encoder_tokens": encoder_tokens, "decoder_tokens": decoder_tokens},
            outputs=logits,
            name=name,
            **kwargs,
        )
        self.transformer_config = config
        self.layer_dtype = layer_dtype
        self._freeze(frozen_layers)

    def _layers_by_path(self):
        """{path: layer} for every nested layer that has a path (those that hold weights),
        parents before their children."""
        layers = {layer.path: layer for layer in self._flatten_layers(include_self=False) if layer.path}
        return dict(sorted(layers.items(), key=lambda item: item[0].count("/")))

    def _freeze(self, frozen_layers):
        if not frozen_layers:  # the common case: no walk over every layer at construction
            return
        layers = self._layers_by_path()
        unknown = sorted(set(frozen_layers) - set(layers))
        if unknown:
            raise ValueError(f"frozen_layers names layers this model does not have: {unknown}")
        # Parents first: freezing a layer freezes its children, and a child that was left
        # trainable under a frozen parent is made trainable again after it.
        for path, layer in layers.items():
            trainable = path not in frozen_layers
            if layer.trainable != trainable:
                layer.trainable = trainable

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "config": self.transformer_config.to_dict(),
            "layer_dtype": self.layer_dtype,
            "frozen_layers": [path for path, layer in self._layers_by_path().items() if not layer.trainable],
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)


def build_seq2seq(config: TransformerConfig, name="transformer", dtype=None):
    """Builds the Transformer of "Attention Is All You Need" from a config.

    Args:
        config: the hyperparameters.
        name: the model's name.
        dtype: a Keras dtype policy name for every layer, e.g. "mixed_bfloat16"
            (float32 weights, bfloat16 compute; the softmax and the logits stay
            float32). None uses the global policy.

    Returns:
        a `Seq2Seq` model (inputs, output and layer names there).

    Example:
        >>> from kerasformer import build_seq2seq, preset
        >>> model = build_seq2seq(preset("tiny", source_vocab_size=50, target_vocab_size=60))
        >>> tokens = {"encoder_tokens": [[5, 6, 7, 0]], "decoder_tokens": [[1, 9, 0]]}
        >>> model(tokens).shape
        (1, 3, 60)
    """
    return Seq2Seq(config, layer_dtype=getattr(dtype, "name", dtype), name=name)  # a policy or its name
