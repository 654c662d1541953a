"""export.exporter: a trained run becomes a SavedModel that TensorFlow Serving
loads, whose graph (tokenizer, cached greedy loop, detokenizer) answers exactly
what the in-process Translator answers -- checked through the SignatureDef in a
TF1 session, as the model server runs it, in a process without kerasformer.

Runs under every backend: under JAX and torch the exporter re-runs itself in a
TensorFlow-backend process, so these tests show that a model trained under each
backend exports to a SavedModel that gives that backend's tokens."""

import json
import os
import shutil
import subprocess
import sys

import keras
import pytest
import tensorflow as tf
from serving_helpers import ServerProcess, http, wait_for
from test_train import tiny_config

from export.exporter import WARMUP_FILE, export_run
from export.serving_ops import check_servable_ops, classify_ops, graph_op_types
from export.serving.client import ServingClient
from training.train import train
from training.translator import Translator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = [
    "In the beginning.",
    "Jesus wept.",
    "And God said, Let there be light: and there was light, and the evening and the morning were the first day.",
    "",
]


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


@pytest.fixture(scope="module")
def session_answers(exported, tmp_path_factory):
    """The export run by export/session_check.py in a fresh process (TF +
    tensorflow-text only, TF1 session, SignatureDef tensor names): default
    max_length, max_length=3, the translate_tokens signature, and translate_beam
    with its default beam (4) and with beam_size=1."""
    requests = [
        {"signature": "serving_default", "inputs": {"text": TEXTS}},
        {"signature": "serving_default", "inputs": {"text": TEXTS, "max_length": 3}},
        {"signature": "translate_tokens", "inputs": {"tokens": SOURCE_IDS}},
        {"signature": "translate_beam", "inputs": {"text": TEXTS}},
        {"signature": "translate_beam", "inputs": {"text": TEXTS, "beam_size": 1}},
    ]
    path = tmp_path_factory.mktemp("requests") / "requests.json"
    path.write_text(json.dumps(requests))
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "export", "session_check.py"), exported[0], "--requests", str(path)],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


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


def test_warmup_file_holds_a_prediction_log_per_signature(exported):
    from tensorflow_serving.apis import prediction_log_pb2

    records = list(tf.data.TFRecordDataset(os.path.join(exported[0], WARMUP_FILE)).as_numpy_iterator())
    logs = [prediction_log_pb2.PredictionLog.FromString(r) for r in records]
    assert [log.predict_log.request.model_spec.signature_name for log in logs] == [
        "serving_default", "translate_tokens", "translate_beam"]
    assert all(log.predict_log.request.model_spec.name == "tiny" for log in logs)
    assert len(logs[0].predict_log.request.inputs["text"].string_val) == 3


def test_signatures_and_the_max_length_default(exported):
    from tensorflow.python.tools import saved_model_utils

    signatures = saved_model_utils.get_meta_graph_def(exported[0], "serve").signature_def
    serving = signatures["serving_default"]
    assert set(serving.inputs) == {"text", "max_length"}
    assert set(serving.outputs) == {"translation", "tokens", "length"}
    assert serving.inputs["text"].dtype == tf.string.as_datatype_enum
    assert serving.outputs["tokens"].dtype == tf.int32.as_datatype_enum
    assert set(signatures["translate_tokens"].inputs) == {"tokens", "max_length"}
    assert tf.make_ndarray(serving.defaults["max_length"]) == 32  # the tiny decoder's max_length
    beam = signatures["translate_beam"]
    assert set(beam.inputs) == {"text", "max_length", "beam_size", "alpha"}
    assert set(beam.outputs) == {"translation", "tokens", "length", "score"}
    assert tf.make_ndarray(beam.defaults["beam_size"]) == 4  # the paper's beam search
    assert abs(tf.make_ndarray(beam.defaults["alpha"]) - 0.6) < 1e-6


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


def test_max_length_input_bounds_the_output(session_answers, translator):
    answer = {"outputs": session_answers["results"][1]}
    assert max(answer["outputs"]["length"]) <= 3
    full = translator.translate_tokens(translator.encode(TEXTS))
    for row, length, ids in zip(answer["outputs"]["tokens"], answer["outputs"]["length"], full):
        assert row[:length] == ids[:length]


def test_translate_tokens_signature_equals_in_process_decoding(session_answers, translator):
    # tests/test_decoding.py shows the cached loop equals full recomputation on every backend.
    answer = session_answers["results"][2]
    expected = translator.translate_tokens([[t for t in row if t] for row in SOURCE_IDS])
    assert answer["length"] == [len(ids) for ids in expected]
    for row, ids in zip(answer["tokens"], expected):
        assert row[: len(ids)] == ids


def test_translate_beam_signature_equals_in_process_beam_search(session_answers, run_dir, translator):
    beam = Translator.from_run(run_dir, beam_size=4, alpha=0.6)
    default_beam, beam_of_one = session_answers["results"][3], session_answers["results"][4]
    assert default_beam["translation"] == beam.translate(TEXTS)
    assert default_beam["length"] == [len(ids) for ids in beam.translate_tokens(beam.encode(TEXTS))]
    assert all(score <= 0 for score in default_beam["score"])  # log-probabilities / lp
    assert beam_of_one["translation"] == translator.translate(TEXTS)  # beam 1 is greedy


