// int8 GEMM kernels for AVX-512 VNNI (512-bit vpdpbusd: 64 uint8 x int8 products
// summed into 16 int32 lanes per instruction, without saturation), plus the
// single-thread peak measurement of the 512-bit instructions (see int8_gemm.h).
#include <array>
#include <chrono>
#include <cstring>

#include <immintrin.h>

#include "int8_gemm_common.h"

namespace q8::cpu::gemm {
namespace {

// vpdpbusd through inline asm: with the intrinsic, GCC 12 keeps an array of
// accumulators in memory and copies every one through the stack on each
// iteration (half the speed); with the asm they stay in registers.
inline __m512i dpbusd(__m512i acc, __m512i a, __m512i b) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
  return acc;
}

// MR rows x NP panels: MR * NP accumulators (at most 24 of the 32 zmm), NP
// weight vectors and one broadcast activation per group.
template <int MR, int NP>
void int8_tile_vnni(const uint8_t* a, const int8_t* b, int64_t panel_stride, int64_t g0, int64_t g1, int32_t* c) {
  __m512i acc[MR][NP];
  for (int r = 0; r < MR; ++r) {
    for (int p = 0; p < NP; ++p) {
      acc[r][p] = _mm512_setzero_si512();
    }
  }
  const int8_t* bg = b + g0 * kGroupBytes;
  const uint8_t* ag = a + g0 * (kRows * kGroup);
  for (int64_t g = g0; g < g1; ++g, bg += kGroupBytes, ag += kRows * kGroup) {
    __m512i w[NP];
    for (int p = 0; p < NP; ++p) {
      w[p] = _mm512_loadu_si512(bg + p * panel_stride);
    }
    for (int r = 0; r < MR; ++r) {
      const __m512i av = _mm512_set1_epi32(load_i32(ag + r * kGroup));
      for (int p = 0; p < NP; ++p) {
        acc[r][p] = dpbusd(acc[r][p], av, w[p]);
      }
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int p = 0; p < NP; ++p) {
      _mm512_storeu_si512(c + r * kTileCols + p * kPanel, acc[r][p]);
    }
  }
}

using TileFn = void (*)(const uint8_t*, const int8_t*, int64_t, int64_t, int64_t, int32_t*);

template <int MR>
constexpr std::array<TileFn, kMaxPanels + 1> tiles_for_rows() {
  return {nullptr, &int8_tile_vnni<MR, 1>, &int8_tile_vnni<MR, 2>, &int8_tile_vnni<MR, 3>, &int8_tile_vnni<MR, 4>};
}

const std::array<TileFn, kMaxPanels + 1> kTiles[kRows + 1] = {
    {}, tiles_for_rows<1>(), tiles_for_rows<2>(), tiles_for_rows<3>(),
    tiles_for_rows<4>(), tiles_for_rows<5>(), tiles_for_rows<6>()};

void int8_tile_avx512(const uint8_t* a, const int8_t* b, int64_t panel_stride, int64_t g0, int64_t g1, int mr,
                      int np, int32_t* c) {
  kTiles[mr][np](a, b, panel_stride, g0, g1, c);
}

// The implicit-GEMM convolution tile (int8_gemm.h): the loop of int8_tile_vnni
// with each row's activations read in place, one pointer per row and tap.
template <int MR, int NP>
void int8_conv_tile_vnni(const uint8_t* const* rows, int64_t ntaps, int64_t cgroups, const int8_t* b,
                         int64_t panel_stride, int32_t* c) {
  __m512i acc[MR][NP];
  for (int r = 0; r < MR; ++r) {
    for (int p = 0; p < NP; ++p) {
      acc[r][p] = _mm512_setzero_si512();
    }
  }
  const int8_t* bg = b;
  for (int64_t t = 0; t < ntaps; ++t) {
    const uint8_t* s[MR];
    for (int r = 0; r < MR; ++r) {
      s[r] = rows[t * kRows + r];
    }
    for (int64_t q = 0; q < cgroups; ++q, bg += kGroupBytes) {
      __m512i w[NP];
      for (int p = 0; p < NP; ++p) {
        w[p] = _mm512_loadu_si512(bg + p * panel_stride);
      }
      for (int r = 0; r < MR; ++r) {
        const __m512i av = _mm512_set1_epi32(load_i32(s[r] + 4 * q));
        for (int p = 0; p < NP; ++p) {
          acc[r][p] = dpbusd(acc[r][p], av, w[p]);
        }
      }
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int p = 0; p < NP; ++p) {
      _mm512_storeu_si512(c + r * kTileCols + p * kPanel, acc[r][p]);
    }
  }
}

using ConvTileFn = void (*)(const uint8_t* const*, int64_t, int64_t, const int8_t*, int64_t, int32_t*);

template <int MR>
constexpr std::array<ConvTileFn, kMaxPanels + 1> conv_tiles_for_rows() {
  return {nullptr, &int8_conv_tile_vnni<MR, 1>, &int8_conv_tile_vnni<MR, 2>, &int8_conv_tile_vnni<MR, 3>,
          &int8_conv_tile_vnni<MR, 4>};
}

const std::array<ConvTileFn, kMaxPanels + 1> kConvTiles[kRows + 1] = {
    {}, conv_tiles_for_rows<1>(), conv_tiles_for_rows<2>(), conv_tiles_for_rows<3>(),
    conv_tiles_for_rows<4>(), conv_tiles_for_rows<5>(), conv_tiles_for_rows<6>()};

void int8_conv_tile_avx512(const uint8_t* const* rows, int64_t ntaps, int64_t cgroups, const int8_t* b,
                           int64_t panel_stride, int mr, int np, int32_t* c) {
  kConvTiles[mr][np](rows, ntaps, cgroups, b, panel_stride, c);
}

// Weight-only float tile: a group's 64 bytes as four 16-byte pieces [4 columns][4 k],
// converted to float and multiplied by the row's 4 values repeated 4 times; each
// column's 4 partial sums are added at the end.
template <int MR, int NP>
void f32_tile_impl(const float* x, int64_t ldx, const int8_t* b, int64_t panel_stride, int64_t g0, int64_t g1,
                   float* c) {
  __m512 acc[MR][NP * 4];
  for (int r = 0; r < MR; ++r) {
    for (int j = 0; j < NP * 4; ++j) {
      acc[r][j] = _mm512_setzero_ps();
    }
  }
  const int8_t* bg = b + g0 * kGroupBytes;
  for (int64_t g = g0; g < g1; ++g, bg += kGroupBytes) {
    __m512 xv[MR];
    for (int r = 0; r < MR; ++r) {
      xv[r] = _mm512_broadcast_f32x4(_mm_loadu_ps(x + r * ldx + g * kGroup));
    }
    for (int p = 0; p < NP; ++p) {
      for (int j = 0; j < 4; ++j) {
        const __m512 w = _mm512_cvtepi32_ps(
            _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bg + p * panel_stride + 16 * j))));
        for (int r = 0; r < MR; ++r) {
          acc[r][p * 4 + j] = _mm512_fmadd_ps(w, xv[r], acc[r][p * 4 + j]);
        }
      }
    }
  }
  alignas(64) float t[16];
  for (int r = 0; r < MR; ++r) {
    for (int j = 0; j < NP * 4; ++j) {
      _mm512_store_ps(t, acc[r][j]);
      float* out = c + r * kTileCols + j * 4;
      for (int q = 0; q < 4; ++q) {
        out[q] = (t[4 * q] + t[4 * q + 1]) + (t[4 * q + 2] + t[4 * q + 3]);
      }
    }
  }
}

