"""The Expectigrad optimizer for Keras 3: arguments, slots, config and the
composite maths. Backend plumbing (the fused op, the sparse path, placement)
is in ``_backend_tf`` (TensorFlow) or ``_backend_generic`` (JAX, PyTorch),
composed in below as Keras composes its own backend optimizers; which path
updates a variable is decided by ``dispatch.choose_path``."""

import math
import numbers
import threading

import keras
import numpy as np
from keras import ops

if keras.backend.backend() == "tensorflow":
    from expectigrad_tf._backend_tf import TFBackend as _Backend
else:
    from expectigrad_tf._backend_generic import GenericBackend as _Backend

# Re-exported for callers of the previous layout.
from expectigrad_tf.dispatch import COMPOSITE, COMPOSITE_XLA, FUSED, SPARSE, SPARSE_LAZY  # noqa: E402,F401


def _state_dtype(dtype):
    """State (sum, count, momentum) dtype for a variable dtype: float32 for
    16-bit floats."""
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


_F32 = np.finfo(np.float32)


def _check_float32(name, value, low_msg):
    """The state of 16/32-bit variables is float32: ``value`` must stay a
    normal, finite, nonzero float32 (1e-50 would round to 0, 1e39 to inf)."""
    with np.errstate(over="ignore", under="ignore"):
        v32 = np.float32(value)
    if not np.isfinite(v32) or abs(float(v32)) < _F32.tiny:
        raise ValueError(
            f"Expectigrad: `{name}` must be representable as a normal float32 "
            f"(the dtype of the state of 16/32-bit variables), got {name}={value!r}, "
            f"which is {float(v32)!r} in float32; {low_msg}"
        )


def _check_bool(name, value, error):
    """Exactly a bool (``np.bool_`` accepted), returned as a Python bool, so
    ``0``/``1`` are rejected and ``get_config()`` stays JSON-serialisable."""
    if not isinstance(value, (bool, np.bool_)):
        raise error(f"Expectigrad: `{name}` must be True or False, got {name}={value!r}")
    return bool(value)


def check_arguments(learning_rate, beta, epsilon, sparse_counter):
    """Checks Expectigrad's arguments (every class: Keras 3, tf_keras,
    tf.compat.v1); returns them normalised (Python floats and bool). A
    learning rate that is not a number (schedule, callable, tensor) is
    returned as it is and checked when a step runs."""
    if isinstance(learning_rate, (numbers.Real, np.ndarray)) and not callable(learning_rate):
        learning_rate = _check_number("learning_rate", learning_rate, 0.0, False)
    beta = _check_number("beta", beta, 0.0, True, 1.0)
    epsilon = _check_number("epsilon", epsilon, 0.0, False)
    _check_float32("epsilon", epsilon, f"use epsilon >= {float(_F32.tiny)!r}")
    if beta > 0 and np.float32(beta) >= 1.0:
        raise ValueError(
            f"Expectigrad: `beta` rounds to 1.0 in float32 (the bias correction "
            f"1 - beta**t would be 0), got beta={beta!r}"
        )
    sparse_counter = _check_bool("sparse_counter", sparse_counter, TypeError)
    return learning_rate, beta, epsilon, sparse_counter


def check_fused(fused):
    """``fused``: None, True or False (``np.bool_`` accepted), as a Python value."""
    if fused is not None:
        if not isinstance(fused, (bool, np.bool_)):
            raise ValueError(
                f"Expectigrad: `fused` must be None, True or False, got fused={fused!r}"
            )
        fused = bool(fused)
    return fused


# Codes of the layout descriptor saved with the state (see save_own_variables).
LAYOUT_KEY = "expectigrad_layout"
# 2-4: the per-slot layout of expectigrad-tf 0.1 (one variable each for sum,
# count and momentum), converted on load; 8-11: the packed state, 8 + 1 (count
# row) + 2 (momentum row), so states of the same shape but other rows differ.
_KINDS = {0: "iterations", 1: "learning_rate", 2: "sum", 3: "count", 4: "momentum", 5: "other",
          8: "state[sum]", 9: "state[sum,count]", 10: "state[sum,momentum]",
          11: "state[sum,count,momentum]"}
_CODES = {v: k for k, v in _KINDS.items()}


def _state_code(count, momentum):
    return 8 + int(bool(count)) + 2 * int(bool(momentum))


