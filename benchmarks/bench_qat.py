"""Benchmark a QAT training step: q8.prepare_qat against torch.ao.quantization's eager QAT (CPU).

    python benchmarks/bench_qat.py [--quick] [--threads N]

One training step (forward, cross-entropy, backward, SGD step) of the same model
in three forms, interleaved in one loop (bench_fake_quantize.bench, median of the
timed runs):

* float: the plain float32 model;
* torch.ao: ``torch.ao.quantization.prepare_qat`` with ``get_default_qat_qconfig("x86")``
  (FusedMovingAvgObsFakeQuantize on weights, per channel, and on every layer's output);
* q8: ``q8.prepare_qat`` with the default ``q8.QConfig`` (weights per channel with the
  current min / max, inputs per tensor with the fused moving-average observer).

Both quantized forms fake-quantize every weight and one activation per layer, so
they do the same amount of quantization work. The columns give the step time,
the speedup of q8 over torch.ao, and what QAT costs over float for each.
"""
import argparse
import copy
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

import q8

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_fake_quantize import bench, header  # noqa: E402


def mlp(width):
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 10))


def cnn(channels):
    return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(channels * 16, 10))


def torch_ao_qat(model):
    ao = torch.ao.quantization
    model = copy.deepcopy(model).train()
    model.qconfig = ao.get_default_qat_qconfig("x86")
    return ao.prepare_qat(model, inplace=False)


def step_fn(model, x, y):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cases = [("MLP 3x1024, batch 256", mlp(1024), (256, 1024))]
    if not args.quick:
        cases += [("MLP 3x256, batch 64", mlp(256), (64, 256)),
                  ("CNN 2x conv3x3 64ch 32x32, batch 32", cnn(64), (32, 3, 32, 32))]
    else:
        cases[0] = ("MLP 3x256, batch 64", mlp(256), (64, 256))
    reps, target = (5, 0.02) if args.quick else (7, 0.2)
    lines = header(torch.get_num_threads(), "glibc defaults")
    lines[0] = "# QAT training step: q8.prepare_qat vs torch.ao.quantization.prepare_qat (CPU, float32)"
    lines += ["| model | float ms | torch.ao ms | q8 ms | q8 speedup vs torch.ao | torch.ao / float | q8 / float "
              "| noise |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    print("\n".join(lines), flush=True)
    for name, model, shape in cases:
        x = torch.randn(*shape)
        y = torch.randint(0, 10, (shape[0],))
        fl = copy.deepcopy(model).train()
        ta = torch_ao_qat(model)
        qq = q8.prepare_qat(copy.deepcopy(model)).train()
        (f, t, q), _, noise = bench([step_fn(fl, x, y), step_fn(ta, x, y), step_fn(qq, x, y)], reps, target)
        row = (f"| {name} | {f * 1e3:.3f} | {t * 1e3:.3f} | {q * 1e3:.3f} | {t / q:.2f}x | {t / f:.2f} | "
               f"{q / f:.2f} | {noise:.0%} |")
        lines.append(row)
        print(row, flush=True)
    lines += ["", "- step = forward + cross-entropy + backward + SGD step; speedup = torch.ao time / q8 time; "
              "x / float = step time over the float model's."]
    print(lines[-1])
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
