"""Faults injected into real training processes: SIGKILL inside epochs and inside
checkpoint writes, a loss that becomes NaN, a full disk. The run resumes where it
stopped and ends with the weights of a run never interrupted."""

import gzip
import json
import math
import os
import random
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

from kerasformer.training.resume import MONITOR, NonFiniteLossError, TrainingState, load_progress
from kerasformer.training.train import checkpoints_and_logs, train
from kerasformer.training.config import TrainConfig

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CORPUS = os.path.join(REPOSITORY_ROOT, "training", "corpus", "en-es")

# Runs kerasformer.training.train.main(argv) with one fault armed by $KILL (see `arm`).
WRAPPER = r"""
import os, signal, sys
import keras
import numpy as np
import kerasformer.training.resume, kerasformer.training.train

kind, _, at = os.environ.get("KILL", "").partition(":")
at = int(at or 0)
saves = 0

def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)

class KillAtStep(keras.callbacks.Callback):
    # The step counter of the run (resumed runs included), as TrainingState counts it.
    def on_train_batch_end(self, batch, logs=None):
        if kind == "step" and int(self.model.optimizer.iterations.numpy()) == at:
            die()

real_savez = np.savez
def savez(path, **arrays):
    # kind "in_save": die with the at-th checkpoint half written to its temporary file.
    global saves
    real_savez(path, **arrays)
    saves += 1
    if kind == "in_save" and saves == at:
        with open(path, "r+b") as file:
            file.truncate(os.path.getsize(path) // 2)
        die()
np.savez = savez

real_write_state = kerasformer.training.resume.TrainingState._write_state
def write_state(self):
    # kind "before_state": die after the at-th weights file is renamed into place,
    # before state.json names it.
    if kind == "before_state" and saves == at:
        die()
    real_write_state(self)
kerasformer.training.resume.TrainingState._write_state = write_state

real_train = kerasformer.training.train.train
kerasformer.training.train.train = lambda config: real_train(config, callbacks=[KillAtStep()])
kerasformer.training.train.main(sys.argv[1:])
"""


def validation_file(folder):
    path = os.path.join(folder, "validation.tsv")
    with gzip.open(os.path.join(DEFAULT_CORPUS, "validation.tsv.gz"), "rt", encoding="utf-8") as file:
        lines = file.readlines()[:40]
    with open(path, "w", encoding="utf-8") as file:
        file.writelines(lines)
    return path


def train_command(run_dir, validation, epochs=3):
    return [
        "--run-dir", str(run_dir), "--validation-file", validation, "--preset", "tiny",
        "--max-train-pairs", "160", "--vocabulary-size", "250", "--batch-tokens", "512",
        "--warmup-steps", "20", "--patience", "50", "--epochs", str(epochs), "--backup-every-steps", "3",
    ]


def run_training(arguments, kill=""):
    """Runs the wrapper; returns (returncode, output). rc -9: killed as armed."""
    environment = {**os.environ, "KILL": kill, "PYTHONPATH": REPOSITORY_ROOT}
    completed = subprocess.run([sys.executable, "-c", WRAPPER, *arguments], cwd=REPOSITORY_ROOT,
                               env=environment, capture_output=True, text=True, timeout=600)
    return completed.returncode, completed.stdout + completed.stderr


def final_weights(run_dir):
    model = keras.saving.load_model(os.path.join(run_dir, "last.keras"))
    return [keras.ops.convert_to_numpy(v) for v in model.weights + model.optimizer.variables]


def backup_files(run_dir):
    return sorted(os.listdir(os.path.join(run_dir, "backup")))


