"""Training-step throughput (target tokens/s): our model vs the keras.io example's
model vs a model assembled from keras-hub's layers, same process, same batch.

    KERAS_BACKEND=jax python benchmarks/train_throughput.py [--presets small,base] [--jit off,on]
    python benchmarks/train_throughput.py --backends tensorflow,jax,torch [--quick]

The three models (`kerasformer.build_seq2seq`,
`benchmarks.alternatives.keras_io_example.build_keras_io_seq2seq`,
`benchmarks.alternatives.keras_hub_layers.build_keras_hub_seq2seq`) are built
from the same preset (d_model, num_heads, d_ff, num_layers, vocabularies) and
compiled the same way: our loss (`MaskedLabelSmoothedCrossEntropy(0.1)`), the
paper's optimizer (`paper_optimizer(d_model)`), no metrics, the given
`jit_compile`. So only the model differs. Each is fed the same fixed batch
(random token ids, rows of random length padded with 0) through
`model.train_on_batch`, which runs one compiled train step (forward, loss,
backward, Adam update) and returns the loss to the host.

Timing: `--warmup` steps per model first (tracing, XLA / torch.compile; the
first step's time is reported as "first step"), then `--rounds` rounds that time
`--steps` steps of each model in turn, so drift in the machine's load hits all
three alike. A model's figure is its fastest round's time per step: other
processes on the machine only ever add time, so the fastest round is the best
estimate of the model's own cost (the medians are in the .json file). Target
tokens/s counts the non-padding labels of the batch. The ratio is ours / the
faster alternative. The process runs under the trainer's memory allocator setting
(`kerasformer.training.allocator.set_for_training`: freed memory kept under JAX and
torch), so every model's figure is what `kerasformer-train` would see. Timings only;
never a test.

`--ours-without-dropout` adds our model with dropout 0, the setting of the
keras.io example's blocks; `--ours-with-attention-dropout` adds our model with
dropout on the attention weights too, where keras-hub's layers put it (ours,
like the paper, drops sublayer outputs and embedding sums only). `--compare-fused` adds our model on its plain path
(`fused=False`: a matmul per projection, 3-D matmuls) and the ratio of the
default fused path to it: what the fused projections and 2-D views buy. `--model-only` compiles every model with
a loss of one reduction (the mean of the logits) instead of ours: the loss and its
gradient over the `(batch, length, vocabulary)` logits cost every model about the same,
which only pulls the ratio towards 1, so the ratio of the models alone bounds what the
real ratio can reach (in eager steps; a compiler may fuse the loss with the model). A model a backend cannot run is reported as "not
supported: <error>"; `--skip torch:base:on,...` leaves cells out, reported as
not run, and `--merge earlier.json` fills the table with an earlier run's cells
that this run does not measure. Under torch, jit_compile=True means
`torch.compile` of the train step.

`--backends` runs this script once per backend in a subprocess and writes one
merged table to `benchmarks/results/train_throughput.{json,md}`; a run for the
current backend alone writes `train_throughput_<backend>`.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODELS = ("ours", "keras.io example", "keras-hub layers")
ALTERNATIVES = MODELS[1:]
# keras.io's blocks have no dropout; this extra column is ours with the same.
OURS_WITHOUT_DROPOUT = "ours, dropout 0"
# keras-hub's layers drop attention weights too (the paper does not); this column is ours with the same.
OURS_ATTENTION_DROPOUT = "ours, attention dropout too"
# Our model without its fused projections and 2-D views (TransformerConfig.fused).
OURS_PLAIN = "ours, fused=False"
START_ID = 2


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", help="comma-separated; runs each in a subprocess and merges")
    parser.add_argument("--presets", default="small,base")
    parser.add_argument("--jit", default="off,on", help="jit_compile settings: off, on or off,on")
    parser.add_argument("--batch-small", type=int, default=32, help="sentences per batch for small")
    parser.add_argument("--batch-base", type=int, default=8, help="sentences per batch for base")
    parser.add_argument("--length", type=int, default=32, help="padded source and target length")
    parser.add_argument("--vocab", type=int, default=8000, help="source and target vocabulary size")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small only, 1 warm-up step, 2 rounds of 2 steps")
    parser.add_argument("--ours-without-dropout", action="store_true",
                        help=f"also time our model with dropout 0 (column '{OURS_WITHOUT_DROPOUT}')")
    parser.add_argument("--ours-with-attention-dropout", action="store_true",
                        help="also time our model with dropout on the attention weights too, keras-hub's "
                             f"placement (column '{OURS_ATTENTION_DROPOUT}')")
    parser.add_argument("--compare-fused", action="store_true",
                        help=f"also time our model's plain path (column '{OURS_PLAIN}') and the ratio fused / plain")
    parser.add_argument("--model-only", action="store_true",
                        help="compile every model with the mean of its logits as the loss: the models' own "
                             "ratio, without the cost of our loss that all share (results get '_model_only')")
    parser.add_argument("--skip", default="", metavar="BACKEND:PRESET:JIT,...",
                        help="cells to leave out, reported as not run, e.g. torch:base:on")
    parser.add_argument("--merge", metavar="JSON",
                        help="an earlier run's .json: its cells not measured now are kept in the table")
    parser.add_argument("--render", metavar="JSON", help="write the table of a results .json again, measuring nothing")
    parser.add_argument("--json-out", help=argparse.SUPPRESS)  # a subprocess's rows, for --backends
    args = parser.parse_args(argv)
    if args.quick:
        args.presets, args.warmup, args.steps, args.rounds = "small", 1, 2, 2
    return args


def fixed_batch(batch, length, vocab_size, seed=0):
    """`(inputs, labels, target_tokens)`: random ids, each row padded from a random length.

    Lengths are drawn from [length / 2, length], so masks matter; decoder input
    is [START] + target[:-1], labels are the target, 0 at padding.
    """
    rng = np.random.default_rng(seed)

    def rows(first_id):
        tokens = rng.integers(first_id, vocab_size, size=(batch, length)).astype("int32")
        for row, size in enumerate(rng.integers(length // 2, length + 1, size=batch)):
            tokens[row, size:] = 0
        return tokens

    encoder_tokens, labels = rows(3), rows(3)
    decoder_tokens = np.concatenate([np.full((batch, 1), START_ID, "int32"), labels[:, :-1]], axis=1)
    decoder_tokens[labels == 0] = 0
    inputs = {"encoder_tokens": encoder_tokens, "decoder_tokens": decoder_tokens}
    return inputs, labels, int((labels != 0).sum())


def build(name, config):
    if name in ("ours", OURS_WITHOUT_DROPOUT, OURS_ATTENTION_DROPOUT, OURS_PLAIN):
        from kerasformer import build_seq2seq

        changes = {OURS_WITHOUT_DROPOUT: {"dropout": 0.0}, OURS_ATTENTION_DROPOUT: {"attention_dropout": config.dropout},
                   OURS_PLAIN: {"fused": False}}.get(name, {})
        return build_seq2seq(config.replace(**changes))
    if name == "keras.io example":
        from benchmarks.alternatives.keras_io_example import build_keras_io_seq2seq

        return build_keras_io_seq2seq(config)
    from benchmarks.alternatives.keras_hub_layers import build_keras_hub_seq2seq

    return build_keras_hub_seq2seq(config)


def mean_of_logits(labels, logits):
    """`--model-only`'s loss: one reduction over the vocabulary, whatever the labels."""
    from keras import ops

    return ops.mean(logits, axis=-1)


