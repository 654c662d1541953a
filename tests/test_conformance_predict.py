"""Conformance with servables/tensorflow/predict_util.cc: rows from TensorFlow Serving's
servables/tensorflow/predict_util_test.cc.

The real tests call RunPredict in-process with a PredictRequest (TensorProtos) on TensorFlow's
half_plus_two and on the saved_model_counter model (rebuilt by tests/conformance.py). CALLS do
the same here: the SignatureDef and TensorProtos go through kerasformer.export.serving.predict (the rules
REST and gRPC share), then the model runs (kerasformer.export.serving.model_repository.LoadedModel, as the
server runs it), then the output filter applies. The gRPC suite sends these requests over
loopback too. REST_ROWS send what REST can say of the same requests to kerasformer-serve: the
answers where REST reaches RunPredict, and json_tensor.cc's refusals where REST stops earlier.
"""

import dataclasses
import os

import numpy as np
import pytest
from conformance import COUNTER_MODEL, HALF_PLUS_TWO_MODEL, Row, check_row, conformance_server, model_base, row_id, \
    summary  # noqa: F401  (conformance_server is a fixture)
from tensorflow.core.framework import tensor_pb2, types_pb2

from kerasformer.export.serving import predict
from kerasformer.export.serving.status import StatusError

pytestmark = pytest.mark.backend_independent  # see tests/run.sh

TEST = "predict_util_test.cc: PredictImplTest."
SIZE_MISMATCH = ("input size does not match signature: 0!=1 len({}) != len({x}). Sent extra: {}. Missing but "
                 "required: {x}.")


def tensor(dtype, values, shape=None):
    """A TensorProto as the real tests build one: dtype, values in the typed field, and a shape
    only when given (none means a scalar)."""
    proto = tensor_pb2.TensorProto(dtype=dtype)
    field = {types_pb2.DT_FLOAT: "float_val", types_pb2.DT_STRING: "string_val", types_pb2.DT_BOOL: "bool_val"}[dtype]
    getattr(proto, field).extend(values)
    for size in shape or ():
        proto.tensor_shape.dim.add(size=size)
    return proto


@dataclasses.dataclass(frozen=True)
class Call:
    """One RunPredict call of a real test: the request and what the real server answers (a
    status code and error text, or the output values)."""

    source: str
    model: str
    inputs: dict
    signature: str = ""
    output_filter: tuple = ()
    code: str = "OK"
    error: str | None = None
    outputs: dict | None = None
    method_name: str | None = None  # replaces the SignatureDef's method_name, as MethodNameCheck does
    method_name_check: bool = False


X_2 = {"x": tensor(types_pb2.DT_FLOAT, [2.0])}
COUNTER_SEQUENCE = "PredictionWithCustomizedSignatures"

