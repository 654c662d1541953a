import keras
import numpy as np
import pytest
from conftest import layer_model, numpy, round_trip

from kerasformer import PairedDropout, TransformerConfig, build_seq2seq
from kerasformer.dropout import LEVELS, PAIRED_BACKENDS, dropout_layer, drop_threshold, paired_keep_mask, pairing_axis


def reference_keep_mask(uniform, rate, axis=-1):
    """NumPy: the 23-bit integer m = 2^23 u; its top 11 bits and its next 11 bits, each kept if >= K."""
    m = np.round(np.asarray(uniform, "float64") * 2**23).astype(np.int64)
    k = max(1, round(2048 * rate))
    a, b = m >> 12, (m >> 1) & 2047
    return np.concatenate([a >= k, b >= k], axis=axis)


def test_the_keep_mask_matches_the_reference_bit_by_bit():
    rng = np.random.default_rng(0)
    # every uniform a backend can draw is m / 2^23; the edges of each decision included
    m = np.concatenate([rng.integers(0, 2**23, 4000), [0, 1, 2**23 - 1, 205 << 12, (205 << 12) - 1, 205 << 1,
                                                        (205 << 1) - 1, (2047 << 12) | (2047 << 1)]])
    uniform = (m / 2**23).astype("float32").reshape(-1, 4)
    for rate in (0.1, 0.3, 0.0004, 0.5):
        np.testing.assert_array_equal(numpy(paired_keep_mask(uniform, rate)), reference_keep_mask(uniform, rate))
    # the halves along another axis: the same decisions, laid out along it
    uniform = uniform.reshape(-1, 2, 2)
    np.testing.assert_array_equal(numpy(paired_keep_mask(uniform, 0.1, axis=1)), reference_keep_mask(uniform, 0.1, 1))


def test_the_rate_is_rounded_to_a_multiple_of_one_2048th():
    assert drop_threshold(0.1) == 205 and drop_threshold(0.0) == 0 and drop_threshold(1e-5) == 1
    assert LEVELS == 2048


def test_identity_at_inference():
    layer = PairedDropout(0.5)
    x = np.random.default_rng(1).normal(size=(3, 5, 8)).astype("float32")
    np.testing.assert_array_equal(numpy(layer(x)), x)
    np.testing.assert_array_equal(numpy(layer(x, training=False)), x)


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_training_drops_the_rate_and_keeps_the_expected_value(rate):
    layer = PairedDropout(rate, seed=3)
    x = np.random.default_rng(2).uniform(1, 2, size=(64, 32, 128)).astype("float32")  # 262,144 elements
    out = numpy(layer(x, training=True))
    kept = out != 0
    # the rate rounded to K / 2048 where the mask is paired; under torch keras's own dropout
    p = drop_threshold(rate) / LEVELS if keras.backend.backend() in PAIRED_BACKENDS else rate
    # dropped share within 5 standard deviations of p
    assert abs((~kept).mean() - p) < 5 * np.sqrt(p * (1 - p) / x.size)
    np.testing.assert_allclose(out[kept], x[kept] / (1 - p), rtol=1e-6)
    # unbiased: E[output] = input (the scale uses the rounded rate)
    assert abs(out.sum() / x.sum() - 1) < 5 * np.sqrt(p / (1 - p) / x.size) * 2
    # the two halves come from one uniform each: their decisions are still independent
    half = x.shape[-1] // 2
    first, second = kept[..., :half].ravel(), kept[..., half:].ravel()
    assert abs(np.corrcoef(first, second)[0, 1]) < 0.02
    # a fresh mask on each call
    assert (numpy(layer(x, training=True)) != out).any()


def test_the_mask_pairs_along_the_last_axis_of_even_static_size():
    assert pairing_axis((None, None, 128)) == 2
    assert pairing_axis((None, 4, None, None)) == 1  # attention weights, lengths unknown to the graph
    assert pairing_axis((4, 7, 33)) == 0
    assert pairing_axis((3, 7, 33)) is None and pairing_axis((None, None)) is None and pairing_axis(()) is None


