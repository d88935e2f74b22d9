"""Benchmark q8 fake-quantize ops against torch's on CPU, interleaved in one process.

    python benchmarks/bench_fake_quantize.py [--quick] [--threads N] [--out FILE]

For every case and size, q8, torch, a plain ``dst.copy_(src)`` and ``src.clone()`` are
timed in the same repetition loop (order alternating per repetition), so machine noise
hits all of them alike. Each timed run is several calls; the figure is the median over runs.
"""
import argparse
import ctypes
import math
import os
import platform
import resource
import statistics
import sys
import time

import torch

import q8

QMIN, QMAX = -128, 127
COLS = 1024                  # 2-D inputs are [n // COLS, COLS]
FRESH_ALLOC_MIB = 32         # above this, fresh outputs are mmap'ed and pay page faults
GOALS = {"fwd": 5.0, "fwd+bwd": 3.0}
GOAL_COPY_FRACTION = 0.5     # forward rows only


def minor_faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def bench(fns, reps, target_s, warmup=3):
    """Time fns in one interleaved repetition loop. Returns each fn's median seconds per call,
    its minor page faults per call, and the noise: the largest interquartile range / median
    of any fn's timed runs. Warm-up calls also size each timed run to about target_s."""
    iters = []
    for f in fns:
        t = []
        for _ in range(warmup):
            t0 = time.perf_counter()
            f()
            t.append(time.perf_counter() - t0)
        iters.append(max(1, round(target_s / min(t))))
    times, faults = [[] for _ in fns], [0] * len(fns)
    for r in range(reps):
        for i in (range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))):
            f0, t0 = minor_faults(), time.perf_counter()
            for _ in range(iters[i]):
                fns[i]()
            times[i].append((time.perf_counter() - t0) / iters[i])
            faults[i] += minor_faults() - f0
    medians = [statistics.median(t) for t in times]
    noise = max((q[2] - q[0]) / m for q, m in zip((statistics.quantiles(t, n=4) for t in times), medians))
    return medians, [f / (reps * k) for f, k in zip(faults, iters)], noise


def fwd_bwd(op, leaves, grad):
    """One forward + backward; grads are reset so each call allocates, as in training."""
    def run():
        for t in leaves:
            t.grad = None
        op().backward(grad)
    return run


def make_cases(n):
    """(name, kind, bytes per element, q8 fn, torch fn) for one size."""
    x = torch.randn(n // COLS, COLS)
    xg = x.detach().requires_grad_(True)
    grad = torch.randn_like(x)
    s, z = torch.tensor([0.05]), torch.tensor([3], dtype=torch.int32)
    s_row, z_row = torch.rand(x.size(0)) * 0.1 + 0.01, torch.randint(-5, 5, (x.size(0),), dtype=torch.int32)
    s_col, z_col = torch.rand(COLS) * 0.1 + 0.01, torch.randint(-5, 5, (COLS,), dtype=torch.int32)
    s_l, z_l = s.clone().requires_grad_(True), z.float().requires_grad_(True)

    def pt(inp, sc=s, zp=z):
        return (lambda: q8.fake_quantize_per_tensor(inp, sc, zp, QMIN, QMAX),
                lambda: torch.fake_quantize_per_tensor_affine(inp, sc, zp, QMIN, QMAX))

    def pc(inp, sc, zp, axis):
        return (lambda: q8.fake_quantize_per_channel(inp, sc, zp, axis, QMIN, QMAX),
                lambda: torch.fake_quantize_per_channel_affine(inp, sc, zp, axis, QMIN, QMAX))

    learn = (lambda: q8.fake_quantize_per_tensor(xg, s_l, z_l, QMIN, QMAX),
             lambda: torch._fake_quantize_learnable_per_tensor_affine(xg, s_l, z_l, QMIN, QMAX, 1.0))
    return [
        ("per-tensor", "fwd", 8, *pt(x)),
        ("per-channel axis=0", "fwd", 8, *pc(x, s_row, z_row, 0)),
        ("per-channel axis=1", "fwd", 8, *pc(x, s_col, z_col, 1)),
        ("per-tensor", "fwd+bwd", 16, *(fwd_bwd(f, [xg], grad) for f in pt(xg))),
        ("per-channel axis=0", "fwd+bwd", 16, *(fwd_bwd(f, [xg], grad) for f in pc(xg, s_row, z_row, 0))),
        ("per-tensor learnable s/zp", "fwd+bwd", 16, *(fwd_bwd(f, [xg, s_l, z_l], grad) for f in learn)),
    ]


def steady_heap():
    """glibc: never trim the heap and fix the mmap threshold at its 32 MiB maximum, so freed
    outputs up to 32 MiB are reused without new page faults. Larger ones are still mmap'ed."""
    libc = ctypes.CDLL("libc.so.6")
    return bool(libc.mallopt(-1, 2**30) and libc.mallopt(-3, 32 * 2**20))  # M_TRIM_THRESHOLD, M_MMAP_THRESHOLD


def header(threads, heap):
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.processor() or "unknown")
    par = torch.__config__.parallel_info().splitlines()
    backend = next((l.strip() for l in par if "parallel backend" in l), "?")
    mkl_line = next((l.strip() for l in par if "Math Kernel Library" in l), "not linked")
    blas = next((p.split("=", 1)[1] for p in torch.__config__.show().replace(",", " ").split()
                 if p.startswith("BLAS_INFO=")), "?")
    return [
        "# q8 vs torch fake-quantize benchmark (CPU, float32)",
        "",
        f"- machine: {cpu}; {os.cpu_count()} logical CPUs ({len(os.sched_getaffinity(0))} usable); "
        f"Python {platform.python_version()}",
        f"- torch {torch.__version__}; q8 {q8.__version__}, cpu_isa={q8.cpu_isa()}",
        f"- threads: torch.get_num_threads()={threads}; load average at start: "
        + ", ".join(f"{v:.2f}" for v in os.getloadavg()),
        f"- backend: {backend}; BLAS_INFO={blas}; MKL used: {torch.backends.mkl.is_available()} ({mkl_line})",
        f"- heap: {heap}",
        "",
    ]


