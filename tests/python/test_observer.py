"""observe_fake_quantize: the fused moving-average observer + fake quantization op.

Against torch.fused_moving_avg_obs_fake_quant where the semantics match (the
running min / max always; qparams and outputs where both qparams formulas give
the same values), and against an explicit reference (below) everywhere, in
particular where q8 differs from torch on purpose:
  - scale / zero_point are recomputed when the observer runs (torch: when fake
    quantization runs), with q8.choose_qparams' formulas (torch's
    ChooseQuantizationParams differs in the last bit of the scale, by 1 in the
    zero point at times, and in symmetric mode);
  - NaN / +-Inf inputs are ignored by the observer (torch lets them in);
  - any axis, float16 / bfloat16 inputs, non-contiguous state.
Then gradients (straight through the mask), errors, torch.compile, TorchScript,
and the CUDA kernel against the CPU's (skipped without a GPU).
"""
import io

import pytest
import torch

import q8
import reference as ref
from test_fake_quantize import assert_same

OPS = torch.ops.q8
INF = float("inf")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


# ---------------------------------------------------------------------------
# Reference
# ---------------------------------------------------------------------------
def new_state(channels=None, device="cpu"):
    """torch's initial observer state: running min / max +inf / -inf, scale 1, zero point 0."""
    shape = (1,) if channels is None else (channels,)
    return dict(
        running_min=torch.full(shape, INF, device=device),
        running_max=torch.full(shape, -INF, device=device),
        scale=torch.ones(shape, device=device),
        zero_point=torch.zeros(shape, dtype=torch.int32, device=device),
    )


def clone_state(st):
    return {k: v.clone() for k, v in st.items()}


def finite_min_max(x, axis):
    """Per channel min / max of the finite values (+inf / -inf where there is none)."""
    xf = x.float()
    fin = torch.isfinite(xf)
    lo = torch.where(fin, xf, torch.full_like(xf, INF))
    hi = torch.where(fin, xf, torch.full_like(xf, -INF))
    channels = 1 if axis is None else x.shape[axis]
    if x.numel() == 0:
        return torch.full((channels,), INF, device=x.device), torch.full((channels,), -INF, device=x.device)
    if axis is None:
        return lo.amin().reshape(1), hi.amax().reshape(1)
    return (lo.movedim(axis, 0).reshape(channels, -1).amin(1), hi.movedim(axis, 0).reshape(channels, -1).amax(1))


def ref_step(x, observe, fake_quant, st, c, qmin, qmax, axis=None, symmetric=False):
    """One call of the op on a copy of the state: returns (output, mask, new state)."""
    st = clone_state(st)
    axis = None if axis is None else axis % x.dim()
    if observe:
        cmin, cmax = finite_min_max(x, axis)
        found = cmin <= cmax
        c32 = torch.tensor(c, dtype=torch.float32, device=x.device)

        def ema(r, cur):
            return torch.where(torch.isfinite(r), r + c32 * (cur - r), cur)

        rmin, rmax = st["running_min"].reshape(-1), st["running_max"].reshape(-1)
        rmin = torch.where(found, ema(rmin, cmin), rmin)
        rmax = torch.where(found, ema(rmax, cmax), rmax)
        # compute_qparams(rmin, rmax) == choose_qparams of the two values (non-finite read as 0).
        scale, zp = ref.choose_qparams(torch.stack([rmin, rmax], 1), qmin, qmax, symmetric, axis=0)
        st["running_min"] = rmin.reshape(st["running_min"].shape)
        st["running_max"] = rmax.reshape(st["running_max"].shape)
        st["scale"] = scale.to(x.device).reshape(st["scale"].shape)
        st["zero_point"] = zp.to(x.device).reshape(st["zero_point"].shape)
    if fake_quant:
        out, mask = ref.fake_quantize(x, st["scale"], st["zero_point"], axis, qmin, qmax)
    else:
        out, mask = x.clone(), torch.ones_like(x, dtype=torch.bool)
    return out, mask, st


def flag(on, device="cpu", dtype=torch.long):
    return torch.tensor([1 if on else 0], dtype=dtype, device=device)


