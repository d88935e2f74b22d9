"""Benchmark q8 int8 linear against fp32 F.linear and torch's int8 linears on CPU, interleaved in one process.

    python benchmarks/bench_linear.py [--quick] [--threads N] [--reps R] [--out FILE] [--json FILE]

For every shape (M rows of input, K in-features, N out-features, float32 input and bias), these
contenders are timed in one repetition loop (order alternating per repetition), so machine noise
hits all of them alike; each timed run is enough calls to take about 40 ms, the figure is the
median over the runs:

    fp32        F.linear(x, w, b)                         torch's BLAS: the baseline of every ratio
    q8 dyn      q8.linear(x, packed, scale, b, "dynamic") per-row uint8 activations, int8 GEMM,
                                                          dequant + bias fused (all included)
    q8 wo       q8.linear(..., "weight_only")             int8 weights, float activations
    torch dyn   torch.ao.nn.quantized.dynamic.Linear      via quantize_dynamic (fbgemm/x86 engine)
    int8pack    torch._weight_int8pack_mm(x, w_int8, s)   torch's weight-only int8 (+ bias add)
    ao dyn/wo   torchao Int8DynamicActivationInt8WeightConfig / Int8WeightOnlyConfig, if importable

Before timing, each shape is validated: q8 dynamic must match fp32 F.linear to a small relative
Frobenius error, and q8 weight_only must match F.linear with the dequantized weight, so a broken
kernel cannot post a fast number (its goals read WRONG).
"""
import argparse
import copy
import ctypes
import datetime
import glob
import json
import os
import platform
import resource
import statistics
import sys
import time
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

import q8

SHAPES = [(m, k, n) for (k, n) in [(1024, 1024), (4096, 4096), (4096, 11008)] for m in (1, 16, 128, 512)]
QUICK_SHAPES = [(1, 1024, 1024), (128, 1024, 1024)]
MAX_ERR_DYN = 5e-2           # q8 dynamic vs fp32 F.linear, relative Frobenius
SLOW_S = 0.3                 # a contender slower than this a call is timed in SLOW_REPS runs of one call
SLOW_REPS = 3
MAX_ERR_WO = 1e-4            # q8 weight_only vs F.linear with the dequantized weight
PEAK_KINDS = ["vpdpbusd512", "vpdpbusd256", "fma512"]
INT8_PEAK_KINDS = ["vpdpbusd512", "vpdpbusd256"]   # the first one that measures is the int8 peak
FP32_PEAK_KINDS = ["fma512"]                       # the fp32 peak fp32 F.linear is compared with
GOALS = {
    "big": {"peak": 0.6, "fp32": 3.0, "torch_dyn": 1.0},    # M >= 128, dynamic
    "one": {"fp32": 2.0, "torch_dyn": 2.0, "wo_fp32": 2.0},  # M == 1
}
# key, column label
CONTENDERS = [
    ("fp32", "fp32"),
    ("q8_dyn", "q8 dyn"),
    ("q8_wo", "q8 wo"),
    ("torch_dyn", "torch dyn"),
    ("int8pack", "int8pack"),
    ("ao_dyn", "ao dyn"),
    ("ao_wo", "ao wo"),
    ("read", "read N·K B"),
]


def minor_faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def bench(fns, reps, target_s, warmup=3, slow=()):
    """Time fns in one interleaved repetition loop. Returns each fn's median seconds per call,
    its minor page faults per call, and each fn's noise (interquartile range / median of its
    timed runs). Warm-up calls also size each timed run to about target_s. Indices in slow
    (fns of over SLOW_S a call) get no warm-up and take part in the first SLOW_REPS repetitions only."""
    iters = []
    for i, f in enumerate(fns):
        t = []
        for _ in range(0 if i in slow else warmup):
            t0 = time.perf_counter()
            f()
            t.append(time.perf_counter() - t0)
        iters.append(max(1, round(target_s / min(t))) if t else 1)
    times, faults = [[] for _ in fns], [0] * len(fns)
    for r in range(reps):
        for i in (range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))):
            if i in slow and r >= SLOW_REPS:
                continue
            f0, t0 = minor_faults(), time.perf_counter()
            for _ in range(iters[i]):
                fns[i]()
            times[i].append((time.perf_counter() - t0) / iters[i])
            faults[i] += minor_faults() - f0
    medians = [statistics.median(t) for t in times]
    noise = [(q[2] - q[0]) / m for q, m in zip((statistics.quantiles(t, n=4) for t in times), medians)]
    return medians, [f / (len(t) * k) for f, t, k in zip(faults, times, iters)], noise


