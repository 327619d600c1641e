// Op definition: ExpectigradApply, a multi-tensor in-place Expectigrad step.
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

#include "expectigrad_update.h"

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
  int n = 0;
  bool sparse_counter = false, momentum = false;
  TF_RETURN_IF_ERROR(c->GetAttr("num_tensors", &n));
  TF_RETURN_IF_ERROR(c->GetAttr("sparse_counter", &sparse_counter));
  TF_RETURN_IF_ERROR(c->GetAttr("momentum", &momentum));
  const int rows = expectigrad::state_rows(sparse_counter, momentum);
  const int state0 = n, grad0 = 2 * n, scalars0 = 3 * n;
  for (int i = 0; i < n; ++i) {
    ShapeHandle s = HandleShape(c, i);
    ShapeHandle g = c->input(grad0 + i);
    if (!c->Merge(s, g, &s).ok())
      return errors::InvalidArgument(
          "ExpectigradApply: grad[", i, "] has shape ", c->DebugString(g),
          " but var[", i, "] has shape ", c->DebugString(HandleShape(c, i)));
    // state[i]: [rows] + var's shape (sum, count?, momentum?).
    ShapeHandle want;
    TF_RETURN_IF_ERROR(c->Concatenate(c->Vector(rows), s, &want));
    ShapeHandle st = HandleShape(c, state0 + i), merged;
    if (!c->Merge(st, want, &merged).ok())
      return errors::InvalidArgument(
          "ExpectigradApply: state[", i, "] has shape ", c->DebugString(st),
          " but must be ", c->DebugString(want), " (", rows,
          " rows: sum, count if sparse_counter, momentum if momentum; then "
          "var[", i, "]'s shape)");
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
    .Input("state: num_tensors * resource")
    .Input("grad: num_tensors * T")
    .Input("lr: Tscalar")
    .Input("beta: Tscalar")
    .Input("epsilon: Tscalar")
    .Input("step: int64")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tscalar: {float, double}")
    .Attr("num_tensors: int >= 1")
    .Attr("sparse_counter: bool")
    .Attr("momentum: bool")
    .SetShapeFn(ExpectigradShapeFn)
    .Doc(R"doc(
One Expectigrad step (Algorithm 1 of the paper) applied in place to a list of
variables and their packed state, in one pass over memory per element.

var: variables of dtype T. state: one variable per var, of dtype float32
(float64 when T is double) and shape [rows] + var's shape, rows = 1 +
sparse_counter + momentum: row 0 is the sum of squared gradients, then the
nonzero-gradient count if sparse_counter (otherwise n = step), then the
momentum if momentum (beta > 0; otherwise no bias correction).
grad: dense gradients, shaped like var. lr, beta, epsilon: scalars.
step: the 1-based step t.
)doc");

}  // namespace tensorflow
