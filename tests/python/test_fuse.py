"""Fusion of conv / linear -> BatchNorm -> activation chains (q8.fuse_modules, automatic fusion, folding)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import q8
from q8.fuse import auto_fuse, fuse_modules
from q8.nn.fused import FusedConv1d, FusedConv2d, FusedLinear, Int8Clamped, fold_bn
from q8.nn.qat import QATConv2d, QATLinear


def _randomize_bn(model):
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


def _seq():
    torch.manual_seed(0)
    return _randomize_bn(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4), nn.Hardtanh(0.0, 3.0),
        nn.Flatten(), nn.Linear(4 * 36, 10), nn.BatchNorm1d(10), nn.ReLU(), nn.Linear(10, 5), nn.ReLU()))


class ResBlock(nn.Module):
    """ResNet basic block: one shared ReLU module (called twice), a residual add."""

    def __init__(self, c=8):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class ResNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(8)
        self.block = ResBlock()
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))  # functional ReLU: its clamp is fused, the call stays
        return self.head(self.block(x))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: expand 1x1 -> depthwise 3x3 -> project 1x1 (ReLU6), residual add."""

    def __init__(self, c=8, t=3):
        super().__init__()
        h = c * t
        self.conv = nn.Sequential(
            nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6(inplace=True),
            nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6(inplace=True),
            nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))
        self.use_res = True

    def forward(self, x):
        if self.use_res:
            return x + self.conv(x)
        return self.conv(x)


def _mobilenetish():
    torch.manual_seed(1)
    return _randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                                       nn.ReLU6(), InvertedResidual(), InvertedResidual()))


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it and there is no nn.Sequential."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.bn = nn.BatchNorm2d(6)
        self.relu = nn.ReLU()

    def forward(self, x):
        if x.sum() > 0:
            x = -x
        return self.relu(self.bn(self.conv(x)))


def _close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, atol=tol * (1 + float(b.abs().max())), rtol=tol)


# ---------------------------------------------------------------------------------------------- float fusion


def test_fused_forward_is_the_sequence_and_fold_is_close():
    model = _seq()
    x = torch.randn(4, 3, 6, 6)
    expected = model(x)
    fused = fuse_modules(model, [["0", "1", "2"], ["3", "4", "5"], ["6", "7", "8"], ["10", "11", "12"],
                                 ["13", "14"]])
    assert type(model[0]) is nn.Conv2d  # inplace=False: a copy
    assert [type(fused[i]) for i in (0, 3, 6, 10, 13)] == [FusedConv2d] * 3 + [FusedLinear] * 2
    assert all(type(fused[i]) is nn.Identity for i in (1, 2, 4, 5, 7, 8, 11, 12, 14))
    assert torch.equal(fused(x), expected)  # the same modules in the same order
    assert fused[6].clamp() == (0.0, 3.0) and fused[3].clamp() == (0.0, 6.0) and fused[13].clamp() == (0.0, None)
    for i in (0, 3, 6, 10):
        fused[i].fold_bn_()
        assert not fused[i].has_bn
    _close(fused(x), expected)


def test_fold_bn_matches_torch():
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    model = _seq()
    ref = fuse_conv_bn_eval(model[3], model[4])
    ours = fold_bn(model[3], model[4])
    _close(ours.weight, ref.weight, 1e-6)
    _close(ours.bias, ref.bias, 1e-6)
    ref = fuse_linear_bn_eval(model[10], model[11])
    ours = fold_bn(model[10], model[11])
    _close(ours.weight, ref.weight, 1e-6)
    _close(ours.bias, ref.bias, 1e-6)


def test_auto_fuse_sequential():
    model = _seq()
    x = torch.randn(4, 3, 6, 6)
    expected = model(x)
    groups = auto_fuse(model)
    # Linear -> ReLU without a BatchNorm too (the clamp goes into q8.linear's epilogue).
    assert groups == [["0", "1", "2"], ["3", "4", "5"], ["6", "7", "8"], ["10", "11", "12"], ["13", "14"]]
    assert type(model[13]) is FusedLinear and type(model[14]) is nn.Identity and not model[13].has_bn
    assert torch.equal(model(x), expected)


def test_auto_fuse_fx_resnet_block():
    torch.manual_seed(0)
    model = _randomize_bn(ResNetish())
    x = torch.randn(2, 3, 6, 6)
    expected = model(x)
    groups = auto_fuse(model)
    assert groups == [["stem", "stem_bn"], ["block.conv1", "block.bn1"], ["block.conv2", "block.bn2"]]
    assert model.stem.clamp() == (0.0, None)  # functional F.relu: clamp fused, the call stays (idempotent)
    assert model.block.conv1.clamp() == (0.0, None)  # the shared ReLU: fused, kept for its second use
    assert type(model.block.relu) is nn.ReLU
    assert model.block.conv2.clamp() == (None, None)  # bn2's output goes to the add, not to the ReLU
    assert type(model.head) is nn.Conv2d
    assert torch.equal(model(x), expected)


