"""kerasformer.training.text_rules: the rules between ids and the model's rows, against plain
Python; the length rule in the Translator and the decoding loops."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import numpy

from kerasformer import build_seq2seq, preset
from kerasformer.decoding import beam_search, greedy_decode
from kerasformer.training.text_rules import fit_length_rule, length_limit, shift_target, strip_end, truncate_source
from kerasformer.training.tokenizers import END_ID, START_ID, load_tokenizer, train_sentencepiece
from kerasformer.training.translator import Translator, compile_for_backend

ROWS = [[5, 6, 7, 8], [], [9], [4, 4, 4, 4, 4, 4]]


def test_truncate_source_cuts_lists_and_ragged_batches_alike():
    assert truncate_source(ROWS, 3) == [row[:3] for row in ROWS]
    ragged = tf.ragged.constant(ROWS, dtype=tf.int32)
    assert truncate_source(ragged, 3).to_list() == [row[:3] for row in ROWS]


@pytest.mark.parametrize("max_target_length", [1, 2, 4, 10])
def test_shift_target_is_start_first_and_end_last(max_target_length):
    decoder, labels = shift_target(tf.ragged.constant(ROWS, dtype=tf.int32), max_target_length)
    for row, d, l in zip(ROWS, decoder.to_list(), labels.to_list()):
        kept = row[: max_target_length - 1]
        assert d == [START_ID] + kept and l == kept + [END_ID]
        assert len(d) <= max_target_length and len(l) <= max_target_length


def test_strip_end_keeps_the_ids_before_end():
    decoded = np.array([[7, 8, END_ID, 0, 0], [9, END_ID, 0, 0, 0], [5, 6, 7, 8, 9], [END_ID, 0, 0, 0, 0]], "int32")
    tokens, length = (numpy(x) for x in strip_end(decoded))
    assert length.tolist() == [2, 1, 5, 0]
    assert tokens.shape == (4, 5)
    for row, n, expected in zip(tokens, length, ([7, 8], [9], [5, 6, 7, 8, 9], [])):
        assert row[:n].tolist() == expected and not row[n:].any()
    tokens, length = (numpy(x) for x in strip_end(decoded[[0, 1, 3]]))
    assert tokens.shape == (3, 2)  # cut to the longest row


def test_length_limit_is_ceil_of_a_times_the_source_plus_b_within_bounds():
    lengths = np.array([0, 1, 3, 10, 40, 100], "int32")
    expected = np.clip(np.ceil(1.3 * lengths + 2.0), 1, 48)
    np.testing.assert_array_equal(numpy(length_limit(lengths, (1.3, 2.0), 48)), expected)
    np.testing.assert_array_equal(numpy(length_limit(lengths, None, 48)), np.full(6, 48))
    np.testing.assert_array_equal(numpy(length_limit(lengths, (0.0, 0.0), 48)), np.ones(6))  # never below 1


def test_the_fitted_rule_covers_the_training_pairs():
    rng = np.random.default_rng(0)
    source = rng.integers(1, 60, size=5000)
    target = np.round(source * rng.normal(1.15, 0.12, size=5000) + rng.integers(0, 4, size=5000)).astype(int) + 1
    a, b = fit_length_rule(source, target)
    covered = np.mean(target <= np.ceil(a * source + b))
    assert covered >= 0.999 and 1.1 < a < 1.8 and 1 <= b <= 30
    loose = np.mean(np.ceil(a * source + b) > 3 * target)
    assert loose < 0.05, "the rule should be near the pairs' lengths, not far above"


@pytest.fixture(scope="module")
def tokenizers():
    sentences = [f"word{i} and word{i + 1} and more" for i in range(40)]
    return load_tokenizer(train_sentencepiece(sentences, 80)), load_tokenizer(train_sentencepiece(sentences, 80))


def untrained(source_vocab, target_vocab, end_bias):
    """A tiny model whose output bias makes [END] never (-1e4) or always (+1e4) the best token."""
    keras.utils.set_random_seed(1)
    model = build_seq2seq(preset("tiny", source_vocab_size=source_vocab, target_vocab_size=target_vocab,
                                 tie_embeddings=False))
    projection = [w for w in model.get_layer("decoder").weights if w.path.endswith("bias") and
                  w.shape == (target_vocab,)][-1]
    bias = np.zeros(target_vocab, "float32")
    bias[END_ID] = end_bias
    projection.assign(bias)
    return model


@pytest.mark.parametrize("beam_size", [1, 3])
def test_the_translator_stops_each_sentence_at_its_length_rule(tokenizers, beam_size):
    source_tokenizer, target_tokenizer = tokenizers
    model = untrained(source_tokenizer.vocabulary_size(), target_tokenizer.vocabulary_size(), end_bias=-1e4)
    translator = Translator(model, source_tokenizer, target_tokenizer, beam_size=beam_size, length_rule=(1.0, 2.0))
    texts = ["word1", "word2 and word3", "word4 and word5 and more and word6 and word7"]
    sources = translator.encode(texts)
    ids = translator.translate_tokens(sources)
    assert [len(row) for row in ids] == [len(s) + 2 for s in sources]  # never [END]: each runs to its limit
    capped = Translator(model, source_tokenizer, target_tokenizer, max_length=4, beam_size=beam_size,
                        length_rule=(1.0, 2.0))
    assert [len(row) for row in capped.translate_tokens(sources)] == [min(4, len(s) + 2) for s in sources]
    no_rule = Translator(model, source_tokenizer, target_tokenizer, beam_size=beam_size)
    assert {len(row) for row in no_rule.translate_tokens(sources)} == {model.get_layer("decoder").max_length}


def test_limits_within_a_static_loop_equal_per_row_max_length_compiled():
    """`limits` keeps the loop length an int (XLA, jax.jit) and stops rows as a per-row max_length does."""
    model = untrained(30, 30, end_bias=-1e4)
    source = np.random.default_rng(0).integers(4, 30, size=(4, 6)).astype("int32")
    limits = np.array([1, 3, 7, 12], "int32")
    greedy = compile_for_backend(lambda tokens, limits: greedy_decode(model, tokens, START_ID, END_ID, 12,
                                                                      limits=limits))
    compiled = numpy(greedy(source, limits))
    per_row = numpy(greedy_decode(model, source, START_ID, END_ID, limits))
    np.testing.assert_array_equal(compiled[:, : per_row.shape[1]], per_row)
    assert (compiled != 0).sum(axis=1).tolist() == limits.tolist()
    beam = numpy(beam_search(model, source, START_ID, END_ID, 12, 2, limits=limits)[0])
    assert (beam != 0).sum(axis=1).tolist() == limits.tolist()
