// pybind11 module `_harness_emulated`: the CUDA launcher and kernel of
// csrc/cuda/expectigrad_kernel.cu, compiled as plain C++ with
// csrc/cuda/emulation/cuda_emulation.h force-included (every block and thread
// run in turn on the CPU), on NumPy arrays standing in for device memory.
// Built by tools/build_harness.py on any machine with CUDA's headers (no nvcc
// or GPU needed); tested in tests/kernels/test_emulated.py. It checks the
// kernel's indexing, chunking and launch logic, not the GPU memory model.
//
//   apply(var, sum, count, momentum, grad, lr, beta, epsilon, step,
//         lr_dtype="float32", dtype=None) -> None
//   set_max_blocks(n)        cap the grid (0: default, 8 per multiprocessor)
//   set_multiprocessors(n)   what the emulated device reports (default 2)
//   stats() -> dict          launches, min_grid, max_grid, threads since reset
//   reset_stats()
//
// Arrays: var/momentum/grad float32, float64, float16, or bfloat16 (an
// ml_dtypes bfloat16 array, or uint16 bit patterns with dtype="bfloat16");
// sum/count float32 (float64 for float64 variables); all C-contiguous (any
// alignment: slices at odd offsets are fine) and as long as their var.
// count is None without the sparse counter and momentum None for beta == 0.
//
// lr and step are NOT validated here (beta and epsilon are): they are put in
// "device" memory as lr_dtype / int64 and handed to launch_update, so the
// kernel's own check (nothing changes when lr is not finite or < 0, or
// step < 1) is what the tests see.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "cuda/expectigrad_cuda.h"

namespace py = pybind11;
using expectigrad::cuda::DType;
using expectigrad::cuda::RawChunk;

namespace {

const char* dtype_name(DType d) {
  switch (d) {
    case DType::kFloat32: return "float32";
    case DType::kFloat64: return "float64";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
  }
  return "?";
}

std::string label(const char* what, size_t i) {
  return std::string(what) + "[" + std::to_string(i) + "]";
}

py::array as_array(py::handle obj, const std::string& name, bool writable) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(name + " must be a NumPy array");
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(name + " must be C-contiguous");
  if (writable && !a.writeable()) throw py::value_error(name + " is read-only");
  return a;
}

// The storage dtype of var/momentum/grad arrays.
DType storage_dtype(const py::array& a, const std::string& name,
                    const py::object& override_dtype) {
  const std::string kind = py::str(a.dtype());
  if (!override_dtype.is_none()) {
    const std::string want = py::str(override_dtype);
    if (want != "bfloat16")
      throw py::value_error("dtype must be None or 'bfloat16', got " + want);
    if (a.itemsize() != 2)
      throw py::value_error(name + " has " + std::to_string(a.itemsize()) +
                            "-byte items but dtype=bfloat16");
    return DType::kBFloat16;
  }
  if (kind == "float32") return DType::kFloat32;
  if (kind == "float64") return DType::kFloat64;
  if (kind == "float16") return DType::kFloat16;
  if (kind == "bfloat16") return DType::kBFloat16;  // ml_dtypes
  throw py::type_error(name + " has dtype " + kind +
                       ": need float32, float64, float16 or bfloat16");
}

std::vector<py::handle> as_list(const py::object& obj, const char* what) {
  if (!py::isinstance<py::list>(obj) && !py::isinstance<py::tuple>(obj))
    throw py::type_error(std::string(what) + " must be a list of arrays");
  std::vector<py::handle> out;
  for (auto v : py::sequence(obj)) out.push_back(v);
  return out;
}