def test_auto_fuse_mobilenet_block():
    model = _mobilenetish()
    x = torch.randn(2, 3, 6, 6)
    expected = model(x)
    groups = auto_fuse(model)
    assert groups[0] == ["0", "1", "2"]
    assert ["3.conv.0", "3.conv.1", "3.conv.2"] in groups and ["4.conv.6", "4.conv.7"] in groups
    assert len(groups) == 7
    assert model[3].conv[3].clamp() == (0.0, 6.0)
    assert torch.equal(model(x), expected)


def test_untraceable_model_needs_fuse_modules():
    torch.manual_seed(0)
    model = _randomize_bn(Untraceable())
    assert auto_fuse(model) == []
    x = torch.randn(2, 3, 6, 6)
    expected = model(x)
    fuse_modules(model, ["conv", "bn", "relu"], inplace=True)
    assert type(model.conv) is FusedConv2d and type(model.bn) is nn.Identity and type(model.relu) is nn.Identity
    assert torch.equal(model(x), expected)
    q8.quantize_dynamic(model)
    _close(model(x), expected, 0.05)


def test_fused_model_state_dict_and_script():
    model = _mobilenetish()
    auto_fuse(model)
    clone = _mobilenetish()
    fuse_modules(clone, auto_fuse(copy.deepcopy(clone)), inplace=True)
    clone.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(clone(x), model(x))
    scripted = torch.jit.script(model)
    assert torch.equal(scripted(x), model(x))


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("names, match", [
    (["2", "0"], r"'2' is a ReLU, not a Conv1d / Conv2d / Linear"),
    (["1", "2"], r"'1' is a BatchNorm2d, not a Conv1d"),
    (["0", "2", "1"], r"'1' \(BatchNorm2d\) is not where a BatchNorm or an activation may be"),
    (["0"], r"cannot fuse 1 module"),
    (["0", "9"], r"'9' \(Flatten\) is not where"),
])
def test_bad_patterns_name_modules_and_types(names, match):
    model = _seq()
    with pytest.raises(ValueError, match=match) as info:
        fuse_modules(model, names)
    for n in names:
        assert repr(n) in str(info.value)


def test_errors():
    model = _seq()
    with pytest.raises(ValueError, match=r"\['nope'\] are not submodules"):
        fuse_modules(model, [["0", "1"], ["nope", "1"]])
    with pytest.raises(ValueError, match="named in two fusion groups"):
        fuse_modules(model, [["0", "1"], ["0", "2"]])
    bad = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match=r"'1' \(BatchNorm2d, num_features=4\) does not match '0' \(Conv2d, "
                                         r"out_channels=8\)"):
        fuse_modules(bad, ["0", "1"])
    bad = nn.Sequential(nn.Conv1d(3, 8, 1), nn.BatchNorm2d(8))
    with pytest.raises(ValueError, match=r"'1' \(BatchNorm2d\) cannot follow a Conv1d: expected a BatchNorm1d"):
        fuse_modules(bad, ["0", "1"])
    with pytest.raises(TypeError, match="list of module names"):
        fuse_modules(model, "0")
    # a failing group leaves the model as it was (inplace)
    with pytest.raises(ValueError):
        fuse_modules(model, [["0", "1"], ["2", "0"]], inplace=True)
    assert type(model[0]) is nn.Conv2d
    assert auto_fuse(bad) == []  # automatic fusion skips what does not match
    with pytest.raises(ValueError, match="act must be"):
        FusedConv2d(nn.Conv2d(2, 2, 1), None, nn.GELU())
    with pytest.raises(TypeError, match="expected a Conv2d"):
        FusedConv2d(nn.Conv1d(2, 2, 1))


# ---------------------------------------------------------------------------------------------- quantization


def test_quantize_dynamic_fuses_and_reports():
    model = _seq()
    x = torch.randn(4, 3, 6, 6)
    expected = model(x)
    q8.quantize_dynamic(model)
    report = q8.conversion_report(model)
    converted = {(e.name, e.from_type) for e in report.converted}
    assert {("0", "FusedConv2d"), ("3", "FusedConv2d"), ("6", "FusedConv2d"), ("10", "FusedLinear"),
            ("13", "FusedLinear")} <= converted
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert type(model[10]) is q8.nn.Int8Linear and (model[10].clamp_min, model[10].clamp_max) == (0.0, None)
    out = model(x)
    _close(out, expected, 0.05)


