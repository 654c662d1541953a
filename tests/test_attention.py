import keras
import numpy as np
import pytest
import reference
from conftest import layer_model, numpy, round_trip
from gradients import fused_and_plain, variable_gradients
from keras import ops

from kerasformer import MultiHeadAttention, scaled_dot_product_attention
from kerasformer.attention import write_position

BATCH, QUERY_LENGTH, KEY_LENGTH, D_MODEL, HEADS = 2, 5, 7, 16, 4


def random(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def key_padding():
    """Row 0 has 7 real keys, row 1 has 4 then padding."""
    return np.array([[1] * 7, [1] * 4 + [0] * 3], dtype=bool)


def test_scaled_dot_product_attention_matches_equation_1():
    q, k, v = random(BATCH, HEADS, QUERY_LENGTH, 8), random(BATCH, HEADS, KEY_LENGTH, 8, seed=1), random(
        BATCH, HEADS, KEY_LENGTH, 6, seed=2
    )
    mask = key_padding()[:, None, None, :]
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    ref_out, ref_weights = reference.scaled_dot_product_attention(q, k, v, mask)
    np.testing.assert_allclose(numpy(out), ref_out, atol=1e-5)
    np.testing.assert_allclose(numpy(weights), ref_weights, atol=1e-6)


def test_padded_keys_get_exactly_zero_weight_and_rows_sum_to_one():
    layer = MultiHeadAttention(num_heads=HEADS)
    query, value = random(BATCH, QUERY_LENGTH, D_MODEL), random(BATCH, KEY_LENGTH, D_MODEL, seed=1)
    _, weights = layer(query, value, key_padding_mask=key_padding(), return_attention_scores=True)
    weights = numpy(weights)
    assert weights.shape == (BATCH, HEADS, QUERY_LENGTH, KEY_LENGTH)
    assert np.all(weights[1, :, :, 4:] == 0)
    np.testing.assert_allclose(weights.sum(-1), 1, atol=1e-6)


def test_fully_masked_row_gives_finite_output():
    layer = MultiHeadAttention(num_heads=HEADS)
    x = random(1, 3, D_MODEL)
    out = numpy(layer(x, x, key_padding_mask=np.zeros((1, 3), bool)))
    assert np.isfinite(out).all()


def test_multi_head_attention_matches_split_concat_reference():
    layer = MultiHeadAttention(num_heads=HEADS)
    query, value = random(BATCH, QUERY_LENGTH, D_MODEL), random(BATCH, KEY_LENGTH, D_MODEL, seed=1)
    out, weights = layer(query, value, key_padding_mask=key_padding(), return_attention_scores=True)
    mask = np.broadcast_to(key_padding()[:, None, :], (BATCH, QUERY_LENGTH, KEY_LENGTH))
    ref_out, ref_weights = reference.multi_head_attention(layer, query, value, mask)
    assert numpy(out).shape == (BATCH, QUERY_LENGTH, D_MODEL)
    np.testing.assert_allclose(numpy(out), ref_out, atol=1e-5)
    np.testing.assert_allclose(numpy(weights), ref_weights, atol=1e-6)


def test_causal_mask_matches_reference_and_hides_the_future():
    layer = MultiHeadAttention(num_heads=HEADS)
    x = random(BATCH, QUERY_LENGTH, D_MODEL)
    out, weights = layer(x, x, use_causal_mask=True, return_attention_scores=True)
    mask = np.broadcast_to(reference.causal(QUERY_LENGTH), (BATCH, QUERY_LENGTH, QUERY_LENGTH))
    ref_out, _ = reference.multi_head_attention(layer, x, x, mask)
    np.testing.assert_allclose(numpy(out), ref_out, atol=1e-5)
    assert np.all(numpy(weights)[..., np.triu_indices(QUERY_LENGTH, 1)[0], np.triu_indices(QUERY_LENGTH, 1)[1]] == 0)


@pytest.mark.parametrize("fused", [True, False])
def test_incremental_decoding_with_cache_equals_full_causal_attention(fused):
    layer = MultiHeadAttention(num_heads=HEADS, fused=fused)
    x = random(BATCH, QUERY_LENGTH, D_MODEL)
    full = numpy(layer(x, x, use_causal_mask=True))
    max_length = QUERY_LENGTH + 3  # a cache longer than the sequence
    empty = np.zeros((BATCH, HEADS, max_length, D_MODEL // HEADS), "float32")
    cache = (empty, empty)
    steps = []
    for t in range(QUERY_LENGTH):
        out, cache = layer(x[:, t : t + 1], x[:, t : t + 1], use_causal_mask=True, cache=cache, cache_update_index=t)
        steps.append(numpy(out))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)


@pytest.mark.parametrize("index", [0, 3, 7])
def test_write_position_writes_one_position_of_every_row_and_head(index):
    cache, update = random(BATCH, HEADS, 8, 4), random(BATCH, HEADS, 1, 4, seed=1)
    expected = cache.copy()
    expected[:, :, index] = update[:, :, 0]
    np.testing.assert_array_equal(numpy(write_position(cache, index, update)), expected)


def test_write_position_refuses_more_than_one_position():
    with pytest.raises(ValueError, match="one position per step, got 2"):
        write_position(random(BATCH, HEADS, 8, 4), 0, random(BATCH, HEADS, 2, 4))


@pytest.mark.parametrize("fused", [True, False])
def test_precomputed_cross_attention_keys_values_equal_recomputing_them(fused):
    layer = MultiHeadAttention(num_heads=HEADS, fused=fused)
    query, value = random(BATCH, QUERY_LENGTH, D_MODEL), random(BATCH, KEY_LENGTH, D_MODEL, seed=1)
    direct = numpy(layer(query, value, key_padding_mask=key_padding()))
    cache = layer.project(key=value, value=value)[1:]
    assert [tuple(part.shape) for part in cache] == [(BATCH, HEADS, KEY_LENGTH, D_MODEL // HEADS)] * 2
    cached = numpy(layer(query, None, key_padding_mask=key_padding(), cache=cache))
    np.testing.assert_allclose(cached, direct, atol=1e-6)


def test_attention_dropout_only_in_training():
    layer = MultiHeadAttention(num_heads=HEADS, dropout=0.5)
    x = random(BATCH, QUERY_LENGTH, D_MODEL)
    _, inference = layer(x, x, return_attention_scores=True)
    _, trained = layer(x, x, return_attention_scores=True, training=True)
    np.testing.assert_allclose(numpy(inference).sum(-1), 1, atol=1e-6)
    assert (numpy(trained) == 0).mean() > 0.2


@pytest.mark.parametrize("fused", [True, False])
def test_round_trip(tmp_path, fused):
    layer = MultiHeadAttention(num_heads=HEADS, dropout=0.1, fused=fused, name="attention")
    assert MultiHeadAttention.from_config(layer.get_config()).get_config() == layer.get_config()
    model = layer_model(layer, ((None, D_MODEL), "float32"), ((None, D_MODEL), "float32"))
    inputs = [random(BATCH, QUERY_LENGTH, D_MODEL), random(BATCH, KEY_LENGTH, D_MODEL, seed=1)]
    before, after, _ = round_trip(model, tmp_path, inputs)
    np.testing.assert_array_equal(before, after)


def test_d_model_not_divisible_by_heads_is_refused():
    with pytest.raises(ValueError, match="d_model=10 is not divisible by num_heads=4"):
        MultiHeadAttention(num_heads=4)(random(1, 3, 10), random(1, 3, 10))


def tensor(*shape, seed=0):
    """A backend tensor: passing the same one as query and value makes it self-attention."""
    return ops.convert_to_tensor(random(*shape, seed=seed))


def attention_cases():
    """name -> (call arguments, keyword arguments): every way the model calls attention."""
    x, encoder_output = tensor(BATCH, QUERY_LENGTH, D_MODEL), tensor(BATCH, KEY_LENGTH, D_MODEL, seed=1)
    key = tensor(BATCH, KEY_LENGTH, D_MODEL, seed=2)
    empty = ops.zeros((BATCH, HEADS, QUERY_LENGTH + 2, D_MODEL // HEADS))
    return {
        "self": ((x, x), dict(key_padding_mask=key_padding()[:, :QUERY_LENGTH], use_causal_mask=True)),
        "cross": ((x, encoder_output), dict(key_padding_mask=key_padding())),
        "separate key": ((x, encoder_output, key), {}),
        "cached self": ((x[:, 3:4], x[:, 3:4]), dict(use_causal_mask=True, cache=(empty, empty), cache_update_index=3)),
    }


@pytest.mark.parametrize("case", ["self", "cross", "separate key", "cached self"])
def test_fused_path_equals_the_plain_path_forward_and_gradients(case):
    args, kwargs = attention_cases()[case]
    fused, plain = fused_and_plain(lambda fused: MultiHeadAttention(num_heads=HEADS, fused=fused), *args, **kwargs)
    fused_out, plain_out = fused(*args, **kwargs), plain(*args, **kwargs)
    if "cache" in kwargs:  # (output, cache): the written caches too
        for fused_part, plain_part in zip(fused_out[1], plain_out[1]):
            np.testing.assert_allclose(numpy(fused_part), numpy(plain_part), atol=1e-5)
        fused_out, plain_out = fused_out[0], plain_out[0]
    np.testing.assert_allclose(numpy(fused_out), numpy(plain_out), atol=1e-5)

    weights = ops.convert_to_tensor(random(*fused_out.shape, seed=3))

    def loss(layer):
        out = layer(*args, **kwargs)
        return ops.sum((out[0] if isinstance(out, tuple) else out) * weights)

    fused_gradients = variable_gradients(fused.trainable_variables, lambda: loss(fused))
    plain_gradients = variable_gradients(plain.trainable_variables, lambda: loss(plain))
    assert len(fused_gradients) == len(plain_gradients) == 8  # W^Q, W^K, W^V, W^O and their biases
    for variable, fused_gradient, plain_gradient in zip(plain.trainable_variables, fused_gradients, plain_gradients):
        np.testing.assert_allclose(fused_gradient, plain_gradient, atol=1e-4, err_msg=variable.path)


def test_fused_and_plain_projections_give_the_same_heads():
    x, encoder_output = tensor(BATCH, QUERY_LENGTH, D_MODEL), tensor(BATCH, KEY_LENGTH, D_MODEL, seed=1)
    fused, plain = fused_and_plain(lambda fused: MultiHeadAttention(num_heads=HEADS, fused=fused), x, encoder_output)
    for query, key, value in [(x, x, x), (x, encoder_output, encoder_output), (None, encoder_output, encoder_output),
                              (x, None, None)]:
        for fused_heads, plain_heads in zip(fused.project(query, key, value), plain.project(query, key, value)):
            if plain_heads is None:
                assert fused_heads is None
                continue
            assert tuple(fused_heads.shape) == tuple(plain_heads.shape)
            np.testing.assert_allclose(numpy(fused_heads), numpy(plain_heads), atol=1e-5)


def test_self_attention_through_the_fused_projection_matches_reference():
    layer = MultiHeadAttention(num_heads=HEADS)
    x = tensor(BATCH, KEY_LENGTH, D_MODEL)
    out = layer(x, x, key_padding_mask=key_padding(), use_causal_mask=True)
    mask = key_padding()[:, None, :] & reference.causal(KEY_LENGTH)
    ref_out, _ = reference.multi_head_attention(layer, numpy(x), numpy(x), mask)
    np.testing.assert_allclose(numpy(out), ref_out, atol=1e-5)


def test_fused_path_under_mixed_precision_equals_the_plain_path():
    x = ops.cast(tensor(BATCH, QUERY_LENGTH, D_MODEL), "bfloat16")
    fused, plain = fused_and_plain(
        lambda fused: MultiHeadAttention(num_heads=HEADS, fused=fused, dtype="mixed_bfloat16"), x, x
    )
    fused_out, plain_out = fused(x, x), plain(x, x)
    assert keras.backend.standardize_dtype(fused_out.dtype) == "bfloat16"
    for fused_heads, plain_heads in zip(fused.project(x, x, x), plain.project(x, x, x)):
        assert keras.backend.standardize_dtype(fused_heads.dtype) == "bfloat16"
        np.testing.assert_allclose(
            numpy(ops.cast(fused_heads, "float32")), numpy(ops.cast(plain_heads, "float32")), atol=0.05
        )
    np.testing.assert_allclose(
        numpy(ops.cast(fused_out, "float32")), numpy(ops.cast(plain_out, "float32")), atol=0.05
    )
