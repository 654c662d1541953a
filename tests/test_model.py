import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import numpy, random_tokens, round_trip

from kerasformer import BACKENDS, build_seq2seq, preset

SOURCE_VOCAB, TARGET_VOCAB = 40, 50


def tiny_model(**overrides):
    config = preset("tiny", source_vocab_size=SOURCE_VOCAB, target_vocab_size=TARGET_VOCAB, **overrides)
    return build_seq2seq(config)


def batch(seed=0, source_pad_from=(7, 4), target_pad_from=(6, 3)):
    rng = np.random.default_rng(seed)
    return {
        "encoder_tokens": random_tokens(rng, 2, 7, SOURCE_VOCAB, source_pad_from),
        "decoder_tokens": random_tokens(rng, 2, 6, TARGET_VOCAB, target_pad_from),
    }


def test_logits_shape_and_named_inputs():
    model = tiny_model()
    assert sorted(tensor.name for tensor in model.inputs) == ["decoder_tokens", "encoder_tokens"]
    logits = numpy(model(batch()))
    assert logits.shape == (2, 6, TARGET_VOCAB) and logits.dtype == np.float32


@pytest.mark.parametrize("source_length,target_length", [(1, 1), (32, 32), (3, 17)])
def test_any_length_up_to_the_configured_maximum(source_length, target_length):
    model = tiny_model()
    tokens = {
        "encoder_tokens": np.ones((1, source_length), "int32"),
        "decoder_tokens": np.ones((1, target_length), "int32"),
    }
    assert numpy(model(tokens)).shape == (1, target_length, TARGET_VOCAB)


@pytest.mark.parametrize("norm_first", [False, True])
def test_causality_future_decoder_tokens_never_change_earlier_logits(norm_first):
    model = tiny_model(norm_first=norm_first)
    tokens = batch(target_pad_from=(6, 6))
    logits = numpy(model(tokens))
    rng = np.random.default_rng(1)
    for t in range(5):
        changed = {k: v.copy() for k, v in tokens.items()}
        changed["decoder_tokens"][:, t + 1 :] = rng.integers(1, TARGET_VOCAB, size=(2, 5 - t))
        changed_logits = numpy(model(changed))
        np.testing.assert_allclose(changed_logits[:, : t + 1], logits[:, : t + 1], atol=1e-5)
        assert not np.allclose(changed_logits[:, t + 1 :], logits[:, t + 1 :], atol=1e-3)


@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
def test_trailing_padding_does_not_change_logits_at_real_positions(positional):
    model = tiny_model(positional=positional)
    tokens = batch()
    logits = numpy(model(tokens))
    padded = {k: np.pad(v, ((0, 0), (0, 5))) for k, v in tokens.items()}
    padded_logits = numpy(model(padded))
    for row, real in enumerate((6, 3)):
        np.testing.assert_allclose(padded_logits[row, :real], logits[row, :real], atol=1e-5)


def test_source_padding_tokens_are_ignored_whatever_their_embedding():
    model = tiny_model()
    tokens = batch(source_pad_from=(4, 4), target_pad_from=(6, 6))
    logits = numpy(model(tokens))
    shorter = dict(tokens, encoder_tokens=tokens["encoder_tokens"][:, :4])
    np.testing.assert_allclose(numpy(model(shorter)), logits, atol=1e-5)


def test_tied_embeddings_share_the_target_embedding_with_the_output_projection():
    tied, untied = tiny_model(tie_embeddings=True), tiny_model(tie_embeddings=False)
    assert untied.count_params() - tied.count_params() == 32 * TARGET_VOCAB + TARGET_VOCAB
    decoder = tied.get_layer("decoder")
    assert decoder.output_projection is None


