"""Conformance with util/json_tensor.cc: rows from TensorFlow Serving's util/json_tensor_test.cc,
sent to kerasformer-serve over loopback (see tests/conformance.py).

The real tests call FillPredictRequestFromJson with a TensorInfo map and MakeJsonFromTensors with
a tensor map. Here each TensorInfo map is a signature of the `conformance` model whose outputs
echo its inputs (so the answer shows the tensor the JSON made), named in the body's
`signature_name` unless it is serving_default's {"default": DT_INT32}; each tensor map to write
comes out of a signature that computes it. Expected texts are the real server's, derived by hand
from json_tensor.cc (and RapidJSON 1.1.0, absl) where the test checks only a substring; answer
texts are laid out as RapidJSON's PrettyWriter lays them out (as MakeJsonFromTensors writes).

ROWS are the tests' own requests; SOURCE_ROWS are further requests that pin rules of
json_tensor.cc its tests do not reach (parse errors, dtypes, the kerasformer export's
signatures). NOT_REQUESTS lists the tests that make no request a server could answer.
"""

import json

import pytest
from conformance import CONFORMANCE_MODEL, HALF_PLUS_TWO_MODEL, REAL_EXPORT_MODEL, Difference, Row, check_row, \
    real_export_server, row_id, summary  # noqa: F401  (real_export_server is a fixture)

pytestmark = pytest.mark.backend_independent  # see tests/run.sh

PREDICT = f"/v1/models/{CONFORMANCE_MODEL}:predict"
CLASSIFY = f"/v1/models/{HALF_PLUS_TWO_MODEL}:classify"
REGRESS = f"/v1/models/{HALF_PLUS_TWO_MODEL}:regress"
TEST = "json_tensor_test.cc: "
NO_CLASSIFY = ("kerasformer-serve checks classify and regress bodies as the real server does but runs no "
               "classifier or regressor (501); the real server would run half_plus_two's classify_x_to_y")


def predictions_row_text(*rows):
    """The row-format answer as MakeRowFormatJsonFromTensors lays out one output: every row on
    the first line (single-line arrays), then the closing bracket on its own line."""
    return '{\n    "predictions": [' + ", ".join(rows) + "\n    ]\n}"


def outputs_text(value):
    """The columnar answer of one output of integers or strings: PrettyWriter's default layout,
    which json.dumps(indent=4) shares for such values."""
    return '{\n    "outputs": ' + json.dumps(value, indent=4).replace("\n", "\n    ") + "\n}"


def error(source, body, status, text, path=PREDICT, **options):
    return Row(TEST + source, "POST", path, body, status, error=text, **options)


def answer(source, body, value, text=None, path=PREDICT):
    return Row(TEST + source, "POST", path, body, 200, answer=value, answer_text=text)


def element_error(index, text, key=None):
    """FillTensorMapFromInstancesList's wrapping of an AddInstanceItem error (absl's
    Status::ToString() puts the code name first)."""
    where = f"{index} key: {key}" if key is not None else f"{index}"
    return f"Failed to process element: {where} of 'instances' list. Error: INVALID_ARGUMENT: {text}"


NESTED = "[" * 500000 + "]" * 500000
INT_TENSOR_2_3_2 = [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]]

