import math

import numpy as np
import pytest
import reference
from conftest import layer_model, numpy, random_tokens, round_trip
from gradients import fused_and_plain, variable_gradients
from keras import ops

from kerasformer import Encoder, EncoderBlock


def random(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


@pytest.mark.parametrize("norm_first,fused", [(False, True), (True, True), (False, False), (True, False)])
def test_encoder_block_matches_reference(norm_first, fused):
    block = EncoderBlock(num_heads=4, d_ff=32, norm_first=norm_first, fused=fused)
    x = random(2, 6, 16)
    padding = np.array([[1] * 6, [1] * 3 + [0] * 3], dtype=bool)
    out = numpy(block(x, padding_mask=padding))
    np.testing.assert_allclose(out, reference.encoder_block(x, block, padding), atol=1e-4)


def test_encoder_is_embedding_then_n_blocks():
    encoder = Encoder(vocab_size=30, num_layers=3, d_model=16, num_heads=4, d_ff=32, max_length=12)
    tokens = random_tokens(np.random.default_rng(0), 2, 6, 30, pad_from=[6, 4])
    out = numpy(encoder(tokens))
    assert out.shape == (2, 6, 16) and len(encoder.blocks) == 3
    x = encoder.embedding.embeddings.numpy()[tokens] * math.sqrt(16) + reference.positional_encoding(6, 16)
    for block in encoder.blocks:
        x = reference.encoder_block(x, block, tokens != 0)
    np.testing.assert_allclose(out, x, atol=1e-4)


def test_fused_encoder_equals_the_plain_encoder_forward_and_gradients():
    tokens = random_tokens(np.random.default_rng(0), 2, 6, 30, pad_from=[6, 4])

    def make(fused):
        return Encoder(vocab_size=30, num_layers=2, d_model=16, num_heads=4, d_ff=32, max_length=12, fused=fused)

    fused, plain = fused_and_plain(make, tokens)
    np.testing.assert_allclose(numpy(fused(tokens)), numpy(plain(tokens)), atol=1e-5)
    weights = ops.convert_to_tensor(random(2, 6, 16, seed=1))
    fused_gradients = variable_gradients(fused.trainable_variables, lambda: ops.sum(fused(tokens) * weights))
    plain_gradients = variable_gradients(plain.trainable_variables, lambda: ops.sum(plain(tokens) * weights))
    for variable, fused_gradient, plain_gradient in zip(plain.trainable_variables, fused_gradients, plain_gradients):
        np.testing.assert_allclose(fused_gradient, plain_gradient, atol=1e-4, err_msg=variable.path)


def test_trailing_source_padding_does_not_change_real_positions():
    encoder = Encoder(vocab_size=30, num_layers=2, d_model=16, num_heads=4, d_ff=32, max_length=12)
    tokens = random_tokens(np.random.default_rng(0), 2, 5, 30, pad_from=[5, 3])
    padded = np.pad(tokens, ((0, 0), (0, 4)))
    np.testing.assert_allclose(numpy(encoder(padded))[0, :5], numpy(encoder(tokens))[0], atol=1e-5)
    np.testing.assert_allclose(numpy(encoder(padded))[1, :3], numpy(encoder(tokens))[1, :3], atol=1e-5)


@pytest.mark.parametrize("norm_first,fused", [(False, True), (True, True), (False, False)])
def test_round_trip(tmp_path, norm_first, fused):
    encoder = Encoder(
        vocab_size=30, num_layers=2, d_model=16, num_heads=4, d_ff=32, dropout=0.1,
        max_length=12, positional="learned", norm_first=norm_first, fused=fused,
        attention_dropout=0.2, activation_dropout=0.3,
    )
    assert Encoder.from_config(encoder.get_config()).get_config() == encoder.get_config()
    block = EncoderBlock(num_heads=4, d_ff=32, dropout=0.1, norm_first=norm_first, fused=fused,
                         attention_dropout=0.2, activation_dropout=0.3)
    assert EncoderBlock.from_config(block.get_config()).get_config() == block.get_config()
    rates = {"dropout": 0.1, "attention_dropout": 0.2, "activation_dropout": 0.3}
    assert {key: encoder.get_config()[key] for key in rates} == rates
    assert {key: block.get_config()[key] for key in rates} == rates
    model = layer_model(encoder, ((None,), "int32"))
    tokens = random_tokens(np.random.default_rng(0), 2, 6, 30, pad_from=[6, 2])
    before, after, _ = round_trip(model, tmp_path, tokens)
    np.testing.assert_array_equal(before, after)


def test_dropout_sits_where_the_paper_puts_it_and_elsewhere_only_when_asked():
    """P_drop drops sublayer outputs and embedding sums (section 5.4), not the
    attention weights: in training, each row of weights still sums to 1 unless
    `attention_dropout` is set; the FFN's inner activation has its own rate too."""
    tokens = random_tokens(np.random.default_rng(0), 2, 6, 30, pad_from=[6, 4])

    def weights_row_sums(**rates):
        encoder = Encoder(vocab_size=30, num_layers=1, d_model=16, num_heads=4, d_ff=32, max_length=12, **rates)
        _, (weights,) = encoder(tokens, return_attention_scores=True, training=True)
        block = encoder.blocks[0]
        used = (block.self_attention_add_norm.dropout, block.feed_forward_add_norm.dropout,
                block.self_attention.dropout, block.feed_forward.dropout, encoder.embedding.dropout)
        return numpy(weights).sum(axis=-1), used

    sums, used = weights_row_sums(dropout=0.5)
    np.testing.assert_allclose(sums, 1.0, atol=1e-5)
    assert used == (0.5, 0.5, 0.0, 0.0, 0.5)
    sums, used = weights_row_sums(dropout=0.0, attention_dropout=0.5, activation_dropout=0.25)
    assert np.abs(sums - 1.0).max() > 0.1  # weights dropped and the rest scaled by 2
    assert used == (0.0, 0.0, 0.5, 0.25, 0.0)
