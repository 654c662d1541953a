"""kerasformer-serve against its published OpenAPI description, and kept inside its base folder.

- The description (export/serving/openapi.py) is what the server answers at /kerasformer/openapi.json and
  what export/serving/openapi.json holds.
- Schemathesis generates requests from the served description (valid ones and ones that break
  it) and checks every answer against it: status, content type, body schema, and no 5xx but the
  documented 500 from inside a graph (and 501 for classify and regress). The server must still
  answer afterwards, with no Python exception in its log. A method the API does not have is 400
  "Malformed request", as the real server answers, not 405 (so Schemathesis' 405 check is off).
- Model names and versions that try to leave the base folder (`..`, `%2e%2e%2f`, `/abs`, NUL,
  backslashes) are refused with 404/400, and a SavedModel next to the base folder stays out of
  reach; the exporter and `--model-name` refuse such names.
- Regression tests for the bugs the fuzzer found, and for ones found reading the server.
"""

import asyncio
import base64
import collections
import json
import os
import shutil
import urllib.parse
from http.client import HTTPConnection

import pytest
from serving_helpers import ServerProcess, http, save_fake_model

pytestmark = pytest.mark.backend_independent  # see tests/run.sh

MAX_REQUEST_BYTES = 64 * 1024
SERVED = {"name": "fake", "version": "1", "label": "stable"}  # the fake has no labels: "stable" is unknown (400)
# Hypothesis examples per operation, for valid and again for schema-breaking data, on top of the
# coverage phase's edge cases; by description fuzzed (see test_fuzz_against_the_served_description)
# and method. Names, versions and labels are fuzzed through the served description, predict
# bodies through the model's (classify and regress bodies are anything: they all get 400).
EXAMPLES = {("served", "GET"): 6, ("served", "POST"): 8, ("model", "GET"): 3, ("model", "POST"): 3,
            ("model", "predict"): 40}


@pytest.fixture(scope="module")
def model_tree(tmp_path_factory):
    """tmp/saved_models/fake/1 served; tmp/outside/1, a valid SavedModel beside the base folder,
    and tmp/saved_models/bad name/1 (not a model name) never to be served."""
    tmp = tmp_path_factory.mktemp("rest_fuzz")
    base = tmp / "saved_models"
    save_fake_model(base / "fake" / "1")
    save_fake_model(tmp / "outside" / "1", suffix="?")  # "?" would show it answered
    shutil.copytree(tmp / "outside" / "1", base / "bad name" / "1")
    return tmp


@pytest.fixture(scope="module")
def server(model_tree):
    process = ServerProcess(model_tree, model_tree / "saved_models", "--max-request-bytes", str(MAX_REQUEST_BYTES))
    try:
        yield process.wait_until_ready()
    finally:
        process.stop()


def assert_still_serving(server):
    assert server.process.poll() is None, f"server exited with {server.process.returncode}:\n{server.log()}"
    status, answer = http("POST", f"{server.url}/v1/models/fake:predict", {"instances": ["ok"]})
    assert (status, answer) == (200, {"predictions": [{"translation": "OK!", "tokens": [111, 107], "length": 2}]})


def assert_error_answer(status, answer, statuses=(400, 404)):
    assert status in statuses, (status, answer)
    assert isinstance(answer, dict) and set(answer) == {"error"} and isinstance(answer["error"], str), answer


# --- the description ---------------------------------------------------------------------------


def test_committed_description_is_the_generated_one():
    from kerasformer.export.serving.openapi import JSON_FILE, openapi_description

    with open(JSON_FILE, encoding="utf-8") as file:
        committed = json.load(file)
    assert committed == openapi_description(), "export/serving/openapi.json is stale: run python -m kerasformer.export.serving.openapi --write"


