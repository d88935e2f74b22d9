// Scale and zero point from a calibrated [min, max], shared by every device's
// choose_qparams kernel (host and device code).
//
// The formulas are those of torch.ao.quantization's MinMaxObserver
// (_calculate_qparams), in float32:
//   asymmetric: scale = (max(max, 0) - min(min, 0)) / (quant_max - quant_min)
//               zero_point = clamp(quant_min - round(min(min, 0) / scale), quant_min, quant_max)
//   symmetric:  scale = max(-min(min, 0), max(max, 0)) / ((quant_max - quant_min) / 2)
//               zero_point = 0 for a signed range (quant_min < 0), else (quant_min + quant_max + 1) / 2
// with scale at least float32 eps (a constant or all-zero input still gives a
// valid scale) and at most FLT_MAX (a range wider than float32 does not give Inf).
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>

#include <c10/macros/Macros.h>

namespace q8::detail {

C10_HOST_DEVICE inline void compute_qparams(
    float min_val,
    float max_val,
    int64_t quant_min,
    int64_t quant_max,
    bool symmetric,
    float* scale_out,
    int32_t* zero_point_out) {
  const float min_neg = min_val < 0.f ? min_val : 0.f;
  const float max_pos = max_val > 0.f ? max_val : 0.f;
  const float levels = static_cast<float>(quant_max - quant_min);
  float scale;
  int64_t zero_point;
  if (symmetric) {
    const float amax = -min_neg > max_pos ? -min_neg : max_pos;
    scale = amax / (levels / 2.f);
    if (!(scale <= FLT_MAX)) {
      const double wide = static_cast<double>(amax) / (static_cast<double>(levels) / 2.0);
      scale = wide > FLT_MAX ? FLT_MAX : static_cast<float>(wide);
    }
    scale = scale > FLT_EPSILON ? scale : FLT_EPSILON;
    zero_point = quant_min < 0 ? 0 : (quant_min + quant_max + 1) / 2;
  } else {
    scale = (max_pos - min_neg) / levels;
    if (!(scale <= FLT_MAX)) {
      const double wide = (static_cast<double>(max_pos) - static_cast<double>(min_neg)) / static_cast<double>(levels);
      scale = wide > FLT_MAX ? FLT_MAX : static_cast<float>(wide);
    }
    scale = scale > FLT_EPSILON ? scale : FLT_EPSILON;
    zero_point = quant_min - static_cast<int64_t>(std::nearbyint(min_neg / scale));
    zero_point = zero_point < quant_min ? quant_min : (zero_point > quant_max ? quant_max : zero_point);
  }
  *scale_out = scale;
  *zero_point_out = static_cast<int32_t>(zero_point);
}

} // namespace q8::detail
