// The ExpectigradApply OpKernel, templated on the device. Device-specific
// work (launching the update, copying a buffer for copy-on-write) lives in
// DeviceFunctor<Device, T, S>, specialised in expectigrad_cpu.cc and
// expectigrad_gpu.cc.
//
// Variables are updated in place through their resource handles, as TF's
// ResourceApplyAdam does: every variable of the call is locked (exclusive,
// in address order, so two ops can never deadlock), and a buffer that is
// shared with a reader (refcount > 1) or in copy-on-read mode is copied first.
#ifndef EXPECTIGRAD_TF_KERNEL_H_
#define EXPECTIGRAD_TF_KERNEL_H_

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/framework/types.h"

#include "expectigrad_update.h"

namespace tensorflow {
namespace expectigrad_tf {

// State (sum, count) type for a variable type: float32 for half, bfloat16
// and float32, float64 for float64.
template <typename T>
struct StateType {
  using type = float;
};
template <>
struct StateType<double> {
  using type = double;
};

template <typename Device, typename T, typename S>
struct DeviceFunctor {
  // Applies the step to every chunk.
  absl::Status Apply(OpKernelContext* ctx,
                     const std::vector<expectigrad::TensorChunk<T, S>>& chunks,
                     double lr, double beta, double epsilon, int64_t step);
  // dst <- src, same size and dtype, on the op's device/stream.
  absl::Status Copy(OpKernelContext* ctx, const Tensor& src, Tensor* dst);
};

template <typename Device, typename T, typename Tscalar>
class ExpectigradApplyOp : public OpKernel {
 public:
  using S = typename StateType<T>::type;

  explicit ExpectigradApplyOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_tensors", &n_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_count", &n_count_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_momentum", &n_mom_));
    OP_REQUIRES(ctx, n_count_ == 0 || n_count_ == n_,
                errors::InvalidArgument(
                    "ExpectigradApply: num_count must be 0 or num_tensors (",
                    n_, "), got ", n_count_));
    OP_REQUIRES(ctx, n_mom_ == 0 || n_mom_ == n_,
                errors::InvalidArgument(
                    "ExpectigradApply: num_momentum must be 0 or num_tensors (",
                    n_, "), got ", n_mom_));
  }

  void Compute(OpKernelContext* ctx) override {
    const int sum0 = n_, cnt0 = 2 * n_, mom0 = 2 * n_ + n_count_;
    const int grad0 = mom0 + n_mom_, scalars0 = grad0 + n_;

    // Scalars: shape and value checks before anything is touched.
    double scalars[3];
    const char* names[] = {"lr", "beta", "epsilon"};
    for (int k = 0; k < 3; ++k) {
      const Tensor& t = ctx->input(scalars0 + k);
      OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(t.shape()),
                  errors::InvalidArgument("ExpectigradApply: ", names[k],
                                          " must be a scalar, got shape ",
                                          t.shape().DebugString()));
      scalars[k] = static_cast<double>(t.scalar<Tscalar>()());
    }
    const Tensor& step_t = ctx->input(scalars0 + 3);
    OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(step_t.shape()),
                errors::InvalidArgument(
                    "ExpectigradApply: step must be a scalar, got shape ",
                    step_t.shape().DebugString()));
    const double lr = scalars[0], beta = scalars[1], epsilon = scalars[2];
    const int64_t step = step_t.scalar<int64_t>()();
    OP_REQUIRES(ctx, std::isfinite(lr) && lr >= 0,
                errors::InvalidArgument(
                    "ExpectigradApply: lr must be finite and >= 0, got ", lr));
    OP_REQUIRES(ctx, std::isfinite(beta) && beta >= 0 && beta < 1,
                errors::InvalidArgument(
                    "ExpectigradApply: beta must be in [0, 1), got ", beta));
    OP_REQUIRES(ctx, std::isfinite(epsilon) && epsilon > 0,
                errors::InvalidArgument(
                    "ExpectigradApply: epsilon must be finite and > 0, got ",
                    epsilon));
    OP_REQUIRES(ctx, step >= 1,
                errors::InvalidArgument(
                    "ExpectigradApply: step must be >= 1, got ", step));

