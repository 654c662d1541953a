"""kerasformer-serve's gRPC side: TensorFlow Serving's `PredictionService` and `ModelService`.

The services, messages and stubs are tensorflow-serving-api's own (`prediction_service.proto`,
`model_service.proto`), so the stock `PredictionServiceStub` and `ModelServiceStub` talk to this
server as they talk to `tensorflow_model_server --port=8500`. Each method follows the real
server's code, cited in its docstring, down to the error texts:

    PredictionService.Predict           model_servers/prediction_service_impl.cc,
                                        servables/tensorflow/predict_impl.cc, predict_util.cc
    PredictionService.GetModelMetadata  servables/tensorflow/get_model_metadata_impl.cc
    ModelService.GetModelStatus         model_servers/get_model_status_impl.cc
    PredictionService.Classify/Regress/MultiInference
                                        servables/tensorflow/classifier.cc, regressor.cc,
                                        multi_inference.cc: the signature checks that refuse
                                        every kerasformer signature, with the real texts; a
                                        signature that passes them gets UNIMPLEMENTED (this
                                        server runs no tf.Example classifiers or regressors).
    ModelService.HandleReloadConfigRequest
                                        model_servers/model_service_impl.cc, ServerCore::ReloadConfig
                                        (model_servers/server_core.cc): a ModelConfigList replaces
                                        the served config; anything else is refused as there.

Only gRPC Predict fills an input the request leaves out from the SignatureDef's `defaults`
(`VerifyRequestInputsSize` in predict_util.cc, `saved_model::GetInputValues` in TensorFlow's
cc/saved_model/util.cc); REST never does. Those rules live in `kerasformer.export.serving.predict`, shared
with REST.

Every error is an `absl::Status` there and a `StatusError` here: its code becomes the gRPC status
code of the same name and its message the details, cut to 1024 bytes plus "...TRUNCATED" as
`ToGRPCStatus` (model_servers/grpc_status_util.cc) cuts it.

Differences from the real server: a gRPC deadline does not stop a graph run already started
(the real server turns it into the session's run timeout); the client still gets
DEADLINE_EXCEEDED at its deadline from gRPC itself. There is no health-check or profiler service.
"""

import contextlib
import logging
import os
import time
from concurrent import futures

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import error_codes_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from kerasformer.export.serving import predict as predict_rules
from kerasformer.export.serving.rest_codec import signature_key
from kerasformer.export.serving.status import StatusError, invalid_argument, not_found

log = logging.getLogger("kerasformer.serve")

SIGNATURE_DEF_FIELD = "signature_def"  # GetModelMetadataImpl::kSignatureDef
CLASSIFY_METHOD_NAME = "tensorflow/serving/classify"
REGRESS_METHOD_NAME = "tensorflow/serving/regress"

# ToGRPCStatus (model_servers/grpc_status_util.cc): longer messages are cut and marked.
ERROR_MESSAGE_LIMIT = 1024

# The real server lifts gRPC's 4 MiB message limit: builder.SetMaxMessageSize(INT32_MAX)
# (model_servers/server.cc).
MAX_MESSAGE_BYTES = 2**31 - 1

# Tensor::AsProtoField: the repeated field of TensorProto each dtype's values are written to.
# The real server answers in this form by default (--enable_serialization_as_tensor_content=false).
_PROTO_FIELD = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val",
    types_pb2.DT_HALF: "half_val",
    types_pb2.DT_BFLOAT16: "half_val",
    types_pb2.DT_COMPLEX64: "scomplex_val",
    types_pb2.DT_COMPLEX128: "dcomplex_val",
}


def tensor_proto(array, dtype):
    """An output array as the real server writes it: `Tensor::AsProtoField`, every value in the
    typed repeated field of `dtype` (a `DataType` enum value), shape always set (also `[]`)."""
    array = np.asarray(array)
    proto = tensor_pb2.TensorProto(dtype=dtype)
    proto.tensor_shape.SetInParent()
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    field = _PROTO_FIELD.get(dtype)
    if field is None:  # a dtype no signature of ours has (resource, variant, quantized)
        return tf.make_tensor_proto(array, dtype=tf.as_dtype(dtype))
    flat = array.reshape(-1)
    if dtype == types_pb2.DT_STRING:
        values = [value if isinstance(value, bytes) else str(value).encode("utf-8") for value in flat]
    elif field == "half_val":  # the 16 bits of each value, as an int
        values = flat.view(np.uint16).tolist()
    elif field in ("scomplex_val", "dcomplex_val"):  # real and imaginary parts interleaved
        values = np.stack([flat.real, flat.imag], axis=-1).reshape(-1).tolist()
    else:
        values = flat.tolist()
    getattr(proto, field).extend(values)
    return proto


