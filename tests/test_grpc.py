"""kerasformer-serve's gRPC API (export/serving/grpc_server.py) through the stock client stubs.

Model repositories and gRPC servers run in this process on free ports; every request goes over a
real loopback channel with tensorflow-serving-api's `PredictionServiceStub` and
`ModelServiceStub`, as a client of `tensorflow_model_server --port=8500` sends it. Expected
answers and error texts are the real server's, read in tensorflow/serving's source (each test
names the file). `PREDICT_UTIL_ROWS` are the requests of servables/tensorflow/predict_util_test.cc
on the models that test uses (rebuilt by tests/conformance.py).

Models of the main server (a model config file's ModelServerConfig):
    fake      tests/serving_helpers.py's fake, versions 1 ("!") and 2 ("?2"), policy `all`,
              labels stable -> 1, canary -> 2
    defaults  serving_default with a batched input that has a SignatureDef default
              (`max_length`, default [3]), which only gRPC Predict fills in (predict_util.cc)
"""

import dataclasses
import os

import grpc
import numpy as np
import pytest
import tensorflow as tf
from conformance import COUNTER_MODEL, HALF_PLUS_TWO_MODEL, model_base
from google.protobuf import text_format
from serving_helpers import DEFAULT_MAX_LENGTH, ServerProcess, expected_translation, free_port, save_fake_model
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import error_codes_pb2
from tensorflow.python.tools import saved_model_utils
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from kerasformer.export.serving.grpc_server import start_grpc_server
from kerasformer.export.serving.model_repository import ModelRepository

pytestmark = pytest.mark.backend_independent  # see tests/run.sh

DEFAULT_LIMIT = 3  # the SignatureDef default of `defaults`' max_length


def save_model_with_default(path):
    """A SavedModel whose serving_default has `text` [batch] and `max_length` [batch] with the
    SignatureDef default [3]: TensorFlow writes `defaults` when a tf.function with an
    input_signature and a tensor default is saved as a signature.

    Outputs: kept = min(len(text), max_length) per row; limit = the max_length each row got
    (the default, of shape [1], broadcasts over the rows).
    """

    class WithDefault(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text"),
                                      tf.TensorSpec([None], tf.int32, name="max_length")])
        def serve(self, text, max_length=tf.constant([DEFAULT_LIMIT])):
            length = tf.strings.length(text)
            return {"kept": tf.minimum(length, max_length), "limit": max_length + tf.zeros_like(length)}

    module = WithDefault()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def model_server_config(text):
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


class Recorder:
    """A stand-in for kerasformer.export.serving.metrics.Metrics: keeps every `record` call."""

    def __init__(self):
        self.calls = []

    def record(self, model_name, api, entrypoint, status_code_name, seconds):
        self.calls.append((model_name, api, entrypoint, status_code_name, seconds))


class Served:
    """A repository on `config` and a gRPC server on it; `.predict`, `.models` (the stubs),
    `.metrics`, `.graph_calls` ((model, version, signature) of each graph run)."""

    def __init__(self, config, **repository_options):
        self.repository = ModelRepository(config=config, poll_seconds=0, **repository_options)
        self.repository.poll()
        self.graph_calls = []
        self.metrics = Recorder()
        port = free_port()
        self.server = start_grpc_server(self.repository, self._predict, port, host="127.0.0.1", metrics=self.metrics)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.predict = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def _predict(self, model, signature_name, inputs):
        self.graph_calls.append((model.name, model.version, signature_name))
        return model.run(signature_name, inputs)

    def stop(self):
        self.channel.close()
        self.server.stop(grace=None)
        self.repository.stop()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    base = tmp_path_factory.mktemp("grpc") / "saved_models"
    save_fake_model(base / "fake" / "1")
    save_fake_model(base / "fake" / "2", suffix="?2")
    save_model_with_default(base / "defaults" / "1")
    return base


