"""kerasformer-serve (export/serving/server.py): its command line, start-up, REST routes and
answers, version polling, labels, metrics and batching, against the fake SavedModel of
serving_helpers through real HTTP, and in process where a test needs control of the graph.

Expected texts and layouts are the real server's, read in tensorflow/serving's source (each test
names the file). The rows taken from the real server's own tests are in test_conformance_http.py.

Servers (subprocesses under the TensorFlow backend, started once for the file):
    server          --model_config_file (fake, poller, labelled with version labels),
                    --monitoring_config_file (the committed export/serving/config/monitoring.config),
                    config and file-system polling, --max_request_bytes
    batched_server  --model_name/--model_base_path, --enable_batching, CORS headers on
"""

import asyncio
import base64
import concurrent.futures
import gzip
import json
import os
import shutil
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from google.protobuf import text_format
from serving_helpers import (
    DEFAULT_MAX_LENGTH,
    REPOSITORY_ROOT,
    ServerProcess,
    expected_translation,
    http,
    save_fake_model,
    wait_for,
)

from kerasformer.export.serving import model_config, server as serve
from kerasformer.export.serving.metrics import Metrics
from kerasformer.export.serving.status import StatusError

pytestmark = pytest.mark.backend_independent  # see tests/run.sh

MAX_REQUEST_BYTES = 64 * 1024
BATCH_ROWS = 16
CONFIG_DIR = os.path.join(REPOSITORY_ROOT, "export", "serving", "config")


def models_config(base, labels):
    """The ModelServerConfig text of `server`: fake, poller, and labelled (policy all) with `labels`."""
    label_text = "".join(f'    version_labels {{ key: "{k}" value: {v} }}\n' for k, v in labels.items())
    return (
        "model_config_list {\n"
        f'  config {{ name: "fake" base_path: "{base}/fake" model_platform: "tensorflow" }}\n'
        f'  config {{ name: "poller" base_path: "{base}/poller" model_platform: "tensorflow" }}\n'
        f'  config {{\n    name: "labelled"\n    base_path: "{base}/labelled"\n    model_platform: "tensorflow"\n'
        f"    model_version_policy {{ all {{}} }}\n{label_text}  }}\n"
        "}\n"
    )


@pytest.fixture(scope="module")
def model_base(tmp_path_factory):
    """saved_models/ with fake/1, poller/1, labelled/1 ("!") and labelled/2 ("?"), plus
    poller-2 staged outside it."""
    tmp = tmp_path_factory.mktemp("serving")
    base = tmp / "saved_models"
    save_fake_model(base / "fake" / "1")
    shutil.copytree(base / "fake" / "1", base / "poller" / "1")
    shutil.copytree(base / "fake" / "1", base / "labelled" / "1")
    save_fake_model(tmp / "staging" / "poller-2", suffix="?")
    shutil.copytree(tmp / "staging" / "poller-2", base / "labelled" / "2")
    (base / "fake" / ".tmp-1234").mkdir()  # an exporter's unfinished folder: not a version
    (tmp / "models.config").write_text(models_config(base, {"stable": 1, "canary": 2}))
    return tmp


@pytest.fixture(scope="module")
def server(model_base):
    process = ServerProcess(
        model_base, None, f"--model_config_file={model_base / 'models.config'}",
        "--allow_version_labels_for_unavailable_models", "--model_config_file_poll_wait_seconds=1",
        "--file_system_poll_wait_seconds=1", f"--monitoring_config_file={CONFIG_DIR}/monitoring.config",
        f"--max_request_bytes={MAX_REQUEST_BYTES}")
    try:
        yield process.wait_until_ready()
    finally:
        process.stop()


@pytest.fixture(scope="module")
def batched_server(model_base):
    """Batching: a batch runs once it holds BATCH_ROWS rows (or after 5 s); CORS headers on."""
    batching_file = model_base / "batching.txt"
    batching_file.write_text(
        f"max_batch_size {{ value: {BATCH_ROWS} }}\n"
        "batch_timeout_micros { value: 5000000 }  # generous: the batch runs once it is full\n"
        "max_enqueued_batches { value: 100 }\n"
        "num_batch_threads { value: 2 }\n"
        "pad_variable_length_inputs: true\n"
    )
    process = ServerProcess(model_base, None, "--model_name=fake",
                            f"--model_base_path={model_base / 'saved_models' / 'fake'}", "--enable_batching",
                            f"--batching_parameters_file={batching_file}", "--rest_api_enable_cors_support")
    try:
        yield process.wait_until_ready()
    finally:
        process.stop()


