// Device code of the CUDA int8 linear family (host side and registration:
// linear.cu). Everything here matches the CPU kernels (csrc/ops/cpu/linear.cpp,
// kernels/int8_gemm_common.h) operation for operation where the results must be
// bit-identical:
//
//   weight:      s = compute_qparams(min(row, 0), max(row, 0), -127, 127, symmetric)
//                q = clamp(nearbyint(w * (1 / s)), -127, 127)
//   activations: (s, z) = compute_qparams(min(row, 0), max(row, 0), 0, 255, asymmetric)
//                (dynamic), or the calibrated pair (static);
//                q = clamp(nearbyint(x * (1 / s)) + z, 0, 255)
//   epilogue:    t = float(sum_k (q - z) * w)   (exact integer, then one rounding)
//                y = t * (s_x * s_w) (+ bias)
//
// The float operations use the explicitly rounded intrinsics (__fmul_rn,
// __fadd_rn, __fdiv_rn), which the compiler never contracts into an FMA, so the
// results do not depend on --fmad (the build passes --fmad=false anyway).
//
// Activations are stored as int8 codes q - 128 (the tensor cores multiply signed
// by signed): sum_k (q - 128) * w + (128 - z) * rowsum = sum_k (q - z) * w, with
// the correction in int64. One product (q - 128) * w is at most 128 * 128 = 2^14
// in magnitude, so a sum over 65536 k (kIntChunk) stays within 2^30: every int32
// accumulator covers at most one such chunk, and chunks are summed in int64.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "ops/packed_weight.h"
#include "ops/qparams_math.h"

namespace q8::cuda::linear_kernels {

// k per exact int32 chunk (see above).
constexpr int64_t kIntChunk = 65536;
// Threads of the one-block-per-row kernels (quantize_rows_kernel: up to 1024).
constexpr int kRowThreads = 256;
constexpr int kQuantRowsMaxThreads = 1024;
// The small-M tensor-core kernels: 8 warps split K, 2 tiles of 8 columns
// (16 columns per block), row tiles of 16.
constexpr int kMmaWarps = 8;
constexpr int kMmaThreads = kMmaWarps * 32;
constexpr int kMmaTiles = 2;
constexpr int kMmaCols = kMmaTiles * 8;
constexpr int kMmaRows = 16;
constexpr int kMmaChunk = 64;  // k per warp step (16 bytes of int8 per thread, 4 threads per row)
// The float32 weight-only kernel: 4 columns per block, 256 threads over K.
constexpr int kFmaCols = 4;
constexpr int kFmaThreads = 256;
// Epilogue after a GEMM: 4 columns per thread.
constexpr int kEpiThreads = 256;
constexpr int kEpiCols = 4;

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------
__device__ __forceinline__ int4 zero_int4() {
  return make_int4(0, 0, 0, 0);
}

// Read-only (activations, reused by many blocks) and streaming (weights, read
// once) 16-byte loads. The pointers are 16-byte aligned by construction.
__device__ __forceinline__ int4 load_ro16(const void* p) {
  return __ldg(reinterpret_cast<const int4*>(p));
}
__device__ __forceinline__ int4 load_stream16(const void* p) {
  return __ldcs(reinterpret_cast<const int4*>(p));
}

template <typename T>
__device__ __forceinline__ float bits_to_float(uint16_t bits) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    return __uint_as_float(static_cast<uint32_t>(bits) << 16);  // exact
  } else {
    return __half2float(__ushort_as_half(bits));  // exact
  }
}

// Eight consecutive values as float (exact conversions); p is 16-byte aligned.
template <typename T>
__device__ __forceinline__ void load8_float(const T* p, float (&f)[8]) {
  if constexpr (std::is_same_v<T, float>) {
    const float4 a = __ldg(reinterpret_cast<const float4*>(p));
    const float4 b = __ldg(reinterpret_cast<const float4*>(p) + 1);
    f[0] = a.x; f[1] = a.y; f[2] = a.z; f[3] = a.w;
    f[4] = b.x; f[5] = b.y; f[6] = b.z; f[7] = b.w;
  } else {
    const int4 v = load_ro16(p);
    const uint32_t w[4] = {static_cast<uint32_t>(v.x), static_cast<uint32_t>(v.y), static_cast<uint32_t>(v.z),
                           static_cast<uint32_t>(v.w)};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      f[2 * i] = bits_to_float<T>(static_cast<uint16_t>(w[i] & 0xFFFFu));
      f[2 * i + 1] = bits_to_float<T>(static_cast<uint16_t>(w[i] >> 16));
    }
  }
}

struct MinOp {
  __device__ float operator()(float a, float b) const { return fminf(a, b); }
};
struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct SumOp {
  __device__ int32_t operator()(int32_t a, int32_t b) const { return a + b; }
};
struct WrapSumOp {  // modulo 2^32 (sums of possibly corrupt data)
  __device__ uint32_t operator()(uint32_t a, uint32_t b) const { return a + b; }
};

// Reduction over the block (blockDim.x a multiple of 32, at most 1024); every
// thread gets the result, computed in the same order by all (so all agree bit
// for bit). `smem` holds 32 values; callable several times in a row.
template <typename V, typename Op>
__device__ __forceinline__ V block_reduce(V v, Op op, V* smem) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nwarps = static_cast<int>(blockDim.x >> 5);
  __syncthreads();  // a previous call's readers are done with smem
  if (lane == 0) {
    smem[warp] = v;
  }
  __syncthreads();
  v = smem[0];
  for (int i = 1; i < nwarps; ++i) {
    v = op(v, smem[i]);
  }
  return v;
}

