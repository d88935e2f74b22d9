"""The CUDA kernels of the int8 convolution against the CPU kernels.

The CPU kernels are the reference (tests/python/test_conv_op.py checks them against
the exact plain-PyTorch reference tests/python/conv_reference.py). On CUDA
(cuda/conv.cu):
  * pack_conv_weight / unpack_conv_weight round-trip exactly, and unpack finds a
    modified byte;
  * conv2d is bit-identical to the CPU: float outputs (float32 / float16 /
    bfloat16) and uint8 outputs, "dynamic" and "static" modes, float and uint8
    inputs, float and uint8 residuals, clamps, NaN / Inf samples, every path
    (depthwise direct kernel, im2col + cuBLASLt when M > 16, the dp4a kernel
    for M <= 16, many groups and K > 65536 in int64);
  * bad arguments and a packed weight of the wrong size are refused, a modified
    header gives NaN outputs;
  * nothing synchronizes: pack + conv2d are captured in a CUDA graph and replayed.
"""
import pytest
import torch

import q8
from test_fake_quantize import assert_same

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key("q8::conv2d", "CUDA")),
    reason="no GPU, or q8 built without CUDA kernels")

DEV = "cuda"
conv2d = torch.ops.q8.conv2d
pack = torch.ops.q8.pack_conv_weight
unpack = torch.ops.q8.unpack_conv_weight

