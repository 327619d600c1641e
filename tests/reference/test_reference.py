"""The optimizer against the independent NumPy reference (Algorithm 1)."""

import numpy as np
import pytest

from helpers import reference_trajectory, run_trajectory
from expectigrad_tf.reference import ExpectigradNumpy

VARIANTS = [(beta, sc) for beta in (0.0, 0.9) for sc in (True, False)]
# Keras keeps the learning rate in a float32 variable: use an exact value.
LR = 2.0**-7
X0 = np.linspace(-1.5, 2.0, 12).reshape(3, 4)


@pytest.mark.parametrize("fused", [None, False], ids=["fused", "composite"])
@pytest.mark.parametrize("problem", ["quadratic", "intermittent", "reddi"])
@pytest.mark.parametrize("beta,sparse_counter", VARIANTS)
def test_float64_trajectory_1000_steps(problem, beta, sparse_counter, fused):
    kw = dict(learning_rate=LR, beta=beta, epsilon=1e-8, sparse_counter=sparse_counter)
    x, opt = run_trajectory(problem, X0, 1000, dict(kw, fused=fused))
    ref = reference_trajectory(problem, X0, 1000, LR, beta, 1e-8, sparse_counter)
    np.testing.assert_allclose(x, ref.x, rtol=1e-10, atol=1e-12)
    s, n, m = opt._slots_for(opt._trainable_variables[0])
    np.testing.assert_allclose(s.numpy(), ref.s, rtol=1e-10)
    if sparse_counter:
        np.testing.assert_array_equal(n.numpy(), ref.n)
    else:
        assert n is None
    if beta > 0:
        np.testing.assert_allclose(m.numpy(), ref.m, rtol=1e-9, atol=1e-12)
    else:
        assert m is None
    expected_path = "composite" if fused is False else "fused"
    assert {p for p, _ in opt.dispatch_report().values()} == {expected_path}


def test_intermittent_problem_has_long_zero_stretches():
    # Guard that the problem exercises what it claims: a component stays at
    # exactly zero gradient for 400 steps, so its count stays 0 (0/0 := 0).
    ref = reference_trajectory("intermittent", X0, 300, 0.01, 0.9, 1e-8, True)
    assert ref.n.flat[0] == 0 and ref.s.flat[0] == 0
    assert np.all(np.isfinite(ref.x))
    assert (ref.n < 300).all() and (ref.n > 0).sum() > 1


def test_zero_gradient_never_counted_keeps_variable_fixed_without_momentum():
    x, opt = run_trajectory("intermittent", X0, 50, dict(learning_rate=0.1, beta=0.0))
    assert x.flat[0] == X0.flat[0]


def test_reference_first_step_by_hand():
    # t=1, g=2: s=4, n=1, u = 2/(eps+2), m = 0.1*u, x = 1 - lr/(0.1) * m = 1 - lr*u.
    ref = ExpectigradNumpy([1.0], lr=0.5, beta=0.9, eps=1e-8)
    ref.step([2.0])
    np.testing.assert_allclose(ref.x, [1.0 - 0.5 * 2.0 / (1e-8 + 2.0)], rtol=1e-15)


def test_float32_eager_matches_reference():
    kw = dict(learning_rate=0.01, beta=0.9, epsilon=1e-8)
    x, _ = run_trajectory("quadratic", X0, 100, kw, dtype="float32", use_function=False)
    ref = reference_trajectory("quadratic", X0.astype(np.float32), 100, 0.01, 0.9, 1e-8, True)
    np.testing.assert_allclose(x, ref.x, rtol=2e-5, atol=1e-6)
