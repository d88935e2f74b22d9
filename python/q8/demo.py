"""q8-demo: train a small digits classifier, quantize it to int8 three ways, and compare.

    q8-demo --out q8-demo-out            # or: python -m q8.demo
    q8-demo --quick --out /tmp/demo      # fewer epochs and timing runs (for tests)

What it does, in order:

1. loads scikit-learn's bundled digits (1797 8x8 images, no download), splits them
   into train and test sets (a fixed, stratified split), and standardizes them with
   the training set's mean and standard deviation;
2. trains a float32 CNN (two small convolutions, then two ``nn.Linear`` layers that
   hold 99 % of the parameters) with a fixed seed, random 1-pixel shifts of the
   training images, AdamW and a cosine schedule, on ``--train-threads`` threads;
3. builds the int8 variants with q8's workflow API:

   * ``int8 dynamic PTQ``: ``q8.quantize_dynamic`` (int8 weights, activations
     quantized per row at run time);
   * ``int8 static PTQ``: ``q8.prepare`` + ``q8.calibrate`` on 4 training batches +
     ``q8.convert`` (calibrated uint8 activations, min/max observer);
   * ``int8 QAT``: ``q8.prepare_qat`` on a copy of the float model, a few epochs of
     fine-tuning through fake quantization (observers frozen for the second half),
     then ``q8.convert``;
   * ``torch.ao FX static (x86)``, for comparison: torch.ao's ``prepare_fx`` /
     ``convert_fx`` calibrated on the same batches (not in the goals);
   * ``int8 static PTQ, q8.lower`` (when this q8 has ``q8.lower``): the static PTQ
     model lowered to a graph that keeps uint8 tensors between consecutive int8
     layers (skipped, with the reason, when lowering fails);

   then a **weight-bit sweep**: weights at 8, 6, 4, 3 and 2 bits, PTQ and QAT (a few
   hundred fine-tuning steps), per-tensor and per-channel scales, with q8's own
   ``QConfig(weight_bits=...)`` / ``q8.nn.FakeQuantize``; every point is converted
   (``q8.convert``: the narrow codes stored and run as int8) and scored, against the
   size its weights would take stored at that width (``--no-sweep`` skips it);

4. exports every model (float32 too) to TorchScript, saves it, loads it back and
   evaluates the *reloaded* model on the test set (on ``--threads`` threads); the
   test set is saved too (``test.pt``: ``{"inputs", "labels"}``), for
   ``examples/cpp/infer``;
5. times every reloaded model at batch 256 and batch 1 (interleaved: one round
   runs every model once, median of the rounds), and prints and writes a table,
   three figures (weight histogram float32 vs int8, accuracy vs latency, accuracy vs
   weight storage for the sweep) and
   ``report.md``, with PASS/MISS lines for the accuracy and size goals.

The accuracies are deterministic given ``--seed`` and ``--train-threads`` (the data
split is fixed, the loaders and the augmentation have seeded generators); the
latencies are measurements, and move with the load of the machine (the report
gives its load average).
"""
import argparse
import copy
import datetime
import os
import platform
import statistics
import sys
import time
import warnings

import torch
from torch import nn

import q8

# Goals (accuracy in percentage points, sizes as a fraction of the float32 file).
PTQ_MAX_DROP = 1.0
QAT_MAX_DROP = 0.5
MAX_SIZE_RATIO = 0.3

FLOAT = "float32"
DYNAMIC = "int8 dynamic PTQ"
STATIC = "int8 static PTQ"
QAT = "int8 QAT"
LOWERED = "int8 static PTQ, q8.lower"
TORCH_AO = "torch.ao FX static (x86)"

_FILE_NAMES = {FLOAT: "float32.pt", DYNAMIC: "int8_dynamic.pt", STATIC: "int8_static.pt", QAT: "int8_qat.pt",
               LOWERED: "int8_static_lowered.pt", TORCH_AO: "torch_ao_fx_static.pt"}


