"""Training throughput against a peer toolkit: our trainer and Eole 0.6.4 (the successor of
OpenNMT-py, PyTorch) train the same model on the same data, one after the other in one
invocation on this machine, for the same minutes each; the table gives target tokens/s and
the ratio ours / Eole.

    python benchmarks/peer_eole.py [--minutes 5] [--eole-venv /work/eole-venv] [--setup]
        [--work-dir runs/peer-eole] [--backend tensorflow] [--order ours,eole]

Eole lives in its own virtual environment (`--setup` creates it: `torch==2.13.0` first, the
local CPU build, since any other torch release pulls gigabytes of CUDA wheels; then
`eole==0.6.4` and `aiohttp`, which its command line imports but does not declare). Nothing in
kerasformer/ or tests/ imports Eole; this script only runs its `eole train` command.

Data, the same for both: the embedded corpus (training/corpus/en-es, train split) through
the SAME two SentencePiece models, so the comparison is about the trainers, not the
tokenizers. They are trained once with our own `train_sentencepiece` (vocabulary 8000 per
side, what `kerasformer-train --vocabulary-size 8000` trains) into `WORK/tokenizers/`;
our run gets copies in its run folder (`prepare_tokenizers` then reuses them), and Eole gets
the corpus pre-tokenized: the pieces, space-separated, one sentence a line
(`WORK/eole-data/train.src|tgt`, valid likewise), cut as our pipeline cuts them
(`text_rules`: a source keeps its first max_source_length = 96 pieces, a target its first
max_target_length - 1 = 95), and one vocabulary file per side listing every piece of the
SentencePiece model but our four specials ([PAD] [UNK] [START] [END], whose roles Eole's own
<blank> <unk> <s> </s> take). Eole's vocabularies therefore have the same size as ours
(8000: 7996 pieces + 4 specials), and so do both output softmaxes. Eole runs no transform.

Model, the same size for both (the `small` preset of kerasformer/config.py): d_model 128,
4 heads, d_ff 512, 3 encoder + 3 decoder layers, sinusoidal positions (sin on even, cos on
odd dimensions: Eole's `SinusoidalInterleaved`), dropout `--dropout` (0.1) where Eole applies
it (sublayer outputs, embeddings, attention weights and the FFN's inner activation; ours:
`dropout`, `attention_dropout` and `activation_dropout` all set to it; 0: none in either),
biases in the attention and feed-forward projections, the target embedding tied to the
output projection with no output bias, label smoothing 0.1, Adam (0.9, 0.98, 1e-9) with the
paper's schedule (warmup 300, the paper's peak; Eole: `decay_method noam`, `learning_rate 1`),
no gradient clipping, float32, loss averaged over target tokens. One difference Eole does
not let us remove: its transformer decoder is pre-norm only (0.6.4 has `encoder_layer_style`
but no decoder counterpart), so Eole runs pre-norm throughout while ours runs the paper's
post-norm (`--ours-model` changes ours, e.g. '{"norm_first": true}'); per
layer both compute the same LayerNorms, pre-norm adds one final LayerNorm per stack.

Ours: `python -m kerasformer.training.train --config training/configs/small_en_es.toml`
with `--vocabulary-size 8000 --batch-tokens 2048 --model '{"num_layers": 3, "num_decoder_layers":
3, "dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.1, "norm_first": false}'
--learning-rate-schedule paper --warmup-steps 300 --peak-learning-rate 0
--time-budget-minutes M`, under `--backend` (KERAS_BACKEND; jit_compile as the config
resolves it: compiled under JAX, and under TensorFlow since 2026-12-05; results dated
before that ran TensorFlow's plain graph). Its figure is metrics.json's `train_tokens_per_second`
(training/train.py `summary`): non-padding labels (target pieces + [END]) per step, averaged
over one epoch's batches, times the steps, over the seconds from the end of the first step
(tracing) to the end of training, validation left out (callbacks.Throughput; the checkpoints
written at epoch ends count). The budget's clock (callbacks.TimeBudget) starts at the first
fit and includes validation at epoch ends.

Eole: `eole train` on CPU (no gpu_ranks, num_workers 0), `train_steps` far out of reach,
no checkpoint and no validation inside the window; stopped (SIGTERM) M minutes after it logs
"Start training loop". It reports every `--report-every` steps "bsz: src/tgt/sents" (per-batch
averages since the last report) and "sec" (seconds since the loop started). Its figure
skips the first report (which holds reading and sorting the corpus and the first steps):
sum over the later reports of (target tokens per batch x steps since the previous report),
over the seconds between the first and the last report. Eole's target tokens are its
non-padding labels (utils/loss.py: target pieces + </s>), the same count as ours.

Batches: both take `2048` as padded tokens per side, and pack differently.
Ours (training/pipeline.py): pairs bucketed by their longer side into buckets 8 ids wide,
padded to the bucket's upper bound, `2048 // (bound - 1)` pairs a batch (bound 49: 42 pairs
of 48 ids), so a row carries up to 7 ids of padding; each epoch is shuffled. Eole
(inputters/dynamic_iterator.py, `batch_type tokens`): a bucket of `bucket_size` examples,
here the whole corpus once (its default, 262144, would fill the first bucket with nine
passes of this corpus before the first step), sorted by (source, target) length and cut into
batches while pairs x the longest side (the target counted with <s> and </s>) stay within
2048; the batches are shuffled. Its rows of a batch have nearly equal lengths, so a batch
carries a little more real tokens (on this corpus about 1,790 target tokens a step against
our 1,750).
Steps/s therefore differ more than tokens/s; the table shows target tokens per step of each.
Tokens/s, not steps, is the comparison. Eole's figure leaves out its first report
(`--report-every` steps, its warm-up); ours leaves out only the first step, so our retracing
for each new bucket shape counts against us (the .json also has Eole's figure over the
whole window, first report included).

Timings belong to the machine and the moment: the table names the machine and date; compare
only figures of one run (both toolkits measured in it). Give it minutes: a run of one or two
minutes mostly measures warm-up (ours traces a train step for each bucket shape it meets, up
to 12 here, and the first minutes meet most of them). The run folders stay in --work-dir
(logs: ours.log, eole.log). Never a test.
"""

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BASE_CONFIG = os.path.join(ROOT, "training", "configs", "small_en_es.toml")
EOLE_VERSION = "0.6.4"
TORCH_VERSION = "2.13.0"  # the local CPU build; what our own venv has too
PRESET = "small"
VOCABULARY_SIZE = 8000
BATCH_TOKENS = 2048
WARMUP_STEPS = 300
LABEL_SMOOTHING = 0.1
DROPOUT = 0.1  # both toolkits, at Eole's placement (see `ours_model`); --dropout changes it
OURS_MODEL = {"norm_first": False}  # the paper's post-norm; see the docstring
NUM_LAYERS = 3  # encoder and decoder blocks of the `small` preset, what Eole trains (enc_layers, dec_layers)
# Eole's special tokens (eole/constants.py DefaultTokens) stand in for ours, ids 0-3.
OUR_SPECIAL_PIECES = ("[PAD]", "[UNK]", "[START]", "[END]")
EOLE_LOOP_STARTED = "Start training loop"
# "Step 50/1000000; acc: ...; bsz: 1403/1312/33; 2201/2058 tok/s;     35 sec;"
# (eole/utils/statistics.py Statistics.output)
EOLE_REPORT = re.compile(
    r"Step\s+(?P<step>\d+)(?:/\s*\d+)?;.*?bsz:\s*(?P<src>[\d.]+)/\s*(?P<tgt>[\d.]+)/\s*(?P<sents>[\d.]+);"
    r"\s*(?P<src_rate>[\d.]+)/\s*(?P<tgt_rate>[\d.]+) tok/s;\s*(?P<sec>[\d.]+) sec"
)
EOLE_PARAMETERS = re.compile(r"\* number of parameters: (\d+)")
EOLE_VOCAB = re.compile(r"\* (src|tgt) vocab size = (\d+)")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5, help="training minutes of each toolkit")
    parser.add_argument("--eole-venv", default="/work/eole-venv", help="virtual environment with eole installed")
    parser.add_argument("--setup", action="store_true",
                        help=f"create --eole-venv if it has no eole (torch=={TORCH_VERSION}, eole=={EOLE_VERSION}, "
                             "aiohttp)")
    parser.add_argument("--work-dir", default=os.path.join(ROOT, "runs", "peer-eole"),
                        help="tokenizers, Eole's data, both run folders and logs")
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "tensorflow"),
                        help="KERAS_BACKEND of our trainer")
    parser.add_argument("--order", default="ours,eole", help="which toolkit trains first: ours,eole or eole,ours")
    parser.add_argument("--ours-model", type=json.loads, default=OURS_MODEL,
                        help="our --model overrides (JSON object), over the dropout rates --dropout sets")
    parser.add_argument("--dropout", type=float, default=DROPOUT,
                        help="dropout of both toolkits, where Eole applies it: sublayer outputs, embeddings, "
                             "attention weights and the FFN's inner activation (0: none in either)")
    parser.add_argument("--report-every", type=int, default=20, help="Eole's report interval in steps")
    parser.add_argument("--out", default="peer_eole", help="name of the results in benchmarks/results/ (.json, .md)")
    parser.add_argument("--prepare-data", help=argparse.SUPPRESS)  # internal: the data step, in a child process
    args = parser.parse_args(argv)
    if sorted(args.order.split(",")) != ["eole", "ours"]:
        parser.error(f"--order={args.order!r} must be ours,eole or eole,ours")
    if not args.minutes > 0:
        parser.error(f"--minutes={args.minutes} must be > 0")
    args.work_dir = os.path.abspath(args.work_dir)
    return args


