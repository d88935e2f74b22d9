"""Runs a C++ example program and checks it against Python (ctest cases of tests/examples/CMakeLists.txt).

    check_examples.py infer    --bin infer --data DIR --model int8_qat [--dict-input]
    check_examples.py qat      --bin qat_train (--data DIR | --synthetic) --work DIR [--lsq]
    check_examples.py jit-load --bin jit_load_... --data DIR --expect ok|error

DIR is the folder written by tests/examples/make_data.py.
"""
import argparse
import os
import re
import subprocess
import sys
import time

import torch


def run(cmd):
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)
    print(p.stdout, end="")
    print(p.stderr, end="", file=sys.stderr)
    print(f"(exit status {p.returncode}, {time.perf_counter() - t0:.1f} s)", flush=True)
    return p


def fail(msg):
    print("FAIL:", msg, flush=True)
    sys.exit(1)


def check_infer(args):
    d = args.data
    model = os.path.join(d, args.model + ".pt")
    logits_path = os.path.join(d, f"{args.model}.cpp{'.dict' if args.dict_input else ''}.logits.pt")
    data = [os.path.join(d, "test.pt")] if args.dict_input else [os.path.join(d, "inputs.pt"),
                                                                  os.path.join(d, "labels.pt")]
    p = run([args.bin, model, *data, "--threads", "1", "--batch", "256", "--logits", logits_path])
    if p.returncode != 0:
        fail(f"infer exited with {p.returncode}")
    m = re.search(r"^accuracy: ([0-9.]+) % \((\d+) / (\d+)\)$", p.stdout, re.M)
    if not m:
        fail("no accuracy line in the output")
    if not re.search(r"^predictions \(first 20 of \d+\):( \d+){20}$", p.stdout, re.M):
        fail("no predictions line in the output")
    cpp_logits = torch.load(logits_path)
    py_logits = torch.load(os.path.join(d, args.model + ".logits.pt"))
    labels = torch.load(os.path.join(d, "labels.pt"))
    with open(os.path.join(d, args.model + ".accuracy.txt")) as f:
        py_acc = f.read().strip()
    if cpp_logits.shape != py_logits.shape or cpp_logits.dtype != py_logits.dtype:
        fail(f"logits {tuple(cpp_logits.shape)} {cpp_logits.dtype} vs Python's {tuple(py_logits.shape)} "
             f"{py_logits.dtype}")
    if not torch.equal(cpp_logits, py_logits):
        diff = (cpp_logits - py_logits).abs().max().item()
        fail(f"C++ logits differ from Python's (max |difference| {diff:.3g})")
    if m.group(1) != py_acc:
        fail(f"C++ accuracy {m.group(1)} % vs Python's {py_acc} %")
    correct = int((cpp_logits.argmax(1) == labels).sum())
    if int(m.group(2)) != correct:
        fail(f"printed {m.group(2)} correct, the logits give {correct}")
    print(f"PASS: C++ logits bit-equal to Python's ({tuple(py_logits.shape)}), accuracy {py_acc} % in both")


def check_qat(args):
    suffix = ("_synthetic" if args.synthetic else "_digits") + ("_lsq" if args.lsq else "")
    out = os.path.join(args.work, f"qat_model{suffix}.pt")
    if os.path.exists(out):
        os.remove(out)
    cmd = [args.bin, "--threads", "1", "--steps", "300", "--out", out]
    if not args.synthetic:
        cmd += ["--data", os.path.join(args.data, "digits.pt")]
    if args.lsq:
        cmd += ["--lsq", "--observe-steps", "100"]
    p = run(cmd)
    if p.returncode != 0:
        fail(f"qat_train exited with {p.returncode}")
    losses = [float(v) for v in re.findall(r"^step +\d+  loss ([0-9.]+)$", p.stdout, re.M)]
    m = re.search(r"^loss: initial ([0-9.]+) -> final ([0-9.]+)", p.stdout, re.M)
    if len(losses) < 5 or not m:
        fail("too few loss lines in the output")
    initial, final = float(m.group(1)), float(m.group(2))
    if not final < 0.25 * initial:
        fail(f"the loss did not fall enough: initial {initial}, final {final} (want < 0.25 x initial)")
    if not losses[-1] < losses[0]:
        fail(f"the loss of the last window ({losses[-1]}) is not below the first one's ({losses[0]})")
    acc = re.search(r"^test accuracy: ([0-9.]+) % fake-quantized, ([0-9.]+) % int8", p.stdout, re.M)
    if not acc:
        fail("no test accuracy line")
    acc_fq, acc_int8 = float(acc.group(1)), float(acc.group(2))
    if acc_fq < 85.0 or acc_int8 < acc_fq - 2.0:
        fail(f"test accuracy {acc_fq} % fake-quantized, {acc_int8} % int8 (want >= 85 % and int8 within 2 points)")
    if "logits identical" not in p.stdout:
        fail("the reloaded model did not give the same logits")
    # The file torch::save wrote is a TorchScript archive: Python loads it too.
    saved = torch.jit.load(out)
    state = dict(saved.named_buffers())
    params = dict(saved.named_parameters())
    for key in ("fc1.input_fq.scale", "fc1.input_fq.zero_point", "fc1.input_fq.running_min", "fc2.input_fq.scale"):
        if key not in state:
            fail(f"{out}: no buffer {key} (buffers: {sorted(state)})")
    for key in ("fc1.linear.weight", "fc2.linear.bias", "fc1.input_fq.lsq_scale"):
        if key not in params:
            fail(f"{out}: no parameter {key} (parameters: {sorted(params)})")
    if not torch.isfinite(state["fc1.input_fq.running_min"]).all() or float(state["fc2.input_fq.scale"]) <= 0:
        fail(f"{out}: the observer state was not saved")
    if args.lsq and int(state["fc1.input_fq.learnable"]) != 1:
        fail(f"{out}: LSQ run, but the saved quantizer is not learnable")
    print(f"PASS: loss {initial:.4f} -> {final:.4f}, test accuracy {acc_fq} % (fake-quantized) / {acc_int8} % (int8); "
          f"{out} loads in Python ({len(params)} parameters, {len(state)} buffers)")


def check_jit_load(args):
    p = run([args.bin, os.path.join(args.data, "int8_qat.pt"), os.path.join(args.data, "inputs.pt")])
    if args.expect == "ok":
        if p.returncode != 0 or "ok: output [540, 10]" not in p.stdout:
            fail("the program links q8::q8 but the q8 operators are not registered (was libq8 dropped by "
                 "--as-needed?)")
        print("PASS: q8's operators are registered")
    else:
        if p.returncode == 0:
            fail("a program without q8 loaded a q8 model")
        if "q8::" not in p.stderr:
            fail("the error does not name the q8 operator")
        print("PASS: loading fails, and the error names the q8 operator")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="what", required=True)
    a = sub.add_parser("infer")
    a.add_argument("--bin", required=True)
    a.add_argument("--data", required=True)
    a.add_argument("--model", required=True)
    a.add_argument("--dict-input", action="store_true")
    a = sub.add_parser("qat")
    a.add_argument("--bin", required=True)
    a.add_argument("--data")
    a.add_argument("--work", required=True)
    a.add_argument("--synthetic", action="store_true")
    a.add_argument("--lsq", action="store_true")
    a = sub.add_parser("jit-load")
    a.add_argument("--bin", required=True)
    a.add_argument("--data", required=True)
    a.add_argument("--expect", choices=("ok", "error"), required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    {"infer": check_infer, "qat": check_qat, "jit-load": check_jit_load}[args.what](args)


if __name__ == "__main__":
    main()
