// Portable pieces of the int8 GEMM kernels: the whole DEFAULT table and the
// scalar tails of the vector ones. Included by each kernels/int8_gemm_*.cpp into
// an anonymous namespace, so every file has its own copy compiled with its own
// flags (no ODR sharing of code built for another instruction set).
#pragma once

// Each file uses only part of these helpers.
#pragma GCC diagnostic ignored "-Wunused-function"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "int8_gemm.h"

namespace q8::cpu::gemm {
namespace {

inline int32_t load_i32(const void* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// int32 arithmetic that wraps instead of overflowing (the callers' bounds keep
// the true results inside int32; vector instructions wrap the same way).
inline int32_t wrap_sub_mul(int32_t acc, int32_t zp, int32_t wsum) {
  return static_cast<int32_t>(static_cast<uint32_t>(acc) - static_cast<uint32_t>(zp) * static_cast<uint32_t>(wsum));
}

// The portable int8_conv_tile (the default table; int8_gemm.h).
void int8_conv_tile_scalar(const uint8_t* const* rows, int64_t ntaps, int64_t cgroups, const int8_t* b,
                           int64_t panel_stride, int mr, int np, int32_t* c) {
  for (int r = 0; r < mr; ++r) {
    std::fill(c + r * kTileCols, c + r * kTileCols + np * kPanel, 0);
  }
  for (int64_t t = 0; t < ntaps; ++t) {
    for (int r = 0; r < mr; ++r) {
      const uint8_t* s = rows[t * kRows + r];
      int32_t* cr = c + r * kTileCols;
      for (int p = 0; p < np; ++p) {
        const int8_t* bg = b + p * panel_stride + t * cgroups * kGroupBytes;
        for (int64_t q = 0; q < cgroups; ++q, bg += kGroupBytes) {
          for (int j = 0; j < kPanel; ++j) {
            int32_t sum = 0;
            for (int e = 0; e < kGroup; ++e) {
              sum += int32_t{s[4 * q + e]} * int32_t{bg[j * kGroup + e]};
            }
            cr[p * kPanel + j] += sum;
          }
        }
      }
    }
  }
}

void int8_tile_scalar(const uint8_t* a, const int8_t* b, int64_t panel_stride, int64_t g0, int64_t g1, int mr,
                      int np, int32_t* c) {
  for (int r = 0; r < mr; ++r) {
    std::fill(c + r * kTileCols, c + r * kTileCols + np * kPanel, 0);
  }
  for (int p = 0; p < np; ++p) {
    const int8_t* bp = b + p * panel_stride;
    for (int64_t g = g0; g < g1; ++g) {
      const int8_t* bg = bp + g * kGroupBytes;
      const uint8_t* ag = a + g * (kRows * kGroup);
      for (int r = 0; r < mr; ++r) {
        const uint8_t* ar = ag + r * kGroup;
        int32_t* cr = c + r * kTileCols + p * kPanel;
        for (int j = 0; j < kPanel; ++j) {
          const int8_t* w = bg + j * kGroup;
          cr[j] += int32_t(ar[0]) * w[0] + int32_t(ar[1]) * w[1] + int32_t(ar[2]) * w[2] + int32_t(ar[3]) * w[3];
        }
      }
    }
  }
}

void f32_tile_scalar(const float* x, int64_t ldx, const int8_t* b, int64_t panel_stride, int64_t g0, int64_t g1,
                     int mr, int np, float* c) {
  for (int r = 0; r < mr; ++r) {
    for (int p = 0; p < np; ++p) {
      const int8_t* bp = b + p * panel_stride;
      for (int j = 0; j < kPanel; ++j) {
        float s = 0.f;
        for (int64_t g = g0; g < g1; ++g) {
          const int8_t* w = bp + g * kGroupBytes + j * kGroup;
          const float* xr = x + r * ldx + g * kGroup;
          s += xr[0] * float(w[0]) + xr[1] * float(w[1]) + xr[2] * float(w[2]) + xr[3] * float(w[3]);
        }
        c[r * kTileCols + p * kPanel + j] = s;
      }
    }
  }
}

void dequant_panels_scalar(const int8_t* b, int64_t panel_stride, int64_t groups, int np, const float* sw,
                           float* dst, int64_t ldd) {
  for (int p = 0; p < np; ++p) {
    const int8_t* bp = b + p * panel_stride;
    for (int j = 0; j < kPanel; ++j) {
      const float s = sw[p * kPanel + j];
      float* d = dst + (p * kPanel + j) * ldd;
      for (int64_t g = 0; g < groups; ++g) {
        const int8_t* w = bp + g * kGroupBytes + j * kGroup;
        for (int t = 0; t < kGroup; ++t) {
          d[g * kGroup + t] = static_cast<float>(w[t]) * s;
        }
      }
    }
  }
}

// One output of the int8 epilogue; the vector epilogues do the same operations.
inline float epilogue_one(int32_t acc, int32_t zp, float sx, int32_t wsum, float sw, const float* bias, int j) {
  const float t = static_cast<float>(wrap_sub_mul(acc, zp, wsum));
  const float s = sx * sw;
  float y = t * s;
  if (bias != nullptr) {
    y = y + bias[j];
  }
  return y;
}

void int8_epilogue_scalar(const int32_t* c, int mr, int ncols, const int32_t* zp, const float* sx,
                          const int32_t* wsum, const float* sw, const float* bias, float* y, int64_t ldy) {
  for (int r = 0; r < mr; ++r) {
    for (int j = 0; j < ncols; ++j) {
      y[r * ldy + j] = epilogue_one(c[r * kTileCols + j], zp[r], sx[r], wsum[j], sw[j], bias, j);
    }
  }
}

void row_min_max_scalar(const float* x, int64_t k, float* mn, float* mx) {
  float lo = 0.f, hi = 0.f;
  for (int64_t i = 0; i < k; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  *mn = lo;
  *mx = hi;
}

// One quantized activation; NaN (only in rows that are reported) gives 0.
inline uint8_t quantize_one(float x, float inv_scale, float zp) {
  float q = std::nearbyint(x * inv_scale) + zp;
  q = std::fmax(q, 0.f);  // NaN -> 0
  q = std::fmin(q, 255.f);
  return static_cast<uint8_t>(static_cast<int32_t>(q));
}

// Rows r < rows, k in [k0, k) of the panel; returns the non-finite row mask.
uint32_t quantize_rows_from(const float* x, int64_t ldx, int64_t k0, int64_t k, int rows, const float* inv_scale,
                            const int32_t* zp, uint8_t* panel) {
  uint32_t bad = 0;
  for (int r = 0; r < rows; ++r) {
    const float* xr = x + r * ldx;
    const float z = static_cast<float>(zp[r]);
    for (int64_t i = k0; i < k; ++i) {
      if (!std::isfinite(xr[i])) {
        bad |= 1u << r;
      }
      panel[(i / kGroup) * (kRows * kGroup) + r * kGroup + (i % kGroup)] = quantize_one(xr[i], inv_scale[r], z);
    }
  }
  return bad;
}

// Zero k in [k0, groups * 4) for rows r < rows.
void zero_panel_tail(int64_t k0, int rows, uint8_t* panel, int64_t groups) {
  for (int r = 0; r < rows; ++r) {
    for (int64_t i = k0; i < groups * kGroup; ++i) {
      panel[(i / kGroup) * (kRows * kGroup) + r * kGroup + (i % kGroup)] = 0;
    }
  }
}

uint32_t quantize_rows_scalar(const float* x, int64_t ldx, int64_t k, int rows, const float* inv_scale,
                              const int32_t* zp, uint8_t* panel, int64_t groups) {
  const uint32_t bad = quantize_rows_from(x, ldx, 0, k, rows, inv_scale, zp, panel);
  zero_panel_tail(k, rows, panel, groups);
  return bad;
}

} // namespace
} // namespace q8::cpu::gemm