def q8_step(x, observe, fake_quant, st, c, qmin, qmax, axis=None, symmetric=False):
    dev = x.device
    return q8.observe_fake_quantize(x, flag(observe, dev), flag(fake_quant, dev), st["running_min"],
                                    st["running_max"], st["scale"], st["zero_point"], c, qmin, qmax, axis, symmetric)


def torch_step(x, observe, fake_quant, st, c, qmin, qmax, per_channel, symmetric):
    out = torch.fused_moving_avg_obs_fake_quant(
        x, flag(observe), flag(fake_quant), st["running_min"], st["running_max"], st["scale"], st["zero_point"], c,
        qmin, qmax, 0, per_channel, symmetric)
    return out


def assert_state(actual, expected):
    for k in expected:
        assert_same(actual[k], expected[k])


FLAG_STEPS = [(1, 1), (1, 1), (0, 1), (1, 0), (1, 1), (0, 0), (1, 1), (1, 1)]


# ---------------------------------------------------------------------------
# Against torch's fused op
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("qrange,symmetric", [((0, 255), False), ((-128, 127), True), ((-128, 127), False)])
def test_running_stats_match_torch_and_reference(per_channel, qrange, symmetric):
    """Several steps with the observer and fake quantization switched on and off."""
    qmin, qmax = qrange
    c = 0.05
    ch = 6 if per_channel else None
    st_q8, st_torch, st_ref = new_state(ch), new_state(ch), new_state(ch)
    for step, (obs, fq) in enumerate(FLAG_STEPS):
        x = torch.randn(6, 50) * (1 + step) + 0.3 * step
        out, mask = q8_step(x, obs, fq, st_q8, c, qmin, qmax, 0 if per_channel else None, symmetric)
        out_t = torch_step(x, obs, fq, st_torch, c, qmin, qmax, per_channel, symmetric)
        out_r, mask_r, st_ref = ref_step(x, obs, fq, st_ref, c, qmin, qmax, 0 if per_channel else None, symmetric)
        # The state and outputs are exactly the reference's.
        assert_state(st_q8, st_ref)
        assert_same(out, out_r)
        assert_same(mask, mask_r)
        # The running min / max are exactly torch's.
        assert_same(st_q8["running_min"], st_torch["running_min"])
        assert_same(st_q8["running_max"], st_torch["running_max"])
        if not fq:
            assert_same(out_t, x)
            assert_same(out, x)
        elif not symmetric:
            # torch recomputes its qparams here: the same up to rounding (scale in the
            # last bit, zero point by 1), so the outputs agree to rounding but for a
            # few elements, off by one quantization step.
            torch.testing.assert_close(st_q8["scale"], st_torch["scale"], rtol=1e-6, atol=0)
            assert (st_q8["zero_point"] - st_torch["zero_point"]).abs().max() <= 1
            step_size = st_q8["scale"].reshape(-1, 1) if per_channel else st_q8["scale"]
            assert torch.all((out - out_t).abs() <= step_size * 1.001)
            assert torch.isclose(out, out_t, rtol=1e-5, atol=1e-6).float().mean() > 0.95


def grid_input(channels, cols, lo, shift, generator):
    """Rows whose min is lo[c] * 2^-shift and max (lo[c] + 255) * 2^-shift exactly (both present), values on
    that grid in between: torch's and q8's qparams formulas both give scale 2^-shift, zero point -lo[c]."""
    k = torch.randint(0, 256, (channels, cols), generator=generator)
    k[:, 0] = 0
    k[:, 1] = 255
    k = k[:, torch.randperm(cols, generator=generator)]
    return (k + lo.reshape(-1, 1)).float() * 2.0 ** -shift


