"""TensorFlow Serving's REST predict format, as `util/json_tensor.cc` reads and writes it.

The real model server parses a predict body with `FillPredictRequestFromJson` and writes the
answer with `MakeJsonFromTensors`; this module ports both, with their error texts, on top of
`kerasformer.export.serving.rapidjson` (the RapidJSON 1.1.0 reader and writer they use).

Request (`parse_predict_request`), in the order the real server checks it:
1. The body must parse (RapidJSON, see `kerasformer.export.serving.rapidjson`) and be an object.
2. `signature_name`, when present, must be a string; "" or absent is serving_default. The model
   and the signature are looked up only now (`get_signature`), so a body that does not parse gets
   400 even for an unknown model.
3. Exactly one of `instances` (row format) and `inputs` (columnar format). Other keys are ignored.
4. Row format, `{"instances": [...]}`: at least one instance. For a signature with one input an
   instance may be a bare value or list (or a `{"b64": ...}` object); otherwise every instance is
   an object whose keys are exactly the signature's inputs. Every instance gives each input the
   same shape, and the instances are stacked along a new first dimension: N instances of shape S
   make a tensor of shape [N, *S] (a scalar in each instance makes a [N] vector).
5. Columnar format, `{"inputs": ...}`: an object with every input of the signature (extra keys
   ignored), or, for a one-input signature, the bare value or list itself. Each value is one
   whole tensor, shaped as its lists nest.
6. Values: lists nest evenly (the first element of each list sets the shape); numbers go to
   DT_FLOAT/DT_DOUBLE (any number, rounded), DT_INT8/16/32 and DT_UINT8 (integers that fit
   int32), DT_INT64, DT_UINT32, DT_UINT64 (integers in their range); booleans only to DT_BOOL;
   strings only to DT_STRING, which also takes `{"b64": "..."}` (absl's Base64Unescape).
   SignatureDef defaults are never used here: over REST every input is required (predict.py
   honours them for gRPC).

Answer (`format_predict_response`): `{"predictions": [...]}` after a row-format request, one entry
per row (an object of every output, or the bare value when the signature has one output), so every
output needs a first dimension of the same size; `{"outputs": ...}` after a columnar one (an object
of whole tensors, or the bare tensor for one output). Floats are written as `WriteDecimal` writes
them: absl's six significant digits when they read back to the same float/double, else 9 (float)
or 17 (double) digits, with ".0" added to whole numbers; NaN, Infinity and -Infinity as those bare
words. A DT_STRING output whose name ends in `_bytes` is written as `{"b64": "..."}`; any other
string is written byte for byte, UTF-8 or not. The text is laid out as RapidJSON's PrettyWriter
lays it out (4-space indents, each row of the row format on one line).

Errors are `StatusError`s with the real server's code and text (`format_error` writes the body).
Where the real server's order is that of a protobuf Map (the signature's inputs, the outputs), which
protobuf leaves unspecified, this module takes names in sorted order.

This module knows nothing of TensorFlow: a signature is described by `SignatureSpec`, built from
the SignatureDef by `kerasformer.export.serving.model_repository`.
"""

import base64
import dataclasses
import fractions
import math
import re

import numpy as np

from kerasformer.export.serving import rapidjson
from kerasformer.export.serving.rapidjson import Object, debug_string, utf8
from kerasformer.export.serving.status import StatusError, invalid_argument

# SignatureDef dtype names -> the NumPy dtypes json_tensor.cc can read and write.
NUMPY_DTYPES = {
    "DT_FLOAT": np.dtype(np.float32),
    "DT_DOUBLE": np.dtype(np.float64),
    "DT_INT32": np.dtype(np.int32),
    "DT_INT16": np.dtype(np.int16),
    "DT_INT8": np.dtype(np.int8),
    "DT_UINT8": np.dtype(np.uint8),
    "DT_STRING": np.dtype(object),
    "DT_INT64": np.dtype(np.int64),
    "DT_BOOL": np.dtype(np.bool_),
    "DT_UINT32": np.dtype(np.uint32),
    "DT_UINT64": np.dtype(np.uint64),
}

