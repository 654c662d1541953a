"""benchmarks/train_throughput.py's `--model-only`: every model trained on the mean of its
logits, so the table gives the models' own ratio, without the loss all of them share."""

import numpy as np
from keras import ops

from benchmarks import train_throughput
from benchmarks.train_throughput import compiled, fixed_batch, parse_args, results_name
from kerasformer import TransformerConfig


def tiny():
    return TransformerConfig(source_vocab_size=20, target_vocab_size=24, d_model=8, num_heads=2, d_ff=16,
                             num_layers=1, dropout=0.0)


def test_model_only_trains_every_model_on_the_mean_of_its_logits():
    inputs, labels, _ = fixed_batch(batch=3, length=6, vocab_size=20)
    for name in ("ours", "keras.io example"):
        model = compiled(name, tiny(), jit_compile=False, model_only=True)
        outputs = model(inputs, training=False)  # with the padding mask Keras gives the loss, if any
        logits = ops.convert_to_numpy(outputs)
        loss = float(ops.convert_to_numpy(model.compute_loss(inputs, labels, outputs)))
        # The labels' values play no part. The keras.io example's logits carry its embedding's padding
        # mask (`mask_zero`), which Keras applies to any loss; ours carry none.
        per_token = logits.mean(axis=-1)
        expected = per_token.mean() if name == "ours" else per_token[labels != 0].mean()
        np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)
    real = compiled("ours", tiny(), jit_compile=False)
    assert real.loss is not train_throughput.mean_of_logits


def test_a_model_only_run_writes_results_of_its_own():
    assert results_name("train_throughput", parse_args([])) == "train_throughput"
    assert results_name("train_throughput_jax", parse_args(["--model-only"])) == "train_throughput_jax_model_only"


def test_a_merged_cell_keeps_the_date_and_machine_it_was_measured_on(tmp_path):
    import json

    from benchmarks.train_throughput import merged

    def cell(backend, jit, **extra):
        return {"backend": backend, "preset": "small", "jit_compile": jit, **extra}

    earlier = {"date": "2026-12-04 21:04 UTC", "machine": "AMD EPYC, 2 CPUs, 24 GiB", "cells": [
        cell("jax", True),  # measured in that run
        cell("torch", True, measured="2026-11-24 01:54 UTC", machine="older box"),  # merged into that run
        cell("torch", False, measured="2026-11-24 01:54 UTC"),  # merged before machines were kept
        cell("tensorflow", True),  # measured again now
    ]}
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps(earlier))
    now = cell("tensorflow", True, ms=1.0)
    skipped = cell("jax", True, skipped=True)  # a skipped cell replaces nothing
    kept = {(c["backend"], c["jit_compile"]): c for c in merged([now, skipped], str(path))}
    assert kept["jax", True] == cell("jax", True, measured=earlier["date"], machine=earlier["machine"])
    assert kept["torch", True]["measured"] == "2026-11-24 01:54 UTC" and kept["torch", True]["machine"] == "older box"
    assert "machine" not in kept["torch", False]  # not guessed
    assert kept["tensorflow", True] is now and len(kept) == 4
