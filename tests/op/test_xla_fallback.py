"""An op without its XLA lowering (built against TensorFlow 2.16, whose
include dir has no XLA FFI headers): outside XLA the fused op runs; inside XLA
the optimizer takes its composite path, says why in dispatch_report(), and
gives the reference's answer; fused=True raises, naming the reason.

Runs everywhere: where the build has a lowering, its absence is simulated in
the op status the optimizer reads."""

import numpy as np
import pytest
import tensorflow as tf

from expectigrad_tf import Expectigrad, _ops
from expectigrad_tf.dispatch import FusedUnavailableError
from expectigrad_tf.reference import ExpectigradNumpy

pytestmark = pytest.mark.skipif(_ops.op_module() is None,
                                reason=f"fused op unavailable: {_ops.unavailable_reason()}")
WHY = "TensorFlow 2.16.2 ships no XLA FFI headers (simulated)"


@pytest.fixture
def no_lowering(monkeypatch):
    state = _ops._get()
    if state["xla_reason"] is None:
        monkeypatch.setitem(state, "xla_reason", WHY)
    return state["xla_reason"]


def _run(jit, fused=None, steps=5, beta=0.9, sparse_counter=True):
    rng = np.random.default_rng(3)
    x0 = [rng.standard_normal(s) for s in [(4, 3), (7,)]]
    variables = [tf.Variable(x, dtype=tf.float64) for x in x0]
    refs = [ExpectigradNumpy(x, lr=2.0 ** -7, beta=beta, sparse_counter=sparse_counter)
            for x in x0]
    opt = Expectigrad(learning_rate=2.0 ** -7, beta=beta, sparse_counter=sparse_counter,
                      fused=fused)
    opt.build(variables)

    @tf.function(jit_compile=jit)
    def step(gs):
        opt.apply(gs, variables)

    for _ in range(steps):
        gs = []
        for x in x0:
            g = rng.standard_normal(x.shape)
            g[rng.random(x.shape) < 0.3] = 0.0
            gs.append(g)
        step([tf.constant(g) for g in gs])
        for r, g in zip(refs, gs):
            r.step(g)
    return variables, refs, opt


@pytest.mark.parametrize("beta,sparse_counter", [(0.0, True), (0.9, True), (0.9, False)])
def test_inside_xla_the_composite_path_matches_the_reference(no_lowering, beta,
                                                             sparse_counter):
    variables, refs, opt = _run(True, beta=beta, sparse_counter=sparse_counter)
    report = opt.dispatch_report()
    assert {p for p, _ in report.values()} == {"composite-xla"}, report
    assert all(no_lowering in why for _, why in report.values()), report
    for v, r in zip(variables, refs):
        np.testing.assert_allclose(v.numpy(), r.x, rtol=1e-10, atol=1e-13)


def test_outside_xla_the_op_still_runs(no_lowering):
    variables, refs, opt = _run(False)
    assert {p for p, _ in opt.dispatch_report().values()} == {"fused"}
    for v, r in zip(variables, refs):
        np.testing.assert_allclose(v.numpy(), r.x, rtol=1e-10, atol=1e-13)


def test_fused_true_inside_xla_raises_naming_the_reason(no_lowering):
    # Raised while tracing; tf.function re-raises it wrapped (StagingError).
    with pytest.raises(Exception, match=r"fused=True.*XLA FFI headers") as info:
        _run(True, fused=True, steps=1)
    assert FusedUnavailableError.__name__ in str(info.value) or isinstance(
        info.value, FusedUnavailableError)
