"""Request batching: concurrent predict requests merged into one graph call, as TensorFlow
Serving does with `--enable_batching`.

Requests for the same model version and signature whose non-batched inputs are equal (e.g. the
same `max_length`) join one open batch. The batch runs when it holds `max_batch_size` rows, or
`batch_timeout_micros` after its first request once one of the `num_batch_threads` threads is
free (it keeps filling while they are all busy). Batched inputs are concatenated along axis 0;
with `pad_variable_length_inputs` inputs of different widths (0-padded token ids) are padded to
the widest with 0 (b"" for strings). The outputs are split back by rows.

One answer whatever the neighbours: a merged batch comes back padded to its longest row, so
each request's integer outputs of rank 2 (kerasformer's `tokens`) are trimmed of trailing
all-zero columns, on every request that goes through the batcher, alone or merged. A merged
batch that fails (one request's input fails an assertion inside the graph) runs its requests
again one at a time, so the error reaches only the request that caused it. With batching on, a
request therefore gets the same answer whether or not it was merged.

A request with more rows than `max_batch_size` runs alone. When more than
`max_enqueued_batches` batches wait, a new request gets 503 (TF Serving's UNAVAILABLE).
"""

import asyncio
import dataclasses
import logging
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from export.serving.status import StatusError, internal, unavailable

log = logging.getLogger("kerasformer.serve")


@dataclasses.dataclass
class BatchingParameters:
    """The fields of TensorFlow Serving's BatchingParameters this batcher uses.

    The defaults apply to fields a parameters file leaves out, and to `--enable-batching`
    without a file.
    """

    max_batch_size: int = 32
    batch_timeout_micros: int = 1000
    max_enqueued_batches: int = 100
    num_batch_threads: int = 4
    pad_variable_length_inputs: bool = True


def parse_batching_parameters(text, source="<batching parameters>"):
    """Reads TF Serving's text-proto batching file: `max_batch_size { value: 32 }` lines.

    Known fields become `BatchingParameters`; unknown ones (`allowed_batch_sizes`,
    `thread_pool_name`, ...) are logged and ignored.
    """
    text = re.sub(r"#[^\n]*", "", text)
    field = re.compile(r"\s*([A-Za-z_]+)\s*(?:\{\s*value\s*:\s*([^\s}]+)\s*\}|:\s*([^\s{}]+))")
    parameters = BatchingParameters()
    position = 0
    while text[position:].strip():
        position += len(text[position:]) - len(text[position:].lstrip())
        match = field.match(text, position)
        if match is None:
            line = text.count("\n", 0, position) + 1
            raise ValueError(f"{source}:{line}: cannot parse {text[position:].strip().splitlines()[0]!r}")
        name, value = match.group(1), match.group(2) or match.group(3)
        position = match.end()
        default = getattr(BatchingParameters, name, None)
        if isinstance(default, bool):
            if value not in ("true", "false"):
                raise ValueError(f"{source}: {name} must be true or false, got {value!r}")
            setattr(parameters, name, value == "true")
        elif isinstance(default, int):
            if not value.isdigit():
                raise ValueError(f"{source}: {name} must be a non-negative integer, got {value!r}")
            setattr(parameters, name, int(value))
        else:
            log.warning("%s: ignoring batching parameter %s=%s (not supported)", source, name, value)
    if parameters.max_batch_size < 1 or parameters.num_batch_threads < 1:
        raise ValueError(f"{source}: max_batch_size and num_batch_threads must be >= 1, got {parameters}")
    return parameters


def trim_padding(outputs):
    """Drops trailing all-zero columns of integer outputs of rank 2: the padding a batch adds."""
    trimmed = {}
    for name, array in outputs.items():
        if array.ndim == 2 and array.dtype.kind in "iu" and array.shape[1]:
            used = np.flatnonzero(array.any(axis=0))
            array = array[:, : (used[-1] + 1 if used.size else 0)]
        trimmed[name] = array
    return trimmed


def _pad_and_concatenate(arrays, pad):
    """Concatenates along axis 0; pads axes >= 1 to the widest when `pad`."""
    if pad and any(a.shape[1:] != arrays[0].shape[1:] for a in arrays):
        widest = np.max([a.shape[1:] for a in arrays], axis=0)
        fill = b"" if arrays[0].dtype == object else 0
        arrays = [
            np.pad(a, [(0, 0)] + [(0, w - s) for w, s in zip(widest, a.shape[1:])], constant_values=fill)
            for a in arrays
        ]
    return np.concatenate(arrays, axis=0)


class _Batch:
    def __init__(self, max_rows):
        self.tasks = []  # (inputs, rows, future)
        self.rows = 0
        self.max_rows = max_rows
        self.full = asyncio.Event()

    def add(self, inputs, rows, future):
        self.tasks.append((inputs, rows, future))
        self.rows += rows
        if self.rows >= self.max_rows:
            self.full.set()