// The packed header names this layout and N x K. The per-call host checks only
// compare the tensor size (no device read); every kernel that writes an output
// also reads the header (a few cached bytes) and, when it does not describe the
// N x K of the call (a weight packed for another shape of the same padded size,
// or an overwritten header), gives NaN (linear) or INT64_MIN (int8_mm) outputs.
__device__ __forceinline__ bool header_matches(const uint8_t* packed, int64_t n, int64_t k) {
  const auto* h = reinterpret_cast<const q8::detail::PackedHeader*>(packed);
  return h->magic == q8::detail::kPackMagic && h->version == q8::detail::kPackVersion &&
      h->layout == static_cast<uint32_t>(q8::detail::PackLayout::CudaRowMajor) && h->n == n && h->k == k;
}

__device__ __forceinline__ float quiet_nan() {
  return __int_as_float(0x7fc00000);
}

// ---------------------------------------------------------------------------
// quantize_weight: one block per output row
// ---------------------------------------------------------------------------
// A row holding NaN or +-Inf gets scale NaN and codes 0, so that every output of
// that channel is NaN (the CPU raises instead; raising here would need a device
// synchronization).
template <typename T>
__global__ void __launch_bounds__(kRowThreads)
    quantize_weight_kernel(const T* __restrict__ w, int64_t k, int8_t* __restrict__ q, float* __restrict__ scale) {
  __shared__ float red[32];
  const int64_t row = blockIdx.x;
  const T* wr = w + row * k;
  float lo = 0.f, hi = 0.f;
  int finite = 1;
  for (int64_t i = threadIdx.x; i < k; i += blockDim.x) {
    const float v = static_cast<float>(wr[i]);
    finite &= isfinite(v) ? 1 : 0;
    lo = fminf(lo, v);
    hi = fmaxf(hi, v);
  }
  finite = __syncthreads_and(finite);
  lo = block_reduce(lo, MinOp{}, red);
  hi = block_reduce(hi, MaxOp{}, red);
  int8_t* qr = q + row * k;
  if (!finite) {
    if (threadIdx.x == 0) {
      scale[row] = quiet_nan();
    }
    for (int64_t i = threadIdx.x; i < k; i += blockDim.x) {
      qr[i] = 0;
    }
    return;
  }
  float s;
  int32_t z;
  q8::detail::compute_qparams(lo, hi, -127, 127, /*symmetric=*/true, &s, &z);
  if (threadIdx.x == 0) {
    scale[row] = s;
  }
  const float inv = __fdiv_rn(1.0f, s);
  for (int64_t i = threadIdx.x; i < k; i += blockDim.x) {
    float v = rintf(__fmul_rn(static_cast<float>(wr[i]), inv));
    v = fminf(fmaxf(v, -127.f), 127.f);
    qr[i] = static_cast<int8_t>(static_cast<int32_t>(v));
  }
}

// ---------------------------------------------------------------------------
// pack / unpack: one block per padded output row
// ---------------------------------------------------------------------------
// The 128-byte header region, written by a kernel from its arguments (built on
// the host: it does not depend on the data), so packing reads nothing back and
// needs no pinned staging buffer.
struct HeaderWords {
  uint64_t w[q8::detail::kCudaPackHeaderBytes / 8];
};

__global__ void write_header_kernel(HeaderWords h, uint64_t* __restrict__ dst) {
#pragma unroll
  for (int i = 0; i < static_cast<int>(q8::detail::kCudaPackHeaderBytes / 8); ++i) {
    dst[i] = h.w[i];
  }
}

__global__ void __launch_bounds__(kRowThreads)
    pack_weight_kernel(const int8_t* __restrict__ w, int64_t n, int64_t k, int64_t k16, int8_t* __restrict__ dst,
                       int32_t* __restrict__ rowsums) {
  __shared__ int32_t red[32];
  const int64_t row = blockIdx.x;
  int8_t* d = dst + row * k16;
  int32_t sum = 0;  // |sum| <= 128 * K < 2^31 (K < 2^24)
  for (int64_t i = threadIdx.x; i < k16; i += blockDim.x) {
    const int8_t v = (row < n && i < k) ? w[row * k + i] : int8_t{0};
    d[i] = v;
    sum += v;
  }
  sum = block_reduce(sum, SumOp{}, red);
  if (threadIdx.x == 0) {
    rowsums[row] = sum;
  }
}

// Copies the weights out and records (atomicMin) the first padded row whose
// weights do not match its row sum or whose padding is not zero.
__global__ void __launch_bounds__(kRowThreads)
    unpack_weight_kernel(const int8_t* __restrict__ src, const int32_t* __restrict__ rowsums, int64_t n, int64_t k,
                         int64_t k16, int8_t* __restrict__ out, unsigned long long* __restrict__ bad_row) {
  __shared__ uint32_t red[32];
  const int64_t row = blockIdx.x;
  const int8_t* s = src + row * k16;
  uint32_t sum = 0;  // wrapping: the data may be corrupt
  int ok = 1;
  for (int64_t i = threadIdx.x; i < k16; i += blockDim.x) {
    const int8_t v = s[i];
    if (row < n && i < k) {
      out[row * k + i] = v;
      sum += static_cast<uint32_t>(static_cast<int32_t>(v));
    } else {
      ok &= v == 0 ? 1 : 0;
    }
  }
  ok = __syncthreads_and(ok);
  const auto total = static_cast<int32_t>(block_reduce(sum, WrapSumOp{}, red));
  if (threadIdx.x == 0) {
    const int32_t expect = row < n ? total : 0;
    if (!ok || rowsums[row] != expect) {
      atomicMin(bad_row, static_cast<unsigned long long>(row));
    }
  }
}

