// CPU kernels of the int8 convolution family (schemas in ../conv.cpp; design in
// docs/conv.md): weight packing (conv_packed.h), unpacking, and the fused int8
// conv2d over a uint8 NHWC copy of the input:
//  - GEMM path (any groups, any kernel): implicit GEMM. Each task builds the
//    6-row activation panels of int8_gemm.h for a chunk of output pixels straight
//    from the NHWC input (im2col into the panel layout; padding reads the input
//    zero point), then runs the ISA's int8 tile kernel over every 64-column block
//    of the group's packed weight, reusing the chunk across the blocks. No im2col
//    buffer is ever materialized.
//  - Depthwise path (one input channel per group, out_channels == groups): the
//    depthwise accumulation table (kernels/conv_depthwise.h) per output row.
//  - One scalar epilogue for both (this file is compiled with -ffp-contract=off,
//    so its float operations are the same on every ISA): integers are exact on
//    every path, hence the outputs are bit-identical on every ISA.
#include <algorithm>
#include <cfloat>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include <q8/q8.h>

#include "../checks.h"
#include "../conv_packed.h"
#include "../packed_weight.h"
#include "../qparams_math.h"
#include "isa.h"
#include "kernels/conv_depthwise.h"
#include "kernels/int8_gemm.h"

namespace q8::cpu {
namespace {

namespace gemm = q8::cpu::gemm;
using detail::ConvArgs;
using detail::ConvMode;
using detail::ConvPackedHeader;
using detail::ConvPackKind;

const conv::DepthwiseKernels& depthwise_kernels() {
  switch (active_isa()) {
    case Isa::AVX512_VNNI:
    case Isa::AVX512:
      return conv::depthwise_avx512();
    case Isa::AVX_VNNI:
    case Isa::AVX2:
      return conv::depthwise_avx2();
    case Isa::DEFAULT:
      break;
  }
  return conv::depthwise_default();
}

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// p rounded up to the next multiple of 64 bytes (buffers allocated 63 bytes larger).
template <typename T>
T* align64(T* p) {
  return reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(p) + 63) & ~uintptr_t{63});
}

void check_cpu(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "q8.", op, ": ", name, " must be a CPU tensor for the CPU kernel, got ", t.device());
}

// ---------------------------------------------------------------------------
// Packed layout (conv_packed.h), CPU flavour
// ---------------------------------------------------------------------------
// GemmBlocks: block g is a complete CPU linear packed weight (its own PackedHeader
// and row sums) of [OC / groups, KH * KW * cg4]; block_bytes its size (a multiple
// of 64). Depthwise: int8 [KH * KW][ldw] at 64, int32 sums [ldw] at the absolute
// byte offset wsum_offset (= 64 + KH * KW * ldw, a multiple of 64).
// Checksum: the conv header (checksum field 0) then, GemmBlocks, every block's
// 64-byte linear header (each block's own checksum covers its row sums), or,
// Depthwise, the int32 sums.
int64_t round_up(int64_t a, int64_t b) {
  return ceil_div(a, b) * b;
}

uint64_t conv_checksum(const ConvPackedHeader& header, const uint8_t* base) {
  ConvPackedHeader h = header;
  h.checksum = 0;
  uint64_t acc = 0x3C6EF372FE94F82Bull;
  auto mix = [&acc](uint64_t w) {
    acc ^= w;
    acc *= 0x9E3779B97F4A7C15ull;
    acc ^= acc >> 29;
  };
  auto mix_bytes = [&mix](const uint8_t* p, int64_t bytes) {
    uint64_t w;
    for (int64_t i = 0; i + 8 <= bytes; i += 8) {
      std::memcpy(&w, p + i, 8);
      mix(w);
    }
  };
  mix_bytes(reinterpret_cast<const uint8_t*>(&h), sizeof(h));
  if (h.kind == static_cast<uint32_t>(ConvPackKind::GemmBlocks)) {
    for (int64_t g = 0; g < h.groups; ++g) {
      mix_bytes(base + detail::kConvPackHeaderBytes + g * h.block_bytes, detail::kPackHeaderBytes);
    }
  } else {
    mix_bytes(base + h.wsum_offset, h.block_bytes * 4);
  }
  return acc;
}

bool is_depthwise(int64_t oc, int64_t cg, int64_t groups) {
  return cg == 1 && oc == groups;
}

struct ConvGeometrySizes {
  int64_t k;            // KH * KW * cg4 (GemmBlocks)
  int64_t cg4;
  int64_t block_bytes;  // GemmBlocks: bytes per block; Depthwise: ldw
  int64_t wsum_offset;  // Depthwise
  int64_t total_bytes;
};

ConvGeometrySizes conv_sizes(bool depthwise, int64_t oc, int64_t cg, int64_t kh, int64_t kw, int64_t groups) {
  ConvGeometrySizes s{};
  s.cg4 = round_up(cg, 4);
  s.k = kh * kw * s.cg4;
  if (depthwise) {
    s.block_bytes = round_up(std::max<int64_t>(oc, 1), 64);
    s.wsum_offset = detail::kConvPackHeaderBytes + kh * kw * s.block_bytes;
    s.total_bytes = s.wsum_offset + 4 * s.block_bytes;
  } else {
    s.block_bytes = round_up(detail::cpu_packed_sizes(oc / groups, s.k).total_bytes, 64);
    s.wsum_offset = 0;
    s.total_bytes = detail::kConvPackHeaderBytes + groups * s.block_bytes;
  }
  return s;
}

at::Tensor pack_conv_weight_cpu(const at::Tensor& weight_int8, int64_t groups) {
  const char* op = "pack_conv_weight";
  detail::check_pack_conv_weight_args(op, weight_int8, groups);
  check_cpu(op, weight_int8, "weight_int8");
  const auto w = weight_int8.contiguous();
  const int64_t oc = w.size(0), cg = w.size(1), kh = w.size(2), kw = w.size(3);
  const bool dw = is_depthwise(oc, cg, groups);
  const ConvGeometrySizes s = conv_sizes(dw, oc, cg, kh, kw, groups);
  auto out = at::zeros({s.total_bytes}, w.options().dtype(at::kByte));
  uint8_t* base = out.mutable_data_ptr<uint8_t>();
  ConvPackedHeader h{};
  h.magic = detail::kConvPackMagic;
  h.version = detail::kConvPackVersion;
  h.layout = static_cast<uint32_t>(detail::ConvPackLayout::Cpu);
  h.kind = static_cast<uint32_t>(dw ? ConvPackKind::Depthwise : ConvPackKind::GemmBlocks);
  h.out_channels = static_cast<int32_t>(oc);
  h.in_channels_per_group = static_cast<int32_t>(cg);
  h.kernel_h = static_cast<int32_t>(kh);
  h.kernel_w = static_cast<int32_t>(kw);
  h.groups = static_cast<int32_t>(groups);
  h.block_bytes = s.block_bytes;
  h.wsum_offset = s.wsum_offset;
  const int8_t* wp = w.const_data_ptr<int8_t>();
  if (dw) {
    int8_t* dst = reinterpret_cast<int8_t*>(base + detail::kConvPackHeaderBytes);
    int32_t* sums = reinterpret_cast<int32_t*>(base + s.wsum_offset);
    for (int64_t o = 0; o < oc; ++o) {
      int32_t sum = 0;
      for (int64_t t = 0; t < kh * kw; ++t) {
        const int8_t v = wp[o * kh * kw + t];
        dst[t * s.block_bytes + o] = v;
        sum += v;
      }
      sums[o] = sum;
    }
  } else {
    // [G, OCg, Cg, KH, KW] -> [G, OCg, KH, KW, cg4] (zero channels beyond Cg) -> [G, OCg, K]
    const int64_t ocg = oc / groups;
    auto wt = at::zeros({groups, ocg, kh, kw, s.cg4}, w.options());
    wt.narrow(4, 0, cg).copy_(w.view({groups, ocg, cg, kh, kw}).permute({0, 1, 3, 4, 2}));
    wt = wt.view({groups, ocg, s.k});
    for (int64_t g = 0; g < groups; ++g) {
      const auto block = q8::pack_weight(wt[g]);
      TORCH_INTERNAL_ASSERT(block.numel() <= s.block_bytes);
      std::memcpy(base + detail::kConvPackHeaderBytes + g * s.block_bytes, block.const_data_ptr<uint8_t>(),
                  block.numel());
    }
  }
  h.checksum = conv_checksum(h, base);
  std::memcpy(base, &h, sizeof(h));
  return out;
}

// A validated view of a CPU conv packed weight.
struct ConvPackedView {
  ConvPackedHeader h;
  bool depthwise;
  ConvGeometrySizes s;
  const uint8_t* base;
  std::vector<detail::PackedView> blocks;  // GemmBlocks
  const int8_t* dw_weights;                // Depthwise [KH * KW][ldw]
  const int32_t* dw_sums;                  // Depthwise [ldw]
};

// Checks the container, header, sizes and checksum against the expected geometry
// (O(OC)); `what` names where the expected sizes come from.
ConvPackedView conv_packed_for(const char* op, const at::Tensor& packed, int64_t oc, int64_t cg, int64_t kh,
                               int64_t kw, int64_t groups, const char* what) {
  detail::check_packed_container(op, packed);
  check_cpu(op, packed, "packed_weight");
  TORCH_CHECK(packed.is_contiguous(), "q8.", op, ": packed_weight must be contiguous");
  const int64_t numel = packed.numel();
  TORCH_CHECK(numel >= detail::kConvPackHeaderBytes, "q8.", op, ": packed_weight has ", numel,
              " bytes, fewer than its 64-byte header: not a q8 packed conv weight (or truncated)");
  const auto* base = packed.const_data_ptr<uint8_t>();
  TORCH_CHECK(reinterpret_cast<uintptr_t>(base) % 4 == 0, "q8.", op,
              ": packed_weight must start 4-byte aligned (use the tensor q8.pack_conv_weight returned)");
  ConvPackedView v{};
  std::memcpy(&v.h, base, sizeof(ConvPackedHeader));
  const ConvPackedHeader& h = v.h;
  TORCH_CHECK(h.magic == detail::kConvPackMagic, "q8.", op,
              ": packed_weight does not start with the q8 packed-conv-weight magic: make it with q8.pack_conv_weight",
              " (a linear weight from q8.pack_weight is not a conv weight)");
  TORCH_CHECK(h.version == detail::kConvPackVersion, "q8.", op, ": packed_weight has format version ", h.version,
              ", this q8 reads version ", detail::kConvPackVersion, ": repack with q8.pack_conv_weight");
  TORCH_CHECK(h.layout == static_cast<uint32_t>(detail::ConvPackLayout::Cpu), "q8.", op,
              ": packed_weight was packed for another device's layout (", h.layout,
              "), this is the CPU kernel: repack the canonical weight on the CPU with q8.pack_conv_weight");
  TORCH_CHECK(h.kind == static_cast<uint32_t>(ConvPackKind::GemmBlocks) ||
                  h.kind == static_cast<uint32_t>(ConvPackKind::Depthwise),
              "q8.", op, ": packed_weight header is corrupt (unknown kind ", h.kind, ")");
  TORCH_CHECK(h.out_channels == oc && h.in_channels_per_group == cg && h.kernel_h == kh && h.kernel_w == kw &&
                  h.groups == groups,
              "q8.", op, ": packed_weight holds a [", h.out_channels, ", ", h.in_channels_per_group, ", ",
              h.kernel_h, ", ", h.kernel_w, "] weight with groups=", h.groups, ", but ", what, " give [", oc, ", ",
              cg, ", ", kh, ", ", kw, "] with groups=", groups);
  v.depthwise = is_depthwise(oc, cg, groups);
  TORCH_CHECK(h.kind == static_cast<uint32_t>(v.depthwise ? ConvPackKind::Depthwise : ConvPackKind::GemmBlocks),
              "q8.", op, ": packed_weight header is corrupt (kind ", h.kind, " does not fit its geometry)");
  v.s = conv_sizes(v.depthwise, oc, cg, kh, kw, groups);
  TORCH_CHECK(h.block_bytes == v.s.block_bytes && h.wsum_offset == v.s.wsum_offset, "q8.", op,
              ": packed_weight header is corrupt (offsets do not match its geometry)");
  TORCH_CHECK(numel == v.s.total_bytes, "q8.", op, ": packed_weight has ", numel, " bytes but its header needs ",
              v.s.total_bytes, ": truncated or extended");
  TORCH_CHECK(conv_checksum(h, base) == h.checksum, "q8.", op,
              ": packed_weight checksum mismatch (the header or weight sums were modified): repack with "
              "q8.pack_conv_weight");
  v.base = base;
  if (v.depthwise) {
    v.dw_weights = reinterpret_cast<const int8_t*>(base + detail::kConvPackHeaderBytes);
    v.dw_sums = reinterpret_cast<const int32_t*>(base + v.s.wsum_offset);
  } else {
    const int64_t lin_bytes = detail::cpu_packed_sizes(oc / groups, v.s.k).total_bytes;
    v.blocks.reserve(groups);
    for (int64_t g = 0; g < groups; ++g) {
      v.blocks.push_back(detail::check_packed_bytes(op, base + detail::kConvPackHeaderBytes + g * h.block_bytes,
                                                    lin_bytes, packed.device(), detail::PackLayout::CpuPanel16x4));
      TORCH_CHECK(v.blocks.back().header.n == oc / groups && v.blocks.back().header.k == v.s.k, "q8.", op,
                  ": packed_weight is corrupt (block ", g, " has the wrong size)");
    }
  }
  return v;
}

