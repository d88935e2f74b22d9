// CPU kernel of observe_fake_quantize (schema and semantics in ../observer.cpp).
//
// Two passes over the input at most: the per-channel min / max of its finite
// values (only when the observer is on), then the fake quantization through the
// vectorized kernel table of the fake-quantize ops (kernels/kernels.h), so the
// output and mask are those of q8.fake_quantize_per_tensor / _per_channel bit
// for bit. The state update in between is O(channels).
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"
#include "../observer_math.h"
#include "../qparams_math.h"
#include "min_max.h"
#include "kernels/kernels.h"
#include "qparams.h"

namespace q8::cpu {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kMinMaxGrain = 32768;


// Periodic form for short runs: element j of x[0, n) folds into slot j.
template <typename T>
void finite_min_max_slots(const T* x, int64_t n, float* lo, float* hi) {
  for (int64_t j = 0; j < n; ++j) {
    const float v = static_cast<float>(x[j]);
    const bool ok = std::fabs(v) <= FLT_MAX;
    const float a = ok ? v : kInf;
    const float b = ok ? v : -kInf;
    lo[j] = a < lo[j] ? a : lo[j];
    hi[j] = b > hi[j] ? b : hi[j];
  }
}

// Per channel min / max of the finite values of a dense tensor `x` (memory
// order, `layout` from layout_of): +Inf / -Inf for a channel without any.
// Deterministic for any thread count (min and max do not depend on the order).
void finite_min_max(const at::Tensor& x, const Layout& layout, std::vector<float>& cmin, std::vector<float>& cmax) {
  const int64_t channels = layout.channels;
  cmin.assign(channels, kInf);
  cmax.assign(channels, -kInf);
  const int64_t numel = x.numel();
  if (numel == 0) {
    return;
  }
  // Broadcast: runs of `inner` elements of one channel. Periodic: short runs, so
  // one slot per position of a period of channels * inner elements.
  const bool broadcast = channels == 1 || layout.inner >= kMinRun;
  const int64_t inner = channels == 1 ? numel : layout.inner;
  const int64_t period = channels * inner;
  const int64_t slots = broadcast ? channels : period;
  const int64_t nthreads = at::get_num_threads();
  std::vector<float> tmin(nthreads * slots, kInf), tmax(nthreads * slots, -kInf);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "q8_observe_min_max", [&] {
    const auto* data = x.const_data_ptr<scalar_t>();
    at::parallel_for(0, numel, kMinMaxGrain, [&](int64_t begin, int64_t end) {
      const int64_t tid = at::get_thread_num();
      TORCH_INTERNAL_ASSERT(tid >= 0 && tid < nthreads);
      float* lo = tmin.data() + tid * slots;
      float* hi = tmax.data() + tid * slots;
      int64_t i = begin;
      while (i < end) {
        if (broadcast) {
          const int64_t len = std::min(inner - i % inner, end - i);
          const int64_t c = (i / inner) % channels;
          finite_min_max_run(data + i, len, lo + c, hi + c);
          i += len;
        } else {
          const int64_t pos = i % period;
          const int64_t len = std::min(period - pos, end - i);
          finite_min_max_slots(data + i, len, lo + pos, hi + pos);
          i += len;
        }
      }
    });
  });
  for (int64_t t = 0; t < nthreads; ++t) {
    for (int64_t s = 0; s < slots; ++s) {
      const int64_t c = broadcast ? s : s / inner;
      cmin[c] = std::min(cmin[c], tmin[t * slots + s]);
      cmax[c] = std::max(cmax[c], tmax[t * slots + s]);
    }
  }
}

// Element stride of a state tensor (one element per tensor, or 1-D per channel).
int64_t state_stride(const at::Tensor& t) {
  return t.dim() == 1 ? t.stride(0) : 0;
}

std::tuple<at::Tensor, at::Tensor> observe_fake_quantize_cpu(
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
  const char* op = "observe_fake_quantize";
  const auto wrapped = detail::check_observe_fake_quantize_args(op, input, observer_on, fake_quant_on, running_min,
                                                                running_max, scale, zero_point, averaging_constant,
                                                                quant_min, quant_max, axis);
  const bool observe = read_flag(observer_on);
  const bool fake_quant = read_flag(fake_quant_on);

  auto out = empty_output(input, input.options());
  auto mask = empty_output(input, input.options().dtype(at::kBool));
  const auto x = match_layout(input, out);
  const Layout layout = layout_of(x, wrapped);

  if (observe) {
    std::vector<float> cmin, cmax;
    finite_min_max(x, layout, cmin, cmax);
    float* rmin = running_min.mutable_data_ptr<float>();
    float* rmax = running_max.mutable_data_ptr<float>();
    float* sp = scale.mutable_data_ptr<float>();
    int32_t* zp = zero_point.mutable_data_ptr<int32_t>();
    const int64_t rmin_st = state_stride(running_min), rmax_st = state_stride(running_max);
    const int64_t s_st = state_stride(scale), z_st = state_stride(zero_point);
    const float c = static_cast<float>(averaging_constant);
    for (int64_t ch = 0; ch < layout.channels; ++ch) {
      float* lo = rmin + ch * rmin_st;
      float* hi = rmax + ch * rmax_st;
      detail::update_running_min_max(cmin[ch], cmax[ch], c, lo, hi);
      detail::compute_qparams(*lo, *hi, quant_min, quant_max, symmetric, sp + ch * s_st, zp + ch * z_st);
    }
  }

  if (fake_quant) {
    // The checks and parameter layout of the fake-quantize ops: a scale or zero
    // point stored by hand (observer off) that is invalid is an error here too.
    const auto host = make_host_params(op, layout, scale, zero_point, quant_min, quant_max);
    if (x.numel() > 0) {
      kernels().fake_quantize(x.scalar_type(), x.const_data_ptr(), out.mutable_data_ptr(),
                              mask.mutable_data_ptr<bool>(), host.params);
    }
  } else {
    out.copy_(x);
    mask.fill_(true);
  }
  return {out, mask};
}

} // namespace

TORCH_LIBRARY_IMPL(q8, CPU, m) {
  m.impl("observe_fake_quantize", &observe_fake_quantize_cpu);
}

} // namespace q8::cpu
