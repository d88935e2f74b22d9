"""Fake quantization: values, gradients, layouts and CPU kernel families."""
import pytest
import torch

import q8
import reference as ref

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
RANGES = [(-128, 127), (0, 255), (-127, 127), (0, 15), (-8, 7), (-2, 1), (0, 1), (-32768, 32767), (0, 65535)]
ZP_DTYPES = [torch.int32, torch.int64, torch.float32]


def assert_same(actual, expected):
    """Bit-for-bit equality (NaN equal to NaN), dtype and shape included."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


def qparams(n, quant_min, quant_max, zp_dtype, device, per_channel):
    shape = (n,) if per_channel else ()
    scale = (torch.rand(shape, device=device) * 0.2 + 0.01).float()
    lo, hi = quant_min, quant_max
    zp = torch.randint(lo, hi + 1, shape, device=device)
    if zp_dtype == torch.float32:
        zp = zp.float() + (torch.rand(shape, device=device) - 0.5) * 0.8  # not a .5 tie
    return scale, zp.to(zp_dtype)


def random_input(shape, dtype, device, scale_hint=1.0):
    return (torch.randn(shape, device=device) * 8 * scale_hint).to(dtype)


# ---------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("qrange", RANGES)
@pytest.mark.parametrize("zp_dtype", ZP_DTYPES)
def test_per_tensor_matches_reference_and_torch(device, dtype, qrange, zp_dtype):
    qmin, qmax = qrange
    scale, zp = qparams(1, qmin, qmax, zp_dtype, device, per_channel=False)
    x = random_input((37, 129), dtype, device, scale_hint=float(scale) * (qmax - qmin) / 16)
    out = q8.fake_quantize_per_tensor(x, scale, zp, qmin, qmax)
    expected, _ = ref.fake_quantize(x, scale, zp, None, qmin, qmax)
    assert_same(out, expected)
    # torch's own op, given the zero point q8 rounds a float one to.
    zi = ref.rounded_zero_point(zp, qmin, qmax).to(torch.int32)
    assert_same(out, torch.fake_quantize_per_tensor_affine(x, scale, zi, qmin, qmax))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("qrange", [(-128, 127), (0, 255), (-8, 7)])
@pytest.mark.parametrize("zp_dtype", ZP_DTYPES)
def test_per_channel_every_axis(device, dtype, qrange, zp_dtype):
    qmin, qmax = qrange
    x = random_input((3, 5, 7, 11), dtype, device)
    for axis in range(-4, 4):
        n = x.shape[axis]
        scale, zp = qparams(n, qmin, qmax, zp_dtype, device, per_channel=True)
        out = q8.fake_quantize_per_channel(x, scale, zp, axis, qmin, qmax)
        expected, _ = ref.fake_quantize(x, scale, zp, axis % 4, qmin, qmax)
        assert_same(out, expected)
        if dtype != torch.bfloat16:  # torch's CPU per-channel kernel has no bfloat16
            zi = ref.rounded_zero_point(zp, qmin, qmax).to(torch.int32)
            assert_same(out, torch.fake_quantize_per_channel_affine(x, scale, zi, axis % 4, qmin, qmax))


@pytest.mark.parametrize(
    "shape,axis",
    [
        ((100003,), 0),      # one channel per element: periodic layout
        ((1000, 3), 1),      # tiny inner period
        ((64, 5, 9), 1),     # inner 9 < 64: periodic layout
        ((8, 33, 64), 1),    # inner 64: broadcast layout
        ((4, 1, 300), 1),    # one channel
        ((2, 257, 1), 1),    # inner 1
        ((1, 70000), 0),     # a single long run
    ],
)
def test_per_channel_layouts(device, shape, axis):
    x = random_input(shape, torch.float32, device)
    scale, zp = qparams(shape[axis], -128, 127, torch.int32, device, per_channel=True)
    out = q8.fake_quantize_per_channel(x, scale, zp, axis, -128, 127)
    assert_same(out, torch.fake_quantize_per_channel_affine(x, scale, zp, axis, -128, 127))


@pytest.mark.parametrize("dtype", DTYPES)
def test_ties_round_half_to_even(device, dtype):
    scale = torch.tensor(0.25, device=device)
    zp = torch.tensor(0, dtype=torch.int32, device=device)
    k = torch.arange(-20, 20, device=device, dtype=torch.float32)
    x = ((k + 0.5) * 0.25).to(dtype)  # exactly representable .5 ties of x / scale
    out = q8.fake_quantize_per_tensor(x, scale, zp, -128, 127)
    even = torch.round(k + 0.5)  # torch.round is half to even
    assert torch.all(torch.remainder(even, 2) == 0)
    assert_same(out, (even * 0.25).to(dtype))
    assert_same(out, torch.fake_quantize_per_tensor_affine(x, scale, zp, -128, 127))


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_inf_and_huge_values(device, dtype):
    scale = torch.tensor(0.1, device=device)
    zp = torch.tensor(3, dtype=torch.int32, device=device)
    big = torch.finfo(dtype).max
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), big, -big, 1e4, -1e4, 0.0, -0.0],
                     device=device).to(dtype)
    out = q8.fake_quantize_per_tensor(x, scale, zp, -128, 127)
    hi = (torch.tensor(127.0 - 3) * scale.cpu()).to(dtype)  # float32 product, as the kernel
    lo = (torch.tensor(-128.0 - 3) * scale.cpu()).to(dtype)
    expected = torch.stack([torch.tensor(float("nan"), dtype=dtype), hi, lo, hi, lo, hi, lo,
                            torch.tensor(0.0, dtype=dtype), torch.tensor(0.0, dtype=dtype)]).to(device)
    assert_same(out, expected)
    # The straight-through mask: NaN and everything clamped get no input gradient.
    xg = x.clone().requires_grad_()
    q8.fake_quantize_per_tensor(xg, scale, zp, -128, 127).sum().backward()
    assert xg.grad.tolist() == [0, 0, 0, 0, 0, 0, 0, 1, 1]


def test_empty_and_zero_dim(device):
    scale = torch.tensor([0.5], device=device)
    zp = torch.tensor([1], dtype=torch.int32, device=device)
    for shape in [(0,), (3, 0, 4), (0, 5)]:
        x = torch.randn(shape, device=device)
        out = q8.fake_quantize_per_tensor(x, scale, zp, 0, 255)
        assert out.shape == x.shape and out.dtype == x.dtype
    x = torch.randn(3, 0, 4, device=device)
    out = q8.fake_quantize_per_channel(x, torch.ones(4, device=device), torch.zeros(4, dtype=torch.int32, device=device), 2, 0, 255)
    assert out.shape == x.shape
    x0 = torch.tensor(1.26, device=device)
    out0 = q8.fake_quantize_per_tensor(x0, scale, zp, 0, 255)
    assert out0.dim() == 0
    assert_same(out0, torch.tensor(1.5, device=device))
    # Gradients through empty tensors, learnable too.
    xe = torch.randn(0, 3, device=device, requires_grad=True)
    se = scale.clone().requires_grad_()
    ze = zp.float().requires_grad_()
    q8.fake_quantize_per_tensor(xe, se, ze, 0, 255).sum().backward()
    assert xe.grad.shape == xe.shape and se.grad.item() == 0 and ze.grad.item() == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous(device, dtype):
    base = random_input((40, 66), dtype, device)
    scale, zp = qparams(1, -128, 127, torch.int32, device, per_channel=False)
    for x in [base.t(), base[::3, 1::2], base[:, :5].expand(3, 40, 5), base.t()[3:9]]:
        assert not x.is_contiguous()
        assert_same(q8.fake_quantize_per_tensor(x, scale, zp, -128, 127),
                    ref.fake_quantize(x, scale, zp, None, -128, 127)[0])
        sc, zc = qparams(x.shape[-1], -128, 127, torch.int32, device, per_channel=True)
        assert_same(q8.fake_quantize_per_channel(x, sc, zc, -1, -128, 127),
                    ref.fake_quantize(x, sc, zc, x.dim() - 1, -128, 127)[0])
    # Non-contiguous qparams are fine too.
    sc = torch.rand(2 * 66, device=device)[::2] + 0.01
    zc = torch.zeros(2 * 66, dtype=torch.int32, device=device)[::2]
    assert_same(q8.fake_quantize_per_channel(base, sc, zc, 1, -128, 127),
                ref.fake_quantize(base, sc, zc, 1, -128, 127)[0])


def test_float_zero_point_is_rounded_half_even_and_clamped(device):
    x = torch.linspace(-10, 10, 101, device=device)
    scale = torch.tensor(0.1, device=device)
    for zf, zi in [(2.5, 2), (3.5, 4), (-0.5, 0), (1000.0, 255), (-7.2, 0), (4.49, 4)]:
        out = q8.fake_quantize_per_tensor(x, scale, torch.tensor(zf, device=device), 0, 255)
        assert_same(out, q8.fake_quantize_per_tensor(x, scale, torch.tensor(zi, dtype=torch.int32, device=device), 0, 255))


def test_isa_families_are_bit_identical():
    best = q8.cpu_isa()
    families = q8.cpu_isas()
    assert families[0] == best and families[-1] == "default"
    x = torch.randn(100003) * 40
    x[::97] = float("nan")
    x[5::89] = float("inf")
    xh, xb = x.half(), x.bfloat16()
    sc = torch.rand(7) + 0.05
    zc = torch.randint(-5, 5, (7,), dtype=torch.int32)
    g = torch.randn(100003)
    results = {}
    try:
        for isa in families:
            q8.set_cpu_isa(isa)
            outs = []
            for n in [1, 7, 33, 1000, 100003]:
                for t in (x, xh, xb):
                    outs.append(q8.fake_quantize_per_tensor(t[:n], torch.tensor(0.3), torch.tensor(2), -128, 127))
                    outs.append(q8.quantize(t[:n], torch.tensor(0.3), torch.tensor(2), None, 0, 255, torch.uint8))
                    outs.append(torch.stack(q8.choose_qparams(t[:n], -128, 127)[:1]))
            y = x[:100002].reshape(-1, 7)
            outs.append(q8.fake_quantize_per_channel(y, sc, zc, 1, -128, 127))
            outs.append(q8.choose_qparams(y, -128, 127, False, 1)[0])
            outs.append(q8.dequantize(q8.quantize(y, sc, zc, 1, -128, 127, torch.int8), sc, zc, 1))
            xs = x.clone().requires_grad_()
            s = torch.tensor(0.3, requires_grad=True)
            z = torch.tensor(2.0, requires_grad=True)
            (q8.fake_quantize_per_tensor(xs, s, z, -128, 127) * g).sum().backward()
            outs += [xs.grad, s.grad, z.grad]
            results[isa] = outs
    finally:
        q8.set_cpu_isa(best)
    for isa in families[1:]:
        for a, b in zip(results[families[0]], results[isa]):
            assert_same(a, b)
    with pytest.raises(RuntimeError, match="CPU ISA must be one of"):
        q8.set_cpu_isa("sse9")


# ---------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("per_channel", [False, True])
def test_input_gradient_is_straight_through(device, dtype, per_channel):
    x = random_input((33, 65), dtype, device).requires_grad_()
    axis = 1 if per_channel else None
    scale, zp = qparams(65 if per_channel else 1, -128, 127, torch.int32, device, per_channel)
    if per_channel:
        out = q8.fake_quantize_per_channel(x, scale, zp, axis, -128, 127)
    else:
        out = q8.fake_quantize_per_tensor(x, scale, zp, -128, 127)
    g = torch.randn_like(out)
    out.backward(g)
    _, mask = ref.fake_quantize(x.detach(), scale, zp, axis, -128, 127)
    assert 0 < mask.sum() < mask.numel()  # both sides of the clamp are exercised
    assert_same(x.grad, g * mask.to(dtype))
    assert scale.grad is None


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("qrange", [(-128, 127), (0, 255), (-8, 7)])
def test_lsq_gradients_match_torch_learnable(device, per_channel, qrange):
    qmin, qmax = qrange
    x = torch.randn(64, 257, device=device) * 2
    # torch's learnable backward rounds the zero point as trunc(zp + 0.5), its forward
    # as nearbyint(zp): they agree (and agree with q8, which uses nearbyint for both)
    # only for zero points >= -0.5 away from .5 ties, so only those are compared here.
    lo = max(qmin, 0)
    if per_channel:
        scale = (torch.rand(257, device=device) * 0.05 + 0.01)
        zp = torch.randint(lo, qmax, (257,), device=device).float() + 0.2
    else:
        scale = torch.tensor([0.03], device=device)
        zp = torch.tensor([float(max((qmin + qmax) // 2, 0)) + 0.3], device=device)
    g = torch.randn_like(x)
    grads = []
    for fn in ("q8", "torch"):
        xr, sr, zr = (t.clone().requires_grad_() for t in (x, scale, zp))
        if fn == "q8":
            out = (q8.fake_quantize_per_channel(xr, sr, zr, 1, qmin, qmax) if per_channel
                   else q8.fake_quantize_per_tensor(xr, sr, zr, qmin, qmax))
        else:
            out = (torch._fake_quantize_learnable_per_channel_affine(xr, sr, zr, 1, qmin, qmax, 1.0) if per_channel
                   else torch._fake_quantize_learnable_per_tensor_affine(xr, sr, zr, qmin, qmax, 1.0))
        out.backward(g)
        grads.append((out.detach(), xr.grad, sr.grad, zr.grad))
    (o1, dx1, ds1, dz1), (o2, dx2, ds2, dz2) = grads
    assert_same(o1, o2)
    assert_same(dx1, dx2)
    torch.testing.assert_close(ds1, ds2, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(dz1, dz2, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [None, 0, 1, 2])
def test_lsq_gradients_every_dtype(device, dtype, axis):
    x = random_input((6, 70, 5), dtype, device, scale_hint=0.1)
    n = 1 if axis is None else x.shape[axis]
    scale = torch.rand(n if axis is not None else (), device=device) * 0.1 + 0.02
    zp = torch.randn(n if axis is not None else (), device=device).clamp(-3, 3)
    xr, sr, zr = (t.clone().requires_grad_() for t in (x, scale, zp))
    out = (q8.fake_quantize_per_tensor(xr, sr, zr, -8, 7) if axis is None
           else q8.fake_quantize_per_channel(xr, sr, zr, axis, -8, 7))
    g = torch.randn(x.shape, device=device).to(dtype)
    out.backward(g)
    dx, ds, dz = ref.lsq_grads(g, x, scale, zp, axis, -8, 7)
    assert_same(xr.grad, dx)
    assert sr.grad.shape == scale.shape and zr.grad.shape == zp.shape
    torch.testing.assert_close(sr.grad.double(), ds, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(zr.grad.double(), dz, rtol=1e-4, atol=1e-4)


def test_only_scale_learnable_with_integer_zero_point(device):
    x = torch.randn(500, device=device) * 3
    scale = torch.tensor([0.02], device=device, requires_grad=True)
    zp = torch.tensor([4], dtype=torch.int32, device=device)
    q8.fake_quantize_per_tensor(x, scale, zp, -128, 127).sum().backward()
    _, ds, _ = ref.lsq_grads(torch.ones_like(x), x, scale.detach(), zp, None, -128, 127)
    torch.testing.assert_close(scale.grad.double(), ds, rtol=1e-4, atol=1e-4)


def test_learning_the_scale_reduces_the_error():
    torch.manual_seed(1)
    x = torch.randn(4096)
    scale = torch.tensor([2.0], requires_grad=True)  # far too coarse for 4 bits
    zp = torch.tensor([0.0], requires_grad=True)
    opt = torch.optim.SGD([scale, zp], lr=0.2)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = (q8.fake_quantize_per_tensor(x, scale, zp, -8, 7) - x).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0]
    assert 0.05 < scale.item() < 1.0


def test_no_grad_and_inference_mode_skip_the_mask(device):
    x = torch.randn(100, device=device, requires_grad=True)
    s, z = torch.tensor(0.1, device=device), torch.tensor(0, device=device)
    with torch.no_grad():
        y = q8.fake_quantize_per_tensor(x, s, z, -128, 127)
    assert not y.requires_grad
    with torch.inference_mode():
        y2 = q8.fake_quantize_per_tensor(x.detach(), s, z, -128, 127)
    assert_same(y, y2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_memory_format_is_preserved_like_torch(device, dtype):
    """Outputs keep a dense input's strides (channels_last, transposed), as torch's ops do."""
    base = random_input((2, 8, 5, 6), dtype, device)
    inputs = {
        "channels_last": base.to(memory_format=torch.channels_last),
        "permuted": base.permute(3, 1, 0, 2),
        "transposed 2-D": base.reshape(16, 30).t(),
        "sliced (not dense)": base[:, ::2],
        "expanded (overlapping)": base[:1].expand(3, 8, 5, 6),
    }
    for name, x in inputs.items():
        scale, zp = qparams(1, -128, 127, torch.int32, device, per_channel=False)
        out = q8.fake_quantize_per_tensor(x, scale, zp, -128, 127)
        assert_same(out, ref.fake_quantize(x, scale, zp, None, -128, 127)[0])
        expected = torch.fake_quantize_per_tensor_affine(x, scale, zp, -128, 127)
        assert out.stride() == expected.stride(), (name, out.stride(), expected.stride())
        for axis in range(x.dim()):
            sc, zc = qparams(x.shape[axis], -128, 127, torch.int32, device, per_channel=True)
            out = q8.fake_quantize_per_channel(x, sc, zc, axis, -128, 127)
            assert_same(out, ref.fake_quantize(x, sc, zc, axis, -128, 127)[0])
            assert out.stride() == torch.empty_like(x).stride(), (name, axis)
            q = q8.quantize(x, sc, zc, axis, -128, 127, torch.int8)
            assert q.stride() == out.stride()
            d = q8.dequantize(q, sc, zc, axis, dtype)
            assert d.stride() == out.stride()
            assert_same(d, out)
        # Gradients keep the layout too, straight-through and learnable.
        xg = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
        s = scale.clone().requires_grad_()
        y = q8.fake_quantize_per_tensor(xg, s, zp.float(), -128, 127)
        g = torch.randn_like(y)
        y.backward(g)
        dx, ds, _ = ref.lsq_grads(g, xg.detach(), scale, zp.float(), None, -128, 127)
        assert_same(xg.grad, dx)
        torch.testing.assert_close(s.grad.double(), ds, rtol=1e-4, atol=1e-4)


def test_concurrent_calls_from_threads_agree():
    """Eight Python threads calling the ops at once get the single-threaded results."""
    import concurrent.futures

    x = torch.randn(64, 1000) * 4
    sc, zc = torch.rand(1000) + 0.05, torch.randint(-3, 3, (1000,), dtype=torch.int32)
    s, z = torch.tensor(0.2), torch.tensor(1)

    def work(_):
        xg = x.clone().requires_grad_()
        sl = s.clone().requires_grad_()
        y = q8.fake_quantize_per_tensor(xg, sl, z, -128, 127) + q8.fake_quantize_per_channel(x, sc, zc, 1, -8, 7)
        y.sum().backward()
        return y.detach(), xg.grad, sl.grad, q8.choose_qparams(x, 0, 255, False, 1)[0]

    expected = work(0)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for got in pool.map(work, range(32)):
            for a, b in zip(got, expected):
                assert_same(a, b)