at::Tensor unpack_conv_weight_cpu(const at::Tensor& packed, c10::SymInt out_channels, c10::SymInt in_channels_per_group,
                                  at::IntArrayRef kernel_size, int64_t groups) {
  const char* op = "unpack_conv_weight";
  detail::check_unpack_conv_weight_args(op, packed, out_channels, in_channels_per_group, kernel_size, groups);
  const int64_t oc = out_channels.expect_int(), cg = in_channels_per_group.expect_int();
  const int64_t kh = kernel_size[0], kw = kernel_size[1];
  const ConvPackedView v = conv_packed_for(op, packed, oc, cg, kh, kw, groups, "the arguments");
  auto out = at::empty({oc, cg, kh, kw}, packed.options().dtype(at::kChar));
  int8_t* op_ = out.mutable_data_ptr<int8_t>();
  if (v.depthwise) {
    const int64_t ldw = v.s.block_bytes;
    for (int64_t o = 0; o < ldw; ++o) {
      int32_t sum = 0;
      for (int64_t t = 0; t < kh * kw; ++t) {
        const int8_t val = v.dw_weights[t * ldw + o];
        sum += val;
        if (o < oc) {
          op_[o * kh * kw + t] = val;
        }
      }
      TORCH_CHECK(o < oc ? sum == v.dw_sums[o] : (sum == 0 && v.dw_sums[o] == 0), "q8.", op,
                  ": packed_weight is corrupt: the weights of output channel ", o,
                  " do not match their sum or padding (the tensor was modified after q8.pack_conv_weight)");
      if (o >= oc) {
        for (int64_t t = 0; t < kh * kw; ++t) {
          TORCH_CHECK(v.dw_weights[t * ldw + o] == 0, "q8.", op,
                      ": packed_weight is corrupt: non-zero padding (modified after q8.pack_conv_weight)");
        }
      }
    }
    return out;
  }
  const int64_t ocg = oc / groups;
  const int64_t lin_bytes = detail::cpu_packed_sizes(ocg, v.s.k).total_bytes;
  for (int64_t g = 0; g < groups; ++g) {
    // unpack_weight verifies every byte of the block (weights vs row sums, padding).
    const int64_t off = detail::kConvPackHeaderBytes + g * v.h.block_bytes;
    const auto m = q8::unpack_weight(packed.narrow(0, off, lin_bytes), ocg, v.s.k).view({ocg, kh, kw, v.s.cg4});
    TORCH_CHECK(v.s.cg4 == cg || m.narrow(3, cg, v.s.cg4 - cg).eq(0).all().item<bool>(), "q8.", op,
                ": packed_weight is corrupt: non-zero channel padding in group ", g,
                " (modified after q8.pack_conv_weight)");
    out.narrow(0, g * ocg, ocg).copy_(m.narrow(3, 0, cg).permute({0, 3, 1, 2}));
    // The bytes between the linear block and the next one are zero.
    const uint8_t* tail = v.base + off + lin_bytes;
    for (int64_t i = 0; i < v.h.block_bytes - lin_bytes; ++i) {
      TORCH_CHECK(tail[i] == 0, "q8.", op, ": packed_weight is corrupt: non-zero block padding in group ", g);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// conv2d
// ---------------------------------------------------------------------------
// Rounding to uint8 codes without libm's nearbyint (a call that saves and restores
// the floating-point environment, ~10 ns per value on x86-64 without SSE4.1):
//   clamp(nearbyint(v) + z, 0, 255) == clamp(round_small(clamp_pm512(v)) + z, 0, 255)
// for z in [0, 255]: clamping v to [-512, 512] first changes no result, and
// (v + 1.5 * 2^23) - 1.5 * 2^23 rounds |v| < 2^22 half to even (the default rounding
// mode, as nearbyint) exactly in IEEE float32 (this file is built without
// -ffast-math). NaN stays NaN through both.
inline float clamp_pm512(float v) {
  return v < -512.f ? -512.f : (v > 512.f ? 512.f : v);
}

inline float round_small(float v) {
  constexpr float kMagic = 12582912.f;  // 1.5 * 2^23
  return (v + kMagic) - kMagic;
}

// [0, 255]; NaN -> 0.
inline float clamp_0_255(float q) {
  q = q > 0.f ? q : 0.f;
  return q < 255.f ? q : 255.f;
}

// The uint8 code of x: clamp(nearbyint(x * inv) + z, 0, 255); nf gets 1 for NaN / +-Inf.
inline uint8_t quantize_code(float x, float inv, float z, uint32_t& nf) {
  nf |= static_cast<uint32_t>(!(std::fabs(x) <= FLT_MAX));
  return static_cast<uint8_t>(static_cast<int32_t>(clamp_0_255(round_small(clamp_pm512(x * inv)) + z)));
}

// quantize_code over x[0, n) into q; returns non-zero when x holds NaN / +-Inf. The
// SSE2 body (every x86-64 CPU) does the same IEEE operations: maxps(a, b) is
// a > b ? a : b and minps(a, b) is a < b ? a : b, exactly the scalar selects above
// (NaN included), and the truncating conversion of a value in [0, 255].
#if defined(__x86_64__) && defined(__GNUC__)
// (GCC 12 warns of an uninitialized operand inside its own masked intrinsics.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
// The 16-wide body of quantize_span on AVX-512 (the same operations, operand order
// included, as the SSE2 body); returns the NaN / Inf flag and advances *i.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"), noinline)) uint32_t quantize_span_avx512(
    const float* x, uint8_t* q, int64_t n, float inv, float z, int64_t* i_io) {
  const __m512 vinv = _mm512_set1_ps(inv), vz = _mm512_set1_ps(z), lo512 = _mm512_set1_ps(-512.f);
  const __m512 hi512 = _mm512_set1_ps(512.f), magic = _mm512_set1_ps(12582912.f), zero = _mm512_setzero_ps();
  const __m512 v255 = _mm512_set1_ps(255.f);
  const __m512i expmask = _mm512_set1_epi32(0x7f800000);
  __mmask16 bad = 0;
  int64_t i = *i_io;
  for (; i + 16 <= n; i += 16) {
    const __m512 xv = _mm512_loadu_ps(x + i);
    bad |= _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_castps_si512(xv), expmask), expmask);
    __m512 v = _mm512_mul_ps(xv, vinv);
    v = _mm512_max_ps(lo512, v);
    v = _mm512_min_ps(hi512, v);
    v = _mm512_sub_ps(_mm512_add_ps(v, magic), magic);
    v = _mm512_add_ps(v, vz);
    v = _mm512_max_ps(v, zero);
    v = _mm512_min_ps(v, v255);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(v)));
  }
  *i_io = i;
  return bad != 0 ? 1u : 0u;
}
#pragma GCC diagnostic pop
#endif

uint32_t quantize_span(const float* x, uint8_t* q, int64_t n, float inv, float z) {
  uint32_t nf = 0;
  int64_t i = 0;
#if defined(__x86_64__) && defined(__GNUC__)
  // (the active ISA family, so that a forced AVX2 / default run tests the SSE2 body)
  const Isa isa = active_isa();
  if ((isa == Isa::AVX512_VNNI || isa == Isa::AVX512) && n >= 16) {
    nf |= quantize_span_avx512(x, q, n, inv, z, &i);
  }
#endif
#if defined(__SSE2__)
  const __m128 vinv = _mm_set1_ps(inv), vz = _mm_set1_ps(z), lo512 = _mm_set1_ps(-512.f), hi512 = _mm_set1_ps(512.f);
  const __m128 magic = _mm_set1_ps(12582912.f), zero = _mm_setzero_ps(), v255 = _mm_set1_ps(255.f);
  const __m128i expmask = _mm_set1_epi32(0x7f800000);
  __m128i bad = _mm_setzero_si128();
  auto code4 = [&](const float* p) {
    const __m128 xv = _mm_loadu_ps(p);
    const __m128i bits = _mm_and_si128(_mm_castps_si128(xv), expmask);
    bad = _mm_or_si128(bad, _mm_cmpeq_epi32(bits, expmask));
    __m128 v = _mm_mul_ps(xv, vinv);
    v = _mm_max_ps(lo512, v);
    v = _mm_min_ps(hi512, v);
    v = _mm_sub_ps(_mm_add_ps(v, magic), magic);
    v = _mm_add_ps(v, vz);
    v = _mm_max_ps(v, zero);
    v = _mm_min_ps(v, v255);
    return _mm_cvttps_epi32(v);
  };
  for (; i + 16 <= n; i += 16) {
    const __m128i a = _mm_packs_epi32(code4(x + i), code4(x + i + 4));
    const __m128i b = _mm_packs_epi32(code4(x + i + 8), code4(x + i + 12));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm_packus_epi16(a, b));
  }
  nf |= static_cast<uint32_t>(_mm_movemask_epi8(bad));
#endif
  for (; i < n; ++i) {
    q[i] = quantize_code(x[i], inv, z, nf);
  }
  return nf;
}

// Everything the epilogue needs; pixel p of sample n is output row n * OH * OW + p
// of the channels_last output [N][OH][OW][OC].
struct Epilogue {
  int64_t oc;
  int64_t pixels;         // OH * OW
  const float* sw;        // [OC]
  const float* bias;      // [OC] or null
  const float* res_f;     // float residual, channels_last [N][OH][OW][OC], or null
  const uint8_t* res_u8;  // uint8 residual or null
  float res_scale;
  int32_t res_zp;
  bool has_lo, has_hi;
  float lo, hi;
  float* out_f;           // float output or null
  uint8_t* out_u8;        // uint8 output or null
  float out_inv;          // 1 / output_scale
  int32_t out_zp;
  // uint8 output whose y is NaN at most from a float residual (finite bias and sx *
  // sw): the clamps and the requantization in one, q = round(clamp(y * inv, q_lo,
  // q_hi)) + zp, and q = zp where y is NaN (see avx512_epi_vec; set_fast_requant).
  bool fast_requant = false;
  float q_lo = 0.f, q_hi = 0.f;
  const float* sx;        // [N]
  const int32_t* zx;      // [N]
  const uint8_t* bad;     // [N]

  // Columns [o0, o0 + cnt) of output pixel p of sample n; acc[j] = sum xq * w
  // (padding included, as zp), wsum[j] the weight sums of those columns. Written
  // as simple loops over at most 64 columns that the compiler vectorizes (this file
  // is built with -fno-trapping-math so that the selects become vector blends; the
  // values are those of the scalar IEEE operations either way).
  //
  // run() calls one copy of this body compiled for the active ISA family (GCC
  // target attributes below): the vectorizer then uses 256/512-bit registers and
  // the native float -> uint8 narrowing instead of SSE2's shuffles. Every copy
  // does the same IEEE float32 operations per element (no FMA: -ffp-contract=off),
  // so the results are bit-identical on every ISA.
  int level = 0;  // 2: AVX-512 (F, BW, VL, DQ), 1: AVX2, 0: the baseline build

  template <typename Acc>
  void run(int64_t n, int64_t p, int64_t o0, int cnt, const Acc* acc, const int32_t* wsum) const;
  // run() over rows r < mr of an int32 tile: pixel p + r, acc + r * ldacc.
  void run_tile(int64_t n, int64_t p, int mr, int64_t o0, int cnt, const int32_t* acc, int64_t ldacc,
                const int32_t* wsum) const;

  template <typename Acc>
  __attribute__((always_inline)) inline void run_body(int64_t n, int64_t p, int64_t o0, int cnt, const Acc* acc,
                                                      const int32_t* wsum) const {
    const int64_t row = (n * pixels + p) * oc + o0;
    if (bad[n]) {
      for (int j = 0; j < cnt; ++j) {
        if (out_f != nullptr) {
          out_f[row + j] = std::numeric_limits<float>::quiet_NaN();
        } else {
          out_u8[row + j] = static_cast<uint8_t>(out_zp);
        }
      }
      return;
    }
    const float s_x = sx[n];
    const int32_t z = zx[n];
    alignas(64) float y[64];
    for (int j0 = 0; j0 < cnt; j0 += 64) {
      const int m = std::min(64, cnt - j0);
      const int64_t r0 = row + j0;
      const float* swj = sw + o0 + j0;
      if constexpr (std::is_same_v<Acc, int32_t>) {
        // acc - z * wsum in wrapping 32-bit arithmetic: exact, since the true
        // value sum (xq - z) * w fits in int32 (|.| <= 255 * 128 * 65536 < 2^31).
        const uint32_t uz = static_cast<uint32_t>(z);
        for (int j = 0; j < m; ++j) {
          const uint32_t d = static_cast<uint32_t>(acc[j0 + j]) - uz * static_cast<uint32_t>(wsum[j0 + j]);
          y[j] = static_cast<float>(static_cast<int32_t>(d)) * (s_x * swj[j]);
        }
      } else {
        for (int j = 0; j < m; ++j) {
          const int64_t d = static_cast<int64_t>(acc[j0 + j]) - int64_t{z} * wsum[j0 + j];
          y[j] = static_cast<float>(d) * (s_x * swj[j]);
        }
      }
      if (bias != nullptr) {
        const float* b = bias + o0 + j0;
        for (int j = 0; j < m; ++j) {
          y[j] = y[j] + b[j];
        }
      }
      if (res_f != nullptr) {
        const float* r = res_f + r0;
        for (int j = 0; j < m; ++j) {
          y[j] = y[j] + r[j];
        }
      } else if (res_u8 != nullptr) {
        const uint8_t* r = res_u8 + r0;
        for (int j = 0; j < m; ++j) {
          y[j] = y[j] + static_cast<float>(int32_t{r[j]} - res_zp) * res_scale;
        }
      }
      if (has_lo) {
        for (int j = 0; j < m; ++j) {
          y[j] = y[j] < lo ? lo : y[j];
        }
      }
      if (has_hi) {
        for (int j = 0; j < m; ++j) {
          y[j] = y[j] > hi ? hi : y[j];
        }
      }
      if (out_f != nullptr) {
        // (Not memcpy: GCC inlines a variable-size memcpy as `rep movsq`, whose
        // start-up cost dominated 1x1 layers.)
        float* o = out_f + r0;
        int j = 0;
#if defined(__SSE2__)
        for (; j + 4 <= m; j += 4) {
          _mm_storeu_ps(o + j, _mm_load_ps(y + j));
        }
#endif
        for (; j < m; ++j) {
          o[j] = y[j];
        }
      } else {
        const float ozf = static_cast<float>(out_zp);
        uint8_t* o = out_u8 + r0;
        for (int j = 0; j < m; ++j) {
          float q = round_small(clamp_pm512(y[j] * out_inv)) + ozf;
          q = q == q ? clamp_0_255(q) : ozf;
          o[j] = static_cast<uint8_t>(static_cast<int32_t>(q));
        }
      }
    }
  }
};

#if defined(__x86_64__) && defined(__GNUC__)
#define Q8_EPI_MULTIVERSION 1
template <typename Acc>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2"), noinline)) void epilogue_avx512(
    const Epilogue& e, int64_t n, int64_t p, int64_t o0, int cnt, const Acc* acc, const int32_t* wsum) {
  e.run_body(n, p, o0, cnt, acc, wsum);
}

// (GCC 12 warns of an uninitialized operand inside its own masked intrinsics.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#define Q8_AVX512_TARGET "avx512f,avx512bw,avx512vl,avx512dq,avx2"
// The per-call constants of the AVX-512 epilogue for sample n (not a bad one).
struct Avx512Epi {
  const Epilogue* e;
  __m512 sxv, lo, hi, rsc, inv, m512, p512, qlo, qhi;
  __m512i zv, rzp, ozp, izero;
  bool has_bias, res_f, res_u8, u8_out;
};

__attribute__((target(Q8_AVX512_TARGET), always_inline)) inline Avx512Epi make_avx512_epi(const Epilogue& e,
                                                                                           int64_t n) {
  Avx512Epi c;
  c.e = &e;
  c.sxv = _mm512_set1_ps(e.sx[n]);
  c.zv = _mm512_set1_epi32(e.zx[n]);
  c.lo = _mm512_set1_ps(e.lo);
  c.hi = _mm512_set1_ps(e.hi);
  c.rzp = _mm512_set1_epi32(e.res_zp);
  c.rsc = _mm512_set1_ps(e.res_scale);
  c.inv = _mm512_set1_ps(e.out_inv);
  c.ozp = _mm512_set1_epi32(e.out_zp);
  c.m512 = _mm512_set1_ps(-512.f);
  c.p512 = _mm512_set1_ps(512.f);
  c.qlo = _mm512_set1_ps(e.q_lo);
  c.qhi = _mm512_set1_ps(e.q_hi);
  c.izero = _mm512_setzero_si512();
  c.has_bias = e.bias != nullptr;
  c.res_f = e.res_f != nullptr;
  c.res_u8 = e.res_u8 != nullptr;
  c.u8_out = e.out_f == nullptr;
  return c;
}

// y of one vector, before the clamps: (float(d) * s + bv) + the residual.
__attribute__((target(Q8_AVX512_TARGET), always_inline)) inline __m512 avx512_epi_y(const Avx512Epi& c, __m512i d,
                                                                                  __m512 s, __m512 bv, int64_t at,
                                                                                  __mmask16 k) {
  const Epilogue& e = *c.e;
  __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(d), s);
  if (c.has_bias) {
    y = _mm512_add_ps(y, bv);
  }
  if (c.res_f) {
    y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(k, e.res_f + at));
  } else if (c.res_u8) {
    const __m512i rv = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(k, e.res_u8 + at));
    y = _mm512_add_ps(y, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(rv, c.rzp)), c.rsc));
  }
  return y;
}

// fast_requant's code less the zero point: round(clamp(y * inv, q_lo, q_hi)); the
// lower clamp only where lo (without it, the packed narrowing's saturation does it:
// packed_mode). With nan (a float residual), 0 where y is NaN (maxps / minps pass
// the NaN v on, and vcvtps2dq makes it INT32_MIN).
__attribute__((target(Q8_AVX512_TARGET), always_inline)) inline __m512i avx512_fast_code(const Avx512Epi& c,
                                                                                        __m512 y, bool lo,
                                                                                        bool nan = false) {
  __m512 v = _mm512_mul_ps(y, c.inv);
  if (lo) {
    v = _mm512_max_ps(c.qlo, v);
  }
  const __m512i q = _mm512_cvtps_epi32(_mm512_min_ps(c.qhi, v));
  return nan ? _mm512_maskz_mov_epi32(_mm512_cmp_ps_mask(y, y, _CMP_ORD_Q), q) : q;
}

