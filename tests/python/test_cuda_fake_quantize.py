"""CUDA kernels of fake quantization, choose_qparams, quantize and dequantize
(cuda/fake_quantize.cu) against the CPU kernels: every output bit for bit (NaN
payloads aside), with the CPU's dtypes and strides, on random and special inputs
(NaN, +-Inf, huge, .5 ties, +-0, subnormals), every dtype, every layout, per
channel on every axis; LSQ sums within a tolerance (float32 on CUDA, float64 on
the CPU). Then what only a GPU has: CUDA graph capture, no host synchronization,
every output element written, and the NaN outputs of invalid scale / zero-point
values that the CPU rejects with an error (see the comment at the top of
cuda/fake_quantize.cu).

Skipped without a GPU or without the CUDA kernels. The tests of test_fake_quantize.py
and test_quantize.py also run on CUDA through the `device` parameter.
"""
import pytest
import torch

import q8
import reference as ref

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
CUDA = "cuda"
OPS = torch.ops.q8

HAS_CUDA_KERNELS = (torch.cuda.is_available()
                    and torch._C._dispatch_has_kernel_for_dispatch_key("q8::fake_quantize_per_tensor", "CUDA"))
pytestmark = pytest.mark.skipif(not HAS_CUDA_KERNELS, reason="no GPU, or q8 built without CUDA kernels")

_INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def same_bits(actual, expected, what=""):
    """A CUDA result equals the CPU's bit for bit (sign of zero included; NaN where
    the CPU has NaN, whatever its payload), with the same dtype, shape and strides."""
    assert actual.device.type == CUDA, what
    assert actual.dtype == expected.dtype, (what, actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert actual.stride() == expected.stride(), (what, actual.stride(), expected.stride())
    a = actual.cpu().contiguous()
    e = expected.contiguous()
    if a.is_floating_point():
        an, en = torch.isnan(a), torch.isnan(e)
        assert torch.equal(an, en), (what, "NaN positions differ", an.nonzero()[:5], en.nonzero()[:5])
        a = torch.where(an, torch.zeros_like(a), a).view(_INT_VIEW[a.dtype])
        e = torch.where(en, torch.zeros_like(e), e).view(_INT_VIEW[e.dtype])
    elif a.dtype == torch.bool:
        a, e = a.view(torch.uint8), e.view(torch.uint8)  # a byte other than 0 / 1 is a bug too
    if not torch.equal(a, e):
        bad = (a != e).reshape(-1).nonzero()[:5].reshape(-1).tolist()
        raise AssertionError(f"{what}: {int((a != e).sum())} of {a.numel()} elements differ, first at flat "
                             f"indices {bad}")


def to_cuda(t, device=CUDA):
    """t on CUDA (or `device`) with exactly its sizes, strides and storage offset
    (sliced, expanded and permuted views stay what they are): a view of a copy of
    its whole storage."""
    n = t.untyped_storage().nbytes() // t.element_size()
    return t.as_strided((n,), (1,), 0).to(device).as_strided(t.shape, t.stride(), t.storage_offset())


def both(make, *args):
    """make(*args) on the CPU, and on CUDA with every tensor argument copied there
    with the same strides."""
    return make(*args), make(*[to_cuda(a) if isinstance(a, torch.Tensor) else a for a in args])


def specials(dtype):
    big = torch.finfo(torch.float32).max
    tiny = 1e-40 if dtype != torch.float16 else 3e-8  # subnormal in each dtype
    return torch.tensor([float("nan"), float("inf"), -float("inf"), big, -big, 1e4, -1e4, 0.0, -0.0, tiny, -tiny,
                         65504.0, -65504.0, 3.0e38]).to(dtype)


def special_input(shape, dtype, spread=8.0):
    """Random values with every special value spread over the flat range."""
    x = (torch.randn(shape) * spread).to(dtype)
    flat = x.view(-1)
    sp = specials(dtype)
    if flat.numel() >= 2 * sp.numel():
        step = flat.numel() // sp.numel()
        flat[::step][: sp.numel()] = sp
    return x


# Layouts of a 4-D base, applied identically to the CPU and the CUDA copy.
BASE_SHAPE = (2, 6, 5, 9)
LAYOUTS = {
    "contiguous": lambda t: t,
    "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last),
    "permuted": lambda t: t.permute(3, 1, 0, 2),
    "transposed": lambda t: t.transpose(1, 3),
    "sliced": lambda t: t[:, ::2, :, 1:],
    "expanded": lambda t: t[:1].expand(3, -1, -1, -1),
}


def qparams(n, quant_min, quant_max, zp_dtype, per_channel):
    """CPU scale / zero point. Float zero points include .5 ties, values that round
    to -0 and values outside the range (all rounded half to even, then clamped)."""
    shape = (n,) if per_channel else ()
    scale = torch.rand(shape) * 0.2 + 0.01
    zp = torch.randint(quant_min, quant_max + 1, shape)
    if zp_dtype == torch.float32:
        offsets = torch.tensor([0.5, -0.5, 0.3, -0.3, 0.0, 2.5, -7.5, 0.49])
        zp = zp.float() + offsets[torch.randint(0, len(offsets), shape)]
        if per_channel and n >= 3:
            zp[0] = quant_max + 3.7  # clamped to quant_max
            zp[1] = quant_min - 2.5  # clamped to quant_min
            zp[2] = -0.4 if quant_min <= 0 <= quant_max else zp[2]  # rounds to -0
    return scale, zp.to(zp_dtype)


RANGES = [(-128, 127), (0, 255), (-127, 127), (-8, 7), (0, 1), (-32768, 32767), (0, 65535)]
ZP_DTYPES = [torch.int32, torch.int64, torch.float32]


# ---------------------------------------------------------------------------
# Forward values, masks, layouts
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("qrange", RANGES)
@pytest.mark.parametrize("zp_dtype", ZP_DTYPES)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_fake_quantize_matches_cpu(dtype, qrange, zp_dtype, layout):
    qmin, qmax = qrange
    base = special_input(BASE_SHAPE, dtype)
    view = LAYOUTS[layout]
    x, xc = view(base), view(base.to(CUDA))
    xm = view(base.to("meta"))
    s, z = qparams(1, qmin, qmax, zp_dtype, per_channel=False)
    out, outc = both(lambda *a: OPS.fake_quantize_per_tensor(*a), x, s, z, qmin, qmax)
    assert outc.stride() == OPS.fake_quantize_per_tensor(xm, s.to("meta"), z.to("meta"), qmin, qmax).stride()
    same_bits(outc, out, "per tensor")
    (o, m), (oc, mc) = both(lambda *a: OPS._fake_quantize_cachemask(*a), x, s, z, None, qmin, qmax)
    same_bits(oc, o, "cachemask output")
    same_bits(mc, m, "cachemask mask")
    for axis in range(-x.dim(), x.dim()):
        sc, zc = qparams(x.shape[axis], qmin, qmax, zp_dtype, per_channel=True)
        out, outc = both(lambda *a: OPS.fake_quantize_per_channel(*a), x, sc, zc, axis, qmin, qmax)
        same_bits(outc, out, f"per channel axis {axis}")
        (o, m), (oc, mc) = both(lambda *a: OPS._fake_quantize_cachemask(*a), x, sc, zc, axis, qmin, qmax)
        same_bits(oc, o, f"cachemask output axis {axis}")
        same_bits(mc, m, f"cachemask mask axis {axis}")
        mo, mm = OPS._fake_quantize_cachemask(xm, sc.to("meta"), zc.to("meta"), axis, qmin, qmax)
        assert oc.stride() == mo.stride() and mc.stride() == mm.stride()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 3, 7, 31, 127, 128, 129, 4097, (1 << 20) + 3])
