// pybind11 module `_harness_cuda`: the CUDA launcher of csrc/cuda on device
// buffers from any library that exports __cuda_array_interface__ (CuPy,
// PyTorch, Numba...), with no TensorFlow. Built by tools/build_harness.py
// (host compiler for this file, nvcc for expectigrad_kernel.cu, CUDA's
// runtime linked statically so the module imports on machines without CUDA)
// and used by tools/gpu_check.
//
//   apply_cuda(var, sum, count, momentum, grad, lr, beta, epsilon, step,
//              stream=0, dtype=None, lr_dtype="float64")
//   prepare_cuda(var, sum, count, momentum, grad, dtype=None) -> Plan
//   Plan.apply(lr, beta, epsilon, step, stream=0, lr_dtype="float64")
//   set_max_blocks(n)  (testing: cap the grid; 0 = default)
//   copy(dst, src, stream=0), synchronize(stream=None)
//   device_count(), device_info(device=0), runtime_version(), driver_version()
//
// Arrays: var/grad in float32, float64, float16 or bfloat16, all the same
// dtype; the state sum/count/momentum in float32 (float64 for float64
// variables); every array C-contiguous with the same shape as its var; count
// is None without the sparse counter and momentum None for beta == 0, as in
// apply_cpu.
//
// dtype of var/grad, in this order:
//   1. the `dtype` argument when given ("float32", "float64", "float16",
//      "bfloat16", or a NumPy/PyTorch dtype whose str() names one): the data
//      are reinterpreted, only the item size must match. Use it for bfloat16
//      data held in a uint16 array (CuPy has no bfloat16).
//   2. an object whose `dtype` attribute prints as "torch.bfloat16" or
//      "bfloat16" is bfloat16 (older PyTorch exports bfloat16 tensors with
//      typestr "<f2", the same as float16);
//   3. the typestr: "<f4", "<f8", "<f2", and "<V2" = bfloat16 (what recent
//      PyTorch and ml_dtypes use).
//
// Streams: kernels run on `stream` (a cudaStream_t as an int, or an object
// with `cuda_stream` (PyTorch) or `ptr` (CuPy); 0 = the legacy default
// stream). An array's interface "stream" (version 3), when it names another
// stream, is waited on with an event before the launch (no host blocking).
//
// lr and step: the launcher reads them from device memory (as the TF op
// does). They are validated here on the host, then written to a small device
// buffer on the launch stream (from pinned memory, no host sync) before the
// launch; lr is stored as lr_dtype (float64 or float32, as Keras may hold it).
//
// Errors: bad arguments raise ValueError/TypeError naming the argument and
// index (checked before any CUDA call); CUDA failures, including "no GPU",
// raise RuntimeError. Device pointers are not checked to be on the current
// device.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
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

int dtype_size(DType d) {
  switch (d) {
    case DType::kFloat64: return 8;
    case DType::kFloat32: return 4;
    default: return 2;
  }
}

std::string label(const char* what, size_t i) {
  return std::string(what) + "[" + std::to_string(i) + "]";
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::ostringstream o;
  o << "(";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  if (s.size() == 1) o << ",";
  o << ")";
  return o.str();
}

// Parsed __cuda_array_interface__ of one argument.
struct Interface {
  uintptr_t ptr = 0;
  bool readonly = false;
  std::vector<int64_t> shape;
  int64_t size = 1;
  std::string typestr;
  char kind = 0;
  int itemsize = 0;
  bool has_stream = false;
  uintptr_t stream = 0;
};