def compiled(name, config, jit_compile, model_only=False, optimizer=None):
    """Model `name` built from `config` with seed 0 and compiled as every model here is: our loss
    (or `mean_of_logits` with `model_only`) and `optimizer`, the paper's Adam when not given."""
    import keras

    from kerasformer.training.loss import MaskedLabelSmoothedCrossEntropy
    from kerasformer.training.schedule import paper_optimizer

    keras.utils.set_random_seed(0)
    model = build(name, config)
    model.compile(
        optimizer=optimizer or paper_optimizer(config.d_model),
        loss=mean_of_logits if model_only else MaskedLabelSmoothedCrossEntropy(0.1),
        jit_compile=jit_compile,
    )
    return model


def short_reason(error):
    text = f"{type(error).__name__}: {error}".splitlines()[0]
    return text[:160]


def interleaved_rounds(models, inputs, labels, rounds, steps):
    """Seconds per `train_on_batch` step, `{key: [one figure per round]}`: each of `rounds`
    rounds times `steps` steps of every model in turn, so a drift in the machine's load hits
    all of them alike (the scripts here report the fastest round, or the median beside it)."""
    seconds = {key: [] for key in models}
    for _ in range(rounds):
        for key, model in models.items():
            started = time.perf_counter()
            for _ in range(steps):
                model.train_on_batch(inputs, labels)
            seconds[key].append((time.perf_counter() - started) / steps)
    return seconds