ROWS = [
    answer("JsontensorTest.SingleUnnamedTensor", '{"instances": [[1,2],[3,4],[5,6]]}',
           {"predictions": [[1, 2], [3, 4], [5, 6]]}, predictions_row_text("[1, 2]", "[3, 4]", "[5, 6]")),
    answer("JsontensorTest.DeeplyNestedWellFormed", '{"instances":[1], "nested":' + NESTED + "}",
           {"predictions": [1]}, predictions_row_text("1")),
    # JsonValueToDebugString stops writing once 256 bytes are written: '{\n    "signature_name": '
    # is 24 bytes, then one '[' per event until the text is 256 bytes long.
    error("JsontensorTest.DeeplyNestedMalformed", '{"signature_name":' + NESTED + "}", 400,
          'JSON Value: {\n    "signature_name": ' + "[" * 232
          + " not formatted correctly. 'signature_name' key must be a string value."),
    answer("JsontensorTest.MixedInputForFloatTensor",
           '{"signature_name": "float", "instances": [1, 2.0, 3, 4, 5.003, 0.007, 0.0]}',
           {"predictions": [1.0, 2.0, 3.0, 4.0, 5.003, 0.007, 0.0]},
           predictions_row_text("1.0", "2.0", "3.0", "4.0", "5.003", "0.007", "0.0")),
    answer("JsontensorTest.MixedInputForDoubleTensor",
           '{"signature_name": "double", "instances": [1.0, 2, 3, 4, 0.662, 0, 0.0]}',
           {"predictions": [1.0, 2.0, 3.0, 4.0, 0.662, 0.0, 0.0]},
           predictions_row_text("1.0", "2.0", "3.0", "4.0", "0.662", "0.0", "0.0")),
    # float(1435774380) is 1435774336; its six digits (1.43577e+09) do not read back, so 9 are written.
    answer("JsontensorTest.FloatTensorWithPrecisionLoss (integer)",
           '{"signature_name": "float", "instances": [1435774380]}',
           {"predictions": [1.43577434e+09]}, predictions_row_text("1.43577434e+09")),
    answer("JsontensorTest.FloatTensorWithPrecisionLoss (decimal)",
           '{"signature_name": "float", "instances": [1435774380.0]}',
           {"predictions": [1.43577434e+09]}, predictions_row_text("1.43577434e+09")),
    # absl::Substitute writes DBL_MAX and DBL_MIN with six digits.
    answer("JsontensorTest.FloatTensorThatExceedsMaxReturnsInf",
           '{"signature_name": "float", "instances": [1.79769e+308] }',
           {"predictions": [float("inf")]}, predictions_row_text("Infinity")),
    answer("JsontensorTest.FloatTensorThatExceedsMaxReturnsInf (negative)",
           '{"signature_name": "float", "instances": [-1.79769e+308] }',
           {"predictions": [float("-inf")]}, predictions_row_text("-Infinity")),
    answer("JsontensorTest.FloatTensorThatExceedsMinReturnsZero",
           '{"signature_name": "float", "instances": [2.22507e-308] }',
           {"predictions": [0.0]}, predictions_row_text("0.0")),
    answer("JsontensorTest.FloatTensorThatExceedsMinReturnsZero (negative)",
           '{"signature_name": "float", "instances": [-2.22507e-308] }',
           {"predictions": [-0.0]}, predictions_row_text("-0.0")),
    answer("JsontensorTest.SingleUnnamedTensorWithSignature",
           '{"signature_name": "predict_images", "instances": [[1,2]]}', {"predictions": [[1, 2]]},
           predictions_row_text("[1, 2]")),
    answer("JsontensorTest.TensorFromNonNullTerminatedBuffer", '{"instances": [[1,2],[3,4],[5,6]]}',
           {"predictions": [[1, 2], [3, 4], [5, 6]]}),
    answer("JsontensorTest.SingleUnnamedTensorBase64Scalars",
           '{"signature_name": "string", "instances": [ { "b64" : "aGVsbG8=" }, { "b64": "d29ybGQ=" } ]}',
           {"predictions": ["hello", "world"]}, predictions_row_text('"hello"', '"world"')),
    answer("JsontensorTest.SingleUnnamedTensorBase64Lists",
           '{"signature_name": "string", "instances": [ [{ "b64" : "aGVsbG8=" }], [{ "b64": "d29ybGQ=" }] ]}',
           {"predictions": [["hello"], ["world"]]}, predictions_row_text('["hello"]', '["world"]')),
    answer("JsontensorTest.SingleNamedTensorBase64",
           '{"signature_name": "string", "instances": '
           '[{"default": [ [{ "b64" : "aGVsbG8=" }], [{ "b64": "d29ybGQ=" }] ]}]}',
           {"predictions": [[["hello"], ["world"]]]}, predictions_row_text('[["hello"], ["world"]]')),
    answer("JsontensorTest.MultipleNamedTensor",
           '{"signature_name": "multiple_named", "instances": ['
           '{"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"], "float_tensor": [1.0, NaN], '
           '"dbl_tensor": [NaN]}, '
           '{"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"], "float_tensor": [2.0, Infinity], '
           '"dbl_tensor": [2.0]}]}',
           {"predictions": [
               {"dbl_tensor": [float("nan")], "float_tensor": [1.0, float("nan")], "int_tensor": [[1, 2], [3, 4], [5, 6]],
                "str_tensor": ["foo", "bar"]},
               {"dbl_tensor": [2.0], "float_tensor": [2.0, float("inf")], "int_tensor": [[7, 8], [9, 0], [1, 2]],
                "str_tensor": ["baz", "bat"]}]},
           '{\n    "predictions": [\n        {\n            "dbl_tensor": [NaN],\n            "float_tensor": [1.0, NaN],\n'
           '            "int_tensor": [[1, 2], [3, 4], [5, 6]],\n            "str_tensor": ["foo", "bar"]\n        },\n'
           '        {\n            "dbl_tensor": [2.0],\n            "float_tensor": [2.0, Infinity],\n'
           '            "int_tensor": [[7, 8], [9, 0], [1, 2]],\n            "str_tensor": ["baz", "bat"]\n        }\n'
           '    ]\n}'),
    answer("JsontensorTest.SingleUnnamedTensorColumnarFormat (named)",
           '{"signature_name": "int_tensor", "inputs": {"int_tensor": [[[1,2],[3,4],[5,6]]]}}',
           {"outputs": [[[1, 2], [3, 4], [5, 6]]]}, outputs_text([[[1, 2], [3, 4], [5, 6]]])),
    answer("JsontensorTest.SingleUnnamedTensorColumnarFormat (bare)",
           '{"signature_name": "int_tensor", "inputs": [[[1,2],[3,4],[5,6]]]}',
           {"outputs": [[[1, 2], [3, 4], [5, 6]]]}, outputs_text([[[1, 2], [3, 4], [5, 6]]])),
    answer("JsontensorTest.MultipleNamedTensorColumnarFormat",
           '{"signature_name": "int_str_bin", "inputs": {"int_tensor": [[[1,2],[3,4],[5,6]]], '
           '"str_tensor": ["foo", "bar"], "bin_tensor": { "b64" : "aGVsbG8=" }}}',
           {"outputs": {"bin_tensor": "hello", "int_tensor": [[[1, 2], [3, 4], [5, 6]]], "str_tensor": ["foo", "bar"]}},
           outputs_text({"bin_tensor": "hello", "int_tensor": [[[1, 2], [3, 4], [5, 6]]], "str_tensor": ["foo", "bar"]})),
    error("JsontensorTest.SingleUnnamedTensorErrors (empty)", "", 400, "JSON Parse error: The document is empty"),
    error("JsontensorTest.SingleUnnamedTensorErrors (signature_name 5)",
          '\n    {\n      "signature_name": 5,\n      "instances": [[1,2],[3,4],[5,6,7]]\n    }', 400,
          'JSON Value: {\n    "signature_name": 5,\n    "instances": [[1, 2], [3, 4], [5, 6, 7]]\n} not formatted '
          "correctly. 'signature_name' key must be a string value."),
    error("JsontensorTest.SingleUnnamedTensorErrors (both keys)",
          '{"instances": [[1,2],[3,4],[5,6,7]], "inputs": [[1,2],[3,4],[5,6,7]]}', 400,
          'JSON Value: {\n    "instances": [[1, 2], [3, 4], [5, 6, 7]],\n    "inputs": [[1, 2], [3, 4], [5, 6, 7]]\n} '
          "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist "),
    error("JsontensorTest.SingleUnnamedTensorErrors (tensor size)", '{"instances": [[1,2],[3,4],[5,6,7]]}', 400,
          element_error(2, "Expecting tensor size: 2 but got: 3")),
    error("JsontensorTest.SingleUnnamedTensorErrors (shape)", '{"instances": [[1,2],[3,4],[[5,6]]]}', 400,
          element_error(2, "Expecting shape [2] but got: [1,2]")),
    error("JsontensorTest.SingleUnnamedTensorErrors (scalar then list)", '{"instances": [1, [1]]}', 400,
          element_error(1, "Expecting shape [] but got: [1]")),
    error("JsontensorTest.SingleUnnamedTensorErrors (type)", '{"instances": [[1,2],["a", "b"]]}', 400,
          element_error(1, 'JSON Value: "a" Type: String is not of expected type: int32')),
    error("JsontensorTest.MultipleNamedTensorErrors (shape)",
          '{"signature_name": "int_str", "instances": [{"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"]}, '
          '{"int_tensor": [[[7,8],[9,0],[1,2]]], "str_tensor": ["baz", "bat"]}]}', 400,
          element_error(1, "Expecting shape [3,2] but got: [1,3,2]", key="int_tensor")),
    error("JsontensorTest.MultipleNamedTensorErrors (size)",
          '{"signature_name": "int_str", "instances": [{"int_tensor": [[1,2],[3,4],[5,6],[7,8]], '
          '"str_tensor": ["foo", "bar"]}, {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"]}]}', 400,
          element_error(1, "Expecting tensor size: 8 but got: 6", key="int_tensor")),
    error("JsontensorTest.MultipleNamedTensorErrors (object then list)",
          '{"signature_name": "int_str", "instances": [{"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"]}, '
          '[1, 20, 30], {"int_tensor": [[[7,8],[9,0],[1,2]]], "str_tensor": ["baz", "bat"]}]}', 400,
          "Expecting object but got list at item 1 of input list"),
    error("JsontensorTest.MultipleNamedTensorErrors (list then object)",
          '{"signature_name": "str_tensor", "instances": [["baz", "bar"], {"str_tensor": ["baz", "bat"]}]}', 400,
          "Expecting value/list but got object at item 1 of input list"),
    answer("JsontensorTest.FromJsonSingleTensor (row)", '{"signature_name": "int_tensor", "instances": '
           '[[[1,2],[3,4],[5,6]], [[7,8],[9,0],[1,2]]]}', {"predictions": INT_TENSOR_2_3_2},
           predictions_row_text("[[1, 2], [3, 4], [5, 6]]", "[[7, 8], [9, 0], [1, 2]]")),
    answer("JsontensorTest.FromJsonSingleTensor (columnar)", '{"signature_name": "int_tensor", "inputs": '
           '[[[1,2],[3,4],[5,6]], [[7,8],[9,0],[1,2]]]}', {"outputs": INT_TENSOR_2_3_2}, outputs_text(INT_TENSOR_2_3_2)),
    answer("JsontensorTest.FromJsonSingleScalarTensor (row)",
           '{"signature_name": "int_tensor", "instances": [1, 2, 3, 4, 5]}',
           {"predictions": [1, 2, 3, 4, 5]}, predictions_row_text("1", "2", "3", "4", "5")),
    answer("JsontensorTest.FromJsonSingleScalarTensor (columnar)",
           '{"signature_name": "int_tensor", "inputs": [1, 2, 3, 4, 5]}',
           {"outputs": [1, 2, 3, 4, 5]}, outputs_text([1, 2, 3, 4, 5])),
    # A DT_STRING output named *_bytes is written {"b64": ...}: an object, which PrettyWriter
    # spreads over lines even inside a single-line array.
    answer("JsontensorTest.FromJsonSingleBytesTensor", '{"signature_name": "bytes_output", "instances": '
           '[["hello", "world"], ["tf", "serving"]]}',
           {"predictions": [[{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}], [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}]]},
           predictions_row_text('[{\n                "b64": "aGVsbG8="\n            }, {\n'
                                '                "b64": "d29ybGQ="\n            }]',
                                '[{\n                "b64": "dGY="\n            }, {\n'
                                '                "b64": "c2VydmluZw=="\n            }]')),
    answer("JsontensorTest.FromJsonSingleFloatTensorSixDigitPrecision", '{"signature_name": "float", "instances": '
           '[[9000000, 999999, 0.50000], [0.0003, 0.00003, 555557.5]]}',
           {"predictions": [[9e6, 999999.0, 0.5], [0.0003, 3e-05, 555557.5]]},
           predictions_row_text("[9e+06, 999999.0, 0.5]", "[0.0003, 3e-05, 555557.5]")),
    answer("JsontensorTest.FromJsonSingleFloatTensorNonFinite", '{"signature_name": "float", "instances": '
           '[[NaN, Infinity], [3, -Infinity]]}', {"predictions": [[float("nan"), float("inf")], [3.0, float("-inf")]]},
           predictions_row_text("[NaN, Infinity]", "[3.0, -Infinity]")),
    error("JsontensorTest.FromJsonSingleTensorErrors (empty tensor map)",
          '{"signature_name": "no_outputs", "instances": [1.0]}', 400, "Cannot convert empty tensor map to JSON"),
    error("JsontensorTest.FromJsonSingleTensorErrors (complex64)",
          '{"signature_name": "complex_output", "instances": [1.0, 2.0]}', 400,
          "Failed to write JSON value for tensor type: complex64"),
    error("JsontensorTest.FromJsonSingleTensorErrors (no shape)",
          '{"signature_name": "scalar_output", "instances": [1, 2]}', 400, "Tensor name: tensor has no shape information "),
    answer("JsontensorTest.FromJsonMultipleNamedTensors (row)", '{"signature_name": "five_outputs", "instances": ['
           '{"double_scalar_tensor": 8.0, "float_tensor": [1.0], "int_tensor": [[1,2],[3,4],[5,6]], '
           '"str_tensor": ["foo", "bar"], "str_tensor_bytes": ["hello", "world"]}, '
           '{"double_scalar_tensor": 9.0, "float_tensor": [2.0], "int_tensor": [[7,8],[9,0],[1,2]], '
           '"str_tensor": ["baz", "bat"], "str_tensor_bytes": ["tf", "serving"]}]}',
           {"predictions": [
               {"double_scalar_tensor": 8.0, "float_tensor": [1.0], "int_tensor": [[1, 2], [3, 4], [5, 6]],
                "str_tensor": ["foo", "bar"], "str_tensor_bytes": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}]},
               {"double_scalar_tensor": 9.0, "float_tensor": [2.0], "int_tensor": [[7, 8], [9, 0], [1, 2]],
                "str_tensor": ["baz", "bat"], "str_tensor_bytes": [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}]}]}),
    answer("JsontensorTest.FromJsonMultipleNamedTensors (columnar)", '{"signature_name": "five_outputs", "inputs": {'
           '"double_scalar_tensor": [8.0, 9.0], "float_tensor": [[1.0], [2.0]], "int_tensor": '
           '[[[1,2],[3,4],[5,6]], [[7,8],[9,0],[1,2]]], "str_tensor": [["foo", "bar"], ["baz", "bat"]], '
           '"str_tensor_bytes": [["hello", "world"], ["tf", "serving"]]}}',
           {"outputs": {"double_scalar_tensor": [8.0, 9.0], "float_tensor": [[1.0], [2.0]], "int_tensor": INT_TENSOR_2_3_2,
                        "str_tensor": [["foo", "bar"], ["baz", "bat"]],
                        "str_tensor_bytes": [[{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}],
                                             [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}]]}}),
    error("JsontensorTest.FromJsonMultipleNamedTensorsErrors",
          '{"signature_name": "inconsistent_batch", "instances": [{"int_tensor": [1, 2, 3], "str_tensor": '
          '["foo", "bar", "baz"]}, {"int_tensor": [4, 5, 6], "str_tensor": ["a", "b", "c"]}]}', 400,
          "Tensor name: str_tensor has inconsistent batch size: 1 expecting: 2"),
    answer("JsontensorTest.FromJsonSingleZeroBatchTensor", '{"signature_name": "zero_batch", "instances": [[]]}',
           {"predictions": []}, '{\n    "predictions": []\n}'),
    answer("JsontensorTest.FromJsonMultipleZeroBatchTensors",
           '{"signature_name": "zero_batches", "instances": [{"str_tensor": [], "float_tensor": []}]}',
           {"predictions": []}, '{\n    "predictions": []\n}'),
    error("JsontensorTest.FromJsonMultipleZeroBatchTensorsErrors",
          '{"signature_name": "zero_batch_mixed", "instances": [{"int_tensor": [], "str_tensor": ["foo", "bar"]}]}', 400,
          "Tensor name: str_tensor has inconsistent batch size: 1 expecting: 0"),
    # ClassifyRegressRequestTest: the classify and regress bodies. Those the real server accepts it
    # would run on half_plus_two (whose classify_x_to_y needs feature x, which these examples lack:
    # its tf.Example parsing fails); ours stops at 501 once the body and signature pass.
    Row(TEST + "ClassifyRegressRequestTest.RequestNoContext (classify)", "POST", CLASSIFY,
        '{"signature_name": "classify_x_to_y", "examples": [{"names": ["foo", "bar"], "ratings": [8.0, 9.0], '
        '"age": 20}, {"names": ["baz"], "ratings": 6.0}]}', 400, error="Name: <unknown>, Feature: x (data type: float) "
        "is required but could not be found.", substring=True,
        difference=Difference(NO_CLASSIFY, 501, error="kerasformer-serve does not run classify signatures",
                              substring=True)),
    Row(TEST + "ClassifyRegressRequestTest.RequestWithContextAndSignature (regress)", "POST", REGRESS,
        '{"signature_name": "regress_x_to_y", "context": {"query": "pizza", "location": ["sfo"]}, "examples": ['
        '{"names": ["foo", "bar"], "ratings": [8.0, 9.0, NaN, Infinity], "age": 20}, '
        '{"names": ["baz", {"b64": "aGVsbG8="}], "ratings": 6.0, "intboolmix": [1, true, false]}, '
        '{"names": "bar", "ratings": -Infinity}]}', 400,
        error="Feature: x (data type: float) is required but could not be found.", substring=True,
        difference=Difference(NO_CLASSIFY, 501, error="kerasformer-serve does not run regress signatures",
                              substring=True)),
    error("ClassifyRegressRequestTest.JsonErrors (signature_name)",
          '{"signature_name": [ "hello" ], "examples": [ { "names": [ "foo", "bar" ] } ]}', 400,
          'JSON Value: {\n    "signature_name": ["hello"],\n    "examples": [{\n            "names": ["foo", "bar"]\n'
          "        }]\n} not formatted correctly. 'signature_name' key must be a string value.", path=CLASSIFY),
    error("ClassifyRegressRequestTest.JsonErrors (context)", '{"context": [ { "names": [ "foo", "bar" ] } ]}', 400,
          "Example must be JSON object but got JSON Array", path=REGRESS),
    error("ClassifyRegressRequestTest.JsonErrors (examples object)", '{"examples": { "names": [ "foo", "bar" ] }}', 400,
          'JSON Value: {\n    "examples": {\n        "names": ["foo", "bar"]\n    }\n} Expecting \'examples\' value to be '
          "an list/array", path=CLASSIFY),
    error("ClassifyRegressRequestTest.JsonErrors (example list)", '{"examples": [ [ { "names": [ "foo", "bar" ] } ] ]}',
          400, "Example must be JSON object but got JSON Array", path=REGRESS),
    error("ClassifyRegressRequestTest.JsonErrors (null)", '{"examples": [ { "names": [ 10, null ] } ]}', 400,
          "Feature: names has element with unexpected JSON type: Null", path=CLASSIFY),
    error("ClassifyRegressRequestTest.JsonErrors (int then float)", '{"examples": [ { "names": [ 10, 10.0 ] } ]}', 400,
          "Unexpected element type in feature: names expecting type: int64", path=REGRESS),
    error("ClassifyRegressRequestTest.JsonErrors (object)", '{"examples": [ { "names": [ 10, { "test": 10 } ] } ]}', 400,
          "Feature: names has element with unexpected JSON type: Object", path=CLASSIFY),
    error("ClassifyRegressRequestTest.JsonErrors (nested list)", '{"examples": [ { "names": [ [10], 20 ] } ]}', 400,
          "Feature: names has element with unexpected JSON type: Array", path=REGRESS),
    error("ClassifyRegressRequestTest.JsonErrors (uint64)", '{"examples": [ { "names": [ 20, 18446744073709551603 ] } ]}',
          400, "Feature: names has uint64_t element. Only int64_t is supported.", path=CLASSIFY),
    # MakeJsonFromTensors.StatusError: MakeJsonFromStatus escapes the message's quotes.
    Row(TEST + "MakeJsonFromTensors.StatusError (double quotes)", "POST", PREDICT,
        '{"signature_name": "key", "instances": [1]}', 400,
        error='Serving signature name: "key" not found in signature def',
        answer_text='{\n    "error": "Serving signature name: \\"key\\" not found in signature def"\n}'),
    Row(TEST + "MakeJsonFromTensors.StatusError (single quotes)", "POST", PREDICT, '{"key": [1]}', 400,
        error="Missing 'inputs' or 'instances' key",
        answer_text='{\n    "error": "Missing \'inputs\' or \'instances\' key"\n}'),
]

