"""Export a trained run as a SavedModel that TensorFlow Serving loads: raw text in,
translated text out, the whole greedy loop inside one graph.

    python -m kerasformer.export.exporter runs/small-en-es --name kerasformer_en_es
    kerasformer-export runs/small-en-es --name kerasformer_en_es [--model-version 3]

writes `saved_models/NAME/VERSION/`, the layout the model server watches:

    saved_model.pb        the graph and its seven signatures (below)
    variables/            the trained weights
    assets/               source.model/.vocab, target.model/.vocab (SentencePiece), and
                          config.json, the run's (`kerasformer.export.recover` makes a run
                          folder from an export again, for a later exporter's signatures)
    assets.extra/tf_serving_warmup_requests
                          PredictionLogs the server replays before taking traffic

Signatures. Every input has a leading batch dimension and is required (no
SignatureDef defaults: the model server's REST API honours none, and its
batching refuses rank-0 inputs); every output is batch-major, so the batching
server can merge requests and split the answers (batching/batching_util.h).

    serving_default   text        string [batch]          the sentences to translate, greedy
                   -> translation string [batch]
                      tokens      int32 [batch, width]    target ids without [END], 0-padded
                      length      int32 [batch]           ids per row
    translate_max_length
                      text        string [batch]
                      max_length  int32 [batch]           each row's most target tokens ([END]
                                                          included): < 1 is INVALID_ARGUMENT,
                                                          above the decoder's max_length clipped
                   -> translation, tokens, length as in serving_default
    translate_beam    text        string [batch]          beam search, beam size and length
                                                          penalty fixed here (--beam-size, --alpha)
                   -> translation, tokens, length as in serving_default
                      score       float32 [batch]         log P(Y|X) / lp(Y) of each translation
    translate_beam_max_length
                      text, max_length as in translate_max_length
                   -> translation, tokens, length, score as in translate_beam
    translate_tokens  tokens      int32 [batch, n]        source ids, 0-padded (a row ends at its
                                                          first 0), greedy
                   -> tokens, length as in serving_default
    translate_attention
                      text        string [batch]          greedy, as serving_default
                   -> translation, tokens, length as in serving_default
                      source_pieces
                                  string [batch, s]       the source's SentencePiece pieces, "" after
                      source_length
                                  int32 [batch]           pieces per row
                      target_pieces
                                  string [batch, t]       the generated pieces, [END] included
                                                          when the row produced it, "" after
                      target_length
                                  int32 [batch]           decoding steps per row (pieces)
                      encoder_self_attention
                                  float32 [batch, encoder layers, heads, s, s]
                      decoder_self_attention
                                  float32 [batch, decoder layers, heads, t, t]
                      cross_attention
                                  float32 [batch, decoder layers, heads, t, s]
                                  the weights of the decoding itself (the cached loop's, step
                                  by step); row i of the decoder's is the step that generated
                                  target piece i, whose query is the piece before it ([START]
                                  for i = 0); -1 in every row and column past a row's length
    translate_beam_attention
                      text        string [batch]          beam search, as translate_beam
                   -> the outputs of translate_attention, for each row's best hypothesis,
                      and score as in translate_beam

The signatures without a max_length input stop each row at ceil(a * source ids + b)
target ids, the run's length rule (config.json "decoding", fitted to the training pairs:
a looping model stops near its source's length), and never past --max-length (default:
the decoder's max_length). A max_length input replaces both.

Sources longer than the encoder's max_length tokens are truncated (as in
training). Tokenization and detokenization are the run's keras-hub
SentencePiece tokenizers, i.e. tensorflow-text ops, which the stock model server
links; the decoder loops are `kerasformer.decoding.greedy_decode` and
`beam_search` (`tf.while_loop`s with a key/value cache) traced without XLA, because the model
server disables XLA on CPU unless started with --xla_cpu_compilation_enabled.

Export runs under the TensorFlow backend. Called under JAX or torch, it re-runs
itself in a TensorFlow-backend process that loads the run's `.keras` file (Keras
files are backend-independent).

A version folder appears atomically: everything is written to a dot-folder
beside it (ignored by the server, which only loads numeric folders) and renamed
into place, and an existing version is never overwritten. An export that fails
(a full disk: `ExportError`) removes its dot-folder; one that is killed leaves it
behind, named `.tmp-VERSION-pidPID-XXXXXXXX`, and the next export into the same
folder removes it -- never one of an export still running, which holds a lock.
"""

