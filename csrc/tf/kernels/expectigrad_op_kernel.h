// The ExpectigradApply OpKernel (outside XLA), templated on the device.
// Device-specific work lives in DeviceFunctor<Device, T, S>, specialised in
// expectigrad_op_cpu.cc and expectigrad_op_gpu.cc:
//   - CheckStepScalars: the CPU reads lr/step on the host and validates them;
//     the GPU keeps them in device memory (no host sync) and the CUDA kernel
//     leaves everything unchanged when they are invalid;
//   - Apply: the update of every chunk;
//   - Copy: a buffer copy for copy-on-write.
//
// Compute() runs in named steps. Every check happens before the first write,
// so a failing step changes nothing. Variables are updated in place through
// their resource handles, as TF's ResourceApplyAdam does: locked exclusively in
// address order (two ops can never deadlock), and a buffer that a reader still
// holds (refcount > 1) or that is in copy-on-read mode is copied first.
#ifndef EXPECTIGRAD_TF_OP_KERNEL_H_
#define EXPECTIGRAD_TF_OP_KERNEL_H_

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/framework/types.h"

#include "expectigrad_checks.h"
#include "expectigrad_update.h"

namespace tensorflow {
namespace expectigrad_tf {

// State (sum, count, momentum) type for a variable type: float32 for half, bfloat16
// and float32, float64 for float64.
template <typename T>
struct StateType {
  using type = float;
};
template <>
struct StateType<double> {
  using type = double;
};

// Host-side constants of one step (lr and step may live on the device).
struct HostConstants {
  double beta = 0;
  double epsilon = 0;
};

template <typename Device, typename T, typename S>
struct DeviceFunctor {
  absl::Status CheckStepScalars(OpKernelContext* ctx, const Tensor& lr,
                                const Tensor& step);
  absl::Status Apply(OpKernelContext* ctx,
                     const std::vector<expectigrad::TensorChunk<T, S>>& chunks,
                     const Tensor& lr, const Tensor& step,
                     const HostConstants& constants);
  absl::Status Copy(OpKernelContext* ctx, const Tensor& src, Tensor* dst);
};

// Input layout of the op: var[n], state[n], grad[n], lr, beta, epsilon, step.
// state[i] has shape [rows] + var[i]'s shape: sum, count (sparse_counter),
// momentum (momentum), one row each.
struct InputLayout {
  int n;
  bool sparse_counter, momentum;
  int rows() const { return expectigrad::state_rows(sparse_counter, momentum); }
  int state(int i) const { return n + i; }
  int grad(int i) const { return 2 * n + i; }
  int lr() const { return 3 * n; }
  int beta() const { return lr() + 1; }
  int epsilon() const { return lr() + 2; }
  int step() const { return lr() + 3; }
};

// The resource variables of one tensor of the call.
struct TensorVars {
  core::RefCountPtr<Var> var, state;
};

template <typename Device, typename T, typename Tscalar>
class ExpectigradApplyOp : public OpKernel {
 public:
  using S = typename StateType<T>::type;

  explicit ExpectigradApplyOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_tensors", &in_.n));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("sparse_counter", &in_.sparse_counter));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("momentum", &in_.momentum));
  }

  void Compute(OpKernelContext* ctx) override {
    DeviceFunctor<Device, T, S> functor;
    HostConstants constants;
    OP_REQUIRES_OK(ctx, ReadScalars(ctx, &functor, &constants));
    std::vector<TensorVars> tensors;
    OP_REQUIRES_OK(ctx, LookUpVariables(ctx, &tensors));
    std::vector<Var*> all = Flatten(tensors);
    std::vector<mutex_lock> locks;
    OP_REQUIRES_OK(ctx, LockInAddressOrder(all, &locks));
    OP_REQUIRES_OK(ctx, Validate(ctx, tensors));
    OP_REQUIRES_OK(ctx, MakeBuffersExclusive(ctx, all, &functor));
    const auto chunks = BuildChunks(ctx, tensors);
    if (chunks.empty()) return;
    OP_REQUIRES_OK(ctx, functor.Apply(ctx, chunks, ctx->input(in_.lr()),
                                      ctx->input(in_.step()), constants));
  }