def grpc_details(message):
    """`ToGRPCStatus`: a message over 1024 bytes is cut there and ends with "...TRUNCATED".

    A character the cut splits is dropped (the real server would send its first bytes); a lone
    surrogate, which UTF-8 cannot carry, is written as its escape.
    """
    raw = message.encode("utf-8", "backslashreplace")
    if len(raw) <= ERROR_MESSAGE_LIMIT:
        return raw.decode("utf-8")
    return raw[:ERROR_MESSAGE_LIMIT].decode("utf-8", "ignore") + "...TRUNCATED"


def debug_string(message):
    """The C++ `Message::DebugString()` the real server quotes in some errors: text format, map
    entries sorted by key. Python's text_format prints the same layout (open-source protobuf's
    DebugString marker, kDebugStringSilentMarker, is empty)."""
    return text_format.MessageToString(message)


# --- Classify and Regress: the checks that refuse a signature (classifier.cc, regressor.cc) ---


def check_classification_signature(signature):
    """`PreProcessClassification` (servables/tensorflow/classifier.cc) with the method-name check
    off, the real server's default (--enable_signature_method_name_check=false)."""
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if len(signature.outputs) not in (1, 2):
        raise invalid_argument(f"Expected one or two output Tensors, found {len(signature.outputs)}")
    if "inputs" not in signature.inputs:
        raise invalid_argument(f"No classification inputs found in SignatureDef: {debug_string(signature)}")
    if "classes" not in signature.outputs and "scores" not in signature.outputs:
        raise invalid_argument(
            'Expected classification signature outputs to contain at least one of "classes" or "scores". '
            f"Signature was: {debug_string(signature)}"
        )


def check_regression_signature(signature):
    """`PreProcessRegression` (servables/tensorflow/regressor.cc), method-name check off."""
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if len(signature.outputs) != 1:
        raise invalid_argument("Expected one output Tensor.")
    if "inputs" not in signature.inputs:
        raise invalid_argument(f"No regression inputs found in SignatureDef: {debug_string(signature)}")
    if "outputs" not in signature.outputs:
        raise invalid_argument(f"No regression outputs found in SignatureDef: {debug_string(signature)}")


def find_signature(model, signature_name):
    """`GetClassificationSignatureDef` / `GetRegressionSignatureDef`: "" is serving_default."""
    signature_name = signature_key(signature_name)
    if signature_name not in model.signature_defs:
        raise invalid_argument(f"No signature was found with the name: {signature_name}")
    return model.signature_defs[signature_name]


def _not_run(kind, model, signature_name):
    """A signature that passes the real server's checks for `kind`: the real server would read
    tf.Examples from the request and run it; this one does not."""
    raise StatusError(
        "UNIMPLEMENTED",
        f"kerasformer-serve does not run {kind} signatures (model {model.name} version {model.version}, "
        f"signature {signature_key(signature_name)!r}); use Predict",
    )


# --- the services ---


