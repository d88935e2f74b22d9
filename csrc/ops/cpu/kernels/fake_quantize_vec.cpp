// Vectorized CPU kernels for fake quantization, quantize, dequantize and min/max.
//
// This file is compiled once per CPU family with CPU_CAPABILITY set to DEFAULT,
// AVX2 or AVX512 (see CMakeLists.txt), exactly as ATen builds its own kernels, so
// at::vec::Vectorized<float> is 8 portable lanes, 8 AVX2 lanes or 16 AVX-512 lanes.
// Every family runs the same sequence of IEEE float32 operations (multiply by
// 1/scale, round half to even, add, clamp, subtract, multiply), tails included, so
// all of them give bit-identical results; tests force each family and compare.
#include <algorithm>
#include <cfloat>
#include <cstring>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "kernels.h"

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

#ifndef CPU_CAPABILITY
#error "fake_quantize_vec.cpp must be compiled with CPU_CAPABILITY set (see CMakeLists.txt)"
#endif

namespace q8::cpu {
namespace CPU_CAPABILITY {
namespace {

using Vec = at::vec::Vectorized<float>;

// Elements per parallel task. Large enough to amortize the task, small enough to
// split a 256K-element tensor across both cores of the dev machine.
constexpr int64_t kGrain = 16384;

// ---------------------------------------------------------------------------
// Loading and storing float32 / float16 / bfloat16 as float32 vectors.
// ---------------------------------------------------------------------------
template <typename T>
struct Io {
  // float32: one float vector per step.
  static constexpr int kVecs = 1;
  static constexpr int64_t kStep = Vec::size();
  static void load(const T* p, int64_t n, Vec (&v)[kVecs]) {
    v[0] = n == kStep ? Vec::loadu(p) : Vec::loadu(p, n);
  }
  static void store(T* p, int64_t n, const Vec (&v)[kVecs]) {
    if (n == kStep) {
      v[0].store(p);
    } else {
      v[0].store(p, n);
    }
  }
};

template <typename T>
struct ReducedIo {
  // float16 / bfloat16: one Vectorized<T> holds two float vectors.
  using RVec = at::vec::Vectorized<T>;
  static constexpr int kVecs = 2;
  static constexpr int64_t kStep = RVec::size();
  static_assert(RVec::size() == 2 * Vec::size(), "reduced-precision vector must hold two float vectors");
  static void load(const T* p, int64_t n, Vec (&v)[kVecs]) {
    RVec r = n == kStep ? RVec::loadu(p) : RVec::loadu(p, n);
    auto [a, b] = at::vec::convert_to_float<T>(r);
    v[0] = a;
    v[1] = b;
  }
  static void store(T* p, int64_t n, const Vec (&v)[kVecs]) {
    RVec r = at::vec::convert_from_float<T>(v[0], v[1]);
    if (n == kStep) {
      r.store(p);
    } else {
      r.store(p, n);
    }
  }
};
template <>
struct Io<c10::Half> : ReducedIo<c10::Half> {};
template <>
struct Io<c10::BFloat16> : ReducedIo<c10::BFloat16> {};

// bool mask <-> float vector of 0.0f / 1.0f. Full vectors use the ISA's byte
// widening / narrowing; partial ones (the last of a run) go through a buffer.
C10_ALWAYS_INLINE void store_mask(const Vec& m, bool* dst, int64_t n) {
#if defined(CPU_CAPABILITY_AVX512)
  if (n == Vec::size()) {
    const __mmask16 k = _mm512_cmp_ps_mask(m, _mm512_setzero_ps(), _CMP_NEQ_UQ);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm_maskz_set1_epi8(k, 1));
    return;
  }
#elif defined(CPU_CAPABILITY_AVX2)
  if (n == Vec::size()) {
    const int bits = _mm256_movemask_ps(_mm256_cmp_ps(m, _mm256_setzero_ps(), _CMP_NEQ_UQ));
    const uint64_t bytes = _pdep_u64(static_cast<uint64_t>(bits), 0x0101010101010101ULL);
    std::memcpy(dst, &bytes, sizeof(bytes));
    return;
  }
#endif
  alignas(64) float tmp[Vec::size()];
  m.store(tmp);
  for (int64_t t = 0; t < n; ++t) {
    dst[t] = tmp[t] != 0.f;
  }
}

C10_ALWAYS_INLINE Vec load_mask(const bool* src, int64_t n) {
#if defined(CPU_CAPABILITY_AVX512)
  if (n == Vec::size()) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src))));
  }
