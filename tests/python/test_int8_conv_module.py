"""q8.nn.Int8Conv2d / Int8Conv1d over torch.ops.q8.conv2d: modes, epilogue, state_dict, devices,
serialization (pickle, deepcopy, TorchScript in Python and C++, torch.export, torch.compile), input checks.

The reference (``ref_conv``) follows the op's contract (csrc/q8/q8.h): the input codes
(static: ``clamp(nearbyint(x * (1/s)) + z, 0, 255)``; dynamic: the same with each sample's
``q8.choose_qparams(sample, 0, 255)``), the exact integer accumulation of
``(xq - z) * w`` (float64 holds these sums exactly), then the float32 epilogue in the op's
order. So the comparisons are exact (torch.equal), not tolerances. The layers are also
checked against ``conv_reference.conv2d`` (the op's own exact reference) called with the
layer's arguments.
"""
import copy
import io
import os
import pickle
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import conv_reference
import q8
from q8.nn.conv import CONV_FORMAT_VERSION, Int8Conv1d, Int8Conv2d

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
JIT_RUN = os.environ.get("Q8_JIT_RUN", os.path.join(ROOT, "build", "py", "q8_jit_run"))


def codes_of(x, s, z):
    return torch.clamp(torch.round(x.float() * (1.0 / s)) + z, 0, 255)


def ref_conv(m, x, residual=None):
    """What the layer must compute, from its canonical buffers (2-D, float or uint8 x)."""
    w = m.weight_int8.double()
    if w.dim() == 3:
        w = w.unsqueeze(2)
    if m._pre_pad:
        x = F.pad(x, m._pre_pad, mode=m._pre_pad_mode) if m._pre_pad_mode != "constant" else \
            F.pad(x, m._pre_pad, value=float(int(m.input_zero_point)) if x.dtype == torch.uint8 else 0.0)
    outs = []
    for n in range(x.size(0)):
        xn = x[n]
        if m.activation == "static":
            s, z = m.input_scale.float(), int(m.input_zero_point)
        else:
            s, z = q8.choose_qparams(xn.float(), 0, 255)
            s, z = s.reshape(()).float(), int(z)
        xq = xn.double() if xn.dtype == torch.uint8 else codes_of(xn, s, z).double()
        acc = F.conv2d((xq - z)[None], w, None, m.stride, m.padding, m.dilation, m.groups)[0]
        y = acc.float() * (s * m.weight_scale).reshape(-1, 1, 1)
        if m.bias is not None:
            y = y + m.bias.reshape(-1, 1, 1)
        if residual is not None:
            r = residual[n]
            if r.dtype == torch.uint8:
                r = (r.int() - m.residual_zero_point).float() * m.residual_scale
            y = y + r
        if m.clamp_min is not None:
            y = torch.where(y < m.clamp_min, torch.tensor(m.clamp_min), y)
        if m.clamp_max is not None:
            y = torch.where(y > m.clamp_max, torch.tensor(m.clamp_max), y)
        outs.append(y)
    y = torch.stack(outs)
    if m.output_scale is not None:
        y = codes_of(y, m.output_scale, int(m.output_zero_point)).to(torch.uint8)
    return y


CONVS = [dict(in_channels=4, out_channels=6, kernel_size=3, padding=1),
         dict(in_channels=6, out_channels=6, kernel_size=3, stride=2, padding=1, groups=6, bias=False),
         dict(in_channels=4, out_channels=8, kernel_size=(1, 3), stride=(2, 1), padding=(0, 2), dilation=(1, 2),
              groups=2),
         dict(in_channels=3, out_channels=5, kernel_size=4, padding="same"),
         dict(in_channels=3, out_channels=5, kernel_size=3, padding=1, padding_mode="reflect")]


def static_layer(conv, x):
    s, z = q8.choose_qparams(x, 0, 255)
    return Int8Conv2d.from_float(conv, "static", s, z)


