"""q8.nn recurrent layers (Int8LSTM / Int8GRU / Int8RNN and cells) against torch.nn's float layers.

Two references:

* **exact machinery**: ``activation="weight_only"`` keeps the inputs in float, so the
  q8 layer must equal the float layer whose weights are the *dequantized* int8 weights
  (``weight_int8 * scale``) up to float32 rounding (different GEMM summation order):
  ``atol=2e-5``. This checks every option (layers, directions, batch_first, proj_size,
  packed sequences, states, dtypes) without quantization error in the way.
* **quantization error**: ``activation="dynamic"`` against the original float layer.
  Each weight row is rounded to 1/254 of its max-abs and each matmul input row to 1/255
  of its range, so one pre-activation moves by about ``(1/254 + 1/255) * sqrt(K) * |w| * |x|``
  (independent rounding errors). With PyTorch's default init (``|w| < 1/sqrt(H)``),
  ``|x| <= 1`` (tanh range) and ``K <= 48`` here, that is below 2e-3 a step, and the
  gates (Lipschitz <= 1) keep it in the same order over a few steps: ``atol=2e-2`` holds
  with a margin; the test also asserts q8 is at least as close as torch.ao's dynamic LSTM/GRU.
"""
import copy
import io
import os
import pickle
import subprocess
import sys
import textwrap
import warnings
from typing import Optional, Tuple

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import q8  # noqa: F401  (loads the ops)
from q8.nn import Int8GRU, Int8GRUCell, Int8LSTM, Int8LSTMCell, Int8RNN, Int8RNNCell, RNN_FORMAT_VERSION

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
warnings.filterwarnings("ignore", message="LSTM with projections is not supported with oneDNN")

I, H = 12, 16
LAYERS = {
    "lstm": (nn.LSTM, Int8LSTM),
    "gru": (nn.GRU, Int8GRU),
    "rnn_tanh": (nn.RNN, Int8RNN),
    "rnn_relu": (nn.RNN, Int8RNN),
}
CELLS = {
    "lstm": (nn.LSTMCell, Int8LSTMCell),
    "gru": (nn.GRUCell, Int8GRUCell),
    "rnn_tanh": (nn.RNNCell, Int8RNNCell),
    "rnn_relu": (nn.RNNCell, Int8RNNCell),
}
OPTIONS = [
    dict(),
    dict(num_layers=2),
    dict(bidirectional=True),
    dict(num_layers=2, bidirectional=True, batch_first=True),
    dict(bias=False),
    dict(num_layers=3, batch_first=True),
]


def make_float(kind, **kw):
    cls = LAYERS[kind][0]
    if kind == "rnn_relu":
        kw["nonlinearity"] = "relu"
    return cls(I, H, **kw).eval()


def dequantized_copy(f, q):
    """The float layer with q's dequantized int8 weights (what weight_only computes exactly)."""
    g = copy.deepcopy(f)
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.startswith("weight"):
                p.copy_(getattr(q, name + "_int8").float() * getattr(q, name + "_scale")[:, None])
    return g


def states(kind, f, batch, dtype=torch.float32, unbatched=False):
    d = 2 if f.bidirectional else 1
    real_h = getattr(f, "proj_size", 0) or f.hidden_size
    shape = (f.num_layers * d, real_h) if unbatched else (f.num_layers * d, batch, real_h)
    h = torch.randn(shape, dtype=dtype) * 0.5
    if kind == "lstm":
        cshape = shape[:-1] + (f.hidden_size,)
        return h, torch.randn(cshape, dtype=dtype) * 0.5
    return h


def flat(out):
    if isinstance(out, PackedSequence):
        return [out.data]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in flat(o)]
    return [out]


def assert_close_all(a, b, atol, rtol=0.0):
    fa, fb = flat(a), flat(b)
    assert len(fa) == len(fb)
    for u, v in zip(fa, fb):
        assert u.shape == v.shape and u.dtype == v.dtype
        torch.testing.assert_close(u, v, atol=atol, rtol=rtol)


def max_err(a, b):
    return max((u.double() - v.double()).abs().max().item() for u, v in zip(flat(a), flat(b)))


