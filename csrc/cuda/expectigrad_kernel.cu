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
// The launcher validates every input and plans every launch before the first
// one (see launch_update in expectigrad_cuda.h for what remains when a launch
// fails after that), and reports each launch's own status (cudaLaunchKernel's
// return value, not a pending error of an earlier call).
//
// This file also compiles as plain C++ (g++ -x c++ with
// emulation/cuda_emulation.h force-included) for the CPU tests of its
// indexing, chunking and validation; kernels are therefore launched only
// through launch_kernel() below (cudaLaunchKernel, which the emulation
// provides), never with <<<>>> directly.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#ifndef EXPECTIGRAD_CUDA_EMULATION  // see emulation/cuda_emulation.h
#include <cuda_runtime.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../expectigrad_update.h"
#include "expectigrad_cuda.h"

namespace expectigrad {
namespace cuda {
namespace {

constexpr int kMaxTensors = 40;  // keeps the kernel argument under 4 KB
constexpr int kThreads = 256;
// Elements of one launch stay below this, so a thread's grid-stride index
// (i + stride, stride < 2^40) never overflows int64.
constexpr int64_t kMaxElementsPerLaunch = int64_t(1) << 62;

// The kernel argument: passed by value, so every byte is copied to the
// device. Always zero-filled before use (memset, padding included), so the
// unused tail (entries num..kMaxTensors-1) is deterministic.
template <typename T, typename S>
struct LaunchArgs {
  T* var[kMaxTensors];
  S* sum[kMaxTensors];
  S* cnt[kMaxTensors];
  S* mom[kMaxTensors];  // momentum is state: type S, like sum and count
  const T* grad[kMaxTensors];
  int64_t end[kMaxTensors];  // exclusive prefix end of each tensor
  int num;
};

// DeviceScalars as a kernel argument (zero-filled before use, as LaunchArgs).
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
    S m = kMomentum ? args.mom[t][j] : S(0);
    update_element<S, kMomentum, kSparseCounter>(
        static_cast<S>(args.grad[t][j]), x, s, n, m, p);
    args.var[t][j] = static_cast<T>(x);
    args.sum[t][j] = s;
    if (kSparseCounter) args.cnt[t][j] = n;
    if (kMomentum) args.mom[t][j] = m;
  }
}

std::atomic<int> max_blocks_override{0};

// Multiprocessor counts by device ordinal; 0: not known yet. Lock-free: two
// threads that race on a device both query it and store the same value.
// Ordinals from kCachedDevices on are queried at every call.
constexpr int kCachedDevices = 64;
constexpr int kFallbackMultiprocessors = 80;
std::atomic<int> sm_cache[kCachedDevices] = {};

// Multiprocessors of the current device, queried once per device. A failed
// query is not cached (the fallback only sizes the grid, never the result).
int multiprocessors() {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    cudaGetLastError();  // our own failed query
    return kFallbackMultiprocessors;
  }
  const bool cacheable = device >= 0 && device < kCachedDevices;
  if (cacheable) {
    const int known = sm_cache[device].load(std::memory_order_relaxed);
    if (known > 0) return known;
  }
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) !=
          cudaSuccess ||
      sms <= 0) {
    cudaGetLastError();
    return kFallbackMultiprocessors;
  }
  if (cacheable) sm_cache[device].store(sms, std::memory_order_relaxed);
  return sms;
}

// Blocks per launch at most: 8 resident blocks of 256 threads per SM. Always
// in [1, 2^31 - 1], a valid grid.x.
int max_blocks() {
  const int forced = max_blocks_override.load(std::memory_order_relaxed);
  if (forced > 0) return forced;
  const int sms = multiprocessors();
  return sms > (INT32_MAX / 8) ? INT32_MAX : sms * 8;
}

// The one place kernels are launched: cudaLaunchKernel, whose return value is
// this launch's own status (<<<>>> + cudaGetLastError() would also report an
// error left pending by any earlier runtime call on this thread, and report
// a launch that was queued as failed). The emulation provides
// cudaLaunchKernel for kernels taken by pointer.
template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), int blocks,
                          cudaStream_t stream, const Args&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args) &&
                    (std::is_same<typename std::decay<Params>::type, Args>::value && ...),
                "kernel arguments are passed by address: types must match exactly");
  void* params[] = {const_cast<void*>(static_cast<const void*>(&args))...};
  const cudaError_t err =
      cudaLaunchKernel(kernel, dim3(blocks), dim3(kThreads), params, 0, stream);
  // The error is returned: consume the copy the runtime keeps for
  // cudaGetLastError(), so a later caller's check does not see it as its own.
  if (err != cudaSuccess) cudaGetLastError();
  return err;
}

