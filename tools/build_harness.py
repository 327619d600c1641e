"""Builds the pybind11 kernel harnesses (test tools, not installed), without
TensorFlow.

    python -m tools.build_harness [--out DIR] [--cuda auto|1|0] [--force] [-q]

Outputs, in DIR (default ``build/harness``):

- ``_harness<EXT_SUFFIX>``: the CPU host loop (csrc/harness/harness.cc),
  ``apply_cpu`` on NumPy arrays;
- ``_harness_emulated<EXT_SUFFIX>``: the CUDA kernel's own source
  (csrc/cuda/expectigrad_kernel.cu) compiled as C++ by the host compiler with
  csrc/cuda/emulation/cuda_emulation.h, on NumPy arrays: the kernel's
  indexing and chunking on the CPU. Needs CUDA's headers (cuda_fp16.h), not
  nvcc nor a GPU; built whenever they are found, whatever ``--cuda`` says;
- ``_harness_cuda<EXT_SUFFIX>``: the CUDA launcher
  (csrc/harness/harness_cuda.cc + csrc/cuda/expectigrad_kernel.cu) on
  ``__cuda_array_interface__`` arrays, built when nvcc is found. CUDA's
  runtime is linked statically, so it imports on machines without CUDA (and
  raises RuntimeError when used there).

Flags, sources and the environment (``EXPECTIGRAD_CUDA``, ``EXPECTIGRAD_NVCC``,
``CUDA_HOME``, ``EXPECTIGRAD_CUDA_ARCHS``, ``CXX``) come from
``expectigrad_tf.build_config``, as for the TensorFlow op. Needs a C++17
compiler and pybind11: no TensorFlow, no NumPy at build time. Import DIR's
modules with ``load_module`` below, or by putting DIR on sys.path.

Up-to-date outputs (newer than every source, same toolchain) are kept unless
``--force``. Exit status: 0 built (or up to date), 1 build failed.
"""

import argparse
import concurrent.futures
import importlib.machinery
import importlib.util
import json
import os
import shutil
import sys
import sysconfig
import tempfile

from expectigrad_tf import build_config as bc

ROOT = bc.ROOT
BuildError = bc.BuildError
find_nvcc = bc.find_nvcc
cuda_home = bc.cuda_home
cuda_archs = bc.cuda_archs
cuda_mode = bc.cuda_mode

CPU_MODULE = bc.ARTEFACTS["harness"]["module"]
CUDA_MODULE = bc.ARTEFACTS["harness_cuda"]["module"]
EMULATED_MODULE = bc.ARTEFACTS["harness_emulated"]["module"]
STAMP = "_harness_build.json"


def ext_suffix():
    return sysconfig.get_config_var("EXT_SUFFIX") or ".so"


def module_path(out_dir, name):
    return os.path.join(out_dir, name + ext_suffix())


def load_module(path):
    """Imports a built module from its path (its name is the file's stem)."""
    name = os.path.basename(path).split(".")[0]
    loader = importlib.machinery.ExtensionFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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


