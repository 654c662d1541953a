import keras
import numpy as np
import pytest
from conftest import numpy, teacher_forced_attention

from kerasformer import build_seq2seq, preset
from kerasformer.decoding import beam_search, best_token, greedy_decode, length_penalty, sequence_score

START, END, VOCAB = 1, 2, 13  # digits are ids 3..12


def greedy_decode_uncached(model, encoder_tokens, start_id, end_id, max_length):
    """The reference loop, in NumPy around the model: re-runs the whole model on
    the prefix at every step (as the TensorFlow tutorial does), O(t^2) work. Same
    layout as `greedy_decode`: each row's tokens up to [END], then 0."""
    batch_size = len(encoder_tokens)
    decoder_tokens = np.full((batch_size, 1), start_id, "int32")
    finished = np.zeros(batch_size, bool)
    for _ in range(max_length):
        logits = numpy(model({"encoder_tokens": encoder_tokens, "decoder_tokens": decoder_tokens}))[:, -1]
        next_token = np.where(finished, 0, logits[:, 1:].argmax(-1) + 1).astype("int32")  # never padding
        decoder_tokens = np.concatenate([decoder_tokens, next_token[:, None]], axis=1)
        finished |= next_token == end_id
        if finished.all():
            break
    tokens = decoder_tokens[:, 1:]
    return np.pad(tokens, [(0, 0), (0, max_length - tokens.shape[1])])


