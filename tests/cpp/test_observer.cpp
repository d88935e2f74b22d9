// Tests of q8::observe_fake_quantize (the fused moving-average observer + fake
// quantization) through the public C++ API: the first observation and the
// moving average against values computed by hand, the qparams against
// q8::choose_qparams, the output against q8::fake_quantize_*, the flags, per
// channel state, a QAT training step with backward from C++, and errors.
#include <cmath>
#include <limits>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <q8/q8.h>

#include "q8_test_utils.h"

namespace {

using namespace q8_test;

// The observer state, with torch's initial values: running min / max +Inf /
// -Inf, scale 1, zero point 0; `channels` elements each (per tensor: one).
struct ObserverState {
  at::Tensor running_min, running_max, scale, zero_point;

  explicit ObserverState(int64_t channels = 1)
      : running_min(torch::full({channels}, kInf)),
        running_max(torch::full({channels}, -kInf)),
        scale(torch::ones({channels})),
        zero_point(torch::zeros({channels}, torch::kInt)) {}

  ObserverState clone() const {
    ObserverState s;
    s.running_min = running_min.clone();
    s.running_max = running_max.clone();
    s.scale = scale.clone();
    s.zero_point = zero_point.clone();
    return s;
  }
};

at::Tensor flag(bool on) {
  return torch::tensor({on ? 1 : 0}, torch::kLong);
}

std::tuple<at::Tensor, at::Tensor> step(const at::Tensor& x, bool observe, bool fake_quant, ObserverState& st,
                                        double c, int64_t qmin, int64_t qmax, std::optional<int64_t> axis = std::nullopt,
                                        bool symmetric = false) {
  return q8::observe_fake_quantize(x, flag(observe), flag(fake_quant), st.running_min, st.running_max, st.scale,
                                   st.zero_point, c, qmin, qmax, axis, symmetric);
}

// The qparams q8::choose_qparams gives for the range [lo, hi] (per channel).
std::tuple<at::Tensor, at::Tensor> qparams_of(const at::Tensor& lo, const at::Tensor& hi, int64_t qmin, int64_t qmax,
                                              bool symmetric) {
  return q8::choose_qparams(torch::stack({lo, hi}, 1), qmin, qmax, symmetric, 0);
}

// float32 moving average, as written in the docs.
float ema(float running, float current, float c) {
  volatile float d = current - running;  // no contraction into a fused multiply-add
  volatile float p = c * d;
  return running + p;
}

TEST(ObserveFakeQuantize, FirstObservationThenMovingAveragePerTensor) {
  ObserverState st;
  const auto x1 = torch::tensor({-2.0f, 1.0f, 4.0f, 0.5f});
  auto [out1, mask1] = step(x1, true, true, st, 0.25, 0, 255);
  EXPECT_EQ(st.running_min.item<float>(), -2.0f);
  EXPECT_EQ(st.running_max.item<float>(), 4.0f);
  auto [s1, z1] = qparams_of(st.running_min, st.running_max, 0, 255, false);
  EXPECT_TRUE(same_bits(st.scale, s1));
  EXPECT_TRUE(same_bits(st.zero_point, z1));
  EXPECT_EQ(st.zero_point.item<int32_t>(), 85);
  EXPECT_TRUE(same_bits(out1, q8::fake_quantize_per_tensor(x1, st.scale, st.zero_point, 0, 255)));
  EXPECT_TRUE(mask1.all().item<bool>());

  const float c = 0.1f;
  float lo = -2.0f, hi = 4.0f;
  for (int i = 0; i < 5; ++i) {
    const auto x = torch::randn({7, 9}) * (1.0 + i);
    const float cur_lo = x.min().item<float>(), cur_hi = x.max().item<float>();
    auto [out, mask] = step(x, true, true, st, c, 0, 255);
    lo = ema(lo, cur_lo, c);
    hi = ema(hi, cur_hi, c);
    EXPECT_EQ(st.running_min.item<float>(), lo) << "step " << i;
    EXPECT_EQ(st.running_max.item<float>(), hi) << "step " << i;
    auto [s, z] = qparams_of(st.running_min, st.running_max, 0, 255, false);
    EXPECT_TRUE(same_bits(st.scale, s));
    EXPECT_TRUE(same_bits(st.zero_point, z));
    EXPECT_TRUE(same_bits(out, q8::fake_quantize_per_tensor(x, st.scale, st.zero_point, 0, 255)));
    const auto q = torch::round(x * st.scale.reciprocal()) + st.zero_point.to(torch::kFloat);
    EXPECT_TRUE(torch::equal(mask, (q >= 0) & (q <= 255)));
  }
}

TEST(ObserveFakeQuantize, PerChannelSymmetricEveryAxis) {
  torch::manual_seed(2);
  const auto x = torch::randn({3, 4, 5}) * 3;
  for (int64_t axis : {0, 1, 2, -1}) {
    const int64_t ch = x.size(axis);
    ObserverState st(ch);
    auto [out, mask] = step(x, true, true, st, 0.01, -128, 127, axis, true);
    const auto moved = x.movedim(axis, 0).reshape({ch, -1});
    EXPECT_TRUE(same_bits(st.running_min, std::get<0>(moved.min(1))));
    EXPECT_TRUE(same_bits(st.running_max, std::get<0>(moved.max(1))));
    auto [s, z] = q8::choose_qparams(x, -128, 127, true, axis);
    EXPECT_TRUE(same_bits(st.scale, s));
    EXPECT_TRUE(same_bits(st.zero_point, z));
    EXPECT_TRUE(same_bits(out, q8::fake_quantize_per_channel(x, s, z, axis, -128, 127)));
  }
}

TEST(ObserveFakeQuantize, FlagsOffKeepStateOrSkipFakeQuant) {
  ObserverState st;
  const auto x = torch::randn({16}) * 5;
  step(x, true, true, st, 0.5, -8, 7);
  const auto before = st.clone();
  // Observer off: the state is untouched and the stored qparams are used.
  auto [out, mask] = step(x * 3, false, true, st, 0.5, -8, 7);
  EXPECT_TRUE(same_bits(st.running_min, before.running_min));
  EXPECT_TRUE(same_bits(st.running_max, before.running_max));
  EXPECT_TRUE(same_bits(st.scale, before.scale));
  EXPECT_TRUE(same_bits(st.zero_point, before.zero_point));
  EXPECT_TRUE(same_bits(out, q8::fake_quantize_per_tensor(x * 3, before.scale, before.zero_point, -8, 7)));
  EXPECT_FALSE(mask.all().item<bool>());
  // Fake quantization off: a copy of the input, mask all true; the observer still runs.
  auto [copy, ones] = step(x, true, false, st, 0.5, -8, 7);
  EXPECT_TRUE(same_bits(copy, x));
  EXPECT_NE(copy.data_ptr(), x.data_ptr());
  EXPECT_TRUE(ones.all().item<bool>());
  EXPECT_EQ(st.running_min.item<float>(), ema(before.running_min.item<float>(), x.min().item<float>(), 0.5f));
}

TEST(ObserveFakeQuantize, NonFiniteValuesAreIgnored) {
  ObserverState st(2);
  const auto x = torch::tensor({{1.0f, kNaN, -3.0f, kInf}, {kNaN, kNaN, -kInf, kNaN}});
  auto [out, mask] = step(x, true, true, st, 0.1, 0, 255, 0);
  EXPECT_EQ(st.running_min[0].item<float>(), -3.0f);
  EXPECT_EQ(st.running_max[0].item<float>(), 1.0f);
  // Channel 1 has no finite value: not observed.
  EXPECT_EQ(st.running_min[1].item<float>(), kInf);
  EXPECT_EQ(st.running_max[1].item<float>(), -kInf);
  EXPECT_EQ(st.scale[1].item<float>(), std::numeric_limits<float>::epsilon());
  EXPECT_TRUE(std::isnan(out[0][1].item<float>()));
  EXPECT_FALSE(mask[0][1].item<bool>());
}

// A QAT step from C++: a linear layer whose input goes through the fused observer
// (state in buffers), forward, backward, optimizer step.
struct QatLinearImpl : torch::nn::Module {
  torch::nn::Linear linear{nullptr};
  at::Tensor observer_on, fake_quant_on, running_min, running_max, scale, zero_point;