Interface parse(py::handle obj, const std::string& what, bool writable) {
  py::object cai;
  try {
    cai = obj.attr("__cuda_array_interface__");
  } catch (py::error_already_set& e) {
    throw py::value_error(
        what + " must be a device array exposing __cuda_array_interface__ "
        "(a CuPy array, a PyTorch CUDA tensor, a Numba device array...); got " +
        std::string(py::str(py::type::handle_of(obj).attr("__name__"))) +
        " (" + e.what() + ")");
  }
  if (!py::isinstance<py::dict>(cai))
    throw py::value_error(what + ": __cuda_array_interface__ is not a dict");
  py::dict d = cai.cast<py::dict>();
  Interface r;
  try {
    if (!d.contains("shape") || !d.contains("typestr") || !d.contains("data"))
      throw py::value_error("");
    for (auto v : py::tuple(d["shape"])) r.shape.push_back(v.cast<int64_t>());
    r.typestr = d["typestr"].cast<std::string>();
    py::tuple data(d["data"]);
    if (data.size() != 2) throw py::value_error("");
    r.ptr = data[0].cast<uintptr_t>();
    r.readonly = data[1].cast<bool>();
  } catch (py::error_already_set&) {
    throw py::value_error(what + ": malformed __cuda_array_interface__ "
                          "(needs shape, typestr and data=(ptr, readonly))");
  } catch (py::cast_error&) {
    throw py::value_error(what + ": malformed __cuda_array_interface__ "
                          "(needs shape, typestr and data=(ptr, readonly))");
  } catch (py::value_error&) {
    throw py::value_error(what + ": malformed __cuda_array_interface__ "
                          "(needs shape, typestr and data=(ptr, readonly))");
  }
  if (d.contains("mask") && !d["mask"].is_none())
    throw py::value_error(what + ": masked arrays are not supported");
  const std::string& ts = r.typestr;
  if (ts.size() < 3 || (ts[0] != '<' && ts[0] != '|' && ts[0] != '=') ||
      ts.find_first_not_of("0123456789", 2) != std::string::npos)
    throw py::value_error(what + " has typestr '" + ts +
                          "': need a little-endian numeric type");
  r.kind = ts[1];
  r.itemsize = std::stoi(ts.substr(2));
  for (int64_t n : r.shape) {
    if (n < 0) throw py::value_error(what + " has a negative dimension");
    r.size *= n;
  }
  if (r.size > 0 && d.contains("strides") && !d["strides"].is_none()) {
    std::vector<int64_t> strides;
    for (auto v : py::tuple(d["strides"])) strides.push_back(v.cast<int64_t>());
    if (strides.size() != r.shape.size())
      throw py::value_error(what + ": strides and shape differ in length");
    int64_t expect = r.itemsize;
    for (size_t k = r.shape.size(); k-- > 0;) {
      if (r.shape[k] != 1 && strides[k] != expect)
        throw py::value_error(what + " must be C-contiguous (shape " +
                              shape_str(r.shape) + ", strides " +
                              shape_str(strides) + ")");
      expect *= r.shape[k];
    }
  }
  if (r.size > 0 && r.ptr == 0)
    throw py::value_error(what + " has a null data pointer");
  if (writable && r.readonly)
    throw py::value_error(what + " is read-only; it is updated in place");
  if (d.contains("stream") && !d["stream"].is_none()) {
    r.has_stream = true;
    r.stream = d["stream"].cast<uintptr_t>();
  }
  return r;
}

// The dtype named by a `dtype=` argument (a string, NumPy or PyTorch dtype).
DType dtype_from_name(const py::handle& obj) {
  std::string s = py::str(obj);
  if (s.rfind("torch.", 0) == 0) s = s.substr(6);
  if (s == "float32" || s == "float") return DType::kFloat32;
  if (s == "float64" || s == "double") return DType::kFloat64;
  if (s == "float16" || s == "half") return DType::kFloat16;
  if (s == "bfloat16") return DType::kBFloat16;
  throw py::value_error("dtype must be float32, float64, float16 or bfloat16, got '" +
                        std::string(py::str(obj)) + "'");
}

