"""Autoregressive decoding: from [START] to [END], one token at a time (section 3.1:
"the model is auto-regressive, consuming the previously generated symbols as
additional input when generating the next").

The loops are `keras.ops.while_loop`, so the same code runs eagerly on every
backend and inside the exported `tf.function`. The encoder runs once; each step
feeds one token through the decoder with a key/value cache, so a step costs
O(current length) instead of re-running the decoder over the whole prefix.

Two searches share that step: `greedy_decode` (the most probable next token)
and `beam_search` (section 6.1: "beam search with a beam size of 4 and length
penalty alpha = 0.6").
"""

import keras
from keras import ops

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


def greedy_decode(model, encoder_tokens, start_id, end_id, max_length):
    """Greedy decoding with a key/value cache.

    Args:
        model: a model from `build_seq2seq` (layers named "encoder", "decoder").
        encoder_tokens: int `(batch, source_length)`, 0-padded.
        start_id, end_id: the ids of [START] and [END].
        max_length: most tokens generated per row ([END] included): an int, a
            scalar int tensor, or int `(batch,)`, one limit per row (see `row_limits`).

    Returns:
        int32 tokens `(batch, loop_length)`, `loop_length` the largest limit: each
        row's tokens up to and including [END] (or up to its limit), then 0. A row
        is finished at [END] or at its limit; the loop stops as soon as every row is.
    """
    encoder, decoder = model.get_layer("encoder"), model.get_layer("decoder")
    encoder_tokens = ops.convert_to_tensor(encoder_tokens, dtype="int32")
    batch_size = ops.shape(encoder_tokens)[0]
    loop_length, limits = row_limits(max_length, batch_size, decoder.max_length)
    encoder_padding_mask = padding_mask(encoder_tokens)
    cross_attention_cache = decoder.compute_cross_attention_cache(encoder(encoder_tokens))
    positions = ops.arange(loop_length, dtype="int32")

    def keep_going(index, inputs, tokens, cache, finished):
        return ops.logical_and(index < loop_length, ops.logical_not(ops.all(finished)))

    def step(index, inputs, tokens, cache, finished):
        logits, cache = decoder.decode_step(inputs, index, cache, cross_attention_cache, encoder_padding_mask)
        next_token = ops.where(finished, 0, best_token(logits))
        # tokens[:, index] = next_token, as a select (see attention.write_position).
        tokens = ops.where(ops.equal(positions, index)[None, :], next_token[:, None], tokens)
        at_limit = ops.greater_equal(index + 1, limits)
        finished = ops.logical_or(finished, ops.logical_or(ops.equal(next_token, end_id), at_limit))
        return index + 1, next_token[:, None], tokens, cache, finished

    state = (
        ops.convert_to_tensor(0, dtype="int32"),
        ops.full((batch_size, 1), start_id, dtype="int32"),
        ops.zeros((batch_size, loop_length), dtype="int32"),
        decoder.empty_self_attention_cache(batch_size, loop_length),
        ops.zeros((batch_size,), dtype="bool"),
    )
    return ops.while_loop(keep_going, step, state)[2]


def greedy_decode_uncached(model, encoder_tokens, start_id, end_id, max_length):
    """The reference loop: re-runs the whole model on the prefix at every step
    (as the TensorFlow tutorial does). Same result as `greedy_decode`, O(t^2) work;
    kept for tests and benchmarks."""
    encoder_tokens = ops.convert_to_tensor(encoder_tokens, dtype="int32")
    batch_size = ops.shape(encoder_tokens)[0]
    decoder_tokens = ops.full((batch_size, 1), start_id, dtype="int32")
    finished = ops.zeros((batch_size,), dtype="bool")
    for _ in range(max_length):
        logits = model({"encoder_tokens": encoder_tokens, "decoder_tokens": decoder_tokens})
        next_token = ops.where(finished, 0, best_token(logits[:, -1]))
        decoder_tokens = ops.concatenate([decoder_tokens, next_token[:, None]], axis=1)
        finished = ops.logical_or(finished, ops.equal(next_token, end_id))
        if bool(ops.convert_to_numpy(ops.all(finished))):
            break
    tokens = decoder_tokens[:, 1:]
    return ops.pad(tokens, [[0, 0], [0, max_length - ops.shape(tokens)[1]]])


# Log-probability of a continuation that is not allowed. Finite, so sums of
# forbidden scores never give inf - inf = NaN.
FORBIDDEN = -1e9


