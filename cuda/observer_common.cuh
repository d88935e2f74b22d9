// Device pieces shared by the CUDA observer kernels (observer.cu, histogram.cu):
// flags read on the device and the finite min / max reduction. Included inside
// each file's anonymous namespace, like csrc/ops/cpu/kernels/int8_gemm_common.h.
#pragma once

#include <cfloat>
#include <cstdint>

#include <ATen/ATen.h>
#include <ATen/native/cuda/Reduce.cuh>
#include <thrust/pair.h>

namespace q8::cuda {
namespace {

// ---------------------------------------------------------------------------
// Flags, read on the device: non-zero is on. Floating-point flags are non-zero
// when any bit but the sign is set (NaN is on, +-0 is off), as `x != 0` on the CPU.
// ---------------------------------------------------------------------------
struct Flag {
  const void* ptr;
  int bytes;      // 1, 2, 4 or 8
  bool floating;  // mask the sign bit
};

inline Flag make_flag(const at::Tensor& t) {
  return {t.const_data_ptr(), static_cast<int>(t.element_size()), t.is_floating_point()};
}

__device__ inline bool read_flag(Flag f) {
  uint64_t bits = 0;
  switch (f.bytes) {
    case 1:
      bits = *static_cast<const uint8_t*>(f.ptr);
      break;
    case 2:
      bits = *static_cast<const uint16_t*>(f.ptr);
      if (f.floating) bits &= 0x7fffu;
      break;
    case 4:
      bits = *static_cast<const uint32_t*>(f.ptr);
      if (f.floating) bits &= 0x7fffffffu;
      break;
    default:
      bits = *static_cast<const uint64_t*>(f.ptr);
      if (f.floating) bits &= 0x7fffffffffffffffull;
      break;
  }
  return bits != 0;
}

// ---------------------------------------------------------------------------
// 1. Finite min / max per channel: ATen reduction ops (the interface of
// MinMaxOps in ATen/native/SharedReduceOps.h) with identity (+Inf, -Inf).
// ---------------------------------------------------------------------------
template <typename scalar_t>
struct FiniteMinMaxOps {
  using acc_t = thrust::pair<float, float>;

  C10_DEVICE acc_t reduce(acc_t acc, scalar_t data, int64_t /*idx*/) const {
    const float v = static_cast<float>(data);
    if (!(fabsf(v) <= FLT_MAX)) {
      return acc;  // NaN, +-Inf
    }
    return acc_t(v < acc.first ? v : acc.first, v > acc.second ? v : acc.second);
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

}  // namespace
}  // namespace q8::cuda
