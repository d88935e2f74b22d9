// qat_train: quantization-aware training in C++ with q8's operators and C++
// autograd, then int8 inference with q8's int8 linear kernel, without Python.
//
//   qat_train [--data digits.pt] [--steps 300] [--batch 64] [--lr 0.003] [--lsq]
//             [--observe-steps 100] [--seed 0] [--threads N] [--out qat_model.pt]
//
// Model: an MLP  features -> 128 -> 10  of QAT linear layers. Each layer
//   * fake-quantizes its weight per output channel, symmetric int8 [-127, 127]:
//     q8::choose_qparams(w.detach(), ..., symmetric, axis 0) then
//     q8::fake_quantize_per_channel (straight-through gradient);
//   * fake-quantizes its input per tensor, uint8 [0, 255], with a moving-average
//     observer: q8::observe_fake_quantize, whose state (running min / max, scale,
//     zero point, on/off flags) lives in registered buffers, so torch::save keeps it;
//     with --lsq the observer runs for --observe-steps steps, then the activation
//     scale and zero point become parameters learned by gradient descent (LSQ:
//     q8::fake_quantize_per_tensor's learnable-scale gradients).
// Data: --data names a file written by Python's torch.save of a dict with float
// "x_train", "x_test" ([N, ...], flattened here) and int64 "y_train", "y_test";
// without it a synthetic 10-class task (Gaussian clusters in 64 dimensions) is
// generated here.
// Prints the training loss falling, the test accuracy of the fake-quantized model,
// the accuracy of the same model run with q8's int8 kernels (q8::quantize_weight,
// q8::pack_weight, q8::linear "static"), saves the model with torch::save (its
// parameters and buffers), loads it back into a new model and checks that it
// computes the same logits.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include <torch/torch.h>

#include <q8/q8.h>

namespace {

constexpr int64_t kActMin = 0, kActMax = 255;      // uint8 activations (q8::linear "static")
constexpr int64_t kWeightMin = -127, kWeightMax = 127;  // int8 weights (q8::quantize_weight's range)

// Observer + fake quantization of a layer's input, per tensor, uint8.
struct ActFakeQuantImpl : torch::nn::Module {
  ActFakeQuantImpl() {
    observer_on = register_buffer("observer_on", torch::ones({1}, torch::kUInt8));
    fake_quant_on = register_buffer("fake_quant_on", torch::ones({1}, torch::kUInt8));
    running_min = register_buffer("running_min", torch::full({1}, INFINITY));
    running_max = register_buffer("running_max", torch::full({1}, -INFINITY));
    scale = register_buffer("scale", torch::ones({1}));
    zero_point = register_buffer("zero_point", torch::zeros({1}, torch::kInt));
    // LSQ parameters, used once `learnable` is set (see start_lsq).
    lsq_scale = register_parameter("lsq_scale", torch::ones({1}));
    lsq_zero_point = register_parameter("lsq_zero_point", torch::zeros({1}));
    learnable = register_buffer("learnable", torch::zeros({1}, torch::kUInt8));
  }

  // Observe no more; learn scale and zero point from the observer's values.
  void start_lsq() {
    torch::NoGradGuard g;
    lsq_scale.copy_(scale);
    lsq_zero_point.copy_(zero_point.to(torch::kFloat));
    observer_on.zero_();
    learnable.fill_(1);
  }

  bool is_learnable() const { return learnable.item<int64_t>() != 0; }

  // The scale and zero point that the int8 layer uses after training.
  std::pair<at::Tensor, at::Tensor> qparams() const {
    if (is_learnable()) {
      torch::NoGradGuard g;
      return {lsq_scale.detach().clamp_min(std::numeric_limits<float>::min()).clone(),
              lsq_zero_point.detach().round().clamp(kActMin, kActMax).to(torch::kInt)};
    }
    return {scale.clone(), zero_point.clone()};
  }

  at::Tensor forward(const at::Tensor& x) {
    if (is_learnable()) {
      // LSQ gradient scale g = 1 / sqrt(numel * quant_max): the value is the
      // parameter's, the gradient g times it.
      const double g = 1.0 / std::sqrt(static_cast<double>(x.numel()) * kActMax);
      auto s = lsq_scale.clamp_min(std::numeric_limits<float>::min());
      s = (s - s.detach()) * g + s.detach();
      auto z = (lsq_zero_point - lsq_zero_point.detach()) * g + lsq_zero_point.detach();
      return q8::fake_quantize_per_tensor(x, s, z, kActMin, kActMax);
    }
    // The observer runs in training mode only; the state is updated in place.
    const at::Tensor on = is_training() ? observer_on : torch::zeros({1}, torch::kUInt8);
    return std::get<0>(q8::observe_fake_quantize(x, on, fake_quant_on, running_min, running_max, scale, zero_point,
                                                 /*averaging_constant=*/0.01, kActMin, kActMax));
  }

