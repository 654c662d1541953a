"""Conformance rows from TensorFlow Serving's own tests of its REST paths, run against
kerasformer-serve over loopback.

Every row is one request of `model_servers/http_rest_api_handler_test.cc` or
`model_servers/http_rest_api_util_test.cc` (tensorflow/serving; the row names its test) with the
real server's answer: the handler test's expectations, made whole where the test checks only a
substring and the real source says the full text (`http_rest_api_handler.cc`,
`http_rest_api_util.cc`, `util/json_tensor.cc`, `server_core.cc`, ...). The util tests check
`ParseModelInfo` alone; over HTTP their paths reach the handler, so each row holds what the
handler then answers for the models served here. A row ours cannot match carries a `Difference`
(why, and what ours answers instead): it still runs and must still answer that.

The server holds what the handler test's ServerCore holds, built by tests/conformance.py:
`saved_model_half_plus_two_2_versions` with the `specific { versions: 123 }` policy and the label
`Version_Label` -> 123 (the test reloads its config to add it; here it is in the config from the
start, which needs --allow_version_labels_for_unavailable_models, as the real server would). The
util tests' model names and labels are served too, names with every reserved character
included, so their paths answer 200 where the real server serving such names would. And the real
kerasformer export `tiny`: the handler tests' classify and regress requests sent to it get what
the real server answers for kerasformer's signatures.
"""

import os

import pytest
from conformance import HALF_PLUS_TWO_MODEL, REAL_EXPORT_MODEL, Difference, Row, check_row, model_base, row_id, summary
from serving_helpers import ServerProcess

pytestmark = pytest.mark.backend_independent  # see tests/run.sh

HANDLER = "http_rest_api_handler_test.cc: HttpRestApiHandlerTest"
UTIL = "http_rest_api_util_test.cc: HttpRestApiUtilTest"
HALF = HALF_PLUS_TWO_MODEL  # "saved_model_half_plus_two_2_versions"
RESERVED = "!#$%&'()*+,/:;=?@[]"
RESERVED_ESCAPED = "%21%23%24%25%26%27%28%29%2A%2B%2C%2F%3A%3B%3D%3F%40%5B%5D"
UINT64_MAX = 18446744073709551615

