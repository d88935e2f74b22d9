"""Benchmark q8's CUDA int8 linear against torch._int_mm and bfloat16 F.linear, interleaved, on one GPU.

    python benchmarks/bench_cuda_linear.py [--quick] [--reps R] [--no-graph] [--json FILE]

Shapes are (M rows of input, K in-features, N out-features); activations, weights and bias are
bfloat16 for F.linear, bfloat16 activations and float32 bias for q8 (its canonical weight comes
from q8.quantize_weight of the same float weight). Contenders:

    bf16        F.linear(x, w, b)                            cuBLAS bf16: the baseline of the ratios
    int_mm      torch._int_mm(a, w_int8.t())                 cuBLASLt int8 in, int32 out: the raw int8
                                                             GEMM with nothing around it (M > 16 only)
    q8 dyn      q8.linear(x, packed, scale, b, "dynamic")    per-row activation quantization, int8 GEMM,
                                                             dequant + bias + cast (all included)
    q8 wo       q8.linear(..., "weight_only")                int8 weights, bf16 activations (M <= 16)

Every contender is warmed up, then timed with CUDA events in runs of enough calls to take about
--run-ms (20 ms; 5 ms with --quick); the contenders take turns within each repetition (the order
alternates), and the figure is the median over --reps repetitions (>= 5). Eager timing includes
the host-side cost of each call (for M <= 16 it can dominate); for M <= 16 the same calls are also
timed replayed from a CUDA graph (GPU time only, as a decoder running under CUDA graphs sees it),
unless --no-graph. Before timing, q8 dynamic is checked against the float32 F.linear (relative
Frobenius error) and q8 weight_only against F.linear with the dequantized weight, so a broken
kernel cannot post a fast number (its goals read WRONG).

Goals (PASS / MISS): at 4096^3 and M=8192, K=N=4096, q8 dynamic >= 0.7x torch._int_mm and
>= 1.3x bf16 F.linear; at M = 1 and 16, q8 dynamic and weight_only >= 1.3x bf16 F.linear.
"""
import argparse
import datetime
import json
import platform
import statistics
import sys

import torch
import torch.nn.functional as F

BIG_SHAPES = [(4096, 4096, 4096), (8192, 4096, 4096)]
SMALL_SHAPES = [(m, k, n) for (k, n) in [(4096, 4096), (8192, 8192), (4096, 14336)] for m in (1, 16)]
QUICK_BIG = [(4096, 4096, 4096)]
QUICK_SMALL = [(1, 4096, 4096), (16, 4096, 4096)]
MAX_ERR_DYN = 5e-2   # q8 dynamic vs float32 F.linear, relative Frobenius
MAX_ERR_WO = 1e-2    # q8 weight_only (bf16 out) vs F.linear with the dequantized weight
GOAL_INT_MM = 0.7
GOAL_BF16 = 1.3


def rel_err(y, ref):
    return ((y.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30)).item()


def time_runs(fn, iters, graph):
    """A callable running fn iters times (eagerly, or replayed from one CUDA graph)."""
    if not graph:
        def run():
            for _ in range(iters):
                fn()
        return run
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(iters):
            fn()
    return g.replay


def elapsed_s(run):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def bench(fns, reps, run_s, graph, warmup=5):
    """Median seconds per call of each fn (dict name -> fn), timed in interleaved repetitions."""
    runners = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        one = min(elapsed_s(lambda: fn()) for _ in range(3))
        iters = max(1, min(2000, int(run_s / max(one, 1e-7))))
        runners[name] = (time_runs(fn, iters, graph), iters)
        elapsed_s(runners[name][0])  # warm the runner (graph upload) too
    times = {name: [] for name in fns}
    names = list(fns)
    for r in range(reps):
        for name in (names if r % 2 == 0 else names[::-1]):
            run, iters = runners[name]
            times[name].append(elapsed_s(run) / iters)
    return {name: statistics.median(t) for name, t in times.items()}


def make_case(m, k, n, device, q8):
    g = torch.Generator(device=device).manual_seed(m * 131 + k * 7 + n)
    w = torch.randn(n, k, device=device, generator=g) * 0.02
    b = torch.randn(n, device=device, generator=g) * 0.1
    x = torch.randn(m, k, device=device, generator=g).bfloat16()
    w8, ws = q8.quantize_weight(w)
    case = {
        "x": x, "w_bf16": w.bfloat16(), "b_bf16": b.bfloat16(), "b": b,
        "w8": w8, "ws": ws, "packed": q8.pack_weight(w8),
        "a8": torch.randint(-128, 128, (m, k), dtype=torch.int8, device=device, generator=g),
    }
    return case


def contenders(c, m, q8):
    x, packed, ws, b = c["x"], c["packed"], c["ws"], c["b"]
    fns = {"bf16": lambda: F.linear(x, c["w_bf16"], c["b_bf16"])}
    if m > 16:
        a8, w8t = c["a8"], c["w8"].t()
        fns["int_mm"] = lambda: torch._int_mm(a8, w8t)
    fns["q8_dyn"] = lambda: q8.linear(x, packed, ws, b, "dynamic")
    if m <= 16:
        fns["q8_wo"] = lambda: q8.linear(x, packed, ws, b, "weight_only")
    return fns


def validate(c, m, q8):
    """Errors of the q8 contenders against float references (None: not run)."""
    x, packed, ws, b = c["x"], c["packed"], c["ws"], c["b"]
    ref = F.linear(x.float(), c["w_bf16"].float(), b)
    out = {"q8_dyn": rel_err(q8.linear(x, packed, ws, b, "dynamic"), ref)}
    if m <= 16:
        w_deq = c["w8"].float() * ws[:, None]
        out["q8_wo"] = rel_err(q8.linear(x, packed, ws, b, "weight_only"), F.linear(x.float(), w_deq, b))
    return out