def raw(method, url, body=None, headers=None, timeout=60):
    """(status, headers as a dict with lower-case names, body bytes) of one request."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def error_text(message):
    """`MakeJsonFromStatus`'s body: RapidJSON's PrettyWriter, 4-space indent (json_tensor.cc)."""
    return ('{\n    "error": "' + message.replace("\\", "\\\\").replace('"', '\\"') + '"\n}').encode()


def predict(server, body, model="fake", version=None, label=None):
    path = f"/v1/models/{model}" + (f"/versions/{version}" if version is not None else "") + (
        f"/labels/{label}" if label is not None else "")
    return http("POST", f"{server.url}{path}:predict", body)


def assert_still_serving(server):
    status, answer = predict(server, {"instances": ["ok"]})
    assert status == 200, answer
    assert answer["predictions"][0]["translation"] == "OK!"


# --- the command line (model_servers/main.cc, tensorflow/core/util/command_line_flags.cc) ---------


def test_flags_as_the_real_parser_reads_them():
    options, unknown = model_config.parse_flags([
        "--port=9000", "--rest_api_port=9001", "--model_name=m", "--enable_batching",
        "--allow_version_labels_for_unavailable_models=true", "--enable_model_warmup=false",
        "--rest_api_timeout_in_ms=-1", "--model_config_file_poll_wait_seconds=+5", "--model-base-path", "x",
    ])
    assert (options["port"], options["rest_api_port"], options["model_name"]) == (9000, 9001, "m")
    assert options["enable_batching"] and options["allow_version_labels_for_unavailable_models"]
    assert options["enable_model_warmup"] is False
    assert options["rest_api_timeout_in_ms"] == -1 and options["model_config_file_poll_wait_seconds"] == 5
    assert unknown == ["--model-base-path", "x"]  # today's hyphenated --model-base-path is gone
    defaults, _ = model_config.parse_flags([])
    assert (defaults["port"], defaults["rest_api_port"], defaults["model_name"]) == (8500, 8501, "default")
    assert (defaults["file_system_poll_wait_seconds"], defaults["rest_api_timeout_in_ms"]) == (1, 30000)
    assert defaults["model_config_file_poll_wait_seconds"] == 0 and not defaults["enable_batching"]


def test_flags_extensions_and_aliases():
    options, unknown = model_config.parse_flags([
        "--port", "9000", "--model_base_path", "/m", "--enable-batching", "--batching-parameters-file", "b.txt",
        "--max-request-bytes=10", "--poll-seconds", "0.5", "--log-level=warning", "--", "--port=1",
    ])
    assert (options["port"], options["model_base_path"], options["enable_batching"]) == (9000, "/m", True)
    assert (options["batching_parameters_file"], options["max_request_bytes"]) == ("b.txt", 10)
    assert (options["file_system_poll_wait_seconds"], options["log_level"]) == (0.5, "warning")
    assert unknown == ["--", "--port=1"]  # everything after "--" is left alone


@pytest.mark.parametrize("arg, message", [
    ("--port=80x", "Couldn't interpret value 80x for flag port."),
    ("--port=99999999999", "Couldn't interpret value 99999999999 for flag port."),
    ("--enable_batching=yes", "Couldn't interpret value =yes for flag enable_batching."),
    ("--enable_batchingX", "Couldn't interpret value X for flag enable_batching."),
    ("--file_system_poll_wait_seconds=0.5", "Couldn't interpret value 0.5 for flag file_system_poll_wait_seconds."),
])
def test_flag_values_refused(arg, message, capsys):
    with pytest.raises(model_config.FlagError, match=message.replace(".", r"\.")):
        model_config.parse_flags([arg])
    with pytest.raises(SystemExit) as exited:
        serve.main([arg])
    assert exited.value.code == 255  # main() returns -1
    captured = capsys.readouterr()
    assert message in captured.err and captured.out.startswith("usage: kerasformer-serve\nFlags:\n\t--port=8500 ")


def test_usage_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as exited:
        serve.main(["--help"])
    assert exited.value.code == 255
    text = capsys.readouterr().out
    for flag in model_config.FLAGS:
        assert f"\t--{flag.name}=" in text
    assert '--model_name="default"' in text and "--enable_batching=false" in text


def write(path, text):
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def one_model(tmp_path_factory):
    base = tmp_path_factory.mktemp("one") / "fake"
    save_fake_model(base / "1")
    return base


def config_entry(name, base_path, extra=""):
    return f'config {{ name: "{name}" base_path: "{base_path}" model_platform: "tensorflow" {extra}}} '


def start_up_errors(tmp_path, one_model):
    """(arguments, the status the real server fails with) for each way it refuses to start."""
    broken = tmp_path / "broken"
    (broken / "1" / "variables").mkdir(parents=True)
    bad = write(tmp_path / "bad.config", "model_config_list { config { nme: 1 } }")
    twice = write(tmp_path / "twice.config", "model_config_list { " + 2 * config_entry("m", "/m") + "}")
    tflite = write(tmp_path / "tflite.config",
                   "model_config_list { " + config_entry("m", "/m").replace('"tensorflow"', '"tflite"') + "}")
    labels = write(tmp_path / "labels.config", "model_config_list { " + config_entry(
        "fake", one_model, 'version_labels { key: "stable" value: 1 } ') + "}")
    monitoring = write(tmp_path / "m.config", "enable: 1")
    return [
        (["--port=0", "--model_base_path=/m"],
         "INVALID_ARGUMENT: At least one of server_options.grpc_port or server_options.grpc_socket_path must be set."),
        ([], "INVALID_ARGUMENT: Both server_options.model_base_path and server_options.model_config_file are empty!"),
        (["--model-base-path", "/m"],  # unknown: printed, then ignored, as main.cc does
         "INVALID_ARGUMENT: Both server_options.model_base_path and server_options.model_config_file are empty!"),
        (["--model_base_path=/m", "--batching_parameters_file=b.txt"],
         "INVALID_ARGUMENT: server_options.batching_parameters_file is set without setting "
         "server_options.enable_batching to true."),
        (["--model_base_path=saved_models/fake"],
         "INVALID_ARGUMENT: Expected model default to have an absolute path or URI; got base_path()=saved_models/fake"),
        ([f"--model_config_file={tmp_path}/none.config"],
         f"NOT_FOUND: {tmp_path}/none.config; No such file or directory"),
        ([f"--model_config_file={bad}"], f"INVALID_ARGUMENT: Invalid protobuf file: '{bad}'"),
        ([f"--model_config_file={twice}"], "INVALID_ARGUMENT: Illegal to list model m multiple times in config list"),
        ([f"--model_config_file={tflite}"], "INVALID_ARGUMENT: Model m requests unsupported platform tflite"),
        # Labels are checked before any version loads (ServerCore::ReloadConfig): without
        # --allow_version_labels_for_unavailable_models a config with labels cannot start a server.
        ([f"--model_config_file={labels}"],
         "FAILED_PRECONDITION: Request to assign label to version 1 of model fake, which is not currently available "
         "for inference"),
        ([f"--model_base_path={broken}", "--model_name=broken"],
         f"UNKNOWN: 1 model(s) did not become available: {{{{{{name: broken version: 1}} due to error: NOT_FOUND: "
         f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {broken}/1. Check that the "
         f"directory exists and that you have the right permissions for accessing it.}}, }}"),
        ([f"--model_base_path={one_model}", f"--monitoring_config_file={monitoring}", "--rest_api_port=8501"],
         f"INVALID_ARGUMENT: Invalid protobuf file: '{monitoring}'"),  # read only when the REST port is on
        (["--model_base_path=/m", "--grpc_socket_path=/tmp/socket"],
         "UNIMPLEMENTED: kerasformer-serve does not implement --grpc_socket_path (given '/tmp/socket')"),
    ]


def test_start_up_errors(tmp_path, one_model, capsys):
    """Server::BuildAndStart and ServerCore::Create refuse these; main.cc prints
    "Failed to start server. Error: STATUS" and returns -1."""
    for argv, status in start_up_errors(tmp_path, one_model):
        with pytest.raises(SystemExit) as exited:
            serve.main(["--rest_api_port=0", "--log_level=error", *argv])
        assert exited.value.code == 255, argv
        out = capsys.readouterr().out
        assert out.endswith(f"Failed to start server. Error: {status}\n"), (argv, out)
        if argv and argv[0] == "--model-base-path":
            assert out.startswith("unknown argument: --model-base-path\nusage: kerasformer-serve\n")


def test_committed_config_files_parse():
    config = model_config.parse_proto_text_file(os.path.join(CONFIG_DIR, "models.config"),
                                                model_config.ModelServerConfig)
    model_config.validate_model_server_config(config)
    assert [m.name for m in config.model_config_list.config] == ["kerasformer_en_es"]
    monitoring = model_config.parse_proto_text_file(os.path.join(CONFIG_DIR, "monitoring.config"),
                                                    model_config.MonitoringConfig)
    assert monitoring.prometheus_config.enable and monitoring.prometheus_config.path == "/monitoring/prometheus/metrics"


# --- version folders and policies (file_system_storage_path_source.cc) ------------------------------


def test_version_policies():
    children = ["1", "3", "007", " 2", "+4", "-5", "v6", ".tmp-8", "01", "99999999999999999999"]
    config = model_config.model_server_config_pb2.ModelConfig()
    assert model_config.aspired_versions(config, children) == {7: "007"}  # latest, 1 version
    config.model_version_policy.latest.num_versions = 3
    assert model_config.aspired_versions(config, children) == {7: "007", 4: "+4", 3: "3"}
    config.model_version_policy.all.SetInParent()
    # "01" and "1" name one version: the name sorting last wins, as IndexChildrenByVersion does.
    assert model_config.aspired_versions(config, children) == {
        1: "1", 2: " 2", 3: "3", 4: "+4", -5: "-5", 7: "007"}
    config.model_version_policy.specific.versions.extend([2, 9])
    assert model_config.aspired_versions(config, children) == {2: " 2"}


def test_labels_need_an_available_version(one_model):
    """UpdateModelVersionLabelMap (server_core.cc): once version 1 is available a reloaded config
    may label it; a label naming a version that is not available refuses the whole config, and the
    labels in force stay."""
    from kerasformer.export.serving.model_repository import ModelRepository

    def config(labels):
        text = "model_config_list { " + config_entry("fake", one_model, "".join(
            f'version_labels {{ key: "{k}" value: {v} }} ' for k, v in labels.items())) + "}"
        parsed = model_config.ModelServerConfig()
        text_format.Parse(text, parsed)
        return parsed

    repository = ModelRepository(config=config({}))
    try:
        repository.poll()
        repository.reload_config(config({"stable": 1}))
        assert repository.get("fake", label="stable").version == 1
        with pytest.raises(StatusError) as refused:
            repository.reload_config(config({"stable": 1, "next": 2}))
        assert (refused.value.code, refused.value.message) == (
            "FAILED_PRECONDITION",
            "Request to assign label to version 2 of model fake, which is not currently available for inference")
        assert repository.labels("fake") == {"stable": 1}
        with pytest.raises(StatusError, match="Unrecognized servable version label: next"):
            repository.get("fake", label="next")
        # With --allow_version_labels_for_unavailable_models a new label may wait for its
        # version; the version itself is then not found.
        repository.allow_version_labels_for_unavailable_models = True
        repository.reload_config(config({"stable": 1, "next": 2}))
        with pytest.raises(StatusError, match=r"Servable not found for request: Specific\(fake, 2\)"):
            repository.get("fake", label="next")
    finally:
        repository.stop()


def test_all_models_under_extension(tmp_path, one_model):
    """--all_models_under: every plain-named model folder, found again at every poll; other
    names (which could reach outside the folder) are left out."""
    from kerasformer.export.serving.model_repository import ModelRepository

    base = tmp_path / "saved_models"
    shutil.copytree(one_model, base / "first")
    shutil.copytree(one_model, base / "bad name")
    repository = ModelRepository(str(base))
    try:
        repository.poll()
        assert set(repository.loaded_models()) == {"first"}
        shutil.copytree(one_model, base / "second")
        repository.poll()
        assert set(repository.loaded_models()) == {"first", "second"}
        shutil.rmtree(base / "first")  # a model folder gone: the model goes
        repository.poll()
        assert set(repository.loaded_models()) == {"second"}
        assert repository.status("first")[0]["state"] == "END"
    finally:
        repository.stop()


# --- status and metadata (get_model_status_impl.cc, http_rest_api_util.cc ToJsonString) --------------

STATUS_1 = ('{\n "model_version_status": [\n  {\n   "version": "1",\n   "state": "AVAILABLE",\n   "status": {\n'
            '    "error_code": "OK",\n    "error_message": ""\n   }\n  }\n ]\n}\n')


def test_status(server):
    for path in ("/v1/models/fake", "/v1/models/fake/versions/1", "/V1/MODELS/fake", "/v1/models/fake/labels/any"):
        status, headers, body = raw("GET", server.url + path)
        assert (status, headers["content-type"], body.decode()) == (200, "application/json", STATUS_1), path
    # Every version of a model, newest first; a label is not a version to GetModelStatus.
    _, answer = http("GET", f"{server.url}/v1/models/labelled/labels/stable")
    assert [v["version"] for v in answer["model_version_status"]] == ["2", "1"]
    assert http("GET", f"{server.url}/v1/models/nope") == (404, {"error": "Could not find any versions of model nope"})
    assert http("GET", f"{server.url}/v1/models/fake/versions/9") == (
        404, {"error": "Could not find version 9 of model fake"})


def test_metadata(server):
    for path in ("/v1/models/fake/metadata", "/v1/models/fake/versions/1/metadata"):
        status, headers, body = raw("GET", server.url + path)
        assert status == 200 and headers["content-type"] == "application/json", body
        text = body.decode()
        # ToJsonString's own joins around two MessageToJsonString texts (each ending "\n").
        assert text.startswith('{\n"model_spec":{\n "name": "fake",\n "version": "1",\n "signature_name": ""\n}\n,\n'
                               '"metadata": {"signature_def": {\n "signature_def": {\n')
        assert text.endswith("\n}\n}\n}\n")
        answer = json.loads(text)
        signatures = answer["metadata"]["signature_def"]["signature_def"]
        assert set(signatures) == {"serving_default", "translate_max_length", "translate_tokens",
                                   "__saved_model_init_op"}
        serving = signatures["serving_default"]
        assert list(serving) == ["inputs", "outputs", "method_name", "defaults"]  # field-number order
        assert serving["method_name"] == "tensorflow/serving/predict" and serving["defaults"] == {}
        text_input = serving["inputs"]["text"]
        assert list(text_input) == ["name", "dtype", "tensor_shape"]
        assert text_input["dtype"] == "DT_STRING" and text_input["name"] == "serving_default_text:0"
        assert text_input["tensor_shape"] == {"dim": [{"size": "-1", "name": ""}], "unknown_rank": False}
        assert set(serving["outputs"]) == {"translation", "tokens", "length"}
        assert set(signatures["translate_max_length"]["inputs"]) == {"text", "max_length"}
    assert http("GET", f"{server.url}/v1/models/fake/versions/9/metadata") == (
        404, {"error": "Servable not found for request: Specific(fake, 9)"})
    assert http("GET", f"{server.url}/v1/models/nope/metadata") == (
        404, {"error": "Servable not found for request: Latest(nope)"})


# --- paths and methods (http_rest_api_util.cc, http_rest_api_handler.cc, http_server.cc) -----------


@pytest.mark.parametrize("method, path, status, body", [
    # Everything under (?i)/v1/ reaches the handler, which needs a path its regexes take.
    ("GET", "/v1/foo", 400, error_text("Malformed request: GET /v1/foo")),
    ("PUT", "/v1/models/fake", 400, error_text("Malformed request: PUT /v1/models/fake")),
    ("DELETE", "/v1/models/fake", 400, error_text("Malformed request: DELETE /v1/models/fake")),
    ("PATCH", "/v1/models/fake", 400, error_text("Malformed request: PATCH /v1/models/fake")),
    ("GET", "/v1/models/fake:predict", 400, error_text("Malformed request: GET /v1/models/fake:predict")),
    ("POST", "/v1/models/fake", 400, error_text("Malformed request: POST /v1/models/fake")),
    ("POST", "/v1/models/fake:PREDICT", 400, error_text("Malformed request: POST /v1/models/fake:PREDICT")),
    ("POST", "/v1/models/fake:predict?x=1", 400, error_text("Malformed request: POST /v1/models/fake:predict?x=1")),
    ("GET", "/v1/models/fake/versions/x", 400, error_text("Malformed request: GET /v1/models/fake/versions/x")),
    ("GET", "/v1/models", 400, error_text("Missing model name in request.")),
    # The query string is part of the path the regex reads: here, of the model name.
    ("GET", "/v1/models/fake?x=1", 404, error_text("Could not find any versions of model fake?x=1")),
    # ParseModelInfo fails before the handler writes a body.
    ("GET", "/v1/models/fake/versions/9223372036854775808", 400, b""),
    # Outside /v1: libevent's own 404 page.
    ("GET", "/v2/models/fake", 404,
     b"<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n<H1>Not Found</H1>\n</BODY></HTML>\n"),
    ("GET", "/v1", 404,
     b"<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n<H1>Not Found</H1>\n</BODY></HTML>\n"),
    # Methods evhttp does not allow (evhttp_server.cc, evhttp_set_allowed_methods).
    ("TRACE", "/v1/models/fake", 501,
     b"<HTML><HEAD>\n<TITLE>501 Not Implemented</TITLE>\n</HEAD><BODY>\n<H1>Not Implemented</H1>\n</BODY></HTML>\n"),
])
def test_paths(server, method, path, status, body):
    got_status, headers, got_body = raw(method, server.url + path, b"{}" if method in ("POST", "PUT", "PATCH") else None)
    assert (got_status, got_body) == (status, body)
    if path.startswith("/v1/") and method != "TRACE":
        assert headers["content-type"] == "application/json"
        assert "access-control-allow-origin" not in headers  # CORS is off unless asked for
    else:
        assert headers["content-type"] == "text/html"


def test_paths_are_case_insensitive_and_url_decoded(server):
    assert predict(server, {"instances": ["a"]}, model="fa%6Be")[0] == 200  # curl_easy_unescape: "fake"
    status, answer = http("POST", f"{server.url}/V1/Models/fake/VERSIONS/1:predict", {"instances": ["a"]})
    assert status == 200 and answer["predictions"][0]["translation"] == "A!"
    # The verb and "metadata" are compared as written once the regex matched: /METADATA asks
    # for the status of model "fake" (ProcessRequest compares model_subresource == "metadata").
    assert raw("GET", f"{server.url}/v1/models/fake/METADATA")[2].decode() == STATUS_1
    # "+" is not a space, and %2F is part of the name, not a separator.
    assert http("GET", f"{server.url}/v1/models/a+b%2Fc") == (404, {"error": "Could not find any versions of model a+b/c"})


def test_head_and_options(server):
    status, headers, body = raw("HEAD", f"{server.url}/v1/models/fake")
    assert (status, body) == (400, b"")  # "Malformed request: HEAD ...", without a body
    # The CORS preflight (http_server.cc): OK with an http(s) Origin, else FAILED_PRECONDITION,
    # with no body and no JSON content type either way (the handler is not called).
    status, headers, body = raw("OPTIONS", f"{server.url}/v1/models/fake", headers={"Origin": "https://a.example"})
    assert (status, body) == (200, b"") and "content-type" not in headers
    status, headers, body = raw("OPTIONS", f"{server.url}/v1/models/fake")
    assert (status, body) == (400, b"") and "content-type" not in headers


def test_cors_headers(batched_server):
    """--rest_api_enable_cors_support: AddCORSHeaders on every answer of the API, errors too."""
    for method, path in [("GET", "/v1/models/fake"), ("GET", "/v1/nothing"), ("OPTIONS", "/v1/models/fake")]:
        _, headers, _ = raw(method, batched_server.url + path, headers={"Origin": "http://a.example"})
        assert headers["access-control-allow-origin"] == "*"
        assert headers["access-control-allow-methods"] == "POST, GET"
        assert headers["access-control-allow-headers"] == "Content-Type"


# --- predict --------------------------------------------------------------------------------------


def test_row_format(server):
    status, answer = predict(server, {"instances": ["hello", "ab"]})
    assert status == 200, answer
    assert answer == {"predictions": [
        {"length": 5, "tokens": [104, 101, 108, 108, 111], "translation": "HELLO!"},
        {"length": 2, "tokens": [97, 98, 0, 0, 0], "translation": "AB!"},
    ]}
    body = {"signature_name": "translate_max_length",
            "instances": [{"text": "hello", "max_length": 3}, {"text": "ab", "max_length": 1}]}
    status, answer = predict(server, body)
    assert status == 200, answer
    assert [p["tokens"] for p in answer["predictions"]] == [[104, 101, 108], [97, 0, 0]]


def test_columnar_format(server):
    body = {"signature_name": "translate_max_length", "inputs": {"text": ["hello", "ab"], "max_length": [2, 2]}}
    status, answer = predict(server, body)
    assert status == 200, answer
    assert answer == {"outputs": {"length": [2, 2], "tokens": [[104, 101], [97, 98]], "translation": ["HELLO!", "AB!"]}}
    status, answer = predict(server, {"inputs": ["hi"], "signature_name": ""})  # "" is serving_default
    assert status == 200, answer
    assert answer["outputs"]["translation"] == ["HI!"]
    assert answer["outputs"]["length"] == [2]


def test_b64_unicode_and_long_input(server):
    encoded = base64.b64encode("héllo".encode()).decode()
    status, answer = predict(server, {"instances": [{"b64": encoded}, "ñu"]})
    assert status == 200, answer
    assert [p["translation"] for p in answer["predictions"]] == ["HéLLO!", "ñU!"]
    text = "abc " * 2500
    status, answer = predict(server, {"inputs": {"text": [text]}})
    assert status == 200 and answer["outputs"]["translation"] == [expected_translation(text)]
    assert answer["outputs"]["length"] == [DEFAULT_MAX_LENGTH]


def test_translate_tokens_signature(server):
    body = {"signature_name": "translate_tokens", "instances": [[5, 6, 0, 0], [9, 0, 0, 0]]}
    status, answer = predict(server, body)
    assert status == 200, answer
    assert answer == {"predictions": [{"length": 2, "tokens": [6, 7]}, {"length": 1, "tokens": [10, 0]}]}


def test_gzip_body(server):
    """evhttp uncompresses a body whose Content-Encoding names gzip (auto_uncompress_input)."""
    body = gzip.compress(b'{"instances": ["zip"]}')
    status, _, answer = raw("POST", f"{server.url}/v1/models/fake:predict", body, {"Content-Encoding": "gzip"})
    assert status == 200 and b'"translation": "ZIP!"' in answer


BAD_REQUESTS = {
    # body, the real server's error text (util/json_tensor.cc), or a part of it
    "empty": (b"", "JSON Parse error: The document is empty"),
    "malformed JSON": (b'{"instances": [', "JSON Parse error: "),
    "not an object": (b"[1, 2]", "JSON Value: [1, 2] Is not object"),
    "neither instances nor inputs": (b'{"signature_name": "serving_default"}', "Missing 'inputs' or 'instances' key"),
    "both": (b'{"instances": ["a"], "inputs": ["a"]}', "expecting only one of 'inputs' or 'instances' keys to exist"),
    "empty batch": (b'{"instances": []}', "No values in 'instances' array"),
    "number for a string": (b'{"instances": [1]}', "is not of expected type: string"),
    "unknown signature": (b'{"signature_name": "nope", "instances": ["a"]}',
                          'Serving signature name: "nope" not found in signature def'),
    "signature name not a string": (b'{"signature_name": 100}', "'signature_name' key must be a string value."),
    "an input too many": (b'{"instances": [{"text": "a", "max_length": 2}]}',
                          "does not have named input: max_length"),
    "an input short": (b'{"signature_name": "translate_max_length", "instances": [{"text": "a"}]}',
                       "keys must be equal to: max_length,text"),
    "an input missing": (b'{"signature_name": "translate_max_length", "inputs": {"text": ["a"]}}',
                         "Missing named input: max_length in 'inputs' object."),
    "ragged rows": (b'{"signature_name": "translate_tokens", "instances": [[1, 2], [3]]}', ""),
    "bad base64": (b'{"instances": [{"b64": "###"}]}', "Unable to base64 decode"),
}


@pytest.mark.parametrize("body, message", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_request_is_400(server, body, message):
    status, headers, answer = raw("POST", f"{server.url}/v1/models/fake:predict", body)
    assert status == 400, answer
    assert answer.startswith(b'{\n    "error": "') and answer.endswith(b'"\n}'), answer
    assert message in json.loads(answer)["error"], answer
    assert_still_serving(server)


def test_unknown_model_or_version_is_404(server):
    assert predict(server, {"instances": ["a"]}, version=9) == (
        404, {"error": "Servable not found for request: Specific(fake, 9)"})
    assert predict(server, {"instances": ["a"]}, model="nope") == (
        404, {"error": "Servable not found for request: Latest(nope)"})
    # The body is read before the model is looked up (FillPredictRequestFromJson).
    status, _, body = raw("POST", f"{server.url}/v1/models/nope:predict", b"")
    assert (status, body) == (400, error_text("JSON Parse error: The document is empty"))


def test_graph_errors(server):
    status, answer = predict(server, {"instances": ["a", "__fail__"]})
    assert status == 400, answer  # INVALID_ARGUMENT inside the graph
    assert "asked to fail" in answer["error"]
    status, answer = predict(server, {"instances": ["__crash__"]})
    assert status == 500, answer  # DATA_LOSS
    assert "inflate" in answer["error"]
    assert_still_serving(server)


def test_classify_and_regress_refuse_our_signatures(server):
    """classifier.cc / regressor.cc (signature checks with the method-name check off, the default),
    after FillClassifyRegressRequestFromJson has read the body."""
    url = f"{server.url}/v1/models/fake"
    examples = b'{"examples": [{"text": "a"}]}'
    assert http("POST", url + ":classify", examples) == (400, {"error": "Expected one or two output Tensors, found 3"})
    assert http("POST", url + ":regress", examples) == (400, {"error": "Expected one output Tensor."})
    two_inputs = b'{"signature_name": "translate_max_length", "examples": [{"text": "a"}]}'
    assert http("POST", url + ":classify", two_inputs) == (400, {"error": "Expected one input Tensor."})
    status, answer = http("POST", url + ":classify", b'{"signature_name": "translate_tokens", "examples": [{}]}')
    assert status == 400 and answer["error"].startswith("No classification inputs found in SignatureDef: inputs {\n")
    assert http("POST", url + ":regress", b'{"signature_name": "x", "examples": [{}]}') == (
        400, {"error": "No signature was found with the name: x"})
    # The body's own errors come first, texts of json_tensor.cc (its text says "classify" for regress too).
    assert http("POST", url + ":regress", b'{"inputs": []}') == (400, {
        "error": 'JSON Value: {\n    "inputs": []\n} When method is classify, key \'examples\' is expected and was not '
                 "found"})
    assert http("POST", url + ":classify", b'{"examples": []}') == (400, {
        "error": 'JSON Value: {\n    "examples": []\n} \'examples\' value is an empty array'})
    assert http("POST", url + ":classify", b'{"examples": [{"x": [1, 2.5]}]}') == (400, {
        "error": "Unexpected element type in feature: x expecting type: int64"})
    assert http("POST", f"{server.url}/v1/models/nope:classify", examples) == (
        404, {"error": "Servable not found for request: Latest(nope)"})


def test_oversized_body_is_413(server):
    """This server's extension --max_request_bytes (the real server reads any size)."""
    body = b'{"instances": ["' + b"x" * (2 * MAX_REQUEST_BYTES) + b'"]}'
    status, answer = http("POST", f"{server.url}/v1/models/fake:predict", body)
    assert status == 413, answer
    assert "--max_request_bytes" in answer["error"]
    assert_still_serving(server)