def ours_model(args):
    """Our --model: Eole's shape and dropout placement (its `dropout` also drops the FFN's inner
    activation, modules/transformer_mlp.py `dropout_1`; its `attention_dropout` the attention
    weights), then --ours-model."""
    rate = args.dropout
    return {"num_layers": NUM_LAYERS, "num_decoder_layers": NUM_LAYERS, "dropout": rate,
            "attention_dropout": rate, "activation_dropout": rate, **args.ours_model}


# ---------------------------------------------------------------- Eole's environment

def eole_command(venv):
    return os.path.join(venv, "bin", "eole")


def eole_versions(venv):
    """`{"eole": ..., "torch": ...}` as installed in `venv`, or None when eole is missing."""
    python = os.path.join(venv, "bin", "python")
    if not (os.path.exists(python) and os.path.exists(eole_command(venv))):
        return None
    code = "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in ('eole', 'torch')}))"
    result = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return json.loads(result.stdout) if result.returncode == 0 else None


def setup_eole(venv):
    """Creates `venv` with Eole; torch first, so that Eole's `torch` requirement is met by the CPU build."""
    print(f"creating {venv} (torch=={TORCH_VERSION}, eole=={EOLE_VERSION}, aiohttp) ...", file=sys.stderr, flush=True)
    pip = os.path.join(venv, "bin", "pip")
    for command in ([sys.executable, "-m", "venv", venv],
                    [pip, "install", "-q", f"torch=={TORCH_VERSION}"],
                    [pip, "install", "-q", f"eole=={EOLE_VERSION}", "aiohttp"]):
        subprocess.run(command, check=True)