def test_lengths_and_offsets(dtype, n):
    """Vectorized bodies and tails, at aligned and unaligned starts."""
    base = special_input((n + 3,), dtype)
    for start in (0, 1, 3):
        x = base[start:start + n]
        s, z = qparams(1, -128, 127, torch.int32, per_channel=False)
        out, outc = both(lambda *a: OPS.fake_quantize_per_tensor(*a), x, s, z, -128, 127)
        same_bits(outc, out, f"n={n} start={start}")
        q, qc = both(lambda *a: OPS.quantize(*a), x, s, z, None, -128, 127, torch.int8)
        same_bits(qc, q, "quantize")
        if n >= 3:
            y = x[: n - n % 3].reshape(-1, 3)
            sc, zc = qparams(3, -8, 7, torch.float32, per_channel=True)
            out, outc = both(lambda *a: OPS.fake_quantize_per_channel(*a), y, sc, zc, 1, -8, 7)
            same_bits(outc, out, "per channel, last axis")
            out, outc = both(lambda *a: OPS.fake_quantize_per_channel(*a), y.t(), sc, zc, 0, -8, 7)
            same_bits(outc, out, "per channel, transposed")


@pytest.mark.parametrize("dtype", DTYPES)
def test_ties_and_zero_point_rounding(dtype):
    k = torch.arange(-300, 300, dtype=torch.float32)
    x = ((k + 0.5) * 0.25).to(dtype)  # exact .5 ties of x / scale
    s = torch.tensor(0.25)
    for z in [torch.tensor(0, dtype=torch.int32), torch.tensor(2.5), torch.tensor(-0.5), torch.tensor(-0.4),
              torch.tensor(1000.0), torch.tensor(-1000.0), torch.tensor(3.5)]:
        for qmin, qmax in [(-128, 127), (0, 255)]:
            out, outc = both(lambda *a: OPS.fake_quantize_per_tensor(*a), x, s, z, qmin, qmax)
            same_bits(outc, out, f"z={z.item()}")
            q, qc = both(lambda *a: OPS.quantize(*a), x, s, z, None, qmin, qmax, torch.int32)
            same_bits(qc, q, "quantize")


