"""q8.nn.FakeQuantize, QATLinear, QATConv2d, Int8Conv2d and the workflow (prepare, calibrate, convert).

References: torch.ao.quantization's observers (running min / max), q8.choose_qparams
on the observed data (qparams), torch._fake_quantize_learnable_per_*_affine (LSQ),
and, for conversion, the fake-quantized model itself.
"""
import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import q8
from q8.nn import FakeQuantize, Int8Conv2d, Int8Linear, QATConv2d, QATLinear

ao = pytest.importorskip("torch.ao.quantization")


def fq_ref(x, scale, zp, qmin, qmax, axis=None):
    """Fake quantization in float64 from float32 qparams (x * (1 / scale), half to even), cast back."""
    s = scale.double()
    z = zp.double()
    if axis is not None:
        shape = [1] * x.dim()
        shape[axis] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    inv = (1.0 / scale.float()).double() if axis is None else (1.0 / scale.float()).double().reshape(s.shape)
    q = torch.clamp(torch.round(x.double() * inv) + z, qmin, qmax)
    return ((q - z) * s).to(x.dtype)


# ---------------------------------------------------------------- FakeQuantize observers
@pytest.mark.parametrize("qscheme", ["per_tensor_affine", "per_tensor_symmetric"])
def test_minmax_observer_matches_torch_minmax_observer(device, qscheme):
    fq = FakeQuantize("minmax", qscheme, device=device)
    obs = ao.MinMaxObserver()
    xs = [torch.randn(100, 7) * (i + 1) + i for i in range(4)]
    for x in xs:
        fq(x.to(device))
        obs(x)
    assert torch.equal(fq.running_min.cpu(), obs.min_val)
    assert torch.equal(fq.running_max.cpu(), obs.max_val)
    scale, zp = q8.choose_qparams(torch.cat([x.flatten() for x in xs]), fq.quant_min, fq.quant_max,
                                  fq.symmetric)
    assert torch.equal(fq.scale.cpu(), scale) and torch.equal(fq.zero_point.cpu(), zp)


def test_per_channel_minmax_matches_torch(device):
    fq = FakeQuantize("minmax", "per_channel_affine", channels=5, axis=1, device=device)
    obs = ao.PerChannelMinMaxObserver(ch_axis=1)
    xs = [torch.randn(9, 5, 3) * (i + 1) for i in range(3)]
    for x in xs:
        fq(x.to(device))
        obs(x)
    assert torch.equal(fq.running_min.cpu(), obs.min_val)
    assert torch.equal(fq.running_max.cpu(), obs.max_val)
    scale, zp = q8.choose_qparams(torch.cat(xs), 0, 255, False, 1)
    assert torch.equal(fq.scale.cpu(), scale) and torch.equal(fq.zero_point.cpu(), zp)


def test_moving_average_matches_torch_observer(device):
    fq = FakeQuantize("moving_average", averaging_constant=0.1, device=device)
    obs = ao.MovingAverageMinMaxObserver(averaging_constant=0.1)
    for i in range(6):
        x = torch.randn(64, 16) * (1 + i) - i
        fq(x.to(device))
        obs(x)
    assert torch.equal(fq.running_min.cpu(), obs.min_val)
    assert torch.equal(fq.running_max.cpu(), obs.max_val)
    scale, zp = q8.choose_qparams(torch.stack([obs.min_val, obs.max_val]), 0, 255)
    assert torch.equal(fq.scale.cpu(), scale) and torch.equal(fq.zero_point.cpu(), zp)


def test_current_observer_equals_quantize_weight(device):
    w = torch.randn(12, 20, device=device)
    fq = FakeQuantize("current", "per_channel_symmetric", channels=12, device=device)
    fq(w * 5)
    out = fq(w)  # only the current weight counts
    codes, scale = q8.quantize_weight(w)
    assert torch.equal(fq.scale, scale)
    assert torch.equal(fq.zero_point, torch.zeros_like(fq.zero_point))
    assert torch.equal(out, codes.float() * scale[:, None])


