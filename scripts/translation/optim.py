"""Optimizers and the optional learning-rate schedule for the translation runs."""

import os
import sys

import keras

from expectigrad_tf import Expectigrad

__all__ = ["OPTIMIZERS", "make_optimizer", "WarmupRsqrt", "describe"]

OPTIMIZERS = ("expectigrad", "adam", "amsgrad", "yogi", "adafactor")


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
        from keras import ops

        step = ops.cast(step, "float32") + 1.0
        warm = float(max(self.warmup_steps, 1))
        return self.lr * ops.minimum(1.0, step / warm) * ops.sqrt(warm / ops.maximum(step, warm))

    def get_config(self):
        return {"lr": self.lr, "warmup_steps": self.warmup_steps}


def _baselines():
    """scripts/baselines.py (make_optimizer, Yogi) when present, else None."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.exists(os.path.join(here, "baselines.py")):
        return None
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        import baselines
    except Exception:  # pragma: no cover - a broken sibling must not break training
        return None
    return baselines if hasattr(baselines, "make_optimizer") else None


def make_optimizer(name, lr, beta1=0.9, beta2=0.999, epsilon=1e-8, schedule="none",
                   warmup_steps=4000, clip_norm=0.0):
    """The optimizer ``name`` with the shared hyperparameters.

    expectigrad: Expectigrad(lr, beta=beta1, epsilon); beta2 unused.
    adam / amsgrad: keras Adam(lr, beta1, beta2, epsilon[, amsgrad=True]).
    yogi: scripts/baselines.py's Yogi(lr, beta1, beta2, epsilon) (Algorithm 2).
    adafactor: keras Adafactor(lr) with its defaults (no momentum); betas and
    epsilon unused.
    """
    key = name.lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")
    rate = WarmupRsqrt(lr, warmup_steps) if schedule == "warmup_rsqrt" else lr
    extra = {"global_clipnorm": clip_norm} if clip_norm else {}
    if key == "adafactor":
        return keras.optimizers.Adafactor(learning_rate=rate, **extra)
    base = _baselines()
    if base is not None:
        return base.make_optimizer(key, rate, beta1, beta2, epsilon, **extra)
    if key == "expectigrad":
        return Expectigrad(learning_rate=rate, beta=beta1, epsilon=epsilon, **extra)
    if key in ("adam", "amsgrad"):
        return keras.optimizers.Adam(learning_rate=rate, beta_1=beta1, beta_2=beta2,
                                     epsilon=epsilon, amsgrad=key == "amsgrad", **extra)
    raise RuntimeError("yogi needs scripts/baselines.py (its Yogi optimizer), which is missing")


def describe(name):
    return {
        "expectigrad": "Expectigrad(learning_rate=lr, beta=beta1, epsilon=epsilon)",
        "adam": "keras Adam(learning_rate=lr, beta_1=beta1, beta_2=beta2, epsilon=epsilon)",
        "amsgrad": "keras Adam(..., amsgrad=True)",
        "yogi": "scripts/baselines.py Yogi(learning_rate=lr, beta_1=beta1, beta_2=beta2, epsilon=epsilon)",
        "adafactor": "keras Adafactor(learning_rate=lr), other arguments default",
    }[name.lower()]
