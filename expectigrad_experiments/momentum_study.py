"""Inner vs outer momentum in Expectigrad (the paper's Figure 2, left).

Three ways to add momentum to Expectigrad's arithmetic-mean normalisation,
for each element, with ``s`` the running sum of squared gradients and ``n``
the count of nonzero gradients (as in Expectigrad; ``s/n := 0`` when
``n = 0``)::

    inner      m = beta*m + (1-beta)*g;   x -= lr * m / (eps + sqrt(s/n))
    inner_bc   m = beta*m + (1-beta)*g;   x -= lr/(1-beta**t) * m / (eps + sqrt(s/n))
    outer      m = beta*m + (1-beta)*g/(eps + sqrt(s/n));   x -= lr/(1-beta**t) * m
               (this is Expectigrad itself: ``expectigrad_tf.Expectigrad``)

With beta = 0 all three are the same update. ``inner`` is classic (Polyak)
momentum on the numerator, ``inner_bc`` adds Adam's bias correction of the
numerator (Kingma & Ba), ``outer`` is the paper's eq. (3).

The study trains the paper's MLP (2 x 1000 ReLU, logits, cross-entropy) on
scikit-learn's 8x8 handwritten digits (offline stand-in for MNIST; 1,437
training images, the split of ``data.load_digits_split``) with
minibatches of 128, sweeping beta, and records the loss on the whole training
set (evaluated, not a running mean) after 1, 4 and 10 epochs of the digits
(``--epochs``; 12, 48 and 120 steps). The paper records one epoch of MNIST,
469 steps of 128 images; one digits epoch is 12 steps, so the later points
show how the picture changes with a larger update budget (``--epochs 39.1``
gives MNIST's 469 steps, by which time the MLP has fitted the digits and all
variants are near a loss of 1e-3). With ``--data-dir`` a folder holding the
four MNIST-format IDX files (MNIST or Fashion-MNIST, see
``data.load_idx_dataset``) the study uses its 60,000 training images
(pixel / 255) instead, and ``--epochs`` counts epochs of that set (``--epochs
1``: 469 steps, the paper's protocol). Results are
averaged over ``--seeds`` seeds. For each seed every run starts from the same
weights and sees the same minibatches. Outputs in --out-dir:
``momentum.png``, ``momentum.csv`` (variant, beta, seed, step, epoch, train_loss)
and ``momentum_summary.json``.

    expectigrad-momentum-study --out-dir docs/results/image
    expectigrad-momentum-study --quick --out-dir /tmp/momentum
    expectigrad-momentum-study --data-dir /usr/share/datasets/fashion-mnist --epochs 1 \
        --out-dir docs/results/fashion_mnist
"""

import argparse
import csv
import datetime
import math
import os
import platform
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from . import report  # noqa: E402
from .data import load_digits_split  # noqa: E402

VARIANTS = ("inner", "inner_bc", "outer")
LABELS = {
    "inner": "inner (Polyak)",
    "inner_bc": "bias-corrected inner (Adam-style)",
    "outer": "bias-corrected outer (Expectigrad)",
}
COLORS = {"inner": "tab:gray", "inner_bc": "tab:blue", "outer": "tab:red"}
# distinct markers and line styles: at beta = 0 the three variants coincide
STYLES = {"inner": dict(marker="s", ls=":", mfc="none", ms=7),
          "inner_bc": dict(marker="^", ls="--", mfc="none", ms=6),
          "outer": dict(marker="o", ls="-", ms=3.5)}
DEFAULT_BETAS = (0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.975, 0.99)
MNIST_EPOCH_STEPS = 469  # ceil(60000 / 128)


@keras.saving.register_keras_serializable(package="expectigrad_momentum_study",
                                          name="InnerMomentumExpectigrad")
