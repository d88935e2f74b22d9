// Tests of q8::fake_quantize_per_tensor / q8::fake_quantize_per_channel through the
// public C++ API: forward semantics against a scalar reference, every CPU kernel
// family, the backward pass (straight-through and LSQ), and argument errors.
#include <cstdlib>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <q8/q8.h>

#include "q8_test_utils.h"

namespace {

using namespace q8_test;

at::Tensor fq(const at::Tensor& x, const at::Tensor& s, const at::Tensor& z, std::optional<int64_t> axis,
              int64_t qmin, int64_t qmax) {
  return axis.has_value() ? q8::fake_quantize_per_channel(x, s, z, *axis, qmin, qmax)
                          : q8::fake_quantize_per_tensor(x, s, z, qmin, qmax);
}

// Fake-quantizes `x` and checks the result against the reference, bit for bit.
void check_forward(const at::Tensor& x, const at::Tensor& s, const at::Tensor& z, std::optional<int64_t> axis,
                   int64_t qmin, int64_t qmax, const std::string& what) {
  const auto x_before = x.clone();
  const auto out = fq(x, s, z, axis, qmin, qmax);
  EXPECT_EQ(out.scalar_type(), x.scalar_type()) << what;
  EXPECT_EQ(out.sizes(), x.sizes()) << what;
  EXPECT_FALSE(out.requires_grad()) << what;
  EXPECT_TRUE(same_bits(out, ref_fake_quantize(x, s, z, axis, qmin, qmax))) << what;
  EXPECT_TRUE(same_bits(x, x_before)) << what << ": the input was modified";
}

at::Tensor zero_point_of(int64_t value, at::ScalarType dtype) {
  return torch::tensor(value, torch::TensorOptions().dtype(torch::kLong)).to(dtype);
}

// ===========================================================================
// Forward, per tensor.
// ===========================================================================

TEST(FakeQuantizePerTensor, RandomInputsMatchReference) {
  torch::manual_seed(1);
  for (const auto& r : all_ranges()) {
    for (auto dtype : float_dtypes()) {
      for (auto zdt : {at::kInt, at::kLong, at::kFloat}) {
        for (float scale : {0.25f, 0.0173f, 1.7f}) {
          const int64_t zp = (r.qmin + r.qmax) / 2 + (r.qmax - r.qmin > 4 ? 3 : 0);
          const auto x = random_input({37, 29}, dtype, 40.f * scale * (r.qmax - r.qmin) / 255.f + scale);
          const auto what = describe(x.sizes(), std::nullopt, dtype, r) + " scale " + std::to_string(scale) +
              " zp " + std::to_string(zp) + " zp dtype " + dtype_name(zdt);
          check_forward(x, f32_scalar(scale), zero_point_of(zp, zdt), std::nullopt, r.qmin, r.qmax, what);
        }
      }
    }
  }
}

TEST(FakeQuantizePerTensor, SpecialValuesMatchReference) {
  for (const auto& r : all_ranges()) {
    for (auto dtype : float_dtypes()) {
      for (float scale : {0.25f, 0.1f, 3.0f, 1e-30f}) {
        for (int64_t zp : {r.qmin, r.qmax, (r.qmin + r.qmax + 1) / 2}) {
          const auto v = special_values(scale);
          const auto x = from_floats(v, {static_cast<int64_t>(v.size())}, dtype);
          check_forward(x, f32_scalar(scale), i32_scalar(static_cast<int32_t>(zp)), std::nullopt, r.qmin, r.qmax,
                        describe(x.sizes(), std::nullopt, dtype, r) + " scale " + std::to_string(scale) + " zp " +
                            std::to_string(zp));
        }
      }
    }
  }
}

// Hand-computed values, independent of the reference helpers.
TEST(FakeQuantizePerTensor, HandComputedValues) {
  const float s = 0.25f;
  // x / s = k + 0.5 ties round half to even; +-Inf clamp; NaN stays NaN.
  const std::vector<float> x{0.125f, 0.375f, -0.125f, -0.375f, 0.625f, 31.875f, 32.125f, -32.125f, -32.375f,
                             1e30f,  -1e30f, FLT_MAX, -FLT_MAX, kInf,  -kInf,   kNaN,    0.f,      0.1f};
  const std::vector<float> want{0.f,   0.5f,   0.f,    -0.5f, 0.5f,  31.75f, 31.75f, -32.f, -32.f,
                                31.75f, -32.f, 31.75f, -32.f, 31.75f, -32.f, kNaN, 0.f,  0.f};
  const auto out = q8::fake_quantize_per_tensor(f32(x), f32_scalar(s), i32_scalar(0), -128, 127);
  const auto got = as_floats(out);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(want[i])) {
      EXPECT_TRUE(std::isnan(got[i])) << "x = " << x[i];
    } else {
      EXPECT_EQ(got[i], want[i]) << "x = " << x[i];
    }
  }
  // Unsigned range with a zero point: codes 0..255 map to (q - 10) * 0.5.
  const auto out2 = q8::fake_quantize_per_tensor(f32({-100.f, -5.f, -5.25f, -4.75f, 0.f, 122.5f, 200.f, kInf, -kInf}),
                                                  f32_scalar(0.5f), torch::tensor(10, torch::kLong), 0, 255);
  const std::vector<float> want2{-5.f, -5.f, -5.f, -5.f, 0.f, 122.5f, 122.5f, 122.5f, -5.f};
  EXPECT_TRUE(same_values(out2, want2));
  // bfloat16 / float16 inputs give the float32 result rounded to the input dtype.
  for (auto dt : {at::kHalf, at::kBFloat16}) {
    const auto o = q8::fake_quantize_per_tensor(f32({0.375f, -1e4f, kNaN}).to(dt), f32_scalar(s), i32_scalar(0),
                                                -128, 127);
    EXPECT_EQ(o.scalar_type(), dt);
    const auto g = as_floats(o);
    EXPECT_EQ(g[0], 0.5f);
    EXPECT_EQ(g[1], -32.f);
    EXPECT_TRUE(std::isnan(g[2]));
  }
}

