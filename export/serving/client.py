"""A client for a served kerasformer model: TensorFlow Serving's REST API, standard library only.

Works with TensorFlow Serving and with its stand-in `kerasformer-serve`:

    client = ServingClient("http://127.0.0.1:8501")
    client.translate(["How are you?"])          # -> ["¿Cómo estás?"]

Command line (one translation per line; texts from the arguments, else from stdin lines):

    kerasformer-translate --server http://127.0.0.1:8501 [--model NAME] [--max-length N] [--beam] "text" ...
    kerasformer-translate --help      (every flag, with its default)

Every request it sends is one the real TensorFlow Serving accepts: columnar format with exactly
the inputs of the signature it names (see `ServingClient.translate`).
"""

import argparse
import json
import sys
import urllib.error
import urllib.request

DEFAULT_MODEL = "kerasformer_en_es"


class ServingError(Exception):
    """The server answered with an error (`status` is its HTTP status), or could not be reached
    (`status` is None). `message` is the server's `error` string."""

    def __init__(self, status, message):
        super().__init__(f"{message} (HTTP {status})" if status is not None else message)
        self.status = status
        self.message = message


class ServingClient:
    """Talks to `url`/v1/models/`model`[/versions/`version`].

    Args:
        url: the server's REST address, e.g. "http://127.0.0.1:8501".
        model: the model name (the folder name under the server's model base path).
        version: a version number to pin, or None for the newest the server serves.
        timeout: seconds to wait for one answer.
    """

    def __init__(self, url, model=DEFAULT_MODEL, version=None, timeout=60):
        self.url = url.rstrip("/")
        self.model = model
        self.version = version
        self.timeout = timeout

    @property
    def _model_url(self):
        path = f"{self.url}/v1/models/{self.model}"
        return path if self.version is None else f"{path}/versions/{self.version}"

    def _request(self, url, body=None):
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(
            url, data=data, method="GET" if body is None else "POST",
            headers={"Content-Type": "application/json"} if data is not None else {},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                message = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode("utf-8", "replace").strip() or error.reason
            raise ServingError(error.code, message) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ServingError(None, f"cannot reach {url}: {reason}") from None
        except ValueError as error:
            raise ServingError(None, f"{url} answered with something other than JSON: {error}") from None

    def status(self):
        """`{"model_version_status": [{"version": "1", "state": "AVAILABLE", ...}]}`."""
        return self._request(self._model_url)

    def metadata(self):
        """`{"model_spec": {...}, "metadata": {"signature_def": {...}}}`."""
        return self._request(f"{self._model_url}/metadata")

    def predict(self, instances=None, inputs=None, signature_name=None):
        """A raw predict call: give `instances` (row format) or `inputs` (columnar), not both.

        Returns the server's answer: `{"predictions": ...}` or `{"outputs": ...}`.
        """
        if (instances is None) == (inputs is None):
            raise ValueError("give exactly one of instances= (row format) or inputs= (columnar format)")
        body = {"instances": instances} if instances is not None else {"inputs": inputs}
        if signature_name is not None:
            body["signature_name"] = signature_name
        return self._request(f"{self._model_url}:predict", body)

    def translate(self, texts, max_length=None, beam=False):
        """Translates a list of strings.

        Chooses the signature whose inputs are exactly what it sends (the real model server
        wants every input of a signature in every request, and nothing it lacks):
        `serving_default` (text alone, greedy), `translate_max_length` (text and a per-row
        `max_length`), and with `beam=True` `translate_beam` / `translate_beam_max_length`
        (beam size and length penalty fixed when the model was exported).

        Args:
            texts: a list of strings.
            max_length: most output tokens; an int for every row or a list with one int per
                text. None: the model's own limit.
            beam: beam search instead of greedy decoding.

        Returns:
            A list of translations, one per text.
        """
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, got one str; wrap it: [text]")
        texts = list(texts)
        if not texts:
            return []
        signature = "translate_beam" if beam else "serving_default"
        inputs = {"text": texts}
        if max_length is not None:
            limits = [max_length] * len(texts) if isinstance(max_length, int) else list(max_length)
            if len(limits) != len(texts):
                raise ValueError(f"max_length has {len(limits)} values for {len(texts)} texts; give one per text")
            inputs["max_length"] = [int(limit) for limit in limits]
            signature = "translate_beam_max_length" if beam else "translate_max_length"
        outputs = self.predict(inputs=inputs, signature_name=signature)["outputs"]
        return outputs["translation"] if isinstance(outputs, dict) else outputs


def make_parser():
    # The shared flags' module is standard library only too, but imported here, not at the top:
    # ServingClient itself stays a file that can be copied alone.
    from kerasformer.training.cli import command_line

    parser = command_line("kerasformer-translate", "Translate texts with a served kerasformer model.",
                          model_version=True)
    parser.add_argument("texts", nargs="*", help="texts to translate (default: one per line of stdin)")
    parser.add_argument("--server", default="http://127.0.0.1:8501", help="REST address of the server")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name")
    parser.add_argument("--model-version", type=int, metavar="N", help="model version (default: the newest served)")
    parser.add_argument("--max-length", type=int, metavar="N", help="maximum output tokens (default: the model's)")
    parser.add_argument("--beam", action=argparse.BooleanOptionalAction, default=False,
                        help="beam search (the beam size and length penalty the model was exported with); "
                             "--no-beam: greedy")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per request when reading stdin")
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait for one answer")
    return parser


def main(argv=None):
    from kerasformer.training.cli import configure

    args = make_parser().parse_args(argv)
    configure(args)
    client = ServingClient(args.server, args.model, args.model_version, args.timeout)
    texts = args.texts or [line.rstrip("\r\n") for line in sys.stdin]
    try:
        for start in range(0, len(texts), args.batch_size):
            for translation in client.translate(texts[start : start + args.batch_size], args.max_length, args.beam):
                print(translation, flush=True)
    except ServingError as error:
        print(f"kerasformer-translate: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
