"""Expectigrad as a ``tf.compat.v1.train.Optimizer``, for TF1-style code
(graphs and Sessions, ``minimize()``, ``tf.compat.v1.train.Saver``) and for
``apply_gradients`` in TF2 eager mode.

    import tensorflow as tf
    from expectigrad_tf.compat.v1 import ExpectigradOptimizer

    with tf.Graph().as_default():
        w = tf.compat.v1.get_variable("w", [10], use_resource=True)
        loss = tf.reduce_sum(tf.square(w - 1.0))
        train_op = ExpectigradOptimizer(learning_rate=0.01).minimize(loss)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(train_op)

Resource variables only (TF2's default; in TF1 code use ``use_resource=True``
or ``tf.compat.v1.enable_resource_variables()``). Dense gradients go through
the same fused op as the Keras classes (one op call per variable), sparse
gradients (``tf.IndexedSlices``, e.g. from ``tf.gather``) through the exact
sparse composite path of the Keras 3 class, and dense gradients that cannot
take the op (no op library, another dtype) through its composite maths: the
code is shared with ``expectigrad_tf.optimizer`` and ``expectigrad_tf._backend_tf``,
so the three classes compute the same thing.
"""

import numbers
import threading

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.training import optimizer as _tf_optimizer

from expectigrad_tf import dispatch
from expectigrad_tf import optimizer as _k3
from expectigrad_tf._backend_tf import TFBackend

__all__ = ["ExpectigradOptimizer"]

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        "expectigrad_tf.compat.v1 shares its composite maths (keras.ops) with the Keras 3 "
        "class and needs Keras 3's TensorFlow backend, but KERAS_BACKEND is "
        f"{keras.backend.backend()!r}: unset it or set KERAS_BACKEND=tensorflow"
    )

_STEP = "step"


