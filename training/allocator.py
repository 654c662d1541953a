"""The trainer's memory allocator setting: freed memory stays in the process.

Under JAX and torch a training step allocates its large temporaries (XLA's
buffer of the step's intermediates, about 100 MB for the main job's model; the
logits and their gradients) and frees them again. glibc's malloc serves a
request above its mmap threshold (32 MB at most) with a fresh `mmap` and gives
it back with `munmap` when freed, so every step the kernel maps and zeroes those
pages again, inside whichever op first writes them: 17,000-25,000 page faults a
step (benchmarks/results/backend_step_allocator.md). TensorFlow's runtime takes
almost none.

`keep_freed_memory` tells glibc (`mallopt`) to serve every thread from the one
main heap, never from `mmap`, and not to give freed memory back to the system:
a step's buffers are then reused by the next step. The one heap is what JAX
needs: `mmap` off and no trimming alone changed nothing there, since XLA's
buffer comes from another thread, whose own heap holds at most 64 MB and maps
anything larger regardless. The cost is that the process
keeps its peak memory until it exits, which a training process reaches anyway.
It must run before the backend's threads first allocate (a thread keeps the
heap it started with), so the trainer calls it first thing.
"""

import ctypes
import ctypes.util

# mallopt's parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
NEVER = 2**31 - 1  # an int: the largest trim threshold mallopt takes

# The backends whose training steps fault on freed memory, where the trainer keeps it.
# TensorFlow's runtime reuses its buffers (no faults to remove, and its step was no faster
# with the setting: benchmarks/results/backend_step_allocator.md).
BACKENDS = ("jax", "torch")


def keep_freed_memory():
    """Sets glibc's malloc to reuse freed memory, for the rest of the process.

    Returns:
        True if the setting was made; False for a C library without glibc's
        `mallopt` (macOS, musl), where nothing changes.
    """
    mallopt = getattr(ctypes.CDLL(ctypes.util.find_library("c")), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(parameter, value) == 1 for parameter, value in (
        (M_ARENA_MAX, 1),  # one heap for every thread: no per-thread heap that must mmap
        (M_MMAP_MAX, 0),  # no allocation served by mmap
        (M_TRIM_THRESHOLD, NEVER),  # freed memory at the heap's top is kept
    ))


def set_for_training(backend):
    """The trainer's setting for `backend`: `keep_freed_memory()` under `BACKENDS`, else none.

    Returns:
        True if freed memory is now kept.
    """
    return backend in BACKENDS and keep_freed_memory()
