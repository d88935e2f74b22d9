// int8 GEMM kernels for AVX-VNNI (256-bit vpdpbusd, VEX encoded), plus the
// single-thread peak measurement of the 256-bit instructions (see int8_gemm.h).
#include <chrono>
#include <cstring>

#include "int8_gemm_avx2_impl.h"

namespace q8::cpu::gemm {
namespace {

// vpdpbusd (VEX) through inline asm: see int8_gemm_avx512_vnni.cpp (GCC 12
// otherwise copies the accumulators through the stack on every iteration).
inline __m256i dpbusd(__m256i acc, __m256i a, __m256i b) {
  asm("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(a), "x"(b));
  return acc;
}

// One panel (16 columns = two ymm) for MR rows.
template <int MR>
void int8_panel_avx_vnni(const uint8_t* a, const int8_t* b, int64_t g0, int64_t g1, int32_t* c) {
  __m256i acc[MR][2];
  for (int r = 0; r < MR; ++r) {
    acc[r][0] = _mm256_setzero_si256();
    acc[r][1] = _mm256_setzero_si256();
  }
  const int8_t* bg = b + g0 * kGroupBytes;
  const uint8_t* ag = a + g0 * (kRows * kGroup);
  for (int64_t g = g0; g < g1; ++g, bg += kGroupBytes, ag += kRows * kGroup) {
    const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bg));
    const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bg + 32));
    for (int r = 0; r < MR; ++r) {
      const __m256i av = _mm256_set1_epi32(load_i32(ag + r * kGroup));
      acc[r][0] = dpbusd(acc[r][0], av, b0);
      acc[r][1] = dpbusd(acc[r][1], av, b1);
    }
  }
  for (int r = 0; r < MR; ++r) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * kTileCols), acc[r][0]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * kTileCols + 8), acc[r][1]);
  }
}

using PanelFn = void (*)(const uint8_t*, const int8_t*, int64_t, int64_t, int32_t*);
constexpr PanelFn kPanels[kRows + 1] = {
    nullptr,
    &int8_panel_avx_vnni<1>,
    &int8_panel_avx_vnni<2>,
    &int8_panel_avx_vnni<3>,
    &int8_panel_avx_vnni<4>,
    &int8_panel_avx_vnni<5>,
    &int8_panel_avx_vnni<6>};

void int8_tile_avx_vnni(const uint8_t* a, const int8_t* b, int64_t panel_stride, int64_t g0, int64_t g1, int mr,
                        int np, int32_t* c) {
  for (int p = 0; p < np; ++p) {
    kPanels[mr](a, b + p * panel_stride, g0, g1, c + p * kPanel);
  }
}

} // namespace

const GemmKernels& gemm_avx_vnni() {
  static const GemmKernels table{
      "avx_vnni", &int8_tile_avx_vnni, &f32_tile_avx2, &int8_epilogue_avx2, &row_min_max_avx2, &quantize_rows_avx2,
      &dequant_panels_avx2, /*int8_conv_tile=*/nullptr};
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
  __m256i x = _mm256_set1_epi32(0x01010101);
  const __m256i w = _mm256_set1_epi32(0x02020202);
  Q8_PEAK_LOOP(__m256i, _mm256_set1_epi32(i), _mm256_dpbusd_avx_epi32(acc[i], x, w))
}

double fma_per_second(int64_t ms) {
  __m256 x = _mm256_set1_ps(0.999f);
  const __m256 w = _mm256_set1_ps(1e-6f);
  Q8_PEAK_LOOP(__m256, _mm256_set1_ps(0.5f), _mm256_fmadd_ps(acc[i], x, w))
}
#undef Q8_PEAK_LOOP
} // namespace

double peak_gops_avx2(const char* kind, int64_t ms) {
  if (std::strcmp(kind, "vpdpbusd256") == 0) {
    return dp_per_second(ms) * 32 * 2 / 1e9;
  }
  if (std::strcmp(kind, "fma256") == 0) {
    return fma_per_second(ms) * 8 * 2 / 1e9;
  }
  return -1.0;
}

} // namespace q8::cpu::gemm
