"""The tf.data input pipeline for teacher forcing (paper, section 5.1).

    source "Je t'aime"        -> encoder_tokens  [s1 s2 s3]
    target "I love you"       -> decoder_tokens  [START t1 t2 t3]   (shifted right)
                              -> labels          [t1 t2 t3 END]

Pairs are tokenized once and cached, shuffled, grouped into length buckets so
a batch holds sentences of similar length (little padding), padded to the
bucket's boundary (few distinct shapes, so JAX and XLA compile few programs),
batched by a token budget like the paper's ~25000-token batches, and prefetched.
The dataset feeds `model.fit` under every Keras backend.
"""

import numpy as np
import tensorflow as tf

from kerasformer.training.text_rules import shift_target, truncate_source


def tokenize_pairs(sources, targets, source_tokenizer, target_tokenizer, max_source_length, max_target_length):
    """A dataset of (encoder_tokens, decoder_tokens, labels) int32 vectors, one per pair, in
    order, cut and shifted by `kerasformer.training.text_rules` ([START]/[END] included in
    the maximum lengths)."""
    pairs = tf.data.Dataset.from_tensor_slices((list(sources), list(targets)))

    def tokenize(source, target):
        def batch_of_one(ids):
            return tf.RaggedTensor.from_tensor(tf.cast(ids, tf.int32)[tf.newaxis])

        encoder_tokens = truncate_source(batch_of_one(source_tokenizer(source)), max_source_length)
        decoder_tokens, labels = shift_target(batch_of_one(target_tokenizer(target)), max_target_length)
        return encoder_tokens[0], decoder_tokens[0], labels[0]

    return pairs.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE)


def bucket_boundaries(max_length, width=8):
    """Upper bounds (exclusive) of the length buckets: 9, 17, 25, ... up to max_length + 1."""
    return list(range(width + 1, max_length + 1, width)) + [max_length + 1]


