"""export/serving/batching.py against the real server's batching rules.

Rows come from tensorflow/serving's own tests and source, each named after the test (or the
function) it was taken from:
  batching/batching_util_test.cc            the padding and shape helpers
  batching/batching_session_test.cc         merged requests: padding, allowed sizes, splitting, errors
  tensorflow/core/kernels/batching_util/input_split_metadata_test.cc   how a large request splits
  batching/batching_util.h, batching_session.cc, shared_batch_scheduler.h   error texts and defaults
The session tests run on `HalfPlusTwo`, the NumPy twin of their `half_plus_two` SavedModel
(y = x / 2 + 2; y3 = x2 / 2 + 3). The last part merges requests for the fake kerasformer
SavedModel of tests/serving_helpers.py, loaded as the server loads it.

Batches form deterministically: a test either fills a batch (max_batch_size rows) while its
timeout "won't trigger" (60 s), or holds the only batch thread in a model call until the
requests it needs are queued. Nothing here measures time.
"""

import asyncio
import os
import threading
import types

import numpy as np
import pytest

from kerasformer.export.serving.batching import (
    Batcher, BatchingOptions, BatchingParameters, add_padding, are_shapes_equal_except_zero_dim, batching_parameters,
    calculate_max_dim_sizes, compute_tensor_batch_size, input_split_sizes, parse_batching_parameters,
    round_to_lowest_allowed_batch_size,
)
from kerasformer.export.serving.model_config import parse_proto_text_file
from kerasformer.export.serving.status import StatusError

pytestmark = pytest.mark.backend_independent  # see tests/run.sh

WONT_TRIGGER = 60_000_000  # batch_timeout_micros: a batch runs when full, never by its timeout here
PADDING_OFF_ERROR = ("Tensors with name '{}' from different tasks have different shapes and padding is turned off. "
                     "Set pad_variable_length_inputs to true, or ensure that all tensors with the same name have "
                     "equal dimensions starting with the first dim.")


def signature(name="serving_default"):
    """What the batcher reads of a signature: its name."""
    return types.SimpleNamespace(name=name)


class HalfPlusTwo:
    """The NumPy twin of tensorflow/serving's half_plus_two test model: y = x / 2 + 2 and
    y3 = x2 / 2 + 3, for whichever of x, x2 are fed. `batch_sizes` records every call's rows
    (BatchingSessionTest's BatchSizeCapturingSession); `hold`, when set, blocks each call until
    it is released, after setting `running`."""

    name = "half_plus_two"

    def __init__(self, hold=False):
        self.batch_sizes = []
        self.running = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def run(self, signature_name, inputs):
        self.running.set()
        self.release.wait(60)
        self.batch_sizes.append(len(next(iter(inputs.values()))))
        outputs = {}
        if "x" in inputs:
            outputs["y"] = (inputs["x"] / 2 + 2).astype(np.float32)
        if "x2" in inputs:
            outputs["y3"] = (inputs["x2"] / 2 + 3).astype(np.float32)
        return outputs


def floats(values, shape):
    return np.array(values, np.float32).reshape(shape)


def run_requests(parameters, model, requests, timeouts_in_ms=None):
    """Sends `requests` ([(signature name, inputs)]) to one Batcher at once, in order; returns each
    answer or the StatusError it raised."""

    async def send():
        batcher = Batcher(parameters)
        try:
            calls = [batcher.run(model, signature(name), inputs, (timeouts_in_ms or {}).get(index, 0))
                     for index, (name, inputs) in enumerate(requests)]
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            batcher.shutdown()

    return asyncio.run(send())


def assert_error(answer, code, message):
    assert isinstance(answer, StatusError), answer
    assert (answer.code, answer.message) == (code, message)


# --- batching/batching_util_test.cc and batching_util.h ------------------------------------------


def test_calculate_max_dim_sizes():
    """BatchingUtilTest.CalculateMaxDimSizes."""
    batch = [{"x0": np.zeros((10, 20, 30)), "x1": np.zeros((10, 100))},
             {"x0": np.zeros((20, 50, 15)), "x1": np.zeros((20, 101))}]
    assert calculate_max_dim_sizes(batch) == {"x0": [20, 50, 30], "x1": [20, 101]}


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.uint8, np.int16, np.uint16, np.int8, object,
                                   np.bool_, np.complex64, np.complex128, np.int64, np.float16])
