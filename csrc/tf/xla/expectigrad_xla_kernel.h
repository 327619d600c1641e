// The XLA lowering of ExpectigradApply (jit_compile=True), shared by CPU and
// GPU. It reads the resource variables, emits ONE typed-FFI custom call
// `expectigrad_apply` into the same fused kernels as the TF op (the host
// multi-tensor loop on XLA:CPU, the CUDA launcher on XLA:GPU's stream), with
// every variable/slot operand aliased to its output so the update is in place,
// then assigns the results back to the variables.
//
// Custom call operands (one call per group of up to 40 tensors): var[n],
// state[n], grad[n], lr, step, where state[i] is the packed [rows, *shape]
// state (sum, count?, momentum?). Results: a tuple of var[n], state[n], result
// k aliasing operand k. Attributes (the FFI backend config): num_tensors,
// sparse_counter and momentum (0/1), and beta/epsilon as the bits of their
// float64 value (beta_bits, epsilon_bits: exact, whatever the printing
// precision).
//
// Registered for CPU_XLA_JIT by expectigrad_xla_cpu.cc (in the CPU library)
// and for GPU_XLA_JIT by expectigrad_xla_gpu.cc (in the CUDA library, next to
// its custom-call handler), through REGISTER_KERNEL_BUILDER, which works
// whatever the order in which the library and the first XLA compile come.
#ifndef EXPECTIGRAD_TF_XLA_KERNEL_H_
#define EXPECTIGRAD_TF_XLA_KERNEL_H_

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "tensorflow/compiler/tf2xla/shape_util.h"
#include "tensorflow/compiler/tf2xla/type_util.h"
#include "tensorflow/compiler/tf2xla/xla_op_kernel.h"
#include "tensorflow/compiler/tf2xla/xla_op_registry.h"
#include "tensorflow/compiler/tf2xla/xla_resource.h"
// The builder moved from xla/client/ (TensorFlow <= 2.17) to xla/hlo/builder/.
#if __has_include("xla/hlo/builder/xla_builder.h")
#include "xla/hlo/builder/xla_builder.h"
#else
#include "xla/client/xla_builder.h"
#endif
#include "xla/shape_util.h"