import argparse
import collections
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import sys

import keras

from kerasformer.training.cli import LOG_LEVELS, command_line, configure
from kerasformer.training.files import OUT_OF_SPACE, atomic_folder, out_of_space

DEFAULT_BASE_DIR = "saved_models"
# The beam search of the translate_beam signatures: the paper's (section 6.1).
BEAM_SIZE, ALPHA = 4, 0.6
SIGNATURES = (
    "serving_default", "translate_max_length", "translate_beam", "translate_beam_max_length", "translate_tokens",
    "translate_attention", "translate_beam_attention",
)
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
# Replayed by the model server at load time (one batch of mixed lengths), with one
# max_length per text where the signature takes it, and 0-ended token rows.
WARMUP_TEXTS = ("Hello.", "In the beginning, God created the heavens and the earth.", "")
WARMUP_MAX_LENGTHS = (4, 16, 1)
WARMUP_TOKENS = ((5, 6, 7, 0), (8, 0, 0, 0))
# The exporter's own work folders: only these are ever removed as leftovers.
WORK_FOLDER = re.compile(r"\.tmp-\d+-pid\d+-")

# How the command line reports an ExportError (exit status 1), one line.
EXPORT_ERROR_PREFIX = "kerasformer-export: error: "

log = logging.getLogger("kerasformer.export")


class ExportError(OSError):
    """An export that could not be written; it published nothing and removed its files."""

    def __init__(self, message, code=None):
        super().__init__(message)
        self.errno = code


def next_version(model_dir):
    """1 + the largest version folder in `model_dir` (1 if none), version folders
    as the server sees them."""
    from kerasformer.export.serving.model_repository import version_folders

    return max(version_folders(model_dir), default=0) + 1


def export_run(
    run_dir,
    name,
    base_dir=DEFAULT_BASE_DIR,
    version=None,
    checkpoint="best",
    max_length=None,
    warmup=True,
    beam_size=BEAM_SIZE,
    alpha=ALPHA,
):
    """Exports `RUN_DIR/{checkpoint}.keras` and the run's tokenizers to
    `base_dir/name/version/` and returns that path.

    Args:
        run_dir: a training run folder (see `kerasformer.training.train`).
        name: the model name the server answers to.
        version: the version number; by default the next free one. An existing
            version is never overwritten (FileExistsError).
        max_length: the limit of the signatures without a `max_length` input
            (default: the decoder's max_length).
        warmup: write `assets.extra/tf_serving_warmup_requests`.
        beam_size, alpha: the beam search of the `translate_beam` signatures:
            hypotheses per sentence, in [1, vocab_size), and the length
            penalty's exponent, >= 0 (default: the paper's, 4 and 0.6).

    Raises ValueError for a name that is not one plain folder name (`..`, `a/b`).
    """
    from kerasformer.export.serving.model_config import check_model_name

    check_model_name(name)
    if keras.backend.backend() != "tensorflow":
        return _export_in_tensorflow_process(run_dir, name, base_dir, version, checkpoint, max_length, warmup,
                                             beam_size, alpha)
    from kerasformer.training.run_folder import RunFolder

    run = RunFolder(run_dir)
    _, source_model, target_model = run.finished_files(checkpoint)
    return export_model(
        run.load_model(checkpoint),
        source_model,
        target_model,
        os.path.join(base_dir, name),
        version=version,
        max_length=max_length,
        warmup=warmup,
        beam_size=beam_size,
        alpha=alpha,
        length_rule=run.length_rule(),
        run_config=run.config_file if os.path.exists(run.config_file) else None,
    )


