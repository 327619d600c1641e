// What the XLA custom-call handlers (CPU and CUDA) share: decoding the
// `expectigrad_apply` call described in expectigrad_xla_kernel.h into raw
// tensor pointers, and the attribute binding. Light: only XLA's FFI API
// header, no TensorFlow.
#ifndef EXPECTIGRAD_TF_FFI_H_
#define EXPECTIGRAD_TF_FFI_H_

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace expectigrad_tf_ffi {

namespace ffi = xla::ffi;

inline double BitsToDouble(int64_t bits) {
  double v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

// One tensor of the call: untyped pointers into the (aliased) result buffers.
struct RawTensor {
  void* var;
  void* sum;
  void* cnt;  // null without the sparse counter
  void* mom;  // null without momentum
  const void* grad;
  int64_t size;
};

struct DecodedCall {
  ffi::DataType dtype;     // of var/momentum/grad
  ffi::DataType lr_dtype;  // F32 or F64
  const void* lr;          // host memory on CPU, device memory on GPU
  const void* step;        // int64, same memory space as lr
  std::vector<RawTensor> tensors;
  // (src, dst, bytes) copies needed when XLA did not alias a result to its
  // operand; empty in the normal, in-place case.
  struct Copy {
    const void* src;
    void* dst;
    size_t bytes;
  };
  std::vector<Copy> copies;
};

// Checks the call's structure and collects its buffers. Nothing is written.
inline ffi::Error Decode(ffi::RemainingArgs args, ffi::RemainingRets rets,
                         int64_t n, int64_t n_count, int64_t n_mom,
                         DecodedCall* call) {
  const int64_t n_state = 2 * n + n_count + n_mom;
  if (n < 1 || (n_count != 0 && n_count != n) || (n_mom != 0 && n_mom != n) ||
      static_cast<int64_t>(args.size()) != n_state + n + 2 ||
      static_cast<int64_t>(rets.size()) != n_state)
    return ffi::Error::InvalidArgument(
        "expectigrad_apply: malformed custom call (operand/result counts do "
        "not match num_tensors/num_count/num_momentum)");
  std::vector<void*> state(n_state);
  for (int64_t k = 0; k < n_state; ++k) {
    auto arg = args.get<ffi::AnyBuffer>(k);
    auto ret = rets.get<ffi::AnyBuffer>(k);
    if (!arg.has_value() || !ret.has_value())
      return ffi::Error::InvalidArgument("expectigrad_apply: bad buffer");
    state[k] = (*ret)->untyped_data();
    if (arg->untyped_data() != state[k])
      call->copies.push_back({arg->untyped_data(), state[k], arg->size_bytes()});
  }
  auto var0 = args.get<ffi::AnyBuffer>(0);
  call->dtype = var0->element_type();
  call->tensors.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    auto grad = args.get<ffi::AnyBuffer>(n_state + i);
    if (!grad.has_value())
      return ffi::Error::InvalidArgument("expectigrad_apply: bad gradient");
    RawTensor& t = call->tensors[i];
    t.var = state[i];
    t.sum = state[n + i];
    t.cnt = n_count ? state[2 * n + i] : nullptr;
    t.mom = n_mom ? state[2 * n + n_count + i] : nullptr;
    t.grad = grad->untyped_data();
    t.size = static_cast<int64_t>(grad->element_count());
  }
  auto lr = args.get<ffi::AnyBuffer>(n_state + n);
  auto step = args.get<ffi::AnyBuffer>(n_state + n + 1);
  if (!lr.has_value() || !step.has_value() ||
      (lr->element_type() != ffi::DataType::F32 &&
       lr->element_type() != ffi::DataType::F64) ||
      step->element_type() != ffi::DataType::S64)
    return ffi::Error::InvalidArgument(
        "expectigrad_apply: lr must be f32/f64 and step s64");
  call->lr_dtype = lr->element_type();
  call->lr = lr->untyped_data();
  call->step = step->untyped_data();
  return ffi::Error::Success();
}

}  // namespace expectigrad_tf_ffi

// The binding shared by both handlers, after the platform context:
// remaining args/rets, then the attributes written by the lowering.
#define EXPECTIGRAD_FFI_ATTRS(binding)          \
  binding.RemainingArgs()                       \
      .RemainingRets()                          \
      .Attr<int64_t>("num_tensors")             \
      .Attr<int64_t>("num_count")               \
      .Attr<int64_t>("num_momentum")            \
      .Attr<int64_t>("beta_bits")               \
      .Attr<int64_t>("epsilon_bits")

#endif  // EXPECTIGRAD_TF_FFI_H_