# The tests that make no request: they call a writer directly with values no served model of
# ours produces through a request. Not rows; listed so the count says what is left out.
NOT_REQUESTS = {
    "ClassifyRegressnResultTest.JsonFromClassificationResult": "writes a ClassificationResult; ours runs no classifier",
    "ClassifyRegressnResultTest.JsonFromRegressionResult": "writes a RegressionResult; ours runs no regressor",
    "ClassifyRegressnResultTest.JsonFromRegressionResultWithNonFinite": "as above",
    "ClassifyRegressnResultTest.JsonFromResultErrors": "empty results, which no request produces",
    "MakeJsonFromTensors.StatusOK": "an OK status writes nothing; every answer above shows it",
}


def source(function, note):
    return f"json_tensor.cc: {function} ({note})"


SOURCE_ROWS = [
    # ParseJson: RapidJSON's texts and offsets; what it accepts beyond JSON.
    Row(source("ParseJson", "error offset"), "POST", PREDICT, '{"instances": [1,]}', 400,
        error="JSON Parse error: Invalid value. at offset: 17"),
    Row(source("ParseJson", "unclosed object"), "POST", PREDICT, '{"instances": [1]', 400,
        error="JSON Parse error: Missing a comma or '}' after an object member. at offset: 17"),
    Row(source("ParseJson", "whitespace only"), "POST", PREDICT, "  \n", 400,
        error="JSON Parse error: The document is empty. at offset: 3"),
    Row(source("ParseJson", "kParseStopWhenDoneFlag: text after the object is ignored"), "POST", PREDICT,
        '{"instances": [7]} trailing words', 200, answer={"predictions": [7]}),
    Row(source("ParseJson", "a byte order mark is skipped"), "POST", PREDICT, b'\xef\xbb\xbf{"instances": [7]}', 200,
        answer={"predictions": [7]}),
    Row(source("ParseJson", "kParseNanAndInfFlag: Inf, -Inf"), "POST", PREDICT,
        '{"signature_name": "double", "instances": [Inf, -Inf, -Infinity]}', 200,
        answer_text=predictions_row_text("Infinity", "-Infinity", "-Infinity")),
    Row(source("ParseJson", "a lone surrogate escape is an error"), "POST", PREDICT,
        '{"signature_name": "string", "instances": ["\\ud800"]}', 400,
        error="JSON Parse error: The surrogate pair in string is invalid. at offset: 44"),
    Row(source("ParseJson", "a number past the double range"), "POST", PREDICT,
        '{"signature_name": "double", "instances": [1e309]}', 400,
        error="JSON Parse error: Number too big to be stored in double. at offset: 43"),
    Row(source("ParseJson", "not an object"), "POST", PREDICT, '["instances", 1]', 400,
        error='JSON Value: ["instances", 1] Is not object'),
    # The request's keys.
    Row(source("FillPredictRequestFromJson", "other keys are ignored"), "POST", PREDICT,
        '{"instances": [7], "options": {"beam": 4}}', 200, answer={"predictions": [7]}),
    Row(source("FillPredictRequestFromJson", "neither key"), "POST", PREDICT, "{}", 400,
        error="Missing 'inputs' or 'instances' key"),
    Row(source("FillPredictRequestFromJson", "instances not a list"), "POST", PREDICT, '{"instances": 7}', 400,
        error="JSON Value: {\n    \"instances\": 7\n} Expecting 'instances' to be an list/array"),
    Row(source("FillPredictRequestFromJson", "no instances"), "POST", PREDICT, '{"instances": []}', 400,
        error="JSON Value: {\n    \"instances\": []\n} No values in 'instances' array"),
    Row(source("GetInfoMap", 'signature_name "" is serving_default'), "POST", PREDICT,
        '{"signature_name": "", "instances": [7]}', 200, answer={"predictions": [7]}),
    Row(source("GetInfoMap", "the model is looked up after the body parses"), "POST", "/v1/models/nope:predict",
        '{"instances": [7', 400, error="JSON Parse error: Missing a comma or ']' after an array element. at offset: 16"),
    Row(source("GetInfoMap", "an unknown model"), "POST", "/v1/models/nope:predict", '{"instances": [7]}', 404,
        error="Servable not found for request: Latest(nope)"),
    Row(source("FillPredictRequestFromJson", "a signature without inputs"), "POST",
        "/v1/models/saved_model_counter:predict", '{"signature_name": "get_counter", "instances": [1]}', 400,
        error="Failed to get input map for signature: get_counter"),
    # Row format.
    Row(source("FillTensorMapFromInstancesList", "an instance lacks an input"), "POST", PREDICT,
        '{"signature_name": "int_str", "instances": [{"int_tensor": 1}]}', 400,
        error="Failed to process element: 0 of 'instances' list. JSON object: {\n    \"int_tensor\": 1\n} keys must be "
              "equal to: int_tensor,str_tensor"),
    Row(source("AddInstanceItem", "an instance has an unknown key"), "POST", PREDICT,
        '{"signature_name": "int_str", "instances": [{"int_tensor": 1, "str_tensor": "a", "extra": 2}]}', 400,
        error=element_error(0, "JSON object: does not have named input: extra", key="extra")),
    Row(source("FillTensorMapFromInstancesList", "a plain list for two inputs"), "POST", PREDICT,
        '{"signature_name": "int_str", "instances": [1, 2]}', 400,
        error="instances is a plain list, but expecting list of objects as multiple input tensors required as per "
              "tensorinfo_map"),
    Row(source("FillTensorMapFromInstancesList", "a scalar per instance makes a vector"), "POST", PREDICT,
        '{"signature_name": "int_str", "instances": [{"int_tensor": 1, "str_tensor": "a"}, '
        '{"int_tensor": 2, "str_tensor": "b"}]}', 200,
        answer={"predictions": [{"int_tensor": 1, "str_tensor": "a"}, {"int_tensor": 2, "str_tensor": "b"}]}),
    Row(source("FillTensorMapFromInstancesList", "one-input object instances"), "POST", PREDICT,
        '{"instances": [{"default": [1, 2]}, {"default": [3, 4]}]}', 200, answer={"predictions": [[1, 2], [3, 4]]}),
    # Columnar format.
    Row(source("FillTensorMapFromInputsMap", "every input is required"), "POST", PREDICT,
        '{"signature_name": "int_str", "inputs": {"int_tensor": [1]}}', 400,
        error="Missing named input: str_tensor in 'inputs' object."),
    Row(source("FillTensorMapFromInputsMap", "extra keys are ignored"), "POST", PREDICT,
        '{"signature_name": "int_str", "inputs": {"int_tensor": [1], "str_tensor": ["a"], "extra": 3}}', 200,
        answer={"outputs": {"int_tensor": [1], "str_tensor": ["a"]}}),
    Row(source("FillTensorMapFromInputsMap", "a bare value for two inputs"), "POST", PREDICT,
        '{"signature_name": "int_str", "inputs": [1]}', 400,
        error="inputs is a plain value/list, but expecting an object as multiple input tensors required as per "
              "tensorinfo_map"),
    Row(source("FillTensorMapFromInputsMap", "a scalar stays a scalar"), "POST", PREDICT, '{"inputs": 7}', 200,
        answer_text='{\n    "outputs": 7\n}'),
    # Values.
    Row(source("AddValueToTensor", "an integer past int32"), "POST", PREDICT, '{"inputs": [2147483648]}', 400,
        error="JSON Value: 2147483648 Type: Number is not of expected type: int32"),
    Row(source("AddValueToTensor", "a float for an integer"), "POST", PREDICT, '{"inputs": [1.0]}', 400,
        error="JSON Value: 1.0 Type: Number is not of expected type: int32"),
    Row(source("AddValueToTensor", "a boolean for an integer"), "POST", PREDICT, '{"inputs": [true]}', 400,
        error="JSON Value: true Type: True is not of expected type: int32"),
    Row(source("AddValueToTensor", "an integer for a boolean"), "POST", PREDICT,
        '{"signature_name": "bool", "inputs": [1]}', 400, error="JSON Value: 1 Type: Number is not of expected type: bool"),
    Row(source("AddValueToTensor", "booleans"), "POST", PREDICT, '{"signature_name": "bool", "inputs": [true, false]}',
        200, answer={"outputs": [True, False]}),
    Row(source("AddValueToTensor", "null"), "POST", PREDICT, '{"signature_name": "double", "inputs": [null]}', 400,
        error="JSON Value: null Type: Null is not of expected type: double"),
    Row(source("AddValueToTensor", "int64 range"), "POST", PREDICT,
        '{"signature_name": "int64", "inputs": [-9223372036854775808, 9223372036854775807]}', 200,
        answer={"outputs": [-9223372036854775808, 9223372036854775807]}),
    Row(source("AddValueToTensor", "past int64"), "POST", PREDICT,
        '{"signature_name": "int64", "inputs": [9223372036854775808]}', 400,
        error="JSON Value: 9223372036854775808 Type: Number is not of expected type: int64"),
    Row(source("AddValueToTensor", "uint64 range"), "POST", PREDICT,
        '{"signature_name": "uint64", "inputs": [18446744073709551615]}', 200,
        answer={"outputs": [18446744073709551615]}),
    Row(source("AddValueToTensor", "a negative uint32"), "POST", PREDICT,
        '{"signature_name": "uint32", "inputs": [-1]}', 400,
        error="JSON Value: -1 Type: Number is not of expected type: uint32"),
    Row(source("AddValueToTensor", "DT_UINT8 takes any int32 and wraps"), "POST", PREDICT,
        '{"signature_name": "uint8", "inputs": [300, -1]}', 200, answer={"outputs": [44, 255]}),
    Row(source("AddValueToTensor", "a number for a string"), "POST", PREDICT, '{"signature_name": "string", "inputs": [1]}',
        400, error="JSON Value: 1 Type: Number is not of expected type: string"),
    Row(source("AddValueToTensor", "an unconvertible dtype, columnar"), "POST", PREDICT,
        '{"signature_name": "half", "inputs": [1.5]}', 501, error="Conversion of JSON Value: 1.5 to type: half"),
    Row(source("AddValueToTensor", "an unconvertible dtype, row format"), "POST", PREDICT,
        '{"signature_name": "half", "instances": [1.5]}', 400,
        error="Failed to process element: 0 of 'instances' list. Error: UNIMPLEMENTED: Conversion of JSON Value: 1.5 "
              "to type: half"),
    Row(source("FillTensorProto", "an object for a number"), "POST", PREDICT, '{"inputs": [{"b64": "AA=="}]}', 400,
        error='JSON Value: {\n    "b64": "AA=="\n} Type: Object is not of expected type: int32'),
    Row(source("JsonDecodeBase64Object", "not a b64 object"), "POST", PREDICT,
        '{"signature_name": "string", "inputs": [{"b64": "AA==", "x": 1}]}', 400,
        error='JSON Value: {\n    "b64": "AA==",\n    "x": 1\n} not formatted correctly for base64 data'),
    Row(source("JsonDecodeBase64Object", "not base64"), "POST", PREDICT,
        '{"signature_name": "string", "inputs": [{"b64": "A"}]}', 400, error="Unable to base64 decode"),
    Row(source("JsonDecodeBase64Object", "absl's Base64Unescape: padding optional"), "POST", PREDICT,
        '{"signature_name": "bytes_output", "inputs": [{"b64": "aGk"}]}', 200,
        answer={"outputs": [{"b64": "aGk="}]}),
    Row(source("FillTensorProto", "a value above its level"), "POST", PREDICT, '{"inputs": [[1, 2], 3]}', 400,
        error="JSON Value: 3 found at incorrect level: 2 in the JSON DOM. Expected at level: 2"),
    Row(source("FillTensorProto", "a list below its level"), "POST", PREDICT, '{"inputs": [1, [2]]}', 400,
        error="Encountered list at unexpected level: 1 expected < 1"),
    Row(source("FillTensorProto", "a list of another length"), "POST", PREDICT, '{"inputs": [[1, 2], [3]]}', 400,
        error="Encountered list at unexpected size: 1 at level: 1 expected size: 2"),
    Row(source("MakeJsonFromTensors", "strings are written byte for byte, UTF-8 or not"), "POST", PREDICT,
        '{"signature_name": "string", "inputs": ["caf\\u00e9", {"b64": "/w=="}]}', 200,
        answer_text=b'{\n    "outputs": [\n        "caf\xc3\xa9",\n        "\xff"\n    ]\n}'),
    Row(source("WriteDecimal", "float32 six digits or nine"), "POST", PREDICT,
        '{"signature_name": "float", "instances": [0.1, 0.3, 16777217, 1e-45, 3.4028235e38]}', 200,
        answer_text=predictions_row_text("0.1", "0.3", "16777216.0", "1.4013e-45", "3.40282347e+38")),
    Row(source("WriteDecimal", "float64 six digits or seventeen"), "POST", PREDICT,
        '{"signature_name": "double", "instances": [0.1, 0.30000000000000004, 1e100, 123456789]}', 200,
        answer_text=predictions_row_text("0.1", "0.30000000000000004", "1e+100", "123456789.0")),
    # The kerasformer export: every input required over REST, whatever the format.
    Row(source("FillTensorMapFromInstancesList", "kerasformer serving_default, plain list"), "POST",
        f"/v1/models/{REAL_EXPORT_MODEL}:predict", '{"instances": ["Jesus wept."]}', 200),
    Row(source("FillTensorMapFromInputsMap", "kerasformer serving_default, bare list"), "POST",
        f"/v1/models/{REAL_EXPORT_MODEL}:predict", '{"inputs": ["Jesus wept."]}', 200),
    Row(source("FillTensorMapFromInstancesList", "kerasformer translate_max_length needs max_length in every instance"),
        "POST", f"/v1/models/{REAL_EXPORT_MODEL}:predict",
        '{"signature_name": "translate_max_length", "instances": [{"text": "Jesus wept."}]}', 400,
        error="Failed to process element: 0 of 'instances' list. JSON object: {\n    \"text\": \"Jesus wept.\"\n} keys "
              "must be equal to: max_length,text"),
    Row(source("FillTensorMapFromInputsMap", "kerasformer translate_max_length needs max_length"), "POST",
        f"/v1/models/{REAL_EXPORT_MODEL}:predict",
        '{"signature_name": "translate_max_length", "inputs": {"text": ["Jesus wept."]}}', 400,
        error="Missing named input: max_length in 'inputs' object."),
    Row(source("FillTensorMapFromInstancesList", "kerasformer translate_max_length, plain list"), "POST",
        f"/v1/models/{REAL_EXPORT_MODEL}:predict", '{"signature_name": "translate_max_length", "instances": ["a"]}', 400,
        error="instances is a plain list, but expecting list of objects as multiple input tensors required as per "
              "tensorinfo_map"),
    Row(source("AddValueToTensor", "kerasformer max_length must be an int32"), "POST",
        f"/v1/models/{REAL_EXPORT_MODEL}:predict",
        '{"signature_name": "translate_max_length", "instances": [{"text": "a", "max_length": 2.5}]}', 400,
        error=element_error(0, "JSON Value: 2.5 Type: Number is not of expected type: int32", key="max_length")),
]


@pytest.mark.parametrize("row", ROWS, ids=row_id)
def test_json_tensor_test_rows(real_export_server, row):
    check_row(real_export_server.url, row)


@pytest.mark.parametrize("row", SOURCE_ROWS, ids=row_id)
def test_json_tensor_source_rows(real_export_server, row):
    check_row(real_export_server.url, row)


def test_summary(capsys):
    """The counts the README reports (run with -s to see them)."""
    assert len({row.source for row in ROWS}) == len(ROWS)
    with capsys.disabled():
        print("\n" + summary("json_tensor_test.cc", ROWS))
        print(summary("json_tensor.cc rules beyond its tests", SOURCE_ROWS, "rows from its source"))
        print(f"json_tensor_test.cc tests with no request to send: {len(NOT_REQUESTS)} "
              f"({', '.join(sorted(NOT_REQUESTS))})")
