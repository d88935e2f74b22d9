"""``q8.lower``: int8 (uint8) tensors between the int8 convolutions of a converted model.

A model converted by :func:`q8.convert` computes each static :class:`q8.nn.Int8Conv2d`
in int8 but hands float tensors from layer to layer: each layer writes float32, and the
next one quantizes it again with its ``input_scale`` / ``input_zero_point``.
``q8.lower(model)`` rewrites a copy of the model (``torch.fx``) so that

* a convolution whose output is only read by static int8 convolutions (as their input
  or as their residual), possibly through ``nn.Identity`` and max pooling, writes uint8 codes directly: its
  ``output_scale`` / ``output_zero_point`` become its consumers' input qparams (all of them must agree,
  else it stays float). The requantization formula of the producer's epilogue is the
  one the consumer applies to a float input, so the consumer sees the same codes, bit
  for bit; a max pool on the way (``nn.MaxPool2d``, ``F.max_pool2d``) becomes
  ``q8.max_pool2d`` on the codes, exact too (quantization is monotone: the max of the
  codes is the code of the max, see :func:`_max_pool_args`);
* a conv or an ``Int8Linear`` read only by a ReLU / ReLU6 / Hardtanh gets it as its
  ``clamp_min`` / ``clamp_max`` (the same comparisons in float32; composed with a clamp it
  already has);
* ``add(conv_out, other)`` or ``add(other, conv_out)`` (``+``, ``+=``, ``torch.add``,
  ``Tensor.add`` / ``add_``, without ``alpha``) with ``conv_out`` read only by that add,
  followed or not by a ReLU / ReLU6 (module, function or method, in place or not),
  becomes the conv's epilogue: ``conv(x, residual=other)`` with ``clamp_min`` /
  ``clamp_max``. ``other`` may be float, or uint8 from another int8 convolution (then the
  conv gets ``residual_scale`` / ``residual_zero_point``). The add and the clamp are the
  same float32 operations in the same order as in the eager model (float addition is
  commutative, so the operand order does not matter). An in-place ``other.add_(conv_out)``
  is fused only when nothing can see the write into ``other``;
* a ReLU / ReLU6 call on a conv output that the conv already clamps to the same range
  (a ReLU module shared by several calls: q8's fusion puts the clamp into the conv and
  keeps the module) is a no-op and is dropped.

Before all this, ``nn.Identity`` calls are removed (their readers read their input):
q8's conv-BN(-ReLU) fusion leaves the folded BatchNorm and the fused ReLU as
``nn.Identity``, between a conv and the add that reads it.

What stays float: the model's input and output (a lowered model takes float and
returns float), every tensor read by anything else (a float op, a Linear, the output,
a layer called more than once, a dynamic or weight-only layer), and tensors whose
readers disagree on the qparams.

Equality with the eager converted model: bit for bit, except where a uint8 tensor is
a *residual*: the eager model adds the producer's float output ``y``, the lowered one
its requantized value ``(q - zp) * scale``, which differs by at most ``scale / 2``
per element (one rounding) inside the reader's calibrated range, and is clipped to that
range outside it (where eager adds the unclipped ``y``); downstream layers can then move
by a few of their own quantization steps. See docs/int8_graph.md.

Tracing: q8's layers (classes defined in ``q8.nn``) are leaves; every other module that
torch.fx does not treat as a leaf (``torch.nn`` layers are leaves) is traced through,
including blocks defined elsewhere in ``q8`` (e.g. ``q8._cnn_models``). A model fx cannot trace is lowered
child by child (the largest traceable sub-modules, e.g. each ``nn.Sequential``); the
result is then the copied model with lowered children, not a GraphModule, and a
warning says which parts were left alone. Every lowering decision is listed in the
result's ``q8_lowering_report`` (a list of strings), also logged at INFO level on the
``q8.lower`` logger.
"""
import copy
import logging
import operator
import warnings
from typing import Dict, Iterable, List, Optional, Set, Tuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .nn.conv import Int8Conv2d
from .nn.linear import Int8Linear
from .quantization import _run_batches

__all__ = ["lower"]

