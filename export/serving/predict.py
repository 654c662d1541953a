"""The Predict rules of the real model server that apply once a request's tensors are known,
shared by REST and gRPC: `servables/tensorflow/predict_util.cc` (PreProcessPrediction,
PostProcessPredictionResult) with TensorFlow's `cc/saved_model/util.cc` (GetInputValues),
`Tensor::FromProto` (framework/tensor.cc) and the feed check of Session::Run.

In the real server's order, for a request naming signature S with input tensors I and an
optional output filter F:

1. `find_signature`: S ("" = serving_default) must exist: FAILED_PRECONDITION
   'Serving signature key "S" not found.' (RunPredict). Over REST the handler has already
   refused it with INVALID_ARGUMENT (rest_codec.signature_lookup), so only gRPC meets this text.
   `verify_signature`: only with --enable_signature_method_name_check (off by default), S must
   be a predict, classify or regress signature (INTERNAL otherwise).
2. `prepare_inputs` (VerifyRequestInputsSize, then GetInputValues):
   - more inputs than the signature has, or fewer while the signature has no defaults:
     "input size does not match signature: 1!=2 len({text}) != len({max_length,text}).
     Sent extra: {}. Missing but required: {max_length}."
   - each signature input not sent takes its SignatureDef default; one with no default:
     "Signature input alias: A(feed name: T) not found in request and no default value
     provided. Inputs expected to be in the request {...}, or default input alias set: ..."
   - each tensor must make a Tensor (`tensor_from_proto`): "tensor parsing error: A"
   - a sent name the signature does not have (reachable only when defaults made up the count):
     "Inputs contains invalid name. Used request inputs: a, request input: a,zzz"
   REST never relies on defaults (json_tensor.cc requires every input); gRPC does.
3. `output_aliases` (the output filter): each alias must be an output ("output tensor alias not
   found in signature: A Outputs expected to be in the set {...}.") and appear once ("duplicate
   output tensor alias: A"); an empty filter means every output.
4. `check_feed_dtypes` (Session::Run feeding the graph, FunctionCallFrame::SetArgs): each tensor
   must have its input's dtype exactly: "Expects arg[0] to be float but bool is provided". There
   is no conversion and no shape check: the graph gets what was sent.
5. After the run, `select_outputs` keeps the filtered outputs.

`preprocess` runs `verify_signature` and 2-4 in that order. Every error is a `StatusError` (INVALID_ARGUMENT unless
said). A signature is a `rest_codec.SignatureSpec` with NumPy tensors, or a SignatureDef proto
with a map of TensorProtos (as a gRPC PredictRequest or a warmup record holds them). Where the
real order is a protobuf Map's, which protobuf leaves unspecified, names go in sorted order (the
first missing alias reported, the `arg[i]` index).
"""

import math

import numpy as np

from kerasformer.export.serving.rest_codec import (
    MAX_RANK,
    NUMPY_DTYPES,
    SignatureSpec,
    TensorSpec,
    dtype_name,
    signature_key,
    type_string,
)
from kerasformer.export.serving.status import StatusError, invalid_argument


def find_signature(signatures, name):
    """RunPredict's lookup: `name` ("" = serving_default) in {name: signature}."""
    resolved = signature_key(name)
    if resolved not in signatures:
        raise StatusError("FAILED_PRECONDITION", f'Serving signature key "{resolved}" not found.')
    return signatures[resolved]


def _names(names):
    return ",".join(sorted(names))


def signature_spec(signature):
    """A SignatureSpec of a SignatureSpec or of a SignatureDef proto (defaults left as
    TensorProtos, read by `tensor_from_proto` when used)."""
    if isinstance(signature, SignatureSpec):
        return signature
    from tensorflow.core.framework import types_pb2

    def spec(info):
        dims = None if info.tensor_shape.unknown_rank else tuple(d.size for d in info.tensor_shape.dim)
        return TensorSpec(types_pb2.DataType.Name(info.dtype), dims, info.name)

    return SignatureSpec("", {k: spec(v) for k, v in signature.inputs.items()},
                         {k: spec(v) for k, v in signature.outputs.items()}, dict(signature.defaults))


# Tensor::FromProto reads each dtype's values from one repeated field of the TensorProto.
_PROTO_FIELDS = {
    "DT_FLOAT": "float_val", "DT_DOUBLE": "double_val", "DT_INT32": "int_val", "DT_INT16": "int_val",
    "DT_INT8": "int_val", "DT_UINT8": "int_val", "DT_UINT16": "int_val", "DT_INT64": "int64_val",
    "DT_UINT32": "uint32_val", "DT_UINT64": "uint64_val", "DT_BOOL": "bool_val", "DT_STRING": "string_val",
}