// The dtype of a var/grad argument (see the header comment).
DType resolve_dtype(py::handle obj, const Interface& a, const std::string& what,
                    const py::object& override_dtype) {
  if (!override_dtype.is_none()) {
    const DType dt = dtype_from_name(override_dtype);
    if (a.itemsize != dtype_size(dt))
      throw py::value_error(what + " has typestr '" + a.typestr + "' (" +
                            std::to_string(a.itemsize) + "-byte items) but dtype=" +
                            dtype_name(dt) + " needs " +
                            std::to_string(dtype_size(dt)) + "-byte items");
    return dt;
  }
  py::object attr = py::getattr(obj, "dtype", py::none());
  if (!attr.is_none()) {
    std::string s = py::str(attr);
    if (s == "torch.bfloat16" || s == "bfloat16") {
      if (a.itemsize != 2)
        throw py::value_error(what + " is bfloat16 but has typestr '" + a.typestr + "'");
      return DType::kBFloat16;
    }
  }
  const std::string code = a.typestr.substr(1);
  if (code == "f4") return DType::kFloat32;
  if (code == "f8") return DType::kFloat64;
  if (code == "f2") return DType::kFloat16;
  if (code == "V2") return DType::kBFloat16;
  throw py::value_error(what + " has typestr '" + a.typestr +
                        "': var/grad must be float32, float64, float16 "
                        "or bfloat16 (for bfloat16 stored in another 2-byte type, "
                        "pass dtype='bfloat16')");
}

std::vector<py::object> as_list(const py::object& obj, const char* what) {
  if (!py::isinstance<py::list>(obj) && !py::isinstance<py::tuple>(obj))
    throw py::type_error(std::string(what) + " must be a list of device arrays, got " +
                         std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
  std::vector<py::object> out;
  for (auto v : py::sequence(obj)) out.push_back(py::reinterpret_borrow<py::object>(v));
  return out;
}

void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    cudaGetLastError();  // reset a non-sticky error for later calls
    throw std::runtime_error(std::string("expectigrad _harness_cuda: ") + what +
                             " failed: " + cudaGetErrorName(err) + ": " +
                             cudaGetErrorString(err));
  }
}

// Raises RuntimeError unless a CUDA device can be used. Cached once true.
void ensure_device() {
  static bool ok = false;
  if (ok) return;
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();
    throw std::runtime_error(
        std::string("expectigrad _harness_cuda: no usable CUDA device "
                    "(cudaGetDeviceCount: ") +
        cudaGetErrorName(err) + ": " + cudaGetErrorString(err) +
        "); is there a GPU, with an NVIDIA driver that supports CUDA " +
        std::to_string(CUDART_VERSION / 1000) + "." +
        std::to_string(CUDART_VERSION % 1000 / 10) + "?");
  }
  if (n == 0)
    throw std::runtime_error("expectigrad _harness_cuda: no CUDA device found");
  ok = true;
}

uintptr_t stream_handle(const py::object& s) {
  if (s.is_none()) return 0;
  if (py::hasattr(s, "cuda_stream")) return s.attr("cuda_stream").cast<uintptr_t>();
  if (py::hasattr(s, "ptr")) return s.attr("ptr").cast<uintptr_t>();
  try {
    return s.cast<uintptr_t>();
  } catch (py::cast_error&) {
    throw py::type_error("stream must be an int (cudaStream_t), None, or a "
                         "PyTorch/CuPy stream object");
  }
}

// 0 and 1 both name the legacy default stream.
bool same_stream(uintptr_t a, uintptr_t b) {
  auto norm = [](uintptr_t s) { return s == 1 ? uintptr_t(0) : s; };
  return norm(a) == norm(b);
}

// lr and step in device memory for each launch. Per device, a ring of slots:
// the values are written to a pinned host slot, copied to the device slot on
// the launch stream, and the kernel reads the device slot. An event recorded
// after the launch guards each slot: it is reused only once that launch is
// done, so neither the pinned source nor the device copy is overwritten while
// a pending copy or kernel (on any stream) may still read it.
struct ScalarSlot {
  double lr64;
  float lr32;
  int32_t pad;
  int64_t step;
};

class ScalarRing {
 public:
  static constexpr int kSlots = 64;

