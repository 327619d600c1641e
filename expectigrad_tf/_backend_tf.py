"""TensorFlow plumbing of the optimizer: fused dispatch, the op call, the sparse
path, slot placement.

Composed into ``Expectigrad`` the way Keras composes its backend optimizers
(``keras.optimizers.Optimizer`` is ``TFOptimizer`` on this backend): ``apply``
(the runtime checks of a step, which every state change of the step, Keras's
``iterations`` increment included, depends on) and ``_distributed_tf_update_step`` (groups the
variables that take the fused op by dtype and device, one op call per group and
replica; the others take ``update_step``).
"""

import keras
import tensorflow as tf
from tensorflow.python.ops import control_flow_util

from expectigrad_tf import _ops, dispatch
from expectigrad_tf._gating import GatedKerasWrites


def in_xla():
    """True while tracing inside an XLA compilation (jit_compile=True)."""
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def tf_variable(v):
    """The ``tf.Variable`` behind a Keras 3 variable; a ``tf.Variable`` (the
    tf_keras and tf.compat.v1 optimizers' slots) as it is."""
    return v.value if isinstance(v, keras.Variable) else v


class TFBackend(GatedKerasWrites):
    """Mixin over ``keras.optimizers.Optimizer`` (TF backend)."""

    # ------------------------------------------------------------- slots
    def _make_state_slot(self, ref, name, dtype, shape):
        """A zeros state variable, placed with ``ref``."""
        colocate = ref.value if isinstance(ref, keras.Variable) else ref
        with self._distribution_strategy.extended.colocate_vars_with(colocate):
            return self._new_state_variable(ref, name, dtype, shape)

    # ---------------------------------------------------------- dispatch
    def _choose(self, grad, var, strategy=None):
        status = _ops.fused_status()
        op_reason = _ops.unavailable_reason()
        path, reason = dispatch.choose_path(
            sparse=isinstance(grad, tf.IndexedSlices),
            in_xla=in_xla(),
            fused=self.fused,
            op_reason=op_reason,
            dtype=keras.backend.standardize_dtype(var.dtype),
            on_gpu="GPU" in (var.device or "").upper(),
            gpu_reason=None if "GPU" in status["devices"] else status["gpu_reason"],
            strategy=strategy,
            variable=getattr(var, "name", "variable"),
            lazy_sparse=self.lazy_sparse,
            xla_reason=status["xla_reason"],
        )
        if (op_reason is not None and self.fused is None
                and path not in (dispatch.SPARSE, dispatch.SPARSE_LAZY)):
            _ops.warn_once_unavailable()
        self._record(var, path, reason)
        return path

    def apply(self, grads, trainable_variables=None):
        """Runtime checks of a step, then Keras's ``apply``, so that a failed
        step changes nothing, ``iterations`` included.

        Outside XLA the checks are assertions (learning rate finite and >= 0,
        dynamic gradient shapes, sparse indices in range) and every op of the
        step, Keras's ``iterations.assign_add`` included, has them as control
        dependencies: a failing check raises ``InvalidArgumentError`` before
        anything is written. Inside XLA assertions compile to no-ops, so the
        step is gated instead: each state write (slots, variables updated by
        the composite or sparse path, ``iterations``) writes the old value back
        when the learning rate is bad or a sparse gradient has an index out of
        range; the fused op's custom call raises on a bad learning rate.
        """
        if not len(grads) or (trainable_variables is None and not self.built):
            return super().apply(grads, trainable_variables)
        variables = (list(trainable_variables) if trainable_variables is not None
                     else list(self._trainable_variables))
        lr = tf.convert_to_tensor(self.learning_rate)
        if in_xla():
            ok = tf.logical_and(tf.math.is_finite(lr), lr >= tf.zeros([], lr.dtype))
            for grad, var in zip(grads, variables):
                in_range = self._indices_in_range(grad, var)
                if in_range is not None:
                    ok = tf.logical_and(ok, in_range)
            return self._gated_apply(ok, grads, trainable_variables)
        checks = [tf.debugging.Assert(
            tf.logical_and(tf.math.is_finite(lr), lr >= tf.zeros([], lr.dtype)),
            ["Expectigrad: the learning rate (learning_rate, lr) must be finite and >= 0 (check the "
             "schedule or callable), got learning_rate =", lr],
            name="expectigrad_check_learning_rate",
        )]
        for grad, var in zip(grads, variables):
            checks.extend(self._runtime_gradient_checks(grad, var))
        if tf.executing_eagerly():
            return super().apply(grads, trainable_variables)  # the checks have run
        with tf.control_dependencies(checks):
            # Give gradients of unknown shape their (checked) static shape
            # (not with tf.ensure_shape: TF specialises the function on the
            # input's shape and would fail it before the assertion).
            grads = [self._with_static_shape(g, v) for g, v in zip(grads, variables)]
            return super().apply(grads, trainable_variables)

    @staticmethod
    def _with_static_shape(grad, var):
        if not isinstance(grad, tf.Tensor) or grad.shape.is_fully_defined():
            return grad
        grad = tf.identity(grad)
        grad.set_shape(var.shape)
        return grad

    @staticmethod
    def _indices_in_range(grad, var):
        """For a ``tf.IndexedSlices`` gradient: whether all its indices are
        in [0, rows) (a bool tensor); None for other gradients."""
        if not isinstance(grad, tf.IndexedSlices) or not var.shape:
            return None
        idx = tf.cast(grad.indices, tf.int64)
        return tf.reduce_all(tf.logical_and(idx >= 0, idx < int(var.shape[0])))

    @classmethod
    def _runtime_gradient_checks(cls, grad, var):
        """Assertions for what the static shape check cannot see: a gradient
        of unknown shape, sparse indices out of range."""
        if grad is None:
            return []
        name = getattr(var, "path", None) or getattr(var, "name", "variable")
        want = [int(d) for d in var.shape]
        if isinstance(grad, tf.IndexedSlices):
            if not want:
                return []
            return [tf.debugging.Assert(
                cls._indices_in_range(grad, var),
                [f"Expectigrad: sparse gradient indices for variable {name!r} must be "
                 f"in [0, {want[0]}), got indices =", grad.indices],
                name="expectigrad_check_indices",
            )]
        if grad.shape.is_fully_defined():
            return []  # checked statically
        got = tf.shape(grad, out_type=tf.int64)
        padded = tf.concat([got, tf.fill([len(want) + 1], tf.constant(-1, tf.int64))], 0)
        return [tf.debugging.Assert(
            tf.reduce_all(tf.equal(padded[: len(want) + 1], tf.constant(want + [-1], tf.int64))),
            [f"Expectigrad: the gradient for variable {name!r} must have shape "
             f"{tuple(want)} (no broadcasting), got shape", got],
            name="expectigrad_check_gradient_shape",
        )]

    def _distributed_tf_update_step(self, distribution, grads_and_vars, learning_rate):
        strategy = type(distribution).__name__
        groups = {}  # (dtype, device) -> [(grad, var)] for the fused op
        for grad, var in grads_and_vars:
            if self._choose(grad, var, strategy) == dispatch.FUSED:
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
            # One op call per group and replica: inside update(), distributed
            # variables resolve to this replica's component and per-replica
            # args (gradients, learning rate) are selected for it.
            distribution.extended.update(
                variables[0],
                # vs=variables binds this group now, not the loop's last one.
                lambda _, gs, lr, vs=variables: self._fused_apply(vs, gs, lr),
                args=(grads, learning_rate),
                group=False,
            )

    # ------------------------------------------------------------ fused op
    def _fused_apply(self, variables, grads, learning_rate):
        state = self._state_dtype(variables[0].dtype)
        scalar_dtype = tf.float64 if state == "float64" else tf.float32
        lr = tf.cast(learning_rate, scalar_dtype)
        ok = getattr(self, "_step_ok", None)
        if ok is not None:
            # A gated step (inside XLA) whose checks failed, e.g. a sparse
            # index out of range: a NaN lr makes the custom call change
            # nothing (the CPU handler raises, the CUDA handler skips).
            lr = tf.where(ok, lr, tf.constant(float("nan"), scalar_dtype))
        return _ops.op_module().expectigrad_apply(
            var=[v.handle for v in variables],
            state=[tf_variable(self._state_for(v)).handle for v in variables],
            grad=[tf.cast(g, v.dtype) for g, v in zip(grads, variables)],
            lr=lr,
            beta=tf.constant(self.beta, scalar_dtype),
            epsilon=tf.constant(self.epsilon, scalar_dtype),
            step=tf.cast(self.iterations + 1, tf.int64),
            sparse_counter=bool(self.sparse_counter),
            momentum=bool(self.beta > 0),
        )

    # --------------------------------------------------------- sparse path
    @staticmethod
    def _is_sparse(gradient):
        return isinstance(gradient, tf.IndexedSlices)

    def _sparse_update(self, gradient, variable, learning_rate):
        """Rows-only update for tf.IndexedSlices. Exact (default): equal to
        the dense update of the densified gradient: sum/count change only on
        the given rows, the momentum decays everywhere. Lazy
        (``lazy_sparse=True``): momentum and variable change only on the given
        rows too (bias correction with the global step)."""
        state_var = tf_variable(self._state_for(variable))
        state = state_var.dtype
        scalars = self._scalars(learning_rate, state)
        lr_t, beta = scalars[0], scalars[2]
        _, momentum = self._state_rows()
        # Sum duplicate indices first, as densifying would.
        indices, positions = tf.unique(gradient.indices)
        values = tf.math.unsorted_segment_sum(gradient.values, positions, tf.shape(indices)[0])
        g = tf.cast(values, state)
        var = tf_variable(variable)
        if momentum is not None and not self.lazy_sparse:
            # Exact with momentum: every row's momentum decays, so the whole
            # state and variable are written (O(table)).
            old = tf.convert_to_tensor(state_var)
            new_rows, _ = self._rows_update(g, tf.gather(old, indices, axis=1), scalars)
            bases = [old[j] for j in range(self._num_state_rows())]
            bases[momentum] = beta * bases[momentum]
            new = tf.stack([tf.tensor_scatter_nd_update(base, indices[:, None], new_rows[j])
                            for j, base in enumerate(bases)])
            x = tf.cast(variable, state) - lr_t * new[momentum]
            self._assign_state(state_var, new)
            self._assign_state(variable, tf.cast(x, variable.dtype))
            return
        # Rows only: sum, count (and, lazily, momentum) and the variable,
        # read and written with resource gathers/scatters, O(rows given).
        # Outside XLA tf.gather(state, axis=1) would read the whole state;
        # inside XLA reading a variable is free, and ResourceGatherNd has no
        # XLA kernel.
        where = self._state_row_indices(indices, self._num_state_rows())
        if in_xla():
            old_rows = tf.gather(state_var, indices, axis=1)  # (state rows, k, ...)
        else:
            old_rows = tf.gather_nd(state_var, where)
        new_rows, m = self._rows_update(g, old_rows, scalars)
        x_old = tf.gather(var, indices)
        x_rows = tf.cast(tf.cast(x_old, state) - lr_t * m, var.dtype)
        state_var.scatter_nd_update(where, self._gate(new_rows, old_rows))
        var.scatter_update(tf.IndexedSlices(self._gate(x_rows, x_old), indices))

    @staticmethod
    def _state_row_indices(indices, rows):
        """``scatter_nd`` indices of the given table rows in every state row:
        shape (rows, k, 2), entry (r, i) = (r, indices[i])."""
        idx = tf.cast(indices, tf.int64)
        r = tf.range(rows, dtype=tf.int64)
        return tf.stack([tf.broadcast_to(r[:, None], [rows, tf.shape(idx)[0]]),
                         tf.broadcast_to(idx[None, :], [rows, tf.shape(idx)[0]])], axis=-1)

    def _gate(self, new, old):
        """``new``, or ``old`` when a gated step's checks failed (see apply)."""
        ok = getattr(self, "_step_ok", None)
        return new if ok is None else tf.where(ok, new, old)

    # ------------------------------------------------------------ status
    def _fused_unavailable_reason(self):
        if self.fused is False:
            return "fused=False"
        return _ops.unavailable_reason()
