"""The model server's configuration: its command line, its config files, and the version folders
each model serves.

The command line is `tensorflow_model_server`'s (`model_servers/main.cc`, defaults from
`model_servers/server.h`), read as `tensorflow::Flags::Parse` reads it
(tensorflow/core/util/command_line_flags.cc): `--name=value` ("--port=8500"), booleans also as
`--name` alone, `=true` or `=false`; a value that does not parse stops the server; an argument
that is no flag is reported ("unknown argument: ...") and otherwise ignored. `FLAGS` are the
flags this server acts on, `TUNING_FLAGS` real ones it takes and ignores (threads, retries,
TensorFlow session tuning), `UNIMPLEMENTED_FLAGS` real ones it refuses to start with. Its own
extensions are marked in `FLAGS` and listed in export/serving/server.py.

Three text-format protos configure `tensorflow_model_server`, and `kerasformer-serve` reads the
same files with the same messages:

    --model_config_file       ModelServerConfig (tensorflow_serving/config/model_server_config.proto,
                              from tensorflow-serving-api): one ModelConfig per model, each with its
                              name, base_path, model_platform, model_version_policy, version_labels
    --monitoring_config_file  MonitoringConfig (config/monitoring_config.proto; not shipped in
                              tensorflow-serving-api, so built here from that file's definition)
    --batching_parameters_file  see export/serving/batching.py

How they are read and checked follows `model_servers/server.cc` (BuildSingleModelConfig,
ParseProtoTextFile in util/proto_util.h) and `model_servers/server_core.cc`
(ValidateModelConfigList, GetPlatform). Which version folders of a model are served follows
`sources/storage_path/file_system_storage_path_source.cc`: a folder's name is a version when
`absl::SimpleAtoi` reads it as an int64 ("7", "007", " 7"; not "v7", not ".tmp-1"); the policy
`latest { num_versions: N }` (the default, N at least 1) serves the N highest, `all` every one,
`specific { versions: ... }` those listed that exist.

Every error is a `StatusError` with the real server's code and text.
"""

import dataclasses
import os
import re

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from tensorflow_serving.config import model_server_config_pb2

from kerasformer.export.serving.status import StatusError, invalid_argument

TENSORFLOW_PLATFORM = "tensorflow"  # kTensorFlowModelPlatform, the only platform this server has

# A model name under --all_models_under (this server's extension): a plain folder name, so no
# name reaches outside that folder.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

_INT64 = (-(2**63), 2**63 - 1)
# absl::SimpleAtoi: ASCII whitespace around an optionally signed run of ASCII digits.
_SIMPLE_ATOI = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)[ \t\n\v\f\r]*")


