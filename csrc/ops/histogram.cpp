// The histogram (percentile) observer: schemas and the public C++ API.
//   kernels: cpu/histogram.cpp, meta/histogram.cpp, autograd/histogram.cpp,
//            cuda/histogram.cu (when built with CUDA); math: histogram_math.h
//
// State (buffers the caller owns, updated in place): histogram, B >= 1 float64
// bins over [hist_min, hist_max] (float32, +Inf / -Inf before the first
// observation; the histogram's content then is ignored and overwritten).
//
// histogram_observe(input, observer_on, histogram, hist_min, hist_max, input_range):
//   when observer_on != 0 (read on the device: a CUDA call never synchronizes):
//   1. batch range: the finite min / max of input (NaN and +-Inf are ignored), or,
//      when input_range is given, the finite min / max of its one or two elements
//      (one element v is the range [v, v]). Nothing finite: no change at all.
//   2. range: the first observation takes the batch range; later ones the union
//      of the current range and the batch range. When it grows, the old counts are
//      re-binned into the new bins by overlap proportion (uniform density within
//      a bin; each old bin's mass is preserved up to float64 rounding).
//   3. counts: every finite value of input adds 1 to bin
//      clamp(floor((x - lo) * B / (hi - lo)), 0, B - 1) in float64 (torch.histc's
//      formula; hi lands in the last bin, values outside an input_range clamp into
//      the edge bins). A degenerate range lo == hi (e.g. a constant input) is a
//      point mass at lo, stored in bin 0, and moves whole into the bin of lo when
//      the range later grows.
//
// histogram_qparams(histogram, hist_min, hist_max, percentile, quant_min,
// quant_max, symmetric) -> (scale, zero_point): 0-dim float32 / int32 on the
// histogram's device, computed there (no sync), with q8.choose_qparams' formulas
// (qparams_math.h) on a clipped range:
//   - no observation (range not set): choose_qparams of an empty input (range
//     [0, 0]: scale = float32 eps, zero_point = quant_min (asymmetric));
//   - percentile == 100, no mass in the bins, or a degenerate range: the full
//     range [hist_min, hist_max];
//   - asymmetric: [lo, hi] with lo = inf { x : F(x) >= m } and
//     hi = sup { x : T - F(x) >= m }, m = T (1 - p / 100) / 2, T the total mass,
//     F the piecewise-linear CDF (uniform density within a bin);
//   - symmetric: [-a, a], a = the smallest float32 with G(a) >= T p / 100, G(a) the
//     mass of |x| <= a under the same density (a bisection over float32 values,
//     so a is the exact quantile rounded up to float32, up to the float64 sums).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <q8/q8.h>

namespace q8 {

TORCH_LIBRARY_FRAGMENT(q8, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  m.def(
      "histogram_observe(Tensor input, Tensor observer_on, Tensor(a!) histogram, Tensor(b!) hist_min,"
      " Tensor(c!) hist_max, Tensor? input_range=None) -> ()",
      tags);
  m.def(
      "histogram_qparams(Tensor histogram, Tensor hist_min, Tensor hist_max, float percentile, int quant_min,"
      " int quant_max, bool symmetric=False) -> (Tensor scale, Tensor zero_point)",
      tags);
}

void histogram_observe(
    const at::Tensor& input,
    const at::Tensor& observer_on,
    const at::Tensor& histogram,
    const at::Tensor& hist_min,
    const at::Tensor& hist_max,
    const std::optional<at::Tensor>& input_range) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("q8::histogram_observe", "")
                       .typed<void(const at::Tensor&, const at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&,
                                   const std::optional<at::Tensor>&)>();
  // Handles of the caller's tensors: the op updates their data in place.
  at::Tensor h = histogram;
  at::Tensor lo = hist_min;
  at::Tensor hi = hist_max;
  op.call(input, observer_on, h, lo, hi, input_range);
}

std::tuple<at::Tensor, at::Tensor> histogram_qparams(
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
  return op.call(histogram, hist_min, hist_max, percentile, quant_min, quant_max, symmetric);
}

} // namespace q8
