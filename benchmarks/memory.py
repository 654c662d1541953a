"""Peak resident memory of a training step and of the server, each measured in a fresh
process so that nothing an earlier measurement allocated is counted.

    python -m benchmarks.memory [--quick] [--backends] [--presets small,base] [--batch 64] [--length 64]

Training rows (one subprocess per backend and preset; the current KERAS_BACKEND, or
tensorflow, jax and torch with `--backends`):

    after imports     VmRSS once the modules `kerasformer-train` imports are loaded
                      (keras and its backend, TensorFlow and keras-hub for the input pipeline,
                      kerasformer): the cost of the software before any model exists
    after build       VmRSS with the model built and compiled as kerasformer.training.train does it
                      (paper optimizer, label-smoothed loss, metrics, TrainConfig's jit_compile)
    peak, step 1      VmHWM after the first `train_on_batch` (which traces the step)
    peak, N steps     VmHWM after `--steps` steps in all: the training process's high-water mark
    step - imports    that peak minus the import baseline: what the model, optimizer state,
                      activations, gradients and the traced step add

on one fixed batch of `--batch` sentences of `--length` tokens a side (64 x 64 = 4096 tokens, the
TrainConfig default batch_tokens) with vocabularies of `--vocab-size` (TrainConfig's 8000).

Server rows: a process that only imports kerasformer.export.serving.server, then `python -m kerasformer.export.serving.server`
serving the exported run (see benchmarks/serving_load.py for the export): VmRSS when ready
(model loaded, warmup requests replayed) and VmHWM after `--server-requests` requests of 32
sentences each. The serving_load benchmark's own server memory under concurrent load is in
its table.

Writes benchmarks/results/memory.{json,md} (`--quick`: memory_quick). Numbers only; never a test.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "tests")):  # also runnable as `python benchmarks/memory.py`
    if path not in sys.path:
        sys.path.insert(0, path)

from benchmarks.results import write_table  # noqa: E402
from soak_helpers import memory_mb  # noqa: E402


def training_child(preset_name, batch, length, vocab_size, steps):
    """Runs in a fresh process: imports, builds, steps; returns the measurements."""
    record = {}
    import keras
    import numpy as np

    import kerasformer.training.pipeline  # noqa: F401  (TensorFlow, keras-hub: what training imports in any backend)
    from kerasformer import build_seq2seq, preset
    from kerasformer.training.config import TrainConfig
    from kerasformer.training.loss import MaskedAccuracy, MaskedLabelSmoothedCrossEntropy, Perplexity
    from kerasformer.training.schedule import paper_optimizer

    record["after_imports"] = memory_mb()
    train_config = TrainConfig()
    config = preset(preset_name, source_vocab_size=vocab_size, target_vocab_size=vocab_size)
    keras.utils.set_random_seed(0)
    model = build_seq2seq(config)
    model.compile(optimizer=paper_optimizer(config.d_model, train_config.warmup_steps),
                  loss=MaskedLabelSmoothedCrossEntropy(train_config.label_smoothing),
                  metrics=[MaskedAccuracy(), Perplexity()], jit_compile=train_config.compiled)
    record["after_build"] = memory_mb()
    record["parameters"] = model.count_params()
    record["jit_compile"] = bool(model.jit_compile)

    # Token ids from 4 up (0-3 are padding and specials), no padding: every position costs.
    random = np.random.default_rng(0)
    inputs = {name: random.integers(4, vocab_size, (batch, length)).astype("int32")
              for name in ("encoder_tokens", "decoder_tokens")}
    labels = random.integers(4, vocab_size, (batch, length)).astype("int32")
    seconds = []
    for step in range(steps):
        start = time.perf_counter()
        model.train_on_batch(inputs, labels)
        seconds.append(round(time.perf_counter() - start, 3))
        if step == 0:
            record["peak_step_1"] = memory_mb()["hwm"]
    record["peak_all_steps"] = memory_mb()["hwm"]
    record["step_seconds"] = seconds
    return record


def server_imports_child():
    import kerasformer.export.serving.server  # noqa: F401

    return {"after_imports": memory_mb()}


def run_child(args, backend):
    """Runs this file in a fresh process with `args` and returns the JSON it prints last."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-m", "benchmarks.memory", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{backend} {' '.join(args)} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_server(version_path, requests, sentences):
    """VmRSS of a ready `kerasformer.export.serving.server` and its VmHWM after `requests` predict calls of 32 sentences."""
    from serving_helpers import ServerProcess, http

    base_dir = os.path.dirname(os.path.dirname(version_path))
    name = os.path.basename(os.path.dirname(version_path))
    with tempfile.TemporaryDirectory() as logs:
        server = ServerProcess(logs, base_dir, "--log-level", "warning", model=name)
        try:
            server.wait_until_ready(timeout=300)
            ready = memory_mb(server.process.pid)
            for index in range(requests):
                batch = [sentences[(index * 32 + i) % len(sentences)] for i in range(32)]
                status, answer = http("POST", f"{server.url}/v1/models/{name}:predict", {"instances": batch})
                if status != 200 or len(answer.get("predictions", [])) != 32:
                    raise RuntimeError(f"predict answered {status}: {str(answer)[:300]}")
            after = memory_mb(server.process.pid)
        finally:
            server.stop()
    return {"ready": ready, "after_requests": after}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="small,base", help="model presets (default: small,base)")
    parser.add_argument("--backends", action="store_true", help="tensorflow, jax and torch, each in its own process")
    parser.add_argument("--batch", type=int, default=64, help="sentences per batch (default: 64)")
    parser.add_argument("--length", type=int, default=64, help="tokens per sentence, both sides (default: 64)")
    parser.add_argument("--vocab-size", type=int, default=8000, help="both vocabularies (default: 8000)")
    parser.add_argument("--steps", type=int, default=3, help="training steps in all (default: 3)")
    parser.add_argument("--run-dir", default=os.path.join(ROOT, "runs", "small-en-es"),
                        help="the run whose export the server serves (as in benchmarks/serving_load.py)")
    parser.add_argument("--server-requests", type=int, default=10, help="predict calls of 32 sentences")
    parser.add_argument("--no-server", dest="server", action="store_false", help="training rows only")
    parser.add_argument("--quick", action="store_true", help="small preset, batch 16 x 32, 2 steps, 2 server "
                                                             "requests; writes memory_quick")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # "train:PRESET" or "server-imports"
    args = parser.parse_args(argv)
    if args.quick:
        args.presets, args.batch, args.length, args.steps, args.server_requests = "small", 16, 32, 2, 2
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        if args.child == "server-imports":
            record = server_imports_child()
        else:
            record = training_child(args.child.split(":", 1)[1], args.batch, args.length, args.vocab_size, args.steps)
        print(json.dumps(record))
        return

    from kerasformer import BACKENDS  # here, not at the top: it imports Keras

    backends = BACKENDS if args.backends else (os.environ.get("KERAS_BACKEND", "tensorflow"),)
    sizes = ["--batch", str(args.batch), "--length", str(args.length), "--vocab-size", str(args.vocab_size),
             "--steps", str(args.steps)]
    rows, records = [], []
    for backend in backends:
        for preset_name in args.presets.split(","):
            print(f"training step: {backend}, {preset_name} ...", flush=True)
            record = run_child(["--child", f"train:{preset_name}", *sizes], backend)
            records.append({"what": "training step", "backend": backend, "preset": preset_name, **record})
            rows.append([f"training step, {preset_name} ({record['parameters'] / 1e6:.1f} M parameters)", backend,
                         record["after_imports"]["rss"], record["after_build"]["rss"], record["peak_step_1"],
                         record["peak_all_steps"], record["peak_all_steps"] - record["after_imports"]["rss"]])

    if args.server:
        from benchmarks.serving_load import BENCH_DIR, TEST_CORPUS, model_to_serve
        from kerasformer.training.corpus_reader import read_corpus

        print("server ...", flush=True)
        imports = run_child(["--child", "server-imports"], "tensorflow")
        run_dir, version_path = model_to_serve(args.run_dir, os.path.join(BENCH_DIR, "saved_models"),
                                               "kerasformer_en_es")
        server = measure_server(version_path, args.server_requests, read_corpus(TEST_CORPUS).sources)
        records.append({"what": "server", "export": os.path.relpath(version_path, ROOT),
                        "imports": imports["after_imports"], **server})
        rows.append([f"kerasformer-serve, {os.path.basename(run_dir)} export, "
                     f"{args.server_requests} x 32 sentences", "tensorflow", imports["after_imports"]["rss"],
                     server["ready"]["rss"], "", server["after_requests"]["hwm"],
                     server["after_requests"]["hwm"] - imports["after_imports"]["rss"]])

    notes = [
        "Each row is a fresh process; MB = MiB of resident memory from /proc/PID/status "
        "(VmRSS now, VmHWM the peak so far).",
        f"Training: a fixed batch of {args.batch} x {args.length} random token ids a side, vocabularies "
        f"{args.vocab_size}, built and compiled as kerasformer.training.train does (float32, paper optimizer, label-smoothed "
        f"loss, token metrics, TrainConfig jit_compile=False, so JAX runs its step un-jitted as kerasformer-train "
        f"does), `train_on_batch` {args.steps} times; 'after imports' has TensorFlow and keras-hub loaded in every "
        f"backend because the input pipeline needs them.",
        "Server: 'after imports' is a process that only imports kerasformer.export.serving.server; 'after build' is the server ready "
        "(SavedModel loaded, warmup replayed); the peak is after the predict calls, without batching.",
        "peak - imports: the peak minus the import baseline of the same row.",
    ]
    columns = ["what", "backend", "after imports MB", "after build / ready MB", "peak, step 1 MB",
               "peak MB", "peak - imports MB"]
    write_table("memory_quick" if args.quick else "memory", "Peak resident memory", columns, rows, notes,
                extra={"records": records, "batch": args.batch, "length": args.length,
                       "vocab_size": args.vocab_size, "steps": args.steps})


if __name__ == "__main__":
    main()
