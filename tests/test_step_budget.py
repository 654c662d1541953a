"""benchmarks/step_budget.py's count of a training step's floating-point work, held against
XLA's own count of our model's forward pass (JAX's `cost_analysis`, in a subprocess under
KERAS_BACKEND=jax whatever backend this pass runs)."""

import json
import os
import subprocess
import sys

import pytest

from benchmarks.step_budget import step_flops
from kerasformer import TransformerConfig

pytestmark = pytest.mark.backend_independent

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
XLA_COUNT = """
import json, sys
import jax
from benchmarks.train_throughput import build, fixed_batch
from kerasformer import TransformerConfig
config = TransformerConfig(**json.loads(sys.argv[1]))
inputs, _, _ = fixed_batch(4, 16, config.source_vocab_size)
model = build("ours", config)
model(inputs)
trainable = [v.value for v in model.trainable_variables]
others = [v.value for v in model.non_trainable_variables]
forward = lambda variables, x: model.stateless_call(variables, others, x, training=False)[0]
cost = jax.jit(forward).lower(trainable, inputs).compile().cost_analysis()
print(json.dumps((cost[0] if isinstance(cost, list) else cost)["flops"]))
"""


def test_the_counted_work_is_xlas_count_of_the_matrix_products():
    sizes = dict(source_vocab_size=500, target_vocab_size=600, d_model=64, num_heads=4, d_ff=256, num_layers=2,
                 dropout=0.0)
    total, parts = step_flops(TransformerConfig(**sizes), batch=4, source_length=16, target_length=16)
    forward = 2 * sum(parts.values())
    assert total == 3 * forward
    out = subprocess.run([sys.executable, "-c", XLA_COUNT, json.dumps(sizes)], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "KERAS_BACKEND": "jax"}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    xla = json.loads(out.stdout.strip().splitlines()[-1])
    # XLA counts the element-wise work too (softmax, LayerNorm, the scaling): a few per cent more.
    assert forward <= xla <= 1.06 * forward, (xla, forward)
