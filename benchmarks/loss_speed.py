"""What the gradient of the label's logit costs the loss, per backend. `training/loss.py`'s
label-smoothed cross-entropy

    (1 - eps) * (logsumexp(z) - z_label) + eps * (logsumexp(z) - mean_k z_k)

picks z_label with a gather along the vocabulary. Its gradient either comes from the
backend's autodiff (`gathered`; under TensorFlow a scatter into a dense zero tensor of the
logits' shape, `UnsortedSegmentSum`) or is written out (`gathered_with_gradient`: the
upstream gradient where k is the label, 0 elsewhere, a `where`). `label_logits` writes it
out under TensorFlow only; this script is the evidence, one backend a run:

    KERAS_BACKEND=tensorflow python benchmarks/loss_speed.py [--rounds 5] [--steps 5]

Two parts, one process, interleaved rounds, fastest round:
1. the loss alone, value and gradient with respect to the logits, at several logits shapes
   `(pairs, target length, vocabulary)`: under TensorFlow in a `tf.function` with unknown
   batch and length (the trainer's graph after its buckets relaxed the shapes), under JAX in
   `jax.jit`, under torch eagerly;
2. the training step as the trainer compiles it (`training.train.compile_model`: its
   optimizer, metrics and `jit_compile` default) at the main job's size (its config, 32 x 32
   tokens, vocabulary 4000) and at the size of the Eole comparison (`benchmarks/peer_eole.py`:
   `small`, 3+3 layers, pre-norm, dropout 0.1 on every site, vocabularies 8,000, 64 x 32
   tokens), once with each gradient in the loss, the same weights.
Writes `benchmarks/results/loss_speed_<backend>.{md,json}`. Timings only; never a test.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.peer_eole import DROPOUT, ours_model  # noqa: E402 (after the path; the standard library only)

SHAPES = ((32, 32, 4000), (32, 32, 8000), (64, 32, 8000), (64, 32, 16000))
EPSILON = 0.1
# benchmarks/peer_eole.py's model at its dropout (0.1 on every site Eole drops), pre-norm as
# Eole's decoder is (peer_eole.py runs ours post-norm unless --ours-model says otherwise)
EOLE_MODEL = ours_model(argparse.Namespace(dropout=DROPOUT, ours_model={"norm_first": True}))
STEPS = {"the main job's": ({}, (32, 32, 4000)), "Eole's": (EOLE_MODEL, (64, 32, 8000))}


def cross_entropy_with(pick):
    """`label_smoothed_cross_entropy`'s formula with z_label from `pick`."""
    from keras import ops

    def cross_entropy(labels, logits, label_smoothing=EPSILON):
        logits = ops.cast(logits, "float32")
        log_normalizer = ops.logsumexp(logits, axis=-1)
        return ((1.0 - label_smoothing) * (log_normalizer - pick(labels, logits))
                + label_smoothing * (log_normalizer - ops.mean(logits, axis=-1)))

    return cross_entropy


def forms():
    from kerasformer.training.loss import gathered, gathered_with_gradient

    return {"autodiff": cross_entropy_with(gathered), "written out": cross_entropy_with(gathered_with_gradient)}


def loss_and_gradient(form, vocab_size):
    """`run(labels, logits) -> (mean loss, gradient)` as numpy, compiled as the backend trains."""
    import keras
    from keras import ops

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function(input_signature=[tf.TensorSpec((None, None), tf.int32),
                                      tf.TensorSpec((None, None, vocab_size), tf.float32)])
        def step(labels, logits):
            with tf.GradientTape() as tape:
                tape.watch(logits)
                loss = ops.mean(form(labels, logits))
            return loss, tape.gradient(loss, logits)

        return lambda labels, logits: [value.numpy() for value in step(labels, logits)]
    if backend == "jax":
        import jax

        step = jax.jit(jax.value_and_grad(lambda logits, labels: ops.mean(form(labels, logits))))
        return lambda labels, logits: [np.asarray(value) for value in jax.block_until_ready(step(logits, labels))]
    import torch

    def run(labels, logits):
        logits = torch.tensor(logits, requires_grad=True)
        loss = ops.mean(form(torch.tensor(labels), logits))
        loss.backward()
        return [loss.detach().numpy(), logits.grad.numpy()]

    return run


