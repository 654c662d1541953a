"""TensorFlow Serving's REST request and response formats: JSON <-> NumPy arrays.

A predict request names its tensors in one of two layouts
(https://www.tensorflow.org/tfx/serving/api_rest):

- row format, `{"instances": [...]}`: one JSON value per example. For a signature with several
  inputs each instance is an object `{"text": "...", "max_length": 5}`; when the signature has
  one required input a bare value (`"hello"`) is allowed. The answer is
  `{"predictions": [...]}`: one object per instance, or one bare value per instance when the
  signature has a single output.
- columnar format, `{"inputs": {...}}`: one whole tensor per input name (or a bare tensor for a
  single required input). The answer is `{"outputs": {...}}` (a bare tensor for a single output).

Strings are JSON strings (UTF-8); binary values are `{"b64": "..."}`. An output whose name ends
in `_bytes`, or whose bytes are not valid UTF-8, is written as `{"b64": "..."}`.

Non-batched inputs. A signature input of rank 0 (kerasformer's `max_length`) is not stacked
along the batch axis. In row format every instance must then carry the same value, or all leave
it out; otherwise the request is refused with 400. An input left out everywhere takes the value
stored in the SignatureDef's `defaults`.

This module knows nothing of TensorFlow: a signature is described by `SignatureSpec`, built
from the SignatureDef by `export.serving.model_repository`.
"""

import base64
import dataclasses

import numpy as np

from export.serving.status import internal, invalid_argument

# SignatureDef dtype names -> NumPy dtypes this server can read from and write to JSON.
NUMPY_DTYPES = {
    "DT_STRING": np.dtype(object),
    "DT_INT32": np.dtype(np.int32),
    "DT_INT64": np.dtype(np.int64),
    "DT_FLOAT": np.dtype(np.float32),
    "DT_DOUBLE": np.dtype(np.float64),
    "DT_BOOL": np.dtype(np.bool_),
}

# TensorFlow's largest tensor rank (TensorShape::MaxDimensions()).
MAX_RANK = 254


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One input or output of a signature: dtype name (`"DT_STRING"`) and shape (None = unknown
    rank; -1 = a dimension of any size)."""

    dtype: str
    shape: tuple | None

    @property
    def batched(self):
        """Whether axis 0 is the batch axis (every tensor of rank >= 1 is, as in TF Serving)."""
        return self.shape is None or len(self.shape) > 0


@dataclasses.dataclass(frozen=True)
class SignatureSpec:
    """What the codec needs to know of a SignatureDef: its inputs, outputs and input defaults."""

    name: str
    inputs: dict  # input name -> TensorSpec
    outputs: dict  # output name -> TensorSpec
    defaults: dict  # input name -> np.ndarray

    @property
    def required_inputs(self):
        return [name for name in self.inputs if name not in self.defaults]


# --- JSON -> arrays -------------------------------------------------------------------------


def _leaf(value, dtype, where):
    """Converts one JSON scalar to the Python value NumPy stores for `dtype`."""
    if dtype == "DT_STRING":
        if isinstance(value, str):
            try:
                return value.encode("utf-8")
            except UnicodeEncodeError as error:  # a lone surrogate, which JSON can escape ("\ud800")
                raise invalid_argument(f"{where}: string {_show(value)} is not valid Unicode: {error.reason}") from None
        if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except ValueError as error:
                raise invalid_argument(f"{where}: invalid base64 data {value['b64']!r}: {error}")
        raise invalid_argument(f"{where}: JSON value {_show(value)} is not a string (expected DT_STRING)")
    if dtype in ("DT_INT32", "DT_INT64"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid_argument(f"{where}: JSON value {_show(value)} is not an integer (expected {dtype})")
        info = np.iinfo(NUMPY_DTYPES[dtype])
        if not info.min <= value <= info.max:
            raise invalid_argument(f"{where}: integer {value} is out of range for {dtype}")
        return value
    if dtype in ("DT_FLOAT", "DT_DOUBLE"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise invalid_argument(f"{where}: JSON value {_show(value)} is not a number (expected {dtype})")
        try:
            return float(value)
        except OverflowError:  # an integer such as 10**400
            raise invalid_argument(f"{where}: number {_show(value)} is out of range for {dtype}") from None
    if dtype == "DT_BOOL":
        if not isinstance(value, bool):
            raise invalid_argument(f"{where}: JSON value {_show(value)} is not a boolean (expected DT_BOOL)")
        return value
    raise invalid_argument(f"{where}: inputs of dtype {dtype} are not supported by kerasformer-serve")


def _show(value, limit=60):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _nested(value, dtype, where, depth=0):
    """Converts nested JSON lists to (flat list of leaves, shape); refuses ragged lists and lists
    nested deeper than TensorFlow's most dimensions."""
    if not isinstance(value, list):
        return [_leaf(value, dtype, where)], ()
    if depth == MAX_RANK:
        raise invalid_argument(f"{where}: lists nested deeper than {MAX_RANK}, TensorFlow's most dimensions")
    if not value:
        return [], (0,)
    parts = [_nested(item, dtype, f"{where}[{index}]", depth + 1) for index, item in enumerate(value)]
    inner = parts[0][1]
    for index, (_, shape) in enumerate(parts):
        if shape != inner:
            raise invalid_argument(
                f"{where}: ragged list: element 0 has shape {list(inner)} but element {index} has "
                f"shape {list(shape)}; pad rows to the same length"
            )
    return [leaf for leaves, _ in parts for leaf in leaves], (len(value), *inner)


