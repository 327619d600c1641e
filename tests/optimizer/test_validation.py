"""Bad input: clear errors naming the argument and the value."""

import math

import numpy as np
import pytest
import tensorflow as tf

from expectigrad_tf import Expectigrad


@pytest.mark.parametrize("kwargs,match", [
    (dict(learning_rate=0.0), r"learning_rate.*0\.0"),
    (dict(learning_rate=-1e-3), r"learning_rate.*-0\.001"),
    (dict(learning_rate=math.nan), r"learning_rate.*nan"),
    (dict(learning_rate=math.inf), r"learning_rate.*inf"),
    (dict(beta=1.0), r"beta.*1\.0"),
    (dict(beta=-0.1), r"beta.*-0\.1"),
    (dict(beta=math.nan), r"beta.*nan"),
    (dict(epsilon=0.0), r"epsilon.*0\.0"),
    (dict(epsilon=-1.0), r"epsilon.*-1\.0"),
    (dict(epsilon=math.inf), r"epsilon.*inf"),
    (dict(fused="yes"), r"fused.*'yes'"),
])
def test_invalid_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Expectigrad(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(beta="0.9"), dict(sparse_counter="yes"), dict(epsilon=None)])
def test_wrong_types(kwargs):
    with pytest.raises(TypeError, match=list(kwargs)[0]):
        Expectigrad(**kwargs)


def test_valid_edges():
    Expectigrad(beta=0.0)
    Expectigrad(beta=0.999999)
    Expectigrad(learning_rate=np.float32(1e-3))


@pytest.mark.parametrize("fused", [None, False])
def test_gradient_shape_mismatch_is_a_clear_error_and_state_is_untouched(fused):
    v = tf.Variable(np.ones((3, 2), np.float32))
    opt = Expectigrad(0.1, fused=fused)
    opt.build([v])
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match=r"shape|Shape|Incompatible"):
        opt.apply([tf.ones((2, 3))], [v])
    np.testing.assert_array_equal(v.numpy(), 1.0)
    for slot in opt._slots_for(v):
        np.testing.assert_array_equal(slot.numpy(), 0.0)