def test_extensions(server):
    status, stats = http("GET", f"{server.url}/kerasformer/stats")
    assert status == 200 and set(stats["models"]) == {"fake", "poller", "labelled"} and stats["models"]["fake"] == 1
    assert stats["batching"] is None and stats["predict_requests"] >= 0
    status, description = http("GET", f"{server.url}/kerasformer/openapi.json")
    assert status == 200 and description["openapi"].startswith("3.1")
    assert http("POST", f"{server.url}/kerasformer/stats")[0] == 405


# --- labels (server_core.cc) ----------------------------------------------------------------------


def test_version_labels(server, model_base):
    for label, suffix in (("stable", "!"), ("canary", "?")):
        status, answer = predict(server, {"instances": ["hi"]}, model="labelled", label=label)
        assert (status, answer["predictions"][0]["translation"]) == (200, "HI" + suffix), answer
    _, answer = http("GET", f"{server.url}/v1/models/labelled/labels/stable/metadata")
    assert answer["model_spec"]["version"] == "1"
    assert predict(server, {"instances": ["hi"]}, model="labelled", label="nope") == (
        400, {"error": "Unrecognized servable version label: nope"})
    assert predict(server, {"instances": ["hi"]}, model="fake", label="stable") == (
        400, {"error": "Unrecognized servable version label: stable"})
    # Labels are percent-decoded too.
    assert predict(server, {"instances": ["hi"]}, model="labelled", label="st%61ble")[0] == 200
    # The config file is polled (--model_config_file_poll_wait_seconds): a new label serves.
    config = model_base / "models.config"
    original = config.read_text()
    try:
        config.write_text(models_config(model_base / "saved_models", {"stable": 1, "canary": 2, "next": 2}))
        wait_for(lambda: predict(server, {"instances": ["hi"]}, model="labelled", label="next")[0] == 200,
                 message="the label of the reloaded config")
    finally:
        config.write_text(original)
    wait_for(lambda: predict(server, {"instances": ["hi"]}, model="labelled", label="next")[0] == 400,
             message="the label to go with the config")