// ---------------------------------------------------------------------------
// Activations -> int8 codes (q - 128), one block per row
// ---------------------------------------------------------------------------
// clamp(nearbyint(x * inv) + z, 0, 255) - 128; NaN gives 0 - 128 (its row is
// reported and its output is NaN anyway), as quantize_one in int8_gemm_common.h.
__device__ __forceinline__ int8_t activation_code(float x, float inv, float zf) {
  float q = __fadd_rn(rintf(__fmul_rn(x, inv)), zf);
  q = fmaxf(q, 0.f);  // NaN -> 0
  q = fminf(q, 255.f);
  return static_cast<int8_t>(static_cast<int32_t>(q) - 128);
}

// Per-row outputs of the activation step.
struct RowParams {
  float* sx;      // activation scale
  int32_t* zx;    // activation zero point
  uint8_t* bad;   // 1: the row holds NaN or +-Inf (its output row is NaN)
};

// x: [M, K] rows of T with row stride ldx; a8: [M, K16] int8, K16 - K zeros per
// row. kDynamic: per-row qparams; otherwise one scale (float32) and zero point
// (int32 or int64) read from device memory. kVec: K % 8 == 0, ldx % 8 == 0 and x
// 16-byte aligned (8 values per load).
template <typename T, bool kDynamic, bool kVec>
__global__ void __launch_bounds__(kQuantRowsMaxThreads)
    quantize_rows_kernel(const T* __restrict__ x, int64_t ldx, int64_t k, int64_t k16,
                         const float* __restrict__ static_scale, const void* __restrict__ static_zp, bool zp_long,
                         int8_t* __restrict__ a8, RowParams rp) {
  __shared__ float red[32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * ldx;
  int8_t* ar = a8 + row * k16;
  int finite = 1;
  float s;
  int32_t z;
  if constexpr (kDynamic) {
    float lo = 0.f, hi = 0.f;
    if constexpr (kVec) {
      for (int64_t i = static_cast<int64_t>(threadIdx.x) * 8; i < k; i += static_cast<int64_t>(blockDim.x) * 8) {
        float f[8];
        load8_float(xr + i, f);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          finite &= isfinite(f[j]) ? 1 : 0;
          lo = fminf(lo, f[j]);
          hi = fmaxf(hi, f[j]);
        }
      }
    } else {
      for (int64_t i = threadIdx.x; i < k; i += blockDim.x) {
        const float v = static_cast<float>(xr[i]);
        finite &= isfinite(v) ? 1 : 0;
        lo = fminf(lo, v);
        hi = fmaxf(hi, v);
      }
    }
    finite = __syncthreads_and(finite);
    lo = block_reduce(lo, MinOp{}, red);
    hi = block_reduce(hi, MaxOp{}, red);
    if (finite) {
      // Every thread computes the same qparams from the same min / max.
      q8::detail::compute_qparams(lo, hi, 0, 255, /*symmetric=*/false, &s, &z);
    } else {
      s = 1.f;
      z = 0;
    }
  } else {
    s = *static_scale;
    z = zp_long ? static_cast<int32_t>(*static_cast<const int64_t*>(static_zp))
                : *static_cast<const int32_t*>(static_zp);
  }
  const float inv = __fdiv_rn(1.0f, s);
  const float zf = static_cast<float>(z);
  if constexpr (kVec) {
    for (int64_t i = static_cast<int64_t>(threadIdx.x) * 8; i < k; i += static_cast<int64_t>(blockDim.x) * 8) {
      float f[8];
      load8_float(xr + i, f);
      uint32_t lo_word = 0, hi_word = 0;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        if constexpr (!kDynamic) {
          finite &= isfinite(f[j]) ? 1 : 0;
        }
        const uint32_t c = static_cast<uint8_t>(activation_code(f[j], inv, zf));
        if (j < 4) {
          lo_word |= c << (8 * j);
        } else {
          hi_word |= c << (8 * (j - 4));
        }
      }
      *reinterpret_cast<uint2*>(ar + i) = make_uint2(lo_word, hi_word);
    }
  } else {
    for (int64_t i = threadIdx.x; i < k; i += blockDim.x) {
      const float v = static_cast<float>(xr[i]);
      if constexpr (!kDynamic) {
        finite &= isfinite(v) ? 1 : 0;
      }
      ar[i] = activation_code(v, inv, zf);
    }
  }
  for (int64_t i = k + threadIdx.x; i < k16; i += blockDim.x) {
    ar[i] = 0;
  }
  if constexpr (!kDynamic) {
    finite = __syncthreads_and(finite);
  }
  if (threadIdx.x == 0) {
    rp.sx[row] = s;
    rp.zx[row] = z;
    rp.bad[row] = finite ? 0 : 1;
  }
}

