"""The models a server answers for: its model config, the version folders each model serves, and
the state of every version it has tried, kept up to date by polling.

What the real server does (tensorflow/serving), and where:

- **Which versions** (`sources/storage_path/file_system_storage_path_source.cc`): every
  `--file_system_poll_wait_seconds` each model's base path is listed and its version policy picks
  the versions to serve (`kerasformer.export.serving.model_config.aspired_versions`). A missing base path is
  an error in the log, and changes nothing: versions already loaded keep serving.
- **Loading and unloading** (`core/availability_preserving_policy.cc`, `GetNextAction`): the
  newest version not yet tried loads first; a version the policy no longer wants unloads only
  once one it wants is available (or when it wants none), so a model never stops answering
  during an update. Requests already running on an unloaded version finish on it.
- **Which version answers** (`model_servers/server_core.cc`, `ServableRequestFromModelSpec`):
  no version is the newest available one ("Servable not found for request: Latest(NAME)" when
  there is none), `/versions/N` that one ("... Specific(NAME, N)"), `/labels/L` the version the
  config's `version_labels` give L ("Unrecognized servable version label: L" otherwise).
- **Labels** (`UpdateModelVersionLabelMap`): a config may label only versions that are
  available when it is loaded -- so never at start-up -- unless
  `--allow_version_labels_for_unavailable_models`, which allows a label pointing at a version not
  available yet if the label is new or keeps its version. Otherwise the config is refused with
  FAILED_PRECONDITION "Request to assign label to version V of model M, which is not currently
  available for inference".
- **Status** (`model_servers/get_model_status_impl.cc`, `core/servable_state_monitor.h`): every
  version tried, newest first, with its state (LOADING, AVAILABLE, END) and the error that ended
  it; "Could not find any versions of model M" / "Could not find version V of model M".
- **Start-up** (`ServerCore::WaitUntilModelsAvailable`): the server opens no port before every
  model has a version available; a model whose versions all fail to load stops it with UNKNOWN
  "N model(s) did not become available: {{{name: M version: V} due to error: ...}, }".
- **Warmup** (`servables/tensorflow/saved_model_warmup.cc`): `assets.extra/tf_serving_warmup_requests`
  (PredictionLogs, at most 1000) is replayed before a version takes traffic; an error refuses it.

Differences: the real server retries a failed load up to 5 times a minute apart and then gives up
on that version; this one tries again whenever a file in the version folder changes (a
half-copied folder loads once complete). Model versions load one at a time, in the polling thread.

`--all_models_under` (this server's extension) serves every model folder under one folder, each
named after its folder (plain names only, `model_config.check_model_name`): the config is
rebuilt from that folder at every poll.
"""

import dataclasses
import logging
import os
import threading

import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the text ops the graphs hold; before any load)
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import config_pb2
from tensorflow_serving.apis import prediction_log_pb2

from kerasformer.export.serving.model_config import (  # noqa: F401  (MODEL_NAME, check_model_name: used from here too)
    MODEL_NAME,
    ModelServerConfig,
    aspired_versions,
    check_model_name,
    models_under_config,
    validate_model_server_config,
    version_children,
)
from kerasformer.export.serving.predict import prepare_inputs
from kerasformer.export.serving.rest_codec import NUMPY_DTYPES, SignatureSpec, TensorSpec, signature_key
from kerasformer.export.serving.status import StatusError, failed_precondition, invalid_argument, not_found

log = logging.getLogger("kerasformer.serve")

# TensorFlow's error codes (tf.errors.INVALID_ARGUMENT == 3, ...) are absl's status codes.
_STATUS_CODE = {
    getattr(tf.errors, name): name
    for name in ("CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
                 "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
                 "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")
}


def _dtype_name(enum_value):
    """7 -> "DT_STRING": SignatureDefs store dtypes as `DataType` enum values."""
    return types_pb2.DataType.Name(enum_value)


def _missing_saved_model(path):
    """TensorFlow's `ReadSavedModel` (cc/saved_model/reader.cc) error for a folder without a graph."""
    return StatusError(
        "NOT_FOUND",
        f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {path}. Check that the "
        f"directory exists and that you have the right permissions for accessing it.",
    )