@pytest.mark.parametrize("per_channel", [False, True])
def test_bit_identical_to_torch_when_qparams_agree(per_channel):
    """Inputs where the two qparams formulas agree exactly (and the moving average
    stays put): outputs, masks, gradients and every state tensor equal torch's, bit for bit."""
    g = torch.Generator().manual_seed(3)
    channels = 5 if per_channel else 1
    lo = torch.randint(-255, 1, (channels,), generator=g).float()
    st_q8, st_torch = new_state(5 if per_channel else None), new_state(5 if per_channel else None)
    # torch reads the running values whenever fake quantization is on, so the
    # first step observes (torch refuses +inf / -inf running values otherwise).
    for step, (obs, fq) in enumerate([(1, 1), (1, 1), (0, 1), (1, 1), (0, 0), (1, 1)]):
        x = grid_input(channels, 64, lo, 4, g)
        if not per_channel:
            x = x.reshape(4, 16)
        x1 = x.clone().requires_grad_()
        x2 = x.clone().requires_grad_()
        out, mask = q8_step(x1, obs, fq, st_q8, 0.01, 0, 255, 0 if per_channel else None)
        out_t = torch_step(x2, obs, fq, st_torch, 0.01, 0, 255, per_channel, False)
        assert_same(out, out_t)
        gy = torch.randn_like(x)
        out.backward(gy)
        out_t.backward(gy)
        assert_same(x1.grad, x2.grad)
        assert_state(st_q8, st_torch)
        if fq:
            assert_same(st_q8["scale"], torch.full_like(st_q8["scale"], 2.0 ** -4))
            assert_same(st_q8["zero_point"], (-lo).int())


# ---------------------------------------------------------------------------
# Against the reference: what torch does not cover
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("qrange,symmetric", [((0, 255), False), ((-128, 127), True), ((0, 255), True),
                                              ((-8, 7), False)])
def test_every_axis_and_dtype(device, dtype, qrange, symmetric):
    qmin, qmax = qrange
    shape = (3, 5, 7, 11)
    for axis in [None, 0, 1, -2, 3]:
        ch = None if axis is None else shape[axis]
        st_q8, st_ref = new_state(ch, device), new_state(ch, device)
        for step, (obs, fq) in enumerate(FLAG_STEPS[:5]):
            x = (torch.randn(shape, device=device) * (2 + step) + step - 1).to(dtype)
            out, mask = q8_step(x, obs, fq, st_q8, 0.1, qmin, qmax, axis, symmetric)
            out_r, mask_r, st_ref = ref_step(x, obs, fq, st_ref, 0.1, qmin, qmax, axis, symmetric)
            assert_state(st_q8, st_ref)
            assert_same(out, out_r)
            assert_same(mask, mask_r)
            assert out.stride() == x.stride()


@pytest.mark.parametrize("shape,axis", [((100003,), 0), ((1000, 3), 1), ((64, 5, 9), 1), ((8, 33, 64), 1),
                                        ((4, 1, 300), 1), ((2, 257, 1), 1), ((3, 70000), None),
                                        ((40, 1000), 0)])
def test_layouts_and_threads(device, shape, axis):
    """The CPU min / max walks long runs, short (periodic) runs and splits work across threads."""
    x = torch.randn(shape, device=device) * 3
    x.view(-1)[:: 7] -= 5  # a distinct minimum in many channels
    for threads in ([1, 2] if device == "cpu" else [None]):
        if threads is not None:
            old = torch.get_num_threads()
            torch.set_num_threads(threads)
        try:
            ch = None if axis is None else shape[axis]
            st_q8, st_ref = new_state(ch, device), new_state(ch, device)
            for obs, fq in [(1, 1), (1, 1)]:
                out, mask = q8_step(x, obs, fq, st_q8, 0.3, 0, 255, axis)
                out_r, mask_r, st_ref = ref_step(x, obs, fq, st_ref, 0.3, 0, 255, axis)
                assert_state(st_q8, st_ref)
                assert_same(out, out_r)
                assert_same(mask, mask_r)
                x = x * 1.5
        finally:
            if threads is not None:
                torch.set_num_threads(old)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_inputs_are_ignored_by_the_observer(device, dtype):
    x = torch.randn(4, 40, device=device).to(dtype)
    x[0, 3] = float("nan")
    x[1, 5] = INF
    x[2, 7] = -INF
    x[3] = float("nan")  # a channel with no finite value at all
    for axis in [None, 0]:
        ch = None if axis is None else 4
        st_q8, st_ref = new_state(ch, device), new_state(ch, device)
        for obs, fq in [(1, 1), (1, 1), (1, 0)]:
            out, mask = q8_step(x, obs, fq, st_q8, 0.2, -128, 127, axis)
            out_r, mask_r, st_ref = ref_step(x, obs, fq, st_ref, 0.2, -128, 127, axis)
            assert_state(st_q8, st_ref)
            assert_same(out, out_r)
            assert_same(mask, mask_r)
            assert torch.isfinite(st_q8["running_min"]).tolist() == ([True] if axis is None else [True] * 3 + [False])
            if fq:  # NaN stays NaN in the output, with mask False
                assert torch.isnan(out[0, 3]) and not mask[0, 3]
            x = x * 0.5
    # All NaN, per tensor: nothing observed, the state keeps +inf / -inf and the
    # qparams are those of an empty range (scale eps).
    st = new_state(device=device)
    q8_step(torch.full((5,), float("nan"), device=device), 1, 1, st, 0.5, 0, 255)
    assert st["running_min"].item() == INF and st["running_max"].item() == -INF
    assert st["scale"].item() == torch.finfo(torch.float32).eps and st["zero_point"].item() == 0