# DataType -> DataTypeString (tensorflow/core/framework/types.cc), the names error texts use.
_TYPE_STRINGS = {
    "DT_FLOAT": "float", "DT_DOUBLE": "double", "DT_INT32": "int32", "DT_UINT32": "uint32", "DT_UINT8": "uint8",
    "DT_UINT16": "uint16", "DT_INT16": "int16", "DT_INT8": "int8", "DT_STRING": "string", "DT_COMPLEX64": "complex64",
    "DT_COMPLEX128": "complex128", "DT_INT64": "int64", "DT_UINT64": "uint64", "DT_BOOL": "bool", "DT_QINT8": "qint8",
    "DT_QUINT8": "quint8", "DT_QUINT16": "quint16", "DT_QINT16": "qint16", "DT_QINT32": "qint32",
    "DT_BFLOAT16": "bfloat16", "DT_HALF": "half", "DT_RESOURCE": "resource", "DT_VARIANT": "variant",
}

# TensorShape::MaxDimensions(): a TensorProto of more dimensions does not make a Tensor.
MAX_RANK = 254
# NumPy's own limit; TensorFlow's is higher.
NUMPY_MAX_RANK = 64


def type_string(dtype):
    """"DT_HALF" -> "half", as DataTypeString names it."""
    return _TYPE_STRINGS.get(dtype, dtype.removeprefix("DT_").lower())


def dtype_name(array):
    """The DataType name of a NumPy array ("DT_FLOAT", "DT_STRING", ...)."""
    if array.dtype == object or array.dtype.kind in "SU":
        return "DT_STRING"
    for name, dtype in NUMPY_DTYPES.items():
        if array.dtype == dtype:
            return name
    return {"float16": "DT_HALF", "complex64": "DT_COMPLEX64", "complex128": "DT_COMPLEX128", "uint16": "DT_UINT16",
            "bfloat16": "DT_BFLOAT16"}.get(array.dtype.name, "DT_" + array.dtype.name.upper())


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One input or output of a signature: dtype name (`"DT_STRING"`), shape (None = unknown
    rank; -1 = a dimension of any size) and the graph tensor's name (`"serving_default_text:0"`;
    predict.py's error texts name it)."""

    dtype: str
    shape: tuple | None
    tensor_name: str = ""


@dataclasses.dataclass(frozen=True)
class SignatureSpec:
    """What serving needs to know of a SignatureDef: its inputs, outputs and input defaults
    (input name -> np.ndarray; honoured only by gRPC Predict, see predict.py)."""

    name: str
    inputs: dict  # input name -> TensorSpec
    outputs: dict  # output name -> TensorSpec
    defaults: dict  # input name -> np.ndarray


@dataclasses.dataclass(frozen=True)
class PredictRequest:
    """A parsed REST predict body: the signature, its inputs ({name: np.ndarray}) and whether
    the body used the row format (the answer then uses it too)."""

    signature: SignatureSpec
    inputs: dict
    row_format: bool


def status_text(error):
    """absl::Status::ToString() of a StatusError ("INVALID_ARGUMENT: message"), which
    json_tensor.cc embeds in its row-format errors."""
    return f"{error.code}: {error.message}"


def _text(*parts):
    """Joins message parts; JSON bytes (a debug string, a key) go in byte for byte (see
    `format_error`)."""
    return "".join(part.decode("utf-8", "surrogateescape") if isinstance(part, bytes) else part for part in parts)


def json_value_error(value, *parts):
    """FormatError: "JSON Value: <the value as JSON> <parts>"."""
    return invalid_argument(_text("JSON Value: ", debug_string(value), " ", *parts))


def _type_error(value, dtype):
    return invalid_argument(_text("JSON Value: ", debug_string(value), " Type: ", rapidjson.type_name(value),
                                  " is not of expected type: ", type_string(dtype)))


DEFAULT_SIGNATURE = "serving_default"  # kDefaultServingSignatureDefKey


def signature_key(name):
    """The signature a request names, in every API of the real server (REST, gRPC, warmup
    records): "" or absent means `serving_default`. The one owner of that rule."""
    return name or DEFAULT_SIGNATURE


def signature_lookup(signatures, name):
    """HttpRestApiHandler::GetInfoMap's signature half: "" means serving_default; a name the
    model does not have is INVALID_ARGUMENT (400)."""
    resolved = signature_key(name)
    if resolved not in signatures:
        raise invalid_argument(f'Serving signature name: "{resolved}" not found in signature def')
    return signatures[resolved]


# --- JSON values -> tensors -----------------------------------------------------------------


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_integer_in(value, low, high):
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


