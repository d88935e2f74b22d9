// CUDA kernels of the fake-quantize family (fake_quantize_per_tensor,
// fake_quantize_per_channel, _fake_quantize_cachemask, _fake_quantize_mask_backward,
// _fake_quantize_learnable_backward) and of choose_qparams, quantize and
// dequantize. Schemas: csrc/ops/fake_quantize.cpp and csrc/ops/quantize.cpp.
// They match the CPU kernels (csrc/ops/cpu/, kernels/fake_quantize_vec.cpp) bit
// for bit: the same float32 operations in the same order, per element,
//   q   = nearbyint(x * inv_scale) + zero_point     (inv_scale = 1.0f / scale, in float32)
//   out = (clamp(q, quant_min, quant_max) - zero_point) * scale
//   mask = quant_min <= q <= quant_max              (NaN: false)
// with NaN kept through the clamp, +-Inf and huge values clamped, float zero points
// rounded half to even and clamped, float16 / bfloat16 computed in float32 and
// stored in the input dtype. The build compiles this file with --fmad=false and
// without fast math (IEEE division, no flush to zero), which the bit equality
// needs; the one product that feeds a subtraction (the LSQ term) also uses
// __fmul_rn so that it is never contracted.
//
// Elementwise work goes through ATen's TensorIterator and gpu_kernel /
// gpu_kernel_multiple_outputs (vectorized loads and stores for dense operands, any
// strides otherwise). Per tensor, the kernels read the prepared scale, 1 / scale
// and zero point from a 3-float device table, so the iterator sees only the data
// and stays contiguous (vectorized). Per channel, the three rows of the table are
// viewed with size 1 on every dim but the axis (broadcast, stride 0) and the
// iterator does the channel indexing. choose_qparams reduces min / max with ATen's
// gpu_reduce_kernel in one pass, then runs compute_qparams (qparams_math.h, the
// CPU's formulas) in a small kernel. Outputs have the sizes, dtypes and strides of
// the Meta kernels (empty_like(..., MemoryFormat::Preserve)).
//
// Nothing here reads a device value on the host: no .item(), no copy to the host,
// no synchronization, so every op can be captured in a CUDA graph. Argument checks
// (dtypes, shapes, devices, axis, range) are the shared detail::check_* functions,
// so errors are those of the CPU and Meta kernels. The VALUE checks of the CPU
// (scale finite and >= FLT_MIN, integer zero point inside the range, float zero
// point finite) would need a host read; on CUDA they are not errors. Instead:
//
//   A channel (the only one per tensor) is INVALID when its scale is NaN, +-Inf,
//   <= 0 or below FLT_MIN (subnormal), or its zero point is NaN / +-Inf (float) or
//   outside [quant_min, quant_max] (integer; for dequantize: outside the input
//   dtype's range, [-128, 127] int8, [0, 255] uint8, [-32768, 65535] int32, as on
//   the CPU). For every element of an invalid channel:
//     - fake_quantize_per_tensor / _per_channel / _fake_quantize_cachemask:
//       output NaN (in the input dtype), mask false;
//     - _fake_quantize_learnable_backward: grad_input NaN, and the channel's
//       grad_scale and (float zero point) grad_zero_point NaN; an integer zero
//       point's gradient is 0 as always;
//     - quantize: the code quant_min (an integer has no NaN);
//     - dequantize: NaN.
//   Valid channels of the same tensor are computed normally. No error is raised.
//   (The straight-through input gradient of an invalid channel, grad * mask, is
//   0 since its mask is false; its forward output is NaN.) An empty input runs no
//   kernel, so its parameters are not looked at. _fake_quantize_mask_backward and
//   choose_qparams take no scale or zero point.
#include <algorithm>
#include <cfloat>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/TensorIterator.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/native/cuda/Loops.cuh>
#include <ATen/native/cuda/Reduce.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <thrust/pair.h>
#include <thrust/tuple.h>
#include <torch/library.h>

#include "ops/checks.h"
#include "ops/qparams_math.h"

