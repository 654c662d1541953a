#!/usr/bin/env bash
# The main job: sets up .venv and builds the `small` model (training arrives with issue 4).
set -euo pipefail
cd "$(dirname "$0")/.."
bash training/setup_venv.sh
.venv/bin/python -m kerasformer small "$@"