  // Stages (lr, step) on `stream`; fills `scalars` with device pointers.
  // The caller launches, then calls launched(stream).
  void stage(double lr, bool lr_f64, int64_t step, cudaStream_t stream,
             expectigrad::cuda::DeviceScalars* scalars) {
    init();
    slot_ = next_;
    next_ = (next_ + 1) % kSlots;
    if (recorded_[slot_])
      check_cuda(cudaEventSynchronize(events_[slot_]), "cudaEventSynchronize");
    ScalarSlot& h = host_[slot_];
    h.lr64 = lr;
    h.lr32 = static_cast<float>(lr);
    h.pad = 0;
    h.step = step;
    check_cuda(cudaMemcpyAsync(dev_ + slot_, &h, sizeof(ScalarSlot),
                               cudaMemcpyHostToDevice, stream),
               "cudaMemcpyAsync (scalars)");
    ScalarSlot* d = dev_ + slot_;
    scalars->lr = lr_f64 ? static_cast<const void*>(&d->lr64)
                         : static_cast<const void*>(&d->lr32);
    scalars->lr_type = lr_f64 ? expectigrad::cuda::ScalarType::kFloat64
                              : expectigrad::cuda::ScalarType::kFloat32;
    scalars->step = &d->step;
  }

  void launched(cudaStream_t stream) {
    check_cuda(cudaEventRecord(events_[slot_], stream), "cudaEventRecord");
    recorded_[slot_] = true;
  }

 private:
  void init() {
    if (dev_ != nullptr) return;
    check_cuda(cudaMallocHost(reinterpret_cast<void**>(&host_),
                              kSlots * sizeof(ScalarSlot)), "cudaMallocHost");
    check_cuda(cudaMalloc(reinterpret_cast<void**>(&dev_), kSlots * sizeof(ScalarSlot)),
               "cudaMalloc");
    for (int i = 0; i < kSlots; ++i)
      check_cuda(cudaEventCreateWithFlags(&events_[i], cudaEventDisableTiming),
                 "cudaEventCreate");
  }

  ScalarSlot* host_ = nullptr;  // pinned
  ScalarSlot* dev_ = nullptr;
  cudaEvent_t events_[kSlots];
  bool recorded_[kSlots] = {};
  int next_ = 0, slot_ = 0;
};

// Launches with lr/step staged through the current device's ring (kept for
// the life of the process). Serialised: the rings are shared.
int launch_with_scalars(DType dtype, const std::vector<RawChunk>& chunks, double lr,
                        bool lr_f64, int64_t step, double beta, double epsilon,
                        cudaStream_t stream, expectigrad::cuda::LaunchReport* report) {
  static std::mutex mu;
  static std::map<int, ScalarRing>* rings = new std::map<int, ScalarRing>();
  std::lock_guard<std::mutex> lock(mu);
  int device = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  ScalarRing& ring = (*rings)[device];
  expectigrad::cuda::DeviceScalars scalars;
  scalars.beta = beta;
  scalars.epsilon = epsilon;
  ring.stage(lr, lr_f64, step, stream, &scalars);
  const int err = expectigrad::cuda::launch_update(
      dtype, chunks.data(), int(chunks.size()), scalars, stream, report);
  // The slot is guarded by an event whenever a kernel may read it.
  if (err == 0) {
    ring.launched(stream);
  } else if (report->launches_queued > 0) {
    try {
      ring.launched(stream);  // best effort: the launch error is what counts
    } catch (const std::runtime_error&) {
    }
  }
  return err;
}

bool parse_lr_dtype(const std::string& lr_dtype) {
  if (lr_dtype == "float64") return true;
  if (lr_dtype == "float32") return false;
  throw py::value_error("lr_dtype must be 'float64' or 'float32', got '" + lr_dtype + "'");
}