namespace q8::cuda {
namespace {

// float32, float16 and bfloat16 (the op checks refuse every other input dtype).
#define Q8_DISPATCH_FLOAT_TYPES(TYPE, NAME, ...)               \
  AT_DISPATCH_SWITCH(                                          \
      TYPE, NAME,                                              \
      AT_DISPATCH_CASE(at::ScalarType::Float, __VA_ARGS__)     \
      AT_DISPATCH_CASE(at::ScalarType::Half, __VA_ARGS__)      \
      AT_DISPATCH_CASE(at::ScalarType::BFloat16, __VA_ARGS__))

constexpr int kSmallKernelThreads = 256;

// ---------------------------------------------------------------------------
// Per-element math, shared by every kernel (the sequence of
// kernels/fake_quantize_vec.cpp). Host-device so that ATen's host-device
// lambdas can call them; only the device side ever runs.
// ---------------------------------------------------------------------------

// q = nearbyint(x * inv_scale) + zero_point (round half to even).
C10_HOST_DEVICE inline float round_shift(float x, float inv, float z) {
  return nearbyintf(x * inv) + z;
}

// clamp(q, lo, hi) that keeps a NaN q (as at::vec::clamp on the CPU).
C10_HOST_DEVICE inline float clamp_keep_nan(float q, float lo, float hi) {
  return q < lo ? lo : (q > hi ? hi : q);
}

// The straight-through mask: NaN compares false.
C10_HOST_DEVICE inline bool in_range(float q, float lo, float hi) {
  return q >= lo && q <= hi;
}

// (clamp(q) - zero_point) * scale.
C10_HOST_DEVICE inline float dequant(float q, float s, float z, float lo, float hi) {
  return (clamp_keep_nan(q, lo, hi) - z) * s;
}

// a * b rounded once, never contracted into a fused multiply-add with what follows.
C10_HOST_DEVICE inline float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

// A read-only load through the non-coherent cache (every thread reads the same
// few per-tensor parameters).
C10_HOST_DEVICE inline float load_param(const float* p) {
#if defined(__CUDA_ARCH__)
  return __ldg(p);
#else
  return *p;
#endif
}

C10_HOST_DEVICE inline float quiet_nan() {
  return std::numeric_limits<float>::quiet_NaN();
}

// Learnable-scale (LSQ) terms of one element, the formulas of torch's
// _fake_quantize_learnable_per_*_affine_backward with grad_factor 1, as
// learnable_run in kernels/fake_quantize_vec.cpp computes them:
//   q below the range: dscale = g * (qmin - z), dzero = -g * s
//   q above the range: dscale = g * (qmax - z), dzero = -g * s
//   inside:            dscale = g * (xfq - x) * inv, dzero = 0
//   (NaN q: neither below nor above, so dscale is NaN and dzero 0, as on the CPU)
// and the straight-through dx = g * mask. An invalid channel (NaN parameters)
// gives NaN for all three.
struct LsqTerms {
  float dx;
  float ds;
  float dz;
};

C10_HOST_DEVICE inline LsqTerms lsq_terms(float g, float x, float s, float inv, float z, float lo, float hi) {
  if (s != s) {
    return {quiet_nan(), quiet_nan(), quiet_nan()};
  }
  const float q = round_shift(x, inv, z);
  const bool below = q < lo;
  const bool above = q > hi;
  LsqTerms t;
  t.dx = g * (in_range(q, lo, hi) ? 1.f : 0.f);
  const float xfq = mul_rn(clamp_keep_nan(q, lo, hi) - z, s);
  t.ds = below ? g * (lo - z) : (above ? g * (hi - z) : g * (xfq - x) * inv);
  t.dz = (below || above) ? g * -1.f * s : 0.f;
  return t;
}

// ---------------------------------------------------------------------------
// Parameters: scale, 1 / scale and the rounded zero point, per channel, as
// make_host_params (cpu/qparams.cpp) prepares them, with NaN for invalid ones.
// ---------------------------------------------------------------------------

// out is [3, channels]: row 0 scale, row 1 1.0f / scale, row 2 the zero point as
// float (integer: as is; float: nearbyint, then clamped to [lo, hi] exactly as
// std::min(std::max(r, lo), hi)). An invalid channel gets NaN in all three rows.
template <typename Z>
__global__ void prepare_params_kernel(
    const float* scale, const Z* zero_point, int64_t channels, int64_t lo, int64_t hi, float* out) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= channels) {
    return;
  }
  float s = scale[c];
  const Z zp = zero_point[c];
  bool valid = s >= FLT_MIN && s <= FLT_MAX;  // false for NaN
  float z;
  if constexpr (std::is_floating_point_v<Z>) {
    valid = valid && fabsf(zp) <= FLT_MAX;
    const float r = nearbyintf(zp);
    const float l = static_cast<float>(lo);
    const float h = static_cast<float>(hi);
    const float m = r < l ? l : r;
    z = h < m ? h : m;
  } else {
    valid = valid && static_cast<int64_t>(zp) >= lo && static_cast<int64_t>(zp) <= hi;
    z = static_cast<float>(zp);  // exact: |zp| <= 65535 when valid
  }
  float inv = __fdiv_rn(1.0f, s);
  if (!valid) {
    s = quiet_nan();
    inv = quiet_nan();
    z = quiet_nan();
  }
  out[c] = s;
  out[channels + c] = inv;
  out[2 * channels + c] = z;
}

// The [3, channels] parameter table of scale / zero_point (one element each per
// tensor, `channels` per channel). Zero points are checked against [lo, hi].
at::Tensor prepare_params(const at::Tensor& scale, const at::Tensor& zero_point, int64_t lo, int64_t hi) {
  const auto s = scale.contiguous();
  const auto z = zero_point.contiguous();
  const int64_t channels = s.numel();
  TORCH_INTERNAL_ASSERT(channels > 0 && z.numel() == channels);
  auto params = at::empty({3, channels}, s.options().dtype(at::kFloat));
  const int64_t blocks = (channels + kSmallKernelThreads - 1) / kSmallKernelThreads;
  auto stream = at::cuda::getCurrentCUDAStream();
  const float* sp = s.const_data_ptr<float>();
  float* out = params.mutable_data_ptr<float>();
  switch (z.scalar_type()) {
    case at::kFloat:
      prepare_params_kernel<float><<<blocks, kSmallKernelThreads, 0, stream>>>(
          sp, z.const_data_ptr<float>(), channels, lo, hi, out);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      break;
    case at::kInt:
      prepare_params_kernel<int32_t><<<blocks, kSmallKernelThreads, 0, stream>>>(
          sp, z.const_data_ptr<int32_t>(), channels, lo, hi, out);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      break;
    case at::kLong:
      prepare_params_kernel<int64_t><<<blocks, kSmallKernelThreads, 0, stream>>>(
          sp, z.const_data_ptr<int64_t>(), channels, lo, hi, out);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      break;
    default:
      TORCH_INTERNAL_ASSERT(false, "q8: unexpected zero_point dtype ", z.scalar_type(), " in a CUDA kernel");
  }
  return params;
}

