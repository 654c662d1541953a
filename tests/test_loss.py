import os

import keras
import numpy as np
import pytest
from conftest import numpy, random_tokens
from gradients import variable_gradients
from keras import ops

from kerasformer import build_seq2seq, preset
from kerasformer.training.loss import (
    MaskedAccuracy,
    MaskedLabelSmoothedCrossEntropy,
    Perplexity,
    gathered,
    gathered_with_gradient,
    label_logits,
)
from kerasformer.training.schedule import paper_optimizer

VOCAB = 13
START, END = 1, 2  # ids 3..12 are "digits"


def log_softmax(logits):
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def smoothed_cross_entropy(labels, logits, eps):
    """-sum_k q_k log p_k with q = (1 - eps) * one_hot(label) + eps / V, per token."""
    vocab_size = logits.shape[-1]
    q = (1 - eps) * np.eye(vocab_size)[labels] + eps / vocab_size
    return -(q * log_softmax(logits.astype("float64"))).sum(-1)


def token_mean(values, labels, sample_weight=None):
    """sum(value * w) / sum(w) over the whole batch, w = 0 at padding (label 0)."""
    weights = (labels != 0).astype("float64")
    if sample_weight is not None:
        weights = weights * np.reshape(sample_weight, (len(labels), -1))
    return (values * weights).sum() / weights.sum()


def reference_accuracy(labels, logits):
    return token_mean(logits.argmax(-1) == labels, labels)


def reference_perplexity(labels, logits):
    return np.exp(token_mean(smoothed_cross_entropy(labels, logits, 0.0), labels))


def batch(seed=0, pad_from=(7, 3, 5), vocab_size=VOCAB):
    """Labels `(3, 7)` padded from `pad_from`, and float32 logits `(3, 7, vocab_size)`."""
    rng = np.random.default_rng(seed)
    labels = random_tokens(rng, len(pad_from), 7, vocab_size, pad_from)
    logits = (3 * rng.normal(size=labels.shape + (vocab_size,))).astype("float32")
    return labels, logits


def metric_value(metric, labels, logits):
    metric.reset_state()
    metric.update_state(labels, logits)
    return float(numpy(metric.result()))


def test_matches_label_smoothed_cross_entropy_over_real_tokens():
    labels, logits = batch()
    loss = MaskedLabelSmoothedCrossEntropy(label_smoothing=0.1)
    expected = token_mean(smoothed_cross_entropy(labels, logits, 0.1), labels)
    np.testing.assert_allclose(float(numpy(loss(labels, logits))), expected, rtol=1e-5)


def test_mean_over_tokens_not_over_sentences():
    labels, logits = batch(pad_from=(1, 7))  # one real token, then seven
    value = float(numpy(MaskedLabelSmoothedCrossEntropy()(labels, logits)))
    per_token = smoothed_cross_entropy(labels, logits, 0.1)
    sentence_means = [per_token[0, :1].mean(), per_token[1].mean()]
    np.testing.assert_allclose(value, per_token[labels != 0].mean(), rtol=1e-5)
    assert not np.isclose(value, np.mean(sentence_means), rtol=1e-3)


def test_padding_contributes_nothing():
    labels, logits = batch()
    rng = np.random.default_rng(1)
    # Four more padded positions per sentence and one sentence of padding only,
    # with large random logits there, as a model could produce at padding.
    padded_labels = np.zeros((4, 11), "int32")
    padded_labels[:3, :7] = labels
    padded_logits = (100 * rng.normal(size=(4, 11, VOCAB))).astype("float32")
    padded_logits[:3, :7] = logits
    loss = MaskedLabelSmoothedCrossEntropy()
    np.testing.assert_allclose(
        float(numpy(loss(padded_labels, padded_logits))), float(numpy(loss(labels, logits))), rtol=1e-6
    )
    for metric in (MaskedAccuracy(), Perplexity()):
        np.testing.assert_allclose(
            metric_value(metric, padded_labels, padded_logits), metric_value(metric, labels, logits), rtol=1e-6
        )


