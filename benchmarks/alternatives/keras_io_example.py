"""The keras.io example's Transformer, for benchmarks/train_throughput.py: the model is
tests/keras_io_example.py (kept with the tests that check it, since tests never import
benchmarks); see its docstring for what is the example's and what was changed."""

import os
import sys

TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tests")
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

from keras_io_example import (  # noqa: E402, F401  (re-exported)
    PositionalEmbedding, TransformerDecoder, TransformerEncoder, build_keras_io_seq2seq, keras_io_loss,
)
