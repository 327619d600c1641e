"""Plots BLEU over steps from expectigrad-translate output dirs and collects their eval.json.

    python -m expectigrad_experiments.translate.plot runs/translation/expectigrad runs/translation/adam \\
        --out docs/results/translation/bleu.png --copy-json docs/results/translation

Each run's label is its optimizer (from eval.json) unless ``--labels`` names
them (e.g. two runs of the same optimizer). With ``--copy-json DIR``
each run's eval.json is copied to ``DIR/<prefix><label>_eval.json`` and a table of
the final scores is printed as Markdown.
"""

import argparse
import json
import os
import shutil

from ..report import LABELS, line_style, pyplot


def load(run_dir):
    with open(os.path.join(run_dir, "eval.json"), encoding="utf-8") as f:
        records = json.load(f)
    label = records[-1].get("optimizer") or os.path.basename(os.path.normpath(run_dir))
    return label, records


def plot(runs, out, title):
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for k, (label, records) in enumerate(runs):
        steps = [r["step"] for r in records]
        # Per-optimizer colour, line style and staggered markers (report.line_style):
        # runs with equal scores stay visible.
        style = line_style(label, k, len(runs), len(steps))
        name = LABELS.get(label, label)
        axes[0].plot(steps, [r["bleu_cased"] for r in records], label=name, **style)
        axes[1].plot(steps, [r["loss"] for r in records], label=name, **style)
    axes[0].set(xlabel="training step", ylabel="BLEU (cased, greedy)", title=title)
    axes[1].set(xlabel="training step", ylabel="eval cross-entropy (nats/token)", yscale="log",
                title="evaluation loss")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    fig.savefig(out, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m expectigrad_experiments.translate.plot",
                                description=__doc__.splitlines()[0])
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--out", required=True, help="PNG path")
    p.add_argument("--title", default="BLEU over training")
    p.add_argument("--copy-json", default=None, help="folder to copy each run's eval.json into")
    p.add_argument("--prefix", default="", help="prefix of the copied file names")
    p.add_argument("--labels", default=None,
                   help="comma-separated labels, one per run dir (default: each run's optimizer)")
    args = p.parse_args(argv)
    runs = [load(d) for d in args.run_dirs]
    if args.labels is not None:
        labels = [x.strip() for x in args.labels.split(",")]
        if len(labels) != len(runs) or not all(labels):
            p.error(f"--labels {args.labels!r}: expected {len(runs)} non-empty labels, one per run dir")
        runs = [(label, records) for label, (_, records) in zip(labels, runs)]
    plot(runs, args.out, args.title)
    if args.copy_json:
        os.makedirs(args.copy_json, exist_ok=True)
        for d, (label, _) in zip(args.run_dirs, runs):
            shutil.copyfile(os.path.join(d, "eval.json"), os.path.join(args.copy_json, f"{args.prefix}{label}_eval.json"))
    steps = sorted({r["step"] for _, recs in runs for r in recs})
    print("| step | " + " | ".join(label for label, _ in runs) + " |")
    print("|---:|" + "---:|" * len(runs))
    for s in steps:
        cells = []
        for _, recs in runs:
            r = next((r for r in recs if r["step"] == s), None)
            cells.append("" if r is None else f"{r['bleu_cased']:.2f} / {r['bleu_uncased']:.2f} / {r['loss']:.3f}")
        print(f"| {s} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
