"""Where a training step's time goes, against what the CPU can do: the step's floating-point
work counted from the layer shapes, the rate of this machine's best matrix product at those
shapes, and the step of ours and of the keras.io example with the paper's Adam and with plain
SGD (the optimizer's share, which every model pays).

    KERAS_BACKEND=jax python benchmarks/step_budget.py [--preset base] [--batch 8] [--length 32]

Prints one table and writes `benchmarks/results/step_budget_<backend>_<preset>.{json,md}`. The
models, batch and loss are `benchmarks/train_throughput.py`'s (`compiled`, `fixed_batch`, our
`MaskedLabelSmoothedCrossEntropy(0.1)`), compiled with `jit_compile=True`, under the trainer's
memory allocator setting; each figure is the fastest of `--rounds` interleaved rounds of
`--steps` steps after 2 warm-up steps. Compare only figures of one run.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def step_flops(config, batch, source_length, target_length):
    """Floating-point operations of one training step (forward and backward, 2 per
    multiply-add, the backward twice the forward) of the paper's encoder-decoder, counting the
    matrix products only: per layer the attention projections, QK^T and the weighted sum of V,
    the FFN, and the output projection. Returns (total, {part: forward multiply-adds})."""
    d, d_ff, n = config.d_model, config.d_ff, config.num_layers
    source, target = batch * source_length, batch * target_length
    encoder = n * source * (4 * d * d + 2 * source_length * d + 2 * d * d_ff)
    decoder = n * (target * (4 * d * d + 2 * target_length * d        # self-attention
                             + 2 * d * d + 2 * source_length * d       # cross-attention: Q, W^O, scores, sum
                             + 2 * d * d_ff)                           # FFN
                   + source * 2 * d * d)                               # cross-attention: K and V of the source
    output = target * d * config.target_vocab_size
    parts = {"encoder": encoder, "decoder": decoder, "output projection": output}
    return 2 * 3 * sum(parts.values()), parts


def matmul_rate(shapes, rounds=5, seconds=0.3):
    """GFLOP/s of the current backend's float32 `keras.ops.matmul` for each (m, k, n), fastest of rounds."""
    import numpy as np
    from keras import ops

    rates = {}
    for m, k, n in shapes:
        rng = np.random.default_rng(0)
        a = ops.convert_to_tensor(rng.standard_normal((m, k)).astype("float32"))
        b = ops.convert_to_tensor(rng.standard_normal((k, n)).astype("float32"))
        ops.convert_to_numpy(ops.matmul(a, b))  # warm-up
        start = time.perf_counter()
        ops.convert_to_numpy(ops.matmul(a, b)[:1, :1])
        reps = max(3, int(seconds / (time.perf_counter() - start)))  # about `seconds` a round, whatever the size
        best = float("inf")
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(reps):
                out = ops.matmul(a, b)
            ops.convert_to_numpy(out[:1, :1])
            best = min(best, (time.perf_counter() - start) / reps)
        rates[(m, k, n)] = 2 * m * k * n / best / 1e9
    return rates


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="base")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args(argv)

    import keras

    from benchmarks.results import write_table
    from benchmarks.train_throughput import compiled, fixed_batch, interleaved_rounds
    from kerasformer import preset
    from kerasformer.training.allocator import set_for_training

    set_for_training(keras.backend.backend())  # as kerasformer-train does, before any model
    config = preset(args.preset, source_vocab_size=args.vocab, target_vocab_size=args.vocab)
    flops, parts = step_flops(config, args.batch, args.length, args.length)
    tokens = args.batch * args.length
    d = config.d_model
    rates = matmul_rate([(tokens, d, d), (tokens, d, config.d_ff), (tokens, config.d_ff, d),
                         (tokens, d, config.target_vocab_size)])
    best_rate = max(rates.values())

    inputs, labels, _ = fixed_batch(args.batch, args.length, args.vocab)
    models = {}
    for name in ("ours", "keras.io example"):
        for optimizer in ("Adam", "SGD"):
            model = compiled(name, config, jit_compile=True,
                             optimizer=keras.optimizers.SGD(1e-4) if optimizer == "SGD" else None)
            for _ in range(2):
                model.train_on_batch(inputs, labels)
            models[name, optimizer] = model
    rounds = interleaved_rounds(models, inputs, labels, args.rounds, args.steps)
    best = {key: min(seconds) for key, seconds in rounds.items()}
    gflops = {key: flops / seconds / 1e9 for key, seconds in best.items()}

    rows = [[*key, f"{best[key] * 1000:.0f}", f"{gflops[key]:.0f}", f"{gflops[key] / best_rate:.0%}"] for key in models]
    adam = {name: best[name, "Adam"] - best[name, "SGD"] for name in ("ours", "keras.io example")}
    ratio_sgd = best["keras.io example", "SGD"] / best["ours", "SGD"]
    ratio_adam = best["keras.io example", "Adam"] / best["ours", "Adam"]
    notes = [
        f"KERAS_BACKEND={keras.backend.backend()}; `{args.preset}` with vocabularies {args.vocab:,}, "
        f"{args.batch} x {args.length} tokens (source and target padded to {args.length}), jit_compile=True; "
        f"the fastest of {args.rounds} interleaved rounds of {args.steps} `train_on_batch` steps after 2 warm-up steps.",
        f"Floating-point work of one step, counted from the layer shapes (`step_flops`): {flops / 1e9:.1f} GFLOP "
        f"(forward multiply-adds: " + ", ".join(f"{part} {value / 1e9:.2f} G" for part, value in parts.items())
        + "; backward twice the forward).",
        "This machine's float32 `keras.ops.matmul` at the step's shapes (m x k by k x n, fastest of 5): "
        + ", ".join(f"{m}x{k}x{n} {rate:.0f} GFLOP/s" for (m, k, n), rate in rates.items())
        + f"; 'share of best matmul' divides a step's rate by the fastest of these ({best_rate:.0f}).",
        f"Adam over SGD: ours {adam['ours'] * 1000:.0f} ms, the keras.io example {adam['keras.io example'] * 1000:.0f} ms "
        "(every model pays the update of its parameters). The keras.io example's step over ours: "
        f"{ratio_sgd:.2f}x with SGD (the models' own forward and backward), {ratio_adam:.2f}x with Adam.",
    ]
    write_table(f"step_budget_{keras.backend.backend()}_{args.preset}", "Where a training step's time goes",
                ["model", "optimizer", "ms / step", "GFLOP/s", "share of best matmul"], rows, notes,
                extra={"settings": vars(args), "flops": flops, "parts": parts,
                       "matmul_gflops": {f"{m}x{k}x{n}": rate for (m, k, n), rate in rates.items()},
                       "seconds": {f"{name} / {optimizer}": value for (name, optimizer), value in best.items()}})


if __name__ == "__main__":
    main()
