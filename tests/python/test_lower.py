"""q8.lower: uint8 tensors between the int8 convolutions of a converted model, residual adds fused.

Checks, on a Sequential CNN, a ResNet-style model (residual adds + ReLU) and a
MobileNetV2-style model (inverted residuals, depthwise 3x3, ReLU6):

* every lowered layer computes exactly what its eager counterpart computes on the
  same inputs (forward hooks record what each lowered layer received and returned;
  the eager layer is run on those inputs, with the fused add / clamp / requantization
  applied in the op's order): ``torch.equal``;
* the whole lowered model against the eager converted model: bit for bit where no
  uint8 tensor is used as a residual (Sequential CNN); otherwise within the effect of
  the residual's requantization (``|dequantize(quantize(y)) - y| <= scale / 2`` per
  element, then propagated by the next layers: we bound it relative to the output's
  range, see ``RESIDUAL_TOL``);
* the graph really passes uint8 (dtypes of the recorded outputs), the input model is
  unchanged, and the lowered model scripts, exports and compiles to the same result.
"""
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import q8
from q8.lower import lower
from q8.nn.conv import Int8Conv2d

# A uint8 residual differs from the eager float residual by at most half its scale per
# element; that moves the next layers' codes by about one step here and there. Measured
# max |lowered - eager| / max |eager| on these models: below 1e-2; bound 3e-2.
RESIDUAL_TOL = 3e-2


def converted(model, shape, batches=3):
    model = q8.prepare(model.eval())
    q8.calibrate(model, [torch.randn(shape) for _ in range(batches)], progress=False)
    return q8.convert(model).eval()


class SequentialCNN(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                         nn.ReLU6(), nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.Identity(), nn.Conv2d(16, 8, 1),
                         nn.Flatten(), nn.Linear(8 * 8 * 8, 10))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.down = nn.Conv2d(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x):
        identity = x if self.down is None else self.down(x)
        out = self.relu(self.conv1(x))
        out = self.conv2(out)
        out += identity
        return F.relu(out)


class ResNetStyle(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.layer1 = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 16, 1))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, 2), BasicBlock(32, 32, 1))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class InvertedResidual(nn.Module):
    def __init__(self, c, expand):
        super().__init__()
        h = c * expand
        self.expand = nn.Conv2d(c, h, 1)
        self.act1 = nn.ReLU6()
        self.dw = nn.Conv2d(h, h, 3, padding=1, groups=h)
        self.project = nn.Conv2d(h, c, 1)

    def forward(self, x):
        return x + self.project(F.relu6(self.dw(self.act1(self.expand(x)))))