#elif defined(CPU_CAPABILITY_AVX2)
  if (n == Vec::size()) {
    int64_t bytes;
    std::memcpy(&bytes, src, sizeof(bytes));
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(bytes)));
  }
#endif
  alignas(64) float tmp[Vec::size()] = {};
  for (int64_t t = 0; t < n; ++t) {
    tmp[t] = src[t] ? 1.f : 0.f;
  }
  return Vec::loadu(tmp);
}

// Quantization parameters for one step: broadcast (one channel for the whole run)
// or loaded from per-element arrays (periodic layout).
template <bool kBroadcast>
struct ParamLoader {
  const float* scale;
  const float* inv_scale;
  const float* zero_point;
  Vec s, inv, z;
  ParamLoader(const float* scale_, const float* inv_, const float* zp_)
      : scale(scale_), inv_scale(inv_), zero_point(zp_) {
    if constexpr (kBroadcast) {
      s = Vec(scale_[0]);
      inv = inv_ ? Vec(inv_[0]) : Vec(0.f);
      z = Vec(zp_[0]);
    }
  }
  // Parameters for the float vector `k` of the step that starts at element j.
  C10_ALWAYS_INLINE void at(int64_t j, int64_t n, bool need_inv) {
    if constexpr (!kBroadcast) {
      if (n >= Vec::size()) {
        s = Vec::loadu(scale + j);
        z = Vec::loadu(zero_point + j);
        if (need_inv) {
          inv = Vec::loadu(inv_scale + j);
        }
      } else {
        // Partial vector: pad with 1 so that padded lanes compute harmless values.
        s = Vec::set(Vec(1.f), Vec::loadu(scale + j, n), n);
        z = Vec::loadu(zero_point + j, n);
        if (need_inv) {
          inv = Vec::set(Vec(1.f), Vec::loadu(inv_scale + j, n), n);
        }
      }
    }
  }
};

// Walks the flat range [begin, end) run by run, calling
// f(layout, offset, length, param_index): `layout` is std::true_type for the
// broadcast layout (param_index = the run's channel) and std::false_type for the
// periodic one (param_index = position in the periodic parameter arrays), so each
// kernel instantiates both once.
template <typename F>
C10_ALWAYS_INLINE void for_each_run(const ChannelParams& p, int64_t begin, int64_t end, const F& f) {
  int64_t i = begin;
  while (i < end) {
    if (p.broadcast) {
      const int64_t row = i / p.inner;
      const int64_t len = std::min(end, (row + 1) * p.inner) - i;
      f(std::true_type{}, i, len, row % p.channels);
      i += len;
    } else {
      const int64_t pos = i % p.period;
      const int64_t len = std::min(end - i, p.period - pos);
      f(std::false_type{}, i, len, pos);
      i += len;
    }
  }
}

// for_each_run over all of p.numel, split across threads.
template <typename F>
void parallel_runs(const ChannelParams& p, const F& f) {
  at::parallel_for(0, p.numel, kGrain, [&](int64_t begin, int64_t end) { for_each_run(p, begin, end, f); });
}

// AT_DISPATCH over float32 / float16 / bfloat16: f(scalar_t{}).
template <typename F>
void dispatch_float(c10::ScalarType dtype, const F& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "q8_cpu_kernel", [&] {
    if constexpr (std::is_same_v<scalar_t, double>) {
      TORCH_INTERNAL_ASSERT(false, "q8: float64 reached a CPU kernel (the op checks should refuse it)");
    } else {
      f(scalar_t{});
    }
  });
}

