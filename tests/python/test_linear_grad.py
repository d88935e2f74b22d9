"""Gradients through q8.linear (input and bias; the int8 weight frozen).

Reference: the float64 gradient of
  * "dynamic" / "weight_only": F.linear(x, W_deq, b) (exact straight-through);
  * "static": F.linear(fake_quantize_per_tensor(x, s, z, 0, 255), W_deq, b)
    (straight-through with the clamp mask),
with W_deq = weight_int8 * weight_scale[:, None].
"""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import q8
from test_fake_quantize import assert_same

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
MODES = ["dynamic", "static", "weight_only"]
STATIC_QPARAMS = (torch.tensor(0.02), torch.tensor(120))  # range [-2.4, 2.7]: clips some of randn * 1.5


def make_weight(n, k, device="cpu"):
    w = torch.randn(n, k)
    w8, ws = q8.quantize_weight(w)
    w8, ws = w8.to(device), ws.to(device)
    return w8, ws, q8.pack_weight(w8)


def mode_args(mode, device):
    if mode == "static":
        return tuple(t.to(device) for t in STATIC_QPARAMS)
    return (None, None)


def reference_grads(x, w8, ws, bias, mode, grad_out):
    """float64 gradients of the float model that the mode's straight-through gradient is defined by."""
    xr = x.detach().double().requires_grad_()
    br = bias.detach().double().requires_grad_() if bias is not None else None
    w = w8.double() * ws.double()[:, None]
    xin = xr
    if mode == "static":
        s, z = STATIC_QPARAMS
        # The clamp mask of fake quantization (computed in float32 like the kernel).
        xq = torch.round(x.detach().float() * (1.0 / s)) + z
        mask = ((xq >= 0) & (xq <= 255)).to(xr.device)
        xin = torch.where(mask, xr, xr.detach())
    y = F.linear(xin, w, br)
    y.backward(grad_out.double())
    return xr.grad, (br.grad if br is not None else None)


def grad_tol(grad_out, w8, ws, dtype, k_shape):
    """float32 accumulation of sum_n |g||w|, then the rounding to dtype."""
    eps = {torch.float32: 0.0, torch.bfloat16: 2**-8, torch.float16: 2**-11}[dtype]
    mag = grad_out.double().abs().reshape(-1, grad_out.shape[-1]) @ (w8.double().abs() * ws.double()[:, None])
    mag = mag.reshape(k_shape)
    return 2e-6 * (mag + mag.mean() if mag.numel() else mag) + eps * mag + 1e-30


def check_grads(x, w8, ws, packed, bias, mode, grad_out, device="cpu"):
    x = x.detach().requires_grad_()
    b = bias.detach().requires_grad_() if bias is not None else None
    y = q8.linear(x, packed, ws, b, mode, *[t for t in mode_args(mode, device) if t is not None])
    y.backward(grad_out)
    gx_ref, gb_ref = reference_grads(x, w8.cpu(), ws.cpu(), b.cpu() if b is not None else None, mode,
                                     grad_out.cpu())
    assert x.grad.dtype == x.dtype and x.grad.shape == x.shape
    assert ((x.grad.cpu().double() - gx_ref).abs() <= grad_tol(grad_out.cpu(), w8.cpu(), ws.cpu(), x.dtype,
                                                               x.shape)).all()
    if b is not None:
        assert b.grad.dtype == b.dtype
        eps = {torch.float32: 1e-6, torch.bfloat16: 2**-8, torch.float16: 2**-11}[b.dtype]
        tol = eps * grad_out.double().abs().reshape(-1, grad_out.shape[-1]).sum(0).cpu() + 1e-6
        assert ((b.grad.cpu().double() - gb_ref).abs() <= tol).all()
    return x.grad


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,n", [((5, 37), 19), ((2, 3, 64), 48), ((40, 130), 70), ((7,), 3)])
def test_grad_matches_float64_reference(device, mode, dtype, shape, n):
    k = shape[-1]
    w8, ws, packed = make_weight(n, k, device)
    x = (torch.randn(shape) * 1.5).to(dtype).to(device)
    for bias in (None, torch.randn(n).to(device), torch.randn(n).to(dtype).to(device)):
        grad_out = torch.randn(*shape[:-1], n).to(dtype).to(device)
        gx = check_grads(x, w8, ws, packed, bias, mode, grad_out, device)
        if mode == "static":
            xq = torch.round(x.float().cpu() / 0.02) + 120
            clipped = (xq < 0) | (xq > 255)
            assert clipped.any() and (gx.cpu()[clipped] == 0).all()


