"""q8.onnx.export: fake-quantized and int8 models as ONNX QuantizeLinear / DequantizeLinear, run in ONNX Runtime.

Tolerances (docs/export.md):

* ONNX QuantizeLinear divides by the scale, q8 multiplies by its float32 reciprocal:
  an element within one ulp of a rounding boundary can land one code apart. Per op,
  the tests compute ONNX's exact semantics (numpy division, round half to even) and
  require ORT to equal it bit for bit, and q8 to equal it except at such elements,
  which differ by exactly one step.
* Whole models, ORT with its graph optimizations off: the graph's float math (Conv /
  Gemm on dequantized values) against q8's (int32 accumulation, PyTorch's conv):
  float32 rounding only, 1e-5 relative to the output's magnitude.
* ORT with its default optimizations fuses Q/DQ into integer kernels
  (QLinearConv) that requantize an intermediate activation with an integer
  multiplier: a code of that activation can move by one step, so an output can
  move by at most one step times the next layer's weight row's L1 norm.
"""
import numpy as np
import pytest
import torch

import q8

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

import q8.onnx as q8onnx  # noqa: E402


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 6 * 6, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _session(path, optimize=False):
    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _run(path, *inputs, optimize=False):
    s = _session(path, optimize)
    feeds = {i.name: t.numpy() for i, t in zip(s.get_inputs(), inputs)}
    return s.run(None, feeds)[0]


def _nodes(path):
    model = onnx.load(str(path))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    consts = {}
    for n in model.graph.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = onnx.numpy_helper.to_array(n.attribute[0].t)
    inits.update(consts)
    return [n for n in model.graph.node if n.op_type != "Constant"], inits


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return a.i
    return default


def _onnx_fake_quant(x, scale, zp, qmin, qmax, axis=None):
    """ONNX QuantizeLinear + DequantizeLinear (+ q8's narrow clamp) in numpy: division, half to even."""
    x = x.numpy().astype(np.float32)
    s = scale.numpy().astype(np.float32)
    z = zp.numpy().astype(np.int64)
    if axis is not None:
        shape = [1] * x.ndim
        shape[axis] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    q = np.clip(np.rint(x / s) + z, qmin, qmax)
    return ((q - z).astype(np.float32) * s).astype(np.float32)


def _check_against_onnx_semantics(y_ort, y_q8, ref, scale, axis=None):
    """ORT == ONNX semantics exactly; q8 == ONNX semantics except one-step flips (reciprocal vs division)."""
    np.testing.assert_array_equal(y_ort, ref)
    diff = np.abs(y_q8 - ref)
    s = scale.numpy().astype(np.float32)
    if axis is not None:
        shape = [1] * ref.ndim
        shape[axis] = -1
        s = np.broadcast_to(s.reshape(shape), ref.shape)
    flipped = diff != 0
    np.testing.assert_allclose(diff[flipped], np.broadcast_to(s, ref.shape)[flipped], rtol=1e-6)
    assert flipped.mean() < 1e-3, flipped.mean()


class PerTensor(torch.nn.Module):
    def __init__(self, scale, zp, qmin, qmax):
        super().__init__()
        self.register_buffer("scale", scale)
        self.register_buffer("zero_point", zp)
        self.qmin, self.qmax = qmin, qmax

    def forward(self, x):
        return torch.ops.q8.fake_quantize_per_tensor(x, self.scale, self.zero_point, self.qmin, self.qmax)


class PerChannel(PerTensor):
    def __init__(self, scale, zp, axis, qmin, qmax):
        super().__init__(scale, zp, qmin, qmax)
        self.axis = axis

    def forward(self, x):
        return torch.ops.q8.fake_quantize_per_channel(x, self.scale, self.zero_point, self.axis, self.qmin,
                                                      self.qmax)


@pytest.mark.parametrize("qmin,qmax,zp,zp_type,clip", [
    (0, 255, 37, onnx.TensorProto.UINT8, False),
    (-128, 127, -5, onnx.TensorProto.INT8, False),
    (-127, 127, 0, onnx.TensorProto.INT8, True),   # symmetric weights' range: -128 must not appear
    (0, 15, 3, onnx.TensorProto.UINT8, True),      # 4 bits
])
def test_per_tensor_ops(tmp_path, qmin, qmax, zp, zp_type, clip):
    scale = torch.tensor(0.03)
    model = PerTensor(scale, torch.tensor(zp, dtype=torch.int32), qmin, qmax)
    x = torch.randn(64, 33) * 3
    x[0, :4] = torch.tensor([-1e4, 1e4, (qmin - zp - 0.5) * 0.03, (qmax - zp + 0.5) * 0.03])  # saturation
    path = tmp_path / "m.onnx"
    q8onnx.export(model, (x,), path)
    nodes, consts = _nodes(path)
    ops = [n.op_type for n in nodes]
    assert ops[:2] == ["QuantizeLinear", "DequantizeLinear"]
    assert ops[2:] == ((["Clip"], ["Min", "Max"]) if clip else ([],))[0] or (clip and ops[2:] == ["Min", "Max"])
    q = nodes[0]
    assert consts[q.input[2]].dtype == (np.uint8 if zp_type == onnx.TensorProto.UINT8 else np.int8)
    assert int(consts[q.input[2]]) == zp and consts[q.input[1]].shape == ()
    y = _run(path, x)
    ref = _onnx_fake_quant(x, scale, torch.tensor(zp), qmin, qmax)
    _check_against_onnx_semantics(y, model(x).numpy(), ref, scale)
    assert y.min() == np.float32(qmin - zp) * np.float32(0.03) and y.max() == np.float32(qmax - zp) * np.float32(0.03)


