#!/usr/bin/env python3
"""Builds the pybind11 kernel harnesses without TensorFlow.

    python scripts/build_harness.py --out DIR [--cuda auto|1|0] [--force] [-q]

Outputs, in DIR:

- ``_harness<EXT_SUFFIX>``: the CPU host loop (csrc/harness/harness.cc),
  ``apply_cpu`` on NumPy arrays;
- ``_harness_cuda<EXT_SUFFIX>``: the CUDA launcher
  (csrc/harness/harness_cuda.cc + csrc/cuda/expectigrad_kernel.cu) on
  ``__cuda_array_interface__`` arrays, built when nvcc is found. CUDA's
  runtime is linked statically, so it imports on machines without CUDA (and
  raises RuntimeError when used there).

Needs only a C++17 compiler, pybind11 and (for the CUDA module) nvcc: no
TensorFlow, no NumPy at build time. Import DIR's modules by putting DIR on
sys.path (``import _harness, _harness_cuda``).

Environment (the same names as expectigrad_tf/_build.py):
``EXPECTIGRAD_CUDA`` = auto (default) | 1 (nvcc required) | 0 (CPU only),
overridden by ``--cuda``; ``EXPECTIGRAD_NVCC`` = path to nvcc;
``CUDA_HOME``; ``EXPECTIGRAD_CUDA_ARCHS`` = e.g. ``90`` (default: ``90``,
H100/H200) or ``80;90``; ``CXX`` = host compiler (default g++, or c++).

Up-to-date outputs (newer than every source) are kept unless ``--force``.
Exit status: 0 built (or up to date), 1 build failed.
"""

import argparse
import concurrent.futures
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")
DEFAULT_ARCHS = "90"

CPU_MODULE = "_harness"
CUDA_MODULE = "_harness_cuda"
CPU_SOURCE = os.path.join(CSRC, "harness", "harness.cc")
CUDA_HOST_SOURCE = os.path.join(CSRC, "harness", "harness_cuda.cc")
CUDA_KERNEL_SOURCE = os.path.join(CSRC, "cuda", "expectigrad_kernel.cu")
HEADERS = [
    os.path.join(CSRC, "expectigrad_update.h"),
    os.path.join(CSRC, "expectigrad_multi_tensor.h"),
    os.path.join(CSRC, "cuda", "expectigrad_cuda.h"),
]


def ext_suffix():
    return sysconfig.get_config_var("EXT_SUFFIX") or ".so"


def module_path(out_dir, name):
    return os.path.join(out_dir, name + ext_suffix())


