"""The int8 convolution ops on the CPU: pack_conv_weight, unpack_conv_weight and conv2d.

References (tests/python/conv_reference.py):
  * exact: the op's quantization of the input, an exact integer convolution
    (float64 F.conv2d over integer-valued tensors) and the float32 epilogue in the
    op's order, so float and uint8 outputs must match bit for bit, on every ISA
    family this CPU supports (the integers are exact on every path and the epilogue
    is the same scalar float code);
  * approximate: dequantize-then-F.conv2d within the quantization error.
"""
import pytest
import torch
import torch.nn.functional as F

import q8  # noqa: F401  (loads the ops)
from q8 import ops as qops

import conv_reference as ref

OPS = torch.ops.q8
ISAS = OPS._supported_cpu_isas()


def each_isa():
    best = OPS._get_cpu_isa()
    try:
        for isa in ISAS:
            OPS._set_cpu_isa(isa)
            yield isa
    finally:
        OPS._set_cpu_isa(best)


def make_weight(oc, cg, kh, kw, seed=0):
    g = torch.Generator().manual_seed(seed)
    w8 = torch.randint(-127, 128, (oc, cg, kh, kw), generator=g, dtype=torch.int8)
    ws = torch.rand(oc, generator=g) * 0.02 + 0.001
    return w8, ws


