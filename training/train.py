"""Train a Transformer translator with `model.fit`.

    python -m training.train [--config FILE.toml|.yaml] [--epochs 3] [--run-dir runs/x] ...
    kerasformer-train --help     (every flag, with its default)

Reads sentence pairs (the embedded English->Spanish corpus by default), trains
SentencePiece tokenizers on the training split, and fits the model with the
paper's loss, optimizer and schedule. Running the same command again resumes an
interrupted run at the step where it stopped, with the data order, optimizer
state and schedule step it had (training/resume.py). The run folder receives:

    config.json            the resolved settings and model config
    tokenizers/            source.model, target.model (+ .vocab listings)
    best.keras, last.keras best (lowest validation loss) and last model
    backup/                the resumable state: state.json + step-N.weights.h5
    logs/                  TensorBoard logs
    metrics.json           per-epoch history, tokens/s, wall time
    curves.png             train/validation loss and accuracy

Progress goes to stderr: a bar per epoch (loss, tokens/s, time left) on a terminal,
a line every --progress-seconds in a log file.
"""

import json
import logging
import os
import sys
import time
import types

import keras

from training.callbacks import AtomicCheckpoint, Throughput, TimeBudget, TrainingProgress
from training.cli import configure
from training.config import TrainConfig, config_from_args, make_parser, parse_args  # noqa: F401 (parse_args: tests)
from training.corpus_reader import read_corpus
from training.distribute import data_parallel
from training.files import WriteError, atomic_write
from training.loss import MaskedAccuracy, MaskedLabelSmoothedCrossEntropy, Perplexity
from training.pipeline import epoch_size, make_dataset
from training.resume import NonFiniteLossError, TrainingState, load_progress, restore
from training.schedule import paper_optimizer
from training.progress import Progress
from training.tokenizers import load_tokenizer, save_tokenizer, train_sentencepiece

log = logging.getLogger("kerasformer.train")


def prepare_tokenizers(config, train):
    """Trains the tokenizers, or reuses the run's own so a resumed run keeps its ids.

    SentencePiece trains in one call that reports nothing back, so its progress is a log
    line before and after each side."""
    folder = os.path.join(config.run_dir, "tokenizers")
    for side, texts in (("source", train.sources), ("target", train.targets)):
        path = os.path.join(folder, f"{side}.model")
        if not os.path.exists(path):
            log.info("%s tokenizer: training SentencePiece on %d sentences (vocabulary_size %d)",
                     side, len(texts), config.vocabulary_size)
            started = time.monotonic()
            save_tokenizer(train_sentencepiece(texts, config.vocabulary_size), path)
            log.info("%s tokenizer: %s in %.1f s", side, path, time.monotonic() - started)
    return load_tokenizer(os.path.join(folder, "source.model")), load_tokenizer(os.path.join(folder, "target.model"))


def plot_curves(history, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = range(1, len(history["loss"]) + 1)
    for axis, metric in ((loss_axis, "loss"), (accuracy_axis, "masked_accuracy")):
        axis.plot(epochs, history[metric], marker="o", label="train")
        if f"val_{metric}" in history:
            axis.plot(epochs, history[f"val_{metric}"], marker="o", label="validation")
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path + ".tmp.png", dpi=100)
    plt.close(figure)
    os.replace(path + ".tmp.png", path)


def compile_model(config: TrainConfig, model_config):
    """The Transformer of `model_config`, compiled with the paper's loss, optimizer
    and schedule under the config's precision and `jit_compile`.

    Mixed precision: float32 weights, bfloat16/float16 compute, softmax, logits
    and loss in float32; float16 also gets loss scaling, since its small
    gradients underflow to zero otherwise. `jit_compile` is XLA under TensorFlow,
    `jax.jit` under JAX (False runs JAX op by op) and `torch.compile` under torch.
    """
    from kerasformer import build_seq2seq

    model = build_seq2seq(model_config, dtype=config.precision)
    optimizer = paper_optimizer(model_config.d_model, config.warmup_steps,
                                global_clipnorm=config.clip_norm or None)
    if config.precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(
            optimizer, initial_scale=config.initial_loss_scale, dynamic_growth_steps=config.loss_scale_growth_steps)
    model.compile(
        optimizer=optimizer,
        loss=MaskedLabelSmoothedCrossEntropy(config.label_smoothing),
        metrics=[MaskedAccuracy(), Perplexity()],
        jit_compile=config.jit_compile,
    )
    return model


