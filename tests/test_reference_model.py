"""The reference model that ships in saved_models/kerasformer_en_es/1 (README, "The reference
model"): trained by training/configs/reference_en_es.toml and exported by kerasformer-export.
It is loaded the way TensorFlow Serving loads it (a TF1 session over its SignatureDef, nothing
imported but TensorFlow and tensorflow-text: export/session_check.py) and by kerasformer-serve,
and must translate test verses it never saw into Spanish that shares words with the reference."""

import json
import os
import re
import subprocess
import sys

import pytest
import sacrebleu
from serving_helpers import REPOSITORY_ROOT, ServerProcess, http

from kerasformer.training.corpus_reader import read_corpus

pytestmark = pytest.mark.backend_independent  # TensorFlow's loaders only; see tests/run.sh

MODELS = os.path.join(REPOSITORY_ROOT, "saved_models", "kerasformer_en_es")
REFERENCE = os.path.join(MODELS, "1")
TEST_SPLIT = os.path.join(REPOSITORY_ROOT, "training", "corpus", "en-es", "test.tsv.gz")
VERSES = 8  # the first verses of the test books (Lamentations first; no test book is trained on)


def words(text):
    return set(re.findall(r"\w+", text.lower()))


def check_translations(sources, translations, references):
    assert len(translations) == len(sources)
    for source, translation, reference in zip(sources, translations, references):
        shared = words(translation) & words(reference)
        assert len(shared) >= 3, (source, translation, reference)
        assert not words(translation) >= words(source), (source, translation)  # not the English back
    chrf = sacrebleu.corpus_chrf(translations, [references]).score
    assert chrf >= 35, (chrf, translations)


@pytest.fixture(scope="module")
def verses():
    corpus = read_corpus(TEST_SPLIT)
    return corpus.sources[:VERSES], corpus.targets[:VERSES]


def test_the_reference_model_is_a_complete_export_within_25_megabytes():
    files = [os.path.join(folder, name) for folder, _, names in os.walk(REFERENCE) for name in names]
    assert {"saved_model.pb", "variables.index"} <= {os.path.basename(path) for path in files}
    assert {"source.model", "target.model"} <= set(os.listdir(os.path.join(REFERENCE, "assets")))
    assert sum(os.path.getsize(path) for path in files) <= 25 * 2**20


def test_test_verses_translate_through_the_model_servers_session_path(verses):
    sources, references = verses
    result = subprocess.run(
        [sys.executable, os.path.join(REPOSITORY_ROOT, "export", "session_check.py"), REFERENCE, *sources],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert not {"kerasformer", "keras_hub", "training", "export"} & set(report["modules"])  # TensorFlow imports keras itself
    check_translations(sources, report["outputs"]["translation"], references)
    assert max(report["outputs"]["length"]) < 96  # each stops at [END], not at the cap


def test_kerasformer_serve_answers_real_translations_with_it(tmp_path, verses):
    sources, references = verses
    server = ServerProcess(tmp_path, None, "--model_name=kerasformer_en_es", f"--model_base_path={MODELS}",
                           model="kerasformer_en_es/versions/1")
    try:
        server.wait_until_ready(timeout=300)
        status, body = http("POST", f"{server.url}/v1/models/kerasformer_en_es/versions/1:predict",
                            {"instances": sources}, timeout=600)
        assert status == 200, body
        translations = [row["translation"] for row in body["predictions"]]
        check_translations(sources, translations, references)
    finally:
        server.stop()


def test_its_run_folder_is_recovered_from_the_export_with_the_dropout_it_was_trained_with(tmp_path):
    """kerasformer-recover rebuilds the model from assets/config.json and refuses one whose
    variables do not match the export's: dropout layers hold seed states, so the config must
    name every rate the model was trained with (0.1 on attention weights and FFN activations too)."""
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "kerasformer.export.recover", REFERENCE, str(run_dir)],
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    model = json.load(open(run_dir / "config.json", encoding="utf-8"))["model"]
    assert (model["dropout"], model["attention_dropout"], model["activation_dropout"]) == (0.1, 0.1, 0.1)
    assert (run_dir / "best.keras").exists()