# Five training processes under TensorFlow, three under JAX and torch (about 40 s each on a
# 2-core CPU): those two run it with -m slow; in the default run, resuming under them is
# test_a_nan_loss_... and test_a_run_stopped_by_its_time_budget_... below.
@(pytest.mark.slow if keras.backend.backend() != "tensorflow" else lambda test: test)
def test_killed_runs_resume_and_end_with_the_uninterrupted_weights(tmp_path):
    """TensorFlow: three kills, then equality with a run never killed. JAX and torch: two
    kills, then the run completes (equal weights are only promised on TensorFlow)."""
    tensorflow = keras.backend.backend() == "tensorflow"
    validation = validation_file(tmp_path)
    reference = tmp_path / "reference"
    if tensorflow:
        rc, output = run_training(train_command(reference, validation))
        assert rc == 0, output

    # Kills, each followed by the same command: at a random step inside the first epoch,
    # half-way through writing a checkpoint, and (TensorFlow) between renaming a
    # checkpoint into place and writing the state.json that names it.
    run = tmp_path / "killed"
    kill_step = random.Random(7).randrange(4, 9)  # after the save at step 3, inside epoch 1 (>= 9 steps)
    faults = [f"step:{kill_step}", "in_save:2"] + (["before_state:2"] if tensorflow else [])
    resumed_at = []
    for fault in faults:
        rc, output = run_training(train_command(run, validation), kill=fault)
        assert rc == -signal.SIGKILL, f"{fault}: the armed kill did not happen (rc={rc})\n{output[-3000:]}"
        progress = load_progress(run / "backup")
        resumed_at.append(progress.step)
        # Never a truncated file: state.json names a complete checkpoint; the killed
        # write's leftovers (a temporary, an unnamed .npz) are removed on restart.
        names = backup_files(run)
        assert "state.json" in names and progress.weights in names, names
        with np.load(run / "backup" / progress.weights) as saved:
            assert len(saved.files) > 0
    rc, output = run_training(train_command(run, validation))
    assert rc == 0, output
    assert f"resuming at step {resumed_at[-1]}" in output
    steps_per_epoch = int(output.split(" steps per epoch")[0].rsplit(" ", 1)[1])
    assert steps_per_epoch >= 9
    assert resumed_at[0] == kill_step // 3 * 3, (kill_step, resumed_at)  # the last save before the kill
    assert resumed_at == sorted(resumed_at) and resumed_at[-1] < 3 * steps_per_epoch, resumed_at
    progress = load_progress(run / "backup")
    assert progress.step == 3 * steps_per_epoch and progress.finished == 3
    assert backup_files(run) == sorted(["state.json", progress.weights])
    assert len(progress.history["loss"]) == 3  # the epochs of all the processes
    resumed = final_weights(run)
    assert all(np.isfinite(w).all() for w in resumed)
    if tensorflow:
        assert load_progress(reference / "backup").step == progress.step
        for side in ("source", "target"):  # same tokenizers, so the weights mean the same
            assert (run / "tokenizers" / f"{side}.vocab").read_text() == \
                (reference / "tokenizers" / f"{side}.vocab").read_text()
        expected = final_weights(reference)
        assert len(expected) == len(resumed)
        for a, b in zip(expected, resumed):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def tiny_config(run_dir, **changes):
    values = dict(preset="tiny", max_train_pairs=120, vocabulary_size=250, batch_tokens=512, warmup_steps=20,
                  patience=50, run_dir=str(run_dir), validation_file=validation_file(run_dir))
    return TrainConfig(**{**values, **changes})


class PoisonWeights(keras.callbacks.Callback):
    """Sets one embedding weight to NaN after step `at` (as a diverging run would)."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.at:
            weights = self.model.trainable_variables[0]
            poisoned = keras.ops.convert_to_numpy(weights).copy()
            poisoned[1] = np.nan
            weights.assign(poisoned)


def test_a_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    config = tiny_config(tmp_path, epochs=3, backup_every_steps=2)
    with pytest.raises(NonFiniteLossError) as caught:
        train(config, callbacks=[PoisonWeights(at=5)])
    message = str(caught.value)
    # The weights turn NaN after step 5: step 6's loss is the first NaN, and the
    # checkpoint of step 6 (due by backup_every_steps) refuses the weights.
    assert "at step 6 (epoch 1, step 6 of" in message and "last good checkpoint (step 4" in message, message
    progress = load_progress(tmp_path / "backup")
    assert progress.step == 4 and progress.weights == "step-00000004.npz"
    model = keras.saving.load_model(str(tmp_path / "last.keras")) if (tmp_path / "last.keras").exists() else None
    assert model is None or all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in model.weights)
    # The same command resumes from the good checkpoint and finishes.
    metrics = train(config)
    assert metrics["total_steps"] == load_progress(tmp_path / "backup").step
    assert all(np.isfinite(metrics["history"]["loss"]))


def one_batch(seed=0, vocabulary=50):
    rng = np.random.default_rng(seed)
    inputs = {"encoder_tokens": rng.integers(1, vocabulary, (4, 6)), "decoder_tokens": rng.integers(1, vocabulary, (4, 7))}
    return inputs, rng.integers(1, vocabulary, (4, 7))


def first_moment_norm(optimizer):
    """Global norm of Adam's first moments: after one step m = (1 - beta_1) * gradient."""
    return float(np.sqrt(sum(np.sum(keras.ops.convert_to_numpy(m) ** 2) for m in optimizer._momentums)))


