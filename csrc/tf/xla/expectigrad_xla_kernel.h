// The XLA lowering of ExpectigradApply (jit_compile=True), shared by CPU and
// GPU. It reads the resource variables, emits ONE typed-FFI custom call
// `expectigrad_apply` into the same fused kernels as the TF op (the host
// multi-tensor loop on XLA:CPU, the CUDA launcher on XLA:GPU's stream), with
// every variable/slot operand aliased to its output so the update is in place,
// then assigns the results back to the variables.
//
// Custom call operands: var[n], sum[n], count[n_count], momentum[n_mom],
// grad[n], lr, step. Results: a tuple of var, sum, count, momentum, result k
// aliasing operand k. Attributes (the FFI backend config): num_tensors,
// num_count, num_momentum, and beta/epsilon as the bits of their float64 value
// (beta_bits, epsilon_bits: exact, whatever the printing precision).
//
// Registered for CPU_XLA_JIT by expectigrad_xla_cpu.cc (in the CPU library)
// and for GPU_XLA_JIT by expectigrad_xla_gpu.cc (in the CUDA library, next to
// its custom-call handler), through REGISTER_KERNEL_BUILDER, which works
// whatever the order in which the library and the first XLA compile come.
#ifndef EXPECTIGRAD_TF_XLA_KERNEL_H_
#define EXPECTIGRAD_TF_XLA_KERNEL_H_

#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tensorflow/compiler/tf2xla/shape_util.h"
#include "tensorflow/compiler/tf2xla/type_util.h"
#include "tensorflow/compiler/tf2xla/xla_op_kernel.h"
#include "tensorflow/compiler/tf2xla/xla_op_registry.h"
#include "tensorflow/compiler/tf2xla/xla_resource.h"
#include "xla/hlo/builder/xla_builder.h"
#include "xla/shape_util.h"

#include "expectigrad_checks.h"

namespace tensorflow {
namespace expectigrad_tf {

constexpr char kCustomCallTarget[] = "expectigrad_apply";

inline int64_t DoubleBits(double v) {
  int64_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return bits;
}

class ExpectigradApplyXlaOp : public XlaOpKernel {
 public:
  explicit ExpectigradApplyXlaOp(OpKernelConstruction* ctx) : XlaOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_tensors", &n_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_count", &n_count_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_momentum", &n_mom_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("T", &dtype_));
    OP_REQUIRES(ctx, n_count_ == 0 || n_count_ == n_,
                errors::InvalidArgument(
                    "ExpectigradApply: num_count must be 0 or num_tensors (",
                    n_, "), got ", n_count_));
    OP_REQUIRES(ctx, n_mom_ == 0 || n_mom_ == n_,
                errors::InvalidArgument(
                    "ExpectigradApply: num_momentum must be 0 or num_tensors (",
                    n_, "), got ", n_mom_));
    state_dtype_ = dtype_ == DT_DOUBLE ? DT_DOUBLE : DT_FLOAT;
  }

  void Compile(XlaOpKernelContext* ctx) override {
    const int sum0 = n_, cnt0 = 2 * n_, mom0 = 2 * n_ + n_count_;
    const int grad0 = mom0 + n_mom_, lr_in = grad0 + n_;
    const int beta_in = lr_in + 1, eps_in = lr_in + 2, step_in = lr_in + 3;

    // Scalars: beta and epsilon are compile-time constants (graph constants
    // in the optimizer); lr and step are run-time operands, checked by the
    // custom-call handler before anything is written.
    const char* names[] = {"lr", "beta", "epsilon", "step"};
    for (int k = 0; k < 4; ++k) {
      const TensorShape shape = ctx->InputShape(lr_in + k);
      OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(shape),
                  errors::InvalidArgument("ExpectigradApply: ", names[k],
                                          " must be a scalar, got shape ",
                                          shape.DebugString()));
    }
    double beta = 0, epsilon = 0;
    for (auto [index, out, name] :
         {std::tuple<int, double*, const char*>{beta_in, &beta, "beta"},
          std::tuple<int, double*, const char*>{eps_in, &epsilon, "epsilon"}}) {
      absl::Status st = ctx->ConstantInputAsFloatScalar(index, out);
      OP_REQUIRES(ctx, st.ok(),
                  errors::InvalidArgument(
                      "ExpectigradApply: under XLA, ", name,
                      " must be a compile-time constant: ", st.message()));
    }
    const std::string bad = expectigrad::check_beta_epsilon(beta, epsilon);
    OP_REQUIRES(ctx, bad.empty(), errors::InvalidArgument(bad));
    if (n_mom_ == 0) beta = 0.0;  // no momentum: no bias correction