class DigitsCNN(nn.Module):
    """conv 1->16 -> conv 16->32 (3x3, 8x8 kept) -> linear 2048->256 -> linear 256->10.

    The two convolutions hold about 1 % of the parameters, the linear layers the
    rest, so the int8 model is about a quarter of the float32 one.
    """

    def __init__(self, channels=(16, 32), hidden=256, classes=10, dropout=0.2):
        super().__init__()
        c1, c2 = channels
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.fc1 = nn.Linear(c2 * 8 * 8, hidden)
        self.fc2 = nn.Linear(hidden, classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.flatten(x, 1)
        x = self.dropout(torch.relu(self.fc1(x)))
        return self.fc2(x)


# ---------------------------------------------------------------------------- arguments


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="q8-demo",
        description="Train a digits CNN, quantize it to int8 with q8 (dynamic PTQ, static PTQ, QAT), "
                    "export to TorchScript, and compare accuracy, size and latency.")
    p.add_argument("--out", default="q8-demo-out", help="output folder (figures, report.md, TorchScript files); "
                   "default: %(default)s")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the data order (default: 0)")
    p.add_argument("--quick", action="store_true",
                   help="fewer epochs and timing rounds (for tests; the goals may then be missed)")
    p.add_argument("--epochs", type=int, default=None, help="float32 training epochs (default: 30, quick: 8)")
    p.add_argument("--qat-epochs", type=int, default=None, help="QAT fine-tuning epochs (default: 4, quick: 2)")
    p.add_argument("--runs", type=int, default=None,
                   help="timed rounds per batch size after warm-up (default: 21, quick: 5; at least 5)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads for evaluation and latency (default: the number of CPUs, %d here)"
                   % (os.cpu_count() or 1))
    p.add_argument("--train-threads", type=int, default=1,
                   help="threads for training, calibration and QAT (default: 1: the model is small, one thread "
                        "is as fast on a busy machine, and the trained weights do not depend on --threads)")
    p.add_argument("--sweep-qat-steps", type=int, default=None,
                   help="QAT fine-tuning steps of each point of the weight-bit sweep (default: 200, quick: 40)")
    p.add_argument("--no-sweep", action="store_true", help="skip the weight-bit sweep (8, 6, 4, 3, 2 bits)")
    p.add_argument("--hidden", type=int, default=256, help="width of the hidden linear layer (default: 256)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    p.add_argument("--strict", action="store_true", help="exit with status 1 when a goal is missed")
    args = p.parse_args(argv)
    args.epochs = args.epochs if args.epochs is not None else (8 if args.quick else 30)
    args.qat_epochs = args.qat_epochs if args.qat_epochs is not None else (2 if args.quick else 4)
    args.runs = args.runs if args.runs is not None else (5 if args.quick else 21)
    args.sweep_qat_steps = (args.sweep_qat_steps if args.sweep_qat_steps is not None
                            else (40 if args.quick else 200))
    if args.sweep_qat_steps < 1:
        p.error("--sweep-qat-steps must be at least 1")
    if args.runs < 5:
        p.error("--runs must be at least 5 (the latency is a median of at least 5 timed rounds)")
    args.threads = args.threads or (os.cpu_count() or 1)
    return args


def _import_demo_dependencies():
    """scikit-learn, matplotlib and tqdm: the ``demo`` extra, not needed by q8 itself."""
    missing = []
    for module, package in (("sklearn", "scikit-learn"), ("matplotlib", "matplotlib"), ("tqdm", "tqdm")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise SystemExit(f"q8-demo needs {', '.join(missing)}: pip install 'q8[demo]' "
                         f"(or pip install {' '.join(missing)})")


# ---------------------------------------------------------------------------- data


def load_data(test_fraction=0.3, split_seed=0):
    """Digits as float32 [N, 1, 8, 8] tensors, standardized with the training set's statistics.

    The split is fixed (stratified, ``split_seed``) and does not depend on ``--seed``:
    runs with different seeds are evaluated on the same test images.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.data.astype("float32")  # [1797, 64], pixel values 0..16
    y = digits.target.astype("int64")
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_fraction, random_state=split_seed,
                                                        stratify=y)
    # One mean and standard deviation for every pixel (not per pixel: per-pixel
    # scaling blows up the border pixels that are almost always 0 into outliers
    # of 20+ standard deviations, which would set the range of the first layer's
    # calibrated activation quantizer).
    mean, std = float(x_train.mean()), float(x_train.std())

    def to_tensor(a):
        return ((torch.from_numpy(a) - mean) / std).reshape(-1, 1, 8, 8).contiguous()

    return to_tensor(x_train), torch.from_numpy(y_train), to_tensor(x_test), torch.from_numpy(y_test), (mean, std)


def make_loader(x, y, batch_size, seed, shuffle=True):
    g = torch.Generator().manual_seed(seed)
    ds = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g, num_workers=0)


# ---------------------------------------------------------------------------- training


def random_shift(x, background, generator):
    """Shift each image by -1, 0 or +1 pixel in each direction (the border filled with ``background``)."""
    n = x.shape[0]
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), value=background)
    oy = torch.randint(0, 3, (n,), generator=generator)
    ox = torch.randint(0, 3, (n,), generator=generator)
    ar = torch.arange(8)
    rows = (oy[:, None] + ar)[:, :, None].expand(n, 8, 8)
    cols = (ox[:, None] + ar)[:, None, :].expand(n, 8, 8)
    return padded[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)


def train(model, loader, epochs, lr, desc, progress=True, weight_decay=1e-4, on_epoch_end=None, augment=None):
    """AdamW with a cosine schedule; ``augment``: ``(background, generator)`` for :func:`random_shift`."""
    from tqdm.auto import tqdm

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * len(loader)))
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    bar = tqdm(total=epochs * len(loader), desc=desc, unit="batch", disable=not progress, leave=False,
               dynamic_ncols=True)
    for epoch in range(epochs):
        total, n = 0.0, 0
        for xb, yb in loader:
            if augment is not None:
                xb = random_shift(xb, *augment)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(yb)
            n += len(yb)
            bar.update(1)
        bar.set_postfix(epoch=epoch + 1, loss=f"{total / n:.4f}")
        if on_epoch_end is not None:
            on_epoch_end(model, epoch)
    bar.close()
    model.eval()
    return model


@torch.no_grad()
def accuracy(model, x, y, batch_size=256):
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    return 100.0 * correct / len(x)


# ---------------------------------------------------------------------------- int8 variants


def _missing_api(*names):
    return [n for n in names if not hasattr(q8, n)]


def build_dynamic(float_model, ctx):
    return q8.quantize_dynamic(copy.deepcopy(float_model)).eval()


def build_static(float_model, ctx):
    # Calibration sees a few batches once: a running min/max (torch's MinMaxObserver)
    # rather than the default moving average, which is meant for the many steps of QAT.
    cfg = q8.QConfig(activation_observer="minmax")
    m = q8.prepare(copy.deepcopy(float_model), cfg)
    q8.calibrate(m, ctx["calib_batches"], progress=ctx["progress"])
    return q8.convert(m).eval()


def build_qat(float_model, ctx):
    cfg = q8.QConfig()
    m = q8.prepare_qat(copy.deepcopy(float_model), cfg)
    epochs = ctx["qat_epochs"]
    freeze_after = max(1, epochs // 2)  # observers freeze for the last epochs: the ranges settle

    def on_epoch_end(model, epoch):
        if epoch + 1 == freeze_after and hasattr(q8, "freeze_observers"):
            q8.freeze_observers(model)

    train(m, ctx["qat_loader"], epochs, lr=ctx["qat_lr"], desc="QAT fine-tuning", progress=ctx["progress"],
          on_epoch_end=on_epoch_end, augment=ctx["qat_augment"])
    return q8.convert(m.eval()).eval()


def build_lowered(float_model, ctx):
    """The static PTQ model through ``q8.lower``: uint8 tensors between consecutive int8 layers (the calibration
    batches give a residual-only shortcut its qparams)."""
    return q8.lower(build_static(float_model, ctx), calibration_data=ctx["calib_batches"]).eval()


def build_torch_ao(float_model, ctx):
    """For comparison: torch.ao's FX static PTQ (x86 backend), calibrated on the same batches."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        if torch.backends.quantized.engine != "x86":
            torch.backends.quantized.engine = "x86"  # the default on x86 CPUs; an error elsewhere (skipped)
        batches = ctx["calib_batches"]
        m = prepare_fx(copy.deepcopy(float_model).eval(), get_default_qconfig_mapping("x86"), (batches[0][:1],))
        with torch.no_grad():
            for xb in batches:
                m(xb)
        return convert_fx(m).eval()


# name, builder, q8 functions it needs, optional (a failure skips the variant instead of stopping the demo)
VARIANTS = [
    (DYNAMIC, build_dynamic, ("quantize_dynamic",), False),
    (STATIC, build_static, ("QConfig", "prepare", "calibrate", "convert"), False),
    (QAT, build_qat, ("QConfig", "prepare_qat", "convert"), False),
    (LOWERED, build_lowered, ("QConfig", "prepare", "calibrate", "convert", "lower"), True),
    (TORCH_AO, build_torch_ao, (), True),
]
# Variants that are not q8's: in the table and the figure, not in the goals.
REFERENCES = (TORCH_AO,)


# ---------------------------------------------------------------------------- weight-bit sweep
#
# On digits every int8 variant scores what float32 does: 8 bits are more than this
# model needs. The sweep lowers the weight width until accuracy falls. Weights get
# ``bits``-bit codes (symmetric, [-(2^(bits-1) - 1), 2^(bits-1) - 1]) with q8's own
# machinery (QConfig(weight_bits=...), q8.nn.FakeQuantize), activations stay uint8;
# q8.convert then stores the narrow codes in int8 containers and runs them on the
# int8 kernels: every sweep point is evaluated as a converted int8 model.

SWEEP_BITS = (8, 6, 4, 3, 2)
SWEEP_METHODS = ("PTQ", "QAT")
SWEEP_GRANULARITIES = ("per channel", "per tensor")
SWEEP_NOTE = ("sub-8-bit points are fake-quantized: their b-bit weight codes are stored and run as int8; "
              "size = b bits x weights + float32 scales and biases (what the weights would take stored at b bits)")


def _weight_layers(model):
    """The modules that carry a weight fake quantizer (QATLinear, QATConv2d, ...)."""
    return [m for m in model.modules() if isinstance(getattr(m, "weight_fake_quant", None), q8.nn.FakeQuantize)]


def _per_tensor_weights(model, bits):
    """Give every weight a per-tensor symmetric ``bits``-bit quantizer (q8.QConfig only makes per-channel ones)."""
    for m in _weight_layers(model):
        m.weight_fake_quant = q8.nn.FakeQuantize(observer="current", qscheme="per_tensor_symmetric", bits=bits,
                                                 device=m.weight.device)
    return model


def _per_tensor_as_per_channel(model):
    """Before q8.convert (which takes per-channel weight qparams): the per-tensor scale repeated per channel.

    The same codes and the same values: a per-channel quantizer whose channels all
    hold the tensor's scale (observed on the final weight), its observer off.
    """
    for m in _weight_layers(model):
        fq = m.weight_fake_quant
        if fq.per_channel:
            continue
        with torch.no_grad():
            fq(m.weight)  # observes the final weight when the observer is still on
        scale, _ = fq.calculate_qparams()
        channels = m.weight.shape[0]
        pc = q8.nn.FakeQuantize(observer="current", qscheme="per_channel_symmetric", channels=channels,
                                quant_min=fq.quant_min, quant_max=fq.quant_max,
                                bits=max(2, (fq.quant_max - fq.quant_min).bit_length()), device=m.weight.device)
        pc.scale.copy_(scale.reshape(()).expand(channels))
        pc.zero_point.zero_()
        pc.running_min.copy_(-scale.reshape(()).expand(channels) * fq.quant_max)
        pc.running_max.copy_(scale.reshape(()).expand(channels) * fq.quant_max)
        pc.disable_observer()
        m.weight_fake_quant = pc
    return model


def weight_storage_bytes(model, bits, per_channel):
    """Bytes of the weights stored at ``bits`` bits (``bits`` = 32: float32) + float32 biases and scales.

    Counts the weights of every nn.Linear / nn.Conv2d (and their QAT versions); other
    parameters (none in DigitsCNN) in float32.
    """
    total = 0.0
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            w = m.weight
            total += w.numel() * bits / 8
            if m.bias is not None:
                total += 4 * m.bias.numel()
            if bits < 32:
                total += 4 * (w.shape[0] if per_channel else 1)
    return int(round(total))


def sweep_point(float_model, bits, method, granularity, ctx):
    """One sweep point: (converted int8 model, seconds)."""
    t0 = time.perf_counter()
    per_channel = granularity == "per channel"
    if method == "PTQ":
        m = q8.prepare(copy.deepcopy(float_model), q8.QConfig(weight_bits=bits, activation_observer="minmax"))
        if not per_channel:
            _per_tensor_weights(m, bits)
        q8.calibrate(m, ctx["calib_batches"], progress=False)
    else:
        m = q8.prepare_qat(copy.deepcopy(float_model), q8.QConfig(weight_bits=bits))
        if not per_channel:
            _per_tensor_weights(m, bits)
        steps = ctx["sweep_qat_steps"]
        # fresh seeded loader and augmentation for every point: a point does not depend on the others
        x_train, y_train, background, seed = ctx["sweep_qat_data"]
        loader = make_loader(x_train, y_train, 32, seed)
        epochs = max(1, -(-steps // len(loader)))

        def on_epoch_end(model, epoch):
            if epoch + 1 == max(1, epochs // 2):
                q8.enable_observer(model, False)  # activation ranges settle; weight scales follow no more
                for layer in _weight_layers(model):  # ... except the weights': they keep tracking the weight
                    layer.weight_fake_quant.enable_observer(True)

        train(m, loader, epochs, lr=ctx["sweep_qat_lr"], desc=f"QAT {bits}-bit {granularity}",
              progress=False, on_epoch_end=on_epoch_end, augment=(background, torch.Generator().manual_seed(seed)))
    m.eval()
    _per_tensor_as_per_channel(m)
    return q8.convert(m).eval(), time.perf_counter() - t0


def run_sweep(float_model, x_test, y_test, ctx, float_accuracy):
    """Every (bits, method, granularity): rows with accuracy and weight storage size."""
    rows = []
    for method in SWEEP_METHODS:
        for granularity in SWEEP_GRANULARITIES:
            for bits in SWEEP_BITS:
                torch.manual_seed(ctx["seed"])
                model, seconds = sweep_point(float_model, bits, method, granularity, ctx)
                acc = accuracy(model, x_test, y_test)
                rows.append({"bits": bits, "method": method, "granularity": granularity, "accuracy": acc,
                             "size": weight_storage_bytes(float_model, bits, granularity == "per channel"),
                             "drop": acc - float_accuracy, "seconds": seconds})
    return rows


def format_sweep_table(rows, float_accuracy, float_size):
    lines = ["| weight bits | method | scales | accuracy (%) | vs float32 (points) | weights (bytes) | size / fp32 |",
             "|---:|---|---|---:|---:|---:|---:|",
             f"| 32 (float32) | - | - | {float_accuracy:.2f} | +0.00 | {float_size:,} | 1.000 |"]
    for r in rows:
        lines.append(f"| {r['bits']} | {r['method']} | {r['granularity']} | {r['accuracy']:.2f} | "
                     f"{r['drop']:+.2f} | {r['size']:,} | {r['size'] / float_size:.3f} |")
    return "\n".join(lines)


def plot_sweep(rows, float_accuracy, float_size, path):
    """Accuracy against weight storage size, one line per (method, granularity); left the whole range, right zoomed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {("PTQ", "per tensor"): ("tab:orange", "s", "--"), ("PTQ", "per channel"): ("tab:green", "^", "--"),
              ("QAT", "per tensor"): ("tab:purple", "D", "-"), ("QAT", "per channel"): ("tab:red", "o", "-")}
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.4))
    ticks = sorted({(r["bits"], r["size"]) for r in rows if r["granularity"] == "per channel"})
    for k, ax in enumerate(axes):
        for (method, gran), (color, marker, ls) in styles.items():
            pts = sorted((r["size"], r["accuracy"]) for r in rows
                         if r["method"] == method and r["granularity"] == gran)
            if pts:
                ax.plot([p[0] / 1024 for p in pts], [p[1] for p in pts], ls=ls, color=color, marker=marker,
                        mfc="none", mew=1.8, ms=7, label=f"{method}, {gran}")
        ax.scatter([float_size / 1024], [float_accuracy], marker="*", s=160, color="tab:blue", zorder=4,
                   label=f"float32 ({float_accuracy:.2f} %)")
        ax.axhline(float_accuracy, color="tab:blue", lw=0.7, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_xticks([size / 1024 for _, size in ticks] + [float_size / 1024])
        ax.set_xticklabels([f"{b} bits\n{size / 1024:.0f}" for b, size in ticks]
                           + [f"32 bits\n{float_size / 1024:.0f}"], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel("weight storage (KiB, log scale): bits x weights + float32 scales and biases")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(True, alpha=0.3)
        if k == 0:
            ax.set_title("Accuracy against model size (whole range)")
            ax.legend(loc="lower right", fontsize=9)
        else:
            lo = float_accuracy - 5.0
            ax.set_ylim(lo, min(100.4, max([float_accuracy] + [r["accuracy"] for r in rows]) + 0.4))
            ax.set_title(f"Zoom: within 5 points of float32 (points below {lo:.1f} % are off the panel)")
    fig.suptitle("Digits CNN, weights at 8, 6, 4, 3, 2 bits (symmetric codes), activations uint8: PTQ and QAT, "
                 "per-tensor and per-channel scales")
    fig.text(0.01, 0.01, "Sub-8-bit points are fake-quantized: their b-bit weight codes are stored and run as int8 "
                         "(q8.convert, int8 kernels); the size is what the weights would take stored at b bits.",
             fontsize=9, color="0.25", va="bottom")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)

# ---------------------------------------------------------------------------- TorchScript


def export_and_reload(model, path, example):
    """``torch.jit.script`` (or ``torch.jit.trace`` if scripting fails), save, load back."""
    model = model.eval()
    with warnings.catch_warnings():
        # torch 2.13 marks torch.jit.script/trace as deprecated; q8 supports them for C++ deployment.
        warnings.simplefilter("ignore", DeprecationWarning)
        # scripting torch.ao's converted GraphModule warns about its attributes' annotations
        warnings.filterwarnings("ignore", message="The TorchScript type system doesn't support instance-level")
        try:
            scripted = torch.jit.script(model)
            how = "script"
        except Exception as e:  # noqa: BLE001 (any scripting failure: fall back to tracing)
            print(f"  torch.jit.script failed for {os.path.basename(path)} ({type(e).__name__}: "
                  f"{str(e).splitlines()[0] if str(e) else ''}); tracing instead")
            with torch.no_grad():
                scripted = torch.jit.trace(model, example)
            how = "trace"
        torch.jit.save(scripted, path)
        loaded = torch.jit.load(path)
    return loaded.eval(), how


# ---------------------------------------------------------------------------- latency


def measure_latency(models, inputs, runs, warmup=3, min_time=0.02):
    """Median seconds per call of each model on each input, interleaved.

    For each input, every model is first warmed up (TorchScript's profiling
    executor optimizes after its first calls), then each of ``runs`` rounds calls
    every model in turn; one timed run is ``inner`` calls back to back (enough for
    about ``min_time`` seconds for the slowest model), and the result is the median
    over the rounds of the time per call.
    """
    result = {name: {} for name in models}
    with torch.no_grad():
        for label, x in inputs.items():
            slowest = 0.0
            for name, m in models.items():
                for _ in range(warmup):
                    m(x)
                t0 = time.perf_counter()
                m(x)
                slowest = max(slowest, time.perf_counter() - t0)
            inner = max(1, min(200, int(min_time / max(slowest, 1e-6))))
            samples = {name: [] for name in models}
            for _ in range(runs):
                for name, m in models.items():
                    t0 = time.perf_counter()
                    for _ in range(inner):
                        m(x)
                    samples[name].append((time.perf_counter() - t0) / inner)
            for name in models:
                result[name][label] = statistics.median(samples[name])
    return result


# ---------------------------------------------------------------------------- figures


def _dequantized_weight(layer):
    """(float values of an int8 layer's weight, per-output-channel scales) from its canonical buffers."""
    w = layer.weight_int8.to(torch.float32)
    scale = layer.weight_scale.to(torch.float32).reshape(-1, *([1] * (w.dim() - 1)))
    return w * scale, layer.weight_scale


def plot_weight_histogram(float_layer, int8_layer, layer_name, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    wf = float_layer.weight.detach().to(torch.float32)
    wq, scales = _dequantized_weight(int8_layer)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))

    # Left: the whole layer. The shapes agree: quantization keeps the distribution.
    lim = float(wf.abs().max())
    bins = np.linspace(-lim, lim, 161)
    ax1.hist(wf.flatten().numpy(), bins=bins, alpha=0.55, label="float32", color="tab:blue")
    ax1.hist(wq.flatten().numpy(), bins=bins, histtype="step", lw=1.3, label="int8, dequantized", color="tab:red")
    ax1.set_title(f"{layer_name}: all {wf.numel():,} weights")
    ax1.set_xlabel("weight value")
    ax1.set_ylabel("count")
    ax1.legend()

    # Right: one output channel, zoomed to +-12 quantization steps around 0, bins 10x
    # finer than a step: the float weights are a continuum, the int8 ones sit on the
    # levels k * scale.
    ch = int(torch.argmax((wf.flatten(1).abs() < 12 * scales.reshape(-1, 1)).sum(1)))  # most weights in the window
    s = float(scales[ch])
    rf, rq = wf[ch].flatten().numpy(), wq[ch].flatten().numpy()
    steps = 12
    bins = np.arange(-(steps + 0.5) * s, (steps + 0.5) * s + 1e-12, s / 10)
    ax2.hist(rf, bins=bins, alpha=0.55, label="float32", color="tab:blue")
    ax2.hist(rq, bins=bins, alpha=0.9, label="int8, dequantized", color="tab:red", histtype="stepfilled")
    for k in range(-steps, steps + 1):
        ax2.axvline(k * s, color="0.85", lw=0.5, zorder=0)
    ax2.set_title(f"{layer_name}, output channel {ch}: ±{steps} steps of scale {s:.2e}")
    ax2.set_xlabel("weight value (grey lines: the int8 levels k·scale)")
    ax2.legend()
    fig.suptitle("Weights of the float32 model and of the int8 model (symmetric per output channel, [-127, 127])")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tradeoff(rows, latency_labels, path):
    """Accuracy against median latency, one panel per batch size; labels staggered (points often coincide)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {FLOAT: ("tab:blue", "o"), DYNAMIC: ("tab:orange", "s"), STATIC: ("tab:green", "^"),
              QAT: ("tab:red", "D"), LOWERED: ("tab:purple", "v"), TORCH_AO: ("tab:gray", "P")}
    accs = [r["accuracy"] for r in rows]
    fig, axes = plt.subplots(1, len(latency_labels), figsize=(6.2 * len(latency_labels), 4.6), squeeze=False)
    for ax, label in zip(axes[0], latency_labels):
        xs = [r["latency"][label] * 1e3 for r in rows]
        # Label slots top to bottom by accuracy (then latency): fewer crossing leader lines.
        order = sorted(range(len(rows)), key=lambda j: (-rows[j]["accuracy"], xs[j]))
        slot = {j: k for k, j in enumerate(order)}
        for i, (r, x) in enumerate(zip(rows, xs)):
            color, marker = styles.get(r["name"], ("tab:gray", "o"))
            ax.scatter([x], [r["accuracy"]], s=70, marker=marker, facecolors="none", edgecolors=color, linewidths=2,
                       zorder=3)
            # Labels in a column at the right, with a leader line to their point.
            ax.annotate(f"{r['name']}\n{r['accuracy']:.2f} %, {x:.3g} ms, {r['size'] / 1024:.0f} KiB "
                        f"({r['size_ratio']:.2f}x)", (x, r["accuracy"]), textcoords="axes fraction",
                        xytext=(0.56, 0.95 - 0.16 * slot[i]), fontsize=8, color=color, va="top",
                        arrowprops={"arrowstyle": "-", "color": color, "lw": 0.6, "shrinkA": 2, "shrinkB": 6,
                                    "relpos": (0.0, 0.5)})
        ax.set_xlabel(f"median latency, {label} (ms; TorchScript, reloaded)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"Accuracy against latency, {label}")
        ax.grid(True, alpha=0.3)
        ax.set_xlim(0, max(xs) * 2.1)
        ax.set_ylim(min(accs) - 1.0, min(max(accs) + 0.6, 100.3))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------- report


def _load_average():
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except (AttributeError, OSError):  # not on every platform
        return "n/a"


def machine_description():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"


def format_table(rows, latency_labels):
    float_row = next(r for r in rows if r["name"] == FLOAT)
    header = ["variant", "accuracy (%)", "file (bytes)", "size / fp32"]
    for label in latency_labels:
        header += [f"latency {label} (ms)", f"speed-up {label}"]
    header.append("export")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 2) + ["---"]) + "|"]
    for r in rows:
        cells = [r["name"], f"{r['accuracy']:.2f}", f"{r['size']:,}", f"{r['size_ratio']:.3f}"]
        for label in latency_labels:
            t = r["latency"][label]
            cells += [f"{t * 1e3:.3f}", f"{float_row['latency'][label] / t:.2f}x"]
        cells.append(r["export"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check_goals(rows, skipped):
    """PASS/MISS/SKIP lines, and whether every goal that was checked passed."""
    by_name = {r["name"]: r for r in rows}
    ref = by_name[FLOAT]["accuracy"]
    lines, ok = [], True
    for name, limit in ((DYNAMIC, PTQ_MAX_DROP), (STATIC, PTQ_MAX_DROP), (QAT, QAT_MAX_DROP),
                        (LOWERED, PTQ_MAX_DROP)):
        if name not in by_name:
            lines.append(f"SKIP {name}: accuracy within {limit} point of float32 (not run: {skipped.get(name)})")
            continue
        acc = by_name[name]["accuracy"]
        passed = acc >= ref - limit
        ok &= passed
        lines.append(f"{'PASS' if passed else 'MISS'} {name}: accuracy {acc:.2f} % vs float32 {ref:.2f} % "
                     f"({acc - ref:+.2f} points, goal >= -{limit})")
    for r in rows:
        if r["name"] == FLOAT or r["name"] in REFERENCES:
            continue
        passed = r["size_ratio"] <= MAX_SIZE_RATIO
        ok &= passed
        lines.append(f"{'PASS' if passed else 'MISS'} {r['name']}: file {r['size']:,} bytes = "
                     f"{r['size_ratio']:.3f} of float32 (goal <= {MAX_SIZE_RATIO})")
    return lines, ok


def write_report(path, table, goals, info, figures, sweep_table=None):
    lines = [
        "# q8-demo report",
        "",
        f"Date: {info['date']}  ",
        f"Machine: {info['machine']}  ",
        f"torch {info['torch']}, q8 {info['q8']} (CPU kernels: {info['isa']}), "
        f"torch.get_num_threads() = {info['threads']} for evaluation and latency "
        f"({info['train_threads']} for training)  ",
        f"Seed: {info['seed']}; mode: {info['mode']}; float32 epochs: {info['epochs']}, QAT epochs: "
        f"{info['qat_epochs']}; latency: median of {info['runs']} interleaved rounds after warm-up "
        f"(1-minute load average of the machine: {info['load']} timing)  ",
        f"Data: scikit-learn digits, {info['n_train']} train / {info['n_test']} test images (fixed stratified "
        f"split), standardized; model: {info['model']}  ",
        f"Wall time: {info['wall']:.1f} s ({info['stages']})",
        "",
        "Every model below was exported to TorchScript, saved, loaded back, and the *reloaded* model was "
        "evaluated and timed.",
        "",
        table,
        "",
        "## Goals",
        "",
        *[f"- {g}" for g in goals],
        "",
        *(["## Weight-bit sweep", "",
           f"Weights at 8, 6, 4, 3 and 2 bits (symmetric codes), activations uint8; PTQ (calibrated as the static "
           f"variant) and QAT ({info['sweep_qat_steps']} fine-tuning steps from the float32 model); per-tensor and "
           f"per-channel weight scales. Accuracy of the converted eager models on the test set; "
           f"{SWEEP_NOTE}.", "", sweep_table, ""] if sweep_table else []),
        "## Figures",
        "",
        *[f"![{title}]({os.path.basename(p)})\n" for title, p in figures],
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------- main


def run(args):
    """The whole demo; returns a dict of results (also used by the tests)."""
    _import_demo_dependencies()
    start = time.perf_counter()
    torch.set_num_threads(args.train_threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    progress = not args.no_progress
    print(f"q8-demo | q8 {q8.__version__} (CPU kernels: {q8.cpu_isa()}) | torch {torch.__version__} | "
          f"threads {args.threads} (training: {args.train_threads}) | seed {args.seed} | "
          f"{'quick' if args.quick else 'full'} mode")

    x_train, y_train, x_test, y_test, (mean, std) = load_data()
    background = (0.0 - mean) / std  # a blank pixel, standardized
    print(f"data: digits, {len(x_train)} train / {len(x_test)} test images (8x8), standardized")
    # The test set beside the TorchScript files, for programs outside Python
    # (examples/cpp/infer <model.pt> test.pt).
    torch.save({"inputs": x_test.contiguous(), "labels": y_test.contiguous()}, os.path.join(args.out, "test.pt"))

    # 1. float32 model
    torch.manual_seed(args.seed)
    model = DigitsCNN(hidden=args.hidden)
    n_params = sum(p.numel() for p in model.parameters())
    n_linear = sum(p.numel() for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters())
    model_desc = (f"DigitsCNN (conv 1->16, conv 16->32, linear 2048->{args.hidden}, linear {args.hidden}->10), "
                  f"{n_params:,} parameters, {100 * n_linear / n_params:.1f} % in nn.Linear")
    print(f"model: {model_desc}")
    # Random 1-pixel shifts of the training images: about 1 point of test accuracy.
    t0 = time.perf_counter()
    train(model, make_loader(x_train, y_train, 32, args.seed), args.epochs, lr=3e-3, desc="float32 training",
          progress=progress, augment=(background, torch.Generator().manual_seed(args.seed)))
    model.eval()
    stage_times = {"float32 training": time.perf_counter() - t0}
    print(f"float32 training: {args.epochs} epochs in {stage_times['float32 training']:.1f} s")

    # 2. int8 variants
    ctx = {
        "progress": progress,
        # calibration: 4 batches of 128 training images (no test image is seen)
        "calib_batches": [x_train[i:i + 128] for i in range(0, min(len(x_train), 512), 128)],
        "qat_loader": make_loader(x_train, y_train, 32, args.seed + 1),
        "qat_augment": (background, torch.Generator().manual_seed(args.seed + 1)),
        "qat_epochs": args.qat_epochs,
        "qat_lr": 2e-4,
        "seed": args.seed,
        "sweep_qat_data": (x_train, y_train, background, args.seed + 2),
        "sweep_qat_steps": args.sweep_qat_steps,
        "sweep_qat_lr": 5e-4,
    }
    eager = {FLOAT: model}
    skipped = {}
    for name, build, needs, optional in VARIANTS:
        missing = _missing_api(*needs)
        if missing:
            skipped[name] = f"q8.{', q8.'.join(missing)} not available in this q8"
            print(f"{name}: skipped ({skipped[name]})")
            continue
        torch.manual_seed(args.seed)
        t0 = time.perf_counter()
        try:
            eager[name] = build(model, ctx)
        except Exception as e:  # noqa: BLE001 (an optional variant: say why and go on)
            if not optional:
                raise
            skipped[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            print(f"{name}: skipped ({skipped[name]})")
            continue
        stage_times[name] = time.perf_counter() - t0
        print(f"{name}: built in {stage_times[name]:.1f} s")

    # 2b. weight-bit sweep (8, 6, 4, 3, 2 bits x PTQ / QAT x per tensor / per channel), on --train-threads
    sweep_rows = []
    float_accuracy = accuracy(model, x_test, y_test)
    float_weight_bytes = weight_storage_bytes(model, 32, False)
    if not args.no_sweep:
        t0 = time.perf_counter()
        sweep_rows = run_sweep(model, x_test, y_test, ctx, float_accuracy)
        stage_times["weight-bit sweep"] = time.perf_counter() - t0
        print(f"weight-bit sweep: {len(sweep_rows)} points in {stage_times['weight-bit sweep']:.1f} s")

    # 3. TorchScript round trip, accuracy of the reloaded models (from here on, --threads)
    torch.set_num_threads(args.threads)
    example = x_test[:1]
    rows, loaded = [], {}
    for name, m in eager.items():
        path = os.path.join(args.out, _FILE_NAMES[name])
        loaded[name], how = export_and_reload(m, path, example)
        acc = accuracy(loaded[name], x_test, y_test)
        rows.append({"name": name, "accuracy": acc, "size": os.path.getsize(path), "file": path, "export": how})
        print(f"{name}: test accuracy {acc:.2f} % (reloaded TorchScript, {os.path.getsize(path):,} bytes)")
    float_size = rows[0]["size"]
    for r in rows:
        r["size_ratio"] = r["size"] / float_size

    # 4. latency, interleaved
    inputs = {"batch 256": x_test[:256].contiguous(), "batch 1": x_test[:1].contiguous()}
    t0 = time.perf_counter()
    load_before = _load_average()
    lat = measure_latency(loaded, inputs, args.runs)
    load_after = _load_average()
    stage_times["latency"] = time.perf_counter() - t0
    for r in rows:
        r["latency"] = lat[r["name"]]

    # 5. table, goals, figures, report
    labels = list(inputs)
    table = format_table(rows, labels)
    goals, ok = check_goals(rows, skipped)
    print()
    print(f"threads: torch.get_num_threads() = {torch.get_num_threads()}; latency: median of {args.runs} "
          f"interleaved rounds; 1-minute load average {load_before} before, {load_after} after timing")
    print(table)
    print()
    for g in goals:
        print(g)

    int8_for_hist = eager.get(STATIC, eager.get(DYNAMIC))
    hist_path = os.path.join(args.out, "weight_histogram.png")
    plot_weight_histogram(model.fc1, int8_for_hist.fc1, "fc1", hist_path)
    trade_path = os.path.join(args.out, "accuracy_vs_latency.png")
    plot_tradeoff(rows, labels, trade_path)
    figures = [("weight histogram, float32 vs int8", hist_path), ("accuracy against latency", trade_path)]
    sweep_table = None
    if sweep_rows:
        sweep_table = format_sweep_table(sweep_rows, float_accuracy, float_weight_bytes)
        print()
        print(f"weight-bit sweep (test accuracy of the converted eager models; {SWEEP_NOTE}):")
        print(sweep_table)
        sweep_path = os.path.join(args.out, "accuracy_vs_weight_bits.png")
        plot_sweep(sweep_rows, float_accuracy, float_weight_bytes, sweep_path)
        figures.append(("accuracy against model size, weights at 8 to 2 bits", sweep_path))
    wall = time.perf_counter() - start
    info = {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": machine_description(),
        "torch": torch.__version__,
        "q8": q8.__version__,
        "isa": q8.cpu_isa(),
        "threads": torch.get_num_threads(),
        "train_threads": args.train_threads,
        "seed": args.seed,
        "mode": "quick" if args.quick else "full",
        "epochs": args.epochs,
        "qat_epochs": args.qat_epochs,
        "sweep_qat_steps": args.sweep_qat_steps,
        "runs": args.runs,
        "n_train": len(x_train),
        "n_test": len(x_test),
        "model": model_desc,
        "wall": wall,
        "load": f"{load_before} before, {load_after} after",
        "stages": ", ".join(f"{k} {v:.1f} s" for k, v in stage_times.items()),
    }
    report_path = os.path.join(args.out, "report.md")
    write_report(report_path, table, goals, info, figures, sweep_table)
    print(f"\nwrote {report_path}, {', '.join(p for _, p in figures)} and the TorchScript files "
          f"({', '.join(_FILE_NAMES[r['name']] for r in rows)}) in {args.out} ({wall:.1f} s)")
    return {"rows": rows, "goals": goals, "ok": ok, "skipped": skipped, "out": args.out, "report": report_path,
            "figures": [p for _, p in figures], "info": info, "sweep": sweep_rows,
            "sweep_table": sweep_table, "float_model": model, "float_accuracy": float_accuracy,
            "float_weight_bytes": float_weight_bytes}


def main(argv=None):
    args = parse_args(argv)
    threads = torch.get_num_threads()
    try:
        result = run(args)
    finally:
        torch.set_num_threads(threads)  # main() may be called in-process (tests)
    return 1 if args.strict and not result["ok"] else 0


if __name__ == "__main__":
    sys.exit(main())
