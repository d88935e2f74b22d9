"""Benchmark q8's int8 convolution against fp32 and torch.ao's int8 convolution on CPU, interleaved in one process.

    python benchmarks/bench_conv.py [--quick] [--threads N] [--reps R] [--only layers|models] [--out FILE]

Two parts (issue 12), each printed as a markdown table with the issue's goals beside it:

1. Per layer, batch 1, the common ResNet and MobileNet shapes (3x3 and 1x1 convolutions at 56/28/14/7
   spatial with 64..512 channels, depthwise 3x3 at those sizes), contenders timed in one interleaved loop
   (bench_linear.bench: order alternating per repetition, median of the timed runs):

       fp32      F.conv2d, channels_last input and weight, bias          the baseline of the fp32 ratio
       q8 u8>u8  torch.ops.q8.conv2d, static uint8 channels_last input, uint8 output (output_scale /
                 output_zero_point): the int8-between-layers case
       q8 u8>f   the same with a float32 output
       ao        torch.ops.quantized.conv2d: quint8 channels_last input, a conv2d_prepack'd per-channel
                 qint8 weight, quint8 output (the x86 / fbgemm engine): torch.ao's int8 conv

   q8 GOP/s (2 * N * OC * OH * OW * C/groups * KH * KW / t of q8 u8>u8) as a fraction of the vpdpbusd peak
   measured in this run (torch.ops.q8._cpu_peak_gops, one thread, times the thread count).
   Before timing, each layer is validated: q8's float output against fp32 F.conv2d (relative error) and q8's
   uint8 output against torch.ao's (codes within 1 of each other almost everywhere), so a broken kernel cannot
   post a fast number (its goals read WRONG).

2. End to end, the shared models of ``q8._cnn_models`` (ResNet-style, 32 -> 256 channels; MobileNetV2-style,
   depthwise 3x3 and ReLU6) with random weights and BatchNorm statistics set on a few batches of
   the digits (upscaled to 64x64; random inputs without scikit-learn), at batch 16 x 3 x 64 x 64 and batch 1:

       float32      the model as built (eval, contiguous input)
       q8 static    q8.prepare (min/max observers) + q8.calibrate (4 batches) + q8.convert
       q8 lowered   q8 static, then q8.lower (int8 tensors between layers, residual adds fused); n/a where
                    this q8 has no q8.lower
       q8 dynamic   q8.quantize_dynamic
       ao FX        torch.ao FX static: prepare_fx / convert_fx with get_default_qconfig_mapping("x86"),
                    calibrated on the same batches

   plus each int8 model's relative output error against float32 and its top-1 agreement with float32
   on 256 digits images.

``--quick`` runs a few small shapes and small models with few repetitions (a smoke run of a few seconds,
for CI; its numbers mean nothing). Do not quote numbers from a busy machine: the ratios move with load.
Exit status 1 when a q8 layer fails validation or a q8 model (static, lowered, dynamic) fails to build or
run; a part this q8 does not have yet (no CPU kernel for q8::conv2d, no q8.lower) is reported n/a.
"""
import argparse
import copy
import inspect
import os
import statistics
import sys
import types
import warnings

import torch
import torch.nn.functional as F

import q8
from q8 import _cnn_models as cnn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_linear import (  # noqa: E402
    INT8_PEAK_KINDS,
    FP32_PEAK_KINDS,
    bench,
    header,
    measure_peaks,
    rel_err,
    set_quantized_engine,
)

# (kind, in channels, out channels, spatial, stride): batch 1, 3x3 pad 1 / 1x1 pad 0 / depthwise 3x3 pad 1
LAYERS = (
    [("3x3", c, c, s, 1) for c, s in ((64, 56), (128, 28), (256, 14), (512, 7))]
    + [("1x1", 64, 256, 56, 1), ("1x1", 256, 64, 56, 1), ("1x1", 128, 512, 28, 1), ("1x1", 512, 128, 28, 1),
       ("1x1", 256, 256, 14, 1), ("1x1", 512, 512, 7, 1)]
    + [("dw3x3", c, c, s, st) for c, s, st in ((144, 56, 1), (144, 56, 2), (192, 28, 1), (384, 14, 1), (576, 14, 1),
                                               (960, 7, 1))]
)
QUICK_LAYERS = [("3x3", 64, 64, 14, 1), ("1x1", 64, 128, 14, 1), ("dw3x3", 96, 96, 14, 1)]
MAX_ERR_FLOAT = 5e-2         # q8 u8>f vs fp32 F.conv2d, relative Frobenius (input and weight quantization)
MAX_CODE_MISMATCH = 0.01     # fraction of q8 u8>u8 codes more than 1 away from torch.ao's
GOALS = {"peak": 0.6, "dw_ao": 1.5, "e2e_ao": 1.0, "e2e_fp32": 4.0}


