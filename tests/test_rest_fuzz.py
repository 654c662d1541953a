"""kerasformer-serve against its published OpenAPI description, and kept inside its base folder.

- The description (export/serving/openapi.py) is what the server answers at /kerasformer/openapi.json and
  what export/serving/openapi.json holds.
- Schemathesis generates requests from the served description (valid ones and ones that break
  it) and checks every answer against it: status, content type, body schema, and no 5xx but the
  documented 500 from inside a graph. The server must still answer afterwards, with no Python
  exception in its log.
- Model names and versions that try to leave the base folder (`..`, `%2e%2e%2f`, `/abs`, NUL,
  backslashes) are refused with 404/400, and a SavedModel next to the base folder stays out of
  reach; the exporter and `--model-name` refuse such names.
- Regression tests for the bugs the fuzzer found, and for ones found reading the server.
"""

import asyncio
import collections
import json
import os
import shutil
import urllib.parse
from http.client import HTTPConnection

import numpy as np
import pytest
from serving_helpers import ServerProcess, http, save_fake_model

pytestmark = pytest.mark.backend_independent  # see tests/run.sh

MAX_REQUEST_BYTES = 64 * 1024
SERVED = {"name": "fake", "version": 1}
# Hypothesis examples per operation, for valid and again for schema-breaking data, on top of the
# coverage phase's edge cases; by description fuzzed (see test_fuzz_against_the_served_description)
# and method. Names and versions are fuzzed through the served description, bodies through the
# model's.
EXAMPLES = {("served", "GET"): 10, ("served", "POST"): 15, ("model", "GET"): 5, ("model", "POST"): 40}


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
    from export.serving.openapi import JSON_FILE, openapi_description

    with open(JSON_FILE, encoding="utf-8") as file:
        committed = json.load(file)
    assert committed == openapi_description(), "export/serving/openapi.json is stale: run python -m export.serving.openapi --write"


def test_served_description(server):
    from export.serving.openapi import openapi_description

    status, answer = http("GET", f"{server.url}/kerasformer/openapi.json")
    assert status == 200
    assert answer == openapi_description()
    assert set(answer["paths"]) == {
        "/v1/models/{name}", "/v1/models/{name}/metadata", "/v1/models/{name}:predict",
        "/v1/models/{name}/versions/{version}", "/v1/models/{name}/versions/{version}/metadata",
        "/v1/models/{name}/versions/{version}:predict", "/kerasformer/stats", "/kerasformer/openapi.json",
    }


# --- fuzzing -----------------------------------------------------------------------------------


def fuzz_config(base_url):
    """Schemathesis settings: these checks, and nothing from a schemathesis.toml."""
    import schemathesis

    return schemathesis.Config.from_dict({
        "base-url": base_url,
        "checks": {
            "enabled": False,
            # 500 is documented for predict (an error inside the graph); status_code_conformance
            # refuses it elsewhere, and the log check refuses it when Python raised.
            "not_a_server_error": {"enabled": True, "expected-statuses": ["2xx", "3xx", "4xx", "500"]},
            "status_code_conformance": {"enabled": True},
            "content_type_conformance": {"enabled": True},
            "response_schema_conformance": {"enabled": True},
            "negative_data_rejection": {"enabled": True},
            "unsupported_method": {"enabled": True},
        },
    })


