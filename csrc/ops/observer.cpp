// The fused observer + fake quantization op (QAT): schema and the public C++ API.
//   kernels: cpu/observer.cpp, meta/observer.cpp, autograd/observer.cpp,
//            cuda/observer.cu (when built with CUDA)
//
// observe_fake_quantize is q8's counterpart of torch.fused_moving_avg_obs_fake_quant
// (the op behind torch.ao.quantization.FusedMovingAvgObsFakeQuantize). One call:
//   1. observer_on != 0: min / max of the finite values of input (per tensor, or
//      per channel along axis) update running_min / running_max in place
//      (observer_math.h: the first observation is taken as is, later ones by a
//      moving average), then scale / zero_point are recomputed in place from them
//      with q8's calibration formulas (qparams_math.h, as q8.choose_qparams).
//   2. fake_quant_on != 0: output = fake_quantize(input, scale, zero_point) (the
//      new ones) and mask = the straight-through mask; else output = a copy of
//      input and mask all true.
// The flags are read on the input's device (a CUDA call never synchronizes).
// The comment of q8::observe_fake_quantize in q8/q8.h lists where this differs
// from torch's op.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <q8/q8.h>

namespace q8 {

TORCH_LIBRARY_FRAGMENT(q8, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  m.def(
      "observe_fake_quantize(Tensor input, Tensor observer_on, Tensor fake_quant_on, Tensor(a!) running_min,"
      " Tensor(b!) running_max, Tensor(c!) scale, Tensor(d!) zero_point, float averaging_constant, int quant_min,"
      " int quant_max, int? axis=None, bool symmetric=False) -> (Tensor output, Tensor mask)",
      tags);
}

std::tuple<at::Tensor, at::Tensor> observe_fake_quantize(
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
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("q8::observe_fake_quantize", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, at::Tensor&, at::Tensor&,
                           at::Tensor&, at::Tensor&, double, int64_t, int64_t, std::optional<int64_t>, bool)>();
  // Handles of the caller's tensors: the op updates their data in place.
  at::Tensor rmin = running_min;
  at::Tensor rmax = running_max;
  at::Tensor s = scale;
  at::Tensor z = zero_point;
  return op.call(input, observer_on, fake_quant_on, rmin, rmax, s, z, averaging_constant, quant_min, quant_max, axis,
                 symmetric);
}

} // namespace q8