def fmt_ms(t):
    return "—" if t is None else (f"{t * 1e3:.3f}" if t < 1e-3 else f"{t * 1e3:.2f}")


def fmt_x(r):
    return "—" if r is None else f"{r:.2f}x"


def ratio(a, b):
    return None if a is None or b is None else a / b


def check(value, goal, label):
    if value is None:
        return f"{label} n/a"
    return f"{label} >= {goal:g}: {'PASS' if value >= goal else 'MISS'}"


def short(e, n=110):
    s = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {s[:n]}"


def qparams(lo, hi):
    """uint8 asymmetric (scale, zero_point) covering [lo, hi] (and 0), as floats / ints."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = max((hi - lo) / 255.0, 1e-8)
    zp = int(min(255, max(0, round(-lo / scale))))
    return scale, zp


# ---------------------------------------------------------------------------- per layer


def make_layer(kind, cin, cout, size, stride):
    """Contenders of one layer: ({key: fn}, errors/validation dict, reasons {key: why missing}, ops)."""
    groups = cin if kind == "dw3x3" else 1
    k = 1 if kind == "1x1" else 3
    pad = k // 2
    x = torch.randn(1, cin, size, size).relu_().contiguous(memory_format=torch.channels_last)  # post-ReLU input
    conv = torch.nn.Conv2d(cin, cout, k, stride=stride, padding=pad, groups=groups)
    w = conv.weight.detach().contiguous(memory_format=torch.channels_last)
    b = conv.bias.detach().clone()
    ref = F.conv2d(x, w, b, stride, pad, 1, groups)
    oh = ref.shape[-1]
    ops = 2 * cout * oh * oh * (cin // groups) * k * k

    # qparams shared by q8 and torch.ao: per-tensor uint8 input, per-channel symmetric int8 weight,
    # per-tensor uint8 output from the float reference's range.
    sx, zx = qparams(x.min(), x.max())
    so, zo = qparams(ref.min(), ref.max())
    wmax = w.abs().amax(dim=(1, 2, 3)).clamp_min(1e-8)
    w_scale = (wmax / 127.0).float()
    w_int8 = torch.clamp(torch.round(w / w_scale[:, None, None, None]), -127, 127).to(torch.int8).contiguous()
    x_u8 = torch.clamp(torch.round(x / sx) + zx, 0, 255).to(torch.uint8).contiguous(memory_format=torch.channels_last)

    fns, reasons, checks = {}, {}, {}
    fns["fp32"] = lambda: F.conv2d(x, w, b, stride, pad, 1, groups)

    try:
        packed = torch.ops.q8.pack_conv_weight(w_int8, groups)
        s_t, z_t = torch.tensor([sx], dtype=torch.float32), torch.tensor([zx], dtype=torch.int32)
        os_t, oz_t = torch.tensor([so], dtype=torch.float32), torch.tensor([zo], dtype=torch.int32)
        conv2d = torch.ops.q8.conv2d

        def q8_u8():
            return conv2d(x_u8, packed, w_scale, b, [k, k], [stride, stride], [pad, pad], [1, 1], groups, "static",
                          s_t, z_t, None, None, None, None, None, os_t, oz_t)

        def q8_f():
            return conv2d(x_u8, packed, w_scale, b, [k, k], [stride, stride], [pad, pad], [1, 1], groups, "static",
                          s_t, z_t)

        y_u8, y_f = q8_u8(), q8_f()
        fns["q8_u8"], fns["q8_f"] = q8_u8, q8_f
    except Exception as e:  # noqa: BLE001 - e.g. this q8 has no CPU kernel for q8::conv2d yet
        reasons["q8_u8"] = reasons["q8_f"] = short(e, 80)
        y_u8 = y_f = None

    try:
        qx = torch.quantize_per_tensor(x, sx, zx, torch.quint8).contiguous(memory_format=torch.channels_last)
        qw = torch._make_per_channel_quantized_tensor(w_int8, w_scale.double(), torch.zeros(cout, dtype=torch.int64),
                                                      0)
        prepacked = torch.ops.quantized.conv2d_prepack(qw, b, [stride, stride], [pad, pad], [1, 1], groups)
        ao_conv = torch.ops.quantized.conv2d

        def ao():
            return ao_conv(qx, prepacked, so, zo)

        y_ao = ao()
        fns["ao"] = ao
    except Exception as e:  # noqa: BLE001
        reasons["ao"] = short(e, 80)
        y_ao = None

    if y_f is not None:
        checks["err_f"] = rel_err(y_f, ref)
        # against the exact dequantized formulation: F.conv2d of the dequantized input and weight
        deq = F.conv2d((x_u8.float() - zx) * sx, w_int8.float() * w_scale[:, None, None, None], b, stride, pad, 1,
                       groups)
        checks["err_deq"] = rel_err(y_f, deq)
    if y_u8 is not None:
        checks["u8_dtype"] = y_u8.dtype == torch.uint8 and y_u8.shape == ref.shape
        if y_ao is not None:
            d = (y_u8.int() - y_ao.int_repr().int()).abs()
            checks["mismatch"] = float((d > 1).float().mean())
    return fns, checks, reasons, ops


def layer_valid(checks):
    if "err_f" not in checks:
        return None
    ok = checks["err_f"] <= MAX_ERR_FLOAT and checks["err_deq"] <= 1e-4 and checks.get("u8_dtype", False)
    if "mismatch" in checks:
        ok = ok and checks["mismatch"] <= MAX_CODE_MISMATCH
    return ok


def run_layers(layers, reps, target_s, int8_peak_total, out):
    head = ["", "## Per layer (batch 1, float32 bias; times in ms)", "",
            "| layer | in→out ch | HxW | stride | fp32 | q8 u8>u8 | q8 u8>f | ao int8 | u8>u8 / fp32 | u8>u8 / ao "
            "| u8>f / fp32 | q8 GOP/s | of peak | err vs fp32 | goal | noise |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    out(head)
    summary = {"peak": [], "dw": [], "wrong": []}
    for kind, cin, cout, size, stride in layers:
        fns, checks, reasons, ops = make_layer(kind, cin, cout, size, stride)
        keys = [key for key in ("fp32", "q8_u8", "q8_f", "ao") if key in fns]
        with torch.no_grad():
            medians, _, noise = bench([fns[key] for key in keys], reps, target_s)
        t = dict(zip(keys, medians))
        tq = t.get("q8_u8")
        gops = None if tq is None else ops / tq / 1e9
        frac = None if gops is None or not int8_peak_total else gops / int8_peak_total
        valid = layer_valid(checks)
        if valid is None:
            goal = "n/a (no q8 conv2d kernel)"
        elif not valid:
            goal = "WRONG (validation failed)"
            summary["wrong"].append(f"{kind} {cin}->{cout} {size}x{size} stride {stride}: {checks}")
        elif kind == "dw3x3":
            r = ratio(t.get("ao"), tq)
            goal = check(r, GOALS["dw_ao"], "vs ao")
            summary["dw"].append(r)
        elif min(cin, cout) >= 64:
            goal = check(frac, GOALS["peak"], "of peak")
            summary["peak"].append(frac)
        else:
            goal = "—"
        err = "—" if "err_f" not in checks else f"{checks['err_f']:.1e}" + (
            f", {checks['mismatch']:.2%} codes off" if checks.get("mismatch") else "")
        row = (f"| {kind} | {cin}→{cout} | {size}x{size} | {stride} | {fmt_ms(t.get('fp32'))} | {fmt_ms(tq)} | "
               f"{fmt_ms(t.get('q8_f'))} | {fmt_ms(t.get('ao'))} | {fmt_x(ratio(t.get('fp32'), tq))} | "
               f"{fmt_x(ratio(t.get('ao'), tq))} | {fmt_x(ratio(t.get('fp32'), t.get('q8_f')))} | "
               f"{'—' if gops is None else f'{gops:.0f}'} | {'—' if frac is None else f'{frac:.2f}'} | {err} | "
               f"{goal} | {max(noise):.0%} |")
        out([row])
        for key, why in reasons.items():
            if key != "q8_f":
                out([f"|   ↳ {key} unavailable: {why} |" + " |" * 15])
    return summary


POOLS = ((1, 64, 112, 112), (16, 32, 32, 32))  # ResNet-18's stem max pool at 224x224; our stem's output


def run_pools(reps, target_s, out):
    """3x3 stride-2 max pool (ResNet's stem) on the channels_last tensors between layers: float32 (what a float
    tensor between int8 layers costs), torch.ao's quantized max_pool2d (quint8) and q8.max_pool2d (uint8 codes)."""
    out(["", "## Max pool 3x3 / 2, padding 1, channels_last (times in ms)", "",
         "| input | float32 | ao quint8 | q8 uint8 | q8 / float32 | q8 / ao | same codes as ao | noise |",
         "|---|---:|---:|---:|---:|---:|---|---:|"])
    for shape in POOLS:
        xf = torch.randn(*shape).relu().contiguous(memory_format=torch.channels_last)
        xq = torch.quantize_per_tensor(xf, 0.02, 0, torch.quint8)
        codes = xq.int_repr().contiguous(memory_format=torch.channels_last)
        fns = [lambda: F.max_pool2d(xf, 3, 2, 1),
               lambda: torch.ops.quantized.max_pool2d(xq, [3, 3], [2, 2], [1, 1], [1, 1], False),
               lambda: q8.max_pool2d(codes, 3, 2, 1)]
        same = torch.equal(fns[1]().int_repr(), fns[2]())
        with torch.no_grad():
            (tf, ta, tq), _, noise = bench(fns, reps, target_s)
        out([f"| {list(shape)} | {fmt_ms(tf)} | {fmt_ms(ta)} | {fmt_ms(tq)} | {fmt_x(ratio(tf, tq))} | "
             f"{fmt_x(ratio(ta, tq))} | {'yes' if same else 'NO'} | {max(noise):.0%} |"])


