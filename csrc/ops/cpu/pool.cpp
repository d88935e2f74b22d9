// Max pooling of uint8 codes on the CPU (schema in ../conv.cpp, checks in ../checks.cpp).
//   out[n, c, oy, ox] = max over the window's taps inside the input of x[n, c, iy, ix]
// (padding never wins: every window has a tap inside, check_max_pool2d_args), written
// channels_last. Quantization is monotone, so these are the codes of torch's
// max_pool2d of the dequantized values, with the same qparams.
#include <algorithm>
#include <cstring>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define Q8_POOL_AVX2 1
#endif

#include "../checks.h"
#include "isa.h"

namespace q8::cpu {
namespace {

// One output pixel: o[c] = max over the taps t < ntaps of src[t][c], c0 <= c < C (ntaps
// >= 1); per 64 channels the running max stays in 4 registers.
inline void max_of_taps(const uint8_t* const* src, int64_t ntaps, int64_t C, uint8_t* o, int64_t c0 = 0) {
  int64_t c = c0;
#if defined(__SSE2__)
  const auto ld = [](const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); };
  for (; c + 64 <= C; c += 64) {
    __m128i m0 = ld(src[0] + c), m1 = ld(src[0] + c + 16), m2 = ld(src[0] + c + 32), m3 = ld(src[0] + c + 48);
    for (int64_t t = 1; t < ntaps; ++t) {
      const uint8_t* s = src[t] + c;
      m0 = _mm_max_epu8(m0, ld(s));
      m1 = _mm_max_epu8(m1, ld(s + 16));
      m2 = _mm_max_epu8(m2, ld(s + 32));
      m3 = _mm_max_epu8(m3, ld(s + 48));
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o + c), m0);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o + c + 16), m1);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o + c + 32), m2);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o + c + 48), m3);
  }
  for (; c + 16 <= C; c += 16) {
    __m128i m = ld(src[0] + c);
    for (int64_t t = 1; t < ntaps; ++t) {
      m = _mm_max_epu8(m, ld(src[t] + c));
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o + c), m);
  }
#endif
  for (; c < C; ++c) {
    uint8_t m = src[0][c];
    for (int64_t t = 1; t < ntaps; ++t) {
      m = std::max(m, src[t][c]);
    }
    o[c] = m;
  }
}

#if defined(Q8_POOL_AVX2)
// max_of_taps with 32-byte vectors (AVX2 and every later family): 4 accumulators per
// 128 channels, then 32 at a time, the last C % 32 channels by max_of_taps.
__attribute__((target("avx2"), always_inline)) inline void max_of_taps_avx2(const uint8_t* const* src,
                                                                             int64_t ntaps, int64_t C, uint8_t* o) {
// (macros: a lambda would not inherit the target attribute)
#define Q8_LD(p) _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
#define Q8_ST(p, v) _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v)
  int64_t c = 0;
  for (; c + 128 <= C; c += 128) {
    __m256i m0 = Q8_LD(src[0] + c), m1 = Q8_LD(src[0] + c + 32), m2 = Q8_LD(src[0] + c + 64), m3 = Q8_LD(src[0] + c + 96);
    for (int64_t t = 1; t < ntaps; ++t) {
      const uint8_t* s = src[t] + c;
      m0 = _mm256_max_epu8(m0, Q8_LD(s));
      m1 = _mm256_max_epu8(m1, Q8_LD(s + 32));
      m2 = _mm256_max_epu8(m2, Q8_LD(s + 64));
      m3 = _mm256_max_epu8(m3, Q8_LD(s + 96));
    }
    Q8_ST(o + c, m0);
    Q8_ST(o + c + 32, m1);
    Q8_ST(o + c + 64, m2);
    Q8_ST(o + c + 96, m3);
  }
  for (; c + 32 <= C; c += 32) {
    __m256i m = Q8_LD(src[0] + c);
    for (int64_t t = 1; t < ntaps; ++t) {
      m = _mm256_max_epu8(m, Q8_LD(src[t] + c));
    }
    Q8_ST(o + c, m);
  }
#undef Q8_LD
#undef Q8_ST
  max_of_taps(src, ntaps, C, o, c);  // (the last C % 32 channels)
}
#endif

