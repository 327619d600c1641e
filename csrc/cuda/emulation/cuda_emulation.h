// CUDA emulation for compiling csrc/cuda/expectigrad_kernel.cu (the real
// file) as plain C++ with g++, so its indexing, chunking and launch logic run
// in CI on the CPU:
//
//   g++ -x c++ -include cuda/emulation/cuda_emulation.h -I<CUDA>/include
//       -Icsrc csrc/cuda/expectigrad_kernel.cu
//
// (tools/build_harness.py builds it into the `_harness_emulated` module.)
//
// What is emulated: the CUDA keywords (__global__, __device__, __host__,
// __forceinline__, __launch_bounds__), the built-in index variables
// (blockIdx/threadIdx/blockDim/gridDim, thread-local), cudaLaunchKernel for a
// kernel taken by pointer (runs every block and thread of the grid one after
// another on the calling thread), several devices (the current one and each
// one's multiprocessor count), the per-thread "last error" of the runtime,
// and the few other runtime calls the launcher uses. "Device memory" is host
// memory. For tests: an injected launch failure (State::fail_after) and the
// bytes of the last launch's kernel parameters (State::last_params). The 16-bit types come from CUDA's own cuda_fp16.h/cuda_bf16.h,
// whose host-side code compiles with g++ and rounds as the device does.
//
// What is NOT emulated: concurrency, the GPU memory model, streams (a launch
// runs to completion before it returns), device math libraries (pow/sqrt are
// the host's). Tests built on this check indexing and chunking, not the GPU.
#ifndef EXPECTIGRAD_CUDA_EMULATION_H_
#define EXPECTIGRAD_CUDA_EMULATION_H_

#define EXPECTIGRAD_CUDA_EMULATION 1

#if defined(__CUDACC__)
#error "cuda_emulation.h is for host compilers only (g++ -x c++), not nvcc"
#endif

// Keywords first, so CUDA's crt/host_defines.h (pulled in by vector_types.h)
// keeps these definitions.
#ifndef __global__
#define __global__
#endif
#ifndef __device__
#define __device__
#endif
#ifndef __host__
#define __host__
#endif
#ifndef __forceinline__
#define __forceinline__ inline __attribute__((always_inline))
#endif
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

// CUDA's own host-compilable headers: dim3/uint3, and the runtime's types
// (cudaError_t, cudaStream_t, the enums). cuda_fp16.h includes the runtime
// API declarations too; the few functions the launcher calls are defined
// below (inline, with C linkage, matching those declarations), so nothing
// links against libcudart.
#include <driver_types.h>
#include <vector_types.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace expectigrad_emulation {

// Observable state of the emulated device, for tests. One instance per
// shared object (an inline function's static).
struct State {
  static constexpr int kDevices = 8;
  int device = 0;  // the current device (cudaGetDevice)
  int multiprocessors[kDevices] = {2, 2, 2, 2, 2, 2, 2, 2};  // per device
  int64_t attribute_queries = 0;  // cudaDeviceGetAttribute calls, ever
  int64_t launches = 0;     // kernel launches since reset_counters()
  int64_t max_grid = 0;     // largest grid launched since reset_counters()
  int64_t min_grid = 0;     // smallest grid launched since reset_counters()
  int64_t threads = 0;      // threads run since reset_counters()
  cudaError_t last_error = cudaSuccess;  // what cudaGetLastError() returns
  // Failure injection: -1 never; otherwise the launch after `fail_after`
  // more successful ones returns fail_code (and runs nothing); then -1.
  int64_t fail_after = -1;
  cudaError_t fail_code = cudaErrorLaunchFailure;
  // The bytes of each kernel parameter of the last successful launch.
  std::vector<std::string> last_params;
};

inline State& state() {
  static State s;  // driven from one Python thread at a time (the GIL)
  return s;
}

inline void reset_counters() {
  State& s = state();
  s.launches = s.max_grid = s.min_grid = s.threads = 0;
}

}  // namespace expectigrad_emulation

