"""The rules between token ids and the model's rows, in one place. The training
pipeline, the Translator and the exported graph all call these:

    source ids   s1 ... sk             -> encoder row  s1 ... s(min(k, max_source_length))
    target ids   t1 ... tm             -> decoder row  [START] t1 ... t(n-1)   (shifted right)
                                          labels       t1 ... t(n-1) [END]     n = min(m + 1, max_target_length)
    decoded row  y1 ... yj [END] 0 ... -> y1 ... yj

Sources longer than the encoder's max_length are truncated, in training as in translation.
A target keeps at most max_target_length - 1 ids so that [START] (decoder row) and [END]
(labels) fit. Decoding never predicts padding and writes only 0 after [END]
(`kerasformer.decoding`), so a translation is the nonzero ids before [END].

Every function takes a batch: a list of id lists (Python), or a 2-D / ragged tensor (in a
`tf.function` or `tf.data` map; `strip_end` also a NumPy array under any backend).
"""

from keras import ops

from kerasformer.training.tokenizers import END_ID, PAD_ID, START_ID


def truncate_source(rows, max_source_length):
    """Each source row cut to its first `max_source_length` ids."""
    if isinstance(rows, list):
        return [list(row)[:max_source_length] for row in rows]
    return rows[:, :max_source_length]


def shift_target(rows, max_target_length):
    """Teacher forcing (paper, section 3.1, 5.1): `(decoder rows, labels)` of target rows
    (a ragged int tensor), each `[START]`-first / `[END]`-last, at most `max_target_length` long."""
    import tensorflow as tf

    kept = rows[:, : max_target_length - 1]

    def column(token):  # one id per row, also for an empty target
        return tf.RaggedTensor.from_tensor(tf.fill(tf.stack([kept.nrows(), 1]), tf.cast(token, kept.dtype)))

    return tf.concat([column(START_ID), kept], axis=1), tf.concat([kept, column(END_ID)], axis=1)


def strip_end(tokens):
    """Decoded rows `(batch, width)` -> `(tokens, length)`: the ids before each row's
    [END], 0-padded to the longest row, and their number per row (int32)."""
    tokens = ops.where(ops.equal(tokens, END_ID), PAD_ID, tokens)  # after [END] every id is already 0
    length = ops.sum(ops.cast(ops.not_equal(tokens, PAD_ID), "int32"), axis=1)
    width = ops.max(ops.concatenate([length, ops.zeros((1,), "int32")], axis=0))
    return tokens[:, :width], length


def length_limit(source_lengths, rule, max_length):
    """Each row's most target tokens ([END] included) under the run's length rule
    `(a, b)`: `ceil(a * source_length + b)`, within [1, max_length] (fairseq's max_len_a /
    max_len_b, Marian's max-length-factor), so a looping model stops near its source's length
    and a three-word request never costs `max_length` steps. `rule` None: `max_length` for
    every row. `source_lengths`: int `(batch,)`, the source ids without padding."""
    source_lengths = ops.convert_to_tensor(source_lengths)
    if rule is None:
        return ops.full(ops.shape(source_lengths), max_length, "int32")
    a, b = (ops.cast(x, "float32") for x in rule)  # numbers, or the export's variables
    limit = ops.ceil(a * ops.cast(source_lengths, "float32") + b)
    return ops.cast(ops.clip(limit, 1, max_length), "int32")


def fit_length_rule(source_lengths, target_lengths, coverage=0.999):
    """`(a, b)` of `length_limit` from the training pairs' lengths (source ids; target ids
    with [END]): `a` the 99th percentile of target/source over sources of 10 ids and more
    (where the ratio is stable), `b` the smallest whole number of ids with which `coverage` of
    the pairs fit. Stored with the run (config.json, "decoding")."""
    import numpy as np

    source = np.asarray(source_lengths, "float64")
    target = np.asarray(target_lengths, "float64")
    long_enough = source >= 10
    ratios = target[long_enough] / source[long_enough] if long_enough.any() else target / np.maximum(source, 1)
    a = round(float(np.quantile(ratios, 0.99)), 3)
    b = float(max(1.0, np.ceil(np.quantile(target - a * source, coverage))))
    return a, b
