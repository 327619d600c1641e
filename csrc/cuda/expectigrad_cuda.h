// Plain C++ interface to the CUDA kernels (no TensorFlow, no CUDA headers),
// so the TF op, the XLA lowering and the pybind11 harnesses call the same
// launcher.
#ifndef EXPECTIGRAD_CUDA_H_
#define EXPECTIGRAD_CUDA_H_

#include <cstdint>
#include <string>

namespace expectigrad {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

enum class ScalarType : int { kFloat32 = 0, kFloat64 = 1 };

// One tensor: var/grad in the storage dtype (`dtype`); sum/cnt/mom in the
// state dtype, float32 (float64 for kFloat64), each aligned to its element
// type. cnt and mom may be null.
struct RawChunk {
  void* var;
  void* sum;
  void* cnt;
  void* mom;
  const void* grad;
  int64_t size;
};

// The step's scalars. lr and step stay in DEVICE memory (Keras keeps the
// learning rate in a device variable and computes iterations + 1 on the
// device), so a launch never waits for the device. The kernel computes the
// bias correction from them on the device (make_step_scalars in
// expectigrad_update.h, in double, rounded once to the compute type).
// beta and epsilon are host constants. Without momentum slots (mom == null)
// beta is ignored: no bias correction.
struct DeviceScalars {
  const void* lr;        // device pointer: one float (kFloat32) or double (kFloat64)
  ScalarType lr_type;
  const int64_t* step;   // device pointer: the 1-based step t
  double beta;           // host constants
  double epsilon;
};

// What launch_update (or validate_update) did, for error messages: an
// optional out-parameter, filled on success and on failure.
struct LaunchReport {
  enum Stage : int {
    kOk = 0,       // every launch queued (or nothing to do)
    kInvalid = 1,  // rejected by validation: nothing was launched
    kLaunch = 2,   // a kernel launch failed (see launches_queued)
  };
  Stage stage = kOk;
  int code = 0;              // the value returned (a cudaError_t; 0 on success)
  int launches_planned = 0;  // kernel launches the call needs (0 if invalid)
  int launches_queued = 0;   // launches queued before a failure; all on success
  // kInvalid: the offending chunk, or -1 when no single chunk is at fault;
  // kLaunch: the first chunk of the launch that failed (earlier chunks were
  // in launches already queued).
  int chunk = -1;
  const char* reason = "";   // kInvalid: what is wrong (static text)
};

// Launches the update for all chunks on `stream` (a cudaStream_t; null is the
// default stream), asynchronously. Returns a cudaError_t value: 0 on success.
//
// More than 40 non-empty chunks take several kernel launches (up to 40
// tensors each, in chunk order); empty chunks (size 0) are skipped and their
// pointers may be anything, null included. Every input is validated before
// the first launch (validate_update below): chunk sizes (>= 0; no overflow),
// var/sum/grad non-null and aligned to their element type in every non-empty
// chunk, count and momentum either set in every non-empty chunk or in none,
// the scalar pointers and types, the grid of every launch. A rejected call
// launches nothing, so it changes nothing.
//
// What remains: once validation has passed, a launch can fail only for
// reasons outside the arguments: the CUDA context or stream is unusable (a
// sticky error left by earlier work, a stream capture invalidated by another
// thread, a device lost) or the kernel has no image for this GPU. A missing
// image fails the first launch (every launch of a call uses the same kernel
// and block size), so nothing is queued. If launch k > 1 fails, launches 1..k-1 are already
// queued and cannot be withdrawn: their tensors may be updated and the rest
// not. The return value and `report` say so (describe() below words it);
// TensorFlow treats such CUDA errors as fatal for the stream, and the
// variables on that device must be considered lost. Each launch's own status
// is what is reported (cudaLaunchKernel's return value): an error left
// pending by an unrelated earlier runtime call on this thread is not taken
// for this call's, and a launch error is consumed (cudaGetLastError) once
// returned, so it is not taken for a later caller's either.
//
// Scalars: beta in [0, 1) and epsilon finite and > 0 are checked here too,
// but callers check them first to report them in their own words (see
// expectigrad_checks.h). lr and step are checked on the device: if lr is not
// finite or < 0, or step < 1, the kernel changes nothing. It cannot report
// that, so callers must validate lr and step themselves and report errors
// (the TF op, the XLA lowering and the harnesses do).
int launch_update(DType dtype, const RawChunk* chunks, int num_chunks,
                  const DeviceScalars& scalars, void* stream,
                  LaunchReport* report = nullptr);

// The validation of launch_update alone: no CUDA call, nothing launched.
// Returns 0 when launch_update would launch (or has nothing to do), else the
// error it would return; `report` says why (stage kInvalid).
int validate_update(DType dtype, const RawChunk* chunks, int num_chunks,
                    const DeviceScalars& scalars, LaunchReport* report = nullptr);

// Device-to-device copy on `stream`; used for copy-on-write of variables.
int copy_async(void* dst, const void* src, int64_t bytes, void* stream);

// Human-readable text for a value returned above.
const char* error_string(int code);

// A sentence for an error message: what failed and what was left changed.
inline std::string describe(const LaunchReport& r) {
  const std::string err = std::string(error_string(r.code));
  switch (r.stage) {
    case LaunchReport::kOk:
      return "no error (" + std::to_string(r.launches_queued) + " kernel launch(es))";
    case LaunchReport::kInvalid:
      return std::string("invalid input to the CUDA launcher") +
             (r.chunk >= 0 ? " (chunk " + std::to_string(r.chunk) + ")" : "") +
             ": " + r.reason + "; nothing was launched, nothing changed";
    case LaunchReport::kLaunch:
      break;
  }
  std::string s = "kernel launch " + std::to_string(r.launches_queued + 1) + " of " +
                  std::to_string(r.launches_planned) + " failed: " + err;
  if (r.launches_queued == 0)
    return s + "; nothing was launched, nothing changed";
  return s + "; launches 1-" + std::to_string(r.launches_queued) +
         " were already queued, so chunks 0-" + std::to_string(r.chunk - 1) +
         " may be updated and the rest are not (a partial step). After "
         "validation a launch fails only when the CUDA context or stream is "
         "unusable: treat this device's state as lost";
}

// Grid size: at most 8 blocks of 256 threads per multiprocessor of the
// current device (cudaGetDevice), whose count is queried once per device and
// cached (thread-safe). The grid never affects the result (grid-stride loop).
//
// Testing hook: caps the number of blocks per launch (0 restores the default),
// so tests can force a grid smaller than the data. Not for production use;
// thread-safe.
void set_max_blocks_for_testing(int max_blocks);

}  // namespace cuda
}  // namespace expectigrad

#endif  // EXPECTIGRAD_CUDA_H_
