// pybind11 harness over the kernels in csrc/, with no TensorFlow dependency.
//
// CPU: apply_cpu(...) runs the multi-tensor host loop on NumPy arrays in place
// (float32 and float64). The CUDA launcher is exposed by a second module
// (harness_cuda.cc) that scripts/gpu_check.py builds on GPU machines.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "expectigrad_multi_tensor.h"

namespace py = pybind11;

namespace {

template <typename S>
S* data_of(py::handle obj, const char* what, size_t i, py::ssize_t size) {
  auto arr = py::reinterpret_borrow<py::array>(obj);
  if (!py::isinstance<py::array_t<S>>(obj) || !(arr.flags() & py::array::c_style) ||
      !arr.writeable())
    throw py::value_error(std::string(what) + "[" + std::to_string(i) +
                          "] must be a writeable C-contiguous array of the "
                          "state dtype");
  if (arr.size() != size)
    throw py::value_error(std::string(what) + "[" + std::to_string(i) +
                          "] has " + std::to_string(arr.size()) +
                          " elements, var has " + std::to_string(size));
  return static_cast<S*>(arr.mutable_data());
}

template <typename S>
void apply_typed(const py::list& var, const py::list& sum, const py::object& count,
                 const py::object& mom, const py::list& grad, double lr,
                 double beta, double eps, int64_t step) {
  const size_t n = var.size();
  if (sum.size() != n || grad.size() != n)
    throw py::value_error("var, sum and grad must be lists of equal length");
  const bool has_cnt = !count.is_none(), has_mom = !mom.is_none();
  py::list cnt = has_cnt ? py::list(count) : py::list();
  py::list mo = has_mom ? py::list(mom) : py::list();
  if ((has_cnt && cnt.size() != n) || (has_mom && mo.size() != n))
    throw py::value_error("count and momentum must be None or lists like var");
  std::vector<expectigrad::TensorChunk<S, S>> chunks;
  for (size_t i = 0; i < n; ++i) {
    auto v = py::reinterpret_borrow<py::array>(var[i]);
    const py::ssize_t size = v.size();
    expectigrad::TensorChunk<S, S> c;
    c.var = data_of<S>(var[i], "var", i, size);
    c.sum = data_of<S>(sum[i], "sum", i, size);
    c.cnt = has_cnt ? data_of<S>(cnt[i], "count", i, size) : nullptr;
    c.mom = has_mom ? data_of<S>(mo[i], "momentum", i, size) : nullptr;
    c.grad = data_of<S>(grad[i], "grad", i, size);
    c.size = size;
    chunks.push_back(c);
  }
  const expectigrad::MultiTensorPlan<S, S> plan(std::move(chunks));
  const auto p = expectigrad::make_step_scalars<S>(lr, has_mom ? beta : 0.0, eps, step);
  py::gil_scoped_release release;
  plan.run(0, plan.total(), p);
}

void apply_cpu(const py::list& var, const py::list& sum, const py::object& count,
               const py::object& mom, const py::list& grad, double lr, double beta,
               double eps, int64_t step) {
  if (var.size() == 0) return;
  if (!(lr >= 0) || !(beta >= 0 && beta < 1) || !(eps > 0) || step < 1)
    throw py::value_error("need lr >= 0, 0 <= beta < 1, epsilon > 0, step >= 1");
  auto first = py::reinterpret_borrow<py::array>(var[0]);
  if (py::isinstance<py::array_t<float>>(first))
    apply_typed<float>(var, sum, count, mom, grad, lr, beta, eps, step);
  else if (py::isinstance<py::array_t<double>>(first))
    apply_typed<double>(var, sum, count, mom, grad, lr, beta, eps, step);
  else
    throw py::type_error("var dtype must be float32 or float64");
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