@pytest.mark.parametrize("cfg", CONVS)
def test_modes_against_reference(cfg):
    conv = nn.Conv2d(**cfg)
    x = torch.randn(3, cfg["in_channels"], 9, 10)
    w = Int8Conv2d.from_float(conv, "weight_only")
    # weight_only: F.conv2d with the dequantized weight, in the input's dtype
    torch.testing.assert_close(w(x), conv._conv_forward(x, w.dequantized_weight(), conv.bias), rtol=0, atol=1e-6)
    for m in (Int8Conv2d.from_float(conv, "dynamic"), static_layer(conv, x)):
        y = m(x)
        assert y.dtype == torch.float32 and y.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(y, ref_conv(m, x)), (m, (y - ref_conv(m, x)).abs().max())
        xp = F.pad(x, m._pre_pad, mode=m._pre_pad_mode) if m._pre_pad else x
        expected = conv_reference.conv2d(xp, m.weight_int8, m.weight_scale, m.bias, m.stride, m.padding, m.dilation,
                                         m.groups, m.activation, m.input_scale, m.input_zero_point)
        assert torch.equal(y, expected)
        assert y.shape == conv(x).shape
        # int8 quantization error against the float layer: a few input / weight steps
        torch.testing.assert_close(y, conv(x), rtol=0.05, atol=0.08)


def test_epilogue_residual_clamp_and_uint8_output():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 7, 7)
    m = static_layer(conv, x)
    r = torch.randn(2, 6, 7, 7)
    m.clamp_min, m.clamp_max = 0.0, 6.0
    assert "clamp=(0.0, 6.0)" in repr(m)
    assert torch.equal(m(x, r), ref_conv(m, x, r))
    # uint8 residual with its qparams, uint8 output
    rs, rz = q8.choose_qparams(r, 0, 255)
    rq = codes_of(r, rs, int(rz)).to(torch.uint8)
    m.residual_scale, m.residual_zero_point = rs.reshape(()), rz.reshape(()).int()
    m.output_scale, m.output_zero_point = torch.tensor(0.03), torch.tensor(3, dtype=torch.int32)
    y = m(x, rq)
    assert y.dtype == torch.uint8 and y.is_contiguous(memory_format=torch.channels_last)
    expected = conv_reference.conv2d(x, m.weight_int8, m.weight_scale, m.bias, m.stride, m.padding, m.dilation,
                                     m.groups, "static", m.input_scale, m.input_zero_point, rq, m.residual_scale,
                                     m.residual_zero_point, 0.0, 6.0, m.output_scale, m.output_zero_point)
    assert torch.equal(y, expected)
    assert torch.equal(y, ref_conv(m, x, rq))
    # uint8 input = codes: the same result as the float input those codes quantize
    xq = codes_of(x, m.input_scale, int(m.input_zero_point)).to(torch.uint8)
    assert torch.equal(m(xq, rq), y)


def test_int8_conv1d():
    for cfg in (dict(kernel_size=3, padding=1), dict(kernel_size=4, padding="same", padding_mode="circular"),
                dict(kernel_size=3, stride=2, dilation=2, groups=2)):
        conv = nn.Conv1d(4, 6, **cfg)
        x = torch.randn(2, 4, 20)
        s, z = q8.choose_qparams(x, 0, 255)
        for m in (Int8Conv1d.from_float(conv), Int8Conv1d.from_float(conv, "static", s, z)):
            assert m.weight_int8.shape == conv.weight.shape
            y = m(x)
            assert torch.equal(y, ref_conv(m, x.unsqueeze(2)).squeeze(2))
            torch.testing.assert_close(y, conv(x), rtol=0.05, atol=0.08)
        assert torch.equal(torch.jit.script(m)(x), y)
        m2 = Int8Conv1d(4, 6, **cfg, activation="static")
        m2.load_state_dict(m.state_dict())
        assert torch.equal(m2(x), y)
    with pytest.raises(TypeError, match="expected a torch.nn.Conv1d"):
        Int8Conv1d.from_float(nn.Conv2d(1, 1, 1))


