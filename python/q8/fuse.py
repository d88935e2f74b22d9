"""Fusion of ``conv / linear -> BatchNorm -> activation`` chains (``docs/fusion.md``).

* :func:`fuse_modules`: the chains a user names, with
  ``torch.ao.quantization.fuse_modules``' calling convention: the first module of each
  chain is replaced by a fused container (:class:`q8.nn.fused.FusedConv2d`, ...), the
  others by ``nn.Identity``.
* :func:`auto_fuse`: the chains q8 finds itself, used by :func:`q8.quantize_dynamic`,
  :func:`q8.prepare` and :func:`q8.prepare_qat` (off with ``QConfig(fuse=False)`` /
  ``fuse=False``): consecutive children of ``nn.Sequential`` containers, and, in the
  modules ``torch.fx.symbolic_trace`` can trace, ``call_module`` chains whose
  intermediate outputs have a single user.

Fusion only swaps submodules (in place): the model stays an eager module.
"""
import copy
import logging
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .nn.fused import ACTIVATIONS, BN_FOR, FUSED_FOR, activation_clamp

__all__ = ["auto_fuse", "fuse_modules"]

logger = logging.getLogger("q8")

_PATTERN_HELP = ("a fusion pattern is a Conv1d / Conv2d / Linear, then optionally its BatchNorm (BatchNorm1d after "
                 "Conv1d / Linear, BatchNorm2d after Conv2d), then optionally an activation nn.ReLU / nn.ReLU6 / "
                 "nn.Hardtanh (types matched exactly)")


def _describe(names: Sequence[str], mods: Sequence[nn.Module]) -> str:
    return ", ".join(f"{n!r} ({type(m).__name__})" for n, m in zip(names, mods))


def _build(names: Sequence[str], mods: Sequence[nn.Module], where: str) -> nn.Module:
    """The fused container of ``mods`` (named ``names``), or a ValueError naming them and their types."""
    if len(mods) < 2 or len(mods) > 3:
        raise ValueError(f"{where}: cannot fuse {len(mods)} module(s) [{_describe(names, mods)}]: {_PATTERN_HELP}")
    layer = mods[0]
    fused_cls = FUSED_FOR.get(type(layer))
    if fused_cls is None:
        raise ValueError(f"{where}: cannot fuse [{_describe(names, mods)}]: {names[0]!r} is a "
                         f"{type(layer).__name__}, not a Conv1d / Conv2d / Linear; {_PATTERN_HELP}")
    bn = act = None
    rest = list(zip(names[1:], mods[1:]))
    if rest and type(rest[0][1]) is BN_FOR[type(layer)]:
        bn = rest.pop(0)
    if rest and type(rest[0][1]) in ACTIVATIONS:
        act = rest.pop(0)
    if rest:
        n, m = rest[0]
        if bn is None and act is None and type(m).__name__.startswith("BatchNorm"):
            why = f"{n!r} ({type(m).__name__}) cannot follow a {type(layer).__name__}: expected a " \
                  f"{BN_FOR[type(layer)].__name__}"
        else:
            why = f"{n!r} ({type(m).__name__}) is not where a BatchNorm or an activation may be"
        raise ValueError(f"{where}: cannot fuse [{_describe(names, mods)}]: {why}; {_PATTERN_HELP}")
    from .nn.fused import check_bn

    if bn is not None:
        check_bn(layer, bn[1], (names[0], bn[0]), where)
    return fused_cls(layer, None if bn is None else bn[1], None if act is None else act[1])


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def fuse_modules(model: nn.Module, modules_to_fuse: Union[Sequence[str], Sequence[Sequence[str]]],
                 inplace: bool = False) -> nn.Module:
    """Fuse the named ``conv / linear -> BatchNorm -> activation`` chains of ``model``.

    As ``torch.ao.quantization.fuse_modules``: ``modules_to_fuse`` is one list of
    qualified names (``["conv1", "bn1", "relu1"]``) or a list of such lists; the first
    module of each is replaced by the fused container (:class:`q8.nn.FusedConv2d`,
    :class:`q8.nn.FusedConv1d`, :class:`q8.nn.FusedLinear`), the others by
    ``nn.Identity``. The model must call them in that order, each output feeding only
    the next (as for torch.ao; q8 cannot check that in an eager model).

    Patterns (types matched exactly): ``Conv1d / Conv2d / Linear``, optionally followed
    by its ``BatchNorm1d`` / ``BatchNorm2d``, optionally followed by ``nn.ReLU``,
    ``nn.ReLU6`` or ``nn.Hardtanh``. The fused forward equals the unfused sequence
    (the same modules, in the same order); the BatchNorm is folded when the model is
    quantized. Anything else is a ``ValueError`` naming the modules and their types, as
    are unknown names and a BatchNorm whose channels do not match the layer's.

    Args:
        inplace: change ``model`` itself; by default a deep copy is fused and returned.
    """
    where = "q8.fuse_modules"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{where}: model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(modules_to_fuse, str):
        raise TypeError(f"{where}: modules_to_fuse must be a list of module names or a list of such lists, got "
                        f"the string {modules_to_fuse!r}")
    groups = list(modules_to_fuse)
    if groups and all(isinstance(g, str) for g in groups):
        groups = [groups]
    for g in groups:
        if isinstance(g, str) or not all(isinstance(n, str) for n in g):
            raise TypeError(f"{where}: modules_to_fuse must be a list of module names or a list of such lists, "
                            f"got {modules_to_fuse!r}")
    if not inplace:
        model = copy.deepcopy(model)
    names = dict(model.named_modules(remove_duplicate=False))
    seen: Dict[str, int] = {}
    for i, g in enumerate(groups):
        unknown = [n for n in g if n not in names or n == ""]
        if unknown:
            raise ValueError(f"{where}: {unknown} are not submodules of the model (names are those of "
                             "model.named_modules(), e.g. 'features.0')")
        for n in g:
            if n in seen:
                raise ValueError(f"{where}: {n!r} is named in two fusion groups ({seen[n]} and {i})")
            seen[n] = i
    # Build every fused module before changing anything: a bad group leaves the model as it was.
    built = [(g, _build(g, [names[n] for n in g], where)) for g in groups]
    for g, fused in built:
        _set(model, g[0], fused)
        for n in g[1:]:
            _set(model, n, nn.Identity())
    return model


