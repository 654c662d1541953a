"""Train a Transformer translator with `model.fit`.

    python -m kerasformer.training.train [--config FILE.toml|.yaml] [--epochs 3] [--run-dir runs/x] ...
    kerasformer-train --help     (every flag, with its default)

Reads sentence pairs (the embedded English->Spanish corpus by default), trains
SentencePiece tokenizers on the training split, and fits the model with the
paper's loss, optimizer and schedule. Running the same command again resumes an
interrupted run at the step where it stopped, with the data order, optimizer
state and schedule step it had (training/resume.py). The run folder
(`kerasformer.training.run_folder.RunFolder`, the owner of its layout) receives:

    config.json            the resolved settings and model config
    tokenizers/            source.model, target.model (+ .vocab listings)
    best.keras, last.keras best (lowest validation loss) and last model
    backup/                the resumable state: state.json + step-N.weights.h5
    logs/                  TensorBoard logs
    metrics.json           per-epoch history, best validation loss, tokens/s, wall time
    curves.png             train/validation loss and accuracy

Progress goes to stderr: a bar per epoch (loss, tokens/s, time left) on a terminal,
a line every --progress-seconds in a log file.
"""

import json
import logging
import os
import sys
import time

import keras
import numpy as np

from kerasformer.training.allocator import set_for_training
from kerasformer.training.callbacks import AtomicCheckpoint, Throughput, TimeBudget, TrainingProgress
from kerasformer.training.cli import configure
from kerasformer.training.config import (  # noqa: F401 (parse_args: tests)
    TrainConfig, check_jit_compile, config_from_args, make_parser, parse_args,
)
from kerasformer.training.corpus_reader import read_corpus
from kerasformer.training.distribute import check_distribution, data_parallel
from kerasformer.training.files import WriteError
from kerasformer.training.loss import MaskedAccuracy, MaskedLabelSmoothedCrossEntropy, Perplexity
from kerasformer.training.pipeline import epoch_size, make_dataset
from kerasformer.training.resume import LOWEST_KEPT, NonFiniteLossError, TrainingState, load_progress, restore
from kerasformer.training.schedule import BudgetLearningRate, TransformerSchedule, paper_optimizer, paper_peak
from kerasformer.training.progress import Progress
from kerasformer.training.plots import plot_curves
from kerasformer.training.run_folder import RunFolder
from kerasformer.training.text_rules import fit_length_rule
from kerasformer.training.tokenizers import save_tokenizer, train_sentencepiece

log = logging.getLogger("kerasformer.train")


def prepare_tokenizers(run, config, train):
    """Trains the tokenizers, or reuses the run's own so a resumed run keeps its ids.

    With `shared_vocabulary` one model, trained on the sentences of both sides, is written
    as both files. SentencePiece trains in one call that reports nothing back, so its
    progress is a log line before and after each model."""
    if config.shared_vocabulary:
        models = [("source+target", list(train.sources) + list(train.targets), ("source", "target"))]
    else:
        models = [("source", train.sources, ("source",)), ("target", train.targets, ("target",))]
    for name, texts, sides in models:
        paths = [run.tokenizer_file(side) for side in sides]
        if all(os.path.exists(path) for path in paths):
            continue
        log.info("%s tokenizer: training SentencePiece on %d sentences (vocabulary_size %d)",
                 name, len(texts), config.vocabulary_size)
        started = time.monotonic()
        proto = train_sentencepiece(texts, config.vocabulary_size)
        for path in paths:
            save_tokenizer(proto, path)
        log.info("%s tokenizer: %s in %.1f s", name, ", ".join(paths), time.monotonic() - started)
    if config.shared_vocabulary:
        with open(run.tokenizer_file("source"), "rb") as source, open(run.tokenizer_file("target"), "rb") as target:
            if source.read() != target.read():
                raise ValueError(f"{run.tokenizers} holds two different tokenizers, and shared_vocabulary needs one "
                                 "for both sides: start the run in a new run_dir")
    return run.load_tokenizers()


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
    if config.schedule == "budget":
        learning_rate = 0.0  # a variable, set each step by schedule.BudgetLearningRate
    else:
        scale = config.peak_learning_rate / paper_peak(model_config.d_model, config.warmup_steps) \
            if config.peak_learning_rate else 1.0
        learning_rate = TransformerSchedule(model_config.d_model, config.warmup_steps, scale)
    optimizer = paper_optimizer(model_config.d_model, config.warmup_steps, learning_rate=learning_rate,
                                global_clipnorm=config.clip_norm or None)
    if config.precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(
            optimizer, initial_scale=config.initial_loss_scale, dynamic_growth_steps=config.loss_scale_growth_steps)
    model.compile(
        optimizer=optimizer,
        loss=MaskedLabelSmoothedCrossEntropy(config.label_smoothing),
        metrics=[MaskedAccuracy(), Perplexity()],
        jit_compile=config.compiled,
    )
    return model


