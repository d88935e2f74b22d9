// Run-time choice of the CPU kernel family (see kernels/fake_quantize_vec.cpp,
// compiled once per family).
#pragma once

#include <string>

namespace q8::cpu {

enum class Isa { DEFAULT = 0, AVX2 = 1, AVX512 = 2 };

// The best family this CPU supports.
Isa detected_isa();
// The family in use: detected_isa(), or lower when forced by Q8_CPU_ISA or set_isa().
Isa active_isa();
void set_isa(Isa isa);
Isa parse_isa(const std::string& name);
const char* isa_name(Isa isa);

} // namespace q8::cpu