@pytest.mark.parametrize("observer", ["minmax", "current", "moving_average"])
def test_observers_ignore_non_finite(device, observer):
    x = torch.randn(50, device=device)
    fq = FakeQuantize(observer, device=device)
    fq(x)
    y = x.clone()
    y[3], y[7], y[9] = float("nan"), float("inf"), -float("inf")
    fq2 = FakeQuantize(observer, device=device)
    fq2(y)
    finite = y[torch.isfinite(y)]
    assert fq2.running_min.item() == finite.min().item() and fq2.running_max.item() == finite.max().item()
    assert torch.isfinite(fq2.scale).all()


@pytest.mark.parametrize("observer", ["minmax", "current", "moving_average"])
def test_flags(device, observer):
    fq = FakeQuantize(observer, device=device)
    x = torch.randn(30, device=device)
    fq(x)
    state = {k: v.clone() for k, v in fq.state_dict().items()}
    fq.disable_observer()
    out = fq(x * 10)
    for k, v in fq.state_dict().items():
        if k != "observer_enabled":
            assert torch.equal(v, state[k]), k
    assert torch.equal(out, fq_ref(x * 10, fq.scale, fq.zero_point, 0, 255))
    fq.disable_fake_quant()
    assert torch.equal(fq(x), x)
    fq.enable_observer()
    fq(x * 10)
    assert fq.running_max.item() > state["running_max"].item()


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("qscheme", ["per_tensor_affine", "per_tensor_symmetric", "per_channel_affine",
                                     "per_channel_symmetric"])
def test_bits_and_schemes_forward_and_gradient(device, bits, qscheme):
    per_channel = qscheme.startswith("per_channel")
    fq = FakeQuantize("minmax", qscheme, bits=bits, channels=4 if per_channel else None, device=device)
    qmin, qmax = q8.config.quant_range(bits, qscheme)
    assert (fq.quant_min, fq.quant_max) == (qmin, qmax)
    x = (torch.randn(4, 33, device=device) * 3).requires_grad_()
    fq.disable_fake_quant()
    fq(x.detach())  # observe only
    fq.disable_observer()
    fq.enable_fake_quant()
    x2 = (x.detach() * 1.5).requires_grad_()  # partly beyond the observed range: clamped
    out = fq(x2)
    axis = 0 if per_channel else None
    expected = fq_ref(x2.detach(), fq.scale, fq.zero_point, qmin, qmax, axis)
    assert torch.equal(out, expected)
    assert out.unique().numel() <= 2 ** bits * (4 if per_channel else 1)
    out.sum().backward()
    s = fq.scale if axis is None else fq.scale[:, None]
    z = fq.zero_point.float() if axis is None else fq.zero_point.float()[:, None]
    q = torch.round(x2.detach() * (1.0 / s)) + z
    mask = (q >= qmin) & (q <= qmax)
    assert torch.equal(x2.grad, mask.float())


