"""Request batching as TensorFlow Serving's model server does it with `--enable_batching`.

The real server wraps each loaded SavedModel's session in a `BatchingSession`
(tensorflow_serving/batching/batching_session.cc) whose queues are served by one
`SharedBatchScheduler` (tensorflow/core/kernels/batching_util/shared_batch_scheduler.h) for all
models; `servables/tensorflow/bundle_factory_util.{h,cc}` turn the `BatchingParameters` of
`--batching_parameters_file` (servables/tensorflow/session_bundle_config.proto) into their
options. This module is that machinery, rule for rule:

- **One queue per model version and signature** (per set of input and output tensor names,
  `TensorSignatureFromRunArgs`); `num_batch_threads` threads shared by every queue take batches
  round-robin.
- **Every input is batched along dimension 0** (`ComputeTensorBatchSize`, batching/batching_util.h):
  a rank-0 input fails the request with "Batching Run() input tensors must have at least one
  dimension", inputs whose 0th dimensions differ with "Batching Run() input tensors must have
  equal 0th-dimension size". A request's size is that 0th dimension; one larger than
  `max_batch_size` fails with "Task size N is larger than maximum input batch size M" (or, with
  `enable_large_batch_splitting`, is split over several batches).
- **A batch runs** when it is full (`max_batch_size` rows, `max_execution_batch_size` when
  splitting) or `batch_timeout_micros` after its first request, once a thread is free; until
  then it keeps filling. With the default timeout of 0 a batch runs as soon as a thread is free,
  so requests merge only while every thread is busy. A batch whose requests have 0 rows in all
  never runs by itself (`PeekBatchPriorityImpl` needs a size > 0): the real server keeps such a
  request waiting until a request with rows joins its batch, and so does this one.
- **A full queue** (a request that does not fit the open batch while `max_enqueued_batches`
  batches wait) fails with UNAVAILABLE "The batch scheduling queue to which this task was
  submitted is full; currently N batches enqueued and max_enqueued_batches is M" (HTTP 503).
- **Merging** (`BatchingSession::MergeInputTensors`): each input is concatenated along
  dimension 0. Inputs of different shapes beyond dimension 0 fail the whole batch with
  FAILED_PRECONDITION "Tensors with name '...' from different tasks have different shapes and
  padding is turned off. ..." unless `pad_variable_length_inputs`, which pads each request's
  tensor to the batch's largest shape **with that tensor's first element** (`AddPadding`,
  batching_util.cc: `T pad_value(input.flat<T>()(0))`), not with 0. With `allowed_batch_sizes`
  the batch is rounded up to the next allowed size with copies of the first row of the last
  request (`RoundToLowestAllowedBatchSize`); those rows' outputs are dropped.
- **Splitting the outputs** (`SplitOutputTensors`): every output must be batch-major, else the
  whole batch fails with FAILED_PRECONDITION "Batched output tensor has 0 dimensions" or
  "Batched output tensor's 0th dimension does not equal the sum of the 0th dimension sizes of
  the input tensors" (also a batch of one request). Each request gets its rows of the merged
  outputs as they are: padded to the widest row of the batch, never trimmed (a kerasformer
  client reads `length`).
- **One status per batch**: `BatchingSession::ProcessBatch` gives every request of a batch the
  batch's status ("Regardless of the outcome, we need to propagate the status to the individual
  tasks"): a request whose input fails inside the graph fails every request merged with it,
  with the same error. A request that waited longer than its timeout (`--rest_api_timeout_in_ms`
  over REST) fails, when every request of its batch did, with RESOURCE_EXHAUSTED "Run() timeout
  exceeded while waiting in batching queue".

Defaults, for fields a parameters file leaves out (`has_...()` false in GetQueueOptions and
CreateBatchScheduler): max_batch_size 1000, batch_timeout_micros 0, max_enqueued_batches 10,
num_batch_threads the number of CPUs (`port::MaxParallelism()`), pad_variable_length_inputs
false, allowed_batch_sizes none, enable_large_batch_splitting false. `--enable_batching`
without a file uses them all (model_servers/server.cc sets only `thread_pool_name`).

Not as the real server: the merged run gets no deadline of its own (the real one passes the
latest of its requests' deadlines to Session::Run; a TensorFlow call from Python cannot be
stopped); a split request whose parts' outputs differ in width is refused with INTERNAL (the real
`tensor::Concat` copies their bytes regardless); the batching metrics
(`/tensorflow/serving/batching_session/...`) are not recorded.
"""