def test_observer_off_keeps_state_and_uses_stored_qparams(device):
    x = torch.randn(8, 9, device=device) * 4
    st = new_state(device=device)
    st["running_min"].fill_(-1.0)
    st["running_max"].fill_(2.0)
    st["scale"].fill_(0.125)
    st["zero_point"].fill_(7)
    before = clone_state(st)
    out, mask = q8_step(x, 0, 1, st, 0.01, 0, 255)
    assert_state(st, before)  # no recomputation from the running values (torch would)
    expected, expected_mask = ref.fake_quantize(x, before["scale"], before["zero_point"], None, 0, 255)
    assert_same(out, expected)
    assert_same(mask, expected_mask)
    # Observer on, fake quantization off: the qparams follow the running values
    # (torch would leave them until fake quantization is switched on).
    out, mask = q8_step(x, 1, 0, st, 0.01, 0, 255)
    _, _, st_ref = ref_step(x, 1, 0, before, 0.01, 0, 255)
    assert_state(st, st_ref)
    assert st["scale"].item() != 0.125
    assert_same(out, x)
    assert out.data_ptr() != x.data_ptr()
    assert bool(mask.all())


def test_first_observation_and_moving_average_values():
    st = new_state()
    q8_step(torch.tensor([-2.0, 1.0, 4.0]), 1, 1, st, 0.25, 0, 255)
    assert st["running_min"].item() == -2.0 and st["running_max"].item() == 4.0
    assert st["scale"].item() == pytest.approx(6.0 / 255) and st["zero_point"].item() == 85
    q8_step(torch.tensor([2.0, 8.0]), 1, 1, st, 0.25, 0, 255)
    assert st["running_min"].item() == -2.0 + 0.25 * 4.0 and st["running_max"].item() == 4.0 + 0.25 * 4.0
    # A NaN running value (set by hand) is replaced like an unobserved one.
    st["running_min"].fill_(float("nan"))
    q8_step(torch.tensor([3.0, 9.0]), 1, 1, st, 0.25, 0, 255)
    assert st["running_min"].item() == 3.0 and st["running_max"].item() == 5.0 + 0.25 * 4.0
    # averaging_constant 1: the running values are the last batch's.
    q8_step(torch.tensor([-1.0, 0.5]), 1, 1, st, 1.0, 0, 255)
    assert st["running_min"].item() == -1.0 and st["running_max"].item() == 0.5


@pytest.mark.parametrize("flag_dtype", [torch.bool, torch.uint8, torch.int32, torch.int64, torch.float32,
                                        torch.float64, torch.bfloat16])
def test_flag_dtypes(device, flag_dtype):
    x = torch.randn(3, 4, device=device) * 2
    for on, value in [(True, 1), (True, 2 if flag_dtype != torch.bool else 1), (False, 0)]:
        st = new_state(device=device)
        f = torch.tensor(value, device=device).to(flag_dtype)
        out, mask = OPS.observe_fake_quantize(x, f, f, st["running_min"], st["running_max"], st["scale"],
                                              st["zero_point"], 0.01, 0, 255)
        out_r, _, st_ref = ref_step(x, on, on, new_state(device=device), 0.01, 0, 255)
        assert_state(st, st_ref)
        assert_same(out, out_r)
    if flag_dtype.is_floating_point:
        st = new_state(device=device)
        off = torch.tensor(-0.0, device=device).to(flag_dtype)
        q8.observe_fake_quantize(x, off, off, st["running_min"], st["running_max"], st["scale"],
                                 st["zero_point"], 0.01, 0, 255)
        assert st["running_min"].item() == INF