class _Services(prediction_service_pb2_grpc.PredictionServiceServicer, model_service_pb2_grpc.ModelServiceServicer):
    """Both services over one model repository; `predict(model, signature_name, inputs)` runs a
    graph (through the batcher when batching is on) and returns {output name: np.ndarray}."""

    def __init__(self, repository, predict, metrics=None):
        self.repository = repository
        self.run_graph = predict
        self.metrics = metrics

    @contextlib.contextmanager
    def _answering(self, context, api=None, model_name=""):
        """Turns a `StatusError` (or any bug) into the gRPC status; records `api` in the metrics
        as prediction_service_impl.cc does for Predict, Classify and Regress."""
        start = time.perf_counter()
        code = "OK"
        try:
            yield
        except StatusError as error:
            code = error.code
            context.set_code(grpc.StatusCode[error.code])
            context.set_details(grpc_details(error.message))
        except Exception as error:  # noqa: BLE001  (a bug answers INTERNAL; the server stays up)
            log.exception("unexpected error answering gRPC %s", api or "request")
            code = "INTERNAL"
            context.set_code(grpc.StatusCode.INTERNAL)
            context.set_details(grpc_details(f"{type(error).__name__}: {error}"))
        finally:
            if api is not None and self.metrics is not None:
                self.metrics.record(model_name, api, "GRPC", code, time.perf_counter() - start)

    def _servable(self, model_spec):
        """`ServerCore::GetServableHandle`: name required; a version, a version label, or the
        latest version (server_core.cc, ServableRequestFromModelSpec)."""
        if not model_spec.name:
            raise invalid_argument("ModelSpec has no name specified.")
        choice = model_spec.WhichOneof("version_choice")
        if choice == "version":
            return self.repository.get(model_spec.name, version=model_spec.version.value)
        if choice == "version_label":
            return self.repository.get(model_spec.name, label=model_spec.version_label)
        return self.repository.get(model_spec.name)

    # PredictionService

    def Predict(self, request, context):
        """`TensorflowPredictor::Predict` then `internal::RunPredict` (predict_util.cc):
        signature "" is serving_default, an unknown one FAILED_PRECONDITION; inputs, defaults,
        output filter and feed dtypes checked in the real order by `kerasformer.export.serving.predict`.
        The answer's model_spec is the request's name, the signature used and the version run."""
        response = predict_pb2.PredictResponse()
        with self._answering(context, "Predict", request.model_spec.name):
            if not request.HasField("model_spec"):
                raise invalid_argument("Missing ModelSpec")
            model = self._servable(request.model_spec)
            signature_def = predict_rules.find_signature(model.signature_defs, request.model_spec.signature_name)
            signature_name = signature_key(request.model_spec.signature_name)
            response.model_spec.name = request.model_spec.name
            response.model_spec.signature_name = signature_name
            response.model_spec.version.value = model.version
            feeds, aliases = predict_rules.preprocess(signature_def, request.inputs, request.output_filter)
            outputs = self.run_graph(model, signature_name, feeds)
            for alias in aliases:
                response.outputs[alias].CopyFrom(tensor_proto(outputs[alias], signature_def.outputs[alias].dtype))
        return response

    def GetModelMetadata(self, request, context):
        """get_model_metadata_impl.cc: only the "signature_def" field; the answer holds the
        model's SignatureDefMap packed in an Any, and model_spec {name, version}."""
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        with self._answering(context):
            if not request.HasField("model_spec"):
                raise invalid_argument("Missing ModelSpec")
            if not request.metadata_field:
                raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
            for field in request.metadata_field:
                if field != SIGNATURE_DEF_FIELD:
                    raise invalid_argument(f"Metadata field {field} is not supported")
            model = self._servable(request.model_spec)
            signature_def_map = get_model_metadata_pb2.SignatureDefMap()
            for name, signature in model.signature_defs.items():
                signature_def_map.signature_def[name].CopyFrom(signature)
            response.model_spec.name = model.name
            response.model_spec.version.value = model.version
            response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_def_map)
        return response

    def Classify(self, request, context):
        """classification_service.cc and classifier.cc up to the signature checks."""
        response = classification_pb2.ClassificationResponse()
        with self._answering(context, "Classify", request.model_spec.name):
            if not request.HasField("model_spec"):
                raise invalid_argument("Missing ModelSpec")
            model = self._servable(request.model_spec)
            check_classification_signature(find_signature(model, request.model_spec.signature_name))
            _not_run("classification", model, request.model_spec.signature_name)
        return response

    def Regress(self, request, context):
        """regression_service.cc and regressor.cc up to the signature checks."""
        response = regression_pb2.RegressionResponse()
        with self._answering(context, "Regress", request.model_spec.name):
            if not request.HasField("model_spec"):
                raise invalid_argument("Missing ModelSpec")
            model = self._servable(request.model_spec)
            check_regression_signature(find_signature(model, request.model_spec.signature_name))
            _not_run("regression", model, request.model_spec.signature_name)
        return response

    def MultiInference(self, request, context):
        """multi_inference_helper.cc and `TensorFlowMultiInferenceRunner::Infer`
        (multi_inference.cc) up to the per-task signature checks."""
        response = inference_pb2.MultiInferenceResponse()
        with self._answering(context):
            # GetModelSpecFromRequest: the first task's ModelSpec, else an empty one.
            has_spec = request.tasks and request.tasks[0].HasField("model_spec")
            model = self._servable(request.tasks[0].model_spec if has_spec else model_pb2.ModelSpec())
            model_name, seen = "", set()
            for task in request.tasks:
                if not task.model_spec.name:
                    raise invalid_argument("Found ModelSpec with an empty model name.")
                if not model_name:
                    model_name = task.model_spec.name
                elif model_name != task.model_spec.name:
                    raise invalid_argument("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
                signature_name = signature_key(task.model_spec.signature_name)
                if signature_name in seen:
                    raise invalid_argument(f"Duplicate evaluation of signature: {signature_name}")
                seen.add(signature_name)
                if signature_name not in model.signature_defs:
                    raise invalid_argument(f"Requested signature not found in model graph: {signature_name}")
                if task.method_name == CLASSIFY_METHOD_NAME:
                    check_classification_signature(model.signature_defs[signature_name])
                elif task.method_name == REGRESS_METHOD_NAME:
                    check_regression_signature(model.signature_defs[signature_name])
                else:
                    raise StatusError("UNIMPLEMENTED", f"Unsupported signature method_name: {task.method_name}")
            _not_run("multi-inference", model, ",".join(sorted(seen)))
        return response

    # ModelService

    def GetModelStatus(self, request, context):
        """get_model_status_impl.cc: a `version` asks for that version's state, anything else
        (no version, or a version label, which this method ignores) for every version's."""
        response = get_model_status_pb2.GetModelStatusResponse()
        with self._answering(context):
            if not request.HasField("model_spec"):
                raise invalid_argument("Missing ModelSpec")
            spec = request.model_spec
            version = spec.version.value if spec.WhichOneof("version_choice") == "version" else None
            try:
                statuses = self.repository.status(spec.name, version)
            except StatusError as error:
                if error.code != "NOT_FOUND":
                    raise
                # The texts of GetModelStatusWithModelSpec, whatever the repository says.
                raise not_found(f"Could not find any versions of model {spec.name}" if version is None
                                else f"Could not find version {version} of model {spec.name}") from None
            for entry in statuses:
                status = response.model_version_status.add(
                    version=int(entry["version"]),
                    state=get_model_status_pb2.ModelVersionStatus.State.Value(entry["state"]),
                )
                status.status.error_code = error_codes_pb2.Code.Value(entry["status"]["error_code"])
                status.status.error_message = entry["status"]["error_message"]
        return response

    def HandleReloadConfigRequest(self, request, context):
        """model_service_impl.cc: a ModelConfigList replaces the served config
        (`ServerCore::ReloadConfig`: checked, labels set, models loaded and unloaded before the
        answer; a model new to the config that loads no version fails the call with UNKNOWN, as
        `WaitUntilModelsAvailable` does); any other config is refused. The answer's `status`
        carries the outcome, and `metric` one entry per requested metric name, whose increase is
        always 0 here (TensorFlow's monitoring registry, which the real one reads, is not kept).

        A model new to the config whose base path holds no version yet is not waited for (the
        real server waits until one loads)."""
        response = model_management_pb2.ReloadConfigResponse()
        with self._answering(context):
            try:
                if request.config.WhichOneof("config") != "model_config_list":
                    raise invalid_argument(
                        "ServerModelConfig type not supported by HandleReloadConfigRequest. "
                        "Only ModelConfigList is currently supported"
                    )
                self._reload_config(request.config)
                response.status.error_code = error_codes_pb2.OK
            except StatusError as error:
                response.status.error_code = error_codes_pb2.Code.Value(error.code)
                response.status.error_message = error.message
                raise
            finally:
                for name in request.metric_names:
                    response.metric.add(name=name, int64_value_increase=0)
        return response

    def _reload_config(self, config):
        if self.repository.models_under is not None:
            raise StatusError(
                "UNIMPLEMENTED",
                "kerasformer-serve --all_models_under rebuilds its model config from the folder at every poll; "
                "start it with --model_config_file (or --model_name) to reload the config over gRPC",
            )
        before = {model.name for model in self.repository.model_configs()}
        self.repository.reload_config(config)
        self.repository.poll()
        new = {model.name for model in config.model_config_list.config} - before
        failed = [entry for entry in self.repository.unavailable_models() if entry[0] in new]
        if failed:
            raise StatusError("UNKNOWN", models_not_available_message(failed))


def models_not_available_message(failed):
    """`ServerCore::WaitUntilModelsAvailable`'s text for (model, version, code, message) entries:
    "1 model(s) did not become available: {{{name: M version: V} due to error: CODE: message}, }"
    (a ServableId's DebugString, then the load error's absl::Status::ToString)."""
    entries = "".join(
        f"{{{{name: {name} version: {version}}} due to error: {code}: {message}}}, "
        for name, version, code, message in failed
    )
    return f"{len(failed)} model(s) did not become available: {{{entries}}}"


def start_grpc_server(repository, predict, port, host="0.0.0.0", metrics=None, max_workers=None):
    """Starts TensorFlow Serving's gRPC API on `host:port` and returns the started `grpc.Server`
    (the caller stops it: `server.stop(grace)`).

    Args:
        repository: the `ModelRepository` whose models are served.
        predict: `predict(model, signature_name, inputs) -> {output name: np.ndarray}`, blocking;
            the REST app's, so gRPC requests share the batcher when batching is on.
        port: the gRPC port (the real server's --port, 8500).
        host: the address to listen on; the real server listens on 0.0.0.0.
        metrics: an `kerasformer.export.serving.metrics` recorder (`record(model, api, "GRPC", code,
            seconds)`), or None.
        max_workers: threads answering requests; default 4 per CPU, the real server's
            --grpc_max_threads default (model_servers/server.h).

    Raises RuntimeError naming the address when the port cannot be bound.
    """
    if max_workers is None:
        max_workers = 4 * (os.cpu_count() or 1)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    services = _Services(repository, predict, metrics)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(services, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(services, server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as error:
        raise RuntimeError(f"cannot listen for gRPC on {address}: {error}") from None
    if bound == 0:  # older grpcio answer 0 instead of raising
        raise RuntimeError(f"cannot listen for gRPC on {address}")
    server.start()
    return server
