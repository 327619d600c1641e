"""Expectigrad for tf_keras (Keras 2, ``pip install tf-keras``), the Keras that
``tf.keras`` is when ``TF_USE_LEGACY_KERAS=1``.

    import os
    os.environ["TF_USE_LEGACY_KERAS"] = "1"   # before TensorFlow is imported
    import tensorflow as tf
    import expectigrad_tf

    model.compile(optimizer=expectigrad_tf.Expectigrad(), loss="mse")  # this class

The class has the Keras 3 class's arguments, slots and dispatch, and shares
its code: the argument checks and the composite maths come from
``expectigrad_tf.optimizer``, the fused op call, the dispatch decision and the
sparse path from ``expectigrad_tf._backend_tf``. Only the tf_keras plumbing
(slot creation, ``update_step``, the distributed apply) is written here. It
needs Keras 3 (any TensorFlow 2.16+ installs it) on its TensorFlow backend,
whose ``keras.ops`` the shared composite maths is written in.
"""

import threading

try:
    import tf_keras
except ImportError as _e:  # pragma: no cover - exercised without tf-keras
    raise ImportError(
        "expectigrad_tf.legacy needs tf_keras (the Keras 2 that tf.keras is when "
        "TF_USE_LEGACY_KERAS=1): pip install 'tf-keras~=<your TensorFlow's "
        f"major.minor>.0', e.g. tf-keras~=2.21.0 for TensorFlow 2.21 ({_e})"
    ) from _e
import keras
import numpy as np
import tensorflow as tf

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        "expectigrad_tf.legacy shares its composite maths (keras.ops) with the Keras 3 "
        "class and needs Keras 3's TensorFlow backend, but KERAS_BACKEND is "
        f"{keras.backend.backend()!r}: unset it or set KERAS_BACKEND=tensorflow"
    )

from expectigrad_tf import dispatch  # noqa: E402
from expectigrad_tf import optimizer as _k3  # noqa: E402
from expectigrad_tf._backend_tf import TFBackend  # noqa: E402

__all__ = ["Expectigrad"]


def _borrow(cls, *names):
    """Class attributes ``names`` of ``cls`` as they are defined there
    (staticmethods stay static): the Keras 3 class's methods that need only
    what this class provides (slots, ``iterations``, ``assign``)."""
    return {name: cls.__dict__[name] for name in names}


# From the TF plumbing of the Keras 3 class, by name (not by inheriting the
# mixin, whose Keras 3 overrides would reach tf_keras's methods of the same
# names): the dispatch decision, the fused op call and the sparse path.
_TF_SHARED = _borrow(
    TFBackend, "_choose", "_fused_apply", "_sparse_update", "_gate", "_is_sparse",
    "_fused_unavailable_reason", "_state_row_indices")
_SHARED = _borrow(
    _k3.Expectigrad,
    "_state_dtype",        # float32 state for 16-bit variables
    "_num_state_rows",     # the packed state: 1 + sparse_counter + (beta > 0) rows
    "_state_rows",         # which row is count, which momentum
    "_state_for",          # the state variable of a variable
    "_slots_for",          # (sum, count, momentum) of a variable, read
    "slot_values",         # the same as NumPy arrays, by name
    "_rows_update",        # Algorithm 1 on state rows
    "_scalars",            # lr_t, t, beta, 1 - beta, epsilon
    "_assign_state",
    "_dense_update",       # the composite maths (keras.ops)
    "_dense_values",       # ... on read values
    "_check_gradient_shape",
    "_record",
    "dispatch_report",
)


