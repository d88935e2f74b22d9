"""The converter registry, the conversion report, and nn.MultiheadAttention / transformer layers in int8.

Tolerances. ``weight_only`` projections compute with the dequantized weights in float,
so an ``nn.MultiheadAttention`` given those same dequantized weights is an exact
reference up to float rounding (1e-5). ``dynamic`` projections add per-row uint8
activation quantization (relative step 1/255 of the row range) on top of per-channel
int8 weights (1/254 of the row range): on Gaussian data the output's relative error
is about 0.5-1 %; the bound is 3 %. A converted QAT / calibrated model computes what
the fake-quantized model computed, with the same codes: 1e-3 covers float rounding
and rare one-step flips at rounding ties.
"""
import copy
import io
import logging
import pickle
import warnings

import pytest
import torch
from torch import nn

import q8
from q8.nn import Int8Linear, Int8MultiheadAttention, QATMultiheadAttention


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


def dequantized(lin: Int8Linear) -> torch.Tensor:
    return lin.weight_int8.float() * lin.weight_scale[:, None]


def float_twin(mha: nn.MultiheadAttention, q: Int8MultiheadAttention) -> nn.MultiheadAttention:
    """``mha`` with the dequantized weights of ``q``: the exact reference of a weight_only ``q``."""
    ref = copy.deepcopy(mha)
    with torch.no_grad():
        if ref._qkv_same_embed_dim:
            ref.in_proj_weight.copy_(torch.cat([dequantized(q.q_proj), dequantized(q.k_proj), dequantized(q.v_proj)]))
        else:
            ref.q_proj_weight.copy_(dequantized(q.q_proj))
            ref.k_proj_weight.copy_(dequantized(q.k_proj))
            ref.v_proj_weight.copy_(dequantized(q.v_proj))
        ref.out_proj.weight.copy_(dequantized(q.out_proj))
    return ref


E, H, L, S, N = 32, 4, 5, 7, 3


def make_inputs(mha, batched=True, self_attn=False):
    shape_q = (N, L, E) if mha.batch_first else (L, N, E)
    shape_k = (N, S, mha.kdim) if mha.batch_first else (S, N, mha.kdim)
    shape_v = (N, S, mha.vdim) if mha.batch_first else (S, N, mha.vdim)
    if not batched:
        shape_q, shape_k, shape_v = (L, E), (S, mha.kdim), (S, mha.vdim)
    q = torch.randn(shape_q)
    if self_attn:
        return q, q, q
    return q, torch.randn(shape_k), torch.randn(shape_v)


MHA_OPTIONS = [
    dict(),
    dict(batch_first=True),
    dict(bias=False),
    dict(kdim=12, vdim=20),
    dict(add_bias_kv=True),
    dict(add_zero_attn=True),
    dict(add_bias_kv=True, add_zero_attn=True, batch_first=True),
]

MASKS = ["none", "bool_attn", "float_attn", "bool_kpm", "float_kpm", "3d_attn", "both"]


def masks(kind, batched, src_len=S):
    bsz = N if batched else 1
    attn_mask = kpm = None
    if kind in ("bool_attn", "both"):
        attn_mask = torch.rand(L, src_len) < 0.3
        attn_mask[:, 0] = False  # no fully masked row (NaN in torch too)
    if kind == "float_attn":
        attn_mask = torch.randn(L, src_len)
    if kind == "3d_attn":
        attn_mask = torch.randn(bsz * H, L, src_len) if batched else torch.randn(H, L, src_len)
    if kind in ("bool_kpm", "both"):
        kpm = torch.zeros(bsz, src_len, dtype=torch.bool)
        kpm[:, -2:] = True
    if kind == "float_kpm":
        kpm = torch.zeros(bsz, src_len)
        kpm[:, -2:] = float("-inf")
    if kpm is not None and not batched:
        kpm = kpm[0]
    return attn_mask, kpm


