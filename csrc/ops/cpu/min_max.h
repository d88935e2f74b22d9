// Pieces shared by the CPU observer kernels (cpu/observer.cpp, cpu/histogram.cpp):
// reading a one-element flag tensor and the finite min / max of a run of values.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <limits>

namespace q8::cpu {

// A one-element flag read on the host: non-zero is on (NaN counts as non-zero).
inline bool read_flag(const at::Tensor& flag) {
  bool on = false;
  AT_DISPATCH_ALL_TYPES_AND3(at::kBool, at::kHalf, at::kBFloat16, flag.scalar_type(), "q8_read_flag", [&] {
    on = static_cast<double>(*flag.const_data_ptr<scalar_t>()) != 0.0;
  });
  return on;
}

// min / max of the finite values of x[0, n), folded into *lo / *hi. kLanes
// independent accumulators, which the compiler vectorizes.
template <typename T>
void finite_min_max_run(const T* x, int64_t n, float* lo, float* hi) {
  constexpr int kLanes = 16;
  constexpr float kInf = std::numeric_limits<float>::infinity();
  float l[kLanes], h[kLanes];
  for (int k = 0; k < kLanes; ++k) {
    l[k] = kInf;
    h[k] = -kInf;
  }
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      const float v = static_cast<float>(x[i + k]);
      const bool ok = std::fabs(v) <= FLT_MAX;
      const float a = ok ? v : kInf;
      const float b = ok ? v : -kInf;
      l[k] = a < l[k] ? a : l[k];
      h[k] = b > h[k] ? b : h[k];
    }
  }
  float lo_ = *lo, hi_ = *hi;
  for (; i < n; ++i) {
    const float v = static_cast<float>(x[i]);
    if (std::fabs(v) <= FLT_MAX) {
      lo_ = std::min(lo_, v);
      hi_ = std::max(hi_, v);
    }
  }
  for (int k = 0; k < kLanes; ++k) {
    lo_ = std::min(lo_, l[k]);
    hi_ = std::max(hi_, h[k]);
  }
  *lo = lo_;
  *hi = hi_;
}

}  // namespace q8::cpu
