"""The int8 linear ops: quantize_weight, pack/unpack_weight, int8_mm and linear.

References:
  * integer path: an exact int64 matmul of the codes;
  * float path: dequantize-then-linear in float64, with the activation codes from
    q8.choose_qparams + q8.quantize (per row for "dynamic", given for "static");
  * weight_only: float64 F.linear with the dequantized weight.
"""
import threading

import pytest
import torch
import torch.nn.functional as F

import q8
from test_fake_quantize import assert_same

ISAS = q8.cpu_isas()
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.fixture
def restore_isa():
    best = q8.cpu_isa()
    yield
    q8.set_cpu_isa(best)


def each_isa():
    """Runs the body once per ISA family this CPU supports (restoring the best)."""
    best = q8.cpu_isa()
    try:
        for isa in ISAS:
            q8.set_cpu_isa(isa)
            yield isa
    finally:
        q8.set_cpu_isa(best)


def make_weight(n, k, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g).to(device)
    w8, ws = q8.quantize_weight(w)
    return w, w8, ws, q8.pack_weight(w8)


def exact_mm(a, w8, zp=None):
    a = a.long()
    if zp is not None:
        a = a - zp.long().reshape(-1, 1)
    return a @ w8.long().t()


def dynamic_codes(x2):
    """The kernel's per-row activation quantization, from q8's public ops."""
    s, z = q8.choose_qparams(x2.float(), 0, 255, False, 0)
    return q8.quantize(x2.float(), s, z, 0, 0, 255, torch.uint8), s, z


def int8_reference(xq, sx, zx, w8, ws, bias):
    acc = exact_mm(xq, w8, zx.expand(xq.shape[0])).double()
    y = acc * sx.double().reshape(-1, 1) * ws.double() if sx.numel() > 1 else acc * sx.double() * ws.double()
    return y + (bias.double() if bias is not None else 0)


def assert_close_rel(y, ref, rel=2e-6):
    """float32 rounding of the epilogue: a few ulps of the result's magnitude."""
    tol = rel * (ref.abs() + ref.abs().mean() + 1e-30)
    assert ((y.double() - ref).abs() <= tol).all(), (y.double() - ref).abs().max()


# ---------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (17, 13), (64, 256), (3, 1000)])
def test_quantize_weight_matches_public_ops(dtype, shape):
    w = (torch.randn(shape) * torch.rand(shape[0], 1) * 10).to(dtype)
    w[0] = 0  # an all-zero row gets the smallest scale, codes 0
    w8, ws = q8.quantize_weight(w)
    s, z = q8.choose_qparams(w, -127, 127, True, 0)
    assert w8.dtype == torch.int8 and ws.dtype == torch.float32 and ws.shape == (shape[0],)
    assert_same(ws, s)
    assert_same(w8, q8.quantize(w, s, z, 0, -127, 127, torch.int8))
    assert w8.min() >= -127 and w8.max() <= 127
    # The largest magnitude of every non-zero row maps to +-127.
    assert (w8[1:].abs().amax(1) == 127).all()
    # Symmetric: -w quantizes to -q.
    assert_same(q8.quantize_weight(-w)[0], -w8)


def test_quantize_weight_refuses_non_finite():
    w = torch.randn(4, 8)
    for bad in (float("nan"), float("inf"), -float("inf")):
        w2 = w.clone()
        w2[2, 3] = bad
        with pytest.raises(RuntimeError, match=r"q8.quantize_weight: weight must be finite, but row 2"):
            q8.quantize_weight(w2)


@pytest.mark.parametrize("n,k", [(1, 1), (15, 3), (16, 4), (17, 5), (33, 64), (100, 130), (0, 8), (8, 0)])
def test_pack_unpack_round_trip(n, k):
    w8 = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    packed = q8.pack_weight(w8)
    assert packed.dtype == torch.uint8 and packed.dim() == 1
    panels, groups = (n + 15) // 16, (k + 3) // 4
    assert packed.numel() == 64 + panels * groups * 64 + panels * 64
    assert_same(q8.unpack_weight(packed, n, k), w8)
    # Non-contiguous weights pack the same.
    assert_same(q8.pack_weight(w8.t().contiguous().t()), packed)