# --- metrics (util/prometheus_exporter.cc, servables/tensorflow/util.cc) -----------------------------


def test_prometheus_metrics(server):
    assert predict(server, {"instances": ["count me"]})[0] == 200
    assert http("GET", f"{server.url}/v1/models/nope")[0] == 404
    path = f"{server.url}/monitoring/prometheus/metrics"
    status, headers, body = raw("GET", path)
    assert status == 200 and headers["content-type"] == "text/plain"
    page = body.decode()
    assert "# TYPE :tensorflow:serving:request_count counter\n" in page
    assert "# TYPE :tensorflow:serving:request_latency histogram\n" in page
    counts = {line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1]) for line in page.splitlines()
              if line.startswith(":tensorflow:serving:request_count{")}
    assert counts[':tensorflow:serving:request_count{model_name="fake",status="OK"}'] >= 1
    assert counts[':tensorflow:serving:request_count{model_name="nope",status="NOT_FOUND"}'] >= 1
    prefix = ':tensorflow:serving:request_latency_bucket{model_name="fake",API="predict",entrypoint="REST",'
    assert prefix + 'le="10"}' in page and prefix + 'le="+Inf"}' in page
    assert ':tensorflow:serving:runtime_latency_count{model_name="fake",API="Predict",runtime="TF1"}' in page
    # GET status records API "" (ParseModelInfo fills no method for GET).
    assert ':tensorflow:serving:request_latency_count{model_name="fake",API="",entrypoint="REST"}' in page
    assert raw("GET", path + "?x=1")[::2] == (
        400, b"Unexpected path: /monitoring/prometheus/metrics?x=1. Should be /monitoring/prometheus/metrics")