def fmt_us(t):
    return f"{t * 1e6:9.1f}" if t is not None else "        -"


def verdict(value, goal, valid):
    if not valid:
        return "WRONG"
    return "PASS" if value >= goal else "MISS"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="three shapes, short runs, 5 repetitions (smoke test)")
    ap.add_argument("--reps", type=int, help="timed repetitions per contender (default 9; 5 with --quick; >= 5)")
    ap.add_argument("--run-ms", type=float, help="length of one timed run in ms (default 20; 5 with --quick)")
    ap.add_argument("--no-graph", action="store_true", help="do not also time M <= 16 replayed from CUDA graphs")
    ap.add_argument("--json", help="also write the results as JSON to this file")
    args = ap.parse_args()

    if not torch.cuda.is_available():
        print("bench_cuda_linear: no CUDA GPU visible to torch "
              f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}): nothing to measure.")
        return 0
    import q8
    if not torch._C._dispatch_has_kernel_for_dispatch_key("q8::linear", "CUDA"):
        print("bench_cuda_linear: q8 was built without its CUDA kernels (the build says 'q8: CPU-only build'); "
              "rebuild q8 with nvcc and a CUDA-enabled torch.")
        return 2

    reps = max(5, args.reps or (5 if args.quick else 9))
    run_s = (args.run_ms or (5.0 if args.quick else 20.0)) / 1e3
    big = QUICK_BIG if args.quick else BIG_SHAPES
    small = QUICK_SMALL if args.quick else SMALL_SHAPES
    device = torch.device("cuda")
    props = torch.cuda.get_device_properties(device)
    print(f"# q8 CUDA int8 linear benchmark ({'quick' if args.quick else 'full'})")
    print(f"date:   {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"GPU:    {props.name} (sm_{props.major}{props.minor}, {props.multi_processor_count} SMs, "
          f"{props.total_memory / 2**30:.0f} GiB)")
    print(f"torch:  {torch.__version__} (CUDA {torch.version.cuda}), q8 {q8.__version__}, "
          f"Python {platform.python_version()}")
    print(f"timing: CUDA events, runs of ~{run_s * 1e3:g} ms, median of {reps} interleaved repetitions; "
          "microseconds per call")
    print()

    results = []
    header = f"{'M x K x N':>18} {'mode':>6} {'bf16':>9} {'int_mm':>9} {'q8 dyn':>9} {'q8 wo':>9}   goals"
    print(header)
    print("-" * len(header))
    all_pass = True
    for shape in big + small:
        m, k, n = shape
        c = make_case(m, k, n, device, q8)
        errs = validate(c, m, q8)
        valid = {"q8_dyn": errs["q8_dyn"] <= MAX_ERR_DYN, "q8_wo": errs.get("q8_wo", 0.0) <= MAX_ERR_WO}
        modes = [False] + ([True] if m <= 16 and not args.no_graph else [])
        for graph in modes:
            t = bench(contenders(c, m, q8), reps, run_s, graph)
            goals = []
            if m > 16:
                r_mm = t["int_mm"] / t["q8_dyn"]
                r_bf = t["bf16"] / t["q8_dyn"]
                goals.append((f"dyn {r_mm:.2f}x int_mm (>= {GOAL_INT_MM})", verdict(r_mm, GOAL_INT_MM, valid["q8_dyn"])))
                goals.append((f"dyn {r_bf:.2f}x bf16 (>= {GOAL_BF16})", verdict(r_bf, GOAL_BF16, valid["q8_dyn"])))
            else:
                for key, label in (("q8_dyn", "dyn"), ("q8_wo", "wo")):
                    r = t["bf16"] / t[key]
                    goals.append((f"{label} {r:.2f}x bf16 (>= {GOAL_BF16})", verdict(r, GOAL_BF16, valid[key])))
            # The goals are judged on eager timing for M > 16 and on graph replay for M <= 16
            # (GPU time); eager M <= 16 rows are shown for information.
            judged = m > 16 or graph or args.no_graph
            if judged:
                all_pass = all_pass and all(v == "PASS" for _, v in goals)
            mode = "graph" if graph else "eager"
            goal_txt = "; ".join(f"{g}: {v}" for g, v in goals) + ("" if judged else "  (info)")
            print(f"{m:>6}x{k:>5}x{n:>5} {mode:>6} {fmt_us(t.get('bf16'))} {fmt_us(t.get('int_mm'))} "
                  f"{fmt_us(t.get('q8_dyn'))} {fmt_us(t.get('q8_wo'))}   {goal_txt}")
            results.append({"m": m, "k": k, "n": n, "mode": mode, "seconds": t, "errors": errs,
                            "goals": goals, "judged": judged})
        del c
        torch.cuda.empty_cache()
    print()
    print("errors (relative Frobenius): q8 dyn vs float32 F.linear <= "
          f"{MAX_ERR_DYN}, q8 wo vs F.linear with the dequantized weight <= {MAX_ERR_WO}")
    for r in results:
        if r["mode"] == "eager":
            e = ", ".join(f"{key} {v:.2e}" for key, v in r["errors"].items())
            print(f"  {r['m']}x{r['k']}x{r['n']}: {e}")
    print()
    print("all judged goals: " + ("PASS" if all_pass else "MISS (see the rows above)"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gpu": props.name, "torch": torch.__version__, "date": datetime.datetime.now().isoformat(),
                       "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
