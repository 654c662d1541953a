"""The `tf.Module` that becomes the SavedModel: tokenizer -> encoder -> cached
greedy loop or beam search -> detokenizer, as seven `tf.function` signatures
(the table is in `kerasformer.export.exporter`). Two of them also return the
attention weights of the decoding they did (`translate_attention`,
`translate_beam_attention`); the others trace the loops without them, so they
cost what they cost before those two existed.

Every input has a leading batch dimension and no signature has defaults: the
model server's REST API honours no SignatureDef defaults (util/json_tensor.cc
wants every input in every request), row format stacks each instance's values
along a new dimension 0, and its batching refuses rank-0 inputs
(batching/batching_util.h ComputeTensorBatchSize, tensorflow/serving#494). So an
option of a request is a per-row input of its own signature (`max_length`), and
the beam search's settings are fixed when the model is exported. Every output is
batch-major too (dimension 0 = the request's rows), so the batching server can
split a merged batch's outputs back into its requests (tensorflow/serving#276).
"""

import os

import tensorflow as tf

from kerasformer.decoding import beam_search, greedy_decode
from kerasformer.training.text_rules import length_limit, strip_end, truncate_source
from kerasformer.training.tokenizers import END_ID, PAD_ID, START_ID, load_tokenizer

# Marks the rows and columns of an attention output that are not part of the sentence:
# padding (of a row shorter than the batch's longest), and decoding steps after the last.
PADDED = -1.0


