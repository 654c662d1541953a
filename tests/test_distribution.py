"""Data-parallel training (training/distribute.py): on two devices a run follows
the same loss curve as on one device with the same global batch, under JAX
(keras.distribution.DataParallel) and TensorFlow (tf.distribute.MirroredStrategy);
torch refuses the option.

The two-device runs need their devices before the backend starts, so they run
in a fresh Python process: JAX with XLA_FLAGS=--xla_force_host_platform_device_count=2
(read when jax is imported), TensorFlow with the CPU split into two logical
devices (possible only before TensorFlow initialises it). They choose their
backend themselves, so tests/run.sh runs them once (`backend_independent`).
"""

import itertools
import json
import os
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest

from kerasformer.training.config import TrainConfig
from kerasformer.training.distribute import check_distribution, data_parallel
from kerasformer.training.run_folder import RunFolder
from kerasformer.training.train import train

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))

# 16 pairs whose tokens all fall in one length bucket (9 to 16 tokens), and
# batch_tokens=256 makes 16-pair batches: every epoch is one batch. That keeps
# the data order out of the comparison: under a tf.distribute strategy Keras
# draws a batch from a fresh iterator to build the model before the first
# epoch, which moves the seeded reshuffle on by one epoch.
NOUNS = [("gato", "cat"), ("perro", "dog"), ("pato", "duck"), ("toro", "bull")]
ADJECTIVES = [("rojo", "red"), ("negro", "black"), ("blanco", "white"), ("verde", "green")]
PAIRS = [(f"el {n_es} {a_es}", f"the {a_en} {n_en}") for (n_es, n_en), (a_es, a_en) in itertools.product(NOUNS, ADJECTIVES)]
EPOCHS = 3

RUN_BOTH = textwrap.dedent(
    """
    import json, os, sys
    if os.environ["KERAS_BACKEND"] == "tensorflow":  # two logical CPUs, before TensorFlow starts
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from kerasformer.training.config import TrainConfig
    from kerasformer.training.train import train

    settings = json.loads(sys.argv[1])
    results = {}
    for distribution in ("none", "data_parallel"):
        run_dir = os.path.join(sys.argv[2], distribution)
        metrics = train(TrainConfig(run_dir=run_dir, distribution=distribution, **settings))
        results[distribution] = {"history": metrics["history"], "devices": metrics["devices"]}
    print("RESULTS " + json.dumps(results))
    """
)


def run_on_two_devices(backend, tmp_path):
    """Trains the same run with distribution "none" and "data_parallel" in a fresh
    process of `backend` with two CPU devices; returns {distribution: results}."""
    corpus = tmp_path / "pairs.tsv"
    corpus.write_text("".join(f"{source}\t{target}\n" for source, target in PAIRS), encoding="utf-8")
    validation = tmp_path / "validation.tsv"  # 7 pairs: one padding row is added for 2 devices
    validation.write_text("".join(f"{source}\t{target}\n" for source, target in PAIRS[:7]), encoding="utf-8")
    settings = dict(
        preset="tiny", train_file=str(corpus), validation_file=str(validation), vocabulary_size=64,
        batch_tokens=256, epochs=EPOCHS, warmup_steps=4, patience=50, seed=0, model={"num_layers": 1},
        jit_compile=backend == "jax",  # jax.jit; without it JAX runs op by op
    )
    environment = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
        "CUDA_VISIBLE_DEVICES": "",  # CPU devices even on a GPU host
        "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    process = subprocess.run(
        [sys.executable, "-c", RUN_BOTH, json.dumps(settings), str(tmp_path)],
        cwd=REPO, env=environment, capture_output=True, text=True, timeout=600,
    )
    lines = [line for line in process.stdout.splitlines() if line.startswith("RESULTS ")]
    assert process.returncode == 0 and lines, process.stdout[-3000:] + process.stderr[-3000:]
    assert process.stdout.count(", 1 steps per epoch;") == 2  # see PAIRS
    return json.loads(lines[-1][len("RESULTS "):])


# About a minute each on a 2-core CPU (two runs, each tracing its step
# functions, plus a tf.distribute iterator per epoch).
@pytest.mark.backend_independent
@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_two_devices_follow_the_one_device_loss_curve(backend, tmp_path):
    results = run_on_two_devices(backend, tmp_path)
    one, two = results["none"]["history"], results["data_parallel"]["history"]
    assert results["none"]["devices"] == 1 and results["data_parallel"]["devices"] == 2
    assert len(one["loss"]) == EPOCHS
    assert one["loss"][-1] < one["loss"][0]  # it learns, so the curves compare steps that move
    # val_loss is exact here because the validation set is one batch: over
    # several, Keras weights each batch's loss by its rows, and the padding rows
    # that fill a partial batch up for two devices count (token metrics do not).
    for name in ("loss", "masked_accuracy", "perplexity", "val_loss", "val_masked_accuracy", "val_perplexity"):
        np.testing.assert_allclose(two[name], one[name], rtol=1e-5, err_msg=name)


def test_data_parallel_is_accepted_where_keras_can_run_it(tmp_path):
    """Checked where training starts (`train`, before any work), not where a config is read."""
    backend = keras.backend.backend()

    def starts(**settings):
        config = TrainConfig(preset="tiny", run_dir=str(tmp_path / "run"), **settings)
        check_distribution(config.distribution, backend, config.compiled)
        return config

    if backend == "torch":
        with pytest.raises(ValueError, match=r"not supported under KERAS_BACKEND=torch.*jax.*tensorflow"):
            starts(distribution="data_parallel")
        with pytest.raises(ValueError, match=r"not supported under KERAS_BACKEND=torch"):
            train(TrainConfig(preset="tiny", run_dir=str(tmp_path / "run"), distribution="data_parallel"))
        assert not (tmp_path / "run").exists()  # refused before anything was written
    else:
        assert starts(distribution="data_parallel").distribution == "data_parallel"
    if backend == "tensorflow":  # XLA cannot compile a MirroredStrategy step (keras-team/keras#19005)
        with pytest.raises(ValueError, match="jit_compile=true is not supported under KERAS_BACKEND=tensorflow"):
            starts(distribution="data_parallel", jit_compile=True)
    if backend == "jax":
        assert starts(distribution="data_parallel", jit_compile=True).jit_compile
    with pytest.raises(ValueError, match=r"distribution='model_parallel' must be one of \('none', 'data_parallel'\)"):
        TrainConfig(preset="tiny", distribution="model_parallel")


def test_a_data_parallel_run_reads_under_every_backend(tmp_path):
    """A config written by a JAX data-parallel run (jit_compile on) reads anywhere: evaluating
    it under torch or TensorFlow must not fail on how it was trained."""
    config = TrainConfig(preset="tiny", distribution="data_parallel", jit_compile=True, run_dir=str(tmp_path))
    model_config = config.model_config(100, 100)
    RunFolder(tmp_path).write_config(config, model_config)
    again = RunFolder(tmp_path).train_config()
    assert again.distribution == "data_parallel" and again.jit_compile


def test_one_device_runs_data_parallel_as_a_single_device_run_with_a_warning():
    if keras.backend.backend() == "torch":
        with pytest.raises(ValueError, match="KERAS_BACKEND=torch"):
            data_parallel("data_parallel")
        return
    # This process sees one CPU device (the two-device runs happen in subprocesses).
    with pytest.warns(UserWarning, match="found 1 device"):
        scope, replicas = data_parallel("data_parallel")
    assert replicas == 1
    with scope:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert data_parallel("none")[1] == 1
