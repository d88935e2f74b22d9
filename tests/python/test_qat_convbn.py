"""q8's QAT conv-BN (QATConvBn2d / QATConvBn1d) against torch.ao.nn.intrinsic.qat.ConvBn2d / ConvBnReLU2d, and
its linear-BN (QATLinearBn1d) against torch.ao's LinearBn1d.

Both fold the BN scale into the weight, fake-quantize the folded weight and keep the
BN statistics training. Their fake quantizers differ (q8's FakeQuantize vs torch.ao's
observers), so the comparison isolates the BN-folding logic: first with weight fake
quantization off in both, then with the same fixed per-channel qparams in both.
q8's input fake quantizer (torch.ao quantizes outputs elsewhere) is off.
"""
import pytest
import torch
from torch import nn

import q8
import q8.quantization as qz  # q8.freeze_bn_stats once exported
from q8.nn.fused import FusedConv1d, FusedConv2d, FusedLinear
from q8.nn.qat_conv import QATConvBn1d, QATConvBn2d, QATLinearBn1d, freeze_bn_stats, update_bn_stats

tao = pytest.importorskip("torch.ao.quantization")
from torch.ao.nn.intrinsic.qat import ConvBn2d, ConvBnReLU2d, LinearBn1d  # noqa: E402


class LinearBnReLU1d(LinearBn1d):
    """torch.ao has no LinearBnReLU1d: its LinearBn1d, then ReLU."""

    def forward(self, x):
        return torch.relu(super().forward(x))


def _torch_qconfig():
    weight = tao.FakeQuantize.with_args(observer=tao.MovingAveragePerChannelMinMaxObserver, quant_min=-127,
                                        quant_max=127, dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                        ch_axis=0)
    return tao.QConfig(activation=tao.FakeQuantize.with_args(observer=tao.MovingAverageMinMaxObserver),
                       weight=weight)


def _pair(relu: bool, bias: bool, groups: int = 1, seed: int = 0):
    """A torch.ao ConvBn(ReLU)2d and a q8 QATConvBn2d with identical parameters and BN state."""
    torch.manual_seed(seed)
    cls = ConvBnReLU2d if relu else ConvBn2d
    ref = cls(4, 6, 3, stride=1, padding=1, groups=groups, bias=bias, qconfig=_torch_qconfig())
    with torch.no_grad():
        ref.bn.weight.uniform_(0.5, 1.5)
        ref.bn.bias.uniform_(-0.5, 0.5)
        ref.bn.running_mean.uniform_(-0.3, 0.3)
        ref.bn.running_var.uniform_(0.5, 1.5)
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=groups, bias=bias)
    bn = nn.BatchNorm2d(6)
    with torch.no_grad():
        conv.weight.copy_(ref.weight)
        if bias:
            conv.bias.copy_(ref.bias)
        bn.load_state_dict(ref.bn.state_dict())
    fused = FusedConv2d(conv, bn, nn.ReLU() if relu else None)
    ours = QATConvBn2d.from_fused(fused, q8.QConfig(weight_observer="current"))
    ours.input_fake_quant.enable_fake_quant(False)
    ours.input_fake_quant.enable_observer(False)
    ref.train()
    ours.train()
    return ref, ours


def _linear_pair(relu: bool, bias: bool, seed: int = 0):
    """A torch.ao LinearBn1d (then ReLU) and a q8 QATLinearBn1d with identical parameters and BN state."""
    torch.manual_seed(seed)
    cls = LinearBnReLU1d if relu else LinearBn1d
    ref = cls(4 * 7 * 7, 6, bias=bias, qconfig=_torch_qconfig())
    with torch.no_grad():
        if bias:
            ref.bias.uniform_(-0.1, 0.1)  # (LinearBn1d leaves its bias uninitialized: torch.empty)
        ref.bn.weight.uniform_(0.5, 1.5)
        ref.bn.bias.uniform_(-0.5, 0.5)
        ref.bn.running_mean.uniform_(-0.3, 0.3)
        ref.bn.running_var.uniform_(0.5, 1.5)
    linear = nn.Linear(4 * 7 * 7, 6, bias=bias)
    bn = nn.BatchNorm1d(6)
    with torch.no_grad():
        linear.weight.copy_(ref.weight)
        if bias:
            linear.bias.copy_(ref.bias)
        bn.load_state_dict(ref.bn.state_dict())
    ours = QATLinearBn1d.from_fused(FusedLinear(linear, bn, nn.ReLU() if relu else None),
                                    q8.QConfig(weight_observer="current"))
    ours.input_fake_quant.enable_fake_quant(False)
    ours.input_fake_quant.enable_observer(False)
    ref.train()
    ours.train()
    return _Flat(ref), _Flat(ours)


