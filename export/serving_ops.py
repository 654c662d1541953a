"""Which op types an exported graph uses, and whether the stock TensorFlow Serving
model server has them all: TensorFlow's core ops plus the tensorflow-text ops it
links (`SUPPORTED_TENSORFLOW_OPS` in tensorflow_serving/model_servers/BUILD).

Ops of TensorFlow's XLA bridge (`Xla*`, e.g. `XlaDynamicUpdateSlice`, which
keras.ops.slice_update becomes) are registered in core but run only through XLA
compilation on demand, which the CPU model server disables by default
(--xla_cpu_compilation_enabled=false; tensorflow/serving#2217): they are refused.

Core and tensorflow-text ops are told apart in a fresh interpreter that imports
`tensorflow` alone, looks the op types up in the op registry, then imports
`tensorflow_text` and looks again; an op type found in neither would make the
model server refuse the model ("Op type not registered"). That interpreter's answer
depends only on the installed TensorFlow and tensorflow-text, so each op type is asked
once per process (`_REGISTRY`): a process that exports again starts no second one.
"""

import json
import os
import subprocess
import sys

_CLASSIFY = r"""
import json, sys
import tensorflow as tf
from tensorflow.python.framework import op_def_registry
names = json.loads(sys.stdin.read())
core = [n for n in names if op_def_registry.get(n) is not None]
import tensorflow_text
text = [n for n in names if n not in core and op_def_registry.get(n) is not None]
print(json.dumps({"core": core, "tensorflow_text": text}))
"""

# op type -> "core", "tensorflow_text" or None (registered by neither), as the fresh
# interpreter of `_CLASSIFY` answered.
_REGISTRY = {}


def graph_op_types(saved_model_dir):
    """Sorted op types of every node of the SavedModel's graph and its function library."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as file:
        proto.ParseFromString(file.read())
    types = set()
    for meta_graph in proto.meta_graphs:
        types.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            types.update(node.op for node in function.node_def)
    functions = {f.signature.name for m in proto.meta_graphs for f in m.graph_def.library.function}
    return sorted(types - functions)  # a call of a library function is not an op type


def classify_ops(op_types):
    """{"core": [...], "tensorflow_text": [...], "xla": [...], "unknown": [...]} for `op_types`."""
    unasked = sorted(set(op_types) - set(_REGISTRY))
    if unasked:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        result = subprocess.run(
            [sys.executable, "-c", _CLASSIFY], input=json.dumps(unasked), capture_output=True, text=True, env=env
        )
        if result.returncode != 0:
            raise RuntimeError(f"could not list the registered op types:\n{result.stderr[-2000:]}")
        answer = json.loads(result.stdout.strip().splitlines()[-1])
        _REGISTRY.update({op: None for op in unasked})
        _REGISTRY.update({op: library for library in ("core", "tensorflow_text") for op in answer[library]})
    where = {op: _REGISTRY[op] for op in set(op_types)}
    core = sorted(op for op, library in where.items() if library == "core")
    return {
        "core": [op for op in core if not op.startswith("Xla")],
        "tensorflow_text": sorted(op for op, library in where.items() if library == "tensorflow_text"),
        "xla": [op for op in core if op.startswith("Xla")],
        "unknown": sorted(op for op, library in where.items() if library is None),
    }


def check_servable_ops(saved_model_dir):
    """Raises ValueError naming the op types the stock model server lacks;
    returns the classification otherwise."""
    found = classify_ops(graph_op_types(saved_model_dir))
    if found["unknown"]:
        raise ValueError(
            f"{saved_model_dir}: op types outside TensorFlow core and tensorflow-text, "
            f"which TensorFlow Serving could not load: {', '.join(found['unknown'])}"
        )
    if found["xla"]:
        raise ValueError(
            f"{saved_model_dir}: op types that need XLA at run time, which the CPU model server "
            f"disables by default: {', '.join(found['xla'])}"
        )
    return found
