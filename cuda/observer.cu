// CUDA kernel of observe_fake_quantize (schema and semantics: csrc/ops/observer.cpp;
// CPU kernel: csrc/ops/cpu/observer.cpp). Nothing is read on the host: the two
// flags, the running min / max and the qparams stay on the device, so a call
// never synchronizes and can be captured in a CUDA graph. Three launches:
//
//   1. min / max of the finite values of the input per channel (per tensor: one
//      channel), one pass with ATen's gpu_reduce_kernel; NaN and +-Inf are
//      skipped, and a channel without a finite value gives (+Inf, -Inf). It runs
//      whatever observer_on holds (reading the flag would need a host sync); an
//      empty input runs no reduction.
//   2. A small kernel, one thread per channel: when observer_on != 0, the
//      moving-average update of running_min / running_max (observer_math.h) and
//      scale / zero_point from compute_qparams (qparams_math.h), both the CPU's
//      code; then, as cuda/fake_quantize.cu's prepare_params, the table
//      [scale | 1 / scale | zero point] of every channel, NaN for a channel whose
//      stored scale / zero point is invalid (only possible with the observer off
//      and values set by hand: scale not in [FLT_MIN, FLT_MAX] or NaN, zero point
//      outside [quant_min, quant_max]; the CPU raises an error there), followed
//      by one float: fake_quant_on != 0.
//   3. The elementwise pass (TensorIterator, gpu_kernel_multiple_outputs): with
//      the fake-quant flag on, the float32 sequence of fake_quantize.cu (so the
//      output and mask are bit-identical to the CPU's; an invalid channel gives
//      NaN and mask false), else the input unchanged and mask true.
//
// Compiled with --fmad=false and without fast math, as every q8 CUDA source, so
// the moving average, the qparams and the fake quantization round exactly as on
// the CPU. Outputs have the CPU / Meta kernels' strides (empty_like, Preserve).
#include <cfloat>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>
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
#include "ops/observer_math.h"
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

// 1. Flags read on the device and the finite min / max reduction (Flag,
// make_flag, read_flag, FiniteMinMaxOps): observer_common.cuh.

// ---------------------------------------------------------------------------
// 2. State update and parameter table.
// ---------------------------------------------------------------------------
struct State {
  float* running_min;
  float* running_max;
  float* scale;
  int32_t* zero_point;
  int64_t running_min_stride, running_max_stride, scale_stride, zero_point_stride;
};

__global__ void update_state_kernel(
    Flag observer_on, Flag fake_quant_on, const float* cur_min, const float* cur_max, State st, int64_t channels,
    float averaging_constant, int64_t quant_min, int64_t quant_max, bool symmetric, float* params) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= channels) {
    return;
  }
  float* scale = st.scale + c * st.scale_stride;
  int32_t* zero_point = st.zero_point + c * st.zero_point_stride;
  if (read_flag(observer_on)) {
    float* lo = st.running_min + c * st.running_min_stride;
    float* hi = st.running_max + c * st.running_max_stride;
    detail::update_running_min_max(cur_min[c], cur_max[c], averaging_constant, lo, hi);
    detail::compute_qparams(*lo, *hi, quant_min, quant_max, symmetric, scale, zero_point);
  }
  float s = *scale;
  const int32_t zp = *zero_point;
  const bool valid = s >= FLT_MIN && s <= FLT_MAX && zp >= quant_min && zp <= quant_max;  // false for NaN
  float inv = __fdiv_rn(1.0f, s);
  float z = static_cast<float>(zp);
  if (!valid) {
    s = inv = z = std::numeric_limits<float>::quiet_NaN();
  }
  params[c] = s;
  params[channels + c] = inv;
  params[2 * channels + c] = z;
  if (c == 0) {
    params[3 * channels] = read_flag(fake_quant_on) ? 1.f : 0.f;
  }
}

// ---------------------------------------------------------------------------
// 3. Fake quantization (the per-element sequence of fake_quantize.cu) or copy.
// ---------------------------------------------------------------------------
C10_HOST_DEVICE inline float load_param(const float* p) {
#if defined(__CUDA_ARCH__)
  return __ldg(p);
#else
  return *p;
#endif
}

template <typename scalar_t>
C10_HOST_DEVICE inline thrust::tuple<scalar_t, bool> fake_quant_or_copy(
    scalar_t x, float on, float s, float inv, float z, float lo, float hi) {
  if (on == 0.f) {
    return {x, true};
  }
  const float q = nearbyintf(static_cast<float>(x) * inv) + z;
  const float qc = q < lo ? lo : (q > hi ? hi : q);  // keeps a NaN q
  return {static_cast<scalar_t>((qc - z) * s), q >= lo && q <= hi};
}

template <typename scalar_t>
void fake_quant_launch(at::TensorIterator& iter, const float* params, int64_t channels, bool per_channel, float lo,
                       float hi) {
  const float* flag = params + 3 * channels;
  if (!per_channel) {
    at::native::gpu_kernel_multiple_outputs(
        iter, [params, flag, lo, hi] GPU_LAMBDA(scalar_t x) -> thrust::tuple<scalar_t, bool> {
          return fake_quant_or_copy<scalar_t>(x, load_param(flag), load_param(params), load_param(params + 1),
                                              load_param(params + 2), lo, hi);
        });
  } else {
    at::native::gpu_kernel_multiple_outputs(
        iter, [flag, lo, hi] GPU_LAMBDA(scalar_t x, float s, float inv, float z) -> thrust::tuple<scalar_t, bool> {
          return fake_quant_or_copy<scalar_t>(x, load_param(flag), s, inv, z, lo, hi);
        });
  }
}

