"""kerasformer-serve: TensorFlow Serving's model server (`tensorflow_model_server`), in Python.

The same command line, the same REST API answering as the real one does, byte for byte where its
source says what it writes, and its gRPC API (export/serving/grpc_server.py):

    kerasformer-serve --port=8500 --rest_api_port=8501 \\
        --model_name=kerasformer_en_es --model_base_path=/abs/saved_models/kerasformer_en_es
    kerasformer-serve --model_config_file=/abs/models.config --enable_batching \\
        --batching_parameters_file=export/serving/config/batching_parameters.txt

REST (`model_servers/http_server.cc`, `http_rest_api_handler.cc`, `http_rest_api_util.cc`):

- Every path matching `(?i)/v1/.*` goes to the API handler; its query string is part of the path
  it parses (evhttp's `uri_path()` is path and query). Others get libevent's HTML 404 page.
- `POST (?i)/v1/models/NAME[/versions/N|/labels/L]:(classify|regress|predict)` and
  `GET (?i)/v1/models[/NAME][/versions/N|/labels/L][/metadata]`; NAME and L are URL-decoded as
  `curl_easy_unescape` does ("%2F" is "/"; "+" stays "+"). Anything else under /v1, and every
  other method, is 400 "Malformed request: METHOD PATH"; a version beyond int64 is 400 "Failed to
  convert version: N to numeric." with an empty body (the real handler returns before writing
  one); `GET /v1/models` is 400 "Missing model name in request.". The verb and `metadata` are
  compared case-sensitively after the case-insensitive match: `:PREDICT` is malformed,
  `/METADATA` asks for the status.
- Answers are `Content-Type: application/json`. Errors are RapidJSON's PrettyWriter layout
  `{\\n    "error": "..."\\n}`; status and metadata are protobuf's JSON (one-space indents, fields
  in field-number order), metadata as `ToJsonString` pieces it together.
- Status (`get_model_status_impl.cc`) ignores a label and lists every version; metadata and
  predict resolve it (see export/serving/model_repository.py).
- Classify and regress read the body as `FillClassifyRegressRequestFromJson` does, then refuse
  kerasformer's signatures with `PreProcessClassification`'s and `PreProcessRegression`'s texts
  (none has one input named "inputs"); a signature that passes those checks gets 501
  UNIMPLEMENTED: this server runs no tf.Example classifiers.
- OPTIONS is the CORS preflight: 200 with an `Origin: http(s)://...` header, else 400 with an
  empty body; `--rest_api_enable_cors_support` adds `Access-Control-Allow-*` to every answer.
- A predict runs with `--rest_api_timeout_in_ms` (30000) as its session timeout: past it the
  answer is 504 "Timed out waiting for notification" (TensorFlow's DirectSession text); the graph
  run itself cannot be stopped from Python and finishes in the background. With batching the
  batcher applies the timeout as the real BatchingSession does.
- Metrics (`--monitoring_config_file` with `prometheus_config { enable: true }`): Prometheus text
  at its path (default /monitoring/prometheus/metrics), see export/serving/metrics.py.

This server's extensions, none of which the real server has:

- `--max_request_bytes` (1 MiB): a larger body gets 413 (the real server reads any size).
- `GET /kerasformer/stats` (requests, graph calls, batching, the models served) and
  `GET /kerasformer/openapi.json` (the OpenAPI 3.1 description, export/serving/openapi.py).
- `GET /kerasformer/attention/`: the attention page (export/serving/static/: one HTML file, one
  stylesheet, one script; no build step, nothing from another site). It is a client of the REST
  API like any other, so it works against the real server too (README, "See the attention").
- `--host` (127.0.0.1): the address to listen on; the real server listens on every interface.
- `--all_models_under=FOLDER`: serve every model folder under FOLDER (FOLDER/NAME/VERSION/),
  including ones that appear later.
- `--flag value` as well as `--flag=value` (the real server takes only the latter; booleans take
  `--flag`, `--flag=true`, `--flag=false` in both); the hyphenated `--enable-batching`,
  `--batching-parameters-file`, `--max-request-bytes`, `--log-level` are aliases, and
  `--poll-seconds` is `--file_system_poll_wait_seconds` in (fractional) seconds; `--log_level`.
- `--rest_api_port` defaults to 8501, as the Docker image passes it; the binary's own default
  is 0 (REST off).
"""

import asyncio
import base64
import dataclasses
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import uvicorn
from google.protobuf import descriptor
from tensorflow.core.protobuf import error_codes_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2

