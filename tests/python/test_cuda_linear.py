"""The CUDA kernels of the int8 linear family against the CPU kernels.

The CPU kernels are the reference (tests/python/test_linear.py checks them against
exact integer and float64 references). On CUDA:
  * quantize_weight, int8_mm, and linear in the "dynamic" and "static" modes are
    bit-identical to the CPU (exact integer sums, the same float32 epilogue);
  * "weight_only" is within float32-accumulation tolerance;
  * both GEMM paths run: M <= 16 (q8's own tensor-core kernel) and M > 16
    (cuBLASLt through torch._int_mm), K not a multiple of 4 / 16, N not a multiple
    of 16, and K > 65536 (int32 chunks summed in int64);
  * nothing synchronizes: q8.linear, q8.int8_mm and q8.pack_weight are captured in
    a CUDA graph and replayed.
"""
import pytest
import torch
import torch.nn.functional as F

import q8
from test_fake_quantize import assert_same
from test_linear import clamp_ref

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key("q8::linear", "CUDA")),
    reason="no GPU, or q8 built without CUDA kernels")

DEV = "cuda"
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
MS = [1, 5, 16, 17, 64, 300]          # <= 16: q8's small-M kernel; > 16: torch._int_mm
KNS = [(37, 19), (130, 65), (256, 48), (1000, 33)]


