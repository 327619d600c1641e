// Plain C++ interface to the CUDA kernels (no TensorFlow, no CUDA headers),
// so the TF op, the XLA lowering and the pybind11 harnesses call the same
// launcher.
#ifndef EXPECTIGRAD_CUDA_H_
#define EXPECTIGRAD_CUDA_H_

#include <cstdint>

namespace expectigrad {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

enum class ScalarType : int { kFloat32 = 0, kFloat64 = 1 };

// One tensor: var/mom/grad in the storage dtype, sum/cnt in float32
// (float64 for kFloat64). cnt and mom may be null.
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

// Launches the update for all chunks on `stream` (a cudaStream_t; null is the
// default stream), asynchronously. Returns a cudaError_t value: 0 on success.
//
// Validation: beta and epsilon must be checked by the caller. lr and step are
// checked on the device: if lr is not finite or < 0, or step < 1, the kernel
// changes nothing. It cannot report that, so callers must validate lr and step
// themselves and report errors (the TF op, the XLA lowering and the harnesses
// do; see expectigrad_checks.h).
int launch_update(DType dtype, const RawChunk* chunks, int num_chunks,
                  const DeviceScalars& scalars, void* stream);

// Device-to-device copy on `stream`; used for copy-on-write of variables.
int copy_async(void* dst, const void* src, int64_t bytes, void* stream);

// Human-readable text for a value returned above.
const char* error_string(int code);

// Testing hook: caps the number of blocks per launch (0 restores the default,
// 8 blocks per multiprocessor), so tests can force a grid smaller than the
// data. Not for production use; thread-safe.
void set_max_blocks_for_testing(int max_blocks);

}  // namespace cuda
}  // namespace expectigrad

#endif  // EXPECTIGRAD_CUDA_H_
