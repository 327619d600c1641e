// CUDA multi-tensor Expectigrad kernel. Pure CUDA: no TensorFlow headers, so
// the same object links into the TF op library and the pybind11 harness.
//
// Each launch takes up to kMaxTensors tensors as one flat index space and
// walks it with a grid-stride loop. A thread's indices only grow, so the
// tensor it is in is found by advancing a cursor, not by searching.
// Every element reads var, sum, [count], [momentum], grad once and writes
// var, sum, [count], [momentum] once.
//
// lr and step are read from device memory by every thread at kernel start,
// and the bias correction is computed there (make_step_scalars, in double),
// so a launch needs no host copy of either.
//
// This file also compiles as plain C++ (g++ -x c++ with
// emulation/cuda_emulation.h force-included) for the CPU tests of its
// indexing and chunking; kernels are therefore launched only through
// launch_kernel() below, never with <<<>>> directly.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#ifndef EXPECTIGRAD_CUDA_EMULATION  // see emulation/cuda_emulation.h
#include <cuda_runtime.h>
#endif

#include <algorithm>
#include <atomic>

#include "../expectigrad_update.h"
#include "expectigrad_cuda.h"

namespace expectigrad {
namespace cuda {
namespace {

constexpr int kMaxTensors = 40;  // keeps the kernel argument under 4 KB
constexpr int kThreads = 256;

template <typename T, typename S>
struct LaunchArgs {
  T* var[kMaxTensors];
  S* sum[kMaxTensors];
  S* cnt[kMaxTensors];
  T* mom[kMaxTensors];
  const T* grad[kMaxTensors];
  int64_t end[kMaxTensors];  // exclusive prefix end of each tensor
  int num;
};

// DeviceScalars as a kernel argument.
struct KernelScalars {
  const void* lr;
  const int64_t* step;
  double beta;
  double epsilon;
  bool lr_is_double;
};

// Reads lr and step from device memory and computes the step scalars exactly
// as the host does (make_step_scalars). False when lr or step is invalid:
// then the kernel changes nothing (callers validate and report errors).
template <typename S, bool kMomentum>
__device__ __forceinline__ bool load_step_scalars(const KernelScalars& k,
                                                  StepScalars<S>* p) {
  const double lr = k.lr_is_double ? *static_cast<const double*>(k.lr)
                                   : double(*static_cast<const float*>(k.lr));
  const int64_t step = *k.step;
  if (!valid_lr_step(lr, step)) return false;
  // Without momentum there is no bias correction: beta is not used.
  *p = make_step_scalars<S>(lr, kMomentum ? k.beta : 0.0, k.epsilon, step);
  return true;
}

template <typename T, typename S, bool kMomentum, bool kSparseCounter>
__global__ void __launch_bounds__(kThreads)
    multi_tensor_kernel(const LaunchArgs<T, S> args, const KernelScalars k) {
  const int64_t total = args.end[args.num - 1];
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (first >= total) return;
  // Each thread computes the scalars itself: no shared memory, no barrier.
  StepScalars<S> p;
  if (!load_step_scalars<S, kMomentum>(k, &p)) return;
  int t = 0;
  int64_t start = 0;
  for (int64_t i = first; i < total; i += stride) {
    while (i >= args.end[t]) {
      start = args.end[t];
      ++t;
    }
    const int64_t j = i - start;
    S x = static_cast<S>(args.var[t][j]);
    S s = args.sum[t][j];
    S n = kSparseCounter ? args.cnt[t][j] : S(0);
    S m = kMomentum ? static_cast<S>(args.mom[t][j]) : S(0);
    update_element<S, kMomentum, kSparseCounter>(
        static_cast<S>(args.grad[t][j]), x, s, n, m, p);
    args.var[t][j] = static_cast<T>(x);
    args.sum[t][j] = s;
    if (kSparseCounter) args.cnt[t][j] = n;
    if (kMomentum) args.mom[t][j] = static_cast<T>(m);
  }
}

std::atomic<int> max_blocks_override{0};

int max_blocks() {
  const int forced = max_blocks_override.load(std::memory_order_relaxed);
  if (forced > 0) return forced;
  static int cached = [] {
    int device = 0, sms = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) !=
            cudaSuccess || sms <= 0) {
      cudaGetLastError();
      sms = 80;
    }
    return sms * 8;  // 8 resident blocks of 256 threads per SM
  }();
  return cached;
}

// The one place kernels are launched: <<<>>> under nvcc, a loop over the grid
// in the CPU emulation.
template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), int blocks,
                          cudaStream_t stream, const Args&... args) {
#ifdef EXPECTIGRAD_CUDA_EMULATION
  expectigrad_emulation::launch(dim3(blocks), dim3(kThreads), stream,
                                [&] { kernel(args...); });
#else
  kernel<<<blocks, kThreads, 0, stream>>>(args...);
#endif
  return cudaGetLastError();
}

