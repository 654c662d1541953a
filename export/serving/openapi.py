"""The OpenAPI 3.1 description of kerasformer-serve's REST API.

kerasformer-serve (`export/serving/server.py`) answers TensorFlow Serving's REST API
(https://www.tensorflow.org/tfx/serving/api_rest) as the real model server does;
`openapi_description()` describes it, with the rules of the real server's source:

- Paths (`model_servers/http_rest_api_util.cc`, kPredictionApiGegex and kModelStatusApiRegex,
  matched case-insensitively): `/v1/models/{name}` with an optional `/versions/{version}` (digits)
  or `/labels/{label}`, then `/metadata` (GET), `:predict`, `:classify` or `:regress` (POST), or
  nothing (GET: status). Every other path under `/v1/` and every other method is 400
  `Malformed request: METHOD PATH` (`http_rest_api_handler.cc`); `GET /v1/models` alone is 400
  "Missing model name in request.".
- Predict bodies (`util/json_tensor.cc`): `instances` (row format; each instance an object whose
  keys equal the signature's inputs, or a bare value when it has one input) or `inputs`
  (columnar; every input present, extra keys ignored, a bare value for a one-input signature),
  never both. REST takes no SignatureDef defaults, and every input has a batch dimension.
- Errors: `{"error": message}` with the HTTP status of the error's code (`http_server.cc`).

What the real server does not have is marked `x-kerasformer-extension: true`: the request body
limit (413) and the two paths under `/kerasformer/`. The Prometheus metrics the monitoring config
enables (`/monitoring/prometheus/metrics` by default) are text, not JSON, and are not described
here. The server answers this description at `GET /kerasformer/openapi.json`, the tests fuzz the
server against it (tests/test_rest_fuzz.py), and a copy is kept in `export/serving/openapi.json`
for readers and other tools:

    python -m kerasformer.export.serving.openapi            # print it
    python -m kerasformer.export.serving.openapi --write    # rewrite export/serving/openapi.json

TensorFlow Serving's custom methods put a colon after the last path parameter
(`/v1/models/{name}:predict`). OpenAPI allows a template expression followed by literal text in
one segment, and a client substitutes `{name}` percent-encoded (a `:` or `/` inside a name
becomes `%3A` or `%2F`), so such paths need nothing special.

No `servers` entry: OpenAPI then takes `/` on the host that served the description.
"""

import argparse
import json
import os

JSON_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openapi.json")
EXTENSION = {"x-kerasformer-extension": True}  # what the real model server does not have


def _ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema, description):
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description):
    return _json(_ref("Error"), description)


NOT_FOUND = _error("No such model, or no such version of it, is served: \"Servable not found for request: "
                   "Latest(NAME)\" / \"Specific(NAME, VERSION)\" (model_servers/server_core.cc)")
MALFORMED = ("the path does not parse (\"Malformed request: METHOD PATH\"), a version too large for int64 "
             "(\"Failed to convert version: V to numeric.\"), or a label no version has (\"Unrecognized servable "
             "version label: L\")")

MODEL_NAME_PARAMETER = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "The model, as the model config names it; a name not served answers 404. The path's pattern "
                   "is `[^/:]+` before percent-decoding, so a client that encodes `/` and `:` may send any name.",
    "schema": {"type": "string", "pattern": "^[^/:]+$"},
}

VERSION_PARAMETER = {
    "name": "version",
    "in": "path",
    "required": True,
    "description": "A version number (ASCII digits). Predict and metadata answer for available versions only; "
                   "status also lists versions loading, unloaded or refused.",
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}

LABEL_PARAMETER = {
    "name": "label",
    "in": "path",
    "required": True,
    "description": "A version label of the model config's `version_labels` (`stable`, `canary`, ...); any other "
                   "answers 400 \"Unrecognized servable version label: L\".",
    "schema": {"type": "string", "pattern": "^[^/:]+$"},
}


