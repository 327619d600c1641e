"""Datasets shared by the experiments (all offline: nothing is downloaded).

* ``load_digits_split``: scikit-learn's 8x8 handwritten digits as images,
  a fixed stratified split (``train_image``'s MNIST stand-in, ``momentum_study``).
* ``load_digits_shuffled_split``: the same digits as flat vectors, a seeded
  random 80/20 split (``demo``).
* ``generate_images``: a deterministic generated set of coloured shapes and
  textures (``train_image``'s CIFAR-10 / ImageNet stand-in).
* ``read_idx`` / ``find_idx_files`` / ``load_idx_dataset``: MNIST-format
  data (MNIST, Fashion-MNIST) from a folder holding the four standard IDX
  files, raw or gzip-compressed, with every header checked.

The translation corpora are in ``expectigrad_experiments.translate.data``.
"""

import gzip
import math
import os
import zlib

import numpy as np

__all__ = ["load_digits", "load_digits_split", "load_digits_shuffled_split",
           "GENERATED_CLASSES", "generate_images", "IDX_FILES", "IDX_IMAGES_MAGIC",
           "IDX_LABELS_MAGIC", "IdxFormatError", "read_idx", "find_idx_files",
           "load_idx_dataset"]


def load_digits():
    """scikit-learn's digits (shipped with scikit-learn): x (1797, 64) float32
    in [0, 1] (pixel / 16), y (1797,) int32."""
    from sklearn.datasets import load_digits as sk_load_digits

    x, y = sk_load_digits(return_X_y=True)
    return (x / 16.0).astype("float32"), y.astype("int32")


def load_digits_split(seed=0, test_fraction=0.2):
    """scikit-learn's 8x8 digits as images (N, 8, 8, 1) float32 in [0, 1], a
    fixed stratified split (seed 0: 1,437 train / 360 test)."""
    from sklearn.model_selection import train_test_split

    x, y = load_digits()
    x = x.reshape(-1, 8, 8, 1)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return (x_tr, y_tr), (x_te, y_te)


def load_digits_shuffled_split(seed=0, train_fraction=0.8):
    """The digits as flat vectors (N, 64), shuffled with ``seed`` and split
    into the first ``train_fraction`` (training) and the rest (test)."""
    x, y = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    n_train = int(train_fraction * len(x))
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


GENERATED_CLASSES = (
    "disk", "ring", "square", "triangle", "plus", "horizontal stripes",
    "vertical stripes", "checkerboard", "dot grid", "two disks",
)


def _rotate(u, v, angle):
    c, s = math.cos(angle), math.sin(angle)
    return c * u + s * v, -s * u + c * v