def check_eole(args):
    versions = eole_versions(args.eole_venv)
    if versions is None and args.setup:
        setup_eole(args.eole_venv)
        versions = eole_versions(args.eole_venv)
    if versions is None:
        raise SystemExit(f"{args.eole_venv}: no eole installed there; pass --setup to create it, or --eole-venv")
    if versions["eole"] != EOLE_VERSION:
        print(f"warning: {args.eole_venv} has eole {versions['eole']}, this benchmark was written for "
              f"{EOLE_VERSION}", file=sys.stderr)
    return versions


# ---------------------------------------------------------------- the shared data

def prepare_data(work):
    """Trains the two SentencePiece models and writes Eole's pre-tokenized corpus and
    vocabularies (see the module docstring); `WORK/data.json` records what it wrote. Runs in
    a child process (`--prepare-data`), so TensorFlow, which keras-hub's tokenizers import,
    does not stay in memory beside the two trainings."""
    import sentencepiece

    from kerasformer.config import PRESETS
    from kerasformer.training.config import TrainConfig
    from kerasformer.training.corpus_reader import read_corpus
    from kerasformer.training.tokenizers import save_tokenizer, train_sentencepiece

    config = TrainConfig()  # the embedded corpus's files, as kerasformer-train finds them
    max_source = PRESETS[PRESET]["max_source_length"]
    max_target = PRESETS[PRESET]["max_target_length"] - 1  # [START] / [END] take one place (text_rules)
    splits = {"train": read_corpus(config.corpus_file("train")),
              "valid": read_corpus(config.corpus_file("validation"))}
    tokenizers = os.path.join(work, "tokenizers")
    data = os.path.join(work, "eole-data")
    os.makedirs(tokenizers, exist_ok=True)
    os.makedirs(data, exist_ok=True)
    record = {"vocabulary_size": VOCABULARY_SIZE, "max_source_pieces": max_source, "max_target_pieces": max_target,
              "pairs": {}, "cut": {}, "vocabulary": {}}
    for side, eole_side, keep in (("source", "src", max_source), ("target", "tgt", max_target)):
        started = time.monotonic()
        texts = getattr(splits["train"], f"{side}s")
        proto = train_sentencepiece(texts, VOCABULARY_SIZE)  # what prepare_tokenizers in training/train.py calls
        save_tokenizer(proto, os.path.join(tokenizers, f"{side}.model"))
        processor = sentencepiece.SentencePieceProcessor(model_proto=proto)
        pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
        if pieces[:4] != list(OUR_SPECIAL_PIECES):
            raise RuntimeError(f"{side} tokenizer: ids 0-3 are {pieces[:4]}, expected {list(OUR_SPECIAL_PIECES)}")
        # Token-only lines: Eole's _read_vocab_file keeps each line whole as one token.
        with open(os.path.join(data, f"vocab.{eole_side}"), "w", encoding="utf-8") as file:
            file.writelines(piece + "\n" for piece in pieces[4:])
        record["vocabulary"][side] = len(pieces)
        for split, corpus in splits.items():
            cut = 0
            with open(os.path.join(data, f"{split}.{eole_side}"), "w", encoding="utf-8") as file:
                for row in processor.encode(getattr(corpus, f"{side}s"), out_type=str):
                    cut += len(row) > keep
                    file.write(" ".join(row[:keep]) + "\n")
            record["pairs"][split] = len(corpus)
            record["cut"][f"{split}.{eole_side}"] = cut
        print(f"{side}: SentencePiece {len(pieces)} pieces, corpus written in {time.monotonic() - started:.0f} s",
              file=sys.stderr, flush=True)
    with open(os.path.join(work, "data.json"), "w", encoding="utf-8") as file:
        json.dump(record, file, indent=2)


