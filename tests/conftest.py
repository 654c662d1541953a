"""Shared test helpers. The backend is chosen by KERAS_BACKEND (tensorflow by default)."""

import os

import keras
import numpy as np
import pytest
from keras import ops


def numpy(x):
    return ops.convert_to_numpy(x)


@pytest.fixture(autouse=True)
def seeded():
    keras.utils.set_random_seed(1234)


def pytest_report_header(config):
    return f"keras backend: {keras.backend.backend()} (keras {keras.__version__})"


# Modules that train or serve real models, longest first (measured with --durations). With
# `pytest -n 2 --dist loadfile` each module runs whole on one worker, in collection order: one
# of these collected last (alphabetical order puts test_resume and test_train there) keeps
# one worker busy for minutes after the other has finished. Started first, they overlap.
LONG_MODULES = ("test_resume.py", "test_train.py", "test_export.py", "test_conformance_http.py",
                "test_distribution.py", "test_cli.py", "test_export_faults.py", "test_decoding.py")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = os.path.basename(str(item.fspath))
        return LONG_MODULES.index(name) if name in LONG_MODULES else len(LONG_MODULES)

    items.sort(key=rank)  # stable: the order inside each module, and of the other modules, stays


def round_trip(model, tmp_path, inputs):
    """Saves `model` to .keras, loads it back, and returns (original, loaded) outputs."""
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    return numpy(model(inputs)), numpy(loaded(inputs)), loaded


def layer_model(layer, *input_specs):
    """Wraps one layer in a functional model so it can go through a .keras file."""
    inputs = [keras.Input(shape=shape, dtype=dtype) for shape, dtype in input_specs]
    outputs = layer(*inputs)
    return keras.Model(inputs[0] if len(inputs) == 1 else inputs, outputs)


def random_tokens(rng, batch, length, vocab_size, pad_from=None):
    """Token ids in [1, vocab_size); rows padded with 0 from `pad_from[b]` on."""
    tokens = rng.integers(1, vocab_size, size=(batch, length)).astype("int32")
    if pad_from is not None:
        for row, start in enumerate(pad_from):
            tokens[row, start:] = 0
    return tokens


def teacher_forced_attention(model, encoder_tokens, tokens, start_id):
    """The attention weights of one full pass of `model` over [START] + each row's output (the
    tokens a decoding produced, [END] included, 0-padded), from the layers' own
    `return_attention_scores`: a dict of "encoder_self_attention", "decoder_self_attention",
    "cross_attention", each NumPy `(batch, layers, heads, rows, columns)`."""
    tokens = np.asarray(tokens, "int32")
    decoder_tokens = np.concatenate([np.full((len(tokens), 1), start_id, "int32"), tokens[:, :-1]], axis=1)
    decoder_tokens[tokens == 0] = 0  # a row's padding after its last token
    encoder_output, encoder_weights = model.get_layer("encoder")(encoder_tokens, return_attention_scores=True)
    _, decoder_weights = model.get_layer("decoder")(
        decoder_tokens, encoder_output, encoder_padding_mask=encoder_tokens != 0, return_attention_scores=True
    )
    stack = lambda weights: np.stack([numpy(w) for w in weights], axis=1)  # noqa: E731
    return {
        "encoder_self_attention": stack(encoder_weights),
        "decoder_self_attention": stack(decoder_weights["self_attention"]),
        "cross_attention": stack(decoder_weights["cross_attention"]),
    }
