"""Benchmark q8's CUDA int8 conv2d against float32 and bfloat16 F.conv2d (cuDNN), interleaved, on one GPU.

    python benchmarks/bench_cuda_conv.py [--quick] [--reps R] [--json FILE]

Shapes are ResNet-style and MobileNetV2-style layers (batch N, channels_last activations):
3x3 / 1x1 dense convolutions and 3x3 depthwise ones. Contenders:

    fp32        F.conv2d(x, w, b), float32 channels_last (cuDNN; TF32 as torch's defaults say:
                torch.backends.cudnn.allow_tf32, on by default)
    bf16        F.conv2d(x, w, b), bfloat16 channels_last (cuDNN): the baseline of the ratios
    q8 dyn      q8.conv2d(x_bf16, packed, scale, b) "dynamic": per-sample quantization, int8
                conv, dequant + bias + ReLU, bfloat16 channels_last output (all included)
    q8 u8       q8.conv2d(x_u8, ..., "static", output_scale=...): uint8 codes in and out, as
                between two static int8 layers of a lowered graph (fused ReLU)

Every contender is warmed up, then timed with CUDA events in runs of enough calls to take about
--run-ms (20 ms; 5 ms with --quick); the contenders take turns within each repetition (the order
alternates), and the figure is the median over --reps repetitions (>= 5). Before timing, q8
dynamic is checked against the float32 F.conv2d of the dequantized weight (relative Frobenius
error), so a broken kernel cannot post a fast number (it reads WRONG). No goals are asserted:
this is a measurement.
"""
import argparse
import datetime
import json
import platform
import statistics
import sys

import torch
import torch.nn.functional as F

# (name, N, C, H, W, OC, kernel, stride, padding, groups)
SHAPES = [
    ("resnet stem 7x7/2", 32, 3, 224, 224, 64, 7, 2, 3, 1),
    ("resnet 3x3 64", 32, 64, 56, 56, 64, 3, 1, 1, 1),
    ("resnet 3x3 128/2", 32, 64, 56, 56, 128, 3, 2, 1, 1),
    ("resnet 3x3 256", 32, 256, 14, 14, 256, 3, 1, 1, 1),
    ("resnet 1x1 256->64", 32, 256, 56, 56, 64, 1, 1, 0, 1),
    ("mbv2 dw 3x3 144", 32, 144, 56, 56, 144, 3, 1, 1, 144),
    ("mbv2 dw 3x3 384", 32, 384, 14, 14, 384, 3, 1, 1, 384),
    ("mbv2 1x1 24->144", 32, 24, 56, 56, 144, 1, 1, 0, 1),
    ("resnet 3x3 64, N=1", 1, 64, 56, 56, 64, 3, 1, 1, 1),
]
QUICK = [SHAPES[1], SHAPES[5], SHAPES[8]]
MAX_ERR = 5e-2


