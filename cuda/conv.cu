// CUDA kernels of the int8 convolution (schemas: csrc/ops/conv.cpp; contract:
// the comment of q8::conv2d in q8/q8.h; the CPU kernels, whose results these
// match bit for bit, are in csrc/ops/cpu/conv.cpp).
//
// Packed layout (ConvPackLayout::Cuda; the 64-byte ConvPackedHeader of
// conv_packed.h, layout = Cuda, then the kind's payload):
//   GemmBlocks (every conv that is not Depthwise): `groups` blocks, block g at
//     64 + g * block_bytes (block_bytes a multiple of 64), each
//       int8 [OCg16][K16] row-major, row j = output channel g * OCg + j, column
//         k = (kh * KW + kw) * Cg + c holding weight[o][c][kh][kw] (the
//         channels-last im2col order, Cg = C / groups NOT rounded up), zero for
//         k >= K = KH * KW * Cg and for j >= OCg;
//       then int32 weight sums [OCg16] at block offset OCg16 * K16 (0 beyond OCg);
//     OCg16 / K16: OC / groups and K rounded up to multiples of 16. The int8
//     matrix of a block is what at::_int_mm(a, w.t()) reads (cuBLASLt "TN").
//     wsum_offset = 0.
//   Depthwise (groups == C == OC): int8 [KH * KW][ldw], ldw = OC rounded up to
//     64 (zero beyond OC), then int32 sums [ldw] at the absolute byte offset
//     wsum_offset = 64 + round_up(KH * KW * ldw, 64); block_bytes = ldw.
//   total = 64 + groups * block_bytes (GemmBlocks) or wsum_offset + 4 * ldw.
//   Alignment gaps are zero. The checksum (FNV-1a 64 over the header's first
//   56 bytes) covers the header only: the sums live on the device. The header
//   does not depend on the data: pack_conv_weight builds it on the host and a
//   one-warp kernel writes it from its arguments (no host-to-device copy, no
//   sync).
//
// Per-call validation (conv2d) reads no device memory on the host: the shared
// detail::check_conv2d_args, then numel == the size of the CUDA layout for
// (OC = weight_scale.size(0), C / groups, KH, KW, groups) and 16-byte alignment.
// The kernels that write the outputs also compare the whole header (read on the
// device) with the one this geometry packs to: on a mismatch (a weight of the
// same size packed for another geometry or on the CPU, or a modified header)
// every float output is NaN and every uint8 output is output_zero_point.
// unpack_conv_weight (offline) copies the header to the host, checks it, then
// checks every weight against its sum and every padding byte (it synchronizes).
//
// conv2d:
//   1. activations -> uint8 codes, NHWC [N, H, W, C] (the float input is first
//      made channels_last-contiguous by ATen): "dynamic": per-sample min / max
//      (started at 0, as q8.linear's rows; several blocks per sample, float
//      atomics on order-preserving integer encodings), then
//      compute_qparams(min, max, 0, 255) (qparams_math.h, the CPU's code) on the
//      device; "static": scale / zero point read from device memory (no .item();
//      not range-checked on CUDA). Codes clamp(nearbyint(x * (1.0f / s)) + z, 0,
//      255). A uint8 input is the codes (a channels_last copy if needed). The
//      non-finite flag of a sample is set by any NaN / Inf of its float input.
//   2. Depthwise: a direct kernel, one thread per output (pixel, channel),
//      exact int64 sum of (xq - zp) * w over the taps (padding reads zp), the
//      epilogue fused.
//      GemmBlocks: im2col into int8 [groups][M][K16] (M = N * OH * OW), value
//      xq - 128 (padding zp - 128, columns >= K zero); acc = a x w^T per group:
//      at::_int_mm_out (cuBLASLt, int32, exact: |acc| < 2^14 K16 <= 2^30) when M >
//      16, groups <= 4 and K16 <= 65536; otherwise a dp4a kernel (int32 when K16 <=
//      65536, int64 above: always exact); then the epilogue kernel with
//      v = acc + (128 - zp) * wsum[o] = sum (xq - zp) * w (exact, int64).
//   3. epilogue, float32 in the CPU's order (--fmad=false, no contraction):
//        y = float(v) * (sx * sw[o]); y = y + bias[o]; y = y + r (float residual
//        converted to float32, or float(ru - rzp) * rscale for uint8);
//        y = y < lo ? lo : y; y = y > hi ? hi : y;
//      stored channels_last [N, OC, OH, OW]: float (the input's float dtype,
//      float32 for a uint8 input; NaN for a non-finite sample), or uint8
//      clamp(nearbyint(y * (1.0f / os)) + oz, 0, 255), NaN -> oz (and oz for a
//      non-finite sample).
//
// Nothing in pack_conv_weight or conv2d reads device memory on the host or
// synchronizes (CUDA-graph capturable; the cuBLASLt path allocates through the
// caching allocator as at::_int_mm does); every launch goes to the current
// stream under a CUDAGuard and is checked with C10_CUDA_KERNEL_LAUNCH_CHECK();
// empty outputs launch nothing (after the argument checks).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include "ops/checks.h"
#include "ops/conv_packed.h"
#include "ops/qparams_math.h"

namespace q8::cuda {
namespace {

using detail::ConvMode;
using detail::ConvPackKind;
using detail::ConvPackLayout;
using detail::ConvPackedHeader;

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535 * 8;
constexpr int64_t kIntChunk = 65536;  // int32 sums of int8 x int8 products are exact up to this K

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}
int64_t round_up(int64_t a, int64_t b) {
  return ceil_div(a, b) * b;
}
bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}
unsigned blocks_for(int64_t total, int threads = kThreads) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(ceil_div(total, threads), kMaxBlocks)));
}

void check_cuda(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), "q8.", op, ": ", name, " must be a CUDA tensor for the CUDA kernel, got ", t.device());
}

// ---------------------------------------------------------------------------
// The packed layout
// ---------------------------------------------------------------------------
struct ConvSizes {
  ConvPackKind kind;
  int64_t ocg, cg, k, ocg16, k16;  // GemmBlocks
  int64_t ldw;                     // Depthwise
  int64_t block_bytes, wsum_offset, total;
};