class MobileNetV2Style(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.act = nn.ReLU6()
        self.blocks = nn.Sequential(InvertedResidual(8, 4), InvertedResidual(8, 4), InvertedResidual(8, 6))
        self.head = nn.Conv2d(8, 12, 1)

    def forward(self, x):
        x = self.blocks(self.act(self.stem(x)))
        return self.head(x).mean((2, 3))


class ResNetMaxPool(nn.Module):
    """torchvision's ResNet stem: conv-BN-ReLU, then a 3x3 stride-2 max pool (module or functional), then blocks
    whose first residual is the max pool's output."""

    def __init__(self, functional=False):
        super().__init__()
        self.functional = functional
        self.conv1 = nn.Conv2d(3, 16, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 16, 1))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(x, 3, 2, 1) if self.functional else self.maxpool(x)
        x = self.layer1(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def record(gm):
    """Forward hooks on the lowered Int8Conv2d layers: name -> (args, output)."""
    seen = {}
    handles = [m.register_forward_hook(lambda mod, args, out, name=name: seen.__setitem__(name, (args, out)))
               for name, m in gm.named_modules() if isinstance(m, Int8Conv2d)]
    return seen, handles


def check_layers_exact(gm, eager_model, seen):
    """Each lowered layer == its eager layer on the same inputs, with the fused epilogue in the op's order."""
    for name, (args, out) in seen.items():
        low = gm.get_submodule(name)
        ref = copy.deepcopy(eager_model.get_submodule(name))
        x = args[0]
        y = ref(x)  # the eager layer takes the recorded codes (uint8, static) or the float input
        if len(args) > 1:
            r = args[1]
            if r.dtype == torch.uint8:
                r = (r.int() - low.residual_zero_point).float() * low.residual_scale
            y = y + r
        if low.clamp_min is not None:
            y = torch.where(y < low.clamp_min, torch.tensor(low.clamp_min), y)
        if low.clamp_max is not None:
            y = torch.where(y > low.clamp_max, torch.tensor(low.clamp_max), y)
        if low.output_scale is not None:
            y = torch.clamp(torch.round(y * (1.0 / low.output_scale)) + low.output_zero_point, 0, 255)
            y = y.to(torch.uint8)
        assert torch.equal(out, y), (name, (out.float() - y.float()).abs().max())


def lowered_case(model, shape, x_scale=1.5):
    """Convert (calibrated on randn), lower, run on ``randn * x_scale``, check every layer exactly.

    A uint8 *residual* saturates at its reader's calibrated range (the eager model adds the
    unclipped float tensor): pass a smaller ``x_scale`` when a residual edge has no ReLU-like
    clamp keeping it inside, so that the whole-model bound RESIDUAL_TOL only measures rounding."""
    conv = converted(model, shape)
    before = {k: v.clone() for k, v in conv.state_dict().items()}
    clamps = [(m.clamp_min, m.clamp_max) for m in conv.modules() if isinstance(m, Int8Conv2d)]
    gm = lower(conv)
    assert isinstance(gm, torch.fx.GraphModule)
    # the input model is unchanged: same buffers (no output / residual qparams added), same clamps
    after = conv.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert clamps == [(m.clamp_min, m.clamp_max) for m in conv.modules() if isinstance(m, Int8Conv2d)]
    x = torch.randn(shape) * x_scale
    seen, handles = record(gm)
    y = gm(x)
    for h in handles:
        h.remove()
    assert y.dtype == torch.float32  # float boundary
    check_layers_exact(gm, conv, seen)
    return conv, gm, x, y, seen


def uint8_layers(seen):
    return sorted(n for n, (_, out) in seen.items() if out.dtype == torch.uint8)


def test_sequential_cnn_bit_exact():
    conv, gm, x, y, seen = lowered_case(SequentialCNN(), (2, 3, 16, 16))
    # conv -> ReLU -> conv -> ReLU6 -> conv -> Identity -> conv -> Flatten: the first three write uint8
    assert uint8_layers(seen) == ["0", "2", "4"], gm.q8_lowering_report
    assert gm.get_submodule("0").clamp_min == 0.0 and gm.get_submodule("2").clamp_max == 6.0
    assert torch.equal(y, conv(x))  # no uint8 residual: identical codes everywhere
    assert not any(n.op == "call_module" and isinstance(gm.get_submodule(n.target), (nn.ReLU, nn.ReLU6))
                   for n in gm.graph.nodes)


def test_resnet_style():
    conv, gm, x, y, seen = lowered_case(ResNetStyle(), (2, 3, 16, 16))
    report = "\n".join(gm.q8_lowering_report)
    for block in ("layer1.0", "layer1.1", "layer2.0", "layer2.1"):
        assert f"{block}.conv2: fused the residual add and the clamp (0.0, None)" in report, report
        assert len(seen[f"{block}.conv2"][0]) == 2  # called with the residual
    # adds are gone; every conv writes uint8 but the last (it feeds the float pooling) and the
    # downsampling shortcut (read only as a residual: no reader's input qparams to requantize to)
    assert not _add_nodes(gm), gm.code
    assert "layer2.0.down: float output (no int8 convolution reads it as its input; read as a residual: " \
        "q8.lower(model, calibration_data) would requantize it)" in report
    assert uint8_layers(seen) == sorted(n for n in seen if n not in ("layer2.1.conv2", "layer2.0.down")), report
    assert seen["layer1.1.conv2"][0][1].dtype == torch.uint8  # a uint8 residual
    ref = conv(x)
    assert (y - ref).abs().max() <= RESIDUAL_TOL * ref.abs().max(), (y - ref).abs().max()


def test_resnet_style_with_calibration_data():
    # the downsampling shortcut, read only as a residual, writes uint8 codes of the range seen on calibration_data
    conv = converted(ResNetStyle(), (2, 3, 16, 16))
    calib = [torch.randn(2, 3, 16, 16) for _ in range(3)]
    gm = lower(conv, calibration_data=[(x, torch.zeros(2)) for x in calib])  # (input, target) batches, as calibrate
    report = "\n".join(gm.q8_lowering_report)
    assert "from the output range seen on calibration_data) read as residual by 1 layer(s)" in report, report
    down = gm.get_submodule("layer2.0.down")
    reader = gm.get_submodule("layer2.0.conv2")
    assert torch.equal(down.output_scale, reader.residual_scale)
    assert torch.equal(down.output_zero_point, reader.residual_zero_point)
    # the scale is the observed range's: run the eager shortcut on the same data
    outs = []
    h = conv.get_submodule("layer2.0.down").register_forward_hook(lambda m, a, o: outs.append(o))
    with torch.no_grad():
        for x in calib:
            conv(x)
    h.remove()
    lo, hi = min(float(o.min()) for o in outs), max(float(o.max()) for o in outs)
    s_ref, z_ref = q8.choose_qparams(torch.tensor([lo, hi]), 0, 255)
    assert torch.equal(down.output_scale, s_ref) and int(down.output_zero_point) == int(z_ref)
    x = torch.randn(2, 3, 16, 16)
    seen, handles = record(gm)
    y = gm(x)
    for h in handles:
        h.remove()
    check_layers_exact(gm, conv, seen)
    assert seen["layer2.0.down"][1].dtype == torch.uint8 and seen["layer2.0.conv2"][0][1].dtype == torch.uint8
    ref = conv(x)
    assert (y - ref).abs().max() <= RESIDUAL_TOL * ref.abs().max(), (y - ref).abs().max()
    assert torch.equal(torch.jit.script(gm)(x), y)
    with pytest.raises(ValueError, match="calibration_data holds no input"):
        lower(conv, calibration_data=[])


def test_mobilenetv2_style():
    conv, gm, x, y, seen = lowered_case(MobileNetV2Style(), (2, 3, 32, 32))
    report = "\n".join(gm.q8_lowering_report)
    for i in range(3):
        assert f"blocks.{i}.project: fused the residual add" in report, report
        assert gm.get_submodule(f"blocks.{i}.dw").clamp_max == 6.0  # functional relu6 fused
        assert gm.get_submodule(f"blocks.{i}.expand").clamp_max == 6.0  # nn.ReLU6 fused
        assert gm.get_submodule(f"blocks.{i}.project").clamp_min is None  # the add has no ReLU
    assert uint8_layers(seen) == sorted(n for n in seen if n != "head"), report
    ref = conv(x)
    assert (y - ref).abs().max() <= RESIDUAL_TOL * ref.abs().max(), (y - ref).abs().max()


def test_script_export_compile_of_lowered():
    conv, gm, x, y, _ = lowered_case(ResNetStyle(), (2, 3, 16, 16))
    s = torch.jit.script(gm)
    assert torch.equal(s(x), y)
    ep = torch.export.export(gm, (x,))
    assert torch.equal(ep.module()(x), y)
    torch._dynamo.reset()
    assert torch.equal(torch.compile(gm, fullgraph=True, backend="aot_eager")(x), y)


@pytest.mark.parametrize("functional", [False, True])
def test_max_pool_between_int8_layers(functional):
    model = ResNetMaxPool(functional).eval()
    with torch.no_grad():
        for p_ in model.bn1.parameters():
            p_.uniform_(0.5, 1.5)
    conv, gm, x, y, seen = lowered_case(model, (2, 3, 32, 32))
    report = "\n".join(gm.q8_lowering_report)
    # the stem writes uint8 codes, the max pool runs on them, and its output is layer1.0's input and residual
    assert "conv1: uint8 output" in report and "through 1 max pool(s) on the codes (q8.max_pool2d)" in report, report
    pools = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is torch.ops.q8.max_pool2d]
    assert len(pools) == 1 and pools[0].args[1:] == ([3, 3], [2, 2], [1, 1], [1, 1], False), gm.code
    assert not any(n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.MaxPool2d)
                   or n.target is F.max_pool2d for n in gm.graph.nodes), gm.code
    assert seen["conv1"][1].dtype == torch.uint8
    assert seen["layer1.0.conv1"][0][0].dtype == torch.uint8 and seen["layer1.0.conv2"][0][1].dtype == torch.uint8
    assert torch.equal(seen["layer1.0.conv1"][0][0], q8.max_pool2d(seen["conv1"][1], 3, 2, 1))
    ref = conv(x)
    assert (y - ref).abs().max() <= RESIDUAL_TOL * ref.abs().max(), (y - ref).abs().max()
    assert torch.equal(torch.jit.script(gm)(x), y)
    assert torch.equal(torch.export.export(gm, (x,)).module()(x), y)


