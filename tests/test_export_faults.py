"""kerasformer.export.exporter under real faults, in subprocesses (tests/faults.py): an export killed with
SIGKILL part-way, and an export into a disk that fills up. Either way no version folder appears,
the versions already there stay byte-identical and a running kerasformer-serve keeps answering
with the previous one; the next export removes what the killed ones left and is served.

The exporter always runs under TensorFlow (it re-runs itself there under JAX or torch), so this
runs in one backend pass only. Each export costs tens of seconds here: there are four.
"""

import hashlib
import json
import os
import shutil
import time

import keras
import pytest
from faults import KillPoint, namespaces_allowed, python_command, python_env, run_python, small_disk
from serving_helpers import ServerProcess, http, save_fake_model, wait_for
from test_train import tiny_config

from kerasformer.export.exporter import EXPORT_ERROR_PREFIX, WARMUP_FILE, WORK_FOLDER, _exporting
from kerasformer.export.serving.model_repository import version_folders
from kerasformer.training.train import train

pytestmark = pytest.mark.backend_independent  # see tests/run.sh

MODEL = "tiny"
# The variable shards are written to variables/variables_temp/; the merge that writes
# variables/variables.index (and removes the shards) has not run. The merge runs eagerly; it is
# also traced, earlier, into the SavedModel's own save function.
MID_VARIABLES = KillPoint("tensorflow.python.ops.gen_io_ops:merge_v2_checkpoints",
                          condition="__import__('tensorflow').executing_eagerly()")