def main_config(base):
    return model_server_config(f"""
        model_config_list {{
          config {{
            name: "fake" base_path: "{base / 'fake'}" model_platform: "tensorflow"
            model_version_policy {{ all {{}} }}
            version_labels {{ key: "stable" value: 1 }}
            version_labels {{ key: "canary" value: 2 }}
          }}
          config {{ name: "defaults" base_path: "{base / 'defaults'}" model_platform: "tensorflow" }}
        }}""")


@pytest.fixture(scope="module")
def served(base):
    # Labels name versions not loaded yet at start-up, which needs the real server's flag.
    served = Served(main_config(base), allow_version_labels_for_unavailable_models=True)
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture
def predict(served):
    return served.predict


@pytest.fixture
def models(served):
    return served.models


def predict_request(name="fake", signature_name=None, version=None, label=None, output_filter=(), **inputs):
    """A PredictRequest; each input an array (tf.make_tensor_proto) or a TensorProto as is."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if signature_name is not None:
        request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    for key, value in inputs.items():
        proto = value if isinstance(value, tensor_pb2.TensorProto) else tf.make_tensor_proto(value)
        request.inputs[key].CopyFrom(proto)
    request.output_filter.extend(output_filter)
    return request


def texts(*values):
    return np.array([v.encode() for v in values], dtype=object)


def outputs(response):
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def error_of(call, request):
    """(status code, details) of a call that must fail."""
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=60)
    return raised.value.code(), raised.value.details()


def signature_defs(path):
    return saved_model_utils.get_meta_graph_def(str(path), "serve").signature_def


# --- Predict ---


def test_predict_serving_default(predict):
    response = predict.Predict(predict_request(text=texts("Jesus wept.", "ok")), timeout=60)
    # MakeModelSpec (servables/tensorflow/util.cc): request's name, resolved signature, version run.
    assert response.model_spec.name == "fake"
    assert response.model_spec.signature_name == "serving_default"
    assert response.model_spec.version.value == 2
    answer = outputs(response)
    assert answer["translation"].tolist() == [expected_translation("Jesus wept.", "?2").encode(),
                                              expected_translation("ok", "?2").encode()]
    assert answer["length"].tolist() == [DEFAULT_MAX_LENGTH, 2]
    assert answer["tokens"][1, :2].tolist() == [ord("o"), ord("k")]


def test_predict_outputs_are_proto_fields(predict):
    """Tensor::AsProtoField (predict_util.cc PostProcessPredictionResult; the real server's
    default, --enable_serialization_as_tensor_content=false): values in string_val/int_val,
    never tensor_content, and the shape set."""
    response = predict.Predict(predict_request(text=texts("ab")), timeout=60)
    translation, length, tokens = (response.outputs[k] for k in ("translation", "length", "tokens"))
    assert translation.dtype == types_pb2.DT_STRING and list(translation.string_val) == [b"AB?2"]
    assert [d.size for d in translation.tensor_shape.dim] == [1]
    assert length.dtype == types_pb2.DT_INT32 and list(length.int_val) == [2]
    assert [d.size for d in tokens.tensor_shape.dim] == [1, 2] and list(tokens.int_val) == [ord("a"), ord("b")]
    assert not length.tensor_content and not tokens.tensor_content


def test_predict_by_version_and_label(predict):
    """ServerCore::ServableRequestFromModelSpec: a version, a label from the config's
    version_labels, or the newest version."""
    for spec, version, suffix in [({"version": 1}, 1, "!"), ({"version": 2}, 2, "?2"), ({"label": "stable"}, 1, "!"),
                                  ({"label": "canary"}, 2, "?2"), ({}, 2, "?2")]:
        response = predict.Predict(predict_request(text=texts("a"), **spec), timeout=60)
        assert response.model_spec.version.value == version
        assert outputs(response)["translation"].tolist() == [b"A" + suffix.encode()]
    assert error_of(predict.Predict, predict_request(version=3, text=texts("a"))) == (
        grpc.StatusCode.NOT_FOUND, "Servable not found for request: Specific(fake, 3)")
    assert error_of(predict.Predict, predict_request(label="nope", text=texts("a"))) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: nope")


def test_predict_named_signature(predict, served):
    response = predict.Predict(predict_request(signature_name="translate_max_length", text=texts("abcdef", "abcdef"),
                                               max_length=np.array([2, 4], dtype=np.int32)), timeout=60)
    assert response.model_spec.signature_name == "translate_max_length"
    assert outputs(response)["length"].tolist() == [2, 4]
    assert served.graph_calls[-1] == ("fake", 2, "translate_max_length")
    response = predict.Predict(predict_request(signature_name="translate_tokens",
                                               tokens=np.array([[5, 6, 0]], dtype=np.int32)), timeout=60)
    assert outputs(response)["tokens"].tolist() == [[6, 7]]


def test_predict_unknown_model(predict):
    assert error_of(predict.Predict, predict_request(name="nope", text=texts("a"))) == (
        grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)")


def test_predict_unknown_signature(predict):
    """predict_util.cc RunPredict: FAILED_PRECONDITION (REST's own lookup answers 400)."""
    assert error_of(predict.Predict, predict_request(signature_name="nope", text=texts("a"))) == (
        grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "nope" not found.')


def test_predict_missing_input(predict):
    """VerifyRequestInputsSize (predict_util.cc): a signature without defaults needs every input."""
    assert error_of(predict.Predict, predict_request(signature_name="translate_max_length", text=texts("a"))) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "input size does not match signature: 1!=2 len({text}) != len({max_length,text}). "
        "Sent extra: {}. Missing but required: {max_length}.")


def test_predict_unknown_input(predict):
    assert error_of(predict.Predict, predict_request(text=texts("a"), bogus=np.array([1], dtype=np.int32))) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "input size does not match signature: 2!=1 len({bogus,text}) != len({text}). "
        "Sent extra: {bogus}. Missing but required: {}.")


