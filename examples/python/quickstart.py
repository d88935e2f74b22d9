"""q8 in a minute: calibrate, fake-quantize, train through it, quantize to int8, script and reload.

Run: .venv/bin/python examples/python/quickstart.py
"""
import os
import tempfile
import warnings

import torch

import q8

torch.manual_seed(0)
# torch 2.13 marks torch.jit.script as deprecated; q8 still supports it for C++ deployment.
warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.jit")
print(f"q8 {q8.__version__} | torch {torch.__version__} | CPU kernels: {q8.cpu_isa()}")

# 1. Calibrate a weight per output channel (symmetric int8) and an activation per tensor.
weight = torch.randn(64, 128) * 0.05
activation = torch.randn(32, 128) * 2 + 0.5
w_scale, w_zp = q8.choose_qparams(weight, -127, 127, symmetric=True, axis=0)
a_scale, a_zp = q8.choose_qparams(activation, -128, 127)
print(f"activation qparams: scale={a_scale.item():.5f} zero_point={a_zp.item()}")

# 2. Fake quantization is exactly torch's (bit for bit) and much faster.
fq = q8.fake_quantize_per_tensor(activation, a_scale, a_zp, -128, 127)
assert torch.equal(fq, torch.fake_quantize_per_tensor_affine(activation, a_scale, a_zp, -128, 127))
wq = q8.fake_quantize_per_channel(weight, w_scale, w_zp, 0, -127, 127)
print(f"per-channel weight error: {(wq - weight).abs().max().item():.2e} (max), "
      f"{(wq - weight).abs().mean().item():.2e} (mean)")

# 3. Real int8 codes, 4x smaller, and back.
q = q8.quantize(weight, w_scale, w_zp, 0, -127, 127, torch.int8)
back = q8.dequantize(q, w_scale, w_zp, 0)
assert torch.equal(back, wq)
print(f"int8 weight: {q.numel() * q.element_size()} bytes instead of {weight.numel() * 4}")


# 4. Quantization-aware training with a learnable activation scale (LSQ gradients).
class QATLinear(torch.nn.Module):
    def __init__(self, fin, fout):
        super().__init__()
        self.linear = torch.nn.Linear(fin, fout)
        self.scale = torch.nn.Parameter(torch.tensor([0.1]))
        self.zero_point = torch.nn.Parameter(torch.tensor([0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.linear.weight
        s, z = torch.ops.q8.choose_qparams(w.detach(), -127, 127, True, 0)
        w = torch.ops.q8.fake_quantize_per_channel(w, s, z, 0, -127, 127)
        x = torch.ops.q8.fake_quantize_per_tensor(x, self.scale, self.zero_point, -128, 127)
        return torch.nn.functional.linear(x, w, self.linear.bias)


model = QATLinear(128, 10)
target = torch.randn(32, 10)
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
for step in range(101):
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(activation), target)
    loss.backward()
    opt.step()
    if step % 25 == 0:
        print(f"QAT step {step:3d}: loss {loss.item():.4f}, activation scale {model.scale.item():.4f}")

# 5. TorchScript: the ops are C++ schemas, so the scripted model saves and reloads anywhere q8 is loaded.
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "qat_linear.pt")
    torch.jit.script(model).save(path)
    reloaded = torch.jit.load(path)
    assert torch.equal(reloaded(activation), model(activation))
    print(f"TorchScript round trip OK ({os.path.getsize(path)} bytes)")

# 6. Int8 inference: swap nn.Linear for q8.nn.Int8Linear (int8 weights, per-row
#    uint8 activations, int32 accumulation on the CPU's VNNI units).
net = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
x = torch.randn(64, 128)
ref = net(x)
q8.quantize_dynamic(net)
out = net(x)
print(f"int8 model: {net}")
print(f"int8 vs float32 output: relative error {((out - ref).norm() / ref.norm()).item():.2e}")
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "int8.pt")
    torch.jit.script(net).save(path)
    assert torch.equal(torch.jit.load(path)(x), out)
    print(f"int8 TorchScript round trip OK ({os.path.getsize(path)} bytes; the float32 weights alone are "
          f"{4 * (128 * 256 + 256 * 10)} bytes)")