class LoadedModel:
    """One loaded version of a model: its signatures and the SignatureDefs that describe them."""

    def __init__(self, name, version, path, warm_up=True):
        self.name, self.version, self.path = name, version, path
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise _missing_saved_model(path)
        # As the real server (SavedModelBundle): the MetaGraph tagged "serve" imported into a
        # session of its own, each signature run by feeding and fetching the tensor names its
        # SignatureDef lists. Not tf.saved_model.load: its functions are another path through
        # the SavedModel (variables restored into Python objects, eager calls) with other error
        # texts, and bugs that only the session path shows (README, "What the model server
        # runs is what we test").
        self._session = tf.compat.v1.Session(graph=tf.Graph())
        meta_graph = tf.compat.v1.saved_model.loader.load(self._session, ["serve"], path)
        self.signature_defs = meta_graph.signature_def
        self._callables = {}  # signature name -> the session's callable for it
        self.signatures = {
            name: SignatureSpec(
                name=name,
                inputs={k: self._spec(v) for k, v in sorted(self.signature_defs[name].inputs.items())},
                outputs={k: self._spec(v) for k, v in sorted(self.signature_defs[name].outputs.items())},
                defaults={k: tf.make_ndarray(v) for k, v in self.signature_defs[name].defaults.items()},
            )
            # Every SignatureDef, also ones with no function to call (TF2's __saved_model_init_op):
            # the real server looks requests up in the MetaGraphDef's map.
            for name in self.signature_defs
        }
        self.graph_calls = 0
        self._lock = threading.Lock()
        self.warmup_requests = self.warm_up() if warm_up else 0

    def warm_up(self):
        """Replays `assets.extra/tf_serving_warmup_requests` (PredictionLogs, at most
        1000) as TensorFlow Serving does before a version takes traffic; an error
        refuses the version. Returns how many requests ran."""
        path = os.path.join(self.path, "assets.extra", "tf_serving_warmup_requests")
        if not os.path.exists(path):
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(path).take(1000).as_numpy_iterator():
            request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
            signature = signature_key(request.model_spec.signature_name)
            if signature not in self.signatures:
                raise ValueError(f"warmup request for unknown signature {signature!r} in {path}")
            # A warmup PredictRequest runs as a gRPC Predict does: SignatureDef defaults apply.
            self.run(signature, prepare_inputs(self.signature_defs[signature], request.inputs))
            count += 1
        return count

    @staticmethod
    def _spec(tensor_info):
        shape = tensor_info.tensor_shape
        dims = None if shape.unknown_rank else tuple(dim.size for dim in shape.dim)
        return TensorSpec(_dtype_name(tensor_info.dtype), dims, tensor_info.name)

    def run(self, signature_name, inputs):
        """Runs one signature in the session. inputs: {name: np.ndarray}, every input given.

        Returns {output name: np.ndarray}. A TensorFlow error raised inside the graph becomes a
        `StatusError` with TensorFlow's error code (INVALID_ARGUMENT -> HTTP 400,
        INTERNAL, UNKNOWN, DATA_LOSS, ... -> 500) and the C++ session's message, which is what
        the real server answers.
        """
        spec = self.signatures[signature_name]
        if not spec.outputs:  # nothing to fetch, so the session runs nothing
            return {}
        run = self._callable(spec)
        with self._lock:
            self.graph_calls += 1
        feeds = [np.asarray(inputs[name], dtype=NUMPY_DTYPES.get(spec.inputs[name].dtype)) for name in spec.inputs]
        try:
            outputs = run(*feeds)
        except tf.errors.OpError as error:
            raise StatusError(_STATUS_CODE.get(error.error_code, "UNKNOWN"), error.message) from None
        return {name: np.asarray(value) for name, value in zip(spec.outputs, outputs)}

    def _callable(self, spec):
        """The session's callable for one signature (C++ `Session::MakeCallable`), made once.

        Like the real server's `Session::Run`, and unlike Python's `Session.run`, it feeds a
        value whatever the placeholder's static shape (half_plus_two's `x` is [-1, 1] and
        predict_util_test.cc feeds it a scalar) and reports the C++ error text unchanged.
        `_make_callable_from_options` is TensorFlow's (private) Python entry to that API.
        """
        with self._lock:
            if spec.name not in self._callables:
                options = config_pb2.CallableOptions(
                    feed=[tensor.tensor_name for tensor in spec.inputs.values()],
                    fetch=[tensor.tensor_name for tensor in spec.outputs.values()],
                )
                self._callables[spec.name] = self._session._make_callable_from_options(options)
            return self._callables[spec.name]