@pytest.mark.parametrize("overrides", [{}, {"norm_first": True, "positional": "learned", "tie_embeddings": False}])
def test_keras_file_round_trip_gives_identical_logits(tmp_path, overrides):
    model = tiny_model(dropout=0.1, **overrides)
    before, after, loaded = round_trip(model, tmp_path, batch())
    np.testing.assert_array_equal(before, after)
    assert loaded.get_layer("decoder").get_config() == model.get_layer("decoder").get_config()


def test_a_deep_encoder_with_a_shallow_decoder_round_trips(tmp_path):
    model = tiny_model(num_layers=3, num_decoder_layers=1)
    assert len(model.get_layer("encoder").blocks) == 3
    assert len(model.get_layer("decoder").blocks) == 1
    before, after, loaded = round_trip(model, tmp_path, batch())
    np.testing.assert_array_equal(before, after)
    assert loaded.transformer_config.decoder_layers == 1


def test_each_dropout_rate_reaches_the_layers_it_names():
    model = tiny_model(dropout=0.1, attention_dropout=0.2, activation_dropout=0.3)
    for stack in ("encoder", "decoder"):
        layer = model.get_layer(stack)
        assert (layer.embedding.dropout, layer.attention_dropout, layer.activation_dropout) == (0.1, 0.2, 0.3)
    block = model.get_layer("decoder").blocks[-1]
    assert (block.self_attention.dropout, block.cross_attention.dropout, block.feed_forward.dropout) == (0.2, 0.2, 0.3)
    assert {block.self_attention_add_norm.dropout, block.cross_attention_add_norm.dropout,
            block.feed_forward_add_norm.dropout} == {0.1}


def test_config_round_trip():
    model = tiny_model()
    assert model.get_config()["config"] == model.transformer_config.to_dict()
    clone = type(model).from_config(model.get_config())
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(numpy(clone(batch())), numpy(model(batch())))


def test_shared_embeddings_are_one_variable_for_encoder_decoder_and_output(tmp_path):
    """share_embeddings + tie_embeddings: the paper's section 3.4, one matrix E for both
    embedding layers and the pre-softmax projection; it stays one after a .keras round trip."""
    shared = build_seq2seq(preset("tiny", source_vocab_size=TARGET_VOCAB, target_vocab_size=TARGET_VOCAB,
                                  share_embeddings=True))
    apart = build_seq2seq(shared.transformer_config.replace(share_embeddings=False))
    assert apart.count_params() - shared.count_params() == TARGET_VOCAB * 32
    assert len(apart.trainable_variables) - len(shared.trainable_variables) == 1
    tokens = batch()
    tokens["encoder_tokens"] = np.where(tokens["encoder_tokens"] > 0, tokens["encoder_tokens"] + 7, 0)
    before, after, loaded = round_trip(shared, tmp_path, tokens)
    np.testing.assert_array_equal(before, after)
    for model in (shared, loaded):
        encoder, decoder = model.get_layer("encoder"), model.get_layer("decoder")
        matrix = encoder.embedding.embeddings
        assert matrix is decoder.embedding.embeddings and decoder.output_projection is None
        assert sum(variable is matrix for variable in model.trainable_variables) == 1
    # A source token's embedding is the row of E that the output projection scores it with.
    E = numpy(shared.get_layer("encoder").embedding.embeddings)
    hidden = np.random.default_rng(0).normal(size=(1, 1, 32)).astype("float32")
    np.testing.assert_allclose(numpy(shared.get_layer("decoder").logits(hidden))[0, 0], hidden[0, 0] @ E.T, rtol=1e-5, atol=1e-5)


def test_a_model_built_under_a_global_policy_keeps_it_when_loaded(tmp_path):
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = tiny_model()
    finally:
        keras.config.set_dtype_policy("float32")
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert model.get_config()["layer_dtype"] == "mixed_bfloat16"
    assert loaded.get_layer("encoder").compute_dtype == "bfloat16"
    assert numpy(loaded(batch())).dtype == np.float32  # the logits stay float32


