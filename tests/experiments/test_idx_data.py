"""MNIST-format (IDX) data from a folder: expectigrad_experiments.data's
reader and its checks, and ``expectigrad-train-image --data-dir`` on such a
folder (per-epoch batch order, checkpoints and resuming).

All IDX files are generated here (small, raw and gzip-compressed, intact and
broken), so nothing depends on a dataset being installed.
"""

import gzip
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from expectigrad_experiments import data, train_image
from expectigrad_experiments.data import IdxFormatError, load_idx_dataset, read_idx


def idx_bytes(array, magic=None, dims=None):
    """IDX encoding of a uint8 array (header from its shape unless ``dims``)."""
    array = np.asarray(array, dtype=np.uint8)
    dims = list(array.shape) if dims is None else list(dims)
    if magic is None:
        magic = 0x0800 + len(dims)
    return struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + array.tobytes()


def write_file(path, payload, compress):
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
        return str(path) + ".gz"
    with open(path, "wb") as f:
        f.write(payload)
    return str(path)


def make_idx_folder(folder, n_train=60, n_test=20, rows=6, cols=5, classes=3, compress=True,
                    seed=0):
    """Four IDX files whose labels are learnable: class c has bright pixels
    in band c of the image. Returns ((x, y), (xt, yt)) as written."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    out = []
    for split, n in (("train", n_train), ("t10k", n_test)):
        y = (np.arange(n) % classes).astype(np.uint8)
        rng.shuffle(y)
        x = rng.integers(0, 60, size=(n, rows, cols)).astype(np.uint8)
        for i, c in enumerate(y):
            x[i, c * rows // classes:(c + 1) * rows // classes] += 150
        write_file(os.path.join(folder, f"{split}-images-idx3-ubyte"), idx_bytes(x), compress)
        write_file(os.path.join(folder, f"{split}-labels-idx1-ubyte"), idx_bytes(y), compress)
        out.append((x, y))
    return out


# ------------------------------------------------------------------ reader
@pytest.mark.parametrize("compress", [False, True])
def test_folder_round_trip(tmp_path, compress):
    (x, y), (xt, yt) = make_idx_folder(tmp_path, compress=compress)
    suffix = ".gz" if compress else ""
    assert sorted(os.listdir(tmp_path)) == sorted(n + suffix for n in data.IDX_FILES.values())
    (a, b), (at, bt) = load_idx_dataset(str(tmp_path))
    assert a.shape == (60, 6, 5, 1) and a.dtype == np.uint8
    assert at.shape == (20, 6, 5, 1)
    np.testing.assert_array_equal(a[..., 0], x)
    np.testing.assert_array_equal(at[..., 0], xt)
    assert b.dtype == np.int32
    np.testing.assert_array_equal(b, y)
    np.testing.assert_array_equal(bt, yt)


def test_read_idx_magic_numbers(tmp_path):
    path = write_file(tmp_path / "a", idx_bytes(np.arange(24).reshape(2, 3, 4)), False)
    assert read_idx(path, data.IDX_IMAGES_MAGIC).shape == (2, 3, 4)
    assert data.IDX_IMAGES_MAGIC == 2051 and data.IDX_LABELS_MAGIC == 2049
    with pytest.raises(IdxFormatError, match=r"magic number 2051 .*expected 2049"):
        read_idx(path, data.IDX_LABELS_MAGIC)


def test_raw_file_preferred_and_mixed_compression(tmp_path):
    (x, _), _ = make_idx_folder(tmp_path, compress=True)
    # a raw train-images file next to the .gz one is read instead of it
    raw = np.full((60, 6, 5), 7, np.uint8)
    write_file(tmp_path / "train-images-idx3-ubyte", idx_bytes(raw), False)
    (a, _), _ = load_idx_dataset(str(tmp_path))
    assert (a == 7).all() and not (x == 7).all()


def _broken(tmp_path, name, payload, compress=False):
    """A valid folder, then one file replaced by ``payload`` (bytes)."""
    make_idx_folder(tmp_path, compress=compress)
    target = tmp_path / (name + (".gz" if compress else ""))
    os.remove(target)
    if compress:
        with open(target, "wb") as f:
            f.write(payload)
    else:
        write_file(tmp_path / name, payload, False)
    return str(target)


def test_truncated_raw_file(tmp_path):
    x = np.zeros((60, 6, 5), np.uint8)
    path = _broken(tmp_path, "train-images-idx3-ubyte", idx_bytes(x)[:-100])
    with pytest.raises(IdxFormatError) as err:
        load_idx_dataset(str(tmp_path))
    msg = str(err.value)
    assert path in msg and "truncated" in msg and "1800" in msg and "1700" in msg


def test_trailing_bytes(tmp_path):
    y = np.zeros(20, np.uint8)
    path = _broken(tmp_path, "t10k-labels-idx1-ubyte", idx_bytes(y) + b"\0\0\0")
    with pytest.raises(IdxFormatError, match="3 unexpected bytes") as err:
        load_idx_dataset(str(tmp_path))
    assert path in str(err.value)


def test_truncated_gzip_stream(tmp_path):
    x = np.random.default_rng(0).integers(0, 255, size=(60, 6, 5), dtype=np.uint8)
    whole = gzip.compress(idx_bytes(x))
    path = _broken(tmp_path, "train-images-idx3-ubyte", whole[: len(whole) // 2], compress=True)
    with pytest.raises(IdxFormatError, match="truncated gzip") as err:
        load_idx_dataset(str(tmp_path))
    assert path in str(err.value)


def test_not_gzip(tmp_path):
    path = _broken(tmp_path, "train-labels-idx1-ubyte", b"this is not gzip data", compress=True)
    with pytest.raises(IdxFormatError, match="not a valid gzip") as err:
        load_idx_dataset(str(tmp_path))
    assert path in str(err.value)


def test_swapped_files_wrong_magic(tmp_path):
    make_idx_folder(tmp_path, compress=False)
    images, labels = tmp_path / "t10k-images-idx3-ubyte", tmp_path / "t10k-labels-idx1-ubyte"
    os.rename(images, tmp_path / "tmp")
    os.rename(labels, images)
    os.rename(tmp_path / "tmp", labels)
    with pytest.raises(IdxFormatError, match=r"magic number 2049 .*expected 2051") as err:
        load_idx_dataset(str(tmp_path))
    assert str(images) in str(err.value)


@pytest.mark.parametrize("payload,match", [
    (b"\x00\x00", "too short"),
    (b"\x00\x00\x08\x03\x00\x00", "truncated header"),
    (b"PK\x03\x04" + bytes(40), "magic number"),
])
def test_garbage_headers(tmp_path, payload, match):
    path = _broken(tmp_path, "train-images-idx3-ubyte", payload)
    with pytest.raises(IdxFormatError, match=match) as err:
        load_idx_dataset(str(tmp_path))
    assert path in str(err.value)


def test_zero_dimension(tmp_path):
    path = _broken(tmp_path, "train-images-idx3-ubyte",
                   idx_bytes(np.zeros((0, 6, 5), np.uint8)))
    with pytest.raises(IdxFormatError, match="include 0") as err:
        load_idx_dataset(str(tmp_path))
    assert path in str(err.value)


def test_labels_count_differs_from_images(tmp_path):
    path = _broken(tmp_path, "train-labels-idx1-ubyte", idx_bytes(np.zeros(59, np.uint8)))
    with pytest.raises(IdxFormatError, match="has 59 labels but .* has 60 images") as err:
        load_idx_dataset(str(tmp_path))
    assert path in str(err.value)


def test_train_and_test_image_sizes_differ(tmp_path):
    _broken(tmp_path, "t10k-images-idx3-ubyte", idx_bytes(np.zeros((20, 5, 6), np.uint8)))
    with pytest.raises(IdxFormatError, match="6x5 images but .* 5x6"):
        load_idx_dataset(str(tmp_path))


def test_missing_and_absent_files(tmp_path):
    assert data.find_idx_files(str(tmp_path)) is None
    with pytest.raises(IdxFormatError, match="none of the IDX files"):
        load_idx_dataset(str(tmp_path))
    make_idx_folder(tmp_path, compress=True)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(IdxFormatError, match=r"3 of the 4 IDX files; missing "
                                             r"t10k-labels-idx1-ubyte\[\.gz\]"):
        data.find_idx_files(str(tmp_path))


# ------------------------------------------------------------------ train_image on IDX data
COMMON = ["--model", "mlp", "--mlp-hidden", "32", "--batch-size", "16", "--quiet"]


def _run(args, logs=None):
    return train_image.main(args, log=(logs.append if logs is not None else lambda *_: None))


def test_epoch_order_is_a_seeded_permutation():
    a = train_image.epoch_order(0, 0, 100)
    assert sorted(a) == list(range(100))
    np.testing.assert_array_equal(a, train_image.epoch_order(0, 0, 100))
    assert not np.array_equal(a, train_image.epoch_order(0, 1, 100))
    assert not np.array_equal(a, train_image.epoch_order(1, 0, 100))


def test_train_on_idx_folder(tmp_path):
    make_idx_folder(tmp_path / "idx", n_train=100, n_test=30)
    logs = []
    summary = _run(["--task", "fashion_mnist", "--data-dir", str(tmp_path / "idx"),
                    "--optimizer", "expectigrad,adam", "--epochs", "3",
                    "--out-dir", str(tmp_path / "out")] + COMMON, logs)
    text = "\n".join(logs)
    assert "IDX files in" in text and "100 train / 30 test" in text
    assert "trained on 100 images (7 updates per epoch, 21 per optimizer)" in text
    assert summary["data_source"] == "idx:" + str(tmp_path / "idx")
    assert summary["n_train"] == 100 and summary["n_test"] == 30
    assert summary["num_classes"] == 3 and summary["input_shape"] == [30]
    assert summary["updates_per_epoch"] == 7
    for r in summary["results"]:
        assert r["epochs"] == 3 and r["updates"] == 21 and r["train_images"] == 100
        assert r["finite"]
        rows = np.genfromtxt(tmp_path / "out" / r["csv"], delimiter=",", names=True)
        assert list(rows["epoch"]) == [0, 1, 2]
        assert rows["loss"][-1] < rows["loss"][0]  # it learns
        assert r["final_train_loss"] == pytest.approx(rows["loss"][-1])
        assert r["resumed_from_epoch"] == 0
        # the final model on the whole training set, in inference mode
        assert 0 < r["final_train_loss_evaluated"] < rows["loss"][0]
        assert 0 <= r["final_train_error_evaluated"] <= 1
    # the same initial weights and first batches: first-epoch losses close
    l0 = [np.genfromtxt(tmp_path / "out" / r["csv"], delimiter=",", names=True)["loss"][0]
          for r in summary["results"]]
    assert abs(l0[0] - l0[1]) < 0.3 * l0[0]
    assert os.path.isfile(tmp_path / "out" / "fashion_mnist_mlp.png")


def test_resume_gives_the_uninterrupted_result(tmp_path):
    make_idx_folder(tmp_path / "idx", n_train=80, n_test=16, compress=False)
    base = ["--task", "mnist", "--data-dir", str(tmp_path / "idx"),
            "--optimizer", "expectigrad,rmsprop"] + COMMON
    whole = _run(base + ["--epochs", "3", "--out-dir", str(tmp_path / "whole")])
    ck = str(tmp_path / "ck")
    _run(base + ["--epochs", "1", "--out-dir", str(tmp_path / "part"), "--checkpoint-dir", ck])
    assert sorted(os.listdir(ck)) == ["mnist_mlp_expectigrad.ckpt.npz",
                                      "mnist_mlp_rmsprop.ckpt.npz"]
    logs = []
    resumed = _run(base + ["--epochs", "3", "--out-dir", str(tmp_path / "part"),
                           "--checkpoint-dir", ck], logs)
    assert sum("1 of 3 epoch(s) done" in line for line in logs) == 2
    for a, b in zip(whole["results"], resumed["results"]):
        assert b["epochs"] == 3
        ra = np.genfromtxt(tmp_path / "whole" / a["csv"], delimiter=",", names=True)
        rb = np.genfromtxt(tmp_path / "part" / b["csv"], delimiter=",", names=True)
        assert list(rb["epoch"]) == [0, 1, 2]
        for key in ("loss", "val_loss", "acc"):
            np.testing.assert_allclose(rb[key], ra[key], rtol=1e-5, atol=1e-7)
    # a finished run is not trained again
    logs = []
    again = _run(base + ["--epochs", "3", "--out-dir", str(tmp_path / "part"),
                         "--checkpoint-dir", ck], logs)
    assert sum("3 of 3 epoch(s) done" in line for line in logs) == 2
    assert [r["final_train_loss"] for r in again["results"]] == \
        [r["final_train_loss"] for r in resumed["results"]]
    assert [r["resumed_from_epoch"] for r in again["results"]] == [3, 3]
    for a, b in zip(whole["results"], again["results"]):  # the same final weights
        assert b["final_train_loss_evaluated"] == pytest.approx(
            a["final_train_loss_evaluated"], rel=1e-5)
    # a checkpoint of another configuration is refused, naming what differs
    with pytest.raises(SystemExit, match="hyperparameters"):
        _run(base + ["--epochs", "3", "--lr", "0.01", "--out-dir", str(tmp_path / "part"),
                     "--checkpoint-dir", ck])


def test_bad_data_dir_errors(tmp_path):
    with pytest.raises(SystemExit, match="--data-dir '.*nowhere': no such directory"):
        _run(["--task", "fashion_mnist", "--data-dir", str(tmp_path / "nowhere"),
              "--data-source", "idx", "--out-dir", str(tmp_path)] + COMMON)
    with pytest.raises(SystemExit, match="no offline stand-in.*nowhere', which does not exist"):
        _run(["--task", "fashion_mnist", "--data-dir", str(tmp_path / "nowhere"),
              "--out-dir", str(tmp_path)] + COMMON)
    with pytest.raises(SystemExit, match="--task fashion_mnist has no offline stand-in"):
        _run(["--task", "fashion_mnist", "--out-dir", str(tmp_path)] + COMMON)
    broken = tmp_path / "broken"
    make_idx_folder(broken)
    os.remove(broken / "train-labels-idx1-ubyte.gz")
    with pytest.raises(SystemExit, match=r"--data-dir .*broken.*missing train-labels"):
        _run(["--task", "mnist", "--data-dir", str(broken), "--out-dir", str(tmp_path)] + COMMON)
    with pytest.raises(SystemExit, match="--checkpoint-dir"):
        _run(["--task", "mnist", "--quick", "--checkpoint-dir", str(tmp_path / "ck"),
              "--out-dir", str(tmp_path)] + COMMON)


def test_cli_reports_a_truncated_file(tmp_path):
    """As the installed command: exit status 1 and one line naming the file."""
    folder = tmp_path / "idx"
    make_idx_folder(folder, compress=False)
    path = folder / "train-images-idx3-ubyte"
    payload = path.read_bytes()
    path.write_bytes(payload[:-7])
    exe = os.path.join(os.path.dirname(sys.executable), "expectigrad-train-image")
    assert os.path.exists(exe)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    proc = subprocess.run([exe, "--task", "mnist", "--data-dir", str(folder),
                           "--out-dir", str(tmp_path / "out")] + COMMON,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert f"{path}: truncated" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "mnist_mlp_summary.json").exists()


def test_momentum_study_on_idx_folder(tmp_path):
    from expectigrad_experiments import momentum_study

    make_idx_folder(tmp_path / "idx", n_train=64, n_test=8)
    logs = []
    summary = momentum_study.main(
        ["--data-dir", str(tmp_path / "idx"), "--epochs", "0.5,1", "--seeds", "2",
         "--betas", "0,0.9", "--hidden", "16", "--batch-size", "16",
         "--out-dir", str(tmp_path / "out")], log=logs.append)
    assert "IDX files in" in logs[0] and "64 training images" in logs[0]
    assert "1 epoch = 4 steps" in logs[0]
    assert summary["record_steps"] == [2, 4] and summary["epoch_steps"] == 4
    assert summary["n_train"] == 64 and summary["digits_epoch_steps"] is None
    rows = np.genfromtxt(tmp_path / "out" / "momentum.csv", delimiter=",", names=True,
                         dtype=None, encoding="utf-8")
    assert len(rows) == 2 * 2 * 3 * 2  # seeds x betas x variants x steps
    assert np.isfinite(rows["train_loss"]).all()
    # beta = 0: one shared run reported for every variant
    at0 = rows[rows["beta"] == 0]
    for seed in (0, 1):
        vals = at0[(at0["seed"] == seed) & (at0["step"] == 4)]["train_loss"]
        assert len(vals) == 3 and np.ptp(vals) == 0
    assert os.path.isfile(tmp_path / "out" / "momentum.png")
    # --replot redraws the figure from the CSV and summary alone
    os.remove(tmp_path / "out" / "momentum.png")
    momentum_study.main(["--replot", str(tmp_path / "out")], log=lambda *_: None)
    assert os.path.getsize(tmp_path / "out" / "momentum.png") > 1000
    with pytest.raises(SystemExit, match="--data-dir .*: no such directory"):
        momentum_study.main(["--data-dir", str(tmp_path / "none"), "--out-dir", str(tmp_path)])
