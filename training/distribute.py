"""Data-parallel training: every device holds a copy of the model and takes an
equal slice of each batch; the gradients of the slices are combined before
each update, so a step is the step one device would take on the whole batch.

    TrainConfig.distribution   "none"           one device, as Keras places it
                               "data_parallel"  all GPUs of the host (else all CPU devices)

JAX runs it with Keras's distribution API (`keras.distribution.DataParallel`:
the batch is sharded along its first axis, the weights are replicated, and the
step is one XLA program over all devices). TensorFlow runs it with
`tf.distribute.MirroredStrategy` (the model is built and compiled inside the
strategy's scope; Keras splits each batch across the replicas and sums their
gradients). The torch backend has no data-parallel `model.fit`; `TrainConfig`
refuses the option there.

`batch_tokens` stays the global batch: each of R devices sees about
batch_tokens / R tokens per step, and the optimisation is the same as on one
device with the same `batch_tokens` (the loss is the token mean over the whole
global batch, see `kerasformer.training.loss.replica_token_share`). Two differences remain,
neither of which changes what is learnt: under TensorFlow, Keras draws a batch
from a fresh iterator to build the model inside a strategy, so the seeded
reshuffle runs one epoch ahead of a single-device run; and the bucket batch
sizes are rounded down to a multiple of R, so the padding rows that fill up a
bucket's last validation batch differ, and they count in `val_loss`, which
Keras averages over batches weighted by their rows (the token-level metrics,
`val_perplexity`, which picks best.keras, and `val_masked_accuracy`, are exact).
"""

import contextlib
import warnings

import keras

DISTRIBUTIONS = ("none", "data_parallel")
# Backends whose `model.fit` can run data-parallel, and with what.
DATA_PARALLEL_BACKENDS = {
    "jax": "keras.distribution.DataParallel",
    "tensorflow": "tf.distribute.MirroredStrategy",
}


def check_distribution(distribution, backend, jit_compile=False):
    """Raises ValueError unless `distribution` can run under `backend` (with `jit_compile`)."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution={distribution!r} must be one of {DISTRIBUTIONS}")
    if distribution == "none":
        return
    if backend not in DATA_PARALLEL_BACKENDS:
        supported = ", ".join(f"{name} ({how})" for name, how in DATA_PARALLEL_BACKENDS.items())
        raise ValueError(
            f"distribution='data_parallel' is not supported under KERAS_BACKEND={backend}: "
            f"Keras's model.fit runs data-parallel under {supported}. "
            "Use distribution='none' or another backend."
        )
    if backend == "tensorflow" and jit_compile:
        # Keras compiles the whole strategy.run step as one XLA cluster on the
        # first device, which cannot reach the other replicas' variables
        # ("Trying to access resource .../replica_1 located in device ...";
        # keras-team/keras#19005).
        raise ValueError(
            "distribution='data_parallel' with jit_compile=true is not supported under "
            "KERAS_BACKEND=tensorflow (XLA cannot compile a MirroredStrategy step); "
            "set jit_compile=false, or use KERAS_BACKEND=jax, where the data-parallel step is compiled"
        )


def accelerator_devices():
    """The devices data-parallel training spreads over: every GPU, else every CPU
    device (several only when split on purpose, e.g. for tests)."""
    if keras.backend.backend() == "jax":
        return keras.distribution.list_devices()  # the default JAX platform's devices
    import tensorflow as tf

    return [device.name for device in tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")]


def data_parallel(distribution):
    """The scope to build, compile and fit the model in, and the replica count.

    Inside the scope `model.fit` takes the usual dataset of global batches:
    under JAX, Keras shards each batch over the devices; under TensorFlow it
    splits each batch into one slice per replica
    (`experimental_distribute_dataset`).

    Returns:
        `(scope, replicas)`: a context manager, and the number of devices that
        share each batch (1 for "none"); batch sizes must be multiples of it
        (`make_dataset(batch_multiple=replicas)`), so that every device gets an
        equal slice.
    """
    check_distribution(distribution, keras.backend.backend())
    if distribution == "none":
        return contextlib.nullcontext(), 1
    devices = accelerator_devices()
    if len(devices) < 2:
        # Not an error: the run is exactly a single-device run, and one config
        # then serves a one-GPU workstation and a multi-GPU host alike.
        warnings.warn(
            f"distribution='data_parallel' found {len(devices)} device ({devices}); "
            "training runs on it as with distribution='none'",
            stacklevel=2,
        )
    if keras.backend.backend() == "jax":
        return keras.distribution.DataParallel(devices=devices).scope(), len(devices)
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(devices=devices)
    return strategy.scope(), strategy.num_replicas_in_sync