def test_quantize_dynamic_fuse_off_keeps_structure():
    model = _seq()
    q8.quantize_dynamic(model, fuse=False)
    assert type(model[1]) is nn.BatchNorm2d and type(model[2]) is nn.ReLU and type(model[0]) is q8.nn.Int8Conv2d


def _ptq(model, x, config=None):
    q8.prepare(model, config)
    q8.calibrate(model, [x, x * 0.5], progress=False)
    with torch.no_grad():
        prepared = model(x)
    q8.convert(model)
    with torch.no_grad():
        converted = model(x)
    return prepared, converted


@pytest.mark.parametrize("make, shape", [(_seq, (4, 3, 6, 6)), (_mobilenetish, (2, 3, 6, 6)),
                                         (lambda: _randomize_bn(ResNetish()), (2, 3, 6, 6))])
def test_static_ptq_fused(make, shape):
    torch.manual_seed(0)
    model = make()
    x = torch.randn(shape)
    with torch.no_grad():
        expected = model(x)
    prepared_model = q8.prepare(copy.deepcopy(model))
    with torch.no_grad():
        # prepare: fake quantization off -> the folded model, equal to the float one up to rounding
        _close(prepared_model(x), expected)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in prepared_model.modules())
    prepared, converted = _ptq(model, x)
    _close(converted, prepared, 1e-4)  # the converted model computes the fake-quantized one
    _close(converted, expected, 0.1)


def test_prepared_conv_clamps_before_the_next_observer():
    model = _seq()
    q8.prepare(model)
    assert type(model[3]) is QATConv2d and (model[3].clamp_min, model[3].clamp_max) == (0.0, 6.0)
    assert type(model[10]) is QATLinear and model[10].clamp_min == 0.0
    q8.calibrate(model, [torch.randn(4, 3, 6, 6)], progress=False)
    # the next layer's input observer saw clamped values only
    assert float(model[6].input_fake_quant.running_max) <= 6.0
    assert float(model[6].input_fake_quant.running_min) == 0.0


def test_prepare_fuse_off_and_skip():
    model = _seq()
    q8.prepare(model, q8.QConfig(activation_observer="minmax", fuse=False))
    assert type(model[0]) is QATConv2d and type(model[1]) is nn.BatchNorm2d and type(model[2]) is nn.ReLU
    model = _seq()
    q8.prepare(model, q8.QConfig(activation_observer="minmax", skip=("0", "1")))
    assert type(model[0]) is nn.Conv2d and type(model[1]) is nn.BatchNorm2d
    assert type(model[3]) is QATConv2d and type(model[4]) is nn.Identity


def test_int8_model_scripts():
    model = _seq()
    x = torch.randn(4, 3, 6, 6)
    _, converted = _ptq(model, x)
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x), converted, rtol=0, atol=0)


def test_conv1d_fusion():
    torch.manual_seed(0)
    model = _randomize_bn(nn.Sequential(nn.Conv1d(3, 6, 3), nn.BatchNorm1d(6), nn.ReLU()))
    x = torch.randn(2, 3, 9)
    expected = model(x)
    assert auto_fuse(model) == [["0", "1", "2"]]
    assert type(model[0]) is FusedConv1d and torch.equal(model(x), expected)
    q8.quantize_dynamic(model)
    entry = q8.conversion_report(model).entries[0]
    if hasattr(q8.nn, "Int8Conv1d"):
        assert entry.to_type is not None
        _close(model(x), expected, 0.05)
    else:
        assert entry.status == "unavailable" and type(model[0]) is FusedConv1d  # left float, unchanged
        assert torch.equal(model(x), expected)


class Tapped(nn.Module):
    """Feature taps: a BN output also leaves the model, so its ReLU must not be fused (fx sees it)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 6, 3),
                                      nn.BatchNorm2d(6), nn.ReLU())

    def forward(self, x):
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == 1:
                taps.append(x)
        return x, taps[0]


def test_fx_sees_feature_taps():
    torch.manual_seed(0)
    model = _randomize_bn(Tapped())
    x = torch.randn(2, 3, 9, 9)
    expected = model(x)
    assert auto_fuse(model) == [["features.0", "features.1"], ["features.3", "features.4", "features.5"]]
    assert type(model.features[2]) is nn.ReLU and model.features[0].clamp() == (None, None)
    got = model(x)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


class Stage(nn.Sequential):
    """An nn.Sequential subclass with Sequential's forward (as torchvision's Conv2dNormActivation)."""


def test_sequential_scan_where_fx_fails():
    torch.manual_seed(0)
    # the Untraceable child makes the whole Stage untraceable: the Sequential scan still fuses 0-2
    model = _randomize_bn(Stage(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), Untraceable()))
    x = torch.randn(2, 3, 6, 6)
    expected = model(x)
    assert auto_fuse(model) == [["0", "1", "2"]]
    assert type(model[0]) is FusedConv2d and type(model[3].conv) is nn.Conv2d
    assert torch.equal(model(x), expected)


def test_converted_layer_carries_the_clamp():
    """The fused activation becomes the int8 layer's own clamp (q8.conv2d's and q8.linear's epilogue, or the
    weight-only paths')."""
    model = _seq()
    x = torch.randn(4, 3, 6, 6)
    _ptq(model, x)
    assert type(model[3]) is q8.nn.Int8Conv2d
    assert (model[3].clamp_min, model[3].clamp_max) == (0.0, 6.0) and model[6].clamp_max == 3.0
    assert model[0].input_scale is not None
    assert type(model[10]) is q8.nn.Int8Linear and (model[10].clamp_min, model[10].clamp_max) == (0.0, None)
    assert type(model[13]) is q8.nn.Int8Linear and type(model[14]) is nn.Identity and model[13].clamp_min == 0.0
    model = _seq()
    q8.quantize_dynamic(model, "weight_only")
    layer = model[0]
    assert type(layer) is q8.nn.Int8Conv2d and layer.activation == "weight_only" and layer.clamp_min == 0.0
    expected = F.relu(F.conv2d(x, layer.dequantized_weight(), layer.bias, layer.stride, layer.padding,
                               layer.dilation, layer.groups))
    assert torch.equal(layer(x), expected)