def _render(cls, rng, size):
    """One image of class ``cls``: (size, size, 3) float in [0, 1]."""
    coords = (np.arange(size, dtype=np.float64) + 0.5) / size
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    aa = 1.5 / size  # anti-aliasing width

    def smooth(signed_distance):  # 1 inside (distance < 0), 0 outside
        return np.clip(0.5 - signed_distance / aa, 0.0, 1.0)

    cx, cy = rng.uniform(0.35, 0.65, size=2)
    r = rng.uniform(0.16, 0.3)
    angle = rng.uniform(0, 2 * math.pi)
    u, v = _rotate(xx - cx, yy - cy, angle)
    if cls == 0:  # disk
        mask = smooth(np.hypot(u, v) - r)
    elif cls == 1:  # ring
        width = rng.uniform(0.25, 0.4) * r
        mask = smooth(np.abs(np.hypot(u, v) - r) - width / 2)
    elif cls == 2:  # rotated square
        mask = smooth(np.maximum(np.abs(u), np.abs(v)) - 0.8 * r)
    elif cls == 3:  # rotated equilateral triangle (max of three half-planes)
        d = np.full_like(u, -np.inf)
        for k in range(3):
            nu, nv = math.cos(2 * math.pi * k / 3), math.sin(2 * math.pi * k / 3)
            d = np.maximum(d, u * nu + v * nv - 0.55 * r)
        mask = smooth(d)
    elif cls == 4:  # plus
        arm = rng.uniform(0.2, 0.32) * r
        bar1 = np.maximum(np.abs(u) - r, np.abs(v) - arm)
        bar2 = np.maximum(np.abs(v) - r, np.abs(u) - arm)
        mask = smooth(np.minimum(bar1, bar2))
    elif cls in (5, 6):  # stripes, horizontal or vertical (+- 20 degrees)
        theta = rng.uniform(-0.35, 0.35) + (0.0 if cls == 5 else math.pi / 2)
        period = rng.uniform(0.12, 0.25)
        su, sv = _rotate(xx, yy, theta)
        phase = rng.uniform(0, period)
        mask = smooth(np.abs(((sv + phase) % period) - period / 2) - period / 4)
    elif cls == 7:  # checkerboard, random cell size and small rotation
        cell = rng.uniform(0.12, 0.22)
        su, sv = _rotate(xx, yy, rng.uniform(-0.3, 0.3))
        su, sv = su + rng.uniform(0, cell), sv + rng.uniform(0, cell)
        mask = ((np.floor(su / cell) + np.floor(sv / cell)) % 2).astype(np.float64)
    elif cls == 8:  # grid of small dots
        cell = rng.uniform(0.14, 0.22)
        su, sv = xx + rng.uniform(0, cell), yy + rng.uniform(0, cell)
        du, dv = (su % cell) - cell / 2, (sv % cell) - cell / 2
        mask = smooth(np.hypot(du, dv) - cell * rng.uniform(0.2, 0.3))
    elif cls == 9:  # two separated disks
        offset = rng.uniform(0.17, 0.25)
        r2 = r * 0.55
        d1 = np.hypot(u - offset, v) - r2
        d2 = np.hypot(u + offset, v) - r2
        mask = smooth(np.minimum(d1, d2))
    else:
        raise ValueError(cls)

    # Colours independent of the class: foreground and background differ by
    # at least 0.35 in mean intensity so that the shape is visible.
    bg = rng.uniform(0, 1, size=3)
    fg = rng.uniform(0, 1, size=3)
    while abs(fg.mean() - bg.mean()) < 0.35:
        fg = rng.uniform(0, 1, size=3)
    gradient = rng.normal(0, 0.08, size=(2, 3))  # low-frequency background shading
    background = bg + (xx - 0.5)[..., None] * gradient[0] + (yy - 0.5)[..., None] * gradient[1]
    image = background * (1 - mask[..., None]) + fg * mask[..., None]
    image = image + rng.normal(0, 0.04, size=image.shape)
    return np.clip(image, 0, 1)


def generate_images(n, size=32, seed=0, num_classes=10):
    """A deterministic, class-balanced set of procedurally generated images.

    Returns (images uint8 (n, size, size, 3), labels int32 (n,)). Labels are
    ``arange(n) % num_classes`` shuffled, so class counts differ by at most
    one. Each image is a shape or texture (``GENERATED_CLASSES``) at a random
    position, size, rotation and phase, in random foreground / background
    colours (independent of the class) with shading and pixel noise, so a
    classifier has to learn shape and orientation, not colour. The same
    (n, size, seed, num_classes) always gives the same bytes.
    """
    if not 2 <= num_classes <= len(GENERATED_CLASSES):
        raise ValueError(f"num_classes must be in [2, {len(GENERATED_CLASSES)}]")
    if size < 8:
        raise ValueError("size must be >= 8")
    rng = np.random.default_rng([int(seed), int(size), int(num_classes), 20201128])
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int32)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    for i, cls in enumerate(labels):
        images[i] = np.round(_render(int(cls), rng, size) * 255).astype(np.uint8)
    return images, labels


# ------------------------------------------------------------------ IDX (MNIST format)
# The four files of MNIST / Fashion-MNIST (LeCun et al.'s IDX format): a
# big-endian header -- two zero bytes, a type code (0x08: unsigned byte), the
# number of dimensions, then one uint32 size per dimension -- followed by the
# data, row-major. Images are idx3 (magic 2051 = 0x00000803: count, rows,
# columns), labels idx1 (magic 2049 = 0x00000801: count).
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049


class IdxFormatError(ValueError):
    """An IDX file (or a folder of them) that cannot be used; the message
    names the file and what is wrong with it."""


def _read_bytes(path):
    if path.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as f:
                return f.read()
        except EOFError as exc:
            raise IdxFormatError(f"{path}: truncated gzip file ({exc})") from exc
        except (OSError, zlib.error) as exc:
            raise IdxFormatError(f"{path}: not a valid gzip file ({exc})") from exc
    with open(path, "rb") as f:
        return f.read()


