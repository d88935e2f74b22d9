"""A/B of two q8 builds on the CNN models: q8 `lower` vs torch.ao FX, interleaved, in one process.

Two libq8 builds cannot load in one process (they register the same ops), so an A/B of a
kernel change runs this script alternately under each build, and compares the ratio each
process prints (q8 and torch.ao interleaved in that process, so the ratio travels; the
absolute times do not):

    # the old build: a worktree of the old commit, its libq8 next to a copy of its python/q8
    git worktree add /tmp/old <commit> && cmake -S /tmp/old -B /tmp/old/build -G Ninja \\
        -DCMAKE_PREFIX_PATH="$(python -c 'import torch; print(torch.utils.cmake_prefix_path)')" \\
        && cmake --build /tmp/old/build --target q8
    mkdir -p /tmp/oldpkg && cp -r /tmp/old/python/q8 /tmp/oldpkg/ && cp -L /tmp/old/build/libq8.so /tmp/oldpkg/q8/
    for i in 1 2 3; do
        PYTHONPATH=/tmp/oldpkg python benchmarks/ab_cnn_models.py   # old
        python benchmarks/ab_cnn_models.py                          # new (the installed q8)
    done

Models and calibration as in bench_conv.py (batch 16 of random 3x64x64 input by default).
"""
import argparse
import os
import statistics
import sys
import time
import warnings

import torch

import q8
from q8 import _cnn_models as cnn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_conv  # noqa: E402
from bench_linear import header  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=21, help="timed pairs (at least 7)")
    args = ap.parse_args()
    if args.reps < 7:
        ap.error("--reps must be at least 7")
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    engine = bench_conv.set_quantized_engine()
    hdr = header(torch.get_num_threads(), "glibc defaults", engine, "not used", None, None, None)
    hdr[0] = "# A/B: q8 lower vs torch.ao FX on the CNN models (CPU)"
    print("\n".join(line for line in hdr if "peak" not in line))
    print(f"- q8 loaded from {os.path.dirname(q8.__file__)}")
    calib = bench_conv.data(64, 4, False)[0]
    x = torch.randn(args.batch, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for name, make in (("ResNet-style", cnn.resnet_style), ("MobileNetV2-style", cnn.mobilenetv2_style)):
        models = bench_conv.build_models(make, calib)
        a, b = models["q8 lowered"], models["ao FX"]
        for m in (a, b):
            if isinstance(m, Exception):
                raise SystemExit(f"{name}: a model failed to build: {m!r}")
        with torch.inference_mode():
            for _ in range(3):
                a(x), b(x)
            ta, tb = [], []
            for r in range(args.reps):
                order = ((a, ta), (b, tb)) if r % 2 == 0 else ((b, tb), (a, ta))
                for m, acc in order:
                    t = time.perf_counter()
                    m(x)
                    m(x)
                    acc.append((time.perf_counter() - t) / 2)
        ma, mb = statistics.median(ta), statistics.median(tb)
        print(f"{name} batch {args.batch}: q8 lower {ma * 1e3:.2f} ms, torch.ao FX {mb * 1e3:.2f} ms, "
              f"q8 speedup over torch.ao {mb / ma:.3f}")


if __name__ == "__main__":
    main()
