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
        return_attention_scores: also keep the attention weights (the
            encoder's, and the decoder's of every step: `empty_attention`,
            `write_attention`). False costs nothing.

    Attributes:
        decoder, batch_size, loop_length, limits (int32 `(batch,)`), and
        positions (`0 .. loop_length - 1`); with `return_attention_scores`,
        encoder_attention `(batch, encoder blocks, num_heads, source_length,
        source_length)`.
    """

    def __init__(self, model, encoder_tokens, end_id, max_length, beam_size=None, limits=None,
                 return_attention_scores=False):
        encoder, self.decoder = model.get_layer("encoder"), model.get_layer("decoder")
        self.end_id = end_id
        encoder_tokens = ops.convert_to_tensor(encoder_tokens, dtype="int32")
        self.batch_size = ops.shape(encoder_tokens)[0]
        self.loop_length, self.limits = row_limits(max_length, self.batch_size, self.decoder.max_length)
        if limits is not None:  # rows stop earlier; the loop keeps its (static) length
            self.limits = ops.minimum(self.limits, ops.convert_to_tensor(limits, dtype="int32"))
        self.encoder_padding_mask = padding_mask(encoder_tokens)
        self.return_attention_scores = return_attention_scores
        if return_attention_scores:
            encoder_output, weights = encoder(encoder_tokens, return_attention_scores=True)
            self.encoder_attention = ops.stack(weights, axis=1)
        else:
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
        `(rows, 1)` at position `index`; logits `(rows, vocab_size)`. With
        `return_attention_scores`, `(logits, cache, weights)` (see `decode_step`)."""
        return self.decoder.decode_step(inputs, index, cache, self.cross_attention_cache, self.encoder_padding_mask,
                                        return_attention_scores=self.return_attention_scores)

    def empty_attention(self, rows):
        """The decoder's attention weights of every step, to be written by
        `write_attention`: `()` without `return_attention_scores`, else zeros
        `(self_attention, cross_attention)`, `(rows, decoder blocks, num_heads,
        loop_length, loop_length)` and `(rows, decoder blocks, num_heads,
        loop_length, source_length)`."""
        if not self.return_attention_scores:
            return ()
        shape = (rows, len(self.decoder.blocks), self.decoder.num_heads, self.loop_length)
        source_length = ops.shape(self.encoder_padding_mask)[1]
        return (ops.zeros(shape + (self.loop_length,), "float32"), ops.zeros(shape + (source_length,), "float32"))

    def write_attention(self, attention, index, weights, finished):
        """Row `index` of each attention tensor = this step's `weights` (from
        `step`), in the rows not `finished` before this step (the others
        stay 0: what a finished row computes is not part of its output)."""
        if not attention:
            return ()
        written = ops.logical_and(ops.equal(self.positions, index)[None, :], ops.logical_not(finished)[:, None])
        written = written[:, None, None, :, None]  # (rows, 1, 1, loop_length, 1)
        return tuple(
            ops.where(written, ops.cast(ops.stack(weights[kind], axis=1), "float32")[:, :, :, None, :], old)
            for kind, old in zip(("self_attention", "cross_attention"), attention)
        )

    def attention(self, decoder_attention):
        """The weights `greedy_decode` and `beam_search` return: a dict of
        "encoder_self_attention", "decoder_self_attention", "cross_attention"
        (see `greedy_decode`)."""
        self_attention, cross_attention = decoder_attention
        return {"encoder_self_attention": self.encoder_attention, "decoder_self_attention": self_attention,
                "cross_attention": cross_attention}

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


def greedy_decode(model, encoder_tokens, start_id, end_id, max_length, limits=None, return_attention_scores=False):
    """Greedy decoding with a key/value cache.

    Args:
        model: a model from `build_seq2seq` (layers named "encoder", "decoder").
        encoder_tokens: int `(batch, source_length)`, 0-padded.
        start_id, end_id: the ids of [START] and [END].
        max_length: most tokens generated per row ([END] included): an int, a
            scalar int tensor, or int `(batch,)`, one limit per row (see `row_limits`).
        limits: None, or int `(batch,)` limits within an int `max_length` (see `Search`).
        return_attention_scores: also return the attention weights of this
            decoding (the loop's own, step by step: equal to a teacher-forced
            pass over its output).

    Returns:
        int32 tokens `(batch, loop_length)`, `loop_length` the largest limit: each
        row's tokens up to and including [END] (or up to its limit), then 0. A row
        is finished at [END] or at its limit; the loop stops as soon as every row is.

        With `return_attention_scores`, `(tokens, weights)`, weights a dict of
        float32 tensors, one slice per block and head:
        "encoder_self_attention" `(batch, encoder blocks, num_heads,
        source_length, source_length)`; "decoder_self_attention" `(batch,
        decoder blocks, num_heads, loop_length, loop_length)` and
        "cross_attention" `(batch, decoder blocks, num_heads, loop_length,
        source_length)`: row t is the step that produced token t (its query is
        the token before, [START] at t = 0), rows after a row's last token are 0.
    """
    search = Search(model, encoder_tokens, end_id, max_length, limits=limits,
                    return_attention_scores=return_attention_scores)

    def keep_going(index, inputs, tokens, cache, finished, *attention):
        return search.keep_going(index, finished)

    def step(index, inputs, tokens, cache, finished, *attention):
        logits, cache, *weights = search.step(inputs, index, cache)
        next_token = ops.where(finished, 0, best_token(logits))
        tokens = search.write(tokens, index, next_token)
        if weights:
            attention = search.write_attention(attention, index, weights[0], finished)
        finished = search.finished_after(finished, next_token, index)
        return index + 1, next_token[:, None], tokens, cache, finished, *attention

    batch_size = search.batch_size
    state = (
        ops.convert_to_tensor(0, dtype="int32"),
        ops.full((batch_size, 1), start_id, dtype="int32"),
        ops.zeros((batch_size, search.loop_length), dtype="int32"),
        search.empty_cache(batch_size),
        ops.zeros((batch_size,), dtype="bool"),
        *search.empty_attention(batch_size),
    )
    final = ops.while_loop(keep_going, step, state)
    if return_attention_scores:
        return final[2], search.attention(final[5:])
    return final[2]