def test_add_padding(dtype):
    """BatchingUtilTest.AddPadding: every type (the quantized and resource types have no NumPy
    twin), a tensor of T() padded to [10, 100, 200]; the 0th dimension is never padded."""
    tensor = np.full((10, 20, 30), b"" if dtype is object else 0, dtype=dtype)
    assert add_padding(tensor, [20, 100, 200]).shape == (10, 100, 200)


def test_add_padding_tensor_with_unsupported_rank():
    """BatchingUtilTest.AddPaddingTensorWithUnsupportedRank."""
    with pytest.raises(StatusError) as error:
        add_padding(np.zeros((1,) * 7, np.float32), [1] * 7)
    assert (error.value.code, error.value.message) == ("INVALID_ARGUMENT",
                                                       "Only tensors with rank from 1 to 6 can be padded.")


def test_add_padding_pads_with_the_first_element():
    """batching_util.h, AddPadding: "given input tensor with shape [1, 2, 3, 4] and max_dim_sizes
    [1, 2, 5, 8] function produces padded_tensor of shape [1, 2, 5, 8], padded with
    tensor[0][0][0][0] element" (`T pad_value(input.flat<T>()(0))` in batching_util.cc)."""
    tensor = np.arange(7, 7 + 24, dtype=np.int32).reshape(1, 2, 3, 4)
    padded = add_padding(tensor, [1, 2, 5, 8])
    assert padded.shape == (1, 2, 5, 8)
    assert (padded[:, :, :3, :4] == tensor).all()
    assert (padded[:, :, 3:, :] == 7).all() and (padded[:, :, :, 4:] == 7).all()
    strings = add_padding(np.array([[b"first", b"b"]], dtype=object), [1, 4])
    assert strings.tolist() == [[b"first", b"b", b"first", b"first"]]


def test_add_padding_of_an_empty_tensor():
    """batching_util.cc, PadTensor: an empty tensor that needs padding has no first element."""
    assert add_padding(np.zeros((0, 3), np.int32), [2, 3]).shape == (0, 3)  # nothing to pad: copied
    with pytest.raises(StatusError) as error:
        add_padding(np.zeros((2, 0), np.int32), [2, 3])
    assert error.value.message == "Got empty tensor in batch of non-empty tensors."


def test_round_to_lowest_allowed_batch_size():
    """batching_util.h, RoundToLowestAllowedBatchSize: "the smallest entry in
    `allowed_batch_sizes` that is greater than or equal to `batch_size`. If `allowed_batch_sizes`
    is empty, simply returns `batch_size`" (and batching_util.cc: also when all are smaller)."""
    assert [round_to_lowest_allowed_batch_size([2, 4, 8], n) for n in (1, 2, 3, 5, 8, 9)] == [2, 2, 4, 8, 8, 9]
    assert round_to_lowest_allowed_batch_size([], 3) == 3


def test_are_shapes_equal_except_zero_dim():
    """batching_util.h, AreShapesEqualExceptZeroDim: "for shapes [1, 2, 3] and [4, 2, 3] the
    result is true"."""
    assert are_shapes_equal_except_zero_dim((1, 2, 3), (4, 2, 3))
    assert not are_shapes_equal_except_zero_dim((1, 2, 3), (1, 2, 4))
    assert not are_shapes_equal_except_zero_dim((1, 2), (1, 2, 1))


def test_compute_tensor_batch_size():
    """batching_util.h, ComputeTensorBatchSize: its three errors."""
    assert compute_tensor_batch_size({"a": np.zeros((3, 2)), "b": np.zeros(3)}) == 3
    for inputs, message in [({}, "Batching Run() must have at least one input tensor"),
                            ({"a": np.zeros(3), "b": np.array(5)},
                             "Batching Run() input tensors must have at least one dimension"),
                            ({"a": np.zeros(3), "b": np.zeros(2)},
                             "Batching Run() input tensors must have equal 0th-dimension size")]:
        with pytest.raises(StatusError) as error:
            compute_tensor_batch_size(inputs)
        assert (error.value.code, error.value.message) == ("INVALID_ARGUMENT", message)


@pytest.mark.parametrize("input_size, open_batch_remaining_slot, batch_size_limit, expected", [
    (5, 1, 1, [1, 1, 1, 1, 1]), (10, 3, 4, [3, 4, 3]), (20, 5, 6, [5, 6, 6, 3]), (30, 0, 11, [11, 11, 8]),
    (5, 6, 8, [5]),
])
def test_input_split_sizes(input_size, open_batch_remaining_slot, batch_size_limit, expected):
    """InputSplitUtilTest.Basic (tensorflow/core/kernels/batching_util/input_split_metadata_test.cc)."""
    assert input_split_sizes(input_size, open_batch_remaining_slot, batch_size_limit) == expected


