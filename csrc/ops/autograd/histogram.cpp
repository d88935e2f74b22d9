// Autograd kernels of histogram_observe and histogram_qparams, registered in C++
// so that Python, TorchScript and C++ programs behave the same. Neither op is
// differentiable (calibration statistics carry no gradient): they run below
// autograd, so histogram_qparams' outputs never require grad. histogram_observe
// may observe an input that requires grad (an activation during training); its
// three state tensors are updated in place, so they must not require grad while
// grad mode is on, and their version counters are bumped (what the
// ADInplaceOrView key does for ATen's in-place ops).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

namespace q8::autograd {
namespace {

void histogram_observe_autograd(
    const at::Tensor& input,
    const at::Tensor& observer_on,
    at::Tensor& histogram,
    at::Tensor& hist_min,
    at::Tensor& hist_max,
    const std::optional<at::Tensor>& input_range) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("q8::histogram_observe", "")
                       .typed<void(const at::Tensor&, const at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&,
                                   const std::optional<at::Tensor>&)>();
  const std::pair<const at::Tensor*, const char*> state[] = {
      {&histogram, "histogram"}, {&hist_min, "hist_min"}, {&hist_max, "hist_max"}};
  if (at::GradMode::is_enabled()) {
    for (const auto& [t, name] : state) {
      TORCH_CHECK(!(t->defined() && t->requires_grad()), "q8.histogram_observe: ", name,
                  " must not require grad (it is updated in place and gets no gradient); pass a buffer or a "
                  "detached tensor, got one that requires grad");
    }
  }
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.call(input, observer_on, histogram, hist_min, hist_max, input_range);
  }
  for (const auto& [t, name] : state) {
    if (t->defined() && !t->is_inference()) {
      torch::autograd::impl::bump_version(*t);
    }
  }
}

std::tuple<at::Tensor, at::Tensor> histogram_qparams_autograd(
    const at::Tensor& histogram,
    const at::Tensor& hist_min,
    const at::Tensor& hist_max,
    double percentile,
    int64_t quant_min,
    int64_t quant_max,
    bool symmetric) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("q8::histogram_qparams", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&, double, int64_t, int64_t, bool)>();
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(histogram, hist_min, hist_max, percentile, quant_min, quant_max, symmetric);
}

} // namespace

TORCH_LIBRARY_IMPL(q8, Autograd, m) {
  m.impl("histogram_observe", &histogram_observe_autograd);
  m.impl("histogram_qparams", &histogram_qparams_autograd);
}

} // namespace q8::autograd