# AddValueToTensor: which JSON values each dtype takes (RapidJSON's IsInt, IsInt64, IsUint, ...).
_ACCEPTS = {
    "DT_FLOAT": _is_number,
    "DT_DOUBLE": _is_number,
    "DT_INT32": lambda v: _is_integer_in(v, -2**31, 2**31 - 1),
    "DT_INT16": lambda v: _is_integer_in(v, -2**31, 2**31 - 1),
    "DT_INT8": lambda v: _is_integer_in(v, -2**31, 2**31 - 1),
    "DT_UINT8": lambda v: _is_integer_in(v, -2**31, 2**31 - 1),
    "DT_STRING": lambda v: isinstance(v, (str, bytes)),
    "DT_INT64": lambda v: _is_integer_in(v, -2**63, 2**63 - 1),
    "DT_BOOL": lambda v: isinstance(v, bool),
    "DT_UINT32": lambda v: _is_integer_in(v, 0, 2**32 - 1),
    "DT_UINT64": lambda v: _is_integer_in(v, 0, 2**64 - 1),
}


def _is_base64_object(value):
    """IsValBase64Object: an object of exactly one member, "b64", holding a string."""
    return isinstance(value, Object) and len(value) == 1 and value[0][0] == "b64" and isinstance(value[0][1], (str, bytes))


_BASE64_SPACE = re.compile(rb"[ \t\n\v\f\r]")
_BASE64_TEXT = re.compile(rb"([A-Za-z0-9+/]*)([=.]*)")


def base64_unescape(text):
    """absl::Base64Unescape: whitespace anywhere is skipped, padding (`=` or `.`) is optional but
    must then be complete, leftover bits are dropped. Returns bytes, or None when invalid."""
    match = _BASE64_TEXT.fullmatch(_BASE64_SPACE.sub(b"", text))
    if match is None:
        return None
    data, padding = match.groups()
    leftover = len(data) % 4
    if leftover == 1 or len(padding) not in (0, {0: 0, 2: 2, 3: 1}[leftover]):
        return None
    return base64.b64decode(data + b"=" * (-len(data) % 4))


def _decode_base64_object(value):
    """JsonDecodeBase64Object."""
    if not _is_base64_object(value):
        raise json_value_error(value, "not formatted correctly for base64 data")
    decoded = base64_unescape(utf8(value[0][1]))
    if decoded is None:
        raise invalid_argument("Unable to base64 decode")
    return decoded


def _add_value(value, dtype, values):
    """AddValueToTensor: appends the tensor value of one JSON scalar to `values`."""
    accepts = _ACCEPTS.get(dtype)
    if accepts is None:
        raise StatusError("UNIMPLEMENTED", _text("Conversion of JSON Value: ", debug_string(value), " to type: ",
                                                 type_string(dtype)))
    if not accepts(value):
        raise _type_error(value, dtype)
    if dtype in ("DT_FLOAT", "DT_DOUBLE"):
        values.append(float(value))  # RapidJSON's GetDouble (GetFloat casts that to float)
    elif dtype == "DT_STRING":
        values.append(utf8(value))
    else:
        values.append(value)


