"""Benchmark q8 int8 embeddings against float nn.Embedding / nn.EmbeddingBag and torch.ao's 8-bit
rowwise quantized embeddings on CPU, interleaved in one process, as achieved memory bandwidth.

    python benchmarks/bench_embedding.py [--quick] [--threads N] [--reps R]

Contenders (timed in one repetition loop, order alternating per repetition; each timed run is
enough calls to take about 30 ms; the figure is the median over >= 7 runs, noise = IQR / median):

    float       nn.Embedding / nn.EmbeddingBag (float32 table)
    q8          q8.nn.Int8Embedding / Int8EmbeddingBag (int8 rows + float32 scale per row)
    torch.ao    torch.ao.nn.quantized.Embedding / EmbeddingBag (quint8 rows, float scale + bias per row),
                where the installed torch still has them

Bandwidth: for a lookup, the bytes of the rows it returns (each contender's own table bytes per row:
int8 + 4-byte scale for q8, 8-bit + 2 float qparams for torch.ao, 4 bytes per element for float)
plus the output written, divided by the time. "of copy" divides that by the memory bandwidth of a
large tensor copy_ (read + write bytes, 256 MiB each way) measured in the same run, so that the
figure does not depend on the machine's load. Indices are uniform over the vocabulary (the worst
case for caches; real token streams repeat rows). Regime: "DRAM" when the q8 table is larger than
the L3 cache (32 MiB on the dev machine), "L3" when it fits; in the DRAM regime the calls cycle
through several index sets whose rows together are at least twice the L3 (for q8), so that a row is
not still cached from the previous call.
"""
import argparse
import ctypes
import datetime
import os
import platform
import statistics
import time
import warnings

import torch
from torch import nn

import q8

L3_BYTES = 32 * 2 ** 20
# (vocab, dim, lookups, bag size) ; bag size 0 = nn.Embedding, else EmbeddingBag(mode="sum") of lookups / bag bags
SHAPES = [
    (32000, 256, 2048, 0),
    (32000, 1024, 4096, 0),
    (128000, 1024, 4096, 0),
    (250000, 512, 8192, 0),
    (250000, 256, 512, 0),
    (128000, 1024, 8192, 32),
    (250000, 512, 8192, 16),
]
QUICK_SHAPES = [(32000, 256, 2048, 0), (128000, 512, 4096, 0), (128000, 512, 4096, 16)]
BAG_SHAPES = [s for s in SHAPES if s[3]]


