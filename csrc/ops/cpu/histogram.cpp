// CPU kernels of histogram_observe and histogram_qparams (schemas and semantics in
// ../histogram.cpp; the math, shared with cuda/histogram.cu, in ../histogram_math.h).
//
// histogram_observe: at most two passes over the input (its finite min / max,
// unless input_range gives the range; then the counts), each split across
// threads with at::parallel_for. Counts are integers (per-thread int64 arrays,
// summed exactly), added to the (re-binned) old histogram once per bin at the
// end, so the result does not depend on the thread count and equals the CUDA
// kernel's bit for bit. A non-contiguous input is made contiguous first.
//
// histogram_qparams: O(B) per quantile (O(31 B) for the symmetric bisection),
// on the calling thread, in the CUDA kernel's order of float64 operations.
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
#include "../histogram_math.h"
#include "../qparams_math.h"
#include "min_max.h"

namespace q8::cpu {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kGrain = 32768;

// Finite min / max of a contiguous tensor: (+Inf, -Inf) when it has none.
std::pair<float, float> finite_min_max(const at::Tensor& x) {
  const int64_t numel = x.numel();
  const int64_t nthreads = at::get_num_threads();
  std::vector<float> tmin(nthreads, kInf), tmax(nthreads, -kInf);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "q8_hist_min_max", [&] {
    const auto* data = x.const_data_ptr<scalar_t>();
    at::parallel_for(0, numel, kGrain, [&](int64_t begin, int64_t end) {
      const int64_t tid = at::get_thread_num();
      TORCH_INTERNAL_ASSERT(tid >= 0 && tid < nthreads);
      finite_min_max_run(data + begin, end - begin, &tmin[tid], &tmax[tid]);
    });
  });
  return {*std::min_element(tmin.begin(), tmin.end()), *std::max_element(tmax.begin(), tmax.end())};
}

// Finite min / max of input_range's elements.
std::pair<float, float> range_of(const at::Tensor& input_range) {
  const auto r = input_range.contiguous();
  const float* p = r.const_data_ptr<float>();
  float lo = kInf, hi = -kInf;
  for (int64_t i = 0; i < r.numel(); ++i) {
    if (detail::hist_finite(p[i])) {
      lo = std::min(lo, p[i]);
      hi = std::max(hi, p[i]);
    }
  }
  return {lo, hi};
}

// Integer counts of the finite values of a contiguous x for the range [lo, hi].
std::vector<int64_t> count_bins(const at::Tensor& x, float lo, float hi, int64_t bins) {
  const int64_t numel = x.numel();
  const int64_t nthreads = at::get_num_threads();
  std::vector<int64_t> counts(nthreads * bins, 0);
  const double dlo = lo, dhi = hi;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "q8_hist_count", [&] {
    const auto* data = x.const_data_ptr<scalar_t>();
    at::parallel_for(0, numel, kGrain, [&](int64_t begin, int64_t end) {
      const int64_t tid = at::get_thread_num();
      TORCH_INTERNAL_ASSERT(tid >= 0 && tid < nthreads);
      int64_t* c = counts.data() + tid * bins;
      for (int64_t i = begin; i < end; ++i) {
        const float v = static_cast<float>(data[i]);
        if (detail::hist_finite(v)) {
          ++c[detail::hist_bin(v, dlo, dhi, bins)];
        }
      }
    });
  });
  for (int64_t t = 1; t < nthreads; ++t) {
    for (int64_t j = 0; j < bins; ++j) {
      counts[j] += counts[t * bins + j];
    }
  }
  counts.resize(bins);
  return counts;
}

