"""Helpers of the kernel tests (a module of its own so test modules can import
it; conftest.py names are ambiguous between test directories)."""

import importlib.machinery
import importlib.util
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD_DIR = os.environ.get("EXPECTIGRAD_HARNESS_DIR",
                           os.path.join(ROOT, "tests", ".harness_build"))

# Runs a module (python -m ...) with TensorFlow and Keras made unimportable.
NO_TF_RUN_MODULE = (
    "import runpy, sys; sys.modules['tensorflow'] = None; sys.modules['keras'] = None; "
    "mod = sys.argv[1]; sys.argv = sys.argv[1:]; "
    "runpy.run_module(mod, run_name='__main__', alter_sys=True)")


def run_tool(module, *args, timeout=900, cwd=ROOT):
    """`python -m module args` from the repository root, without TensorFlow."""
    return subprocess.run([sys.executable, "-c", NO_TF_RUN_MODULE, module, *args],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


def load_extension(path):
    """Imports a built extension module from its path."""
    name = os.path.basename(path).split(".")[0]
    loader = importlib.machinery.ExtensionFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
