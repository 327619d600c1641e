"""Tests of expectigrad_experiments.train_image (Figures 2-4 experiments),
expectigrad_experiments.momentum_study (Figure 2 left: inner vs outer
momentum) and the datasets they share (expectigrad_experiments.data).

Quick runs only (seconds each): the MLP on scikit-learn's digits, one small
CNN on the generated images, the TFDS path through tfds.testing.mock_data,
and the momentum study; plus the inner-momentum optimizers against a NumPy
implementation written here from their formulas.
"""

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from expectigrad_experiments import data, momentum_study, train_image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows, f"{path} is empty"
    return rows


def _check_png(path):
    assert os.path.isfile(path)
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert float(np.std(img)) > 0  # not blank


def _check_training_csv(path, epochs, validation=True):
    rows = _read_csv(path)
    assert len(rows) == epochs
    assert [int(r["epoch"]) for r in rows] == list(range(epochs))
    needed = {"loss", "acc", "error", "epoch_time_s"}
    if validation:
        needed |= {"val_loss", "val_acc", "val_error"}
    assert needed <= set(rows[0])
    for r in rows:
        assert math.isfinite(float(r["loss"])) and float(r["loss"]) > 0
        assert 0.0 <= float(r["error"]) <= 1.0
        assert abs(float(r["error"]) + float(r["acc"]) - 1.0) < 1e-6
    return rows


# ------------------------------------------------------------------ data
def test_generated_images_are_deterministic_and_balanced():
    x1, y1 = data.generate_images(120, size=32, seed=3)
    x2, y2 = data.generate_images(120, size=32, seed=3)
    assert x1.dtype == np.uint8 and x1.shape == (120, 32, 32, 3)
    assert y1.dtype == np.int32 and y1.shape == (120,)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(np.bincount(y1, minlength=10), np.full(10, 12))
    x3, _ = data.generate_images(120, size=32, seed=4)
    assert not np.array_equal(x1, x3)
    # Not degenerate: every image has contrast, images differ from each other.
    assert (x1.reshape(120, -1).std(axis=1) > 10).all()
    assert len({img.tobytes() for img in x1}) == 120
    # n not divisible by the class count: counts differ by at most one.
    _, y = data.generate_images(23, size=16, seed=0, num_classes=4)
    counts = np.bincount(y, minlength=4)
    assert counts.sum() == 23 and counts.max() - counts.min() <= 1


def test_generated_classes_are_not_separable_by_colour():
    """Colours are drawn independently of the class: the mean colour of an
    image predicts its class no better than chance (a CNN must see shapes)."""
    x, y = data.generate_images(600, size=16, seed=0)
    means = x.reshape(600, -1, 3).mean(axis=1)
    class_means = np.stack([means[y == c].mean(axis=0) for c in range(10)])
    nearest = np.argmin(((means[:, None, :] - class_means[None]) ** 2).sum(-1), axis=1)
    assert (nearest == y).mean() < 0.3


def test_digits_split():
    (x, y), (xt, yt) = data.load_digits_split(0)
    assert x.shape == (1437, 8, 8, 1) and xt.shape == (360, 8, 8, 1)
    assert x.dtype == np.float32 and y.dtype == np.int32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert set(np.unique(y)) == set(range(10))
    assert train_image.load_digits_split is data.load_digits_split  # what train_image uses
    # The split train_image had before it moved to the shared module.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    rx, ry = load_digits(return_X_y=True)
    rx = (rx / 16.0).astype("float32").reshape(-1, 8, 8, 1)
    rx, rxt, ry, ryt = train_test_split(rx, ry.astype("int32"), test_size=0.2, random_state=0,
                                        stratify=ry)
    for got, want in zip((x, xt, y, yt), (rx, rxt, ry, ryt)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("seed", [0, 3])
def test_demo_digits_split(seed):
    """The demo's split: flat vectors, a seeded shuffle, the first 80% to train
    (the same arrays as the demo's own loader produced before it moved)."""
    from sklearn.datasets import load_digits

    (x, y), (xt, yt) = data.load_digits_shuffled_split(seed)
    assert x.shape == (1437, 64) and xt.shape == (360, 64)
    assert x.dtype == np.float32 and y.dtype == np.int32
    rx, ry = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(rx))
    rx, ry = (rx / 16.0).astype("float32")[order], ry[order].astype("int32")
    np.testing.assert_array_equal(np.concatenate([x, xt]), rx)
    np.testing.assert_array_equal(np.concatenate([y, yt]), ry)