void f32_tile_avx512(const float* x, int64_t ldx, const int8_t* b, int64_t panel_stride, int64_t g0, int64_t g1,
                     int mr, int np, float* c) {
  if (mr == 1) {
    switch (np) {
      case 4:
        return f32_tile_impl<1, 4>(x, ldx, b, panel_stride, g0, g1, c);
      case 3:
        return f32_tile_impl<1, 3>(x, ldx, b, panel_stride, g0, g1, c);
      case 2:
        return f32_tile_impl<1, 2>(x, ldx, b, panel_stride, g0, g1, c);
      default:
        return f32_tile_impl<1, 1>(x, ldx, b, panel_stride, g0, g1, c);
    }
  }
  for (int p = 0; p < np; ++p) {
    const int8_t* bp = b + p * panel_stride;
    float* cp = c + p * kPanel;
    switch (mr) {
      case 4:
        f32_tile_impl<4, 1>(x, ldx, bp, panel_stride, g0, g1, cp);
        break;
      case 3:
        f32_tile_impl<3, 1>(x, ldx, bp, panel_stride, g0, g1, cp);
        break;
      default:
        f32_tile_impl<2, 1>(x, ldx, bp, panel_stride, g0, g1, cp);
        break;
    }
  }
}

void int8_epilogue_avx512(const int32_t* c, int mr, int ncols, const int32_t* zp, const float* sx,
                          const int32_t* wsum, const float* sw, const float* bias, float* y, int64_t ldy) {
  for (int r = 0; r < mr; ++r) {
    const __m512i zv = _mm512_set1_epi32(zp[r]);
    const __m512 sxv = _mm512_set1_ps(sx[r]);
    for (int j = 0; j < ncols; j += 16) {
      const __mmask16 m = ncols - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (ncols - j)) - 1);
      const __m512i acc = _mm512_maskz_loadu_epi32(m, c + r * kTileCols + j);
      const __m512i ws = _mm512_maskz_loadu_epi32(m, wsum + j);
      const __m512 t = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, _mm512_mullo_epi32(zv, ws)));
      const __m512 s = _mm512_mul_ps(sxv, _mm512_maskz_loadu_ps(m, sw + j));
      __m512 v = _mm512_mul_ps(t, s);
      if (bias != nullptr) {
        v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, bias + j));
      }
      _mm512_mask_storeu_ps(y + r * ldy + j, m, v);
    }
  }
}