def steady_heap():
    """glibc: never trim the heap and fix the mmap threshold at 32 MiB, so outputs are reused, not page-faulted."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-1, 2 ** 30) and libc.mallopt(-3, 32 * 2 ** 20))
    except OSError:
        return False


def bench(fns, reps, target_s=0.03, warmup=2):
    iters = []
    for f in fns:
        t = []
        for _ in range(warmup):
            t0 = time.perf_counter()
            f()
            t.append(time.perf_counter() - t0)
        iters.append(max(1, round(target_s / min(t))))
    times = [[] for _ in fns]
    for r in range(reps):
        for i in (range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))):
            t0 = time.perf_counter()
            for _ in range(iters[i]):
                fns[i]()
            times[i].append((time.perf_counter() - t0) / iters[i])
    med = [statistics.median(t) for t in times]
    noise = [(q[2] - q[0]) / m for q, m in zip((statistics.quantiles(t, n=4) for t in times), med)]
    return med, noise


def copy_bandwidth(reps):
    src = torch.empty(64 * 2 ** 20, dtype=torch.float32).fill_(1.0)  # 256 MiB
    dst = torch.empty_like(src).fill_(0.0)
    (t,), (noise,) = bench([lambda: dst.copy_(src)], reps)
    return 2 * src.numel() * 4 / t, noise


def ao_modules(emb_float, bag):
    try:
        import torch.ao.nn.quantized as nnq
        from torch.ao.quantization import float_qparams_weight_only_qconfig
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            emb_float.qconfig = float_qparams_weight_only_qconfig
            cls = nnq.EmbeddingBag if bag else nnq.Embedding
            return cls.from_float(emb_float), None
    except Exception as e:  # noqa: BLE001 - missing in this torch
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}"


def run_shape(vocab, dim, n, bag, reps, bw):
    g = torch.Generator().manual_seed(0)
    q8_table = vocab * (dim + 4)
    regime = "DRAM" if q8_table > L3_BYTES else "L3"
    # Index sets used in turn, so that in the DRAM regime the rows one pass touches (all sets)
    # are at least twice the L3 for q8 (one repeated set would stay cached between calls).
    sets = max(1, min(64, -(-2 * L3_BYTES // (n * (dim + 4))))) if regime == "DRAM" else 1
    all_idx = [torch.randint(0, vocab, (n,), generator=g) for _ in range(sets)]
    if bag:
        fl = nn.EmbeddingBag(vocab, dim, mode="sum")
        offsets = torch.arange(0, n, bag)
        all_args = [(i, offsets) for i in all_idx]
        out_rows = n // bag
    else:
        fl = nn.Embedding(vocab, dim)
        all_args = [(i,) for i in all_idx]
        out_rows = n
    idx, args = all_idx[0], all_args[0]
    fl.requires_grad_(False)
    qm = (q8.nn.Int8EmbeddingBag if bag else q8.nn.Int8Embedding).from_float(fl)
    ao, ao_why = ao_modules(fl, bag)
    # Correctness before timing: q8 equals F.embedding(_bag) on its dequantized table.
    deq = qm.dequantized_weight()
    ref = (nn.functional.embedding_bag(idx, deq, offsets, mode="sum") if bag else nn.functional.embedding(idx, deq))
    torch.testing.assert_close(qm(*args), ref, rtol=1e-5, atol=1e-5)
    def cycling(m):
        state = [0]

        def call():
            state[0] = (state[0] + 1) % sets
            return m(*all_args[state[0]])
        return call

    names, fns, row_bytes = ["float", "q8"], [cycling(fl), cycling(qm)], [4 * dim, dim + 4]
    if ao is not None:
        names.append("torch.ao")
        fns.append(cycling(ao))
        row_bytes.append(dim + 8)  # quint8 rows + float scale and zero point (stored as fp32 at the row's end)
    with torch.inference_mode():
        med, noise = bench(fns, reps)
    out_bytes = out_rows * dim * 4
    kind = f"bag {bag}" if bag else "lookup"
    rows = []
    for name, t, nz, rb in zip(names, med, noise, row_bytes):
        gbs = (n * rb + out_bytes) / t / 1e9
        rows.append((name, t, nz, gbs, gbs / (bw / 1e9), med[0] / t))
    return (vocab, dim, n, kind, regime, q8_table), rows, ao_why


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: small shapes, few repetitions")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bags", action="store_true", help="only the EmbeddingBag shapes")
    p.add_argument("--reps", type=int, default=None, help="timed runs per contender (>= 7; default 9, quick 7)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    reps = max(7, a.reps or (7 if a.quick else 9))
    heap = steady_heap()
    bw, bw_noise = copy_bandwidth(reps)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.processor() or "?")
    show = torch.__config__.show()
    blas = next((s.split("=", 1)[1] for s in show.replace(",", " ").split() if s.startswith("BLAS_INFO=")), "?")
    print("# q8 int8 embeddings vs float and torch.ao (CPU)\n")
    print(f"- date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"- machine: {cpu}; {os.cpu_count()} logical CPUs; load average at start: "
          + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
    print(f"- torch {torch.__version__}; q8 {q8.__version__}, cpu_isa={q8.cpu_isa()}; threads={torch.get_num_threads()}; "
          f"BLAS_INFO={blas}; steady heap: {heap}")
    print(f"- memory bandwidth (copy_ of 256 MiB, read + write): {bw / 1e9:.1f} GB/s (noise {bw_noise:.0%})")
    print(f"- {reps} timed runs per contender, median; noise = IQR / median\n")
    print("| vocab x dim | lookups | kind | regime (q8 table) | contender | time | noise | GB/s | of copy | vs float |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ao_why = None
    for shape in (QUICK_SHAPES if a.quick else BAG_SHAPES if a.bags else SHAPES):
        (vocab, dim, n, kind, regime, tb), rows, why = run_shape(*shape, reps, bw)
        ao_why = ao_why or why
        for name, t, nz, gbs, frac, vs in rows:
            print(f"| {vocab} x {dim} | {n} | {kind} | {regime} ({tb / 2 ** 20:.0f} MiB) | {name} | {t * 1e6:.0f} us | "
                  f"{nz:.0%} | {gbs:.1f} | {frac:.2f} | {vs:.2f}x |")
    if ao_why:
        print(f"\ntorch.ao quantized embeddings unavailable: {ao_why}")


if __name__ == "__main__":
    main()