  at::Tensor observer_on, fake_quant_on, running_min, running_max, scale, zero_point, learnable;
  at::Tensor lsq_scale, lsq_zero_point;
};
TORCH_MODULE(ActFakeQuant);

// nn.Linear trained through fake quantization of its weight and input.
struct QATLinearImpl : torch::nn::Module {
  QATLinearImpl(int64_t in, int64_t out)
      : linear(register_module("linear", torch::nn::Linear(in, out))),
        input_fq(register_module("input_fq", ActFakeQuant())) {}

  at::Tensor fake_quantized_weight() {
    const at::Tensor& w = linear->weight;
    auto [s, z] = q8::choose_qparams(w.detach(), kWeightMin, kWeightMax, /*symmetric=*/true, /*axis=*/0);
    return q8::fake_quantize_per_channel(w, s, z, 0, kWeightMin, kWeightMax);
  }

  at::Tensor forward(const at::Tensor& x) {
    return torch::nn::functional::linear(input_fq(x), fake_quantized_weight(), linear->bias);
  }

  // The same layer with int8 weights and uint8 inputs (q8's int8 GEMM).
  at::Tensor forward_int8(const at::Tensor& x) {
    auto [w_int8, w_scale] = q8::quantize_weight(linear->weight.detach());
    auto [in_scale, in_zero_point] = input_fq->qparams();
    return q8::linear(x, q8::pack_weight(w_int8), w_scale, linear->bias.detach(), "static", in_scale, in_zero_point);
  }

  torch::nn::Linear linear;
  ActFakeQuant input_fq;
};
TORCH_MODULE(QATLinear);

struct MLPImpl : torch::nn::Module {
  MLPImpl(int64_t in, int64_t hidden, int64_t classes)
      : fc1(register_module("fc1", QATLinear(in, hidden))), fc2(register_module("fc2", QATLinear(hidden, classes))) {}
  at::Tensor forward(const at::Tensor& x) { return fc2(torch::relu(fc1(x))); }
  at::Tensor forward_int8(const at::Tensor& x) { return fc2->forward_int8(torch::relu(fc1->forward_int8(x))); }
  void start_lsq() {
    fc1->input_fq->start_lsq();
    fc2->input_fq->start_lsq();
  }
  QATLinear fc1, fc2;
};
TORCH_MODULE(MLP);

struct Dataset {
  at::Tensor x_train, y_train, x_test, y_test;
};

std::vector<char> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw std::runtime_error("cannot open " + path);
  }
  return std::vector<char>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

Dataset load_dataset(const std::string& path) {
  auto dict = torch::pickle_load(read_file(path)).toGenericDict();
  auto get = [&](const char* key) {
    TORCH_CHECK(dict.contains(key), path, ": missing key \"", key, "\"");
    return dict.at(key).toTensor();
  };
  return {get("x_train").flatten(1).to(torch::kFloat), get("y_train").to(torch::kLong),
          get("x_test").flatten(1).to(torch::kFloat), get("y_test").to(torch::kLong)};
}

// 10 Gaussian clusters in 64 dimensions, overlapping enough that the task is not trivial.
Dataset synthetic_dataset(int64_t n_train, int64_t n_test, uint64_t seed) {
  torch::manual_seed(seed + 1000);
  const int64_t classes = 10, dim = 64;
  at::Tensor centers = torch::randn({classes, dim});
  auto make = [&](int64_t n) {
    at::Tensor y = torch::randint(classes, {n}, torch::kLong);
    at::Tensor x = centers.index_select(0, y) + 2.0 * torch::randn({n, dim});
    return std::make_pair(x, y);
  };
  auto [xtr, ytr] = make(n_train);
  auto [xte, yte] = make(n_test);
  return {xtr, ytr, xte, yte};
}

double accuracy(const at::Tensor& logits, const at::Tensor& y) {
  return 100.0 * logits.argmax(1).eq(y).sum().item<int64_t>() / static_cast<double>(y.size(0));
}