def test_predict_output_filter(predict):
    response = predict.Predict(predict_request(output_filter=["length"], text=texts("abc")), timeout=60)
    assert list(response.outputs) == ["length"] and outputs(response)["length"].tolist() == [3]
    assert error_of(predict.Predict, predict_request(output_filter=["nope"], text=texts("a"))) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "output tensor alias not found in signature: nope Outputs expected to be in the set "
        "{length,tokens,translation}.")


def test_predict_error_in_graph(predict):
    """An error the graph raises keeps TensorFlow's code (a failed assertion: INVALID_ARGUMENT)."""
    code, details = error_of(predict.Predict, predict_request(text=texts("__fail__")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "asked to fail" in details
    response = predict.Predict(predict_request(text=texts("still up")), timeout=60)
    assert outputs(response)["translation"].tolist() == [b"STILL UP?2"]


def test_predict_missing_model_spec_and_name(predict):
    """predict_impl.cc ("Missing ModelSpec") and ServerCore::ServableRequestFromModelSpec."""
    request = predict_pb2.PredictRequest()
    request.inputs["text"].CopyFrom(tf.make_tensor_proto(texts("a")))
    assert error_of(predict.Predict, request) == (grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    request.model_spec.signature_name = "serving_default"
    assert error_of(predict.Predict, request) == (grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified.")


def test_long_error_message_is_truncated(predict):
    """ToGRPCStatus (model_servers/grpc_status_util.cc): 1024 bytes, then "...TRUNCATED"."""
    name = "é" * 1500
    code, details = error_of(predict.Predict, predict_request(signature_name=name, text=texts("a")))
    full = f'Serving signature key "{name}" not found.'.encode()
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.encode() == full[:1023] + b"...TRUNCATED"  # byte 1024 would split a character


def test_predict_metrics(predict, served):
    """prediction_service_impl.cc records each Predict under its model with entrypoint GRPC."""
    start = len(served.metrics.calls)
    predict.Predict(predict_request(text=texts("a")), timeout=60)
    error_of(predict.Predict, predict_request(name="nope", text=texts("a")))
    calls = served.metrics.calls[start:]
    assert [call[:4] for call in calls] == [("fake", "Predict", "GRPC", "OK"), ("nope", "Predict", "GRPC", "NOT_FOUND")]
    assert all(call[4] >= 0 for call in calls)


# --- SignatureDef defaults: gRPC Predict fills them (predict_util.cc, cc/saved_model/util.cc) ---


def test_saved_signature_has_the_default(base):
    """The premise of the tests below: TensorFlow wrote `defaults` into the SignatureDef."""
    defaults = signature_defs(base / "defaults" / "1")["serving_default"].defaults
    assert set(defaults) == {"max_length"} and tf.make_ndarray(defaults["max_length"]).tolist() == [DEFAULT_LIMIT]


def test_default_fills_missing_input(predict):
    answer = outputs(predict.Predict(predict_request(name="defaults", text=texts("abcdef", "ab")), timeout=60))
    assert answer["kept"].tolist() == [DEFAULT_LIMIT, 2] and answer["limit"].tolist() == [DEFAULT_LIMIT] * 2
    # Given, the request's value is used.
    answer = outputs(predict.Predict(predict_request(name="defaults", text=texts("abcdef", "ab"),
                                                     max_length=np.array([5, 1], dtype=np.int32)), timeout=60))
    assert answer["kept"].tolist() == [5, 1]


def test_default_cannot_replace_an_input_without_one(predict, base):
    """saved_model::GetInputValues: an input with no default must be in the request."""
    feed = signature_defs(base / "defaults" / "1")["serving_default"].inputs["text"].name
    assert error_of(predict.Predict, predict_request(name="defaults", max_length=np.array([5], dtype=np.int32))) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"Signature input alias: text(feed name: {feed}) not found in request and no default value provided. "
        "Inputs expected to be in the request {max_length}, or default input alias set: max_length")


def test_default_with_an_unknown_input(predict):
    """With defaults, a request no larger than the signature passes VerifyRequestInputsSize;
    GetInputValues then finds the name it did not use."""
    assert error_of(predict.Predict, predict_request(name="defaults", text=texts("a"),
                                                     bogus=np.array([1], dtype=np.int32))) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Inputs contains invalid name. Used request inputs: text, request input: bogus,text")
    assert error_of(predict.Predict, predict_request(name="defaults", text=texts("a"),
                                                     max_length=np.array([1], dtype=np.int32),
                                                     bogus=np.array([1], dtype=np.int32))) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "input size does not match signature: 3!=2 len({bogus,max_length,text}) != len({max_length,text}). "
        "Sent extra: {bogus}. Missing but required: {}.")


# --- The requests of servables/tensorflow/predict_util_test.cc (PredictImplTest) ---
# Served as there: TensorFlow's half_plus_two version 123 and the counter model, each under the
# name "test_model" (kTestModelName) on its own server (GetServerCore(), GetServerCoreWithCounterModel()).

TEST_MODEL = "test_model"
TEST_VERSION = 123


def typed_tensor(*values, shape=None, dtype=types_pb2.DT_FLOAT):
    """A TensorProto as the real tests build one: typed values, and a shape only when given."""
    proto = tensor_pb2.TensorProto(dtype=dtype)
    if dtype == types_pb2.DT_FLOAT:
        proto.float_val.extend(values)
    elif dtype == types_pb2.DT_STRING:
        proto.string_val.extend(values)
    else:
        proto.bool_val.extend(values)
    if shape is not None:
        proto.tensor_shape.SetInParent()  # set also for a scalar, as mutable_tensor_shape() does
        for size in shape:
            proto.tensor_shape.dim.add(size=size)
    return proto


def half_plus_two_request(signature_name=None, version=TEST_VERSION, output_filter=(), **inputs):
    return predict_request(TEST_MODEL, signature_name, version, output_filter=output_filter, **inputs)


def scalar_answer(signature_name, output, value, version=TEST_VERSION):
    """The PredictResponse the real tests expect: model_spec as sent (signature resolved) and
    one float scalar output written by AsProtoField."""
    expected = predict_pb2.PredictResponse()
    expected.model_spec.name = TEST_MODEL
    expected.model_spec.version.value = version
    expected.model_spec.signature_name = signature_name
    expected.outputs[output].CopyFrom(typed_tensor(value, shape=()))
    return expected


@dataclasses.dataclass(frozen=True)
class Row:
    """One request of a real test: the real server's status code and error text (whole, or a
    part where `substring`, as the real test's HasSubstr), or its whole answer."""

    source: str
    request: predict_pb2.PredictRequest
    code: grpc.StatusCode = grpc.StatusCode.OK
    message: str | None = None
    answer: predict_pb2.PredictResponse | None = None
    substring: bool = False


PREDICT_UTIL_ROWS = [
    Row("predict_util_test.cc: PredictImplTest.MissingOrEmptyModelSpec (empty request)",
        predict_pb2.PredictRequest(), grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec"),
    Row("predict_util_test.cc: PredictImplTest.MissingOrEmptyModelSpec (no name)",
        predict_request(""), grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified."),
    # The unit test calls RunPredict on its model's session directly, so its wrong name is never
    # looked up and the empty inputs answer; through PredictionService the lookup comes first.
    Row("predict_util_test.cc: PredictImplTest.MissingOrEmptyModelSpec (wrong name, looked up first)",
        predict_request("test"), grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(test)"),
    Row("predict_util_test.cc: PredictImplTest.EmptyInputList",
        half_plus_two_request(), grpc.StatusCode.INVALID_ARGUMENT,
        "input size does not match signature: 0!=1 len({}) != len({x}). Sent extra: {}. Missing but required: {x}."),
    Row("predict_util_test.cc: PredictImplTest.InputTensorsDontMatchModelSpecInputs",
        half_plus_two_request(unknown_key1=typed_tensor(b"any_value", shape=[1], dtype=types_pb2.DT_STRING),
                              unknown_key2=typed_tensor(1.0, shape=[1])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "input size does not match signature: 2!=1 len({unknown_key1,unknown_key2}) != len({x}). "
        "Sent extra: {unknown_key1,unknown_key2}. Missing but required: {x}."),
    Row("predict_util_test.cc: PredictImplTest.PredictionInvalidTensor",
        half_plus_two_request(x=typed_tensor(True, dtype=types_pb2.DT_BOOL)), grpc.StatusCode.INVALID_ARGUMENT,
        "Expects arg[0] to be float but bool is provided", substring=True),
    Row("predict_util_test.cc: PredictImplTest.OutputFiltersDontMatchModelSpecOutputs (unknown alias)",
        half_plus_two_request(output_filter=["output_filter"], x=typed_tensor(2.0)), grpc.StatusCode.INVALID_ARGUMENT,
        "output tensor alias not found in signature: output_filter Outputs expected to be in the set {y}."),
    Row("predict_util_test.cc: PredictImplTest.OutputFiltersDontMatchModelSpecOutputs (filter y)",
        half_plus_two_request(output_filter=["y"], x=typed_tensor(2.0)),
        answer=scalar_answer("serving_default", "y", 3.0)),
    Row("predict_util_test.cc: PredictImplTest.OutputFiltersDontMatchModelSpecOutputs (duplicate alias)",
        half_plus_two_request(output_filter=["y", "y"], x=typed_tensor(2.0)), grpc.StatusCode.INVALID_ARGUMENT,
        "duplicate output tensor alias: y"),
    Row("predict_util_test.cc: PredictImplTest.InputTensorsHaveWrongType",
        half_plus_two_request(output_filter=["y"], x=typed_tensor(b"any_value", shape=[1], dtype=types_pb2.DT_STRING)),
        grpc.StatusCode.INVALID_ARGUMENT, "to be float but string is provided", substring=True),
    Row("predict_util_test.cc: PredictImplTest.PredictionSuccess",
        half_plus_two_request(x=typed_tensor(2.0)), answer=scalar_answer("serving_default", "y", 3.0)),
    Row("predict_util_test.cc: PredictImplTest.ThreadPoolOptions",
        half_plus_two_request(x=typed_tensor(2.0)), answer=scalar_answer("serving_default", "y", 3.0)),
    Row("predict_util_test.cc: PredictImplTest.PredictionWithNamedRegressionSignature",
        half_plus_two_request("regress_x2_to_y3", inputs=typed_tensor(2.0)),
        answer=scalar_answer("regress_x2_to_y3", "outputs", 4.0)),
    Row("predict_util_test.cc: PredictImplTest.PredictionWithNamedClassificationSignature",
        half_plus_two_request("classify_x2_to_y3", inputs=typed_tensor(2.0)),
        answer=scalar_answer("classify_x2_to_y3", "scores", 4.0)),
]


@pytest.fixture(scope="module")
def test_model_servers():
    """{"half_plus_two": Served, "counter": Served}, each serving its model as test_model."""
    base = model_base()
    servers = {}
    for key, folder, policy in [("half_plus_two", HALF_PLUS_TWO_MODEL, f"specific {{ versions: {TEST_VERSION} }}"),
                                ("counter", COUNTER_MODEL, "latest {}")]:
        servers[key] = Served(model_server_config(f"""
            model_config_list {{ config {{
              name: "{TEST_MODEL}" base_path: "{os.path.join(base, folder)}" model_platform: "tensorflow"
              model_version_policy {{ {policy} }} }} }}"""))
    try:
        yield servers
    finally:
        for served in servers.values():
            served.stop()


def check_row(stub, row):
    """Sends the row's request and asserts the real server's answer."""
    try:
        response, code, details = stub.Predict(row.request, timeout=60), grpc.StatusCode.OK, ""
    except grpc.RpcError as error:
        response, code, details = None, error.code(), error.details()
    assert code == row.code, f"{row.source}: {code} {details!r}"
    if row.message is not None:
        assert (row.message in details) if row.substring else (details == row.message), f"{row.source}: {details!r}"
    if row.answer is not None:
        assert response == row.answer, f"{row.source}: {response}"


@pytest.mark.parametrize("row", PREDICT_UTIL_ROWS, ids=[row.source.split(": ", 1)[1] for row in PREDICT_UTIL_ROWS])
def test_predict_util_row(test_model_servers, row):
    check_row(test_model_servers["half_plus_two"].predict, row)


def test_predict_util_customized_signatures(test_model_servers):
    """PredictImplTest.PredictionWithCustomizedSignatures: the counter model's signatures with no
    inputs or one, called in the real test's order, each answer compared whole."""
    stub = test_model_servers["counter"].predict
    version = test_model_servers["counter"].repository.get(TEST_MODEL).version
    for signature_name, output_filter, inputs, value in [
        ("get_counter", (), {}, 0.0), ("incr_counter", (), {}, 1.0), ("reset_counter", (), {}, 0.0),
        ("incr_counter", ("output",), {}, 1.0), ("incr_counter_by", (), {"delta": typed_tensor(3.0)}, 4.0),
    ]:
        request = predict_request(TEST_MODEL, signature_name, version, output_filter=output_filter, **inputs)
        assert stub.Predict(request, timeout=60) == scalar_answer(signature_name, "output", value, version)
    # ModelMissingSignatures (bad_half_plus_two, not in the open-source tests): no such signature.
    assert error_of(stub.Predict, predict_request(TEST_MODEL, version=version)) == (
        grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "serving_default" not found.')


# --- GetModelMetadata (get_model_metadata_impl.cc) ---


def metadata_request(name="fake", fields=("signature_def",), version=None, label=None):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.metadata_field.extend(fields)
    return request


def test_metadata(predict, base):
    response = predict.GetModelMetadata(metadata_request(), timeout=60)
    assert response.model_spec.name == "fake" and response.model_spec.version.value == 2
    assert response.model_spec.signature_name == ""
    signature_def_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_def_map)
    assert dict(signature_def_map.signature_def) == dict(signature_defs(base / "fake" / "2"))
    assert {"serving_default", "translate_max_length", "translate_tokens"} <= set(signature_def_map.signature_def)
    assert predict.GetModelMetadata(metadata_request(label="stable"), timeout=60).model_spec.version.value == 1


def test_metadata_errors(predict):
    assert error_of(predict.GetModelMetadata, metadata_request(fields=())) == (
        grpc.StatusCode.INVALID_ARGUMENT, "GetModelMetadataRequest must specify at least one metadata_field")
    assert error_of(predict.GetModelMetadata, metadata_request(fields=("signature_def", "other"))) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Metadata field other is not supported")
    assert error_of(predict.GetModelMetadata, metadata_request(name="nope")) == (
        grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)")
    assert error_of(predict.GetModelMetadata, metadata_request(version=9)) == (
        grpc.StatusCode.NOT_FOUND, "Servable not found for request: Specific(fake, 9)")
    assert error_of(predict.GetModelMetadata, get_model_metadata_pb2.GetModelMetadataRequest()) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")


# --- GetModelStatus (get_model_status_impl.cc) ---


def status_request(name="fake", version=None, label=None):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    return request


def test_model_status(models):
    response = models.GetModelStatus(status_request(), timeout=60)
    assert [status.version for status in response.model_version_status] == [2, 1]
    for status in response.model_version_status:
        assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
        assert status.status.error_code == error_codes_pb2.OK and status.status.error_message == ""
    by_version = models.GetModelStatus(status_request(version=1), timeout=60)
    assert list(by_version.model_version_status) == [response.model_version_status[1]]
    # A label selects nothing: GetModelStatusWithModelSpec looks only at `version`.
    assert models.GetModelStatus(status_request(label="stable"), timeout=60) == response


def test_model_status_errors(models):
    assert error_of(models.GetModelStatus, status_request(version=7)) == (
        grpc.StatusCode.NOT_FOUND, "Could not find version 7 of model fake")
    assert error_of(models.GetModelStatus, status_request(name="nope")) == (
        grpc.StatusCode.NOT_FOUND, "Could not find any versions of model nope")
    assert error_of(models.GetModelStatus, get_model_status_pb2.GetModelStatusRequest()) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")


# --- HandleReloadConfigRequest (model_service_impl.cc, ServerCore::ReloadConfig) ---


def test_reload_config(base, tmp_path):
    served = Served(model_server_config(f"""
        model_config_list {{ config {{ name: "fake" base_path: "{base / 'fake'}" model_platform: "tensorflow" }} }}"""))
    try:
        request = model_management_pb2.ReloadConfigRequest()
        assert error_of(served.models.HandleReloadConfigRequest, request) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "ServerModelConfig type not supported by HandleReloadConfigRequest. Only ModelConfigList is currently "
            "supported")
        # Version 1 joins and takes a label (both versions available once the config is in force).
        request.config.CopyFrom(model_server_config(f"""
            model_config_list {{ config {{
              name: "fake" base_path: "{base / 'fake'}" model_platform: "tensorflow"
              model_version_policy {{ all {{}} }} }} }}"""))
        request.metric_names.append(":tensorflow:serving:request_count")
        response = served.models.HandleReloadConfigRequest(request, timeout=120)
        assert response.status.error_code == error_codes_pb2.OK and response.status.error_message == ""
        assert [(m.name, m.int64_value_increase) for m in response.metric] == [(":tensorflow:serving:request_count", 0)]
        request.config.model_config_list.config[0].version_labels["stable"] = 1
        served.models.HandleReloadConfigRequest(request, timeout=120)
        answer = served.predict.Predict(predict_request(label="stable", text=texts("a")), timeout=60)
        assert answer.model_spec.version.value == 1
        # UpdateModelVersionLabelMap: only available versions take a label.
        request.config.model_config_list.config[0].version_labels["stable"] = 9
        assert error_of(served.models.HandleReloadConfigRequest, request) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "Request to assign label to version 9 of model fake, which is not currently available for inference")
        # WaitUntilModelsAvailable: a new model whose version fails to load fails the call.
        broken = tmp_path / "broken" / "1"
        broken.mkdir(parents=True)
        (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
        del request.config.model_config_list.config[0].version_labels["stable"]
        request.config.model_config_list.config.add(name="broken", base_path=str(tmp_path / "broken"),
                                                    model_platform="tensorflow")
        code, details = error_of(served.models.HandleReloadConfigRequest, request)
        assert code == grpc.StatusCode.UNKNOWN
        assert details.startswith("1 model(s) did not become available: {{{name: broken version: 1} due to error: ")
        assert details.endswith("}, }")
    finally:
        served.stop()


# --- Classify, Regress, MultiInference: refused as the real server refuses our signatures ---


def test_classify_and_regress(predict):
    """classifier.cc / regressor.cc, the signature checks with --enable_signature_method_name_check
    off (the default)."""
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "fake"
    # serving_default: one input, three outputs.
    assert error_of(predict.Classify, request) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                   "Expected one or two output Tensors, found 3")
    request.model_spec.signature_name = "translate_tokens"  # one input, two outputs, no "inputs" key
    code, details = error_of(predict.Classify, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith('No classification inputs found in SignatureDef: inputs {\n  key: "tokens"\n')
    request.model_spec.signature_name = "nope"
    assert error_of(predict.Classify, request) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                   "No signature was found with the name: nope")
    request.model_spec.name = "nope"
    assert error_of(predict.Classify, request) == (grpc.StatusCode.NOT_FOUND,
                                                   "Servable not found for request: Latest(nope)")
    regression = regression_pb2.RegressionRequest()
    regression.model_spec.name = "fake"
    assert error_of(predict.Regress, regression) == (grpc.StatusCode.INVALID_ARGUMENT, "Expected one output Tensor.")
    assert error_of(predict.Regress, regression_pb2.RegressionRequest()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                                             "Missing ModelSpec")


def test_classify_signature_that_passes_the_checks(test_model_servers):
    """half_plus_two's classify_x_to_y is a real classification signature: the real server runs
    it on tf.Examples; this one answers UNIMPLEMENTED."""
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = TEST_MODEL
    request.model_spec.signature_name = "classify_x_to_y"
    code, details = error_of(test_model_servers["half_plus_two"].predict.Classify, request)
    assert code == grpc.StatusCode.UNIMPLEMENTED and "use Predict" in details


def test_multi_inference(predict):
    """multi_inference_helper.cc and TensorFlowMultiInferenceRunner::Infer (multi_inference.cc)."""
    request = inference_pb2.MultiInferenceRequest()
    # No task: GetModelSpecFromRequest gives an empty ModelSpec.
    assert error_of(predict.MultiInference, request) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                         "ModelSpec has no name specified.")
    task = request.tasks.add(method_name="tensorflow/serving/predict")
    task.model_spec.name = "fake"
    assert error_of(predict.MultiInference, request) == (
        grpc.StatusCode.UNIMPLEMENTED, "Unsupported signature method_name: tensorflow/serving/predict")
    task.method_name = "tensorflow/serving/regress"
    assert error_of(predict.MultiInference, request) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                         "Expected one output Tensor.")
    task.model_spec.signature_name = "nope"
    assert error_of(predict.MultiInference, request) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                         "Requested signature not found in model graph: nope")


# --- kerasformer-serve's command line ---


def test_kerasformer_serve_answers_grpc_on_port(base, tmp_path):
    """`kerasformer-serve --port=P` (export/serving/server.py) serves this API, with batching on:
    the real server's flags, the stock stubs, one process."""
    process = ServerProcess(tmp_path, None, "--model_name=fake", f"--model_base_path={base / 'fake'}",
                            "--enable_batching")
    try:
        process.wait_until_ready()
        with grpc.insecure_channel(f"127.0.0.1:{process.grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            response = stub.Predict(predict_request(text=texts("ab", "c")), timeout=60)
            assert response.model_spec.version.value == 2
            assert outputs(response)["translation"].tolist() == [b"AB?2", b"C?2"]
            assert error_of(stub.Predict, predict_request(name="nope", text=texts("a"))) == (
                grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)")
            status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status_request(), timeout=60)
            assert [s.version for s in status.model_version_status] == [2]
    finally:
        process.stop()