def test_no_metrics_without_monitoring_config(batched_server):
    assert raw("GET", f"{batched_server.url}/monitoring/prometheus/metrics")[0] == 404


def test_metrics_page_layout():
    metrics = Metrics()
    metrics.record('a"b\\', "predict", "REST", "OK", 0.000015)
    metrics.record("m", "", "REST", "NOT_FOUND", 1.0)
    page = metrics.page()
    assert page.startswith(
        "# TYPE :tensorflow:serving:request_count counter\n"
        ':tensorflow:serving:request_count{model_name="a\\"b\\\\",status="OK"} 1\n'
        ':tensorflow:serving:request_count{model_name="m",status="NOT_FOUND"} 1\n'
        "# TYPE :tensorflow:serving:request_example_count_total counter\n"
        "# TYPE :tensorflow:serving:request_example_counts histogram\n"
        "# TYPE :tensorflow:serving:request_latency histogram\n"
        ':tensorflow:serving:request_latency_bucket{model_name="a\\"b\\\\",API="predict",entrypoint="REST",le="10"} 0\n'
        ':tensorflow:serving:request_latency_bucket{model_name="a\\"b\\\\",API="predict",entrypoint="REST",le="18"} 1\n'
        ':tensorflow:serving:request_latency_bucket{model_name="a\\"b\\\\",API="predict",entrypoint="REST",le="32.4"} 1\n')
    assert ':tensorflow:serving:request_latency_sum{model_name="a\\"b\\\\",API="predict",entrypoint="REST"} 15\n' in page
    assert 'le="1.47476e+09"} 1\n' in page and page.endswith("# TYPE :tensorflow:serving:runtime_latency histogram\n")
    assert 'model_name="m",API=""' not in page  # latency only for OK requests