void apply(const py::object& var, const py::object& sum, const py::object& count,
           const py::object& momentum, const py::object& grad, double lr,
           double beta, double epsilon, int64_t step, const std::string& lr_dtype,
           const py::object& dtype) {
  if (!(beta >= 0 && beta < 1) || !(epsilon > 0))
    throw py::value_error("need 0 <= beta < 1 and epsilon > 0");
  if (lr_dtype != "float32" && lr_dtype != "float64")
    throw py::value_error("lr_dtype must be 'float32' or 'float64'");
  const auto vars = as_list(var, "var"), sums = as_list(sum, "sum"),
             grads = as_list(grad, "grad");
  const size_t n = vars.size();
  if (sums.size() != n || grads.size() != n)
    throw py::value_error("var, sum and grad must be lists of equal length");
  const bool has_cnt = !count.is_none(), has_mom = !momentum.is_none();
  std::vector<py::handle> cnts, moms;
  if (has_cnt) cnts = as_list(count, "count");
  if (has_mom) moms = as_list(momentum, "momentum");
  if ((has_cnt && cnts.size() != n) || (has_mom && moms.size() != n))
    throw py::value_error("count and momentum must be None or lists like var");
  std::vector<RawChunk> chunks;
  DType dt = DType::kFloat32;
  for (size_t i = 0; i < n; ++i) {
    py::array v = as_array(vars[i], label("var", i), true);
    const DType vt = storage_dtype(v, label("var", i), dtype);
    if (i == 0) dt = vt;
    if (vt != dt)
      throw py::value_error(label("var", i) + " is " + dtype_name(vt) + " but var[0] is " +
                            dtype_name(dt));
    auto like_var = [&](py::handle o, const char* what, bool writable) {
      py::array a = as_array(o, label(what, i), writable);
      if (storage_dtype(a, label(what, i), dtype) != dt || a.size() != v.size())
        throw py::value_error(label(what, i) + " must be " + dtype_name(dt) +
                              " with as many elements as var[" + std::to_string(i) + "]");
      return a;
    };
    auto state = [&](py::handle o, const char* what) {
      py::array a = as_array(o, label(what, i), true);
      const std::string want = dt == DType::kFloat64 ? "float64" : "float32";
      if (std::string(py::str(a.dtype())) != want || a.size() != v.size())
        throw py::value_error(label(what, i) + " must be " + want +
                              " with as many elements as var[" + std::to_string(i) + "]");
      return a;
    };
    RawChunk c{};
    c.var = v.mutable_data();
    c.sum = state(sums[i], "sum").mutable_data();
    c.cnt = has_cnt ? state(cnts[i], "count").mutable_data() : nullptr;
    c.mom = has_mom ? like_var(moms[i], "momentum", true).mutable_data() : nullptr;
    c.grad = like_var(grads[i], "grad", false).data();
    c.size = v.size();
    chunks.push_back(c);
  }
  // The "device" scalars: lr in its dtype and the step, as the TF op has them.
  const float lr32 = static_cast<float>(lr);
  const double lr64 = lr;
  const int64_t step_dev = step;
  expectigrad::cuda::DeviceScalars scalars;
  scalars.lr_type = lr_dtype == "float64" ? expectigrad::cuda::ScalarType::kFloat64
                                          : expectigrad::cuda::ScalarType::kFloat32;
  scalars.lr = scalars.lr_type == expectigrad::cuda::ScalarType::kFloat64
                   ? static_cast<const void*>(&lr64)
                   : static_cast<const void*>(&lr32);
  scalars.step = &step_dev;
  scalars.beta = beta;
  scalars.epsilon = epsilon;
  const int err = expectigrad::cuda::launch_update(dt, chunks.data(), int(chunks.size()),
                                                   scalars, nullptr);
  if (err != 0)
    throw std::runtime_error(std::string("launch_update failed: ") +
                             expectigrad::cuda::error_string(err));
}

}  // namespace

PYBIND11_MODULE(_harness_emulated, m) {
  m.doc() =
      "The CUDA kernel's source (csrc/cuda/expectigrad_kernel.cu) compiled as C++ "
      "with an emulated launch, on NumPy arrays: tests indexing and chunking, not "
      "the GPU. See csrc/harness/harness_emulated.cc.";
  m.def("apply", &apply, py::arg("var"), py::arg("sum"), py::arg("count"),
        py::arg("momentum"), py::arg("grad"), py::arg("lr"), py::arg("beta"),
        py::arg("epsilon"), py::arg("step"), py::arg("lr_dtype") = "float32",
        py::arg("dtype") = py::none(),
        "One step through launch_update with lr/step in (emulated) device memory.");
  m.def("set_max_blocks", &expectigrad::cuda::set_max_blocks_for_testing,
        py::arg("max_blocks"), "Caps the grid (0: the default, 8 per multiprocessor).");
  m.def("set_multiprocessors",
        [](int n) {
          if (n < 1) throw py::value_error("need at least one multiprocessor");
          expectigrad_emulation::state().multiprocessors = n;
        },
        py::arg("n"),
        "Multiprocessors the emulated device reports. The launcher reads this "
        "once (its first launch) and caches it, as on a GPU.");
  m.def("stats", [] {
    const auto& s = expectigrad_emulation::state();
    py::dict d;
    d["launches"] = s.launches;
    d["min_grid"] = s.min_grid;
    d["max_grid"] = s.max_grid;
    d["threads"] = s.threads;
    d["multiprocessors"] = s.multiprocessors;
    return d;
  });
  m.def("reset_stats", &expectigrad_emulation::reset_counters);
  m.attr("THREADS_PER_BLOCK") = 256;
  m.attr("MAX_TENSORS_PER_LAUNCH") = 40;
}
