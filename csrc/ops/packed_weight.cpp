// Sizes, checksum and validation of packed weights (see packed_weight.h).
#include "packed_weight.h"

#include <cstring>

#include <c10/util/Exception.h>

#include "checks.h"

namespace q8::detail {

CpuPackedSizes cpu_packed_sizes(int64_t n, int64_t k) {
  CpuPackedSizes s{};
  s.panels = (n + 15) / 16;
  s.groups = (k + 3) / 4;
  s.weight_offset = kPackHeaderBytes;
  s.rowsum_offset = s.weight_offset + s.panels * s.groups * 64;
  s.total_bytes = s.rowsum_offset + s.panels * 16 * 4;
  return s;
}

CudaPackedSizes cuda_packed_sizes(int64_t n, int64_t k) {
  CudaPackedSizes s{};
  s.n16 = (n + 15) / 16 * 16;
  s.k16 = (k + 15) / 16 * 16;
  s.weight_offset = kCudaPackHeaderBytes;
  s.rowsum_offset = s.weight_offset + s.n16 * s.k16;
  s.total_bytes = s.rowsum_offset + s.n16 * 4;
  return s;
}

uint64_t packed_checksum(const PackedHeader& header, const uint8_t* rowsums, int64_t rowsum_bytes) {
  PackedHeader h = header;
  h.checksum = 0;
  uint64_t acc = 0x6A09E667F3BCC909ull;
  auto mix = [&acc](uint64_t w) {
    acc ^= w;
    acc *= 0x9E3779B97F4A7C15ull;
    acc ^= acc >> 29;
  };
  uint64_t w;
  const auto* hp = reinterpret_cast<const uint8_t*>(&h);
  for (size_t i = 0; i < sizeof(h); i += 8) {
    std::memcpy(&w, hp + i, 8);
    mix(w);
  }
  for (int64_t i = 0; i + 8 <= rowsum_bytes; i += 8) {
    std::memcpy(&w, rowsums + i, 8);
    mix(w);
  }
  return acc;
}

namespace {
const char* layout_name(uint32_t layout) {
  switch (layout) {
    case static_cast<uint32_t>(PackLayout::CpuPanel16x4):
      return "cpu";
    case static_cast<uint32_t>(PackLayout::CudaRowMajor):
      return "cuda";
    default:
      return "unknown";
  }
}
} // namespace

PackedView check_packed_weight(const char* op, const at::Tensor& packed, PackLayout layout) {
  check_packed_container(op, packed);
  TORCH_CHECK(packed.is_contiguous(), "q8.", op, ": packed_weight must be contiguous");
  return check_packed_bytes(op, packed.const_data_ptr<uint8_t>(), packed.numel(), packed.device(), layout);
}

PackedView check_packed_bytes(const char* op, const uint8_t* base, int64_t numel, c10::Device device,
                              PackLayout layout) {
  TORCH_CHECK(numel >= kPackHeaderBytes, "q8.", op, ": packed_weight has ", numel,
              " bytes, fewer than its 64-byte header: not a q8 packed weight (or truncated)");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(base) % 4 == 0, "q8.", op,
              ": packed_weight must start 4-byte aligned (use the tensor q8.pack_weight returned, not a slice of one)");
  PackedView v{};
  std::memcpy(&v.header, base, sizeof(PackedHeader));
  const PackedHeader& h = v.header;
  TORCH_CHECK(h.magic == kPackMagic, "q8.", op,
              ": packed_weight does not start with the q8 packed-weight magic: make it with q8.pack_weight");
  TORCH_CHECK(h.version == kPackVersion, "q8.", op, ": packed_weight has format version ", h.version,
              ", this q8 reads version ", kPackVersion, ": repack the canonical weight with q8.pack_weight");
  TORCH_CHECK(h.layout == static_cast<uint32_t>(layout), "q8.", op, ": packed_weight was packed for the '",
              layout_name(h.layout), "' layout but this is the '", layout_name(static_cast<uint32_t>(layout)),
              "' kernel (", device, "): repack the canonical weight on this device with q8.pack_weight");
  TORCH_CHECK(h.n >= 0 && h.n < (int64_t{1} << 31) && h.k >= 0 && h.k <= kMaxPackedK, "q8.", op,
              ": packed_weight header is corrupt (out_features=", h.n, ", in_features=", h.k, ")");
  const CpuPackedSizes s = cpu_packed_sizes(h.n, h.k);
  TORCH_CHECK(h.weight_offset == s.weight_offset && h.rowsum_offset == s.rowsum_offset &&
                  h.total_bytes == s.total_bytes,
              "q8.", op, ": packed_weight header is corrupt (offsets do not match ", h.n, " x ", h.k, ")");
  TORCH_CHECK(numel == s.total_bytes, "q8.", op, ": packed_weight has ", numel, " bytes but its header (", h.n,
              " x ", h.k, ") needs ", s.total_bytes, ": truncated or extended");
  const int64_t rowsum_bytes = s.total_bytes - s.rowsum_offset;
  TORCH_CHECK(packed_checksum(h, base + s.rowsum_offset, rowsum_bytes) == h.checksum, "q8.", op,
              ": packed_weight checksum mismatch (the header or row sums were modified): repack with q8.pack_weight");
  v.base = base;
  v.weights = reinterpret_cast<const int8_t*>(base + s.weight_offset);
  v.rowsums = reinterpret_cast<const int32_t*>(base + s.rowsum_offset);
  v.panel_stride = s.groups * 64;
  v.groups = s.groups;
  v.panels = s.panels;
  return v;
}

} // namespace q8::detail
