"""The OpenAPI 3.1 description of kerasformer-serve's REST API.

kerasformer-serve (`export/serving/server.py`) implements a subset of TensorFlow Serving's REST API
(https://www.tensorflow.org/tfx/serving/api_rest); `openapi_description()` describes exactly
that subset, plus the two paths of its own under `/kerasformer/`. The server answers it at
`GET /kerasformer/openapi.json`, the tests fuzz the server against it (tests/test_rest_fuzz.py),
and a copy is kept in `export/serving/openapi.json` for readers and other tools:

    python -m export.serving.openapi            # print it
    python -m export.serving.openapi --write    # rewrite export/serving/openapi.json

TensorFlow Serving's custom methods put a colon after the last path parameter
(`/v1/models/{name}:predict`). OpenAPI allows a template expression followed by literal text in
one segment, and a client substitutes `{name}` percent-encoded (a `:` or `/` inside a name
becomes `%3A` or `%2F`), so such paths need nothing special.

No `servers` entry: OpenAPI then takes `/` on the host that served the description.
"""

import argparse
import json
import os

from export.serving.model_repository import MODEL_NAME

JSON_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openapi.json")


def _ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema, description):
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description):
    return _json(_ref("Error"), description)


NOT_FOUND = _error(
    "No such model or version is served, or the path is not one of this API's (`Malformed request`)"
)

MODEL_NAME_PARAMETER = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "The model: a folder under `--model-base-path` (`BASE/NAME/VERSION/`). Names are "
                   "single plain folder names; a name that is not served answers 404.",
    "schema": {"type": "string", "pattern": f"^{MODEL_NAME.pattern}$"},
}

VERSION_PARAMETER = {
    "name": "version",
    "in": "path",
    "required": True,
    "description": "A version folder number. Only the version being served (the newest loaded) answers "
                   "predict and metadata; status also lists versions unloaded or refused.",
    "schema": {"type": "integer", "format": "int64", "minimum": 1},
}


def _model_operations(with_version):
    """The three operations on `/v1/models/{name}` or `/v1/models/{name}/versions/{version}`."""
    parameters = [MODEL_NAME_PARAMETER] + ([VERSION_PARAMETER] if with_version else [])
    which = "the given version" if with_version else "the newest version"
    suffix = "Version" if with_version else ""
    return {
        "status": {
            "get": {
                "operationId": f"getModelStatus{suffix}",
                "summary": f"Version status of a model ({which})",
                "parameters": parameters,
                "responses": {
                    "200": _json(_ref("ModelStatus"), "The serving version first, then versions unloaded or refused"),
                    "404": NOT_FOUND,
                },
            }
        },
        "metadata": {
            "get": {
                "operationId": f"getModelMetadata{suffix}",
                "summary": f"Signature definitions of {which}",
                "parameters": parameters,
                "responses": {"200": _json(_ref("ModelMetadata"), "The SignatureDefMap"), "404": NOT_FOUND},
            }
        },
        "predict": {
            "post": {
                "operationId": f"predict{suffix}",
                "summary": f"Run a signature of {which}",
                "parameters": parameters,
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("PredictRequest")}}},
                "responses": {
                    "200": _json(_ref("PredictResponse"),
                                 "`predictions` for a row-format request, `outputs` for a columnar one"),
                    "400": _error("A bad request: not JSON, not an object, an unknown signature or input, a value "
                                  "of the wrong type or shape, ragged rows; or INVALID_ARGUMENT (also "
                                  "FAILED_PRECONDITION, OUT_OF_RANGE) raised inside the graph"),
                    "404": NOT_FOUND,
                    "413": _error("The request body is larger than `--max-request-bytes`"),
                    "500": _error("INTERNAL, UNKNOWN or DATA_LOSS raised inside the graph. Rarer TensorFlow error "
                                  "codes get TensorFlow Serving's status for them (e.g. RESOURCE_EXHAUSTED 429)"),
                },
            }
        },
    }


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
        "description": "TensorFlow Serving's row format (`instances`: one JSON value per example, an object of named "
                       "inputs or a bare value for a signature with one required input) or columnar format "
                       "(`inputs`: one whole tensor per input name, or a bare tensor). Strings are JSON strings; "
                       "binary strings are `{\"b64\": \"...\"}`. Inputs left out take the signature's defaults.",
        "oneOf": [
            {
                "title": "row format",
                "type": "object",
                "required": ["instances"],
                "properties": {"signature_name": _ref("SignatureName"), "instances": {"type": "array", "minItems": 1}},
                "additionalProperties": False,
            },
            {
                "title": "columnar format",
                "type": "object",
                "required": ["inputs"],
                "properties": {"signature_name": _ref("SignatureName"), "inputs": {}},
                "additionalProperties": False,
            },
        ],
    },
    "SignatureName": {"type": "string", "description": "Default: serving_default", "default": "serving_default"},
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
    latest, versioned = _model_operations(with_version=False), _model_operations(with_version=True)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kerasformer-serve",
            "version": "1",
            "description": "The REST subset of TensorFlow Serving that kerasformer-serve implements "
                           "(https://www.tensorflow.org/tfx/serving/api_rest), and its own /kerasformer/ paths. "
                           "Every error is {\"error\": \"message\"}.",
        },
        "paths": {
            "/v1/models/{name}": latest["status"],
            "/v1/models/{name}/metadata": latest["metadata"],
            "/v1/models/{name}:predict": latest["predict"],
            "/v1/models/{name}/versions/{version}": versioned["status"],
            "/v1/models/{name}/versions/{version}/metadata": versioned["metadata"],
            "/v1/models/{name}/versions/{version}:predict": versioned["predict"],
            "/kerasformer/stats": {
                "get": {
                    "operationId": "getStats",
                    "summary": "Request and graph-call counts (how much batching merged); not part of TF Serving",
                    "responses": {"200": _json(_ref("Stats"), "Counts since the server started")},
                }
            },
            "/kerasformer/openapi.json": {
                "get": {
                    "operationId": "getOpenAPI",
                    "summary": "This description",
                    "responses": {"200": _json({"type": "object", "required": ["openapi", "paths"]},
                                               "The OpenAPI document")},
                }
            },
        },
        "components": {"schemas": SCHEMAS},
    }


def to_json(description):
    """The text of export/serving/openapi.json: indented, keys in the order written here, one final newline."""
    return json.dumps(description, indent=2, ensure_ascii=False) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m export.serving.openapi", description=__doc__.split("\n\n")[0])
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