def test_grad_empty_rows_zero_k_and_zero_n(device):
    w8, ws, packed = make_weight(9, 21, device)
    for mode in MODES:
        x = torch.randn(0, 21, device=device, requires_grad=True)
        b = torch.randn(9, device=device, requires_grad=True)
        y = q8.linear(x, packed, ws, b, mode, *[t for t in mode_args(mode, device) if t is not None])
        y.sum().backward()
        assert x.grad.shape == (0, 21) and (b.grad == 0).all()
    # K = 0: grad_input is empty, grad_bias still the row sum.
    w0 = torch.zeros(4, 0, dtype=torch.int8, device=device)
    x = torch.randn(3, 0, device=device, requires_grad=True)
    b = torch.randn(4, device=device, requires_grad=True)
    q8.linear(x, q8.pack_weight(w0), torch.ones(4, device=device), b, "weight_only").sum().backward()
    assert x.grad.shape == (3, 0) and (b.grad == 3).all()
    # N = 0: grad_input is zero.
    x = torch.randn(2, 3, 5, device=device, requires_grad=True)
    q8.linear(x, q8.pack_weight(torch.zeros(0, 5, dtype=torch.int8, device=device)),
              torch.ones(0, device=device)).sum().backward()
    assert x.grad.shape == (2, 3, 5) and (x.grad == 0).all()


def test_grad_non_contiguous_grad_output_and_input(device):
    w8, ws, packed = make_weight(33, 50, device)
    x = torch.randn(50, 24, device=device).t()  # non-contiguous input
    for mode in MODES:
        grad_out = torch.randn(33, 24, device=device).t()  # non-contiguous grad_output
        assert not grad_out.is_contiguous()
        check_grads(x, w8, ws, packed, torch.randn(33, device=device), mode, grad_out, device)
        # And the backward op on its own, against the contiguous grad.
        g1 = torch.ops.q8.linear_grad_input(grad_out, packed, ws, 50)
        g2 = torch.ops.q8.linear_grad_input(grad_out.contiguous(), packed, ws, 50)
        torch.testing.assert_close(g1, g2, rtol=1e-6, atol=1e-6)


def test_grad_large_blocks_cpu():
    """More output channels than one dequantized block, K not a multiple of 4."""
    w8, ws, packed = make_weight(1100, 301)
    x = torch.randn(17, 301)
    check_grads(x, w8, ws, packed, torch.randn(1100), "dynamic", torch.randn(17, 1100))


def test_only_bias_requires_grad(device):
    w8, ws, packed = make_weight(6, 10, device)
    b = torch.randn(6, device=device, requires_grad=True)
    x = torch.randn(4, 10, device=device)
    for mode in MODES:
        b.grad = None
        q8.linear(x, packed, ws, b, mode, *[t for t in mode_args(mode, device) if t is not None]).sum().backward()
        assert (b.grad == 4).all()


def test_frozen_arguments_that_require_grad_raise():
    w8, ws, packed = make_weight(6, 10)
    x = torch.randn(4, 10, requires_grad=True)
    with pytest.raises(RuntimeError, match="q8.linear: weight_scale must not require grad"):
        q8.linear(x, packed, ws.clone().requires_grad_())
    s, z = STATIC_QPARAMS
    with pytest.raises(RuntimeError, match="q8.linear: input_scale must not require grad"):
        q8.linear(x, packed, ws, None, "static", s.clone().requires_grad_(), z)
    # Inference (no_grad) with such a tensor is fine.
    with torch.no_grad():
        q8.linear(x, packed, ws.clone().requires_grad_())


def test_double_backward_raises():
    w8, ws, packed = make_weight(6, 10)
    x = torch.randn(4, 10, requires_grad=True)
    y = q8.linear(x, packed, ws, None, "weight_only")
    (gx,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="linear_grad_input"):
        gx.sum().backward()