def _stamp(out_dir):
    try:
        with open(os.path.join(out_dir, STAMP)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


_BUILD_INPUTS = [os.path.abspath(__file__), os.path.abspath(bc.__file__)]


def _up_to_date(target, name, stamp, want):
    """target exists, is newer than every input and was built with `want`."""
    if not os.path.exists(target) or stamp.get(os.path.basename(target)) != want:
        return False
    t = os.path.getmtime(target)
    return all(os.path.getmtime(s) <= t for s in bc.source_files(name) + _BUILD_INPUTS
               if os.path.exists(s))


def build(out_dir, cuda=None, force=False, verbose=True):
    """Builds the harness modules into out_dir.

    cuda: "auto" (build the CUDA module when nvcc is found), "1" (require
    it), "0" (skip it); None reads EXPECTIGRAD_CUDA. Returns a dict with the
    module paths ("cpu", "emulated", "cuda": None when not built), why one
    was not built ("emulated_reason", "cuda_reason"), "nvcc" and "cuda_archs".
    """
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    mode = bc.cuda_mode(cuda)
    nvcc = bc.find_nvcc() if mode != "0" else None
    if mode == "1" and nvcc is None:
        raise BuildError("CUDA build required but nvcc was not found "
                         "(set EXPECTIGRAD_NVCC or CUDA_HOME, or put nvcc on PATH)")
    cuda_inc = bc.cuda_include_dir(nvcc or bc.find_nvcc())
    info = {"cpu": module_path(out_dir, CPU_MODULE), "emulated": None, "cuda": None,
            "emulated_reason": None, "cuda_reason": None, "nvcc": nvcc,
            "cuda_archs": None}
    if mode == "0":
        info["cuda_reason"] = "CUDA build disabled (EXPECTIGRAD_CUDA=0 / --cuda 0)"
    elif nvcc is None:
        info["cuda_reason"] = "nvcc not found"
    if cuda_inc is None:
        info["emulated_reason"] = ("CUDA's headers (cuda_fp16.h) not found: set CUDA_HOME "
                                   "or EXPECTIGRAD_NVCC")

    cxx = bc.find_cxx()
    pyinc = _python_includes()
    paths = {"cuda_include": cuda_inc} if cuda_inc else {}
    archs = None
    if nvcc is not None:
        home = bc.cuda_home(nvcc)
        paths["cuda_include"] = os.path.join(home, "include")
        archs = bc.cuda_archs()[1]

    # (artefact, output, toolchain description) to consider
    wanted = [("harness", info["cpu"], {"cxx": cxx})]
    if cuda_inc:
        wanted.append(("harness_emulated", module_path(out_dir, EMULATED_MODULE),
                       {"cxx": cxx, "cuda_include": cuda_inc}))
    if nvcc is not None:
        wanted.append(("harness_cuda", module_path(out_dir, CUDA_MODULE),
                       {"cxx": cxx, "nvcc": os.path.realpath(nvcc),
                        "cuda_archs": ";".join(archs)}))
    stamp = _stamp(out_dir)
    todo = [(n, out, want) for n, out, want in wanted
            if force or not _up_to_date(out, n, stamp, want)]

    with tempfile.TemporaryDirectory(prefix="expectigrad-harness-") as tmp:
        jobs, objects = [], {}
        for name, _, _ in todo:
            objects[name] = []
            for src in bc.ARTEFACTS[name]["sources"]:
                obj = os.path.join(tmp, name + "_" + src.replace("/", "_") + ".o")
                objects[name].append(obj)
                jobs.append(bc.object_command(name, src, obj, cxx=cxx, nvcc=nvcc, paths=paths,
                                              extra_cxx=pyinc, archs=archs))
        workers = max(1, min(len(jobs), os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for fut in [pool.submit(bc.run, j, verbose, "build_harness") for j in jobs]:
                fut.result()
        for name, out, want in todo:
            art = bc.ARTEFACTS[name]
            # Link into a temporary name, then move: a failed build never
            # leaves a half-written module behind.
            tmp_out = os.path.join(tmp, name + ".so")
            cuda_link = bc.cuda_static_link_args(bc.cuda_home(nvcc)) if art["cuda"] else []
            bc.run([cxx] + bc.shared_flags("pybind11") + ["-o", tmp_out] + objects[name]
                   + bc.link_args(name, paths) + cuda_link, verbose, "build_harness")
            shutil.move(tmp_out, out)
            stamp[os.path.basename(out)] = want
        if todo:
            with open(os.path.join(out_dir, STAMP), "w") as f:
                json.dump(stamp, f, indent=2)
    for name, out, _ in wanted:
        key = {"harness": "cpu", "harness_emulated": "emulated", "harness_cuda": "cuda"}[name]
        info[key] = out
    if nvcc is not None:
        info["cuda_archs"] = ";".join(archs)
    return info


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.build_harness",
                                 description=__doc__.split("\n\n")[0])
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
