// CPU kernels of the fake-quantize family (schemas in ../fake_quantize.cpp).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../checks.h"
#include "kernels/kernels.h"
#include "qparams.h"

namespace q8::cpu {
namespace {

// Forward, with or without the straight-through mask.
std::tuple<at::Tensor, at::Tensor> fake_quantize_impl(
    const char* op,
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    std::optional<int64_t> axis,
    int64_t quant_min,
    int64_t quant_max,
    bool with_mask) {
  const auto wrapped = detail::check_fake_quantize_args(op, input, scale, zero_point, axis, quant_min, quant_max);
  const auto x = input.contiguous();
  auto out = at::empty(x.sizes(), x.options());
  at::Tensor mask = with_mask ? at::empty(x.sizes(), x.options().dtype(at::kBool)) : at::Tensor();
  const auto host = make_host_params(op, layout_of(x, wrapped), scale, zero_point, quant_min, quant_max);
  if (x.numel() > 0) {
    kernels().fake_quantize(
        x.scalar_type(), x.const_data_ptr(), out.mutable_data_ptr(),
        with_mask ? mask.mutable_data_ptr<bool>() : nullptr, host.params);
  }
  return {out, mask};
}

at::Tensor fake_quantize_per_tensor_cpu(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max) {
  return std::get<0>(fake_quantize_impl(
      "fake_quantize_per_tensor", input, scale, zero_point, std::nullopt, quant_min, quant_max, false));
}

at::Tensor fake_quantize_per_channel_cpu(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max) {
  return std::get<0>(fake_quantize_impl(
      "fake_quantize_per_channel", input, scale, zero_point, axis, quant_min, quant_max, false));
}

std::tuple<at::Tensor, at::Tensor> fake_quantize_cachemask_cpu(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    std::optional<int64_t> axis,
    int64_t quant_min,
    int64_t quant_max) {
  return fake_quantize_impl("_fake_quantize_cachemask", input, scale, zero_point, axis, quant_min, quant_max, true);
}

at::Tensor fake_quantize_mask_backward_cpu(const at::Tensor& grad, const at::Tensor& mask) {
  detail::check_float_input("_fake_quantize_mask_backward", grad);
  TORCH_CHECK(mask.scalar_type() == at::kBool,
              "q8._fake_quantize_mask_backward: mask must be bool, got ", mask.scalar_type());
  TORCH_CHECK(grad.sizes() == mask.sizes(), "q8._fake_quantize_mask_backward: grad and mask must have the same "
              "shape, got ", grad.sizes(), " and ", mask.sizes());
  detail::check_same_device("_fake_quantize_mask_backward", grad, "grad", mask, "mask");
  const auto g = grad.contiguous();
  const auto m = mask.contiguous();
  auto dx = at::empty(g.sizes(), g.options());
  if (g.numel() > 0) {
    kernels().mask_backward(g.scalar_type(), g.const_data_ptr(), m.const_data_ptr<bool>(), dx.mutable_data_ptr(),
                            g.numel());
  }
  return dx;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fake_quantize_learnable_backward_cpu(
    const at::Tensor& grad,
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    std::optional<int64_t> axis,
    int64_t quant_min,
    int64_t quant_max) {
  const char* op = "_fake_quantize_learnable_backward";
  const auto wrapped = detail::check_fake_quantize_args(op, input, scale, zero_point, axis, quant_min, quant_max);
  TORCH_CHECK(grad.scalar_type() == input.scalar_type(), "q8.", op, ": grad must have input's dtype ",
              input.scalar_type(), ", got ", grad.scalar_type());
  TORCH_CHECK(grad.sizes() == input.sizes(), "q8.", op, ": grad must have input's shape ", input.sizes(),
              ", got ", grad.sizes());
  detail::check_same_device(op, input, "input", grad, "grad");

  const auto x = input.contiguous();
  const auto g = grad.contiguous();
  const bool zero_point_grad = zero_point.is_floating_point();
  auto dx = at::empty(x.sizes(), x.options());
  auto ds = at::empty(x.sizes(), x.options().dtype(at::kFloat));
  auto dz = zero_point_grad ? at::empty(x.sizes(), x.options().dtype(at::kFloat)) : at::Tensor();
  const auto host = make_host_params(op, layout_of(x, wrapped), scale, zero_point, quant_min, quant_max);
  if (x.numel() > 0) {
    kernels().learnable_backward(x.scalar_type(), g.const_data_ptr(), x.const_data_ptr(), dx.mutable_data_ptr(),
                                 ds.mutable_data_ptr<float>(),
                                 zero_point_grad ? dz.mutable_data_ptr<float>() : nullptr, host.params);
  }
  // Sum the per-element terms over everything but the channel axis.
  auto reduce = [&](const at::Tensor& t) {
    if (!wrapped.has_value()) {
      return t.sum().reshape(scale.sizes());
    }
    std::vector<int64_t> dims;
    for (int64_t d = 0; d < x.dim(); ++d) {
      if (d != *wrapped) {
        dims.push_back(d);
      }
    }
    return dims.empty() ? t.clone() : t.sum(dims);
  };
  auto grad_scale = reduce(ds);
  auto grad_zero_point = zero_point_grad ? reduce(dz).reshape(zero_point.sizes())
                                         : at::zeros(zero_point.sizes(), zero_point.options().dtype(at::kFloat));
  return {dx, grad_scale, grad_zero_point};
}

} // namespace

TORCH_LIBRARY_IMPL(q8, CPU, m) {
  m.impl("fake_quantize_per_tensor", &fake_quantize_per_tensor_cpu);
  m.impl("fake_quantize_per_channel", &fake_quantize_per_channel_cpu);
  m.impl("_fake_quantize_cachemask", &fake_quantize_cachemask_cpu);
  m.impl("_fake_quantize_mask_backward", &fake_quantize_mask_backward_cpu);
  m.impl("_fake_quantize_learnable_backward", &fake_quantize_learnable_backward_cpu);
}

} // namespace q8::cpu
