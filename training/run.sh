#!/usr/bin/env bash
# The main job: set up .venv, train the `small` preset on the embedded
# English->Spanish corpus within a 12-minute budget, then score the test books
# with sacreBLEU, draw one sentence's cross-attention, and export the model for
# TensorFlow Serving to saved_models/kerasformer_en_es/<next version>/.
# Extra arguments go to kerasformer.training.train (e.g. --time-budget-minutes 5).
set -euo pipefail
cd "$(dirname "$0")/.."
bash training/setup_venv.sh
export KERAS_BACKEND="${KERAS_BACKEND:-tensorflow}"
RUN_DIR="${RUN_DIR:-runs/small-en-es}"
.venv/bin/python -m kerasformer.training.train --config training/configs/small_en_es.toml --run-dir "$RUN_DIR" "$@"
.venv/bin/python -m kerasformer.training.evaluate "$RUN_DIR" --split test --examples 5 \
    --attention "In the beginning, God created the heavens and the earth."
.venv/bin/python -m kerasformer.export.exporter "$RUN_DIR" --name kerasformer_en_es --base-dir saved_models
