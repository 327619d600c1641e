// CPU kernels for ExpectigradApply: one pass over all tensors of the call,
// sharded over TensorFlow's intra-op thread pool.
#include <cstring>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/util/work_sharder.h"

#include "expectigrad_multi_tensor.h"
#include "expectigrad_op_kernel.h"

namespace tensorflow {
namespace expectigrad_tf {

using CPUDevice = Eigen::ThreadPoolDevice;

// Runs the multi-tensor host loop over `chunks` on TF's intra-op pool.
template <typename T, typename S>
void RunHostLoop(OpKernelContext* ctx,
                 const std::vector<expectigrad::TensorChunk<T, S>>& chunks,
                 const expectigrad::StepScalars<S>& p) {
  const expectigrad::MultiTensorPlan<T, S> plan(chunks);
  auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
  Shard(workers->num_threads, workers->workers, plan.total(),
        expectigrad::kCostPerElement,
        [&plan, &p](int64_t begin, int64_t end) { plan.run(begin, end, p); });
}

template <typename T, typename S>
struct DeviceFunctor<CPUDevice, T, S> {
  static double Lr(const Tensor& lr) {
    return lr.dtype() == DT_DOUBLE ? lr.scalar<double>()()
                                   : double(lr.scalar<float>()());
  }

  absl::Status CheckStepScalars(OpKernelContext*, const Tensor& lr,
                                const Tensor& step) {
    const std::string bad =
        expectigrad::check_lr_step(Lr(lr), step.scalar<int64_t>()());
    if (!bad.empty()) return errors::InvalidArgument(bad);
    return absl::OkStatus();
  }

  absl::Status Apply(OpKernelContext* ctx,
                     const std::vector<expectigrad::TensorChunk<T, S>>& chunks,
                     const Tensor& lr, const Tensor& step,
                     const HostConstants& c) {
    RunHostLoop<T, S>(ctx, chunks,
                      expectigrad::make_step_scalars<S>(
                          Lr(lr), c.beta, c.epsilon, step.scalar<int64_t>()()));
    return absl::OkStatus();
  }

  absl::Status Copy(OpKernelContext*, const Tensor& src, Tensor* dst) {
    // An empty tensor's data() may be null: memcpy needs valid pointers even
    // for 0 bytes.
    const size_t bytes = src.TotalBytes();
    if (bytes > 0) std::memcpy(dst->data(), src.data(), bytes);
    return absl::OkStatus();
  }
};

#define REGISTER_CPU(T, TS)                                       \
  REGISTER_KERNEL_BUILDER(Name("ExpectigradApply")                \
                              .Device(DEVICE_CPU)                 \
                              .TypeConstraint<T>("T")             \
                              .TypeConstraint<TS>("Tscalar"),     \
                          ExpectigradApplyOp<CPUDevice, T, TS>);

#define REGISTER_CPU_ALL(T) REGISTER_CPU(T, float) REGISTER_CPU(T, double)
REGISTER_CPU_ALL(Eigen::half)
REGISTER_CPU_ALL(bfloat16)
REGISTER_CPU_ALL(float)
REGISTER_CPU_ALL(double)
#undef REGISTER_CPU_ALL
#undef REGISTER_CPU

}  // namespace expectigrad_tf
}  // namespace tensorflow
