// GPU kernels for ExpectigradApply. Compiled only when nvcc is available, into
// a separate library (_expectigrad_ops_cuda.so) so that the CPU library never
// depends on CUDA. The CUDA code itself is in csrc/cuda/expectigrad_kernel.cu;
// this file only resolves TensorFlow's stream and registers the kernel.
#if GOOGLE_CUDA
#define EIGEN_USE_GPU

#include "tensorflow/core/framework/op_kernel.h"

#include "cuda/expectigrad_cuda.h"
#include "expectigrad_kernel.h"

namespace tensorflow {
namespace expectigrad_tf {

using GPUDevice = Eigen::GpuDevice;

template <typename T>
struct CudaDType;
template <>
struct CudaDType<float> {
  static constexpr auto value = expectigrad::cuda::DType::kFloat32;
};
template <>
struct CudaDType<double> {
  static constexpr auto value = expectigrad::cuda::DType::kFloat64;
};
template <>
struct CudaDType<Eigen::half> {
  static constexpr auto value = expectigrad::cuda::DType::kFloat16;
};
template <>
struct CudaDType<bfloat16> {
  static constexpr auto value = expectigrad::cuda::DType::kBFloat16;
};

static absl::Status CudaStatus(int code, const char* what) {
  if (code == 0) return absl::OkStatus();
  return errors::Internal("ExpectigradApply (GPU): ", what, " failed: ",
                          expectigrad::cuda::error_string(code));
}

template <typename T, typename S>
struct DeviceFunctor<GPUDevice, T, S> {
  absl::Status Apply(OpKernelContext* ctx,
                     const std::vector<expectigrad::TensorChunk<T, S>>& chunks,
                     double lr, double beta, double epsilon, int64_t step) {
    std::vector<expectigrad::cuda::RawChunk> raw(chunks.size());
    for (size_t i = 0; i < chunks.size(); ++i) {
      raw[i] = {chunks[i].var, chunks[i].sum, chunks[i].cnt, chunks[i].mom,
                chunks[i].grad, chunks[i].size};
    }
    void* stream = ctx->eigen_device<GPUDevice>().stream();
    return CudaStatus(
        expectigrad::cuda::launch_update(CudaDType<T>::value, raw.data(),
                                         int(raw.size()), lr, beta, epsilon,
                                         step, stream),
        "kernel launch");
  }

  absl::Status Copy(OpKernelContext* ctx, const Tensor& src, Tensor* dst) {
    void* stream = ctx->eigen_device<GPUDevice>().stream();
    return CudaStatus(expectigrad::cuda::copy_async(dst->data(), src.data(),
                                                    src.TotalBytes(), stream),
                      "copy-on-write");
  }
};

// Scalars are read on the host; tensors stay on the device.
#define REGISTER_GPU(T, TS)                                       \
  REGISTER_KERNEL_BUILDER(Name("ExpectigradApply")                \
                              .Device(DEVICE_GPU)                 \
                              .HostMemory("lr")                   \
                              .HostMemory("beta")                 \
                              .HostMemory("epsilon")              \
                              .HostMemory("step")                 \
                              .TypeConstraint<T>("T")             \
                              .TypeConstraint<TS>("Tscalar"),     \
                          ExpectigradApplyOp<GPUDevice, T, TS>);

#define REGISTER_GPU_ALL(T) REGISTER_GPU(T, float) REGISTER_GPU(T, double)
REGISTER_GPU_ALL(Eigen::half)
REGISTER_GPU_ALL(bfloat16)
REGISTER_GPU_ALL(float)
REGISTER_GPU_ALL(double)
#undef REGISTER_GPU_ALL
#undef REGISTER_GPU

}  // namespace expectigrad_tf
}  // namespace tensorflow

#endif  // GOOGLE_CUDA