def export_model(model, source_model, target_model, model_dir, version=None, max_length=None, warmup=True,
                 beam_size=BEAM_SIZE, alpha=ALPHA, length_rule=None, run_config=None):
    """Exports a `build_seq2seq` model with its SentencePiece model files
    (`.model`, a `.vocab` listing beside each is copied too) to
    `model_dir/version/` atomically; returns that path. TensorFlow backend only.
    `max_length`, `beam_size`, `alpha`: as in `export_run`; `length_rule`: the run's
    `(a, b)` (`translation_module.TranslationModule`); `run_config`: the run's config.json,
    kept as `assets/config.json`, so that the export can be made again from itself
    (`kerasformer.export.recover`).

    Raises `ExportError` when the disk (or quota) is full; the versions already
    there are untouched and nothing of this one is left."""
    import tensorflow as tf

    from kerasformer.export.serving.model_repository import version_folders
    from kerasformer.export.serving_ops import check_servable_ops
    from kerasformer.export.translation_module import TranslationModule

    os.makedirs(model_dir, exist_ok=True)
    version = next_version(model_dir) if version is None else int(version)
    if version < 1:
        raise ValueError(f"version={version}: TensorFlow Serving versions are positive integers")
    final = os.path.join(model_dir, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"{final} exists; versions are never overwritten (omit --model-version for the next free one)")

    with _exporting(model_dir):
        try:
            # Everything, the vocabulary copies included, is written inside one work folder
            # beside the final one; the model server only loads numeric folder names, so it
            # never sees it (`.tmp-VERSION-pidPID-`, removed by a later export if left behind).
            with atomic_folder(final, prefix=f".tmp-{version}-pid{os.getpid()}-") as (staging, vocabularies):
                for side, path in (("source", source_model), ("target", target_model)):
                    shutil.copyfile(path, os.path.join(vocabularies, f"{side}.model"))
                    listing = os.path.splitext(path)[0] + ".vocab"
                    if os.path.exists(listing):
                        shutil.copyfile(listing, os.path.join(vocabularies, f"{side}.vocab"))
                if run_config is not None:
                    shutil.copyfile(run_config, os.path.join(vocabularies, "config.json"))
                module = TranslationModule(model, vocabularies, max_length, beam_size, alpha, length_rule)
                tf.saved_model.save(module, staging, signatures={name: getattr(module, name) for name in SIGNATURES})
                check_servable_ops(staging)
                if warmup:
                    write_warmup_requests(staging, os.path.basename(os.path.abspath(model_dir)))
        except BaseException as error:
            code = out_of_space(error)
            if code is None:
                raise
            kept = ", ".join(map(str, sorted(version_folders(model_dir))))
            raise ExportError(
                f"{model_dir}: {OUT_OF_SPACE[code]} while writing version {version}; nothing was published"
                + (f" and the earlier versions ({kept}) are untouched" if kept else ""),
                code,
            ) from error
    return final


