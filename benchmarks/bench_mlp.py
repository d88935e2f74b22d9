"""Linear -> ReLU stacks (MLPs): q8 with the ReLU in q8.linear's epilogue vs q8 without it, float32 and torch.ao.

    python benchmarks/bench_mlp.py [--quick] [--threads N] [--reps R] [--out FILE]

Models (random weights, eval, ``torch.no_grad()``), each ``Linear -> ReLU`` repeated, the
last Linear without an activation:

* classifier: 784 -> 512 -> 512 -> 256 -> 10 (an MNIST-sized MLP);
* FFN: 1024 -> 4096 -> 1024, ReLU in between (a transformer feed-forward block).

Contenders, interleaved in one loop (bench_fake_quantize.bench, median of the timed runs):

* float32: the model as built;
* q8 fused: ``q8.quantize_dynamic(model)``: the ReLUs fuse into the layers
  (``Int8Linear(clamp_min=0)``, the clamp in the GEMM's epilogue);
* q8 unfused: ``q8.quantize_dynamic(model, fuse=False)``: ``Int8Linear`` then ``nn.ReLU``,
  a separate pass over each hidden activation (what q8 did before the fused clamp);
* torch.ao: ``torch.ao.quantization.fuse_modules`` of each Linear-ReLU pair, then
  ``quantize_dynamic`` (``torch.ao.nn.intrinsic.quantized.dynamic.LinearReLU``, ReLU fused).

Before timing, q8 fused must equal q8 unfused bit for bit (the same op, the clamp moved).
"""
import argparse
import copy
import os
import sys
import warnings

import torch
from torch import nn

import q8

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_fake_quantize import bench, header  # noqa: E402


def mlp(sizes):
    layers = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i + 2 < len(sizes):
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


def torch_ao(model):
    pairs = [[str(i), str(i + 1)] for i, m in enumerate(model) if isinstance(m, nn.Linear)
             and i + 1 < len(model) and isinstance(model[i + 1], nn.ReLU)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fused = torch.ao.quantization.fuse_modules(copy.deepcopy(model), pairs)
        return torch.ao.quantization.quantize_dynamic(fused, {nn.Linear, torch.ao.nn.intrinsic.LinearReLU},
                                                      dtype=torch.qint8)


def runner(model, x):
    def run():
        with torch.no_grad():
            model(x)
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    reps = args.reps or (3 if args.quick else 9)
    target = 0.01 if args.quick else 0.1
    models = {"classifier 784-512-512-256-10": [784, 512, 512, 256, 10], "FFN 1024-4096-1024": [1024, 4096, 1024]}
    batches = (1, 64) if args.quick else (1, 16, 256)
    lines = header(torch.get_num_threads(), "glibc defaults")
    lines[0] = "# Linear -> ReLU MLPs: q8 (ReLU in the epilogue) vs q8 unfused vs float32 vs torch.ao dynamic (CPU)"
    lines += [f"- median of {reps} timed runs; dynamic int8 activations in q8 and torch.ao", "",
              "| model | batch | float32 ms | torch.ao ms | q8 unfused ms | q8 fused ms | fused vs unfused "
              "| q8 vs float32 | q8 vs torch.ao | noise |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    print("\n".join(lines), flush=True)
    for name, sizes in models.items():
        model = mlp(sizes)
        ao_model = torch_ao(model)
        fused = q8.quantize_dynamic(copy.deepcopy(model))
        unfused = q8.quantize_dynamic(copy.deepcopy(model), fuse=False)
        assert any(getattr(m, "clamp_min", None) == 0.0 for m in fused.modules())
        assert not any(isinstance(m, nn.ReLU) for m in fused.modules())
        for batch in batches:
            x = torch.randn(batch, sizes[0])
            with torch.no_grad():
                assert torch.equal(fused(x), unfused(x)), "q8 fused != q8 unfused"
            fns = [runner(model, x), runner(ao_model, x), runner(unfused, x), runner(fused, x)]
            (t_f, t_ao, t_u, t_q), _, noise = bench(fns, reps, target)
            row = (f"| {name} | {batch} | {t_f * 1e3:.3f} | {t_ao * 1e3:.3f} | {t_u * 1e3:.3f} | {t_q * 1e3:.3f} | "
                   f"{t_u / t_q:.2f}x | {t_f / t_q:.2f}x | {t_ao / t_q:.2f}x | {noise:.0%} |")
            lines.append(row)
            print(row, flush=True)
    notes = ["", "- ratios: time of the other / time of q8 fused (higher is better for q8 fused); noise: largest "
             "interquartile range / median of a row's timed runs."]
    print("\n".join(notes))
    lines += notes
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
