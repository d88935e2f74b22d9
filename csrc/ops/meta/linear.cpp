// Meta (fake) kernels of the int8 linear family: shapes and dtypes only, with
// symbolic sizes; the same argument checks as the device kernels. pack_weight's
// fake kernel is in python/q8/_fake.py: its size depends on the device's packed
// layout, which a Meta kernel cannot see.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../checks.h"

namespace q8::meta {
namespace {

std::tuple<at::Tensor, at::Tensor> quantize_weight_meta(const at::Tensor& weight) {
  detail::check_quantize_weight_args("quantize_weight", weight);
  return {at::empty_symint(weight.sym_sizes(), weight.options().dtype(at::kChar)),
          at::empty_symint({weight.sym_size(0)}, weight.options().dtype(at::kFloat))};
}

at::Tensor unpack_weight_meta(const at::Tensor& packed, c10::SymInt out_features, c10::SymInt in_features) {
  detail::check_packed_container("unpack_weight", packed);
  TORCH_CHECK(out_features >= 0 && in_features >= 0, "q8.unpack_weight: out_features and in_features must be >= 0, got ",
              out_features, " and ", in_features);
  return at::empty_symint({out_features, in_features}, packed.options().dtype(at::kChar));
}

at::Tensor int8_mm_meta(const at::Tensor& input, const at::Tensor& packed, c10::SymInt out_features,
                        const std::optional<at::Tensor>& input_zero_point) {
  detail::check_int8_mm_args("int8_mm", input, packed, out_features, input_zero_point);
  return at::empty_symint({input.sym_size(0), out_features}, input.options().dtype(at::kLong));
}

at::Tensor linear_meta(const at::Tensor& input, const at::Tensor& packed, const at::Tensor& weight_scale,
                       const std::optional<at::Tensor>& bias, c10::string_view activation,
                       const std::optional<at::Tensor>& input_scale,
                       const std::optional<at::Tensor>& input_zero_point, std::optional<double> clamp_min,
                       std::optional<double> clamp_max) {
  detail::check_linear_args("linear", input, packed, weight_scale, bias, activation, input_scale, input_zero_point,
                            clamp_min, clamp_max);
  auto sizes = input.sym_sizes().vec();
  sizes.back() = weight_scale.sym_size(0);
  return at::empty_symint(sizes, input.options());
}

at::Tensor linear_grad_input_meta(const at::Tensor& grad_output, const at::Tensor& packed,
                                  const at::Tensor& weight_scale, c10::SymInt in_features) {
  detail::check_linear_grad_input_args("linear_grad_input", grad_output, packed, weight_scale, in_features);
  auto sizes = grad_output.sym_sizes().vec();
  sizes.back() = in_features;
  return at::empty_symint(sizes, grad_output.options());
}

} // namespace

TORCH_LIBRARY_IMPL(q8, Meta, m) {
  m.impl("quantize_weight", &quantize_weight_meta);
  m.impl("unpack_weight", &unpack_weight_meta);
  m.impl("int8_mm", &int8_mm_meta);
  m.impl("linear", &linear_meta);
  m.impl("linear_grad_input", &linear_grad_input_meta);
}

} // namespace q8::meta