ConvSizes conv_sizes(int64_t oc, int64_t cg, int64_t kh, int64_t kw, int64_t groups) {
  ConvSizes s{};
  s.cg = cg;
  s.ocg = groups > 0 ? oc / groups : 0;
  s.k = kh * kw * cg;
  if (cg == 1 && s.ocg == 1) {
    s.kind = ConvPackKind::Depthwise;
    s.ldw = round_up(oc, 64);
    s.block_bytes = s.ldw;
    s.wsum_offset = detail::kConvPackHeaderBytes + round_up(kh * kw * s.ldw, 64);
    s.total = s.wsum_offset + 4 * s.ldw;
  } else {
    s.kind = ConvPackKind::GemmBlocks;
    s.ocg16 = round_up(s.ocg, 16);
    s.k16 = round_up(s.k, 16);
    s.block_bytes = round_up(s.ocg16 * s.k16 + 4 * s.ocg16, 64);
    s.wsum_offset = 0;
    s.total = detail::kConvPackHeaderBytes + groups * s.block_bytes;
  }
  return s;
}

uint64_t header_checksum(const ConvPackedHeader& h) {
  uint8_t bytes[sizeof(ConvPackedHeader)];
  std::memcpy(bytes, &h, sizeof(h));
  uint64_t x = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < offsetof(ConvPackedHeader, checksum); ++i) {
    x = (x ^ bytes[i]) * 0x100000001b3ull;
  }
  return x;
}

struct HeaderWords {
  uint64_t w[8];
};

HeaderWords make_header(int64_t oc, int64_t cg, int64_t kh, int64_t kw, int64_t groups, const ConvSizes& s) {
  ConvPackedHeader h{};
  h.magic = detail::kConvPackMagic;
  h.version = detail::kConvPackVersion;
  h.layout = static_cast<uint32_t>(ConvPackLayout::Cuda);
  h.kind = static_cast<uint32_t>(s.kind);
  h.out_channels = static_cast<int32_t>(oc);
  h.in_channels_per_group = static_cast<int32_t>(cg);
  h.kernel_h = static_cast<int32_t>(kh);
  h.kernel_w = static_cast<int32_t>(kw);
  h.groups = static_cast<int32_t>(groups);
  h.reserved = 0;
  h.block_bytes = s.block_bytes;
  h.wsum_offset = s.wsum_offset;
  h.checksum = header_checksum(h);
  HeaderWords words{};
  static_assert(sizeof(h) == sizeof(words), "the header is 8 words");
  std::memcpy(words.w, &h, sizeof(h));
  return words;
}

__global__ void write_header_kernel(HeaderWords h, uint64_t* __restrict__ dst) {
  if (threadIdx.x < 8) {
    dst[threadIdx.x] = h.w[threadIdx.x];
  }
}

// Block-wide: does the packed header equal the expected one? (8 words, one
// thread each; every thread of the block must call it.)
__device__ __forceinline__ bool block_header_ok(const uint8_t* packed, const HeaderWords& h) {
  int ok = 1;
  if (threadIdx.x < 8) {
    ok = reinterpret_cast<const uint64_t*>(packed)[threadIdx.x] == h.w[threadIdx.x] ? 1 : 0;
  }
  return __syncthreads_and(ok) != 0;
}

// weight: int8 [OC, Cg, KH, KW] contiguous.
__global__ void pack_gemm_kernel(const int8_t* __restrict__ w, int64_t groups, int64_t ocg, int64_t cg, int64_t taps,
                                 int64_t ocg16, int64_t k16, int64_t block_bytes, uint8_t* __restrict__ dst) {
  const int64_t per_group = ocg16 * k16;
  const int64_t total = groups * per_group;
  const int64_t k = taps * cg;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t g = i / per_group, r = i % per_group, j = r / k16, col = r % k16;
    int8_t v = 0;
    if (j < ocg && col < k) {
      const int64_t tap = col / cg, c = col % cg;
      v = w[((g * ocg + j) * cg + c) * taps + tap];
    }
    reinterpret_cast<int8_t*>(dst + detail::kConvPackHeaderBytes + g * block_bytes)[r] = v;
  }
}

__global__ void pack_gemm_sums_kernel(const int8_t* __restrict__ w, int64_t groups, int64_t ocg, int64_t k,
                                      int64_t ocg16, int64_t k16, int64_t block_bytes, uint8_t* __restrict__ dst) {
  const int64_t total = groups * ocg16;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t g = i / ocg16, j = i % ocg16;
    int32_t sum = 0;
    if (j < ocg) {
      const int8_t* row = w + (g * ocg + j) * k;  // [Cg, KH, KW] of this channel: the same values
      for (int64_t t = 0; t < k; ++t) {
        sum += row[t];
      }
    }
    reinterpret_cast<int32_t*>(dst + detail::kConvPackHeaderBytes + g * block_bytes + ocg16 * k16)[j] = sum;
  }
}

// weight: int8 [OC, 1, KH, KW] contiguous.
__global__ void pack_depthwise_kernel(const int8_t* __restrict__ w, int64_t oc, int64_t taps, int64_t ldw,
                                      int64_t wsum_offset, uint8_t* __restrict__ dst) {
  const int64_t total = taps * ldw;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t t = i / ldw, o = i % ldw;
    reinterpret_cast<int8_t*>(dst + detail::kConvPackHeaderBytes)[i] = o < oc ? w[o * taps + t] : int8_t{0};
  }
  for (int64_t o = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; o < ldw; o += int64_t{gridDim.x} * blockDim.x) {
    int32_t sum = 0;
    if (o < oc) {
      for (int64_t t = 0; t < taps; ++t) {
        sum += w[o * taps + t];
      }
    }
    reinterpret_cast<int32_t*>(dst + wsum_offset)[o] = sum;
  }
}

