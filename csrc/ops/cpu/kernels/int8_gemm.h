// CPU kernels of the int8 linear layer, one table per instruction set
// (kernels/int8_gemm_{avx512_vnni,avx_vnni,avx2,default}.cpp, each compiled with
// its own flags; cpu::gemm_kernels() picks one from the active ISA family).
//
// Layouts (csrc/ops/cpu/packed_weight.h describes the whole packed tensor):
//  - weights: panels of kPanel = 16 output columns; inside a panel, groups of
//    kGroup = 4 consecutive k, each group 64 bytes [16 columns][4 k] (int8), so a
//    group of one panel is one 512-bit vpdpbusd operand. K is zero-padded to a
//    multiple of 4 and N to a multiple of 16. Panel p starts at p * panel_stride.
//  - activations (uint8, the int8 path): panels of kRows = 6 rows,
//    [group][6 rows][4 k]; k beyond K is 0.
//  - activations (float, the weight-only path): rows of float32 with K padded
//    with zeros to a multiple of 4.
//
// Integer results are exact and identical on every ISA: each path sums the same
// uint8 x int8 products into int32 lanes (VNNI without saturation, or exact int16
// products with vpmaddwd). A call covers at most kMaxGroups groups (65536 k), so
// that 255 * 128 * 65536 < 2^31 and the int32 sums cannot overflow; longer K is
// summed in chunks into int64 by the caller.
//
// Float epilogues use the same IEEE operations in the same order on every ISA
// (the files are compiled with -ffp-contract=off):
//   y = float(acc - zp * wsum) * (sx * sw) + bias.
#pragma once

#include <cstdint>

namespace q8::cpu::gemm {

constexpr int kPanel = 16;
constexpr int kGroup = 4;
constexpr int kGroupBytes = kPanel * kGroup;  // 64
constexpr int kRows = 6;                      // rows per activation panel
constexpr int kMaxPanels = 4;                 // panels per tile (64 columns)
constexpr int kTileCols = kPanel * kMaxPanels;
constexpr int64_t kMaxGroups = 16384;         // groups per int32 chunk

struct GemmKernels {
  const char* name;
  // c[r * kTileCols + j] = sum over groups [g0, g1) of a row r x column j, for
  // r < mr <= kRows and j < np * 16, np <= kMaxPanels. g1 - g0 <= kMaxGroups.
  // a: an activation panel; b: panel 0 of the tile.
  void (*int8_tile)(const uint8_t* a, const int8_t* b, int64_t panel_stride, int64_t g0, int64_t g1, int mr,
                    int np, int32_t* c);
  // Float tile of the weight-only path: c[r * kTileCols + j] = sum over k in
  // groups [g0, g1) of x[r * ldx + k] * w[j][k] (float32 accumulation),
  // r < mr <= 4, j < np * 16.
  void (*f32_tile)(const float* x, int64_t ldx, const int8_t* b, int64_t panel_stride, int64_t g0, int64_t g1,
                   int mr, int np, float* c);
  // Epilogue of one int32 tile: for r < mr, j < ncols,
  //   y[r * ldy + j] = float(c[r][j] - zp[r] * wsum[j]) * (sx[r] * sw[j]) (+ bias[j] when bias).
  void (*int8_epilogue)(const int32_t* c, int mr, int ncols, const int32_t* zp, const float* sx,
                        const int32_t* wsum, const float* sw, const float* bias, float* y, int64_t ldy);
  // Min and max of x[0, k) (0 when k = 0); unspecified when x holds NaN or +-Inf
  // (quantize_rows reports those rows).
  void (*row_min_max)(const float* x, int64_t k, float* mn, float* mx);
  // Quantizes rows r < rows of x (row stride ldx, k values each) into an
  // activation panel of `groups` groups:
  //   q = clamp(nearbyint(x * inv_scale[r]) + zp[r], 0, 255); k >= K stores 0.
  // Returns a bit mask of the rows that hold NaN or +-Inf.
  uint32_t (*quantize_rows)(const float* x, int64_t ldx, int64_t k, int rows, const float* inv_scale,
                        const int32_t* zp, uint8_t* panel, int64_t groups);
  // Dequantizes np whole panels (np * 16 weight rows) starting at b into float
  // rows: dst[j * ldd + k] = float(w[j][k]) * sw[j] for j < np * 16, k < groups * 4
  // (one IEEE multiply, the same on every ISA; padded k give 0).
  void (*dequant_panels)(const int8_t* b, int64_t panel_stride, int64_t groups, int np, const float* sw,
                         float* dst, int64_t ldd);
  // Implicit-GEMM tile of the convolution, reading the activations in place
  // instead of from a panel (null where the ISA's convolution builds panels):
  //   c[r * kTileCols + j] = sum over taps t < ntaps, k groups q < cgroups of
  //     rows[t * kRows + r][4 q + e] x w[j][(t * cgroups + q) * 4 + e], e < 4,
  // for r < mr <= kRows, j < np * 16, np <= kMaxPanels, ntaps * cgroups <= kMaxGroups.
  // b: panel 0 of the tile (weight group t * cgroups + q at that index, as int8_tile).
  // Each rows[t * kRows + r], r < mr, must have 4 * cgroups readable bytes.
  void (*int8_conv_tile)(const uint8_t* const* rows, int64_t ntaps, int64_t cgroups, const int8_t* b,
                         int64_t panel_stride, int mr, int np, int32_t* c);
};

const GemmKernels& gemm_default();
const GemmKernels& gemm_avx2();
const GemmKernels& gemm_avx_vnni();
const GemmKernels& gemm_avx512_vnni();
// The table for the active ISA family (cpu/isa.h): AVX512_VNNI -> avx512_vnni,
// AVX_VNNI -> avx_vnni, AVX512 and AVX2 -> avx2, DEFAULT -> default. Used by the
// linear and the convolution kernels alike (defined in cpu/linear.cpp).
const GemmKernels& active_kernels();

// Single-thread peak of one instruction ("vpdpbusd512", "vpdpbusd256", "fma512",
// "fma256") in GOP/s (a multiply-add counts 2), measured for about `ms`
// milliseconds; < 0 when this build or CPU lacks the instruction.
double peak_gops_avx512(const char* kind, int64_t ms);
double peak_gops_avx2(const char* kind, int64_t ms);

} // namespace q8::cpu::gemm
