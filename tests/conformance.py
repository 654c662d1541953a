"""Shared by the conformance suites: rows taken from TensorFlow Serving's own tests, run against
`kerasformer-serve` over loopback.

A `Row` is one request of one of the real server's tests (`util/json_tensor_test.cc`,
`model_servers/http_rest_api_handler_test.cc`, `servables/tensorflow/predict_util_test.cc`) and
what the real server answers: HTTP status and error text, or the answer. Where the real test checks
only a substring (`HasSubstr`), the row holds the whole text the real source builds whenever it can
be read there, else `substring=True`. A row ours cannot match carries a `Difference`: why, and what
ours answers instead; the row then passes only while ours still answers that, so a fixed
difference shows up as a failing row to update, and no row is ever skipped.

The model base (`model_base()`, built once per test process) holds the models the real tests use,
rebuilt here because TensorFlow Serving's test data is not installed:

    conformance/1/                            signatures with the TensorInfo maps of
                                              json_tensor_test.cc (see CONFORMANCE_SIGNATURES)
    saved_model_half_plus_two_2_versions/123/ TensorFlow's half_plus_two (y = 0.5 x + 2), a TF1
    saved_model_half_plus_two_2_versions/124/ graph built as tensorflow/cc/saved_model/testdata
                                              builds it: tensor names x:0, y:0, tf_example:0
    saved_model_counter/1/                    get_counter, incr_counter, reset_counter,
                                              incr_counter_by (predict_util_test.cc's counter model)
    tiny/1/                                   a real kerasformer export: a copy of the reference
                                              model, saved_models/kerasformer_en_es/1 (only with
                                              `model_base(real_export=True)`)

Usage in a test module:

    from conformance import Row, check_row, conformance_server
    ROWS = [Row("json_tensor_test.cc: JsontensorTest.SingleUnnamedTensor", "POST",
                "/v1/models/conformance:predict", '{"instances": [[1,2],[3,4]]}', 200,
                answer={"predictions": [[1, 2], [3, 4]]})]

    @pytest.mark.parametrize("row", ROWS, ids=row_id)
    def test_row(conformance_server, row):
        check_row(conformance_server.url, row)
"""

import atexit
import dataclasses
import functools
import json
import math
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zlib

import pytest
from serving_helpers import ServerProcess

CONFORMANCE_MODEL = "conformance"
HALF_PLUS_TWO_MODEL = "saved_model_half_plus_two_2_versions"
HALF_PLUS_TWO_VERSIONS = (123, 124)
COUNTER_MODEL = "saved_model_counter"
REAL_EXPORT_MODEL = "tiny"
REFERENCE_EXPORT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "saved_models", "kerasformer_en_es", "1")


@dataclasses.dataclass(frozen=True)
class Difference:
    """A row ours does not answer as the real server does: why, and what ours answers instead."""

    reason: str
    status: int
    error: str | None = None
    answer: object = None
    answer_text: str | bytes | None = None
    substring: bool = False


@dataclasses.dataclass(frozen=True)
class Row:
    """One request of a real test and the real server's answer to it.

    source: "FILE: Suite.Test" of the real test (plus a note when one test holds several requests).
    body: the request body exactly as sent (str is sent as UTF-8); None sends no body.
    status: the real server's HTTP status.
    error: the real server's error text (`{"error": ...}`); exact unless `substring`.
    answer: the real server's answer, as decoded JSON (NaN compares equal to NaN; 1 and 1.0 differ).
    answer_text: the real server's whole body (its RapidJSON PrettyWriter layout), when known: a str
        compared with the body decoded as UTF-8, or bytes compared byte for byte.
    difference: set when ours cannot match (see `Difference`).
    """

    source: str
    method: str
    path: str
    body: str | bytes | None
    status: int
    error: str | None = None
    answer: object = None
    answer_text: str | bytes | None = None
    substring: bool = False
    difference: Difference | None = None


@dataclasses.dataclass(frozen=True)
class Response:
    status: int
    text: str  # decoded as UTF-8 with replacement characters (the real server may write raw bytes)
    raw: bytes


def row_id(row):
    """A pytest id: the test name and a short hash of the request, unique within a table."""
    test = row.source.split(":", 1)[-1].strip().split(" ")[0]
    body = row.body if isinstance(row.body, bytes) else (row.body or "").encode("utf-8", "surrogatepass")
    # crc32, not hash(): str hashes differ between processes, and xdist's workers must agree.
    return f"{test}-{zlib.crc32(row.method.encode() + b' ' + row.path.encode('utf-8', 'surrogatepass') + b' ' + body) % 10**6:06d}"