// The inverse of the packing, checking every byte: bad (min index) set when a
// padding byte is not zero or a sum does not match.
__global__ void unpack_kernel(const uint8_t* __restrict__ src, bool depthwise, int64_t groups, int64_t ocg,
                              int64_t cg, int64_t taps, int64_t ocg16, int64_t k16, int64_t ldw, int64_t block_bytes,
                              int64_t wsum_offset, int8_t* __restrict__ w, unsigned long long* __restrict__ bad) {
  // One thread per packed row (GemmBlocks: (g, j < OCg16); Depthwise: channel o < ldw).
  const int64_t rows = depthwise ? ldw : groups * ocg16;
  const int64_t k = taps * cg;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < rows; i += int64_t{gridDim.x} * blockDim.x) {
    bool ok = true;
    int32_t sum = 0;
    int32_t stored;
    if (depthwise) {
      const int8_t* wp = reinterpret_cast<const int8_t*>(src + detail::kConvPackHeaderBytes);
      const int64_t oc = groups;
      for (int64_t t = 0; t < taps; ++t) {
        const int8_t v = wp[t * ldw + i];
        if (i < oc) {
          w[i * taps + t] = v;
          sum += v;
        } else {
          ok = ok && v == 0;
        }
      }
      stored = reinterpret_cast<const int32_t*>(src + wsum_offset)[i];
    } else {
      const int64_t g = i / ocg16, j = i % ocg16;
      const uint8_t* block = src + detail::kConvPackHeaderBytes + g * block_bytes;
      const int8_t* row = reinterpret_cast<const int8_t*>(block) + j * k16;
      for (int64_t col = 0; col < k16; ++col) {
        const int8_t v = row[col];
        if (j < ocg && col < k) {
          const int64_t tap = col / cg, c = col % cg;
          w[((g * ocg + j) * cg + c) * taps + tap] = v;
          sum += v;
        } else {
          ok = ok && v == 0;
        }
      }
      stored = reinterpret_cast<const int32_t*>(block + ocg16 * k16)[j];
    }
    if (!ok || stored != sum) {
      atomicMin(bad, static_cast<unsigned long long>(i));
    }
  }
}

// ---------------------------------------------------------------------------
// Activations -> uint8 codes (NHWC)
// ---------------------------------------------------------------------------
// Per-sample statistics: order-preserving encodings of min and max (started at
// 0, as q8.linear), and a non-finite flag.
struct SampleStats {
  uint32_t lo, hi;
  int32_t nonfinite;
  int32_t pad;
};

__device__ __forceinline__ uint32_t encode_float(float f) {
  const uint32_t b = __float_as_uint(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float decode_float(uint32_t e) {
  return __uint_as_float((e & 0x80000000u) ? (e & 0x7fffffffu) : ~e);
}

__global__ void init_stats_kernel(SampleStats* __restrict__ st, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    st[i] = SampleStats{encode_float(0.f), encode_float(0.f), 0, 0};
  }
}

template <typename T>
__global__ void minmax_kernel(const T* __restrict__ x, int64_t per_sample, SampleStats* __restrict__ st) {
  __shared__ float s_lo[kThreads / 32], s_hi[kThreads / 32];
  const int64_t n = blockIdx.y;
  const T* xs = x + n * per_sample;
  float lo = 0.f, hi = 0.f;
  int finite = 1;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < per_sample;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float v = static_cast<float>(xs[i]);
    finite &= isfinite(v) ? 1 : 0;
    lo = fminf(lo, v);
    hi = fmaxf(hi, v);
  }
  for (int off = 16; off > 0; off /= 2) {
    lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, off));
    hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, off));
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    s_lo[warp] = lo;
    s_hi[warp] = hi;
  }
  finite = __syncthreads_and(finite);
  if (threadIdx.x == 0) {
    for (int i = 1; i < kThreads / 32; ++i) {
      lo = fminf(lo, s_lo[i]);
      hi = fmaxf(hi, s_hi[i]);
    }
    atomicMin(&st[n].lo, encode_float(lo));
    atomicMax(&st[n].hi, encode_float(hi));
    if (!finite) {
      atomicOr(&st[n].nonfinite, 1);
    }
  }
}

__device__ __forceinline__ int32_t read_zp(const void* zp, bool zp_long) {
  return zp_long ? static_cast<int32_t>(*static_cast<const int64_t*>(zp)) : *static_cast<const int32_t*>(zp);
}

// sx / zx per sample: dynamic from the statistics (compute_qparams, the CPU's
// code), static from device memory.
__global__ void qparams_kernel(const SampleStats* __restrict__ st, int64_t n, bool dynamic,
                               const float* __restrict__ static_scale, const void* __restrict__ static_zp,
                               bool zp_long, float* __restrict__ sx, int32_t* __restrict__ zx) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    float s;
    int32_t z;
    if (dynamic) {
      if (st[i].nonfinite) {
        s = 1.f;
        z = 0;
      } else {
        q8::detail::compute_qparams(decode_float(st[i].lo), decode_float(st[i].hi), 0, 255, false, &s, &z);
      }
    } else {
      s = *static_scale;
      z = read_zp(static_zp, zp_long);
    }
    sx[i] = s;
    zx[i] = z;
  }
}

// clamp(nearbyint(x * inv) + z, 0, 255); NaN gives 0 (its sample is flagged).
__device__ __forceinline__ uint8_t activation_code(float x, float inv, float zf) {
  float q = __fadd_rn(rintf(__fmul_rn(x, inv)), zf);
  q = fmaxf(q, 0.f);
  q = fminf(q, 255.f);
  return static_cast<uint8_t>(static_cast<int32_t>(q));
}

// x: NHWC contiguous float; codes: NHWC uint8. Static mode flags non-finite samples.
template <typename T>
__global__ void quantize_kernel(const T* __restrict__ x, int64_t per_sample, const float* __restrict__ sx,
                                const int32_t* __restrict__ zx, bool flag_nonfinite, SampleStats* __restrict__ st,
                                uint8_t* __restrict__ codes) {
  const int64_t n = blockIdx.y;
  const float s = sx[n];
  const float inv = __fdiv_rn(1.0f, s);
  const float zf = static_cast<float>(zx[n]);
  const T* xs = x + n * per_sample;
  uint8_t* cs = codes + n * per_sample;
  int finite = 1;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < per_sample;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float v = static_cast<float>(xs[i]);
    finite &= isfinite(v) ? 1 : 0;
    cs[i] = activation_code(v, inv, zf);
  }
  if (flag_nonfinite) {
    finite = __syncthreads_and(finite);
    if (threadIdx.x == 0 && !finite) {
      atomicOr(&st[n].nonfinite, 1);
    }
  }
}

