"""`python -m kerasformer [PRESET]`: builds the model of a preset and prints its summary."""

import argparse

from kerasformer import PRESETS, build_seq2seq, preset


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("preset", nargs="?", default="small", choices=sorted(PRESETS))
    parser.add_argument("--vocab-size", type=int, default=8000)
    args = parser.parse_args(argv)
    config = preset(args.preset, source_vocab_size=args.vocab_size, target_vocab_size=args.vocab_size)
    build_seq2seq(config).summary(expand_nested=True)


if __name__ == "__main__":
    main()