def send(url, row, timeout=120):
    """Sends the row's request to the server at `url`; returns its `Response`."""
    body = row.body.encode("utf-8", "surrogatepass") if isinstance(row.body, str) else row.body
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = urllib.request.Request(url + row.path, data=body, method=row.method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            status, raw = answer.status, answer.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    return Response(status, raw.decode("utf-8", "replace"), raw)


def same_json(left, right):
    """Equality of decoded JSON where NaN equals NaN and int, float and bool are told apart."""
    if type(left) is not type(right):
        return False
    if isinstance(left, float):
        return (math.isnan(left) and math.isnan(right)) or left == right
    if isinstance(left, list):
        return len(left) == len(right) and all(same_json(a, b) for a, b in zip(left, right))
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(same_json(left[k], right[k]) for k in left)
    return left == right


def _decode(text):
    try:
        return json.loads(text)
    except ValueError:
        return None


def judge(expected, response):
    """Problems (list of str, empty when it matches) of `response` against `expected`, a Row
    or a Difference."""
    problems = []
    if response.status != expected.status:
        problems.append(f"status {response.status}, expected {expected.status}")
    decoded = _decode(response.text)
    if expected.error is not None:
        got = decoded.get("error") if isinstance(decoded, dict) else None
        if not isinstance(got, str):
            problems.append(f"no error text in {response.text[:300]!r}")
        elif expected.substring and expected.error not in got:
            problems.append(f"error {got!r} does not contain {expected.error!r}")
        elif not expected.substring and got != expected.error:
            problems.append(f"error {got!r}, expected {expected.error!r}")
    if expected.answer is not None and (decoded is None or not same_json(decoded, expected.answer)):
        problems.append(f"answer {response.text[:500]!r}, expected {expected.answer!r}")
    if expected.answer_text is not None:
        got = response.raw if isinstance(expected.answer_text, bytes) else response.text
        if got != expected.answer_text:
            problems.append(f"answer text {got[:500]!r}, expected {expected.answer_text[:500]!r}")
    return problems


def check_row(url, row):
    """Sends the row and asserts the answer is the real server's, or, for a row with a
    `Difference`, that ours still answers what the difference records."""
    response = send(url, row)
    if row.difference is None:
        problems = judge(row, response)
        assert not problems, f"{row.source}: {'; '.join(problems)}"
    else:
        problems = judge(row.difference, response)
        assert not problems, (
            f"{row.source}: recorded difference ({row.difference.reason}) no longer holds: "
            f"{'; '.join(problems)}; if ours now matches the real server, drop the Difference"
        )


def summary(name, rows, origin="rows from the real server's tests"):
    """One line for the README: rows, rows matching the real server, recorded differences."""
    differences = [row for row in rows if row.difference is not None]
    return (f"{name}: {len(rows)} {origin}, {len(rows) - len(differences)} answered as the real server answers, "
            f"{len(differences)} recorded differences")


# --- the models of the real tests -----------------------------------------------------------

# Signature name -> {input name: dtype}: the TensorInfo maps json_tensor_test.cc builds (TensorInfo
# without a shape, i.e. unknown rank), each served by an identity function that answers every input
# under its own name, so an answer shows the tensor the server built from the JSON.
CONFORMANCE_SIGNATURES = {
    "serving_default": {"default": "int32"},  # SingleUnnamedTensor and every getmap({"default": DT_INT32})
    "predict_images": {"default": "int32"},  # SingleUnnamedTensorWithSignature
    "float": {"default": "float32"},  # MixedInputForFloatTensor, FloatTensor*
    "double": {"default": "float64"},  # MixedInputForDoubleTensor
    "string": {"default": "string"},  # SingleUnnamedTensorBase64*, SingleNamedTensorBase64
    "multiple_named": {"int_tensor": "int32", "str_tensor": "string", "float_tensor": "float32",
                       "dbl_tensor": "float64"},  # MultipleNamedTensor
    "int_tensor": {"int_tensor": "int32"},  # SingleUnnamedTensorColumnarFormat
    "int_str_bin": {"int_tensor": "int32", "str_tensor": "string", "bin_tensor": "string"},  # ...ColumnarFormat
    "int_str": {"int_tensor": "int32", "str_tensor": "string"},  # MultipleNamedTensorErrors
    "str_tensor": {"str_tensor": "string"},  # MultipleNamedTensorErrors, last request
    "bytes_output": {"str_tensor_bytes": "string"},  # FromJsonSingleBytesTensor
    "five_outputs": {"double_scalar_tensor": "float64", "float_tensor": "float32", "int_tensor": "int32",
                     "str_tensor": "string", "str_tensor_bytes": "string"},  # FromJsonMultipleNamedTensors
    "int64": {"default": "int64"},  # json_tensor.cc AddValueToTensor, DT_INT64
    "bool": {"default": "bool"},  # DT_BOOL
    "uint8": {"default": "uint8"},  # DT_INT32/INT16/INT8/UINT8 share int_val
    "uint32": {"default": "uint32"},
    "uint64": {"default": "uint64"},
    "half": {"default": "float16"},  # a dtype json_tensor.cc does not convert (UNIMPLEMENTED)
}


def save_conformance_model(path):
    """Writes the `conformance` SavedModel (one version folder) to `path`.

    Besides the identity signatures of CONFORMANCE_SIGNATURES it has signatures whose outputs
    MakeJsonFromTensors must refuse or write specially (FromJsonSingleTensorErrors,
    FromJsonMultipleNamedTensorsErrors, FromJsonSingleZeroBatchTensor, ...):
        complex_output  x float [?]  -> tensor complex64 (no JSON writer for it)
        scalar_output   x int32 [?]  -> tensor int32 [] (row format needs a batch dimension)
        inconsistent_batch  int_tensor int32, str_tensor string -> int_tensor, str_tensor[:1]
        zero_batch      int_tensor int32 -> int_tensor reshaped to [-1, 2]
        zero_batches    str_tensor string, float_tensor float -> reshaped to [-1, 1, 2], [-1, 3, 4]
        zero_batch_mixed  int_tensor int32, str_tensor string -> int_tensor as [-1, 2], str_tensor
        no_outputs      x float [?]  -> nothing (an empty tensor map)
    """
    import tensorflow as tf

    module = tf.Module()
    signatures = {}

    def identity(spec):
        arguments = [tf.TensorSpec(None, tf.as_dtype(dtype), name=name) for name, dtype in spec.items()]
        names = list(spec)

        def answer(*tensors):
            return {name: tf.identity(tensor) for name, tensor in zip(names, tensors)}

        return tf.function(answer, input_signature=arguments)

    for name, spec in CONFORMANCE_SIGNATURES.items():
        signatures[name] = identity(spec)

    int_spec = tf.TensorSpec(None, tf.int32, name="int_tensor")
    str_spec = tf.TensorSpec(None, tf.string, name="str_tensor")
    signatures["complex_output"] = tf.function(
        lambda x: {"tensor": tf.complex(x, tf.zeros_like(x))}, input_signature=[tf.TensorSpec(None, tf.float32, name="x")])
    signatures["scalar_output"] = tf.function(
        lambda x: {"tensor": tf.reduce_sum(x)}, input_signature=[tf.TensorSpec(None, tf.int32, name="x")])
    signatures["inconsistent_batch"] = tf.function(
        lambda int_tensor, str_tensor: {"int_tensor": tf.identity(int_tensor), "str_tensor": str_tensor[:1]},
        input_signature=[int_spec, str_spec])
    signatures["zero_batch"] = tf.function(
        lambda int_tensor: {"int_tensor": tf.reshape(int_tensor, [-1, 2])}, input_signature=[int_spec])
    signatures["zero_batches"] = tf.function(
        lambda str_tensor, float_tensor: {"str_tensor": tf.reshape(str_tensor, [-1, 1, 2]),
                                          "float_tensor": tf.reshape(float_tensor, [-1, 3, 4])},
        input_signature=[str_spec, tf.TensorSpec(None, tf.float32, name="float_tensor")])
    signatures["zero_batch_mixed"] = tf.function(
        lambda int_tensor, str_tensor: {"int_tensor": tf.reshape(int_tensor, [-1, 2]),
                                        "str_tensor": tf.identity(str_tensor)},
        input_signature=[int_spec, str_spec])
    signatures["no_outputs"] = tf.function(lambda x: {}, input_signature=[tf.TensorSpec(None, tf.float32, name="x")])
    for name, function in signatures.items():
        setattr(module, name, function)
    tf.saved_model.save(module, str(path), signatures=signatures)


def save_half_plus_two(path):
    """Writes TensorFlow's half_plus_two SavedModel to `path`, built as
    tensorflow/cc/saved_model/testdata/saved_model_half_plus_two.py builds it (a TF1 graph, a=0.5,
    b=2, c=3): serving_default x -> y = a x + b; regress_x_to_y, regress_x_to_y2 and classify_x_to_y
    on serialized tf.Examples (`tf_example`); regress_x2_to_y3 and classify_x2_to_y3 x2 -> y3 = a x2 + c.
    """
    import tensorflow as tf

    v1 = tf.compat.v1
    builder = v1.saved_model.Builder(str(path))
    with tf.Graph().as_default(), v1.Session() as session:
        a = v1.Variable(0.5, name="a")
        b = v1.Variable(2.0, name="b")
        c = v1.Variable(3.0, name="c")
        serialized = v1.placeholder(tf.string, name="tf_example")
        features = v1.io.parse_example(serialized, {
            "x": v1.io.FixedLenFeature([1], dtype=tf.float32),
            "x2": v1.io.FixedLenFeature([1], dtype=tf.float32, default_value=[0.0]),
        })
        x = tf.identity(tf.ensure_shape(features["x"], [None, 1]), name="x")
        y = tf.identity(tf.add(tf.multiply(a, x), b), name="y")
        y2 = tf.identity(tf.add(tf.multiply(a, x), c), name="y2")
        x2 = tf.identity(tf.ensure_shape(features["x2"], [None, 1]), name="x2")
        y3 = tf.identity(tf.add(tf.multiply(a, x2), c), name="y3")
        info = v1.saved_model.utils.build_tensor_info
        build = v1.saved_model.signature_def_utils.build_signature_def
        constants = v1.saved_model.signature_constants

        def regression(inputs, outputs):
            return build({constants.REGRESS_INPUTS: info(inputs)}, {constants.REGRESS_OUTPUTS: info(outputs)},
                         constants.REGRESS_METHOD_NAME)

        def classification(inputs, scores):
            return build({constants.CLASSIFY_INPUTS: info(inputs)}, {constants.CLASSIFY_OUTPUT_SCORES: info(scores)},
                         constants.CLASSIFY_METHOD_NAME)

        session.run(v1.global_variables_initializer())
        builder.add_meta_graph_and_variables(session, [v1.saved_model.tag_constants.SERVING], signature_def_map={
            "regress_x_to_y": regression(serialized, y),
            "regress_x_to_y2": regression(serialized, y2),
            "regress_x2_to_y3": regression(x2, y3),
            "classify_x_to_y": classification(serialized, y),
            "classify_x2_to_y3": classification(x2, y3),
            constants.DEFAULT_SERVING_SIGNATURE_DEF_KEY: build({"x": info(x)}, {"y": info(y)},
                                                              constants.PREDICT_METHOD_NAME),
        })
    builder.save()


def save_counter_model(path):
    """Writes predict_util_test.cc's saved_model_counter to `path`: a float counter with
    signatures get_counter, incr_counter, reset_counter (no inputs) and incr_counter_by (delta),
    each answering the counter after the change as `output` (a scalar)."""
    import tensorflow as tf

    class Counter(tf.Module):
        def __init__(self):
            super().__init__()
            self.counter = tf.Variable(0.0)

        @tf.function(input_signature=[])
        def get_counter(self):
            return {"output": tf.identity(self.counter)}

        @tf.function(input_signature=[])
        def incr_counter(self):
            return {"output": self.counter.assign_add(1.0)}

        @tf.function(input_signature=[])
        def reset_counter(self):
            return {"output": self.counter.assign(0.0)}

        @tf.function(input_signature=[tf.TensorSpec([], tf.float32, name="delta")])
        def incr_counter_by(self, delta):
            return {"output": self.counter.assign_add(delta)}

    module = Counter()
    tf.saved_model.save(module, str(path), signatures={
        name: getattr(module, name) for name in ("get_counter", "incr_counter", "reset_counter", "incr_counter_by")
    })


def save_real_export(base):
    """A real kerasformer export at `base/tiny/1`: a copy of the reference model that ships in
    saved_models/kerasformer_en_es/1 (the real export's signatures, made by kerasformer-export)."""
    path = os.path.join(base, REAL_EXPORT_MODEL, "1")
    shutil.copytree(REFERENCE_EXPORT, path)
    return path


@functools.cache
def model_base(real_export=False):
    """The model base folder (see the module docstring), built once per process."""
    base = tempfile.mkdtemp(prefix="conformance-models-")
    atexit.register(shutil.rmtree, base, ignore_errors=True)
    save_conformance_model(os.path.join(base, CONFORMANCE_MODEL, "1"))
    for version in HALF_PLUS_TWO_VERSIONS:
        save_half_plus_two(os.path.join(base, HALF_PLUS_TWO_MODEL, str(version)))
    save_counter_model(os.path.join(base, COUNTER_MODEL, "1"))
    if real_export:
        save_real_export(base)
    return base


def start_server(tmp_path, base, *extra_args, model=CONFORMANCE_MODEL):
    """`kerasformer-serve` on `base` over loopback, ready (a `serving_helpers.ServerProcess`)."""
    return ServerProcess(tmp_path, base, *extra_args, model=model).wait_until_ready()


@pytest.fixture(scope="module")
def conformance_server(tmp_path_factory):
    """A server on `model_base()` (no real export) for the module's rows; `.url`, `.log()`."""
    server = start_server(tmp_path_factory.mktemp("conformance"), model_base())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def real_export_server(tmp_path_factory):
    """A server on `model_base(real_export=True)`: the conformance models and `tiny`."""
    server = start_server(tmp_path_factory.mktemp("conformance"), model_base(real_export=True),
                          model=REAL_EXPORT_MODEL)
    try:
        yield server
    finally:
        server.stop()
