"""The model's hyperparameters as one dataclass, with the paper's presets.

Names follow "Attention Is All You Need" (Vaswani et al., 2017), Table 3:
``d_model``, ``num_heads`` (h), ``d_ff``, ``num_layers`` (N), ``dropout`` (P_drop).
"""

import dataclasses

POSITIONAL_KINDS = ("sinusoidal", "learned")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyperparameters of the encoder-decoder Transformer.

    Attributes:
        source_vocab_size: number of source token ids; id 0 is padding.
        target_vocab_size: number of target token ids; id 0 is padding.
        d_model: width of every sublayer output and of the embeddings.
        num_heads: h, the number of attention heads; d_k = d_v = d_model / h.
        d_ff: inner width of the position-wise feed-forward network.
        num_layers: N, the number of encoder blocks and of decoder blocks.
        num_decoder_layers: None (the paper: N decoder blocks too) or a number of
            decoder blocks of its own, for a deep encoder and a shallow decoder
            (Kasai et al. 2021: decoder blocks cost the most, in training and
            even more in step-by-step decoding).
        dropout: P_drop where the paper applies it (section 5.4): "to the output of
            each sub-layer, before it is added to the sub-layer input and
            normalized" and "to the sums of the embeddings and the positional
            encodings".
        attention_dropout: dropout on the attention weights. 0, as in the paper and
            in tensor2tensor's `transformer_base_v1` (its settings); its later
            `transformer_base_v2` and keras-hub's layers use P_drop here. It costs a
            random number per weight: h * query_length * key_length per example
            and attention layer.
        activation_dropout: dropout on the FFN's inner activation max(0, x W_1 + b_1)
            (tensor2tensor's `relu_dropout`). 0, as in the paper and `transformer_base_v1`.
            The largest tensor of a block (d_ff per position), so the dearest to drop out.
        max_source_length: longest encoder input the model accepts.
        max_target_length: longest decoder input the model accepts.
        positional: "sinusoidal" (the paper) or "learned" position embeddings.
        norm_first: False is the paper's post-norm LayerNorm(x + Sublayer(x));
            True is pre-norm x + Sublayer(LayerNorm(x)) with a final LayerNorm.
        tie_embeddings: share the target embedding matrix with the pre-softmax
            linear transformation (paper, section 3.4).
        share_embeddings: one token embedding matrix for the source and the target
            (one vocabulary shared by both languages; with `tie_embeddings` the
            output projection is that matrix too, the paper's section 3.4 and
            Press & Wolf 2017). Needs source_vocab_size == target_vocab_size.
        fused: the same model computed faster: the attention projections that
            read one input as one matmul, and every position-wise matmul on the
            2-D view `(batch * length, d_model)` (`MultiHeadAttention.fused_project`,
            `feed_forward.position_wise`). False runs the plain path the
            docstrings describe; the weights and `.keras` files are the same
            either way (benchmarks/train_throughput.py --compare-fused times both).
            Fused dropout (`PairedDropout`, TensorFlow and JAX) takes two keep-or-drop
            decisions from each random number, half the random numbers of
            `keras.layers.Dropout` (benchmarks/dropout_cost.py), with P_drop rounded
            to a multiple of 1/2048. Fused LayerNorm (`LayerNorm`, JAX) writes out its
            gradient instead of JAX's autodiff of it.
    """

    source_vocab_size: int = 8000
    target_vocab_size: int = 8000
    d_model: int = 512
    num_heads: int = 8
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int | None = None
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    max_source_length: int = 128
    max_target_length: int = 128
    positional: str = "sinusoidal"
    norm_first: bool = False
    tie_embeddings: bool = True
    share_embeddings: bool = False
    fused: bool = True

    def __post_init__(self):
        for name in (
            "source_vocab_size",
            "target_vocab_size",
            "d_model",
            "num_heads",
            "d_ff",
            "num_layers",
            "max_source_length",
            "max_target_length",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.num_decoder_layers is not None and (
            isinstance(self.num_decoder_layers, bool)
            or not isinstance(self.num_decoder_layers, int)
            or self.num_decoder_layers < 1
        ):
            raise ValueError(
                f"num_decoder_layers={self.num_decoder_layers!r} must be a positive integer "
                "(or None: as many as num_layers)"
            )
        for name in ("norm_first", "tie_embeddings", "share_embeddings", "fused"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be true or false")
        if self.share_embeddings and self.source_vocab_size != self.target_vocab_size:
            raise ValueError(
                f"share_embeddings needs one vocabulary: source_vocab_size={self.source_vocab_size} "
                f"!= target_vocab_size={self.target_vocab_size}"
            )
        if self.d_model % self.num_heads:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}"
            )
        if self.d_model % 2:
            raise ValueError(
                f"d_model={self.d_model} must be even: positional encodings pair "
                "sin (even dimensions) with cos (odd dimensions)"
            )
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            rate = getattr(self, name)
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
                raise ValueError(f"{name}={rate!r} must be in [0, 1)")
        for name in ("max_source_length", "max_target_length"):
            if getattr(self, name) < 2:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 2")
        if self.positional not in POSITIONAL_KINDS:
            raise ValueError(
                f"positional={self.positional!r} must be one of {POSITIONAL_KINDS}"
            )

    @property
    def decoder_layers(self):
        """The number of decoder blocks: num_decoder_layers, or N."""
        return self.num_layers if self.num_decoder_layers is None else self.num_decoder_layers

    @property
    def d_k(self):
        """Width of one head's queries, keys and values: d_model / h."""
        return self.d_model // self.num_heads

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        """Builds a config from a dict, refusing keys that are not fields."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known, key=str)  # a YAML key may be a number
        if unknown:
            raise ValueError(
                f"unknown config key(s) {unknown}; known keys are {sorted(known)}"
            )
        return cls(**values)

    def replace(self, **changes):
        """A copy with some fields changed (validated like a new config)."""
        return self.from_dict({**self.to_dict(), **changes})


PRESETS = {
    # A few thousand parameters: unit tests and toy tasks.
    "tiny": dict(
        d_model=32, num_heads=4, d_ff=64, num_layers=2, dropout=0.0,
        max_source_length=32, max_target_length=32,
    ),
    # Trains on a 2-core CPU in minutes: the README's demo.
    "small": dict(
        d_model=128, num_heads=4, d_ff=512, num_layers=3, dropout=0.1,
        max_source_length=96, max_target_length=96,
    ),
    # The paper's base model (Table 3, row "base").
    "base": dict(
        d_model=512, num_heads=8, d_ff=2048, num_layers=6, dropout=0.1,
        max_source_length=256, max_target_length=256,
    ),
    # The paper's big model (Table 3, row "big"; P_drop 0.3 for EN-DE).
    "big": dict(
        d_model=1024, num_heads=16, d_ff=4096, num_layers=6, dropout=0.3,
        max_source_length=256, max_target_length=256,
    ),
}


def preset(name, **overrides):
    """Returns the named preset ("tiny", "small", "base", "big") with overrides.

    Example:
        >>> preset("base", source_vocab_size=32000, target_vocab_size=32000).d_model
        512
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return TransformerConfig.from_dict({**PRESETS[name], **overrides})
