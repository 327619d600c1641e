"""Every base-optimizer keyword acts as Keras documents it, on both the fused
and the composite path, checked against the NumPy reference."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from expectigrad_tf import Expectigrad
from expectigrad_tf.reference import ExpectigradNumpy

LR = 2.0**-6  # exact in float32 (Keras keeps the learning rate in float32)
PATHS = pytest.mark.parametrize("fused", [None, False], ids=["fused", "composite"])


def _grads(steps, shape=(3, 4), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) * (1 + t) for t in range(steps)]


def _run(opt, x0, grads, function=True):
    var = tf.Variable(np.array(x0, np.float64))
    step = lambda g: opt.apply([g], [var])  # noqa: E731
    if function:
        step = tf.function(step)
    for g in grads:
        step(tf.constant(g))
    return var


X0 = np.linspace(-1, 1, 12).reshape(3, 4)


@PATHS
def test_clipnorm_equals_step_on_normalised_gradient(fused):
    # Several steps of different norms: Expectigrad is scale-invariant on a
    # single step, so one step alone would hardly tell clipping apart.
    gs = [g * 5 for g in _grads(3)]
    unit = [g / np.linalg.norm(g) for g in gs]
    a = _run(Expectigrad(LR, clipnorm=1.0, fused=fused), X0, gs)
    b = _run(Expectigrad(LR, fused=fused), X0, unit)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12)
    ref = ExpectigradNumpy(X0, lr=LR)
    for g in unit:
        ref.step(g)
    np.testing.assert_allclose(a.numpy(), ref.x, rtol=1e-12)
    assert not np.allclose(a.numpy(), _run(Expectigrad(LR, fused=fused), X0, gs).numpy(), rtol=1e-6)


@PATHS
def test_clipvalue_and_global_clipnorm(fused):
    gs = _grads(3)
    a = _run(Expectigrad(LR, clipvalue=0.5, fused=fused), X0, gs)
    b = _run(Expectigrad(LR, fused=fused), X0, [np.clip(g, -0.5, 0.5) for g in gs])
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12)
    a = _run(Expectigrad(LR, global_clipnorm=2.0, fused=fused), X0, gs)
    b = _run(Expectigrad(LR, fused=fused), X0, [g * min(1.0, 2.0 / np.linalg.norm(g)) for g in gs])
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12)


@PATHS
def test_weight_decay_is_decoupled_before_the_step(fused):
    gs = _grads(4)
    var = _run(Expectigrad(LR, weight_decay=0.5, fused=fused), X0, gs)
    ref = ExpectigradNumpy(X0, lr=LR)
    for g in gs:
        ref.x = ref.x - ref.x * 0.5 * LR
        ref.step(g)
    np.testing.assert_allclose(var.numpy(), ref.x, rtol=1e-12)


class _LinearSchedule(keras.optimizers.schedules.LearningRateSchedule):
    def __call__(self, step):
        return LR * (1.0 + tf.cast(step, tf.float32))

    def get_config(self):
        return {}


@PATHS
def test_schedule_is_evaluated_at_the_step_before_the_update(fused):
    gs = _grads(5)
    var = _run(Expectigrad(_LinearSchedule(), fused=fused), X0, gs)
    ref = ExpectigradNumpy(X0)
    for t, g in enumerate(gs, start=1):
        ref.step(g, lr=LR * t)  # Keras evaluates the schedule at iterations = t - 1
    np.testing.assert_allclose(var.numpy(), ref.x, rtol=1e-12)


@PATHS
def test_callable_learning_rate(fused):
    gs = _grads(3)
    a = _run(Expectigrad(lambda: LR, fused=fused), X0, gs, function=False)
    b = _run(Expectigrad(LR, fused=fused), X0, gs, function=False)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12)


@PATHS
def test_loss_scale_factor_unscales_gradients(fused):
    gs = _grads(3)
    a = _run(Expectigrad(LR, loss_scale_factor=8.0, fused=fused), X0, [g * 8 for g in gs])
    b = _run(Expectigrad(LR, fused=fused), X0, gs)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12)


def _opt(cls, fused, **kw):
    if cls is Expectigrad:
        return Expectigrad(LR, fused=fused, **kw)
    return keras.optimizers.Adam(LR, **kw)


@pytest.mark.parametrize("cls,fused", [(Expectigrad, None), (Expectigrad, False),
                                       (keras.optimizers.Adam, None)],
                         ids=["expectigrad-fused", "expectigrad-composite", "adam"])
def test_gradient_accumulation_as_keras_documents(cls, fused):
    gs = _grads(4)
    acc = _opt(cls, fused, gradient_accumulation_steps=2)
    var = tf.Variable(X0.copy())
    acc.apply([tf.constant(gs[0])], [var])
    np.testing.assert_array_equal(var.numpy(), X0)  # no update on step 1
    acc.apply([tf.constant(gs[1])], [var])
    acc.apply([tf.constant(gs[2])], [var])
    acc.apply([tf.constant(gs[3])], [var])
    plain = _run(_opt(cls, fused), X0, [(gs[0] + gs[1]) / 2, (gs[2] + gs[3]) / 2])
    np.testing.assert_allclose(var.numpy(), plain.numpy(), rtol=1e-12)
    if cls is Expectigrad:
        ref = ExpectigradNumpy(X0, lr=LR)
        ref.step((gs[0] + gs[1]) / 2)
        ref.step((gs[2] + gs[3]) / 2)
        np.testing.assert_allclose(var.numpy(), ref.x, rtol=1e-12)


@pytest.mark.parametrize("cls,fused", [(Expectigrad, None), (Expectigrad, False),
                                       (keras.optimizers.Adam, None)],
                         ids=["expectigrad-fused", "expectigrad-composite", "adam"])
def test_ema_as_keras_documents(cls, fused):
    gs = _grads(5)
    opt = _opt(cls, fused, use_ema=True, ema_momentum=0.75)
    var = tf.Variable(X0.copy())
    avg = None
    for g in gs:
        opt.apply([tf.constant(g)], [var])
        avg = var.numpy().copy() if avg is None else 0.75 * avg + 0.25 * var.numpy()
    np.testing.assert_allclose(opt._model_variables_moving_average[0].numpy(), avg, rtol=1e-12)
    opt.finalize_variable_values([var])
    np.testing.assert_allclose(var.numpy(), avg, rtol=1e-12)


@PATHS
def test_ema_overwrite_frequency(fused):
    opt = Expectigrad(LR, use_ema=True, ema_momentum=0.5, ema_overwrite_frequency=2, fused=fused)
    var = tf.Variable(X0.copy())
    for g in _grads(2):
        opt.apply([tf.constant(g)], [var])
    np.testing.assert_allclose(var.numpy(), opt._model_variables_moving_average[0].numpy(), rtol=1e-12)


def test_none_gradients_are_skipped():
    a, b = tf.Variable([1.0, 2.0]), tf.Variable([3.0])
    opt = Expectigrad(0.1)
    with pytest.warns(UserWarning, match="Gradients do not exist"):
        opt.apply([tf.constant([1.0, -1.0]), None], [a, b])
    assert b.numpy()[0] == 3.0 and a.numpy()[0] < 1.0
