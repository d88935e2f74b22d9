// Meta (fake) kernels of the fake-quantize family: shapes and dtypes only, never
// data, symbolic sizes throughout (torch.compile, torch.export). They run the
// same argument checks as the real kernels.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../checks.h"

namespace q8::meta {
namespace {

// Outputs keep the layout of the tensor they follow, as the CPU / CUDA kernels do
// (cpu/qparams.h, empty_output) and as torch's fake-quantize ops do.
at::Tensor like(const at::Tensor& t, const at::TensorOptions& options) {
  return at::empty_like(t, options, at::MemoryFormat::Preserve);
}
at::Tensor like(const at::Tensor& t, at::ScalarType dtype) {
  return like(t, t.options().dtype(dtype));
}

at::Tensor fake_quantize_per_tensor_meta(
    const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point, int64_t quant_min,
    int64_t quant_max) {
  detail::check_fake_quantize_args("fake_quantize_per_tensor", input, scale, zero_point, std::nullopt, quant_min,
                                   quant_max);
  return like(input, input.scalar_type());
}

at::Tensor fake_quantize_per_channel_meta(
    const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point, int64_t axis, int64_t quant_min,
    int64_t quant_max) {
  detail::check_fake_quantize_args("fake_quantize_per_channel", input, scale, zero_point, axis, quant_min,
                                   quant_max);
  return like(input, input.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> fake_quantize_cachemask_meta(
    const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point, std::optional<int64_t> axis,
    int64_t quant_min, int64_t quant_max) {
  detail::check_fake_quantize_args("_fake_quantize_cachemask", input, scale, zero_point, axis, quant_min,
                                   quant_max);
  return {like(input, input.scalar_type()), like(input, at::kBool)};
}

at::Tensor fake_quantize_mask_backward_meta(const at::Tensor& grad, const at::Tensor& mask) {
  detail::check_mask_backward_args("_fake_quantize_mask_backward", grad, mask);
  return like(mask, grad.options());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fake_quantize_learnable_backward_meta(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
    std::optional<int64_t> axis, int64_t quant_min, int64_t quant_max) {
  detail::check_learnable_backward_args("_fake_quantize_learnable_backward", grad, input, scale, zero_point, axis,
                                        quant_min, quant_max);
  return {like(input, input.scalar_type()), at::empty_symint(scale.sym_sizes(), scale.options().dtype(at::kFloat)),
          at::empty_symint(zero_point.sym_sizes(), zero_point.options().dtype(at::kFloat))};
}

} // namespace

TORCH_LIBRARY_IMPL(q8, Meta, m) {
  m.impl("fake_quantize_per_tensor", &fake_quantize_per_tensor_meta);
  m.impl("fake_quantize_per_channel", &fake_quantize_per_channel_meta);
  m.impl("_fake_quantize_cachemask", &fake_quantize_cachemask_meta);
  m.impl("_fake_quantize_mask_backward", &fake_quantize_mask_backward_meta);
  m.impl("_fake_quantize_learnable_backward", &fake_quantize_learnable_backward_meta);
}

} // namespace q8::meta