def read_idx(path, magic=None):
    """One IDX file of unsigned bytes (``.gz`` is decompressed) as a NumPy
    uint8 array shaped as its header says.

    Checks, each failure an ``IdxFormatError`` naming ``path``: the file holds
    a whole header; the magic number is ``magic`` when given (2051 images,
    2049 labels) or at least of the form 0x0000 08 NN (unsigned bytes, NN
    dimensions); every dimension is >= 1; the data after the header is
    exactly the product of the dimensions (a truncated file or trailing bytes
    are errors)."""
    buf = _read_bytes(path)
    if len(buf) < 4:
        raise IdxFormatError(f"{path}: {len(buf)} bytes, too short for an IDX header "
                             f"(truncated or not an IDX file)")
    found = int.from_bytes(buf[:4], "big")
    if magic is not None and found != magic:
        kind = {IDX_IMAGES_MAGIC: "images (idx3)", IDX_LABELS_MAGIC: "labels (idx1)"}
        raise IdxFormatError(
            f"{path}: magic number {found} (0x{found:08x}), expected {magic} "
            f"(0x{magic:08x}, {kind.get(magic, 'IDX')}); wrong file or not an IDX file")
    if buf[0] != 0 or buf[1] != 0 or buf[2] != 0x08 or buf[3] < 1:
        raise IdxFormatError(f"{path}: magic number {found} (0x{found:08x}) is not an IDX "
                             f"file of unsigned bytes (0x000008NN)")
    ndim = buf[3]
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise IdxFormatError(f"{path}: truncated header ({len(buf)} bytes, a {ndim}-d IDX "
                             f"header has {header})")
    dims = [int.from_bytes(buf[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    if any(d < 1 for d in dims):
        raise IdxFormatError(f"{path}: header dimensions {dims} include 0")
    expected = int(np.prod(dims, dtype=np.int64))
    have = len(buf) - header
    if have < expected:
        raise IdxFormatError(
            f"{path}: truncated: the header promises {dims} = {expected} bytes of data, the "
            f"file has {have} ({have / expected:.1%})")
    if have > expected:
        raise IdxFormatError(
            f"{path}: {have - expected} unexpected bytes after the {expected} bytes of data "
            f"the header {dims} promises")
    return np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(dims)


def find_idx_files(directory):
    """The four IDX files in ``directory`` as {key: path} (keys of
    ``IDX_FILES``; each file raw or ``.gz``, the raw one preferred when both
    exist), or None when the folder holds none of them. ``IdxFormatError``
    when only some of the four are there (naming the missing ones)."""
    found, missing = {}, []
    for key, name in IDX_FILES.items():
        for candidate in (name, name + ".gz"):
            path = os.path.join(directory, candidate)
            if os.path.isfile(path):
                found[key] = path
                break
        else:
            missing.append(name + "[.gz]")
    if not found:
        return None
    if missing:
        raise IdxFormatError(f"{directory}: has {len(found)} of the 4 IDX files; missing "
                             f"{', '.join(missing)}")
    return found


def load_idx_dataset(directory):
    """MNIST-format data from ``directory`` (see ``find_idx_files``):
    ((x_train, y_train), (x_test, y_test)), images uint8 (N, rows, cols, 1),
    labels int32 (N,).

    Besides ``read_idx``'s checks of each file: images have magic 2051 and 3
    dimensions, labels magic 2049 and 1; each labels file has as many labels
    as its images file has images; train and test images have the same
    size. ``IdxFormatError`` names the file(s) and the numbers."""
    paths = find_idx_files(directory)
    if paths is None:
        raise IdxFormatError(f"{directory}: none of the IDX files "
                             f"{', '.join(n + '[.gz]' for n in IDX_FILES.values())}")
    out = []
    for split in ("train", "test"):
        images = read_idx(paths[f"{split}_images"], IDX_IMAGES_MAGIC)
        labels = read_idx(paths[f"{split}_labels"], IDX_LABELS_MAGIC)
        if images.ndim != 3:
            raise IdxFormatError(f"{paths[split + '_images']}: {images.ndim} dimensions, "
                                 f"images need 3 (count, rows, columns)")
        if labels.ndim != 1:
            raise IdxFormatError(f"{paths[split + '_labels']}: {labels.ndim} dimensions, "
                                 f"labels need 1")
        if len(labels) != len(images):
            raise IdxFormatError(
                f"{paths[split + '_labels']} has {len(labels)} labels but "
                f"{paths[split + '_images']} has {len(images)} images")
        out.append((images[..., None], labels.astype(np.int32)))
    (x, _), (xt, _) = out
    if x.shape[1:] != xt.shape[1:]:
        raise IdxFormatError(
            f"{paths['train_images']} has {x.shape[1]}x{x.shape[2]} images but "
            f"{paths['test_images']} has {xt.shape[1]}x{xt.shape[2]}")
    return out[0], out[1]
