// Fake (meta) kernels of the int8 convolution family (schemas in ../conv.cpp):
// shapes and dtypes only, with symbolic sizes; the same argument checks as the
// device kernels. pack_conv_weight's fake kernel is in python/q8/ops.py: its size
// depends on the device's packed layout, which a Meta kernel cannot see.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../checks.h"

namespace q8::meta {
namespace {

at::Tensor unpack_conv_weight_meta(const at::Tensor& packed, c10::SymInt out_channels,
                                   c10::SymInt in_channels_per_group, at::IntArrayRef kernel_size, int64_t groups) {
  detail::check_unpack_conv_weight_args("unpack_conv_weight", packed, out_channels, in_channels_per_group,
                                        kernel_size, groups);
  return at::empty_symint({out_channels, in_channels_per_group, c10::SymInt(kernel_size[0]),
                           c10::SymInt(kernel_size[1])},
                          packed.options().dtype(at::kChar));
}

at::Tensor conv2d_meta(const at::Tensor& input, const at::Tensor& packed, const at::Tensor& weight_scale,
                       const std::optional<at::Tensor>& bias, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, c10::string_view activation,
                       const std::optional<at::Tensor>& input_scale, const std::optional<at::Tensor>& input_zero_point,
                       const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& residual_scale,
                       const std::optional<at::Tensor>& residual_zero_point, std::optional<double> clamp_min,
                       std::optional<double> clamp_max, const std::optional<at::Tensor>& output_scale,
                       const std::optional<at::Tensor>& output_zero_point) {
  const detail::ConvArgs a = detail::check_conv2d_args(
      "conv2d", input, packed, weight_scale, bias, kernel_size, stride, padding, dilation, groups, activation,
      input_scale, input_zero_point, residual, residual_scale, residual_zero_point, clamp_min, clamp_max,
      output_scale, output_zero_point);
  // float output: the input's float dtype (float32 for a uint8 input); uint8 with output_scale.
  const at::ScalarType dt =
      a.uint8_output ? at::kByte : (a.uint8_input ? at::kFloat : input.scalar_type());
  return at::empty_symint({input.sym_size(0), weight_scale.sym_size(0), a.sym_oh, a.sym_ow},
                          input.options().dtype(dt).memory_format(at::MemoryFormat::ChannelsLast));
}

at::Tensor max_pool2d_meta(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  const detail::PoolArgs a =
      detail::check_max_pool2d_args("max_pool2d", input, kernel_size, stride, padding, dilation, ceil_mode);
  return at::empty_symint({input.sym_size(0), input.sym_size(1), a.oh, a.ow},
                          input.options().memory_format(at::MemoryFormat::ChannelsLast));
}

} // namespace

TORCH_LIBRARY_IMPL(q8, Meta, m) {
  m.impl("unpack_conv_weight", &unpack_conv_weight_meta);
  m.impl("conv2d", &conv2d_meta);
  m.impl("max_pool2d", &max_pool2d_meta);
}

} // namespace q8::meta
