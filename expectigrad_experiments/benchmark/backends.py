"""How each benchmarked optimizer / code path is set up and timed.

``STEP_METHODS`` names the optimizer-step methods (Expectigrad fused, fused
under XLA (its custom call), composite and composite under XLA; keras Adam with and without XLA; TF's
``ResourceApplyAdam`` kernel as the anchor; ``ResourceApplyGradientDescent``
as a memory-streaming reference) and ``ELEMENTS_MOVED`` their minimum memory
traffic. ``StepBench`` builds one method's variables, optimizer state and
traced step and times blocks of steps; ``model_optimizers`` and
``StepTimer`` are the model.fit counterparts.
"""

import gc
import math
import time

import numpy as np

__all__ = ["STEP_METHODS", "ELEMENTS_MOVED", "StepBench", "model_optimizers", "StepTimer"]

# ---------------------------------------------------------------- methods
# name -> (family, description, XLA?, expected Expectigrad dispatch path)
STEP_METHODS = {
    "expectigrad_fused": ("expectigrad", "Expectigrad, fused multi-tensor op", False, "fused"),
    "expectigrad_composite": ("expectigrad", "Expectigrad(fused=False), keras.ops, no XLA", False, "composite"),
    "expectigrad_xla": ("expectigrad", "Expectigrad, fused op as XLA custom calls under jit_compile=True", True, "fused"),
    "expectigrad_composite_xla": ("expectigrad", "Expectigrad(fused=False), composite ops under jit_compile=True", True, "composite-xla"),
    "keras_adam": ("adam", "keras.optimizers.Adam, no XLA", False, None),
    "keras_adam_xla": ("adam", "keras.optimizers.Adam under jit_compile=True", True, None),
    "tf_resource_apply_adam": ("adam", "tf.raw_ops.ResourceApplyAdam, one op per variable", False, None),
    "stream_sgd_reference": ("sgd", "tf.raw_ops.ResourceApplyGradientDescent (stream reference)", False, None),
}
# Minimum memory traffic per element, in units of the dtype's size:
# Expectigrad reads var, sum, count, momentum, grad and writes the first 4;
# Adam reads var, m, v, grad and writes 3; SGD reads var, grad, writes var.
ELEMENTS_MOVED = {"expectigrad": 9, "adam": 7, "sgd": 3}


# ---------------------------------------------------------- step benches
class BlockTimed:
    """``run_block``: seconds per ``_step()`` over n steps, synced once at the
    end (``sync()`` returns a value read back from the device), GC paused.
    Shared by every benchmark of the package."""

    def run_block(self, n):
        gc.disable()
        try:
            t0 = time.perf_counter()
            for _ in range(n):
                self._step()
            value = self.sync()
            dt = time.perf_counter() - t0
        finally:
            gc.enable()
        if not math.isfinite(value):
            raise FloatingPointError(f"{self.method}: non-finite value read back {value}")
        return dt / n


def round_robin(benches, cfg):
    """Warm-up, a block size per method giving ~``target_block`` seconds, then
    ``repeats`` rounds over the methods in rotating order. Returns
    ({method: [seconds per step, one per round]}, {method: steps per block})."""
    methods = list(benches)
    inner = {}
    for m, b in benches.items():
        est = min(b.run_block(1) for _ in range(cfg["warmup"]))
        inner[m] = int(min(cfg["max_inner"], max(1, round(cfg["target_block"] / max(est, 1e-6)))))
    samples = {m: [] for m in methods}
    for r in range(cfg["repeats"]):
        gc.collect(1)
        order = methods[r % len(methods):] + methods[: r % len(methods)]
        for m in order:
            samples[m].append(benches[m].run_block(inner[m]))
    return samples, inner