@pytest.mark.parametrize("options", MHA_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
@pytest.mark.parametrize("mask", MASKS)
def test_mha_matches_float(options, mask):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, **options).eval()
    quantized = {a: Int8MultiheadAttention.from_float(mha, a) for a in ("weight_only", "dynamic")}
    refs = {"weight_only": float_twin(mha, quantized["weight_only"]), "dynamic": mha}
    for batched in (True, False):
        query, key, value = make_inputs(mha, batched)
        attn_mask, kpm = masks(mask, batched)
        for need_weights, average in ((False, True), (True, True), (True, False)):
            kwargs = dict(attn_mask=attn_mask, key_padding_mask=kpm, need_weights=need_weights,
                          average_attn_weights=average)
            for activation in ("weight_only", "dynamic"):
                q, ref = quantized[activation], refs[activation]
                with torch.no_grad():
                    out, w = q(query, key, value, **kwargs)
                    out_ref, w_ref = ref(query, key, value, **kwargs)
                assert out.shape == out_ref.shape and out.dtype == out_ref.dtype
                bound = 1e-5 if activation == "weight_only" else 0.03
                assert rel(out, out_ref) < bound, (batched, need_weights, activation)
                if need_weights:
                    assert w.shape == w_ref.shape
                    assert (w - w_ref).abs().max() < (1e-5 if activation == "weight_only" else 0.02)
                else:
                    assert w is None and w_ref is None


def test_mha_is_causal_self_attention_and_errors():
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(E, H, batch_first=True).eval()
    q = Int8MultiheadAttention.from_float(mha, "weight_only")
    ref = float_twin(mha, q)
    x = torch.randn(N, L, E)
    causal = nn.Transformer.generate_square_subsequent_mask(L)
    for need_weights in (False, True):
        for kpm in (None, torch.tensor([[False] * (L - 1) + [True]] * N)):
            out, _ = q(x, x, x, attn_mask=causal, is_causal=True, need_weights=need_weights, key_padding_mask=kpm)
            out_ref, _ = ref(x, x, x, attn_mask=causal, is_causal=True, need_weights=need_weights,
                             key_padding_mask=kpm)
            assert rel(out, out_ref) < 1e-5
    with pytest.raises(RuntimeError, match="need attn_mask if specifying the is_causal hint"):
        q(x, x, x, is_causal=True)
    with pytest.raises(ValueError, match=r"a 2-D attn_mask must have shape \(5, 5\)"):
        q(x, x, x, attn_mask=torch.zeros(4, 5))
    with pytest.raises(ValueError, match="query's embedding size must be embed_dim=32"):
        q(x[..., :16], x, x)
    with pytest.raises(ValueError, match="activation must be 'dynamic' or 'weight_only'"):
        Int8MultiheadAttention.from_float(mha, "static")


def test_mha_train_mode_dropout_and_grad():
    torch.manual_seed(2)
    mha = nn.MultiheadAttention(E, H, dropout=0.5, batch_first=True)
    q = Int8MultiheadAttention.from_float(mha, "weight_only")
    x = torch.randn(N, L, E)
    q.eval()
    base = q(x, x, x)[0]
    q.train()
    for need_weights in (True, False):
        out, w = q(x, x, x, need_weights=need_weights)
        assert out.shape == base.shape and torch.isfinite(out).all()
        assert not torch.allclose(out, base)  # dropout on the attention weights is active
    q.train(False)
    assert torch.equal(q(x, x, x)[0], base)


def test_mha_static_through_prepare_calibrate_convert():
    torch.manual_seed(3)
    model = nn.Sequential()
    model.attn = nn.MultiheadAttention(E, H, batch_first=True, kdim=12, vdim=20)
    model.eval()
    mha = model.attn
    data = [make_inputs(mha) for _ in range(4)]
    prepared = q8.prepare(copy.deepcopy(model))
    assert type(prepared.attn) is QATMultiheadAttention
    for x in data:
        with torch.no_grad():
            prepared.attn(*x)
    q8.freeze_observers(prepared)
    q8.enable_fake_quant(prepared, True)
    with torch.no_grad():
        fake = prepared.attn(*data[0], need_weights=False)[0]
    converted = q8.convert(prepared)
    assert type(converted.attn) is Int8MultiheadAttention
    assert {converted.attn.q_proj.activation, converted.attn.out_proj.activation} == {"static"}
    with torch.no_grad():
        out = converted.attn(*data[0], need_weights=False)[0]
        out_float = mha(*data[0], need_weights=False)[0]
    assert rel(out, fake) < 1e-3
    assert rel(out, out_float) < 0.03
    report = q8.conversion_report(converted)
    assert [(e.name, e.from_type, e.to_type) for e in report.converted] == [
        ("attn", "QATMultiheadAttention", "Int8MultiheadAttention")]