def json_to_array(value, spec, where):
    """One JSON value -> np.ndarray of `spec.dtype`, checked against `spec.shape`."""
    leaves, shape = _nested(value, spec.dtype, where)
    array = np.empty(len(leaves), dtype=NUMPY_DTYPES[spec.dtype])
    array[:] = leaves
    array = array.reshape(shape)
    _check_shape(array.shape, spec.shape, where)
    return array


def _check_shape(shape, expected, where):
    if expected is None:
        return
    if len(shape) != len(expected) or any(e != -1 and e != s for s, e in zip(shape, expected)):
        shown = [("?" if e == -1 else e) for e in expected]
        raise invalid_argument(f"{where}: shape {list(shape)} does not match the signature's shape {shown}")


def _named_values(value, signature, where):
    """An instance or `inputs` value -> {input name: JSON value}."""
    is_b64 = isinstance(value, dict) and set(value) == {"b64"}
    if isinstance(value, dict) and not is_b64:
        for name in value:
            if name not in signature.inputs:
                raise invalid_argument(
                    f"{where}: unknown input {name!r}; signature {signature.name!r} has inputs "
                    f"{sorted(signature.inputs)}"
                )
        return value
    required = signature.required_inputs
    if len(required) != 1:
        raise invalid_argument(
            f"{where}: a bare value needs a signature with one required input; signature "
            f"{signature.name!r} requires {required}: send an object of named inputs"
        )
    return {required[0]: value}


def fill_defaults(values, signature):
    """`values` with every input the request left out taken from the signature's
    defaults; a missing input without a default is a 400."""
    for name in signature.inputs:
        if name not in values:
            if name not in signature.defaults:
                raise invalid_argument(f"missing input {name!r} of signature {signature.name!r}")
            values[name] = signature.defaults[name]
    return values


def _rows_to_arrays(instances, signature):
    """Row format: stacks each batched input along axis 0; non-batched inputs must agree."""
    if not isinstance(instances, list):
        raise invalid_argument(f"'instances' must be a list, got {_show(instances)}")
    if not instances:
        raise invalid_argument("'instances' is an empty list; send at least one instance")
    rows = [_named_values(instance, signature, f"instances[{i}]") for i, instance in enumerate(instances)]
    arrays = {}
    for name, spec in signature.inputs.items():
        present = [name in row for row in rows]
        if not any(present):
            continue
        if not all(present):
            missing = present.index(False)
            raise invalid_argument(f"instances[{missing}] lacks input {name!r} that other instances give")
        if spec.batched:
            inner = TensorSpec(spec.dtype, None if spec.shape is None else spec.shape[1:])
            parts = [json_to_array(row[name], inner, f"instances[{i}].{name}") for i, row in enumerate(rows)]
            for i, part in enumerate(parts):
                if part.shape != parts[0].shape:
                    raise invalid_argument(
                        f"instances[{i}].{name}: shape {list(part.shape)} differs from instances[0].{name} "
                        f"shape {list(parts[0].shape)}; pad rows to the same length"
                    )
            arrays[name] = np.stack(parts)
        else:
            first = json_to_array(rows[0][name], spec, f"instances[0].{name}")
            for i, row in enumerate(rows[1:], start=1):
                other = json_to_array(row[name], spec, f"instances[{i}].{name}")
                if not np.array_equal(other, first):
                    raise invalid_argument(
                        f"instances[{i}].{name}={_show(row[name])} differs from instances[0].{name}="
                        f"{_show(rows[0][name])}; {name!r} is not batched, so every instance must "
                        f"give the same value (or use the 'inputs' format)"
                    )
            arrays[name] = first
    return arrays


