"""TensorFlow plumbing of the optimizer: fused dispatch, the op call, the sparse
path, slot placement.

Composed into ``Expectigrad`` the way Keras composes its backend optimizers
(``keras.optimizers.Optimizer`` is ``TFOptimizer`` on this backend): only the
two hooks Keras's TF optimizer exposes for the update are overridden,
``_backend_update_step`` (checks the learning rate, then defers to Keras:
all-reduce and merge call) and ``_distributed_tf_update_step`` (groups the
variables that take the fused op by dtype and device, one op call per group and
replica; the others take ``update_step``).
"""

import keras
import tensorflow as tf
from tensorflow.python.ops import control_flow_util

from expectigrad_tf import _ops, dispatch


def in_xla():
    """True while tracing inside an XLA compilation (jit_compile=True)."""
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


class TFBackend:
    """Mixin over ``keras.optimizers.Optimizer`` (TF backend)."""

    # ------------------------------------------------------------- slots
    def _make_state_slot(self, ref, name, dtype):
        """A zeros slot of another dtype than ``ref``, placed with ``ref``."""
        make = super()._make_state_slot
        colocate = ref.value if isinstance(ref, keras.Variable) else ref
        with self._distribution_strategy.extended.colocate_vars_with(colocate):
            return make(ref, name, dtype)

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
        )
        if op_reason is not None and self.fused is None and path != dispatch.SPARSE:
            _ops.warn_once_unavailable()
        self._record(var, path, reason)
        return path

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # A schedule or callable may produce NaN/inf or a negative value: fail
        # at this step on every path (inside XLA the fused op's handler checks
        # it before it writes anything).
        if not in_xla():
            lr = tf.convert_to_tensor(learning_rate)
            lr = tf.debugging.check_numerics(
                lr, "Expectigrad: the learning rate is not finite (check the schedule)"
            )
            with tf.control_dependencies([
                tf.debugging.assert_greater_equal(
                    lr, tf.zeros([], lr.dtype),
                    message="Expectigrad: the learning rate must be >= 0 (check the schedule)",
                )
            ]):
                learning_rate = tf.identity(lr)
        super()._backend_update_step(grads, trainable_variables, learning_rate)

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

    # --------------------------------------------------------- sparse path
    @staticmethod
    def _is_sparse(gradient):
        return isinstance(gradient, tf.IndexedSlices)

    def _sparse_update(self, gradient, variable, learning_rate):
        """Rows-only update for tf.IndexedSlices; equal to the dense update of
        the densified gradient: sum/count change only on the given rows, the
        momentum decays everywhere."""
        s_var, n_var, m_var = self._slots_for(variable)
        state = s_var.dtype
        lr_t, step, beta, one_minus_beta, eps = self._scalars(learning_rate, state)
        # Sum duplicate indices first, as densifying would.
        indices, positions = tf.unique(gradient.indices)
        values = tf.math.unsorted_segment_sum(gradient.values, positions, tf.shape(indices)[0])
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

    # ------------------------------------------------------------ status
    def _fused_unavailable_reason(self):
        if self.fused is False:
            return "fused=False"
        return _ops.unavailable_reason()
