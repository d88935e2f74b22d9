// The packed int8 weight: a plain 1-D uint8 tensor that any device's linear
// kernel reads, rebuilt from the canonical form (int8 [N, K]) and never saved.
//
//   bytes [0, 64)            PackedHeader (little-endian)
//   [weight_offset, ...)     the weights in the device layout's blocked order
//   [rowsum_offset, ...)     int32 per (padded) output channel: sum_k w[n][k]
//
// The header names the format version and the device layout, holds N and K, the
// offsets and the total size, and a checksum of the header and the row sums.
// Every kernel checks all of that on every call (O(N), not O(N*K)); unpack_weight
// also verifies the weights against the row sums and the zero padding.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace q8::detail {

constexpr uint32_t kPackMagic = 0x57503851u;  // "Q8PW"
constexpr uint32_t kPackVersion = 1;
constexpr int64_t kPackHeaderBytes = 64;
// K up to 2^24 - 1 keeps every row sum (|sum| <= 128 * K) inside int32.
constexpr int64_t kMaxPackedK = (int64_t{1} << 24) - 1;

enum class PackLayout : uint32_t {
  // CPU: panels of 16 columns, groups of 4 k, 64 bytes per group
  // (cpu/kernels/int8_gemm.h); row sums for N padded to a multiple of 16.
  CpuPanel16x4 = 1,
};

struct PackedHeader {
  uint32_t magic;
  uint32_t version;
  uint32_t layout;
  uint32_t reserved;
  int64_t n;
  int64_t k;
  int64_t weight_offset;
  int64_t rowsum_offset;
  int64_t total_bytes;
  uint64_t checksum;
};
static_assert(sizeof(PackedHeader) == kPackHeaderBytes, "PackedHeader must be 64 bytes");

// Sizes of the CPU layout for N x K.
struct CpuPackedSizes {
  int64_t panels;  // ceil(N / 16)
  int64_t groups;  // ceil(K / 4)
  int64_t weight_offset;
  int64_t rowsum_offset;
  int64_t total_bytes;
};
CpuPackedSizes cpu_packed_sizes(int64_t n, int64_t k);

// The checksum stored in the header: of the header (checksum field as 0) and the
// row-sum bytes.
uint64_t packed_checksum(const PackedHeader& header, const uint8_t* rowsums, int64_t rowsum_bytes);

// A validated view of a packed weight.
struct PackedView {
  PackedHeader header;
  const uint8_t* base;
  const int8_t* weights;
  const int32_t* rowsums;
  int64_t panel_stride;  // bytes between panels (CPU layout)
  int64_t groups;
  int64_t panels;
};

// Checks dtype, shape, header, sizes and checksum of `packed` for `layout`;
// messages name `op` and the argument.
PackedView check_packed_weight(const char* op, const at::Tensor& packed, PackLayout layout);

} // namespace q8::detail