// ---------------------------------------------------------------------------
// Fake quantization forward.
// ---------------------------------------------------------------------------
template <typename T, bool kBroadcast>
void fake_quant_run(const T* x, T* y, bool* mask, int64_t len, const float* sc, const float* inv,
                    const float* zp, float qmin_f, float qmax_f) {
  using IO = Io<T>;
  const Vec qmin(qmin_f), qmax(qmax_f);
  ParamLoader<kBroadcast> par(sc, inv, zp);
  for (int64_t j = 0; j < len; j += IO::kStep) {
    const int64_t n = std::min<int64_t>(IO::kStep, len - j);
    Vec v[IO::kVecs];
    Vec out[IO::kVecs];
    IO::load(x + j, n, v);
    for (int k = 0; k < IO::kVecs; ++k) {
      const int64_t jk = j + k * Vec::size();
      const int64_t nk = std::max<int64_t>(0, std::min<int64_t>(Vec::size(), n - k * Vec::size()));
      if (nk > 0) {
        par.at(jk, nk, true);
      }
      const Vec q = (v[k] * par.inv).round() + par.z;
      // clamp(q, lo, hi) keeps a NaN q: the AVX forms are min(hi, max(lo, q)), and
      // x86 min/max return their second operand when one is NaN; the portable form
      // compares so that NaN falls through. Two instructions, where the IEEE
      // maximum/minimum take four each. The NaN tests run on every family.
      const Vec qc = at::vec::clamp(q, qmin, qmax);
      out[k] = (qc - par.z) * par.s;
      if (mask != nullptr && nk > 0) {
        store_mask(q.ge(qmin) & q.le(qmax), mask + jk, nk);
      }
    }
    IO::store(y + j, n, out);
  }
}

void fake_quantize_kernel(c10::ScalarType dtype, const void* x_, void* y_, bool* mask, const ChannelParams& p) {
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto* x = static_cast<const T*>(x_);
    auto* y = static_cast<T*>(y_);
    parallel_runs(p, [&](auto layout, int64_t off, int64_t len, int64_t idx) {
      fake_quant_run<T, decltype(layout)::value>(x + off, y + off, mask ? mask + off : nullptr, len, p.scale + idx,
                                                 p.inv_scale + idx, p.zero_point + idx, p.quant_min, p.quant_max);
    });
  });
}

// ---------------------------------------------------------------------------
// Backward: dx = grad * mask (as torch: a NaN gradient stays NaN where masked).
// ---------------------------------------------------------------------------
template <typename T>
void mask_backward_typed(const T* g, const bool* mask, T* dx, int64_t numel) {
  using IO = Io<T>;
  at::parallel_for(0, numel, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; j += IO::kStep) {
      const int64_t n = std::min<int64_t>(IO::kStep, end - j);
      Vec v[IO::kVecs];
      IO::load(g + j, n, v);
      for (int k = 0; k < IO::kVecs; ++k) {
        const int64_t nk = std::max<int64_t>(0, std::min<int64_t>(Vec::size(), n - k * Vec::size()));
        v[k] = v[k] * load_mask(mask + j + k * Vec::size(), nk);
      }
      IO::store(dx + j, n, v);
    }
  });
}

void mask_backward_kernel(c10::ScalarType dtype, const void* g, const bool* mask, void* dx, int64_t n) {
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    mask_backward_typed(static_cast<const T*>(g), mask, static_cast<T*>(dx), n);
  });
}