# ---------------------------------------------------------------------------- end to end


def _lower_fn():
    """q8.lower, or None where this q8 does not have it (the benchmark then reports the converted model)."""
    fn = getattr(q8, "lower", None)
    if fn is None or isinstance(fn, types.ModuleType):  # not exported: the submodule q8/lower.py
        try:
            from q8.lower import lower as fn
        except ImportError:
            fn = None
    return fn


def data(size, n_calib, quick):
    """(calibration batches, evaluation images): digits upscaled to size x size, or random without sklearn."""
    try:
        x_train, _, x_test, _ = cnn.digits_data(size=size)
        src = "digits upscaled to 3x%dx%d" % (size, size)
    except ImportError:
        g = torch.Generator().manual_seed(0)
        x_train, x_test = torch.randn(512, 3, size, size, generator=g), torch.randn(256, 3, size, size, generator=g)
        src = "random normal 3x%dx%d (scikit-learn missing)" % (size, size)
    bs = 8 if quick else 32
    calib = [x_train[i * bs:(i + 1) * bs] for i in range(n_calib)]
    return calib, x_test[: (32 if quick else 256)].contiguous(), src


def build_models(make, calib):
    """{label: model or exception}: float32 and the int8 variants."""
    torch.manual_seed(0)
    model = make()
    # BatchNorm statistics from data (a random network's running stats are 0 / 1).
    model.train()
    with torch.no_grad():
        for xb in calib:
            model(xb)
    model.eval()
    models = {"float32": model}

    def attempt(label, fn):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                models[label] = fn()
        except Exception as e:  # noqa: BLE001
            models[label] = e

    def static():
        m = q8.prepare(copy.deepcopy(model), q8.QConfig(activation_observer="minmax"))
        q8.calibrate(m, calib, progress=False)
        return q8.convert(m).eval()

    attempt("q8 static", static)
    lower = _lower_fn()
    if lower is None:
        models["q8 lowered"] = _Missing("this q8 has no q8.lower")
    elif isinstance(models["q8 static"], Exception):
        models["q8 lowered"] = models["q8 static"]
    else:
        def lowered():
            # the calibration batches also give the residual-only shortcuts their qparams (a q8
            # before lower's calibration_data: without)
            if "calibration_data" in inspect.signature(lower).parameters:
                return lower(copy.deepcopy(models["q8 static"]), calibration_data=calib)
            return lower(copy.deepcopy(models["q8 static"]))

        attempt("q8 lowered", lowered)
    attempt("q8 dynamic", lambda: q8.quantize_dynamic(copy.deepcopy(model)).eval())

    def ao_fx():
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        p = prepare_fx(copy.deepcopy(model), get_default_qconfig_mapping("x86"), (calib[0],))
        with torch.no_grad():
            for xb in calib:
                p(xb)
        return convert_fx(p)

    attempt("ao FX", ao_fx)
    return models