def test_shared_embeddings_need_one_vocabulary():
    with pytest.raises(ValueError, match="share_embeddings needs one vocabulary: source_vocab_size=40 != target_vocab_size=50"):
        tiny_model(share_embeddings=True)


LOAD_AND_COMPARE = """
import json, sys
import numpy as np, keras
import kerasformer  # registers the layers
model = keras.saving.load_model(sys.argv[1])
data = np.load(sys.argv[2])
logits = keras.ops.convert_to_numpy(model({"encoder_tokens": data["encoder_tokens"], "decoder_tokens": data["decoder_tokens"]}))
print(json.dumps({"backend": keras.backend.backend(), "max_abs_diff": float(np.abs(logits - data["logits"]).max())}))
"""


def test_keras_file_written_under_this_backend_loads_under_the_others(tmp_path):
    model = tiny_model()
    tokens = batch()
    model_path, data_path = str(tmp_path / "model.keras"), str(tmp_path / "data.npz")
    model.save(model_path)
    np.savez(data_path, logits=numpy(model(tokens)), **tokens)
    for backend in BACKENDS:
        if backend == keras.backend.backend():
            continue
        result = subprocess.run(
            [sys.executable, "-c", LOAD_AND_COMPARE, model_path, data_path],
            env={**os.environ, "KERAS_BACKEND": backend},
            capture_output=True, text=True, timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert report["backend"] == backend
        assert report["max_abs_diff"] < 1e-4, report


def test_token_id_outside_vocabulary_is_refused_in_eager_calls():
    model = tiny_model()
    tokens = batch()
    tokens["decoder_tokens"][0, 0] = TARGET_VOCAB
    with pytest.raises(ValueError, match=rf"token id {TARGET_VOCAB} is outside \[0, vocab_size={TARGET_VOCAB}\)"):
        model(tokens)


def test_source_longer_than_max_source_length_is_refused():
    model = tiny_model()
    tokens = {"encoder_tokens": np.ones((1, 33), "int32"), "decoder_tokens": np.ones((1, 3), "int32")}
    with pytest.raises(ValueError, match="sequence length 33 exceeds max_length=32"):
        model(tokens)


def test_wrong_input_names_are_refused():
    model = tiny_model()
    tokens = batch()
    with pytest.raises(ValueError, match="encoder_tokens"):
        model({"source": tokens["encoder_tokens"], "decoder_tokens": tokens["decoder_tokens"]})


def test_wrong_input_rank_is_refused():
    model = tiny_model()
    tokens = batch()
    with pytest.raises(ValueError, match="incompatible shape"):
        model({"encoder_tokens": tokens["encoder_tokens"][0], "decoder_tokens": tokens["decoder_tokens"]})


def test_frozen_layers_stay_frozen_through_a_keras_file(tmp_path):
    """Fine-tuning freezes parts of a model; a .keras round trip keeps exactly those frozen,
    including a child made trainable again under a frozen parent."""
    model = tiny_model()
    model.get_layer("encoder").trainable = False
    model.get_layer("encoder").blocks[-1].feed_forward.trainable = True
    model.get_layer("decoder").blocks[0].cross_attention.trainable = False
    assert 0 < len(model.trainable_variables) < len(model.variables)

    def flags(m):
        return {path: layer.trainable for path, layer in m._layers_by_path().items()}

    _, _, loaded = round_trip(model, tmp_path, batch())
    assert flags(loaded) == flags(model)
    assert [v.path for v in loaded.trainable_variables] == [v.path for v in model.trainable_variables]
    assert not loaded.get_layer("encoder").blocks[0].self_attention.trainable
    assert loaded.get_layer("encoder").blocks[-1].feed_forward.trainable


def test_a_fully_trainable_model_records_no_frozen_layers_and_unknown_paths_are_refused():
    model = tiny_model()
    assert model.get_config()["frozen_layers"] == []
    with pytest.raises(ValueError, match="nowhere"):
        type(model).from_config({**model.get_config(), "frozen_layers": ["nowhere"]})
