// Vectorized depthwise accumulation (conv_depthwise.h), shared by the avx2 and
// avx512 files: each includes this header after defining its traits `T` and
// instantiates `acc_row<T>` (everything here has internal linkage, so the two
// files' instantiations, compiled with different ISA flags, never mix).
//
// Scheme (NHWC, vectorized over channels, T::B channels per block):
// - The taps are taken in pairs (t0, t1) (an odd last tap is paired with itself
//   and a zero weight). For a block of channels, the uint8 inputs of both taps are
//   widened to int16 and interleaved (x0[c], x1[c]), the int8 weights likewise
//   once per call, and vpmaddwd gives x0[c]*w0[c] + x1[c]*w1[c] in int32 for each
//   channel: exact (|sum| <= 2 * 255 * 128), no int16 saturation (vpmaddubsw would
//   saturate), no VNNI needed.
// - The interleaved weights are prepared once per call in a buffer ([block][pair]
//   [lo, hi]) that stays in L1 across the output row; the tap pointers of one
//   output pixel point into the image or into a row of `pad` bytes, so the border
//   needs no per-channel test. In the interior the pointers just advance by
//   sw * C per output pixel; only the border pixels recompute them.
// - A channel tail (C not a multiple of B) reads only the bytes [c0, C) of the
//   image (masked loads on AVX-512, a copy on AVX2) and stores only what fits
//   in [c0, round_up(C, 16)).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <memory>
#include <vector>

#include "conv_depthwise.h"

