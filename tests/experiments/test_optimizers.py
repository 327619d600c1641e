"""Tests of expectigrad_experiments.optimizers: Yogi against a NumPy reference
written from Zaheer et al. (2018), Algorithm 2, the make_optimizer factory
and the translation trainer's optimizers and schedule."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from expectigrad_experiments import optimizers
from expectigrad_experiments.optimizers import (AMSGradMaxCorrected, WarmupRsqrt, Yogi,
                                                make_optimizer, make_translation_optimizer)
from expectigrad_tf import Expectigrad

# Learning rates exactly representable in float32: Keras keeps the learning
# rate in a float32 variable, so 1e-3 would differ from the float64 reference
# by ~5e-8 (relative) before any arithmetic.
LR = 0.015625


class YogiNumpy:
    """Yogi, Algorithm 2 of Zaheer et al. (2018), in float64 NumPy.

    m_t = beta1 m_{t-1} + (1 - beta1) g_t
    v_t = v_{t-1} - (1 - beta2) sign(v_{t-1} - g_t^2) g_t^2
    x_t = x_{t-1} - lr m_t / (sqrt(v_t) + eps)
    Optionally Adam-style bias correction of m and v (not in Algorithm 2).
    """

    def __init__(self, x0, lr, beta1, beta2, eps, v0=0.0, bias_correction=False):
        self.x = np.array(x0, dtype=np.float64)
        self.m = np.zeros_like(self.x)
        self.v = np.full_like(self.x, v0)
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.bias_correction = bias_correction
        self.t = 0

    def step(self, g):
        g = np.asarray(g, dtype=np.float64)
        self.t += 1
        g2 = g * g
        self.m = self.beta1 * self.m + (1 - self.beta1) * g
        self.v = self.v - (1 - self.beta2) * np.sign(self.v - g2) * g2
        m, v = self.m, self.v
        if self.bias_correction:
            m = m / (1 - self.beta1 ** self.t)
            v = v / (1 - self.beta2 ** self.t)
        self.x = self.x - self.lr * m / (np.sqrt(v) + self.eps)
        return self.x


def _gradients(steps, shape, seed=0):
    """Gradients of varying scale, with exact zeros and spikes, so that
    v - g^2 changes sign in both directions."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(steps):
        g = rng.normal(size=shape) * rng.choice([0.1, 1.0, 5.0], size=shape)
        g[rng.random(shape) < 0.15] = 0.0
        if t % 7 == 3:
            g[0] = 30.0
        out.append(g)
    return out


def _run_keras(opt, x0, grads, dtype, jit=False):
    var = keras.Variable(np.asarray(x0, dtype=dtype), dtype=dtype)
    opt.build([var])

    @tf.function(jit_compile=jit)
    def step(g):
        opt.apply([g], [var])

    for g in grads:
        step(tf.constant(g, dtype=dtype))
    return var.numpy(), opt