class Batcher:
    """Merges concurrent `run(model, signature, inputs)` calls into fewer `model.run` calls.

    Use from the server's event loop: `outputs = await batcher.run(model, signature, inputs)`.
    `batches` and `requests` count graph calls and requests, for /kerasformer/stats.
    """

    def __init__(self, parameters):
        self.parameters = parameters
        self._executor = ThreadPoolExecutor(parameters.num_batch_threads, thread_name_prefix="batch")
        self._slots = None  # asyncio.Semaphore, created on the event loop
        self._open = {}  # batch key -> _Batch still accepting requests
        self._waiting = 0  # batches formed and not yet running
        self.requests = 0
        self.batches = 0

    def _key(self, model, signature, inputs):
        parts = [id(model), signature.name]
        for name in sorted(inputs):
            array = inputs[name]
            if signature.inputs[name].batched:
                parts.append((name, str(array.dtype), array.ndim,
                              None if self.parameters.pad_variable_length_inputs else array.shape[1:]))
            else:
                parts.append((name, str(array.dtype), array.shape, array.tobytes() if array.dtype != object
                              else tuple(array.ravel().tolist())))
        return tuple(parts)

    async def run(self, model, signature, inputs):
        """Runs `signature` of `model` on inputs ({name: np.ndarray}) within a batch."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.parameters.num_batch_threads)
        self.requests += 1
        batched = [n for n in inputs if signature.inputs[n].batched]
        rows = inputs[batched[0]].shape[0] if batched else 1
        future = asyncio.get_running_loop().create_future()
        key = self._key(model, signature, inputs)
        batch = self._open.get(key)
        if batch is None or batch.rows + rows > self.parameters.max_batch_size:
            if self._waiting >= self.parameters.max_enqueued_batches:
                raise unavailable("The batch scheduling queue to which this task was submitted is full")
            if batch is not None:
                batch.full.set()  # it cannot take this request: let it run now
            batch = _Batch(self.parameters.max_batch_size)
            self._open[key] = batch
            self._waiting += 1
            asyncio.ensure_future(self._process(key, batch, model, signature, batched))
        batch.add(inputs, rows, future)
        return await future

    async def _process(self, key, batch, model, signature, batched):
        try:
            await asyncio.wait_for(batch.full.wait(), self.parameters.batch_timeout_micros / 1e6)
        except asyncio.TimeoutError:
            pass
        async with self._slots:
            if self._open.get(key) is batch:
                del self._open[key]
            self._waiting -= 1
            tasks = batch.tasks
            merged = {
                name: (_pad_and_concatenate([t[0][name] for t in tasks], self.parameters.pad_variable_length_inputs)
                       if name in batched else tasks[0][0][name])
                for name in tasks[0][0]
            }
            self.batches += 1
            log.debug("batch of %d requests (%d rows) for %s/%s", len(tasks), batch.rows, model.name, signature.name)
            try:
                outputs = await asyncio.get_running_loop().run_in_executor(
                    self._executor, model.run, signature.name, merged
                )
            except Exception as error:  # noqa: BLE001  (a request of the batch failed inside the graph)
                if len(tasks) > 1:
                    await self._run_alone(model, signature, tasks)
                elif not tasks[0][2].done():
                    tasks[0][2].set_exception(error)
                return
        for name, array in outputs.items():
            if array.ndim == 0 or array.shape[0] != batch.rows:
                error = internal(
                    f"output {name!r} has shape {list(array.shape)}: cannot split it into the rows "
                    f"of a merged batch of {batch.rows}"
                )
                for _, _, future in tasks:
                    if not future.done():
                        future.set_exception(error)
                return
        start = 0
        for _, rows, future in tasks:
            if not future.done():  # a client that went away leaves a cancelled future
                future.set_result(trim_padding({n: a[start : start + rows] for n, a in outputs.items()}))
            start += rows

    async def _run_alone(self, model, signature, tasks):
        """Runs each request of a failed batch by itself (holding the batch's slot), so that one
        request's bad input fails that request only: each gets the answer it gets unmerged."""
        loop = asyncio.get_running_loop()
        for inputs, _, future in tasks:
            if future.done():
                continue
            self.batches += 1
            try:
                outputs = await loop.run_in_executor(self._executor, model.run, signature.name, inputs)
            except Exception as error:  # noqa: BLE001  (this request's own error)
                if not future.done():
                    future.set_exception(error)
                continue
            if not future.done():
                future.set_result(trim_padding(outputs))

    def shutdown(self):
        self._executor.shutdown(wait=False, cancel_futures=True)
