"""torch.export and AOTInductor of q8 models: QAT (frozen observers), converted int8, dynamic int8.

Every archive is loaded in a new process (``import q8`` then ``torch.export.load``) and
must give the eager model's outputs bit for bit (the same q8 kernels run). Loading
without q8 must fail with a message naming the q8 operator. See docs/export.md.
"""
import copy
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch

import q8
from q8 import serialization

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 6 * 6, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _qat():
    model = q8.prepare_qat(Net())
    for _ in range(2):
        model(torch.randn(4, 3, 6, 6))
    model.eval()
    return q8.freeze_observers(model)


def _converted():
    model = q8.prepare(Net())
    q8.calibrate(model, [torch.randn(4, 3, 6, 6) for _ in range(3)], progress=False)
    return q8.convert(model).eval()


def _dynamic():
    return q8.quantize_dynamic(Net()).eval()


MODELS = {"qat": _qat, "converted": _converted, "dynamic": _dynamic}
EXPECTED_OPS = {"qat": {"observe_fake_quantize", "choose_qparams"},
                "converted": {"conv2d", "linear"},
                "dynamic": {"conv2d", "linear"}}


def _python(code, with_q8_path=True):
    env = dict(os.environ)
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                         cwd=ROOT if with_q8_path else "/", timeout=300)
    return res


def _q8_ops(ep):
    return {n.target.name().split("::")[1].split(".")[0] for n in ep.graph.nodes
            if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)
            and n.target.name().startswith("q8::")}


def test_export_save_load_in_new_process(tmp_path):
    x = torch.randn(4, 3, 6, 6)
    outputs = {}
    for name, make in MODELS.items():
        model = make()
        ep = torch.export.export(model, (x,))
        assert EXPECTED_OPS[name] <= _q8_ops(ep), _q8_ops(ep)
        y = model(x).detach()
        assert torch.equal(ep.module()(x), y)
        serialization.save(ep, tmp_path / f"{name}.pt2")
        outputs[name] = y
    torch.save({"x": x, **outputs}, tmp_path / "io.pt")
    res = _python(f"""
        import torch, q8
        from q8 import serialization
        io = torch.load({str(tmp_path / 'io.pt')!r})
        out = {{}}
        for name in {sorted(MODELS)!r}:
            ep = torch.export.load({str(tmp_path)!r} + "/" + name + ".pt2")
            out[name] = ep.module()(io["x"])
            out[name + "_q8load"] = serialization.load({str(tmp_path)!r} + "/" + name + ".pt2").module()(io["x"])
        torch.save(out, {str(tmp_path / 'out.pt')!r})
    """)
    assert res.returncode == 0, res.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt")
    for name in MODELS:
        assert torch.equal(out[name], outputs[name]), name
        assert torch.equal(out[name + "_q8load"], outputs[name]), name
    for name in MODELS:
        meta = json.loads(zipfile.ZipFile(tmp_path / f"{name}.pt2").read(
            next(n for n in zipfile.ZipFile(tmp_path / f"{name}.pt2").namelist() if n.endswith("q8.json"))))
        assert set(meta["ops"]) >= EXPECTED_OPS[name] and meta["q8_version"] == q8.__version__
        assert set(serialization.required_ops(tmp_path / f"{name}.pt2")) == set(meta["ops"])


def test_load_without_q8_fails_with_the_op_name(tmp_path):
    model = _converted()
    ep = torch.export.export(model, (torch.randn(2, 3, 6, 6),))
    serialization.save(ep, tmp_path / "m.pt2")
    serialization.save(torch.jit.script(model), tmp_path / "m.ts")
    res = _python(f"""
        import sys, torch, zipfile
        assert "q8" not in sys.modules
        for path, load in (({str(tmp_path / 'm.pt2')!r}, torch.export.load), ({str(tmp_path / 'm.ts')!r}, torch.jit.load)):
            try:
                load(path)
            except Exception as e:
                print("FAILED", path, type(e).__name__, str(e)[:400].replace("\\n", " "))
            else:
                print("LOADED", path)
            z = zipfile.ZipFile(path)
            print("HINT", z.read(next(n for n in z.namelist() if n.endswith("q8.json"))).decode()[:2000].replace("\\n", " "))
    """, with_q8_path=False)
    out = res.stdout + res.stderr
    assert "LOADED" not in out, out[-3000:]
    # torch.export.load: a warning naming the op and "import the custom op", then a RuntimeError.
    assert "torch.ops.q8.conv2d" in out and "import the custom op" in out
    assert "FAILED " + str(tmp_path / "m.pt2") + " RuntimeError" in out
    # torch.jit.load: "Unknown builtin op: q8::...".
    assert "Unknown builtin op: q8::" in out
    # The metadata q8.save writes is readable without q8.
    assert out.count("HINT") == 2 and "import q8" in out and "q8::q8" in out