from kerasformer.export.serving import model_config, rapidjson
from kerasformer.export.serving.batching import Batcher, BatchingParameters
from kerasformer.export.serving.grpc_server import (
    check_classification_signature,
    check_regression_signature,
    find_signature,
    start_grpc_server,
)
from kerasformer.export.serving.metrics import DEFAULT_PATH as PROMETHEUS_PATH
from kerasformer.export.serving.metrics import Metrics
from kerasformer.export.serving.model_config import TUNING_FLAGS, UNIMPLEMENTED_FLAGS, FlagError, parse_flags, usage
from kerasformer.export.serving.model_repository import ModelRepository
from kerasformer.export.serving.openapi import openapi_description
from kerasformer.export.serving.predict import preprocess
from kerasformer.export.serving.rest_codec import (
    base64_unescape,
    format_error,
    format_predict_response,
    json_value_error,
    parse_json_object,
    parse_predict_request,
    signature_key,
    signature_lookup,
)
from kerasformer.export.serving.status import StatusError, failed_precondition, invalid_argument

log = logging.getLogger("kerasformer.serve")

# --- REST answers ----------------------------------------------------------------------------------

# kPredictionApiGegex and kModelStatusApiRegex (http_rest_api_util.cc); RE2's \d is ASCII.
PREDICTION_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.IGNORECASE)
STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.IGNORECASE)
DISPATCH_PATH = re.compile(r"/v1/.*", re.IGNORECASE)  # kHTTPRestApiHandlerPathRegex
ORIGIN = re.compile(r"https?://")
CORS_HEADERS = [("Access-Control-Allow-Origin", "*"), ("Access-Control-Allow-Methods", "POST, GET"),
                ("Access-Control-Allow-Headers", "Content-Type")]
JSON_HEADERS = [("Content-Type", "application/json")]
HTTP_REASONS = {400: "Bad Request", 404: "Not Found", 501: "Not Implemented"}


def curl_unescape(text):
    """`curl_easy_unescape`: every "%XX" (two hex digits) becomes that byte; nothing else
    changes ("+" stays). Returns the bytes as text (UTF-8; other bytes as surrogate escapes)."""
    raw = text.encode("utf-8", "surrogateescape")
    decoded = re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes([int(m[1], 16)]), raw)
    return decoded.decode("utf-8", "surrogateescape")


# protobuf's JSON writer (json/internal/writer.cc, WriteEscapedUtf8): these are written \\uXXXX.
_PROTOBUF_ESCAPED = re.compile(
    "[\x00-\x1f\x7f-\x9f<>\u00ad\u0600-\u0603\u06dd\u070f\u17b4\u17b5\u200b-\u200f\u2028-\u202e\u2060-\u2064"
    "\u206a-\u206f\ufeff\ufff9-\ufffb\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f]")
