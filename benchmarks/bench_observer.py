"""Benchmark q8.observe_fake_quantize against torch.fused_moving_avg_obs_fake_quant (CPU).

    python benchmarks/bench_observer.py [--quick] [--threads N]

One QAT step each (observe the batch, update the moving-average min/max and the
qparams, fake-quantize), per tensor and per channel, both sides interleaved in one
loop with a plain ``dst.copy_(src)`` of the input as the memory-bound reference;
median of the timed runs (bench_fake_quantize.bench). Both ops run with the
observer and fake quant on, on float32 [rows, 1024] inputs.
"""
import argparse
import os
import sys

import torch

import q8

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_fake_quantize import bench, header  # noqa: E402


def states(c):
    return (torch.full((c,), float("inf")), torch.full((c,), -float("inf")), torch.ones(c),
            torch.zeros(c, dtype=torch.int32))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [1 << 18] if args.quick else [1 << 18, 1 << 20, 1 << 22]
    reps, target = (5, 0.01) if args.quick else (7, 0.05)
    lines = header(torch.get_num_threads(), "glibc defaults")
    lines[0] = "# q8.observe_fake_quantize vs torch.fused_moving_avg_obs_fake_quant (CPU, float32)"
    lines += ["| case | elems | q8 ms | torch ms | speedup | copy ms | q8/copy | noise |",
              "|---|---:|---:|---:|---:|---:|---:|---|"]
    print("\n".join(lines), flush=True)
    on = torch.tensor([1], dtype=torch.long)
    for n in sizes:
        x = torch.randn(n // 1024, 1024) * 3
        dst = torch.empty_like(x)
        for name, axis in (("per-tensor", None), ("per-channel axis=0", 0)):
            c = 1 if axis is None else x.shape[0]
            sq, st = states(c), states(c)
            if axis is None:
                def tq():
                    return q8.observe_fake_quantize(x, on, on, *sq, 0.01, 0, 255, None)

                def tt():
                    return torch.fused_moving_avg_obs_fake_quant(x, on, on, st[0], st[1], st[2], st[3], 0.01,
                                                                 0, 255, 0, False, False)
            else:
                def tq():
                    return q8.observe_fake_quantize(x, on, on, *sq, 0.01, 0, 255, 0)

                def tt():
                    return torch.fused_moving_avg_obs_fake_quant(x, on, on, st[0], st[1], st[2], st[3], 0.01,
                                                                 0, 255, 0, True, False)
            (a, b, cp), _, noise = bench([tq, tt, lambda: dst.copy_(x)], reps, target)
            row = (f"| {name} | 2^{n.bit_length() - 1} | {a * 1e3:.3f} | {b * 1e3:.3f} | {b / a:.1f}x | "
                   f"{cp * 1e3:.3f} | {cp / a:.2f} | {noise:.0%} |")
            lines.append(row)
            print(row, flush=True)
    lines += ["", "- speedup = torch time / q8 time; q8/copy = copy time / q8 time (a step reads x twice: "
              "once to observe, once to fake-quantize, and writes the output and the mask)."]
    print(lines[-1])
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