def _model_operations(which):
    """The operations on `/v1/models/{name}`, `.../versions/{version}` or `.../labels/{label}`.

    Long on purpose: a declaration (the OpenAPI operations of one path), not logic."""
    parameters = [MODEL_NAME_PARAMETER] + {"latest": [], "version": [VERSION_PARAMETER],
                                           "label": [LABEL_PARAMETER]}[which]
    whose = {"latest": "the newest available version", "version": "the given version",
             "label": "the version the label names"}[which]
    suffix = {"latest": "", "version": "Version", "label": "Label"}[which]
    def bad(description):
        if which != "version":
            return _error(description)
        # ParseModelInfo's errors return before the handler writes the error (http_rest_api_handler.cc):
        # an empty body, which no JSON schema describes.
        return {"description": f"{description}. `{{\"error\": message}}`, but an empty body when the version does "
                               "not fit in int64", "content": {"application/json": {}}}

    bad_request = bad(f"A bad request: {MALFORMED}")
    other_method = bad("The signature is not of that kind, or the body is not a request of that kind "
                       "(`util/json_tensor.cc`, `servables/tensorflow/classifier.cc`, `regressor.cc`)")
    operations = {
        "status": {
            "get": {
                "operationId": f"getModelStatus{suffix}",
                "summary": f"Version status of a model ({whose}; every version tried without a version or label)",
                "parameters": parameters,
                "responses": {
                    "200": _json(_ref("ModelStatus"), "Every version tried, newest first, or the one asked for"),
                    "400": bad_request,
                    "404": NOT_FOUND,
                },
            }
        },
        "metadata": {
            "get": {
                "operationId": f"getModelMetadata{suffix}",
                "summary": f"Signature definitions of {whose}",
                "parameters": parameters,
                "responses": {"200": _json(_ref("ModelMetadata"), "The SignatureDefMap"), "400": bad_request,
                              "404": NOT_FOUND},
            }
        },
        "predict": {
            "post": {
                "operationId": f"predict{suffix}",
                "summary": f"Run a signature of {whose}",
                "parameters": parameters,
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("PredictRequest")}}},
                "responses": {
                    "200": _json(_ref("PredictResponse"),
                                 "`predictions` for a row-format request, `outputs` for a columnar one"),
                    "400": bad("A bad request: not JSON, an unknown signature, instance keys other than the "
                               "signature's inputs, a missing input, a value of the wrong type or shape, ragged "
                               f"rows; {MALFORMED}; or INVALID_ARGUMENT, FAILED_PRECONDITION or OUT_OF_RANGE "
                               "raised inside the graph or by batching (batching/batching_util.h, "
                               "batching_session.cc)"),
                    "404": NOT_FOUND,
                    "413": {**_error("The request body is larger than kerasformer-serve's body limit"), **EXTENSION},
                    "429": _error("RESOURCE_EXHAUSTED: with batching, the request waited in the batching queue past "
                                  "its timeout (`--rest_api_timeout_in_ms`)"),
                    "500": _error("INTERNAL, UNKNOWN or DATA_LOSS raised inside the graph. Rarer TensorFlow error "
                                  "codes get the real server's status for them (model_servers/http_server.cc)"),
                    "503": _error("UNAVAILABLE: with batching, the batching queue is full (`max_enqueued_batches`)"),
                },
            }
        },
    }
    for method in ("classify", "regress"):
        operations[method] = {
            "post": {
                "operationId": f"{method}{suffix}",
                "summary": f"The {method} API on {whose}: it needs a {method} signature (tf.Example inputs), which "
                           f"kerasformer exports do not have",
                "parameters": parameters,
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {"400": other_method, "404": NOT_FOUND,
                              "501": _error(f"kerasformer-serve does not run {method} signatures")},
            }
        }
    return operations


