// CUDA multi-tensor Expectigrad kernel. Pure CUDA: no TensorFlow headers, so
// the same object links into the TF op library and the pybind11 harness.
//
// Each launch takes up to kMaxTensors tensors as one flat index space and
// walks it with a grid-stride loop. A thread's indices only grow, so the
// tensor it is in is found by advancing a cursor, not by searching.
// Every element reads var, sum, [count], [momentum], grad once and writes
// var, sum, [count], [momentum] once.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>

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

template <typename T, typename S, bool kMomentum, bool kSparseCounter>
__global__ void __launch_bounds__(kThreads)
    multi_tensor_kernel(const LaunchArgs<T, S> args, StepScalars<S> p) {
  const int64_t total = args.end[args.num - 1];
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  int t = 0;
  int64_t start = 0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
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

int max_blocks() {
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

template <typename T, typename S>
int launch_typed(const RawChunk* chunks, int num_chunks,
                 const StepScalars<S>& p, cudaStream_t stream) {
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
    if (has_mom && has_cnt)
      multi_tensor_kernel<T, S, true, true><<<blocks, kThreads, 0, stream>>>(args, p);
    else if (has_mom)
      multi_tensor_kernel<T, S, true, false><<<blocks, kThreads, 0, stream>>>(args, p);
    else if (has_cnt)
      multi_tensor_kernel<T, S, false, true><<<blocks, kThreads, 0, stream>>>(args, p);
    else
      multi_tensor_kernel<T, S, false, false><<<blocks, kThreads, 0, stream>>>(args, p);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return int(err);
  }
  return 0;
}

}  // namespace

int launch_update(DType dtype, const RawChunk* chunks, int num_chunks,
                  double lr, double beta, double epsilon, int64_t step,
                  void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::kFloat32:
      return launch_typed<float, float>(
          chunks, num_chunks, make_step_scalars<float>(lr, beta, epsilon, step), s);
    case DType::kFloat64:
      return launch_typed<double, double>(
          chunks, num_chunks, make_step_scalars<double>(lr, beta, epsilon, step), s);
    case DType::kFloat16:
      return launch_typed<__half, float>(
          chunks, num_chunks, make_step_scalars<float>(lr, beta, epsilon, step), s);
    case DType::kBFloat16:
      return launch_typed<__nv_bfloat16, float>(
          chunks, num_chunks, make_step_scalars<float>(lr, beta, epsilon, step), s);
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

}  // namespace cuda
}  // namespace expectigrad
