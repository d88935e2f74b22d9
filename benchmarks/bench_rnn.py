"""Benchmark q8's int8 LSTM / GRU against float32 torch.nn and torch.ao's dynamic int8 LSTM / GRU (CPU).

    python benchmarks/bench_rnn.py [--quick] [--threads 2] [--reps 7]

For each model (2 layers unless noted; input size = hidden size), the contenders run one forward
over the same input in one interleaved repetition loop (the order rotates each repetition, so
machine noise hits all alike); figures are medians over the repetitions, noise is the interquartile
range over the median of each contender's runs:

    fp32      torch.nn.LSTM / GRU, float32                     the baseline of the ratios
    ao dyn    torch.ao.quantization.quantize_dynamic(model, {nn.LSTM, nn.GRU}, dtype=torch.qint8)
    q8 dyn    q8.nn.Int8LSTM / Int8GRU .from_float(model)      (activation="dynamic")

Goals (rows = batch x seq >= 512): q8 >= 1.3x ao dyn and >= 2x fp32. Before timing, each q8 model is
checked against fp32 (max abs output error), so a broken layer cannot post a fast number.
"""
import argparse
import platform
import re
import statistics
import subprocess
import time
import warnings

import torch
import torch.nn as nn

import q8
from q8.nn import Int8GRU, Int8LSTM

# kind, hidden, seq, batch
CASES = [
    ("LSTM", 256, 64, 8),
    ("LSTM", 512, 64, 16),
    ("LSTM", 1024, 128, 8),
    ("GRU", 256, 64, 8),
    ("GRU", 512, 64, 16),
    ("GRU", 1024, 128, 8),
    ("LSTM", 512, 128, 1),   # streaming: batch 1
    ("GRU", 512, 128, 1),
]
QUICK_CASES = [("LSTM", 256, 64, 8), ("GRU", 256, 64, 8), ("LSTM", 256, 32, 1)]
MAX_ERR = 5e-2


class Model(nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        return self.rnn(x)[0]


def machine():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:  # noqa: BLE001
        name = platform.processor()
    blas = re.findall(r"BLAS_INFO=([^,\s]+)", torch.__config__.show())
    return name, "BLAS " + (blas[0] if blas else "?")


def bench(fns, reps):
    times = {k: [] for k in fns}
    keys = list(fns)
    for r in range(reps):
        order = keys[r % len(keys):] + keys[:r % len(keys)]
        for k in order:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    out = {}
    for k, v in times.items():
        med = statistics.median(v)
        q = statistics.quantiles(v, n=4) if len(v) >= 4 else [med, med, med]
        out[k] = (med, (q[2] - q[0]) / med)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    name, blas = machine()
    print(f"machine: {name}; torch {torch.__version__}; threads {torch.get_num_threads()}; {blas}; "
          f"q8 cpu isa {q8.ops.cpu_isa()}; reps {args.reps if not args.quick else 3}")
    reps = 3 if args.quick else args.reps
    print("| model | hidden | seq x batch (rows) | fp32 ms | ao dyn ms | q8 dyn ms | q8 vs fp32 | q8 vs ao | "
          "noise fp32/ao/q8 | q8 max err | ao max err |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    torch.manual_seed(0)
    for kind, hidden, seq, batch in (QUICK_CASES if args.quick else CASES):
        cls, qcls = (nn.LSTM, Int8LSTM) if kind == "LSTM" else (nn.GRU, Int8GRU)
        fp = Model(cls(hidden, hidden, 2)).eval()
        ao = torch.ao.quantization.quantize_dynamic(fp, {nn.LSTM, nn.GRU}, dtype=torch.qint8, inplace=False)
        q = Model(qcls.from_float(fp.rnn)).eval()
        x = torch.randn(seq, batch, hidden)
        with torch.inference_mode():
            ref = fp(x)
            err_q = (q(x) - ref).abs().max().item()
            err_ao = (ao(x) - ref).abs().max().item()
            if err_q > MAX_ERR:
                print(f"| {kind} | {hidden} | WRONG: q8 max err {err_q:.3g} |")
                continue
            fns = {"fp32": lambda: fp(x), "ao": lambda: ao(x), "q8": lambda: q(x)}
            for f in fns.values():  # warm-up (TorchScript profiling runs, allocations)
                f()
                f()
            r = bench(fns, reps)
        t = {k: v[0] * 1e3 for k, v in r.items()}
        print(f"| {kind} | {hidden} | {seq} x {batch} ({seq * batch}) | {t['fp32']:.1f} | {t['ao']:.1f} | "
              f"{t['q8']:.1f} | {t['fp32'] / t['q8']:.2f}x | {t['ao'] / t['q8']:.2f}x | "
              f"{r['fp32'][1]:.0%}/{r['ao'][1]:.0%}/{r['q8'][1]:.0%} | {err_q:.2g} | {err_ao:.2g} |", flush=True)


if __name__ == "__main__":
    main()