# ---------------------------------------------------------------------------------------------- automatic fusion

_FUNCTIONAL_ACTS = {F.relu: (0.0, None), torch.relu: (0.0, None), torch.relu_: (0.0, None), F.relu_: (0.0, None),
                    F.relu6: (0.0, 6.0)}


def _functional_clamp(node) -> Optional[Tuple[Optional[float], Optional[float]]]:
    """The clamp of a ``call_function`` / ``call_method`` activation node with constant arguments, or None."""
    if node.op == "call_function":
        if node.target in _FUNCTIONAL_ACTS:
            return _FUNCTIONAL_ACTS[node.target]
        if node.target is F.hardtanh:
            args = list(node.args[1:3])
            lo = node.kwargs.get("min_val", args[0] if len(args) > 0 else -1.0)
            hi = node.kwargs.get("max_val", args[1] if len(args) > 1 else 1.0)
            if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo < hi:
                return float(lo), float(hi)
    elif node.op == "call_method" and node.target in ("relu", "relu_"):
        return 0.0, None
    return None


def _act_module(clamp: Tuple[Optional[float], Optional[float]]) -> nn.Module:
    lo, hi = clamp
    if hi is None:
        return nn.ReLU()
    if lo == 0.0 and hi == 6.0:
        return nn.ReLU6()
    return nn.Hardtanh(lo, hi)


def _candidate(module: nn.Module) -> bool:
    """Whether tracing ``module`` may find something: a conv, or a linear with a BatchNorm1d or an activation
    module (a linear followed by a functional ``F.relu`` only is fused where a conv made its module traced)."""
    types = {type(m) for m in module.modules()}
    return bool(types & {nn.Conv1d, nn.Conv2d}) or (
        nn.Linear in types and bool(types & {nn.BatchNorm1d, *ACTIVATIONS}))


def _fx_groups(module: nn.Module, prefix: str) -> Optional[List[Tuple[List[str], Optional[tuple]]]]:
    """Chains in ``module``'s fx graph: ``(qualified names to fuse, clamp of a kept activation or None)``.

    None when ``module`` cannot be traced.
    """
    try:
        import torch.fx

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = torch.fx.symbolic_trace(module)
    except Exception as e:  # noqa: BLE001  (any tracing failure: fall back to nn.Sequential / fuse_modules)
        logger.debug("q8 fusion: cannot fx-trace %s (%s): %s", prefix or "<model>", type(module).__name__, e)
        return None
    calls: Dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1

    def mod(node):
        return gm.get_submodule(node.target) if node.op == "call_module" else None

    def only_user(node):
        users = list(node.users)
        return users[0] if len(users) == 1 else None

    def qual(target):
        return f"{prefix}.{target}" if prefix else target

    groups = []
    for node in gm.graph.nodes:
        layer = mod(node)
        if layer is None or type(layer) not in FUSED_FOR or calls[node.target] != 1:
            continue
        names = [qual(node.target)]
        last = node
        nxt = only_user(last)
        has_bn = False
        if nxt is not None and calls.get(nxt.target, 0) == 1 and type(mod(nxt)) is BN_FOR[type(layer)] \
                and nxt.args and nxt.args[0] is last and mod(nxt).num_features == (
                    layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels):
            names.append(qual(nxt.target))
            last, has_bn = nxt, True
            nxt = only_user(last)
        kept = None
        if nxt is not None and nxt.args and nxt.args[0] is last:
            m = mod(nxt)
            if m is not None and type(m) in ACTIVATIONS:
                if calls[nxt.target] == 1:
                    names.append(qual(nxt.target))
                else:
                    kept = activation_clamp(m)  # a shared activation module: stays, applied again (idempotent)
            elif m is None:
                kept = _functional_clamp(nxt)
        if len(names) >= 2 or kept is not None:
            groups.append((names, kept))
    return groups


