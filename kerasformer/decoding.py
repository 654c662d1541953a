"""Autoregressive decoding: from [START] to [END], one token at a time (section 3.1:
"the model is auto-regressive, consuming the previously generated symbols as
additional input when generating the next").

The loops are `keras.ops.while_loop`, so the same code runs eagerly on every
backend and inside the exported `tf.function`. The encoder runs once; each step
feeds one token through the decoder with a key/value cache, so a step costs
O(current length) instead of re-running the decoder over the whole prefix.

Two searches share that step, their prelude (`Search`) and their stopping rule
(`Search.finished_after`, `Search.keep_going`): `greedy_decode` (the most
probable next token) and `beam_search` (section 6.1: "beam search with a beam
size of 4 and length penalty alpha = 0.6").
"""

import keras
from keras import ops

from kerasformer.attention import MASKED_SCORE
from kerasformer.masks import padding_mask


def best_token(logits):
    """argmax over the vocabulary except id 0: padding is never a prediction.

    Args:
        logits: `(batch, vocab_size)`.

    Returns:
        int32 `(batch,)`.
    """
    return ops.cast(ops.argmax(logits[:, 1:], axis=-1), "int32") + 1


def row_limits(max_length, batch_size, decoder_max_length):
    """Where each row stops, and how long the loop runs.

    Args:
        max_length: most tokens of a row ([END] included): an int (checked
            against `decoder_max_length`), a scalar int tensor, or int
            `(batch,)`, one limit per row. Tensors are not checked here (inside
            a graph there is no Python value to check): the caller keeps them in
            [1, decoder_max_length].
        batch_size: rows being decoded.
        decoder_max_length: positions the decoder has.

    Returns:
        `(loop_length, limits)`: the most steps any row takes (the int itself
        when `max_length` is an int, so shapes stay static; 0 for an empty
        batch), and int32 `(batch,)`.
    """
    if isinstance(max_length, int):
        if max_length > decoder_max_length:
            raise ValueError(f"max_length={max_length} exceeds the decoder's max_length={decoder_max_length}")
        return max_length, ops.full((batch_size,), max_length, dtype="int32")
    limits = ops.broadcast_to(ops.convert_to_tensor(max_length, dtype="int32"), (batch_size,))
    return ops.max(limits, initial=0), limits


class Search:
    """What greedy decoding and beam search share: the prelude before their loop
    (the encoder run once, the cross-attention cache, each row's limit), one
    decoding step, and the stopping rule.

    Args:
        model: a model from `build_seq2seq` (layers named "encoder", "decoder").
        encoder_tokens: int `(batch, source_length)`, 0-padded.
        end_id: the id of [END].
        max_length: most tokens per row, as in `row_limits`.
        limits: None, or int `(batch,)`: each row also stops at its own limit,
            while the loop's length stays `max_length` (an int keeps the shapes
            static, as XLA and `jax.jit` need). The caller keeps them >= 1.
        beam_size: None to decode each sentence once (greedy); else each
            sentence is decoded `beam_size` times side by side (rows
            `r * beam_size + b`), all attending to its encoder output.

    Attributes:
        decoder, batch_size, loop_length, limits (int32 `(batch,)`), and
        positions (`0 .. loop_length - 1`).
    """

    def __init__(self, model, encoder_tokens, end_id, max_length, beam_size=None, limits=None):
        encoder, self.decoder = model.get_layer("encoder"), model.get_layer("decoder")
        self.end_id = end_id
        encoder_tokens = ops.convert_to_tensor(encoder_tokens, dtype="int32")
        self.batch_size = ops.shape(encoder_tokens)[0]
        self.loop_length, self.limits = row_limits(max_length, self.batch_size, self.decoder.max_length)
        if limits is not None:  # rows stop earlier; the loop keeps its (static) length
            self.limits = ops.minimum(self.limits, ops.convert_to_tensor(limits, dtype="int32"))
        self.encoder_padding_mask = padding_mask(encoder_tokens)
        encoder_output = encoder(encoder_tokens)
        if beam_size is not None:
            self.encoder_padding_mask = ops.repeat(self.encoder_padding_mask, beam_size, axis=0)
            encoder_output = ops.repeat(encoder_output, beam_size, axis=0)
        self.cross_attention_cache = self.decoder.compute_cross_attention_cache(encoder_output)
        self.positions = ops.arange(self.loop_length, dtype="int32")

    def empty_cache(self, rows):
        """The self-attention cache to decode `rows` rows into."""
        return self.decoder.empty_self_attention_cache(rows, self.loop_length)

    def step(self, inputs, index, cache):
        """`(logits, cache)`: `Decoder.decode_step` of the tokens `inputs`
        `(rows, 1)` at position `index`; logits `(rows, vocab_size)`."""
        return self.decoder.decode_step(inputs, index, cache, self.cross_attention_cache, self.encoder_padding_mask)

    def write(self, tokens, index, next_tokens):
        """tokens[..., index] = next_tokens, as a select (see attention.write_position).

        Args:
            tokens: int32 `(..., loop_length)`.
            next_tokens: int32 `tokens.shape[:-1]`.
        """
        return ops.where(ops.equal(self.positions, index), next_tokens[..., None], tokens)

    def finished_after(self, finished, next_tokens, index):
        """The stopping rule: a row is finished once it has produced [END] or
        `limits` tokens (the token at `index` is its `index + 1`-th).

        Args:
            finished, next_tokens: `(batch,)`, or `(batch, beam_size)` (every
                hypothesis of a sentence shares the sentence's limit).

        Returns:
            bool, the shape of `finished`.
        """
        at_limit = ops.greater_equal(index + 1, self.limits)
        if len(next_tokens.shape) == 2:
            at_limit = at_limit[:, None]
        return ops.logical_or(ops.logical_or(finished, ops.equal(next_tokens, self.end_id)), at_limit)

    def keep_going(self, index, finished):
        """The loop's condition: a row is unfinished and `loop_length` not reached."""
        return ops.logical_and(index < self.loop_length, ops.logical_not(ops.all(finished)))


