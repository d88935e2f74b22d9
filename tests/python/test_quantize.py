"""choose_qparams, quantize and dequantize."""
import pytest
import torch
from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

import q8
import reference as ref
from test_fake_quantize import DTYPES, assert_same


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("qrange", [(-128, 127), (0, 255), (-127, 127), (0, 15), (-8, 7)])
def test_choose_qparams_matches_reference(device, dtype, symmetric, qrange):
    qmin, qmax = qrange
    x = (torch.randn(50, 33, device=device) * 3 + 0.7).to(dtype)
    scale, zp = q8.choose_qparams(x, qmin, qmax, symmetric)
    assert scale.shape == () and zp.shape == () and scale.dtype == torch.float32 and zp.dtype == torch.int32
    es, ez = ref.choose_qparams(x.cpu(), qmin, qmax, symmetric)
    assert_same(scale.cpu(), es)
    assert_same(zp.cpu(), ez)
    for axis in (0, 1, -1):
        scale, zp = q8.choose_qparams(x, qmin, qmax, symmetric, axis)
        es, ez = ref.choose_qparams(x.cpu(), qmin, qmax, symmetric, axis % 2)
        assert scale.shape == (x.shape[axis],)
        assert_same(scale.cpu(), es)
        assert_same(zp.cpu(), ez)


@pytest.mark.parametrize("symmetric", [False, True])
def test_choose_qparams_matches_torch_observers(symmetric):
    x = torch.randn(64, 40) * 2 + 0.3
    qscheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
    for dtype, (qmin, qmax) in [(torch.qint8, (-128, 127)), (torch.quint8, (0, 255))]:
        obs = MinMaxObserver(dtype=dtype, qscheme=qscheme)
        obs(x)
        ts, tz = obs.calculate_qparams()
        s, z = q8.choose_qparams(x, qmin, qmax, symmetric)
        assert_same(s, ts.reshape(()))
        assert int(z) == int(tz)
        cqs = torch.per_channel_symmetric if symmetric else torch.per_channel_affine
        pobs = PerChannelMinMaxObserver(ch_axis=1, dtype=dtype, qscheme=cqs)
        pobs(x)
        ts, tz = pobs.calculate_qparams()
        s, z = q8.choose_qparams(x, qmin, qmax, symmetric, 1)
        assert_same(s, ts)
        assert torch.equal(z.long(), tz.long())


def test_choose_qparams_degenerate_inputs(device):
    eps = torch.finfo(torch.float32).eps
    big = torch.finfo(torch.float32).max
    cases = {
        "zeros": torch.zeros(100, device=device),
        "constant": torch.full((100,), 5.0, device=device),
        "negative constant": torch.full((100,), -5.0, device=device),
        "empty": torch.zeros(0, device=device),
        "zero-dim": torch.tensor(3.0, device=device),
        "nan and inf": torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0, -2.0], device=device),
        "all nan": torch.full((10,), float("nan"), device=device),
        "float32 extremes": torch.tensor([big, -big], device=device),
    }
    for name, x in cases.items():
        for symmetric in (False, True):
            for qmin, qmax in [(-128, 127), (0, 255), (0, 1)]:
                s, z = q8.choose_qparams(x, qmin, qmax, symmetric)
                assert torch.isfinite(s) and s >= eps, (name, s)
                assert qmin <= int(z) <= qmax, (name, z)
                es, ez = ref.choose_qparams(x.cpu(), qmin, qmax, symmetric)
                assert_same(s.cpu(), es)
                assert_same(z.cpu(), ez)
    s, z = q8.choose_qparams(cases["nan and inf"], -128, 127)
    torch.testing.assert_close(s.cpu(), torch.tensor(3.0 / 255))  # NaN and +-Inf are ignored
    s, z = q8.choose_qparams(cases["zeros"], -128, 127)
    assert float(s) == eps and int(z) == -128
    s, z = q8.choose_qparams(cases["constant"], 0, 255, True)
    assert int(z) == 128
    # Per channel with an empty reduction gives valid qparams for every channel.
    s, z = q8.choose_qparams(torch.zeros(4, 0, device=device), -128, 127, False, 0)
    assert s.shape == (4,) and torch.all(s == eps)