# --- the parameters file and its defaults --------------------------------------------------------


def test_defaults_without_a_parameters_file():
    """model_servers/server.cc: `--enable_batching` without a file sets only thread_pool_name;
    every other option is its struct's default (shared_batch_scheduler.h QueueOptions: 1000 rows,
    timeout 0, 10 batches; Options: port::MaxParallelism() threads; BatchingSessionOptions: no
    padding, no allowed sizes)."""
    options = BatchingOptions.from_parameters(None)
    assert options == BatchingOptions(num_batch_threads=len(os.sched_getaffinity(0)),
                                      thread_pool_name="model_server_batch_threads", input_batch_size_limit=1000,
                                      batch_timeout_micros=0, max_enqueued_batches=10,
                                      enable_large_batch_splitting=False, allowed_batch_sizes=(),
                                      pad_variable_length_inputs=False)
    assert BatchingOptions.from_parameters(BatchingParameters()) == BatchingOptions(
        num_batch_threads=len(os.sched_getaffinity(0)))


def test_the_documented_parameters_file(tmp_path):
    """The example of tensorflow_serving/g3doc/serving_config.md ("Batching Configuration"), and
    bundle_factory_util.h GetQueueOptions: a field set in the file replaces its default."""
    path = tmp_path / "batching.txt"
    path.write_text("max_batch_size { value: 128 }\nbatch_timeout_micros { value: 0 }\n"
                    "max_enqueued_batches { value: 1000000 }\nnum_batch_threads { value: 8 }\n")
    options = BatchingOptions.from_parameters(parse_proto_text_file(str(path), BatchingParameters))
    assert (options.input_batch_size_limit, options.batch_timeout_micros, options.max_enqueued_batches,
            options.num_batch_threads, options.thread_pool_name) == (128, 0, 1_000_000, 8, "batch_threads")
    parameters = parse_batching_parameters("allowed_batch_sizes: [2, 4]\npad_variable_length_inputs: true\n"
                                           "max_batch_size { value: 4 }  # a comment\n")
    assert parameters == batching_parameters(allowed_batch_sizes=[2, 4], pad_variable_length_inputs=True,
                                             max_batch_size=4)


@pytest.mark.parametrize("text", [
    "max_batch_sizes { value: 4 }",  # no such field
    "max_batch_size: 4",  # a wrapper message, not a number
    "max_batch_size { value: 4 }\nmax_batch_size { value: 8 }",  # a singular field twice
    "pad_variable_length_inputs: maybe",
    "max_batch_size { value: 4 ",
])
def test_a_bad_parameters_file(text):
    """util/proto_util.h, ParseProtoTextFile: any text-format error is INVALID_ARGUMENT "Invalid
    protobuf file: 'PATH'" (the server does not start)."""
    with pytest.raises(StatusError) as error:
        parse_batching_parameters(text, "/config/batching.txt")
    assert (error.value.code, error.value.message) == ("INVALID_ARGUMENT",
                                                       "Invalid protobuf file: '/config/batching.txt'")


def test_options_the_real_server_refuses():
    """SharedBatchScheduler::Create refuses num_batch_threads < 1 (the server does not start);
    WrapSessionForBatching and AddQueue refuse the rest when a model loads."""
    with pytest.raises(StatusError) as error:
        Batcher(batching_parameters(num_batch_threads=0))
    assert error.value.message == "num_batch_threads must be positive; was 0"
    for values, message in [
        ({"max_batch_size": 0}, "input_batch_size_limit must be positive; was 0"),
        ({"batch_timeout_micros": -1}, "batch_timeout_micros must be non-negative; was -1"),
        ({"enable_large_batch_splitting": True, "max_batch_size": 4, "max_enqueued_batches": 0},
         "max_enqueued_batches must be positive; was 0"),
    ]:
        batcher = Batcher(batching_parameters(num_batch_threads=1, **values))
        assert (batcher.model_load_error().code, batcher.model_load_error().message) == ("INVALID_ARGUMENT", message)
        batcher.shutdown()
    # Without splitting, AddQueue rewrites max_enqueued_batches 0 to 1 ("many existing models rely on").
    assert Batcher(batching_parameters(num_batch_threads=1, max_enqueued_batches=0)).model_load_error() is None