def test_served_description(server):
    from kerasformer.export.serving.openapi import openapi_description

    status, answer = http("GET", f"{server.url}/kerasformer/openapi.json")
    assert status == 200
    assert answer == openapi_description()
    models = [f"/v1/models/{{name}}{which}" for which in ("", "/versions/{version}", "/labels/{label}")]
    assert set(answer["paths"]) == {"/v1/models", "/kerasformer/stats", "/kerasformer/openapi.json"} | {
        f"{prefix}{suffix}" for prefix in models for suffix in ("", "/metadata", ":predict", ":classify", ":regress")}
    # What the real server does not have, and only that, is marked as kerasformer's own.
    extensions = {path for path, item in answer["paths"].items() if item.get("x-kerasformer-extension")}
    assert extensions == {"/kerasformer/stats", "/kerasformer/openapi.json"}
    marked = {(path, status) for path, item in answer["paths"].items() for operation in item.values()
              if isinstance(operation, dict) for status, response in operation.get("responses", {}).items()
              if response.get("x-kerasformer-extension")}
    assert marked == {(f"{prefix}:predict", "413") for prefix in models}


# --- fuzzing -----------------------------------------------------------------------------------


def fuzz_config(base_url, reject_negative_data=True):
    """Schemathesis settings: these checks, and nothing from a schemathesis.toml.

    reject_negative_data: whether a request that breaks the description must be refused. Off for
    bodies fuzzed against the model's signatures: the real server checks a body's JSON types and
    layout but not the tensor shapes against the SignatureDef (util/json_tensor.cc; the graph
    does), so a value of the wrong rank that the graph takes is answered 200 there as here.
    """
    import schemathesis

    return schemathesis.Config.from_dict({
        "base-url": base_url,
        "checks": {
            "enabled": False,
            # 500 is documented for predict (an error inside the graph), 501 for classify and
            # regress; status_code_conformance refuses them elsewhere, and the log check refuses
            # a 500 when Python raised.
            "not_a_server_error": {"enabled": True, "expected-statuses": ["2xx", "3xx", "4xx", "500", "501"]},
            "status_code_conformance": {"enabled": True},
            "content_type_conformance": {"enabled": True},
            "response_schema_conformance": {"enabled": True},
            "negative_data_rejection": {"enabled": reject_negative_data},
            # It wants 405 for a method an operation lacks; the real server answers 400
            # "Malformed request" (test_unsupported_method_is_malformed_request).
            "unsupported_method": {"enabled": False},
        },
    })


# Strings are plain JSON strings, never {"b64": ...}: the fake upper-cases the bytes it gets, and
# the real server writes a string output's bytes as they are (util/json_tensor.cc; only `_bytes`
# outputs are base64), so binary input comes back as JSON that is not UTF-8, which no schema
# check can read (test_binary_output_is_written_as_it_is).
JSON_LEAVES = {
    "DT_STRING": {"type": "string"},
    "DT_INT32": {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1},
    "DT_INT64": {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1},
    "DT_FLOAT": {"type": "number"},
    "DT_DOUBLE": {"type": "number"},
    "DT_BOOL": {"type": "boolean"},
}


def tensor_schema(tensor_info, drop_batch=False):
    """JSON schema of one tensor (nested lists) from its TensorInfo in the model's metadata."""
    sizes = [int(dim["size"]) for dim in tensor_info["tensor_shape"]["dim"]]
    schema = JSON_LEAVES[tensor_info["dtype"]]
    for size in reversed(sizes[1:] if drop_batch and sizes else sizes):
        schema = {"type": "array", "items": schema, **({"minItems": size, "maxItems": size} if size >= 0 else {})}
    return schema


def signature_request_schemas(name, signature):
    """The row and columnar request bodies that one signature (SignatureDef as JSON) accepts over
    REST (util/json_tensor.cc): every input, whatever its SignatureDef defaults; an instance's keys
    exactly the inputs, a columnar object's at least them; a bare value for a one-input signature."""
    inputs = signature["inputs"]

    def named(drop_batch, extra_keys):
        values = {"type": "object", "additionalProperties": extra_keys, "required": sorted(inputs),
                  "properties": {k: tensor_schema(v, drop_batch) for k, v in sorted(inputs.items())}}
        if len(inputs) != 1:
            return values
        return {"anyOf": [values, values["properties"][next(iter(inputs))]]}  # a bare value for the one input

    # "" names serving_default too (json_tensor.cc FillSignature; predict_util.cc).
    signature_name = {"enum": [name, ""]} if name == "serving_default" else {"const": name}
    # Other top-level keys are ignored; "instances" and "inputs" together are refused.
    rows = {"type": "array", "minItems": 1, "items": named(True, False)}
    return [
        {"type": "object", "required": ["signature_name", key][name == "serving_default":],
         "not": {"required": [other]}, "properties": {"signature_name": signature_name, key: value}}
        for key, other, value in (("instances", "inputs", rows), ("inputs", "instances", named(False, True)))
    ]