def test_grad_input_op_errors():
    w8, ws, packed = make_weight(6, 10)
    g = torch.randn(4, 6)
    op = torch.ops.q8.linear_grad_input
    with pytest.raises(RuntimeError, match="grad_output must be float32, float16 or bfloat16, got Long"):
        op(g.long(), packed, ws, 10)
    with pytest.raises(RuntimeError, match=r"grad_output.size\(-1\) must be out_features"):
        op(torch.randn(4, 5), packed, ws, 10)
    with pytest.raises(RuntimeError, match="in_features must match packed_weight's in_features"):
        op(g, packed, ws, 11)
    with pytest.raises(RuntimeError, match="weight_scale must be a 1-D float32 tensor"):
        op(g, packed, ws.double(), 10)
    with pytest.raises(RuntimeError, match="grad_output must have at least 1 dimension"):
        op(torch.tensor(1.0), packed, ws, 10)


def test_grad_input_op_matches_reference_and_dtypes():
    w8, ws, packed = make_weight(40, 77)
    for dtype in DTYPES:
        g = torch.randn(3, 5, 40).to(dtype)
        out = torch.ops.q8.linear_grad_input(g, packed, ws, 77)
        assert out.dtype == dtype and out.shape == (3, 5, 77)
        ref = g.double() @ (w8.double() * ws.double()[:, None])
        assert ((out.double() - ref).abs() <= grad_tol(g, w8, ws, dtype, ref.shape)).all()


# The activations a fused clamp stands for, and their autograd in torch.
FUSED_ACTS = [((0.0, None), F.relu), ((0.0, 6.0), F.relu6), ((-1.0, 0.5), lambda y: F.hardtanh(y, -1.0, 0.5)),
              ((None, 0.5), lambda y: F.hardtanh(y, -float("inf"), 0.5)), ((0.25, 0.25), lambda y: F.hardtanh(y, 0.25, 0.25))]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_grad_through_the_fused_clamp_is_the_activation_grad(device, mode, dtype):
    """q8.linear(..., clamp_min, clamp_max) has the gradients of act(q8.linear(...)) for ReLU, ReLU6 and
    Hardtanh (zero where the output sits on a bound), bit for bit."""
    n, k = 19, 37
    w8, ws, packed = make_weight(n, k, device)
    x0 = (torch.randn(6, 5, k, device=device) * 1.5).to(dtype)
    g = torch.randn(6, 5, n, device=device).to(dtype)
    args = mode_args(mode, device)
    for (lo, hi), act in FUSED_ACTS:
        x = x0.clone().requires_grad_()
        b = torch.randn(n, device=device).requires_grad_()
        y = q8.linear(x, packed, ws, b, mode, *args, lo, hi)
        y.backward(g)
        x_ref = x0.clone().requires_grad_()
        b_ref = b.detach().clone().requires_grad_()
        y_ref = act(q8.linear(x_ref, packed, ws, b_ref, mode, *args))
        y_ref.backward(g)
        assert_same(y, y_ref)
        assert_same(x.grad, x_ref.grad)
        assert_same(b.grad, b_ref.grad)
        if lo is not None:
            on_bound = y.detach() == lo
            assert on_bound.any()
        # Only the bias requires grad.
        b2 = b.detach().clone().requires_grad_()
        q8.linear(x0, packed, ws, b2, mode, *args, lo, hi).backward(g)
        assert_same(b2.grad, b_ref.grad)


@pytest.mark.parametrize("mode", MODES)
def test_grad_through_the_fused_clamp_passes_nan(device, mode):
    """A NaN output is on no bound: its gradient passes the clamp, as in relu's backward and hardtanh's
    definition (hardtanh_backward's scalar and CUDA code; torch's vectorized CPU code zeroes it instead)."""
    n, k = 19, 37
    w8, ws, packed = make_weight(n, k, device)
    x0 = torch.randn(6, k, device=device) * 1.5
    x0[2, 3] = float("nan")
    g = torch.randn(6, n, device=device)
    args = mode_args(mode, device)
    x = x0.clone().requires_grad_()
    y = q8.linear(x, packed, ws, None, mode, *args, 0.0, 6.0)
    y.backward(g)
    assert y[2].isnan().all()
    x_relu = x0.clone().requires_grad_()
    F.relu(q8.linear(x_relu, packed, ws, None, mode, *args)).backward(torch.where(y >= 6, 0, g))
    assert_same(x.grad, x_relu.grad)  # relu's backward passes NaN on the CPU and on CUDA
    assert x.grad[2].isfinite().all() and (x.grad[2] != 0).any()