def _columns_to_arrays(inputs, signature):
    values = _named_values(inputs, signature, "inputs")
    return {name: json_to_array(value, signature.inputs[name], f"inputs.{name}") for name, value in values.items()}


def parse_predict_request(body, signatures, default_signature="serving_default"):
    """A decoded predict body -> (SignatureSpec, {input name: np.ndarray}, row_format).

    `signatures` maps signature names to `SignatureSpec`. Inputs the request leaves out are
    filled from the signature's defaults; a missing input without a default is a 400.
    """
    if not isinstance(body, dict):
        raise invalid_argument(f"the request body must be a JSON object, got {_show(body)}")
    name = body.get("signature_name", default_signature)
    if not isinstance(name, str):
        raise invalid_argument(f"'signature_name' must be a string, got {_show(name)}")
    if name not in signatures:
        raise invalid_argument(f'Serving signature name: "{name}" not found in signature def; have {sorted(signatures)}')
    signature = signatures[name]
    has_rows, has_columns = "instances" in body, "inputs" in body
    if has_rows and has_columns:
        raise invalid_argument("Not formatted correctly expecting only one of 'inputs' or 'instances' keys exists")
    if not (has_rows or has_columns):
        raise invalid_argument("Missing 'inputs' or 'instances' key")
    unknown = set(body) - {"signature_name", "instances", "inputs"}
    if unknown:
        raise invalid_argument(f"unknown keys {sorted(unknown)} in the request body")
    if has_rows:
        arrays = _rows_to_arrays(body["instances"], signature)
    else:
        arrays = _columns_to_arrays(body["inputs"], signature)
    _check_batch_sizes(arrays, signature)
    return signature, fill_defaults(arrays, signature), has_rows


def _check_batch_sizes(arrays, signature):
    sizes = {name: a.shape[0] for name, a in arrays.items() if signature.inputs[name].batched and a.ndim}
    if len(set(sizes.values())) > 1:
        raise invalid_argument(f"inputs have different batch sizes (axis 0): {sizes}")


# --- arrays -> JSON -------------------------------------------------------------------------


def _to_json(array, output_name):
    """np.ndarray -> nested lists of JSON values."""
    if array.dtype == object or array.dtype.kind == "S":
        as_b64 = output_name.endswith("_bytes")

        def encode(value):
            if not as_b64:
                try:
                    return value.decode("utf-8")
                except UnicodeDecodeError:
                    pass
            return {"b64": base64.b64encode(value).decode("ascii")}

        return np.frompyfunc(encode, 1, 1)(array).tolist() if array.ndim else encode(array.item())
    return array.tolist()


def format_predict_response(outputs, row_format):
    """{output name: np.ndarray} -> the `predictions` (row) or `outputs` (columnar) answer."""
    if not row_format:
        if len(outputs) == 1:
            (name, array), = outputs.items()
            return {"outputs": _to_json(array, name)}
        return {"outputs": {name: _to_json(array, name) for name, array in outputs.items()}}
    sizes = {name: (array.shape[0] if array.ndim else None) for name, array in outputs.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise internal(
            f"outputs cannot be split into one prediction per instance: batch sizes (axis 0) {sizes}"
        )
    columns = {name: _to_json(array, name) for name, array in outputs.items()}
    if len(columns) == 1:
        return {"predictions": next(iter(columns.values()))}
    size = next(iter(sizes.values()))
    return {"predictions": [{name: column[i] for name, column in columns.items()} for i in range(size)]}
