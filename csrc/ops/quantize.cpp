// Calibration, quantize and dequantize: schemas and the public C++ API.
//   kernels: cpu/quantize.cpp, meta/quantize.cpp (no autograd: integer in or out)
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <q8/q8.h>

namespace q8 {

TORCH_LIBRARY_FRAGMENT(q8, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  m.def(
      "choose_qparams(Tensor input, int quant_min, int quant_max, bool symmetric=False, int? axis=None)"
      " -> (Tensor scale, Tensor zero_point)",
      tags);
  m.def(
      "quantize(Tensor input, Tensor scale, Tensor zero_point, int? axis, int quant_min, int quant_max,"
      " ScalarType dtype) -> Tensor",
      tags);
  m.def(
      "dequantize(Tensor input, Tensor scale, Tensor zero_point, int? axis, ScalarType dtype=float) -> Tensor",
      tags);
}

std::tuple<at::Tensor, at::Tensor> choose_qparams(
    const at::Tensor& input,
    int64_t quant_min,
    int64_t quant_max,
    bool symmetric,
    std::optional<int64_t> axis) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("q8::choose_qparams", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(
                           const at::Tensor&, int64_t, int64_t, bool, std::optional<int64_t>)>();
  return op.call(input, quant_min, quant_max, symmetric, axis);
}

at::Tensor quantize(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    std::optional<int64_t> axis,
    int64_t quant_min,
    int64_t quant_max,
    at::ScalarType dtype) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("q8::quantize", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         std::optional<int64_t>, int64_t, int64_t, at::ScalarType)>();
  return op.call(input, scale, zero_point, axis, quant_min, quant_max, dtype);
}

at::Tensor dequantize(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    std::optional<int64_t> axis,
    at::ScalarType dtype) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("q8::dequantize", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         std::optional<int64_t>, at::ScalarType)>();
  return op.call(input, scale, zero_point, axis, dtype);
}

} // namespace q8