_log = logging.getLogger("q8.lower")

_ADDS = (operator.add, operator.iadd, torch.add, torch.Tensor.add, torch.Tensor.add_)
# adds that write into their first operand (fx traces ``a += b`` on a tensor as operator.add,
# as Python falls back to ``__add__`` for a Proxy; a graph may still hold operator.iadd)
_INPLACE_ADDS = (operator.iadd, torch.Tensor.add_)
_RELU_FUNCS = (F.relu, F.relu_, torch.relu, torch.relu_)
_RELU6_FUNCS = (F.relu6,)


def _is_q8_layer(m: nn.Module) -> bool:
    """q8's own layers (``q8.nn.*``: int8, QAT, fused): fx leaves. Other classes defined under
    ``q8`` (e.g. the blocks of ``q8._cnn_models``) are plain modules that fx must enter."""
    mod = type(m).__module__
    return mod == "q8.nn" or mod.startswith("q8.nn.")


class _Q8Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if _is_q8_layer(m):
            return True
        return super().is_leaf_module(m, qualname)


def _conv_of(gm: torch.fx.GraphModule, node: torch.fx.Node, types=Int8Conv2d):
    """The module of ``types`` a call_module node calls, else None (by default an Int8Conv2d; with
    ``(Int8Conv2d, Int8Linear)``, the layers with a clamp in their epilogue)."""
    if node.op != "call_module":
        return None
    m = gm.get_submodule(node.target)
    return m if isinstance(m, types) else None


def _is_add(node: torch.fx.Node) -> bool:
    """``a + b`` of two tensors: operator.add / iadd, torch.add, Tensor.add / add_ (no ``alpha``, no ``out``)."""
    if node.op == "call_function" and node.target in _ADDS:
        return len(node.args) == 2 and not node.kwargs
    if node.op == "call_method" and node.target in ("add", "add_"):
        return len(node.args) == 2 and not node.kwargs
    return False


def _is_inplace_add(node: torch.fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _INPLACE_ADDS) or \
        (node.op == "call_method" and node.target == "add_")


def _erase_identities(gm: torch.fx.GraphModule, report: List[str]) -> None:
    """Calls of ``nn.Identity`` (what q8's conv-BN(-ReLU) fusion leaves in place of the folded
    BatchNorm and the fused activation) are pass-throughs: their readers read their input."""
    removed = []
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and type(gm.get_submodule(node.target)) is nn.Identity \
                and len(node.args) == 1 and not node.kwargs and isinstance(node.args[0], torch.fx.Node):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            removed.append(node.target)
    if removed:
        report.append("removed the nn.Identity calls (pass-throughs, e.g. a folded BatchNorm or a fused ReLU): "
                      + ", ".join(removed))


def _clamp_of(gm: torch.fx.GraphModule, node: torch.fx.Node):
    """(lo, hi) when ``node`` is a ReLU / ReLU6 of its single tensor argument, else None."""
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if type(m) is nn.ReLU:
            return (0.0, None)
        if type(m) is nn.ReLU6:
            return (0.0, 6.0)
        if type(m) is nn.Hardtanh:
            return (float(m.min_val), float(m.max_val))
        return None
    if node.op == "call_function":
        if node.target in _RELU_FUNCS:
            return (0.0, None)
        if node.target in _RELU6_FUNCS:
            return (0.0, 6.0)
        if node.target is F.hardtanh and len(node.args) + len(node.kwargs) >= 1:
            names = ("input", "min_val", "max_val", "inplace")
            bound = dict(zip(names, node.args), **node.kwargs)
            lo, hi = bound.get("min_val", -1.0), bound.get("max_val", 1.0)
            if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
                return (float(lo), float(hi))
        return None
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return (0.0, None)
    return None


_MAX_POOL_FUNCS = (F.max_pool2d, torch.max_pool2d)


