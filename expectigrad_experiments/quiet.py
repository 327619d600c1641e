"""Quiet TensorFlow by default in the experiments' commands (one place).

``expectigrad_experiments/__init__.py`` calls :func:`quiet_tensorflow` before
any command module runs, so before TensorFlow is imported. Unless the user set
``TF_CPP_MIN_LOG_LEVEL`` (any value: then nothing here changes anything):

* ``TF_CPP_MIN_LOG_LEVEL=2``: TensorFlow's C++ INFO and WARNING lines are
  dropped, errors are kept;
* the lines that level does not reach, because TensorFlow writes them through
  absl before absl's logging is initialised ("WARNING: All log messages
  before absl::InitializeLog() is called are written to STDERR", then e.g.
  ``I0000 ... cudart_stub.cc] Could not find cuda drivers``), are filtered
  from stderr while ``tensorflow`` is imported and its devices are listed:
  INFO / WARNING lines and that banner are dropped, everything else (errors,
  Python warnings and tracebacks) is written back to stderr. On a machine
  without CUDA drivers the ``failed call to cuInit`` error that follows the
  "Could not find cuda drivers" note is dropped too (the note says why);
* Python's ``absl`` logger is set to ERROR.

To see everything: ``TF_CPP_MIN_LOG_LEVEL=0 expectigrad-...``.
"""

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile

__all__ = ["LOG_LEVEL_DEFAULT", "quiet_tensorflow", "filter_tensorflow_noise"]

LOG_LEVEL_DEFAULT = "2"
_ABSL_BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# absl / glog line prefix: severity, MMDD hh:mm:ss.micro (before absl is initialised:
# 0000 00:00:<unix time>), thread id, file:line]
_LOG_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+\s+\S+:\d+\] ")
_NO_DRIVER = "Could not find cuda drivers"
_CUINIT = "failed call to cuInit"


def filter_tensorflow_noise(text):
    """``text`` (captured stderr) without TensorFlow's INFO / WARNING log
    lines and the absl banner; errors and other output are kept."""
    no_driver = _NO_DRIVER in text
    kept = []
    for line in text.splitlines(keepends=True):
        if line.rstrip("\r\n") == _ABSL_BANNER:
            continue
        m = _LOG_LINE.match(line)
        if m and m.group(1) in "IW":
            continue
        if m and no_driver and _CUINIT in line:
            continue
        kept.append(line)
    return "".join(kept)


@contextlib.contextmanager
def _filtered_stderr():
    """Captures file descriptor 2 (C++ and Python writes alike) into a
    temporary file and writes back what filter_tensorflow_noise keeps."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, AttributeError, ValueError):
        yield
        return
    tmp = tempfile.TemporaryFile()
    try:
        os.dup2(tmp.fileno(), 2)
        yield
    finally:
        try:
            sys.stderr.flush()
        except (OSError, AttributeError, ValueError):
            pass
        os.dup2(saved, 2)
        os.close(saved)
        tmp.seek(0)
        kept = filter_tensorflow_noise(tmp.read().decode("utf-8", errors="replace"))
        tmp.close()
        if kept:
            os.write(2, kept.encode("utf-8"))


class _QuietLoader:
    """Wraps TensorFlow's loader: its import (and the listing of its devices,
    which initialises CUDA) runs with stderr filtered."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        with _filtered_stderr():
            self._loader.exec_module(module)
            try:
                module.config.list_physical_devices()
            except Exception:  # noqa: BLE001 - the command reports device errors later
                pass
        logging.getLogger("absl").setLevel(logging.ERROR)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)  # once; and no recursion below
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _QuietLoader(spec.loader)
        return spec


def quiet_tensorflow(environ=None):
    """Applies the defaults above unless ``TF_CPP_MIN_LOG_LEVEL`` is already
    set in ``environ`` (default ``os.environ``). Returns True when it did."""
    environ = os.environ if environ is None else environ
    if "TF_CPP_MIN_LOG_LEVEL" in environ:
        return False
    environ["TF_CPP_MIN_LOG_LEVEL"] = LOG_LEVEL_DEFAULT
    if environ is os.environ:
        logging.getLogger("absl").setLevel(logging.ERROR)
        if "tensorflow" not in sys.modules and not any(
                isinstance(f, _QuietTensorFlowFinder) for f in sys.meta_path):
            sys.meta_path.insert(0, _QuietTensorFlowFinder())
    return True
