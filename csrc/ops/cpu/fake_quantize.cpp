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
  auto out = empty_output(input, input.options());
  at::Tensor mask = with_mask ? empty_output(input, input.options().dtype(at::kBool)) : at::Tensor();
  const auto x = match_layout(input, out);
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
  detail::check_mask_backward_args("_fake_quantize_mask_backward", grad, mask);
  auto dx = empty_output(mask, grad.options());
  const auto g = match_layout(grad, dx);
  const auto m = match_layout(mask, dx);
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
  const auto wrapped =
      detail::check_learnable_backward_args(op, grad, input, scale, zero_point, axis, quant_min, quant_max);

  const bool zero_point_grad = zero_point.is_floating_point();
  auto dx = empty_output(input, input.options());
  const auto x = match_layout(input, dx);
  const auto g = match_layout(grad, dx);
  const Layout layout = layout_of(x, wrapped);
  const auto host = make_host_params(op, layout, scale, zero_point, quant_min, quant_max);
  const auto& p = host.params;
  auto f32 = x.options().dtype(at::kFloat);
  at::Tensor grad_scale, grad_zero_point;

  if (p.broadcast) {
    // Fused: the LSQ terms are summed per run inside the kernel.
    const int64_t blocks = (p.numel + kReduceBlock - 1) / kReduceBlock;
    const int64_t rows_per_block = kReduceBlock / p.inner + 2;
    std::vector<double> row_ds(blocks * rows_per_block, 0.0), row_dz(blocks * rows_per_block, 0.0);
    if (p.numel > 0) {
      kernels().learnable_backward_rows(x.scalar_type(), g.const_data_ptr(), x.const_data_ptr(),
                                        dx.mutable_data_ptr(), row_ds.data(), row_dz.data(), rows_per_block, p);
    }
    std::vector<double> ds(layout.channels, 0.0), dz(layout.channels, 0.0);
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t begin = b * kReduceBlock;
      const int64_t end = std::min(p.numel, begin + kReduceBlock);
      const int64_t row0 = begin / p.inner;
      for (int64_t row = row0; row <= (end - 1) / p.inner; ++row) {
        ds[row % p.channels] += row_ds[b * rows_per_block + row - row0];
        dz[row % p.channels] += row_dz[b * rows_per_block + row - row0];
      }
    }
    grad_scale = at::empty({layout.channels}, f32);
    grad_zero_point = at::empty({layout.channels}, f32);
    for (int64_t c = 0; c < layout.channels; ++c) {
      grad_scale.mutable_data_ptr<float>()[c] = static_cast<float>(ds[c]);
      grad_zero_point.mutable_data_ptr<float>()[c] = zero_point_grad ? static_cast<float>(dz[c]) : 0.f;
    }
  } else {
    // Short runs: per-element terms, then a sum over every dimension but the axis.
    // Laid out as x, which the kernel walks in memory order.
    auto ds = at::empty_like(x, f32, at::MemoryFormat::Preserve);
    auto dz = zero_point_grad ? at::empty_like(x, f32, at::MemoryFormat::Preserve) : at::Tensor();
    if (p.numel > 0) {
      kernels().learnable_backward(x.scalar_type(), g.const_data_ptr(), x.const_data_ptr(), dx.mutable_data_ptr(),
                                   ds.mutable_data_ptr<float>(), zero_point_grad ? dz.mutable_data_ptr<float>() : nullptr,
                                   p);
    }
    std::vector<int64_t> dims;
    for (int64_t d = 0; d < x.dim(); ++d) {
      if (!wrapped.has_value() || d != *wrapped) {
        dims.push_back(d);
      }
    }
    auto reduce = [&](const at::Tensor& t) { return dims.empty() ? t.clone() : t.sum(dims); };
    grad_scale = reduce(ds);
    grad_zero_point = zero_point_grad ? reduce(dz) : at::zeros({layout.channels}, f32);
  }
  return {dx, grad_scale.reshape(scale.sizes()), grad_zero_point.reshape(zero_point.sizes())};
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
