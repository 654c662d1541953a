"""The two masks of the paper: padding and causal (look-ahead).

Convention: a mask is boolean and True where attention is *allowed*.
"""

from keras import ops


def padding_mask(token_ids):
    """True at real tokens, False at padding (token id 0).

    Args:
        token_ids: int tensor `(batch, length)`.

    Returns:
        bool tensor `(batch, length)`.
    """
    return ops.not_equal(token_ids, 0)


def causal_mask(query_length, key_length, query_offset=0):
    """Position i may attend to positions j <= i and never to the future.

    Section 3.2.3: "We need to prevent leftward information flow in the decoder
    to preserve the auto-regressive property."

    Args:
        query_length: number of query positions.
        key_length: number of key positions.
        query_offset: absolute position of the first query (the step index when
            decoding incrementally with a key/value cache); may be a tensor.

    Returns:
        bool tensor `(query_length, key_length)`, lower triangular when
        `query_offset == 0` and the lengths are equal.
    """
    query_positions = ops.expand_dims(ops.arange(query_length) + query_offset, 1)
    key_positions = ops.expand_dims(ops.arange(key_length), 0)
    return ops.greater_equal(query_positions, key_positions)
