"""Builds the fused-op libraries against the TensorFlow installed here.

Used by ``setup.py`` (``pip install --no-build-isolation .``) and runnable on
its own to (re)build in place, e.g. after upgrading TensorFlow::

    python -m expectigrad_tf._build            # into the installed package
    EXPECTIGRAD_CUDA=0 python -m expectigrad_tf._build

Outputs, beside this file:

- ``_expectigrad_ops.so``: op definition + CPU kernels (no CUDA dependency);
- ``_expectigrad_ops_cuda.so``: GPU kernels, only when nvcc is found; CUDA's
  runtime is linked statically so the library loads without a CUDA install;
- ``_build_info.json``: the TensorFlow version the libraries were built for.

Environment: ``EXPECTIGRAD_CUDA`` = ``auto`` (default: build GPU kernels when
nvcc is found) | ``1`` (required) | ``0`` (never); ``EXPECTIGRAD_NVCC`` = path
to nvcc; ``EXPECTIGRAD_CUDA_ARCHS`` = e.g. ``80;90`` (default ``80;90``);
``CXX`` = the C++ compiler (default ``g++``).

This module must not import the rest of the package (setup.py loads it by path).
"""

import concurrent.futures
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CSRC = os.path.join(ROOT, "csrc")

CPU_LIB = "_expectigrad_ops.so"
CUDA_LIB = "_expectigrad_ops_cuda.so"
BUILD_INFO = "_build_info.json"

CPU_SOURCES = ["tf/ops/expectigrad_ops.cc", "tf/kernels/expectigrad_op_cpu.cc",
               "tf/xla/expectigrad_ffi_cpu.cc", "tf/xla/expectigrad_xla_cpu.cc"]
GPU_HOST_SOURCES = ["tf/kernels/expectigrad_op_gpu.cc", "tf/xla/expectigrad_ffi_cuda.cc",
                    "tf/xla/expectigrad_xla_gpu.cc"]
# Sources that include TensorFlow's XLA headers need these extra include dirs
# (relative to TensorFlow's include dir) and libtensorflow_cc at link time.
XLA_INCLUDES = ["external/highwayhash", "external/farmhash_archive/src"]
TF_CC_LIB = "-l:libtensorflow_cc.so.2"
CUDA_SOURCES = ["cuda/expectigrad_kernel.cu"]


class BuildError(RuntimeError):
    pass


def _run(cmd, verbose):
    if verbose:
        print("[expectigrad build]", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n"
            f"{proc.stdout}\n{proc.stderr}"
        )
    return proc


def find_nvcc():
    """Path to nvcc, honouring EXPECTIGRAD_NVCC, or None."""
    explicit = os.environ.get("EXPECTIGRAD_NVCC")
    if explicit:
        return explicit if os.path.exists(explicit) else None
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return None


def cuda_home(nvcc):
    """The CUDA toolkit root that holds cuda_runtime.h for this nvcc."""
    candidates = [os.environ.get("CUDA_HOME"),
                  os.path.dirname(os.path.dirname(os.path.realpath(nvcc))),
                  "/usr/local/cuda"]
    for home in candidates:
        if home and os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            return home
    raise BuildError(f"found nvcc at {nvcc} but no CUDA toolkit with "
                     "include/cuda_runtime.h; set CUDA_HOME")


def cuda_mode():
    mode = os.environ.get("EXPECTIGRAD_CUDA", "auto").strip().lower()
    if mode not in ("auto", "0", "1", "off", "on"):
        raise BuildError(
            f"EXPECTIGRAD_CUDA must be auto, 0 or 1, got {mode!r}"
        )
    return {"on": "1", "off": "0"}.get(mode, mode)


def cuda_archs(default="80;90"):
    """(nvcc -gencode flags, arch list) from EXPECTIGRAD_CUDA_ARCHS: SASS for
    each arch plus PTX of the newest, so newer GPUs can JIT it."""
    raw = os.environ.get("EXPECTIGRAD_CUDA_ARCHS", default)
    archs = [a.strip() for a in raw.replace(",", ";").split(";") if a.strip()]
    if not archs:
        raise BuildError("EXPECTIGRAD_CUDA_ARCHS is empty")
    flags = []
    for a in archs:
        if not re.fullmatch(r"\d+[af]?", a):
            raise BuildError(f"EXPECTIGRAD_CUDA_ARCHS: bad arch {a!r} (e.g. 90 or 80;90)")
        flags += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    flags += ["-gencode", f"arch=compute_{archs[-1]},code=compute_{archs[-1]}"]
    return flags, archs


