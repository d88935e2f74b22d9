// Autograd kernels of choose_qparams, quantize and dequantize: these ops are not
// differentiable (calibration statistics and integer codes carry no gradient; use
// the fake-quantize ops to train), so their outputs never require grad, rather
// than carrying a grad_fn that would fail or warn at backward time.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace q8::autograd {
namespace {

std::tuple<at::Tensor, at::Tensor> choose_qparams_autograd(
    const at::Tensor& input, int64_t quant_min, int64_t quant_max, bool symmetric, std::optional<int64_t> axis) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("q8::choose_qparams", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, int64_t, int64_t, bool,
                                                                 std::optional<int64_t>)>();
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(input, quant_min, quant_max, symmetric, axis);
}

at::Tensor quantize_autograd(
    const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point, std::optional<int64_t> axis,
    int64_t quant_min, int64_t quant_max, at::ScalarType dtype) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("q8::quantize", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         std::optional<int64_t>, int64_t, int64_t, at::ScalarType)>();
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(input, scale, zero_point, axis, quant_min, quant_max, dtype);
}

at::Tensor dequantize_autograd(
    const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point, std::optional<int64_t> axis,
    at::ScalarType dtype) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("q8::dequantize", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         std::optional<int64_t>, at::ScalarType)>();
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(input, scale, zero_point, axis, dtype);
}

} // namespace

TORCH_LIBRARY_IMPL(q8, Autograd, m) {
  m.impl("choose_qparams", &choose_qparams_autograd);
  m.impl("quantize", &quantize_autograd);
  m.impl("dequantize", &dequantize_autograd);
}

} // namespace q8::autograd