class TranslationModule(tf.Module):
    """Wraps a trained `build_seq2seq` model and its tokenizers for export.

    Args:
        model: the model (TensorFlow backend).
        vocabularies: a folder with `source.model` and `target.model` (and
            optional `.vocab` listings); every file in it becomes a SavedModel
            asset, so `assets/` documents what the graph tokenizes with.
        max_length: the limit of the signatures without a `max_length` input
            (None: the decoder's max_length).
        beam_size, alpha: the beam search of `translate_beam` and
            `translate_beam_max_length` (hypotheses per sentence, in
            [1, vocab_size); the length penalty's exponent, >= 0). Saved with
            the module: `tf.saved_model.load(path).beam_size`, `.alpha`.
        length_rule: the run's `(a, b)`: the signatures without a `max_length` input
            also stop each row at ceil(a * source ids + b) target ids
            (`text_rules.length_limit`); None: at `max_length` only. Saved as
            `.length_a`, `.length_b` (0 and max_length without a rule).
    """

    def __init__(self, model, vocabularies, max_length, beam_size, alpha, length_rule=None):
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
        self.default_max_length = self.max_target_length if max_length is None else int(max_length)
        if not 1 <= self.default_max_length <= self.max_target_length:
            raise ValueError(f"max_length={self.default_max_length} must be in [1, {self.max_target_length}] "
                             f"(the decoder's max_length)")
        vocab_size = model.get_layer("decoder").vocab_size
        if not 1 <= int(beam_size) < vocab_size:
            raise ValueError(f"beam_size={beam_size} must be in [1, vocab_size={vocab_size})")
        if not float(alpha) >= 0:
            raise ValueError(f"alpha={alpha} must be >= 0")
        # Variables, not constants, so that they are saved with the module (read
        # them back with tf.saved_model.load(path).beam_size); nothing assigns them.
        self.beam_size = tf.Variable(int(beam_size), dtype=tf.int32, trainable=False, name="beam_size")
        self.alpha = tf.Variable(float(alpha), dtype=tf.float32, trainable=False, name="alpha")
        self.length_rule = None if length_rule is None else tuple(float(x) for x in length_rule)
        a, b = self.length_rule or (0.0, float(self.default_max_length))
        self.length_a = tf.Variable(a, dtype=tf.float32, trainable=False, name="length_a")
        self.length_b = tf.Variable(b, dtype=tf.float32, trainable=False, name="length_b")
        self.source_tokenizer = _exportable(load_tokenizer(os.path.join(vocabularies, "source.model")), "source")
        self.target_tokenizer = _exportable(load_tokenizer(os.path.join(vocabularies, "target.model")), "target")
        self.vocabularies = [tf.saved_model.Asset(os.path.join(vocabularies, n)) for n in sorted(os.listdir(vocabularies))]

        text_spec = tf.TensorSpec([None], tf.string, name="text")
        max_length_spec = tf.TensorSpec([None], tf.int32, name="max_length")
        tokens_spec = tf.TensorSpec([None, None], tf.int32, name="tokens")

        @tf.function(input_signature=[text_spec])
        def serving_default(text):
            return self.translate(text, None)

        @tf.function(input_signature=[text_spec, max_length_spec])
        def translate_max_length(text, max_length):
            return self.translate(text, self.checked_max_length(max_length, text))

        @tf.function(input_signature=[text_spec])
        def translate_beam(text):
            return self.translate(text, None, beam=True)

        @tf.function(input_signature=[text_spec, max_length_spec])
        def translate_beam_max_length(text, max_length):
            return self.translate(text, self.checked_max_length(max_length, text), beam=True)

        @tf.function(input_signature=[tokens_spec])
        def translate_tokens(tokens):
            return self.decode(tokens, None)

        @tf.function(input_signature=[text_spec])
        def translate_attention(text):
            return self.translate(text, None, attention=True)

        @tf.function(input_signature=[text_spec])
        def translate_beam_attention(text):
            return self.translate(text, None, beam=True, attention=True)

        self.serving_default = serving_default
        self.translate_max_length = translate_max_length
        self.translate_beam = translate_beam
        self.translate_beam_max_length = translate_beam_max_length
        self.translate_tokens = translate_tokens
        self.translate_attention = translate_attention
        self.translate_beam_attention = translate_beam_attention

    def checked_max_length(self, max_length, text):
        """The `max_length` input, checked: int32 `(batch,)` in [1, decoder max_length].

        One value per row of `text` (INVALID_ARGUMENT otherwise: without
        batching nothing else compares the two inputs' rows). A value below 1
        is INVALID_ARGUMENT naming the values and their rows: no translation
        has fewer than one token, so it can only be a client's mistake. A value
        above the decoder's max_length is clipped to it: "as long as the model
        can", which a client may ask without knowing the model's size.
        """
        rows, limits = tf.shape(text)[0], tf.size(max_length)
        too_small = max_length < 1
        checks = [
            tf.debugging.Assert(tf.equal(limits, rows), [tf.strings.format(
                "max_length has {} values for {} texts; give one per text", (limits, rows))]),
            tf.debugging.Assert(tf.logical_not(tf.reduce_any(too_small)), [tf.strings.format(
                "max_length must be at least 1 in every row; got {} in row(s) {}",
                (tf.boolean_mask(max_length, too_small), tf.where(too_small)[:, 0]), summarize=-1)]),
        ]
        with tf.control_dependencies(checks):
            return tf.minimum(max_length, self.max_target_length)

    def translate(self, text, max_length, beam=False, attention=False):
        """string `(batch,)` -> {translation, tokens, length} (+ score with `beam`,
        + the pieces and weights of `attention_outputs` with `attention`);
        `max_length` None or int32 `(batch,)` (see `decode`)."""
        source = truncate_source(self.source_tokenizer(text), self.max_source_length)
        encoder_tokens = source.to_tensor(default_value=PAD_ID)
        if_all_empty = [[0, 0], [0, tf.maximum(1 - tf.shape(encoder_tokens)[1], 0)]]
        encoder_tokens = tf.pad(encoder_tokens, if_all_empty)  # at least one (pad) column
        outputs = self.decode(encoder_tokens, max_length, beam, attention)
        ids = tf.RaggedTensor.from_tensor(outputs["tokens"], lengths=outputs["length"])
        translation = self.target_tokenizer.detokenize(ids)
        return {"translation": tf.reshape(translation, [-1]), **outputs}

    def decode(self, encoder_tokens, max_length, beam=False, attention=False):
        """int `(batch, source_length)` -> tokens int32 `(batch, width)` without
        [END], 0-padded to the longest row, and length int32 `(batch,)`; with
        `beam`, beam search instead of greedy decoding, and score float32
        `(batch,)`, log P(Y | X) / lp(Y) of each translation.

        A source row ends at its first 0: the ids after it are padding whatever
        they are. The model server's batching pads a request narrower than the
        others it merges with the request's first id, not 0
        (batching/batching_util.cc PadTensor, with pad_variable_length_inputs),
        so a client that ends every row with a 0 gets the same answer merged
        or alone.

        `max_length`: int32 `(batch,)` from `checked_max_length`, or None: the
        module's default max_length, each row within its length rule.
        """
        encoder_tokens = truncate_source(tf.cast(encoder_tokens, tf.int32), self.max_source_length)
        encoder_tokens *= tf.math.cumprod(tf.cast(encoder_tokens != PAD_ID, tf.int32), axis=1)
        vocab_size = self.model.get_layer("encoder").vocab_size
        checks = [
            tf.debugging.assert_non_negative(encoder_tokens, message="tokens: negative source id"),
            tf.debugging.assert_less(encoder_tokens, vocab_size, message=f"tokens: source id >= vocab_size={vocab_size}"),
        ]
        with tf.control_dependencies(checks):
            encoder_tokens = tf.identity(encoder_tokens)
        limits = None
        if max_length is None:
            max_length = self.default_max_length
            if self.length_rule is not None:
                source_lengths = tf.reduce_sum(tf.cast(encoder_tokens != PAD_ID, tf.int32), axis=1)
                limits = length_limit(source_lengths, (self.length_a, self.length_b), max_length)
        scores, weights = {}, None
        if beam:
            tokens, scores["score"], *weights = beam_search(
                self.model, encoder_tokens, START_ID, END_ID, max_length, self.beam_size, self.alpha, limits=limits,
                return_attention_scores=attention)
        else:
            tokens = greedy_decode(self.model, encoder_tokens, START_ID, END_ID, max_length, limits=limits,
                                   return_attention_scores=attention)
            if attention:
                tokens, *weights = tokens
        extra = self.attention_outputs(encoder_tokens, tokens, weights[0]) if attention else {}
        tokens, length = strip_end(tokens)
        return {"tokens": tokens, "length": length, **scores, **extra}

    def attention_outputs(self, encoder_tokens, tokens, weights):
        """The attention outputs of `translate_attention` (table in
        `kerasformer.export.exporter`): the pieces on each axis, and the weights
        cut to the longest row, with PADDED (-1) in every row and column that is
        not part of its sentence.

        Args:
            encoder_tokens: int32 `(batch, source_length)`, 0-padded.
            tokens: int32 `(batch, loop_length)`, the decoding's rows with [END].
            weights: the dict of `greedy_decode(..., return_attention_scores=True)`.
        """
        source_length = tf.reduce_sum(tf.cast(encoder_tokens != PAD_ID, tf.int32), axis=1)
        target_length = tf.reduce_sum(tf.cast(tokens != PAD_ID, tf.int32), axis=1)  # steps, [END] included
        width = tf.reduce_max(tf.concat([target_length, [0]], axis=0))
        tokens = tokens[:, :width]
        in_source = tf.sequence_mask(source_length, tf.shape(encoder_tokens)[1])
        in_target = tf.sequence_mask(target_length, width)

        def marked(values, rows, columns):  # (batch, layers, heads, rows, columns)
            inside = tf.logical_and(rows[:, None, None, :, None], columns[:, None, None, None, :])
            return tf.where(inside, values, PADDED)

        def pieces(tokenizer, ids, inside):
            return tf.where(inside, tokenizer._sentence_piece.id_to_string(ids), "")

        return {
            "source_pieces": pieces(self.source_tokenizer, encoder_tokens, in_source),
            "source_length": source_length,
            "target_pieces": pieces(self.target_tokenizer, tokens, in_target),
            "target_length": target_length,
            "encoder_self_attention": marked(weights["encoder_self_attention"], in_source, in_source),
            "decoder_self_attention": marked(weights["decoder_self_attention"][:, :, :, :width, :width],
                                             in_target, in_target),
            "cross_attention": marked(weights["cross_attention"][:, :, :, :width], in_target, in_source),
        }


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
