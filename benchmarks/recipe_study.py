"""A recipe study you can rerun: train a list of variants of the main job's config for one
time budget on the embedded corpus, one after another, score each on the test books, and
write one table.

    python benchmarks/recipe_study.py [--minutes 12] [--variants paper,budget,vocab-2k,...]
        [--out benchmarks/results/recipe_study] [--runs runs/study]
    python benchmarks/recipe_study.py --curve 12,30,60,120 --variants chosen,paper
        (more time, more quality: test BLEU against minutes, benchmarks/results/quality_curve.png)

Each variant is `training/configs/small_en_es.toml` with a few settings changed (VARIANTS
below), trained by `python -m kerasformer.training.train` with `--time-budget-minutes` and
scored by `python -m kerasformer.training.evaluate --beam-size 1` (greedy), each in its own
process, so every variant starts from the same state of the machine. Columns: test BLEU and
chrF (sacreBLEU), the best validation loss, training steps, target tokens/s, the share of
distinct hypotheses, and sacreBLEU's hypothesis/reference length ratio.

`chosen@2026-12-02` trains `chosen` again in its own folder: a control for rows run on
another day. A variant whose `eval/test.scores.json` exists in `--runs` is not trained again, so a study
stopped midway resumes where it stopped (and a run stopped midway resumes its training: the
budget's clock is kept with the run). Timings belong to the machine they ran on: the table
names it and the date; compare only rows of one study.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # also runnable as `python benchmarks/recipe_study.py`
    sys.path.insert(0, ROOT)
BASE_CONFIG = os.path.join(ROOT, "training", "configs", "small_en_es.toml")

# name -> (what it tests, flags over the base config). The base config is the chosen recipe;
# `--model` changes its model table setting by setting (pre-norm, no dropout, 2+2 stay unless named).
VARIANTS = {
    "chosen": ("the main job's config as committed (pre-norm, no dropout, vocab 4000, 1024-token batches, "
               "budget schedule, peak 0.0022, 2 encoder and 2 decoder blocks)", []),
    "layers-3-3": ("3+3 layers (the chosen config until 2026-12-02)",
                   ["--model", '{"num_layers": 3, "num_decoder_layers": 3}']),
    "paper": ("the paper's recipe: vocab 8000, 2048-token batches, post-norm, dropout 0.1 where the paper puts it, "
              "Noam schedule, warmup 300",
              ["--vocabulary-size", "8000", "--batch-tokens", "2048",
               "--model", '{"norm_first": false, "dropout": 0.1, "num_layers": 3, "num_decoder_layers": 3}',  # 3+3
               "--learning-rate-schedule", "paper", "--warmup-steps", "300", "--peak-learning-rate", "0"]),
    "noam": ("the paper's schedule (inverse square root, the paper's peak) instead of the budget's",
             ["--learning-rate-schedule", "paper", "--peak-learning-rate", "0"]),
    "peak-paper": ("the paper's peak, 0.0044", ["--peak-learning-rate", "0"]),
    "peak-x0.5": ("a quarter of the paper's peak, 0.0011", ["--peak-learning-rate", "0.0011"]),
    "dropout-0.1": ("dropout 0.1 where the paper puts it (sublayer outputs, embedding sums)",
                    ["--model", '{"dropout": 0.1}']),
    "dropout-0.1-everywhere": ("dropout 0.1 on sublayer outputs, embedding sums, attention weights and FFN "
                               "activations (tensor2tensor's transformer_base_v2; the reference model's)",
                               ["--model", '{"dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.1}']),
    "dropout-0.1-peak-paper": ("dropout 0.1 and the paper's peak", ["--model", '{"dropout": 0.1}',
                                                                      "--peak-learning-rate", "0"]),
    "post-norm": ("post-norm (the paper's placement)", ["--model", '{"norm_first": false}']),
    "shared-vocab": ("one vocabulary of 8000 for both languages; source, target and output embeddings "
                     "tied (the paper's section 3.4)", ["--shared-vocabulary", "--vocabulary-size", "8000"]),
    "shared-vocab-4k": ("one vocabulary of 4000 for both languages; source, target and output embeddings tied",
                        ["--shared-vocabulary", "--vocabulary-size", "4000"]),
    "vocab-2k": ("vocabulary 2000 per side", ["--vocabulary-size", "2000"]),
    "vocab-8k": ("vocabulary 8000 per side", ["--vocabulary-size", "8000"]),
    "batch-2048": ("2048-token batches", ["--batch-tokens", "2048"]),
    "batch-512": ("512-token batches", ["--batch-tokens", "512"]),
    "wide": ("d_model 256, 2+2 layers (width against depth at equal time)",
             ["--model", '{"d_model": 256, "d_ff": 1024, "num_layers": 2, "num_decoder_layers": 2}']),
    "deep": ("d_model 128, 6+6 layers", ["--model", '{"num_layers": 6, "num_decoder_layers": 6}']),
    "layers-2": ("d_model 128, 2+2 layers (more steps of a shallower model; the chosen config since 2026-12-04)",
                 ["--model", '{"num_layers": 2, "num_decoder_layers": 2}']),
    "encoder-4-decoder-2": ("4 encoder and 2 decoder blocks (a deep encoder, a shallow decoder: Kasai et al. 2021)",
                            ["--model", '{"num_layers": 4, "num_decoder_layers": 2}']),
    "encoder-3-decoder-1": ("3 encoder blocks and 1 decoder block (the chosen config 2026-12-02 to 2026-12-04)",
                            ["--model", '{"num_layers": 3, "num_decoder_layers": 1}']),
}


def run(args, log, env):
    with open(log, "a", encoding="utf-8") as file:
        file.write(f"\n$ {' '.join(args)}\n")
        file.flush()
        result = subprocess.run(args, cwd=ROOT, stdout=file, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed (exit {result.returncode}); see {log}")


def base(name):
    """The variant of a run's name: `chosen@2026-12-02` is a repeat of `chosen` (a control
    run on another day, in its own folder)."""
    return name.split("@", 1)[0]


def study_variant(name, minutes, runs, backend):
    """Trains and scores one variant (unless done)."""
    run_dir = os.path.join(runs, name)
    scores_file = os.path.join(run_dir, "eval", "test.scores.json")
    log = os.path.join(runs, f"{name}.log")
    os.makedirs(runs, exist_ok=True)
    if not os.path.exists(scores_file):
        env = {**os.environ, "KERAS_BACKEND": backend}
        started = time.monotonic()
        python = [sys.executable, "-m"]
        run([*python, "kerasformer.training.train", "--config", BASE_CONFIG, "--run-dir", run_dir,
             "--time-budget-minutes", str(minutes), "--log-level", "warning", *VARIANTS[base(name)][1]], log, env)
        run([*python, "kerasformer.training.evaluate", run_dir, "--split", "test", "--beam-size", "1",
             "--examples", "0", "--log-level", "warning"], log, env)
        print(f"{name}: {time.monotonic() - started:.0f} s", file=sys.stderr)


def row(name, run_dir, recorded=None):
    """The table row of a scored run folder. A row `recorded` before from this same run (same
    steps, same day) keeps its description: the base config may have changed since. A run
    trained again takes the variant's description of today."""
    import sacrebleu

    from kerasformer.training.corpus_reader import read_corpus
    from kerasformer.training.run_folder import RunFolder

    run = RunFolder(run_dir)
    scores = json.load(open(run.eval_file("test.scores.json"), encoding="utf-8"))
    metrics = run.metrics()
    hypotheses = open(run.eval_file("test.hyp.txt"), encoding="utf-8").read().splitlines()
    references = read_corpus(scores["file"]).targets
    bleu = sacrebleu.metrics.BLEU().corpus_score(hypotheses, [references])
    # The day it was scored: step counts and tokens/s move from day to day on shared machines.
    date = datetime.datetime.fromtimestamp(os.path.getmtime(run.eval_file("test.scores.json")),
                                           datetime.timezone.utc).date().isoformat()
    same_run = recorded and (recorded.get("steps"), recorded.get("date")) == (metrics["total_steps"], date)
    return {
        "variant": name,
        "what": recorded["what"] if same_run else VARIANTS[base(name)][0],
        "bleu": scores["bleu"],
        "chrf": scores["chrf"],
        "val_loss": round(metrics.get("best_val_loss") or min(metrics["history"].get("val_loss", [float("nan")])), 3),
        "steps": metrics["total_steps"],
        "tokens_per_second": metrics["train_tokens_per_second"],
        "distinct": round(len(set(hypotheses)) / max(len(hypotheses), 1), 3),
        "length_ratio": round(bleu.sys_len / max(bleu.ref_len, 1), 3),
        "date": date,
    }