def test_attention_weights_of_unknown_length_get_the_paired_mask():
    """Under TensorFlow the trainer's graph serves every bucket with unknown batch and lengths;
    the heads axis still pairs (elsewhere the same weights have static shapes, and an odd key
    length still leaves the heads axis). Seen in the scale: 2048 / (2048 - K), not 1 / (1 - rate)."""
    rate = 0.3
    layer = PairedDropout(rate, seed=5)
    x = np.ones((16, 4, 32, 33), "float32")  # 33 keys: the last axis cannot pair
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        call = tf.function(lambda inputs: layer(inputs, training=True),
                           input_signature=[tf.TensorSpec((None, 4, None, None), tf.float32)])
        out = numpy(call(x))
    else:
        out = numpy(layer(x, training=True))
    p = drop_threshold(rate) / LEVELS if keras.backend.backend() in PAIRED_BACKENDS else rate
    kept = out != 0
    np.testing.assert_allclose(out[kept], 1 / (1 - p), rtol=1e-6)
    assert abs((~kept).mean() - p) < 5 * np.sqrt(p * (1 - p) / x.size)
    # the two halves along the heads axis come from one uniform each: still independent
    assert abs(np.corrcoef(kept[:, :2].ravel(), kept[:, 2:].ravel())[0, 1]) < 0.03


@pytest.mark.parametrize("shape", [(3, 7, 33), (5, 99)])
def test_an_input_with_no_even_static_axis_falls_back_to_keras_dropout(shape):
    layer = PairedDropout(0.3, seed=4)
    x = np.ones(shape, "float32")
    out = numpy(layer(x, training=True))
    assert out.shape == shape
    np.testing.assert_allclose(out[out != 0], 1 / 0.7, rtol=1e-6)  # keras.layers.Dropout's exact scale


def test_the_switch_chooses_the_dropout_and_both_have_the_same_state():
    paired, plain = dropout_layer(0.1, fused=True), dropout_layer(0.1, fused=False)
    assert type(paired) is PairedDropout and type(plain) is keras.layers.Dropout
    assert [v.shape for v in paired.variables] == [v.shape for v in plain.variables]
    assert dropout_layer(0.0, fused=True).variables == []  # no seed state without dropout, as Keras


def test_config_and_keras_file_round_trip(tmp_path):
    layer = PairedDropout(0.2, seed=5)
    assert PairedDropout.from_config(layer.get_config()).get_config() == layer.get_config()
    model = layer_model(layer, ((None, 16), "float32"))
    before, after, loaded = round_trip(model, tmp_path, np.ones((2, 3, 16), "float32"))
    np.testing.assert_array_equal(before, after)
    assert type(loaded.layers[-1]) is PairedDropout


def small_config(fused):
    return TransformerConfig(source_vocab_size=50, target_vocab_size=60, d_model=32, num_heads=4, d_ff=64,
                             num_layers=2, dropout=0.1, attention_dropout=0.1, activation_dropout=0.1,
                             max_source_length=16, max_target_length=16, fused=fused)


def test_a_model_saved_with_plain_dropout_loads_into_the_fused_model(tmp_path):
    """Fused dropout changes no variable: checkpoints of either path load into the other."""
    plain, fused = build_seq2seq(small_config(False)), build_seq2seq(small_config(True))
    path = str(tmp_path / "plain.weights.h5")
    plain.save_weights(path)
    fused.load_weights(path)
    for a, b in zip(plain.weights, fused.weights):
        np.testing.assert_array_equal(numpy(a), numpy(b))
    residual = fused.get_layer("decoder").blocks[0].feed_forward_add_norm.residual_dropout
    assert type(residual) is PairedDropout


def test_a_fused_model_with_dropout_trains_under_fit():
    model = build_seq2seq(small_config(True).replace(num_layers=1))
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(6)
    encoder_tokens = rng.integers(1, 50, size=(16, 9)).astype("int32")
    decoder_tokens = rng.integers(1, 60, size=(16, 7)).astype("int32")
    labels = rng.integers(1, 60, size=(16, 7)).astype("int32")
    # batch 5 leaves a last partial batch of 1: the mask follows a batch size the graph did not know
    history = model.fit({"encoder_tokens": encoder_tokens, "decoder_tokens": decoder_tokens}, labels, batch_size=5, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert history.history["loss"][-1] < history.history["loss"][0]
