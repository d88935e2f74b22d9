// Depthwise accumulation kernels for the avx512 family (conv_depthwise.h): 32
// channels per block, uint8/int8 widened to int16, pairs of taps through vpmaddwd
// (scheme in conv_depthwise_simd.h). AVX-512 F/BW/VL only, no VNNI: the table of
// both AVX512 and AVX512_VNNI CPUs.
#include <immintrin.h>

#include "conv_depthwise.h"
#include "conv_depthwise_simd.h"

namespace q8::cpu::conv {
namespace {

struct Avx512 {
  using V = __m512i;
  static constexpr int B = 32;
  static V zero() { return _mm512_setzero_si512(); }
  static V load(const uint8_t* p) {
    return _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  // Reads only p[0, n), n in [1, 32) (masked load: no fault on the masked bytes).
  static V load_tail(const uint8_t* p, int n) {
    const __mmask32 m = static_cast<__mmask32>((uint32_t{1} << n) - 1);
    return _mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(m, p));
  }
  static V widen_w(const int8_t* p) {
    return _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static V unpacklo(V a, V b) { return _mm512_unpacklo_epi16(a, b); }
  static V unpackhi(V a, V b) { return _mm512_unpackhi_epi16(a, b); }
  static V madd(V a, V b) { return _mm512_madd_epi16(a, b); }
  static V add(V a, V b) { return _mm512_add_epi32(a, b); }
  // Lane k of lo = channels [8k, 8k+4), of hi = [8k+4, 8k+8).
  // Stores channels [0, 16) always and [16, 32) when n > 16: the block starts at a
  // multiple of 32, so that stays below round_up(C, 16) <= ldacc.
  static void store(int32_t* out, V lo, V hi, int n) {
    const __m512i i0 = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
    _mm512_storeu_si512(out, _mm512_permutex2var_epi64(lo, i0, hi));
    if (n > 16) {
      const __m512i i1 = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
      _mm512_storeu_si512(out + 16, _mm512_permutex2var_epi64(lo, i1, hi));
    }
  }
};

} // namespace

const DepthwiseKernels& depthwise_avx512() {
  static const DepthwiseKernels k{"avx512", &dw_acc_row<Avx512>};
  return k;
}

} // namespace q8::cpu::conv
