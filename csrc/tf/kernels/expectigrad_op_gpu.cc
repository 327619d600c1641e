// GPU kernels for ExpectigradApply. Compiled only when nvcc is available, into
// a separate library (_expectigrad_ops_cuda.so) so that the CPU library never
// depends on CUDA. The CUDA code itself is in csrc/cuda/; this file only
// resolves TensorFlow's stream and registers the kernel.
//
// lr and step stay in device memory, where Keras keeps them (a device variable
// and iterations + 1 computed on the device): no device-to-host copy and no
// stream sync per step. The CUDA kernel computes the bias correction on the
// device and changes nothing when lr or step is invalid; the optimizer checks
// the learning rate before the op runs. beta and epsilon are graph constants
// and are read on the host. The launcher validates every chunk before its
// first launch, so a rejected call changes nothing; a launch failing after
// that (a CUDA runtime failure, fatal for TF's stream) is reported with how
// much was already queued.
#if GOOGLE_CUDA
#define EIGEN_USE_GPU

#include "tensorflow/core/framework/op_kernel.h"

#include "cuda/expectigrad_cuda.h"
#include "expectigrad_op_kernel.h"

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
  absl::Status CheckStepScalars(OpKernelContext*, const Tensor&, const Tensor&) {
    return absl::OkStatus();  // validated on the device, see above
  }

  absl::Status Apply(OpKernelContext* ctx,
                     const std::vector<expectigrad::TensorChunk<T, S>>& chunks,
                     const Tensor& lr, const Tensor& step,
                     const HostConstants& c) {
    std::vector<expectigrad::cuda::RawChunk> raw(chunks.size());
    for (size_t i = 0; i < chunks.size(); ++i) {
      raw[i] = {chunks[i].var, chunks[i].sum, chunks[i].cnt, chunks[i].mom,
                chunks[i].grad, chunks[i].size};
    }
    expectigrad::cuda::DeviceScalars scalars;
    scalars.lr = lr.data();
    scalars.lr_type = lr.dtype() == DT_DOUBLE
                          ? expectigrad::cuda::ScalarType::kFloat64
                          : expectigrad::cuda::ScalarType::kFloat32;
    scalars.step = static_cast<const int64_t*>(step.data());
    scalars.beta = c.beta;
    scalars.epsilon = c.epsilon;
    void* stream = ctx->eigen_device<GPUDevice>().stream();
    // The launcher validates every chunk before its first launch; a launch
    // that fails after that is a CUDA runtime failure (see launch_update).
    expectigrad::cuda::LaunchReport report;
    const int code = expectigrad::cuda::launch_update(
        CudaDType<T>::value, raw.data(), int(raw.size()), scalars, stream, &report);
    if (code == 0) return absl::OkStatus();
    // Chunks are the call's non-empty tensors, in order (BuildChunks).
    return errors::Internal("ExpectigradApply (GPU): ",
                            expectigrad::cuda::describe(report));
  }

  absl::Status Copy(OpKernelContext* ctx, const Tensor& src, Tensor* dst) {
    void* stream = ctx->eigen_device<GPUDevice>().stream();
    return CudaStatus(expectigrad::cuda::copy_async(dst->data(), src.data(),
                                                    src.TotalBytes(), stream),
                      "copy-on-write");
  }
};

// lr and step in device memory; the constants beta and epsilon on the host.
#define REGISTER_GPU(T, TS)                                       \
  REGISTER_KERNEL_BUILDER(Name("ExpectigradApply")                \
                              .Device(DEVICE_GPU)                 \
                              .HostMemory("beta")                 \
                              .HostMemory("epsilon")              \
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