// ---------------------------------------------------------------- runtime API
extern "C" {

inline cudaError_t cudaGetDevice(int* device) {
  *device = expectigrad_emulation::state().device;
  return cudaSuccess;
}

inline cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr,
                                          int device) {
  expectigrad_emulation::State& s = expectigrad_emulation::state();
  ++s.attribute_queries;
  if (attr != cudaDevAttrMultiProcessorCount || device < 0 ||
      device >= expectigrad_emulation::State::kDevices) {
    s.last_error = cudaErrorInvalidValue;
    return cudaErrorInvalidValue;
  }
  *value = s.multiprocessors[device];
  return cudaSuccess;
}

inline cudaError_t cudaGetLastError(void) {
  const cudaError_t e = expectigrad_emulation::state().last_error;
  expectigrad_emulation::state().last_error = cudaSuccess;
  return e;
}

inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count,
                                   enum cudaMemcpyKind kind, cudaStream_t) {
  if (kind != cudaMemcpyDeviceToDevice) return cudaErrorInvalidValue;
  if (count == 0) return cudaSuccess;  // pointers may be null
  std::memmove(dst, src, count);  // "device" memory is host memory
  return cudaSuccess;
}

inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error (emulated)";
    case cudaErrorInvalidValue: return "invalid argument (emulated)";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument (emulated)";
    case cudaErrorLaunchFailure: return "unspecified launch failure (emulated)";
    default: return "unknown error (emulated)";
  }
}

}  // extern "C"

// --------------------------------------------------------- built-in indices
inline thread_local uint3 blockIdx;
inline thread_local uint3 threadIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

namespace expectigrad_emulation {

// Runs `body` (one thread's kernel body) for every thread of every block,
// in order, on the calling thread. Only 1-D grids and blocks are used.
// Returns the launch's status; a failure is also recorded as the last error,
// as the runtime does, and runs nothing.
template <typename Body>
cudaError_t launch(dim3 grid, dim3 block, cudaStream_t, Body&& body) {
  State& s = state();
  if (grid.x == 0 || block.x == 0 || block.x > 1024 || grid.y != 1 || grid.z != 1 ||
      block.y != 1 || block.z != 1) {
    s.last_error = cudaErrorInvalidConfiguration;
    return cudaErrorInvalidConfiguration;
  }
  if (s.fail_after == 0) {
    s.fail_after = -1;
    s.last_error = s.fail_code;
    return s.fail_code;
  }
  if (s.fail_after > 0) --s.fail_after;
  s.min_grid = s.launches == 0 ? int64_t(grid.x) : std::min<int64_t>(s.min_grid, grid.x);
  s.max_grid = std::max<int64_t>(s.max_grid, grid.x);
  ++s.launches;
  gridDim = grid;
  blockDim = block;
  for (unsigned b = 0; b < grid.x; ++b) {
    for (unsigned t = 0; t < block.x; ++t) {
      blockIdx = uint3{b, 0, 0};
      threadIdx = uint3{t, 0, 0};
      body();
      ++s.threads;
    }
  }
  return cudaSuccess;
}

template <typename... P, size_t... I>
void call_kernel(void (*kernel)(P...), void** args, std::index_sequence<I...>) {
  kernel(*static_cast<typename std::remove_cv<P>::type*>(args[I])...);
}

}  // namespace expectigrad_emulation

// cudaLaunchKernel for a kernel taken by pointer, as cuda_runtime.h's
// template overload: args[i] points to the i-th parameter's value.
template <typename... P>
cudaError_t cudaLaunchKernel(void (*kernel)(P...), dim3 grid, dim3 block, void** args,
                             size_t /*shared_mem*/, cudaStream_t stream) {
  const cudaError_t err = expectigrad_emulation::launch(grid, block, stream, [&] {
    expectigrad_emulation::call_kernel(kernel, args, std::index_sequence_for<P...>{});
  });
  if (err == cudaSuccess) {
    const size_t sizes[] = {sizeof(P)...};
    auto& params = expectigrad_emulation::state().last_params;
    params.clear();
    for (size_t i = 0; i < sizeof...(P); ++i)
      params.emplace_back(static_cast<const char*>(args[i]), sizes[i]);
  }
  return err;
}

#endif  // EXPECTIGRAD_CUDA_EMULATION_H_
