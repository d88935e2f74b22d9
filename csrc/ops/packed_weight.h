// The packed int8 weight: a plain 1-D uint8 tensor that any device's linear
// kernel reads, rebuilt from the canonical form (int8 [N, K]) and never saved.
//
//   bytes [0, 64)            PackedHeader (little-endian)
//   [weight_offset, ...)     the weights in the device layout's blocked order
//   [rowsum_offset, ...)     int32 per (padded) output channel: sum_k w[n][k]
//
// The header names the format version and the device layout, holds N and K, the
// offsets and the total size, and a checksum (CPU layout: of the header and the
// row sums; CUDA layout: of the header only). The CPU kernels check all of that on
// every call (O(N), not O(N*K)); the CUDA kernels cannot read device memory from
// the host without a synchronization, so they check the tensor's size against N
// and K per call and the header on the device (float outputs become NaN on a
// mismatch). unpack_weight verifies everything, the weights against the row sums
// and the zero padding too.
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
  // CUDA (cuda/linear.cu): a 128-byte header region (the PackedHeader, then 64
  // zero bytes), the weights int8 row-major [N16][K16] (N and K padded to
  // multiples of 16 with zeros), then int32 row sums [N16]. The header's checksum
  // covers the header only (the row sums live in device memory, and writing or
  // checking them on the host would need a device synchronization).
  CudaRowMajor = 2,
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

// Sizes of the CUDA layout for N x K. The 128-byte header region makes a CUDA
// size differ from the CPU size of the same N x K (CPU: 64 + 64 P G + 64 P with
// P = ceil(N / 16), G = ceil(K / 4); CUDA: 128 + 256 P ceil(K / 16) + 64 P, equal
// only if P (G - 4 ceil(K / 16)) = 1, impossible since G <= 4 ceil(K / 16)), so
// the CUDA kernels, which check only the size per call (no device read), refuse
// a CPU-packed weight moved to the GPU.
constexpr int64_t kCudaPackHeaderBytes = 128;
struct CudaPackedSizes {
  int64_t n16;  // N rounded up to a multiple of 16
  int64_t k16;  // K rounded up to a multiple of 16 (the weights' row stride)
  int64_t weight_offset;
  int64_t rowsum_offset;
  int64_t total_bytes;
};
CudaPackedSizes cuda_packed_sizes(int64_t n, int64_t k);

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
// The same checks of `numel` bytes at `base` (4-byte aligned) that lie on `device`
// (named in the errors), e.g. one block of a packed conv weight, without a tensor view.
PackedView check_packed_bytes(const char* op, const uint8_t* base, int64_t numel, c10::Device device,
                              PackLayout layout);

} // namespace q8::detail