def _max_pool_args(gm: torch.fx.GraphModule, node: torch.fx.Node, src: torch.fx.Node):
    """(kernel_size, stride, padding, dilation, ceil_mode) as ``q8.max_pool2d`` takes them when ``node`` is a
    2-D max pool of ``src`` without indices and with constant arguments, else None."""
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if type(m) is not nn.MaxPool2d or m.return_indices or len(node.args) != 1 or node.kwargs:
            return None
        bound = dict(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding, dilation=m.dilation,
                     ceil_mode=m.ceil_mode)
    elif node.op == "call_function" and node.target in _MAX_POOL_FUNCS:
        names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
        if len(node.args) > len(names) or any(k not in names for k in node.kwargs):
            return None
        bound = dict(zip(names, node.args), **node.kwargs)
        if bound.get("return_indices", False) is not False or "kernel_size" not in bound:
            return None
        bound.pop("return_indices", None)
    else:
        return None
    if node.args[0] is not src and bound.get("input") is not src:
        return None
    bound.pop("input", None)

    def pair(v):
        if isinstance(v, int) and not isinstance(v, bool):
            return [v, v]
        if isinstance(v, (tuple, list)) and len(v) in (1, 2) and all(type(e) is int for e in v):
            return [int(v[0]), int(v[-1])]
        raise TypeError

    try:
        stride = bound.get("stride")
        return (pair(bound["kernel_size"]), [] if stride is None or stride == [] or stride == () else pair(stride),
                pair(bound.get("padding", 0)), pair(bound.get("dilation", 1)), bool(bound.get("ceil_mode", False)))
    except TypeError:  # a non-constant argument (a graph node) or an unexpected form
        return None


def _preserves_codes(gm: torch.fx.GraphModule, node: torch.fx.Node, src: torch.fx.Node) -> bool:
    """True when ``node`` passes uint8 codes of ``src`` through unchanged (nn.Identity). (A 2-D max pool computes
    the codes of its float result from them: :func:`_max_pool_args`, made ``q8.max_pool2d`` by the lowering,
    since torch's CPU ``max_pool2d`` refuses the channels_last uint8 tensors int8 convolutions write beyond 255
    elements per sample.)"""
    return node.op == "call_module" and type(gm.get_submodule(node.target)) is nn.Identity and node.args[0] is src


def _order(gm: torch.fx.GraphModule) -> Dict[torch.fx.Node, int]:
    return {n: k for k, n in enumerate(gm.graph.nodes)}


def _inplace_ok(gm: torch.fx.GraphModule, add: torch.fx.Node, conv_node: torch.fx.Node,
                other: torch.fx.Node, conv_first: bool) -> str:
    """Whether an in-place ``add_`` (fx keeps reading the written tensor by its own name after it)
    may become ``conv(..., residual=other)``: '' when it may, else why not.

    ``conv_out.add_(other)``: the conv's output is fresh; its readers after the add read the sum
    (they will read the fused conv), none may read it before. ``other.add_(conv_out)``: the write
    into ``other`` is seen by its readers after the add (they will read the fused conv instead);
    ``other`` must be fresh (an int8 conv's output: no alias, not the model input) and its readers
    before the add int8 convs (fresh outputs, no views that would see the write)."""
    order = _order(gm)
    if conv_first:
        early = [u.name for u in conv_node.users if u is not add and order[u] < order[add]]
        return f"{conv_node.name} is read before the in-place add: {', '.join(early)}" if early else ""
    if len(conv_node.users) != 1:
        return f"{conv_node.target}'s output has other readers"
    if _conv_of(gm, other) is None:
        return f"the add writes into {other.name}, which is not an int8 conv's output (it may alias another tensor)"
    early = [u.name for u in other.users if u is not add and order[u] < order[add] and _conv_of(gm, u) is None]
    if early:
        return f"the add writes into {other.name}, which is read before it by {', '.join(early)}"
    return ""