def length_penalty(length, alpha):
    """lp(Y) = ((5 + |Y|) / 6)^alpha (Wu et al., 2016, the penalty the paper cites).

    A hypothesis is ranked by log P(Y | X) / lp(Y); alpha = 0 ranks by
    log-probability alone, larger alpha favours longer outputs.
    """
    return ops.power((5.0 + ops.cast(length, "float32")) / 6.0, alpha)


def beam_search(model, encoder_tokens, start_id, end_id, max_length, beam_size=4, alpha=0.6, limits=None,
                return_attention_scores=False):
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
        return_attention_scores: also return the attention weights of each
            row's hypothesis, as `greedy_decode` does (each hypothesis carries
            its ancestors' weights, as it carries their key/value cache).

    Returns:
        `(tokens, scores)`: int32 `(batch, loop_length)` laid out as in
        `greedy_decode`, and float32 `(batch,)` log P(Y | X) / lp(Y) of each row's
        hypothesis (|Y| counts [END]); then the weights if requested.
    """
    vocab_size = model.get_layer("decoder").vocab_size
    if isinstance(beam_size, int) and not 1 <= beam_size < vocab_size:
        raise ValueError(f"beam_size={beam_size} must be in [1, vocab_size={vocab_size})")
    search = Search(model, encoder_tokens, end_id, max_length, beam_size, limits, return_attention_scores)
    batch_size = search.batch_size
    beams = batch_size * beam_size  # hypothesis b of sentence r is row r * beam_size + b
    extend = beam_step(search, beam_size, vocab_size)

    def keep_going(index, inputs, tokens, scores, finished, cache, *attention):
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
        *search.empty_attention(beams),
    )
    _, _, tokens, scores, _, _, *attention = ops.while_loop(keep_going, extend, state)
    tokens, scores, best = best_hypothesis(tokens, scores, alpha)
    if not return_attention_scores:
        return tokens, scores
    rows = ops.arange(batch_size, dtype="int32") * beam_size + ops.cast(best, "int32")
    return tokens, scores, search.attention([ops.take(weights, rows, axis=0) for weights in attention])


def beam_step(search, beam_size, vocab_size):
    """One step of `beam_search` as a `while_loop` body over
    `(index, inputs, tokens, scores, finished, cache, *attention)`: tokens int32
    `(batch, beam_size, loop_length)`, scores float32 and finished bool `(batch,
    beam_size)`, inputs `(batch * beam_size, 1)`, attention as
    `Search.empty_attention` (rows `batch * beam_size`)."""
    batch_size = search.batch_size
    beams = batch_size * beam_size
    is_padding = ops.equal(ops.arange(vocab_size, dtype="int32"), 0)
    only_padding = ops.where(is_padding, 0.0, MASKED_SCORE)  # a finished hypothesis' continuations
    first_row = ops.arange(batch_size, dtype="int32")[:, None] * beam_size  # (batch, 1)

    def step(index, inputs, tokens, scores, finished, cache, *attention):
        logits, cache, *weights = search.step(inputs, index, cache)
        if weights:  # this step's weights are the parent's: written before the survivors are gathered
            attention = search.write_attention(attention, index, weights[0], ops.reshape(finished, (beams,)))
        log_probs = ops.where(is_padding, MASKED_SCORE, ops.log_softmax(logits, axis=-1))  # (beams, vocab)
        log_probs = ops.where(ops.reshape(finished, (beams, 1)), only_padding, log_probs)
        candidates = scores[:, :, None] + ops.reshape(log_probs, (batch_size, beam_size, vocab_size))
        scores, best = ops.top_k(ops.reshape(candidates, (batch_size, beam_size * vocab_size)), beam_size)
        best = ops.cast(best, "int32")
        parent, next_token = best // vocab_size, best % vocab_size  # (batch, beam_size)
        parent_rows = ops.reshape(first_row + parent, (beams,))
        cache = keras.tree.map_structure(lambda c: ops.take(c, parent_rows, axis=0), cache)
        attention = tuple(ops.take(weights, parent_rows, axis=0) for weights in attention)
        tokens = search.write(ops.take_along_axis(tokens, parent[:, :, None], axis=1), index, next_token)
        finished = search.finished_after(ops.take_along_axis(finished, parent, axis=1), next_token, index)
        return index + 1, ops.reshape(next_token, (beams, 1)), tokens, scores, finished, cache, *attention

    return step


def best_hypothesis(tokens, scores, alpha):
    """Each sentence's hypothesis with the best log P(Y | X) / lp(Y).

    Args:
        tokens: int32 `(batch, beam_size, loop_length)`, 0 after [END].
        scores: float32 `(batch, beam_size)`, log P(Y | X).

    Returns:
        `(tokens, scores, best)`: int32 `(batch, loop_length)`, float32
        `(batch,)`, and the index of each row's best hypothesis `(batch,)`.
    """
    lengths = ops.sum(ops.cast(ops.not_equal(tokens, 0), "int32"), axis=-1)
    normalized = scores / length_penalty(lengths, alpha)
    best = ops.argmax(normalized, axis=-1)[:, None]
    tokens = ops.take_along_axis(tokens, best[:, :, None], axis=1)[:, 0]
    return tokens, ops.take_along_axis(normalized, best, axis=1)[:, 0], best[:, 0]


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
