// Vectorized row kernels of the int8 embedding ops (see embedding.h).
//
// Compiled once per CPU family with CPU_CAPABILITY set to DEFAULT, AVX2 or AVX512
// (see CMakeLists.txt), with -ffp-contract=off: each element is float(q) * s
// (exact int8 -> float32, one rounded product), then for the bags one rounded
// product by the sample weight and one rounded sum, in the same order on every
// family and in the scalar tails, so every family gives bit-identical results.
#include <algorithm>
#include <cstring>

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include "embedding.h"

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

#ifndef CPU_CAPABILITY
#error "embedding_vec.cpp must be compiled with CPU_CAPABILITY set (see CMakeLists.txt)"
#endif

namespace q8::cpu {
namespace CPU_CAPABILITY {
namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kW = Vec::size();

// Vec::size() int8 codes as float32 (exact).
C10_ALWAYS_INLINE Vec load_codes(const int8_t* p) {
#if defined(CPU_CAPABILITY_AVX512)
  static_assert(Vec::size() == 16);
  return Vec(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))));
#elif defined(CPU_CAPABILITY_AVX2)
  static_assert(Vec::size() == 8);
  int64_t bytes;
  std::memcpy(&bytes, p, sizeof(bytes));
  return Vec(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_cvtsi64_si128(bytes))));
#else
  alignas(64) float tmp[kW];
  for (int64_t t = 0; t < kW; ++t) {
    tmp[t] = static_cast<float>(p[t]);
  }
  return Vec::loadu(tmp);
#endif
}

// Two float vectors (2 * kW elements) stored as T.
template <typename T>
C10_ALWAYS_INLINE void store2(T* out, const Vec& a, const Vec& b) {
  if constexpr (std::is_same_v<T, float>) {
    a.store(out);
    b.store(out + kW);
  } else if constexpr (std::is_same_v<T, double>) {
    alignas(64) float tmp[2 * kW];
    a.store(tmp);
    b.store(tmp + kW);
    for (int64_t t = 0; t < 2 * kW; ++t) {
      out[t] = static_cast<double>(tmp[t]);
    }
  } else {
    at::vec::convert_from_float<T>(a, b).store(out);
  }
}

template <typename T>
void dequantize_row_t(const int8_t* q, float s, T* out, int64_t dim) {
  const Vec vs(s);
  int64_t j = 0;
  for (; j + 2 * kW <= dim; j += 2 * kW) {
    store2<T>(out + j, load_codes(q + j) * vs, load_codes(q + j + kW) * vs);
  }
  for (; j < dim; ++j) {
    out[j] = static_cast<T>(static_cast<float>(q[j]) * s);
  }
}

template <typename F>
void dispatch_out(c10::ScalarType dtype, const F& f) {
  switch (dtype) {
    case c10::ScalarType::Float:
      return f(float{});
    case c10::ScalarType::Double:
      return f(double{});
    case c10::ScalarType::Half:
      return f(c10::Half{});
    case c10::ScalarType::BFloat16:
      return f(c10::BFloat16{});
    default:
      TORCH_INTERNAL_ASSERT(false, "q8 embedding kernels: unexpected output dtype ", dtype);
  }
}

void dequantize_row(c10::ScalarType dtype, const int8_t* q, float s, void* out, int64_t dim) {
  dispatch_out(dtype, [&](auto tag) {
    using T = decltype(tag);
    dequantize_row_t<T>(q, s, static_cast<T*>(out), dim);
  });
}

template <bool kMax, bool kWeighted>
void bag_reduce_t(const int8_t* q, const float* scale, int64_t dim, const int64_t* rows, const float* w,
                  int64_t count, float* acc) {
  constexpr int kU = 4;
  int64_t j = 0;
  for (; j + kU * kW <= dim; j += kU * kW) {
    Vec a[kU];
    for (int u = 0; u < kU; ++u) {
      a[u] = Vec(0.f);
    }
    for (int64_t e = 0; e < count; ++e) {
      const int8_t* row = q + rows[e] * dim + j;
      const Vec vs(scale[rows[e]]);
      for (int u = 0; u < kU; ++u) {
        Vec v = load_codes(row + u * kW) * vs;
        if constexpr (kWeighted) {
          v = v * Vec(w[e]);
        }
        if constexpr (kMax) {
          a[u] = e == 0 ? v : at::vec::maximum(a[u], v);
        } else {
          a[u] = a[u] + v;
        }
      }
    }
    for (int u = 0; u < kU; ++u) {
      a[u].store(acc + j + u * kW);
    }
  }
  for (; j + kW <= dim; j += kW) {
    Vec a(0.f);
    for (int64_t e = 0; e < count; ++e) {
      Vec v = load_codes(q + rows[e] * dim + j) * Vec(scale[rows[e]]);
      if constexpr (kWeighted) {
        v = v * Vec(w[e]);
      }
      if constexpr (kMax) {
        a = e == 0 ? v : at::vec::maximum(a, v);
      } else {
        a = a + v;
      }
    }
    a.store(acc + j);
  }
  for (; j < dim; ++j) {
    float a = 0.f;
    for (int64_t e = 0; e < count; ++e) {
      float v = static_cast<float>(q[rows[e] * dim + j]) * scale[rows[e]];
      if constexpr (kWeighted) {
        v = v * w[e];
      }
      if constexpr (kMax) {
        a = e == 0 ? v : std::max(a, v);
      } else {
        a = a + v;
      }
    }
    acc[j] = a;
  }
}

void bag_reduce(bool max, const int8_t* q, const float* scale, int64_t dim, const int64_t* rows, const float* w,
                int64_t count, float* acc) {
  if (max) {
    bag_reduce_t<true, false>(q, scale, dim, rows, nullptr, count, acc);
  } else if (w != nullptr) {
    bag_reduce_t<false, true>(q, scale, dim, rows, w, count, acc);
  } else {
    bag_reduce_t<false, false>(q, scale, dim, rows, nullptr, count, acc);
  }
}

template <typename T>
void store_row_t(const float* acc, bool divide, float divisor, T* out, int64_t dim) {
  const Vec vd(divisor);
  int64_t j = 0;
  for (; j + 2 * kW <= dim; j += 2 * kW) {
    Vec a = Vec::loadu(acc + j);
    Vec b = Vec::loadu(acc + j + kW);
    if (divide) {
      a = a / vd;
      b = b / vd;
    }
    store2<T>(out + j, a, b);
  }
  for (; j < dim; ++j) {
    out[j] = static_cast<T>(divide ? acc[j] / divisor : acc[j]);
  }
}

void store_row(c10::ScalarType dtype, const float* acc, bool divide, float divisor, void* out, int64_t dim) {
  dispatch_out(dtype, [&](auto tag) {
    using T = decltype(tag);
    store_row_t<T>(acc, divide, divisor, static_cast<T*>(out), dim);
  });
}

} // namespace

const EmbeddingKernelTable& embedding_kernel_table() {
  static const EmbeddingKernelTable table{dequantize_row, bag_reduce, store_row};
  return table;
}

} // namespace CPU_CAPABILITY
} // namespace q8::cpu