def tf_flags():
    import tensorflow as tf  # noqa: deferred, heavy

    return (
        tf.sysconfig.get_compile_flags(),
        tf.sysconfig.get_link_flags(),
        tf.__version__,
        tf.version.GIT_VERSION,
    )


def build(out_dir=HERE, verbose=True):
    """Compiles the libraries into out_dir. Returns the build-info dict."""
    cxx = os.environ.get("CXX", "g++")
    cflags, lflags, tf_version, tf_git = tf_flags()
    includes = [
        "-I" + CSRC,
        "-I" + os.path.join(CSRC, "tf", "kernels"),
        "-I" + os.path.join(CSRC, "tf", "xla"),
    ]
    tf_inc = next(f[2:] for f in cflags if f.startswith("-I"))
    includes += ["-I" + os.path.join(tf_inc, d) for d in XLA_INCLUDES]
    # -fno-math-errno -fno-trapping-math let the element loop vectorise
    # (sqrt without errno, branch-free selects); IEEE results are unchanged.
    # -ffp-contract=off: no FMA contraction, so the AVX-512/AVX2/baseline
    # clones of the loop round identically.
    common = ["-std=c++17", "-fPIC", "-O3", "-DNDEBUG", "-fno-math-errno",
              "-fno-trapping-math", "-ffp-contract=off"] + includes + cflags
    warn = ["-Wno-deprecated-declarations", "-Wno-ignored-attributes",
            "-Wno-interference-size"]

    mode = cuda_mode()
    nvcc = find_nvcc() if mode != "0" else None
    if mode == "1" and nvcc is None:
        raise BuildError("EXPECTIGRAD_CUDA=1 but nvcc was not found "
                         "(set EXPECTIGRAD_NVCC or put nvcc on PATH)")

    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="expectigrad-build-") as tmp:
        jobs = []

        def obj(src):
            return os.path.join(tmp, src.replace("/", "_") + ".o")

        for src in CPU_SOURCES:
            jobs.append([cxx, "-c", os.path.join(CSRC, src), "-o", obj(src)]
                        + common + warn)
        if nvcc:
            home = cuda_home(nvcc)
            cuda_inc = os.path.join(home, "include")
            for src in GPU_HOST_SOURCES:
                jobs.append([cxx, "-c", os.path.join(CSRC, src), "-o", obj(src),
                             "-DGOOGLE_CUDA=1", "-I" + cuda_inc] + common + warn)
            for src in CUDA_SOURCES:
                jobs.append([nvcc, "-c", os.path.join(CSRC, src), "-o", obj(src),
                             "-std=c++17", "-O3", "-Xcompiler", "-fPIC",
                             "--expt-relaxed-constexpr", "--fmad=false", "-I" + CSRC]
                            + cuda_archs()[0])
        workers = max(1, min(len(jobs), os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for fut in [pool.submit(_run, j, verbose) for j in jobs]:
                fut.result()

        cpu_out = os.path.join(out_dir, CPU_LIB)
        _run([cxx, "-shared", "-o", cpu_out]
             + [obj(s) for s in CPU_SOURCES] + lflags + [TF_CC_LIB], verbose)
        cuda_out = os.path.join(out_dir, CUDA_LIB)
        if nvcc:
            cuda_lib_dirs = [os.path.join(home, d)
                             for d in ("lib64", "lib", "targets/x86_64-linux/lib")]
            _run([cxx, "-shared", "-o", cuda_out]
                 + [obj(s) for s in GPU_HOST_SOURCES + CUDA_SOURCES]
                 + ["-L" + d for d in cuda_lib_dirs if os.path.isdir(d)]
                 + ["-Wl,--exclude-libs,ALL", "-lcudart_static", "-lrt", TF_CC_LIB,
                    "-ldl", "-lpthread"] + lflags, verbose)
        elif os.path.exists(cuda_out):
            os.remove(cuda_out)  # never leave a stale GPU library behind

    nvcc_version = None
    if nvcc:
        nvcc_version = _run([nvcc, "--version"], False).stdout.strip().splitlines()[-1]
    info = {
        "tensorflow_version": tf_version,
        "tensorflow_git_version": tf_git,
        "cuda": bool(nvcc),
        "nvcc": nvcc_version,
        "cuda_archs": ";".join(cuda_archs()[1]) if nvcc else None,
        "compiler": cxx,
        "python": sys.version.split()[0],
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }
    with open(os.path.join(out_dir, BUILD_INFO), "w") as f:
        json.dump(info, f, indent=2)
    return info


if __name__ == "__main__":
    try:
        print(json.dumps(build(verbose="-q" not in sys.argv), indent=2))
    except BuildError as e:
        sys.exit(f"expectigrad build failed: {e}")
