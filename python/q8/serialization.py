"""Saving and loading TorchScript, ``torch.export`` and AOTInductor files that use q8 operators.

A file that calls ``torch.ops.q8.*`` can only be loaded by a process in which
libq8 has registered those operators: ``import q8`` in Python, libq8 linked into a
C++ program (``find_package(q8)``, ``target_link_libraries(app PRIVATE q8::q8)``).
Without it, torch reports an unknown operator (docs/export.md quotes the
messages); q8 cannot change what torch prints in a process that has not loaded q8.

What this module adds:

* :func:`save` writes a TorchScript module or an ``ExportedProgram`` with an extra
  file ``q8.json`` (the q8 and torch versions, the q8 operators used, and how to
  load the file), readable by any zip tool and by ``torch.jit.load(...,
  _extra_files=...)`` / ``torch.export.load(..., extra_files=...)``;
* :func:`required_ops` lists the q8 operators a saved file calls, by reading the
  archive's code and graph without loading it (any TorchScript or ``.pt2`` file,
  not only those written by :func:`save`);
* :func:`load` loads any of the three kinds of file (it runs inside q8, so the
  operators are registered), after checking that this q8 build has every operator
  the file needs: a file written by a newer q8 fails with the list of missing
  operators and the q8 version that wrote it rather than with torch's error.
"""
import json
import os
import re
import zipfile
from typing import Any, Dict, List, Optional

import torch

__all__ = ["save", "load", "required_ops", "metadata", "HOW_TO_LOAD", "EXTRA_FILE"]

EXTRA_FILE = "q8.json"
HOW_TO_LOAD = ("This file uses q8 operators (torch.ops.q8.*). Load it in Python after `import q8` "
               "(or with q8.load(path)); in C++, link libq8 (find_package(q8) and "
               "target_link_libraries(app PRIVATE q8::q8)) and #include <q8/q8.h>.")

# torch.export graphs name targets "torch.ops.q8.<op>.<overload>"; TorchScript code calls "ops.q8.<op>(";
# AOTInductor packages hold the schema name "q8::<op>".
_OP_PATTERNS = [re.compile(rb"torch\.ops\.q8\.([A-Za-z_][A-Za-z0-9_]*)"),
                re.compile(rb"\bops\.q8\.([A-Za-z_][A-Za-z0-9_]*)"),
                re.compile(rb"\bq8::([A-Za-z_][A-Za-z0-9_]*)")]
_TEXT_SUFFIXES = (".py", ".json", ".cpp", ".txt")


def _version() -> str:
    from . import __version__

    return __version__


def _ops_of(obj) -> List[str]:
    names = set()
    if isinstance(obj, torch.export.ExportedProgram):
        for module in obj.graph_module.modules():
            if isinstance(module, torch.fx.GraphModule):
                for node in module.graph.nodes:
                    if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
                        ns, _, name = node.target.name().partition("::")
                        if ns == "q8":
                            names.add(name.split(".")[0])
    else:
        for module in obj.modules():
            c = getattr(module, "_c", None)
            if c is None:
                continue
            for method in c._method_names():
                text = str(c._get_method(method).graph).encode()
                names.update(m.decode() for m in _OP_PATTERNS[2].findall(text))
    return sorted(names)


def metadata(obj) -> Dict[str, Any]:
    """What :func:`save` writes to ``q8.json`` for ``obj``."""
    return {"format": "q8-metadata", "version": 1, "q8_version": _version(), "torch_version": torch.__version__,
            "ops": _ops_of(obj), "how_to_load": HOW_TO_LOAD}


def save(obj, path, extra_files: Optional[Dict[str, Any]] = None) -> None:
    """Save a TorchScript module (``torch.jit.script`` / ``trace``) or an ``ExportedProgram`` with ``q8.json``.

    The file is the usual one (``torch.jit.save`` / ``torch.export.save``): torch
    loads it as always, after ``import q8``.
    """
    files = dict(extra_files or {})
    files[EXTRA_FILE] = json.dumps(metadata(obj), indent=1)
    if isinstance(obj, torch.export.ExportedProgram):
        torch.export.save(obj, str(path), extra_files=files)
    elif isinstance(obj, (torch.jit.ScriptModule, torch.jit.ScriptFunction)):
        torch.jit.save(obj, str(path), _extra_files=files)
    else:
        raise TypeError(f"q8.save: expected a TorchScript module or a torch.export.ExportedProgram, got "
                        f"{type(obj).__name__} (torch.save / state_dict need nothing from q8: use them directly)")


def _kind(names: List[str]) -> str:
    if any(n.endswith("/archive_format") or n == "archive_format" for n in names):
        return "aoti" if any("/data/aotinductor/" in n or n.startswith("data/aotinductor/") for n in names) \
            else "export"
    if any("/code/" in n or n.startswith("code/") for n in names):
        return "torchscript"
    return "unknown"


def _read(path) -> Dict[str, Any]:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        ops = set()
        meta = None
        for name in names:
            base = name.rsplit("/", 1)[-1]
            if base == EXTRA_FILE:
                try:
                    meta = json.loads(z.read(name))
                except ValueError:
                    meta = None
            elif name.endswith(_TEXT_SUFFIXES):
                data = z.read(name)
                for pattern in _OP_PATTERNS:
                    ops.update(m.decode() for m in pattern.findall(data))
        return {"kind": _kind(names), "ops": sorted(ops), "metadata": meta}


def required_ops(path) -> List[str]:
    """The q8 operators (``"linear"``, ``"fake_quantize_per_tensor"``, ...) a saved file calls, without loading it."""
    return _read(path)["ops"]


def load(path, *, map_location=None, **kwargs):
    """Load a TorchScript file, a ``torch.export`` archive or an AOTInductor package that uses q8 operators.

    Returns what ``torch.jit.load`` / ``torch.export.load`` /
    ``torch._inductor.aoti_load_package`` return. ``map_location`` is passed to
    ``torch.jit.load`` (TorchScript only); other keyword arguments to the torch loader.
    Raises ``RuntimeError`` naming the operators this q8 build lacks, if any.
    """
    path = os.fspath(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"q8.load: {path} is not a TorchScript, torch.export or AOTInductor file (not a zip archive)")
    info = _read(path)
    missing = [op for op in info["ops"] if not hasattr(torch.ops.q8, op)]
    if missing:
        meta = info["metadata"] or {}
        wrote = f" (written by q8 {meta['q8_version']})" if meta.get("q8_version") else ""
        from . import __version__

        raise RuntimeError(f"q8.load: {path}{wrote} calls q8 operators that this q8 ({__version__}) does not have: "
                           f"{', '.join(missing)}. Install the q8 release that wrote the file, or a newer one.")
    kind = info["kind"]
    if kind == "torchscript":
        return torch.jit.load(path, map_location=map_location, **kwargs)
    if map_location is not None:
        raise ValueError("q8.load: map_location is for TorchScript files; an exported program is specialized to the "
                         "device it was exported on")
    if kind == "export":
        return torch.export.load(path, **kwargs)
    if kind == "aoti":
        return torch._inductor.aoti_load_package(path, **kwargs)
    raise ValueError(f"q8.load: {path} is a zip archive but neither TorchScript, torch.export nor AOTInductor")
