// int8 GEMM kernels for AVX2 without VNNI (also used by AVX-512 CPUs that lack
// VNNI): exact int16 multiply-adds (see int8_gemm.h).
#include "int8_gemm_avx2_impl.h"

namespace q8::cpu::gemm {

const GemmKernels& gemm_avx2() {
  static const GemmKernels table{
      "avx2", &int8_tile_avx2, &f32_tile_avx2, &int8_epilogue_avx2, &row_min_max_avx2, &quantize_rows_avx2,
      &dequant_panels_avx2, /*int8_conv_tile=*/nullptr};
  return table;
}

} // namespace q8::cpu::gemm
