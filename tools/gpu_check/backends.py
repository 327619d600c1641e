"""Device arrays for the GPU check: CuPy and PyTorch backends (used only to
allocate device memory and time with CUDA events; the kernel runs through
the ``_harness_cuda`` module), and a CPU simulation with the CPU harness
standing in for the GPU (to test the tool itself). Also the host-side storage
conversions (bfloat16 held as its bit pattern)."""

import platform
import time

import numpy as np

DTYPES = ("float32", "float64", "float16", "bfloat16")
STORAGE = {"float32": np.float32, "float64": np.float64, "float16": np.float16,
           "bfloat16": np.uint16}  # bfloat16 is held as its bit pattern
ITEMSIZE = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}


def state_dtype(dtype):
    return "float64" if dtype == "float64" else "float32"


# ----------------------------------------------------------- host conversions
def _bf16_bits(x):
    """float array -> bfloat16 bit patterns (uint16), round to nearest even,
    as __float2bfloat16 does (via float32, as the kernel computes in float32)."""
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    u = x32.view(np.uint32).astype(np.uint64)
    bits = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x32)
    if nan.any():
        bits[nan] = 0x7FC0
    return bits


def to_storage(x, dtype):
    """float values -> a NumPy array in the storage form of dtype."""
    if dtype == "bfloat16":
        return _bf16_bits(x)
    return np.asarray(x).astype(STORAGE[dtype])


def from_storage(a, dtype):
    """storage form -> float64 values."""
    a = np.asarray(a)
    if dtype == "bfloat16":
        return (a.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return a.astype(np.float64)


def round_to(x, dtype):
    return from_storage(to_storage(x, dtype), dtype)


# ------------------------------------------------------------------- backends
class DeviceArray:
    """A device buffer and the view of it handed to the kernel."""

    def __init__(self, buf, view, pad, dtype, guard_bits):
        self.buf, self.view, self.pad, self.dtype = buf, view, pad, dtype
        self.guard_bits = guard_bits  # storage values of the padding, or None


class Backend:
    """Device arrays and timing. Subclasses: CuPy, PyTorch, CPU simulation."""

    name = "?"
    simulated = False

    def __init__(self, harness_cuda=None):
        self.h = harness_cuda

    # storage-form NumPy array -> device buffer (1-D)
    def _to_device(self, host, dtype):
        raise NotImplementedError

    def _to_host(self, arr, dtype):  # -> storage-form NumPy array
        raise NotImplementedError

    def _full(self, n, dtype, value):
        return self._to_device(np.full(n, to_storage(np.float64(value), dtype)), dtype)

    def _slice(self, buf, start, stop, shape):
        return buf[start:stop].reshape(shape)

    def upload(self, values, dtype, shape=None, misaligned=False):
        """float64 values -> DeviceArray; misaligned: the view starts at
        element 1 of its buffer and one guard element follows it."""
        values = np.asarray(values, np.float64).ravel()
        n = values.size
        shape = (n,) if shape is None else tuple(shape)
        pad = 1 if misaligned else 0
        host = np.empty(n + 2 * pad, STORAGE[dtype])
        host[pad:pad + n] = to_storage(values, dtype)
        guard = None
        if pad:
            guard = to_storage(np.array([-7.25, 3.5]), dtype)
            host[0], host[-1] = guard[0], guard[1]
        buf = self._to_device(host, dtype)
        return DeviceArray(buf, self._slice(buf, pad, pad + n, shape), pad, dtype, guard)

    def download(self, a):
        """DeviceArray -> (float64 values of the view, guards intact?)."""
        host = self._to_host(a.buf, a.dtype)
        n = host.size - 2 * a.pad
        ok = True
        if a.pad:
            ok = bool(host[0] == a.guard_bits[0] and host[-1] == a.guard_bits[1])
        return from_storage(host[a.pad:a.pad + n], a.dtype), ok

    def write(self, a, start, values):
        """values (float64) -> elements [start, start + len) of a 1-D view."""
        raise NotImplementedError

    def read(self, a, start, stop):
        raise NotImplementedError

    def override(self, dtype):
        return None

    def stream(self):
        return 0

    def apply(self, var, sum_, cnt, mom, grad, lr, beta, eps, step, dtype,
              lr_dtype="float64"):
        self.h.apply_cuda(var, sum_, cnt, mom, grad, lr, beta, eps, step,
                          stream=self.stream(), dtype=self.override(dtype),
                          lr_dtype=lr_dtype)

    def set_max_blocks(self, n):
        """Caps the kernel's grid (0: default); False when not supported."""
        if self.h is None or not hasattr(self.h, "set_max_blocks"):
            return False
        self.h.set_max_blocks(n)
        return True

    def prepare(self, var, sum_, cnt, mom, grad, dtype):
        plan = self.h.prepare_cuda(var, sum_, cnt, mom, grad, dtype=self.override(dtype))
        stream = self.stream()
        return lambda lr, beta, eps, step: plan.apply(lr, beta, eps, step, stream=stream)

    def copy(self, dst, src):
        self.h.copy(dst, src, stream=self.stream())

    def sync(self):
        self.h.synchronize()

    def time_ms(self, fn, iters):
        raise NotImplementedError

    def free_memory(self):
        return None

    def release(self):
        pass

    def device_info(self):
        return {}


class CupyBackend(Backend):
    name = "cupy"

    def __init__(self, harness_cuda=None):
        super().__init__(harness_cuda)
        import cupy

        self.cp = cupy

    @staticmethod
    def device_count():
        import cupy

        return cupy.cuda.runtime.getDeviceCount()

    def _to_device(self, host, dtype):
        return self.cp.asarray(host)

    def _to_host(self, arr, dtype):
        return self.cp.asnumpy(arr)

    def _full(self, n, dtype, value):
        return self.cp.full(n, to_storage(np.float64(value), dtype), dtype=STORAGE[dtype])

    def write(self, a, start, values):
        a.view[start:start + len(values)] = self.cp.asarray(to_storage(values, a.dtype))

    def read(self, a, start, stop):
        return from_storage(self.cp.asnumpy(a.view[start:stop]), a.dtype)

    def override(self, dtype):
        return "bfloat16" if dtype == "bfloat16" else None  # held as uint16

    def stream(self):
        return self.cp.cuda.get_current_stream().ptr

    def time_ms(self, fn, iters):
        start, end = self.cp.cuda.Event(), self.cp.cuda.Event()
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        return self.cp.cuda.get_elapsed_time(start, end) / iters

    def free_memory(self):
        return self.cp.cuda.runtime.memGetInfo()[0]

    def release(self):
        self.cp.get_default_memory_pool().free_all_blocks()


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, harness_cuda=None):
        super().__init__(harness_cuda)
        import torch

        self.torch = torch
        self.tdtype = {"float32": torch.float32, "float64": torch.float64,
                       "float16": torch.float16, "bfloat16": torch.bfloat16}
        # Older PyTorch cannot export bfloat16 through __cuda_array_interface__:
        # hold bfloat16 as int16 there and name the dtype explicitly.
        try:
            torch.zeros(1, dtype=torch.bfloat16, device="cuda").__cuda_array_interface__
            self.bf16_native = True
        except Exception:
            self.bf16_native = False
            self.tdtype["bfloat16"] = torch.int16

    @staticmethod
    def device_count():
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0

    def _to_device(self, host, dtype):
        if dtype == "bfloat16":
            return self.torch.from_numpy(host.view(np.int16)).to("cuda").view(
                self.tdtype["bfloat16"])
        return self.torch.from_numpy(host).to("cuda")

    def _to_host(self, arr, dtype):
        if dtype == "bfloat16":
            return arr.view(self.torch.int16).cpu().numpy().view(np.uint16)
        return arr.cpu().numpy()

    def _full(self, n, dtype, value):
        if dtype == "bfloat16":
            return super()._full(n, dtype, value)
        return self.torch.full((n,), float(value), dtype=self.tdtype[dtype], device="cuda")

    def write(self, a, start, values):
        src = self._to_device(to_storage(values, a.dtype), a.dtype)
        a.view[start:start + len(values)].copy_(src)

    def read(self, a, start, stop):
        return from_storage(self._to_host(a.view[start:stop], a.dtype), a.dtype)

    def override(self, dtype):
        # bfloat16 tensors are recognised by the harness (typestr "<V2" or
        # their torch dtype), which this exercises where PyTorch exports them.
        return "bfloat16" if dtype == "bfloat16" and not self.bf16_native else None

    def stream(self):
        return self.torch.cuda.current_stream().cuda_stream

    def time_ms(self, fn, iters):
        c = self.torch.cuda
        start, end = c.Event(enable_timing=True), c.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / iters

    def free_memory(self):
        return self.torch.cuda.mem_get_info()[0]

    def release(self):
        self.torch.cuda.empty_cache()


