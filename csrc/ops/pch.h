// The headers precompiled for every C++ source of libq8 (CMakeLists.txt, option
// Q8_PCH, on by default): parsing torch's headers is most of each file's compile
// time. Every source still includes what it uses, so a build with -DQ8_PCH=OFF is
// the same library.
#pragma once
#include <ATen/ATen.h>
#include <torch/library.h>
