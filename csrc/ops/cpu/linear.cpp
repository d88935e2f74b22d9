// CPU kernels of the int8 linear family (schemas in ../linear.cpp): weight
// quantization and packing, the exact integer GEMM and the fused linear layer.
// The per-ISA tile kernels are in kernels/int8_gemm_*.cpp.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <atomic>
#include <limits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"
#include "../packed_weight.h"
#include "../qparams_math.h"
#include "isa.h"
#include "kernels/int8_gemm.h"

namespace q8::cpu {
namespace {

using detail::LinearMode;
using detail::PackedView;
namespace gemm = q8::cpu::gemm;

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

void check_cpu(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "q8.", op, ": ", name, " must be a CPU tensor for the CPU kernel, got ", t.device());
}

// ---------------------------------------------------------------------------
// Weight quantization and packing
// ---------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor> quantize_weight_cpu(const at::Tensor& weight) {
  const char* op = "quantize_weight";
  detail::check_quantize_weight_args(op, weight);
  const auto w = weight.to(at::kFloat).contiguous();
  const int64_t n = w.size(0), k = w.size(1);
  auto q = at::empty({n, k}, w.options().dtype(at::kChar));
  auto scale = at::empty({n}, w.options());
  const float* wp = w.const_data_ptr<float>();
  int8_t* qp = q.mutable_data_ptr<int8_t>();
  float* sp = scale.mutable_data_ptr<float>();
  std::atomic<int64_t> bad_row{-1};
  at::parallel_for(0, n, std::max<int64_t>(1, 65536 / std::max<int64_t>(k, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* row = wp + r * k;
      float lo = 0.f, hi = 0.f;
      bool finite = true;
      for (int64_t i = 0; i < k; ++i) {
        finite = finite && std::isfinite(row[i]);
        lo = std::min(lo, row[i]);
        hi = std::max(hi, row[i]);
      }
      if (!finite) {
        bad_row.store(r);
        sp[r] = 1.f;
        std::memset(qp + r * k, 0, k);
        continue;
      }
      float s;
      int32_t z;
      detail::compute_qparams(lo, hi, -127, 127, /*symmetric=*/true, &s, &z);
      sp[r] = s;
      const float inv = 1.0f / s;
      for (int64_t i = 0; i < k; ++i) {
        float v = std::nearbyint(row[i] * inv);
        v = std::fmin(std::fmax(v, -127.f), 127.f);
        qp[r * k + i] = static_cast<int8_t>(static_cast<int32_t>(v));
      }
    }
  });
  TORCH_CHECK(bad_row.load() < 0, "q8.", op, ": weight must be finite, but row ", bad_row.load(),
              " holds NaN or Inf");
  return {q, scale};
}

at::Tensor pack_weight_cpu(const at::Tensor& weight_int8) {
  const char* op = "pack_weight";
  detail::check_pack_weight_args(op, weight_int8);
  const auto w = weight_int8.contiguous();
  const int64_t n = w.size(0), k = w.size(1);
  const auto s = detail::cpu_packed_sizes(n, k);
  auto out = at::zeros({s.total_bytes}, w.options().dtype(at::kByte));
  uint8_t* base = out.mutable_data_ptr<uint8_t>();
  const int8_t* wp = w.const_data_ptr<int8_t>();
  int8_t* dst = reinterpret_cast<int8_t*>(base + s.weight_offset);
  int32_t* rowsums = reinterpret_cast<int32_t*>(base + s.rowsum_offset);
  at::parallel_for(0, s.panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      for (int64_t j = 0; j < gemm::kPanel; ++j) {
        const int64_t row = p * gemm::kPanel + j;
        if (row >= n) {
          break;
        }
        int32_t sum = 0;
        for (int64_t i = 0; i < k; ++i) {
          const int8_t v = wp[row * k + i];
          sum += v;
          dst[p * s.groups * gemm::kGroupBytes + (i / 4) * gemm::kGroupBytes + j * 4 + (i % 4)] = v;
        }
        rowsums[row] = sum;
      }
    }
  });
  detail::PackedHeader h{};
  h.magic = detail::kPackMagic;
  h.version = detail::kPackVersion;
  h.layout = static_cast<uint32_t>(detail::PackLayout::CpuPanel16x4);
  h.n = n;
  h.k = k;
  h.weight_offset = s.weight_offset;
  h.rowsum_offset = s.rowsum_offset;
  h.total_bytes = s.total_bytes;
  h.checksum = detail::packed_checksum(h, base + s.rowsum_offset, s.total_bytes - s.rowsum_offset);
  std::memcpy(base, &h, sizeof(h));
  return out;
}