def test_state_layouts_and_shapes(device):
    """0-dim or [1, 1] per-tensor state, strided per-channel state, channels_last and 0-dim inputs."""
    x = torch.randn(2, 6, 3, 5, device=device).to(memory_format=torch.channels_last)
    base = torch.full((12,), INF, device=device)
    st = dict(running_min=base[::2], running_max=torch.full((12,), -INF, device=device)[1::2],
              scale=torch.ones(12, device=device)[::2], zero_point=torch.zeros(6, 2, dtype=torch.int32, device=device)[:, 1])
    st_ref = new_state(6, device)
    for obs, fq in [(1, 1), (1, 1)]:
        out, mask = q8_step(x, obs, fq, st, 0.1, -128, 127, 1)
        out_r, mask_r, st_ref = ref_step(x, obs, fq, st_ref, 0.1, -128, 127, 1)
        for k in st_ref:
            assert_same(st[k].contiguous(), st_ref[k])
        assert_same(out, out_r)
        assert out.stride() == x.stride() and mask.stride() == x.stride()
    assert base[1::2].eq(INF).all()  # the other elements of the storage are untouched
    # Per-tensor state of any one-element shape.
    st = dict(running_min=torch.tensor(INF, device=device), running_max=torch.full((1, 1), -INF, device=device),
              scale=torch.tensor(1.0, device=device), zero_point=torch.zeros(1, 1, 1, dtype=torch.int32, device=device))
    out, mask = q8_step(torch.tensor(2.5, device=device), 1, 1, st, 0.1, 0, 255)
    assert out.dim() == 0 and st["running_min"].item() == 2.5 and st["running_max"].item() == 2.5
    # Empty input: nothing observed.
    st = new_state(4, device)
    out, mask = q8_step(torch.randn(0, 4, device=device), 1, 1, st, 0.1, 0, 255, 1)
    assert out.shape == (0, 4) and mask.shape == (0, 4)
    assert st["running_min"].eq(INF).all() and st["scale"].eq(torch.finfo(torch.float32).eps).all()


# ---------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_straight_through_gradient(device, dtype):
    st = new_state(3, device)
    st["running_min"].fill_(-1.0)
    st["running_max"].fill_(1.0)
    x = (torch.randn(3, 30, device=device) * 2).to(dtype).requires_grad_()
    gy = torch.randn(3, 30, device=device).to(dtype)
    for obs, fq in [(0, 1), (1, 1), (1, 0)]:
        x.grad = None
        out, mask = q8_step(x, obs, fq, st, 0.01, 0, 255, 0)
        assert out.requires_grad and not mask.requires_grad
        out.backward(gy)
        assert_same(x.grad, gy * mask.to(dtype))
        if fq:
            assert not bool(mask.all()) and bool(mask.any())
        else:
            assert_same(x.grad, gy)
    for v in st.values():
        assert v.grad is None and not v.requires_grad


def test_double_backward_and_version_counter():
    st = new_state()
    x = (torch.randn(50) * 3).requires_grad_()
    out, mask = q8_step(x, 1, 1, st, 0.01, -8, 7)
    (g,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), x)
    assert_same(gg, 2 * mask.float())
    # The state is updated in place: its version counter moves, so autograd
    # refuses a backward through a stale saved copy of it.
    v = st["scale"]._version
    q8_step(x.detach(), 1, 1, st, 0.01, -8, 7)
    assert st["scale"]._version > v
    s = st["scale"].clone().requires_grad_()
    y = (s * st["running_min"]).sum()
    q8_step(x.detach(), 1, 1, st, 0.01, -8, 7)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def test_no_grad_and_inference_mode():
    x = (torch.randn(10) * 3).requires_grad_()
    for ctx in (torch.no_grad, torch.inference_mode):
        st = new_state()
        with ctx():
            out, mask = q8_step(x, 1, 1, st, 0.1, 0, 255)
        assert not out.requires_grad
        assert st["running_min"].item() == x.min().item() and st["running_max"].item() == x.max().item()
        assert_same(out, q8.fake_quantize_per_tensor(x.detach(), st["scale"], st["zero_point"], 0, 255))


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------
def _call(x=None, obs=None, fq=None, c=0.01, qmin=0, qmax=255, axis=None, channels=None, **state):
    x = torch.randn(4, 6) if x is None else x
    st = new_state(channels)
    st.update(state)
    return q8.observe_fake_quantize(x, flag(1) if obs is None else obs, flag(1) if fq is None else fq,
                                    st["running_min"], st["running_max"], st["scale"], st["zero_point"], c, qmin,
                                    qmax, axis)


