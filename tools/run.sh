#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv (once), installs
# TensorFlow, builds this package's wheel (its op compiled against that
# TensorFlow) and installs it, then
#   bash tools/run.sh demo [args]   runs the demo (expectigrad-demo: Expectigrad vs Adam)
#   bash tools/run.sh test [args]   runs the test suite (without the GPU tests)
# Environment: PYTHON (default python3), VENV (default .venv),
# EXPECTIGRAD_CUDA (auto/0/1) and the rest of expectigrad_tf/build_config.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
what=${1:-}
shift || true

case "$what" in
  demo|test) ;;
  *) echo "usage: bash tools/run.sh demo|test [args]" >&2; exit 2 ;;
esac

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
stamp="$VENV/.expectigrad-installed"
# Reinstall when an input of the build or of the installed package changed.
stale() {
  [ ! -f "$stamp" ] && return 0
  for f in setup.py pyproject.toml; do
    [ -e "$f" ] && [ "$f" -nt "$stamp" ] && return 0
  done
  [ -n "$(find csrc expectigrad_tf expectigrad_experiments -newer "$stamp" -name '*.*' \
          ! -name '*.so' ! -name '*.json' ! -name '*.pyc' 2>/dev/null | head -1)" ]
}
if stale; then
  python -m pip install -q --upgrade pip "setuptools>=77" wheel pybind11
  python -m pip install -q "tensorflow>=2.16"
  # Build the wheel (the op compiled against this TensorFlow) and install the
  # package from it, as a user installs it: the tests then run against the
  # installed copy, not the source tree.
  rm -rf build "$VENV/dist"
  python -m pip wheel -q --no-build-isolation --no-deps -w "$VENV/dist" .
  wheel=$(ls "$VENV"/dist/expectigrad_tf-*.whl)
  python -m pip install -q --force-reinstall --no-deps "$wheel"
  python -m pip install -q "$wheel[test,experiments]"
  touch "$stamp"
fi

case "$what" in
  demo) exec expectigrad-demo "$@" ;;
  test) cd tests && exec python -m pytest -q -m "not gpu" "$@" ;;   # GPU tests: pytest -m gpu
esac