# --- new versions (availability_preserving_policy.cc) -------------------------------------------------


def served_version(server, model="poller"):
    status, answer = http("GET", f"{server.url}/v1/models/{model}")
    if status != 200:
        return None
    available = [v for v in answer["model_version_status"] if v["state"] == "AVAILABLE"]
    return int(available[0]["version"]) if available else None


def test_new_version_is_served_and_broken_ones_refused(server, model_base):
    base, tmp = model_base / "saved_models", model_base
    assert served_version(server) == 1
    shutil.copytree(tmp / "staging" / "poller-2", base / "poller" / "2")
    wait_for(lambda: served_version(server) == 2, message="version 2 to be served")
    status, answer = predict(server, {"instances": ["hi"]}, model="poller")
    assert answer["predictions"][0]["translation"] == "HI?", answer
    _, answer = http("GET", f"{server.url}/v1/models/poller")
    assert answer["model_version_status"] == [
        {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        {"version": "1", "state": "END", "status": {"error_code": "OK", "error_message": ""}},
    ]
    assert predict(server, {"instances": ["hi"]}, model="poller", version=1)[0] == 404

    # Folder 3 has no saved_model.pb and folder 4 a truncated one. The default policy asks for the
    # newest version only: 4 fails, 3 is never tried, and 2 keeps serving.
    (base / "poller" / "3" / "variables").mkdir(parents=True)
    shutil.copytree(base / "poller" / "2", base / "poller" / "4")
    pb = base / "poller" / "4" / "saved_model.pb"
    pb.write_bytes(pb.read_bytes()[: os.path.getsize(pb) // 2])
    wait_for(lambda: "refused poller version 4" in server.log(), message="version 4 to be refused")
    assert served_version(server) == 2
    status, answer = predict(server, {"instances": ["hi"]}, model="poller")
    assert status == 200 and answer["predictions"][0]["translation"] == "HI?"
    _, answer = http("GET", f"{server.url}/v1/models/poller/versions/4")
    assert answer["model_version_status"][0]["state"] == "END"
    assert answer["model_version_status"][0]["status"]["error_code"] != "OK"
    assert http("GET", f"{server.url}/v1/models/poller/versions/3") == (
        404, {"error": "Could not find version 3 of model poller"})
    assert server.log().count("refused poller version 4") == 1  # not retried while unchanged


# --- the REST timeout, in process ------------------------------------------------------------------


class HeldModel:
    """A model whose run blocks until `release` is set; records that it ran."""

    name, version = "held", 1

    def __init__(self):
        self.release = threading.Event()
        self.graph_calls = 0
        from kerasformer.export.serving.rest_codec import SignatureSpec, TensorSpec

        self.signatures = {"serving_default": SignatureSpec(
            "serving_default", {"x": TensorSpec("DT_INT32", (-1,), "x:0")}, {"y": TensorSpec("DT_INT32", (-1,), "y:0")},
            {})}

    def run(self, signature_name, inputs):
        self.release.wait(60)
        self.graph_calls += 1
        return {"y": np.asarray(inputs["x"])}


class OneModel:
    def __init__(self, model):
        self.model = model

    def get(self, name, version=None, label=None):
        if name != self.model.name:
            raise StatusError("NOT_FOUND", f"Servable not found for request: Latest({name})")
        return self.model


async def asgi_request(app, method, path, body=b""):
    """(status, body) of one request to an ASGI app, in process."""
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": []}
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_timeout_is_deadline_exceeded():
    """--rest_api_timeout_in_ms is the predict's session timeout: past it, DEADLINE_EXCEEDED (504)
    with TensorFlow's DirectSession text; a run within it answers."""
    model = HeldModel()
    app = serve.ServingApp(OneModel(model), timeout_in_ms=50)

    async def scenario():
        late = await asgi_request(app, "POST", "/v1/models/held:predict", b'{"instances": [1, 2]}')
        model.release.set()
        in_time = await asgi_request(app, "POST", "/v1/models/held:predict", b'{"instances": [1, 2]}')
        # The timed-out run finishes in its thread; wait for it while the loop is alive.
        await asyncio.get_running_loop().run_in_executor(None, app._executor.shutdown, True)
        return late, in_time

    try:
        late, in_time = asyncio.run(scenario())
    finally:
        model.release.set()
    assert late == (504, error_text("Timed out waiting for notification"))
    assert in_time[0] == 200 and json.loads(in_time[1]) == {"predictions": [1, 2]}
    assert model.graph_calls == 2
    page = app.metrics.page()
    assert ':tensorflow:serving:request_count{model_name="held",status="DEADLINE_EXCEEDED"} 1' in page
    assert ':tensorflow:serving:request_count{model_name="held",status="OK"} 1' in page


# --- batching ----------------------------------------------------------------------------------------


def concurrently(server, bodies):
    """Sends all bodies at once from threads; returns the answers in order."""
    barrier = threading.Barrier(len(bodies))

    def send(body):
        barrier.wait()
        return predict(server, body)

    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(send, bodies))


def test_batching_merges_requests(batched_server):
    texts = [["a"], ["hello world", "b"], ["ñandú"], ["xyz", "longer text here", "q", "r"]]
    bodies = [{"instances": t} for t in texts] + [{"inputs": {"text": t}} for t in texts]
    assert sum(len(t) for t in texts) * 2 == BATCH_ROWS  # one full batch runs at once
    before = http("GET", f"{batched_server.url}/kerasformer/stats")[1]["batching"]["batches"]
    answers = concurrently(batched_server, bodies)
    assert all(status == 200 for status, _ in answers), answers
    for (_, answer), body in zip(answers, bodies):
        rows = answer["predictions"] if "instances" in body else None
        sent = body.get("instances") or body["inputs"]["text"]
        got = [row["translation"] for row in rows] if rows else answer["outputs"]["translation"]
        assert got == [expected_translation(t) for t in sent]
    batches = http("GET", f"{batched_server.url}/kerasformer/stats")[1]["batching"]["batches"] - before
    assert batches < len(bodies), f"{len(bodies)} concurrent requests ran as {batches} batches"
