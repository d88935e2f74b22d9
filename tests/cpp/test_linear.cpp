// The int8 linear ops through the public C++ API (q8/q8.h): exact integer GEMM
// against plain int64 loops on every ISA family, the float linear against a
// dequantize-then-matmul loop in double, the backward pass (input and bias
// gradients) from C++, and the argument errors.
#include "q8_test_utils.h"

namespace {

using namespace q8_test;

// out[m][n] = sum_k (a[m][k] - zp[m]) * w[n][k], plain loops.
std::vector<int64_t> ref_int8_mm(const at::Tensor& a, const at::Tensor& w, const std::vector<int64_t>& zp) {
  const auto av = as_int64s(a), wv = as_int64s(w);
  const int64_t m = a.size(0), k = a.size(1), n = w.size(0);
  std::vector<int64_t> out(m * n, 0);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      int64_t s = 0;
      for (int64_t t = 0; t < k; ++t) {
        s += (av[i * k + t] - zp[i]) * wv[j * k + t];
      }
      out[i * n + j] = s;
    }
  }
  return out;
}

at::Tensor random_int8(int64_t n, int64_t k) {
  return torch::randint(-128, 128, {n, k}, torch::kChar);
}

TEST(Int8Linear, QuantizeWeightIsSymmetricPerRow) {
  torch::manual_seed(1);
  const auto w = torch::randn({7, 33}) * 5;
  const auto [w8, ws] = q8::quantize_weight(w);
  ASSERT_EQ(w8.scalar_type(), at::kChar);
  ASSERT_EQ(ws.sizes(), at::IntArrayRef({7}));
  const auto wv = as_floats(w), sv = as_floats(ws);
  const auto qv = as_int64s(w8);
  for (int64_t r = 0; r < 7; ++r) {
    float amax = 0.f;
    for (int64_t i = 0; i < 33; ++i) {
      amax = std::max(amax, std::fabs(wv[r * 33 + i]));
    }
    EXPECT_EQ(float_bits(sv[r]), float_bits(amax / 127.f)) << "row " << r;
    const float inv = 1.0f / sv[r];
    for (int64_t i = 0; i < 33; ++i) {
      const float q = std::fmin(std::fmax(std::nearbyint(wv[r * 33 + i] * inv), -127.f), 127.f);
      EXPECT_EQ(qv[r * 33 + i], static_cast<int64_t>(q)) << "row " << r << " col " << i;
    }
  }
}

TEST(Int8Linear, PackUnpackRoundTrip) {
  for (auto [n, k] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {15, 3}, {16, 4}, {17, 5}, {40, 130}, {0, 4}}) {
    const auto w8 = random_int8(n, k);
    const auto packed = q8::pack_weight(w8);
    EXPECT_TRUE(same_bits(q8::unpack_weight(packed, n, k), w8)) << n << "x" << k;
  }
}

TEST(Int8Linear, Int8MmIsExactOnEveryIsa) {
  torch::manual_seed(2);
  IsaGuard guard;
  for (auto [m, k, n] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {1, 1, 1}, {5, 37, 19}, {6, 64, 16}, {7, 65, 33}, {13, 300, 70}}) {
    const auto w8 = random_int8(n, k);
    const auto packed = q8::pack_weight(w8);
    const auto a = torch::randint(0, 256, {m, k}, torch::kByte);
    const auto zp = torch::randint(0, 256, {m}, torch::kInt);
    const auto want = ref_int8_mm(a, w8, as_int64s(zp));
    const auto want0 = ref_int8_mm(a, w8, std::vector<int64_t>(m, 0));
    for (const auto& isa : supported_isas()) {
      q8::set_cpu_isa(isa.c_str());
      EXPECT_EQ(as_int64s(q8::int8_mm(a, packed, n, zp)), want) << isa << " " << m << "x" << k << "x" << n;
      EXPECT_EQ(as_int64s(q8::int8_mm(a, packed, n)), want0) << isa;
    }
  }
}

TEST(Int8Linear, Int8MmLongKDoesNotOverflow) {
  IsaGuard guard;
  const int64_t k = int64_t{1} << 18, n = 2;
  auto w8 = torch::full({n, k}, -128, torch::kChar);
  w8[1].fill_(127);
  const auto packed = q8::pack_weight(w8);
  const auto a = torch::full({1, k}, 255, torch::kByte);
  for (const auto& isa : supported_isas()) {
    q8::set_cpu_isa(isa.c_str());
    const auto out = as_int64s(q8::int8_mm(a, packed, n));
    EXPECT_EQ(out[0], -128LL * 255 * k) << isa;
    EXPECT_EQ(out[1], 127LL * 255 * k) << isa;
  }
}