SCHEMAS = {
    "Error": {
        "type": "object",
        "description": "Every error answer, as TensorFlow Serving writes it.",
        "required": ["error"],
        "properties": {"error": {"type": "string", "minLength": 1}},
        "additionalProperties": False,
    },
    "ModelStatus": {
        "type": "object",
        "required": ["model_version_status"],
        "properties": {
            "model_version_status": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["version", "state", "status"],
                    "properties": {
                        "version": {"type": "string", "pattern": "^[0-9]+$"},
                        "state": {"enum": ["UNKNOWN", "START", "LOADING", "AVAILABLE", "UNLOADING", "END"]},
                        "status": {
                            "type": "object",
                            "required": ["error_code", "error_message"],
                            "properties": {"error_code": {"type": "string"}, "error_message": {"type": "string"}},
                        },
                    },
                },
            }
        },
        "additionalProperties": False,
    },
    "ModelMetadata": {
        "type": "object",
        "required": ["model_spec", "metadata"],
        "properties": {
            "model_spec": {
                "type": "object",
                "required": ["name", "signature_name", "version"],
                "properties": {
                    "name": {"type": "string"},
                    "signature_name": {"type": "string"},
                    "version": {"type": "string", "pattern": "^[0-9]+$"},
                },
            },
            "metadata": {
                "type": "object",
                "required": ["signature_def"],
                "properties": {
                    "signature_def": {
                        "type": "object",
                        "required": ["signature_def"],
                        "properties": {
                            "signature_def": {
                                "type": "object",
                                "description": "Signature name -> SignatureDef as JSON (proto field names)",
                                "additionalProperties": _ref("SignatureDef"),
                            }
                        },
                    }
                },
            },
        },
        "additionalProperties": False,
    },
    "SignatureDef": {
        "type": "object",
        "required": ["inputs", "outputs", "method_name"],
        "properties": {
            "inputs": {"type": "object", "additionalProperties": _ref("TensorInfo")},
            "outputs": {"type": "object", "additionalProperties": _ref("TensorInfo")},
            "method_name": {"type": "string"},
            "defaults": {"type": "object", "description": "Input name -> TensorProto of its default value"},
        },
    },
    "TensorInfo": {
        "type": "object",
        "required": ["dtype"],
        "properties": {
            "name": {"type": "string"},
            "dtype": {"type": "string", "pattern": "^DT_[A-Z0-9_]+$"},
            "tensor_shape": {
                "type": "object",
                "properties": {
                    "dim": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"size": {"type": "string"}, "name": {"type": "string"}},
                        },
                    },
                    "unknown_rank": {"type": "boolean"},
                },
            },
        },
    },
    "PredictRequest": {
        "description": "TensorFlow Serving's row format (`instances`: one JSON value per example: an object whose keys "
                       "are exactly the signature's inputs, or a bare value when the signature has one input) or "
                       "columnar format (`inputs`: an object with every input, extra keys ignored, or a bare tensor "
                       "for a one-input signature); never both (util/json_tensor.cc). Every input is required: "
                       "REST takes no SignatureDef defaults. Every input has a batch dimension: row format stacks "
                       "the instances' values along it. Strings are JSON strings; binary strings are "
                       "`{\"b64\": \"...\"}`. Other top-level keys are ignored.",
        "oneOf": [
            {
                "title": "row format",
                "type": "object",
                "required": ["instances"],
                "not": {"required": ["inputs"]},
                "properties": {"signature_name": _ref("SignatureName"), "instances": {"type": "array", "minItems": 1}},
            },
            {
                "title": "columnar format",
                "type": "object",
                "required": ["inputs"],
                "not": {"required": ["instances"]},
                "properties": {"signature_name": _ref("SignatureName"), "inputs": {}},
            },
        ],
    },
    "SignatureName": {"type": "string", "description": "Default (also for \"\"): serving_default",
                      "default": "serving_default"},
    "PredictResponse": {
        "oneOf": [
            {
                "title": "row format",
                "type": "object",
                "required": ["predictions"],
                "properties": {
                    "predictions": {
                        "type": "array",
                        "description": "One object of named outputs per instance (a bare value when the signature "
                                       "has one output)",
                    }
                },
                "additionalProperties": False,
            },
            {
                "title": "columnar format",
                "type": "object",
                "required": ["outputs"],
                "properties": {
                    "outputs": {"description": "Output name -> tensor as nested lists (a bare tensor for one output)"}
                },
                "additionalProperties": False,
            },
        ],
    },
    "Stats": {
        "type": "object",
        "required": ["predict_requests", "graph_calls", "batching", "models"],
        "properties": {
            "predict_requests": {"type": "integer", "minimum": 0},
            "graph_calls": {"type": "integer", "minimum": 0},
            "batching": {
                "description": "null without --enable-batching",
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["batched_requests", "batches", "parameters"],
                        "properties": {
                            "batched_requests": {"type": "integer", "minimum": 0},
                            "batches": {"type": "integer", "minimum": 0},
                            "parameters": {"type": "object"},
                        },
                    },
                ],
            },
            "models": {
                "type": "object",
                "description": "Model name -> version serving",
                "additionalProperties": {"type": "integer", "minimum": 1},
            },
        },
        "additionalProperties": False,
    },
}


