// GoogleTest cases of the depthwise accumulation kernels (every ISA table) against
// an exact int64 reference.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "ops/cpu/kernels/conv_depthwise.h"

namespace {

using q8::cpu::conv::DepthwiseGeometry;
using q8::cpu::conv::DepthwiseKernels;

struct Table {
  const char* isa;
  const DepthwiseKernels* k;
  bool supported;
};

std::vector<Table> tables() {
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return {{"default", &q8::cpu::conv::depthwise_default(), true},
          {"avx2", &q8::cpu::conv::depthwise_avx2(), avx2},
          {"avx512", &q8::cpu::conv::depthwise_avx512(), avx512}};
}

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

struct Case {
  int64_t H, W, C;
  int kh, kw, sh, sw, ph, pw, dh, dw;
  int pad_bottom = -1, pad_right = -1;  // -1: same as top / left
};

enum class Fill { Random, Extreme, ExtremeLow };

struct Data {
  DepthwiseGeometry g;
  int64_t ldw;
  std::vector<uint8_t> x;
  std::vector<int8_t> w;
};

Data make(const Case& cs, Fill fill, uint32_t seed) {
  Data d;
  const int pb = cs.pad_bottom < 0 ? cs.ph : cs.pad_bottom;
  const int pr = cs.pad_right < 0 ? cs.pw : cs.pad_right;
  d.g.H = cs.H;
  d.g.W = cs.W;
  d.g.C = cs.C;
  d.g.kh = cs.kh;
  d.g.kw = cs.kw;
  d.g.sh = cs.sh;
  d.g.sw = cs.sw;
  d.g.ph = cs.ph;
  d.g.pw = cs.pw;
  d.g.dh = cs.dh;
  d.g.dw = cs.dw;
  d.g.OH = (cs.H + cs.ph + pb - int64_t{cs.dh} * (cs.kh - 1) - 1) / cs.sh + 1;
  d.g.OW = (cs.W + cs.pw + pr - int64_t{cs.dw} * (cs.kw - 1) - 1) / cs.sw + 1;
  d.ldw = round_up(std::max<int64_t>(cs.C, 1), 64);
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> u8(0, 255), s8(-128, 127), coin(0, 1);
  d.x.resize(static_cast<size_t>(cs.H * cs.W * cs.C));
  d.w.assign(static_cast<size_t>(cs.kh * cs.kw * d.ldw), 0);
  for (auto& v : d.x) {
    v = fill == Fill::Random ? static_cast<uint8_t>(u8(rng)) : fill == Fill::Extreme ? 255 : 0;
  }
  for (int t = 0; t < cs.kh * cs.kw; ++t) {
    for (int64_t c = 0; c < cs.C; ++c) {
      int v = s8(rng);
      if (fill != Fill::Random) {
        v = coin(rng) ? -128 : 127;
        if (fill == Fill::Extreme && t % 3 != 2) v = -128;  // mostly -128: the largest magnitude
      }
      d.w[static_cast<size_t>(t * d.ldw + c)] = static_cast<int8_t>(v);
    }
  }
  return d;
}

int64_t ref_acc(const Data& d, uint8_t pad, int64_t oh, int64_t ow, int64_t c) {
  const auto& g = d.g;
  int64_t s = 0;
  for (int i = 0; i < g.kh; ++i) {
    const int64_t y = oh * g.sh - g.ph + int64_t{i} * g.dh;
    for (int j = 0; j < g.kw; ++j) {
      const int64_t xx = ow * g.sw - g.pw + int64_t{j} * g.dw;
      const bool inside = y >= 0 && y < g.H && xx >= 0 && xx < g.W;
      const int64_t xv = inside ? d.x[static_cast<size_t>((y * g.W + xx) * g.C + c)] : pad;
      s += xv * d.w[static_cast<size_t>((int64_t{i} * g.kw + j) * d.ldw + c)];
    }
  }
  return s;
}

// Runs every row segment given (all rows of the output) through every supported table
// and compares with the int64 reference.
void check(const Case& cs, Fill fill, uint8_t pad, uint32_t seed,
           const std::vector<std::pair<int64_t, int64_t>>& segments_in = {}) {
  const Data d = make(cs, fill, seed);
  const auto& g = d.g;
  ASSERT_GT(g.OH, 0);
  ASSERT_GT(g.OW, 0);
  std::vector<std::pair<int64_t, int64_t>> segments = segments_in;
  if (segments.empty()) segments.push_back({0, g.OW});
  const int64_t ldacc = round_up(std::max<int64_t>(g.C, 1), 16) + 16;  // a wider ldacc than needed
  for (const auto& t : tables()) {
    if (!t.supported) continue;
    for (const auto& [ow0, ow1] : segments) {
      ASSERT_LE(ow1, g.OW);
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        // Exactly-sized buffers so that ASan sees writes past the segment.
        std::vector<int32_t> acc(static_cast<size_t>(std::max<int64_t>(ow1 - ow0, 0) * ldacc), 0x5a5a5a5a);
        // d.x is exactly H*W*C bytes: ASan catches reads past the image.
        t.k->acc_row(d.x.data(), g, d.w.data(), d.ldw, pad, oh, ow0, ow1, acc.data(), ldacc);
        for (int64_t ow = ow0; ow < ow1; ++ow) {
          for (int64_t c = 0; c < g.C; ++c) {
            const int64_t want = ref_acc(d, pad, oh, ow, c);
            const int64_t got = acc[static_cast<size_t>((ow - ow0) * ldacc + c)];
            if (want != got) {
              FAIL() << t.isa << ": H=" << g.H << " W=" << g.W << " C=" << g.C << " k=" << g.kh << "x" << g.kw
                     << " s=" << g.sh << "," << g.sw << " p=" << g.ph << "," << g.pw << " d=" << g.dh << "," << g.dw
                     << " pad=" << int{pad} << " oh=" << oh << " ow=" << ow << " c=" << c << " [" << ow0 << ","
                     << ow1 << "): want " << want << ", got " << got;
            }
          }
        }
      }
    }
  }
}