@pytest.mark.parametrize("per_channel", [False, True])
def test_learnable_matches_torch_lsq(per_channel):
    qscheme = "per_channel_affine" if per_channel else "per_tensor_affine"
    fq = FakeQuantize("minmax", qscheme, channels=6 if per_channel else None, learnable=True)
    x = torch.randn(6, 40) * 2
    fq(x)  # the observer initializes the learnable qparams
    assert torch.equal(fq.lsq_scale.detach(), fq.scale)
    assert torch.equal(fq.lsq_zero_point.detach(), fq.zero_point.float())
    fq.disable_observer()
    with torch.no_grad():
        fq.lsq_scale.mul_(0.8)
    xg = (x * 1.3).requires_grad_()
    out = fq(xg)
    out.square().sum().backward()
    per = x.numel() // 6 if per_channel else x.numel()
    g = 1.0 / math.sqrt(per * 255)
    xr = (x * 1.3).requires_grad_()
    s = fq.lsq_scale.detach().clone().requires_grad_()
    z = fq.lsq_zero_point.detach().clone().requires_grad_()
    if per_channel:
        ref = torch._fake_quantize_learnable_per_channel_affine(xr, s, z, 0, 0, 255, g)
    else:
        ref = torch._fake_quantize_learnable_per_tensor_affine(xr, s.reshape(1), z.reshape(1), 0, 255, g)
    ref.square().sum().backward()
    assert torch.equal(out, ref)
    assert torch.equal(xg.grad, xr.grad)
    torch.testing.assert_close(fq.lsq_scale.grad, s.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(fq.lsq_zero_point.grad, z.grad, rtol=1e-5, atol=1e-7)


def test_learnable_scale_trains_and_stays_positive():
    torch.manual_seed(1)
    fq = FakeQuantize("minmax", "per_tensor_symmetric", bits=4, learnable=True)
    x = torch.randn(4096)
    fq(x)
    fq.disable_observer()
    assert fq.lsq_zero_point is None
    opt = torch.optim.Adam(fq.parameters(), lr=0.01)
    first = None
    for _ in range(100):
        loss = (fq(x) - x).square().mean()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.8 * first  # minmax is far from MSE-optimal at 4 bits: LSQ improves it
    with torch.no_grad():
        fq.lsq_scale.fill_(-1.0)
    fq(x)  # a non-positive learned scale is clamped before use, not an error
    assert fq.lsq_scale.item() > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="observer must be one of"):
        FakeQuantize("histogram")
    with pytest.raises(ValueError, match="qscheme must be one of"):
        FakeQuantize(qscheme="per_row")
    with pytest.raises(ValueError, match="bits must be an integer from 2 to 8"):
        FakeQuantize(bits=9)
    with pytest.raises(ValueError, match="needs channels"):
        FakeQuantize(qscheme="per_channel_affine")
    with pytest.raises(ValueError, match="percentile observer is per tensor"):
        FakeQuantize("percentile", "per_channel_affine", channels=3)
    with pytest.raises(ValueError, match="averaging_constant"):
        FakeQuantize(averaging_constant=0.0)
    with pytest.raises(ValueError, match="does not fit in 4 bits"):
        FakeQuantize(bits=4, quant_min=0, quant_max=255)
    fq = FakeQuantize(qscheme="per_channel_affine", channels=3)
    with pytest.raises(Exception, match="channel axis does not match"):
        fq(torch.randn(4, 5))
    with pytest.raises(ValueError, match="weight_qscheme must be per channel"):
        q8.QConfig(weight_qscheme="per_tensor_symmetric")
    with pytest.raises(ValueError, match="activation_observer must be one of"):
        q8.QConfig(activation_observer="kl")


@pytest.mark.parametrize("observer", ["minmax", "current", "moving_average"])
@pytest.mark.parametrize("learnable", [False, True])
def test_fake_quantize_scripting_and_state_dict(observer, learnable):
    fq = FakeQuantize(observer, "per_channel_affine", channels=3, axis=1, learnable=learnable)
    xs = [torch.randn(5, 3, 4) * (i + 1) for i in range(3)]
    scripted = torch.jit.script(copy.deepcopy(fq))
    for x in xs:
        assert torch.equal(fq(x), scripted(x))
    for k, v in fq.state_dict().items():
        assert torch.equal(v, scripted.state_dict()[k]), k
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    fresh = FakeQuantize(observer, "per_channel_affine", channels=3, axis=1, learnable=learnable)
    fq.disable_observer()
    fresh.load_state_dict(fq.state_dict())
    assert not fresh._observing
    loaded.disable_observer()
    x = torch.randn(5, 3, 4) * 7
    assert torch.equal(fresh(x), fq(x))
    assert torch.equal(loaded(x), fq(x))


def test_half_and_bfloat16_inputs(device):
    fq = FakeQuantize("minmax", device=device)
    x = torch.randn(100, device=device)
    for dtype in (torch.float16, torch.bfloat16):
        out = fq(x.to(dtype))
        assert out.dtype == dtype
        assert torch.equal(out, fq_ref(x.to(dtype), fq.scale, fq.zero_point, 0, 255))


