// The portable int8 GEMM kernels (plain C++; see int8_gemm.h).
#include "int8_gemm_common.h"

namespace q8::cpu::gemm {

const GemmKernels& gemm_default() {
  static const GemmKernels table{
      "default",          &int8_tile_scalar, &f32_tile_scalar, &int8_epilogue_scalar, &row_min_max_scalar,
      &quantize_rows_scalar, &dequant_panels_scalar, &int8_conv_tile_scalar};
  return table;
}

} // namespace q8::cpu::gemm