class StepBench(BlockTimed):
    """One method on one workload: variables, optimizer state, a traced step."""

    def __init__(self, method, shapes, dtype, grads, seed):
        import keras
        import tensorflow as tf

        self.method = method
        family, self.description, self.xla, self.expected_path = STEP_METHODS[method]
        self.family = family
        self.dtype = dtype
        self.dispatch = None
        rng = np.random.default_rng(seed)
        init = [rng.standard_normal(s).astype(dtype) * 0.1 for s in shapes]
        self._opt = None
        if method.startswith("expectigrad") or method.startswith("keras_adam"):
            from expectigrad_tf import Expectigrad

            self.vars = [keras.Variable(v, dtype=dtype, name=f"w{i}") for i, v in enumerate(init)]
            if method in ("expectigrad_fused", "expectigrad_xla"):
                opt = Expectigrad(learning_rate=1e-3, fused=True)
            elif method == "expectigrad_composite":
                opt = Expectigrad(learning_rate=1e-3, fused=False)
            elif method == "expectigrad_composite_xla":
                # fused=False: inside XLA the optimizer would otherwise take
                # the fused op (its XLA custom call); this method measures
                # the composite ops compiled by XLA.
                opt = Expectigrad(learning_rate=1e-3, fused=False)
            else:
                opt = keras.optimizers.Adam(learning_rate=1e-3)
            opt.build(self.vars)
            self._opt = opt
            variables = self.vars

            def step():
                opt.apply(grads, variables)

            self._last = self.vars[-1].value
        elif method == "tf_resource_apply_adam":
            self.vars = [tf.Variable(v) for v in init]
            ms = [tf.Variable(tf.zeros_like(v)) for v in self.vars]
            vs = [tf.Variable(tf.zeros_like(v)) for v in self.vars]
            t = tf.Variable(0, dtype=tf.int64)
            tfd = tf.as_dtype(dtype)
            lr, b1, b2, eps = (tf.constant(x, tfd) for x in (1e-3, 0.9, 0.999, 1e-7))
            variables = self.vars

            def step():
                tt = tf.cast(t.assign_add(1), tfd)
                b1p, b2p = tf.pow(b1, tt), tf.pow(b2, tt)
                for v, m, s, g in zip(variables, ms, vs, grads):
                    tf.raw_ops.ResourceApplyAdam(
                        var=v.handle, m=m.handle, v=s.handle, beta1_power=b1p,
                        beta2_power=b2p, lr=lr, beta1=b1, beta2=b2, epsilon=eps, grad=g)

            self._last = self.vars[-1]
        elif method == "stream_sgd_reference":
            self.vars = [tf.Variable(v) for v in init]
            alpha = tf.constant(1e-3, tf.as_dtype(dtype))
            variables = self.vars

            def step():
                for v, g in zip(variables, grads):
                    tf.raw_ops.ResourceApplyGradientDescent(var=v.handle, alpha=alpha, delta=g)

            self._last = self.vars[-1]
        else:  # pragma: no cover
            raise ValueError(method)
        self._step = tf.function(step, jit_compile=self.xla, autograph=False)
        self._tf = tf

    def sync(self):
        """Forces completion: reads one element of the last variable."""
        tf = self._tf
        return float(tf.reshape(self._last, [-1])[0].numpy())

    def first_call(self):
        """Traces (and XLA-compiles) the step; returns seconds, records dispatch."""
        t0 = time.perf_counter()
        self._step()
        self.sync()
        dt = time.perf_counter() - t0
        if self.method.startswith("expectigrad"):
            paths = sorted({p for p, _ in self._opt.dispatch_report().values()})
            self.dispatch = ",".join(paths)
            if paths != [self.expected_path]:
                raise RuntimeError(
                    f"{self.method}: expected dispatch path {self.expected_path!r}, "
                    f"got {paths}: {self._opt.dispatch_report()}")
        return dt



def model_optimizers():
    """(name, factory) of the optimizers compared by the model.fit benchmarks."""
    import keras

    from expectigrad_tf import Expectigrad

    return (("expectigrad", lambda: Expectigrad(learning_rate=1e-3)),
            ("adam", lambda: keras.optimizers.Adam(learning_rate=1e-3)))


class StepTimer:
    """Keras callback: wall time of each train step (train_function call)."""

    def __new__(cls):
        import keras

        class StepTimer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.times = []
                self._t0 = None

            def on_train_batch_begin(self, batch, logs=None):
                self._t0 = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                self.times.append(time.perf_counter() - self._t0)

        return StepTimer()
