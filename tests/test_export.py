"""kerasformer.export.exporter: a trained run becomes a SavedModel that TensorFlow Serving
loads, whose graph (tokenizer, cached greedy loop or beam search, detokenizer)
answers exactly what the in-process Translator answers -- checked through the
SignatureDef in a TF1 session, as the model server runs it, in a process without
kerasformer -- and whose signatures are what the real model server can feed: every
input batched and required, every output batch-major, so that row and columnar
REST requests work and merged batches split back into their requests.

Runs under every backend: under JAX and torch the exporter re-runs itself in a
TensorFlow-backend process, so these tests show that a model trained under each
backend exports to a SavedModel that gives that backend's tokens."""

import json
import math
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import teacher_forced_attention
from serving_helpers import ServerProcess, http, wait_for
from test_train import tiny_config

from kerasformer.export.exporter import SIGNATURES, WARMUP_FILE, export_run
from kerasformer.export.serving.client import ServingClient
from kerasformer.export.serving_ops import check_servable_ops, classify_ops, graph_op_types
from kerasformer import build_seq2seq, preset
from kerasformer.decoding import beam_search
from kerasformer.training.tokenizers import END_ID, START_ID
from kerasformer.training.train import train
from kerasformer.training.run_folder import RunFolder
from kerasformer.training.translator import Translator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = [
    "In the beginning.",
    "Jesus wept.",
    "And God said, Let there be light: and there was light, and the evening and the morning were the first day.",
    "",
]
DECODER_MAX_LENGTH = 32  # the tiny preset's
# One limit per text: cut short, a single token, above the decoder's (clipped to 32), cut short.
LIMITS = [3, 1, 40, 5]

# The signature table (README, export/exporter.py): inputs and outputs, name -> dtype, rank.
STRING, INT32, FLOAT = tf.string.as_datatype_enum, tf.int32.as_datatype_enum, tf.float32.as_datatype_enum
TEXT_OUTPUTS = {"translation": (STRING, 1), "tokens": (INT32, 2), "length": (INT32, 1)}
BEAM_OUTPUTS = {**TEXT_OUTPUTS, "score": (FLOAT, 1)}
ATTENTION_OUTPUTS = {
    **TEXT_OUTPUTS, "source_pieces": (STRING, 2), "source_length": (INT32, 1), "target_pieces": (STRING, 2),
    "target_length": (INT32, 1), "encoder_self_attention": (FLOAT, 5), "decoder_self_attention": (FLOAT, 5),
    "cross_attention": (FLOAT, 5),
}
SIGNATURE_TABLE = {
    "serving_default": ({"text": (STRING, 1)}, TEXT_OUTPUTS),
    "translate_max_length": ({"text": (STRING, 1), "max_length": (INT32, 1)}, TEXT_OUTPUTS),
    "translate_beam": ({"text": (STRING, 1)}, BEAM_OUTPUTS),
    "translate_beam_max_length": ({"text": (STRING, 1), "max_length": (INT32, 1)}, BEAM_OUTPUTS),
    "translate_tokens": ({"tokens": (INT32, 2)}, {"tokens": (INT32, 2), "length": (INT32, 1)}),
    "translate_attention": ({"text": (STRING, 1)}, ATTENTION_OUTPUTS),
    "translate_beam_attention": ({"text": (STRING, 1)}, {**ATTENTION_OUTPUTS, "score": (FLOAT, 1)}),
}


# Tests of the exported graph alone run in the first pass only: the graph is TensorFlow's whichever
# backend trained the run (the exporter exports in a TensorFlow process). What each backend's export
# answers is checked per backend (session_answers).
graph_only = pytest.mark.backend_independent


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    keras.utils.set_random_seed(0)
    train(tiny_config(path, epochs=2))
    return str(path)


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("saved_models"))
    return export_run(run_dir, "tiny", base_dir=base), base


@pytest.fixture(scope="module")
def translator(run_dir):
    return Translator.from_run(run_dir)


SOURCE_IDS = [[5, 6, 7, 8, 9, 10], [11, 12, 0, 0, 0, 0]]