// ---------------------------------------------------------------------------
// Learnable backward (LSQ), the formulas of torch's
// _fake_quantize_learnable_per_{tensor,channel}_affine_backward with grad_factor 1:
//   q below the range: dscale = g * (qmin - z), dzero = -g * s
//   q above the range: dscale = g * (qmax - z), dzero = -g * s
//   inside:            dscale = g * (xfq - x) / s (as g * (xfq - x) * inv), dzero = 0
// ---------------------------------------------------------------------------
// Where the per-element LSQ terms go: stored per element (then reduced by the
// caller), or summed on the fly per run.
struct StoreTerms {
  float* ds;
  float* dz;  // may be null
  C10_ALWAYS_INLINE void put(int64_t j, int64_t n, const Vec& dsv, const Vec& dzv) {
    if (n == Vec::size()) {
      dsv.store(ds + j);
    } else {
      dsv.store(ds + j, n);
    }
    if (dz != nullptr) {
      if (n == Vec::size()) {
        dzv.store(dz + j);
      } else {
        dzv.store(dz + j, n);
      }
    }
  }
};

// Sums in 16 float lanes whatever the vector width (one AVX-512 vector, two
// AVX2 / portable ones): lane l adds the run's elements l, l + 16, l + 32, ... in
// order, and total() adds the lanes in order in float64, so every CPU family
// gives the same bits.
struct SumTerms {
  static constexpr int64_t kLanes = 16;
  static constexpr int64_t kAcc = kLanes / Vec::size();
  static_assert(kAcc >= 1 && kAcc * Vec::size() == kLanes, "vector width must divide 16 lanes");
  Vec ds[kAcc];
  Vec dz[kAcc];
  SumTerms() {
    for (int64_t a = 0; a < kAcc; ++a) {
      ds[a] = Vec(0.f);
      dz[a] = Vec(0.f);
    }
  }
  C10_ALWAYS_INLINE void put(int64_t j, int64_t n, const Vec& dsv, const Vec& dzv) {
    const int64_t a = (j / Vec::size()) % kAcc;
    if (n == Vec::size()) {
      ds[a] = ds[a] + dsv;
      dz[a] = dz[a] + dzv;
    } else {
      ds[a] = ds[a] + Vec::set(Vec(0.f), dsv, n);
      dz[a] = dz[a] + Vec::set(Vec(0.f), dzv, n);
    }
  }
  static double total(const Vec (&acc)[kAcc]) {
    alignas(64) float lanes[kLanes];
    for (int64_t a = 0; a < kAcc; ++a) {
      acc[a].store(lanes + a * Vec::size());
    }
    double t = 0.0;
    for (int64_t i = 0; i < kLanes; ++i) {
      t += lanes[i];
    }
    return t;
  }
};

template <typename T, bool kBroadcast, typename Sink>
void learnable_run(const T* g, const T* x, T* dx, Sink& sink, int64_t len, const float* sc, const float* inv,
                   const float* zp, float qmin_f, float qmax_f) {
  using IO = Io<T>;
  const Vec qmin(qmin_f), qmax(qmax_f), zero(0.f);
  ParamLoader<kBroadcast> par(sc, inv, zp);
  for (int64_t j = 0; j < len; j += IO::kStep) {
    const int64_t n = std::min<int64_t>(IO::kStep, len - j);
    Vec gv[IO::kVecs], xv[IO::kVecs], dxv[IO::kVecs];
    IO::load(g + j, n, gv);
    IO::load(x + j, n, xv);
    for (int k = 0; k < IO::kVecs; ++k) {
      const int64_t jk = j + k * Vec::size();
      const int64_t nk = std::max<int64_t>(0, std::min<int64_t>(Vec::size(), n - k * Vec::size()));
      if (nk == 0) {
        dxv[k] = zero;
        continue;
      }
      par.at(jk, nk, true);
      const Vec q = (xv[k] * par.inv).round() + par.z;
      const Vec below = q < qmin;
      const Vec above = q > qmax;
      const Vec in_range = q.ge(qmin) & q.le(qmax);  // 1.0f or 0.0f; NaN is out
      dxv[k] = gv[k] * in_range;
      const Vec qc = at::vec::clamp(q, qmin, qmax);
      const Vec xfq = (qc - par.z) * par.s;
      Vec dsv = gv[k] * (xfq - xv[k]) * par.inv;
      dsv = Vec::blendv(dsv, gv[k] * (qmin - par.z), below);
      dsv = Vec::blendv(dsv, gv[k] * (qmax - par.z), above);
      const Vec dzv = Vec::blendv(zero, gv[k] * Vec(-1.f) * par.s, below | above);
      sink.put(jk, nk, dsv, dzv);
    }
    IO::store(dx + j, n, dxv);
  }
}