TEST(ConvDepthwise, TablesHaveNames) {
  for (const auto& t : tables()) {
    ASSERT_NE(t.k->name, nullptr);
    EXPECT_NE(std::string(t.k->name), "");
    ASSERT_NE(t.k->acc_row, nullptr);
  }
  EXPECT_EQ(std::string(q8::cpu::conv::depthwise_default().name), "default");
  EXPECT_EQ(std::string(q8::cpu::conv::depthwise_avx2().name), "avx2");
  EXPECT_EQ(std::string(q8::cpu::conv::depthwise_avx512().name), "avx512");
}

TEST(ConvDepthwise, Kernel3x3AllChannelCounts) {
  const int64_t channels[] = {1, 3, 16, 17, 32, 63, 64, 65, 96, 144, 200};
  uint32_t seed = 1;
  for (int64_t C : channels) {
    check({7, 9, C, 3, 3, 1, 1, 1, 1, 1, 1}, Fill::Random, 128, seed++);
    check({8, 7, C, 3, 3, 2, 2, 1, 1, 1, 1}, Fill::Random, 0, seed++);
  }
}

TEST(ConvDepthwise, KernelShapes) {
  uint32_t seed = 100;
  for (int64_t C : {3, 17, 64, 65}) {
    check({9, 11, C, 5, 5, 1, 1, 2, 2, 1, 1}, Fill::Random, 77, seed++);
    check({9, 11, C, 5, 5, 2, 2, 2, 2, 1, 1}, Fill::Random, 255, seed++);
    check({6, 5, C, 1, 1, 1, 1, 0, 0, 1, 1}, Fill::Random, 0, seed++);
    check({6, 5, C, 1, 1, 2, 2, 0, 0, 1, 1}, Fill::Random, 0, seed++);
    check({6, 7, C, 3, 1, 1, 1, 1, 0, 1, 1}, Fill::Random, 128, seed++);
    check({6, 7, C, 1, 3, 1, 2, 0, 1, 1, 1}, Fill::Random, 128, seed++);
    check({10, 9, C, 7, 7, 1, 1, 3, 3, 1, 1}, Fill::Random, 128, seed++);
    check({10, 9, C, 7, 7, 2, 2, 3, 3, 1, 1}, Fill::Random, 3, seed++);
  }
}