def test_qat_linear_relu_trains_fused_and_converts_to_the_epilogue_clamp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU6(), nn.Linear(16, 4)).train()
    q8.prepare_qat(model)
    assert type(model[0]) is QATLinear and (model[0].clamp_min, model[0].clamp_max) == (0.0, 6.0)
    assert type(model[1]) is nn.Identity
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(3):
        x = torch.randn(32, 12) * 3
        opt.zero_grad()
        F.mse_loss(model(x), torch.randn(32, 4)).backward()
        opt.step()
    model.eval()
    x = torch.randn(8, 12) * 3
    x[0] *= 4
    hidden = model[0](x)
    assert (hidden == 0).any() and (hidden == 6).any()  # the QAT layer clamps like the ReLU6 it replaced
    expected = model(x)
    q8.convert(model)
    assert type(model[0]) is q8.nn.Int8Linear and model[0].activation == "static"
    assert (model[0].clamp_min, model[0].clamp_max) == (0.0, 6.0)
    _close(model(x), expected, 0.02)


def test_int8_clamped_equals_the_layer_clamp():
    """Int8Clamped (what older q8 made of a Linear-ReLU; models pickled then still hold it) is the layer's own
    clamp computed after it, NaN kept."""
    lin = nn.Linear(16, 8)
    x = torch.randn(4, 16) * 3
    x[1, 0] = float("nan")
    for lo, hi in [(0.0, None), (0.0, 6.0), (None, -0.1)]:
        wrapped = Int8Clamped(q8.nn.Int8Linear.from_float(lin), lo, hi)
        own = q8.nn.Int8Linear.from_float(lin, clamp_min=lo, clamp_max=hi)
        torch.testing.assert_close(wrapped(x), own(x), rtol=0, atol=0, equal_nan=True)
        assert torch.jit.script(wrapped)(x)[1].isnan().all()


def test_prepare_qat_fuses_linear_bn():
    """Linear -> BatchNorm1d -> ReLU becomes a QATLinearBn1d (tests/python/test_qat_convbn.py checks it against
    torch.ao's LinearBn1d), found automatically or named by hand."""
    from q8.nn.qat_conv import QATLinearBn1d

    model = _seq().train()
    q8.prepare_qat(model)
    assert type(model[10]) is QATLinearBn1d and type(model[11]) is nn.Identity and type(model[12]) is nn.Identity
    assert model[10].clamp_min == 0.0 and model[10].bn.training
    hand = fuse_modules(_seq().train(), ["10", "11", "12"])
    q8.prepare_qat(hand, q8.QConfig(fuse=False))
    entry = [e for e in q8.conversion_report(hand).entries if e.name == "10"][0]
    assert entry.status == "converted" and type(hand[10]) is QATLinearBn1d


class Aliased(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.same_conv = self.conv  # an alias: replacing 'conv' would leave 'same_conv' unfused

    def forward(self, x):
        return self.bn(self.same_conv(x))


def test_aliased_layers_are_not_fused():
    torch.manual_seed(0)
    model = _randomize_bn(Aliased())
    x = torch.randn(2, 3, 6, 6)
    expected = model(x)
    assert auto_fuse(model) == []
    shared = nn.Conv2d(3, 3, 1)
    seqs = _randomize_bn(nn.Sequential(nn.Sequential(shared, nn.BatchNorm2d(3)), nn.Sequential(shared, nn.ReLU())))
    assert auto_fuse(seqs) == []
    assert torch.equal(model(x), expected)
