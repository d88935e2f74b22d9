// Portable depthwise accumulation (conv_depthwise.h), included by the per-ISA files
// until they have their own vector code.
#pragma once

#include "conv_depthwise.h"

namespace q8::cpu::conv::ref {

inline void acc_row(const uint8_t* x, const DepthwiseGeometry& g, const int8_t* w, int64_t ldw, uint8_t pad,
                    int64_t oh, int64_t ow0, int64_t ow1, int32_t* acc, int64_t ldacc) {
  for (int64_t ow = ow0; ow < ow1; ++ow) {
    int32_t* a = acc + (ow - ow0) * ldacc;
    for (int64_t c = 0; c < g.C; ++c) {
      a[c] = 0;
    }
    for (int i = 0; i < g.kh; ++i) {
      const int64_t y = oh * g.sh - g.ph + int64_t{i} * g.dh;
      for (int j = 0; j < g.kw; ++j) {
        const int64_t xx = ow * g.sw - g.pw + int64_t{j} * g.dw;
        const bool inside = y >= 0 && y < g.H && xx >= 0 && xx < g.W;
        const uint8_t* src = inside ? x + (y * g.W + xx) * g.C : nullptr;
        const int8_t* wt = w + (int64_t{i} * g.kw + j) * ldw;
        for (int64_t c = 0; c < g.C; ++c) {
          a[c] += int32_t{inside ? src[c] : pad} * int32_t{wt[c]};
        }
      }
    }
  }
}

} // namespace q8::cpu::conv::ref