def dense_shape(value):
    """GetDenseTensorShape: the lengths of the first element's lists, all the way down."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value, level, dtype, shape, values):
    """FillTensorProto: appends the values of `value` (lists nested `len(shape) - level` deep,
    each as long as `shape` says) to `values`; returns how many."""
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:  # every value sits at the same depth, the tensor's rank
            raise json_value_error(value, f"found at incorrect level: {level + 1} in the JSON DOM. "
                                           f"Expected at level: {rank}")
        if isinstance(value, Object):
            if dtype != "DT_STRING":
                raise _type_error(value, dtype)
            values.append(_decode_base64_object(value))
        else:
            _add_value(value, dtype, values)
        return 1
    if level >= rank:
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise invalid_argument(f"Encountered list at unexpected size: {len(value)} at level: {level} "
                               f"expected size: {shape[level]}")
    return sum(_fill(item, level + 1, dtype, shape, values) for item in value)


def _shape_text(shape):
    """ShapeToString: "[2,3]"."""
    return "[" + ",".join(map(str, shape)) + "]"


class _RankError(StatusError):
    """Not an error of one instance but of the whole tensor (raised unwrapped)."""


def _check_rank(name, rank):
    """A TensorProto of more than MAX_RANK dimensions does not make a Tensor (predict_util's
    GetInputValues: "tensor parsing error"); NumPy stops at NUMPY_MAX_RANK. Checked before the
    values are read, which recurses once per dimension."""
    if rank > MAX_RANK:
        raise _RankError("INVALID_ARGUMENT", f"tensor parsing error: {name}")
    if rank > NUMPY_MAX_RANK:
        raise _RankError("INVALID_ARGUMENT", f"input {name} has {rank} dimensions; kerasformer-serve takes at most "
                                             f"{NUMPY_MAX_RANK} (NumPy's limit)")


# Dtypes json_tensor.cc converts no value to: a tensor of them can still be empty.
_EMPTY_ONLY = {"DT_HALF": np.float16, "DT_COMPLEX64": np.complex64, "DT_COMPLEX128": np.complex128,
               "DT_UINT16": np.uint16}


def _to_array(dtype, shape, values):
    """Tensor::FromProto of the TensorProto built: the first prod(shape) values (a repeated
    key in an instance adds more, which FromProto leaves unread)."""
    values = values[:math.prod(shape)]
    if dtype not in NUMPY_DTYPES:  # no value was converted (else AddValueToTensor refused it)
        if dtype not in _EMPTY_ONLY:
            raise StatusError("UNIMPLEMENTED", f"kerasformer-serve cannot feed an empty {type_string(dtype)} tensor")
        return np.empty(shape, dtype=_EMPTY_ONLY[dtype])
    if dtype == "DT_STRING":
        array = np.empty(len(values), dtype=object)
        array[:] = values
    elif dtype in ("DT_FLOAT", "DT_DOUBLE"):
        array = np.array(values, dtype=np.float64)  # GetDouble; DT_FLOAT rounds it once more (GetFloat)
    elif dtype in ("DT_BOOL", "DT_UINT64"):
        array = np.array(values, dtype=NUMPY_DTYPES[dtype])
    else:  # int_val holds int32: DT_INT8/INT16/UINT8 wrap as FromProto's static_cast wraps them
        array = np.array(values, dtype=np.int64)
    return array.astype(NUMPY_DTYPES[dtype], copy=False).reshape(shape)


class _Tensor:
    """A TensorProto being filled: its values and its last shape."""

    def __init__(self):
        self.values = []
        self.shape = []


def _add_instance_item(item, name, inputs, sizes, shapes, tensors):
    """AddInstanceItem: one instance's value of input `name`, checked against the instances
    before it."""
    if name not in inputs:
        raise invalid_argument(_text("JSON object: does not have named input: ", utf8(name)))
    tensor = tensors.setdefault(name, _Tensor())
    tensor.shape = dense_shape(item)
    _check_rank(name, 1 + len(tensor.shape))
    size = _fill(item, 0, inputs[name].dtype, tensor.shape, tensor.values)
    if name not in sizes:
        sizes[name], shapes[name] = size, tensor.shape
    elif sizes[name] != size:
        raise invalid_argument(f"Expecting tensor size: {sizes[name]} but got: {size}")
    elif shapes[name] != tensor.shape:
        raise invalid_argument(f"Expecting shape {_shape_text(shapes[name])} but got: {_shape_text(tensor.shape)}")


def _sorted_names(names):
    """std::set<string> order: byte-wise."""
    return sorted(names, key=utf8)


def _rows_to_arrays(instances, inputs):
    """FillTensorMapFromInstancesList."""
    if not isinstance(instances[0], Object) and len(inputs) > 1:
        raise invalid_argument("instances is a plain list, but expecting list of objects as multiple input tensors "
                               "required as per tensorinfo_map")

    def is_element_object(value):
        return isinstance(value, Object) and not _is_base64_object(value)

    elements_are_objects = is_element_object(instances[0])
    input_names = {utf8(name) for name in inputs}
    sizes, shapes, tensors = {}, {}, {}
    for count, element in enumerate(instances):
        if elements_are_objects:
            if not is_element_object(element):
                raise invalid_argument(f"Expecting object but got list at item {count} of input list")
            keys = set()
            for key, value in element:
                keys.add(utf8(key))
                try:
                    _add_instance_item(value, key, inputs, sizes, shapes, tensors)
                except _RankError:
                    raise
                except StatusError as error:
                    raise invalid_argument(_text(f"Failed to process element: {count} key: ", utf8(key),
                                                 " of 'instances' list. Error: ", status_text(error))) from None
            if keys != input_names:
                raise invalid_argument(_text(f"Failed to process element: {count} of 'instances' list. JSON object: ",
                                             debug_string(element), " keys must be equal to: ",
                                             b",".join(sorted(input_names))))
        else:
            if is_element_object(element):
                raise invalid_argument(f"Expecting value/list but got object at item {count} of input list")
            name = _sorted_names(inputs)[0]
            try:
                _add_instance_item(element, name, inputs, sizes, shapes, tensors)
            except _RankError:
                raise
            except StatusError as error:
                raise invalid_argument(f"Failed to process element: {count} of 'instances' list. Error: "
                                       f"{status_text(error)}") from None
    return {name: _to_array(inputs[name].dtype, [len(instances), *shapes[name]], tensor.values)
            for name, tensor in tensors.items()}


def _columns_to_arrays(value, inputs):
    """FillTensorMapFromInputsMap."""
    if not isinstance(value, Object) or _is_base64_object(value):
        if len(inputs) > 1:
            raise invalid_argument("inputs is a plain value/list, but expecting an object as multiple input tensors "
                                   "required as per tensorinfo_map")
        items = [(_sorted_names(inputs)[0], value)]
    else:
        items = []
        for name in _sorted_names(inputs):
            if not value.has(name):
                raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
            items.append((name, value.find(name)))
    arrays = {}
    for name, item in items:
        shape, values = dense_shape(item), []
        _check_rank(name, len(shape))
        _fill(item, 0, inputs[name].dtype, shape, values)
        arrays[name] = _to_array(inputs[name].dtype, shape, values)
    return arrays


def parse_json_object(body):
    """json_tensor.cc `ParseJson`: the body (bytes) as a RapidJSON object, or INVALID_ARGUMENT with
    its texts. Every REST body goes through it: predict here, classify and regress in server.py."""
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        document = rapidjson.parse(body)
    except rapidjson.ParseError as error:
        raise invalid_argument(f"JSON Parse error: {error.message} at offset: {error.offset}") from None
    if not isinstance(document, Object):
        raise json_value_error(document, "Is not object")
    return document


def parse_predict_request(body, get_signature):
    """A REST predict body (bytes) -> PredictRequest, as FillPredictRequestFromJson.

    get_signature(signature_name) -> SignatureSpec is called once the body has parsed, with the
    request's `signature_name` ("" when absent): it finds the model (404 when there is none) and
    the signature (`signature_lookup`). Raises StatusError with the real server's texts.
    """
    document = parse_json_object(body)
    name = ""
    if document.has("signature_name"):
        name = document.find("signature_name")
        if not isinstance(name, (str, bytes)):
            raise json_value_error(document, "not formatted correctly. 'signature_name' key must be a string value.")
        if isinstance(name, bytes):  # no signature has a name that is not UTF-8
            name = name.decode("utf-8", "surrogateescape")
    signature = get_signature(name)
    if not signature.inputs:
        raise invalid_argument(f"Failed to get input map for signature: {name or 'DEFAULT'}")
    if document.has("instances"):
        if document.has("inputs"):
            raise json_value_error(document, "Not formatted correctly expecting only one of 'inputs' or 'instances' "
                                              "keys to exist ")
        instances = document.find("instances")
        if not isinstance(instances, list):
            raise json_value_error(document, "Expecting 'instances' to be an list/array")
        if not instances:
            raise json_value_error(document, "No values in 'instances' array")
        return PredictRequest(signature, _rows_to_arrays(instances, signature.inputs), True)
    if document.has("inputs"):
        return PredictRequest(signature, _columns_to_arrays(document.find("inputs"), signature.inputs), False)
    raise invalid_argument("Missing 'inputs' or 'instances' key")


# --- tensors -> JSON ------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1


def _mul32(number, factor):
    """absl's Mul32 (strings/numbers.cc): a 128-bit number times a 32-bit one, the top 128 bits."""
    high, low = number
    bits0_31 = (low & 0xFFFFFFFF) * factor
    bits32_63 = (low >> 32) * factor
    bits64_95 = (high & 0xFFFFFFFF) * factor
    bits96_127 = (high >> 32) * factor
    bits0_63 = (bits0_31 + (bits32_63 << 32)) & _MASK64
    bits64_127 = (bits64_95 + (bits96_127 << 32) + (bits32_63 >> 32) + (bits0_63 < bits0_31)) & _MASK64
    bits128_up = (bits96_127 >> 32) + (bits64_127 < bits64_95)
    if bits128_up == 0:
        return bits64_127, bits0_63
    shift = bits128_up.bit_length()
    return (((bits64_127 >> shift) + (bits128_up << (64 - shift))) & _MASK64,
            ((bits0_63 >> shift) + (bits64_127 << (64 - shift))) & _MASK64)


