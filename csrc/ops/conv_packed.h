// The packed int8 conv weight: a plain 1-D uint8 tensor, rebuilt from the canonical
// form (int8 [OC, C / groups, KH, KW]) by q8.pack_conv_weight on the tensor's device,
// never saved.
//
//   bytes [0, 64)      ConvPackedHeader (little-endian)
//   [64, ...)          the kind's payload; CPU (layout = Cpu, cpu/conv.cpp):
//     GemmBlocks:  `groups` blocks, block g at 64 + g * block_bytes (block_bytes a
//                  multiple of 64); each block is a complete linear packed weight
//                  (packed_weight.h, the device's linear layout) of the group's
//                  [OC / groups, KH * KW * cg4] matrix, column (kh * KW + kw) * cg4 + c
//                  holding weight[o][c][kh][kw] (cg4 = C / groups rounded up to a
//                  multiple of 4, the extra columns 0), i.e. the channels-last
//                  im2col order.
//     Depthwise:   (groups == C == OC, one input channel per group) int8
//                  [KH * KW][ldw] with ldw = OC rounded up to 64 (zero beyond OC),
//                  then int32 weight sums [ldw] (sum over taps, per channel) at
//                  64 + payload offset given by wsum_offset.
//   CUDA (layout = Cuda, cuda/conv.cu):
//     GemmBlocks: block g at 64 + g * block_bytes, block_bytes = round_up(OCg16 * K16 + 4 * OCg16, 64):
//                 int8 [OCg16][K16] row-major, column (kh * KW + kw) * Cg + c (Cg = C / groups, NOT
//                 rounded up), zero beyond OC / groups and K = KH * KW * Cg, then int32 weight sums
//                 [OCg16]; OCg16, K16 = OC / groups and K rounded up to 16 (at::_int_mm's "TN"
//                 operand); wsum_offset = 0.
//     Depthwise:  int8 [KH * KW][ldw] (ldw = OC rounded up to 64; block_bytes = ldw), int32 sums [ldw]
//                 at the absolute offset wsum_offset = 64 + round_up(KH * KW * ldw, 64).
//     Alignment gaps are zero; the checksum (FNV-1a 64 of the header's first 56 bytes) covers the
//     header only (the sums stay on the device); conv2d compares the whole header on the device.
//
// The header names the format version, the device layout and the kind, the conv
// geometry, the offsets and total size, and a checksum of the header and the weight
// sums (CPU: checked on every call, O(OC); unpack_conv_weight checks every byte).
#pragma once

#include <cstdint>

namespace q8::detail {

constexpr uint32_t kConvPackMagic = 0x43503851u;  // "Q8PC"
constexpr uint32_t kConvPackVersion = 1;
constexpr int64_t kConvPackHeaderBytes = 64;

enum class ConvPackLayout : uint32_t {
  Cpu = 1,
  Cuda = 2,
};

enum class ConvPackKind : uint32_t {
  GemmBlocks = 1,
  Depthwise = 2,
};

struct ConvPackedHeader {
  uint32_t magic;
  uint32_t version;
  uint32_t layout;  // ConvPackLayout
  uint32_t kind;    // ConvPackKind
  int32_t out_channels;
  int32_t in_channels_per_group;
  int32_t kernel_h;
  int32_t kernel_w;
  int32_t groups;
  int32_t reserved;
  int64_t block_bytes;   // GemmBlocks: bytes per group block; Depthwise: ldw
  int64_t wsum_offset;   // Depthwise: offset of the int32 sums; GemmBlocks: 0
  uint64_t checksum;
};
static_assert(sizeof(ConvPackedHeader) == kConvPackHeaderBytes, "ConvPackedHeader must be 64 bytes");

} // namespace q8::detail
