"""Callbacks Keras does not ship: atomic checkpoints, a wall-clock budget, a
throughput meter and a progress report with tokens/s."""

import time

import keras

from kerasformer.training.files import atomic_save
from kerasformer.training.progress import Progress


class AtomicCheckpoint(keras.callbacks.Callback):
    """Saves the model to `path` (.keras) at each epoch end, or only when `monitor`
    improves on `best`: written to a temporary file in the same folder, then renamed
    (`kerasformer.training.files.atomic_save`), so a kill or a full disk mid-write leaves the
    previous checkpoint intact (Keras's ModelCheckpoint writes in place). A resumed
    run passes the best value reached before the interruption."""

    def __init__(self, path, monitor=None, best=float("inf")):
        super().__init__()
        self.path = path
        self.monitor = monitor
        self.best = best

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor is not None:
            value = (logs or {}).get(self.monitor)
            if value is None or not value < self.best:
                return
            self.best = value
        atomic_save(self.path, self.model.save, what=f"the model of epoch {epoch + 1}")


class TimeBudget(keras.callbacks.Callback):
    """Stops training once `minutes` of training time have passed, checked after each
    batch, so a run ends on time on any machine. The time is counted over every command
    that trained the run: `progress.seconds` (saved with the resumable state) holds what
    earlier commands spent, and this one adds its time from its first `fit` on. `fraction()`
    is the share spent, the clock of the budget schedule (`schedule.BudgetLearningRate`)."""

    def __init__(self, minutes, progress):
        super().__init__()
        self.seconds = minutes * 60
        self.progress = progress
        self.spent_before = progress.seconds
        self.start = None
        self.stopped_early = False

    def elapsed(self):
        return self.spent_before + (time.monotonic() - self.start if self.start is not None else 0.0)

    def fraction(self):
        return min(1.0, self.elapsed() / self.seconds)

    def on_train_begin(self, logs=None):
        if self.start is None:  # a resumed epoch and the epochs after it are two fit calls
            self.start = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        self.progress.seconds = self.elapsed()
        if self.progress.seconds >= self.seconds:
            self.model.stop_training = True
            self.stopped_early = True


class Throughput(keras.callbacks.Callback):
    """Training steps and the seconds they took, summed over the `fit` calls it
    serves: counted from the optimizer's iterations (Keras does not report every
    step to callbacks), timed from the end of each fit's first step (tracing and
    compiling) to its end, with validation left out."""

    def __init__(self):
        super().__init__()
        self.steps = 0
        self.seconds = 0.0

    def on_train_begin(self, logs=None):
        self.start_iterations = int(self.model.optimizer.iterations.numpy())
        self.clock_start = None
        self.validation_seconds = 0.0

    def on_train_batch_end(self, batch, logs=None):
        if self.clock_start is None:
            self.clock_start = time.monotonic()

    def on_test_begin(self, logs=None):
        self.validation_start = time.monotonic()

    def on_test_end(self, logs=None):
        if self.clock_start is not None:
            self.validation_seconds += time.monotonic() - self.validation_start

    def on_train_end(self, logs=None):
        if self.clock_start is None:
            return
        self.seconds += time.monotonic() - self.clock_start - self.validation_seconds
        self.steps += int(self.model.optimizer.iterations.numpy()) - self.start_iterations - 1


class TrainingProgress(keras.callbacks.Callback):
    """The run's progress, in place of `fit(verbose=...)`: each epoch a
    `kerasformer.training.progress.Progress` of its steps with the running training loss, tokens/s and
    the time left (a bar on a terminal, a line every `--progress-seconds` in a log file),
    ended by one line with the epoch's metrics, validation included. Keras's own bar shows
    no tokens/s, and written to a file (verbose=2) says nothing until an epoch ends.

    Args:
        epochs: the run's epochs (a resumed run's first `fit` covers the rest of one epoch).
        steps_per_epoch: the steps of a whole epoch.
        tokens_per_step: non-padding target tokens per step, on average over an epoch.
        stream: where a terminal's bar is drawn (default: stderr).
    """

    def __init__(self, epochs, steps_per_epoch, tokens_per_step, stream=None):
        super().__init__()
        self.epochs, self.steps_per_epoch, self.tokens_per_step = epochs, steps_per_epoch, tokens_per_step
        self.stream = stream
        self.progress = None

    def on_epoch_begin(self, epoch, logs=None):
        # A `fit` of fewer steps than an epoch finishes an interrupted one: count from where it was.
        self.skipped = max(self.steps_per_epoch - (self.params.get("steps") or self.steps_per_epoch), 0)
        self.progress = Progress(f"epoch {epoch + 1}/{self.epochs}", total=self.steps_per_epoch, unit="steps",
                                 rates={"tokens/s": self.tokens_per_step}, stream=self.stream)

    def on_train_batch_end(self, batch, logs=None):
        self.progress.update(self.skipped + batch + 1, {"loss": (logs or {}).get("loss")})

    def on_epoch_end(self, epoch, logs=None):
        self.progress.close(dict(logs or {}))
