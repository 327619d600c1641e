"""The one build description of every compiled artefact (stdlib only).

Imported by ``expectigrad_tf/build.py`` (the TensorFlow op libraries, used
by ``setup.py``) and ``tools/build_harness.py`` (the pybind11 test harnesses),
so the compiler flags, CUDA architectures, nvcc discovery and source lists are
written once. It imports neither TensorFlow nor Keras nor NumPy: the GPU tools
use it on machines that have none of them.

Environment (every build):

- ``EXPECTIGRAD_CUDA``: ``auto`` (default: build CUDA code when nvcc is
  found) | ``1`` (required; also ``on``/``true``) | ``0`` (never; also
  ``off``/``false``);
- ``EXPECTIGRAD_NVCC``: path to nvcc (else ``nvcc`` on PATH, else
  ``$CUDA_HOME/bin/nvcc``, else ``/usr/local/cuda/bin/nvcc``);
- ``CUDA_HOME``: the CUDA toolkit (default: the one that holds nvcc);
- ``EXPECTIGRAD_CUDA_ARCHS``: e.g. ``90`` or ``80;90`` (default
  ``DEFAULT_CUDA_ARCHS``): SASS for each, plus PTX of the last one;
- ``CXX``: the host C++ compiler (default ``g++``, else ``c++``/``clang++``).

Artefacts are data (``ARTEFACTS``): each names its sources, and each source
may carry extra include dirs, defines and arguments, so adding a source (for
instance an XLA lowering that needs TensorFlow's third-party headers and
``libtensorflow_cc.so.2``) is one line. Paths in ``include_dirs`` and
``link_args`` may use ``{csrc}``, ``{tf_include}``, ``{tf_lib}``,
``{cuda_include}`` and ``{ffi_include}`` (XLA's header-only FFI API, from
jaxlib), filled in by the builder.
"""

import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _find_csrc():
    """The C++/CUDA sources: ``$EXPECTIGRAD_CSRC``, else the source tree's
    ``csrc/`` (a checkout or an editable install), else the copy that a
    regular install ships inside the package (``expectigrad_tf/csrc``)."""
    for d in (os.environ.get("EXPECTIGRAD_CSRC"), os.path.join(ROOT, "csrc"),
              os.path.join(HERE, "csrc")):
        if d and os.path.isfile(os.path.join(d, "expectigrad_update.h")):
            return os.path.abspath(d)
    return os.path.join(HERE, "csrc")


CSRC = _find_csrc()


class BuildError(RuntimeError):
    """A build step failed or the toolchain is missing."""


# ----------------------------------------------------------------- the flags
# -O3 with -fno-math-errno -fno-trapping-math lets the element loop vectorise
# (sqrt without errno, branch-free selects); IEEE results are unchanged.
# -ffp-contract=off: no FMA contraction, so the AVX-512/AVX2/baseline clones
# of the CPU loop, the CUDA kernel (--fmad=false) and NumPy round alike.
CXX_FLAGS = ["-std=c++17", "-O3", "-fPIC", "-DNDEBUG", "-fno-math-errno",
             "-fno-trapping-math", "-ffp-contract=off"]
# Extra host flags for the pybind11 modules (hidden symbols, as pybind11 asks).
PYBIND_FLAGS = ["-fvisibility=hidden"]
# TensorFlow's headers are noisy with recent compilers.
TF_WARNING_FLAGS = ["-Wno-deprecated-declarations", "-Wno-ignored-attributes",
                    "-Wno-interference-size"]
NVCC_FLAGS = ["-std=c++17", "-O3", "-DNDEBUG", "-Xcompiler", "-fPIC",
              "-Xcompiler", "-fvisibility=hidden", "--expt-relaxed-constexpr",
              "--fmad=false"]
# One default for every build (TF op libraries and harnesses): A100 and
# H100/H200, with PTX of the newest for JIT on later GPUs.
DEFAULT_CUDA_ARCHS = "80;90"
# CUDA's runtime linked statically (and its symbols hidden), so a library
# loads on machines without a CUDA install; it needs an NVIDIA driver that
# supports the toolkit's CUDA version only when a GPU is used.
CUDA_STATIC_RUNTIME = ["-Wl,--exclude-libs,ALL", "-lcudart_static", "-lrt",
                       "-ldl", "-lpthread"]