@pytest.mark.parametrize("bias_correction", [False, True])
@pytest.mark.parametrize("v0", [0.0, 1e-6])
def test_yogi_matches_reference_float64(bias_correction, v0):
    x0 = np.linspace(-1.0, 1.0, 12).reshape(3, 4)
    grads = _gradients(40, x0.shape)
    kwargs = dict(beta_1=0.9, beta_2=0.99, epsilon=1e-3)
    opt = Yogi(learning_rate=LR, initial_accumulator_value=v0,
               bias_correction=bias_correction, **kwargs)
    x, opt = _run_keras(opt, x0, grads, "float64")
    ref = YogiNumpy(x0, LR, 0.9, 0.99, 1e-3, v0=v0, bias_correction=bias_correction)
    for g in grads:
        ref.step(g)
    np.testing.assert_allclose(x, ref.x, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(opt._momentums[0].numpy(), ref.m, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(opt._velocities[0].numpy(), ref.v, rtol=1e-12, atol=1e-14)
    assert np.all(opt._velocities[0].numpy() >= 0)
    assert int(opt.iterations.numpy()) == len(grads)


@pytest.mark.parametrize("jit", [False, True])
def test_yogi_matches_reference_float32(jit):
    x0 = np.linspace(-1.0, 1.0, 12).reshape(3, 4)
    grads = _gradients(25, x0.shape, seed=1)
    opt = Yogi(learning_rate=LR, beta_1=0.9, beta_2=0.999, epsilon=1e-8)
    x, _ = _run_keras(opt, x0, grads, "float32", jit=jit)
    ref = YogiNumpy(x0, LR, 0.9, 0.999, 1e-8)
    for g in grads:
        ref.step(g.astype(np.float32))
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, ref.x, rtol=1e-6, atol=1e-6)


def test_yogi_differs_from_adam_on_its_second_moment():
    # One small gradient after a large one: Adam's v decays multiplicatively,
    # Yogi's only by (1 - beta2) * g^2.
    ref = YogiNumpy([0.0], 0.1, 0.0, 0.9, 0.0)
    ref.step([10.0])
    assert ref.v[0] == pytest.approx(0.1 * 100.0)
    ref.step([1.0])
    assert ref.v[0] == pytest.approx(10.0 - 0.1 * 1.0)  # Adam: 0.9 * 10 + 0.1 = 9.1


def test_yogi_serialization_roundtrip():
    opt = Yogi(learning_rate=0.01, beta_1=0.8, beta_2=0.95, epsilon=1e-4,
               initial_accumulator_value=1e-6, bias_correction=True)
    config = keras.optimizers.serialize(opt)
    assert config["registered_name"] == "expectigrad_baselines>Yogi"
    clone = keras.optimizers.deserialize(config)
    assert isinstance(clone, Yogi)
    for key in ("beta_1", "beta_2", "epsilon", "initial_accumulator_value", "bias_correction"):
        assert getattr(clone, key) == getattr(opt, key)
    assert float(clone.learning_rate) == pytest.approx(0.01)


def test_yogi_trains_a_keras_model():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5]], dtype="float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=Yogi(learning_rate=0.1), loss="mse")
    first = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=30, batch_size=16, verbose=0)
    assert model.evaluate(x, y, verbose=0) < 0.1 * first


@pytest.mark.parametrize("kwargs", [
    {"beta_1": 1.0}, {"beta_2": -0.1}, {"epsilon": -1.0}, {"initial_accumulator_value": -1.0},
])
def test_yogi_rejects_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError):
        Yogi(**kwargs)


def test_amsgrad_max_corrected_matches_reference():
    x0 = np.array([0.5, -0.25, 2.0])
    grads = _gradients(30, x0.shape, seed=2)
    x, _ = _run_keras(AMSGradMaxCorrected(LR, 0.9, 0.99, 1e-8), x0, grads, "float64")
    xr, m, v, vhat = x0.copy(), np.zeros(3), np.zeros(3), np.zeros(3)
    for t, g in enumerate(grads, start=1):
        m = 0.9 * m + 0.1 * g
        v = 0.99 * v + 0.01 * g * g
        vhat = np.maximum(vhat, v / (1 - 0.99 ** t))
        xr = xr - LR * (m / (1 - 0.9 ** t)) / (np.sqrt(vhat) + 1e-8)
    np.testing.assert_allclose(x, xr, rtol=1e-12, atol=1e-14)


EXPECTED_TYPES = {
    "expectigrad": Expectigrad,
    "adam": keras.optimizers.Adam,
    "amsgrad": keras.optimizers.Adam,
    "rmsprop": keras.optimizers.RMSprop,
    "adadelta": keras.optimizers.Adadelta,
    "yogi": Yogi,
    "sgd": keras.optimizers.SGD,
    "amsgrad_max_corrected": AMSGradMaxCorrected,
    "adagrad": keras.optimizers.Adagrad,
    "adafactor": keras.optimizers.Adafactor,
}