def _lower_graph(gm: torch.fx.GraphModule, report: List[str], ranges: Optional[Dict[int, Tuple[float, float]]] = None
                 ) -> None:
    graph = gm.graph
    _erase_identities(gm, report)
    calls: Dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    once = {t for t, c in calls.items() if c == 1}
    for t, c in calls.items():
        if c > 1 and isinstance(gm.get_submodule(t), Int8Conv2d):
            report.append(f"{t}: called {c} times, left as it is")

    # 1. add(conv_out, other) or add(other, conv_out) [+ ReLU/ReLU6] -> conv epilogue. Float
    # addition is commutative (bit for bit), so the operand order does not matter.
    for node in list(graph.nodes):
        if not _is_add(node):
            continue
        why = []
        for i in (0, 1):
            conv_node, other = node.args[i], node.args[1 - i]
            if not isinstance(conv_node, torch.fx.Node) or not isinstance(other, torch.fx.Node):
                continue
            conv = _conv_of(gm, conv_node)
            if conv is None:
                continue
            if conv_node.target not in once:
                why.append(f"{conv_node.target} is called more than once")
                continue
            if conv.activation == "weight_only":
                why.append(f"{conv_node.target} is weight-only")
                continue
            inplace = _is_inplace_add(node)
            if not inplace and len(conv_node.users) != 1:
                why.append(f"{conv_node.target}'s output has other readers")
                continue
            if len(conv_node.args) != 1 or conv_node.kwargs:
                why.append(f"{conv_node.target} already has a residual")
                continue
            if conv.clamp_min is not None or conv.clamp_max is not None or conv.output_scale is not None:
                why.append(f"{conv_node.target} clamps before the add")
                continue
            if other is conv_node or other.op == "get_attr":
                why.append("the other operand is not a computed tensor")
                continue
            if inplace:
                no = _inplace_ok(gm, node, conv_node, other, i == 0)
                if no:
                    why.append(no)
                    continue
            # other must be computed before the conv reads it: it is, when it precedes the conv node.
            order = {n: k for k, n in enumerate(graph.nodes)}
            if order[other] > order[conv_node]:
                # move the conv after `other` (its input is earlier than the add, so this is safe)
                other.append(conv_node)
            if inplace and i == 1:
                # the readers of `other` after the add read the sum: now the fused conv's output
                after = _order(gm)[node]
                for u in list(other.users):
                    if u is not node and u is not conv_node and _order(gm)[u] > after:
                        u.replace_input_with(other, conv_node)
            conv_node.args = (conv_node.args[0], other)
            node.replace_all_uses_with(conv_node)
            graph.erase_node(node)
            what = f"{conv_node.target}: fused the residual add ({node.name}, conv output as operand {i})"
            users = list(conv_node.users)
            if len(users) == 1:
                clamp = _clamp_of(gm, users[0])
                if clamp is not None and users[0].args and users[0].args[0] is conv_node:
                    conv.clamp_min, conv.clamp_max = clamp
                    users[0].replace_all_uses_with(conv_node)
                    graph.erase_node(users[0])
                    what = f"{conv_node.target}: fused the residual add and the clamp {clamp}" + \
                        f" ({node.name}, conv output as operand {i}; {users[0].name})"
            report.append(what)
            break
        else:
            if why:
                report.append(f"{node.name}: add left as a float op ({'; '.join(why)})")

    # 1b. conv or linear -> ReLU / ReLU6 / Hardtanh (read only by it) -> the layer's clamp. A
    # layer that already clamps (q8.fuse keeps a functional ReLU after the layer it fused it
    # into) gets the composition: clamp(clamp(y, a, b), c, d) == clamp(y, max(a, c), min(b, d))
    # whenever max(a, c) <= min(b, d) (NaN stays NaN either way).
    for node in list(graph.nodes):
        conv = _conv_of(gm, node, (Int8Conv2d, Int8Linear))
        if conv is None or node.target not in once or len(node.users) != 1 or \
                getattr(conv, "output_scale", None) is not None:
            continue
        user = next(iter(node.users))
        clamp = _clamp_of(gm, user)
        if clamp is None or not user.args or user.args[0] is not node:
            continue
        lo = clamp[0] if conv.clamp_min is None else (conv.clamp_min if clamp[0] is None
                                                       else max(conv.clamp_min, clamp[0]))
        hi = clamp[1] if conv.clamp_max is None else (conv.clamp_max if clamp[1] is None
                                                       else min(conv.clamp_max, clamp[1]))
        if lo is not None and hi is not None and lo > hi:
            report.append(f"{node.target}: clamp {clamp} ({user.name}) left as it is (empty with the layer's "
                          f"clamp {(conv.clamp_min, conv.clamp_max)})")
            continue
        had = (conv.clamp_min, conv.clamp_max)
        conv.clamp_min, conv.clamp_max = lo, hi
        user.replace_all_uses_with(node)
        graph.erase_node(user)
        if had == (lo, hi):
            # e.g. a ReLU module shared by several calls (q8.fuse fuses it into the conv and keeps
            # the module): the conv's output is already clamped, the call is a no-op
            report.append(f"{node.target}: dropped the clamp {clamp} ({user.name}): a no-op after the "
                          f"layer's own clamp {had}")
        else:
            report.append(f"{node.target}: fused the clamp {clamp} ({user.name})"
                          + (f" into its clamp {had}: {(lo, hi)}" if had != (None, None) else ""))

    # 2. uint8 outputs: producers read only by static int8 conv inputs / residuals.
    for node in list(graph.nodes):
        conv = _conv_of(gm, node)
        if conv is None or node.target not in once or conv.activation == "weight_only" or \
                conv.output_scale is not None:
            continue
        qparams = []
        residual_readers = []
        pools = []  # (max pool node, its input, q8.max_pool2d's arguments) on the way
        ok = True
        reason = ""
        stack = [node]
        seen: Set[torch.fx.Node] = set()
        while stack and ok:
            src = stack.pop()
            for user in src.users:
                if user in seen:
                    continue
                seen.add(user)
                reader = _conv_of(gm, user)
                if reader is not None and user.target in once and not user.kwargs:
                    # as its input and / or as its residual (``x + conv(x)``: both)
                    as_input = user.args[0] is src
                    as_residual = len(user.args) > 1 and user.args[1] is src
                    if (not as_input or (reader.activation == "static" and reader.input_scale is not None)) and \
                            (not as_residual or reader.activation != "weight_only"):
                        if as_input:
                            qparams.append((user.target, float(reader.input_scale), int(reader.input_zero_point)))
                        if as_residual:
                            residual_readers.append(reader)
                        continue
                pool_args = _max_pool_args(gm, user, src)
                if pool_args is not None:
                    pools.append((user, src, pool_args))
                    stack.append(user)
                    continue
                if _preserves_codes(gm, user, src):
                    stack.append(user)
                    continue
                ok = False
                reason = f"read by {user.op} {user.target}"
                break
        if not ok:
            report.append(f"{node.target}: float output ({reason})")
            continue
        observed = ""
        if not qparams and residual_readers and ranges is not None and id(conv) in ranges:
            # read only as a residual (a ResNet downsampling shortcut): the range observed on
            # lower's calibration_data gives its codes' qparams
            lo, hi = ranges[id(conv)]
            s_t, z_t = torch.ops.q8.choose_qparams(torch.tensor([lo, hi], dtype=torch.float32), 0, 255, False, None)
            qparams = [("", float(s_t), int(z_t))]
            observed = ", from the output range seen on calibration_data"
        if not qparams:
            report.append(f"{node.target}: float output (no int8 convolution reads it as its input"
                          + ("; read as a residual: q8.lower(model, calibration_data) would requantize it)"
                             if residual_readers and ranges is None else ")"))
            continue
        if any(q[1:] != qparams[0][1:] for q in qparams):
            report.append(f"{node.target}: float output (its readers' input qparams differ: "
                          + ", ".join(f"{t} ({s:.6g}, {z})" for t, s, z in qparams) + ")")
            continue
        _, s, z = qparams[0]
        dev = conv.weight_scale.device
        scale = torch.tensor(s, dtype=torch.float32, device=dev)
        zp = torch.tensor(z, dtype=torch.int32, device=dev)
        conv.output_scale = scale.clone()
        conv.output_zero_point = zp.clone()
        for reader in residual_readers:
            reader.residual_scale = scale.clone()
            reader.residual_zero_point = zp.clone()
        for pool, src, args in pools:
            with graph.inserting_after(pool):
                qpool = graph.call_function(torch.ops.q8.max_pool2d, (src,) + tuple(args))  # (the packet: scriptable)
            pool.replace_all_uses_with(qpool)
            graph.erase_node(pool)
        readers = ", ".join(q[0] for q in qparams if q[0])
        report.append(f"{node.target}: uint8 output (scale {s:.6g}, zero point {z}{observed}) read "
                      + (f"by {readers}" if readers else "")
                      + (f"{' and ' if readers else ''}as residual by {len(residual_readers)} layer(s)"
                         if residual_readers else "")
                      + (f", through {len(pools)} max pool(s) on the codes (q8.max_pool2d)" if pools else ""))
    graph.lint()
    gm.recompile()


