"""The main job's trainer with and without a compiled training step, one after the other.

    python benchmarks/trainer_jit.py [--minutes 4] [--backend tensorflow] [--settings off,on,off,on]
    python benchmarks/trainer_jit.py --settings tensorflow:on,jax:on    # the main job per backend (their defaults)

`train_throughput.py` times `train_on_batch` on one fixed batch; the trainer meets a batch
shape per length bucket (up to 12 under the main job's settings), and a compiled step
(`jit_compile`: XLA under TensorFlow, `jax.jit` under JAX) compiles a program for each new
shape inside the budget, while TensorFlow's uncompiled graph is traced twice and then reused
for every shape (benchmarks/README.md, "What the main job gave"). Whether compiling pays for itself in a
budget is therefore a question for the trainer, not for a fixed batch: this script runs
`python -m kerasformer.training.train --config training/configs/small_en_es.toml
--time-budget-minutes M --jit-compile|--no-jit-compile` for each setting in `--settings`, in
that order (repeat a setting to interleave rounds), each in a fresh run folder that gets the
SentencePiece models of the first run (so every run trains the same batches), and prints
steps, target tokens/s (metrics.json `train_tokens_per_second`: from the end of the first
step to the end of training, validation left out; compiling later bucket shapes counts) and
each setting's tokens/s over the first setting's. A setting may name its backend
(`jax:on`): each backend then runs with its own default, side by side, which is how the main
job under JAX (compiled, its default) is compared with the main job under TensorFlow.

Compare only figures of one run; the table names the machine and date. Never a test.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CONFIG = os.path.join(ROOT, "training", "configs", "small_en_es.toml")
SETTINGS = {"off": "--no-jit-compile", "on": "--jit-compile"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--minutes", type=float, default=4, help="training minutes of each run")
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "tensorflow"),
                        help="KERAS_BACKEND of the trainer")
    parser.add_argument("--settings", default="off,on,off,on",
                        help="jit_compile of each run, in order: off or on, comma-separated; "
                             "BACKEND:off or BACKEND:on runs that one under KERAS_BACKEND=BACKEND")
    parser.add_argument("--work-dir", default=os.path.join(ROOT, "runs", "trainer-jit"),
                        help="run folders and logs")
    parser.add_argument("--out", default="trainer_jit", help="name of the results in benchmarks/results/")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: write the table again from the run folders of an earlier run "
                             "with the same --settings and --work-dir")
    args = parser.parse_args(argv)
    from kerasformer import BACKENDS  # here, not at the top: it imports Keras

    args.settings = [setting.strip() for setting in args.settings.split(",")]
    parsed = {setting: split_setting(setting, args.backend) for setting in args.settings}
    unknown = [setting for setting, (backend, jit) in parsed.items() if jit not in SETTINGS or backend not in BACKENDS]
    if unknown:
        parser.error(f"--settings: {unknown}: each must be one of {sorted(SETTINGS)}, "
                     f"optionally after BACKEND: with BACKEND one of {BACKENDS}")
    from kerasformer.training.config import check_jit_compile

    for setting, (backend, jit) in parsed.items():  # the trainer's own rule, before any run starts
        try:
            check_jit_compile(backend, jit == "on")
        except ValueError as error:
            parser.error(f"--settings: {setting!r}: {error}")
    return args


def split_setting(setting, default_backend):
    """("jax", "on") for "jax:on"; (default_backend, "on") for "on"."""
    backend, _, jit = setting.rpartition(":")
    return backend or default_backend, jit


# The progress line that ends an epoch: "epoch 2/1000: 1089/1089 steps in 1:35, ..., 10225 tokens/s".
EPOCH_END = re.compile(r"epoch (\d+)/\d+: (\d+)/\d+ steps in [\d:]+,.* val_loss ([\d.]+),.* (\d+) tokens/s$")


def run_trainer(args, index, setting, tokenizers):
    """One budgeted run; returns its record and the folder of its SentencePiece models."""
    backend, jit = split_setting(setting, args.backend)
    run_dir = os.path.join(args.work_dir, f"{index}-{setting.replace(':', '-')}")
    log = run_dir + ".log"
    wall = None
    if not args.report_only:
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: an old folder would resume
        if tokenizers:
            shutil.copytree(tokenizers, os.path.join(run_dir, "tokenizers"))
        command = [sys.executable, "-m", "kerasformer.training.train", "--config", CONFIG, "--run-dir", run_dir,
                   "--time-budget-minutes", f"{args.minutes:g}", SETTINGS[jit], "--log-level", "info"]
        print(f"run {index} ({setting}): {args.minutes:g} min, KERAS_BACKEND={backend}; log {log}",
              file=sys.stderr, flush=True)
        started = time.monotonic()
        with open(log, "w", encoding="utf-8") as file:
            file.write("$ " + " ".join(command) + "\n")
            file.flush()
            code = subprocess.call(command, cwd=ROOT, stdout=file, stderr=subprocess.STDOUT,
                                   env={**os.environ, "KERAS_BACKEND": backend})
        if code:
            raise RuntimeError(f"the trainer exited with {code}; see {log}")
        wall = round(time.monotonic() - started, 1)
    with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as file:
        metrics = json.load(file)
    with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as file:
        resolved = json.load(file)
    # Each completed epoch's own tokens/s from the progress log: the first epoch holds the
    # compilations of a compiled step, the later ones show its steady pace.
    # The last epoch may be one the budget cut short; it is validated too (metrics.json's
    # history keeps whole epochs only), so its validation loss counts for the best.
    epochs, val_losses = [], []
    with open(log, encoding="utf-8") as file:
        for line in file:
            match = EPOCH_END.search(line.strip())
            if match and match.group(2) != "0":
                epochs.append(int(match.group(4)))
                val_losses.append(float(match.group(3)))
    record = {
        "setting": setting,
        "backend": backend,
        "jit_compile": resolved.get("train", resolved).get("jit_compile"),
        "steps": metrics["total_steps"],
        "tokens_per_second": metrics["train_tokens_per_second"],
        "epoch_tokens_per_second": epochs,
        "measured_seconds": metrics["train_seconds"],
        "best_val_loss": min(val_losses) if val_losses else None,
        "wall_seconds": wall if wall is not None else metrics.get("wall_seconds"),
        "log": os.path.relpath(log, ROOT),
    }
    print(f"  {record['steps']} steps, {record['tokens_per_second']:,.0f} target tokens/s", file=sys.stderr)
    return record, os.path.join(run_dir, "tokenizers")


def main(argv=None):
    from benchmarks.results import write_table

    args = parse_args(argv)
    os.makedirs(args.work_dir, exist_ok=True)
    records, tokenizers = [], None
    for index, setting in enumerate(args.settings):
        record, folder = run_trainer(args, index, setting, tokenizers)
        tokenizers = tokenizers or folder
        records.append(record)
    first = args.settings[0]
    baseline = sum(r["tokens_per_second"] for r in records if r["setting"] == first) / args.settings.count(first)
    rows = [[i, r["setting"], f"{r['steps']:,}", f"{r['tokens_per_second']:,.0f}",
             f"{r['tokens_per_second'] / baseline:.2f}",
             ", ".join(f"{t:,}" for t in r["epoch_tokens_per_second"]),
             "" if r["best_val_loss"] is None else f"{r['best_val_loss']:.3f}"] for i, r in enumerate(records)]
    backends = sorted({r["backend"] for r in records})
    notes = [
        f"The main job's config (training/configs/small_en_es.toml) under KERAS_BACKEND={'/'.join(backends)} "
        "(a setting's prefix names its backend), "
        f"{args.minutes:g} minutes each, one run after another in this order, the same SentencePiece models.",
        "jit_compile off: TensorFlow's graph (traced twice, then one shape-relaxed graph for every bucket), "
        "JAX op by op; on: XLA under TensorFlow, jax.jit under JAX, one program per bucket shape, compiled "
        "inside the budget.",
        "tokens/s: metrics.json train_tokens_per_second (after the first step, validation left out). "
        f"Ratio: over the mean of the '{first}' runs. Per epoch: the tokens/s the progress log prints at the "
        "end of each epoch (the first holds a compiled step's compilations; the last may be one the budget cut short).",
        f"`python benchmarks/trainer_jit.py --minutes {args.minutes:g} --backend {args.backend} "
        f"--settings {','.join(args.settings)}`",
    ]
    title = "The main job's trainer with and without a compiled step" if len(backends) == 1 else \
        f"The main job's trainer under {' and '.join(backends)}"
    write_table(args.out, title,
                ["run", "jit_compile" if len(backends) == 1 else "backend:jit_compile", "steps", "target tokens/s", f"ratio to '{first}'",
                 "per epoch", "best val loss"],
                rows, notes, extra={"runs": records, "minutes": args.minutes, "backend": args.backend})


if __name__ == "__main__":
    main()
