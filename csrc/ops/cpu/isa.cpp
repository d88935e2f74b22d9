#include "isa.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdlib>

#include <c10/util/Exception.h>

namespace q8::cpu {

namespace {
struct Features {
  bool avx2 = false, avx_vnni = false, avx512 = false, avx512_vnni = false;
};

Features features() {
  static const Features f = [] {
    Features r;
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    r.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    r.avx512 = r.avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    r.avx512_vnni = r.avx512 && __builtin_cpu_supports("avx512vnni");
#if defined(__GNUC__) && __GNUC__ >= 11
    r.avx_vnni = r.avx2 && __builtin_cpu_supports("avxvnni");
#endif
#endif
    return r;
  }();
  return f;
}

constexpr Isa kAll[] = {Isa::AVX512_VNNI, Isa::AVX512, Isa::AVX_VNNI, Isa::AVX2, Isa::DEFAULT};
} // namespace

bool supported(Isa isa) {
  const Features& f = features();
  switch (isa) {
    case Isa::AVX512_VNNI:
      return f.avx512_vnni;
    case Isa::AVX512:
      return f.avx512;
    case Isa::AVX_VNNI:
      return f.avx_vnni;
    case Isa::AVX2:
      return f.avx2;
    case Isa::DEFAULT:
      return true;
  }
  return false;
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (Isa isa : kAll) {
    if (supported(isa)) {
      out.push_back(isa);
    }
  }
  return out;
}

Isa detected_isa() {
  // (once: active_isa() runs on every op call, and supported_isas() allocates)
  static const Isa best = supported_isas().front();
  return best;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::AVX512_VNNI:
      return "avx512_vnni";
    case Isa::AVX512:
      return "avx512";
    case Isa::AVX_VNNI:
      return "avx_vnni";
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
  for (Isa isa : kAll) {
    if (n == isa_name(isa)) {
      return isa;
    }
  }
  TORCH_CHECK(false, "q8: CPU ISA must be one of 'avx512_vnni', 'avx512', 'avx_vnni', 'avx2' or 'default', got '",
              name, "'");
}

namespace {
void check_supported(Isa isa) {
  TORCH_CHECK(
      supported(isa), "q8: CPU ISA '", isa_name(isa), "' is not supported by this CPU (best: '",
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
    case Isa::AVX512_VNNI:
    case Isa::AVX512:
      return AVX512::kernel_table();
    case Isa::AVX_VNNI:
    case Isa::AVX2:
      return AVX2::kernel_table();
    case Isa::DEFAULT:
      break;
  }
  return DEFAULT::kernel_table();
}

} // namespace q8::cpu