def fastest(runs, rounds):
    """Fastest of `rounds` interleaved rounds of each callable, in ms."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], 1000 * (time.perf_counter() - started))
    return best


def loss_rows(rounds):
    from kerasformer.training.loss import label_smoothed_cross_entropy

    rng = np.random.default_rng(0)
    rows = []
    for shape in SHAPES:
        logits = rng.normal(size=shape).astype("float32")
        labels = rng.integers(1, shape[-1], size=shape[:2]).astype("int32")
        runs = {name: loss_and_gradient(form, shape[-1]) for name, form in forms().items()}
        (loss_a, grad_a), (loss_w, grad_w) = (run(labels, logits) for run in runs.values())
        np.testing.assert_allclose(loss_w, loss_a, rtol=1e-6)
        np.testing.assert_allclose(grad_w, grad_a, atol=1e-9)
        package = loss_and_gradient(label_smoothed_cross_entropy, shape[-1])(labels, logits)[0]
        np.testing.assert_allclose(package, loss_a, rtol=1e-6)  # cross_entropy_with is the package's formula
        best = fastest({name: (lambda run=run: run(labels, logits)) for name, run in runs.items()}, rounds)
        rows.append(["loss + gradient", " x ".join(map(str, shape)), f"{shape[0] * shape[1] * shape[2] / 1e6:g}M logits",
                     f"{best['autodiff']:.1f}", f"{best['written out']:.1f}",
                     f"{best['autodiff'] / best['written out']:.2f}"])
    return rows


def step_row(size, rounds, steps):
    import keras

    from benchmarks.train_throughput import fixed_batch
    from kerasformer.training import train
    from kerasformer.training.config import parse_args
    from kerasformer.training.loss import MaskedLabelSmoothedCrossEntropy

    def loss_class(cross_entropy):
        class Loss(MaskedLabelSmoothedCrossEntropy):
            def call(self, y_true, y_pred):
                return cross_entropy(y_true, y_pred, self.label_smoothing)

        return Loss

    overrides, (pairs, length, vocab_size) = STEPS[size]
    config = parse_args(["--config", os.path.join(ROOT, "training", "configs", "small_en_es.toml"),
                         "--model", json.dumps(overrides)])
    models = {}
    for name, cross_entropy in forms().items():
        loss = loss_class(cross_entropy)
        keras.utils.set_random_seed(0)
        train.MaskedLabelSmoothedCrossEntropy = loss  # compile_model's loss; all else as the trainer's
        try:
            model = train.compile_model(config, config.model_config(vocab_size, vocab_size))
        finally:
            train.MaskedLabelSmoothedCrossEntropy = MaskedLabelSmoothedCrossEntropy
        assert type(model.loss) is loss, model.loss
        # two other shapes first: TensorFlow then traces the step for unknown batch and
        # length, as it does after the trainer's first buckets
        for shape in ((2 * pairs, length // 2), (pairs // 2, 2 * length), (pairs, length)):
            model.train_on_batch(*fixed_batch(*shape, vocab_size)[:2])
        models[name] = model
    inputs, labels, target_tokens = fixed_batch(pairs, length, vocab_size)

    def run(model):
        for _ in range(steps):
            model.train_on_batch(inputs, labels)

    best = fastest({name: (lambda model=model: run(model)) for name, model in models.items()}, rounds)
    best = {name: ms / steps for name, ms in best.items()}
    return [f"training step, {size} size", f"{pairs} x {length} x {vocab_size}",
            f"{target_tokens} target tokens", f"{best['autodiff']:.1f}", f"{best['written out']:.1f}",
            f"{best['autodiff'] / best['written out']:.2f}"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the fastest counts")
    parser.add_argument("--steps", type=int, default=5, help="training steps per model per round")
    args = parser.parse_args(argv)
    for name in ("rounds", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")

    import keras

    from benchmarks.results import write_table

    backend = keras.backend.backend()
    rows = loss_rows(args.rounds) + [step_row(size, args.rounds, args.steps) for size in STEPS]
    write_table(
        f"loss_speed_{backend}", f"The label logit's gradient in the loss: autodiff against written out ({backend})",
        ["what", "shape", "size", "autodiff ms", "written out ms", "autodiff / written out"], rows,
        notes=[f"`KERAS_BACKEND={backend} python benchmarks/loss_speed.py --rounds {args.rounds} "
               f"--steps {args.steps}`; fastest of interleaved rounds; one process.",
               "`training/loss.py`'s `label_logits` writes the gradient out under TensorFlow only.",
               "Loss rows: the mean loss and its gradient with respect to float32 logits; values and gradients "
               "of the two forms asserted equal. TensorFlow: tf.function with unknown batch and length; JAX: "
               "jax.jit; torch: eager.",
               "Step rows: `training.train.compile_model` (metrics, optimizer, jit_compile default), ms per "
               "`train_on_batch` step; the main job's config, and with the model overrides "
               f"{json.dumps(EOLE_MODEL)} at Eole's size; only the loss's gradient differs."],
    )


if __name__ == "__main__":
    main()
