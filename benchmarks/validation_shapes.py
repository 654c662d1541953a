"""What filling up each bucket's last validation batch buys and costs, per backend.

`training/pipeline.make_dataset(fill_evaluation_batches=True)`, the trainer's setting when its
step is compiled, fills the last, partial evaluation batch of each bucket up to the bucket's
batch size with rows of padding only, so a compiled evaluation step meets one shape per bucket
instead of two. This script evaluates the main job's model (its config,
`training/configs/small_en_es.toml`, freshly initialised, seed 0) on the embedded corpus's
validation split with those batches (`filled`) and without (`as bucketed`), three passes in a
fresh process each: the first pass compiles (under TensorFlow-XLA and JAX one program per
batch shape), the later ones show the cost of the extra rows. It also prints the figures each
gives: the token means (`perplexity`, `masked_accuracy`) must agree, Keras's row-weighted
`loss` need not.

    python benchmarks/validation_shapes.py [--backends tensorflow,jax,torch] [--rounds 3]

Writes `benchmarks/results/validation_shapes.{md,json}`. Timings only; never a test.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PASSES = ("first", "second", "third")
BATCHINGS = ("as bucketed", "filled")


def measure(run_dir, batching):
    """`{batches: (count, shapes, rows), passes: [seconds, ...], figures: {...}}` of `batching`
    ("filled" or "as bucketed") under the current backend."""
    import keras

    from kerasformer.training.allocator import set_for_training

    set_for_training(keras.backend.backend())

    from kerasformer.training.config import parse_args
    from kerasformer.training.run_folder import RunFolder
    from kerasformer.training.train import compile_model, prepare_tokenizers, read_pairs, validation_dataset

    config = parse_args(["--config", os.path.join(ROOT, "training", "configs", "small_en_es.toml"),
                         "--run-dir", run_dir])
    train_pairs, validation_pairs = read_pairs(config)
    source_tokenizer, target_tokenizer = prepare_tokenizers(RunFolder(run_dir), config, train_pairs)
    model_config = config.model_config(source_tokenizer.vocabulary_size(), target_tokenizer.vocabulary_size())
    dataset = validation_dataset(validation_pairs, config, model_config, (source_tokenizer, target_tokenizer),
                                 fill_evaluation_batches=batching == "filled")
    shapes = [labels.shape for _, labels in dataset.as_numpy_iterator()]
    keras.utils.set_random_seed(0)
    model = compile_model(config, model_config)
    seconds = []
    for _ in PASSES:
        started = time.perf_counter()
        figures = model.evaluate(dataset, verbose=0, return_dict=True)
        seconds.append(round(time.perf_counter() - started, 2))
    return {"batches": (len(shapes), len(set(shapes)), sum(shape[0] for shape in shapes)), "passes": seconds,
            "figures": {key: float(value) for key, value in figures.items()}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--rounds", type=int, default=3, help="processes per backend and batching, alternating")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process: one batching's figures as JSON
    args = parser.parse_args(argv)
    if args.one:
        with tempfile.TemporaryDirectory() as run_dir:
            print("RESULT " + json.dumps(measure(run_dir, args.one)), flush=True)
        return
    from benchmarks.results import write_table

    rows, raw = [], {}
    for backend in args.backends.split(","):
        # Each batching in fresh processes (the first pass is the compilation a run pays once), in
        # turn, so a drift in the machine's load hits both alike.
        for _ in range(args.rounds):
            for name in BATCHINGS:
                child = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", name],
                                       env={**os.environ, "KERAS_BACKEND": backend}, capture_output=True, text=True)
                lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
                if child.returncode or not lines:
                    raise SystemExit(f"{backend}, {name}: exit {child.returncode}\n{child.stderr[-3000:]}")
                raw.setdefault(backend, {}).setdefault(name, []).append(json.loads(lines[-1][len("RESULT "):]))
        for name in BATCHINGS:
            results = raw[backend][name]
            batches, shapes, rows_ = results[0]["batches"]
            figures = results[0]["figures"]
            passes = [" / ".join(f"{r['passes'][i]:.2f}" for r in results) for i in range(len(PASSES))]
            rows.append([backend, name, batches, shapes, rows_, *passes,
                         f"{figures['loss']:.5f}", f"{figures['perplexity']:.4f}", f"{figures['masked_accuracy']:.5f}"])
    write_table(
        "validation_shapes", "Validation batches filled up to their bucket's size, or not", [
            "backend", "batches", "count", "shapes", "rows", "first pass s", "second pass s", "third pass s",
            "loss (Keras, row-weighted)", "perplexity", "masked accuracy"], rows,
        notes=["The main job's model (training/configs/small_en_es.toml, freshly initialised, seed 0, the "
               "trainer's jit_compile default) evaluated on the embedded validation split by `model.evaluate`, "
               "three passes in a fresh process, one process per batching and round, in turn (a cell gives "
               "each round's seconds); 'filled': each bucket's last batch filled up to the bucket's size with "
               "padding rows (`make_dataset(fill_evaluation_batches=True)`, the trainer's setting when its step "
               "is compiled, since 2026-12-06); 'as bucketed': without.",
               "The first pass compiles one program per batch shape under TensorFlow-XLA and JAX; torch runs "
               "eagerly. Perplexity and masked accuracy are token means and must not change; Keras's loss "
               "weighs each batch by its rows and may.",
               "Now and then a pass of either batching ran at about half speed under every backend (first "
               "passes of about 21 s, later ones of 1.3 s instead of 0.65 s, or 2.6 s instead of 1.3 s under "
               "torch): compare the fastest rounds."],
        extra={"raw": raw})


if __name__ == "__main__":
    main()
