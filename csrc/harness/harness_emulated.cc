// pybind11 module `_harness_emulated`: the CUDA launcher and kernel of
// csrc/cuda/expectigrad_kernel.cu, compiled as plain C++ with
// csrc/cuda/emulation/cuda_emulation.h force-included (every block and thread
// run in turn on the CPU), on NumPy arrays standing in for device memory.
// Built by tools/build_harness.py on any machine with CUDA's headers (no nvcc
// or GPU needed); tested in tests/kernels/test_emulated.py. It checks the
// kernel's indexing, chunking and launch logic, not the GPU memory model.
//
//   apply(var, sum, count, momentum, grad, lr, beta, epsilon, step,
//         lr_dtype="float32", dtype=None, corrupt=None) -> dict (the report)
//   set_max_blocks(n)        cap the grid (0: default, 8 per multiprocessor)
//   set_device(d)            the emulated current device (0-7)
//   set_multiprocessors(n, device=None)  what a device reports (default 2)
//   fail_launch(after)       the launch after `after` successful ones fails
//                            (-1: none)
//   set_last_error(code)     leave an error pending, as an earlier call would
//   stats() -> dict          launches, min_grid, max_grid, threads since reset;
//                            device, attribute_queries, last_error (peeked)
//   last_launch_params() -> list of bytes, one per kernel parameter
//   reset_stats()
//
// Arrays: var/grad float32, float64, float16, or bfloat16 (an ml_dtypes
// bfloat16 array, or uint16 bit patterns with dtype="bfloat16"); the state
// sum/count/momentum float32 (float64 for float64 variables); all
// C-contiguous (views at any element offset are fine) and as long as their
// var. count is None without the sparse counter and momentum None for
// beta == 0. An empty array is passed to the launcher with null pointers, as
// TensorFlow and XLA may.
//
// corrupt (testing the launcher's validation): a list of (field, index,
// value) applied to the chunks after the arguments are checked: field
// "var"/"sum"/"count"/"momentum"/"grad" with value 0 sets that pointer to
// null, any other value adds that many bytes to it; "size" sets the element
// count. Use only values that validation must reject.
//
// Errors: bad arguments raise TypeError/ValueError naming the argument;
// input the launcher rejects raises ValueError, a failed launch RuntimeError,
// with expectigrad::cuda::describe's text.
//
// lr and step are NOT validated here (beta and epsilon are): they are put in
// "device" memory as lr_dtype / int64 and handed to launch_update, so the
// kernel's own check (nothing changes when lr is not finite or < 0, or
// step < 1) is what the tests see.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <tuple>
#include <type_traits>
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
    throw py::type_error(name + " must be a NumPy array, got " +
                         std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(name + " must be C-contiguous");
  if (writable && !a.writeable()) throw py::value_error(name + " is read-only");
  return a;
}

// The storage dtype of var/grad arrays.
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
    throw py::type_error(std::string(what) + " must be a list of arrays, got " +
                         std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
  std::vector<py::handle> out;
  for (auto v : py::sequence(obj)) out.push_back(v);
  return out;
}

// The data pointer of an array, null when it is empty (as TF/XLA may pass).
void* data_or_null(const py::array& a) {
  return a.size() == 0 ? nullptr : const_cast<void*>(a.data());
}

void corrupt_chunks(std::vector<RawChunk>* chunks, const py::object& corrupt) {
  if (corrupt.is_none()) return;
  for (auto item : py::sequence(corrupt)) {
    auto t = item.cast<std::tuple<std::string, int64_t, int64_t>>();
    const std::string& field = std::get<0>(t);
    const int64_t i = std::get<1>(t), value = std::get<2>(t);
    if (i < 0 || i >= int64_t(chunks->size()))
      throw py::value_error("corrupt: index " + std::to_string(i) + " out of range");
    RawChunk& c = (*chunks)[size_t(i)];
    auto set = [value](auto*& p) {
      using P = std::remove_reference_t<decltype(p)>;
      p = value == 0 ? nullptr
                     : reinterpret_cast<P>(reinterpret_cast<uintptr_t>(p) + uintptr_t(value));
    };
    if (field == "var") set(c.var);
    else if (field == "sum") set(c.sum);
    else if (field == "count") set(c.cnt);
    else if (field == "momentum") set(c.mom);
    else if (field == "grad") set(c.grad);
    else if (field == "size") c.size = value;
    else throw py::value_error("corrupt: unknown field '" + field + "'");
  }
}

py::dict report_dict(const expectigrad::cuda::LaunchReport& r) {
  py::dict d;
  d["stage"] = r.stage == expectigrad::cuda::LaunchReport::kOk
                   ? "ok"
                   : (r.stage == expectigrad::cuda::LaunchReport::kInvalid ? "invalid"
                                                                           : "launch");
  d["code"] = r.code;
  d["launches_planned"] = r.launches_planned;
  d["launches_queued"] = r.launches_queued;
  d["chunk"] = r.chunk;
  d["reason"] = std::string(r.reason);
  return d;
}