TEST(FakeQuantizePerTensor, FloatZeroPointIsRoundedHalfToEvenAndClamped) {
  torch::manual_seed(2);
  const auto x = random_input({513}, at::kFloat, 20.f, special_values(0.25f));
  const auto s = f32_scalar(0.25f);
  struct Case {
    float zf;
    int32_t zi;
    int64_t qmin, qmax;
  };
  for (const Case& c : {Case{2.5f, 2, -128, 127}, Case{3.5f, 4, -128, 127}, Case{-0.5f, 0, -128, 127},
                        Case{-1.5f, -2, -128, 127}, Case{10.49f, 10, 0, 255}, Case{1000.f, 255, 0, 255},
                        Case{-1000.7f, 0, 0, 255}, Case{7.5f, 7, -8, 7}, Case{-8.6f, -8, -8, 7},
                        Case{0.5f, 0, 0, 1}, Case{1.5f, 1, 0, 1}}) {
    const auto out_f = q8::fake_quantize_per_tensor(x, s, f32_scalar(c.zf), c.qmin, c.qmax);
    const auto out_i = q8::fake_quantize_per_tensor(x, s, i32_scalar(c.zi), c.qmin, c.qmax);
    EXPECT_TRUE(same_bits(out_f, out_i)) << "float zero point " << c.zf << " should act as " << c.zi;
    EXPECT_TRUE(same_bits(out_f, ref_fake_quantize(x, s, f32_scalar(c.zf), std::nullopt, c.qmin, c.qmax)));
  }
}

TEST(FakeQuantizePerTensor, ScaleAndZeroPointShapes) {
  torch::manual_seed(3);
  const auto x = random_input({4, 5}, at::kFloat, 3.f);
  const auto want = ref_fake_quantize(x, f32_scalar(0.1f), i32_scalar(3), std::nullopt, -128, 127);
  // Any one-element tensor works for scale and zero_point.
  for (const auto& s : {f32_scalar(0.1f), f32({0.1f}), f32({0.1f}).reshape({1, 1})}) {
    for (const auto& z : {i32_scalar(3), torch::tensor({3}, torch::kInt), torch::tensor({3}, torch::kLong).reshape({1, 1})}) {
      EXPECT_TRUE(same_bits(q8::fake_quantize_per_tensor(x, s, z, -128, 127), want));
    }
  }
}

TEST(FakeQuantizePerTensor, EmptyAndZeroDimInputs) {
  for (auto dtype : float_dtypes()) {
    for (const auto& shape : std::vector<std::vector<int64_t>>{{0}, {3, 0}, {0, 4, 5}, {2, 0, 1}}) {
      const auto x = at::empty(shape, at::TensorOptions().dtype(dtype));
      const auto out = q8::fake_quantize_per_tensor(x, f32_scalar(0.5f), i32_scalar(1), -128, 127);
      EXPECT_EQ(out.sizes(), x.sizes());
      EXPECT_EQ(out.scalar_type(), dtype);
      EXPECT_EQ(out.numel(), 0);
    }
    // 0-dim input, 0-dim or one-element parameters.
    for (float v : {0.3f, -7.125f, 1e30f, kNaN, -kInf}) {
      const auto x = torch::tensor(v, torch::kFloat).to(dtype);
      ASSERT_EQ(x.dim(), 0);
      for (const auto& s : {f32_scalar(0.25f), f32({0.25f})}) {
        const auto out = q8::fake_quantize_per_tensor(x, s, i32_scalar(-3), -8, 7);
        EXPECT_EQ(out.dim(), 0);
        EXPECT_TRUE(same_bits(out, ref_fake_quantize(x, s, i32_scalar(-3), std::nullopt, -8, 7))) << v;
      }
    }
  }
}

TEST(FakeQuantizePerTensor, NonContiguousInputs) {
  torch::manual_seed(4);
  for (auto dtype : float_dtypes()) {
    const auto base = random_input({24, 70}, dtype, 4.f, special_values(0.05f));
    std::vector<std::pair<std::string, at::Tensor>> views{
        {"transpose", base.t()},
        {"slice step 3", base.slice(1, 1, 70, 3)},
        {"slice rows step 2 + transpose", base.slice(0, 0, 24, 2).t()},
        {"permute 3-D", base.reshape({4, 6, 70}).permute({2, 0, 1})},
        {"expand", base.slice(0, 0, 1).expand({5, 70})},
        {"select column", base.select(1, 5)},
    };
    for (const auto& [name, v] : views) {
      ASSERT_FALSE(v.is_contiguous()) << name;
      check_forward(v, f32_scalar(0.05f), i32_scalar(-2), std::nullopt, -128, 127,
                    name + " " + dtype_name(dtype));
      // The result is the same as for a contiguous copy.
      EXPECT_TRUE(same_bits(q8::fake_quantize_per_tensor(v, f32_scalar(0.05f), i32_scalar(-2), -128, 127),
                            q8::fake_quantize_per_tensor(v.contiguous(), f32_scalar(0.05f), i32_scalar(-2), -128, 127)))
          << name;
    }
  }
}

TEST(FakeQuantizePerTensor, WidestRanges) {
  torch::manual_seed(5);
  const auto x = random_input({1001}, at::kFloat, 30000.f, special_values(1.f));
  check_forward(x, f32_scalar(1.f), i32_scalar(0), std::nullopt, -32768, 32767, "int16 range");
  check_forward(x, f32_scalar(1.f), i32_scalar(100), std::nullopt, 0, 65535, "uint16 range");
  check_forward(x, f32_scalar(0.5f), i32_scalar(-32768), std::nullopt, -32768, 65535, "widest range");
}

// ===========================================================================
// Forward, per channel.
// ===========================================================================

TEST(FakeQuantizePerChannel, EveryAxisMatchesReference) {
  torch::manual_seed(6);
  for (const auto& c : axis_cases()) {
    const int64_t dim = static_cast<int64_t>(c.shape.size());
    const int64_t channels = c.shape[c.axis < 0 ? c.axis + dim : c.axis];
    for (auto dtype : float_dtypes()) {
      for (const auto& r : {QRange{-128, 127}, QRange{0, 255}, QRange{-8, 7}}) {
        for (auto zdt : {at::kInt, at::kLong, at::kFloat}) {
          const auto s = random_scales(channels, 0.01f, 0.3f);
          const auto z = random_zero_points(channels, r.qmin, r.qmax, zdt);
          const auto x = random_input(c.shape, dtype, 4.f, special_values(0.125f));
          check_forward(x, s, z, c.axis, r.qmin, r.qmax,
                        describe(c.shape, c.axis, dtype, r) + " zp dtype " + dtype_name(zdt));
        }
      }
    }
  }
}