class Plan {
 public:
  Plan(const py::object& var, const py::object& sum, const py::object& count,
       const py::object& momentum, const py::object& grad,
       const py::object& dtype) {
    const auto vars = as_list(var, "var");
    const auto sums = as_list(sum, "sum");
    const auto grads = as_list(grad, "grad");
    const size_t n = vars.size();
    if (sums.size() != n || grads.size() != n)
      throw py::value_error("var, sum and grad must be lists of equal length (got " +
                            std::to_string(n) + ", " + std::to_string(sums.size()) +
                            ", " + std::to_string(grads.size()) + ")");
    has_cnt_ = !count.is_none();
    has_mom_ = !momentum.is_none();
    std::vector<py::object> cnts, moms;
    if (has_cnt_) cnts = as_list(count, "count");
    if (has_mom_) moms = as_list(momentum, "momentum");
    if (has_cnt_ && cnts.size() != n)
      throw py::value_error("count must be None or a list as long as var (got " +
                            std::to_string(cnts.size()) + ", var has " +
                            std::to_string(n) + ")");
    if (has_mom_ && moms.size() != n)
      throw py::value_error("momentum must be None or a list as long as var (got " +
                            std::to_string(moms.size()) + ", var has " +
                            std::to_string(n) + ")");
    dtype_ = DType::kFloat32;
    if (n == 0 && !dtype.is_none()) dtype_ = dtype_from_name(dtype);
    for (size_t i = 0; i < n; ++i) {
      const Interface v = parse(vars[i], label("var", i), true);
      const DType vt = resolve_dtype(vars[i], v, label("var", i), dtype);
      if (i == 0) dtype_ = vt;
      else if (vt != dtype_)
        throw py::value_error(label("var", i) + " is " + dtype_name(vt) +
                              " but var[0] is " + dtype_name(dtype_) +
                              "; one call takes one dtype");
      RawChunk c{};
      c.var = reinterpret_cast<void*>(v.ptr);
      c.size = v.size;
      note_stream(v);
      auto like_var = [&](const py::object& o, const char* what, bool writable) {
        const std::string name = label(what, i);
        const Interface a = parse(o, name, writable);
        const DType t = resolve_dtype(o, a, name, dtype);
        if (t != dtype_)
          throw py::value_error(name + " is " + dtype_name(t) + " but var[" +
                                std::to_string(i) + "] is " + dtype_name(dtype_));
        check_shape(a, v, name, i);
        note_stream(a);
        return a.ptr;
      };
      // sum, count and momentum: the state dtype of the variable.
      auto state = [&](const py::object& o, const char* what) {
        const std::string name = label(what, i);
        const Interface a = parse(o, name, true);
        const bool f64 = dtype_ == DType::kFloat64;
        if (a.kind != 'f' || a.itemsize != (f64 ? 8 : 4))
          throw py::value_error(name + " has typestr '" + a.typestr + "' but " +
                                what + " must be " + (f64 ? "float64" : "float32") +
                                " for " + dtype_name(dtype_) + " variables");
        check_shape(a, v, name, i);
        note_stream(a);
        return a.ptr;
      };
      c.sum = reinterpret_cast<void*>(state(sums[i], "sum"));
      c.cnt = has_cnt_ ? reinterpret_cast<void*>(state(cnts[i], "count")) : nullptr;
      c.mom = has_mom_ ? reinterpret_cast<void*>(state(moms[i], "momentum")) : nullptr;
      c.grad = reinterpret_cast<const void*>(like_var(grads[i], "grad", false));
      chunks_.push_back(c);
      total_ += c.size;
    }
    // Keep the arrays alive as long as the plan holds their pointers.
    keep_ = py::make_tuple(var, sum, count, momentum, grad);
  }