PackedView packed_for(const char* op, const at::Tensor& packed, int64_t n, int64_t k, const char* n_name,
                      const char* k_name) {
  check_cpu(op, packed, "packed_weight");
  PackedView v = detail::check_packed_weight(op, packed, detail::PackLayout::CpuPanel16x4);
  TORCH_CHECK(v.header.n == n, "q8.", op, ": ", n_name, " must match packed_weight's out_features (",
              v.header.n, "), got ", n);
  TORCH_CHECK(v.header.k == k, "q8.", op, ": ", k_name, " must match packed_weight's in_features (", v.header.k,
              "), got ", k);
  return v;
}

at::Tensor unpack_weight_cpu(const at::Tensor& packed, c10::SymInt out_features, c10::SymInt in_features) {
  const char* op = "unpack_weight";
  detail::check_packed_container(op, packed);
  const PackedView v =
      packed_for(op, packed, out_features.expect_int(), in_features.expect_int(), "out_features", "in_features");
  const int64_t n = v.header.n, k = v.header.k;
  auto out = at::empty({n, k}, packed.options().dtype(at::kChar));
  int8_t* op_ = out.mutable_data_ptr<int8_t>();
  std::atomic<int64_t> bad{-1};
  at::parallel_for(0, v.panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int8_t* src = v.weights + p * v.panel_stride;
      for (int64_t j = 0; j < gemm::kPanel; ++j) {
        const int64_t row = p * gemm::kPanel + j;
        int32_t sum = 0;
        bool padding_ok = true;
        for (int64_t i = 0; i < v.groups * 4; ++i) {
          const int8_t val = src[(i / 4) * gemm::kGroupBytes + j * 4 + (i % 4)];
          if (row < n && i < k) {
            op_[row * k + i] = val;
            sum += val;
          } else {
            padding_ok = padding_ok && val == 0;
          }
        }
        if (!padding_ok || (row < n ? sum != v.rowsums[row] : v.rowsums[row] != 0)) {
          bad.store(row);
        }
      }
    }
  });
  TORCH_CHECK(bad.load() < 0, "q8.", op, ": packed_weight is corrupt: the weights of output channel ", bad.load(),
              " do not match their row sum or padding (the tensor was modified after q8.pack_weight)");
  return out;
}

// ---------------------------------------------------------------------------
// The tiled int8 GEMM driver
// ---------------------------------------------------------------------------
// Activation panels: ceil(M / 6) panels of [groups][6][4] uint8.
struct Int8Gemm {
  const PackedView* w;
  int64_t m;
  const uint8_t* a;  // activation panels
};