// ---------------------------------------------------------------------------
// Geometry and the epilogue
// ---------------------------------------------------------------------------
struct Geometry {
  int64_t n, c, h, w, oc, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, groups;
};

enum ResidualKind : int { kResNone = 0, kResFloat = 1, kResHalf = 2, kResBFloat16 = 3, kResDouble = 4, kResUint8 = 5 };

template <typename T>
struct Epilogue {
  T* out_f;                   // float output (channels_last), or nullptr
  uint8_t* out_u8;            // uint8 output (channels_last), or nullptr
  const float* sx;            // [N]
  const int32_t* zx;          // [N]
  const SampleStats* st;      // [N]: non-finite flags
  const float* sw;            // [OC]
  const float* bias;          // [OC] float32 or nullptr
  int res_kind;
  const void* res;            // residual data
  int64_t rs0, rs1, rs2, rs3;  // residual strides (n, o, y, x)
  const float* res_scale;
  const void* res_zp;
  bool res_zp_long;
  bool has_lo, has_hi;
  float lo, hi;
  const float* out_scale;
  const void* out_zp;
  bool out_zp_long;
  int64_t oc, oh, ow;

  __device__ __forceinline__ float residual(int64_t n, int64_t o, int64_t y, int64_t x) const {
    const int64_t off = n * rs0 + o * rs1 + y * rs2 + x * rs3;
    switch (res_kind) {
      case kResFloat:
        return static_cast<const float*>(res)[off];
      case kResHalf:
        return static_cast<float>(static_cast<const c10::Half*>(res)[off]);
      case kResBFloat16:
        return static_cast<float>(static_cast<const c10::BFloat16*>(res)[off]);
      case kResDouble:
        return static_cast<float>(static_cast<const double*>(res)[off]);
      default: {
        const int32_t ru = static_cast<const uint8_t*>(res)[off];
        const int32_t rz = read_zp(res_zp, res_zp_long);
        return __fmul_rn(static_cast<float>(ru - rz), *res_scale);
      }
    }
  }

  // m: output pixel (n, y, x) flattened; v = sum (xq - zp) * w (exact).
  __device__ __forceinline__ void operator()(int64_t m, int64_t o, int64_t v, bool header_ok) const {
    const int64_t pix = oh * ow;
    const int64_t n = m / pix, r = m % pix, y = r / ow, x = r % ow;
    const bool bad = !header_ok || st[n].nonfinite != 0;
    float f = __fmul_rn(static_cast<float>(v), __fmul_rn(sx[n], sw[o]));
    if (bias != nullptr) {
      f = __fadd_rn(f, bias[o]);
    }
    if (res_kind != kResNone) {
      f = __fadd_rn(f, residual(n, o, y, x));
    }
    if (has_lo) {
      f = f < lo ? lo : f;
    }
    if (has_hi) {
      f = f > hi ? hi : f;
    }
    const int64_t idx = m * oc + o;
    if (out_u8 != nullptr) {
      const int32_t oz = read_zp(out_zp, out_zp_long);
      uint8_t q = static_cast<uint8_t>(oz < 0 ? 0 : (oz > 255 ? 255 : oz));
      if (!bad && !isnan(f)) {
        const float inv = __fdiv_rn(1.0f, *out_scale);
        const float t = __fmul_rn(f, inv);
        if (!isnan(t)) {
          float qf = __fadd_rn(rintf(t), static_cast<float>(oz));
          qf = fmaxf(qf, 0.f);
          qf = fminf(qf, 255.f);
          q = static_cast<uint8_t>(static_cast<int32_t>(qf));
        }
      }
      out_u8[idx] = q;
    } else {
      out_f[idx] = bad ? static_cast<T>(__int_as_float(0x7fc00000)) : static_cast<T>(f);
    }
  }
};

// ---------------------------------------------------------------------------
// Depthwise: direct, epilogue fused
// ---------------------------------------------------------------------------
template <typename T>
__global__ void depthwise_kernel(const uint8_t* __restrict__ codes, Geometry g, const uint8_t* __restrict__ packed,
                                 HeaderWords header, int64_t ldw, int64_t wsum_offset, Epilogue<T> epi) {
  const bool header_ok = block_header_ok(packed, header);
  const int8_t* wt = reinterpret_cast<const int8_t*>(packed + detail::kConvPackHeaderBytes);
  const int64_t total = g.n * g.oh * g.ow * g.oc;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t o = i % g.oc, m = i / g.oc;
    const int64_t pix = g.oh * g.ow;
    const int64_t n = m / pix, r = m % pix, oy = r / g.ow, ox = r % g.ow;
    const int32_t zp = epi.zx[n];
    int64_t acc = 0;
    if (header_ok) {
      const uint8_t* cs = codes + n * g.h * g.w * g.c;
      for (int64_t ky = 0; ky < g.kh; ++ky) {
        const int64_t iy = oy * g.sh - g.ph + ky * g.dh;
        for (int64_t kx = 0; kx < g.kw; ++kx) {
          const int64_t ix = ox * g.sw - g.pw + kx * g.dw;
          const int32_t xq = (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w) ? cs[(iy * g.w + ix) * g.c + o] : zp;
          acc += static_cast<int64_t>((xq - zp) * static_cast<int32_t>(wt[(ky * g.kw + kx) * ldw + o]));
        }
      }
    }
    epi(m, o, acc, header_ok);
  }
}