def test_q8_load_reports_missing_ops(tmp_path):
    path = tmp_path / "future.ts"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("future/code/__torch__.py", "def forward(self, x):\n  return ops.q8.op_from_the_future(x)\n")
        z.writestr("future/extra/q8.json", json.dumps({"q8_version": "9.0.0"}))
    assert serialization.required_ops(path) == ["op_from_the_future"]
    with pytest.raises(RuntimeError, match=r"written by q8 9\.0\.0.*op_from_the_future"):
        serialization.load(path)
    with pytest.raises(TypeError, match="TorchScript module or a torch.export"):
        serialization.save(Net(), tmp_path / "x.pt")


def test_torchscript_save_with_metadata(tmp_path):
    model = _dynamic()
    scripted = torch.jit.script(model)
    serialization.save(scripted, tmp_path / "m.ts")
    extra = {"q8.json": ""}
    loaded = torch.jit.load(str(tmp_path / "m.ts"), _extra_files=extra)
    meta = json.loads(extra["q8.json"])
    assert {"linear"} <= set(meta["ops"]) and "import q8" in meta["how_to_load"]
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(serialization.load(tmp_path / "m.ts")(x), model(x))
    assert torch.equal(loaded(x), model(x))


def test_int8_linear_packed_weight_is_a_lifted_constant():
    """What export does with Int8Linear._packed (a plain tensor attribute): a lifted constant.

    The graph reads the packed constant; the canonical ``weight_int8`` buffer is a
    placeholder without users, and both are stored in the archive (docs/export.md).
    """
    model = _dynamic()
    ep = torch.export.export(model, (torch.randn(2, 3, 6, 6),))
    specs = {s.target: s for s in ep.graph_signature.input_specs}
    assert specs["fc._packed"].kind == torch.export.graph_signature.InputKind.CONSTANT_TENSOR
    unused = [n.name for n in ep.graph.nodes if n.op == "placeholder" and not n.users]
    assert specs["fc.weight_int8"].arg.name in unused


def _has_compiler():
    return any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c)


@pytest.mark.slow
@pytest.mark.skipif(not _has_compiler(), reason="AOTInductor needs a C++ compiler")
def test_aoti_int8_linear_model_in_new_process(tmp_path):
    """Static (converted) and dynamic Int8Linear layers through AOTInductor, loaded in a new process."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    q8.prepare(model, q8.QConfig(skip=("2",)))
    q8.calibrate(model, [torch.randn(8, 32) for _ in range(3)], progress=False)
    q8.convert(model)
    q8.quantize_dynamic(model)
    model.eval()
    assert model[0].activation == "static" and model[2].activation == "dynamic"
    x = torch.randn(5, 32)
    ep = torch.export.export(model, (x,))
    path = torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_path / "m.pt2"))
    torch.save({"x": x, "y": model(x)}, tmp_path / "io.pt")
    res = _python(f"""
        import torch, q8
        from q8 import serialization
        io = torch.load({str(tmp_path / 'io.pt')!r})
        f = serialization.load({path!r})
        assert torch.equal(f(io["x"]), io["y"]), (f(io["x"]) - io["y"]).abs().max()
        print("ok")
    """)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.skipif(not _has_compiler(), reason="AOTInductor needs a C++ compiler")
def test_aoti_int8_conv(tmp_path):
    model = q8.quantize_dynamic(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))).eval()
    x = torch.randn(1, 3, 6, 6)
    ep = torch.export.export(model, (x,))
    path = torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_path / "c.pt2"))
    f = torch._inductor.aoti_load_package(path)
    # The dynamic Int8Conv2d is one q8::conv2d call (exact integer accumulation, fixed
    # float epilogue), which the AOTInductor package calls as it is: identical bits.
    assert torch.equal(f(x), model(x))