void learnable_backward_kernel(c10::ScalarType dtype, const void* g_, const void* x_, void* dx_, float* ds,
                               float* dz, const ChannelParams& p) {
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto* g = static_cast<const T*>(g_);
    const auto* x = static_cast<const T*>(x_);
    auto* dx = static_cast<T*>(dx_);
    parallel_runs(p, [&](auto layout, int64_t off, int64_t len, int64_t idx) {
      StoreTerms sink{ds + off, dz ? dz + off : nullptr};
      learnable_run<T, decltype(layout)::value>(g + off, x + off, dx + off, sink, len, p.scale + idx,
                                                p.inv_scale + idx, p.zero_point + idx, p.quant_min, p.quant_max);
    });
  });
}

// Broadcast layout only: the LSQ terms are summed per run, block by block, into
// row_ds / row_dz[block * rows_per_block + (row - first row of the block)]; the
// caller adds the rows of each channel in order. Blocks are fixed (kReduceBlock
// elements), so the result does not depend on the thread count.
void learnable_backward_rows_kernel(c10::ScalarType dtype, const void* g_, const void* x_, void* dx_, double* row_ds,
                                    double* row_dz, int64_t rows_per_block, const ChannelParams& p) {
  TORCH_INTERNAL_ASSERT(p.broadcast);
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto* g = static_cast<const T*>(g_);
    const auto* x = static_cast<const T*>(x_);
    auto* dx = static_cast<T*>(dx_);
    const int64_t blocks = (p.numel + kReduceBlock - 1) / kReduceBlock;
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t begin = b * kReduceBlock;
        const int64_t end = std::min(p.numel, begin + kReduceBlock);
        const int64_t row0 = begin / p.inner;
        for_each_run(p, begin, end, [&](auto /*broadcast*/, int64_t off, int64_t len, int64_t idx) {
          SumTerms sink;
          learnable_run<T, true>(g + off, x + off, dx + off, sink, len, p.scale + idx, p.inv_scale + idx,
                                 p.zero_point + idx, p.quant_min, p.quant_max);
          const int64_t slot = b * rows_per_block + off / p.inner - row0;
          row_ds[slot] = SumTerms::total(sink.ds);
          row_dz[slot] = SumTerms::total(sink.dz);
        });
      }
    });
  });
}

// ---------------------------------------------------------------------------
// Quantize: clamp(round(x * inv) + z) as an integer; NaN becomes z.
// ---------------------------------------------------------------------------
template <typename T, typename Q, bool kBroadcast>
void quantize_run(const T* x, Q* q, int64_t len, const float* sc, const float* inv, const float* zp,
                  float qmin_f, float qmax_f) {
  using IO = Io<T>;
  const Vec qmin(qmin_f), qmax(qmax_f);
  ParamLoader<kBroadcast> par(sc, inv, zp);
  for (int64_t j = 0; j < len; j += IO::kStep) {
    const int64_t n = std::min<int64_t>(IO::kStep, len - j);
    Vec v[IO::kVecs];
    alignas(64) float out[IO::kStep];
    IO::load(x + j, n, v);
    for (int k = 0; k < IO::kVecs; ++k) {
      const int64_t nk = std::max<int64_t>(0, std::min<int64_t>(Vec::size(), n - k * Vec::size()));
      if (nk > 0) {
        par.at(j + k * Vec::size(), nk, true);
      }
      const Vec r = (v[k] * par.inv).round() + par.z;
      Vec qc = at::vec::clamp(r, qmin, qmax);
      qc = Vec::blendv(qc, par.z, qc.isnan());
      qc.store(out + k * Vec::size());
    }
    // Values are integral and inside [qmin, qmax] here: the conversion is exact.
    for (int64_t t = 0; t < n; ++t) {
      q[j + t] = static_cast<Q>(static_cast<int32_t>(out[t]));
    }
  }
}