// Runs every (64-column block, 6-row panel) tile; `sink(row0, mr, col0, ncols,
// c32, c64)` receives the int32 tile (c64 == nullptr) or, for K beyond one int32
// chunk, the int64 tile (c32 == nullptr). Column blocks are split between the
// threads (each keeps its block of weights in cache across all rows); when
// there are too few blocks, rows are split too.
template <typename Sink>
void run_int8_gemm(const gemm::GemmKernels& kern, const Int8Gemm& g, const Sink& sink) {
  const PackedView& w = *g.w;
  const int64_t n = w.header.n;
  const int64_t groups = w.groups;
  const int64_t nblocks = ceil_div(w.panels, gemm::kMaxPanels);
  const int64_t mpanels = ceil_div(g.m, gemm::kRows);
  if (nblocks == 0 || mpanels == 0) {
    return;
  }
  const int64_t threads = at::get_num_threads();
  int64_t mchunk = mpanels;
  while (mchunk > 1 && nblocks * ceil_div(mpanels, mchunk) < 4 * threads) {
    mchunk = ceil_div(mchunk, 2);
  }
  const int64_t mitems = ceil_div(mpanels, mchunk);
  const int64_t panel_bytes = groups * gemm::kRows * gemm::kGroup;
  at::parallel_for(0, nblocks * mitems, 1, [&](int64_t begin, int64_t end) {
    alignas(64) int32_t c32[gemm::kRows * gemm::kTileCols];
    alignas(64) int32_t part[gemm::kRows * gemm::kTileCols];
    std::vector<int64_t> c64;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t jb = item / mitems, mi = item % mitems;
      const int64_t p0 = jb * gemm::kMaxPanels;
      const int np = static_cast<int>(std::min<int64_t>(gemm::kMaxPanels, w.panels - p0));
      const int64_t col0 = p0 * gemm::kPanel;
      const int ncols = static_cast<int>(std::min<int64_t>(np * gemm::kPanel, n - col0));
      const int8_t* b = w.weights + p0 * w.panel_stride;
      for (int64_t mp = mi * mchunk; mp < std::min(mpanels, (mi + 1) * mchunk); ++mp) {
        const int64_t row0 = mp * gemm::kRows;
        const int mr = static_cast<int>(std::min<int64_t>(gemm::kRows, g.m - row0));
        const uint8_t* a = g.a + mp * panel_bytes;
        if (groups <= gemm::kMaxGroups) {
          kern.int8_tile(a, b, w.panel_stride, 0, groups, mr, np, c32);
          sink(row0, mr, col0, ncols, c32, static_cast<const int64_t*>(nullptr));
          continue;
        }
        // Long K: exact int32 chunks summed in int64.
        c64.assign(gemm::kRows * gemm::kTileCols, 0);
        for (int64_t g0 = 0; g0 < groups; g0 += gemm::kMaxGroups) {
          const int64_t g1 = std::min(groups, g0 + gemm::kMaxGroups);
          kern.int8_tile(a, b, w.panel_stride, g0, g1, mr, np, part);
          for (int r = 0; r < mr; ++r) {
            for (int j = 0; j < np * gemm::kPanel; ++j) {
              c64[r * gemm::kTileCols + j] += part[r * gemm::kTileCols + j];
            }
          }
        }
        sink(row0, mr, col0, ncols, static_cast<const int32_t*>(nullptr), c64.data());
      }
    }
  });
}

// Copies uint8 rows into activation panels (no quantization), zero padded.
at::Tensor panels_from_uint8(const at::Tensor& input, int64_t groups) {
  const int64_t m = input.size(0), k = input.size(1);
  const int64_t mpanels = ceil_div(m, gemm::kRows);
  const int64_t panel_bytes = groups * gemm::kRows * gemm::kGroup;
  auto a = at::zeros({std::max<int64_t>(mpanels * panel_bytes, 1)}, input.options());
  uint8_t* ap = a.mutable_data_ptr<uint8_t>();
  const uint8_t* xp = input.const_data_ptr<uint8_t>();
  at::parallel_for(0, m, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      uint8_t* panel = ap + (r / gemm::kRows) * panel_bytes + (r % gemm::kRows) * gemm::kGroup;
      for (int64_t i = 0; i < k; ++i) {
        panel[(i / 4) * (gemm::kRows * gemm::kGroup) + (i % 4)] = xp[r * k + i];
      }
    }
  });
  return a;
}

at::Tensor int8_mm_cpu(const at::Tensor& input, const at::Tensor& packed, c10::SymInt out_features,
                       const std::optional<at::Tensor>& input_zero_point) {
  const char* op = "int8_mm";
  detail::check_int8_mm_args(op, input, packed, out_features, input_zero_point);
  check_cpu(op, input, "input");
  const auto x = input.contiguous();
  const int64_t m = x.size(0), k = x.size(1);
  const PackedView w = packed_for(op, packed, out_features.expect_int(), k, "out_features", "input.size(1)");
  const int64_t n = w.header.n;
  std::vector<int32_t> zp(std::max<int64_t>(m, 1), 0);
  if (input_zero_point.has_value()) {
    detail::check_zero_point_values(op, *input_zero_point, 0, 255);
    const auto z = input_zero_point->to(at::kInt).contiguous().expand({m}).contiguous();
    std::memcpy(zp.data(), z.const_data_ptr<int32_t>(), m * sizeof(int32_t));
  }
  auto out = at::empty({m, n}, x.options().dtype(at::kLong));
  if (m == 0 || n == 0) {
    return out;
  }
  const auto a = panels_from_uint8(x, w.groups);
  int64_t* yp = out.mutable_data_ptr<int64_t>();
  const Int8Gemm g{&w, m, a.const_data_ptr<uint8_t>()};
  run_int8_gemm(gemm::active_kernels(), g, [&](int64_t row0, int mr, int64_t col0, int ncols, const int32_t* c32,
                                       const int64_t* c64) {
    for (int r = 0; r < mr; ++r) {
      for (int j = 0; j < ncols; ++j) {
        const int64_t acc = c32 != nullptr ? c32[r * gemm::kTileCols + j] : c64[r * gemm::kTileCols + j];
        yp[(row0 + r) * n + col0 + j] = acc - int64_t{zp[row0 + r]} * w.rowsums[col0 + j];
      }
    }
  });
  return out;
}

