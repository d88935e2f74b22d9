// Row kernels of the int8 embedding ops (csrc/ops/cpu/embedding.cpp).
// kernels/embedding_vec.cpp is compiled once per CPU family (DEFAULT, AVX2,
// AVX512; see CMakeLists.txt); cpu::embedding_kernels() returns the table of the
// family in use. Every family runs the same IEEE float32 operations in the same
// order (tails included, no fused multiply-add), so all give bit-identical results.
#pragma once

#include <cstdint>

#include <c10/core/ScalarType.h>

namespace q8::cpu {

struct EmbeddingKernelTable {
  // out[j] = float(q[j]) * s for j < dim, stored as `dtype` (float32, float64,
  // float16 or bfloat16; float64 from the float32 product).
  void (*dequantize_row)(c10::ScalarType dtype, const int8_t* q, float s, void* out, int64_t dim);
  // acc[j] += float(q[j]) * s (times w when `weighted`: (q * s) * w).
  void (*accumulate_row)(const int8_t* q, float s, bool weighted, float w, float* acc, int64_t dim);
  // acc[j] = float(q[j]) * s when `first`, else max(acc[j], float(q[j]) * s).
  void (*max_row)(const int8_t* q, float s, bool first, float* acc, int64_t dim);
  // out[j] = acc[j] / divisor (when `divide`) or acc[j], stored as `dtype`.
  void (*store_row)(c10::ScalarType dtype, const float* acc, bool divide, float divisor, void* out, int64_t dim);
};

namespace DEFAULT {
const EmbeddingKernelTable& embedding_kernel_table();
}
namespace AVX2 {
const EmbeddingKernelTable& embedding_kernel_table();
}
namespace AVX512 {
const EmbeddingKernelTable& embedding_kernel_table();
}

// The table for the CPU family in use (see isa.h).
const EmbeddingKernelTable& embedding_kernels();

} // namespace q8::cpu