def cuda_packed_numel(n, k):
    n16, k16 = -(-n // 16) * 16, -(-k // 16) * 16
    return 128 + n16 * k16 + 4 * n16


def cpu_packed_numel(n, k):
    panels, groups = -(-n // 16), -(-k // 4)
    return 64 + panels * groups * 64 + panels * 64


def make_weight(n, k, seed=0):
    """A float weight, its canonical form (from the CPU) and both packed forms."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    w8, ws = q8.quantize_weight(w)
    return w8, ws, q8.pack_weight(w8), q8.pack_weight(w8.to(DEV))


def both(fn, *args):
    """fn on the CPU and on CUDA (tensors moved), the CUDA result moved back."""
    cpu = fn(*args)
    dev = fn(*[a.to(DEV) if isinstance(a, torch.Tensor) else a for a in args])
    return cpu, tuple(t.cpu() for t in dev) if isinstance(dev, tuple) else dev.cpu()


def weight_only_tol(x, w8, ws, bias, dtype):
    eps = {torch.float32: 0.0, torch.bfloat16: 2**-8, torch.float16: 2**-11}[dtype]
    ref = F.linear(x.double(), w8.double() * ws.double()[:, None], None if bias is None else bias.double())
    mag = x.double().abs() @ (w8.double().abs() * ws.double()[:, None]).t()
    if bias is not None:
        mag = mag + bias.double().abs()
    return ref, 2e-6 * mag + eps * ref.abs() + 1e-30


# ---------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (17, 13), (64, 256), (3, 1000), (300, 4100)])
def test_quantize_weight_bit_identical(dtype, shape):
    w = (torch.randn(shape) * torch.rand(shape[0], 1) * 10).to(dtype)
    w[0] = 0
    (q_cpu, s_cpu), (q_dev, s_dev) = both(q8.quantize_weight, w)
    assert_same(q_dev, q_cpu)
    assert_same(s_dev, s_cpu)


def test_quantize_weight_non_finite_rows_give_nan_scales():
    """The CPU raises; CUDA cannot without a synchronization: NaN scale, codes 0."""
    w = torch.randn(5, 40)
    w[1, 3] = float("nan")
    w[3, 0] = float("inf")
    q, s = q8.quantize_weight(w.to(DEV))
    q, s = q.cpu(), s.cpu()
    bad = torch.tensor([False, True, False, True, False])
    assert s[bad].isnan().all() and (q[bad] == 0).all()
    q_ref, s_ref = q8.quantize_weight(w[~bad])
    assert_same(q[~bad], q_ref)
    assert_same(s[~bad], s_ref)
    # And every output of those channels is NaN.
    y = q8.linear(torch.randn(3, 40, device=DEV), q8.pack_weight(q.to(DEV)), s.to(DEV)).cpu()
    assert y[:, bad].isnan().all() and y[:, ~bad].isfinite().all()


@pytest.mark.parametrize("n,k", [(1, 1), (15, 3), (16, 4), (17, 5), (33, 64), (100, 130), (0, 8), (8, 0), (3, 70000)])
def test_pack_unpack_round_trip(n, k):
    w8 = torch.randint(-128, 128, (n, k), dtype=torch.int8, device=DEV)
    packed = q8.pack_weight(w8)
    assert packed.device.type == DEV and packed.dtype == torch.uint8 and packed.dim() == 1
    assert packed.numel() == cuda_packed_numel(n, k) != cpu_packed_numel(n, k)
    assert_same(q8.unpack_weight(packed, n, k), w8)
    assert_same(q8.pack_weight(w8.t().contiguous().t()), packed)
    header = packed[:128].cpu()
    assert bytes(header[:4].tolist()) == b"Q8PW"
    assert int.from_bytes(bytes(header[8:12].tolist()), "little") == 2  # PackLayout::CudaRowMajor
    assert (header[64:] == 0).all()
    # The layout: row-major [N16][K16] int8, zero padded, then int32 row sums.
    n16, k16 = -(-n // 16) * 16, -(-k // 16) * 16
    body = packed[128:128 + n16 * k16].cpu().view(torch.int8).reshape(n16, k16)
    assert_same(body[:n, :k], w8.cpu())
    assert (body[n:] == 0).all() and (body[:, k:] == 0).all()
    rowsums = packed[128 + n16 * k16:].cpu().view(torch.int32)
    assert_same(rowsums[:n], w8.cpu().int().sum(1, dtype=torch.int32))


# ---------------------------------------------------------------------------
# int8_mm: exact
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("m", [0, 1, 5, 16, 17, 64, 300])
@pytest.mark.parametrize("k", [1, 3, 4, 63, 64, 65, 1000])
@pytest.mark.parametrize("n", [1, 15, 17, 130])
def test_int8_mm_bit_identical(m, k, n):
    w8 = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    a = torch.randint(0, 256, (m, k), dtype=torch.uint8)
    zp = torch.randint(0, 256, (m,), dtype=torch.int32)
    pc, pd = q8.pack_weight(w8), q8.pack_weight(w8.to(DEV))
    ad = a.to(DEV)
    assert_same(q8.int8_mm(ad, pd, n).cpu(), q8.int8_mm(a, pc, n))
    assert_same(q8.int8_mm(ad, pd, n, zp.to(DEV)).cpu(), q8.int8_mm(a, pc, n, zp))
    assert_same(q8.int8_mm(ad, pd, n, zp.long().to(DEV)).cpu(), q8.int8_mm(a, pc, n, zp.long()))
    z1 = torch.tensor(77)
    assert_same(q8.int8_mm(ad, pd, n, z1.to(DEV)).cpu(), q8.int8_mm(a, pc, n, z1))


@pytest.mark.parametrize("m", [9, 40])
def test_int8_mm_extremes_and_non_contiguous(m):
    n, k = 33, 260
    w8 = torch.full((n, k), -128, dtype=torch.int8)
    w8[1::2] = 127
    a = torch.full((k, m), 255, dtype=torch.uint8).t()
    a[::3] = 0
    cpu = q8.int8_mm(a, q8.pack_weight(w8), n)
    assert_same(q8.int8_mm(a.to(DEV), q8.pack_weight(w8.to(DEV)), n).cpu(), cpu)


@pytest.mark.parametrize("m", [2, 20])
@pytest.mark.parametrize("k", [65536 + 4, 65536 + 16 * 5, 1 << 20])
def test_int8_mm_long_k_exact(m, k):
    """Sums far outside int32: the kernels sum exact int32 chunks of 65536 k in int64."""
    n = 3
    w8 = torch.full((n, k), -128, dtype=torch.int8)
    w8[1] = 127
    w8[2, ::2] = 1
    a = torch.full((m, k), 255, dtype=torch.uint8)
    a[1, 1::3] = 3
    zp = torch.arange(m, dtype=torch.int32) * 11
    expect = q8.int8_mm(a, q8.pack_weight(w8), n, zp)
    assert expect.abs().max() > 2**30
    assert_same(q8.int8_mm(a.to(DEV), q8.pack_weight(w8.to(DEV)), n, zp.to(DEV)).cpu(), expect)


# ---------------------------------------------------------------------------
# linear, dynamic and static: bit-identical
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("k,n", KNS)
@pytest.mark.parametrize("bias_kind", ["none", "float32", "input"])
def test_linear_dynamic_bit_identical(dtype, m, k, n, bias_kind):
    _, ws, pc, pd = make_weight(n, k)
    x = (torch.randn(m, k) * 3 + 0.5).to(dtype)
    bias = {"none": None, "float32": torch.randn(n), "input": torch.randn(n).to(dtype)}[bias_kind]
    y_cpu = q8.linear(x, pc, ws, bias)
    y = q8.linear(x.to(DEV), pd, ws.to(DEV), None if bias is None else bias.to(DEV))
    assert y.device.type == DEV and y.dtype == dtype and y.shape == (m, n) and y.is_contiguous()
    assert_same(y.cpu(), y_cpu)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", MS)
def test_linear_static_bit_identical(dtype, m):
    k, n = 70, 21
    _, ws, pc, pd = make_weight(n, k)
    x = (torch.randn(m, k) * 2).to(dtype)
    bias = torch.randn(n).to(dtype)
    s = torch.tensor(0.03)
    for z in (torch.tensor(128, dtype=torch.int32), torch.tensor([3]), torch.tensor(255), torch.tensor(0)):
        y_cpu = q8.linear(x, pc, ws, bias, "static", s, z)
        y = q8.linear(x.to(DEV), pd, ws.to(DEV), bias.to(DEV), "static", s.to(DEV), z.to(DEV))
        assert_same(y.cpu(), y_cpu)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", MS)
def test_linear_fused_clamp(dtype, m):
    """The clamp in the CUDA epilogues: dynamic / static bit-identical to the CPU; weight_only the clamp of its
    own unclamped output (NaN rows kept)."""
    k, n = 70, 21
    _, ws, pc, pd = make_weight(n, k)
    x = (torch.randn(m, k) * 3).to(dtype)
    x[m // 2, 1] = float("nan")
    bias = torch.randn(n)
    s, z = torch.tensor(0.03), torch.tensor(120)
    for lo, hi in [(0.0, None), (0.0, 6.0), (None, -0.25), (0.5, 0.5)]:
        for args in [("dynamic", None, None), ("static", s, z)]:
            y_cpu = q8.linear(x, pc, ws, bias, *args, lo, hi)
            dev_args = [a.to(DEV) if isinstance(a, torch.Tensor) else a for a in args]
            y = q8.linear(x.to(DEV), pd, ws.to(DEV), bias.to(DEV), *dev_args, lo, hi)
            assert_same(y.cpu(), y_cpu)
        plain = q8.linear(x.to(DEV), pd, ws.to(DEV), bias.to(DEV), "weight_only").float()
        y = q8.linear(x.to(DEV), pd, ws.to(DEV), bias.to(DEV), "weight_only", None, None, lo, hi)
        ref = clamp_ref(plain, lo, hi)
        if dtype == torch.float32:
            assert_same(y, ref)
        else:  # (the kernel clamps its float32 result; plain is already rounded: clamp and rounding commute)
            assert_same(y, ref.to(dtype))


def test_linear_ties_and_extremes():
    k, n = 16, 16
    _, ws, pc, pd = make_weight(n, k)
    s, z = torch.tensor(0.5), torch.tensor(100)
    x = torch.arange(-8, 8).float().reshape(1, k) * 0.25
    x = torch.cat([x, torch.full((1, k), 3e38), torch.full((1, k), -3e38), torch.full((1, k), 1e-40)])
    for args in [(), ("static", s, z)]:
        y_cpu = q8.linear(x, pc, ws, None, *args)
        dargs = [a.to(DEV) if isinstance(a, torch.Tensor) else a for a in args]
        assert_same(q8.linear(x.to(DEV), pd, ws.to(DEV), None, *dargs).cpu(), y_cpu)


@pytest.mark.parametrize("m", [2, 20])
def test_linear_long_k_bit_identical(m):
    k, n = 65536 + 48, 24
    _, ws, pc, pd = make_weight(n, k)
    x = torch.randn(m, k)
    x[:, ::7] = 4.0
    bias = torch.randn(n)
    assert_same(q8.linear(x.to(DEV), pd, ws.to(DEV), bias.to(DEV)).cpu(), q8.linear(x, pc, ws, bias))
    x1 = torch.full((m, k), 1.0)
    assert_same(q8.linear(x1.to(DEV), pd, ws.to(DEV)).cpu(), q8.linear(x1, pc, ws))


@pytest.mark.parametrize("m", [6, 40])
def test_linear_non_finite_rows_give_nan_rows(m):
    _, ws, pc, pd = make_weight(10, 40)
    x = torch.randn(m, 40)
    x[1, 3] = float("nan")
    x[3, 0] = float("inf")
    x[4, 39] = -float("inf")
    bias = torch.randn(10)
    for args in [(), ("static", torch.tensor(0.02), torch.tensor(128))]:
        dargs = [a.to(DEV) if isinstance(a, torch.Tensor) else a for a in args]
        y = q8.linear(x.to(DEV), pd, ws.to(DEV), bias.to(DEV), *dargs).cpu()
        assert y[[1, 3, 4]].isnan().all()
        assert_same(y, q8.linear(x, pc, ws, bias, *args))
    y = q8.linear(x.to(DEV), pd, ws.to(DEV), None, "weight_only").cpu()
    assert y[1].isnan().all() and y[0].isfinite().all()


def test_linear_shapes_batch_dims_empty_and_non_contiguous():
    _, ws, pc, pd = make_weight(19, 37)
    wsd = ws.to(DEV)
    bias = torch.randn(19)
    bd = bias.to(DEV)
    x = torch.randn(2, 3, 4, 37)
    y = q8.linear(x.to(DEV), pd, wsd, bd)
    assert y.shape == (2, 3, 4, 19)
    assert_same(y.cpu(), q8.linear(x, pc, ws, bias))
    assert_same(q8.linear(x[0, 0, 0].to(DEV), pd, wsd, bd).cpu(), y[0, 0, 0].cpu())
    xt = torch.randn(37, 8).t()
    for mode in ("dynamic", "weight_only"):
        assert_same(q8.linear(xt.to(DEV), pd, wsd, bd, mode).cpu(),
                    q8.linear(xt.contiguous().to(DEV), pd, wsd, bd, mode).cpu())
    # A row-strided input (a slice of wider rows) and an expanded one.
    wide = torch.randn(6, 50)
    assert_same(q8.linear(wide.to(DEV)[:, :37], pd, wsd, bd).cpu(), q8.linear(wide[:, :37], pc, ws, bias))
    one = torch.randn(1, 37).expand(5, 37)
    assert_same(q8.linear(one.to(DEV), pd, wsd, bd).cpu(), q8.linear(one, pc, ws, bias))
    for mode in ("dynamic", "weight_only"):
        assert q8.linear(torch.randn(0, 37, device=DEV), pd, wsd, bd, mode).shape == (0, 19)
        assert q8.linear(torch.randn(2, 0, 37, device=DEV), pd, wsd, bd, mode).shape == (2, 0, 19)
    # K = 0: the output is the bias. N = 0: empty.
    b5 = torch.randn(5, device=DEV)
    p0 = q8.pack_weight(torch.zeros(5, 0, dtype=torch.int8, device=DEV))
    for mode in ("dynamic", "weight_only"):
        for m in (3, 20, 70):
            assert_same(q8.linear(torch.randn(m, 0, device=DEV), p0, torch.ones(5, device=DEV), b5, mode),
                        b5.expand(m, 5))
    pn = q8.pack_weight(torch.zeros(0, 4, dtype=torch.int8, device=DEV))
    assert q8.linear(torch.randn(3, 4, device=DEV), pn, torch.ones(0, device=DEV)).shape == (3, 0)


def test_linear_rows_are_independent():
    _, ws, pc, pd = make_weight(40, 50)
    x = torch.randn(30, 50, device=DEV)
    full = q8.linear(x, pd, ws.to(DEV))
    for r in (0, 7, 29):
        assert_same(full[r:r + 1], q8.linear(x[r:r + 1], pd, ws.to(DEV)))


# ---------------------------------------------------------------------------
# linear, weight_only: tolerance
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 5, 16, 17, 64, 65, 300])
@pytest.mark.parametrize("k,n", [(1, 1), (37, 19), (130, 70), (4096, 33)])
def test_linear_weight_only_close(dtype, m, k, n):
    w8, ws, pc, pd = make_weight(n, k)
    x = torch.randn(m, k).to(dtype)
    bias = torch.randn(n)
    y = q8.linear(x.to(DEV), pd, ws.to(DEV), bias.to(DEV), "weight_only")
    assert y.dtype == dtype and y.shape == (m, n)
    ref, tol = weight_only_tol(x, w8, ws, bias, dtype)
    err = (y.cpu().double() - ref).abs()
    assert (err <= tol).all(), (err - tol).max()
    # And close to the CPU kernel.
    torch.testing.assert_close(y.cpu().float(), q8.linear(x, pc, ws, bias, "weight_only").float(),
                               rtol=2e-2 if dtype != torch.float32 else 1e-5, atol=5e-3)


# ---------------------------------------------------------------------------
# Split K: the small-M kernels split K over blocks when N / 16 is small against
# the SM count (N = 256 at M = 1 is 16 blocks: split on every GPU with 32+ SMs)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("m", [1, 7, 16])
@pytest.mark.parametrize("k,n", [(4096, 256), (2000, 70), (70000, 16)])
def test_split_k_small_n(m, k, n):
    w8, ws, pc, pd = make_weight(n, k)
    x = torch.randn(m, k)
    bias = torch.randn(n)
    # int8 modes and int8_mm: exact partials, bit-identical to the CPU.
    assert_same(q8.linear(x.to(DEV), pd, ws.to(DEV), bias.to(DEV)).cpu(), q8.linear(x, pc, ws, bias))
    a = torch.randint(0, 256, (m, k), dtype=torch.uint8)
    zp = torch.randint(0, 256, (m,), dtype=torch.int32)
    assert_same(q8.int8_mm(a.to(DEV), pd, n, zp.to(DEV)).cpu(), q8.int8_mm(a, pc, n, zp))
    # weight_only: float32 partials, within the float32 tolerance, deterministic
    # (K = 70000 is for the int32 chunks of the int8 kernel; the float bound is for K <= 4096).
    for dtype in DTYPES if k <= 4096 else []:
        xd = x.to(dtype)
        y = q8.linear(xd.to(DEV), pd, ws.to(DEV), bias.to(DEV), "weight_only")
        ref, tol = weight_only_tol(xd, w8, ws, bias, dtype)
        assert ((y.cpu().double() - ref).abs() <= tol).all(), dtype
        assert_same(q8.linear(xd.to(DEV), pd, ws.to(DEV), bias.to(DEV), "weight_only"), y)


# ---------------------------------------------------------------------------
# Packed weights on the wrong device, tampered, or for another shape
# ---------------------------------------------------------------------------
def test_cpu_packed_weight_on_cuda_says_repack():
    _, ws, pc, pd = make_weight(19, 37)
    x = torch.randn(4, 37, device=DEV)
    with pytest.raises(RuntimeError, match=r"packed for the 'cpu' layout.*repack the canonical weight on this device"):
        q8.linear(x, pc.to(DEV), ws.to(DEV))
    with pytest.raises(RuntimeError, match=r"packed for the 'cpu' layout"):
        q8.int8_mm(torch.zeros(2, 37, dtype=torch.uint8, device=DEV), pc.to(DEV), 19)
    with pytest.raises(RuntimeError, match=r"packed for the 'cpu' layout but this is the 'cuda' kernel"):
        q8.unpack_weight(pc.to(DEV), 19, 37)


def test_cuda_packed_weight_on_cpu_says_repack():
    _, ws, pc, pd = make_weight(19, 37)
    with pytest.raises(RuntimeError, match=r"packed for the 'cuda' layout but this is the 'cpu' kernel"):
        q8.linear(torch.randn(4, 37), pd.cpu(), ws)
    with pytest.raises(RuntimeError, match=r"packed for the 'cuda' layout"):
        q8.unpack_weight(pd.cpu(), 19, 37)


def test_bad_arguments_on_cuda():
    _, ws, pc, pd = make_weight(19, 37)
    wsd = ws.to(DEV)
    x = torch.randn(4, 37, device=DEV)
    # (The padded size, all that is checked on the host, differs: K = 30 pads to 32,
    # N = 16 to 16, N = 40 to 48; 37 pads to 48 and 19 to 32.)
    cases = [
        (lambda: q8.linear(torch.randn(4, 30, device=DEV), pd, wsd), r"'cuda' layout of weight_scale.size\(0\) = 19 x "
                                                                     r"input.size\(-1\) = 30 needs"),
        (lambda: q8.linear(x, pd, wsd[:16]), r"weight_scale.size\(0\) = 16"),
        (lambda: q8.linear(x, pd[:-1], wsd), "must match the packed weight"),
        (lambda: q8.linear(x.double(), pd, wsd), "input must be float32, float16 or bfloat16"),
        (lambda: q8.linear(x, pd, ws), "weight_scale must be on the same device as input"),
        (lambda: q8.linear(x.cpu(), pd, ws), "packed_weight must be on the same device as input"),
        (lambda: q8.linear(x, pd, wsd, None, "static"), "activation='static' needs"),
        (lambda: q8.int8_mm(torch.zeros(2, 30, dtype=torch.uint8, device=DEV), pd, 19), r"input.size\(1\) = 30"),
        (lambda: q8.int8_mm(torch.zeros(2, 37, dtype=torch.uint8, device=DEV), pd, 40), "out_features = 40"),
        (lambda: q8.unpack_weight(pd, 19, 36), "in_features must match packed_weight's in_features"),
        (lambda: q8.unpack_weight(pd, 20, 37), "out_features must match packed_weight's out_features"),
    ]
    for fn, msg in cases:
        with pytest.raises(RuntimeError, match=msg):
            fn()
    buf = torch.zeros(pd.numel() + 16, dtype=torch.uint8, device=DEV)
    buf[1:pd.numel() + 1] = pd
    with pytest.raises(RuntimeError, match="16-byte aligned"):
        q8.linear(x, buf[1:pd.numel() + 1], wsd)


def test_header_of_another_shape_gives_nan():
    """K = 17 and K = 32 have the same padded size: the size check passes, the
    kernels compare the header (on the device) and give NaN."""
    _, ws, _, pd = make_weight(16, 32)
    for m in (3, 30):
        for mode in ("dynamic", "weight_only"):
            y = q8.linear(torch.randn(m, 17, device=DEV), pd, ws.to(DEV), None, mode)
            assert y.isnan().all()


def tampered(packed, offset, value_bytes):
    p = packed.clone()
    p[offset:offset + len(value_bytes)] = torch.tensor(list(value_bytes), dtype=torch.uint8, device=packed.device)
    return p


def test_unpack_checks_header_and_weights():
    _, _, _, pd = make_weight(19, 37)
    cases = [
        (tampered(pd, 0, b"XXXX"), "magic"),
        (tampered(pd, 4, (2).to_bytes(4, "little")), "format version 2"),
        (tampered(pd, 8, (7).to_bytes(4, "little")), "packed for the 'unknown' layout"),
        (tampered(pd, 24, (2**40).to_bytes(8, "little")), "header is corrupt"),
        (tampered(pd, 56, b"\x01"), "checksum mismatch"),
        (tampered(pd, 100, b"\x01"), "reserved bytes"),
        (pd[:-1].clone(), "truncated or extended"),
        (pd[:100].clone(), "fewer than its 128-byte header"),
    ]
    for bad, msg in cases:
        with pytest.raises(RuntimeError, match=msg):
            q8.unpack_weight(bad, 19, 37)
    k16 = 48
    bad = pd.clone()
    bad[128 + 5] ^= 0x10
    with pytest.raises(RuntimeError, match="corrupt: the weights of output channel 0"):
        q8.unpack_weight(bad, 19, 37)
    bad = pd.clone()
    bad[128 + 2 * k16 + 40] = 3  # row 2, k = 40: padding (K = 37)
    with pytest.raises(RuntimeError, match="corrupt: the weights of output channel 2"):
        q8.unpack_weight(bad, 19, 37)
    bad = pd.clone()
    bad[128 + 25 * k16] = 1  # row 25: a padding row (N = 19)
    with pytest.raises(RuntimeError, match="corrupt: the weights of output channel 25"):
        q8.unpack_weight(bad, 19, 37)


# ---------------------------------------------------------------------------
# No synchronization: CUDA graphs
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("m", [5, 64])
@pytest.mark.parametrize("mode", ["dynamic", "static", "weight_only"])
def test_cuda_graph_capture_and_replay(m, mode):
    k, n = 100, 70
    _, ws, _, pd = make_weight(n, k)
    wsd, bd = ws.to(DEV), torch.randn(n, device=DEV)
    extra = (torch.tensor(0.05, device=DEV), torch.tensor(120, dtype=torch.int32, device=DEV)) if mode == "static" \
        else (None, None)
    x_static = torch.randn(m, k, device=DEV, dtype=torch.bfloat16)

    def run():
        return q8.linear(x_static, pd, wsd, bd, mode, *extra)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            run()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_static = run()
    for _ in range(3):
        x_new = torch.randn(m, k, device=DEV, dtype=torch.bfloat16)
        x_static.copy_(x_new)
        graph.replay()
        torch.cuda.synchronize()
        assert_same(y_static, q8.linear(x_new, pd, wsd, bd, mode, *extra))


def test_cuda_graph_capture_of_pack_and_int8_mm():
    n, k, m = 33, 90, 20
    w8 = torch.randint(-128, 128, (n, k), dtype=torch.int8, device=DEV)
    a = torch.randint(0, 256, (m, k), dtype=torch.uint8, device=DEV)
    zp = torch.randint(0, 256, (m,), dtype=torch.int32, device=DEV)
    s = torch.cuda.Stream()  # warm-up (cuBLASLt handles) outside the capture
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        q8.int8_mm(a, q8.pack_weight(w8), n, zp)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        packed = q8.pack_weight(w8)
        out = q8.int8_mm(a, packed, n, zp)
    w8.copy_(torch.randint(-128, 128, (n, k), dtype=torch.int8, device=DEV))
    graph.replay()
    torch.cuda.synchronize()
    assert_same(q8.unpack_weight(packed, n, k), w8)
    assert_same(out.cpu(), q8.int8_mm(a.cpu(), q8.pack_weight(w8.cpu()), n, zp.cpu()))


# ---------------------------------------------------------------------------
# q8.nn.Int8Linear on CUDA
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("activation", ["dynamic", "static", "weight_only"])
def test_int8linear_to_cuda_matches_cpu(activation):
    torch.manual_seed(0)
    lin = torch.nn.Linear(130, 70)
    extra = {"input_scale": 0.04, "input_zero_point": 120} if activation == "static" else {}
    cpu = q8.nn.Int8Linear.from_float(lin, activation=activation, **extra)
    dev = q8.nn.Int8Linear.from_float(lin, activation=activation, **extra).to(DEV)
    assert dev._packed.device.type == DEV and dev._packed.numel() == cuda_packed_numel(70, 130)
    # from_float on a CUDA layer quantizes on the GPU to the same canonical form.
    on_dev = q8.nn.Int8Linear.from_float(lin.to(DEV), activation=activation, **extra)
    lin.cpu()
    for name in ("weight_int8", "weight_scale", "bias"):
        assert_same(getattr(on_dev, name).cpu(), getattr(cpu, name))
    for dtype in DTYPES:
        for m in (1, 16, 17, 300):
            x = (torch.randn(m, 130) * 2).to(dtype)
            y_cpu = cpu(x)
            y = dev(x.to(DEV))
            assert y.dtype == dtype
            if activation == "weight_only":
                torch.testing.assert_close(y.cpu().float(), y_cpu.float(), rtol=2e-2 if dtype != torch.float32
                                           else 1e-5, atol=1e-3)
            else:
                assert_same(y.cpu(), y_cpu)
    x = torch.randn(3, 130)
    # A state_dict saved from the GPU module loads into a CPU one.
    fresh = q8.nn.Int8Linear(130, 70, activation=activation)
    fresh.load_state_dict(dev.state_dict())
    assert_same(fresh(x), cpu(x))
    # Back to the CPU: repacked for the CPU kernels.
    back = dev.cpu()
    assert back._packed.numel() == cpu_packed_numel(70, 130)
    assert_same(back(x), cpu(x))