def served_model_description(description, metadata):
    """The description narrowed to the model served: {name}, {version} and {label} allow only it,
    and predict bodies only what its signatures take (from its metadata), so that requests reach
    the codec and the graph rather than a 404 or a 400."""
    description = json.loads(json.dumps(description))
    pinned = {name: {"type": "string", "enum": [value]} for name, value in SERVED.items()}
    signatures = metadata["signature_def"]["signature_def"]
    bodies = [schema for name, signature in sorted(signatures.items())
              if signature["method_name"] == "tensorflow/serving/predict"
              for schema in signature_request_schemas(name, signature)]
    description["components"]["schemas"]["PredictRequest"] = {"anyOf": bodies}
    for operations in description["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []) if isinstance(operation, dict) else []:
                parameter["schema"] = pinned[parameter["name"]]
    return description


def test_fuzz_against_the_served_description(server, capsys):
    """Every operation, through the served description (names and versions fuzzed) and through
    it narrowed to the served model (bodies fuzzed): the deterministic edge cases of Schemathesis'
    coverage phase, then Hypothesis-generated requests with valid and with schema-breaking data.
    Derandomized: the same number of requests every run, and the same requests for the same
    pytest command (Schemathesis keeps state that other tests in the process can shift)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    served = schemathesis.openapi.from_url(f"{server.url}/kerasformer/openapi.json", config=fuzz_config(server.url))
    _, metadata = http("GET", f"{server.url}/v1/models/{SERVED['name']}/metadata")
    model = schemathesis.openapi.from_dict(served_model_description(served.raw_schema, metadata["metadata"]),
                                           config=fuzz_config(server.url, reject_negative_data=False))
    answers = collections.Counter()  # (description, operation, phase, status) -> requests
    for variant, schema in (("served", served), ("model", model)):
        # Schemathesis leaves out the operation that serves the description it was loaded from.
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) == {"served": 17, "model": 18}[variant], [operation.label for operation in operations]
        for operation in operations:
            # The fake has no labels: a labelled predict is 400 whatever its body.
            kind = ("predict" if variant == "model" and operation.path.endswith(":predict") and "{label}" not in
                    operation.path else operation.method.upper())
            # Schema-breaking data needs something to break: GET /kerasformer/stats takes nothing.
            modes = [GenerationMode.POSITIVE] + [GenerationMode.NEGATIVE] * ("{" in operation.path)

            def send(case, phase):
                response = case.call(timeout=60)
                answers[variant, operation.label, phase, response.status_code] += 1
                case.validate_response(response)

            # The versioned and labelled predicts take the unversioned one's bodies: their edge cases
            # once is enough.
            if not (variant == "model" and kind == "predict" and "{name}:" not in operation.path):
                generation = schema.config.generation_for(operation=operation)
                for case in schema.iter_coverage_cases(operation, generation_modes=modes, generation_config=generation):
                    send(case, "coverage")
            for mode in modes:
                @settings(max_examples=EXAMPLES[variant, kind], derandomize=True, database=None,
                          deadline=None, suppress_health_check=list(HealthCheck))
                @given(case=operation.as_strategy(generation_mode=mode))
                def fuzz(case):
                    send(case, mode.value)

                fuzz()

    assert_still_serving(server)
    log = server.log()
    assert "unexpected error" not in log and "Traceback" not in log, log
    total = sum(answers.values())
    with capsys.disabled():
        print(f"\nschemathesis {schemathesis.__version__}: {total} generated requests, all answered as documented")
        for key, count in sorted(answers.items()):
            print("    {:6} {:52} {:8} {}: {}".format(*key, count))
    assert answers["model", "POST /v1/models/{name}:predict", "positive", 200] > 0, answers


# --- regressions: bugs the fuzzer found, and ones found reading the server while writing it -----


def test_unsupported_method_is_malformed_request(server):
    """Found by the fuzzer (unsupported_method check), then read in the real server: a method
    the API does not have on a /v1/ path is not 405 but INVALID_ARGUMENT, 400 "Malformed request:
    METHOD PATH" (http_rest_api_handler.cc ProcessRequest; http_rest_api_handler_test.cc
    UnsupportedApiCalls has GET of a :predict path and POST of a status or metadata path)."""
    for method, target in [("DELETE", "/v1/models/fake"), ("PUT", "/v1/models/fake:predict"),
                           ("PATCH", "/v1/models/fake/versions/1/metadata"), ("GET", "/v1/models/fake:predict"),
                           ("POST", "/v1/models/fake"), ("POST", "/v1/models/fake/metadata")]:
        status, answer = raw_request(server, method, target, b'{"instances": ["a"]}' if method != "GET" else None)
        assert (status, answer) == (400, {"error": f"Malformed request: {method} {target}"})
    assert_still_serving(server)


def test_non_ascii_digit_version_is_malformed(server):
    """Found reading the server: `'²'.isdigit()` is True but int('²') raises (was 500), and '١'
    (Arabic-Indic one) was served as version 1. The real server's version pattern is `(\\d+)`,
    ASCII digits only (RE2), so such a path does not parse: 400 "Malformed request"."""
    for version in ("%C2%B2", "%D9%A1", "%EF%BC%91"):  # ², ١, fullwidth 1
        for method, suffix in (("GET", ""), ("GET", "/metadata"), ("POST", ":predict")):
            target = f"/v1/models/fake/versions/{version}{suffix}"
            status, answer = raw_request(server, method, target, b'{"instances": ["a"]}' if method == "POST" else None)
            assert status == 400 and answer["error"].startswith(f"Malformed request: {method} "), (target, answer)
    assert_still_serving(server)


def test_lone_surrogate_strings(server):
    """Found reading the server: JSON may escape a lone UTF-16 surrogate, which UTF-8 cannot encode,
    in an input or in a name quoted back in the error (was 500). The real server's RapidJSON
    refuses a high surrogate without its low half (400 "JSON Parse error: The surrogate pair in
    string is invalid."), and writes a lone low surrogate as its three UTF-8-like bytes, which the
    model then reads: an answer, not an error."""
    for body in (b'{"instances": ["\\ud800"]}', b'{"inputs": {"text": ["ok", "\\ud800 x"]}}',
                 b'{"signature_name": "\\ud800", "instances": ["a"]}', b'{"instances": [{"\\ud800": "a"}]}'):
        status, answer = http("POST", f"{server.url}/v1/models/fake:predict", body)
        assert_error_answer(status, answer, statuses=(400,))
        assert answer["error"].startswith("JSON Parse error: The surrogate pair in string is invalid."), answer
    status, answer = http("POST", f"{server.url}/v1/models/fake:predict", b'{"inputs": {"text": ["ok", "\\udfff x"]}}')
    assert status == 200 and answer["outputs"]["length"] == [2, 5], answer
    assert answer["outputs"]["tokens"][1] == [0xFFFD] * 3 + [ord(" "), ord("x")]  # 3 bytes no UTF-8 decoder takes
    assert_still_serving(server)


def test_binary_output_is_written_as_it_is(server):
    """Found by the fuzzer: a `{"b64": ...}` input whose bytes are not UTF-8 gives a translation
    that is not UTF-8 either. The real server writes a string output's bytes into the JSON as they
    are (RapidJSON's writer does not check the encoding; only outputs named `..._bytes` are
    written as {"b64": ...}), and so does this one: the answer is not UTF-8."""
    body = json.dumps({"inputs": {"text": [{"b64": base64.b64encode(b"a\x9e").decode()}]}}).encode()
    status, raw = raw_bytes(server, "POST", "/v1/models/fake:predict", body)
    assert status == 200 and b'"A\x9e!"' in raw, raw
    assert_still_serving(server)


def test_deeply_nested_json_is_400(server):
    """Found reading the server: nesting deeper than Python's recursion limit, in the body or in
    one input (was 500)."""
    for depth in (30_000, 2_000):
        body = ("[" * depth + "]" * depth).encode()
        assert_error_answer(*http("POST", f"{server.url}/v1/models/fake:predict", body), statuses=(400,))
    for depth in (300, 900):
        for key in ("inputs", "instances"):
            body = f'{{"{key}": {"[" * depth}"a"{"]" * depth}}}'.encode()
            status, answer = http("POST", f"{server.url}/v1/models/fake:predict", body)
            assert_error_answer(status, answer, statuses=(400,))
    assert_still_serving(server)


def test_number_out_of_double_range_is_400(server):
    """Found reading the server: a JSON integer too large for a float (10**400) raised
    OverflowError (500). The real server's RapidJSON reader refuses any number past the double
    range while parsing (util/json_tensor.cc ParseJson): 400 "JSON Parse error: Number too big to
    be stored in double. at offset: N"."""
    for number in ("1" + "0" * 400, "-1" + "0" * 400, "1e400"):
        body = f'{{"instances": ["a"], "ignored": {number}}}'.encode()
        status, answer = http("POST", f"{server.url}/v1/models/fake:predict", body)
        assert status == 400, answer
        assert answer["error"].startswith("JSON Parse error: Number too big to be stored in double."), answer
    assert_still_serving(server)


# --- path traversal ----------------------------------------------------------------------------

# Targets sent byte for byte (http.client normalizes nothing): names and versions that try to
# leave saved_models/ for its sibling outside/ (or the root), encoded every way a client might.
TRAVERSAL_NAMES = [
    "..", "../outside", "%2e%2e", "%2e%2e%2foutside", "..%2Foutside", "..%2foutside%2f1", ".%2e/outside",
    "%2Fetc%2Fpasswd", "/etc/passwd", "%2Fabs%2Fpath", "/abs/path", "outside", "bad%20name",
    "%00", "fake%00", "..%00", "..%5Coutside", "..\\outside", "%5C%5Cserver%5Cshare", "~", "%7E",
]
TRAVERSAL_VERSIONS = ["../1", "..%2F1", "%2e%2e%2f1", "1%2F..%2F..", "1%00", "-1", "0", "%2F1", "1%5C..", "1.0"]


def traversal_targets():
    for name in TRAVERSAL_NAMES:
        yield from [("GET", f"/v1/models/{name}"), ("GET", f"/v1/models/{name}/metadata"),
                    ("POST", f"/v1/models/{name}:predict"), ("GET", f"/v1/models/{name}/versions/1"),
                    ("POST", f"/v1/models/{name}/versions/1:predict")]
    for version in TRAVERSAL_VERSIONS:
        yield from [("GET", f"/v1/models/fake/versions/{version}"),
                    ("GET", f"/v1/models/fake/versions/{version}/metadata"),
                    ("POST", f"/v1/models/fake/versions/{version}:predict")]


def raw_bytes(server, method, target, body=None):
    """(status, body bytes) of one request whose target is sent exactly as written."""
    connection = HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        connection.request(method, target, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def raw_request(server, method, target, body=None):
    """(status, decoded JSON) of one request whose target is sent exactly as written."""
    status, raw = raw_bytes(server, method, target, body)
    return status, json.loads(raw)


def test_traversal_never_reaches_outside(server):
    predict_body = json.dumps({"instances": ["hi"]}).encode()
    for method, target in traversal_targets():
        status, answer = raw_request(server, method, target, predict_body if method == "POST" else None)
        assert_error_answer(status, answer)
        assert "HI?" not in json.dumps(answer), (target, answer)
    status, stats = http("GET", f"{server.url}/kerasformer/stats")
    assert stats["models"] == {"fake": 1}  # outside/ and "bad name" never loaded
    assert "ignored folder 'bad name'" in server.log()
    assert server.log().count("loaded ") == 1
    assert_still_serving(server)


def asgi_request(app, method, target, body=b""):
    """Answers one request from the ASGI `app` in this process, with `path` decoded from `target`
    as uvicorn decodes it: (status, decoded JSON)."""
    path = urllib.parse.unquote(target)
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": target.encode("ascii"), "query_string": b"", "root_path": "",
        "headers": [(b"content-length", str(len(body)).encode())], "server": ("127.0.0.1", 8501),
        "client": ("127.0.0.1", 1),
    }
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))