#include "expectigrad_checks.h"
#include "expectigrad_update.h"

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
    OP_REQUIRES_OK(ctx, ctx->GetAttr("sparse_counter", &sparse_counter_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("momentum", &momentum_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("T", &dtype_));
    state_dtype_ = dtype_ == DT_DOUBLE ? DT_DOUBLE : DT_FLOAT;
  }

  void Compile(XlaOpKernelContext* ctx) override {
    const int state0 = n_, grad0 = 2 * n_, lr_in = 3 * n_;
    const int64_t rows = expectigrad::state_rows(sparse_counter_, momentum_);
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
    if (!momentum_) beta = 0.0;  // no momentum: no bias correction

    // Variables: one {var, state} per tensor; each checked
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
      tensors[i].push_back({state0 + i, "state", i, state_dtype_});
    }
    absl::flat_hash_set<XlaResource*> seen;
    for (const auto& entries : tensors) {
      for (const Entry& e : entries) {
        XlaResource* resource = nullptr;
        OP_REQUIRES_OK(ctx, ctx->GetResourceInput(e.input, &resource));
        OP_REQUIRES(ctx, seen.insert(resource).second,
                    errors::InvalidArgument(
                        "ExpectigradApply: the same variable is passed more "
                        "than once (var and state must all be distinct "
                        "variables)"));
      }
    }

    // Read every live (non-empty) tensor: its variables (var, state) and its
    // gradient.
    struct Live {
      std::vector<std::pair<Entry, xla::XlaOp>> state;
      std::vector<TensorShape> shapes;  // of each state entry
      xla::XlaOp grad;
      TensorShape shape;
    };
    std::vector<Live> live;
    for (int i = 0; i < n_; ++i) {
      // Every entry's dtype and shape against var[i], and grad[i], with the
      // TF kernel's messages, before anything is read or emitted.
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
        if (k == 0) {
          var_shape = shape;
          continue;
        }
        TensorShape want = var_shape;
        want.InsertDim(0, rows);
        OP_REQUIRES(ctx, shape == want,
                    errors::InvalidArgument(
                        "ExpectigradApply: state[", i, "] has shape ",
                        shape.DebugString(), " but must be ", want.DebugString(),
                        " (", rows, " rows: sum, count if sparse_counter, "
                        "momentum if momentum; then var[", i, "]'s shape ",
                        var_shape.DebugString(), ")"));
      }
      const TensorShape shape = ctx->InputShape(grad0 + i);
      OP_REQUIRES(ctx, shape == var_shape,
                  errors::InvalidArgument(
                      "ExpectigradApply: grad[", i, "] has shape ",
                      shape.DebugString(), " but var[", i, "] has shape ",
                      var_shape.DebugString()));
      if (shape.num_elements() == 0) continue;  // nothing to update
      Live t;
      t.shape = shape;
      for (const Entry& e : tensors[i]) {
        TensorShape read_shape;
        xla::XlaOp value;
        OP_REQUIRES_OK(ctx, ctx->ReadVariableInput(e.input, e.dtype, &read_shape, &value));
        t.state.push_back({e, value});
        t.shapes.push_back(read_shape);
      }
      t.grad = ctx->Input(grad0 + i);
      live.push_back(std::move(t));
    }
    // One custom call per group of at most kTensorsPerCall tensors: XLA's
    // compile time grows faster than linearly with the operands of one
    // instruction (its in-place fusion checks), so a model with thousands of
    // variables would otherwise take minutes to compile.
    for (size_t first = 0; first < live.size(); first += kTensorsPerCall) {
      const size_t last = std::min(live.size(), first + kTensorsPerCall);
      OP_REQUIRES_OK(ctx, EmitCall(ctx, live, first, last, lr_in, step_in,
                                   beta, epsilon));
    }
  }

 private:
  // 40: the CUDA launcher's tensors per launch (kMaxTensors in
  // expectigrad_kernel.cu), so a call on XLA:GPU is one kernel launch and
  // cannot fail half-way; small enough for XLA's compile time (see above).
  static constexpr size_t kTensorsPerCall = 40;

  template <typename LiveT>
  absl::Status EmitCall(XlaOpKernelContext* ctx, const std::vector<LiveT>& live,
                        size_t first, size_t last, int lr_in, int step_in,
                        double beta, double epsilon) const {
    const int count = static_cast<int>(last - first);
    auto shape_of = [](DataType type, const TensorShape& shape,
                       xla::Shape* out) -> absl::Status {
      xla::PrimitiveType ptype;
      TF_RETURN_IF_ERROR(DataTypeToPrimitiveType(type, &ptype));
      // The default (row-major) layout: the handlers walk every buffer as
      // one flat array, so all of them must share one layout.
      *out = xla::ShapeUtil::MakeShapeWithDescendingLayout(ptype,
                                                           shape.dim_sizes());
      return absl::OkStatus();
    };
    // Operands: var.., state.. (kind-major), grad.., lr, step. Results: the
    // var and state operands, result k aliasing operand k.
    std::vector<xla::XlaOp> operands;
    std::vector<xla::Shape> shapes;
    std::vector<std::pair<int, DataType>> assign;  // (input, dtype) per result
    const size_t kinds = live[first].state.size();
    for (size_t kind = 0; kind < kinds; ++kind) {
      for (size_t t = first; t < last; ++t) {
        const auto& [entry, value] = live[t].state[kind];
        xla::Shape s;
        TF_RETURN_IF_ERROR(shape_of(entry.dtype, live[t].shapes[kind], &s));
        operands.push_back(value);
        shapes.push_back(s);
        assign.push_back({entry.input, entry.dtype});
      }
    }
    const std::vector<xla::Shape> result_shapes = shapes;
    for (size_t t = first; t < last; ++t) {
      xla::Shape s;
      TF_RETURN_IF_ERROR(shape_of(dtype_, live[t].shape, &s));
      operands.push_back(live[t].grad);
      shapes.push_back(s);
    }
    for (int k : {lr_in, step_in}) {
      xla::Shape s;
      TF_RETURN_IF_ERROR(shape_of(ctx->input_type(k), TensorShape({}), &s));
      operands.push_back(ctx->Input(k));
      shapes.push_back(s);
    }
    std::vector<std::pair<xla::ShapeIndex, std::pair<int64_t, xla::ShapeIndex>>>
        aliasing;
    for (size_t k = 0; k < result_shapes.size(); ++k)
      aliasing.push_back({xla::ShapeIndex{static_cast<int64_t>(k)},
                          {static_cast<int64_t>(k), xla::ShapeIndex{}}});
    const std::string config = absl::StrCat(
        "{num_tensors = ", count, " : i64, sparse_counter = ",
        int(sparse_counter_), " : i64, momentum = ", int(momentum_),
        " : i64, beta_bits = ", DoubleBits(beta),
        " : i64, epsilon_bits = ", DoubleBits(epsilon), " : i64}");
    xla::XlaOp call = xla::CustomCallWithLayout(
        ctx->builder(), kCustomCallTarget, operands,
        xla::ShapeUtil::MakeTupleShape(result_shapes), shapes, config,
        /*has_side_effect=*/false, aliasing, /*literal=*/nullptr,
        xla::CustomCallSchedule::SCHEDULE_NONE,
        xla::CustomCallApiVersion::API_VERSION_TYPED_FFI);
    for (size_t k = 0; k < assign.size(); ++k) {
      TF_RETURN_IF_ERROR(ctx->AssignVariable(assign[k].first, assign[k].second,
                                             xla::GetTupleElement(call, k)));
    }
    return absl::OkStatus();
  }

  int n_ = 0;
  bool sparse_counter_ = false, momentum_ = false;
  DataType dtype_ = DT_FLOAT, state_dtype_ = DT_FLOAT;
};

}  // namespace expectigrad_tf
}  // namespace tensorflow

#endif  // EXPECTIGRAD_TF_XLA_KERNEL_H_