# ------------------------------------------------------------------ CLI settings
def test_full_settings_follow_the_paper():
    a = train_image.parse_args(["--task", "mnist", "--full"])
    assert (a.model, a.epochs, a.batch_size) == ("mlp", 150, 128)
    assert a.optimizer == ["expectigrad", "rmsprop", "adadelta", "adam"] and not a.augment
    a = train_image.parse_args(["--task", "cifar10", "--full", "--model", "resnet50"])
    assert (a.model, a.epochs, a.augment) == ("resnet50", 250, True)
    assert set(a.optimizer) == {"adagrad", "adam", "amsgrad", "yogi", "expectigrad"}
    a = train_image.parse_args(["--task", "imagenet", "--full"])
    assert (a.model, a.epochs, a.optimizer) == ("mobilenetv2", 300, ["expectigrad", "yogi"])
    a = train_image.parse_args(["--task", "cifar10", "--quick", "--model", "vgg_small"])
    assert (a.epochs, a.steps_per_epoch) == (1, 3)
    with pytest.raises(SystemExit):
        train_image.parse_args(["--quick", "--full"])
    with pytest.raises(SystemExit):
        train_image.parse_args(["--optimizer", "adam,nope"])


def test_hyperparameter_presets():
    paper = train_image.parse_args(["--optimizer", "expectigrad,rmsprop,yogi"])
    assert train_image.optimizer_hparams("expectigrad", paper) == dict(
        lr=1e-3, beta1=0.9, beta2=0.999, epsilon=1e-8)
    assert train_image.optimizer_hparams("rmsprop", paper)["beta2"] == 0.9
    assert train_image.optimizer_hparams("yogi", paper)["lr"] == 1e-2
    override = train_image.parse_args(["--lr", "5e-4"])
    assert train_image.optimizer_hparams("yogi", override)["lr"] == 5e-4
    shared = train_image.parse_args(["--hparams", "shared", "--beta2", "0.99"])
    for name in ("rmsprop", "yogi", "adam"):
        assert train_image.optimizer_hparams(name, shared) == dict(
            lr=1e-3, beta1=0.9, beta2=0.99, epsilon=1e-8)
    from expectigrad_experiments.optimizers import make_optimizer

    hp = train_image.optimizer_hparams("rmsprop", paper)
    opt = make_optimizer("rmsprop", hp["lr"], hp["beta1"], hp["beta2"], hp["epsilon"])
    assert abs(float(opt.rho) - 0.9) < 1e-12 and opt.epsilon == 1e-10
    hp = train_image.optimizer_hparams("adagrad", paper)
    opt = make_optimizer("adagrad", hp["lr"], hp["beta1"], hp["beta2"], hp["epsilon"])
    assert type(opt).__name__ == "Adagrad" and opt.epsilon == 1e-7


@pytest.mark.parametrize("name", ["vgg16", "resnet50", "mobilenetv2", "vgg_small",
                                  "resnet_small", "mlp"])
def test_models_build_with_small_inputs_and_emit_logits(name):
    import keras

    shape = (64,) if name == "mlp" else (32, 32, 3)
    model = train_image.build_model(name, shape, 10, mlp_hidden=32, alpha=0.35)
    assert model.output_shape == (None, 10)
    out = np.asarray(model(np.zeros((2,) + shape, "float32")))
    assert out.shape == (2, 10) and np.isfinite(out).all()
    # logits: the last layer has no softmax
    assert getattr(model.layers[-1], "activation", keras.activations.linear) in (
        keras.activations.linear, None)
    if name == "vgg16":
        assert model.count_params() == 33_638_218  # the paper's "33.6 million"