# ---------------------------------------------------------------------------
# Exact integer GEMM
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("m", [0, 1, 5, 6, 7, 13])
@pytest.mark.parametrize("k", [1, 3, 4, 63, 64, 65, 1000])
@pytest.mark.parametrize("n", [1, 15, 16, 17, 65, 130])
def test_int8_mm_exact_on_every_isa(m, k, n):
    w8 = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    packed = q8.pack_weight(w8)
    a = torch.randint(0, 256, (m, k), dtype=torch.uint8)
    zp = torch.randint(0, 256, (m,), dtype=torch.int32)
    for _ in each_isa():
        assert_same(q8.int8_mm(a, packed, n), exact_mm(a, w8))
        assert_same(q8.int8_mm(a, packed, n, zp), exact_mm(a, w8, zp))
        assert_same(q8.int8_mm(a, packed, n, torch.tensor(77)), exact_mm(a, w8, torch.tensor(77)))


def test_int8_mm_extremes_and_non_contiguous():
    n, k = 33, 260
    w8 = torch.full((n, k), -128, dtype=torch.int8)
    w8[1::2] = 127
    packed = q8.pack_weight(w8)
    a = torch.full((k, 9), 255, dtype=torch.uint8).t()  # a transposed view
    a[::3] = 0
    for _ in each_isa():
        assert_same(q8.int8_mm(a, packed, n), exact_mm(a, w8))


@pytest.mark.parametrize("k", [65536 + 4, 1 << 20])
def test_int8_mm_long_k_does_not_overflow(k):
    """255 * -128 * 2^20 = -3.4e10 is far outside int32: the kernels sum exact
    int32 chunks of 65536 k in int64."""
    n, m = 3, 2
    w8 = torch.full((n, k), -128, dtype=torch.int8)
    w8[1] = 127
    w8[2, ::2] = 1
    packed = q8.pack_weight(w8)
    a = torch.full((m, k), 255, dtype=torch.uint8)
    a[1, 1::3] = 3
    zp = torch.tensor([0, 200], dtype=torch.int32)
    expect = exact_mm(a, w8, zp)
    # 65540: just past one int32 chunk; 2^20: sums far outside int32.
    assert expect.abs().max() > (2**31 if k > 2**17 else 2**30)
    for _ in each_isa():
        assert_same(q8.int8_mm(a, packed, n, zp), expect)
    # The float path stays right as well (the sums go through int64, then float).
    x = torch.full((1, k), 1.0)
    y = q8.linear(x, packed, torch.ones(n))
    # x quantizes to 255 with scale 1/255, zero point 0: y = sum(w) * 255 * (1/255).
    s, z = q8.choose_qparams(x, 0, 255, False, 0)
    ref = exact_mm(torch.full((1, k), 255, dtype=torch.uint8), w8).double() * s.double()
    assert_close_rel(y, ref)


# ---------------------------------------------------------------------------
# linear
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n", [(1, 64, 64), (5, 37, 19), (13, 130, 65), (64, 256, 48)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_dynamic_matches_reference(dtype, m, k, n, with_bias):
    _, w8, ws, packed = make_weight(n, k)
    x = (torch.randn(m, k) * 3 + 0.5).to(dtype)
    bias = torch.randn(n) if with_bias else None
    y = q8.linear(x, packed, ws, bias)
    assert y.dtype == dtype and y.shape == (m, n)
    xq, sx, zx = dynamic_codes(x)
    ref = int8_reference(xq, sx, zx, w8, ws, bias)
    if dtype == torch.float32:
        assert_close_rel(y, ref)
    else:
        # The kernel computes in float32 and rounds once to the input's dtype.
        assert_same(y, q8.linear(x.float(), packed, ws, bias).to(dtype))
    # And it is close to the float layer it replaces (8-bit activations and weights).
    w_deq = w8.float() * ws[:, None]
    ref_f = F.linear(x.float(), w_deq, bias)
    assert (y.float() - ref_f).norm() <= 0.02 * ref_f.norm() + 1e-3


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_static_matches_reference(dtype):
    m, k, n = 9, 70, 21
    _, w8, ws, packed = make_weight(n, k)
    x = (torch.randn(m, k) * 2).to(dtype)
    bias = torch.randn(n).to(dtype)  # a bias in the input's dtype is accepted
    s = torch.tensor(0.03)
    for z in (torch.tensor(128, dtype=torch.int32), torch.tensor([3]), torch.tensor(255)):
        y = q8.linear(x, packed, ws, bias, "static", s, z)
        xq = q8.quantize(x.float(), s, z, None, 0, 255, torch.uint8)  # saturates at 0 / 255
        ref = int8_reference(xq, s, z.reshape(()), w8, ws, bias.float())
        if dtype == torch.float32:
            assert_close_rel(y, ref)
        else:
            assert_same(y, q8.linear(x.float(), packed, ws, bias.float(), "static", s, z).to(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (1, 4096, 33), (3, 37, 19), (7, 130, 70)])