    // Variables: one {var, sum, count, momentum} per tensor; each checked
    // (distinct, dtype, shape) before the custom call is emitted.
    struct Entry {
      int input;
      const char* what;
      int index;
      DataType dtype;
    };
    std::vector<std::vector<Entry>> tensors(n_);
    for (int i = 0; i < n_; ++i) {
      tensors[i].push_back({i, "var", i, dtype_});
      tensors[i].push_back({sum0 + i, "sum", i, state_dtype_});
      if (n_count_) tensors[i].push_back({cnt0 + i, "count", i, state_dtype_});
      if (n_mom_) tensors[i].push_back({mom0 + i, "momentum", i, dtype_});
    }
    std::vector<XlaResource*> seen;
    for (const auto& entries : tensors) {
      for (const Entry& e : entries) {
        XlaResource* resource = nullptr;
        OP_REQUIRES_OK(ctx, ctx->GetResourceInput(e.input, &resource));
        for (XlaResource* other : seen)
          OP_REQUIRES(ctx, other != resource,
                      errors::InvalidArgument(
                          "ExpectigradApply: the same variable is passed more "
                          "than once (var, sum, count and momentum must all "
                          "be distinct variables)"));
        seen.push_back(resource);
      }
    }

    std::vector<xla::XlaOp> state_ops;          // var.., sum.., count.., mom..
    std::vector<std::pair<int, DataType>> out;  // (input index, dtype) each
    std::vector<xla::XlaOp> grads;
    std::vector<xla::Shape> state_shapes, grad_shapes;
    // by_kind[k]: the k-th entry (var, sum, count?, momentum?) of each tensor.
    std::vector<std::vector<std::pair<Entry, xla::XlaOp>>> by_kind(4);
    for (int i = 0; i < n_; ++i) {
      TensorShape var_shape;
      for (size_t k = 0; k < tensors[i].size(); ++k) {
        const Entry& e = tensors[i][k];
        DataType type;
        TensorShape shape;
        OP_REQUIRES_OK(ctx, ctx->GetVariableTypeAndShape(e.input, &type, &shape));
        OP_REQUIRES(ctx, type == e.dtype,
                    errors::InvalidArgument(
                        "ExpectigradApply: ", e.what, "[", i, "] has dtype ",
                        DataTypeString(type), ", expected ",
                        DataTypeString(e.dtype)));
        if (k == 0) var_shape = shape;
        OP_REQUIRES(ctx, shape == var_shape,
                    errors::InvalidArgument(
                        "ExpectigradApply: ", e.what, "[", i, "] has shape ",
                        shape.DebugString(), " but var[", i, "] has shape ",
                        var_shape.DebugString()));
      }
      const TensorShape gshape = ctx->InputShape(grad0 + i);
      OP_REQUIRES(ctx, gshape == var_shape,
                  errors::InvalidArgument(
                      "ExpectigradApply: grad[", i, "] has shape ",
                      gshape.DebugString(), " but var[", i, "] has shape ",
                      var_shape.DebugString()));
      if (var_shape.num_elements() == 0) continue;  // nothing to update
      for (size_t k = 0; k < tensors[i].size(); ++k) {
        const Entry& e = tensors[i][k];
        TensorShape shape;
        xla::XlaOp value;
        OP_REQUIRES_OK(ctx, ctx->ReadVariableInput(e.input, e.dtype, &shape, &value));
        by_kind[k].push_back({e, value});
      }
      grads.push_back(ctx->Input(grad0 + i));
    }
    const int live = static_cast<int>(grads.size());
    if (live == 0) return;

