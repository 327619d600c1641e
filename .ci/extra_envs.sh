#!/usr/bin/env bash
# The environments CI tests besides the main one (tools/run.sh test: Python
# 3.11, the newest TensorFlow, the package installed from its wheel, tf_keras):
#
#   .venv-ci-oldest  Python 3.12 and TensorFlow 2.16 (the oldest of the range
#                    the package declares): a regular install from source, the
#                    optimizer and op tests, and the installed-package tests
#                    (rebuild from site-packages).
#   .venv-ci-notf    Python 3.11, Keras 3 on JAX and on a CPU PyTorch, no
#                    TensorFlow: the install skips the op; the backend tests.
#
#   bash .ci/extra_envs.sh prepare   creates both and downloads what they need
#                                    (CI runs it while the main suite runs)
#   bash .ci/extra_envs.sh test      installs the package into both and tests
set -euo pipefail
cd "$(dirname "$0")/.."
OLDEST_TF=${OLDEST_TF:-2.16}

python312() {
  local p
  for p in python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12; do
    if command -v "$p" >/dev/null 2>&1 &&
       "$p" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
      echo "$p"; return 0
    fi
  done
  echo "extra_envs: Python 3.12 not found" >&2; return 1
}

prepare() {
  rm -rf .venv-ci-oldest .venv-ci-notf
  "$(python312)" -m venv .venv-ci-oldest
  .venv-ci-oldest/bin/python -m pip install -q --upgrade pip "setuptools>=77" wheel pybind11
  .venv-ci-oldest/bin/python -m pip install -q "tensorflow==${OLDEST_TF}.*" pytest hypothesis
  python3 -m venv .venv-ci-notf
  .venv-ci-notf/bin/python -m pip install -q --upgrade pip "setuptools>=77" wheel pybind11
  .venv-ci-notf/bin/python -m pip install -q "jax[cpu]" keras "torch==2.13.0" pytest hypothesis
}

run_tests() {
  echo "== Python 3.12, TensorFlow ${OLDEST_TF}: regular install from source"
  rm -rf build
  EXPECTIGRAD_CUDA=0 .venv-ci-oldest/bin/python -m pip install -q --no-build-isolation --no-deps .
  (cd tests && ../.venv-ci-oldest/bin/python -m pytest -q -m "not gpu" \
     reference op/test_fused_op.py op/test_xla.py optimizer/test_dispatch.py \
     optimizer/test_keras_features.py optimizer/test_hardening.py optimizer/test_sparse.py \
     packaging/test_installed.py)

  echo "== Keras 3 on JAX and PyTorch, without TensorFlow"
  rm -rf build
  .venv-ci-notf/bin/python -m pip install -q --no-build-isolation --no-deps .
  (cd tests && KERAS_BACKEND=jax ../.venv-ci-notf/bin/python -m pytest -q \
     audiences/test_keras_backends.py)
}

case "${1:-}" in
  prepare) prepare ;;
  test) run_tests ;;
  *) echo "usage: bash .ci/extra_envs.sh prepare|test" >&2; exit 2 ;;
esac
