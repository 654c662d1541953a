"""Callbacks Keras does not ship: atomic checkpoints, a wall-clock budget, and a
throughput meter."""

import time

import keras

from training.files import atomic_save


class AtomicCheckpoint(keras.callbacks.Callback):
    """Saves the model to `path` (.keras) at each epoch end, or only when `monitor`
    improves on `best`: written to a temporary file in the same folder, then renamed
    (`training.files.atomic_save`), so a kill or a full disk mid-write leaves the
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
    """Stops training once `minutes` of wall-clock time have passed (checked after
    each batch), so a demo run ends on time on any machine."""

    def __init__(self, minutes):
        super().__init__()
        self.seconds = minutes * 60
        self.stopped_early = False

    def on_train_begin(self, logs=None):
        self.start = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        if time.monotonic() - self.start > self.seconds:
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