def test_max_pool_read_by_a_float_op_stays_float():
    class PoolTwice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            p = self.pool(torch.relu(self.conv(x)))
            return self.conv2(p) - p.mean()  # the pooled tensor is also read by a float op

    conv, gm, x, y, seen = lowered_case(PoolTwice(), (2, 3, 8, 8))
    report = "\n".join(gm.q8_lowering_report)
    assert "conv: float output (read by call_method mean)" in report, report
    assert seen["conv"][1].dtype == torch.float32
    assert torch.equal(y, conv(x))


@pytest.mark.parametrize("kind", ["scalar", "per_channel", "per_sample_relu"])
def test_add_of_a_broadcast_tensor(kind):
    # conv(x) + t where t broadcasts: fx cannot see shapes, so the add is fused as a residual; the layer then
    # adds it after the op (the op takes only residuals of the output's shape), as eager does: same result,
    # also with a fused ReLU and uint8 output.
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, padding=1)
            self.c2 = nn.Conv2d(8, 8, 3, padding=1)
            self.c3 = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            y = torch.relu(self.c1(x))
            if kind == "scalar":
                return self.c3(self.c2(y) + y.mean())
            if kind == "per_channel":
                return self.c3(self.c2(y) + y.mean((0, 2, 3), keepdim=True))
            return self.c3(torch.relu(self.c2(y) + y.mean((2, 3), keepdim=True)))

    conv = converted(Model(), (2, 3, 8, 8))
    gm = lower(conv)
    report = "\n".join(gm.q8_lowering_report)
    assert "c2: fused the residual add" in report and "c2: uint8 output" in report, report
    x = torch.randn(2, 3, 8, 8)
    y = gm(x)
    assert torch.equal(y, conv(x))
    assert torch.equal(torch.jit.script(gm)(x), y)
    # a residual that neither fits nor broadcasts: a clear error, eager and scripted
    c2 = gm.get_submodule("c2")
    for layer in (c2, torch.jit.script(c2)):
        with pytest.raises((ValueError, torch.jit.Error), match="residual must have the output's shape"):
            layer(torch.randn(2, 8, 8, 8), torch.randn(2, 5, 8, 8))


