"""Image-classification experiments of the Expectigrad paper (Figures 2-4).

One script, many tasks::

    --task mnist    --model mlp          Figure 2 right: 2x1000 ReLU MLP, 150 epochs
    --task fashion_mnist --model mlp     the same on Fashion-MNIST (same format as MNIST)
    --task cifar10  --model vgg16        Figure 3: VGG-16 / ResNet-50, 250 epochs
    --task cifar10  --model resnet50
    --task imagenet --model mobilenetv2  Figure 4: MobileNetV2, 300 epochs

Several optimizers (``--optimizer expectigrad,adam,...``) run in turn with
identical seeds: the same initial weights and the same minibatch order.

Data. For ``--task mnist`` / ``fashion_mnist``, ``--data-dir`` may be a
folder holding the four IDX files of MNIST or Fashion-MNIST
(``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each raw or ``.gz``;
e.g. Debian's ``dataset-fashion-mnist`` in /usr/share/datasets/fashion-mnist);
their headers are checked (``data.load_idx_dataset``) and a truncated or
wrong file stops the run with a message naming it. With ``--data-dir``
holding the prepared TFDS dataset (mnist, fashion_mnist, cifar10,
imagenet2012) the data come from ``tfds.load(name, data_dir=...,
download=False)``. Otherwise (nothing is downloaded) the script uses offline data and says so:
scikit-learn's handwritten digits (8x8 grey, 1,797 images, shipped with
scikit-learn) for ``--task mnist``, and a deterministic generated set of
coloured shapes and textures (``generate_images``; 10 classes, 32x32x3 by
default) for ``--task cifar10`` / ``imagenet``. Output files are named after
the data actually used (``digits_mlp_adam.csv``, ``generated_vgg16.png``,
``fashion_mnist_mlp_adam.csv``, ...). The log says how many training images
(and updates per epoch) each run used.

Batch order and resuming. With IDX data the images are held in memory and
epoch ``e`` visits them in the order
``numpy.random.default_rng([seed, e]).permutation(n)`` (the last batch may be
smaller), the same for every optimizer; with ``--checkpoint-dir`` the weights
and optimizer state are saved after every epoch
(``<prefix>_<optimizer>.ckpt.npz``), and a rerun of the same command continues
each optimizer from its last finished epoch (skipping finished optimizers) and
gives the same result as an uninterrupted run. A checkpoint from another
configuration (optimizer hyperparameters, model, batch size, seed, data) is
refused. Other data sources use a seeded ``tf.data`` shuffle and do not resume.

Models. ``mlp`` (Flatten, 2 x Dense(1000, relu), Dense(classes)),
``vgg16`` / ``resnet50`` / ``mobilenetv2`` (``keras.applications`` with
``weights=None``, ``include_top=True``, the input shape of the data and logits
out), and two small CNNs written here for CPU budgets, ``vgg_small`` (3 VGG
blocks of two 3x3 convolutions) and ``resnet_small`` (3 stages of one basic
residual block with batch norm). All models end in logits; the loss is
sparse categorical cross-entropy from logits (no 1e-7 probability clipping,
so very small training losses are measured correctly).

Hyperparameters. ``--hparams paper`` (default) gives every optimizer the
values the paper says it used: Expectigrad Adam's defaults (lr 1e-3, beta 0.9,
epsilon 1e-8); Adam / AMSGrad / RMSProp / Adadelta / AdaGrad TensorFlow's
defaults; Yogi the values Zaheer et al. (2018) recommend (lr 1e-2, epsilon
1e-3). See ``PAPER_HPARAMS``. ``--hparams shared`` gives all of them
``--lr --beta1 --beta2 --epsilon`` through ``optimizers.make_optimizer``; with
``paper`` an explicit ``--lr`` etc. overrides the preset for every optimizer.

Outputs in ``--out-dir`` (prefix ``<data>_<model>``): one Keras CSVLogger file
per optimizer (``<prefix>_<optimizer>.csv``: epoch, loss, acc, error, val_*,
epoch_time_s), ``<prefix>.png`` (training loss, training error and validation
error vs epoch, one line per optimizer, as in Figures 2-4) and
``<prefix>_summary.json``. The logged training loss and error are Keras'
running means over each epoch's minibatches (training mode).

    expectigrad-train-image --task mnist --model mlp --full \\
        --optimizer expectigrad,adam,rmsprop,adadelta,amsgrad,yogi --out-dir docs/results/image
    expectigrad-train-image --task cifar10 --model vgg_small --epochs 5 --out-dir /tmp/img
    expectigrad-train-image --task mnist --model mlp --quick --out-dir /tmp/img
    expectigrad-train-image --replot docs/results/image/digits_mlp_summary.json
"""

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

from .data import GENERATED_CLASSES, generate_images, load_digits_split  # noqa: E402
from .report import LABELS, plot_curves, read_log, save_samples, write_json  # noqa: E402