def assert_bits(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    if a.is_floating_point():
        af, bf = a.float(), b.float()
        same = (af == bf) | (torch.isnan(af) & torch.isnan(bf))
        assert bool(same.all()), f"{int((~same).sum())} of {a.numel()} differ, max {(af - bf).abs().nan_to_num().max()}"
    else:
        assert torch.equal(a, b), f"{int((a != b).sum())} of {a.numel()} differ"


# (N, C, H, W, OC, k, stride, padding, dilation, groups)
SHAPES = [
    (2, 8, 9, 7, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1),      # 3x3 same padding
    (1, 5, 11, 10, 7, (3, 2), (2, 1), (1, 0), (1, 2), 1),     # odd channels (C % 4 != 0), asymmetric
    (2, 16, 8, 8, 70, (1, 1), (1, 1), (0, 0), (1, 1), 1),     # 1x1, OC not a multiple of 16/64
    (1, 12, 7, 9, 6, (3, 3), (2, 2), (2, 1), (2, 1), 3),      # grouped, Cg = 4
    (2, 6, 6, 5, 4, (2, 2), (1, 1), (1, 1), (1, 1), 2),       # grouped, Cg = 3
    (1, 9, 10, 8, 9, (3, 3), (1, 2), (1, 1), (1, 1), 9),      # depthwise
    (2, 20, 7, 7, 20, (5, 5), (2, 2), (2, 2), (1, 1), 20),    # depthwise 5x5 stride 2
    (1, 4, 5, 5, 8, (3, 3), (1, 1), (0, 0), (1, 1), 4),       # channel multiplier 2 (GEMM path)
    (1, 3, 13, 1, 10, (4, 1), (3, 1), (2, 0), (1, 1), 1),     # width 1 (a conv1d)
]

# 1x1 stride-1 unpadded convolutions and other whole-panel cases (the CPU kernel's
# transposing panel builder when Cg % 4 == 0): pixel counts not a multiple of the 6-row panel, Cg below / at / above
# a 16-byte multiple, grouped (each group's channel offset), Cg % 4 != 0 (general path).
SHAPES_PANEL = [
    (2, 4, 5, 7, 9, (1, 1), (1, 1), (0, 0), (1, 1), 1),       # Cg = 4: only whole 4-byte tails
    (1, 20, 7, 5, 33, (1, 1), (1, 1), (0, 0), (1, 1), 1),     # Cg = 20: one 16-byte step + a tail
    (2, 72, 3, 11, 130, (1, 1), (1, 1), (0, 0), (1, 1), 2),   # grouped, Cg = 36, OC per group 65
    (1, 64, 6, 6, 80, (1, 1), (1, 1), (0, 0), (2, 2), 1),     # 36 pixels (whole panels), dilation ignored
    (1, 18, 5, 5, 12, (1, 1), (1, 1), (0, 0), (1, 1), 3),     # Cg = 6: not a multiple of 4
    # whole 6-row panels of larger kernels (taps inside the image transposed, edge taps row by row)
    (2, 20, 9, 8, 24, (3, 3), (1, 1), (1, 1), (1, 1), 1),     # 3x3 same padding, Cg = 20
    (1, 32, 10, 7, 18, (3, 2), (2, 1), (2, 0), (1, 2), 2),    # grouped, strided, dilated, Cg = 16
    (1, 8, 6, 6, 8, (1, 1), (2, 2), (1, 1), (1, 1), 1),       # 1x1 with padding and stride
    # larger images: many panels of 6 rows inside one output row with every tap inside the image (build_row_ptrs'
    # first case), and panels that cross output rows
    (2, 16, 14, 13, 20, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (1, 8, 23, 25, 16, (3, 3), (2, 2), (1, 1), (1, 1), 1),    # stride 2
    (1, 12, 15, 17, 8, (3, 3), (1, 1), (1, 1), (2, 1), 1),    # row dilation 2
]


def out_size(shape):
    """(OH, OW) of a SHAPES-style case."""
    n, c, h, w, oc, k, s, p, d, g = shape
    return tuple((size + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i, size in enumerate((h, w)))


def run_case(shape, dtype=torch.float32, memory_format=torch.contiguous_format, bias=True, seed=0, **kw):
    n, c, h, w, oc, k, s, p, d, g = shape
    w8, ws = make_weight(oc, c // g, *k, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = (torch.randn(n, c, h, w, generator=gen) * 2 + 0.3).to(dtype).contiguous(memory_format=memory_format)
    b = torch.randn(oc, generator=gen) if bias else None
    packed = qops.pack_conv_weight(w8, g)
    out = qops.conv2d(x, packed, ws, b, k, s, p, d, g, **kw)
    expected = ref.conv2d(x, w8, ws, b, s, p, d, g, **kw)
    return x, w8, ws, b, out, expected


@pytest.mark.parametrize("shape", SHAPES + SHAPES_PANEL)
def test_conv2d_dynamic_exact_on_every_isa(shape):
    for isa in each_isa():
        for mf in (torch.contiguous_format, torch.channels_last):
            x, w8, ws, b, out, expected = run_case(shape, memory_format=mf)
            assert out.is_contiguous(memory_format=torch.channels_last)
            assert_bits(out, expected)
    # and within the quantization error of dequantize-then-F.conv2d
    n, c, h, w, oc, k, s, p, d, g = shape
    approx = ref.dequantized_conv2d(x, w8, ws, b, s, p, d, g)
    step = (x.amax() - x.amin().clamp(max=0)) / 255  # input quantization step (per-sample max)
    bound = step * (w8.abs().float() * ws.reshape(-1, 1, 1, 1)).sum((1, 2, 3)).max() / 2 * 1.01 + 1e-5
    assert float((out - approx).abs().max()) <= float(bound)


@pytest.mark.parametrize("shape", SHAPES[:6] + SHAPES_PANEL)
def test_conv2d_static_fused_epilogue_exact_on_every_isa(shape):
    n, c, h, w, oc, k, s, p, d, g = shape
    oh, ow = out_size(shape)
    gen = torch.Generator().manual_seed(5)
    st = dict(activation="static", input_scale=torch.tensor(0.031), input_zero_point=torch.tensor(117))
    res_f = torch.randn(n, oc, oh, ow, generator=gen)
    res_u8 = torch.randint(0, 256, (n, oc, oh, ow), generator=gen, dtype=torch.uint8).contiguous(
        memory_format=torch.channels_last)
    variants = [
        dict(),
        dict(clamp_min=0.0),
        dict(clamp_min=0.0, clamp_max=0.5),
        dict(residual=res_f, clamp_min=-0.25),
        dict(residual=res_u8, residual_scale=torch.tensor(0.02), residual_zero_point=torch.tensor(128),
             clamp_min=0.0, output_scale=torch.tensor(0.011), output_zero_point=torch.tensor(3)),
        dict(output_scale=torch.tensor(0.05), output_zero_point=torch.tensor(128)),
    ]
    for isa in each_isa():
        for v in variants:
            _, _, _, _, out, expected = run_case(shape, **st, **v)
            assert out.is_contiguous(memory_format=torch.channels_last)
            assert_bits(out, expected)


# A float residual with uint8 output (AVX-512: the one-clamp requantization, with NaN y -> the zero point): whole 32-
# and 64-column blocks of the fused tile and a 16-column tail, a partial 6-row panel, the tap-skipping path (small
# images), depthwise (the separate epilogue) and 1x1; residuals with NaN, +-Inf and values beyond the output range.
SHAPES_RES_F = [
    (2, 16, 7, 9, 96, (3, 3), (1, 1), (1, 1), (1, 1), 1),     # 96 = 64 + 32 columns, 63 pixels: a partial panel
    (1, 8, 5, 6, 40, (3, 3), (1, 1), (1, 1), (1, 1), 1),      # 40 = 32 + a tail of 8
    (16, 32, 4, 4, 64, (3, 3), (1, 1), (1, 1), (1, 1), 1),    # tap skipping (9 classes)
    (2, 24, 6, 7, 24, (3, 3), (1, 1), (1, 1), (1, 1), 24),    # depthwise
    (2, 64, 5, 5, 130, (1, 1), (1, 1), (0, 0), (1, 1), 1),    # 1x1, 130 = 2 x 64 + 2
]


@pytest.mark.parametrize("shape", SHAPES_RES_F)
def test_conv2d_float_residual_uint8_output_exact_on_every_isa(shape):
    n, c, h, w, oc, k, s, p, d, g = shape
    oh, ow = out_size(shape)
    gen = torch.Generator().manual_seed(13)
    res = torch.randn(n, oc, oh, ow, generator=gen) * 2
    flat = res.view(-1)
    idx = torch.randperm(flat.numel(), generator=gen)
    flat[idx[:7]] = float("nan")
    flat[idx[7:12]] = float("inf")
    flat[idx[12:17]] = -float("inf")
    flat[idx[17:40]] *= 1e3  # beyond the output range either way
    st = dict(activation="static", input_scale=torch.tensor(0.031), input_zero_point=torch.tensor(117))
    variants = [
        dict(clamp_min=0.0, output_scale=torch.tensor(0.03), output_zero_point=torch.tensor(0)),   # ReLU: no lower clamp
        dict(clamp_min=-0.25, output_scale=torch.tensor(0.02), output_zero_point=torch.tensor(40)),  # a lower clamp
        dict(output_scale=torch.tensor(0.05), output_zero_point=torch.tensor(128)),
        dict(clamp_min=0.0, clamp_max=6.0, output_scale=torch.tensor(6 / 255), output_zero_point=torch.tensor(0)),
    ]
    for memory_format in (torch.contiguous_format, torch.channels_last):
        r = res.contiguous(memory_format=memory_format)
        for isa in each_isa():
            for v in variants:
                _, _, _, _, out, expected = run_case(shape, residual=r, **st, **v)
                assert out.dtype == torch.uint8
                assert_bits(out, expected)
                assert bool((out.contiguous().view(-1)[idx[:7]] == v["output_zero_point"]).all())  # NaN: the zp


def test_conv2d_uint8_output_requantization_edges():
    # uint8 output at the edges of the requantization, on every ISA (AVX-512 folds the clamps into one clamp of
    # y / output_scale when y cannot be NaN): exact ties (a zero weight makes y = bias, and bias = (k + 1/2) * 2^-3
    # with output_scale 2^-3 puts y / scale on .5), clamps outside the output range or equal,
    # saturating and vanishing output scales, and non-finite terms (which keep the general path).
    n, c, h, w, oc = 2, 8, 5, 7, 40  # 35 pixels: whole 6-row panels and a partial one; 40 columns: a tail of 8
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(n, c, h, w, generator=gen)
    st = dict(activation="static", input_scale=torch.tensor(0.031), input_zero_point=torch.tensor(117))
    w_rand, ws = make_weight(oc, c, 3, 3, seed=4)
    ties = (torch.arange(oc, dtype=torch.float32) - 20.5) * 0.125
    cases = [
        (torch.zeros_like(w_rand), ties, dict(output_scale=torch.tensor(0.125), output_zero_point=torch.tensor(7))),
        (torch.zeros_like(w_rand), ties, dict(output_scale=torch.tensor(0.125), output_zero_point=torch.tensor(0),
                                              clamp_min=0.0, clamp_max=1.0)),
        (w_rand, None, dict(output_scale=torch.tensor(0.03), output_zero_point=torch.tensor(0), clamp_min=0.0,
                            clamp_max=6.0)),
        (w_rand, None, dict(output_scale=torch.tensor(0.03), output_zero_point=torch.tensor(9), clamp_min=0.5,
                            clamp_max=0.5)),  # equal clamps: every value is clamp_max
        (w_rand, None, dict(output_scale=torch.tensor(0.01), output_zero_point=torch.tensor(200), clamp_min=100.0)),
        (w_rand, None, dict(output_scale=torch.tensor(0.01), output_zero_point=torch.tensor(20), clamp_max=-100.0)),
        (w_rand, None, dict(output_scale=torch.tensor(1e-6), output_zero_point=torch.tensor(128))),
        (w_rand, None, dict(output_scale=torch.tensor(1e4), output_zero_point=torch.tensor(255))),
        (w_rand, torch.full((oc,), float("inf")), dict(output_scale=torch.tensor(0.05),
                                                       output_zero_point=torch.tensor(3))),
        (w_rand, torch.full((oc,), float("nan")), dict(output_scale=torch.tensor(0.05),
                                                       output_zero_point=torch.tensor(3), clamp_min=0.0)),
    ]
    for w8, b, kw in cases:
        packed = qops.pack_conv_weight(w8, 1)
        expected = ref.conv2d(x, w8, ws, b, 1, 1, 1, 1, **st, **kw)
        for isa in each_isa():
            out = qops.conv2d(x, packed, ws, b, (3, 3), (1, 1), (1, 1), (1, 1), 1, **st, **kw)
            assert out.dtype == torch.uint8
            assert_bits(out, expected)
    # sx * sw overflows float32 (an infinite y times a zero integer sum is NaN): the zero point, as the reference
    big = torch.full((oc,), 3e38)
    packed = qops.pack_conv_weight(w_rand, 1)
    kw = dict(activation="static", input_scale=torch.tensor(10.0), input_zero_point=torch.tensor(0),
              output_scale=torch.tensor(0.05), output_zero_point=torch.tensor(3))
    expected = ref.conv2d(x, w_rand, big, None, 1, 1, 1, 1, **kw)
    for isa in each_isa():
        assert_bits(qops.conv2d(x, packed, big, None, (3, 3), (1, 1), (1, 1), (1, 1), 1, **kw), expected)


# Small images, where the AVX-512 VNNI kernel sorts the output pixels by the taps inside the image and skips the
# padding taps (one set of input qparams, groups == 1): every class shape, a class with no tap at all (pixels entirely
# in the padding), classes of one or two pixels (tiles filled up with copies), Cg % 4 != 0 at the end of the buffer.
SHAPES_SMALL = [
    (16, 32, 4, 4, 40, (3, 3), (1, 1), (1, 1), (1, 1), 1),    # 9 classes, batch 16, a 40-column tail
    (3, 5, 7, 7, 20, (3, 3), (2, 2), (1, 1), (1, 1), 1),      # stride 2: only top / left padding; C = 5
    (2, 8, 3, 5, 17, (3, 3), (1, 1), (3, 2), (1, 1), 1),      # padding wider than the kernel reach: empty classes
    (1, 12, 6, 6, 70, (5, 5), (1, 1), (2, 2), (2, 2), 1),     # 5x5 dilated
    (2, 3, 4, 9, 8, (3, 5), (1, 2), (2, 1), (1, 1), 1),       # asymmetric kernel / stride / padding, C = 3
    (5, 64, 2, 2, 64, (3, 3), (1, 1), (1, 1), (1, 1), 1),     # 2x2: 4 classes of one pixel per sample
]


@pytest.mark.parametrize("shape", SHAPES_SMALL)
def test_conv2d_small_images_exact_on_every_isa(shape):
    n, c, h, w, oc, k, s, p, d, g = shape
    oh, ow = out_size(shape)
    gen = torch.Generator().manual_seed(9)
    st = dict(activation="static", input_scale=torch.tensor(0.027), input_zero_point=torch.tensor(101))
    res_u8 = torch.randint(0, 256, (n, oc, oh, ow), generator=gen, dtype=torch.uint8).contiguous(
        memory_format=torch.channels_last)
    variants = [
        dict(**st),
        dict(**st, clamp_min=0.0, output_scale=torch.tensor(0.04), output_zero_point=torch.tensor(5)),
        dict(**st, residual=res_u8, residual_scale=torch.tensor(0.02), residual_zero_point=torch.tensor(128),
             clamp_min=0.0, output_scale=torch.tensor(0.03), output_zero_point=torch.tensor(0)),
        dict(activation="dynamic"),  # one set of qparams only at batch 1
    ]
    for isa in each_isa():
        for v in variants:
            _, _, _, _, out, expected = run_case(shape, **v)
            assert_bits(out, expected)
            if n > 1:  # batch 1 (also one set of qparams in dynamic mode)
                v1 = dict(v, residual=v["residual"][:1]) if "residual" in v else v
                _, _, _, _, out1, expected1 = run_case((1,) + shape[1:], **v1)
                assert_bits(out1, expected1)


# Depthwise 3x3 with uint8 output: the fused AVX-512 VNNI kernel (conv_depthwise_vnni) where it applies, the
# vpmaddwd kernels and the separate epilogue elsewhere. Channel groups of 64 with and without a tail, strides 1
# and 2, padding 0 / 1 / wider than the kernel's reach, odd sizes, several samples.
SHAPES_DW = [
    (2, 80, 9, 11, 80, (3, 3), (1, 1), (1, 1), (1, 1), 80),      # one group of 64 + a 16-channel tail
    (1, 144, 8, 7, 144, (3, 3), (2, 2), (1, 1), (1, 1), 144),    # stride 2, odd width
    (3, 9, 5, 6, 9, (3, 3), (1, 1), (0, 0), (1, 1), 9),          # no padding, fewer than 64 channels
    (2, 128, 3, 3, 128, (3, 3), (1, 1), (2, 2), (1, 1), 128),    # padding wider than the kernel's reach
    (1, 64, 6, 5, 64, (3, 3), (2, 2), (0, 1), (1, 1), 64),       # stride 2, asymmetric padding
]


@pytest.mark.parametrize("shape", SHAPES_DW)
def test_conv2d_depthwise_uint8_output_exact_on_every_isa(shape):
    n = shape[0]
    st = dict(activation="static", input_scale=torch.tensor(0.029), input_zero_point=torch.tensor(97))
    variants = [
        dict(**st, clamp_min=0.0, output_scale=torch.tensor(0.04), output_zero_point=torch.tensor(0)),  # ReLU
        dict(**st, clamp_min=0.0, clamp_max=0.3, output_scale=torch.tensor(0.003),
             output_zero_point=torch.tensor(2)),  # ReLU6-like, both clamps inside the uint8 range
        dict(**st, output_scale=torch.tensor(0.02), output_zero_point=torch.tensor(128)),
        dict(activation="dynamic", output_scale=torch.tensor(0.05), output_zero_point=torch.tensor(7)),
    ]
    for isa in each_isa():
        for v in variants:
            for bias in (True, False):
                _, _, _, _, out, expected = run_case(shape, bias=bias, **v)
                assert out.dtype == torch.uint8
                assert_bits(out, expected)
    # a sample with NaN takes the other kernels; the other samples keep their codes
    if n > 1:
        v = variants[3]
        x, w8, ws, b, out, _ = run_case(shape, **v)
        x = x.clone()
        x[0, 0, 0, 0] = float("nan")
        k, s, p, d, g = shape[5:]
        packed = qops.pack_conv_weight(w8, g)
        got = qops.conv2d(x, packed, ws, b, k, s, p, d, g, **v)
        assert_bits(got, ref.conv2d(x, w8, ws, b, s, p, d, g, **v))
        assert_bits(got[1:], out[1:])


def test_conv2d_uint8_input_matches_float_input_quantized_the_same_way():
    shape = (2, 8, 9, 7, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1)
    n, c, h, w, oc, k, s, p, d, g = shape
    w8, ws = make_weight(oc, c // g, *k)
    packed = qops.pack_conv_weight(w8, g)
    sc, zp = torch.tensor(0.02), torch.tensor(100, dtype=torch.int32)
    x = torch.randn(n, c, h, w)
    xq, *_ = ref.quantize_input(x, "static", sc, zp)
    for isa in each_isa():
        for xin in (xq, xq.contiguous(memory_format=torch.channels_last), xq[:, :, :, :]):
            out = qops.conv2d(xin, packed, ws, None, k, s, p, d, g, "static", sc, zp)
            assert out.dtype == torch.float32
            assert_bits(out, ref.conv2d(xin, w8, ws, None, s, p, d, g, "static", sc, zp))
            assert_bits(out, qops.conv2d(x, packed, ws, None, k, s, p, d, g, "static", sc, zp))
        # uint8 -> uint8 chain (what q8.lower builds)
        o8 = qops.conv2d(xq, packed, ws, None, k, s, p, d, g, "static", sc, zp, clamp_min=0.0,
                         output_scale=torch.tensor(0.1), output_zero_point=torch.tensor(0))
        assert o8.dtype == torch.uint8
        assert_bits(o8, ref.conv2d(xq, w8, ws, None, s, p, d, g, "static", sc, zp, clamp_min=0.0,
                                   output_scale=torch.tensor(0.1), output_zero_point=torch.tensor(0)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_conv2d_half_inputs_give_their_dtype(dtype):
    for shape in (SHAPES[0], SHAPES[5]):
        for isa in each_isa():
            _, _, _, _, out, expected = run_case(shape, dtype=dtype)
            assert out.dtype == dtype
            assert_bits(out, expected)
            _, _, _, _, out, expected = run_case(shape, dtype=dtype, activation="static",
                                                 input_scale=torch.tensor(0.05), input_zero_point=torch.tensor(128))
            assert_bits(out, expected)


@pytest.mark.parametrize("c", [1, 3, 5])
def test_conv2d_nchw_float_input_quantized_as_channels_last(c):
    # A contiguous (NCHW) float input is quantized one channel run at a time (vectorized,
    # 256-pixel blocks) and interleaved into NHWC: 23 x 29 = 667 pixels make two whole
    # blocks and a tail. Exact ties (k + 0.5 steps at scale 0.25), out-of-range values,
    # NaN and Inf must give the codes of the channels_last path and of the reference.
    n, h, w, oc = 3, 23, 29, 8
    gen = torch.Generator().manual_seed(c)
    x = torch.randn(n, c, h, w, generator=gen) * 3
    ties = (torch.randint(-200, 200, (n, c, h, w), generator=gen).float() + 0.5) * 0.25
    x = torch.where(torch.rand(n, c, h, w, generator=gen) < 0.3, ties, x)
    x[0, 0, 0, :4] = torch.tensor([1e6, -1e6, 31.875, -31.875])
    x[1, c - 1, 20, 3] = float("nan")
    x[2, 0, 11, 28] = float("inf")
    w8, ws = make_weight(oc, c, 3, 3, seed=c)
    packed = qops.pack_conv_weight(w8)
    st = dict(activation="static", input_scale=torch.tensor(0.25), input_zero_point=torch.tensor(128))
    u8 = dict(output_scale=torch.tensor(0.07), output_zero_point=torch.tensor(5))
    for isa in each_isa():
        for kw in (dict(), st, dict(st, **u8)):
            args = (packed, ws, None, (3, 3), (2, 1), (1, 1), (1, 1), 1)
            out = qops.conv2d(x, *args, **kw)
            assert_bits(out, qops.conv2d(x.contiguous(memory_format=torch.channels_last), *args, **kw))
            assert_bits(out, ref.conv2d(x, w8, ws, None, (2, 1), (1, 1), (1, 1), 1, **kw))
            if out.is_floating_point():
                assert bool(out[1:].isnan().all()) and not bool(out[0].isnan().any())


def test_conv2d_nan_and_inf_samples():
    for shape in (SHAPES[0], SHAPES[5]):
        n, c, h, w, oc, k, s, p, d, g = shape
        w8, ws = make_weight(oc, c // g, *k)
        packed = qops.pack_conv_weight(w8, g)
        for bad in (float("nan"), float("inf"), -float("inf")):
            x = torch.randn(3, c, h, w)
            x[1, c - 1, h - 1, 0] = bad
            if bad < 0:  # channels_last: the vectorized quantization path
                x = x.contiguous(memory_format=torch.channels_last)
            for isa in each_isa():
                out = qops.conv2d(x, packed, ws, None, k, s, p, d, g)
                assert bool(out[1].isnan().all())
                assert not bool(out[0].isnan().any()) and not bool(out[2].isnan().any())
                assert_bits(out, ref.conv2d(x, w8, ws, None, s, p, d, g))
                o8 = qops.conv2d(x, packed, ws, None, k, s, p, d, g, "static", torch.tensor(0.1), torch.tensor(7),
                                 output_scale=torch.tensor(0.3), output_zero_point=torch.tensor(9))
                assert bool((o8[1] == 9).all())
                assert_bits(o8, ref.conv2d(x, w8, ws, None, s, p, d, g, "static", torch.tensor(0.1), torch.tensor(7),
                                           output_scale=torch.tensor(0.3), output_zero_point=torch.tensor(9)))


def test_conv2d_empty_batch_and_zero_channels():
    w8, ws = make_weight(8, 4, 3, 3)
    packed = qops.pack_conv_weight(w8, 1)
    out = qops.conv2d(torch.randn(0, 4, 5, 5), packed, ws, None, 3, 1, 1)
    assert out.shape == (0, 8, 5, 5) and out.dtype == torch.float32
    w0, ws0 = make_weight(0, 4, 3, 3)
    out = qops.conv2d(torch.randn(2, 4, 5, 5), qops.pack_conv_weight(w0, 1), ws0, None, 3)
    assert out.shape == (2, 0, 3, 3)
    one = qops.conv2d(torch.randn(1, 4, 1, 1), packed, ws, None, 3, 1, 1)
    assert one.shape == (1, 8, 1, 1)


def test_conv2d_constant_and_zero_input():
    shape = SHAPES[0]
    n, c, h, w, oc, k, s, p, d, g = shape
    w8, ws = make_weight(oc, c, *k)
    packed = qops.pack_conv_weight(w8, g)
    for x in (torch.zeros(n, c, h, w), torch.full((n, c, h, w), 3.5), torch.full((n, c, h, w), -1e30)):
        out = qops.conv2d(x, packed, ws, None, k, s, p, d, g)
        assert_bits(out, ref.conv2d(x, w8, ws, None, s, p, d, g))


@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[3], SHAPES[5], (1, 1, 3, 3, 1, (2, 2), (1, 1), (0, 0), (1, 1), 1)])
def test_pack_unpack_round_trip(shape):
    n, c, h, w, oc, k, s, p, d, g = shape
    w8, _ = make_weight(oc, c // g, *k)
    packed = qops.pack_conv_weight(w8, g)
    assert packed.dtype == torch.uint8 and packed.dim() == 1
    assert torch.equal(qops.unpack_conv_weight(packed, oc, c // g, k, g), w8)
    assert packed.numel() == qops._conv_packed_size_cpu(oc, c // g, k[0], k[1], g)


@pytest.mark.parametrize("depthwise", [False, True])
def test_tampered_packed_weight_is_refused(depthwise):
    shape = SHAPES[5] if depthwise else SHAPES[0]
    n, c, h, w, oc, k, s, p, d, g = shape
    w8, ws = make_weight(oc, c // g, *k)
    packed = qops.pack_conv_weight(w8, g)
    x = torch.randn(n, c, h, w)
    # a weight byte: unpack (every byte checked) refuses it
    t = packed.clone()
    t[200] ^= 1
    with pytest.raises(RuntimeError, match="corrupt"):
        qops.unpack_conv_weight(t, oc, c // g, k, g)
    # the header: both refuse it
    t = packed.clone()
    t[20] ^= 1
    for call in (lambda: qops.unpack_conv_weight(t, oc, c // g, k, g),
                 lambda: qops.conv2d(x, t, ws, None, k, s, p, d, g)):
        with pytest.raises(RuntimeError, match="packed_weight"):
            call()
    # the weight sums (the conv kernel checks them on every call)
    t = packed.clone()
    t[-4 if depthwise else -60] ^= 1  # the depthwise sums / the last block's row sums
    with pytest.raises(RuntimeError, match="checksum|corrupt"):
        qops.conv2d(x, t, ws, None, k, s, p, d, g)
    # truncated, a linear weight, a geometry mismatch
    with pytest.raises(RuntimeError, match="truncated|bytes"):
        qops.conv2d(x, packed[:-64].clone(), ws, None, k, s, p, d, g)
    with pytest.raises(RuntimeError, match="magic"):
        qops.conv2d(x, q8.ops.pack_weight(torch.zeros(oc, 9, dtype=torch.int8)), ws, None, k, s, p, d, g)
    with pytest.raises(RuntimeError, match="holds a"):
        qops.conv2d(x, packed, ws, None, (k[0], k[1] + 2), s, (p[0], p[1] + 1), d, g)


def test_bad_inputs_name_the_argument():
    w8, ws = make_weight(8, 4, 3, 3)
    packed = qops.pack_conv_weight(w8, 1)
    x = torch.randn(2, 4, 6, 6)
    sc, zp = torch.tensor(0.1), torch.tensor(3)
    r = torch.randn(2, 8, 4, 4)
    cases = [
        (lambda: qops.conv2d(x.double(), packed, ws, None, 3), "input must be float32, float16, bfloat16 or uint8"),
        (lambda: qops.conv2d(x[0], packed, ws, None, 3), "input must be 4-D"),
        (lambda: qops.conv2d(torch.randn(2, 5, 6, 6), packed, ws, None, 3), "holds a"),
        (lambda: qops.conv2d(torch.randn(2, 5, 6, 6), packed, ws, None, 3, groups=2), "divisible by groups"),
        (lambda: qops.conv2d(x, packed, ws.double(), None, 3), "weight_scale must be a 1-D float32"),
        (lambda: qops.conv2d(x, packed, ws[:7], None, 3), "holds a"),
        (lambda: qops.conv2d(x, packed, ws, torch.randn(7), 3), "bias must be 1-D"),
        (lambda: qops.conv2d(x, packed, ws, None, [3, 3, 3]), "kernel_size must have 2 values"),
        (lambda: qops.conv2d(x, packed, ws, None, 3, stride=0), "stride must be positive"),
        (lambda: qops.conv2d(x, packed, ws, None, 3, padding=-1), "padding must be non-negative"),
        (lambda: qops.conv2d(x, packed, ws, None, 3, dilation=0), "dilation must be positive"),
        (lambda: qops.conv2d(x, packed, ws, None, 3, groups=0), "groups must be positive"),
        (lambda: qops.conv2d(torch.randn(2, 4, 2, 2), packed, ws, None, 3), "smaller than the dilated kernel"),
        (lambda: qops.conv2d(x, packed, ws, None, 3, activation="weight_only"), "activation must be 'dynamic' or 'static'"),
        (lambda: qops.conv2d(x, packed, ws, None, 3, activation="static"), "needs the calibrated input_scale"),
        (lambda: qops.conv2d(x, packed, ws, None, 3, input_scale=sc, input_zero_point=zp), "only used with activation='static'"),
        (lambda: qops.conv2d(x.to(torch.uint8), packed, ws, None, 3), "uint8 input holds codes"),
        (lambda: qops.conv2d(x, packed, ws, None, 3, activation="static", input_scale=sc,
                             input_zero_point=torch.tensor(256)), "input_zero_point must lie in"),
        (lambda: qops.conv2d(x, packed, ws, None, 3, activation="static", input_scale=torch.tensor(0.0),
                             input_zero_point=zp), "input_scale must be finite"),
        (lambda: qops.conv2d(x, packed, ws, None, 3, activation="static", input_scale=sc.double(),
                             input_zero_point=zp), "input_scale must be a float32 tensor with one element"),
        (lambda: qops.conv2d(x, packed, ws, None, 3, residual=torch.randn(2, 8, 4, 5)), "residual must have the output's shape"),
        (lambda: qops.conv2d(x, packed, ws, None, 3, residual=r.to(torch.uint8)), "uint8 residual needs residual_scale"),
        (lambda: qops.conv2d(x, packed, ws, None, 3, residual=r, residual_scale=sc, residual_zero_point=zp),
         "only used with a uint8 residual"),
        (lambda: qops.conv2d(x, packed, ws, None, 3, residual_scale=sc), "without a residual"),
        (lambda: qops.conv2d(x, packed, ws, None, 3, residual=r.to(torch.uint8), residual_scale=sc,
                             residual_zero_point=torch.tensor(-1)), "residual_zero_point must lie in"),
        (lambda: qops.conv2d(x, packed, ws, None, 3, clamp_min=1.0, clamp_max=0.0), "clamp_min must be <= clamp_max"),
        (lambda: qops.conv2d(x, packed, ws, None, 3, clamp_min=float("nan")), "clamp_min must not be NaN"),
        (lambda: qops.conv2d(x, packed, ws, None, 3, output_scale=sc), "output_scale and output_zero_point"),
        (lambda: qops.conv2d(x, packed, ws, None, 3, output_scale=torch.tensor(-1.0), output_zero_point=zp),
         "output_scale must be finite"),
        (lambda: qops.conv2d(x, packed.to(torch.int8), ws, None, 3), "packed_weight must be a 1-D uint8"),
        (lambda: qops.pack_conv_weight(w8.float(), 1), "weight_int8 must be int8"),
        (lambda: qops.pack_conv_weight(w8[0], 1), "weight_int8 must be 4-D"),
        (lambda: qops.pack_conv_weight(w8, 3), "divisible by groups"),
        (lambda: qops.pack_conv_weight(w8, 0), "groups must be positive"),
        (lambda: qops.unpack_conv_weight(packed, 8, 4, (3, 3), 3), "divisible by groups"),
        (lambda: qops.unpack_conv_weight(packed, 8, 5, (3, 3), 1), "holds a"),
        (lambda: qops.unpack_conv_weight(packed, -1, 4, (3, 3), 1), "out_channels must be >= 0"),
    ]
    for call, msg in cases:
        with pytest.raises(RuntimeError, match=msg.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            call()


def test_conv2d_backward_raises():
    w8, ws = make_weight(8, 4, 3, 3)
    packed = qops.pack_conv_weight(w8, 1)
    x = torch.randn(1, 4, 5, 5, requires_grad=True)
    out = qops.conv2d(x, packed, ws, None, 3)
    with pytest.raises(RuntimeError):
        out.sum().backward()


def test_long_k_int64_fallback():
    # K = 3 * 3 * 7284 = 65556 > 65536 (the int32 chunk): summed in int64, still exact.
    c = 7284
    w8 = torch.full((2, c, 3, 3), 127, dtype=torch.int8)
    w8[1] = -127
    ws = torch.tensor([1e-3, 2e-3])
    x = torch.full((1, c, 3, 3), 255.0)
    sc, zp = torch.tensor(1.0), torch.tensor(0)
    out = qops.conv2d(x, qops.pack_conv_weight(w8, 1), ws, None, 3, 1, 0, 1, 1, "static", sc, zp)
    assert_bits(out, ref.conv2d(x, w8, ws, None, 1, 0, 1, 1, "static", sc, zp))


# q8.max_pool2d: uint8 codes, the codes of torch's max_pool2d of their values (a window with no tap inside the input,
# possible with a large dilation, is torch's -inf: code 0). (N, C, H, W, kernel, stride, padding, dilation, ceil_mode)
POOLS = [
    (2, 64, 16, 16, (3, 3), (2, 2), (1, 1), (1, 1), False),   # the ResNet stem's max pool
    (3, 37, 9, 11, (3, 3), (2, 2), (1, 1), (1, 1), True),     # C not a multiple of 16, ceil_mode
    (1, 130, 7, 8, (2, 2), None, (0, 0), (1, 1), False),      # stride = kernel_size
    (2, 5, 8, 9, (2, 3), (2, 1), (1, 1), (2, 1), True),       # asymmetric, dilated
    (1, 16, 5, 5, (1, 1), (2, 2), (0, 0), (1, 1), False),     # 1x1: a strided copy
    (1, 3, 3, 3, (2, 2), (2, 2), (1, 1), (4, 4), False),      # windows with no tap inside: code 0
    (2, 4, 6, 3, (2, 2), (2, 2), (1, 1), (1, 4), False),      # ... no column inside, rows inside
    (2, 7, 6, 5, (3, 3), (1, 1), (1, 1), (1, 1), True),       # stride 1
]


def pool_reference(x, kernel, stride, padding, dilation, ceil_mode):
    y = F.max_pool2d(x.float(), kernel, stride, padding, dilation, ceil_mode)
    return torch.where(torch.isinf(y), torch.zeros_like(y), y).to(torch.uint8)


@pytest.mark.parametrize("case", POOLS)
def test_max_pool2d_matches_torch_on_codes(case):
    n, c, h, w, k, s, p, d, ceil_mode = case
    gen = torch.Generator().manual_seed(21)
    x = torch.randint(0, 256, (n, c, h, w), generator=gen, dtype=torch.uint8)
    expected = pool_reference(x, k, s, p, d, ceil_mode)
    layouts = [x, x.contiguous(memory_format=torch.channels_last),
               torch.randint(0, 256, (n, c, h, 2 * w), generator=gen, dtype=torch.uint8)[..., ::2]]  # strided
    for i, xi in enumerate(layouts):
        if i == 2:
            expected = pool_reference(xi, k, s, p, d, ceil_mode)
        for isa in each_isa():  # (SSE2 / portable, and 32-byte vectors from AVX2 on)
            out = qops.max_pool2d(xi, k, s, p, d, ceil_mode)
            assert out.dtype == torch.uint8 and out.is_contiguous(memory_format=torch.channels_last)
            assert_bits(out, expected)
    if case[5] == (1, 1) and case[4] == (2, 2):
        assert bool((out == 0).any())  # the windows with no tap inside


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
def test_max_pool2d_is_the_code_of_the_max_and_empty_shapes():
    # with a scale and zero point: dequantize(pool(codes)) == pool(dequantize(codes))
    gen = torch.Generator().manual_seed(22)
    xf = torch.randn(2, 8, 10, 10, generator=gen)
    q = torch.quantize_per_tensor(xf, 0.03, 100, torch.quint8)
    out = qops.max_pool2d(q.int_repr(), 3, 2, 1)
    assert torch.equal((out.float() - 100) * 0.03, F.max_pool2d(q.dequantize(), 3, 2, 1))
    assert torch.equal(out, torch.ops.quantized.max_pool2d(q, [3, 3], [2, 2], [1, 1], [1, 1], False).int_repr())
    assert qops.max_pool2d(torch.zeros(0, 4, 6, 6, dtype=torch.uint8), 2).shape == (0, 4, 3, 3)
    assert qops.max_pool2d(torch.zeros(2, 0, 6, 6, dtype=torch.uint8), 2).shape == (2, 0, 3, 3)


def test_max_pool2d_bad_inputs():
    x = torch.randint(0, 256, (1, 4, 6, 6), dtype=torch.uint8)
    for call, msg in [
        (lambda: qops.max_pool2d(x.float(), 2), "input must be uint8"),
        (lambda: qops.max_pool2d(x[0], 2), "input must be 4-D"),
        (lambda: qops.max_pool2d(x, 3, 1, 2), "padding must be at most half the kernel size"),
        (lambda: qops.max_pool2d(x, 2, 0), "stride must be positive"),
        (lambda: qops.max_pool2d(x, 0), "kernel_size must be positive"),
        (lambda: qops.max_pool2d(x, 2, 1, 0, 0), "dilation must be positive"),
        (lambda: qops.max_pool2d(x, 7), "the input is too small"),
        (lambda: torch.ops.q8.max_pool2d(x, [2, 2, 2]), "kernel_size must have 2 values"),
    ]:
        with pytest.raises(RuntimeError, match=msg):
            call()
