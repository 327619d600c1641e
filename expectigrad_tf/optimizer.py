"""The Expectigrad optimizer for Keras 3."""

import math
import numbers
import threading

import keras
import numpy as np
from keras import ops

from expectigrad_tf import _ops

_TF_BACKEND = keras.backend.backend() == "tensorflow"
if _TF_BACKEND:
    import tensorflow as tf
    from tensorflow.python.ops import control_flow_util

# Dispatch paths (see Expectigrad.dispatch_report()).
FUSED = "fused"
COMPOSITE = "composite"
COMPOSITE_XLA = "composite-xla"
SPARSE = "sparse"

_FUSED_DTYPES = ("float16", "bfloat16", "float32", "float64")
# Strategies whose variables the fused op can update replica by replica.
_FUSED_STRATEGIES = (
    "_DefaultDistributionStrategy",
    "OneDeviceStrategy",
    "MirroredStrategy",
    "MultiWorkerMirroredStrategy",
    "CollectiveAllReduceStrategy",
    "_CollectiveAllReduceStrategyExperimental",
)


def _in_xla():
    """True while tracing inside an XLA compilation (jit_compile=True)."""
    return _TF_BACKEND and control_flow_util.GraphOrParentsInXlaContext(
        tf.compat.v1.get_default_graph()
    )


def _state_dtype(dtype):
    """sum/count dtype for a variable dtype: float32 for 16-bit floats."""
    dtype = keras.backend.standardize_dtype(dtype)
    return "float32" if dtype in ("float16", "bfloat16") else dtype


