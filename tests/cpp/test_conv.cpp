// GoogleTest cases of the int8 convolution ops (q8::conv2d, pack_conv_weight)
// through the public C++ API: static-mode conv2d against a scalar reference (exact
// integer accumulation, the float32 epilogue in the op's order) on every ISA
// family, the pack / unpack round trip, and bad input.
#include <algorithm>
#include <cmath>
#include <vector>

#include <gtest/gtest.h>

#include <q8/q8.h>

#include "q8_test_utils.h"

namespace {

using namespace q8_test;

struct Case {
  int64_t n, c, h, w, oc, kh, kw, sh, sw, ph, pw, dh, dw, groups;
  int64_t oh() const { return (h + 2 * ph - dh * (kh - 1) - 1) / sh + 1; }
  int64_t ow() const { return (w + 2 * pw - dw * (kw - 1) - 1) / sw + 1; }
};

// Static mode: xq = clamp(nearbyint(x * (1 / s)) + z, 0, 255); acc = sum (xq - z) * w
// (padding contributes 0); y = float(acc) * (s * sw[o]) + bias[o], then ReLU.
std::vector<float> ref_conv(const Case& k, const std::vector<float>& x, const std::vector<int64_t>& w,
                            const std::vector<float>& ws, const std::vector<float>& bias, float s, int32_t z,
                            int64_t oh, int64_t ow) {
  const int64_t cg = k.c / k.groups, ocg = k.oc / k.groups;
  std::vector<int64_t> xq(x.size());
  const float inv = 1.0f / s;
  for (size_t i = 0; i < x.size(); ++i) {
    float q = std::nearbyint(x[i] * inv) + static_cast<float>(z);
    q = std::fmin(std::fmax(q, 0.f), 255.f);
    xq[i] = static_cast<int64_t>(q);
  }
  std::vector<float> out(k.n * k.oc * oh * ow);
  for (int64_t n = 0; n < k.n; ++n) {
    for (int64_t o = 0; o < k.oc; ++o) {
      const int64_t g = o / ocg;
      for (int64_t y = 0; y < oh; ++y) {
        for (int64_t xx = 0; xx < ow; ++xx) {
          int64_t acc = 0;
          for (int64_t c = 0; c < cg; ++c) {
            for (int64_t i = 0; i < k.kh; ++i) {
              for (int64_t j = 0; j < k.kw; ++j) {
                const int64_t iy = y * k.sh - k.ph + i * k.dh, ix = xx * k.sw - k.pw + j * k.dw;
                if (iy < 0 || iy >= k.h || ix < 0 || ix >= k.w) {
                  continue;
                }
                const int64_t ci = g * cg + c;
                acc += (xq[((n * k.c + ci) * k.h + iy) * k.w + ix] - z) * w[((o * cg + c) * k.kh + i) * k.kw + j];
              }
            }
          }
          float v = static_cast<float>(acc) * (s * ws[o]);
          v = v + bias[o];
          v = v < 0.f ? 0.f : v;
          out[((n * k.oc + o) * oh + y) * ow + xx] = v;
        }
      }
    }
  }
  return out;
}

TEST(Conv2d, StaticMatchesScalarReferenceOnEveryIsa) {
  IsaGuard guard;
  const std::vector<Case> cases = {
      {2, 6, 7, 5, 10, 3, 3, 1, 1, 1, 1, 1, 1, 1},   // 3x3, C % 4 != 0
      {1, 8, 9, 9, 8, 3, 3, 2, 1, 1, 0, 1, 2, 2},    // grouped, strided, dilated
      {1, 5, 6, 6, 5, 3, 3, 1, 1, 1, 1, 1, 1, 5},    // depthwise
      {1, 16, 4, 5, 20, 1, 1, 1, 1, 0, 0, 1, 1, 1},  // 1x1
      {2, 3, 9, 11, 8, 3, 3, 2, 2, 1, 1, 1, 1, 1},   // the RGB stem: C = 3, stride 2
      {1, 1, 17, 19, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1},  // one channel; 323 pixels: a 256-pixel block and a tail
      // In-place tiles read Cg4 bytes per pixel: the last pixels of the buffer (C = 1, 2; groups of 3)
      {2, 2, 5, 7, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1},
      {1, 6, 5, 5, 4, 3, 3, 1, 1, 1, 1, 1, 1, 2},
      {3, 1, 4, 4, 2, 1, 1, 1, 1, 0, 0, 1, 1, 1},
      {2, 32, 9, 10, 40, 3, 3, 1, 1, 1, 1, 1, 1, 1},  // interior and border pixels, 3 column panels
      {1, 12, 11, 13, 17, 5, 5, 2, 1, 2, 3, 2, 1, 1},  // 5x5, dilation 2, asymmetric stride / padding
      // small images (AVX-512 VNNI skips the padding taps): 9 classes over a batch, C = 5 at the buffer's end,
      // padding wider than the kernel's reach (classes without a tap)
      {16, 32, 4, 4, 40, 3, 3, 1, 1, 1, 1, 1, 1, 1},
      {3, 5, 7, 7, 20, 3, 3, 2, 2, 1, 1, 1, 1, 1},
      {2, 8, 3, 5, 17, 3, 3, 1, 1, 3, 2, 1, 1, 1},
  };
  torch::manual_seed(3);
  for (const auto& k : cases) {
    const int64_t cg = k.c / k.groups;
    const auto w8 = torch::randint(-127, 128, {k.oc, cg, k.kh, k.kw}, torch::kChar);
    const auto ws = torch::rand({k.oc}) * 0.01 + 0.001;
    const auto bias = torch::randn({k.oc});
    const auto x = torch::randn({k.n, k.c, k.h, k.w});
    const float s = 0.023f;
    const int32_t z = 121;
    const int64_t oh = k.oh(), ow = k.ow();
    const auto want = ref_conv(k, as_floats(x), as_int64s(w8), as_floats(ws), as_floats(bias), s, z, oh, ow);
    const auto packed = q8::pack_conv_weight(w8, k.groups);
    EXPECT_TRUE(q8::unpack_conv_weight(packed, k.oc, cg, {k.kh, k.kw}, k.groups).equal(w8));
    for (const auto& isa : supported_isas()) {
      q8::set_cpu_isa(isa.c_str());
      const auto out = q8::conv2d(x, packed, ws, bias, {k.kh, k.kw}, {k.sh, k.sw}, {k.ph, k.pw}, {k.dh, k.dw},
                                  k.groups, "static", torch::tensor(s), torch::tensor(z), std::nullopt, std::nullopt,
                                  std::nullopt, 0.0);
      ASSERT_EQ(out.sizes(), at::IntArrayRef({k.n, k.oc, oh, ow}));
      EXPECT_TRUE(out.is_contiguous(at::MemoryFormat::ChannelsLast));
      EXPECT_TRUE(same_values(out.contiguous(), want)) << isa << " groups=" << k.groups;
    }
  }
}

// Uint8 output of depthwise 3x3 layers (AVX-512 VNNI: the fused kernel, with masked
// loads and stores of the last channel group): the codes of the reference's y,
// clamp(nearbyint(clamp(y * (1 / so), -512, 512)) + zo, 0, 255), on every ISA.
TEST(Conv2d, DepthwiseUint8OutputMatchesScalarReferenceOnEveryIsa) {
  IsaGuard guard;
  const std::vector<Case> cases = {
      {2, 80, 6, 7, 80, 3, 3, 1, 1, 1, 1, 1, 1, 80},    // 64 channels + a 16-channel tail
      {1, 9, 5, 5, 9, 3, 3, 2, 2, 1, 1, 1, 1, 9},       // fewer than 64 channels, stride 2
      {1, 144, 3, 4, 144, 3, 3, 1, 1, 2, 2, 1, 1, 144}, // padding wider than the kernel's reach
      {1, 64, 7, 5, 64, 3, 3, 2, 2, 0, 1, 1, 1, 64},    // stride 2, no top padding
  };
  torch::manual_seed(4);
  for (const auto& k : cases) {
    const auto w8 = torch::randint(-127, 128, {k.oc, 1, k.kh, k.kw}, torch::kChar);
    const auto ws = torch::rand({k.oc}) * 0.01 + 0.001;
    const auto bias = torch::randn({k.oc});
    const auto x = torch::randn({k.n, k.c, k.h, k.w}).contiguous(at::MemoryFormat::ChannelsLast);
    const float s = 0.021f, so = 0.013f;
    const int32_t z = 111, zo = 3;
    const int64_t oh = k.oh(), ow = k.ow();
    const auto y = ref_conv(k, as_floats(x.contiguous()), as_int64s(w8), as_floats(ws), as_floats(bias), s, z, oh,
                            ow);
    std::vector<int64_t> want(y.size());
    const float inv = 1.0f / so;
    for (size_t i = 0; i < y.size(); ++i) {
      const float v = std::fmin(std::fmax(y[i] * inv, -512.f), 512.f);
      want[i] = std::min<int64_t>(255, std::max<int64_t>(0, static_cast<int64_t>(std::nearbyint(v)) + zo));
    }
    const auto packed = q8::pack_conv_weight(w8, k.groups);
    for (const auto& isa : supported_isas()) {
      q8::set_cpu_isa(isa.c_str());
      const auto out = q8::conv2d(x, packed, ws, bias, {k.kh, k.kw}, {k.sh, k.sw}, {k.ph, k.pw}, {k.dh, k.dw},
                                  k.groups, "static", torch::tensor(s), torch::tensor(z), std::nullopt, std::nullopt,
                                  std::nullopt, 0.0, std::nullopt, torch::tensor(so), torch::tensor(zo));
      ASSERT_EQ(out.scalar_type(), at::kByte);
      ASSERT_EQ(out.sizes(), at::IntArrayRef({k.n, k.oc, oh, ow}));
      EXPECT_EQ(as_int64s(out.contiguous()), want) << isa << " C=" << k.c;
    }
  }
}

TEST(Conv2d, DynamicNanSampleGivesNan) {
  const auto w8 = torch::randint(-127, 128, {4, 3, 3, 3}, torch::kChar);
  const auto ws = torch::full({4}, 0.01f);
  auto x = torch::randn({2, 3, 5, 5});
  x[1][2][4][4] = kNaN;
  const auto out = q8::conv2d(x, q8::pack_conv_weight(w8, 1), ws, std::nullopt, {3, 3}, {1, 1}, {1, 1});
  EXPECT_TRUE(out[1].isnan().all().item<bool>());
  EXPECT_FALSE(out[0].isnan().any().item<bool>());
}

TEST(Conv2d, BadInputIsRefused) {
  const auto w8 = torch::randint(-127, 128, {8, 4, 3, 3}, torch::kChar);
  const auto ws = torch::full({8}, 0.01f);
  const auto packed = q8::pack_conv_weight(w8, 1);
  const auto x = torch::randn({1, 4, 6, 6});
  Q8_EXPECT_ERROR(q8::conv2d(x.to(at::kDouble), packed, ws, std::nullopt, {3, 3}), "input must be float32");
  Q8_EXPECT_ERROR(q8::conv2d(torch::randn({1, 6, 6, 6}), packed, ws, std::nullopt, {3, 3}), "packed_weight holds");
  Q8_EXPECT_ERROR(q8::conv2d(x, packed, ws, std::nullopt, {3, 3}, {1, 1}, {0, 0}, {1, 1}, 1, "static"),
                  "input_scale");
  Q8_EXPECT_ERROR(q8::conv2d(x, packed, ws, std::nullopt, {3, 3}, {1, 1}, {0, 0}, {1, 1}, 1, "dynamic",
                             std::nullopt, std::nullopt, torch::randn({1, 8, 5, 5})),
                  "residual must have the output's shape");
  Q8_EXPECT_ERROR(q8::pack_conv_weight(w8, 3), "divisible by groups");
  auto tampered = packed.clone();
  tampered[packed.numel() - 8] = tampered[packed.numel() - 8].item<uint8_t>() ^ 1;
  Q8_EXPECT_ERROR(q8::conv2d(x, tampered, ws, std::nullopt, {3, 3}), "checksum");
  tampered = packed.clone();
  tampered[200] = tampered[200].item<uint8_t>() ^ 1;
  Q8_EXPECT_ERROR(q8::unpack_conv_weight(tampered, 8, 4, {3, 3}, 1), "corrupt");
}

// q8::max_pool2d against a scalar max over each window's taps inside the input (0 where none is), for
// NCHW and channels_last inputs, C below / above 16, ceil_mode, dilation.
TEST(MaxPool2d, MatchesScalarReference) {
  struct Case {
    int64_t n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw;
    bool ceil;
  };
  const std::vector<Case> cases = {{2, 64, 16, 16, 3, 3, 2, 2, 1, 1, 1, 1, false},
                                   {1, 37, 9, 11, 3, 3, 2, 2, 1, 1, 1, 1, true},
                                   {2, 5, 8, 9, 2, 3, 2, 1, 1, 1, 2, 1, true},
                                   {1, 3, 3, 3, 2, 2, 2, 2, 1, 1, 4, 4, false},
                                   {2, 4, 6, 3, 2, 2, 2, 2, 1, 1, 1, 4, false}};
  for (const auto& k : cases) {
    const auto x = torch::randint(0, 256, {k.n, k.c, k.h, k.w}, torch::kByte);
    const auto out = q8::max_pool2d(x, {k.kh, k.kw}, {k.sh, k.sw}, {k.ph, k.pw}, {k.dh, k.dw}, k.ceil);
    ASSERT_TRUE(out.is_contiguous(at::MemoryFormat::ChannelsLast));
    const auto cl = q8::max_pool2d(x.contiguous(at::MemoryFormat::ChannelsLast), {k.kh, k.kw}, {k.sh, k.sw},
                                   {k.ph, k.pw}, {k.dh, k.dw}, k.ceil);
    EXPECT_TRUE(torch::equal(out, cl));
    const auto xa = x.accessor<uint8_t, 4>();
    const auto oa = out.accessor<uint8_t, 4>();
    for (int64_t n = 0; n < k.n; ++n) {
      for (int64_t c = 0; c < k.c; ++c) {
        for (int64_t oy = 0; oy < out.size(2); ++oy) {
          for (int64_t ox = 0; ox < out.size(3); ++ox) {
            int m = 0;
            for (int64_t i = 0; i < k.kh; ++i) {
              for (int64_t j = 0; j < k.kw; ++j) {
                const int64_t iy = oy * k.sh - k.ph + i * k.dh, ix = ox * k.sw - k.pw + j * k.dw;
                if (iy >= 0 && iy < k.h && ix >= 0 && ix < k.w) {
                  m = std::max(m, static_cast<int>(xa[n][c][iy][ix]));
                }
              }
            }
            ASSERT_EQ(oa[n][c][oy][ox], m) << n << " " << c << " " << oy << " " << ox;
          }
        }
      }
    }
  }
  Q8_EXPECT_ERROR(q8::max_pool2d(torch::randn({1, 2, 4, 4}), {2, 2}), "input must be uint8");
  Q8_EXPECT_ERROR(q8::max_pool2d(torch::zeros({1, 2, 4, 4}, torch::kByte), {3, 3}, {1, 1}, {2, 2}),
                  "padding must be at most half");
}

} // namespace