// int8_mm's uint8 input -> int8 codes (a - 128), K16 - K zeros, and the zero
// point of every row (zp_kind 0: none, 1: int32, 2: int64; zp_stride 0 for one
// element). The zero point is not range-checked (that would need a host read).
__global__ void __launch_bounds__(kRowThreads)
    shift_uint8_kernel(const uint8_t* __restrict__ a, int64_t lda, int64_t k, int64_t k16,
                       const void* __restrict__ zp, int zp_kind, int64_t zp_stride, int8_t* __restrict__ a8,
                       int32_t* __restrict__ zx) {
  const int64_t row = blockIdx.x;
  const uint8_t* r = a + row * lda;
  int8_t* d = a8 + row * k16;
  for (int64_t i = threadIdx.x; i < k16; i += blockDim.x) {
    d[i] = i < k ? static_cast<int8_t>(static_cast<int32_t>(r[i]) - 128) : int8_t{0};
  }
  if (threadIdx.x == 0) {
    int32_t z = 0;
    if (zp_kind == 1) {
      z = static_cast<const int32_t*>(zp)[row * zp_stride];
    } else if (zp_kind == 2) {
      z = static_cast<int32_t>(static_cast<const int64_t*>(zp)[row * zp_stride]);
    }
    zx[row] = z;
  }
}

// ---------------------------------------------------------------------------
// Epilogues: one output element from its exact accumulator
// ---------------------------------------------------------------------------
// The fused activation (the CPU's Clamp): y < lo ? lo : y, then y > hi ? hi : y, NaN kept.
struct EpilogueClamp {
  bool has_lo, has_hi;
  float lo, hi;

  __device__ __forceinline__ float operator()(float y) const {
    if (has_lo) {
      y = y < lo ? lo : y;
    }
    if (has_hi) {
      y = y > hi ? hi : y;
    }
    return y;
  }
};

// int8 modes: acc = sum_k (q - 128) * w (exact); the CPU's float epilogue.
// Every epilogue: value() computes one output, operator() stores it.
template <typename T>
struct LinearEpilogue {
  using acc_t = int64_t;
  using out_t = T;
  T* out;                  // [M, N] contiguous
  const float* sx;
  const int32_t* zx;
  const uint8_t* bad;
  const int32_t* rowsum;   // [N16]
  const float* sw;         // [N]
  const float* bias;       // [N] or nullptr
  const uint8_t* packed;   // the packed tensor (its header)
  int64_t n, k;
  EpilogueClamp clamp;

  __device__ __forceinline__ bool header_ok() const { return header_matches(packed, n, k); }
  __device__ __forceinline__ T value(int64_t row, int64_t col, int64_t acc, bool ok) const {
    const int64_t v = acc + static_cast<int64_t>(128 - zx[row]) * rowsum[col];  // sum_k (q - z) * w
    const float t = __ll2float_rn(v);
    const float s = __fmul_rn(sx[row], sw[col]);
    float y = __fmul_rn(t, s);
    if (bias != nullptr) {
      y = __fadd_rn(y, bias[col]);
    }
    y = clamp(y);
    if (bad[row] || !ok) {
      y = quiet_nan();
    }
    return static_cast<T>(y);
  }
  __device__ __forceinline__ void operator()(int64_t row, int64_t col, int64_t acc, bool ok) const {
    out[row * n + col] = value(row, col, acc, ok);
  }
};

// int8_mm's output when the packed header does not describe the call's N x K
// (the integer counterpart of linear's NaN): INT64_MIN, which no true result
// comes near (|sum_k (a - zp) * w| <= 2^31 * 127 * K < 2^62 for K < 2^24 and any
// int32 zero point).
constexpr int64_t kMmBadHeader = std::numeric_limits<int64_t>::min();

// int8_mm: out = sum_k (a - zp) * w as int64 (exact), or kMmBadHeader.
struct MmEpilogue {
  using acc_t = int64_t;
  using out_t = int64_t;
  int64_t* out;            // [M, N] contiguous
  const int32_t* zx;
  const int32_t* rowsum;
  const uint8_t* packed;   // the packed tensor (its header)
  int64_t n, k;

  __device__ __forceinline__ bool header_ok() const { return header_matches(packed, n, k); }
  __device__ __forceinline__ int64_t value(int64_t row, int64_t col, int64_t acc, bool ok) const {
    if (!ok) {
      return kMmBadHeader;
    }
    return acc + static_cast<int64_t>(128 - zx[row]) * rowsum[col];
  }
  __device__ __forceinline__ void operator()(int64_t row, int64_t col, int64_t acc, bool ok) const {
    out[row * n + col] = value(row, col, acc, ok);
  }
};

// weight_only: y = acc * sw (+ bias), float32 (the CPU's order).
template <typename T>
struct WeightOnlyEpilogue {
  using acc_t = float;
  using out_t = T;
  T* out;
  const float* sw;
  const float* bias;
  const uint8_t* packed;
  int64_t n, k;
  EpilogueClamp clamp;

  __device__ __forceinline__ bool header_ok() const { return header_matches(packed, n, k); }
  __device__ __forceinline__ T value(int64_t, int64_t col, float acc, bool ok) const {
    float y = __fmul_rn(acc, sw[col]);
    if (bias != nullptr) {
      y = __fadd_rn(y, bias[col]);
    }
    y = clamp(y);
    if (!ok) {
      y = quiet_nan();
    }
    return static_cast<T>(y);
  }
  __device__ __forceinline__ void operator()(int64_t row, int64_t col, float acc, bool ok) const {
    out[row * n + col] = value(row, col, acc, ok);
  }
};

