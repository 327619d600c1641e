"""Build and install expectigrad_tf.

The fused op is compiled against the TensorFlow installed in *this*
environment, so install without build isolation:

    pip install tensorflow
    pip install --no-build-isolation .

The CUDA kernels are built too when nvcc is found (EXPECTIGRAD_CUDA=0 to
skip, =1 to require). See expectigrad_tf/_build.py.
"""

import os
import shutil
import sys

from setuptools import Distribution, find_packages, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))


def _load_builder():
    # The source tree's expectigrad_tf (setup.py is not installed, so it may
    # put its own folder first on sys.path).
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    from expectigrad_tf import _build

    return _build


class BuildExt(build_ext):
    """Builds the TensorFlow op libraries (expectigrad_tf/_build.py, flags and
    sources from expectigrad_tf/build_config.py). The pybind11 test harnesses
    are not part of the package: tools/build_harness.py builds them."""

    def run(self):
        super().run()
        builder = _load_builder()
        try:
            import tensorflow  # noqa: F401
        except ImportError as e:
            raise SystemExit(
                "expectigrad_tf: TensorFlow must be installed before building "
                "(pip install tensorflow; pip install --no-build-isolation .): "
                f"{e}"
            )
        inplace = self.inplace or getattr(self, "editable_mode", False)
        out = os.path.join(HERE if inplace else self.build_lib, "expectigrad_tf")
        if not inplace:
            # Ship the C++/CUDA sources inside the package, so an installed
            # copy can rebuild the op (python -m expectigrad_tf._build) and
            # build_config finds them (expectigrad_tf/csrc).
            shutil.copytree(os.path.join(HERE, "csrc"), os.path.join(out, "csrc"),
                            dirs_exist_ok=True)
        builder.build(out_dir=out, verbose=True)


class BinaryDistribution(Distribution):
    """No setuptools Extension, but compiled libraries: run build_ext and
    make a platform wheel."""

    def has_ext_modules(self):
        return True


setup(
    name="expectigrad-tf",
    version="0.1.0",
    description="Expectigrad optimizer for TensorFlow/Keras 3 with fused CPU and CUDA kernels",
    long_description=open(os.path.join(HERE, "README.md")).read() if os.path.exists(os.path.join(HERE, "README.md")) else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # The experiments ship as their own package, so the console commands
    # below work from a regular, non-editable install too.
    packages=find_packages(include=["expectigrad_tf", "expectigrad_tf.*",
                                    "expectigrad_experiments", "expectigrad_experiments.*"]),
    entry_points={
        "console_scripts": [
            "expectigrad-demo = expectigrad_experiments.demo:main",
            "expectigrad-reddi = expectigrad_experiments.reddi:console_main",
            "expectigrad-train-image = expectigrad_experiments.train_image:console_main",
            "expectigrad-momentum-study = expectigrad_experiments.momentum_study:console_main",
            "expectigrad-translate = expectigrad_experiments.translate.trainer:main",
            "expectigrad-benchmark = expectigrad_experiments.benchmark.cli:console_main",
        ]
    },
    package_data={"expectigrad_tf": ["*.so", "_build_info.json"]},
    distclass=BinaryDistribution,
    cmdclass={"build_ext": BuildExt},
    install_requires=["tensorflow>=2.16", "numpy"],
    extras_require={
        "test": ["pytest", "hypothesis", "scikit-learn", "tensorflow-datasets", "dockerfile-parse",
                 "matplotlib", "sacrebleu"],
        # The experiments' commands (expectigrad_experiments).
        "experiments": ["scikit-learn", "matplotlib", "tensorflow-datasets", "sacrebleu"],
    },
    zip_safe=False,
)