def run_session_check(export_path, *args):
    """export/session_check.py in a fresh process (TF + tensorflow-text only, TF1 session,
    SignatureDef tensor names); its JSON answer."""
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "export", "session_check.py"), export_path, *args],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def session_answers(exported, tmp_path_factory):
    """One request per signature run by export/session_check.py, every input given: the
    greedy default, per-row limits (LIMITS), translate_tokens, and both beam signatures."""
    requests = [
        {"signature": "serving_default", "inputs": {"text": TEXTS}},
        {"signature": "translate_max_length", "inputs": {"text": TEXTS, "max_length": LIMITS}},
        {"signature": "translate_tokens", "inputs": {"tokens": SOURCE_IDS}},
        {"signature": "translate_beam", "inputs": {"text": TEXTS}},
        {"signature": "translate_beam_max_length", "inputs": {"text": TEXTS, "max_length": LIMITS}},
        {"signature": "translate_attention", "inputs": {"text": TEXTS}},
        {"signature": "translate_beam_attention", "inputs": {"text": TEXTS}},
    ]
    path = tmp_path_factory.mktemp("requests") / "requests.json"
    path.write_text(json.dumps(requests))
    return run_session_check(exported[0], "--requests", str(path))


@graph_only
def test_export_writes_the_model_server_layout(exported):
    path, base = exported
    assert path == os.path.join(base, "tiny", "1")
    for name in ("saved_model.pb", "variables/variables.index", "assets/source.model", "assets/target.model",
                 "assets/target.vocab", WARMUP_FILE):
        assert os.path.exists(os.path.join(path, name)), name
    assert os.listdir(os.path.join(base, "tiny")) == ["1"]  # no temporary folder left behind


def test_weights_are_stored_once(exported, translator):
    size = sum(os.path.getsize(os.path.join(exported[0], "variables", n))
               for n in os.listdir(os.path.join(exported[0], "variables")))
    weight_bytes = 4 * translator.model.count_params()  # float32
    assert weight_bytes <= size < 1.2 * weight_bytes


def signature_defs(export_path):
    """The SignatureDefs of the "serve" MetaGraph, as `saved_model_cli show --all` lists them."""
    from tensorflow.python.tools import saved_model_utils

    return saved_model_utils.get_meta_graph_def(export_path, "serve").signature_def


@graph_only
def test_signature_defs_are_the_table_every_input_batched_and_required(exported):
    signatures = signature_defs(exported[0])
    assert set(signatures) - {"__saved_model_init_op"} == set(SIGNATURE_TABLE) == set(SIGNATURES)
    for name, (inputs, outputs) in SIGNATURE_TABLE.items():
        signature = signatures[name]
        assert signature.method_name == "tensorflow/serving/predict", name
        # The real server honours no defaults over REST (util/json_tensor.cc): none exist.
        assert not signature.defaults, (name, list(signature.defaults))
        for tensors, table in ((signature.inputs, inputs), (signature.outputs, outputs)):
            assert {key: (info.dtype, len(info.tensor_shape.dim)) for key, info in tensors.items()} == table, name
            for key, info in tensors.items():
                # Dimension 0 is the batch: inputs for row format and batching
                # (batching_util.h), outputs for splitting a merged batch.
                assert not info.tensor_shape.unknown_rank and info.tensor_shape.dim[0].size == -1, (name, key)


@graph_only
def test_warmup_requests_send_exactly_each_signatures_inputs_batched(exported):
    from tensorflow_serving.apis import prediction_log_pb2

    signatures = signature_defs(exported[0])
    records = list(tf.data.TFRecordDataset(os.path.join(exported[0], WARMUP_FILE)).as_numpy_iterator())
    requests = [prediction_log_pb2.PredictionLog.FromString(r).predict_log.request for r in records]
    assert [request.model_spec.signature_name for request in requests] == list(SIGNATURES)
    for request in requests:
        assert request.model_spec.name == "tiny"
        signature = signatures[request.model_spec.signature_name]
        assert set(request.inputs) == set(signature.inputs)
        rows = set()
        for key, proto in request.inputs.items():
            assert proto.dtype == signature.inputs[key].dtype
            assert len(proto.tensor_shape.dim) == len(signature.inputs[key].tensor_shape.dim) >= 1
            rows.add(proto.tensor_shape.dim[0].size)
        assert len(rows) == 1 and rows.pop() >= 1  # one batch size for all the inputs


@graph_only
def test_warmup_requests_replay_through_the_signature_defs(exported):
    # As the model server replays them at load (through Predict, which checks the inputs).
    answer = run_session_check(exported[0], "--warmup")
    assert answer["signatures"] == list(SIGNATURES)
    assert [len(result["length"]) for result in answer["results"]] == [3, 3, 3, 3, 2, 3, 3]