@pytest.mark.parametrize("clip_norm", [0.0, 1e-3])
def test_gradient_clipping_scales_the_gradient_to_clip_norm(clip_norm):
    from kerasformer.training.train import compile_model

    config = TrainConfig(preset="tiny", clip_norm=clip_norm)
    model = compile_model(config, config.model_config(50, 50))
    model.train_on_batch(*one_batch())
    norm = first_moment_norm(model.optimizer) / (1 - model.optimizer.beta_1)  # the gradient's global norm
    if clip_norm:
        assert model.optimizer.global_clipnorm == clip_norm
        assert norm == pytest.approx(clip_norm, rel=1e-3)
    else:
        assert norm > 0.1  # far above the clipped run's: the clipping above was real


def test_float16_loss_scaling_skips_overflowing_steps_and_lowers_the_scale():
    """One model (one compiled step): a loss scale whose gradients overflow float16 skips the step
    and is halved; one whose gradients fit applies it and stays."""
    from kerasformer.training.train import compile_model

    config = TrainConfig(preset="tiny", precision="mixed_float16", initial_loss_scale=2.0**40)
    model = compile_model(config, config.model_config(50, 50))
    optimizer = model.optimizer

    def step(seed):
        before = [keras.ops.convert_to_numpy(w).copy() for w in model.trainable_weights]
        scale = float(keras.ops.convert_to_numpy(optimizer.dynamic_scale))
        model.train_on_batch(*one_batch(seed))
        after = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
        assert all(np.isfinite(w).all() for w in after)
        changed = any(not np.array_equal(a, b) for a, b in zip(before, after))
        return scale, changed, float(keras.ops.convert_to_numpy(optimizer.dynamic_scale))

    model.train_on_batch(*one_batch())  # builds everything (its gradients * 2^40 overflow: skipped too)
    scale, changed, new_scale = step(1)
    assert scale == 2.0**39  # the config's initial scale, halved by the first step
    assert not changed and new_scale == scale / 2  # gradients * 2^39 overflow float16: skipped, halved
    optimizer.dynamic_scale.assign(2.0**15)
    scale, changed, new_scale = step(2)
    assert changed and new_scale == scale == 2.0**15  # gradients * 2^15 fit in float16: applied


def file_digests(folder):
    import hashlib

    digests = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as file:
                digests[os.path.relpath(path, folder)] = hashlib.sha256(file.read()).hexdigest()
    return digests