// The variant of the packed uint8 narrowing (fast_requant; conv_tile_fused_avx512,
// epilogue_rows_packed_avx512, the fused depthwise kernel): kFusedLo where the lower
// clamp q_lo is not exactly the saturation at 0 (q_lo != -zp), kFusedRes with a
// uint8 residual, kFusedResF with a float one (the two residuals exclude each other:
// packed_mode is below kPackedModes). The templates take it as MODE = packed_mode(e)
// + 1 (0: the general epilogue).
constexpr int kFusedLo = 1, kFusedRes = 2, kFusedResF = 4, kPackedModes = 6;
inline int packed_mode(const Epilogue& e) {
  return (e.q_lo != -static_cast<float>(e.out_zp) ? kFusedLo : 0) | (e.res_u8 != nullptr ? kFusedRes : 0) |
         (e.res_f != nullptr ? kFusedResF : 0);
}
// The residual kind of a packed MODE: 0 none, 1 uint8, 2 float.
constexpr int packed_res(int mode) {
  return mode > 0 && ((mode - 1) & kFusedRes) != 0 ? 1 : mode > 0 && ((mode - 1) & kFusedResF) != 0 ? 2 : 0;
}

// y of one vector on the packed path: (float(d) * s + bv) (the bias always added, 0
// without one: y + 0 differs from y only for y = -0, whose code is the same), + the
// residual's 16 values at output index at: RES 1 uint8, 2 float (packed_res).
template <int RES>
__attribute__((target(Q8_AVX512_TARGET), always_inline)) inline __m512 avx512_packed_y(const Avx512Epi& c, __m512i d,
                                                                                       __m512 s, __m512 bv,
                                                                                       int64_t at) {
  __m512 y = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(d), s), bv);
  if constexpr (RES == 2) {
    y = _mm512_add_ps(y, _mm512_loadu_ps(c.e->res_f + at));
  } else if constexpr (RES == 1) {
    const uint8_t* res = c.e->res_u8 + at;
    const __m512i rv = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(res)));
    y = _mm512_add_ps(y, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(rv, c.rzp)), c.rsc));
  }
  return y;
}

// One 16-column vector of one output row: d = acc - z * wsum (int32, wrapping), s =
// sx * sw and bv = bias of the columns (k: the columns present), at: the output index.
// Per element the IEEE operations of run_body in its order, written with min / max
// where those are the same selects: maxps(a, b) is a > b ? a : b, so
//   y < lo ? lo : y  ==  maxps(lo, y)  and  y > hi ? hi : y  ==  minps(hi, y)
// (NaN and signed zeros included), clamp_pm512(v) == maxps(-512, minps(512, v)), and
// for |v| <= 512 round_small(v) is vcvtps2dq's round-to-nearest-even (the default
// MXCSR mode, which round_small also assumes) of v; + zero point and the clamp to
// [0, 255] are then exact in int32 (vpmaxsd 0, then vpmovusdb saturates at 255), and
// NaN (vcvtps2dq's 0x80000000) becomes the zero point, as in run_body. With
// fast_requant (set_fast_requant), the clamps and the requantization are one clamp
// of y * inv to [q_lo, q_hi].
__attribute__((target(Q8_AVX512_TARGET), always_inline)) inline void avx512_epi_vec(const Avx512Epi& c, __m512i d,
                                                                                   __m512 s, __m512 bv, int64_t at,
                                                                                   __mmask16 k) {
  const Epilogue& e = *c.e;
  __m512 y = avx512_epi_y(c, d, s, bv, at, k);
  __m128i b;
  if (e.fast_requant) {  // (uint8 output; a NaN y's code INT32_MIN + zp truncates to zp)
    b = _mm512_cvtepi32_epi8(_mm512_add_epi32(avx512_fast_code(c, y, true), c.ozp));
  } else {
    if (e.has_lo) {
      y = _mm512_max_ps(c.lo, y);
    }
    if (e.has_hi) {
      y = _mm512_min_ps(c.hi, y);
    }
    if (!c.u8_out) {
      _mm512_mask_storeu_ps(e.out_f + at, k, y);
      return;
    }
    const __m512 v = _mm512_max_ps(c.m512, _mm512_min_ps(c.p512, _mm512_mul_ps(y, c.inv)));
    __m512i q = _mm512_cvtps_epi32(v);
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    q = _mm512_mask_mov_epi32(_mm512_add_epi32(q, c.ozp), nan, c.ozp);
    b = _mm512_cvtusepi32_epi8(_mm512_max_epi32(q, c.izero));
  }
  // (vpmov* to a register, then a plain store: the masked vpmov* store is slow on some CPUs)
  if (k == 0xFFFF) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(e.out_u8 + at), b);
  } else {
    _mm_mask_storeu_epi8(e.out_u8 + at, k, b);
  }
}

__attribute__((target(Q8_AVX512_TARGET), always_inline)) inline __mmask16 tail_mask(int left) {
  return left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
}

// The packed narrowing of 4 vectors of codes less zp (one row's 64 columns): + zp
// with vpaddsw after vpackssdw, vpackuswb, and vpermd back from the packs' 128-bit
// lane interleave (exact; see conv_tile_fused_avx512).
__attribute__((target(Q8_AVX512_TARGET), always_inline)) inline __m512i avx512_pack64(__m512i c0, __m512i c1,
                                                                                     __m512i c2, __m512i c3,
                                                                                     __m512i zp16) {
  const __m512i unlane = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const __m512i w01 = _mm512_adds_epi16(_mm512_packs_epi32(c0, c1), zp16);
  const __m512i w23 = _mm512_adds_epi16(_mm512_packs_epi32(c2, c3), zp16);
  return _mm512_permutexvar_epi32(unlane, _mm512_packus_epi16(w01, w23));
}

// fast_requant rows of an int32 tile, 64 columns at a time (cnt64, a multiple of 64):
// per 64 columns the column terms in registers, then each row's 4 vectors narrowed
// together (avx512_pack64). MODE as conv_tile_fused_avx512's (lower clamp, uint8
// residual); the bias is always added (0 without one).
template <int MODE>
__attribute__((target(Q8_AVX512_TARGET), noinline)) void epilogue_rows_packed_avx512(
    const Avx512Epi& c, int64_t row0, int mr, int cnt64, const int32_t* acc, int64_t ldacc, const int32_t* wsum,
    int64_t o0) {
  constexpr bool kLo = ((MODE - 1) & kFusedLo) != 0;
  constexpr int kRes = packed_res(MODE);
  const Epilogue& e = *c.e;
  const __m512i zp16 = _mm512_set1_epi16(static_cast<int16_t>(e.out_zp));
  for (int j = 0; j < cnt64; j += 64) {
    __m512i zws[4];
    __m512 sv[4], bv[4];
    for (int q = 0; q < 4; ++q) {
      zws[q] = _mm512_mullo_epi32(c.zv, _mm512_loadu_si512(wsum + j + 16 * q));
      sv[q] = _mm512_mul_ps(c.sxv, _mm512_loadu_ps(e.sw + o0 + j + 16 * q));
      bv[q] = c.has_bias ? _mm512_loadu_ps(e.bias + o0 + j + 16 * q) : _mm512_setzero_ps();
    }
    for (int r = 0; r < mr; ++r) {
      const int64_t at = row0 + r * e.oc + j;
      __m512i code[4];
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) {
        const __m512i d = _mm512_sub_epi32(_mm512_loadu_si512(acc + r * ldacc + j + 16 * q), zws[q]);
        code[q] = avx512_fast_code(c, avx512_packed_y<kRes>(c, d, sv[q], bv[q], at + 16 * q), kLo, kRes == 2);
      }
      _mm512_storeu_si512(e.out_u8 + at, avx512_pack64(code[0], code[1], code[2], code[3], zp16));
    }
  }
}

// Rows r < mr of an int32 tile (row r: pixel p + r, acc + r * ldacc), in one call:
// per 16 columns, the column terms (z * wsum, sx * sw, bias) once, then each row.
// With fast_requant, whole groups of 64 columns take epilogue_rows_packed_avx512.
__attribute__((target(Q8_AVX512_TARGET), noinline)) void epilogue_tile_avx512(const Epilogue& e, int64_t n, int64_t p,
                                                                            int mr, int64_t o0, int cnt,
                                                                            const int32_t* acc, int64_t ldacc,
                                                                            const int32_t* wsum) {
  if (e.bad[n]) {
    for (int r = 0; r < mr; ++r) {
      e.run_body(n, p + r, o0, cnt, acc + r * ldacc, wsum);
    }
    return;
  }
  const Avx512Epi c = make_avx512_epi(e, n);
  const int64_t row0 = (n * e.pixels + p) * e.oc + o0;
  int j0 = 0;
  if (e.fast_requant && cnt >= 64) {
    using RowsFn = void (*)(const Avx512Epi&, int64_t, int, int, const int32_t*, int64_t, const int32_t*, int64_t);
    static const RowsFn kRows[kPackedModes] = {&epilogue_rows_packed_avx512<1>, &epilogue_rows_packed_avx512<2>,
                                               &epilogue_rows_packed_avx512<3>, &epilogue_rows_packed_avx512<4>,
                                               &epilogue_rows_packed_avx512<5>, &epilogue_rows_packed_avx512<6>};
    j0 = cnt / 64 * 64;
    kRows[packed_mode(e)](c, row0, mr, j0, acc, ldacc, wsum, o0);
  }
  for (int j = j0; j < cnt; j += 16) {
    const __mmask16 k = tail_mask(cnt - j);
    const __m512i zws = _mm512_mullo_epi32(c.zv, _mm512_maskz_loadu_epi32(k, wsum + j));
    const __m512 s = _mm512_mul_ps(c.sxv, _mm512_maskz_loadu_ps(k, e.sw + o0 + j));
    const __m512 bv = c.has_bias ? _mm512_maskz_loadu_ps(k, e.bias + o0 + j) : _mm512_setzero_ps();
    for (int r = 0; r < mr; ++r) {
      const __m512i d = _mm512_sub_epi32(_mm512_maskz_loadu_epi32(k, acc + r * ldacc + j), zws);  // wrapping
      avx512_epi_vec(c, d, s, bv, row0 + r * e.oc + j, k);
    }
  }
}

// What one call of conv_tile_fused_avx512 runs: count 6-row tiles, each with the
// same taps and accumulator start, their row pointers and output rows.
// A tile's rows come from one of two forms of its pointer table (at rows + i *
// rows_stride): the full table, [ntaps][kRows] pointers (row r's bytes of the tt-th
// tap run), or, where tap_off is set and the tile is "based" (based null, or
// based[i] != 0), kRows row bases: row r of the tt-th tap run at base[r] +
// tap_off[tt]. The bases cost 6 stores a tile to build, the table 6 per tap.
struct FusedTile {
  const uint8_t* const* rows;  // tile 0's table or bases
  int64_t rows_stride;         // pointers from one tile's table to the next one's
  int64_t ntaps;
  const int32_t* taps;         // the weight taps run, or null: taps 0 .. ntaps - 1
  const int64_t* tap_off;      // byte offsets of the taps run from the bases, or null: no tile based
  const uint8_t* based;        // per tile, whether it is based (tap_off set), or null: all are
  const int32_t* init;         // per column of the block, the accumulators' start, or null: -z * wsum
  const int64_t* orow;         // 6 output rows (of sample n) per tile, tile i's at orow + 6 i,
                               // or null: tile i writes rows p + 6 i .. p + 6 i + 5
  int64_t p;
  int64_t count;               // tiles
};

// The taps of one 6-row tile into acc (NP panels): tap t's rows from rows_of(t, s),
// its weights at b + taps[t] (or t) * tap_bytes. int8_conv_tile_vnni's loop
// (kernels/int8_gemm_avx512_vnni.cpp).
template <int NP, class RowsOf>
__attribute__((target(Q8_AVX512_TARGET ",avx512vnni"), always_inline)) inline void fused_taps(
    __m512i (&acc)[gemm::kRows][NP], int64_t ntaps, const int32_t* taps, const int8_t* b, int64_t tap_bytes,
    int64_t cgroups, int64_t panel_stride, const RowsOf& rows_of) {
  constexpr int MR = gemm::kRows;
  for (int64_t t = 0; t < ntaps; ++t) {
    const uint8_t* s[MR];
    rows_of(t, s);
    const int8_t* bg = b + (taps != nullptr ? taps[t] : t) * tap_bytes;
    for (int64_t g = 0; g < cgroups; ++g, bg += gemm::kGroupBytes) {
      __m512i w[NP];
      for (int q = 0; q < NP; ++q) {
        w[q] = _mm512_loadu_si512(bg + q * panel_stride);
      }
      for (int r = 0; r < MR; ++r) {
        int32_t a32;
        std::memcpy(&a32, s[r] + 4 * g, 4);
        const __m512i av = _mm512_set1_epi32(a32);
        for (int q = 0; q < NP; ++q) {
          asm("vpdpbusd %2, %1, %0" : "+v"(acc[r][q]) : "v"(av), "v"(w[q]));
        }
      }
    }
  }
}

// The in-place tile of whole 6-row panels on AVX-512 VNNI with the epilogue fused:
// the accumulators start at -z * wsum (so they end at acc - z * wsum, the same
// wrapping int32 value as the separate epilogue's) and go to avx512_epi_vec from
// the registers (the loops over rows and panels are unrolled so that the
// accumulators stay in registers). The loop is int8_conv_tile_vnni's
// (kernels/int8_gemm_avx512_vnni.cpp). A tile of the tap-skipping path
// (conv_gemm_classed) runs only the taps inside the image, from init = -z * (sum of
// those taps' weights): the same integer, since a padding tap adds (z - z) * w = 0.
// One call runs tile.count tiles, so the epilogue's constants and the column terms
// are set up once per run, not per tile.
//
// With fast_requant and a whole block of 2 or 4 panels (32 / 64 columns), a row's
// codes are narrowed together: vpackssdw, + zero point (vpaddsw), vpackuswb, and one
// vpermd that undoes the packs' 128-bit lane interleave, then one store. The
// saturations are exact: the codes less zp are at most q_hi <= 255 - zp, so the int16
// pack and the saturating + zp keep every code in [-32768, 255], and vpackuswb clamps
// below at 0. That clamp is the lower one of fast_requant when q_lo == -zp
// (round(max(-zp, v)) + zp == max(0, round(v) + zp): rounding is monotone and -zp is
// an integer; huge negative v convert to INT32_MIN, also below 0), so then the max is
// left out.
// MODE 0: any epilogue (avx512_epi_vec per vector). MODE 1 .. kPackedModes: the packed narrowing
// (NP 2 or 4, fast_requant, whole block), variant packed_mode(e) = MODE - 1.
template <int NP, int MODE>
__attribute__((target(Q8_AVX512_TARGET ",avx512vnni"), noinline)) void conv_tile_fused_avx512(
    const Epilogue& e, const FusedTile& tile, int64_t cgroups, const int8_t* b, int64_t panel_stride, int64_t n,
    int64_t o0, int ncols, const int32_t* wsum) {
  constexpr int MR = gemm::kRows;
  const Avx512Epi c = make_avx512_epi(e, n);
  // The column terms: the accumulators' start, sx * sw and the bias.
  alignas(64) int32_t nz[NP][16];
  alignas(64) float sv[NP][16];
  alignas(64) float bv[NP][16];
  {
    const __m512i zv = _mm512_set1_epi32(e.zx[n]);
    for (int q = 0; q < NP; ++q) {
      const __mmask16 k = tail_mask(ncols - 16 * q);
      const __m512i start =
          tile.init != nullptr
              ? _mm512_maskz_loadu_epi32(k, tile.init + 16 * q)
              : _mm512_sub_epi32(_mm512_setzero_si512(),
                                 _mm512_mullo_epi32(zv, _mm512_maskz_loadu_epi32(k, wsum + 16 * q)));
      _mm512_store_si512(nz[q], start);
      _mm512_store_ps(sv[q], _mm512_mul_ps(c.sxv, _mm512_maskz_loadu_ps(k, e.sw + o0 + 16 * q)));
      _mm512_store_ps(bv[q], c.has_bias ? _mm512_maskz_loadu_ps(k, e.bias + o0 + 16 * q) : _mm512_setzero_ps());
    }
  }
  static_assert(MODE == 0 || NP == 2 || NP == 4, "the packed narrowing takes 2 or 4 panels");
  constexpr bool kLo = MODE > 0 && ((MODE - 1) & kFusedLo) != 0;
  constexpr int kRes = packed_res(MODE);
  const __m512i zp16 = _mm512_set1_epi16(static_cast<int16_t>(e.out_zp));
  const int64_t tap_bytes = cgroups * gemm::kGroupBytes;
  for (int64_t i = 0; i < tile.count; ++i) {
    __m512i acc[MR][NP];
#pragma GCC unroll 4
    for (int q = 0; q < NP; ++q) {
      const __m512i start = _mm512_load_si512(nz[q]);
#pragma GCC unroll 6
      for (int r = 0; r < MR; ++r) {
        acc[r][q] = start;
      }
    }
    const uint8_t* const* rows = tile.rows + i * tile.rows_stride;
    if (tile.tap_off != nullptr && (tile.based == nullptr || tile.based[i] != 0)) {
      const uint8_t* base[MR];
      for (int r = 0; r < MR; ++r) {
        base[r] = rows[r];
      }
      fused_taps<NP>(acc, tile.ntaps, tile.taps, b, tap_bytes, cgroups, panel_stride,
                     [&](int64_t t, const uint8_t** s) {
                       const int64_t off = tile.tap_off[t];
                       for (int r = 0; r < MR; ++r) {
                         s[r] = base[r] + off;
                       }
                     });
    } else {
      fused_taps<NP>(acc, tile.ntaps, tile.taps, b, tap_bytes, cgroups, panel_stride,
                     [&](int64_t t, const uint8_t** s) {
                       for (int r = 0; r < MR; ++r) {
                         s[r] = rows[t * MR + r];
                       }
                     });
    }
    int64_t at[MR];
    for (int r = 0; r < MR; ++r) {
      at[r] = (n * e.pixels + (tile.orow != nullptr ? tile.orow[6 * i + r] : tile.p + 6 * i + r)) * e.oc + o0;
    }
    if constexpr (MODE > 0) {
#pragma GCC unroll 6
      for (int r = 0; r < MR; ++r) {
        __m512i code[NP];
#pragma GCC unroll 4
        for (int q = 0; q < NP; ++q) {
          const __m512 y =
              avx512_packed_y<kRes>(c, acc[r][q], _mm512_load_ps(sv[q]), _mm512_load_ps(bv[q]), at[r] + 16 * q);
          code[q] = avx512_fast_code(c, y, kLo, kRes == 2);
        }
        if constexpr (NP == 4) {
          _mm512_storeu_si512(e.out_u8 + at[r], avx512_pack64(code[0], code[1], code[2], code[3], zp16));
        } else {
          // vectors 0 and 1 twice: the first 32 bytes are their codes in order
          const __m512i p = avx512_pack64(code[0], code[1], code[0], code[1], zp16);
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(e.out_u8 + at[r]), _mm512_castsi512_si256(p));
        }
      }
    } else {
#pragma GCC unroll 4
      for (int q = 0; q < NP; ++q) {
        const __mmask16 k = tail_mask(ncols - 16 * q);
        const __m512 s = _mm512_load_ps(sv[q]);
        const __m512 bq = _mm512_load_ps(bv[q]);
#pragma GCC unroll 6
        for (int r = 0; r < MR; ++r) {
          avx512_epi_vec(c, acc[r][q], s, bq, at[r] + 16 * q, k);
        }
      }
    }
  }
}