def machine():
    from benchmarks.results import machine as cpu_and_memory

    return f"{cpu_and_memory()}, Python {platform.python_version()}"


def write_table(rows, minutes, backend, out):
    header = ["variant", "bleu", "chrf", "val_loss", "steps", "tokens_per_second", "distinct", "length_ratio", "date",
              "what"]
    lines = [
        f"# Recipe study: {minutes:g} minutes of training per variant",
        "",
        f"- written {datetime.date.today().isoformat()}, {machine()}, KERAS_BACKEND={backend}; each row's `date` "
        "is the day it ran. The machines are shared and their speed moves from day to day (steps in 12 minutes "
        "with it): compare rows of one date",
        "- test books of the embedded corpus, greedy decoding with the run's length rule; BLEU and chrF by sacreBLEU",
        "- `python benchmarks/recipe_study.py --minutes {:g}`; each row: training/configs/small_en_es.toml plus the "
        "variant's flags (benchmarks/recipe_study.py VARIANTS)".format(minutes),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for r in rows:
        lines.append("| " + " | ".join("" if r.get(key) is None else str(r[key]) for key in header) + " |")
    with open(out + ".md", "w", encoding="utf-8") as file:
        file.write("\n".join(lines) + "\n")
    with open(out + ".json", "w", encoding="utf-8") as file:
        json.dump({"minutes": minutes, "backend": backend, "machine": machine(), "rows": rows}, file, indent=2)
    print("\n".join(lines))


def plot_curve(minutes_list, names, runs_root, out):
    """Test BLEU against training minutes, one line per variant: the scored runs in
    `runs_root`, and the points already recorded in `out`.json whose run folders are not
    here (runs/ is not kept from one machine to the next; the record is)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recorded = {}
    if os.path.exists(out + ".json"):
        recorded = {(p["variant"], p["minutes"]): p for p in json.load(open(out + ".json", encoding="utf-8"))["points"]}
    for name in names:
        for minutes in minutes_list:
            run_dir = os.path.join(runs_root, f"{minutes:g}min", name)
            if os.path.exists(os.path.join(run_dir, "eval", "test.scores.json")):
                recorded[name, minutes] = {"minutes": int(minutes) if float(minutes).is_integer() else minutes,
                                           **row(name, run_dir, recorded.get((name, minutes)))}
    points = sorted(recorded.values(), key=lambda p: (p["variant"], p["minutes"]))
    figure, axis = plt.subplots(figsize=(6.4, 4))
    for name in dict.fromkeys(p["variant"] for p in points):
        line = [p for p in points if p["variant"] == name]
        what = VARIANTS[base(name)][0].split("(")[0].split(":")[0].strip()
        axis.plot([p["minutes"] for p in line], [p["bleu"] for p in line], marker="o", label=f"{name}: {what}")
        for p in line:
            # a point just under another line's point at the same minutes gets its label below it
            crowded = any(q["minutes"] == p["minutes"] and 0 < q["bleu"] - p["bleu"] < 2 for q in points)
            axis.annotate(f"{p['bleu']:.1f}", (p["minutes"], p["bleu"]), textcoords="offset points",
                          xytext=(0, -12 if crowded else 6), ha="center", fontsize=8)
    every_minutes = sorted({*minutes_list, *(p["minutes"] for p in points)})
    axis.set_xticks(every_minutes)
    axis.set_xlim(0, max(every_minutes) * 1.05)  # the recorded points too, not only this run's budgets
    axis.set_ylim(0, max([p["bleu"] for p in points] + [1]) * 1.15)  # room for the labels above the points
    axis.set_xlabel("training minutes (2-core CPU, TensorFlow)")
    axis.set_ylabel("test BLEU (greedy)")
    axis.set_title("More time, more quality: the test books of the embedded corpus", fontsize=9)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out + ".png", dpi=110)
    with open(out + ".json", "w", encoding="utf-8") as file:
        json.dump({"machine": machine(), "points": points}, file, indent=2)
    for p in points:
        print(f"{p['variant']} {p['minutes']:g} min: BLEU {p['bleu']} chrF {p['chrf']} ({p['steps']} steps, {p['date']})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--minutes", type=float, default=12, help="training budget per variant")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}; NAME@TAG repeats NAME in its own "
                        "folder (a control run on another day: chosen@2026-12-02)")
    parser.add_argument("--runs", default=os.path.join(ROOT, "runs", "study"), help="run folders (one per variant)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "recipe_study"),
                        help="table path without suffix (.md and .json)")
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "tensorflow"))
    parser.add_argument("--curve", metavar="MINUTES,...",
                        help="train the variants for each of these budgets and plot BLEU against minutes")
    args = parser.parse_args(argv)
    names = [n for n in args.variants.split(",") if n]
    unknown = sorted({base(name) for name in names} - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    if args.curve:
        budgets = [float(m) for m in args.curve.split(",")]
        for minutes in budgets:  # every point plotted as soon as it is scored: a curve stopped midway shows what it has
            for name in names:
                study_variant(name, minutes, os.path.join(args.runs, f"{minutes:g}min"), args.backend)
                plot_curve(budgets, names, args.runs, os.path.join(os.path.dirname(args.out), "quality_curve"))
        return
    runs = os.path.join(args.runs, f"{args.minutes:g}min")
    for name in names:
        study_variant(name, args.minutes, runs, args.backend)
    write_table(table_rows(runs, args.out, args.minutes), args.minutes, args.backend, args.out)


def table_rows(runs, out, minutes):
    """Every variant of this budget scored so far, in VARIANTS' order: the rows of the run
    folders here, and the rows already in the table (`out`.json) whose folders are not here
    (runs/ is not kept from one machine to the next; the table is the record)."""
    rows = {}
    if os.path.exists(out + ".json"):
        record = json.load(open(out + ".json", encoding="utf-8"))
        if record.get("minutes") == minutes:
            rows = {r["variant"]: r for r in record["rows"] if base(r["variant"]) in VARIANTS}
    for name in os.listdir(runs) if os.path.isdir(runs) else []:
        if base(name) in VARIANTS and os.path.exists(os.path.join(runs, name, "eval", "test.scores.json")):
            rows[name] = row(name, os.path.join(runs, name), rows.get(name))
    return sorted(rows.values(), key=lambda r: (list(VARIANTS).index(base(r["variant"])), r["variant"]))

if __name__ == "__main__":
    main()
