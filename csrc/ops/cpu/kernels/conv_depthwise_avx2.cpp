// Depthwise accumulation kernels for the avx2 family (conv_depthwise.h): 16
// channels per block, uint8/int8 widened to int16, pairs of taps through vpmaddwd
// (scheme in conv_depthwise_simd.h). AVX2 only: also the table of AVX_VNNI CPUs.
#include <immintrin.h>

#include <cstring>

#include "conv_depthwise.h"
#include "conv_depthwise_simd.h"

namespace q8::cpu::conv {
namespace {

struct Avx2 {
  using V = __m256i;
  static constexpr int B = 16;
  static V zero() { return _mm256_setzero_si256(); }
  static V load(const uint8_t* p) {
    return _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  // Reads only p[0, n), n in [1, 16).
  static V load_tail(const uint8_t* p, int n) {
    alignas(16) uint8_t tmp[16] = {};
    std::memcpy(tmp, p, static_cast<size_t>(n));
    return load(tmp);
  }
  static V widen_w(const int8_t* p) {
    return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static V unpacklo(V a, V b) { return _mm256_unpacklo_epi16(a, b); }
  static V unpackhi(V a, V b) { return _mm256_unpackhi_epi16(a, b); }
  static V madd(V a, V b) { return _mm256_madd_epi16(a, b); }
  static V add(V a, V b) { return _mm256_add_epi32(a, b); }
  // lo = channels [0,4) | [8,12), hi = [4,8) | [12,16) (per 128-bit lane).
  // Stores all 16 (the block starts at a multiple of 16, below round_up(C, 16) <= ldacc).
  static void store(int32_t* out, V lo, V hi, int /*n*/) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_permute2x128_si256(lo, hi, 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 8), _mm256_permute2x128_si256(lo, hi, 0x31));
  }
};

} // namespace

const DepthwiseKernels& depthwise_avx2() {
  static const DepthwiseKernels k{"avx2", &dw_acc_row<Avx2>};
  return k;
}

} // namespace q8::cpu::conv
