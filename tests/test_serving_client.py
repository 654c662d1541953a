"""export/serving/client.py: the client and the kerasformer-translate command, against
kerasformer-serve serving a fake SavedModel."""

import os
import subprocess
import sys

import pytest
from serving_helpers import REPOSITORY_ROOT, ServerProcess, expected_translation, free_port, save_fake_model

from kerasformer.export.serving.client import ServingClient, ServingError

pytestmark = pytest.mark.backend_independent  # see tests/run.sh

MODEL = "kerasformer_en_es"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("client")
    save_fake_model(tmp / "saved_models" / MODEL / "3")
    process = ServerProcess(tmp, tmp / "saved_models", model=MODEL)
    try:
        yield process.wait_until_ready()
    finally:
        process.stop()


def translate_command(*args, stdin=None):
    # The command never uses keras, but importing the kerasformer package imports it: JAX is the
    # backend quickest to import.
    return subprocess.run(
        [sys.executable, "-m", "kerasformer.export.serving.client", *args],
        input=stdin, capture_output=True, text=True, cwd=REPOSITORY_ROOT, timeout=120,
        env=dict(os.environ, PYTHONIOENCODING="utf-8", KERAS_BACKEND="jax"),
    )


def test_translate(server):
    client = ServingClient(server.url)
    texts = ["hello", "ñandú", "a b c"]
    assert client.translate(texts) == [expected_translation(t) for t in texts]
    assert client.translate([]) == []
    with pytest.raises(TypeError):
        client.translate("hello")


def test_translate_sends_only_the_signatures_inputs(server, monkeypatch):
    """The server is as strict as TensorFlow Serving (every input of the named signature, no
    other): the client picks the signature whose inputs it sends."""
    sent = []
    client = ServingClient(server.url)
    original = client.predict

    def spy(**kwargs):
        sent.append(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(client, "predict", spy)
    assert client.translate(["hello", "ab"], max_length=[2, 9]) == [expected_translation(t) for t in ["hello", "ab"]]
    assert client.translate(["hello"], max_length=3) == [expected_translation("hello")]
    assert [s["signature_name"] for s in sent] == ["translate_max_length"] * 2
    assert sent[0]["inputs"] == {"text": ["hello", "ab"], "max_length": [2, 9]}
    assert sent[1]["inputs"] == {"text": ["hello"], "max_length": [3]}
    with pytest.raises(ValueError, match="max_length has 1 values for 2 texts"):
        client.translate(["a", "b"], max_length=[1])


def test_predict_status_metadata(server):
    client = ServingClient(server.url, version=3)
    assert client.status()["model_version_status"][0]["version"] == "3"
    assert "serving_default" in client.metadata()["metadata"]["signature_def"]["signature_def"]
    answer = client.predict(inputs={"text": ["abcdef"], "max_length": [2]}, signature_name="translate_max_length")
    assert answer["outputs"]["tokens"] == [[97, 98]]
    answer = client.predict(instances=["ab"])  # the one-line form: serving_default has one input
    assert answer == {"predictions": [{"length": 2, "tokens": [97, 98], "translation": "AB!"}]}
    answer = client.predict(instances=[[5, 0]], signature_name="translate_tokens")
    assert answer == {"predictions": [{"length": 1, "tokens": [6]}]}
    with pytest.raises(ValueError):
        client.predict()


def test_errors(server):
    with pytest.raises(ServingError) as error:
        ServingClient(server.url, model="nope").translate(["a"])
    assert error.value.status == 404
    assert error.value.message == "Servable not found for request: Latest(nope)"
    with pytest.raises(ServingError) as error:
        ServingClient(server.url).translate(["__fail__"])
    assert error.value.status == 400 and "asked to fail" in error.value.message
    with pytest.raises(ServingError) as error:
        ServingClient(f"http://127.0.0.1:{free_port()}", timeout=10).status()
    assert error.value.status is None and "cannot reach" in error.value.message


def test_command_line(server):
    result = translate_command("--server", server.url, "--max-length", "3", "hello", "ñu")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["HELLO!", "ñU!"]
    result = translate_command("--server", server.url, "--model", MODEL, stdin="one\ntwo\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["ONE!", "TWO!"]


def test_command_line_errors(server):
    result = translate_command("--server", server.url, "--model", "nope", "hello")
    assert result.returncode == 1
    assert "Servable not found" in result.stderr and result.stdout == ""
    result = translate_command("--server", f"http://127.0.0.1:{free_port()}", "hello")
    assert result.returncode == 1
    assert "cannot reach" in result.stderr
