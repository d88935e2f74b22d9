// Autograd kernels of fake_quantize_per_tensor / fake_quantize_per_channel,
// registered in C++ so that Python, TorchScript and C++ LibTorch programs train
// the same way.
//
// - Only `input` needs a gradient: the forward also returns the straight-through
//   mask (q8::_fake_quantize_cachemask) and the backward is grad * mask
//   (q8::_fake_quantize_mask_backward); nothing else is kept alive.
// - `scale` or a float `zero_point` requires grad: the forward keeps input, scale and
//   zero_point and the backward is q8::_fake_quantize_learnable_backward (LSQ).
// The backward steps are ops of their own with CPU/CUDA/Meta kernels, so
// torch.compile traces them; nothing here reads tensor data (no host sync).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

namespace q8::autograd {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::tuple<at::Tensor, at::Tensor> cachemask(const at::Tensor& input, const at::Tensor& scale,
                                             const at::Tensor& zero_point, std::optional<int64_t> axis,
                                             int64_t quant_min, int64_t quant_max) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("q8::_fake_quantize_cachemask", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&, std::optional<int64_t>,
                                                                 int64_t, int64_t)>();
  return op.call(input, scale, zero_point, axis, quant_min, quant_max);
}

at::Tensor mask_backward(const at::Tensor& grad, const at::Tensor& mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("q8::_fake_quantize_mask_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  return op.call(grad, mask);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> learnable_backward(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
    std::optional<int64_t> axis, int64_t quant_min, int64_t quant_max) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("q8::_fake_quantize_learnable_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           std::optional<int64_t>, int64_t, int64_t)>();
  return op.call(grad, input, scale, zero_point, axis, quant_min, quant_max);
}

// The plain forward (no mask), per tensor or per channel.
at::Tensor forward_only(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
                        std::optional<int64_t> axis, int64_t quant_min, int64_t quant_max) {
  static auto per_tensor =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("q8::fake_quantize_per_tensor", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t)>();
  static auto per_channel =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("q8::fake_quantize_per_channel", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t)>();
  if (axis.has_value()) {
    return per_channel.call(input, scale, zero_point, *axis, quant_min, quant_max);
  }
  return per_tensor.call(input, scale, zero_point, quant_min, quant_max);
}

class FakeQuantize : public torch::autograd::Function<FakeQuantize> {
 public:
  static variable_list forward(
      AutogradContext* ctx,
      const at::Tensor& input,
      const at::Tensor& scale,
      const at::Tensor& zero_point,
      std::optional<int64_t> axis,
      int64_t quant_min,
      int64_t quant_max,
      bool return_mask) {
    at::AutoDispatchBelowADInplaceOrView guard;
    const bool learnable = scale.requires_grad() || zero_point.requires_grad();
    ctx->saved_data["learnable"] = learnable;
    ctx->saved_data["axis"] = axis.has_value() ? c10::IValue(*axis) : c10::IValue();
    ctx->saved_data["quant_min"] = quant_min;
    ctx->saved_data["quant_max"] = quant_max;
    if (learnable && !return_mask) {
      ctx->save_for_backward({input, scale, zero_point});
      return {forward_only(input, scale, zero_point, axis, quant_min, quant_max)};
    }
    auto [output, mask] = cachemask(input, scale, zero_point, axis, quant_min, quant_max);
    ctx->save_for_backward(learnable ? variable_list{input, scale, zero_point} : variable_list{mask});
    ctx->mark_non_differentiable({mask});
    if (return_mask) {
      return {output, mask};
    }
    return {output};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto& grad = grad_outputs[0];
    if (!ctx->saved_data["learnable"].toBool()) {
      return {mask_backward(grad, saved[0]), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
              at::Tensor()};
    }
    const auto& axis_ivalue = ctx->saved_data["axis"];
    const std::optional<int64_t> axis =
        axis_ivalue.isNone() ? std::nullopt : std::optional<int64_t>(axis_ivalue.toInt());
    const auto& input = saved[0];
    const auto& scale = saved[1];
    const auto& zero_point = saved[2];
    auto [grad_input, grad_scale, grad_zero_point] = learnable_backward(
        grad, input, scale, zero_point, axis, ctx->saved_data["quant_min"].toInt(),
        ctx->saved_data["quant_max"].toInt());
    return {
        grad_input,
        scale.requires_grad() ? grad_scale : at::Tensor(),
        zero_point.requires_grad() ? grad_zero_point : at::Tensor(),
        at::Tensor(),
        at::Tensor(),
        at::Tensor(),
        at::Tensor()};
  }
};

bool needs_grad(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point) {
  return at::GradMode::is_enabled() &&
      (input.requires_grad() || scale.requires_grad() || zero_point.requires_grad());
}

at::Tensor fake_quantize_per_tensor_autograd(
    const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point, int64_t quant_min,
    int64_t quant_max) {
  if (!needs_grad(input, scale, zero_point)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return forward_only(input, scale, zero_point, std::nullopt, quant_min, quant_max);
  }
  return FakeQuantize::apply(input, scale, zero_point, std::nullopt, quant_min, quant_max, false)[0];
}

at::Tensor fake_quantize_per_channel_autograd(
    const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point, int64_t axis,
    int64_t quant_min, int64_t quant_max) {
  if (!needs_grad(input, scale, zero_point)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return forward_only(input, scale, zero_point, axis, quant_min, quant_max);
  }
  return FakeQuantize::apply(input, scale, zero_point, axis, quant_min, quant_max, false)[0];
}

// The forward-with-mask helper is differentiable like the forward it is.
std::tuple<at::Tensor, at::Tensor> fake_quantize_cachemask_autograd(
    const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point, std::optional<int64_t> axis,
    int64_t quant_min, int64_t quant_max) {
  if (!needs_grad(input, scale, zero_point)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return cachemask(input, scale, zero_point, axis, quant_min, quant_max);
  }
  auto outs = FakeQuantize::apply(input, scale, zero_point, axis, quant_min, quant_max, true);
  return {outs[0], outs[1]};
}

// grad * mask is linear in grad: its own derivative is the same op, so the
// straight-through path supports double backward.
class MaskBackward : public torch::autograd::Function<MaskBackward> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad, const at::Tensor& mask) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({mask});
    return {mask_backward(grad, mask)};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    return {MaskBackward::apply(grad_outputs[0], ctx->get_saved_variables()[0])[0], at::Tensor()};
  }
};

at::Tensor fake_quantize_mask_backward_autograd(const at::Tensor& grad, const at::Tensor& mask) {
  if (!(at::GradMode::is_enabled() && grad.requires_grad())) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return mask_backward(grad, mask);
  }
  return MaskBackward::apply(grad, mask)[0];
}

} // namespace

TORCH_LIBRARY_IMPL(q8, Autograd, m) {
  m.impl("fake_quantize_per_tensor", &fake_quantize_per_tensor_autograd);
  m.impl("fake_quantize_per_channel", &fake_quantize_per_channel_autograd);
  m.impl("_fake_quantize_cachemask", &fake_quantize_cachemask_autograd);
  m.impl("_fake_quantize_mask_backward", &fake_quantize_mask_backward_autograd);
  // The second derivative of the learnable-scale gradients is not implemented:
  // differentiating through them (double backward) raises a clear error instead
  // of silently returning nothing.
  m.impl("_fake_quantize_learnable_backward", torch::autograd::autogradNotImplementedFallback());
}

} // namespace q8::autograd
