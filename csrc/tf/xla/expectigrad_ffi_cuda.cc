// The XLA:GPU handler of the `expectigrad_apply` custom call (platform
// "CUDA"): the same CUDA launcher as the TF GPU kernel, on XLA's stream, in
// place on the aliased buffers. lr and step are XLA device buffers: the kernel
// reads them on the device (no host sync, capturable in a CUDA graph) and
// changes nothing when they are invalid. Known gap: inside XLA on a GPU an
// invalid learning rate is therefore skipped without an error (outside XLA
// the optimizer checks it before the op; on XLA:CPU this handler's CPU twin
// rejects it).
#include "cuda/expectigrad_cuda.h"
#include "expectigrad_checks.h"
#include "expectigrad_ffi.h"

struct CUstream_st;  // cudaStream_t without the CUDA headers

namespace expectigrad_tf_ffi {
namespace {

namespace cuda = expectigrad::cuda;

ffi::Error ApplyCuda(CUstream_st* stream, ffi::RemainingArgs args,
                     ffi::RemainingRets rets, int64_t n, int64_t sparse_counter,
                     int64_t momentum, int64_t beta_bits, int64_t epsilon_bits) {
  DecodedCall call;
  if (ffi::Error err = Decode(args, rets, n, sparse_counter, momentum, &call);
      err.failure())
    return err;
  if (call.step_s32)  // the CUDA kernel reads an int64 step on the device
    return ffi::Error::InvalidArgument("expectigrad_apply (CUDA): step must be s64");
  cuda::DeviceScalars scalars;
  scalars.lr = call.lr;
  scalars.lr_type = call.lr_dtype == ffi::DataType::F64
                        ? cuda::ScalarType::kFloat64
                        : cuda::ScalarType::kFloat32;
  scalars.step = static_cast<const int64_t*>(call.step);
  scalars.beta = BitsToDouble(beta_bits);
  scalars.epsilon = BitsToDouble(epsilon_bits);
  const std::string bad =
      expectigrad::check_beta_epsilon(scalars.beta, scalars.epsilon);
  if (!bad.empty()) return ffi::Error::InvalidArgument(bad);
  cuda::DType dtype;
  switch (call.dtype) {
    case ffi::DataType::F32: dtype = cuda::DType::kFloat32; break;
    case ffi::DataType::F64: dtype = cuda::DType::kFloat64; break;
    case ffi::DataType::F16: dtype = cuda::DType::kFloat16; break;
    case ffi::DataType::BF16: dtype = cuda::DType::kBFloat16; break;
    default:
      return ffi::Error::InvalidArgument(
          "expectigrad_apply: var dtype must be f16, bf16, f32 or f64");
  }
  std::vector<cuda::RawChunk> raw;
  raw.reserve(call.tensors.size());
  for (const RawTensor& t : call.tensors)
    raw.push_back({t.var, t.sum, t.cnt, t.mom, t.grad, t.size});
  // Everything is validated before the first write (the copies below).
  cuda::LaunchReport report;
  if (cuda::validate_update(dtype, raw.data(), int(raw.size()), scalars, &report) != 0)
    return ffi::Error::Internal("expectigrad_apply: " + cuda::describe(report));
  for (const DecodedCall::Copy& c : call.copies) {
    const int code = cuda::copy_async(c.dst, c.src, int64_t(c.bytes), stream);
    if (code != 0)
      return ffi::Error::Internal(std::string("expectigrad_apply: copy failed: ") +
                                  cuda::error_string(code));
  }
  // At most 40 tensors per call (the lowering's kTensorsPerCall): one launch.
  if (cuda::launch_update(dtype, raw.data(), int(raw.size()), scalars, stream,
                          &report) != 0)
    return ffi::Error::Internal("expectigrad_apply: " + cuda::describe(report));
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER(kExpectigradApplyCuda, ApplyCuda,
                       EXPECTIGRAD_FFI_ATTRS(ffi::Ffi::Bind().Ctx<
                                             ffi::PlatformStream<CUstream_st*>>()));

XLA_FFI_REGISTER_HANDLER(XLA_FFI_GetApi(), "expectigrad_apply", "CUDA",
                         kExpectigradApplyCuda);

}  // namespace expectigrad_tf_ffi