def make_dataset(
    sources,
    targets,
    source_tokenizer,
    target_tokenizer,
    max_source_length,
    max_target_length,
    batch_tokens=4096,
    shuffle=True,
    seed=0,
    batch_multiple=1,
    fill_evaluation_batches=False,
    epochs=None,
):
    """Builds the training or evaluation dataset.

    Args:
        sources, targets: lists of str, one pair per index.
        source_tokenizer, target_tokenizer: keras-hub tokenizers.
        max_source_length, max_target_length: truncation lengths.
        batch_tokens: padded tokens per batch (per side); a bucket of length L
            gets batches of batch_tokens // L pairs.
        shuffle: training mode: reshuffle the pairs every epoch and drop each
            bucket's last partial batch, so every batch of a bucket has one
            shape and a compiled train step is traced once per bucket (pairs
            dropped in one epoch come back in another shuffle).
        seed: shuffle seed, so a run's data order is reproducible.
        batch_multiple: every batch's size is a multiple of this (the number
            of data-parallel replicas, which each take an equal slice of a
            batch): training batch sizes are rounded down to it; a partial
            evaluation batch is filled up with rows of padding only.
        fill_evaluation_batches: evaluation only: fill the last, partial batch
            of each bucket up to the bucket's batch size with rows of padding
            only, so that every evaluation batch of a bucket has one shape and
            a compiled evaluation step is traced once per bucket, not twice
            (the trainer's setting when its step is compiled; without a
            compiled step the extra rows are only cost). Padding rows add
            nothing to the token-level metrics (best.keras goes by
            `val_perplexity`, `training.resume.MONITOR`); Keras's `val_loss`,
            a mean of batch losses weighted by their rows, counts them.
        epochs: training only: `(first, stop)` makes the dataset epochs
            first, ..., stop - 1 one after the other (feed it to `model.fit`
            with `steps_per_epoch`), epoch e shuffled with the seed
            `(seed, e)`. A resumed run therefore sees, from any epoch on, the
            data order an uninterrupted run saw. None: one epoch, reshuffled
            each time the dataset is iterated.

    Yields:
        `({"encoder_tokens": (batch, source_length), "decoder_tokens": (batch,
        target_length)}, labels (batch, target_length))`, int32, 0-padded.
    """
    pairs = tokenize_pairs(
        sources, targets, source_tokenizer, target_tokenizer, max_source_length, max_target_length
    ).cache()
    max_length = max(max_source_length, max_target_length)
    boundaries, sizes = bucket_boundaries(max_length), bucket_batch_sizes(max_length, batch_tokens, batch_multiple)
    batched = bucketing(max_length, batch_tokens, batch_multiple, drop_remainder=shuffle)
    if epochs is not None:
        everything = pairs.ragged_batch(len(sources)).get_single_element()  # random access to the pairs
        # The batches of batched(shuffled_epoch(everything, seed, epoch)), computed a whole epoch at once.
        dataset = tf.data.Dataset.range(*epochs).flat_map(
            lambda epoch: epoch_batches(everything, seed, epoch, boundaries, sizes))
    elif shuffle:
        dataset = batched(pairs.shuffle(len(sources), seed=seed, reshuffle_each_iteration=True))
    else:
        dataset = batched(pairs)

    def to_model_inputs(source, decoder, labels):
        if not shuffle:  # evaluation: a partial batch filled up with padding rows
            rows = tf.shape(source)[0]
            if fill_evaluation_batches:
                # Both sides are padded to the bucket's boundary - 1 (pad_to_bucket_boundary).
                bucket = tf.searchsorted(tf.constant(boundaries), tf.shape(source)[1:2], side="right")[0]
                missing_rows = tf.gather(sizes, bucket) - rows
            else:
                missing_rows = -rows % batch_multiple
            source, decoder, labels = (tf.pad(x, [[0, missing_rows], [0, 0]]) for x in (source, decoder, labels))
        # A bucket boundary can exceed one side's maximum; what lies beyond it is padding.
        return (
            {"encoder_tokens": source[:, :max_source_length], "decoder_tokens": decoder[:, :max_target_length]},
            labels[:, :max_target_length],
        )

    return dataset.map(to_model_inputs, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def bucketing(max_length, batch_tokens, batch_multiple, drop_remainder):
    """`dataset -> batches`: pairs grouped by the longer side into the buckets of
    `bucket_boundaries(max_length)`, padded to the bucket's boundary, batch_tokens // length
    pairs a batch (rounded down to a multiple of batch_multiple, at least one multiple)."""
    boundaries = bucket_boundaries(max_length)
    batch_sizes = bucket_batch_sizes(max_length, batch_tokens, batch_multiple)

    def batched(dataset):
        return dataset.bucket_by_sequence_length(
            element_length_func=lambda source, decoder, labels: tf.maximum(tf.shape(source)[0], tf.shape(decoder)[0]),
            bucket_boundaries=boundaries,
            bucket_batch_sizes=batch_sizes,
            pad_to_bucket_boundary=True,
            drop_remainder=drop_remainder,
        )

    return batched


def bucket_batch_sizes(max_length, batch_tokens, batch_multiple):
    """Pairs per batch of each bucket of `bucket_boundaries(max_length)`, and of the bucket past
    the last boundary (which stays empty): batch_tokens // length, rounded down to a multiple
    of batch_multiple, at least one multiple."""
    sizes = [max(batch_multiple, batch_tokens // (boundary - 1) // batch_multiple * batch_multiple)
             for boundary in bucket_boundaries(max_length)]
    return sizes + sizes[-1:]


def shuffled_epoch(pairs, seed, epoch):
    """A dataset of the tokenized `pairs` (three ragged tensors: sources, decoder rows,
    labels) in the order of `epoch`: a stateless function of `(seed, epoch)`, so a resumed
    run sees the order an uninterrupted run saw. Each bucket holds the same pairs every
    epoch, so every epoch has the same number of batches; only their order and content change."""
    source, decoder, labels = pairs
    keys = tf.random.stateless_uniform([source.nrows()], seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
    order = tf.data.Dataset.from_tensor_slices(tf.argsort(keys))
    return order.map(lambda i: (source[i], decoder[i], labels[i]))


def epoch_size(dataset, progress=None):
    """`(batches, non-padding target tokens)` of one pass over `dataset` (for steps per
    epoch and tokens/s figures), counted in a single pass (it tokenizes and batches the whole
    split, so `progress`, a `kerasformer.training.progress.Progress`, can report it)."""
    batches = tokens = 0
    iterator = dataset.as_numpy_iterator()
    for _, labels in progress.iterate(iterator) if progress is not None else iterator:
        batches += 1
        tokens += int(np.count_nonzero(labels))
    return batches, tokens


def epoch_batches(pairs, seed, epoch, boundaries, batch_sizes):
    """The training batches of `epoch`: the same batches, in the same order, as
    `bucketing(...)(shuffled_epoch(pairs, seed, epoch))` with drop_remainder (tested equal),
    computed for the whole epoch at once instead of one tf.data step per pair (a tenth of
    the CPU time: about 0.7 s against 5.4 s an epoch on the embedded corpus, taken from training).

    bucket_by_sequence_length puts each pair, in the epoch's order, into the bucket of its
    length and emits a bucket's batch when the pair that fills it arrives; the pairs left in
    unfilled batches at the end are dropped. Here: each pair's bucket and its rank within
    the bucket; a pair of rank r completes a batch when r % size == size - 1; the batches,
    in the order of their completing pairs, hold the bucket's pairs of ranks r - size + 1..r,
    padded to the bucket's boundary - 1."""
    source, decoder, labels = pairs
    keys = tf.random.stateless_uniform([source.nrows()], seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
    order = tf.argsort(keys)  # as shuffled_epoch: pair ids in this epoch's order
    lengths = tf.gather(tf.maximum(source.row_lengths(), decoder.row_lengths()), order)
    bucket = tf.searchsorted(tf.constant(boundaries, tf.int64), lengths, side="right")  # per position
    sizes = tf.gather(tf.constant(batch_sizes, tf.int64), bucket)
    in_bucket = tf.one_hot(bucket, len(boundaries) + 1, dtype=tf.int64)  # (pairs, buckets)
    rank = tf.reduce_sum((tf.cumsum(in_bucket, axis=0) - 1) * in_bucket, axis=1)
    completing = tf.where(rank % sizes == sizes - 1)[:, 0]  # positions, in order
    by_bucket = tf.gather(order, tf.argsort(bucket, stable=True))  # pair ids bucket by bucket, in rank order
    bucket_start = tf.cumsum(tf.reduce_sum(in_bucket, axis=0), exclusive=True)
    completing_bucket = tf.gather(bucket, completing)
    size = tf.gather(sizes, completing)
    first = tf.gather(bucket_start, completing_bucket) + tf.gather(rank, completing) - size + 1
    width = tf.gather(tf.constant(boundaries + boundaries[-1:], tf.int64) - 1, completing_bucket)

    def batch(first, size, width):
        ids = by_bucket[first:first + size]

        def padded(side):
            rows = tf.gather(side, ids).to_tensor()
            return tf.pad(rows, [[0, 0], [0, width - tf.shape(rows, out_type=tf.int64)[1]]])

        return padded(source), padded(decoder), padded(labels)

    return tf.data.Dataset.from_tensor_slices((first, size, width)).map(batch)