using FusedTileFn = void (*)(const Epilogue&, const FusedTile&, int64_t, const int8_t*, int64_t, int64_t, int64_t, int,
                             const int32_t*);
// The fused tile for an epilogue and a column block of np panels with ncols columns.
FusedTileFn fused_tile_fn(const Epilogue& e, int np, int ncols) {
  static const FusedTileFn kAny[gemm::kMaxPanels + 1] = {nullptr, &conv_tile_fused_avx512<1, 0>,
                                                         &conv_tile_fused_avx512<2, 0>, &conv_tile_fused_avx512<3, 0>,
                                                         &conv_tile_fused_avx512<4, 0>};
  static const FusedTileFn kPacked[2][kPackedModes] = {
      {&conv_tile_fused_avx512<2, 1>, &conv_tile_fused_avx512<2, 2>, &conv_tile_fused_avx512<2, 3>,
       &conv_tile_fused_avx512<2, 4>, &conv_tile_fused_avx512<2, 5>, &conv_tile_fused_avx512<2, 6>},
      {&conv_tile_fused_avx512<4, 1>, &conv_tile_fused_avx512<4, 2>, &conv_tile_fused_avx512<4, 3>,
       &conv_tile_fused_avx512<4, 4>, &conv_tile_fused_avx512<4, 5>, &conv_tile_fused_avx512<4, 6>}};
  if (e.fast_requant && (np == 2 || np == 4) && ncols == np * gemm::kPanel) {
    return kPacked[np == 4][packed_mode(e)];
  }
  return kAny[np];
}

// Per-tap column sums of a packed linear block (K = taps * cgroups * 4):
// out[t * ldo + j] = sum over the tap's k of w[j][k], for j < panels * 16.
__attribute__((target(Q8_AVX512_TARGET ",avx512vnni"), noinline)) void tap_sums_avx512(
    const int8_t* weights, int64_t panel_stride, int64_t panels, int64_t taps, int64_t cgroups, int32_t* out,
    int64_t ldo) {
  const __m512i ones = _mm512_set1_epi8(1);
  for (int64_t pn = 0; pn < panels; ++pn) {
    const int8_t* bg = weights + pn * panel_stride;
    for (int64_t t = 0; t < taps; ++t) {
      __m512i acc = _mm512_setzero_si512();
      for (int64_t q = 0; q < cgroups; ++q, bg += gemm::kGroupBytes) {
        asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(ones), "v"(_mm512_loadu_si512(bg)));
      }
      _mm512_storeu_si512(out + t * ldo + pn * gemm::kPanel, acc);
    }
  }
}

template <>
__attribute__((target(Q8_AVX512_TARGET), noinline)) void epilogue_avx512<int32_t>(
    const Epilogue& e, int64_t n, int64_t p, int64_t o0, int cnt, const int32_t* acc, const int32_t* wsum) {
  epilogue_tile_avx512(e, n, p, 1, o0, cnt, acc, 0, wsum);
}
#pragma GCC diagnostic pop
template <typename Acc>
__attribute__((target("avx2"), noinline)) void epilogue_avx2(const Epilogue& e, int64_t n, int64_t p, int64_t o0,
                                                             int cnt, const Acc* acc, const int32_t* wsum) {
  e.run_body(n, p, o0, cnt, acc, wsum);
}
#endif

template <typename Acc>
void Epilogue::run(int64_t n, int64_t p, int64_t o0, int cnt, const Acc* acc, const int32_t* wsum) const {
#if defined(Q8_EPI_MULTIVERSION)
  if (level == 2) {
    return epilogue_avx512(*this, n, p, o0, cnt, acc, wsum);
  }
  if (level == 1) {
    return epilogue_avx2(*this, n, p, o0, cnt, acc, wsum);
  }
#endif
  run_body(n, p, o0, cnt, acc, wsum);
}

void Epilogue::run_tile(int64_t n, int64_t p, int mr, int64_t o0, int cnt, const int32_t* acc, int64_t ldacc,
                        const int32_t* wsum) const {
#if defined(Q8_EPI_MULTIVERSION)
  if (level == 2) {
    return epilogue_tile_avx512(*this, n, p, mr, o0, cnt, acc, ldacc, wsum);
  }
#endif
  for (int r = 0; r < mr; ++r) {
    run(n, p + r, o0, cnt, acc + r * ldacc, wsum);
  }
}

// The epilogue level of the active ISA (Epilogue::level).
int epilogue_level() {
#if defined(Q8_EPI_MULTIVERSION)
  switch (active_isa()) {
    case Isa::AVX512_VNNI:
    case Isa::AVX512:
      return 2;
    case Isa::AVX_VNNI:
    case Isa::AVX2:
      return 1;
    case Isa::DEFAULT:
      break;
  }
#endif
  return 0;
}

// Epilogue::fast_requant and its bounds. For inv > 0 and an integer zp in [0, 255],
// the scalar steps  y -> clamp(y, lo, hi) -> clamp_pm512(y * inv) -> round -> + zp ->
// clamp(0, 255)  give  round(clamp(y * inv, q_lo, q_hi)) + zp  with
//   q_lo = max(lo * inv, -zp), q_hi = min(hi * inv, 255 - zp)
// (rounded multiplication by inv > 0 is monotone, so clamping before or after it is
// the same; the bounds -zp, 255 - zp are integers inside [-512, 512], so clamping
// to them before rounding equals clamping the rounded sum to [0, 255]), provided
// q_lo <= q_hi and y is not NaN. y is NaN only from a float residual (NaN, or an
// infinite residual against an overflowed float(d) * s), a non-finite bias or a
// non-finite sx * sw (finite terms give a finite or infinite y); the fast paths give
// a NaN y the zero point, as run_body does, so only the last two are excluded.
void set_fast_requant(Epilogue& e, int64_t n, const at::Tensor& sw, const at::Tensor& bias) {
  e.fast_requant = false;
  if (e.out_u8 == nullptr) {
    return;
  }
  // The largest |v|, or Inf if any v is Inf or NaN. (Per call, per channel: a scalar
  // loop with an early return kept the maximum in memory, ~6 cycles per channel,
  // 3 us of a 960-channel depthwise layer.)
  const auto max_abs = [](const float* v, int64_t count) {
    constexpr float kMax = std::numeric_limits<float>::max();
    float m = 0.f;
    bool finite = true;
    int64_t o = 0;
#if defined(__SSE2__)
    const __m128 abs_mask = _mm_castsi128_ps(_mm_set1_epi32(0x7FFFFFFF)), big = _mm_set1_ps(kMax);
    __m128 mv = _mm_setzero_ps(), bad = _mm_setzero_ps();
    for (; o + 4 <= count; o += 4) {
      const __m128 a = _mm_and_ps(_mm_loadu_ps(v + o), abs_mask);
      bad = _mm_or_ps(bad, _mm_cmpnle_ps(a, big));  // (true for Inf and NaN)
      mv = _mm_max_ps(mv, a);
    }
    alignas(16) float lanes[4];
    _mm_store_ps(lanes, mv);
    finite = _mm_movemask_ps(bad) == 0;
    m = std::max(std::max(lanes[0], lanes[1]), std::max(lanes[2], lanes[3]));
#endif
    for (; o < count; ++o) {
      const float a = std::fabs(v[o]);
      finite = finite && a <= kMax;  // false for Inf and NaN
      m = a > m ? a : m;
    }
    return finite ? m : std::numeric_limits<float>::infinity();
  };
  const float sw_max = max_abs(sw.const_data_ptr<float>(), sw.numel());
  if (!std::isfinite(sw_max) || (bias.defined() && !std::isfinite(max_abs(bias.const_data_ptr<float>(), bias.numel())))) {
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(e.sx[i] * sw_max)) {
      return;
    }
  }
  const float zp = static_cast<float>(e.out_zp);
  e.q_lo = e.has_lo ? std::max(e.lo * e.out_inv, -zp) : -zp;
  e.q_hi = e.has_hi ? std::min(e.hi * e.out_inv, 255.f - zp) : 255.f - zp;
  e.fast_requant = e.q_lo <= e.q_hi;
}

struct Geometry {
  int64_t n, c, h, w, oc, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, groups, cg, cg4;
};

#if defined(__SSE2__)
// The panel bytes of one tap of a whole 6-row panel: k group q of row r is the
// 4 bytes s[r] + 4 q. A 6-row transpose of 32-bit words: 16 bytes (4 k groups)
// of each row in, 96 panel bytes out.
inline void transpose6(const uint8_t* const* s, int64_t cgroups, uint8_t* dst) {
  constexpr int64_t kStride = gemm::kRows * gemm::kGroup;
  int64_t q = 0;
  for (; q + 4 <= cgroups; q += 4) {
    const auto ld = [&](int r) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(s[r] + 4 * q)); };
    const __m128i r0 = ld(0), r1 = ld(1), r2 = ld(2), r3 = ld(3), r4 = ld(4), r5 = ld(5);
    // [r_a g0, r_b g0, r_a g1, r_b g1] and [r_a g2, r_b g2, r_a g3, r_b g3]
    const __m128i l01 = _mm_unpacklo_epi32(r0, r1), h01 = _mm_unpackhi_epi32(r0, r1);
    const __m128i l23 = _mm_unpacklo_epi32(r2, r3), h23 = _mm_unpackhi_epi32(r2, r3);
    const __m128i l45 = _mm_unpacklo_epi32(r4, r5), h45 = _mm_unpackhi_epi32(r4, r5);
    __m128i* d = reinterpret_cast<__m128i*>(dst + q * kStride);
    // groups q, q + 1: rows 0-5 of q then rows 0-5 of q + 1 (48 bytes)
    _mm_storeu_si128(d + 0, _mm_unpacklo_epi64(l01, l23));
    _mm_storeu_si128(d + 1, _mm_castpd_si128(_mm_shuffle_pd(_mm_castsi128_pd(l45), _mm_castsi128_pd(l01), 2)));
    _mm_storeu_si128(d + 2, _mm_unpackhi_epi64(l23, l45));
    // groups q + 2, q + 3
    _mm_storeu_si128(d + 3, _mm_unpacklo_epi64(h01, h23));
    _mm_storeu_si128(d + 4, _mm_castpd_si128(_mm_shuffle_pd(_mm_castsi128_pd(h45), _mm_castsi128_pd(h01), 2)));
    _mm_storeu_si128(d + 5, _mm_unpackhi_epi64(h23, h45));
  }
  for (; q < cgroups; ++q) {
    for (int r = 0; r < gemm::kRows; ++r) {
      std::memcpy(dst + q * kStride + r * gemm::kGroup, s[r] + 4 * q, 4);
    }
  }
}
#endif

// Builds the activation panel (int8_gemm.h: [k groups][6 rows][4 k]) of output
// pixels [p0, p0 + rows) of sample x (uint8 NHWC) for channel group g: column
// (i * KW + j) * cg4 + c holds x(oy * sh - ph + i * dh, ox * sw - pw + j * dw, g * Cg + c),
// the zero point outside the image, 0 for c >= Cg.
void build_panel(const uint8_t* x, const Geometry& G, int64_t g, uint8_t zp, int64_t p0, int rows, uint8_t* panel) {
  constexpr int64_t kStride = gemm::kRows * gemm::kGroup;  // bytes between k groups
  const int64_t cgroups = G.cg4 / 4;
  // One row of one tap: its whole groups of 4 channels as words, then, when Cg is not a
  // multiple of 4, the last group with the bytes past Cg set to 0 (one masked 4-byte load
  // where it stays inside the sample on a little-endian CPU, else byte by byte). A tap
  // outside the image holds the zero point (0 past Cg).
  const uint32_t zp4 = uint32_t{zp} * 0x01010101u;
  const int64_t full = G.cg / 4;
  const int rem = static_cast<int>(G.cg % 4);
  uint8_t zp_last[4] = {0, 0, 0, 0};
  for (int e = 0; e < rem; ++e) {
    zp_last[e] = zp;
  }
  const uint8_t* const sample_end = x + G.h * G.w * G.c;
  const auto copy_row = [&](uint8_t* d, const uint8_t* src) {
    for (int64_t q = 0; q < full; ++q) {
      std::memcpy(d + q * kStride, src + 4 * q, 4);
    }
    if (rem != 0) {
      const uint8_t* last = src + 4 * full;
      if (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ && last + 4 <= sample_end) {
        uint32_t v;
        std::memcpy(&v, last, 4);
        v &= (uint32_t{1} << (8 * rem)) - 1u;
        std::memcpy(d + full * kStride, &v, 4);
      } else {
        uint8_t b[4] = {0, 0, 0, 0};
        for (int e = 0; e < rem; ++e) {
          b[e] = last[e];
        }
        std::memcpy(d + full * kStride, b, 4);
      }
    }
  };
  const auto pad_row = [&](uint8_t* d) {
    for (int64_t q = 0; q < full; ++q) {
      std::memcpy(d + q * kStride, &zp4, 4);
    }
    if (rem != 0) {
      std::memcpy(d + full * kStride, zp_last, 4);
    }
  };
#if defined(__SSE2__)
  // A whole panel, tap by tap: a tap whose 6 rows all lie inside the image is one
  // transpose6 when Cg is a multiple of 4; any other tap is filled row by row.
  if (rows == gemm::kRows) {
    int64_t oy[gemm::kRows], ox[gemm::kRows];
    for (int r = 0; r < gemm::kRows; ++r) {
      oy[r] = (p0 + r) / G.ow;
      ox[r] = (p0 + r) % G.ow;
    }
    const uint8_t* s[gemm::kRows];
    for (int64_t i = 0; i < G.kh; ++i) {
      for (int64_t j = 0; j < G.kw; ++j) {
        uint8_t* dst = panel + (i * G.kw + j) * cgroups * kStride;
        bool inside = true;
        for (int r = 0; r < gemm::kRows; ++r) {
          const int64_t y = oy[r] * G.sh - G.ph + i * G.dh;
          const int64_t xx = ox[r] * G.sw - G.pw + j * G.dw;
          if (y < 0 || y >= G.h || xx < 0 || xx >= G.w) {
            inside = false;
            s[r] = nullptr;
          } else {
            s[r] = x + (y * G.w + xx) * G.c + g * G.cg;
          }
        }
        if (inside && rem == 0) {
          transpose6(s, cgroups, dst);
          continue;
        }
        for (int r = 0; r < gemm::kRows; ++r) {
          if (s[r] == nullptr) {
            pad_row(dst + r * gemm::kGroup);
          } else {
            copy_row(dst + r * gemm::kGroup, s[r]);
          }
        }
      }
    }
    return;
  }
#endif
  for (int r = 0; r < gemm::kRows; ++r) {
    uint8_t* dst0 = panel + r * gemm::kGroup;
    if (r >= rows) {  // rows past the end: zeros (their results are not stored)
      for (int64_t t = 0; t < G.kh * G.kw * cgroups; ++t) {
        std::memset(dst0 + t * kStride, 0, 4);
      }
      continue;
    }
    const int64_t p = p0 + r;
    const int64_t oy = p / G.ow, ox = p % G.ow;
    for (int64_t i = 0; i < G.kh; ++i) {
      const int64_t y = oy * G.sh - G.ph + i * G.dh;
      for (int64_t j = 0; j < G.kw; ++j) {
        const int64_t xx = ox * G.sw - G.pw + j * G.dw;
        uint8_t* dst = dst0 + (i * G.kw + j) * cgroups * kStride;
        if (y < 0 || y >= G.h || xx < 0 || xx >= G.w) {
          pad_row(dst);
        } else {
          copy_row(dst, x + (y * G.w + xx) * G.c + g * G.cg);
        }
      }
    }
  }
}