// Row `row` of the [3 * channels (+ 1)] table viewed as [1, ..., channels (at
// axis), ..., 1], broadcast by the iterator over the input.
at::Tensor channel_view(const at::Tensor& params, int64_t channels, int64_t row, int64_t dim, int64_t axis) {
  std::vector<int64_t> shape(dim, 1);
  shape[axis] = channels;
  return params.narrow(0, row * channels, channels).view(shape);
}

int64_t state_stride(const at::Tensor& t) {
  return t.dim() == 1 ? t.stride(0) : 0;
}

std::tuple<at::Tensor, at::Tensor> observe_fake_quantize_cuda(
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
  c10::cuda::CUDAGuard device_guard(input.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  auto out = at::empty_like(input, input.options(), at::MemoryFormat::Preserve);
  auto mask = at::empty_like(input, input.options().dtype(at::kBool), at::MemoryFormat::Preserve);
  const int64_t channels = wrapped.has_value() ? input.size(*wrapped) : 1;
  if (channels == 0) {
    return {out, mask};  // no channel, no element, no state
  }
  const auto f32 = input.options().dtype(at::kFloat);

  // 1. Current finite min / max per channel.
  auto cur = at::empty({2, channels}, f32);
  auto cur_min = cur.select(0, 0);
  auto cur_max = cur.select(0, 1);
  if (input.numel() == 0) {
    cur_min.fill_(std::numeric_limits<float>::infinity());
    cur_max.fill_(-std::numeric_limits<float>::infinity());
  } else {
    // A 0-dim input is reduced as a 1-element 1-D one. The outputs are seen with
    // the input's dimensions: size 1 and stride 0 on every reduced dimension (as
    // at::native::make_reduction views them).
    const auto x = input.dim() == 0 ? input.view({1}) : input;
    std::vector<int64_t> view_sizes(x.dim(), 1);
    std::vector<int64_t> view_strides(x.dim(), 0);
    if (wrapped.has_value()) {
      view_sizes[*wrapped] = channels;
      view_strides[*wrapped] = 1;
    }
    auto min_view = cur_min.as_strided(view_sizes, view_strides);
    auto max_view = cur_max.as_strided(view_sizes, view_strides);
    auto iter = at::TensorIterator::reduce_op(min_view, max_view, x);
    Q8_DISPATCH_FLOAT_TYPES(x.scalar_type(), "q8_observe_min_max_cuda", [&] {
      const float inf = std::numeric_limits<float>::infinity();
      at::native::gpu_reduce_kernel<scalar_t, float>(iter, FiniteMinMaxOps<scalar_t>{},
                                                     thrust::pair<float, float>(inf, -inf));
    });
  }

  // 2. Flags, moving average, qparams, parameter table.
  auto params = at::empty({3 * channels + 1}, f32);
  State st{running_min.mutable_data_ptr<float>(), running_max.mutable_data_ptr<float>(),
           scale.mutable_data_ptr<float>(),       zero_point.mutable_data_ptr<int32_t>(),
           state_stride(running_min),             state_stride(running_max),
           state_stride(scale),                   state_stride(zero_point)};
  const int64_t blocks = (channels + kThreads - 1) / kThreads;
  update_state_kernel<<<blocks, kThreads, 0, stream>>>(
      make_flag(observer_on), make_flag(fake_quant_on), cur_min.const_data_ptr<float>(),
      cur_max.const_data_ptr<float>(), st, channels, static_cast<float>(averaging_constant), quant_min, quant_max,
      symmetric, params.mutable_data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  // 3. Fake quantization or copy.
  if (input.numel() == 0) {
    return {out, mask};
  }
  at::Tensor s, inv, z;
  at::TensorIteratorConfig config;
  config.check_all_same_dtype(false).add_output(out).add_output(mask).add_const_input(input);
  if (wrapped.has_value()) {
    s = channel_view(params, channels, 0, input.dim(), *wrapped);
    inv = channel_view(params, channels, 1, input.dim(), *wrapped);
    z = channel_view(params, channels, 2, input.dim(), *wrapped);
    config.add_const_input(s).add_const_input(inv).add_const_input(z);
  }
  auto iter = config.build();
  const float lo = static_cast<float>(quant_min);
  const float hi = static_cast<float>(quant_max);
  const float* p = params.const_data_ptr<float>();
  Q8_DISPATCH_FLOAT_TYPES(input.scalar_type(), "q8_observe_fake_quantize_cuda", [&] {
    fake_quant_launch<scalar_t>(iter, p, channels, wrapped.has_value(), lo, hi);
  });
  return {out, mask};
}

#undef Q8_DISPATCH_FLOAT_TYPES

} // namespace

TORCH_LIBRARY_IMPL(q8, CUDA, m) {
  m.impl("observe_fake_quantize", &observe_fake_quantize_cuda);
}

} // namespace q8::cuda