CUDA_LIB_SUBDIRS = ("lib64", "lib", "targets/x86_64-linux/lib",
                    "targets/sbsa-linux/lib")
# Force-included to compile the CUDA kernel's source as plain C++ (CPU tests).
CUDA_EMULATION_HEADER = "cuda/emulation/cuda_emulation.h"

# Headers every artefact depends on (for up-to-date checks).
COMMON_HEADERS = ["expectigrad_update.h", "expectigrad_multi_tensor.h",
                  "expectigrad_checks.h", "cuda/expectigrad_cuda.h",
                  "tf/kernels/expectigrad_op_kernel.h",
                  "tf/xla/expectigrad_xla_kernel.h", "tf/xla/expectigrad_ffi.h"]

# Sources that include TensorFlow's XLA headers need two of its third-party
# include dirs; libraries holding them link libtensorflow_cc (XLA's builder).
XLA_INCLUDE_DIRS = ["{tf_include}/external/highwayhash",
                    "{tf_include}/external/farmhash_archive/src"]
XLA_LINK_ARGS = ["{tf_lib}/libtensorflow_cc.so.2"]
# The XLA lowering needs XLA's typed-FFI headers, which TensorFlow's include
# dir ships from 2.17 on (2.16 has none). Sources marked "xla" are left out,
# with the reason recorded in the build info, when they are missing: the op
# then works outside XLA and the optimizer takes its composite path inside.
XLA_REQUIRED_HEADERS = ["xla/ffi/api/ffi.h"]


def xla_unsupported_reason(tf_include, tf_version="this TensorFlow"):
    """None when TensorFlow's headers can build the XLA lowering, else why not."""
    missing = [h for h in XLA_REQUIRED_HEADERS
               if not os.path.isfile(os.path.join(tf_include, h))]
    if not missing:
        return None
    return (f"TensorFlow {tf_version} ships no XLA FFI headers ({', '.join(missing)} "
            "missing), so the op was built without its XLA lowering")

# ------------------------------------------------------------- the artefacts
# kind: "tf" (a TensorFlow op library, linked with TF's flags), "ffi" (a plain
# shared library exporting an XLA FFI handler) or "pybind11" (a Python
# extension module). cuda: needs nvcc (skipped without it).
# sources: {path under csrc/: per-source options}; options are
#   compiler: "cxx" | "nvcc" (default: nvcc for .cu, else cxx)
#   include_dirs, defines, args: extra for this source only
# include_dirs / defines / link_args at artefact level apply to all sources.
ARTEFACTS = {
    # The op definition and CPU kernels (no CUDA dependency).
    "tf_ops": {
        "kind": "tf", "output": "_expectigrad_ops.so", "cuda": False,
        "include_dirs": ["{csrc}/tf/kernels", "{csrc}/tf/xla"],
        "sources": {
            "tf/ops/expectigrad_ops.cc": {},
            "tf/kernels/expectigrad_op_cpu.cc": {},
            # XLA:CPU: the lowering (TF's XLA headers) and its FFI handler.
            "tf/xla/expectigrad_xla_cpu.cc": {"include_dirs": XLA_INCLUDE_DIRS, "xla": True},
            "tf/xla/expectigrad_ffi_cpu.cc": {"xla": True},
        },
        "xla_link_args": XLA_LINK_ARGS,
    },
    # The GPU kernels, a separate library so the CPU one never needs CUDA.
    "tf_ops_cuda": {
        "kind": "tf", "output": "_expectigrad_ops_cuda.so", "cuda": True,
        "include_dirs": ["{csrc}/tf/kernels", "{csrc}/tf/xla"],
        "sources": {
            "tf/kernels/expectigrad_op_gpu.cc": {
                "defines": ["GOOGLE_CUDA=1"], "include_dirs": ["{cuda_include}"]},
            "cuda/expectigrad_kernel.cu": {},
            # XLA:GPU: the lowering, registered next to its CUDA FFI handler.
            "tf/xla/expectigrad_xla_gpu.cc": {"include_dirs": XLA_INCLUDE_DIRS, "xla": True},
            "tf/xla/expectigrad_ffi_cuda.cc": {"xla": True},
        },
        "xla_link_args": XLA_LINK_ARGS,
    },
    # Keras 3 on JAX, without TensorFlow: the XLA:CPU handler alone, built
    # against jaxlib's copy of XLA's header-only FFI API and registered from
    # Python (expectigrad_tf/_jax_ffi.py). float32/float64 (no Eigen here).
    "jax_ffi": {
        "kind": "ffi", "output": "_expectigrad_jax_ffi.so", "cuda": False,
        "include_dirs": ["{csrc}/tf/xla"],
        "defines": ["EXPECTIGRAD_FFI_STANDALONE"],
        # -isystem: jaxlib's headers warn about switches over every enum value.
        "sources": {"tf/xla/expectigrad_ffi_cpu.cc": {"args": ["-isystem", "{ffi_include}"]}},
    },
    # pybind11 harnesses (test tools, not installed): tools/build_harness.py.
    "harness": {
        "kind": "pybind11", "module": "_harness", "cuda": False,
        "sources": {"harness/harness.cc": {}},
    },
    "harness_cuda": {
        "kind": "pybind11", "module": "_harness_cuda", "cuda": True,
        "sources": {
            "harness/harness_cuda.cc": {"include_dirs": ["{cuda_include}"]},
            "cuda/expectigrad_kernel.cu": {},
        },
    },
    # The CUDA kernel's own source compiled as C++ with an emulation of the
    # CUDA keywords and launch (needs CUDA's headers, not nvcc nor a GPU).
    "harness_emulated": {
        "kind": "pybind11", "module": "_harness_emulated", "cuda": False,
        "needs_cuda_headers": True,
        "include_dirs": ["{cuda_include}"],
        "sources": {
            "harness/harness_emulated.cc": {
                "args": ["-include", "{csrc}/" + CUDA_EMULATION_HEADER]},
            "cuda/expectigrad_kernel.cu": {
                "compiler": "cxx",
                "args": ["-x", "c++", "-include", "{csrc}/" + CUDA_EMULATION_HEADER]},
        },
        "headers": [CUDA_EMULATION_HEADER],
    },
}