// One launch: up to kMaxTensors non-empty chunks from `begin`, in order
// (empty chunks are skipped). Used by validation and by the launch loop, so
// both see the same launches.
struct Group {
  int begin = 0, end = 0;  // chunks [begin, end)
  int count = 0;           // non-empty chunks in it
  int64_t total = 0;       // their elements
  bool overflow = false;   // total would reach kMaxElementsPerLaunch
};

Group next_group(const RawChunk* chunks, int num_chunks, int begin) {
  Group g;
  g.begin = begin;
  int i = begin;
  for (; i < num_chunks && g.count < kMaxTensors; ++i) {
    const int64_t size = chunks[i].size;
    if (size <= 0) continue;
    if (size >= kMaxElementsPerLaunch - g.total) g.overflow = true;
    else g.total += size;
    ++g.count;
  }
  g.end = i;
  return g;
}

int first_nonempty(const RawChunk* chunks, int num_chunks) {
  for (int i = 0; i < num_chunks; ++i)
    if (chunks[i].size > 0) return i;
  return -1;
}

int reject(LaunchReport* report, int chunk, const char* reason) {
  if (report != nullptr) {
    *report = LaunchReport();
    report->stage = LaunchReport::kInvalid;
    report->code = int(cudaErrorInvalidValue);
    report->chunk = chunk;
    report->reason = reason;
  }
  return int(cudaErrorInvalidValue);
}

bool aligned(const void* p, size_t alignment) {
  return reinterpret_cast<uintptr_t>(p) % alignment == 0;
}

// Every check of launch_update, before anything is launched. On success
// *launches is the number of kernel launches needed (0: nothing to do).
int validate(DType dtype, const RawChunk* chunks, int num_chunks,
             const DeviceScalars& scalars, LaunchReport* report, int* launches) {
  *launches = 0;
  if (num_chunks < 0) return reject(report, -1, "num_chunks is negative");
  if (num_chunks > 0 && chunks == nullptr) return reject(report, -1, "chunks is null");
  // Element sizes: t_align of var/grad (the storage dtype), s_align of
  // sum/count/momentum (the state dtype).
  size_t t_align = 0, s_align = 0;
  switch (dtype) {
    case DType::kFloat32: t_align = s_align = 4; break;
    case DType::kFloat64: t_align = s_align = 8; break;
    case DType::kFloat16:
    case DType::kBFloat16: t_align = 2; s_align = 4; break;
    default: return reject(report, -1, "unknown dtype");
  }
  const int first = first_nonempty(chunks, num_chunks);
  for (int i = 0; i < num_chunks; ++i) {
    const RawChunk& c = chunks[i];
    if (c.size < 0) return reject(report, i, "negative size");
    if (c.size == 0) continue;  // skipped: its pointers are never read
    if (c.var == nullptr) return reject(report, i, "var is null");
    if (c.sum == nullptr) return reject(report, i, "sum is null");
    if (c.grad == nullptr) return reject(report, i, "grad is null");
    if (!aligned(c.var, t_align) || !aligned(c.grad, t_align) || !aligned(c.sum, s_align) ||
        (c.cnt != nullptr && !aligned(c.cnt, s_align)) ||
        (c.mom != nullptr && !aligned(c.mom, s_align)))
      return reject(report, i, "a pointer is not aligned to its element type");
    // The kernel variant (with/without count and momentum) is chosen once per
    // call from the first non-empty chunk: every other must agree.
    if ((c.cnt == nullptr) != (chunks[first].cnt == nullptr))
      return reject(report, i,
                    c.cnt == nullptr
                        ? "count is null but the first non-empty chunk has a count "
                          "(count must be set in every non-empty chunk or in none)"
                        : "count is set but the first non-empty chunk has none "
                          "(count must be set in every non-empty chunk or in none)");
    if ((c.mom == nullptr) != (chunks[first].mom == nullptr))
      return reject(report, i,
                    c.mom == nullptr
                        ? "momentum is null but the first non-empty chunk has momentum "
                          "(momentum must be set in every non-empty chunk or in none)"
                        : "momentum is set but the first non-empty chunk has none "
                          "(momentum must be set in every non-empty chunk or in none)");
  }
  int planned = 0;
  for (int b = 0; b < num_chunks;) {
    const Group g = next_group(chunks, num_chunks, b);
    if (g.overflow)
      return reject(report, g.begin, "the elements of one launch (40 chunks) reach 2^62");
    if (g.count > 0) ++planned;
    b = g.end;
  }
  if (planned > 0) {  // without work, lr and step are never read
    if (scalars.lr == nullptr || scalars.step == nullptr)
      return reject(report, -1, "lr or step is a null pointer");
    if (scalars.lr_type == ScalarType::kFloat32) {
      if (!aligned(scalars.lr, 4)) return reject(report, -1, "lr is not aligned");
    } else if (scalars.lr_type == ScalarType::kFloat64) {
      if (!aligned(scalars.lr, 8)) return reject(report, -1, "lr is not aligned");
    } else {
      return reject(report, -1, "lr_type is neither float32 nor float64");
    }
    if (!aligned(scalars.step, 8)) return reject(report, -1, "step is not aligned");
    if (!(scalars.beta >= 0 && scalars.beta < 1))
      return reject(report, -1, "beta is not in [0, 1)");
    if (!(scalars.epsilon > 0 && scalars.epsilon <= 1.7976931348623157e308))
      return reject(report, -1, "epsilon is not finite and > 0");
  }
  *launches = planned;
  if (report != nullptr) {
    *report = LaunchReport();
    report->launches_planned = planned;
  }
  return 0;
}

