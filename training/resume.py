"""Resuming an interrupted run at the step where it stopped, and stopping a run whose
loss is no longer a number.

Keras's `BackupAndRestore` restarts an interrupted epoch from its first batch and
writes its backup in place. `TrainingState` instead saves, every `every_steps`
steps and at each epoch end, everything the next steps depend on:

    backup/step-00000120.npz   every variable the next step reads: the weights, the
                               optimizer state (Adam's moments, the iteration
                               count the schedule reads) and the dropout seed
                               states (which Keras's own weight files leave out)
    backup/state.json          epoch, step, per-epoch history, the lowest validation
                               loss and perplexity and the name of the .npz file

Both are written to a temporary file, fsynced and renamed, the .npz first, so
a kill at any moment leaves a complete pair; a full disk leaves the previous
pair and raises `kerasformer.training.files.WriteError`. The data order of epoch e
is a function of (seed, e) (`kerasformer.training.pipeline.make_dataset(epochs=...)`), so
the resumed run skips the batches already trained on and sees what the
uninterrupted run would have seen: on TensorFlow its final weights equal those
of a run that was never interrupted.

Before saving, and at every step, the loss and the weights are checked: a loss
of NaN or inf stops training with `NonFiniteLossError`, naming the step, and the
last checkpoint (which holds finite weights) is kept.
"""

import dataclasses
import glob
import json
import math
import os

import keras
import numpy as np
from keras import ops

from kerasformer.training.files import atomic_save, atomic_write

STATE_FILE = "state.json"


# The validation figure that picks best.keras and stops training early: the perplexity, a
# mean over every validation token (`kerasformer.training.loss.TokenMean`). Keras's `val_loss`
# is a mean of batch losses weighted by their rows, not their tokens: it weighs a short
# sentence's tokens more than a long one's, and counts the padding rows that fill up a
# bucket's last evaluation batch (`pipeline.make_dataset`).
MONITOR = "val_perplexity"
# The validation figures whose lowest value a run keeps (`Progress.lowest`).
LOWEST_KEPT = ("val_loss", "val_perplexity")


class NonFiniteLossError(RuntimeError):
    """The loss (or a weight) became NaN or inf; the message names the step."""


@dataclasses.dataclass
class Progress:
    """Where a run stands: `step` training steps done in all, `epoch` epochs
    completed, `epoch_step` steps done in the epoch under way."""

    step: int = 0
    epoch: int = 0
    epoch_step: int = 0
    history: dict = dataclasses.field(default_factory=dict)  # metric -> per-epoch values
    monitor: str = MONITOR  # the validation figure best.keras goes by
    lowest: dict = dataclasses.field(default_factory=dict)  # LOWEST_KEPT figure -> lowest value so far
    finished: int = 0  # the `epochs` setting under which the run finished (0: not finished)
    weights: str = ""  # the .npz file in the backup folder
    seconds: float = 0.0  # training time spent, all commands together (for the time budget)
    learning_rates: list = dataclasses.field(default_factory=list)  # [step, rate] where the budget schedule set it

    @property
    def best(self):
        """The lowest `monitor` so far (best.keras's), inf before the first validation."""
        return self.lowest.get(self.monitor, math.inf)


def state_variables(model):
    """What a resumed run needs restored: `model.variables` (weights and dropout seed
    generator states) and the optimizer's variables, in a fixed order. Not the optimizer's
    `learning_rate` variable, which only the budget schedule has: it sets the rate before
    every step, so a run can resume under either schedule (and backups stay as they were)."""
    optimizer = [v for v in model.optimizer.variables if v.name != "learning_rate"]
    return list(model.variables) + optimizer


def load_progress(folder):
    """The Progress saved in `folder`, or a fresh one when there is none."""
    path = os.path.join(folder, STATE_FILE)
    if not os.path.exists(path):
        return Progress()
    with open(path, encoding="utf-8") as file:
        saved = json.load(file)
    if "best" in saved:  # written before 2026-12-06: best.keras went by val_loss, and goes on so
        best = saved.pop("best")
        saved.update(monitor="val_loss", lowest={"val_loss": best} if math.isfinite(best) else {})
    return Progress(**saved)


def restore(model, folder, progress):
    """Loads the variables `progress` names into `model` (compiled and built)."""
    if not progress.weights:
        return
    path = os.path.join(folder, progress.weights)
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    try:
        with np.load(path) as saved:
            arrays = [saved[name] for name in saved.files]
    except Exception as error:
        raise RuntimeError(f"{path}: cannot read the checkpoint of step {progress.step}: {error}") from error
    variables = state_variables(model)
    shapes = [tuple(v.shape) for v in variables]
    if [a.shape for a in arrays] != shapes:
        raise RuntimeError(f"{path}: the checkpoint's {len(arrays)} variables do not fit the model's "
                           f"{len(variables)}; was the model config changed?")
    for variable, value in zip(variables, arrays):
        variable.assign(value)