def source_files(name):
    """Absolute paths of an artefact's sources and headers (for staleness)."""
    art = ARTEFACTS[name]
    rel = list(art["sources"]) + COMMON_HEADERS + list(art.get("headers", []))
    return [os.path.join(CSRC, r) for r in rel]


# --------------------------------------------------------------- toolchains
def find_cxx():
    """The host C++ compiler: $CXX, else g++, c++ or clang++ on PATH."""
    cxx = os.environ.get("CXX")
    if cxx:
        return cxx
    for c in ("g++", "c++", "clang++"):
        if shutil.which(c):
            return c
    raise BuildError("no C++ compiler found (set CXX)")


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


def cuda_home(nvcc=None):
    """The CUDA toolkit root that holds include/cuda_runtime.h (for this
    nvcc when given). Raises BuildError when there is none."""
    candidates = [os.environ.get("CUDA_HOME")]
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for home in candidates:
        if home and os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            return home
    where = f"found nvcc at {nvcc} but " if nvcc else ""
    raise BuildError(f"{where}no CUDA toolkit with include/cuda_runtime.h; set CUDA_HOME")


def cuda_include_dir(nvcc=None):
    """CUDA's include dir (cuda_fp16.h...), or None when there is none."""
    try:
        return os.path.join(cuda_home(nvcc), "include")
    except BuildError:
        return None


def cuda_lib_dirs(home):
    return [os.path.join(home, d) for d in CUDA_LIB_SUBDIRS
            if os.path.isdir(os.path.join(home, d))]


def cuda_static_link_args(home):
    """Linker arguments for CUDA's static runtime from toolkit `home`."""
    return ["-L" + d for d in cuda_lib_dirs(home)] + CUDA_STATIC_RUNTIME


def cuda_mode(requested=None):
    """'auto', '1' or '0' from `requested`, else $EXPECTIGRAD_CUDA."""
    raw = requested if requested is not None else os.environ.get("EXPECTIGRAD_CUDA", "auto")
    mode = str(raw).strip().lower() or "auto"
    mode = {"on": "1", "true": "1", "yes": "1", "off": "0", "false": "0",
            "no": "0"}.get(mode, mode)
    if mode not in ("auto", "0", "1"):
        raise BuildError(f"EXPECTIGRAD_CUDA must be auto, 1 or 0, got {raw!r}")
    return mode