CALLS = [
    Call(TEST + "MissingOrEmptyModelSpec (three requests, none with inputs)", HALF_PLUS_TWO_MODEL, {},
         code="INVALID_ARGUMENT", error=SIZE_MISMATCH),
    Call(TEST + "EmptyInputList", HALF_PLUS_TWO_MODEL, {}, code="INVALID_ARGUMENT", error=SIZE_MISMATCH),
    Call(TEST + "InputTensorsDontMatchModelSpecInputs", HALF_PLUS_TWO_MODEL,
         {"unknown_key1": tensor(types_pb2.DT_STRING, [b"any_value"], [1]),
          "unknown_key2": tensor(types_pb2.DT_FLOAT, [1.0], [1])},
         code="INVALID_ARGUMENT",
         error="input size does not match signature: 2!=1 len({unknown_key1,unknown_key2}) != len({x}). Sent extra: "
               "{unknown_key1,unknown_key2}. Missing but required: {x}."),
    Call(TEST + "PredictionInvalidTensor", HALF_PLUS_TWO_MODEL, {"x": tensor(types_pb2.DT_BOOL, [True])},
         code="INVALID_ARGUMENT", error="Expects arg[0] to be float but bool is provided"),
    Call(TEST + "OutputFiltersDontMatchModelSpecOutputs (unknown alias)", HALF_PLUS_TWO_MODEL, X_2,
         output_filter=("output_filter",), code="INVALID_ARGUMENT",
         error="output tensor alias not found in signature: output_filter Outputs expected to be in the set {y}."),
    Call(TEST + "OutputFiltersDontMatchModelSpecOutputs (y)", HALF_PLUS_TWO_MODEL, X_2, output_filter=("y",),
         outputs={"y": np.float32(3.0)}),
    Call(TEST + "OutputFiltersDontMatchModelSpecOutputs (y twice)", HALF_PLUS_TWO_MODEL, X_2, output_filter=("y", "y"),
         code="INVALID_ARGUMENT", error="duplicate output tensor alias: y"),
    Call(TEST + "InputTensorsHaveWrongType", HALF_PLUS_TWO_MODEL,
         {"x": tensor(types_pb2.DT_STRING, [b"any_value"], [1])}, output_filter=("y",), code="INVALID_ARGUMENT",
         error="Expects arg[0] to be float but string is provided"),
    Call(TEST + "PredictionSuccess", HALF_PLUS_TWO_MODEL, X_2, outputs={"y": np.float32(3.0)}),
    Call(TEST + "PredictionWithNamedRegressionSignature", HALF_PLUS_TWO_MODEL,
         {"inputs": tensor(types_pb2.DT_FLOAT, [2.0])}, signature="regress_x2_to_y3", outputs={"outputs": np.float32(4.0)}),
    Call(TEST + "PredictionWithNamedClassificationSignature", HALF_PLUS_TWO_MODEL,
         {"inputs": tensor(types_pb2.DT_FLOAT, [2.0])}, signature="classify_x2_to_y3", outputs={"scores": np.float32(4.0)}),
    # Stateful: in this order, on a counter that starts at 0.
    Call(TEST + COUNTER_SEQUENCE + " (get_counter)", COUNTER_MODEL, {}, signature="get_counter",
         outputs={"output": np.float32(0.0)}),
    Call(TEST + COUNTER_SEQUENCE + " (incr_counter)", COUNTER_MODEL, {}, signature="incr_counter",
         outputs={"output": np.float32(1.0)}),
    Call(TEST + COUNTER_SEQUENCE + " (reset_counter)", COUNTER_MODEL, {}, signature="reset_counter",
         outputs={"output": np.float32(0.0)}),
    Call(TEST + COUNTER_SEQUENCE + " (incr_counter, output filter)", COUNTER_MODEL, {}, signature="incr_counter",
         output_filter=("output",), outputs={"output": np.float32(1.0)}),
    Call(TEST + COUNTER_SEQUENCE + " (incr_counter_by 3)", COUNTER_MODEL, {"delta": tensor(types_pb2.DT_FLOAT, [3.0])},
         signature="incr_counter_by", outputs={"output": np.float32(4.0)}),
    Call(TEST + "ThreadPoolOptions (the answer; thread pools are TensorFlow's)", HALF_PLUS_TWO_MODEL, X_2,
         outputs={"y": np.float32(3.0)}),
    Call(TEST + "MethodNameCheck (check on, predict method)", HALF_PLUS_TWO_MODEL, X_2,
         method_name="tensorflow/serving/predict", method_name_check=True, outputs={"y": np.float32(3.0)}),
    Call(TEST + "MethodNameCheck (check on, other method)", HALF_PLUS_TWO_MODEL, X_2, method_name="not/supported/method",
         method_name_check=True, code="INTERNAL",
         error="Expected prediction signature method_name to be one of {tensorflow/serving/predict, "
               "tensorflow/serving/classify, tensorflow/serving/regress}. Was: not/supported/method"),
    Call(TEST + "MethodNameCheck (check off, predict method)", HALF_PLUS_TWO_MODEL, X_2,
         method_name="tensorflow/serving/predict", outputs={"y": np.float32(3.0)}),
    Call(TEST + "MethodNameCheck (check off, other method)", HALF_PLUS_TWO_MODEL, X_2, method_name="not/supported/method",
         outputs={"y": np.float32(3.0)}),
]

# predict_util_test.cc tests that are no call to make: the test itself returns early in
# TensorFlow Serving's open-source build.
NOT_RUN = {TEST + "ModelMissingSignatures": "returns at once when IsTensorflowServingOSS() (bad_half_plus_two is "
                                            "Google-internal test data)"}


