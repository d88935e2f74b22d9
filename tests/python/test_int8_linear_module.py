"""q8.nn.Int8Linear and q8.quantize_dynamic: numerics against a dequantize-then-F.linear
reference, the state_dict format, devices and dtypes, pickling, TorchScript (Python and
C++ round trips), threads, torch.compile and torch.export."""
import copy
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import zipfile

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import q8
from q8.nn import FORMAT_VERSION, Int8Linear

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The C++ program of tests/cpp/jit_run.cpp (built by scripts/test.sh); Q8_JIT_RUN names another build of it.
JIT_RUN = os.environ.get("Q8_JIT_RUN", os.path.join(ROOT, "build", "py", "q8_jit_run"))
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
MODES = ["dynamic", "static", "weight_only"]


# ---------------------------------------------------------------------------- references

def dequantized_weight(m):
    return m.weight_int8.float() * m.weight_scale[:, None]


def reference(m, x):
    """Dequantize-then-F.linear in float32, returned in x's dtype (the layer's contract)."""
    xf = x.float().reshape(-1, x.shape[-1])
    if m.activation == "dynamic":
        # Each row quantized to asymmetric uint8 with its own min/max qparams.
        s, z = q8.choose_qparams(xf, 0, 255, False, 0)
        xf = q8.dequantize(q8.quantize(xf, s, z, 0, 0, 255, torch.uint8), s, z, 0)
    elif m.activation == "static":
        xq = q8.quantize(xf, m.input_scale, m.input_zero_point, None, 0, 255, torch.uint8)
        xf = q8.dequantize(xq, m.input_scale, m.input_zero_point, None)
    bias = None if m.bias is None else m.bias.float()
    y = F.linear(xf, dequantized_weight(m), bias)
    return y.reshape(*x.shape[:-1], m.out_features).to(x.dtype)


# The kernels compute in float32 (exact integer sums in the int8 modes) and round once
# to the output dtype; the reference sums float products in another order. Float32:
# a few float32 roundings of O(1) outputs. bfloat16 / float16: the two float32 values
# may round to neighbouring values of the output dtype, one ulp apart at most.
TOLERANCE = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=2 ** -7, atol=1e-5),
    torch.float16: dict(rtol=2 ** -10, atol=1e-5),
}


def assert_matches_reference(m, x):
    y = m(x)
    assert y.dtype == x.dtype and y.shape == (*x.shape[:-1], m.out_features)
    torch.testing.assert_close(y.float(), reference(m, x).float(), **TOLERANCE[x.dtype])
    return y


def calibrated(k, device):
    """Static activation qparams from a calibration batch (asymmetric uint8, per tensor)."""
    return q8.choose_qparams(torch.randn(256, k, device=device) * 2, 0, 255)


def make(mode, k=64, n=24, bias=True, device="cpu"):
    lin = nn.Linear(k, n, bias=bias, device=device)
    if mode == "static":
        s, z = calibrated(k, device)
        return lin, Int8Linear.from_float(lin, "static", s, z)
    return lin, Int8Linear.from_float(lin, mode)


def unpacked(m):
    """The int8 weight held by the layer's packed form."""
    return q8.unpack_weight(m._packed, m.out_features, m.in_features)


def assert_same(a, b):
    """Bit-for-bit (NaN-aware) equality of tensors or tuples of tensors."""
    if isinstance(a, (tuple, list)):
        assert isinstance(b, (tuple, list)) and len(a) == len(b)
        for u, v in zip(a, b):
            assert_same(u, v)
        return
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def _run_python(code):
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         env=dict(os.environ), cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