def test_state_dict_round_trip_and_bad_state_dicts():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 7, 7)
    m = static_layer(conv, x)
    m.output_scale, m.output_zero_point = torch.tensor(0.05), torch.tensor(7, dtype=torch.int32)
    sd = m.state_dict()
    assert set(sd) == {"weight_int8", "weight_scale", "bias", "input_scale", "input_zero_point", "output_scale",
                       "output_zero_point", "_q8_format"}
    assert int(sd["_q8_format"]) == CONV_FORMAT_VERSION and sd["weight_int8"].shape == (6, 4, 3, 3)
    fresh = Int8Conv2d(4, 6, 3, padding=1, activation="static")
    fresh.load_state_dict(sd)  # adopts the optional output qparams
    assert torch.equal(fresh(x), m(x)) and fresh(x).dtype == torch.uint8
    assert torch.equal(fresh.packed_weight, m.packed_weight)

    def load(sd2, **kw):
        Int8Conv2d(4, 6, 3, padding=1, activation="static", **kw).load_state_dict(sd2)

    with pytest.raises(RuntimeError, match=r"size mismatch for weight_int8: expected shape \[6, 4, 3, 3\]"):
        load({**sd, "weight_int8": torch.zeros(6, 4, 1, 1, dtype=torch.int8)})
    with pytest.raises(RuntimeError, match="weight_scale: expected dtype torch.float32, found torch.float16"):
        load({**sd, "weight_scale": sd["weight_scale"].half()})
    with pytest.raises(RuntimeError, match=f"reads state_dict format version {CONV_FORMAT_VERSION}, found 1"):
        load({**sd, "_q8_format": torch.tensor(1)})
    with pytest.raises(RuntimeError, match="Missing key.*_q8_format"):
        load({k: v for k, v in sd.items() if k != "_q8_format"})
    with pytest.raises(RuntimeError, match="holds only one of the pair"):
        load({k: v for k, v in sd.items() if k != "output_zero_point"})
    with pytest.raises(RuntimeError, match="is dynamic"):
        Int8Conv2d(4, 6, 3, padding=1).load_state_dict(sd)
    with pytest.raises(RuntimeError, match="Unexpected key.*bias"):
        load(sd, bias=False)
    # the failed loads changed nothing: weights still zero in a fresh layer
    assert torch.equal(fresh.weight_int8, m.weight_int8)


def test_dtypes_devices_and_to():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 7, 7)
    m = static_layer(conv, x)
    y = m(x)
    m.half()
    assert m.weight_int8.dtype == torch.int8 and m.weight_scale.dtype == torch.float32
    assert m.input_zero_point.dtype == torch.int32
    assert torch.equal(m(x), y)
    assert m(x.bfloat16()).dtype == torch.bfloat16
    m.to("cpu")
    assert m.packed_weight.device.type == "cpu" and torch.equal(m(x), y)
    # assigning / repacking the canonical weight changes the packed one
    m.weight_int8 = torch.zeros_like(m.weight_int8)
    assert torch.equal(torch.ops.q8.unpack_conv_weight(m.packed_weight, 6, 4, [3, 3], 1), m.weight_int8)
    if torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key("q8::conv2d", "CUDA"):
        mc = static_layer(conv, x).cuda()
        assert mc.packed_weight.is_cuda
        torch.testing.assert_close(mc(x.cuda()).cpu(), y, rtol=0, atol=0)


def test_pickle_deepcopy():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 7, 7)
    m = static_layer(conv, x)
    m.clamp_min = 0.0
    y = m(x)
    for c in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert torch.equal(c(x), y) and c.clamp_min == 0.0
    buf = io.BytesIO()
    torch.save(m, buf)
    assert "packed_weight" not in m.__reduce_ex__(2)[2]
    buf.seek(0)
    assert torch.equal(torch.load(buf, weights_only=False)(x), y)