def test_mha_qat_trains_and_shares_out_proj():
    torch.manual_seed(4)
    mha = nn.MultiheadAttention(E, H, batch_first=True)
    model = nn.Sequential()
    model.attn = mha
    out_weight = mha.out_proj.weight
    q8.prepare_qat(model)
    assert type(model.attn) is QATMultiheadAttention and model.attn.out_proj.weight is out_weight
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(N, L, E)
    before = model.attn.q_proj.weight.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        model.attn(x, x, x)[0].pow(2).mean().backward()
        opt.step()
    assert not torch.equal(before, model.attn.q_proj.weight)
    model.eval()
    q8.convert(model)
    assert isinstance(model.attn.q_proj, Int8Linear) and model.attn.q_proj.activation == "static"
    assert torch.isfinite(model.attn(x, x, x)[0]).all()


def test_mha_torchscript():
    torch.manual_seed(5)
    mha = nn.MultiheadAttention(E, H, add_bias_kv=True).eval()
    q = Int8MultiheadAttention.from_float(mha, "dynamic")
    query, key, value = make_inputs(mha)
    attn_mask, kpm = masks("both", True, S + 1)
    scripted = torch.jit.script(q)
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    for need_weights in (False, True):
        expected = q(query, key, value, kpm[:, :S], need_weights, attn_mask[:, :S])
        got = loaded(query, key, value, kpm[:, :S], need_weights, attn_mask[:, :S])
        assert torch.allclose(got[0], expected[0], atol=1e-6)


# ---------------------------------------------------------------------------------------------- transformer layers


def encoder(norm_first=False):
    layer = nn.TransformerEncoderLayer(E, H, 64, dropout=0.1, batch_first=True, norm_first=norm_first)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=True)


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_encoder_eval_train_masks(norm_first):
    torch.manual_seed(6)
    model = encoder(norm_first).eval()
    x = torch.randn(N, 8, E)
    kpm = torch.zeros(N, 8, dtype=torch.bool)
    kpm[1, 5:] = True  # left-aligned padding: the float model takes the nested-tensor fast path
    with torch.no_grad():
        ref = model(x)
        ref_pad = model(x, src_key_padding_mask=kpm)
    q = q8.quantize_dynamic(copy.deepcopy(model))
    assert all(type(layer) is q8.nn.Int8TransformerEncoderLayer for layer in q.layers)
    assert type(q) is q8.nn.Int8TransformerEncoder and type(model) is nn.TransformerEncoder
    with torch.no_grad():
        assert rel(q(x), ref) < 0.03
        out = q(x, src_key_padding_mask=kpm)
        assert out.shape == ref_pad.shape
        assert rel(out[~kpm], ref_pad[~kpm]) < 0.03  # padded rows: the fast path writes zeros there
        causal = nn.Transformer.generate_square_subsequent_mask(8)
        assert rel(q(x, mask=causal, is_causal=True), model(x, mask=causal, is_causal=True)) < 0.03
        assert rel(q(x[0]), model(x[0])) < 0.03  # unbatched
    q.train()
    out = q(x, src_key_padding_mask=kpm)  # train mode (dropout), grad on
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_transformer_encoder_torchscript_pickle_deepcopy():
    torch.manual_seed(7)
    q = encoder().eval()
    assert q8.quantize_dynamic(q) is q  # in place, as for any container
    assert type(q) is q8.nn.Int8TransformerEncoder
    x = torch.randn(2, 6, E)
    kpm = torch.zeros(2, 6, dtype=torch.bool)
    kpm[0, 4:] = True
    with torch.no_grad():
        expected = q(x, src_key_padding_mask=kpm)
        scripted = torch.jit.script(q)
        assert torch.allclose(scripted(x, src_key_padding_mask=kpm), expected, atol=1e-5)
        assert torch.equal(copy.deepcopy(q)(x, src_key_padding_mask=kpm), expected)
        assert torch.equal(pickle.loads(pickle.dumps(q))(x, src_key_padding_mask=kpm), expected)