def test_linear_weight_only_matches_reference(dtype, m, k, n):
    _, w8, ws, packed = make_weight(n, k)
    x = torch.randn(m, k).to(dtype)
    bias = torch.randn(n)
    y = q8.linear(x, packed, ws, bias, "weight_only")
    assert y.dtype == dtype
    ref = F.linear(x.double(), w8.double() * ws.double()[:, None], bias.double())
    # float32 accumulation over k terms, then the rounding to dtype.
    eps = {torch.float32: 0.0, torch.bfloat16: 2**-8, torch.float16: 2**-11}[dtype]
    tol = 1e-6 * (x.double().abs() @ (w8.double().abs() * ws.double()[:, None]).t() + bias.abs().double()) \
        + eps * ref.abs()
    assert ((y.double() - ref).abs() <= tol + 1e-30).all()


def test_linear_isas_are_bit_identical_for_int8_modes():
    m, k, n = 23, 301, 67
    _, w8, ws, packed = make_weight(n, k)
    x = torch.randn(m, k) * 4
    x[3, 5] = float("nan")
    bias = torch.randn(n)
    outs = {}
    for isa in each_isa():
        outs[isa] = [
            q8.linear(x, packed, ws, bias),
            q8.linear(x.bfloat16(), packed, ws, None),
            q8.linear(x, packed, ws, bias, "static", torch.tensor(0.05), torch.tensor(120)),
        ]
        w = q8.linear(x, packed, ws, bias, "weight_only")
        if "ref" not in outs:
            outs["ref"] = w
        torch.testing.assert_close(w, outs["ref"], rtol=1e-5, atol=1e-4, equal_nan=True)
    for isa in ISAS[1:]:
        for a, b in zip(outs[ISAS[0]], outs[isa]):
            assert_same(a, b)


def test_linear_non_finite_rows_give_nan_rows():
    _, w8, ws, packed = make_weight(10, 40)
    x = torch.randn(6, 40)
    x[1, 3] = float("nan")
    x[3, 0] = float("inf")
    x[4, 39] = -float("inf")
    bad = torch.tensor([False, True, False, True, True, False])
    bias = torch.randn(10)
    for isa in each_isa():
        for args in [(), ("static", torch.tensor(0.02), torch.tensor(128))]:
            y = q8.linear(x, packed, ws, bias, *args)
            assert y[bad].isnan().all(), isa
            # The other rows are what they are without the bad ones.
            assert_same(y[~bad], q8.linear(x[~bad], packed, ws, bias, *args))
    # weight_only propagates like F.linear.
    y = q8.linear(x, packed, ws, None, "weight_only")
    assert y[1].isnan().all() and y[0].isfinite().all()


def test_linear_rows_are_independent():
    """Each row's output depends only on that row (per-row activation qparams)."""
    _, w8, ws, packed = make_weight(40, 50)
    x = torch.randn(11, 50)
    full = q8.linear(x, packed, ws)
    for r in range(11):
        assert_same(full[r:r + 1], q8.linear(x[r:r + 1], packed, ws))


