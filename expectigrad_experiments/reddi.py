"""The Reddi problem (Expectigrad paper, Section 4.1 and Figure 1).

Online problem, eq. (4) of the paper, for t = 1, 2, ...::

    h_t(x) = C * x   if t % N == 0
             -x      otherwise                 (gradient C or -1)

and its stochastic version (Reddi et al., 2019, Section 5): h_t(x) = C * x
with probability p, else -x. x is unconstrained (as in the paper, footnote 3),
so with C > N - 1 (online) or p * C > 1 - p (stochastic) the average gradient
is positive and minimising means x -> -inf; Figure 1 clips x to [-1, 1] for
display and the paper reports when x reaches -1.

Defaults reproduce the synthetic experiment of Reddi et al. (2019), which
Figure 1 says it replicates: gradient 1010 once every 101 steps, else -10
(online), and 1010 with probability 0.01, else -10 (stochastic). Written in
the form of eq. (4) that is C = 101, N = 101 (online) and C = 101, p = 0.01
(stochastic) with all gradients divided by 10; every method compared is
invariant to that scale up to epsilon (Adadelta too), so it changes nothing
but epsilon's (negligible) weight. beta2 = 0.99 is Reddi et al.'s setting;
lr = 1e-3, beta1 = 0.9 and epsilon = 1e-8 are Expectigrad's defaults
(Algorithm 1). The paper does not state the learning rate, x_0 or the
number of steps of Figure 1. Because the gradients do not depend on x, every
method here gives x_t = x_0 + lr * F_t with F_t independent of lr and x_0:
the learning rate only rescales the trajectories.

All optimizers run in one compiled TensorFlow loop (XLA, tf.range inside a
tf.function), each on its own variable whose elements are the problems
(element 0: online, 1..: stochastic runs, sharing the random draws across
optimizers; the draws come from a counter-based SplitMix64 stream, so they are
the same with and without XLA), so millions of steps take minutes on a CPU.

Outputs in --out-dir: reddi.png (Figure 1 style), trajectories.csv (x every
--record-every steps) and summary.json (final x and first step with x <= -1
per problem and optimizer, plus the qualitative checks).

    expectigrad-reddi --out-dir docs/results/reddi
    expectigrad-reddi --quick --out-dir /tmp/reddi
    expectigrad-reddi --replot docs/results/reddi      # redraw reddi.png only
"""

import argparse
import datetime
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from . import report  # noqa: E402
from .report import COLORS, LABELS, line_style, pyplot  # noqa: E402

DEFAULT_OPTIMIZERS = ("expectigrad", "adam", "rmsprop", "adadelta", "amsgrad", "yogi")
# The optimizers this experiment offers (optimizers.OPTIMIZER_NAMES has more).
OPTIMIZER_CHOICES = DEFAULT_OPTIMIZERS + ("sgd", "amsgrad_max_corrected")
EMA_METHODS = ("adam", "rmsprop", "adadelta")
CLIPPED_EMA_METHODS = ("amsgrad", "yogi", "amsgrad_max_corrected")
DEFAULT_STEPS = 20_000_000
QUICK_STEPS = 100_000
HIT_KEY = "first_step_x_le_minus_1"
# The paper's claims (Figure 1) are about where the methods end up: whether
# and when x reaches -1. Since x_t = x0 + lr * F_t (F_t independent of lr),
# how far x gets is set by lr x steps; these checks need at least Figure 1's
# (lr 1e-3 x 2e7 steps: Expectigrad reaches -1 after ~1.1e6 online steps,
# Yogi after ~1.2e7). Shorter runs (--quick) check directions only.
FULL_RUN_LR_STEPS = 1e-3 * DEFAULT_STEPS
# Directions are checked over the second half of the run, once it spans this
# many periods of the large gradient (N online, 1/p stochastic).
TREND_MIN_PERIODS = 100

# Random numbers of the stochastic problem: the SplitMix64 stream (Steele,
# Lea & Flood, 2014) of a per-run key, evaluated at t, so the draws depend on
# (seed, run, t) only: identical with and without XLA, on any device and
# whatever the chunking, and shared by all optimizers (common random numbers).
# tf.random's stateless ops differ between XLA and the TensorFlow kernels.
_MASK64 = (1 << 64) - 1
_GOLDEN64 = 0x9E3779B97F4A7C15
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _mix64(z):
    z &= _MASK64
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK64
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK64
    return z ^ (z >> 31)


