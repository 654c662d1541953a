"""What `pip install .` puts on a user's import path, checked in a fresh virtual environment.

The folders stay where the design card puts them (kerasformer/, training/, export/), but the
wheel holds them under the one name `kerasformer` (`kerasformer.training`,
`kerasformer.export`): many projects have a `training/` or `export/` folder of their own, and
two top-level packages of that name would collide. The test builds the wheel from a copy of the
tracked files, installs it without dependencies into a new venv, lends that venv the
dependencies of ours (a .pth line: their folder, not our editable install's finder), and
imports from a folder outside the repository.
"""

import os
import re
import subprocess
import sys
import venv
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.backend_independent


def run(args, **kwargs):
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("packaging")
    source = folder / "source"
    files = run(["git", "ls-files", "-z"], cwd=ROOT).stdout.split("\0")
    for name in filter(None, files):
        if not os.path.isfile(os.path.join(ROOT, name)):
            continue  # deleted in the working tree
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(os.path.join(ROOT, name), "rb") as src, open(target, "wb") as dst:
            dst.write(src.read())
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(folder / "dist"), str(source)])
    (wheel,) = (folder / "dist").glob("kerasformer-*.whl")
    env_dir = folder / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = str(env_dir / "bin" / "python")
    run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)])
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    ours = [p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)]
    with open(os.path.join(site, "zz_dependencies.pth"), "w") as file:
        file.write("\n".join(ours) + "\n")
    outside = folder / "elsewhere"
    outside.mkdir()
    return {"wheel": wheel, "python": python, "bin": env_dir / "bin", "cwd": outside}


def test_the_wheel_holds_one_top_level_package(installed):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"kerasformer"}
    for data in ("kerasformer/training/corpus/en-es/train.tsv.gz", "kerasformer/training/configs/small_en_es.toml",
                 "kerasformer/export/serving/openapi.json", "kerasformer/export/serving/config/models.config",
                 "kerasformer/export/serving/static/attention.html", "kerasformer/export/serving/static/attention.js",
                 "kerasformer/export/serving/static/attention.css"):
        assert data in names


def test_nothing_named_training_or_export_is_importable(installed):
    code = (
        "import importlib.util, kerasformer\n"
        "for name in ('training', 'export'):\n"
        "    assert importlib.util.find_spec(name) is None, name\n"
        "import kerasformer.training.train, kerasformer.training.evaluate, kerasformer.export.exporter\n"
        "import kerasformer.export.serving.server, kerasformer.export.serving.client\n"
        "import kerasformer.training.corpus_reader as c\n"
        "assert c.__file__.startswith(kerasformer.__path__[0]), c.__file__\n"
        "print(kerasformer.__file__)\n"
    )
    out = run([installed["python"], "-c", code], cwd=installed["cwd"],
              env={**os.environ, "PYTHONPATH": "", "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow")})
    assert "/site-packages/kerasformer/" in out.stdout, out.stdout


def test_console_scripts_print_the_one_version(installed):
    with open(os.path.join(ROOT, "kerasformer", "__init__.py"), encoding="utf-8") as file:
        version = re.search(r'^__version__ = "([^"]+)"', file.read(), re.M).group(1)
    meta = run([installed["python"], "-c", "import importlib.metadata as m; print(m.version('kerasformer'))"],
               cwd=installed["cwd"]).stdout.strip()
    assert meta == version
    for script in ("kerasformer-train", "kerasformer-translate"):
        out = run([str(installed["bin"] / script), "--version"], cwd=installed["cwd"])
        assert out.stdout.strip() == f"{script} {version}"