def elapsed_s(run):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def bench(fns, reps, run_s, warmup=3):
    runners = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        one = min(elapsed_s(fn) for _ in range(3))
        iters = max(1, min(1000, int(run_s / max(one, 1e-7))))

        def run(fn=fn, iters=iters):
            for _ in range(iters):
                fn()
        runners[name] = (run, iters)
    times = {name: [] for name in fns}
    names = list(fns)
    for r in range(reps):
        for name in (names if r % 2 == 0 else names[::-1]):
            run, iters = runners[name]
            times[name].append(elapsed_s(run) / iters)
    return {name: statistics.median(t) for name, t in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="three shapes, short runs, 5 repetitions (smoke test)")
    ap.add_argument("--reps", type=int, help="timed repetitions per contender (default 9; 5 with --quick; >= 5)")
    ap.add_argument("--run-ms", type=float, help="length of one timed run in ms (default 20; 5 with --quick)")
    ap.add_argument("--json", help="also write the results as JSON to this file")
    args = ap.parse_args()

    if not torch.cuda.is_available():
        print(f"bench_cuda_conv: no CUDA GPU visible to torch (torch {torch.__version__}, built with CUDA "
              f"{torch.version.cuda}): nothing to measure.")
        return 0
    import q8
    if not torch._C._dispatch_has_kernel_for_dispatch_key("q8::conv2d", "CUDA"):
        print("bench_cuda_conv: q8 was built without its CUDA conv kernels; rebuild q8 with nvcc and a "
              "CUDA-enabled torch.")
        return 2
    reps = max(5, args.reps or (5 if args.quick else 9))
    run_s = (args.run_ms or (5.0 if args.quick else 20.0)) / 1e3
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    print(f"# q8 CUDA int8 conv2d benchmark ({'quick' if args.quick else 'full'})")
    print(f"date:   {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"GPU:    {props.name} (sm_{props.major}{props.minor}, {props.multi_processor_count} SMs, "
          f"{props.total_memory / 2**30:.0f} GiB)")
    print(f"torch:  {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}), "
          f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, Python {platform.python_version()}")
    print(f"timing: CUDA events, runs of ~{run_s * 1e3:g} ms, median of {reps} interleaved repetitions; "
          "microseconds per call")
    print()
    header = (f"{'layer':>22} {'N':>3} {'fp32':>9} {'bf16':>9} {'q8 dyn':>9} {'q8 u8':>9} "
              f"{'dyn/bf16':>9} {'u8/bf16':>8}  err")
    print(header)
    print("-" * len(header))
    results = []
    torch.backends.cudnn.benchmark = True
    for (name, n, c, h, w, oc, k, s, p, g) in (QUICK if args.quick else SHAPES):
        gen = torch.Generator(device=dev).manual_seed(n * 7 + c + oc)
        wf = torch.randn(oc, c // g, k, k, device=dev, generator=gen) * (2.0 / (c // g * k * k)) ** 0.5
        b = torch.randn(oc, device=dev, generator=gen) * 0.1
        x = torch.randn(n, c, h, w, device=dev, generator=gen).contiguous(memory_format=torch.channels_last)
        w8, ws = q8.quantize_weight(wf.reshape(oc, -1))
        w8 = w8.reshape(wf.shape)
        packed = torch.ops.q8.pack_conv_weight(w8, g)
        geo = dict(kernel_size=[k, k], stride=[s, s], padding=[p, p], groups=g)
        xb, wb, bb = x.bfloat16(), wf.bfloat16().contiguous(memory_format=torch.channels_last), b.bfloat16()
        wfc = wf.contiguous(memory_format=torch.channels_last)
        in_s, in_z = torch.tensor(0.05, device=dev), torch.tensor(128, device=dev)
        out_s, out_z = torch.tensor(0.05, device=dev), torch.tensor(0, device=dev)
        xu = torch.randint(0, 256, x.shape, dtype=torch.uint8, device=dev).contiguous(
            memory_format=torch.channels_last)
        ref = F.relu(F.conv2d(x, w8.float() * ws[:, None, None, None], b, stride=s, padding=p, groups=g))
        y = torch.ops.q8.conv2d(xb, packed, ws, b, **geo, clamp_min=0.0)
        err = ((y.float() - ref).norm() / ref.norm().clamp_min(1e-30)).item()
        fns = {
            "fp32": lambda: F.relu(F.conv2d(x, wfc, b, stride=s, padding=p, groups=g)),
            "bf16": lambda: F.relu(F.conv2d(xb, wb, bb, stride=s, padding=p, groups=g)),
            "q8_dyn": lambda: torch.ops.q8.conv2d(xb, packed, ws, b, **geo, clamp_min=0.0),
            "q8_u8": lambda: torch.ops.q8.conv2d(xu, packed, ws, b, **geo, activation="static", input_scale=in_s,
                                                 input_zero_point=in_z, clamp_min=0.0, output_scale=out_s,
                                                 output_zero_point=out_z),
        }
        t = bench(fns, reps, run_s)
        ok = err <= MAX_ERR
        r_dyn, r_u8 = t["bf16"] / t["q8_dyn"], t["bf16"] / t["q8_u8"]
        print(f"{name:>22} {n:>3} {t['fp32'] * 1e6:9.1f} {t['bf16'] * 1e6:9.1f} {t['q8_dyn'] * 1e6:9.1f} "
              f"{t['q8_u8'] * 1e6:9.1f} {r_dyn:8.2f}x {r_u8:7.2f}x  {err:.1e}{'' if ok else ' WRONG'}")
        results.append({"layer": name, "n": n, "c": c, "h": h, "w": w, "oc": oc, "kernel": k, "stride": s,
                        "padding": p, "groups": g, "seconds": t, "rel_err_dyn": err, "valid": ok})
        sys.stdout.flush()
    print()
    print("ratios: bf16 time / q8 time (> 1: q8 faster); err: q8 dynamic vs float32 F.conv2d of the dequantized "
          "weight (relative Frobenius)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gpu": props.name, "torch": torch.__version__, "results": results}, f, indent=1)
    return 0 if all(r["valid"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