  QatLinearImpl() {
    linear = register_module("linear", torch::nn::Linear(8, 4));
    observer_on = register_buffer("observer_on", torch::ones({1}, torch::kLong));
    fake_quant_on = register_buffer("fake_quant_on", torch::ones({1}, torch::kLong));
    running_min = register_buffer("running_min", torch::full({1}, kInf));
    running_max = register_buffer("running_max", torch::full({1}, -kInf));
    scale = register_buffer("scale", torch::ones({1}));
    zero_point = register_buffer("zero_point", torch::zeros({1}, torch::kInt));
  }

  std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& x) {
    auto [xq, mask] = q8::observe_fake_quantize(x, observer_on, fake_quant_on, running_min, running_max, scale,
                                                zero_point, 0.01, -128, 127);
    return {linear->forward(xq), mask};
  }
};
TORCH_MODULE(QatLinear);

TEST(ObserveFakeQuantize, TrainingStepFromCpp) {
  torch::manual_seed(0);
  QatLinear model;
  torch::optim::SGD opt(model->parameters(), 0.1);
  float lo = kInf, hi = -kInf;
  for (int i = 0; i < 3; ++i) {
    auto x = (torch::randn({5, 8}) * 4).requires_grad_();
    const float cur_lo = x.min().item<float>(), cur_hi = x.max().item<float>();
    opt.zero_grad();
    auto [y, mask] = model->forward(x);
    auto loss = y.square().sum();
    loss.backward();
    // The input gradient is straight through the mask: the float gradient of the
    // linear layer where the input was inside the range, 0 elsewhere.
    const auto w = model->linear->weight.detach();
    const auto b = model->linear->bias.detach();
    const auto xq = q8::fake_quantize_per_tensor(x.detach(), model->scale, model->zero_point, -128, 127);
    const auto gy = 2 * (torch::nn::functional::linear(xq, w, b));
    const auto want = gy.mm(w) * mask.to(torch::kFloat);
    EXPECT_TRUE(torch::allclose(x.grad(), want, 1e-5, 1e-5)) << "step " << i;
    ASSERT_TRUE(model->linear->weight.grad().defined());
    for (const auto& buf : model->buffers()) {
      EXPECT_FALSE(buf.grad().defined());
      EXPECT_FALSE(buf.requires_grad());
    }
    opt.step();
    // The moving average, as computed by hand.
    lo = std::isinf(lo) ? cur_lo : ema(lo, cur_lo, 0.01f);
    hi = std::isinf(hi) ? cur_hi : ema(hi, cur_hi, 0.01f);
    EXPECT_EQ(model->running_min.item<float>(), lo) << "step " << i;
    EXPECT_EQ(model->running_max.item<float>(), hi) << "step " << i;
    auto [s, z] = qparams_of(model->running_min, model->running_max, -128, 127, false);
    EXPECT_TRUE(same_bits(model->scale, s));
    EXPECT_TRUE(same_bits(model->zero_point, z));
  }
  // Freeze the observer: the state stays, training goes on.
  model->observer_on.fill_(0);
  const auto frozen = model->scale.clone();
  auto [y, mask] = model->forward(torch::randn({5, 8}) * 100);
  y.sum().backward();
  EXPECT_TRUE(same_bits(model->scale, frozen));
  EXPECT_FALSE(mask.all().item<bool>());
}