TASKS = ("mnist", "fashion_mnist", "cifar10", "imagenet")
IDX_TASKS = ("mnist", "fashion_mnist")
MODELS = ("mlp", "vgg16", "resnet50", "mobilenetv2", "vgg_small", "resnet_small")
TFDS_NAMES = {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "cifar10": "cifar10",
              "imagenet": "imagenet2012"}

# --full: the paper's settings (Section 4.2 and Section 6). The paper's
# Appendix A (batch sizes, augmentation, grid search) is not available to us;
# batch size 128 follows Kingma & Ba (2014), whose MNIST MLP the paper says it
# follows, and 256 for ImageNet is our assumption.
FULL_SETTINGS = {
    "mnist": dict(model="mlp", epochs=150, batch_size=128, augment=False,
                  optimizers="expectigrad,rmsprop,adadelta,adam"),
    "fashion_mnist": dict(model="mlp", epochs=150, batch_size=128, augment=False,
                          optimizers="expectigrad,rmsprop,adadelta,adam"),
    "cifar10": dict(model="vgg16", epochs=250, batch_size=128, augment=True,
                    optimizers="adagrad,adam,amsgrad,yogi,expectigrad"),
    "imagenet": dict(model="mobilenetv2", epochs=300, batch_size=256, augment=True,
                     optimizers="expectigrad,yogi"),
}
QUICK_SETTINGS = {
    "mlp": dict(epochs=2, batch_size=128, steps_per_epoch=None),
    "cnn": dict(epochs=1, batch_size=16, steps_per_epoch=3, gen_train=96, gen_test=48),
}
DEFAULT_EPOCHS = {"mlp": 20, "cnn": 5}

# Per-optimizer hyperparameters the paper says it used (Section 4.2: "default
# hyperparameter values from TensorFlow" for the baselines, Adam's defaults
# for Expectigrad; Figure 4: Yogi with the values recommended by Zaheer et
# al., 2018). TensorFlow 1's tf.train defaults (epsilon 1e-8 Adam/Adadelta,
# 1e-10 RMSProp, rho 0.9 RMSProp, 0.95 Adadelta). tf.train.RMSPropOptimizer
# has no default learning rate; 1e-3 is tf.keras'.
PAPER_HPARAMS = {
    "expectigrad": dict(lr=1e-3, beta1=0.9, beta2=0.999, epsilon=1e-8),
    "adam": dict(lr=1e-3, beta1=0.9, beta2=0.999, epsilon=1e-8),
    "amsgrad": dict(lr=1e-3, beta1=0.9, beta2=0.999, epsilon=1e-8),
    "rmsprop": dict(lr=1e-3, beta1=0.0, beta2=0.9, epsilon=1e-10),
    "adadelta": dict(lr=1e-3, beta1=0.0, beta2=0.95, epsilon=1e-8),
    "adagrad": dict(lr=1e-3, beta1=0.0, beta2=0.0, epsilon=1e-7),
    "yogi": dict(lr=1e-2, beta1=0.9, beta2=0.999, epsilon=1e-3),
    "sgd": dict(lr=1e-2, beta1=0.0, beta2=0.0, epsilon=0.0),
}
SHARED_DEFAULTS = dict(lr=1e-3, beta1=0.9, beta2=0.999, epsilon=1e-8)


# --------------------------------------------------------------------- optimizers
def optimizer_hparams(name, args):
    """(lr, beta1, beta2, epsilon) for optimizer ``name`` under ``args.hparams``."""
    base = dict(PAPER_HPARAMS.get(name, SHARED_DEFAULTS)) if args.hparams == "paper" \
        else dict(SHARED_DEFAULTS)
    for key in ("lr", "beta1", "beta2", "epsilon"):
        value = getattr(args, key)
        if value is not None:
            base[key] = value
    return base


# --------------------------------------------------------------------- data
class Data:
    """Train/test tf.data sources plus what the summary needs."""

    def __init__(self, source, tag, train, test, num_classes, image_shape, scale,
                 n_train=None, n_test=None, cacheable=True, arrays=None):
        self.source, self.tag = source, tag
        # ((x, y), (x_test, y_test)) NumPy arrays for in-memory data that is
        # ordered per epoch (and can resume); None: the tf.data path.
        self.arrays = arrays
        self.train, self.test = train, test  # unbatched tf.data.Dataset of (image, label)
        self.num_classes, self.image_shape, self.scale = num_classes, image_shape, scale
        self.n_train, self.n_test, self.cacheable = n_train, n_test, cacheable