TEST(ConvDepthwise, PaddingStrideDilation) {
  uint32_t seed = 200;
  for (int64_t C : {1, 16, 33, 96}) {
    for (int p : {0, 1, 2}) {
      for (int s : {1, 2}) {
        for (uint8_t pad : {uint8_t{0}, uint8_t{128}, uint8_t{255}}) {
          check({9, 10, C, 3, 3, s, s, p, p, 1, 1}, Fill::Random, pad, seed++);
        }
      }
    }
    // dilation 2
    check({11, 12, C, 3, 3, 1, 1, 2, 2, 2, 2}, Fill::Random, 128, seed++);
    check({11, 12, C, 3, 3, 2, 2, 1, 1, 2, 2}, Fill::Random, 9, seed++);
    check({11, 12, C, 3, 3, 1, 1, 0, 0, 2, 1}, Fill::Random, 9, seed++);
    check({11, 12, C, 3, 3, 2, 2, 1, 1, 2, 1}, Fill::Random, 9, seed++);
    check({11, 12, C, 3, 3, 1, 2, 2, 1, 2, 1}, Fill::Random, 66, seed++);
    check({11, 12, C, 3, 3, 2, 1, 1, 2, 1, 1}, Fill::Random, 66, seed++);
    check({11, 12, C, 3, 3, 1, 3, 1, 1, 1, 1}, Fill::Random, 66, seed++);
    // asymmetric geometry: different strides / paddings / dilations per axis, bottom/right padding unlike top/left
    check({10, 13, C, 3, 5, 2, 1, 0, 2, 1, 2}, Fill::Random, 200, seed++);
    check({10, 13, C, 5, 3, 1, 2, 2, 0, 2, 1}, Fill::Random, 200, seed++);
    check({9, 9, C, 3, 3, 2, 2, 0, 0, 1, 1, 1, 1}, Fill::Random, 1, seed++);   // TF "same": pad bottom/right only
    check({9, 9, C, 3, 3, 2, 2, 1, 1, 1, 1, 0, 0}, Fill::Random, 250, seed++);  // pad top/left only
    check({8, 8, C, 3, 3, 1, 1, 2, 0, 1, 1, 0, 2}, Fill::Random, 250, seed++);
  }
}

TEST(ConvDepthwise, TinyAndLarge) {
  uint32_t seed = 300;
  for (int64_t C : {1, 17, 64, 144}) {
    check({1, 1, C, 3, 3, 1, 1, 1, 1, 1, 1}, Fill::Random, 128, seed++);
    check({1, 1, C, 3, 3, 2, 2, 1, 1, 1, 1}, Fill::Random, 5, seed++);
    check({1, 1, C, 1, 1, 1, 1, 0, 0, 1, 1}, Fill::Random, 5, seed++);
    check({2, 3, C, 3, 3, 1, 1, 1, 1, 1, 1}, Fill::Random, 128, seed++);
    check({2, 3, C, 3, 3, 2, 2, 1, 1, 1, 1}, Fill::Random, 0, seed++);
    check({2, 3, C, 5, 5, 1, 1, 2, 2, 1, 1}, Fill::Random, 255, seed++);
    check({2, 3, C, 7, 7, 1, 1, 3, 3, 1, 1}, Fill::Random, 255, seed++);
    check({3, 2, C, 3, 3, 1, 1, 2, 2, 2, 2}, Fill::Random, 7, seed++);
  }
  for (int64_t C : {3, 65, 96}) {
    check({15, 17, C, 3, 3, 1, 1, 1, 1, 1, 1}, Fill::Random, 128, seed++);
    check({15, 17, C, 3, 3, 2, 2, 1, 1, 1, 1}, Fill::Random, 128, seed++);
    check({15, 17, C, 5, 5, 1, 1, 2, 2, 1, 1}, Fill::Random, 0, seed++);
  }
  check({15, 17, 200, 3, 3, 1, 1, 1, 1, 1, 1}, Fill::Random, 255, seed++);
}