class ExpectigradOptimizer(tf.compat.v1.train.Optimizer):
    """Optimizer that implements Expectigrad (Algorithm 1 of the paper); see
    ``expectigrad_tf.optimizer.Expectigrad`` for the maths.

    Args:
        learning_rate: A float > 0, a scalar tensor or a callable returning
            one (a tensor is checked when a step runs: finite and >= 0).
            A Python float is used at each variable's own precision (float64
            variables get the float64 value). Defaults to ``0.001``.
        beta: Momentum constant in [0, 1). Defaults to ``0.9``.
        epsilon: Denominator constant > 0. Defaults to ``1e-8``.
        sparse_counter: If True (default), count each element's nonzero
            gradients (state row ``count``); if False, ``n = t``.
        use_locking: Accepted for the API of ``tf.compat.v1`` optimizers. The
            fused op always updates a variable and its slots under their
            locks; the sparse path uses resource scatter ops.
        name: Name of the slots' and step's scope. Defaults to
            ``"Expectigrad"``.
        lazy_sparse: (keyword only) False (default): a ``tf.IndexedSlices``
            gradient gives Algorithm 1's exact update; True: only its rows of
            every slot and of the variable change, as in the Keras 3 class.

    Slot (``get_slot(var, "state")``): one packed variable of shape
    ``(rows,) + var.shape``: ``sum``, then ``count`` (if
    ``sparse_counter``), then ``momentum`` (if ``beta > 0``); float32 for
    16-bit variables. ``slot_values(var)`` (eager) returns the rows by
    name. The step ``t - 1`` is a non-trainable int64 variable
    (``iterations``; ``<name>_step`` in a graph), saved with the other
    variables by ``tf.compat.v1.train.Saver`` and ``tf.train.Checkpoint``.

    Raises:
        ValueError: an argument is invalid (the message names it and its value).
    """

    fused = None  # the fused op where possible (read by the shared dispatch)

    def __init__(self, learning_rate=0.001, beta=0.9, epsilon=1e-8, sparse_counter=True,
                 use_locking=False, name="Expectigrad", *, lazy_sparse=False):
        if isinstance(learning_rate, (str, bytes, bool)) or not (
                isinstance(learning_rate, (numbers.Real, np.ndarray, tf.Variable))
                or tf.is_tensor(learning_rate) or callable(learning_rate)):
            raise ValueError(
                "Expectigrad: `learning_rate` must be a number, a scalar tensor or a callable, "
                f"got learning_rate={learning_rate!r}")
        try:
            learning_rate, beta, epsilon, sparse_counter = _k3.check_arguments(
                learning_rate, beta, epsilon, sparse_counter)
            lazy_sparse = _k3._check_bool("lazy_sparse", lazy_sparse, TypeError)
        except TypeError as e:  # wrong type: a ValueError here, like a wrong value
            raise ValueError(str(e)) from None
        if not isinstance(use_locking, (bool, np.bool_)):
            raise ValueError(
                f"Expectigrad: `use_locking` must be True or False, got use_locking={use_locking!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"Expectigrad: `name` must be a non-empty string, got name={name!r}")
        super().__init__(bool(use_locking), name)
        self._learning_rate = learning_rate
        self.beta = beta
        self.epsilon = epsilon
        self.sparse_counter = sparse_counter
        self.lazy_sparse = lazy_sparse
        self._lr = None
        self._index = {}  # variable key -> order, for dispatch_report()
        self._dispatch_log = {}
        self._dispatch_lock = threading.Lock()
        self._step_ok = None  # the shared code gates writes with it (Keras 3 under XLA)

    # ------------------------------------------------------------------ state
    def _valid_dtypes(self):
        return {tf.float16, tf.bfloat16, tf.float32, tf.float64}

    def _create_slots(self, var_list):
        first = min(var_list, key=lambda v: v.name)
        self._create_non_slot_variable(
            initial_value=tf.constant(0, tf.int64), name=f"{self._name}_{_STEP}",
            colocate_with=first)
        for var in var_list:
            self._index.setdefault(_tf_optimizer._var_key(var), len(self._index))
            # Shape and dtype come from the override below.
            self._get_or_make_slot_with_initializer(
                var, tf.compat.v1.zeros_initializer(), var.shape, var.dtype.base_dtype,
                "state", self._name)

    def _get_or_make_slot_with_initializer(self, var, initializer, shape, dtype, slot_name,
                                           op_name):
        """The base class's, with the packed state's shape and dtype, for
        every caller: ``_create_slots`` and the eager checkpoint restore
        (``_create_or_restore_slot_variable``), which passes the variable's
        shape and dtype."""
        if slot_name == "state":
            shape = tf.TensorShape([self._num_state_rows()]).concatenate(var.shape)
            dtype = tf.as_dtype(self._state_dtype(var.dtype.base_dtype))
        return super()._get_or_make_slot_with_initializer(
            var, initializer, shape, dtype, slot_name, op_name)

    @property
    def iterations(self):
        """The step variable: steps taken (``t - 1`` during a step)."""
        graph = None
        if not tf.compat.v1.executing_eagerly_outside_functions():
            graph = tf.compat.v1.get_default_graph()
            while getattr(graph, "outer_graph", None) is not None:
                graph = graph.outer_graph
        step = self._get_non_slot_variable(f"{self._name}_{_STEP}", graph=graph)
        if step is None:
            raise ValueError("Expectigrad: no step variable yet (apply gradients first)")
        return step

    def _state_for(self, variable):
        return self.get_slot(variable, "state")

    def _get_variable_index(self, variable):
        return self._index.get(_tf_optimizer._var_key(variable), len(self._index))

    def assign(self, variable, value):
        """What the shared composite code calls to write a state variable."""
        return variable.assign(value, use_locking=self._use_locking)

    # --------------------------------------------------------------- updates
    def apply_gradients(self, grads_and_vars, global_step=None, name=None, **kwargs):
        """``tf.compat.v1.train.Optimizer.apply_gradients`` after the static
        shape check every Expectigrad class shares (no broadcasting)."""
        grads_and_vars = tuple(grads_and_vars)
        for grad, var in grads_and_vars:
            self._check_gradient_shape(grad, var)
        return super().apply_gradients(grads_and_vars, global_step=global_step, name=name,
                                       **kwargs)

    def _prepare(self):
        lr = self._call_if_callable(self._learning_rate)
        self._lr = lr if isinstance(lr, float) else tf.convert_to_tensor(lr, name="learning_rate")

    def _lr_for(self, var):
        """The learning rate at the precision of ``var``'s state (a Python
        float is converted straight to it)."""
        state = tf.float64 if var.dtype.base_dtype == tf.float64 else tf.float32
        if isinstance(self._lr, float):
            return tf.constant(self._lr, state)
        return tf.cast(self._lr, state)

    def _lr_check(self, lr):
        return tf.debugging.Assert(
            tf.logical_and(tf.math.is_finite(lr), lr >= tf.zeros([], lr.dtype)),
            ["Expectigrad: the learning rate (learning_rate) must be finite and >= 0, "
             "got learning_rate =", lr],
            name="expectigrad_check_learning_rate")

    def _resource_apply_dense(self, grad, var):
        lr = self._lr_for(var)
        if self._choose(grad, var) == dispatch.FUSED:
            return self._fused_apply([var], [grad], lr)  # the op checks lr itself
        return self._composite(self._dense_update, grad, var, lr)

    def _resource_apply_sparse_duplicate_indices(self, grad, var, indices):
        # The shared sparse path sums duplicate indices itself.
        slices = tf.IndexedSlices(grad, indices, tf.shape(var, out_type=indices.dtype))
        self._choose(slices, var)
        return self._composite(self._sparse_update, slices, var, self._lr_for(var))

    def _composite(self, update, grad, var, lr):
        """Runs a shared composite update (written for TF2's automatic
        control dependencies: several reads and writes, nothing returned)
        after the runtime checks, as one op: in a TF1 graph it is traced into
        a ``tf.function``, whose call runs all of its state changes in program
        order."""
        def run():
            checks = [self._lr_check(lr)] + self._runtime_gradient_checks(grad, var)
            if tf.executing_eagerly():
                update(grad, var, lr)  # the checks have run
                return None
            with tf.control_dependencies(checks):
                update(grad, var, lr)
            return tf.constant(True)

        if tf.executing_eagerly() or tf.compat.v1.executing_eagerly_outside_functions():
            return run()  # eager, or inside a TF2 tf.function (automatic control deps)
        return tf.function(run, autograph=False)().op

    def _finish(self, update_ops, name_scope):
        with tf.control_dependencies(update_ops):
            increment = self.iterations.assign_add(1, use_locking=self._use_locking)
        return tf.group(*update_ops, increment, name=name_scope)

    def _apply_dense(self, grad, var):
        raise NotImplementedError(self._ref_variable_message(var))

    def _apply_sparse(self, grad, var):
        raise NotImplementedError(self._ref_variable_message(var))

    def _apply_sparse_duplicate_indices(self, grad, var):
        raise NotImplementedError(self._ref_variable_message(var))

    @staticmethod
    def _ref_variable_message(var):
        return (f"ExpectigradOptimizer updates resource variables only, but {var.name} is a "
                "reference variable: create it with use_resource=True or call "
                "tf.compat.v1.enable_resource_variables() first")


# Shared by name with the Keras 3 class (not by inheriting its TF mixin, whose
# Keras 3 overrides are not meant for this base class): the dispatch decision,
# the fused op call, the sparse path and the runtime checks from _backend_tf;
# the argument-independent maths and helpers from optimizer.Expectigrad.
for _name, _attr in {
    **{name: TFBackend.__dict__[name] for name in (
        "_choose", "_fused_apply", "_sparse_update", "_gate", "_is_sparse",
        "_fused_unavailable_reason", "_indices_in_range", "_runtime_gradient_checks",
        "_state_row_indices")},
    "_state_dtype": _k3.Expectigrad.__dict__["_state_dtype"],
    **{name: _k3.Expectigrad.__dict__[name] for name in (
        "_num_state_rows", "_state_rows", "_slots_for", "slot_values", "_rows_update")},
    "_scalars": _k3.Expectigrad.__dict__["_scalars"],
    "_assign_state": _k3.Expectigrad.__dict__["_assign_state"],
    "_dense_update": _k3.Expectigrad.__dict__["_dense_update"],  # the composite maths
    "_dense_values": _k3.Expectigrad.__dict__["_dense_values"],
    "_check_gradient_shape": _k3.Expectigrad.__dict__["_check_gradient_shape"],
    "_record": _k3.Expectigrad.__dict__["_record"],
    "dispatch_report": _k3.Expectigrad.__dict__["dispatch_report"],
}.items():
    setattr(ExpectigradOptimizer, _name, _attr)
del _name, _attr
