// Validation of the step scalars, written once for every entry point (the TF
// OpKernel, the XLA lowering and its custom-call handlers), so that every path
// rejects the same input with the same message. No TensorFlow dependency.
#ifndef EXPECTIGRAD_CHECKS_H_
#define EXPECTIGRAD_CHECKS_H_

#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>

namespace expectigrad {

// An empty string when (lr, step) are valid, else the error message.
// A learning rate of exactly 0 (a warm-up's first step) is legal.
inline std::string check_lr_step(double lr, int64_t step) {
  std::ostringstream msg;
  msg.precision(17);
  if (!(std::isfinite(lr) && lr >= 0)) {
    msg << "ExpectigradApply: lr must be finite and >= 0, got " << lr;
  } else if (step < 1) {
    msg << "ExpectigradApply: step must be >= 1, got " << step;
  }
  return msg.str();
}

// An empty string when (beta, epsilon) are valid, else the error message.
inline std::string check_beta_epsilon(double beta, double epsilon) {
  std::ostringstream msg;
  msg.precision(17);
  if (!(std::isfinite(beta) && beta >= 0 && beta < 1)) {
    msg << "ExpectigradApply: beta must be in [0, 1), got " << beta;
  } else if (!(std::isfinite(epsilon) && epsilon > 0)) {
    msg << "ExpectigradApply: epsilon must be finite and > 0, got " << epsilon;
  }
  return msg.str();
}

}  // namespace expectigrad

#endif  // EXPECTIGRAD_CHECKS_H_
