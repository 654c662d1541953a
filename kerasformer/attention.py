"""Scaled dot-product attention and multi-head attention (paper, section 3.2)."""

import math

import keras
from keras import ops

from kerasformer.dropout import dropout_layer
from kerasformer.feed_forward import position_wise
from kerasformer.masks import causal_mask

# The score of a masked position before the softmax, and the log-probability of
# a continuation beam search forbids. Finite, so a row whose keys are all masked
# gives uniform weights instead of NaN, and sums of forbidden scores never give
# inf - inf = NaN; in float32 exp(-1e9 - max) is exactly 0, so a masked key gets
# zero weight.
MASKED_SCORE = -1e9


def scaled_dot_product_attention(query, key, value, mask=None, dropout=None, training=None):
    """Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V   (equation 1).

    Args:
        query: `(batch, num_heads, query_length, d_k)`.
        key: `(batch, num_heads, key_length, d_k)`.
        value: `(batch, num_heads, key_length, d_v)`.
        mask: optional bool, broadcastable to `(batch, num_heads, query_length,
            key_length)`; True where attention is allowed.
        dropout: optional Dropout layer applied to the attention weights.
        training: passed to `dropout`.

    Returns:
        `(output, weights)`: output `(batch, num_heads, query_length, d_v)` and
        weights `(batch, num_heads, query_length, key_length)`, rows summing to 1.
    """
    d_k = ops.shape(query)[-1]
    scores = ops.matmul(query, ops.swapaxes(key, -1, -2)) / math.sqrt(d_k)
    # The softmax runs in float32 even under a mixed-precision policy.
    scores = ops.cast(scores, "float32")
    if mask is not None:
        scores = ops.where(mask, scores, MASKED_SCORE)
    weights = ops.cast(ops.softmax(scores, axis=-1), keras.backend.standardize_dtype(query.dtype))
    if dropout is not None:
        weights = dropout(weights, training=training)
    return ops.matmul(weights, value), weights


def write_position(cache, index, update):
    """The cache with `update` written at position `index`: cache[:, :, index] = update.

    Args:
        cache: `(batch, num_heads, max_length, d_k)`.
        index: scalar int, the position to write.
        update: `(batch, num_heads, 1, d_k)`: one position (incremental decoding
            feeds one token per step).

    Returns:
        `(batch, num_heads, max_length, d_k)`.

    A scatter of one row per (batch, head) rather than `ops.slice_update`: under
    TensorFlow that becomes `XlaDynamicUpdateSlice`, an op that needs XLA at run
    time, which TensorFlow Serving's CPU model server disables by default. The
    scatter (`TensorScatterUpdate`, a core op) costs a copy of the cache at most;
    a select over all positions costs ten times that (benchmarks/decode_speed.py).
    """
    if update.shape[-2] is not None and update.shape[-2] != 1:
        raise ValueError(f"the cache takes one position per step, got {update.shape[-2]}")
    shape = ops.shape(cache)
    rows = shape[0] * shape[1]  # one (max_length, d_k) matrix per (batch, head)
    indices = ops.stack(
        [ops.arange(rows, dtype="int32"), ops.full((rows,), ops.cast(index, "int32"), dtype="int32")], axis=1
    )
    written = ops.scatter_update(
        ops.reshape(cache, (rows, shape[2], shape[3])), indices,
        ops.reshape(ops.cast(update, cache.dtype), (rows, shape[3])),
    )
    return ops.reshape(written, shape)


