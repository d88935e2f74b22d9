// Meta (fake) kernel of observe_fake_quantize: the argument checks of the real
// kernels, then outputs shaped and laid out as theirs (empty_like with
// MemoryFormat::Preserve, as cpu/qparams.h's empty_output). The state tensors are
// mutated by the real kernels only; here nothing reads or writes data.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../checks.h"

namespace q8::meta {
namespace {

std::tuple<at::Tensor, at::Tensor> observe_fake_quantize_meta(
    const at::Tensor& input,
    const at::Tensor& observer_on,
    const at::Tensor& fake_quant_on,
    at::Tensor& running_min,
    at::Tensor& running_max,
    at::Tensor& scale,
    at::Tensor& zero_point,
    double averaging_constant,
    int64_t quant_min,
    int64_t quant_max,
    std::optional<int64_t> axis,
    bool symmetric) {
  detail::check_observe_fake_quantize_args("observe_fake_quantize", input, observer_on, fake_quant_on, running_min,
                                           running_max, scale, zero_point, averaging_constant, quant_min, quant_max,
                                           axis);
  return {at::empty_like(input, input.options(), at::MemoryFormat::Preserve),
          at::empty_like(input, input.options().dtype(at::kBool), at::MemoryFormat::Preserve)};
}

} // namespace

TORCH_LIBRARY_IMPL(q8, Meta, m) {
  m.impl("observe_fake_quantize", &observe_fake_quantize_meta);
}

} // namespace q8::meta