# ------------------------------------------------------------------ quick runs
def test_quick_mlp_on_digits_cli(tmp_path):
    """End to end, as the installed command run from a scratch directory
    (2 epochs, 2 optimizers)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    exe = os.path.join(os.path.dirname(sys.executable), "expectigrad-train-image")
    assert os.path.exists(exe), f"expectigrad-train-image is not installed next to {sys.executable}"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = tmp_path / "out"
    proc = subprocess.run(
        [exe, "--task", "mnist", "--model", "mlp", "--mlp-hidden", "256",
         "--optimizer", "expectigrad,adam", "--quick", "--quiet", "--out-dir", str(out)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "OFFLINE scikit-learn handwritten digits" in proc.stdout
    summary = json.loads((out / "digits_mlp_summary.json").read_text())
    assert summary["data_source"] == "sklearn-digits" and summary["epochs"] == 2
    assert [r["optimizer"] for r in summary["results"]] == ["expectigrad", "adam"]
    assert summary["command"].startswith("expectigrad-train-image --task mnist")
    assert sorted(os.listdir(cwd)) == []  # everything went to --out-dir
    for r in summary["results"]:
        assert r["finite"] and r["epochs"] == 2 and r["parameters"] == 85_002
        rows = _check_training_csv(out / r["csv"], 2)
        assert float(rows[-1]["loss"]) < float(rows[0]["loss"])  # it learns
    _check_png(out / "digits_mlp.png")
    # identical seeds: the same initial weights, so the first minibatch losses
    # agree and the first-epoch losses are close
    l0 = [float(_read_csv(out / r["csv"])[0]["loss"]) for r in summary["results"]]
    assert abs(l0[0] - l0[1]) < 0.2 * l0[0]
    # --replot redraws the figure from the saved CSVs
    os.remove(out / "digits_mlp.png")
    train_image.main(["--replot", str(out / "digits_mlp_summary.json")], log=lambda *_: None)
    _check_png(out / "digits_mlp.png")


def test_quick_cnn_on_generated_images(tmp_path):
    logs = []
    summary = train_image.main(
        ["--task", "cifar10", "--model", "vgg_small", "--optimizer", "expectigrad",
         "--quick", "--quiet", "--out-dir", str(tmp_path)], log=logs.append)
    assert any("OFFLINE generated shapes" in line for line in logs)
    assert summary["data_source"] == "generated-shapes"
    assert summary["input_shape"] == [32, 32, 3] and summary["n_train"] == 96
    (r,) = summary["results"]
    assert r["finite"] and r["epochs"] == 1
    _check_training_csv(tmp_path / "generated_vgg_small_expectigrad.csv", 1)
    _check_png(tmp_path / "generated_vgg_small.png")


def test_tfds_path_with_mock_mnist(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    logs = []
    with tfds.testing.mock_data(num_examples=48):
        summary = train_image.main(
            ["--task", "mnist", "--model", "mlp", "--optimizer", "expectigrad",
             "--data-dir", str(tmp_path / "tfds"), "--data-source", "tfds", "--epochs", "1",
             "--batch-size", "16", "--mlp-hidden", "32", "--quiet",
             "--out-dir", str(tmp_path / "out")], log=logs.append)
    assert summary["data_source"] == "tfds:mnist"
    assert any("TFDS 'mnist'" in line for line in logs)
    assert summary["input_shape"] == [784] and summary["num_classes"] == 10
    rows = _check_training_csv(tmp_path / "out" / "mnist_mlp_expectigrad.csv", 1)
    assert math.isfinite(float(rows[0]["val_loss"]))
    _check_png(tmp_path / "out" / "mnist_mlp.png")


def test_tfds_missing_falls_back_or_fails(tmp_path):
    args = train_image.parse_args(["--task", "mnist", "--data-dir", str(tmp_path)])
    logs = []
    data = train_image.load_data(args, logs.append)
    assert data.source == "sklearn-digits"
    assert any("falling back" in line for line in logs)
    args = train_image.parse_args(["--task", "mnist", "--data-dir", str(tmp_path),
                                   "--data-source", "tfds"])
    with pytest.raises(SystemExit):
        train_image.load_data(args, logs.append)


# ------------------------------------------------------------------ momentum study
class InnerMomentumNumpy:
    """From the formulas: s += g^2, n += sign(g^2), m = beta m + (1-beta) g,
    x -= c_t m / (eps + sqrt(s/n)) with s/n := 0 when n = 0 and
    c_t = lr (inner) or lr / (1 - beta^t) (bias-corrected inner)."""

    def __init__(self, x0, lr, beta, eps, bias_correction):
        self.x = np.array(x0, dtype=np.float64)
        self.s = np.zeros_like(self.x)
        self.n = np.zeros_like(self.x)
        self.m = np.zeros_like(self.x)
        self.lr, self.beta, self.eps, self.bc = lr, beta, eps, bias_correction
        self.t = 0

    def step(self, g):
        g = np.asarray(g, dtype=np.float64)
        self.t += 1
        self.s += g * g
        self.n += np.sign(g * g)
        self.m = self.beta * self.m + (1 - self.beta) * g
        mean = np.divide(self.s, self.n, out=np.zeros_like(self.s), where=self.n > 0)
        c = self.lr / (1 - self.beta ** self.t) if (self.bc and self.beta > 0) else self.lr
        self.x = self.x - c * self.m / (self.eps + np.sqrt(mean))
        return self.x


def _gradient_sequence(steps, shape, seed=0):
    rng = np.random.default_rng(seed)
    grads = rng.normal(size=(steps,) + shape) * rng.uniform(0.01, 10, size=(steps,) + shape)
    grads[rng.uniform(size=grads.shape) < 0.3] = 0.0  # sparse: some components often zero
    grads[:7, 0] = 0.0  # a component with no gradient at first (n = 0)
    return grads


@pytest.mark.parametrize("bias_correction", [False, True])
@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("dtype,rtol,atol", [("float64", 1e-12, 1e-14), ("float32", 2e-5, 1e-6)])
def test_inner_momentum_matches_numpy(bias_correction, beta, dtype, rtol, atol):
    import keras

    shape = (4, 3)
    x0 = np.random.default_rng(1).normal(size=shape)
    grads = _gradient_sequence(40, shape)
    var = keras.Variable(x0.astype(dtype), dtype=dtype)
    lr = 0.0625  # exact in float32, the dtype of keras' learning-rate variable
    opt = momentum_study.InnerMomentumExpectigrad(
        learning_rate=lr, beta=beta, epsilon=1e-6, bias_correction=bias_correction)
    ref = InnerMomentumNumpy(x0, lr, beta, 1e-6, bias_correction)
    for g in grads:
        opt.apply([keras.ops.convert_to_tensor(g.astype(dtype))], [var])
        expected = ref.step(g.astype(dtype).astype(np.float64))
        np.testing.assert_allclose(np.asarray(var), expected, rtol=rtol, atol=atol)
    assert np.all(np.asarray(var)[0] != x0[0])  # the late-starting component moved


def test_variants_coincide_at_beta_zero_and_differ_otherwise():
    """beta = 0: inner, bias-corrected inner and Expectigrad are the same update."""
    import keras

    shape = (5,)
    x0 = np.linspace(-1, 1, 5)
    grads = _gradient_sequence(25, shape, seed=2)

    def run(variant, beta):
        var = keras.Variable(x0.copy(), dtype="float64")
        opt = momentum_study.make_variant(variant, 0.01, beta, 1e-8)
        for g in grads:
            opt.apply([keras.ops.convert_to_tensor(g)], [var])
        return np.asarray(var)

    base = run("outer", 0.0)
    for variant in ("inner", "inner_bc"):
        np.testing.assert_allclose(run(variant, 0.0), base, rtol=1e-12)
    outs = [run(v, 0.9) for v in momentum_study.VARIANTS]
    assert not np.allclose(outs[0], outs[1]) and not np.allclose(outs[1], outs[2])


def test_inner_momentum_rejects_bad_arguments():
    with pytest.raises(ValueError):
        momentum_study.InnerMomentumExpectigrad(beta=1.0)
    with pytest.raises(ValueError):
        momentum_study.InnerMomentumExpectigrad(epsilon=0.0)
    with pytest.raises(ValueError):
        momentum_study.make_variant("middle")
    opt = momentum_study.InnerMomentumExpectigrad(beta=0.5, bias_correction=False)
    config = opt.get_config()
    assert config["beta"] == 0.5 and config["bias_correction"] is False
    clone = momentum_study.InnerMomentumExpectigrad.from_config(config)
    assert clone.beta == 0.5 and not clone.bias_correction


def test_quick_momentum_study(tmp_path):
    summary = momentum_study.main(["--quick", "--out-dir", str(tmp_path)], log=lambda *_: None)
    assert summary["record_steps"] == [6, 12] and summary["betas"] == [0.0, 0.9]
    rows = _read_csv(tmp_path / "momentum.csv")
    assert len(rows) == 2 * 3 * 2  # betas x variants x recorded steps
    losses = {(r["variant"], float(r["beta"]), int(r["step"])): float(r["train_loss"])
              for r in rows}
    assert all(math.isfinite(v) and v > 0 for v in losses.values())
    for step in (6, 12):
        # beta = 0: the three variants are one update, from the same weights
        # and minibatches (fused op vs keras ops: float32 round-off only)
        at0 = [losses[(v, 0.0, step)] for v in momentum_study.VARIANTS]
        np.testing.assert_allclose(at0, at0[2], rtol=1e-4)
    # with beta = 0.9, uncorrected inner momentum starts slowest (its first
    # steps are (1 - beta) times smaller)
    assert losses[("inner", 0.9, 12)] > losses[("inner_bc", 0.9, 12)]
    assert losses[("inner", 0.9, 12)] > losses[("outer", 0.9, 12)]
    _check_png(tmp_path / "momentum.png")
    saved = json.loads((tmp_path / "momentum_summary.json").read_text())
    assert set(saved["mean_train_loss"]) == {"6", "12"}
    assert "inner_bc_over_outer_at_step_12" in saved["inner_bc_over_outer"]


def test_batch_schedule_covers_each_epoch():
    batches = momentum_study.batch_schedule(10, 4, 7, seed=0)
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2, 4]
    assert sorted(np.concatenate(batches[:3])) == list(range(10))
    again = momentum_study.batch_schedule(10, 4, 7, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