// Four consecutive outputs with 8-, 16- or 32-byte stores (p aligned to
// min(16, 4 * sizeof(V))).
template <typename V>
__device__ __forceinline__ void store4(V* p, const V (&v)[4]) {
  static_assert(sizeof(V) == 2 || sizeof(V) == 4 || sizeof(V) == 8, "2-, 4- or 8-byte outputs");
  if constexpr (sizeof(V) == 2) {
    uint2 u;
    memcpy(&u, v, sizeof(u));
    *reinterpret_cast<uint2*>(p) = u;
  } else if constexpr (sizeof(V) == 4) {
    uint4 u;
    memcpy(&u, v, sizeof(u));
    *reinterpret_cast<uint4*>(p) = u;
  } else {
    uint4 u[2];
    memcpy(u, v, sizeof(u));
    reinterpret_cast<uint4*>(p)[0] = u[0];
    reinterpret_cast<uint4*>(p)[1] = u[1];
  }
}

// Four accumulators of one row (row points at the row's start), columns
// col..col+3 (0 beyond n).
template <typename Acc>
__device__ __forceinline__ void load_acc4(const Acc* __restrict__ row, int64_t col, int64_t n, bool vec_in,
                                          Acc (&a)[kEpiCols]) {
  if (vec_in) {
    const Acc* p = row + col;
    if constexpr (sizeof(Acc) == 4) {
      const int4 v = __ldcs(reinterpret_cast<const int4*>(p));
      const int32_t bits[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if constexpr (std::is_same_v<Acc, float>) {
          a[j] = __int_as_float(bits[j]);
        } else {
          a[j] = static_cast<Acc>(bits[j]);
        }
      }
    } else {
      const longlong2 v0 = __ldcs(reinterpret_cast<const longlong2*>(p));
      const longlong2 v1 = __ldcs(reinterpret_cast<const longlong2*>(p) + 1);
      a[0] = v0.x;
      a[1] = v0.y;
      a[2] = v1.x;
      a[3] = v1.y;
    }
  } else {
#pragma unroll
    for (int j = 0; j < kEpiCols; ++j) {
      a[j] = col + j < n ? row[col + j] : Acc(0);
    }
  }
}