    // Look up every variable, checking dtype and initialisation.
    struct Slot {
      int input;
      const char* what;
      int index;
      DataType dtype;
    };
    std::vector<Slot> slots;
    slots.reserve(4 * n_);
    for (int i = 0; i < n_; ++i) {
      slots.push_back({i, "var", i, DataTypeToEnum<T>::value});
      slots.push_back({sum0 + i, "sum", i, DataTypeToEnum<S>::value});
      if (n_count_)
        slots.push_back({cnt0 + i, "count", i, DataTypeToEnum<S>::value});
      if (n_mom_)
        slots.push_back({mom0 + i, "momentum", i, DataTypeToEnum<T>::value});
    }
    std::vector<core::RefCountPtr<Var>> vars(slots.size());
    for (size_t k = 0; k < slots.size(); ++k) {
      const Slot& sl = slots[k];
      absl::Status st = LookupResource(ctx, HandleFromInput(ctx, sl.input),
                                       &vars[k]);
      OP_REQUIRES(ctx, st.ok(),
                  errors::InvalidArgument("ExpectigradApply: ", sl.what, "[",
                                          sl.index, "] is not a usable variable: ",
                                          st.message()));
    }
    // The same variable twice would alias state: refuse it.
    std::vector<mutex*> mutexes;
    mutexes.reserve(vars.size());
    for (auto& v : vars) mutexes.push_back(v->mu());
    {
      std::vector<mutex*> sorted = mutexes;
      std::sort(sorted.begin(), sorted.end());
      OP_REQUIRES(ctx,
                  std::adjacent_find(sorted.begin(), sorted.end()) ==
                      sorted.end(),
                  errors::InvalidArgument(
                      "ExpectigradApply: the same variable is passed more "
                      "than once (var, sum, count and momentum must all be "
                      "distinct variables)"));
      mutexes = std::move(sorted);
    }
    // Exclusive locks in address order, as TF's training ops take them.
    std::vector<std::unique_ptr<mutex_lock>> locks;
    locks.reserve(mutexes.size());
    for (mutex* mu : mutexes) locks.emplace_back(new mutex_lock{*mu});

    for (size_t k = 0; k < slots.size(); ++k) {
      const Slot& sl = slots[k];
      Var* v = vars[k].get();
      OP_REQUIRES(ctx, v->is_initialized,
                  errors::FailedPrecondition("ExpectigradApply: ", sl.what, "[",
                                             sl.index,
                                             "] is not initialized"));
      OP_REQUIRES(ctx, v->tensor()->dtype() == sl.dtype,
                  errors::InvalidArgument(
                      "ExpectigradApply: ", sl.what, "[", sl.index,
                      "] has dtype ", DataTypeString(v->tensor()->dtype()),
                      ", expected ", DataTypeString(sl.dtype)));
    }

    // Shapes: every slot and the gradient must match the variable.
    const int per = 2 + (n_count_ ? 1 : 0) + (n_mom_ ? 1 : 0);
    for (int i = 0; i < n_; ++i) {
      const TensorShape& shape = vars[i * per]->tensor()->shape();
      for (int j = 1; j < per; ++j) {
        const Slot& sl = slots[i * per + j];
        const TensorShape& other = vars[i * per + j]->tensor()->shape();
        OP_REQUIRES(ctx, other == shape,
                    errors::InvalidArgument(
                        "ExpectigradApply: ", sl.what, "[", i, "] has shape ",
                        other.DebugString(), " but var[", i, "] has shape ",
                        shape.DebugString()));
      }
      const TensorShape& gshape = ctx->input(grad0 + i).shape();
      OP_REQUIRES(ctx, gshape == shape,
                  errors::InvalidArgument(
                      "ExpectigradApply: grad[", i, "] has shape ",
                      gshape.DebugString(), " but var[", i, "] has shape ",
                      shape.DebugString()));
    }

    // Copy-on-write: never modify a buffer a reader still holds.
    DeviceFunctor<Device, T, S> functor;
    for (size_t k = 0; k < vars.size(); ++k) {
      Var* v = vars[k].get();
      Tensor* t = v->tensor();
      if (v->copy_on_read_mode.load() || !t->RefCountIsOne()) {
        Tensor tmp;
        AllocatorAttributes attr;
        attr.set_gpu_compatible(true);
        attr.set_nic_compatible(true);
        OP_REQUIRES_OK(ctx, ctx->allocate_temp(t->dtype(), t->shape(), &tmp,
                                               attr));
        OP_REQUIRES_OK(ctx, functor.Copy(ctx, *t, &tmp));
        *t = tmp;
      }
    }

    std::vector<expectigrad::TensorChunk<T, S>> chunks;
    chunks.reserve(n_);
    for (int i = 0; i < n_; ++i) {
      Tensor* var = vars[i * per]->tensor();
      if (var->NumElements() == 0) continue;
      Tensor* sum = vars[i * per + 1]->tensor();
      Tensor* cnt = n_count_ ? vars[i * per + 2]->tensor() : nullptr;
      Tensor* mom = n_mom_ ? vars[i * per + per - 1]->tensor() : nullptr;
      expectigrad::TensorChunk<T, S> c;
      c.var = var->flat<T>().data();
      c.sum = sum->flat<S>().data();
      c.cnt = cnt ? cnt->flat<S>().data() : nullptr;
      c.mom = mom ? mom->flat<T>().data() : nullptr;
      c.grad = ctx->input(grad0 + i).flat<T>().data();
      c.size = var->NumElements();
      chunks.push_back(c);
    }
    if (chunks.empty()) return;
    // Without momentum there is no bias correction (beta is unused).
    OP_REQUIRES_OK(ctx, functor.Apply(ctx, chunks, lr, n_mom_ ? beta : 0.0,
                                      epsilon, step));
  }

 private:
  int n_ = 0;
  int n_count_ = 0;
  int n_mom_ = 0;
};

}  // namespace expectigrad_tf
}  // namespace tensorflow

#endif  // EXPECTIGRAD_TF_KERNEL_H_