void row_min_max_avx512(const float* x, int64_t k, float* mn, float* mx) {
  __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
  __m512 lo2 = lo, hi2 = hi;
  int64_t i = 0;
  for (; i + 32 <= k; i += 32) {
    const __m512 v = _mm512_loadu_ps(x + i), v2 = _mm512_loadu_ps(x + i + 16);
    lo = _mm512_min_ps(lo, v);
    hi = _mm512_max_ps(hi, v);
    lo2 = _mm512_min_ps(lo2, v2);
    hi2 = _mm512_max_ps(hi2, v2);
  }
  for (; i < k; i += 16) {
    const __mmask16 m = k - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (k - i)) - 1);
    const __m512 v = _mm512_maskz_loadu_ps(m, x + i);  // 0 outside: the range holds 0 anyway
    lo = _mm512_min_ps(lo, v);
    hi = _mm512_max_ps(hi, v);
  }
  *mn = _mm512_reduce_min_ps(_mm512_min_ps(lo, lo2));
  *mx = _mm512_reduce_max_ps(_mm512_max_ps(hi, hi2));
}

uint32_t quantize_rows_avx512(const float* x, int64_t ldx, int64_t k, int rows, const float* inv_scale,
                              const int32_t* zp, uint8_t* panel, int64_t groups) {
  uint32_t bad = 0;
  const int64_t kpad = groups * kGroup;
  for (int r = 0; r < rows; ++r) {
    const float* xr = x + r * ldx;
    const __m512 inv = _mm512_set1_ps(inv_scale[r]);
    const __m512 z = _mm512_set1_ps(static_cast<float>(zp[r]));
    const __m512 zero = _mm512_setzero_ps(), top = _mm512_set1_ps(255.f);
    __mmask16 nonfinite = 0;
    uint8_t* pr = panel + r * kGroup;
    for (int64_t i = 0; i < kpad; i += 16) {
      const __mmask16 m = k - i >= 16 ? __mmask16(0xFFFF) : (k > i ? __mmask16((1u << (k - i)) - 1) : __mmask16(0));
      const __m512 v = _mm512_maskz_loadu_ps(m, xr + i);
      nonfinite |= _mm512_fpclass_ps_mask(v, 0x99);  // QNaN, +Inf, -Inf, SNaN
      __m512 q = _mm512_add_ps(_mm512_roundscale_ps(_mm512_mul_ps(v, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), z);
      q = _mm512_max_ps(q, zero);  // NaN -> 0, as fmax
      q = _mm512_min_ps(q, top);
      const __m512i qi = _mm512_maskz_cvttps_epi32(m, q);  // k >= K -> 0
      const __m128i b8 = _mm512_cvtepi32_epi8(qi);
      const int64_t g = i / kGroup;
      const int64_t ng = std::min<int64_t>(4, groups - g);
      alignas(16) int32_t d[4];
      _mm_store_si128(reinterpret_cast<__m128i*>(d), b8);
      for (int64_t j = 0; j < ng; ++j) {
        std::memcpy(pr + (g + j) * (kRows * kGroup), &d[j], 4);
      }
    }
    if (nonfinite != 0) {
      bad |= 1u << r;
    }
  }
  return bad;
}

// dequant_panels: each 16-byte quarter of a group is 4 rows x 4 k; widened to
// 16 floats, scaled by [s_4q x4, ..., s_4q+3 x4] and stored as four 16-byte row
// pieces.
void dequant_panels_avx512(const int8_t* b, int64_t panel_stride, int64_t groups, int np, const float* sw,
                           float* dst, int64_t ldd) {
  for (int p = 0; p < np; ++p) {
    const int8_t* bp = b + p * panel_stride;
    const __m512 s16 = _mm512_loadu_ps(sw + p * kPanel);
    __m512 scale[4];
    for (int q = 0; q < 4; ++q) {
      const __m512i idx = _mm512_set_epi32(4 * q + 3, 4 * q + 3, 4 * q + 3, 4 * q + 3, 4 * q + 2, 4 * q + 2,
                                           4 * q + 2, 4 * q + 2, 4 * q + 1, 4 * q + 1, 4 * q + 1, 4 * q + 1,
                                           4 * q, 4 * q, 4 * q, 4 * q);
      scale[q] = _mm512_permutexvar_ps(idx, s16);
    }
    float* d = dst + p * kPanel * ldd;
    for (int64_t g = 0; g < groups; ++g) {
      const int8_t* bg = bp + g * kGroupBytes;
      for (int q = 0; q < 4; ++q) {
        const __m128i w8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(bg + 16 * q));
        const __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(w8)), scale[q]);
        float* dq = d + (4 * q) * ldd + g * kGroup;
        _mm_storeu_ps(dq, _mm512_castps512_ps128(f));
        _mm_storeu_ps(dq + ldd, _mm512_extractf32x4_ps(f, 1));
        _mm_storeu_ps(dq + 2 * ldd, _mm512_extractf32x4_ps(f, 2));
        _mm_storeu_ps(dq + 3 * ldd, _mm512_extractf32x4_ps(f, 3));
      }
    }
  }
}

} // namespace