  void apply(double lr, double beta, double epsilon, int64_t step,
             const py::object& stream, const std::string& lr_dtype) {
    // The kernel would silently skip an invalid lr/step: reject it here.
    if (!(std::isfinite(lr) && lr >= 0) || !(beta >= 0 && beta < 1) ||
        !(std::isfinite(epsilon) && epsilon > 0) || step < 1)
      throw py::value_error("need finite lr >= 0, 0 <= beta < 1, epsilon > 0, step >= 1");
    const bool lr_f64 = parse_lr_dtype(lr_dtype);
    if (chunks_.empty()) return;
    const uintptr_t s = stream_handle(stream);
    ensure_device();
    for (uintptr_t p : producer_streams_) {
      if (same_stream(p, s)) continue;
      cudaEvent_t ev;
      check_cuda(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "cudaEventCreate");
      cudaError_t err = cudaEventRecord(ev, reinterpret_cast<cudaStream_t>(p));
      if (err == cudaSuccess)
        err = cudaStreamWaitEvent(reinterpret_cast<cudaStream_t>(s), ev, 0);
      cudaEventDestroy(ev);
      check_cuda(err, "waiting on an array's stream");
    }
    int err;
    expectigrad::cuda::LaunchReport report;
    {
      py::gil_scoped_release release;
      // Without a momentum slot the step has no bias correction (beta == 0),
      // exactly as apply_cpu.
      err = launch_with_scalars(dtype_, chunks_, lr, lr_f64, step, has_mom_ ? beta : 0.0,
                                epsilon, reinterpret_cast<cudaStream_t>(s), &report);
    }
    if (err != 0)
      throw std::runtime_error("expectigrad _harness_cuda: launch_update: " +
                               expectigrad::cuda::describe(report));
  }

  int num_tensors() const { return int(chunks_.size()); }
  int64_t num_elements() const { return total_; }
  std::string dtype() const { return dtype_name(dtype_); }
  bool has_count() const { return has_cnt_; }
  bool has_momentum() const { return has_mom_; }

 private:
  static void check_shape(const Interface& a, const Interface& v,
                          const std::string& name, size_t i) {
    if (a.shape != v.shape)
      throw py::value_error(name + " has shape " + shape_str(a.shape) + " but var[" +
                            std::to_string(i) + "] has shape " + shape_str(v.shape));
  }
  void note_stream(const Interface& a) {
    if (a.has_stream && a.stream != 0) producer_streams_.insert(a.stream);
  }

  DType dtype_;
  bool has_cnt_ = false, has_mom_ = false;
  std::vector<RawChunk> chunks_;
  int64_t total_ = 0;
  std::set<uintptr_t> producer_streams_;
  py::object keep_;
};

void apply_cuda(const py::object& var, const py::object& sum, const py::object& count,
                const py::object& momentum, const py::object& grad, double lr,
                double beta, double epsilon, int64_t step, const py::object& stream,
                const py::object& dtype, const std::string& lr_dtype) {
  Plan plan(var, sum, count, momentum, grad, dtype);
  plan.apply(lr, beta, epsilon, step, stream, lr_dtype);
}

void copy(const py::object& dst, const py::object& src, const py::object& stream) {
  const Interface d = parse(dst, "dst", true);
  const Interface s = parse(src, "src", false);
  const int64_t db = d.size * d.itemsize, sb = s.size * s.itemsize;
  if (db != sb)
    throw py::value_error("copy: dst has " + std::to_string(db) + " bytes, src has " +
                          std::to_string(sb));
  const uintptr_t h = stream_handle(stream);
  ensure_device();
  int err;
  {
    py::gil_scoped_release release;
    err = expectigrad::cuda::copy_async(reinterpret_cast<void*>(d.ptr),
                                        reinterpret_cast<const void*>(s.ptr), db,
                                        reinterpret_cast<void*>(h));
  }
  check_cuda(static_cast<cudaError_t>(err), "copy_async");
}

void synchronize(const py::object& stream) {
  const bool all = stream.is_none();
  const uintptr_t h = all ? 0 : stream_handle(stream);
  ensure_device();
  cudaError_t err;
  {
    py::gil_scoped_release release;
    err = all ? cudaDeviceSynchronize()
              : cudaStreamSynchronize(reinterpret_cast<cudaStream_t>(h));
  }
  check_cuda(err, all ? "cudaDeviceSynchronize" : "cudaStreamSynchronize");
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

py::dict device_info(int device) {
  ensure_device();
  cudaDeviceProp p;
  check_cuda(cudaGetDeviceProperties(&p, device), "cudaGetDeviceProperties");
  py::dict d;
  d["name"] = std::string(p.name);
  d["compute_capability"] = std::to_string(p.major) + "." + std::to_string(p.minor);
  d["multiprocessors"] = p.multiProcessorCount;
  d["total_memory_bytes"] = static_cast<int64_t>(p.totalGlobalMem);
  return d;
}

int runtime_version() {
  int v = 0;
  if (cudaRuntimeGetVersion(&v) != cudaSuccess) cudaGetLastError();
  return v;
}

int driver_version() {
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess) cudaGetLastError();
  return v;
}

}  // namespace

