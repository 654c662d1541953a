"""NumPy references written from the paper's equations, shared by the tests.

Nothing here imports kerasformer: each function is the formula as printed in
"Attention Is All You Need", so a test compares our layers against the paper.
"""

import numpy as np


def positional_encoding(length, d_model, start=0):
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d))."""
    pe = np.zeros((length, d_model))
    for pos in range(start, start + length):
        for i in range(d_model // 2):
            angle = pos / 10000 ** (2 * i / d_model)
            pe[pos - start, 2 * i] = np.sin(angle)
            pe[pos - start, 2 * i + 1] = np.cos(angle)
    return pe


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def scaled_dot_product_attention(q, k, v, mask=None):
    """softmax(Q K^T / sqrt(d_k)) V; masked (False) positions get weight 0."""
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    weights = softmax(scores)
    return weights @ v, weights


def linear(x, dense):
    """x W + b with the weights of a Keras Dense layer."""
    return x @ dense.kernel.numpy() + dense.bias.numpy()


def multi_head_attention(layer, query, value, mask=None):
    """Concat(head_1..head_h) W^O, head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V).

    Head i uses columns [i*d_k, (i+1)*d_k) of the projection matrices: loops over
    heads instead of reshaping, so the split/concat of the layer is checked too.
    `mask` is bool `(batch, query_length, key_length)`.
    """
    h, d_k = layer.num_heads, query.shape[-1] // layer.num_heads
    q, k, v = linear(query, layer.query_dense), linear(value, layer.key_dense), linear(value, layer.value_dense)
    heads, weights = [], []
    for i in range(h):
        cols = slice(i * d_k, (i + 1) * d_k)
        head, w = scaled_dot_product_attention(q[..., cols], k[..., cols], v[..., cols], mask)
        heads.append(head)
        weights.append(w)
    return linear(np.concatenate(heads, axis=-1), layer.output_dense), np.stack(weights, axis=1)


def layer_norm_of(x, gamma, beta, epsilon):
    """gamma * (x - mean) / sqrt(var + epsilon) + beta over the last axis, in x's dtype."""
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + epsilon) * gamma + beta


def layer_norm(x, layer):
    return layer_norm_of(x, layer.gamma.numpy(), layer.beta.numpy(), layer.epsilon)


def add_norm(x, sublayer, add_norm_layer):
    """Post-norm LayerNorm(x + Sublayer(x)); pre-norm x + Sublayer(LayerNorm(x))."""
    if add_norm_layer.norm_first:
        return x + sublayer(layer_norm(x, add_norm_layer.layer_norm))
    return layer_norm(x + sublayer(x), add_norm_layer.layer_norm)


def feed_forward(x, layer):
    """FFN(x) = max(0, x W_1 + b_1) W_2 + b_2."""
    return linear(np.maximum(0, linear(x, layer.inner_dense)), layer.output_dense)


def causal(length):
    return np.tril(np.ones((length, length), dtype=bool))


def encoder_block(x, block, key_padding):
    """AddNorm(x, SelfAttention(x)), then AddNorm(x, FFN(x)); key_padding (batch, length)."""
    mask = np.broadcast_to(key_padding[:, None, :], (x.shape[0], x.shape[1], x.shape[1]))
    x = add_norm(x, lambda x: multi_head_attention(block.self_attention, x, x, mask)[0], block.self_attention_add_norm)
    return add_norm(x, lambda x: feed_forward(x, block.feed_forward), block.feed_forward_add_norm)


def decoder_block(x, encoder_output, block, decoder_padding, encoder_padding):
    """Masked self-attention, cross-attention (Q from x, K=V=encoder_output), FFN."""
    batch, t, s = x.shape[0], x.shape[1], encoder_output.shape[1]
    self_mask = decoder_padding[:, None, :] & causal(t)[None]
    cross_mask = np.broadcast_to(encoder_padding[:, None, :], (batch, t, s))
    x = add_norm(x, lambda x: multi_head_attention(block.self_attention, x, x, self_mask)[0], block.self_attention_add_norm)
    x = add_norm(
        x, lambda x: multi_head_attention(block.cross_attention, x, encoder_output, cross_mask)[0], block.cross_attention_add_norm
    )
    return add_norm(x, lambda x: feed_forward(x, block.feed_forward), block.feed_forward_add_norm)
