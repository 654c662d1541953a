"""Translate text with a trained run: `Translator.from_run("runs/en-es").translate([...])`.

Tokenizes with the run's own SentencePiece models, decodes greedily or with
beam search (`beam_size`) with the cached loops of `kerasformer.decoding` (compiled with `tf.function` or `jax.jit`
when the backend allows it), and detokenizes. Also draws the cross-attention
weights of one decoder layer, one panel per head, as the course notes do.
"""

import os

import keras
import numpy as np
from keras import ops

from kerasformer.decoding import beam_search, greedy_decode
from kerasformer.masks import padding_mask
from training.tokenizers import END_ID, START_ID, load_tokenizer


def compile_for_backend(function, jit_compile=True):
    """`function(encoder_tokens)` compiled for the current backend when possible.

    TensorFlow: `tf.function` (the while loop becomes a graph loop), compiled
    with XLA when `jit_compile`: on CPU the cached loop then runs several times
    faster (benchmarks/decode_speed.py), for a compilation of a few seconds per
    new input shape (a plain `tf.function` retraces per shape too). The export
    runs the same loop without XLA, which TensorFlow Serving disables on CPU by
    default: the two agree up to float rounding, so a near-tie between two
    tokens may break differently. JAX: `jax.jit` (recompiled per source shape,
    so callers pad to few shapes); torch: eager without autograd bookkeeping.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(function, reduce_retracing=True, jit_compile=jit_compile)
    if backend == "jax":
        import jax

        return jax.jit(function)
    if backend == "torch":
        import torch

        def no_grad(encoder_tokens):
            with torch.no_grad():
                return function(encoder_tokens)

        return no_grad
    return function


def run_files(run_dir, checkpoint="best"):
    """`(RUN_DIR/{checkpoint}.keras, source .model, target .model)` of a training
    run; FileNotFoundError naming the first one missing."""
    tokenizers = os.path.join(run_dir, "tokenizers")
    paths = (
        os.path.join(run_dir, f"{checkpoint}.keras"),
        os.path.join(tokenizers, "source.model"),
        os.path.join(tokenizers, "target.model"),
    )
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} does not exist: is {run_dir} a finished training run?")
    return paths


def load_run_model(path):
    """The model of a `.keras` file, loaded in Keras's safe mode (the default: a file
    holding Python code, e.g. a Lambda layer, is refused, not run); errors name the file."""
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:
        raise ValueError(f"{path}: cannot load the model: {error}") from error


class Translator:
    """Raw text in, translated text out.

    Args:
        model: a `build_seq2seq` model.
        source_tokenizer, target_tokenizer: the run's keras-hub tokenizers.
        max_length: most target tokens per translation ([END] included).
        batch_size: sentences decoded together.
        beam_size: 1 decodes greedily; more runs `kerasformer.decoding.beam_search`
            (the paper: 4).
        alpha: beam search's length penalty exponent (the paper: 0.6).
    """

    def __init__(self, model, source_tokenizer, target_tokenizer, max_length=None, batch_size=64,
                 beam_size=1, alpha=0.6):
        self.model = model
        self.source_tokenizer = source_tokenizer
        self.target_tokenizer = target_tokenizer
        self.max_source_length = model.get_layer("encoder").max_length
        self.max_length = max_length or model.get_layer("decoder").max_length
        self.batch_size = batch_size
        self.beam_size, self.alpha = beam_size, alpha
        if beam_size == 1:
            search = lambda tokens: greedy_decode(model, tokens, START_ID, END_ID, self.max_length)  # noqa: E731
        else:
            search = lambda tokens: beam_search(  # noqa: E731
                model, tokens, START_ID, END_ID, self.max_length, beam_size, alpha
            )[0]
        self._decode = compile_for_backend(search)

    @classmethod
    def from_run(cls, run_dir, checkpoint="best", **kwargs):
        """Loads `RUN_DIR/{checkpoint}.keras` and the run's tokenizers."""
        model_path, source_model, target_model = run_files(run_dir, checkpoint)
        return cls(
            load_run_model(model_path),
            load_tokenizer(source_model),
            load_tokenizer(target_model),
            **kwargs,
        )

    def encode(self, texts):
        """Source token ids, truncated to the model's maximum source length."""
        return [list(ids)[: self.max_source_length] for ids in self.source_tokenizer(list(texts))]

    def translate_tokens(self, source_ids):
        """Lists of source ids -> lists of target ids (without [END] and padding)."""
        order = sorted(range(len(source_ids)), key=lambda i: len(source_ids[i]))  # similar lengths together
        results = [None] * len(source_ids)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            # Pad to a multiple of 8 so a compiled loop sees few distinct shapes.
            width = max(8, -(-max(len(source_ids[i]) for i in rows) // 8) * 8)
            batch = np.zeros((len(rows), min(width, self.max_source_length)), "int32")
            for row, i in enumerate(rows):
                batch[row, : len(source_ids[i])] = source_ids[i]
            tokens = ops.convert_to_numpy(self._decode(batch))
            for row, i in enumerate(rows):
                ids = [int(t) for t in tokens[row] if t != 0]
                results[i] = ids[: ids.index(END_ID)] if END_ID in ids else ids
        return results

    def translate(self, texts):
        """Translates a list of strings."""
        if isinstance(texts, str):
            raise TypeError("translate() takes a list of strings; wrap one sentence in a list")
        texts = list(texts)
        if not texts:
            return []
        target_ids = self.translate_tokens(self.encode(texts))
        return [self.detokenize(ids) for ids in target_ids]

    def detokenize(self, ids):
        if not ids:
            return ""
        text = self.target_tokenizer.detokenize([ids])[0]
        return text.decode("utf-8") if isinstance(text, bytes) else str(text)

    def cross_attention(self, text, layer=-1):
        """Cross-attention weights of one decoder layer while translating `text`.

        Returns:
            `(source_pieces, target_pieces, weights)`, weights `(num_heads,
            target_length, source_length)`: row t is what generated piece t
            attended to ([START] is fed at step 0, so piece t was predicted
            from decoder position t).
        """
        source_ids = self.encode([text])[0]
        target_ids = self.translate_tokens([source_ids])[0]
        if len(target_ids) < self.max_length:  # the [END] that translate_tokens strips
            target_ids.append(END_ID)
        encoder_tokens = np.array([source_ids], "int32")
        decoder_tokens = np.array([[START_ID] + target_ids[:-1]], "int32")
        encoder_output = self.model.get_layer("encoder")(encoder_tokens)
        _, weights = self.model.get_layer("decoder")(
            decoder_tokens, encoder_output, padding_mask(encoder_tokens), return_attention_scores=True
        )
        pieces = lambda tokenizer, ids: [tokenizer.id_to_token(int(i)) for i in ids]  # noqa: E731
        return (
            pieces(self.source_tokenizer, source_ids),
            pieces(self.target_tokenizer, target_ids),
            ops.convert_to_numpy(weights[layer])[0],
        )

    def plot_attention(self, text, path, layer=-1):
        """Writes a PNG of the cross-attention of `layer`, one panel per head."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        source, target, weights = self.cross_attention(text, layer)
        heads = weights.shape[0]
        columns = min(4, heads)
        rows = -(-heads // columns)
        figure, axes = plt.subplots(
            rows, columns, figsize=(3 + 0.35 * len(source) * columns, 1 + 0.35 * len(target) * rows), squeeze=False
        )
        for head, axis in enumerate(axes.flat):
            if head >= heads:
                axis.axis("off")
                continue
            axis.imshow(weights[head], cmap="viridis", vmin=0, vmax=1)
            axis.set_title(f"head {head}")
            axis.set_xticks(range(len(source)), source, rotation=90, fontsize=7)
            axis.set_yticks(range(len(target)), target, fontsize=7)
        figure.suptitle(f"cross-attention, decoder layer {layer % len(self.model.get_layer('decoder').blocks)}")
        figure.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        figure.savefig(path, dpi=120)
        plt.close(figure)
        return path

