"""q8-demo (python/q8/demo.py) end to end, in --quick mode.

One quick run in this process (training on 1 thread, evaluation and timing on 1
thread), checked for its files and accuracies, and a second run with the same seed
through ``python -m q8.demo`` in a subprocess, which must give identical accuracies.
About 10-20 s on 2 cores.
"""
import os
import re
import subprocess
import sys

import pytest
import torch

pytest.importorskip("sklearn", reason="q8-demo needs scikit-learn (pip install 'q8[demo]')")
pytest.importorskip("matplotlib", reason="q8-demo needs matplotlib (pip install 'q8[demo]')")
pytest.importorskip("tqdm", reason="q8-demo needs tqdm (pip install 'q8[demo]')")

import q8  # noqa: E402
from q8 import demo  # noqa: E402

# torch 2.13 marks torch.jit.load deprecated; the demo's TorchScript files are what we check.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The folder holding the q8 package this test imported (the source tree, or a venv's
# site-packages where scripts/test_torch.sh installs q8 built for another torch), so
# that subprocesses run that same q8.
Q8_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(q8.__file__)))
ARGS = ["--quick", "--seed", "3", "--threads", "1", "--no-progress"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Bounds from --quick runs with seeds 0-5 (float32 97.96-99.26 %; the PTQ variants
# within 0.2 point of it, QAT, which trains 2 more epochs, from -0.2 to +0.6), with
# margin for other torch versions: a broken conversion or calibration falls far below.
FLOAT_MIN = 90.0
PTQ_MAX_DROP = 1.5
QAT_MAX_DROP = 1.5


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    threads = torch.get_num_threads()
    result = demo.run(demo.parse_args(ARGS + ["--out", str(out)]))
    torch.set_num_threads(threads)
    return result


def _accuracies(rows):
    return {r["name"]: r["accuracy"] for r in rows}


def test_all_variants_ran(quick_run):
    names = [r["name"] for r in quick_run["rows"]]
    assert names == [demo.FLOAT, demo.DYNAMIC, demo.STATIC, demo.QAT], quick_run["skipped"]
    assert all(r["export"] == "script" for r in quick_run["rows"])  # no fallback to tracing


def test_files(quick_run):
    out = quick_run["out"]
    for path in quick_run["figures"]:
        with open(path, "rb") as f:
            data = f.read()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC), path
    report = open(quick_run["report"]).read()
    assert "| variant | accuracy (%) | file (bytes) | size / fp32 |" in report
    for r in quick_run["rows"]:
        assert f"| {r['name']} | {r['accuracy']:.2f} |" in report
    for name in ("weight_histogram.png", "accuracy_vs_latency.png"):
        assert f"]({name})" in report
    assert f"torch {torch.__version__}" in report and "Seed: 3" in report
    assert re.search(r"torch\.get_num_threads\(\) = \d+", report)

    x = torch.randn(3, 1, 8, 8)
    for r in quick_run["rows"]:
        assert os.path.dirname(r["file"]) == out and os.path.getsize(r["file"]) == r["size"]
        m = torch.jit.load(r["file"])
        assert m(x).shape == (3, 10)
    int8_types = {t for r in quick_run["rows"][1:] for t in _module_types(torch.jit.load(r["file"]))}
    assert any("Int8Linear" in t for t in int8_types) and any("Int8Conv2d" in t for t in int8_types)

    # the saved test set: the reloaded models score on it what the demo reported
    test_set = torch.load(os.path.join(out, "test.pt"))
    inputs, labels = test_set["inputs"], test_set["labels"]
    assert inputs.shape == (len(labels), 1, 8, 8) and labels.dtype == torch.int64
    for r in quick_run["rows"]:
        with torch.no_grad():
            predictions = torch.jit.load(r["file"])(inputs).argmax(1)
        # the demo evaluates in batches: a float convolution's summation order may depend on
        # the batch size, which can flip a near-tie, so one prediction of slack
        one = 100.0 / len(labels)
        assert 100.0 * (predictions == labels).double().mean().item() == pytest.approx(r["accuracy"], abs=one + 1e-9)


def _module_types(scripted):
    return [m.original_name for m in scripted.modules()]


def test_accuracy_size_and_latency(quick_run):
    acc = _accuracies(quick_run["rows"])
    ref = acc[demo.FLOAT]
    assert FLOAT_MIN < ref <= 100.0
    assert acc[demo.DYNAMIC] >= ref - PTQ_MAX_DROP
    assert acc[demo.STATIC] >= ref - PTQ_MAX_DROP
    assert acc[demo.QAT] >= ref - QAT_MAX_DROP
    for r in quick_run["rows"][1:]:
        assert r["size_ratio"] <= demo.MAX_SIZE_RATIO, r
    for r in quick_run["rows"]:
        assert set(r["latency"]) == {"batch 256", "batch 1"}
        assert all(t > 0 for t in r["latency"].values())
    assert any(line.startswith(("PASS", "MISS")) for line in quick_run["goals"])


def test_same_seed_same_accuracy_in_a_subprocess(quick_run, tmp_path):
    """``python -m q8.demo`` with the same seed: identical accuracies (and the CLI works)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = Q8_PARENT + os.pathsep + env.get("PYTHONPATH", "")
    env["MPLBACKEND"] = "Agg"
    proc = subprocess.run([sys.executable, "-m", "q8.demo", *ARGS, "--out", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for r in quick_run["rows"]:
        line = f"{r['name']}: test accuracy {r['accuracy']:.2f} %"
        assert line in proc.stdout, (line, proc.stdout)
    assert "| variant | accuracy (%)" in proc.stdout
    assert open(os.path.join(tmp_path, "report.md")).read().count("\n| ") == len(quick_run["rows"]) + 1


def test_help_and_bad_arguments(capsys):
    with pytest.raises(SystemExit) as e:
        demo.main(["--help"])
    assert e.value.code == 0 and "--quick" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        demo.main(["--runs", "3"])
    assert e.value.code == 2 and "at least 5" in capsys.readouterr().err


def test_q8_imports_without_demo_dependencies():
    """q8 itself must not need scikit-learn, matplotlib or tqdm."""
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('sklearn', 'matplotlib', 'tqdm'):\n"
            "            raise ImportError('blocked ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "import q8, q8.demo\n"
            "try:\n"
            "    q8.demo.main(['--out', sys.argv[1]])\n"
            "except SystemExit as e:\n"
            "    print('EXIT', e.code)\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = Q8_PARENT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", code, os.devnull], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "EXIT q8-demo needs scikit-learn, matplotlib, tqdm: pip install 'q8[demo]'" in proc.stdout
    assert q8.__version__