void quantize_kernel(c10::ScalarType dtype, const void* x_, c10::ScalarType qdtype, void* q_, const ChannelParams& p) {
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto* x = static_cast<const T*>(x_);
    auto run = [&](auto* q) {
      using Q = std::remove_pointer_t<decltype(q)>;
      parallel_runs(p, [&](auto layout, int64_t off, int64_t len, int64_t idx) {
        quantize_run<T, Q, decltype(layout)::value>(x + off, q + off, len, p.scale + idx, p.inv_scale + idx,
                                                    p.zero_point + idx, p.quant_min, p.quant_max);
      });
    };
    switch (qdtype) {
      case at::kChar:
        run(static_cast<int8_t*>(q_));
        break;
      case at::kByte:
        run(static_cast<uint8_t*>(q_));
        break;
      case at::kInt:
        run(static_cast<int32_t*>(q_));
        break;
      default:
        TORCH_INTERNAL_ASSERT(false, "q8: unexpected dtype ", qdtype, " in the quantize kernel");
    }
  });
}

// ---------------------------------------------------------------------------
// Dequantize: (q - z) * s. The subtraction is exact in integers (int64 for int32
// input), then converted to float32 and multiplied once.
// ---------------------------------------------------------------------------
template <typename Q, typename T, bool kBroadcast>
void dequantize_run(const Q* q, T* y, int64_t len, const float* sc, const float* zp) {
  using IO = Io<T>;
  using Wide = std::conditional_t<sizeof(Q) >= 4, int64_t, int32_t>;
  ParamLoader<kBroadcast> par(sc, nullptr, zp);
  for (int64_t j = 0; j < len; j += IO::kStep) {
    const int64_t n = std::min<int64_t>(IO::kStep, len - j);
    alignas(64) float d[IO::kStep];
    for (int64_t t = 0; t < IO::kStep; ++t) {
      const Wide z = static_cast<Wide>(kBroadcast ? zp[0] : (t < n ? zp[j + t] : 0.f));
      d[t] = t < n ? static_cast<float>(static_cast<Wide>(q[j + t]) - z) : 0.f;
    }
    Vec out[IO::kVecs];
    for (int k = 0; k < IO::kVecs; ++k) {
      const int64_t nk = std::max<int64_t>(0, std::min<int64_t>(Vec::size(), n - k * Vec::size()));
      if (nk > 0) {
        par.at(j + k * Vec::size(), nk, false);
      }
      out[k] = Vec::loadu(d + k * Vec::size()) * par.s;
    }
    IO::store(y + j, n, out);
  }
}

void dequantize_kernel(c10::ScalarType qdtype, const void* q_, c10::ScalarType dtype, void* y_, const ChannelParams& p) {
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    auto* y = static_cast<T*>(y_);
    auto run = [&](const auto* q) {
      using Q = std::remove_const_t<std::remove_pointer_t<decltype(q)>>;
      parallel_runs(p, [&](auto layout, int64_t off, int64_t len, int64_t idx) {
        dequantize_run<Q, T, decltype(layout)::value>(q + off, y + off, len, p.scale + idx, p.zero_point + idx);
      });
    };
    switch (qdtype) {
      case at::kChar:
        run(static_cast<const int8_t*>(q_));
        break;
      case at::kByte:
        run(static_cast<const uint8_t*>(q_));
        break;
      case at::kInt:
        run(static_cast<const int32_t*>(q_));
        break;
      default:
        TORCH_INTERNAL_ASSERT(false, "q8: unexpected dtype ", qdtype, " in the dequantize kernel");
    }
  });
}

