"""A step that fails its checks (a bad learning rate) changes nothing, also
where Keras itself writes during the step: weight decay, EMA (average and
overwrite) and gradient accumulators. On every dense path, outside XLA (the
step raises) and inside it (the composite path skips the step; the fused op's
CPU custom call raises), the state afterwards equals the state before, and the
run goes on exactly as if the bad step had never been tried."""

import math

import numpy as np
import pytest
import tensorflow as tf

from expectigrad_tf import Expectigrad, _ops

from test_hardening import ON_GPU, XLA_LOWERING, _Sched  # noqa: E402 (tests/optimizer on sys.path)

HAS_OP = _ops.op_module() is not None
X0 = np.array([[1.0, -2.0, 3.0], [0.5, 0.0, -1.5]])
FEATURES = {
    "weight_decay": dict(weight_decay=0.1),
    "ema": dict(use_ema=True, ema_momentum=0.5, ema_overwrite_frequency=2),
    "accumulation": dict(gradient_accumulation_steps=2),
}
PATHS = {"fused": (None, False), "composite": (False, False),
         "fused-xla": (None, True), "composite-xla": (False, True)}


def _grad(k):
    return tf.constant(np.cos(X0 * (k + 1)) + 0.1 * k, tf.float64)


def _run(feature, path, good_before, bad):
    fused, jit = PATHS[path]
    if fused is None and not HAS_OP:
        pytest.skip(f"fused op unavailable: {_ops.unavailable_reason()}")
    v = tf.Variable(X0)
    lr_var = tf.Variable(2.0 ** -4, dtype=tf.float32)
    opt = Expectigrad(_Sched(lr_var), fused=fused, **FEATURES[feature])
    opt.build([v])
    step = tf.function(lambda g: opt.apply([g], [v]), jit_compile=jit)
    for k in range(good_before):
        step(_grad(k))
    if bad:
        before = [v.numpy().copy()] + [np.array(x.numpy()) for x in opt.variables]
        lr_var.assign(math.nan)
        # Inside XLA only the fused op's CPU custom call can raise; it does not
        # run on an accumulation step that only adds to the accumulators.
        accumulating = feature == "accumulation" and (good_before + 1) % 2 != 0
        if jit and (fused is False or ON_GPU or accumulating or not XLA_LOWERING):
            step(_grad(99))  # skipped inside XLA (documented)
        else:
            with pytest.raises(tf.errors.InvalidArgumentError, match="must be finite"):
                step(_grad(99))
        after = [v.numpy()] + [np.array(x.numpy()) for x in opt.variables]
        for a, b in zip(before, after):
            np.testing.assert_array_equal(a, b)
        lr_var.assign(2.0 ** -4)
    for k in range(good_before, good_before + 3):
        step(_grad(k))
    return [v.numpy()] + [np.array(x.numpy()) for x in opt.variables]


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("feature", list(FEATURES))
@pytest.mark.parametrize("good_before", [1, 2])  # both accumulation branches
def test_failed_step_changes_nothing_keras_writes_included(feature, path, good_before):
    tried = _run(feature, path, good_before, bad=True)
    clean = _run(feature, path, good_before, bad=False)
    for a, b in zip(tried, clean):
        np.testing.assert_array_equal(a, b)