@pytest.mark.backend_independent  # the checkpoint files are written by NumPy and Python on every backend
def test_a_full_disk_while_checkpointing_names_the_file_and_keeps_the_previous_checkpoint(tmp_path):
    from faults import python_command, small_disk

    validation = validation_file(tmp_path)
    run = tmp_path / "run"
    rc, output = run_training(train_command(run, validation, epochs=1))
    assert rc == 0, output
    progress = load_progress(run / "backup")
    before = {name: digest for name, digest in file_digests(run).items() if not name.startswith("logs")}
    weights_size = os.path.getsize(run / "backup" / progress.weights)

    # Two epochs now: the first checkpoint of epoch 2 needs weights_size bytes; half that is free.
    disk = small_disk(python_command("-m", "kerasformer.training.train", *train_command(run, validation, epochs=2)),
                      run, free_bytes=weights_size // 2)
    assert disk.returncode == 1, disk.stderr[-3000:]
    message = disk.stderr.strip().splitlines()[-1]
    expected_cause = "no space left on device (disk full)" if disk.mechanism == "tmpfs" else "File too large"
    assert message.startswith("kerasformer-train: ") and str(run / "backup" / "step-") in message, message
    assert expected_cause in message and "the previous file is intact" in message, message
    after = file_digests(run)
    for name, digest in before.items():
        if name not in ("config.json",):  # rewritten with the new epochs value
            assert after.get(name) == digest, f"{name} changed or vanished"
    assert not [name for name in after if ".tmp-" in name], sorted(after)

    # With room again, the same command resumes from the intact checkpoint and finishes.
    rc, output = run_training(train_command(run, validation, epochs=2))
    assert rc == 0, output
    assert f"resuming at step {progress.step} (epoch 2)" in output
    assert load_progress(run / "backup").finished == 2


def test_a_run_stopped_by_its_time_budget_goes_on_from_the_same_step(tmp_path):
    config = tiny_config(tmp_path, epochs=2, time_budget_minutes=1e-6)  # stops after the first step
    metrics = train(config)
    progress = load_progress(tmp_path / "backup")
    assert metrics["stopped_by_time_budget"] and not progress.finished
    assert (progress.step, progress.epoch, progress.epoch_step) == (1, 0, 1)  # epoch 1 is not counted done
    assert progress.history == {}
    resumed = train(tiny_config(tmp_path, epochs=2))
    progress = load_progress(tmp_path / "backup")
    assert resumed["total_steps"] == progress.step and progress.step % 2 == 0
    assert progress.epoch == 2 and progress.finished == 2 and len(progress.history["loss"]) == 2


@pytest.mark.backend_independent
def test_best_keras_and_early_stopping_go_by_validation_perplexity_and_an_older_run_by_val_loss(tmp_path):
    class Run:  # what checkpoints_and_logs reads of a RunFolder
        logs = str(tmp_path / "logs")
        model_file = staticmethod(lambda name: str(tmp_path / f"{name}.keras"))

    def monitors(progress):
        return {type(c).__name__: c.monitor for c in checkpoints_and_logs(Run, TrainConfig(), progress)
                if getattr(c, "monitor", None)}

    folder = tmp_path / "backup"
    state = TrainingState(str(folder), load_progress(folder), steps_per_epoch=2, every_steps=0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    state.set_model(model)  # the epoch ends save its weights
    assert state.progress.monitor == MONITOR == "val_perplexity"
    assert monitors(state.progress) == {"AtomicCheckpoint": MONITOR, "EarlyStopping": MONITOR}
    state.progress.epoch_step = 2
    state.on_epoch_end(0, {"loss": 4.0, "val_loss": 3.5, "val_perplexity": 30.0, "val_masked_accuracy": 0.2})
    state.progress.epoch_step = 2
    state.on_epoch_end(1, {"loss": 3.9, "val_loss": 3.4, "val_perplexity": 31.0})  # lower loss, higher perplexity
    progress = load_progress(folder)
    assert progress.lowest == {"val_loss": 3.4, "val_perplexity": 30.0} and progress.best == 30.0
    # A state.json written before the monitor was chosen: its "best" is the lowest val_loss, by which
    # the run goes on, so its best.keras is not replaced by a model that is worse by that figure.
    (folder / "state.json").write_text(json.dumps({"step": 4, "epoch": 2, "best": 3.4, "weights": ""}))
    older = load_progress(folder)
    assert (older.monitor, older.lowest, older.best) == ("val_loss", {"val_loss": 3.4}, 3.4)
    assert monitors(older) == {"AtomicCheckpoint": "val_loss", "EarlyStopping": "val_loss"}
    (folder / "state.json").write_text(json.dumps({"step": 0, "epoch": 0, "best": math.inf}))
    assert load_progress(folder).lowest == {} and load_progress(folder).best == math.inf