TEST(FakeQuantizePerChannel, SpecialValuesAndFloatZeroPoints) {
  // Power-of-two scales (exact ties), float zero points that round half to even or
  // clamp, and special values in every channel.
  const auto v = special_values(0.25f);
  const int64_t n = static_cast<int64_t>(v.size());
  std::vector<float> data;
  for (int c = 0; c < 4; ++c) data.insert(data.end(), v.begin(), v.end());
  for (auto dtype : float_dtypes()) {
    const auto x = from_floats(data, {4, n}, dtype);
    const auto s = f32({0.25f, 0.5f, 0.125f, 0.1f});
    const auto zf = f32({2.5f, -3.5f, 500.f, -0.5f});
    check_forward(x, s, zf, 0, -128, 127, std::string("axis 0 ") + dtype_name(dtype));
    // Float zero points act as their rounded, clamped integer values.
    EXPECT_TRUE(same_bits(q8::fake_quantize_per_channel(x, s, zf, 0, -128, 127),
                          q8::fake_quantize_per_channel(x, s, torch::tensor({2, -4, 127, 0}, torch::kInt), 0, -128, 127)));
    // Same data along the last axis (inner size 1).
    const auto xt = x.t().contiguous();
    check_forward(xt, s, zf, 1, -128, 127, std::string("axis 1 ") + dtype_name(dtype));
    check_forward(xt, s, zf, -1, 0, 15, std::string("axis -1 [0, 15] ") + dtype_name(dtype));
  }
}

TEST(FakeQuantizePerChannel, MatchesPerTensorWhenChannelsAgree) {
  torch::manual_seed(7);
  for (const auto& c : axis_cases()) {
    const int64_t dim = static_cast<int64_t>(c.shape.size());
    const int64_t channels = c.shape[c.axis < 0 ? c.axis + dim : c.axis];
    const auto x = random_input(c.shape, at::kFloat, 2.f);
    const auto pc = q8::fake_quantize_per_channel(x, torch::full({channels}, 0.03f), torch::full({channels}, 5, torch::kInt),
                                                  c.axis, -128, 127);
    const auto pt = q8::fake_quantize_per_tensor(x, f32_scalar(0.03f), i32_scalar(5), -128, 127);
    EXPECT_TRUE(same_bits(pc, pt)) << describe(c.shape, c.axis, at::kFloat, {-128, 127});
  }
}

TEST(FakeQuantizePerChannel, NonContiguousInputAndParams) {
  torch::manual_seed(8);
  for (auto dtype : float_dtypes()) {
    const auto base = random_input({6, 40, 90}, dtype, 3.f, special_values(0.125f));
    const auto s_all = random_scales(200, 0.02f, 0.2f);
    const auto z_all = random_zero_points(200, -128, 127, at::kInt);
    // Views: transposed, strided slices, permuted.
    std::vector<std::pair<std::string, at::Tensor>> views{
        {"transpose(0,2)", base.transpose(0, 2)},  // [90, 40, 6]
        {"slice step 2 on dim 1", base.slice(1, 0, 40, 2)},
        {"permute(1,2,0)", base.permute({1, 2, 0})},
        {"slice step 5 on last dim", base.slice(2, 1, 90, 5)},
    };
    for (const auto& [name, v] : views) {
      ASSERT_FALSE(v.is_contiguous()) << name;
      for (int64_t axis = 0; axis < v.dim(); ++axis) {
        const int64_t ch = v.size(axis);
        // Strided parameter tensors as well.
        const auto s = s_all.slice(0, 0, 2 * ch, 2);
        const auto z = z_all.slice(0, 1, 2 * ch + 1, 2);
        ASSERT_FALSE(s.is_contiguous());
        check_forward(v, s, z, axis, -128, 127, name + " axis " + std::to_string(axis) + " " + dtype_name(dtype));
      }
    }
  }
}

TEST(FakeQuantizePerChannel, OneDimAndChannelsOfSizeOne) {
  torch::manual_seed(9);
  for (auto dtype : float_dtypes()) {
    for (int64_t n : {1, 7, 64, 129}) {
      const auto x = random_input({n}, dtype, 2.f);
      check_forward(x, random_scales(n, 0.01f, 0.1f), random_zero_points(n, 0, 255, at::kLong), 0, 0, 255,
                    "1-D n=" + std::to_string(n));
    }
    const auto x = random_input({1, 1, 1}, dtype, 2.f);
    for (int64_t a : {0, 1, 2, -1}) {
      check_forward(x, f32({0.05f}), torch::tensor({1}, torch::kInt), a, -8, 7, "[1,1,1] axis " + std::to_string(a));
    }
  }
}

TEST(FakeQuantizePerChannel, EmptyInputs) {
  // Zero elements, with zero channels (scale of length 0) or a zero-length
  // outer / inner extent.
  struct EmptyCase {
    std::vector<int64_t> shape;
    int64_t axis;
  };
  for (const auto& c : {EmptyCase{{0, 64}, 0}, EmptyCase{{0, 5}, 1}, EmptyCase{{2, 0, 3}, 2},
                        EmptyCase{{0, 3, 70}, 1}, EmptyCase{{0, 1, 5}, 1}, EmptyCase{{3, 0, 64}, 0}}) {
    const auto x = at::empty(c.shape);
    const int64_t ch = x.size(c.axis);
    const auto out = q8::fake_quantize_per_channel(x, torch::full({ch}, 0.5f), torch::zeros({ch}, torch::kInt),
                                                   c.axis, -128, 127);
    EXPECT_EQ(out.sizes(), x.sizes());
  }
}

// Empty inputs whose channel count times inner extent is 0 while the inner extent
// is below the vector threshold: zero channels ([0, 5] axis 0, [4, 0] axis 1) or
// zero inner extent ([3, 0] axis 0, [2, 3, 0] axis 1). Separate from EmptyInputs
// so that a crash here does not hide the other cases.
TEST(FakeQuantizePerChannel, EmptyInputWithZeroChannelsOrZeroInnerExtent) {
  for (const auto& [shape, axis] : std::vector<std::pair<std::vector<int64_t>, int64_t>>{
           {{3, 0}, 0}, {{2, 3, 0}, 1}, {{0, 5}, 0}, {{4, 0}, 1}}) {
    const auto x = at::empty(shape);
    const int64_t ch = x.size(axis);
    const auto out =
        q8::fake_quantize_per_channel(x, torch::full({ch}, 0.5f), torch::zeros({ch}, torch::kInt), axis, -128, 127);
    EXPECT_EQ(out.sizes(), x.sizes());
  }
}

// ===========================================================================
// Every CPU kernel family gives bit-identical results.
// ===========================================================================

