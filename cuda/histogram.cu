// CUDA kernels of histogram_observe and histogram_qparams (schemas and semantics:
// csrc/ops/histogram.cpp; CPU kernels: csrc/ops/cpu/histogram.cpp; the math,
// shared by both: csrc/ops/histogram_math.h). Nothing is read on the host: the
// flag, the range and the histogram stay on the device, so a call never
// synchronizes and can be captured in a CUDA graph.
//
// histogram_observe, four launches on the current stream:
//   1. the finite min / max of the input (ATen's gpu_reduce_kernel, NaN and +-Inf
//      skipped), unless input_range is given; it runs whatever observer_on holds.
//   2. prepare (one thread per bin): the flag, the range update, and the base
//      histogram for the new range (zeros the first time, the old bins when the
//      range did not move, else the overlap re-binning of hist_rebin_bin) into a
//      scratch buffer, plus [active, new lo, new hi] for the next launches.
//   3. counts (only for a non-empty input): each finite value adds 1 to its bin;
//      lanes of a warp with the same bin are merged first (one atomic per bin
//      and warp step: a hot bin such as post-ReLU zeros does not serialize),
//      into a per-block shared-memory uint32 histogram (as many bins as the
//      block's opt-in shared memory holds), then float64 atomicAdd into a zeroed
//      buffer; with more bins, float64 atomicAdd straight into it. Blocks: one
//      per kThreads * 8 values, at most 8 per SM, and with private bins at most
//      n / bins (each block clears and flushes every bin). The counts are
//      integers (exact in float64 up to 2^53), so the order of the atomics does
//      not matter.
//   4. commit (one thread per bin): histogram = base + counts, and the new range.
//   The CPU computes the same base, the same integer counts and the same sum,
//   so the state is bit-identical on both devices.
// histogram_qparams, one block: the chunk sums in parallel, then the CPU's
// sequential walk on thread 0 (the quantile searches), or the bisection of the
// symmetric case with the per-chunk masses in parallel and their sum on
// thread 0, in the CPU's order; then compute_qparams (qparams_math.h).
//
// Compiled with --fmad=false and without fast math, as every q8 CUDA source.
#include <algorithm>
#include <cfloat>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/TensorIterator.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/native/cuda/Reduce.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <thrust/pair.h>
#include <torch/library.h>

#include "ops/checks.h"
#include "ops/histogram_math.h"
#include "ops/qparams_math.h"
#include "observer_common.cuh"

namespace q8::cuda {
namespace {

#define Q8_DISPATCH_FLOAT_TYPES(TYPE, NAME, ...)               \
  AT_DISPATCH_SWITCH(                                          \
      TYPE, NAME,                                              \
      AT_DISPATCH_CASE(at::ScalarType::Float, __VA_ARGS__)     \
      AT_DISPATCH_CASE(at::ScalarType::Half, __VA_ARGS__)      \
      AT_DISPATCH_CASE(at::ScalarType::BFloat16, __VA_ARGS__))

constexpr int kThreads = 256;
constexpr int kQparamsThreads = 256;

// 1. Flags read on the device and the finite min / max reduction (Flag,
// make_flag, read_flag, FiniteMinMaxOps): observer_common.cuh.

// ---------------------------------------------------------------------------
// 2. Range update and base histogram. params: [active, lo, hi].
// ---------------------------------------------------------------------------
__global__ void prepare_kernel(Flag observer_on, const float* batch, int64_t batch_n, const double* hist,
                               const float* hist_min, const float* hist_max, int64_t bins, double* base,
                               float* params) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= bins) {
    return;
  }
  float bmin = std::numeric_limits<float>::infinity(), bmax = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < batch_n; ++i) {
    const float v = batch[i];
    if (detail::hist_finite(v)) {
      bmin = v < bmin ? v : bmin;
      bmax = v > bmax ? v : bmax;
    }
  }
  const float old_lo = *hist_min, old_hi = *hist_max;
  const auto u = detail::hist_update_range(old_lo, old_hi, bmin, bmax);
  const bool active = u.active && read_flag(observer_on);
  double b = 0.0;
  if (active && !u.fresh) {
    b = (u.lo == old_lo && u.hi == old_hi) ? hist[j]
                                           : detail::hist_rebin_bin(hist, bins, old_lo, old_hi, u.lo, u.hi, j);
  }
  base[j] = b;
  if (j == 0) {
    params[0] = active ? 1.f : 0.f;
    params[1] = u.lo;
    params[2] = u.hi;
  }
}

