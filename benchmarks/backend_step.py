"""The main job's training step under each backend, as `model.fit` runs it, bucket shape by bucket shape.

    python benchmarks/backend_step.py [--settings tensorflow,jax,torch] [--lengths 8,16,32,64,96] [--rounds 2]
    python benchmarks/backend_step.py --settings tensorflow,jax,tensorflow:TF_NUM_INTEROP_THREADS=1
    python benchmarks/backend_step.py --settings jax,jax:ALLOCATOR=glibc,torch,torch:ALLOCATOR=glibc

`trainer_jit.py` runs the whole trainer for minutes and reports what a budget buys, compiling
included; this script isolates the steady step. Each setting names a backend and, after `:`,
environment variables for its process (`jax:XLA_FLAGS=--xla_cpu_enable_fast_math=true`, several
joined by `:`). Its child process builds and compiles the model exactly as the main job does
(`training/configs/small_en_es.toml`, `kerasformer.training.train.compile_model`: the backend's own
`jit_compile` default, the budget schedule's optimizer, the memory allocator setting of
`kerasformer.training.allocator.set_for_training`; `ALLOCATOR=glibc` in a setting leaves glibc's
default, `ALLOCATOR=kept` keeps freed memory under any backend), and for each padded length L of the main
job's length buckets (`kerasformer.training.pipeline`: batch_tokens // L pairs, L tokens a side)
fits `--warmup` steps on one fixed batch of random ids (compiling that shape), then times `--steps`
more with `model.fit` (what the trainer calls: no `train_on_batch`, whose per-call state sync under
JAX the trainer does not pay), from the end of a first extra step to the end of the last, with a
callback that reads each step's loss as the trainer's callbacks do. The settings run one after
another, `--rounds` times in turn, so drift in the machine's load hits all alike; a setting's figure
per shape is its fastest round (other processes only add time), beside the page faults a step took
(the process's minor faults over the timed steps, mean over shapes and rounds). Ratio: the first setting's mean
ms/step over this one's, so above 1 is faster than the first.

Compare only figures of one run; the table names the machine and date. Never a test.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CONFIG = os.path.join(ROOT, "training", "configs", "small_en_es.toml")

# A setting's ALLOCATOR: the trainer's own (`set_for_training`), freed memory kept under any
# backend, or glibc's default.
ALLOCATORS = ("trainer", "kept", "glibc")


def parse_setting(setting):
    """("jax", {"XLA_FLAGS": "--a=b"}) for "jax:XLA_FLAGS=--a=b"; ValueError names what is wrong."""
    from kerasformer import BACKENDS

    backend, *assignments = setting.split(":")
    if backend not in BACKENDS:
        raise ValueError(f"{setting!r}: the backend must be one of {BACKENDS}")
    env = {}
    for assignment in assignments:
        name, equals, value = assignment.partition("=")
        name = name.strip()
        if not equals or not name:
            raise ValueError(f"{setting!r}: {assignment!r} is not NAME=VALUE")
        env[name] = value
    if env.get("ALLOCATOR", "trainer") not in ALLOCATORS:
        raise ValueError(f"{setting!r}: ALLOCATOR must be one of {ALLOCATORS}")
    return backend, env


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--settings", default=None,
                        help="comma-separated BACKEND[:NAME=VALUE...], each timed in its own process")
    parser.add_argument("--lengths", default="8,16,32,64,96",
                        help="padded lengths of the main job's buckets to time (8, 16, ..., max length)")
    parser.add_argument("--warmup", type=int, default=10, help="steps per shape before timing (compiling)")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per shape and round")
    parser.add_argument("--rounds", type=int, default=2, help="times each setting runs, in turn")
    parser.add_argument("--out", default="backend_step", help="name of the results in benchmarks/results/")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from kerasformer import BACKENDS  # here, not at the top: it imports Keras

    given = args.settings if args.settings is not None else ",".join(BACKENDS)
    args.settings = [setting.strip() for setting in given.split(",") if setting.strip()]
    if not args.settings:
        parser.error(f"--settings {given!r}: name at least one BACKEND[:NAME=VALUE...]")
    repeated = sorted({setting for setting in args.settings if args.settings.count(setting) > 1})
    if repeated:
        parser.error(f"--settings: {repeated} given more than once; use --rounds to time a setting again")
    try:  # each setting's (backend, environment), parsed once
        args.environments = {setting: parse_setting(setting) for setting in args.settings}
    except ValueError as error:
        parser.error(f"--settings: {error}")
    try:
        args.lengths = [int(length) for length in args.lengths.split(",")]
    except ValueError:
        parser.error(f"--lengths {args.lengths!r}: comma-separated whole numbers, e.g. 8,16,32")
    for name in ("warmup", "steps", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, not {getattr(args, name)}")
    return args


def shapes(config, lengths):
    """(padded length, pairs per batch) of the main job's buckets at the given lengths."""
    from kerasformer.training.pipeline import bucket_batch_sizes, bucket_boundaries

    model_config = config.model_config(config.vocabulary_size, config.vocabulary_size)
    max_length = max(model_config.max_source_length, model_config.max_target_length)
    padded = [boundary - 1 for boundary in bucket_boundaries(max_length)]
    sizes = dict(zip(padded, bucket_batch_sizes(max_length, config.batch_tokens, 1)))
    unknown = [length for length in lengths if length not in sizes]
    if unknown:
        raise SystemExit(f"--lengths {unknown}: the main job's buckets pad to {padded}")
    return [(length, sizes[length]) for length in lengths]


