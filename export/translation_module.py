"""The `tf.Module` that becomes the SavedModel: tokenizer -> encoder -> cached
greedy loop or beam search -> detokenizer, as three `tf.function` signatures
(see `export.exporter`)."""

import os

import tensorflow as tf

from kerasformer.decoding import beam_search, greedy_decode
from training.tokenizers import END_ID, PAD_ID, START_ID, load_tokenizer

# The paper's beam search (section 6.1), the defaults of `translate_beam`.
BEAM_SIZE, ALPHA = 4, 0.6
# A request may ask for at most this many hypotheses per sentence (each one
# costs a decoder row and a key/value cache).
MAX_BEAM_SIZE = 16


class TranslationModule(tf.Module):
    """Wraps a trained `build_seq2seq` model and its tokenizers for export.

    Args:
        model: the model (TensorFlow backend).
        vocabularies: a folder with `source.model` and `target.model` (and
            optional `.vocab` listings); every file in it becomes a SavedModel
            asset, so `assets/` documents what the graph tokenizes with.
        max_length: default of the `max_length` input (default: the decoder's).
    """

    def __init__(self, model, vocabularies, max_length=None):
        super().__init__(name="kerasformer")
        # Track the underlying tf.Variables, not the Keras model (it is set past
        # tf.Module's attribute tracking). Saved through the model, the weights
        # are restored into copies the signatures never read: a TF1 session --
        # what TensorFlow Serving runs -- fails with "Could not find variable"
        # although tf.saved_model.load works (keras-team/keras#19274, #20095);
        # tracking both stores every weight twice.
        object.__setattr__(self, "model", model)
        self.model_variables = [v.value for v in model.variables]
        self.max_source_length = model.get_layer("encoder").max_length
        self.max_target_length = model.get_layer("decoder").max_length
        default = self.max_target_length if max_length is None else int(max_length)
        if not 1 <= default <= self.max_target_length:
            raise ValueError(f"max_length={default} must be in [1, {self.max_target_length}] (the decoder's max_length)")
        self.source_tokenizer = _exportable(load_tokenizer(os.path.join(vocabularies, "source.model")), "source")
        self.target_tokenizer = _exportable(load_tokenizer(os.path.join(vocabularies, "target.model")), "target")
        self.vocabularies = [tf.saved_model.Asset(os.path.join(vocabularies, n)) for n in sorted(os.listdir(vocabularies))]

        # Defaults of Python arguments become SignatureDef `defaults`, which the
        # model server fills in for inputs a request leaves out.
        max_length_spec = tf.TensorSpec([], tf.int32, name="max_length")

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text"), max_length_spec])
        def serving_default(text, max_length=tf.constant(default)):
            return self.translate(text, max_length)

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="tokens"), max_length_spec])
        def translate_tokens(tokens, max_length=tf.constant(default)):
            return self.decode(tokens, max_length)

        @tf.function(input_signature=[
            tf.TensorSpec([None], tf.string, name="text"), max_length_spec,
            tf.TensorSpec([], tf.int32, name="beam_size"), tf.TensorSpec([], tf.float32, name="alpha"),
        ])
        def translate_beam(text, max_length=tf.constant(default), beam_size=tf.constant(BEAM_SIZE),
                           alpha=tf.constant(ALPHA)):
            return self.translate(text, max_length, (beam_size, alpha))

        self.serving_default = serving_default
        self.translate_tokens = translate_tokens
        self.translate_beam = translate_beam

    def translate(self, text, max_length, beam=None):
        """string `(batch,)` -> {translation, tokens, length} (+ score with `beam`)."""
        source = self.source_tokenizer(text)[:, : self.max_source_length]
        encoder_tokens = source.to_tensor(default_value=PAD_ID)
        if_all_empty = [[0, 0], [0, tf.maximum(1 - tf.shape(encoder_tokens)[1], 0)]]
        encoder_tokens = tf.pad(encoder_tokens, if_all_empty)  # at least one (pad) column
        outputs = self.decode(encoder_tokens, max_length, beam)
        ids = tf.RaggedTensor.from_tensor(outputs["tokens"], lengths=outputs["length"])
        translation = self.target_tokenizer.detokenize(ids)
        return {"translation": tf.reshape(translation, [-1]), **outputs}

    def decode(self, encoder_tokens, max_length, beam=None):
        """int `(batch, source_length)` -> tokens int32 `(batch, width)` without
        [END], 0-padded to the longest row, and length int32 `(batch,)`; with
        `beam=(beam_size, alpha)` beam search instead of greedy decoding, and
        score float32 `(batch,)`, log P(Y | X) / lp(Y) of each translation."""
        encoder_tokens = tf.cast(encoder_tokens, tf.int32)[:, : self.max_source_length]
        vocab_size = self.model.get_layer("encoder").vocab_size
        checks = [
            tf.debugging.assert_non_negative(encoder_tokens, message="tokens: negative source id"),
            tf.debugging.assert_less(encoder_tokens, vocab_size, message=f"tokens: source id >= vocab_size={vocab_size}"),
        ]
        with tf.control_dependencies(checks):
            encoder_tokens = tf.identity(encoder_tokens)
        max_length = tf.clip_by_value(max_length, 1, self.max_target_length)
        scores = {}
        if beam is None:
            tokens = greedy_decode(self.model, encoder_tokens, START_ID, END_ID, max_length)
        else:
            beam_size, alpha = beam
            with tf.control_dependencies([
                tf.debugging.assert_greater_equal(beam_size, 1, message="beam_size must be at least 1"),
                tf.debugging.assert_less_equal(beam_size, MAX_BEAM_SIZE, message=f"beam_size must be at most {MAX_BEAM_SIZE}"),
                tf.debugging.assert_greater_equal(alpha, 0.0, message="alpha must be >= 0"),
            ]):
                beam_size = tf.identity(beam_size)
            tokens, scores["score"] = beam_search(self.model, encoder_tokens, START_ID, END_ID, max_length, beam_size, alpha)
        tokens = tf.where(tokens == END_ID, PAD_ID, tokens)  # after [END] every id is already 0
        length = tf.reduce_sum(tf.cast(tokens != PAD_ID, tf.int32), axis=1)
        width = tf.reduce_max(tf.concat([length, [0]], axis=0))
        return {"tokens": tokens[:, :width], "length": length, **scores}


def _exportable(tokenizer, side):
    """Gives the tokenizer's SentencePiece resource a name of its own.

    tensorflow-text creates the model resource with `SentencepieceOp`, which
    shares kernels by node name; its creator is traced under one default name
    scope, so in a loaded SavedModel two tokenizers resolve to one resource and
    the target side silently detokenizes with the source vocabulary. A distinct
    name scope per side gives distinct node names. (Checked by
    tests/test_export.py: exported translations equal the in-process ones.)
    """
    tokenizer._sentence_piece._model_resource._name = f"{side}_sentencepiece"
    return tokenizer