@contextlib.contextmanager
def _exporting(model_dir):
    """Marks an export as running in `model_dir` while the block runs: a shared
    `flock` on the folder, which the kernel releases however the process ends
    (SIGKILL included). On entry, if no other export holds it, first removes the
    work folders that killed exports left behind. A lock, not the pid in the
    folder name: pids are reused, and differ between containers sharing a volume.
    Where the filesystem has no flock, nothing is removed."""
    descriptor = os.open(model_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pass  # another export is running (or no flock here): its folder is not ours to judge
        else:
            for entry in sorted(os.listdir(model_dir)):
                path = os.path.join(model_dir, entry)
                if WORK_FOLDER.match(entry) and os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                    log.warning("removed %s, left by an export that did not finish", path)
        with contextlib.suppress(OSError):
            fcntl.flock(descriptor, fcntl.LOCK_SH)  # converts the exclusive lock, if held
        yield
    finally:
        os.close(descriptor)


def write_warmup_requests(saved_model_dir, model_name):
    """Writes `assets.extra/tf_serving_warmup_requests`: one PredictionLog per
    signature, so the server runs every graph once before it takes traffic.

    Each request carries exactly its signature's inputs, each with the same
    batch dimension: the model server replays them through the Predict path
    (servables/tensorflow/saved_model_warmup.cc), which refuses a missing or
    extra input (predict_util.cc VerifyRequestInputsSize), and a failed warmup
    fails the load."""
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    path = os.path.join(saved_model_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    text = tf.make_tensor_proto([t.encode("utf-8") for t in WARMUP_TEXTS], dtype=tf.string)
    max_length = tf.make_tensor_proto(list(WARMUP_MAX_LENGTHS), dtype=tf.int32)
    inputs = {
        "serving_default": {"text": text},
        "translate_max_length": {"text": text, "max_length": max_length},
        "translate_beam": {"text": text},
        "translate_beam_max_length": {"text": text, "max_length": max_length},
        "translate_tokens": {"tokens": tf.make_tensor_proto([list(row) for row in WARMUP_TOKENS], dtype=tf.int32)},
        "translate_attention": {"text": text},
        "translate_beam_attention": {"text": text},
    }
    assert tuple(inputs) == SIGNATURES
    with tf.io.TFRecordWriter(path) as writer:
        for signature, tensors in inputs.items():
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature)
            )
            for key, proto in tensors.items():
                request.inputs[key].CopyFrom(proto)
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def _export_in_tensorflow_process(run_dir, name, base_dir, version, checkpoint, max_length, warmup, beam_size, alpha):
    """Runs this module under KERAS_BACKEND=tensorflow and returns the version path.

    The child logs at this process's level of the `kerasformer` loggers, and its stderr
    (log messages, TensorFlow's) is passed on line by line as it comes, so that a user sees
    what the export does; only its last line, an `ExportError`'s, is held back and raised."""
    effective = logging.getLogger("kerasformer").getEffectiveLevel()
    level = next((name for name in LOG_LEVELS if logging.getLevelName(name.upper()) >= effective), "critical")
    args = [sys.executable, "-m", "kerasformer.export.exporter", run_dir, "--name", name, "--base-dir", base_dir,
            "--checkpoint", checkpoint, "--print-json", "--log-level", level]
    if version is not None:
        args += ["--model-version", str(version)]
    if max_length is not None:
        args += ["--max-length", str(max_length)]
    args += ["--beam-size", str(beam_size), "--alpha", repr(float(alpha))]
    if not warmup:
        args += ["--no-warmup"]
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    tail = collections.deque(maxlen=40)  # the end of the child's stderr, for the error of a crash
    with subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
        for line in child.stderr:  # the child writes one JSON line to stdout, at its end
            if tail:
                sys.stderr.write(tail[-1])
            tail.append(line)
        output = child.stdout.read()
    last_line = tail[-1] if tail else ""
    if child.returncode == 1 and last_line.startswith(EXPORT_ERROR_PREFIX):
        raise ExportError(last_line[len(EXPORT_ERROR_PREFIX):].rstrip("\n"))
    sys.stderr.write(last_line)
    if child.returncode != 0:
        raise RuntimeError(f"export under the TensorFlow backend failed:\n{''.join(tail)[-4000:]}")
    return json.loads(output.strip().splitlines()[-1])["path"]


def make_parser():
    parser = command_line("kerasformer-export", __doc__.split("\n\n")[0], model_version=True)
    parser.add_argument("run_dir", help="training run folder (best.keras, tokenizers/)")
    parser.add_argument("--name", default="kerasformer", help="model name (folder under --base-dir)")
    parser.add_argument("--base-dir", default=DEFAULT_BASE_DIR, help="model server base path")
    parser.add_argument("--model-version", type=int, metavar="N",
                        help="version number of the export (default: the next free one)")
    parser.add_argument("--checkpoint", default="best", choices=("best", "last"), help="the run's model to export")
    parser.add_argument("--max-length", type=int,
                        help="most target tokens of the signatures without a max_length input "
                             "(default: the decoder's max_length)")
    parser.add_argument("--beam-size", type=int, default=BEAM_SIZE,
                        help="hypotheses per sentence of the translate_beam signatures")
    parser.add_argument("--alpha", type=float, default=ALPHA,
                        help="length penalty exponent of the translate_beam signatures")
    parser.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                        help="write assets.extra/tf_serving_warmup_requests, replayed by the model server at load")
    parser.add_argument("--print-json", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    parser = make_parser()
    args = parser.parse_args(argv)
    configure(args)
    from kerasformer.export.serving.model_config import check_model_name

    try:
        check_model_name(args.name)
    except ValueError as error:
        parser.error(f"--name: {error}")
    try:
        path = export_run(args.run_dir, args.name, args.base_dir, args.model_version, args.checkpoint,
                          args.max_length, args.warmup, args.beam_size, args.alpha)
    except ExportError as error:
        parser.exit(1, f"{EXPORT_ERROR_PREFIX}{error}\n")
    if args.print_json:
        print(json.dumps({"path": path}))
    else:
        print(f"exported {args.run_dir} to {path}")
        print(f"inspect: saved_model_cli show --dir {path} --all")


if __name__ == "__main__":
    main()