TEST(FakeQuantizeIsa, FamiliesAreListedAndSelectable) {
  IsaGuard guard;
  const auto isas = supported_isas();
  ASSERT_FALSE(isas.empty());
  EXPECT_EQ(isas.back(), "default");
  for (const auto& name : isas) {
    q8::set_cpu_isa(name.c_str());
    EXPECT_EQ(std::string(q8::cpu_isa()), name);
  }
  // Families this CPU lacks are refused.
  const char* forced = std::getenv("Q8_CPU_ISA");
  if (forced == nullptr || *forced == '\0') {
    EXPECT_EQ(isas.front(), guard.saved());
  }
  for (const char* name : {"avx512_vnni", "avx512", "avx_vnni", "avx2"}) {
    if (std::find(isas.begin(), isas.end(), name) == isas.end()) {
      Q8_EXPECT_ERROR(q8::set_cpu_isa(name), "not supported");
    }
  }
  Q8_EXPECT_ERROR(q8::set_cpu_isa("sse9"), "ISA");
  // Upper case names are accepted.
  q8::set_cpu_isa("DEFAULT");
  EXPECT_EQ(std::string(q8::cpu_isa()), "default");
}

const std::vector<int64_t> kOddSizes{1, 7, 15, 16, 17, 33, 1000, 100003};

TEST(FakeQuantizeIsa, PerTensorForwardIsBitIdentical) {
  torch::manual_seed(10);
  for (int64_t n : kOddSizes) {
    for (auto dtype : float_dtypes()) {
      for (const auto& r : {QRange{-128, 127}, QRange{0, 255}, QRange{-8, 7}}) {
        const auto x = random_input({n}, dtype, 5.f, special_values(0.0625f));
        const auto s = f32_scalar(0.0625f);
        const auto z = i32_scalar(static_cast<int32_t>((r.qmin + r.qmax) / 2));
        const auto what = describe(x.sizes(), std::nullopt, dtype, r);
        expect_same_on_every_isa(
            [&] {
              auto out = q8::fake_quantize_per_tensor(x, s, z, r.qmin, r.qmax);
              EXPECT_TRUE(same_bits(out, ref_fake_quantize(x, s, z, std::nullopt, r.qmin, r.qmax)))
                  << what << " on " << q8::cpu_isa();
              return std::vector<at::Tensor>{out};
            },
            what);
      }
    }
  }
}

TEST(FakeQuantizeIsa, PerChannelForwardIsBitIdentical) {
  torch::manual_seed(11);
  const std::vector<AxisCase> cases{{{7, 1}, 0},        {{1, 7}, 1},       {{3, 11}, 0},      {{3, 11}, 1},
                                    {{5, 3, 67}, 0},    {{5, 3, 67}, 1},   {{5, 3, 67}, 2},   {{33, 31}, -1},
                                    {{13, 7, 1099}, 0}, {{13, 7, 1099}, 1}, {{13, 7, 1099}, -1}, {{3, 33343}, 0}};
  for (const auto& c : cases) {
    const int64_t dim = static_cast<int64_t>(c.shape.size());
    const int64_t ch = c.shape[c.axis < 0 ? c.axis + dim : c.axis];
    for (auto dtype : float_dtypes()) {
      const auto x = random_input(c.shape, dtype, 3.f, special_values(0.125f));
      const auto s = random_scales(ch, 0.01f, 0.2f);
      const auto z = random_zero_points(ch, -128, 127, at::kInt);
      const auto what = describe(c.shape, c.axis, dtype, {-128, 127});
      expect_same_on_every_isa(
          [&] {
            auto out = q8::fake_quantize_per_channel(x, s, z, c.axis, -128, 127);
            EXPECT_TRUE(same_bits(out, ref_fake_quantize(x, s, z, c.axis, -128, 127))) << what << " on "
                                                                                        << q8::cpu_isa();
            return std::vector<at::Tensor>{out};
          },
          what);
    }
  }
}

TEST(FakeQuantizeIsa, StraightThroughBackwardIsBitIdentical) {
  torch::manual_seed(12);
  for (int64_t n : kOddSizes) {
    for (auto dtype : float_dtypes()) {
      const auto x = random_input({n}, dtype, 5.f, special_values(0.0625f));
      const auto w = torch::randn({n}).to(dtype);
      const auto what = "n=" + std::to_string(n) + " " + dtype_name(dtype);
      expect_same_on_every_isa(
          [&] {
            auto xin = x.clone().requires_grad_(true);
            auto out = q8::fake_quantize_per_tensor(xin, f32_scalar(0.0625f), i32_scalar(3), -128, 127);
            (out * w).sum().backward();
            return std::vector<at::Tensor>{out.detach(), xin.grad()};
          },
          what);
    }
  }
}

TEST(FakeQuantizeIsa, LearnableBackwardIsBitIdentical) {
  torch::manual_seed(13);
  for (int64_t n : kOddSizes) {
    for (auto dtype : float_dtypes()) {
      const auto x = random_input({n}, dtype, 5.f, special_values(0.0625f));
      const auto w = torch::randn({n}).to(dtype);
      const auto what = "n=" + std::to_string(n) + " " + dtype_name(dtype);
      expect_same_on_every_isa(
          [&] {
            auto xin = x.clone().requires_grad_(true);
            auto s = f32_scalar(0.0625f).requires_grad_(true);
            auto z = f32_scalar(3.f).requires_grad_(true);
            auto out = q8::fake_quantize_per_tensor(xin, s, z, -128, 127);
            (out * w).sum().backward();
            return std::vector<at::Tensor>{out.detach(), xin.grad(), s.grad(), z.grad()};
          },
          what);
    }
  }
}

// ===========================================================================
// Backward.
// ===========================================================================

// grad * mask, as float values.
std::vector<float> ref_masked_grad(const at::Tensor& g, const std::vector<bool>& mask) {
  auto gf = as_floats(g);
  for (size_t i = 0; i < gf.size(); ++i) gf[i] = mask[i] ? gf[i] : 0.f;
  return gf;
}