// ---------------------------------------------------------------------------
// 3. Counts of a contiguous input.
// ---------------------------------------------------------------------------
// Every warp first merges its lanes that hit the same bin (__match_any_sync), so
// a hot bin (the zeros after a ReLU) costs one atomic per warp and step, not 32.
// kShared: each block counts into a private uint32 histogram in shared memory,
// then adds its non-zero bins to the float64 counts; without it (more bins than
// shared memory holds), float64 atomics go straight to the counts. The block
// loop runs the same number of steps in every lane of a block (the bound is
// block-uniform), so the warp-wide match sees all 32 lanes.
template <typename scalar_t, bool kShared>
__global__ void count_kernel(const scalar_t* x, int64_t n, const float* params, int64_t bins, double* counts) {
  extern __shared__ uint32_t shared_counts[];
  const bool active = params[0] != 0.f;  // uniform across the grid
  if (!active) {
    return;
  }
  const double lo = params[1], hi = params[2];
  if (kShared) {
    for (int64_t k = threadIdx.x; k < bins; k += blockDim.x) {
      shared_counts[k] = 0;
    }
    __syncthreads();
  }
  const int lane = threadIdx.x & 31;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i0 = static_cast<int64_t>(blockIdx.x) * blockDim.x; i0 < n; i0 += stride) {
    const int64_t i = i0 + threadIdx.x;
    long long key = -1;  // no bin
    if (i < n) {
      const float v = static_cast<float>(x[i]);
      if (detail::hist_finite(v)) {
        key = static_cast<long long>(detail::hist_bin(v, lo, hi, bins));
      }
    }
    const unsigned peers = __match_any_sync(0xffffffffu, key);
    if (key >= 0 && lane == __ffs(peers) - 1) {
      const unsigned c = static_cast<unsigned>(__popc(peers));
      if (kShared) {
        atomicAdd(&shared_counts[key], c);
      } else {
        atomicAdd(&counts[key], static_cast<double>(c));
      }
    }
  }
  if (kShared) {
    __syncthreads();
    for (int64_t k = threadIdx.x; k < bins; k += blockDim.x) {
      const uint32_t c = shared_counts[k];
      if (c != 0) {
        atomicAdd(&counts[k], static_cast<double>(c));
      }
    }
  }
}

// ---------------------------------------------------------------------------
// 4. Commit.
// ---------------------------------------------------------------------------
__global__ void commit_kernel(const double* base, const double* counts, const float* params, int64_t bins,
                              double* hist, float* hist_min, float* hist_max) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= bins || params[0] == 0.f) {
    return;
  }
  hist[j] = base[j] + counts[j];
  if (j == 0) {
    *hist_min = params[1];
    *hist_max = params[2];
  }
}