// Row `row` of the parameter table viewed as [1, ..., channels (at axis), ..., 1]:
// the iterator broadcasts it over the input (stride 0 on every other dim).
at::Tensor channel_view(const at::Tensor& params, int64_t row, int64_t dim, int64_t axis) {
  std::vector<int64_t> shape(dim, 1);
  shape[axis] = params.size(1);
  return params.select(0, row).view(shape);
}

// ---------------------------------------------------------------------------
// Fake quantization forward, with or without the mask.
// ---------------------------------------------------------------------------
template <typename scalar_t>
void fake_quantize_launch(at::TensorIterator& iter, const float* p, bool per_channel, bool with_mask, float lo,
                          float hi) {
  if (!per_channel && !with_mask) {
    at::native::gpu_kernel(iter, [p, lo, hi] GPU_LAMBDA(scalar_t x) -> scalar_t {
      const float s = load_param(p);
      const float inv = load_param(p + 1);
      const float z = load_param(p + 2);
      return static_cast<scalar_t>(dequant(round_shift(static_cast<float>(x), inv, z), s, z, lo, hi));
    });
  } else if (!per_channel) {
    at::native::gpu_kernel_multiple_outputs(
        iter, [p, lo, hi] GPU_LAMBDA(scalar_t x) -> thrust::tuple<scalar_t, bool> {
          const float s = load_param(p);
          const float inv = load_param(p + 1);
          const float z = load_param(p + 2);
          const float q = round_shift(static_cast<float>(x), inv, z);
          return {static_cast<scalar_t>(dequant(q, s, z, lo, hi)), in_range(q, lo, hi)};
        });
  } else if (!with_mask) {
    at::native::gpu_kernel(iter, [lo, hi] GPU_LAMBDA(scalar_t x, float s, float inv, float z) -> scalar_t {
      return static_cast<scalar_t>(dequant(round_shift(static_cast<float>(x), inv, z), s, z, lo, hi));
    });
  } else {
    at::native::gpu_kernel_multiple_outputs(
        iter, [lo, hi] GPU_LAMBDA(scalar_t x, float s, float inv, float z) -> thrust::tuple<scalar_t, bool> {
          const float q = round_shift(static_cast<float>(x), inv, z);
          return {static_cast<scalar_t>(dequant(q, s, z, lo, hi)), in_range(q, lo, hi)};
        });
  }
}

std::tuple<at::Tensor, at::Tensor> fake_quantize_impl(
    const char* op,
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    std::optional<int64_t> axis,
    int64_t quant_min,
    int64_t quant_max,
    bool with_mask) {
  const auto wrapped = detail::check_fake_quantize_args(op, input, scale, zero_point, axis, quant_min, quant_max);
  c10::cuda::CUDAGuard device_guard(input.device());
  auto out = at::empty_like(input, input.options(), at::MemoryFormat::Preserve);
  at::Tensor mask =
      with_mask ? at::empty_like(input, input.options().dtype(at::kBool), at::MemoryFormat::Preserve) : at::Tensor();
  if (input.numel() == 0) {
    return {out, mask};
  }
  const auto params = prepare_params(scale, zero_point, quant_min, quant_max);
  at::Tensor s, inv, z;
  at::TensorIteratorConfig config;
  config.check_all_same_dtype(false).add_output(out);
  if (with_mask) {
    config.add_output(mask);
  }
  config.add_const_input(input);
  if (wrapped.has_value()) {
    s = channel_view(params, 0, input.dim(), *wrapped);
    inv = channel_view(params, 1, input.dim(), *wrapped);
    z = channel_view(params, 2, input.dim(), *wrapped);
    config.add_const_input(s).add_const_input(inv).add_const_input(z);
  }
  auto iter = config.build();
  const float lo = static_cast<float>(quant_min);
  const float hi = static_cast<float>(quant_max);
  const float* p = params.const_data_ptr<float>();
  Q8_DISPATCH_FLOAT_TYPES(input.scalar_type(), "q8_fake_quantize_cuda", [&] {
    fake_quantize_launch<scalar_t>(iter, p, wrapped.has_value(), with_mask, lo, hi);
  });
  return {out, mask};
}

at::Tensor fake_quantize_per_tensor_cuda(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max) {
  return std::get<0>(fake_quantize_impl(
      "fake_quantize_per_tensor", input, scale, zero_point, std::nullopt, quant_min, quant_max, false));
}

at::Tensor fake_quantize_per_channel_cuda(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max) {
  return std::get<0>(fake_quantize_impl(
      "fake_quantize_per_channel", input, scale, zero_point, axis, quant_min, quant_max, false));
}

std::tuple<at::Tensor, at::Tensor> fake_quantize_cachemask_cuda(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    std::optional<int64_t> axis,
    int64_t quant_min,
    int64_t quant_max) {
  return fake_quantize_impl("_fake_quantize_cachemask", input, scale, zero_point, axis, quant_min, quant_max, true);
}