def test_empty_and_zero_dim_inputs(device):
    fq = FakeQuantize("minmax", device=device)
    assert fq(torch.empty(0, 3, device=device)).shape == (0, 3)
    assert not fq.has_observed()
    out = fq(torch.tensor(2.5, device=device))
    assert out.shape == () and fq.running_max.item() == 2.5 and fq.running_min.item() == 0.0 or \
        fq.running_min.item() == 2.5


# ---------------------------------------------------------------- QAT layers
def test_qat_linear_forward_and_shared_parameters(device):
    lin = nn.Linear(16, 8).to(device)
    qat = QATLinear.from_float(lin)
    assert qat.weight is lin.weight and qat.bias is lin.bias
    x = torch.randn(10, 16, device=device)
    out = qat(x)
    s_in, z_in = qat.input_fake_quant.calculate_qparams()
    s_w, _ = qat.weight_fake_quant.calculate_qparams()
    codes, scale = q8.quantize_weight(lin.weight.detach())
    assert torch.equal(s_w, scale)
    expected = F.linear(fq_ref(x, s_in, z_in, 0, 255), codes.float() * scale[:, None], lin.bias)
    assert torch.equal(out, expected)
    out.sum().backward()
    assert lin.weight.grad is not None and lin.bias.grad is not None
    # a float state_dict loads into the QAT layer
    qat2 = QATLinear(16, 8, device=device)
    missing, unexpected = qat2.load_state_dict(lin.state_dict(), strict=False)
    assert not unexpected and all("fake_quant" in k for k in missing)


CONVS = [
    dict(in_channels=3, out_channels=8, kernel_size=3),
    dict(in_channels=4, out_channels=8, kernel_size=(3, 1), stride=2, padding=1, bias=False),
    dict(in_channels=4, out_channels=8, kernel_size=3, padding="same", dilation=2, groups=2),
    dict(in_channels=3, out_channels=6, kernel_size=3, padding=1, padding_mode="reflect"),
    dict(in_channels=3, out_channels=6, kernel_size=3, padding=2, padding_mode="circular"),
]


@pytest.mark.parametrize("cfg", CONVS)
def test_qat_conv_and_convert(device, cfg):
    conv = nn.Conv2d(**cfg).to(device)
    model = q8.prepare(nn.Sequential(conv))
    assert isinstance(model[0], QATConv2d) and model[0].weight is conv.weight
    x = torch.randn(4, cfg["in_channels"], 9, 10, device=device)
    q8.calibrate(model, [x[:2], x[2:]], progress=False)
    fq_out = model(x)
    w_codes, w_scale = q8.quantize_weight(conv.weight.detach().reshape(conv.out_channels, -1))
    s_in, z_in = model[0].input_fake_quant.calculate_qparams()
    expected = conv._conv_forward(fq_ref(x, s_in, z_in, 0, 255),
                                  (w_codes.float() * w_scale[:, None]).reshape(conv.weight.shape), conv.bias)
    torch.testing.assert_close(fq_out, expected, rtol=0, atol=1e-6)
    converted = q8.convert(copy.deepcopy(model))
    assert isinstance(converted[0], Int8Conv2d) and converted[0].input_scale is not None
    torch.testing.assert_close(converted(x), fq_out, rtol=0, atol=1e-6)
    scripted = torch.jit.script(converted)
    assert torch.equal(scripted(x), converted(x))