def _pow_five(number, exponent):
    """absl's PowFive: number * 5**exponent, the first 128 bits, top bit set."""
    result = (number, 0)
    while exponent >= 13:
        result = _mul32(result, 5 ** 13)
        exponent -= 13
    result = _mul32(result, 5 ** exponent)
    shift = 64 - result[0].bit_length()
    if shift:
        result = (((result[0] << shift) + (result[1] >> (64 - shift))) & _MASK64, (result[1] << shift) & _MASK64)
    return result


def _split_to_six(value):
    """absl's SplitToSix: (decimal exponent, 6 digits) of a positive finite double."""
    exponent, d = 5, value
    if d >= 999999.5:
        for limit, scale, step in ((1e+261, 1e-256, 256), (1e+133, 1e-128, 128), (1e+69, 1e-64, 64),
                                   (1e+37, 1e-32, 32), (1e+21, 1e-16, 16), (1e+13, 1e-8, 8), (1e+9, 1e-4, 4),
                                   (1e+7, 1e-2, 2), (1e+6, 1e-1, 1)):
            if d >= limit:
                exponent, d = exponent + step, d * scale
    else:
        for limit, scale, step in ((1e-250, 1e256, 256), (1e-122, 1e128, 128), (1e-58, 1e64, 64), (1e-26, 1e32, 32),
                                   (1e-10, 1e16, 16), (1e-2, 1e8, 8), (1e+2, 1e4, 4), (1e+4, 1e2, 2),
                                   (1e+5, 1e1, 1)):
            if d < limit:
                exponent, d = exponent - step, d * scale
    d64k = int(d * 65536)
    if d64k % 65536 in (32767, 32768):  # near a tie: decide with 128-bit integers
        digits = d64k // 65536
        mantissa_fraction, exp2 = math.frexp(value)
        mantissa = int(mantissa_fraction * (32768.0 * 65536.0 * 65536.0 * 65536.0)) << 1
        if exponent >= 6:
            edge, val = _pow_five(2 * digits + 1, exponent - 5), (mantissa, 0)
        else:
            edge, val = _pow_five(2 * digits + 1, 0), _pow_five(mantissa, 5 - exponent)
        if val > edge:
            digits += 1
        elif val == edge:
            digits += digits & 1
    else:
        digits = (d64k + 32768) // 65536
    if digits == 1000000:
        digits, exponent = 100000, exponent + 1
    return exponent, f"{digits:06d}"


