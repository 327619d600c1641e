"""Developer tools (not installed with the package), run from the repository
root:

- ``python -m tools.build_harness``: builds the pybind11 kernel harnesses;
- ``python -m tools.gpu_check``: the CUDA kernel against the NumPy reference,
  and its bandwidth, on a GPU machine without TensorFlow;
- ``bash tools/run.sh demo|test``: a fresh environment, install, demo/tests.
"""