// ---------------------------------------------------------------------------
// Backward: dx = grad * mask in float32 (as torch: a NaN gradient stays NaN where
// masked, and a negative one gives -0).
// ---------------------------------------------------------------------------
template <typename scalar_t>
void mask_backward_launch(at::TensorIterator& iter) {
  at::native::gpu_kernel(iter, [] GPU_LAMBDA(scalar_t g, bool m) -> scalar_t {
    return static_cast<scalar_t>(static_cast<float>(g) * (m ? 1.f : 0.f));
  });
}

at::Tensor fake_quantize_mask_backward_cuda(const at::Tensor& grad, const at::Tensor& mask) {
  detail::check_mask_backward_args("_fake_quantize_mask_backward", grad, mask);
  c10::cuda::CUDAGuard device_guard(grad.device());
  // Laid out as the mask, as the CPU and Meta kernels do.
  auto dx = at::empty_like(mask, grad.options(), at::MemoryFormat::Preserve);
  if (dx.numel() == 0) {
    return dx;
  }
  auto iter = at::TensorIteratorConfig()
                  .check_all_same_dtype(false)
                  .add_output(dx)
                  .add_const_input(grad)
                  .add_const_input(mask)
                  .build();
  Q8_DISPATCH_FLOAT_TYPES(grad.scalar_type(), "q8_fake_quantize_mask_backward_cuda", [&] {
    mask_backward_launch<scalar_t>(iter);
  });
  return dx;
}

// ---------------------------------------------------------------------------
// Learnable backward (LSQ): dx and the per-channel sums of the LSQ terms in one
// pass over grad and input, with no per-element temporaries (the CPU fuses the
// same way for long runs). Deterministic: the split of the work depends on the
// shape only, never on the GPU, and every sum is taken in a fixed order.
//
// grad, input and dx share one dense layout (strides a permutation of a
// contiguous tensor's), read in memory order as [outer, C, inner]: channel
// c = (offset / inner) % C with inner = stride(axis) (per tensor, or one channel:
// C = 1, inner = numel). Two shapes of kernel:
//   runs   (inner >= 32, and per tensor): block (c, s) walks part s of channel
//          c's runs, coalesced; a float32 sum per thread, the block's threads
//          added in float64, one float64 partial per (s, c);
//   columns (inner < 32, e.g. channels_last with axis 1): the P = C * inner
//          positions of a row are columns; thread p sums column p over part s of
//          the rows in float32, one float32 partial per (s, p) (at most numel / 16
//          values, or P when there is one part).
// Then one thread per channel adds its partials in float64 and stores float32.
// The CPU sums each run in float32 lanes and the runs in float64, so grad_scale /
// grad_zero_point agree to rounding, not bit for bit; grad_input is
// bit-identical. A grad or input of another layout is first copied into one
// (a grad that is an expanded scalar, as from out.sum(), is such a copy).
// ---------------------------------------------------------------------------
constexpr int kLsqThreads = 256;
constexpr int64_t kLsqTargetBlocks = 1024;   // enough blocks to fill any GPU
constexpr int64_t kLsqMinPerThread = 8;      // elements per thread before another split pays
constexpr int64_t kLsqColumnsMaxInner = 32;  // inner below this: the columns kernel
constexpr int64_t kLsqMinRowsPerPart = 16;   // columns kernel: rows per part when split

__device__ __forceinline__ double lsq_block_sum(double v, double* smem) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    v += __shfl_xor_sync(0xffffffffu, v, o);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // a previous call's readers are done with smem
  if (lane == 0) {
    smem[warp] = v;
  }
  __syncthreads();
  double t = 0.0;
  if (threadIdx.x == 0) {
    for (int i = 0; i < kLsqThreads / 32; ++i) {  // a fixed order
      t += smem[i];
    }
  }
  return t;  // thread 0 only
}

// params: [3, C] (scale, 1 / scale, zero point). part_ds / part_dz: [S, C]
// float64 (part_dz unused without a zero-point gradient).
template <typename scalar_t, bool kZeroGrad>
__global__ void __launch_bounds__(kLsqThreads)
    lsq_backward_runs_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x,
                             scalar_t* __restrict__ dx, const float* __restrict__ params, int64_t channels,
                             int64_t inner, int64_t per_channel, int64_t per_part, float lo, float hi,
                             double* __restrict__ part_ds, double* __restrict__ part_dz) {
  __shared__ double smem[kLsqThreads / 32];
  const int64_t c = blockIdx.x;
  const int64_t part = blockIdx.y;
  const float s = params[c], inv = params[channels + c], z = params[2 * channels + c];
  const int64_t j0 = part * per_part;
  const int64_t j1 = j0 + per_part < per_channel ? j0 + per_part : per_channel;
  float ds = 0.f, dz = 0.f;
  for (int64_t j = j0 + threadIdx.x; j < j1; j += kLsqThreads) {
    const int64_t row = j / inner;
    const int64_t o = (row * channels + c) * inner + (j - row * inner);
    const LsqTerms t = lsq_terms(static_cast<float>(g[o]), static_cast<float>(x[o]), s, inv, z, lo, hi);
    dx[o] = static_cast<scalar_t>(t.dx);
    ds += t.ds;
    if constexpr (kZeroGrad) {
      dz += t.dz;
    }
  }
  const double bds = lsq_block_sum(static_cast<double>(ds), smem);
  double bdz = 0.0;
  if constexpr (kZeroGrad) {
    bdz = lsq_block_sum(static_cast<double>(dz), smem);
  }
  if (threadIdx.x == 0) {
    part_ds[part * channels + c] = bds;
    if constexpr (kZeroGrad) {
      part_dz[part * channels + c] = bdz;
    }
  }
}