def tensor_from_proto(alias, proto):
    """Tensor::FromProto of a TensorProto, or GetInputValues' "tensor parsing error: ALIAS".

    The shape must be valid (at most 254 dimensions, none negative). Values come from
    `tensor_content` (exactly the tensor's bytes) or from the dtype's repeated field, which may
    hold fewer values than the shape (the last one is repeated; none at all gives zeros) or more
    (the first ones are used)."""
    from tensorflow.core.framework import types_pb2

    failed = invalid_argument(f"tensor parsing error: {alias}")
    dims = [dim.size for dim in proto.tensor_shape.dim]
    if len(dims) > MAX_RANK or any(size < 0 for size in dims) or math.prod(dims) >= 2**63:
        raise failed
    if proto.dtype == types_pb2.DT_INVALID:
        raise failed
    dtype = types_pb2.DataType.Name(proto.dtype)
    count = math.prod(dims)
    field = _PROTO_FIELDS.get(dtype)
    if field is None or (proto.tensor_content and dtype == "DT_STRING"):
        # A dtype no signature of ours feeds (half, complex, ...): TensorFlow's own reader.
        import tensorflow as tf

        try:
            return tf.make_ndarray(proto)
        except (TypeError, ValueError):
            raise failed from None
    numpy_dtype = NUMPY_DTYPES[dtype] if dtype != "DT_UINT16" else np.dtype(np.uint16)
    if count == 0:
        return np.empty(dims, dtype=numpy_dtype)
    if proto.tensor_content:
        if len(proto.tensor_content) != count * numpy_dtype.itemsize:
            raise failed
        return np.frombuffer(proto.tensor_content, dtype=numpy_dtype.newbyteorder("<")).astype(numpy_dtype).reshape(dims)
    values = list(getattr(proto, field))[:count]
    if not values:
        values = [b"" if dtype == "DT_STRING" else 0]
    values += [values[-1]] * (count - len(values))
    if dtype == "DT_STRING":
        array = np.empty(count, dtype=object)
        array[:] = values
    elif dtype in ("DT_INT16", "DT_INT8", "DT_UINT8", "DT_UINT16"):  # int_val holds int32: static_cast
        array = np.array(values, dtype=np.int64).astype(numpy_dtype)
    else:
        array = np.array(values, dtype=numpy_dtype)
    return array.reshape(dims)


def _tensor(alias, value):
    return value if isinstance(value, np.ndarray) else (
        tensor_from_proto(alias, value) if hasattr(value, "tensor_shape") else np.asarray(value))


PREDICT_METHOD_NAMES = ("tensorflow/serving/predict", "tensorflow/serving/classify", "tensorflow/serving/regress")


def verify_signature(signature_def, method_name_check=False):
    """VerifySignature: with the method name check on (the model server's
    --enable_signature_method_name_check), a signature of another method is refused. Takes a
    SignatureDef proto (a SignatureSpec has no method name and passes)."""
    method_name = getattr(signature_def, "method_name", None)
    if method_name_check and method_name is not None and method_name not in PREDICT_METHOD_NAMES:
        raise StatusError("INTERNAL", "Expected prediction signature method_name to be one of {"
                                      + ", ".join(PREDICT_METHOD_NAMES) + f"}}. Was: {method_name}")


def check_feed_dtypes(signature, feeds):
    """Session::Run's argument check (FunctionCallFrame::SetArgs): each feed must have the dtype
    of the signature input it feeds; nothing is converted."""
    signature = signature_spec(signature)
    for index, alias in enumerate(sorted(feeds)):
        expected, given = signature.inputs[alias].dtype, dtype_name(np.asarray(feeds[alias]))
        if expected != given:
            raise invalid_argument(f"Expects arg[{index}] to be {type_string(expected)} but {type_string(given)} "
                                   f"is provided")


def prepare_inputs(signature, inputs, check_dtypes=True):
    """VerifyRequestInputsSize and GetInputValues: the request's {alias: tensor} -> the feeds
    {alias: np.ndarray}, every signature input present (defaults filled in).

    `check_dtypes` adds Session::Run's dtype check (`check_feed_dtypes`); the real server makes
    it after the output filter's checks, so `preprocess` passes False and checks it last.
    """
    signature = signature_spec(signature)
    sent, expected = set(inputs), set(signature.inputs)
    if len(sent) > len(expected) or (len(sent) < len(expected) and not signature.defaults):
        raise invalid_argument(
            f"input size does not match signature: {len(sent)}!={len(expected)} len({{{_names(sent)}}}) != "
            f"len({{{_names(expected)}}}). Sent extra: {{{_names(sent - expected)}}}. Missing but required: "
            f"{{{_names(expected - sent)}}}.")
    feeds = {}
    for alias in sorted(expected):
        if alias in inputs:
            feeds[alias] = _tensor(alias, inputs[alias])
        elif alias in signature.defaults:
            feeds[alias] = _tensor(alias, signature.defaults[alias])
        else:
            raise invalid_argument(
                f"Signature input alias: {alias}(feed name: {signature.inputs[alias].tensor_name}) not found in "
                f"request and no default value provided. Inputs expected to be in the request {{{_names(sent)}}}, "
                f"or default input alias set: {_names(signature.defaults)}")
    used = sent & expected
    if sent and used != sent:
        raise invalid_argument(f"Inputs contains invalid name. Used request inputs: {_names(used)}, request input: "
                               f"{_names(sent)}")
    if check_dtypes:
        check_feed_dtypes(signature, feeds)
    return feeds


def output_aliases(signature, output_filter=()):
    """PreProcessPrediction's output filter: the output aliases to fetch, in filter order (every
    output, sorted, when the filter is empty)."""
    aliases = []
    for alias in output_filter:
        if alias not in signature.outputs:
            raise invalid_argument(f"output tensor alias not found in signature: {alias} Outputs expected to be in "
                                   f"the set {{{_names(signature.outputs)}}}.")
        if alias in aliases:
            raise invalid_argument(f"duplicate output tensor alias: {alias}")
        aliases.append(alias)
    return aliases or sorted(signature.outputs)


output_filter = output_aliases


def preprocess(signature, inputs, output_filter=(), method_name_check=False):
    """`verify_signature` and steps 2-4 of the module docstring in the real server's order:
    (feeds, output aliases)."""
    verify_signature(signature, method_name_check)
    feeds = prepare_inputs(signature, inputs, check_dtypes=False)
    aliases = output_aliases(signature, output_filter)
    check_feed_dtypes(signature, feeds)
    return feeds, aliases


def select_outputs(signature, outputs, output_filter=()):
    """PostProcessPredictionResult: the run's {alias: np.ndarray} restricted to the output
    filter (every output when it is empty)."""
    return {alias: outputs[alias] for alias in output_aliases(signature, output_filter)}