def test_linear_shapes_batch_dims_empty_and_non_contiguous():
    _, w8, ws, packed = make_weight(19, 37)
    bias = torch.randn(19)
    x = torch.randn(2, 3, 4, 37)
    y = q8.linear(x, packed, ws, bias)
    assert y.shape == (2, 3, 4, 19)
    assert_same(y.reshape(-1, 19), q8.linear(x.reshape(-1, 37), packed, ws, bias))
    # 1-D input.
    assert_same(q8.linear(x[0, 0, 0], packed, ws, bias), y[0, 0, 0])
    # Non-contiguous input.
    xt = torch.randn(37, 8).t()
    assert_same(q8.linear(xt, packed, ws, bias), q8.linear(xt.contiguous(), packed, ws, bias))
    # Empty batch.
    for mode in ("dynamic", "weight_only"):
        assert q8.linear(torch.randn(0, 37), packed, ws, bias, mode).shape == (0, 19)
        assert q8.linear(torch.randn(2, 0, 37), packed, ws, bias, mode).shape == (2, 0, 19)
    # K = 0: the output is the bias.
    w0 = torch.zeros(5, 0, dtype=torch.int8)
    b5 = torch.randn(5)
    for mode in ("dynamic", "weight_only"):
        assert_same(q8.linear(torch.randn(3, 0), q8.pack_weight(w0), torch.ones(5), b5, mode), b5.expand(3, 5))
    # N = 0.
    assert q8.linear(torch.randn(3, 4), q8.pack_weight(torch.zeros(0, 4, dtype=torch.int8)),
                     torch.ones(0)).shape == (3, 0)


def test_linear_ties_and_extremes():
    """Values exactly on .5 code boundaries round half to even, like q8.quantize."""
    k, n = 16, 16
    _, w8, ws, packed = make_weight(n, k)
    s = torch.tensor(0.5)
    z = torch.tensor(100)
    x = torch.arange(-8, 8).float().reshape(1, k) * 0.25  # x / s on every .5
    x = torch.cat([x, torch.full((1, k), 3e38), torch.full((1, k), -3e38)])
    y = q8.linear(x, packed, ws, None, "static", s, z)
    xq = q8.quantize(x, s, z, None, 0, 255, torch.uint8)
    assert_close_rel(y, int8_reference(xq, s, z, w8, ws, None))


def clamp_ref(y, lo, hi):
    """torch.clamp with an open side for None (NaN kept)."""
    if lo is not None:
        y = torch.clamp(y, min=lo)
    if hi is not None:
        y = torch.clamp(y, max=hi)
    return y


