// Depthwise accumulation kernels for the default family (conv_depthwise.h):
// portable C++ written for the compiler's auto-vectorizer (baseline x86-64: SSE2).
// Per output pixel, each tap adds a whole channel row (contiguous in NHWC) into the
// int32 accumulators; taps outside the image add pad * w.
#include "conv_depthwise.h"

namespace q8::cpu::conv {
namespace {

void acc_row_default(const uint8_t* __restrict x, const DepthwiseGeometry& g, const int8_t* __restrict w,
                     int64_t ldw, uint8_t pad, int64_t oh, int64_t ow0, int64_t ow1, int32_t* __restrict acc,
                     int64_t ldacc) {
  const int64_t C = g.C;
  const int32_t padv = pad;
  for (int64_t ow = ow0; ow < ow1; ++ow) {
    int32_t* __restrict a = acc + (ow - ow0) * ldacc;
    for (int64_t c = 0; c < C; ++c) {
      a[c] = 0;
    }
    for (int i = 0; i < g.kh; ++i) {
      const int64_t y = oh * g.sh - g.ph + int64_t{i} * g.dh;
      const bool yin = y >= 0 && y < g.H;
      for (int j = 0; j < g.kw; ++j) {
        const int64_t xx = ow * g.sw - g.pw + int64_t{j} * g.dw;
        const int8_t* __restrict wt = w + (int64_t{i} * g.kw + j) * ldw;
        if (yin && xx >= 0 && xx < g.W) {
          const uint8_t* __restrict src = x + (y * g.W + xx) * C;
          for (int64_t c = 0; c < C; ++c) {
            a[c] += int32_t{src[c]} * int32_t{wt[c]};
          }
        } else {
          for (int64_t c = 0; c < C; ++c) {
            a[c] += padv * int32_t{wt[c]};
          }
        }
      }
    }
  }
}

} // namespace

const DepthwiseKernels& depthwise_default() {
  static const DepthwiseKernels k{"default", &acc_row_default};
  return k;
}

} // namespace q8::cpu::conv