@tf_keras.saving.register_keras_serializable(package="expectigrad_tf", name="Expectigrad")
class Expectigrad(tf_keras.optimizers.Optimizer):
    """Expectigrad (Algorithm 1 of the paper) as a ``tf_keras`` optimizer.

    Same algorithm, arguments, slots, dispatch and ``dispatch_report()`` as
    ``expectigrad_tf.optimizer.Expectigrad`` (the Keras 3 class; see its
    docstring for the maths): dense gradients go through the fused op, grouped
    by dtype and device (one op call per group and replica); sparse gradients
    (``tf.IndexedSlices``) through the exact sparse composite path;
    ``fused=False`` or a missing op through the composite ops.

    Args:
        learning_rate: A float > 0, a
            ``tf_keras.optimizers.schedules.LearningRateSchedule`` or a
            callable. Defaults to ``1e-3``.
        beta: Momentum constant in [0, 1). Defaults to ``0.9``.
        epsilon: Denominator constant > 0. Defaults to ``1e-8``.
        sparse_counter: If True (default), count each element's nonzero
            gradients (state row ``count``); if False, ``n = t``.
        fused: None (default): the fused op where possible; True: require it;
            False: never.
        lazy_sparse: False (default): a ``tf.IndexedSlices`` gradient gives
            Algorithm 1's exact update; True: only its rows of every slot and
            of the variable change (see the Keras 3 class).
        weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema,
        ema_momentum, ema_overwrite_frequency, jit_compile, name: as for every
            ``tf_keras`` optimizer. ``jit_compile`` (effective only when a GPU
            is present, as in tf_keras) compiles the per-variable composite
            updates with XLA; variables that take the fused op call it outside
            XLA, and sparse gradients are never XLA-compiled here.

    State, per variable: one packed variable of shape ``(rows,) + shape``
    (``sum``, ``count`` if ``sparse_counter``, ``momentum`` if ``beta > 0``),
    float32 for float16/bfloat16 variables, otherwise of the variable's
    dtype; ``slot_values(variable)`` returns the rows by name.
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
        jit_compile=True,
        name="Expectigrad",
        **kwargs,
    ):
        learning_rate, beta, epsilon, sparse_counter = _k3.check_arguments(
            learning_rate, beta, epsilon, sparse_counter)
        fused = _k3.check_fused(fused)
        lazy_sparse = _k3._check_bool("lazy_sparse", lazy_sparse, TypeError)
        super().__init__(
            name=name,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            jit_compile=jit_compile,
            **kwargs,
        )
        self._learning_rate = self._build_learning_rate(learning_rate)
        self.beta = beta
        self.epsilon = epsilon
        self.sparse_counter = sparse_counter
        self.fused = fused
        self.lazy_sparse = lazy_sparse
        self._dispatch_log = self._no_dependency({})
        self._dispatch_lock = threading.Lock()
        self._step_ok = None  # the shared code gates writes with it (Keras 3 under XLA)

    # ------------------------------------------------------------------ state
    def build(self, var_list):
        """Creates the state: one packed variable per trained variable."""
        super().build(var_list)
        if getattr(self, "_built", False):
            return
        if self.fused is True:
            reason = self._fused_unavailable_reason()
            if reason is not None:
                raise RuntimeError(
                    f"Expectigrad(fused=True): the fused op cannot be used: {reason}")
        self._built = True
        self._states = []
        for var in var_list:
            self._states.append(self._add_state(var))

    def _add_state(self, var):
        """The packed state of ``var`` (see the Keras 3 class), created as
        ``add_variable_from_reference`` creates slots (name, placement)."""
        dtype = tf.as_dtype(self._state_dtype(var.dtype))
        shape = (self._num_state_rows(),) + tuple(var.shape)
        with tf.distribute.get_strategy().extended.colocate_vars_with(var):
            state = tf.Variable(tf.zeros(shape, dtype), name=f"state/{var._shared_name}",
                                dtype=dtype, trainable=False)
        self._variables.append(state)
        return state

    def _get_variable_index(self, variable):
        return self._index_dict[self._var_key(variable)]

    def assign(self, variable, value):
        """What the shared composite code calls to write a state variable."""
        return variable.assign(value)

    def load_own_variables(self, store):
        """tf_keras's loading, but strict: a saved state with another number
        of arrays or other shapes (e.g. another ``beta``/``sparse_counter``,
        which change the slots) raises ``ValueError`` and restores nothing,
        where tf_keras would only log a warning and train on from zeros."""
        variables = self.variables
        keys = sorted(store.keys(), key=lambda k: int(k) if str(k).isdigit() else -1)
        values = [store[k] for k in keys]
        saved = [tuple(np.shape(v)) for v in values]
        want = [tuple(v.shape) for v in variables]
        if saved != want:
            raise ValueError(
                f"Expectigrad '{self.name}': the saved optimizer state does not match this "
                f"optimizer (nothing was restored): saved shapes {saved}, expected {want} "
                f"(beta={self.beta}, sparse_counter={self.sparse_counter}"
                + ("" if getattr(self, "_built", False) else ", the optimizer is not built")
                + ")")
        for var, value in zip(variables, values):
            var.assign(value)

    # --------------------------------------------------------------- updates
    def apply_gradients(self, grads_and_vars, name=None, skip_gradients_aggregation=False,
                        **kwargs):
        """tf_keras's ``apply_gradients`` after the static shape check every
        Expectigrad class shares (a gradient must have its variable's shape:
        no broadcasting)."""
        grads_and_vars = list(grads_and_vars)
        for grad, var in grads_and_vars:
            self._check_gradient_shape(grad, var)
        return super().apply_gradients(
            grads_and_vars, name=name, skip_gradients_aggregation=skip_gradients_aggregation,
            **kwargs)

    def update_step(self, gradient, variable):
        """Composite update of one variable (sparse gradient, fused=False or
        no fused op)."""
        if self._is_sparse(gradient):
            return self._sparse_update(gradient, variable, self.learning_rate)
        return self._dense_update(gradient, variable, self.learning_rate)

    def _distributed_apply_gradients_fn(self, distribution, grads_and_vars, **kwargs):
        """tf_keras's distributed apply with the fused op: variables that take
        it are grouped by (dtype, device), one op call per group and replica;
        the others take ``update_step`` (XLA-compiled per variable with
        ``jit_compile``, as tf_keras does, except for sparse gradients)."""
        strategy = type(distribution).__name__
        groups = {}
        for grad, var in grads_and_vars:
            path = self._choose(grad, var, strategy)
            if path == dispatch.FUSED:
                groups.setdefault((var.dtype, var.device), []).append((grad, var))
                continue
            xla = self.jit_compile and path == dispatch.COMPOSITE
            if xla:
                _, _, reason = self._dispatch_log[self._get_variable_index(var)]
                self._record(var, dispatch.COMPOSITE_XLA,
                             reason + " (jit_compile: XLA compiles the composite ops)")

            def apply_one(v, g, xla=xla):
                if xla:
                    return self._update_step_xla(g, v, id(self._var_key(v)))
                return self._update_step(g, v)

            distribution.extended.update(var, apply_one, args=(grad,), group=False)
        for pairs in groups.values():
            variables = [v for _, v in pairs]
            distribution.extended.update(
                variables[0],
                lambda _, gs, vs=variables: self._fused_apply(vs, gs, self.learning_rate),
                args=([g for g, _ in pairs],),
                group=False,
            )
        if self.use_ema:  # as tf_keras's Optimizer does
            var_list = [v for _, v in grads_and_vars]
            self._update_model_variables_moving_average(var_list)
            if self.ema_overwrite_frequency:
                tf.cond(
                    tf.cast((self.iterations + 1) % self.ema_overwrite_frequency == 0, tf.bool),
                    true_fn=lambda: self._overwrite_model_variables_with_average_value(var_list),
                    false_fn=lambda: None,
                )
        return self.iterations.assign_add(1)

    def get_config(self):
        config = super().get_config()
        config.update({
            "learning_rate": self._serialize_hyperparameter(self._learning_rate),
            "beta": self.beta,
            "epsilon": self.epsilon,
            "sparse_counter": self.sparse_counter,
            "fused": self.fused,
            "lazy_sparse": self.lazy_sparse,
        })
        return config


for _name, _attr in {**_TF_SHARED, **_SHARED}.items():
    setattr(Expectigrad, _name, _attr)
del _name, _attr

# No "expectigrad" string identifier for tf_keras: tf_keras saves a model
# compiled with a string as that string and, on loading, turns a string that
# names a custom object into the class (not an instance), which compile()
# rejects; so such a model could be saved but not loaded. Pass an instance.
