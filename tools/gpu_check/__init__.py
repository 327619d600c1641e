"""The CUDA kernel against the NumPy reference, and its bandwidth, on a GPU
machine without TensorFlow: ``python -m tools.gpu_check --help``.

backends (device arrays: CuPy, PyTorch, CPU simulation), checks
(correctness), workloads (bandwidth vs a device-to-device copy), report
(Markdown/JSON), cli (the command).
"""
