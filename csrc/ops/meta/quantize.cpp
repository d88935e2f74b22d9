// Meta (fake) kernels of choose_qparams, quantize and dequantize.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../checks.h"

namespace q8::meta {
namespace {

std::tuple<at::Tensor, at::Tensor> choose_qparams_meta(
    const at::Tensor& input, int64_t quant_min, int64_t quant_max, bool symmetric, std::optional<int64_t> axis) {
  const char* op = "choose_qparams";
  const auto wrapped = detail::check_choose_qparams_args(op, input, quant_min, quant_max, axis);
  std::vector<c10::SymInt> shape;
  if (wrapped.has_value()) {
    shape.push_back(input.sym_size(*wrapped));
  }
  return {at::empty_symint(shape, input.options().dtype(at::kFloat)),
          at::empty_symint(shape, input.options().dtype(at::kInt))};
}

at::Tensor quantize_meta(
    const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point, std::optional<int64_t> axis,
    int64_t quant_min, int64_t quant_max, at::ScalarType dtype) {
  detail::check_fake_quantize_args("quantize", input, scale, zero_point, axis, quant_min, quant_max);
  detail::check_quant_range_fits("quantize", quant_min, quant_max, dtype);
  return at::empty_like(input, input.options().dtype(dtype), at::MemoryFormat::Preserve);
}

at::Tensor dequantize_meta(
    const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point, std::optional<int64_t> axis,
    at::ScalarType dtype) {
  detail::check_dequantize_args("dequantize", input, scale, zero_point, axis, dtype);
  return at::empty_like(input, input.options().dtype(dtype), at::MemoryFormat::Preserve);
}

} // namespace

TORCH_LIBRARY_IMPL(q8, Meta, m) {
  m.impl("choose_qparams", &choose_qparams_meta);
  m.impl("quantize", &quantize_meta);
  m.impl("dequantize", &dequantize_meta);
}

} // namespace q8::meta