template <typename T, typename S>
int launch_typed(const RawChunk* chunks, int num_chunks, const KernelScalars& k,
                 cudaStream_t stream) {
  if (num_chunks <= 0) return 0;
  const bool has_mom = chunks[0].mom != nullptr;
  const bool has_cnt = chunks[0].cnt != nullptr;
  int i = 0;
  while (i < num_chunks) {
    LaunchArgs<T, S> args;
    args.num = 0;
    int64_t total = 0;
    for (; i < num_chunks && args.num < kMaxTensors; ++i) {
      const RawChunk& c = chunks[i];
      if (c.size <= 0) continue;
      args.var[args.num] = static_cast<T*>(c.var);
      args.sum[args.num] = static_cast<S*>(c.sum);
      args.cnt[args.num] = static_cast<S*>(c.cnt);
      args.mom[args.num] = static_cast<T*>(c.mom);
      args.grad[args.num] = static_cast<const T*>(c.grad);
      total += c.size;
      args.end[args.num] = total;
      ++args.num;
    }
    if (args.num == 0) continue;
    const int64_t want = (total + kThreads - 1) / kThreads;
    const int blocks = int(std::min<int64_t>(want, max_blocks()));
    cudaError_t err;
    if (has_mom && has_cnt)
      err = launch_kernel(multi_tensor_kernel<T, S, true, true>, blocks, stream, args, k);
    else if (has_mom)
      err = launch_kernel(multi_tensor_kernel<T, S, true, false>, blocks, stream, args, k);
    else if (has_cnt)
      err = launch_kernel(multi_tensor_kernel<T, S, false, true>, blocks, stream, args, k);
    else
      err = launch_kernel(multi_tensor_kernel<T, S, false, false>, blocks, stream, args, k);
    if (err != cudaSuccess) return int(err);
  }
  return 0;
}

}  // namespace

int launch_update(DType dtype, const RawChunk* chunks, int num_chunks,
                  const DeviceScalars& scalars, void* stream) {
  if (num_chunks < 0 || (num_chunks > 0 && chunks == nullptr))
    return int(cudaErrorInvalidValue);
  bool any = false;
  for (int i = 0; i < num_chunks && !any; ++i) any = chunks[i].size > 0;
  if (!any) return 0;  // nothing to do: lr and step are never read
  if (scalars.lr == nullptr || scalars.step == nullptr ||
      (scalars.lr_type != ScalarType::kFloat32 &&
       scalars.lr_type != ScalarType::kFloat64))
    return int(cudaErrorInvalidValue);
  KernelScalars k;
  k.lr = scalars.lr;
  k.step = scalars.step;
  k.beta = scalars.beta;
  k.epsilon = scalars.epsilon;
  k.lr_is_double = scalars.lr_type == ScalarType::kFloat64;
  const auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::kFloat32:
      return launch_typed<float, float>(chunks, num_chunks, k, s);
    case DType::kFloat64:
      return launch_typed<double, double>(chunks, num_chunks, k, s);
    case DType::kFloat16:
      return launch_typed<__half, float>(chunks, num_chunks, k, s);
    case DType::kBFloat16:
      return launch_typed<__nv_bfloat16, float>(chunks, num_chunks, k, s);
  }
  return int(cudaErrorInvalidValue);
}

int copy_async(void* dst, const void* src, int64_t bytes, void* stream) {
  if (bytes <= 0) return 0;
  return int(cudaMemcpyAsync(dst, src, size_t(bytes), cudaMemcpyDeviceToDevice,
                             static_cast<cudaStream_t>(stream)));
}

const char* error_string(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}

void set_max_blocks_for_testing(int max_blocks) {
  max_blocks_override.store(max_blocks > 0 ? max_blocks : 0,
                            std::memory_order_relaxed);
}

}  // namespace cuda
}  // namespace expectigrad