def greedy_decode(model, encoder_tokens, start_id, end_id, max_length, limits=None):
    """Greedy decoding with a key/value cache.

    Args:
        model: a model from `build_seq2seq` (layers named "encoder", "decoder").
        encoder_tokens: int `(batch, source_length)`, 0-padded.
        start_id, end_id: the ids of [START] and [END].
        max_length: most tokens generated per row ([END] included): an int, a
            scalar int tensor, or int `(batch,)`, one limit per row (see `row_limits`).
        limits: None, or int `(batch,)` limits within an int `max_length` (see `Search`).

    Returns:
        int32 tokens `(batch, loop_length)`, `loop_length` the largest limit: each
        row's tokens up to and including [END] (or up to its limit), then 0. A row
        is finished at [END] or at its limit; the loop stops as soon as every row is.
    """
    search = Search(model, encoder_tokens, end_id, max_length, limits=limits)

    def keep_going(index, inputs, tokens, cache, finished):
        return search.keep_going(index, finished)

    def step(index, inputs, tokens, cache, finished):
        logits, cache = search.step(inputs, index, cache)
        next_token = ops.where(finished, 0, best_token(logits))
        tokens = search.write(tokens, index, next_token)
        finished = search.finished_after(finished, next_token, index)
        return index + 1, next_token[:, None], tokens, cache, finished

    batch_size = search.batch_size
    state = (
        ops.convert_to_tensor(0, dtype="int32"),
        ops.full((batch_size, 1), start_id, dtype="int32"),
        ops.zeros((batch_size, search.loop_length), dtype="int32"),
        search.empty_cache(batch_size),
        ops.zeros((batch_size,), dtype="bool"),
    )
    return ops.while_loop(keep_going, step, state)[2]


def length_penalty(length, alpha):
    """lp(Y) = ((5 + |Y|) / 6)^alpha (Wu et al., 2016, the penalty the paper cites).

    A hypothesis is ranked by log P(Y | X) / lp(Y); alpha = 0 ranks by
    log-probability alone, larger alpha favours longer outputs.
    """
    return ops.power((5.0 + ops.cast(length, "float32")) / 6.0, alpha)


def beam_search(model, encoder_tokens, start_id, end_id, max_length, beam_size=4, alpha=0.6, limits=None):
    """Beam search with a key/value cache, batched.

    Each source sentence keeps `beam_size` hypotheses. At every step each
    hypothesis is extended by every token; of the beam_size x vocab_size
    continuations the beam_size with the highest log-probability survive, and
    the caches of their parents are gathered along. A hypothesis that produced
    [END] is finished: it continues only with padding at no cost, so it keeps
    its score and its place while it is among the best. The loop stops when
    every hypothesis has finished (at [END] or at its sentence's limit); the result of each row is
    the hypothesis with the best log P(Y | X) / lp(Y). With `beam_size=1` this is
    exactly `greedy_decode`.

    Args:
        model: a model from `build_seq2seq`.
        encoder_tokens: int `(batch, source_length)`, 0-padded.
        start_id, end_id: the ids of [START] and [END].
        max_length: most tokens generated per row ([END] included): an int, a
            scalar int tensor, or int `(batch,)`, one limit per sentence (see
            `row_limits`). At its limit every hypothesis of a sentence is
            finished, as if the loop had stopped there for that sentence alone.
        beam_size: hypotheses per sentence (an int, or a scalar int tensor under
            TensorFlow); at most `vocab_size - 1`.
        alpha: the length penalty's exponent.
        limits: None, or int `(batch,)` limits within an int `max_length` (see `Search`).

    Returns:
        `(tokens, scores)`: int32 `(batch, loop_length)` laid out as in
        `greedy_decode`, and float32 `(batch,)` log P(Y | X) / lp(Y) of each row's
        hypothesis (|Y| counts [END]).
    """
    vocab_size = model.get_layer("decoder").vocab_size
    if isinstance(beam_size, int) and not 1 <= beam_size < vocab_size:
        raise ValueError(f"beam_size={beam_size} must be in [1, vocab_size={vocab_size})")
    search = Search(model, encoder_tokens, end_id, max_length, beam_size, limits)
    batch_size = search.batch_size
    beams = batch_size * beam_size  # hypothesis b of sentence r is row r * beam_size + b
    extend = beam_step(search, beam_size, vocab_size)

    def keep_going(index, inputs, tokens, scores, finished, cache):
        return search.keep_going(index, finished)

    # At the start only hypothesis 0 is live, so the first step's survivors are
    # beam_size different tokens rather than copies of one. A continuation that
    # is not allowed gets MASKED_SCORE as its log-probability: finite, so sums
    # of such scores never give inf - inf = NaN.
    first_scores = ops.where(ops.arange(beam_size)[None, :] == 0, 0.0, MASKED_SCORE)
    state = (
        ops.convert_to_tensor(0, dtype="int32"),
        ops.full((beams, 1), start_id, dtype="int32"),
        ops.zeros((batch_size, beam_size, search.loop_length), dtype="int32"),
        ops.tile(ops.cast(first_scores, "float32"), (batch_size, 1)),
        ops.zeros((batch_size, beam_size), dtype="bool"),
        search.empty_cache(beams),
    )
    _, _, tokens, scores, _, _ = ops.while_loop(keep_going, extend, state)
    return best_hypothesis(tokens, scores, alpha)