// q itself when its Cg4 bytes lie before end, else its copy in a tail slot (see
// build_row_ptrs).
inline const uint8_t* tail_safe(const uint8_t* q, const Geometry& G, const uint8_t* end, uint8_t* tail) {
  if (q + G.cg4 <= end) {
    return q;
  }
  const int64_t have = end - q;
  uint8_t* slot = tail + (have - G.cg) * G.cg4;
  std::memcpy(slot, q, static_cast<size_t>(have));
  std::memset(slot + have, 0, static_cast<size_t>(G.cg4 - have));
  return slot;
}

// The work items of conv_gemm and conv_gemm_classed: `segs` segments (samples) of
// `units` row units (6-row panels or tiles) each, cut into chunks of at most about
// `max_chunk` units. With several threads there are at least about 4 chunks per
// thread (so that small layers, 14x14 or 7x7, are not 3 chunks over 2 threads), as
// many in all as a multiple of the threads where the units allow it (at::parallel_for
// gives each thread a contiguous, equal count of items, so 11 chunks over 2 threads
// would be 6 : 5), of equal cost: equal unit counts (+- 1), or, given each unit's
// cost (a tile's taps), equal sums. When that still leaves fewer than 4 items per
// thread (4x4 at batch 1 is 3 panels) the `nblocks` 64-column blocks are split across
// items too. Each item builds its own panels or row pointers; no output depends on
// the split.
struct WorkSplit {
  int64_t units, nchunks, nblocks, nsplit, blocks_per_item;
  int64_t chunk;                 // the most units of a chunk
  std::vector<int64_t> bounds;   // chunk c: units [bounds[c], bounds[c + 1])

  int64_t items(int64_t segs) const {
    return segs * nchunks * nsplit;
  }
  struct Item {
    int64_t seg, u0, u1, jb0, jb1;  // segment, units [u0, u1), column blocks [jb0, jb1)
  };
  Item item(int64_t i) const {
    const int64_t ci = i / nsplit % nchunks, si = i % nsplit;
    return {i / (nchunks * nsplit), bounds[ci], bounds[ci + 1], si * blocks_per_item,
            std::min(nblocks, (si + 1) * blocks_per_item)};
  }
};

// The split of `units` into nchunks chunks (equal counts, or equal sums of cost) and
// of the column blocks into about nsplit ranges.
WorkSplit make_split(int64_t units, int64_t nchunks, int64_t nsplit, int64_t nblocks, const int32_t* cost) {
  WorkSplit w{};
  w.units = units;
  w.nblocks = nblocks;
  w.nchunks = nchunks;
  w.bounds.assign(static_cast<size_t>(w.nchunks + 1), units);
  w.bounds[0] = 0;
  if (cost == nullptr) {
    for (int64_t c = 1; c < w.nchunks; ++c) {
      w.bounds[c] = c * units / w.nchunks;
    }
  } else {
    int64_t total = 0;
    for (int64_t u = 0; u < units; ++u) {
      total += cost[u];
    }
    // chunk c ends at the first unit whose running cost reaches (c + 1) / nchunks of the total
    int64_t run = 0, c = 1;
    for (int64_t u = 0; u < units && c < w.nchunks; ++u) {
      run += cost[u];
      while (c < w.nchunks && run * w.nchunks >= c * total) {
        w.bounds[c++] = u + 1;
      }
    }
  }
  w.chunk = 0;
  for (int64_t c = 0; c < w.nchunks; ++c) {
    w.chunk = std::max(w.chunk, w.bounds[c + 1] - w.bounds[c]);
  }
  w.blocks_per_item = ceil_div(nblocks, std::max<int64_t>(1, nsplit));
  w.nsplit = ceil_div(nblocks, w.blocks_per_item);
  return w;
}

// The most units x column blocks that one of nthreads threads gets from
// at::parallel_for(0, items, 1) (contiguous ranges of ceil(items / nthreads) items),
// units of equal cost.
int64_t max_thread_load(const WorkSplit& w, int64_t segs, int64_t nthreads) {
  const int64_t items = w.items(segs), per = ceil_div(items, nthreads);
  int64_t worst = 0, load = 0;
  for (int64_t i = 0; i < items; ++i) {
    const WorkSplit::Item it = w.item(i);
    load += (it.u1 - it.u0) * (it.jb1 - it.jb0);
    if ((i + 1) % per == 0 || i + 1 == items) {
      worst = std::max(worst, load);
      load = 0;
    }
  }
  return worst;
}

WorkSplit split_work(int64_t segs, int64_t units, int64_t max_chunk, int64_t nblocks,
                     const int32_t* cost = nullptr) {
  const int64_t nthreads = at::get_num_threads();
  int64_t nchunks = std::max<int64_t>(1, ceil_div(units, std::max<int64_t>(1, max_chunk)));
  if (nthreads > 1 && units > 0) {
    nchunks = std::max(nchunks, std::min(units, ceil_div(4 * nthreads, segs)));
    while ((segs * nchunks) % nthreads != 0 && nchunks < units) {
      ++nchunks;
    }
  }
  int64_t nsplit = 1;
  if (nthreads > 1 && segs * nchunks < 4 * nthreads) {
    nsplit = std::min(nblocks, ceil_div(4 * nthreads, segs * nchunks));
  }
  WorkSplit w = make_split(units, nchunks, nsplit, nblocks, cost);
  // Few units of equal cost (1x1 512 -> 512 at 7x7, batch 1: 9 panels x 8 column
  // blocks) cut into chunks leave one thread a panel more (5 : 4); when the column
  // blocks divide among the threads, one chunk per segment and the blocks split
  // nthreads ways gives every thread the same work.
  if (cost == nullptr && nthreads > 1 && nblocks % nthreads == 0 && units <= 4 * std::max<int64_t>(1, max_chunk)) {
    WorkSplit even = make_split(units, 1, nthreads, nblocks, nullptr);
    if (max_thread_load(even, segs, nthreads) < max_thread_load(w, segs, nthreads)) {
      w = std::move(even);
    }
  }
  return w;
}

// Column block jb (up to 4 panels of 16 columns) of a group's packed weight.
struct ColumnBlock {
  int np;          // panels
  int64_t col0;    // first column (of the group)
  int ncols;       // columns present
  const int8_t* b; // its panel 0
};

ColumnBlock column_block(const detail::PackedView& w, int64_t jb, int64_t ocg) {
  const int64_t p0 = jb * gemm::kMaxPanels;
  const int np = static_cast<int>(std::min<int64_t>(gemm::kMaxPanels, w.panels - p0));
  const int64_t col0 = p0 * gemm::kPanel;
  return {np, col0, static_cast<int>(std::min<int64_t>(np * gemm::kPanel, ocg - col0)), w.weights + p0 * w.panel_stride};
}

// The row pointers of the in-place tile (GemmKernels::int8_conv_tile) for output
// rows [m0, m0 + rows) of channel group g, as consecutive 6-row panels: row i's
// pointer of tap t is ptrs[(i / 6) * taps * 6 + t * 6 + i % 6] (tap t = i * KW + j).
// It points at channel g * Cg of input pixel (oy * sh - ph + i * dh, ox * sw - pw + j * dw),
// or at zp_row (Cg4 bytes of the zero point) outside the image. The tile reads Cg4
// bytes there: past Cg they are the next channels or the next pixels (their weights
// are 0, so any value adds 0). A group that would run past the end of the input
// buffer (end) reads a copy in tail instead: it starts at end - Cg - e for e in
// {0, 1, 2} (Cg4 - Cg <= 3), so tail holds 3 slots of Cg4 bytes, slot e for that start
// (tail_safe). tap_off[t] = (i * dh * W + j * dw) * C. Rows are global output rows
// m = n * OH * OW + p, so a panel may run across samples (conv_gemm's merged batch).
// One call builds a work item's panels (one division for the first row); a panel
// whose 6 rows all have every tap inside the image is 6 bases + tap_off[t] per tap.
// With based (conv_tile_fused_avx512's FusedTile), such a panel's table holds only
// its 6 bases, and based[panel] says which form a panel has.
void build_row_ptrs(const uint8_t* xq, const Geometry& G, int64_t g, const uint8_t* zp_row, const int64_t* tap_off,
                    const uint8_t* end, uint8_t* tail, int64_t m0, int64_t rows, const uint8_t** ptrs,
                    uint8_t* based) {
  constexpr int R = gemm::kRows;
  const int64_t taps = G.kh * G.kw;
  const int64_t span_h = (G.kh - 1) * G.dh, span_w = (G.kw - 1) * G.dw;
  const int64_t pixels = G.oh * G.ow, sample_bytes = G.h * G.w * G.c;
  const int64_t p0 = m0 % pixels;
  const uint8_t* x = xq + (m0 / pixels) * sample_bytes;
  int64_t oy = p0 / G.ow, ox = p0 % G.ow;
  const auto in_bounds = [&](const uint8_t* q) { return tail_safe(q, G, end, tail); };
  const int64_t pix_step = G.sw * G.c;
  for (int64_t i0 = 0; i0 < rows; i0 += R) {
    const uint8_t** pp = ptrs + (i0 / R) * taps * R;
    const int nr = static_cast<int>(std::min<int64_t>(R, rows - i0));
    // The common case first: 6 rows in one output row, every tap inside.
    if (nr == R && ox + (R - 1) < G.ow) {
      const int64_t iy = oy * G.sh - G.ph, ix = ox * G.sw - G.pw;
      const uint8_t* b0 = x + (iy * G.w + ix) * G.c + g * G.cg;
      if (iy >= 0 && iy + span_h < G.h && ix >= 0 && ix + (R - 1) * G.sw + span_w < G.w &&
          (G.cg4 == G.cg || b0 + (R - 1) * pix_step + tap_off[taps - 1] + G.cg4 <= end)) {
        if (based != nullptr) {
          based[i0 / R] = 1;
#pragma GCC unroll 6
          for (int r = 0; r < R; ++r) {
            pp[r] = b0 + r * pix_step;
          }
        } else {
          for (int64_t t = 0; t < taps; ++t) {
            const uint8_t* q = b0 + tap_off[t];
#pragma GCC unroll 6
            for (int r = 0; r < R; ++r) {
              pp[t * R + r] = q + r * pix_step;
            }
          }
        }
        ox += R;
        if (ox == G.ow) {
          ox = 0;
          if (++oy == G.oh) {
            oy = 0;
            x += sample_bytes;
          }
        }
        continue;
      }
    }
    // Per row: its base (tap 0's pixel), whether every tap is inside, and where.
    const uint8_t* base[R];
    bool inside[R];
    int64_t ry[R], rx[R];
    bool all_inside = nr == R;
    for (int r = 0; r < nr; ++r) {
      const int64_t iy = oy * G.sh - G.ph, ix = ox * G.sw - G.pw;
      base[r] = x + (iy * G.w + ix) * G.c + g * G.cg;
      // (the last tap reads the highest bytes: when it stays inside the buffer, every tap does)
      inside[r] = iy >= 0 && iy + span_h < G.h && ix >= 0 && ix + span_w < G.w &&
                  (G.cg4 == G.cg || base[r] + tap_off[taps - 1] + G.cg4 <= end);
      all_inside = all_inside && inside[r];
      ry[r] = iy;
      rx[r] = ix;
      if (++ox == G.ow) {
        ox = 0;
        if (++oy == G.oh) {
          oy = 0;
          x += sample_bytes;
        }
      }
    }
    if (based != nullptr) {
      based[i0 / R] = all_inside ? 1 : 0;
    }
    if (all_inside && based != nullptr) {
      for (int r = 0; r < R; ++r) {
        pp[r] = base[r];
      }
      continue;
    }
    if (all_inside) {
      for (int64_t t = 0; t < taps; ++t) {
        const int64_t off = tap_off[t];
#pragma GCC unroll 6
        for (int r = 0; r < R; ++r) {
          pp[t * R + r] = base[r] + off;
        }
      }
      continue;
    }
    for (int r = 0; r < nr; ++r) {
      if (inside[r]) {
        for (int64_t t = 0; t < taps; ++t) {
          pp[t * R + r] = base[r] + tap_off[t];
        }
        continue;
      }
      // a border row: tap (i, j) is inside where both its input row and column are (a
      // tail slot only where the row's last tap would read past the end)
      const bool no_tail = G.cg4 == G.cg || base[r] + tap_off[taps - 1] + G.cg4 <= end;
      for (int64_t i = 0; i < G.kh; ++i) {
        const int64_t y = ry[r] + i * G.dh;
        const bool yin = y >= 0 && y < G.h;
        for (int64_t j = 0; j < G.kw; ++j) {
          const int64_t xx = rx[r] + j * G.dw;
          const int64_t t = i * G.kw + j;
          const uint8_t* q = (yin & (xx >= 0) & (xx < G.w)) ? base[r] + tap_off[t] : zp_row;
          pp[t * R + r] = no_tail || q == zp_row ? q : in_bounds(q);
        }
      }
    }
  }
}