# (N, C, H, W, OC, kernel, stride, padding, dilation, groups)
SHAPES = [
    (2, 3, 9, 9, 8, (3, 3), (1, 1), (1, 1), (1, 1), 1),        # stem-like, M > 16: cuBLASLt
    (1, 16, 5, 5, 32, (3, 3), (2, 2), (1, 1), (1, 1), 1),      # M = 9: dp4a kernel
    (2, 8, 7, 7, 12, (3, 3), (1, 1), (2, 2), (2, 2), 4),       # grouped, dilated
    (2, 16, 8, 8, 16, (3, 3), (2, 2), (1, 1), (1, 1), 16),     # depthwise, stride 2
    (1, 24, 6, 5, 24, (5, 3), (1, 1), (2, 1), (1, 1), 24),     # depthwise, non-square
    (1, 4, 6, 6, 8, (3, 3), (1, 1), (1, 1), (1, 1), 4),        # channel multiplier 2 (GemmBlocks)
    (3, 32, 4, 4, 64, (1, 1), (1, 1), (0, 0), (1, 1), 1),      # pointwise
    (2, 5, 1, 17, 7, (1, 3), (1, 2), (0, 1), (1, 1), 1),       # conv1d-like, H = 1
    (1, 6, 2, 3, 5, (3, 3), (1, 1), (2, 2), (1, 1), 1),        # padding larger than the image
    (2, 64, 10, 10, 40, (3, 3), (1, 1), (1, 1), (1, 1), 8),    # 8 groups: dp4a kernel for every M
]
FLOAT_DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def cuda_conv_packed_size(oc, cg, kh, kw, groups):
    """Bytes of the CUDA pack_conv_weight output (the layout at the top of cuda/conv.cu)."""
    def rup(a, b):
        return (a + b - 1) // b * b

    if cg == 1 and oc == groups:  # Depthwise: header, int8 [KH*KW][ldw] (64-aligned end), int32 [ldw]
        ldw = rup(oc, 64)
        return 64 + rup(kh * kw * ldw, 64) + 4 * ldw
    ocg16, k16 = rup(oc // groups, 16), rup(kh * kw * cg, 16)  # GemmBlocks
    return 64 + groups * rup(ocg16 * k16 + 4 * ocg16, 64)


def _register_cuda_fake_size():
    """The fake kernel of pack_conv_weight asks q8.ops.conv_packed_size per device type."""
    import q8.ops
    sizes = getattr(q8.ops, "conv_packed_size", None)
    if sizes is not None:
        sizes.setdefault("cuda", cuda_conv_packed_size)


def make_conv(shape, seed=0):
    n, c, h, w, oc, k, s, p, d, g = shape
    gen = torch.Generator().manual_seed(seed)
    w8 = torch.randint(-128, 128, (oc, c // g, *k), generator=gen, dtype=torch.int8)
    ws = torch.rand(oc, generator=gen) * 0.02 + 0.001
    bias = torch.randn(oc, generator=gen)
    x = torch.randn(n, c, h, w, generator=gen) * 3 + 0.5
    return x, w8, ws, bias


def out_hw(shape):
    n, c, h, w, oc, k, s, p, d, g = shape
    return ((h + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1, (w + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1)


def run_both(shape, x, w8, ws, bias, **kw):
    """q8.conv2d on the CPU and on CUDA with the same arguments (CUDA result moved back)."""
    n, c, h, w, oc, k, s, p, d, g = shape
    geo = dict(kernel_size=list(k), stride=list(s), padding=list(p), dilation=list(d), groups=g)
    cpu = conv2d(x, pack(w8, g), ws, bias, **geo, **kw)
    mv = {key: (v.to(DEV) if isinstance(v, torch.Tensor) else v) for key, v in kw.items()}
    dev = conv2d(x.to(DEV), pack(w8.to(DEV), g), ws.to(DEV), None if bias is None else bias.to(DEV), **geo, **mv)
    assert dev.is_contiguous(memory_format=torch.channels_last)
    return cpu, dev.cpu()


# ---------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES + [(1, 8192, 3, 3, 4, (3, 3), (1, 1), (0, 0), (1, 1), 1)])
def test_pack_unpack_round_trip(shape):
    n, c, h, w, oc, k, s, p, d, g = shape
    _, w8, _, _ = make_conv(shape)
    packed = pack(w8.to(DEV), g)
    assert packed.dtype == torch.uint8 and packed.dim() == 1 and packed.device.type == "cuda"
    assert packed.numel() == cuda_conv_packed_size(oc, c // g, k[0], k[1], g)
    assert_same(pack(w8.to(DEV), g), packed)  # deterministic, padding bytes included
    assert_same(unpack(packed, oc, c // g, list(k), g).cpu(), w8)


def test_unpack_finds_modified_bytes():
    shape = SHAPES[0]
    n, c, h, w, oc, k, s, p, d, g = shape
    _, w8, _, _ = make_conv(shape)
    packed = pack(w8.to(DEV), g)
    bad = packed.clone()
    bad[64] ^= 1  # a weight of output channel 0
    with pytest.raises(RuntimeError, match="corrupt"):
        unpack(bad, oc, c // g, list(k), g)
    bad = packed.clone()
    bad[20] ^= 1  # the header's in_channels_per_group
    with pytest.raises(RuntimeError, match="checksum|sizes|corrupt"):
        unpack(bad, oc, c // g, list(k), g)
    with pytest.raises(RuntimeError, match="must match packed_weight"):
        unpack(packed, oc + 1, c // g, list(k), g)
    with pytest.raises(RuntimeError, match="truncated or extended"):
        unpack(torch.cat([packed, packed[:64]]), oc, c // g, list(k), g)


# ---------------------------------------------------------------------------
# conv2d: bit-identical to the CPU
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_dynamic_bit_identical(shape, dtype):
    x, w8, ws, bias = make_conv(shape)
    cpu, dev = run_both(shape, x.to(dtype), w8, ws, bias)
    assert dev.dtype == dtype
    assert_same(dev, cpu)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("zp_dtype", [torch.int32, torch.int64])
def test_static_float_and_uint8_input_bit_identical(shape, zp_dtype):
    x, w8, ws, bias = make_conv(shape, seed=1)
    s, z = torch.tensor(0.05), torch.tensor(117, dtype=zp_dtype)
    cpu, dev = run_both(shape, x, w8, ws, None, activation="static", input_scale=s, input_zero_point=z)
    assert_same(dev, cpu)
    xu = torch.randint(0, 256, x.shape, dtype=torch.uint8)
    cpu, dev = run_both(shape, xu, w8, ws, bias, activation="static", input_scale=s, input_zero_point=z)
    assert dev.dtype == torch.float32
    assert_same(dev, cpu)


@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[2], SHAPES[3], SHAPES[6]])
def test_fused_epilogue_bit_identical(shape):
    """Residual (float, bfloat16 and uint8, any layout), clamps, uint8 output."""
    x, w8, ws, bias = make_conv(shape, seed=2)
    n, oc = shape[0], shape[4]
    oh, ow = out_hw(shape)
    gen = torch.Generator().manual_seed(5)
    r = torch.randn(n, oc, oh, ow, generator=gen)
    ru = torch.randint(0, 256, (n, oc, oh, ow), generator=gen, dtype=torch.uint8)
    static = dict(activation="static", input_scale=torch.tensor(0.04), input_zero_point=torch.tensor(100))
    cases = [
        dict(residual=r),
        dict(residual=r.to(torch.bfloat16).contiguous(memory_format=torch.channels_last), clamp_min=0.0),
        dict(residual=ru, residual_scale=torch.tensor(0.03), residual_zero_point=torch.tensor(128), clamp_min=0.0,
             clamp_max=6.0),
        dict(clamp_min=-0.5, clamp_max=0.25),
        dict(output_scale=torch.tensor(0.05), output_zero_point=torch.tensor(3)),
        dict(residual=r.transpose(2, 3).contiguous().transpose(2, 3), clamp_min=0.0,
             output_scale=torch.tensor(0.02), output_zero_point=torch.tensor(0, dtype=torch.int64)),
        dict(**static, residual=ru, residual_scale=torch.tensor(0.03), residual_zero_point=torch.tensor(120),
             clamp_min=0.0, output_scale=torch.tensor(0.05), output_zero_point=torch.tensor(0)),
    ]
    for kw in cases:
        cpu, dev = run_both(shape, x, w8, ws, bias, **kw)
        assert_same(dev, cpu)
    # uint8 in, uint8 out (the int8 graph between two static layers)
    xu = torch.randint(0, 256, x.shape, dtype=torch.uint8)
    cpu, dev = run_both(shape, xu, w8, ws, bias, **static, clamp_min=0.0, output_scale=torch.tensor(0.05),
                        output_zero_point=torch.tensor(0))
    assert dev.dtype == torch.uint8
    assert_same(dev, cpu)


@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[3], SHAPES[9]])
@pytest.mark.parametrize("activation", ["dynamic", "static"])
def test_non_finite_samples(shape, activation):
    x, w8, ws, bias = make_conv(shape, seed=3)
    x = torch.cat([x, x, x])
    x[0, 0, 0, 0] = float("nan")
    x[-1, -1, -1, -1] = float("inf")
    kw = dict(activation="static", input_scale=torch.tensor(0.05), input_zero_point=torch.tensor(128)) \
        if activation == "static" else {}
    n = x.shape[0]
    shape3 = (n,) + shape[1:]
    cpu, dev = run_both(shape3, x, w8, ws, bias, **kw)
    assert_same(dev, cpu)
    assert dev[0].isnan().all() and dev[-1].isnan().all() and not dev[1].isnan().any()
    cpu, dev = run_both(shape3, x, w8, ws, bias, **kw, output_scale=torch.tensor(0.1),
                        output_zero_point=torch.tensor(7))
    assert_same(dev, cpu)
    assert (dev[0] == 7).all()


def test_long_k_exact():
    """K = 8192 * 9 > 65536: the dp4a kernel sums in int64."""
    shape = (1, 8192, 3, 3, 4, (3, 3), (1, 1), (0, 0), (1, 1), 1)
    x, w8, ws, bias = make_conv(shape)
    w8 = torch.full_like(w8, -128)
    x = torch.full_like(x, 10.0)
    x[0, 0, 0, 0] = -1.0  # codes mostly 255, zero point 1: |acc| near 2^31
    cpu, dev = run_both(shape, x, w8, ws, bias)
    assert_same(dev, cpu)


def test_layouts_and_empty():
    shape = SHAPES[0]
    x, w8, ws, bias = make_conv(shape)
    ref, _ = run_both(shape, x, w8, ws, bias)
    for xv in [x.contiguous(memory_format=torch.channels_last), x.transpose(2, 3).contiguous().transpose(2, 3)]:
        _, dev = run_both(shape, xv, w8, ws, bias)
        assert_same(dev, ref)
    for n, oc in [(0, 8), (2, 0)]:
        sh = (n,) + shape[1:4] + (oc,) + shape[5:]
        xe, w8e, wse, be = make_conv(sh)
        cpu, dev = run_both(sh, xe, w8e, wse, be)
        assert_same(dev, cpu)


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------
def test_bad_arguments_and_packed_weights():
    shape = SHAPES[0]
    n, c, h, w, oc, k, s, p, d, g = shape
    x, w8, ws, bias = make_conv(shape)
    xd, wsd, bd = x.to(DEV), ws.to(DEV), bias.to(DEV)
    pd = pack(w8.to(DEV), g)
    geo = dict(kernel_size=list(k), padding=list(p))
    with pytest.raises(RuntimeError, match="packed_weight has .* bytes"):
        conv2d(xd, pd[:-64], wsd, bd, **geo)  # truncated
    with pytest.raises(RuntimeError, match="packed_weight has .* bytes"):
        conv2d(xd, pd, wsd, bd, kernel_size=[1, 3], padding=list(p))  # packed for another kernel size
    pc = pack(w8, g)
    if pc.numel() != pd.numel():
        with pytest.raises(RuntimeError, match="packed_weight has .* bytes"):
            conv2d(xd, pc.to(DEV), wsd, bd, **geo)  # CPU-packed weight moved to the GPU
    with pytest.raises((RuntimeError, ValueError, TypeError)):
        conv2d(xd, pd, ws, bd, **geo)  # weight_scale on the CPU
    with pytest.raises((RuntimeError, ValueError, TypeError)):
        conv2d(xd, pd, wsd, bd, **geo, activation="static")  # no input_scale
    with pytest.raises((RuntimeError, ValueError, TypeError)):
        conv2d(xd[0], pd, wsd, bd, **geo)  # 3-D input
    # A modified header of the right size: every output NaN (checked on the device).
    bad = pd.clone()
    bad[8] ^= 1  # the layout field
    y = conv2d(xd, bad, wsd, bd, **geo)
    assert y.isnan().all()
    y = conv2d(xd, bad, wsd, bd, **geo, output_scale=torch.tensor(0.1, device=DEV),
               output_zero_point=torch.tensor(9, device=DEV))
    assert (y == 9).all()


# ---------------------------------------------------------------------------
# opcheck (fake kernel vs the CUDA kernel's strides, schema, autograd registration)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[3]])
def test_opcheck_on_cuda(shape):
    _register_cuda_fake_size()
    n, c, h, w, oc, k, s, p, d, g = shape
    x, w8, ws, bias = make_conv(shape)
    pd = pack(w8.to(DEV), g)
    geo = [list(k), list(s), list(p), list(d), g]
    torch.library.opcheck(pack, (w8.to(DEV), g))
    torch.library.opcheck(conv2d, (x.to(DEV), pd, ws.to(DEV), bias.to(DEV), *geo))
    oh, ow = out_hw(shape)
    torch.library.opcheck(conv2d, (torch.randint(0, 256, x.shape, dtype=torch.uint8, device=DEV), pd, ws.to(DEV),
                                   None, *geo, "static", torch.tensor(0.05, device=DEV),
                                   torch.tensor(100, device=DEV), torch.randn(n, oc, oh, ow, device=DEV), None, None,
                                   0.0, 6.0, torch.tensor(0.05, device=DEV), torch.tensor(0, device=DEV)))


# ---------------------------------------------------------------------------
# No synchronization: CUDA graphs
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[1], SHAPES[3]])
@pytest.mark.parametrize("activation", ["dynamic", "static"])
def test_cuda_graph_capture_and_replay(shape, activation):
    n, c, h, w, oc, k, s, p, d, g = shape
    x, w8, ws, bias = make_conv(shape)
    w8d, wsd, bd = w8.to(DEV), ws.to(DEV), bias.to(DEV)
    kw = dict(activation="static", input_scale=torch.tensor(0.05, device=DEV),
              input_zero_point=torch.tensor(120, device=DEV)) if activation == "static" else {}
    geo = dict(kernel_size=list(k), stride=list(s), padding=list(p), dilation=list(d), groups=g)
    x_static = x.to(DEV).to(torch.bfloat16)

    def run():
        packed = pack(w8d, g)
        return conv2d(x_static, packed, wsd, bd, **geo, **kw, clamp_min=0.0)

    st = torch.cuda.Stream()  # warm-up (cuBLASLt handles, allocator) outside the capture
    st.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(st):
        for _ in range(2):
            run()
    torch.cuda.current_stream().wait_stream(st)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_static = run()
    for seed in range(3):
        x_new = make_conv(shape, seed=10 + seed)[0].to(DEV).to(torch.bfloat16)
        x_static.copy_(x_new)
        graph.replay()
        torch.cuda.synchronize()
        assert_same(y_static, conv2d(x_new, pack(w8d, g), wsd, bd, **geo, **kw, clamp_min=0.0))


def test_max_pool2d_cuda_matches_cpu():
    # the CPU op is checked against torch's max_pool2d in test_conv_op.py; CUDA gives the same codes
    from test_conv_op import POOLS
    gen = torch.Generator().manual_seed(23)
    for n, c, h, w, k, s, p, d, ceil_mode in POOLS:
        x = torch.randint(0, 256, (n, c, h, w), generator=gen, dtype=torch.uint8)
        expected = q8.max_pool2d(x, k, s, p, d, ceil_mode)
        for xi in (x, x.contiguous(memory_format=torch.channels_last)):
            out = q8.max_pool2d(xi.to(DEV), k, s, p, d, ceil_mode)
            assert out.device.type == "cuda" and out.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(out.cpu(), expected)