def test_empty_and_zero_dim():
    for shape in [(0,), (3, 0, 4), (0, 5)]:
        x = torch.randn(shape)
        out, outc = both(lambda *a: OPS.fake_quantize_per_tensor(*a), x, torch.tensor(0.5), torch.tensor(1), 0, 255)
        same_bits(outc, out, f"empty {shape}")
        (o, m), (oc, mc) = both(lambda *a: OPS._fake_quantize_cachemask(*a), x, torch.tensor(0.5),
                                torch.tensor(1), None, 0, 255)
        same_bits(oc, o)
        same_bits(mc, m)
        for axis in range(len(shape)):
            c = shape[axis]
            out, outc = both(lambda *a: OPS.fake_quantize_per_channel(*a), x, torch.ones(c),
                             torch.zeros(c, dtype=torch.int32), axis, 0, 255)
            same_bits(outc, out, f"empty {shape} axis {axis}")
            q, qc = both(lambda *a: OPS.quantize(*a), x, torch.ones(c), torch.zeros(c), axis, 0, 255, torch.uint8)
            same_bits(qc, q)
            d, dc = both(lambda *a: OPS.dequantize(*a), q, torch.ones(c), torch.zeros(c), axis, torch.half)
            same_bits(dc, d)
            (s, z), (scc, zcc) = both(lambda *a: OPS.choose_qparams(*a), x, -128, 127, False, axis)
            same_bits(scc, s)
            same_bits(zcc, z)
    for dtype in DTYPES:
        x0 = torch.tensor(1.26).to(dtype)
        out, outc = both(lambda *a: OPS.fake_quantize_per_tensor(*a), x0, torch.tensor([0.5]), torch.tensor([1]), 0, 255)
        same_bits(outc, out, "0-dim")
        (o, m), (oc, mc) = both(lambda *a: OPS._fake_quantize_cachemask(*a), x0, torch.tensor(0.5), torch.tensor(1.0),
                                None, 0, 255)
        same_bits(oc, o)
        same_bits(mc, m)
        (s, z), (scc, zcc) = both(lambda *a: OPS.choose_qparams(*a), x0, 0, 255, False, None)
        same_bits(scc, s)
        same_bits(zcc, z)
        q, qc = both(lambda *a: OPS.quantize(*a), x0, torch.tensor(0.5), torch.tensor(1), None, 0, 255, torch.uint8)
        same_bits(qc, q)


def test_non_contiguous_qparams():
    x = special_input((40, 66), torch.float32)
    sc = (torch.rand(2 * 66) + 0.01)[::2]
    zc = torch.randint(-5, 5, (3 * 66,), dtype=torch.int64)[::3]
    out, outc = both(lambda *a: OPS.fake_quantize_per_channel(*a), x, sc, zc, 1, -128, 127)
    same_bits(outc, out)
    s11 = torch.tensor([[0.3]])  # one element, 2-D: fine per tensor
    z11 = torch.tensor([[2.0]])
    out, outc = both(lambda *a: OPS.fake_quantize_per_tensor(*a), x, s11, z11, -128, 127)
    same_bits(outc, out)
    g = torch.randn(40, 66)
    r, rc = both(lambda *a: OPS._fake_quantize_learnable_backward(*a), g, x, s11, z11, None, -128, 127)
    same_bits(rc[0], r[0])
    assert rc[1].shape == (1, 1) and rc[2].shape == (1, 1) and rc[1].stride() == r[1].stride()


# ---------------------------------------------------------------------------
# quantize / dequantize / choose_qparams
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("qdtype,qrange", [(torch.int8, (-128, 127)), (torch.uint8, (0, 255)),
                                          (torch.int8, (-127, 127)), (torch.int32, (-32768, 32767)),
                                          (torch.int32, (0, 65535)), (torch.uint8, (0, 15))])
@pytest.mark.parametrize("zp_dtype", ZP_DTYPES)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_quantize_dequantize_match_cpu(dtype, qdtype, qrange, zp_dtype, layout):
    qmin, qmax = qrange
    view = LAYOUTS[layout]
    base = special_input(BASE_SHAPE, dtype)
    x = view(base)
    xm = view(base.to("meta"))
    for axis in [None] + list(range(x.dim())):
        n = 1 if axis is None else x.shape[axis]
        s, z = qparams(n, qmin, qmax, zp_dtype, per_channel=axis is not None)
        q, qc = both(lambda *a: OPS.quantize(*a), x, s, z, axis, qmin, qmax, qdtype)
        same_bits(qc, q, f"quantize axis {axis}")
        assert qc.stride() == OPS.quantize(xm, s.to("meta"), z.to("meta"), axis, qmin, qmax, qdtype).stride()
        # dequantize of every code of the dtype's range (zero points inside it)
        for out_dtype in DTYPES:
            d, dc = both(lambda *a: OPS.dequantize(*a), q, s, z, axis, out_dtype)
            same_bits(dc, d, f"dequantize axis {axis} to {out_dtype}")
        qv = view(torch.randint(torch.iinfo(qdtype).min if qdtype != torch.int32 else -40000,
                                torch.iinfo(qdtype).max if qdtype != torch.int32 else 70000,
                                BASE_SHAPE, dtype=torch.int64).to(qdtype))
        d, dc = both(lambda *a: OPS.dequantize(*a), qv, s, z, axis, dtype)
        same_bits(dc, d, f"dequantize of every code, axis {axis}")


