// pybind11 harness over the kernels in csrc/, with no TensorFlow dependency.
//
// CPU: apply_cpu(...) runs the multi-tensor host loop on NumPy arrays in place
// (float32 and float64 variables; sum, count and momentum in the state dtype,
// which for these is the variable's own). The CUDA launcher is exposed by a
// second module (harness_cuda.cc) that scripts/gpu_check.py builds on GPU
// machines.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "expectigrad_multi_tensor.h"

namespace py = pybind11;

namespace {

std::string type_name(py::handle obj) {
  return py::str(py::type::handle_of(obj).attr("__name__"));
}

std::string label(const char* what, size_t i) {
  return std::string(what) + "[" + std::to_string(i) + "]";
}

// The items of a list/tuple argument, or a TypeError naming it.
std::vector<py::handle> as_list(py::handle obj, const char* what) {
  if (!py::isinstance<py::list>(obj) && !py::isinstance<py::tuple>(obj))
    throw py::type_error(std::string(what) + " must be a list of NumPy arrays, got " +
                         type_name(obj));
  std::vector<py::handle> out;
  for (auto v : py::reinterpret_borrow<py::sequence>(obj)) out.push_back(v);
  return out;
}

// An item as an array: its type is checked before anything is read from it.
py::array as_array(py::handle obj, const std::string& name) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(name + " must be a NumPy array, got " + type_name(obj));
  return py::reinterpret_borrow<py::array>(obj);
}

template <typename S>
const char* state_name() {
  return sizeof(S) == 8 ? "float64" : "float32";
}

// The data of a var/sum/count/momentum/grad array. All are of type S: the
// variable's dtype (float32 or float64), which is also its state dtype.
template <typename S>
S* data_of(py::handle obj, const std::string& name, py::ssize_t size) {
  const py::array arr = as_array(obj, name);
  if (!py::isinstance<py::array_t<S>>(obj))
    throw py::value_error(name + " is " + std::string(py::str(arr.dtype())) +
                          " but var[0] is " + state_name<S>() + ": expected " +
                          state_name<S>() + " (the state dtype of " + state_name<S>() +
                          " variables)");
  if (!(arr.flags() & py::array::c_style) || !arr.writeable())
    throw py::value_error(name + " must be a writeable C-contiguous array");
  if (arr.size() != size)
    throw py::value_error(name + " has " + std::to_string(arr.size()) +
                          " elements, var has " + std::to_string(size));
  return static_cast<S*>(const_cast<void*>(arr.data()));
}

template <typename S>
void apply_typed(const std::vector<py::handle>& var, const std::vector<py::handle>& sum,
                 const std::vector<py::handle>* cnt, const std::vector<py::handle>* mom,
                 const std::vector<py::handle>& grad, double lr, double beta,
                 double eps, int64_t step) {
  std::vector<expectigrad::TensorChunk<S, S>> chunks;
  for (size_t i = 0; i < var.size(); ++i) {
    const py::ssize_t size = as_array(var[i], label("var", i)).size();
    expectigrad::TensorChunk<S, S> c;
    c.var = data_of<S>(var[i], label("var", i), size);
    c.sum = data_of<S>(sum[i], label("sum", i), size);
    c.cnt = cnt ? data_of<S>((*cnt)[i], label("count", i), size) : nullptr;
    c.mom = mom ? data_of<S>((*mom)[i], label("momentum", i), size) : nullptr;
    c.grad = data_of<S>(grad[i], label("grad", i), size);
    c.size = size;
    chunks.push_back(c);
  }
  const expectigrad::MultiTensorPlan<S, S> plan(std::move(chunks));
  const auto p = expectigrad::make_step_scalars<S>(lr, mom ? beta : 0.0, eps, step);
  py::gil_scoped_release release;
  plan.run(0, plan.total(), p);
}

void apply_cpu(const py::object& var_obj, const py::object& sum_obj,
               const py::object& count, const py::object& mom_obj,
               const py::object& grad_obj, double lr, double beta, double eps,
               int64_t step) {
  // Argument types first (TypeError naming the argument), then lengths.
  const auto var = as_list(var_obj, "var"), sum = as_list(sum_obj, "sum"),
             grad = as_list(grad_obj, "grad");
  const bool has_cnt = !count.is_none(), has_mom = !mom_obj.is_none();
  std::vector<py::handle> cnt, mom;
  if (has_cnt) cnt = as_list(count, "count");
  if (has_mom) mom = as_list(mom_obj, "momentum");
  const size_t n = var.size();
  if (sum.size() != n || grad.size() != n)
    throw py::value_error("var, sum and grad must be lists of equal length");
  if ((has_cnt && cnt.size() != n) || (has_mom && mom.size() != n))
    throw py::value_error("count and momentum must be None or lists like var");
  if (n == 0) return;
  if (!(lr >= 0) || !(beta >= 0 && beta < 1) || !(eps > 0) || step < 1)
    throw py::value_error("need lr >= 0, 0 <= beta < 1, epsilon > 0, step >= 1");
  const py::array first = as_array(var[0], "var[0]");
  const auto* c = has_cnt ? &cnt : nullptr;
  const auto* m = has_mom ? &mom : nullptr;
  if (py::isinstance<py::array_t<float>>(first))
    apply_typed<float>(var, sum, c, m, grad, lr, beta, eps, step);
  else if (py::isinstance<py::array_t<double>>(first))
    apply_typed<double>(var, sum, c, m, grad, lr, beta, eps, step);
  else
    throw py::type_error("var dtype must be float32 or float64, got " +
                         std::string(py::str(first.dtype())));
}

}  // namespace

PYBIND11_MODULE(_harness, m) {
  m.doc() = "Expectigrad kernels without TensorFlow (CPU host loop).";
  m.def("apply_cpu", &apply_cpu, py::arg("var"), py::arg("sum"),
        py::arg("count"), py::arg("momentum"), py::arg("grad"), py::arg("lr"),
        py::arg("beta"), py::arg("epsilon"), py::arg("step"),
        "One Expectigrad step in place on lists of NumPy arrays. count and "
        "momentum may be None (sparse counter off / beta == 0).");
}
