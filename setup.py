"""Build hooks of expectigrad-tf; the metadata is in pyproject.toml.

Two things are computed at build time, so they live here:

- build_ext compiles the TensorFlow op libraries (expectigrad_tf/build.py,
  flags and sources from expectigrad_tf/build_config.py) against the
  TensorFlow installed in the build environment (build without isolation),
  and ships the C++/CUDA sources inside the package so that an installed copy
  can rebuild them (``python -m expectigrad_tf.build``). Without TensorFlow
  the op is skipped with one message; the optimizer then runs its composite
  path on Keras 3's other backends. With jaxlib installed it also builds the
  JAX library (``build.build_jax``: the XLA:CPU handler alone, for Keras 3 on
  JAX); a failure there only warns.
- the dependencies: ``tensorflow>=X.Y,<X.(Y+1)`` (the TensorFlow minor version
  the op was built for: a wheel's Requires-Dist), or ``keras>=3`` when built
  without TensorFlow.

The CUDA kernels are built too when nvcc is found (EXPECTIGRAD_CUDA=0 to
skip, =1 to require).
"""

import importlib.metadata
import os
import shutil
import sys

from setuptools import Distribution, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
# Distributions that provide the `tensorflow` module, most common first.
TF_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-intel", "tf-nightly")


def installed_tensorflow():
    """(distribution name, version) of the installed TensorFlow, or None."""
    for name in TF_DISTRIBUTIONS:
        try:
            return name, importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def install_requires():
    tf = installed_tensorflow()
    if tf is None:
        return ["numpy", "keras>=3.0"]
    name, version = tf
    major, minor = (int(x) for x in version.split(".")[:2])
    return ["numpy", f"{name}>={major}.{minor},<{major}.{minor + 1}"]


def _load_builder():
    # The source tree's expectigrad_tf (setup.py is not installed, so it may
    # put its own folder first on sys.path).
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    from expectigrad_tf import build

    return build


class BuildExt(build_ext):
    """Builds the TensorFlow op libraries. The pybind11 test harnesses are not
    part of the package: tools/build_harness.py builds them."""

    def run(self):
        super().run()
        inplace = self.inplace or getattr(self, "editable_mode", False)
        out = os.path.join(HERE if inplace else self.build_lib, "expectigrad_tf")
        if not inplace:
            # Ship the C++/CUDA sources inside the package (expectigrad_tf/csrc),
            # so an installed copy can rebuild the op; build_config finds them.
            dest = os.path.join(out, "csrc")
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(os.path.join(HERE, "csrc"), dest)
        builder = _load_builder()
        try:
            # Keras 3 on JAX: the XLA:CPU handler, when jaxlib is installed.
            # Optional: a failure warns, and JAX takes the composite path.
            if builder.build_jax(out_dir=out, verbose=True) is not None:
                sys.stderr.write("expectigrad_tf: built the JAX library (fused kernel as an "
                                 "XLA:CPU custom call on Keras 3's JAX backend)\n")
        except Exception as e:  # noqa: BLE001 - never fail the install for it
            sys.stderr.write(f"expectigrad_tf: WARNING: building the JAX library failed, "
                             f"Keras 3 on JAX will use the composite path: {e}\n")
        if installed_tensorflow() is None:
            if os.environ.get("EXPECTIGRAD_CUDA", "").lower() in ("1", "on", "true", "yes"):
                raise SystemExit("expectigrad_tf: EXPECTIGRAD_CUDA=1 but TensorFlow is not "
                                 "installed, so the op cannot be built")
            sys.stderr.write(
                "expectigrad_tf: TensorFlow is not installed: skipping the fused op; the "
                "optimizer will run its composite path on Keras 3's PyTorch backend (and on "
                "JAX without jaxlib at build time). To add the op later: pip install "
                "tensorflow && python -m expectigrad_tf.build\n")
            return
        try:
            builder.build(out_dir=out, verbose=True)
        except builder.BuildError as e:
            raise SystemExit(f"expectigrad_tf: building the op failed: {e}")


class BinaryDistribution(Distribution):
    """No setuptools Extension, but compiled libraries: run build_ext and
    make a platform wheel."""

    def has_ext_modules(self):
        return True


setup(
    install_requires=install_requires(),
    package_data={"expectigrad_tf": ["*.so", "_build_info.json", "_jax_build_info.json",
                                   "csrc/**/*"]},
    distclass=BinaryDistribution,
    cmdclass={"build_ext": BuildExt},
)
