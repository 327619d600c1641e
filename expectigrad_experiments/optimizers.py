"""The optimizers of the experiments: one factory for all of them.

* ``make_optimizer(name, lr, beta1, beta2, epsilon)``: builds Expectigrad,
  Adam, AMSGrad, RMSProp, Adadelta, AdaGrad, Yogi, SGD, Adafactor or the
  AMSGrad probe below with the *same* hyperparameters wherever an optimizer
  has a counterpart of them (see ``OPTIMIZER_HYPERPARAMETERS`` for the exact
  mapping). ``reddi``, ``train_image`` and the translation trainer use it.
* ``Yogi``: a small Keras 3 optimizer written from Zaheer et al. (2018),
  "Adaptive Methods for Nonconvex Optimization", Algorithm 2 (YOGI). Keras
  has no Yogi of its own.
* ``AMSGradMaxCorrected``: a non-standard AMSGrad (max over the bias-corrected
  second moment), only as a probe of how the paper's Figure 1 may have been
  produced; "amsgrad" is Keras' standard AMSGrad.
* ``WarmupRsqrt`` and ``make_translation_optimizer``: the optional
  learning-rate schedule and gradient clipping of the translation runs, and
  the optimizers offered there (``TRANSLATION_OPTIMIZERS``).
"""

import keras
from keras import ops

from expectigrad_tf import Expectigrad

__all__ = [
    "Yogi", "AMSGradMaxCorrected", "WarmupRsqrt", "make_optimizer", "make_translation_optimizer",
    "describe", "OPTIMIZER_NAMES", "OPTIMIZER_HYPERPARAMETERS", "TRANSLATION_OPTIMIZERS",
]