def test_traversal_touches_no_file(model_tree, monkeypatch):
    """In process: answering the traversal requests stats, lists or loads nothing at all, and a
    poll of the base folder touches nothing outside it."""
    import tensorflow as tf

    from kerasformer.export.serving import model_repository
    from kerasformer.export.serving.server import ServingApp

    base = str(model_tree / "saved_models")
    repository = model_repository.ModelRepository(base, poll_seconds=3600)
    repository.poll()
    app = ServingApp(repository)  # the ASGI application

    touched = []

    def recording(function):
        def record(path, *args, **kwargs):
            touched.append(os.fspath(path))
            return function(path, *args, **kwargs)
        return record

    for module, name in [(os, "stat"), (os, "listdir"), (os, "scandir"), (os, "walk"), (os.path, "isdir"),
                         (os.path, "isfile"), (os.path, "exists"), (tf.saved_model, "load")]:
        monkeypatch.setattr(module, name, recording(getattr(module, name)))
    session_load = tf.compat.v1.saved_model.loader.load  # what the server loads a version with

    def recording_session_load(session, tags, export_dir, **kwargs):
        touched.append(os.fspath(export_dir))
        return session_load(session, tags, export_dir, **kwargs)

    monkeypatch.setattr(tf.compat.v1.saved_model.loader, "load", recording_session_load)

    for method, target in traversal_targets():
        body = b'{"instances": ["hi"]}' if method == "POST" else b""
        assert_error_answer(*asgi_request(app, method, target, body))
    assert touched == []

    repository.poll()
    assert touched and all(os.path.commonpath([base, path]) == base for path in touched), touched
    assert set(repository.loaded_models()) == {"fake"}