ERRORS = [
    (lambda: _call(c=0.0), r"averaging_constant must be in \(0, 1\], got 0"),
    (lambda: _call(c=1.5), r"averaging_constant must be in \(0, 1\], got 1.5"),
    (lambda: _call(c=float("nan")), r"averaging_constant must be in \(0, 1\]"),
    (lambda: _call(c=1e-60), r"averaging_constant must be in \(0, 1\]"),
    (lambda: _call(qmin=5, qmax=5), r"quant_min must be less than quant_max"),
    (lambda: _call(axis=2, channels=6), r"axis must be in \[-2, 1\] for a 2-dim input, got 2"),
    (lambda: _call(x=torch.randn(4, 6).double()), r"input must be float32, float16 or bfloat16"),
    (lambda: _call(obs=torch.tensor([1, 1])), r"observer_on must have exactly one element, got shape \[2\]"),
    (lambda: _call(fq=torch.tensor([], dtype=torch.long)), r"fake_quant_on must have exactly one element"),
    (lambda: _call(obs=torch.tensor([1j])), r"observer_on must be a bool, integer or floating-point tensor"),
    (lambda: _call(running_min=torch.full((1,), INF).double()), r"running_min must be float32, got Double"),
    (lambda: _call(zero_point=torch.zeros(1, dtype=torch.long)), r"zero_point must be int32, got Long"),
    (lambda: _call(scale=torch.ones(2)), r"scale must have exactly one element per tensor, got shape \[2\]"),
    (lambda: _call(axis=1, channels=5), r"running_min must be 1-D with input.size\(axis\) = 6 elements \(axis 1\)"),
    (lambda: _call(axis=1, channels=6, running_max=torch.full((6, 1), -INF)), r"running_max must be 1-D"),
    (lambda: _call(axis=1, channels=6, scale=torch.ones(6, device="meta")), r"scale must be on the same device as input"),
    (lambda: _call(obs=flag(0), scale=torch.tensor([0.0])), r"q8.observe_fake_quantize: scale must be finite and > 0"),
    (lambda: _call(obs=flag(0), zero_point=torch.tensor([300], dtype=torch.int32)),
     r"q8.observe_fake_quantize: zero_point must lie in \[quant_min, quant_max\]"),
    (lambda: _call(x=torch.randn(3, requires_grad=True), scale=torch.ones(1, requires_grad=True)),
     r"scale must not require grad"),
]


@pytest.mark.parametrize("name", ["running_min", "running_max", "scale", "zero_point"])
def test_expanded_per_channel_state_is_refused(device, name):
    """A stride-0 per-channel state (an expanded one-element tensor) would have every channel update one
    element (a race on CUDA): refused on every device, before anything is written. One channel may be stride 0."""
    x = torch.randn(4, 6, device=device)
    st = new_state(6, device)
    one = st[name][:1].clone()
    st[name] = one.expand(6)
    before = clone_state(st)
    with pytest.raises(RuntimeError, match=rf"q8.observe_fake_quantize: {name} must have its own element for every "
                                           r"channel, got an expanded view \(stride 0\) of shape \[6\]"):
        q8_step(x, 1, 1, st, 0.1, 0, 255, 1)
    assert_state(st, before)
    # The meta (fake) kernel refuses it too.
    st_meta = {k: (v.to("meta") if k != name else torch.empty(1, dtype=v.dtype, device="meta").expand(6))
               for k, v in new_state(6).items()}
    with pytest.raises(RuntimeError, match=f"{name} must have its own element for every channel"):
        q8_step(torch.randn(4, 6, device="meta"), 1, 1, st_meta, 0.1, 0, 255, 1)
    # A single channel may be a stride-0 view (one element, no aliasing).
    st1 = new_state(1, device)
    st1[name] = st1[name][:1].clone().expand(1).as_strided((1,), (0,))
    out, _ = q8_step(x[:, :1], 1, 1, st1, 0.1, 0, 255, 1)
    assert out.shape == (4, 1)