@pytest.fixture(scope="module")
def copy_model():
    """A tiny model trained briefly to copy digit strings."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    digits = rng.integers(3, VOCAB, size=(2000, 5)).astype("int32")
    inputs = {
        "encoder_tokens": digits,
        "decoder_tokens": np.concatenate([np.full((2000, 1), START, "int32"), digits], axis=1),
    }
    labels = np.concatenate([digits, np.full((2000, 1), END, "int32")], axis=1)
    model = build_seq2seq(preset("tiny", source_vocab_size=VOCAB, target_vocab_size=VOCAB))
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0),
    )
    model.fit(inputs, labels, batch_size=64, epochs=3, verbose=0)
    return model


def test_best_token_never_predicts_padding():
    logits = np.array([[9.0, 1.0, 2.0], [0.0, 1.0, 5.0]], "float32")
    np.testing.assert_array_equal(numpy(best_token(logits)), [2, 2])


def test_cached_decoding_gives_exactly_the_tokens_of_full_recomputation(copy_model):
    source = np.array([[3, 4, 5, 6, 7], [12, 11, 10, 0, 0], [5, 5, 9, 9, 0]], "int32")
    cached = numpy(greedy_decode(copy_model, source, START, END, max_length=8))
    uncached = greedy_decode_uncached(copy_model, source, START, END, max_length=8)
    np.testing.assert_array_equal(cached, uncached)
    assert cached.shape == (3, 8)


def test_a_model_with_shared_embeddings_decodes_like_full_recomputation():
    keras.utils.set_random_seed(1)
    model = build_seq2seq(preset("tiny", source_vocab_size=VOCAB, target_vocab_size=VOCAB, share_embeddings=True))
    source = np.array([[3, 4, 5, 6, 7], [12, 11, 10, 0, 0]], "int32")
    np.testing.assert_array_equal(
        numpy(greedy_decode(model, source, START, END, max_length=6)),
        greedy_decode_uncached(model, source, START, END, max_length=6),
    )


def test_the_plain_path_decodes_the_same_tokens_as_the_fused_one(copy_model):
    plain = build_seq2seq(preset("tiny", source_vocab_size=VOCAB, target_vocab_size=VOCAB, fused=False))
    plain.set_weights(copy_model.get_weights())
    source = np.array([[3, 4, 5, 6, 7], [12, 11, 10, 0, 0], [5, 5, 9, 9, 0]], "int32")
    for model in (copy_model, plain):
        assert model.get_layer("decoder").fused is (model is copy_model)
    np.testing.assert_array_equal(
        numpy(greedy_decode(plain, source, START, END, max_length=8)),
        numpy(greedy_decode(copy_model, source, START, END, max_length=8)),
    )
    plain_tokens, plain_scores = beam_search(plain, source, START, END, max_length=8, beam_size=3)
    fused_tokens, fused_scores = beam_search(copy_model, source, START, END, max_length=8, beam_size=3)
    np.testing.assert_array_equal(numpy(plain_tokens), numpy(fused_tokens))
    np.testing.assert_allclose(numpy(plain_scores), numpy(fused_scores), rtol=1e-5)


def test_decoding_stops_at_end_and_pads_after_it(copy_model):
    source = np.array([[3, 4, 5, 6, 7], [12, 11, 10, 0, 0]], "int32")
    tokens = numpy(greedy_decode(copy_model, source, START, END, max_length=8))
    for row in tokens:
        assert END in row  # the trained copier ends its output
        end = list(row).index(END)
        assert np.all(row[:end] != 0) and np.all(row[end + 1 :] == 0)


def test_never_runs_past_the_length_bound(copy_model):
    source = np.array([[3, 4, 5, 6, 7]], "int32")
    bounded = numpy(greedy_decode(copy_model, source, START, END, max_length=3))
    unbounded = numpy(greedy_decode(copy_model, source, START, END, max_length=8))
    assert bounded.shape == (1, 3)
    np.testing.assert_array_equal(bounded, unbounded[:, :3])


def test_max_length_beyond_the_decoder_is_refused(copy_model):
    with pytest.raises(ValueError, match="max_length=33 exceeds the decoder's max_length=32"):
        greedy_decode(copy_model, np.array([[3]], "int32"), START, END, max_length=33)


# Under JAX the loop is a lax.while_loop whose body is traced once, so steps
# cannot be counted from Python there; TensorFlow (eager) and torch run the
# body once per step.
if keras.backend.backend() != "jax":

    def test_loop_stops_once_every_row_has_ended(copy_model, monkeypatch):
        decoder = copy_model.get_layer("decoder")
        steps = []
        original = decoder.decode_step

        def counted(*args, **kwargs):
            steps.append(1)
            return original(*args, **kwargs)

        monkeypatch.setattr(decoder, "decode_step", counted)
        source = np.array([[3, 4], [5, 6]], "int32")
        tokens = numpy(greedy_decode(copy_model, source, START, END, max_length=30))
        last_end = max(list(row).index(END) for row in tokens)
        assert len(steps) == last_end + 1 < 30


SOURCES = np.array([[3, 4, 5, 6, 7], [12, 11, 10, 0, 0], [5, 5, 9, 9, 0], [8, 3, 0, 0, 0]], "int32")


def test_length_penalty_is_wu_et_al():
    lengths = np.array([1, 4, 20])
    np.testing.assert_allclose(numpy(length_penalty(lengths, 0.6)), ((5 + lengths) / 6) ** 0.6, rtol=1e-6)
    np.testing.assert_allclose(numpy(length_penalty(lengths, 0.0)), 1.0)


def test_beam_of_one_is_greedy(copy_model):
    greedy = numpy(greedy_decode(copy_model, SOURCES, START, END, max_length=8))
    tokens, scores = beam_search(copy_model, SOURCES, START, END, max_length=8, beam_size=1)
    np.testing.assert_array_equal(numpy(tokens), greedy)
    np.testing.assert_allclose(numpy(scores), numpy(sequence_score(copy_model, SOURCES, greedy, START)), rtol=1e-4)


def test_beam_search_scores_are_those_of_its_tokens_and_at_least_greedys(copy_model):
    greedy = numpy(greedy_decode(copy_model, SOURCES, START, END, max_length=8))
    tokens, scores = beam_search(copy_model, SOURCES, START, END, max_length=8, beam_size=4, alpha=0.6)
    tokens, scores = numpy(tokens), numpy(scores)
    assert tokens.shape == (4, 8) and scores.shape == (4,)
    np.testing.assert_allclose(scores, numpy(sequence_score(copy_model, SOURCES, tokens, START)), rtol=1e-4, atol=1e-5)
    greedy_scores = numpy(sequence_score(copy_model, SOURCES, greedy, START))
    assert np.all(scores >= greedy_scores - 1e-5), (scores, greedy_scores)
    for row in tokens:  # the greedy layout: tokens, [END], then padding
        end = list(row).index(END)
        assert np.all(row[:end] != 0) and np.all(row[end + 1 :] == 0)


def test_beam_search_finds_a_better_sequence_than_greedy_when_greedy_is_myopic():
    """Greedy takes the likelier first token and is stuck with a poor ending;
    beam search keeps the second first token, whose ending is sure."""
    model = build_seq2seq(preset("tiny", source_vocab_size=VOCAB, target_vocab_size=VOCAB))
    decoder = model.get_layer("decoder")
    A, B, C = 3, 4, 5
    # log-probabilities by previous token: after [START] A 0.6 / B 0.4; after A
    # ten tokens at ~0.1 each; after B, [END] at ~1; after anything else, [END].
    table = np.full((VOCAB, VOCAB), -20.0, "float32")
    table[:, END] = 0.0
    table[START, :] = -20.0
    table[START, A], table[START, B] = np.log(0.6), np.log(0.4)
    table[A, :] = np.log(0.1)
    table[A, 0] = -20.0

    def decode_step(token_ids, index, cache, cross_cache, mask=None, return_attention_scores=False):
        return keras.ops.take(keras.ops.convert_to_tensor(table), token_ids[:, 0], axis=0), cache

    decoder.decode_step = decode_step
    source = np.array([[A, B]], "int32")
    greedy = numpy(greedy_decode(model, source, START, END, max_length=4))
    tokens, _ = beam_search(model, source, START, END, max_length=4, beam_size=2, alpha=0.0)
    assert greedy[0, 0] == A
    np.testing.assert_array_equal(numpy(tokens)[0], [B, END, 0, 0])


def test_beam_size_must_fit_the_vocabulary(copy_model):
    with pytest.raises(ValueError, match="beam_size=13 must be in"):
        beam_search(copy_model, SOURCES, START, END, max_length=8, beam_size=13)


# One limit per row: the batch's largest bounds the loop, and every row stops at
# its own, exactly as if it were decoded alone with that limit.
LIMITS = [8, 3, 1, 5]


def decoded_alone(decode, sources, limits):
    """Each row decoded by itself with its own int limit, 0-padded to the longest."""
    rows = [numpy(decode(sources[i : i + 1], limit))[0] for i, limit in enumerate(limits)]
    return np.stack([np.pad(row, (0, max(limits) - len(row))) for row in rows])


def test_greedy_per_row_limits_equal_decoding_each_row_alone(copy_model):
    decode = lambda source, limit: greedy_decode(copy_model, source, START, END, max_length=limit)  # noqa: E731
    tokens = numpy(decode(SOURCES, np.array(LIMITS, "int32")))
    assert tokens.shape == (4, max(LIMITS))
    np.testing.assert_array_equal(tokens, decoded_alone(decode, SOURCES, LIMITS))
    assert END in tokens[0] and END not in tokens[1]  # one row ends by itself, one at its limit
    # A scalar tensor is every row's limit, as the int is.
    np.testing.assert_array_equal(numpy(decode(SOURCES, np.array(5, "int32"))), numpy(decode(SOURCES, 5)))


def test_beam_search_per_row_limits_equal_searching_each_row_alone(copy_model):
    def search(source, limit):
        return beam_search(copy_model, source, START, END, max_length=limit, beam_size=3, alpha=0.6)

    tokens, scores = search(SOURCES, np.array(LIMITS, "int32"))
    alone = decoded_alone(lambda source, limit: search(source, limit)[0], SOURCES, LIMITS)
    np.testing.assert_array_equal(numpy(tokens), alone)
    alone_scores = [numpy(search(SOURCES[i : i + 1], limit)[1])[0] for i, limit in enumerate(LIMITS)]
    np.testing.assert_allclose(numpy(scores), alone_scores, rtol=1e-4, atol=1e-5)


def assert_attention_of_the_loop_is_the_teacher_forced_one(model, source, tokens, weights):
    expected = teacher_forced_attention(model, source, tokens, START)
    weights = {kind: numpy(w) for kind, w in weights.items()}
    np.testing.assert_allclose(weights["encoder_self_attention"], expected["encoder_self_attention"], atol=1e-5)
    for row, length in enumerate((tokens != 0).sum(axis=1)):
        for kind in ("decoder_self_attention", "cross_attention"):
            got, want = weights[kind][row], expected[kind][row]
            columns = length if kind == "decoder_self_attention" else want.shape[-1]
            np.testing.assert_allclose(got[:, :, :length, :columns], want[:, :, :length, :columns], atol=1e-5)
            assert np.all(got[:, :, length:] == 0), "rows after the last token are 0"
            assert np.all(got[:, :, :, columns:] == 0), "no step attends past itself"
        np.testing.assert_allclose(weights["cross_attention"][row, :, :, :length].sum(-1), 1, rtol=1e-5)


def test_greedy_attention_weights_are_those_of_a_teacher_forced_pass_over_its_output(copy_model):
    source = np.array([[3, 4, 5, 6, 7], [12, 11, 10, 0, 0], [5, 5, 9, 9, 0]], "int32")
    limits = np.array([8, 2, 8], "int32")  # the second row stops at its limit, without [END]
    plain = numpy(greedy_decode(copy_model, source, START, END, max_length=8, limits=limits))
    tokens, weights = greedy_decode(copy_model, source, START, END, max_length=8, limits=limits,
                                    return_attention_scores=True)
    tokens = numpy(tokens)
    np.testing.assert_array_equal(tokens, plain)  # asking for the weights changes nothing else
    assert (tokens != 0).sum(axis=1).tolist() == [6, 2, 6]
    layers, heads = len(copy_model.get_layer("decoder").blocks), copy_model.get_layer("decoder").num_heads
    assert numpy(weights["cross_attention"]).shape == (3, layers, heads, 8, 5)
    assert numpy(weights["decoder_self_attention"]).shape == (3, layers, heads, 8, 8)
    assert numpy(weights["encoder_self_attention"]).shape == (3, layers, heads, 5, 5)
    assert_attention_of_the_loop_is_the_teacher_forced_one(copy_model, source, tokens, weights)


def test_beam_search_attention_weights_are_those_of_its_best_hypothesis(copy_model):
    source = np.array([[3, 4, 5, 6, 7], [12, 11, 10, 0, 0]], "int32")
    plain_tokens, plain_scores = beam_search(copy_model, source, START, END, max_length=8, beam_size=3)
    tokens, scores, weights = beam_search(copy_model, source, START, END, max_length=8, beam_size=3,
                                          return_attention_scores=True)
    np.testing.assert_array_equal(numpy(tokens), numpy(plain_tokens))
    np.testing.assert_allclose(numpy(scores), numpy(plain_scores), rtol=1e-6)
    assert_attention_of_the_loop_is_the_teacher_forced_one(copy_model, source, numpy(tokens), weights)


def test_a_myopic_beam_keeps_the_weights_of_the_hypothesis_it_returns():
    """When the best hypothesis is not the one greedy follows, its weights come
    from its own ancestors (gathered with the cache), not from beam 0."""
    keras.utils.set_random_seed(3)
    model = build_seq2seq(preset("tiny", source_vocab_size=VOCAB, target_vocab_size=VOCAB, num_layers=1))
    source = np.random.default_rng(3).integers(3, VOCAB, size=(4, 6)).astype("int32")
    greedy = numpy(greedy_decode(model, source, START, END, max_length=7))
    tokens, _, weights = beam_search(model, source, START, END, max_length=7, beam_size=4,
                                     return_attention_scores=True)
    tokens = numpy(tokens)
    assert (tokens != greedy).any(), "an untrained model's beam departs from greedy somewhere"
    assert_attention_of_the_loop_is_the_teacher_forced_one(model, source, tokens, weights)
