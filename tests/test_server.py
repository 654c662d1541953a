"""kerasformer-serve (export/serving/server.py) against a fake SavedModel, through real HTTP.

One server without batching and one with batching start once for the file (per xdist worker
that runs its tests): subprocesses under the TensorFlow backend whatever KERAS_BACKEND the tests
run with.
"""

import base64
import concurrent.futures
import json
import os
import shutil
import threading

import pytest
from serving_helpers import (
    DEFAULT_MAX_LENGTH,
    ServerProcess,
    expected_translation,
    http,
    save_fake_model,
    wait_for,
)

from export.serving.batching import BatchingParameters, parse_batching_parameters, trim_padding

pytestmark = pytest.mark.backend_independent  # see tests/run.sh

MAX_REQUEST_BYTES = 64 * 1024
BATCH_ROWS = 16


@pytest.fixture(scope="module")
def model_base(tmp_path_factory):
    """saved_models/ with fake/1 and poller/1, plus poller-2 staged outside it."""
    tmp = tmp_path_factory.mktemp("serving")
    base = tmp / "saved_models"
    save_fake_model(base / "fake" / "1")
    shutil.copytree(base / "fake" / "1", base / "poller" / "1")
    save_fake_model(tmp / "staging" / "poller-2", suffix="?")
    (base / "fake" / ".tmp-1234").mkdir()  # an exporter's unfinished folder: ignored
    return tmp


@pytest.fixture(scope="module")
def server(model_base):
    """The server without batching; it polls fast for the new-version test."""
    process = ServerProcess(model_base, model_base / "saved_models", "--poll-seconds", "0.5",
                            "--max-request-bytes", str(MAX_REQUEST_BYTES))
    try:
        yield process.wait_until_ready()
    finally:
        process.stop()


@pytest.fixture(scope="module")
def batched_server(model_base):
    """The server with batching: a batch runs once it holds BATCH_ROWS rows (or after 5 s)."""
    batching_file = model_base / "batching.txt"
    batching_file.write_text(
        f"max_batch_size {{ value: {BATCH_ROWS} }}\n"
        "batch_timeout_micros { value: 5000000 }  # generous: the batch runs once it is full\n"
        "max_enqueued_batches { value: 100 }\n"
        "num_batch_threads { value: 2 }\n"
        "pad_variable_length_inputs: true\n"
        "allowed_batch_sizes: 16\n"
    )
    process = ServerProcess(model_base, model_base / "saved_models", "--model-name", "fake",
                            "--enable-batching", "--batching-parameters-file", str(batching_file))
    try:
        yield process.wait_until_ready()
    finally:
        process.stop()


def predict(server, body, model="fake", version=None):
    path = f"/v1/models/{model}" + (f"/versions/{version}" if version is not None else "")
    return http("POST", f"{server.url}{path}:predict", body)


def assert_still_serving(server):
    status, answer = predict(server, {"instances": ["ok"]})
    assert status == 200, answer
    assert answer["predictions"][0]["translation"] == "OK!"


# --- status and metadata ---------------------------------------------------------------------


def test_status(server):
    expected = {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    ]}
    assert http("GET", f"{server.url}/v1/models/fake") == (200, expected)
    assert http("GET", f"{server.url}/v1/models/fake/versions/1") == (200, expected)