// Dynamic: each row quantized to uint8 with its own min/max qparams.
TEST(Int8Linear, DynamicLinearMatchesDequantizedMatmul) {
  torch::manual_seed(3);
  IsaGuard guard;
  const int64_t m = 9, k = 70, n = 21;
  const auto [w8, ws] = q8::quantize_weight(torch::randn({n, k}));
  const auto packed = q8::pack_weight(w8);
  const auto x = torch::randn({m, k}) * 2;
  const auto bias = torch::randn({n});
  // The activation codes from the public ops, then plain loops in double.
  const auto [sx, zx] = q8::choose_qparams(x, 0, 255, false, 0);
  const auto xq = q8::quantize(x, sx, zx, 0, 0, 255, at::kByte);
  const auto acc = ref_int8_mm(xq, w8, as_int64s(zx));
  const auto sxv = as_floats(sx), swv = as_floats(ws), bv = as_floats(bias);
  std::vector<at::Tensor> outs;
  for (const auto& isa : supported_isas()) {
    q8::set_cpu_isa(isa.c_str());
    const auto y = q8::linear(x, packed, ws, bias);
    const auto yv = as_floats(y);
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        const double want = static_cast<double>(acc[i * n + j]) * sxv[i] * swv[j] + bv[j];
        EXPECT_NEAR(yv[i * n + j], want, 4e-6 * (std::fabs(want) + 1.0)) << isa << " " << i << "," << j;
      }
    }
    outs.push_back(y);
  }
  for (size_t i = 1; i < outs.size(); ++i) {
    EXPECT_TRUE(same_bits(outs[i], outs[0])) << supported_isas()[i];
  }
}

TEST(Int8Linear, WeightOnlyLinearMatchesFloatMatmul) {
  torch::manual_seed(4);
  const int64_t m = 3, k = 37, n = 19;
  const auto [w8, ws] = q8::quantize_weight(torch::randn({n, k}));
  const auto packed = q8::pack_weight(w8);
  const auto x = torch::randn({m, k});
  const auto y = as_floats(q8::linear(x, packed, ws, std::nullopt, "weight_only"));
  const auto xv = as_floats(x), swv = as_floats(ws);
  const auto wv = as_int64s(w8);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double want = 0.0, mag = 0.0;
      for (int64_t t = 0; t < k; ++t) {
        want += static_cast<double>(xv[i * k + t]) * wv[j * k + t] * swv[j];
        mag += std::fabs(static_cast<double>(xv[i * k + t]) * wv[j * k + t] * swv[j]);
      }
      EXPECT_NEAR(y[i * n + j], want, 1e-6 * mag + 1e-7) << i << "," << j;
    }
  }
}

// The fused activation: clamp(y, clamp_min, clamp_max) on the float32 result, NaN
// kept, every mode and ISA; its gradient is zero where the output sits on a bound.
TEST(Int8Linear, FusedClampIsTheClampOfTheOutput) {
  torch::manual_seed(5);
  IsaGuard guard;
  const int64_t m = 7, k = 45, n = 33;
  const auto [w8, ws] = q8::quantize_weight(torch::randn({n, k}));
  const auto packed = q8::pack_weight(w8);
  auto x = torch::randn({m, k}) * 2;
  x[2][5] = std::nan("");
  const auto bias = torch::randn({n});
  for (const auto& isa : supported_isas()) {
    q8::set_cpu_isa(isa.c_str());
    for (const char* mode : {"dynamic", "static", "weight_only"}) {
      const bool is_static = std::string(mode) == "static";
      const auto s = is_static ? std::optional<at::Tensor>(f32_scalar(0.04f)) : std::nullopt;
      const auto z = is_static ? std::optional<at::Tensor>(i32_scalar(120)) : std::nullopt;
      const auto plain = as_floats(q8::linear(x, packed, ws, bias, mode, s, z));
      const auto relu6 = as_floats(q8::linear(x, packed, ws, bias, mode, s, z, 0.0, 6.0));
      const auto upper = as_floats(q8::linear(x, packed, ws, bias, mode, s, z, std::nullopt, -0.5));
      int low = 0, high = 0;
      for (int64_t i = 0; i < m * n; ++i) {
        const float p = plain[i];
        if (std::isnan(p)) {
          EXPECT_TRUE(std::isnan(relu6[i]) && std::isnan(upper[i])) << isa << " " << mode << " " << i;
          continue;
        }
        low += p < 0.f;
        high += p > 6.f;
        EXPECT_EQ(relu6[i], p < 0.f ? 0.f : (p > 6.f ? 6.f : p)) << isa << " " << mode << " " << i;
        EXPECT_EQ(upper[i], p > -0.5f ? -0.5f : p) << isa << " " << mode << " " << i;
      }
      EXPECT_GT(low, 0);
      EXPECT_GT(high, 0);
    }
  }
  // Gradient: the output's gradient passes where 0 < y < 6 only.
  const auto xg = torch::randn({m, k}).set_requires_grad(true);
  const auto y = q8::linear(xg, packed, ws, bias, "dynamic", std::nullopt, std::nullopt, 0.0, 6.0);
  const auto g = torch::randn({m, n});
  y.backward(g);
  const auto pass = at::logical_and(y.detach() > 0, y.detach() < 6);
  const auto want = q8::linear_grad_input(at::where(pass, g, at::zeros({}, g.options())), packed, ws, k);
  EXPECT_TRUE(same_bits(xg.grad(), want));
  Q8_EXPECT_ERROR(q8::linear(x, packed, ws, bias, "dynamic", std::nullopt, std::nullopt, 1.0, 0.0),
                  "clamp_min must be <= clamp_max");
}

