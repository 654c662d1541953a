"""Runs an exported signature the way TensorFlow Serving does: through its
SignatureDef in a TF1 session, feeding and fetching the tensor names the
signature lists, with nothing imported but `tensorflow` and `tensorflow_text`.

    python export/session_check.py saved_models/kerasformer_en_es/1 "Hello." "Jesus wept."
    python export/session_check.py DIR --signature translate_max_length --max-length 5 "Hello."
    python export/session_check.py DIR --signature translate_tokens --tokens '[[5, 6, 7, 0]]'
    python export/session_check.py DIR --requests requests.json
    python export/session_check.py DIR --warmup
    python export/session_check.py --help     (every flag, with its default)

Prints one JSON object: the outputs by name (or, with --requests, a list of
{"signature": ..., "inputs": {...}} run in one session, "results" in that
order; with --warmup, the export's own warmup requests, replayed as the model
server replays them at load time) and the top-level modules that were imported,
so a test can check that no kerasformer/keras-hub code was needed.
Run it as a file, not with `-m`, so that the `export` package is not imported.
"""

import argparse
import json
import logging
import os
import sys

import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the SentencePiece ops, as the model server links them)


def run_signatures(saved_model_dir, requests):
    """`requests`: [(signature name, {input name: value})]. Returns one
    {output name: array} per request.

    Every input of the signature must be fed and no other (ValueError otherwise,
    with the model server's text); inputs with SignatureDef defaults may be left
    out, as the server's Predict does (servables/tensorflow/predict_util.cc
    VerifyRequestInputsSize)."""
    with tf.compat.v1.Session(graph=tf.Graph()) as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], saved_model_dir)
        results = []
        for signature_name, feeds in requests:
            signature = meta_graph.signature_def[signature_name]
            check_inputs(signature, feeds)
            feed_dict = {signature.inputs[name].name: value for name, value in feeds.items()}
            fetches = {name: info.name for name, info in signature.outputs.items()}
            results.append(session.run(fetches, feed_dict))
        return results


def check_inputs(signature, feeds):
    """Raises ValueError, with predict_util.cc's message, unless `feeds` names
    exactly the signature's inputs (or leaves out some, if it has defaults)."""
    sent, expected = set(feeds), set(signature.inputs)
    if len(sent) > len(expected) or (len(sent) < len(expected) and not signature.defaults):
        join = lambda names: ",".join(sorted(names))  # noqa: E731
        raise ValueError(
            f"input size does not match signature: {len(sent)}!={len(expected)} len({{{join(sent)}}}) != "
            f"len({{{join(expected)}}}). Sent extra: {{{join(sent - expected)}}}. "
            f"Missing but required: {{{join(expected - sent)}}}."
        )


def warmup_requests(saved_model_dir):
    """[(signature name, {input name: array})] of the export's
    `assets.extra/tf_serving_warmup_requests` (PredictLogs)."""
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(saved_model_dir, "assets.extra", "tf_serving_warmup_requests")
    requests = []
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
        name = request.model_spec.signature_name or "serving_default"
        requests.append((name, {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}))
    return requests


def _feeds(inputs):
    return {k: [t.encode("utf-8") for t in v] if k == "text" else v for k, v in inputs.items()}


def to_json(value):
    """A fetched array as JSON values, nested as its shape; strings decoded from UTF-8."""
    if value.dtype == object:
        if value.ndim == 0:
            return value.item().decode("utf-8")
        return [to_json(v) if isinstance(v, np.ndarray) else v.decode("utf-8") for v in value]
    return value.tolist()


class _PrintVersion(argparse.Action):
    """`--version`: imports the package's version reader only when asked, since the modules this
    script reports must stay TensorFlow's (the version itself is written in pyproject.toml)."""

    def __init__(self, option_strings, dest, help=None):
        super().__init__(option_strings, dest=argparse.SUPPRESS, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a file
        from kerasformer.training.cli import package_version

        print(f"{parser.prog} {package_version()}")
        parser.exit()


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each flag's default, but none for a flag without one (None)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def make_parser():
    # training/cli.py's command_line, rebuilt from the standard library: importing it would put
    # `training` among the modules this script reports (tests/test_export.py checks there are none).
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--version", action=_PrintVersion, help="print the program's version and exit")
    parser.add_argument("--log-level", default="info", type=str.lower,
                        choices=("debug", "info", "warning", "error", "critical"),
                        help="least severe log messages shown")
    parser.add_argument("saved_model_dir", help="a version folder of an export (saved_model.pb, variables/)")
    parser.add_argument("texts", nargs="*", help="the text input (every signature but translate_tokens)")
    parser.add_argument("--signature", default="serving_default", help="the signature to run")
    parser.add_argument("--tokens", metavar="JSON", help="JSON list of 0-padded id rows, the input of translate_tokens (default: none, the texts)")
    parser.add_argument("--max-length", type=int, metavar="N",
                        help="the max_length input of translate_max_length and translate_beam_max_length, one per "
                             "text (default: none)")
    parser.add_argument("--requests", metavar="FILE", help="JSON file: a list of {signature, inputs} run in one session (default: none, one "
                             "request from the flags)")
    parser.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=False,
                        help="replay the export's warmup requests")
    return parser


def main(argv=None):
    parser = make_parser()
    args = parser.parse_intermixed_args(argv)  # texts after the options too
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    modules = lambda: sorted({name.split(".")[0] for name in sys.modules})  # noqa: E731
    if args.requests or args.warmup:
        if args.warmup:
            requests = warmup_requests(args.saved_model_dir)
        else:
            with open(args.requests, encoding="utf-8") as file:
                requests = [(r["signature"], _feeds(r["inputs"])) for r in json.load(file)]
        results = run_signatures(args.saved_model_dir, requests)
        print(json.dumps({"signatures": [name for name, _ in requests],
                          "results": [{k: to_json(v) for k, v in r.items()} for r in results], "modules": modules()}))
        return
    feeds = {}
    if args.tokens is not None:
        feeds["tokens"] = json.loads(args.tokens)
    else:
        feeds["text"] = [t.encode("utf-8") for t in args.texts]
    if args.max_length is not None:
        feeds["max_length"] = [args.max_length] * len(args.texts)
    try:
        (outputs,) = run_signatures(args.saved_model_dir, [(args.signature, feeds)])
    except ValueError as error:
        parser.error(str(error))
    print(json.dumps({"outputs": {k: to_json(v) for k, v in outputs.items()}, "modules": modules()}))


if __name__ == "__main__":
    main()