TEST(FakeQuantizeBackward, InputGradIsStraightThroughMask) {
  torch::manual_seed(14);
  for (auto dtype : float_dtypes()) {
    for (const auto& r : all_ranges()) {
      for (std::optional<int64_t> axis : {std::optional<int64_t>(), std::optional<int64_t>(1),
                                          std::optional<int64_t>(-1), std::optional<int64_t>(0)}) {
        const std::vector<int64_t> shape{6, 9, 70};
        const int64_t ch = axis ? shape[*axis < 0 ? *axis + 3 : *axis] : 1;
        const auto x = random_input(shape, dtype, 3.f, special_values(0.05f));
        const auto s = axis ? random_scales(ch, 0.01f, 0.1f) : f32_scalar(0.05f);
        const auto z = axis ? random_zero_points(ch, r.qmin, r.qmax, at::kInt)
                            : i32_scalar(static_cast<int32_t>((r.qmin + r.qmax) / 2));
        const auto mask = ref_mask(x, s, z, axis, r.qmin, r.qmax);
        const auto what = describe(shape, axis, dtype, r);

        // loss = out.sum(): the gradient is the mask itself.
        auto xin = x.clone().requires_grad_(true);
        auto out = fq(xin, s, z, axis, r.qmin, r.qmax);
        EXPECT_TRUE(out.requires_grad());
        EXPECT_TRUE(same_bits(out.detach(), ref_fake_quantize(x, s, z, axis, r.qmin, r.qmax))) << what;
        out.sum().backward();
        ASSERT_TRUE(xin.grad().defined());
        EXPECT_EQ(xin.grad().scalar_type(), dtype);
        EXPECT_TRUE(same_values(xin.grad(), ref_masked_grad(torch::ones(shape).to(dtype), mask))) << what;

        // loss = (out * w).sum(): the gradient is w where in range, else 0.
        const auto w = torch::randn(shape).to(dtype);
        auto xin2 = x.clone().requires_grad_(true);
        (fq(xin2, s, z, axis, r.qmin, r.qmax) * w).sum().backward();
        EXPECT_TRUE(same_values(xin2.grad(), ref_masked_grad(w, mask))) << what;
      }
    }
  }
}

TEST(FakeQuantizeBackward, NonContiguousInputGrad) {
  torch::manual_seed(15);
  const auto base = random_input({20, 30}, at::kFloat, 4.f, special_values(0.1f));
  auto leaf = base.clone().requires_grad_(true);
  const auto v = leaf.t().slice(0, 0, 30, 2);  // [15, 20], v[i][j] = leaf[j][2 i]
  ASSERT_FALSE(v.is_contiguous());
  const auto s = random_scales(20, 0.02f, 0.05f);
  const auto z = torch::zeros({20}, torch::kInt);
  const auto w = torch::randn({15, 20});
  (q8::fake_quantize_per_channel(v, s, z, 1, -16, 15) * w).sum().backward();
  const auto mask = ref_mask(v.detach(), s, z, 1, -16, 15);  // over v's elements, row-major
  const auto wf = as_floats(w);
  std::vector<float> want(20 * 30, 0.f);  // leaf's gradient, row-major [20, 30]
  for (int64_t i = 0; i < 15; ++i) {
    for (int64_t j = 0; j < 20; ++j) {
      want[j * 30 + 2 * i] = mask[i * 20 + j] ? wf[i * 20 + j] : 0.f;
    }
  }
  ASSERT_TRUE(leaf.grad().defined());
  EXPECT_TRUE(same_values(leaf.grad(), want));
}

// LSQ gradients of scale and zero point, summed in double, per channel.
struct LsqRef {
  std::vector<double> dscale, dzero, dscale_abs, dzero_abs;
  std::vector<float> dinput;
};

LsqRef ref_lsq(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& scale, const at::Tensor& zero_point,
               std::optional<int64_t> axis, int64_t qmin, int64_t qmax) {
  const auto p = ref_params(scale, zero_point, qmin, qmax);
  const auto xs = as_floats(x);
  const auto gs = as_floats(grad);
  const auto ch = channel_index(x.sizes(), axis);
  const size_t channels = p.scale.size();
  LsqRef r;
  r.dscale.assign(channels, 0.0);
  r.dzero.assign(channels, 0.0);
  r.dscale_abs.assign(channels, 0.0);
  r.dzero_abs.assign(channels, 0.0);
  r.dinput.resize(xs.size());
  for (size_t i = 0; i < xs.size(); ++i) {
    const int64_t c = ch[i];
    const float s = p.scale[c];
    const float z = p.zero_point[c];
    const float inv = 1.0f / s;
    const float q = std::nearbyint(xs[i] * inv) + z;
    const double g = gs[i];
    double ds = 0.0, dz = 0.0;
    if (q < p.qmin) {
      ds = g * (static_cast<double>(p.qmin) - z);
      dz = -g * s;
    } else if (q > p.qmax) {
      ds = g * (static_cast<double>(p.qmax) - z);
      dz = -g * s;
    } else {
      const double qc = std::min(std::max(q, p.qmin), p.qmax);
      ds = g * ((qc - z) * static_cast<double>(s) - xs[i]) * static_cast<double>(inv);
    }
    r.dscale[c] += ds;
    r.dzero[c] += dz;
    r.dscale_abs[c] += std::fabs(ds);
    r.dzero_abs[c] += std::fabs(dz);
    r.dinput[i] = (q >= p.qmin && q <= p.qmax) ? gs[i] : 0.f;
  }
  return r;
}

void expect_close_to_sum(const at::Tensor& got, const std::vector<double>& want, const std::vector<double>& abs_sum,
                         const std::string& what) {
  ASSERT_TRUE(got.defined()) << what;
  EXPECT_EQ(got.scalar_type(), at::kFloat) << what;
  const auto g = as_floats(got);
  ASSERT_EQ(g.size(), want.size()) << what;
  for (size_t c = 0; c < g.size(); ++c) {
    // A float32 sum of float32 terms: 1e-4 of the summed magnitudes, plus a little.
    const double tol = 1e-4 * abs_sum[c] + 1e-4 * std::fabs(want[c]) + 1e-5;
    EXPECT_NEAR(g[c], want[c], tol) << what << " channel " << c;
  }
}