_PROTOBUF_SHORT = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _protobuf_string(text):
    def escape(match):
        char = match[0]
        if char in _PROTOBUF_SHORT:
            return _PROTOBUF_SHORT[char]
        code = ord(char)
        if code < 0x10000:
            return f"\\u{code:04x}"
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"

    return '"' + _PROTOBUF_ESCAPED.sub(escape, text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


_WRAPPERS = {f"google.protobuf.{kind}Value" for kind in
             ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")}


def _proto_value(message, preserve_names):
    """A message as protobuf's JSON printer writes it with always_print_fields_with_no_presence:
    fields in field-number order, set ones and every repeated or implicit-presence one; int64s
    as strings, enums by name, wrappers as their value. Returns nested dicts and lists of
    already-quoted strings' values, for `_write_json`."""
    if message.DESCRIPTOR.full_name in _WRAPPERS:
        return _proto_field(message.DESCRIPTOR.fields_by_name["value"], message.value, preserve_names)
    result = {}
    for field in sorted(message.DESCRIPTOR.fields, key=lambda f: f.number):
        repeated = field.is_repeated
        if not (repeated or not field.has_presence or message.HasField(field.name)):
            continue
        name = field.name if preserve_names else field.json_name
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            result[name] = {str(key).lower() if isinstance(key, bool) else str(key):
                            _proto_field(value_field, value[key], preserve_names) for key in sorted(value)}
        elif repeated:
            result[name] = [_proto_field(field, item, preserve_names) for item in value]
        else:
            result[name] = _proto_field(field, value, preserve_names)
    return result


def _simple_dtoa(value):
    """protobuf's `io::SimpleDtoa`: "%.15g", or "%.17g" when that does not read back."""
    text = "%.15g" % value
    return text if float(text) == value else "%.17g" % value


def _simple_ftoa(value):
    """protobuf's `io::SimpleFtoa`: "%.6g" (FLT_DIG), or "%.9g" when that does not read back as
    the same float."""
    text = "%.6g" % value
    return text if np.float32(float(text)) == np.float32(value) else "%.9g" % value


class _Raw(str):
    """A JSON token already written (a number or a quoted string)."""


def _proto_field(field, value, preserve_names):
    kind = field.type
    if kind == descriptor.FieldDescriptor.TYPE_MESSAGE:
        return _proto_value(value, preserve_names)
    if kind == descriptor.FieldDescriptor.TYPE_ENUM:
        known = field.enum_type.values_by_number.get(value)
        return _Raw(_protobuf_string(known.name)) if known is not None else _Raw(str(value))
    if kind in (descriptor.FieldDescriptor.TYPE_INT64, descriptor.FieldDescriptor.TYPE_UINT64,
                descriptor.FieldDescriptor.TYPE_SINT64, descriptor.FieldDescriptor.TYPE_FIXED64,
                descriptor.FieldDescriptor.TYPE_SFIXED64):
        return _Raw(f'"{value}"')
    if kind == descriptor.FieldDescriptor.TYPE_BOOL:
        return _Raw("true" if value else "false")
    if kind == descriptor.FieldDescriptor.TYPE_STRING:
        return _Raw(_protobuf_string(value))
    if kind == descriptor.FieldDescriptor.TYPE_BYTES:
        return _Raw(f'"{base64.b64encode(value).decode()}"')
    if kind in (descriptor.FieldDescriptor.TYPE_FLOAT, descriptor.FieldDescriptor.TYPE_DOUBLE):
        if value != value:
            return _Raw('"NaN"')
        if value in (float("inf"), float("-inf")):
            return _Raw('"Infinity"' if value > 0 else '"-Infinity"')
        return _Raw(_simple_ftoa(value) if kind == descriptor.FieldDescriptor.TYPE_FLOAT else _simple_dtoa(value))
    return _Raw(str(value))


def _write_json(value, indent=0):
    """Protobuf's JSON layout with add_whitespace: one space per level, `"key": value`,
    empty lists and objects as `[]` and `{}`."""
    if isinstance(value, _Raw):
        return str(value)
    pad, inner = "\n" + " " * indent, "\n" + " " * (indent + 1)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{inner}{_protobuf_string(key)}: {_write_json(item, indent + 1)}" for key, item in value.items()]
        return "{" + ",".join(items) + pad + "}"
    if not value:
        return "[]"
    return "[" + ",".join(inner + _write_json(item, indent + 1) for item in value) + pad + "]"


def message_to_json(message, preserve_names=False):
    """`MessageToJsonString` with add_whitespace and always_print_fields_with_no_presence (it
    ends with a newline)."""
    return _write_json(_proto_value(message, preserve_names)) + "\n"


def status_body(entries):
    """`ToJsonString(GetModelStatusResponse)`: `entries` as ModelRepository.status lists them."""
    response = get_model_status_pb2.GetModelStatusResponse()
    for entry in entries:
        status = response.model_version_status.add(
            version=int(entry["version"]), state=get_model_status_pb2.ModelVersionStatus.State.Value(entry["state"]))
        status.status.error_code = error_codes_pb2.Code.Value(entry["status"]["error_code"])
        status.status.error_message = entry["status"]["error_message"]
    return message_to_json(response).encode("utf-8")


def metadata_body(model):
    """`ToJsonString(GetModelMetadataResponse)` (http_rest_api_util.cc): model_spec {name, version}
    and the SignatureDefMap printed apart (proto field names), joined by hand as it joins them."""
    spec = model_pb2.ModelSpec(name=model.name)
    spec.version.value = model.version
    signature_def_map = get_model_metadata_pb2.SignatureDefMap()
    for name, signature in model.signature_defs.items():
        signature_def_map.signature_def[name].CopyFrom(signature)
    text = ("{\n" + '"model_spec":' + message_to_json(spec, preserve_names=True) + ",\n" + '"metadata": {'
            + '"signature_def": ' + message_to_json(signature_def_map, preserve_names=True) + "}\n" + "}\n")
    return text.encode("utf-8")


def evhttp_error_page(status):
    """libevent's `evhttp_send_error` page (reason NULL): status, headers, body."""
    reason = HTTP_REASONS[status]
    body = f"<HTML><HEAD>\n<TITLE>{status} {reason}</TITLE>\n</HEAD><BODY>\n<H1>{reason}</H1>\n</BODY></HTML>\n"
    return status, [("Content-Type", "text/html"), ("Connection", "close")], body.encode()


# --- the REST handler (HttpRestApiHandler::ProcessRequest) -------------------------------------------


@dataclasses.dataclass
class Handled:
    """What the handler did with one request: its status code name, HTTP status, headers,
    body, and the model name and API the metrics record it under."""

    code: str
    http_status: int
    headers: list
    body: bytes
    model_name: str = ""
    api: str = ""


@dataclasses.dataclass(frozen=True)
class SignatureRef:
    """What the batcher needs of a signature: its name."""

    name: str


class RestApi:
    """`HttpRestApiHandler`: parses the path, answers status, metadata, predict, classify and
    regress from the repository; `run(model, signature_name, inputs, timeout_in_ms)` runs a graph."""

    def __init__(self, repository, run, timeout_in_ms=30000):
        self.repository = repository
        self.run = run
        self.timeout_in_ms = timeout_in_ms

    async def process(self, method, path, body):
        """One request under /v1: returns `Handled`. `path` is the raw path and query."""
        model_name, api = "", ""
        try:
            if method == "POST":
                match = PREDICTION_PATH.fullmatch(path)
            elif method == "GET":
                match = STATUS_PATH.fullmatch(path)
            else:
                match = None
            if match is not None:
                model_name = curl_unescape(match[1]) if match[1] else ""
                version = None
                if match[2]:
                    version = int(match[2])
                    if version >= 2**63:  # absl::SimpleAtoi into an int64
                        raise _EmptyBody(invalid_argument(f"Failed to convert version: {match[2]} to numeric."))
                label = curl_unescape(match[3]) if match[3] else None
                if method == "POST":
                    api = match[4]
                    answer = await self._post(match[4], model_name, version, label, body)
                else:
                    answer = self._get(match[4], model_name, version, label)
                if answer is not None:
                    return Handled("OK", 200, list(JSON_HEADERS), answer, model_name, api)
            raise invalid_argument(f"Malformed request: {method} {path}")
        except _EmptyBody as error:
            status = error.status
            return Handled(status.code, status.http_status, list(JSON_HEADERS), b"", model_name, api)
        except StatusError as error:
            return Handled(error.code, error.http_status, list(JSON_HEADERS), format_error(error.message), model_name,
                           api)

    def _get(self, subresource, name, version, label):
        if not name:
            raise invalid_argument("Missing model name in request.")
        if subresource == "metadata":  # compared as written: "/METADATA" asks for the status
            return metadata_body(self.repository.get(name, version, label))
        return status_body(self.repository.status(name, version))

    async def _post(self, verb, name, version, label, body):
        """ProcessPredictRequest, ProcessClassifyRequest, ProcessRegressRequest; None for a verb
        the path matched in another case (":PREDICT"), which is malformed."""
        if verb == "predict":
            return await self._predict(name, version, label, body)
        if verb in ("classify", "regress"):
            return self._classify_or_regress(verb, name, version, label, body)
        return None

    async def _predict(self, name, version, label, body):
        """ProcessPredictRequest: the body is parsed before the model is looked up
        (`FillPredictRequestFromJson` asks `GetInfoMap` for the signature once it has parsed)."""
        found = {}

        def get_signature(signature_name):
            found["model"] = self.repository.get(name, version, label)
            return signature_lookup(found["model"].signatures, signature_name)

        request = parse_predict_request(body, get_signature)
        # RunPredict (predict_util.cc): the request's inputs against the signature, every output.
        feeds, _ = preprocess(request.signature, request.inputs)
        outputs = await self.run(found["model"], request.signature.name, feeds, self.timeout_in_ms)
        return format_predict_response(outputs, request.row_format)

    def _classify_or_regress(self, verb, name, version, label, body):
        """`FillClassifyRegressRequestFromJson`, then the signature checks of classifier.cc and
        regressor.cc (with --enable_signature_method_name_check off, the default)."""
        signature_name = _classify_regress_request(body)
        model = self.repository.get(name, version, label)
        signature = find_signature(model, signature_name)
        (check_classification_signature if verb == "classify" else check_regression_signature)(signature)
        raise StatusError("UNIMPLEMENTED", f"kerasformer-serve does not run {verb} signatures (model {model.name} "
                                           f"version {model.version}, signature {signature_key(signature_name)!r}); "
                                           f"use :predict")


class _EmptyBody(Exception):
    """An error the real handler returns before it writes a body (ParseModelInfo's)."""

    def __init__(self, status):
        super().__init__(status.message)
        self.status = status


def _check_feature_values(value):
    """json_tensor.cc `MakeExampleFromJsonObject` and `AddValueToFeature`: each feature's values
    are all of one kind (int64 from integers and booleans, float from other numbers, bytes from
    strings and {"b64": ...}), never null, nested lists or other objects."""
    if not isinstance(value, rapidjson.Object):
        raise invalid_argument(f"Example must be JSON object but got JSON {rapidjson.type_name(value)}")
    for feature_name, content in value:
        feature_name = rapidjson.utf8(feature_name).decode("utf-8", "surrogateescape")
        kind = None
        for item in content if isinstance(content, list) else [content]:
            if item is None or isinstance(item, list) or (
                    isinstance(item, rapidjson.Object) and not _is_base64_object(item)):
                raise invalid_argument(f"Feature: {feature_name} has element with unexpected JSON type: "
                                       f"{rapidjson.type_name(item)}")
            if isinstance(item, bool) or isinstance(item, int):
                item_kind = "int64"
            elif isinstance(item, float):
                item_kind = "float"
            else:
                item_kind = "bytes"
            if kind is not None and item_kind != kind:
                raise invalid_argument(f"Unexpected element type in feature: {feature_name} expecting type: {kind}")
            if isinstance(item, rapidjson.Object) and base64_unescape(rapidjson.utf8(item[0][1])) is None:
                raise invalid_argument("Unable to base64 decode")
            if item_kind == "int64" and not isinstance(item, bool) and item >= 2**63:
                raise invalid_argument(f"Feature: {feature_name} has uint64_t element. Only int64_t is supported.")
            kind = item_kind


def _is_base64_object(value):
    """IsValBase64Object: an object of exactly one member, "b64", holding a string."""
    return len(value) == 1 and value[0][0] == "b64" and isinstance(value[0][1], (str, bytes))


def _classify_regress_request(body):
    """The signature name of a classify or regress body, checked as
    `FillClassifyRegressRequestFromJson` (util/json_tensor.cc) checks it, texts included (its
    missing-examples text says "classify" for regress too)."""
    document = parse_json_object(body)
    signature_name = ""
    if document.has("signature_name"):
        signature_name = document.find("signature_name")
        if not isinstance(signature_name, (str, bytes)):
            raise json_value_error(document, "not formatted correctly. 'signature_name' key must be a string value.")
        signature_name = rapidjson.utf8(signature_name).decode("utf-8", "surrogateescape")
    if document.has("context"):
        _check_feature_values(document.find("context"))
    if not document.has("examples"):
        raise json_value_error(document, "When method is classify, key 'examples' is expected and was not found")
    examples = document.find("examples")
    if not isinstance(examples, list):
        raise json_value_error(document, "Expecting 'examples' value to be an list/array")
    if not examples:
        raise json_value_error(document, "'examples' value is an empty array")
    for example in examples:
        _check_feature_values(example)
    return signature_name


# --- the HTTP server (model_servers/http_server.cc) ------------------------------------------------


class ServingApp:
    """The REST port as an ASGI application (this object): routes as evhttp and
    `RestApiRequestDispatcher` route, records the metrics, adds CORS headers; `run` runs graphs
    for REST and, through `blocking_predict`, for gRPC."""

    def __init__(self, repository, max_request_bytes=1 << 20, batcher=None, timeout_in_ms=30000,
                 enable_cors_support=False, metrics=None, prometheus_path=None, num_threads=None):
        self.repository = repository
        self.max_request_bytes = max_request_bytes
        self.batcher = batcher
        self.enable_cors_support = enable_cors_support
        self.metrics = metrics if metrics is not None else Metrics()
        self.prometheus_path = prometheus_path
        self.predict_requests = 0
        # --rest_api_num_threads: the threads graphs run on for REST requests without batching.
        threads = num_threads if num_threads and num_threads > 0 else 4 * (os.cpu_count() or 1)
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="predict")
        self.rest = RestApi(repository, self.run, timeout_in_ms)
        self.loop = None

    async def run(self, model, signature_name, inputs, timeout_in_ms=0):
        """Runs one signature (through the batcher when batching is on); records the runtime
        latency of a successful run (predict_util.cc RecordRuntimeLatency, api "Predict")."""
        start = time.perf_counter()
        self.predict_requests += 1
        if self.batcher is not None:
            outputs = await self.batcher.run(model, SignatureRef(signature_name), inputs, timeout_in_ms)
        else:
            future = asyncio.get_running_loop().run_in_executor(self._executor, model.run, signature_name, inputs)
            if timeout_in_ms > 0:
                try:
                    outputs = await asyncio.wait_for(asyncio.shield(future), timeout_in_ms / 1000)
                except TimeoutError:
                    future.add_done_callback(lambda f: f.exception())  # the late run's error is not logged
                    raise StatusError("DEADLINE_EXCEEDED", "Timed out waiting for notification") from None
            else:
                outputs = await future
        self.metrics.record_runtime(model.name, "Predict", "TF1", time.perf_counter() - start)
        return outputs

    def blocking_predict(self, model, signature_name, inputs):
        """`run` for the gRPC server's threads: blocks until the app's event loop has run it."""
        if self.loop is None:
            raise StatusError("UNAVAILABLE", "the server is starting")
        return asyncio.run_coroutine_threadsafe(self.run(model, signature_name, inputs), self.loop).result()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.loop = asyncio.get_running_loop()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        self.loop = self.loop or asyncio.get_running_loop()
        status, headers, body = await self.answer(scope, receive)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]})
        await send({"type": "http.response.body", "body": body})

    async def answer(self, scope, receive):
        """(HTTP status, headers, body) of one request."""
        method = scope["method"]
        raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
        path = raw_path.decode("utf-8", "surrogateescape")
        query = scope.get("query_string", b"")
        # evhttp's uri_path(): the path and, after "?", the query, as sent.
        uri_path = path + ("?" + query.decode("utf-8", "surrogateescape") if query else "")
        if method not in ("GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"):
            return evhttp_error_page(501)  # evhttp_set_allowed_methods (evhttp_server.cc)
        if self.prometheus_path is not None and path == self.prometheus_path:
            return self.prometheus(uri_path)
        if path in ("/kerasformer/stats", "/kerasformer/openapi.json"):
            return self.extension(method, path)
        if path == PAGE_PATH.rstrip("/") or path.startswith(PAGE_PATH):
            return static_file(method, path)
        if not DISPATCH_PATH.fullmatch(uri_path):
            return evhttp_error_page(404)
        return await self.dispatch(method, uri_path, scope, receive)

    async def dispatch(self, method, uri_path, scope, receive):
        """`RestApiRequestDispatcher::ProcessRequest`."""
        start = time.perf_counter()
        try:
            body = await self.read_body(scope, receive)
        except StatusError as error:  # this server's body limit
            handled = Handled(error.code, error.http_status, list(JSON_HEADERS), format_error(error.message))
        else:
            if method == "OPTIONS":
                origin = _header(scope, b"origin")
                if ORIGIN.search(origin):
                    handled = Handled("OK", 200, [], b"")
                else:
                    error = failed_precondition("Origin header is missing in CORS preflight")
                    handled = Handled(error.code, error.http_status, [], b"")
            else:
                try:
                    handled = await self.rest.process(method, uri_path, body)
                except Exception as error:  # noqa: BLE001  (a bug answers 500; the server stays up)
                    log.exception("unexpected error answering %s %s", method, uri_path)
                    handled = Handled("INTERNAL", 500, list(JSON_HEADERS), format_error(f"{type(error).__name__}: {error}"))
        headers = handled.headers + (CORS_HEADERS if self.enable_cors_support else [])
        self.metrics.record(handled.model_name, handled.api, "REST", handled.code, time.perf_counter() - start)
        return handled.http_status, headers, handled.body

    async def read_body(self, scope, receive):
        """The whole body (gunzipped when Content-Encoding names gzip, as evhttp's
        auto_uncompress_input; an undecodable one is empty); RESOURCE_EXHAUSTED (413) past
        max_request_bytes, before or after decompression (read in chunks, never all buffered)."""
        declared = _header(scope, b"content-length")
        chunks, size = [], 0
        too_large = declared.isdigit() and int(declared) > self.max_request_bytes
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            size += len(chunk)
            if size > self.max_request_bytes:
                too_large = True
            if too_large:
                chunks = []  # keep reading (and dropping) so the client gets to read the answer
                if size > 64 * self.max_request_bytes:
                    break
            else:
                chunks.append(chunk)
        if too_large:
            raise StatusError("RESOURCE_EXHAUSTED", f"request body of {declared or size} bytes exceeds "
                                                     f"--max_request_bytes={self.max_request_bytes}", http_status=413)
        body = b"".join(chunks)
        if "gzip" in _header(scope, b"content-encoding"):
            decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                body = decompressor.decompress(body, self.max_request_bytes + 1)
            except zlib.error:
                return b""
            if len(body) > self.max_request_bytes:
                raise StatusError("RESOURCE_EXHAUSTED", f"gunzipped request body exceeds --max_request_bytes="
                                                         f"{self.max_request_bytes}", http_status=413)
        return body

    def prometheus(self, uri_path):
        """`ProcessPrometheusRequest`: the page, or 400 when a query follows the path."""
        headers = [("Content-Type", "text/plain")]
        if uri_path != self.prometheus_path:
            return 400, headers, f"Unexpected path: {uri_path}. Should be {self.prometheus_path}".encode()
        return 200, headers, self.metrics.page().encode()

    def extension(self, method, path):
        """This server's own paths (GET only)."""
        if method != "GET":
            return 405, JSON_HEADERS + [("Allow", "GET")], format_error(f"Method Not Allowed: {method} {path}")
        if path == "/kerasformer/openapi.json":
            return 200, JSON_HEADERS, json.dumps(openapi_description()).encode()
        loaded = self.repository.loaded_models()
        stats = {
            "predict_requests": self.predict_requests,
            "graph_calls": sum(model.graph_calls for model in loaded.values()),
            "batching": None if self.batcher is None else {
                "batched_requests": self.batcher.requests,
                "batches": self.batcher.batches,
                "parameters": dataclasses.asdict(self.batcher.parameters),
            },
            "models": {name: model.version for name, model in loaded.items()},
        }
        return 200, JSON_HEADERS, json.dumps(stats).encode()