def run_predict(models, call):
    """RunPredict as the real test calls it: (status code, error text or {alias: np.ndarray})."""
    from tensorflow.core.protobuf import meta_graph_pb2

    model = models[call.model]
    try:
        signature = predict.find_signature(model.signature_defs, call.signature)
        if call.method_name is not None:  # as the test edits its copy of the MetaGraphDef
            signature = meta_graph_pb2.SignatureDef.FromString(signature.SerializeToString())
            signature.method_name = call.method_name
        feeds, _ = predict.preprocess(signature, call.inputs, call.output_filter, call.method_name_check)
        outputs = model.run(call.signature or "serving_default", feeds)
        return "OK", predict.select_outputs(signature, outputs, call.output_filter)
    except StatusError as error:
        return error.code, error.message


@pytest.fixture(scope="module")
def models():
    from kerasformer.export.serving.model_repository import LoadedModel

    base = model_base()
    return {name: LoadedModel(name, version, os.path.join(base, name, str(version)))
            for name, version in ((HALF_PLUS_TWO_MODEL, 123), (COUNTER_MODEL, 1))}


def test_predict_util_test_calls(models):
    """Every call in order (the counter's are stateful); each answers as the real server does."""
    problems = []
    for call in CALLS:
        code, answer = run_predict(models, call)
        if code != call.code:
            problems.append(f"{call.source}: {code} {answer!r}, expected {call.code} {call.error!r}")
        elif call.error is not None and answer != call.error:
            problems.append(f"{call.source}: {answer!r}, expected {call.error!r}")
        elif call.outputs is not None and (answer.keys() != call.outputs.keys() or not all(
                np.asarray(answer[k]).dtype == np.asarray(v).dtype and np.asarray(answer[k]).shape == np.shape(v)
                and np.array_equal(answer[k], v) for k, v in call.outputs.items())):
            problems.append(f"{call.source}: {answer!r}, expected {call.outputs!r}")
    assert not problems, "\n".join(problems)


def test_defaults_are_honoured_by_predict_only():
    """GetInputValues fills a SignatureDef default (gRPC); json_tensor.cc never lets REST rely
    on one. The texts of the three cases defaults make reachable."""
    from kerasformer.export.serving.rest_codec import SignatureSpec, TensorSpec

    signature = SignatureSpec("s", {"text": TensorSpec("DT_STRING", (-1,), "s_text:0"),
                                    "max_length": TensorSpec("DT_INT32", (-1,), "s_max_length:0"),
                                    "alpha": TensorSpec("DT_FLOAT", (), "s_alpha:0")},
                              {"y": TensorSpec("DT_STRING", (-1,))}, {"alpha": np.float32(0.6)})
    text = np.array([b"a"], dtype=object)
    feeds = predict.prepare_inputs(signature, {"text": text, "max_length": np.array([3], np.int32)})
    assert feeds["alpha"] == np.float32(0.6) and feeds["text"] is text
    with pytest.raises(StatusError) as error:
        predict.prepare_inputs(signature, {"text": text})
    assert error.value.message == (
        "Signature input alias: max_length(feed name: s_max_length:0) not found in request and no default value "
        "provided. Inputs expected to be in the request {text}, or default input alias set: alpha")
    with pytest.raises(StatusError) as error:
        predict.prepare_inputs(signature, {"text": text, "zzz": text})
    assert error.value.message == ("Signature input alias: max_length(feed name: s_max_length:0) not found in request "
                                   "and no default value provided. Inputs expected to be in the request {text,zzz}, or "
                                   "default input alias set: alpha")
    with pytest.raises(StatusError) as error:
        predict.prepare_inputs(signature, {"text": text, "max_length": np.array([3], np.int32), "zzz": text})
    assert error.value.message == "Inputs contains invalid name. Used request inputs: max_length,text, request input: " \
                                  "max_length,text,zzz"
    with pytest.raises(StatusError) as error:
        predict.prepare_inputs(signature, {"text": text, "max_length": np.array([3.0])})
    assert error.value.message == "Expects arg[1] to be int32 but double is provided"


