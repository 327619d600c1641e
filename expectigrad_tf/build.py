"""Builds the fused-op libraries against the TensorFlow installed here.

Used by ``setup.py`` (``pip install --no-build-isolation .``, ``pip wheel``)
and runnable on its own to (re)build in place, from a source tree or from an
installed package (wheel or regular install: the C++/CUDA sources ship inside
the package as ``expectigrad_tf/csrc``), e.g. after upgrading TensorFlow::

    python -m expectigrad_tf.build             # into the package directory
    python -m expectigrad_tf.build --cuda 0    # CPU kernels only
    python -m expectigrad_tf.build --check     # only say whether a rebuild is needed

It needs a C++17 compiler (and nvcc for the GPU kernels) and the TensorFlow
that will load the op. The op is never compiled behind the user's back (no
build on first use): see "Rebuilding the op" in the README for why.

Outputs, beside this file:

- ``_expectigrad_ops.so``: op definition + CPU kernels (no CUDA dependency);
- ``_expectigrad_ops_cuda.so``: GPU kernels, only when nvcc is found; CUDA's
  runtime is linked statically so the library loads without a CUDA install
  (a GPU then needs a driver that supports the CUDA version it was built
  with: recorded as ``cuda_version`` and checked by ``_ops.py`` at load time);
- ``_build_info.json``: the TensorFlow and CUDA versions the libraries were
  built for;
- ``_expectigrad_jax_ffi.so`` and ``_jax_build_info.json``, when jaxlib is
  installed: the XLA:CPU handler alone, for Keras 3 on JAX (no TensorFlow
  needed; ``expectigrad_tf._jax_ffi`` registers it).

Flags, sources, CUDA architectures and the environment variables
(``EXPECTIGRAD_CUDA``, ``EXPECTIGRAD_NVCC``, ``EXPECTIGRAD_CUDA_ARCHS``,
``CUDA_HOME``, ``CXX``) are described once in ``expectigrad_tf.build_config``.

This module imports only ``build_config`` from the package (setup.py loads
both without importing the package, which would import Keras).
"""

import concurrent.futures
import datetime
import json
import os
import sys
import tempfile

from expectigrad_tf import build_config as bc  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = bc.CSRC
CPU_LIB = bc.ARTEFACTS["tf_ops"]["output"]
CUDA_LIB = bc.ARTEFACTS["tf_ops_cuda"]["output"]
JAX_LIB = bc.ARTEFACTS["jax_ffi"]["output"]
BUILD_INFO = "_build_info.json"
JAX_BUILD_INFO = "_jax_build_info.json"

BuildError = bc.BuildError
find_nvcc = bc.find_nvcc
cuda_home = bc.cuda_home
cuda_mode = bc.cuda_mode
cuda_archs = bc.cuda_archs


def tf_flags():
    import tensorflow as tf  # noqa: deferred, heavy

    return (
        tf.sysconfig.get_compile_flags(),
        tf.sysconfig.get_link_flags(),
        tf.sysconfig.get_include(),
        tf.sysconfig.get_lib(),
        tf.__version__,
        tf.version.GIT_VERSION,
    )


