"""The models a server answers for: discovering, loading and polling `BASE/NAME/VERSION/`.

A model name is one plain folder name (`MODEL_NAME`; `check_model_name` refuses `..`, `a/b`,
`/abs`, `a\\b`), so no name reaches outside the base folder; folders under it with other names
are not served. A model version is a folder whose name is a positive integer and which holds a
SavedModel (`saved_model.pb`, `variables/`, `assets/`, `assets.extra/`). Other names (the
exporter's temporary `.tmp-XXXX` folders) are ignored.

Like TensorFlow Serving's default "latest" version policy, each model serves its newest version.
A poll every `poll_seconds` looks for newer version folders; a newer one is loaded while the old
one keeps answering, then swapped in at once (requests already running finish on the old one,
which they hold a reference to). A folder that fails to load (half copied, no `saved_model.pb`,
garbage bytes) is refused with one log line and the loaded version keeps serving; it is tried
again only when a file in it changes (its newest modification time).
"""

import dataclasses
import logging
import os
import re
import threading

import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the text ops the graphs hold; before any load)
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow.python.tools import saved_model_utils

from export.serving.rest_codec import SignatureSpec, TensorSpec, fill_defaults
from export.serving.status import StatusError, not_found

log = logging.getLogger("kerasformer.serve")

# TensorFlow's error codes (tf.errors.INVALID_ARGUMENT == 3, ...) are absl's status codes.
_STATUS_CODE = {
    getattr(tf.errors, name): name
    for name in ("CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
                 "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
                 "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")
}


# A model name: one folder name of letters, digits and `_.-`, not starting with `.` or `-`.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_model_name(name):
    """Returns `name` if it is a plain folder name (`MODEL_NAME`), else raises ValueError naming it.

    The exporter writes `BASE/NAME/` and the server reads it: a name such as `..`, `../other`,
    `/abs/path` or `a\\b` would reach outside the base folder.
    """
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
        raise ValueError(
            f"model name {name!r} is not a plain folder name: use letters, digits and _ . - "
            f"(starting with a letter or digit), e.g. kerasformer_en_es"
        )
    return name


def _dtype_name(enum_value):
    """7 -> "DT_STRING": SignatureDefs store dtypes as `DataType` enum values."""
    return types_pb2.DataType.Name(enum_value)


