// Fake quantization: schemas and the public C++ API.
//   kernels: cpu/fake_quantize.cpp, meta/fake_quantize.cpp, autograd/fake_quantize.cpp,
//            cuda/fake_quantize.cu (when built with CUDA)
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <q8/q8.h>

namespace q8 {

TORCH_LIBRARY_FRAGMENT(q8, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  m.def(
      "fake_quantize_per_tensor(Tensor input, Tensor scale, Tensor zero_point, int quant_min, int quant_max)"
      " -> Tensor",
      tags);
  m.def(
      "fake_quantize_per_channel(Tensor input, Tensor scale, Tensor zero_point, int axis, int quant_min,"
      " int quant_max) -> Tensor",
      tags);
  // Forward that also returns the straight-through mask its backward needs.
  m.def(
      "_fake_quantize_cachemask(Tensor input, Tensor scale, Tensor zero_point, int? axis, int quant_min,"
      " int quant_max) -> (Tensor output, Tensor mask)",
      tags);
  // grad * mask, in grad's dtype.
  m.def("_fake_quantize_mask_backward(Tensor grad, Tensor mask) -> Tensor", tags);
  // Straight-through grad_input plus the learnable-scale (LSQ) gradients of scale
  // and zero_point (float32, shaped like scale / zero_point).
  m.def(
      "_fake_quantize_learnable_backward(Tensor grad, Tensor input, Tensor scale, Tensor zero_point, int? axis,"
      " int quant_min, int quant_max) -> (Tensor grad_input, Tensor grad_scale, Tensor grad_zero_point)",
      tags);
}

at::Tensor fake_quantize_per_tensor(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("q8::fake_quantize_per_tensor", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t)>();
  return op.call(input, scale, zero_point, quant_min, quant_max);
}

at::Tensor fake_quantize_per_channel(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("q8::fake_quantize_per_channel", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t)>();
  return op.call(input, scale, zero_point, axis, quant_min, quant_max);
}

} // namespace q8