def build(out_dir=HERE, verbose=True):
    """Compiles the libraries into out_dir. Returns the build-info dict."""
    cxx = bc.find_cxx()
    cflags, lflags, tf_include, tf_lib, tf_version, tf_git = tf_flags()
    mode = bc.cuda_mode()
    nvcc = bc.find_nvcc() if mode != "0" else None
    if mode == "1" and nvcc is None:
        raise BuildError("EXPECTIGRAD_CUDA=1 but nvcc was not found "
                         "(set EXPECTIGRAD_NVCC or put nvcc on PATH)")
    paths = {"tf_include": tf_include, "tf_lib": tf_lib}
    home = archs = None
    if nvcc:
        home = bc.cuda_home(nvcc)
        paths["cuda_include"] = os.path.join(home, "include")
        archs = bc.cuda_archs()[1]
    names = ["tf_ops"] + (["tf_ops_cuda"] if nvcc else [])
    xla_reason = bc.xla_unsupported_reason(tf_include, tf_version)
    if xla_reason:
        print(f"expectigrad_tf: {xla_reason}", file=sys.stderr)

    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="expectigrad-build-") as tmp:
        objects, jobs = {}, []
        for name in names:
            objects[name] = []
            for src in bc.sources(name, xla=xla_reason is None):
                obj = os.path.join(tmp, name + "_" + src.replace("/", "_") + ".o")
                objects[name].append(obj)
                jobs.append(bc.object_command(name, src, obj, cxx=cxx, nvcc=nvcc,
                                              paths=paths, extra_cxx=cflags, archs=archs))
        workers = max(1, min(len(jobs), os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for fut in [pool.submit(bc.run, j, verbose) for j in jobs]:
                fut.result()

        # Link into temporary names, then move: a failed build never leaves a
        # half-written library behind.
        for name in names:
            art = bc.ARTEFACTS[name]
            tmp_out = os.path.join(tmp, art["output"])
            cuda_link = bc.cuda_static_link_args(home) if art["cuda"] else []
            bc.run([cxx] + bc.shared_flags("tf") + ["-o", tmp_out] + objects[name]
                   + bc.link_args(name, paths, xla=xla_reason is None) + cuda_link + lflags, verbose)
            os.replace(tmp_out, os.path.join(out_dir, art["output"]))
        cuda_out = os.path.join(out_dir, CUDA_LIB)
        if not nvcc and os.path.exists(cuda_out):
            os.remove(cuda_out)  # never leave a stale GPU library behind

    info = {
        "tensorflow_version": tf_version,
        "tensorflow_git_version": tf_git,
        "cuda": bool(nvcc),
        "nvcc": None,
        # The CUDA version the GPU library's (static) runtime comes from: the
        # NVIDIA driver must support it (checked when the library is loaded).
        "cuda_version": bc.nvcc_version(nvcc) if nvcc else None,
        "cuda_archs": ";".join(archs) if nvcc else None,
        # Whether the op has its XLA lowering (jit_compile) and, if not, why.
        "xla": xla_reason is None,
        "xla_reason": xla_reason,
        "compiler": cxx,
        "python": sys.version.split()[0],
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }
    if nvcc:
        info["nvcc"] = bc.run([nvcc, "--version"], False).stdout.strip().splitlines()[-1]
    with open(os.path.join(out_dir, BUILD_INFO), "w") as f:
        json.dump(info, f, indent=2)
    return info


def jax_ffi_include():
    """(jaxlib's XLA FFI include dir, jaxlib version), or None without jaxlib."""
    try:
        import jax.ffi  # noqa: deferred, heavy
        import jaxlib
    except Exception:  # ImportError, or a jax/jaxlib mismatch (RuntimeError)
        return None
    return jax.ffi.include_dir(), getattr(jaxlib, "__version__", "unknown")


def build_jax(out_dir=HERE, verbose=True):
    """Compiles the JAX library (the XLA:CPU handler alone) into out_dir.
    Returns its build-info dict, or None when jaxlib is not installed."""
    # Never leave (or ship: build_py has copied the source tree's) a library
    # built for another environment, whether or not this build succeeds.
    for stale in (JAX_LIB, JAX_BUILD_INFO):
        if os.path.exists(os.path.join(out_dir, stale)):
            os.remove(os.path.join(out_dir, stale))
    found = jax_ffi_include()
    if found is None:
        return None
    include, jaxlib_version = found
    cxx = bc.find_cxx()
    paths = {"ffi_include": include}
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="expectigrad-jax-build-") as tmp:
        objects = []
        for src in bc.sources("jax_ffi"):
            obj = os.path.join(tmp, src.replace("/", "_") + ".o")
            bc.run(bc.object_command("jax_ffi", src, obj, cxx=cxx, paths=paths), verbose)
            objects.append(obj)
        tmp_out = os.path.join(tmp, JAX_LIB)
        bc.run([cxx] + bc.shared_flags("ffi") + ["-o", tmp_out] + objects
               + bc.link_args("jax_ffi", paths) + ["-lpthread"], verbose)
        os.replace(tmp_out, os.path.join(out_dir, JAX_LIB))
    info = {"jaxlib_version": jaxlib_version, "compiler": cxx,
            "python": sys.version.split()[0],
            "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    with open(os.path.join(out_dir, JAX_BUILD_INFO), "w") as f:
        json.dump(info, f, indent=2)
    return info


def have_tensorflow():
    import importlib.util

    return importlib.util.find_spec("tensorflow") is not None


def _parse(argv):
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m expectigrad_tf.build",
        description="(Re)build the expectigrad_tf op libraries in place, against the "
                    "TensorFlow installed in this environment, and the JAX library "
                    "against the installed jaxlib (each when installed).")
    p.add_argument("--out", default=HERE,
                   help="output directory (default: the installed package, %(default)s)")
    p.add_argument("--cuda", choices=("auto", "0", "1"), default=None,
                   help="build the GPU kernels: auto (when nvcc is found), 0 (never), "
                        "1 (required); default: $EXPECTIGRAD_CUDA or auto")
    p.add_argument("--check", action="store_true",
                   help="do not build; print whether the op in --out loads with this "
                        "TensorFlow, exit 0 if it does and 1 if it needs a rebuild")
    p.add_argument("-q", "--quiet", action="store_true", help="do not echo the compiler commands")
    return p.parse_args(argv)


def _check_build(out_dir, info_file, lib, key, installed, what):
    """(ok, message): whether ``lib`` in out_dir was built (``info_file``'s
    ``key``) for the ``installed`` version of ``what``."""
    try:
        with open(os.path.join(out_dir, info_file)) as f:
            built_for = json.load(f).get(key)
    except (OSError, ValueError) as e:
        return False, f"no usable build in {out_dir} ({e})"
    if not os.path.exists(os.path.join(out_dir, lib)):
        return False, f"{lib} missing in {out_dir}"
    if built_for != installed:
        return False, f"built for {what} {built_for}, {what} {installed} is installed"
    return True, f"up to date: built for {what} {built_for}"


def _check_jax(out_dir):
    """(ok, message): whether the JAX library in out_dir matches this jaxlib."""
    found = jax_ffi_include()
    if found is None:
        return True, "no jaxlib installed: no JAX library needed"
    return _check_build(out_dir, JAX_BUILD_INFO, JAX_LIB, "jaxlib_version", found[1], "jaxlib")


def _check(out_dir):
    """(ok, message): whether the libraries in out_dir match this TensorFlow."""
    import tensorflow as tf  # noqa: deferred, heavy

    return _check_build(out_dir, BUILD_INFO, CPU_LIB, "tensorflow_version", tf.__version__,
                        "TensorFlow")


def main(argv=None):
    args = _parse(sys.argv[1:] if argv is None else argv)
    if args.check:
        ok = True
        if have_tensorflow():
            ok, msg = _check(args.out)
            print(f"expectigrad_tf op: {msg}")
        jax_ok, msg = _check_jax(args.out)
        print(f"expectigrad_tf JAX library: {msg}")
        return 0 if ok and jax_ok else 1
    if args.cuda is not None:
        os.environ["EXPECTIGRAD_CUDA"] = args.cuda
    if not os.access(args.out if os.path.isdir(args.out) else os.path.dirname(args.out)
                     or ".", os.W_OK):
        print(f"expectigrad build failed: {args.out} is not writable; run this with the "
              "permissions of the environment's owner (or in a virtual environment)",
              file=sys.stderr)
        return 2
    if not have_tensorflow() and jax_ffi_include() is None:
        print("expectigrad build failed: neither TensorFlow nor jaxlib is installed here",
              file=sys.stderr)
        return 1
    failed = False
    info = jax_info = None
    if have_tensorflow():
        try:
            info = build(out_dir=args.out, verbose=not args.quiet)
        except BuildError as e:
            print(f"expectigrad build failed: {e}", file=sys.stderr)
            failed = True
    elif bc.cuda_mode() == "1":
        print("expectigrad build failed: --cuda 1 (EXPECTIGRAD_CUDA=1) but TensorFlow is not "
              "installed, so the GPU op cannot be built", file=sys.stderr)
        failed = True
    try:
        jax_info = build_jax(out_dir=args.out, verbose=not args.quiet)
    except BuildError as e:
        print(f"expectigrad build of the JAX library failed: {e}", file=sys.stderr)
        failed = True
    if info is not None:
        print(json.dumps(info, indent=2))
        print(f"expectigrad_tf: op built into {args.out} for TensorFlow "
              f"{info['tensorflow_version']}" + (" with CUDA kernels" if info["cuda"] else ""))
    if jax_info is not None:
        print(f"expectigrad_tf: JAX library built into {args.out} for jaxlib "
              f"{jax_info['jaxlib_version']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