def beam_step(search, beam_size, vocab_size):
    """One step of `beam_search` as a `while_loop` body over
    `(index, inputs, tokens, scores, finished, cache)`: tokens int32 `(batch,
    beam_size, loop_length)`, scores float32 and finished bool `(batch,
    beam_size)`, inputs `(batch * beam_size, 1)`."""
    batch_size = search.batch_size
    beams = batch_size * beam_size
    is_padding = ops.equal(ops.arange(vocab_size, dtype="int32"), 0)
    only_padding = ops.where(is_padding, 0.0, MASKED_SCORE)  # a finished hypothesis' continuations
    first_row = ops.arange(batch_size, dtype="int32")[:, None] * beam_size  # (batch, 1)

    def step(index, inputs, tokens, scores, finished, cache):
        logits, cache = search.step(inputs, index, cache)
        log_probs = ops.where(is_padding, MASKED_SCORE, ops.log_softmax(logits, axis=-1))  # (beams, vocab)
        log_probs = ops.where(ops.reshape(finished, (beams, 1)), only_padding, log_probs)
        candidates = scores[:, :, None] + ops.reshape(log_probs, (batch_size, beam_size, vocab_size))
        scores, best = ops.top_k(ops.reshape(candidates, (batch_size, beam_size * vocab_size)), beam_size)
        best = ops.cast(best, "int32")
        parent, next_token = best // vocab_size, best % vocab_size  # (batch, beam_size)
        parent_rows = ops.reshape(first_row + parent, (beams,))
        cache = keras.tree.map_structure(lambda c: ops.take(c, parent_rows, axis=0), cache)
        tokens = search.write(ops.take_along_axis(tokens, parent[:, :, None], axis=1), index, next_token)
        finished = search.finished_after(ops.take_along_axis(finished, parent, axis=1), next_token, index)
        return index + 1, ops.reshape(next_token, (beams, 1)), tokens, scores, finished, cache

    return step


def best_hypothesis(tokens, scores, alpha):
    """Each sentence's hypothesis with the best log P(Y | X) / lp(Y).

    Args:
        tokens: int32 `(batch, beam_size, loop_length)`, 0 after [END].
        scores: float32 `(batch, beam_size)`, log P(Y | X).

    Returns:
        `(tokens, scores)`: int32 `(batch, loop_length)` and float32 `(batch,)`.
    """
    lengths = ops.sum(ops.cast(ops.not_equal(tokens, 0), "int32"), axis=-1)
    normalized = scores / length_penalty(lengths, alpha)
    best = ops.argmax(normalized, axis=-1)[:, None]
    tokens = ops.take_along_axis(tokens, best[:, :, None], axis=1)[:, 0]
    return tokens, ops.take_along_axis(normalized, best, axis=1)[:, 0]


def sequence_score(model, encoder_tokens, tokens, start_id, alpha=0.6):
    """log P(Y | X) / lp(Y) of given outputs, by teacher forcing: what
    `beam_search` maximises, for any decoder's output (e.g. `greedy_decode`'s).

    Args:
        encoder_tokens: int `(batch, source_length)`, 0-padded.
        tokens: int `(batch, length)`, each row's tokens ([END] included), then 0.

    Returns:
        float32 `(batch,)`.
    """
    tokens = ops.convert_to_tensor(tokens, dtype="int32")
    decoder_tokens = ops.concatenate([ops.full((ops.shape(tokens)[0], 1), start_id, "int32"), tokens[:, :-1]], axis=1)
    logits = model({"encoder_tokens": ops.convert_to_tensor(encoder_tokens, "int32"), "decoder_tokens": decoder_tokens})
    log_probs = ops.take_along_axis(ops.log_softmax(logits, axis=-1), tokens[:, :, None], axis=-1)[:, :, 0]
    present = ops.cast(ops.not_equal(tokens, 0), "float32")
    lengths = ops.sum(present, axis=-1)
    return ops.sum(log_probs * present, axis=-1) / length_penalty(lengths, alpha)
