"""Callbacks Keras does not ship: atomic checkpoints, a wall-clock budget, and a
throughput meter."""

import os
import tempfile
import time

import keras


class AtomicCheckpoint(keras.callbacks.Callback):
    """Saves the model to `path` (.keras) at each epoch end, or only when `monitor`
    improves: written to a temporary file in the same folder, then renamed, so a
    kill mid-write leaves the previous checkpoint intact (Keras's ModelCheckpoint
    writes in place)."""

    def __init__(self, path, monitor=None):
        super().__init__()
        self.path = path
        self.monitor = monitor
        self.best = float("inf")

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor is not None:
            value = (logs or {}).get(self.monitor)
            if value is None or not value < self.best:
                return
            self.best = value
        folder = os.path.dirname(os.path.abspath(self.path))
        fd, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".keras")
        os.close(fd)
        try:
            self.model.save(temporary)
            with open(temporary, "rb") as file:
                os.fsync(file.fileno())
            os.chmod(temporary, 0o644)  # mkstemp creates 0600
            os.replace(temporary, self.path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)


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
    """Training steps and the seconds they took: counted from the optimizer's
    iterations (Keras does not report every step to callbacks), timed from the
    end of the first step (tracing and compiling) to the end of training, with
    validation left out."""

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
        self.seconds = time.monotonic() - self.clock_start - self.validation_seconds
        self.steps = int(self.model.optimizer.iterations.numpy()) - self.start_iterations - 1