// positions = C * inner (a row); rows = outer. part_ds / part_dz: [S, positions] float32.
template <typename scalar_t, bool kZeroGrad>
__global__ void __launch_bounds__(kLsqThreads)
    lsq_backward_columns_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x,
                                scalar_t* __restrict__ dx, const float* __restrict__ params, int64_t channels,
                                int64_t inner, int64_t positions, int64_t rows, int64_t rows_per_part, float lo,
                                float hi, float* __restrict__ part_ds, float* __restrict__ part_dz) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * kLsqThreads + threadIdx.x;
  if (p >= positions) {
    return;
  }
  const int64_t part = blockIdx.y;
  const int64_t c = p / inner;
  const float s = params[c], inv = params[channels + c], z = params[2 * channels + c];
  const int64_t r0 = part * rows_per_part;
  const int64_t r1 = r0 + rows_per_part < rows ? r0 + rows_per_part : rows;
  float ds = 0.f, dz = 0.f;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t o = r * positions + p;
    const LsqTerms t = lsq_terms(static_cast<float>(g[o]), static_cast<float>(x[o]), s, inv, z, lo, hi);
    dx[o] = static_cast<scalar_t>(t.dx);
    ds += t.ds;
    if constexpr (kZeroGrad) {
      dz += t.dz;
    }
  }
  part_ds[part * positions + p] = ds;
  if constexpr (kZeroGrad) {
    part_dz[part * positions + p] = dz;
  }
}

// One thread per channel: out[c] = sum over parts s and the `width` consecutive
// partials of channel c (row stride `stride`), in float64.
template <typename P>
__global__ void lsq_finish_kernel(const P* __restrict__ part_ds, const P* __restrict__ part_dz, int64_t channels,
                                  int64_t parts, int64_t width, int64_t stride, float* __restrict__ grad_scale,
                                  float* __restrict__ grad_zero_point) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= channels) {
    return;
  }
  double ds = 0.0, dz = 0.0;
  for (int64_t sp = 0; sp < parts; ++sp) {
    for (int64_t i = 0; i < width; ++i) {
      ds += static_cast<double>(part_ds[sp * stride + c * width + i]);
      if (part_dz != nullptr) {
        dz += static_cast<double>(part_dz[sp * stride + c * width + i]);
      }
    }
  }
  grad_scale[c] = static_cast<float>(ds);
  grad_zero_point[c] = static_cast<float>(dz);
}