@pytest.mark.parametrize("cfg", CONVS)
def test_int8_conv2d_from_float(device, cfg):
    conv = nn.Conv2d(**cfg).to(device)
    m = Int8Conv2d.from_float(conv)
    x = torch.randn(2, cfg["in_channels"], 8, 11, device=device)
    codes, scale = q8.quantize_weight(conv.weight.detach().reshape(conv.out_channels, -1))
    w = (codes.float() * scale[:, None]).reshape(conv.weight.shape)
    assert torch.equal(m.dequantized_weight(), w)
    # "dynamic" (q8.conv2d) quantizes each sample to uint8 with its own min/max qparams:
    # the reference is the float convolution of that fake-quantized input (exact integer
    # accumulation in the kernel vs float32 sums here: float rounding only).
    xq = torch.cat([fq_ref(x[n:n + 1], *q8.choose_qparams(x[n], 0, 255), 0, 255) for n in range(x.size(0))])
    torch.testing.assert_close(m(x), conv._conv_forward(xq, w, conv.bias), rtol=0, atol=1e-5)
    torch.testing.assert_close(m(x), conv(x), rtol=0.05, atol=0.05)
    # "weight_only" keeps the float input: F.conv2d with the dequantized weight.
    wo = Int8Conv2d.from_float(conv, activation="weight_only")
    torch.testing.assert_close(wo(x), conv._conv_forward(x, w, conv.bias), rtol=0, atol=1e-6)
    # state_dict round trip, TorchScript, bf16 input, .half() keeps the buffers' dtypes
    m2 = Int8Conv2d(**cfg, device=device)
    m2.load_state_dict(m.state_dict())
    assert torch.equal(m2(x), m(x))
    assert torch.equal(torch.jit.script(m)(x), m(x))
    assert m(x.bfloat16()).dtype == torch.bfloat16
    m.half()
    assert m.weight_int8.dtype == torch.int8 and m.weight_scale.dtype == torch.float32


def test_int8_conv2d_file_is_a_quarter():
    conv = nn.Conv2d(64, 64, 3)
    sizes = []
    for mod in (conv, Int8Conv2d.from_float(conv)):
        buf = io.BytesIO()
        torch.save(mod.state_dict(), buf)
        sizes.append(buf.tell())
    assert sizes[1] < 0.27 * sizes[0]


def test_int8_conv2d_bad_arguments():
    with pytest.raises(TypeError, match="expected a torch.nn.Conv2d"):
        Int8Conv2d.from_float(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="both input_scale and input_zero_point"):
        Int8Conv2d.from_float(nn.Conv2d(1, 1, 1), input_scale=torch.tensor(0.1))
    with pytest.raises(ValueError, match=r"input_zero_point must be an integer in \[0, 255\]"):
        Int8Conv2d.from_float(nn.Conv2d(1, 1, 1), "static", torch.tensor(0.1), torch.tensor(300))
    with pytest.raises(ValueError, match="weight zero points must be 0"):
        Int8Conv2d.from_float(nn.Conv2d(2, 2, 1), weight_qparams=(torch.ones(2), torch.ones(2, dtype=torch.int32)))


# ---------------------------------------------------------------- workflow
def mlp():
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5))


def blobs(n, generator):
    centers = torch.randn(5, 20, generator=torch.Generator().manual_seed(123)) * 0.6
    labels = torch.randint(0, 5, (n,), generator=generator)
    return centers[labels] + torch.randn(n, 20, generator=generator), labels