def test_graph_uses_only_ops_the_model_server_has(exported):
    ops = graph_op_types(exported[0])
    found = check_servable_ops(exported[0])
    assert found["unknown"] == []
    assert set(found["tensorflow_text"]) == {"SentencepieceOp", "SentencepieceTokenizeOp", "SentencepieceDetokenizeOp"}
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
        import export.exporter as exporter

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
    """kerasformer-serve over a base path holding a copy of version 1."""
    base = tmp_path_factory.mktemp("rest") / "saved_models"
    shutil.copytree(exported[0], base / "tiny" / "1")
    process = ServerProcess(base.parent, base, "--poll-seconds", "0.5", model="tiny")
    try:
        yield process.wait_until_ready(), base
    finally:
        process.stop()


def predict(server, body, path=":predict"):
    return http("POST", f"{server.url}/v1/models/tiny{path}", body)


@pytest.mark.backend_independent
def test_rest_answers_equal_in_process_translate_in_both_formats(rest_server, translator):
    server, _ = rest_server
    assert "3 warmup requests replayed" in server.log()  # as the model server does, before traffic
    expected = translator.translate(TEXTS)  # mixed lengths, and an empty string
    status, rows = predict(server, {"instances": TEXTS})
    assert status == 200, rows
    assert [p["translation"] for p in rows["predictions"]] == expected
    status, columns = predict(server, {"inputs": {"text": TEXTS}})
    assert status == 200, columns
    assert columns["outputs"]["translation"] == expected
    ids = translator.translate_tokens(translator.encode(TEXTS))
    assert columns["outputs"]["length"] == [len(i) for i in ids]
    assert [p["length"] for p in rows["predictions"]] == [len(i) for i in ids]
    assert ServingClient(server.url, model="tiny").translate(TEXTS) == expected


@pytest.mark.backend_independent
def test_rest_max_length_and_overlong_input(rest_server, translator):
    server, _ = rest_server
    status, answer = predict(server, {"inputs": {"text": TEXTS, "max_length": 2}})
    assert status == 200 and max(answer["outputs"]["length"]) <= 2
    long_text = "In the beginning God created the heaven and the earth. " * 180  # ~10,000 characters
    status, answer = predict(server, {"instances": [long_text]})
    assert status == 200, answer
    assert answer["predictions"][0]["translation"] == translator.translate([long_text])[0]  # both truncate
    status, answer = predict(server, {"instances": [{"b64": "//4="}]})  # not UTF-8: a string is bytes
    assert status == 200


@pytest.mark.backend_independent
def test_rest_beam_search_and_a_bad_beam_size(rest_server, run_dir):
    server, _ = rest_server
    status, answer = predict(server, {"signature_name": "translate_beam", "inputs": {"text": TEXTS[:2], "beam_size": 2}})
    assert status == 200, answer
    beam = Translator.from_run(run_dir, beam_size=2)
    assert answer["outputs"]["translation"] == beam.translate(TEXTS[:2])
    assert ServingClient(server.url, model="tiny").translate(TEXTS[:2], beam_size=2) == beam.translate(TEXTS[:2])
    for bad in (0, 17):
        status, answer = predict(server, {"signature_name": "translate_beam", "inputs": {"text": ["Hi."], "beam_size": bad}})
        assert status == 400 and "beam_size must be" in answer["error"], answer
    status, answer = predict(server, {"signature_name": "translate_beam", "instances": ["Hello."]})
    assert status == 200, answer  # the next request is served


@pytest.mark.backend_independent
def test_rest_serves_a_new_version_without_restart_and_never_a_partial_one(rest_server, exported):
    server, base = rest_server
    # A half-copied folder under a version number: refused, version 1 keeps serving.
    (base / "tiny" / "3" / "variables").mkdir(parents=True)
    shutil.copyfile(os.path.join(exported[0], "variables", "variables.index"), base / "tiny" / "3" / "variables" / "variables.index")
    # A complete folder, appearing by rename as the exporter writes it.
    shutil.copytree(exported[0], base / "tiny" / ".tmp-2")
    os.rename(base / "tiny" / ".tmp-2", base / "tiny" / "2")

    def serving_version():
        status, answer = http("GET", f"{server.url}/v1/models/tiny")
        return status == 200 and answer["model_version_status"][0]["version"]

    wait_for(lambda: serving_version() == "2" or None, timeout=120, message="version 2 to be served")
    status, answer = predict(server, {"instances": ["Jesus wept."]}, path="/versions/2:predict")
    assert status == 200, answer
    status, answer = predict(server, {"instances": ["Jesus wept."]}, path="/versions/3:predict")
    assert status == 404 and "error" in answer
    assert serving_version() == "2"


@pytest.mark.backend_independent
def test_the_shipped_model_server_config_files_parse():
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    from export.serving.batching import BatchingParameters, parse_batching_parameters

    folder = os.path.join(ROOT, "export", "serving", "config")
    config = text_format.Parse(open(os.path.join(folder, "models.config")).read(),
                               model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == (
        "kerasformer_en_es", "/models/kerasformer_en_es", "tensorflow")
    batching = parse_batching_parameters(open(os.path.join(folder, "batching_parameters.txt")).read())
    assert batching == BatchingParameters(max_batch_size=32, batch_timeout_micros=5000, max_enqueued_batches=100,
                                          num_batch_threads=2, pad_variable_length_inputs=True)
