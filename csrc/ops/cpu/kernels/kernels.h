// The table of vectorized CPU kernels. kernels/fake_quantize_vec.cpp is compiled
// once per CPU family (DEFAULT, AVX2, AVX512; see CMakeLists.txt) and each build
// fills one table; cpu::kernels() returns the one for the family in use.
//
// Every kernel works on a contiguous tensor seen as a flat array of `numel`
// elements whose quantization parameters follow one of two patterns:
//  - broadcast: runs of `inner` elements share one channel, channel = (i / inner) % channels
//    (per tensor: channels = 1, inner = numel);
//  - periodic: element i uses parameter index i % period (the host expands the
//    per-channel arrays to one period when runs would be too short to vectorize).
#pragma once

#include <cstdint>

#include <c10/core/ScalarType.h>

namespace q8::cpu {

struct ChannelParams {
  int64_t numel = 0;
  bool broadcast = true;
  int64_t inner = 1;     // broadcast: elements per run
  int64_t channels = 1;  // broadcast: number of channels
  int64_t period = 1;    // periodic: length of the parameter arrays
  const float* scale = nullptr;
  const float* inv_scale = nullptr;   // 1.0f / scale, as torch computes it
  const float* zero_point = nullptr;  // integer-valued, inside [quant_min, quant_max]
  float quant_min = 0.f;
  float quant_max = 0.f;
};

// Block size of the fused LSQ reduction (learnable_backward_rows).
constexpr int64_t kReduceBlock = 16384;

struct KernelTable {
  // y = fake_quant(x); mask (optional) = quant_min <= round(x / s) + z <= quant_max.
  void (*fake_quantize)(c10::ScalarType dtype, const void* x, void* y, bool* mask, const ChannelParams& p);
  // dx = grad * mask.
  void (*mask_backward)(c10::ScalarType dtype, const void* grad, const bool* mask, void* dx, int64_t n);
  // Straight-through dx and the per-element learnable-scale (LSQ) terms that are
  // summed into grad_scale / grad_zero_point (dzero_point may be null).
  void (*learnable_backward)(
      c10::ScalarType dtype, const void* grad, const void* x, void* dx, float* dscale, float* dzero_point,
      const ChannelParams& p);
  // Broadcast layout: as above with the terms summed per run, per block of
  // kReduceBlock elements, into row_ds / row_dz[block * rows_per_block + row - first
  // row of the block] (float64). Deterministic for any thread count.
  void (*learnable_backward_rows)(
      c10::ScalarType dtype, const void* grad, const void* x, void* dx, double* row_ds, double* row_dz,
      int64_t rows_per_block, const ChannelParams& p);
  // q = clamp(round(x / s) + z) stored as qdtype (int8, uint8, int32); NaN -> z.
  void (*quantize)(c10::ScalarType dtype, const void* x, c10::ScalarType qdtype, void* q, const ChannelParams& p);
  // y = (q - z) * s in float32, stored as dtype.
  void (*dequantize)(c10::ScalarType qdtype, const void* q, c10::ScalarType dtype, void* y, const ChannelParams& p);
  // Per channel (broadcast) or per period position (periodic) min and max over the
  // finite values, with non-finite values read as 0 (the range always holds 0).
  void (*min_max)(c10::ScalarType dtype, const void* x, float* mins, float* maxs, const ChannelParams& p);
};

namespace DEFAULT {
const KernelTable& kernel_table();
}
namespace AVX2 {
const KernelTable& kernel_table();
}
namespace AVX512 {
const KernelTable& kernel_table();
}

// The table for the CPU family in use (see isa.h).
const KernelTable& kernels();

} // namespace q8::cpu
