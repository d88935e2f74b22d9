// Int8 convolution: weight packing and the fused int8 conv2d op. Schemas and the
// public C++ API (declared in q8/q8.h).
//   kernels: cpu/conv.cpp (+ cpu/kernels/conv_*.cpp), meta/conv.cpp, cuda/conv.cu
//   packed layout: conv_packed.h      design: docs/conv.md
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <q8/q8.h>

namespace q8 {

TORCH_LIBRARY_FRAGMENT(q8, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  // weight_int8: int8 [OC, C / groups, KH, KW] (the canonical form, as quantize_weight
  // gives for weight.reshape(OC, -1)). Returns the device's packed layout (a 1-D uint8
  // tensor with a self-describing header, conv_packed.h), rebuilt on load, never saved.
  m.def("pack_conv_weight(Tensor weight_int8, int groups) -> Tensor", tags);
  // The exact canonical weight of a packed one; every size must match its header.
  m.def(
      "unpack_conv_weight(Tensor packed_weight, SymInt out_channels, SymInt in_channels_per_group,"
      " int[2] kernel_size, int groups) -> Tensor",
      tags);
  // The fused int8 2-D convolution (docs/conv.md):
  //   acc[n, o, y, x] = sum (xq - zp_x) * weight_int8 over the receptive field (int32, exact)
  //   y = float(acc) * (sx * weight_scale[o]) + bias[o]      (+ residual) -> clamp
  //   -> float (channels_last), or uint8 = clamp(nearbyint(y / output_scale) + output_zero_point, 0, 255)
  m.def(
      "conv2d(Tensor input, Tensor packed_weight, Tensor weight_scale, Tensor? bias, int[2] kernel_size,"
      " int[2] stride=1, int[2] padding=0, int[2] dilation=1, int groups=1, str activation=\"dynamic\","
      " Tensor? input_scale=None, Tensor? input_zero_point=None, Tensor? residual=None,"
      " Tensor? residual_scale=None, Tensor? residual_zero_point=None, float? clamp_min=None,"
      " float? clamp_max=None, Tensor? output_scale=None, Tensor? output_zero_point=None) -> Tensor",
      tags);
  // Max pooling of uint8 codes (the max of codes is the code of the max: quantization
  // is monotone), as aten::max_pool2d of their values; the output is channels_last
  // uint8 with the input's qparams. Lets a max pool sit between int8 layers
  // (q8.lower), as torch.ao's quantized max_pool2d does.
  m.def(
      "max_pool2d(Tensor input, int[2] kernel_size, int[2] stride=[], int[2] padding=0, int[2] dilation=1,"
      " bool ceil_mode=False) -> Tensor",
      tags);
}

at::Tensor pack_conv_weight(const at::Tensor& weight_int8, int64_t groups) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("q8::pack_conv_weight", "")
                       .typed<at::Tensor(const at::Tensor&, int64_t)>();
  return op.call(weight_int8, groups);
}

at::Tensor unpack_conv_weight(const at::Tensor& packed_weight, int64_t out_channels, int64_t in_channels_per_group,
                              at::IntArrayRef kernel_size, int64_t groups) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("q8::unpack_conv_weight", "")
                       .typed<at::Tensor(const at::Tensor&, c10::SymInt, c10::SymInt, at::IntArrayRef, int64_t)>();
  return op.call(packed_weight, out_channels, in_channels_per_group, kernel_size, groups);
}

at::Tensor conv2d(const at::Tensor& input, const at::Tensor& packed_weight, const at::Tensor& weight_scale,
                  const std::optional<at::Tensor>& bias, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                  at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, c10::string_view activation,
                  const std::optional<at::Tensor>& input_scale, const std::optional<at::Tensor>& input_zero_point,
                  const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& residual_scale,
                  const std::optional<at::Tensor>& residual_zero_point, std::optional<double> clamp_min,
                  std::optional<double> clamp_max, const std::optional<at::Tensor>& output_scale,
                  const std::optional<at::Tensor>& output_zero_point) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("q8::conv2d", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                            at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t,
                            c10::string_view, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                            const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                            const std::optional<at::Tensor>&, std::optional<double>, std::optional<double>,
                            const std::optional<at::Tensor>&, const std::optional<at::Tensor>&)>();
  return op.call(input, packed_weight, weight_scale, bias, kernel_size, stride, padding, dilation, groups, activation,
                 input_scale, input_zero_point, residual, residual_scale, residual_zero_point, clamp_min, clamp_max,
                 output_scale, output_zero_point);
}

at::Tensor max_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                      at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("q8::max_pool2d", "")
                       .typed<at::Tensor(const at::Tensor&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
                                         at::IntArrayRef, bool)>();
  return op.call(input, kernel_size, stride, padding, dilation, ceil_mode);
}

} // namespace q8