def train(config: TrainConfig, callbacks=()):
    """Runs (or resumes) training; returns the metrics dict written to metrics.json.

    `callbacks` are added to the run's own (after them)."""
    started = time.monotonic()
    os.makedirs(config.run_dir, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    backup = os.path.join(config.run_dir, "backup")
    progress = load_progress(backup)
    if progress.finished and progress.finished >= config.epochs:
        print(f"{config.run_dir}: finished after {progress.epoch} epochs; nothing to do "
              f"(raise epochs above {progress.finished} to train on, or use a new run_dir)")
        with open(os.path.join(config.run_dir, "metrics.json"), encoding="utf-8") as file:
            return json.load(file)

    train_pairs = read_corpus(config.corpus_file("train"), source_column=config.source_column,
                              target_column=config.target_column, skip_malformed=config.skip_malformed)
    validation_pairs = read_corpus(config.corpus_file("validation"), source_column=config.source_column,
                                   target_column=config.target_column, skip_malformed=config.skip_malformed)
    for corpus in (train_pairs, validation_pairs):
        if corpus.skipped:
            print(f"{corpus.path}: {corpus.skipped_summary()}", file=sys.stderr)
    if config.max_train_pairs:
        train_pairs.sources = train_pairs.sources[: config.max_train_pairs]
        train_pairs.targets = train_pairs.targets[: config.max_train_pairs]

    source_tokenizer, target_tokenizer = prepare_tokenizers(config, train_pairs)
    model_config = config.model_config(source_tokenizer.vocabulary_size(), target_tokenizer.vocabulary_size())
    atomic_write(
        os.path.join(config.run_dir, "config.json"),
        json.dumps({"train": config.to_dict(), "model": model_config.to_dict(),
                    "backend": keras.backend.backend()}, indent=2).encode(),
    )

    devices_scope, replicas = data_parallel(config.distribution)  # one device, or all of them

    def dataset(pairs, training, epochs=None):
        return make_dataset(pairs.sources, pairs.targets, source_tokenizer, target_tokenizer,
                            model_config.max_source_length, model_config.max_target_length,
                            batch_tokens=config.batch_tokens, shuffle=training, seed=config.seed,
                            batch_multiple=replicas, epochs=epochs)

    validation_data = dataset(validation_pairs, False)
    validation_data = validation_data.apply(known_length(sum(1 for _ in validation_data)))
    steps_per_epoch, tokens_per_epoch = count_epoch(dataset(train_pairs, True, epochs=(0, 1)))
    if progress.step != progress.epoch * steps_per_epoch + progress.epoch_step:
        raise RuntimeError(f"{backup}: the saved state (step {progress.step}, epoch {progress.epoch}) does not "
                           f"match {steps_per_epoch} steps per epoch; was the data or batch_tokens changed?")

    state = TrainingState(backup, progress, steps_per_epoch, config.backup_every_steps)
    throughput, budget = Throughput(), None
    run_callbacks = [
        state,  # first: it refuses non-finite weights before anything saves them
        AtomicCheckpoint(os.path.join(config.run_dir, "best.keras"), monitor="val_loss", best=progress.best),
        AtomicCheckpoint(os.path.join(config.run_dir, "last.keras")),
        keras.callbacks.TensorBoard(os.path.join(config.run_dir, "logs")),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience),
        throughput,
        TrainingProgress(config.epochs, steps_per_epoch, tokens_per_epoch / max(steps_per_epoch, 1)),
    ]
    if config.time_budget_minutes:
        budget = TimeBudget(config.time_budget_minutes)
        run_callbacks.append(budget)
    run_callbacks += list(callbacks)
    start_epoch = progress.epoch
    where = f"; resuming at step {progress.step} (epoch {progress.epoch + 1})" if progress.step else ""
    print(f"train: {len(train_pairs)} pairs, {tokens_per_epoch} target tokens, {steps_per_epoch} steps per epoch;"
          f" validation: {len(validation_pairs)} pairs; backend {keras.backend.backend()}, {replicas} device(s){where}")
    with devices_scope:
        model = compile_model(config, model_config)
        restore(model, backup, progress)
        # An epoch interrupted midway first runs to its end on its own, so that every
        # later epoch starts where an uninterrupted run's would.
        if progress.epoch_step and progress.epoch < config.epochs:
            rest = steps_per_epoch - progress.epoch_step
            data = dataset(train_pairs, True, epochs=(progress.epoch, progress.epoch + 1))
            model.fit(data.skip(progress.epoch_step).apply(known_length(rest)),
                      validation_data=validation_data, initial_epoch=progress.epoch, epochs=progress.epoch + 1,
                      callbacks=run_callbacks, verbose=0, shuffle=False)
        if progress.epoch < config.epochs and not model.stop_training:
            data = dataset(train_pairs, True, epochs=(progress.epoch, config.epochs))
            data = data.apply(known_length((config.epochs - progress.epoch) * steps_per_epoch))
            model.fit(data, steps_per_epoch=steps_per_epoch, validation_data=validation_data,
                      initial_epoch=progress.epoch, epochs=config.epochs, callbacks=run_callbacks, verbose=0,
                      shuffle=False)
    stopped_by_budget = bool(budget and budget.stopped_early)
    if not stopped_by_budget:
        state.finish(config.epochs)

    history = progress.history
    tokens_trained = tokens_per_epoch * throughput.steps / max(steps_per_epoch, 1)
    metrics = {
        "history": history,
        "epochs_run": progress.epoch - start_epoch,  # by this command; history holds all
        "epochs_total": progress.epoch,
        "stopped_by_time_budget": stopped_by_budget,
        "train_steps": throughput.steps,
        "total_steps": progress.step,
        "train_seconds": round(throughput.seconds, 1),
        "train_tokens_per_second": round(tokens_trained / throughput.seconds, 1) if throughput.seconds else None,
        "wall_seconds": round(time.monotonic() - started, 1),
        "parameters": model.count_params(),
        "devices": replicas,
        "backend": keras.backend.backend(),
    }
    atomic_write(os.path.join(config.run_dir, "metrics.json"), json.dumps(metrics, indent=2).encode())
    if history.get("loss"):
        plot_curves(history, os.path.join(config.run_dir, "curves.png"))
    return metrics