@pytest.mark.parametrize("activation", ["relu", "relu_module", "gelu"])
def test_transformer_encoder_relu_fuses_into_linear1(activation):
    """The feed-forward ReLU runs in linear1's epilogue (Int8Linear clamp_min=0), bit-identical to the layer
    calling it after an unclamped linear1; GELU stays a call."""
    torch.manual_seed(9)
    act = nn.ReLU() if activation == "relu_module" else activation
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(E, H, 64, dropout=0.1, batch_first=True,
                                                             activation=act), 2, enable_nested_tensor=False).eval()
    x = torch.randn(N, 6, E)
    q = q8.quantize_dynamic(copy.deepcopy(model))
    fused = activation != "gelu"
    for layer in q.layers:
        assert type(layer.linear1) is q8.nn.Int8Linear and layer.q8_relu_in_linear1 == fused
        assert layer.linear1.clamp_min == (0.0 if fused else None) and layer.linear1.clamp_max is None
    unfused = copy.deepcopy(q)
    for layer in unfused.layers:
        layer.q8_relu_in_linear1 = False
        layer.linear1.clamp_min = None
    with torch.no_grad():
        y = q(x)
        assert torch.equal(y, unfused(x))
        assert rel(y, model(x)) < 0.03
        assert torch.equal(torch.jit.script(q)(x), y)
    # QAT: linear1 trains as a QATLinear clamping at 0 and converts to the clamped Int8Linear.
    qat = q8.prepare_qat(copy.deepcopy(model).train())
    assert all(type(layer.linear1) is q8.nn.QATLinear and layer.linear1.clamp_min == (0.0 if fused else None)
               for layer in qat.layers)
    qat(x).pow(2).mean().backward()
    qat.eval()
    with torch.no_grad():
        fake = qat(x)
    q8.convert(qat)
    assert all(type(layer.linear1) is q8.nn.Int8Linear and layer.linear1.clamp_min == (0.0 if fused else None)
               for layer in qat.layers)
    with torch.no_grad():
        assert rel(qat(x), fake) < 1e-3


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_transformer_decoder_relu_fuses_into_linear1(activation):
    torch.manual_seed(10)
    model = nn.Transformer(E, H, 1, 2, 64, dropout=0.0, batch_first=True, activation=activation).eval()
    src, tgt = torch.randn(N, 7, E), torch.randn(N, 5, E)
    q = q8.quantize_dynamic(copy.deepcopy(model))
    fused = activation == "relu"
    for layer in q.decoder.layers:
        assert type(layer) is (q8.nn.Int8TransformerDecoderLayer if fused else nn.TransformerDecoderLayer)
        assert type(layer.linear1) is q8.nn.Int8Linear and layer.linear1.clamp_min == (0.0 if fused else None)
    unfused = copy.deepcopy(q)
    for layer in list(unfused.encoder.layers) + list(unfused.decoder.layers):
        layer.q8_relu_in_linear1 = False
        layer.linear1.clamp_min = None
    with torch.no_grad():
        y = q(src, tgt)
        assert torch.equal(y, unfused(src, tgt))
        assert rel(y, model(src, tgt)) < 0.03
        assert torch.equal(torch.jit.script(q)(src, tgt), y)


