"""Checks the Expectigrad CUDA kernel against the NumPy reference, and
measures it, without TensorFlow.

    python -m tools.gpu_check [--quick] [--out results.json]
                              [--build-dir DIR] [--backend auto|cupy|torch]

(from the repository root).

On a machine with an NVIDIA GPU, nvcc, pybind11, NumPy and CuPy or PyTorch
(used only to allocate device arrays and time with CUDA events), it:

1. builds the pybind11 harness with tools/build_harness.py and the flags of
   expectigrad_tf/build_config.py (into a temporary directory, or
   --build-dir, reused when up to date);
2. runs the kernel (``_harness_cuda.apply_cuda``, lr and step passed to the
   launcher in device memory) against expectigrad_tf.reference's
   ExpectigradNumpy in float64 for float32/float64/float16/bfloat16 variables,
   the four variants (beta 0/0.9 x sparse counter on/off), sizes 0, 1, 7,
   4097, 100003 and 1000003, aligned and misaligned (a view from element 1 of
   a buffer, guard elements checked untouched), several steps with zero
   gradient components (one never non-zero: 0/0 := 0); a multi-tensor call
   with 97 tensors (more than the kernel's 40 per launch, 1-D and 2-D, some
   empty, some misaligned); lr held as float32 in device memory; a grid
   capped at 2 blocks (much smaller than the data); and one float32 tensor
   of 100,000,003 elements (checked chunk by chunk);
3. measures the update's effective bandwidth (bytes read + written per
   element, 36 B for float32 with both slots) against a device-to-device copy
   timed in the same run (target >= 80 % of copy), and one multi-tensor call
   over 1,000 tensors of 10K elements against one 10M tensor (target <= 1.5x).

Tolerances: see tools/gpu_check/checks.py.

Prints a Markdown report; ``--out`` writes JSON. ``--quick`` uses fewer
sizes, steps and iterations and a 16.7M-element "large" tensor (about a
minute with the build). ``--backend cpu-sim`` runs the same checks with the
CPU harness standing in for the GPU, to test this tool without one: it
says nothing about the CUDA kernel.

Layout: backends.py (CuPy/PyTorch/CPU-simulation arrays), checks.py
(correctness vs the NumPy reference), workloads.py (bandwidth, copy
baseline), report.py (Markdown/JSON), cli.py (this command).

Exit status: 0 every correctness check passed; 1 a correctness check failed;
2 no GPU found; 3 a GPU but neither CuPy nor PyTorch to drive it; 4 the
harness failed to build or import; 5 (only with --fail-on-perf) a
performance target was missed.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from tools import build_harness
from tools.gpu_check.backends import CpuSimBackend, CupyBackend, TorchBackend
from tools.gpu_check.checks import run_checks
from tools.gpu_check.report import _jsonable, markdown
from tools.gpu_check.workloads import run_benchmarks

EXIT_OK, EXIT_FAIL, EXIT_NO_GPU, EXIT_NO_LIBRARY, EXIT_BUILD, EXIT_PERF = 0, 1, 2, 3, 4, 5


def _gpu_hint():
    """Whether this machine looks like it has an NVIDIA GPU (driver nodes)."""
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")


def detect_backend(pref):
    """(backend class or None, exit code, message)."""
    names = {"cupy": CupyBackend, "torch": TorchBackend}
    order = ["cupy", "torch"] if pref == "auto" else [pref]
    notes, any_library = [], False
    for name in order:
        cls = names[name]
        try:
            count = cls.device_count()
            any_library = True
        except ImportError as e:
            notes.append(f"{name}: not installed ({e})")
            continue
        except Exception as e:  # CUDA runtime errors: no driver, no device
            any_library = True
            notes.append(f"{name}: {type(e).__name__}: {e}")
            continue
        if count > 0:
            return cls, EXIT_OK, f"{name}: {count} device(s)"
        notes.append(f"{name}: no CUDA device")
    if any_library or not _gpu_hint():
        return None, EXIT_NO_GPU, "no GPU found: " + "; ".join(notes)
    return None, EXIT_NO_LIBRARY, (
        "this machine has NVIDIA device nodes but neither CuPy nor PyTorch is "
        "installed to allocate device arrays (pip install cupy-cuda12x, or torch): "
        + "; ".join(notes))


def build_and_import(build_dir, need_cuda, quiet):
    t0 = time.perf_counter()
    info = build_harness.build(build_dir, cuda="1" if need_cuda else "0", verbose=not quiet)
    info["build_seconds"] = round(time.perf_counter() - t0, 1)
    mods = {"cpu": build_harness.load_module(info["cpu"])}
    if need_cuda:
        mods["cuda"] = build_harness.load_module(info["cuda"])
    return mods, info


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.gpu_check",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer sizes/steps/iterations")
    ap.add_argument("--out", help="write the JSON report here")
    ap.add_argument("--build-dir", help="build/reuse the harness here (default: a temp dir)")
    ap.add_argument("--backend", choices=["auto", "cupy", "torch", "cpu-sim"], default="auto")
    ap.add_argument("--no-bench", action="store_true", help="correctness checks only")
    ap.add_argument("--fail-on-perf", action="store_true",
                    help=f"exit {EXIT_PERF} when a performance target is missed")
    ap.add_argument("-q", "--quiet", action="store_true", help="no build commands")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()

    simulated = args.backend == "cpu-sim"
    if not simulated:
        cls, code, msg = detect_backend(args.backend)
        if cls is None:
            print(f"gpu_check: {msg}", file=sys.stderr)
            print(f"gpu_check: nothing checked (exit {code}).", file=sys.stderr)
            return code
        print(f"gpu_check: {msg}", flush=True)

    tmp = None
    build_dir = args.build_dir
    if build_dir is None:
        tmp = tempfile.mkdtemp(prefix="expectigrad-gpu-check-")
        build_dir = tmp
    try:
        try:
            mods, build = build_and_import(build_dir, not simulated, args.quiet)
        except Exception as e:
            print(f"gpu_check: the harness failed to build or import: {e}", file=sys.stderr)
            return EXIT_BUILD
        if simulated:
            be = CpuSimBackend(mods["cpu"])
            runtime = driver = None
            device = be.device_info()
        else:
            h = mods["cuda"]
            be = cls(h)
            runtime, driver = h.runtime_version(), h.driver_version()
            if h.device_count() == 0:
                print(f"gpu_check: {be.name} sees a GPU but the harness's CUDA runtime "
                      f"{runtime} does not (driver {driver} too old?)", file=sys.stderr)
                return EXIT_NO_GPU
            device = h.device_info()
        print(f"gpu_check: device {device.get('name')}; running correctness checks",
              flush=True)
        res = run_checks(be, args.quick)
        passed = not res.failures
        print(f"gpu_check: {len(res.checks)} checks, {len(res.failures)} failed "
              f"({time.perf_counter() - t_start:.0f} s)", flush=True)
        bench = None
        if not args.no_bench:
            print("gpu_check: benchmarks", flush=True)
            bench = run_benchmarks(be, args.quick)
        if bench is None:
            perf = "not measured"
        else:
            targets = [r["target"] for r in bench["update"] if r["target"] is not None]
            targets.append(bench["multi_tensor"]["target"])
            perf = "met" if all(targets) else "MISSED"
            if simulated:
                perf += " (simulated: meaningless)"
        report = {
            "simulated": simulated, "backend": be.name, "device": device,
            "cuda_runtime": runtime, "cuda_driver": driver,
            "build": {k: v for k, v in build.items()},
            "python": sys.version.split()[0], "numpy": np.__version__,
            "quick": args.quick, "checks": res.checks, "bench": bench,
            "passed": passed, "perf_targets": perf,
            "elapsed_s": round(time.perf_counter() - t_start, 1),
        }
        print(markdown(report))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(_jsonable(report), f, indent=2)
        if not passed:
            return EXIT_FAIL
        if args.fail_on_perf and perf.startswith("MISSED"):
            return EXIT_PERF
        return EXIT_OK
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