PYBIND11_MODULE(_harness_cuda, m) {
  m.doc() =
      "Expectigrad CUDA kernels without TensorFlow, on __cuda_array_interface__ "
      "arrays (CuPy, PyTorch, Numba).\n\n"
      "var/grad: float32, float64, float16 or bfloat16; sum/count/momentum: "
      "float32 (float64 for float64). bfloat16 is recognised by typestr '<V2' "
      "or an object whose dtype prints as torch.bfloat16; otherwise pass "
      "dtype='bfloat16' (e.g. for uint16 CuPy arrays holding bfloat16 bits). "
      "Kernels run on `stream` (0: legacy default); an array's interface "
      "stream is waited on with an event. Bad arguments raise ValueError or "
      "TypeError before any CUDA call; CUDA errors (and no GPU) raise "
      "RuntimeError. See csrc/harness/harness_cuda.cc.";
  py::class_<Plan>(m, "Plan",
                   "Validated device pointers for repeated launches; keeps the "
                   "arrays alive.")
      .def("apply", &Plan::apply, py::arg("lr"), py::arg("beta"), py::arg("epsilon"),
           py::arg("step"), py::arg("stream") = py::int_(0),
           py::arg("lr_dtype") = "float64",
           "Launches one Expectigrad step (asynchronous on `stream`); lr and step "
           "go to the kernel through device memory, lr as lr_dtype.")
      .def_property_readonly("num_tensors", &Plan::num_tensors)
      .def_property_readonly("num_elements", &Plan::num_elements)
      .def_property_readonly("dtype", &Plan::dtype)
      .def_property_readonly("has_count", &Plan::has_count)
      .def_property_readonly("has_momentum", &Plan::has_momentum);
  m.def(
      "prepare_cuda",
      [](const py::object& var, const py::object& sum, const py::object& count,
         const py::object& momentum, const py::object& grad, const py::object& dtype) {
        return Plan(var, sum, count, momentum, grad, dtype);
      },
      py::arg("var"), py::arg("sum"), py::arg("count"), py::arg("momentum"),
      py::arg("grad"), py::arg("dtype") = py::none(),
      "Validates the arrays once and returns a Plan whose apply() only launches.");
  m.def("apply_cuda", &apply_cuda, py::arg("var"), py::arg("sum"), py::arg("count"),
        py::arg("momentum"), py::arg("grad"), py::arg("lr"), py::arg("beta"),
        py::arg("epsilon"), py::arg("step"), py::arg("stream") = py::int_(0),
        py::arg("dtype") = py::none(), py::arg("lr_dtype") = "float64",
        "One Expectigrad step in place on lists of device arrays, launched "
        "asynchronously on `stream`. count and momentum may be None (sparse "
        "counter off / beta == 0). dtype overrides the var/grad dtype.");
  m.def("set_max_blocks", &expectigrad::cuda::set_max_blocks_for_testing,
        py::arg("max_blocks"),
        "Testing: caps the blocks per launch (0: default, 8 per multiprocessor), "
        "to force a grid smaller than the data.");
  m.def("copy", &copy, py::arg("dst"), py::arg("src"), py::arg("stream") = py::int_(0),
        "Device-to-device copy of src's bytes into dst (asynchronous).");
  m.def("synchronize", &synchronize, py::arg("stream") = py::none(),
        "Waits for the device (or for one stream).");
  m.def("device_count", &device_count, "Number of CUDA devices; 0 without a driver.");
  m.def("device_info", &device_info, py::arg("device") = 0);
  m.def("runtime_version", &runtime_version, "CUDA runtime version linked in.");
  m.def("driver_version", &driver_version, "CUDA driver version; 0 without a driver.");
  m.attr("CUDA_RUNTIME_VERSION") = CUDART_VERSION;
}