EVHTTP_404 = "<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n<H1>Not Found</H1>\n</BODY></HTML>\n"
STATUS_123 = {"model_version_status": [
    {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
# ToJsonString(GetModelStatusResponse): protobuf's JSON with add_whitespace (1-space indents).
STATUS_123_TEXT = ('{\n "model_version_status": [\n  {\n   "version": "123",\n   "state": "AVAILABLE",\n   "status": {\n'
                   '    "error_code": "OK",\n    "error_message": ""\n   }\n  }\n ]\n}\n')
UNIMPLEMENTED_EXAMPLES = ("kerasformer-serve reads the classify and regress bodies and checks the signature as the "
                          "real server does, but runs no tf.Example classifier or regressor: a signature that passes "
                          "those checks gets 501 UNIMPLEMENTED")


def tensor(name, dtype, dims):
    """A TensorInfo as the metadata answer writes it (dims None: unknown rank)."""
    shape = {"dim": [], "unknown_rank": True} if dims is None else {
        "dim": [{"size": str(size), "name": ""} for size in dims], "unknown_rank": False}
    return {"dtype": dtype, "tensor_shape": shape, "name": name}


def signature(inputs, outputs, method):
    return {"inputs": inputs, "outputs": outputs, "method_name": f"tensorflow/serving/{method}", "defaults": {}}


# servables/tensorflow/testdata/saved_model_half_plus_two_2_versions_metadata.json, which
# GetModelMetadata compares the answer with (CompareJson: same JSON values).
HALF_PLUS_TWO_METADATA = {
    "model_spec": {"name": HALF, "signature_name": "", "version": "123"},
    "metadata": {"signature_def": {"signature_def": {
        "regress_x2_to_y3": signature({"inputs": tensor("x2:0", "DT_FLOAT", [-1, 1])},
                                      {"outputs": tensor("y3:0", "DT_FLOAT", [-1, 1])}, "regress"),
        "serving_default": signature({"x": tensor("x:0", "DT_FLOAT", [-1, 1])},
                                     {"y": tensor("y:0", "DT_FLOAT", [-1, 1])}, "predict"),
        "classify_x_to_y": signature({"inputs": tensor("tf_example:0", "DT_STRING", None)},
                                     {"scores": tensor("y:0", "DT_FLOAT", [-1, 1])}, "classify"),
        "classify_x2_to_y3": signature({"inputs": tensor("x2:0", "DT_FLOAT", [-1, 1])},
                                       {"scores": tensor("y3:0", "DT_FLOAT", [-1, 1])}, "classify"),
        "regress_x_to_y2": signature({"inputs": tensor("tf_example:0", "DT_STRING", None)},
                                     {"outputs": tensor("y2:0", "DT_FLOAT", [-1, 1])}, "regress"),
        "regress_x_to_y": signature({"inputs": tensor("tf_example:0", "DT_STRING", None)},
                                    {"outputs": tensor("y:0", "DT_FLOAT", [-1, 1])}, "regress"),
    }}},
}


def metadata_row(source, path, name):
    """A metadata row: the real answer (tests/conformance.py rebuilds half_plus_two with its shapes)."""
    real = {**HALF_PLUS_TWO_METADATA, "model_spec": {"name": name, "signature_name": "", "version": "123"}}
    return Row(source, "GET", path, None, 200, answer=real)


def malformed(source, method, path):
    return Row(source, method, path, "", 400, error=f"Malformed request: {method} {path}")


def unimplemented(source, path, body, verb, signature_name, answer):
    """A classify/regress row of the handler test: the real answer, and ours."""
    return Row(source, "POST", path, body, 200, answer=answer, difference=Difference(
        UNIMPLEMENTED_EXAMPLES, 501,
        error=f"kerasformer-serve does not run {verb} signatures (model {HALF} version 123, signature "
              f"{signature_name!r}); use :predict"))


PATH_ROWS = [
    # kPathRegex: (?i)/v1/.* reaches the handler; other paths get libevent's 404 page.
    Row(f"{HANDLER}.kPathRegex", "GET", "/v1/models", None, 400, error="Missing model name in request."),
    Row(f"{HANDLER}.kPathRegex", "GET", "/statuspage", None, 404, answer_text=EVHTTP_404),
    Row(f"{HANDLER}.kPathRegex", "GET", "/index", None, 404, answer_text=EVHTTP_404),
]

UNSUPPORTED_API_CALLS = [
    malformed(f"{HANDLER}.UnsupportedApiCalls", "GET", "/v1/foo"),
    malformed(f"{HANDLER}.UnsupportedApiCalls", "POST", "/v1/foo"),
    Row(f"{HANDLER}.UnsupportedApiCalls", "GET", "/v1/models", "", 400, error="Missing model name in request."),
    malformed(f"{HANDLER}.UnsupportedApiCalls", "GET", "/v1/models/debug/model_name"),
    malformed(f"{HANDLER}.UnsupportedApiCalls", "POST", "/v1/models"),
    malformed(f"{HANDLER}.UnsupportedApiCalls", "GET", "/v1/models/foo:predict"),
    malformed(f"{HANDLER}.UnsupportedApiCalls", "GET", "/v1/models/foo/version/50:predict"),
    malformed(f"{HANDLER}.UnsupportedApiCalls", "POST", "/v1/models/foo/version/50:regress"),
    malformed(f"{HANDLER}.UnsupportedApiCalls", "POST", "/v1/models/foo/versions/HELLO:regress"),
    # "Failed to convert version": ParseModelInfo's error returns from ProcessRequest before
    # MakeJsonFromStatus, so the 400 has an empty body; the text is not on the wire.
    Row(f"{HANDLER}.UnsupportedApiCalls", "POST", f"/v1/models/foo/versions/{UINT64_MAX}:regress", "", 400,
        answer_text=""),
    malformed(f"{HANDLER}.UnsupportedApiCalls", "POST", "/v1/models/foo/metadata"),
    malformed(f"{HANDLER}.UnsupportedApiCalls", "POST", "/v1/models/foo/label/some_label:regress"),
    malformed(f"{HANDLER}.UnsupportedApiCalls", "POST", "/v1/models/foo/versions/50/labels/some_label:regress"),
    malformed(f"{HANDLER}.UnsupportedApiCalls", "POST", "/v1/models/foo/versions/some_label:regress"),
]

PREDICT_ERRORS = [
    Row(f"{HANDLER}.PredictModelNameVersionErrors", "POST", "/v1/models/foo:predict", '{ "instances": [1] }', 404,
        error="Servable not found for request: Latest(foo)"),
    Row(f"{HANDLER}.PredictModelNameVersionErrors", "POST", "/v1/models/foo/versions/50:predict",
        '{ "instances": [1] }', 404, error="Servable not found for request: Specific(foo, 50)"),
    Row(f"{HANDLER}.PredictModelNameVersionErrors", "POST", f"/v1/models/{HALF}99:predict", '{ "instances": [1] }',
        404, error=f"Servable not found for request: Latest({HALF}99)"),
    Row(f"{HANDLER}.PredictRequestErrors", "POST", f"/v1/models/{HALF}:predict", "", 400,
        error="JSON Parse error: The document is empty"),
    Row(f"{HANDLER}.PredictRequestErrors", "POST", f"/v1/models/{HALF}:predict", "instances = [1, 2]", 400,
        error="JSON Parse error: Invalid value. at offset: 0"),
    Row(f"{HANDLER}.PredictRequestErrors", "POST", f"/v1/models/{HALF}:predict", '{ "instances": ["x", "y"] }', 400,
        error="Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: \"x\" Type: "
              "String is not of expected type: float"),
    Row(f"{HANDLER}.PredictRequestErrors", "POST", f"/v1/models/{HALF}/labels/Version_Nonexistent:predict",
        '{ "instances": ["x", "y"] }', 400, error="Unrecognized servable version label: Version_Nonexistent"),
    Row(f"{HANDLER}.PredictRequestErrors", "POST", f"/v1/models/{HALF}:predict", '{ "signature_name": 100 }', 400,
        error='JSON Value: {\n    "signature_name": 100\n} not formatted correctly. \'signature_name\' key must be a '
              "string value."),
]

PREDICT = [
    Row(f"{HANDLER}.Predict", "POST", f"/v1/models/{HALF}:predict", '{"instances": [[1.0, 2.0], [3.0, 4.0]]}', 200,
        answer={"predictions": [[2.5, 3.0], [3.5, 4.0]]}),
    Row(f"{HANDLER}.Predict", "POST", f"/v1/models/{HALF}/versions/123:predict", '{"instances": [1.0, 2.0]}', 200,
        answer={"predictions": [2.5, 3.0]}),
    Row(f"{HANDLER}.Predict", "POST", f"/v1/models/{HALF}/labels/Version_Label:predict", '{"instances": [1.0, 2.0]}',
        200, answer={"predictions": [2.5, 3.0]}),
    Row(f"{HANDLER}.Predict", "POST", f"/v1/models/{HALF}/versions/123:predict",
        '{"signature_name": "serving_default", "instances": [3.0, 4.0]}', 200, answer={"predictions": [3.5, 4.0]}),
    Row(f"{HANDLER}.Predict", "POST", f"/v1/models/{HALF}/versions/123:predict",
        '{"signature_name": "serving_default", "inputs": [3.0, 4.0]}', 200, answer={"outputs": [3.5, 4.0]}),
]

REGRESS_BODY = '{"signature_name": "regress_x_to_y", "examples": [ { "x": 80.0 } ] }'
CLASSIFY_BODY = '{"signature_name": "classify_x_to_y", "examples": [ { "x": 20.0 } ] }'
CLASSIFY_AND_REGRESS = [
    unimplemented(f"{HANDLER}.Regress", f"/v1/models/{HALF}:regress", REGRESS_BODY, "regress", "regress_x_to_y",
                  {"results": [42]}),
    unimplemented(f"{HANDLER}.Regress", f"/v1/models/{HALF}/versions/123:regress", REGRESS_BODY, "regress",
                  "regress_x_to_y", {"results": [42]}),
    unimplemented(f"{HANDLER}.Regress", f"/v1/models/{HALF}/labels/Version_Label:regress", REGRESS_BODY, "regress",
                  "regress_x_to_y", {"results": [42]}),
    unimplemented(f"{HANDLER}.Classify", f"/v1/models/{HALF}:classify", CLASSIFY_BODY, "classify", "classify_x_to_y",
                  {"results": [[["", 12]]]}),
    unimplemented(f"{HANDLER}.Classify", f"/v1/models/{HALF}/labels/Version_Label:classify",
                  '{"signature_name": "classify_x_to_y", "examples": [ { "x": 10.0 } ] }', "classify",
                  "classify_x_to_y", {"results": [[["", 7]]]}),
]

STATUS_AND_METADATA = [
    Row(f"{HANDLER}.GetStatus", "GET", f"/v1/models/{HALF}", "", 200, answer=STATUS_123, answer_text=STATUS_123_TEXT),
    Row(f"{HANDLER}.GetStatus", "GET", f"/v1/models/{HALF}/versions/123", "", 200, answer=STATUS_123,
        answer_text=STATUS_123_TEXT),
    Row(f"{HANDLER}.GetStatus", "GET", f"/v1/models/{HALF}/labels/Version_Label", "", 200, answer=STATUS_123,
        answer_text=STATUS_123_TEXT),
    metadata_row(f"{HANDLER}.GetModelMetadata", f"/v1/models/{HALF}/metadata", HALF),
]

# The util tests' paths, served: "modelname" and "modelname!#$%&'()*+,/:;=?@[]" are
# half_plus_two at version 123, with the labels "latest" and "latest!#$%&'()*+,/:;=?@[]".
RESERVED_STATUS = {"model_version_status": STATUS_123["model_version_status"]}


PARSE_FOR_GET = [
    Row(f"{UTIL}.TestParseModelInfoForGet", "GET", f"/v1/models/modelname{RESERVED_ESCAPED}", None, 200,
        answer=RESERVED_STATUS),
    Row(f"{UTIL}.TestParseModelInfoForGet", "GET", "/v1/models/modelname/versions/99", None, 404,
        error="Could not find version 99 of model modelname"),
    Row(f"{UTIL}.TestParseModelInfoForGet", "GET", "/v1/models/modelname/labels/latest", None, 200,
        answer=RESERVED_STATUS),
    Row(f"{UTIL}.TestParseModelInfoForGet", "GET", f"/v1/models/modelname/labels/latest{RESERVED_ESCAPED}", None,
        200, answer=RESERVED_STATUS),
    metadata_row(f"{UTIL}.TestParseModelInfoForGet", "/v1/models/modelname/labels/latest/metadata", "modelname"),
    metadata_row(f"{UTIL}.TestParseModelInfoForGet",
                 f"/v1/models/modelname{RESERVED_ESCAPED}/labels/latest{RESERVED_ESCAPED}/metadata",
                 "modelname" + RESERVED),
    malformed(f"{UTIL}.TestParseModelInfoForGet", "GET", "/v1/foo"),
    malformed(f"{UTIL}.TestParseModelInfoForGet", "GET", "/v1/models/foo:predict"),
    malformed(f"{UTIL}.TestParseModelInfoForGet", "GET", "/v1/models/foo/version/50:predict"),
]

ONE = '{"instances": [1.0]}'  # a body of ours: the util test parses the path alone
PARSE_FOR_POST = [
    Row(f"{UTIL}.TestParseModelInfoForPost", "POST", f"/v1/models/modelname{RESERVED_ESCAPED}:predict", ONE, 200,
        answer={"predictions": [2.5]}),
    Row(f"{UTIL}.TestParseModelInfoForPost", "POST", "/v1/models/modelname/versions/99:predict", ONE, 404,
        error="Servable not found for request: Specific(modelname, 99)"),
    Row(f"{UTIL}.TestParseModelInfoForPost", "POST", "/v1/models/modelname/labels/latest:predict", ONE, 200,
        answer={"predictions": [2.5]}),
    Row(f"{UTIL}.TestParseModelInfoForPost", "POST", f"/v1/models/modelname/labels/latest{RESERVED_ESCAPED}:predict",
        ONE, 200, answer={"predictions": [2.5]}),
    Row(f"{UTIL}.TestParseModelInfoForPost", "POST",
        f"/v1/models/modelname{RESERVED_ESCAPED}/labels/latest{RESERVED_ESCAPED}:predict", ONE, 200,
        answer={"predictions": [2.5]}),
    malformed(f"{UTIL}.TestParseModelInfoForPost", "POST", "/v1/foo"),
    malformed(f"{UTIL}.TestParseModelInfoForPost", "POST", "/v1/models"),
    malformed(f"{UTIL}.TestParseModelInfoForPost", "POST", "/v1/models/foo/version/50:predict"),
    malformed(f"{UTIL}.TestParseModelInfoForPost", "POST", "/v1/models/foo/versions/string:predict"),
    Row(f"{UTIL}.TestParseModelInfoForPost", "POST", f"/v1/models/foo/versions/{UINT64_MAX}:predict", ONE, 400,
        answer_text=""),  # "Failed to convert version", returned before a body is written
    malformed(f"{UTIL}.TestParseModelInfoForPost", "POST", "/v1/models/foo/metadata"),
    malformed(f"{UTIL}.TestParseModelInfoForPost", "POST", "/v1/models/foo/versions/50/labels/some_label:regress"),
]

# The handler tests' classify and regress requests sent to the real kerasformer export: the real
# server's PreProcessClassification / PreProcessRegression refuse each of its signatures so.
TINY = REAL_EXPORT_MODEL
REAL_EXPORT_ROWS = [
    Row(f"{HANDLER}.GetStatus (on the real export)", "GET", f"/v1/models/{TINY}", "", 200, answer={
        "model_version_status": [{"version": "1", "state": "AVAILABLE",
                                  "status": {"error_code": "OK", "error_message": ""}}]}),
    Row(f"{HANDLER}.Predict (on the real export)", "POST", f"/v1/models/{TINY}:predict",
        '{"instances": ["Jesus wept.", "In the beginning"]}', 200),
    Row(f"{HANDLER}.Predict (on the real export)", "POST", f"/v1/models/{TINY}/versions/1:predict",
        '{"signature_name": "serving_default", "inputs": ["Jesus wept."]}', 200),
    Row(f"{HANDLER}.PredictRequestErrors (on the real export)", "POST", f"/v1/models/{TINY}:predict",
        '{ "instances": [1, 2] }', 400,
        error="Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: 1 Type: Number "
              "is not of expected type: string"),
    Row(f"{HANDLER}.Classify (on the real export)", "POST", f"/v1/models/{TINY}:classify",
        '{"examples": [ { "x": 20.0 } ] }', 400, error="Expected one or two output Tensors, found 3"),
    Row(f"{HANDLER}.Regress (on the real export)", "POST", f"/v1/models/{TINY}:regress",
        '{"examples": [ { "x": 80.0 } ] }', 400, error="Expected one output Tensor."),
    Row(f"{HANDLER}.Regress (on the real export)", "POST", f"/v1/models/{TINY}:regress",
        '{"signature_name": "translate_max_length", "examples": [ { "x": 80.0 } ] }', 400,
        error="Expected one input Tensor."),
    Row(f"{HANDLER}.Classify (on the real export)", "POST", f"/v1/models/{TINY}:classify",
        '{"signature_name": "translate_tokens", "examples": [ { "x": 20.0 } ] }', 400,
        error="No classification inputs found in SignatureDef: ", substring=True),
    Row(f"{HANDLER}.Classify (on the real export)", "POST", f"/v1/models/{TINY}:classify",
        '{"signature_name": "regress_x_to_y", "examples": [ { "x": 20.0 } ] }', 400,
        error="No signature was found with the name: regress_x_to_y"),
]

ROWS = (PATH_ROWS + UNSUPPORTED_API_CALLS + PREDICT_ERRORS + PREDICT + CLASSIFY_AND_REGRESS + STATUS_AND_METADATA
        + PARSE_FOR_GET + PARSE_FOR_POST + REAL_EXPORT_ROWS)


def model_server_config(base):
    """The ModelServerConfig text of the server (see the module docstring)."""
    half = os.path.join(base, HALF)

    def entry(name, labels):
        label_text = "".join(f'    version_labels {{ key: "{label}" value: 123 }}\n' for label in labels)
        return (f'  config {{\n    name: "{name}"\n    base_path: "{half}"\n    model_platform: "tensorflow"\n'
                f"    model_version_policy {{ specific {{ versions: 123 }} }}\n{label_text}  }}\n")

    return ("model_config_list {\n" + entry(HALF, ["Version_Label"])
            + entry("modelname", ["latest", "latest" + RESERVED])
            + entry("modelname" + RESERVED, ["latest", "latest" + RESERVED])
            + f'  config {{ name: "{TINY}" base_path: "{os.path.join(base, TINY)}" model_platform: "tensorflow" }}\n'
            + "}\n")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("conformance_http")
    config = tmp / "models.config"
    config.write_text(model_server_config(model_base(real_export=True)))
    process = ServerProcess(tmp, None, f"--model_config_file={config}",
                            "--allow_version_labels_for_unavailable_models", model=HALF)
    try:
        yield process.wait_until_ready()
    finally:
        process.stop()


@pytest.mark.parametrize("row", ROWS, ids=row_id)
def test_row(server, row):
    check_row(server.url, row)


def test_rows_are_counted():
    """The README's count (printed with -s); every row names the real test it comes from."""
    print("\n" + summary("model_servers/http_rest_api_{handler,util}_test.cc", ROWS))
    assert all(row.source.startswith((HANDLER, UTIL)) for row in ROWS)
    assert len({row_id(row) for row in ROWS}) == len(ROWS)