class CpuSimBackend(Backend):
    """NumPy arrays and the CPU harness in place of the GPU (script self-test).

    16-bit variables and gradients are widened to float32 around apply_cpu and
    the variable rounded back to storage, as the CUDA kernel does per element;
    sum, count and momentum are float32 state, passed as they are."""

    name = "cpu-sim"
    simulated = True

    def __init__(self, harness_cpu):
        super().__init__(None)
        self.hc = harness_cpu

    def _to_device(self, host, dtype):
        return host.copy()

    def _to_host(self, arr, dtype):
        return np.array(arr)

    def write(self, a, start, values):
        a.view[start:start + len(values)] = to_storage(values, a.dtype)

    def read(self, a, start, stop):
        return from_storage(a.view[start:stop], a.dtype)

    def apply(self, var, sum_, cnt, mom, grad, lr, beta, eps, step, dtype,
              lr_dtype="float64"):
        if lr_dtype == "float32":
            lr = float(np.float32(lr))  # what the kernel reads from a float32 lr
        if dtype in ("float32", "float64"):
            self.hc.apply_cpu(var, sum_, cnt, mom, grad, lr, beta, eps, step)
            return
        wide = lambda xs: [from_storage(x, dtype).astype(np.float32) for x in xs]  # noqa: E731
        v32, g32 = wide(var), wide(grad)
        self.hc.apply_cpu(v32, sum_, cnt, mom, g32, lr, beta, eps, step)
        for dst, src in zip(var, v32):
            dst[...] = to_storage(src, dtype)

    def prepare(self, var, sum_, cnt, mom, grad, dtype):
        return lambda lr, beta, eps, step: self.apply(var, sum_, cnt, mom, grad, lr, beta,
                                                      eps, step, dtype)

    def copy(self, dst, src):
        np.copyto(dst, src)

    def sync(self):
        pass

    def time_ms(self, fn, iters):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) * 1e3 / iters

    def device_info(self):
        return {"name": f"CPU simulation ({platform.processor() or platform.machine()})"}