PAGE_PATH = "/kerasformer/attention/"
STATIC_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".js": "text/javascript; charset=utf-8"}
# name -> Content-Type of every file the page may load (listed once: the package's files do not change).
STATIC_FILES = {name: STATIC_TYPES[os.path.splitext(name)[1]] for name in os.listdir(STATIC_FOLDER)
                if os.path.splitext(name)[1] in STATIC_TYPES}
# The page loads only its own files; it may talk to any REST address the user types.
PAGE_HEADERS = [("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-cache"),
                ("Content-Security-Policy", "default-src 'self'; connect-src *; img-src 'self' data:; "
                                            "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'")]


def static_file(method, path):
    """The attention page's files: `PAGE_PATH` is attention.html, `PAGE_PATH + NAME` one of the
    files in static/ (no other path: NAME is looked up among them, never joined to a path)."""
    if method not in ("GET", "HEAD"):
        return 405, JSON_HEADERS + [("Allow", "GET")], format_error(f"Method Not Allowed: {method} {path}")
    if path == PAGE_PATH.rstrip("/"):
        return 308, [("Location", PAGE_PATH)], b""
    name = path[len(PAGE_PATH):] or "attention.html"
    if name not in STATIC_FILES:
        return evhttp_error_page(404)
    with open(os.path.join(STATIC_FOLDER, name), "rb") as file:
        body = file.read()
    return 200, [("Content-Type", STATIC_FILES[name]), *PAGE_HEADERS], b"" if method == "HEAD" else body