BASE64 = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
JSON_LEAVES = {
    "DT_STRING": {"anyOf": [{"type": "string"}, {"type": "object", "required": ["b64"], "additionalProperties": False,
                                                "properties": {"b64": {"type": "string", "pattern": BASE64}}}]},
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
    """The row and columnar request bodies that one signature (SignatureDef as JSON) accepts."""
    inputs, defaults = signature["inputs"], signature.get("defaults", {})
    required = sorted(set(inputs) - set(defaults))

    def named(drop_batch):
        values = {"type": "object", "additionalProperties": False, "required": required,
                  "properties": {k: tensor_schema(v, drop_batch) for k, v in sorted(inputs.items())}}
        if len(required) != 1:
            return values
        return {"anyOf": [values, values["properties"][required[0]]]}  # a bare value for the one required input

    signature_name = {"const": name}
    return [
        {"type": "object", "required": ["signature_name", key][name == "serving_default":],
         "additionalProperties": False, "properties": {"signature_name": signature_name, key: value}}
        for key, value in (("instances", {"type": "array", "minItems": 1, "items": named(True)}),
                           ("inputs", named(False)))
    ]


def served_model_description(description, metadata):
    """The description narrowed to the model served: {name} and {version} allow only it, and
    predict bodies only what its signatures take (from its metadata), so that requests reach the
    codec and the graph rather than a 404 or a 400."""
    description = json.loads(json.dumps(description))
    pinned = {"name": {"type": "string", "enum": [SERVED["name"]]},
              "version": {"type": "integer", "enum": [SERVED["version"]]}}
    signatures = metadata["signature_def"]["signature_def"]
    bodies = [schema for name, signature in sorted(signatures.items())
              if signature["method_name"] == "tensorflow/serving/predict"
              for schema in signature_request_schemas(name, signature)]
    description["components"]["schemas"]["PredictRequest"] = {"anyOf": bodies}
    for operations in description["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
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
                                           config=fuzz_config(server.url))
    answers = collections.Counter()  # (description, operation, phase, status) -> requests
    for variant, schema in (("served", served), ("model", model)):
        # Schemathesis leaves out the operation that serves the description it was loaded from.
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) == {"served": 7, "model": 8}[variant], [operation.label for operation in operations]
        for operation in operations:
            # Schema-breaking data needs something to break: GET /kerasformer/stats takes nothing.
            modes = [GenerationMode.POSITIVE] + [GenerationMode.NEGATIVE] * ("{" in operation.path)

            def send(case, phase):
                response = case.call(timeout=60)
                answers[variant, operation.label, phase, response.status_code] += 1
                case.validate_response(response)

            # The versioned predict takes the unversioned one's bodies: their edge cases once is enough.
            if not (variant == "model" and operation.label == "POST /v1/models/{name}/versions/{version}:predict"):
                generation = schema.config.generation_for(operation=operation)
                for case in schema.iter_coverage_cases(operation, generation_modes=modes, generation_config=generation):
                    send(case, "coverage")
            for mode in modes:
                @settings(max_examples=EXAMPLES[variant, operation.method.upper()], derandomize=True, database=None,
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


def test_405_names_the_allowed_methods(server):
    """Found by the fuzzer (unsupported_method check): a 405 had no `Allow` header (RFC 9110)."""
    connection = HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        connection.request("DELETE", "/v1/models/fake")
        response = connection.getresponse()
        assert response.status == 405
        assert set(response.getheader("Allow").replace(" ", "").split(",")) == {"GET", "HEAD", "POST"}
        assert_error_answer(405, json.loads(response.read()), statuses=(405,))
    finally:
        connection.close()


def test_non_ascii_digit_version_is_404(server):
    """Found reading the server: `'²'.isdigit()` is True but int('²') raises (was 500), and '١'
    (Arabic-Indic one) was served as version 1."""
    for version in ("%C2%B2", "%D9%A1", "%EF%BC%91"):  # ², ١, fullwidth 1
        for suffix in ("", "/metadata"):
            status, answer = http("GET", f"{server.url}/v1/models/fake/versions/{version}{suffix}")
            assert_error_answer(status, answer, statuses=(404,))
        assert_error_answer(*http("POST", f"{server.url}/v1/models/fake/versions/{version}:predict",
                                  {"instances": ["a"]}), statuses=(404,))
    assert_still_serving(server)


def test_lone_surrogate_strings_are_400(server):
    """Found reading the server: JSON may escape a lone UTF-16 surrogate ("\\ud800"), which UTF-8
    cannot encode, in an input or in a name quoted back in the error (was 500)."""
    for body in (b'{"instances": ["\\ud800"]}', b'{"inputs": {"text": ["ok", "\\udfff x"]}}',
                 b'{"signature_name": "\\ud800", "instances": ["a"]}', b'{"instances": [{"\\ud800": "a"}]}'):
        status, answer = http("POST", f"{server.url}/v1/models/fake:predict", body)
        assert_error_answer(status, answer, statuses=(400,))
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


def test_float_input_out_of_range_is_400():
    """Found reading the server: a JSON integer too large for a float (10**400) raised
    OverflowError (500) for a DT_FLOAT input (kerasformer's translate_beam alpha)."""
    from export.serving.status import StatusError
from export.serving.rest_codec import SignatureSpec, TensorSpec, parse_predict_request

    signature = SignatureSpec("s", {"alpha": TensorSpec("DT_FLOAT", ())}, {}, {})
    _, arrays, _ = parse_predict_request({"inputs": {"alpha": 0.5}}, {"s": signature}, "s")
    assert arrays["alpha"] == np.float32(0.5)
    for value in (10**400, -(10**400)):
        with pytest.raises(StatusError) as error:
            parse_predict_request({"inputs": {"alpha": value}}, {"s": signature}, "s")
        assert error.value.http_status == 400 and "inputs.alpha" in error.value.message


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


def raw_request(server, method, target, body=None):
    """(status, decoded JSON) of one request whose target is sent exactly as written."""
    connection = HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        connection.request(method, target, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


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

    from export import model_repository
    from export.serving.server import ServingApp

    base = str(model_tree / "saved_models")
    repository = model_repository.ModelRepository(base, poll_seconds=3600)
    repository.poll()
    app = ServingApp(repository).starlette()

    touched = []

    def recording(function):
        def record(path, *args, **kwargs):
            touched.append(os.fspath(path))
            return function(path, *args, **kwargs)
        return record

    for module, name in [(os, "stat"), (os, "listdir"), (os, "scandir"), (os, "walk"), (os.path, "isdir"),
                         (os.path, "isfile"), (os.path, "exists"), (tf.saved_model, "load")]:
        monkeypatch.setattr(module, name, recording(getattr(module, name)))
    monkeypatch.setattr(model_repository.saved_model_utils, "get_meta_graph_def",
                        recording(model_repository.saved_model_utils.get_meta_graph_def))

    for method, target in traversal_targets():
        body = b'{"instances": ["hi"]}' if method == "POST" else b""
        assert_error_answer(*asgi_request(app, method, target, body))
    assert touched == []

    repository.poll()
    assert touched and all(os.path.commonpath([base, path]) == base for path in touched), touched
    assert set(repository.loaded_models()) == {"fake"}


# --- model names: the exporter and the server accept plain folder names only --------------------

GOOD_NAMES = ["fake", "kerasformer_en_es", "model-2", "v1.2", "A", "9", "a..b"]
BAD_NAMES = ["", ".", "..", "../outside", "a/b", "/abs/path", "a\\b", "..\\outside", "C:\\models", "a\x00b",
             ".hidden", "-rf", "_private", "with space", "ünïcode", "name\n", "~"]


def test_check_model_name():
    from export.serving.model_repository import check_model_name

    for name in GOOD_NAMES:
        assert check_model_name(name) == name
    for name in BAD_NAMES + [None, 3]:
        with pytest.raises(ValueError, match="model name") as error:
            check_model_name(name)
        assert repr(name) in str(error.value)


def test_repository_refuses_bad_model_names(model_tree):
    from export.serving.model_repository import ModelRepository

    with pytest.raises(ValueError, match=r"'\.\./outside'"):
        ModelRepository(str(model_tree / "saved_models"), ["fake", "../outside"])


def test_serve_refuses_bad_model_names(capsys):
    from export.serving.server import parse_args

    assert parse_args(["--model-name", "fake", "--model-name", "kerasformer_en_es"]).model_names == [
        "fake", "kerasformer_en_es"]
    for name in ["..", "../outside", "/abs/path", "a\\b", ""]:
        with pytest.raises(SystemExit) as exit_:
            parse_args(["--model-name", "fake", "--model-name", name])
        assert exit_.value.code == 2
        assert f"--model-name: model name {name!r} is not a plain folder name" in capsys.readouterr().err


def test_export_refuses_bad_model_names(tmp_path, capsys, monkeypatch):
    from export import exporter

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