@keras.saving.register_keras_serializable(package="expectigrad_tf", name="Expectigrad")
class Expectigrad(_Backend, keras.optimizers.Optimizer):
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

    with ``0/0 := 0``. With ``beta == 0`` there is no momentum row and no bias
    correction.

    Dense gradients go through a fused, compiled TensorFlow op (one pass over
    memory per element, many variables per call) when it is available, with
    and without XLA (``jit_compile=True`` lowers it to a custom call into the
    same kernels). On Keras 3's JAX backend, float32/float64 variables on the
    CPU take the same kernel as an in-place XLA custom call. Sparse gradients
    (``tf.IndexedSlices``), ``fused=False``, PyTorch, the remaining JAX cases
    and a missing op use composite ops with the same results (up to a few
    float32 ulps where XLA compiles them). See ``dispatch_report()``.

    Args:
        learning_rate: A float > 0, a
            `keras.optimizers.schedules.LearningRateSchedule`, or a callable
            taking no arguments. Defaults to `1e-3`.
        beta: Momentum constant in [0, 1). Defaults to `0.9`.
        epsilon: Denominator constant > 0. Defaults to `1e-8`.
        sparse_counter: If True (default), ``n`` counts each element's nonzero
            gradients (state row ``count``); if False, ``n = t`` and no
            counter row is kept.
        fused: None (default): use the fused op where possible; True: require
            it (error at build time if it is unavailable); False: never use it.
        lazy_sparse: If False (default), a ``tf.IndexedSlices`` gradient gives
            exactly Algorithm 1's update of the densified gradient (``sum`` and
            ``count`` change on its rows only, but with ``beta > 0`` the
            momentum decays and the variable moves on every row). If True,
            only its rows of ``sum``, ``count``, ``momentum`` and the variable
            change (as LazyAdam does for Adam), so a step costs O(rows given)
            instead of O(table). Dense gradients are not affected.
        {{base_optimizer_keyword_args}}

    Lazy sparse updates (``lazy_sparse=True``) differ from Algorithm 1 only
    for ``tf.IndexedSlices`` gradients with ``beta > 0``. Duplicate indices
    are summed first; then, with ``t`` the global step (``iterations + 1``),
    for the given rows ``r`` only::

        s[r] += g[r]**2;  n[r] += sign(g[r]**2)          # as Algorithm 1
        m[r]  = beta * m[r] + (1 - beta) * g[r] / (epsilon + sqrt(s[r] / n[r]))
        x[r] -= learning_rate / (1 - beta**t) * m[r]

    Rows not given keep ``m`` and ``x`` unchanged, where Algorithm 1 (whose
    gradient is 0 there) would decay ``m`` by ``beta`` and move ``x`` by
    ``-learning_rate / (1 - beta**t) * beta * m``. A row's momentum thus
    decays once per step the row is given, not once per step, while the bias
    correction uses the global ``t``. With ``beta == 0`` (no momentum) and for
    rows given at every step the two are identical.

    State: one variable per trained variable (``{path}_state``), of shape
    ``(rows,) + variable.shape``: row 0 is ``sum``, then ``count`` (if
    ``sparse_counter``), then ``momentum`` (if ``beta > 0``). It is float32
    for float16/bfloat16 variables, otherwise of the variable's dtype. (One
    packed variable instead of one per slot: a compiled step's cost grows with
    the number of variables it updates.) ``slot_values(variable)`` returns the
    rows by name.
    """

    def __init__(
        self,
        learning_rate=1e-3,
        beta=0.9,
        epsilon=1e-8,
        sparse_counter=True,
        fused=None,
        lazy_sparse=False,
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
        learning_rate, beta, epsilon, sparse_counter = check_arguments(
            learning_rate, beta, epsilon, sparse_counter)
        lazy_sparse = _check_bool("lazy_sparse", lazy_sparse, TypeError)
        fused = check_fused(fused)
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
        self.lazy_sparse = lazy_sparse
        self._dispatch_log = {}
        self._dispatch_lock = threading.Lock()
        self._step_ok = None  # set while a step is gated (see TFBackend.apply)

    # ------------------------------------------------------------------ state
    def build(self, var_list):
        """Creates the state: one packed variable per trained variable."""
        if self.built:
            return
        if self.fused is True:
            reason = self._fused_unavailable_reason()
            if reason is not None:
                raise RuntimeError(
                    f"Expectigrad(fused=True): the fused op cannot be used: {reason}"
                )
        super().build(var_list)
        self._states = []
        for var in var_list:
            if self._overwrite_variable_with_gradient(var):
                self._states.append(None)
                continue
            self._states.append(self._make_state_slot(
                var, "state", _state_dtype(var.dtype),
                (self._num_state_rows(),) + tuple(var.shape)))

    def _new_state_variable(self, ref, name, dtype, shape):
        """A zeros state variable of ``shape`` (named as
        ``add_variable_from_reference`` names slots, and sharded like ``ref``
        under a Keras distribution: the leading rows axis is not sharded).
        Called through the backend's ``_make_state_slot``, which adds
        placement (on TF: with ``ref``, e.g. on its parameter server)."""
        if hasattr(ref, "path"):
            full_name = f"{ref.path.replace('/', '_')}_{name}"
        else:  # a tf.Variable
            full_name = str(ref.name).replace("/", "_").replace(":", "_") + f"_{name}"
        layout = getattr(ref, "_layout", None)
        if layout is not None:  # shape is (rows,) + ref.shape
            layout = keras.distribution.TensorLayout(
                (None,) + tuple(layout.axes), layout.device_mesh)
        return self.add_variable(shape=shape, initializer="zeros", dtype=dtype, name=full_name,
                                 layout=layout)

    # The packed state, shared by every class (Keras 3, tf_keras, compat.v1).
    def _num_state_rows(self):
        return 1 + int(self.sparse_counter) + int(self.beta > 0)

    def _state_rows(self):
        """(count row, momentum row) of the packed state; None where absent
        (row 0 is the sum)."""
        count = 1 if self.sparse_counter else None
        momentum = 1 + int(self.sparse_counter) if self.beta > 0 else None
        return count, momentum

    def _state_for(self, variable):
        return self._states[self._get_variable_index(variable)]

    def _slots_for(self, variable):
        """(sum, count, momentum) of ``variable`` as tensors (read now);
        None for an absent slot."""
        state = self._state_for(variable)
        if state is None:
            return None, None, None
        value = ops.convert_to_tensor(state)
        count, momentum = self._state_rows()
        return (value[0], None if count is None else value[count],
                None if momentum is None else value[momentum])

    def slot_values(self, variable):
        """``{"sum": ..., "count": ..., "momentum": ...}`` for ``variable``
        (NumPy arrays of the state dtype; slots the configuration does not
        keep are left out)."""
        names = ("sum", "count", "momentum")
        return {name: ops.convert_to_numpy(value)
                for name, value in zip(names, self._slots_for(variable)) if value is not None}

    @staticmethod
    def _state_dtype(dtype):
        return _state_dtype(dtype)

    def _layout(self):
        """One code per optimizer variable, in ``self.variables`` order: what
        each saved array is (see ``_KINDS``)."""
        kinds = {id(self._iterations): "iterations"}
        if isinstance(self._learning_rate, keras.Variable):
            kinds[id(self._learning_rate)] = "learning_rate"
        state_kind = _KINDS[_state_code(self.sparse_counter, self.beta > 0)]
        for state in getattr(self, "_states", []):
            if state is not None:
                kinds[id(state)] = state_kind
        return [_CODES[kinds.get(id(v), "other")] for v in self.variables]

    def _convert_per_slot_layout(self, codes, values):
        """State saved by expectigrad-tf 0.1 (one array each for sum, count
        and momentum, codes 2-4) as packed states: each run sum, count?,
        momentum? becomes one ``(rows,) + shape`` array of the sum's dtype.
        Returns (codes, values) unchanged when there is nothing to convert."""
        if not any(c in (2, 3, 4) for c in codes):
            return codes, values
        out_codes, out_values, i = [], [], 0
        while i < len(codes):
            if codes[i] != 2:
                out_codes.append(codes[i])
                out_values.append(values[i])
                i += 1
                continue
            rows, kinds = [np.asarray(values[i])], []
            i += 1
            while i < len(codes) and codes[i] in (3, 4) and codes[i] not in kinds:
                if kinds and codes[i] < kinds[-1]:
                    break  # momentum, then count: not one variable's slots
                kinds.append(codes[i])
                rows.append(np.asarray(values[i]).astype(rows[0].dtype))
                i += 1
            if len({r.shape for r in rows}) != 1:
                return codes, values  # not a per-slot layout: reported as saved
            out_codes.append(_state_code(3 in kinds, 4 in kinds))
            out_values.append(np.stack(rows))
        return out_codes, out_values

    @staticmethod
    def _describe(codes, shapes, dtypes):
        return "[" + ", ".join(
            f"{_KINDS.get(int(c), f'?{int(c)}')} {tuple(sh)} {dt}"
            for c, sh, dt in zip(codes, shapes, dtypes)
        ) + "]"

    def save_own_variables(self, store):
        """Keras's state (one array per variable, by index) plus a layout
        descriptor (what each array is), checked by ``load_own_variables``."""
        super().save_own_variables(store)
        store[LAYOUT_KEY] = np.asarray(self._layout(), np.int32)

    def load_own_variables(self, store):
        """Restores state saved by ``save_own_variables`` (``.keras`` /
        ``.weights.h5``; the per-slot layout of expectigrad-tf 0.1 is
        converted to packed states first), after checking the saved layout
        (which slots, in which order, their shapes and dtypes) against this
        optimizer's: on any
        mismatch (including a different number of arrays) it raises
        ``ValueError`` naming both layouts, and nothing is restored."""
        variables = self.variables
        keys = [k for k in store.keys() if k != LAYOUT_KEY]
        saved_codes = None
        if LAYOUT_KEY in list(store.keys()):
            saved_codes = [int(c) for c in np.asarray(store[LAYOUT_KEY]).reshape(-1)]
        values = [store[str(i)] for i in range(len(keys)) if str(i) in keys]
        stray_keys = sorted(keys) if len(values) != len(keys) else None  # before converting
        if saved_codes is not None and len(saved_codes) == len(values):
            saved_codes, values = self._convert_per_slot_layout(saved_codes, values)
        saved_shapes = [tuple(getattr(v, "shape", ())) for v in values]
        saved_dtypes = [keras.backend.standardize_dtype(getattr(v, "dtype", type(v)))
                        for v in values]
        codes = self._layout()
        shapes = [tuple(v.shape) for v in variables]
        dtypes = [keras.backend.standardize_dtype(v.dtype) for v in variables]
        problems = []
        if stray_keys is not None:
            problems.append(f"unexpected keys {stray_keys}")
        if len(values) != len(variables):
            problems.append(f"{len(values)} saved arrays, {len(variables)} expected"
                            + ("" if self.built else " (the optimizer is not built)"))
        if saved_codes is not None and saved_codes != codes:
            problems.append("different slots")
        for i, (var, sh, dt) in enumerate(zip(variables, saved_shapes, saved_dtypes)):
            # iterations may have been saved as int32 or int64.
            dtype_ok = dt == dtypes[i] or codes[i] == _CODES["iterations"]
            if sh != shapes[i] or not dtype_ok:
                problems.append(
                    f"{var.path}: saved shape {sh} dtype {dt}, "
                    f"expected shape {shapes[i]} dtype {dtypes[i]}"
                )
        if problems:
            saved_desc = (self._describe(saved_codes, saved_shapes, saved_dtypes)
                          if saved_codes is not None and len(saved_codes) == len(values)
                          else "[" + ", ".join(f"{s} {d}" for s, d in zip(saved_shapes, saved_dtypes))
                          + "] (saved without a layout descriptor)")
            raise ValueError(
                f"Expectigrad '{self.name}': the saved optimizer state does not "
                f"match this optimizer (nothing was restored): {'; '.join(problems)}. "
                f"Saved layout: {saved_desc}; this optimizer's layout "
                f"(beta={self.beta}, sparse_counter={self.sparse_counter}): "
                f"{self._describe(codes, shapes, dtypes)}"
            )
        for var, value in zip(variables, values):
            var.assign(value)

    def apply(self, grads, trainable_variables=None):
        """Keras's ``apply``, after the checks every path shares: builds the
        optimizer first (as Keras would), then rejects a gradient whose static
        shape differs from its variable's (``ValueError``, before anything is
        changed: the composite ops would otherwise broadcast it). The backend
        adds the runtime checks (learning rate, dynamic shapes)."""
        if len(grads) and trainable_variables is not None:
            trainable_variables = list(trainable_variables)
            if not self.built:
                with keras.name_scope(self.name, caller=self):
                    self.build(trainable_variables)
                self.built = True
        variables = (trainable_variables if trainable_variables is not None
                     else getattr(self, "_trainable_variables", None))
        if len(grads) and variables is not None and len(variables) == len(grads):
            for grad, var in zip(grads, variables):
                self._check_gradient_shape(grad, var)
        return super().apply(grads, trainable_variables)

    def _check_gradient_shape(self, grad, var):
        if grad is None:
            return
        want = tuple(var.shape)
        name = getattr(var, "path", None) or getattr(var, "name", "variable")
        if self._is_sparse(grad):
            if grad.values.shape.rank is None:
                return
            got = tuple(grad.values.shape)
            ok = len(got) == len(want) and all(
                g is None or g == w for g, w in zip(got[1:], want[1:]))
            what = "sparse gradient values"
            expected = f"(n, {', '.join(map(str, want[1:]))})" if len(want) > 1 else "(n,)"
        else:
            shape = getattr(grad, "shape", None)
            got = tuple(shape) if shape is not None and getattr(shape, "rank", 0) is not None else None
            if got is None:
                return  # unknown rank: the backend checks at run time
            ok = len(got) == len(want) and all(g is None or g == w for g, w in zip(got, want))
            what = "gradient"
            expected = str(want)
        if not ok:
            raise ValueError(
                f"Expectigrad: the {what} for variable {name!r} has shape {got}, "
                f"expected {expected}: gradients must have the variable's shape "
                "(no broadcasting)"
            )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "beta": self.beta,
                "epsilon": self.epsilon,
                "sparse_counter": self.sparse_counter,
                "fused": self.fused,
                "lazy_sparse": self.lazy_sparse,
            }
        )
        return config

    # --------------------------------------------------------------- dispatch
    def _record(self, variable, path, reason):
        index = self._get_variable_index(variable)
        name = getattr(variable, "path", None) or getattr(variable, "name", None) or "variable"
        with self._dispatch_lock:
            self._dispatch_log[index] = (name, path, reason)

    def dispatch_report(self):
        """{variable path: (path, reason)} as decided for the last traced step.

        ``path`` is one of ``"fused"``, ``"composite"``, ``"composite-xla"``,
        ``"sparse"`` and ``"sparse-lazy"`` (see ``expectigrad_tf.dispatch``). Decisions are made
        when a step is traced (once per ``tf.function`` trace, every step in
        eager mode). Variables that share a name are told apart by their
        index in the optimizer (``"name [#3]"``).
        """
        with self._dispatch_lock:
            entries = sorted(self._dispatch_log.items())
        names = [name for _, (name, _, _) in entries]
        report = {}
        for index, (name, path, reason) in entries:
            key = name if names.count(name) == 1 else f"{name} [#{index}]"
            report[key] = (path, reason)
        return report

    # -------------------------------------------------------- composite paths
    def update_step(self, gradient, variable, learning_rate):
        """Composite update of one variable (sparse gradient, no fused op, or
        fused=False); the sparse update comes from the backend mixin."""
        if self._is_sparse(gradient):
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

    def _assign_state(self, variable, value):
        """Assigns a step's new value. While a step is gated (inside XLA,
        where runtime assertions are no-ops: see ``TFBackend.apply``), a step
        whose checks failed writes the old value back."""
        ok = getattr(self, "_step_ok", None)
        if ok is not None:
            value = ops.where(ok, ops.cast(value, variable.dtype),
                              ops.convert_to_tensor(variable))
        self.assign(variable, value)

    def _rows_update(self, g, old, scalars):
        """Algorithm 1 on rows of the packed state: ``old`` is the state
        (``(rows,) + shape``, read), ``g`` the gradient in the state dtype.
        Returns (new state rows stacked, the step's momentum or normalised
        gradient ``u`` that moves the variable)."""
        _, step, beta, one_minus_beta, eps = scalars
        count, momentum = self._state_rows()
        gg = g * g
        s = old[0] + gg
        rows = [s]
        if count is not None:
            n = old[count] + ops.sign(gg)
            rows.append(n)
        else:
            n = step
        u = g / (eps + ops.sqrt(ops.divide_no_nan(s, n)))
        if momentum is not None:
            u = beta * old[momentum] + one_minus_beta * u
            rows.append(u)
        return ops.stack(rows), u

    def _dense_values(self, gradient, x, state, scalars):
        """One dense step on read values: (new state, new variable value)."""
        new_state, m = self._rows_update(ops.cast(gradient, state.dtype), state, scalars)
        return new_state, ops.cast(ops.cast(x, state.dtype) - scalars[0] * m, x.dtype)

    def _dense_update(self, gradient, variable, learning_rate):
        state_var = self._state_for(variable)
        new_state, x = self._dense_values(
            gradient, ops.convert_to_tensor(variable), ops.convert_to_tensor(state_var),
            self._scalars(learning_rate, state_var.dtype))
        self._assign_state(state_var, new_state)
        self._assign_state(variable, x)


if Expectigrad.__doc__ is not None:
    Expectigrad.__doc__ = Expectigrad.__doc__.replace(
        "{{base_optimizer_keyword_args}}",
        keras.optimizers.Optimizer.__doc__ and __import__(
            "keras.src.optimizers.optimizer", fromlist=["x"]
        ).base_optimizer_keyword_args or "",
    )
