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
      update_range_dispatch<T, S>(c.var, c.sum, c.cnt, c.mom, c.grad, lo, hi,
                                  p);
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