def rel_err(y, ref):
    return ((y.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30)).item()


def steady_heap():
    """glibc: never trim the heap and fix the mmap threshold at its 32 MiB maximum (see bench_fake_quantize.py)."""
    libc = ctypes.CDLL("libc.so.6")
    return bool(libc.mallopt(-1, 2**30) and libc.mallopt(-3, 32 * 2**20))  # M_TRIM_THRESHOLD, M_MMAP_THRESHOLD


def set_quantized_engine():
    """x86 (fbgemm + onednn) if this torch has it, else fbgemm; returns a description."""
    engines = torch.backends.quantized.supported_engines
    for e in ("x86", "fbgemm"):
        if e in engines:
            torch.backends.quantized.engine = e
            return f"{torch.backends.quantized.engine} (supported: {', '.join(engines)})"
    return f"unchanged: {torch.backends.quantized.engine} (supported: {', '.join(engines)}; no x86/fbgemm)"


def load_torchao():
    """(module with quantize_ and the two configs, description) or (None, 'unavailable: reason')."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchao
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_
    except Exception as e:  # noqa: BLE001 - any import failure means unavailable
        return None, f"unavailable: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    ao = argparse.Namespace(quantize_=quantize_, dyn=Int8DynamicActivationInt8WeightConfig, wo=Int8WeightOnlyConfig)
    return ao, f"torchao {getattr(torchao, '__version__', '?')}"


def measure_peaks(ms):
    """One-thread peaks from torch.ops.q8._cpu_peak_gops, {kind: GOP/s or 'error'}; None if the op is missing."""
    try:
        op = torch.ops.q8._cpu_peak_gops
    except (AttributeError, RuntimeError):
        return None
    peaks = {}
    for kind in PEAK_KINDS:
        try:
            peaks[kind] = float(op(kind, ms))
        except Exception as e:  # noqa: BLE001 - e.g. an ISA this CPU lacks
            peaks[kind] = f"unavailable: {str(e).splitlines()[0][:80] if str(e) else type(e).__name__}"
    return peaks


def header(threads, heap, engine, ao_desc, peaks, int8_peak, fp32_peak):
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.processor() or "unknown")
    par = torch.__config__.parallel_info().splitlines()
    backend = next((l.strip() for l in par if "parallel backend" in l), "?")
    mkl_line = next((l.strip() for l in par if "Math Kernel Library" in l), "not linked")
    show = torch.__config__.show()
    blas = next((p.split("=", 1)[1] for p in show.replace(",", " ").split() if p.startswith("BLAS_INFO=")), "?")
    lapack = next((p.split("=", 1)[1] for p in show.replace(",", " ").split() if p.startswith("LAPACK_INFO=")), "?")
    onednn = next((l.strip().lstrip("- ") for l in show.splitlines() if "oneDNN" in l or "MKL-DNN" in l), "not built")
    caches = []
    for d in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
        try:
            level, kind, size = (open(os.path.join(d, f)).read().strip() for f in ("level", "type", "size"))
            caches.append(f"L{level}{'d' if kind == 'Data' else 'i' if kind == 'Instruction' else ''} {size}")
        except OSError:
            pass
    try:
        isa = f"cpu_isa={q8.cpu_isa()}"
    except Exception as e:  # noqa: BLE001
        isa = f"cpu_isa=? ({type(e).__name__})"
    if peaks is None:
        peak_line = "unavailable (torch.ops.q8._cpu_peak_gops is missing in this build)"
    else:
        peak_line = "; ".join(f"{k} {v:.0f} GOP/s" if isinstance(v, float) else f"{k} {v}" for k, v in peaks.items())
    int8_line = (f"{int8_peak[0]} {int8_peak[1]:.0f} GOP/s x {threads} threads = {int8_peak[1] * threads:.0f} GOP/s"
                 if int8_peak else "unavailable: the 'of peak' column and goal are n/a")
    fp32_line = (f"{fp32_peak[0]} {fp32_peak[1]:.0f} GFLOP/s x {threads} threads = {fp32_peak[1] * threads:.0f} GFLOP/s"
                 if fp32_peak else "unavailable: the 'fp32 of peak' column is n/a")
    return [
        "# q8 int8 linear vs fp32 and torch int8 linears (CPU, float32 input)",
        "",
        f"- date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- machine: {cpu}; {os.cpu_count()} logical CPUs ({len(os.sched_getaffinity(0))} usable); "
        f"Python {platform.python_version()}; caches (cpu0): {', '.join(caches) or '?'}",
        f"- torch {torch.__version__}; q8 {q8.__version__}, {isa}",
        f"- threads: torch.get_num_threads()={threads}; load average at start: "
        + ", ".join(f"{v:.2f}" for v in os.getloadavg()),
        f"- backend: {backend}; BLAS_INFO={blas}; LAPACK_INFO={lapack}; MKL used: "
        f"{torch.backends.mkl.is_available()} ({mkl_line}); oneDNN: {onednn}",
        f"- torch quantized engine: {engine}",
        f"- torchao: {ao_desc}",
        f"- one-thread peaks (q8._cpu_peak_gops, 2 ops per multiply-add): {peak_line}",
        f"- int8 peak used: {int8_line}",
        f"- fp32 peak used: {fp32_line}",
        f"- heap: {heap}",
        "",
    ]


def make_contenders(m, k, n, ao, unavailable):
    """Build every contender for one shape. Returns (fns {key: callable}, outputs for validation,
    reasons {key: why it is missing}, details)."""
    x = torch.randn(m, k)
    lin = nn.Linear(k, n)
    w, b = lin.weight.detach(), lin.bias.detach()
    fns, reasons = {}, {}

    fns["fp32"] = lambda: F.linear(x, w, b)
    # The memory bound of M = 1: reading as many bytes as the int8 weight holds
    # (a float32 sum over N*K bytes), in the same loop and cache state.
    rbuf = torch.ones(max(1, n * k // 4))
    fns["read"] = lambda: rbuf.sum()
    w_int8, w_scale = q8.quantize_weight(w)
    packed = q8.pack_weight(w_int8)
    fns["q8_dyn"] = lambda: q8.linear(x, packed, w_scale, b, "dynamic")
    fns["q8_wo"] = lambda: q8.linear(x, packed, w_scale, b, "weight_only")
    w_deq = w_int8.float() * w_scale[:, None]

    if "torch_dyn" in unavailable:
        reasons["torch_dyn"] = unavailable["torch_dyn"]
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                qmod = torch.ao.quantization.quantize_dynamic(nn.Sequential(copy.deepcopy(lin)), {nn.Linear},
                                                              dtype=torch.qint8)
            qlin = qmod[0]
            if not isinstance(qlin, torch.ao.nn.quantized.dynamic.Linear):
                raise TypeError(f"quantize_dynamic gave {type(qlin).__name__}")
            fns["torch_dyn"] = lambda: qlin(x)
        except Exception as e:  # noqa: BLE001
            reasons["torch_dyn"] = f"{type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"

    # aten::_weight_int8pack_mm(Tensor self, Tensor mat2, Tensor scales): self [M, K] float,
    # mat2 int8 [N, K], scales [N] of self's dtype; no bias, so it is added (as users would).
    try:
        fns["int8pack"] = lambda: torch._weight_int8pack_mm(x, w_int8, w_scale).add_(b)
    except Exception as e:  # noqa: BLE001
        reasons["int8pack"] = f"{type(e).__name__}: {e}"

    for key, cfg in (("ao_dyn", "dyn"), ("ao_wo", "wo")):
        if key in unavailable:
            reasons[key] = unavailable[key]
            continue
        try:
            mod = nn.Sequential(copy.deepcopy(lin))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ao.quantize_(mod, getattr(ao, cfg)())
            fns[key] = (lambda mod_: (lambda: mod_(x)))(mod)
        except Exception as e:  # noqa: BLE001
            reasons[key] = f"{type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"

    # First call of each contender, outside timing: a failing one drops out with its reason.
    outs = {}
    for key in list(fns):
        if key == "read":
            continue
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                outs[key] = fns[key]()
        except Exception as e:  # noqa: BLE001
            if key.startswith("q8") or key == "fp32":
                raise
            reasons[key] = f"{type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"
            del fns[key]
    ref = outs["fp32"]
    errs = {key: rel_err(y, ref) for key, y in outs.items() if key != "fp32"}
    errs["q8_wo_vs_deq"] = rel_err(outs["q8_wo"], F.linear(x, w_deq, b))
    return fns, errs, reasons


def fmt_us(t):
    if t is None:
        return "—"
    us = t * 1e6
    return f"{us:.1f}" if us < 1000 else f"{us:.0f}"


def ratio(a, b):
    """a / b, or None if either is missing."""
    return None if a is None or b is None else a / b


def fmt_x(r):
    return "—" if r is None else f"{r:.2f}x"


def check(value, goal, label):
    if value is None:
        return f"{label} n/a"
    return f"{label}>={goal:g} {'PASS' if value >= goal else 'MISS'}"


def goals_for(m, valid, frac, sp_fp32, sp_torch, wo_fp32):
    if not valid:
        return "WRONG (validation failed)"
    if m >= 128:
        g = GOALS["big"]
        return "; ".join([check(frac, g["peak"], "peak"), check(sp_fp32, g["fp32"], "fp32"),
                          check(sp_torch, g["torch_dyn"], "torch dyn")])
    if m == 1:
        g = GOALS["one"]
        return "; ".join([check(sp_fp32, g["fp32"], "fp32"), check(sp_torch, g["torch_dyn"], "torch dyn"),
                          check(wo_fp32, g["wo_fp32"], "wo fp32")])
    return "—"


NOTES = [
    "",
    "- time: median µs per call over the timed runs, every contender interleaved in one loop (order alternating "
    "per repetition). noise: largest interquartile range / median of any contender's timed runs in the row.",
    f"- \u2021 over {SLOW_S:g} s a call: timed without warm-up in only the first {SLOW_REPS} repetitions, one "
    "call each (still interleaved with the others).",
    "- ratios are speedups of q8 (other's time / q8's time): dyn/fp32 = t_fp32 / t_q8dyn; dyn/torch = "
    "t_torchdyn / t_q8dyn; dyn/ao = t_aodyn / t_q8dyn; wo/fp32 = t_fp32 / t_q8wo; wo/i8pk = t_int8pack / t_q8wo; "
    "wo/ao = t_aowo / t_q8wo.",
    "- all contenders take a float32 input and return float32 with the bias added: q8 dyn and torch dyn include "
    "the run-time activation quantization. q8 quantizes activations per row (asymmetric uint8) and weights per "
    "output channel (symmetric int8); torch dyn is quantize_dynamic's default (per-tensor int8 weight, "
    "per-tensor activation). int8pack is torch._weight_int8pack_mm on q8's own int8 weight and scales, plus "
    "a separate in-place bias add. torchao runs whatever kernel it picks for a CPU float32 nn.Linear.",
    "- GOP/s = 2*M*N*K / t of q8 dyn; of peak = that / (one-thread vpdpbusd peak x threads), measured in this run. "
    "fp32 GFLOP/s = 2*M*N*K / t of fp32 F.linear; fp32 of peak = that / (one-thread fma512 peak x threads), "
    "measured in the same run.",
    "- which ratios travel to another CPU: q8's fraction of the int8 peak and dyn/torch (int8 against int8, "
    "both bound by the same vpdpbusd units) move little from machine to machine; dyn/fp32 and wo/fp32 do not: "
    "they scale with how close the BLAS gets to the fp32 FMA peak on that CPU (the fp32 of peak column) and "
    "with the CPU's int8/fp32 peak ratio (vpdpbusd / fma512 above). Expected dyn/fp32 on another machine is "
    "about (q8 of peak / fp32 of peak) x (int8 peak / fp32 peak) of that machine.",
    "- dyn wt GB/s = the int8 weight's N*K bytes / t of q8 dyn; of read = t_read / t_q8dyn, where read sums a "
    "float32 buffer of N*K bytes (the same bytes, interleaved in the same loop): at M = 1 a linear layer can be "
    "at most about as fast as reading its weight once, so near 1.0 q8 is memory bound and no int8 kernel "
    "reading the same bytes can be much faster.",
    f"- err dyn: relative Frobenius error of q8 dyn vs fp32 F.linear (must be < {MAX_ERR_DYN:g}); err wo: q8 wo vs "
    f"F.linear with the dequantized int8 weight (must be < {MAX_ERR_WO:g}). A failure marks the row WRONG.",
    f"- goals: M >= 128: q8 dyn >= {GOALS['big']['peak']:g} of the int8 peak, >= {GOALS['big']['fp32']:g}x fp32, "
    f">= {GOALS['big']['torch_dyn']:g}x torch dyn. M = 1: q8 dyn >= {GOALS['one']['fp32']:g}x fp32 and "
    f">= {GOALS['one']['torch_dyn']:g}x torch dyn; q8 wo >= {GOALS['one']['wo_fp32']:g}x fp32. M = 16: none.",
    "- each timed run calls a contender back to back, so a weight that fits in the caches (see above) stays "
    "there between calls; int8 weights are 4x smaller than fp32 ones and fit sooner (K=N=4096: 16 MiB int8, "
    "64 MiB fp32), which is part of what M = 1 measures.",
    "- busy machine: with threads = all cores, any other load stalls the thread pool; rerun when quiet "
    "(load average above) or with --threads 1.",
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--quick", action="store_true", help="two small shapes, fewer and shorter runs (smoke test)")
    ap.add_argument("--reps", type=int, help="timed runs per contender (default 7; 5 with --quick)")
    ap.add_argument("--no-torchao", action="store_true", help="do not try to import torchao")
    ap.add_argument("--out", help="also write the markdown report to this file")
    ap.add_argument("--json", help="also write the results as JSON to this file")
    ap.add_argument("--steady-heap", action="store_true",
                    help="glibc mallopt: no heap trimming, fixed 32 MiB mmap threshold")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shapes, reps, target_s, peak_ms = (QUICK_SHAPES, 5, 0.01, 30) if args.quick else (SHAPES, 7, 0.04, 200)
    reps = max(5, args.reps or reps)

    heap = "glibc defaults"
    if args.steady_heap:
        heap = "steady (no trim, mmap threshold 32 MiB)" if steady_heap() else "mallopt failed: glibc defaults"
    engine = set_quantized_engine()
    unavailable = {}
    if not hasattr(torch.ao.nn.quantized, "dynamic") or not hasattr(torch.ao.quantization, "quantize_dynamic"):
        unavailable["torch_dyn"] = "torch.ao dynamic quantization is missing in this torch"
    ao, ao_desc = (None, "not tried (--no-torchao)") if args.no_torchao else load_torchao()
    if ao is None:
        unavailable["ao_dyn"] = unavailable["ao_wo"] = f"torchao {ao_desc}"
    peaks = measure_peaks(peak_ms)
    int8_peak = None
    if peaks:
        int8_peak = next(((k, peaks[k]) for k in INT8_PEAK_KINDS if isinstance(peaks.get(k), float) and peaks[k] > 0),
                         None)
    fp32_peak = None
    if peaks:
        fp32_peak = next(((k, peaks[k]) for k in FP32_PEAK_KINDS if isinstance(peaks.get(k), float) and peaks[k] > 0),
                         None)
    threads = torch.get_num_threads()

    cols = [label for _, label in CONTENDERS]
    hdr = header(threads, heap, engine, ao_desc, peaks, int8_peak, fp32_peak)
    lines = hdr + [
        "| M | K | N | " + " | ".join(f"{c} µs" for c in cols)
        + " | dyn/fp32 | dyn/torch | dyn/ao | wo/fp32 | wo/i8pk | wo/ao | dyn GOP/s | of peak | fp32 GFLOP/s | fp32 of peak | dyn wt GB/s "
        "| of read | err dyn | err wo | noise | goals |",
        "|" + "---:|" * (3 + len(cols) + 14) + "---:|---|",
    ]
    print("\n".join(lines), flush=True)
    results, missing, n_head = [], {}, len(lines)
    for m, k, n in shapes:
        with torch.no_grad():
            fns, errs, reasons = make_contenders(m, k, n, ao, unavailable)
            for key, why in reasons.items():
                if missing.get(key) != why:
                    print(f"[{m}x{k}x{n}] {key} unavailable: {why}", file=sys.stderr, flush=True)
                missing[key] = why
            valid = errs["q8_dyn"] < MAX_ERR_DYN and errs["q8_wo_vs_deq"] < MAX_ERR_WO
            keys = list(fns)
            slow = set()
            for i, key in enumerate(keys):   # one probe call each (the validation call was the first)
                t0 = time.perf_counter()
                fns[key]()
                if time.perf_counter() - t0 > SLOW_S:
                    slow.add(i)
            medians, faults, noise = bench([fns[key] for key in keys], reps, target_s, slow=slow)
        t = {key: medians[keys.index(key)] if key in fns else None for key, _ in CONTENDERS}
        slow_keys = {keys[i] for i in slow}
        gops = 2 * m * n * k / t["q8_dyn"] / 1e9
        frac = gops / (int8_peak[1] * threads) if int8_peak else None
        fp32_gflops = 2 * m * n * k / t["fp32"] / 1e9
        fp32_frac = fp32_gflops / (fp32_peak[1] * threads) if fp32_peak else None
        r = {
            "dyn_fp32": ratio(t["fp32"], t["q8_dyn"]), "dyn_torch": ratio(t["torch_dyn"], t["q8_dyn"]),
            "dyn_ao": ratio(t["ao_dyn"], t["q8_dyn"]), "wo_fp32": ratio(t["fp32"], t["q8_wo"]),
            "wo_int8pack": ratio(t["int8pack"], t["q8_wo"]), "wo_ao": ratio(t["ao_wo"], t["q8_wo"]),
        }
        goals = goals_for(m, valid, frac, r["dyn_fp32"], r["dyn_torch"], r["wo_fp32"])
        cells = [fmt_us(t[key]) + ("\u2021" if key in slow_keys else "") for key, _ in CONTENDERS]
        row = (f"| {m} | {k} | {n} | " + " | ".join(cells) + " | "
               + " | ".join(fmt_x(r[x]) for x in ("dyn_fp32", "dyn_torch", "dyn_ao", "wo_fp32", "wo_int8pack", "wo_ao"))
               + f" | {gops:.0f} | {'—' if frac is None else f'{frac:.2f}'} | {fp32_gflops:.0f} | "
               f"{'—' if fp32_frac is None else f'{fp32_frac:.2f}'} | {n * k / t['q8_dyn'] / 1e9:.0f} | "
               f"{t['read'] / t['q8_dyn']:.2f} | {errs['q8_dyn']:.1e} | "
               f"{errs['q8_wo_vs_deq']:.1e} | {max(noise):.0%} | {goals} |")
        lines.append(row)
        print(row, flush=True)
        results.append({
            "M": m, "K": k, "N": n, "seconds": t, "ratios": r, "q8_dyn_gops": gops, "fraction_of_int8_peak": frac,
            "fp32_gflops": fp32_gflops, "fp32_fraction_of_fp32_peak": fp32_frac,
            "rel_err": errs, "valid": valid, "goals": goals,
            "slow": sorted(slow_keys), "noise": dict(zip(keys, noise)),
            "minor_faults_per_call": dict(zip(keys, faults)),
        })
    lines += ["", "- load average at end: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())]
    if missing:
        lines += [f"- {key} unavailable: {why}" for key, why in missing.items()]
    lines += NOTES
    print("\n".join(lines[n_head + len(results):]), flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(lines) + "\n")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({
                "header": [l for l in hdr if l],
                "torch": torch.__version__, "threads": threads, "quantized_engine": engine, "torchao": ao_desc,
                "peaks_one_thread_gops": peaks, "int8_peak": int8_peak, "fp32_peak": fp32_peak, "unavailable": missing,
                "reps": reps, "target_s": target_s, "results": results,
            }, fh, indent=1)
    wrong = [f"{x['M']}x{x['K']}x{x['N']}" for x in results if not x["valid"]]
    if wrong:
        print(f"q8 output failed validation for {', '.join(wrong)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