void histogram_observe_cuda(
    const at::Tensor& input,
    const at::Tensor& observer_on,
    at::Tensor& histogram,
    at::Tensor& hist_min,
    at::Tensor& hist_max,
    const std::optional<at::Tensor>& input_range) {
  detail::check_histogram_observe_args("histogram_observe", input, observer_on, histogram, hist_min, hist_max,
                                       input_range);
  const bool given_range = input_range.has_value() && input_range->defined();
  if (input.numel() == 0 && !given_range) {
    return;  // nothing to observe (with input_range, the range still grows)
  }
  c10::cuda::CUDAGuard device_guard(input.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t bins = histogram.numel();
  const auto f32 = input.options().dtype(at::kFloat);
  const auto f64 = input.options().dtype(at::kDouble);

  // 1. The batch range.
  at::Tensor batch;
  if (given_range) {
    batch = input_range->contiguous();
  } else {
    batch = at::empty({2}, f32);
    const auto x = input.dim() == 0 ? input.view({1}) : input;
    std::vector<int64_t> ones(x.dim(), 1), zeros(x.dim(), 0);
    auto min_view = batch.narrow(0, 0, 1).as_strided(ones, zeros);
    auto max_view = batch.narrow(0, 1, 1).as_strided(ones, zeros);
    auto iter = at::TensorIterator::reduce_op(min_view, max_view, x);
    Q8_DISPATCH_FLOAT_TYPES(x.scalar_type(), "q8_histogram_min_max_cuda", [&] {
      const float inf = std::numeric_limits<float>::infinity();
      at::native::gpu_reduce_kernel<scalar_t, float>(iter, FiniteMinMaxOps<scalar_t>{},
                                                     thrust::pair<float, float>(inf, -inf));
    });
  }

  // 2. Range update and base histogram.
  auto base = at::empty({bins}, f64);
  auto params = at::empty({3}, f32);
  const int64_t bin_blocks = (bins + kThreads - 1) / kThreads;
  prepare_kernel<<<bin_blocks, kThreads, 0, stream>>>(
      make_flag(observer_on), batch.const_data_ptr<float>(), batch.numel(), histogram.const_data_ptr<double>(),
      hist_min.const_data_ptr<float>(), hist_max.const_data_ptr<float>(), bins, base.mutable_data_ptr<double>(),
      params.mutable_data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  // 3. Counts.
  auto counts = at::zeros({bins}, f64);
  if (input.numel() > 0) {
    const auto x = input.contiguous();
    const int64_t n = x.numel();
    const auto* props = at::cuda::getCurrentDeviceProperties();
    const int sms = props->multiProcessorCount;
    // Private shared-memory bins up to what a block may opt in to (about 56 K
    // bins on an H100), then global float64 atomics.
    const int64_t smem_limit = std::max<int64_t>(int64_t{48} * 1024, static_cast<int64_t>(props->sharedMemPerBlockOptin));
    const bool shared = bins * static_cast<int64_t>(sizeof(uint32_t)) <= smem_limit;
    const size_t smem = shared ? static_cast<size_t>(bins) * sizeof(uint32_t) : 0;
    // Enough blocks for the input (kThreads * 8 values each), at most 8 per SM,
    // and with private bins no more blocks than n / bins: a block clears and
    // flushes all its bins, which only pays when it counts at least as many values.
    int64_t wanted = (n + kThreads * 8 - 1) / (kThreads * 8);
    if (shared) {
      wanted = std::min<int64_t>(wanted, n / bins);
    }
    const int blocks = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(wanted, int64_t{sms} * 8)));
    Q8_DISPATCH_FLOAT_TYPES(x.scalar_type(), "q8_histogram_count_cuda", [&] {
      if (shared) {
        if (smem > size_t{48} * 1024) {
          C10_CUDA_CHECK(cudaFuncSetAttribute(count_kernel<scalar_t, true>,
                                              cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
        }
        count_kernel<scalar_t, true><<<blocks, kThreads, smem, stream>>>(
            x.const_data_ptr<scalar_t>(), n, params.const_data_ptr<float>(), bins, counts.mutable_data_ptr<double>());
      } else {
        count_kernel<scalar_t, false><<<blocks, kThreads, 0, stream>>>(
            x.const_data_ptr<scalar_t>(), n, params.const_data_ptr<float>(), bins, counts.mutable_data_ptr<double>());
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  // 4. Commit.
  commit_kernel<<<bin_blocks, kThreads, 0, stream>>>(
      base.const_data_ptr<double>(), counts.const_data_ptr<double>(), params.const_data_ptr<float>(), bins,
      histogram.mutable_data_ptr<double>(), hist_min.mutable_data_ptr<float>(), hist_max.mutable_data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---------------------------------------------------------------------------
// histogram_qparams: one block. scratch: [chunk sums | per-chunk masses].
// ---------------------------------------------------------------------------
__global__ void qparams_kernel(const double* h, int64_t bins, const float* hist_min, const float* hist_max,
                               double percentile, int64_t quant_min, int64_t quant_max, bool symmetric,
                               double* scratch, float* scale, int32_t* zero_point) {
  __shared__ bool s_bisect;
  __shared__ uint32_t s_first, s_last;
  __shared__ float s_lo, s_hi;
  __shared__ double s_target;
  const int64_t chunks = detail::hist_chunks(bins);
  double* sums = scratch;
  double* masses = scratch + chunks;
  const float lo = *hist_min, hi = *hist_max;
  for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) {
    sums[c] = detail::hist_chunk_sum(h, bins, c);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    const double total = detail::hist_total(sums, chunks);
    s_bisect = false;
    switch (detail::hist_qparams_case(lo, hi, total, percentile)) {
      case detail::HistQparamsCase::Empty:
        s_lo = s_hi = 0.f;
        break;
      case detail::HistQparamsCase::Full:
        if (symmetric) {
          const float a = detail::hist_abs_max(lo, hi);
          s_lo = -a;
          s_hi = a;
        } else {
          s_lo = lo;
          s_hi = hi;
        }
        break;
      case detail::HistQparamsCase::Clip:
        if (!symmetric) {
          float a, b;
          detail::hist_asymmetric_range(h, bins, sums, chunks, total, lo, hi, percentile, &a, &b);
          s_lo = a;
          s_hi = b;
        } else {
          s_bisect = true;
          s_target = total * (percentile / 100.0);
          s_first = 0;
          s_last = detail::hist_float_bits(detail::hist_abs_max(lo, hi));
        }
        break;
    }
  }
  __syncthreads();
  if (s_bisect) {
    const double dlo = lo;
    const double w = (static_cast<double>(hi) - dlo) / static_cast<double>(bins);
    for (;;) {
      const uint32_t first = s_first, last = s_last;  // read after a barrier
      if (first >= last) {
        break;
      }
      const uint32_t mid = first + (last - first) / 2;
      const double a = detail::hist_bits_float(mid);
      for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) {
        masses[c] = detail::hist_chunk_abs_mass(h, bins, c, dlo, w, a);
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        double g = 0.0;
        for (int64_t c = 0; c < chunks; ++c) {
          g += masses[c];
        }
        if (g >= s_target) {
          s_last = mid;
        } else {
          s_first = mid + 1;
        }
      }
      __syncthreads();
    }
    if (threadIdx.x == 0) {
      const float a = detail::hist_bits_float(s_last);
      s_lo = -a;
      s_hi = a;
    }
  }
  if (threadIdx.x == 0) {
    detail::compute_qparams(s_lo, s_hi, quant_min, quant_max, symmetric, scale, zero_point);
  }
}

std::tuple<at::Tensor, at::Tensor> histogram_qparams_cuda(
    const at::Tensor& histogram,
    const at::Tensor& hist_min,
    const at::Tensor& hist_max,
    double percentile,
    int64_t quant_min,
    int64_t quant_max,
    bool symmetric) {
  detail::check_histogram_qparams_args("histogram_qparams", histogram, hist_min, hist_max, percentile, quant_min,
                                       quant_max);
  c10::cuda::CUDAGuard device_guard(histogram.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t bins = histogram.numel();
  auto scale = at::empty({}, histogram.options().dtype(at::kFloat));
  auto zero_point = at::empty({}, histogram.options().dtype(at::kInt));
  auto scratch = at::empty({2 * detail::hist_chunks(bins)}, histogram.options());
  qparams_kernel<<<1, kQparamsThreads, 0, stream>>>(
      histogram.const_data_ptr<double>(), bins, hist_min.const_data_ptr<float>(), hist_max.const_data_ptr<float>(),
      percentile, quant_min, quant_max, symmetric, scratch.mutable_data_ptr<double>(), scale.mutable_data_ptr<float>(),
      zero_point.mutable_data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {scale, zero_point};
}

#undef Q8_DISPATCH_FLOAT_TYPES

} // namespace

TORCH_LIBRARY_IMPL(q8, CUDA, m) {
  m.impl("histogram_observe", &histogram_observe_cuda);
  m.impl("histogram_qparams", &histogram_qparams_cuda);
}

} // namespace q8::cuda