def test_factory_covers_all_names():
    assert set(optimizers.OPTIMIZER_NAMES) == set(EXPECTED_TYPES)
    assert set(optimizers.OPTIMIZER_HYPERPARAMETERS) == set(EXPECTED_TYPES)
    assert set(optimizers.TRANSLATION_OPTIMIZERS) <= set(EXPECTED_TYPES)


@pytest.mark.parametrize("name", sorted(EXPECTED_TYPES))
def test_make_optimizer_builds_and_steps(name):
    opt = make_optimizer(name, lr=0.03125, beta1=0.8, beta2=0.95, epsilon=1e-6)
    assert type(opt) is EXPECTED_TYPES[name]
    assert float(opt.learning_rate) == pytest.approx(0.03125)
    var = keras.Variable(np.array([1.0, -2.0], dtype="float32"))
    opt.build([var])
    opt.apply([tf.constant([0.5, -0.5])], [var])
    assert int(opt.iterations.numpy()) == 1
    moved = var.numpy() - np.array([1.0, -2.0])
    # Every method steps against the gradient's sign.
    assert moved[0] < 0 < moved[1]


def test_make_optimizer_hyperparameter_mapping():
    kw = dict(lr=0.01, beta1=0.8, beta2=0.95, epsilon=1e-6)
    e = make_optimizer("Expectigrad", **kw)
    assert (e.beta, e.epsilon) == (0.8, 1e-6)
    for name, ams in (("adam", False), ("amsgrad", True)):
        a = make_optimizer(name, **kw)
        assert (a.beta_1, a.beta_2, a.epsilon, a.amsgrad) == (0.8, 0.95, 1e-6, ams)
    r = make_optimizer("rmsprop", **kw)
    assert (r.rho, r.momentum, r.epsilon, r.centered) == (0.95, 0.0, 1e-6, False)
    d = make_optimizer("adadelta", **kw)
    assert (d.rho, d.epsilon) == (0.95, 1e-6)
    y = make_optimizer("yogi", **kw)
    assert (y.beta_1, y.beta_2, y.epsilon, y.bias_correction, y.initial_accumulator_value) == (
        0.8, 0.95, 1e-6, False, 0.0)
    s = make_optimizer("sgd", **kw)
    assert s.momentum == 0.0
    g = make_optimizer("adagrad", **kw)
    assert g.epsilon == 1e-6
    f = make_optimizer("adafactor", **kw)
    assert f.beta_2_decay == keras.optimizers.Adafactor().beta_2_decay  # Keras' defaults
    # Extra keyword arguments reach the constructor.
    assert make_optimizer("expectigrad", fused=False, **kw).fused is False


def test_make_optimizer_unknown_name():
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("adamw", 1e-3, 0.9, 0.999, 1e-8)


def test_translation_optimizers():
    kw = dict(beta1=0.8, beta2=0.95, epsilon=1e-6)
    for name in optimizers.TRANSLATION_OPTIMIZERS:
        opt = make_translation_optimizer(name, 0.03125, **kw)
        assert type(opt) is EXPECTED_TYPES[name], name
        assert float(opt.learning_rate) == pytest.approx(0.03125)
        assert opt.global_clipnorm is None
        assert optimizers.describe(name)
    y = make_translation_optimizer("yogi", 0.01, **kw)
    assert (y.beta_1, y.beta_2, y.epsilon) == (0.8, 0.95, 1e-6)
    a = make_translation_optimizer("AMSGrad", 0.01, **kw)
    assert a.amsgrad and a.beta_1 == 0.8
    clipped = make_translation_optimizer("adam", 0.01, clip_norm=2.0)
    assert clipped.global_clipnorm == 2.0
    sched = make_translation_optimizer("expectigrad", 0.01, schedule="warmup_rsqrt",
                                       warmup_steps=10)
    assert isinstance(sched._learning_rate, WarmupRsqrt)
    assert sched._learning_rate.get_config() == {"lr": 0.01, "warmup_steps": 10}
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_translation_optimizer("rmsprop", 0.01)  # not offered by the trainer