// After a GEMM into acc [M, ld_acc] (int32, int64 or float; nullptr: K = 0, all
// zeros), or into `splits` split-K partials acc + s * split_stride (s = 0 ..
// splits - 1, added in that order): kEpiCols columns per thread, rows strided
// over gridDim.y. vec_in: ld_acc % 4 == 0, split_stride % 4 == 0 and acc 16-byte
// aligned (vector loads); vec_out: N % 4 == 0 and the output 16-byte aligned
// (vector stores).
template <typename Acc, typename Epi>
__global__ void __launch_bounds__(kEpiThreads)
    gemm_epilogue_kernel(const Acc* __restrict__ acc, int64_t ld_acc, int64_t m, int64_t n, bool vec_in,
                         bool vec_out, int64_t splits, int64_t split_stride, Epi epi) {
  static_assert(kEpiCols == 4, "four columns per thread");
  using out_t = typename Epi::out_t;
  const int64_t col = (static_cast<int64_t>(blockIdx.x) * kEpiThreads + threadIdx.x) * kEpiCols;
  if (col >= n) {
    return;
  }
  const bool ok = epi.header_ok();
  for (int64_t row = blockIdx.y; row < m; row += gridDim.y) {
    Acc a[kEpiCols];
    if (acc == nullptr) {
#pragma unroll
      for (int j = 0; j < kEpiCols; ++j) {
        a[j] = Acc(0);
      }
    } else {
      load_acc4(acc + row * ld_acc, col, n, vec_in, a);  // split 0 as is (keeps a -0.0f)
    }
    for (int64_t sp = 1; acc != nullptr && sp < splits; ++sp) {
      Acc b[kEpiCols];
      load_acc4(acc + sp * split_stride + row * ld_acc, col, n, vec_in, b);
#pragma unroll
      for (int j = 0; j < kEpiCols; ++j) {
        a[j] += b[j];
      }
    }
    out_t v[kEpiCols];
#pragma unroll
    for (int j = 0; j < kEpiCols; ++j) {
      v[j] = col + j < n ? epi.value(row, col + j, static_cast<typename Epi::acc_t>(a[j]), ok) : out_t(0);
    }
    out_t* o = epi.out + row * n + col;
    if (vec_out) {  // N % 4 == 0: the four columns are all inside
      store4(o, v);
    } else {
#pragma unroll
      for (int j = 0; j < kEpiCols; ++j) {
        if (col + j < n) {
          o[j] = v[j];
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Small M: the int8 GEMM on tensor cores (mma.sync m16n8k32, s8 x s8 -> s32)
// ---------------------------------------------------------------------------
// Fragments of mma.m16n8k32 (g = lane / 4, t = lane % 4):
//   A (16 x 32, row):  a0: row g,     k 4t..4t+3     a1: row g + 8, k 4t..4t+3
//                      a2: row g,     k 16+4t..+3    a3: row g + 8, k 16+4t..+3
//   B (32 x 8, col):   b0: k 4t..4t+3, column g      b1: k 16+4t..+3, column g
//   C (16 x 8, s32):   c0, c1: row g, columns 2t, 2t+1; c2, c3: row g + 8
// A dot product does not depend on the order of its k, so the k of a step are
// permuted: thread (g, t) loads 16 consecutive bytes at k = c * 64 + 16 t from
// activation rows g and g + 8 and from weight row g of each tile, and feeds bytes
// 0..7 to the first mma (a0/a1/b0: bytes 0..3, a2/a3/b1: bytes 4..7) and bytes
// 8..15 to the second. Each physical k meets the same k in A and B, so the sums
// are exact dot products over the 64 k of the step. Loads are 16 bytes per
// thread, 64 contiguous bytes per row (two full 32-byte sectors).
__device__ __forceinline__ void mma_s8(int32_t (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                       uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Cross-warp reduction of the per-warp accumulators (kMmaWarps warps, kMmaTiles
// x 4 values per lane), then the epilogue: thread (value v, lane l) sums v of
// lane l over the warps. Rows row0 + g (+ 8), columns col0 + 8 j + 2 t (+ 1).
// Split K (partial != nullptr): the sum goes to partial[blockIdx.z][row][col]
// ([splits, M, N]) and gemm_epilogue_kernel adds the splits and runs the epilogue.
static_assert(kMmaThreads == kMmaTiles * 4 * 32, "one thread per (value, lane) in the reduction");

template <typename V, typename Epi, typename Acc>
__device__ __forceinline__ void mma_reduce_and_store(const V (&tot)[kMmaTiles][4], int64_t row0, int64_t col0,
                                                     int64_t m, int64_t n, const Epi& epi, V* partial) {
  __shared__ V red[kMmaWarps][kMmaTiles * 4][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int j = 0; j < kMmaTiles; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      red[warp][j * 4 + e][lane] = tot[j][e];
    }
  }
  __syncthreads();
  const int v = warp;  // value index j * 4 + e handled by this thread
  V sum = red[0][v][lane];
#pragma unroll
  for (int w = 1; w < kMmaWarps; ++w) {
    sum += red[w][v][lane];
  }
  const int j = v / 4, e = v % 4;
  const int g = lane >> 2, t = lane & 3;
  const int64_t row = row0 + g + (e >= 2 ? 8 : 0);
  const int64_t col = col0 + 8 * j + 2 * t + (e & 1);
  if (row < m && col < n) {
    if (partial != nullptr) {
      partial[(static_cast<int64_t>(blockIdx.z) * m + row) * n + col] = sum;
    } else {
      epi(row, col, static_cast<Acc>(sum), epi.header_ok());
    }
  }
}

// a8: [M, K16] int8 codes; w: [N16, K16] int8. Block (bx, by, bz): columns
// [16 bx, 16 bx + 16) (always inside N16), rows [16 by, 16 by + 16), k chunks
// [bz * chunks_per_split, (bz + 1) * chunks_per_split) (split K, with partial;
// one split covers every chunk without).
template <typename Epi>
__global__ void __launch_bounds__(kMmaThreads)
    int8_mma_small_m_kernel(const int8_t* __restrict__ a8, int64_t m, const int8_t* __restrict__ w, int64_t k16,
                            int64_t n, Epi epi, int64_t chunks_per_split, int64_t* __restrict__ partial) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int64_t col0 = static_cast<int64_t>(blockIdx.x) * kMmaCols;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kMmaRows;
  const bool has_lo = row0 + g < m, has_hi = row0 + g + 8 < m;
  const int8_t* a_lo = a8 + (row0 + g) * k16;
  const int8_t* a_hi = a8 + (row0 + g + 8) * k16;
  const int8_t* w_row[kMmaTiles];
#pragma unroll
  for (int j = 0; j < kMmaTiles; ++j) {
    w_row[j] = w + (col0 + 8 * j + g) * k16;
  }
  int64_t tot[kMmaTiles][4] = {};
  const int64_t nchunks = (k16 + kMmaChunk - 1) / kMmaChunk;
  const int64_t cbegin = static_cast<int64_t>(blockIdx.z) * chunks_per_split;
  const int64_t cend = cbegin + chunks_per_split < nchunks ? cbegin + chunks_per_split : nchunks;
  constexpr int64_t kChunksPerInt32 = kIntChunk / kMmaChunk;
  for (int64_t c0 = cbegin; c0 < cend; c0 += kChunksPerInt32) {
    const int64_t c1 = c0 + kChunksPerInt32 < cend ? c0 + kChunksPerInt32 : cend;
    // This warp's part of at most 65536 k: |sum| <= 2^30, exact in int32.
    int32_t acc[kMmaTiles][4] = {};
#pragma unroll 4
    for (int64_t c = c0 + warp; c < c1; c += kMmaWarps) {
      const int64_t kk = c * kMmaChunk + t * 16;
      const bool kin = kk < k16;  // K16 % 16 == 0: the 16 bytes are all in or all out
      int4 lo = zero_int4(), hi = zero_int4();
      if (kin && has_lo) {
        lo = load_ro16(a_lo + kk);
      }
      if (kin && has_hi) {
        hi = load_ro16(a_hi + kk);
      }
      int4 b[kMmaTiles];
#pragma unroll
      for (int j = 0; j < kMmaTiles; ++j) {
        b[j] = kin ? load_stream16(w_row[j] + kk) : zero_int4();
      }
#pragma unroll
      for (int j = 0; j < kMmaTiles; ++j) {
        mma_s8(acc[j], lo.x, hi.x, lo.y, hi.y, b[j].x, b[j].y);
        mma_s8(acc[j], lo.z, hi.z, lo.w, hi.w, b[j].z, b[j].w);
      }
    }
#pragma unroll
    for (int j = 0; j < kMmaTiles; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        tot[j][e] += acc[j][e];
      }
    }
  }
  mma_reduce_and_store<int64_t, Epi, int64_t>(tot, row0, col0, m, n, epi, partial);
}

// ---------------------------------------------------------------------------
// Small M, weight_only, float16 / bfloat16 activations: mma.sync m16n8k16 with
// float32 accumulation, the int8 weights converted exactly in registers
// ---------------------------------------------------------------------------
// Fragments of mma.m16n8k16 (16-bit elements, two per register, the lower k in
// the low half): a0: row g, k 2t, 2t+1; a1: row g + 8, k 2t, 2t+1; a2: row g,
// k 2t+8, 2t+9; a3: row g + 8, k 2t+8, 2t+9; b0: k 2t, 2t+1, column g; b1: k
// 2t+8, 2t+9, column g; C as for m16n8k32 (float). As above, thread (g, t) loads
// 16 consecutive k at c * 64 + 16 t (activations: two 16-byte loads per row;
// weights: one) and step s = 0..3 uses k 4s..4s+3 of them: a0/a1/b0 k 4s, 4s+1 and
// a2/a3/b1 k 4s+2, 4s+3.
template <typename T>
__device__ __forceinline__ void mma_16bit(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                          uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
}

__device__ __forceinline__ uint32_t byte_perm(uint32_t a, uint32_t b, uint32_t selector) {
  return __byte_perm(a, b, selector);
}

// Four int8 weights (one 32-bit word, the lowest k in the lowest byte) -> two
// registers of two 16-bit values each, exactly: lo = {w0, w1}, hi = {w2, w3}.
//   float16: 0x6400 | (w + 128) is 1024 + (w + 128); minus 1152 gives w.
//   bfloat16 (7 mantissa bits cannot hold 1024 + u): float32 0x4B000000 | (w + 128)
//   is 2^23 + (w + 128); minus 2^23 + 128 gives w, a small integer that bfloat16
//   holds exactly, so taking the high 16 bits is exact.
template <typename T>
__device__ __forceinline__ void int8x4_to_16bit(uint32_t word, uint32_t& lo, uint32_t& hi) {
  const uint32_t u = word ^ 0x80808080u;  // w + 128 in every byte
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    constexpr float kMagic = 8388736.0f;  // 2^23 + 128
    const float f0 = __fsub_rn(__uint_as_float(byte_perm(u, 0x4B000000u, 0x7440)), kMagic);
    const float f1 = __fsub_rn(__uint_as_float(byte_perm(u, 0x4B000000u, 0x7441)), kMagic);
    const float f2 = __fsub_rn(__uint_as_float(byte_perm(u, 0x4B000000u, 0x7442)), kMagic);
    const float f3 = __fsub_rn(__uint_as_float(byte_perm(u, 0x4B000000u, 0x7443)), kMagic);
    lo = byte_perm(__float_as_uint(f0), __float_as_uint(f1), 0x7632);
    hi = byte_perm(__float_as_uint(f2), __float_as_uint(f3), 0x7632);
  } else {
    // Bytes {u0, 0x64, u1, 0x64}: halves 0x64u0 = 1024 + u0 (low) and 1024 + u1 (high).
    const uint32_t h01 = byte_perm(u, 0x64646464u, 0x4140);
    const uint32_t h23 = byte_perm(u, 0x64646464u, 0x4342);
    const __half2 bias = __halves2half2(__ushort_as_half(0x6480), __ushort_as_half(0x6480));  // 1152
    __half2 a = *reinterpret_cast<const __half2*>(&h01);
    __half2 b = *reinterpret_cast<const __half2*>(&h23);
    a = __hsub2(a, bias);
    b = __hsub2(b, bias);
    lo = *reinterpret_cast<const uint32_t*>(&a);
    hi = *reinterpret_cast<const uint32_t*>(&b);
  }
}

// x: [M, >= K16] 16-bit rows (row stride ldx % 8 == 0, 16-byte aligned, zero
// beyond K up to K16); w: [N16, K16] int8. Split K over blockIdx.z as in
// int8_mma_small_m_kernel (float32 partials).
template <typename T>
__global__ void __launch_bounds__(kMmaThreads)
    weight_only_mma_kernel(const T* __restrict__ x, int64_t ldx, int64_t m, const int8_t* __restrict__ w,
                           int64_t k16, int64_t n, WeightOnlyEpilogue<T> epi, int64_t chunks_per_split,
                           float* __restrict__ partial) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int64_t col0 = static_cast<int64_t>(blockIdx.x) * kMmaCols;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kMmaRows;
  const bool has_lo = row0 + g < m, has_hi = row0 + g + 8 < m;
  const T* x_lo = x + (row0 + g) * ldx;
  const T* x_hi = x + (row0 + g + 8) * ldx;
  const int8_t* w_row[kMmaTiles];
#pragma unroll
  for (int j = 0; j < kMmaTiles; ++j) {
    w_row[j] = w + (col0 + 8 * j + g) * k16;
  }
  float acc[kMmaTiles][4] = {};
  const int64_t nchunks = (k16 + kMmaChunk - 1) / kMmaChunk;
  const int64_t cbegin = static_cast<int64_t>(blockIdx.z) * chunks_per_split;
  const int64_t cend = cbegin + chunks_per_split < nchunks ? cbegin + chunks_per_split : nchunks;
#pragma unroll 2
  for (int64_t c = cbegin + warp; c < cend; c += kMmaWarps) {
    const int64_t kk = c * kMmaChunk + t * 16;
    const bool kin = kk < k16;
    int4 l0 = zero_int4(), l1 = zero_int4(), h0 = zero_int4(), h1 = zero_int4();
    if (kin && has_lo) {
      l0 = load_ro16(x_lo + kk);
      l1 = load_ro16(x_lo + kk + 8);
    }
    if (kin && has_hi) {
      h0 = load_ro16(x_hi + kk);
      h1 = load_ro16(x_hi + kk + 8);
    }
    const uint32_t xl[8] = {static_cast<uint32_t>(l0.x), static_cast<uint32_t>(l0.y), static_cast<uint32_t>(l0.z),
                            static_cast<uint32_t>(l0.w), static_cast<uint32_t>(l1.x), static_cast<uint32_t>(l1.y),
                            static_cast<uint32_t>(l1.z), static_cast<uint32_t>(l1.w)};
    const uint32_t xh[8] = {static_cast<uint32_t>(h0.x), static_cast<uint32_t>(h0.y), static_cast<uint32_t>(h0.z),
                            static_cast<uint32_t>(h0.w), static_cast<uint32_t>(h1.x), static_cast<uint32_t>(h1.y),
                            static_cast<uint32_t>(h1.z), static_cast<uint32_t>(h1.w)};
    int4 b[kMmaTiles];
#pragma unroll
    for (int j = 0; j < kMmaTiles; ++j) {
      b[j] = kin ? load_stream16(w_row[j] + kk) : zero_int4();
    }
#pragma unroll
    for (int j = 0; j < kMmaTiles; ++j) {
      const uint32_t ww[4] = {static_cast<uint32_t>(b[j].x), static_cast<uint32_t>(b[j].y),
                              static_cast<uint32_t>(b[j].z), static_cast<uint32_t>(b[j].w)};
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        uint32_t b0, b1;
        int8x4_to_16bit<T>(ww[s], b0, b1);
        mma_16bit<T>(acc[j], xl[2 * s], xh[2 * s], xl[2 * s + 1], xh[2 * s + 1], b0, b1);
      }
    }
  }
  mma_reduce_and_store<float, WeightOnlyEpilogue<T>, float>(acc, row0, col0, m, n, epi, partial);
}

// ---------------------------------------------------------------------------
// Small M, weight_only, float32 activations: CUDA-core float32 (no TF32)
// ---------------------------------------------------------------------------
// Block (bx, by, bz): columns [4 bx, 4 bx + 4) (inside N16), rows [kM by, kM by
// + kM), k [bz * k_per_split, (bz + 1) * k_per_split) (k_per_split a multiple of
// 4; split K with float32 partials [splits, M, N] as above). Threads stride over
// K by 4 (4 weight bytes per column, one float4 per row: coalesced), then a block
// reduction. x: [M, >= K16] float32, ldx % 4 == 0, 16-byte aligned, zero beyond K.
template <int kM>
__global__ void __launch_bounds__(kFmaThreads)
    weight_only_fma_kernel(const float* __restrict__ x, int64_t ldx, int64_t m, const int8_t* __restrict__ w,
                           int64_t k16, int64_t n, WeightOnlyEpilogue<float> epi, int64_t k_per_split,
                           float* __restrict__ partial) {
  constexpr int kVals = kM * kFmaCols;
  __shared__ float red[kFmaThreads / 32][kVals];
  const int64_t col0 = static_cast<int64_t>(blockIdx.x) * kFmaCols;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kM;
  float acc[kM][kFmaCols] = {};
  const int64_t kbegin = static_cast<int64_t>(blockIdx.z) * k_per_split;
  const int64_t kend = kbegin + k_per_split < k16 ? kbegin + k_per_split : k16;
  for (int64_t kk = kbegin + static_cast<int64_t>(threadIdx.x) * 4; kk < kend; kk += kFmaThreads * 4) {
    float wf[kFmaCols][4];
#pragma unroll
    for (int c = 0; c < kFmaCols; ++c) {
      const char4 wv = __ldcs(reinterpret_cast<const char4*>(w + (col0 + c) * k16 + kk));
      wf[c][0] = static_cast<float>(wv.x);
      wf[c][1] = static_cast<float>(wv.y);
      wf[c][2] = static_cast<float>(wv.z);
      wf[c][3] = static_cast<float>(wv.w);
    }
#pragma unroll
    for (int r = 0; r < kM; ++r) {
      if (row0 + r < m) {
        const float4 xv = __ldg(reinterpret_cast<const float4*>(x + (row0 + r) * ldx + kk));
#pragma unroll
        for (int c = 0; c < kFmaCols; ++c) {
          acc[r][c] += xv.x * wf[c][0] + xv.y * wf[c][1] + xv.z * wf[c][2] + xv.w * wf[c][3];
        }
      }
    }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int r = 0; r < kM; ++r) {
#pragma unroll
    for (int c = 0; c < kFmaCols; ++c) {
      float v = acc[r][c];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, o);
      }
      if (lane == 0) {
        red[warp][r * kFmaCols + c] = v;
      }
    }
  }
  __syncthreads();
  if (threadIdx.x < kVals) {
    float v = red[0][threadIdx.x];
#pragma unroll
    for (int i = 1; i < kFmaThreads / 32; ++i) {
      v += red[i][threadIdx.x];
    }
    const int64_t row = row0 + threadIdx.x / kFmaCols;
    const int64_t col = col0 + threadIdx.x % kFmaCols;
    if (row < m && col < n) {
      if (partial != nullptr) {
        partial[(static_cast<int64_t>(blockIdx.z) * m + row) * n + col] = v;
      } else {
        epi(row, col, v, epi.header_ok());
      }
    }
  }
}

} // namespace q8::cuda::linear_kernels
