"""Worker for test_distributed.py: trains one small model with Expectigrad
under the strategy named on the command line, writes weights and dispatch."""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(mode, out_path, task_index=0):
    import numpy as np
    import tensorflow as tf
    import keras

    from expectigrad_tf import Expectigrad

    if mode == "mwms":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 6)).astype("float32")
    y = rng.standard_normal((128, 1)).astype("float32")
    global_batch = 32
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"),
                                  keras.layers.Dense(1)])
        opt = keras.optimizers.Adam(0.01) if os.environ.get("EG_ADAM") else Expectigrad(0.01)
        model.compile(optimizer=opt, loss="mse")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(global_batch)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dist_ds = strategy.experimental_distribute_dataset(ds.with_options(options))

    # A custom loop: Keras 3's fit() does not accept MultiWorkerMirroredStrategy
    # datasets (it fails the same way with keras.optimizers.Adam).
    @tf.function
    def train_step(xb, yb):
        def step_fn(xr, yr):
            with tf.GradientTape() as tape:
                per_example = tf.reduce_mean(tf.square(model(xr, training=True) - yr), axis=-1)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply(grads, model.trainable_variables)
        strategy.run(step_fn, args=(xb, yb))

    for _ in range(3):
        for xb, yb in dist_ds:
            train_step(xb, yb)
    weights = np.concatenate([w.ravel() for w in model.get_weights()])
    np.save(out_path, weights)
    with open(out_path + ".json", "w") as f:
        json.dump({"paths": sorted({p for p, _ in opt.dispatch_report().values()}) if hasattr(opt, "dispatch_report") else [],
                   "strategy": type(strategy).__name__}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0)