py::dict apply(const py::object& var, const py::object& sum, const py::object& count,
               const py::object& momentum, const py::object& grad, double lr,
               double beta, double epsilon, int64_t step, const std::string& lr_dtype,
               const py::object& dtype, const py::object& corrupt) {
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
    // sum, count and momentum: the state dtype of the variable.
    auto state = [&](py::handle o, const char* what) {
      py::array a = as_array(o, label(what, i), true);
      const std::string want = dt == DType::kFloat64 ? "float64" : "float32";
      const std::string got = py::str(a.dtype());
      if (got != want || a.size() != v.size())
        throw py::value_error(label(what, i) + " must be " + want + " (the state dtype of " +
                              dtype_name(dt) + " variables) with as many elements as var[" +
                              std::to_string(i) + "], got " + got + " with " +
                              std::to_string(a.size()));
      return a;
    };
    RawChunk c{};
    c.var = data_or_null(v);
    c.sum = data_or_null(state(sums[i], "sum"));
    c.cnt = has_cnt ? data_or_null(state(cnts[i], "count")) : nullptr;
    c.mom = has_mom ? data_or_null(state(moms[i], "momentum")) : nullptr;
    c.grad = data_or_null(like_var(grads[i], "grad", false));
    c.size = v.size();
    chunks.push_back(c);
  }
  corrupt_chunks(&chunks, corrupt);
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
  expectigrad::cuda::LaunchReport report;
  const int err = expectigrad::cuda::launch_update(dt, chunks.data(), int(chunks.size()),
                                                   scalars, nullptr, &report);
  if (err != 0) {
    const std::string what = "launch_update: " + expectigrad::cuda::describe(report);
    if (report.stage == expectigrad::cuda::LaunchReport::kInvalid) throw py::value_error(what);
    throw std::runtime_error(what);
  }
  return report_dict(report);
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
        py::arg("dtype") = py::none(), py::arg("corrupt") = py::none(),
        "One step through launch_update with lr/step in (emulated) device memory; "
        "returns launch_update's report as a dict.");
  m.def("set_max_blocks", &expectigrad::cuda::set_max_blocks_for_testing,
        py::arg("max_blocks"), "Caps the grid (0: the default, 8 per multiprocessor).");
  using expectigrad_emulation::State;
  auto check_device = [](int d) {
    if (d < 0 || d >= State::kDevices)
      throw py::value_error("device must be in [0, " + std::to_string(State::kDevices) +
                            "), got " + std::to_string(d));
  };
  m.def("set_device",
        [check_device](int d) {
          check_device(d);
          expectigrad_emulation::state().device = d;
        },
        py::arg("device"), "The emulated current device (cudaGetDevice).");
  m.def("set_multiprocessors",
        [check_device](int n, const py::object& device) {
          if (n < 1) throw py::value_error("need at least one multiprocessor");
          auto& s = expectigrad_emulation::state();
          const int d = device.is_none() ? s.device : device.cast<int>();
          check_device(d);
          s.multiprocessors[d] = n;
        },
        py::arg("n"), py::arg("device") = py::none(),
        "Multiprocessors an emulated device reports (default: the current one). "
        "The launcher reads it on its first launch on that device and caches it, "
        "as on a GPU.");
  m.def("fail_launch",
        [](int64_t after) { expectigrad_emulation::state().fail_after = after < 0 ? -1 : after; },
        py::arg("after"),
        "The launch after `after` more successful ones fails with "
        "cudaErrorLaunchFailure and runs nothing (-1: no failure).");
  m.def("set_last_error",
        [](int code) { expectigrad_emulation::state().last_error = cudaError_t(code); },
        py::arg("code"),
        "Leaves an error pending for cudaGetLastError(), as an unrelated earlier "
        "runtime call on this thread would (0 clears it).");
  m.def("last_launch_params", [] {
    py::list out;
    for (const auto& p : expectigrad_emulation::state().last_params) out.append(py::bytes(p));
    return out;
  }, "The bytes of each kernel parameter of the last successful launch.");
  m.def("stats", [] {
    const auto& s = expectigrad_emulation::state();
    py::dict d;
    d["launches"] = s.launches;
    d["min_grid"] = s.min_grid;
    d["max_grid"] = s.max_grid;
    d["threads"] = s.threads;
    d["device"] = s.device;
    d["multiprocessors"] = s.multiprocessors[s.device];
    d["attribute_queries"] = s.attribute_queries;
    d["last_error"] = int(s.last_error);
    return d;
  });
  m.def("reset_stats", &expectigrad_emulation::reset_counters);
  m.attr("THREADS_PER_BLOCK") = 256;
  m.attr("MAX_TENSORS_PER_LAUNCH") = 40;
  m.attr("DEVICES") = State::kDevices;
}