// ---------------------------------------------------------------------------
// Min / max over finite values (non-finite read as 0, which the range holds anyway).
// ---------------------------------------------------------------------------
template <typename T, bool kBroadcast>
void min_max_run(const T* x, int64_t len, float* mins, float* maxs) {
  using IO = Io<T>;
  const Vec big(FLT_MAX), zero(0.f);
  if constexpr (kBroadcast) {
    Vec lo(0.f), hi(0.f);  // 0 is always in the range
    for (int64_t j = 0; j < len; j += IO::kStep) {
      const int64_t n = std::min<int64_t>(IO::kStep, len - j);
      Vec v[IO::kVecs];
      IO::load(x + j, n, v);  // padded lanes load as 0
      for (int k = 0; k < IO::kVecs; ++k) {
        const Vec f = Vec::blendv(zero, v[k], v[k].abs() <= big);
        lo = at::vec::minimum(lo, f);
        hi = at::vec::maximum(hi, f);
      }
    }
    alignas(64) float a[Vec::size()], b[Vec::size()];
    lo.store(a);
    hi.store(b);
    float l = mins[0], h = maxs[0];
    for (int64_t t = 0; t < Vec::size(); ++t) {
      l = std::min(l, a[t]);
      h = std::max(h, b[t]);
    }
    mins[0] = l;
    maxs[0] = h;
  } else {
    for (int64_t j = 0; j < len; j += IO::kStep) {
      const int64_t n = std::min<int64_t>(IO::kStep, len - j);
      Vec v[IO::kVecs];
      IO::load(x + j, n, v);
      for (int k = 0; k < IO::kVecs; ++k) {
        const int64_t jk = j + k * Vec::size();
        const int64_t nk = std::max<int64_t>(0, std::min<int64_t>(Vec::size(), n - k * Vec::size()));
        if (nk == 0) {
          continue;
        }
        const Vec f = Vec::blendv(zero, v[k], v[k].abs() <= big);
        if (nk == Vec::size()) {
          at::vec::minimum(Vec::loadu(mins + jk), f).store(mins + jk);
          at::vec::maximum(Vec::loadu(maxs + jk), f).store(maxs + jk);
        } else {
          at::vec::minimum(Vec::loadu(mins + jk, nk), f).store(mins + jk, nk);
          at::vec::maximum(Vec::loadu(maxs + jk, nk), f).store(maxs + jk, nk);
        }
      }
    }
  }
}

void min_max_kernel(c10::ScalarType dtype, const void* x_, float* mins, float* maxs, const ChannelParams& p) {
  const int64_t slots = p.broadcast ? p.channels : p.period;
  std::fill(mins, mins + slots, 0.f);
  std::fill(maxs, maxs + slots, 0.f);
  // Each thread reduces into its own slots; min/max do not depend on the order,
  // so the result is the same for any thread count.
  const int64_t nthreads = at::get_num_threads();
  std::vector<float> tmin(nthreads * slots, 0.f), tmax(nthreads * slots, 0.f);
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto* x = static_cast<const T*>(x_);
    at::parallel_for(0, p.numel, kGrain, [&](int64_t begin, int64_t end) {
      const int64_t tid = at::get_thread_num();
      TORCH_INTERNAL_ASSERT(tid >= 0 && tid < nthreads);
      float* lo = tmin.data() + tid * slots;
      float* hi = tmax.data() + tid * slots;
      for_each_run(p, begin, end, [&](auto layout, int64_t off, int64_t len, int64_t idx) {
        min_max_run<T, decltype(layout)::value>(x + off, len, lo + idx, hi + idx);
      });
    });
  });
  for (int64_t t = 0; t < nthreads; ++t) {
    for (int64_t s = 0; s < slots; ++s) {
      mins[s] = std::min(mins[s], tmin[t * slots + s]);
      maxs[s] = std::max(maxs[s], tmax[t * slots + s]);
    }
  }
}

} // namespace

const KernelTable& kernel_table() {
  static const KernelTable table{
      fake_quantize_kernel,
      mask_backward_kernel,
      learnable_backward_kernel,
      learnable_backward_rows_kernel,
      quantize_kernel,
      dequantize_kernel,
      min_max_kernel,
  };
  return table;
}

} // namespace CPU_CAPABILITY
} // namespace q8::cpu
