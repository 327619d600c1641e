"""Worker for test_resume.py. Modes:
  full OUT                      4 epochs uninterrupted
  part DIR                      2 epochs, then model.save(.keras) and tf.train.Checkpoint
  keras_resume DIR OUT          load_model(.keras), 2 more epochs
  ckpt_resume DIR OUT           fresh model + tf.train.Checkpoint restore, 2 more epochs
  bnr DIR OUT [KILL_AT]         4 epochs with BackupAndRestore; SIGKILL itself at batch KILL_AT
"""

import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.experimental.enable_op_determinism()
import keras  # noqa: E402

from expectigrad_tf import Expectigrad  # noqa: E402

rng = np.random.default_rng(0)
X = rng.standard_normal((96, 5)).astype("float32")
Y = (X @ rng.standard_normal((5, 1))).astype("float32")


def build():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile(optimizer=Expectigrad(0.01, beta=0.8), loss="mse", jit_compile=False)
    return model


def fit(model, epochs, initial_epoch=0, callbacks=()):
    model.fit(X, Y, batch_size=16, epochs=epochs, initial_epoch=initial_epoch, shuffle=False,
              verbose=0, callbacks=list(callbacks))


def dump(model, out):
    np.save(out, np.concatenate([w.ravel() for w in model.get_weights()]))


class KillAt(keras.callbacks.Callback):
    def __init__(self, at):
        super().__init__()
        self.at, self.seen = at, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.at:
            os.kill(os.getpid(), signal.SIGKILL)


def main(mode, *args):
    if mode == "full":
        model = build()
        fit(model, 4)
        dump(model, args[0])
    elif mode == "part":
        model = build()
        fit(model, 2)
        model.save(os.path.join(args[0], "m.keras"))
        tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(os.path.join(args[0], "ckpt"))
    elif mode == "keras_resume":
        model = keras.models.load_model(os.path.join(args[0], "m.keras"))
        fit(model, 4, initial_epoch=2)
        dump(model, args[1])
    elif mode == "ckpt_resume":
        model = build()
        model.optimizer.build(model.trainable_variables)
        tf.train.Checkpoint(model=model, optimizer=model.optimizer).read(
            os.path.join(args[0], "ckpt")).assert_consumed()
        fit(model, 4, initial_epoch=2)
        dump(model, args[1])
    elif mode == "bnr":
        model = build()
        cbs = [keras.callbacks.BackupAndRestore(os.path.join(args[0], "backup"))]
        if len(args) > 2:
            cbs.append(KillAt(int(args[2])))
        fit(model, 4, callbacks=cbs)
        dump(model, args[1])
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(*sys.argv[1:])