def length_penalty(length, alpha):
    """lp(Y) = ((5 + |Y|) / 6)^alpha (Wu et al., 2016, the penalty the paper cites).

    A hypothesis is ranked by log P(Y | X) / lp(Y); alpha = 0 ranks by
    log-probability alone, larger alpha favours longer outputs.
    """
    return ops.power((5.0 + ops.cast(length, "float32")) / 6.0, alpha)


def beam_search(model, encoder_tokens, start_id, end_id, max_length, beam_size=4, alpha=0.6):
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

    Returns:
        `(tokens, scores)`: int32 `(batch, loop_length)` laid out as in
        `greedy_decode`, and float32 `(batch,)` log P(Y | X) / lp(Y) of each row's
        hypothesis (|Y| counts [END]).
    """
    encoder, decoder = model.get_layer("encoder"), model.get_layer("decoder")
    if isinstance(beam_size, int) and not 1 <= beam_size < decoder.vocab_size:
        raise ValueError(f"beam_size={beam_size} must be in [1, vocab_size={decoder.vocab_size})")
    encoder_tokens = ops.convert_to_tensor(encoder_tokens, dtype="int32")
    batch_size, vocab_size = ops.shape(encoder_tokens)[0], decoder.vocab_size
    beams = batch_size * beam_size  # hypothesis b of sentence r is row r * beam_size + b
    loop_length, limits = row_limits(max_length, batch_size, decoder.max_length)

    # Every hypothesis of a sentence attends to the same encoder output.
    encoder_padding_mask = ops.repeat(padding_mask(encoder_tokens), beam_size, axis=0)
    encoder_output = ops.repeat(encoder(encoder_tokens), beam_size, axis=0)
    cross_attention_cache = decoder.compute_cross_attention_cache(encoder_output)
    positions = ops.arange(loop_length, dtype="int32")
    is_padding = ops.equal(ops.arange(vocab_size, dtype="int32"), 0)
    only_padding = ops.where(is_padding, 0.0, FORBIDDEN)  # a finished hypothesis' continuations
    first_row = ops.arange(batch_size, dtype="int32")[:, None] * beam_size  # (batch, 1)

    def keep_going(index, inputs, tokens, scores, finished, cache):
        return ops.logical_and(index < loop_length, ops.logical_not(ops.all(finished)))

    def step(index, inputs, tokens, scores, finished, cache):
        logits, cache = decoder.decode_step(inputs, index, cache, cross_attention_cache, encoder_padding_mask)
        log_probs = ops.where(is_padding, FORBIDDEN, ops.log_softmax(logits, axis=-1))  # (beams, vocab)
        log_probs = ops.where(ops.reshape(finished, (beams, 1)), only_padding, log_probs)
        candidates = scores[:, :, None] + ops.reshape(log_probs, (batch_size, beam_size, vocab_size))
        scores, best = ops.top_k(ops.reshape(candidates, (batch_size, beam_size * vocab_size)), beam_size)
        best = ops.cast(best, "int32")
        parent, next_token = best // vocab_size, best % vocab_size  # (batch, beam_size)
        parent_rows = ops.reshape(first_row + parent, (beams,))
        cache = keras.tree.map_structure(lambda c: ops.take(c, parent_rows, axis=0), cache)
        tokens = ops.take_along_axis(tokens, parent[:, :, None], axis=1)
        tokens = ops.where(ops.equal(positions, index)[None, None, :], next_token[:, :, None], tokens)
        finished = ops.logical_or(ops.take_along_axis(finished, parent, axis=1), ops.equal(next_token, end_id))
        at_limit = ops.greater_equal(index + 1, limits)[:, None]  # (batch, 1): every hypothesis of the sentence
        finished = ops.logical_or(finished, at_limit)
        return index + 1, ops.reshape(next_token, (beams, 1)), tokens, scores, finished, cache

    # At the start only hypothesis 0 is live, so the first step's survivors are
    # beam_size different tokens rather than copies of one.
    first_scores = ops.where(ops.arange(beam_size)[None, :] == 0, 0.0, FORBIDDEN)
    state = (
        ops.convert_to_tensor(0, dtype="int32"),
        ops.full((beams, 1), start_id, dtype="int32"),
        ops.zeros((batch_size, beam_size, loop_length), dtype="int32"),
        ops.tile(ops.cast(first_scores, "float32"), (batch_size, 1)),
        ops.zeros((batch_size, beam_size), dtype="bool"),
        decoder.empty_self_attention_cache(beams, loop_length),
    )
    _, _, tokens, scores, _, _ = ops.while_loop(keep_going, step, state)
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
