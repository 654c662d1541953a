"""Score a training run on a split with sacreBLEU (BLEU and chrF), for greedy
decoding and for beam search.

    python -m kerasformer.training.evaluate RUN_DIR [--split test] [--file pairs.tsv] [--examples 5]
        [--beam-size 4 --alpha 0.6] [--attention "sentence" --layer -1]

Decodes every source sentence greedily and with beam search (the paper's beam
4, length penalty 0.6; `--beam-size 1` skips it), writes
`RUN_DIR/eval/<split>.hyp.txt` and `<split>.beam.hyp.txt` (one hypothesis per
line) and `RUN_DIR/eval/<split>.scores.json` (scores with sacreBLEU's
signatures; greedy at the top level, beam search under "beam"), and prints a
few examples. `--attention` also draws the
cross-attention of one decoder layer for a sentence (one panel per head).
Decoding reports its progress on stderr (sentences, sentences/s, time left).
"""

import json
import time

import sacrebleu

from kerasformer.training.cli import command_line, configure
from kerasformer.training.corpus_reader import read_corpus
from kerasformer.training.files import atomic_write
from kerasformer.training.progress import Progress
from kerasformer.training.run_folder import RunFolder
from kerasformer.training.translator import Translator


def evaluate(run_dir, split="test", file=None, examples=5, checkpoint="best", beam_size=4, alpha=0.6):
    run = RunFolder(run_dir)
    config = run.train_config()
    path = file or config.corpus_file(split)
    corpus = read_corpus(path, source_column=config.source_column, target_column=config.target_column,
                         skip_malformed=config.skip_malformed)
    translator = Translator.from_run(run_dir, checkpoint)
    greedy, hypotheses = score(translator, corpus, run.eval_file(f"{split}.hyp.txt"), "greedy")
    scores = {"split": split, "file": path, "sentences": len(hypotheses), "checkpoint": checkpoint, **greedy}
    if beam_size > 1:
        beam = translator.with_search(beam_size, alpha)
        beam_scores, _ = score(beam, corpus, run.eval_file(f"{split}.beam.hyp.txt"), f"beam search ({beam_size})")
        scores["beam"] = {"beam_size": beam_size, "alpha": alpha, **beam_scores}
    atomic_write(run.eval_file(f"{split}.scores.json"), json.dumps(scores, indent=2, ensure_ascii=False).encode())
    for source, reference, hypothesis in list(zip(corpus.sources, corpus.targets, hypotheses))[:examples]:
        print(f"\nsource:     {source}\nreference:  {reference}\nhypothesis: {hypothesis}")
    return scores, translator


def score(translator, corpus, hypotheses_path, label):
    """Decodes `corpus.sources` and writes the hypotheses; returns
    `(BLEU/chrF scores dict, hypotheses)`."""
    started = time.monotonic()
    with Progress(f"{label} decoding", total=len(corpus.sources), unit="sentences",
                  rates={"sentences/s": 1}) as progress:
        hypotheses = translator.translate(corpus.sources, progress)
    seconds = time.monotonic() - started
    bleu, chrf = sacrebleu.metrics.BLEU(), sacrebleu.metrics.CHRF()
    bleu_score = bleu.corpus_score(hypotheses, [corpus.targets])
    chrf_score = chrf.corpus_score(hypotheses, [corpus.targets])
    atomic_write(hypotheses_path, "".join(h + "\n" for h in hypotheses).encode("utf-8"))
    print(f"{label}: {len(hypotheses)} sentences decoded in {seconds:.1f} s")
    print(f"  BLEU = {bleu_score.score:.2f}  ({bleu.get_signature()})")
    print(f"  chrF = {chrf_score.score:.2f}  ({chrf.get_signature()})")
    scores = {
        "bleu": round(bleu_score.score, 2), "bleu_signature": str(bleu.get_signature()),
        "chrf": round(chrf_score.score, 2), "chrf_signature": str(chrf.get_signature()),
        "decode_seconds": round(seconds, 1),
    }
    return scores, hypotheses


def make_parser():
    parser = command_line("kerasformer-evaluate", __doc__, progress=True)
    parser.add_argument("run_dir", help="a training run folder (config.json, best.keras, tokenizers/)")
    parser.add_argument("--split", default="test", choices=("train", "validation", "test"),
                        help="the run's split to score: its config's *_file, or the embedded corpus's")
    parser.add_argument("--file", help="score this TSV/CSV file instead of the run's split (default: none)")
    parser.add_argument("--checkpoint", default="best", choices=("best", "last"), help="the model to score")
    parser.add_argument("--examples", type=int, default=5, help="source, reference and hypothesis triples to print")
    parser.add_argument("--beam-size", type=int, default=4, help="beam search's beam (1: greedy only)")
    parser.add_argument("--alpha", type=float, default=0.6, help="beam search's length penalty exponent")
    parser.add_argument("--attention", metavar="SENTENCE",
                        help="a source sentence whose cross-attention to draw to RUN_DIR/eval/attention.png "
                             "(default: none)")
    parser.add_argument("--layer", type=int, default=-1, help="decoder layer for --attention (-1: the last)")
    return parser


def main(argv=None):
    args = make_parser().parse_args(argv)
    configure(args)
    _, translator = evaluate(args.run_dir, args.split, args.file, args.examples, args.checkpoint,
                             args.beam_size, args.alpha)
    if args.attention:
        path = translator.plot_attention(args.attention, RunFolder(args.run_dir).eval_file("attention.png"), args.layer)
        print(f"\nattention: {path}")


if __name__ == "__main__":
    main()
