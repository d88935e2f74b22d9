#include "isa.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdlib>

#include <c10/util/Exception.h>

namespace q8::cpu {

Isa detected_isa() {
  static const Isa isa = [] {
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("fma")) {
      return Isa::AVX512;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      return Isa::AVX2;
    }
#endif
    return Isa::DEFAULT;
  }();
  return isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::AVX512:
      return "avx512";
    case Isa::AVX2:
      return "avx2";
    case Isa::DEFAULT:
      return "default";
  }
  return "default";
}

Isa parse_isa(const std::string& name) {
  std::string n = name;
  std::transform(n.begin(), n.end(), n.begin(), [](unsigned char c) { return std::tolower(c); });
  if (n == "avx512") {
    return Isa::AVX512;
  }
  if (n == "avx2") {
    return Isa::AVX2;
  }
  if (n == "default") {
    return Isa::DEFAULT;
  }
  TORCH_CHECK(false, "q8: CPU ISA must be one of 'avx512', 'avx2' or 'default', got '", name, "'");
}

namespace {
void check_supported(Isa isa) {
  TORCH_CHECK(
      static_cast<int>(isa) <= static_cast<int>(detected_isa()),
      "q8: CPU ISA '", isa_name(isa), "' is not supported by this CPU (best: '",
      isa_name(detected_isa()), "')");
}

std::atomic<int>& forced() {
  static std::atomic<int> value = [] {
    const char* env = std::getenv("Q8_CPU_ISA");
    if (env == nullptr || *env == '\0') {
      return -1;
    }
    Isa isa = parse_isa(env);
    check_supported(isa);
    return static_cast<int>(isa);
  }();
  return value;
}
} // namespace

Isa active_isa() {
  int f = forced().load(std::memory_order_relaxed);
  return f < 0 ? detected_isa() : static_cast<Isa>(f);
}

void set_isa(Isa isa) {
  check_supported(isa);
  forced().store(static_cast<int>(isa), std::memory_order_relaxed);
}

} // namespace q8::cpu

#include "kernels/kernels.h"

namespace q8::cpu {

const KernelTable& kernels() {
  switch (active_isa()) {
    case Isa::AVX512:
      return AVX512::kernel_table();
    case Isa::AVX2:
      return AVX2::kernel_table();
    case Isa::DEFAULT:
      break;
  }
  return DEFAULT::kernel_table();
}

} // namespace q8::cpu