TEST(ObserveFakeQuantize, Errors) {
  ObserverState st;
  const auto x = torch::randn({4, 6});
  Q8_EXPECT_ERROR(step(x, true, true, st, 0.0, 0, 255), "q8.observe_fake_quantize: averaging_constant must be in (0, 1]");
  Q8_EXPECT_ERROR(step(x, true, true, st, 2.0, 0, 255), "averaging_constant must be in (0, 1], got 2");
  Q8_EXPECT_ERROR(step(x, true, true, st, 0.1, 9, 3), "quant_min must be less than quant_max");
  Q8_EXPECT_ERROR(step(x, true, true, st, 0.1, 0, 255, 1), "running_min must be 1-D with input.size(axis) = 6");
  Q8_EXPECT_ERROR(q8::observe_fake_quantize(x, torch::ones({2}), flag(true), st.running_min, st.running_max,
                                            st.scale, st.zero_point, 0.1, 0, 255),
                  "observer_on must have exactly one element");
  Q8_EXPECT_ERROR(q8::observe_fake_quantize(x, flag(true), flag(true), st.running_min, st.running_max, st.scale,
                                            st.zero_point.to(torch::kLong), 0.1, 0, 255),
                  "zero_point must be int32, got Long");
  Q8_EXPECT_ERROR(q8::observe_fake_quantize(x, flag(true), flag(true), st.running_min.to(torch::kDouble),
                                            st.running_max, st.scale, st.zero_point, 0.1, 0, 255),
                  "running_min must be float32, got Double");
  Q8_EXPECT_ERROR(q8::observe_fake_quantize(x.requires_grad_(), flag(true), flag(true), st.running_min,
                                            st.running_max, st.scale.clone().requires_grad_(), st.zero_point, 0.1, 0,
                                            255),
                  "scale must not require grad");
  // Nothing was updated by the failed calls.
  EXPECT_EQ(st.running_min.item<float>(), kInf);
}

} // namespace
