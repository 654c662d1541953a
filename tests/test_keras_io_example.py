"""The keras.io example's model re-implemented for the benchmarks (tests/keras_io_example.py,
timed by benchmarks/train_throughput.py): the masks its structure relies on hold with N layers,
so the throughput comparison times a working model."""

import keras
import numpy as np
from conftest import numpy, random_tokens
from keras_io_example import build_keras_io_seq2seq

from kerasformer import preset

CONFIG = preset("tiny", source_vocab_size=50, target_vocab_size=60)  # 2 layers of each


def tokens(seed=0):
    rng = np.random.default_rng(seed)
    encoder = random_tokens(rng, 2, 7, 50, pad_from=[7, 4])
    decoder = random_tokens(rng, 2, 6, 60, pad_from=[6, 3])
    return {"encoder_tokens": encoder, "decoder_tokens": decoder}


def test_logits_shape_and_dtype():
    logits = build_keras_io_seq2seq(CONFIG)(tokens())
    assert tuple(logits.shape) == (2, 6, 60)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"


def test_every_decoder_layer_masks_the_source_padding():
    # Keras's MultiHeadAttention clears the Keras mask of the encoder output
    # in the first decoder layer; the second still has to ignore padding.
    model = build_keras_io_seq2seq(CONFIG)
    inputs = tokens()
    longer = dict(inputs, encoder_tokens=np.pad(inputs["encoder_tokens"], [[0, 0], [0, 3]]))
    np.testing.assert_allclose(numpy(model(longer)), numpy(model(inputs)), atol=1e-5)


def test_future_decoder_tokens_never_change_earlier_logits():
    model = build_keras_io_seq2seq(CONFIG)
    inputs = tokens()
    changed = dict(inputs, decoder_tokens=inputs["decoder_tokens"].copy())
    changed["decoder_tokens"][0, 4] = 7
    np.testing.assert_allclose(numpy(model(changed))[0, :4], numpy(model(inputs))[0, :4], atol=1e-5)


def test_published_head_width_multiplies_the_attention_parameters():
    same_size = build_keras_io_seq2seq(CONFIG).count_params()
    published = build_keras_io_seq2seq(CONFIG, key_dim=CONFIG.d_model).count_params()
    # Each of the 2 + 2 * 2 attention layers has 4 d x d kernels; head width d makes them d x h*d.
    d, h = CONFIG.d_model, CONFIG.num_heads
    assert published - same_size == 6 * (4 * d * d * (h - 1) + 3 * d * (h - 1))
