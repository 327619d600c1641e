"""Keras's own writes of a step (weight decay, EMA, gradient accumulators)
held back when the step is gated: inside XLA on TensorFlow and inside
``jax.jit`` on JAX, where a failed check cannot raise, the backend's ``apply``
sets ``_step_ok`` and each write below keeps its old value when it is False.
They run only when configured, so the default step pays nothing. (Keras's JAX
optimizer writes its gradient accumulators and the periodic EMA overwrite
inline, not through these methods: on JAX those are not held back.)

A mixin shared by ``TFBackend`` and ``GenericBackend`` (before Keras's
optimizer in the MRO), written in ``keras.ops``.
"""

from keras import ops


class GatedKerasWrites:
    def _gated_apply(self, ok, grads, trainable_variables):
        """Keras's ``apply`` with the step gated on ``ok`` (a bool tensor):
        every write of the step, ``iterations`` included, keeps its old
        value when it is False."""
        before = ops.copy(self._iterations)
        self._step_ok = ok
        try:
            result = super(GatedKerasWrites, self).apply(grads, trainable_variables)
        finally:
            self._step_ok = None
        self._iterations.assign(ops.where(ok, before + 1, before))
        return result

    def _gated_writes(self, variables, write):
        ok = getattr(self, "_step_ok", None)
        if ok is None:
            return write()
        variables = list(variables)
        # Read before the write. (On TensorFlow ops.convert_to_tensor would
        # return the variable itself, read only later; ops.copy reads now.)
        before = [ops.copy(v) for v in variables]
        result = write()
        for v, old in zip(variables, before):
            v.assign(ops.where(ok, ops.copy(v), old))
        return result

    def _apply_weight_decay(self, variables):
        if self.weight_decay is None:
            return super()._apply_weight_decay(variables)
        return self._gated_writes(
            [v for v in variables if self._use_weight_decay(v)],
            lambda: super(GatedKerasWrites, self)._apply_weight_decay(variables))

    def _update_model_variables_moving_average(self, trainable_variables):
        return self._gated_writes(
            self._model_variables_moving_average if self.use_ema else [],
            lambda: super(GatedKerasWrites, self)._update_model_variables_moving_average(
                trainable_variables))

    def _overwrite_model_variables_with_average_value(self, trainable_variables):
        return self._gated_writes(
            trainable_variables,
            lambda: super(GatedKerasWrites, self)._overwrite_model_variables_with_average_value(
                trainable_variables))

    def _backend_increment_gradient_accumulators(self, grads, acc_grads):
        return self._gated_writes(
            acc_grads,
            lambda: super(GatedKerasWrites, self)._backend_increment_gradient_accumulators(
                grads, acc_grads))

    def _backend_reset_gradient_accumulators(self):
        return self._gated_writes(
            self._accumulated_gradients,
            lambda: super(GatedKerasWrites, self)._backend_reset_gradient_accumulators())
