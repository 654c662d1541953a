#!/usr/bin/env bash
# Sets up .venv and runs the test suite once per Keras backend.
# Extra arguments go to pytest (e.g. `bash tests/run.sh -m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash training/setup_venv.sh
for backend in ${KERASFORMER_BACKENDS:-tensorflow jax torch}; do
    echo "=== KERAS_BACKEND=$backend ==="
    KERAS_BACKEND="$backend" .venv/bin/python -m pytest -q -n 2 -p no:cacheprovider "$@" tests
done
