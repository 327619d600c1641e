// Op definition: ExpectigradApply, a multi-tensor in-place Expectigrad step.
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tensorflow {

using shape_inference::InferenceContext;
using shape_inference::ShapeHandle;

namespace {

// Shape of the variable behind resource input `index`, when known.
ShapeHandle HandleShape(InferenceContext* c, int index) {
  const auto* data = c->input_handle_shapes_and_types(index);
  if (data != nullptr && data->size() == 1) return (*data)[0].shape;
  return c->UnknownShape();
}

absl::Status ExpectigradShapeFn(InferenceContext* c) {
  int n = 0, n_count = 0, n_mom = 0;
  TF_RETURN_IF_ERROR(c->GetAttr("num_tensors", &n));
  TF_RETURN_IF_ERROR(c->GetAttr("num_count", &n_count));
  TF_RETURN_IF_ERROR(c->GetAttr("num_momentum", &n_mom));
  if (n_count != 0 && n_count != n)
    return errors::InvalidArgument("num_count must be 0 or num_tensors (", n,
                                   "), got ", n_count);
  if (n_mom != 0 && n_mom != n)
    return errors::InvalidArgument("num_momentum must be 0 or num_tensors (",
                                   n, "), got ", n_mom);
  const int sum0 = n, cnt0 = 2 * n, mom0 = 2 * n + n_count,
            grad0 = 2 * n + n_count + n_mom, scalars0 = grad0 + n;
  for (int i = 0; i < n; ++i) {
    ShapeHandle s = HandleShape(c, i);
    auto merge = [&](int input, const char* what) -> absl::Status {
      ShapeHandle other =
          input >= grad0 ? c->input(input) : HandleShape(c, input);
      absl::Status st = c->Merge(s, other, &s);
      if (!st.ok())
        return errors::InvalidArgument("ExpectigradApply: ", what, "[", i,
                                       "] has shape ", c->DebugString(other),
                                       " but var[", i, "] has shape ",
                                       c->DebugString(HandleShape(c, i)));
      return absl::OkStatus();
    };
    TF_RETURN_IF_ERROR(merge(sum0 + i, "sum"));
    if (n_count) TF_RETURN_IF_ERROR(merge(cnt0 + i, "count"));
    if (n_mom) TF_RETURN_IF_ERROR(merge(mom0 + i, "momentum"));
    TF_RETURN_IF_ERROR(merge(grad0 + i, "grad"));
  }
  const char* names[] = {"lr", "beta", "epsilon", "step"};
  for (int k = 0; k < 4; ++k) {
    ShapeHandle unused;
    if (!c->WithRank(c->input(scalars0 + k), 0, &unused).ok())
      return errors::InvalidArgument("ExpectigradApply: ", names[k],
                                     " must be a scalar, got shape ",
                                     c->DebugString(c->input(scalars0 + k)));
  }
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("ExpectigradApply")
    .Input("var: num_tensors * resource")
    .Input("sum: num_tensors * resource")
    .Input("count: num_count * resource")
    .Input("momentum: num_momentum * resource")
    .Input("grad: num_tensors * T")
    .Input("lr: Tscalar")
    .Input("beta: Tscalar")
    .Input("epsilon: Tscalar")
    .Input("step: int64")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tscalar: {float, double}")
    .Attr("num_tensors: int >= 1")
    .Attr("num_count: int >= 0")
    .Attr("num_momentum: int >= 0")
    .SetShapeFn(ExpectigradShapeFn)
    .Doc(R"doc(
One Expectigrad step (Algorithm 1 of the paper) applied in place to a list of
variables and their slots, in one pass over memory per element.

var, momentum: variables of dtype T. sum, count: variables of dtype float32
(float64 when T is double). count is empty when the sparse counter is off
(n = step), momentum is empty when beta == 0 (no bias correction).
grad: dense gradients, shaped like var. lr, beta, epsilon: scalars.
step: the 1-based step t.
)doc");

}  // namespace tensorflow
