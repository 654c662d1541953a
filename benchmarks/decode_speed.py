"""Greedy decoding speed: our cached loop vs re-running the whole model on the
prefix at every step (the TensorFlow tutorial's loop), same model, same run.

    KERAS_BACKEND=tensorflow python benchmarks/decode_cached_vs_uncached.py [--preset small] [--tokens 128]

Every variant decodes exactly `--tokens` tokens (no [END] can stop it: the end id
is one the model never predicts), batch `--batch`, random weights (speed does not
depend on them), TensorFlow backend, all inside `tf.function` without XLA:

    cached          kerasformer.decoding.greedy_decode (key/value cache, one token per step)
    cached, export  the same loop in an exported SavedModel (translate_tokens graph), via tf.saved_model.load
    uncached        the tutorial's loop: model(encoder_tokens, prefix) on the whole prefix each step

Prints a table with the median of `--repeats` timed runs after one warm-up run,
tokens/s, and the speed-up of the cached loop. Timings only; never a test.
"""

import argparse
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kerasformer import build_seq2seq, preset  # noqa: E402
from kerasformer.decoding import best_token, greedy_decode  # noqa: E402

START_ID, NEVER = 2, -1


def uncached_loop(model, steps):
    """The TensorFlow tutorial's decoding: the full model on the growing prefix."""

    @tf.function
    def decode(encoder_tokens):
        batch = tf.shape(encoder_tokens)[0]
        output = tf.fill([batch, 1], START_ID)
        for _ in tf.range(steps):
            tf.autograph.experimental.set_loop_options(shape_invariants=[(output, tf.TensorShape([None, None]))])
            logits = model({"encoder_tokens": encoder_tokens, "decoder_tokens": output})
            output = tf.concat([output, best_token(logits[:, -1])[:, None]], axis=1)
        return output[:, 1:]

    return decode


def cached_loop(model, steps):
    return tf.function(lambda encoder_tokens: greedy_decode(model, encoder_tokens, START_ID, NEVER, steps))


def exported_loop(model, steps, folder):
    """The export's decode graph (what TensorFlow Serving runs), loaded back."""
    from export.translation_module import TranslationModule
    from training.tokenizers import train_sentencepiece

    vocabularies = os.path.join(folder, "vocabularies")
    os.makedirs(vocabularies)
    proto = train_sentencepiece([f"word{i} piece{i % 7}" for i in range(300)], 60)
    for side in ("source", "target"):
        with open(os.path.join(vocabularies, f"{side}.model"), "wb") as file:
            file.write(proto)
    module = TranslationModule(model, vocabularies)
    # Same decode graph as the export, with the never-matching end id so it runs `steps` steps.
    module.decode_all = tf.function(
        lambda encoder_tokens: greedy_decode(model, encoder_tokens, START_ID, NEVER, tf.constant(steps)),
        input_signature=[tf.TensorSpec([None, None], tf.int32)],
    )
    path = os.path.join(folder, "saved")
    tf.saved_model.save(module, path, signatures={"decode_all": module.decode_all})
    loaded = tf.saved_model.load(path)
    function = loaded.signatures["decode_all"]
    return lambda encoder_tokens: function(encoder_tokens=encoder_tokens)["output_0"], loaded


def timed(function, inputs, repeats):
    function(inputs)  # trace / warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(inputs)
        np.asarray(result)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--source-length", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if keras.backend.backend() != "tensorflow":
        raise SystemExit("run with KERAS_BACKEND=tensorflow (the export and tf.function loops are TensorFlow)")

    keras.utils.set_random_seed(0)
    length = max(args.tokens + 1, args.source_length)
    config = preset(args.preset, max_source_length=length, max_target_length=length)
    model = build_seq2seq(config)
    inputs = tf.constant(np.random.default_rng(0).integers(4, 8000, (args.batch, args.source_length)), tf.int32)

    cached = cached_loop(model, args.tokens)
    uncached = uncached_loop(model, args.tokens)
    with tempfile.TemporaryDirectory() as folder:
        exported, keep_alive = exported_loop(model, args.tokens, folder)
        assert np.array_equal(np.asarray(cached(inputs)), np.asarray(uncached(inputs))), "cached != uncached tokens"
        assert np.array_equal(np.asarray(cached(inputs)), np.asarray(exported(inputs))), "export != cached tokens"
        rows = [
            ("cached (tf.function)", timed(cached, inputs, args.repeats)),
            ("cached, exported SavedModel", timed(exported, inputs, args.repeats)),
            ("uncached full re-run (tutorial loop)", timed(uncached, inputs, args.repeats)),
        ]
        del keep_alive

    tokens = args.batch * args.tokens
    slowest = rows[-1][1]
    print(f"# greedy decoding, {args.preset} preset ({model.count_params():,} parameters), batch {args.batch}, "
          f"{args.tokens} tokens, source length {args.source_length}")
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"tensorflow {tf.__version__}, keras {keras.__version__}, no XLA; median of {args.repeats}")
    print("| loop | seconds | tokens/s | speed-up vs uncached |")
    print("|---|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} | {tokens / seconds:,.0f} | {slowest / seconds:.1f}x |")


if __name__ == "__main__":
    main()
