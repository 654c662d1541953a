#!/usr/bin/env bash
# Creates .venv in the repository root (once) and installs kerasformer with all
# three Keras backends. torch==2.13.0 comes first: on our machines it is a local
# CPU build, and any other torch release would pull gigabytes of CUDA wheels.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[jax,torch,dev]"
.venv/bin/python -m pip check
