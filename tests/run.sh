#!/usr/bin/env bash
# Sets up .venv (and headless Chromium, tests/install_browser.sh) and runs the test suite once
# per Keras backend. Tests marked
# backend_independent (the REST server, the corpus reader: nothing in them
# depends on KERAS_BACKEND) run in the first pass only.
# Extra arguments go to pytest (e.g. `bash tests/run.sh -m slow`). Each pass ends with its 25
# slowest tests (--durations), the figures to read before trimming the CI time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash training/setup_venv.sh
# The attention page's tests drive headless Chromium from the operating system's packages.
bash tests/install_browser.sh
# JAX compiles each new program shape in seconds; tests and the trainers they start in
# subprocesses compile the same tiny models again and again. One persistent compilation cache
# for the whole run (keyed by the program, the flags and the jaxlib version) compiles each once.
JAX_COMPILATION_CACHE_DIR="$(mktemp -d)"
export JAX_COMPILATION_CACHE_DIR
trap 'rm -rf "$JAX_COMPILATION_CACHE_DIR"' EXIT
first=1
for backend in ${KERASFORMER_BACKENDS:-tensorflow jax torch}; do
    echo "=== KERAS_BACKEND=$backend ==="
    select=()
    if [ "$first" = 0 ]; then select=(-m "not slow and not backend_independent"); fi
    KERAS_BACKEND="$backend" .venv/bin/python -m pytest -q -n 2 --dist loadfile -p no:cacheprovider --durations=25 "${select[@]}" "$@" tests
    first=0
done