@keras.saving.register_keras_serializable(package="expectigrad_baselines", name="Yogi")
class Yogi(keras.optimizers.Optimizer):
    """Yogi (Zaheer, Reddi, Sachan, Kale & Kumar, NeurIPS 2018, Algorithm 2).

    For each step ``t = 1, 2, ...`` and element, with ``m_0 = 0`` and
    ``v_0 = initial_accumulator_value`` (0 in Algorithm 2)::

        m_t = beta_1 * m_{t-1} + (1 - beta_1) * g_t
        v_t = v_{t-1} - (1 - beta_2) * sign(v_{t-1} - g_t**2) * g_t**2
        x_t = x_{t-1} - learning_rate * m_t / (sqrt(v_t) + epsilon)

    The momentum ``m`` is Adam's first moment; only the second-moment update
    differs from Adam's: ``v`` moves in the direction of ``g**2`` by
    ``(1 - beta_2) * g**2`` per step, instead of Adam's
    ``(1 - beta_2) * (g**2 - v)``, so a rare large gradient raises ``v`` by
    a bounded amount and ``v`` then decays only additively. Since ``v_{t-1} >= 0`` and
    ``(1 - beta_2) g**2 < g**2``, ``v`` never becomes negative.

    Bias correction: Algorithm 2 of the Yogi paper has **none**, so the
    default is ``bias_correction=False`` (faithful to the paper). With
    ``bias_correction=True`` the step uses Adam's corrected moments,
    ``x_t = x_{t-1} - learning_rate * m_hat / (sqrt(v_hat) + epsilon)`` with
    ``m_hat = m_t / (1 - beta_1**t)`` and ``v_hat = v_t / (1 - beta_2**t)``,
    as several popular implementations do; it only changes the first few
    hundred / thousand steps (``v`` is not an EMA, so the correction is a heuristic).

    Defaults are the values Zaheer et al. recommend:
    ``learning_rate=1e-2, beta_1=0.9, beta_2=0.999, epsilon=1e-3``.

    Args:
        learning_rate: float > 0, a `LearningRateSchedule` or a callable.
        beta_1: momentum constant in [0, 1).
        beta_2: second-moment constant in [0, 1).
        epsilon: denominator constant >= 0.
        initial_accumulator_value: ``v_0`` >= 0 (0 in Algorithm 2).
        bias_correction: see above; False (Algorithm 2) by default.
    """

    def __init__(
        self,
        learning_rate=1e-2,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-3,
        initial_accumulator_value=0.0,
        bias_correction=False,
        weight_decay=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name="yogi",
        **kwargs,
    ):
        for key, value, low, high in (
            ("beta_1", beta_1, 0.0, 1.0),
            ("beta_2", beta_2, 0.0, 1.0),
        ):
            if not low <= float(value) < high:
                raise ValueError(f"Yogi: `{key}` must be in [0, 1), got {value!r}")
        if float(epsilon) < 0:
            raise ValueError(f"Yogi: `epsilon` must be >= 0, got {epsilon!r}")
        if float(initial_accumulator_value) < 0:
            raise ValueError(
                "Yogi: `initial_accumulator_value` must be >= 0, "
                f"got {initial_accumulator_value!r}"
            )
        super().__init__(
            learning_rate=learning_rate,
            name=name,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            **kwargs,
        )
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)
        self.initial_accumulator_value = float(initial_accumulator_value)
        self.bias_correction = bool(bias_correction)

    def build(self, var_list):
        """Creates the slots ``momentum`` (m) and ``velocity`` (v)."""
        if self.built:
            return
        super().build(var_list)
        self._momentums, self._velocities = [], []
        for var in var_list:
            self._momentums.append(self.add_variable_from_reference(var, name="momentum"))
            v = self.add_variable_from_reference(var, name="velocity")
            if self.initial_accumulator_value:
                # Assigned in the variable's dtype (keras' Constant initializer
                # would round the value to float32 first).
                v.assign(ops.full(v.shape, self.initial_accumulator_value, dtype=v.dtype))
            self._velocities.append(v)

    def update_step(self, gradient, variable, learning_rate):
        """One Yogi step for one variable (sparse gradients are densified)."""
        dtype = variable.dtype
        const = lambda value: ops.convert_to_tensor(value, dtype=dtype)  # noqa: E731
        lr = ops.cast(learning_rate, dtype)
        g = ops.cast(gradient, dtype)
        i = self._get_variable_index(variable)
        m_var, v_var = self._momentums[i], self._velocities[i]

        g2 = ops.square(g)
        m = const(self.beta_1) * m_var + const(1.0 - self.beta_1) * g
        v = v_var - const(1.0 - self.beta_2) * ops.sign(v_var - g2) * g2
        self.assign(m_var, m)
        self.assign(v_var, v)

        eps = const(self.epsilon)
        if self.bias_correction:
            step = ops.cast(self.iterations + 1, dtype)
            m = m / (const(1.0) - ops.power(const(self.beta_1), step))
            v = v / (const(1.0) - ops.power(const(self.beta_2), step))
        self.assign_sub(variable, lr * m / (ops.sqrt(v) + eps))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "beta_1": self.beta_1,
                "beta_2": self.beta_2,
                "epsilon": self.epsilon,
                "initial_accumulator_value": self.initial_accumulator_value,
                "bias_correction": self.bias_correction,
            }
        )
        return config


