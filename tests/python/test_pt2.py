"""PyTorch 2 and TorchScript: opcheck, torch.compile, torch.export, jit.script round trips."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import q8
from test_fake_quantize import assert_same

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPS = torch.ops.q8


def sample_inputs(device, requires_grad):
    """(op, args) pairs covering every q8 op, its dtypes and its per-tensor / per-channel forms."""

    def x_(*shape, dtype=torch.float32, rg=requires_grad):
        return (torch.randn(shape, device=device) * 3).to(dtype).requires_grad_(rg)

    def s_(*shape):
        return (torch.rand(shape, device=device) * 0.1 + 0.02).requires_grad_(requires_grad)

    def zi(*shape):
        return torch.randint(-3, 4, shape, device=device, dtype=torch.int32)

    def zf(*shape):
        return (torch.randn(shape, device=device)).requires_grad_(requires_grad)

    samples = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        samples += [
            (OPS.fake_quantize_per_tensor.default, (x_(8, 33, dtype=dtype), s_(), zi(), -128, 127)),
            (OPS.fake_quantize_per_tensor.default, (x_(5, 7, dtype=dtype), s_(1), zf(1), 0, 15)),
            (OPS.fake_quantize_per_channel.default, (x_(4, 6, 70, dtype=dtype), s_(6), zi(6), 1, -128, 127)),
            (OPS.fake_quantize_per_channel.default, (x_(9, 5, dtype=dtype), s_(5), zf(5), -1, -8, 7)),
        ]
    cl = (torch.randn(2, 6, 3, 5, device=device) * 3).to(memory_format=torch.channels_last)
    samples += [
        (OPS.fake_quantize_per_tensor.default, (x_(), s_(), zi(), -128, 127)),
        (OPS.fake_quantize_per_tensor.default, (cl.clone().requires_grad_(requires_grad), s_(), zi(), -128, 127)),
        (OPS.fake_quantize_per_channel.default, (cl.clone().requires_grad_(requires_grad), s_(6), zf(6), 1, -8, 7)),
        (OPS._fake_quantize_cachemask.default, (cl.permute(0, 3, 1, 2), s_(5), zi(5), 1, -128, 127)),
        (OPS.quantize.default, (cl, s_(3), zi(3) + 5, 2, 0, 255, torch.uint8)),
        (OPS._fake_quantize_cachemask.default, (x_(6, 10), s_(), zi(), None, -128, 127)),
        (OPS._fake_quantize_cachemask.default, (x_(6, 10), s_(10), zi(10) + 3, 1, 0, 255)),
        (OPS._fake_quantize_mask_backward.default, (x_(6, 10), torch.rand(6, 10, device=device) > 0.5)),
        (OPS._fake_quantize_learnable_backward.default, (x_(6, 10), x_(6, 10), s_(), zf(), None, -128, 127)),
        (OPS._fake_quantize_learnable_backward.default, (x_(6, 10), x_(6, 10), s_(6), zi(6), 0, -128, 127)),
        (OPS.choose_qparams.default, (x_(7, 9), -128, 127, False, None)),
        (OPS.choose_qparams.default, (x_(7, 9, dtype=torch.bfloat16), 0, 255, True, 1)),
        (OPS.quantize.default, (x_(7, 9), s_(), zi(), None, -128, 127, torch.int8)),
        (OPS.quantize.default, (x_(7, 9, dtype=torch.float16), s_(9), zi(9) + 5, 1, 0, 255, torch.uint8)),
        (OPS.dequantize.default, (torch.randint(-128, 128, (7, 9), dtype=torch.int8, device=device), s_(), zi(), None, torch.float32)),
        (OPS.dequantize.default, (torch.randint(0, 255, (7, 9), dtype=torch.int32, device=device), s_(7), zi(7), 0, torch.bfloat16)),
    ]
    # The fused observer: state tensors (buffers, never requiring grad) are updated in place.
    def state(n, lo=float("inf"), hi=-float("inf")):
        return (torch.full((n,), lo, device=device), torch.full((n,), hi, device=device),
                torch.ones(n, device=device), torch.zeros(n, dtype=torch.int32, device=device))

    def on(v, dtype=torch.long):
        return torch.tensor([v], dtype=dtype, device=device)

    samples += [
        (OPS.observe_fake_quantize.default, (x_(8, 33), on(1), on(1), *state(1), 0.01, 0, 255, None, False)),
        (OPS.observe_fake_quantize.default, (x_(4, 6, 70, dtype=torch.bfloat16), on(1), on(1), *state(6), 0.1,
                                             -128, 127, 1, True)),
        (OPS.observe_fake_quantize.default, (x_(9, 5, dtype=torch.float16), on(1, torch.bool), on(0, torch.bool),
                                             *state(5), 0.5, -8, 7, -1, False)),
        (OPS.observe_fake_quantize.default, (cl.clone().requires_grad_(requires_grad), on(0), on(1),
                                             *state(6, -1.0, 2.0), 0.01, 0, 255, 1, False)),
        (OPS.observe_fake_quantize.default, (x_(), on(1.0, torch.float32), on(1), *state(1), 1.0, -128, 127, None,
                                             True)),
    ]
    # The histogram observer: state updated in place; qparams from a filled histogram.
    def hist_state(bins, lo=float("inf"), hi=-float("inf")):
        return (torch.zeros(bins, dtype=torch.float64, device=device), torch.full((1,), lo, device=device),
                torch.full((1,), hi, device=device))

    filled = hist_state(64)
    torch.ops.q8.histogram_observe(torch.randn(500, device=device), on(1), *filled)
    samples += [
        (OPS.histogram_observe.default, (x_(8, 33), on(1), *hist_state(64), None)),
        (OPS.histogram_observe.default, (x_(4, 6, 7, dtype=torch.bfloat16), on(1, torch.bool), *hist_state(17, -1.0, 2.0),
                                         torch.tensor([-3.0, 1.0], device=device))),
        (OPS.histogram_observe.default, (x_(9, 5, dtype=torch.float16).transpose(0, 1), on(0), *hist_state(8), None)),
        (OPS.histogram_qparams.default, (*filled, 99.9, 0, 255, False)),
        (OPS.histogram_qparams.default, (*filled, 99.0, -128, 127, True)),
        (OPS.histogram_qparams.default, (*hist_state(16), 100.0, 0, 255, False)),
    ]
    # The int8 linear family. linear differentiates its input and bias (straight-through; the
    # weight and its scales are frozen): its input samples follow requires_grad.
    w = torch.randn(19, 37, device=device)
    w8, ws = q8.quantize_weight(w)
    packed = q8.pack_weight(w8)
    u8 = torch.randint(0, 256, (5, 37), dtype=torch.uint8, device=device)
    samples += [
        (OPS.quantize_weight.default, (x_(19, 37, rg=False),)),
        (OPS.quantize_weight.default, (x_(4, 8, dtype=torch.bfloat16, rg=False),)),
        (OPS.pack_weight.default, (w8,)),
        (OPS.pack_weight.default, (w8[:, :16].t(),)),
        (OPS.unpack_weight.default, (packed, 19, 37)),
        (OPS.int8_mm.default, (u8, packed, 19, None)),
        (OPS.int8_mm.default, (u8, packed, 19, torch.randint(0, 256, (5,), dtype=torch.int32, device=device))),
        (OPS.linear.default, (x_(3, 5, 37), packed, ws, torch.randn(19, device=device).requires_grad_(requires_grad),
                              "dynamic", None, None)),
        (OPS.linear.default, (x_(6, 37, dtype=torch.bfloat16), packed, ws, None, "dynamic", None, None)),
        (OPS.linear.default, (x_(37, dtype=torch.float16), packed, ws, torch.randn(19, device=device).half(),
                              "weight_only", None, None)),
        (OPS.linear.default, (x_(4, 37), packed, ws, None, "static",
                              torch.tensor(0.05, device=device), torch.tensor(128, dtype=torch.int32, device=device))),
        (OPS.linear_grad_input.default, (x_(4, 19, rg=False), packed, ws, 37)),
        (OPS.linear_grad_input.default, (x_(2, 3, 19, dtype=torch.bfloat16, rg=False), packed, ws, 37)),
    ]
    # Int8 embeddings (inference ops: backward raises, so no requires_grad samples here; the
    # full set of samples, requires_grad included, is in test_embedding.py).
    e8, es = q8.quantize_weight(torch.randn(30, 12, device=device))
    eidx = torch.randint(0, 30, (8,), device=device)
    samples += [
        (OPS.embedding.default, (e8, es, eidx.view(2, 4), torch.bfloat16)),
        (OPS.embedding_bag.default, (e8, es, eidx, torch.tensor([0, 3, 3], device=device), "sum",
                                     torch.rand(8, device=device), False, None, None)),
        (OPS.embedding_bag.default, (e8, es, eidx.view(2, 4), None, "max", None, False, 1, None)),
    ]
    # Int8 convolution (inference ops: backward raises, so no requires_grad samples; the full
    # set of cases is in test_conv_op.py).
    c8 = torch.randint(-127, 128, (8, 6, 3, 3), dtype=torch.int8, device=device)
    cs = torch.rand(8, device=device) * 0.01 + 0.001
    cpk = OPS.pack_conv_weight(c8, 1)
    d8 = torch.randint(-127, 128, (6, 1, 3, 3), dtype=torch.int8, device=device)
    dpk = OPS.pack_conv_weight(d8, 6)
    t_ = lambda v, dt=torch.float32: torch.tensor(v, dtype=dt, device=device)  # noqa: E731
    cx = torch.randn(2, 6, 7, 5, device=device)
    samples += [
        (OPS.pack_conv_weight.default, (c8, 1)),
        (OPS.pack_conv_weight.default, (c8[:, :3, :1, :2], 2)),
        (OPS.pack_conv_weight.default, (d8, 6)),
        (OPS.unpack_conv_weight.default, (cpk, 8, 6, [3, 3], 1)),
        (OPS.unpack_conv_weight.default, (dpk, 6, 1, [3, 3], 6)),
        (OPS.conv2d.default, (cx, cpk, cs, torch.randn(8, device=device), [3, 3], [1, 1], [1, 1], [1, 1], 1,
                              "dynamic", None, None, None, None, None, 0.0, None, None, None)),
        (OPS.conv2d.default, (cx.to(torch.bfloat16).contiguous(memory_format=torch.channels_last), cpk, cs, None,
                              [3, 3], [2, 1], [0, 1], [1, 2], 1, "dynamic", None, None, None, None, None, None, None,
                              None, None)),
        (OPS.conv2d.default, (torch.randint(0, 256, (2, 6, 7, 5), dtype=torch.uint8, device=device), cpk, cs, None,
                              [3, 3], [1, 1], [1, 1], [1, 1], 1, "static", t_(0.05), t_(3, torch.int32),
                              torch.randint(0, 256, (2, 8, 7, 5), dtype=torch.uint8, device=device), t_(0.1),
                              t_(128, torch.int64), 0.0, 6.0, t_(0.04), t_(0, torch.int32))),
        (OPS.conv2d.default, (cx, dpk, cs[:6], None, [3, 3], [1, 1], [1, 1], [1, 1], 6, "static", t_(0.05),
                              t_(128, torch.int32), torch.randn(2, 6, 7, 5, device=device), None, None, None, None,
                              None, None)),
        (OPS.max_pool2d.default, (torch.randint(0, 256, (2, 6, 7, 5), dtype=torch.uint8, device=device), [3, 3],
                                  [2, 2], [1, 1], [1, 1], False)),
        (OPS.max_pool2d.default, (torch.randint(0, 256, (1, 3, 9, 8), dtype=torch.uint8, device=device).contiguous(
            memory_format=torch.channels_last), [2, 3], [], [0, 1], [2, 1], True)),
    ]
    return samples


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_every_op(device, requires_grad):
    seen = set()
    for op, args in sample_inputs(device, requires_grad):
        if requires_grad and not any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            continue
        if requires_grad and op is OPS._fake_quantize_learnable_backward.default:
            # Its own derivative (a second derivative of LSQ) is not implemented and
            # raises a clear error: see test_double_backward.
            continue
        torch.library.opcheck(op, args)
        seen.add(op._name)
    if not requires_grad:
        # Every op of the namespace but the ISA switches is covered.
        utilities = {"_get_cpu_isa", "_set_cpu_isa", "_supported_cpu_isas", "_cpu_peak_gops"}
        all_ops = {f"q8::{n}" for n in dir(OPS) if not n.startswith("__") and n not in utilities
                   and isinstance(getattr(OPS, n), torch._ops.OpOverloadPacket)}
        assert all_ops <= seen, all_ops - seen


def test_ops_carry_pt2_compliant_tag():
    for name in ["fake_quantize_per_tensor", "fake_quantize_per_channel", "choose_qparams", "quantize", "dequantize",
                 "_fake_quantize_cachemask", "_fake_quantize_mask_backward", "_fake_quantize_learnable_backward",
                 "quantize_weight", "pack_weight", "unpack_weight", "int8_mm", "linear", "linear_grad_input",
                 "observe_fake_quantize",
                 "histogram_observe", "histogram_qparams", "embedding", "embedding_bag",
                 "pack_conv_weight", "unpack_conv_weight", "conv2d", "max_pool2d"]:
        assert torch.Tag.pt2_compliant_tag in getattr(OPS, name).default.tags, name


class QATBlock(torch.nn.Module):
    """A linear layer with per-channel weight and learnable per-tensor activation fake quantization."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(16, 8)
        self.act_scale = torch.nn.Parameter(torch.tensor([0.05]))
        self.act_zp = torch.nn.Parameter(torch.tensor([0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.linear.weight
        ws, wz = torch.ops.q8.choose_qparams(w.detach(), -127, 127, True, 0)
        wq = torch.ops.q8.fake_quantize_per_channel(w, ws, wz, 0, -127, 127)
        xq = torch.ops.q8.fake_quantize_per_tensor(x, self.act_scale, self.act_zp, -128, 127)
        return torch.nn.functional.linear(xq, wq, self.linear.bias)


def _grads(model, x):
    model.zero_grad()
    out = model(x)
    out.square().sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph_forward_backward(device, backend):
    torch._dynamo.reset()
    model = QATBlock().to(device)
    x = torch.randn(32, 16, device=device) * 2
    eager_out, eager_grads = _grads(model, x)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    out, grads = _grads(compiled, x)
    torch.testing.assert_close(out, eager_out)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_compile_dynamic_shapes(device):
    torch._dynamo.reset()

    def f(x, s, z):
        return torch.ops.q8.fake_quantize_per_channel(x, s, z, 1, -128, 127) * 2

    cf = torch.compile(f, fullgraph=True, dynamic=True, backend="aot_eager")
    for n, c in [(4, 5), (7, 9), (11, 3)]:
        x = torch.randn(n, c, device=device)
        s = torch.rand(c, device=device) + 0.01
        z = torch.zeros(c, dtype=torch.int32, device=device)
        assert_same(cf(x, s, z), f(x, s, z))


def _run_python(code):
    env = dict(os.environ)
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_export_save_load_in_new_process(tmp_path, device):
    model = QATBlock().to(device).eval()
    x = torch.randn(5, 16, device=device)
    ep = torch.export.export(model, (x,))
    names = {n.target.name() for n in ep.graph.nodes if n.op == "call_function" and hasattr(n.target, "name")}
    assert {"q8::fake_quantize_per_tensor", "q8::fake_quantize_per_channel", "q8::choose_qparams"} <= names
    path = tmp_path / "model.pt2"
    torch.export.save(ep, str(path))
    torch.save({"x": x.cpu(), "y": model(x).detach().cpu()}, tmp_path / "io.pt")
    _run_python(f"""
        import torch, q8
        ep = torch.export.load({str(path)!r})
        io = torch.load({str(tmp_path / 'io.pt')!r})
        y = ep.module()(io["x"].to({device!r}))
        torch.testing.assert_close(y.cpu(), io["y"], rtol=0, atol=0)
        print("ok")
    """)


def test_torchscript_save_load_in_new_process(tmp_path, device):
    model = QATBlock().to(device)
    scripted = torch.jit.script(model)
    x = torch.randn(5, 16, device=device)
    torch.testing.assert_close(scripted(x), model(x), rtol=0, atol=0)
    # Training through the scripted module uses the same C++ autograd.
    out, grads = _grads(scripted, x)
    eager_out, eager_grads = _grads(model, x)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    path = tmp_path / "model.ts"
    scripted.save(str(path))
    torch.save({"x": x.cpu(), "y": model(x).detach().cpu()}, tmp_path / "io.pt")
    _run_python(f"""
        import torch, q8
        m = torch.jit.load({str(path)!r}, map_location={device!r})
        io = torch.load({str(tmp_path / 'io.pt')!r})
        torch.testing.assert_close(m(io["x"].to({device!r})).detach().cpu(), io["y"], rtol=0, atol=0)
        print("ok")
    """)


def test_loading_without_q8_says_how(tmp_path):
    scripted = torch.jit.script(QATBlock())
    path = tmp_path / "model.ts"
    scripted.save(str(path))
    env = dict(os.environ)
    res = subprocess.run([sys.executable, "-c", f"import torch; torch.jit.load({str(path)!r})"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode != 0
    assert "q8::" in res.stderr


def test_import_fails_clearly_for_another_torch():
    """A libq8 built for another torch is refused with a message that says what to do."""
    _run_python("""
        import torch
        torch.__version__ = "1.0.0"
        try:
            import q8
        except ImportError as e:
            assert "was built against torch" in str(e) and "torch 1.0.0 is installed" in str(e), e
            assert "Rebuild q8" in str(e), e
            print("ok")
        else:
            raise SystemExit("import q8 did not fail")
    """)


def test_import_fails_clearly_without_the_library(tmp_path):
    pkg = tmp_path / "q8"
    pkg.mkdir()
    for name in ("__init__.py", "ops.py"):
        (pkg / name).write_text(open(os.path.join(os.path.dirname(q8.__file__), name)).read())
    res = subprocess.run([sys.executable, "-c", "import q8"], capture_output=True, text=True, cwd=tmp_path,
                         timeout=300)
    assert res.returncode != 0
    assert "libq8.so is missing" in res.stderr and "pip install --no-build-isolation -e ." in res.stderr


def test_compile_fullgraph_histogram_calibration(device):
    """histogram_observe (in-place state, functionalized) and histogram_qparams in one compiled graph."""
    torch._dynamo.reset()

    def f(x, flag, h, lo, hi, rng):
        torch.ops.q8.histogram_observe(x, flag, h, lo, hi)
        torch.ops.q8.histogram_observe(x * 3, flag, h, lo, hi, rng)
        s, z = torch.ops.q8.histogram_qparams(h, lo, hi, 99.0, -128, 127, True)
        return s * 2, z

    def state():
        return (torch.zeros(128, dtype=torch.float64, device=device), torch.full((1,), float("inf"), device=device),
                torch.full((1,), -float("inf"), device=device))

    flag = torch.ones(1, dtype=torch.long, device=device)
    for backend in ("aot_eager", "inductor"):
        cf = torch.compile(f, fullgraph=True, backend=backend)
        a, b = state(), state()
        for i in range(3):
            x = torch.randn(40, 9, device=device) * (i + 1)
            rng = torch.tensor([-20.0 * (i + 1), 15.0], device=device)
            ya = f(x, flag, *a, rng)
            yb = cf(x, flag, *b, rng)
            assert_same(ya[0], yb[0])
            assert_same(ya[1], yb[1])
            for u, v in zip(a, b):
                assert_same(u, v)
        torch._dynamo.reset()