 private:
  // Step 1: scalar shapes, the host constants (beta, epsilon) and, where the
  // device keeps them on the host, lr and step.
  absl::Status ReadScalars(OpKernelContext* ctx,
                           DeviceFunctor<Device, T, S>* functor,
                           HostConstants* constants) const {
    const char* names[] = {"lr", "beta", "epsilon", "step"};
    const int inputs[] = {in_.lr(), in_.beta(), in_.epsilon(), in_.step()};
    for (int k = 0; k < 4; ++k) {
      const TensorShape& shape = ctx->input(inputs[k]).shape();
      if (!TensorShapeUtils::IsScalar(shape))
        return errors::InvalidArgument("ExpectigradApply: ", names[k],
                                       " must be a scalar, got shape ",
                                       shape.DebugString());
    }
    constants->beta =
        static_cast<double>(ctx->input(in_.beta()).scalar<Tscalar>()());
    constants->epsilon =
        static_cast<double>(ctx->input(in_.epsilon()).scalar<Tscalar>()());
    const std::string bad =
        expectigrad::check_beta_epsilon(constants->beta, constants->epsilon);
    if (!bad.empty()) return errors::InvalidArgument(bad);
    // Without momentum there is no bias correction: beta is unused.
    if (!in_.momentum) constants->beta = 0.0;
    return functor->CheckStepScalars(ctx, ctx->input(in_.lr()),
                                     ctx->input(in_.step()));
  }

  // Step 2: one {var, state} per tensor.
  absl::Status LookUpVariables(OpKernelContext* ctx,
                               std::vector<TensorVars>* tensors) const {
    tensors->resize(in_.n);
    auto lookup = [ctx](int input, const char* what, int i,
                        core::RefCountPtr<Var>* out) -> absl::Status {
      absl::Status st = LookupResource(ctx, HandleFromInput(ctx, input), out);
      if (!st.ok())
        return errors::InvalidArgument("ExpectigradApply: ", what, "[", i,
                                       "] is not a usable variable: ",
                                       st.message());
      return absl::OkStatus();
    };
    for (int i = 0; i < in_.n; ++i) {
      TensorVars& t = (*tensors)[i];
      TF_RETURN_IF_ERROR(lookup(i, "var", i, &t.var));
      TF_RETURN_IF_ERROR(lookup(in_.state(i), "state", i, &t.state));
    }
    return absl::OkStatus();
  }

  static std::vector<Var*> Flatten(const std::vector<TensorVars>& tensors) {
    std::vector<Var*> all;
    all.reserve(2 * tensors.size());
    for (const TensorVars& t : tensors) {
      all.push_back(t.var.get());
      all.push_back(t.state.get());
    }
    return all;
  }

  // Step 3: refuse a variable passed twice (it would alias state), then lock
  // every variable exclusively in address order, as TF's training ops do.
  static absl::Status LockInAddressOrder(const std::vector<Var*>& all,
                                         std::vector<mutex_lock>* locks) {
    std::vector<mutex*> mutexes;
    mutexes.reserve(all.size());
    for (Var* v : all) mutexes.push_back(v->mu());
    std::sort(mutexes.begin(), mutexes.end());
    if (std::adjacent_find(mutexes.begin(), mutexes.end()) != mutexes.end())
      return errors::InvalidArgument(
          "ExpectigradApply: the same variable is passed more than once (var "
          "and state must all be distinct variables)");
    locks->reserve(mutexes.size());
    for (mutex* mu : mutexes) locks->emplace_back(*mu);
    return absl::OkStatus();
  }