TEST(FakeQuantizeBackward, LearnableScaleAndZeroPointPerTensor) {
  torch::manual_seed(16);
  for (auto dtype : float_dtypes()) {
    for (const auto& r : all_ranges()) {
      for (bool weighted : {false, true}) {
        const std::vector<int64_t> shape{33, 65};
        const float scale = 4.f / static_cast<float>(r.qmax - r.qmin);
        const auto x = random_input(shape, dtype, 2.f, {kInf, -kInf, 1e30f, -1e30f});
        const auto w = weighted ? torch::randn(shape).to(dtype) : torch::ones(shape).to(dtype);
        const float zf = static_cast<float>(r.qmin + r.qmax) / 2.f + 0.3f;
        auto xin = x.clone().requires_grad_(true);
        auto s = f32_scalar(scale).requires_grad_(true);
        auto z = f32_scalar(zf).requires_grad_(true);
        auto out = q8::fake_quantize_per_tensor(xin, s, z, r.qmin, r.qmax);
        EXPECT_TRUE(same_bits(out.detach(), ref_fake_quantize(x, s.detach(), z.detach(), std::nullopt, r.qmin, r.qmax)));
        (weighted ? (out * w).sum() : out.sum()).backward();
        const auto ref = ref_lsq(x, w, s.detach(), z.detach(), std::nullopt, r.qmin, r.qmax);
        const auto what = describe(shape, std::nullopt, dtype, r) + (weighted ? " weighted" : " sum");
        EXPECT_EQ(s.grad().sizes(), s.sizes());
        EXPECT_EQ(z.grad().sizes(), z.sizes());
        expect_close_to_sum(s.grad(), ref.dscale, ref.dscale_abs, what + " grad scale");
        expect_close_to_sum(z.grad(), ref.dzero, ref.dzero_abs, what + " grad zero_point");
        EXPECT_TRUE(same_values(xin.grad(), ref.dinput)) << what << " grad input";
      }
    }
  }
}

TEST(FakeQuantizeBackward, LearnableScaleAndZeroPointPerChannel) {
  torch::manual_seed(17);
  for (const auto& c : axis_cases()) {
    const int64_t dim = static_cast<int64_t>(c.shape.size());
    const int64_t ch = c.shape[c.axis < 0 ? c.axis + dim : c.axis];
    for (auto dtype : {at::kFloat, at::kBFloat16}) {
      const auto x = random_input(c.shape, dtype, 1.5f, {kInf, -kInf});
      const auto w = torch::randn(c.shape).to(dtype);
      auto xin = x.clone().requires_grad_(true);
      auto s = random_scales(ch, 0.005f, 0.03f).requires_grad_(true);
      auto z = (torch::rand({ch}) * 40.f - 20.f).requires_grad_(true);
      auto out = q8::fake_quantize_per_channel(xin, s, z, c.axis, -64, 63);
      (out * w).sum().backward();
      const auto ref = ref_lsq(x, w, s.detach(), z.detach(), c.axis, -64, 63);
      const auto what = describe(c.shape, c.axis, dtype, {-64, 63});
      EXPECT_EQ(s.grad().sizes(), s.sizes());
      expect_close_to_sum(s.grad(), ref.dscale, ref.dscale_abs, what + " grad scale");
      expect_close_to_sum(z.grad(), ref.dzero, ref.dzero_abs, what + " grad zero_point");
      EXPECT_TRUE(same_values(xin.grad(), ref.dinput)) << what << " grad input";
    }
  }
}

TEST(FakeQuantizeBackward, ScaleOnlyWithIntegerZeroPoint) {
  torch::manual_seed(18);
  const auto x = random_input({257}, at::kFloat, 2.f);
  const auto w = torch::randn({257});
  for (auto zdt : {at::kInt, at::kLong}) {
    auto s = f32({0.02f}).requires_grad_(true);
    const auto z = zero_point_of(-5, zdt);
    (q8::fake_quantize_per_tensor(x, s, z, -128, 127) * w).sum().backward();
    const auto ref = ref_lsq(x, w, s.detach(), z, std::nullopt, -128, 127);
    expect_close_to_sum(s.grad(), ref.dscale, ref.dscale_abs, std::string("zp ") + dtype_name(zdt));
    EXPECT_FALSE(x.grad().defined());
  }
  // A float zero point that does not require grad gets none, while scale does.
  auto s = f32_scalar(0.02f).requires_grad_(true);
  auto z = f32_scalar(1.f);
  (q8::fake_quantize_per_tensor(x, s, z, -128, 127) * w).sum().backward();
  EXPECT_TRUE(s.grad().defined());
  EXPECT_FALSE(z.grad().defined());
  // Only the zero point requires grad.
  auto s2 = f32_scalar(0.02f);
  auto z2 = f32_scalar(1.f).requires_grad_(true);
  (q8::fake_quantize_per_tensor(x, s2, z2, -16, 15) * w).sum().backward();
  const auto ref2 = ref_lsq(x, w, s2, z2.detach(), std::nullopt, -16, 15);
  expect_close_to_sum(z2.grad(), ref2.dzero, ref2.dzero_abs, "zero point only");
  EXPECT_FALSE(s2.grad().defined());
}

TEST(FakeQuantizeBackward, NoGradModeAndDetachedInputs) {
  const auto x = torch::randn({10}).requires_grad_(true);
  {
    torch::NoGradGuard no_grad;
    const auto out = q8::fake_quantize_per_tensor(x, f32_scalar(0.1f), i32_scalar(0), -128, 127);
    EXPECT_FALSE(out.requires_grad());
    EXPECT_TRUE(same_bits(out, ref_fake_quantize(x.detach(), f32_scalar(0.1f), i32_scalar(0), std::nullopt, -128, 127)));
  }
  const auto out = q8::fake_quantize_per_tensor(x.detach(), f32_scalar(0.1f), i32_scalar(0), -128, 127);
  EXPECT_FALSE(out.requires_grad());
  // Backward twice through separate graphs accumulates.
  for (int k = 0; k < 2; ++k) {
    q8::fake_quantize_per_tensor(x, f32_scalar(0.1f), i32_scalar(0), -128, 127).sum().backward();
  }
  const auto mask = ref_mask(x.detach(), f32_scalar(0.1f), i32_scalar(0), std::nullopt, -128, 127);
  std::vector<float> want(mask.size());
  for (size_t i = 0; i < mask.size(); ++i) want[i] = mask[i] ? 2.f : 0.f;
  EXPECT_TRUE(same_values(x.grad(), want));
}

