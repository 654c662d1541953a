import math

import numpy as np
import pytest
import reference
from conftest import layer_model, numpy, random_tokens, round_trip
from gradients import fused_and_plain, variable_gradients
from keras import ops

from kerasformer import Decoder, DecoderBlock


def random(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


DECODER_PADDING = np.array([[1] * 5, [1] * 2 + [0] * 3], dtype=bool)
ENCODER_PADDING = np.array([[1] * 7, [1] * 4 + [0] * 3], dtype=bool)


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_block_matches_reference(norm_first):
    block = DecoderBlock(num_heads=4, d_ff=32, norm_first=norm_first)
    x, encoder_output = random(2, 5, 16), random(2, 7, 16, seed=1)
    out = numpy(block(x, encoder_output, DECODER_PADDING, ENCODER_PADDING))
    expected = reference.decoder_block(x, encoder_output, block, DECODER_PADDING, ENCODER_PADDING)
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_decoder_block_returns_its_attention_weights_with_padding_and_the_future_at_zero():
    block = DecoderBlock(num_heads=4, d_ff=32)
    _, weights = block(
        random(2, 5, 16), random(2, 7, 16, seed=1), encoder_padding_mask=ENCODER_PADDING, return_attention_scores=True
    )
    cross, self_attention = numpy(weights["cross_attention"]), numpy(weights["self_attention"])
    assert cross.shape == (2, 4, 5, 7)
    assert np.all(cross[1, ..., 4:] == 0)
    assert self_attention.shape == (2, 4, 5, 5)
    assert np.all(np.triu(np.ones((5, 5)), k=1)[None, None] * self_attention == 0)  # causal
    np.testing.assert_allclose(self_attention.sum(-1), 1, rtol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_decoder_block_incremental_with_caches_equals_full_pass(fused):
    block = DecoderBlock(num_heads=4, d_ff=32, fused=fused)
    x, encoder_output = random(2, 5, 16), random(2, 7, 16, seed=1)
    full = numpy(block(x, encoder_output, encoder_padding_mask=ENCODER_PADDING))
    cross_cache = block.cross_attention.project(key=encoder_output, value=encoder_output)[1:]
    self_cache = (np.zeros((2, 4, 8, 4), "float32"), np.zeros((2, 4, 8, 4), "float32"))
    steps = []
    for t in range(5):
        out, self_cache = block(
            x[:, t : t + 1], None,
            encoder_padding_mask=ENCODER_PADDING,
            self_attention_cache=self_cache, cache_update_index=t, cross_attention_cache=cross_cache,
        )
        steps.append(numpy(out))
    np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=1e-5)


@pytest.mark.parametrize("tie_embeddings", [True, False])
def test_decoder_is_embedding_blocks_and_final_linear(tie_embeddings):
    decoder = Decoder(
        vocab_size=30, num_layers=2, d_model=16, num_heads=4, d_ff=32, max_length=12, tie_embeddings=tie_embeddings
    )
    tokens = random_tokens(np.random.default_rng(0), 2, 5, 30, pad_from=[5, 2])
    encoder_output = random(2, 7, 16, seed=1)
    logits = numpy(decoder(tokens, encoder_output, ENCODER_PADDING))
    assert logits.shape == (2, 5, 30) and logits.dtype == np.float32
    table = decoder.embedding.embeddings.numpy()
    x = table[tokens] * math.sqrt(16) + reference.positional_encoding(5, 16)
    for block in decoder.blocks:
        x = reference.decoder_block(x, encoder_output, block, tokens != 0, ENCODER_PADDING)
    expected = x @ table.T if tie_embeddings else reference.linear(x, decoder.output_projection)
    np.testing.assert_allclose(logits, expected, atol=1e-4)


@pytest.mark.parametrize("norm_first,fused", [(False, True), (True, True), (False, False)])
def test_decode_steps_with_caches_give_the_logits_of_the_full_pass(norm_first, fused):
    decoder = Decoder(
        vocab_size=30, num_layers=2, d_model=16, num_heads=4, d_ff=32, max_length=12, norm_first=norm_first, fused=fused
    )
    tokens = random_tokens(np.random.default_rng(0), 2, 5, 30)
    encoder_output = random(2, 7, 16, seed=1)
    full = numpy(decoder(tokens, encoder_output, ENCODER_PADDING))
    cross_cache = decoder.compute_cross_attention_cache(encoder_output)
    cache = decoder.empty_self_attention_cache(2, 12)
    # One (key, value) pair per block, batch first (beam search gathers rows of every leaf).
    assert [[tuple(part.shape) for part in pair] for pair in cache] == [[(2, 4, 12, 4)] * 2] * 2
    steps = []
    for t in range(5):
        logits, cache = decoder.decode_step(tokens[:, t : t + 1], t, cache, cross_cache, ENCODER_PADDING)
        steps.append(numpy(logits))
    np.testing.assert_allclose(np.stack(steps, 1), full, atol=1e-4)


@pytest.mark.parametrize("norm_first,tie_embeddings", [(False, True), (True, False)])
def test_fused_decoder_equals_the_plain_decoder_forward_and_gradients(norm_first, tie_embeddings):
    """The whole stack: fused projections, 2-D views of attention, feed-forward
    and logits, and the gradients that flow back through every block."""
    tokens = random_tokens(np.random.default_rng(0), 2, 5, 30, pad_from=[5, 2])
    encoder_output = ops.convert_to_tensor(random(2, 7, 16, seed=1))

    def make(fused):
        return Decoder(
            vocab_size=30, num_layers=2, d_model=16, num_heads=4, d_ff=32, max_length=12,
            norm_first=norm_first, tie_embeddings=tie_embeddings, fused=fused,
        )

    fused, plain = fused_and_plain(make, tokens, encoder_output, ENCODER_PADDING)
    np.testing.assert_allclose(
        numpy(fused(tokens, encoder_output, ENCODER_PADDING)), numpy(plain(tokens, encoder_output, ENCODER_PADDING)),
        atol=1e-4,
    )
    weights = ops.convert_to_tensor(random(2, 5, 30, seed=2))

    def loss(decoder):
        return lambda: ops.sum(decoder(tokens, encoder_output, ENCODER_PADDING) * weights)

    fused_gradients = variable_gradients(fused.trainable_variables, loss(fused))
    plain_gradients = variable_gradients(plain.trainable_variables, loss(plain))
    for variable, fused_gradient, plain_gradient in zip(plain.trainable_variables, fused_gradients, plain_gradients):
        np.testing.assert_allclose(fused_gradient, plain_gradient, atol=1e-4, err_msg=variable.path)


def test_tied_decoder_has_no_separate_projection_weights():
    def count(tie):
        decoder = Decoder(vocab_size=30, num_layers=1, d_model=16, num_heads=4, d_ff=32, tie_embeddings=tie)
        decoder(np.ones((1, 3), "int32"), random(1, 4, 16))
        return decoder.count_params()

    assert count(False) - count(True) == 16 * 30 + 30


@pytest.mark.parametrize("norm_first,fused", [(False, True), (True, True), (False, False)])
def test_round_trip(tmp_path, norm_first, fused):
    decoder = Decoder(
        vocab_size=30, num_layers=2, d_model=16, num_heads=4, d_ff=32, dropout=0.1,
        max_length=12, norm_first=norm_first, tie_embeddings=False, fused=fused,
        attention_dropout=0.2, activation_dropout=0.3,
    )
    assert Decoder.from_config(decoder.get_config()).get_config() == decoder.get_config()
    block = DecoderBlock(num_heads=4, d_ff=32, dropout=0.1, norm_first=norm_first, fused=fused,
                         attention_dropout=0.2, activation_dropout=0.3)
    assert DecoderBlock.from_config(block.get_config()).get_config() == block.get_config()
    rates = {"dropout": 0.1, "attention_dropout": 0.2, "activation_dropout": 0.3}
    assert {key: decoder.get_config()[key] for key in rates} == rates
    assert {key: block.get_config()[key] for key in rates} == rates
    model = layer_model(decoder, ((None,), "int32"), ((None, 16), "float32"))
    tokens = random_tokens(np.random.default_rng(0), 2, 5, 30, pad_from=[5, 2])
    before, after, _ = round_trip(model, tmp_path, [tokens, random(2, 7, 16, seed=1)])
    np.testing.assert_array_equal(before, after)