import asyncio
import collections
import dataclasses
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from kerasformer.export.serving.status import StatusError, internal, invalid_argument, unavailable

log = logging.getLogger("kerasformer.serve")


# --- the parameters file ------------------------------------------------------------------------


def _batching_parameters_class():
    """TensorFlow Serving's `tensorflow.serving.BatchingParameters` message class.

    tensorflow-serving-api does not ship `session_bundle_config_pb2`; when it does, that is used.
    Otherwise the message is built from its definition in
    tensorflow_serving/servables/tensorflow/session_bundle_config.proto (same package, names,
    numbers and types), so that a parameters file parses, and fails, as the real one does.
    """
    try:
        from tensorflow_serving.servables.tensorflow import session_bundle_config_pb2
    except ImportError:
        pass
    else:
        return session_bundle_config_pb2.BatchingParameters
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    field = descriptor_pb2.FieldDescriptorProto
    fields = [  # (name, number, label, type, message type)
        ("max_batch_size", 1, field.LABEL_OPTIONAL, field.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
        ("batch_timeout_micros", 2, field.LABEL_OPTIONAL, field.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
        ("max_enqueued_batches", 3, field.LABEL_OPTIONAL, field.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
        ("num_batch_threads", 4, field.LABEL_OPTIONAL, field.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
        ("thread_pool_name", 5, field.LABEL_OPTIONAL, field.TYPE_MESSAGE, ".google.protobuf.StringValue"),
        ("allowed_batch_sizes", 6, field.LABEL_REPEATED, field.TYPE_INT64, None),
        ("pad_variable_length_inputs", 7, field.LABEL_OPTIONAL, field.TYPE_BOOL, None),
        ("enable_large_batch_splitting", 8, field.LABEL_OPTIONAL, field.TYPE_MESSAGE, ".google.protobuf.BoolValue"),
        ("max_execution_batch_size", 9, field.LABEL_OPTIONAL, field.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
    ]
    file = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/servables/tensorflow/session_bundle_config.proto",
        package="tensorflow.serving", syntax="proto3", dependency=["google/protobuf/wrappers.proto"],
    )
    message = file.message_type.add(name="BatchingParameters")
    for name, number, label, kind, type_name in fields:
        message.field.add(name=name, number=number, label=label, type=kind, json_name=_camel(name),
                          **({"type_name": type_name} if type_name else {}))
    pool = descriptor_pool.DescriptorPool()  # our own: never clashes with a generated module
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def _camel(name):
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


BatchingParameters = _batching_parameters_class()


def batching_parameters(**values):
    """A `BatchingParameters` message from plain values: `batching_parameters(max_batch_size=4)`
    sets `max_batch_size { value: 4 }`; wrapper fields take the bare value."""
    parameters = BatchingParameters()
    for name, value in values.items():
        if name == "allowed_batch_sizes":
            parameters.allowed_batch_sizes.extend(value)
        elif name == "pad_variable_length_inputs":
            parameters.pad_variable_length_inputs = value
        else:
            getattr(parameters, name).value = value
    return parameters


def parse_batching_parameters(text, source="<batching parameters>"):
    """Parses the text format of `--batching_parameters_file` into a `BatchingParameters`.

    As `ParseProtoTextFile` (tensorflow_serving/util/proto_util.h): an unknown field, a bad value
    or a syntax error fails with INVALID_ARGUMENT "Invalid protobuf file: 'SOURCE'", the real
    server's status message (its server then does not start); the parser's own reason is kept on
    the error as `detail`. The server reads the file with
    `kerasformer.export.serving.model_config.parse_proto_text_file`, which does the same.
    """
    from google.protobuf import text_format

    parameters = BatchingParameters()
    try:
        text_format.Parse(text, parameters)
    except text_format.ParseError as error:
        failed = invalid_argument(f"Invalid protobuf file: '{source}'")
        failed.detail = str(error)
        raise failed from None
    return parameters


_SIZE_T = 1 << 64  # the real options hold these int64 fields in size_t: a negative value wraps


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """The options the real server derives from a `BatchingParameters`: SharedBatchScheduler's
    `Options` and `QueueOptions` (GetQueueOptions, CreateBatchScheduler in
    servables/tensorflow/bundle_factory_util.h) and `BatchingSessionOptions`
    (WrapSessionForBatching), each field's default that of the real struct."""

    num_batch_threads: int
    thread_pool_name: str = "batch_threads"
    input_batch_size_limit: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int = 1000
    allowed_batch_sizes: tuple = ()
    pad_variable_length_inputs: bool = False

    @classmethod
    def from_parameters(cls, parameters):
        """Options from a `BatchingParameters` message (None: `--enable_batching` without a file)."""
        if parameters is None:
            return cls(num_batch_threads=_max_parallelism(), thread_pool_name="model_server_batch_threads")
        values = {"num_batch_threads": _max_parallelism()}
        if parameters.HasField("num_batch_threads"):
            # `options.num_batch_threads` is an int: the int64 value is truncated to 32 bits.
            values["num_batch_threads"] = (parameters.num_batch_threads.value + (1 << 31)) % (1 << 32) - (1 << 31)
        if parameters.HasField("thread_pool_name"):
            values["thread_pool_name"] = parameters.thread_pool_name.value
        if parameters.HasField("max_batch_size"):
            values["input_batch_size_limit"] = parameters.max_batch_size.value % _SIZE_T
        if parameters.HasField("batch_timeout_micros"):
            values["batch_timeout_micros"] = parameters.batch_timeout_micros.value
        if parameters.HasField("max_enqueued_batches"):
            values["max_enqueued_batches"] = parameters.max_enqueued_batches.value % _SIZE_T
        if parameters.HasField("enable_large_batch_splitting") and parameters.enable_large_batch_splitting.value:
            values["enable_large_batch_splitting"] = True
            # `max_batch_size().value()` reads 0 when max_batch_size is not set either.
            values["max_execution_batch_size"] = (
                parameters.max_execution_batch_size.value if parameters.HasField("max_execution_batch_size")
                else parameters.max_batch_size.value) % _SIZE_T
        values["allowed_batch_sizes"] = tuple(parameters.allowed_batch_sizes)
        values["pad_variable_length_inputs"] = parameters.pad_variable_length_inputs
        return cls(**values)

    @property
    def batch_size_limit(self):
        """The most rows a batch holds (`GetMaxExecutionBatchSize`)."""
        return self.max_execution_batch_size if self.enable_large_batch_splitting else self.input_batch_size_limit

    def scheduler_error(self):
        """Why the real server would not start with these options (`SharedBatchScheduler::Create`,
        run when the server builds its SavedModelBundleFactory), or None."""
        if self.num_batch_threads < 1:
            return invalid_argument(f"num_batch_threads must be positive; was {self.num_batch_threads}")
        return None

    def model_load_error(self):
        """Why the real server would fail to load every model version with these options
        (WrapSessionForBatching's check of allowed_batch_sizes, then `AddQueue`), or None."""
        if self.allowed_batch_sizes and self.allowed_batch_sizes[-1] != self.input_batch_size_limit:
            return invalid_argument(
                f"Last entry in allowed_batch_sizes must match max_batch_size; last entry was "
                f"{self.allowed_batch_sizes[-1]}; expected {self.input_batch_size_limit}")
        if self.input_batch_size_limit == 0:
            return invalid_argument(f"input_batch_size_limit must be positive; was {self.input_batch_size_limit}")
        if self.batch_timeout_micros < 0:
            return invalid_argument(f"batch_timeout_micros must be non-negative; was {self.batch_timeout_micros}")
        if self.max_enqueued_batches == 0 and self.enable_large_batch_splitting:
            # Without splitting, AddQueue rewrites 0 to 1 ("many existing models rely on" it).
            return invalid_argument(f"max_enqueued_batches must be positive; was {self.max_enqueued_batches}")
        if self.enable_large_batch_splitting and self.input_batch_size_limit < self.max_execution_batch_size:
            # errors::InvalidArgument concatenates its trailing arguments without separators.
            return invalid_argument(
                "When enable_large_batch_splitting is true, input_batch_size_limit must be greater than or equal "
                f"to max_execution_batch_size.1{self.input_batch_size_limit}{self.max_execution_batch_size}")
        if self.enable_large_batch_splitting and self.max_execution_batch_size == 0:
            # The real server divides by it when it splits a request (InputSplitMetadata).
            return invalid_argument("kerasformer-serve: enable_large_batch_splitting needs max_execution_batch_size "
                                    "or max_batch_size above 0 (TensorFlow Serving divides by zero)")
        return None


def _max_parallelism():
    """`port::MaxParallelism()`: the CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --- the rules of batching/batching_util.{h,cc} ------------------------------------------------


def compute_tensor_batch_size(inputs):
    """The batch size (0th dimension) shared by every input ({name: np.ndarray}), as
    `ComputeTensorBatchSize` (batching/batching_util.h); raises INVALID_ARGUMENT otherwise."""
    if not inputs:
        raise invalid_argument("Batching Run() must have at least one input tensor")
    size = None
    for array in inputs.values():
        if array.ndim == 0:
            raise invalid_argument("Batching Run() input tensors must have at least one dimension")
        if size is None:
            size = array.shape[0]
        elif array.shape[0] != size:
            raise invalid_argument("Batching Run() input tensors must have equal 0th-dimension size")
    return size


def calculate_max_dim_sizes(batch):
    """For a batch (a list of {name: array}, one per request): {name: largest size of each
    dimension}, as `CalculateMaxDimSizes`; the rank is that of the first request's tensor."""
    max_dim_sizes = {name: [0] * array.ndim for name, array in batch[0].items()}
    for inputs in batch:
        for name, array in inputs.items():
            sizes = max_dim_sizes.setdefault(name, [0] * array.ndim)
            for axis, size in enumerate(array.shape[: len(sizes)]):
                sizes[axis] = max(sizes[axis], size)
    return max_dim_sizes


def add_padding(array, max_dim_sizes):
    """`array` padded after its elements to `max_dim_sizes` in every dimension but the 0th, with
    its own first element (`AddPadding`: "First element of a tensor is used as padding value").

    Raises INVALID_ARGUMENT for ranks outside 1..6 ("Only tensors with rank from 1 to 6 can be
    padded.", as the Eigen pad it uses) and for an empty tensor that needs padding ("Got empty
    tensor in batch of non-empty tensors.").
    """
    if not 1 <= array.ndim <= 6:
        raise invalid_argument("Only tensors with rank from 1 to 6 can be padded.")
    shape = (array.shape[0],) + tuple(max(size, own) for size, own in zip(max_dim_sizes[1:], array.shape[1:]))
    if int(np.prod(shape)) == array.size:
        return array
    if array.size == 0:
        raise invalid_argument("Got empty tensor in batch of non-empty tensors.")
    padded = np.full(shape, array.flat[0], dtype=array.dtype)
    padded[tuple(slice(0, size) for size in array.shape)] = array
    return padded


def round_to_lowest_allowed_batch_size(allowed_batch_sizes, batch_size):
    """The smallest allowed size >= `batch_size`; `batch_size` itself when none is (or none are
    given), as `RoundToLowestAllowedBatchSize`."""
    for allowed in allowed_batch_sizes:
        if allowed >= batch_size:
            return allowed
    if allowed_batch_sizes:
        log.warning("Input batch size %d is greater than largest allowed size %d ignoring allowed sizes "
                    "constraint.", batch_size, allowed_batch_sizes[-1])
    return batch_size


def are_shapes_equal_except_zero_dim(shape1, shape2):
    """Whether two shapes have the same rank and sizes from dimension 1 on."""
    return len(shape1) == len(shape2) and tuple(shape1[1:]) == tuple(shape2[1:])


def input_split_sizes(input_size, open_batch_remaining_slot, batch_size_limit):
    """How a request of `input_size` rows is split with `enable_large_batch_splitting`
    (InputSplitMetadata, tensorflow/core/kernels/batching_util/input_split_metadata.cc): the
    first part fills the open batch, the next ones fill whole batches, the last takes the rest."""
    from_open_batch = (input_size + batch_size_limit - open_batch_remaining_slot if open_batch_remaining_slot > 0
                       else input_size)
    count = (from_open_batch + batch_size_limit - 1) // batch_size_limit
    sizes = [batch_size_limit] * count
    sizes[0] = (min(input_size, batch_size_limit) if open_batch_remaining_slot == 0
                else min(open_batch_remaining_slot, input_size))
    if input_size <= open_batch_remaining_slot:
        sizes[-1] = input_size
    else:
        sizes[-1] = from_open_batch % batch_size_limit or batch_size_limit
    return sizes


def merge_input_tensors(task_inputs, options, tensor_names=None):
    """One batch's inputs: {name: array} per request -> {name: merged array}, and the padding
    rows added (`BatchingSession::MergeInputTensors`).

    tensor_names: input name -> graph tensor name, which the real server's errors quote
    (`serving_default_text:0`); default the input names.
    """
    tensor_names = tensor_names or {}
    batch_size = sum(next(iter(inputs.values())).shape[0] for inputs in task_inputs)
    padding_rows = round_to_lowest_allowed_batch_size(options.allowed_batch_sizes, batch_size) - batch_size
    max_dim_sizes = calculate_max_dim_sizes(task_inputs) if options.pad_variable_length_inputs else None
    to_merge = collections.defaultdict(list)
    for index, inputs in enumerate(task_inputs):
        for name in sorted(inputs):
            array = inputs[name]
            if options.pad_variable_length_inputs:
                if array.ndim != len(max_dim_sizes[name]):
                    # The real server pads past the end of its size list here (undefined behaviour).
                    raise internal(f"kerasformer-serve: input {tensor_names.get(name, name)!r} has ranks "
                                   f"{len(max_dim_sizes[name])} and {array.ndim} in one batch; cannot pad")
                array = add_padding(array, max_dim_sizes[name])
            elif index > 0 and not are_shapes_equal_except_zero_dim(array.shape, to_merge[name][0].shape):
                raise StatusError(
                    "FAILED_PRECONDITION",
                    f"Tensors with name '{tensor_names.get(name, name)}' from different tasks have different shapes "
                    "and padding is turned off. Set pad_variable_length_inputs to true, or ensure that all tensors "
                    "with the same name have equal dimensions starting with the first dim.")
            to_merge[name].append(array)
            if index == len(task_inputs) - 1 and padding_rows > 0:
                # "Use the first row of this task's tensor as the padding data."
                to_merge[name].extend([array[:1]] * padding_rows)
    # Equal shapes past dimension 0 now (checked or padded): tensor::Concat along dimension 0.
    return {name: np.concatenate(arrays, axis=0) for name, arrays in to_merge.items()}, padding_rows


def split_output_tensors(outputs, task_sizes, padding_rows=0):
    """A batch's outputs {name: array} -> one {name: rows} per request (`SplitOutputTensors`).

    Every output must be batch-major, with a 0th dimension of sum(task_sizes) + padding_rows;
    otherwise FAILED_PRECONDITION fails the whole batch. The padding rows' outputs are dropped.
    """
    rows = sum(task_sizes) + padding_rows
    for array in outputs.values():
        if array.ndim == 0:
            raise StatusError("FAILED_PRECONDITION", "Batched output tensor has 0 dimensions")
        if array.shape[0] != rows:
            raise StatusError("FAILED_PRECONDITION", "Batched output tensor's 0th dimension does not equal the sum "
                                                     "of the 0th dimension sizes of the input tensors")
    split, start = [], 0
    for size in task_sizes:
        split.append({name: array[start: start + size] for name, array in outputs.items()})
        start += size
    return split


# --- the scheduler ------------------------------------------------------------------------------


class _SplitRequest:
    """A request spread over several batches (enable_large_batch_splitting): its answer is the
    concatenation of its parts' outputs, or the first error of any part (ThreadSafeStatus)."""

    def __init__(self, future, parts):
        self.future = future
        self.outputs = [None] * parts
        self.remaining = parts
        self.error = None

    def part_done(self, index, outputs=None, error=None):
        if error is not None and self.error is None:
            self.error = error
        self.outputs[index] = outputs
        self.remaining -= 1
        if self.remaining or self.future.done():
            return
        if self.error is not None:
            self.future.set_exception(self.error)
            return
        joined = {}
        for name in self.outputs[0]:
            arrays = [part[name] for part in self.outputs]
            if len({a.shape[1:] for a in arrays}) > 1:
                # tensor::Concat in the real server checks only dimension 0 and copies the bytes of
                # parts of different widths regardless; we refuse rather than answer garbage.
                self.future.set_exception(internal(
                    f"kerasformer-serve: output {name!r} of a split request has parts of shapes "
                    f"{[list(a.shape) for a in arrays]}, which cannot be concatenated"))
                return
            joined[name] = np.concatenate(arrays, axis=0)
        self.future.set_result(joined)


@dataclasses.dataclass
class _Task:
    """One request (or one part of a split request) in a queue (`BatchingSessionTask`)."""

    inputs: dict
    size: int
    enqueue_time: float
    timeout_in_ms: int
    future: asyncio.Future | None = None
    split: _SplitRequest | None = None
    split_index: int = 0

    def finish(self, outputs=None, error=None):
        if self.split is not None:
            self.split.part_done(self.split_index, outputs, error)
        elif not self.future.done():  # a client that went away leaves a cancelled future
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(outputs)


class _Batch:
    def __init__(self):
        self.tasks = []
        self.size = 0

    def add(self, task):
        self.tasks.append(task)
        self.size += task.size


class _Queue:
    """The batches of one model version and signature (SharedBatchScheduler's internal::Queue):
    a deque whose last batch is open, the others closed and waiting for a thread."""

    def __init__(self, model, signature, options):
        self.model, self.signature, self.options = model, signature, options
        self.batches = collections.deque([_Batch()])
        self.open_batch_start = 0.0
        self.in_flight = 0
        defs = getattr(model, "signature_defs", None)
        self.tensor_names = ({alias: info.name for alias, info in defs[signature.name].inputs.items()}
                             if defs is not None and signature.name in defs else {})

    def schedule(self, task, now):
        """Adds a task, or raises its error (`Queue::Schedule`, ValidateBatchTaskQueueCapacity)."""
        options, limit = self.options, self.options.batch_size_limit
        if task.size > options.input_batch_size_limit:
            raise invalid_argument(f"Task size {task.size} is larger than maximum input batch size "
                                   f"{options.input_batch_size_limit}")
        open_batch = self.batches[-1]
        if options.enable_large_batch_splitting:
            capacity = (options.max_enqueued_batches - len(self.batches)) * limit + limit - open_batch.size
            if task.size > capacity:
                raise unavailable(
                    f"The batch scheduling queue to which this task was submitted is full; task size is {task.size} "
                    f"but scheduling capacity is only {capacity} (num_enqueued_batches={len(self.batches)}, "
                    f"max_enqueued_batches={options.max_enqueued_batches}, open_batch_size={open_batch.size}, "
                    f"max_execution_batch_size={limit})")
        elif open_batch.size + task.size > options.input_batch_size_limit and \
                len(self.batches) >= max(options.max_enqueued_batches, 1):
            raise unavailable(f"The batch scheduling queue to which this task was submitted is full; currently "
                              f"{len(self.batches)} batches enqueued and max_enqueued_batches is "
                              f"{max(options.max_enqueued_batches, 1)}")
        parts = [task]
        if options.enable_large_batch_splitting and task.size > limit - open_batch.size:
            sizes = input_split_sizes(task.size, limit - open_batch.size, limit)
            task.split = _SplitRequest(task.future, len(sizes))
            parts, start = [], 0
            for index, size in enumerate(sizes):
                parts.append(dataclasses.replace(
                    task, inputs={n: a[start: start + size] for n, a in task.inputs.items()}, size=size,
                    split_index=index))
                start += size
        for part in parts:
            if self.batches[-1].size + part.size > limit:
                self.batches.append(_Batch())  # closes the open batch
            if not self.batches[-1].tasks:
                self.open_batch_start = now
            self.batches[-1].add(part)

    def _open_batch_schedulable(self, now):
        size = self.batches[-1].size
        return size > 0 and (size >= self.options.batch_size_limit
                             or now >= self.open_batch_start + self.options.batch_timeout_micros / 1e6)

    def take_batch(self, now):
        """The next batch to run, or None (`Queue::ScheduleBatch`)."""
        if len(self.batches) == 1 and self._open_batch_schedulable(now):
            self.batches.append(_Batch())
        if len(self.batches) >= 2:
            self.in_flight += 1
            return self.batches.popleft()
        return None

    def wake_time(self):
        """When the open batch becomes due by its timeout; None if it never will by itself."""
        if len(self.batches) == 1 and self.batches[-1].size > 0:
            return self.open_batch_start + self.options.batch_timeout_micros / 1e6
        return None

    @property
    def idle(self):
        return self.in_flight == 0 and len(self.batches) == 1 and not self.batches[-1].tasks


class Batcher:
    """Merges concurrent `run(model, signature, inputs)` calls into batches, as the real server's
    BatchingSession and SharedBatchScheduler do (see the module docstring).

    Args:
        parameters: a `BatchingParameters` message (`read_batching_parameters(path)`), or None for
            `--enable_batching` without `--batching_parameters_file`.

    Raises StatusError INVALID_ARGUMENT when the real server would not start with `parameters`
    (num_batch_threads < 1). `model_load_error()` says why it would refuse every model version.
    Use from one event loop: `outputs = await batcher.run(model, signature, inputs)`. `requests`
    and `batches` count requests and graph calls, for /kerasformer/stats; `parameters` holds the
    options in force (`BatchingOptions`).
    """

    def __init__(self, parameters=None):
        self.parameters = BatchingOptions.from_parameters(parameters)
        error = self.parameters.scheduler_error()
        if error is not None:
            raise error
        self._executor = ThreadPoolExecutor(self.parameters.num_batch_threads,
                                            thread_name_prefix=self.parameters.thread_pool_name)
        self._queues = {}  # (model, signature name, input names) -> _Queue, in creation order
        self._next_queue = 0
        self._loop = None
        self._wake = None
        self._workers = []
        self.requests = 0
        self.batches = 0
        self._count_lock = threading.Lock()

    def model_load_error(self):
        """The StatusError with which the real server refuses to load any model version under
        these parameters (a bad allowed_batch_sizes, a zero max_batch_size, ...), or None."""
        return self.parameters.model_load_error()

    async def run(self, model, signature, inputs, timeout_in_ms=0):
        """Runs `signature` of `model` on `inputs` ({name: np.ndarray}) within a batch; returns its
        rows of every output ({name: np.ndarray}).

        timeout_in_ms: the request's RunOptions timeout (`--rest_api_timeout_in_ms` over REST);
            0 or less waits without limit.
        Raises StatusError with the real server's code and text for every rule it breaks.
        """
        self._start_workers()
        self.requests += 1
        size = compute_tensor_batch_size(inputs)
        key = (model, signature.name, tuple(sorted(inputs)))
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue(model, signature, self.parameters)
        future = self._loop.create_future()
        task = _Task(inputs=dict(inputs), size=size, enqueue_time=time.monotonic(), timeout_in_ms=timeout_in_ms,
                     future=future)
        try:
            queue.schedule(task, time.monotonic())
        except StatusError:
            self._drop_if_idle(key)
            raise
        self._wake.set()
        return await future

    def _start_workers(self):
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        self._loop, self._wake = loop, asyncio.Event()
        self._workers = [loop.create_task(self._worker()) for _ in range(self.parameters.num_batch_threads)]

    def _drop_if_idle(self, key):
        """Forgets a queue with nothing in it: an unloaded model version is not kept alive."""
        queue = self._queues.get(key)
        if queue is not None and queue.idle:
            del self._queues[key]

    def _next_work_item(self, now):
        """A batch to run from the queues, round-robin (`GetNextWorkItem_Locked`), or None."""
        queues = list(self._queues.items())
        for attempt in range(len(queues)):
            index = (self._next_queue + attempt) % len(queues)
            key, queue = queues[index]
            batch = queue.take_batch(now)
            if batch is not None:
                self._next_queue = index + 1
                return key, queue, batch
        return None

    async def _worker(self):
        """One of `num_batch_threads` batch threads: takes a batch when one is due, runs it."""
        while True:
            self._wake.clear()
            now = time.monotonic()
            work = self._next_work_item(now)
            if work is None:
                due = [t for t in (q.wake_time() for q in self._queues.values()) if t is not None]
                try:
                    await asyncio.wait_for(self._wake.wait(), max(0.0, min(due) - now) if due else None)
                except TimeoutError:
                    pass
                continue
            key, queue, batch = work
            try:
                await self._process_batch(queue, batch)
            finally:
                queue.in_flight -= 1
                self._drop_if_idle(key)
                self._wake.set()  # a thread is free again: another may pick up the next batch

    async def _process_batch(self, queue, batch):
        """`BatchingSession::ProcessBatch`: every task of the batch gets the batch's status."""
        try:
            outputs = await self._loop.run_in_executor(self._executor, self._run_batch, queue, batch,
                                                       time.monotonic())
        except Exception as error:  # noqa: BLE001  (any failure is the status of every task)
            for task in batch.tasks:
                task.finish(error=error)
            return
        for task, rows in zip(batch.tasks, outputs):
            task.finish(outputs=rows)

    def _run_batch(self, queue, batch, dequeue_time):
        """On a batch thread: timeouts, merge, one graph call, split. Returns the tasks' outputs."""
        deadlines = [task.enqueue_time + task.timeout_in_ms / 1e3 for task in batch.tasks if task.timeout_in_ms > 0]
        if len(deadlines) == len(batch.tasks) and all(deadline <= dequeue_time for deadline in deadlines):
            raise StatusError("RESOURCE_EXHAUSTED", "Run() timeout exceeded while waiting in batching queue")
        merged, padding_rows = merge_input_tensors([task.inputs for task in batch.tasks], queue.options,
                                                   queue.tensor_names)
        with self._count_lock:
            self.batches += 1
        log.debug("batch of %d requests (%d rows + %d padding) for %s/%s", len(batch.tasks), batch.size,
                  padding_rows, getattr(queue.model, "name", "?"), queue.signature.name)
        outputs = queue.model.run(queue.signature.name, merged)
        return split_output_tensors(outputs, [task.size for task in batch.tasks], padding_rows)

    def shutdown(self):
        for worker in self._workers:
            worker.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