def _header(scope, name):
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


# --- start-up (model_servers/server.cc, Server::BuildAndStart) -----------------------------------------


def _check_unimplemented(options):
    for flag in UNIMPLEMENTED_FLAGS:
        if options[flag.name] != flag.default and not (flag.name == "saved_model_tags" and options[flag.name] == ""):
            raise StatusError("UNIMPLEMENTED", f"kerasformer-serve does not implement --{flag.name} "
                                               f"(given {options[flag.name]!r})")
    for flag in TUNING_FLAGS:
        if options[flag.name] != flag.default:
            log.info("--%s=%s is taken and has no effect here", flag.name, options[flag.name])


def build_repository(options, load_error=None):
    """The model config (`BuildSingleModelConfig`, ParseProtoTextFile or --all_models_under) and
    its repository; raises StatusError as `BuildAndStart` and `ServerCore::Create` fail."""
    poll = options["file_system_poll_wait_seconds"]
    common = dict(poll_seconds=poll,
                  allow_version_labels_for_unavailable_models=options["allow_version_labels_for_unavailable_models"],
                  load_error=load_error, enable_model_warmup=options["enable_model_warmup"])
    if options["all_models_under"]:
        if options["model_config_file"] or options["model_base_path"]:
            raise invalid_argument("--all_models_under cannot be combined with --model_config_file or "
                                   "--model_base_path")
        return ModelRepository(options["all_models_under"], **common)
    if options["model_config_file"]:
        config = model_config.parse_proto_text_file(options["model_config_file"], model_config.ModelServerConfig)
    else:
        config = model_config.single_model_config(options["model_name"], options["model_base_path"])
    return ModelRepository(config=config, **common)


