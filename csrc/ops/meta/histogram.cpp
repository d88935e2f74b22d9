// Meta (fake) kernels of histogram_observe and histogram_qparams: the argument
// checks of the real kernels, then (histogram_qparams) 0-dim outputs on the
// histogram's device. The state is mutated by the real kernels only.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../checks.h"

namespace q8::meta {
namespace {

void histogram_observe_meta(
    const at::Tensor& input,
    const at::Tensor& observer_on,
    at::Tensor& histogram,
    at::Tensor& hist_min,
    at::Tensor& hist_max,
    const std::optional<at::Tensor>& input_range) {
  detail::check_histogram_observe_args("histogram_observe", input, observer_on, histogram, hist_min, hist_max,
                                       input_range);
}

std::tuple<at::Tensor, at::Tensor> histogram_qparams_meta(
    const at::Tensor& histogram,
    const at::Tensor& hist_min,
    const at::Tensor& hist_max,
    double percentile,
    int64_t quant_min,
    int64_t quant_max,
    bool symmetric) {
  detail::check_histogram_qparams_args("histogram_qparams", histogram, hist_min, hist_max, percentile, quant_min,
                                       quant_max);
  return {at::empty({}, histogram.options().dtype(at::kFloat)), at::empty({}, histogram.options().dtype(at::kInt))};
}

} // namespace

TORCH_LIBRARY_IMPL(q8, Meta, m) {
  m.impl("histogram_observe", &histogram_observe_meta);
  m.impl("histogram_qparams", &histogram_qparams_meta);
}

} // namespace q8::meta