@pytest.mark.parametrize("call,pattern", ERRORS)
def test_bad_arguments_raise_clear_errors(call, pattern):
    with pytest.raises(RuntimeError, match=pattern):
        call()


def test_errors_leave_the_state_untouched():
    st = new_state()
    x = torch.randn(5)
    with pytest.raises(RuntimeError):
        q8.observe_fake_quantize(x, flag(1), flag(1), st["running_min"], st["running_max"], st["scale"],
                                 st["zero_point"].long(), 0.01, 0, 255)
    assert_state(st, new_state())


# ---------------------------------------------------------------------------
# torch.compile, TorchScript, C++ API through the dispatcher
# ---------------------------------------------------------------------------
class ObservedLinear(torch.nn.Module):
    """A linear layer with a q8 fused observer on its input (per tensor) and its weight (per channel)."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(16, 8)
        self.register_buffer("observer_enabled", torch.tensor([1], dtype=torch.long))
        self.register_buffer("fake_quant_enabled", torch.tensor([1], dtype=torch.long))
        for prefix, n in [("act_", 1), ("w_", 8)]:
            self.register_buffer(prefix + "min", torch.full((n,), INF))
            self.register_buffer(prefix + "max", torch.full((n,), -INF))
            self.register_buffer(prefix + "scale", torch.ones(n))
            self.register_buffer(prefix + "zero_point", torch.zeros(n, dtype=torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq, _ = torch.ops.q8.observe_fake_quantize(
            x, self.observer_enabled, self.fake_quant_enabled, self.act_min, self.act_max, self.act_scale,
            self.act_zero_point, 0.01, 0, 255)
        wq, _ = q8.observe_fake_quantize(
            self.linear.weight, self.observer_enabled, self.fake_quant_enabled, self.w_min, self.w_max,
            self.w_scale, self.w_zero_point, 0.01, -128, 127, 0, True)
        return torch.nn.functional.linear(xq, wq, self.linear.bias)


def _train(model, xs, switch_at=2):
    outs, grads = [], []
    for i, x in enumerate(xs):
        if i == switch_at:
            model.observer_enabled.fill_(0)
        model.zero_grad()
        y = model(x)
        y.square().sum().backward()
        outs.append(y.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    return outs, grads


def _check_same_training(a, b, xs):
    outs_a, grads_a = _train(a, xs)
    outs_b, grads_b = _train(b, xs)
    for ya, yb in zip(outs_a, outs_b):
        assert_same(ya, yb)
    for ga, gb in zip(grads_a, grads_b):
        for u, v in zip(ga, gb):
            torch.testing.assert_close(u, v, rtol=1e-6, atol=1e-6)
    for (name, ba), bb in zip(a.named_buffers(), b.buffers()):
        assert_same(ba, bb)


def test_compile_fullgraph_module_with_buffers(device):
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = ObservedLinear().to(device)
    compiled_model = ObservedLinear().to(device)
    compiled_model.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_model, fullgraph=True, backend="aot_eager")
    xs = [torch.randn(4, 16, device=device) * (i + 1) for i in range(4)]
    outs_a, grads_a = _train(eager, xs)
    outs_b, grads_b = _train(compiled, xs)
    for ya, yb in zip(outs_a, outs_b):
        assert_same(ya, yb)
    for ga, gb in zip(grads_a, grads_b):
        for u, v in zip(ga, gb):
            torch.testing.assert_close(u, v, rtol=1e-6, atol=1e-6)
    for ba, bb in zip(eager.buffers(), compiled_model.buffers()):
        assert_same(ba, bb)
    assert compiled_model.act_min.item() != INF


def test_compile_inductor_forward():
    torch._dynamo.reset()

    def f(x, obs, fq, rmin, rmax, s, z):
        out, mask = torch.ops.q8.observe_fake_quantize(x, obs, fq, rmin, rmax, s, z, 0.1, -128, 127, 1, False)
        return out * 2, mask

    cf = torch.compile(f, fullgraph=True, backend="inductor")
    st_a, st_b = new_state(6), new_state(6)
    for i in range(3):
        x = torch.randn(5, 6) * (i + 1)
        ya, ma = f(x, flag(1), flag(1), *st_a.values())
        yb, mb = cf(x, flag(1), flag(1), *st_b.values())
        assert_same(ya, yb)
        assert_same(ma, mb)
        assert_state(st_b, st_a)


def test_torchscript_module_with_buffers():
    torch.manual_seed(0)
    model = ObservedLinear()
    scripted_model = ObservedLinear()
    scripted_model.load_state_dict(model.state_dict())
    scripted = torch.jit.script(scripted_model)
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    assert "q8::observe_fake_quantize" in str(loaded.inlined_graph)
    xs = [torch.randn(4, 16) * (i + 1) for i in range(4)]
    _check_same_training(model, loaded, xs)


# ---------------------------------------------------------------------------
# CUDA against the CPU (the CUDA cases skip without a GPU)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_device_matches_cpu(device, dtype):
    """The same steps on `device` and on the CPU with one thread: every output and
    state bit equal (on the CPU itself: the result does not depend on the threads)."""
    old = torch.get_num_threads()
    for shape, axis in [((64, 33), None), ((64, 33), 0), ((8, 9, 300), 1), ((1000, 3), -1), ((), None)]:
        ch = None if axis is None else shape[axis]
        st_cpu, st_dev = new_state(ch), new_state(ch, device)
        for step, (obs, fq) in enumerate(FLAG_STEPS):
            x = (torch.randn(shape) * (1 + step) - step).to(dtype)
            if x.numel() > 10:
                x.view(-1)[::13] = float("nan")
                x.view(-1)[5::17] = INF
            torch.set_num_threads(1)
            try:
                out_c, mask_c = q8_step(x, obs, fq, st_cpu, 0.05, 0, 255, axis)
            finally:
                torch.set_num_threads(old)
            out_d, mask_d = q8_step(x.to(device), obs, fq, st_dev, 0.05, 0, 255, axis)
            assert out_d.device.type == device
            assert_same(out_d.cpu(), out_c)
            assert_same(mask_d.cpu(), mask_c)
            assert out_d.stride() == out_c.stride()
            for k in st_cpu:
                assert_same(st_dev[k].cpu(), st_cpu[k])


def test_invalid_stored_qparams(device):
    """A scale / zero point set by hand to an invalid value (observer off): an error
    on the CPU; on CUDA (which never reads device values on the host), NaN outputs
    and mask False for that channel only, as cuda/fake_quantize.cu does. CUDA also
    runs the op without any host synchronization."""
    st = new_state(4, device)
    x = torch.randn(4, 100, device=device)
    obs, fq = flag(1, device), flag(1, device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            q8.observe_fake_quantize(x, obs, fq, st["running_min"], st["running_max"], st["scale"],
                                     st["zero_point"], 0.01, 0, 255, 0)
    finally:
        if device == "cuda":
            torch.cuda.set_sync_debug_mode(0)
    for k, v in [("scale", 0.0), ("scale", float("nan")), ("scale", 1e-40), ("zero_point", 256)]:
        bad = clone_state(st)
        bad[k][2] = v

        def call():
            return q8.observe_fake_quantize(x, flag(0, device), fq, bad["running_min"], bad["running_max"],
                                            bad["scale"], bad["zero_point"], 0.01, 0, 255, 0)

        if device == "cpu":
            with pytest.raises(RuntimeError, match=f"q8.observe_fake_quantize: {k} must .* at channel 2"):
                call()
        else:
            out, mask = call()
            assert torch.isnan(out[2]).all() and not mask[2].any()
            assert torch.isfinite(out[[0, 1, 3]]).all() and mask[[0, 1, 3]].any()
        # Observing recomputes valid qparams.
        q8.observe_fake_quantize(x, obs, fq, bad["running_min"], bad["running_max"], bad["scale"],
                                 bad["zero_point"], 0.01, 0, 255, 0)
        assert torch.isfinite(bad["scale"]).all()
