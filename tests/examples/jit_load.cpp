// jit_load <model.pt> <inputs.pt>: torch::jit::load a model, run it on a tensor
// saved by Python's torch.save, print the output's shape. It never calls a q8
// function. Built three ways by tests/examples/CMakeLists.txt:
//   jit_load_q8_header:  #include <q8/q8.h>, linked with q8::q8
//   jit_load_q8_link:    no q8 header, linked with q8::q8 only
//   jit_load_without_q8: no q8 header, torch only (loading a q8 model must fail,
//                        and the test checks what the error says)
// The first two check that libq8 stays linked, so that its operators register,
// even with the linker's --as-needed (the default of many GCC toolchains).
#include <fstream>
#include <iostream>
#include <iterator>
#include <vector>

#include <torch/script.h>

#ifdef JIT_LOAD_INCLUDE_Q8
#include <q8/q8.h>
#endif

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: " << argv[0] << " <model.pt> <inputs.pt>\n";
    return 2;
  }
  try {
    std::ifstream in(argv[2], std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    at::Tensor x = torch::jit::pickle_load(bytes).toTensor();
    torch::jit::Module model = torch::jit::load(argv[1]);
    c10::InferenceMode guard;
    at::Tensor y = model.forward({x}).toTensor();
    std::cout << "ok: output " << y.sizes() << "\n";
  } catch (const c10::Error& e) {
    std::cerr << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {  // torch::jit::ErrorReport (an unknown operator) among others
    std::cerr << e.what() << "\n";
    return 1;
  }
  return 0;
}
