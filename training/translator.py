"""Translate text with a trained run: `Translator.from_run("runs/en-es").translate([...])`.

Tokenizes with the run's own SentencePiece models, decodes greedily or with
beam search (`beam_size`) with the cached loops of `kerasformer.decoding` (compiled with
`tf.function` or `jax.jit` when the backend allows it), and detokenizes, with the rules of
`kerasformer.training.text_rules`. Also gives the cross-attention weights of one decoder
layer (drawn by `kerasformer.training.plots`, one panel per head, as the course notes do).
"""

import keras
import numpy as np
from keras import ops

from kerasformer.decoding import beam_search, greedy_decode
from kerasformer.masks import padding_mask
from kerasformer.training.run_folder import RunFolder
from kerasformer.training.text_rules import length_limit, strip_end, truncate_source
from kerasformer.training.tokenizers import END_ID, START_ID


def compile_for_backend(function, jit_compile=True):
    """`function(encoder_tokens, limits)` compiled for the current backend when possible.

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

        def no_grad(*args):
            with torch.no_grad():
                return function(*args)

        return no_grad
    return function


class Translator:
    """Raw text in, translated text out.

    Args:
        model: a `build_seq2seq` model.
        source_tokenizer, target_tokenizer: the run's keras-hub tokenizers.
        max_length: most target tokens per translation ([END] included); None: the
            decoder's max_length.
        length_rule: `(a, b)`: each sentence also stops at ceil(a * source ids + b) target
            ids (`text_rules.length_limit`; `from_run` takes the run's). None: no such limit.
        batch_size: sentences decoded together.
        beam_size: 1 decodes greedily; more runs `kerasformer.decoding.beam_search`
            (the paper: 4).
        alpha: beam search's length penalty exponent (the paper: 0.6).
    """

    def __init__(self, model, source_tokenizer, target_tokenizer, max_length=None, batch_size=64,
                 beam_size=1, alpha=0.6, length_rule=None):
        self.model = model
        self.source_tokenizer = source_tokenizer
        self.target_tokenizer = target_tokenizer
        self.max_source_length = model.get_layer("encoder").max_length
        self.max_length = max_length or model.get_layer("decoder").max_length
        self.batch_size = batch_size
        self.beam_size, self.alpha = beam_size, alpha
        self.length_rule = length_rule
        if beam_size == 1:
            search = lambda tokens, limits: greedy_decode(  # noqa: E731
                model, tokens, START_ID, END_ID, self.max_length, limits=limits)
        else:
            search = lambda tokens, limits: beam_search(  # noqa: E731
                model, tokens, START_ID, END_ID, self.max_length, beam_size, alpha, limits=limits
            )[0]
        self._decode = compile_for_backend(search)

    def with_search(self, beam_size, alpha=0.6):
        """The same model, tokenizers and limits, decoding with another search."""
        return Translator(self.model, self.source_tokenizer, self.target_tokenizer, self.max_length, self.batch_size,
                          beam_size, alpha, self.length_rule)

    def limits(self, source_ids):
        """Each row's most target ids ([END] included): the length rule, within max_length."""
        lengths = np.array([len(ids) for ids in source_ids], "int32")
        return ops.convert_to_numpy(length_limit(lengths, self.length_rule, self.max_length))

    @classmethod
    def from_run(cls, run_dir, checkpoint="best", **kwargs):
        """Loads `RUN_DIR/{checkpoint}.keras` and the run's tokenizers (`RunFolder`)."""
        run = RunFolder(run_dir)  # load_model first names any missing file of the three
        kwargs.setdefault("length_rule", run.length_rule())
        return cls(run.load_model(checkpoint), *run.load_tokenizers(), **kwargs)

    def encode(self, texts):
        """Source token ids, truncated to the model's maximum source length."""
        return truncate_source([list(ids) for ids in self.source_tokenizer(list(texts))], self.max_source_length)

    def translate_tokens(self, source_ids, progress=None):
        """Lists of source ids -> lists of target ids (without [END] and padding).
        `progress` (a `kerasformer.training.progress.Progress`) advances by each decoded batch."""
        order = sorted(range(len(source_ids)), key=lambda i: len(source_ids[i]))  # similar lengths together
        results = [None] * len(source_ids)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            # Pad to a multiple of 8 so a compiled loop sees few distinct shapes.
            width = max(8, -(-max(len(source_ids[i]) for i in rows) // 8) * 8)
            batch = np.zeros((len(rows), min(width, self.max_source_length)), "int32")
            for row, i in enumerate(rows):
                batch[row, : len(source_ids[i])] = source_ids[i]
            limits = self.limits([source_ids[i] for i in rows])
            tokens, length = (ops.convert_to_numpy(x) for x in strip_end(self._decode(batch, limits)))
            for row, i in enumerate(rows):
                results[i] = [int(t) for t in tokens[row, : length[row]]]
            if progress is not None:
                progress.advance(len(rows))
        return results

    def translate(self, texts, progress=None):
        """Translates a list of strings (`progress`: as in `translate_tokens`)."""
        if isinstance(texts, str):
            raise TypeError("translate() takes a list of strings; wrap one sentence in a list")
        texts = list(texts)
        if not texts:
            return []
        target_ids = self.translate_tokens(self.encode(texts), progress)
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
        if len(target_ids) < self.limits([source_ids])[0]:  # the [END] that translate_tokens strips
            target_ids.append(END_ID)
        encoder_tokens = np.array([source_ids], "int32")
        decoder_tokens = np.array([[START_ID] + target_ids[:-1]], "int32")
        encoder_output = self.model.get_layer("encoder")(encoder_tokens)
        _, weights = self.model.get_layer("decoder")(
            decoder_tokens, encoder_output, padding_mask(encoder_tokens), return_attention_scores=True
        )
        weights = weights["cross_attention"]
        pieces = lambda tokenizer, ids: [tokenizer.id_to_token(int(i)) for i in ids]  # noqa: E731
        return (
            pieces(self.source_tokenizer, source_ids),
            pieces(self.target_tokenizer, target_ids),
            ops.convert_to_numpy(weights[layer])[0],
        )

    def plot_attention(self, text, path, layer=-1):
        """Writes a PNG of the cross-attention of `layer`, one panel per head."""
        from kerasformer.training.plots import plot_attention

        source, target, weights = self.cross_attention(text, layer)
        layers = len(self.model.get_layer("decoder").blocks)
        return plot_attention(source, target, weights, path, f"cross-attention, decoder layer {layer % layers}")