def wait_until_models_available(repository):
    """`ServerCore::WaitUntilModelsAvailable`: polls until every model has a version available;
    raises UNKNOWN "N model(s) did not become available: ..." when a model's versions failed."""
    logged = set()
    while True:
        repository.poll()
        failed = repository.unavailable_models()
        if failed:
            details = "".join(f"{{{{name: {name} version: {version}}} due to error: {code}: {message}}}, "
                              for name, version, code, message in failed)
            raise StatusError("UNKNOWN", f"{len(failed)} model(s) did not become available: {{{details}}}")
        awaiting = repository.awaiting_models()
        if not awaiting:
            return
        for name in set(awaiting) - logged:
            log.info("waiting for a version of model %s to load", name)
        logged |= set(awaiting)
        time.sleep(max(repository.poll_seconds, 0.2) if repository.poll_seconds > 0 else 1.0)


def poll_model_config_file(repository, path, seconds, stop):
    """`Server::PollFilesystemAndReloadConfig` every `seconds` until `stop` is set."""
    while not stop.wait(seconds):
        try:
            config = model_config.parse_proto_text_file(path, model_config.ModelServerConfig)
        except StatusError as error:
            log.error("Failed to read ModelServerConfig file: %s", error.message)
            continue
        try:
            repository.reload_config(config)
            repository.poll()
        except StatusError as error:
            log.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s", error.message)


