"""The converter registry and the conversion report.

Every module swap done by :func:`q8.quantize_dynamic`, :func:`q8.prepare`,
:func:`q8.prepare_qat` and :func:`q8.convert` goes through :func:`register_converter`:
the built-in ones (``nn.Linear``, ``nn.Conv2d``, ``nn.MultiheadAttention``, the
transformer layers, Hugging Face ``Conv1D``, RNNs, embeddings, the QAT layers) and a
user's own. See ``docs/converters.md``.

Each call records a :class:`ConversionReport` (what was converted, what was left float
and why), available as :func:`conversion_report(model) <conversion_report>`, logs one
INFO line on ``logging.getLogger("q8")`` and warns about float modules that q8 could
have converted (a converter refused, or a subclass of a convertible type).
"""
import logging
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch

__all__ = ["ConversionReport", "ModuleEntry", "conversion_report", "register_converter", "registered_converters",
           "unregister_converter"]

logger = logging.getLogger("q8")

MODES = ("dynamic", "qat", "convert")


class Unavailable(NotImplementedError):
    """Raised by a lazily registered converter whose target class is not in this q8 build."""


@dataclass(frozen=True)
class Converter:
    key: Union[type, str]
    dynamic: Optional[Callable] = None
    qat: Optional[Callable] = None
    convert: Optional[Callable] = None
    descend: bool = False
    warn_unsupported: bool = True

    def for_mode(self, mode: str) -> Optional[Callable]:
        return getattr(self, mode)


_REGISTRY: Dict[Union[type, str], Converter] = {}
_CURRENT_NAME: List[str] = [""]


def current_name() -> str:
    """The qualified name of the module being converted (for converters' error messages)."""
    return _CURRENT_NAME[-1]


