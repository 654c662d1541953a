"""Shared by the serving tests: a fake kerasformer SavedModel and a server subprocess.

The fake has the signatures of the real export (see the README's signature table), every input
with a leading batch dimension, as the real model server requires:
    serving_default       text [batch]                      -> translation, tokens, length
    translate_max_length  text [batch], max_length [batch]  -> translation, tokens, length
    translate_tokens      tokens [batch, n]                 -> tokens, length
with arithmetic a test can predict:
    translation = upper-cased text + suffix (the suffix tells versions apart)
    tokens      = the text's Unicode code points, first max_length (default DEFAULT_MAX_LENGTH,
                  per row in translate_max_length), 0-padded to the longest row
    length      = how many code points were kept
and for `translate_tokens` every non-zero id plus one, first DEFAULT_MAX_LENGTH, 0-padded.
The text "__fail__" fails an assertion in the graph (INVALID_ARGUMENT), "__crash__" fails a
zlib decode (DATA_LOSS).
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MAX_LENGTH = 7


def save_fake_model(path, suffix="!"):
    """Writes the fake SavedModel (a version folder) to `path`."""
    import tensorflow as tf

    class FakeTranslator(tf.Module):
        def __init__(self):
            super().__init__()
            self.suffix = tf.Variable(suffix)

        def translate(self, text, max_length):
            tf.debugging.assert_equal(tf.reduce_any(tf.equal(text, "__fail__")), False, message="asked to fail")
            crash = tf.reduce_any(tf.equal(text, "__crash__"))
            text = tf.cond(crash, lambda: tf.io.decode_compressed(text, compression_type="ZLIB"), lambda: text)
            codes = tf.strings.unicode_decode(text, "UTF-8")
            kept = tf.minimum(codes.row_lengths(), tf.cast(max_length, tf.int64))
            codes = tf.RaggedTensor.from_tensor(codes.to_tensor(0), lengths=kept)
            return {
                "translation": tf.strings.join([tf.strings.upper(text), self.suffix]),
                "tokens": codes.to_tensor(0),
                "length": tf.cast(codes.row_lengths(), tf.int32),
            }

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, text):
            return self.translate(text, tf.fill(tf.shape(text), DEFAULT_MAX_LENGTH))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text"),
                                      tf.TensorSpec([None], tf.int32, name="max_length")])
        def translate_max_length(self, text, max_length):
            return self.translate(text, max_length)

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="tokens")])
        def translate_tokens(self, tokens):
            rows = (tf.RaggedTensor.from_tensor(tokens, padding=0) + 1)[:, :DEFAULT_MAX_LENGTH]
            return {"tokens": rows.to_tensor(0), "length": tf.cast(rows.row_lengths(), tf.int32)}

    module = FakeTranslator()
    tf.saved_model.save(
        module, str(path), signatures={
            "serving_default": module.serve,
            "translate_max_length": module.translate_max_length,
            "translate_tokens": module.translate_tokens,
        }
    )


def expected_translation(text, suffix="!"):
    return "".join(c.upper() if c.isascii() else c for c in text) + suffix


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(method, url, body=None, headers=None, timeout=60):
    """(status, decoded JSON or raw text) of one request; bodies: dict (JSON) or bytes."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


class ServerProcess:
    """`python -m kerasformer.export.serving.server` (kerasformer-serve) on free loopback ports.

    `base_path` is a folder of model folders (BASE/NAME/VERSION/), served with the server's
    `--all_models_under` extension; pass None and give `--model_config_file=...` or
    `--model_base_path=...` in `extra_args` to use the real server's flags instead. `url` is the
    REST API's, `grpc_port` the gRPC API's (`--port`); `model` is the model `wait_until_ready`
    asks for; `log()` reads the server's output so far.
    """

    def __init__(self, tmp_path, base_path, *extra_args, model="fake"):
        self.port = free_port()
        self.grpc_port = free_port()
        while self.grpc_port == self.port:
            self.grpc_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.model = model
        self.log_path = os.path.join(tmp_path, f"server-{self.port}.log")
        env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
        models = [] if base_path is None else [f"--all_models_under={base_path}"]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kerasformer.export.serving.server", *models, f"--rest_api_port={self.port}",
                 f"--port={self.grpc_port}", *extra_args],
                cwd=REPOSITORY_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )

    def log(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as file:
            return file.read()

    def wait_until_ready(self, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                status, _ = http("GET", f"{self.url}/v1/models/{self.model}", timeout=5)
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log()}")

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_for(condition, timeout=60, message="condition"):
    """Polls `condition()` until it is truthy; generous timeouts, no speed assumptions."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")