def measure(preset_name, jit_compile, args):
    """One (preset, jit_compile) cell for the current backend: a dict per model."""
    import keras

    from kerasformer import preset

    keras.backend.clear_session()  # the last cell's models and traced functions
    if jit_compile and keras.backend.backend() == "torch":
        allow_recompiles()
    config = preset(preset_name, source_vocab_size=args.vocab, target_vocab_size=args.vocab)
    batch = args.batch_small if preset_name == "small" else args.batch_base
    inputs, labels, target_tokens = fixed_batch(batch, args.length, args.vocab)
    results, models = {}, {}
    for name in model_names(args):
        result = results[name] = {"parameters": None, "first_step_s": None, "step_s": [], "error": None}
        try:
            model = compiled(name, config, jit_compile, args.model_only)
            result["parameters"] = model.count_params()
            for step in range(args.warmup):
                started = time.perf_counter()
                model.train_on_batch(inputs, labels)
                if step == 0:
                    result["first_step_s"] = time.perf_counter() - started
            models[name] = model
        except Exception as error:  # a configuration the backend cannot run: reported, not fatal
            result["error"] = short_reason(error)
            traceback.print_exc()
    for name, seconds in interleaved_rounds(models, inputs, labels, args.rounds, args.steps).items():
        results[name]["step_s"] = seconds
    for result in results.values():
        if result["step_s"]:
            result["best_step_s"] = min(result["step_s"])
            result["median_step_s"] = statistics.median(result["step_s"])
            result["tokens_per_s"] = target_tokens / result["best_step_s"]
    return {"batch": batch, "length": args.length, "target_tokens": target_tokens, "models": results}


def allow_recompiles():
    """Lets torch.compile compile every model whole. Dynamo guards a compiled frame on the
    objects it saw, so Keras's shared frames (a layer's `forward`, the train step) compile
    once per layer and per model; past `recompile_limit` (8) a frame silently runs eagerly
    from then on, for every later layer and model (on 2026-12-04 the keras.io example's
    attention and the fifth model's train step did), which would compare compiled code
    with eager code."""
    import torch._dynamo

    torch._dynamo.config.recompile_limit = 4096
    torch._dynamo.config.accumulated_recompile_limit = 65536


def model_names(args):
    return (MODELS + ((OURS_WITHOUT_DROPOUT,) if args.ours_without_dropout else ())
            + ((OURS_ATTENTION_DROPOUT,) if args.ours_with_attention_dropout else ())
            + ((OURS_PLAIN,) if args.compare_fused else ()))


def ratio_columns(names):
    """Our models besides "ours" whose ratio to the faster alternative gets a column."""
    return [name for name in (OURS_WITHOUT_DROPOUT, OURS_ATTENTION_DROPOUT) if name in names]


def fused_ratio(models):
    """Our default (fused) path's tokens/s over the plain path's, as text."""
    fused, plain = models["ours"].get("tokens_per_s"), models.get(OURS_PLAIN, {}).get("tokens_per_s")
    if not (fused and plain):
        return "n/a"
    return f"{fused / plain:.2f}" + (" (unsteady)" if unsteady(models["ours"]) or unsteady(models[OURS_PLAIN]) else "")


def run_backend(args):
    import keras

    backend = keras.backend.backend()
    cells = []
    for preset_name in args.presets.split(","):
        for jit in args.jit.split(","):
            jit_compile = {"off": False, "on": True}[jit]
            if f"{backend}:{preset_name}:{jit}" in args.skip.split(","):
                cells.append({"backend": backend, "preset": preset_name, "jit_compile": jit_compile,
                              "batch": None, "length": args.length, "target_tokens": None, "skipped": True,
                              "models": {name: {"parameters": None, "first_step_s": None, "step_s": [],
                                                "error": None} for name in model_names(args)}})
                continue
            print(f"[{backend}] {preset_name}, jit_compile={jit_compile} ...", file=sys.stderr, flush=True)
            cells.append({"backend": backend, "preset": preset_name, "jit_compile": jit_compile,
                          **measure(preset_name, jit_compile, args)})
    return cells


def unsteady(result):
    """Rounds more than 2x apart: the figure says little (a loaded machine, recompilation)."""
    steps = result.get("step_s") or []
    return bool(steps) and max(steps) > 2 * min(steps)


