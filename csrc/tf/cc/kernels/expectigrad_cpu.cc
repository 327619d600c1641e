// CPU kernels for ExpectigradApply: one pass over all tensors of the call,
// sharded over TensorFlow's intra-op thread pool.
#include <cstring>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/util/work_sharder.h"

#include "expectigrad_multi_tensor.h"
#include "expectigrad_kernel.h"

namespace tensorflow {
namespace expectigrad_tf {

using CPUDevice = Eigen::ThreadPoolDevice;

template <typename T, typename S>
struct DeviceFunctor<CPUDevice, T, S> {
  absl::Status Apply(OpKernelContext* ctx,
                     const std::vector<expectigrad::TensorChunk<T, S>>& chunks,
                     double lr, double beta, double epsilon, int64_t step) {
    const expectigrad::MultiTensorPlan<T, S> plan(chunks);
    const auto p =
        expectigrad::make_step_scalars<S>(lr, beta, epsilon, step);
    auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    Shard(workers->num_threads, workers->workers, plan.total(),
          expectigrad::kCostPerElement,
          [&plan, &p](int64_t begin, int64_t end) { plan.run(begin, end, p); });
    return absl::OkStatus();
  }

  absl::Status Copy(OpKernelContext*, const Tensor& src, Tensor* dst) {
    std::memcpy(dst->data(), src.data(), src.TotalBytes());
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