def load_error_status(error):
    """(code name, message) a failed load reports in the version's status."""
    if isinstance(error, StatusError):
        return error.code, error.message
    if isinstance(error, tf.errors.OpError):
        return _STATUS_CODE.get(error.error_code, "UNKNOWN"), error.message
    return "UNKNOWN", f"{type(error).__name__}: {error}".strip().splitlines()[0]


@dataclasses.dataclass
class _VersionRecord:
    """What the repository remembers of a version it has tried: its `ServableState`."""

    state: str  # "LOADING", "AVAILABLE" or "END"
    error_code: str = "OK"
    error_message: str = ""
    fingerprint: float = 0.0  # newest modification time in the folder when it was tried


def version_folders(model_path):
    """{version: folder path} of the names in a model's base path that are versions
    (`model_config.version_children`); {} when the folder cannot be listed."""
    try:
        children = os.listdir(model_path)
    except OSError:
        return {}
    return {version: os.path.join(model_path, child) for version, child in version_children(children).items()}


def _fingerprint(path):
    try:
        newest = os.stat(path).st_mtime
    except OSError:
        return 0.0
    for folder, _, files in os.walk(path):
        for entry in files + [folder]:
            try:
                newest = max(newest, os.stat(os.path.join(folder, entry)).st_mtime)
            except OSError:
                pass
    return newest


