"""QAT convolution + BatchNorm: the folded weight is fake-quantized while the BN statistics keep updating.

:class:`QATConvBn2d` / :class:`QATConvBn1d` are what :func:`q8.prepare_qat` makes of a
fused ``conv -> BatchNorm (-> ReLU / ReLU6 / Hardtanh)`` chain
(:class:`q8.nn.fused.FusedConv2d` with a BN). They follow
``torch.ao.nn.intrinsic.qat.ConvBn2d`` (its "approximate" path) exactly::

    running_std = sqrt(bn.running_var + bn.eps)
    scale_factor = bn.weight / running_std
    w_q = weight_fake_quant(weight * scale_factor[:, None, ...])   # the folded weight, as convert() stores it
    y = conv(input_fake_quant(x), w_q, bias=0) / scale_factor[None, :, ...] (+ bias)
    y = bn(y)                                                       # batch statistics while training
    y = clamp(y, clamp_min, clamp_max)                              # the fused activation

While the BN trains, ``bn(y)`` normalizes with the batch statistics and updates the
running ones (dividing by ``scale_factor`` undoes the running-std scaling so the
batch statistics are those of the unfolded conv); once frozen
(:meth:`QATConvBn2d.freeze_bn_stats`, or in eval mode), ``bn`` uses the running
statistics and the output is the folded conv's, up to float rounding.
:func:`q8.convert` then stores the folded weight (``weight * scale_factor`` quantized
with the weight fake quantizer's qparams) and the folded bias
(``bn.bias + (bias - running_mean) * scale_factor``) in a ``q8.nn.Int8Conv2d`` with
the clamp.

The weight fake quantizer is q8's :class:`q8.nn.FakeQuantize` per output channel (as
:class:`q8.nn.QATConv2d`); the input is fake-quantized per tensor (q8 quantizes a
layer's input, where torch.ao quantizes the previous layer's output).

:class:`QATLinearBn1d` is the same for ``nn.Linear -> nn.BatchNorm1d (-> activation)``
(``torch.ao.nn.intrinsic.qat.LinearBn1d``'s forward, which has no ReLU variant; q8 adds
the clamp), on ``[N, features]`` inputs as ``BatchNorm1d`` after a linear takes them;
:func:`q8.convert` makes a :class:`q8.nn.Int8Linear` of it.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import QConfig
from .fused import clamp
from .qat import _config

__all__ = ["QATConvBn1d", "QATConvBn2d", "QATLinearBn1d", "freeze_bn_stats", "update_bn_stats"]


class _QATConvBnMixin:
    """The shared part of :class:`QATConvBn1d` / :class:`QATConvBn2d` / :class:`QATLinearBn1d`; the layer's
    ``_fold_forward(x, weight, bias)`` computes it with the given (folded) weight."""

    def _qat_bn_init(self, bn_type, out_channels: int, eps: float, momentum: Optional[float], freeze_bn: bool,
                     config: Optional[QConfig], device, dtype) -> None:
        config = _config(config)
        self.clamp_min = None
        self.clamp_max = None
        self.bn = bn_type(out_channels, eps, momentum, True, True, device=device, dtype=dtype)
        self.weight_fake_quant = config.weight_fake_quant(out_channels, device=device)
        self.input_fake_quant = config.activation_fake_quant(device=device)
        self.freeze_bn = bool(freeze_bn) if self.training else True
        self.bn.train(not self.freeze_bn)

    def update_bn_stats(self):
        """Normalize with batch statistics and update the running ones while training (the default)."""
        self.freeze_bn = False
        self.bn.training = self.training
        return self

    def freeze_bn_stats(self):
        """Normalize with the running statistics and stop updating them, in train mode too."""
        self.freeze_bn = True
        self.bn.training = False
        return self

    def train(self, mode: bool = True):
        # As torch.ao's ConvBn: model.train() leaves a frozen BN frozen.
        self.training = mode
        for name, module in self.named_children():
            if name == "bn" and self.freeze_bn:
                continue
            module.train(mode)
        return self

    def _qat_forward(self, input: Tensor) -> Tensor:
        x = self.input_fake_quant(input)
        bn = self.bn
        running_var = bn.running_var
        assert running_var is not None
        running_std = torch.sqrt(running_var + bn.eps)
        gamma = bn.weight
        scale_factor = (gamma if gamma is not None else torch.ones_like(running_std)) / running_std
        weight_shape = [-1] + [1] * (self.weight.dim() - 1)
        bias_shape = [1, -1] + [1] * (self.weight.dim() - 2)
        scaled_weight = self.weight_fake_quant(self.weight * scale_factor.reshape(weight_shape))
        zero_bias = torch.zeros(self.weight.shape[0], device=scaled_weight.device, dtype=x.dtype)
        y = self._fold_forward(x, scaled_weight, zero_bias)
        y = y / scale_factor.reshape(bias_shape)
        bias = self.bias
        if bias is not None:
            y = y + bias.reshape(bias_shape)
        y = bn(y)
        return clamp(y, self.clamp_min, self.clamp_max)

    def folded_weight_and_bias(self):
        """``(weight * scale_factor, bn.bias + (bias - running_mean) * scale_factor)`` from the running stats.

        The weight is computed as the forward computes it (so it quantizes to the same
        codes); detached.
        """
        with torch.no_grad():
            bn = self.bn
            running_std = torch.sqrt(bn.running_var + bn.eps)
            gamma = bn.weight if bn.weight is not None else torch.ones_like(running_std)
            beta = bn.bias if bn.bias is not None else torch.zeros_like(running_std)
            scale_factor = gamma / running_std
            weight = self.weight * scale_factor.reshape([-1] + [1] * (self.weight.dim() - 1))
            bias = self.bias if self.bias is not None else torch.zeros_like(running_std)
            folded_bias = beta + (bias - bn.running_mean) * scale_factor
        return weight.detach(), folded_bias.detach()

    @classmethod
    def _from_fused(cls, fused, config: Optional[QConfig] = None):
        conv, bn = fused.conv, fused.bn
        config = _config(config)
        qat = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                  conv.groups, conv.bias is not None, conv.padding_mode, bn.eps, bn.momentum, False, config,
                  device="meta")
        return qat._adopt(fused, conv, config)

    def _adopt(self, fused, layer, config: QConfig):
        """This meta-device shell made of ``fused``: ``layer``'s parameters and the BN shared, fake quantizers on
        the layer's device, the fused clamp, BN statistics training as ``fused``."""
        device = layer.weight.device
        self.weight = layer.weight
        self.bias = layer.bias
        self.bn = fused.bn  # shared: its parameters and running statistics keep training
        self.weight_fake_quant = config.weight_fake_quant(layer.weight.shape[0], device=device)
        self.input_fake_quant = config.activation_fake_quant(device=device)
        self.clamp_min, self.clamp_max = fused.clamp()
        self.freeze_bn = False
        self.train(fused.training)
        return self

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.clamp_min is not None or self.clamp_max is not None:
            s += f", clamp_min={self.clamp_min}, clamp_max={self.clamp_max}"
        return s + f", freeze_bn={self.freeze_bn}"


