"""training/allocator.py: with freed memory kept, a large buffer freed and allocated again
is not mapped again (no page faults), on the main thread and on another one, as a training
step's buffers under JAX and torch; with glibc's default it is, every time.

Each case runs in a fresh interpreter: the setting is process-wide and must be made before
the threads that use it first allocate."""

import json
import os
import subprocess
import sys

import pytest

from kerasformer.training import allocator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Allocates, writes and frees a 100 MB buffer with the C library's malloc, as XLA's CPU
# runtime does with a step's buffer, six times on the chosen thread; prints the setting's
# result and the page faults of each cycle after the first.
PROBE = r"""
import ctypes, ctypes.util, importlib.util, json, resource, sys, threading
spec = importlib.util.spec_from_file_location("allocator", sys.argv[3])  # alone: no Keras import
allocator = importlib.util.module_from_spec(spec); spec.loader.exec_module(allocator)
keep_freed_memory, set_for_training = allocator.keep_freed_memory, allocator.set_for_training
how, thread = sys.argv[1], sys.argv[2]
made = {"keep": keep_freed_memory, "default": lambda: None}.get(how, lambda: set_for_training(how))()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
SIZE, faults = 100 * 2**20, []
def cycles():
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        buffer = libc.malloc(SIZE)
        ctypes.memset(buffer, 1, SIZE)
        libc.free(buffer)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
if thread == "worker":
    worker = threading.Thread(target=cycles); worker.start(); worker.join()
else:
    cycles()
print(json.dumps({"made": made, "faults": faults[1:]}))
"""

PAGES = 100 * 2**20 // 4096  # pages of the buffer: each is faulted in if the buffer is mapped afresh


def probe(how, thread):
    done = subprocess.run([sys.executable, "-c", PROBE, how, thread, allocator.__file__], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.backend_independent
@pytest.mark.parametrize("thread", ["main", "worker"])
def test_glibcs_default_maps_a_large_buffer_afresh_each_time(thread):
    result = probe("default", thread)
    assert all(faults >= PAGES * 0.9 for faults in result["faults"]), result


@pytest.mark.backend_independent
@pytest.mark.parametrize("thread", ["main", "worker"])
def test_kept_freed_memory_serves_the_buffer_again_without_page_faults(thread):
    result = probe("keep", thread)
    assert result["made"] is True
    assert all(faults < PAGES * 0.02 for faults in result["faults"]), result


@pytest.mark.backend_independent
@pytest.mark.parametrize("backend, kept", [("jax", True), ("torch", True), ("tensorflow", False)])
def test_the_trainer_keeps_freed_memory_under_jax_and_torch_only(backend, kept):
    result = probe(backend, "worker")
    assert result["made"] is kept
    if kept:
        assert all(faults < PAGES * 0.02 for faults in result["faults"]), result
    else:  # glibc's default, untouched
        assert all(faults >= PAGES * 0.9 for faults in result["faults"]), result


def test_the_training_command_makes_the_setting_for_its_backend_first(monkeypatch):
    """`kerasformer-train` (training/train.py `main`) makes the setting before it reads the
    config (here a bad seed, which ends the command right after)."""
    import keras

    from kerasformer.training import train

    calls = []
    monkeypatch.setattr(train, "set_for_training", calls.append)
    with pytest.raises(SystemExit) as stopped:
        train.main(["--seed", "-1"])
    assert stopped.value.code == 2
    assert calls == [keras.backend.backend()]