def step_clock():
    import keras

    class StepClock(keras.callbacks.Callback):
        """`seconds` from the end of the first step to the end of the last and the `steps`
        between: `fit`'s setup left out. Like the trainer's own callbacks it reads each step's
        loss, which waits for the step (under JAX a step otherwise returns before it is done)."""

        start, steps, seconds, page_faults = None, 0, 0.0, 0

        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])
            now, faults = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            if self.start is None:
                self.start, self.first_faults = now, faults
            else:
                self.steps += 1
                self.seconds, self.page_faults = now - self.start, faults - self.first_faults

    return StepClock


def fixed_batches(rng, vocabulary, batch, length, steps):
    """`steps` copies of one random batch of `batch` x `length` ids, as `fit`'s (inputs, labels);
    ids from 4 on (0-3 are padding and the special tokens)."""
    import numpy as np

    def ids():
        return np.tile(rng.integers(4, vocabulary, (batch, length)).astype("int32"), (steps, 1))

    return {"encoder_tokens": ids(), "decoder_tokens": ids()}, ids()


def child(args):
    """Times the step of each shape in this process's backend; prints one JSON line."""
    import keras
    import numpy as np

    from kerasformer.training.allocator import keep_freed_memory, set_for_training
    from kerasformer.training.config import parse_args as parse_train_args
    from kerasformer.training.train import compile_model

    kept = {"trainer": lambda: set_for_training(keras.backend.backend()), "kept": keep_freed_memory,
            "glibc": lambda: False}[os.environ.get("ALLOCATOR", "trainer")]()
    StepClock = step_clock()
    config = parse_train_args(["--config", CONFIG])
    vocabulary = config.vocabulary_size
    model = compile_model(config, config.model_config(vocabulary, vocabulary))
    rng = np.random.default_rng(0)
    result = {}
    for length, batch in shapes(config, args.lengths):
        inputs, labels = fixed_batches(rng, vocabulary, batch, length, args.warmup)
        started = time.perf_counter()
        model.fit(inputs, labels, batch_size=batch, epochs=1, verbose=0, shuffle=False)
        warmup = time.perf_counter() - started
        inputs, labels = fixed_batches(rng, vocabulary, batch, length, args.steps + 1)
        clock = StepClock()
        model.fit(inputs, labels, batch_size=batch, epochs=1, verbose=0, shuffle=False, callbacks=[clock])
        result[str(length)] = {"batch": batch, "ms_per_step": clock.seconds / clock.steps * 1e3,
                               "page_faults_per_step": clock.page_faults / clock.steps, "warmup_seconds": warmup}
    print(json.dumps({"backend": keras.backend.backend(), "freed_memory_kept": kept, "shapes": result}))


def run_setting(args, setting):
    backend, env = args.environments[setting]
    command = [sys.executable, os.path.abspath(__file__), "--child", "--lengths", ",".join(map(str, args.lengths)),
               "--warmup", str(args.warmup), "--steps", str(args.steps)]
    print(f"{setting}: timing {len(args.lengths)} shapes", file=sys.stderr, flush=True)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env, "KERAS_BACKEND": backend})
    if done.returncode:
        raise RuntimeError(f"{setting}: the child exited with {done.returncode}:\n{done.stderr[-3000:]}")
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise RuntimeError(f"{setting}: the child printed no result line; its output ended with:\n"
                           f"{done.stdout[-1000:]}{done.stderr[-2000:]}") from None


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        child(args)
        return
    from benchmarks.results import write_table
    from kerasformer.training.config import parse_args as parse_train_args

    shapes(parse_train_args(["--config", CONFIG]), args.lengths)  # refuses a length the buckets lack, before timing
    rounds = {setting: [] for setting in args.settings}
    for _ in range(args.rounds):
        for setting in args.settings:
            rounds[setting].append(run_setting(args, setting))
    best = {setting: {length: min(r["shapes"][str(length)]["ms_per_step"] for r in runs) for length in args.lengths}
            for setting, runs in rounds.items()}
    mean = {setting: sum(values.values()) / len(values) for setting, values in best.items()}
    first = args.settings[0]
    batches = rounds[first][0]["shapes"]
    faults = {setting: statistics.mean(r["shapes"][str(length)]["page_faults_per_step"]
                                       for r in runs for length in args.lengths) for setting, runs in rounds.items()}
    rows = [[setting, *(f"{best[setting][length]:.1f}" for length in args.lengths), f"{mean[setting]:.1f}",
             f"{mean[first] / mean[setting]:.2f}", f"{faults[setting]:,.0f}"] for setting in args.settings]
    notes = [
        "The main job's model and compile (training/configs/small_en_es.toml, "
        "kerasformer.training.train.compile_model, each backend's default jit_compile) in one process per "
        "setting; `model.fit` on one fixed batch of random ids "
        f"per bucket shape (L tokens a side, batch_tokens // L pairs): {args.warmup} steps to compile, then "
        f"{args.steps} timed (after one more, fit's setup left out); the fastest of {args.rounds} rounds, "
        "the settings in turn.",
        f"Ratio: the mean ms/step of '{first}' over the setting's (above 1: faster than '{first}').",
        f"`python benchmarks/backend_step.py --settings {','.join(args.settings)} "
        f"--lengths {','.join(map(str, args.lengths))} --steps {args.steps} --rounds {args.rounds}`",
    ]
    write_table(args.out, "The main job's training step per bucket shape and backend (ms per step)",
                ["setting", *(f"L {length} x {batches[str(length)]['batch']}" for length in args.lengths),
                 "mean", f"ratio to '{first}'", "page faults a step"],
                rows, notes, extra={"rounds": rounds})


if __name__ == "__main__":
    main()