// ---------------------------------------------------------------------------
// linear
// ---------------------------------------------------------------------------
// The fused activation: y = y < lo ? lo : y, then y > hi ? hi : y (torch.clamp's
// result, NaN kept), on a tile of the output while it is in cache.
struct Clamp {
  bool has_lo = false, has_hi = false;
  float lo = 0.f, hi = 0.f;

  Clamp(std::optional<double> clamp_min, std::optional<double> clamp_max)
      : has_lo(clamp_min.has_value()), has_hi(clamp_max.has_value()),
        lo(has_lo ? static_cast<float>(*clamp_min) : 0.f), hi(has_hi ? static_cast<float>(*clamp_max) : 0.f) {}

  void apply(float* y, int rows, int cols, int64_t ld) const {
    if (has_lo) {
      for (int r = 0; r < rows; ++r) {
        float* yr = y + r * ld;
        for (int j = 0; j < cols; ++j) {
          yr[j] = yr[j] < lo ? lo : yr[j];
        }
      }
    }
    if (has_hi) {
      for (int r = 0; r < rows; ++r) {
        float* yr = y + r * ld;
        for (int j = 0; j < cols; ++j) {
          yr[j] = yr[j] > hi ? hi : yr[j];
        }
      }
    }
  }
};

at::Tensor linear_int8(const at::Tensor& x2, const PackedView& w, const float* sw, const float* bias, LinearMode mode,
                       const std::optional<at::Tensor>& input_scale, const std::optional<at::Tensor>& input_zero_point,
                       const Clamp& clamp, const char* op) {
  const auto& kern = gemm::active_kernels();
  const int64_t m = x2.size(0), k = x2.size(1), n = w.header.n;
  const int64_t groups = w.groups;
  const int64_t mpanels = ceil_div(m, gemm::kRows);
  const int64_t panel_bytes = groups * gemm::kRows * gemm::kGroup;
  auto y = at::empty({m, n}, x2.options().dtype(at::kFloat));
  if (m == 0 || n == 0) {
    return y;
  }
  auto a = at::empty({std::max<int64_t>(mpanels * panel_bytes, 1)}, x2.options().dtype(at::kByte));
  uint8_t* ap = a.mutable_data_ptr<uint8_t>();
  std::vector<float> sx(m), inv(m);
  std::vector<int32_t> zp(m);
  std::vector<uint8_t> bad(m, 0);
  float static_scale = 0.f;
  int32_t static_zp = 0;
  if (mode == LinearMode::Static) {
    detail::check_scale_values(op, *input_scale);
    detail::check_zero_point_values(op, *input_zero_point, 0, 255);
    static_scale = input_scale->to(at::kFloat).reshape({}).item<float>();
    static_zp = static_cast<int32_t>(input_zero_point->to(at::kLong).reshape({}).item<int64_t>());
  }
  const float* xp = x2.const_data_ptr<float>();
  const int64_t ldx = x2.stride(0);
  // Per-row qparams and quantization into the activation panels.
  at::parallel_for(0, mpanels, std::max<int64_t>(1, 32768 / std::max<int64_t>(k * gemm::kRows, 1)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t mp = begin; mp < end; ++mp) {
      const int64_t row0 = mp * gemm::kRows;
      const int rows = static_cast<int>(std::min<int64_t>(gemm::kRows, m - row0));
      for (int r = 0; r < rows; ++r) {
        const int64_t row = row0 + r;
        if (mode == LinearMode::Dynamic) {
          float lo, hi;
          kern.row_min_max(xp + row * ldx, k, &lo, &hi);
          if (std::isfinite(lo) && std::isfinite(hi)) {
            detail::compute_qparams(lo, hi, 0, 255, /*symmetric=*/false, &sx[row], &zp[row]);
          } else {  // the row holds NaN or Inf: its output is NaN (below)
            sx[row] = 1.f;
            zp[row] = 0;
          }
        } else {
          sx[row] = static_scale;
          zp[row] = static_zp;
        }
        inv[row] = 1.0f / sx[row];
      }
      const uint32_t mask = kern.quantize_rows(xp + row0 * ldx, ldx, k, rows, inv.data() + row0, zp.data() + row0,
                                               ap + mp * panel_bytes, groups);
      for (int r = 0; r < rows; ++r) {
        bad[row0 + r] = (mask >> r) & 1u;
      }
    }
  });
  float* yp = y.mutable_data_ptr<float>();
  const Int8Gemm g{&w, m, ap};
  run_int8_gemm(kern, g, [&](int64_t row0, int mr, int64_t col0, int ncols, const int32_t* c32, const int64_t* c64) {
    float* yt = yp + row0 * n + col0;
    const float* bt = bias != nullptr ? bias + col0 : nullptr;
    if (c32 != nullptr) {
      kern.int8_epilogue(c32, mr, ncols, zp.data() + row0, sx.data() + row0, w.rowsums + col0, sw + col0, bt, yt, n);
    } else {
      for (int r = 0; r < mr; ++r) {
        for (int j = 0; j < ncols; ++j) {
          const int64_t v = c64[r * gemm::kTileCols + j] - int64_t{zp[row0 + r]} * w.rowsums[col0 + j];
          const float t = static_cast<float>(v);
          const float s = sx[row0 + r] * sw[col0 + j];
          float o = t * s;
          if (bt != nullptr) {
            o = o + bt[j];
          }
          yt[r * n + j] = o;
        }
      }
    }
    clamp.apply(yt, mr, ncols, n);
    for (int r = 0; r < mr; ++r) {
      if (bad[row0 + r]) {
        std::fill(yt + r * n, yt + r * n + ncols, std::numeric_limits<float>::quiet_NaN());
      }
    }
  });
  return y;
}

