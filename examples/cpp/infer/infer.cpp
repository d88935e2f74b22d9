// infer: run a TorchScript int8 model saved from Python (e.g. by q8-demo, or by
// q8.convert / q8.quantize_dynamic + torch.jit.script(...).save) on a test set,
// from C++, without Python.
//
//   infer <model.pt> <inputs.pt> [labels.pt] [--batch N] [--threads N] [--logits out.pt] [--show N]
//
// model.pt:  a module saved with torch.jit.save. Its q8 layers (q8.nn.Int8Linear,
//            q8.nn.Int8Conv2d) call torch.ops.q8.* operators, which exist in this
//            process because it links libq8 (find_package(q8) + q8::q8).
// inputs.pt: the test inputs, written by Python's torch.save: a tensor [N, ...], or
//            a dict {"inputs": tensor, "labels": tensor} (then labels.pt is not
//            needed), or a tuple / list (inputs, labels). A TorchScript module with
//            attributes "inputs" (and "labels") works too.
// labels.pt: int64 class indices [N] (torch.save of a tensor), optional.
// --batch:   rows per forward call (default 256); the inputs are split along dim 0.
// --threads: torch::set_num_threads (default: torch's default).
// --logits:  write the logits [N, classes] (float32, CPU) with torch::jit::pickle_save;
//            Python reads them with torch.load.
// --show:    how many predictions to print (default 20; -1: all).
//
// Prints the model file, the input shape, the predictions, and the accuracy when
// labels are given.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <torch/script.h>
#include <torch/torch.h>

// Not needed to call any q8 function here: including the header keeps libq8 linked
// (and so its operators registered) even with the linker's --as-needed. The
// q8::q8 CMake target does the same for programs that do not include it.
#include <q8/q8.h>

namespace {

std::vector<char> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw std::runtime_error("cannot open " + path);
  }
  return std::vector<char>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_file(const std::string& path, const std::vector<char>& data) {
  std::ofstream out(path, std::ios::binary);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  if (!out) {
    throw std::runtime_error("cannot write " + path);
  }
}

struct Data {
  at::Tensor inputs;
  std::optional<at::Tensor> labels;
};

// A file written by torch.save (read with torch::jit::pickle_load), or a TorchScript
// module with "inputs" / "labels" attributes (torch.jit.save of a container).
Data load_data(const std::string& path) {
  c10::IValue v;
  try {
    v = torch::jit::pickle_load(read_file(path));
  } catch (const c10::Error&) {
    torch::jit::Module m = torch::jit::load(path);
    Data d{m.attr("inputs").toTensor(), std::nullopt};
    if (m.hasattr("labels")) {
      d.labels = m.attr("labels").toTensor();
    }
    return d;
  }
  if (v.isTensor()) {
    return {v.toTensor(), std::nullopt};
  }
  if (v.isGenericDict()) {
    auto dict = v.toGenericDict();
    TORCH_CHECK(dict.contains("inputs"), path, ": a dict must have the key \"inputs\"");
    Data d{dict.at("inputs").toTensor(), std::nullopt};
    if (dict.contains("labels")) {
      d.labels = dict.at("labels").toTensor();
    }
    return d;
  }
  std::vector<c10::IValue> items;
  if (v.isTuple()) {
    items = v.toTupleRef().elements().vec();
  } else if (v.isList()) {
    items = v.toListRef().vec();
  }
  TORCH_CHECK(!items.empty() && items.size() <= 2 && items[0].isTensor(), path,
              ": expected a tensor, a dict {\"inputs\", \"labels\"} or a tuple (inputs, labels), got ", v.tagKind());
  Data d{items[0].toTensor(), std::nullopt};
  if (items.size() == 2) {
    d.labels = items[1].toTensor();
  }
  return d;
}