def _load_tf_build():
    # expectigrad_tf/_build.py by path: importing the package would import
    # TensorFlow, which a GPU machine for this harness may not have.
    spec = importlib.util.spec_from_file_location(
        "_expectigrad_build", os.path.join(ROOT, "expectigrad_tf", "_build.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_tf_build = _load_tf_build()
BuildError = _tf_build.BuildError
find_nvcc = _tf_build.find_nvcc
cuda_home = _tf_build.cuda_home


def cuda_archs():
    """(gencode flags, arch list) from EXPECTIGRAD_CUDA_ARCHS, default 90."""
    return _tf_build.cuda_archs(DEFAULT_ARCHS)


def cuda_mode(requested=None):
    mode = (requested or os.environ.get("EXPECTIGRAD_CUDA", "auto")).strip().lower()
    mode = {"on": "1", "off": "0", "true": "1", "false": "0"}.get(mode, mode)
    if mode not in ("auto", "0", "1"):
        raise BuildError(f"CUDA mode must be auto, 1 or 0, got {mode!r}")
    return mode


def _python_includes():
    try:
        import pybind11
    except ImportError as e:
        raise BuildError(f"pybind11 is needed to build the harness (pip install pybind11): {e}")
    incs = [pybind11.get_include(), sysconfig.get_paths()["include"]]
    plat = sysconfig.get_paths().get("platinclude")
    if plat and plat not in incs:
        incs.append(plat)
    if not os.path.exists(os.path.join(incs[1], "Python.h")):
        raise BuildError(f"Python.h not found in {incs[1]}: install the Python "
                         "development headers (e.g. apt-get install python3-dev)")
    return ["-I" + i for i in incs]


def _cxx():
    cxx = os.environ.get("CXX")
    if cxx:
        return cxx
    for c in ("g++", "c++", "clang++"):
        if shutil.which(c):
            return c
    raise BuildError("no C++ compiler found (set CXX)")


def _run(cmd, verbose):
    if verbose:
        print("[build_harness]", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n"
                         f"{proc.stdout}\n{proc.stderr}")
    return proc


STAMP = "_harness_build.json"


def _stamp(out_dir):
    try:
        with open(os.path.join(out_dir, STAMP)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _up_to_date(target, sources, stamp, want):
    """target exists, is newer than every source and was built with `want`."""
    if not os.path.exists(target) or stamp.get(os.path.basename(target)) != want:
        return False
    t = os.path.getmtime(target)
    return all(os.path.getmtime(s) <= t for s in sources + [os.path.abspath(__file__)])


def build(out_dir, cuda=None, force=False, verbose=True):
    """Builds the harness modules into out_dir.

    cuda: "auto" (build the CUDA module when nvcc is found), "1" (require
    it), "0" (skip it); None reads EXPECTIGRAD_CUDA. Returns a dict with the
    module paths ("cpu", "cuda": None when not built), "cuda_reason" (why
    not built), "nvcc" and "cuda_archs".
    """
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    mode = cuda_mode(cuda)
    nvcc = find_nvcc() if mode != "0" else None
    if mode == "1" and nvcc is None:
        raise BuildError("CUDA build required but nvcc was not found "
                         "(set EXPECTIGRAD_NVCC or CUDA_HOME, or put nvcc on PATH)")
    info = {"cpu": module_path(out_dir, CPU_MODULE), "cuda": None,
            "cuda_reason": None, "nvcc": nvcc, "cuda_archs": None}
    if mode == "0":
        info["cuda_reason"] = "CUDA build disabled (EXPECTIGRAD_CUDA=0 / --cuda 0)"
    elif nvcc is None:
        info["cuda_reason"] = "nvcc not found"

    cxx = _cxx()
    pyinc = _python_includes()
    # Same floating-point flags as the TF op (expectigrad_tf/_build.py): a
    # vectorisable loop, and no FMA contraction so every backend rounds alike.
    common = ["-std=c++17", "-O3", "-fPIC", "-fvisibility=hidden", "-DNDEBUG",
              "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off",
              "-I" + CSRC] + pyinc
    shared = ["-shared"]
    if sys.platform == "darwin":
        shared += ["-undefined", "dynamic_lookup"]

    cpu_out = info["cpu"]
    cuda_out = module_path(out_dir, CUDA_MODULE)
    stamp = _stamp(out_dir)
    cpu_want = {"cxx": cxx}
    cuda_want = None
    if nvcc is not None:
        cuda_want = {"cxx": cxx, "nvcc": os.path.realpath(nvcc),
                     "cuda_archs": ";".join(cuda_archs()[1])}
    need_cpu = force or not _up_to_date(cpu_out, [CPU_SOURCE] + HEADERS, stamp, cpu_want)
    need_cuda = nvcc is not None and (force or not _up_to_date(
        cuda_out, [CUDA_HOST_SOURCE, CUDA_KERNEL_SOURCE] + HEADERS, stamp, cuda_want))

    with tempfile.TemporaryDirectory(prefix="expectigrad-harness-") as tmp:
        jobs = []
        if need_cpu:
            # Compile and link in one step into a temporary name, then move:
            # a failed build never leaves a half-written module behind.
            jobs.append(("cpu", [cxx, CPU_SOURCE, "-o", os.path.join(tmp, "cpu.so")]
                         + common + shared))
        if need_cuda:
            home = cuda_home(nvcc)
            gencode, _ = cuda_archs()
            jobs.append(("kernel", [nvcc, "-c", CUDA_KERNEL_SOURCE, "-o",
                                    os.path.join(tmp, "kernel.o"), "-std=c++17", "-O3",
                                    "-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden",
                                    "--expt-relaxed-constexpr", "--fmad=false",
                                    "-I" + CSRC] + gencode))
            jobs.append(("host", [cxx, "-c", CUDA_HOST_SOURCE, "-o",
                                  os.path.join(tmp, "host.o"),
                                  "-I" + os.path.join(home, "include")] + common))
        workers = max(1, min(len(jobs), os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            futures = [pool.submit(_run, cmd, verbose) for _, cmd in jobs]
            for fut in futures:
                fut.result()
        if need_cpu:
            shutil.move(os.path.join(tmp, "cpu.so"), cpu_out)
            stamp[os.path.basename(cpu_out)] = cpu_want
        if need_cuda:
            home = cuda_home(nvcc)
            lib_dirs = [os.path.join(home, d) for d in
                        ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib")]
            tmp_out = os.path.join(tmp, "cuda.so")
            _run([cxx, os.path.join(tmp, "host.o"), os.path.join(tmp, "kernel.o"),
                  "-o", tmp_out] + shared
                 + ["-L" + d for d in lib_dirs if os.path.isdir(d)]
                 + ["-Wl,--exclude-libs,ALL", "-lcudart_static", "-lrt", "-ldl",
                    "-lpthread"], verbose)
            shutil.move(tmp_out, cuda_out)
            stamp[os.path.basename(cuda_out)] = cuda_want
        with open(os.path.join(out_dir, STAMP), "w") as f:
            json.dump(stamp, f, indent=2)
    if nvcc is not None:
        info["cuda"] = cuda_out
        info["cuda_archs"] = cuda_want["cuda_archs"]
    return info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "harness"),
                    help="output directory (default: build/harness)")
    ap.add_argument("--cuda", choices=["auto", "1", "0"], default=None,
                    help="build the CUDA module: auto (when nvcc is found), 1, 0 "
                         "(default: $EXPECTIGRAD_CUDA or auto)")
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    try:
        info = build(args.out, cuda=args.cuda, force=args.force, verbose=not args.quiet)
    except BuildError as e:
        print(f"build_harness: failed: {e}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