def train(model, x, y, epochs, lr=0.05):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(epochs):
        for i in range(0, len(x), 64):
            loss = F.cross_entropy(model(x[i:i + 64]), y[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_prepare_qat_train_convert_keeps_accuracy():
    g = torch.Generator().manual_seed(0)
    x, y = blobs(2048, g)
    xt, yt = blobs(1024, g)
    float_model = train(mlp(), x, y, 5)
    acc_float = accuracy(float_model, xt, yt)
    assert acc_float > 0.8

    qat = q8.prepare_qat(copy.deepcopy(float_model))
    assert all(isinstance(qat[i], QATLinear) for i in (0, 2, 4))
    train(qat, x, y, 2, lr=0.01)
    q8.freeze_observers(qat)
    acc_qat = accuracy(qat, xt, yt)
    converted = q8.convert(copy.deepcopy(qat))
    assert all(isinstance(converted[i], Int8Linear) and converted[i].activation == "static" for i in (0, 2, 4))
    with torch.no_grad():
        torch.testing.assert_close(converted(xt), qat(xt), rtol=0, atol=2e-5)
    acc_int8 = accuracy(converted, xt, yt)
    assert acc_int8 >= acc_float - 0.01 and abs(acc_int8 - acc_qat) <= 0.002

    ptq = q8.prepare(copy.deepcopy(float_model))
    q8.calibrate(ptq, [(x[i:i + 128], y[i:i + 128]) for i in range(0, 1024, 128)], progress=False)
    static = q8.convert(ptq)
    assert accuracy(static, xt, yt) >= acc_float - 0.01

    dynamic = q8.quantize_dynamic(copy.deepcopy(float_model))
    assert accuracy(dynamic, xt, yt) >= acc_float - 0.01


def test_calibrate_details():
    model = q8.prepare(mlp())
    model.train()
    batches = [torch.randn(8, 20) for _ in range(5)]
    q8.calibrate(model, iter(batches), num_batches=2, progress=False)
    assert model.training  # the mode is restored
    fq = model[0].input_fake_quant
    assert fq.observer_enabled.item() == 0 and fq.fake_quant_enabled.item() == 1
    assert fq.observer == "minmax"  # prepare's default (q8.quantization.PTQ_CONFIG)
    expected = ao.MinMaxObserver()
    for b in batches[:2]:
        expected(b)
    assert torch.equal(fq.running_min, expected.min_val) and torch.equal(fq.running_max, expected.max_val)
    with pytest.raises(ValueError, match="no q8.nn.FakeQuantize modules"):
        q8.calibrate(mlp(), batches)
    with pytest.raises(ValueError, match="data gave no batches"):
        q8.calibrate(q8.prepare(mlp()), [])


def test_config_skip_and_observers():
    cfg = q8.QConfig(activation_observer="minmax", skip=("4",))
    model = q8.prepare_qat(mlp(), cfg)
    assert type(model[4]) is nn.Linear and isinstance(model[0], QATLinear)
    assert model[0].input_fake_quant.observer == "minmax"
    with pytest.raises(ValueError, match="skip names"):
        q8.prepare_qat(mlp(), q8.QConfig(skip=("fc9",)))
    with pytest.raises(TypeError, match="must be a q8.QConfig"):
        q8.prepare_qat(mlp(), {"bits": 8})


def test_convert_errors():
    with pytest.raises(ValueError, match="input observer has seen no data"):
        q8.convert(q8.prepare(mlp()))
    four_bit = q8.prepare_qat(mlp(), q8.QConfig(activation_bits=4))
    four_bit(torch.randn(3, 20))
    with pytest.raises(ValueError, match=r"uint8 activations quantized per tensor in \[0, 255\]"):
        q8.convert(four_bit)
    # 4-bit weights convert: codes in [-7, 7] stored in int8
    w4 = q8.prepare_qat(mlp(), q8.QConfig(weight_bits=4))
    x = torch.randn(16, 20)
    w4(x)
    q8.freeze_observers(w4)
    ref = w4(x)
    conv = q8.convert(copy.deepcopy(w4))
    assert conv[0].weight_int8.abs().max() <= 7
    torch.testing.assert_close(conv(x), ref, rtol=0, atol=1e-5)


def test_quantize_dynamic_converts_convs():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    x = torch.randn(2, 1, 8, 8)
    ref = model(x)
    q = q8.quantize_dynamic(model)
    assert isinstance(q[0], Int8Conv2d) and q[0].input_scale is None and isinstance(q[2], Int8Linear)
    torch.testing.assert_close(q(x), ref, rtol=0.05, atol=0.05)


def test_prepared_model_scripts_and_round_trips_state_dict():
    model = q8.prepare_qat(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)))
    x = torch.randn(2, 1, 8, 8)
    model(x)
    scripted = torch.jit.script(copy.deepcopy(model))
    assert torch.equal(scripted(x), model(x))
    fresh = q8.prepare_qat(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)))
    fresh.load_state_dict(model.state_dict())
    q8.freeze_observers(fresh)
    q8.freeze_observers(model)
    assert torch.equal(fresh(x), model(x))


