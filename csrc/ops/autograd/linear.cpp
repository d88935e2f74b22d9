// Autograd kernels of the int8 linear family. These are inference ops: integer
// outputs carry no gradient, and linear has no backward yet (a straight-through
// dx would need a transposed GEMM over the packed weights). They are registered
// with torch's "not implemented" fallback, so a forward with inputs that require
// grad works and a backward through them raises a clear error instead of
// silently dropping the gradient.
#include <torch/autograd.h>
#include <torch/library.h>

namespace q8::autograd {

TORCH_LIBRARY_IMPL(q8, Autograd, m) {
  m.impl("quantize_weight", torch::autograd::autogradNotImplementedFallback());
  m.impl("pack_weight", torch::autograd::autogradNotImplementedFallback());
  m.impl("unpack_weight", torch::autograd::autogradNotImplementedFallback());
  m.impl("int8_mm", torch::autograd::autogradNotImplementedFallback());
  m.impl("linear", torch::autograd::autogradNotImplementedFallback());
}

} // namespace q8::autograd