int usage(const char* argv0) {
  std::cerr << "usage: " << argv0
            << " <model.pt> <inputs.pt> [labels.pt] [--batch N] [--threads N] [--logits out.pt] [--show N]\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> positional;
  int64_t batch = 256;
  int64_t show = 20;
  int threads = 0;
  std::string logits_path;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        throw std::invalid_argument(a + " needs a value");
      }
      return argv[++i];
    };
    try {
      if (a == "--batch") {
        batch = std::stoll(value());
      } else if (a == "--threads") {
        threads = std::stoi(value());
      } else if (a == "--logits") {
        logits_path = value();
      } else if (a == "--show") {
        show = std::stoll(value());
      } else if (a == "-h" || a == "--help") {
        return usage(argv[0]);
      } else if (a.rfind("--", 0) == 0) {
        std::cerr << "unknown option " << a << "\n";
        return usage(argv[0]);
      } else {
        positional.push_back(a);
      }
    } catch (const std::exception& e) {
      std::cerr << "bad argument " << a << ": " << e.what() << "\n";
      return usage(argv[0]);
    }
  }
  if (positional.size() < 2 || positional.size() > 3 || batch < 1) {
    return usage(argv[0]);
  }

  try {
    if (threads > 0) {
      torch::set_num_threads(threads);
    }
    torch::jit::Module model = torch::jit::load(positional[0]);
    model.eval();
    Data data = load_data(positional[1]);
    if (positional.size() == 3) {
      data.labels = torch::jit::pickle_load(read_file(positional[2])).toTensor();
    }
    const at::Tensor& x = data.inputs;
    TORCH_CHECK(x.dim() >= 1 && x.size(0) > 0, "inputs must be a non-empty tensor [N, ...], got ", x.sizes());
    const int64_t n = x.size(0);
    std::cout << "model: " << positional[0] << " (q8 CPU kernels: " << q8::cpu_isa()
              << ", threads: " << torch::get_num_threads() << ")\n";
    std::cout << "inputs: " << x.sizes() << " " << x.dtype() << ", batch " << batch << "\n";

    // Forward in batches, as Python's evaluation loop does: the same batches run
    // the same kernels, so the logits are bit-equal to Python's.
    std::vector<at::Tensor> outs;
    const auto t0 = std::chrono::steady_clock::now();
    {
      c10::InferenceMode guard;
      for (int64_t i = 0; i < n; i += batch) {
        outs.push_back(model.forward({x.slice(0, i, std::min(n, i + batch))}).toTensor());
      }
    }
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    at::Tensor logits = torch::cat(outs).contiguous();
    at::Tensor pred = logits.argmax(1);
    std::cout << "logits: " << logits.sizes() << ", forward time " << ms << " ms (" << (ms / n) << " ms / sample)\n";

    const int64_t k = show < 0 ? n : std::min(n, show);
    std::cout << "predictions (first " << k << " of " << n << "):";
    for (int64_t i = 0; i < k; ++i) {
      std::cout << " " << pred[i].item<int64_t>();
    }
    std::cout << "\n";
    if (data.labels) {
      at::Tensor y = data.labels->to(torch::kLong).reshape({-1});
      TORCH_CHECK(y.size(0) == n, "labels: expected ", n, " labels, got ", y.size(0));
      if (k > 0) {
        std::cout << "labels      (first " << k << " of " << n << "):";
        for (int64_t i = 0; i < k; ++i) {
          std::cout << " " << y[i].item<int64_t>();
        }
        std::cout << "\n";
      }
      const int64_t correct = pred.eq(y).sum().item<int64_t>();
      char line[128];
      std::snprintf(line, sizeof(line), "accuracy: %.2f %% (%lld / %lld)\n", 100.0 * correct / n,
                    static_cast<long long>(correct), static_cast<long long>(n));
      std::cout << line;
    }
    if (!logits_path.empty()) {
      write_file(logits_path, torch::jit::pickle_save(logits));
      std::cout << "wrote " << logits_path << "\n";
    }
  } catch (const c10::Error& e) {
    std::cerr << "infer: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "infer: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
