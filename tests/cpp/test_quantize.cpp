// Tests of q8::choose_qparams, q8::quantize and q8::dequantize through the public
// C++ API, against scalar references, on every CPU kernel family, plus argument errors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <q8/q8.h>

#include "q8_test_utils.h"

namespace {

using namespace q8_test;

// ===========================================================================
// choose_qparams reference: the MinMaxObserver formulas of csrc/ops/qparams_math.h,
// written out again here, over the finite values (the range always holds 0).
// ===========================================================================
void ref_qparams_from_min_max(float min_val, float max_val, int64_t qmin, int64_t qmax, bool symmetric,
                              float* scale_out, int32_t* zp_out) {
  const float min_neg = std::min(min_val, 0.f);
  const float max_pos = std::max(max_val, 0.f);
  const float levels = static_cast<float>(qmax - qmin);
  float scale;
  int64_t zp;
  if (symmetric) {
    const float amax = std::max(-min_neg, max_pos);
    scale = amax / (levels / 2.f);
    if (!std::isfinite(scale)) {
      const double wide = static_cast<double>(amax) / (static_cast<double>(levels) / 2.0);
      scale = wide > FLT_MAX ? FLT_MAX : static_cast<float>(wide);
    }
    scale = std::max(scale, FLT_EPSILON);
    zp = qmin < 0 ? 0 : (qmin + qmax + 1) / 2;
  } else {
    scale = (max_pos - min_neg) / levels;
    if (!std::isfinite(scale)) {
      const double wide = (static_cast<double>(max_pos) - static_cast<double>(min_neg)) / static_cast<double>(levels);
      scale = wide > FLT_MAX ? FLT_MAX : static_cast<float>(wide);
    }
    scale = std::max(scale, FLT_EPSILON);
    zp = qmin - static_cast<int64_t>(std::nearbyint(min_neg / scale));
    zp = std::min(std::max(zp, qmin), qmax);
  }
  *scale_out = scale;
  *zp_out = static_cast<int32_t>(zp);
}

struct RefQparams {
  std::vector<float> scale;
  std::vector<int32_t> zero_point;
};

RefQparams ref_choose_qparams(const at::Tensor& x, int64_t qmin, int64_t qmax, bool symmetric,
                              std::optional<int64_t> axis) {
  const int64_t dim = x.dim();
  const int64_t channels = axis ? x.size(*axis < 0 ? *axis + dim : *axis) : 1;
  std::vector<float> mins(channels, 0.f), maxs(channels, 0.f);
  const auto xs = as_floats(x);
  const auto ch = channel_index(x.sizes(), axis);
  for (size_t i = 0; i < xs.size(); ++i) {
    if (!std::isfinite(xs[i])) continue;
    mins[ch[i]] = std::min(mins[ch[i]], xs[i]);
    maxs[ch[i]] = std::max(maxs[ch[i]], xs[i]);
  }
  RefQparams r;
  r.scale.resize(channels);
  r.zero_point.resize(channels);
  for (int64_t c = 0; c < channels; ++c) {
    ref_qparams_from_min_max(mins[c], maxs[c], qmin, qmax, symmetric, &r.scale[c], &r.zero_point[c]);
  }
  return r;
}

// Checks choose_qparams against the reference (bit for bit) and the documented
// invariants.
void check_choose_qparams(const at::Tensor& x, int64_t qmin, int64_t qmax, bool symmetric,
                          std::optional<int64_t> axis, const std::string& what) {
  const auto [scale, zp] = q8::choose_qparams(x, qmin, qmax, symmetric, axis);
  const auto ref = ref_choose_qparams(x, qmin, qmax, symmetric, axis);
  const auto w = what + (symmetric ? " symmetric" : " asymmetric");
  ASSERT_EQ(scale.scalar_type(), at::kFloat) << w;
  ASSERT_EQ(zp.scalar_type(), at::kInt) << w;
  if (axis.has_value()) {
    EXPECT_EQ(scale.dim(), 1) << w;
    EXPECT_EQ(zp.dim(), 1) << w;
  } else {
    EXPECT_EQ(scale.dim(), 0) << w;
    EXPECT_EQ(zp.dim(), 0) << w;
  }
  EXPECT_FALSE(scale.requires_grad()) << w;
  EXPECT_FALSE(zp.requires_grad()) << w;
  const auto s = as_floats(scale);
  const auto z = as_int64s(zp);
  ASSERT_EQ(s.size(), ref.scale.size()) << w;
  for (size_t c = 0; c < s.size(); ++c) {
    EXPECT_EQ(float_bits(s[c]), float_bits(ref.scale[c])) << w << " channel " << c << ": scale " << s[c]
                                                           << " expected " << ref.scale[c];
    EXPECT_EQ(z[c], ref.zero_point[c]) << w << " channel " << c;
    // Invariants: a finite positive scale, a zero point inside the range (so 0.0 is
    // exactly representable), 0 for a symmetric signed range.
    EXPECT_TRUE(std::isfinite(s[c]) && s[c] > 0.f) << w << " channel " << c << ": scale " << s[c];
    EXPECT_GE(z[c], qmin) << w;
    EXPECT_LE(z[c], qmax) << w;
    if (symmetric) {
      EXPECT_EQ(z[c], qmin < 0 ? 0 : (qmin + qmax + 1) / 2) << w;
    }
  }
}

TEST(ChooseQparams, PerTensorMatchesReference) {
  torch::manual_seed(101);
  for (const auto& r : all_ranges()) {
    for (auto dtype : float_dtypes()) {
      for (bool sym : {false, true}) {
        const std::vector<std::pair<std::string, at::Tensor>> inputs{
            {"randn", random_input({517}, dtype, 3.f)},
            {"randn + specials", random_input({1031}, dtype, 0.7f, {kNaN, kInf, -kInf, -kNaN})},
            {"positive", random_input({64}, dtype, 2.f).abs() + 0.5},
            {"negative", -random_input({77}, dtype, 2.f).abs() - 0.25},
            {"skewed", random_input({300}, dtype, 1.f) * 0.1 + 4.0},
            {"2-D", random_input({33, 65}, dtype, 10.f)},
        };
        for (const auto& [name, x] : inputs) {
          check_choose_qparams(x, r.qmin, r.qmax, sym, std::nullopt,
                               name + " " + describe(x.sizes(), std::nullopt, dtype, r));
        }
      }
    }
  }
}

TEST(ChooseQparams, ZeroConstantAndNonFiniteInputs) {
  for (const auto& r : all_ranges()) {
    for (auto dtype : float_dtypes()) {
      for (bool sym : {false, true}) {
        const auto what = describe({}, std::nullopt, dtype, r);
        const std::vector<std::pair<std::string, at::Tensor>> inputs{
            {"zeros", torch::zeros({50}).to(dtype)},
            {"negative zeros", torch::full({9}, -0.f).to(dtype)},
            {"constant 5", torch::full({40}, 5.f).to(dtype)},
            {"constant -3", torch::full({40}, -3.f).to(dtype)},
            {"tiny", torch::full({3}, 1e-30f).to(dtype)},
            {"only NaN / Inf", f32({kNaN, kInf, -kInf, kNaN}).to(dtype)},
            {"NaN / Inf and one value", f32({kNaN, kInf, 2.f, -kInf}).to(dtype)},
            {"empty", torch::empty({0}).to(dtype)},
            {"0-dim", torch::tensor(-1.5f).to(dtype)},
        };
        for (const auto& [name, x] : inputs) {
          check_choose_qparams(x, r.qmin, r.qmax, sym, std::nullopt, name + " " + what);
        }
      }
    }
  }
  // Hand-computed values.
  {
    const auto [s, z] = q8::choose_qparams(torch::zeros({8}), -128, 127, false);
    EXPECT_EQ(s.item<float>(), FLT_EPSILON);
    EXPECT_EQ(z.item<int32_t>(), -128);
  }
  {
    const auto [s, z] = q8::choose_qparams(f32({-1.f, 0.5f, 3.f, kNaN, kInf}), 0, 255, false);
    EXPECT_EQ(s.item<float>(), 4.f / 255.f);
    EXPECT_EQ(z.item<int32_t>(), static_cast<int32_t>(std::nearbyint(1.f / (4.f / 255.f))));  // 64
    EXPECT_EQ(z.item<int32_t>(), 64);
  }
  {
    const auto [s, z] = q8::choose_qparams(f32({-1.f, 0.5f, 3.f, -kInf}), -128, 127, true);
    EXPECT_EQ(s.item<float>(), 3.f / 127.5f);
    EXPECT_EQ(z.item<int32_t>(), 0);
    const auto [s2, z2] = q8::choose_qparams(f32({-1.f, 0.5f, 3.f}), 0, 255, true);
    EXPECT_EQ(s2.item<float>(), 3.f / 127.5f);
    EXPECT_EQ(z2.item<int32_t>(), 128);
  }
}

TEST(ChooseQparams, HugeRangesGiveFiniteScales) {
  for (const auto& r : all_ranges()) {
    for (bool sym : {false, true}) {
      for (const auto& x : {f32({FLT_MAX, -FLT_MAX}), f32({FLT_MAX, 1.f}), f32({-FLT_MAX, 0.f}),
                            f32({3e38f, -3e38f, kNaN}), f32({1e30f, -1e30f})}) {
        check_choose_qparams(x, r.qmin, r.qmax, sym, std::nullopt,
                             "huge " + describe(x.sizes(), std::nullopt, at::kFloat, r));
      }
    }
  }
  // [0, 1] has one level: the span 2 * FLT_MAX does not fit in float32 and is capped.
  const auto [s, z] = q8::choose_qparams(f32({FLT_MAX, -FLT_MAX}), 0, 1, false);
  EXPECT_EQ(s.item<float>(), FLT_MAX);
  const auto [s2, z2] = q8::choose_qparams(f32({FLT_MAX, -FLT_MAX}), -128, 127, false);
  EXPECT_EQ(s2.item<float>(), static_cast<float>(2.0 * FLT_MAX / 255.0));
}

TEST(ChooseQparams, PerChannelEveryAxis) {
  torch::manual_seed(102);
  for (const auto& c : axis_cases()) {
    for (auto dtype : float_dtypes()) {
      for (bool sym : {false, true}) {
        for (const auto& r : {QRange{-128, 127}, QRange{0, 255}, QRange{-8, 7}}) {
          // Channel-dependent magnitudes and offsets so that channels differ.
          const int64_t dim = static_cast<int64_t>(c.shape.size());
          const int64_t a = c.axis < 0 ? c.axis + dim : c.axis;
          std::vector<int64_t> bshape(dim, 1);
          bshape[a] = c.shape[a];
          const auto mag = torch::linspace(0.1f, 5.f, c.shape[a]).reshape(bshape);
          const auto off = torch::linspace(-2.f, 3.f, c.shape[a]).reshape(bshape);
          const auto x = (random_input(c.shape, at::kFloat, 1.f, {kNaN, kInf, -kInf}) * mag + off).to(dtype);
          check_choose_qparams(x, r.qmin, r.qmax, sym, c.axis, describe(c.shape, c.axis, dtype, r));
        }
      }
    }
  }
}

TEST(ChooseQparams, PerChannelSpecialChannels) {
  // One all-zero channel, one constant, one non-finite only, one ordinary.
  auto x = torch::randn({4, 100});
  x[0].zero_();
  x[1].fill_(-2.5f);
  x[2].fill_(kNaN);
  x[2][7] = kInf;
  for (auto dtype : float_dtypes()) {
    for (bool sym : {false, true}) {
      check_choose_qparams(x.to(dtype), -128, 127, sym, 0, std::string("rows ") + dtype_name(dtype));
      check_choose_qparams(x.t().to(dtype), 0, 255, sym, 1, std::string("columns (non-contiguous) ") + dtype_name(dtype));
      check_choose_qparams(x.t().contiguous().to(dtype), -8, 7, sym, -1, std::string("columns ") + dtype_name(dtype));
    }
  }
}

TEST(ChooseQparams, NonContiguousAndEmptyInputs) {
  torch::manual_seed(103);
  const auto base = random_input({12, 90}, at::kFloat, 3.f, {kNaN, kInf});
  for (bool sym : {false, true}) {
    check_choose_qparams(base.t(), -128, 127, sym, std::nullopt, "transpose");
    check_choose_qparams(base.slice(1, 0, 90, 7), -128, 127, sym, std::nullopt, "slice");
    check_choose_qparams(base.slice(1, 0, 90, 7), -128, 127, sym, 0, "slice axis 0");
    check_choose_qparams(base.t(), 0, 255, sym, 1, "transpose axis 1");
    check_choose_qparams(base.t(), 0, 255, sym, 0, "transpose axis 0");
    // Empty: per tensor, and per channel where the layout has whole (empty) runs.
    check_choose_qparams(torch::empty({0, 3}), -128, 127, sym, std::nullopt, "empty per tensor");
    check_choose_qparams(torch::empty({0, 3}), -128, 127, sym, 1, "empty, 3 channels, inner 1");
    check_choose_qparams(torch::empty({0, 64}), -128, 127, sym, 0, "empty, 0 channels, inner 64");
  }
}

// Separate: zero channels or zero inner extent below the vector threshold.
TEST(ChooseQparams, EmptyPerChannelWithZeroChannelsOrZeroInnerExtent) {
  check_choose_qparams(torch::empty({3, 0}), -128, 127, false, 0, "[3, 0] axis 0");
  check_choose_qparams(torch::empty({0, 5}), -128, 127, false, 0, "[0, 5] axis 0");
}

// ===========================================================================
// quantize.
// ===========================================================================

struct QuantCase {
  QRange range;
  at::ScalarType dtype;
};

const std::vector<QuantCase>& quant_cases() {
  static const std::vector<QuantCase> c{
      {{-128, 127}, at::kChar}, {{-127, 127}, at::kChar}, {{-8, 7}, at::kChar},       {{0, 15}, at::kChar},
      {{0, 1}, at::kChar},      {{0, 255}, at::kByte},    {{0, 15}, at::kByte},       {{0, 1}, at::kByte},
      {{-128, 127}, at::kInt},  {{0, 255}, at::kInt},     {{-32768, 65535}, at::kInt}, {{-8, 7}, at::kInt},
  };
  return c;
}

void check_quantize(const at::Tensor& x, const at::Tensor& s, const at::Tensor& z, std::optional<int64_t> axis,
                    int64_t qmin, int64_t qmax, at::ScalarType qdtype, const std::string& what) {
  const auto q = q8::quantize(x, s, z, axis, qmin, qmax, qdtype);
  ASSERT_EQ(q.scalar_type(), qdtype) << what;
  EXPECT_EQ(q.sizes(), x.sizes()) << what;
  EXPECT_FALSE(q.requires_grad()) << what;
  EXPECT_TRUE(same_bits(q, from_int64s(ref_quantize(x, s, z, axis, qmin, qmax), x.sizes(), qdtype))) << what;
}

TEST(Quantize, PerTensorMatchesReference) {
  torch::manual_seed(104);
  for (const auto& c : quant_cases()) {
    for (auto dtype : float_dtypes()) {
      for (auto zdt : {at::kInt, at::kLong, at::kFloat}) {
        const float scale = 8.f / static_cast<float>(c.range.qmax - c.range.qmin);
        const auto x = random_input({41, 23}, dtype, 5.f, special_values(0.25f));
        const int64_t zp = (c.range.qmin + c.range.qmax) / 3;
        const auto z = torch::tensor(zp, torch::kLong).to(zdt);
        const auto what = describe(x.sizes(), std::nullopt, dtype, c.range) + " -> " + dtype_name(c.dtype) +
            " zp dtype " + dtype_name(zdt);
        check_quantize(x, f32_scalar(scale), z, std::nullopt, c.range.qmin, c.range.qmax, c.dtype, what);
        // Power-of-two scale: exact ties.
        check_quantize(x, f32_scalar(0.25f), z, std::nullopt, c.range.qmin, c.range.qmax, c.dtype, what + " s=0.25");
      }
    }
  }
}

TEST(Quantize, HandComputedValuesNaNMapsToZeroPoint) {
  const auto x = f32({kNaN, -kNaN, kInf, -kInf, 0.375f, 0.125f, -0.375f, 1e30f, -FLT_MAX, 0.f});
  {
    const auto q = q8::quantize(x, f32_scalar(0.25f), i32_scalar(3), std::nullopt, -128, 127, at::kChar);
    EXPECT_TRUE(same_bits(q, torch::tensor({3, 3, 127, -128, 5, 3, 1, 127, -128, 3}, torch::kChar)));
  }
  {
    const auto q = q8::quantize(x, f32_scalar(0.25f), i32_scalar(100), std::nullopt, 0, 255, at::kByte);
    EXPECT_TRUE(same_bits(q, torch::tensor({100, 100, 255, 0, 102, 100, 98, 255, 0, 100}, torch::kByte)));
  }
  {
    // A float zero point rounds half to even (2.5 -> 2): NaN maps to 2.
    const auto q = q8::quantize(x, f32_scalar(0.25f), f32_scalar(2.5f), std::nullopt, -32768, 65535, at::kInt);
    EXPECT_TRUE(same_bits(q, torch::tensor({2, 2, 65535, -32768, 4, 2, 0, 65535, -32768, 2}, torch::kInt)));
  }
  for (auto dt : {at::kHalf, at::kBFloat16}) {
    const auto q = q8::quantize(x.to(dt), f32_scalar(0.25f), i32_scalar(3), std::nullopt, -128, 127, at::kChar);
    EXPECT_TRUE(same_bits(q, torch::tensor({3, 3, 127, -128, 5, 3, 1, 127, -128, 3}, torch::kChar))) << dt;
  }
}

TEST(Quantize, PerChannelEveryAxis) {
  torch::manual_seed(105);
  for (const auto& c : axis_cases()) {
    const int64_t dim = static_cast<int64_t>(c.shape.size());
    const int64_t ch = c.shape[c.axis < 0 ? c.axis + dim : c.axis];
    for (auto dtype : float_dtypes()) {
      for (const auto& qc : {QuantCase{{-128, 127}, at::kChar}, QuantCase{{0, 255}, at::kByte},
                             QuantCase{{-1000, 1000}, at::kInt}}) {
        for (auto zdt : {at::kInt, at::kFloat}) {
          const auto x = random_input(c.shape, dtype, 3.f, special_values(0.125f));
          const auto s = random_scales(ch, 0.01f, 0.1f);
          const auto z = random_zero_points(ch, qc.range.qmin, qc.range.qmax, zdt);
          check_quantize(x, s, z, c.axis, qc.range.qmin, qc.range.qmax, qc.dtype,
                         describe(c.shape, c.axis, dtype, qc.range) + " -> " + dtype_name(qc.dtype));
        }
      }
    }
  }
}

TEST(Quantize, NonContiguousEmptyAndZeroDim) {
  torch::manual_seed(106);
  const auto base = random_input({16, 50}, at::kFloat, 2.f, special_values(0.05f));
  for (auto dtype : float_dtypes()) {
    const auto b = base.to(dtype);
    check_quantize(b.t(), f32_scalar(0.05f), i32_scalar(-1), std::nullopt, -128, 127, at::kChar, "transpose");
    check_quantize(b.slice(1, 3, 50, 4), f32_scalar(0.05f), i32_scalar(7), std::nullopt, 0, 255, at::kByte, "slice");
    check_quantize(b.t(), random_scales(16, 0.01f, 0.1f).slice(0, 0, 16, 1), random_zero_points(16, -128, 127, at::kInt),
                   1, -128, 127, at::kChar, "transpose per channel");
    check_quantize(torch::empty({0, 4}).to(dtype), f32_scalar(0.05f), i32_scalar(0), std::nullopt, -128, 127,
                   at::kChar, "empty");
    check_quantize(torch::empty({0, 4}).to(dtype), torch::full({4}, 0.1f), torch::zeros({4}, torch::kInt), 1, -128,
                   127, at::kChar, "empty per channel");
    check_quantize(torch::tensor(1.3f).to(dtype), f32_scalar(0.05f), i32_scalar(0), std::nullopt, -128, 127,
                   at::kChar, "0-dim");
  }
}

TEST(Quantize, InputRequiringGradGivesPlainIntegers) {
  const auto x = torch::randn({10}).requires_grad_(true);
  const auto q = q8::quantize(x, f32_scalar(0.1f).requires_grad_(true), i32_scalar(0), std::nullopt, -128, 127,
                              at::kChar);
  EXPECT_FALSE(q.requires_grad());
  EXPECT_TRUE(same_bits(q, from_int64s(ref_quantize(x.detach(), f32_scalar(0.1f), i32_scalar(0), std::nullopt,
                                                    -128, 127),
                                       {10}, at::kChar)));
  const auto [s, z] = q8::choose_qparams(x, -128, 127);
  EXPECT_FALSE(s.requires_grad());
  const auto d = q8::dequantize(q, s, z, std::nullopt);
  EXPECT_FALSE(d.requires_grad());
}

// ===========================================================================
// dequantize.
// ===========================================================================

// (float)(q - z) * s in float32, then converted to dtype.
at::Tensor ref_dequantize(const at::Tensor& q, const at::Tensor& scale, const at::Tensor& zero_point,
                          std::optional<int64_t> axis, at::ScalarType dtype) {
  int64_t zmin = -32768, zmax = 65535;
  if (q.scalar_type() == at::kChar) {
    zmin = -128;
    zmax = 127;
  } else if (q.scalar_type() == at::kByte) {
    zmin = 0;
    zmax = 255;
  }
  const auto p = ref_params(scale, zero_point, zmin, zmax);
  const auto qs = as_int64s(q);
  const auto ch = channel_index(q.sizes(), axis);
  std::vector<float> out(qs.size());
  for (size_t i = 0; i < qs.size(); ++i) {
    const int64_t c = ch[i];
    const float d = static_cast<float>(qs[i] - static_cast<int64_t>(p.zero_point[c]));
    out[i] = d * p.scale[c];
  }
  return from_floats(out, q.sizes(), dtype);
}

at::Tensor random_codes(at::IntArrayRef sizes, at::ScalarType qdtype) {
  switch (qdtype) {
    case at::kChar:
      return torch::randint(-128, 128, sizes, torch::TensorOptions().dtype(torch::kChar));
    case at::kByte:
      return torch::randint(0, 256, sizes, torch::TensorOptions().dtype(torch::kByte));
    default: {
      // Mostly 16-bit codes, plus the int32 extremes (q - z no longer fits in float32 exactly).
      auto q = torch::randint(-40000, 70000, sizes, torch::TensorOptions().dtype(torch::kInt));
      auto flat = q.view({-1});
      if (flat.numel() > 3) {
        flat[0] = std::numeric_limits<int32_t>::max();
        flat[1] = std::numeric_limits<int32_t>::min();
        flat[2] = 16777217;  // 2^24 + 1
      }
      return q;
    }
  }
}

TEST(Dequantize, MatchesReference) {
  torch::manual_seed(107);
  for (auto qdt : {at::kChar, at::kByte, at::kInt}) {
    for (auto out_dt : float_dtypes()) {
      for (auto zdt : {at::kInt, at::kLong, at::kFloat}) {
        const auto q = random_codes({19, 37}, qdt);
        const int64_t zp = qdt == at::kChar ? -7 : (qdt == at::kByte ? 131 : -30000);
        const auto z = torch::tensor(zp, torch::kLong).to(zdt);
        for (float scale : {0.25f, 0.0173f, 3.1f}) {
          const auto what = std::string(dtype_name(qdt)) + " -> " + dtype_name(out_dt) + " zp dtype " +
              dtype_name(zdt) + " scale " + std::to_string(scale);
          const auto out = q8::dequantize(q, f32_scalar(scale), z, std::nullopt, out_dt);
          EXPECT_EQ(out.scalar_type(), out_dt) << what;
          EXPECT_TRUE(same_bits(out, ref_dequantize(q, f32_scalar(scale), z, std::nullopt, out_dt))) << what;
        }
      }
    }
  }
  // The default output dtype is float32.
  const auto q = torch::tensor({-128, 0, 5, 127}, torch::kChar);
  const auto out = q8::dequantize(q, f32_scalar(0.5f), i32_scalar(1), std::nullopt);
  EXPECT_TRUE(same_bits(out, f32({-64.5f, -0.5f, 2.f, 63.f})));
  // A float zero point rounds half to even (1.5 -> 2).
  EXPECT_TRUE(same_bits(q8::dequantize(q, f32_scalar(0.5f), f32_scalar(1.5f), std::nullopt),
                        f32({-65.f, -1.f, 1.5f, 62.5f})));
}

TEST(Dequantize, PerChannelNonContiguousEmpty) {
  torch::manual_seed(108);
  for (const auto& c : axis_cases()) {
    const int64_t dim = static_cast<int64_t>(c.shape.size());
    const int64_t ch = c.shape[c.axis < 0 ? c.axis + dim : c.axis];
    for (auto qdt : {at::kChar, at::kByte, at::kInt}) {
      for (auto out_dt : float_dtypes()) {
        const auto q = random_codes(c.shape, qdt);
        const auto s = random_scales(ch, 0.01f, 0.5f);
        const int64_t lo = qdt == at::kChar ? -128 : (qdt == at::kByte ? 0 : -32768);
        const int64_t hi = qdt == at::kChar ? 127 : (qdt == at::kByte ? 255 : 65535);
        const auto z = random_zero_points(ch, lo, hi, at::kInt);
        const auto what = describe(c.shape, c.axis, out_dt, {lo, hi}) + " from " + dtype_name(qdt);
        const auto out = q8::dequantize(q, s, z, c.axis, out_dt);
        EXPECT_TRUE(same_bits(out, ref_dequantize(q, s, z, c.axis, out_dt))) << what;
      }
    }
  }
  const auto q = random_codes({20, 30}, at::kChar);
  const auto s = random_scales(20, 0.1f, 0.2f);
  const auto z = random_zero_points(20, -128, 127, at::kInt);
  EXPECT_TRUE(same_bits(q8::dequantize(q.t(), s, z, 1), ref_dequantize(q.t(), s, z, 1, at::kFloat)));
  EXPECT_TRUE(same_bits(q8::dequantize(q.t().slice(0, 0, 30, 3), s, z, -1),
                        ref_dequantize(q.t().slice(0, 0, 30, 3), s, z, -1, at::kFloat)));
  EXPECT_EQ(q8::dequantize(torch::empty({0, 3}, torch::kChar), torch::full({3}, 0.1f), torch::zeros({3}, torch::kInt),
                           1)
                .sizes(),
            (std::vector<int64_t>{0, 3}));
  EXPECT_TRUE(same_bits(q8::dequantize(torch::tensor(7, torch::kByte), f32_scalar(0.5f), i32_scalar(3), std::nullopt),
                        torch::tensor(2.f)));
}

// ===========================================================================
// dequantize(quantize(x)) == fake_quantize(x), bit for bit.
// ===========================================================================

TEST(QuantizeDequantize, RoundTripEqualsFakeQuantize) {
  torch::manual_seed(109);
  std::vector<float> specials = special_values(0.125f);
  specials.erase(std::remove_if(specials.begin(), specials.end(), [](float v) { return std::isnan(v); }),
                 specials.end());
  for (const auto& c : quant_cases()) {
    for (auto dtype : float_dtypes()) {
      for (auto zdt : {at::kInt, at::kFloat}) {
        const auto x = random_input({1003}, dtype, 4.f, specials);
        const auto s = f32_scalar(0.125f);
        const auto z = torch::tensor((c.range.qmin + 2 * c.range.qmax) / 3, torch::kLong).to(zdt);
        const auto q = q8::quantize(x, s, z, std::nullopt, c.range.qmin, c.range.qmax, c.dtype);
        const auto d = q8::dequantize(q, s, z, std::nullopt, dtype);
        const auto f = q8::fake_quantize_per_tensor(x, s, z, c.range.qmin, c.range.qmax);
        EXPECT_TRUE(same_bits(d, f)) << describe(x.sizes(), std::nullopt, dtype, c.range) << " via "
                                     << dtype_name(c.dtype);
      }
    }
  }
  // Per channel, every axis.
  for (const auto& c : axis_cases()) {
    const int64_t dim = static_cast<int64_t>(c.shape.size());
    const int64_t ch = c.shape[c.axis < 0 ? c.axis + dim : c.axis];
    for (auto dtype : float_dtypes()) {
      const auto x = random_input(c.shape, dtype, 2.f, {kInf, -kInf, 1e30f});
      const auto s = random_scales(ch, 0.01f, 0.1f);
      const auto z = random_zero_points(ch, 0, 255, at::kInt);
      const auto q = q8::quantize(x, s, z, c.axis, 0, 255, at::kByte);
      EXPECT_TRUE(same_bits(q8::dequantize(q, s, z, c.axis, dtype),
                            q8::fake_quantize_per_channel(x, s, z, c.axis, 0, 255)))
          << describe(c.shape, c.axis, dtype, {0, 255});
    }
  }
  // With qparams from choose_qparams.
  for (bool sym : {false, true}) {
    const auto x = torch::randn({7, 300}) * 3.f;
    const auto [s, z] = q8::choose_qparams(x, -128, 127, sym, 0);
    const auto q = q8::quantize(x, s, z, 0, -128, 127, at::kChar);
    EXPECT_TRUE(same_bits(q8::dequantize(q, s, z, 0), q8::fake_quantize_per_channel(x, s, z, 0, -128, 127)));
    // Calibrated on x, so the error is at most half a step (no clamping).
    const auto err = (q8::dequantize(q, s, z, 0) - x).abs().amax(1);
    EXPECT_TRUE((err <= s * 0.501f).all().item<bool>()) << err << s;
  }
}

// ===========================================================================
// Every CPU kernel family gives bit-identical results.
// ===========================================================================

TEST(QuantizeIsa, AllOpsAreBitIdenticalPerTensor) {
  torch::manual_seed(110);
  for (int64_t n : {1, 7, 15, 16, 17, 33, 1000, 100003}) {
    for (auto dtype : float_dtypes()) {
      const auto x = random_input({n}, dtype, 5.f, special_values(0.0625f));
      const auto what = "n=" + std::to_string(n) + " " + dtype_name(dtype);
      expect_same_on_every_isa(
          [&] {
            std::vector<at::Tensor> outs;
            for (bool sym : {false, true}) {
              auto [s, z] = q8::choose_qparams(x, -128, 127, sym);
              const auto ref = ref_choose_qparams(x, -128, 127, sym, std::nullopt);
              EXPECT_EQ(s.item<float>(), ref.scale[0]) << what << " on " << q8::cpu_isa();
              outs.push_back(s);
              outs.push_back(z);
            }
            const auto s = f32_scalar(0.0625f);
            for (const auto& c : quant_cases()) {
              const auto z = i32_scalar(static_cast<int32_t>((c.range.qmin + c.range.qmax) / 2));
              auto q = q8::quantize(x, s, z, std::nullopt, c.range.qmin, c.range.qmax, c.dtype);
              outs.push_back(q);
              for (auto out_dt : float_dtypes()) {
                outs.push_back(q8::dequantize(q, s, z, std::nullopt, out_dt));
              }
            }
            return outs;
          },
          what);
    }
  }
}

TEST(QuantizeIsa, AllOpsAreBitIdenticalPerChannel) {
  torch::manual_seed(111);
  const std::vector<AxisCase> cases{{{7, 1}, 0},       {{3, 11}, 1},      {{5, 3, 67}, 0},  {{5, 3, 67}, 1},
                                    {{5, 3, 67}, -1},  {{33, 31}, 0},     {{13, 7, 1099}, 0}, {{13, 7, 1099}, 1},
                                    {{13, 7, 1099}, 2}, {{3, 33343}, 0}};
  for (const auto& c : cases) {
    const int64_t dim = static_cast<int64_t>(c.shape.size());
    const int64_t ch = c.shape[c.axis < 0 ? c.axis + dim : c.axis];
    for (auto dtype : float_dtypes()) {
      const auto x = random_input(c.shape, dtype, 3.f, special_values(0.125f));
      const auto s = random_scales(ch, 0.01f, 0.2f);
      const auto z = random_zero_points(ch, 0, 255, at::kInt);
      const auto what = describe(c.shape, c.axis, dtype, {0, 255});
      expect_same_on_every_isa(
          [&] {
            std::vector<at::Tensor> outs;
            for (bool sym : {false, true}) {
              auto [cs, cz] = q8::choose_qparams(x, 0, 255, sym, c.axis);
              const auto ref = ref_choose_qparams(x, 0, 255, sym, c.axis);
              EXPECT_TRUE(same_bits(cs, torch::tensor(ref.scale, torch::kFloat))) << what << " on " << q8::cpu_isa();
              outs.push_back(cs);
              outs.push_back(cz);
            }
            auto q = q8::quantize(x, s, z, c.axis, 0, 255, at::kByte);
            EXPECT_TRUE(same_bits(q, from_int64s(ref_quantize(x, s, z, c.axis, 0, 255), x.sizes(), at::kByte)))
                << what << " on " << q8::cpu_isa();
            outs.push_back(q);
            outs.push_back(q8::quantize(x, s, z, c.axis, -1000, 1000, at::kInt));
            for (auto out_dt : float_dtypes()) {
              auto d = q8::dequantize(q, s, z, c.axis, out_dt);
              EXPECT_TRUE(same_bits(d, ref_dequantize(q, s, z, c.axis, out_dt))) << what << " on " << q8::cpu_isa();
              outs.push_back(d);
            }
            return outs;
          },
          what);
    }
  }
}

// Results do not depend on the number of intra-op threads (the kernels split
// tensors into chunks; choose_qparams reduces per thread).
TEST(QuantizeThreads, ResultsDoNotDependOnThreadCount) {
  torch::manual_seed(112);
  const int saved = at::get_num_threads();
  const auto x = random_input({5, 40009}, at::kFloat, 3.f, special_values(0.125f));
  const auto s = random_scales(5, 0.01f, 0.2f);
  const auto z = random_zero_points(5, -128, 127, at::kInt);
  std::vector<std::vector<at::Tensor>> runs;
  for (int threads : {1, 2, 3}) {
    at::set_num_threads(threads);
    std::vector<at::Tensor> outs;
    auto [ts, tz] = q8::choose_qparams(x, -128, 127, false);
    auto [cs, cz] = q8::choose_qparams(x, -128, 127, true, 0);
    auto [ks, kz] = q8::choose_qparams(x.t(), 0, 255, false, 0);  // periodic layout
    outs = {ts, tz, cs, cz, ks, kz, q8::fake_quantize_per_channel(x, s, z, 0, -128, 127),
            q8::fake_quantize_per_tensor(x, f32_scalar(0.125f), i32_scalar(0), -128, 127),
            q8::quantize(x, s, z, 0, -128, 127, at::kChar)};
    runs.push_back(outs);
  }
  at::set_num_threads(saved);
  const auto ref = ref_choose_qparams(x, -128, 127, false, std::nullopt);
  EXPECT_EQ(runs[0][0].item<float>(), ref.scale[0]);
  for (size_t r = 1; r < runs.size(); ++r) {
    for (size_t k = 0; k < runs[r].size(); ++k) {
      EXPECT_TRUE(same_bits(runs[r][k], runs[0][k])) << "output " << k << " with " << (r + 1) << " threads";
    }
  }
}

// ===========================================================================
// Errors.
// ===========================================================================

TEST(ChooseQparamsErrors, BadArguments) {
  const auto x = torch::randn({2, 3});
  for (auto dt : {at::kInt, at::kChar, at::kBool, at::kDouble}) {
    Q8_EXPECT_ERROR(q8::choose_qparams(torch::zeros({3}, torch::TensorOptions().dtype(dt)), -128, 127), "input");
  }
  Q8_EXPECT_ERROR(q8::choose_qparams(x, 127, -128), "quant_min");
  Q8_EXPECT_ERROR(q8::choose_qparams(x, 5, 5), "quant_min");
  Q8_EXPECT_ERROR(q8::choose_qparams(x, -40000, 0), "16-bit");
  Q8_EXPECT_ERROR(q8::choose_qparams(x, 0, 65536), "quant_max");
  Q8_EXPECT_ERROR(q8::choose_qparams(x, -128, 127, false, 2), "axis");
  Q8_EXPECT_ERROR(q8::choose_qparams(x, -128, 127, true, -3), "axis");
  Q8_EXPECT_ERROR(q8::choose_qparams(torch::tensor(1.f), -128, 127, false, 0), "axis");
  Q8_EXPECT_ERROR(q8::choose_qparams(x, -128, 127, false, 5), "q8.choose_qparams");
}

TEST(QuantizeErrors, BadArguments) {
  const auto x = torch::randn({2, 3});
  const auto s = f32_scalar(0.1f);
  const auto z = i32_scalar(0);
  // The range must fit the output dtype.
  Q8_EXPECT_ERROR(q8::quantize(x, s, z, std::nullopt, 0, 255, at::kChar), "dtype");
  Q8_EXPECT_ERROR(q8::quantize(x, s, z, std::nullopt, -128, 127, at::kByte), "dtype");
  Q8_EXPECT_ERROR(q8::quantize(x, s, z, std::nullopt, -1, 255, at::kByte), "does not fit");
  Q8_EXPECT_ERROR(q8::quantize(x, s, z, std::nullopt, -129, 127, at::kChar), "quant_min");
  Q8_EXPECT_ERROR(q8::quantize(x, s, z, std::nullopt, -32768, 65535, at::kChar), "dtype");
  // Only int8, uint8 and int32 outputs.
  for (auto dt : {at::kFloat, at::kLong, at::kShort, at::kBool, at::kHalf}) {
    Q8_EXPECT_ERROR(q8::quantize(x, s, z, std::nullopt, 0, 1, dt), "dtype");
  }
  // The same argument checks as fake_quantize.
  Q8_EXPECT_ERROR(q8::quantize(x, s, z, std::nullopt, 0, 0, at::kInt), "quant_min");
  Q8_EXPECT_ERROR(q8::quantize(x, s, z, std::nullopt, -70000, 0, at::kInt), "16-bit");
  Q8_EXPECT_ERROR(q8::quantize(x, f32_scalar(0.f), z, std::nullopt, -128, 127, at::kChar), "scale");
  Q8_EXPECT_ERROR(q8::quantize(x, f32_scalar(kNaN), z, std::nullopt, -128, 127, at::kChar), "scale");
  Q8_EXPECT_ERROR(q8::quantize(x, f32_scalar(kInf), z, std::nullopt, -128, 127, at::kChar), "scale");
  Q8_EXPECT_ERROR(q8::quantize(x, f32_scalar(-2.f), z, std::nullopt, -128, 127, at::kChar), "scale");
  Q8_EXPECT_ERROR(q8::quantize(x, torch::tensor(0.1, torch::kDouble), z, std::nullopt, -128, 127, at::kChar), "scale");
  Q8_EXPECT_ERROR(q8::quantize(x, s, i32_scalar(300), std::nullopt, 0, 255, at::kByte), "zero_point");
  Q8_EXPECT_ERROR(q8::quantize(x, s, f32_scalar(kNaN), std::nullopt, 0, 255, at::kByte), "zero_point");
  Q8_EXPECT_ERROR(q8::quantize(x, torch::full({3}, 0.1f), torch::zeros({3}, torch::kInt), 2, -128, 127, at::kChar),
                  "axis");
  Q8_EXPECT_ERROR(q8::quantize(x, torch::full({2}, 0.1f), torch::zeros({3}, torch::kInt), 1, -128, 127, at::kChar),
                  "scale");
  Q8_EXPECT_ERROR(q8::quantize(x, torch::full({3}, 0.1f), torch::zeros({2}, torch::kInt), 1, -128, 127, at::kChar),
                  "zero_point");
  Q8_EXPECT_ERROR(q8::quantize(x, torch::full({2}, 0.1f), z, std::nullopt, -128, 127, at::kChar), "scale");
  for (auto dt : {at::kInt, at::kBool, at::kDouble}) {
    Q8_EXPECT_ERROR(q8::quantize(torch::zeros({3}, torch::TensorOptions().dtype(dt)), s, z, std::nullopt, -128, 127,
                                 at::kChar),
                    "input");
  }
  Q8_EXPECT_ERROR(q8::quantize(x, f32_scalar(-1.f), z, std::nullopt, -128, 127, at::kChar), "q8.quantize");
}

TEST(DequantizeErrors, BadArguments) {
  const auto q = torch::zeros({2, 3}, torch::kChar);
  const auto s = f32_scalar(0.1f);
  const auto z = i32_scalar(0);
  for (auto dt : {at::kFloat, at::kLong, at::kShort, at::kBool, at::kHalf}) {
    Q8_EXPECT_ERROR(q8::dequantize(torch::zeros({3}, torch::TensorOptions().dtype(dt)), s, z, std::nullopt), "input");
  }
  for (auto dt : {at::kDouble, at::kInt, at::kChar}) {
    Q8_EXPECT_ERROR(q8::dequantize(q, s, z, std::nullopt, dt), "dtype");
  }
  // Zero points must lie in the input dtype's range.
  Q8_EXPECT_ERROR(q8::dequantize(q, s, i32_scalar(128), std::nullopt), "zero_point");
  Q8_EXPECT_ERROR(q8::dequantize(q.to(at::kByte), s, i32_scalar(-1), std::nullopt), "zero_point");
  Q8_EXPECT_ERROR(q8::dequantize(q.to(at::kInt), s, i32_scalar(70000), std::nullopt), "zero_point");
  Q8_EXPECT_ERROR(q8::dequantize(q, s, f32_scalar(kInf), std::nullopt), "zero_point");
  for (float bad : {0.f, -1.f, kNaN, kInf}) {
    Q8_EXPECT_ERROR(q8::dequantize(q, f32_scalar(bad), z, std::nullopt), "scale");
  }
  Q8_EXPECT_ERROR(q8::dequantize(q, torch::tensor(0.1, torch::kDouble), z, std::nullopt), "scale");
  Q8_EXPECT_ERROR(q8::dequantize(q, torch::full({3}, 0.1f), torch::zeros({3}, torch::kInt), 2), "axis");
  Q8_EXPECT_ERROR(q8::dequantize(q, torch::full({3}, 0.1f), torch::zeros({3}, torch::kInt), -3), "axis");
  Q8_EXPECT_ERROR(q8::dequantize(q, torch::full({2}, 0.1f), torch::zeros({3}, torch::kInt), 1), "scale");
  Q8_EXPECT_ERROR(q8::dequantize(q, torch::full({3}, 0.1f), torch::zeros({2}, torch::kInt), 1), "zero_point");
  Q8_EXPECT_ERROR(q8::dequantize(q, f32_scalar(-1.f), z, std::nullopt), "q8.dequantize");
}

}  // namespace
