// CPU kernels of choose_qparams, quantize and dequantize (schemas in ../quantize.cpp).
#include <algorithm>

#include <ATen/ATen.h>
#include <torch/library.h>

#include "../checks.h"
#include "../qparams_math.h"
#include "kernels/kernels.h"
#include "qparams.h"

namespace q8::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor> choose_qparams_cpu(
    const at::Tensor& input,
    int64_t quant_min,
    int64_t quant_max,
    bool symmetric,
    std::optional<int64_t> axis) {
  const char* op = "choose_qparams";
  const auto wrapped = detail::check_choose_qparams_args(op, input, quant_min, quant_max, axis);
  const auto x = input.contiguous();
  const Layout layout = layout_of(x, wrapped);
  std::vector<int64_t> channel_of;
  const ChannelParams p = make_layout_params(layout, &channel_of);

  const int64_t slots = p.broadcast ? p.channels : p.period;
  std::vector<float> mins(slots, 0.f), maxs(slots, 0.f);
  if (x.numel() > 0) {
    kernels().min_max(x.scalar_type(), x.const_data_ptr(), mins.data(), maxs.data(), p);
  }
  // Fold period positions into their channels.
  std::vector<float> cmin(layout.channels, 0.f), cmax(layout.channels, 0.f);
  for (int64_t s = 0; s < slots; ++s) {
    const int64_t c = p.broadcast ? s : channel_of[s];
    cmin[c] = std::min(cmin[c], mins[s]);
    cmax[c] = std::max(cmax[c], maxs[s]);
  }

  const auto shape = wrapped.has_value() ? std::vector<int64_t>{layout.channels} : std::vector<int64_t>{};
  auto scale = at::empty(shape, x.options().dtype(at::kFloat));
  auto zero_point = at::empty(shape, x.options().dtype(at::kInt));
  float* sp = scale.mutable_data_ptr<float>();
  int32_t* zp = zero_point.mutable_data_ptr<int32_t>();
  for (int64_t c = 0; c < layout.channels; ++c) {
    detail::compute_qparams(cmin[c], cmax[c], quant_min, quant_max, symmetric, sp + c, zp + c);
  }
  return {scale, zero_point};
}

at::Tensor quantize_cpu(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    std::optional<int64_t> axis,
    int64_t quant_min,
    int64_t quant_max,
    at::ScalarType dtype) {
  const char* op = "quantize";
  const auto wrapped = detail::check_fake_quantize_args(op, input, scale, zero_point, axis, quant_min, quant_max);
  detail::check_quant_range_fits(op, quant_min, quant_max, dtype);
  auto out = empty_output(input, input.options().dtype(dtype));
  const auto x = match_layout(input, out);
  const auto host = make_host_params(op, layout_of(x, wrapped), scale, zero_point, quant_min, quant_max);
  if (x.numel() > 0) {
    kernels().quantize(x.scalar_type(), x.const_data_ptr(), dtype, out.mutable_data_ptr(), host.params);
  }
  return out;
}

at::Tensor dequantize_cpu(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    std::optional<int64_t> axis,
    at::ScalarType dtype) {
  const char* op = "dequantize";
  const auto wrapped = detail::check_dequantize_args(op, input, scale, zero_point, axis, dtype);
  const auto [zmin, zmax] = detail::dequantize_zero_point_range(input.scalar_type());
  auto out = empty_output(input, input.options().dtype(dtype));
  const auto q = match_layout(input, out);
  const auto host = make_host_params(op, layout_of(q, wrapped), scale, zero_point, zmin, zmax);
  if (q.numel() > 0) {
    kernels().dequantize(q.scalar_type(), q.const_data_ptr(), dtype, out.mutable_data_ptr(), host.params);
  }
  return out;
}

} // namespace

TORCH_LIBRARY_IMPL(q8, CPU, m) {
  m.impl("choose_qparams", &choose_qparams_cpu);
  m.impl("quantize", &quantize_cpu);
  m.impl("dequantize", &dequantize_cpu);
}

} // namespace q8::cpu