# --- model names: the exporter and --all_models_under take plain folder names only ---------------

GOOD_NAMES = ["fake", "kerasformer_en_es", "model-2", "v1.2", "A", "9", "a..b"]
BAD_NAMES = ["", ".", "..", "../outside", "a/b", "/abs/path", "a\\b", "..\\outside", "C:\\models", "a\x00b",
             ".hidden", "-rf", "_private", "with space", "ünïcode", "name\n", "~"]


def test_check_model_name():
    from kerasformer.export.serving.model_config import check_model_name

    for name in GOOD_NAMES:
        assert check_model_name(name) == name
    for name in BAD_NAMES + [None, 3]:
        with pytest.raises(ValueError, match="model name") as error:
            check_model_name(name)
        assert repr(name) in str(error.value)


def test_repository_refuses_bad_model_names(model_tree):
    from kerasformer.export.serving.model_repository import ModelRepository

    with pytest.raises(ValueError, match=r"'\.\./outside'"):
        ModelRepository(str(model_tree / "saved_models"), ["fake", "../outside"])


def test_export_refuses_bad_model_names(tmp_path, capsys, monkeypatch):
    from kerasformer.export import exporter

    def must_not_run(*args, **kwargs):
        raise AssertionError("export_run called with a bad name")

    for name in ["..", "../outside", "/abs/path", "a\\b", "", "a/b"]:
        # export_run checks before it reads the run folder (which does not exist here) or a backend.
        with pytest.raises(ValueError, match="is not a plain folder name") as error:
            exporter.export_run(str(tmp_path / "no-run"), name, base_dir=str(tmp_path / "saved_models"))
        assert repr(name) in str(error.value)
        with monkeypatch.context() as patch:
            patch.setattr(exporter, "export_run", must_not_run)
            with pytest.raises(SystemExit) as exit_:
                exporter.main([str(tmp_path / "no-run"), "--name", name])
        assert exit_.value.code == 2
        assert f"--name: model name {name!r}" in capsys.readouterr().err
    assert not (tmp_path / "saved_models").exists() and not (tmp_path / "outside").exists()