def openapi_description():
    """The OpenAPI 3.1 document (a dict, JSON-ready) of every path kerasformer-serve answers."""
    operations = {which: _model_operations(which) for which in ("latest", "version", "label")}
    paths = {
        "/v1/models": {
            "get": {
                "operationId": "getModelStatusWithoutName",
                "summary": "No model named: the real server answers every such request with this error",
                "responses": {"400": _error("\"Missing model name in request.\"")},
            }
        },
    }
    for which, prefix in (("latest", "/v1/models/{name}"), ("version", "/v1/models/{name}/versions/{version}"),
                          ("label", "/v1/models/{name}/labels/{label}")):
        paths[prefix] = operations[which]["status"]
        paths[f"{prefix}/metadata"] = operations[which]["metadata"]
        for method in ("predict", "classify", "regress"):
            paths[f"{prefix}:{method}"] = operations[which][method]
    paths["/kerasformer/stats"] = {
        **EXTENSION,
        "get": {
            "operationId": "getStats",
            "summary": "Request and graph-call counts (how much batching merged)",
            "responses": {"200": _json(_ref("Stats"), "Counts since the server started")},
        },
    }
    paths["/kerasformer/openapi.json"] = {
        **EXTENSION,
        "get": {
            "operationId": "getOpenAPI",
            "summary": "This description",
            "responses": {"200": _json({"type": "object", "required": ["openapi", "paths"]}, "The OpenAPI document")},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kerasformer-serve",
            "version": "2",
            "description": "TensorFlow Serving's REST API as kerasformer-serve answers it, with the real model "
                           "server's rules, statuses and error texts (https://www.tensorflow.org/tfx/serving/api_rest; "
                           "tensorflow_serving/model_servers/http_rest_api_handler.cc, util/json_tensor.cc). Every "
                           "error is {\"error\": \"message\"}; a path under /v1/ or a method that does not parse "
                           "is 400 \"Malformed request: METHOD PATH\". What the real server does not have is marked "
                           "x-kerasformer-extension: the request body limit (413) and the /kerasformer/ paths. "
                           "Prometheus metrics (text, not described here) are at the path the monitoring config "
                           "names, /monitoring/prometheus/metrics by default.",
        },
        "paths": paths,
        "components": {"schemas": SCHEMAS},
    }


def to_json(description):
    """The text of export/serving/openapi.json: indented, keys in the order written here, one final newline."""
    return json.dumps(description, indent=2, ensure_ascii=False) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m kerasformer.export.serving.openapi", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="write export/serving/openapi.json instead of printing")
    args = parser.parse_args(argv)
    text = to_json(openapi_description())
    if args.write:
        with open(JSON_FILE, "w", encoding="utf-8") as file:
            file.write(text)
        print(f"wrote {JSON_FILE}")
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
