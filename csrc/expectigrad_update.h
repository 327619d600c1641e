// The Expectigrad per-element update, written once for every backend.
//
// Algorithm 1 of "Expectigrad: Fast Stochastic Optimization with Robust
// Convergence Properties" (ICLR 2021 submission), for one element:
//
//   s <- s + g^2
//   n <- n + sign(g^2)              (sparse counter)   or   n <- t
//   m <- beta * m + (1 - beta) * g / (epsilon + sqrt(s / n)),   0/0 := 0
//   x <- x - lr / (1 - beta^t) * m
//
// With beta == 0 there is no momentum slot: x <- x - lr * g / (eps + sqrt(s/n)).
//
// This header has no dependency on TensorFlow, CUDA or pybind11. It is
// included by the TensorFlow CPU kernel, the CUDA kernel and the standalone
// pybind11 harness, so the same arithmetic runs everywhere.
//
// Types: `S` is the compute/state type (float or double): sum, count and
// momentum are stored in S. Variables (and gradients) may be stored in a
// narrower type T (half, bfloat16); callers convert to S before calling and
// back after. (The optimizer keeps sum, count and momentum of one variable in
// one [k, *shape] state tensor of type S; see TensorChunk.)
#ifndef EXPECTIGRAD_UPDATE_H_
#define EXPECTIGRAD_UPDATE_H_

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define EXPECTIGRAD_HD __host__ __device__ __forceinline__
#else
#define EXPECTIGRAD_HD inline
#endif

