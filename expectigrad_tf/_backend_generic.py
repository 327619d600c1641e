"""Plumbing for Keras backends other than TensorFlow (JAX, PyTorch): every
variable takes the composite update written in ``keras.ops``."""

import keras

from expectigrad_tf import dispatch


class GenericBackend:
    """Mixin over ``keras.optimizers.Optimizer`` (non-TF backends)."""

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        for grad, var in zip(grads, trainable_variables):
            path, reason = dispatch.choose_path(
                sparse=False,
                in_xla=False,
                fused=self.fused,
                backend=keras.backend.backend(),
                variable=getattr(var, "name", "variable"),
            )
            self._record(var, path, reason)
        super()._backend_update_step(grads, trainable_variables, learning_rate)

    def _make_state_slot(self, ref, name, dtype, shape):
        return self._new_state_variable(ref, name, dtype, shape)

    @staticmethod
    def _is_sparse(gradient):
        return False

    def _fused_unavailable_reason(self):
        if self.fused is False:
            return "fused=False"
        return f"Keras backend is {keras.backend.backend()!r}, not 'tensorflow'"