# ----------------------------------------------------------------------------------- layers vs float


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
@pytest.mark.parametrize("kind", list(LAYERS))
def test_weight_only_matches_float_with_dequantized_weights(kind, opts):
    f = make_float(kind, **opts)
    q = LAYERS[kind][1].from_float(f, activation="weight_only")
    g = dequantized_copy(f, q)
    x = torch.randn((3, 5, I) if opts.get("batch_first") else (5, 3, I))
    assert_close_all(q(x), g(x), atol=2e-5)
    hx = states(kind, f, 3)
    assert_close_all(q(x, hx), g(x, hx), atol=2e-5)


@pytest.mark.parametrize("opts", OPTIONS[:4], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
@pytest.mark.parametrize("kind", list(LAYERS))
def test_dynamic_close_to_float(kind, opts):
    f = make_float(kind, **opts)
    q = LAYERS[kind][1].from_float(f)
    x = torch.randn((4, 6, I) if opts.get("batch_first") else (6, 4, I))
    hx = states(kind, f, 4)
    for args in ((x,), (x, hx)):
        out_q, out_f = q(*args), f(*args)
        assert_close_all(out_q, out_f, atol=2e-2)
        # Not the float layer itself: the int8 error is visible.
        assert max_err(out_q, out_f) > 0


def test_lstm_proj_size():
    for opts in (dict(proj_size=5), dict(proj_size=5, num_layers=2, bidirectional=True, batch_first=True)):
        f = nn.LSTM(I, H, **opts).eval()
        q = Int8LSTM.from_float(f, activation="weight_only")
        assert q.weight_hr_l0_int8.shape == (5, H) and q.weight_hh_l0_int8.shape == (4 * H, 5)
        g = dequantized_copy(f, q)
        x = torch.randn(3, 4, I)
        hx = (torch.randn(f.num_layers * (2 if f.bidirectional else 1), 3 if opts.get("batch_first") else 4, 5),
              torch.randn(f.num_layers * (2 if f.bidirectional else 1), 3 if opts.get("batch_first") else 4, H))
        assert_close_all(q(x), g(x), atol=2e-5)
        assert_close_all(q(x, hx), g(x, hx), atol=2e-5)
        assert_close_all(Int8LSTM.from_float(f)(x, hx), f(x, hx), atol=2e-2)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_unbatched_input(kind):
    f = make_float(kind, num_layers=2, bidirectional=True)
    q = LAYERS[kind][1].from_float(f, activation="weight_only")
    g = dequantized_copy(f, q)
    x = torch.randn(5, I)
    hx = states(kind, f, None, unbatched=True)
    for args in ((x,), (x, hx)):
        out_q, out_g = q(*args), g(*args)
        assert out_q[0].shape == (5, 2 * H)
        assert_close_all(out_q, out_g, atol=2e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_other_dtypes(kind, dtype):
    f = make_float(kind, num_layers=2).to(dtype)  # the float layer of that dtype
    q = LAYERS[kind][1].from_float(f, activation="weight_only")
    # The buffers stay int8 / float32 whatever the float layer's dtype.
    assert q.weight_ih_l0_int8.dtype == torch.int8 and q.bias_ih_l0.dtype == torch.float32
    g = dequantized_copy(copy.deepcopy(f).float(), q)  # float32, same (rounded) biases
    x = torch.randn(4, 3, I).to(dtype)
    hx = states(kind, f, 3, dtype=dtype)
    out = q(x, hx)
    assert all(t.dtype == dtype for t in flat(out))
    # q8 computes in float32: equal to the float32 layer on the same inputs, up to the
    # rounding of the outputs to dtype (|out| <= ~1, so half an eps).
    ref = g(x.float(), tuple(t.float() for t in hx) if isinstance(hx, tuple) else hx.float())
    eps = torch.finfo(dtype).eps
    assert_close_all([t.float() for t in flat(out)], ref, atol=max(2e-5, eps))
    # The float layer of that dtype (CPU runs all four) is close: int8 error + its own rounding.
    q_dyn = LAYERS[kind][1].from_float(f)
    assert max_err(q_dyn(x, hx), f(x, hx)) < 2e-2 + 20 * eps


def test_module_dtype_conversions_keep_buffers():
    q = Int8LSTM.from_float(nn.LSTM(I, H))
    q.half()
    assert q.weight_ih_l0_int8.dtype == torch.int8 and q.weight_ih_l0_scale.dtype == torch.float32
    y, _ = q(torch.randn(3, 2, I, dtype=torch.half))
    assert y.dtype == torch.half


# ----------------------------------------------------------------------------------- packed sequences


@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_packed_matches_float_and_padded(kind, enforce_sorted):
    f = make_float(kind, num_layers=2, bidirectional=True)
    q = LAYERS[kind][1].from_float(f, activation="weight_only")
    g = dequantized_copy(f, q)
    lengths = torch.tensor([6, 5, 3, 1]) if enforce_sorted else torch.tensor([3, 6, 1, 5])
    x = torch.randn(6, 4, I)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    hx = states(kind, f, 4)
    for args in ((packed,), (packed, hx)):
        out_q, out_g = q(*args), g(*args)
        assert isinstance(out_q[0], PackedSequence)
        assert torch.equal(out_q[0].batch_sizes, packed.batch_sizes)
        assert_close_all(out_q, out_g, atol=2e-5)
    # Packed == padded, sequence by sequence (forward direction only: the reverse
    # direction of a padded batch starts at the padding).
    f1 = make_float(kind, num_layers=2)
    q1 = LAYERS[kind][1].from_float(f1)
    out_p, h_p = q1(packed, hx[:2] if not isinstance(hx, tuple) else tuple(t[:2] for t in hx))
    padded, _ = pad_packed_sequence(out_p)
    for b, n in enumerate(lengths.tolist()):
        single = q1(x[:n, b:b + 1], hx[:2, b:b + 1] if not isinstance(hx, tuple) else
                    tuple(t[:2, b:b + 1] for t in hx))
        torch.testing.assert_close(padded[:n, b], single[0][:, 0], atol=1e-6, rtol=0)
        hp = h_p[0] if isinstance(h_p, tuple) else h_p
        hs = single[1][0] if isinstance(single[1], tuple) else single[1]
        torch.testing.assert_close(hp[:, b], hs[:, 0], atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------- vs torch.ao


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_at_least_as_close_as_torch_ao(kind):
    torch.manual_seed(1)
    f = make_float(kind, num_layers=2)
    f_cls = LAYERS[kind][0]

    class Wrap(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ao = torch.ao.quantization.quantize_dynamic(Wrap(copy.deepcopy(f)), {f_cls}, dtype=torch.qint8)
    q = LAYERS[kind][1].from_float(f)
    errs_q, errs_ao = [], []
    for _ in range(4):
        x = torch.randn(8, 4, I)
        ref = f(x)
        errs_q.append(max_err(q(x), ref))
        errs_ao.append(max_err(ao(x), ref))
    assert sum(errs_q) <= sum(errs_ao), (errs_q, errs_ao)


# ----------------------------------------------------------------------------------- cells


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", list(CELLS))
def test_cells(kind, bias):
    f_cls, q_cls = CELLS[kind]
    kw = {"nonlinearity": "relu"} if kind == "rnn_relu" else {}
    f = f_cls(I, H, bias=bias, **kw)
    qw = q_cls.from_float(f, activation="weight_only")
    g = dequantized_copy(f, qw)
    q = q_cls.from_float(f)
    x = torch.randn(3, I)
    h = torch.randn(3, H)
    hx = (h, torch.randn(3, H)) if kind == "lstm" else h
    for args in ((x,), (x, hx), (x[0], hx[0] if kind != "lstm" else (h[0], hx[1][0]))):
        assert_close_all(qw(*args), g(*args), atol=2e-5)
        assert_close_all(q(*args), f(*args), atol=2e-2)
    assert "weight_ih_int8" in q.state_dict() and "weight_hh_scale" in q.state_dict()


def test_cell_bad_input():
    q = Int8LSTMCell.from_float(nn.LSTMCell(I, H))
    with pytest.raises(RuntimeError, match="inconsistent input_size"):
        q(torch.randn(3, I + 1))
    with pytest.raises(RuntimeError, match="doesn't match hidden0 batch size"):
        q(torch.randn(3, I), (torch.randn(2, H), torch.randn(2, H)))
    with pytest.raises(RuntimeError, match="hidden1 has inconsistent hidden_size"):
        q(torch.randn(3, I), (torch.randn(3, H), torch.randn(3, H + 1)))
    with pytest.raises(ValueError, match="Expected input to be 1D or 2D"):
        q(torch.randn(2, 3, I))


# ----------------------------------------------------------------------------------- training / dropout


def test_dropout_between_layers_in_training():
    f = nn.LSTM(I, H, num_layers=2, dropout=0.5)
    q = Int8LSTM.from_float(f, activation="weight_only")
    g = dequantized_copy(f, q)
    assert q.training and q.dropout == 0.5
    x = torch.randn(5, 3, I)
    torch.manual_seed(3)
    a = q(x)
    torch.manual_seed(3)
    b = q(x)
    assert_close_all(a, b, atol=0)  # same seed, same mask
    c = q(x)
    assert max_err(a, c) > 1e-3  # another mask
    # Eval: no dropout, equal to the float layer.
    q.eval()
    g.eval()
    assert_close_all(q(x), g(x), atol=2e-5)
    # One layer: dropout never applies (as in PyTorch, only between layers).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f1 = nn.LSTM(I, H, num_layers=1, dropout=0.5)
    q1 = Int8LSTM.from_float(f1, activation="weight_only")
    assert_close_all(q1(x), dequantized_copy(f1, q1)(x), atol=2e-5)


# ----------------------------------------------------------------------------------- conversion errors


def test_from_float_errors():
    with pytest.raises(TypeError, match="expected a torch.nn.LSTM, got GRU"):
        Int8LSTM.from_float(nn.GRU(I, H))
    with pytest.raises(TypeError, match="expected a torch.nn.GRUCell"):
        Int8GRUCell.from_float(nn.Linear(I, H))
    with pytest.raises(NotImplementedError, match="static"):
        Int8LSTM.from_float(nn.LSTM(I, H), activation="static")
    with pytest.raises(NotImplementedError, match="static"):
        Int8GRUCell.from_float(nn.GRUCell(I, H), activation="static", input_scale=0.1, input_zero_point=3)
    with pytest.raises(ValueError, match="only used with activation='static'"):
        Int8RNN.from_float(nn.RNN(I, H), input_scale=0.1)
    with pytest.raises(ValueError, match="activation must be"):
        Int8GRU.from_float(nn.GRU(I, H), activation="int4")

    class Custom(nn.LSTM):
        def forward(self, x, hx=None):
            return super().forward(x * 2, hx)

    with pytest.raises(NotImplementedError, match="overrides LSTM.forward"):
        Int8LSTM.from_float(Custom(I, H))
    f = nn.GRU(I, H)
    with torch.no_grad():
        f.weight_hh_l0[0, 0] = float("nan")
    with pytest.raises(NotImplementedError, match="NaN or Inf"):
        Int8GRU.from_float(f)


# ----------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kind", list(LAYERS))
def test_bad_input_same_errors_as_float(kind):
    f = make_float(kind, num_layers=2)
    q = LAYERS[kind][1].from_float(f)
    x = torch.randn(5, 3, I)
    bad_cases = [(torch.randn(5, 3, I + 1),), (torch.randn(2, 5, 3, I),)]
    if kind == "lstm":
        bad_cases += [(x, (torch.randn(2, 4, H), torch.randn(2, 3, H))),
                      (x, (torch.randn(2, 3, H), torch.randn(1, 3, H))),
                      (x, (torch.randn(3, H), torch.randn(3, H)))]
    else:
        bad_cases += [(x, torch.randn(2, 4, H)), (x, torch.randn(2, 3, H + 1)), (x, torch.randn(3, H))]
    for args in bad_cases:
        with pytest.raises((RuntimeError, ValueError)) as ef:
            f(*args)
        with pytest.raises(type(ef.value)) as eq:
            q(*args)
        # The same message as the float layer, up to how the expected shape is written.
        norm = lambda s: s.replace("[", "(").replace("]", ")")  # noqa: E731
        assert norm(str(eq.value)) == norm(str(ef.value)), (str(eq.value), str(ef.value))


def test_bad_dtypes():
    q = Int8GRU.from_float(nn.GRU(I, H))
    with pytest.raises(ValueError, match="floating-point"):
        q(torch.zeros(3, 2, I, dtype=torch.int64))
    with pytest.raises(ValueError, match="input's dtype"):
        q(torch.randn(3, 2, I), torch.randn(1, 2, H, dtype=torch.float64))


# ----------------------------------------------------------------------------------- state_dict


def test_state_dict_round_trip_and_names():
    f = nn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=4)
    q = Int8LSTM.from_float(f)
    sd = q.state_dict()
    float_weights = [n for n, _ in f.named_parameters() if n.startswith("weight")]
    expected = ({n + s for n in float_weights for s in ("_int8", "_scale")}
                | {n for n, _ in f.named_parameters() if n.startswith("bias")} | {"_q8_format"})
    assert set(sd) == expected
    assert int(sd["_q8_format"]) == RNN_FORMAT_VERSION
    q2 = Int8LSTM(I, H, num_layers=2, bidirectional=True, proj_size=4)
    x = torch.randn(4, 2, I)
    q2.load_state_dict(sd)
    assert_close_all(q2(x), q(x), atol=0)
    # Through a file, and a plain dict copy.
    buf = io.BytesIO()
    torch.save(dict(sd), buf)
    buf.seek(0)
    q3 = Int8LSTM(I, H, num_layers=2, bidirectional=True, proj_size=4)
    q3.load_state_dict(torch.load(buf))
    assert_close_all(q3(x), q(x), atol=0)


def test_state_dict_errors():
    q = Int8GRU.from_float(nn.GRU(I, H))
    sd = q.state_dict()
    fresh = Int8GRU(I, H)
    bad = dict(sd, _q8_format=torch.tensor(RNN_FORMAT_VERSION + 1))
    with pytest.raises(RuntimeError, match="format version"):
        fresh.load_state_dict(bad)
    bad = dict(sd, weight_ih_l0_int8=sd["weight_ih_l0_int8"].float())
    with pytest.raises(RuntimeError, match="expected dtype torch.int8"):
        fresh.load_state_dict(bad)
    with pytest.raises(RuntimeError, match="size mismatch for weight_hh_l0_scale"):
        fresh.load_state_dict(dict(sd, weight_hh_l0_scale=torch.ones(5)))
    # Nothing was loaded by the failed attempts.
    assert torch.count_nonzero(fresh.weight_ih_l0_int8) == 0
    missing = dict(sd)
    del missing["_q8_format"]
    with pytest.raises(RuntimeError, match="Missing key.*_q8_format"):
        fresh.load_state_dict(missing)
    # A float GRU's state_dict is not an Int8GRU's.
    with pytest.raises(RuntimeError, match="weight_ih_l0_int8"):
        fresh.load_state_dict(nn.GRU(I, H).state_dict())


def test_pickle_deepcopy_and_to():
    q = Int8LSTM.from_float(nn.LSTM(I, H, num_layers=2))
    x = torch.randn(4, 2, I)
    ref = q(x)
    for other in (copy.deepcopy(q), pickle.loads(pickle.dumps(q)), copy.deepcopy(q).to("cpu").double()):
        assert_close_all(other(x), ref, atol=0)
        assert other._packed.canonical[0] is other.weight_ih_l0_int8
    # No packed copy in the pickle beyond the canonical bytes.
    size = len(pickle.dumps(q))
    canonical = sum(t.numel() * t.element_size() for t in q.state_dict().values())
    assert size < canonical + 20_000


def test_in_place_change_and_repack():
    q = Int8RNN.from_float(nn.RNN(I, H))
    x = torch.randn(3, 2, I)
    y = q(x)[0]
    with torch.no_grad():
        q.weight_ih_l0_int8.neg_()
    q.repack()
    assert max_err(q(x)[0], y) > 1e-3


# ----------------------------------------------------------------------------------- TorchScript / compile / export


class Wrap(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x: Tensor):
        return self.m(x)


class WrapPacked(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x: PackedSequence):
        return self.m(x)


class WrapLSTMState(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None):
        return self.m(x, hx)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_torchscript(kind, tmp_path):
    f = make_float(kind, num_layers=2, bidirectional=True)
    q = LAYERS[kind][1].from_float(f)
    x = torch.randn(5, 3, I)
    packed = pack_padded_sequence(x, torch.tensor([2, 5, 4]), enforce_sorted=False)
    s = torch.jit.script(Wrap(q))
    assert_close_all(s(x), q(x), atol=0)
    sp = torch.jit.script(WrapPacked(q))
    out_s, h_s = sp(packed)  # TorchScript returns the PackedSequence as a plain tuple
    out_q, h_q = q(packed)
    assert_close_all((PackedSequence(*out_s), h_s), (out_q, h_q), atol=0)
    path = tmp_path / "m.pt"
    s.save(str(path))
    loaded = torch.jit.load(str(path))
    assert_close_all(loaded(x), q(x), atol=0)
    # The file holds the canonical weights once (shared with the buffers), no packed copy.
    canonical = sum(t.numel() * t.element_size() for t in q.state_dict().values())
    assert os.path.getsize(path) < canonical + 40_000


def test_torchscript_save_load_in_new_process(tmp_path):
    q = Int8LSTM.from_float(nn.LSTM(I, H, num_layers=2, proj_size=6, bidirectional=True))
    s = torch.jit.script(WrapLSTMState(q))
    x = torch.randn(4, 2, I)
    hx = (torch.randn(4, 2, 6), torch.randn(4, 2, H))
    path = tmp_path / "m.pt"
    s.save(str(path))
    torch.save((x, hx, q(x, hx)), tmp_path / "io.pt")
    code = f"""
        import torch, q8
        m = torch.jit.load({str(path)!r})
        x, hx, expected = torch.load({str(tmp_path / 'io.pt')!r})
        got = m(x, hx)
        torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
        torch.testing.assert_close(got[1][0], expected[1][0], rtol=0, atol=0)
        torch.testing.assert_close(got[1][1], expected[1][1], rtol=0, atol=0)
        print("ok")
    """
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         env=dict(os.environ), cwd=ROOT, timeout=300)
    assert res.returncode == 0 and res.stdout.split() == ["ok"], res.stdout + res.stderr


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_torchscript_cells(kind):
    f_cls, q_cls = CELLS[kind]
    q = q_cls.from_float(f_cls(I, H))
    s = torch.jit.script(q)
    x = torch.randn(3, I)
    assert_close_all(s(x), q(x), atol=0)
    buf = io.BytesIO()
    torch.jit.save(s, buf)
    buf.seek(0)
    assert_close_all(torch.jit.load(buf)(x), q(x), atol=0)


def test_torch_compile():
    q = Int8GRU.from_float(nn.GRU(I, H, num_layers=2, batch_first=True))
    x = torch.randn(2, 4, I)
    c = torch.compile(q, backend="eager", fullgraph=True)
    assert_close_all(c(x), q(x), atol=0)
    lstm = Int8LSTM.from_float(nn.LSTM(I, H))
    c2 = torch.compile(lstm, backend="eager", fullgraph=True)
    assert_close_all(c2(x), lstm(x), atol=0)


def test_torch_export(tmp_path):
    f = nn.LSTM(I, H, num_layers=2)
    q = Int8LSTM.from_float(f)
    x = torch.randn(4, 2, I)
    ep = torch.export.export(Wrap(q), (x,))
    assert_close_all(ep.module()(x), q(x), atol=0)
    path = tmp_path / "m.pt2"
    torch.export.save(ep, str(path))
    loaded = torch.export.load(str(path))
    assert_close_all(loaded.module()(x), q(x), atol=0)
