import numpy as np
import tensorflow as tf

from expectigrad_tf import Expectigrad


def run_trajectory(problem, x0, steps, opt_kwargs, dtype="float64", use_function=True):
    """Runs Expectigrad on an online problem; returns the final x and optimizer."""
    from expectigrad_tf.reference import online_gradient

    var = tf.Variable(np.asarray(x0, dtype=dtype))
    opt = Expectigrad(**opt_kwargs)
    opt.build([var])

    def step(g):
        opt.apply([g], [var])

    if use_function:
        step = tf.function(step)
    for t in range(1, steps + 1):
        g = online_gradient(problem, var.numpy(), t).astype(dtype)
        step(tf.constant(g))
    return var.numpy(), opt


def reference_trajectory(problem, x0, steps, lr, beta, eps, sparse_counter):
    from expectigrad_tf.reference import ExpectigradNumpy, online_gradient

    ref = ExpectigradNumpy(x0, lr=lr, beta=beta, eps=eps, sparse_counter=sparse_counter)
    for t in range(1, steps + 1):
        ref.step(online_gradient(problem, ref.x, t))
    return ref