// ---------------------------------------------------------------------------
// Dequantized weight blocks (linear_grad_input)
// ---------------------------------------------------------------------------
// weight_scale padded with zeros to whole panels, so that dequant_panels may read
// 16 scales per panel.
std::vector<float> padded_scales(const PackedView& w, const float* sw) {
  std::vector<float> s(w.panels * gemm::kPanel, 0.f);
  std::copy(sw, sw + w.header.n, s.begin());
  return s;
}

// A float buffer per thread, grown to the largest block seen and kept (a fresh
// allocation per call would pay page faults).
float* thread_buffer(int64_t elements) {
  static thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < elements) {
    buf.assign(elements, 0.f);
  }
  return buf.data();
}

// weight_only: the int8 weights are converted to float inside the tile kernel
// (f32_tile), which moves a quarter of fp32's bytes; memory-bound shapes run about
// 2x faster than fp32. (A path that dequantizes blocks of 256 output channels into
// a per-thread buffer and calls BLAS per block was measured slower than this one
// at every M from 1 to 512 on the 2-core dev machine; see docs/training.md.)
at::Tensor linear_weight_only(const at::Tensor& x2, const PackedView& w, const float* sw, const float* bias,
                              const Clamp& clamp) {
  const auto& kern = gemm::active_kernels();
  const int64_t m = x2.size(0), k = x2.size(1), n = w.header.n;
  const int64_t groups = w.groups;
  auto y = at::empty({m, n}, x2.options().dtype(at::kFloat));
  if (m == 0 || n == 0) {
    return y;
  }
  // Rows of float32 with K padded to a multiple of 4 with zeros.
  at::Tensor xf = x2;
  if (groups * 4 != k || x2.stride(0) != k) {
    xf = at::zeros({m, groups * 4}, x2.options());
    xf.narrow(1, 0, k).copy_(x2);
  }
  const float* xp = xf.const_data_ptr<float>();
  const int64_t ldx = xf.stride(0);
  float* yp = y.mutable_data_ptr<float>();
  constexpr int kRowsWo = 4;
  const int64_t nblocks = ceil_div(w.panels, gemm::kMaxPanels);
  const int64_t mpanels = ceil_div(m, kRowsWo);
  const int64_t threads = at::get_num_threads();
  int64_t mchunk = mpanels;
  while (mchunk > 1 && nblocks * ceil_div(mpanels, mchunk) < 4 * threads) {
    mchunk = ceil_div(mchunk, 2);
  }
  const int64_t mitems = ceil_div(mpanels, mchunk);
  at::parallel_for(0, nblocks * mitems, 1, [&](int64_t begin, int64_t end) {
    alignas(64) float c[gemm::kRows * gemm::kTileCols];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t jb = item / mitems, mi = item % mitems;
      const int64_t p0 = jb * gemm::kMaxPanels;
      const int np = static_cast<int>(std::min<int64_t>(gemm::kMaxPanels, w.panels - p0));
      const int64_t col0 = p0 * gemm::kPanel;
      const int ncols = static_cast<int>(std::min<int64_t>(np * gemm::kPanel, n - col0));
      for (int64_t mp = mi * mchunk; mp < std::min(mpanels, (mi + 1) * mchunk); ++mp) {
        const int64_t row0 = mp * kRowsWo;
        const int mr = static_cast<int>(std::min<int64_t>(kRowsWo, m - row0));
        kern.f32_tile(xp + row0 * ldx, ldx, w.weights + p0 * w.panel_stride, w.panel_stride, 0, groups, mr, np, c);
        for (int r = 0; r < mr; ++r) {
          float* yr = yp + (row0 + r) * n + col0;
          for (int j = 0; j < ncols; ++j) {
            float o = c[r * gemm::kTileCols + j] * sw[col0 + j];
            if (bias != nullptr) {
              o = o + bias[col0 + j];
            }
            yr[j] = o;
          }
        }
        clamp.apply(yp + row0 * n + col0, mr, ncols, n);
      }
    }
  });
  return y;
}

