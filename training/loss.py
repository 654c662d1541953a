"""The training objective, label-smoothed cross-entropy (section 5.4), and the
token-level metrics that share its rule: padding (label id 0) counts for nothing.

Every mean here is over target tokens, not sentences: a batch's value is
sum(value * weight) / sum(weight), with weight 0 at padding, so neither padding
nor sentence length changes what one real token contributes.
"""

import keras
from keras import ops

from kerasformer.masks import padding_mask


def label_smoothed_cross_entropy(labels, logits, label_smoothing=0.1):
    """Cross-entropy of each target token against a smoothed one-hot target.

    The target distribution puts 1 - eps on the label and spreads eps uniformly
    over all V classes (padding and special ids included):

        q_k = (1 - eps) * [k = label] + eps / V
        loss = -sum_k q_k log p_k = (1 - eps) * (-log p_label) + eps * (-1/V sum_k log p_k)

    so the label itself gets 1 - eps + eps/V. This is the convention of Keras's
    `label_smoothing` and of Szegedy et al. (2016), which the paper cites; some
    implementations instead spread eps over the V - 1 (or V - 2) other classes.
    eps = 0 is plain cross-entropy, -log p_label.

    Computed in float32 whatever the dtype of `logits`: a softmax over tens of
    thousands of classes loses the small probabilities in float16.

    Args:
        labels: int `(batch, target_length)`.
        logits: float `(batch, target_length, vocab_size)`.
        label_smoothing: eps (0.1 in the paper).

    Returns:
        float32 `(batch, target_length)`, also at padding positions: weighting
        them out is the caller's job.
    """
    logits = ops.cast(logits, "float32")
    # With log p_k = z_k - logsumexp(z), both terms need only reductions over the
    # vocabulary, never the (batch, target_length, vocab_size) tensor of log p:
    #     -log p_label = logsumexp(z) - z_label
    #     -(1/V) sum_k log p_k = logsumexp(z) - mean_k z_k
    # logsumexp subtracts the max logit first: no overflow in exp.
    log_normalizer = ops.logsumexp(logits, axis=-1)
    negative_log_likelihood = log_normalizer - label_logits(labels, logits)
    if label_smoothing == 0.0:
        return negative_log_likelihood
    uniform_cross_entropy = log_normalizer - ops.mean(logits, axis=-1)
    return (1.0 - label_smoothing) * negative_log_likelihood + label_smoothing * uniform_cross_entropy


def label_logits(labels, logits):
    """z_label: the logit of each token's label, `(batch, target_length)`.

    A gather along the vocabulary (`take_along_axis`). Under TensorFlow its
    gradient is written out (`gathered_with_gradient`): left to autodiff,
    TensorFlow differentiates the gather by scattering into a dense zero tensor of
    the logits' shape (`UnsortedSegmentSum`), which from 8M logits on (2048 target
    tokens over 4000 pieces) took as long as the rest of the loss and its gradient
    together. JAX's autodiff is as fast as the written-out gradient and torch's
    faster (`benchmarks/loss_speed.py`), so they keep their own.
    """
    if keras.backend.backend() == "tensorflow":
        return gathered_with_gradient(labels, logits)
    return gathered(labels, logits)


def gathered(labels, logits):
    """z_label by `take_along_axis`; its gradient is the backend's."""
    labels = ops.expand_dims(ops.cast(labels, "int32"), -1)
    return ops.squeeze(ops.take_along_axis(logits, labels, axis=-1), -1)


def gathered_with_gradient(labels, logits):
    """z_label by `take_along_axis`, with the gradient d z_label / d z_k = [k = label]
    written out: the upstream gradient where k is the label, 0 elsewhere (a `where`
    over the vocabulary, elementwise)."""

    @ops.custom_gradient
    def pick(logits):
        def gradient(*args, upstream=None):
            if upstream is None:  # by position or by name, as the backend passes it
                (upstream,) = args
            is_label = ops.arange(logits.shape[-1], dtype="int32") == ops.expand_dims(ops.cast(labels, "int32"), -1)
            return ops.where(is_label, ops.expand_dims(upstream, -1), 0.0)

        return gathered(labels, logits), gradient

    return pick(logits)


