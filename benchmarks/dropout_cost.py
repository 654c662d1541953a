"""What dropout costs a training step, site by site: `model.train_on_batch` of the `small`
preset with dropout 0, where the paper puts it (sublayer outputs and embedding sums,
TransformerConfig `dropout`), plus the attention weights (`attention_dropout`), plus the
FFN's inner activation (`activation_dropout`), everywhere, and keras-hub's layers at their
own placement, one process, one fixed batch, interleaved rounds. The paper's sites and
everywhere run twice: with the fused path's `PairedDropout` (the default) and with
`keras.layers.Dropout` in the same otherwise fused model, what the paired mask buys.

    KERAS_BACKEND=jax python benchmarks/dropout_cost.py [--jit on|off] [--rounds 5] [--steps 5]

Prints time per step (fastest round), target tokens/s and the ratio to dropout 0. Batch,
loss, optimizer and vocabularies as benchmarks/train_throughput.py. Timings only; never a test.
"""

import argparse
import contextlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

RATE = 0.1
PLAIN = " (keras.layers.Dropout)"
SITES = {
    "dropout 0": dict(dropout=0.0),
    "paper's sites (sublayer outputs, embedding sums)": dict(dropout=RATE),
    "paper's sites (sublayer outputs, embedding sums)" + PLAIN: dict(dropout=RATE),
    "+ attention weights": dict(dropout=RATE, attention_dropout=RATE),
    "+ FFN inner activation": dict(dropout=RATE, activation_dropout=RATE),
    "everywhere": dict(dropout=RATE, attention_dropout=RATE, activation_dropout=RATE),
    "everywhere" + PLAIN: dict(dropout=RATE, attention_dropout=RATE, activation_dropout=RATE),
    "keras-hub layers (sublayer outputs, embedding sums, attention weights)": None,
}


@contextlib.contextmanager
def plain_dropout():
    """Layers built inside take `keras.layers.Dropout` where the fused path takes `PairedDropout`."""
    import keras

    from kerasformer import add_norm, attention, embedding, feed_forward

    modules = (add_norm, attention, embedding, feed_forward)
    saved = [module.dropout_layer for module in modules]
    for module in modules:
        module.dropout_layer = lambda rate, fused, **kwargs: keras.layers.Dropout(rate, **kwargs)
    try:
        yield
    finally:
        for module, function in zip(modules, saved):
            module.dropout_layer = function


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jit", default="on", choices=("on", "off"))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model per round")
    args = parser.parse_args(argv)

    import keras

    from benchmarks.results import machine
    from benchmarks.train_throughput import compiled, fixed_batch, interleaved_rounds
    from kerasformer import PairedDropout, preset

    config = preset("small", source_vocab_size=args.vocab, target_vocab_size=args.vocab)
    inputs, labels, target_tokens = fixed_batch(args.batch, args.length, args.vocab)
    models = {}
    for name, rates in SITES.items():
        # train_throughput's models, loss, optimizer and seed: only the dropout rates differ
        with plain_dropout() if name.endswith(PLAIN) else contextlib.nullcontext():
            model = (compiled("keras-hub layers", config, args.jit == "on") if rates is None
                     else compiled("ours", config.replace(**rates), args.jit == "on"))
        if name.endswith(PLAIN):  # a module that builds a dropout and is not patched would show here
            paired = [layer.path for layer in model._flatten_layers() if isinstance(layer, PairedDropout)]
            assert not paired, f"{name}: still PairedDropout in {paired}"
        for _ in range(3):  # trace / compile, then two steps
            model.train_on_batch(inputs, labels)
        models[name] = model
    rounds = interleaved_rounds(models, inputs, labels, args.rounds, args.steps)
    best = {name: min(seconds) for name, seconds in rounds.items()}
    print(f"{keras.backend.backend()}, jit_compile {args.jit}, small, {args.batch} x {args.length} "
          f"({target_tokens} target tokens), {machine()}")
    for name, seconds in best.items():
        print(f"{1000 * seconds:7.1f} ms  {target_tokens / seconds:7,.0f} tokens/s  "
              f"x{best['dropout 0'] / seconds:.2f} of dropout 0  {name}")


if __name__ == "__main__":
    main()