def test_session_loader_answers_exactly_what_translate_answers(session_answers, translator):
    answer = {"outputs": session_answers["results"][0]}
    assert answer["outputs"]["translation"] == translator.translate(TEXTS)
    expected_ids = translator.translate_tokens(translator.encode(TEXTS))
    lengths = answer["outputs"]["length"]
    assert lengths == [len(ids) for ids in expected_ids]
    for row, ids in zip(answer["outputs"]["tokens"], expected_ids):
        assert row[: len(ids)] == ids and not any(row[len(ids) :])
    assert len(answer["outputs"]["tokens"][0]) == max(lengths)
    # Nothing of ours (or of keras-hub) was needed to run the graph.
    assert not {"kerasformer", "keras_hub", "training", "export"} & set(session_answers["modules"])


def test_the_default_signatures_stop_each_row_at_the_runs_length_rule(session_answers, translator, run_dir):
    """serving_default stops a row at ceil(a * source ids + b) target ids ([END] included), the
    rule fitted to the run's training pairs: greedy output cut there is a prefix of the output
    without any rule."""
    a, b = RunFolder(run_dir).length_rule()
    answer = session_answers["results"][0]
    unlimited = Translator(translator.model, translator.source_tokenizer, translator.target_tokenizer)
    sources = translator.encode(TEXTS)
    cut = 0
    for source, row, length, ids in zip(sources, answer["tokens"], answer["length"],
                                        unlimited.translate_tokens(sources)):
        limit = min(math.ceil(a * len(source) + b), DECODER_MAX_LENGTH)
        assert length == (limit if len(ids) >= limit else len(ids)), (limit, length, ids)
        assert row[:length] == ids[:length]
        cut += len(ids) >= limit
    assert cut, "no row reached its limit: the test shows nothing"


def test_each_row_stops_at_its_own_max_length(session_answers, translator):
    answer = session_answers["results"][1]
    # A max_length input replaces the run's length rule: compare with decoding without it.
    unlimited = Translator(translator.model, translator.source_tokenizer, translator.target_tokenizer)
    full = unlimited.translate_tokens(unlimited.encode(TEXTS))
    for row, length, ids, limit in zip(answer["tokens"], answer["length"], full, LIMITS):
        limit = min(limit, DECODER_MAX_LENGTH)  # above the decoder's: clipped
        # A greedy translation cut at `limit` tokens ([END] included) is a prefix of the whole one.
        assert length == min(limit, len(ids)), (limit, length, ids)
        assert row[:length] == ids[:length] and not any(row[length:])


def test_translate_tokens_signature_equals_in_process_decoding(session_answers, translator):
    # tests/test_decoding.py shows the cached loop equals full recomputation on every backend.
    answer = session_answers["results"][2]
    expected = translator.translate_tokens([[t for t in row if t] for row in SOURCE_IDS])
    assert answer["length"] == [len(ids) for ids in expected]
    for row, ids in zip(answer["tokens"], expected):
        assert row[: len(ids)] == ids


def test_translate_beam_signatures_equal_in_process_beam_search(session_answers, run_dir):
    beam = Translator.from_run(run_dir, beam_size=4, alpha=0.6)  # the exporter's defaults
    default_beam, limited = session_answers["results"][3], session_answers["results"][4]
    assert default_beam["translation"] == beam.translate(TEXTS)
    assert default_beam["length"] == [len(ids) for ids in beam.translate_tokens(beam.encode(TEXTS))]
    assert all(score <= 0 for score in default_beam["score"])  # log-probabilities / lp
    for length, limit in zip(limited["length"], LIMITS):
        assert length <= min(limit, DECODER_MAX_LENGTH)
    # The row whose limit is clipped to the decoder's is the search without any limit (a
    # max_length input replaces the run's length rule).
    unlimited = Translator(beam.model, beam.source_tokenizer, beam.target_tokenizer, beam_size=4, alpha=0.6)
    assert limited["translation"][2] == unlimited.translate(TEXTS)[2]


def padded(rows):
    """Lists of ids as one int32 array, 0-padded (at least one column)."""
    array = np.zeros((len(rows), max(1, max(map(len, rows)))), "int32")
    for row, ids in enumerate(rows):
        array[row, : len(ids)] = ids
    return array