def token_weights(labels, sample_weight=None):
    """1 at real target tokens, 0 at padding, times any sample weight.

    Args:
        labels: int `(batch, target_length)`, 0 = padding.
        sample_weight: None, `(batch,)` (one weight per sentence) or
            `(batch, target_length)` (one per token).

    Returns:
        float32 `(batch, target_length)`.
    """
    weights = ops.cast(padding_mask(labels), "float32")
    if sample_weight is None:
        return weights
    sample_weight = ops.cast(sample_weight, "float32")
    if len(sample_weight.shape) == 1:
        sample_weight = ops.expand_dims(sample_weight, -1)
    return weights * sample_weight


def replica_token_share(weights):
    """R * (this replica's token weight) / (all replicas' token weight) inside a
    `tf.distribute` strategy with R > 1 replicas; 1 everywhere else.

    Under a strategy Keras averages each replica's loss over that replica's own
    tokens, divides it by R and sums the replicas' gradients: a mean of the
    replicas' means. Scaled by this share, replica r's loss becomes
    sum_r(w * CE) / sum_all(w), and the summed gradient is that of the token mean
    over the whole global batch, as one device computes it, even when the
    replicas' slices hold different numbers of real tokens. (JAX's DataParallel
    computes the global batch as one program and needs no correction.)

    Args:
        weights: float32 `(batch, target_length)` token weights of this replica.

    Returns:
        A float32 scalar; no gradient flows through it (weights come from labels).
    """
    if keras.backend.backend() != "tensorflow":
        return 1.0
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return 1.0
    local = ops.sum(weights)
    return ops.divide_no_nan(context.num_replicas_in_sync * local, context.all_reduce("sum", local))


@keras.saving.register_keras_serializable(package="kerasformer")
class MaskedLabelSmoothedCrossEntropy(keras.losses.Loss):
    """Label-smoothed cross-entropy, averaged over the non-padding tokens of a batch.

        loss = sum_{b,t} w_bt CE_eps(y_bt, logits_bt) / sum_{b,t} w_bt

    with w_bt = 0 where y_bt = 0 (padding) and 1 (or the sample weight)
    elsewhere; CE_eps is `label_smoothed_cross_entropy` (smoothed target
    (1 - eps) * one_hot + eps / V). A batch of padding only has loss 0.

    Padding is read from the labels; a Keras mask on the logits, if any, is
    applied as well. With label smoothing the loss never reaches 0: its minimum
    is the entropy of the smoothed target. Use `Perplexity` to follow the
    unsmoothed cross-entropy.

    Args:
        label_smoothing: eps (0.1 in the paper, section 5.4).
        name: name of the loss.

    Call arguments:
        y_true: int `(batch, target_length)`, 0 = padding.
        y_pred: float logits `(batch, target_length, vocab_size)`, any float dtype.
        sample_weight: optional, `(batch,)` or `(batch, target_length)`.

    Returns:
        float32 scalar.

    Example:
        >>> loss = MaskedLabelSmoothedCrossEntropy(label_smoothing=0.1)
        >>> labels = np.array([[3, 0]])  # the second token is padding
        >>> logits = np.array([[[0.0, 0.0, 0.0, 5.0], [9.0, 0.0, 0.0, 0.0]]])
        >>> round(float(loss(labels, logits)), 4)
        0.395
    """

    def __init__(self, label_smoothing=0.1, name="masked_label_smoothed_cross_entropy"):
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1)")
        # This reduction divides by the sum of the weights, not by the number of
        # positions: padding (weight 0) then adds neither to the sum nor to the
        # count. Going through Keras's reduction, rather than around it, keeps
        # its Keras-mask handling; `replica_token_share` corrects its per-replica
        # mean under tf.distribute.
        super().__init__(name=name, reduction="mean_with_sample_weight", dtype="float32")
        self.label_smoothing = label_smoothing

    def __call__(self, y_true, y_pred, sample_weight=None):
        weights = token_weights(y_true, sample_weight)
        return super().__call__(y_true, y_pred, sample_weight=weights) * replica_token_share(weights)

    def call(self, y_true, y_pred):
        """Per-token losses `(batch, target_length)`; `__call__` weights and averages them."""
        return label_smoothed_cross_entropy(y_true, y_pred, self.label_smoothing)

    def get_config(self):
        # The reduction is what makes the loss correct, so it is not a setting.
        return {"name": self.name, "label_smoothing": self.label_smoothing}