def test_dequantize_int32_extremes():
    q = torch.tensor([-2**31, -40000, -1, 0, 1, 2**31 - 1, 2**24 + 1, -(2**24) - 1], dtype=torch.int32)
    for z in [torch.tensor(7), torch.tensor(-32768), torch.tensor(65535), torch.tensor(-0.5), torch.tensor(65535.4)]:
        for dtype in DTYPES:
            d, dc = both(lambda *a: OPS.dequantize(*a), q, torch.tensor(0.37), z, None, dtype)
            same_bits(dc, d, f"z={z.item()} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("qrange", [(-128, 127), (0, 255), (-127, 127), (0, 15), (-8, 7), (0, 1), (0, 65535)])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_choose_qparams_matches_cpu(dtype, symmetric, qrange, layout):
    qmin, qmax = qrange
    view = LAYOUTS[layout]
    base = special_input(BASE_SHAPE, dtype) + (torch.rand(()) * 3).to(dtype)
    x = view(base)
    for axis in [None] + list(range(-x.dim(), x.dim())):
        (s, z), (sc, zc) = both(lambda *a: OPS.choose_qparams(*a), x, qmin, qmax, symmetric, axis)
        same_bits(sc, s, f"scale axis {axis}")
        same_bits(zc, z, f"zero point axis {axis}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", [((1 << 22) + 5, None), ((3, 1 << 20), 0), ((3, 1 << 20), None),
                                        ((1 << 20, 3), 1), ((64, 1000, 33), 1), ((64, 1000, 33), 2),
                                        ((5, 7), 0), ((100003,), 0)])
def test_choose_qparams_large_and_reduction_shapes(dtype, shape, axis):
    """Reductions split across blocks, along the fastest and the slowest dims."""
    shape = shape if isinstance(shape, tuple) else (shape,)
    x = special_input(shape, dtype, spread=3.0) - 0.7
    for symmetric in (False, True):
        (s, z), (sc, zc) = both(lambda *a: OPS.choose_qparams(*a), x, -128, 127, symmetric, axis)
        same_bits(sc, s, "scale")
        same_bits(zc, z, "zero point")
    if len(shape) > 1:
        (s, z), (sc, zc) = both(lambda *a: OPS.choose_qparams(*a), x.t() if len(shape) == 2 else x.transpose(0, 2),
                                0, 255, False, 0)
        same_bits(sc, s, "transposed scale")
        same_bits(zc, z, "transposed zero point")


def test_choose_qparams_degenerate_inputs():
    big = torch.finfo(torch.float32).max
    cases = [torch.zeros(100), torch.full((100,), 5.0), torch.full((100,), -5.0), torch.zeros(0), torch.tensor(3.0),
             torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0, -2.0]), torch.full((10,), float("nan")),
             torch.tensor([big, -big]), torch.tensor([-0.0, -0.0]), torch.full((1000,), float("inf")),
             torch.tensor([1e-40, -1e-40])]
    for x in cases:
        for dtype in DTYPES:
            for symmetric in (False, True):
                for qmin, qmax in [(-128, 127), (0, 255), (0, 1), (-32768, 32767)]:
                    (s, z), (sc, zc) = both(lambda *a: OPS.choose_qparams(*a), x.to(dtype), qmin, qmax, symmetric,
                                            None)
                    same_bits(sc, s, f"{x} {dtype}")
                    same_bits(zc, z, f"{x} {dtype}")
    for shape, axis in [((4, 0), 0), ((0, 4), 1), ((0, 3), 0), ((2, 0, 3), 2)]:
        (s, z), (sc, zc) = both(lambda *a: OPS.choose_qparams(*a), torch.zeros(shape), -128, 127, False, axis)
        same_bits(sc, s, f"{shape} axis {axis}")
        same_bits(zc, z, f"{shape} axis {axis}")


# ---------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------
def strided(shape, kind, make):
    """A tensor of `shape` made by make(shape) and laid out as `kind`."""
    if kind == "contiguous":
        return make(shape)
    if kind == "channels_last":
        return make(shape).contiguous(memory_format=torch.channels_last)
    if kind == "reversed":
        rev = list(reversed(range(len(shape))))
        return make(tuple(shape[d] for d in rev)).permute(*rev)
    if kind == "sliced":
        return make(shape[:-1] + (2 * shape[-1],))[..., ::2]
    if kind == "expanded":
        return make((1,) + shape[1:]).expand(shape)
    raise ValueError(kind)