def test_choose_qparams_non_contiguous_and_layouts(device):
    base = torch.randn(30, 70, 9, device=device)
    for x, axis in [(base.transpose(0, 2), 0), (base[:, ::2], 1), (base, 2), (base, 0), (base.reshape(-1, 3), 1)]:
        s, z = q8.choose_qparams(x, -128, 127, False, axis)
        es, ez = ref.choose_qparams(x.cpu(), -128, 127, False, axis)
        assert_same(s.cpu(), es)
        assert_same(z.cpu(), ez)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("qdtype,qrange", [(torch.int8, (-128, 127)), (torch.uint8, (0, 255)),
                                          (torch.int8, (-127, 127)), (torch.int32, (-32768, 32767)),
                                          (torch.uint8, (0, 15))])
@pytest.mark.parametrize("per_channel", [False, True])
def test_quantize_dequantize_round_trip(device, dtype, qdtype, qrange, per_channel):
    qmin, qmax = qrange
    x = (torch.randn(40, 24, device=device) * 4).to(dtype)
    x[0, :4] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e4])
    axis = 1 if per_channel else None
    s, z = q8.choose_qparams(x, qmin, qmax, False, axis)
    q = q8.quantize(x, s, z, axis, qmin, qmax, qdtype)
    assert q.dtype == qdtype and q.shape == x.shape
    assert_same(q, ref.quantize(x, s, z, axis, qmin, qmax, qdtype))
    assert int(q.min()) >= qmin and int(q.max()) <= qmax
    # NaN maps to the zero point, +-Inf to the ends of the range.
    z0 = int(z if axis is None else z[0])
    assert q[0, 0].item() == z0 and q[0, 1].item() == qmax and q[0, 2].item() == qmin
    for out_dtype in DTYPES:
        d = q8.dequantize(q, s, z, axis, out_dtype)
        assert_same(d, ref.dequantize(q, s, z, axis, out_dtype))
    # dequantize(quantize(x)) is fake_quantize(x) wherever x is not NaN.
    fq = (q8.fake_quantize_per_channel(x, s, z, 1, qmin, qmax) if per_channel
          else q8.fake_quantize_per_tensor(x, s, z, qmin, qmax))
    d = q8.dequantize(q, s, z, axis, dtype)
    keep = ~torch.isnan(x)
    assert_same(d[keep], fq[keep])


def test_quantize_matches_torch_quantize_per_tensor_and_channel():
    x = torch.randn(64, 32) * 3
    s, z = q8.choose_qparams(x, -128, 127)
    tq = torch.quantize_per_tensor(x, float(s), int(z), torch.qint8)
    assert torch.equal(q8.quantize(x, s, z, None, -128, 127, torch.int8), tq.int_repr())
    assert torch.equal(q8.dequantize(tq.int_repr(), s, z), tq.dequantize())
    s, z = q8.choose_qparams(x, 0, 255, False, 0)
    tq = torch.quantize_per_channel(x, s.double(), z.long(), 0, torch.quint8)
    assert torch.equal(q8.quantize(x, s, z, 0, 0, 255, torch.uint8), tq.int_repr())
    assert torch.equal(q8.dequantize(tq.int_repr(), s, z, 0), tq.dequantize())


def test_dequantize_int32_and_zero_dim(device):
    q = torch.tensor([-40000, -1, 0, 1, 2**31 - 1], dtype=torch.int32, device=device)
    s = torch.tensor(0.5, device=device)
    z = torch.tensor(7, device=device)
    d = q8.dequantize(q, s, z)
    expected = (q.cpu().long() - 7).float() * 0.5
    assert_same(d.cpu(), expected)
    assert q8.dequantize(torch.tensor(5, dtype=torch.int8, device=device), s, z).item() == -1.0


def test_not_differentiable(device):
    x = torch.randn(10, device=device, requires_grad=True)
    s, z = q8.choose_qparams(x, -128, 127)
    assert not s.requires_grad and not z.requires_grad
    q = q8.quantize(x, s, z, None, -128, 127, torch.int8)
    assert not q.requires_grad
    sg = s.detach().requires_grad_()
    assert not q8.dequantize(q, sg, z).requires_grad