const GemmKernels& gemm_avx512_vnni() {
  static const GemmKernels table{"avx512_vnni",         &int8_tile_avx512,   &f32_tile_avx512,
                                 &int8_epilogue_avx512, &row_min_max_avx512, &quantize_rows_avx512,
                                 &dequant_panels_avx512, &int8_conv_tile_avx512};
  return table;
}

namespace {
// 12 independent accumulators (enough to cover the latency) of one instruction,
// repeated for about `ms` milliseconds; the empty asm keeps the compiler from
// folding the loop. Returns instructions per second.
#define Q8_PEAK_LOOP(V, INIT, STEP)                                                       \
  constexpr int kChains = 12;                                                           \
  V acc[kChains];                                                                       \
  for (int i = 0; i < kChains; ++i) {                                                   \
    acc[i] = INIT;                                                                      \
  }                                                                                     \
  int64_t iters = 0;                                                                    \
  const auto start = std::chrono::steady_clock::now();                                 \
  double elapsed = 0.0;                                                                 \
  do {                                                                                  \
    for (int n = 0; n < 1000; ++n) {                                                    \
      _Pragma("GCC unroll 12") for (int i = 0; i < kChains; ++i) { acc[i] = STEP; }     \
      asm volatile("" : "+v"(x));                                                       \
    }                                                                                   \
    iters += 1000;                                                                      \
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); \
  } while (elapsed * 1e3 < static_cast<double>(ms));                                    \
  for (int i = 0; i < kChains; ++i) {                                                   \
    asm volatile("" : : "v"(acc[i]));                                                   \
  }                                                                                     \
  return static_cast<double>(iters) * kChains / elapsed;

double dp_per_second(int64_t ms) {
  __m512i x = _mm512_set1_epi32(0x01010101);
  const __m512i w = _mm512_set1_epi32(0x02020202);
  Q8_PEAK_LOOP(__m512i, _mm512_set1_epi32(i), _mm512_dpbusd_epi32(acc[i], x, w))
}

double fma_per_second(int64_t ms) {
  __m512 x = _mm512_set1_ps(0.999f);
  const __m512 w = _mm512_set1_ps(1e-6f);
  Q8_PEAK_LOOP(__m512, _mm512_set1_ps(0.5f), _mm512_fmadd_ps(acc[i], x, w))
}
#undef Q8_PEAK_LOOP
} // namespace

double peak_gops_avx512(const char* kind, int64_t ms) {
  if (std::strcmp(kind, "vpdpbusd512") == 0) {
    return dp_per_second(ms) * 64 * 2 / 1e9;
  }
  if (std::strcmp(kind, "fma512") == 0) {
    return fma_per_second(ms) * 16 * 2 / 1e9;
  }
  return -1.0;
}

} // namespace q8::cpu::gemm