KINDS = ["contiguous", "channels_last", "reversed", "sliced", "expanded"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("grad_kind", KINDS)
@pytest.mark.parametrize("mask_kind", KINDS)
def test_mask_backward_matches_cpu(dtype, grad_kind, mask_kind):
    g = strided(BASE_SHAPE, grad_kind, lambda sh: special_input(sh, dtype))
    m = strided(BASE_SHAPE, mask_kind, lambda sh: torch.rand(sh) > 0.4)
    dx, dxc = both(lambda *a: OPS._fake_quantize_mask_backward(*a), g, m)
    same_bits(dxc, dx, "grad * mask")
    assert dxc.stride() == OPS._fake_quantize_mask_backward(to_cuda(g, "meta"), to_cuda(m, "meta")).stride()
    for n in [0, 1, 5, 4099]:
        g1, m1 = special_input((n,), dtype), torch.rand(n) > 0.5
        dx, dxc = both(lambda *a: OPS._fake_quantize_mask_backward(*a), g1, m1)
        same_bits(dxc, dx, f"n={n}")


def lsq_magnitudes(grad, x, scale, zero_point, axis, quant_min, quant_max):
    """Per-channel sums of |LSQ term| (the formulas of reference.lsq_grads), in
    float64: the scale of the float32 rounding error of the sums."""
    xf = x.to(torch.float32)
    g = grad.to(torch.float32).abs()
    s = ref._bcast(scale.to(torch.float32), x, axis)
    inv = 1.0 / s
    z = ref._bcast(ref.rounded_zero_point(zero_point, quant_min, quant_max), x, axis)
    q = torch.round(xf * inv) + z
    below, above = q < quant_min, q > quant_max
    xfq = (q.clamp(quant_min, quant_max) - z) * s
    edge = torch.where(below, (quant_min - z).abs(), (quant_max - z).abs())
    ds = torch.where(below | above, g * edge, g * ((xfq - xf) * inv).abs())
    dz = torch.where(below | above, g * s, torch.zeros_like(g))
    ds, dz = ds.double().nan_to_num(0.0), dz.double().nan_to_num(0.0)
    dims = [d for d in range(x.dim()) if d != axis] if axis is not None else list(range(x.dim()))
    if dims:
        ds, dz = ds.sum(dims), dz.sum(dims)
    return ds.reshape(scale.shape), dz.reshape(zero_point.shape)


def assert_sums_close(actual, expected, magnitude, what=""):
    """LSQ sums: float32 on CUDA, float32 lanes then float64 on the CPU. Same dtype,
    shape, strides and NaN positions; values within 1e-4 of the sum of |terms|."""
    assert actual.device.type == CUDA, what
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert actual.stride() == expected.stride(), (what, actual.stride(), expected.stride())
    a, e = actual.cpu().double(), expected.double()
    nan = torch.isnan(e)
    assert torch.equal(torch.isnan(a), nan), (what, a, e)
    err = torch.where(nan, torch.zeros_like(a), (a - e).abs())
    bound = 1e-4 * magnitude.double().reshape(e.shape) + 1e-4
    assert torch.all(err <= bound), (what, float((err - bound).max()), a, e)


def check_learnable(g, x, s, z, axis, qmin, qmax, what=""):
    """_fake_quantize_learnable_backward on CUDA == on the CPU (grad_input bit for
    bit, the sums within tolerance, strides those of the Meta kernel)."""
    (dx, ds, dz), (dxc, dsc, dzc) = both(lambda *a: OPS._fake_quantize_learnable_backward(*a), g, x, s, z, axis,
                                         qmin, qmax)
    same_bits(dxc, dx, f"{what} grad_input")
    ms, mz = lsq_magnitudes(g, x, s, z, axis, qmin, qmax)
    assert_sums_close(dsc, ds, ms, f"{what} grad_scale")
    assert_sums_close(dzc, dz, mz, f"{what} grad_zero_point")
    meta = OPS._fake_quantize_learnable_backward(to_cuda(g, "meta"), to_cuda(x, "meta"), s.to("meta"), z.to("meta"),
                                                 axis, qmin, qmax)
    assert [t.stride() for t in (dxc, dsc, dzc)] == [t.stride() for t in meta], what


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("zp_dtype", ZP_DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed", "sliced", "expanded"])
@pytest.mark.parametrize("qrange", [(-128, 127), (0, 255), (-8, 7)])
def test_learnable_backward_matches_cpu(dtype, zp_dtype, layout, qrange):
    qmin, qmax = qrange
    x = LAYOUTS[layout](special_input(BASE_SHAPE, dtype, spread=1.0))
    g = (torch.randn(x.shape) * 2).to(dtype)
    g.view(-1)[::97] = float("nan")  # a NaN gradient poisons its channel's sums, on both devices
    g_reversed = g.permute(*reversed(range(g.dim()))).contiguous().permute(*reversed(range(g.dim())))
    for axis in [None] + list(range(x.dim())):
        n = 1 if axis is None else x.shape[axis]
        s, z = qparams(n, qmin, qmax, zp_dtype, per_channel=axis is not None)
        s = s * 0.2
        check_learnable(g, x, s, z, axis, qmin, qmax, f"axis {axis}")
        check_learnable(g_reversed, x, s, z, axis, qmin, qmax, f"axis {axis}, grad strides reversed")


@pytest.mark.parametrize("shape,axis", [((1 << 20) + 7, None), ((4096, 257), 1), ((257, 4096), 0), ((64, 3, 4099), 1)])
def test_learnable_backward_large(shape, axis):
    shape = shape if isinstance(shape, tuple) else (shape,)
    x = torch.randn(shape) * 2
    g = torch.randn(shape)
    n = 1 if axis is None else shape[axis]
    s, z = qparams(n, -128, 127, torch.float32, per_channel=axis is not None)
    check_learnable(g, x, s * 0.1, z, axis, -128, 127)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("learnable", [False, True])
def test_autograd_matches_cpu(dtype, per_channel, learnable):
    x = special_input((33, 65), dtype, spread=2.0)
    g = torch.randn(33, 65).to(dtype)
    s, z = qparams(65 if per_channel else 1, -128, 127, torch.float32, per_channel)
    s = s * 0.2
    results = []
    for device in ("cpu", CUDA):
        xr = x.detach().clone().to(device).requires_grad_()
        sr = s.detach().clone().to(device).requires_grad_(learnable)
        zr = z.detach().clone().to(device).requires_grad_(learnable)
        y = (q8.fake_quantize_per_channel(xr, sr, zr, 1, -128, 127) if per_channel
             else q8.fake_quantize_per_tensor(xr, sr, zr, -128, 127))
        y.backward(g.to(device))
        results.append((y.detach(), xr.grad, sr.grad, zr.grad))
    (y, dx, ds, dz), (yc, dxc, dsc, dzc) = results
    same_bits(yc, y, "output")
    same_bits(dxc, dx, "input gradient")
    if learnable:
        ms, mz = lsq_magnitudes(g, x, s, z, 1 if per_channel else None, -128, 127)
        assert_sums_close(dsc, ds, ms, "scale gradient")
        assert_sums_close(dzc, dz, mz, "zero point gradient")
    else:
        assert dsc is None and dzc is None


# ---------------------------------------------------------------------------
# Invalid scale / zero-point values: NaN (or quant_min) on CUDA, no error, no sync
# ---------------------------------------------------------------------------
BAD_SCALES = {"zero": 0.0, "negative": -0.5, "nan": float("nan"), "inf": float("inf"), "subnormal": 1e-39}


@pytest.mark.parametrize("bad", list(BAD_SCALES))
def test_invalid_scale_gives_nan(bad):
    x = torch.randn(4, 6, 5) * 3
    x[0, 0, 0] = 0.0
    sc = torch.rand(6) * 0.1 + 0.02
    zc = torch.randint(-3, 4, (6,)).float()
    bad_sc = sc.clone()
    bad_sc[2] = BAD_SCALES[bad]
    with pytest.raises(RuntimeError, match="scale must"):
        q8.fake_quantize_per_channel(x, bad_sc, zc, 1, -128, 127)
    _check_bad_channel(x, sc, zc, bad_sc, zc, channel=2)
    # Per tensor: everything.
    y = q8.fake_quantize_per_tensor(x.to(CUDA), torch.tensor(BAD_SCALES[bad], device=CUDA),
                                    torch.tensor(0, device=CUDA), -128, 127)
    assert torch.isnan(y).all()
    q = q8.quantize(x.to(CUDA), torch.tensor(BAD_SCALES[bad], device=CUDA), torch.tensor(3, device=CUDA), None,
                    -128, 127, torch.int8)
    assert torch.all(q == -128)


@pytest.mark.parametrize("bad,qrange", [(300, (0, 255)), (-1, (0, 255)), (-129, (-128, 127)), (128, (-127, 127)),
                                        (float("nan"), (0, 255)), (float("inf"), (-128, 127)),
                                        (-float("inf"), (-128, 127))])
def test_invalid_zero_point_gives_nan(bad, qrange):
    qmin, qmax = qrange
    x = torch.randn(4, 6, 5) * 3
    sc = torch.rand(6) * 0.1 + 0.02
    is_float = isinstance(bad, float)
    zc = torch.randint(max(qmin, -3), min(qmax, 3) + 1, (6,))
    zc = zc.float() if is_float else zc.to(torch.int32)
    bad_zc = zc.clone()
    bad_zc[4] = bad
    with pytest.raises(RuntimeError, match="zero_point must"):
        q8.fake_quantize_per_channel(x, sc, bad_zc, 1, qmin, qmax)
    _check_bad_channel(x, sc, zc, sc, bad_zc, channel=4, qrange=qrange)
    # Per tensor: everything.
    zt = torch.tensor(bad, device=CUDA) if is_float else torch.tensor(bad, dtype=torch.int32, device=CUDA)
    assert torch.isnan(q8.fake_quantize_per_tensor(x.to(CUDA), sc[:1].to(CUDA), zt, qmin, qmax)).all()
    assert torch.all(q8.quantize(x.to(CUDA), sc[:1].to(CUDA), zt, None, qmin, qmax, torch.int32) == qmin)


def _check_bad_channel(x, sc, zc, bad_sc, bad_zc, channel, qrange=(-128, 127)):
    """On CUDA, channel `channel` of (bad_sc, bad_zc) is invalid: its elements are
    NaN (quant_min for quantize), the other channels are the CPU's results with the
    valid parameters (sc, zc). No error is raised."""
    qmin, qmax = qrange
    keep = [c for c in range(x.shape[1]) if c != channel]
    xc, bsc, bzc = x.to(CUDA), bad_sc.to(CUDA), bad_zc.to(CUDA)
    y = q8.fake_quantize_per_channel(xc, bsc, bzc, 1, qmin, qmax)
    expected = q8.fake_quantize_per_channel(x, sc, zc, 1, qmin, qmax)
    assert torch.isnan(y[:, channel]).all()
    same_bits(y[:, keep], expected[:, keep], "valid channels")
    out, mask = OPS._fake_quantize_cachemask(xc, bsc, bzc, 1, qmin, qmax)
    assert torch.isnan(out[:, channel]).all() and not mask[:, channel].any()
    _, emask = OPS._fake_quantize_cachemask(x, sc, zc, 1, qmin, qmax)
    same_bits(mask[:, keep], emask[:, keep], "valid channels' mask")
    q = q8.quantize(xc, bsc, bzc, 1, qmin, qmax, torch.int32)
    assert torch.all(q[:, channel] == qmin)
    same_bits(q[:, keep], q8.quantize(x, sc, zc, 1, qmin, qmax, torch.int32)[:, keep], "quantize")
    # dequantize of int32 codes accepts any zero point in [-32768, 65535]: only a bad
    # scale or a non-finite zero point makes the channel invalid there.
    codes = torch.randint(0, 100, x.shape, dtype=torch.int32)
    d = q8.dequantize(codes.to(CUDA), bsc, bzc, 1)
    zb, sb = float(bad_zc[channel]), float(bad_sc[channel])
    if sb == float(sc[channel]) and -32768 <= zb <= 65535:
        same_bits(d[:, channel], q8.dequantize(codes, bad_sc, bad_zc, 1)[:, channel], "dequantize, int32 range")
    else:
        assert torch.isnan(d[:, channel]).all()
    same_bits(d[:, keep], q8.dequantize(codes, sc, zc, 1)[:, keep], "dequantize")
    g = torch.randn(x.shape)
    dx, ds, dz = OPS._fake_quantize_learnable_backward(g.to(CUDA), xc, bsc, bzc, 1, qmin, qmax)
    edx, eds, edz = OPS._fake_quantize_learnable_backward(g, x, sc, zc, 1, qmin, qmax)
    assert torch.isnan(dx[:, channel]).all() and torch.isnan(ds[channel])
    assert torch.isnan(dz[channel]) if bad_zc.is_floating_point() else dz[channel] == 0
    same_bits(dx[:, keep], edx[:, keep], "learnable grad_input")
    ms, mz = lsq_magnitudes(g, x, sc, zc, 1, qmin, qmax)
    assert_sums_close(ds[keep], eds[keep], ms[keep], "learnable grad_scale")
    assert_sums_close(dz[keep], edz[keep], mz[keep], "learnable grad_zero_point")


def test_invalid_dequantize_zero_point_range_is_the_dtype_range():
    codes = torch.randint(-128, 128, (10, 3), dtype=torch.int8)
    s = torch.full((3,), 0.1)
    z = torch.tensor([0, 200, -5], dtype=torch.int32)  # 200 is outside int8's range
    d = q8.dequantize(codes.to(CUDA), s.to(CUDA), z.to(CUDA), 1)
    assert torch.isnan(d[:, 1]).all()
    z_ok = torch.tensor([0, 0, -5], dtype=torch.int32)
    same_bits(d[:, [0, 2]], q8.dequantize(codes, s, z_ok, 1)[:, [0, 2]])
    u = torch.randint(0, 256, (10, 3), dtype=torch.uint8)
    same_bits(q8.dequantize(u.to(CUDA), s.to(CUDA), z.to(CUDA).clamp(min=0), 1), q8.dequantize(u, s, z.clamp(min=0), 1))


def test_no_host_sync():
    """No op reads a device value on the host (torch.cuda sync debug mode raises on any sync)."""
    x = special_input((64, 70), torch.float32).to(CUDA)
    xh = x.half()
    g = torch.randn(64, 70, device=CUDA)
    sc = torch.rand(70, device=CUDA) + 0.01
    zc = torch.randint(-3, 3, (70,), device=CUDA, dtype=torch.int32)
    zf = zc.float() + 0.3
    s, z = torch.tensor(0.1, device=CUDA), torch.tensor(2.0, device=CUDA)
    bad = torch.tensor(0.0, device=CUDA)
    q = torch.randint(-128, 128, (64, 70), dtype=torch.int8, device=CUDA)
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        OPS.fake_quantize_per_tensor(x, s, z, -128, 127)
        OPS.fake_quantize_per_tensor(xh, bad, z, -128, 127)  # invalid: NaN, not an error
        OPS.fake_quantize_per_channel(x, sc, zc, 1, -8, 7)
        _, mask = OPS._fake_quantize_cachemask(x, sc, zf, 1, -8, 7)
        OPS._fake_quantize_mask_backward(g, mask)
        OPS._fake_quantize_learnable_backward(g, x, s, z, None, -128, 127)
        OPS._fake_quantize_learnable_backward(g, x, sc, zf, 1, -128, 127)
        OPS._fake_quantize_learnable_backward(g, x, sc, zc, 1, -128, 127)
        OPS.choose_qparams(x, -128, 127)
        OPS.choose_qparams(xh, 0, 255, True, 0)
        OPS.choose_qparams(torch.empty(0, 3, device=CUDA), 0, 255, False, 1)
        OPS.quantize(x, sc, zc, 1, -128, 127, torch.int8)
        OPS.dequantize(q, sc, zc, 1, torch.bfloat16)
        OPS.dequantize(q, s, z, None)
    finally:
        torch.cuda.set_sync_debug_mode(previous)


# ---------------------------------------------------------------------------
# CUDA graphs
# ---------------------------------------------------------------------------
def _calibrate_and_fake_quantize(x, w, g):
    s, z = q8.choose_qparams(x, -128, 127)
    y = q8.fake_quantize_per_tensor(x, s, z, -128, 127)
    ws, wz = q8.choose_qparams(w, -127, 127, True, 0)
    wq = q8.fake_quantize_per_channel(w, ws, wz, 0, -127, 127)
    q = q8.quantize(w, ws, wz, 0, -127, 127, torch.int8)
    d = q8.dequantize(q, ws, wz, 0)
    y2, mask = OPS._fake_quantize_cachemask(x, s, z.float(), None, 0, 255)
    dx = OPS._fake_quantize_mask_backward(g, mask)
    lx, ls, lz = OPS._fake_quantize_learnable_backward(g, x, s, z.float() + 0.25, None, -128, 127)
    return (s, z, y, ws, wz, wq, q, d, y2, mask, dx, lx), (ls, lz)


def test_cuda_graph_captures_choose_qparams_and_fake_quantize():
    x = torch.randn(256, 1000, device=CUDA)
    w = torch.randn(64, 1000, device=CUDA)
    g = torch.randn(256, 1000, device=CUDA)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up off the capture (allocator, lazy initialization)
            _calibrate_and_fake_quantize(x, w, g)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        exact, sums = _calibrate_and_fake_quantize(x, w, g)
    for trial in range(3):
        xn = torch.randn(256, 1000) * (trial + 1) + trial
        xn[trial, :7] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 0.5, -0.0])
        wn = torch.randn(64, 1000) * (0.1 + trial)
        gn = torch.randn(256, 1000)
        x.copy_(xn)
        w.copy_(wn)
        g.copy_(gn)
        graph.replay()
        torch.cuda.synchronize()
        e_exact, e_sums = _calibrate_and_fake_quantize(xn, wn, gn)
        for i, (a, e) in enumerate(zip(exact, e_exact)):
            same_bits(a, e, f"replay {trial}, output {i}")
        ms, mz = lsq_magnitudes(gn, xn, e_exact[0], e_exact[1].float() + 0.25, None, -128, 127)
        assert_sums_close(sums[0], e_sums[0], ms, f"replay {trial}, grad_scale")
        assert_sums_close(sums[1], e_sums[1], mz, f"replay {trial}, grad_zero_point")