def load_data(args, log=print):
    """TFDS when --data-dir holds the prepared dataset, else offline data."""
    import tensorflow as tf

    name = TFDS_NAMES[args.task]
    if args.data_source == "idx" and args.data_dir and not os.path.isdir(args.data_dir):
        raise SystemExit(f"--data-dir {args.data_dir!r}: no such directory")
    if (args.data_source in ("auto", "idx") and args.data_dir and args.task in IDX_TASKS
            and os.path.isdir(args.data_dir)):
        from .data import IdxFormatError, find_idx_files, load_idx_dataset

        try:
            found = find_idx_files(args.data_dir)
            if found is not None or args.data_source == "idx":
                (x, y), (xt, yt) = load_idx_dataset(args.data_dir)
        except IdxFormatError as exc:
            raise SystemExit(f"--data-dir {args.data_dir!r}: {exc}") from None
        if found is not None or args.data_source == "idx":
            num_classes = int(max(y.max(), yt.max()) + 1)
            log(f"data: IDX files in {args.data_dir} ({x.shape[1]}x{x.shape[2]} grey, "
                f"{len(x)} train / {len(xt)} test images, {num_classes} classes)")
            train = tf.data.Dataset.from_tensor_slices((x, y))
            test = tf.data.Dataset.from_tensor_slices((xt, yt))
            return Data(f"idx:{os.path.abspath(args.data_dir)}", args.task, train, test,
                        num_classes, x.shape[1:], 255.0, n_train=len(x), n_test=len(xt),
                        arrays=((x, y), (xt, yt)))
    elif args.data_source == "idx":
        raise SystemExit(f"--data-source idx needs --data-dir and --task mnist or "
                         f"fashion_mnist (got --task {args.task}, --data-dir {args.data_dir!r})")
    if args.data_source in ("auto", "tfds") and args.data_dir:
        try:
            import tensorflow_datasets as tfds

            (train, test), info = tfds.load(
                name, data_dir=args.data_dir, download=False,
                split=["train", "validation" if args.task == "imagenet" else "test"],
                as_supervised=True, with_info=True)
            num_classes = info.features["label"].num_classes
            shape = tuple(info.features["image"].shape)
            log(f"data: TFDS '{name}' from {args.data_dir}")
            counts = []
            for split in ("train", "validation" if args.task == "imagenet" else "test"):
                try:
                    counts.append(int(info.splits[split].num_examples))
                except Exception:  # noqa: BLE001 - informative only
                    counts.append(None)
            return Data(f"tfds:{name}", name, train, test, num_classes, shape, 255.0,
                        n_train=counts[0], n_test=counts[1],
                        cacheable=args.task != "imagenet")
        except Exception as exc:  # noqa: BLE001 - any failure: fall back or stop
            if args.data_source == "tfds":
                raise SystemExit(f"TFDS '{name}' could not be loaded from {args.data_dir}: {exc}")
            log(f"data: TFDS '{name}' not available in {args.data_dir} "
                f"({type(exc).__name__}); falling back to offline data")
    elif args.data_source == "tfds":
        raise SystemExit("--data-source tfds needs --data-dir")
    if args.task == "fashion_mnist":
        raise SystemExit(
            f"--task fashion_mnist has no offline stand-in: give --data-dir, a folder with the "
            f"four IDX files (e.g. /usr/share/datasets/fashion-mnist from Debian's "
            f"dataset-fashion-mnist) or a TFDS data_dir holding fashion_mnist (got --data-dir "
            f"{args.data_dir!r}" + ("" if not args.data_dir or os.path.isdir(args.data_dir)
                                    else ", which does not exist") + ")")

    if args.task == "mnist":
        (x, y), (xt, yt) = load_digits_split(args.seed_data)
        log(f"data: OFFLINE scikit-learn handwritten digits (8x8 grey, {len(x)} train / "
            f"{len(xt)} test) standing in for MNIST")
        tag, source, scale = "digits", "sklearn-digits", 1.0
    else:
        x, y = generate_images(args.gen_train, args.gen_size, seed=args.seed_data)
        xt, yt = generate_images(args.gen_test, args.gen_size, seed=args.seed_data + 1)
        log(f"data: OFFLINE generated shapes/textures ({len(GENERATED_CLASSES)} classes, "
            f"{args.gen_size}x{args.gen_size}x3, {len(x)} train / {len(xt)} test) standing in "
            f"for {name}")
        tag, source, scale = "generated", "generated-shapes", 255.0
    train = tf.data.Dataset.from_tensor_slices((x, y))
    test = tf.data.Dataset.from_tensor_slices((xt, yt))
    return Data(source, tag, train, test, int(max(y.max(), yt.max()) + 1), x.shape[1:], scale,
                n_train=len(x), n_test=len(xt))


def input_shape_for(args, data):
    """(features,) for the MLP; (side, side, 3) for CNNs: --image-size, else
    224 for TFDS ImageNet, else the data's side but at least 32."""
    if args.model == "mlp":
        if any(d is None for d in data.image_shape):
            raise SystemExit(f"--model mlp needs fixed-size images; {data.source} has "
                             f"{data.image_shape}")
        return (int(np.prod(data.image_shape)),)
    size = args.image_size
    if size is None:
        native = data.image_shape[0]
        size = 224 if native is None else max(32, int(native))
    return (size, size, 3)