@pytest.mark.parametrize("allowed", [[2, 8], [4, 2]])
def test_final_allowed_batch_size_must_match_max_batch_size(allowed):
    """BatchingSessionTest.FinalAllowedBatchSizeLargerThanMaxBatchSizeRejected and
    UnsortedAllowedBatchSizesRejected, as the model server checks it (WrapSessionForBatching)."""
    batcher = Batcher(batching_parameters(max_batch_size=4, allowed_batch_sizes=allowed, num_batch_threads=1))
    error = batcher.model_load_error()
    assert (error.code, error.message) == (
        "INVALID_ARGUMENT",
        f"Last entry in allowed_batch_sizes must match max_batch_size; last entry was {allowed[-1]}; expected 4")
    batcher.shutdown()
    default_limit = Batcher(batching_parameters(allowed_batch_sizes=[500], num_batch_threads=1)).model_load_error()
    assert default_limit.message.endswith("last entry was 500; expected 1000")  # QueueOptions' default limit


# --- batching/batching_session_test.cc ------------------------------------------------------------


def test_basic():
    """BatchingSessionTest.Basic: two 2-row requests fill a batch of 4 and run as one call."""
    model = HalfPlusTwo()
    first, second = run_requests(
        batching_parameters(max_batch_size=4, batch_timeout_micros=WONT_TRIGGER, num_batch_threads=1), model,
        [("serving_default", {"x": floats([100, 42], 2)}), ("serving_default", {"x": floats([71.5, 18.3], 2)})])
    np.testing.assert_allclose(first["y"], [52, 23])
    np.testing.assert_allclose(second["y"], [37.75, 11.15], rtol=1e-6)
    assert model.batch_sizes == [4]


def test_batching_with_padding():
    """BatchingSessionTest.BatchingWithPadding: the [1, 2, 2] input is padded to [1, 3, 3] with its
    first element, 1 (its comment says "with zeros"; its expected outputs, 2.5 = 1 / 2 + 2, say 1)."""
    model = HalfPlusTwo()
    first, second = run_requests(
        batching_parameters(max_batch_size=2, batch_timeout_micros=WONT_TRIGGER, num_batch_threads=1,
                            pad_variable_length_inputs=True), model,
        [("serving_default", {"x": floats([1, 2, 3, 4], (1, 2, 2))}),
         ("serving_default", {"x": floats(range(5, 14), (1, 3, 3))})])
    np.testing.assert_allclose(first["y"], floats([2.5, 3, 2.5, 3.5, 4, 2.5, 2.5, 2.5, 2.5], (1, 3, 3)))
    np.testing.assert_allclose(second["y"], floats([4.5, 5, 5.5, 6, 6.5, 7, 7.5, 8, 8.5], (1, 3, 3)))
    assert model.batch_sizes == [2]


def test_batching_with_large_batch():
    """BatchingSessionTest.BatchingWithLargeBatch, without splitting: a request larger than
    max_batch_size fails alone; the other is answered."""
    first, second = run_requests(
        batching_parameters(max_batch_size=3, batch_timeout_micros=0, num_batch_threads=2), HalfPlusTwo(),
        [("serving_default", {"x": floats([5, 6, 7, 8], (1, 2, 2))}),
         ("serving_default", {"x": floats(range(5, 21), (4, 2, 2))})])
    np.testing.assert_allclose(first["y"], floats([4.5, 5, 5.5, 6], (1, 2, 2)))
    assert_error(second, "INVALID_ARGUMENT", "Task size 4 is larger than maximum input batch size 3")


def test_batching_with_large_batch_splitting():
    """BatchingSessionTest.BatchingWithLargeBatch, with enable_large_batch_splitting: max 3 rows a
    request, 2 a batch, so the 3-row request is split over two batches and joined again."""
    model = HalfPlusTwo()
    first, second = run_requests(
        batching_parameters(max_batch_size=3, batch_timeout_micros=WONT_TRIGGER, num_batch_threads=2,
                            enable_large_batch_splitting=True, max_execution_batch_size=2), model,
        [("serving_default", {"x": floats([5, 6, 7, 8], (1, 2, 2))}),
         ("serving_default", {"x": floats(range(5, 17), (3, 2, 2))})])
    np.testing.assert_allclose(first["y"], floats([4.5, 5, 5.5, 6], (1, 2, 2)))
    np.testing.assert_allclose(second["y"], floats(np.arange(5, 17) / 2 + 2, (3, 2, 2)))
    assert sorted(model.batch_sizes) == [2, 2]


