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
  // One bag: acc[j] = the sum (or, `max`, the maximum) over e < count of
  // float(q[rows[e]][j]) * scale[rows[e]] (times weights[e] when weights is not null),
  // added in entry order from 0 (sum) or from the first entry (max); 0 for count == 0.
  // The accumulators stay in registers, a block of columns at a time, so each
  // block touches one cache line of every row of the bag at once.
  void (*bag_reduce)(bool max, const int8_t* q, const float* scale, int64_t dim, const int64_t* rows,
                     const float* weights, int64_t count, float* acc);
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