# ---------------------------------------------------------------------------
# Every output element is written
# ---------------------------------------------------------------------------
def _poison_allocator(byte):
    """Fills the blocks the caching allocator will hand out next with `byte`: every
    cached block is released, then blocks of both pools are allocated, filled and
    freed (so a kernel that skips an element leaves the poison there)."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    blocks = [torch.full((64 << 20,), byte, dtype=torch.uint8, device=CUDA)]  # large pool
    # small pool: 2 MiB segments, filled exactly by pairs of 1 MiB blocks
    blocks += [torch.full((1 << 20,), byte, dtype=torch.uint8, device=CUDA) for _ in range(16)]
    torch.cuda.synchronize()
    del blocks


@pytest.mark.parametrize("byte", [0xFF, 0x5A])
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_output_element_is_written(byte, dtype):
    base = special_input((3, 50, 7, 301), dtype)
    g = torch.randn(base.shape).to(dtype)
    sc, zc = qparams(50, -128, 127, torch.float32, per_channel=True)
    s, z = qparams(1, 0, 255, torch.int32, per_channel=False)
    codes = torch.randint(-128, 128, base.shape, dtype=torch.int8)
    cases = {
        "per tensor": lambda d, x, g, q: OPS.fake_quantize_per_tensor(x, s.to(d), z.to(d), 0, 255),
        "per channel": lambda d, x, g, q: OPS.fake_quantize_per_channel(x, sc.to(d), zc.to(d), 1, -128, 127),
        "cachemask": lambda d, x, g, q: OPS._fake_quantize_cachemask(x, sc.to(d), zc.to(d), 1, -128, 127),
        "mask backward": lambda d, x, g, q: OPS._fake_quantize_mask_backward(g, x > 0),
        "learnable dx": lambda d, x, g, q: OPS._fake_quantize_learnable_backward(g, x, sc.to(d), zc.to(d), 1, -128,
                                                                                 127)[0],
        "learnable per tensor dx": lambda d, x, g, q: OPS._fake_quantize_learnable_backward(g, x, s.to(d), z.to(d),
                                                                                            None, 0, 255)[0],
        "choose_qparams": lambda d, x, g, q: OPS.choose_qparams(x, -128, 127, False, 1),
        "quantize int8": lambda d, x, g, q: OPS.quantize(x, sc.to(d), zc.to(d), 1, -128, 127, torch.int8),
        "quantize int32": lambda d, x, g, q: OPS.quantize(x, s.to(d), z.to(d), None, 0, 255, torch.int32),
        "dequantize": lambda d, x, g, q: OPS.dequantize(q, sc.to(d), zc.to(d), 1, dtype),
        "dequantize per tensor": lambda d, x, g, q: OPS.dequantize(q, s.to(d), z.to(d), None, dtype),
    }
    for name, f in cases.items():
        for layout in ("contiguous", "channels_last"):
            x = LAYOUTS[layout](base)
            q = LAYOUTS[layout](codes)
            expected = f("cpu", x, g, q)
            xc, gc, qc = to_cuda(x), to_cuda(g), to_cuda(q)
            _poison_allocator(byte)
            got = f(CUDA, xc, gc, qc)
            if isinstance(got, torch.Tensor):
                got, expected = (got,), (expected,)
            for a, e in zip(got, expected):
                same_bits(a, e, f"{name} {layout}")


# ---------------------------------------------------------------------------
# opcheck on CUDA with strided inputs (fake strides == real strides)
# ---------------------------------------------------------------------------
def test_opcheck_layouts_on_cuda():
    base = (torch.randn(2, 6, 3, 5, device=CUDA) * 3)
    sc = torch.rand(6, device=CUDA) * 0.1 + 0.02
    zc = torch.randint(-3, 4, (6,), device=CUDA, dtype=torch.int32)
    for name, view in LAYOUTS.items():
        x = view(base)
        c = x.shape[1]
        s1, z1 = sc[:1].reshape(()), zc[:1].reshape(())
        scv, zcv = torch.rand(c, device=CUDA) * 0.1 + 0.02, torch.randint(-3, 4, (c,), device=CUDA)
        mask = x > 0
        samples = [
            (OPS.fake_quantize_per_tensor.default, (x, s1, z1, -128, 127)),
            (OPS.fake_quantize_per_channel.default, (x, scv, zcv, 1, -8, 7)),
            (OPS._fake_quantize_cachemask.default, (x, scv, zcv.float(), 1, -8, 7)),
            (OPS._fake_quantize_mask_backward.default, (x.half(), mask)),
            (OPS._fake_quantize_learnable_backward.default, (torch.randn_like(x), x, scv, zcv.float(), 1, -8, 7)),
            (OPS._fake_quantize_learnable_backward.default, (torch.randn_like(x), x, s1, z1, None, -8, 7)),
            (OPS.choose_qparams.default, (x.bfloat16(), -128, 127, True, 1)),
            (OPS.quantize.default, (x, scv, zcv, 1, -128, 127, torch.int8)),
            (OPS.dequantize.default, (OPS.quantize(x, scv, zcv, 1, -128, 127, torch.int8), scv, zcv, 1, torch.half)),
        ]
        for op, args in samples:
            torch.library.opcheck(op, args)