def test_batch_handles_split_error():
    """BatchingSessionTest.BatchHandlesSplitError: the 3-row request is split 2 + 1; its second
    part shares a batch with a request of another shape, and that batch's error fails both."""
    message = PADDING_OFF_ERROR.format("x")
    first, second = run_requests(
        batching_parameters(max_batch_size=3, batch_timeout_micros=WONT_TRIGGER, num_batch_threads=1,
                            enable_large_batch_splitting=True, max_execution_batch_size=2), HalfPlusTwo(),
        [("serving_default", {"x": floats([1, 2, 3], (3, 1, 1))}),
         ("serving_default", {"x": floats([1, 2], (1, 2))})])
    assert_error(first, "FAILED_PRECONDITION", message)
    assert_error(second, "FAILED_PRECONDITION", message)


def test_batching_lazy_split():
    """BatchingSessionTest.BatchingLazySplit: batches of one row; two 1-row requests."""
    first, second = run_requests(
        batching_parameters(max_batch_size=2, batch_timeout_micros=WONT_TRIGGER, num_batch_threads=1,
                            enable_large_batch_splitting=True, max_execution_batch_size=1), HalfPlusTwo(),
        [("serving_default", {"x": floats([5, 6, 7, 8], (1, 2, 2))}),
         ("serving_default", {"x": floats([1, 2, 3, 4], (1, 2, 2))})])
    np.testing.assert_allclose(first["y"], floats([4.5, 5, 5.5, 6], (1, 2, 2)))
    np.testing.assert_allclose(second["y"], floats([2.5, 3, 3.5, 4], (1, 2, 2)))


def test_unequal_tensor_shapes_with_padding_turned_off():
    """BatchingSessionTest.UnequalTensorShapesWithPaddingTurnedOff: both requests of the batch
    get the error (and pad_variable_length_inputs is off by default)."""
    answers = run_requests(
        batching_parameters(max_batch_size=2, batch_timeout_micros=WONT_TRIGGER, num_batch_threads=1), HalfPlusTwo(),
        [("serving_default", {"x": floats([1, 2, 3, 4], (1, 2, 2))}),
         ("serving_default", {"x": floats(range(5, 14), (1, 3, 3))})])
    for answer in answers:
        assert_error(answer, "FAILED_PRECONDITION", PADDING_OFF_ERROR.format("x"))


def test_singleton_batch():
    """BatchingSessionTest.SingletonBatch: with timeout 0 a lone request runs at once."""
    model = HalfPlusTwo()
    (answer,) = run_requests(batching_parameters(max_batch_size=4, batch_timeout_micros=0, num_batch_threads=1),
                             model, [("serving_default", {"x": floats([100, 42], 2)})])
    np.testing.assert_allclose(answer["y"], [52, 23])
    assert model.batch_sizes == [2]


def test_request_with_incompatible_input_tensor_sizes():
    """BatchingSessionTest.RequestWithIncompatibleInputTensorSizes."""
    model = HalfPlusTwo()
    (answer,) = run_requests(batching_parameters(num_batch_threads=1), model,
                             [("serving_default", {"x": floats([3], 1), "x2": floats([5, 7], 2)})])
    assert_error(answer, "INVALID_ARGUMENT", "Batching Run() input tensors must have equal 0th-dimension size")
    assert model.batch_sizes == []


def test_rank_0_input():
    """batching_util.h, ComputeTensorBatchSize (tensorflow/serving#494): a scalar input fails the
    request before it is queued, even alone."""
    model = HalfPlusTwo()
    (answer,) = run_requests(batching_parameters(num_batch_threads=1), model,
                             [("serving_default", {"x": np.float32(3)})])
    assert_error(answer, "INVALID_ARGUMENT", "Batching Run() input tensors must have at least one dimension")
    assert model.batch_sizes == []


@pytest.mark.parametrize("allowed, rows_run", [([2, 4], 2), ([1, 3, 4], 3)],
                         ids=["AllowedBatchSizesNoPaddingNeeded", "AllowedBatchSizesRequirePadding"])
def test_allowed_batch_sizes(allowed, rows_run):
    """BatchingSessionTest.AllowedBatchSizesNoPaddingNeeded and AllowedBatchSizesRequirePadding:
    a batch of 2 runs as 2, or padded to 3 with the request's first row; the answer has 2 rows."""
    model = HalfPlusTwo()
    (answer,) = run_requests(
        batching_parameters(max_batch_size=4, batch_timeout_micros=0, num_batch_threads=1,
                            allowed_batch_sizes=allowed), model, [("serving_default", {"x": floats([100, 42], 2)})])
    np.testing.assert_allclose(answer["y"], [52, 23])
    assert model.batch_sizes == [rows_run]


