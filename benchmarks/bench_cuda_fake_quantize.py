"""Benchmark q8's CUDA fake quantization against torch's and a device-to-device copy.

    python benchmarks/bench_cuda_fake_quantize.py [--quick] [--out FILE]

For each case and size, q8, torch (``torch.fake_quantize_per_{tensor,channel}_affine``
and its backward) and ``dst.copy_(src)`` run interleaved in one loop, timed with CUDA
events after a warm-up; the figure is the median of the timed runs. Tensors are far
larger than the L2 (60 MB on an H200) so the bandwidth is DRAM's. Goals (the CUDA
issue): forward at >= 0.8 of the copy's bandwidth and at least as fast as torch.
"""
import argparse
import datetime
import statistics
import sys

import torch

import q8

GOAL_COPY = 0.8
GOAL_TORCH = 1.0


def time_cuda(fns, reps, inner):
    """Median milliseconds per call of each fn, interleaved (order alternating per repetition)."""
    for f in fns:  # warm-up
        for _ in range(3):
            f()
    torch.cuda.synchronize()
    times = [[] for _ in fns]
    for r in range(reps):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fns[i]()
            end.record()
            end.synchronize()
            times[i].append(start.elapsed_time(end) / inner)
    return [statistics.median(t) for t in times], [
        (statistics.quantiles(t, n=4)[2] - statistics.quantiles(t, n=4)[0]) / statistics.median(t) for t in times]


def cases(n, dtype):
    dev = "cuda"
    x = torch.randn(n // 1024, 1024, device=dev, dtype=dtype) * 3
    s = torch.tensor(0.05, device=dev)
    z = torch.tensor(3, dtype=torch.int32, device=dev)
    sc = torch.rand(1024, device=dev) * 0.1 + 0.01
    zc = torch.randint(-5, 5, (1024,), dtype=torch.int32, device=dev)
    sr = torch.rand(x.shape[0], device=dev) * 0.1 + 0.01
    zr = torch.randint(-5, 5, (x.shape[0],), dtype=torch.int32, device=dev)
    g = torch.randn_like(x)
    xg = x.clone().requires_grad_()

    def fb(fn):
        def run():
            xg.grad = None
            fn(xg).backward(g)
        return run

    yield ("per-tensor", "fwd", x,
           lambda: q8.fake_quantize_per_tensor(x, s, z, -128, 127),
           lambda: torch.fake_quantize_per_tensor_affine(x, s, z, -128, 127))
    yield ("per-channel axis=0", "fwd", x,
           lambda: q8.fake_quantize_per_channel(x, sr, zr, 0, -128, 127),
           lambda: torch.fake_quantize_per_channel_affine(x, sr, zr, 0, -128, 127))
    yield ("per-channel axis=1", "fwd", x,
           lambda: q8.fake_quantize_per_channel(x, sc, zc, 1, -128, 127),
           lambda: torch.fake_quantize_per_channel_affine(x, sc, zc, 1, -128, 127))
    if dtype == torch.float32:
        yield ("per-tensor", "fwd+bwd", x,
               fb(lambda t: q8.fake_quantize_per_tensor(t, s, z, -128, 127)),
               fb(lambda t: torch.fake_quantize_per_tensor_affine(t, s, z, -128, 127)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--out")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 0
    reps = args.reps or (5 if args.quick else 9)
    sizes = [1 << 24] if args.quick else [1 << 24, 1 << 26, 1 << 28]
    props = torch.cuda.get_device_properties(0)
    lines = [
        "# q8 CUDA fake quantization vs torch and a device-to-device copy",
        "",
        f"- date: {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC",
        f"- GPU: {props.name}, {props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB",
        f"- torch {torch.__version__} (CUDA {torch.version.cuda}); q8 {q8.__version__}",
        f"- CUDA events, median of {reps} interleaved runs after 3 warm-up calls",
        "",
        "| case | op | dtype | elements | q8 ms | torch ms | copy ms | q8 vs torch | q8 GB/s | q8/copy | noise | goal |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    print("\n".join(lines), flush=True)
    for dtype in (torch.float32, torch.bfloat16):
        for n in sizes:
            for name, op, x, fq8, ftorch in cases(n, dtype):
                dst = torch.empty_like(x)
                inner = 3 if n >= (1 << 26) else 10
                (tq, tt, tc), noise = time_cuda([fq8, ftorch, lambda: dst.copy_(x)], reps, inner)
                nbytes = 2 * x.numel() * x.element_size() * (2 if op == "fwd+bwd" else 1)
                frac = tc / tq if op == "fwd" else None  # copy reads + writes once, like a forward
                goal = (f"copy>={GOAL_COPY} {'PASS' if frac >= GOAL_COPY else 'MISS'}; "
                        f"torch>={GOAL_TORCH} {'PASS' if tt / tq >= GOAL_TORCH else 'MISS'}") if frac else "—"
                row = (f"| {name} | {op} | {str(dtype).replace('torch.', '')} | 2^{n.bit_length() - 1} | {tq:.3f} | "
                       f"{tt:.3f} | {tc:.3f} | {tt / tq:.2f}x | {nbytes / tq / 1e6:.0f} | "
                       f"{'—' if frac is None else f'{frac:.2f}'} | {max(noise):.0%} | {goal} |")
                lines.append(row)
                print(row, flush=True)
            torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
