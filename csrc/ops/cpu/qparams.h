// Host-side preparation of per-tensor / per-channel quantization parameters for
// the CPU kernels (kernels/kernels.h): value checks, zero-point rounding and the
// choice between the broadcast and periodic layouts.
#pragma once

#include <optional>
#include <vector>

#include <ATen/core/Tensor.h>

#include "kernels/kernels.h"

namespace q8::cpu {

// Runs shorter than this many elements are vectorized in the periodic layout.
constexpr int64_t kMinRun = 64;

// outer x channels x inner view, in memory order, of a dense tensor (from
// empty_output / match_layout) around `axis` (nullopt: one channel). For a dense
// tensor the elements of channel c are those whose offset o has
// (o / stride(axis)) % size(axis) == c, whatever the order of the other dims.
struct Layout {
  int64_t outer = 1;
  int64_t channels = 1;
  int64_t inner = 1;
};
Layout layout_of(const at::Tensor& dense, std::optional<int64_t> axis);

// Owns the parameter arrays that `params` points into.
struct HostParams {
  std::vector<float> scale, inv_scale, zero_point;
  ChannelParams params;
  // Periodic layout only: the channel of each position in the parameter arrays.
  std::vector<int64_t> channel_of;
};

// Checks every scale (finite, > 0) and zero point (inside [quant_min, quant_max]
// when integer; finite when float, then rounded half to even and clamped), and
// lays out the parameters for `layout`.
HostParams make_host_params(
    const char* op,
    const Layout& layout,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max);

// An uninitialized output shaped like `like`: with like's strides when it is
// dense (channels_last, transposed, ...), else contiguous in its suggested memory
// format, exactly as at::empty_like(..., MemoryFormat::Preserve), which torch's
// fake-quantize ops and q8's Meta kernels use. Large outputs (>= 8 MiB) are
// advised to use transparent huge pages: a fresh 64 MiB output otherwise pays 16K
// page faults on first touch, which costs more than the kernel itself (see
// benchmarks/RESULTS.md). The advice is only a hint: where THP is off, nothing
// changes.
at::Tensor empty_output(const at::Tensor& like, const at::TensorOptions& options);

// `t` with exactly the strides of `dense` (a tensor from empty_output): t itself
// when they already match, else a copy, so kernels can walk both in memory order.
at::Tensor match_layout(const at::Tensor& t, const at::Tensor& dense);

// Only the layout (for min/max, which has no parameters yet).
ChannelParams make_layout_params(const Layout& layout, std::vector<int64_t>* channel_of);

} // namespace q8::cpu