def cell_text(result):
    if result is None:
        return "not in that run"  # a merged row measured before this model had a column
    if not result["step_s"] and not result["error"]:
        return "not run (--skip)"
    if result["error"]:
        return f"not supported: {result['error']}"
    text = f"{result['tokens_per_s']:,.0f} ({1000 * result['best_step_s']:.0f} ms)"
    if unsteady(result):
        text += f" unsteady: rounds {min(result['step_s']):.1f}-{max(result['step_s']):.1f} s"
    return text


def ratio(models, name):
    """`name`'s tokens/s over the faster alternative's, as text."""
    alternatives = [models[other].get("tokens_per_s") for other in ALTERNATIVES]
    alternatives = [value for value in alternatives if value]
    ours = models.get(name, {}).get("tokens_per_s")
    if not (ours and alternatives):
        return "n/a"
    shaky = any(unsteady(models[model]) for model in (name, *ALTERNATIVES))
    return f"{ours / max(alternatives):.2f}" + (" (unsteady)" if shaky else "")


def table_rows(cells, names):
    rows = []
    for cell in cells:
        models = cell["models"]
        rows.append([
            cell["backend"], cell["preset"], "on" if cell["jit_compile"] else "off",
            f"{cell['batch']} x {cell['length']} ({cell['target_tokens']})" if cell["batch"] else "",
            *(cell_text(models.get(name)) for name in names), ratio(models, "ours"),
            *(ratio(models, name) for name in ratio_columns(names)),
            *((fused_ratio(models),) if OURS_PLAIN in names else ()),
        ])
    return rows


def write(cells, args, name, merged_settings=None, env=None):
    from benchmarks.results import write_table

    parameters = {}
    for cell in cells:
        for model, result in cell["models"].items():
            if result["parameters"]:
                parameters[f"{cell['preset']}/{model}"] = result["parameters"]
    first_steps = [
        f"{c['backend']}/{c['preset']}/jit {'on' if c['jit_compile'] else 'off'}: "
        + ", ".join(f"{m} {r['first_step_s']:.1f} s" for m, r in c["models"].items() if r["first_step_s"])
        for c in cells if not c.get("skipped")
    ]
    notes = [
        "Target tokens/s of `model.train_on_batch` (forward, loss, backward, Adam update) on one fixed "
        "batch; in brackets the time per step of the fastest of "
        f"{args.rounds} interleaved rounds of {args.steps} steps, after {args.warmup} warm-up steps "
        "(the machine is shared: other processes only add time; medians in the .json).",
        "Same for all three models: preset sizes, batch and padding, loss "
        + ("the mean of the logits (`--model-only`: the models alone, without the cost of our loss that all "
           "share; with our loss, where it adds the same time to each step, the ratio lies between this one "
           "and 1)" if args.model_only else "`MaskedLabelSmoothedCrossEntropy(0.1)`")
        + ", optimizer `paper_optimizer(d_model)`, no metrics, jit_compile; "
        f"vocabularies {args.vocab}; float32.",
        "keras.io example: `benchmarks/alternatives/keras_io_example.py` (learned positions, no dropout but "
        "0.5 before the output layer, untied output layer, head width d_model / h; the published example uses "
        "head width d_model). keras-hub layers: `benchmarks/alternatives/keras_hub_layers.py` (the preset's "
        "dropout on sublayer outputs, embedding sums and attention weights). Ours: the preset's dropout where the "
        "paper puts it, sublayer outputs and embedding sums (TransformerConfig `dropout`; `attention_dropout` "
        "and `activation_dropout` 0).",
        "Ratio: ours / the faster alternative (target: >= 1.2)."
        + (f" '{OURS_WITHOUT_DROPOUT}': our model with dropout 0, as the keras.io example's blocks "
           "(which have none), and its ratio to the faster alternative." if args.ours_without_dropout else "")
        + (f" '{OURS_ATTENTION_DROPOUT}': our model with the preset's dropout on the attention weights too, "
           "keras-hub's placement, and its ratio." if args.ours_with_attention_dropout else "")
        + (f" '{OURS_PLAIN}': our model on its plain path (a matmul per attention projection, 3-D matmuls); "
           "'fused / plain': what the fused projections and 2-D views buy (same weights' shapes, same function)."
           if args.compare_fused else ""),
        "Parameters: " + ", ".join(f"{k} {v:,}" for k, v in parameters.items()) + ".",
        "First step (trace/compile + 1 step): " + "; ".join(first_steps) + ".",
        "Unsteady: the model's rounds were more than 2x apart (machine load, recompilation); "
        "its figure and ratio say little.",
    ]
    older = sorted({(c["measured"], f"{c['backend']}/{c['preset']}/jit {'on' if c['jit_compile'] else 'off'}",
                     c.get("machine", "machine not recorded")) for c in cells if c.get("measured")})
    if older:
        notes.append("Rows measured in an earlier run (`--merge`), with its settings (`settings_of_merged_run` in the "
                     ".json): " + "; ".join(f"{row} on {date} ({machine})" for date, row, machine in older)
                     + ". Compare ratios within a row, not figures across runs.")
    names = model_names(args)
    columns = ["backend", "preset", "jit_compile", "batch x length (target tokens)",
               *(f"{name} tokens/s (ms/step)" for name in names), "ratio",
               *(f"ratio, {name}" for name in ratio_columns(names)),
               *(("fused / plain",) if args.compare_fused else ())]
    extra = {"settings": vars(args), "cells": cells}
    if args.merge:
        with open(args.merge, encoding="utf-8") as handle:
            merged_settings = json.load(handle)["settings"]
    if merged_settings:
        extra["settings_of_merged_run"] = merged_settings
    write_table(name, "Training-step throughput: ours vs keras.io example vs keras-hub layers",
                columns, table_rows(cells, names), notes, extra=extra, env=env)