// ---------------------------------------------------------------------------
// GemmBlocks: im2col, GEMM, epilogue
// ---------------------------------------------------------------------------
// a: int8 [groups][M][K16], xq - 128 (padding zp - 128; columns >= K zero).
// One thread per (group, pixel, tap) writes the tap's Cg columns (the index
// arithmetic once per tap, reads and writes contiguous over c); tap index
// `taps` writes the zero columns [K, K16).
__global__ void im2col_kernel(const uint8_t* __restrict__ codes, Geometry g, const int32_t* __restrict__ zx,
                              int64_t cg, int64_t k, int64_t k16, int8_t* __restrict__ a) {
  const int64_t m_total = g.n * g.oh * g.ow;
  const int64_t taps = g.kh * g.kw;
  const int64_t total = g.groups * m_total * (taps + 1);
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t tap = i % (taps + 1), gm = i / (taps + 1), m = gm % m_total, grp = gm / m_total;
    int8_t* row = a + gm * k16;
    if (tap == taps) {
      for (int64_t col = k; col < k16; ++col) {
        row[col] = 0;
      }
      continue;
    }
    const int64_t pix = g.oh * g.ow;
    const int64_t n = m / pix, r = m % pix, oy = r / g.ow, ox = r % g.ow;
    const int64_t ky = tap / g.kw, kx = tap % g.kw;
    const int64_t iy = oy * g.sh - g.ph + ky * g.dh, ix = ox * g.sw - g.pw + kx * g.dw;
    int8_t* dst = row + tap * cg;
    if (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w) {
      const uint8_t* src = codes + ((n * g.h + iy) * g.w + ix) * g.c + grp * cg;
      for (int64_t c = 0; c < cg; ++c) {
        dst[c] = static_cast<int8_t>(static_cast<int32_t>(src[c]) - 128);
      }
    } else {
      const auto v = static_cast<int8_t>(zx[n] - 128);
      for (int64_t c = 0; c < cg; ++c) {
        dst[c] = v;
      }
    }
  }
}

// acc[g][m][j] = sum_k a[g][m][k] * w_g[j][k] (dp4a; rows 16-byte aligned, K16 % 16 == 0).
template <typename Acc>
__global__ void gemm_dp4a_kernel(const int8_t* __restrict__ a, const uint8_t* __restrict__ packed, int64_t groups,
                                 int64_t m_total, int64_t ocg16, int64_t k16, int64_t block_bytes,
                                 Acc* __restrict__ acc) {
  const int64_t total = groups * m_total * ocg16;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t j = i % ocg16, gm = i / ocg16, grp = gm / m_total;
    const int4* ar = reinterpret_cast<const int4*>(a + gm * k16);
    const int4* wr = reinterpret_cast<const int4*>(packed + detail::kConvPackHeaderBytes + grp * block_bytes + j * k16);
    Acc sum = 0;
    for (int64_t q = 0; q < k16 / 16; ++q) {
      const int4 av = ar[q], wv = __ldg(wr + q);
      int32_t part = 0;
      part = __dp4a(av.x, wv.x, part);
      part = __dp4a(av.y, wv.y, part);
      part = __dp4a(av.z, wv.z, part);
      part = __dp4a(av.w, wv.w, part);
      sum += part;
    }
    acc[i] = sum;
  }
}

// acc: [groups][M][OCg16] (nullptr: zeros, K = 0).
template <typename T, typename Acc>
__global__ void gemm_epilogue_kernel(const Acc* __restrict__ acc, const uint8_t* __restrict__ packed,
                                     HeaderWords header, int64_t m_total, int64_t ocg, int64_t ocg16, int64_t k16,
                                     int64_t block_bytes, Epilogue<T> epi) {
  const bool header_ok = block_header_ok(packed, header);
  const int64_t oc = epi.oc;
  const int64_t total = m_total * oc;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t o = i % oc, m = i / oc, grp = o / ocg, j = o % ocg;
    int64_t v = 0;
    if (header_ok) {
      const int32_t wsum =
          reinterpret_cast<const int32_t*>(packed + detail::kConvPackHeaderBytes + grp * block_bytes + ocg16 * k16)[j];
      const int64_t a = acc != nullptr ? static_cast<int64_t>(acc[(grp * m_total + m) * ocg16 + j]) : 0;
      const int64_t n = m / (epi.oh * epi.ow);
      v = a + static_cast<int64_t>(128 - epi.zx[n]) * wsum;
    }
    epi(m, o, v, header_ok);
  }
}