class _Missing(RuntimeError):
    """A part this q8 does not have yet (q8.lower): reported n/a, not a failure."""


E2E = ["float32", "q8 static", "q8 lowered", "q8 dynamic", "ao FX"]


def run_models(builders, batches, size, reps, target_s, quick, out):
    calib, x_eval, src = data(size, 4, quick)
    out(["", f"## End to end (random weights, BN statistics and calibration from 4 batches of {src}; times in ms)",
         "", "| model | batch | float32 | q8 static | q8 lowered | q8 dynamic | ao FX (x86) | best q8 / float32 "
         "| best q8 / ao FX | goal | noise |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"])
    quality = []
    summary = []
    failures = []
    for name, make in builders.items():
        models = build_models(make, calib)
        with torch.no_grad():
            ref = models["float32"](x_eval)
            for label in E2E[1:]:
                m = models[label]
                if isinstance(m, Exception):
                    quality.append(f"| {name} | {label} | n/a: {short(m)} | |")
                    if label.startswith("q8") and not isinstance(m, _Missing):
                        failures.append(f"{name}, {label}: {short(m, 300)}")
                    continue
                try:
                    y = m(x_eval)
                    agree = float((y.argmax(1) == ref.argmax(1)).float().mean())
                    quality.append(f"| {name} | {label} | {rel_err(y, ref):.2e} | {agree:.1%} |")
                except Exception as e:  # noqa: BLE001
                    models[label] = e
                    quality.append(f"| {name} | {label} | fails: {short(e)} | |")
                    if label.startswith("q8"):
                        failures.append(f"{name}, {label}: {short(e, 300)}")
        for batch in batches:
            xb = torch.cat([x_eval] * ((batch + len(x_eval) - 1) // len(x_eval)))[:batch].contiguous()
            labels = [lb for lb in E2E if not isinstance(models[lb], Exception)]
            fns = [(lambda m_: (lambda: m_(xb)))(models[lb]) for lb in labels]
            with torch.no_grad():
                medians, _, noise = bench(fns, reps, target_s)
            t = dict(zip(labels, medians))
            q8_times = [t[lb] for lb in ("q8 static", "q8 lowered") if lb in t]
            best = min(q8_times) if q8_times else None
            r_fp32, r_ao = ratio(t.get("float32"), best), ratio(t.get("ao FX"), best)
            goal = "; ".join([check(r_fp32, GOALS["e2e_fp32"], "vs float32"), check(r_ao, GOALS["e2e_ao"], "vs ao FX")])
            summary.append((name, batch, r_fp32, r_ao))
            row = (f"| {name} | {batch} | " + " | ".join(fmt_ms(t.get(lb)) for lb in E2E)
                   + f" | {fmt_x(r_fp32)} | {fmt_x(r_ao)} | {goal} | {max(noise):.0%} |")
            out([row])
    out(["", f"Output quality against float32 ({len(x_eval)} images):", "",
         "| model | variant | relative error | top-1 agreement |", "|---|---|---:|---:|"] + quality)
    return summary, failures


# ---------------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default 2; --quick: 1)")
    ap.add_argument("--quick", action="store_true", help="a smoke run of a few seconds (numbers mean nothing)")
    ap.add_argument("--reps", type=int, default=None, help="timed runs per contender (default 9; quick 3)")
    ap.add_argument("--only", choices=("layers", "models"), default=None)
    ap.add_argument("--out", help="also write the report to this file")
    args = ap.parse_args()
    # torch 2.13 deprecates the quantized tensor types torch.ao's int8 conv runs on; they are the baseline.
    warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.set_num_threads(args.threads or (1 if args.quick else 2))
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    engine = set_quantized_engine()
    reps = args.reps or (3 if args.quick else 9)
    if not args.quick and reps < 7:
        ap.error("--reps must be at least 7 (medians of at least 7 runs), except with --quick")
    target_s, peak_ms = (0.005, 20) if args.quick else (0.05, 200)

    peaks = measure_peaks(peak_ms)
    int8_peak = fp32_peak = None
    if peaks:
        int8_peak = next(((k, peaks[k]) for k in INT8_PEAK_KINDS if isinstance(peaks.get(k), float) and peaks[k] > 0),
                         None)
        fp32_peak = next(((k, peaks[k]) for k in FP32_PEAK_KINDS if isinstance(peaks.get(k), float) and peaks[k] > 0),
                         None)
    lines = []

    def out(new):
        lines.extend(new)
        print("\n".join(new), flush=True)

    hdr = header(threads, "glibc defaults", engine, "not used", peaks, int8_peak, fp32_peak)
    hdr[0] = "# q8 int8 convolution vs fp32 and torch.ao int8 (CPU)" + (" — QUICK SMOKE RUN, numbers mean nothing"
                                                                       if args.quick else "")
    hdr.append(f"- median of {reps} timed runs per contender (each about {target_s * 1e3:.0f} ms), interleaved")
    hdr.append(f"- q8.lower: {'available' if _lower_fn() else 'missing in this q8 (the lowered column is n/a)'}")
    out(hdr)
    out(["## Goals (issue 12)", "",
         f"- end to end, both models: q8 at least {GOALS['e2e_ao']:g}x torch.ao FX static (x86) and at least "
         f"{GOALS['e2e_fp32']:g}x float32 (best of q8 static / q8 lowered);",
         f"- 3x3 and 1x1 layers with >= 64 channels: q8 (u8>u8) at >= {GOALS['peak']:g} of the measured int8 "
         "(vpdpbusd) peak;",
         f"- depthwise 3x3: q8 (u8>u8) at least {GOALS['dw_ao']:g}x torch.ao's int8 depthwise conv."])

    wrong, failures = [], []
    if args.only != "models":
        total_peak = int8_peak[1] * threads if int8_peak else None
        wrong = run_layers(QUICK_LAYERS if args.quick else LAYERS, reps, target_s, total_peak, out)["wrong"]
        if hasattr(q8, "max_pool2d"):
            run_pools(reps, target_s, out)
    if args.only != "layers":
        if args.quick:
            builders = {"ResNet-style (width 8)": lambda: cnn.resnet_style(width=8),
                        "MobileNetV2-style (x0.25)": lambda: cnn.mobilenetv2_style(width_mult=0.25, head=128)}
            batches, size = (2, 1), 32
        else:
            builders = {"ResNet-style": cnn.resnet_style, "MobileNetV2-style": cnn.mobilenetv2_style}
            batches, size = (16, 1), 64
        _, failures = run_models(builders, batches, size, reps, target_s * (1 if args.quick else 4), args.quick,
                                 out)

    out(["", "- times: median per call over the timed runs; every contender of a row interleaved in one loop "
         "(order alternating per repetition). noise: largest interquartile range / median of a row's timed runs; "
         "high means a busy machine, and then no ratio of that row is worth quoting.",
         "- ratios are speedups of q8: (other's time) / (q8's time).",
         "- per layer: q8 and ao share the input, weight and output quantization (per-tensor uint8 input from the "
         "post-ReLU input's range, per-output-channel symmetric int8 weight, per-tensor uint8 output from the float "
         "output's range); err vs fp32 = relative Frobenius error of q8 u8>f against fp32 F.conv2d; codes off = "
         "the fraction of q8's uint8 codes more than 1 from torch.ao's.",
         "- GOP/s = 2 * OC * OH * OW * (C / groups) * KH * KW / t of q8 u8>u8; of peak = GOP/s / (one-thread "
         "vpdpbusd peak x threads), the peak measured in this run. Depthwise layers are memory bound and cannot "
         "reach the peak; their goal is against torch.ao.",
         "- end to end: float32 is the model as built (BN not folded, contiguous input); torch.ao FX fuses "
         "conv-BN-ReLU and keeps quint8 tensors between layers; q8 lowered does the same with q8's ops."])
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
    if wrong or failures:
        for w in wrong:
            print(f"q8 conv2d failed validation: {w}", file=sys.stderr)
        for f in failures:
            print(f"q8 model failed: {f}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
