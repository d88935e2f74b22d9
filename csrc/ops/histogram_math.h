// The math of the histogram observer (histogram_observe / histogram_qparams),
// shared by the CPU (cpu/histogram.cpp) and CUDA (cuda/histogram.cu) kernels,
// host and device code. Every function is a sequence of float64 operations in a
// fixed order (both build files compile without fused multiply-add), so the CPU
// and the GPU produce the same bits. Semantics: csrc/ops/histogram.cpp.
//
// A histogram is B float64 bins over [lo, hi] (float32 ends): bin k covers
// [lo + k w, lo + (k + 1) w), w = (hi - lo) / B, the last one includes hi; the
// mass of a bin is spread uniformly over it. A degenerate range lo == hi is a
// point mass at lo (stored in bin 0).
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>

#include <c10/macros/Macros.h>

namespace q8::detail {

// Bins summed together, in order, by the quantile searches (chunk sums first,
// then a walk over the chunks): the CPU and CUDA kernels use the same chunks.
constexpr int64_t kHistChunk = 64;

C10_HOST_DEVICE inline bool hist_finite(float v) {
  return fabsf(v) <= FLT_MAX;  // false for NaN and +-Inf
}

// The state's range is set (an observation happened): finite and lo <= hi.
C10_HOST_DEVICE inline bool hist_range_set(float lo, float hi) {
  return hist_finite(lo) && hist_finite(hi) && lo <= hi;
}

// Bin of a value v for the range [lo, hi] (lo <= hi, finite), torch.histc's
// formula in float64: floor((v - lo) * B / (hi - lo)), clamped to [0, B - 1] (so
// hi goes in the last bin and values outside the range in the edge bins). A
// degenerate range puts everything in bin 0. v must not be NaN.
C10_HOST_DEVICE inline int64_t hist_bin(double v, double lo, double hi, int64_t bins) {
  if (!(hi > lo)) {
    return 0;
  }
  double pos = (v - lo) * static_cast<double>(bins) / (hi - lo);
  const double top = static_cast<double>(bins - 1);
  pos = pos > 0.0 ? pos : 0.0;  // also maps -0 and tiny negatives to 0
  pos = pos < top ? pos : top;
  return static_cast<int64_t>(pos);  // pos >= 0: truncation is floor
}

// The range update of one observation: the finite min / max of the batch (or of
// input_range), bmin > bmax when there is none.
struct HistRangeUpdate {
  bool active;  // something to do: the batch (or input_range) has a finite value
  bool fresh;   // first observation: the old counts are discarded
  float lo, hi; // the new range
};

C10_HOST_DEVICE inline HistRangeUpdate hist_update_range(float old_lo, float old_hi, float bmin, float bmax) {
  HistRangeUpdate u{false, false, old_lo, old_hi};
  if (!(bmin <= bmax)) {
    return u;
  }
  u.active = true;
  if (!hist_range_set(old_lo, old_hi)) {
    u.fresh = true;
    u.lo = bmin;
    u.hi = bmax;
  } else {
    u.lo = bmin < old_lo ? bmin : old_lo;
    u.hi = bmax > old_hi ? bmax : old_hi;
  }
  return u;
}

// ---------------------------------------------------------------------------
// Re-binning: the counts of [old_lo, old_hi] moved into the B bins of the wider
// [new_lo, new_hi] by overlap proportion. Old bin i covers [p(i), p(i + 1)] in new
// bin units, p(i) = off + i * ratio (ratio = old width / new width <= 1), so it
// overlaps new bins jlo(i) .. jhi(i) (usually one or two). Its mass h goes by
// overlap length: pieces h * overlap / (p(i + 1) - p(i)) to every bin but the
// last, which gets h minus those pieces (so each old bin's mass is preserved up
// to the rounding of one subtraction). Gathered per new bin j: every thread
// computes the same pieces with the same operations.
// ---------------------------------------------------------------------------
struct HistRebin {
  double off, ratio;  // p(i) = off + i * ratio
  int64_t bins;