# ---------------------------------------------------------------------------
# opcheck and torch.compile
# ---------------------------------------------------------------------------
def sample_inputs(device, requires_grad):
    w8, ws, packed = make_weight(24, 40, device)
    s, z = (t.to(device) for t in STATIC_QPARAMS)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(3, 5, 40, device=device).to(dtype).requires_grad_(requires_grad)
        b = torch.randn(24, device=device).requires_grad_(requires_grad)
        yield (x, packed, ws, b, "dynamic", None, None)
        yield (x, packed, ws, None, "weight_only", None, None)
        yield (x, packed, ws, b, "static", s, z)
        yield (x, packed, ws, b, "dynamic", None, None, 0.0, None)
        yield (x, packed, ws, b, "static", s, z, 0.0, 6.0)
        yield (x, packed, ws, None, "weight_only", None, None, None, 0.5)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_linear(device, requires_grad):
    for args in sample_inputs(device, requires_grad):
        torch.library.opcheck(torch.ops.q8.linear.default, args)


def test_opcheck_linear_grad_input(device):
    w8, ws, packed = make_weight(24, 40, device)
    for g in (torch.randn(7, 24, device=device), torch.randn(2, 3, 24, device=device).half(),
              torch.randn(0, 24, device=device)):
        torch.library.opcheck(torch.ops.q8.linear_grad_input.default, (g, packed, ws, 40))


class LoRA(torch.nn.Module):
    def __init__(self, base, rank=4):
        super().__init__()
        self.base = base
        self.a = torch.nn.Parameter(torch.randn(rank, base.in_features) * 0.1)
        self.b = torch.nn.Parameter(torch.randn(base.out_features, rank) * 0.1)

    def forward(self, x):
        return self.base(x) + F.linear(F.linear(x, self.a), self.b)


@pytest.mark.parametrize("activation", MODES)
def test_compile_training_step_matches_eager(activation):
    torch.manual_seed(0)
    float_model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    kw = {}
    if activation == "static":
        kw = dict(input_scale=torch.tensor(0.03), input_zero_point=torch.tensor(100))
    layers = [q8.nn.Int8Linear.from_float(float_model[0], activation, **kw), torch.nn.ReLU(),
              q8.nn.Int8Linear.from_float(float_model[2], activation, **kw)]
    model = torch.nn.Sequential(torch.nn.Linear(12, 16), LoRA(layers[0]), layers[1], LoRA(layers[2]))
    x, target = torch.randn(10, 12), torch.randn(10, 8)

    def step(m):
        for p in model.parameters():
            p.grad = None
        loss = F.mse_loss(m(x), target)
        loss.backward()  # AOT autograd compiled the backward with the forward
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    eager_loss, eager_grads = step(model)
    loss, grads = step(torch.compile(model, fullgraph=True, backend="aot_eager"))
    torch.testing.assert_close(loss, eager_loss)
    assert len(grads) == len(eager_grads) == 6  # the float Linear and the two LoRA pairs; the int8 base has none
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_compile_inductor_backward(tmp_path):
    """The inductor backend (C++ codegen) through a q8.linear backward, grad mode on."""
    layer = q8.nn.Int8Linear.from_float(torch.nn.Linear(16, 8), "dynamic")
    x = torch.randn(5, 16, requires_grad=True)

    def f(x):
        return layer(x).pow(2).sum()

    compiled = torch.compile(f, fullgraph=True)
    (g_compiled,) = torch.autograd.grad(compiled(x), x)
    (g_eager,) = torch.autograd.grad(f(x), x)
    torch.testing.assert_close(g_compiled, g_eager)


def test_lora_example_quick():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    # The q8 this test imported (the source tree's, or a venv's under scripts/test_torch.sh), not the source tree's.
    q8_parent = os.path.dirname(os.path.dirname(os.path.abspath(q8.__file__)))
    env = dict(os.environ, PYTHONPATH=q8_parent + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, os.path.join(root, "examples", "python", "lora_int8.py"), "--quick"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "int8 base unchanged: True" in out.stdout


def test_grad_input_is_identical_on_every_isa():
    """dequant_panels is one IEEE multiply per weight on every ISA family, so the gradients agree exactly."""
    w8, ws, packed = make_weight(70, 301)
    g = torch.randn(9, 70)
    best = q8.cpu_isa()
    outs = {}
    try:
        for isa in q8.cpu_isas():
            q8.set_cpu_isa(isa)
            outs[isa] = torch.ops.q8.linear_grad_input(g, packed, ws, 301)
    finally:
        q8.set_cpu_isa(best)
    ref = outs[best]
    for isa, out in outs.items():
        assert torch.equal(out, ref), isa
