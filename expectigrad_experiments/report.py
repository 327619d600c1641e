"""Output helpers shared by the experiments: CSV / JSON files and matplotlib.

* ``write_json`` / ``write_csv`` / ``write_dict_csv``: the result files;
* ``pyplot()``: matplotlib's pyplot on the non-interactive Agg backend;
* ``LABELS`` / ``COLORS`` / ``MARKERS`` / ``LINESTYLES``: one label,
  colour, marker and line style per optimizer, for every figure;
* ``read_log`` / ``plot_curves``: Keras CSVLogger files and the per-epoch
  training curves of Figures 2-4 (``train_image``);
* ``save_samples``: a montage of the generated image set (``data``).
"""

import csv
import json
import os

import numpy as np

__all__ = ["LABELS", "COLORS", "MARKERS", "LINESTYLES", "line_style", "pyplot", "write_json", "write_csv", "write_dict_csv",
           "read_log", "plot_curves", "save_samples"]

LABELS = {
    "expectigrad": "Expectigrad", "adam": "Adam", "amsgrad": "AMSGrad", "rmsprop": "RMSProp",
    "adadelta": "ADADELTA", "adagrad": "AdaGrad", "yogi": "Yogi", "sgd": "SGD",
    "amsgrad_max_corrected": "AMSGrad (max of corrected v)", "adafactor": "Adafactor",
}
COLORS = {
    "expectigrad": "tab:red", "adam": "tab:blue", "rmsprop": "tab:orange",
    "adadelta": "tab:green", "amsgrad": "tab:purple", "yogi": "tab:brown",
    "adagrad": "tab:olive", "sgd": "tab:gray", "amsgrad_max_corrected": "tab:pink",
    "adafactor": "tab:cyan",
}
# One marker and line style per optimizer, so that lines lying on top of
# each other stay distinguishable (and readable in grey).
MARKERS = {
    "expectigrad": "o", "adam": "s", "rmsprop": "^", "adadelta": "v", "amsgrad": "D",
    "yogi": "P", "adagrad": "X", "sgd": "*", "amsgrad_max_corrected": "<", "adafactor": ">",
}
LINESTYLES = {
    "expectigrad": "-", "adam": "--", "rmsprop": "-.", "adadelta": ":", "amsgrad": (0, (5, 1)),
    "yogi": (0, (3, 1, 1, 1, 1, 1)), "adagrad": (0, (1, 2)), "sgd": (0, (8, 2, 2, 2)),
}


def line_style(name, k, n_lines, n_points, n_markers=12):
    """``ax.plot`` keyword arguments of optimizer ``name``, line ``k`` of
    ``n_lines`` in a panel with ``n_points`` points: its colour, line style and
    marker, about ``n_markers`` markers per line, staggered between the lines
    so that lines lying on top of each other still show every marker."""
    every = max(1, n_points // n_markers)
    ours = name == "expectigrad"
    return dict(color=COLORS.get(name), ls=LINESTYLES.get(name, "--"),
                marker=MARKERS.get(name, "o"),
                markevery=((k * every) // max(1, n_lines), every), ms=4.5,
                mfc=None if ours else "none", lw=1.8 if ours else 1.3,
                zorder=3 if ours else 2)


def pyplot():
    """``matplotlib.pyplot`` with the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_json(path, obj, indent=2, newline=False, atomic=False):
    """``json.dump(obj, indent=indent)`` to ``path``, then a newline if
    ``newline``; with ``atomic`` through ``path + ".tmp"`` and a rename."""
    target = path + ".tmp" if atomic else path
    with open(target, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent)
        if newline:
            f.write("\n")
    if atomic:
        os.replace(target, path)


def write_csv(path, header, rows):
    """A CSV file: the ``header`` row, then ``rows`` (lists of cells)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for row in rows:
            w.writerow(row)


def write_dict_csv(path, fieldnames, rows):
    """A CSV file from dicts, columns ``fieldnames``."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)


def read_log(path):
    """A CSVLogger file as {column: np.array}."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    return {k: np.array([float(r[k]) if r[k] not in ("", None) else np.nan for r in rows])
            for k in rows[0]}


def plot_curves(out_png, logs, title, top5=False):
    """Training loss, training error, validation error vs epoch (Figures 2-4)."""
    plt = pyplot()
    has_val = any("val_error" in log for log in logs.values())
    panels = [("loss", "training loss", True), ("error", "training error (top-1)", False)]
    if has_val:
        key = "val_top5_error" if top5 else "val_error"
        panels.append((key, "validation error (%s)" % ("top-5" if top5 else "top-1"), False))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6))
    for ax, (key, ylabel, logy) in zip(np.atleast_1d(axes), panels):
        for k, (name, log) in enumerate(logs.items()):
            if key not in log:
                continue
            epochs = log["epoch"] + 1
            y = log[key]
            if logy:
                y = np.where(y > 0, y, np.nan)
            ours = name == "expectigrad"  # drawn on top
            # about 12 markers per line, staggered between optimizers so that
            # coinciding lines still show every optimizer's markers
            every = max(1, len(epochs) // 12)
            ax.plot(epochs, y, label=LABELS.get(name, name), color=COLORS.get(name),
                    marker=MARKERS.get(name, "o"), markevery=(k % every, every),
                    ms=4 if len(epochs) > 12 else 3.5, mfc="none" if not ours else None,
                    lw=1.8 if ours else 1.3, ls=LINESTYLES.get(name, "--"),
                    zorder=3 if ours else 2, alpha=0.95)
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both" if logy else "major")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def save_samples(path, n_per_class=8, size=32, seed=0):
    """A montage of generated images (``data.generate_images``), one row per class."""
    from .data import GENERATED_CLASSES, generate_images

    plt = pyplot()
    x, y = generate_images(n_per_class * len(GENERATED_CLASSES), size, seed=seed)
    fig, axes = plt.subplots(len(GENERATED_CLASSES), n_per_class,
                             figsize=(n_per_class * 0.9 + 1.6, len(GENERATED_CLASSES) * 0.9))
    for c, row in enumerate(axes):
        for ax, i in zip(row, np.flatnonzero(y == c)):
            ax.imshow(x[i], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(GENERATED_CLASSES[c], rotation=0, ha="right", va="center", fontsize=8)
    fig.subplots_adjust(left=0.2, right=0.99, top=0.99, bottom=0.01, wspace=0.05, hspace=0.05)
    fig.savefig(path, dpi=80)
    plt.close(fig)