  C10_HOST_DEVICE double lo_pos(int64_t i) const {
    return off + static_cast<double>(i) * ratio;
  }
  C10_HOST_DEVICE double hi_pos(int64_t i) const {
    return off + static_cast<double>(i + 1) * ratio;
  }
  C10_HOST_DEVICE int64_t clamp_bin(double p) const {
    const double top = static_cast<double>(bins - 1);
    p = p > 0.0 ? p : 0.0;
    p = p < top ? p : top;
    return static_cast<int64_t>(p);
  }
  C10_HOST_DEVICE int64_t jlo(int64_t i) const {
    return clamp_bin(floor(lo_pos(i)));
  }
  C10_HOST_DEVICE int64_t jhi(int64_t i) const {
    const int64_t a = jlo(i);
    const int64_t b = clamp_bin(ceil(hi_pos(i)) - 1.0);
    return b > a ? b : a;
  }
  // The part of old bin i (mass h) that goes to new bin j (jlo(i) <= j <= jhi(i)).
  C10_HOST_DEVICE double piece(int64_t i, double h, int64_t j) const {
    const int64_t a = jlo(i), b = jhi(i);
    if (a == b) {
      return h;
    }
    const double lo = lo_pos(i);
    const double span = hi_pos(i) - lo;
    if (j < b) {
      const double left = j == a ? lo : static_cast<double>(j);
      return h * (static_cast<double>(j + 1) - left) / span;
    }
    double rest = h;
    for (int64_t k = a; k < b; ++k) {
      const double left = k == a ? lo : static_cast<double>(k);
      rest -= h * (static_cast<double>(k + 1) - left) / span;
    }
    return rest;
  }
};

C10_HOST_DEVICE inline HistRebin hist_make_rebin(float old_lo, float old_hi, float new_lo, float new_hi,
                                                  int64_t bins) {
  const double nw = static_cast<double>(new_hi) - static_cast<double>(new_lo);
  const double ow = static_cast<double>(old_hi) - static_cast<double>(old_lo);
  HistRebin r;
  r.bins = bins;
  r.ratio = ow / nw;
  r.off = (static_cast<double>(old_lo) - static_cast<double>(new_lo)) * static_cast<double>(bins) / nw;
  return r;
}

// New bin j of the re-binned histogram `old` (contiguous, B bins over
// [old_lo, old_hi], a set range) for [new_lo, new_hi] (containing it, wider).
C10_HOST_DEVICE inline double hist_rebin_bin(const double* old, int64_t bins, float old_lo, float old_hi,
                                             float new_lo, float new_hi, int64_t j) {
  if (!(old_hi > old_lo)) {
    // A point mass at old_lo: all of it to the bin of old_lo.
    if (j != hist_bin(old_lo, new_lo, new_hi, bins)) {
      return 0.0;
    }
    double total = 0.0;
    for (int64_t i = 0; i < bins; ++i) {
      total += old[i];
    }
    return total;
  }
  const HistRebin r = hist_make_rebin(old_lo, old_hi, new_lo, new_hi, bins);
  // First old bin that reaches new bin j (jhi is non-decreasing in i).
  int64_t first = 0, last = bins;
  while (first < last) {
    const int64_t mid = first + (last - first) / 2;
    if (r.jhi(mid) >= j) {
      last = mid;
    } else {
      first = mid + 1;
    }
  }
  double acc = 0.0;
  for (int64_t i = first; i < bins && r.jlo(i) <= j; ++i) {
    const double h = old[i];
    if (h != 0.0) {
      acc += r.piece(i, h, j);
    }
  }
  return acc;
}

// ---------------------------------------------------------------------------
// Quantiles (histogram_qparams).
// ---------------------------------------------------------------------------
C10_HOST_DEVICE inline int64_t hist_chunks(int64_t bins) {
  return (bins + kHistChunk - 1) / kHistChunk;
}

// Sum of the bins of chunk c, in order.
C10_HOST_DEVICE inline double hist_chunk_sum(const double* h, int64_t bins, int64_t c) {
  const int64_t end = (c + 1) * kHistChunk < bins ? (c + 1) * kHistChunk : bins;
  double s = 0.0;
  for (int64_t k = c * kHistChunk; k < end; ++k) {
    s += h[k];
  }
  return s;
}

C10_HOST_DEVICE inline double hist_total(const double* chunk_sums, int64_t chunks) {
  double t = 0.0;
  for (int64_t c = 0; c < chunks; ++c) {
    t += chunk_sums[c];
  }
  return t;
}

// The lower quantile at mass m (0 < m <= total): inf { x : F(x) >= m } for the
// piecewise-linear CDF F of the histogram, as a position t in bins (x = lo + t w):
// t = k + (m - C_k) / h_k in the first bin k (h_k > 0) where the running sum
// C_k + h_k reaches m. from_right: the same from the right end (the mirrored
// histogram), returned as B - t, i.e. sup { x : mass above x >= m }.
C10_HOST_DEVICE inline double hist_quantile_pos(const double* h, int64_t bins, const double* chunk_sums,
                                                int64_t chunks, double m, bool from_right) {
  double cum = 0.0;
  int64_t c = 0;
  for (; c < chunks; ++c) {
    const int64_t cc = from_right ? chunks - 1 - c : c;
    if (cum + chunk_sums[cc] >= m) {
      break;
    }
    cum += chunk_sums[cc];
  }
  if (c == chunks) {
    return from_right ? 0.0 : static_cast<double>(bins);  // rounding: m above the total
  }
  const int64_t cc = from_right ? chunks - 1 - c : c;
  const int64_t begin = cc * kHistChunk;
  const int64_t end = begin + kHistChunk < bins ? begin + kHistChunk : bins;
  int64_t last_positive = -1;
  for (int64_t n = 0; n < end - begin; ++n) {
    const int64_t k = from_right ? end - 1 - n : begin + n;
    const double hk = h[k];
    if (!(hk > 0.0)) {
      continue;
    }
    last_positive = k;
    if (cum + hk >= m) {
      double frac = (m - cum) / hk;
      frac = frac < 0.0 ? 0.0 : (frac > 1.0 ? 1.0 : frac);
      return from_right ? static_cast<double>(k + 1) - frac : static_cast<double>(k) + frac;
    }
    cum += hk;
  }
  // Rounding: the chunk's sum reached m but its bins one by one did not.
  if (last_positive < 0) {
    return from_right ? 0.0 : static_cast<double>(bins);
  }
  return from_right ? static_cast<double>(last_positive) : static_cast<double>(last_positive + 1);
}

// Mass of |x| <= a in chunk c of the histogram over [lo, lo + B w] (w > 0), the
// density uniform within each bin.
C10_HOST_DEVICE inline double hist_chunk_abs_mass(const double* h, int64_t bins, int64_t c, double lo, double w,
                                                  double a) {
  const int64_t end = (c + 1) * kHistChunk < bins ? (c + 1) * kHistChunk : bins;
  double s = 0.0;
  for (int64_t k = c * kHistChunk; k < end; ++k) {
    const double e0 = lo + static_cast<double>(k) * w;
    const double e1 = lo + static_cast<double>(k + 1) * w;
    const double right = e1 < a ? e1 : a;
    const double left = e0 > -a ? e0 : -a;
    const double overlap = right - left;
    if (overlap > 0.0) {
      s += h[k] * (overlap < w ? overlap / w : 1.0);
    }
  }
  return s;
}

C10_HOST_DEVICE inline uint32_t hist_float_bits(float f) {
  union {
    float f;
    uint32_t u;
  } v;
  v.f = f;
  return v.u;
}

C10_HOST_DEVICE inline float hist_bits_float(uint32_t u) {
  union {
    float f;
    uint32_t u;
  } v;
  v.u = u;
  return v.f;
}

// The clipped range from positions (in bins) of the two quantiles, as float32
// inside [lo, hi] with clipped_lo <= clipped_hi.
C10_HOST_DEVICE inline void hist_clip_range(float lo, float hi, int64_t bins, double t_lo, double t_hi,
                                            float* out_lo, float* out_hi) {
  const double w = (static_cast<double>(hi) - static_cast<double>(lo)) / static_cast<double>(bins);
  float a = static_cast<float>(static_cast<double>(lo) + t_lo * w);
  float b = static_cast<float>(static_cast<double>(lo) + t_hi * w);
  a = a < lo ? lo : (a > hi ? hi : a);
  b = b < lo ? lo : (b > hi ? hi : b);
  b = b < a ? a : b;
  *out_lo = a;
  *out_hi = b;
}

} // namespace q8::detail