// grad_input[M, K] = grad_output[M, N] . dequant(w)[N, K]: each task takes a range
// of k, dequantizes blocks of output channels (about 1 MiB of float32) into its
// buffer and adds each block's product with BLAS.
at::Tensor linear_grad_input_cpu(const at::Tensor& grad_output, const at::Tensor& packed,
                                 const at::Tensor& weight_scale, c10::SymInt in_features) {
  const char* op = "linear_grad_input";
  detail::check_linear_grad_input_args(op, grad_output, packed, weight_scale, in_features);
  check_cpu(op, grad_output, "grad_output");
  const int64_t k = in_features.expect_int();
  const PackedView w = packed_for(op, packed, weight_scale.size(0), k, "weight_scale.size(0)", "in_features");
  const int64_t n = w.header.n;
  auto sizes = grad_output.sizes().vec();
  sizes.back() = k;
  int64_t m = 1;
  for (size_t d = 0; d + 1 < sizes.size(); ++d) {
    m *= sizes[d];
  }
  auto gi = at::zeros({m, k}, grad_output.options().dtype(at::kFloat));
  if (m > 0 && n > 0 && k > 0) {
    const auto& kern = gemm::active_kernels();
    const auto go = grad_output.reshape({m, n}).to(at::kFloat).contiguous();
    const auto sw = weight_scale.contiguous();
    const auto scales = padded_scales(w, sw.const_data_ptr<float>());
    // One task per range of k (at least 64 groups): a task owns its columns of
    // grad_input, so there is one parallel region and no reduction; inside it BLAS
    // runs on one thread.
    const int64_t threads = at::get_num_threads();
    const int64_t gpt = std::max<int64_t>(64, ceil_div(w.groups, 4 * threads));
    const int64_t ntasks = ceil_div(w.groups, gpt);
    at::parallel_for(0, ntasks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t g0 = task * gpt, g1 = std::min(w.groups, g0 + gpt);
        const int64_t k0 = g0 * gemm::kGroup, kw = std::min(k, g1 * gemm::kGroup) - k0;
        if (kw <= 0) {
          continue;
        }
        // Row stride: rounded up to 16 floats plus 16, so that the 16 rows a panel
        // writes at once do not map to one L1 set (power-of-two strides).
        const int64_t ldd = ceil_div((g1 - g0) * gemm::kGroup, 16) * 16 + 16;
        const int64_t bp = std::max<int64_t>(1, (int64_t{1} << 20) / (gemm::kPanel * ldd * 4));
        float* buf = thread_buffer(bp * gemm::kPanel * ldd);
        auto gi_cols = gi.narrow(1, k0, kw);
        for (int64_t p0 = 0; p0 < w.panels; p0 += bp) {
          const int64_t np = std::min<int64_t>(bp, w.panels - p0);
          const int64_t col0 = p0 * gemm::kPanel;
          const int64_t ncols = std::min<int64_t>(np * gemm::kPanel, n - col0);
          kern.dequant_panels(w.weights + p0 * w.panel_stride + g0 * gemm::kGroupBytes, w.panel_stride, g1 - g0,
                              static_cast<int>(np), scales.data() + col0, buf, ldd);
          gi_cols.addmm_(go.narrow(1, col0, ncols), at::from_blob(buf, {ncols, kw}, {ldd, 1}, gi.options()));
        }
      }
    });
  }
  auto out = gi.view(sizes);
  return grad_output.scalar_type() == at::kFloat ? out : out.to(grad_output.scalar_type());
}

