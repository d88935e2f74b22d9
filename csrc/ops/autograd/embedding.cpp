// Autograd kernels of the int8 embedding ops. The int8 table is frozen (integer
// codes carry no gradient) and per_sample_weights' gradient is not implemented:
// both ops are registered with torch's "not implemented" fallback, so a forward
// with per_sample_weights that require grad works, and a backward through it
// raises a clear error instead of silently dropping the gradient.
#include <torch/autograd.h>
#include <torch/library.h>

namespace q8::autograd {

TORCH_LIBRARY_IMPL(q8, Autograd, m) {
  m.impl("embedding", torch::autograd::autogradNotImplementedFallback());
  m.impl("embedding_bag", torch::autograd::autogradNotImplementedFallback());
}

} // namespace q8::autograd