@pytest.mark.parametrize("signature", ["translate_attention", "translate_beam_attention"])
def test_attention_signatures_return_the_weights_of_the_decoding_they_did(session_answers, run_dir, signature):
    """The weights the cached loop computed step by step equal a teacher-forced pass over the
    translation it returned; pieces label both axes; -1 marks what is not part of a sentence."""
    index = 5 if signature == "translate_attention" else 6
    answer = session_answers["results"][index]
    translator = Translator.from_run(run_dir, beam_size=4 if "beam" in signature else 1, alpha=0.6)
    plain = session_answers["results"][0 if index == 5 else 3]
    assert answer["translation"] == plain["translation"] and answer["tokens"] == plain["tokens"]
    sources = translator.encode(TEXTS)
    assert answer["source_length"] == [len(ids) for ids in sources]
    targets = []
    for row, (length, steps) in enumerate(zip(answer["length"], answer["target_length"])):
        ended = steps == length + 1  # the row produced [END]: one more step than tokens
        assert ended or steps == length, (length, steps)
        targets.append(answer["tokens"][row][:length] + ([END_ID] if ended else []))
        assert answer["target_pieces"][row][:steps] == [translator.target_tokenizer.id_to_token(t)
                                                         for t in targets[-1]]
        assert answer["source_pieces"][row][: len(sources[row])] == [
            translator.source_tokenizer.id_to_token(t) for t in sources[row]]
        assert not any(answer["target_pieces"][row][steps:]) and not any(answer["source_pieces"][row][len(sources[row]):])
    expected = teacher_forced_attention(translator.model, padded(sources), padded(targets), START_ID)
    for kind, want in expected.items():
        got = np.array(answer[kind], "float32")
        layers, heads = want.shape[1:3]
        assert got.shape[:3] == (len(TEXTS), layers, heads), kind
        for row, (source, target) in enumerate(zip(sources, targets)):
            rows, columns = {"encoder_self_attention": (len(source), len(source)),
                             "decoder_self_attention": (len(target), len(target)),
                             "cross_attention": (len(target), len(source))}[kind]
            np.testing.assert_allclose(got[row, :, :, :rows, :columns], want[row, :, :, :rows, :columns],
                                       atol=1e-5, err_msg=f"{kind}, row {row}")
            assert np.all(got[row, :, :, rows:] == -1) and np.all(got[row, :, :, :, columns:] == -1), (kind, row)
            if rows and columns and kind != "decoder_self_attention":
                np.testing.assert_allclose(got[row, :, :, :rows, :columns].sum(-1), 1, rtol=1e-5)


# Merged batches, on an export whose rows are told apart: an untrained model of the
# tiny run's shape (the trained tiny model answers nearly the same for every source).