def test_tensor_from_proto_follows_tensor_from_proto():
    """Tensor::FromProto: fewer values than the shape repeat the last, none give zeros, more are
    cut; a bad shape or content is "tensor parsing error"."""
    assert predict.tensor_from_proto("x", tensor(types_pb2.DT_FLOAT, [1.0, 2.0], [4])).tolist() == [1.0, 2.0, 2.0, 2.0]
    assert predict.tensor_from_proto("x", tensor(types_pb2.DT_FLOAT, [], [2])).tolist() == [0.0, 0.0]
    assert predict.tensor_from_proto("x", tensor(types_pb2.DT_FLOAT, [1.0, 2.0, 3.0], [2])).tolist() == [1.0, 2.0]
    assert predict.tensor_from_proto("x", tensor(types_pb2.DT_STRING, [b"a"], [2])).tolist() == [b"a", b"a"]
    scalar = predict.tensor_from_proto("x", tensor(types_pb2.DT_FLOAT, [2.0]))
    assert scalar.shape == () and scalar.dtype == np.float32
    content = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32, tensor_content=np.array([1, 2], "<i4").tobytes())
    content.tensor_shape.dim.add(size=2)
    assert predict.tensor_from_proto("x", content).tolist() == [1, 2]
    content.tensor_shape.dim[0].size = 3
    bad = [content, tensor(types_pb2.DT_FLOAT, [1.0], [-1]), tensor(types_pb2.DT_FLOAT, [1.0], [1] * 255),
           tensor_pb2.TensorProto()]
    for proto in bad:
        with pytest.raises(StatusError, match="^tensor parsing error: x$"):
            predict.tensor_from_proto("x", proto)


REST = f"/v1/models/{HALF_PLUS_TWO_MODEL}:predict"
REST_NOTE = " (over REST)"

REST_ROWS = [
    Row(TEST + "PredictionSuccess" + REST_NOTE, "POST", REST, '{"inputs": 2.0}', 200, answer={"outputs": 3.0},
        answer_text='{\n    "outputs": 3.0\n}'),
    Row(TEST + "PredictionWithNamedRegressionSignature" + REST_NOTE, "POST", REST,
        '{"signature_name": "regress_x2_to_y3", "inputs": 2.0}', 200, answer={"outputs": 4.0}),
    Row(TEST + "PredictionWithNamedClassificationSignature" + REST_NOTE, "POST", REST,
        '{"signature_name": "classify_x2_to_y3", "inputs": 2.0}', 200, answer={"outputs": 4.0}),
    # REST stops in json_tensor.cc before RunPredict sees these.
    Row(TEST + "EmptyInputList" + REST_NOTE, "POST", REST, '{"inputs": {}}', 400,
        error="Missing named input: x in 'inputs' object."),
    Row(TEST + "InputTensorsDontMatchModelSpecInputs" + REST_NOTE, "POST", REST,
        '{"inputs": {"unknown_key1": ["any_value"], "unknown_key2": [1.0]}}', 400,
        error="Missing named input: x in 'inputs' object."),
    Row(TEST + "PredictionInvalidTensor" + REST_NOTE, "POST", REST, '{"inputs": true}', 400,
        error="JSON Value: true Type: True is not of expected type: float"),
    Row(TEST + "InputTensorsHaveWrongType" + REST_NOTE, "POST", REST, '{"inputs": ["any_value"]}', 400,
        error='JSON Value: "any_value" Type: String is not of expected type: float'),
    Row(TEST + "PredictionWithCustomizedSignatures" + REST_NOTE, "POST", f"/v1/models/{COUNTER_MODEL}:predict",
        '{"signature_name": "incr_counter", "inputs": {}}', 400,
        error="Failed to get input map for signature: incr_counter"),
]


@pytest.mark.parametrize("row", REST_ROWS, ids=row_id)
def test_predict_util_rows_over_rest(conformance_server, row):
    check_row(conformance_server.url, row)


def test_summary(capsys):
    """The counts the README reports (run with -s to see them)."""
    with capsys.disabled():
        print(f"\npredict_util_test.cc: {len(CALLS)} RunPredict calls (test_predict_util_test_calls checks each "
              f"against the real server's answer); {len(NOT_RUN)} test not run in open source ({', '.join(NOT_RUN)})")
        print(summary("predict_util_test.cc over REST", REST_ROWS))