def test_different_order_for_input_and_output_tensors():
    """BatchingSessionTest.DifferentOrderForInputAndOutputTensors: requests naming the same
    inputs in another order share a queue and a batch."""
    model = HalfPlusTwo()
    answers = run_requests(
        batching_parameters(max_batch_size=6, batch_timeout_micros=WONT_TRIGGER, num_batch_threads=1), model,
        [("serving_default", {"x": floats([8, 6], 2), "x2": floats([100, 42], 2)}),
         ("serving_default", {"x2": floats([100, 42], 2), "x": floats([8, 6], 2)}),
         ("serving_default", {"x2": floats([100, 42], 2), "x": floats([8, 6], 2)})])
    for answer in answers:
        np.testing.assert_allclose(answer["y"], [6, 5])
        np.testing.assert_allclose(answer["y3"], [53, 24])
    assert model.batch_sizes == [6]


def test_multiple_signatures():
    """BatchingSessionTest.MultipleSignatures: one queue per signature; requests of different
    signatures never share a batch."""
    model = HalfPlusTwo()
    answers = run_requests(
        batching_parameters(max_batch_size=4, batch_timeout_micros=WONT_TRIGGER, num_batch_threads=1), model,
        [("x", {"x": floats([100, 42], 2)}), ("x2", {"x2": floats([100, 42], 2)}),
         ("x", {"x": floats([100, 42], 2)}), ("x2", {"x2": floats([100, 42], 2)})])
    for answer in answers[0::2]:
        assert set(answer) == {"y"}
        np.testing.assert_allclose(answer["y"], [52, 23])
    for answer in answers[1::2]:
        assert set(answer) == {"y3"}
        np.testing.assert_allclose(answer["y3"], [53, 24])
    assert model.batch_sizes == [4, 4]


def with_the_batch_thread_held(parameters, model, then):
    """Sends one request that holds the only batch thread in `model` (a `HalfPlusTwo(hold=True)`),
    runs `then(batcher)` (a coroutine) while it is held, releases it; returns (the held request's
    answer, what `then` returned)."""

    async def send():
        batcher = Batcher(parameters)
        try:
            held = asyncio.ensure_future(batcher.run(model, signature(), {"x": floats([1], 1)}))
            while not model.running.is_set():
                await asyncio.sleep(0.01)
            result = await then(batcher)
            model.release.set()
            return await held, result
        finally:
            model.release.set()
            batcher.shutdown()

    return asyncio.run(send())


def test_enqueued_longer_than_timeout():
    """BatchingSessionTest.EnqueuedLongerThanTimeout: a request that waited in the queue past its
    RunOptions timeout (1 ms) gets RESOURCE_EXHAUSTED when its batch is dequeued."""
    model = HalfPlusTwo(hold=True)

    async def then(batcher):
        late = asyncio.ensure_future(batcher.run(model, signature(), {"x": floats([100, 42], 2)}, timeout_in_ms=1))
        patient = asyncio.ensure_future(batcher.run(model, signature("other"), {"x": floats([2], 1)}))
        await asyncio.sleep(0.05)  # both queued behind the held call, past the 1 ms
        model.release.set()
        return await asyncio.gather(late, patient, return_exceptions=True)

    held, (late, patient) = with_the_batch_thread_held(
        batching_parameters(max_batch_size=4, batch_timeout_micros=0, num_batch_threads=1), model, then)
    np.testing.assert_allclose(held["y"], [2.5])
    assert_error(late, "RESOURCE_EXHAUSTED", "Run() timeout exceeded while waiting in batching queue")
    np.testing.assert_allclose(patient["y"], [3])  # no timeout: waits as long as it takes


