"""Score a training run on a split with sacreBLEU (BLEU and chrF).

    python -m training.evaluate RUN_DIR [--split test] [--file pairs.tsv] [--examples 5]
        [--attention "sentence" --layer -1]

Greedy-decodes every source sentence, writes `RUN_DIR/eval/<split>.hyp.txt`
(one hypothesis per line) and `RUN_DIR/eval/<split>.scores.json` (scores with
sacreBLEU's signatures), and prints a few examples. `--attention` also draws the
cross-attention of one decoder layer for a sentence (one panel per head).
"""

import argparse
import json
import os
import time

import sacrebleu

from training.config import TrainConfig
from training.corpus_reader import read_corpus
from training.files import atomic_write
from training.translator import Translator


def evaluate(run_dir, split="test", file=None, examples=5, checkpoint="best"):
    with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as handle:
        config = TrainConfig.from_dict(json.load(handle)["train"])
    path = file or config.corpus_file(split)
    corpus = read_corpus(path, source_column=config.source_column, target_column=config.target_column,
                         skip_malformed=config.skip_malformed)
    translator = Translator.from_run(run_dir, checkpoint)
    started = time.monotonic()
    hypotheses = translator.translate(corpus.sources)
    seconds = time.monotonic() - started
    bleu = sacrebleu.metrics.BLEU()
    chrf = sacrebleu.metrics.CHRF()
    bleu_score = bleu.corpus_score(hypotheses, [corpus.targets])
    chrf_score = chrf.corpus_score(hypotheses, [corpus.targets])
    scores = {
        "split": split, "file": path, "sentences": len(hypotheses), "checkpoint": checkpoint,
        "bleu": round(bleu_score.score, 2), "bleu_signature": str(bleu.get_signature()),
        "chrf": round(chrf_score.score, 2), "chrf_signature": str(chrf.get_signature()),
        "decode_seconds": round(seconds, 1),
    }
    out = os.path.join(run_dir, "eval")
    atomic_write(os.path.join(out, f"{split}.hyp.txt"), "".join(h + "\n" for h in hypotheses).encode("utf-8"))
    atomic_write(os.path.join(out, f"{split}.scores.json"), json.dumps(scores, indent=2, ensure_ascii=False).encode())
    print(f"{split}: {len(hypotheses)} sentences decoded in {seconds:.1f} s")
    print(f"BLEU = {bleu_score.score:.2f}  ({bleu.get_signature()})")
    print(f"chrF = {chrf_score.score:.2f}  ({chrf.get_signature()})")
    for source, reference, hypothesis in list(zip(corpus.sources, corpus.targets, hypotheses))[:examples]:
        print(f"\nsource:     {source}\nreference:  {reference}\nhypothesis: {hypothesis}")
    return scores, translator


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--split", default="test", choices=("train", "validation", "test"))
    parser.add_argument("--file", help="score this TSV/CSV instead of the run's split")
    parser.add_argument("--checkpoint", default="best", choices=("best", "last"))
    parser.add_argument("--examples", type=int, default=5)
    parser.add_argument("--attention", help="a source sentence whose cross-attention to draw")
    parser.add_argument("--layer", type=int, default=-1, help="decoder layer for --attention")
    args = parser.parse_args(argv)
    _, translator = evaluate(args.run_dir, args.split, args.file, args.examples, args.checkpoint)
    if args.attention:
        path = translator.plot_attention(args.attention, os.path.join(args.run_dir, "eval", "attention.png"), args.layer)
        print(f"\nattention: {path}")


if __name__ == "__main__":
    main()
