// The moving-average min/max update of observe_fake_quantize, shared by the CPU
// (cpu/observer.cpp) and CUDA (cuda/observer.cu) kernels, host and device code.
//
// For one channel, given the min and max of its finite values in the current
// input (cur_min > cur_max when it had none, e.g. +Inf / -Inf):
//   - no finite value: the running values are left as they are;
//   - a running value that is not finite (+-Inf: torch's "not yet observed"
//     convention, running_min = +Inf and running_max = -Inf at the start; or
//     NaN) takes the current value;
//   - else running += averaging_constant * (current - running), in float32, the
//     exact operations of torch's fused_moving_avg_obs_fake_quant (both build
//     files compile this without fused multiply-add contraction).
#pragma once

#include <cfloat>
#include <cmath>

#include <c10/macros/Macros.h>

namespace q8::detail {

C10_HOST_DEVICE inline bool finite_float(float v) {
  return fabsf(v) <= FLT_MAX;  // false for NaN and +-Inf
}

C10_HOST_DEVICE inline float moving_average(float running, float current, float averaging_constant) {
  return finite_float(running) ? running + averaging_constant * (current - running) : current;
}

C10_HOST_DEVICE inline void update_running_min_max(
    float cur_min,
    float cur_max,
    float averaging_constant,
    float* running_min,
    float* running_max) {
  if (!(cur_min <= cur_max)) {
    return;  // nothing finite observed in this channel
  }
  *running_min = moving_average(*running_min, cur_min, averaging_constant);
  *running_max = moving_average(*running_max, cur_max, averaging_constant);
}

} // namespace q8::detail