#if defined(Q8_EPI_MULTIVERSION)
// Tap skipping for small images (AVX-512 VNNI, in place, one set of input qparams
// and no NaN sample, groups == 1). A 3x3 layer at 4x4 has a third of its taps in
// the zero padding, at 7x7 a fifth; the panel path multiplies them (as the zero
// point). Here the output pixels are sorted into classes by the taps that lie inside
// the image (the rows above / below and the columns left / right that are valid: 9
// classes for a 3x3 same convolution), each class's rows (of the whole batch) are
// cut into 6-row tiles (the last one filled up with copies of its last row, which
// write the same values again), and a tile runs only its class's taps, its
// accumulators starting at -z * (the column sums of those taps' weights): the same
// integer as the full sum with padding at z. Returns false where it does not apply
// or would not pay (fewer than 8 % of the taps in the padding, or too many tiles
// filled up with copies).
bool conv_gemm_classed(const uint8_t* xq, const Geometry& G, const ConvPackedView& wv, const Epilogue& epi) {
  const int64_t taps = G.kh * G.kw;
  if (G.groups != 1 || G.kh > 16 || G.kw > 16 || taps < 2) {
    return false;
  }
  const auto valid_bits = [](int64_t o, int64_t stride, int64_t pad, int64_t dil, int64_t k, int64_t size) {
    uint32_t m = 0;
    for (int64_t i = 0; i < k; ++i) {
      const int64_t v = o * stride - pad + i * dil;
      if (v >= 0 && v < size) {
        m |= uint32_t{1} << i;
      }
    }
    return m;
  };
  std::vector<uint32_t> rmask(static_cast<size_t>(G.oh)), cmask(static_cast<size_t>(G.ow));
  int64_t rsum = 0, csum = 0;
  for (int64_t oy = 0; oy < G.oh; ++oy) {
    rmask[oy] = valid_bits(oy, G.sh, G.ph, G.dh, G.kh, G.h);
    rsum += __builtin_popcount(rmask[oy]);
  }
  for (int64_t ox = 0; ox < G.ow; ++ox) {
    cmask[ox] = valid_bits(ox, G.sw, G.pw, G.dw, G.kw, G.w);
    csum += __builtin_popcount(cmask[ox]);
  }
  const double valid = static_cast<double>(rsum) * static_cast<double>(csum) /
                       (static_cast<double>(G.oh * G.ow) * static_cast<double>(taps));
  if (valid > 0.92) {
    return false;
  }
  // Distinct row / column masks, and each class's taps.
  std::vector<uint32_t> rvals, cvals;
  std::vector<int> rid(static_cast<size_t>(G.oh)), cid(static_cast<size_t>(G.ow));
  const auto index_of = [](std::vector<uint32_t>& vals, uint32_t m) {
    const auto it = std::find(vals.begin(), vals.end(), m);
    if (it != vals.end()) {
      return static_cast<int>(it - vals.begin());
    }
    vals.push_back(m);
    return static_cast<int>(vals.size() - 1);
  };
  for (int64_t oy = 0; oy < G.oh; ++oy) {
    rid[oy] = index_of(rvals, rmask[oy]);
  }
  for (int64_t ox = 0; ox < G.ow; ++ox) {
    cid[ox] = index_of(cvals, cmask[ox]);
  }
  const int64_t ncls = static_cast<int64_t>(rvals.size() * cvals.size());
  // Pays only if the tap-rows run (classes filled up to whole tiles) are at most 92 %
  // of the panel path's (7x7 at batch 1: 9 classes of 1 to 25 pixels do not).
  {
    std::vector<int64_t> rcount(rvals.size()), ccount(cvals.size());
    for (int64_t oy = 0; oy < G.oh; ++oy) {
      ++rcount[rid[oy]];
    }
    for (int64_t ox = 0; ox < G.ow; ++ox) {
      ++ccount[cid[ox]];
    }
    int64_t cost = 0;
    for (size_t rc = 0; rc < rvals.size(); ++rc) {
      for (size_t cc = 0; cc < cvals.size(); ++cc) {
        const int64_t cnt = G.n * rcount[rc] * ccount[cc];
        cost += round_up(cnt, gemm::kRows) * __builtin_popcount(rvals[rc]) * __builtin_popcount(cvals[cc]);
      }
    }
    const int64_t panel_cost = round_up(G.n * G.oh * G.ow, gemm::kRows) * taps;
    if (static_cast<double>(cost) > 0.92 * static_cast<double>(panel_cost)) {
      return false;
    }
  }
  std::vector<std::vector<int32_t>> ctaps(static_cast<size_t>(ncls));
  for (size_t rc = 0; rc < rvals.size(); ++rc) {
    for (size_t cc = 0; cc < cvals.size(); ++cc) {
      auto& list = ctaps[rc * cvals.size() + cc];
      for (int64_t i = 0; i < G.kh; ++i) {
        for (int64_t j = 0; j < G.kw; ++j) {
          if (((rvals[rc] >> i) & 1u) != 0 && ((cvals[cc] >> j) & 1u) != 0) {
            list.push_back(static_cast<int32_t>(i * G.kw + j));
          }
        }
      }
    }
  }
  // Per class, its taps' input offsets from its first tap's (the row bases of a
  // based tile point at the first tap's pixel, which is inside the image).
  const auto tap_offset = [&](int64_t t) { return ((t / G.kw) * G.dh * G.w + (t % G.kw) * G.dw) * G.c; };
  std::vector<std::vector<int64_t>> coff(static_cast<size_t>(ncls));
  std::vector<int64_t> first_off(static_cast<size_t>(ncls), 0);
  for (int64_t c = 0; c < ncls; ++c) {
    if (!ctaps[c].empty()) {
      first_off[c] = tap_offset(ctaps[c][0]);
    }
    for (const int32_t t : ctaps[c]) {
      coff[c].push_back(tap_offset(t) - first_off[c]);
    }
  }
  // Class (rc, cc) holds the output rows (n, oy, ox) with rid[oy] == rc and cid[ox] ==
  // cc, in the order n, oy, ox (its "index" k = (n * |ys| + y) * |xs| + x over its
  // lists ys of oy and xs of ox), cut into 6-row tiles; the last tile of a class
  // repeats its last row. The work items build their tiles' rows (the walk in the
  // parallel_for below), so the serial part is per tile, not per pixel.
  std::vector<std::vector<int64_t>> ys(rvals.size()), xs(cvals.size());
  for (int64_t oy = 0; oy < G.oh; ++oy) {
    ys[rid[oy]].push_back(oy);
  }
  for (int64_t ox = 0; ox < G.ow; ++ox) {
    xs[cid[ox]].push_back(ox);
  }
  const int64_t pixels = G.oh * G.ow;
  const int64_t sample_bytes = G.h * G.w * G.c;
  std::vector<std::pair<int64_t, int64_t>> tiles;  // (class, index of its first row)
  std::vector<int64_t> csize(static_cast<size_t>(ncls));
  for (int64_t c = 0; c < ncls; ++c) {
    const size_t rc = static_cast<size_t>(c) / cvals.size(), cc = static_cast<size_t>(c) % cvals.size();
    csize[c] = G.n * static_cast<int64_t>(ys[rc].size() * xs[cc].size());
    for (int64_t k = 0; k < csize[c]; k += gemm::kRows) {
      tiles.emplace_back(c, k);
    }
  }
  // Each class's accumulator start per column: -z * (sum of its taps' column sums),
  // wrapping int32 (the true final values fit in int32).
  const detail::PackedView& w = wv.blocks[0];
  const int64_t cgroups = G.cg4 / 4;
  const int64_t ldc = w.panels * gemm::kPanel;
  std::vector<int32_t> tsum(static_cast<size_t>(taps * ldc));
  tap_sums_avx512(w.weights, w.panel_stride, w.panels, taps, cgroups, tsum.data(), ldc);
  std::vector<int32_t> init(static_cast<size_t>(ncls * ldc));
  const uint32_t z = static_cast<uint32_t>(epi.zx[0]);
  for (int64_t c = 0; c < ncls; ++c) {
    for (int64_t j = 0; j < ldc; ++j) {
      uint32_t sum = 0;
      for (const int32_t t : ctaps[c]) {
        sum += static_cast<uint32_t>(tsum[t * ldc + j]);
      }
      init[c * ldc + j] = static_cast<int32_t>(0u - z * sum);
    }
  }
  // Work items: chunks of tiles x ranges of 64-column blocks (one segment: the batch).
  std::vector<int32_t> tile_cost(tiles.size());
  for (size_t ti = 0; ti < tiles.size(); ++ti) {
    tile_cost[ti] = static_cast<int32_t>(ctaps[tiles[ti].first].size());
  }
  const WorkSplit ws = split_work(1, static_cast<int64_t>(tiles.size()), 16, ceil_div(w.panels, gemm::kMaxPanels),
                                  tile_cost.data());
  const uint8_t* const xq_end = xq + G.n * sample_bytes;
  const int64_t ptrs_per_tile = taps * gemm::kRows;
  at::parallel_for(0, ws.items(1), 1, [&](int64_t begin, int64_t end) {
    std::vector<const uint8_t*> ptrs(static_cast<size_t>(ws.chunk * ptrs_per_tile));
    std::vector<uint8_t> based(static_cast<size_t>(ws.chunk));
    std::vector<int64_t> orow(static_cast<size_t>(ws.chunk * gemm::kRows));
    std::vector<uint8_t> tail(static_cast<size_t>(3 * G.cg4));
    for (int64_t item = begin; item < end; ++item) {
      const WorkSplit::Item it = ws.item(item);
      const int64_t t0 = it.u0, t1 = it.u1;
      // The rows of the item's tiles: per run of one class, one division for its first
      // row, then a walk over (n, y, x).
      int64_t walk_c = -1, k = 0, n = 0, yi = 0, xi = 0;
      for (int64_t ti = t0; ti < t1; ++ti) {
        const int64_t c = tiles[ti].first;
        const std::vector<int64_t>& cy = ys[static_cast<size_t>(c) / cvals.size()];
        const std::vector<int64_t>& cx = xs[static_cast<size_t>(c) % cvals.size()];
        if (c != walk_c) {
          walk_c = c;
          k = tiles[ti].second;
          const int64_t q = k / static_cast<int64_t>(cx.size());
          xi = k % static_cast<int64_t>(cx.size());
          yi = q % static_cast<int64_t>(cy.size());
          n = q / static_cast<int64_t>(cy.size());
        }
        int64_t o[gemm::kRows];
        int64_t* rows_out = orow.data() + (ti - t0) * gemm::kRows;
        for (int r = 0; r < gemm::kRows; ++r) {
          if (k < csize[c]) {  // (else a copy of the class's last row)
            const int64_t oy = cy[yi], ox = cx[xi];
            rows_out[r] = n * pixels + oy * G.ow + ox;
            o[r] = n * sample_bytes + ((oy * G.sh - G.ph) * G.w + (ox * G.sw - G.pw)) * G.c;
            ++k;
            if (++xi == static_cast<int64_t>(cx.size())) {
              xi = 0;
              if (++yi == static_cast<int64_t>(cy.size())) {
                yi = 0;
                ++n;
              }
            }
          } else {
            rows_out[r] = rows_out[r - 1];
            o[r] = o[r - 1];
          }
        }
        const uint8_t** tp = ptrs.data() + (ti - t0) * ptrs_per_tile;
        // The row bases (each row's first tap), or, where a row's last tap would read
        // past the end of the input (Cg4 > Cg), the table with tail_safe.
        const int64_t last = coff[c].empty() ? 0 : coff[c].back();
        bool ok = true;
        for (int r = 0; r < gemm::kRows; ++r) {
          tp[r] = coff[c].empty() ? xq : xq + o[r] + first_off[c];
          ok = ok && (G.cg4 == G.cg || tp[r] + last + G.cg4 <= xq_end);
        }
        based[ti - t0] = ok ? 1 : 0;
        if (!ok) {
          for (int r = 0; r < gemm::kRows; ++r) {
            const uint8_t* base = tp[r];  // (only tap 0 of row r overwrites it)
            for (size_t tt = 0; tt < coff[c].size(); ++tt) {
              tp[tt * gemm::kRows + r] = tail_safe(base + coff[c][tt], G, xq_end, tail.data());
            }
          }
        }
      }
      for (int64_t jb = it.jb0; jb < it.jb1; ++jb) {
        const ColumnBlock cb = column_block(w, jb, G.oc);
        const FusedTileFn fn = fused_tile_fn(epi, cb.np, cb.ncols);
        for (int64_t ti = t0; ti < t1;) {
          // a run of tiles of one class (their rows follow each other in order)
          const int64_t c = tiles[ti].first;
          int64_t tj = ti + 1;
          while (tj < t1 && tiles[tj].first == c) {
            ++tj;
          }
          const FusedTile tile{ptrs.data() + (ti - t0) * ptrs_per_tile,
                               ptrs_per_tile,
                               static_cast<int64_t>(ctaps[c].size()),
                               ctaps[c].data(),
                               coff[c].data(),
                               based.data() + (ti - t0),
                               init.data() + c * ldc + cb.col0,
                               orow.data() + (ti - t0) * gemm::kRows,
                               0,
                               tj - ti};
          fn(epi, tile, cgroups, cb.b, w.panel_stride, 0, cb.col0, cb.ncols, w.rowsums + cb.col0);
          ti = tj;
        }
      }
    }
  });
  return true;
}
#endif

void conv_gemm(const uint8_t* xq, const Geometry& G, const ConvPackedView& wv, const Epilogue& epi) {
  const auto& kern = gemm::active_kernels();
  const int64_t kgroups = G.kh * G.kw * G.cg4 / 4;
  const int64_t panel_bytes = kgroups * gemm::kRows * gemm::kGroup;
  const int64_t pixels = G.oh * G.ow;
  const bool long_k = kgroups > gemm::kMaxGroups;
  // In place (the ISA has int8_conv_tile and K fits one int32 call): no panels, the
  // tile reads the input through a table of row pointers per 6-row panel.
  const bool in_place = kern.int8_conv_tile != nullptr && !long_k;
  // AVX-512 VNNI: whole panels run the tile with the epilogue fused (fused_tile_fn).
  [[maybe_unused]] const bool fused = in_place && active_isa() == Isa::AVX512_VNNI;
  // Merged batch (in place, every sample with the same input qparams and none with
  // NaN / Inf): the panels run over the N * OH * OW output rows of the whole batch,
  // so a small image (4x4: 16 rows) does not end in a partial panel per sample; the
  // epilogue then takes sample 0's qparams and the global row. Otherwise the rows of
  // a panel belong to one sample ("segments" are the samples).
  bool uniform = in_place;
  for (int64_t n = 0; uniform && n < G.n; ++n) {
    uniform = epi.sx[n] == epi.sx[0] && epi.zx[n] == epi.zx[0] && !epi.bad[n];
  }
#if defined(Q8_EPI_MULTIVERSION)
  if (fused && uniform && conv_gemm_classed(xq, G, wv, epi)) {
    return;
  }
#endif
  const bool merged = uniform && G.n > 1;
  const int64_t nseg = merged ? 1 : G.n;
  const int64_t seg_rows = merged ? G.n * pixels : pixels;
  const int64_t mpanels = ceil_div(seg_rows, gemm::kRows);
  const int64_t ocg = G.oc / G.groups;
  // Panels per chunk: about 96 KiB of panels (stays in L2 while every column block
  // of the group runs over it), at most 16.
  const WorkSplit ws = split_work(nseg, mpanels, std::min<int64_t>(16, (96 << 10) / std::max<int64_t>(panel_bytes, 1)),
                                  ceil_div(ceil_div(ocg, gemm::kPanel), gemm::kMaxPanels));
  const int64_t chunk = ws.chunk;
  const int64_t taps = G.kh * G.kw;
  const int64_t ptrs_per_panel = taps * gemm::kRows;
  std::vector<int64_t> tap_off(static_cast<size_t>(taps));
  for (int64_t i = 0; i < G.kh; ++i) {
    for (int64_t j = 0; j < G.kw; ++j) {
      tap_off[i * G.kw + j] = (i * G.dh * G.w + j * G.dw) * G.c;
    }
  }
  const uint8_t* const xq_end = xq + G.n * G.h * G.w * G.c;
  at::parallel_for(0, ws.items(nseg), 1, [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> panels(in_place ? 0 : static_cast<size_t>(chunk * panel_bytes) + 64);
    uint8_t* pbuf = align64(panels.data());
    std::vector<const uint8_t*> ptrs(in_place ? static_cast<size_t>(chunk * ptrs_per_panel) : 0);
    std::vector<uint8_t> based(fused ? static_cast<size_t>(chunk) : 0);
    std::vector<uint8_t> zp_row(in_place ? static_cast<size_t>(4 * G.cg4) : 0);  // and the 3 tail slots
    alignas(64) int32_t c32[gemm::kRows * gemm::kTileCols];
    std::vector<int64_t> c64(long_k ? gemm::kRows * gemm::kTileCols : 0);
    for (int64_t item = begin; item < end; ++item) {
      const WorkSplit::Item it = ws.item(item);
      // n: the segment (the sample, or 0 for the merged batch), whose qparams the epilogue takes
      const int64_t n = it.seg, mp0 = it.u0, mp1 = it.u1;
      const uint8_t* x = xq + n * G.h * G.w * G.c;
      const uint8_t zp = static_cast<uint8_t>(epi.zx[n]);
      if (in_place) {
        std::fill(zp_row.begin(), zp_row.begin() + G.cg4, zp);
      }
      for (int64_t g = 0; g < G.groups; ++g) {
        const detail::PackedView& w = wv.blocks[g];
        if (in_place) {
          build_row_ptrs(xq, G, g, zp_row.data(), tap_off.data(), xq_end, zp_row.data() + G.cg4,
                         n * seg_rows + mp0 * gemm::kRows,
                         std::min(seg_rows, mp1 * gemm::kRows) - mp0 * gemm::kRows, ptrs.data(),
                         fused && !epi.bad[n] && taps > 1 ? based.data() : nullptr);
        } else {
          for (int64_t mp = mp0; mp < mp1; ++mp) {
            const int rows = static_cast<int>(std::min<int64_t>(gemm::kRows, seg_rows - mp * gemm::kRows));
            build_panel(x, G, g, zp, mp * gemm::kRows, rows, pbuf + (mp - mp0) * panel_bytes);
          }
        }
        for (int64_t jb = it.jb0; jb < it.jb1; ++jb) {
          const ColumnBlock cb = column_block(w, jb, ocg);
          const int np = cb.np, ncols = cb.ncols;
          const int64_t col0 = cb.col0;
          const int8_t* b = cb.b;
          int64_t mp = mp0;
#if defined(Q8_EPI_MULTIVERSION)
          if (fused && !epi.bad[n]) {
            // the whole panels of the chunk in one call
            const int64_t whole = std::min(mp1, seg_rows / gemm::kRows) - mp0;
            if (whole > 0) {
              // (one tap: its table is the 6 bases already, so no based form)
              const FusedTile tile{ptrs.data(), ptrs_per_panel, taps,    nullptr, taps > 1 ? tap_off.data() : nullptr,
                                   based.data(), nullptr,        nullptr, mp0 * gemm::kRows, whole};
              fused_tile_fn(epi, np, ncols)(epi, tile, G.cg4 / 4, b, w.panel_stride, n, g * ocg + col0, ncols,
                                            w.rowsums + col0);
              mp += whole;
            }
          }
#endif
          for (; mp < mp1; ++mp) {
            const int64_t row0 = mp * gemm::kRows;
            const int mr = static_cast<int>(std::min<int64_t>(gemm::kRows, seg_rows - row0));
            if (in_place) {
              kern.int8_conv_tile(ptrs.data() + (mp - mp0) * ptrs_per_panel, taps, G.cg4 / 4, b, w.panel_stride, mr,
                                  np, c32);
              epi.run_tile(n, row0, mr, g * ocg + col0, ncols, c32, gemm::kTileCols, w.rowsums + col0);
              continue;
            }
            const uint8_t* a = pbuf + (mp - mp0) * panel_bytes;
            if (!long_k) {
              kern.int8_tile(a, b, w.panel_stride, 0, kgroups, mr, np, c32);
              epi.run_tile(n, row0, mr, g * ocg + col0, ncols, c32, gemm::kTileCols, w.rowsums + col0);
              continue;
            }
            // Long K: exact int32 chunks summed in int64.
            std::fill(c64.begin(), c64.end(), 0);
            for (int64_t g0 = 0; g0 < kgroups; g0 += gemm::kMaxGroups) {
              const int64_t g1 = std::min(kgroups, g0 + gemm::kMaxGroups);
              kern.int8_tile(a, b, w.panel_stride, g0, g1, mr, np, c32);
              for (int r = 0; r < mr; ++r) {
                for (int j = 0; j < np * gemm::kPanel; ++j) {
                  c64[r * gemm::kTileCols + j] += c32[r * gemm::kTileCols + j];
                }
              }
            }
            for (int r = 0; r < mr; ++r) {
              epi.run(n, row0 + r, g * ocg + col0, ncols, c64.data() + r * gemm::kTileCols, w.rowsums + col0);
            }
          }
        }
      }
    }
  });
}