CLAMPS = [(0.0, None), (0.0, 6.0), (None, 0.25), (-0.5, 0.5), (0.3, 0.3), (-float("inf"), float("inf")),
          (None, None)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_clamp_is_torch_clamp_in_float32_on_every_isa(dtype):
    """The fused activation (clamp_min / clamp_max): torch.clamp of the float32 result, then the cast to the
    input's dtype, in every mode and on every ISA; NaN rows stay NaN."""
    m, k, n = 13, 70, 37
    _, w8, ws, packed = make_weight(n, k)
    x = (torch.randn(m, k) * 2).to(dtype)
    x[4, 7] = float("nan")
    bias = torch.randn(n)
    modes = [("dynamic", None, None), ("static", torch.tensor(0.03), torch.tensor(110)),
             ("weight_only", None, None)]
    for isa in each_isa():
        for mode in modes:
            plain = q8.linear(x.float(), packed, ws, bias, *mode)
            assert plain[4].isnan().all()
            for lo, hi in CLAMPS:
                y = q8.linear(x, packed, ws, bias, *mode, lo, hi)
                assert_same(y, clamp_ref(plain, lo, hi).to(dtype))
            # Each bound is reached on both sides (the test clamps something).
            assert (plain[~plain.isnan()] > 6).any() and (plain < 0).any(), (isa, mode)


def test_linear_clamp_shapes_empty_and_non_contiguous():
    _, w8, ws, packed = make_weight(19, 37)
    bias = torch.randn(19)
    x = torch.randn(2, 3, 4, 37)
    for mode in ("dynamic", "weight_only"):
        assert_same(q8.linear(x, packed, ws, bias, mode, None, None, 0.0, 1.0),
                    q8.linear(x, packed, ws, bias, mode).clamp(0.0, 1.0))
        xt = torch.randn(37, 8).t()
        assert_same(q8.linear(xt, packed, ws, bias, mode, None, None, 0.0),
                    q8.linear(xt.contiguous(), packed, ws, bias, mode).clamp(min=0.0))
        assert q8.linear(torch.randn(0, 37), packed, ws, bias, mode, None, None, 0.0).shape == (0, 19)
        # K = 0: the output is the clamped bias.
        b5 = torch.randn(5)
        y = q8.linear(torch.randn(3, 0), q8.pack_weight(torch.zeros(5, 0, dtype=torch.int8)), torch.ones(5), b5,
                      mode, None, None, 0.0, 0.5)
        assert_same(y, b5.clamp(0.0, 0.5).expand(3, 5))


def test_linear_from_threads_matches_one_thread():
    _, w8, ws, packed = make_weight(96, 200)
    xs = [torch.randn(17, 200) for _ in range(8)]
    expect = [q8.linear(x, packed, ws) for x in xs]
    got = [None] * 8

    def work(i):
        for _ in range(20):
            got[i] = q8.linear(xs[i], packed, ws)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(got, expect):
        assert_same(a, b)


def test_linear_differentiates_input_straight_through():
    """linear has a backward now (tests/python/test_linear_grad.py covers it); the weight stays frozen."""
    _, w8, ws, packed = make_weight(4, 8)
    x = torch.randn(2, 8, requires_grad=True)
    q8.linear(x, packed, ws).sum().backward()
    ref = (w8.double() * ws.double()[:, None]).sum(0).expand(2, 8)
    torch.testing.assert_close(x.grad.double(), ref, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------
def test_bad_arguments_give_clear_errors():
    _, w8, ws, packed = make_weight(19, 37)
    x = torch.randn(4, 37)
    cases = [
        (lambda: q8.linear(torch.randn(4, 36), packed, ws), r"input.size\(-1\) must match packed_weight's in_features \(37\), got 36"),
        (lambda: q8.linear(x.double(), packed, ws), "input must be float32, float16 or bfloat16, got Double"),
        (lambda: q8.linear(x.long(), packed, ws), "input must be float32, float16 or bfloat16"),
        (lambda: q8.linear(torch.tensor(1.0), packed, ws), "at least 1 dimension"),
        (lambda: q8.linear(x, packed, ws, torch.randn(18)), "bias must be 1-D with out_features = 19"),
        (lambda: q8.linear(x, packed, ws, torch.randn(19).double()), "bias must be float32 or the input's dtype"),
        (lambda: q8.linear(x, packed, ws[:18]), r"weight_scale.size\(0\) must match packed_weight's out_features"),
        (lambda: q8.linear(x, packed, ws.double()), "weight_scale must be a 1-D float32 tensor"),
        (lambda: q8.linear(x, packed, ws, None, "static"), "activation='static' needs the calibrated input_scale"),
        (lambda: q8.linear(x, packed, ws, None, "static", torch.tensor(0.1)), "got input_scale only"),
        (lambda: q8.linear(x, packed, ws, None, "dynamic", torch.tensor(0.1), torch.tensor(0)),
         "only used with activation='static'"),
        (lambda: q8.linear(x, packed, ws, None, "int4"), "activation must be 'dynamic', 'static' or 'weight_only'"),
        (lambda: q8.linear(x, packed, ws, None, "dynamic", None, None, float("nan")), "clamp_min must not be NaN"),
        (lambda: q8.linear(x, packed, ws, None, "weight_only", None, None, None, float("nan")),
         "clamp_max must not be NaN"),
        (lambda: q8.linear(x, packed, ws, None, "dynamic", None, None, 1.0, 0.5),
         "clamp_min must be <= clamp_max, got 1 and 0.5"),
        (lambda: q8.linear(x, packed, ws, None, "static", torch.tensor(0.1), torch.tensor(256)),
         r"input_zero_point|zero_point must lie in \[quant_min, quant_max\] = \[0, 255\]"),
        (lambda: q8.linear(x, packed, ws, None, "static", torch.tensor(0.0), torch.tensor(0)),
         "scale must be finite and > 0"),
        (lambda: q8.linear(x, packed, ws, None, "static", torch.tensor([0.1, 0.2]), torch.tensor(0)),
         "input_scale must be a float32 tensor with one element"),
        (lambda: q8.linear(x, packed.float(), ws), "packed_weight must be a 1-D uint8 tensor made by q8.pack_weight"),
        (lambda: q8.linear(x, w8, ws), "packed_weight must be a 1-D uint8 tensor"),
        (lambda: q8.pack_weight(torch.randn(3, 4)), "weight_int8 must be int8"),
        (lambda: q8.pack_weight(torch.zeros(3, dtype=torch.int8)), "weight_int8 must be 2-D"),
        (lambda: q8.quantize_weight(torch.randn(3)), "weight must be 2-D"),
        (lambda: q8.quantize_weight(torch.randn(3, 3).double()), "weight must be float32, float16 or bfloat16"),
        (lambda: q8.unpack_weight(packed, 19, 36), "in_features must match packed_weight's in_features"),
        (lambda: q8.unpack_weight(packed, 20, 37), "out_features must match packed_weight's out_features"),
        (lambda: q8.int8_mm(torch.zeros(2, 37, dtype=torch.int8), packed, 19), "input must be uint8"),
        (lambda: q8.int8_mm(torch.zeros(2, 36, dtype=torch.uint8), packed, 19), r"input.size\(1\) must match"),
        (lambda: q8.int8_mm(torch.zeros(2, 37, dtype=torch.uint8), packed, 19, torch.zeros(3, dtype=torch.int32)),
         "input_zero_point must have one element or one per row"),
        (lambda: q8.int8_mm(torch.zeros(2, 37, dtype=torch.uint8), packed, 19, torch.tensor([0, 300])),
         r"zero_point must lie in \[quant_min, quant_max\] = \[0, 255\]"),
    ]
    for fn, msg in cases:
        with pytest.raises(RuntimeError, match=msg):
            fn()


def tampered(packed, offset, value_bytes):
    p = packed.clone()
    p[offset:offset + len(value_bytes)] = torch.tensor(list(value_bytes), dtype=torch.uint8)
    return p


def test_bad_packed_weights_give_clear_errors():
    _, w8, ws, packed = make_weight(19, 37)
    x = torch.randn(4, 37)
    n16 = 32
    rowsum_offset = packed.numel() - n16 * 4
    cases = [
        (packed[:-1].clone(), "truncated or extended"),
        (torch.cat([packed, torch.zeros(64, dtype=torch.uint8)]), "truncated or extended"),
        (packed[:40].clone(), "fewer than its 64-byte header"),
        (tampered(packed, 0, b"XXXX"), "does not start with the q8 packed-weight magic"),
        (tampered(packed, 4, (2).to_bytes(4, "little")), "format version 2, this q8 reads version 1"),
        (tampered(packed, 8, (7).to_bytes(4, "little")), "packed for the 'unknown' layout"),
        (tampered(packed, 16, (20).to_bytes(8, "little")), "header is corrupt|checksum|out_features"),
        (tampered(packed, 24, (2**40).to_bytes(8, "little")), "header is corrupt"),
        (tampered(packed, 56, b"\x01"), "checksum mismatch"),
        (tampered(packed, rowsum_offset, b"\x05"), "checksum mismatch"),
        (torch.zeros(packed.numel(), dtype=torch.uint8), "magic"),
    ]
    for bad, msg in cases:
        with pytest.raises(RuntimeError, match=msg):
            q8.linear(x, bad, ws)
        with pytest.raises(RuntimeError, match=msg):
            q8.unpack_weight(bad, 19, 37)
    # A slice that is not 4-byte aligned.
    buf = torch.zeros(packed.numel() + 1, dtype=torch.uint8)
    buf[1:] = packed
    with pytest.raises(RuntimeError, match="4-byte aligned"):
        q8.linear(x, buf[1:], ws)
    # Modified weight bytes (not checked per call: O(N*K)) are caught by unpack_weight.
    bad = packed.clone()
    bad[64 + 5] ^= 0x10
    with pytest.raises(RuntimeError, match="corrupt: the weights of output channel"):
        q8.unpack_weight(bad, 19, 37)
    # Non-zero padding too.
    bad = packed.clone()
    bad[64 + 9 * 64 + 16 * 4 - 1] = 3  # group 9 of panel 0 holds k = 36..39; k = 37.. are padding
    with pytest.raises(RuntimeError, match="corrupt"):
        q8.unpack_weight(bad, 19, 37)