class _Flat(nn.Module):
    """A linear-BN layer on the flattened [8, 4, 7, 7] batches of _train_and_compare, its attributes passed
    through."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x.flatten(1))

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["layer"], name)


def _fix_weight_qparams(ref, ours):
    """The same fixed per-channel symmetric scales in both, observers off (from the initial folded weight)."""
    with torch.no_grad():
        std = torch.sqrt(ref.bn.running_var + ref.bn.eps)
        shape = [-1] + [1] * (ref.weight.dim() - 1)
        folded = ref.weight * (ref.bn.weight / std).reshape(shape)
        scale = (folded.abs().amax(dim=tuple(range(1, folded.dim()))) / 127.0).to(torch.float32)
    ref.weight_fake_quant.disable_observer()
    ref.weight_fake_quant.scale = scale.clone()
    ref.weight_fake_quant.zero_point = torch.zeros(scale.numel(), dtype=torch.int32)
    ref.weight_fake_quant.enable_fake_quant()
    ours.weight_fake_quant.enable_observer(False)
    ours.weight_fake_quant.scale.copy_(scale)
    ours.weight_fake_quant.zero_point.zero_()
    ours.weight_fake_quant.enable_fake_quant(True)


def _params(m):
    return [m.weight] + ([m.bias] if m.bias is not None else []) + [m.bn.weight, m.bn.bias]


def _train_and_compare(ref, ours, steps: int, freeze_after: int, atol: float):
    opt_r = torch.optim.SGD(_params(ref), lr=0.05, momentum=0.9)
    opt_o = torch.optim.SGD(_params(ours), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        if step == freeze_after:
            ref.freeze_bn_stats()
            freeze_bn_stats(ours)  # the model-level helper
            ref.train()
            ours.train()  # model.train() keeps a frozen BN frozen, as torch.ao's
            assert not ref.bn.training and not ours.bn.training
        x = torch.randn(8, 4, 7, 7, generator=gen)
        target = torch.randn(8, 6, 7, 7, generator=gen)
        if isinstance(ref, _Flat):
            target = target[:, :, 0, 0]
        y_r = ref(x)
        y_o = ours(x)
        torch.testing.assert_close(y_o, y_r, atol=atol, rtol=1e-5)
        loss_r = ((y_r - target) ** 2).mean()
        loss_o = ((y_o - target) ** 2).mean()
        opt_r.zero_grad()
        opt_o.zero_grad()
        loss_r.backward()
        loss_o.backward()
        for p_o, p_r in zip(_params(ours), _params(ref)):
            torch.testing.assert_close(p_o.grad, p_r.grad, atol=atol, rtol=1e-4)
        opt_r.step()
        opt_o.step()
        torch.testing.assert_close(ours.bn.running_mean, ref.bn.running_mean, atol=atol, rtol=1e-5)
        torch.testing.assert_close(ours.bn.running_var, ref.bn.running_var, atol=atol, rtol=1e-5)
        assert int(ours.bn.num_batches_tracked) == int(ref.bn.num_batches_tracked)
    for p_o, p_r in zip(_params(ours), _params(ref)):
        torch.testing.assert_close(p_o, p_r, atol=atol, rtol=1e-4)
    ref.eval()
    ours.eval()
    x = torch.randn(4, 4, 7, 7, generator=gen)
    torch.testing.assert_close(ours(x), ref(x), atol=atol, rtol=1e-5)


@pytest.mark.parametrize("kind", ["conv", "linear"])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_torch_ao_without_fake_quant(kind, relu, bias):
    ref, ours = (_pair if kind == "conv" else _linear_pair)(relu, bias)
    ref.weight_fake_quant.disable_fake_quant()
    ref.weight_fake_quant.disable_observer()
    ours.weight_fake_quant.enable_fake_quant(False)
    ours.weight_fake_quant.enable_observer(False)
    _train_and_compare(ref, ours, steps=6, freeze_after=3, atol=2e-5)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("groups", [1, 2])
def test_matches_torch_ao_with_fixed_weight_qparams(relu, groups):
    ref, ours = _pair(relu, bias=True, groups=groups, seed=3)
    _fix_weight_qparams(ref, ours)
    _train_and_compare(ref, ours, steps=6, freeze_after=4, atol=5e-5)


@pytest.mark.parametrize("relu", [False, True])
def test_linear_bn_matches_torch_ao_with_fixed_weight_qparams(relu):
    ref, ours = _linear_pair(relu, bias=True, seed=3)
    _fix_weight_qparams(ref, ours)
    _train_and_compare(ref, ours, steps=6, freeze_after=4, atol=5e-5)


def test_bn_frozen_from_the_start_and_update_again():
    ref, ours = _pair(relu=True, bias=False, seed=5)
    _fix_weight_qparams(ref, ours)
    ref.freeze_bn_stats()
    ours.freeze_bn_stats()
    mean = ours.bn.running_mean.clone()
    _train_and_compare(ref, ours, steps=3, freeze_after=-1, atol=5e-5)
    torch.testing.assert_close(ours.bn.running_mean, mean, rtol=0, atol=0)  # frozen: never updated
    ref.train()
    ours.train()
    ref.update_bn_stats()
    update_bn_stats(ours)
    assert ours.bn.training and not ours.freeze_bn
    _train_and_compare(ref, ours, steps=2, freeze_after=-1, atol=5e-5)
    assert not torch.equal(ours.bn.running_mean, mean)


def _convbn_model(relu6: bool = False):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6() if relu6 else nn.ReLU(),
                      nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4))
    return m


@pytest.mark.parametrize("relu6", [False, True])
def test_prepare_qat_train_freeze_convert(relu6):
    model = _convbn_model(relu6).train()
    q8.prepare_qat(model)
    assert [type(model[i]) for i in (0, 3, 6)] == [QATConvBn2d] * 3
    assert (model[0].clamp_min, model[0].clamp_max) == ((0.0, 6.0) if relu6 else (0.0, None))
    assert (model[6].clamp_min, model[6].clamp_max) == (None, None)
    assert all(type(model[i]) is nn.Identity for i in (1, 2, 4, 5, 7))
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    gen = torch.Generator().manual_seed(0)
    for step in range(8):
        if step == 5:
            qz.freeze_bn_stats(model)
        x = torch.randn(6, 3, 8, 8, generator=gen)
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model[0].bn.num_batches_tracked.item() == 5  # frozen after 5 steps
    q8.freeze_observers(model)
    model.eval()
    x = torch.randn(4, 3, 8, 8, generator=gen)
    with torch.no_grad():
        expected = model(x)
    q8.convert(model)
    report = q8.conversion_report(model)
    assert [(e.name, e.from_type) for e in report.converted] == [("0", "QATConvBn2d"), ("3", "QATConvBn2d"),
                                                               ("6", "QATConvBn2d")]
    assert not any(isinstance(m, (QATConvBn2d, nn.BatchNorm2d)) for m in model.modules())
    with torch.no_grad():
        got = model(x)
    torch.testing.assert_close(got, expected, atol=1e-4 * float(expected.abs().max()) + 1e-6, rtol=1e-4)


def test_convert_stores_folded_weight_codes():
    """convert's int8 weight is the folded weight fake-quantized with the QAT layer's qparams."""
    model = _convbn_model().train()
    q8.prepare_qat(model)
    x = torch.randn(4, 3, 8, 8)
    model(x)
    model(x)
    q8.freeze_observers(model)
    layer = model[0]
    with torch.no_grad():
        w, b = layer.folded_weight_and_bias()
        wq = layer.weight_fake_quant(w)
        scale = layer.weight_fake_quant.scale.clone()
    q8.convert(model)
    conv = model[0]
    conv = getattr(conv, "layer", conv)  # Int8Clamped around an Int8Conv2d without a clamp of its own
    torch.testing.assert_close(conv.weight_int8.float() * conv.weight_scale.reshape(-1, 1, 1, 1), wq, rtol=0,
                               atol=0)
    torch.testing.assert_close(conv.weight_scale, scale, rtol=0, atol=0)
    torch.testing.assert_close(conv.bias, b, rtol=0, atol=0)


def test_conv1d_bn_qat_matches_the_float_fold():
    torch.manual_seed(0)
    conv, bn = nn.Conv1d(4, 6, 3, padding=1), nn.BatchNorm1d(6)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
    fused = FusedConv1d(conv, bn, nn.ReLU()).eval()
    x = torch.randn(3, 4, 10)
    expected = fused(x)
    qat = QATConvBn1d.from_fused(fused)
    for fq in (qat.weight_fake_quant, qat.input_fake_quant):
        fq.enable_fake_quant(False)
    qat.eval()
    torch.testing.assert_close(qat(x), expected, atol=1e-5, rtol=1e-5)
    # Training mode: batch statistics, the same as the unfused conv -> BN(train) -> ReLU.
    fused.train()
    qat.train()
    ref_bn = nn.BatchNorm1d(6)
    ref_bn.load_state_dict(bn.state_dict())
    with torch.no_grad():
        y_ref = torch.relu(ref_bn(conv(x)))
    y = qat(x)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bn.running_mean, ref_bn.running_mean, atol=1e-6, rtol=1e-5)


def test_from_fused_errors():
    with pytest.raises(TypeError, match="FusedConv2d with a BatchNorm2d"):
        QATConvBn2d.from_fused(FusedConv2d(nn.Conv2d(2, 2, 1), None, nn.ReLU()))
    with pytest.raises(TypeError, match="FusedConv2d"):
        QATConvBn2d.from_fused(nn.Conv2d(2, 2, 1))
    with pytest.raises(TypeError, match="FusedLinear with a BatchNorm1d, got FusedLinear"):
        QATLinearBn1d.from_fused(FusedLinear(nn.Linear(2, 2), None, nn.ReLU()))


def _mlp_bn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU6(), nn.Linear(16, 8), nn.BatchNorm1d(8),
                         nn.Linear(8, 4))


def test_prepare_qat_linear_bn_train_freeze_convert_script(tmp_path):
    """prepare_qat fuses Linear -> BatchNorm1d (-> ReLU6) into QATLinearBn1d; convert folds it into a static
    Int8Linear with the clamp, which computes the frozen QAT model; both script."""
    model = _mlp_bn().train()
    q8.prepare_qat(model)
    assert [type(model[i]) for i in (0, 3, 5)] == [QATLinearBn1d, QATLinearBn1d, q8.nn.QATLinear]
    assert (model[0].clamp_min, model[0].clamp_max) == (0.0, 6.0) and model[3].clamp_min is None
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    gen = torch.Generator().manual_seed(0)
    for step in range(8):
        if step == 5:
            qz.freeze_bn_stats(model)
        x = torch.randn(16, 12, generator=gen) * 2
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model[0].bn.num_batches_tracked.item() == 5
    q8.freeze_observers(model)
    model.eval()
    x = torch.randn(6, 12, generator=gen) * 2
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(torch.jit.script(model)(x), expected, rtol=0, atol=0)
    layer = model[0]
    with torch.no_grad():
        w, b = layer.folded_weight_and_bias()
        wq = layer.weight_fake_quant(w)
    q8.convert(model)
    assert [(e.name, e.from_type) for e in q8.conversion_report(model).converted] == [
        ("0", "QATLinearBn1d"), ("3", "QATLinearBn1d"), ("5", "QATLinear")]
    lin = model[0]
    assert type(lin) is q8.nn.Int8Linear and lin.activation == "static" and (lin.clamp_min, lin.clamp_max) == (0, 6)
    torch.testing.assert_close(lin.weight_int8.float() * lin.weight_scale[:, None], wq, rtol=0, atol=0)
    torch.testing.assert_close(lin.bias, b, rtol=0, atol=0)
    with torch.no_grad():
        got = model(x)
    torch.testing.assert_close(got, expected, atol=1e-4 * float(expected.abs().max()) + 1e-6, rtol=1e-4)
    torch.testing.assert_close(torch.jit.script(model)(x), got, rtol=0, atol=0)


def test_qat_convbn_scripts():
    model = _convbn_model().train()
    q8.prepare_qat(model)
    x = torch.randn(2, 3, 8, 8)
    model(x)
    q8.freeze_observers(model)
    model.eval()
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x), model(x), rtol=0, atol=0)