  // Step 4: every variable initialised and of the expected dtype; state
  // shaped [rows] + var's shape; every gradient shaped like its var.
  absl::Status Validate(OpKernelContext* ctx,
                        const std::vector<TensorVars>& tensors) const {
    for (int i = 0; i < in_.n; ++i) {
      const TensorVars& t = tensors[i];
      struct Entry {
        const char* what;
        Var* v;
        DataType dtype;
      };
      const Entry entries[] = {{"var", t.var.get(), DataTypeToEnum<T>::value},
                               {"state", t.state.get(), DataTypeToEnum<S>::value}};
      for (const Entry& e : entries) {
        if (!e.v->is_initialized)
          return errors::FailedPrecondition("ExpectigradApply: ", e.what, "[",
                                            i, "] is not initialized");
        const Tensor& value = *e.v->tensor();
        if (value.dtype() != e.dtype)
          return errors::InvalidArgument(
              "ExpectigradApply: ", e.what, "[", i, "] has dtype ",
              DataTypeString(value.dtype()), ", expected ",
              DataTypeString(e.dtype));
      }
      const TensorShape& shape = t.var->tensor()->shape();
      TensorShape want = shape;
      want.InsertDim(0, in_.rows());
      const TensorShape& sshape = t.state->tensor()->shape();
      if (sshape != want)
        return errors::InvalidArgument(
            "ExpectigradApply: state[", i, "] has shape ", sshape.DebugString(),
            " but must be ", want.DebugString(), " (", in_.rows(),
            " rows: sum, count if sparse_counter, momentum if momentum; then "
            "var[", i, "]'s shape ", shape.DebugString(), ")");
      const TensorShape& gshape = ctx->input(in_.grad(i)).shape();
      if (gshape != shape)
        return errors::InvalidArgument(
            "ExpectigradApply: grad[", i, "] has shape ", gshape.DebugString(),
            " but var[", i, "] has shape ", shape.DebugString());
    }
    return absl::OkStatus();
  }

  // Step 5: copy-on-write, so a buffer a reader still holds is never
  // modified. Values are unchanged.
  static absl::Status MakeBuffersExclusive(OpKernelContext* ctx,
                                           const std::vector<Var*>& all,
                                           DeviceFunctor<Device, T, S>* functor) {
    for (Var* v : all) {
      Tensor* t = v->tensor();
      if (!v->copy_on_read_mode.load() && t->RefCountIsOne()) continue;
      Tensor tmp;
      AllocatorAttributes attr;
      attr.set_gpu_compatible(true);
      attr.set_nic_compatible(true);
      TF_RETURN_IF_ERROR(ctx->allocate_temp(t->dtype(), t->shape(), &tmp, attr));
      TF_RETURN_IF_ERROR(functor->Copy(ctx, *t, &tmp));
      *t = tmp;
    }
    return absl::OkStatus();
  }

  // Step 6: raw pointers for the kernels; empty tensors are skipped.
  std::vector<expectigrad::TensorChunk<T, S>> BuildChunks(
      OpKernelContext* ctx, const std::vector<TensorVars>& tensors) const {
    std::vector<expectigrad::TensorChunk<T, S>> chunks;
    chunks.reserve(in_.n);
    for (int i = 0; i < in_.n; ++i) {
      const TensorVars& t = tensors[i];
      const int64_t size = t.var->tensor()->NumElements();
      if (size == 0) continue;
      expectigrad::TensorChunk<T, S> c;
      c.var = t.var->tensor()->flat<T>().data();
      expectigrad::split_state(t.state->tensor()->flat<S>().data(), size,
                               in_.sparse_counter, in_.momentum, &c.sum, &c.cnt,
                               &c.mom);
      c.grad = ctx->input(in_.grad(i)).flat<T>().data();
      c.size = size;
      chunks.push_back(c);
    }
    return chunks;
  }

  InputLayout in_{0, false, false};
};

}  // namespace expectigrad_tf
}  // namespace tensorflow

#endif  // EXPECTIGRAD_TF_OP_KERNEL_H_