TEST(FakeQuantizeBackward, TrainingLoopLearnsScale) {
  // Learn the step of a 4-bit quantizer for randn * 2 by SGD on the mean squared
  // quantization error, starting from a step that is far too coarse.
  torch::manual_seed(19);
  const auto x = torch::randn({4096}) * 2.f;
  auto scale = f32({2.0f}).requires_grad_(true);
  const auto zp = torch::tensor({0.f});
  torch::optim::SGD opt({scale}, torch::optim::SGDOptions(0.5));
  std::vector<float> losses;
  for (int step = 0; step < 30; ++step) {
    opt.zero_grad();
    const auto out = q8::fake_quantize_per_tensor(x, scale, zp, -8, 7);
    const auto loss = (out - x).pow(2).mean();
    loss.backward();
    ASSERT_TRUE(scale.grad().defined());
    ASSERT_TRUE(std::isfinite(scale.grad().item<float>()));
    losses.push_back(loss.item<float>());
    opt.step();
    ASSERT_GT(scale.item<float>(), 0.f) << "step " << step;
  }
  const float final_loss = (q8::fake_quantize_per_tensor(x, scale, zp, -8, 7) - x).pow(2).mean().item<float>();
  EXPECT_LT(losses[5], losses[0]);
  EXPECT_LT(final_loss, 0.25f * losses.front()) << "scale " << scale.item<float>();
  EXPECT_LT(final_loss, 1.01f * losses[losses.size() / 2]);  // converged, not diverging
  // The learned step lies well inside (0.4, 1.0) (about 0.69 for this data).
  EXPECT_GT(scale.item<float>(), 0.4f);
  EXPECT_LT(scale.item<float>(), 1.0f);
}

TEST(FakeQuantizeBackward, TrainingLoopPerChannel) {
  torch::manual_seed(20);
  const auto x = torch::randn({8, 256}) * torch::linspace(0.5f, 4.f, 8).unsqueeze(1);
  auto scale = torch::full({8}, 1.5f).requires_grad_(true);
  auto zp = torch::zeros({8}).requires_grad_(true);
  torch::optim::SGD opt({scale, zp}, torch::optim::SGDOptions(0.02));
  float first = 0.f, last = 0.f;
  for (int step = 0; step < 40; ++step) {
    opt.zero_grad();
    const auto loss = (q8::fake_quantize_per_channel(x, scale, zp, 0, -8, 7) - x).pow(2).sum(1).mean();
    loss.backward();
    if (step == 0) first = loss.item<float>();
    last = loss.item<float>();
    opt.step();
    ASSERT_TRUE((scale > 0).all().item<bool>()) << "step " << step;
  }
  EXPECT_LT(last, 0.6f * first);
}

TEST(FakeQuantizeBackward, DoubleBackward) {
  torch::manual_seed(21);
  const auto x0 = random_input({5, 40}, at::kFloat, 3.f, {kInf, kNaN});
  const auto s = f32_scalar(0.05f);
  const auto z = i32_scalar(2);
  const auto mask = ref_mask(x0, s, z, std::nullopt, -32, 31);
  // Straight-through: d(loss)/dx = w * mask is linear in w, so differentiating
  // sum(v * dloss/dx) with respect to w gives v * mask.
  auto x = x0.clone().requires_grad_(true);
  auto w = torch::randn({5, 40}).requires_grad_(true);
  const auto v = torch::randn({5, 40});
  const auto loss = (q8::fake_quantize_per_tensor(x, s, z, -32, 31) * w).sum();
  const auto gx = torch::autograd::grad({loss}, {x}, {}, /*retain_graph=*/true, /*create_graph=*/true)[0];
  EXPECT_TRUE(same_values(gx.detach(), ref_masked_grad(w.detach(), mask)));
  (gx * v).sum().backward();
  ASSERT_TRUE(w.grad().defined());
  EXPECT_TRUE(same_values(w.grad(), ref_masked_grad(v, mask)));
  // Learnable scale: the second derivative is not implemented and says so.
  auto s2 = f32_scalar(0.05f).requires_grad_(true);
  auto x2 = x0.clone().requires_grad_(true);
  const auto loss2 = (q8::fake_quantize_per_tensor(x2, s2, z, -32, 31) * w.detach()).sum();
  const auto gs = torch::autograd::grad({loss2}, {s2}, {}, true, true)[0];
  ASSERT_TRUE(gs.requires_grad());
  Q8_EXPECT_ERROR(gs.backward({}, /*retain_graph=*/true), "not implemented");
}

// ===========================================================================
// Errors.
// ===========================================================================

TEST(FakeQuantizeErrors, BadScale) {
  const auto x = torch::randn({4, 3});
  for (float bad : {0.f, -0.f, -1.f, kNaN, kInf, -kInf}) {
    Q8_EXPECT_ERROR(q8::fake_quantize_per_tensor(x, f32_scalar(bad), i32_scalar(0), -128, 127), "scale");
    Q8_EXPECT_ERROR(q8::fake_quantize_per_channel(x, f32({0.1f, bad, 0.2f}), torch::zeros({3}, torch::kInt), 1,
                                                  -128, 127),
                    "scale");
    // Also through the autograd paths.
    Q8_EXPECT_ERROR(q8::fake_quantize_per_tensor(x.clone().requires_grad_(true), f32_scalar(bad), i32_scalar(0),
                                                 -128, 127),
                    "scale");
    Q8_EXPECT_ERROR(q8::fake_quantize_per_tensor(x, f32_scalar(bad).requires_grad_(true), i32_scalar(0), -128, 127),
                    "scale");
  }
  // float64 / integer / half scale.
  Q8_EXPECT_ERROR(q8::fake_quantize_per_tensor(x, torch::tensor(0.1, torch::kDouble), i32_scalar(0), -128, 127),
                  "scale");
  Q8_EXPECT_ERROR(q8::fake_quantize_per_tensor(x, torch::tensor(1, torch::kInt), i32_scalar(0), -128, 127), "scale");
  Q8_EXPECT_ERROR(q8::fake_quantize_per_tensor(x, f32_scalar(0.1f).to(torch::kHalf), i32_scalar(0), -128, 127),
                  "scale");
  Q8_EXPECT_ERROR(q8::fake_quantize_per_tensor(x, at::Tensor(), i32_scalar(0), -128, 127), "scale");
}

TEST(FakeQuantizeErrors, BadQuantRange) {
  const auto x = torch::randn({5});
  const auto s = f32_scalar(0.1f);
  const auto z = i32_scalar(0);
  for (const auto& r : {QRange{0, 0}, QRange{5, 4}, QRange{127, -128}}) {
    Q8_EXPECT_ERROR(q8::fake_quantize_per_tensor(x, s, z, r.qmin, r.qmax), "quant_min");
    Q8_EXPECT_ERROR(q8::fake_quantize_per_channel(x, f32({0.1f, 0.1f, 0.1f, 0.1f, 0.1f}),
                                                  torch::zeros({5}, torch::kInt), 0, r.qmin, r.qmax),
                    "quant_min");
  }
  for (const auto& r : {QRange{-32769, 0}, QRange{0, 65536}, QRange{-100000, 100000}, QRange{INT64_MIN, INT64_MAX}}) {
    Q8_EXPECT_ERROR(q8::fake_quantize_per_tensor(x, s, z, r.qmin, r.qmax), "quant_max");
    Q8_EXPECT_ERROR(q8::fake_quantize_per_tensor(x, s, z, r.qmin, r.qmax), "16-bit");
  }
}