class QATConvBn2d(_QATConvBnMixin, nn.Conv2d):
    """``nn.Conv2d`` + ``nn.BatchNorm2d`` (+ clamp) for QAT (module docstring); like ``torch.ao``'s ConvBn2d.

    ``weight`` / ``bias`` are the conv's parameters, ``bn`` the BatchNorm (shared with
    the float model by :meth:`from_fused`), ``weight_fake_quant`` / ``input_fake_quant``
    q8's fake quantizers from ``config``; ``clamp_min`` / ``clamp_max`` the fused
    activation (``(0, None)`` for ReLU, ``(0, 6)`` for ReLU6).
    """

    clamp_min: Optional[float]
    clamp_max: Optional[float]
    freeze_bn: bool

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", eps: float = 1e-5,
                 momentum: Optional[float] = 0.1, freeze_bn: bool = False, config: Optional[QConfig] = None,
                 device=None, dtype=None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device=device, dtype=dtype)
        self._qat_bn_init(nn.BatchNorm2d, out_channels, eps, momentum, freeze_bn, config, device, dtype)

    @classmethod
    def from_fused(cls, fused, config: Optional[QConfig] = None) -> "QATConvBn2d":
        """From a :class:`q8.nn.fused.FusedConv2d` with a BatchNorm: **shares** its conv parameters and BN."""
        from .fused import FusedConv2d

        if not isinstance(fused, FusedConv2d) or not fused.has_bn:
            raise TypeError(f"QATConvBn2d.from_fused: expected a q8.nn.FusedConv2d with a BatchNorm2d, got "
                            f"{type(fused).__name__}")
        return cls._from_fused(fused, config)

    def _fold_forward(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return self._conv_forward(x, weight, bias)

    def forward(self, input: Tensor) -> Tensor:
        return self._qat_forward(input)


class QATConvBn1d(_QATConvBnMixin, nn.Conv1d):
    """``nn.Conv1d`` + ``nn.BatchNorm1d`` (+ clamp) for QAT, as :class:`QATConvBn2d`."""

    clamp_min: Optional[float]
    clamp_max: Optional[float]
    freeze_bn: bool

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", eps: float = 1e-5,
                 momentum: Optional[float] = 0.1, freeze_bn: bool = False, config: Optional[QConfig] = None,
                 device=None, dtype=None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device=device, dtype=dtype)
        self._qat_bn_init(nn.BatchNorm1d, out_channels, eps, momentum, freeze_bn, config, device, dtype)

    @classmethod
    def from_fused(cls, fused, config: Optional[QConfig] = None) -> "QATConvBn1d":
        """From a :class:`q8.nn.fused.FusedConv1d` with a BatchNorm: **shares** its conv parameters and BN."""
        from .fused import FusedConv1d

        if not isinstance(fused, FusedConv1d) or not fused.has_bn:
            raise TypeError(f"QATConvBn1d.from_fused: expected a q8.nn.FusedConv1d with a BatchNorm1d, got "
                            f"{type(fused).__name__}")
        return cls._from_fused(fused, config)

    def _fold_forward(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return self._conv_forward(x, weight, bias)

    def forward(self, input: Tensor) -> Tensor:
        return self._qat_forward(input)


class QATLinearBn1d(_QATConvBnMixin, nn.Linear):
    """``nn.Linear`` + ``nn.BatchNorm1d`` (+ clamp) for QAT, as :class:`QATConvBn2d`; like ``torch.ao``'s
    ``LinearBn1d``. Inputs ``[N, in_features]`` (what ``BatchNorm1d`` after a linear takes)."""

    clamp_min: Optional[float]
    clamp_max: Optional[float]
    freeze_bn: bool

    def __init__(self, in_features: int, out_features: int, bias: bool = True, eps: float = 1e-5,
                 momentum: Optional[float] = 0.1, freeze_bn: bool = False, config: Optional[QConfig] = None,
                 device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._qat_bn_init(nn.BatchNorm1d, out_features, eps, momentum, freeze_bn, config, device, dtype)

    @classmethod
    def from_fused(cls, fused, config: Optional[QConfig] = None) -> "QATLinearBn1d":
        """From a :class:`q8.nn.fused.FusedLinear` with a BatchNorm1d: **shares** its linear parameters and BN."""
        from .fused import FusedLinear

        if not isinstance(fused, FusedLinear) or not fused.has_bn:
            raise TypeError(f"QATLinearBn1d.from_fused: expected a q8.nn.FusedLinear with a BatchNorm1d, got "
                            f"{type(fused).__name__}")
        linear, bn = fused.linear, fused.bn
        config = _config(config)
        qat = cls(linear.in_features, linear.out_features, linear.bias is not None, bn.eps, bn.momentum, False,
                  config, device="meta")
        return qat._adopt(fused, linear, config)

    def _fold_forward(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return F.linear(x, weight, bias)

    def forward(self, input: Tensor) -> Tensor:
        return self._qat_forward(input)


def _convbn_modules(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, _QATConvBnMixin)]


def freeze_bn_stats(model: nn.Module) -> nn.Module:
    """:meth:`QATConvBn2d.freeze_bn_stats` on every q8 QAT conv-BN of ``model`` (the usual last QAT epochs)."""
    for m in _convbn_modules(model):
        m.freeze_bn_stats()
    return model


def update_bn_stats(model: nn.Module) -> nn.Module:
    """:meth:`QATConvBn2d.update_bn_stats` on every q8 QAT conv-BN of ``model``."""
    for m in _convbn_modules(model):
        m.update_bn_stats()
    return model