def _sequential_groups(seq: nn.Sequential, prefix: str) -> List[Tuple[List[str], Optional[tuple]]]:
    groups = []
    items = list(seq._modules.items())
    i = 0
    while i < len(items):
        name, layer = items[i]
        if type(layer) not in FUSED_FOR:
            i += 1
            continue
        chain = [name]
        j = i + 1
        has_bn = False
        if j < len(items) and type(items[j][1]) is BN_FOR[type(layer)] and items[j][1].num_features == (
                layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels):
            chain.append(items[j][0])
            has_bn = True
            j += 1
        if j < len(items) and type(items[j][1]) in ACTIVATIONS:
            chain.append(items[j][0])
            j += 1
        if len(chain) >= 2:
            groups.append(([f"{prefix}.{n}" if prefix else n for n in chain], None))
        i = j
    return groups


def auto_fuse(model: nn.Module, skipped: Callable[[str], bool] = lambda name: False) -> List[List[str]]:
    """Fuse, in place, the chains q8 can find in ``model``; returns the fused groups' qualified names.

    Chains: in the largest submodules ``torch.fx.symbolic_trace`` can trace, a
    ``Conv1d / Conv2d / Linear`` called once, whose output's only user is its BatchNorm
    (called once; optional), whose output's only user
    is an activation (``nn.ReLU`` / ``nn.ReLU6`` / ``nn.Hardtanh`` called once: replaced
    by ``nn.Identity``; shared, or a functional ``F.relu`` / ``torch.relu`` /
    ``F.relu6`` / ``F.hardtanh`` / ``.relu()``: kept where it is, its clamp fused too,
    harmless since a clamp applied twice is the same clamp); and consecutive children
    of every ``nn.Sequential`` outside the traced submodules (fx's graph shows when a
    child's output is used elsewhere, e.g. a feature tap; the Sequential scan cannot,
    so it only runs where tracing failed). Modules whose name ``skipped`` returns True for (or
    inside one) are not touched. ``Linear -> activation`` is fused too (the clamp goes into
    ``q8.linear``'s epilogue).
    """
    from .nn.fused import _Fused

    if not isinstance(model, nn.Module):
        return []
    fused: List[List[str]] = []

    def apply(groups):
        for names, kept in groups:
            if any(skipped(n) for n in names):
                continue
            try:
                mods = [model.get_submodule(n) for n in names]
            except AttributeError:
                continue
            if type(mods[0]) not in FUSED_FOR:
                continue  # already fused through another path
            parent_name = names[0].rpartition(".")[0]
            if parent_name and any(isinstance(model.get_submodule(parent_name.rsplit(".", k)[0]), _Fused)
                                   for k in range(parent_name.count(".") + 1)):
                continue  # inside a fused container already
            if any(count.get(id(m), 1) > 1 for m in mods if type(m) not in ACTIVATIONS):
                continue
            layer_name = names[0]
            mods_named = list(zip(names, mods))
            if kept is not None:
                mods_named.append(("<kept activation>", _act_module(kept)))
            try:
                new = _build([n for n, _ in mods_named], [m for _, m in mods_named], "q8 fusion")
            except ValueError as e:
                logger.debug("q8 fusion: %s", e)
                continue
            _set(model, layer_name, new)
            for n in names[1:]:
                _set(model, n, nn.Identity())
            fused.append(names)

    def trace(module: nn.Module, prefix: str) -> None:
        if skipped(prefix) and prefix:
            return
        if not _candidate(module):
            return
        if type(module) in FUSED_FOR or isinstance(module, tuple(FUSED_FOR.values())):
            return
        groups = _fx_groups(module, prefix)
        if groups is not None:
            apply(groups)
            traced.append(prefix)
            return
        for child_name, child in list(module._modules.items()):
            if child is not None:
                trace(child, f"{prefix}.{child_name}" if prefix else child_name)

    # A layer or BatchNorm reachable under two names (an alias, or one module in two containers) is not fused:
    # replacing it under one name would leave the other path calling the unfused module.
    count: Dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        count[id(m)] = count.get(id(m), 0) + 1
    traced: List[str] = []  # prefixes of the subtrees fx traced: their graphs said what is safe to fuse

    def under_traced(name: str) -> bool:
        return any(p == "" or name == p or name.startswith(p + ".") for p in traced)

    if not isinstance(model, _Fused):
        trace(model, "")
    for name, m in list(model.named_modules()):
        # nn.Sequential, or a subclass with its forward (torchvision's Conv2dNormActivation)
        if isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward \
                and not (name and skipped(name)) and not under_traced(name):
            apply(_sequential_groups(m, name))
    if fused:
        logger.info("q8 fusion: fused %d chain(s): %s", len(fused), "; ".join("+".join(g) for g in fused))
    return fused