void histogram_observe_cpu(
    const at::Tensor& input,
    const at::Tensor& observer_on,
    at::Tensor& histogram,
    at::Tensor& hist_min,
    at::Tensor& hist_max,
    const std::optional<at::Tensor>& input_range) {
  detail::check_histogram_observe_args("histogram_observe", input, observer_on, histogram, hist_min, hist_max,
                                       input_range);
  if (!read_flag(observer_on)) {
    return;
  }
  const bool given_range = input_range.has_value() && input_range->defined();
  const auto x = input.contiguous();
  const auto [bmin, bmax] = given_range ? range_of(*input_range) : finite_min_max(x);
  float* lo_p = hist_min.mutable_data_ptr<float>();
  float* hi_p = hist_max.mutable_data_ptr<float>();
  const auto u = detail::hist_update_range(*lo_p, *hi_p, bmin, bmax);
  if (!u.active) {
    return;
  }
  const int64_t bins = histogram.numel();
  double* h = histogram.mutable_data_ptr<double>();
  std::vector<double> base(bins, 0.0);
  if (!u.fresh) {
    if (u.lo == *lo_p && u.hi == *hi_p) {
      std::copy(h, h + bins, base.begin());
    } else {
      const float old_lo = *lo_p, old_hi = *hi_p;
      at::parallel_for(0, bins, 256, [&](int64_t begin, int64_t end) {
        for (int64_t j = begin; j < end; ++j) {
          base[j] = detail::hist_rebin_bin(h, bins, old_lo, old_hi, u.lo, u.hi, j);
        }
      });
    }
  }
  if (x.numel() > 0) {
    const auto counts = count_bins(x, u.lo, u.hi, bins);
    for (int64_t j = 0; j < bins; ++j) {
      h[j] = base[j] + static_cast<double>(counts[j]);
    }
  } else {
    for (int64_t j = 0; j < bins; ++j) {
      h[j] = base[j] + 0.0;
    }
  }
  *lo_p = u.lo;
  *hi_p = u.hi;
}

// The clipped range of a histogram state ([0, 0] before any observation).
void clipped_range(const double* h, int64_t bins, float lo, float hi, double percentile, bool symmetric,
                   float* out_lo, float* out_hi) {
  const int64_t chunks = detail::hist_chunks(bins);
  std::vector<double> sums(chunks);
  for (int64_t c = 0; c < chunks; ++c) {
    sums[c] = detail::hist_chunk_sum(h, bins, c);
  }
  const double total = detail::hist_total(sums.data(), chunks);
  switch (detail::hist_qparams_case(lo, hi, total, percentile)) {
    case detail::HistQparamsCase::Empty:
      *out_lo = *out_hi = 0.f;
      return;
    case detail::HistQparamsCase::Full:
      if (symmetric) {
        const float a = detail::hist_abs_max(lo, hi);
        *out_lo = -a;
        *out_hi = a;
      } else {
        *out_lo = lo;
        *out_hi = hi;
      }
      return;
    case detail::HistQparamsCase::Clip:
      break;
  }
  if (!symmetric) {
    detail::hist_asymmetric_range(h, bins, sums.data(), chunks, total, lo, hi, percentile, out_lo, out_hi);
    return;
  }
  // Symmetric: the smallest float32 a in [0, amax] with G(a) >= target
  // (bisection over the float32 bit patterns, which order the values >= 0).
  const double target = total * (percentile / 100.0);
  const double dlo = lo;
  const double w = (static_cast<double>(hi) - dlo) / static_cast<double>(bins);
  uint32_t first = 0, last = detail::hist_float_bits(detail::hist_abs_max(lo, hi));
  while (first < last) {
    const uint32_t mid = first + (last - first) / 2;
    const double a = detail::hist_bits_float(mid);
    double g = 0.0;
    for (int64_t c = 0; c < chunks; ++c) {
      g += detail::hist_chunk_abs_mass(h, bins, c, dlo, w, a);
    }
    if (g >= target) {
      last = mid;
    } else {
      first = mid + 1;
    }
  }
  const float a = detail::hist_bits_float(last);
  *out_lo = -a;
  *out_hi = a;
}

std::tuple<at::Tensor, at::Tensor> histogram_qparams_cpu(
    const at::Tensor& histogram,
    const at::Tensor& hist_min,
    const at::Tensor& hist_max,
    double percentile,
    int64_t quant_min,
    int64_t quant_max,
    bool symmetric) {
  detail::check_histogram_qparams_args("histogram_qparams", histogram, hist_min, hist_max, percentile, quant_min,
                                       quant_max);
  float lo = 0.f, hi = 0.f;
  clipped_range(histogram.const_data_ptr<double>(), histogram.numel(), *hist_min.const_data_ptr<float>(),
                *hist_max.const_data_ptr<float>(), percentile, symmetric, &lo, &hi);
  auto scale = at::empty({}, histogram.options().dtype(at::kFloat));
  auto zero_point = at::empty({}, histogram.options().dtype(at::kInt));
  detail::compute_qparams(lo, hi, quant_min, quant_max, symmetric, scale.mutable_data_ptr<float>(),
                          zero_point.mutable_data_ptr<int32_t>());
  return {scale, zero_point};
}

} // namespace

TORCH_LIBRARY_IMPL(q8, CPU, m) {
  m.impl("histogram_observe", &histogram_observe_cpu);
  m.impl("histogram_qparams", &histogram_qparams_cpu);
}

} // namespace q8::cpu