def test_nn_transformer_all_modes():
    torch.manual_seed(8)
    model = nn.Transformer(E, H, 2, 2, 64, dropout=0.0, batch_first=True).eval()
    src, tgt = torch.randn(N, 7, E), torch.randn(N, 5, E)
    tgt_mask = nn.Transformer.generate_square_subsequent_mask(5)
    kpm = torch.zeros(N, 7, dtype=torch.bool)
    kpm[2, 5:] = True
    args = dict(tgt_mask=tgt_mask, src_key_padding_mask=kpm, memory_key_padding_mask=kpm)
    with torch.no_grad():
        ref = model(src, tgt, **args)

    dyn = q8.quantize_dynamic(copy.deepcopy(model))
    n_mha = sum(isinstance(m, Int8MultiheadAttention) for m in dyn.modules())
    assert n_mha == 2 + 2 * 2  # encoder self-attention, decoder self- and cross-attention
    assert not any(type(m) is nn.Linear for m in dyn.modules())
    with torch.no_grad():
        assert rel(dyn(src, tgt, **args), ref) < 0.03
        scripted = torch.jit.script(dyn)
        assert rel(scripted(src, tgt, **args), dyn(src, tgt, **args)) < 1e-5

    prepared = q8.prepare(copy.deepcopy(model))
    with torch.no_grad():
        for _ in range(2):
            prepared(src, tgt, **args)
    q8.freeze_observers(prepared)
    q8.enable_fake_quant(prepared, True)
    with torch.no_grad():
        fake = prepared(src, tgt, **args)
    static = q8.convert(prepared)
    assert not any(isinstance(m, (QATMultiheadAttention, q8.nn.QATLinear)) for m in static.modules())
    with torch.no_grad():
        out = static(src, tgt, **args)
    assert rel(out, fake) < 1e-3
    assert rel(out, ref) < 0.05


# ---------------------------------------------------------------------------------------------- registry and report


class Scaled(nn.Module):
    def __init__(self, n=8):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n, n))

    def forward(self, x):
        return x @ self.weight.t()


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)

    def forward(self, x):
        return self.norm(self.fc(x))


class MyLinear(nn.Linear):
    pass


@pytest.fixture
def registered():
    keys = []

    def register(t, **kw):
        q8.register_converter(t, **kw)
        keys.append(t)

    yield register
    for t in keys:
        q8.unregister_converter(t)


class Wrapping(nn.Module):
    """A container whose converter wraps each child in a fresh temporary (itself converted away)."""

    def __init__(self, n):
        super().__init__()
        self.items = nn.ModuleList(nn.Linear(4, 4) for _ in range(n))

    def forward(self, x):
        for m in self.items:
            x = m(x)
        return x