class InnerMomentumExpectigrad(keras.optimizers.Optimizer):
    """Expectigrad's normaliser with *inner* momentum (on the raw gradient).

    For each step ``t = 1, 2, ...`` and element::

        s_t = s_{t-1} + g_t**2
        n_t = n_{t-1} + sign(g_t**2)
        m_t = beta * m_{t-1} + (1 - beta) * g_t
        x_t = x_{t-1} - c_t * m_t / (epsilon + sqrt(s_t / n_t))     (s/n := 0 if n = 0)

    with ``c_t = learning_rate`` (``bias_correction=False``, classic inner
    momentum) or ``c_t = learning_rate / (1 - beta**t)``
    (``bias_correction=True``). Not Expectigrad: a baseline for the momentum
    study. Dense gradients only.
    """

    def __init__(self, learning_rate=1e-3, beta=0.9, epsilon=1e-8, bias_correction=True,
                 name=None, **kwargs):
        if not 0.0 <= float(beta) < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta!r}")
        if not float(epsilon) > 0.0:
            raise ValueError(f"epsilon must be > 0, got {epsilon!r}")
        if name is None:
            name = "inner_momentum_bc" if bias_correction else "inner_momentum"
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.beta = float(beta)
        self.epsilon = float(epsilon)
        self.bias_correction = bool(bias_correction)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._sums = [self.add_variable_from_reference(v, name="sum") for v in var_list]
        self._counts = [self.add_variable_from_reference(v, name="count") for v in var_list]
        self._momentums = [self.add_variable_from_reference(v, name="momentum") for v in var_list]

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        const = lambda value: ops.convert_to_tensor(value, dtype=dtype)  # noqa: E731
        lr = ops.cast(learning_rate, dtype)
        g = ops.cast(gradient, dtype)
        i = self._get_variable_index(variable)
        g2 = ops.square(g)
        s = self._sums[i] + g2
        n = self._counts[i] + ops.sign(g2)
        m = const(self.beta) * self._momentums[i] + const(1.0 - self.beta) * g
        self.assign(self._sums[i], s)
        self.assign(self._counts[i], n)
        self.assign(self._momentums[i], m)
        mean = ops.where(n > 0, s / ops.maximum(n, const(1.0)), const(0.0))
        if self.bias_correction and self.beta > 0:
            step = ops.cast(self.iterations + 1, dtype)
            lr = lr / (const(1.0) - ops.power(const(self.beta), step))
        self.assign_sub(variable, lr * m / (const(self.epsilon) + ops.sqrt(mean)))

    def get_config(self):
        config = super().get_config()
        config.update({"beta": self.beta, "epsilon": self.epsilon,
                       "bias_correction": self.bias_correction})
        return config


def make_variant(variant, learning_rate=1e-3, beta=0.9, epsilon=1e-8):
    """Optimizer for one momentum variant ('inner', 'inner_bc' or 'outer')."""
    if variant == "outer":
        from expectigrad_tf import Expectigrad

        return Expectigrad(learning_rate=learning_rate, beta=beta, epsilon=epsilon)
    if variant in ("inner", "inner_bc"):
        return InnerMomentumExpectigrad(learning_rate, beta, epsilon,
                                        bias_correction=variant == "inner_bc")
    raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")


def batch_schedule(n, batch_size, steps, seed):
    """Index arrays of ``steps`` minibatches: epochs of seeded permutations,
    the last batch of an epoch possibly smaller."""
    rng = np.random.default_rng(seed)
    batches = []
    while len(batches) < steps:
        perm = rng.permutation(n)
        batches.extend(perm[i:i + batch_size] for i in range(0, n, batch_size))
    return batches[:steps]


def run_one(variant, beta, seed, data, args, record_steps):
    """Trains one MLP; returns {step: full-training-set loss} for record_steps."""
    import tensorflow as tf

    from .train_image import build_model

    x, y = data
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = build_model("mlp", (x.shape[1],), 10, mlp_hidden=args.hidden)
    optimizer = make_variant(variant, args.lr, beta, args.epsilon)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    weights = model.trainable_variables
    optimizer.build(weights)
    xs, ys = tf.constant(x), tf.constant(y)

    spec = [tf.TensorSpec([None, x.shape[1]], tf.float32), tf.TensorSpec([None], tf.int32)]

    @tf.function(input_signature=spec, jit_compile=args.jit_compile)
    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        optimizer.apply(tape.gradient(loss, weights), weights)
        return loss

    out = {}
    for t, idx in enumerate(batch_schedule(len(x), args.batch_size, max(record_steps), seed),
                            start=1):
        train_step(tf.gather(xs, idx), tf.gather(ys, idx))
        if t in record_steps:
            out[t] = float(loss_fn(ys, model(xs, training=False)))
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="expectigrad-momentum-study",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--betas", default=",".join(str(b) for b in DEFAULT_BETAS))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..seeds-1 (the paper: 10 runs)")
    p.add_argument("--epochs", default="1,4,10",
                   help="record the full training loss after these epochs (of the digits, "
                        "or of --data-dir's training set)")
    p.add_argument("--data-dir", default=None,
                   help="a folder with the four MNIST-format IDX files (MNIST, Fashion-MNIST); "
                        "default: scikit-learn's digits")
    p.add_argument("--share-beta0", action=argparse.BooleanOptionalAction, default=True,
                   help="at beta = 0 the three variants are the same update: run it once "
                        "(as 'outer') and report it for all (off with --quick)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--hidden", type=int, default=1000, help="units per hidden layer")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--epsilon", type=float, default=1e-8)
    p.add_argument("--jit-compile", action=argparse.BooleanOptionalAction, default=False,
                   help="XLA-compile the training step (all variants alike)")
    p.add_argument("--out-dir", default="runs/momentum")
    p.add_argument("--quick", action="store_true",
                   help="betas 0,0.9; 1 seed; 6 steps; 2x128 MLP (a few seconds)")
    args = p.parse_args(argv)
    if args.quick:
        args.betas, args.seeds, args.epochs, args.hidden = "0,0.9", 1, "0.5,1", 128
        args.share_beta0 = False
    args.betas = [float(b) for b in args.betas.split(",") if b.strip()]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if any(not 0.0 <= b < 1.0 for b in args.betas) or not args.betas:
        p.error("betas must be in [0, 1)")
    if any(v not in VARIANTS for v in args.variants) or not args.variants:
        p.error(f"variants must be among {VARIANTS}")
    args.epochs = sorted({float(e) for e in args.epochs.split(",") if e.strip()})
    if not args.epochs or args.epochs[0] <= 0:
        p.error("--epochs must be positive")
    if args.seeds < 1 or args.batch_size < 1:
        p.error("--seeds and --batch-size must be >= 1")
    return args