def test_float_stays_float_where_it_must():
    class TwoReaders(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.b = nn.Conv2d(4, 4, 1)
            self.c = nn.Conv2d(4, 4, 1)
            self.shared = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            t = torch.relu(self.a(x))
            u = self.b(t) * 2  # b: read by a float op
            v = self.c(t)  # a: read by b and c, with different input qparams unless equal
            return self.shared(self.shared(u + v))  # shared: called twice

    conv = converted(TwoReaders(), (2, 3, 8, 8))
    gm = lower(conv)
    report = "\n".join(gm.q8_lowering_report)
    assert "b: float output (read by call_function" in report
    assert "shared: called 2 times, left as it is" in report
    # a is read by b and c, calibrated on the same tensor: their qparams agree -> uint8
    assert "a: uint8 output" in report, report
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(gm(x), conv(x))
    # disagreeing readers: keep float
    conv.c.input_scale = conv.c.input_scale * 2
    gm = lower(conv)
    assert "a: float output (its readers' input qparams differ" in "\n".join(gm.q8_lowering_report)
    assert torch.equal(gm(x), conv(x))


def test_untraceable_model_lowers_its_children():
    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(*list(SequentialCNN())[:7])

        def forward(self, x):
            if x.sum() > 0:  # data-dependent: fx cannot trace this
                return self.body(x)
            return self.body(-x)

    conv = converted(Dynamic(), (2, 3, 16, 16))
    with pytest.warns(UserWarning, match="cannot be traced by torch.fx.*lowering its children"):
        out = lower(conv)
    assert type(out) is type(conv) and isinstance(out.body, torch.fx.GraphModule)
    assert any("body.0: uint8 output" in line for line in out.q8_lowering_report), out.q8_lowering_report
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(out(x), conv(x)) and torch.equal(out(-x), conv(-x))


def test_bad_argument():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        lower(lambda x: x)


def test_clamp_composition_with_an_already_fused_clamp():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.b = nn.Conv2d(4, 4, 3, padding=1)
            self.h = nn.Hardtanh(-1.0, 2.0)

        def forward(self, x):
            return self.h(self.b(F.relu6(self.a(x))))

    conv = converted(M(), (2, 3, 8, 8))
    conv.a.clamp_min = 0.0  # as q8.fuse leaves it: the ReLU fused, the functional relu6 still called
    conv.b.clamp_max = 1.0
    x = torch.randn(2, 3, 8, 8) * 3
    gm = lower(conv)
    assert (gm.a.clamp_min, gm.a.clamp_max) == (0.0, 6.0) and (gm.b.clamp_min, gm.b.clamp_max) == (-1.0, 1.0)
    assert torch.equal(gm(x), conv(x))
    assert not any(n.target is F.relu6 or (n.op == "call_module" and type(gm.get_submodule(n.target)) is nn.Hardtanh)
                   for n in gm.graph.nodes), gm.code


def test_linear_takes_the_relu_after_it():
    """A ReLU after an Int8Linear becomes its clamp, and a functional relu that q8's fusion kept after the clamp
    it fused (the demo CNN's fc1) is dropped: the lowered model calls neither, and equals the eager one."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc1 = nn.Linear(4 * 8 * 8, 16)
            self.fc2 = nn.Linear(16, 8)
            self.act = nn.ReLU6()
            self.fc3 = nn.Linear(8, 3)

        def forward(self, x):
            x = torch.relu(self.fc1(torch.flatten(torch.relu(self.conv(x)), 1)))
            return self.fc3(self.act(self.fc2(x)))

    conv = converted(M(), (2, 3, 8, 8))
    assert (conv.fc1.clamp_min, conv.fc1.clamp_max) == (0.0, None)  # fused by q8.prepare, torch.relu kept
    conv.fc2.clamp_min = conv.fc2.clamp_max = None  # as with QConfig(fuse=False): the ReLU6 module runs after
    conv.act = nn.ReLU6()
    x = torch.randn(2, 3, 8, 8) * 2
    expected = conv(x)
    gm = lower(conv)
    report = "\n".join(gm.q8_lowering_report)
    assert "fc1: dropped the clamp (0.0, None)" in report and "fc2: fused the clamp (0.0, 6.0)" in report, report
    assert (gm.fc2.clamp_min, gm.fc2.clamp_max) == (0.0, 6.0) and conv.fc2.clamp_min is None  # a copy is lowered
    assert not any(n.target is torch.relu or (n.op == "call_module" and type(gm.get_submodule(n.target)) is nn.ReLU6)
                   for n in gm.graph.nodes), gm.code
    assert torch.equal(gm(x), expected)


# ---------------------------------------------------------------------------- regressions
# q8.lower did nothing on q8._cnn_models' networks: it treated every class under ``q8`` as an
# fx leaf (so BasicBlock / InvertedResidual were never entered), and after q8's conv-BN(-ReLU)
# fusion the conv reaches the add through nn.Identity calls (folded BN, fused ReLU).


def _add_nodes(gm):
    # (by the function's name: str() of a builtin carries its address, which can contain "add")
    return [n for n in gm.graph.nodes
            if (n.op == "call_function" and "add" in getattr(n.target, "__name__", str(n.target)))
            or (n.op == "call_method" and n.target in ("add", "add_"))]


def test_only_q8_nn_layers_are_fx_leaves():
    from q8.lower import _Q8Tracer

    class Block(nn.Module):  # a plain block, as if defined in q8 (q8._cnn_models' are)
        def forward(self, x):
            return x

    Block.__module__ = "q8._user_blocks"
    tracer = _Q8Tracer()
    assert not tracer.is_leaf_module(Block(), "b")
    assert tracer.is_leaf_module(Int8Conv2d(3, 4, 1, activation="static"), "c")
    assert tracer.is_leaf_module(nn.ReLU(), "r")  # torch.nn layers stay leaves
    assert not tracer.is_leaf_module(nn.Sequential(nn.ReLU()), "s")


@pytest.mark.parametrize("name", ["resnet_style", "mobilenetv2_style"])
def test_q8_cnn_models(name):
    from q8 import _cnn_models as cnn

    torch.manual_seed(0)
    if name == "resnet_style":
        model, shape, blocks = cnn.resnet_style(width=8), (2, 3, 32, 32), ["layer1.0", "layer2.0", "layer3.0",
                                                                             "layer4.0"]
        fused = [f"{b}.conv2: fused the residual add and the clamp (0.0, None)" for b in blocks]
    else:
        model = cnn.MobileNetV2Style(width_mult=0.5, head=64, settings=((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2)),
                                     stem_stride=1)
        shape = (2, 3, 16, 16)
        # the stride-1 blocks with cin == cout: features.2 (24), features.4 and .5 (32); project = conv.6
        fused = [f"features.{i}.conv.6: fused the residual add (add" for i in (2, 4, 5)]
    conv, gm, x, y, seen = lowered_case(model, shape)
    report = "\n".join(gm.q8_lowering_report)
    for line in fused:
        assert line in report, report
    # the blocks were entered: their convs are graph nodes, no add and no Identity call is left
    assert not _add_nodes(gm), gm.code
    assert not any(n.op == "call_module" and type(gm.get_submodule(n.target)) is nn.Identity
                   for n in gm.graph.nodes), gm.code
    assert "removed the nn.Identity calls" in report
    assert len(uint8_layers(seen)) >= len(seen) - 5, report  # uint8 between the blocks' convs
    ref = conv(x)
    assert (y - ref).abs().max() <= RESIDUAL_TOL * ref.abs().max(), (y - ref).abs().max()


class _ConvBN(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.bn(self.conv(x))


def _bn_stats(model):
    """Non-trivial BatchNorm statistics (so that the folding is not a no-op)."""
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


def test_identity_between_conv_and_add():
    torch.manual_seed(0)  # deterministic (40 other seeds also pass the bounds)
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.a = nn.Conv2d(8, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)  # folded by q8's fusion: an nn.Identity call after a
            self.ident = nn.Identity()  # an explicit one

        def forward(self, x):
            s = torch.relu(self.stem(x))
            return self.ident(self.bn(self.a(s))) + s

    conv, gm, x, y, seen = lowered_case(_bn_stats(M()), (2, 3, 8, 8), x_scale=0.5)  # stem's uint8 residual
    report = "\n".join(gm.q8_lowering_report)
    assert type(conv.bn) is nn.Identity  # the conversion folded the BN
    assert "removed the nn.Identity calls (pass-throughs, e.g. a folded BatchNorm or a fused ReLU): bn, ident" \
        in report, report
    assert "a: fused the residual add (add, conv output as operand 0)" in report, report
    assert len(seen["a"][0]) == 2 and seen["a"][0][1].dtype == torch.uint8  # stem's uint8 codes as residual
    assert not _add_nodes(gm), gm.code
    ref = conv(x)
    assert (y - ref).abs().max() <= RESIDUAL_TOL * ref.abs().max()


def test_conv_output_as_second_operand():
    torch.manual_seed(0)  # deterministic (40 other seeds also pass the bounds)
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 3, 3, padding=1)
            self.b = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            x = x + self.a(x)  # float residual: the model input
            return torch.add(x * 0.5, self.b(x))  # a float op's output as the residual

    conv, gm, x, y, seen = lowered_case(M(), (2, 3, 8, 8))
    report = "\n".join(gm.q8_lowering_report)
    assert "a: fused the residual add (add, conv output as operand 1)" in report, report
    assert "b: fused the residual add (add_1, conv output as operand 1)" in report, report
    assert not _add_nodes(gm), gm.code
    assert torch.equal(y, conv(x))  # float residuals only: bit for bit


def test_inplace_adds():
    torch.manual_seed(0)  # deterministic (40 other seeds also pass the bounds)
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.a = nn.Conv2d(8, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 8, 3, padding=1)
            self.c = nn.Conv2d(8, 8, 1)
            self.d = nn.Conv2d(8, 8, 1)
            self.c_relu = nn.ReLU()  # fused into c by the conversion: c clamps, it cannot take the add

        def forward(self, x):
            s = self.stem(x)
            out = self.a(s)
            out += s  # fx records operator.add
            out = torch.relu(out)
            t = self.b(out)
            t.add_(out)  # in place into the conv output; fx keeps reading `t` by its name after it
            t = F.relu(t, inplace=True)
            u = self.c_relu(self.c(t))
            u.add_(self.d(t))  # in place into c's output (a fresh tensor), conv output second
            return u * 2.0  # reads the sum

    conv, gm, x, y, seen = lowered_case(M(), (2, 3, 8, 8), x_scale=0.75)  # stem's uint8 residual: no clamp
    report = "\n".join(gm.q8_lowering_report)
    assert "a: fused the residual add and the clamp (0.0, None) (add, conv output as operand 0" in report, report
    assert "b: fused the residual add and the clamp (0.0, None) (add_, conv output as operand 0" in report, report
    assert "d: fused the residual add (add__1, conv output as operand 1)" in report, report
    assert "c: float output (no int8 convolution reads it as its input; read as a residual: q8.lower(model, " \
        "calibration_data) would requantize it)" in report, report  # d's residual
    assert not _add_nodes(gm), gm.code
    # a reads stem's output as its input and as its residual, b likewise a's: uint8 for both uses
    assert seen["a"][0][0].dtype == seen["a"][0][1].dtype == torch.uint8, report
    assert seen["b"][0][0].dtype == seen["b"][0][1].dtype == torch.uint8, report
    ref = conv(x)
    assert (y - ref).abs().max() <= RESIDUAL_TOL * ref.abs().max()


def test_inplace_add_whose_write_is_visible_stays():
    torch.manual_seed(0)  # deterministic (40 other seeds also pass the bounds)
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 1)
            self.d = nn.Conv2d(4, 4, 1)
            self.e = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            u = self.c(x)
            w = u[:, :2]  # a view of u, taken before the add: it sees the write
            u.add_(self.d(u))
            x.add_(self.e(x))  # writes into the model's input: the caller sees it
            return u * w.sum() + x.sum()

    conv = converted(M(), (2, 3, 8, 8))
    gm = lower(conv)
    report = "\n".join(gm.q8_lowering_report)
    assert "add_: add left as a float op (c is read before the in-place add: getitem, d; the add writes into c, " \
        "which is read before it by getitem)" in report, report
    assert "add__1: add left as a float op (the add writes into x, which is not an int8 conv's output" \
        in report, report
    assert sum(n.op == "call_method" and n.target == "add_" for n in gm.graph.nodes) == 2, gm.code
    x = torch.randn(2, 3, 8, 8)
    x1, x2 = x.clone(), x.clone()
    assert torch.equal(gm(x1), conv(x2)) and torch.equal(x1, x2)


def test_shared_relu_module():
    """torchvision's BasicBlock: one ``self.relu`` for both calls, ``out += identity`` then ReLU."""
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(c)

        def forward(self, x):
            identity = x
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            out += identity
            return self.relu(out)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.relu = nn.ReLU()
            self.b1, self.b2 = Block(8), Block(8)

        def forward(self, x):
            return self.b2(self.b1(self.relu(self.stem(x)))).mean((2, 3))

    conv, gm, x, y, seen = lowered_case(_bn_stats(M()), (2, 3, 16, 16))
    report = "\n".join(gm.q8_lowering_report)
    for b in ("b1", "b2"):
        assert type(conv.get_submodule(f"{b}.relu")) is nn.ReLU  # shared: kept by the fusion
        assert (conv.get_submodule(f"{b}.conv1").clamp_min, conv.get_submodule(f"{b}.conv1").clamp_max) == (0.0, None)
        assert f"{b}.conv1: dropped the clamp (0.0, None) ({b}_relu): a no-op after the layer's own clamp" in report
        assert f"{b}.conv2: fused the residual add and the clamp (0.0, None)" in report, report
        assert (gm.get_submodule(f"{b}.conv2").clamp_min, gm.get_submodule(f"{b}.conv2").clamp_max) == (0.0, None)
    assert not any(n.op == "call_module" and not isinstance(gm.get_submodule(n.target), Int8Conv2d)
                   for n in gm.graph.nodes), gm.code  # no ReLU, no Identity left
    assert uint8_layers(seen) == ["b1.conv1", "b1.conv2", "b2.conv1", "stem"], report
    ref = conv(x)
    assert (y - ref).abs().max() <= RESIDUAL_TOL * ref.abs().max()