namespace expectigrad {

// Scalars for one step (see make_step_scalars).
template <typename S>
struct StepScalars {
  S lr_t;            // lr / (1 - beta^t) with momentum, lr without.
  S beta;            // momentum constant (unused without momentum).
  S one_minus_beta;  // 1 - beta, computed once in double.
  S epsilon;         // denominator constant.
  S step;            // t as S: the counter value when sparse_counter is off.
};

// Returns sign(v) for v = g*g >= 0 or NaN, as NumPy's np.sign does:
// 1 for v > 0, 0 for v == 0, and NaN for NaN (so NaN poisons the counter
// exactly as it poisons the sum).
template <typename S>
EXPECTIGRAD_HD S sign_of_square(S v) {
  return v > S(0) ? S(1) : (v == S(0) ? S(0) : v);
}

// One element of the update, on values already converted to S.
// kMomentum: beta > 0 (momentum slot exists).
// kSparseCounter: the counter slot exists (n += sign(g^2)); otherwise n = t.
template <typename S, bool kMomentum, bool kSparseCounter>
EXPECTIGRAD_HD void update_element(S g, S& x, S& s, S& n, S& m,
                                   const StepScalars<S>& p) {
  const S gg = g * g;
  s = s + gg;
  S count;
  if (kSparseCounter) {
    n = n + sign_of_square(gg);
    count = n;
  } else {
    count = p.step;
  }
  // 0/0 := 0 (s == 0 exactly when nothing was ever counted). Both sides are
  // computed unconditionally so the loop stays branch-free and vectorises.
  const bool empty = count == S(0);
  const S quotient = s / (empty ? S(1) : count);
  const S mean = empty ? S(0) : quotient;
  const S u = g / (p.epsilon + std::sqrt(mean));
  if (kMomentum) {
    m = p.beta * m + p.one_minus_beta * u;
    x = x - p.lr_t * m;
  } else {
    x = x - p.lr_t * u;
  }
}

// Whether (lr, step) can be used: lr finite and >= 0 (0 is legal, e.g. a
// warm-up's first step), step >= 1. Callable on the device: the CUDA kernel
// reads lr and step from device memory and, when this is false, changes
// nothing (the callers validate on their side and report the error; see
// expectigrad_checks.h for the messages).
EXPECTIGRAD_HD bool valid_lr_step(double lr, int64_t step) {
  return lr >= 0.0 && lr <= 1.7976931348623157e308 && step >= 1;  // NaN: false
}

// The step scalars, shared by every backend: computed in double, then
// rounded once to S. The CUDA kernel calls this on the device with lr and
// step read from device memory; the CPU kernels on the host.
// Note: the device's pow() may differ from glibc's by one ulp in double for
// some (beta, step); rounded to float32 that almost never shows, in float64
// lr_t may differ by one ulp between the CPU and GPU kernels.
template <typename S>
EXPECTIGRAD_HD StepScalars<S> make_step_scalars(double lr, double beta,
                                                double epsilon, int64_t step) {
  StepScalars<S> p;
  const double bias = beta > 0.0 ? 1.0 - std::pow(beta, double(step)) : 1.0;
  p.lr_t = static_cast<S>(lr / bias);
  p.beta = static_cast<S>(beta);
  p.one_minus_beta = static_cast<S>(1.0 - beta);
  p.epsilon = static_cast<S>(epsilon);
  p.step = static_cast<S>(step);
  return p;
}

// A contiguous range [begin, end) of one tensor, for any storage type T.
// count/momentum may be null when the variant has no such slot.
template <typename T, typename S, bool kMomentum, bool kSparseCounter>
EXPECTIGRAD_HD void update_range(T* var, S* sum, S* cnt, S* mom, const T* grad,
                                 int64_t begin, int64_t end,
                                 const StepScalars<S>& scalars) {
  const StepScalars<S> p = scalars;  // a local copy: stores cannot alias it
  for (int64_t i = begin; i < end; ++i) {
    S x = static_cast<S>(var[i]);
    S s = sum[i];
    S n = kSparseCounter ? cnt[i] : S(0);
    S m = kMomentum ? mom[i] : S(0);
    update_element<S, kMomentum, kSparseCounter>(static_cast<S>(grad[i]), x, s,
                                                 n, m, p);
    var[i] = static_cast<T>(x);
    sum[i] = s;
    if (kSparseCounter) cnt[i] = n;
    if (kMomentum) mom[i] = m;
  }
}

// Runtime dispatch over the four algorithm variants.
template <typename T, typename S>
inline void update_range_dispatch(T* var, S* sum, S* cnt, S* mom,
                                  const T* grad, int64_t begin, int64_t end,
                                  const StepScalars<S>& p) {
  if (mom != nullptr) {
    if (cnt != nullptr)
      update_range<T, S, true, true>(var, sum, cnt, mom, grad, begin, end, p);
    else
      update_range<T, S, true, false>(var, sum, cnt, mom, grad, begin, end, p);
  } else {
    if (cnt != nullptr)
      update_range<T, S, false, true>(var, sum, cnt, mom, grad, begin, end, p);
    else
      update_range<T, S, false, false>(var, sum, cnt, mom, grad, begin, end, p);
  }
}

// One tensor of a multi-tensor apply: raw pointers and a length. In the
// optimizer's packed state (one [k, *shape] tensor of type S per variable:
// sum, then count if the sparse counter is on, then momentum if beta > 0),
// sum, cnt and mom point at consecutive `size`-element rows of that tensor.
template <typename T, typename S>
struct TensorChunk {
  T* var;
  S* sum;
  S* cnt;  // null without sparse counter
  S* mom;  // null without momentum
  const T* grad;
  int64_t size;
};

// The optimizer's packed state of one variable: a [rows, *shape] tensor of
// type S whose rows are sum, count (sparse counter on) and momentum (beta > 0),
// in this order. The layout is written once, here, for the TF kernel, the
// XLA lowering and the custom-call handlers.
EXPECTIGRAD_HD int state_rows(bool sparse_counter, bool momentum) {
  return 1 + int(sparse_counter) + int(momentum);
}

// The rows of a packed state starting at `state`, `row_stride` units apart
// (elements of S for typed pointers, bytes for char*); count and momentum are
// null when absent.
template <typename P>
EXPECTIGRAD_HD void split_state(P* state, int64_t row_stride, bool sparse_counter,
                                bool momentum, P** sum, P** cnt, P** mom) {
  *sum = state;
  *cnt = sparse_counter ? state + row_stride : nullptr;
  *mom = momentum ? state + (1 + int(sparse_counter)) * row_stride : nullptr;
}

}  // namespace expectigrad

#endif  // EXPECTIGRAD_UPDATE_H_