namespace q8::cpu::conv {
namespace {

// Tap pointers of the output pixel ow (image or pad row), pairs completed.
inline void dw_tap_ptrs(const uint8_t* x, const DepthwiseGeometry& g, const uint8_t* padrow, const int64_t* ys,
                        const bool* yok, int64_t ow, int nt, const uint8_t** ptr) {
  int t = 0;
  for (int i = 0; i < g.kh; ++i) {
    for (int j = 0; j < g.kw; ++j, ++t) {
      const int64_t xx = ow * g.sw - g.pw + int64_t{j} * g.dw;
      ptr[t] = (yok[i] && xx >= 0 && xx < g.W) ? x + (ys[i] * g.W + xx) * g.C : padrow;
    }
  }
  if (nt & 1) {
    ptr[nt] = ptr[nt - 1];
  }
}

template <class T, bool Tail>
inline typename T::V dw_load(const uint8_t* p, int n) {
  if constexpr (Tail) {
    return T::load_tail(p, n);
  } else {
    return T::load(p);
  }
}

// One channel block [c0, c0 + B) (Tail: [c0, c0 + n)) of one output pixel, taps
// from a pointer list.
template <class T, int NP, bool Tail>
inline void dw_block_ptrs(const uint8_t* const* ptr, int np_rt, const typename T::V* wr, int64_t c0, int n,
                          int32_t* out) {
  using V = typename T::V;
  const int np = NP ? NP : np_rt;
  V lo = T::zero(), hi = T::zero();
  for (int p = 0; p < np; ++p) {
    const V xa = dw_load<T, Tail>(ptr[2 * p] + c0, n);
    const V xb = dw_load<T, Tail>(ptr[2 * p + 1] + c0, n);
    lo = T::add(lo, T::madd(T::unpacklo(xa, xb), wr[2 * p]));
    hi = T::add(hi, T::madd(T::unpackhi(xa, xb), wr[2 * p + 1]));
  }
  T::store(out, lo, hi, n);
}

// Same for an interior pixel of a KH x KW kernel: tap (i, j) at prow[i] + j * dC.
template <class T, int KH, int KW, bool Tail>
inline void dw_block_rows(const uint8_t* const* prow, int64_t dC, const typename T::V* wr, int n, int32_t* out) {
  using V = typename T::V;
  constexpr int NT = KH * KW;
  V lo = T::zero(), hi = T::zero();
  for (int p = 0; p < (NT + 1) / 2; ++p) {
    const int ta = 2 * p, tb = 2 * p + 1 < NT ? 2 * p + 1 : 2 * p;
    const V xa = dw_load<T, Tail>(prow[ta / KW] + (ta % KW) * dC, n);
    const V xb = dw_load<T, Tail>(prow[tb / KW] + (tb % KW) * dC, n);
    lo = T::add(lo, T::madd(T::unpacklo(xa, xb), wr[2 * p]));
    hi = T::add(hi, T::madd(T::unpackhi(xa, xb), wr[2 * p + 1]));
  }
  T::store(out, lo, hi, n);
}

// Interior pixels of a 3x3 kernel with column dilation 1 and column stride S = 1
// or 2: the input columns are shared by neighbouring outputs (S = 1: 3 outputs,
// S = 2: 2 outputs share the even columns), so each is loaded, widened and
// interleaved once: rows (0, 1) as one pair, row 2 with a zero partner; the
// output q is sum over j of madd(col[S * q + j], wcol[j]). `count`
// consecutive outputs from the row pointers prow (rows outside the image point
// into the pad row and do not advance).
template <class T, bool Tail, int S>
inline void dw_interior_3x3(const uint8_t* const* prow_in, const bool* yok, const int8_t* w, int64_t ldw,
                               int64_t C, int n, int64_t count, int32_t* out, int64_t ldacc) {
  using V = typename T::V;
  V w01lo[3], w01hi[3], w2lo[3], w2hi[3];
  for (int j = 0; j < 3; ++j) {
    const V a = T::widen_w(w + j * ldw), b = T::widen_w(w + (3 + j) * ldw), c = T::widen_w(w + (6 + j) * ldw);
    w01lo[j] = T::unpacklo(a, b);
    w01hi[j] = T::unpackhi(a, b);
    w2lo[j] = T::unpacklo(c, T::zero());
    w2hi[j] = T::unpackhi(c, T::zero());
  }
  const uint8_t* r0 = prow_in[0];
  const uint8_t* r1 = prow_in[1];
  const uint8_t* r2 = prow_in[2];
  const int64_t s0 = yok[0] ? C : 0, s1 = yok[1] ? C : 0, s2 = yok[2] ? C : 0;
  struct Col {
    V a, b, c, d;
  };
  auto column = [&](const uint8_t* p0, const uint8_t* p1, const uint8_t* p2) {
    const V x0 = dw_load<T, Tail>(p0, n), x1 = dw_load<T, Tail>(p1, n), x2 = dw_load<T, Tail>(p2, n);
    return Col{T::unpacklo(x0, x1), T::unpackhi(x0, x1), T::unpacklo(x2, T::zero()), T::unpackhi(x2, T::zero())};
  };
  // r* point at the first column of the current output.
  Col c0 = column(r0, r1, r2);
  Col c1 = S == 1 ? column(r0 + s0, r1 + s1, r2 + s2) : c0;
  for (int64_t q = 0; q < count; ++q) {
    if constexpr (S == 2) {
      c1 = column(r0 + s0, r1 + s1, r2 + s2);
    }
    const Col c2 = column(r0 + 2 * s0, r1 + 2 * s1, r2 + 2 * s2);
    V lo = T::add(T::madd(c0.a, w01lo[0]), T::madd(c0.c, w2lo[0]));
    V hi = T::add(T::madd(c0.b, w01hi[0]), T::madd(c0.d, w2hi[0]));
    lo = T::add(lo, T::add(T::madd(c1.a, w01lo[1]), T::madd(c1.c, w2lo[1])));
    hi = T::add(hi, T::add(T::madd(c1.b, w01hi[1]), T::madd(c1.d, w2hi[1])));
    lo = T::add(lo, T::add(T::madd(c2.a, w01lo[2]), T::madd(c2.c, w2lo[2])));
    hi = T::add(hi, T::add(T::madd(c2.b, w01hi[2]), T::madd(c2.d, w2hi[2])));
    T::store(out + q * ldacc, lo, hi, n);
    if constexpr (S == 1) {
      c0 = c1;
      c1 = c2;
    } else {
      c0 = c2;
    }
    r0 += S * s0;
    r1 += S * s1;
    r2 += S * s2;
  }
}

// Small buffers on the stack, larger ones on the heap.
template <class E, size_t N>
struct DwBuf {
  E small[N];
  std::unique_ptr<E[]> big;
  E* get(size_t n) {
    if (n <= N) {
      return small;
    }
    big.reset(new E[n]);
    return big.get();
  }
};

// KH, KW > 0: the kernel size, known at compile time (interior pixels read taps
// from row pointers); 0: any size (pointer lists everywhere).
template <class T, int KH, int KW>
void dw_acc_row_k(const uint8_t* x, const DepthwiseGeometry& g, const int8_t* w, int64_t ldw, uint8_t pad,
                  int64_t oh, int64_t ow0, int64_t ow1, int32_t* acc, int64_t ldacc) {
  using V = typename T::V;
  constexpr int NT = KH * KW;
  constexpr int NP = (NT + 1) / 2;
  const int nt = NT ? NT : g.kh * g.kw;
  const int np = (nt + 1) / 2;
  const int64_t C = g.C;
  if (ow1 <= ow0 || C <= 0) {
    return;
  }
  const int64_t nb = (C + T::B - 1) / T::B;
  const int64_t nfull = C / T::B;
  const int64_t dC = int64_t{g.dw} * C;

  // Interleaved int16 weights: [block][pair][lo, hi].
  // (A byte buffer aligned by hand: unique_ptr<V[]> would drop V's attributes.)
  const size_t nv = static_cast<size_t>(nb * np * 2);
  DwBuf<unsigned char, 16384> wstore;
  V* const wbuf =
      reinterpret_cast<V*>((reinterpret_cast<uintptr_t>(wstore.get(nv * sizeof(V) + 64)) + 63) & ~uintptr_t{63});
  for (int64_t b = 0; b < nb; ++b) {
    for (int p = 0; p < np; ++p) {
      const V wa = T::widen_w(w + int64_t{2 * p} * ldw + b * T::B);
      const V wb = 2 * p + 1 < nt ? T::widen_w(w + int64_t{2 * p + 1} * ldw + b * T::B) : T::zero();
      wbuf[(b * np + p) * 2] = T::unpacklo(wa, wb);
      wbuf[(b * np + p) * 2 + 1] = T::unpackhi(wa, wb);
    }
  }
  // Pad bytes for the taps outside the image: read at [c0, c0 + B) by pointer
  // lists, and at [j * dC + c0, j * dC + c0 + B) for the rows outside the image
  // in the interior.
  const size_t padlen = static_cast<size_t>(nb * T::B + (KW ? int64_t{KW - 1} * dC : 0));
  DwBuf<uint8_t, 4096> padstore;
  uint8_t* const padrow = padstore.get(padlen);
  std::memset(padrow, pad, padlen);

  int64_t ys_s[KH ? KH : 1];
  bool yok_s[KH ? KH : 1];
  DwBuf<int64_t, 16> ys_d;
  DwBuf<bool, 16> yok_d;
  int64_t* const ys = KH ? ys_s : ys_d.get(static_cast<size_t>(g.kh));
  bool* const yok = KH ? yok_s : yok_d.get(static_cast<size_t>(g.kh));
  for (int i = 0; i < g.kh; ++i) {
    ys[i] = oh * g.sh - g.ph + int64_t{i} * g.dh;
    yok[i] = ys[i] >= 0 && ys[i] < g.H;
  }
  DwBuf<int64_t, 64> step_d;
  int64_t* const step = step_d.get(static_cast<size_t>(2 * np));

  // Interior columns: every tap column inside the image,
  // ow * sw - pw >= 0 and ow * sw - pw + (kw - 1) * dw <= W - 1.
  const int64_t span = int64_t{g.kw - 1} * g.dw;
  int64_t lo_ow = (g.pw + g.sw - 1) / g.sw;
  const int64_t num = g.W - 1 - span + g.pw;
  int64_t hi_ow = num < 0 ? 0 : num / g.sw + 1;
  lo_ow = std::clamp(lo_ow, ow0, ow1);
  hi_ow = std::clamp(hi_ow, lo_ow, ow1);
  // Tap pointers of the border pixels [ow0, lo_ow) and [hi_ow, ow1) (computed once
  // for all channel blocks), then of the first interior pixel.
  const int64_t nleft = lo_ow - ow0, nright = ow1 - hi_ow;
  const size_t nptr = static_cast<size_t>((nleft + nright + 1) * 2 * np);
  DwBuf<const uint8_t*, 1024> ptrstore;
  const uint8_t** const bptr = ptrstore.get(nptr);
  for (int64_t k = 0; k < nleft; ++k) {
    dw_tap_ptrs(x, g, padrow, ys, yok, ow0 + k, nt, bptr + k * 2 * np);
  }
  for (int64_t k = 0; k < nright; ++k) {
    dw_tap_ptrs(x, g, padrow, ys, yok, hi_ow + k, nt, bptr + (nleft + k) * 2 * np);
  }
  const uint8_t** const ptr = bptr + (nleft + nright) * 2 * np;
  if constexpr (!NT) {
    for (int t = 0; t < 2 * np; ++t) {
      const int i = (t < nt ? t : nt - 1) / g.kw;
      step[t] = yok[i] ? int64_t{g.sw} * C : 0;
    }
  }
  const int64_t sC = int64_t{g.sw} * C;

  auto run_block = [&](auto tail, int64_t b) {
    constexpr bool Tail = decltype(tail)::value;
    const int64_t c0 = b * T::B;
    const int n = Tail ? static_cast<int>(C - c0) : T::B;
    // The block's weights, in registers when they fit.
    V wr_s[NT ? 2 * NP : 1];
    const V* wr = wbuf + b * np * 2;
    if constexpr (NT > 0) {
      for (int k = 0; k < 2 * NP; ++k) {
        wr_s[k] = wr[k];
      }
      wr = wr_s;
    }
    int64_t ow = ow0;
    for (; ow < lo_ow; ++ow) {
      dw_block_ptrs<T, NP, Tail>(bptr + (ow - ow0) * 2 * np, np, wr, c0, n, acc + (ow - ow0) * ldacc + c0);
    }
    if constexpr (KH == 3 && KW == 3) {
      if (ow < hi_ow && (g.sw == 1 || g.sw == 2) && g.dw == 1) {
        const uint8_t* prow[3];
        for (int i = 0; i < 3; ++i) {
          prow[i] = (yok[i] ? x + (ys[i] * g.W + ow * g.sw - g.pw) * C : padrow) + c0;
        }
        int32_t* const out = acc + (ow - ow0) * ldacc + c0;
        if (g.sw == 1) {
          dw_interior_3x3<T, Tail, 1>(prow, yok, w + c0, ldw, C, n, hi_ow - ow, out, ldacc);
        } else {
          dw_interior_3x3<T, Tail, 2>(prow, yok, w + c0, ldw, C, n, hi_ow - ow, out, ldacc);
        }
        ow = hi_ow;
      }
    }
    if (ow < hi_ow) {
      if constexpr (NT > 0) {
        const uint8_t* prow[KH];
        int64_t rstep[KH];
        for (int i = 0; i < KH; ++i) {
          prow[i] = (yok[i] ? x + (ys[i] * g.W + ow * g.sw - g.pw) * C : padrow) + c0;
          rstep[i] = yok[i] ? sC : 0;
        }
        for (;;) {
          dw_block_rows<T, KH, KW, Tail>(prow, dC, wr, n, acc + (ow - ow0) * ldacc + c0);
          if (++ow >= hi_ow) {
            break;
          }
          for (int i = 0; i < KH; ++i) {
            prow[i] += rstep[i];
          }
        }
      } else {
        dw_tap_ptrs(x, g, padrow, ys, yok, ow, nt, ptr);
        for (;;) {
          dw_block_ptrs<T, NP, Tail>(ptr, np, wr, c0, n, acc + (ow - ow0) * ldacc + c0);
          if (++ow >= hi_ow) {
            break;
          }
          for (int t = 0; t < 2 * np; ++t) {
            ptr[t] += step[t];
          }
        }
      }
    }
    for (; ow < ow1; ++ow) {
      dw_block_ptrs<T, NP, Tail>(bptr + (nleft + ow - hi_ow) * 2 * np, np, wr, c0, n,
                                 acc + (ow - ow0) * ldacc + c0);
    }
  };
  for (int64_t b = 0; b < nfull; ++b) {
    run_block(std::false_type{}, b);
  }
  if (nfull < nb) {
    run_block(std::true_type{}, nfull);
  }
}

template <class T>
void dw_acc_row(const uint8_t* x, const DepthwiseGeometry& g, const int8_t* w, int64_t ldw, uint8_t pad, int64_t oh,
                int64_t ow0, int64_t ow1, int32_t* acc, int64_t ldacc) {
  if (g.kh == 3 && g.kw == 3) {
    return dw_acc_row_k<T, 3, 3>(x, g, w, ldw, pad, oh, ow0, ow1, acc, ldacc);
  }
  if (g.kh == 5 && g.kw == 5) {
    return dw_acc_row_k<T, 5, 5>(x, g, w, ldw, pad, oh, ow0, ow1, acc, ldacc);
  }
  if (g.kh == 7 && g.kw == 7) {
    return dw_acc_row_k<T, 7, 7>(x, g, w, ldw, pad, oh, ow0, ow1, acc, ldacc);
  }
  if (g.kh == 1 && g.kw == 1) {
    return dw_acc_row_k<T, 1, 1>(x, g, w, ldw, pad, oh, ow0, ow1, acc, ldacc);
  }
  return dw_acc_row_k<T, 0, 0>(x, g, w, ldw, pad, oh, ow0, ow1, acc, ldacc);
}

} // namespace
} // namespace q8::cpu::conv
