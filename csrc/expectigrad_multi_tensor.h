// Host-side multi-tensor apply: many tensors treated as one flat index space,
// so a step over 1,000 small variables is one sharded loop, not 1,000.
// No TensorFlow dependency: used by the TF CPU kernel and the pybind11 harness.
#ifndef EXPECTIGRAD_MULTI_TENSOR_H_
#define EXPECTIGRAD_MULTI_TENSOR_H_

#include <algorithm>
#include <cstdint>
#include <vector>

#include "expectigrad_update.h"

namespace expectigrad {

// Per-ISA clones of the hot loop (x86-64, GCC/Clang): the element update is
// compiled for AVX-512, AVX2 and the baseline, and the loader picks one for the
// running CPU. Build with -ffp-contract=off so every clone rounds exactly like
// the others (and like the CUDA kernel and NumPy): no FMA contraction.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__CUDACC__) && \
    !defined(EXPECTIGRAD_NO_CLONES)
// flatten: inline the whole loop into each clone (otherwise GCC may keep one
// out-of-line baseline copy of a large instantiation, e.g. float64).
#define EXPECTIGRAD_CLONES \
  __attribute__((target_clones("avx512f", "avx2", "default"), flatten))
#else
#define EXPECTIGRAD_CLONES
#endif

EXPECTIGRAD_CLONES static void run_range_f32(float* var, float* sum, float* cnt,
                                             float* mom, const float* grad,
                                             int64_t begin, int64_t end,
                                             const StepScalars<float>& p) {
  update_range_dispatch<float, float>(var, sum, cnt, mom, grad, begin, end, p);
}

EXPECTIGRAD_CLONES static void run_range_f64(double* var, double* sum,
                                             double* cnt, double* mom,
                                             const double* grad, int64_t begin,
                                             int64_t end,
                                             const StepScalars<double>& p) {
  update_range_dispatch<double, double>(var, sum, cnt, mom, grad, begin, end, p);
}

template <typename T, typename S>
inline void run_range(T* var, S* sum, S* cnt, S* mom, const T* grad,
                      int64_t begin, int64_t end, const StepScalars<S>& p) {
  update_range_dispatch<T, S>(var, sum, cnt, mom, grad, begin, end, p);
}
template <>
inline void run_range<float, float>(float* var, float* sum, float* cnt,
                                    float* mom, const float* grad,
                                    int64_t begin, int64_t end,
                                    const StepScalars<float>& p) {
  run_range_f32(var, sum, cnt, mom, grad, begin, end, p);
}
template <>
inline void run_range<double, double>(double* var, double* sum, double* cnt,
                                      double* mom, const double* grad,
                                      int64_t begin, int64_t end,
                                      const StepScalars<double>& p) {
  run_range_f64(var, sum, cnt, mom, grad, begin, end, p);
}

template <typename T, typename S>
class MultiTensorPlan {
 public:
  explicit MultiTensorPlan(std::vector<TensorChunk<T, S>> chunks)
      : chunks_(std::move(chunks)) {
    offsets_.reserve(chunks_.size() + 1);
    offsets_.push_back(0);
    for (const auto& c : chunks_) offsets_.push_back(offsets_.back() + c.size);
  }

  int64_t total() const { return offsets_.back(); }

  // Applies the update to global elements [begin, end), which may span
  // several tensors.
  void run(int64_t begin, int64_t end, const StepScalars<S>& p) const {
    if (begin >= end) return;
    // First tensor whose range contains `begin`.
    size_t t = std::upper_bound(offsets_.begin(), offsets_.end(), begin) -
               offsets_.begin() - 1;
    for (; t < chunks_.size() && offsets_[t] < end; ++t) {
      const auto& c = chunks_[t];
      const int64_t lo = std::max(begin, offsets_[t]) - offsets_[t];
      const int64_t hi = std::min(end, offsets_[t + 1]) - offsets_[t];
      run_range<T, S>(c.var, c.sum, c.cnt, c.mom, c.grad, lo, hi, p);
    }
  }

 private:
  std::vector<TensorChunk<T, S>> chunks_;
  std::vector<int64_t> offsets_;
};

// Rough cost of one element in cycles, for TensorFlow's work sharder: a
// divide, a square root and ~36 bytes of memory traffic.
constexpr int64_t kCostPerElement = 40;

}  // namespace expectigrad

#endif  // EXPECTIGRAD_MULTI_TENSOR_H_