// ---------------------------------------------------------------------------
// The ops
// ---------------------------------------------------------------------------
at::Tensor pack_conv_weight_cuda(const at::Tensor& weight_int8, int64_t groups) {
  const char* op = "pack_conv_weight";
  detail::check_pack_conv_weight_args(op, weight_int8, groups);
  check_cuda(op, weight_int8, "weight_int8");
  c10::cuda::CUDAGuard guard(weight_int8.device());
  const auto w = weight_int8.contiguous();
  const int64_t oc = w.size(0), cg = w.size(1), kh = w.size(2), kw = w.size(3);
  const ConvSizes s = conv_sizes(oc, cg, kh, kw, groups);
  // Zero-filled (one async memset): the alignment gaps are zero, so the result is deterministic.
  auto out = at::zeros({s.total}, w.options().dtype(at::kByte));
  uint8_t* base = out.mutable_data_ptr<uint8_t>();
  auto stream = at::cuda::getCurrentCUDAStream();
  write_header_kernel<<<1, 32, 0, stream>>>(make_header(oc, cg, kh, kw, groups, s), reinterpret_cast<uint64_t*>(base));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (s.kind == ConvPackKind::Depthwise) {
    if (s.ldw > 0) {
      pack_depthwise_kernel<<<blocks_for(kh * kw * s.ldw), kThreads, 0, stream>>>(
          w.const_data_ptr<int8_t>(), oc, kh * kw, s.ldw, s.wsum_offset, base);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  } else if (groups * s.ocg16 > 0) {
    if (s.k16 > 0) {
      pack_gemm_kernel<<<blocks_for(groups * s.ocg16 * s.k16), kThreads, 0, stream>>>(
          w.const_data_ptr<int8_t>(), groups, s.ocg, cg, kh * kw, s.ocg16, s.k16, s.block_bytes, base);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    pack_gemm_sums_kernel<<<blocks_for(groups * s.ocg16), kThreads, 0, stream>>>(
        w.const_data_ptr<int8_t>(), groups, s.ocg, s.k, s.ocg16, s.k16, s.block_bytes, base);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

// Offline: copies the header to the host and reads back the result of the
// weight check (two synchronizations).
at::Tensor unpack_conv_weight_cuda(const at::Tensor& packed, c10::SymInt out_channels,
                                   c10::SymInt in_channels_per_group, at::IntArrayRef kernel_size, int64_t groups) {
  const char* op = "unpack_conv_weight";
  detail::check_unpack_conv_weight_args(op, packed, out_channels, in_channels_per_group, kernel_size, groups);
  check_cuda(op, packed, "packed_weight");
  c10::cuda::CUDAGuard guard(packed.device());
  TORCH_CHECK(packed.is_contiguous(), "q8.", op, ": packed_weight must be contiguous");
  const int64_t numel = packed.numel();
  TORCH_CHECK(numel >= detail::kConvPackHeaderBytes, "q8.", op, ": packed_weight has ", numel,
              " bytes, fewer than its ", detail::kConvPackHeaderBytes,
              "-byte header: not a q8 packed conv weight (or truncated)");
  TORCH_CHECK(aligned16(packed.const_data_ptr()), "q8.", op,
              ": packed_weight must start 16-byte aligned (use the tensor q8.pack_conv_weight returned)");
  const auto host = packed.narrow(0, 0, detail::kConvPackHeaderBytes).to(at::kCPU);
  ConvPackedHeader h{};
  std::memcpy(&h, host.const_data_ptr<uint8_t>(), sizeof(h));
  TORCH_CHECK(h.magic == detail::kConvPackMagic, "q8.", op,
              ": packed_weight does not start with the q8 packed conv weight magic: make it with q8.pack_conv_weight");
  TORCH_CHECK(h.version == detail::kConvPackVersion, "q8.", op, ": packed_weight has format version ", h.version,
              ", this q8 reads version ", detail::kConvPackVersion, ": repack with q8.pack_conv_weight");
  TORCH_CHECK(h.layout == static_cast<uint32_t>(ConvPackLayout::Cuda), "q8.", op, ": packed_weight was packed for the '",
              h.layout == static_cast<uint32_t>(ConvPackLayout::Cpu) ? "cpu" : "unknown",
              "' layout but this is the 'cuda' kernel (", packed.device(),
              "): repack the canonical weight on this device with q8.pack_conv_weight");
  TORCH_CHECK(header_checksum(h) == h.checksum, "q8.", op,
              ": packed_weight checksum mismatch (the header was modified): repack with q8.pack_conv_weight");
  const int64_t oc = out_channels.expect_int(), cg = in_channels_per_group.expect_int();
  const int64_t kh = kernel_size[0], kw = kernel_size[1];
  TORCH_CHECK(h.out_channels == oc && h.in_channels_per_group == cg && h.kernel_h == kh && h.kernel_w == kw &&
                  h.groups == groups,
              "q8.", op, ": the sizes (out_channels=", oc, ", in_channels_per_group=", cg, ", kernel_size=[", kh, ", ",
              kw, "], groups=", groups, ") must match packed_weight's (", h.out_channels, ", ",
              h.in_channels_per_group, ", [", h.kernel_h, ", ", h.kernel_w, "], ", h.groups, ")");
  const ConvSizes s = conv_sizes(oc, cg, kh, kw, groups);
  TORCH_CHECK(h.kind == static_cast<uint32_t>(s.kind) && h.block_bytes == s.block_bytes &&
                  h.wsum_offset == s.wsum_offset && h.reserved == 0,
              "q8.", op, ": packed_weight header is corrupt (kind / offsets do not match its sizes)");
  TORCH_CHECK(numel == s.total, "q8.", op, ": packed_weight has ", numel, " bytes but its header needs ", s.total,
              ": truncated or extended");
  auto out = at::empty({oc, cg, kh, kw}, packed.options().dtype(at::kChar));
  const bool dw = s.kind == ConvPackKind::Depthwise;
  const int64_t rows = dw ? s.ldw : groups * s.ocg16;
  if (rows == 0) {
    return out;
  }
  constexpr auto kNone = std::numeric_limits<unsigned long long>::max();
  auto bad = at::full({1}, static_cast<int64_t>(-1), packed.options().dtype(at::kLong));
  unpack_kernel<<<blocks_for(rows), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      packed.const_data_ptr<uint8_t>(), dw, dw ? oc : groups, s.ocg, cg, kh * kw, s.ocg16, s.k16, s.ldw,
      s.block_bytes, s.wsum_offset, out.mutable_data_ptr<int8_t>(),
      reinterpret_cast<unsigned long long*>(bad.mutable_data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const auto bad_row = static_cast<unsigned long long>(bad.item<int64_t>());  // synchronizes (offline op)
  TORCH_CHECK(bad_row == kNone, "q8.", op, ": packed_weight is corrupt: packed row ", bad_row,
              " does not match its weight sum or padding (the tensor was modified after q8.pack_conv_weight)");
  return out;
}

int residual_kind(const at::Tensor& r) {
  switch (r.scalar_type()) {
    case at::kFloat:
      return kResFloat;
    case at::kHalf:
      return kResHalf;
    case at::kBFloat16:
      return kResBFloat16;
    case at::kDouble:
      return kResDouble;
    case at::kByte:
      return kResUint8;
    default:
      TORCH_CHECK(false, "q8.conv2d: residual must be float32, float16, bfloat16, float64 or uint8, got ",
                  r.scalar_type());
  }
  return kResNone;
}

template <typename T>
void run_conv(const Geometry& g, const uint8_t* codes, const at::Tensor& packed, const ConvSizes& s,
              const HeaderWords& header, const Epilogue<T>& epi, const at::TensorOptions& opts) {
  auto stream = at::cuda::getCurrentCUDAStream();
  const uint8_t* pk = packed.const_data_ptr<uint8_t>();
  const int64_t m_total = g.n * g.oh * g.ow;
  if (s.kind == ConvPackKind::Depthwise) {
    depthwise_kernel<T><<<blocks_for(m_total * g.oc), kThreads, 0, stream>>>(codes, g, pk, header, s.ldw,
                                                                             s.wsum_offset, epi);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  const unsigned epi_blocks = blocks_for(m_total * g.oc);
  if (s.k16 == 0) {
    gemm_epilogue_kernel<T, int32_t><<<epi_blocks, kThreads, 0, stream>>>(nullptr, pk, header, m_total, s.ocg,
                                                                          s.ocg16, s.k16, s.block_bytes, epi);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  auto a = at::empty({g.groups, m_total, s.k16}, opts.dtype(at::kChar));
  im2col_kernel<<<blocks_for(g.groups * m_total * (g.kh * g.kw + 1)), kThreads, 0, stream>>>(
      codes, g, epi.zx, s.cg, s.k, s.k16, a.mutable_data_ptr<int8_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t acc_elems = g.groups * m_total * s.ocg16;
  if (s.k16 <= kIntChunk) {
    auto acc = at::empty({g.groups, m_total, s.ocg16}, opts.dtype(at::kInt));
    if (m_total > 16 && g.groups <= 4) {
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        const auto w = packed.narrow(0, detail::kConvPackHeaderBytes + grp * s.block_bytes, s.ocg16 * s.k16)
                           .view(at::kChar)
                           .view({s.ocg16, s.k16});
        auto out_g = acc.select(0, grp);
        at::_int_mm_out(out_g, a.select(0, grp), w.t());
      }
    } else {
      gemm_dp4a_kernel<int32_t><<<blocks_for(acc_elems), kThreads, 0, stream>>>(
          a.const_data_ptr<int8_t>(), pk, g.groups, m_total, s.ocg16, s.k16, s.block_bytes,
          acc.mutable_data_ptr<int32_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    gemm_epilogue_kernel<T, int32_t><<<epi_blocks, kThreads, 0, stream>>>(
        acc.const_data_ptr<int32_t>(), pk, header, m_total, s.ocg, s.ocg16, s.k16, s.block_bytes, epi);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    auto acc = at::empty({g.groups, m_total, s.ocg16}, opts.dtype(at::kLong));
    gemm_dp4a_kernel<int64_t><<<blocks_for(acc_elems), kThreads, 0, stream>>>(
        a.const_data_ptr<int8_t>(), pk, g.groups, m_total, s.ocg16, s.k16, s.block_bytes,
        acc.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    gemm_epilogue_kernel<T, int64_t><<<epi_blocks, kThreads, 0, stream>>>(
        acc.const_data_ptr<int64_t>(), pk, header, m_total, s.ocg, s.ocg16, s.k16, s.block_bytes, epi);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

at::Tensor conv2d_cuda(const at::Tensor& input, const at::Tensor& packed, const at::Tensor& weight_scale,
                       const std::optional<at::Tensor>& bias, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                       c10::string_view activation, const std::optional<at::Tensor>& input_scale,
                       const std::optional<at::Tensor>& input_zero_point, const std::optional<at::Tensor>& residual,
                       const std::optional<at::Tensor>& residual_scale,
                       const std::optional<at::Tensor>& residual_zero_point, std::optional<double> clamp_min,
                       std::optional<double> clamp_max, const std::optional<at::Tensor>& output_scale,
                       const std::optional<at::Tensor>& output_zero_point) {
  const char* op = "conv2d";
  const detail::ConvArgs ca = detail::check_conv2d_args(
      op, input, packed, weight_scale, bias, kernel_size, stride, padding, dilation, groups, activation, input_scale,
      input_zero_point, residual, residual_scale, residual_zero_point, clamp_min, clamp_max, output_scale,
      output_zero_point);
  check_cuda(op, input, "input");
  check_cuda(op, packed, "packed_weight");
  c10::cuda::CUDAGuard guard(input.device());
  const Geometry g{ca.n, ca.c, ca.h, ca.w, ca.oc, ca.oh, ca.ow, ca.kh, ca.kw, ca.sh,
                   ca.sw, ca.ph, ca.pw, ca.dh, ca.dw, ca.groups};
  const int64_t cg = ca.groups > 0 ? ca.c / ca.groups : 0;
  const ConvSizes s = conv_sizes(ca.oc, cg, ca.kh, ca.kw, ca.groups);
  TORCH_CHECK(packed.is_contiguous(), "q8.", op, ": packed_weight must be contiguous");
  TORCH_CHECK(packed.numel() == s.total, "q8.", op, ": packed_weight has ", packed.numel(),
              " bytes but the 'cuda' layout of out_channels = ", ca.oc, ", in_channels_per_group = ", cg,
              ", kernel_size = [", ca.kh, ", ", ca.kw, "], groups = ", ca.groups, " needs ", s.total,
              ": it was packed for other sizes or on another device (repack the canonical weight on this device with "
              "q8.pack_conv_weight(weight_int8.to(device), groups)), or truncated / extended");
  TORCH_CHECK(aligned16(packed.const_data_ptr()), "q8.", op,
              ": packed_weight must start 16-byte aligned (use the tensor q8.pack_conv_weight returned)");
  const HeaderWords header = make_header(ca.oc, cg, ca.kh, ca.kw, ca.groups, s);

  const bool float_in = !ca.uint8_input;
  const at::ScalarType out_float = float_in ? input.scalar_type() : at::kFloat;
  auto out = at::empty({ca.n, ca.oc, ca.oh, ca.ow},
                       input.options()
                           .dtype(ca.uint8_output ? at::kByte : out_float)
                           .memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) {
    return out;
  }
  TORCH_CHECK(ca.n <= 65535, "q8.", op, ": the batch size must be at most 65535 on CUDA, got ", ca.n);
  auto stream = at::cuda::getCurrentCUDAStream();
  const auto opts = input.options();

  // Per-sample scratch: statistics, sx, zx.
  auto stats_buf = at::empty({ca.n * static_cast<int64_t>(sizeof(SampleStats))}, opts.dtype(at::kByte));
  auto sx = at::empty({ca.n}, opts.dtype(at::kFloat));
  auto zx = at::empty({ca.n}, opts.dtype(at::kInt));
  auto* st = reinterpret_cast<SampleStats*>(stats_buf.mutable_data_ptr<uint8_t>());
  init_stats_kernel<<<blocks_for(ca.n), kThreads, 0, stream>>>(st, ca.n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const bool dynamic = ca.mode == ConvMode::Dynamic;
  const float* in_scale = dynamic ? nullptr : input_scale->const_data_ptr<float>();
  const void* in_zp = dynamic ? nullptr : input_zero_point->const_data_ptr();
  const bool in_zp_long = !dynamic && input_zero_point->scalar_type() == at::kLong;
  const int64_t per_sample = ca.c * ca.h * ca.w;
  const auto x = input.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor codes_t;
  const unsigned sample_blocks = static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(
      ceil_div(per_sample, int64_t{kThreads} * 8), 1024)));
  const dim3 sgrid(sample_blocks, static_cast<unsigned>(ca.n));
  if (float_in) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "q8_conv2d_cuda_stats", [&] {
      if (dynamic && per_sample > 0) {
        minmax_kernel<scalar_t><<<sgrid, kThreads, 0, stream>>>(x.const_data_ptr<scalar_t>(), per_sample, st);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  }
  qparams_kernel<<<blocks_for(ca.n), kThreads, 0, stream>>>(st, ca.n, dynamic, in_scale, in_zp, in_zp_long,
                                                            sx.mutable_data_ptr<float>(),
                                                            zx.mutable_data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const uint8_t* codes;
  if (float_in) {
    codes_t = at::empty({ca.n * per_sample}, opts.dtype(at::kByte));
    if (per_sample > 0) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "q8_conv2d_cuda_quantize", [&] {
        quantize_kernel<scalar_t><<<sgrid, kThreads, 0, stream>>>(x.const_data_ptr<scalar_t>(), per_sample,
                                                                  sx.const_data_ptr<float>(),
                                                                  zx.const_data_ptr<int32_t>(), !dynamic, st,
                                                                  codes_t.mutable_data_ptr<uint8_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
    codes = codes_t.const_data_ptr<uint8_t>();
  } else {
    codes = x.const_data_ptr<uint8_t>();
  }

  const auto sw = weight_scale.contiguous();
  at::Tensor b;
  if (bias.has_value()) {
    b = bias->to(at::kFloat).contiguous();
  }
  const at::Tensor res = residual.has_value() ? *residual : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_float, "q8_conv2d_cuda", [&] {
    Epilogue<scalar_t> epi{};
    if (ca.uint8_output) {
      epi.out_u8 = out.mutable_data_ptr<uint8_t>();
      epi.out_scale = output_scale->const_data_ptr<float>();
      epi.out_zp = output_zero_point->const_data_ptr();
      epi.out_zp_long = output_zero_point->scalar_type() == at::kLong;
    } else {
      epi.out_f = out.mutable_data_ptr<scalar_t>();
    }
    epi.sx = sx.const_data_ptr<float>();
    epi.zx = zx.const_data_ptr<int32_t>();
    epi.st = st;
    epi.sw = sw.const_data_ptr<float>();
    epi.bias = b.defined() ? b.const_data_ptr<float>() : nullptr;
    epi.res_kind = kResNone;
    if (res.defined()) {
      epi.res_kind = residual_kind(res);
      TORCH_CHECK((epi.res_kind == kResUint8) == ca.uint8_residual, "q8.conv2d: residual must be uint8 exactly when "
                  "residual_scale / residual_zero_point are given, got ", res.scalar_type());
      epi.res = res.const_data_ptr();
      epi.rs0 = res.stride(0);
      epi.rs1 = res.stride(1);
      epi.rs2 = res.stride(2);
      epi.rs3 = res.stride(3);
      if (ca.uint8_residual) {
        epi.res_scale = residual_scale->const_data_ptr<float>();
        epi.res_zp = residual_zero_point->const_data_ptr();
        epi.res_zp_long = residual_zero_point->scalar_type() == at::kLong;
      }
    }
    epi.has_lo = clamp_min.has_value();
    epi.has_hi = clamp_max.has_value();
    epi.lo = epi.has_lo ? static_cast<float>(*clamp_min) : 0.f;
    epi.hi = epi.has_hi ? static_cast<float>(*clamp_max) : 0.f;
    epi.oc = ca.oc;
    epi.oh = ca.oh;
    epi.ow = ca.ow;
    run_conv<scalar_t>(g, codes, packed, s, header, epi, opts);
  });
  return out;
}

// ---------------------------------------------------------------------------
// max_pool2d of uint8 codes (the CPU kernel: csrc/ops/cpu/pool.cpp): one thread per
// channels_last output element, the max over the window's taps inside the input (0,
// the code of -inf, where none is).
// ---------------------------------------------------------------------------
struct PoolGeom {
  int64_t n, c, h, w, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw;
};

__global__ void max_pool2d_u8_kernel(const uint8_t* __restrict__ x, PoolGeom g, uint8_t* __restrict__ out) {
  const int64_t total = g.n * g.oh * g.ow * g.c;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = i % g.c;
    int64_t t = i / g.c;
    const int64_t ox = t % g.ow;
    t /= g.ow;
    const int64_t oy = t % g.oh;
    const int64_t n = t / g.oh;
    const uint8_t* xs = x + n * g.h * g.w * g.c + c;
    unsigned m = 0;
    for (int64_t ki = 0; ki < g.kh; ++ki) {
      const int64_t iy = oy * g.sh - g.ph + ki * g.dh;
      if (iy < 0 || iy >= g.h) {
        continue;
      }
      for (int64_t kj = 0; kj < g.kw; ++kj) {
        const int64_t ix = ox * g.sw - g.pw + kj * g.dw;
        if (ix >= 0 && ix < g.w) {
          m = max(m, static_cast<unsigned>(xs[(iy * g.w + ix) * g.c]));
        }
      }
    }
    out[i] = static_cast<uint8_t>(m);
  }
}

at::Tensor max_pool2d_cuda(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  const detail::PoolArgs a =
      detail::check_max_pool2d_args("max_pool2d", input, kernel_size, stride, padding, dilation, ceil_mode);
  check_cuda("max_pool2d", input, "input");
  c10::cuda::CUDAGuard guard(input.device());
  const PoolGeom g{input.size(0), input.size(1), input.size(2),    input.size(3), a.oh.expect_int(),
                   a.ow.expect_int(), a.kh,       a.kw,             a.sh,          a.sw,
                   a.ph,               a.pw,       a.dh,             a.dw};
  at::Tensor out = at::empty({g.n, g.c, g.oh, g.ow}, input.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) {
    return out;
  }
  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
  max_pool2d_u8_kernel<<<blocks_for(out.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      x.const_data_ptr<uint8_t>(), g, out.mutable_data_ptr<uint8_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

} // namespace

TORCH_LIBRARY_IMPL(q8, CUDA, m) {
  m.impl("pack_conv_weight", &pack_conv_weight_cuda);
  m.impl("unpack_conv_weight", &unpack_conv_weight_cuda);
  m.impl("conv2d", &conv2d_cuda);
  m.impl("max_pool2d", &max_pool2d_cuda);
}

} // namespace q8::cuda