def parse_archs(raw):
    """'80;90' (or '80,90') -> ['80', '90']; validates each."""
    archs = [a.strip() for a in raw.replace(",", ";").split(";") if a.strip()]
    if not archs:
        raise BuildError("EXPECTIGRAD_CUDA_ARCHS is empty")
    for a in archs:
        if not re.fullmatch(r"\d+[af]?", a):
            raise BuildError(f"EXPECTIGRAD_CUDA_ARCHS: bad arch {a!r} (e.g. 90 or 80;90)")
    return archs


def gencode_flags(archs):
    """nvcc -gencode flags: SASS for each arch plus PTX of the last, so newer
    GPUs can JIT it."""
    flags = []
    for a in archs:
        flags += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    flags += ["-gencode", f"arch=compute_{archs[-1]},code=compute_{archs[-1]}"]
    return flags


def cuda_archs():
    """(gencode flags, arch list) from EXPECTIGRAD_CUDA_ARCHS or the default."""
    archs = parse_archs(os.environ.get("EXPECTIGRAD_CUDA_ARCHS", DEFAULT_CUDA_ARCHS))
    return gencode_flags(archs), archs


def nvcc_version(nvcc):
    """'13.0' from `nvcc --version` ('release 13.0, V13.0.88'), or None."""
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+)\.(\d+)", out)
    return f"{m.group(1)}.{m.group(2)}" if m else None


# ----------------------------------------------------------------- commands
def run(cmd, verbose, tag="expectigrad build"):
    """Runs a command; BuildError with its output when it fails."""
    if verbose:
        print(f"[{tag}]", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n"
                         f"{proc.stdout}\n{proc.stderr}")
    return proc


def _fill(items, paths):
    out = []
    for item in items:
        try:
            out.append(item.format(**paths))
        except KeyError as e:
            raise BuildError(f"build_config: {item!r} needs {e} (not known to this build)")
    return out


def object_command(name, src, obj, *, cxx, nvcc=None, paths=None, extra_cxx=(),
                   archs=None):
    """The command that compiles source `src` (relative to csrc/) of artefact
    `name` into `obj`. paths: values for the {placeholders} (csrc is added);
    extra_cxx: flags appended for host-compiled sources (e.g. TF's compile
    flags, Python's includes); archs: CUDA archs (default: cuda_archs())."""
    art = ARTEFACTS[name]
    opts = art["sources"][src]
    paths = dict(paths or {}, csrc=CSRC)
    compiler = opts.get("compiler", "nvcc" if src.endswith(".cu") else "cxx")
    incs = ["-I" + CSRC] + ["-I" + d for d in _fill(art.get("include_dirs", []), paths)
                            + _fill(opts.get("include_dirs", []), paths)]
    defs = ["-D" + d for d in art.get("defines", []) + opts.get("defines", [])]
    args = _fill(opts.get("args", []), paths)
    path = os.path.join(CSRC, src)
    if compiler == "nvcc":
        if nvcc is None:
            raise BuildError(f"{src} needs nvcc")
        gencode = gencode_flags(archs) if archs else cuda_archs()[0]
        return [nvcc] + NVCC_FLAGS + incs + defs + args + gencode + ["-c", path, "-o", obj]
    flags = list(CXX_FLAGS)
    if art["kind"] == "pybind11":
        flags += PYBIND_FLAGS
    elif art["kind"] == "ffi":
        flags += PYBIND_FLAGS  # only the exported handler is visible
    else:
        flags += TF_WARNING_FLAGS
    # Source-specific args (e.g. -x c++) last before the file they apply to.
    return [cxx] + flags + incs + defs + list(extra_cxx) + args + ["-c", path, "-o", obj]


def sources(name, xla=True):
    """The sources of artefact `name`; without those marked "xla" when xla is
    False (a TensorFlow without XLA FFI headers)."""
    return [src for src, opts in ARTEFACTS[name]["sources"].items()
            if xla or not opts.get("xla")]


def link_args(name, paths=None, xla=True):
    """Artefact-specific linker arguments (placeholders filled)."""
    paths = dict(paths or {}, csrc=CSRC)
    art = ARTEFACTS[name]
    return _fill(art.get("link_args", []) + (art.get("xla_link_args", []) if xla else []),
                 paths)


def shared_flags(kind):
    """Flags that link a shared library of this kind."""
    flags = ["-shared"]
    if kind == "pybind11" and sys.platform == "darwin":
        flags += ["-undefined", "dynamic_lookup"]
    return flags