def merged(cells, path):
    """`cells` plus the cells of the earlier run in `path` that `cells` does not
    replace (a skipped cell replaces nothing)."""
    with open(path, encoding="utf-8") as handle:
        record = json.load(handle)
    # Each kept cell keeps the date and machine it was measured on: the table's own are this run's.
    # (a cell that was itself merged into that run already has them).
    earlier = [cell if "measured" in cell else {"measured": record["date"], "machine": record["machine"], **cell}
               for cell in record["cells"]]
    key = lambda cell: (cell["backend"], cell["preset"], cell["jit_compile"])  # noqa: E731
    new = {key(cell): cell for cell in cells if not cell.get("skipped")}
    kept = [new.pop(key(cell), cell) for cell in earlier]
    return kept + list(new.values())


SWITCHES = ("ours_without_dropout", "ours_with_attention_dropout", "compare_fused", "model_only")  # store_true flags


def run_backends(args):
    cells = []
    for backend in args.backends.split(","):
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
            out = handle.name
        child = [f"--{key.replace('_', '-')}={value}" for key, value in vars(args).items()
                 if key not in ("backends", "quick", "json_out", *SWITCHES, "merge", "render")]
        child += [f"--{key.replace('_', '-')}" for key in SWITCHES if getattr(args, key)]
        env = {**os.environ, "KERAS_BACKEND": backend}
        print(f"=== KERAS_BACKEND={backend} ===", file=sys.stderr, flush=True)
        code = subprocess.call([sys.executable, os.path.abspath(__file__), *child, "--json-out", out], env=env)
        if code:
            print(f"{backend}: subprocess exited with {code}", file=sys.stderr)
        try:
            with open(out, encoding="utf-8") as handle:
                cells += json.load(handle)
        except (OSError, ValueError):
            pass
        os.unlink(out)
    write(merged(cells, args.merge) if args.merge else cells, args, results_name("train_throughput", args))


def results_name(name, args):
    """The results' file name: `--model-only` runs get their own."""
    return name + ("_model_only" if args.model_only else "")


def render(path):
    """The table of an earlier run, written again from its .json (e.g. after a format change)."""
    with open(path, encoding="utf-8") as handle:
        record = json.load(handle)
    args = argparse.Namespace(**{**vars(parse_args([])), **record["settings"], "render": None})
    name = os.path.splitext(os.path.basename(path))[0]
    env = {key: record[key] for key in ("date", "machine", "python", "versions")}
    write(record["cells"], args, name, merged_settings=record.get("settings_of_merged_run"), env=env)


def main(argv=None):
    args = parse_args(argv)
    if args.render:
        render(args.render)
        return
    if args.backends:
        run_backends(args)
        return
    import keras

    from kerasformer.training.allocator import set_for_training

    set_for_training(keras.backend.backend())  # as kerasformer-train does, before any model
    cells = run_backend(args)
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as handle:
            json.dump(cells, handle)
    else:
        write(cells, args, results_name(f"train_throughput_{cells[0]['backend']}", args))


if __name__ == "__main__":
    main()