def epoch_order(seed, epoch, n):
    """The order of the ``n`` training images in epoch ``epoch`` (0-based) of
    in-memory data: the same for every optimizer and for a resumed run."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def make_pipelines(args, data, input_shape, seed, epoch=None, eval_train=False):
    """Batched train / test datasets; the train order depends only on ``seed``
    (and, for in-memory data with ``epoch`` given, on ``epoch``: one pass in
    the order ``epoch_order(seed, epoch, n)``). With ``eval_train`` only the
    training set, in its stored order and prepared as for evaluation."""
    import tensorflow as tf

    is_mlp = args.model == "mlp"
    scale = float(data.scale)

    def prep(image, label, training):
        image = tf.cast(image, tf.float32) / scale
        label = tf.cast(label, tf.int32)
        if is_mlp:
            return tf.reshape(image, [-1]), label
        size = input_shape[0]
        if image.shape[-1] == 1:
            image = tf.image.grayscale_to_rgb(image)
        if image.shape[0] != size or image.shape[1] != size:
            image = tf.image.resize(image, [size, size])
        if training and args.augment:  # pad-and-crop (4 px at 32x32) and horizontal flip
            pad = max(4, size // 8)
            image = tf.image.resize_with_crop_or_pad(image, size + 2 * pad, size + 2 * pad)
            image = tf.image.random_crop(image, [size, size, 3])
            image = tf.image.random_flip_left_right(image)
        image = (image - 0.5) / 0.25
        return image, label

    if eval_train:
        return data.train.map(lambda x, y: prep(x, y, False),
                              num_parallel_calls=tf.data.AUTOTUNE).batch(1024)
    if epoch is not None and data.arrays is not None:
        (x, y), _ = data.arrays
        order = epoch_order(seed, epoch, len(x))
        train = tf.data.Dataset.from_tensor_slices((x[order], y[order]))
        train = train.map(lambda x, y: prep(x, y, True), num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=True)
    else:
        train = data.train
        if data.cacheable:
            train = train.cache()
        train = train.shuffle(args.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        train = train.map(lambda x, y: prep(x, y, True), num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=True)
        if args.steps_per_epoch:
            train = train.repeat()
    train = train.batch(args.batch_size).prefetch(tf.data.AUTOTUNE)
    test = data.test.map(lambda x, y: prep(x, y, False), num_parallel_calls=tf.data.AUTOTUNE)
    if data.cacheable:
        test = test.cache()
    test = test.batch(max(args.batch_size, 256)).prefetch(tf.data.AUTOTUNE)
    return train, test


# --------------------------------------------------------------------- models
def build_model(model_name, input_shape, num_classes, mlp_hidden=1000, width=16, alpha=1.0):
    """A Keras model ending in logits (no softmax)."""
    import keras
    from keras import layers

    if model_name == "mlp":
        return keras.Sequential(
            [keras.Input(input_shape),
             layers.Dense(mlp_hidden, activation="relu"),
             layers.Dense(mlp_hidden, activation="relu"),
             layers.Dense(num_classes)], name="mlp_2x%d" % mlp_hidden)
    common = dict(weights=None, include_top=True, input_shape=input_shape,
                  classes=num_classes, classifier_activation=None)
    if model_name == "vgg16":
        return keras.applications.VGG16(**common)
    if model_name == "resnet50":
        return keras.applications.ResNet50(**common)
    if model_name == "mobilenetv2":
        return keras.applications.MobileNetV2(alpha=alpha, **common)
    if model_name == "vgg_small":
        x = inputs = keras.Input(input_shape)
        for k, filters in enumerate((width, 2 * width, 4 * width)):
            for j in range(2):
                x = layers.Conv2D(filters, 3, padding="same", activation="relu",
                                  name=f"block{k + 1}_conv{j + 1}")(x)
            x = layers.MaxPooling2D(2, name=f"block{k + 1}_pool")(x)
        x = layers.Flatten()(x)
        x = layers.Dense(8 * width, activation="relu", name="fc")(x)
        return keras.Model(inputs, layers.Dense(num_classes, name="logits")(x), name="vgg_small")
    if model_name == "resnet_small":
        x = inputs = keras.Input(input_shape)
        x = layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
        x = layers.ReLU()(layers.BatchNormalization()(x))
        for k, filters in enumerate((width, 2 * width, 4 * width)):
            stride = 1 if k == 0 else 2
            shortcut = x
            y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
            y = layers.ReLU()(layers.BatchNormalization()(y))
            y = layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
            y = layers.BatchNormalization()(y)
            if stride != 1 or shortcut.shape[-1] != filters:
                shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False)(shortcut)
                shortcut = layers.BatchNormalization()(shortcut)
            x = layers.ReLU()(layers.Add()([y, shortcut]))
        x = layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, layers.Dense(num_classes, name="logits")(x),
                           name="resnet_small")
    raise ValueError(f"unknown model {model_name!r}")


# --------------------------------------------------------------------- training
def _extras_callback(top5):
    import keras

    class Extras(keras.callbacks.Callback):
        """Adds error = 1 - accuracy and the epoch's wall time to the logs
        (placed before CSVLogger, so they are written to the CSV)."""

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            if logs is None:
                return
            for prefix in ("", "val_"):
                if prefix + "acc" in logs:
                    logs[prefix + "error"] = 1.0 - float(logs[prefix + "acc"])
                if top5 and prefix + "top5_acc" in logs:
                    logs[prefix + "top5_error"] = 1.0 - float(logs[prefix + "top5_acc"])
            logs["epoch_time_s"] = time.perf_counter() - self._start

    return Extras()


def train_one(args, data, optimizer_name, input_shape, log=print):
    """Trains one model with one optimizer; returns its summary dict."""
    import keras

    hp = optimizer_hparams(optimizer_name, args)
    keras.backend.clear_session()
    keras.utils.set_random_seed(args.seed)
    model = build_model(args.model, input_shape, data.num_classes, args.mlp_hidden,
                        args.width, args.alpha)
    from .optimizers import make_optimizer  # Keras loads only when training

    optimizer = make_optimizer(optimizer_name, hp["lr"], hp["beta1"], hp["beta2"], hp["epsilon"])
    top5 = data.num_classes > 10
    metrics = [keras.metrics.SparseCategoricalAccuracy(name="acc")]
    if top5:
        metrics.append(keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5_acc"))
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=metrics, jit_compile=args.jit_compile)
    csv_path = os.path.join(args.out_dir, f"{args.prefix}_{optimizer_name}.csv")
    log(f"--- {LABELS.get(optimizer_name, optimizer_name)}: lr={hp['lr']:g} beta1={hp['beta1']:g} "
        f"beta2={hp['beta2']:g} epsilon={hp['epsilon']:g}; model {model.name} "
        f"({model.count_params():,} parameters), input {input_shape}")
    extra = {}
    if per_epoch_order(args, data):
        hist, seconds, extra = _fit_per_epoch(args, data, model, optimizer, optimizer_name, hp,
                                              input_shape, csv_path, top5, log)
    else:
        train, test = make_pipelines(args, data, input_shape, args.seed)
        callbacks = [_extras_callback(top5), keras.callbacks.CSVLogger(csv_path)]
        start = time.perf_counter()
        history = model.fit(
            train, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
            validation_data=None if args.no_validation else test,
            validation_steps=args.validation_steps if not args.no_validation else None,
            callbacks=callbacks, shuffle=False,  # the dataset is shuffled (seeded) above
            verbose=0 if args.quiet else args.verbose)
        seconds = time.perf_counter() - start
        hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    final = {k: vals[-1] for k, vals in hist.items() if vals}
    result = {
        "optimizer": optimizer_name,
        "hyperparameters": hp,
        "csv": os.path.basename(csv_path),
        "parameters": int(model.count_params()),
        "seconds": seconds,
        "epochs": len(hist.get("loss", [])),
        "train_images": data.n_train,
        "updates": updates_per_epoch(args, data) * len(hist.get("loss", []))
        if updates_per_epoch(args, data) else None,
        "final_train_loss": final.get("loss"),
        "min_train_loss": min(hist["loss"]) if hist.get("loss") else None,
        "final_train_error": final.get("error"),
        "final_val_loss": final.get("val_loss"),
        "final_val_error": final.get("val_error"),
        "final_val_top5_error": final.get("val_top5_error"),
        "finite": all(math.isfinite(v) for v in hist.get("loss", [])),
        **extra,
    }
    if optimizer_name == "expectigrad" and hasattr(optimizer, "dispatch_report"):
        try:
            paths = sorted({str(v[0]) for v in optimizer.dispatch_report().values()})
            result["expectigrad_paths"] = paths or (
                "not recorded: no step in this invocation (a finished run was reloaded)")
        except Exception:  # noqa: BLE001 - informative only
            pass
    log(f"    {optimizer_name}: {seconds:.1f}s, final train loss {result['final_train_loss']:.4g}, "
        f"train error {result['final_train_error']:.4f}"
        + ("" if result["final_val_error"] is None
           else f", val error {result['final_val_error']:.4f}"))
    return result


def per_epoch_order(args, data):
    """True for in-memory data trained one pass per epoch (resumable)."""
    return data.arrays is not None and not args.steps_per_epoch


def updates_per_epoch(args, data):
    """Minibatches per epoch, or None when unknown (TFDS without --steps-per-epoch)."""
    if args.steps_per_epoch:
        return args.steps_per_epoch
    if data.n_train:
        return math.ceil(data.n_train / args.batch_size)
    return None


def _run_config(args, data, optimizer_name, hp, input_shape):
    """What a checkpoint must match to be resumed."""
    return {"optimizer": optimizer_name, "hyperparameters": hp, "model": args.model,
            "input_shape": list(input_shape), "mlp_hidden": args.mlp_hidden,
            "width": args.width, "alpha": args.alpha, "batch_size": args.batch_size,
            "seed": args.seed, "augment": args.augment, "jit_compile": args.jit_compile,
            "data_source": data.source, "n_train": data.n_train, "n_test": data.n_test,
            "validation": not args.no_validation}


def _save_checkpoint(path, model, optimizer, config, epochs_done):
    store = {}
    optimizer.save_own_variables(store)
    arrays = {f"optimizer/{k}": np.asarray(v) for k, v in store.items()}
    arrays.update({f"model/{i}": w for i, w in enumerate(model.get_weights())})
    arrays["config"] = np.array(json.dumps(config, sort_keys=True))
    arrays["epochs_done"] = np.array(epochs_done, np.int64)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _load_checkpoint(path, model, optimizer, config):
    """Restores a checkpoint into ``model`` / ``optimizer``; returns the
    number of finished epochs. SystemExit when it belongs to another run."""
    with np.load(path, allow_pickle=False) as z:
        saved = json.loads(str(z["config"]))
        if saved != json.loads(json.dumps(config, sort_keys=True)):
            diff = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
            raise SystemExit(f"checkpoint {path} is from another configuration (differs in "
                             f"{', '.join(diff)}); remove it or use another --checkpoint-dir")
        n_weights = len(model.weights)
        model.set_weights([z[f"model/{i}"] for i in range(n_weights)])
        store = {k[len("optimizer/"):]: z[k] for k in z.files if k.startswith("optimizer/")}
        optimizer.build(model.trainable_variables)
        optimizer.load_own_variables(store)
        return int(z["epochs_done"])


def _truncate_csv(path, rows):
    """Keeps the header and the first ``rows`` data rows of a CSV log."""
    if not os.path.exists(path):
        if rows:
            raise SystemExit(f"{path} is missing but its checkpoint says {rows} epoch(s) "
                             f"are done; remove the checkpoint to start again")
        return
    with open(path) as f:
        lines = f.readlines()
    if len(lines) < rows + 1:
        raise SystemExit(f"{path} has {max(len(lines) - 1, 0)} epoch row(s) but its checkpoint "
                         f"says {rows} epoch(s) are done")
    with open(path, "w") as f:
        f.writelines(lines[:rows + 1])


def _fit_per_epoch(args, data, model, optimizer, optimizer_name, hp, input_shape, csv_path,
                   top5, log):
    """One ``fit`` call per epoch in the order ``epoch_order(seed, epoch)``;
    with ``--checkpoint-dir`` resumes from / saves to a checkpoint after every
    epoch. Returns (history from the CSV log, seconds of training (the sum of
    the logged epoch times), extras): the extras are the epoch it resumed
    from and the final model's loss and error on the whole training set,
    evaluated in inference mode (not a running mean over the last epoch)."""
    import keras

    config = _run_config(args, data, optimizer_name, hp, input_shape)
    ckpt = None
    start_epoch = 0
    if args.checkpoint_dir:
        os.makedirs(args.checkpoint_dir, exist_ok=True)
        ckpt = os.path.join(args.checkpoint_dir, f"{args.prefix}_{optimizer_name}.ckpt.npz")
        if os.path.exists(ckpt):
            start_epoch = _load_checkpoint(ckpt, model, optimizer, config)
            if start_epoch > args.epochs:
                raise SystemExit(f"checkpoint {ckpt} has {start_epoch} epochs, more than "
                                 f"--epochs {args.epochs}")
            _truncate_csv(csv_path, start_epoch)
            log(f"    resuming {optimizer_name} from {ckpt}: {start_epoch} of {args.epochs} "
                f"epoch(s) done")
    elif os.path.exists(csv_path):
        os.remove(csv_path)
    _, test = make_pipelines(args, data, input_shape, args.seed)
    log(f"    training on {data.n_train} images, {updates_per_epoch(args, data)} updates "
        f"per epoch of batch {args.batch_size}")
    for epoch in range(start_epoch, args.epochs):
        train, _ = make_pipelines(args, data, input_shape, args.seed, epoch=epoch)
        callbacks = [_extras_callback(top5),
                     keras.callbacks.CSVLogger(csv_path, append=epoch > 0)]
        model.fit(train, initial_epoch=epoch, epochs=epoch + 1,
                  validation_data=None if args.no_validation else test,
                  validation_steps=args.validation_steps if not args.no_validation else None,
                  callbacks=callbacks, shuffle=False,
                  verbose=0 if args.quiet else args.verbose)
        if ckpt:
            _save_checkpoint(ckpt, model, optimizer, config, epoch + 1)
    evaluated = model.evaluate(make_pipelines(args, data, input_shape, args.seed,
                                              eval_train=True), verbose=0, return_dict=True)
    extra = {"resumed_from_epoch": start_epoch,
             "final_train_loss_evaluated": float(evaluated["loss"]),
             "final_train_error_evaluated": 1.0 - float(evaluated["acc"])}
    log(f"    {optimizer_name}: whole training set, inference mode: loss "
        f"{extra['final_train_loss_evaluated']:.4g}, error "
        f"{extra['final_train_error_evaluated']:.4f}")
    logged = read_log(csv_path)
    if len(logged.get("epoch", [])) != args.epochs:
        raise SystemExit(f"{csv_path} has {len(logged.get('epoch', []))} rows, expected "
                         f"{args.epochs}")
    hist = {k: [float(v) for v in vals] for k, vals in logged.items() if k != "epoch"}
    return hist, float(np.sum(logged.get("epoch_time_s", [0.0]))), extra


# --------------------------------------------------------------------- CLI
def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="expectigrad-train-image",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", choices=TASKS, default="mnist")
    p.add_argument("--model", choices=MODELS, default=None,
                   help="default: mlp for mnist, vgg16 for cifar10, mobilenetv2 for imagenet")
    p.add_argument("--optimizer", "--optimizers", dest="optimizer", default=None,
                   help="comma-separated; run in turn with identical seeds. Default: "
                        "expectigrad,adam (the paper's list per task with --full)")
    p.add_argument("--hparams", choices=("paper", "shared"), default="paper",
                   help="paper: per-optimizer values the paper used (PAPER_HPARAMS); shared: "
                        "--lr/--beta1/--beta2/--epsilon for all (defaults 1e-3/0.9/0.999/1e-8)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--beta1", type=float, default=None,
                   help="Expectigrad beta, Adam/AMSGrad/Yogi beta_1")
    p.add_argument("--beta2", type=float, default=None,
                   help="Adam/AMSGrad/Yogi beta_2, RMSProp/Adadelta rho")
    p.add_argument("--epsilon", type=float, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="default 128 (mlp) / 64 (CNNs)")
    p.add_argument("--steps-per-epoch", type=int, default=None,
                   help="minibatches per epoch (the training set repeats); default: one pass")
    p.add_argument("--validation-steps", type=int, default=None)
    p.add_argument("--no-validation", action="store_true")
    p.add_argument("--data-dir", default=None,
                   help="a folder with the four MNIST-format IDX files (mnist / fashion_mnist), "
                        "or a TFDS data_dir holding the prepared dataset")
    p.add_argument("--data-source", choices=("auto", "idx", "tfds", "offline"), default="auto",
                   help="auto: IDX files in --data-dir if there, else TFDS, else offline")
    p.add_argument("--checkpoint-dir", default=None,
                   help="IDX data: save weights and optimizer state after every epoch here "
                        "and resume from them (finished optimizers are skipped)")
    p.add_argument("--gen-train", type=int, default=5000, help="generated set: training images")
    p.add_argument("--gen-test", type=int, default=1000, help="generated set: test images")
    p.add_argument("--gen-size", type=int, default=32, help="generated set: image side")
    p.add_argument("--image-size", type=int, default=None,
                   help="CNN input side (default: the data's, at least 32; 224 for ImageNet)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crop + flip (default: on with --full for cifar10/imagenet)")
    p.add_argument("--mlp-hidden", type=int, default=1000)
    p.add_argument("--width", type=int, default=16, help="vgg_small/resnet_small base channels")
    p.add_argument("--alpha", type=float, default=1.0, help="MobileNetV2 width multiplier")
    p.add_argument("--seed", type=int, default=0, help="weights and minibatch order")
    p.add_argument("--seed-data", type=int, default=0, help="data split / generated set")
    p.add_argument("--shuffle-buffer", type=int, default=60000)
    p.add_argument("--jit-compile", action="store_true", help="XLA (default off)")
    p.add_argument("--out-dir", default="runs/image")
    p.add_argument("--tag", default=None, help="file prefix (default <data>_<model>)")
    p.add_argument("--quick", action="store_true",
                   help="a few seconds: MLP 2 epochs; CNNs 1 epoch of 3 steps on 96 images")
    p.add_argument("--full", action="store_true",
                   help="the paper's settings: epochs, batch size, augmentation, optimizer list")
    p.add_argument("--replot", metavar="SUMMARY_JSON", default=None,
                   help="only redraw the PNG of an earlier run from its summary JSON and CSVs "
                        "(must be the only argument)")
    p.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2))
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.replot:
        p.error("--replot must be the only argument")
    if args.quick and args.full:
        p.error("--quick and --full exclude each other")

    full = FULL_SETTINGS[args.task]
    if args.model is None:
        args.model = full["model"]
    kind = "mlp" if args.model == "mlp" else "cnn"
    if args.full:
        args.epochs = args.epochs or full["epochs"]
        args.batch_size = args.batch_size or full["batch_size"]
        args.optimizer = args.optimizer or full["optimizers"]
        if args.augment is None:
            args.augment = full["augment"] and kind == "cnn"
    if args.quick:
        quick = QUICK_SETTINGS[kind]
        args.epochs = args.epochs or quick["epochs"]
        args.batch_size = args.batch_size or quick["batch_size"]
        args.steps_per_epoch = args.steps_per_epoch or quick["steps_per_epoch"]
        if kind == "cnn":
            args.gen_train = min(args.gen_train, quick["gen_train"])
            args.gen_test = min(args.gen_test, quick["gen_test"])
            args.validation_steps = args.validation_steps or 1
    args.epochs = args.epochs or DEFAULT_EPOCHS[kind]
    args.batch_size = args.batch_size or (128 if kind == "mlp" else 64)
    args.augment = bool(args.augment)
    args.optimizer = [o.strip().lower() for o in (args.optimizer or "expectigrad,adam").split(",")
                      if o.strip()]
    known = set(PAPER_HPARAMS)
    unknown = [o for o in args.optimizer if o not in known]
    if unknown or not args.optimizer:
        p.error(f"unknown optimizer(s) {unknown}; known: {sorted(known)}")
    if len(set(args.optimizer)) != len(args.optimizer):
        p.error("an optimizer is listed twice")
    if args.epochs < 1 or args.batch_size < 1:
        p.error("--epochs and --batch-size must be >= 1")
    if args.checkpoint_dir and args.steps_per_epoch:
        p.error("--checkpoint-dir resumes whole epochs; it cannot be combined with "
                "--steps-per-epoch")
    if args.image_size is not None and args.image_size < 32 and kind == "cnn":
        p.error("--image-size must be >= 32 (keras.applications minimum)")
    return args


def replot(summary_path):
    """Redraws ``<prefix>.png`` from a summary JSON and its CSV files."""
    with open(summary_path) as f:
        summary = json.load(f)
    out_dir = os.path.dirname(os.path.abspath(summary_path))
    logs = {r["optimizer"]: read_log(os.path.join(out_dir, r["csv"])) for r in summary["results"]}
    title = (f"{summary['data_source']}: {summary['model']} "
             f"({summary['results'][0]['parameters']:,} params), "
             f"batch {summary['batch_size']}, seed {summary['seed']}")
    png = os.path.join(out_dir, summary["png"])
    plot_curves(png, logs, title, top5=summary["num_classes"] > 10)
    return png


def main(argv=None, log=print):
    argv_list = sys.argv[1:] if argv is None else list(argv)
    if argv_list[:1] == ["--replot"]:
        if len(argv_list) != 2:
            raise SystemExit("usage: expectigrad-train-image --replot SUMMARY_JSON")
        log(f"wrote {replot(argv_list[1])}")
        return None
    args = parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    import keras
    import tensorflow as tf

    data = load_data(args, log)
    input_shape = input_shape_for(args, data)
    args.prefix = args.tag or f"{data.tag}_{args.model}"
    if args.checkpoint_dir and not per_epoch_order(args, data):
        raise SystemExit(f"--checkpoint-dir {args.checkpoint_dir!r}: resuming needs IDX data "
                         f"(in memory); the data here are {data.source}")
    log(f"task {args.task}, model {args.model}, optimizers {','.join(args.optimizer)}, "
        f"{args.epochs} epoch(s), batch {args.batch_size}"
        + (f", {args.steps_per_epoch} steps/epoch" if args.steps_per_epoch else "")
        + (", augmentation" if args.augment else "")
        + f", hparams={args.hparams}, jit_compile={args.jit_compile}")
    results = []
    start = time.perf_counter()
    for name in args.optimizer:
        results.append(train_one(args, data, name, input_shape, log))
    elapsed = time.perf_counter() - start

    logs = {r["optimizer"]: read_log(os.path.join(args.out_dir, r["csv"])) for r in results}
    top5 = data.num_classes > 10
    title = (f"{data.source}: {args.model} ({results[0]['parameters']:,} params), "
             f"batch {args.batch_size}, seed {args.seed}")
    png = os.path.join(args.out_dir, f"{args.prefix}.png")
    plot_curves(png, logs, title, top5=top5)
    if data.source == "generated-shapes":
        save_samples(os.path.join(args.out_dir, "generated_samples.png"), size=args.gen_size,
                     seed=args.seed_data)
    summary = {
        "command": "expectigrad-train-image " + " ".join(argv if argv is not None
                                                         else sys.argv[1:]),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "tensorflow": tf.__version__, "keras": keras.__version__,
                    "gpus": len(tf.config.list_physical_devices("GPU"))},
        "task": args.task, "model": args.model, "data_source": data.source,
        "n_train": data.n_train, "n_test": data.n_test, "num_classes": data.num_classes,
        "updates_per_epoch": updates_per_epoch(args, data),
        "batch_order": ("numpy.random.default_rng([seed, epoch]).permutation(n_train)"
                        if per_epoch_order(args, data) else "tf.data shuffle(seed)"),
        "input_shape": list(input_shape), "epochs": args.epochs, "batch_size": args.batch_size,
        "steps_per_epoch": args.steps_per_epoch, "augment": args.augment,
        "hparams_mode": args.hparams, "seed": args.seed, "jit_compile": args.jit_compile,
        "quick": args.quick, "full": args.full, "png": os.path.basename(png),
        "elapsed_s": elapsed,  # this invocation; a resumed run trained for longer
        "training_seconds_total": float(sum(r["seconds"] for r in results)),
        "results": results,
    }
    write_json(os.path.join(args.out_dir, f"{args.prefix}_summary.json"), summary)
    log(f"trained on {data.n_train} images"
        + (f" ({updates_per_epoch(args, data)} updates per epoch, "
           f"{updates_per_epoch(args, data) * args.epochs} per optimizer)"
           if updates_per_epoch(args, data) else ""))
    log(f"wrote {png} and {args.prefix}_*.csv / _summary.json in {args.out_dir}; "
        f"done in {elapsed:.1f}s")
    return summary


def console_main():
    """The ``expectigrad-train-image`` command (exit status 0)."""
    main()
    return 0


if __name__ == "__main__":
    main()
