// The single TORCH_LIBRARY block of the q8 namespace. Op families add their
// schemas with TORCH_LIBRARY_FRAGMENT in csrc/ops/<family>.cpp.
#include <torch/library.h>

#include <q8/q8.h>

#include "ops/cpu/isa.h"
#include "ops/cpu/kernels/int8_gemm.h"

#ifndef Q8_TORCH_VERSION
#error "Q8_TORCH_VERSION must be defined by the build (see CMakeLists.txt)"
#endif

// The torch this library was built against, as a marker that python/q8/__init__.py
// finds in the file before loading it.
extern "C" Q8_API const char q8_build_info[] = "Q8_BUILD_INFO:torch=" Q8_TORCH_VERSION ";";

namespace q8 {

int64_t register_ops() {
  // Nothing to do at run time: referencing this function keeps libq8 (and the
  // static registrations below and in csrc/ops/) linked into the program.
  return 1;
}

const char* cpu_isa() {
  return cpu::isa_name(cpu::active_isa());
}

void set_cpu_isa(const char* name) {
  cpu::set_isa(cpu::parse_isa(name));
}

std::vector<std::string> cpu_isas() {
  std::vector<std::string> out;
  for (auto isa : cpu::supported_isas()) {
    out.emplace_back(cpu::isa_name(isa));
  }
  return out;
}

namespace {
double cpu_peak_gops_op(const std::string& kind, int64_t milliseconds) {
  TORCH_CHECK(milliseconds > 0 && milliseconds <= 10000, "q8._cpu_peak_gops: milliseconds must be in [1, 10000], got ",
              milliseconds);
  double r = -1.0;
  if ((kind == "vpdpbusd512" && cpu::supported(cpu::Isa::AVX512_VNNI)) ||
      (kind == "fma512" && cpu::supported(cpu::Isa::AVX512))) {
    r = cpu::gemm::peak_gops_avx512(kind.c_str(), milliseconds);
  } else if ((kind == "vpdpbusd256" && cpu::supported(cpu::Isa::AVX_VNNI)) ||
             (kind == "fma256" && cpu::supported(cpu::Isa::AVX2))) {
    r = cpu::gemm::peak_gops_avx2(kind.c_str(), milliseconds);
  }
  TORCH_CHECK(r > 0, "q8._cpu_peak_gops: kind must be one of 'vpdpbusd512', 'fma512', 'vpdpbusd256', 'fma256' "
              "that this CPU supports, got '", kind, "'");
  return r;
}

std::string get_cpu_isa_op() {
  return cpu_isa();
}
std::string set_cpu_isa_op(const std::string& name) {
  std::string previous = cpu_isa();
  set_cpu_isa(name.c_str());
  return previous;
}
} // namespace

TORCH_LIBRARY(q8, m) {
  // Which CPU kernel family is in use, and a way to force one (tests compare them).
  m.def("_get_cpu_isa() -> str", &get_cpu_isa_op);
  m.def("_set_cpu_isa(str isa) -> str", &set_cpu_isa_op);
  m.def("_supported_cpu_isas() -> str[]", [] { return cpu_isas(); });
  // Single-thread peak GOP/s of one instruction (benchmarks report int8 GEMM
  // speed as a fraction of it).
  m.def("_cpu_peak_gops(str kind, int milliseconds) -> float", &cpu_peak_gops_op);
}

} // namespace q8
