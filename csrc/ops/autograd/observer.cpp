// Autograd kernel of observe_fake_quantize, registered in C++ so that Python,
// TorchScript and C++ LibTorch programs train the same way.
//
// Only `input` is differentiable: the op returns the straight-through mask with
// its output, and the backward is q8::_fake_quantize_mask_backward(grad, mask)
// (the op of the fake-quantize family, with its own CPU / CUDA / Meta / Autograd
// kernels, so torch.compile traces it and double backward works). With fake
// quantization off the mask is all true: the gradient of the copy is grad.
// The four state tensors are updated in place below autograd: they get no
// gradient, must not require grad while grad mode is on (an in-place update of
// a tensor in the graph would silently break it), and their version counters
// are bumped (what the ADInplaceOrView key does for ATen's in-place ops), so that
// autograd catches a backward through a stale saved copy of them.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

namespace q8::autograd {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::tuple<at::Tensor, at::Tensor> observe_fake_quantize_op(
    const at::Tensor& input, const at::Tensor& observer_on, const at::Tensor& fake_quant_on, at::Tensor& running_min,
    at::Tensor& running_max, at::Tensor& scale, at::Tensor& zero_point, double averaging_constant, int64_t quant_min,
    int64_t quant_max, std::optional<int64_t> axis, bool symmetric) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("q8::observe_fake_quantize", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, at::Tensor&, at::Tensor&,
                           at::Tensor&, at::Tensor&, double, int64_t, int64_t, std::optional<int64_t>, bool)>();
  return op.call(input, observer_on, fake_quant_on, running_min, running_max, scale, zero_point, averaging_constant,
                 quant_min, quant_max, axis, symmetric);
}

at::Tensor mask_backward(const at::Tensor& grad, const at::Tensor& mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("q8::_fake_quantize_mask_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  return op.call(grad, mask);
}

// The op below autograd, then the version bumps of the mutated state.
std::tuple<at::Tensor, at::Tensor> run_below_autograd(
    const at::Tensor& input, const at::Tensor& observer_on, const at::Tensor& fake_quant_on,
    const at::Tensor& running_min, const at::Tensor& running_max, const at::Tensor& scale,
    const at::Tensor& zero_point, double averaging_constant, int64_t quant_min, int64_t quant_max,
    std::optional<int64_t> axis, bool symmetric) {
  at::Tensor rmin = running_min, rmax = running_max, s = scale, z = zero_point;
  std::tuple<at::Tensor, at::Tensor> result;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    result = observe_fake_quantize_op(input, observer_on, fake_quant_on, rmin, rmax, s, z, averaging_constant,
                                      quant_min, quant_max, axis, symmetric);
  }
  for (const auto* t : {&running_min, &running_max, &scale, &zero_point}) {
    if (!t->is_inference()) {
      torch::autograd::impl::bump_version(*t);
    }
  }
  return result;
}

class ObserveFakeQuantize : public torch::autograd::Function<ObserveFakeQuantize> {
 public:
  static variable_list forward(
      AutogradContext* ctx,
      const at::Tensor& input,
      const at::Tensor& observer_on,
      const at::Tensor& fake_quant_on,
      const at::Tensor& running_min,
      const at::Tensor& running_max,
      const at::Tensor& scale,
      const at::Tensor& zero_point,
      double averaging_constant,
      int64_t quant_min,
      int64_t quant_max,
      std::optional<int64_t> axis,
      bool symmetric) {
    auto [output, mask] = run_below_autograd(input, observer_on, fake_quant_on, running_min, running_max, scale,
                                             zero_point, averaging_constant, quant_min, quant_max, axis, symmetric);
    ctx->save_for_backward({mask});
    ctx->mark_non_differentiable({mask});
    return {output, mask};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto mask = ctx->get_saved_variables()[0];
    variable_list grads(12);
    grads[0] = mask_backward(grad_outputs[0], mask);
    return grads;
  }
};

std::tuple<at::Tensor, at::Tensor> observe_fake_quantize_autograd(
    const at::Tensor& input,
    const at::Tensor& observer_on,
    const at::Tensor& fake_quant_on,
    at::Tensor& running_min,
    at::Tensor& running_max,
    at::Tensor& scale,
    at::Tensor& zero_point,
    double averaging_constant,
    int64_t quant_min,
    int64_t quant_max,
    std::optional<int64_t> axis,
    bool symmetric) {
  const bool grad_mode = at::GradMode::is_enabled();
  if (grad_mode) {
    const std::pair<const at::Tensor*, const char*> state[] = {
        {&running_min, "running_min"}, {&running_max, "running_max"}, {&scale, "scale"}, {&zero_point, "zero_point"}};
    for (const auto& [t, name] : state) {
      TORCH_CHECK(!(t->defined() && t->requires_grad()), "q8.observe_fake_quantize: ", name,
                  " must not require grad (it is updated in place and gets no gradient); pass a buffer or a "
                  "detached tensor, got one that requires grad");
    }
  }
  if (!(grad_mode && input.requires_grad())) {
    return run_below_autograd(input, observer_on, fake_quant_on, running_min, running_max, scale, zero_point,
                              averaging_constant, quant_min, quant_max, axis, symmetric);
  }
  auto outs = ObserveFakeQuantize::apply(input, observer_on, fake_quant_on, running_min, running_max, scale,
                                         zero_point, averaging_constant, quant_min, quant_max, axis, symmetric);
  return {outs[0], outs[1]};
}

} // namespace

TORCH_LIBRARY_IMPL(q8, Autograd, m) {
  m.impl("observe_fake_quantize", &observe_fake_quantize_autograd);
}

} // namespace q8::autograd
