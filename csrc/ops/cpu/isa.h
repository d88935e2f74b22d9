// Run-time choice of the CPU kernel family: the fake-quantize kernels
// (kernels/fake_quantize_vec.cpp, compiled once per vector width) and the int8
// GEMM kernels (kernels/int8_gemm_*.cpp, one file per instruction set).
#pragma once

#include <string>
#include <vector>

namespace q8::cpu {

// Families, from the portable C++ path to 512-bit VNNI. Not a strict order:
// a CPU may have AVX-512 without AVX-VNNI (Ice Lake) or AVX-VNNI without
// AVX-512 (Alder Lake); supported() says which ones this CPU runs.
//   family        fake-quant kernels   int8 GEMM kernel
//   avx512_vnni   AVX512               vpdpbusd zmm (u8 x s8 -> s32)
//   avx512        AVX512               vpmaddwd ymm (exact int16 products)
//   avx_vnni      AVX2                 vpdpbusd ymm (VEX)
//   avx2          AVX2                 vpmaddwd ymm
//   default       DEFAULT              portable C++
enum class Isa { DEFAULT = 0, AVX2 = 1, AVX_VNNI = 2, AVX512 = 3, AVX512_VNNI = 4 };

// The best family this CPU supports.
Isa detected_isa();
bool supported(Isa isa);
// Every supported family, best first.
std::vector<Isa> supported_isas();
// The family in use: detected_isa(), or the one forced by Q8_CPU_ISA or set_isa().
Isa active_isa();
void set_isa(Isa isa);
Isa parse_isa(const std::string& name);
const char* isa_name(Isa isa);

} // namespace q8::cpu