class ModelRepository:
    """The served versions of the models of a model server config, kept up to date by `poll()`.

    Args:
        models_under: this server's extension: serve every model folder under this folder
            (`FOLDER/NAME/VERSION/`), found again at every poll; or only `model_names`.
        model_names: with `models_under`, the models to serve (plain folder names).
        poll_seconds: how often the background thread (`start_polling`) looks for new versions
            (--file_system_poll_wait_seconds).
        config: a `ModelServerConfig` to serve instead (--model_config_file, or --model_name
            with --model_base_path through `model_config.single_model_config`).
        allow_version_labels_for_unavailable_models: the real server's flag of that name.
        load_error: a callable returning the StatusError with which every load must fail, or
            None (the batcher's check of the batching parameters; the real server refuses every
            model version when they are unusable).
        enable_model_warmup: replay each version's warmup requests before it serves
            (--enable_model_warmup, on by default).
    """

    def __init__(self, models_under=None, model_names=None, poll_seconds=1.0, *, config=None,
                 allow_version_labels_for_unavailable_models=False, load_error=None, enable_model_warmup=True):
        if (models_under is None) == (config is None):
            raise ValueError("give ModelRepository either models_under or config")
        self.models_under = models_under
        self.model_names = [check_model_name(name) for name in model_names] if model_names else None
        self.poll_seconds = poll_seconds
        self.allow_version_labels_for_unavailable_models = allow_version_labels_for_unavailable_models
        self._load_error = load_error
        self.enable_model_warmup = enable_model_warmup
        self._config = ModelServerConfig()
        self._labels = {}  # model name -> {label: version}
        self._records = {}  # model name -> {version: _VersionRecord}
        self._loaded = {}  # model name -> {version: LoadedModel}
        self._logged_errors = {}  # model name -> the last base path error logged
        self._without_versions = set()  # models whose base path holds no version (logged)
        self._ignored_names = set()  # folders under models_under whose names are not model names
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()  # one poll at a time (the thread, or a caller)
        self._stop = threading.Event()
        self._thread = None
        if config is not None:
            self.reload_config(config)

    # --- lookups (any thread) ---

    def get(self, name, version=None, label=None):
        """The LoadedModel answering for NAME: the newest available version, `version`, or the
        version `label` names (`ServerCore::GetServableHandle`). Raises StatusError otherwise."""
        with self._lock:
            if label is not None:
                version = self._labels.get(name, {}).get(label)
                if version is None:
                    raise invalid_argument(f"Unrecognized servable version label: {label}")
            loaded = self._loaded.get(name, {})
            if version is None:
                if loaded:
                    return loaded[max(loaded)]
                raise not_found(f"Servable not found for request: Latest({name})")
            if version in loaded:
                return loaded[version]
        raise not_found(f"Servable not found for request: Specific({name}, {version})")

    def status(self, name, version=None):
        """TF Serving's `model_version_status` list: every version tried, newest first
        (`GetModelStatusWithModelSpec`; a label is not a version there and selects nothing)."""
        with self._lock:
            records = dict(self._records.get(name, {}))
        if version is not None:
            if version not in records:
                raise not_found(f"Could not find version {version} of model {name}")
            records = {version: records[version]}
        elif not records:
            raise not_found(f"Could not find any versions of model {name}")
        return [
            {
                "version": str(v),
                "state": records[v].state,
                "status": {"error_code": records[v].error_code, "error_message": records[v].error_message},
            }
            for v in sorted(records, reverse=True)
        ]

    def loaded_models(self):
        """{model name: its newest available LoadedModel}."""
        with self._lock:
            return {name: loaded[max(loaded)] for name, loaded in self._loaded.items() if loaded}

    def labels(self, name):
        with self._lock:
            return dict(self._labels.get(name, {}))

    # --- the config ---

    def reload_config(self, config):
        """`ServerCore::ReloadConfig`: checks `config`, sets its labels, and serves its models
        from the next poll on (models left out are unloaded then). Raises StatusError (and keeps
        the config in force) when the real server refuses it."""
        validate_model_server_config(config)
        with self._lock:
            labels = self._label_map(config)
            self._config = config
            self._labels = labels

    def _label_map(self, config):
        """`UpdateModelVersionLabelMap`, under the lock: {model: {label: version}} of `config`."""
        labels = {}
        for model in config.model_config_list.config:
            records = self._records.get(model.name, {})
            for label, version in sorted(model.version_labels.items()):
                allowed = False
                if self.allow_version_labels_for_unavailable_models:
                    existing = self._labels.get(model.name, {}).get(label)
                    allowed = existing is None or existing == version
                record = records.get(version)
                if not allowed and (record is None or record.state != "AVAILABLE"):
                    raise failed_precondition(
                        f"Request to assign label to version {version} of model {model.name}, which is not "
                        f"currently available for inference")
                labels.setdefault(model.name, {})[label] = version
        return labels

    def model_configs(self):
        with self._lock:
            return list(self._config.model_config_list.config)

    # --- loading (the polling thread) ---

    def poll(self):
        """One pass: every model of the config gets the versions its policy asks for; models no
        longer in the config are unloaded."""
        with self._poll_lock:
            if self.models_under is not None:
                ignored = set()
                self.reload_config(models_under_config(self.models_under, self.model_names, ignored))
                for folder in sorted(ignored - self._ignored_names):
                    log.warning("ignored folder %r under %s: not a model name (letters, digits, _ . -)", folder,
                                self.models_under)
                self._ignored_names |= ignored
            configs = self.model_configs()
            for model_config in configs:
                self._poll_model(model_config)
            served = {model.name for model in configs}
            with self._lock:
                gone = [name for name, loaded in self._loaded.items() if name not in served and loaded]
            for name in gone:
                for version in sorted(self._loaded[name]):
                    self._unload(name, version)

    def _list_base_path(self, model_config):
        """The names in the model's base path, or None (logged once per error) when it cannot be read."""
        name, base_path = model_config.name, model_config.base_path
        try:
            children = os.listdir(base_path)
        except OSError as error:
            # PollFileSystemForServable: Env::FileExists fails with NOT_FOUND "PATH not found".
            reason = f"NOT_FOUND: {base_path} not found" if isinstance(error, FileNotFoundError) else \
                f"UNKNOWN: {base_path}; {error.strerror}"
            message = f"Could not find base path {base_path} for servable {name} with error {reason}"
            if self._logged_errors.get(name) != message:
                log.error("FileSystemStoragePathSource encountered a filesystem access error: %s", message)
                self._logged_errors[name] = message
            return None
        self._logged_errors.pop(name, None)
        return children

    def _poll_model(self, model_config):
        """`AvailabilityPreservingPolicy::GetNextAction`, applied until it has nothing to do."""
        name = model_config.name
        children = self._list_base_path(model_config)
        if children is None:
            return
        aspired = aspired_versions(model_config, children)
        if aspired:
            self._without_versions.discard(name)
        elif name not in self._without_versions:  # logged once, not at every poll
            log.warning("No versions of servable %s found under base path %s. Did you forget to name your leaf "
                        "directory as a number (eg. '/1/')?", name, model_config.base_path)
            self._without_versions.add(name)
        tried = set()
        while not self._stop.is_set():
            with self._lock:
                ready = sorted(self._loaded.get(name, {}))
                records = dict(self._records.get(name, {}))
            aspired_ready = [v for v in ready if v in aspired]
            unaspired_ready = [v for v in ready if v not in aspired]
            if unaspired_ready and (not aspired or aspired_ready or len(unaspired_ready) > 1):
                self._unload(name, unaspired_ready[0])
                continue
            new = []
            for version, child in aspired.items():
                if version in ready or version in tried:
                    continue
                record = records.get(version)
                path = os.path.join(model_config.base_path, child)
                if record is not None and record.error_code != "OK" and record.fingerprint == _fingerprint(path):
                    continue  # refused before and unchanged since
                new.append(version)
            if not new:
                return
            version = max(new)
            tried.add(version)
            self._load(name, version, os.path.join(model_config.base_path, aspired[version]))

    def _load(self, name, version, path):
        fingerprint = _fingerprint(path)
        with self._lock:
            self._records.setdefault(name, {})[version] = _VersionRecord("LOADING", fingerprint=fingerprint)
        try:
            refusal = self._load_error() if self._load_error is not None else None
            if refusal is not None:
                raise refusal
            model = LoadedModel(name, version, path, warm_up=self.enable_model_warmup)
        except Exception as error:  # noqa: BLE001  (any load failure refuses the version)
            code, message = load_error_status(error)
            with self._lock:
                self._records[name][version] = _VersionRecord("END", code, message, fingerprint)
            log.warning("refused %s version %d at %s: %s: %s", name, version, path, code, message)
            return
        with self._lock:
            self._loaded.setdefault(name, {})[version] = model
            self._records[name][version] = _VersionRecord("AVAILABLE", fingerprint=fingerprint)
        log.info("loaded %s version %d from %s (signatures: %s; %d warmup requests replayed)",
                 name, version, path, ", ".join(sorted(model.signatures)), model.warmup_requests)

    def _unload(self, name, version):
        with self._lock:
            self._loaded[name].pop(version, None)
            self._records[name][version] = _VersionRecord("END")
        log.info("unloaded %s version %d", name, version)

    def unavailable_models(self):
        """`WaitUntilModelsAvailable` once every model's versions have been tried: (model name,
        version, code, message) of each configured model with no available version whose newest
        version failed; models with no version tried yet are still awaited and not listed."""
        failed = []
        with self._lock:
            for model in self._config.model_config_list.config:
                if self._loaded.get(model.name):
                    continue
                records = self._records.get(model.name, {})
                if records:
                    version = max(records)
                    record = records[version]
                    if record.state == "END":
                        failed.append((model.name, version, record.error_code, record.error_message))
        return failed

    def awaiting_models(self):
        """Configured models with no version tried yet (their base path missing or empty)."""
        with self._lock:
            return [model.name for model in self._config.model_config_list.config
                    if not self._loaded.get(model.name) and not self._records.get(model.name)]

    def start_polling(self):
        """Polls in a daemon thread every `poll_seconds` until `stop()`; with 0 or less, never
        (the real server then polls once, at start-up)."""
        if self.poll_seconds <= 0:
            return

        def loop():
            while not self._stop.wait(self.poll_seconds):
                try:
                    self.poll()
                except Exception:  # noqa: BLE001  (a failed poll must not end polling)
                    log.exception("polling the model base paths failed")

        self._thread = threading.Thread(target=loop, name="model-repository-poll", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
