"""Benchmark q8's histogram observer against torch.ao.quantization.HistogramObserver (CPU).

    python benchmarks/bench_histogram.py [--quick] [--threads N] [--bins B]

One calibration step each, both sides interleaved in one loop (median of the timed
runs, bench_fake_quantize.bench):
  q8:    histogram_observe(x) + histogram_qparams(percentile 99.99)
  torch: HistogramObserver.forward(x) + calculate_qparams()
and the observe half alone (q8 histogram_observe vs HistogramObserver.forward).

This is not the same algorithm: torch's calculate_qparams searches the range that
minimizes the L2 quantization error of the histogram (_non_linear_param_search),
q8 clips at a percentile. It compares q8 with what users use now for histogram
calibration in PyTorch. Inputs: float32 [rows, 1024], the same tensor every step
(the range is steady after the first call on both sides), B bins on both sides.
"""
import argparse
import os
import sys

import torch
from torch.ao.quantization import HistogramObserver

import q8

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_fake_quantize import bench, header  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bins", type=int, default=2048)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [1 << 16] if args.quick else [1 << 16, 1 << 18, 1 << 20, 1 << 22]
    reps, target = (5, 0.01) if args.quick else (9, 0.1)
    lines = header(torch.get_num_threads(), "glibc defaults")
    lines[0] = "# q8.histogram_observe + histogram_qparams vs torch.ao.quantization.HistogramObserver (CPU, float32)"
    lines.insert(-1, f"- bins: {args.bins} on both sides; q8 percentile 99.99")
    lines += ["| case | elems | q8 ms | torch ms | speedup | noise |", "|---|---:|---:|---:|---:|---|"]
    print("\n".join(lines), flush=True)
    on = torch.tensor([1], dtype=torch.long)
    B = args.bins
    for n in sizes:
        x = torch.randn(n // 1024, 1024) * 3
        for name, qscheme, qrange in (("observe + qparams, affine [0, 255]", torch.per_tensor_affine, (0, 255)),
                                      ("observe + qparams, symmetric [-128, 127]", torch.per_tensor_symmetric,
                                       (-128, 127)),
                                      ("observe only", torch.per_tensor_affine, (0, 255))):
            symmetric = qscheme == torch.per_tensor_symmetric
            qmin, qmax = qrange
            dtype = torch.qint8 if qmin < 0 else torch.quint8
            obs = HistogramObserver(bins=B, dtype=dtype, qscheme=qscheme)
            st = (torch.zeros(B, dtype=torch.float64), torch.full((1,), float("inf")), torch.full((1,), -float("inf")))
            if name == "observe only":
                def tq():
                    q8.histogram_observe(x, on, *st)

                def tt():
                    obs(x)
            else:
                def tq():
                    q8.histogram_observe(x, on, *st)
                    return q8.histogram_qparams(*st, 99.99, qmin, qmax, symmetric)

                def tt():
                    obs(x)
                    return obs.calculate_qparams()
            (a, b), _, noise = bench([tq, tt], reps, target)
            row = f"| {name} | 2^{n.bit_length() - 1} | {a * 1e3:.3f} | {b * 1e3:.3f} | {b / a:.1f}x | {noise:.0%} |"
            lines.append(row)
            print(row, flush=True)
    lines += ["", "- speedup = torch time / q8 time, medians of interleaved timed runs; torch's "
              "calculate_qparams also runs an L2-optimal range search that q8 does not (q8 clips at a percentile)."]
    print(lines[-1])
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
