// The XLA:CPU handler of the `expectigrad_apply` custom call (platform
// "Host"): the same multi-tensor host loop as the TF CPU kernel, in place on
// the aliased buffers, split over XLA's intra-op thread pool.
//
// Work sharing cannot deadlock: the calling thread takes blocks from a shared
// counter too, and waits only for blocks that another thread has already
// started. A pool thread that starts late finds no block left and returns.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>

#ifndef EXPECTIGRAD_FFI_STANDALONE
#include "unsupported/Eigen/CXX11/Tensor"  // Eigen::half, Eigen::bfloat16
#define EXPECTIGRAD_FFI_16BIT 1
#endif

#include "expectigrad_checks.h"
#include "expectigrad_ffi.h"
#include "expectigrad_multi_tensor.h"

namespace expectigrad_tf_ffi {
namespace {

template <typename T, typename S>
struct HostWork {
  HostWork(std::vector<expectigrad::TensorChunk<T, S>> chunks,
           const expectigrad::StepScalars<S>& p)
      : plan(std::move(chunks)), scalars(p) {}
  expectigrad::MultiTensorPlan<T, S> plan;
  expectigrad::StepScalars<S> scalars;
  int64_t block = 0, num_blocks = 0;
  std::atomic<int64_t> next{0};
  std::mutex mu;
  std::condition_variable cv;
  int64_t done = 0;  // guarded by mu

  // Runs blocks until none is left; returns how many this thread ran.
  void RunBlocks() {
    int64_t ran = 0;
    for (int64_t b; (b = next.fetch_add(1)) < num_blocks; ++ran) {
      const int64_t begin = b * block;
      plan.run(begin, std::min(plan.total(), begin + block), scalars);
    }
    if (ran == 0) return;
    std::lock_guard<std::mutex> lock(mu);
    done += ran;
    if (done == num_blocks) cv.notify_all();
  }
};

template <typename T, typename S>
void RunOnPool(ffi::ThreadPool& pool, const DecodedCall& call, double lr,
               double beta, double epsilon, int64_t step) {
  std::vector<expectigrad::TensorChunk<T, S>> chunks;
  for (const RawTensor& t : call.tensors) {
    if (t.size == 0) continue;
    chunks.push_back({static_cast<T*>(t.var), static_cast<S*>(t.sum),
                      static_cast<S*>(t.cnt), static_cast<S*>(t.mom),
                      static_cast<const T*>(t.grad), t.size});
  }
  auto work = std::make_shared<HostWork<T, S>>(
      std::move(chunks),
      expectigrad::make_step_scalars<S>(lr, beta, epsilon, step));
  const int64_t total = work->plan.total();
  if (total == 0) return;
  // Blocks of at least 32K elements (a few hundred KB of traffic), a few per
  // thread, rounded to 64 elements so vector loops stay aligned.
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t min_block = 32768;
  const int64_t want = std::max<int64_t>(
      1, std::min<int64_t>(4 * threads, (total + min_block - 1) / min_block));
  work->block = ((total + want - 1) / want + 63) / 64 * 64;
  work->num_blocks = (total + work->block - 1) / work->block;
  for (int64_t k = 1; k < std::min(threads, work->num_blocks); ++k)
    pool.Schedule([work] { work->RunBlocks(); });
  work->RunBlocks();
  std::unique_lock<std::mutex> lock(work->mu);
  work->cv.wait(lock, [&] { return work->done == work->num_blocks; });
}

ffi::Error ApplyHost(ffi::ThreadPool pool, ffi::RemainingArgs args,
                     ffi::RemainingRets rets, int64_t n, int64_t sparse_counter,
                     int64_t momentum, int64_t beta_bits, int64_t epsilon_bits) {
  DecodedCall call;
  if (ffi::Error err = Decode(args, rets, n, sparse_counter, momentum, &call);
      err.failure())
    return err;
  // Every check before the first write: a failing step changes nothing.
  const double lr = call.lr_dtype == ffi::DataType::F64
                        ? *static_cast<const double*>(call.lr)
                        : double(*static_cast<const float*>(call.lr));
  const int64_t step = call.step_s32 ? *static_cast<const int32_t*>(call.step)
                                     : *static_cast<const int64_t*>(call.step);
  const double beta = BitsToDouble(beta_bits);
  const double epsilon = BitsToDouble(epsilon_bits);
  std::string bad = expectigrad::check_lr_step(lr, step);
  if (bad.empty()) bad = expectigrad::check_beta_epsilon(beta, epsilon);
#ifdef EXPECTIGRAD_FFI_STANDALONE
  // JAX donates the training state to the step: an error would lose it. A bad
  // learning rate (which the optimizer gates the rest of the step on) leaves
  // every buffer as it was instead. Anything else (step, beta, epsilon, which
  // the optimizer checks before the call) is still an error.
  if (!bad.empty() && expectigrad::check_lr_step(lr, 1).size() > 0) {
    for (const DecodedCall::Copy& c : call.copies)
      if (c.bytes > 0) std::memcpy(c.dst, c.src, c.bytes);
    return ffi::Error::Success();
  }
#endif
  if (!bad.empty()) return ffi::Error::InvalidArgument(bad);
  switch (call.dtype) {
    case ffi::DataType::F32:
    case ffi::DataType::F64:
#ifdef EXPECTIGRAD_FFI_16BIT
    case ffi::DataType::F16:
    case ffi::DataType::BF16:
#endif
      break;
    default:
#ifdef EXPECTIGRAD_FFI_16BIT
      return ffi::Error::InvalidArgument(
          "expectigrad_apply: var dtype must be f16, bf16, f32 or f64");
#else
      return ffi::Error::InvalidArgument(
          "expectigrad_apply: var dtype must be f32 or f64 (this standalone "
          "build has no 16-bit types)");
#endif
  }
  for (const DecodedCall::Copy& c : call.copies)
    if (c.bytes > 0) std::memcpy(c.dst, c.src, c.bytes);  // empty: may be null
  switch (call.dtype) {
    case ffi::DataType::F32:
      RunOnPool<float, float>(pool, call, lr, beta, epsilon, step);
      break;
#ifdef EXPECTIGRAD_FFI_16BIT
    case ffi::DataType::F64:
      RunOnPool<double, double>(pool, call, lr, beta, epsilon, step);
      break;
    case ffi::DataType::F16:
      RunOnPool<Eigen::half, float>(pool, call, lr, beta, epsilon, step);
      break;
    default:
      RunOnPool<Eigen::bfloat16, float>(pool, call, lr, beta, epsilon, step);
      break;
#else
    default:
      RunOnPool<double, double>(pool, call, lr, beta, epsilon, step);
      break;
#endif
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER(kExpectigradApplyHost, ApplyHost,
                       EXPECTIGRAD_FFI_ATTRS(
                           ffi::Ffi::Bind().Ctx<ffi::ThreadPool>()));

#ifndef EXPECTIGRAD_FFI_STANDALONE
XLA_FFI_REGISTER_HANDLER(XLA_FFI_GetApi(), "expectigrad_apply", "Host",
                         kExpectigradApplyHost);
#endif

}  // namespace expectigrad_tf_ffi

#ifdef EXPECTIGRAD_FFI_STANDALONE
extern "C" __attribute__((visibility("default"))) XLA_FFI_Error*
expectigrad_apply_host(XLA_FFI_CallFrame* call_frame) {
  return expectigrad_tf_ffi::kExpectigradApplyHost(call_frame);
}
#endif