at::Tensor linear_cpu(const at::Tensor& input, const at::Tensor& packed, const at::Tensor& weight_scale,
                      const std::optional<at::Tensor>& bias, c10::string_view activation,
                      const std::optional<at::Tensor>& input_scale,
                      const std::optional<at::Tensor>& input_zero_point, std::optional<double> clamp_min,
                      std::optional<double> clamp_max) {
  const char* op = "linear";
  const LinearMode mode = detail::check_linear_args(op, input, packed, weight_scale, bias, activation, input_scale,
                                                    input_zero_point, clamp_min, clamp_max);
  const Clamp clamp(clamp_min, clamp_max);
  check_cpu(op, input, "input");
  const int64_t k = input.size(-1);
  const PackedView w = packed_for(op, packed, weight_scale.size(0), k, "weight_scale.size(0)", "input.size(-1)");
  const int64_t n = w.header.n;
  const auto sw = weight_scale.contiguous();
  at::Tensor b;
  if (bias.has_value()) {
    b = bias->to(at::kFloat).contiguous();
  }
  auto sizes = input.sizes().vec();
  sizes.back() = n;
  int64_t m = 1;
  for (size_t d = 0; d + 1 < sizes.size(); ++d) {
    m *= sizes[d];
  }
  const auto x2 = input.reshape({m, k}).to(at::kFloat).contiguous();
  const float* bp = b.defined() ? b.const_data_ptr<float>() : nullptr;
  at::Tensor y = mode == LinearMode::WeightOnly
      ? linear_weight_only(x2, w, sw.const_data_ptr<float>(), bp, clamp)
      : linear_int8(x2, w, sw.const_data_ptr<float>(), bp, mode, input_scale, input_zero_point, clamp, op);
  y = y.view(sizes);
  return input.scalar_type() == at::kFloat ? y : y.to(input.scalar_type());
}

} // namespace

TORCH_LIBRARY_IMPL(q8, CPU, m) {
  m.impl("quantize_weight", &quantize_weight_cpu);
  m.impl("pack_weight", &pack_weight_cpu);
  m.impl("unpack_weight", &unpack_weight_cpu);
  m.impl("int8_mm", &int8_mm_cpu);
  m.impl("linear", &linear_cpu);
  m.impl("linear_grad_input", &linear_grad_input_cpu);
}

namespace gemm {

const GemmKernels& active_kernels() {
  switch (active_isa()) {
    case Isa::AVX512_VNNI:
      return gemm_avx512_vnni();
    case Isa::AVX_VNNI:
      return gemm_avx_vnni();
    case Isa::AVX512:
    case Isa::AVX2:
      return gemm_avx2();
    case Isa::DEFAULT:
      break;
  }
  return gemm_default();
}

} // namespace gemm

} // namespace q8::cpu