def six_digits(value):
    """absl's SixDigitsToBuffer, what absl::StrCat writes for a float or double ("%g")."""
    if math.isnan(value):
        return "nan"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign = "-" if value < 0 else ""
    value = abs(value)
    if math.isinf(value):
        return sign + "inf"
    exponent, digits = _split_to_six(value)
    if 0 <= exponent <= 5:
        whole, fraction = digits[:exponent + 1], digits[exponent + 1:].rstrip("0")
        return sign + whole + ("." + fraction if fraction else "")
    if -4 <= exponent <= -1:
        return sign + "0." + "0" * (-exponent - 1) + digits.rstrip("0")
    mantissa = (digits[0] + "." + digits[1:]).rstrip("0").rstrip(".")
    return f"{sign}{mantissa}e{'+' if exponent > 0 else '-'}{abs(exponent):02d}"


def _atof32(text):
    """absl::SimpleAtof: the float32 nearest the decimal `text` (one rounding, not two)."""
    nearest = np.float32(float(text))
    if not np.isfinite(nearest):
        return nearest
    # float(text) is the correctly rounded double; rounding it again to float32 errs only when it
    # lands exactly halfway between two float32 values.
    below = np.nextafter(nearest, np.float32(-np.inf))
    above = np.nextafter(nearest, np.float32(np.inf))
    for neighbour in (below, above):
        middle = (float(nearest) + float(neighbour)) / 2
        if float(text) == middle:
            exact, middle_exact = fractions.Fraction(text), fractions.Fraction(middle)
            if exact != middle_exact:
                towards_neighbour = (exact > middle_exact) == (neighbour > nearest)
                return neighbour if towards_neighbour else nearest
    return nearest