class OpRecorder(TorchDispatchMode):
    """Records every aten / q8 op that runs under it."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


# ---------------------------------------------------------------------------- from_float, numerics

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_from_float_matches_reference(device, mode, dtype):
    lin, m = make(mode, device=device)
    assert m.weight_int8.dtype == torch.int8 and m.weight_int8.shape == (24, 64)
    assert m.weight_scale.dtype == torch.float32 and m.weight_scale.shape == (24,)
    assert m.bias.dtype == torch.float32 and torch.equal(m.bias, lin.bias.detach())
    w_int8, w_scale = q8.quantize_weight(lin.weight.detach())
    assert torch.equal(m.weight_int8, w_int8) and torch.equal(m.weight_scale, w_scale)
    assert m.weight_int8.abs().max() <= 127
    x = (torch.randn(17, 64, device=device) * 2).to(dtype)
    y = assert_matches_reference(m, x)
    # And it is close to the float layer it replaces (int8 weights: ~0.4% per weight).
    y_float = lin(x.float()).detach()
    assert (y.float() - y_float).abs().max() <= 0.05 * y_float.abs().max()


@pytest.mark.parametrize("mode", MODES)
def test_no_bias(device, mode):
    _, m = make(mode, bias=False, device=device)
    assert m.bias is None
    x = torch.randn(5, 64, device=device)
    assert_matches_reference(m, x)
    assert_matches_reference(m, x.to(torch.bfloat16))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(2, 3, 64), (2, 1, 3, 64), (64,), (0, 64)])
def test_extra_batch_dims(device, mode, shape):
    _, m = make(mode, device=device)
    x = torch.randn(shape, device=device)
    y = assert_matches_reference(m, x)
    # Row by row the same computation as the flattened 2-D input.
    assert_same(y, m(x.reshape(-1, 64)).reshape(*shape[:-1], 24))


def test_modes_differ_and_static_uses_its_qparams():
    lin, dyn = make("dynamic")
    wo = Int8Linear.from_float(lin, "weight_only")
    x = torch.randn(8, 64) * 3
    assert not torch.equal(dyn(x), wo(x))
    s, z = q8.choose_qparams(x, 0, 255)
    st = Int8Linear.from_float(lin, "static", s, z)
    assert st.input_scale.shape == () and st.input_scale.dtype == torch.float32
    assert st.input_zero_point.shape == () and st.input_zero_point.dtype == torch.int32
    assert torch.equal(st.input_scale, s) and torch.equal(st.input_zero_point, z)
    assert_matches_reference(st, x)
    # Python numbers work as well as the tensors choose_qparams returns.
    st2 = Int8Linear.from_float(lin, "static", float(s), int(z))
    assert_same(st2(x), st(x))


def test_from_float_argument_errors():
    lin = nn.Linear(8, 4)
    with pytest.raises(ValueError, match=r"activation='static' needs .*input_scale.*missing: input_scale, "
                                         r"input_zero_point"):
        Int8Linear.from_float(lin, "static")
    with pytest.raises(ValueError, match=r"missing: input_zero_point$"):
        Int8Linear.from_float(lin, "static", input_scale=0.1)
    with pytest.raises(ValueError, match=r"missing: input_scale$"):
        Int8Linear.from_float(lin, "static", input_zero_point=3)
    with pytest.raises(ValueError, match=r"only used with activation='static', got activation='dynamic'"):
        Int8Linear.from_float(lin, "dynamic", input_scale=0.1, input_zero_point=3)
    with pytest.raises(ValueError, match=r"activation must be one of 'dynamic', 'static', 'weight_only', got 'int4'"):
        Int8Linear.from_float(lin, "int4")
    with pytest.raises(ValueError, match=r"activation must be one of"):
        Int8Linear(8, 4, activation="Dynamic")
    with pytest.raises(ValueError, match=r"input_zero_point must be in \[0, 255\].*got 256"):
        Int8Linear.from_float(lin, "static", 0.1, 256)
    with pytest.raises(ValueError, match=r"input_zero_point must be an integer"):
        Int8Linear.from_float(lin, "static", 0.1, 3.5)
    with pytest.raises(ValueError, match=r"input_scale must be finite and at least"):
        Int8Linear.from_float(lin, "static", 0.0, 3)
    with pytest.raises(ValueError, match=r"input_scale must have one element, got shape \[2\]"):
        Int8Linear.from_float(lin, "static", torch.tensor([0.1, 0.2]), 3)
    with pytest.raises(TypeError, match=r"expected a torch.nn.Linear, got Conv1d"):
        Int8Linear.from_float(nn.Conv1d(8, 4, 1))
    with pytest.raises(ValueError, match=r"Int8Linear: clamp_min must be <= clamp_max, got 1.0 and 0.0"):
        Int8Linear.from_float(lin, clamp_min=1, clamp_max=0)
    with pytest.raises(ValueError, match=r"Int8Linear: clamp_min / clamp_max must not be NaN"):
        Int8Linear(8, 4, clamp_max=float("nan"))
    m = Int8Linear.from_float(lin)
    m.clamp_min = float("nan")  # set past the constructor: the op says what is wrong
    with pytest.raises(RuntimeError, match=r"q8.linear: clamp_min must not be NaN"):
        m(torch.randn(2, 8))


@pytest.mark.parametrize("mode", MODES)
def test_fused_clamp_is_the_activation_after_the_layer(device, mode):
    """Int8Linear(clamp_min, clamp_max) == act(Int8Linear(...)) for ReLU / ReLU6 / Hardtanh, bit for bit."""
    lin, plain = make(mode, device=device)
    x = torch.randn(3, 5, 64, device=device) * 2
    for (lo, hi), act in [((0.0, None), F.relu), ((0.0, 6.0), F.relu6), ((-0.25, 0.25), lambda y: F.hardtanh(y, -0.25, 0.25))]:
        kw = dict(input_scale=plain.input_scale, input_zero_point=plain.input_zero_point) if mode == "static" else {}
        fused = Int8Linear.from_float(lin, mode, clamp_min=lo, clamp_max=hi, **kw)
        assert (fused.clamp_min, fused.clamp_max) == (lo, hi)
        assert_same(fused(x), act(plain(x)))
        assert_same(fused(x.half()), act(plain(x.half())))


def test_clamp_survives_copies_and_old_pickles(tmp_path):
    lin = nn.Linear(16, 8)
    m = Int8Linear.from_float(lin, clamp_min=0.0, clamp_max=6.0)
    x = torch.randn(4, 16) * 3
    y = m(x)
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert (clone.clamp_min, clone.clamp_max) == (0.0, 6.0)
        assert_same(clone(x), y)
    # A layer pickled by a q8 without the fused clamp (no clamp attributes) loads without one.
    old = Int8Linear.from_float(lin)
    state = old.__reduce_ex__(2)[2]
    del state["clamp_min"], state["clamp_max"]
    revived = Int8Linear.__new__(Int8Linear)
    revived.__setstate__(state)
    assert revived.clamp_min is None and revived.clamp_max is None
    assert_same(revived(x), old(x))
    # state_dicts hold tensors only: loading one keeps the receiving layer's clamp.
    fresh = Int8Linear(16, 8, clamp_min=0.0)
    fresh.load_state_dict(old.state_dict())
    assert_same(fresh(x), F.relu(old(x)))


def test_repr():
    _, m = make("weight_only", k=16, n=8)
    assert repr(m) == "Int8Linear(in_features=16, out_features=8, bias=True, activation='weight_only')"
    m.clamp_min = 0.0
    assert repr(m).endswith("activation='weight_only', clamp=(0.0, None))")
    assert "activation='static'" in repr(Int8Linear(3, 2, bias=False, activation="static"))
    assert "bias=False" in repr(Int8Linear(3, 2, bias=False))


def test_fresh_module_is_a_placeholder():
    m = Int8Linear(16, 8, activation="static")
    assert m.weight_int8.dtype == torch.int8 and not m.weight_int8.any()
    assert_same(m(torch.randn(3, 16)), torch.zeros(3, 8))


# ---------------------------------------------------------------------------- packed weight

def test_forward_reads_the_packed_weight_and_never_repacks():
    _, m = make("dynamic")
    packed = m._packed
    assert packed.dtype == torch.uint8 and packed.dim() == 1
    assert torch.equal(q8.unpack_weight(packed, 24, 64), m.weight_int8)
    x = torch.randn(4, 64)
    with OpRecorder() as rec:
        for _ in range(3):
            m(x)
    assert rec.ops.count("q8.linear") == 3, rec.ops
    assert "q8.pack_weight" not in rec.ops and "q8.quantize_weight" not in rec.ops, rec.ops
    assert m._packed is packed


def test_repack_after_in_place_change():
    _, m = make("weight_only")
    x = torch.randn(3, 64)
    with torch.no_grad():
        m.weight_int8.neg_()
    m.repack()
    assert torch.equal(unpacked(m), m.weight_int8)
    assert_matches_reference(m, x)


# ---------------------------------------------------------------------------- state_dict

@pytest.mark.parametrize("mode", MODES)
def test_state_dict_round_trip(tmp_path, device, mode):
    _, m = make(mode, device=device)
    sd = m.state_dict()
    expected = {"weight_int8", "weight_scale", "bias", "_q8_format"}
    if mode == "static":
        expected |= {"input_scale", "input_zero_point"}
    assert set(sd) == expected
    assert sd["_q8_format"].dtype == torch.int64 and sd["_q8_format"].item() == FORMAT_VERSION
    # The canonical form only: no packed (uint8) tensor, no byte more than int8 weights + float32 vectors.
    assert all(t.dtype != torch.uint8 for t in sd.values())
    assert sd["weight_int8"].dtype == torch.int8
    torch.save(sd, tmp_path / "sd.pt")
    loaded = torch.load(tmp_path / "sd.pt", weights_only=True)
    fresh = Int8Linear(64, 24, activation=mode, device=device)
    x = torch.randn(9, 64, device=device)
    assert not torch.equal(fresh(x), m(x))
    fresh.load_state_dict(loaded)
    assert_same(fresh(x), m(x))
    assert torch.equal(unpacked(fresh), m.weight_int8)


def test_state_dict_of_nested_model_has_prefixed_keys_and_round_trips():
    model = q8.quantize_dynamic(nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 4))))
    sd = model.state_dict()
    assert set(sd) == {f"{p}.{k}" for p in ("0", "2.0") for k in ("weight_int8", "weight_scale", "bias", "_q8_format")}
    other = nn.Sequential(Int8Linear(16, 8), nn.ReLU(), nn.Sequential(Int8Linear(8, 4)))
    other.load_state_dict(sd)
    x = torch.randn(5, 16)
    assert_same(other(x), model(x))


def test_meta_init_then_assign():
    _, m = make("dynamic")
    sd = m.state_dict()
    fresh = Int8Linear(64, 24, device="meta")
    assert fresh._packed.device.type == "meta"
    fresh.load_state_dict(sd, assign=True)
    x = torch.randn(3, 64)
    assert fresh.weight_int8.device.type == "cpu" and fresh._packed.device.type == "cpu"
    assert_same(fresh(x), m(x))


def _load_error(module, sd, **kw):
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(RuntimeError) as info:
        module.load_state_dict(sd, **kw)
    after = module.state_dict()
    for k, v in before.items():  # nothing of the layer was loaded
        assert torch.equal(after[k], v), k
    return str(info.value)


def test_state_dict_errors():
    _, m = make("dynamic", k=4, n=8)
    sd = m.state_dict()

    msg = _load_error(Int8Linear(5, 8), sd)
    assert "size mismatch for weight_int8: expected shape [8, 5]" in msg and "found shape [8, 4]" in msg, msg

    msg = _load_error(Int8Linear(4, 6), sd)
    assert "weight_int8: expected shape [6, 4]" in msg and "found shape [8, 4]" in msg, msg
    assert "weight_scale: expected shape [6]" in msg and "found shape [8]" in msg, msg
    assert "bias: expected shape [6]" in msg and "found shape [8]" in msg, msg

    bad = dict(sd, _q8_format=torch.tensor(FORMAT_VERSION + 1))
    with pytest.raises(RuntimeError, match=rf"_q8_format: .*reads state_dict format version {FORMAT_VERSION}, "
                                           rf"found {FORMAT_VERSION + 1}"):
        Int8Linear(4, 8).load_state_dict(bad)
    _load_error(Int8Linear(4, 8), bad)

    nested = {f"block.fc.{k}": v for k, v in sd.items()}
    nested["block.fc._q8_format"] = torch.tensor(7)
    model = nn.Module()
    model.block = nn.Module()
    model.block.fc = Int8Linear(4, 8)
    with pytest.raises(RuntimeError, match=r"block\.fc\._q8_format: .* found 7"):
        model.load_state_dict(nested)

    bad = dict(sd, weight_int8=sd["weight_int8"].float())
    msg = _load_error(Int8Linear(4, 8), bad)
    assert "weight_int8: expected dtype torch.int8, found torch.float32" in msg, msg
    bad = dict(sd, weight_scale=sd["weight_scale"].double())
    assert "weight_scale: expected dtype torch.float32, found torch.float64" in _load_error(Int8Linear(4, 8), bad)

    for key in ("weight_scale", "_q8_format"):
        bad = {k: v for k, v in sd.items() if k != key}
        with pytest.raises(RuntimeError, match=rf'Missing key\(s\) in state_dict: "{key}"'):
            Int8Linear(4, 8).load_state_dict(bad)
    # Non-strict loading tolerates a missing version key, as any missing key.
    fresh = Int8Linear(4, 8)
    result = fresh.load_state_dict({k: v for k, v in sd.items() if k != "_q8_format"}, strict=False)
    assert result.missing_keys == ["_q8_format"]
    x = torch.randn(2, 4)
    assert_same(fresh(x), m(x))

    # Bias / static qparams present or not: the usual strict key checks.
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: "bias"'):
        Int8Linear(4, 8, bias=False).load_state_dict(sd)
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "input_scale", "input_zero_point"'):
        Int8Linear(4, 8, activation="static").load_state_dict(sd)
    static_sd = Int8Linear(4, 8, activation="static").state_dict()
    bad = dict(static_sd, input_zero_point=torch.tensor([3], dtype=torch.int32))
    msg = _load_error(Int8Linear(4, 8, activation="static"), bad)
    assert "input_zero_point: expected shape []" in msg and "found shape [1]" in msg, msg


# ---------------------------------------------------------------------------- devices and dtypes

@pytest.mark.parametrize("mode", MODES)
def test_dtype_conversions_keep_the_canonical_dtypes(mode):
    _, m = make(mode)
    x = torch.randn(6, 64)
    expected = {dtype: m(x.to(dtype)) for dtype in DTYPES}
    dtypes = {k: v.dtype for k, v in m.state_dict().items()}
    for convert in (lambda mod: mod.half(), lambda mod: mod.to(torch.float64), lambda mod: mod.bfloat16(),
                    lambda mod: mod.float(), lambda mod: mod.double()):
        packed = m._packed
        assert convert(m) is m
        assert {k: v.dtype for k, v in m.state_dict().items()} == dtypes
        assert m._packed is not packed  # every _apply rebuilds the packed weight
        for dtype in DTYPES:
            assert_same(m(x.to(dtype)), expected[dtype])


def test_scale_not_rounded_through_half():
    _, m = make("weight_only")
    scale = m.weight_scale.clone()
    m.half().float()
    assert torch.equal(m.weight_scale, scale)  # not a float32 -> float16 -> float32 round trip


def test_to_device_repacks(device):
    _, m = make("dynamic")
    x = torch.randn(5, 64)
    y_cpu = m(x)
    packed = m._packed
    m.to(device)
    assert m._packed is not packed and m._packed.device.type == device
    assert m.weight_int8.device.type == device and m.weight_int8.dtype == torch.int8
    assert torch.equal(unpacked(m).cpu(), m.weight_int8.cpu())
    y = m(x.to(device))
    if device == "cpu":
        assert_same(y, y_cpu)
    else:
        torch.testing.assert_close(y.cpu(), y_cpu, rtol=1e-5, atol=1e-5)
    m.cpu()
    assert m._packed.device.type == "cpu"
    assert_same(m(x), y_cpu)
    # To the meta device and back: the packed weight follows (meta has no values).
    m.to("meta")
    assert m._packed.device.type == "meta" and m(x.to("meta")).shape == (5, 24)


# ---------------------------------------------------------------------------- copy and pickle

HOOK_CALLS = []


def count_call(module, inputs, output):  # a forward hook that pickle can save (by name)
    HOOK_CALLS.append(1)


@pytest.mark.parametrize("mode", MODES)
def test_deepcopy_and_pickle(tmp_path, mode):
    _, m = make(mode)
    calls = HOOK_CALLS
    m.register_forward_hook(count_call)
    x = torch.randn(4, 64)
    y = m(x)
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m)), copy.copy(m)):
        assert type(clone) is Int8Linear and clone.activation == mode
        assert clone._packed is not m._packed
        assert torch.equal(unpacked(clone), m.weight_int8)
        n = len(calls)
        assert_same(clone(x), y)
        assert len(calls) == n + 1  # hooks come along
    dc = copy.deepcopy(m)
    assert dc.weight_int8 is not m.weight_int8
    torch.save(m, tmp_path / "m.pt")
    assert_same(torch.load(tmp_path / "m.pt", weights_only=False)(x), y)
    # The pickle holds the canonical form, not the packed weight (at least as large as weight_int8).
    big = Int8Linear.from_float(nn.Linear(256, 256), mode, *((0.1, 3) if mode == "static" else ()))
    assert big._packed.numel() >= 256 * 256
    assert len(pickle.dumps(big)) < 256 * 256 + 2 * 256 * 4 + 8192


# ---------------------------------------------------------------------------- quantize_dynamic

class Block(nn.Module):
    def __init__(self, k, n):
        super().__init__()
        self.fc1 = nn.Linear(k, n)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(n, k)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(x)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(Block(16, 32), Block(16, 32))
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.heads = nn.ModuleDict({"a": nn.Linear(16, 4), "b": nn.Linear(16, 4, bias=False)})

    def forward(self, x):
        x = self.encoder(x)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return self.heads["a"](x) + self.heads["b"](x)


def linear_names(model, cls):
    return {name for name, mod in model.named_modules() if type(mod) is cls}


def test_quantize_dynamic_replaces_nested_linears():
    net = Net().eval()
    x = torch.randn(2, 5, 16)
    y_float = net(x).detach()
    out = q8.quantize_dynamic(net)
    assert out is net
    assert linear_names(net, Int8Linear) == {"encoder.0.fc1", "encoder.0.fc2", "encoder.1.fc1", "encoder.1.fc2",
                                             "heads.a", "heads.b", "attn.q_proj", "attn.k_proj", "attn.v_proj",
                                             "attn.out_proj"}
    assert linear_names(net, nn.Linear) == set()
    # MultiheadAttention (which reads its out_proj's weight directly) is replaced as a whole.
    assert type(net.attn) is q8.nn.Int8MultiheadAttention
    assert all(m.activation == "dynamic" for m in net.modules() if isinstance(m, Int8Linear))
    assert net.heads["b"].bias is None
    y = net(x)
    assert (y - y_float).abs().max() <= 0.05 * y_float.abs().max()


def test_quantize_dynamic_skip_and_modes():
    net = q8.quantize_dynamic(Net(), activation="weight_only", skip=["encoder.0", "heads.b"])
    attn = {"attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj"}  # nn.MultiheadAttention's, now int8
    assert linear_names(net, Int8Linear) == {"encoder.1.fc1", "encoder.1.fc2", "heads.a"} | attn
    assert linear_names(net, nn.Linear) == {"encoder.0.fc1", "encoder.0.fc2", "heads.b"}
    assert all(m.activation == "weight_only" for m in net.modules() if isinstance(m, Int8Linear))
    net(torch.randn(2, 3, 16))

    net = q8.quantize_dynamic(Net(), skip=("encoder.1.fc2",))
    assert linear_names(net, nn.Linear) == {"encoder.1.fc2"}
    assert len(linear_names(net, Int8Linear)) == 5 + len(attn)
    net = Net()
    assert q8.quantize_dynamic(net, skip="") is net and len(linear_names(net, nn.Linear)) == 6
    net = q8.quantize_dynamic(Net(), skip="heads.a")  # one name as a string, not its characters
    assert linear_names(net, nn.Linear) == {"heads.a"}

    with pytest.raises(ValueError, match=r"skip names \['encoder\.2', 'head'\] are not modules of the model"):
        q8.quantize_dynamic(Net(), skip=["head", "encoder.0", "encoder.2"])
    with pytest.raises(ValueError, match=r"activation='static' needs calibrated input_scale and input_zero_point"):
        q8.quantize_dynamic(Net(), activation="static")
    with pytest.raises(ValueError, match=r"activation must be 'dynamic' or 'weight_only', got 'int4'"):
        q8.quantize_dynamic(Net(), activation="int4")


def test_quantize_dynamic_shared_and_root_linear():
    shared = nn.Linear(8, 8)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    q8.quantize_dynamic(model)
    assert isinstance(model[0], Int8Linear) and model[0] is model[2]
    root = nn.Linear(8, 4)
    out = q8.quantize_dynamic(root)
    assert isinstance(out, Int8Linear) and out.in_features == 8 and out.out_features == 4
    assert type(root) is nn.Linear  # the float model itself is not changed


# ---------------------------------------------------------------------------- threads

@pytest.mark.parametrize("mode", MODES)
def test_forward_from_eight_threads(mode):
    _, m = make(mode, k=256, n=128)
    xs = [torch.randn(33, 256) * (i + 1) for i in range(8)]
    expected = [m(x) for x in xs]
    results = [[] for _ in xs]
    errors = []
    start = threading.Barrier(len(xs))

    def work(i):
        try:
            start.wait()
            for _ in range(10):
                results[i].append(m(xs[i]))
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, outs in enumerate(results):
        assert len(outs) == 10
        for y in outs:
            assert_same(y, expected[i])


# ---------------------------------------------------------------------------- TorchScript

class AllModes(nn.Module):
    """Every mode, a nested quantized model and a bfloat16 input, in one scriptable module."""

    def __init__(self, device="cpu"):
        super().__init__()
        s, z = calibrated(32, device)
        self.dynamic = Int8Linear.from_float(nn.Linear(32, 16, device=device))
        self.static = Int8Linear.from_float(nn.Linear(32, 16, bias=False, device=device), "static", s, z)
        self.weight_only = Int8Linear.from_float(nn.Linear(32, 16, device=device), "weight_only")
        self.seq = q8.quantize_dynamic(nn.Sequential(nn.Linear(32, 16), nn.ReLU6(), nn.Linear(16, 8)).to(device))
        assert self.seq[0].clamp_max == 6.0  # the fused ReLU6, in q8.linear's epilogue
        self.relu = Int8Linear.from_float(nn.Linear(32, 16, device=device), "static", s, z, clamp_min=0.0)

    def forward(self, x: torch.Tensor):
        return (self.dynamic(x), self.static(x), self.weight_only(x), self.seq(x),
                self.dynamic(x.to(torch.bfloat16)), self.relu(x))


def _scripted_all_modes(tmp_path, device):
    model = AllModes(device).eval()
    x = torch.randn(2, 7, 32, device=device) * 2
    eager = model(x)
    scripted = torch.jit.script(model)
    assert_same(scripted(x), eager)
    path = tmp_path / "model.ts"
    scripted.save(str(path))
    torch.save(x.cpu(), tmp_path / "x.pt")
    return model, x, eager, path


def test_torchscript_save_load_in_new_process(tmp_path, device):
    model, x, eager, path = _scripted_all_modes(tmp_path, device)
    loaded = torch.jit.load(str(path), map_location=device)
    assert_same(loaded(x), eager)
    # __setstate__ packed the weights again, identically.
    for name in ("dynamic", "static", "weight_only"):
        assert torch.equal(getattr(loaded, name)._packed, getattr(model, name)._packed)
    assert loaded.static.activation == "static" and loaded.static.bias is None
    assert (loaded.relu.clamp_min, loaded.relu.clamp_max) == (0.0, None) and loaded.static.clamp_min is None
    assert (getattr(loaded.seq, "0").clamp_min, getattr(loaded.seq, "0").clamp_max) == (0.0, 6.0)
    assert (eager[5] == 0).any() and (eager[5] >= 0).all()
    # The scripted layers' buffers are the canonical ones (TorchScript's state_dict has
    # no _q8_format key: that is added by the eager module's _save_to_state_dict).
    assert set(loaded.static.state_dict()) == {"weight_int8", "weight_scale", "input_scale", "input_zero_point"}
    assert set(loaded.dynamic.state_dict()) == {"weight_int8", "weight_scale", "bias"}
    torch.save([y.cpu() for y in eager], tmp_path / "expected.pt")
    out = _run_python(f"""
        import torch, q8
        m = torch.jit.load({str(path)!r}, map_location={device!r})
        x = torch.load({str(tmp_path / 'x.pt')!r}).to({device!r})
        expected = torch.load({str(tmp_path / 'expected.pt')!r})
        got = m(x)
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            torch.testing.assert_close(g.cpu(), e, rtol=0, atol=0)
        print("ok", m.dynamic._packed.dtype)
    """)
    assert out.split() == ["ok", "torch.uint8"]


def test_torchscript_setstate_checks_the_version():
    _, m = make("dynamic", k=8, n=4)
    state = m.__getstate__()
    assert state[0] == FORMAT_VERSION and state[1] is m.weight_int8
    assert not any(t is m._packed for t in state)
    bad = (FORMAT_VERSION + 1,) + tuple(state[1:])
    scripted = torch.jit.script(m)
    for mod in (m, scripted):
        with pytest.raises(Exception, match=rf"reads the TorchScript format version {FORMAT_VERSION} of Int8Linear, "
                                            rf"the file holds version {FORMAT_VERSION + 1}"):
            mod.__setstate__(bad)


def test_torchscript_file_holds_only_the_canonical_form(tmp_path):
    k = n = 512
    lin = nn.Linear(k, n)
    m = Int8Linear.from_float(lin)
    canonical = k * n + 2 * n * 4  # int8 weight, float32 scales and bias
    float_path, int8_path = tmp_path / "float.ts", tmp_path / "int8.ts"
    torch.jit.script(lin).save(str(float_path))
    torch.jit.script(m).save(str(int8_path))
    with zipfile.ZipFile(int8_path) as z:
        data = {i.filename: i.file_size for i in z.infolist() if "/data/" in i.filename}
    assert sorted(data.values()) == sorted([k * n, n * 4, n * 4]), data  # no packed copy
    size, float_size = os.path.getsize(int8_path), os.path.getsize(float_path)
    assert size < canonical + 16 * 1024, (size, canonical)
    assert size < 0.3 * float_size, (size, float_size)


def test_cpp_torchscript_round_trip(tmp_path):
    if not os.path.exists(JIT_RUN):
        pytest.skip(f"{JIT_RUN} is not built (cmake --build build/py --target q8_jit_run)")
    _, x, eager, path = _scripted_all_modes(tmp_path, "cpu")
    out_path = tmp_path / "out.pt"
    res = subprocess.run([JIT_RUN, str(path), str(tmp_path / "x.pt"), str(out_path)], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    got = torch.load(out_path)
    assert_same(tuple(got), eager)


# ---------------------------------------------------------------------------- torch.compile / torch.export

def _small_model(device):
    clamped = make("weight_only", 8, 8, device=device)[1]
    clamped.clamp_min, clamped.clamp_max = -0.5, 0.5  # a fused Hardtanh
    return nn.Sequential(make("dynamic", 16, 8, device=device)[1], nn.ReLU(), clamped,
                         make("static", 8, 4, device=device)[1]).eval()


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph(device, backend):
    torch._dynamo.reset()
    model = _small_model(device)
    x = torch.randn(5, 16, device=device)
    expected = model(x)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    assert_same(compiled(x), expected)
    assert_same(compiled(x * 2), model(x * 2))


def test_export(device):
    model = _small_model(device)
    x = torch.randn(5, 16, device=device)
    ep = torch.export.export(model, (x,))
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.q8.linear.default) == 3, targets
    assert torch.ops.q8.pack_weight.default not in targets
    assert_same(ep.module()(x), model(x))
    x2 = torch.randn(5, 16, device=device)
    assert_same(ep.module()(x2), model(x2))
