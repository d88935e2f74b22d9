// Integer accumulation kernels of the int8 depthwise convolution (groups == C ==
// OC), one table per instruction set (conv_depthwise_{default,avx2,avx512}.cpp,
// each compiled with its own flags). The driver (cpu/conv.cpp) applies the
// epilogue. Integer results are exact, hence identical on every path.
#pragma once

#include <cstdint>

namespace q8::cpu::conv {

struct DepthwiseGeometry {
  int64_t H, W, C;      // one sample of the input, uint8 NHWC [H][W][C] contiguous
  int kh, kw;           // kernel
  int sh, sw;           // stride
  int ph, pw;           // zero padding (top / left); positions outside the image read `pad`
  int dh, dw;           // dilation
  int64_t OH, OW;       // output size
};

struct DepthwiseKernels {
  const char* name;
  // For ow in [ow0, ow1) and c in [0, C):
  //   acc[(ow - ow0) * ldacc + c] =
  //       sum over i < kh, j < kw of xv(oh * sh - ph + i * dh, ow * sw - pw + j * dw, c) * w[(i * kw + j) * ldw + c]
  // with xv(y, x, c) = x[(y * W + x) * C + c] inside the image and `pad` outside.
  // w: int8 [kh * kw][ldw], ldw a multiple of 64 and >= C, zero for c >= C.
  // acc: int32, ldacc >= C, a multiple of 16; entries for c >= C are unspecified (the vector
  // kernels write them, up to round_up(C, 16)). x is read only inside [0, H * W * C).
  // Exact for any kernel size as long as the sums fit int32 (kh * kw * 255 * 128 < 2^31).
  void (*acc_row)(const uint8_t* x, const DepthwiseGeometry& g, const int8_t* w, int64_t ldw, uint8_t pad,
                  int64_t oh, int64_t ow0, int64_t ow1, int32_t* acc, int64_t ldacc);
};

const DepthwiseKernels& depthwise_default();
const DepthwiseKernels& depthwise_avx2();
const DepthwiseKernels& depthwise_avx512();

} // namespace q8::cpu::conv