// One output row: per pixel, its taps inside the input (rows i0 .. i1 - 1, columns
// col_first[ox] .. col_count[ox] - 1), then their max with MAX_OF_TAPS (0, the code of
// torch's -inf, where there is none: only with a dilation that steps over a small
// input). A macro, so that the AVX2 copy calls (and inlines) max_of_taps_avx2.
#define Q8_POOL_ROW(MAX_OF_TAPS)                                   \
  for (int64_t ox = 0; ox < OW; ++ox) {                            \
    uint8_t* o = orow + ox * C;                                    \
    const int64_t ix0 = ox * a.sw - a.pw;                          \
    int64_t ntaps = 0;                                             \
    for (int64_t i = i0; i < i1; ++i) {                            \
      const uint8_t* xr = xs + (iy0 + i * a.dh) * W * C;           \
      for (int64_t j = col_first[ox]; j < col_count[ox]; ++j) {    \
        src[ntaps++] = xr + (ix0 + j * a.dw) * C;                  \
      }                                                            \
    }                                                              \
    if (ntaps == 0) {                                              \
      std::memset(o, 0, static_cast<size_t>(C));                   \
    } else {                                                       \
      MAX_OF_TAPS(src, ntaps, C, o);                               \
    }                                                              \
  }

void pool_row(const uint8_t* xs, int64_t iy0, int64_t i0, int64_t i1, const detail::PoolArgs& a, int64_t W,
              int64_t C, int64_t OW, const int64_t* col_first, const int64_t* col_count, const uint8_t** src,
              uint8_t* orow) {
  Q8_POOL_ROW(max_of_taps)
}

#if defined(Q8_POOL_AVX2)
__attribute__((target("avx2"))) void pool_row_avx2(const uint8_t* xs, int64_t iy0, int64_t i0, int64_t i1,
                                                   const detail::PoolArgs& a, int64_t W, int64_t C, int64_t OW,
                                                   const int64_t* col_first, const int64_t* col_count,
                                                   const uint8_t** src, uint8_t* orow) {
  Q8_POOL_ROW(max_of_taps_avx2)
}
#endif
#undef Q8_POOL_ROW

at::Tensor max_pool2d_cpu(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  const detail::PoolArgs a =
      detail::check_max_pool2d_args("max_pool2d", input, kernel_size, stride, padding, dilation, ceil_mode);
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t OH = a.oh.expect_int(), OW = a.ow.expect_int();
  at::Tensor out = at::empty({N, C, OH, OW}, input.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) {
    return out;
  }
  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
  const uint8_t* xp = x.const_data_ptr<uint8_t>();
  uint8_t* op = out.mutable_data_ptr<uint8_t>();
  // Per output column, its taps' input columns inside the image (the same for every row).
  std::vector<int64_t> col_first(static_cast<size_t>(OW)), col_count(static_cast<size_t>(OW));
  for (int64_t ox = 0; ox < OW; ++ox) {
    const int64_t ix0 = ox * a.sw - a.pw;
    int64_t first = -1, count = 0;
    for (int64_t j = 0; j < a.kw; ++j) {
      const int64_t ix = ix0 + j * a.dw;
      if (ix >= 0 && ix < W) {
        first = first < 0 ? j : first;
        count = j + 1;  // (taps first .. count - 1, those inside are contiguous)
      }
    }
    col_first[ox] = first < 0 ? 0 : first;  // (none inside: first = count = 0)
    col_count[ox] = count;
  }
  const int64_t grain = std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(OW * C * a.kh * a.kw, 1));
  [[maybe_unused]] const bool avx2 = active_isa() != Isa::DEFAULT;
  at::parallel_for(0, N * OH, grain, [&](int64_t begin, int64_t end) {
    std::vector<const uint8_t*> src(static_cast<size_t>(a.kh * a.kw));
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / OH, oy = row % OH;
      const int64_t iy0 = oy * a.sh - a.ph;
      int64_t i0 = 0, i1 = a.kh;
      while (i0 < a.kh && iy0 + i0 * a.dh < 0) {
        ++i0;
      }
      while (i1 > i0 && iy0 + (i1 - 1) * a.dh >= H) {
        --i1;
      }
      const uint8_t* xs = xp + n * H * W * C;
      uint8_t* orow = op + row * OW * C;
#if defined(Q8_POOL_AVX2)
      if (avx2) {
        pool_row_avx2(xs, iy0, i0, i1, a, W, C, OW, col_first.data(), col_count.data(), src.data(), orow);
        continue;
      }
#endif
      pool_row(xs, iy0, i0, i1, a, W, C, OW, col_first.data(), col_count.data(), src.data(), orow);
    }
  });
  return out;
}

} // namespace

TORCH_LIBRARY_IMPL(q8, CPU, m) {
  m.impl("max_pool2d", &max_pool2d_cpu);
}

} // namespace q8::cpu