def write_decimal(value, is_float):
    """json_tensor.cc WriteDecimal: the JSON number text of a float (is_float) or double."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    text = six_digits(float(value))
    back = _atof32(text) if is_float else float(text)
    if back != value:
        text = ("%.9g" if is_float else "%.17g") % float(value)  # max_digits10
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def _writer_for(array, name):
    """AddSingleValueAndAdvance for one tensor: a function writing one element."""
    dtype = dtype_name(array)
    if dtype == "DT_FLOAT":
        return lambda writer, value: writer.raw_value(write_decimal(value, True).encode())
    if dtype == "DT_DOUBLE":
        return lambda writer, value: writer.raw_value(write_decimal(value, False).encode())
    if dtype in ("DT_INT32", "DT_INT16", "DT_INT8", "DT_UINT8", "DT_INT64", "DT_UINT32", "DT_UINT64"):
        return lambda writer, value: writer.int(int(value))
    if dtype == "DT_BOOL":
        return lambda writer, value: writer.bool(bool(value))
    if dtype == "DT_STRING":
        if name.endswith("_bytes"):  # IsNamedTensorBytes
            def write_bytes(writer, value):
                writer.start_object()
                writer.key(b"b64")
                writer.string(base64.b64encode(_as_bytes(value)))
                writer.end_object()

            return write_bytes
        return lambda writer, value: writer.string(_as_bytes(value))

    def refuse(writer, value):
        raise invalid_argument(f"Failed to write JSON value for tensor type: {type_string(dtype)}")

    return refuse


def _as_bytes(value):
    return value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")


def _write_tensor(writer, array, write_value):
    """AddTensorValues: nested arrays of a tensor, a bare value for a scalar."""
    if not isinstance(array, np.ndarray) or array.ndim == 0:  # a row of a [batch] tensor is its element
        write_value(writer, array[()] if isinstance(array, np.ndarray) else array)
        return
    writer.start_array()
    if array.ndim == 1:
        for value in array:
            write_value(writer, value)
    else:
        for part in array:
            _write_tensor(writer, part, write_value)
    writer.end_array()


def format_predict_response(outputs, row_format):
    """MakeJsonFromTensors: {output name: np.ndarray} -> the answer body (bytes, JSON; string
    outputs are written byte for byte, so it may hold bytes that are not UTF-8).

    Raises StatusError (INVALID_ARGUMENT) where the real server does: no outputs, a row-format
    answer whose outputs lack a first dimension or disagree on its size, a dtype it cannot write.
    """
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    names = _sorted_names(outputs)
    arrays = {name: np.asarray(outputs[name]) for name in names}
    writers = {name: _writer_for(arrays[name], name) for name in names}
    writer = rapidjson.PrettyWriter()
    writer.start_object()
    objects = len(names) > 1
    if row_format:
        batch_size = -1
        for name in names:
            if arrays[name].ndim == 0:
                raise invalid_argument(f"Tensor name: {name} has no shape information ")
            size = arrays[name].shape[0]
            if batch_size >= 0 and batch_size != size:
                raise invalid_argument(f"Tensor name: {name} has inconsistent batch size: {size} expecting: "
                                       f"{batch_size}")
            batch_size = size
        writer.key(b"predictions")
        writer.start_array()
        for item in range(batch_size):
            if objects:
                writer.start_object()
            writer.single_line_arrays = True
            for name in names:
                if objects:
                    writer.key(name.encode())
                _write_tensor(writer, arrays[name][item], writers[name])
            writer.single_line_arrays = False
            if objects:
                writer.end_object()
        writer.end_array()
    else:
        writer.key(b"outputs")
        if objects:
            writer.start_object()
        for name in names:
            if objects:
                writer.key(name.encode())
            _write_tensor(writer, arrays[name], writers[name])
        if objects:
            writer.end_object()
    writer.end_object()
    return bytes(writer.buffer)


def format_error(message):
    """MakeJsonFromStatus: the error body `{"error": message}` (bytes) as the real server lays it
    out. JSON text the message quotes (decoded with surrogateescape) goes back byte for byte."""
    try:
        raw = message.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that came from elsewhere
        raw = message.encode("utf-8", "backslashreplace")
    writer = rapidjson.PrettyWriter()
    writer.start_object()
    writer.key(b"error")
    writer.string(raw)
    writer.end_object()
    return bytes(writer.buffer)