class TokenMean(keras.metrics.Metric):
    """A per-token value averaged over every non-padding token seen since the last reset.

    Keeps the running sums sum(value * w) and sum(w) rather than a mean of
    batch means, so batches with more real tokens count for more, exactly as if
    the whole epoch were one batch. Subclasses give `token_values`.
    """

    def __init__(self, name, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.total = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="count")

    def token_values(self, labels, logits):
        """float32 `(batch, target_length)` from int labels and float logits."""
        raise NotImplementedError

    def update_state(self, y_true, y_pred, sample_weight=None):
        weights = token_weights(y_true, sample_weight)
        values = self.token_values(y_true, y_pred)
        self.total.assign_add(ops.sum(values * weights))
        self.count.assign_add(ops.sum(weights))

    def result(self):
        return ops.divide_no_nan(self.total, self.count)


@keras.saving.register_keras_serializable(package="kerasformer")
class MaskedAccuracy(TokenMean):
    """Share of non-padding target tokens where the label's logit is the largest (argmax_k
    logits_k equals the label; a label that ties another id for the largest logit counts).

    Call arguments (`update_state`):
        y_true: int `(batch, target_length)`, 0 = padding.
        y_pred: float logits `(batch, target_length, vocab_size)`.
        sample_weight: optional, `(batch,)` or `(batch, target_length)`.

    `result()` is a float32 scalar in [0, 1].

    Example:
        >>> accuracy = MaskedAccuracy()
        >>> accuracy.update_state([[2, 1, 0]], [[[0, 0, 1], [0, 0, 1], [0, 0, 1]]])
        >>> float(accuracy.result())  # 1 of the 2 real tokens
        0.5
    """

    def __init__(self, name="masked_accuracy", dtype=None):
        super().__init__(name=name, dtype=dtype)

    def token_values(self, labels, logits):
        # The label's logit is the largest: argmax without its index search (a plain max, which
        # vectorises, where XLA's argmax is a slow two-operand reduce); a tie counts as correct.
        logits = ops.cast(logits, "float32")
        return ops.cast(label_logits(labels, logits) >= ops.max(logits, axis=-1), "float32")


@keras.saving.register_keras_serializable(package="kerasformer")
class Perplexity(TokenMean):
    """exp of the mean unsmoothed cross-entropy over non-padding target tokens.

        perplexity = exp(sum_{b,t} w_bt (-log p(y_bt)) / sum_{b,t} w_bt)

    The exponent is taken of the running token mean, not averaged over
    batches: the perplexity of the epoch as one corpus.

    Call arguments (`update_state`): as `MaskedAccuracy`.

    `result()` is a float32 scalar >= 1 (1 before any token is seen).

    Example:
        >>> perplexity = Perplexity()
        >>> perplexity.update_state([[1]], [[[0.0, 0.0, 0.0, 0.0]]])
        >>> round(float(perplexity.result()), 4)  # uniform over 4 classes
        4.0
    """

    def __init__(self, name="perplexity", dtype=None):
        super().__init__(name=name, dtype=dtype)

    def token_values(self, labels, logits):
        return label_smoothed_cross_entropy(labels, logits, label_smoothing=0.0)

    def result(self):
        return ops.exp(super().result())