#if defined(Q8_EPI_MULTIVERSION)
// (GCC 12 warns of an uninitialized operand inside its own masked intrinsics.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
// Depthwise 3x3 (dilation 1, stride 1 or 2) on AVX-512 VNNI with the epilogue fused,
// for uint8 output (fast_requant, no residual, no NaN sample). Per 64 channels, an
// input column (3 rows) is byte-interleaved into quads (x0, x1, x2, 0) per channel
// (vpunpck{l,h}bw then vpunpck{l,h}wd: 8 shuffles), and each output takes 3 vpdpbusd
// per 16 channels, one per kernel column, against the weights interleaved the same
// way (w0j, w1j, w2j, 0): the same exact integer sums as the vpmaddwd kernels. The
// column is shared by the outputs whose windows contain it (stride 1: 3, stride 2:
// 2 for the even ones). The unpacks leave vector k's lane L holding channels
// 16 L + 4 k .. 16 L + 4 k + 3; the epilogue's column terms are laid out in that
// order (dw_vnni_terms), and vpackssdw (k = 0, 1 and 2, 3) then vpackuswb put every
// lane's 16 codes back in channel order: one 64-byte store per output, no permute.
// The interleaved quads (x0, x1, x2, 0) of input column ix of 3 rows (rows[i], or the
// pad row where the row or the column is outside), channels [c0, c0 + 64) under m.
__attribute__((target(Q8_AVX512_TARGET), always_inline)) inline void dw_column_vnni(
    const uint8_t* const* rows, const bool* yok, int64_t ix, int64_t w, int64_t C, int64_t c0, __mmask64 m,
    const uint8_t* padrow, __m512i* q) {
  __m512i xr[3];
  for (int i = 0; i < 3; ++i) {
    const uint8_t* src = (yok[i] && ix >= 0 && ix < w) ? rows[i] + ix * C + c0 : padrow;
    xr[i] = _mm512_maskz_loadu_epi8(m, src);
  }
  const __m512i zero = _mm512_setzero_si512();
  const __m512i a = _mm512_unpacklo_epi8(xr[0], xr[1]), b = _mm512_unpackhi_epi8(xr[0], xr[1]);
  const __m512i cz = _mm512_unpacklo_epi8(xr[2], zero), dz = _mm512_unpackhi_epi8(xr[2], zero);
  q[0] = _mm512_unpacklo_epi16(a, cz);
  q[1] = _mm512_unpackhi_epi16(a, cz);
  q[2] = _mm512_unpacklo_epi16(b, dz);
  q[3] = _mm512_unpackhi_epi16(b, dz);
}

template <int S, bool LO>
__attribute__((target(Q8_AVX512_TARGET ",avx512vnni"), noinline)) void dw3x3_vnni_row(
    const Avx512Epi& c, const uint8_t* x, const Geometry& G, const uint8_t* padrow, int64_t n, int64_t oh,
    int64_t groups64, const int8_t* wq, const int32_t* nz, const float* sv, const float* bv) {
  const Epilogue& e = *c.e;
  const int64_t C = G.c;
  const uint8_t* rows[3];
  bool yok[3];
  for (int i = 0; i < 3; ++i) {
    const int64_t iy = oh * G.sh - G.ph + i;
    yok[i] = iy >= 0 && iy < G.h;
    rows[i] = yok[i] ? x + iy * G.w * C : nullptr;
  }
  const __m512i zp16 = _mm512_set1_epi16(static_cast<int16_t>(e.out_zp));
  uint8_t* out = e.out_u8 + (n * e.pixels + oh * G.ow) * e.oc;
  for (int64_t gi = 0; gi < groups64; ++gi) {
    const int64_t c0 = 64 * gi;
    const int64_t left = C - c0;
    const __mmask64 m = left >= 64 ? ~__mmask64{0} : ((__mmask64{1} << left) - 1);
    const int8_t* wg = wq + gi * 12 * 64;
    const int32_t* nzg = nz + gi * 64;
    const float* sg = sv + gi * 64;
    const float* bg = bv + gi * 64;
    __m512i col[3][4];
    int64_t ix0 = -G.pw;
    dw_column_vnni(rows, yok, ix0, G.w, C, c0, m, padrow, col[0]);
    if (S == 1) {
      dw_column_vnni(rows, yok, ix0 + 1, G.w, C, c0, m, padrow, col[1]);
    }
    for (int64_t ow = 0; ow < G.ow; ++ow, ix0 += S) {
      if (S == 2) {
        dw_column_vnni(rows, yok, ix0 + 1, G.w, C, c0, m, padrow, col[1]);
      }
      dw_column_vnni(rows, yok, ix0 + 2, G.w, C, c0, m, padrow, col[2]);
      __m512i code[4];
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) {
        __m512i acc = _mm512_load_si512(nzg + 16 * k);
        for (int j = 0; j < 3; ++j) {
          const __m512i w = _mm512_load_si512(wg + (j * 4 + k) * 64);
          asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(col[j][k]), "v"(w));
        }
        const __m512 y =
            avx512_packed_y<0>(c, acc, _mm512_load_ps(sg + 16 * k), _mm512_load_ps(bg + 16 * k), 0);
        code[k] = avx512_fast_code(c, y, LO);
      }
      const __m512i w01 = _mm512_adds_epi16(_mm512_packs_epi32(code[0], code[1]), zp16);
      const __m512i w23 = _mm512_adds_epi16(_mm512_packs_epi32(code[2], code[3]), zp16);
      _mm512_mask_storeu_epi8(out + ow * e.oc + c0, m, _mm512_packus_epi16(w01, w23));
      for (int k = 0; k < 4; ++k) {
        if (S == 1) {
          col[0][k] = col[1][k];
          col[1][k] = col[2][k];
        } else {
          col[0][k] = col[2][k];
        }
      }
    }
  }
}

// The 4 x 4 transpose of 128-bit blocks: out[k] block L = in[L] block k. (From the
// channel order to the lanes' order of dw_column_vnni, and back.)
__attribute__((target(Q8_AVX512_TARGET), always_inline)) inline void transpose_blocks4(const __m512i* in,
                                                                                      __m512i* out) {
  const __m512i t0 = _mm512_shuffle_i64x2(in[0], in[1], 0x44), t1 = _mm512_shuffle_i64x2(in[0], in[1], 0xEE);
  const __m512i t2 = _mm512_shuffle_i64x2(in[2], in[3], 0x44), t3 = _mm512_shuffle_i64x2(in[2], in[3], 0xEE);
  out[0] = _mm512_shuffle_i64x2(t0, t2, 0x88);
  out[1] = _mm512_shuffle_i64x2(t0, t2, 0xDD);
  out[2] = _mm512_shuffle_i64x2(t1, t3, 0x88);
  out[3] = _mm512_shuffle_i64x2(t1, t3, 0xDD);
}

// The column terms of sample n in the lanes' order (per group of 64 channels, 4
// vectors each): nz = -z * wsum (wrapping), sv = sx * sw, bv = the bias or 0; 0 past C.
__attribute__((target(Q8_AVX512_TARGET), noinline)) void dw_vnni_terms(const Epilogue& e, int64_t n,
                                                                      const int32_t* wsum, int64_t C,
                                                                      int64_t groups64, int32_t* nz, float* sv,
                                                                      float* bv) {
  const __m512i zv = _mm512_set1_epi32(e.zx[n]);
  const __m512 sxv = _mm512_set1_ps(e.sx[n]);
  for (int64_t gi = 0; gi < groups64; ++gi) {
    __m512i a[4], b[4], d[4], t[4];
    for (int L = 0; L < 4; ++L) {
      const int64_t c0 = 64 * gi + 16 * L;
      const __mmask16 k = tail_mask(static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(16, C - c0))));
      a[L] = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_mullo_epi32(zv, _mm512_maskz_loadu_epi32(k, wsum + c0)));
      b[L] = _mm512_castps_si512(_mm512_mul_ps(sxv, _mm512_maskz_loadu_ps(k, e.sw + c0)));
      d[L] = e.bias != nullptr ? _mm512_castps_si512(_mm512_maskz_loadu_ps(k, e.bias + c0)) : _mm512_setzero_si512();
    }
    transpose_blocks4(a, t);
    for (int q = 0; q < 4; ++q) {
      _mm512_store_si512(nz + gi * 64 + 16 * q, t[q]);
    }
    transpose_blocks4(b, t);
    for (int q = 0; q < 4; ++q) {
      _mm512_store_si512(sv + gi * 64 + 16 * q, t[q]);
    }
    transpose_blocks4(d, t);
    for (int q = 0; q < 4; ++q) {
      _mm512_store_si512(bv + gi * 64 + 16 * q, t[q]);
    }
  }
}

// The weights of conv_depthwise_vnni: per group of 64 channels, [3 kernel columns j]
// [4 vectors] of 64 bytes, (w0j, w1j, w2j, 0) per channel, in the lanes' order
// (interleaved as dw_column_vnni interleaves the input; w is zero past C).
__attribute__((target(Q8_AVX512_TARGET), noinline)) void dw_vnni_weights(const int8_t* w, int64_t ldw,
                                                                        int64_t groups64, int8_t* wq) {
  const __m512i zero = _mm512_setzero_si512();
  for (int64_t gi = 0; gi < groups64; ++gi) {
    for (int j = 0; j < 3; ++j) {
      const int8_t* wj = w + j * ldw + 64 * gi;
      const __m512i r0 = _mm512_loadu_si512(wj), r1 = _mm512_loadu_si512(wj + 3 * ldw),
                    r2 = _mm512_loadu_si512(wj + 6 * ldw);
      const __m512i a = _mm512_unpacklo_epi8(r0, r1), b = _mm512_unpackhi_epi8(r0, r1);
      const __m512i cz = _mm512_unpacklo_epi8(r2, zero), dz = _mm512_unpackhi_epi8(r2, zero);
      int8_t* q = wq + (gi * 12 + j * 4) * 64;
      _mm512_store_si512(q, _mm512_unpacklo_epi16(a, cz));
      _mm512_store_si512(q + 64, _mm512_unpackhi_epi16(a, cz));
      _mm512_store_si512(q + 128, _mm512_unpacklo_epi16(b, dz));
      _mm512_store_si512(q + 192, _mm512_unpackhi_epi16(b, dz));
    }
  }
}

// Items [begin, end) (sample, output row) of conv_depthwise_vnni. Per sample (its
// qparams): the pad row (the zero point) and the column terms in the lanes' channel
// order: -z * wsum, sx * sw, the bias (0 without one).
__attribute__((target(Q8_AVX512_TARGET ",avx512vnni"), noinline)) void dw3x3_vnni_items(
    const uint8_t* xq, const Geometry& G, const int32_t* wsum, const Epilogue& e, const int8_t* wq, int64_t groups64,
    int64_t begin, int64_t end) {
  const int64_t C = G.c;
  std::vector<uint8_t> padrow(static_cast<size_t>(round_up(C, 64)));
  const std::unique_ptr<int32_t[]> buf(new int32_t[static_cast<size_t>(3 * groups64 * 64 + 16)]);
  int32_t* nz = align64(buf.get());
  float* sv = reinterpret_cast<float*>(nz + groups64 * 64);
  float* bv = sv + groups64 * 64;
  const bool lo = (packed_mode(e) & kFusedLo) != 0;  // (no residual here)
  int64_t last_n = -1;
  Avx512Epi c{};
  for (int64_t item = begin; item < end; ++item) {
    const int64_t n = item / G.oh, oh = item % G.oh;
    if (n != last_n) {
      last_n = n;
      c = make_avx512_epi(e, n);
      std::fill(padrow.begin(), padrow.end(), static_cast<uint8_t>(e.zx[n]));
      dw_vnni_terms(e, n, wsum, C, groups64, nz, sv, bv);
    }
    const uint8_t* x = xq + n * G.h * G.w * C;
    if (G.sw == 1) {
      (lo ? &dw3x3_vnni_row<1, true> : &dw3x3_vnni_row<1, false>)(c, x, G, padrow.data(), n, oh, groups64, wq, nz,
                                                                   sv, bv);
    } else {
      (lo ? &dw3x3_vnni_row<2, true> : &dw3x3_vnni_row<2, false>)(c, x, G, padrow.data(), n, oh, groups64, wq, nz,
                                                                   sv, bv);
    }
  }
}