def test_queue_full():
    """shared_batch_scheduler.h, ValidateBatchTaskQueueCapacity: a request that does not fit the
    open batch while max_enqueued_batches batches wait (the open one counts) is refused with
    UNAVAILABLE; the queued ones run once the thread is free."""
    model = HalfPlusTwo(hold=True)

    async def then(batcher):
        queued = [asyncio.ensure_future(batcher.run(model, signature(), {"x": floats([n], 1)})) for n in (2, 4)]
        await asyncio.sleep(0)
        with pytest.raises(StatusError) as refused:
            await batcher.run(model, signature(), {"x": floats([6], 1)})
        model.release.set()
        return refused.value, await asyncio.gather(*queued)

    _, (refused, queued) = with_the_batch_thread_held(
        batching_parameters(max_batch_size=1, batch_timeout_micros=0, max_enqueued_batches=2, num_batch_threads=1),
        model, then)
    assert (refused.code, refused.message, refused.http_status) == (
        "UNAVAILABLE", "The batch scheduling queue to which this task was submitted is full; currently 2 batches "
                       "enqueued and max_enqueued_batches is 2", 503)
    assert [answer["y"].tolist() for answer in queued] == [[3.0], [4.0]]


def test_requests_merge_while_the_threads_are_busy():
    """shared_batch_scheduler.h: with the default timeout 0 a batch runs as soon as a thread is
    free, and requests that arrive while every thread is busy fill the open batch meanwhile."""
    model = HalfPlusTwo(hold=True)

    async def then(batcher):
        queued = [asyncio.ensure_future(batcher.run(model, signature(), {"x": floats([n], 1)})) for n in (2, 4, 6)]
        await asyncio.sleep(0)
        model.release.set()
        return await asyncio.gather(*queued)

    _, answers = with_the_batch_thread_held(batching_parameters(num_batch_threads=1), model, then)
    assert [answer["y"].tolist() for answer in answers] == [[3.0], [4.0], [5.0]]
    assert model.batch_sizes == [1, 3]


def test_output_that_is_not_batch_major():
    """batching_session.cc, SplitOutputTensors (tensorflow/serving#276, #2043): a rank-0 output,
    or one whose 0th dimension is not the batch's rows, fails the batch, even of one request."""

    class ScalarOutput(HalfPlusTwo):
        def run(self, signature_name, inputs):
            return {"y": np.float32(1), "z": np.zeros(len(inputs["x"]))}

    class ShortOutput(HalfPlusTwo):
        def run(self, signature_name, inputs):
            return {"y": np.zeros(len(inputs["x"]) - 1)}

    for model, message in [(ScalarOutput(), "Batched output tensor has 0 dimensions"),
                           (ShortOutput(), "Batched output tensor's 0th dimension does not equal the sum of the 0th "
                                           "dimension sizes of the input tensors")]:
        (answer,) = run_requests(batching_parameters(num_batch_threads=1), model,
                                 [("serving_default", {"x": floats([1, 2], 2)})])
        assert_error(answer, "FAILED_PRECONDITION", message)


def test_a_request_of_no_rows_waits_for_one_with_rows():
    """shared_batch_scheduler.h, PeekBatchPriorityImpl: an open batch of size 0 is never due (`if
    (effective_batch_size == 0) return std::nullopt`), so a request with 0 rows waits until a
    request with rows joins its batch; then both are answered."""
    model = HalfPlusTwo()

    async def send():
        batcher = Batcher(batching_parameters(num_batch_threads=1))
        try:
            empty = asyncio.ensure_future(batcher.run(model, signature(), {"x": floats([], 0)}))
            done, _ = await asyncio.wait([empty], timeout=0.2)
            assert not done, "a request of 0 rows ran alone"
            full = await batcher.run(model, signature(), {"x": floats([2], 1)})
            return await empty, full
        finally:
            batcher.shutdown()

    empty, full = asyncio.run(send())
    assert empty["y"].shape == (0,) and full["y"].tolist() == [3.0]
    assert model.batch_sizes == [1]


# --- merged requests for the fake kerasformer SavedModel ------------------------------------------


@pytest.fixture(scope="module")
def fake_model(tmp_path_factory):
    from serving_helpers import save_fake_model

    from kerasformer.export.serving.model_repository import LoadedModel

    path = tmp_path_factory.mktemp("batching") / "fake" / "1"
    save_fake_model(path)
    return LoadedModel("fake", 1, str(path))


def run_fake(model, parameters, requests):
    """`run_requests` for the fake SavedModel: requests are (signature name, inputs of lists)."""
    typed = [(name, {k: np.array(v, dtype=object if isinstance(np.ravel(v)[0], bytes) else np.int32)
                     for k, v in inputs.items()}) for name, inputs in requests]

    async def send():
        batcher = Batcher(parameters)
        try:
            return await asyncio.gather(*(batcher.run(model, signature(name), inputs) for name, inputs in typed),
                                        return_exceptions=True)
        finally:
            batcher.shutdown()

    return asyncio.run(send())


