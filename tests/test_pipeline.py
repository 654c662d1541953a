import numpy as np
import pytest

import tensorflow as tf

from kerasformer.training.pipeline import (bucket_batch_sizes, bucket_boundaries, bucketing, epoch_batches, make_dataset,
                                         shuffled_epoch, tokenize_pairs)
from kerasformer.training.tokenizers import END_ID, START_ID, load_tokenizer, train_sentencepiece

ENGLISH = "one two three four five six seven eight nine ten".split() * 4
SPANISH = "uno dos tres cuatro cinco seis siete ocho nueve diez".split() * 4
SOURCES = [" ".join(ENGLISH[: i % 40 + 1]) for i in range(60)]  # 1 to 40 words
TARGETS = [" ".join(SPANISH[: i % 40 + 1]) for i in range(60)]


@pytest.fixture
def tokenizers():
    # Function scope: tf.random.set_seed (run before every test) invalidates the
    # TF resource behind a tensorflow-text SentencePiece tokenizer made earlier.
    return load_tokenizer(train_sentencepiece(SOURCES, 60)), load_tokenizer(train_sentencepiece(TARGETS, 60))


def batches(tokenizers, **kwargs):
    options = dict(max_source_length=40, max_target_length=40, batch_tokens=256, shuffle=False)
    options.update(kwargs)
    return list(make_dataset(SOURCES, TARGETS, *tokenizers, **options).as_numpy_iterator())


def real_rows(tokenizers, **kwargs):
    """`batches` without the rows of padding only that fill up evaluation batches."""
    def real(inputs, labels):
        keep = labels.any(axis=1)
        return {name: tokens[keep] for name, tokens in inputs.items()}, labels[keep]

    return [real(*batch) for batch in batches(tokenizers, **kwargs)]


def test_decoder_inputs_are_labels_shifted_right_behind_start(tokenizers):
    for inputs, labels in real_rows(tokenizers):
        decoder = inputs["decoder_tokens"]
        assert np.all(decoder[:, 0] == START_ID)
        for row in range(len(labels)):
            length = np.count_nonzero(labels[row])
            assert labels[row, length - 1] == END_ID
            np.testing.assert_array_equal(decoder[row, 1:length], labels[row, : length - 1])
            assert np.count_nonzero(decoder[row]) == length


def test_every_pair_appears_once_with_its_own_tokens(tokenizers):
    source_tokenizer, _ = tokenizers
    seen = sorted(
        tuple(int(t) for t in row if t) for inputs, _ in real_rows(tokenizers) for row in inputs["encoder_tokens"]
    )
    expected = sorted(tuple(int(t) for t in source_tokenizer(s)[:40]) for s in SOURCES)
    assert seen == expected


def test_truncation_to_the_maximum_lengths(tokenizers):
    for inputs, labels in batches(tokenizers, max_source_length=12, max_target_length=9):
        assert inputs["encoder_tokens"].shape[1] <= 12
        assert inputs["decoder_tokens"].shape[1] <= 9 and labels.shape[1] <= 9


def test_batches_group_similar_lengths_padded_to_bucket_boundaries(tokenizers):
    widths = set()
    for inputs, labels in real_rows(tokenizers):
        width = labels.shape[1]
        widths.add(width)
        assert width + 1 in bucket_boundaries(40)
        lengths = np.count_nonzero(labels, axis=1)
        assert lengths.max() <= width and lengths.min() > width - 8 - 1
        assert len(labels) * width <= max(256, width)  # the token budget
    assert len(widths) > 1


def test_shuffling_is_seeded(tokenizers):
    first = [b[1].tolist() for b in batches(tokenizers, shuffle=True, seed=3)]
    again = [b[1].tolist() for b in batches(tokenizers, shuffle=True, seed=3)]
    assert first == again



def real_label_rows(batch_list):
    """Each non-empty label row with its padding stripped, sorted."""
    return sorted(tuple(row[row > 0]) for _, labels in batch_list for row in labels if row.any())


def test_batches_split_evenly_over_replicas(tokenizers):
    # Training: batch sizes rounded down to a multiple of 4, no padding rows.
    training = batches(tokenizers, shuffle=True, seed=3, batch_multiple=4)
    assert all(len(labels) % 4 == 0 and np.all(labels.any(axis=1)) for _, labels in training)
    # Evaluation: every pair kept; a partial batch is filled up with rows of padding only.
    for fill in (False, True):
        evaluation = batches(tokenizers, batch_multiple=4, fill_evaluation_batches=fill)
        assert all(len(labels) % 4 == 0 for _, labels in evaluation)
        assert real_label_rows(evaluation) == real_label_rows(batches(tokenizers))
        padding_rows = [inputs["encoder_tokens"][~labels.any(axis=1)] for inputs, labels in evaluation]
        assert sum(map(len, padding_rows)) > 0 and not any(rows.any() for rows in padding_rows)