def _monitoring_config_classes():
    """MonitoringConfig and PrometheusConfig, as config/monitoring_config.proto declares them:

        package tensorflow.serving;
        message PrometheusConfig { bool enable = 1; string path = 2; }
        message MonitoringConfig { PrometheusConfig prometheus_config = 1; }
    """
    file = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/config/monitoring_config.proto", package="tensorflow.serving", syntax="proto3")
    prometheus = file.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
                         label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                         label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    monitoring = file.message_type.add(name="MonitoringConfig")
    monitoring.field.add(name="prometheus_config", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                         type_name=".tensorflow.serving.PrometheusConfig",
                         label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return (message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig")),
            message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.PrometheusConfig")))


MonitoringConfig, PrometheusConfig = _monitoring_config_classes()
ModelServerConfig = model_server_config_pb2.ModelServerConfig


def parse_proto_text_file(path, message_class):
    """`ParseProtoTextFile` (util/proto_util.h): the file's text-format message.

    Raises StatusError: NOT_FOUND "PATH; No such file or directory" (TensorFlow's file error), or
    INVALID_ARGUMENT "Invalid protobuf file: 'PATH'" for text that does not parse. The parser's
    own complaint (line and column) is kept on the error as `detail`, for the log.
    """
    try:
        with open(path, "rb") as file:
            text = file.read()
    except FileNotFoundError:
        raise StatusError("NOT_FOUND", f"{path}; No such file or directory") from None
    except IsADirectoryError:
        raise StatusError("FAILED_PRECONDITION", f"{path}; Is a directory") from None
    except OSError as error:
        raise StatusError("UNKNOWN", f"{path}; {error.strerror}") from None
    message = message_class()
    try:
        text_format.Parse(text.decode("utf-8"), message)
    except (text_format.ParseError, UnicodeDecodeError) as error:
        failed = invalid_argument(f"Invalid protobuf file: '{path}'")
        failed.detail = str(error)
        raise failed from None
    return message


def single_model_config(model_name, model_base_path):
    """`BuildSingleModelConfig` (server.cc): --model_name and --model_base_path as a config."""
    config = ModelServerConfig()
    config.model_config_list.config.add(name=model_name, base_path=model_base_path,
                                        model_platform=TENSORFLOW_PLATFORM)
    return config


def check_model_name(name):
    """Returns `name` if it is a plain folder name (`MODEL_NAME`), else raises ValueError naming it.

    Only for this server's --all_models_under, where a folder's name is its model's name: a name
    such as `..`, `../other`, `/abs/path` or `a\\b` would reach outside that folder. (Names in a
    model config file are any text, as in the real server: they are keys, not paths.)
    """
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
        raise ValueError(
            f"model name {name!r} is not a plain folder name: use letters, digits and _ . - "
            f"(starting with a letter or digit), e.g. kerasformer_en_es"
        )
    return name


def models_under_config(folder, model_names=None, ignored=None):
    """This server's extension --all_models_under=FOLDER: a config with one model per folder
    `FOLDER/NAME/` (or only `model_names`), default policy, no labels.

    Folders whose names are not plain model names are left out and added to the set `ignored`
    (the caller logs each once).
    """
    folder = os.path.abspath(folder)
    if model_names is None:
        try:
            entries = sorted(os.listdir(folder))
        except OSError:
            entries = []
        names = []
        for entry in entries:
            if entry.startswith(".") or not os.path.isdir(os.path.join(folder, entry)):
                continue
            if MODEL_NAME.fullmatch(entry):
                names.append(entry)
            elif ignored is not None:
                ignored.add(entry)
    else:
        names = [check_model_name(name) for name in model_names]
    config = ModelServerConfig()
    for name in names:
        config.model_config_list.config.add(name=name, base_path=os.path.join(folder, name),
                                            model_platform=TENSORFLOW_PLATFORM)
    return config


def platform_of(model_config):
    """`GetPlatform` (server_core.cc): model_platform, or the deprecated model_type."""
    model_type = model_config.model_type
    if model_type != model_server_config_pb2.MODEL_TYPE_UNSPECIFIED:
        if model_config.model_platform:
            raise invalid_argument(
                "Illegal setting both ModelServerConfig::model_type (deprecated) and "
                f"ModelServerConfig::model_platform, model name is {model_config.name}")
        if model_type != model_server_config_pb2.TENSORFLOW:
            raise invalid_argument(f"ModelServerConfig::model_type choice {model_type} not supported.")
        return TENSORFLOW_PLATFORM
    if not model_config.model_platform:
        raise invalid_argument(
            "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
            f"ModelServerConfig::model_platform, model name is {model_config.name}")
    return model_config.model_platform


def _is_relative(path):
    """`UriIsRelativePath`: neither a URI ("gs://...") nor a path starting with "/"."""
    return not re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", path) and not path.startswith("/")


def validate_model_server_config(config):
    """What `ServerCore::ReloadConfig` checks before it serves a config: a custom config is
    refused, names are unique, base paths absolute (there is no --model_config_list_root_dir),
    the platform is one this server has (`CreateStoragePathRoutes`)."""
    kind = config.WhichOneof("config")
    if kind == "custom_model_config":
        # LoadCustomModelConfig (server.cc) is LOG(FATAL) in the real server.
        raise StatusError("UNIMPLEMENTED", "ModelServer does not yet support custom model config.")
    names = set()
    for model in config.model_config_list.config:
        if model.name in names:
            raise invalid_argument(f"Illegal to list model {model.name} multiple times in config list")
        names.add(model.name)
    for model in config.model_config_list.config:
        if _is_relative(model.base_path):
            raise invalid_argument(
                f"Expected model {model.name} to have an absolute path or URI; got base_path()={model.base_path}")
    for model in config.model_config_list.config:
        platform = platform_of(model)
        if platform != TENSORFLOW_PLATFORM:
            raise invalid_argument(f"Model {model.name} requests unsupported platform {platform}")
        if "://" in model.base_path:
            raise StatusError("UNIMPLEMENTED", f"kerasformer-serve reads local folders only; model {model.name} "
                                               f"has base_path {model.base_path}")


def parse_version(folder_name):
    """`ParseVersionNumber`: the version a folder name stands for, or None."""
    match = _SIMPLE_ATOI.fullmatch(folder_name)
    if match is None:
        return None
    version = int(match.group(1))
    return version if _INT64[0] <= version <= _INT64[1] else None


def version_children(children):
    """`IndexChildrenByVersion`: {version: folder name}; of two names for one version ("1" and
    "01") the one sorting last wins, as in the real server (which logs a warning)."""
    by_version = {}
    for child in sorted(children):
        version = parse_version(child)
        if version is not None:
            by_version[version] = child
    return by_version


def aspired_versions(model_config, children):
    """{version: folder name} the model's version policy serves, among `children` (the names
    in its base path). `PollFileSystemForServable` with AspireLatestVersions, AspireAllVersions
    and AspireSpecificVersions."""
    by_version = version_children(children)
    policy = model_config.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return by_version
    if choice == "specific":
        wanted = set(policy.specific.versions)
        return {version: child for version, child in by_version.items() if version in wanted}
    count = max(policy.latest.num_versions, 1) if choice == "latest" else 1
    return {version: by_version[version] for version in sorted(by_version, reverse=True)[:count]}


# --- the command line (model_servers/main.cc, model_servers/server.h) ----------------------------


@dataclasses.dataclass(frozen=True)
class Flag:
    """One `tensorflow::Flag`: kind is "int32", "int64", "float", "bool" or "string"."""

    name: str
    kind: str
    default: object
    help: str
    extension: bool = False  # this server's, not tensorflow_model_server's


_CPUS = os.cpu_count() or 1

FLAGS = [
    Flag("port", "int32", 8500, "TCP port to listen on for gRPC/HTTP API. Disabled if port set to zero."),
    Flag("rest_api_port", "int32", 8501, "Port to listen on for HTTP/REST API. If set to zero HTTP/REST API will "
         "not be exported. This port must be different than the one specified in --port. (The binary's own "
         "default is 0; its Docker image passes 8501, as this server's default does.)"),
    Flag("rest_api_num_threads", "int32", 4 * _CPUS, "Number of threads for HTTP/REST API processing (here: "
         "threads running graphs for REST requests without batching)."),
    Flag("rest_api_timeout_in_ms", "int32", 30000, "Timeout for HTTP/REST API calls."),
    Flag("rest_api_enable_cors_support", "bool", False, "Enable CORS headers in response"),
    Flag("enable_batching", "bool", False, "enable batching"),
    Flag("allow_version_labels_for_unavailable_models", "bool", False, "If true, allows assigning unused version "
         "labels to models that are not available yet."),
    Flag("batching_parameters_file", "string", "", "If non-empty, read an ascii BatchingParameters protobuf from "
         "the supplied file name and use the contained values instead of the defaults."),
    Flag("model_config_file", "string", "", "If non-empty, read an ascii ModelServerConfig protobuf from the "
         "supplied file name, and serve the models in that file. (If used, --model_name, --model_base_path are "
         "ignored.)"),
    Flag("model_config_file_poll_wait_seconds", "int32", 0, "Interval in seconds between each poll of the "
         "filesystem for model_config_file. If unset or set to zero, poll will be done exactly once and not "
         "periodically."),
    Flag("model_name", "string", "default", "name of model (ignored if --model_config_file flag is set)"),
    Flag("model_base_path", "string", "", "path to export (ignored if --model_config_file flag is set, otherwise "
         "required)"),
    Flag("file_system_poll_wait_seconds", "int32", 1, "Interval in seconds between each poll of the filesystem "
         "for new model version. If set to zero poll will be exactly done once and not periodically."),
    Flag("grpc_max_threads", "int32", 4 * _CPUS, "Max grpc server threads to handle grpc messages."),
    Flag("enable_model_warmup", "bool", True, "Enables model warmup, which triggers lazy initializations (such "
         "as TF optimizations) at load time, to reduce first request latency."),
    Flag("monitoring_config_file", "string", "", "If non-empty, read an ascii MonitoringConfig protobuf from the "
         "supplied file name"),
    Flag("version", "bool", False, "Display version"),
    Flag("host", "string", "127.0.0.1", "Address the REST and gRPC ports listen on (the real server: every "
         "interface, 0.0.0.0).", extension=True),
    Flag("max_request_bytes", "int64", 1 << 20, "Request bodies larger than this get 413.", extension=True),
    Flag("all_models_under", "string", "", "Serve every model folder under this folder (FOLDER/NAME/VERSION/), "
         "including ones that appear later; instead of --model_config_file or --model_base_path.", extension=True),
    Flag("log_level", "string", "info", "debug, info, warning or error.", extension=True),
]

# Real flags this server takes and does not act on: they tune threads, memory, retries or
# TensorFlow's session, not what a request is answered.
TUNING_FLAGS = [
    Flag("grpc_channel_arguments", "string", "", ""), Flag("num_load_threads", "int32", 0, ""),
    Flag("num_unload_threads", "int32", 0, ""), Flag("max_num_load_retries", "int32", 5, ""),
    Flag("load_retry_interval_micros", "int64", 60_000_000, ""), Flag("flush_filesystem_caches", "bool", True, ""),
    Flag("tensorflow_session_parallelism", "int64", 0, ""), Flag("tensorflow_session_config_file", "string", "", ""),
    Flag("tensorflow_intra_op_parallelism", "int64", 0, ""), Flag("tensorflow_inter_op_parallelism", "int64", 0, ""),
    Flag("per_process_gpu_memory_fraction", "float", 0.0, ""), Flag("num_request_iterations_for_warmup", "int32", 0, ""),
    Flag("remove_unused_fields_from_bundle_metagraph", "bool", True, ""), Flag("num_tflite_pools", "int32", _CPUS, ""),
    Flag("num_tflite_interpreters_per_pool", "int32", 1, ""), Flag("xla_cpu_compilation_enabled", "bool", False, ""),
    Flag("xla_gpu_compilation_enabled", "bool", False, ""), Flag("enable_profiler", "bool", True, ""),
    Flag("thread_pool_factory_config_file", "string", "", ""), Flag("skip_initialize_tpu", "bool", False, ""),
]

# Real flags that change what is served or how; this server refuses to start with any of them
# set to anything but its default.
UNIMPLEMENTED_FLAGS = [
    Flag("grpc_socket_path", "string", "", ""), Flag("enable_per_model_batching_parameters", "bool", False, ""),
    Flag("use_alts_credentials", "bool", False, ""), Flag("ssl_config_file", "string", "", ""),
    Flag("platform_config_file", "string", "", ""), Flag("saved_model_tags", "string", "serve", ""),
    Flag("prefer_tflite_model", "bool", False, ""), Flag("enable_signature_method_name_check", "bool", False, ""),
    Flag("mixed_precision", "string", "", ""), Flag("enable_grpc_healthcheck_service", "bool", False, ""),
    Flag("enable_serialization_as_tensor_content", "bool", False, ""),
]

# This server's hyphenated aliases: alias -> (flag, kind of its value).
ALIASES = {
    "enable-batching": ("enable_batching", "bool"),
    "batching-parameters-file": ("batching_parameters_file", "string"),
    "max-request-bytes": ("max_request_bytes", "int64"),
    "log-level": ("log_level", "string"),
    "poll-seconds": ("file_system_poll_wait_seconds", "float"),
}

_INTEGER = re.compile(r"[ \t\n\v\f\r]*[+-]?[0-9]+")  # what sscanf("%d%c") takes whole
_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


class FlagError(Exception):
    """A value `tensorflow::Flags::Parse` cannot interpret (its LOG(ERROR) text)."""


def _value(kind, flag_name, text):
    """A flag value as the real parsers read it (ParseInt32Flag, ParseFloatFlag, ...)."""
    if kind == "string":
        return text
    if kind in _RANGES:
        low, high = _RANGES[kind]
        if _INTEGER.fullmatch(text) and low <= int(text) <= high:
            return int(text)
    elif kind == "float":
        try:
            return float(text.lstrip(" \t\n\v\f\r"))
        except ValueError:
            pass
    raise FlagError(f"Couldn't interpret value {text} for flag {flag_name}.")


def _parse_one(arg, following, name, kind):
    """(found, value, args used) of `arg` for the flag `name`: `tensorflow::Flag::Parse`, which
    matches "--NAME=VALUE" (bools: "--NAME", "--NAME=true", "--NAME=false") by prefix, plus this
    server's "--NAME VALUE" for the others."""
    if not arg.startswith("--" + name):
        return False, None, 0
    rest = arg[len(name) + 2:]
    if kind == "bool":
        if rest in ("", "=true", "=false"):
            return True, rest != "=false", 1
        raise FlagError(f"Couldn't interpret value {rest} for flag {name}.")
    if rest.startswith("="):
        return True, _value(kind, name, rest[1:]), 1
    if rest == "" and following is not None:
        return True, _value(kind, name, following), 2
    return False, None, 0


def usage(program="kerasformer-serve"):
    """`tensorflow::Flags::Usage`: one line per flag with its default, type and help."""
    lines = [f"usage: {program}", "Flags:"]
    for flag in FLAGS:
        if flag.kind == "bool":
            shown = f"--{flag.name}={'true' if flag.default else 'false'}"
        elif flag.kind == "string":
            shown = f'--{flag.name}="{flag.default}"'
        elif flag.kind == "float":
            shown = f"--{flag.name}={flag.default:f}"
        else:
            shown = f"--{flag.name}={flag.default}"
        note = " [kerasformer-serve extension]" if flag.extension else ""
        lines.append(f"\t{shown:<33}\t{flag.kind}\t{flag.help}{note}")
    return "\n".join(lines) + "\n"


def parse_flags(argv):
    """(options, unknown arguments) of the command line, as `tensorflow::Flags::Parse` reads it.

    options: {flag name: value} for every flag of FLAGS, TUNING_FLAGS and UNIMPLEMENTED_FLAGS.
    Raises FlagError (naming the value and flag) for a value that does not parse.
    """
    known = [(flag.name, flag.kind) for flag in FLAGS + TUNING_FLAGS + UNIMPLEMENTED_FLAGS]
    known += [(alias, kind) for alias, (_, kind) in ALIASES.items()]
    options = {flag.name: flag.default for flag in FLAGS + TUNING_FLAGS + UNIMPLEMENTED_FLAGS}
    unknown = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--":
            unknown.extend(argv[index:])
            break
        following = argv[index + 1] if index + 1 < len(argv) else None
        for name, kind in known:
            found, value, used = _parse_one(arg, following, name, kind)
            if found:
                options[ALIASES[name][0] if name in ALIASES else name] = value
                index += used
                break
        else:
            unknown.append(arg)
            index += 1
    return options, unknown