class LoadedModel:
    """One loaded version of a model: its signatures and the SignatureDefs that describe them."""

    def __init__(self, name, version, path):
        self.name, self.version, self.path = name, version, path
        # The loaded object owns the variables the signatures read: keep it referenced.
        self._loaded = tf.saved_model.load(path)
        meta_graph = saved_model_utils.get_meta_graph_def(path, "serve")
        self.signature_defs = meta_graph.signature_def
        self._functions = dict(self._loaded.signatures)
        self.signatures = {
            name: SignatureSpec(
                name=name,
                inputs={k: self._spec(v) for k, v in sorted(self.signature_defs[name].inputs.items())},
                outputs={k: self._spec(v) for k, v in sorted(self.signature_defs[name].outputs.items())},
                defaults={k: tf.make_ndarray(v) for k, v in self.signature_defs[name].defaults.items()},
            )
            for name in self._functions
        }
        self.graph_calls = 0
        self._lock = threading.Lock()
        self.warmup_requests = self.warm_up()

    def warm_up(self):
        """Replays `assets.extra/tf_serving_warmup_requests` (PredictionLogs, at most
        1000) as TensorFlow Serving does before a version takes traffic; an error
        refuses the version. Returns how many requests ran."""
        path = os.path.join(self.path, "assets.extra", "tf_serving_warmup_requests")
        if not os.path.exists(path):
            return 0
        from tensorflow_serving.apis import prediction_log_pb2

        count = 0
        for record in tf.data.TFRecordDataset(path).take(1000).as_numpy_iterator():
            request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
            signature = request.model_spec.signature_name or "serving_default"
            if signature not in self.signatures:
                raise ValueError(f"warmup request for unknown signature {signature!r} in {path}")
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            self.run(signature, fill_defaults(inputs, self.signatures[signature]))
            count += 1
        return count

    @staticmethod
    def _spec(tensor_info):
        shape = tensor_info.tensor_shape
        dims = None if shape.unknown_rank else tuple(dim.size for dim in shape.dim)
        return TensorSpec(_dtype_name(tensor_info.dtype), dims)

    def metadata(self):
        """TF Serving's `metadata` field: the SignatureDefMap as JSON (proto field names)."""
        signature_def = {
            name: json_format.MessageToDict(
                proto, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
            )
            for name, proto in sorted(self.signature_defs.items())
        }
        return {"signature_def": {"signature_def": signature_def}}

    def run(self, signature_name, inputs):
        """Calls one signature. inputs: {name: np.ndarray}, every input given (defaults filled).

        Returns {output name: np.ndarray}. A TensorFlow error raised inside the graph becomes a
        `StatusError` with TensorFlow's error code (INVALID_ARGUMENT -> HTTP 400,
        INTERNAL, UNKNOWN, DATA_LOSS, ... -> 500) and TensorFlow's message.
        """
        spec = self.signatures[signature_name]
        tensors = {
            name: tf.constant(inputs[name], dtype=tf.as_dtype(types_pb2.DataType.Value(tensor.dtype)))
            for name, tensor in spec.inputs.items()
        }
        with self._lock:
            self.graph_calls += 1
        try:
            outputs = self._functions[signature_name](**tensors)
        except tf.errors.OpError as error:
            raise StatusError(_STATUS_CODE.get(error.error_code, "UNKNOWN"), error.message) from None
        return {name: np.asarray(tensor.numpy()) for name, tensor in sorted(outputs.items())}


@dataclasses.dataclass
class _VersionRecord:
    """What the repository remembers of a version it has seen: for status answers."""

    state: str  # "AVAILABLE" or "END"
    error_code: str = "OK"
    error_message: str = ""
    fingerprint: float = 0.0  # newest modification time in the folder when it was tried


def _fingerprint(path):
    newest = os.stat(path).st_mtime
    for folder, _, files in os.walk(path):
        for entry in files + [folder]:
            try:
                newest = max(newest, os.stat(os.path.join(folder, entry)).st_mtime)
            except OSError:
                pass
    return newest


def version_folders(model_path):
    """{version number: folder path} of the complete-looking version folders of one model."""
    versions = {}
    try:
        entries = os.listdir(model_path)
    except OSError:
        return versions
    for entry in entries:
        path = os.path.join(model_path, entry)
        if entry.isascii() and entry.isdigit() and int(entry) > 0 and os.path.isdir(path):
            versions[int(entry)] = path
    return versions


