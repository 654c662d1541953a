"""kerasformer: the Transformer of "Attention Is All You Need" as Keras 3 layers.

Runs on the TensorFlow, JAX and PyTorch backends (set KERAS_BACKEND).
"""

from kerasformer.add_norm import AddNorm
from kerasformer.attention import MultiHeadAttention, scaled_dot_product_attention
from kerasformer.config import PRESETS, TransformerConfig, preset
from kerasformer.decoder import Decoder, DecoderBlock
from kerasformer.dropout import PairedDropout
from kerasformer.embedding import PositionalEmbedding, positional_encoding
from kerasformer.encoder import Encoder, EncoderBlock
from kerasformer.feed_forward import FeedForward
from kerasformer.layer_norm import LayerNorm
from kerasformer.masks import causal_mask, padding_mask
from kerasformer.model import Seq2Seq, build_seq2seq

__version__ = "0.1.0"  # the one place the version is written; pyproject.toml reads it

# The Keras backends kerasformer runs on and is tested under (tests/run.sh runs the suite under each).
BACKENDS = ("tensorflow", "jax", "torch")

__all__ = [
    "AddNorm",
    "BACKENDS",
    "Decoder",
    "DecoderBlock",
    "Encoder",
    "EncoderBlock",
    "FeedForward",
    "LayerNorm",
    "MultiHeadAttention",
    "PairedDropout",
    "PRESETS",
    "PositionalEmbedding",
    "TransformerConfig",
    "Seq2Seq",
    "build_seq2seq",
    "causal_mask",
    "padding_mask",
    "positional_encoding",
    "preset",
    "scaled_dot_product_attention",
]
