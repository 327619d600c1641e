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
// (blockIdx/threadIdx/blockDim/gridDim, thread-local), a launch that runs
// every block and thread of the grid one after another on the calling thread,
// and the few runtime calls the launcher uses. "Device memory" is host
// memory. The 16-bit types come from CUDA's own cuda_fp16.h/cuda_bf16.h,
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

namespace expectigrad_emulation {

// Observable state of the emulated device, for tests. One instance per
// shared object (an inline function's static).
struct State {
  int multiprocessors = 2;  // reported by cudaDeviceGetAttribute
  int64_t launches = 0;     // kernel launches since reset_counters()
  int64_t max_grid = 0;     // largest grid launched since reset_counters()
  int64_t min_grid = 0;     // smallest grid launched since reset_counters()
  int64_t threads = 0;      // threads run since reset_counters()
  cudaError_t last_error = cudaSuccess;
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
  *device = 0;
  return cudaSuccess;
}

inline cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr,
                                          int device) {
  if (attr != cudaDevAttrMultiProcessorCount || device != 0)
    return cudaErrorInvalidValue;
  *value = expectigrad_emulation::state().multiprocessors;
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
  std::memmove(dst, src, count);  // "device" memory is host memory
  return cudaSuccess;
}

inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error (emulated)";
    case cudaErrorInvalidValue: return "invalid argument (emulated)";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument (emulated)";
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
template <typename Body>
void launch(dim3 grid, dim3 block, cudaStream_t, Body&& body) {
  State& s = state();
  if (grid.x == 0 || block.x == 0 || block.x > 1024 || grid.y != 1 || grid.z != 1 ||
      block.y != 1 || block.z != 1) {
    s.last_error = cudaErrorInvalidConfiguration;
    return;
  }
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
}

}  // namespace expectigrad_emulation

#endif  // EXPECTIGRAD_CUDA_EMULATION_H_