@pytest.fixture(scope="module")
def untrained(run_dir, tmp_path_factory):
    """(model, loaded SavedModel): random weights with the tiny run's tokenizers, exported by the
    command line with a beam search of its own (--beam-size 2 --alpha 0). The loaded object is
    kept referenced while its signatures are called (FACTS: "variables which have been deleted")."""
    folder = tmp_path_factory.mktemp("untrained")
    vocab_size = json.load(open(os.path.join(run_dir, "config.json")))["model"]["source_vocab_size"]
    keras.utils.set_random_seed(1)
    model = build_seq2seq(preset("tiny", source_vocab_size=vocab_size, target_vocab_size=vocab_size))
    (folder / "run").mkdir()
    model.save(str(folder / "run" / "best.keras"))
    shutil.copytree(os.path.join(run_dir, "tokenizers"), folder / "run" / "tokenizers")
    result = subprocess.run(
        [sys.executable, "-m", "kerasformer.export.exporter", str(folder / "run"), "--name", "untrained", "--base-dir",
         str(folder / "saved_models"), "--beam-size", "2", "--alpha", "0", "--no-warmup", "--print-json"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "KERAS_BACKEND": "tensorflow"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    import tensorflow_text  # noqa: F401  (the SentencePiece ops, before loading)

    return model, tf.saved_model.load(json.loads(result.stdout.strip().splitlines()[-1])["path"])


# Two requests of two rows each, with every input any signature takes.
REQUEST_A = {"text": TEXTS[:2], "max_length": [5, 9], "tokens": [[5, 6, 7, 0], [8, 0, 0, 0]]}
REQUEST_B = {"text": TEXTS[2:], "max_length": [2, 40], "tokens": [[9, 10, 11, 12, 13, 0], [14, 15, 0, 0, 0, 0]]}


def merge(a, b):
    """Two requests' inputs as the batching model server merges them: concatenated along
    dimension 0, a narrower one first padded in the other dimensions with its own first value
    (batching/batching_util.cc PadTensor: `pad_value(input.flat<T>()(0))`)."""
    merged = {}
    for name in a:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        width = np.maximum(x.shape, y.shape)
        pad = lambda t: np.pad(t, [(0, 0)] + [(0, w - n) for w, n in zip(width[1:], t.shape[1:])],  # noqa: E731
                               constant_values=t.flat[0])
        merged[name] = np.concatenate([pad(x), pad(y)]) if x.ndim > 1 else np.concatenate([x, y])
    return merged


def call(signature, inputs):
    """{output: NumPy array} of a loaded signature called with Python inputs."""
    dtypes = {"text": tf.string, "max_length": tf.int32, "tokens": tf.int32}
    outputs = signature(**{name: tf.constant(value, dtypes[name]) for name, value in inputs.items()})
    return {name: value.numpy() for name, value in outputs.items()}


@pytest.mark.backend_independent
@pytest.mark.parametrize("name", SIGNATURE_TABLE)
def test_a_merged_batch_answers_each_request_as_alone(untrained, name):
    _, loaded = untrained
    signature = loaded.signatures[name]
    inputs = SIGNATURE_TABLE[name][0]
    a, b = ({key: request[key] for key in inputs} for request in (REQUEST_A, REQUEST_B))
    merged = call(signature, merge(a, b))
    assert {key: value.shape[0] for key, value in merged.items()} == dict.fromkeys(merged, 4)  # batch-major
    for rows, request in ((slice(0, 2), a), (slice(2, 4), b)):
        alone = call(signature, request)
        for key, value in alone.items():
            part = merged[key][rows]
            if value.ndim > 1:  # the merged answer is as wide as its longest row; the rest is padding
                inside = tuple(slice(0, n) for n in value.shape)
                padding = {"tokens": 0, "source_pieces": b"", "target_pieces": b""}.get(key, -1)
                compare = np.testing.assert_array_equal if value.dtype != np.float32 else np.testing.assert_allclose
                compare(part[inside], value, **({"atol": 1e-6} if value.dtype == np.float32 else {}), err_msg=f"{name} {key}")
                outside = np.ones(part.shape, bool)
                outside[inside] = False
                assert np.all(part[outside] == padding), (name, key)
            elif key == "score":
                np.testing.assert_allclose(part, value, rtol=1e-5, err_msg=name)
            else:
                np.testing.assert_array_equal(part, value, err_msg=f"{name} {key}")
    if "max_length" in inputs:
        # The untrained model never says [END]: each row runs to its own (clipped) limit.
        np.testing.assert_array_equal(merged["length"], [5, 9, 2, DECODER_MAX_LENGTH])


@pytest.mark.backend_independent
def test_beam_size_and_alpha_are_fixed_at_export(untrained, run_dir):
    model, loaded = untrained
    assert (int(loaded.beam_size.numpy()), float(loaded.alpha.numpy())) == (2, 0.0)
    source = Translator.from_run(run_dir).encode(TEXTS[:3])
    encoder_tokens = np.zeros((3, max(map(len, source))), "int32")
    for row, ids in enumerate(source):
        encoder_tokens[row, : len(ids)] = ids
    tokens, scores = beam_search(model, encoder_tokens, START_ID, END_ID, DECODER_MAX_LENGTH, beam_size=2, alpha=0.0)
    tokens = np.where(keras.ops.convert_to_numpy(tokens) == END_ID, 0, keras.ops.convert_to_numpy(tokens))
    answer = call(loaded.signatures["translate_beam"], {"text": TEXTS[:3]})
    width = answer["tokens"].shape[1]
    np.testing.assert_array_equal(answer["tokens"], tokens[:, :width])
    assert not tokens[:, width:].any()
    np.testing.assert_allclose(answer["score"], keras.ops.convert_to_numpy(scores), rtol=1e-5)


@pytest.mark.backend_independent
def test_bad_max_length_values_are_invalid_arguments_naming_them(untrained):
    _, loaded = untrained
    for name in ("translate_max_length", "translate_beam_max_length"):
        signature = loaded.signatures[name]
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"max_length must be at least 1 in every row; "
                                                                 r"got \[0 -3\] in row\(s\) \[0 2\]"):
            call(signature, {"text": TEXTS[:3], "max_length": [0, 4, -3]})
        with pytest.raises(tf.errors.InvalidArgumentError, match="max_length has 1 values for 2 texts"):
            call(signature, {"text": TEXTS[:2], "max_length": [4]})


@graph_only
def test_graph_uses_only_ops_the_model_server_has(exported):
    ops = graph_op_types(exported[0])
    found = check_servable_ops(exported[0])
    assert found["unknown"] == []
    # The attention signatures name their pieces with SentencepieceIdToStringOp: registered with the
    # other SentencePiece ops in tensorflow-text's sentencepiece_ops.cc / sentencepiece_kernels.cc,
    # which the model server links (ops_lib).
    assert set(found["tensorflow_text"]) == {"SentencepieceOp", "SentencepieceTokenizeOp", "SentencepieceDetokenizeOp",
                                             "SentencepieceIdToStringOp"}
    assert {"While", "MatMul", "Softmax"} <= set(found["core"]) and set(ops) == set(found["core"]) | set(
        found["tensorflow_text"]
    )
    # No XLA: the CPU model server disables it by default.
    assert found["xla"] == [] and not [op for op in ops if op.startswith("Xla")]


@pytest.mark.backend_independent
def test_an_op_outside_core_and_tensorflow_text_fails_the_check(exported, tmp_path):
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(open(os.path.join(exported[0], "saved_model.pb"), "rb").read())
    proto.meta_graphs[0].graph_def.library.function[0].node_def[0].op = "KerasformerCustomOp"
    (tmp_path / "saved_model.pb").write_bytes(proto.SerializeToString())
    found = classify_ops(["KerasformerCustomOp", "MatMul", "XlaDynamicUpdateSlice"])
    assert (found["unknown"], found["xla"], found["core"]) == (["KerasformerCustomOp"], ["XlaDynamicUpdateSlice"], ["MatMul"])
    with pytest.raises(ValueError, match="KerasformerCustomOp"):
        check_servable_ops(str(tmp_path))


@pytest.mark.backend_independent
def test_each_op_type_is_looked_up_in_a_fresh_interpreter_once_per_process(monkeypatch):
    """The registry of a fresh `import tensorflow` is the installed TensorFlow's: a second export
    in one process asks only about op types the first did not use."""
    import kerasformer.export.serving_ops as serving_ops

    monkeypatch.setattr(serving_ops, "_REGISTRY", {})
    asked, real_run = [], subprocess.run

    def counting_run(*args, **kwargs):
        asked.append(json.loads(kwargs["input"]))
        return real_run(*args, **kwargs)

    monkeypatch.setattr(serving_ops.subprocess, "run", counting_run)
    first = classify_ops(["SentencepieceOp", "MatMul", "KerasformerCustomOp", "MatMul"])
    again = classify_ops(["MatMul", "XlaDynamicUpdateSlice", "SentencepieceOp", "KerasformerCustomOp"])
    assert asked == [["KerasformerCustomOp", "MatMul", "SentencepieceOp"], ["XlaDynamicUpdateSlice"]]
    assert first == {"core": ["MatMul"], "tensorflow_text": ["SentencepieceOp"], "xla": [],
                     "unknown": ["KerasformerCustomOp"]}
    assert again == {**first, "xla": ["XlaDynamicUpdateSlice"]}
    assert classify_ops(["MatMul"]) == {"core": ["MatMul"], "tensorflow_text": [], "xla": [], "unknown": []}
    assert len(asked) == 2


# The in-process export path. Under JAX and torch the same code runs in a
# TensorFlow subprocess, so these checks of its bookkeeping run in the
# TensorFlow pass only.
if keras.backend.backend() == "tensorflow":

    def test_versions_count_up_and_are_never_overwritten(run_dir, exported):
        _, base = exported
        second = export_run(run_dir, "tiny", base_dir=base, warmup=False)
        assert second == os.path.join(base, "tiny", "2")
        with pytest.raises((FileExistsError, RuntimeError), match="exists"):
            export_run(run_dir, "tiny", base_dir=base, version=1)
        assert sorted(os.listdir(os.path.join(base, "tiny"))) == ["1", "2"]

    def test_a_failed_export_leaves_no_version_folder(run_dir, tmp_path, monkeypatch):
        import kerasformer.export.exporter as exporter

        def disk_full(*args, **kwargs):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(exporter, "write_warmup_requests", disk_full)
        with pytest.raises(OSError, match="No space left"):
            export_run(run_dir, "tiny", base_dir=str(tmp_path))
        assert os.listdir(tmp_path / "tiny") == []


# REST: kerasformer-serve over the real export. The server is a TensorFlow
# process whatever backend trained the model, so this runs in one pass only.


@pytest.fixture(scope="module")
def rest_server(exported, tmp_path_factory):
    """kerasformer-serve, started as tensorflow_model_server is, over a copy of version 1."""
    base = tmp_path_factory.mktemp("rest") / "saved_models"
    shutil.copytree(exported[0], base / "tiny" / "1")
    process = ServerProcess(base.parent, None, "--model_name=tiny", f"--model_base_path={base / 'tiny'}",
                            "--file_system_poll_wait_seconds=1", model="tiny")
    try:
        yield process.wait_until_ready(), base
    finally:
        process.stop()


def predict(server, body, path=":predict"):
    return http("POST", f"{server.url}/v1/models/tiny{path}", body)


@pytest.mark.backend_independent
def test_rest_answers_equal_in_process_translate_in_both_formats(rest_server, translator):
    server, _ = rest_server
    # As the model server does, before traffic: one warmup request per signature.
    assert f"{len(SIGNATURES)} warmup requests replayed" in server.log()
    expected = translator.translate(TEXTS)  # mixed lengths, and an empty string
    status, rows = predict(server, {"instances": TEXTS})  # a plain list: serving_default has one input
    assert status == 200, rows
    assert [p["translation"] for p in rows["predictions"]] == expected
    status, columns = predict(server, {"inputs": {"text": TEXTS}})
    assert status == 200, columns
    assert columns["outputs"]["translation"] == expected
    status, bare = predict(server, {"inputs": TEXTS})  # a bare value: one input
    assert status == 200 and bare == columns, bare
    ids = translator.translate_tokens(translator.encode(TEXTS))
    assert columns["outputs"]["length"] == [len(i) for i in ids]
    assert [p["length"] for p in rows["predictions"]] == [len(i) for i in ids]
    assert ServingClient(server.url, model="tiny").translate(TEXTS) == expected


@pytest.mark.backend_independent
def test_rest_rows_with_different_max_lengths_each_stop_at_their_own(rest_server, translator):
    server, _ = rest_server
    # A max_length input replaces the run's length rule: compare with decoding without it.
    unlimited = Translator(translator.model, translator.source_tokenizer, translator.target_tokenizer)
    full = unlimited.translate_tokens(unlimited.encode(TEXTS))
    expected = [min(limit, DECODER_MAX_LENGTH, len(ids)) for limit, ids in zip(LIMITS, full)]
    instances = [{"text": text, "max_length": limit} for text, limit in zip(TEXTS, LIMITS)]
    status, rows = predict(server, {"signature_name": "translate_max_length", "instances": instances})
    assert status == 200, rows
    assert [p["length"] for p in rows["predictions"]] == expected
    for prediction, ids, length in zip(rows["predictions"], full, expected):
        assert prediction["tokens"][:length] == ids[:length]
    body = {"signature_name": "translate_max_length", "inputs": {"text": TEXTS, "max_length": LIMITS}}
    status, columns = predict(server, body)
    assert status == 200 and columns["outputs"]["length"] == expected, columns
    assert columns["outputs"]["translation"] == [p["translation"] for p in rows["predictions"]]
    client = ServingClient(server.url, model="tiny")
    assert client.translate(TEXTS, max_length=LIMITS) == columns["outputs"]["translation"]

    body["inputs"]["max_length"] = [3, 0, 2, 1]
    status, answer = predict(server, body)
    assert status == 400 and "max_length must be at least 1 in every row; got [0] in row(s) [1]" in answer["error"]
    status, answer = predict(server, {"instances": ["Hello."]})
    assert status == 200, answer  # the next request is served


@pytest.mark.backend_independent
def test_rest_overlong_and_non_utf8_input(rest_server, translator):
    server, _ = rest_server
    long_text = "In the beginning God created the heaven and the earth. " * 180  # ~10,000 characters
    status, answer = predict(server, {"instances": [long_text]})
    assert status == 200, answer
    assert answer["predictions"][0]["translation"] == translator.translate([long_text])[0]  # both truncate
    status, answer = predict(server, {"instances": [{"b64": "//4="}]})  # not UTF-8: a string is bytes
    assert status == 200


@pytest.mark.backend_independent
def test_rest_beam_search_signatures(rest_server, run_dir):
    server, _ = rest_server
    beam = Translator.from_run(run_dir, beam_size=4, alpha=0.6)  # fixed at export: the defaults
    expected = beam.translate(TEXTS[:2])
    status, rows = predict(server, {"signature_name": "translate_beam", "instances": TEXTS[:2]})
    assert status == 200, rows
    assert [p["translation"] for p in rows["predictions"]] == expected
    status, columns = predict(server, {"signature_name": "translate_beam_max_length",
                                       "inputs": {"text": TEXTS[:2], "max_length": [DECODER_MAX_LENGTH, 2]}})
    assert status == 200, columns
    assert columns["outputs"]["translation"][0] == expected[0] and columns["outputs"]["length"][1] <= 2
    assert ServingClient(server.url, model="tiny").translate(TEXTS[:2], beam=True) == expected


@pytest.mark.backend_independent
def test_rest_serves_a_new_version_without_restart_and_never_a_partial_one(rest_server, exported):
    server, base = rest_server

    def states():
        status, answer = http("GET", f"{server.url}/v1/models/tiny")
        assert status == 200, answer
        return {entry["version"]: entry["state"] for entry in answer["model_version_status"]}

    # A half-copied folder under a version number (a copy without the exporter's rename):
    # refused, version 1 keeps serving.
    partial = base / "tiny" / "2" / "variables"
    partial.mkdir(parents=True)
    shutil.copyfile(os.path.join(exported[0], "variables", "variables.index"), partial / "variables.index")
    wait_for(lambda: states().get("2") == "END", timeout=120, message="version 2 to be refused")
    assert states()["1"] == "AVAILABLE"
    status, answer = predict(server, {"instances": ["Jesus wept."]}, path="/versions/2:predict")
    assert status == 404 and "error" in answer
    # A complete folder, appearing by rename as the exporter writes it: served in place of 1.
    shutil.copytree(exported[0], base / "tiny" / ".tmp-3")
    os.rename(base / "tiny" / ".tmp-3", base / "tiny" / "3")
    wait_for(lambda: states().get("3") == "AVAILABLE", timeout=120, message="version 3 to be served")
    status, answer = predict(server, {"instances": ["Jesus wept."]}, path="/versions/3:predict")
    assert status == 200, answer


@pytest.mark.backend_independent
def test_the_shipped_model_server_config_files_parse():
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    from kerasformer.export.serving.batching import batching_parameters, parse_batching_parameters

    folder = os.path.join(ROOT, "export", "serving", "config")
    config = text_format.Parse(open(os.path.join(folder, "models.config")).read(),
                               model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == (
        "kerasformer_en_es", "/models/kerasformer_en_es", "tensorflow")
    batching = parse_batching_parameters(open(os.path.join(folder, "batching_parameters.txt")).read())
    assert batching == batching_parameters(max_batch_size=32, batch_timeout_micros=5000, max_enqueued_batches=100,
                                          num_batch_threads=2, pad_variable_length_inputs=True)


@pytest.mark.backend_independent  # kerasformer-recover runs under TensorFlow, as the exporter does
def test_an_export_gives_back_its_run_and_exports_again_the_same(exported, tmp_path):
    """kerasformer-recover: the run folder rebuilt from an export (its assets/config.json, its
    variables, its tokenizers) exports again to a SavedModel that answers the same."""
    from kerasformer.export.recover import recover_run

    run_dir = recover_run(exported[0], str(tmp_path / "run"))
    assert sorted(os.listdir(os.path.join(run_dir, "tokenizers"))) == ["source.model", "source.vocab", "target.model",
                                                                          "target.vocab"]
    again = export_run(run_dir, "tiny", base_dir=str(tmp_path / "saved_models"), warmup=False)
    old, new = tf.saved_model.load(exported[0]), tf.saved_model.load(again)
    for name in ("serving_default", "translate_beam"):
        a, b = (call(model.signatures[name], {"text": TEXTS}) for model in (old, new))
        np.testing.assert_array_equal(a["tokens"], b["tokens"], err_msg=name)
        np.testing.assert_array_equal(a["translation"], b["translation"], err_msg=name)


@pytest.mark.backend_independent
def test_recovering_an_export_without_its_config_says_what_to_give(exported, tmp_path):
    from kerasformer.export.recover import recover_run

    copy = tmp_path / "old"
    shutil.copytree(exported[0], copy)
    os.remove(copy / "assets" / "config.json")
    with pytest.raises(FileNotFoundError, match="has no assets/config.json .* give the run's config.json with --config"):
        recover_run(str(copy), str(tmp_path / "run"))
    wrong = tmp_path / "wrong.json"
    config = json.load(open(os.path.join(exported[0], "assets", "config.json")))
    config["model"]["num_layers"] += 1
    wrong.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="model variables; the config's model has"):
        recover_run(str(copy), str(tmp_path / "run"), str(wrong))