def _fail(status):
    """main.cc: "Failed to start server. Error: CODE: message" on stdout, exit status 255."""
    print(f"Failed to start server. Error: {status.code}: {status.message}", flush=True)
    sys.exit(255)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        options, unknown = parse_flags(argv)
    except FlagError as error:
        print(error, file=sys.stderr)
        print(usage(), end="", flush=True)
        sys.exit(255)
    if unknown and unknown[0] == "--help":
        print(usage(), end="", flush=True)
        sys.exit(255)
    if options["version"]:
        import tensorflow as tf

        print(f"kerasformer-serve (TensorFlow Serving's REST and gRPC APIs)\nTensorFlow Library: {tf.__version__}")
        return
    if unknown:
        print(f"unknown argument: {unknown[0]}\n{usage()}", end="", flush=True)
    level = str(options["log_level"]).upper()
    logging.basicConfig(level=level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        server = build_and_start(options)
    except StatusError as status:
        if getattr(status, "detail", None):
            log.error("%s", status.detail)
        _fail(status)
    try:
        asyncio.run(server.serve())
    finally:
        server.stop()


class Server:
    """What `build_and_start` started: the repository (polling), batcher, gRPC server and the
    REST app; `serve()` runs the REST port until SIGINT or SIGTERM."""

    def __init__(self, options, repository, batcher, app, rest_port):
        self.options, self.repository, self.batcher, self.app = options, repository, batcher, app
        self.rest_port = rest_port
        self.grpc_server = None
        self._stop_config_polling = None

    async def serve(self):
        self.app.loop = asyncio.get_running_loop()
        self.grpc_server = self._start_grpc()
        if self.rest_port is None:
            stop = asyncio.Event()
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.app.loop.add_signal_handler(signum, stop.set)
            await stop.wait()
            return
        config = uvicorn.Config(self.app, host=self.options["host"], port=self.rest_port, lifespan="off",
                                log_level=str(self.options["log_level"]).lower(), access_log=False,
                                server_header=False)
        log.info("Exporting HTTP/REST API at:%s:%d ...", self.options["host"], self.rest_port)
        await uvicorn.Server(config).serve()

    def _start_grpc(self):
        """The gRPC port (`PredictionService`, `ModelService`), sharing the REST app's batcher."""
        try:
            server = start_grpc_server(self.repository, self.app.blocking_predict, self.options["port"],
                                       host=self.options["host"], metrics=self.app.metrics,
                                       max_workers=self.options["grpc_max_threads"])
        except RuntimeError as error:
            _fail(invalid_argument(f"Failed to BuildAndStart gRPC server: {error}"))
        log.info("Running gRPC ModelServer at %s:%d ...", self.options["host"], self.options["port"])
        return server

    def stop(self):
        if self.grpc_server is not None:
            self.grpc_server.stop(grace=None)
        if self._stop_config_polling is not None:
            self._stop_config_polling.set()
        self.repository.stop()
        if self.batcher is not None:
            self.batcher.shutdown()


def build_and_start(options):
    """`Server::BuildAndStart` up to the ports: checks the options, builds the batcher and the
    repository, loads every model (start-up waits for them). Raises StatusError."""
    if options["port"] == 0:
        raise invalid_argument("At least one of server_options.grpc_port or server_options.grpc_socket_path must "
                               "be set.")
    _check_unimplemented(options)
    if not options["model_base_path"] and not options["model_config_file"] and not options["all_models_under"]:
        raise invalid_argument("Both server_options.model_base_path and server_options.model_config_file are empty!")
    batcher = None
    if options["enable_batching"]:
        parameters = None
        if options["batching_parameters_file"]:
            parameters = model_config.parse_proto_text_file(options["batching_parameters_file"], BatchingParameters)
        batcher = Batcher(parameters)
        log.info("batching enabled: %s", batcher.parameters)
    elif options["batching_parameters_file"]:
        raise invalid_argument("server_options.batching_parameters_file is set without setting "
                               "server_options.enable_batching to true.")
    repository = build_repository(options, load_error=batcher.model_load_error if batcher is not None else None)
    try:
        wait_until_models_available(repository)
        repository.start_polling()
        monitoring = model_config.MonitoringConfig()
        rest_port = options["rest_api_port"] or None
        if rest_port is not None and rest_port == options["port"]:
            log.error("server_options.http_port cannot be same as grpc_port. Please use a different port for "
                      "HTTP/REST API. Skipped exporting HTTP/REST API.")
            rest_port = None
        if rest_port is not None and options["monitoring_config_file"]:
            monitoring = model_config.parse_proto_text_file(options["monitoring_config_file"],
                                                            model_config.MonitoringConfig)
    except BaseException:
        repository.stop()
        if batcher is not None:
            batcher.shutdown()
        raise
    prometheus_path = None
    if monitoring.prometheus_config.enable:
        prometheus_path = monitoring.prometheus_config.path or PROMETHEUS_PATH
    app = ServingApp(repository, options["max_request_bytes"], batcher, options["rest_api_timeout_in_ms"],
                     options["rest_api_enable_cors_support"], prometheus_path=prometheus_path,
                     num_threads=options["rest_api_num_threads"])
    server = Server(options, repository, batcher, app, rest_port)
    seconds = options["model_config_file_poll_wait_seconds"]
    if seconds > 0 and options["model_config_file"]:
        server._stop_config_polling = threading.Event()
        threading.Thread(target=poll_model_config_file, name="model-config-poll", daemon=True,
                         args=(repository, options["model_config_file"], seconds, server._stop_config_polling)).start()
    return server


if __name__ == "__main__":
    main()