namespace q8::detail {

// What histogram_qparams does for a state: no observation yet (the qparams of an
// empty input), the full range [lo, hi] (percentile 100, no mass, or a degenerate
// range), or a clipped range from the quantiles.
enum class HistQparamsCase { Empty, Full, Clip };

C10_HOST_DEVICE inline HistQparamsCase hist_qparams_case(float lo, float hi, double total, double percentile) {
  if (!hist_range_set(lo, hi)) {
    return HistQparamsCase::Empty;
  }
  if (percentile >= 100.0 || !(total > 0.0) || !(hi > lo)) {
    return HistQparamsCase::Full;
  }
  return HistQparamsCase::Clip;
}

// The largest |x| of the range: the upper end of the symmetric search.
C10_HOST_DEVICE inline float hist_abs_max(float lo, float hi) {
  const float a = fabsf(lo), b = fabsf(hi);
  return a > b ? a : b;
}

} // namespace q8::detail

namespace q8::detail {

// The asymmetric clipped range (case Clip): the lower quantile at mass
// m = total (1 - p / 100) / 2 from the left and the same mass from the right.
C10_HOST_DEVICE inline void hist_asymmetric_range(const double* h, int64_t bins, const double* chunk_sums,
                                                  int64_t chunks, double total, float lo, float hi,
                                                  double percentile, float* out_lo, float* out_hi) {
  const double m = total * ((1.0 - percentile / 100.0) / 2.0);
  if (!(m > 0.0)) {
    *out_lo = lo;
    *out_hi = hi;
    return;
  }
  const double t_lo = hist_quantile_pos(h, bins, chunk_sums, chunks, m, false);
  const double t_hi = hist_quantile_pos(h, bins, chunk_sums, chunks, m, true);
  hist_clip_range(lo, hi, bins, t_lo, t_hi, out_lo, out_hi);
}

} // namespace q8::detail
