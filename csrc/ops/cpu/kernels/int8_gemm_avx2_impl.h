// AVX2 pieces shared by int8_gemm_avx2.cpp and int8_gemm_avx_vnni.cpp (both
// compiled with -mavx2 -mfma): the weight-only float tile, the epilogue, and the
// activation min/max and quantization. Included into an anonymous namespace.
#pragma once

#include <immintrin.h>

#include "int8_gemm_common.h"

namespace q8::cpu::gemm {
namespace {

// int8 tile with exact int16 products (vpmaddwd), two rows at a time: the 64
// bytes of a group are four 16-byte pieces [4 columns][4 k]; sign-extended to
// int16 they meet the row's 4 activations repeated, and each int32 lane sums the
// products of 2 k. Lanes are paired up at the end.
template <int MR>
void int8_panel_avx2(const uint8_t* a, const int8_t* b, int64_t g0, int64_t g1, int32_t* c) {
  __m256i acc[MR][4];
  for (int r = 0; r < MR; ++r) {
    for (int j = 0; j < 4; ++j) {
      acc[r][j] = _mm256_setzero_si256();
    }
  }
  const int8_t* bg = b + g0 * kGroupBytes;
  const uint8_t* ag = a + g0 * (kRows * kGroup);
  for (int64_t g = g0; g < g1; ++g, bg += kGroupBytes, ag += kRows * kGroup) {
    __m256i w[4];
    for (int j = 0; j < 4; ++j) {
      w[j] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bg + 16 * j)));
    }
    for (int r = 0; r < MR; ++r) {
      const __m128i a4 = _mm_cvtepu8_epi16(_mm_cvtsi32_si128(load_i32(ag + r * kGroup)));
      const __m256i av = _mm256_broadcastq_epi64(a4);
      for (int j = 0; j < 4; ++j) {
        acc[r][j] = _mm256_add_epi32(acc[r][j], _mm256_madd_epi16(w[j], av));
      }
    }
  }
  for (int r = 0; r < MR; ++r) {
    const __m256i lo = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[r][0], acc[r][1]), 0xD8);
    const __m256i hi = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[r][2], acc[r][3]), 0xD8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * kTileCols), lo);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * kTileCols + 8), hi);
  }
}

void int8_tile_avx2(const uint8_t* a, const int8_t* b, int64_t panel_stride, int64_t g0, int64_t g1, int mr, int np,
                    int32_t* c) {
  for (int p = 0; p < np; ++p) {
    const int8_t* bp = b + p * panel_stride;
    int r = 0;
    for (; r + 2 <= mr; r += 2) {
      // Rows r, r+1 of the panel: shift the activation base by r rows.
      int8_panel_avx2<2>(a + r * kGroup, bp, g0, g1, c + r * kTileCols + p * kPanel);
    }
    if (r < mr) {
      int8_panel_avx2<1>(a + r * kGroup, bp, g0, g1, c + r * kTileCols + p * kPanel);
    }
  }
}

// Weight-only float tile, one row: a group's 64 bytes as eight 8-byte pieces
// [2 columns][4 k], converted to float and multiplied by the row's 4 values
// repeated; the 4 partial sums of each column are added at the end.
void f32_row_avx2(const float* x, const int8_t* b, int64_t g0, int64_t g1, float* c) {
  __m256 acc[8];
  for (int j = 0; j < 8; ++j) {
    acc[j] = _mm256_setzero_ps();
  }
  const int8_t* bg = b + g0 * kGroupBytes;
  for (int64_t g = g0; g < g1; ++g, bg += kGroupBytes) {
    const __m256 xv = _mm256_broadcast_ps(reinterpret_cast<const __m128*>(x + g * kGroup));
    for (int j = 0; j < 8; ++j) {
      const __m256i w = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(bg + 8 * j)));
      acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(w), xv, acc[j]);
    }
  }
  alignas(32) float t[8];
  for (int j = 0; j < 8; ++j) {
    _mm256_store_ps(t, acc[j]);
    c[2 * j] = (t[0] + t[1]) + (t[2] + t[3]);
    c[2 * j + 1] = (t[4] + t[5]) + (t[6] + t[7]);
  }
}

void f32_tile_avx2(const float* x, int64_t ldx, const int8_t* b, int64_t panel_stride, int64_t g0, int64_t g1,
                   int mr, int np, float* c) {
  for (int r = 0; r < mr; ++r) {
    for (int p = 0; p < np; ++p) {
      f32_row_avx2(x + r * ldx, b + p * panel_stride, g0, g1, c + r * kTileCols + p * kPanel);
    }
  }
}