@pytest.mark.parametrize("axis", [1, -1, 0])
def test_per_channel_ops(tmp_path, axis):
    x = torch.randn(6, 5, 7) * 2
    c = x.shape[axis]
    scale = torch.rand(c) * 0.05 + 0.01
    zp = torch.zeros(c, dtype=torch.int32)
    model = PerChannel(scale, zp, axis, -127, 127)
    path = tmp_path / "m.onnx"
    q8onnx.export(model, (x,), path)
    nodes, consts = _nodes(path)
    assert [n.op_type for n in nodes] == ["QuantizeLinear", "DequantizeLinear", "Min", "Max"]
    assert _attr(nodes[0], "axis") == axis % 3 and _attr(nodes[1], "axis") == axis % 3
    assert consts[nodes[0].input[2]].dtype == np.int8 and consts[nodes[0].input[1]].shape == (c,)
    y = _run(path, x)
    ref = _onnx_fake_quant(x, scale, zp, -127, 127, axis % 3)
    _check_against_onnx_semantics(y, model(x).numpy(), ref, scale, axis % 3)


def test_flip_at_rounding_boundary_is_one_step(tmp_path):
    """Find an input where x / s and x * (1 / s) round differently: ORT and q8 then differ by exactly one step."""
    scale = torch.tensor(0.1)
    inv = np.float32(1) / np.float32(0.1)
    xs = np.arange(1, 200000, dtype=np.float32) * np.float32(0.05)  # near k + 0.5 steps
    xs = np.nextafter(xs, np.float32(np.inf)).astype(np.float32)
    a, b = np.rint(xs / np.float32(0.1)), np.rint(xs * inv)
    odd = xs[(a != b) & (np.abs(xs / np.float32(0.1)) < 120)]
    assert odd.size > 0
    x = torch.from_numpy(np.concatenate([odd[:8], -odd[:8]]))
    model = PerTensor(scale, torch.tensor(0, dtype=torch.int32), -128, 127)
    path = tmp_path / "m.onnx"
    q8onnx.export(model, (x,), path)
    y = _run(path, x)
    np.testing.assert_array_equal(y, _onnx_fake_quant(x, scale, torch.tensor(0), -128, 127))
    np.testing.assert_allclose(np.abs(y - model(x).numpy()), np.float32(0.1), rtol=1e-6)


def test_observe_fake_quantize_observer_off(tmp_path):
    class Obs(torch.nn.Module):
        def __init__(self, fake_quant_on):
            super().__init__()
            self.register_buffer("on", torch.zeros(1, dtype=torch.uint8))
            self.register_buffer("fq", torch.full((1,), fake_quant_on, dtype=torch.uint8))
            self.register_buffer("rmin", torch.full((4,), -1.0))
            self.register_buffer("rmax", torch.full((4,), 1.0))
            self.register_buffer("scale", torch.tensor([0.01, 0.02, 0.03, 0.04]))
            self.register_buffer("zp", torch.tensor([0, 1, -2, 3], dtype=torch.int32))

        def forward(self, x):
            y, _ = torch.ops.q8.observe_fake_quantize(x, self.on, self.fq, self.rmin, self.rmax, self.scale, self.zp,
                                                      0.01, -128, 127, 1)
            return y + 1

    x = torch.randn(8, 4)
    model = Obs(1)
    path = tmp_path / "m.onnx"
    q8onnx.export(model, (x,), path)
    nodes, _ = _nodes(path)
    assert [n.op_type for n in nodes] == ["QuantizeLinear", "DequantizeLinear", "Add"]
    assert _attr(nodes[0], "axis") == 1
    y = _run(path, x)
    ref = _onnx_fake_quant(x, model.scale, model.zp, -128, 127, 1) + np.float32(1)
    _check_against_onnx_semantics(y, model(x)[0].numpy() if isinstance(model(x), tuple) else model(x).numpy(),
                                  ref, model.scale, 1)
    # Fake quantization off: the identity.
    path2 = tmp_path / "off.onnx"
    q8onnx.export(Obs(0), (x,), path2)
    assert [n.op_type for n in _nodes(path2)[0]] == ["Add"]
    # Observer on: refused (the ONNX graph cannot update the state).
    on = Obs(1)
    on.on.fill_(1)
    with pytest.raises(q8onnx.OnnxExportError, match="observer on"):
        q8onnx.export(on, (x,))