def test_metadata(server):
    for path in ("/v1/models/fake/metadata", "/v1/models/fake/versions/1/metadata"):
        status, answer = http("GET", server.url + path)
        assert status == 200, answer
        assert answer["model_spec"] == {"name": "fake", "signature_name": "", "version": "1"}
        signatures = answer["metadata"]["signature_def"]["signature_def"]
        assert {"serving_default", "translate_tokens"} <= set(signatures)
        serving = signatures["serving_default"]
        assert serving["method_name"] == "tensorflow/serving/predict"
        assert serving["inputs"]["text"]["dtype"] == "DT_STRING"
        assert serving["inputs"]["text"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
        assert serving["inputs"]["max_length"]["tensor_shape"]["dim"] == []
        assert serving["inputs"]["text"]["name"]
        assert set(serving["outputs"]) == {"translation", "tokens", "length"}
        assert serving["outputs"]["tokens"]["dtype"] == "DT_INT32"
        assert [d["size"] for d in serving["outputs"]["tokens"]["tensor_shape"]["dim"]] == ["-1", "-1"]
        assert serving["defaults"]["max_length"]["int_val"] == [DEFAULT_MAX_LENGTH]
        assert set(signatures["translate_tokens"]["inputs"]) == {"tokens", "max_length"}


# --- predict ---------------------------------------------------------------------------------


def test_row_format(server):
    status, answer = predict(server, {"instances": ["hello", "ab"]})
    assert status == 200, answer
    assert answer == {"predictions": [
        {"translation": "HELLO!", "tokens": [104, 101, 108, 108, 111], "length": 5},
        {"translation": "AB!", "tokens": [97, 98, 0, 0, 0], "length": 2},
    ]}
    status, answer = predict(server, {"instances": [{"text": "hello", "max_length": 3}, {"text": "ab", "max_length": 3}]})
    assert status == 200, answer
    assert [p["tokens"] for p in answer["predictions"]] == [[104, 101, 108], [97, 98, 0]]


def test_columnar_format(server):
    status, answer = predict(server, {"inputs": {"text": ["hello", "ab"], "max_length": 2}})
    assert status == 200, answer
    assert answer == {"outputs": {"translation": ["HELLO!", "AB!"], "tokens": [[104, 101], [97, 98]], "length": [2, 2]}}
    status, answer = predict(server, {"inputs": ["hi"]})  # a bare value for the one required input
    assert status == 200, answer
    assert answer["outputs"]["translation"] == ["HI!"]


def test_max_length_default_and_given(server):
    text = "abcdefghijkl"
    _, default = predict(server, {"inputs": {"text": [text]}})
    _, given = predict(server, {"inputs": {"text": [text], "max_length": 3}})
    assert default["outputs"]["length"] == [DEFAULT_MAX_LENGTH]
    assert given["outputs"]["length"] == [3]


def test_b64_and_unicode(server):
    encoded = base64.b64encode("héllo".encode()).decode()
    status, answer = predict(server, {"instances": [{"b64": encoded}, "ñu"]})
    assert status == 200, answer
    assert [p["translation"] for p in answer["predictions"]] == ["HéLLO!", "ñU!"]
    assert answer["predictions"][0]["tokens"] == [ord(c) for c in "héllo"]


def test_translate_tokens_signature(server):
    body = {"signature_name": "translate_tokens", "instances": [[5, 6, 0, 0], [9, 0, 0, 0]]}
    status, answer = predict(server, body)
    assert status == 200, answer
    assert answer == {"predictions": [{"tokens": [6, 7], "length": 2}, {"tokens": [10, 0], "length": 1}]}
    status, answer = predict(server, {"signature_name": "translate_tokens", "inputs": {"tokens": [[5, 6]], "max_length": 1}})
    assert answer == {"outputs": {"tokens": [[6]], "length": [1]}}


def test_long_input(server):
    text = "abc " * 2500
    status, answer = predict(server, {"inputs": {"text": [text], "max_length": 20000}})
    assert status == 200, answer
    assert answer["outputs"]["translation"] == [expected_translation(text)]
    assert answer["outputs"]["length"] == [10000]


# --- errors ----------------------------------------------------------------------------------

BAD_REQUESTS = {
    "malformed JSON": b'{"instances": [',
    "not an object": b"[1, 2]",
    "invalid UTF-8": b'{"instances": ["\xff\xfe"]}',
    "neither instances nor inputs": b'{"signature_name": "serving_default"}',
    "both instances and inputs": b'{"instances": ["a"], "inputs": ["a"]}',
    "empty batch": b'{"instances": []}',
    "number for a string": b'{"instances": [1]}',
    "number in columnar strings": b'{"inputs": {"text": ["a", 2]}}',
    "string for int tokens": b'{"signature_name": "translate_tokens", "instances": [["a", "b"]]}',
    "float for int max_length": b'{"inputs": {"text": ["a"], "max_length": 2.5}}',
    "ragged rows": b'{"signature_name": "translate_tokens", "instances": [[1, 2], [3]]}',
    "ragged columns": b'{"signature_name": "translate_tokens", "inputs": {"tokens": [[1, 2], [3]]}}',
    "wrong rank": b'{"inputs": {"text": [["a"]]}}',
    "unknown signature": b'{"signature_name": "nope", "instances": ["a"]}',
    "unknown input": b'{"instances": [{"txt": "a"}]}',
    "max_length disagrees": b'{"instances": [{"text": "a", "max_length": 2}, {"text": "b", "max_length": 3}]}',
    "bad base64": b'{"instances": [{"b64": "###"}]}',
}


@pytest.mark.parametrize("body", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_request_is_400(server, body):
    status, answer = http("POST", f"{server.url}/v1/models/fake:predict", body)
    assert status == 400, answer
    assert isinstance(answer, dict) and set(answer) == {"error"} and answer["error"], answer
    assert_still_serving(server)


def test_unknown_model_or_version_is_404(server):
    for method, path, body in [
        ("GET", "/v1/models/nope", None),
        ("GET", "/v1/models/nope/metadata", None),
        ("POST", "/v1/models/nope:predict", {"instances": ["a"]}),
        ("GET", "/v1/models/fake/versions/9", None),
        ("GET", "/v1/models/fake/versions/9/metadata", None),
        ("POST", "/v1/models/fake/versions/9:predict", {"instances": ["a"]}),
        ("GET", "/no/such/path", None),
    ]:
        status, answer = http(method, server.url + path, body)
        assert status == 404, (path, answer)
        assert set(answer) == {"error"}, answer
    _, answer = predict(server, {"instances": ["a"]}, version=9)
    assert answer == {"error": "Servable not found for request: Specific(fake, 9)"}
    _, answer = predict(server, {"instances": ["a"]}, model="nope")
    assert answer == {"error": "Servable not found for request: Latest(nope)"}


def test_other_errors_are_json(server):
    status, answer = http("DELETE", f"{server.url}/v1/models/fake")
    assert status == 405 and set(answer) == {"error"}, answer
    status, answer = http("POST", f"{server.url}/v1/models/fake/labels/stable:predict", {"instances": ["a"]})
    assert status == 400 and "labels" in answer["error"], answer


def test_oversized_body_is_413(server):
    body = json.dumps({"instances": ["x" * (2 * MAX_REQUEST_BYTES)]}).encode()
    status, answer = http("POST", f"{server.url}/v1/models/fake:predict", body)
    assert status == 413, answer
    assert "--max-request-bytes" in answer["error"]
    assert_still_serving(server)


def test_graph_errors(server):
    status, answer = predict(server, {"instances": ["a", "__fail__"]})
    assert status == 400, answer  # INVALID_ARGUMENT inside the graph, as TF Serving answers it
    assert "asked to fail" in answer["error"]
    assert_still_serving(server)
    status, answer = predict(server, {"instances": ["__crash__"]})
    assert status == 500, answer  # DATA_LOSS
    assert "inflate" in answer["error"]
    assert_still_serving(server)


# --- new versions ----------------------------------------------------------------------------


def served_version(server, model="poller"):
    status, answer = http("GET", f"{server.url}/v1/models/{model}")
    return int(answer["model_version_status"][0]["version"]) if status == 200 else None


def test_new_version_is_served_and_broken_ones_refused(server, model_base):
    base, tmp = model_base / "saved_models", model_base
    assert served_version(server) == 1
    shutil.copytree(tmp / "staging" / "poller-2", base / "poller" / "2")
    wait_for(lambda: served_version(server) == 2, message="version 2 to be served")
    status, answer = predict(server, {"instances": ["hi"]}, model="poller")
    assert answer["predictions"][0]["translation"] == "HI?", answer
    _, answer = http("GET", f"{server.url}/v1/models/poller")
    assert answer["model_version_status"][1] == {"version": "1", "state": "END",
                                                 "status": {"error_code": "OK", "error_message": ""}}
    assert predict(server, {"instances": ["hi"]}, model="poller", version=1)[0] == 404

    # A numeric folder without saved_model.pb, and one with a truncated saved_model.pb.
    (base / "poller" / "3" / "variables").mkdir(parents=True)
    shutil.copytree(base / "poller" / "2", base / "poller" / "4")
    pb = base / "poller" / "4" / "saved_model.pb"
    pb.write_bytes(pb.read_bytes()[: os.path.getsize(pb) // 2])
    wait_for(lambda: "refused poller version 4" in server.log(), message="version 4 to be refused")
    wait_for(lambda: "refused poller version 3" in server.log(), message="version 3 to be refused")
    assert served_version(server) == 2
    status, answer = predict(server, {"instances": ["hi"]}, model="poller")
    assert status == 200 and answer["predictions"][0]["translation"] == "HI?"
    _, answer = http("GET", f"{server.url}/v1/models/poller/versions/4")
    assert answer["model_version_status"][0]["state"] == "END"
    assert answer["model_version_status"][0]["status"]["error_code"] != "OK"
    assert server.log().count("refused poller version 4") == 1  # not retried while unchanged


# --- batching --------------------------------------------------------------------------------


def concurrently(server, bodies):
    """Sends all bodies at once from threads; returns the answers in order."""
    barrier = threading.Barrier(len(bodies))

    def send(body):
        barrier.wait()
        return predict(server, body)

    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(send, bodies))


def batch_count(server):
    return http("GET", f"{server.url}/kerasformer/stats")[1]["batching"]["batches"]


@pytest.mark.parametrize("signature", ["serving_default", "translate_tokens"])
def test_batching_merges_and_answers_as_unbatched(server, batched_server, signature):
    plain, batched = server, batched_server
    if signature == "serving_default":
        texts = [["a"], ["hello world", "b"], ["ñandú"], ["xyz", "longer text here", "q", "r"]]
        bodies = [{"instances": t} for t in texts] + [{"inputs": {"text": t}} for t in texts]
    else:  # token rows of different widths: padded to the widest in the batch
        rows = [[[1, 2]], [[3, 4, 5, 6, 0], [7, 0, 0, 0, 0]], [[8]], [[9, 9, 9], [1, 0, 0], [2, 2, 0], [4, 0, 0]]]
        bodies = [{"signature_name": signature, "instances": r} for r in rows]
        bodies += [{"signature_name": signature, "inputs": {"tokens": r}} for r in rows]
    assert sum(len(b.get("instances", b.get("inputs", {}).get("text") or b.get("inputs", {}).get("tokens")))
               for b in bodies) == BATCH_ROWS  # a full batch runs at once
    before = batch_count(batched)
    answers = concurrently(batched, bodies)
    merged_into = batch_count(batched) - before
    expected = [predict(plain, body) for body in bodies]
    assert answers == expected
    assert all(status == 200 for status, _ in answers), answers
    assert merged_into < len(bodies), f"{len(bodies)} concurrent requests ran as {merged_into} batches"


def test_batching_parameters_file():
    text = (
        "max_batch_size { value: 8 }\n# a comment\nbatch_timeout_micros { value: 100 }\n"
        "num_batch_threads { value: 3 }\nmax_enqueued_batches { value: 5 }\n"
        "pad_variable_length_inputs: false\nallowed_batch_sizes: 4\nallowed_batch_sizes: 8\n"
    )
    assert parse_batching_parameters(text) == BatchingParameters(8, 100, 5, 3, False)
    assert parse_batching_parameters("") == BatchingParameters()
    with pytest.raises(ValueError, match="batching.txt:2"):
        parse_batching_parameters("max_batch_size { value: 8 }\n{{", "batching.txt")


def test_trim_padding():
    import numpy as np

    outputs = trim_padding({"tokens": np.array([[1, 2, 0, 0], [3, 0, 0, 0]], np.int32), "length": np.array([2, 1])})
    assert outputs["tokens"].tolist() == [[1, 2], [3, 0]]
    assert outputs["length"].tolist() == [2, 1]
