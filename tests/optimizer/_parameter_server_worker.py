"""Worker for test_parameter_server.py: trains a model with an Embedding and
Dense layers in float64 with Expectigrad, one run per case, and writes the
final weights and the optimizer's dispatch report to ``OUT.npz`` /
``OUT.json``.

``single``: the default strategy, one process.
``pss``: ``tf.distribute.ParameterServerStrategy`` over an in-process cluster
on 127.0.0.1 (``NUM_WORKERS`` workers and ``NUM_PS`` parameter servers started
as ``tf.distribute.Server``s in this process, as TF's
``multi_worker_test_base.create_in_process_cluster`` and the parameter server
training tutorial do), driven by a ``ClusterCoordinator``: each step is
scheduled on whichever worker is free and joined before the next one, so the
steps run in the single-process order and the trajectories can be compared.
The batch of step ``i`` is selected inside the step function from ``i``, so it
does not depend on which worker runs it.
"""

import json
import os
import socket
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

NUM_WORKERS, NUM_PS = 2, 2
VOCAB, USED, SEQ, DIM, HIDDEN = 64, 40, 4, 8, 16  # ids < USED: rows USED.. never touched
BATCH, STEPS = 8, 12
CASES = {
    # name: Expectigrad kwargs
    "exact": dict(learning_rate=0.05, beta=0.9),
    "lazy": dict(learning_rate=0.05, beta=0.9, lazy_sparse=True),
    "composite": dict(learning_rate=0.05, beta=0.9, fused=False),
    "no-momentum": dict(learning_rate=0.05, beta=0.0, sparse_counter=False, lazy_sparse=True),
}


def _free_ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def in_process_cluster(tf, num_workers, num_ps):
    ports = _free_ports(num_workers + num_ps)
    cluster = {
        "worker": [f"127.0.0.1:{p}" for p in ports[:num_workers]],
        "ps": [f"127.0.0.1:{p}" for p in ports[num_workers:]],
    }
    spec = tf.train.ClusterSpec(cluster)
    worker_config = tf.compat.v1.ConfigProto()
    # The cluster may hang if workers have too few inter-op threads (TF's note).
    worker_config.inter_op_parallelism_threads = num_workers + 1
    servers = [tf.distribute.Server(spec, job_name="worker", task_index=i,
                                    config=worker_config, protocol="grpc")
               for i in range(num_workers)]
    servers += [tf.distribute.Server(spec, job_name="ps", task_index=i, protocol="grpc")
                for i in range(num_ps)]
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(spec, rpc_layer="grpc")
    return resolver, servers


def data(np):
    rng = np.random.default_rng(0)
    x = rng.integers(0, USED, (BATCH * STEPS, SEQ)).astype("int32")
    y = rng.standard_normal((BATCH * STEPS, 1))
    init = [rng.standard_normal((VOCAB, DIM)) * 0.5,
            rng.standard_normal((SEQ * DIM, HIDDEN)) * 0.3, rng.standard_normal(HIDDEN) * 0.1,
            rng.standard_normal((HIDDEN, 1)) * 0.3, rng.standard_normal(1) * 0.1]
    return x, y, init


def build_model(keras):
    return keras.Sequential([
        keras.Input((SEQ,), dtype="int32"),
        keras.layers.Embedding(VOCAB, DIM),
        keras.layers.Flatten(),
        keras.layers.Dense(HIDDEN, activation="tanh"),
        keras.layers.Dense(1),
    ])


def main(mode, out_path):
    import numpy as np
    import tensorflow as tf
    import keras

    from expectigrad_tf import Expectigrad

    keras.config.set_floatx("float64")
    x, y, init = data(np)
    coordinator = None
    if mode == "pss":
        resolver, _servers = in_process_cluster(tf, NUM_WORKERS, NUM_PS)
        strategy = tf.distribute.ParameterServerStrategy(resolver)
        coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    else:
        strategy = tf.distribute.get_strategy()
    x_all, y_all = tf.constant(x), tf.constant(y)
    results, info = {}, {"strategy": type(strategy).__name__, "cases": {}}
    for case, kwargs in CASES.items():
        with strategy.scope():
            model = build_model(keras)
            model.set_weights(init)
            opt = Expectigrad(**kwargs)
            opt.build(model.trainable_variables)
        variables = model.trainable_variables

        @tf.function
        def step(i):
            def replica_fn(i):
                rows = tf.range(i * BATCH, (i + 1) * BATCH)
                xb, yb = tf.gather(x_all, rows), tf.gather(y_all, rows)
                with tf.GradientTape() as tape:
                    loss = tf.reduce_mean(tf.square(model(xb, training=True) - yb))
                grads = tape.gradient(loss, variables)
                opt.apply(grads, variables)
                return grads
            return strategy.run(replica_fn, args=(i,))

        for i in range(STEPS):
            if coordinator is not None:
                coordinator.schedule(step, args=(tf.constant(i),))
                coordinator.join()  # one step at a time: the single-process order
            else:
                # Record the gradients: the test replays them through the
                # NumPy reference.
                for k, g in enumerate(step(tf.constant(i))):
                    if isinstance(g, tf.IndexedSlices):
                        results[f"{case}/grad/{i}/{k}/indices"] = g.indices.numpy()
                        results[f"{case}/grad/{i}/{k}/values"] = g.values.numpy()
                    else:
                        results[f"{case}/grad/{i}/{k}"] = g.numpy()
        for k, w in enumerate(model.get_weights()):
            results[f"{case}/{k}"] = np.asarray(w)
        slots, state_shapes = {}, []
        for k, var in enumerate(variables):
            # One packed state per variable: its rows by name (sum, count,
            # momentum; those the configuration keeps) and its placement.
            for kind, value in opt.slot_values(var).items():
                results[f"{case}/{kind}/{k}"] = np.asarray(value)
            state = opt._state_for(var)
            slots[f"state/{k}"] = str(state.value.device)
            state_shapes.append(list(state.shape))
        info["cases"][case] = {
            "dispatch": {k: list(v) for k, v in opt.dispatch_report().items()},
            "iterations": int(opt.iterations.numpy()),
            "variable_devices": [str(v.value.device) for v in variables],
            "slot_devices": slots,
            "state_shapes": state_shapes,
            "dtypes": [str(v.dtype) for v in variables],
        }
    np.savez(out_path + ".npz", **results)
    with open(out_path + ".json", "w") as f:
        json.dump(info, f, indent=1)
    print("done", mode, flush=True)
    # In-process servers cannot be shut down: leave without waiting for them.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