def run_key(seed, run):
    """The SplitMix64 seed of stochastic run ``run`` (0, 1, ...)."""
    return _mix64((int(seed) << 20) + int(run))


def stochastic_uniform(seed, run, t):
    """Reference (pure Python): the uniform in [0, 1) drawn at step t."""
    return (_mix64(run_key(seed, run) + int(t) * _GOLDEN64) >> 11) * 2.0 ** -53


def stochastic_uniform_tf(keys, t):
    """TensorFlow version of stochastic_uniform for uint64 ``keys`` (one per
    run) and an integer step ``t``; float64 results."""
    import tensorflow as tf

    def shift_xor(z, n):
        return tf.bitwise.bitwise_xor(z, tf.bitwise.right_shift(z, tf.constant(n, tf.uint64)))

    z = keys + tf.cast(t, tf.uint64) * tf.constant(_GOLDEN64, tf.uint64)
    z = shift_xor(z, 30) * tf.constant(_MIX1, tf.uint64)
    z = shift_xor(z, 27) * tf.constant(_MIX2, tf.uint64)
    z = shift_xor(z, 31)
    return tf.cast(tf.bitwise.right_shift(z, tf.constant(11, tf.uint64)), tf.float64) * 2.0 ** -53


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="expectigrad-reddi",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate, all optimizers")
    p.add_argument("--beta1", "--beta", dest="beta1", type=float, default=0.9,
                   help="momentum constant (Expectigrad's beta, Adam/AMSGrad/Yogi beta_1)")
    p.add_argument("--beta2", type=float, default=0.99,
                   help="second-moment constant (Adam/AMSGrad/Yogi beta_2, RMSProp/Adadelta rho)")
    p.add_argument("--epsilon", type=float, default=1e-8)
    p.add_argument("--C", type=float, default=101.0, help="online problem: large gradient")
    p.add_argument("--N", type=int, default=101, help="online problem: period")
    p.add_argument("--phase", type=int, default=0,
                   help="online problem: large gradient when t %% N == phase (eq. 4: 0; "
                        "Reddi et al.'s experiment: 1, i.e. at t = 1)")
    p.add_argument("--stoch-C", type=float, default=101.0, help="stochastic problem: large gradient")
    p.add_argument("--stoch-p", type=float, default=0.01,
                   help="stochastic problem: probability of the large gradient")
    p.add_argument("--stoch-runs", type=int, default=8,
                   help="independent stochastic runs (seeds) in the same loop")
    p.add_argument("--x0", type=float, default=0.0, help="initial x")
    p.add_argument("--steps", type=float, default=None,
                   help=f"timesteps (default {DEFAULT_STEPS:.0e}; {QUICK_STEPS:.0e} with --quick)")
    p.add_argument("--record-every", type=int, default=None,
                   help="record x every this many steps (default steps/1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the stochastic problem")
    p.add_argument("--optimizers", default=",".join(DEFAULT_OPTIMIZERS),
                   help="comma-separated subset of expectigrad,adam,rmsprop,adadelta,amsgrad,yogi,sgd,"
                        "amsgrad_max_corrected (a non-standard AMSGrad, see expectigrad_experiments/optimizers.py)")
    p.add_argument("--dtype", default="float64", choices=("float32", "float64"),
                   help="variable/state dtype (float32 running sums lose the -1 gradients "
                        "after ~1e5-1e6 steps)")
    p.add_argument("--threads", type=int, default=1, help="TensorFlow intra/inter-op threads")
    p.add_argument("--no-jit", action="store_true", help="no XLA (several times slower)")
    p.add_argument("--out-dir", default="runs/reddi")
    p.add_argument("--quick", action="store_true",
                   help=f"short run for tests ({QUICK_STEPS:.0e} steps unless --steps): checks "
                        "the directions of the trajectories; the paper's claims (reaching "
                        "x <= -1, and when) need the full run and are listed as skipped")
    p.add_argument("--replot", metavar="OUT_DIR", default=None,
                   help="only redraw OUT_DIR/reddi.png from the summary.json and "
                        "trajectories.csv of an earlier run (must be the only argument)")
    args = p.parse_args(argv)
    if args.replot:
        p.error("--replot must be the only argument")
    if args.steps is None:
        args.steps = QUICK_STEPS if args.quick else DEFAULT_STEPS
    args.steps = int(args.steps)
    if args.steps < 1:
        p.error("--steps must be >= 1")
    if args.record_every is None:
        args.record_every = max(1, args.steps // 1000)
    if args.record_every < 1:
        p.error("--record-every must be >= 1")
    if args.N < 1 or not 0 <= args.stoch_p <= 1 or args.stoch_runs < 0 or args.seed < 0:
        p.error("need N >= 1, 0 <= stoch-p <= 1, stoch-runs >= 0, seed >= 0")
    args.optimizers = list(dict.fromkeys(  # ordered, without duplicates
        o.strip().lower() for o in args.optimizers.split(",") if o.strip()))
    args.argv = list(sys.argv[1:] if argv is None else argv)
    unknown = [o for o in args.optimizers if o not in OPTIMIZER_CHOICES]
    if unknown or not args.optimizers:
        p.error(f"unknown optimizer(s) {unknown}")
    return args


def problem_names(stoch_runs):
    names = ["online"]
    names += ["stochastic" if k == 0 else f"stochastic_r{k}" for k in range(stoch_runs)]
    return names


def simulate(args, log=print):
    """Runs all optimizers; returns (steps, xs[rec, opt, problem], first_hit[opt, problem], seconds)."""
    import numpy as np
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    except RuntimeError:  # TensorFlow already started in this process
        log(f"  (TensorFlow already initialised: --threads {args.threads} not applied)")
    import keras

    from . import optimizers

    dtype = args.dtype
    tf_dtype = tf.as_dtype(dtype)
    n_prob = 1 + args.stoch_runs
    opts, variables = [], []
    for name in args.optimizers:
        opt = optimizers.make_optimizer(name, args.lr, args.beta1, args.beta2, args.epsilon)
        var = keras.Variable(np.full([n_prob], args.x0, dtype=dtype), dtype=dtype, name=f"x_{name}")
        opt.build([var])
        opts.append(opt)
        variables.append(var)
    step = tf.Variable(tf.constant(0, tf.int64), name="t")
    first_hit = tf.Variable(tf.fill([len(opts), n_prob], tf.constant(-1, tf.int64)), name="first_hit")

    C = tf.constant(args.C, tf_dtype)
    stoch_C = tf.constant(args.stoch_C, tf_dtype)
    minus_one = tf.constant(-1.0, tf_dtype)
    N = tf.constant(args.N, tf.int64)
    phase = tf.constant(args.phase % args.N, tf.int64)
    p = tf.constant(args.stoch_p, tf.float64)
    keys = tf.constant([run_key(args.seed, r) for r in range(args.stoch_runs)], tf.uint64)

    def gradient(t):
        online = tf.where(t % N == phase, C, minus_one)[None]
        if args.stoch_runs == 0:
            return online
        u = stochastic_uniform_tf(keys, t)
        stoch = tf.where(u < p, stoch_C, minus_one)
        return tf.concat([online, stoch], axis=0)

    def current():
        return tf.stack([tf.convert_to_tensor(v) for v in variables])

    @tf.function(jit_compile=not args.no_jit, reduce_retracing=True)
    def advance(n_steps):
        for _ in tf.range(n_steps):
            t = step + 1
            step.assign(t)
            g = gradient(t)
            for opt, var in zip(opts, variables):
                opt.apply([g], [var])
            hit = (first_hit < 0) & (current() <= -1.0)
            first_hit.assign(tf.where(hit, t, first_hit))
        return current()

    K = args.record_every
    xs = [current().numpy()]
    recorded = [0]
    done = 0
    start = time.time()
    next_log = start + 30
    while done < args.steps:
        n = min(K, args.steps - done)
        xs.append(advance(tf.constant(n, tf.int64)).numpy())
        done += n
        recorded.append(done)
        now = time.time()
        if now >= next_log:
            rate = done / (now - start)
            log(f"  step {done:,}/{args.steps:,}  {rate:,.0f} steps/s  "
                f"eta {(args.steps - done) / rate:,.0f}s")
            next_log = now + 60
    seconds = time.time() - start
    assert int(step.numpy()) == args.steps
    for opt in opts:
        assert int(opt.iterations.numpy()) == args.steps
    return np.array(recorded), np.stack(xs), first_hit.numpy(), seconds


def _median(values):
    values = sorted(values)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def evaluate_checks(args, names, results, xs):
    """({check: passed}, {check: why it was not evaluated}).

    Two kinds: the paper's claims (EMA methods never get below 0, Expectigrad
    reaches x <= -1, AMSGrad / Yogi only much later), which need a full-length
    run (FULL_RUN_LR_STEPS), and directions over the second half of the run
    (Adam / RMSProp / Adadelta move up, away from the minimum, and Adam /
    RMSProp end above Expectigrad; Expectigrad moves down on the online
    problem), which a --quick run can check."""
    checks, skipped = {}, {}
    periods = args.steps / max(args.N, 1.0 / args.stoch_p if args.stoch_runs and args.stoch_p > 0
                               else 0)
    lr_steps = args.lr * args.steps
    why_full = (f"needs a run as long as Figure 1's (lr x steps >= {FULL_RUN_LR_STEPS:g}, e.g. "
                f"{DEFAULT_STEPS:.0e} steps at lr 1e-3); this run has lr x steps = {lr_steps:g}")
    why_trend = (f"needs >= {TREND_MIN_PERIODS} periods of the large gradient; this run "
                 f"has {periods:.3g}")
    full, trend = lr_steps >= FULL_RUN_LR_STEPS, periods >= TREND_MIN_PERIODS
    mid = (len(xs) - 1) // 2

    def add(name, ok, applies, why):
        if applies:
            checks[name] = bool(ok)
        else:
            skipped[name] = why

    col = {opt: i for i, opt in enumerate(args.optimizers)}
    # Online (deterministic): Expectigrad goes down, the EMA methods go up.
    if "expectigrad" in col:
        i = col["expectigrad"]
        add("online: expectigrad's x falls over the second half of the run",
            xs[-1, i, 0] < xs[mid, i, 0], trend, why_trend)
    for opt in EMA_METHODS:
        if opt in col:
            i = col[opt]
            add(f"online: {opt}'s x rises over the second half of the run",
                xs[-1, i, 0] > xs[mid, i, 0], trend, why_trend)
    # Stochastic: one run of Expectigrad is a random walk with a downward drift
    # (it may rise over a short stretch); the EMA methods rise in every run,
    # and Adam / RMSProp end far above Expectigrad in every run.
    stoch = [j for j, prob in enumerate(names) if prob.startswith("stochastic")]
    runs = f"stochastic (all {len(stoch)} runs)" if len(stoch) > 1 else "stochastic"
    for opt in EMA_METHODS if stoch else ():
        if opt in col:
            i = col[opt]
            add(f"{runs}: {opt}'s x rises over the second half of every run",
                all(xs[-1, i, j] > xs[mid, i, j] for j in stoch), trend, why_trend)
            if opt != "adadelta" and "expectigrad" in col:
                add(f"{runs}: {opt} ends above expectigrad in every run",
                    all(xs[-1, i, j] > xs[-1, col["expectigrad"], j] for j in stoch),
                    trend, why_trend)
    for j, prob in enumerate(names):
        res = results[prob]
        for opt in EMA_METHODS:
            if opt in res:
                add(f"{prob}: {opt} ends at x > 0", res[opt]["final_x"] > 0, full, why_full)
        if "expectigrad" in res:
            exp_hit = res["expectigrad"][HIT_KEY]
            add(f"{prob}: expectigrad reaches x <= -1", exp_hit is not None, full, why_full)
            for opt in CLIPPED_EMA_METHODS:
                if opt in res:
                    hit = res[opt][HIT_KEY]
                    add(f"{prob}: {opt} reaches x <= -1 later than expectigrad or never",
                        exp_hit is not None and (hit is None or hit > exp_hit), full, why_full)
                    add(f"{prob}: {opt} needs >= 5x expectigrad's steps to reach x <= -1",
                        exp_hit is not None and (hit is None or hit >= 5 * exp_hit), full,
                        why_full)
    return checks, skipped


def print_checks(summary, out=print):
    """The evaluated checks ([ok] / [FAIL]) and, grouped, the skipped ones
    with the reason."""
    checks, skipped = summary["checks"], summary.get("checks_skipped", {})
    if checks:
        out(f"checks ({len(checks)} that apply to this run of {summary['steps']:,} steps):")
        for name, ok in checks.items():
            out(f"  [{'ok' if ok else 'FAIL'}] {name}")
    else:
        out("checks: none applies to this run")
    groups = {}
    for name, why in skipped.items():
        prob, _, claim = name.partition(": ")
        if prob.startswith("stochastic ("):  # already about all runs
            claim, prob = name, None
        groups.setdefault(why, {}).setdefault(claim, []).append(prob)
    for why, claims in groups.items():
        n = sum(len(p) for p in claims.values())
        out(f"not checked ({n}): {why}:")
        for claim, probs in claims.items():
            where = ("" if probs == [None] else f" ({probs[0]})" if len(probs) == 1
                     else f" ({len(probs)} problems)")
            out(f"  [skipped] {claim}{where}")


def summarize(args, steps, xs, first_hit, seconds):
    import keras
    import tensorflow as tf

    from .optimizers import OPTIMIZER_HYPERPARAMETERS

    names = problem_names(args.stoch_runs)
    results = {}
    for j, prob in enumerate(names):
        results[prob] = {}
        for i, opt in enumerate(args.optimizers):
            hit = int(first_hit[i, j])
            results[prob][opt] = {
                "final_x": float(xs[-1, i, j]),
                HIT_KEY: hit if hit >= 0 else None,
                "max_recorded_x": float(xs[:, i, j].max()),
            }
        exp_hit = results[prob].get("expectigrad", {}).get(HIT_KEY)
        for opt, r in results[prob].items():
            r["first_step_ratio_to_expectigrad"] = (
                r[HIT_KEY] / exp_hit if exp_hit and r[HIT_KEY] else None
            )
    stochastic_all = {}
    stoch_names = [n for n in names if n.startswith("stochastic")]
    for opt in args.optimizers if stoch_names else ():
        hits = [results[n][opt][HIT_KEY] for n in stoch_names]
        ratios = [results[n][opt]["first_step_ratio_to_expectigrad"] for n in stoch_names]
        finals = [results[n][opt]["final_x"] for n in stoch_names]
        stochastic_all[opt] = {
            "runs": len(stoch_names),
            "runs_reaching_x_le_minus_1": sum(h is not None for h in hits),
            "median_" + HIT_KEY: _median([h for h in hits if h is not None]),
            "median_first_step_ratio_to_expectigrad": _median([r for r in ratios if r is not None]),
            "ratio_of_median_first_steps_to_expectigrad": None,
            "median_final_x": _median(finals),
            "min_final_x": min(finals),
            "max_final_x": max(finals),
        }
    exp_med = stochastic_all.get("expectigrad", {}).get("median_" + HIT_KEY)
    for opt, r in stochastic_all.items():
        # Only when every run reached -1 (a median over the runs that did is biased).
        if exp_med and r["runs_reaching_x_le_minus_1"] == r["runs"] == \
                stochastic_all["expectigrad"]["runs_reaching_x_le_minus_1"]:
            r["ratio_of_median_first_steps_to_expectigrad"] = r["median_" + HIT_KEY] / exp_med
    checks, skipped = evaluate_checks(args, names, results, xs)
    return {
        "experiment": "Reddi problem (Expectigrad paper, Section 4.1, Figure 1)",
        "date": datetime.date.today().isoformat(),
        "command": " ".join(["expectigrad-reddi"] + args.argv),
        "problem": {
            "online": f"gradient C={args.C:g} if t % N == {args.phase % args.N} (N={args.N}) "
                      "else -1, t = 1..steps",
            "stochastic": f"gradient C={args.stoch_C:g} if u < p={args.stoch_p:g} else -1, "
                          "u: SplitMix64 stream of run_key(seed, run) at t (see stochastic_uniform)",
            "x0": args.x0,
            "unconstrained": True,
        },
        "steps": args.steps,
        "record_every": args.record_every,
        "seed": args.seed,
        "stoch_runs": args.stoch_runs,
        "hyperparameters": {"lr": args.lr, "beta1": args.beta1, "beta2": args.beta2,
                            "epsilon": args.epsilon, "dtype": args.dtype},
        "optimizers": {o: OPTIMIZER_HYPERPARAMETERS[o] for o in args.optimizers},
        "results": results,
        "stochastic_all_runs": stochastic_all,
        "checks": checks,
        "checks_skipped": skipped,
        "elapsed_s": round(seconds, 2),
        "steps_per_s": round(args.steps / seconds, 1) if seconds > 0 else None,
        "jit_compile": not args.no_jit,
        "threads": args.threads,
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }


def write_csv(path, args, steps, xs):
    names = problem_names(args.stoch_runs)
    header = ["step"] + [f"{prob}_{opt}" for prob in names for opt in args.optimizers]

    def rows():
        for r, t in enumerate(steps):
            row = [int(t)]
            for j in range(len(names)):
                row += [f"{float(xs[r, i, j]):.9g}" for i in range(len(args.optimizers))]
            yield row

    report.write_csv(path, header, rows())


def plot(path, args, steps, xs, first_hit):
    import numpy as np

    plt = pyplot()

    groups = [
        [o for o in ("adam", "rmsprop", "adadelta", "sgd", "expectigrad") if o in args.optimizers],
        [o for o in ("amsgrad", "amsgrad_max_corrected", "yogi", "expectigrad")
         if o in args.optimizers],
    ]
    groups = [g for g in groups if set(g) - {"expectigrad"}] or [list(args.optimizers)]
    panels = [(0, "online")]
    if args.stoch_runs:
        panels.append((1, "stochastic"))
    fig, axes = plt.subplots(1, len(panels) * len(groups), figsize=(4.2 * len(panels) * len(groups), 3.6),
                             squeeze=False)
    axes = axes[0]
    k = 0
    for j, prob in panels:
        for group in groups:
            ax = axes[k]
            k += 1
            for n, opt in enumerate(group):
                i = args.optimizers.index(opt)
                if prob == "stochastic":  # the other runs, thin
                    for jj in range(2, 1 + args.stoch_runs):
                        ax.plot(steps, np.clip(xs[:, i, jj], -1.0, 1.0), color=COLORS[opt],
                                linewidth=0.6, alpha=0.35)
                # Line styles and staggered markers: lines on top of each
                # other (Adam and RMSProp at the clip, x = 1) stay visible.
                ax.plot(steps, np.clip(xs[:, i, j], -1.0, 1.0), label=LABELS[opt],
                        **line_style(opt, n, len(group), len(steps)))
                if first_hit[i, j] >= 0:
                    ax.plot([first_hit[i, j]], [-1.0], marker="v", color=COLORS[opt], markersize=6,
                            clip_on=False)
            ax.set_ylim(-1.1, 1.1)
            ax.set_xlim(0, steps[-1])
            ax.set_title(f"Reddi Problem ({prob})")
            ax.set_xlabel("Timesteps")
            ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
            ax.axhline(0.0, color="0.85", linewidth=0.8, zorder=0)
            ax.legend(loc="best", fontsize=8)
            if k == 1:
                ax.set_ylabel("x (clipped to [-1, 1])")
    fig.suptitle(
        f"lr={args.lr:g}, beta1={args.beta1:g}, beta2={args.beta2:g}, eps={args.epsilon:g}, "
        f"x0={args.x0:g}\n"
        f"online C={args.C:g}, N={args.N}"
        + (f", large gradient at t % N == {args.phase % args.N}" if args.phase % args.N else "")
        + f"; stochastic C={args.stoch_C:g}, p={args.stoch_p:g}\n"
        "(triangles: first step with x <= -1"
        + (f"; thin: {args.stoch_runs - 1} more stochastic seeds" if args.stoch_runs > 1 else "")
        + ")",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def read_trajectories(path, args):
    """trajectories.csv -> (steps, xs[rec, opt, problem]), the arrays ``plot``
    takes (the inverse of write_csv)."""
    import csv

    import numpy as np

    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], np.array(rows[1:], dtype=np.float64)
    names = problem_names(args.stoch_runs)
    expected = ["step"] + [f"{prob}_{opt}" for prob in names for opt in args.optimizers]
    if header != expected:
        raise SystemExit(f"{path}: columns {header[:4]}... do not match the run in summary.json")
    xs = body[:, 1:].reshape(len(body), len(names), len(args.optimizers)).transpose(0, 2, 1)
    return body[:, 0].astype(np.int64), xs


def replot(out_dir):
    """Redraws out_dir/reddi.png from out_dir/summary.json and
    trajectories.csv (written by an earlier run; nothing is simulated). The
    run's arguments come from the command recorded in summary.json."""
    import json
    import shlex

    import numpy as np

    with open(os.path.join(out_dir, "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    words = shlex.split(summary["command"])
    while words and not words[0].startswith("-"):  # "expectigrad-reddi" / "python x.py"
        words = words[1:]
    args = parse_args(words)
    if args.steps != summary["steps"] or args.stoch_runs != summary["stoch_runs"]:
        raise SystemExit(f"{out_dir}/summary.json: its command does not give its steps / runs")
    steps, xs = read_trajectories(os.path.join(out_dir, "trajectories.csv"), args)
    names = problem_names(args.stoch_runs)
    first_hit = np.array([[summary["results"][prob][opt][HIT_KEY] or -1 for prob in names]
                          for opt in args.optimizers], dtype=np.int64)
    path = os.path.join(out_dir, "reddi.png")
    plot(path, args, steps, xs, first_hit)
    return path


def main(argv=None):
    argv_list = list(sys.argv[1:] if argv is None else argv)
    if argv_list[:1] == ["--replot"]:
        if len(argv_list) != 2:
            raise SystemExit("usage: expectigrad-reddi --replot OUT_DIR")
        print(f"wrote {replot(argv_list[1])}")
        return None
    args = parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    print(f"Reddi problem: {args.steps:,} steps, optimizers {', '.join(args.optimizers)}, "
          f"lr={args.lr:g} beta1={args.beta1:g} beta2={args.beta2:g} eps={args.epsilon:g} "
          f"({args.dtype}, {'XLA' if not args.no_jit else 'no XLA'})", flush=True)
    steps, xs, first_hit, seconds = simulate(args, log=lambda s: print(s, flush=True))
    summary = summarize(args, steps, xs, first_hit, seconds)
    write_csv(os.path.join(args.out_dir, "trajectories.csv"), args, steps, xs)
    plot(os.path.join(args.out_dir, "reddi.png"), args, steps, xs, first_hit)
    report.write_json(os.path.join(args.out_dir, "summary.json"), summary, newline=True)

    print(f"done in {seconds:,.1f}s ({summary['steps_per_s']:,.0f} steps/s); wrote {args.out_dir}/"
          "{reddi.png,trajectories.csv,summary.json}")
    for prob, res in summary["results"].items():
        print(f"[{prob}]")
        for opt, r in res.items():
            hit = r[HIT_KEY]
            ratio = r["first_step_ratio_to_expectigrad"]
            print(f"  {LABELS[opt]:<12} final x = {r['final_x']:+.6g}   first step x <= -1: "
                  f"{'never' if hit is None else f'{hit:,}'}"
                  + (f"  ({ratio:.2f}x Expectigrad)" if ratio else ""))
    if summary["stochastic_all_runs"]:
        print(f"[stochastic, all {args.stoch_runs} runs: runs reaching x <= -1 / median first step / "
              "median ratio to Expectigrad / ratio of medians / median final x]")
        for opt, r in summary["stochastic_all_runs"].items():
            med = r["median_" + HIT_KEY]
            ratio = r["median_first_step_ratio_to_expectigrad"]
            rom = r["ratio_of_median_first_steps_to_expectigrad"]
            print(f"  {LABELS[opt]:<12} {r['runs_reaching_x_le_minus_1']}/{r['runs']}   "
                  f"{'-' if med is None else f'{med:,.0f}'}   "
                  f"{'-' if ratio is None else f'{ratio:.2f}x'}   "
                  f"{'-' if rom is None else f'{rom:.2f}x'}   {r['median_final_x']:+.4g}")
    print_checks(summary)
    return summary


def console_main():
    """The ``expectigrad-reddi`` command (exit status 0)."""
    main()
    return 0


if __name__ == "__main__":
    main()
