#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv (once), installs
# TensorFlow and this package (its op compiled against that TensorFlow), then
#   bash scripts/run.sh demo [args]   runs the demo (Expectigrad vs Adam on digits)
#   bash scripts/run.sh test [args]   runs the whole test suite
# Environment: PYTHON (default python3), VENV (default .venv),
# EXPECTIGRAD_CUDA (auto/0/1, see expectigrad_tf/_build.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
what=${1:-}
shift || true

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
stamp="$VENV/.expectigrad-installed"
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ] || [ -n "$(find csrc expectigrad_tf -newer "$stamp" -name '*.*' ! -name '*.so' ! -name '*.json' ! -name '*.pyc' 2>/dev/null | head -1)" ]; then
  python -m pip install -q --upgrade pip
  python -m pip install -q "tensorflow>=2.16" pybind11 setuptools wheel
  python -m pip install -q --no-build-isolation ".[test,scripts]"
  touch "$stamp"
fi

case "$what" in
  demo) exec python scripts/demo.py "$@" ;;
  test) cd tests && exec python -m pytest -q -m "not gpu" "$@" ;;   # GPU tests: pytest -m gpu
  *) echo "usage: bash scripts/run.sh demo|test [args]" >&2; exit 2 ;;
esac
