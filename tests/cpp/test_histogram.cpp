// Tests of q8::histogram_observe / q8::histogram_qparams (the histogram
// percentile observer) through the public C++ API: binning against a plain loop,
// range growth with mass preserved, percentile 100 against q8::choose_qparams,
// a clipped percentile against a hand-computed quantile, the observer flag, and
// errors.
#include <cmath>
#include <limits>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <q8/q8.h>

#include "q8_test_utils.h"

namespace {

using namespace q8_test;

struct HistState {
  at::Tensor histogram, lo, hi;
  explicit HistState(int64_t bins)
      : histogram(torch::zeros({bins}, torch::kDouble)), lo(torch::full({1}, kInf)), hi(torch::full({1}, -kInf)) {}
};

at::Tensor on() {
  return torch::tensor({1}, torch::kLong);
}

TEST(HistogramObserve, FirstObservationBinsLikeAPlainLoop) {
  HistState st(16);
  auto x = torch::randn({1000}) * 3;
  x[7] = std::numeric_limits<float>::quiet_NaN();
  x[9] = kInf;
  q8::histogram_observe(x, on(), st.histogram, st.lo, st.hi);
  const auto fin = x.index({torch::isfinite(x)});
  const float lo = fin.min().item<float>(), hi = fin.max().item<float>();
  EXPECT_EQ(st.lo.item<float>(), lo);
  EXPECT_EQ(st.hi.item<float>(), hi);
  std::vector<double> expected(16, 0.0);
  for (int64_t i = 0; i < fin.numel(); ++i) {
    const double v = fin[i].item<float>();
    int64_t k = static_cast<int64_t>(std::floor((v - lo) * 16 / (static_cast<double>(hi) - lo)));
    expected[std::min<int64_t>(std::max<int64_t>(k, 0), 15)] += 1.0;
  }
  for (int64_t k = 0; k < 16; ++k) {
    EXPECT_EQ(st.histogram[k].item<double>(), expected[k]) << "bin " << k;
  }
  EXPECT_EQ(st.histogram.sum().item<double>(), 998.0);
}

TEST(HistogramObserve, RangeGrowthPreservesMassAndFlagOffChangesNothing) {
  HistState st(64);
  double total = 0;
  for (int step = 0; step < 5; ++step) {
    auto x = torch::randn({500}) * (1 + step) + step;
    q8::histogram_observe(x, on(), st.histogram, st.lo, st.hi);
    total += 500;
    EXPECT_NEAR(st.histogram.sum().item<double>(), total, 1e-9 * total);
    EXPECT_GE(st.histogram.min().item<double>(), -1e-12);
  }
  const auto before = st.histogram.clone();
  const float lo = st.lo.item<float>();
  q8::histogram_observe(torch::randn({100}) * 100, torch::tensor({0}, torch::kLong), st.histogram, st.lo, st.hi);
  EXPECT_TRUE(torch::equal(before, st.histogram));
  EXPECT_EQ(st.lo.item<float>(), lo);
}

TEST(HistogramQparams, PercentileHundredIsChooseQparamsOfTheData) {
  HistState st(128);
  std::vector<at::Tensor> xs;
  for (int step = 0; step < 3; ++step) {
    xs.push_back(torch::randn({300}) * 2 + step - 1);
    q8::histogram_observe(xs.back(), on(), st.histogram, st.lo, st.hi);
  }
  const auto all = torch::cat(xs);
  for (bool symmetric : {false, true}) {
    auto [s, z] = q8::histogram_qparams(st.histogram, st.lo, st.hi, 100.0, 0, 255, symmetric);
    auto [s_ref, z_ref] = q8::choose_qparams(all, 0, 255, symmetric);
    EXPECT_EQ(s.dim(), 0);
    EXPECT_TRUE(same_bits(s, s_ref));
    EXPECT_TRUE(same_bits(z, z_ref));
  }
}

TEST(HistogramQparams, ClippedRangeOfAUniformHistogram) {
  // 100 bins of mass 1 over [0, 100]: the 1% tails are exactly 1 bin wide, so the
  // 98th percentile clips to [1, 99]; symmetric over [-50, 50]: a = 49 for p = 98.
  auto h = torch::ones({100}, torch::kDouble);
  auto [s, z] = q8::histogram_qparams(h, torch::tensor({0.0f}), torch::tensor({100.0f}), 98.0, 0, 255, false);
  auto [s_ref, z_ref] = q8::choose_qparams(torch::tensor({1.0f, 99.0f}), 0, 255, false);
  EXPECT_TRUE(same_bits(s, s_ref));
  EXPECT_TRUE(same_bits(z, z_ref));
  auto [ss, zs] = q8::histogram_qparams(h, torch::tensor({-50.0f}), torch::tensor({50.0f}), 98.0, -128, 127, true);
  auto [ss_ref, zs_ref] = q8::choose_qparams(torch::tensor({-49.0f, 49.0f}), -128, 127, true);
  EXPECT_TRUE(same_bits(ss, ss_ref));
  EXPECT_EQ(zs.item<int32_t>(), 0);
  // Not observed yet: choose_qparams of an empty input.
  HistState st(8);
  auto [se, ze] = q8::histogram_qparams(st.histogram, st.lo, st.hi, 99.9, 0, 255);
  auto [se_ref, ze_ref] = q8::choose_qparams(torch::empty({0}), 0, 255);
  EXPECT_TRUE(same_bits(se, se_ref));
  EXPECT_TRUE(same_bits(ze, ze_ref));
}

TEST(HistogramErrors, NameTheArgument) {
  HistState st(8);
  Q8_EXPECT_ERROR(q8::histogram_observe(torch::randn({4}), on(), st.histogram.to(torch::kFloat), st.lo, st.hi),
                  "histogram must be float64");
  Q8_EXPECT_ERROR(q8::histogram_observe(torch::randn({4}), on(), st.histogram, st.lo.to(torch::kDouble), st.hi),
                  "hist_min must be float32");
  Q8_EXPECT_ERROR(q8::histogram_observe(torch::randn({4}), on(), st.histogram, st.lo, st.hi, torch::zeros({3})),
                  "input_range must have one or two elements");
  Q8_EXPECT_ERROR(q8::histogram_qparams(st.histogram, st.lo, st.hi, 0.0, 0, 255), "percentile must be in (0, 100]");
  Q8_EXPECT_ERROR(q8::histogram_qparams(st.histogram, st.lo, st.hi, 99.0, 5, 5),
                  "quant_min must be less than quant_max");
}

} // namespace