def _type_name(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def _key_name(key) -> str:
    return _type_name(key) if isinstance(key, type) else key


def register_converter(module_type: Union[type, str], *, dynamic: Optional[Callable] = None,
                       qat: Optional[Callable] = None, convert: Optional[Callable] = None, descend: bool = False,
                       replace: bool = False) -> None:
    """Tell q8 how to convert modules of exactly ``module_type``.

    Args:
        module_type: a class (matched exactly: subclasses are left float, with a
            warning, since a subclass may read attributes the conversion removes), or
            a string ``"package.module.ClassName"`` matched against the class' module
            and qualified name without importing it (how q8 recognizes
            ``"transformers.pytorch_utils.Conv1D"``).
        dynamic: ``dynamic(module, activation) -> new module`` for
            :func:`q8.quantize_dynamic` (``activation`` is ``"dynamic"`` or ``"weight_only"``).
        qat: ``qat(module, config) -> new module`` for :func:`q8.prepare` and
            :func:`q8.prepare_qat` (``config`` is the :class:`q8.QConfig`).
        convert: ``convert(module) -> new module`` for :func:`q8.convert` (the QAT /
            calibrated form to the int8 one).
        descend: after converting, also convert the new module's children (for
            containers such as ``nn.TransformerEncoderLayer`` whose converter only
            changes the container; such a converter may return the module itself,
            changed in place, e.g. its class). Without it the children are the
            converter's job.
        replace: allow registering a type that already has a converter (the old one
            is dropped). Without it, a second registration is a ``ValueError``.

    A converter that cannot convert a module faithfully raises
    ``NotImplementedError("<reason>")``: the module is left exactly as it was, float,
    and the reason goes to the report and to a warning. Any other exception propagates.
    A converter must not change the module it is given (build a new one; sharing
    parameters is fine).
    """
    if not isinstance(module_type, (type, str)):
        raise TypeError(f"q8.register_converter: module_type must be a class or a 'module.ClassName' string, "
                        f"got {type(module_type).__name__}")
    if isinstance(module_type, type) and not issubclass(module_type, torch.nn.Module):
        raise TypeError(f"q8.register_converter: module_type must be a torch.nn.Module subclass, got "
                        f"{module_type.__name__}")
    for name, fn in (("dynamic", dynamic), ("qat", qat), ("convert", convert)):
        if fn is not None and not callable(fn):
            raise TypeError(f"q8.register_converter: {name} must be callable or None, got {type(fn).__name__}")
    if dynamic is None and qat is None and convert is None:
        raise ValueError(f"q8.register_converter: give at least one of dynamic, qat, convert for "
                         f"{_key_name(module_type)}")
    if module_type in _REGISTRY and not replace:
        raise ValueError(f"q8.register_converter: {_key_name(module_type)} already has a converter; pass "
                         "replace=True to replace it")
    _REGISTRY[module_type] = Converter(module_type, dynamic, qat, convert, descend)


def unregister_converter(module_type: Union[type, str]) -> None:
    """Remove the converter of ``module_type`` (a ``KeyError`` naming it if it has none)."""
    if module_type not in _REGISTRY:
        raise KeyError(f"q8.unregister_converter: {_key_name(module_type)} has no converter")
    del _REGISTRY[module_type]


def registered_converters() -> Dict[str, Dict[str, bool]]:
    """``{type name: {"dynamic": bool, "qat": bool, "convert": bool}}`` for every registered type."""
    return {_key_name(k): {m: c.for_mode(m) is not None for m in MODES} for k, c in _REGISTRY.items()}


def _lookup(module: torch.nn.Module) -> Optional[Converter]:
    t = type(module)
    conv = _REGISTRY.get(t)
    if conv is None:
        conv = _REGISTRY.get(_type_name(t))
    return conv


def _registered_base(module: torch.nn.Module) -> Optional[type]:
    for base in type(module).__mro__[1:]:
        if base in _REGISTRY:
            return base
    return None


# ---------------------------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class ModuleEntry:
    """One module of a :class:`ConversionReport`."""

    name: str  #: qualified name ('' for the model itself)
    from_type: str  #: the class name before
    to_type: Optional[str]  #: the class name after (None when left float)
    #: 'converted', or why left float: 'no_converter', 'skipped', 'refused', 'unavailable',
    #: 'unsupported', 'subclass', 'not_floating'
    status: str
    reason: str = ""

    def __str__(self) -> str:
        name = self.name or "<model>"
        if self.to_type is not None:
            return f"{name}: {self.from_type} -> {self.to_type}"
        return f"{name}: {self.from_type} left float ({self.status}: {self.reason})"


#: Statuses of float modules that q8 could have converted: these are warned about.
WARN_STATUSES = ("refused", "subclass", "not_floating")


@dataclass
class ConversionReport:
    """What one :func:`q8.quantize_dynamic` / :func:`q8.prepare` / :func:`q8.prepare_qat` / :func:`q8.convert` did.

    ``entries`` lists every converted module and every module *holding weights*
    (a parameter of 2 or more dimensions, or a registered type) that was left float,
    with the reason. Containers, activations and norms are not listed.
    """

    function: str
    entries: List[ModuleEntry] = field(default_factory=list)

    @property
    def converted(self) -> List[ModuleEntry]:
        return [e for e in self.entries if e.to_type is not None]

    @property
    def left_float(self) -> List[ModuleEntry]:
        return [e for e in self.entries if e.to_type is None]

    @property
    def warned(self) -> List[ModuleEntry]:
        return [e for e in self.left_float if e.status in WARN_STATUSES]

    def counts(self) -> Dict[str, int]:
        out: Dict[str, int] = {}
        for e in self.converted:
            k = f"{e.from_type}->{e.to_type}"
            out[k] = out.get(k, 0) + 1
        return out

    def summary(self) -> str:
        conv = ", ".join(f"{k} x{v}" for k, v in self.counts().items()) or "nothing"
        reasons: Dict[str, int] = {}
        for e in self.left_float:
            reasons[e.status] = reasons.get(e.status, 0) + 1
        left = ", ".join(f"{v} {k}" for k, v in reasons.items())
        s = f"{self.function}: converted {len(self.converted)} module(s) ({conv})"
        if left:
            s += f"; left {len(self.left_float)} float ({left})"
        return s + "; see q8.conversion_report(model)"

    def __str__(self) -> str:
        lines = [self.summary()]
        if self.converted:
            lines.append("converted:")
            lines += [f"  {e}" for e in self.converted]
        if self.left_float:
            lines.append("left float:")
            lines += [f"  {e}" for e in self.left_float]
        return "\n".join(lines)


_REPORTS: "weakref.WeakKeyDictionary[torch.nn.Module, ConversionReport]" = weakref.WeakKeyDictionary()


def conversion_report(model: torch.nn.Module) -> ConversionReport:
    """The report of the last q8 conversion function that returned ``model``.

    Kept beside the model (a weak reference), so the model itself carries nothing
    new: pickling, ``deepcopy``, TorchScript and ``state_dict`` are as before.
    """
    try:
        return _REPORTS[model]
    except (KeyError, TypeError):
        raise KeyError("q8.conversion_report: no q8 conversion returned this model (pass the module that "
                       "q8.quantize_dynamic / prepare / prepare_qat / convert returned)") from None


# ---------------------------------------------------------------------------------------------- the walk


def _holds_weights(module: torch.nn.Module) -> bool:
    return any(p is not None and p.dim() >= 2 for p in module._parameters.values())


def _floating_check(module: torch.nn.Module) -> Optional[str]:
    for name, p in module.named_parameters():
        if not (p.is_floating_point()):
            return f"parameter {name} has dtype {p.dtype}, not a floating type"
    return None


def walk(model: torch.nn.Module, mode: str, arg, skipped: Callable[[str], bool], where: str) -> torch.nn.Module:
    """Convert ``model`` in place with the registry's ``mode`` converters; record and announce the report."""
    report = ConversionReport(where)
    # id(module) -> (module, its replacement), so that shared layers stay shared. The module is held so
    # that its id cannot be reused during the walk by an object created later (a converter's temporary).
    done: Dict[int, Tuple[torch.nn.Module, torch.nn.Module]] = {}

    def call(fn, module):
        return fn(module) if mode == "convert" else fn(module, arg)

    def visit(module: torch.nn.Module, name: str) -> torch.nn.Module:
        if id(module) in done:
            return done[id(module)][1]
        result = module
        conv = _lookup(module)
        tname = type(module).__name__
        if skipped(name):
            if conv is not None or _holds_weights(module):
                report.entries.append(ModuleEntry(name, tname, None, "skipped", "named in skip"))
        elif conv is not None:
            fn = conv.for_mode(mode)
            if fn is None:
                if mode != "convert" or conv.dynamic is None:  # convert: float layers are expected
                    report.entries.append(ModuleEntry(name, tname, None, "unsupported",
                                                      f"q8 has no {mode} converter for {tname}"))
            else:
                bad = _floating_check(module)
                if bad is not None:
                    report.entries.append(ModuleEntry(name, tname, None, "not_floating", bad))
                else:
                    _CURRENT_NAME.append(name)
                    before = type(module)
                    try:
                        result = call(fn, module)
                    except Unavailable as e:
                        report.entries.append(ModuleEntry(name, tname, None, "unavailable", str(e)))
                    except NotImplementedError as e:
                        report.entries.append(ModuleEntry(name, tname, None, "refused",
                                                          str(e) or "the converter raised NotImplementedError"))
                    else:
                        if not isinstance(result, torch.nn.Module):
                            raise TypeError(f"{where}: the {mode} converter of {_key_name(conv.key)} returned "
                                            f"{type(result).__name__}, not a torch.nn.Module")
                        if type(result) is not before:
                            report.entries.append(ModuleEntry(name, tname, type(result).__name__, "converted"))
                        if conv.descend:
                            descend(result, name)
                    finally:
                        _CURRENT_NAME.pop()
        else:
            base = _registered_base(module)
            if base is not None and _REGISTRY[base].for_mode(mode) is not None:
                report.entries.append(ModuleEntry(
                    name, tname, None, "subclass",
                    f"a subclass of {base.__name__}: q8 converts exact types only (a subclass may read attributes "
                    f"the conversion removes); register a converter for {tname} with q8.register_converter"))
            else:
                if _holds_weights(module):
                    report.entries.append(ModuleEntry(name, tname, None, "no_converter",
                                                      f"q8 has no converter for {tname}"))
                descend(module, name)
        done[id(module)] = (module, result)
        return result

    def descend(parent: torch.nn.Module, parent_name: str) -> None:
        for child_name, child in list(parent._modules.items()):
            if child is None:
                continue
            qualified = f"{parent_name}.{child_name}" if parent_name else child_name
            new = visit(child, qualified)
            if new is not child:
                setattr(parent, child_name, new)

    model = visit(model, "")
    _REPORTS[model] = report
    logger.info(report.summary())
    warned = report.warned
    if warned:
        listed = "; ".join(str(e) for e in warned[:5]) + ("; ..." if len(warned) > 5 else "")
        warnings.warn(f"{where}: {len(warned)} module(s) that q8 could convert were left float: {listed}",
                      stacklevel=3)
    return model
