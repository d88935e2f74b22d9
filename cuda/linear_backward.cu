// CUDA kernel of q8::linear_grad_input (schema: csrc/ops/linear.cpp; the CPU
// kernel is in csrc/ops/cpu/linear.cpp, the autograd kernel that calls it in
// csrc/ops/autograd/linear.cpp).
//
//   grad_input[..., K] = grad_output[..., N] . (weight_int8 . diag(weight_scale))
//
// First version: the int8 weights of the CUDA layout (row-major [N16][K16] after
// a 128-byte header region, packed_weight.h) are read through a view, converted
// to float32 with the scale folded in, and multiplied with at::mm in float32
// (TF32 only if the user enabled it for matmuls); the result is cast to
// grad_output's dtype. That costs a float32 copy of the weight (4 N K bytes) per
// call. A fused kernel (dequantize tiles in shared memory in front of tensor-core
// MMAs) would avoid it.
//
// Per-call validation reads no device memory (no synchronization): the packed
// tensor's size must be that of the CUDA layout for N x K (N = weight_scale.size(0),
// K = in_features); a CPU-packed weight is refused. The header itself is not
// compared here (the forward kernels compare it on the device).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "ops/checks.h"
#include "ops/packed_weight.h"

namespace q8::cuda {
namespace {

void check_cuda_tensor(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), "q8.", op, ": ", name, " must be a CUDA tensor for the CUDA kernel, got ", t.device());
}

at::Tensor linear_grad_input_cuda(const at::Tensor& grad_output, const at::Tensor& packed,
                                  const at::Tensor& weight_scale, c10::SymInt in_features) {
  const char* op = "linear_grad_input";
  detail::check_linear_grad_input_args(op, grad_output, packed, weight_scale, in_features);
  check_cuda_tensor(op, grad_output, "grad_output");
  check_cuda_tensor(op, packed, "packed_weight");
  c10::cuda::CUDAGuard guard(grad_output.device());
  const int64_t k = in_features.expect_int();
  const int64_t n = weight_scale.size(0);
  TORCH_CHECK(packed.is_contiguous(), "q8.", op, ": packed_weight must be contiguous");
  TORCH_CHECK(n < (int64_t{1} << 31) && k <= detail::kMaxPackedK, "q8.", op, ": weight_scale.size(0) = ", n,
              " and in_features = ", k, " cannot describe a packed weight (out_features < 2^31, in_features <= ",
              detail::kMaxPackedK, ")");
  const detail::CudaPackedSizes s = detail::cuda_packed_sizes(n, k);
  TORCH_CHECK(packed.numel() != detail::cpu_packed_sizes(n, k).total_bytes || packed.numel() == s.total_bytes,
              "q8.", op, ": packed_weight was packed for the 'cpu' layout, but this is the CUDA kernel (",
              packed.device(), "): repack the canonical weight on this device with q8.pack_weight");
  TORCH_CHECK(packed.numel() == s.total_bytes, "q8.", op, ": packed_weight has ", packed.numel(),
              " bytes but the 'cuda' layout of weight_scale.size(0) = ", n, " x in_features = ", k, " needs ",
              s.total_bytes, ": they must match the packed weight's out_features and in_features");
  auto sizes = grad_output.sizes().vec();
  sizes.back() = k;
  if (grad_output.numel() == 0 || k == 0 || n == 0) {
    return at::zeros(sizes, grad_output.options());
  }
  const auto w = packed.narrow(0, s.weight_offset, s.n16 * s.k16)
                     .view(at::kChar)
                     .view({s.n16, s.k16})
                     .narrow(0, 0, n)
                     .narrow(1, 0, k);
  const auto wf = w.to(at::kFloat).mul_(weight_scale.unsqueeze(1));
  const auto go = grad_output.reshape({-1, n}).to(at::kFloat);
  auto gi = at::mm(go, wf).view(sizes);
  return grad_output.scalar_type() == at::kFloat ? gi : gi.to(grad_output.scalar_type());
}

} // namespace

TORCH_LIBRARY_IMPL(q8, CUDA, m) {
  m.impl("linear_grad_input", &linear_grad_input_cuda);
}

} // namespace q8::cuda