def test_merged_requests_get_their_rows_padded_to_the_batch(fake_model):
    """SplitOutputTensors: each request gets its rows of the merged outputs as they are, `tokens`
    as wide as the batch's longest row; `length` says how much of it is the row's."""
    calls = fake_model.graph_calls
    texts = [[b"ab"], [b"hello", b"c"], [b"xyz"]]
    answers = run_fake(fake_model, batching_parameters(max_batch_size=4, batch_timeout_micros=WONT_TRIGGER,
                                                       num_batch_threads=1),
                       [("serving_default", {"text": t}) for t in texts])
    assert fake_model.graph_calls == calls + 1
    assert [a["translation"].tolist() for a in answers] == [[b"AB!"], [b"HELLO!", b"C!"], [b"XYZ!"]]
    assert [a["length"].tolist() for a in answers] == [[2], [5, 1], [3]]
    assert [a["tokens"].tolist() for a in answers] == [
        [[97, 98, 0, 0, 0]], [[104, 101, 108, 108, 111], [99, 0, 0, 0, 0]], [[120, 121, 122, 0, 0]]]


def test_per_row_max_length_merges(fake_model):
    """translate_max_length: both inputs are batched, so requests with different limits merge
    and each row stops at its own."""
    answers = run_fake(fake_model, batching_parameters(max_batch_size=3, batch_timeout_micros=WONT_TRIGGER,
                                                       num_batch_threads=1),
                       [("translate_max_length", {"text": [b"abcdef", b"abcdef"], "max_length": [2, 4]}),
                        ("translate_max_length", {"text": [b"abcdef"], "max_length": [1]})])
    assert [a["length"].tolist() for a in answers] == [[2, 4], [1]]
    assert [a["tokens"].tolist() for a in answers] == [[[97, 98, 0, 0], [97, 98, 99, 100]], [[97, 0, 0, 0]]]


def test_a_failing_request_fails_its_batch(fake_model):
    """batching_session.cc, ProcessBatch: "Regardless of the outcome, we need to propagate the
    status to the individual tasks": a request failing inside the graph fails every request
    merged with it, with its error; unmerged, the others are answered."""
    requests = [("serving_default", {"text": t}) for t in ([b"a"], [b"__fail__"], [b"b", b"c"])]
    answers = run_fake(fake_model, batching_parameters(max_batch_size=4, batch_timeout_micros=WONT_TRIGGER,
                                                       num_batch_threads=1), requests)
    for answer in answers:
        assert isinstance(answer, StatusError) and answer.code == "INVALID_ARGUMENT"
        assert "asked to fail" in answer.message and answer.message == answers[0].message
    alone = [run_fake(fake_model, batching_parameters(num_batch_threads=1), [request])[0] for request in requests]
    assert alone[0]["translation"].tolist() == [b"A!"] and alone[2]["translation"].tolist() == [b"B!", b"C!"]
    assert isinstance(alone[1], StatusError)


def test_token_rows_of_different_widths(fake_model):
    """translate_tokens with rows of different widths in one batch: refused for the whole batch
    (the default), or, with pad_variable_length_inputs, padded with each request's first token
    id, which the model then reads as tokens: the real server never pads with 0."""
    requests = [("translate_tokens", {"tokens": [[5, 6]]}), ("translate_tokens", {"tokens": [[1, 2, 3, 4]]})]
    parameters = {"max_batch_size": 2, "batch_timeout_micros": WONT_TRIGGER, "num_batch_threads": 1}
    for answer in run_fake(fake_model, batching_parameters(**parameters), requests):
        assert_error(answer, "FAILED_PRECONDITION", PADDING_OFF_ERROR.format("translate_tokens_tokens:0"))
    narrow, wide = run_fake(fake_model, batching_parameters(**parameters, pad_variable_length_inputs=True), requests)
    assert narrow["tokens"].tolist() == [[6, 7, 6, 6]] and narrow["length"].tolist() == [4]
    assert wide["tokens"].tolist() == [[2, 3, 4, 5]] and wide["length"].tolist() == [4]
    # Rows 0-padded by the client to one width merge without padding and answer as unmerged.
    same_width = [("translate_tokens", {"tokens": [[5, 6, 0, 0]]}), ("translate_tokens", {"tokens": [[1, 2, 3, 4]]})]
    narrow, wide = run_fake(fake_model, batching_parameters(**parameters), same_width)
    assert narrow["tokens"].tolist() == [[6, 7, 0, 0]] and narrow["length"].tolist() == [2]
