#include "qparams.h"

#include <cmath>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <ATen/ATen.h>

#include "../checks.h"

namespace q8::cpu {

Layout layout_of(const at::Tensor& dense, std::optional<int64_t> axis) {
  Layout l;
  const int64_t numel = dense.numel();
  if (!axis.has_value()) {
    l.inner = numel;
    return l;
  }
  l.channels = dense.size(*axis);
  if (numel == 0) {
    l.outer = 0;  // no elements, but still one slot per channel
    return l;
  }
  if (l.channels == 1) {
    l.inner = numel;
    return l;
  }
  l.inner = dense.stride(*axis);
  TORCH_INTERNAL_ASSERT(l.inner > 0 && numel % (l.channels * l.inner) == 0,
                        "q8: layout_of needs a dense tensor, got strides ", dense.strides());
  l.outer = numel / (l.channels * l.inner);
  return l;
}

at::Tensor empty_output(const at::Tensor& like, const at::TensorOptions& options) {
  auto out = at::empty_like(like, options, at::MemoryFormat::Preserve);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const size_t nbytes = out.nbytes();
  if (nbytes >= 4 * kHuge) {
    const auto begin = reinterpret_cast<uintptr_t>(out.mutable_data_ptr());
    const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1);
    const uintptr_t last = (begin + nbytes) & ~(kHuge - 1);
    if (last > first) {
      // Failure (e.g. THP compiled out) leaves ordinary pages: nothing to report.
      (void)madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
    }
  }
#endif
  return out;
}

at::Tensor match_layout(const at::Tensor& t, const at::Tensor& dense) {
  if (t.strides() == dense.strides()) {
    return t;
  }
  return at::empty_like(dense, t.options(), at::MemoryFormat::Preserve).copy_(t);
}

ChannelParams make_layout_params(const Layout& layout, std::vector<int64_t>* channel_of) {
  ChannelParams p;
  p.numel = layout.outer * layout.channels * layout.inner;
  if (p.numel == 0 || layout.channels == 1 || layout.inner >= kMinRun) {
    // One channel per run of `inner` elements (a single channel: one run). An
    // empty tensor runs no kernel but still has one slot per channel.
    p.broadcast = true;
    p.channels = layout.channels;
    p.inner = layout.channels == 1 || p.numel == 0 ? std::max<int64_t>(p.numel, 1) : layout.inner;
    return p;
  }
  // Short runs: repeat the channel pattern (period channels * inner) until the
  // period is long enough to vectorize.
  const int64_t base = layout.channels * layout.inner;
  const int64_t reps = (4 * kMinRun + base - 1) / base;
  p.broadcast = false;
  p.period = base * reps;
  if (channel_of != nullptr) {
    channel_of->resize(p.period);
    for (int64_t i = 0; i < p.period; ++i) {
      (*channel_of)[i] = (i / layout.inner) % layout.channels;
    }
  }
  return p;
}

HostParams make_host_params(
    const char* op,
    const Layout& layout,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max) {
  detail::check_scale_values(op, scale);
  detail::check_zero_point_values(op, zero_point, quant_min, quant_max);

  const int64_t channels = layout.channels;
  const auto s = scale.contiguous();
  const auto z = zero_point.contiguous();
  const float* sp = s.const_data_ptr<float>();

  std::vector<float> cs(channels), ci(channels), cz(channels);
  const float lo = static_cast<float>(quant_min);
  const float hi = static_cast<float>(quant_max);
  // Integer zero points are already checked to lie in [lo, hi]; float ones are
  // rounded half to even and clamped.
  auto read_zero_points = [&](const auto* zp) {
    for (int64_t c = 0; c < channels; ++c) {
      cz[c] = std::min(std::max(std::nearbyint(static_cast<float>(zp[c])), lo), hi);
    }
  };
  switch (z.scalar_type()) {
    case at::kFloat:
      read_zero_points(z.const_data_ptr<float>());
      break;
    case at::kInt:
      read_zero_points(z.const_data_ptr<int32_t>());
      break;
    case at::kLong:
      read_zero_points(z.const_data_ptr<int64_t>());
      break;
    default:
      TORCH_INTERNAL_ASSERT(false, "q8.", op, ": unexpected zero_point dtype ", z.scalar_type());
  }
  for (int64_t c = 0; c < channels; ++c) {
    cs[c] = sp[c];
    ci[c] = 1.0f / sp[c];
  }

  HostParams h;
  h.params = make_layout_params(layout, &h.channel_of);
  if (h.params.broadcast) {
    h.scale = std::move(cs);
    h.inv_scale = std::move(ci);
    h.zero_point = std::move(cz);
  } else {
    const int64_t n = h.params.period;
    h.scale.resize(n);
    h.inv_scale.resize(n);
    h.zero_point.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t c = h.channel_of[i];
      h.scale[i] = cs[c];
      h.inv_scale[i] = ci[c];
      h.zero_point[i] = cz[c];
    }
  }
  h.params.scale = h.scale.data();
  h.params.inv_scale = h.inv_scale.data();
  h.params.zero_point = h.zero_point.data();
  h.params.quant_min = lo;
  h.params.quant_max = hi;
  return h;
}

} // namespace q8::cpu
