import math

import numpy as np
import pytest
import reference
from conftest import layer_model, numpy, round_trip

from kerasformer import PositionalEmbedding, positional_encoding


@pytest.mark.parametrize("start", [0, 7])
def test_positional_encoding_matches_the_paper(start):
    np.testing.assert_allclose(
        numpy(positional_encoding(11, 16, start)), reference.positional_encoding(11, 16, start), atol=1e-5
    )


def test_embedding_is_scaled_by_sqrt_d_model_plus_positions():
    layer = PositionalEmbedding(vocab_size=20, d_model=8, max_length=10)
    tokens = np.array([[3, 4, 5, 0], [1, 2, 0, 0]], dtype="int32")
    out = numpy(layer(tokens))
    table = layer.embeddings.numpy()
    expected = table[tokens] * math.sqrt(8) + reference.positional_encoding(4, 8)
    assert out.shape == (2, 4, 8)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_start_index_shifts_positions():
    layer = PositionalEmbedding(vocab_size=20, d_model=8, max_length=10)
    tokens = np.array([[3, 4, 5, 6]], dtype="int32")
    whole = numpy(layer(tokens))
    np.testing.assert_allclose(numpy(layer(tokens[:, 2:], start_index=2)), whole[:, 2:], atol=1e-6)


def test_learned_positions_add_a_position_table():
    layer = PositionalEmbedding(vocab_size=20, d_model=8, max_length=10, positional="learned")
    tokens = np.array([[3, 4, 5]], dtype="int32")
    out = numpy(layer(tokens))
    expected = layer.embeddings.numpy()[tokens] * math.sqrt(8) + layer.position_embedding.embeddings.numpy()[:3]
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_padding_mask_from_token_zero():
    layer = PositionalEmbedding(vocab_size=20, d_model=8, max_length=10)
    mask = numpy(layer.compute_mask(np.array([[3, 0, 0]], dtype="int32")))
    np.testing.assert_array_equal(mask, [[True, False, False]])


@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
def test_config_and_keras_file_round_trip(tmp_path, positional):
    layer = PositionalEmbedding(vocab_size=20, d_model=8, max_length=10, positional=positional, dropout=0.1)
    clone = PositionalEmbedding.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    model = layer_model(layer, ((None,), "int32"))
    before, after, _ = round_trip(model, tmp_path, np.array([[1, 2, 3, 0]], dtype="int32"))
    np.testing.assert_array_equal(before, after)


def test_token_id_out_of_vocabulary_is_refused():
    layer = PositionalEmbedding(vocab_size=20, d_model=8, max_length=10)
    with pytest.raises(ValueError, match=r"token id 20 is outside \[0, vocab_size=20\)"):
        layer(np.array([[1, 20]], dtype="int32"))
    with pytest.raises(ValueError, match=r"token id -1 is outside"):
        layer(np.array([[-1, 2]], dtype="int32"))


def test_sequence_longer_than_max_length_is_refused():
    layer = PositionalEmbedding(vocab_size=20, d_model=8, max_length=4)
    with pytest.raises(ValueError, match="sequence length 5 exceeds max_length=4"):
        layer(np.ones((1, 5), dtype="int32"))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="positional='rotary'"):
        PositionalEmbedding(vocab_size=20, d_model=8, max_length=4, positional="rotary")
    with pytest.raises(ValueError, match="d_model=7 must be even"):
        PositionalEmbedding(vocab_size=20, d_model=7, max_length=4)


def test_dropout_applies_only_in_training():
    layer = PositionalEmbedding(vocab_size=20, d_model=64, max_length=10, dropout=0.5)
    tokens = np.array([[3, 4, 5]], dtype="int32")
    np.testing.assert_array_equal(numpy(layer(tokens)), numpy(layer(tokens, training=False)))
    assert (numpy(layer(tokens, training=True)) == 0).mean() > 0.2