def check_backend(config: TrainConfig):
    """Raises ValueError if `config` cannot train under this backend. Checked where training
    starts, not where a config is read (a JAX data-parallel run evaluates under torch)."""
    backend = keras.backend.backend()
    check_distribution(config.distribution, backend, config.compiled)
    check_jit_compile(backend, config.compiled)


def train(config: TrainConfig, callbacks=()):
    """Runs (or resumes) training; returns the metrics dict written to metrics.json.

    `callbacks` are added to the run's own (after them)."""
    started = time.monotonic()
    check_backend(config)
    run = RunFolder(config.run_dir)
    os.makedirs(run.path, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    progress = load_progress(run.backup)
    if nothing_left(run, config, progress):
        return run.metrics()

    train_pairs, validation_pairs = read_pairs(config)
    source_tokenizer, target_tokenizer = prepare_tokenizers(run, config, train_pairs)
    model_config = config.model_config(source_tokenizer.vocabulary_size(), target_tokenizer.vocabulary_size())
    run.write_config(config, model_config, measure_length_rule(train_pairs, source_tokenizer, target_tokenizer,
                                                               model_config))

    devices_scope, replicas = data_parallel(config.distribution)  # one device, or all of them

    tokenizers = (source_tokenizer, target_tokenizer)
    validation_data = validation_dataset(validation_pairs, config, model_config, tokenizers, replicas)

    def training_data(epochs):
        return pair_dataset(train_pairs, config, model_config, tokenizers, replicas, training=True, epochs=epochs)

    with Progress("counting one epoch of training batches", unit="batches") as counting:
        steps_per_epoch, tokens_per_epoch = epoch_size(training_data((0, 1)), counting)
    if progress.step != progress.epoch * steps_per_epoch + progress.epoch_step:
        raise RuntimeError(f"{run.backup}: the saved state (step {progress.step}, epoch {progress.epoch}) does not "
                           f"match {steps_per_epoch} steps per epoch; was the data or batch_tokens changed?")

    state = TrainingState(run.backup, progress, steps_per_epoch, config.backup_every_steps)
    throughput = Throughput()
    budget = TimeBudget(config.time_budget_minutes, progress) if config.time_budget_minutes else None
    rates_before = len(progress.learning_rates)
    run_callbacks = [
        state,  # first: it refuses non-finite weights before anything saves them
        *checkpoints_and_logs(run, config, progress),
        throughput,
        TrainingProgress(config.epochs, steps_per_epoch, tokens_per_epoch / max(steps_per_epoch, 1)),
        *([budget] if budget else []),
        *learning_rate_schedule(config, model_config, progress, budget),
        *callbacks,
    ]
    start_epoch = progress.epoch
    where = f"; resuming at step {progress.step} (epoch {progress.epoch + 1})" if progress.step else ""
    print(f"train: {len(train_pairs)} pairs, {tokens_per_epoch} target tokens, {steps_per_epoch} steps per epoch;"
          f" validation: {len(validation_pairs)} pairs; backend {keras.backend.backend()}, {replicas} device(s){where}")
    with devices_scope:
        model = compile_model(config, model_config)
        restore(model, run.backup, progress)
        fit(model, config, progress, training_data, steps_per_epoch, validation_data, run_callbacks)
    stopped_by_budget = bool(budget and budget.stopped_early)
    if not stopped_by_budget:
        state.finish(config.epochs)

    metrics = summary(progress, start_epoch, stopped_by_budget, throughput, tokens_per_epoch / max(steps_per_epoch, 1),
                      time.monotonic() - started, model, replicas)
    run.write_metrics(metrics)
    rates = learning_rates(config, model_config, progress)
    write_learning_rates(run.logs, progress.learning_rates[rates_before:] if config.schedule == "budget" else rates)
    if progress.history.get("loss"):
        plot_curves(progress.history, run.curves, rates)
    return metrics


def pair_dataset(pairs, config, model_config, tokenizers, replicas=1, training=False, epochs=None,
                 fill_evaluation_batches=None):
    """The trainer's batches of `pairs` (`pipeline.make_dataset` with the run's settings):
    shuffled when `training`; evaluation batches filled up to their bucket's size when the
    step is compiled, unless `fill_evaluation_batches` says otherwise."""
    if fill_evaluation_batches is None:
        fill_evaluation_batches = config.compiled
    source_tokenizer, target_tokenizer = tokenizers
    return make_dataset(pairs.sources, pairs.targets, source_tokenizer, target_tokenizer,
                        model_config.max_source_length, model_config.max_target_length,
                        batch_tokens=config.batch_tokens, shuffle=training, seed=config.seed,
                        batch_multiple=replicas, fill_evaluation_batches=fill_evaluation_batches, epochs=epochs)


def validation_dataset(pairs, config, model_config, tokenizers, replicas=1, fill_evaluation_batches=None):
    """The validation data `model.fit` gets: `pair_dataset` of `pairs`, its length counted."""
    data = pair_dataset(pairs, config, model_config, tokenizers, replicas,
                        fill_evaluation_batches=fill_evaluation_batches)
    return data.apply(known_length(sum(1 for _ in data)))


def learning_rate_schedule(config, model_config, progress, budget):
    """The budget schedule's callback (none for the paper's: the optimizer computes it)."""
    if config.schedule != "budget":
        return []
    peak = config.peak_learning_rate or paper_peak(model_config.d_model, config.warmup_steps)
    return [BudgetLearningRate(peak, config.warmup_steps, step=lambda: progress.step, clock=budget.fraction,
                               rates=progress.learning_rates)]


def learning_rates(config, model_config, progress):
    """`[step, rate]` of the rate actually used, from step 0 to the last step: the budget
    schedule's recorded points, or the paper's schedule (a function of the step)."""
    if config.schedule == "budget":
        return progress.learning_rates + ([[progress.step, progress.learning_rates[-1][1]]]
                                          if progress.learning_rates else [])
    peak = config.peak_learning_rate or paper_peak(model_config.d_model, config.warmup_steps)
    schedule = TransformerSchedule(model_config.d_model, config.warmup_steps,
                                   peak / paper_peak(model_config.d_model, config.warmup_steps))
    steps = sorted(set(np.linspace(0, max(progress.step - 1, 0), 200).astype(int).tolist()))
    return [[step, float(schedule(step))] for step in steps]


def write_learning_rates(folder, points):
    """The rate per step to TensorBoard (`logs/learning_rate`, scalar `learning_rate`)."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(os.path.join(folder, "learning_rate"))
    with writer.as_default():
        for step, rate in points:
            tf.summary.scalar("learning_rate", rate, step=step)
    writer.close()


def nothing_left(run, config, progress):
    """True (with a message) for a run that finished its epochs or spent its time budget."""
    if progress.finished and progress.finished >= config.epochs:
        print(f"{run.path}: finished after {progress.epoch} epochs; nothing to do "
              f"(raise epochs above {progress.finished} to train on, or use a new run_dir)")
        return True
    if config.time_budget_minutes and progress.seconds >= config.time_budget_minutes * 60:
        print(f"{run.path}: its time budget of {config.time_budget_minutes:g} minutes is spent "
              f"({progress.step} steps); nothing to do (raise time_budget_minutes to train on)")
        return True
    return False


def summary(progress, start_epoch, stopped_by_budget, throughput, tokens_per_step, wall_seconds, model, replicas):
    """The metrics.json of a run: history, steps, tokens/s, time."""
    tokens_trained = tokens_per_step * throughput.steps
    return {
        "history": progress.history,
        # The lowest validation loss and perplexity of the run: history keeps whole epochs only, and
        # an epoch a time budget cuts short is validated too, so they may be lower than history's.
        **{f"best_{name}": round(progress.lowest[name], 4) if name in progress.lowest else None
           for name in LOWEST_KEPT},
        "best_model_by": progress.monitor,  # best.keras: the epoch of the lowest of this figure
        "epochs_run": progress.epoch - start_epoch,  # by this command; history holds all
        "epochs_total": progress.epoch,
        "stopped_by_time_budget": stopped_by_budget,
        "train_steps": throughput.steps,
        "total_steps": progress.step,
        "train_seconds": round(throughput.seconds, 1),
        "train_tokens_per_second": round(tokens_trained / throughput.seconds, 1) if throughput.seconds else None,
        "wall_seconds": round(wall_seconds, 1),
        "parameters": model.count_params(),
        "devices": replicas,
        "backend": keras.backend.backend(),
    }


def checkpoints_and_logs(run, config, progress):
    """best.keras (lowest `progress.monitor`, `resume.MONITOR` in a new run, continuing from
    the resumed run's best), last.keras, TensorBoard logs, and early stopping on the same figure."""
    return [
        AtomicCheckpoint(run.model_file("best"), monitor=progress.monitor, best=progress.best),
        AtomicCheckpoint(run.model_file("last")),
        keras.callbacks.TensorBoard(run.logs),
        keras.callbacks.EarlyStopping(monitor=progress.monitor, mode="min", patience=config.patience),
    ]


def measure_length_rule(pairs, source_tokenizer, target_tokenizer, model_config):
    """The run's decoding length rule (`text_rules.fit_length_rule`) from the training pairs'
    lengths in ids, as the model sees them (source truncated; target with [END])."""
    source = [min(len(ids), model_config.max_source_length) for ids in source_tokenizer(pairs.sources)]
    target = [min(len(ids) + 1, model_config.max_target_length) for ids in target_tokenizer(pairs.targets)]
    rule = fit_length_rule(source, target)
    log.info("decoding length rule: at most ceil(%.3f * source ids + %g) target ids", *rule)
    return rule


def read_pairs(config):
    """`(train, validation)` `Corpus`es of the config's files; skipped rows are reported,
    and the training split is cut to `max_train_pairs`."""
    corpora = []
    for split in ("train", "validation"):
        corpus = read_corpus(config.corpus_file(split), source_column=config.source_column,
                             target_column=config.target_column, skip_malformed=config.skip_malformed)
        if corpus.skipped:
            print(f"{corpus.path}: {corpus.skipped_summary()}", file=sys.stderr)
        corpora.append(corpus)
    train_pairs, validation_pairs = corpora
    if config.max_train_pairs:
        train_pairs.sources = train_pairs.sources[: config.max_train_pairs]
        train_pairs.targets = train_pairs.targets[: config.max_train_pairs]
    return train_pairs, validation_pairs


def fit(model, config, progress, training_data, steps_per_epoch, validation_data, callbacks):
    """`model.fit` from where `progress` stands to `config.epochs`; `training_data((first,
    stop))` is the dataset of those epochs. An epoch interrupted midway first runs to its end
    on its own, so that every later epoch starts where an uninterrupted run's would."""
    if progress.epoch_step and progress.epoch < config.epochs:
        rest = steps_per_epoch - progress.epoch_step
        data = training_data((progress.epoch, progress.epoch + 1))
        model.fit(data.skip(progress.epoch_step).apply(known_length(rest)),
                  validation_data=validation_data, initial_epoch=progress.epoch, epochs=progress.epoch + 1,
                  callbacks=callbacks, verbose=0, shuffle=False)
    if progress.epoch < config.epochs and not model.stop_training:
        data = training_data((progress.epoch, config.epochs))
        data = data.apply(known_length((config.epochs - progress.epoch) * steps_per_epoch))
        model.fit(data, steps_per_epoch=steps_per_epoch, validation_data=validation_data,
                  initial_epoch=progress.epoch, epochs=config.epochs, callbacks=callbacks, verbose=0,
                  shuffle=False)


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
    set_for_training(keras.backend.backend())  # before the backend's threads first allocate
    try:
        config = config_from_args(args)
        check_backend(config)
    except ValueError as error:  # a setting's value, not the command's syntax: no usage text
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    try:
        metrics = train(config)
    except (NonFiniteLossError, WriteError) as error:
        raise SystemExit(f"kerasformer-train: {error}") from None
    print(json.dumps({k: v for k, v in metrics.items() if k != "history"}, indent=2))


if __name__ == "__main__":
    main()