TEST(FakeQuantizeErrors, BadInputDtype) {
  const auto s = f32_scalar(0.1f);
  const auto z = i32_scalar(0);
  for (auto dt : {at::kInt, at::kLong, at::kChar, at::kByte, at::kBool, at::kDouble, at::kShort}) {
    const auto x = torch::zeros({4}, torch::TensorOptions().dtype(dt));
    Q8_EXPECT_ERROR(q8::fake_quantize_per_tensor(x, s, z, -128, 127), "input");
    Q8_EXPECT_ERROR(q8::fake_quantize_per_channel(x, f32({0.1f, 0.1f, 0.1f, 0.1f}), torch::zeros({4}, torch::kInt),
                                                  0, -128, 127),
                    "input");
  }
  Q8_EXPECT_ERROR(q8::fake_quantize_per_tensor(at::Tensor(), s, z, -128, 127), "input");
}

TEST(FakeQuantizeErrors, BadAxis) {
  const auto x = torch::randn({2, 3, 4});
  for (int64_t axis : {3, 4, -4, -100, 100}) {
    Q8_EXPECT_ERROR(q8::fake_quantize_per_channel(x, f32({0.1f, 0.1f}), torch::zeros({2}, torch::kInt), axis, -128,
                                                  127),
                    "axis");
  }
  // Per channel needs a dimension.
  Q8_EXPECT_ERROR(q8::fake_quantize_per_channel(torch::tensor(1.f), f32({0.1f}), torch::zeros({1}, torch::kInt), 0,
                                                -128, 127),
                  "axis");
}

TEST(FakeQuantizeErrors, BadParameterShapes) {
  const auto x = torch::randn({2, 3, 4});
  const auto z3 = torch::zeros({3}, torch::kInt);
  const auto s3 = torch::full({3}, 0.1f);
  // Per channel: one element per channel along axis 1, 1-D.
  Q8_EXPECT_ERROR(q8::fake_quantize_per_channel(x, torch::full({4}, 0.1f), z3, 1, -128, 127), "scale");
  Q8_EXPECT_ERROR(q8::fake_quantize_per_channel(x, torch::full({2}, 0.1f), z3, 1, -128, 127), "scale");
  Q8_EXPECT_ERROR(q8::fake_quantize_per_channel(x, torch::full({3, 1}, 0.1f), z3, 1, -128, 127), "scale");
  Q8_EXPECT_ERROR(q8::fake_quantize_per_channel(x, f32_scalar(0.1f), z3, 1, -128, 127), "scale");
  Q8_EXPECT_ERROR(q8::fake_quantize_per_channel(x, s3, torch::zeros({4}, torch::kInt), 1, -128, 127), "zero_point");
  Q8_EXPECT_ERROR(q8::fake_quantize_per_channel(x, s3, torch::zeros({2}, torch::kInt), 1, -128, 127), "zero_point");
  Q8_EXPECT_ERROR(q8::fake_quantize_per_channel(x, s3, i32_scalar(0), 1, -128, 127), "zero_point");
  // The negative axis -1 has 4 channels.
  Q8_EXPECT_ERROR(q8::fake_quantize_per_channel(x, s3, z3, -1, -128, 127), "scale");
  // Per tensor: exactly one element.
  Q8_EXPECT_ERROR(q8::fake_quantize_per_tensor(x, f32({0.1f, 0.2f}), i32_scalar(0), -128, 127), "scale");
  Q8_EXPECT_ERROR(q8::fake_quantize_per_tensor(x, torch::empty({0}), i32_scalar(0), -128, 127), "scale");
  Q8_EXPECT_ERROR(q8::fake_quantize_per_tensor(x, f32_scalar(0.1f), torch::zeros({2}, torch::kInt), -128, 127),
                  "zero_point");
}

TEST(FakeQuantizeErrors, BadZeroPoint) {
  const auto x = torch::randn({2, 3});
  const auto s = f32_scalar(0.1f);
  // Integer zero points outside [quant_min, quant_max].
  Q8_EXPECT_ERROR(q8::fake_quantize_per_tensor(x, s, i32_scalar(128), -128, 127), "zero_point");
  Q8_EXPECT_ERROR(q8::fake_quantize_per_tensor(x, s, i32_scalar(-129), -128, 127), "zero_point");
  Q8_EXPECT_ERROR(q8::fake_quantize_per_tensor(x, s, i32_scalar(-1), 0, 255), "zero_point");
  Q8_EXPECT_ERROR(q8::fake_quantize_per_tensor(x, s, torch::tensor(16, torch::kLong), 0, 15), "zero_point");
  Q8_EXPECT_ERROR(q8::fake_quantize_per_channel(x, torch::full({3}, 0.1f), torch::tensor({0, 8, 0}, torch::kInt), 1,
                                                -8, 7),
                  "zero_point");
  // Non-finite float zero points.
  for (float bad : {kNaN, kInf, -kInf}) {
    Q8_EXPECT_ERROR(q8::fake_quantize_per_tensor(x, s, f32_scalar(bad), -128, 127), "zero_point");
  }
  // Unsupported dtypes.
  Q8_EXPECT_ERROR(q8::fake_quantize_per_tensor(x, s, torch::tensor(0.0, torch::kDouble), -128, 127), "zero_point");
  Q8_EXPECT_ERROR(q8::fake_quantize_per_tensor(x, s, torch::tensor(true), -128, 127), "zero_point");
  Q8_EXPECT_ERROR(q8::fake_quantize_per_tensor(x, s, torch::tensor(0, torch::kShort), -128, 127), "zero_point");
  Q8_EXPECT_ERROR(q8::fake_quantize_per_tensor(x, s, at::Tensor(), -128, 127), "zero_point");
}

TEST(FakeQuantizeErrors, MessagesNameTheOp) {
  const auto x = torch::randn({3});
  Q8_EXPECT_ERROR(q8::fake_quantize_per_tensor(x, f32_scalar(-1.f), i32_scalar(0), -128, 127),
                  "q8.fake_quantize_per_tensor");
  Q8_EXPECT_ERROR(q8::fake_quantize_per_channel(x, f32({1.f, 1.f}), torch::zeros({2}, torch::kInt), 0, -128, 127),
                  "q8.fake_quantize_per_channel");
}

}  // namespace
