"""Plumbing for Keras backends other than TensorFlow (JAX, PyTorch).

- JAX: dense float32/float64 variables on the CPU take the fused kernel, the
  same XLA:CPU handler as TensorFlow's XLA lowering, called with
  ``jax.ffi.ffi_call`` (``_jax_ffi``), one call per dtype; the others (16-bit,
  GPU, a ``keras.distribution``, ``fused=False``, no JAX library) take the
  composite update written in ``keras.ops``.
- PyTorch: the composite update.

A step with a bad learning rate (not finite, or < 0) changes nothing. Where
its value can be read (PyTorch, JAX outside ``jit``) it raises ``ValueError``
first. Inside ``jit`` (Keras's JAX ``fit``) nothing can raise, so the step is
skipped: the state, the variables, ``iterations``, weight decay and the EMA
update keep their old values, so ``optimizer.iterations`` stops counting.
(JAX's gradient accumulators and periodic EMA overwrite, written inline by
Keras's JAX optimizer, are not held back.)
(A warning from inside the step, with ``jax.debug.callback`` under a
``lax.cond``, was tried: it made every step 2-5x slower on XLA:CPU, so
there is none.)
"""

import keras
from keras import ops

from expectigrad_tf import dispatch
from expectigrad_tf._gating import GatedKerasWrites

_LR_MESSAGE = ("Expectigrad: the learning rate (learning_rate, lr) must be finite and >= 0 "
               "(check the schedule or callable), got learning_rate =")


def _traced(x):
    """True for a JAX tracer (a value not known until the step runs)."""
    if keras.backend.backend() != "jax":
        return False
    import jax

    return isinstance(x, jax.core.Tracer)


class GenericBackend(GatedKerasWrites):
    """Mixin over ``keras.optimizers.Optimizer`` (non-TF backends)."""

    def apply(self, grads, trainable_variables=None):
        """The learning-rate check of a step, then Keras's ``apply``; see the
        module docstring."""
        if not len(grads) or (trainable_variables is None and not self.built):
            return super().apply(grads, trainable_variables)
        lr = ops.convert_to_tensor(self.learning_rate)
        ok = ops.logical_and(ops.isfinite(lr), ops.greater_equal(lr, ops.zeros((), lr.dtype)))
        if not _traced(ok):
            if not bool(ops.convert_to_numpy(ok)):
                raise ValueError(f"{_LR_MESSAGE} {float(ops.convert_to_numpy(lr))!r}")
            return super().apply(grads, trainable_variables)
        return self._gated_apply(ok, grads, trainable_variables)

    # ------------------------------------------------------------ dispatch
    def _step_facts(self):
        """choose_path's facts about this backend, once per step."""
        backend = keras.backend.backend()
        facts = {"backend": backend}
        if backend == "jax" and self.fused is not False:
            from expectigrad_tf import _jax_ffi

            dist = keras.distribution.distribution()
            facts.update(op_reason=_jax_ffi.status()["reason"],
                         gpu_reason="the JAX library has the XLA:CPU handler only",
                         strategy=None if dist is None else type(dist).__name__)
        return facts

    @staticmethod
    def _on_accelerator(var):
        """Whether a JAX variable lives off the CPU: its concrete array (a
        custom loop keeps it while a jitted step traces; it may have been
        donated since), else JAX's default backend."""
        import jax

        value = getattr(var, "_value", None)
        if (isinstance(value, jax.Array) and not isinstance(value, jax.core.Tracer)
                and not value.is_deleted()):
            return {d.platform for d in value.devices()} != {"cpu"}
        return jax.default_backend() != "cpu"

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        facts = self._step_facts()
        groups = {}  # dtype -> [(grad, var)] for the fused kernel
        rest = []
        for grad, var in zip(grads, trainable_variables):
            dtype = keras.backend.standardize_dtype(var.dtype)
            on_gpu = "gpu_reason" in facts and self._on_accelerator(var)  # JAX only
            path, reason = dispatch.choose_path(
                sparse=False, in_xla=False, fused=self.fused, dtype=dtype, on_gpu=on_gpu,
                variable=getattr(var, "name", "variable"), **facts)
            self._record(var, path, reason)
            if path == dispatch.FUSED:
                groups.setdefault(dtype, []).append((grad, var))
            else:
                rest.append((grad, var))
        for pairs in groups.values():
            self._jax_fused_apply([v for _, v in pairs], [g for g, _ in pairs], learning_rate)
        if rest:
            super()._backend_update_step([g for g, _ in rest], [v for _, v in rest],
                                         learning_rate)

    def _jax_fused_apply(self, variables, grads, learning_rate):
        """One custom call for same-dtype variables (see ``_jax_ffi``), not
        gated: on a bad learning rate the handler itself leaves everything
        unchanged, so the state is updated in place.

        Which platform a jitted step runs on is decided when XLA compiles it,
        not here: ``jax.lax.platform_dependent`` emits the custom call for the
        CPU only and the composite update for any other platform (there is no
        GPU handler), so a step that lands on a GPU still runs."""
        import jax

        from expectigrad_tf import _jax_ffi
        from expectigrad_tf.optimizer import _check_number

        # Python floats that may have been changed since construction: checked
        # now, while tracing, before JAX has taken (donated) any buffer.
        beta = _check_number("beta", self.beta, 0.0, True, 1.0)
        epsilon = _check_number("epsilon", self.epsilon, 0.0, False)
        states = [self._state_for(v) for v in variables]
        state_dtype = self._state_dtype(variables[0].dtype)
        grads = [ops.cast(g, v.dtype) for g, v in zip(grads, variables)]

        def fused(var_values, state_values):
            return _jax_ffi.apply(
                var_values, state_values, grads, ops.cast(learning_rate, state_dtype),
                ops.convert_to_tensor(self.iterations) + 1,
                beta=beta, epsilon=epsilon, sparse_counter=self.sparse_counter)

        def composite(var_values, state_values):  # as _dense_update, on values
            scalars = self._scalars(learning_rate, state_dtype)
            ok = getattr(self, "_step_ok", None)
            new_vars, new_states = [], []
            for x, old, g in zip(var_values, state_values, grads):
                new, x_new = self._dense_values(g, x, old, scalars)
                if ok is not None:
                    new, x_new = ops.where(ok, new, old), ops.where(ok, x_new, x)
                new_vars.append(x_new)
                new_states.append(new)
            return new_vars, new_states

        new_vars, new_states = jax.lax.platform_dependent(
            [v.value for v in variables], [s.value for s in states],
            cpu=fused, default=composite)
        for v, new in zip(variables, new_vars):
            self.assign(v, new)
        for s, new in zip(states, new_states):
            self.assign(s, new)

    # ------------------------------------------------------------- misc
    def _make_state_slot(self, ref, name, dtype, shape):
        return self._new_state_variable(ref, name, dtype, shape)

    @staticmethod
    def _is_sparse(gradient):
        return False

    def _fused_unavailable_reason(self):
        if self.fused is False:
            return "fused=False"
        if keras.backend.backend() == "jax":
            from expectigrad_tf import _jax_ffi

            return _jax_ffi.status()["reason"]
        return dispatch.backend_reason(keras.backend.backend())