# Everything is written and flushed; the rename that publishes the version has not run.
BEFORE_RENAME = KillPoint("os:rename", condition="os.path.basename(str(args[1])).isdigit()")
# Free space for the export on the small disk: room for the vocabulary copies, the variables and
# the assets (~1.3 MB together), not for saved_model.pb (~2.3 MB) -- it fails part-way.
FREE_BYTES = 1_500_000
# What the operating system says when the small disk is full, per small_disk mechanism.
DISK_FULL = {"tmpfs": "No space left on device", "file-size-limit": "File too large"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """kerasformer-serve (started, maybe not ready yet) over saved_models/ holding version 1 of
    MODEL: the fake SavedModel of serving_helpers, which answers "HELLO!" to "hello"."""
    tmp = tmp_path_factory.mktemp("faults")
    base = tmp / "saved_models"
    save_fake_model(base / MODEL / "1")
    server = ServerProcess(tmp, base, "--poll-seconds", "0.5", model=MODEL)
    try:
        yield server, base
    finally:
        server.stop()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny training run (one short epoch: only its export matters here)."""
    path = tmp_path_factory.mktemp("run")
    keras.utils.set_random_seed(0)
    train(tiny_config(path, epochs=1, max_train_pairs=60))
    return str(path)


def export_args(run_dir, base):
    return ["-m", "kerasformer.export.exporter", run_dir, "--name", MODEL, "--base-dir", str(base), "--print-json"]


EXPORT_ENV = python_env(KERAS_BACKEND="tensorflow")


def serving_version(server):
    status, answer = http("GET", f"{server.url}/v1/models/{MODEL}")
    assert status == 200, answer
    # A version still loading is listed too (state LOADING), as the real server lists it.
    return next((s["version"] for s in answer["model_version_status"] if s["state"] == "AVAILABLE"), None)


def translate(server, text, version=None):
    path = f"/v1/models/{MODEL}" + (f"/versions/{version}" if version else "")
    status, answer = http("POST", f"{server.url}{path}:predict", {"instances": [text]})
    assert status == 200, answer
    return answer["predictions"][0]["translation"]


def tree(folder):
    """{path relative to `folder`: sha256 of the file, or "folder"}: everything under it."""
    found = {}
    for parent, folders, files in os.walk(folder):
        for name in folders:
            found[os.path.relpath(os.path.join(parent, name), folder)] = "folder"
        for name in files:
            with open(os.path.join(parent, name), "rb") as file:
                found[os.path.relpath(os.path.join(parent, name), folder)] = hashlib.sha256(file.read()).hexdigest()
    return found


def work_folders(model_dir):
    return sorted(entry for entry in os.listdir(model_dir) if WORK_FOLDER.match(entry))


def test_a_killed_export_publishes_nothing_and_the_next_one_is_served(served, run_dir):
    server, base = served
    model_dir = base / MODEL
    server.wait_until_ready()
    version_1 = tree(model_dir / "1")

    # Killed while writing the variables: shards written, no index, no graph.
    run_python(export_args(run_dir, base), kill_at=MID_VARIABLES, env=EXPORT_ENV).check_killed()
    assert sorted(version_folders(model_dir)) == [1]
    (left,) = work_folders(model_dir)
    variables = model_dir / left / "staging" / "variables"
    assert os.listdir(variables / "variables_temp"), "no variable shard was written before the kill"
    assert not (variables / "variables.index").exists() and not (variables.parent / "saved_model.pb").exists()

    # Killed with everything written, just before the rename that publishes it. On its way it
    # removed the first one's leftovers: that export holds no lock any more.
    run = run_python(export_args(run_dir, base), kill_at=BEFORE_RENAME, env=EXPORT_ENV).check_killed()
    assert f"removed {model_dir / left}" in run.stderr
    assert sorted(version_folders(model_dir)) == [1]
    (complete,) = work_folders(model_dir)
    for name in ("saved_model.pb", "variables/variables.index", WARMUP_FILE):
        assert (model_dir / complete / "staging" / name).exists(), name

    time.sleep(2)  # four polls of the server
    assert serving_version(server) == "1" and translate(server, "hello") == "HELLO!"
    assert "refused" not in server.log()
    assert tree(model_dir / "1") == version_1

    # The next export removes the second one's leftovers and is served.
    run = run_python(export_args(run_dir, base), env=EXPORT_ENV)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1])["path"] == str(model_dir / "2")
    assert f"removed {model_dir / complete}" in run.stderr
    assert sorted(os.listdir(model_dir)) == ["1", "2"]
    wait_for(lambda: serving_version(server) == "2", timeout=120, message="version 2 to be served")
    assert translate(server, "hello", version=2) != "HELLO!"  # the trained model, not the fake
    assert tree(model_dir / "1") == version_1


def test_an_export_into_a_full_disk_fails_clearly_and_leaves_the_versions_intact(served, run_dir, tmp_path):
    _, base = served
    disk = tmp_path / "disk"
    shutil.copytree(base / MODEL, disk / MODEL, ignore=shutil.ignore_patterns(".tmp-*"))
    before = tree(disk)
    versions = sorted(version_folders(disk / MODEL))

    run = small_disk(python_command(*export_args(run_dir, disk)), disk, FREE_BYTES, env=EXPORT_ENV)

    assert run.returncode == 1, f"exit {run.returncode} on a disk with {FREE_BYTES} bytes free:\n{run.stderr[-3000:]}"
    message = run.stderr.strip().splitlines()[-1]
    assert message == (
        f"{EXPORT_ERROR_PREFIX}{disk / MODEL}: {DISK_FULL[run.mechanism]} while writing version {versions[-1] + 1};"
        f" nothing was published and the earlier versions ({', '.join(map(str, versions))}) are untouched"
    ), run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert tree(disk) == before  # byte-identical versions; no new version, no work folder left


def test_a_running_exports_folder_is_never_removed(tmp_path):
    # flock locks belong to open file descriptions: two `_exporting` blocks in one process
    # exclude each other as two exporting processes do.
    with _exporting(str(tmp_path)):
        running = tmp_path / ".tmp-2-pid4242-abcdefgh"
        running.mkdir()
        with _exporting(str(tmp_path)):
            pass  # an export starting meanwhile
        assert running.exists()
    (tmp_path / ".tmp-2").mkdir()  # not the exporter's: e.g. a copy being deployed by hand
    with _exporting(str(tmp_path)):
        pass
    assert os.listdir(tmp_path) == [".tmp-2"]


@pytest.mark.parametrize("mechanism", ["tmpfs", "file-size-limit"])
def test_the_small_disk_fills_up(tmp_path, mechanism):
    if mechanism == "tmpfs" and not namespaces_allowed():
        pytest.skip("user and mount namespaces are not allowed here; small_disk falls back to a file size limit")
    (tmp_path / "kept").write_bytes(b"k" * 100_000)
    write = (
        "import sys\n"
        "try:\n    open(sys.argv[1], 'wb').write(b'x' * 300_000)\n"
        "except OSError as error:\n    sys.exit(error.strerror)"
    )
    run = small_disk(python_command("-c", write, tmp_path / "new"), tmp_path, 200_000, mechanism=mechanism)
    assert run.mechanism == mechanism and DISK_FULL[mechanism] in run.stderr
    assert (tmp_path / "kept").read_bytes() == b"k" * 100_000
    assert 0 < os.path.getsize(tmp_path / "new") < 300_000
