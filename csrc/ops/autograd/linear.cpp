// Autograd kernels of the int8 linear family.
//
// linear is differentiable with respect to input and bias; the int8 weight is
// frozen (the packed weight is an integer tensor, and weight_scale, input_scale
// requiring grad is refused with an error rather than given a silent None):
//   - grad_input = grad_output . (weight_int8 . diag(weight_scale)), the
//     straight-through estimator of the activation quantization, computed by the
//     op q8::linear_grad_input (CPU/CUDA/Meta kernels, so torch.compile traces it).
//     "dynamic" and "weight_only": exact straight-through (a per-row dynamic range
//     never clips). "static": times fake quantization's clamp mask, i.e. the
//     gradient of F.linear(fake_quantize_per_tensor(x, s, z, 0, 255), W_deq, b);
//     the forward saves that mask (q8::_fake_quantize_cachemask, 1 byte per input
//     element) and the backward applies it (q8::_fake_quantize_mask_backward).
//   - with a clamp (a fused ReLU / ReLU6), grad_output is first zeroed where the
//     output sits on a bound (output <= clamp_min or >= clamp_max; NaN passes), as
//     torch's threshold_backward (relu) and hardtanh_backward do: the forward saves
//     that mask (1 byte per output element) when a gradient is needed.
//   - grad_bias = grad_output summed over every dimension but the last (float32
//     accumulation), in bias's dtype.
// The backward is not itself differentiable (once_differentiable: a double
// backward raises). The other ops of the family are inference ops (integer
// outputs) and keep torch's "not implemented" fallback, so a backward through
// them raises instead of silently dropping the gradient.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace q8::autograd {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor linear_op(const at::Tensor& input, const at::Tensor& packed_weight, const at::Tensor& weight_scale,
                     const std::optional<at::Tensor>& bias, c10::string_view activation,
                     const std::optional<at::Tensor>& input_scale,
                     const std::optional<at::Tensor>& input_zero_point, std::optional<double> clamp_min,
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

// Where the gradient passes a clamp: !(out <= lo) && !(out >= hi) (NaN passes, as
// in relu's and hardtanh's backward), bool.
at::Tensor clamp_pass_mask(const at::Tensor& out, std::optional<double> clamp_min, std::optional<double> clamp_max) {
  at::Tensor mask;
  if (clamp_min.has_value()) {
    mask = at::le(out, *clamp_min).logical_not_();
  }
  if (clamp_max.has_value()) {
    auto below = at::ge(out, *clamp_max).logical_not_();
    mask = mask.defined() ? mask.logical_and_(below) : below;
  }
  return mask;
}

at::Tensor grad_input_op(const at::Tensor& grad_output, const at::Tensor& packed_weight,
                         const at::Tensor& weight_scale, const c10::SymInt& in_features) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("q8::linear_grad_input", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::SymInt)>();
  return op.call(grad_output, packed_weight, weight_scale, in_features);
}

at::Tensor cachemask(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("q8::_fake_quantize_cachemask", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&, std::optional<int64_t>,
                                                                 int64_t, int64_t)>();
  return std::get<1>(op.call(input, scale, zero_point, std::nullopt, 0, 255));
}