// Builds and queues every launch of a validated call. Nothing here can fail
// but the launches themselves (see launch_update).
template <typename T, typename S>
int launch_typed(const RawChunk* chunks, int num_chunks, const KernelScalars& k,
                 cudaStream_t stream, LaunchReport* report) {
  const int first = first_nonempty(chunks, num_chunks);
  const bool has_mom = chunks[first].mom != nullptr;
  const bool has_cnt = chunks[first].cnt != nullptr;
  const int limit = max_blocks();  // >= 1
  int queued = 0;
  for (int b = 0; b < num_chunks;) {
    const Group g = next_group(chunks, num_chunks, b);
    b = g.end;
    if (g.count == 0) continue;
    LaunchArgs<T, S> args;
    std::memset(&args, 0, sizeof args);  // deterministic bytes, unused tail included
    int64_t total = 0;
    for (int i = g.begin; i < g.end; ++i) {
      const RawChunk& c = chunks[i];
      if (c.size <= 0) continue;
      args.var[args.num] = static_cast<T*>(c.var);
      args.sum[args.num] = static_cast<S*>(c.sum);
      args.cnt[args.num] = static_cast<S*>(c.cnt);
      args.mom[args.num] = static_cast<S*>(c.mom);
      args.grad[args.num] = static_cast<const T*>(c.grad);
      total += c.size;
      args.end[args.num] = total;
      ++args.num;
    }
    const int blocks = int(std::min<int64_t>((total + kThreads - 1) / kThreads, limit));
    cudaError_t err;
    if (has_mom && has_cnt)
      err = launch_kernel(multi_tensor_kernel<T, S, true, true>, blocks, stream, args, k);
    else if (has_mom)
      err = launch_kernel(multi_tensor_kernel<T, S, true, false>, blocks, stream, args, k);
    else if (has_cnt)
      err = launch_kernel(multi_tensor_kernel<T, S, false, true>, blocks, stream, args, k);
    else
      err = launch_kernel(multi_tensor_kernel<T, S, false, false>, blocks, stream, args, k);
    if (err != cudaSuccess) {
      if (report != nullptr) {
        report->stage = LaunchReport::kLaunch;
        report->code = int(err);
        report->launches_queued = queued;
        report->chunk = g.begin;
      }
      return int(err);
    }
    ++queued;
  }
  if (report != nullptr) report->launches_queued = queued;
  return 0;
}

}  // namespace

int validate_update(DType dtype, const RawChunk* chunks, int num_chunks,
                    const DeviceScalars& scalars, LaunchReport* report) {
  int launches = 0;
  return validate(dtype, chunks, num_chunks, scalars, report, &launches);
}

int launch_update(DType dtype, const RawChunk* chunks, int num_chunks,
                  const DeviceScalars& scalars, void* stream, LaunchReport* report) {
  int planned = 0;
  const int bad = validate(dtype, chunks, num_chunks, scalars, report, &planned);
  if (bad != 0 || planned == 0) return bad;
  KernelScalars k;
  std::memset(&k, 0, sizeof k);  // deterministic padding
  k.lr = scalars.lr;
  k.step = scalars.step;
  k.beta = scalars.beta;
  k.epsilon = scalars.epsilon;
  k.lr_is_double = scalars.lr_type == ScalarType::kFloat64;
  const auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::kFloat32:
      return launch_typed<float, float>(chunks, num_chunks, k, s, report);
    case DType::kFloat64:
      return launch_typed<double, double>(chunks, num_chunks, k, s, report);
    case DType::kFloat16:
      return launch_typed<__half, float>(chunks, num_chunks, k, s, report);
    case DType::kBFloat16:
      return launch_typed<__nv_bfloat16, float>(chunks, num_chunks, k, s, report);
  }
  return reject(report, -1, "unknown dtype");  // unreachable: validated
}

int copy_async(void* dst, const void* src, int64_t bytes, void* stream) {
  if (bytes <= 0) return 0;  // empty tensors may have null pointers: no call
  if (dst == nullptr || src == nullptr) return int(cudaErrorInvalidValue);
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