// conv_depthwise's fused AVX-512 VNNI path (dw3x3_vnni_row); false where it does not apply.
bool conv_depthwise_vnni(const uint8_t* xq, const Geometry& G, const ConvPackedView& wv, const Epilogue& epi) {
  if (active_isa() != Isa::AVX512_VNNI || !epi.fast_requant || epi.res_u8 != nullptr || epi.res_f != nullptr ||
      G.kh != 3 || G.kw != 3 ||
      G.dh != 1 || G.dw != 1 || G.sh != G.sw || (G.sw != 1 && G.sw != 2) || G.c != G.oc) {
    return false;
  }
  for (int64_t n = 0; n < G.n; ++n) {
    if (epi.bad[n]) {
      return false;
    }
  }
  const int64_t C = G.c, ldw = wv.s.block_bytes;
  const int64_t groups64 = ceil_div(C, 64);
  // The weights in the lanes' channel order, per group of 64: [3 kernel columns][4 vectors] of
  // 64 bytes, (w0j, w1j, w2j, 0) per channel.
  const auto wq_buf = std::unique_ptr<int8_t[]>(new int8_t[static_cast<size_t>(groups64 * 12 * 64 + 64)]);
  int8_t* wq = align64(wq_buf.get());
  dw_vnni_weights(wv.dw_weights, ldw, groups64, wq);
  at::parallel_for(0, G.n * G.oh, 1, [&](int64_t begin, int64_t end) {
    dw3x3_vnni_items(xq, G, wv.dw_sums, epi, wq, groups64, begin, end);
  });
  return true;
}
#pragma GCC diagnostic pop
#endif

void conv_depthwise(const uint8_t* xq, const Geometry& G, const ConvPackedView& wv, const Epilogue& epi) {
#if defined(Q8_EPI_MULTIVERSION)
  if (conv_depthwise_vnni(xq, G, wv, epi)) {
    return;
  }
#endif
  const auto& kern = depthwise_kernels();
  conv::DepthwiseGeometry dg{};
  dg.H = G.h;
  dg.W = G.w;
  dg.C = G.c;
  dg.kh = static_cast<int>(G.kh);
  dg.kw = static_cast<int>(G.kw);
  dg.sh = static_cast<int>(G.sh);
  dg.sw = static_cast<int>(G.sw);
  dg.ph = static_cast<int>(G.ph);
  dg.pw = static_cast<int>(G.pw);
  dg.dh = static_cast<int>(G.dh);
  dg.dw = static_cast<int>(G.dw);
  dg.OH = G.oh;
  dg.OW = G.ow;
  const int64_t ldacc = round_up(G.c, 16);
  constexpr int64_t kOwChunk = 32;
  at::parallel_for(0, G.n * G.oh, 1, [&](int64_t begin, int64_t end) {
    // (not a std::vector: its zero fill was 4 % of a 960-channel 7x7 layer)
    const std::unique_ptr<int32_t[]> acc_buf(new int32_t[static_cast<size_t>(kOwChunk * ldacc)]);
    int32_t* const acc = acc_buf.get();
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / G.oh, oh = item % G.oh;
      const uint8_t* x = xq + n * G.h * G.w * G.c;
      for (int64_t ow0 = 0; ow0 < G.ow; ow0 += kOwChunk) {
        const int64_t ow1 = std::min(G.ow, ow0 + kOwChunk);
        kern.acc_row(x, dg, wv.dw_weights, wv.s.block_bytes, static_cast<uint8_t>(epi.zx[n]), oh, ow0, ow1,
                     acc, ldacc);
        epi.run_tile(n, oh * G.ow + ow0, static_cast<int>(ow1 - ow0), 0, static_cast<int>(G.oc), acc, ldacc,
                     wv.dw_sums);
      }
    }
  });
}

#if defined(Q8_EPI_MULTIVERSION)
// Three planes of cnt bytes (R, G, B) to cnt interleaved 3-byte pixels: per 16
// pixels, each of the 3 output vectors is the OR of one pshufb of each plane.
__attribute__((target("ssse3"), noinline)) void interleave3_ssse3(const uint8_t* a, const uint8_t* b,
                                                                  const uint8_t* c, uint8_t* dst, int64_t cnt) {
  struct Masks {
    alignas(16) int8_t m[3][3][16];  // [output vector][plane][byte]
    Masks() {
      for (int o = 0; o < 3; ++o) {
        for (int k = 0; k < 16; ++k) {
          const int g = 16 * o + k;
          for (int ch = 0; ch < 3; ++ch) {
            m[o][ch][k] = static_cast<int8_t>(g % 3 == ch ? g / 3 : -128);
          }
        }
      }
    }
  };
  static const Masks M;
  const auto mask = [](int o, int ch) { return _mm_load_si128(reinterpret_cast<const __m128i*>(M.m[o][ch])); };
  int64_t p = 0;
  for (; p + 16 <= cnt; p += 16) {
    const __m128i va = _mm_loadu_si128(reinterpret_cast<const __m128i*>(a + p));
    const __m128i vb = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + p));
    const __m128i vc = _mm_loadu_si128(reinterpret_cast<const __m128i*>(c + p));
    for (int o = 0; o < 3; ++o) {
      const __m128i v = _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(va, mask(o, 0)), _mm_shuffle_epi8(vb, mask(o, 1))),
                                     _mm_shuffle_epi8(vc, mask(o, 2)));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 3 * p + 16 * o), v);
    }
  }
  for (; p < cnt; ++p) {
    dst[3 * p] = a[p];
    dst[3 * p + 1] = b[p];
    dst[3 * p + 2] = c[p];
  }
}
#endif

// The value of a one-element scale / zero point (CPU tensors: read on the host).
float scale_value(const char* op, const at::Tensor& t, const char* name) {
  const float v = t.item<float>();
  TORCH_CHECK(std::isfinite(v) && v >= FLT_MIN, "q8.", op, ": ", name,
              " must be finite and at least the smallest normal float32 (so that 1 / scale is finite), got ", v);
  return v;
}

int32_t zero_point_value(const char* op, const at::Tensor& t, const char* name) {
  const int64_t v = t.item<int64_t>();  // (one element, checked; truncates a float value, as .to(kLong))
  TORCH_CHECK(v >= 0 && v <= 255, "q8.", op, ": ", name, " must lie in [0, 255] (uint8 codes), got ", v);
  return static_cast<int32_t>(v);
}

at::Tensor conv2d_cpu(const at::Tensor& input, const at::Tensor& packed, const at::Tensor& weight_scale,
                      const std::optional<at::Tensor>& bias, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                      at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, c10::string_view activation,
                      const std::optional<at::Tensor>& input_scale, const std::optional<at::Tensor>& input_zero_point,
                      const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& residual_scale,
                      const std::optional<at::Tensor>& residual_zero_point, std::optional<double> clamp_min,
                      std::optional<double> clamp_max, const std::optional<at::Tensor>& output_scale,
                      const std::optional<at::Tensor>& output_zero_point) {
  const char* op = "conv2d";
  const ConvArgs a = detail::check_conv2d_args(op, input, packed, weight_scale, bias, kernel_size, stride, padding,
                                               dilation, groups, activation, input_scale, input_zero_point, residual,
                                               residual_scale, residual_zero_point, clamp_min, clamp_max,
                                               output_scale, output_zero_point);
  check_cpu(op, input, "input");
  Geometry G{a.n, a.c, a.h, a.w, a.oc, a.oh, a.ow, a.kh, a.kw, a.sh, a.sw, a.ph, a.pw, a.dh, a.dw, a.groups,
             a.c / a.groups, round_up(a.c / a.groups, 4)};
  const ConvPackedView wv =
      conv_packed_for(op, packed, G.oc, G.cg, G.kh, G.kw, G.groups, "input.size(1) / groups, weight_scale and kernel_size");
  // The depthwise table sums in int32 (at most 65536 taps keeps 255 * 128 * taps < 2^31).
  TORCH_CHECK(!wv.depthwise || G.kh * G.kw <= 65536, "q8.", op,
              ": a depthwise kernel must have at most 65536 taps (kernel_h * kernel_w), got ", G.kh, " x ", G.kw);
  // Values of the scalar qparams (CPU tensors: read on the host).
  Epilogue epi{};
  int32_t static_zp = 0;
  float static_scale = 1.f;
  if (a.mode == ConvMode::Static) {
    static_scale = scale_value(op, *input_scale, "input_scale");
    static_zp = zero_point_value(op, *input_zero_point, "input_zero_point");
  }
  if (a.uint8_residual) {
    epi.res_scale = scale_value(op, *residual_scale, "residual_scale");
    epi.res_zp = zero_point_value(op, *residual_zero_point, "residual_zero_point");
  }
  if (a.uint8_output) {
    epi.out_inv = 1.0f / scale_value(op, *output_scale, "output_scale");
    epi.out_zp = zero_point_value(op, *output_zero_point, "output_zero_point");
  }
  const bool float_out_half = !a.uint8_output && input.scalar_type() != at::kFloat && !a.uint8_input;
  auto out = at::empty({G.n, G.oc, G.oh, G.ow},
                       input.options().dtype(a.uint8_output ? at::kByte : at::kFloat).memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) {
    return float_out_half ? out.to(input.scalar_type()) : out;
  }
  // The uint8 NHWC input, per-sample qparams and the NaN / Inf flags.
  std::vector<float> sx(G.n, static_scale);
  std::vector<int32_t> zx(G.n, static_zp);
  std::vector<uint8_t> bad(G.n, 0);
  at::Tensor xq;
  if (a.uint8_input) {
    xq = input.contiguous(at::MemoryFormat::ChannelsLast);
  } else {
    // A contiguous NCHW input is transposed while it is quantized; any other layout
    // is made channels_last first.
    at::Tensor xf = input.to(at::kFloat);
    const bool nchw = xf.is_contiguous() && !xf.is_contiguous(at::MemoryFormat::ChannelsLast);
    if (!nchw) {
      xf = xf.contiguous(at::MemoryFormat::ChannelsLast);
    }
    const int64_t per = G.c * G.h * G.w, hw = G.h * G.w;
    const float* xp = xf.const_data_ptr<float>();
    if (a.mode == ConvMode::Dynamic) {
      // Per-sample min / max over the sample's contiguous block (exact, so the same
      // on every ISA); a sample with NaN / Inf is flagged by the quantization pass
      // below and its qparams are then unused.
      const auto& kern = gemm::active_kernels();
      at::parallel_for(0, G.n, 1, [&](int64_t begin, int64_t end) {
        for (int64_t n = begin; n < end; ++n) {
          float lo = 0.f, hi = 0.f;
          if (per > 0) {
            kern.row_min_max(xp + n * per, per, &lo, &hi);
          }
          if (std::isfinite(lo) && std::isfinite(hi)) {
            detail::compute_qparams(lo, hi, 0, 255, /*symmetric=*/false, &sx[n], &zx[n]);
          } else {
            sx[n] = 1.f;
            zx[n] = 0;
          }
        }
      });
    }
    xq = at::empty({G.n, G.h, G.w, G.c}, input.options().dtype(at::kByte));
    uint8_t* qp = xq.mutable_data_ptr<uint8_t>();
    std::unique_ptr<std::atomic<uint8_t>[]> nonfinite(new std::atomic<uint8_t>[std::max<int64_t>(G.n, 1)]);
    for (int64_t n = 0; n < G.n; ++n) {
      nonfinite[n].store(0);
    }
    if (!nchw) {
      const int64_t total = G.n * per;
      at::parallel_for(0, total, 1 << 14, [&](int64_t begin, int64_t end) {
        int64_t i = begin;
        while (i < end) {
          const int64_t n = i / per;
          const int64_t stop = std::min(end, (n + 1) * per);
          const float inv = 1.0f / sx[n];
          const float z = static_cast<float>(zx[n]);
          const uint32_t nf = quantize_span(xp + i, qp + i, stop - i, inv, z);
          i = stop;
          if (nf != 0) {
            nonfinite[n].store(1);
          }
        }
      });
    } else {
      // NCHW: per block of pixels, each channel's contiguous run is quantized by
      // quantize_span (vectorized; the same codes as quantize_code) into a [C][kPix]
      // buffer, then interleaved into NHWC (C == 1: straight into the output).
      constexpr int64_t kPix = 256;
      const int64_t blocks = ceil_div(hw, kPix);
#if defined(Q8_EPI_MULTIVERSION)
      const bool ssse3 = active_isa() != Isa::DEFAULT;  // (every AVX2 / AVX-512 CPU has SSSE3)
#else
      constexpr bool ssse3 = false;
#endif
      const int64_t grain = std::max<int64_t>(1, (1 << 15) / std::max<int64_t>(G.c * kPix, 1));
      at::parallel_for(0, G.n * blocks, grain, [&](int64_t begin, int64_t end) {
        std::vector<uint8_t> tmp(static_cast<size_t>(G.c == 1 ? 0 : G.c * kPix));
        for (int64_t item = begin; item < end; ++item) {
          const int64_t n = item / blocks, p0 = (item % blocks) * kPix, p1 = std::min(hw, p0 + kPix);
          const int64_t cnt = p1 - p0;
          const float inv = 1.0f / sx[n];
          const float z = static_cast<float>(zx[n]);
          uint32_t nf = 0;
          const float* src = xp + n * per + p0;
          uint8_t* dst = qp + n * per + p0 * G.c;
          if (G.c == 1) {
            nf |= quantize_span(src, dst, cnt, inv, z);
          } else {
            for (int64_t c = 0; c < G.c; ++c) {
              nf |= quantize_span(src + c * hw, tmp.data() + c * kPix, cnt, inv, z);
            }
            const uint8_t* t = tmp.data();
            if (G.c == 3 && ssse3) {  // the RGB stem
#if defined(Q8_EPI_MULTIVERSION)
              interleave3_ssse3(t, t + kPix, t + 2 * kPix, dst, cnt);
#endif
            } else if (G.c == 3) {
              for (int64_t p = 0; p < cnt; ++p) {
                dst[3 * p] = t[p];
                dst[3 * p + 1] = t[kPix + p];
                dst[3 * p + 2] = t[2 * kPix + p];
              }
            } else {
              for (int64_t p = 0; p < cnt; ++p) {
                for (int64_t c = 0; c < G.c; ++c) {
                  dst[p * G.c + c] = t[c * kPix + p];
                }
              }
            }
          }
          if (nf != 0) {
            nonfinite[n].store(1);
          }
        }
      });
    }
    for (int64_t n = 0; n < G.n; ++n) {
      bad[n] = nonfinite[n].load();
    }
  }
  const auto sw = weight_scale.contiguous();
  at::Tensor b, rf, ru;
  if (bias.has_value()) {
    b = bias->to(at::kFloat).contiguous();
  }
  if (residual.has_value()) {
    if (a.uint8_residual) {
      ru = residual->contiguous(at::MemoryFormat::ChannelsLast);
    } else {
      rf = residual->to(at::kFloat).contiguous(at::MemoryFormat::ChannelsLast);
    }
  }
  epi.oc = G.oc;
  epi.pixels = G.oh * G.ow;
  epi.sw = sw.const_data_ptr<float>();
  epi.bias = b.defined() ? b.const_data_ptr<float>() : nullptr;
  epi.res_f = rf.defined() ? rf.const_data_ptr<float>() : nullptr;
  epi.res_u8 = ru.defined() ? ru.const_data_ptr<uint8_t>() : nullptr;
  epi.has_lo = clamp_min.has_value();
  epi.has_hi = clamp_max.has_value();
  epi.lo = epi.has_lo ? static_cast<float>(*clamp_min) : 0.f;
  epi.hi = epi.has_hi ? static_cast<float>(*clamp_max) : 0.f;
  epi.out_f = a.uint8_output ? nullptr : out.mutable_data_ptr<float>();
  epi.out_u8 = a.uint8_output ? out.mutable_data_ptr<uint8_t>() : nullptr;
  epi.sx = sx.data();
  epi.zx = zx.data();
  epi.bad = bad.data();
  epi.level = epilogue_level();
  set_fast_requant(epi, G.n, sw, b);
  const uint8_t* xp = xq.const_data_ptr<uint8_t>();
  if (wv.depthwise) {
    conv_depthwise(xp, G, wv, epi);
  } else {
    conv_gemm(xp, G, wv, epi);
  }
  return float_out_half ? out.to(input.scalar_type()) : out;
}

} // namespace

TORCH_LIBRARY_IMPL(q8, CPU, m) {
  m.impl("pack_conv_weight", &pack_conv_weight_cpu);
  m.impl("unpack_conv_weight", &unpack_conv_weight_cpu);
  m.impl("conv2d", &conv2d_cpu);
}

} // namespace q8::cpu