def _lower_module(model: nn.Module, name: str, report: List[str], ranges=None):
    try:
        graph = _Q8Tracer().trace(model)
    except Exception as e:  # fx raises many types (TraceError, TypeError, NotImplementedError...)
        children = list(model.named_children())
        msg = (f"q8.lower: {name or type(model).__name__} ({type(model).__name__}) cannot be traced by torch.fx "
               f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); ")
        if not children:
            report.append(msg + "left as it is")
            warnings.warn(msg + "left as it is")
            return model
        report.append(msg + "lowering its children one by one")
        warnings.warn(msg + "lowering its children one by one (int8 tensors flow only inside each)")
        for child_name, child in children:
            setattr(model, child_name,
                    _lower_module(child, f"{name}.{child_name}" if name else child_name, report, ranges))
        return model
    gm = torch.fx.GraphModule(model, graph, class_name=type(model).__name__)
    sub: List[str] = []
    _lower_graph(gm, sub, ranges)
    report.extend(f"{name}.{line}" if name else line for line in sub)
    return gm


def _observe_outputs(model: nn.Module, calibration_data: Iterable) -> Dict[int, Tuple[float, float]]:
    """The finite min / max of each static Int8Conv2d's float output over ``calibration_data`` (batches as
    :func:`q8.calibrate` takes them: input tensors, or tuples / lists whose first element is the input), keyed
    by the module's id."""
    ranges: Dict[int, Tuple[float, float]] = {}

    def hook(mod, args, out):
        if isinstance(out, torch.Tensor) and out.is_floating_point() and out.numel() > 0:
            v = out.detach().float()
            v = v[torch.isfinite(v)]
            if v.numel() > 0:
                lo, hi = float(v.min()), float(v.max())
                old = ranges.get(id(mod))
                ranges[id(mod)] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, Int8Conv2d) and m.activation == "static"]
    was_training = model.training
    model.eval()
    try:
        seen = _run_batches(model, calibration_data, "q8.lower (calibration_data)")
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if seen == 0:
        raise ValueError("q8.lower: calibration_data holds no input")
    return ranges