def _check_number(name, value, low, low_inclusive, high=None):
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.ndarray)):
        raise TypeError(f"Expectigrad: `{name}` must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"Expectigrad: `{name}` must be finite, got {name}={value!r}")
    bad_low = v < low if low_inclusive else v <= low
    bad_high = high is not None and v >= high
    if bad_low or bad_high:
        rng = ("[" if low_inclusive else "(") + f"{low}, " + (f"{high})" if high is not None else "inf)")
        raise ValueError(f"Expectigrad: `{name}` must be in {rng}, got {name}={value!r}")
    return v


@keras.saving.register_keras_serializable(package="expectigrad_tf", name="Expectigrad")
class Expectigrad(keras.optimizers.Optimizer):
    """Optimizer that implements the Expectigrad algorithm.

    Expectigrad (Daley & Amato, ICLR 2021 submission, Algorithm 1) normalises
    each gradient component by the arithmetic mean of all its past *nonzero*
    squared values instead of Adam's exponential moving average, and applies
    momentum *after* normalisation, with bias correction. For each step
    ``t = 1, 2, ...`` and element::

        s_t = s_{t-1} + g_t**2
        n_t = n_{t-1} + sign(g_t**2)          # or n_t = t without sparse counter
        m_t = beta * m_{t-1} + (1 - beta) * g_t / (epsilon + sqrt(s_t / n_t))
        x_t = x_{t-1} - learning_rate / (1 - beta**t) * m_t

    with ``0/0 := 0``. With ``beta == 0`` there is no momentum slot and no bias
    correction.

    Dense gradients go through a fused, compiled TensorFlow op (one pass over
    memory per element, many variables per call) when it is available; sparse
    gradients (``tf.IndexedSlices``), XLA compilation and other backends use
    composite ops with identical results. See ``dispatch_report()``.

    Args:
        learning_rate: A float > 0, a
            `keras.optimizers.schedules.LearningRateSchedule`, or a callable
            taking no arguments. Defaults to `1e-3`.
        beta: Momentum constant in [0, 1). Defaults to `0.9`.
        epsilon: Denominator constant > 0. Defaults to `1e-8`.
        sparse_counter: If True (default), ``n`` counts each element's nonzero
            gradients (slot ``count``); if False, ``n = t`` and no counter slot
            is kept.
        fused: None (default): use the fused op where possible; True: require
            it (error at build time if it is unavailable); False: never use it.
        {{base_optimizer_keyword_args}}

    Slots, per variable, in this order: ``sum``, ``count`` (if
    ``sparse_counter``) and ``momentum`` (if ``beta > 0``). ``sum`` and
    ``count`` are float32 for float16/bfloat16 variables, otherwise of the
    variable's dtype.
    """

    def __init__(
        self,
        learning_rate=1e-3,
        beta=0.9,
        epsilon=1e-8,
        sparse_counter=True,
        fused=None,
        weight_decay=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name="expectigrad",
        **kwargs,
    ):
        if isinstance(learning_rate, (numbers.Real, np.ndarray)) and not callable(learning_rate):
            learning_rate = _check_number("learning_rate", learning_rate, 0.0, False)
        beta = _check_number("beta", beta, 0.0, True, 1.0)
        epsilon = _check_number("epsilon", epsilon, 0.0, False)
        if not isinstance(sparse_counter, (bool, np.bool_)):
            raise TypeError(
                f"Expectigrad: `sparse_counter` must be a bool, got {sparse_counter!r}"
            )
        if fused not in (None, True, False):
            raise ValueError(
                f"Expectigrad: `fused` must be None, True or False, got {fused!r}"
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
        self.beta = beta
        self.epsilon = epsilon
        self.sparse_counter = bool(sparse_counter)
        self.fused = fused
        self._dispatch_log = {}
        self._dispatch_lock = threading.Lock()

    # ------------------------------------------------------------------ state
    def build(self, var_list):
        """Creates the slots: sum, count (sparse counter), momentum (beta > 0)."""
        if self.built:
            return
        if self.fused is True:
            reason = self._fused_unavailable_reason()
            if reason is not None:
                raise RuntimeError(
                    f"Expectigrad(fused=True): the fused op cannot be used: {reason}"
                )
        super().build(var_list)
        self._sums, self._counts, self._momentums = [], [], []
        for var in var_list:
            if self._overwrite_variable_with_gradient(var):
                for slots in (self._sums, self._counts, self._momentums):
                    slots.append(None)
                continue
            state = _state_dtype(var.dtype)
            self._sums.append(self._make_slot(var, "sum", state))
            self._counts.append(
                self._make_slot(var, "count", state) if self.sparse_counter else None
            )
            self._momentums.append(
                self._make_slot(var, "momentum", var.dtype) if self.beta > 0 else None
            )

    def _make_slot(self, ref, name, dtype):
        if keras.backend.standardize_dtype(dtype) == keras.backend.standardize_dtype(ref.dtype):
            return self.add_variable_from_reference(ref, name=name)
        # Same naming as add_variable_from_reference, with another dtype.
        full_name = f"{ref.path.replace('/', '_')}_{name}" if hasattr(ref, "path") else name
        make = lambda: self.add_variable(  # noqa: E731
            shape=ref.shape, initializer="zeros", dtype=dtype, name=full_name
        )
        if _TF_BACKEND:
            colocate = ref.value if isinstance(ref, keras.Variable) else ref
            with self._distribution_strategy.extended.colocate_vars_with(colocate):
                return make()
        return make()

    def load_own_variables(self, store):
        """Restores state saved by ``save_own_variables`` (``.keras`` /
        ``.weights.h5``), after checking every entry's shape and dtype, so a
        mismatched file raises before any optimizer variable is modified."""
        variables = self.variables
        if len(store.keys()) == len(variables):
            problems = []
            for i, var in enumerate(variables):
                value = store[str(i)]
                shape = tuple(getattr(value, "shape", ()))
                dtype = keras.backend.standardize_dtype(getattr(value, "dtype", type(value)))
                want_dtype = keras.backend.standardize_dtype(var.dtype)
                if shape != tuple(var.shape) or (dtype != want_dtype and var.path != self._iterations.path):
                    problems.append(
                        f"{var.path}: saved shape {shape} dtype {dtype}, "
                        f"expected shape {tuple(var.shape)} dtype {want_dtype}"
                    )
            if problems:
                raise ValueError(
                    f"Expectigrad '{self.name}': the saved optimizer state does not "
                    "match this optimizer (nothing was restored): " + "; ".join(problems)
                )
        super().load_own_variables(store)

    def _slots_for(self, variable):
        i = self._get_variable_index(variable)
        return self._sums[i], self._counts[i], self._momentums[i]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "beta": self.beta,
                "epsilon": self.epsilon,
                "sparse_counter": self.sparse_counter,
                "fused": self.fused,
            }
        )
        return config

    # --------------------------------------------------------------- dispatch
    def _fused_unavailable_reason(self):
        if self.fused is False:
            return "fused=False"
        if not _TF_BACKEND:
            return f"Keras backend is {keras.backend.backend()!r}, not 'tensorflow'"
        return _ops.unavailable_reason()

    def _choose_path(self, gradient, variable, distribution=None):
        """The one dispatch point: returns (path, reason) for a variable."""
        if _TF_BACKEND and isinstance(gradient, tf.IndexedSlices):
            return SPARSE, "gradient is tf.IndexedSlices: sparse composite path"
        if _in_xla():
            return COMPOSITE_XLA, "inside an XLA compilation (jit_compile=True): XLA fuses the composite ops"
        reason = self._fused_unavailable_reason()
        if reason is not None:
            return COMPOSITE, reason
        dtype = keras.backend.standardize_dtype(variable.dtype)
        if dtype not in _FUSED_DTYPES:
            return COMPOSITE, f"dtype {dtype} has no fused kernel"
        if "GPU" in (variable.device or "").upper() and "GPU" not in _ops.fused_status()["devices"]:
            return COMPOSITE, f"no GPU kernel: {_ops.fused_status()['gpu_reason']}"
        if distribution is not None and type(distribution).__name__ not in _FUSED_STRATEGIES:
            return COMPOSITE, f"strategy {type(distribution).__name__} is not supported by the fused op"
        return FUSED, "dense gradient, fused op loaded"

    def _record(self, variable, path, reason):
        key = getattr(variable, "path", None) or getattr(variable, "name", str(id(variable)))
        with self._dispatch_lock:
            self._dispatch_log[key] = (path, reason)

    def dispatch_report(self):
        """{variable path: (path, reason)} as decided for the last traced step.

        ``path`` is one of ``"fused"``, ``"composite"``, ``"composite-xla"``
        and ``"sparse"``. Decisions are made when a step is traced (once per
        ``tf.function`` trace, every step in eager mode).
        """
        with self._dispatch_lock:
            return dict(self._dispatch_log)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if not _TF_BACKEND:
            for grad, var in zip(grads, trainable_variables):
                path, reason = self._choose_path(grad, var)
                self._record(var, path, reason)
                self.update_step(grad, var, learning_rate)
            return
        if not _in_xla():
            # A schedule or callable may produce NaN/inf: fail at this step,
            # before any state is touched, on every path.
            learning_rate = tf.debugging.check_numerics(
                tf.convert_to_tensor(learning_rate),
                "Expectigrad: the learning rate is not finite (check the schedule)",
            )
        # As keras' TFOptimizer: all-reduce, then update in a merge call.
        trainable_variables = [
            v.value if isinstance(v, keras.Variable) else v for v in trainable_variables
        ]
        grads_and_vars = self._all_reduce_sum_gradients(list(zip(grads, trainable_variables)))
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._distributed_tf_update_step,
            self._distribution_strategy,
            grads_and_vars,
            learning_rate,
        )

    def _distributed_tf_update_step(self, distribution, grads_and_vars, learning_rate):
        groups = {}  # (dtype, device) -> [(grad, var)] for the fused op
        for grad, var in grads_and_vars:
            path, reason = self._choose_path(grad, var, distribution)
            self._record(var, path, reason)
            if path == FUSED:
                groups.setdefault((var.dtype, var.device), []).append((grad, var))
            else:
                distribution.extended.update(
                    var,
                    lambda v, g, lr: self.update_step(g, v, lr),
                    args=(grad, learning_rate),
                    group=False,
                )
        for pairs in groups.values():
            grads = [g for g, _ in pairs]
            variables = [v for _, v in pairs]
            # One op call per group and device. Inside update(), every
            # distributed variable resolves to this replica's component, and
            # per-replica values passed in args (gradients, learning rate)
            # are selected for it, so the whole list goes into one call per
            # replica.
            distribution.extended.update(
                variables[0],
                # vs=variables binds this group now, not the loop's last one.
                lambda _, gs, lr, vs=variables: self._fused_apply(vs, gs, lr),
                args=(grads, learning_rate),
                group=False,
            )

    def _fused_apply(self, variables, grads, learning_rate):
        state = _state_dtype(variables[0].dtype)
        scalar_dtype = tf.float64 if state == "float64" else tf.float32
        sums, counts, moms = [], [], []
        for v in variables:
            s, n, m = self._slots_for(v)
            sums.append(s.value.handle)
            if n is not None:
                counts.append(n.value.handle)
            if m is not None:
                moms.append(m.value.handle)
        return _ops.op_module().expectigrad_apply(
            var=[v.handle for v in variables],
            sum=sums,
            count=counts,
            momentum=moms,
            grad=[tf.cast(g, v.dtype) for g, v in zip(grads, variables)],
            lr=tf.cast(learning_rate, scalar_dtype),
            beta=tf.constant(self.beta, scalar_dtype),
            epsilon=tf.constant(self.epsilon, scalar_dtype),
            step=tf.cast(self.iterations + 1, tf.int64),
        )

    # -------------------------------------------------------- composite paths
    def update_step(self, gradient, variable, learning_rate):
        """Composite update of one variable (sparse, XLA, or no fused op)."""
        if _TF_BACKEND and isinstance(gradient, tf.IndexedSlices):
            return self._sparse_update(gradient, variable, learning_rate)
        return self._dense_update(gradient, variable, learning_rate)

    def _scalars(self, learning_rate, state):
        """(lr_t, t, beta, 1 - beta, epsilon) as tensors of the state dtype.

        Python floats are converted straight to the state dtype: casting them
        via float32 (as ops.cast(0.9, "float64") does) would lose precision.
        """
        const = lambda v: ops.convert_to_tensor(v, dtype=state)  # noqa: E731
        step = ops.cast(self.iterations + 1, state)
        lr = ops.cast(learning_rate, state)
        beta = const(self.beta)
        if self.beta > 0:
            lr = lr / (const(1.0) - ops.power(beta, step))
        return lr, step, beta, const(1.0 - self.beta), const(self.epsilon)

    def _dense_update(self, gradient, variable, learning_rate):
        s_var, n_var, m_var = self._slots_for(variable)
        state = s_var.dtype
        lr_t, step, beta, one_minus_beta, eps = self._scalars(learning_rate, state)
        g = ops.cast(gradient, state)
        gg = g * g
        s = s_var + gg
        self.assign(s_var, s)
        if n_var is not None:
            n = n_var + ops.sign(gg)
            self.assign(n_var, n)
        else:
            n = step
        u = g / (eps + ops.sqrt(ops.divide_no_nan(s, n)))
        x = ops.cast(variable, state)
        if m_var is not None:
            m = beta * ops.cast(m_var, state) + one_minus_beta * u
            self.assign(m_var, ops.cast(m, m_var.dtype))
            self.assign(variable, ops.cast(x - lr_t * m, variable.dtype))
        else:
            self.assign(variable, ops.cast(x - lr_t * u, variable.dtype))

    def _sparse_update(self, gradient, variable, learning_rate):
        """Rows-only update for tf.IndexedSlices; equal to the dense update of
        the densified gradient: sum/count change only on the given rows, the
        momentum decays everywhere."""
        s_var, n_var, m_var = self._slots_for(variable)
        state = s_var.dtype
        lr_t, step, beta, one_minus_beta, eps = self._scalars(learning_rate, state)
        # Sum duplicate indices first, as densifying would.
        indices, positions = tf.unique(gradient.indices)
        values = tf.math.unsorted_segment_sum(
            gradient.values, positions, tf.shape(indices)[0]
        )
        g = tf.cast(values, state)
        gg = g * g
        s_rows = tf.gather(s_var.value, indices) + gg
        s_var.value.scatter_update(tf.IndexedSlices(s_rows, indices))
        if n_var is not None:
            n_rows = tf.gather(n_var.value, indices) + tf.sign(gg)
            n_var.value.scatter_update(tf.IndexedSlices(n_rows, indices))
        else:
            n_rows = step
        u = g / (eps + tf.sqrt(tf.math.divide_no_nan(s_rows, n_rows)))
        if m_var is not None:
            m = beta * tf.cast(m_var.value, state)
            m_rows = tf.gather(m, indices) + one_minus_beta * u
            m = tf.tensor_scatter_nd_update(m, indices[:, None], m_rows)
            self.assign(m_var, tf.cast(m, m_var.dtype))
            x = tf.cast(variable, state) - lr_t * m
            self.assign(variable, tf.cast(x, variable.dtype))
        else:
            x_rows = tf.gather(tf.cast(variable, state), indices) - lr_t * u
            var = variable.value if isinstance(variable, keras.Variable) else variable
            var.scatter_update(tf.IndexedSlices(tf.cast(x_rows, var.dtype), indices))


if Expectigrad.__doc__ is not None:
    Expectigrad.__doc__ = Expectigrad.__doc__.replace(
        "{{base_optimizer_keyword_args}}",
        keras.optimizers.Optimizer.__doc__ and __import__(
            "keras.src.optimizers.optimizer", fromlist=["x"]
        ).base_optimizer_keyword_args or "",
    )