NOTES = [
    "",
    "- time: median per call over the timed runs; q8, torch, copy and clone interleaved in one loop. "
    "noise: largest interquartile range / median of the timed runs in the row; high means a busy machine.",
    "- speedup = torch time / q8 time.",
    "- q8 GB/s counts the minimum traffic: fwd = 8 B/elem (read x, write y); fwd+bwd = 16 B/elem "
    "(fwd read x + write y, bwd read grad + write grad_input). copy GB/s = dst.copy_(src), 8 B/elem.",
    "- fwd+bwd: only x requires grad (straight-through), except 'learnable s/zp' where scale and a float "
    "zero_point also require grad (torch: _fake_quantize_learnable_per_tensor_affine, grad_factor=1.0). "
    "x.grad etc. are reset to None before each call, so both sides allocate grad_input.",
    f"- \u2020 sizes >= {FRESH_ALLOC_MIB} MiB: outputs allocated fresh on each call are mmap'ed and pay page "
    "faults (both sides allocate the same outputs). copy writes into a preallocated dst; clone "
    "(src.clone(), 8 B/elem) allocates its output on each call like the ops and shows that cost. "
    "Smaller outputs can pay faults too when glibc trims its heap (faults column, minor faults per call); "
    "--steady-heap stops that.",
    "- busy machine: with threads = all cores, any other load stalls the thread pool (copy GB/s far "
    "below its usual value shows it); rerun when quiet, or with --threads 1.",
    f"- goal: fwd speedup >= {GOALS['fwd']:g}x and q8/copy >= {GOAL_COPY_FRACTION:g}; "
    f"fwd+bwd speedup >= {GOALS['fwd+bwd']:g}x.",
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--quick", action="store_true", help="sizes 2**18 and 2**20, fewer reps (smoke test)")
    ap.add_argument("--out", help="also write the markdown report to this file")
    ap.add_argument("--steady-heap", action="store_true",
                    help="glibc mallopt: no heap trimming, fixed 32 MiB mmap threshold (see steady_heap)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sizes, reps, target_s = ([2**18, 2**20], 5, 0.01) if args.quick else ([2**18, 2**20, 2**22, 2**24], 7, 0.04)

    heap = "glibc defaults"
    if args.steady_heap:
        heap = "steady (no trim, mmap threshold 32 MiB)" if steady_heap() else "mallopt failed: glibc defaults"
    lines = header(torch.get_num_threads(), heap) + [
        "| case | op | elems | q8 ms | torch ms | speedup | q8 GB/s | copy GB/s | q8/copy | clone GB/s "
        "| faults q8/torch | noise | goal |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    print("\n".join(lines), flush=True)
    for n in sizes:
        src, dst = torch.randn(n), torch.empty(n)
        mark = "\u2020" if n * 4 >= FRESH_ALLOC_MIB * 2**20 else ""
        for name, kind, bpe, f_q8, f_torch in make_cases(n):
            if kind == "fwd":
                assert torch.equal(f_q8(), f_torch()), f"q8 and torch differ: {name}"
            (t_q8, t_torch, t_copy, t_clone), (fl_q8, fl_torch, _, _), noise = bench(
                [f_q8, f_torch, lambda: dst.copy_(src), src.clone], reps, target_s)
            speedup, gbs = t_torch / t_q8, bpe * n / t_q8 / 1e9
            copy_gbs, clone_gbs = 8 * n / t_copy / 1e9, 8 * n / t_clone / 1e9
            goal = [f">={GOALS[kind]:g}x {'PASS' if speedup >= GOALS[kind] else 'MISS'}"]
            if kind == "fwd":
                ok = gbs / copy_gbs >= GOAL_COPY_FRACTION
                goal.append(f"copy>={GOAL_COPY_FRACTION:g} {'PASS' if ok else 'MISS'}")
            row = (f"| {name} | {kind} | 2^{int(math.log2(n))}{mark} | {t_q8 * 1e3:.3f} | {t_torch * 1e3:.3f} | "
                   f"{speedup:.2f} | {gbs:.1f} | {copy_gbs:.1f} | {gbs / copy_gbs:.2f} | {clone_gbs:.1f} | "
                   f"{fl_q8:.0f}/{fl_torch:.0f} | {noise:.0%} | {'; '.join(goal)} |")
            lines.append(row)
            print(row, flush=True)
    print("\n".join(NOTES))
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(lines + NOTES) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
