import numpy as np
from conftest import numpy

from kerasformer import causal_mask, padding_mask


def test_padding_mask_is_false_at_token_zero():
    mask = numpy(padding_mask(np.array([[4, 9, 0, 0], [1, 0, 0, 0]])))
    np.testing.assert_array_equal(mask, [[1, 1, 0, 0], [1, 0, 0, 0]])
    assert mask.dtype == bool


def test_causal_mask_is_lower_triangular():
    np.testing.assert_array_equal(numpy(causal_mask(4, 4)), np.tril(np.ones((4, 4), bool)))


def test_causal_mask_with_offset_lets_step_t_see_positions_up_to_t():
    # One query at step 2 over a cache of 5 positions: sees 0, 1, 2 only.
    np.testing.assert_array_equal(numpy(causal_mask(1, 5, 2)), [[1, 1, 1, 0, 0]])