def remove_leftovers(folder, progress):
    """Deletes what a killed save left behind: temporary files, and a weights file
    renamed into place whose state.json was not (nothing else writes there)."""
    for path in glob.glob(os.path.join(folder, ".tmp-*")) + glob.glob(os.path.join(folder, "step-*.npz")):
        if os.path.basename(path) != progress.weights:
            os.unlink(path)


def all_finite(variables):
    return all(bool(ops.all(ops.isfinite(v))) for v in variables)


class TrainingState(keras.callbacks.Callback):
    """Checks every step's loss and saves the run's `Progress` (see the module docstring).

    Args:
        folder: the backup folder (created if needed).
        progress: where the run starts (from `load_progress`); updated as it goes.
        steps_per_epoch: training steps in one epoch.
        every_steps: also save every this many steps (0: at epoch ends only).

    Put it first in the callback list: it raises before any later callback (e.g.
    a checkpoint of `last.keras`) sees an epoch whose weights are not finite.
    """

    def __init__(self, folder, progress, steps_per_epoch, every_steps=0):
        super().__init__()
        self.folder = folder
        self.progress = progress
        self.steps_per_epoch = steps_per_epoch
        self.every_steps = every_steps
        self.saved_step = progress.step if progress.weights else None
        os.makedirs(folder, exist_ok=True)
        remove_leftovers(folder, progress)

    def on_train_batch_end(self, batch, logs=None):
        progress = self.progress
        progress.step += 1
        progress.epoch_step += 1
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self._stop(f"the loss became {float(loss)}")
        if self.every_steps and progress.step % self.every_steps == 0 and progress.epoch_step < self.steps_per_epoch:
            self.save()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        for name in ("loss", "val_loss"):
            if name in logs and not math.isfinite(float(logs[name])):
                self._stop(f"{name} became {float(logs[name])}")
        progress = self.progress
        for name in LOWEST_KEPT:
            if name in logs:
                progress.lowest[name] = min(progress.lowest.get(name, math.inf), float(logs[name]))
        if progress.epoch_step < self.steps_per_epoch:
            # Cut short (a time budget): the next run goes on from this step of the epoch.
            self.save()
            return
        progress.epoch, progress.epoch_step = epoch + 1, 0
        for name, value in logs.items():
            progress.history.setdefault(name, []).append(float(value))
        self.save()

    def on_train_end(self, logs=None):
        # Stopped early (a time budget) or done: keep what was trained since the last save.
        if self.saved_step != self.progress.step:
            self.save()

    def finish(self, epochs):
        """Marks the run finished under the `epochs` setting (all run, or stopped
        early by EarlyStopping); a rerun with as many epochs has nothing to do."""
        self.progress.finished = epochs
        self._write_state()

    def save(self):
        if not all_finite(self.model.trainable_variables):
            self._stop("a weight became NaN or inf")
        name = f"step-{self.progress.step:08d}.npz"
        # Numbered, so the name is unique within the run; the index keeps the order.
        arrays = {f"{i:04d}": ops.convert_to_numpy(v) for i, v in enumerate(state_variables(self.model))}
        atomic_save(os.path.join(self.folder, name), lambda path: np.savez(path, **arrays),
                    what=f"the checkpoint of step {self.progress.step}")
        previous, self.progress.weights = self.progress.weights, name
        self._write_state()
        self.saved_step = self.progress.step
        if previous and previous != name:
            os.unlink(os.path.join(self.folder, previous))

    def _write_state(self):
        atomic_write(os.path.join(self.folder, STATE_FILE),
                     json.dumps(dataclasses.asdict(self.progress), indent=1).encode(),
                     what=f"the state of step {self.progress.step}")

    def _stop(self, what):
        progress = self.progress
        kept = (f"the last good checkpoint (step {self.saved_step}, {os.path.join(self.folder, progress.weights)}) is kept"
                if progress.weights else "no checkpoint was saved yet")
        raise NonFiniteLossError(
            f"{what} at step {progress.step} (epoch {progress.epoch + 1}, step {progress.epoch_step} of "
            f"{self.steps_per_epoch}); training stopped and {kept}. Lower the learning rate (warmup_steps) "
            f"or set clip_norm, then run the same command again to resume from that checkpoint."
        )
