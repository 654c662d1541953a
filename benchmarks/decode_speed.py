"""Greedy decoding speed: our cached loop (Python API and exported SavedModel) vs the
TensorFlow tutorial's uncached loop vs keras-hub's cached decoding, same process.

    KERAS_BACKEND=tensorflow python -m benchmarks.decode_speed [--quick] [--lengths 32,128] [--batches 1,32]
        [--compare-fused]

Sizes are the tutorial's by default (4 + 4 layers, d_model 128, 8 heads, d_ff 512,
vocabularies of 8000), random weights (speed does not depend on them), a random
source of `--source-length` tokens, TensorFlow backend. Every variant generates
exactly `length` tokens per row: ours and the tutorial loop get an [END] id the
model never predicts, keras-hub's sampler gets no stop token.

    ours, Python API, XLA       kerasformer.training.translator.compile_for_backend(greedy_decode): what
                                Translator runs, tf.function(jit_compile=True) by default
    ours, Python API, no XLA    the same with jit_compile=False
    ours, exported SavedModel   greedy_decode in a tf.function with the export's input signature
                                (tokens, max_length), saved, loaded with tf.saved_model.load; no XLA,
                                as the stock model server runs it; its graph is checked free of Xla* ops
    ours, exported, XLA         the same traced with jit_compile=True: the option for a model server
                                started with --xla_cpu_compilation_enabled=true
    uncached (tutorial loop)    benchmarks.alternatives.tutorial_loop: the model re-run on the prefix
    keras-hub cached            benchmarks.alternatives.keras_hub_layers: keras-hub layers,
                                BartSeq2SeqLM's cached decoding, GreedySampler; tf.function,
                                and tf.function(jit_compile=True) as keras-hub's generate() compiles it
    ..., fused=False            with --compare-fused: the Python API rows again for the same weights
                                on the model's plain path (TransformerConfig.fused=False); the column
                                "fused buys" is their time over the fused row's

Ours, the export and the tutorial loop share one model and must return the same
tokens (asserted); keras-hub's model has its own weights. The first call (tracing,
XLA compilation) is timed apart; then `--repeats` rounds run every variant in turn
(a fast one several times per round), so a busy machine slows all of them alike,
and the table shows the fastest call: on a small machine shared with other work,
the least disturbed one (the JSON keeps every call).
Writes benchmarks/results/decode_speed.{json,md} (`--quick`: decode_speed_quick).
Timings only; never a test.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # also runnable as `python benchmarks/decode_speed.py`
    sys.path.insert(0, ROOT)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.alternatives.keras_hub_layers import build_keras_hub_seq2seq, greedy_generate  # noqa: E402
from benchmarks.alternatives.tutorial_loop import tutorial_greedy_decode  # noqa: E402
from benchmarks.results import write_table  # noqa: E402
from kerasformer.export.serving_ops import check_servable_ops  # noqa: E402
from kerasformer import TransformerConfig, build_seq2seq  # noqa: E402
from kerasformer.decoding import greedy_decode  # noqa: E402
from kerasformer.training.translator import compile_for_backend  # noqa: E402

START_ID, NEVER = 2, -1
# The TensorFlow tutorial's model (tensorflow/text docs/tutorials/transformer.ipynb).
TUTORIAL = dict(num_layers=4, d_model=128, num_heads=8, d_ff=512, source_vocab_size=8000,
                target_vocab_size=8000, dropout=0.1)

OURS_XLA, OURS = "ours, Python API, XLA", "ours, Python API, no XLA"
EXPORT, EXPORT_XLA = "ours, exported SavedModel", "ours, exported, XLA"
UNCACHED, HUB, HUB_XLA = "uncached (tutorial loop)", "keras-hub cached", "keras-hub cached, XLA"
OURS_XLA_PLAIN, OURS_PLAIN = f"{OURS_XLA}, fused=False", f"{OURS}, fused=False"
# Which keras-hub row each of ours is compared with: the same compilation mode.
SAME_MODE = {OURS_XLA: HUB_XLA, OURS: HUB, EXPORT: HUB, EXPORT_XLA: HUB_XLA, OURS_XLA_PLAIN: HUB_XLA, OURS_PLAIN: HUB}
# Which plain-path row each fused row is compared with.
PLAIN_OF = {OURS_XLA: OURS_XLA_PLAIN, OURS: OURS_PLAIN}


def exported_decode(model, folder, jit_compile=False):
    """Our greedy loop saved as the export saves it and loaded back: a function
    `(encoder_tokens, length) -> tokens`."""
    module = tf.Module()
    module.model_variables = [v.value for v in model.variables]  # as kerasformer.export.translation_module tracks them
    module.decode = tf.function(
        lambda tokens, max_length: greedy_decode(model, tokens, START_ID, NEVER, max_length),
        input_signature=[tf.TensorSpec([None, None], tf.int32, name="tokens"),
                         tf.TensorSpec([], tf.int32, name="max_length")],
        jit_compile=jit_compile,
    )
    path = os.path.join(folder, "decode_xla" if jit_compile else "decode")
    tf.saved_model.save(module, path, signatures={"decode": module.decode})
    if not jit_compile:
        check_servable_ops(path)  # no Xla* op: the stock model server can run it without XLA
    loaded = tf.saved_model.load(path)
    signature = loaded.signatures["decode"]

    def decode(encoder_tokens, length):
        return signature(tokens=encoder_tokens, max_length=tf.constant(length))["output_0"]

    decode.keep_alive = loaded  # the signature needs the loaded object's variables
    return decode


def variants(model, hub_model, length, export, export_xla, plain_model=None):
    """name -> function `encoder_tokens -> (batch, length) tokens`, for one output length."""
    decode = lambda tokens: greedy_decode(model, tokens, START_ID, NEVER, length)  # noqa: E731
    generate = lambda tokens: greedy_generate(hub_model, tokens, START_ID, length)  # noqa: E731
    functions = {
        OURS_XLA: compile_for_backend(decode),
        OURS: compile_for_backend(decode, jit_compile=False),
        EXPORT: lambda tokens: export(tokens, length),
        EXPORT_XLA: lambda tokens: export_xla(tokens, length),
        UNCACHED: tutorial_greedy_decode(model, START_ID, NEVER, length),
        HUB: tf.function(generate),
        HUB_XLA: tf.function(generate, jit_compile=True),
    }
    if plain_model is not None:
        decode_plain = lambda tokens: greedy_decode(plain_model, tokens, START_ID, NEVER, length)  # noqa: E731
        functions[OURS_XLA_PLAIN] = compile_for_backend(decode_plain)
        functions[OURS_PLAIN] = compile_for_backend(decode_plain, jit_compile=False)
    return functions


def measure(functions, inputs, repeats, round_seconds=1.0):
    """(first-call seconds, every timed call's seconds, tokens) per name.

    Each of `repeats` rounds runs every function in turn, a fast one several
    times (about `round_seconds` worth), so that all get enough samples and
    a busy spell of the machine hits all of them alike.
    """
    first, outputs, times, calls = {}, {}, {name: [] for name in functions}, {}
    for name, function in functions.items():
        start = time.perf_counter()
        outputs[name] = np.asarray(function(inputs))
        first[name] = time.perf_counter() - start
        start = time.perf_counter()
        np.asarray(function(inputs))
        times[name].append(time.perf_counter() - start)
        calls[name] = min(20, max(1, int(round_seconds / times[name][0])))
    for _ in range(repeats):
        for name, function in functions.items():
            for _ in range(calls[name]):
                start = time.perf_counter()
                np.asarray(function(inputs))
                times[name].append(time.perf_counter() - start)
    return {name: (first[name], times[name], outputs[name]) for name in functions}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="length 32 only, 2 rounds; writes decode_speed_quick")
    parser.add_argument("--lengths", default="32,128", help="output lengths, comma-separated")
    parser.add_argument("--batches", default="1,32", help="batch sizes, comma-separated")
    parser.add_argument("--source-length", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--num-layers", type=int, default=TUTORIAL["num_layers"])
    parser.add_argument("--d-model", type=int, default=TUTORIAL["d_model"])
    parser.add_argument("--compare-fused", action="store_true",
                        help="also decode with the model's plain path (fused=False), same weights")
    return parser.parse_args()


def cell_rows(results, length, batch, compare_fused):
    """The table rows and the JSON records of one (length, batch) cell of `measure`'s results."""
    for name in sorted(set(results) - {OURS, HUB, HUB_XLA}):
        if not np.array_equal(results[name][2], results[OURS][2]):
            raise AssertionError(f"{name} tokens differ from {OURS} (length {length}, batch {batch})")
    best = {name: min(calls) for name, (_, calls, _) in results.items()}
    rows, raw = [], []
    for name, (first, calls, _) in results.items():
        seconds, same_mode = best[name], SAME_MODE.get(name)
        rows.append([
            length, batch, name, f"{seconds:.3f}", f"{first:.2f}", f"{batch * length / seconds:,.0f}",
            f"{best[UNCACHED] / seconds:.1f}x",
            f"{best[same_mode] / seconds:.2f}x" if same_mode else "",
            *([f"{best[PLAIN_OF[name]] / seconds:.2f}x" if name in PLAIN_OF else ""] if compare_fused else []),
        ])
        raw.append({"length": length, "batch": batch, "variant": name, "seconds": seconds,
                    "median_seconds": statistics.median(calls), "calls_seconds": calls,
                    "first_call_seconds": first})
    return rows, raw


def main():
    args = parse_args()
    if keras.backend.backend() != "tensorflow":
        raise SystemExit("run with KERAS_BACKEND=tensorflow (the export, tf.function and XLA variants are TensorFlow)")
    lengths = [32] if args.quick else [int(n) for n in args.lengths.split(",")]
    batches = [int(n) for n in args.batches.split(",")]
    repeats = 2 if args.quick else args.repeats

    keras.utils.set_random_seed(0)
    longest = max(max(lengths) + 1, args.source_length)
    config = TransformerConfig(**{**TUTORIAL, "num_layers": args.num_layers, "d_model": args.d_model,
                                  "max_source_length": longest, "max_target_length": longest})
    model, hub_model = build_seq2seq(config), build_keras_hub_seq2seq(config)
    plain_model = None
    if args.compare_fused:
        plain_model = build_seq2seq(config.replace(fused=False))
        plain_model.set_weights(model.get_weights())
    rng = np.random.default_rng(0)

    rows, raw = [], []
    with tempfile.TemporaryDirectory() as folder:
        export, export_xla = exported_decode(model, folder), exported_decode(model, folder, jit_compile=True)
        for length in lengths:
            functions = variants(model, hub_model, length, export, export_xla, plain_model)
            for batch in batches:
                inputs = tf.constant(rng.integers(4, config.source_vocab_size, (batch, args.source_length)), tf.int32)
                print(f"length {length}, batch {batch} ...", flush=True)
                cell, cell_raw = cell_rows(measure(functions, inputs, repeats), length, batch, args.compare_fused)
                rows += cell
                raw += cell_raw
        del export, export_xla

    notes = [
        f"TensorFlow backend, {config.num_layers} + {config.num_layers} layers, d_model {config.d_model}, "
        f"{config.num_heads} heads, d_ff {config.d_ff}, vocabularies {config.target_vocab_size}, "
        f"source length {args.source_length}, random weights; every row generates exactly `length` tokens per row",
        f"seconds: fastest call of {repeats} interleaved rounds (a fast variant called up to 20 times a round) "
        "after a first call (tracing, XLA compilation) timed apart; "
        f"load average {os.getloadavg()[0]:.1f} at the end (other work on the machine slows every variant)",
        "ours, the export and the uncached loop decode the same model and returned the same tokens (asserted)",
        "x keras-hub: keras-hub cached decoding's time over ours in the same mode (XLA or not)",
        *(["fused=False rows: the same weights on the model's plain path (a matmul per attention projection, "
           "3-D matmuls); fused buys: that row's time over the fused row's, in the same mode"]
          if args.compare_fused else []),
        "the XLA export needs a model server started with --xla_cpu_compilation_enabled=true; "
        "the default export runs without XLA",
    ]
    write_table(
        "decode_speed_quick" if args.quick else "decode_speed",
        "Greedy decoding: ours vs the tutorial's uncached loop vs keras-hub's cached decoding",
        ["length", "batch", "variant", "seconds", "first call s", "tokens/s", "x uncached", "x keras-hub",
         *(["fused buys"] if args.compare_fused else [])],
        rows, notes, extra={"timings": raw, "config": config.to_dict()},
    )


if __name__ == "__main__":
    main()