at::Tensor mask_backward(const at::Tensor& grad, const at::Tensor& mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("q8::_fake_quantize_mask_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  return op.call(grad, mask);
}

void check_frozen(const at::Tensor& t, const char* name) {
  TORCH_CHECK(!t.requires_grad(), "q8.linear: ", name,
              " must not require grad: q8.linear computes gradients for input and bias only (the int8 weight and "
              "its scales are frozen); detach it or set requires_grad=False");
}

class Linear : public torch::autograd::Function<Linear> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& packed_weight,
                               const at::Tensor& weight_scale, const std::optional<at::Tensor>& bias,
                               c10::string_view activation, const std::optional<at::Tensor>& input_scale,
                               const std::optional<at::Tensor>& input_zero_point, std::optional<double> clamp_min,
                               std::optional<double> clamp_max) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto output = linear_op(input, packed_weight, weight_scale, bias, activation, input_scale, input_zero_point,
                            clamp_min, clamp_max);
    ctx->saved_data["in_features"] = input.sym_size(-1);
    ctx->saved_data["bias_dtype"] =
        bias.has_value() ? static_cast<int64_t>(bias->scalar_type()) : static_cast<int64_t>(at::kFloat);
    at::Tensor mask;
    if (activation == "static" && input.requires_grad()) {
      // (in float32, as the forward quantizes; no aten::to call for float32 input,
      // which would return the input itself)
      mask = cachemask(input.scalar_type() == at::kFloat ? input : input.to(at::kFloat), *input_scale,
                       *input_zero_point);
    }
    ctx->saved_data["masked"] = mask.defined();
    // (needs_input_grad counts only the tensor arguments that are present.)
    ctx->saved_data["input_grad"] = input.requires_grad();
    ctx->saved_data["bias_grad"] = bias.has_value() && bias->requires_grad();
    at::Tensor pass;
    if (input.requires_grad() || (bias.has_value() && bias->requires_grad())) {
      pass = clamp_pass_mask(output, clamp_min, clamp_max);
    }
    ctx->saved_data["clamped"] = pass.defined();
    variable_list saved{packed_weight, weight_scale};
    if (mask.defined()) {
      saved.push_back(mask);
    }
    if (pass.defined()) {
      saved.push_back(pass);
    }
    ctx->save_for_backward(saved);
    return {output};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    at::Tensor grad = grad_outputs[0];
    if (ctx->saved_data["clamped"].toBool()) {
      grad = at::where(saved.back(), grad, at::zeros({}, grad.options()));
    }
    at::Tensor grad_input, grad_bias;
    if (ctx->saved_data["input_grad"].toBool() && ctx->needs_input_grad(0)) {
      grad_input = grad_input_op(grad, saved[0], saved[1], ctx->saved_data["in_features"].toSymInt());
      if (ctx->saved_data["masked"].toBool()) {
        grad_input = mask_backward(grad_input, saved[2]);
      }
    }
    if (ctx->saved_data["bias_grad"].toBool() && ctx->needs_input_grad(3)) {
      const auto n = grad.sym_size(-1);
      const auto bias_dtype = static_cast<at::ScalarType>(ctx->saved_data["bias_dtype"].toInt());
      grad_bias = grad.reshape_symint({-1, n}).sum({0}, /*keepdim=*/false, at::kFloat);
      if (bias_dtype != at::kFloat) {
        grad_bias = grad_bias.to(bias_dtype);
      }
    }
    return {grad_input, at::Tensor(), at::Tensor(), grad_bias, at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

at::Tensor linear_autograd(const at::Tensor& input, const at::Tensor& packed_weight, const at::Tensor& weight_scale,
                           const std::optional<at::Tensor>& bias, c10::string_view activation,
                           const std::optional<at::Tensor>& input_scale,
                           const std::optional<at::Tensor>& input_zero_point, std::optional<double> clamp_min,
                           std::optional<double> clamp_max) {
  if (at::GradMode::is_enabled()) {  // (Function::forward runs with grad mode off)
    check_frozen(packed_weight, "packed_weight");
    check_frozen(weight_scale, "weight_scale");
    if (input_scale.has_value()) {
      check_frozen(*input_scale, "input_scale");
    }
    if (input_zero_point.has_value()) {
      check_frozen(*input_zero_point, "input_zero_point");
    }
  }
  return Linear::apply(input, packed_weight, weight_scale, bias, activation, input_scale, input_zero_point, clamp_min,
                       clamp_max)[0];
}

} // namespace

TORCH_LIBRARY_IMPL(q8, Autograd, m) {
  m.impl("quantize_weight", torch::autograd::autogradNotImplementedFallback());
  m.impl("pack_weight", torch::autograd::autogradNotImplementedFallback());
  m.impl("unpack_weight", torch::autograd::autogradNotImplementedFallback());
  m.impl("int8_mm", torch::autograd::autogradNotImplementedFallback());
  m.impl("linear", &linear_autograd);
  // The backward op is not differentiable (no double backward through linear).
  m.impl("linear_grad_input", torch::autograd::autogradNotImplementedFallback());
}

} // namespace q8::autograd