@pytest.mark.parametrize("observer", ["moving_average", "minmax", "current"])
@pytest.mark.parametrize("learnable", [False, True])
def test_compile_fullgraph_training_step(observer, learnable):
    cfg = q8.QConfig(activation_observer=observer, learnable=learnable)
    model = q8.prepare_qat(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)), cfg)
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    for step in range(3):
        x = torch.randn(4, 1, 8, 8) * (step + 1)
        out_c, out_e = compiled(x), eager(x)
        assert torch.equal(out_c, out_e)
        out_c.square().sum().backward()
        out_e.square().sum().backward()
    for (name, a), b in zip(model.state_dict().items(), eager.state_dict().values()):
        assert torch.equal(a, b), name
    for (name, a), b in zip(model.named_parameters(), eager.parameters()):
        assert torch.equal(a.grad, b.grad), name


# ---------------------------------------------------------------- percentile observer
def test_percentile_observer_matches_quantiles(device):
    fq = FakeQuantize("percentile", percentile=99.0, bins=2048, device=device)
    xs = [torch.randn(20000) * (i + 1) + 0.5 * i for i in range(3)]  # the range grows twice
    for x in xs:
        fq(x.to(device))
    data = torch.cat(xs).double()
    assert fq.histogram.sum().item() == data.numel()
    assert fq.running_min.item() == data.min().item() and fq.running_max.item() == data.max().item()
    lo, hi = (torch.quantile(data, q).item() for q in (0.005, 0.995))
    bin_width = (data.max() - data.min()).item() / 2048
    # the kept range [lo, hi] within a few bin widths (re-binned counts are spread uniformly)
    s_lo = -fq.zero_point.item() * fq.scale.item()
    s_hi = (255 - fq.zero_point.item()) * fq.scale.item()
    assert abs(s_lo - lo) < 4 * bin_width + fq.scale.item()
    assert abs(s_hi - hi) < 4 * bin_width + fq.scale.item()


def test_percentile_100_equals_minmax(device):
    fq = FakeQuantize("percentile", percentile=100.0, device=device)
    mm = FakeQuantize("minmax", device=device)
    for i in range(3):
        x = torch.randn(500, device=device) * (i + 2) + i
        fq(x)
        mm(x)
    assert torch.equal(fq.scale, mm.scale) and torch.equal(fq.zero_point, mm.zero_point)
    x = torch.randn(300, device=device) * 4
    assert torch.equal(fq(x), mm(x))


def test_percentile_clips_outliers_better_than_minmax():
    torch.manual_seed(3)
    x = torch.randn(100000)
    x[:10] = 1000.0  # a few outliers stretch a min/max range
    pct = FakeQuantize("percentile", "per_tensor_symmetric", percentile=99.9)
    mm = FakeQuantize("minmax", "per_tensor_symmetric")
    err = {}
    for name, fq in (("percentile", pct), ("minmax", mm)):
        fq(x)
        err[name] = (fq(x[10:]) - x[10:]).square().mean().item()
    assert err["percentile"] < 0.01 * err["minmax"]


def test_percentile_scripting_calibration_and_convert():
    model = q8.prepare(mlp(), q8.QConfig(activation_observer="percentile", percentile=99.9))
    assert model[0].input_fake_quant.histogram.numel() == 2048
    scripted = torch.jit.script(copy.deepcopy(model))
    xs = [torch.randn(64, 20) for _ in range(3)]
    for x in xs:
        assert torch.equal(scripted(x), model(x))
    q8.calibrate(model, xs, progress=False)
    fq_out = model(xs[0])
    converted = q8.convert(copy.deepcopy(model))
    torch.testing.assert_close(converted(xs[0]), fq_out, rtol=0, atol=2e-5)