TEST(ConvDepthwise, ExtremeValues) {
  uint32_t seed = 400;
  for (int64_t C : {1, 17, 64, 65, 200}) {
    for (uint8_t pad : {uint8_t{0}, uint8_t{255}}) {
      check({6, 7, C, 3, 3, 1, 1, 1, 1, 1, 1}, Fill::Extreme, pad, seed++);
      check({6, 7, C, 3, 3, 2, 2, 1, 1, 1, 1}, Fill::Extreme, pad, seed++);
      check({9, 9, C, 7, 7, 1, 1, 3, 3, 1, 1}, Fill::Extreme, pad, seed++);
      check({6, 7, C, 5, 5, 1, 1, 2, 2, 1, 1}, Fill::ExtremeLow, pad, seed++);
    }
  }
}

TEST(ConvDepthwise, PartialRowSegments) {
  uint32_t seed = 500;
  for (int64_t C : {1, 16, 17, 63, 96}) {
    // OW = 17 (stride 1) and 9 (stride 2)
    check({5, 17, C, 3, 3, 1, 1, 1, 1, 1, 1}, Fill::Random, 128, seed++,
          {{0, 1}, {16, 17}, {3, 11}, {0, 8}, {8, 17}, {5, 5}, {1, 16}, {0, 17}});
    check({5, 17, C, 3, 3, 2, 2, 1, 1, 1, 1}, Fill::Random, 31, seed++, {{0, 1}, {8, 9}, {2, 7}, {1, 2}, {0, 9}});
    check({5, 20, C, 5, 5, 1, 1, 2, 2, 1, 1}, Fill::Random, 200, seed++, {{1, 19}, {2, 18}, {0, 2}, {18, 20}, {7, 13}});
    check({6, 19, C, 3, 3, 1, 1, 2, 2, 2, 2}, Fill::Random, 9, seed++, {{0, 3}, {3, 16}, {16, 19}});
  }
}

// Manual timing (not a test): q8_cpp_tests --gtest_also_run_disabled_tests --gtest_filter='*DISABLED_Bench*'
TEST(ConvDepthwise, DISABLED_BenchMobileNetV2) {
  struct S {
    int64_t C, HW;
    int s;
  };
  const S shapes[] = {{96, 56, 2}, {144, 56, 1}, {144, 56, 2}, {192, 28, 1}, {192, 28, 2}, {384, 14, 1},
                      {576, 14, 1}, {576, 14, 2}, {960, 7, 1}};
  for (const auto& sh : shapes) {
    const Data d = make({sh.HW, sh.HW, sh.C, 3, 3, sh.s, sh.s, 1, 1, 1, 1}, Fill::Random, 1);
    const int64_t ldacc = round_up(sh.C, 16);
    std::vector<int32_t> acc(static_cast<size_t>(d.g.OW * ldacc));
    for (const auto& t : tables()) {
      if (!t.supported) continue;
      auto run = [&] {
        for (int64_t oh = 0; oh < d.g.OH; ++oh) {
          t.k->acc_row(d.x.data(), d.g, d.w.data(), d.ldw, 128, oh, 0, d.g.OW, acc.data(), ldacc);
        }
      };
      run();
      int reps = 0;
      const auto t0 = std::chrono::steady_clock::now();
      double best = 1e30;
      while (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < 0.3) {
        const auto a = std::chrono::steady_clock::now();
        run();
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count());
        ++reps;
      }
      std::printf("C=%4lld HW=%3lld s=%d %-8s best %9.1f us (%d reps)\n", static_cast<long long>(sh.C),
                  static_cast<long long>(sh.HW), sh.s, t.isa, best * 1e6, reps);
    }
  }
}

} // namespace
