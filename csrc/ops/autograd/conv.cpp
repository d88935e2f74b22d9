// Autograd kernels of the int8 convolution ops. They are inference-only: the
// packed int8 weight is frozen and q8.conv2d has no backward (a QAT model trains
// with fake quantization, python/q8/nn/qat_conv.py, and converts afterwards).
// All three ops use torch's "not implemented" fallback: a forward with inputs that
// require grad works (the output does not track a gradient it cannot give), and a
// backward through the result raises a clear error instead of silently dropping
// the gradient.
#include <torch/autograd.h>
#include <torch/library.h>

namespace q8::autograd {

TORCH_LIBRARY_IMPL(q8, Autograd, m) {
  m.impl("pack_conv_weight", torch::autograd::autogradNotImplementedFallback());
  m.impl("unpack_conv_weight", torch::autograd::autogradNotImplementedFallback());
  m.impl("conv2d", torch::autograd::autogradNotImplementedFallback());
  m.impl("max_pool2d", torch::autograd::autogradNotImplementedFallback());  // (uint8: no gradient)
}

} // namespace q8::autograd
