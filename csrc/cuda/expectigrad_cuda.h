// Plain C++ interface to the CUDA kernels (no TensorFlow, no CUDA headers),
// so the TF op and the pybind11 harness can call the same launcher.
#ifndef EXPECTIGRAD_CUDA_H_
#define EXPECTIGRAD_CUDA_H_

#include <cstdint>

namespace expectigrad {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

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

// Launches the update for all chunks on `stream` (a cudaStream_t; null is the
// default stream). Returns a cudaError_t value: 0 on success.
int launch_update(DType dtype, const RawChunk* chunks, int num_chunks,
                  double lr, double beta, double epsilon, int64_t step,
                  void* stream);

// Device-to-device copy on `stream`; used for copy-on-write of variables.
int copy_async(void* dst, const void* src, int64_t bytes, void* stream);

// Human-readable text for a value returned above.
const char* error_string(int code);

}  // namespace cuda
}  // namespace expectigrad

#endif  // EXPECTIGRAD_CUDA_H_
