"""Fused float containers: a convolution / linear layer, its BatchNorm and its activation.

:func:`q8.fuse_modules` (and the automatic fusion of :func:`q8.quantize_dynamic`,
:func:`q8.prepare` and :func:`q8.prepare_qat`) put a ``conv -> bn -> relu`` chain into
one of these containers; their forward is exactly the unfused sequence
(``act(bn(layer(x)))``, the same modules called in the same order), so fusing changes
no value. The converters then fold the BatchNorm into the layer's weight and bias and
turn the activation into the int8 layer's output clamp (see ``docs/fusion.md``).

* :class:`FusedConv1d` / :class:`FusedConv2d`: ``conv`` (``nn.Conv1d`` / ``nn.Conv2d``),
  ``bn`` (``nn.BatchNorm1d`` / ``nn.BatchNorm2d`` or ``nn.Identity``), ``act``;
* :class:`FusedLinear`: ``linear`` (``nn.Linear``), ``bn`` (``nn.BatchNorm1d`` or
  ``nn.Identity``), ``act``.

``act`` is ``nn.ReLU`` (clamp ``[0, inf)``), ``nn.ReLU6`` (``[0, 6]``), ``nn.Hardtanh``
(``[min_val, max_val]``) or ``nn.Identity``: activations that are a clamp, so that the
int8 layer's epilogue computes them exactly.

:class:`Int8Clamped` applies a clamp after a layer that has no clamp of its own (q8's int8
linear and conv layers have one: the converters use it; models pickled by a q8 whose
``Int8Linear`` had none hold ``Int8Clamped`` and still load).
"""
import copy
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = ["FusedConv1d", "FusedConv2d", "FusedLinear", "Int8Clamped", "activation_clamp", "fold_bn"]

#: The BatchNorm type that may follow each layer type.
BN_FOR = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Linear: nn.BatchNorm1d}
#: Activation module types that are a clamp (matched exactly).
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh)


def activation_clamp(act: nn.Module) -> Optional[Tuple[Optional[float], Optional[float]]]:
    """``(clamp_min, clamp_max)`` equal to ``act`` (None for an unbounded side), or None if ``act`` is no clamp.

    ``nn.Identity`` gives ``(None, None)``.
    """
    t = type(act)
    if t is nn.Identity:
        return None, None
    if t is nn.ReLU:
        return 0.0, None
    if t is nn.ReLU6:
        return 0.0, 6.0
    if t is nn.Hardtanh:
        return float(act.min_val), float(act.max_val)
    return None


def _features(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def check_bn(layer: nn.Module, bn: nn.Module, names=("layer", "bn"), where: str = "q8") -> None:
    """A ValueError unless ``bn`` is the BatchNorm type that can follow ``layer``, with matching channels."""
    want = BN_FOR.get(type(layer))
    if want is None:
        raise ValueError(f"{where}: {names[0]!r} ({type(layer).__name__}) is not a Conv1d / Conv2d / Linear")
    if type(bn) is not want:
        raise ValueError(f"{where}: {names[1]!r} ({type(bn).__name__}) cannot follow {names[0]!r} "
                         f"({type(layer).__name__}): expected a {want.__name__}")
    if bn.num_features != _features(layer):
        kind = "out_features" if isinstance(layer, nn.Linear) else "out_channels"
        raise ValueError(f"{where}: {names[1]!r} ({type(bn).__name__}, num_features={bn.num_features}) does not "
                         f"match {names[0]!r} ({type(layer).__name__}, {kind}={_features(layer)})")
    if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{where}: {names[1]!r} ({type(bn).__name__}) has no running statistics "
                         "(track_running_stats=False): it cannot be folded")


