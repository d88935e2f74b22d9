// q8_jit_run: run a TorchScript model from C++, for the Python tests of the
// TorchScript round trip (tests/python/test_int8_linear_module.py).
//
//   q8_jit_run <model.pt> <inputs.pt> <out.pt> [device]
//
// model.pt:  a module saved with torch.jit.save; it may hold q8 modules such as
//            q8.nn.Int8Linear, whose __setstate__ packs the int8 weight again with
//            torch.ops.q8.pack_weight while the model loads.
// inputs.pt: written by Python's torch.save: one tensor (the forward's only
//            argument) or a tuple / list of them (one per argument).
// out.pt:    the forward's result (a tensor, or a tuple / list of tensors), moved to
//            the CPU and written with torch::pickle_save: Python reads it with torch.load.
// device:    where the model is loaded (torch::jit::load's map_location) and where the
//            inputs are moved; "cpu" by default.
//
// Including <q8/q8.h> and linking libq8 is what registers the q8 operators here.
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include <torch/script.h>

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

c10::IValue to_device(const c10::IValue& v, const c10::Device& device) {
  if (v.isTensor()) {
    return v.toTensor().to(device);
  }
  if (v.isTuple()) {
    std::vector<c10::IValue> items;
    for (const auto& e : v.toTupleRef().elements()) {
      items.push_back(to_device(e, device));
    }
    return c10::ivalue::Tuple::create(std::move(items));
  }
  if (v.isTensorList()) {
    c10::List<at::Tensor> items;
    for (const at::Tensor& t : v.toTensorVector()) {
      items.push_back(t.to(device));
    }
    return items;
  }
  if (v.isList()) {
    c10::impl::GenericList items(c10::AnyType::get());
    for (const c10::IValue& e : v.toListRef()) {
      items.push_back(to_device(e, device));
    }
    return items;
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4 && argc != 5) {
    std::cerr << "usage: " << argv[0] << " <model.pt> <inputs.pt> <out.pt> [device]\n";
    return 2;
  }
  try {
    const c10::Device device(argc == 5 ? argv[4] : "cpu");
    torch::jit::Module model = torch::jit::load(argv[1], device);

    c10::IValue inputs = to_device(torch::jit::pickle_load(read_file(argv[2])), device);
    std::vector<c10::IValue> args;
    if (inputs.isTuple()) {
      for (const auto& e : inputs.toTupleRef().elements()) {
        args.push_back(e);
      }
    } else if (inputs.isList()) {
      for (const c10::IValue& e : inputs.toListRef()) {
        args.push_back(e);
      }
    } else {
      args.push_back(inputs);
    }

    c10::InferenceMode guard;
    c10::IValue out = model.forward(args);
    write_file(argv[3], torch::jit::pickle_save(to_device(out, c10::Device("cpu"))));
  } catch (const c10::Error& e) {
    std::cerr << "q8_jit_run: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "q8_jit_run: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