class ModelRepository:
    """The serving versions of the models under `base_path`, kept up to date by `poll()`.

    Args:
        base_path: the folder holding one folder per model (`BASE/NAME/VERSION/`).
        model_names: the models to serve; None serves every model folder found (also ones that
            appear later).
        poll_seconds: how often the background thread looks for new versions.
    """

    def __init__(self, base_path, model_names=None, poll_seconds=2.0):
        self.base_path = base_path
        self.model_names = [check_model_name(name) for name in model_names] if model_names else None
        self.poll_seconds = poll_seconds
        self._serving = {}  # model name -> LoadedModel
        self._records = {}  # model name -> {version: _VersionRecord}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._ignored_names = set()  # folders under base_path whose names are not model names

    # --- lookups (any thread) ---

    def get(self, name, version=None):
        """The LoadedModel answering for NAME (newest) or NAME/versions/VERSION; 404 otherwise."""
        with self._lock:
            model = self._serving.get(name)
        if model is None or (version is not None and model.version != version):
            wanted = f"Latest({name})" if version is None else f"Specific({name}, {version})"
            raise not_found(f"Servable not found for request: {wanted}")
        return model

    def status(self, name, version=None):
        """TF Serving's `model_version_status` list: the serving version first, then versions
        that were unloaded or refused."""
        with self._lock:
            records = dict(self._records.get(name, {}))
            serving = self._serving.get(name)
        if version is not None:
            records = {v: r for v, r in records.items() if v == version}
        if not records:
            wanted = f"Latest({name})" if version is None else f"Specific({name}, {version})"
            raise not_found(f"Servable not found for request: {wanted}")
        order = sorted(records, key=lambda v: (serving is None or v != serving.version, -v))
        return [
            {
                "version": str(v),
                "state": records[v].state,
                "status": {"error_code": records[v].error_code, "error_message": records[v].error_message},
            }
            for v in order
        ]

    def loaded_models(self):
        with self._lock:
            return dict(self._serving)

    # --- loading (the polling thread) ---

    def _model_names(self):
        if self.model_names is not None:
            return self.model_names
        try:
            entries = sorted(os.listdir(self.base_path))
        except OSError as error:
            log.warning("cannot list model base path %s: %s", self.base_path, error)
            return []
        folders = [e for e in entries if not e.startswith(".") and os.path.isdir(os.path.join(self.base_path, e))]
        for name in folders:
            if not MODEL_NAME.fullmatch(name) and name not in self._ignored_names:
                self._ignored_names.add(name)
                log.warning("ignored folder %r under %s: not a model name (letters, digits, _ . -)", name,
                            self.base_path)
        return [name for name in folders if MODEL_NAME.fullmatch(name)]

    def poll(self):
        """One pass over the base path: loads any newer version of each model."""
        for name in self._model_names():
            self._poll_model(name)

    def _poll_model(self, name):
        serving = self._serving.get(name)
        records = self._records.setdefault(name, {})
        folders = version_folders(os.path.join(self.base_path, name))
        # Newest first; stop at the version already serving (TF Serving's "latest" policy,
        # falling back to an older version only while nothing serves yet).
        for version in sorted(folders, reverse=True):
            if serving is not None and version <= serving.version:
                return
            path = folders[version]
            fingerprint = _fingerprint(path)
            record = records.get(version)
            if record is not None and record.error_code != "OK" and record.fingerprint == fingerprint:
                continue  # refused before and unchanged since
            try:
                model = self._load(name, version, path)
            except Exception as error:  # noqa: BLE001  (any load failure refuses the folder)
                reason = f"{type(error).__name__}: {error}".strip().splitlines()[0]
                with self._lock:
                    records[version] = _VersionRecord("END", "UNKNOWN", reason, fingerprint)
                log.warning("refused %s version %d at %s: %s", name, version, path, reason)
                continue
            with self._lock:
                self._serving[name] = model
                records[version] = _VersionRecord("AVAILABLE", fingerprint=fingerprint)
                if serving is not None:
                    records[serving.version] = _VersionRecord("END")
            log.info(
                "loaded %s version %d from %s (signatures: %s; %d warmup requests replayed)",
                name, version, path, ", ".join(sorted(model.signatures)), model.warmup_requests,
            )
            if serving is not None:
                log.info("unloaded %s version %d (version %d serves now)", name, serving.version, version)
            return

    @staticmethod
    def _load(name, version, path):
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise FileNotFoundError(f"no saved_model.pb in {path}")
        return LoadedModel(name, version, path)

    def start_polling(self):
        """Polls in a daemon thread every `poll_seconds` until `stop()`."""

        def loop():
            while not self._stop.wait(self.poll_seconds):
                try:
                    self.poll()
                except Exception:  # noqa: BLE001  (a failed poll must not end polling)
                    log.exception("polling %s failed", self.base_path)

        self._thread = threading.Thread(target=loop, name="model-repository-poll", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