def fold_bn(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """A copy of ``layer`` with ``bn`` (eval mode: its running statistics) folded into its weight and bias.

    ``layer`` and ``bn`` are not changed; the copy has a bias (``bn``'s shift).
    """
    check_bn(layer, bn, where="q8.nn.fused.fold_bn")
    folded = copy.deepcopy(layer)
    with torch.no_grad():
        w = layer.weight.detach()
        b = layer.bias.detach() if layer.bias is not None else torch.zeros(_features(layer), dtype=w.dtype,
                                                                             device=w.device)
        std = torch.rsqrt(bn.running_var.detach().to(w.dtype) + bn.eps)
        gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(std)
        beta = bn.bias.detach() if bn.bias is not None else torch.zeros_like(std)
        factor = gamma * std
        shape = [-1] + [1] * (w.dim() - 1)
        new_w = w * factor.reshape(shape)
        new_b = (b - bn.running_mean.detach().to(w.dtype)) * factor + beta
    folded.weight = nn.Parameter(new_w, layer.weight.requires_grad)
    folded.bias = nn.Parameter(new_b, layer.weight.requires_grad)
    return folded


class _Fused(nn.Module):
    """``act(bn(layer(x)))``: the base of the fused containers."""

    _layer_types: Tuple[type, ...] = ()
    _layer_name = "conv"
    __jit_unused_properties__ = ["layer", "has_bn"]

    def __init__(self, layer: nn.Module, bn: Optional[nn.Module] = None, act: Optional[nn.Module] = None) -> None:
        super().__init__()
        where = f"q8.nn.{type(self).__name__}"
        if type(layer) not in self._layer_types:
            raise TypeError(f"{where}: expected a {' / '.join(t.__name__ for t in self._layer_types)}, got "
                            f"{type(layer).__name__}")
        bn = nn.Identity() if bn is None else bn
        act = nn.Identity() if act is None else act
        if type(bn) is not nn.Identity:
            check_bn(layer, bn, ("layer", "bn"), where)
        if activation_clamp(act) is None:
            raise ValueError(f"{where}: act must be nn.ReLU, nn.ReLU6, nn.Hardtanh or nn.Identity, got "
                             f"{type(act).__name__}")
        setattr(self, self._layer_name, layer)
        self.bn = bn
        self.act = act

    @property
    def layer(self) -> nn.Module:
        return getattr(self, self._layer_name)

    @property
    def has_bn(self) -> bool:
        return type(self.bn) is not nn.Identity

    def clamp(self) -> Tuple[Optional[float], Optional[float]]:
        """The activation as ``(clamp_min, clamp_max)``."""
        c = activation_clamp(self.act)
        assert c is not None
        return c

    def folded_layer(self) -> nn.Module:
        """The layer with the BatchNorm folded in (running statistics), a copy; the layer itself without BN."""
        return fold_bn(self.layer, self.bn) if self.has_bn else self.layer

    def fold_bn_(self) -> "_Fused":
        """Fold the BatchNorm into the layer, in place (the layer becomes a folded copy, ``bn`` an Identity)."""
        if self.has_bn:
            setattr(self, self._layer_name, self.folded_layer())
            self.bn = nn.Identity()
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.layer_forward(x)))

    def layer_forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError


class FusedConv1d(_Fused):
    """``act(bn(conv(x)))`` for an ``nn.Conv1d``, an optional ``nn.BatchNorm1d`` and a clamp activation."""

    _layer_types = (nn.Conv1d,)

    def layer_forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class FusedConv2d(_Fused):
    """``act(bn(conv(x)))`` for an ``nn.Conv2d``, an optional ``nn.BatchNorm2d`` and a clamp activation."""

    _layer_types = (nn.Conv2d,)

    def layer_forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class FusedLinear(_Fused):
    """``act(bn(linear(x)))`` for an ``nn.Linear``, an optional ``nn.BatchNorm1d`` and a clamp activation."""

    _layer_types = (nn.Linear,)
    _layer_name = "linear"

    def layer_forward(self, x: Tensor) -> Tensor:
        return self.linear(x)


FUSED_FOR = {nn.Conv1d: FusedConv1d, nn.Conv2d: FusedConv2d, nn.Linear: FusedLinear}


class Int8Clamped(nn.Module):
    """``clamp(layer(x), clamp_min, clamp_max)``: a fused activation applied after a layer without a clamp.

    What a fused ``Linear -> ReLU`` becomes (``q8.nn.Int8Linear`` has no clamp in its
    epilogue). ``None`` leaves a side unbounded; NaN stays NaN.
    """

    clamp_min: Optional[float]
    clamp_max: Optional[float]

    def __init__(self, layer: nn.Module, clamp_min: Optional[float] = None, clamp_max: Optional[float] = None):
        super().__init__()
        self.layer = layer
        self.clamp_min = None if clamp_min is None else float(clamp_min)
        self.clamp_max = None if clamp_max is None else float(clamp_max)

    def forward(self, x: Tensor) -> Tensor:
        return clamp(self.layer(x), self.clamp_min, self.clamp_max)

    def extra_repr(self) -> str:
        return f"clamp_min={self.clamp_min}, clamp_max={self.clamp_max}"


def clamp(y: Tensor, clamp_min: Optional[float], clamp_max: Optional[float]) -> Tensor:
    """``y`` clamped to ``[clamp_min, clamp_max]`` (None: unbounded), NaN kept (as ``torch.clamp``)."""
    if clamp_min is not None:
        y = torch.clamp_min(y, clamp_min)
    if clamp_max is not None:
        y = torch.clamp_max(y, clamp_max)
    return y