def _qat_model(x):
    model = q8.prepare_qat(Net())
    for _ in range(3):
        model(x + torch.randn_like(x) * 0.1)
    model.eval()
    q8.freeze_observers(model)
    return model


def _check_qdq_model(path, nodes, consts):
    ops = [n.op_type for n in nodes]
    # Inputs of conv and fc: uint8 Q/DQ per tensor; weights: int8 initializers + DequantizeLinear(axis=0).
    qs = [n for n in nodes if n.op_type == "QuantizeLinear"]
    assert len(qs) == 2
    for q in qs:
        assert consts[q.input[2]].dtype == np.uint8 and consts[q.input[1]].shape == ()
    weight_dq = [n for n in nodes if n.op_type == "DequantizeLinear" and n.input[0] in consts]
    assert len(weight_dq) == 2
    for dq in weight_dq:
        assert consts[dq.input[0]].dtype == np.int8 and _attr(dq, "axis") == 0
        assert np.abs(consts[dq.input[0]].astype(np.int32)).max() <= 127
        assert not consts[dq.input[2]].any()
    assert "Conv" in ops and ("Gemm" in ops or "MatMul" in ops)
    # No float weight left in the file.
    assert not [k for k, v in consts.items() if v.dtype == np.float32 and v.size >= 8 * 3 * 3 * 3]


def test_qat_model(tmp_path):
    x = torch.randn(4, 3, 6, 6)
    model = _qat_model(x)
    path = tmp_path / "qat.onnx"
    q8onnx.export(model, (x,), path)
    _check_qdq_model(path, *_nodes(path))
    ref = model(x).detach().numpy()
    y = _run(path, x)
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    assert model.training is False and isinstance(model.fc, q8.nn.QATLinear)  # the model is not changed


def test_converted_int8_model_and_ort_optimized(tmp_path):
    torch.manual_seed(1)
    model = q8.prepare(Net())
    q8.calibrate(model, [torch.randn(4, 3, 6, 6) for _ in range(4)], progress=False)
    q8.convert(model)
    model.eval()
    x = torch.randn(4, 3, 6, 6)
    path = tmp_path / "int8.onnx"
    q8onnx.export(model, (x,), path)
    nodes, consts = _nodes(path)
    _check_qdq_model(path, nodes, consts)
    ref = model(x).numpy()
    np.testing.assert_allclose(_run(path, x), ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    # ORT's default optimizations (QLinearConv requantizing the fc input): each fc input code may move
    # by one step, so each output by at most input_scale * sum_k |w[n, k]|.
    y = _run(path, x, optimize=True)
    bound = float(model.fc.input_scale) * (model.fc.weight_int8.float().abs() * model.fc.weight_scale[:, None]).sum(1)
    assert (np.abs(y - ref) <= bound.numpy()[None, :] + 1e-5 * np.abs(ref).max()).all()


def test_weight_only_int8_linear(tmp_path):
    lin = torch.nn.Linear(16, 8)
    model = torch.nn.Sequential(q8.nn.Int8Linear.from_float(lin, activation="weight_only"),
                                q8.nn.Int8Linear.from_float(torch.nn.Linear(8, 8), activation="weight_only",
                                                            clamp_min=0.0, clamp_max=0.5))  # a fused Hardtanh
    x = torch.randn(5, 16) * 4
    path = tmp_path / "w.onnx"
    q8onnx.export(model, (x,), path)
    nodes, consts = _nodes(path)
    assert "QuantizeLinear" not in [n.op_type for n in nodes]
    ref = model(x).numpy()
    assert (ref == 0).any() and (ref == 0.5).any()
    np.testing.assert_allclose(_run(path, x), ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_refusals(tmp_path):
    x = torch.randn(4, 3, 6, 6)
    dyn = q8.quantize_dynamic(Net())
    with pytest.raises(q8onnx.OnnxExportError, match="activation='dynamic'"):
        q8onnx.export(dyn, (x,))
    observing = q8.prepare_qat(Net())
    with pytest.raises(q8onnx.OnnxExportError, match="freeze_observers"):
        q8onnx.export(observing, (x,))
    narrow = PerTensor(torch.tensor(0.1), torch.tensor(0, dtype=torch.int32), -127, 127)
    with pytest.raises(q8onnx.OnnxExportError, match="narrower"):
        q8onnx.export(narrow, (torch.randn(3),), narrow_range="error")
    wide = PerTensor(torch.tensor(0.1), torch.tensor(0, dtype=torch.int32), -300, 300)
    with pytest.raises(q8onnx.OnnxExportError, match="fits neither"):
        q8onnx.export(wide, (torch.randn(3),))

    class RawLinear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            w, self.s = q8.quantize_weight(torch.randn(4, 8))
            self.p = q8.pack_weight(w)

        def forward(self, x):
            return torch.ops.q8.linear(x, self.p, self.s, None, "dynamic", None, None)

    with pytest.raises(q8onnx.OnnxExportError, match="q8.linear"):
        q8onnx.export(RawLinear(), (torch.randn(2, 8),))