def unpadded_bucket_batches(tokenizers, batch_multiple):
    """The evaluation batches as `bucketing` gives them, before make_dataset fills them up."""
    pairs = tokenize_pairs(SOURCES, TARGETS, *tokenizers, 40, 40)
    return list(bucketing(40, 256, batch_multiple, drop_remainder=False)(pairs).as_numpy_iterator())


@pytest.mark.parametrize("batch_multiple", [1, 4])
def test_evaluation_batches_of_a_bucket_have_one_shape(tokenizers, batch_multiple):
    # A compiled evaluation step is traced once per bucket: the last, partial batch of a bucket
    # is filled up to the bucket's batch size with rows of padding only, after the real rows.
    evaluation = batches(tokenizers, batch_multiple=batch_multiple, fill_evaluation_batches=True)
    sizes = dict(zip(bucket_boundaries(40), bucket_batch_sizes(40, 256, batch_multiple)))
    unpadded = unpadded_bucket_batches(tokenizers, batch_multiple)
    assert len(evaluation) == len(unpadded)
    assert any(len(labels) < sizes[labels.shape[1] + 1] for _, _, labels in unpadded)  # partial batches exist
    for (inputs, labels), (source, decoder, real_labels) in zip(evaluation, unpadded):
        assert labels.shape == (sizes[labels.shape[1] + 1], real_labels.shape[1])
        real = len(real_labels)
        np.testing.assert_array_equal(labels[:real], real_labels)
        np.testing.assert_array_equal(inputs["encoder_tokens"][:real], source)
        np.testing.assert_array_equal(inputs["decoder_tokens"][:real], decoder)
        for padded in (labels, inputs["encoder_tokens"], inputs["decoder_tokens"]):
            assert not padded[real:].any()


@pytest.mark.parametrize("batch_tokens,batch_multiple", [(256, 1), (100, 1), (256, 4)])
def test_epoch_batches_are_the_bucketed_shuffled_epoch(tokenizers, batch_tokens, batch_multiple):
    """The whole-epoch computation gives tf.data's bucket_by_sequence_length batches of the
    shuffled epoch: same pairs, same padding, same order, every epoch."""
    sources, targets = SOURCES * 5, TARGETS[::-1] * 5  # 300 pairs, source and target lengths differ
    pairs = tokenize_pairs(sources, targets, *tokenizers, 40, 40).ragged_batch(len(sources)).get_single_element()
    batched = bucketing(40, batch_tokens, batch_multiple, drop_remainder=True)
    for epoch in (0, 1, 7):
        epoch = tf.constant(epoch, tf.int64)
        plain = list(batched(shuffled_epoch(pairs, 3, epoch)).as_numpy_iterator())
        whole = list(epoch_batches(pairs, 3, epoch, bucket_boundaries(40),
                                   bucket_batch_sizes(40, batch_tokens, batch_multiple)).as_numpy_iterator())
        assert len(plain) == len(whole) > 3
        for expected, got in zip(plain, whole):
            for a, b in zip(expected, got):
                assert a.dtype == b.dtype
                np.testing.assert_array_equal(a, b)


def test_filled_evaluation_batches_give_the_same_token_metrics(tokenizers):
    # The trainer fills evaluation batches when its step is compiled: the token means that pick
    # best.keras (perplexity) and the accuracy do not see the padding rows.
    from kerasformer import build_seq2seq, preset
    from kerasformer.training.loss import MaskedAccuracy, MaskedLabelSmoothedCrossEntropy, Perplexity

    model = build_seq2seq(preset("tiny", source_vocab_size=60, target_vocab_size=60, max_source_length=40,
                                 max_target_length=40))
    model.compile(loss=MaskedLabelSmoothedCrossEntropy(0.1), metrics=[MaskedAccuracy(), Perplexity()])
    figures = {}
    for fill in (False, True):
        dataset = make_dataset(SOURCES, TARGETS, *tokenizers, 40, 40, batch_tokens=256, shuffle=False,
                               fill_evaluation_batches=fill)
        figures[fill] = model.evaluate(dataset, verbose=0, return_dict=True)
    for name in ("perplexity", "masked_accuracy"):
        np.testing.assert_allclose(figures[True][name], figures[False][name], rtol=1e-6)
    assert figures[True]["loss"] != figures[False]["loss"]  # Keras's row-weighted mean counts the padding rows