int usage(const char* argv0) {
  std::cerr << "usage: " << argv0
            << " [--data digits.pt] [--steps N] [--batch N] [--lr X] [--lsq] [--observe-steps N] [--seed N]"
               " [--threads N] [--out qat_model.pt]\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string data_path, out_path = "qat_model.pt";
  int64_t steps = 300, batch = 64, observe_steps = 100, seed = 0;
  double lr = 3e-3;
  bool lsq = false;
  int threads = 0;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        throw std::invalid_argument(a + " needs a value");
      }
      return argv[++i];
    };
    try {
      if (a == "--data") data_path = value();
      else if (a == "--steps") steps = std::stoll(value());
      else if (a == "--batch") batch = std::stoll(value());
      else if (a == "--lr") lr = std::stod(value());
      else if (a == "--lsq") lsq = true;
      else if (a == "--observe-steps") observe_steps = std::stoll(value());
      else if (a == "--seed") seed = std::stoll(value());
      else if (a == "--threads") threads = std::stoi(value());
      else if (a == "--out") out_path = value();
      else return usage(argv[0]);
    } catch (const std::exception& e) {
      std::cerr << "bad argument " << a << ": " << e.what() << "\n";
      return usage(argv[0]);
    }
  }
  if (steps < 1 || batch < 1) {
    return usage(argv[0]);
  }

  try {
    if (threads > 0) {
      torch::set_num_threads(threads);
    }
    Dataset d = data_path.empty() ? synthetic_dataset(2000, 500, seed) : load_dataset(data_path);
    const int64_t n = d.x_train.size(0), features = d.x_train.size(1);
    const int64_t classes = std::max(d.y_train.max().item<int64_t>(), d.y_test.max().item<int64_t>()) + 1;
    std::cout << "data: " << (data_path.empty() ? std::string("synthetic (10 Gaussian clusters, 64 features)")
                                                : data_path)
              << ", " << n << " train / " << d.x_test.size(0) << " test, " << features << " features, " << classes
              << " classes\n";

    torch::manual_seed(seed);
    MLP model(features, 128, classes);
    torch::optim::Adam opt(model->parameters(), torch::optim::AdamOptions(lr));
    std::cout << "model: QAT MLP " << features << " -> 128 -> " << classes
              << " (int8 per-channel weights, uint8 per-tensor inputs: "
              << (lsq ? "moving-average observer, then LSQ from step " + std::to_string(observe_steps)
                      : std::string("moving-average observer"))
              << "), Adam lr " << lr << ", batch " << batch << ", " << steps << " steps\n";

    // Training: one random batch a step (a fixed generator: the run is reproducible).
    model->train();
    double first_loss = 0, window = 0, last_window = 0;
    int64_t in_window = 0;
    const int64_t report_every = std::max<int64_t>(1, steps / 10);
    for (int64_t step = 1; step <= steps; ++step) {
      if (lsq && step == observe_steps + 1) {
        model->start_lsq();
        std::cout << "step " << step << ": observers off, activation scales learned from here (LSQ)\n";
      }
      at::Tensor idx = torch::randint(n, {batch}, torch::kLong);
      at::Tensor logits = model(d.x_train.index_select(0, idx));
      at::Tensor loss = torch::nn::functional::cross_entropy(logits, d.y_train.index_select(0, idx));
      opt.zero_grad();
      loss.backward();
      opt.step();
      const double l = loss.item<double>();
      if (step == 1) {
        first_loss = l;
      }
      window += l;
      ++in_window;
      if (step % report_every == 0 || step == steps) {
        last_window = window / in_window;
        std::printf("step %4lld  loss %.4f\n", static_cast<long long>(step), last_window);
        window = 0;
        in_window = 0;
      }
    }
    std::fflush(stdout);
    std::printf("loss: initial %.4f -> final %.4f (mean of the last %lld steps)\n", first_loss, last_window,
                static_cast<long long>(report_every));

    // Evaluation: the fake-quantized model (observers off) and the int8 one.
    model->eval();
    at::Tensor logits_fq, logits_int8;
    {
      torch::NoGradGuard g;
      logits_fq = model(d.x_test);
      logits_int8 = model->forward_int8(d.x_test);
    }
    const double acc_fq = accuracy(logits_fq, d.y_test), acc_int8 = accuracy(logits_int8, d.y_test);
    std::printf("test accuracy: %.2f %% fake-quantized, %.2f %% int8 (q8::linear static); max |logit difference| %.3g\n",
                acc_fq, acc_int8, (logits_fq - logits_int8).abs().max().item<double>());
    for (const auto& [name, fq] : {std::make_pair("fc1", model->fc1->input_fq), std::make_pair("fc2", model->fc2->input_fq)}) {
      auto [s, z] = fq->qparams();
      std::printf("%s input: scale %.6g, zero point %lld\n", name, s.item<double>(), static_cast<long long>(z.item<int64_t>()));
    }

    // Save (parameters and buffers, observer state included), load into a new model.
    torch::save(model, out_path);
    MLP reloaded(features, 128, classes);
    torch::load(reloaded, out_path);
    reloaded->eval();
    at::Tensor logits_reloaded;
    {
      torch::NoGradGuard g;
      logits_reloaded = reloaded(d.x_test);
    }
    const bool same = torch::equal(logits_reloaded, logits_fq);
    std::cout << "saved " << out_path << "; reloaded into a new model: logits "
              << (same ? "identical" : "DIFFERENT") << "\n";
    return same ? 0 : 1;
  } catch (const c10::Error& e) {
    std::cerr << "qat_train: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "qat_train: " << e.what() << "\n";
    return 1;
  }
}