def shared_data(args):
    """The prepared data's record; prepared (in a child process) unless already in --work-dir."""
    path = os.path.join(args.work_dir, "data.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as file:
            record = json.load(file)
        files = [os.path.join("tokenizers", f"{side}.{kind}") for side in ("source", "target") for kind in
                 ("model", "vocab")]
        files += [os.path.join("eole-data", f"{name}.{side}") for name in ("train", "valid", "vocab")
                  for side in ("src", "tgt")]
        if record.get("vocabulary_size") == VOCABULARY_SIZE and all(
                os.path.exists(os.path.join(args.work_dir, name)) for name in files):
            print(f"reusing the tokenizers and Eole data in {args.work_dir}", file=sys.stderr)
            return record
    os.makedirs(args.work_dir, exist_ok=True)
    subprocess.run([sys.executable, os.path.abspath(__file__), "--prepare-data", args.work_dir], cwd=ROOT, check=True)
    with open(path, encoding="utf-8") as file:
        return json.load(file)


# ---------------------------------------------------------------- ours

def run_ours(args):
    """Trains ours for --minutes in a fresh run folder that holds the shared tokenizers."""
    run_dir = os.path.join(args.work_dir, "ours")
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: an old one would resume, or have nothing to do
    os.makedirs(os.path.join(run_dir, "tokenizers"))
    for name in ("source.model", "source.vocab", "target.model", "target.vocab"):
        shutil.copy(os.path.join(args.work_dir, "tokenizers", name), os.path.join(run_dir, "tokenizers", name))
    command = [sys.executable, "-m", "kerasformer.training.train", "--config", BASE_CONFIG, "--run-dir", run_dir,
               "--time-budget-minutes", f"{args.minutes:g}", "--vocabulary-size", str(VOCABULARY_SIZE),
               "--batch-tokens", str(BATCH_TOKENS), "--model",
               json.dumps(ours_model(args)),
               "--learning-rate-schedule", "paper", "--warmup-steps", str(WARMUP_STEPS), "--peak-learning-rate", "0",
               "--label-smoothing", str(LABEL_SMOOTHING), "--preset", PRESET, "--log-level", "info"]
    log = os.path.join(args.work_dir, "ours.log")
    print(f"ours: training {args.minutes:g} min (KERAS_BACKEND={args.backend}); log {log}", file=sys.stderr, flush=True)
    started = time.monotonic()
    with open(log, "w", encoding="utf-8") as file:
        file.write("$ " + " ".join(command) + "\n")
        file.flush()
        code = subprocess.call(command, cwd=ROOT, stdout=file, stderr=subprocess.STDOUT,
                               env={**os.environ, "KERAS_BACKEND": args.backend})
    if code:
        raise RuntimeError(f"our trainer exited with {code}; see {log}")
    with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as file:
        metrics = json.load(file)
    seconds, steps = metrics["train_seconds"], metrics["train_steps"]
    rate = metrics["train_tokens_per_second"]
    if not steps:
        raise RuntimeError(f"our trainer ran {metrics['total_steps']} step(s) in {args.minutes:g} min, none after "
                           "the first (tracing): train longer (--minutes)")
    return {
        "toolkit": f"kerasformer ({args.backend})",
        "steps": metrics["total_steps"],
        "target_tokens_per_second": rate,
        "target_tokens_per_step": round(rate * seconds / steps, 1),
        "measured_steps": steps,
        "measured_seconds": seconds,
        "parameters": metrics["parameters"],
        "wall_seconds": round(time.monotonic() - started, 1),
        "command": command,
        "log": log,
    }


# ---------------------------------------------------------------- Eole

def eole_config(args, data_dir, model_dir, record):
    """Eole's training config (keys: eole/config/{run,data,models,training,common}.py of 0.6.4)."""
    return {
        "seed": 1234,
        "report_every": args.report_every,
        "src_vocab": os.path.join(data_dir, "vocab.src"),
        "tgt_vocab": os.path.join(data_dir, "vocab.tgt"),
        "src_vocab_size": record["vocabulary"]["source"],
        "tgt_vocab_size": record["vocabulary"]["target"],
        "vocab_size_multiple": 8,  # 8000 already is one: nothing added
        "share_vocab": False,
        "data": {
            "corpus_1": {"path_src": os.path.join(data_dir, "train.src"),
                         "path_tgt": os.path.join(data_dir, "train.tgt")},
            "valid": {"path_src": os.path.join(data_dir, "valid.src"),
                      "path_tgt": os.path.join(data_dir, "valid.tgt")},
        },
        "model": {
            "architecture": "transformer",
            "hidden_size": 128,
            "layers": NUM_LAYERS,  # each of encoder and decoder
            "heads": 4,
            "transformer_ff": 512,
            "add_qkvbias": True,  # biases on q, k, v, as ours
            "add_final_linear_bias": True,  # and on the attention's output projection (else the encoder's has none)
            "add_ffnbias": True,
            "share_decoder_embeddings": True,  # ours: tie_embeddings
            "generator_bias": False,  # ours: a tied output projection has no bias
            "embeddings": {"word_vec_size": 128, "position_encoding_type": "SinusoidalInterleaved"},
        },
        "training": {
            "model_path": model_dir,
            "train_steps": 10_000_000,  # stopped by time, never by steps
            "save_checkpoint_steps": 10_000_000,
            "valid_steps": 10_000_000,
            "world_size": 1,
            "gpu_ranks": [],
            "num_workers": 0,
            # One bucket is one pass over the corpus, sorted by length, then cut into batches that are
            # shuffled (ours: one epoch shuffled, then bucketed). Eole's default, 262144 examples, would
            # fill its first bucket with nine passes of this corpus before the first step.
            "bucket_size": record["pairs"]["train"],
            "batch_type": "tokens",
            "batch_size": BATCH_TOKENS,
            "batch_size_multiple": 1,
            "normalization": "tokens",
            "accum_count": [1],
            "accum_steps": [0],
            "optim": "adam",
            "adam_beta1": 0.9,
            "adam_beta2": 0.98,
            "adam_eps": 1e-9,
            "learning_rate": 1.0,  # noam x 1: the paper's rate, as ours with --peak-learning-rate 0
            "decay_method": "noam",
            "warmup_steps": WARMUP_STEPS,
            "max_grad_norm": 0,
            "label_smoothing": LABEL_SMOOTHING,
            "dropout": [args.dropout],  # sublayer outputs, embeddings and the FFN's inner activation
            "attention_dropout": [args.dropout],
            "dropout_steps": [0],
            "param_init_method": "xavier_uniform",
            "compute_dtype": "fp32",
        },
    }


def run_eole(args, record, versions):
    """Runs `eole train` and stops it --minutes after its training loop started."""
    import yaml

    work = os.path.join(args.work_dir, "eole")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    config_file = os.path.join(work, "config.yaml")
    with open(config_file, "w", encoding="utf-8") as file:
        yaml.safe_dump(eole_config(args, os.path.join(args.work_dir, "eole-data"), os.path.join(work, "model"),
                                   record), file, sort_keys=False)
    command = [eole_command(args.eole_venv), "train", "-config", config_file]
    log = os.path.join(args.work_dir, "eole.log")
    print(f"eole: training {args.minutes:g} min; log {log}", file=sys.stderr, flush=True)
    started = time.monotonic()
    loop_started = threading.Event()
    with open(log, "w", encoding="utf-8") as file:
        file.write("$ " + " ".join(command) + "\n")
        file.flush()
        # Its own session, so that the stop signal reaches every process it may start.
        process = subprocess.Popen(command, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True)

        def copy_log():
            for line in process.stdout:
                file.write(line)
                file.flush()
                if EOLE_LOOP_STARTED in line:
                    loop_started.set()

        reader = threading.Thread(target=copy_log, daemon=True)
        reader.start()
        try:
            while not loop_started.wait(1.0):
                if process.poll() is not None:
                    raise RuntimeError(f"eole train exited with {process.returncode} before training; see {log}")
            deadline = time.monotonic() + args.minutes * 60
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise RuntimeError(f"eole train exited with {process.returncode} during training; see {log}")
                time.sleep(min(1.0, deadline - time.monotonic()))
        finally:  # also on an error or Ctrl-C here: its own session does not get our SIGINT
            stop(process)
            reader.join()
    with open(log, encoding="utf-8") as file:
        text = file.read()
    result = eole_figures(text)
    result.update({
        "toolkit": f"Eole {versions['eole']} (torch {versions['torch']})",
        "parameters": int(EOLE_PARAMETERS.findall(text)[-1]) if EOLE_PARAMETERS.search(text) else None,
        "vocabulary": {side: int(size) for side, size in EOLE_VOCAB.findall(text)},
        "wall_seconds": round(time.monotonic() - started, 1),
        "command": command,
        "log": log,
    })
    return result


def stop(process):
    """SIGTERM to Eole's process group; SIGKILL if it has not ended 30 s later."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def eole_figures(text):
    """Eole's steady throughput from its step reports (see the module docstring)."""
    reports = [{key: float(value) for key, value in match.groupdict().items()} for match in EOLE_REPORT.finditer(text)]
    if len(reports) < 2:
        raise RuntimeError(f"Eole logged {len(reports)} step report(s); at least 2 are needed: train longer "
                           "(--minutes) or report more often (--report-every)")
    steady = reports[1:]
    if reports[-1]["sec"] <= reports[0]["sec"]:
        raise RuntimeError(f"Eole's step reports span {reports[-1]['sec'] - reports[0]['sec']:g} s: train longer")
    tokens = sum(report["tgt"] * (report["step"] - before["step"]) for before, report in zip(reports, steady))
    seconds = reports[-1]["sec"] - reports[0]["sec"]
    steps = reports[-1]["step"] - reports[0]["step"]
    everything = sum(report["tgt"] * (report["step"] - before) for before, report in
                     zip([0.0] + [r["step"] for r in reports], reports))
    return {
        "steps": int(reports[-1]["step"]),  # the last report's; it stopped within --report-every steps after
        "target_tokens_per_second": round(tokens / seconds, 1),
        "target_tokens_per_step": round(tokens / steps, 1),
        "measured_steps": int(steps),
        "measured_seconds": reports[-1]["sec"] - reports[0]["sec"],
        # From the start of its training loop to the last report, the first report included.
        "target_tokens_per_second_whole_window": round(everything / reports[-1]["sec"], 1),
        "reports": reports,
    }


# ---------------------------------------------------------------- the table

def write(args, argv, results, record, versions):
    from benchmarks.results import machine, write_table

    ours, eole = results["ours"], results["eole"]
    ratio = ours["target_tokens_per_second"] / eole["target_tokens_per_second"]
    columns = ["toolkit", f"steps in {args.minutes:g} min", "target tokens / step", "target tokens/s",
               "parameters", "ratio ours / Eole"]
    rows = [[r["toolkit"], f"{r['steps']:,}", f"{r['target_tokens_per_step']:,.0f}",
             f"{r['target_tokens_per_second']:,.0f}", f"{r['parameters']:,}" if r["parameters"] else "?",
             f"{ratio:.2f}" if r is ours else ""] for r in (results[name] for name in args.order.split(","))]
    notes = [
        f"One run ({' then '.join(args.order.split(','))}) on {machine()}; {args.minutes:g} "
        f"minutes of training each; Eole {versions['eole']} with torch {versions['torch']} in {args.eole_venv}.",
        f"Same model (the `small` preset: d_model 128, 4 heads, d_ff 512, 3+3 layers, dropout {args.dropout} on sublayer outputs, embeddings, attention weights and the FFN's inner activation, tied "
        f"output projection), same SentencePiece models ({record['vocabulary']['source']:,} / "
        f"{record['vocabulary']['target']:,} pieces; Eole's vocabularies "
        f"{eole['vocabulary'].get('src', '?')} / {eole['vocabulary'].get('tgt', '?')}), same pre-cut pairs "
        f"({record['pairs']['train']:,}), batches of {BATCH_TOKENS} padded tokens per side, label smoothing "
        f"{LABEL_SMOOTHING}, Adam with the paper's schedule (warmup {WARMUP_STEPS}), float32 on CPU. "
        f"Ours: --model '{json.dumps(ours_model(args))}'; Eole's decoder is pre-norm only.",
        "Target tokens: non-padding labels (pieces + end token) in both. Ours: metrics.json "
        "`train_tokens_per_second` (after the first step, validation left out). Eole: its step reports "
        f"(every {args.report_every} steps) after the first, tokens over seconds; its steps: the last report's.",
        "Batches pack differently (ours: buckets 8 ids wide padded to the bound; Eole: the corpus sorted by "
        "length), so target tokens per step differ; compare tokens/s.",
        f"Ratio: ours / Eole target tokens/s. `{shlex.join(['python', 'benchmarks/peer_eole.py', *argv])}`; "
        "the module docstring says exactly what runs.",
    ]
    extra = {"settings": {key: value for key, value in vars(args).items() if key != "prepare_data"},
             "eole_versions": versions, "data": record, "ratio": round(ratio, 3),
             "started": results["started"], "ours": ours, "eole": eole}
    write_table(args.out, "Training throughput: kerasformer vs Eole (peer toolkit), same model, data and batch",
                columns, rows, notes, extra=extra)


def main(argv=None):
    args = parse_args(argv)
    if args.prepare_data:
        prepare_data(args.prepare_data)
        return
    versions = check_eole(args)
    record = shared_data(args)
    results = {"started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    for name in args.order.split(","):
        results[name] = run_ours(args) if name == "ours" else run_eole(args, record, versions)
        print(f"{name}: {results[name]['target_tokens_per_second']:,.0f} target tokens/s, "
              f"{results[name]['steps']:,} steps", file=sys.stderr, flush=True)
    write(args, sys.argv[1:] if argv is None else argv, results, record, versions)


if __name__ == "__main__":
    main()