@keras.saving.register_keras_serializable(
    package="expectigrad_baselines", name="AMSGradMaxCorrected"
)
class AMSGradMaxCorrected(keras.optimizers.Optimizer):
    """AMSGrad variant that takes the maximum of the *bias-corrected* v.

    Not a standard implementation: a probe for a hypothesis about the
    Expectigrad paper's Figure 1 (see docs/RESULTS.md). Reddi et al.'s
    AMSGrad (Algorithm 2 of "On the convergence of Adam and beyond") keeps
    ``v_hat_t = max(v_hat_{t-1}, v_t)`` of the raw EMA, and so do Keras and
    PyTorch (then scaling the step by Adam's bias correction). Here::

        m_t = beta_1 m_{t-1} + (1 - beta_1) g_t
        v_t = beta_2 v_{t-1} + (1 - beta_2) g_t**2
        v_hat_t = max(v_hat_{t-1}, v_t / (1 - beta_2**t))
        x_t = x_{t-1} - lr * (m_t / (1 - beta_1**t)) / (sqrt(v_hat_t) + epsilon)

    so a large first gradient (``v_1 / (1 - beta_2) = g_1**2``) is remembered
    at full size forever.
    """

    def __init__(self, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 name="amsgrad_max_corrected", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._momentums = [self.add_variable_from_reference(v, name="momentum") for v in var_list]
        self._velocities = [self.add_variable_from_reference(v, name="velocity") for v in var_list]
        self._velocity_hats = [
            self.add_variable_from_reference(v, name="velocity_hat") for v in var_list
        ]

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        const = lambda value: ops.convert_to_tensor(value, dtype=dtype)  # noqa: E731
        lr = ops.cast(learning_rate, dtype)
        g = ops.cast(gradient, dtype)
        step = ops.cast(self.iterations + 1, dtype)
        i = self._get_variable_index(variable)
        m = const(self.beta_1) * self._momentums[i] + const(1.0 - self.beta_1) * g
        v = const(self.beta_2) * self._velocities[i] + const(1.0 - self.beta_2) * ops.square(g)
        v_hat = ops.maximum(
            self._velocity_hats[i], v / (const(1.0) - ops.power(const(self.beta_2), step))
        )
        self.assign(self._momentums[i], m)
        self.assign(self._velocities[i], v)
        self.assign(self._velocity_hats[i], v_hat)
        m_hat = m / (const(1.0) - ops.power(const(self.beta_1), step))
        self.assign_sub(variable, lr * m_hat / (ops.sqrt(v_hat) + const(self.epsilon)))

    def get_config(self):
        config = super().get_config()
        config.update({"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon})
        return config


OPTIMIZER_NAMES = (
    "expectigrad", "adam", "rmsprop", "adadelta", "amsgrad", "yogi", "sgd",
    "amsgrad_max_corrected", "adagrad", "adafactor",
)

# How the shared hyperparameters (lr, beta1, beta2, epsilon) map onto each
# optimizer. Documented here and written into the experiments' summaries.
OPTIMIZER_HYPERPARAMETERS = {
    "expectigrad": "Expectigrad(learning_rate=lr, beta=beta1, epsilon=epsilon); beta2 unused",
    "adam": "keras Adam(learning_rate=lr, beta_1=beta1, beta_2=beta2, epsilon=epsilon)",
    "amsgrad": "keras Adam(..., amsgrad=True): max over the uncorrected v, Adam's bias correction",
    "rmsprop": "keras RMSprop(learning_rate=lr, rho=beta2, momentum=0, epsilon=epsilon); beta1 unused",
    "adadelta": "keras Adadelta(learning_rate=lr, rho=beta2, epsilon=epsilon); beta1 unused",
    "yogi": "Yogi(learning_rate=lr, beta_1=beta1, beta_2=beta2, epsilon=epsilon), Algorithm 2: "
    "v_0=0, no bias correction",
    "sgd": "keras SGD(learning_rate=lr, momentum=0); betas and epsilon unused",
    "amsgrad_max_corrected": "AMSGradMaxCorrected(lr, beta1, beta2, epsilon): NOT standard AMSGrad, "
    "max over the bias-corrected v (a probe, see docs/RESULTS.md)",
    "adagrad": "keras Adagrad(learning_rate=lr, epsilon=epsilon); betas unused",
    "adafactor": "keras Adafactor(learning_rate=lr), other arguments default (no momentum); "
    "betas and epsilon unused",
}


def make_optimizer(name, lr=1e-3, beta1=0.9, beta2=0.999, epsilon=1e-8, **kwargs):
    """Builds optimizer ``name`` with the shared hyperparameters.

    ``name`` is one of ``OPTIMIZER_NAMES`` (case-insensitive). The EMA
    constant of RMSProp (``rho``) and Adadelta (``rho``) is ``beta2``, as it
    is their counterpart of Adam's second-moment constant; RMSProp runs
    without momentum (Tieleman & Hinton's RMSProp has none) and SGD is plain
    SGD. AdaGrad and Adafactor are Keras' (Adafactor with its own defaults).
    Extra keyword arguments go to the optimizer's constructor.
    """
    key = str(name).lower()
    if key == "expectigrad":
        return Expectigrad(learning_rate=lr, beta=beta1, epsilon=epsilon, **kwargs)
    if key in ("adam", "amsgrad"):
        return keras.optimizers.Adam(
            learning_rate=lr,
            beta_1=beta1,
            beta_2=beta2,
            epsilon=epsilon,
            amsgrad=(key == "amsgrad"),
            name=key,
            **kwargs,
        )
    if key == "rmsprop":
        return keras.optimizers.RMSprop(
            learning_rate=lr, rho=beta2, momentum=0.0, epsilon=epsilon, **kwargs
        )
    if key == "adadelta":
        return keras.optimizers.Adadelta(learning_rate=lr, rho=beta2, epsilon=epsilon, **kwargs)
    if key == "yogi":
        return Yogi(learning_rate=lr, beta_1=beta1, beta_2=beta2, epsilon=epsilon, **kwargs)
    if key == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=0.0, **kwargs)
    if key == "amsgrad_max_corrected":
        return AMSGradMaxCorrected(
            learning_rate=lr, beta_1=beta1, beta_2=beta2, epsilon=epsilon, **kwargs
        )
    if key == "adagrad":
        return keras.optimizers.Adagrad(learning_rate=lr, epsilon=epsilon, **kwargs)
    if key == "adafactor":
        return keras.optimizers.Adafactor(learning_rate=lr, **kwargs)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZER_NAMES)}")