def lower(model: nn.Module, calibration_data: Optional[Iterable] = None) -> torch.fx.GraphModule:
    """A copy of ``model`` in which int8 convolutions pass uint8 tensors to each other (see the module doc).

    ``model`` (a model converted by :func:`q8.convert`, static ``Int8Conv2d`` layers with
    input qparams) is not changed. Returns a ``torch.fx.GraphModule`` (float input, float
    output) with a ``q8_lowering_report`` attribute listing each decision; for a model fx
    cannot trace, the copied model with its traceable children lowered (and a warning).

    ``calibration_data`` (optional; batches as :func:`q8.calibrate` takes them, e.g. the same
    ones: input tensors, or ``(input, target)`` tuples): a conv whose output no int8
    layer reads as its input but some read as their *residual* (a ResNet block's downsampling
    shortcut) has no calibrated qparams to write uint8 with; with ``calibration_data`` the
    copy is run on them, and such a conv writes uint8 codes of the output range seen there
    (min / max, the range including 0), which its readers take as their residual.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"q8.lower: model must be a torch.nn.Module, got {type(model).__name__}")
    model = copy.deepcopy(model)
    ranges = None if calibration_data is None else _observe_outputs(model, calibration_data)
    report: List[str] = []
    out = _lower_module(model, "", report, ranges)
    for line in report:
        _log.info("%s", line)
    out.q8_lowering_report = report
    return out