def test_input_checks_quint8_and_uint8():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 7, 7)
    m = static_layer(conv, x)
    s, z = float(m.input_scale), int(m.input_zero_point)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.quantize_per_tensor's deprecation warning
        xq = torch.quantize_per_tensor(x, s, z, torch.quint8)
        assert torch.equal(m(xq), m(xq.int_repr()))
        assert torch.equal(m(xq), m(x))
        with pytest.raises(ValueError, match="do not match the layer's input qparams"):
            m(torch.quantize_per_tensor(x, s * 2, z, torch.quint8))
        with pytest.raises(ValueError, match="do not match the layer's input qparams"):
            m(torch.quantize_per_tensor(x, s, (z + 1) % 256, torch.quint8))
        with pytest.raises(ValueError, match="needs a layer with static input qparams"):
            Int8Conv2d.from_float(conv)(xq)
        with pytest.raises(TypeError, match="must be torch.quint8"):
            m(torch.quantize_per_tensor(x, s, 0, torch.qint8))
    for a in ("dynamic", "weight_only"):
        with pytest.raises(ValueError, match="uint8 input holds codes of unknown qparams"):
            Int8Conv2d.from_float(conv, a)(torch.zeros(1, 4, 5, 5, dtype=torch.uint8))
    with pytest.raises(ValueError, match="activation must be one of"):
        Int8Conv2d(1, 1, 1, activation="int4")
    with pytest.raises(ValueError, match="activation='static' needs"):
        Int8Conv2d.from_float(conv, "static")
    with pytest.raises(ValueError, match="only used with activation='static'"):
        Int8Conv2d.from_float(conv, "dynamic", torch.tensor(0.1), torch.tensor(3))
    with pytest.raises(ValueError, match="input_scale must be a finite positive float"):
        Int8Conv2d.from_float(conv, "static", torch.tensor(0.0), torch.tensor(3))


def _scripted(tmp_path):
    conv = nn.Conv2d(4, 6, 3, padding=1, padding_mode="replicate")
    x = torch.randn(2, 4, 7, 7)
    m = nn.Sequential(static_layer(conv, x), Int8Conv2d.from_float(nn.Conv2d(6, 5, 1)),
                      Int8Conv2d.from_float(nn.Conv2d(5, 3, 3), "weight_only")).eval()
    m[0].clamp_min = 0.0
    y = m(x)
    s = torch.jit.script(m)
    assert torch.equal(s(x), y)
    path = tmp_path / "m.ts"
    s.save(str(path))
    torch.save(x, tmp_path / "x.pt")
    torch.save(y, tmp_path / "y.pt")
    return m, x, y, path


def test_torchscript_save_load_new_process(tmp_path):
    m, x, y, path = _scripted(tmp_path)
    loaded = torch.jit.load(str(path))
    first = getattr(loaded, "0")
    assert torch.equal(loaded(x), y) and first.clamp_min == 0.0
    assert torch.equal(first.packed_weight, m[0].packed_weight)  # repacked by __setstate__
    assert set(first.state_dict()) == {"weight_int8", "weight_scale", "bias", "input_scale", "input_zero_point"}
    code = f"""
        import torch, q8
        m = torch.jit.load({str(path)!r})
        x, y = torch.load({str(tmp_path / 'x.pt')!r}), torch.load({str(tmp_path / 'y.pt')!r})
        assert torch.equal(m(x), y), (m(x) - y).abs().max()
        print("ok")
    """
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ))
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]


def test_cpp_torchscript_round_trip(tmp_path):
    if not os.path.exists(JIT_RUN):
        pytest.skip(f"{JIT_RUN} is not built (cmake --build build/py --target q8_jit_run)")
    _, _, y, path = _scripted(tmp_path)
    out = tmp_path / "out.pt"
    res = subprocess.run([JIT_RUN, str(path), str(tmp_path / "x.pt"), str(out)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert torch.equal(torch.load(out), y)


def test_export_and_compile():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 7, 7)
    m = nn.Sequential(static_layer(conv, x), Int8Conv2d.from_float(nn.Conv2d(6, 5, 1))).eval()
    m[0].clamp_min = 0.0
    y = m(x)
    ep = torch.export.export(m, (x,))
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.q8.conv2d.default) == 2, targets
    assert torch.equal(ep.module()(x), y)
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    buf.seek(0)
    assert torch.equal(torch.export.load(buf).module()(x), y)
    torch._dynamo.reset()
    assert torch.equal(torch.compile(m, fullgraph=True, backend="aot_eager")(x), y)