# ------------------------------------------------------------- translation
TRANSLATION_OPTIMIZERS = ("expectigrad", "adam", "amsgrad", "yogi", "adafactor")


@keras.saving.register_keras_serializable(package="expectigrad_translate", name="WarmupRsqrt")
class WarmupRsqrt(keras.optimizers.schedules.LearningRateSchedule):
    """``lr * min(1, step / warmup) * sqrt(warmup / max(step, warmup))``.

    Linear warm-up to ``lr`` over ``warmup_steps``, then decay proportional to
    ``1 / sqrt(step)`` (the shape of tensor2tensor's
    ``linear_warmup * rsqrt_decay``), with the peak equal to ``lr``.
    """

    def __init__(self, lr, warmup_steps):
        self.lr = float(lr)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        step = ops.cast(step, "float32") + 1.0
        warm = float(max(self.warmup_steps, 1))
        return self.lr * ops.minimum(1.0, step / warm) * ops.sqrt(warm / ops.maximum(step, warm))

    def get_config(self):
        return {"lr": self.lr, "warmup_steps": self.warmup_steps}


def make_translation_optimizer(name, lr, beta1=0.9, beta2=0.999, epsilon=1e-8, schedule="none",
                               warmup_steps=4000, clip_norm=0.0):
    """The translation trainer's optimizer ``name`` (one of
    ``TRANSLATION_OPTIMIZERS``): ``make_optimizer`` with the learning rate
    ``lr`` or, with ``schedule="warmup_rsqrt"``, ``WarmupRsqrt(lr,
    warmup_steps)``, and ``global_clipnorm=clip_norm`` when ``clip_norm``.

    expectigrad: Expectigrad(lr, beta=beta1, epsilon); beta2 unused.
    adam / amsgrad: keras Adam(lr, beta1, beta2, epsilon[, amsgrad=True]).
    yogi: this module's Yogi(lr, beta1, beta2, epsilon) (Algorithm 2).
    adafactor: keras Adafactor(lr) with its defaults (no momentum); betas and
    epsilon unused.
    """
    key = name.lower()
    if key not in TRANSLATION_OPTIMIZERS:
        raise ValueError(
            f"unknown optimizer {name!r}; expected one of {', '.join(TRANSLATION_OPTIMIZERS)}")
    rate = WarmupRsqrt(lr, warmup_steps) if schedule == "warmup_rsqrt" else lr
    extra = {"global_clipnorm": clip_norm} if clip_norm else {}
    return make_optimizer(key, rate, beta1, beta2, epsilon, **extra)


def describe(name):
    """One line saying how the translation trainer builds optimizer ``name``."""
    return {
        "expectigrad": "Expectigrad(learning_rate=lr, beta=beta1, epsilon=epsilon)",
        "adam": "keras Adam(learning_rate=lr, beta_1=beta1, beta_2=beta2, epsilon=epsilon)",
        "amsgrad": "keras Adam(..., amsgrad=True)",
        "yogi": "expectigrad_experiments.optimizers Yogi(learning_rate=lr, beta_1=beta1, "
        "beta_2=beta2, epsilon=epsilon)",
        "adafactor": "keras Adafactor(learning_rate=lr), other arguments default",
    }[name.lower()]
