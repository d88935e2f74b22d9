// Int8 linear layers: weight quantization, packing, the exact integer GEMM and the
// fused linear op. Schemas and the public C++ API.
//   kernels: cpu/linear.cpp (+ cpu/kernels/int8_gemm_*.cpp), meta/linear.cpp,
//            autograd/linear.cpp, cuda/linear.cu, cuda/linear_backward.cu (linear_grad_input)
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <q8/q8.h>

namespace q8 {

TORCH_LIBRARY_FRAGMENT(q8, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  m.def("quantize_weight(Tensor weight) -> (Tensor weight_int8, Tensor weight_scale)", tags);
  m.def("pack_weight(Tensor weight_int8) -> Tensor", tags);
  m.def("unpack_weight(Tensor packed_weight, SymInt out_features, SymInt in_features) -> Tensor", tags);
  m.def(
      "int8_mm(Tensor input, Tensor packed_weight, SymInt out_features, Tensor? input_zero_point=None) -> Tensor",
      tags);
  // The fused int8 linear layer (docs/design.md, "Int8 linear"):
  //   y = input . (weight_int8 . diag(weight_scale))^T + bias  -> clamp(clamp_min, clamp_max)
  // the clamp (a fused ReLU is clamp_min=0, ReLU6 0 and 6) in the epilogue, NaN kept.
  m.def(
      "linear(Tensor input, Tensor packed_weight, Tensor weight_scale, Tensor? bias=None,"
      " str activation=\"dynamic\", Tensor? input_scale=None, Tensor? input_zero_point=None,"
      " float? clamp_min=None, float? clamp_max=None) -> Tensor",
      tags);
  // The input gradient of linear (straight-through, the int8 weight frozen):
  //   grad_input[..., k] = sum_n grad_output[..., n] * weight_int8[n][k] * weight_scale[n],
  // [..., in_features] in grad_output's dtype (float32 accumulation).
  m.def(
      "linear_grad_input(Tensor grad_output, Tensor packed_weight, Tensor weight_scale, SymInt in_features)"
      " -> Tensor",
      tags);
}

std::tuple<at::Tensor, at::Tensor> quantize_weight(const at::Tensor& weight) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("q8::quantize_weight", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&)>();
  return op.call(weight);
}

at::Tensor pack_weight(const at::Tensor& weight_int8) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("q8::pack_weight", "")
                       .typed<at::Tensor(const at::Tensor&)>();
  return op.call(weight_int8);
}

at::Tensor unpack_weight(const at::Tensor& packed_weight, int64_t out_features, int64_t in_features) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("q8::unpack_weight", "")
                       .typed<at::Tensor(const at::Tensor&, c10::SymInt, c10::SymInt)>();
  return op.call(packed_weight, out_features, in_features);
}

at::Tensor int8_mm(
    const at::Tensor& input,
    const at::Tensor& packed_weight,
    int64_t out_features,
    const std::optional<at::Tensor>& input_zero_point) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("q8::int8_mm", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymInt,
                                         const std::optional<at::Tensor>&)>();
  return op.call(input, packed_weight, out_features, input_zero_point);
}

at::Tensor linear(
    const at::Tensor& input,
    const at::Tensor& packed_weight,
    const at::Tensor& weight_scale,
    const std::optional<at::Tensor>& bias,
    c10::string_view activation,
    const std::optional<at::Tensor>& input_scale,
    const std::optional<at::Tensor>& input_zero_point,
    std::optional<double> clamp_min,
    std::optional<double> clamp_max) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("q8::linear", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&, c10::string_view,
                                         const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                                         std::optional<double>, std::optional<double>)>();
  return op.call(input, packed_weight, weight_scale, bias, activation, input_scale, input_zero_point, clamp_min,
                 clamp_max);
}

at::Tensor linear_grad_input(
    const at::Tensor& grad_output,
    const at::Tensor& packed_weight,
    const at::Tensor& weight_scale,
    int64_t in_features) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("q8::linear_grad_input", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::SymInt)>();
  return op.call(grad_output, packed_weight, weight_scale, in_features);
}

} // namespace q8