def plot(out_png, rows, betas, variants, panels, title):
    plt = report.pyplot()

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.9), squeeze=False)
    for ax, (step, label) in zip(axes[0], panels):
        for variant in variants:
            mean, lo, hi = [], [], []
            for beta in betas:
                vals = [r["train_loss"] for r in rows
                        if r["variant"] == variant and r["beta"] == beta and r["step"] == step]
                mean.append(np.mean(vals))
                lo.append(np.min(vals))
                hi.append(np.max(vals))
            mean, lo, hi = map(np.asarray, (mean, lo, hi))
            ax.errorbar(betas, mean, yerr=[mean - lo, hi - mean], label=LABELS[variant],
                        color=COLORS[variant], lw=1.4, capsize=2, **STYLES[variant])
        ax.axvline(0.9, ls="--", color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel(r"momentum constant $\beta$")
        ax.set_ylabel("training loss")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=8)
    import textwrap

    # wrapped to the figure's width (one panel is narrow)
    fig.suptitle("\n".join(textwrap.wrap(title, width=int(60 * len(panels)))), fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def replot(out_dir):
    """Redraws ``momentum.png`` in ``out_dir`` from its momentum.csv and
    momentum_summary.json (no training)."""
    import json

    with open(os.path.join(out_dir, "momentum_summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(out_dir, "momentum.csv"), newline="") as f:
        rows = [dict(r, beta=float(r["beta"]), step=int(r["step"]),
                     train_loss=float(r["train_loss"])) for r in csv.DictReader(f)]
    steps = summary.get("epoch_steps") or summary["digits_epoch_steps"]
    unit = "epoch" if summary.get("digits_epoch_steps") is None else "digits epoch"
    panels = [(s, f"after {s / steps:g} {unit}(s) = {s} steps") for s in summary["record_steps"]]
    title = (f"Momentum in Expectigrad: {summary['model']}, {summary['data']}, "
             f"batch {summary['batch_size']}, mean of {summary['seeds']} seed(s), bars: min-max")
    png = os.path.join(out_dir, summary["png"])
    plot(png, rows, summary["betas"], summary["variants"], panels, title)
    return png


def main(argv=None, log=print):
    argv_list = sys.argv[1:] if argv is None else list(argv)
    if argv_list[:1] == ["--replot"]:
        if len(argv_list) != 2:
            raise SystemExit("usage: expectigrad-momentum-study --replot OUT_DIR")
        log(f"wrote {replot(argv_list[1])}")
        return None
    args = parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    import tensorflow as tf

    if args.data_dir:
        from .data import IdxFormatError, load_idx_dataset

        if not os.path.isdir(args.data_dir):
            raise SystemExit(f"--data-dir {args.data_dir!r}: no such directory")
        try:
            (x, y), _ = load_idx_dataset(args.data_dir)
        except IdxFormatError as exc:
            raise SystemExit(f"--data-dir {args.data_dir!r}: {exc}") from None
        x = (x.reshape(len(x), -1) / np.float32(255.0)).astype(np.float32)
        y = y.astype(np.int32)
        epoch_name = "epoch"
        data_desc = f"IDX files in {os.path.abspath(args.data_dir)}, {len(x)} training images"
        short = os.path.basename(os.path.normpath(args.data_dir))
    else:
        (x, y), _ = load_digits_split(0)
        x = x.reshape(len(x), -1)
        epoch_name = "digits epoch"
        data_desc = f"sklearn digits, {len(x)} training images (offline stand-in for MNIST)"
        short = "sklearn digits (not MNIST)"
    epoch_steps = math.ceil(len(x) / args.batch_size)
    record = sorted({max(1, round(e * epoch_steps)) for e in args.epochs})
    log(f"data: {data_desc}; MLP 2x{args.hidden}; batch {args.batch_size}; recording the full "
        f"training loss after steps {record} (1 {epoch_name} = {epoch_steps} steps); "
        f"seeds {args.seeds}")
    rows = []
    start = time.perf_counter()
    for seed in range(args.seeds):
        for beta in args.betas:
            shared = None
            for variant in args.variants:
                t0 = time.perf_counter()
                if beta == 0 and args.share_beta0 and shared is not None:
                    losses, note = shared, "  (beta = 0: same update, shared run)"
                else:
                    run_as = "outer" if beta == 0 and args.share_beta0 else variant
                    losses = run_one(run_as, beta, seed, (x, y), args, record)
                    note = f"  ({time.perf_counter() - t0:.1f}s)"
                    if beta == 0:
                        shared = losses
                for step, loss in losses.items():
                    rows.append(dict(variant=variant, beta=beta, seed=seed, step=step,
                                     epoch=step / epoch_steps, train_loss=loss))
                log(f"seed {seed} beta {beta:<6g} {variant:<9s} "
                    + "  ".join(f"loss@{s}={losses[s]:.4g}" for s in record) + note)
    elapsed = time.perf_counter() - start

    report.write_dict_csv(os.path.join(args.out_dir, "momentum.csv"),
                          ["variant", "beta", "seed", "step", "epoch", "train_loss"], rows)

    def mean_loss(variant, beta, step):
        vals = [r["train_loss"] for r in rows
                if r["variant"] == variant and r["beta"] == beta and r["step"] == step]
        return float(np.mean(vals))

    table = {str(step): {v: {f"{b:g}": mean_loss(v, b, step) for b in args.betas}
                         for v in args.variants} for step in record}
    checks = {}
    if {"outer", "inner_bc"} <= set(args.variants):
        for step in record:
            ratios = {f"{b:g}": mean_loss("inner_bc", b, step) / mean_loss("outer", b, step)
                      for b in args.betas}
            checks[f"inner_bc_over_outer_at_step_{step}"] = ratios
    panels = [(s, f"after {s / epoch_steps:g} {epoch_name}(s) = {s} steps"
               + (" (= 1 MNIST epoch of minibatches)"
                  if s == MNIST_EPOCH_STEPS and not args.data_dir else ""))
              for s in record]
    title = (f"Momentum in Expectigrad: MLP 2x{args.hidden} on {short}, "
             f"batch {args.batch_size}, mean of {args.seeds} seed(s), bars: min-max")
    png = os.path.join(args.out_dir, "momentum.png")
    plot(png, rows, args.betas, args.variants, panels, title)
    summary = {
        "command": "expectigrad-momentum-study " + " ".join(
            argv if argv is not None else sys.argv[1:]),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "tensorflow": tf.__version__},
        "data": data_desc, "n_train": len(x), "epoch_steps": epoch_steps,
        "model": f"MLP 2x{args.hidden} ReLU, logits", "batch_size": args.batch_size,
        "lr": args.lr, "epsilon": args.epsilon, "betas": args.betas, "variants": args.variants,
        "seeds": args.seeds, "record_steps": record, "digits_epoch_steps": None if args.data_dir else epoch_steps,
        "share_beta0": args.share_beta0,
        "mean_train_loss": table, "inner_bc_over_outer": checks, "elapsed_s": elapsed,
        "png": "momentum.png", "csv": "momentum.csv",
    }
    report.write_json(os.path.join(args.out_dir, "momentum_summary.json"), summary)
    log(f"wrote {png}, momentum.csv and momentum_summary.json; done in {elapsed:.1f}s")
    return summary


def console_main():
    """The ``expectigrad-momentum-study`` command (exit status 0)."""
    main()
    return 0


if __name__ == "__main__":
    main()