def test_batch_of_padding_only_has_loss_zero_not_nan():
    labels, logits = np.zeros((2, 4), "int32"), np.ones((2, 4, VOCAB), "float32")
    assert float(numpy(MaskedLabelSmoothedCrossEntropy()(labels, logits))) == 0.0


def test_no_smoothing_is_sparse_categorical_cross_entropy():
    labels, logits = batch()
    ours = float(numpy(MaskedLabelSmoothedCrossEntropy(label_smoothing=0.0)(labels, logits)))
    keras_ignoring_padding = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)
    np.testing.assert_allclose(ours, float(numpy(keras_ignoring_padding(labels, logits))), rtol=1e-5)
    unpadded_labels, unpadded_logits = batch(pad_from=(7, 7, 7))
    np.testing.assert_allclose(
        float(numpy(MaskedLabelSmoothedCrossEntropy(label_smoothing=0.0)(unpadded_labels, unpadded_logits))),
        float(numpy(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(unpadded_labels, unpadded_logits))),
        rtol=1e-5,
    )


def test_smoothing_raises_the_loss_of_a_confident_correct_prediction():
    # A one-hot-like prediction is penalised: the target puts eps / V on every class.
    labels = np.array([[3, 4]], "int32")
    logits = 20 * np.eye(VOCAB, dtype="float32")[labels]
    plain = float(numpy(MaskedLabelSmoothedCrossEntropy(label_smoothing=0.0)(labels, logits)))
    smoothed = float(numpy(MaskedLabelSmoothedCrossEntropy(label_smoothing=0.1)(labels, logits)))
    assert plain < 1e-6 < 1.0 < smoothed
    expected = token_mean(smoothed_cross_entropy(labels, logits, 0.1), labels)
    np.testing.assert_allclose(smoothed, expected, rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_logits_give_a_float32_loss(dtype):
    labels, logits = batch(vocab_size=1000)
    logits = logits * 10  # large enough that a float16 softmax would lose the tail
    half = ops.cast(logits, dtype)
    loss = MaskedLabelSmoothedCrossEntropy()
    value = loss(labels, half)
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    rounded = numpy(ops.cast(half, "float32"))  # the same numbers, widened
    expected = token_mean(smoothed_cross_entropy(labels, rounded, 0.1), labels)
    np.testing.assert_allclose(float(numpy(value)), expected, rtol=1e-5)
    np.testing.assert_allclose(float(numpy(value)), float(numpy(loss(labels, logits))), rtol=2e-2)
    for metric in (MaskedAccuracy(), Perplexity()):
        assert np.isfinite(metric_value(metric, labels, half))


def test_sample_weight_per_sentence_and_per_token():
    labels, logits = batch()
    per_token = smoothed_cross_entropy(labels, logits, 0.1)
    loss = MaskedLabelSmoothedCrossEntropy()
    sentence_weight = np.array([1.0, 3.0, 0.5], "float32")
    np.testing.assert_allclose(
        float(numpy(loss(labels, logits, sample_weight=sentence_weight))),
        token_mean(per_token, labels, sentence_weight[:, None] * np.ones((1, 7))),
        rtol=1e-5,
    )
    token_weight = np.random.default_rng(2).uniform(size=labels.shape).astype("float32")
    np.testing.assert_allclose(
        float(numpy(loss(labels, logits, sample_weight=token_weight))),
        token_mean(per_token, labels, token_weight),
        rtol=1e-5,
    )


def test_gradient_is_softmax_minus_smoothed_target():
    """d loss / d logits = w (softmax(z) - q) / sum(w): the closed form that the logsumexp
    formulation must reproduce, padding included (its rows get no gradient)."""
    labels, logits = batch()
    eps = 0.1
    variable = keras.Variable(logits)
    loss = MaskedLabelSmoothedCrossEntropy(label_smoothing=eps)
    (gradient,) = variable_gradients([variable], lambda: loss(labels, variable))
    softmax = np.exp(log_softmax(logits.astype("float64")))
    q = (1 - eps) * np.eye(VOCAB)[labels] + eps / VOCAB
    weights = (labels != 0).astype("float64")
    np.testing.assert_allclose(gradient, (softmax - q) * weights[..., None] / weights.sum(), atol=1e-6)


@pytest.mark.parametrize("pick", [label_logits, gathered, gathered_with_gradient])
def test_the_label_logit_and_its_gradient_match_numpy(pick):
    """z_label, and its gradient the upstream gradient at the label's position and 0
    elsewhere, padding rows included: the backend's autodiff of the gather, the written-out
    gradient TensorFlow uses, and whichever `label_logits` takes on this backend."""
    labels, logits = batch()
    np.testing.assert_array_equal(numpy(pick(labels, logits)), np.take_along_axis(logits, labels[..., None], -1)[..., 0])
    upstream = np.random.default_rng(3).normal(size=labels.shape).astype("float32")
    variable = keras.Variable(logits)
    weighted = lambda: ops.sum(pick(labels, ops.cast(variable, "float32")) * ops.convert_to_tensor(upstream))
    (gradient,) = variable_gradients([variable], weighted)
    np.testing.assert_array_equal(gradient, np.eye(VOCAB)[labels] * upstream[..., None])


def test_loss_and_metrics_stay_finite_for_huge_logits():
    labels, logits = batch()
    logits = logits * 1e4  # exp(z) overflows float32 unless the max logit is subtracted first
    per_token = smoothed_cross_entropy(labels, logits.astype("float64"), 0.1)
    np.testing.assert_allclose(float(numpy(MaskedLabelSmoothedCrossEntropy(0.1)(labels, logits))),
                               token_mean(per_token, labels), rtol=1e-5)
    assert np.isfinite(metric_value(Perplexity(), labels, logits / 1e3))


def test_masked_accuracy_counts_a_tie_with_the_label_as_correct():
    labels = np.array([[3, 4, 0]])
    logits = np.zeros((1, 3, VOCAB), "float32")
    logits[0, 0, [3, 5]] = 2.0  # the label ties another id for the largest logit: correct
    logits[0, 1, 5] = 2.0  # another id is larger: wrong
    assert metric_value(MaskedAccuracy(), labels, logits) == 0.5


def test_rejects_label_smoothing_outside_zero_to_one():
    with pytest.raises(ValueError, match="label_smoothing=1.0"):
        MaskedLabelSmoothedCrossEntropy(label_smoothing=1.0)


def test_masked_accuracy_matches_numpy():
    labels, logits = batch()
    logits[0, :4] += 50 * np.eye(VOCAB, dtype="float32")[labels[0, :4]]  # some sure hits
    metric = MaskedAccuracy()
    assert metric.name == "masked_accuracy"
    np.testing.assert_allclose(metric_value(metric, labels, logits), reference_accuracy(labels, logits), rtol=1e-6)


def test_perplexity_matches_numpy():
    labels, logits = batch()
    metric = Perplexity()
    assert metric.name == "perplexity"
    np.testing.assert_allclose(metric_value(metric, labels, logits), reference_perplexity(labels, logits), rtol=1e-5)


def test_uniform_prediction_has_perplexity_vocab_size():
    labels, _ = batch()
    np.testing.assert_allclose(metric_value(Perplexity(), labels, np.zeros((3, 7, VOCAB), "float32")), VOCAB, rtol=1e-5)


def test_metrics_weight_batches_by_their_real_tokens():
    first_labels, first_logits = batch(seed=3, pad_from=(7, 7, 6))  # 20 real tokens
    second_labels, second_logits = batch(seed=4, pad_from=(1, 2, 0))  # 3 real tokens
    labels = np.concatenate([first_labels, second_labels])
    logits = np.concatenate([first_logits, second_logits])
    for metric, reference in ((MaskedAccuracy(), reference_accuracy), (Perplexity(), reference_perplexity)):
        metric.update_state(first_labels, first_logits)
        metric.update_state(second_labels, second_logits)
        np.testing.assert_allclose(float(numpy(metric.result())), reference(labels, logits), rtol=1e-5)
        batch_mean = np.mean([reference(first_labels, first_logits), reference(second_labels, second_logits)])
        assert not np.isclose(float(numpy(metric.result())), batch_mean, rtol=1e-3)
        metric.reset_state()
        assert float(numpy(metric.count)) == 0.0


def test_config_round_trip():
    for obj in (MaskedLabelSmoothedCrossEntropy(label_smoothing=0.2), MaskedAccuracy(), Perplexity(name="ppl")):
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
        assert type(restored) is type(obj)
        assert restored.get_config() == obj.get_config()
    assert MaskedLabelSmoothedCrossEntropy(label_smoothing=0.2).get_config() == {
        "name": "masked_label_smoothed_cross_entropy",
        "label_smoothing": 0.2,
    }


def copy_task(rng, n, length=6):
    """Copy digit strings of random length; decoder tokens are [START] + target."""
    lengths = rng.integers(1, length + 1, size=n)
    digits = rng.integers(3, VOCAB, size=(n, length)).astype("int32")
    source = np.where(np.arange(length) < lengths[:, None], digits, 0).astype("int32")
    labels = np.zeros((n, length + 1), "int32")
    decoder_tokens = np.zeros((n, length + 1), "int32")
    for row, size in enumerate(lengths):
        labels[row, : size + 1] = list(source[row, :size]) + [END]
        decoder_tokens[row, : size + 1] = [START] + list(source[row, :size])
    return {"encoder_tokens": source, "decoder_tokens": decoder_tokens}, labels


def compiled_tiny_model(warmup_steps=100):
    config = preset("tiny", source_vocab_size=VOCAB, target_vocab_size=VOCAB)
    model = build_seq2seq(config)
    model.compile(
        optimizer=paper_optimizer(config.d_model, warmup_steps=warmup_steps),
        loss=MaskedLabelSmoothedCrossEntropy(),
        metrics=[MaskedAccuracy(), Perplexity()],
    )
    return model


def test_compiled_loss_and_metrics_are_token_means_on_every_backend():
    model = compiled_tiny_model()
    x, labels = copy_task(np.random.default_rng(0), 16)
    logits = numpy(model.predict(x, verbose=0)).astype("float64")
    results = model.evaluate(x, labels, batch_size=16, return_dict=True, verbose=0)
    np.testing.assert_allclose(results["loss"], token_mean(smoothed_cross_entropy(labels, logits, 0.1), labels), rtol=1e-5)
    np.testing.assert_allclose(results["masked_accuracy"], reference_accuracy(labels, logits), rtol=1e-6)
    np.testing.assert_allclose(results["perplexity"], reference_perplexity(labels, logits), rtol=1e-5)
    sentence_weight = np.linspace(0.5, 2.0, 16).astype("float32")
    weighted = model.evaluate(x, labels, sample_weight=sentence_weight, batch_size=16, return_dict=True, verbose=0)
    expected = token_mean(smoothed_cross_entropy(labels, logits, 0.1), labels, sentence_weight[:, None] * np.ones((1, 7)))
    np.testing.assert_allclose(weighted["loss"], expected, rtol=1e-5)


def test_fit_with_paper_optimizer_lowers_the_loss():
    model = compiled_tiny_model(warmup_steps=30)
    x, labels = copy_task(np.random.default_rng(0), 256)
    history = model.fit(x, labels, batch_size=32, epochs=3, verbose=0).history  # 24 steps
    assert history["loss"][-1] < history["loss"][0] - 0.1
    assert history["masked_accuracy"][-1] > history["masked_accuracy"][0]
    assert history["perplexity"][-1] < history["perplexity"][0]


def test_compiled_model_saves_and_reloads_with_loss_metrics_and_schedule(tmp_path):
    model = compiled_tiny_model()
    x, labels = copy_task(np.random.default_rng(0), 32)
    model.fit(x, labels, batch_size=32, epochs=1, verbose=0)
    before = model.evaluate(x, labels, batch_size=16, return_dict=True, verbose=0)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.loss, MaskedLabelSmoothedCrossEntropy)
    assert isinstance(loaded.optimizer._learning_rate, type(model.optimizer._learning_rate))
    assert int(numpy(loaded.optimizer.iterations)) == 1
    after = loaded.evaluate(x, labels, batch_size=16, return_dict=True, verbose=0)
    assert sorted(after) == ["loss", "masked_accuracy", "perplexity"]
    for name in before:
        np.testing.assert_allclose(after[name], before[name], rtol=1e-6)