    for (int kind = 0; kind < 4; ++kind) {
      for (const auto& [entry, value] : by_kind[kind]) {
        state_ops.push_back(value);
        out.push_back({entry.input, entry.dtype});
      }
    }
    // Shapes with the default (row-major) layout: the handlers walk every
    // buffer as one flat array, so all of them must share one layout.
    auto shape_of = [ctx](DataType type, const TensorShape& shape,
                          xla::Shape* out_shape) -> absl::Status {
      xla::PrimitiveType ptype;
      TF_RETURN_IF_ERROR(DataTypeToPrimitiveType(type, &ptype));
      *out_shape = xla::ShapeUtil::MakeShapeWithDescendingLayout(
          ptype, shape.dim_sizes());
      return absl::OkStatus();
    };
    std::vector<xla::XlaOp> operands = state_ops;
    operands.insert(operands.end(), grads.begin(), grads.end());
    operands.push_back(ctx->Input(lr_in));
    operands.push_back(ctx->Input(step_in));
    std::vector<xla::Shape> operand_shapes;
    for (size_t k = 0; k < state_ops.size(); ++k) {
      TensorShape shape;
      DataType type;
      OP_REQUIRES_OK(ctx, ctx->GetVariableTypeAndShape(out[k].first, &type, &shape));
      xla::Shape s;
      OP_REQUIRES_OK(ctx, shape_of(out[k].second, shape, &s));
      operand_shapes.push_back(s);
    }
    const std::vector<xla::Shape> result_shapes = operand_shapes;
    for (int i = 0, g = 0; i < n_; ++i) {
      const TensorShape gshape = ctx->InputShape(grad0 + i);
      if (gshape.num_elements() == 0) continue;
      xla::Shape s;
      OP_REQUIRES_OK(ctx, shape_of(dtype_, gshape, &s));
      operand_shapes.push_back(s);
      ++g;
    }
    for (int k : {lr_in, step_in}) {
      xla::Shape s;
      OP_REQUIRES_OK(ctx, shape_of(ctx->input_type(k), TensorShape({}), &s));
      operand_shapes.push_back(s);
    }
    std::vector<std::pair<xla::ShapeIndex, std::pair<int64_t, xla::ShapeIndex>>>
        aliasing;
    for (size_t k = 0; k < result_shapes.size(); ++k)
      aliasing.push_back({xla::ShapeIndex{static_cast<int64_t>(k)},
                          {static_cast<int64_t>(k), xla::ShapeIndex{}}});

    const std::string config = absl::StrCat(
        "{num_tensors = ", live, " : i64, num_count = ", n_count_ ? live : 0,
        " : i64, num_momentum = ", n_mom_ ? live : 0,
        " : i64, beta_bits = ", DoubleBits(beta),
        " : i64, epsilon_bits = ", DoubleBits(epsilon), " : i64}");
    xla::XlaOp call = xla::CustomCallWithLayout(
        ctx->builder(), kCustomCallTarget, operands,
        xla::ShapeUtil::MakeTupleShape(result_shapes), operand_shapes, config,
        /*has_side_effect=*/false, aliasing, /*literal=*/nullptr,
        xla::CustomCallSchedule::SCHEDULE_NONE,
        xla::CustomCallApiVersion::API_VERSION_TYPED_FFI);
    for (size_t k = 0; k < out.size(); ++k) {
      OP_REQUIRES_OK(ctx, ctx->AssignVariable(out[k].first, out[k].second,
                                              xla::GetTupleElement(call, k)));
    }
  }

 private:
  int n_ = 0, n_count_ = 0, n_mom_ = 0;
  DataType dtype_ = DT_FLOAT, state_dtype_ = DT_FLOAT;
};

}  // namespace expectigrad_tf
}  // namespace tensorflow

#endif  // EXPECTIGRAD_TF_XLA_KERNEL_H_