def count_epoch(dataset):
    """`pipeline.epoch_size(dataset)`, `(batches, target tokens)`, with a progress report: the
    pass tokenizes and batches the whole training split before the first step."""
    with Progress("counting one epoch of training batches", unit="batches") as progress:
        # epoch_size only iterates `as_numpy_iterator()`: hand it one that counts.
        counted = types.SimpleNamespace(as_numpy_iterator=lambda: progress.iterate(dataset.as_numpy_iterator()))
        return epoch_size(counted)


def known_length(steps):
    """Tells Keras how many batches a dataset holds. Of a dataset of unknown length it
    learns the end by running past it: a warning, and under TensorFlow an optimizer
    iteration counted without an update."""
    import tensorflow as tf

    return tf.data.experimental.assert_cardinality(steps)


def main(argv=None):
    parser = make_parser(description=__doc__)
    args = parser.parse_args(argv)
    configure(args)
    try:
        config = config_from_args(args)
    except ValueError as error:  # a setting's value, not the command's syntax: no usage text
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    try:
        metrics = train(config)
    except (NonFiniteLossError, WriteError) as error:
        raise SystemExit(f"kerasformer-train: {error}") from None
    print(json.dumps({k: v for k, v in metrics.items() if k != "history"}, indent=2))


if __name__ == "__main__":
    main()
