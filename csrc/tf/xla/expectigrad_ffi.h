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

#include "expectigrad_update.h"

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
  ffi::DataType dtype;     // of var/grad
  ffi::DataType lr_dtype;  // F32 or F64
  const void* lr;          // host memory on CPU, device memory on GPU
  const void* step;        // same memory space as lr
  bool step_s32;           // int32 step (JAX without x64), else int64
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
// Operands: var[n], state[n], grad[n], lr, step; results: var[n], state[n].
// state[i] holds rows = 1 + sparse_counter + momentum rows of var[i]'s size.
inline ffi::Error Decode(ffi::RemainingArgs args, ffi::RemainingRets rets,
                         int64_t n, int64_t sparse_counter, int64_t momentum,
                         DecodedCall* call) {
  const int64_t n_state = 2 * n;
  if (n < 1 || (sparse_counter != 0 && sparse_counter != 1) ||
      (momentum != 0 && momentum != 1) ||
      static_cast<int64_t>(args.size()) != n_state + n + 2 ||
      static_cast<int64_t>(rets.size()) != n_state)
    return ffi::Error::InvalidArgument(
        "expectigrad_apply: malformed custom call (operand/result counts do "
        "not match num_tensors, or sparse_counter/momentum not 0/1)");
  const int64_t rows = expectigrad::state_rows(sparse_counter, momentum);
  std::vector<void*> state(n_state);
  std::vector<int64_t> counts(n_state);
  std::vector<ffi::DataType> types(n_state);
  for (int64_t k = 0; k < n_state; ++k) {
    auto arg = args.get<ffi::AnyBuffer>(k);
    auto ret = rets.get<ffi::AnyBuffer>(k);
    if (!arg.has_value() || !ret.has_value())
      return ffi::Error::InvalidArgument("expectigrad_apply: bad buffer");
    state[k] = (*ret)->untyped_data();
    counts[k] = static_cast<int64_t>(arg->element_count());
    types[k] = arg->element_type();
    if (arg->untyped_data() != state[k])
      call->copies.push_back({arg->untyped_data(), state[k], arg->size_bytes()});
  }
  auto var0 = args.get<ffi::AnyBuffer>(0);
  call->dtype = var0->element_type();
  // The state is f64 for f64 variables, otherwise f32.
  const ffi::DataType state_type =
      call->dtype == ffi::DataType::F64 ? ffi::DataType::F64 : ffi::DataType::F32;
  const int64_t state_bytes = state_type == ffi::DataType::F64 ? 8 : 4;
  call->tensors.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    auto grad = args.get<ffi::AnyBuffer>(n_state + i);
    if (!grad.has_value())
      return ffi::Error::InvalidArgument("expectigrad_apply: bad gradient");
    const int64_t size = static_cast<int64_t>(grad->element_count());
    if (counts[i] != size || counts[n + i] != rows * size)
      return ffi::Error::InvalidArgument(
          "expectigrad_apply: malformed custom call (var/state/grad sizes of "
          "tensor " + std::to_string(i) + " do not match)");
    // The row offsets below assume these types: check them, not just var[0]'s.
    if (types[i] != call->dtype || grad->element_type() != call->dtype ||
        types[n + i] != state_type)
      return ffi::Error::InvalidArgument(
          "expectigrad_apply: malformed custom call (var/state/grad dtypes of "
          "tensor " + std::to_string(i) + " do not match var[0]'s dtype and its "
          "state dtype)");
    RawTensor& t = call->tensors[i];
    char *sum, *cnt, *mom;  // byte pointers into the packed state
    expectigrad::split_state(static_cast<char*>(state[n + i]), size * state_bytes,
                             sparse_counter != 0, momentum != 0, &sum, &cnt, &mom);
    t.var = state[i];
    t.sum = sum;
    t.cnt = cnt;
    t.mom = mom;
    t.grad = grad->untyped_data();
    t.size = size;
  }
  auto lr = args.get<ffi::AnyBuffer>(n_state + n);
  auto step = args.get<ffi::AnyBuffer>(n_state + n + 1);
  if (!lr.has_value() || !step.has_value() ||
      (lr->element_type() != ffi::DataType::F32 &&
       lr->element_type() != ffi::DataType::F64) ||
      (step->element_type() != ffi::DataType::S64 &&
       step->element_type() != ffi::DataType::S32))
    return ffi::Error::InvalidArgument(
        "expectigrad_apply: lr must be f32/f64 and step s64 or s32");
  call->step_s32 = step->element_type() == ffi::DataType::S32;
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
      .Attr<int64_t>("sparse_counter")          \
      .Attr<int64_t>("momentum")                \
      .Attr<int64_t>("beta_bits")               \
      .Attr<int64_t>("epsilon_bits")

#endif  // EXPECTIGRAD_TF_FFI_H_