@keras.saving.register_keras_serializable(package="kerasformer")
class MultiHeadAttention(keras.layers.Layer):
    """MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O,
    head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V)   (section 3.2.2).

    The h projections W_i^Q of width d_k = d_model / h are computed at once as
    one d_model x d_model matrix whose output is split into h heads.

    Incremental decoding: with `cache` a `(key, value)` pair, each `(batch,
    num_heads, max_length, d_k)`, and `cache_update_index`, the new
    keys/values of `query`'s positions are written at that index and the queries
    attend to the whole cache under the causal mask offset by the index. With
    `cache` but no index (cross-attention), the cached keys/values are used as
    they are (`project(key=encoder_output, value=encoder_output)` computes
    them). The cached path uses the same projections and the same
    `scaled_dot_product_attention` as training.

    Args:
        num_heads: h.
        dropout: dropout rate on the attention weights (0: none, the paper;
            `TransformerConfig.attention_dropout`).
        fused: the same function computed faster (see `fused_project`): the
            projections of one input as one matmul, and W^Q, W^K, W^V, W^O on
            the 2-D view of their input (`position_wise`). False is the plain
            path this docstring describes; tests hold the two equal.

    Call arguments:
        query: `(batch, query_length, d_model)`.
        value: `(batch, key_length, d_model)`; None when `cache` holds the keys
            and values (cross-attention while decoding).
        key: `(batch, key_length, d_model)`; defaults to `value`.
        key_padding_mask: bool `(batch, key_length)`, False at padded keys.
        use_causal_mask: forbid attending to later positions.
        cache, cache_update_index: see above.
        return_attention_scores: also return the weights
            `(batch, num_heads, query_length, key_length)`.

    Returns:
        `(batch, query_length, d_model)`; then the weights if requested; then
        the updated cache if `cache` and `cache_update_index` were given.

    Example:
        >>> attention = MultiHeadAttention(num_heads=8)
        >>> x = keras.random.normal((2, 10, 512))
        >>> attention(x, x, use_causal_mask=True).shape
        (2, 10, 512)
    """

    def __init__(self, num_heads, dropout=0.0, fused=True, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.dropout = dropout
        self.fused = fused
        # Passes the padding mask of its first input through unchanged.
        self.supports_masking = True

    def build(self, query_shape, value_shape, key_shape=None):
        d_model = query_shape[-1]
        if d_model % self.num_heads:
            raise ValueError(
                f"d_model={d_model} is not divisible by num_heads={self.num_heads}"
            )
        self.d_model = d_model
        self.d_k = d_model // self.num_heads
        key_shape = value_shape if key_shape is None else key_shape

        def projection(name, input_shape):
            dense = keras.layers.Dense(d_model, name=name, dtype=self.dtype_policy)
            dense.build(input_shape)
            return dense

        self.query_dense = projection("query", query_shape)  # W^Q
        self.key_dense = projection("key", key_shape)  # W^K
        self.value_dense = projection("value", value_shape)  # W^V
        self.output_dense = projection("output", tuple(query_shape[:-1]) + (d_model,))  # W^O
        self.weights_dropout = dropout_layer(self.dropout, self.fused, dtype=self.dtype_policy)

    def split_heads(self, x):
        """`(batch, length, d_model)` -> `(batch, num_heads, length, d_k)`."""
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        x = ops.reshape(x, (batch, length, self.num_heads, self.d_k))
        return ops.transpose(x, (0, 2, 1, 3))

    def concat_heads(self, x):
        """`(batch, num_heads, length, d_k)` -> `(batch, length, d_model)`."""
        batch, length = ops.shape(x)[0], ops.shape(x)[2]
        x = ops.transpose(x, (0, 2, 1, 3))
        return ops.reshape(x, (batch, length, self.d_model))

    def project(self, query=None, key=None, value=None):
        """Q W^Q, K W^K and V W^V, each split into h heads of width d_k.

        Args:
            query: `(batch, query_length, d_model)` or None.
            key, value: `(batch, key_length, d_model)` or None.

        Returns:
            `(query_heads, key_heads, value_heads)`, each `(batch, num_heads,
            length, d_k)`, or None where its input was None.
        """
        inputs = ((query, self.query_dense), (key, self.key_dense), (value, self.value_dense))
        if self.fused:
            return self.fused_project(inputs)
        return tuple(None if x is None else self.split_heads(dense(x)) for x, dense in inputs)

    def fused_project(self, inputs):
        """`project` with one 2-D matmul per distinct input tensor.

        The projections that read the same tensor (self-attention's W^Q, W^K,
        W^V; cross-attention's W^K, W^V) run as one matmul with their kernels
        side by side, on the 2-D view `(batch * length, d_model)` of that
        tensor: one larger matmul instead of several small ones, and in the
        backward pass one matmul for the gradient of the input instead of a sum
        of several. The variables stay the Dense layers' own, so `.keras`
        files are the same with or without `fused`.

        Args:
            inputs: three `(x or None, Dense)` pairs: query, key, value.

        Returns:
            As `project`.
        """
        heads = [None] * len(inputs)
        for i, (x, _) in enumerate(inputs):
            if x is None or heads[i] is not None:
                continue
            same = [j for j, (other, _) in enumerate(inputs) if other is x]
            kernel = ops.concatenate([ops.cast(inputs[j][1].kernel, self.compute_dtype) for j in same], axis=-1)
            bias = ops.concatenate([ops.cast(inputs[j][1].bias, self.compute_dtype) for j in same], axis=-1)
            batch, length = ops.shape(x)[0], ops.shape(x)[1]
            rows = ops.matmul(ops.reshape(x, (-1, x.shape[-1])), kernel) + bias  # (batch * length, n * d_model)
            projected = ops.reshape(rows, (batch, length, len(same), self.num_heads, self.d_k))
            projected = ops.transpose(projected, (2, 0, 3, 1, 4))  # (n, batch, num_heads, length, d_k)
            # unstack, not slicing: under TensorFlow the gradient of each slice is a
            # zero-filled full-size tensor (StridedSliceGrad), of unstack one stack.
            for j, one in zip(same, ops.unstack(projected, num=len(same), axis=0)):
                heads[j] = one
        return tuple(heads)

    def call(
        self,
        query,
        value,
        key=None,
        key_padding_mask=None,
        use_causal_mask=False,
        cache=None,
        cache_update_index=None,
        return_attention_scores=False,
        training=None,
    ):
        # Q W^Q, K W^K, V W^V, each split into h heads.
        query_heads, key_heads, value_heads = self.project(query, value if key is None else key, value)

        if cache is not None:
            # Incremental decoding: the keys and values of earlier positions come from the cache.
            if cache_update_index is None:  # cross-attention: the encoder output's, projected once
                key_heads, value_heads = cache
            else:  # self-attention: this step's keys and values are written at its position
                key_heads = write_position(cache[0], cache_update_index, key_heads)
                value_heads = write_position(cache[1], cache_update_index, value_heads)
                cache = (key_heads, value_heads)

        mask = None
        if key_padding_mask is not None:
            mask = key_padding_mask[:, None, None, :]  # broadcast over heads, queries
        if use_causal_mask:
            query_offset = 0 if cache_update_index is None else cache_update_index
            causal = causal_mask(ops.shape(query_heads)[2], ops.shape(key_heads)[2], query_offset)
            mask = causal if mask is None else ops.logical_and(mask, causal)

        # head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V), every head at once.
        heads, weights = scaled_dot_product_attention(
            query_heads, key_heads, value_heads, mask, self.weights_dropout, training
        )
        # Concat(head_1, ..., head_h) W^O.
        concatenated = self.concat_heads(heads)
        output = position_wise(self.output_dense, concatenated) if self.fused else self.output_dense(concatenated)

        results = (output,)
        if return_attention_scores:
            results += (weights,)
        if cache is not None and cache_update_index is not None:
            results += (cache,)
        return results[0] if len(results) == 1 else results

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "dropout": self.dropout,
            "fused": self.fused,
        }