int64_t div_up(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

int64_t clamp64(int64_t v, int64_t lo, int64_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fake_quantize_learnable_backward_cuda(
    const at::Tensor& grad,
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    std::optional<int64_t> axis,
    int64_t quant_min,
    int64_t quant_max) {
  const char* op = "_fake_quantize_learnable_backward";
  const auto wrapped =
      detail::check_learnable_backward_args(op, grad, input, scale, zero_point, axis, quant_min, quant_max);
  c10::cuda::CUDAGuard device_guard(input.device());
  const bool zero_point_grad = zero_point.is_floating_point();
  const auto f32 = input.options().dtype(at::kFloat);
  auto dx = at::empty_like(input, input.options(), at::MemoryFormat::Preserve);
  if (input.numel() == 0) {
    // Empty sums: zero gradients (contiguous, shaped like scale / zero_point).
    return {dx, at::zeros(scale.sizes(), f32), at::zeros(zero_point.sizes(), f32)};
  }
  const auto params = prepare_params(scale, zero_point, quant_min, quant_max);
  const int64_t channels = params.size(1);

  // One dense layout for x, grad and the kernel's dx (see above).
  const at::Tensor x = input.is_non_overlapping_and_dense() ? input : input.contiguous();
  const at::Tensor g = (grad.strides() == x.strides() && grad.is_non_overlapping_and_dense())
      ? grad
      : at::empty_like(x, x.options(), at::MemoryFormat::Preserve).copy_(grad);
  const at::Tensor dxk = dx.strides() == x.strides() ? dx : at::empty_like(x, x.options(), at::MemoryFormat::Preserve);
  TORCH_INTERNAL_ASSERT(g.strides() == x.strides() && dxk.strides() == x.strides());
  const int64_t numel = x.numel();
  const int64_t inner = (wrapped.has_value() && channels > 1) ? x.stride(*wrapped) : numel;
  const int64_t outer = numel / (channels * inner);
  TORCH_INTERNAL_ASSERT(outer * channels * inner == numel);

  auto grad_scale = at::empty({channels}, f32);
  auto grad_zero_point = at::empty({channels}, f32);
  const float lo = static_cast<float>(quant_min);
  const float hi = static_cast<float>(quant_max);
  const float* pp = params.const_data_ptr<float>();
  auto stream = at::cuda::getCurrentCUDAStream();
  const unsigned finish_blocks = static_cast<unsigned>(div_up(channels, kSmallKernelThreads));
  Q8_DISPATCH_FLOAT_TYPES(x.scalar_type(), "q8_fake_quantize_learnable_backward_cuda", [&] {
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* dp = dxk.mutable_data_ptr<scalar_t>();
    if (inner >= kLsqColumnsMaxInner || channels == 1) {
      const int64_t per_channel = outer * inner;
      const int64_t parts = clamp64(std::min(div_up(kLsqTargetBlocks, channels),
                                             div_up(per_channel, kLsqThreads * kLsqMinPerThread)),
                                    1, 65535);
      const int64_t per_part = div_up(per_channel, parts);
      TORCH_CHECK(channels <= (int64_t{1} << 31) - 1, "q8.", op, ": too many channels for the CUDA kernel");
      auto part_ds = at::empty({parts, channels}, input.options().dtype(at::kDouble));
      auto part_dz = zero_point_grad ? at::empty({parts, channels}, input.options().dtype(at::kDouble)) : part_ds;
      const dim3 grid(static_cast<unsigned>(channels), static_cast<unsigned>(parts));
      if (zero_point_grad) {
        lsq_backward_runs_kernel<scalar_t, true><<<grid, kLsqThreads, 0, stream>>>(
            gp, xp, dp, pp, channels, inner, per_channel, per_part, lo, hi, part_ds.mutable_data_ptr<double>(),
            part_dz.mutable_data_ptr<double>());
      } else {
        lsq_backward_runs_kernel<scalar_t, false><<<grid, kLsqThreads, 0, stream>>>(
            gp, xp, dp, pp, channels, inner, per_channel, per_part, lo, hi, part_ds.mutable_data_ptr<double>(),
            nullptr);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      lsq_finish_kernel<double><<<finish_blocks, kSmallKernelThreads, 0, stream>>>(
          part_ds.const_data_ptr<double>(), zero_point_grad ? part_dz.const_data_ptr<double>() : nullptr, channels,
          parts, 1, channels, grad_scale.mutable_data_ptr<float>(), grad_zero_point.mutable_data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      const int64_t positions = channels * inner;
      const int64_t pblocks = div_up(positions, kLsqThreads);
      TORCH_CHECK(pblocks <= (int64_t{1} << 31) - 1, "q8.", op, ": input too large for the CUDA kernel");
      const int64_t parts = clamp64(std::min(div_up(kLsqTargetBlocks, pblocks), outer / kLsqMinRowsPerPart), 1,
                                    65535);
      const int64_t rows_per_part = div_up(outer, parts);
      auto part_ds = at::empty({parts, positions}, f32);
      auto part_dz = zero_point_grad ? at::empty({parts, positions}, f32) : part_ds;
      const dim3 grid(static_cast<unsigned>(pblocks), static_cast<unsigned>(parts));
      if (zero_point_grad) {
        lsq_backward_columns_kernel<scalar_t, true><<<grid, kLsqThreads, 0, stream>>>(
            gp, xp, dp, pp, channels, inner, positions, outer, rows_per_part, lo, hi,
            part_ds.mutable_data_ptr<float>(), part_dz.mutable_data_ptr<float>());
      } else {
        lsq_backward_columns_kernel<scalar_t, false><<<grid, kLsqThreads, 0, stream>>>(
            gp, xp, dp, pp, channels, inner, positions, outer, rows_per_part, lo, hi,
            part_ds.mutable_data_ptr<float>(), nullptr);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      lsq_finish_kernel<float><<<finish_blocks, kSmallKernelThreads, 0, stream>>>(
          part_ds.const_data_ptr<float>(), zero_point_grad ? part_dz.const_data_ptr<float>() : nullptr, channels,
          parts, inner, positions, grad_scale.mutable_data_ptr<float>(), grad_zero_point.mutable_data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  if (!dxk.is_same(dx)) {
    dx.copy_(dxk);
  }
  return {dx, grad_scale.reshape(scale.sizes()), grad_zero_point.reshape(zero_point.sizes())};
}

// ---------------------------------------------------------------------------
// Quantize: clamp(nearbyint(x * inv) + z) as an integer; NaN becomes z; an
// invalid channel gives quant_min.
// ---------------------------------------------------------------------------
template <typename scalar_t, typename Q>
void quantize_launch(at::TensorIterator& iter, const float* p, bool per_channel, float lo, float hi,
                     int32_t invalid_code) {
  if (!per_channel) {
    at::native::gpu_kernel(iter, [p, lo, hi, invalid_code] GPU_LAMBDA(scalar_t x) -> Q {
      const float inv = load_param(p + 1);
      const float z = load_param(p + 2);
      if (z != z) {
        return static_cast<Q>(invalid_code);
      }
      float q = clamp_keep_nan(round_shift(static_cast<float>(x), inv, z), lo, hi);
      q = q != q ? z : q;
      // Integral and inside [lo, hi] here: the conversion is exact.
      return static_cast<Q>(static_cast<int32_t>(q));
    });
  } else {
    at::native::gpu_kernel(
        iter, [lo, hi, invalid_code] GPU_LAMBDA(scalar_t x, float /*s*/, float inv, float z) -> Q {
          if (z != z) {
            return static_cast<Q>(invalid_code);
          }
          float q = clamp_keep_nan(round_shift(static_cast<float>(x), inv, z), lo, hi);
          q = q != q ? z : q;
          return static_cast<Q>(static_cast<int32_t>(q));
        });
  }
}

at::Tensor quantize_cuda(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    std::optional<int64_t> axis,
    int64_t quant_min,
    int64_t quant_max,
    at::ScalarType dtype) {
  const char* op = "quantize";
  const auto wrapped = detail::check_fake_quantize_args(op, input, scale, zero_point, axis, quant_min, quant_max);
  detail::check_quant_range_fits(op, quant_min, quant_max, dtype);
  c10::cuda::CUDAGuard device_guard(input.device());
  auto out = at::empty_like(input, input.options().dtype(dtype), at::MemoryFormat::Preserve);
  if (input.numel() == 0) {
    return out;
  }
  const auto params = prepare_params(scale, zero_point, quant_min, quant_max);
  at::Tensor s, inv, z;
  at::TensorIteratorConfig config;
  config.check_all_same_dtype(false).add_output(out).add_const_input(input);
  if (wrapped.has_value()) {
    s = channel_view(params, 0, input.dim(), *wrapped);
    inv = channel_view(params, 1, input.dim(), *wrapped);
    z = channel_view(params, 2, input.dim(), *wrapped);
    config.add_const_input(s).add_const_input(inv).add_const_input(z);
  }
  auto iter = config.build();
  const float lo = static_cast<float>(quant_min);
  const float hi = static_cast<float>(quant_max);
  const auto invalid_code = static_cast<int32_t>(quant_min);
  const float* p = params.const_data_ptr<float>();
  const bool per_channel = wrapped.has_value();
  Q8_DISPATCH_FLOAT_TYPES(input.scalar_type(), "q8_quantize_cuda", [&] {
    switch (dtype) {
      case at::kChar:
        quantize_launch<scalar_t, int8_t>(iter, p, per_channel, lo, hi, invalid_code);
        break;
      case at::kByte:
        quantize_launch<scalar_t, uint8_t>(iter, p, per_channel, lo, hi, invalid_code);
        break;
      case at::kInt:
        quantize_launch<scalar_t, int32_t>(iter, p, per_channel, lo, hi, invalid_code);
        break;
      default:
        TORCH_INTERNAL_ASSERT(false, "q8: unexpected dtype ", dtype, " in the CUDA quantize kernel");
    }
  });
  return out;
}

// ---------------------------------------------------------------------------
// Dequantize: (q - z) * s. The subtraction is exact in integers (int64 for int32
// input), then converted to float32 and multiplied once; an invalid channel
// gives NaN.
// ---------------------------------------------------------------------------
template <typename Q, typename scalar_t>
void dequantize_launch(at::TensorIterator& iter, const float* p, bool per_channel) {
  using Wide = std::conditional_t<sizeof(Q) >= 4, int64_t, int32_t>;
  if (!per_channel) {
    at::native::gpu_kernel(iter, [p] GPU_LAMBDA(Q q) -> scalar_t {
      const float s = load_param(p);
      const float z = load_param(p + 2);
      if (s != s) {
        return static_cast<scalar_t>(quiet_nan());
      }
      const float d = static_cast<float>(static_cast<Wide>(q) - static_cast<Wide>(z));
      return static_cast<scalar_t>(d * s);
    });
  } else {
    at::native::gpu_kernel(iter, [] GPU_LAMBDA(Q q, float s, float z) -> scalar_t {
      if (s != s) {
        return static_cast<scalar_t>(quiet_nan());
      }
      const float d = static_cast<float>(static_cast<Wide>(q) - static_cast<Wide>(z));
      return static_cast<scalar_t>(d * s);
    });
  }
}

at::Tensor dequantize_cuda(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    std::optional<int64_t> axis,
    at::ScalarType dtype) {
  const char* op = "dequantize";
  const auto wrapped = detail::check_dequantize_args(op, input, scale, zero_point, axis, dtype);
  const auto [zmin, zmax] = detail::dequantize_zero_point_range(input.scalar_type());
  c10::cuda::CUDAGuard device_guard(input.device());
  auto out = at::empty_like(input, input.options().dtype(dtype), at::MemoryFormat::Preserve);
  if (input.numel() == 0) {
    return out;
  }
  const auto params = prepare_params(scale, zero_point, zmin, zmax);
  at::Tensor s, z;
  at::TensorIteratorConfig config;
  config.check_all_same_dtype(false).add_output(out).add_const_input(input);
  if (wrapped.has_value()) {
    s = channel_view(params, 0, input.dim(), *wrapped);
    z = channel_view(params, 2, input.dim(), *wrapped);
    config.add_const_input(s).add_const_input(z);
  }
  auto iter = config.build();
  const float* p = params.const_data_ptr<float>();
  const bool per_channel = wrapped.has_value();
  const auto qdtype = input.scalar_type();
  Q8_DISPATCH_FLOAT_TYPES(dtype, "q8_dequantize_cuda", [&] {
    switch (qdtype) {
      case at::kChar:
        dequantize_launch<int8_t, scalar_t>(iter, p, per_channel);
        break;
      case at::kByte:
        dequantize_launch<uint8_t, scalar_t>(iter, p, per_channel);
        break;
      case at::kInt:
        dequantize_launch<int32_t, scalar_t>(iter, p, per_channel);
        break;
      default:
        TORCH_INTERNAL_ASSERT(false, "q8: unexpected dtype ", qdtype, " in the CUDA dequantize kernel");
    }
  });
  return out;
}

// ---------------------------------------------------------------------------
// choose_qparams: min / max over the finite values (non-finite read as 0; the
// range always holds 0), per tensor or per channel, then compute_qparams.
// ---------------------------------------------------------------------------

// ATen reduction ops (the interface of MinMaxOps in ATen/native/SharedReduceOps.h)
// for gpu_reduce_kernel with two float32 outputs. The identity (0, 0) is exact:
// 0 is always part of the range.
template <typename scalar_t>
struct FiniteMinMaxOps {
  using acc_t = thrust::pair<float, float>;

  C10_DEVICE acc_t reduce(acc_t acc, scalar_t data, int64_t /*idx*/) const {
    float v = static_cast<float>(data);
    v = fabsf(v) <= FLT_MAX ? v : 0.f;  // NaN and +-Inf read as 0
    return combine(acc, acc_t(v, v));
  }

  C10_DEVICE acc_t combine(acc_t a, acc_t b) const {
    return acc_t(a.first < b.first ? a.first : b.first, a.second > b.second ? a.second : b.second);
  }

  C10_DEVICE acc_t project(acc_t acc) const {
    return acc;
  }

  static C10_DEVICE acc_t translate_idx(acc_t acc, int64_t /*base_idx*/) {
    return acc;
  }

  C10_DEVICE acc_t warp_shfl_down(acc_t acc, int offset) const {
    return acc_t(WARP_SHFL_DOWN(acc.first, offset), WARP_SHFL_DOWN(acc.second, offset));
  }
};

template <typename scalar_t>
void min_max_launch(at::TensorIterator& iter) {
  at::native::gpu_reduce_kernel<scalar_t, float>(iter, FiniteMinMaxOps<scalar_t>{},
                                                 thrust::pair<float, float>(0.f, 0.f));
}

__global__ void compute_qparams_kernel(
    const float* mins, const float* maxs, int64_t channels, int64_t quant_min, int64_t quant_max, bool symmetric,
    float* scale, int32_t* zero_point) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= channels) {
    return;
  }
  detail::compute_qparams(mins[c], maxs[c], quant_min, quant_max, symmetric, scale + c, zero_point + c);
}

std::tuple<at::Tensor, at::Tensor> choose_qparams_cuda(
    const at::Tensor& input,
    int64_t quant_min,
    int64_t quant_max,
    bool symmetric,
    std::optional<int64_t> axis) {
  const char* op = "choose_qparams";
  const auto wrapped = detail::check_choose_qparams_args(op, input, quant_min, quant_max, axis);
  c10::cuda::CUDAGuard device_guard(input.device());
  const int64_t channels = wrapped.has_value() ? input.size(*wrapped) : 1;
  const auto shape = wrapped.has_value() ? std::vector<int64_t>{channels} : std::vector<int64_t>{};
  const auto f32 = input.options().dtype(at::kFloat);
  auto scale = at::empty(shape, f32);
  auto zero_point = at::empty(shape, input.options().dtype(at::kInt));
  if (channels == 0) {
    return {scale, zero_point};
  }
  auto mins = at::empty(shape, f32);
  auto maxs = at::empty(shape, f32);
  if (input.numel() == 0) {
    // No values: the range is [0, 0], as on the CPU.
    mins.zero_();
    maxs.zero_();
  } else {
    // The outputs seen with input's dimensions: size 1 and stride 0 on every
    // reduced dimension (as at::native::make_reduction views them).
    std::vector<int64_t> view_sizes(input.dim(), 1);
    std::vector<int64_t> view_strides(input.dim(), 0);
    if (wrapped.has_value()) {
      view_sizes[*wrapped] = channels;
      view_strides[*wrapped] = 1;
    }
    auto min_view = mins.as_strided(view_sizes, view_strides);
    auto max_view = maxs.as_strided(view_sizes, view_strides);
    auto iter = at::TensorIterator::reduce_op(min_view, max_view, input);
    Q8_DISPATCH_FLOAT_TYPES(input.scalar_type(), "q8_choose_qparams_cuda", [&] {
      min_max_launch<scalar_t>(iter);
    });
  }
  const int64_t blocks = (channels + kSmallKernelThreads - 1) / kSmallKernelThreads;
  compute_qparams_kernel<<<blocks, kSmallKernelThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      mins.const_data_ptr<float>(), maxs.const_data_ptr<float>(), channels, quant_min, quant_max, symmetric,
      scale.mutable_data_ptr<float>(), zero_point.mutable_data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {scale, zero_point};
}

#undef Q8_DISPATCH_FLOAT_TYPES

} // namespace

TORCH_LIBRARY_IMPL(q8, CUDA, m) {
  m.impl("fake_quantize_per_tensor", &fake_quantize_per_tensor_cuda);
  m.impl("fake_quantize_per_channel", &fake_quantize_per_channel_cuda);
  m.impl("_fake_quantize_cachemask", &fake_quantize_cachemask_cuda);
  m.impl("_fake_quantize_mask_backward", &fake_quantize_mask_backward_cuda);
  m.impl("_fake_quantize_learnable_backward", &fake_quantize_learnable_backward_cuda);
  m.impl("choose_qparams", &choose_qparams_cuda);
  m.impl("quantize", &quantize_cuda);
  m.impl("dequantize", &dequantize_cuda);
}

} // namespace q8::cuda