class Temporary(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner


def test_walk_keeps_the_modules_it_visited(registered):
    """Regression: the walk remembered visited modules by id() only; a converter's temporary, freed after its
    conversion, could hand its id to a later temporary, which then got the first one's replacement (a
    TransformerEncoderLayer's linear1 became its self-attention)."""
    def wrap_children(m, a):
        for i in range(len(m.items)):
            m.items[i] = Temporary(m.items[i])
        return m

    registered(Wrapping, dynamic=wrap_children, descend=True)
    registered(Temporary, dynamic=lambda m, a: Int8Linear.from_float(m.inner, a))
    torch.manual_seed(0)
    model = Wrapping(40)
    weights = [m.weight.detach().clone() for m in model.items]
    q8.quantize_dynamic(model)
    assert all(type(m) is Int8Linear for m in model.items)
    for m, w in zip(model.items, weights):  # each item converted from its own linear
        torch.testing.assert_close(m.weight_int8.float() * m.weight_scale[:, None], w, atol=0.02, rtol=0)


def test_user_converter_report_log_and_no_noise(registered, caplog):
    registered(Scaled, dynamic=lambda m, a: Int8Linear.from_float(_as_linear(m), a))
    model = nn.Sequential(Scaled(), nn.ReLU(), Block(), nn.Dropout(), nn.ConvTranspose1d(8, 8, 1))
    x = torch.randn(2, 8)
    with caplog.at_level(logging.INFO, logger="q8"), warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing q8 could convert is left float: no warning
        q8.quantize_dynamic(model)
    assert type(model[0]) is Int8Linear and type(model[2].fc) is Int8Linear
    report = q8.conversion_report(model)
    assert [(e.name, e.from_type, e.to_type) for e in report.converted] == [
        ("0", "Scaled", "Int8Linear"), ("2.fc", "Linear", "Int8Linear")]
    assert [(e.name, e.status) for e in report.left_float] == [("4", "no_converter")]  # no ReLU / LayerNorm noise
    assert "q8 has no converter for ConvTranspose1d" in str(report)
    [record] = [r for r in caplog.records if r.name == "q8"]
    assert record.levelno == logging.INFO
    assert "converted 2 module(s) (Scaled->Int8Linear x1, Linear->Int8Linear x1); left 1 float (1 no_converter)" \
        in record.getMessage()


def _as_linear(m):
    lin = nn.Linear(m.weight.shape[1], m.weight.shape[0], bias=False)
    lin.weight = m.weight
    return lin


def test_double_registration(registered):
    registered(Scaled, dynamic=lambda m, a: m)
    with pytest.raises(ValueError, match=r"test_converters\.Scaled already has a converter; pass replace=True"):
        q8.register_converter(Scaled, dynamic=lambda m, a: m)
    q8.register_converter(Scaled, dynamic=lambda m, a: m, replace=True)
    with pytest.raises(ValueError, match=r"torch\.nn\.modules\.linear\.Linear already has a converter"):
        q8.register_converter(nn.Linear, dynamic=lambda m, a: m)
    with pytest.raises(TypeError, match="must be a torch.nn.Module subclass"):
        q8.register_converter(int, dynamic=lambda m, a: m)
    with pytest.raises(ValueError, match="give at least one of dynamic, qat, convert"):
        q8.register_converter(Block)
    assert q8.registered_converters()["torch.nn.modules.linear.Linear"] == {"dynamic": True, "qat": True,
                                                                           "convert": False}


def test_refusal_keeps_composite_intact_and_warns(registered):
    def half_then_refuse(block, activation):
        Int8Linear.from_float(block.fc, activation)  # converts a child, then gives up
        raise NotImplementedError("Block with LayerNorm eps != 1e-5 is not supported")

    registered(Block, dynamic=half_then_refuse)
    model = nn.Sequential(Block(), MyLinear(8, 8), nn.Linear(8, 8))
    block, fc = model[0], model[0].fc
    x = torch.randn(3, 8)
    expected = model[0](x)
    with pytest.warns(UserWarning, match=r"2 module\(s\) that q8 could convert were left float: 0: Block left float "
                                         r"\(refused: Block with LayerNorm"):
        q8.quantize_dynamic(model)
    assert model[0] is block and model[0].fc is fc and type(fc) is nn.Linear  # whole composite left float
    assert torch.equal(model[0](x), expected)
    assert type(model[1]) is MyLinear and type(model[2]) is Int8Linear
    report = q8.conversion_report(model)
    statuses = {e.name: e.status for e in report.left_float}
    assert statuses == {"0": "refused", "1": "subclass"}
    assert "a subclass of Linear" in str(report)


def test_rnn_and_embedding_are_dispatched_or_reported():
    model = nn.Sequential()
    model.emb = nn.Embedding(10, 8)
    model.bag = nn.EmbeddingBag(10, 8)
    model.lstm = nn.LSTM(8, 8)
    model.gru = nn.GRU(8, 8)
    model.rnn = nn.RNN(8, 8)
    model.cell = nn.LSTMCell(8, 8)
    model.gcell = nn.GRUCell(8, 8)
    model.rcell = nn.RNNCell(8, 8)
    expected = {"emb": "Int8Embedding", "bag": "Int8EmbeddingBag", "lstm": "Int8LSTM", "gru": "Int8GRU",
                "rnn": "Int8RNN", "cell": "Int8LSTMCell", "gcell": "Int8GRUCell", "rcell": "Int8RNNCell"}
    q8.quantize_dynamic(model)
    report = q8.conversion_report(model)
    by_name = {e.name: e for e in report.entries}
    for name, cls in expected.items():
        if hasattr(q8.nn, cls):
            assert by_name[name].to_type == cls
        else:
            assert by_name[name].status == "unavailable"
            assert f"q8.nn.{cls} is not available" in by_name[name].reason
            assert type(getattr(model, name)).__name__ == by_name[name].from_type  # left as it was

    # QAT: embeddings fake-quantize their tables (q8.nn.QATEmbedding); recurrent layers stay
    # float, reported as unsupported.
    model = nn.Sequential(nn.Embedding(10, 8), nn.LSTM(8, 8))
    q8.prepare_qat(model)
    assert type(model[0]) is q8.nn.QATEmbedding and type(model[1]) is nn.LSTM
    (entry,) = q8.conversion_report(model).left_float
    assert entry.name == "1" and entry.status == "unsupported"
    assert "q8 has no qat converter for LSTM" in str(q8.conversion_report(model))


def test_not_floating_and_skip_reported():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model[0].weight = nn.Parameter(model[0].weight.detach().to(torch.float64).to(torch.int8).to(torch.int32),
                                   requires_grad=False)
    with pytest.warns(UserWarning, match="parameter weight has dtype torch.int32, not a floating type"):
        q8.quantize_dynamic(model, skip=["1"])
    statuses = {e.name: e.status for e in q8.conversion_report(model).left_float}
    assert statuses == {"0": "not_floating", "1": "skipped"}


def test_conversion_report_unknown_model():
    with pytest.raises(KeyError, match="no q8 conversion returned this model"):
        q8.conversion_report(nn.Linear(2, 2))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mha_half_dtypes_and_empty(dtype):
    torch.manual_seed(9)
    mha = nn.MultiheadAttention(E, H, batch_first=True, add_bias_kv=True).eval()
    x = torch.randn(N, L, E)
    with torch.no_grad():
        ref = mha(x, x, x)[0]
        low = copy.deepcopy(mha).to(dtype)
        q = Int8MultiheadAttention.from_float(low)
        out, w = q(x.to(dtype), x.to(dtype), x.to(dtype))
    assert out.dtype == dtype and w.dtype == dtype
    assert rel(out, ref) < 0.03  # int8 error (~1 %) plus 8-/11-bit mantissa rounding
    for empty in (torch.randn(0, L, E), torch.randn(N, 0, E)):
        got = Int8MultiheadAttention.from_float(mha)(empty, empty, empty, need_weights=False)[0]
        assert got.shape == mha(empty, empty, empty, need_weights=False)[0].shape


def test_nn_transformer_torch_export():
    torch.manual_seed(10)
    model = nn.Transformer(E, H, 1, 1, 64, dropout=0.0, batch_first=True).eval()
    src, tgt = torch.randn(2, 7, E), torch.randn(2, 5, E)
    q = q8.quantize_dynamic(model)
    exported = torch.export.export(q, (src, tgt))
    with torch.no_grad():
        assert torch.allclose(exported.module()(src, tgt), q(src, tgt), atol=1e-6)
    assert sum(node.target is torch.ops.q8.linear.default for node in exported.graph.nodes) == 3 * 4 + 2 * 2


def test_lazy_converter_errors_become_refusals(monkeypatch):
    class Int8LSTM(nn.Module):
        @classmethod
        def from_float(cls, module, activation="dynamic"):
            if activation != "dynamic":
                raise ValueError(f"activation must be 'dynamic', got {activation!r}")
            return cls()

    monkeypatch.setattr(q8.nn, "Int8LSTM", Int8LSTM, raising=False)
    model = nn.Sequential(nn.LSTM(4, 4), nn.Linear(4, 4))
    with pytest.warns(UserWarning, match=r"0: LSTM left float \(refused: q8\.nn\.Int8LSTM\.from_float: activation "
                                         r"must be 'dynamic', got 'weight_only'\)"):
        q8.quantize_dynamic(model, "weight_only")
    assert type(model[0]) is nn.LSTM and type(model[1]) is Int8Linear
    model = q8.quantize_dynamic(nn.Sequential(nn.LSTM(4, 4)))
    assert type(model[0]) is Int8LSTM


def test_transformer_encoder_prepare_qat_train_convert():
    """The reported failure: q8.prepare_qat(nn.TransformerEncoder(...)) then training raised AttributeError."""
    torch.manual_seed(11)
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(E, H, 64, batch_first=True), 2)
    q8.prepare_qat(model)
    assert type(model) is q8.nn.Int8TransformerEncoder
    assert all(type(layer.self_attn) is QATMultiheadAttention for layer in model.layers)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(N, 6, E)
    kpm = torch.zeros(N, 6, dtype=torch.bool)
    kpm[0, 4:] = True
    for _ in range(3):
        opt.zero_grad()
        model(x, src_key_padding_mask=kpm).pow(2).mean().backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        fake = model(x, src_key_padding_mask=kpm)
    q8.convert(model)
    assert not any(isinstance(m, (QATMultiheadAttention, q8.nn.QATLinear)) for m in model.modules())
    with torch.no_grad():
        out = model(x, src_key_padding_mask=kpm)
    assert rel(out[~kpm], fake[~kpm]) < 1e-3