void int8_epilogue_avx2(const int32_t* c, int mr, int ncols, const int32_t* zp, const float* sx, const int32_t* wsum,
                        const float* sw, const float* bias, float* y, int64_t ldy) {
  for (int r = 0; r < mr; ++r) {
    const __m256i zv = _mm256_set1_epi32(zp[r]);
    const __m256 sxv = _mm256_set1_ps(sx[r]);
    int j = 0;
    for (; j + 8 <= ncols; j += 8) {
      const __m256i acc = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + r * kTileCols + j));
      const __m256i ws = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wsum + j));
      const __m256 t = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc, _mm256_mullo_epi32(zv, ws)));
      const __m256 s = _mm256_mul_ps(sxv, _mm256_loadu_ps(sw + j));
      __m256 v = _mm256_mul_ps(t, s);
      if (bias != nullptr) {
        v = _mm256_add_ps(v, _mm256_loadu_ps(bias + j));
      }
      _mm256_storeu_ps(y + r * ldy + j, v);
    }
    for (; j < ncols; ++j) {
      y[r * ldy + j] = epilogue_one(c[r * kTileCols + j], zp[r], sx[r], wsum[j], sw[j], bias, j);
    }
  }
}

void row_min_max_avx2(const float* x, int64_t k, float* mn, float* mx) {
  __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    lo = _mm256_min_ps(lo, v);
    hi = _mm256_max_ps(hi, v);
  }
  alignas(32) float tl[8], th[8];
  _mm256_store_ps(tl, lo);
  _mm256_store_ps(th, hi);
  float l = 0.f, h = 0.f;
  for (int j = 0; j < 8; ++j) {
    l = std::min(l, tl[j]);
    h = std::max(h, th[j]);
  }
  for (; i < k; ++i) {
    l = std::min(l, x[i]);
    h = std::max(h, x[i]);
  }
  *mn = l;
  *mx = h;
}

uint32_t quantize_rows_avx2(const float* x, int64_t ldx, int64_t k, int rows, const float* inv_scale,
                            const int32_t* zp, uint8_t* panel, int64_t groups) {
  uint32_t bad = 0;
  const int64_t k8 = k / 8 * 8;
  for (int r = 0; r < rows; ++r) {
    const float* xr = x + r * ldx;
    const __m256 inv = _mm256_set1_ps(inv_scale[r]);
    const __m256 z = _mm256_set1_ps(static_cast<float>(zp[r]));
    const __m256 zero = _mm256_setzero_ps(), top = _mm256_set1_ps(255.f);
    __m256 nonfinite = _mm256_setzero_ps();
    for (int64_t i = 0; i < k8; i += 8) {
      const __m256 v = _mm256_loadu_ps(xr + i);
      const __m256 d = _mm256_sub_ps(v, v);  // NaN exactly for NaN and +-Inf
      nonfinite = _mm256_or_ps(nonfinite, _mm256_cmp_ps(d, d, _CMP_UNORD_Q));
      __m256 q = _mm256_add_ps(_mm256_round_ps(_mm256_mul_ps(v, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), z);
      q = _mm256_max_ps(q, zero);  // NaN -> 0, as fmax
      q = _mm256_min_ps(q, top);
      const __m256i qi = _mm256_cvttps_epi32(q);
      const __m128i w16 = _mm_packs_epi32(_mm256_castsi256_si128(qi), _mm256_extracti128_si256(qi, 1));
      const __m128i b8 = _mm_packus_epi16(w16, w16);
      const int64_t g = i / kGroup;
      const int32_t d0 = _mm_cvtsi128_si32(b8), d1 = _mm_extract_epi32(b8, 1);
      std::memcpy(panel + g * (kRows * kGroup) + r * kGroup, &d0, 4);
      std::memcpy(panel + (g + 1) * (kRows * kGroup) + r * kGroup, &d1, 4);
    }
    if (_mm256_movemask_ps(nonfinite) != 0) {
      bad |= 1u << r;
    }
  }
  bad |= quantize_rows_from(x, ldx, k8, k, rows, inv_scale, zp, panel);
  zero_panel_tail(k, rows, panel, groups);
  return bad;
}

// dequant_panels: each 8-byte piece of a group is 2 rows x 4 k; widened to 8
// floats, scaled by [s_j x4, s_j+1 x4] and stored as two 16-byte row pieces.
void dequant_panels_avx2(const int8_t* b, int64_t panel_stride, int64_t groups, int np, const float* sw,
                         float* dst, int64_t ldd) {
  for (int p = 0; p < np; ++p) {
    const int8_t* bp = b + p * panel_stride;
    __m256 scale[kPanel / 2];
    for (int h = 0; h < kPanel / 2; ++h) {
      scale[h] = _mm256_set_m128(_mm_set1_ps(sw[p * kPanel + 2 * h + 1]), _mm_set1_ps(sw[p * kPanel + 2 * h]));
    }
    float* d = dst + p * kPanel * ldd;
    for (int64_t g = 0; g < groups; ++g) {
      const int8_t* bg = bp + g * kGroupBytes;
      for (int h = 0; h < kPanel / 2; ++h) {
        const __m128i w8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(bg + 8 * h));
        const __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(w8)), scale[h]);
        _mm_storeu_ps(d + (2 * h) * ldd + g * kGroup, _mm256_castps256_ps128(f));
        _mm_storeu_ps(d + (2 * h + 1) * ldd + g * kGroup, _mm256_extractf128_ps(f, 1));
      }
    }
  }
}

} // namespace
} // namespace q8::cpu::gemm