TEST(Int8Linear, StaticNeedsQparamsAndBadInputIsRefused) {
  const auto [w8, ws] = q8::quantize_weight(torch::randn({19, 37}));
  const auto packed = q8::pack_weight(w8);
  const auto x = torch::randn({4, 37});
  Q8_EXPECT_ERROR(q8::linear(x, packed, ws, std::nullopt, "static"), "needs the calibrated input_scale");
  Q8_EXPECT_ERROR(q8::linear(torch::randn({4, 36}), packed, ws), "in_features (37), got 36");
  Q8_EXPECT_ERROR(q8::linear(x, packed, ws, torch::randn({18})), "bias must be 1-D with out_features = 19");
  Q8_EXPECT_ERROR(q8::linear(x, packed.narrow(0, 0, packed.numel() - 1).clone(), ws), "truncated");
  auto tampered = packed.clone();
  tampered[20] = 99;  // out_features
  Q8_EXPECT_ERROR(q8::linear(x, tampered, ws), "packed_weight");
  Q8_EXPECT_ERROR(q8::int8_mm(torch::zeros({2, 37}, torch::kChar), packed, 19), "input must be uint8");
  const auto y = q8::linear(x, packed, ws, std::nullopt, "static", f32_scalar(0.05f), i32_scalar(128));
  EXPECT_EQ(y.sizes(), at::IntArrayRef({4, 19}));
}

// Backward from C++ through q8::linear: grad_input = grad . W_deq (straight
// through), zero where static quantization clips; grad_bias = column sums.
TEST(Int8Linear, BackwardGivesInputAndBiasGradients) {
  torch::manual_seed(5);
  const int64_t m = 6, k = 29, n = 11;
  const auto [w8, ws] = q8::quantize_weight(torch::randn({n, k}));
  const auto packed = q8::pack_weight(w8);
  const auto swv = as_floats(ws);
  const auto wv = as_int64s(w8);
  const auto xs = torch::randn({m, k}) * 2;
  const auto go = torch::randn({m, n});
  const auto gov = as_floats(go), xv = as_floats(xs);
  for (const char* mode : {"dynamic", "weight_only", "static"}) {
    const auto x = xs.clone().requires_grad_(true);
    const auto b = torch::randn({n}).requires_grad_(true);
    const bool is_static = std::string(mode) == "static";
    const auto y = is_static ? q8::linear(x, packed, ws, b, mode, f32_scalar(0.02f), i32_scalar(128))
                             : q8::linear(x, packed, ws, b, mode);
    y.backward(go);
    const auto gx = as_floats(x.grad()), gb = as_floats(b.grad());
    int clipped = 0;
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t t = 0; t < k; ++t) {
        double want = 0.0, mag = 0.0;
        for (int64_t j = 0; j < n; ++j) {
          want += static_cast<double>(gov[i * n + j]) * wv[j * k + t] * swv[j];
          mag += std::fabs(static_cast<double>(gov[i * n + j]) * wv[j * k + t] * swv[j]);
        }
        if (is_static) {
          const float q = std::nearbyint(xv[i * k + t] * (1.0f / 0.02f)) + 128.f;
          if (q < 0.f || q > 255.f) {
            want = 0.0;
            ++clipped;
          }
        }
        EXPECT_NEAR(gx[i * k + t], want, 1e-6 * mag + 1e-7) << mode << " " << i << "," << t;
      }
    }
    if (is_static) {
      EXPECT_GT(clipped, 0);
    }
    for (int64_t j = 0; j < n; ++j) {
      double want = 0.0;
      for (int64_t i = 0; i < m; ++i) {
        want += gov[i * n + j];
      }
      EXPECT_NEAR(gb[j], want, 1e-5) << mode << " " << j;
    }
  }
  // The backward op through the public API, and the frozen weight_scale.
  const auto gi = q8::linear_grad_input(go, packed, ws, k);
  EXPECT_EQ(gi.sizes(), at::IntArrayRef({m, k}));
  Q8_EXPECT_ERROR(q8::linear(xs.clone().requires_grad_(true), packed, ws.clone().requires_grad_(true)),
                  "weight_scale must not require grad");
}

} // namespace
