"""Quantization-aware training modules: ``FakeQuantize``, ``QATLinear``, ``QATConv2d``.

``FakeQuantize`` is an observer plus fake quantization, with its state in buffers
(so it is saved by ``state_dict``, moved by ``.to()`` and kept on the device) and
its enable flags as tensors read on the device: a forward never synchronizes with
the host, except for the distributed all-reduce described below. Every module
here is scriptable (``torch.jit.script``).

Observers (see :class:`q8.QConfig` for when to use which):

* ``"moving_average"``: one call of :func:`q8.observe_fake_quantize` (the
  moving average of the min / max, the qparams and the fake quantization fused);
* ``"minmax"``: running min / max over every observation;
* ``"current"``: the min / max of the current input only (weights);
* ``"percentile"``: a histogram on the device (:func:`q8.histogram_observe`)
  and the range that keeps ``percentile`` percent of the values
  (:func:`q8.histogram_qparams`); per tensor only.

Every observer ignores NaN and +-Inf. The qparams are recomputed whenever the
observer runs, with :func:`q8.choose_qparams`' formulas (range extended to hold 0).

``running_min`` / ``running_max`` hold the observed range (the histogram's range
for ``"percentile"``), ``+inf`` / ``-inf`` before any observation.

Distributed training: when ``torch.distributed`` is initialized with more than one
process, ``sync`` is on and the observer is on, the eager forward all-reduces the
batch's min / max (MIN / MAX) before the observer uses them, and the percentile
observer sums the histograms of the ranks (whose ranges grow identically), so
every rank holds bit-identical qparams. Every rank must then run the forward (as in
DDP training and :func:`q8.calibrate`); freeze the observers
(:func:`q8.freeze_observers`) before evaluating on one rank only. Whether the
observer is on is known on the host from :meth:`FakeQuantize.enable_observer`
(and ``load_state_dict``); writing ``observer_enabled`` by hand bypasses that.
TorchScript code never all-reduces.
"""
import math
from typing import Final, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import OBSERVERS, QConfig, quant_range
from .fused import clamp

__all__ = ["FakeQuantize", "QATLinear", "QATConv1d", "QATConv2d"]

# The smallest normal float32 (a literal: TorchScript cannot read a global float).
_FLT_TINY = 1.1754943508222875e-38


def _world_size() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class FakeQuantize(torch.nn.Module):
    """Observer + fake quantization (``q8`` ops), for QAT and for calibration.

    Args:
        observer: ``"moving_average"`` (default), ``"minmax"``, ``"current"`` or
            ``"percentile"`` (see the module docstring).
        qscheme: ``"per_tensor_affine"`` (default), ``"per_tensor_symmetric"``,
            ``"per_channel_affine"`` or ``"per_channel_symmetric"``.
        bits: 2 to 8; the range is :func:`q8.config.quant_range` (``[0, 2**bits-1]``
            affine, ``[-(2**(bits-1)-1), 2**(bits-1)-1]`` symmetric) unless
            ``quant_min`` / ``quant_max`` are given.
        channels: per channel only: ``input.size(axis)``, fixed at construction.
        axis: per channel only: the channel dimension (default 0).
        averaging_constant: the moving average's constant, in (0, 1].
        percentile, bins: the percentile observer's kept percent and histogram bins.
        learnable: learn ``scale`` (and, for affine schemes, ``zero_point``) by
            gradient descent (LSQ). They are the parameters ``lsq_scale`` /
            ``lsq_zero_point``; while the observer is on, it overwrites them with its
            qparams (the usual LSQ initialization: observe a few batches, then
            :meth:`disable_observer`). Their gradient is scaled by
            ``1 / sqrt(numel per scale * quant_max)`` (LSQ's g), and the scale is
            clamped to at least the smallest normal float32 before each use.
        sync: all-reduce the statistics under ``torch.distributed`` (module docstring).

    Buffers: ``observer_enabled`` / ``fake_quant_enabled`` (uint8 ``[1]``, 1 = on),
    ``scale`` (float32), ``zero_point`` (int32), ``running_min`` / ``running_max``
    (float32): 0-dim per tensor, ``[channels]`` per channel; the percentile observer
    adds ``histogram`` (float64 ``[bins]``).

    ``forward(x)`` returns the fake-quantized ``x`` (a copy of ``x`` when fake
    quantization is off) with ``x``'s dtype; the gradient to ``x`` is straight
    through (zero where ``x`` was clamped).
    """

    observer: Final[str]
    qscheme: Final[str]
    quant_min: Final[int]
    quant_max: Final[int]
    per_channel: Final[bool]
    symmetric: Final[bool]
    axis: Final[int]
    channels: Final[int]
    averaging_constant: Final[float]
    percentile: Final[float]
    sync: bool
    _observing: bool

    def __init__(self, observer: str = "moving_average", qscheme: str = "per_tensor_affine", bits: int = 8,
                 channels: Optional[int] = None, axis: int = 0, averaging_constant: float = 0.01,
                 percentile: float = 99.99, bins: int = 2048, learnable: bool = False,
                 quant_min: Optional[int] = None, quant_max: Optional[int] = None, sync: bool = True,
                 device=None) -> None:
        super().__init__()
        if observer not in OBSERVERS:
            raise ValueError(f"q8.nn.FakeQuantize: observer must be one of {', '.join(map(repr, OBSERVERS))}, "
                             f"got {observer!r}")
        qmin, qmax = quant_range(bits, qscheme)
        if (quant_min is None) != (quant_max is None):
            raise ValueError("q8.nn.FakeQuantize: give both quant_min and quant_max, or neither")
        if quant_min is not None:
            qmin, qmax = int(quant_min), int(quant_max)
            if not qmin < qmax:
                raise ValueError(f"q8.nn.FakeQuantize: quant_min must be < quant_max, got [{qmin}, {qmax}]")
            if not (-(2 ** (bits - 1)) <= qmin and qmax <= 2 ** bits - 1 and qmax - qmin <= 2 ** bits - 1):
                raise ValueError(f"q8.nn.FakeQuantize: [quant_min, quant_max] = [{qmin}, {qmax}] does not fit in "
                                 f"{bits} bits")
        per_channel = qscheme.startswith("per_channel")
        if per_channel:
            if channels is None or int(channels) < 1:
                raise ValueError("q8.nn.FakeQuantize: a per-channel qscheme needs channels (the size of the "
                                 f"channel axis, fixed at construction), got {channels!r}")
        elif channels not in (None, 1):
            raise ValueError(f"q8.nn.FakeQuantize: channels is for per-channel qschemes, got {channels!r} with "
                             f"{qscheme!r}")
        if observer == "percentile" and per_channel:
            raise ValueError("q8.nn.FakeQuantize: the percentile observer is per tensor; got " + repr(qscheme))
        if not 0.0 < float(averaging_constant) <= 1.0:
            raise ValueError(f"q8.nn.FakeQuantize: averaging_constant must be in (0, 1], got {averaging_constant!r}")
        if not 0.0 < float(percentile) <= 100.0:
            raise ValueError(f"q8.nn.FakeQuantize: percentile must be in (0, 100], got {percentile!r}")
        if not isinstance(bins, int) or bins < 1:
            raise ValueError(f"q8.nn.FakeQuantize: bins must be a positive integer, got {bins!r}")

        self.observer = observer
        self.qscheme = qscheme
        self.quant_min = qmin
        self.quant_max = qmax
        self.per_channel = per_channel
        self.symmetric = qscheme.endswith("symmetric")
        self.axis = int(axis) if per_channel else 0
        self.channels = int(channels) if per_channel else 1
        self.averaging_constant = float(averaging_constant)
        self.percentile = float(percentile)
        self.sync = bool(sync)
        self._observing = True

        shape = (self.channels,) if per_channel else ()
        f32 = dict(dtype=torch.float32, device=device)
        self.register_buffer("observer_enabled", torch.ones(1, dtype=torch.uint8, device=device))
        self.register_buffer("fake_quant_enabled", torch.ones(1, dtype=torch.uint8, device=device))
        self.register_buffer("scale", torch.ones(shape, **f32))
        zero = (qmin + qmax + 1) // 2 if self.symmetric and qmin >= 0 else (0 if qmin <= 0 <= qmax else qmin)
        self.register_buffer("zero_point", torch.full(shape, zero, dtype=torch.int32, device=device))
        self.register_buffer("running_min", torch.full(shape, math.inf, **f32))
        self.register_buffer("running_max", torch.full(shape, -math.inf, **f32))
        self.register_buffer("histogram", torch.zeros(bins, dtype=torch.float64, device=device)
                             if observer == "percentile" else None)
        # A constant "off" flag for the op calls that only observe or only fake-quantize.
        self.register_buffer("_off", torch.zeros(1, dtype=torch.uint8, device=device), persistent=False)
        if learnable:
            self.lsq_scale = torch.nn.Parameter(torch.ones(shape, **f32))
            self.lsq_zero_point = (None if self.symmetric
                                   else torch.nn.Parameter(torch.full(shape, float(zero), **f32)))
        else:
            self.lsq_scale = None
            self.lsq_zero_point = None

    # ---- flags ---------------------------------------------------------------------------
    @torch.jit.export
    def enable_observer(self, enabled: bool = True) -> None:
        self.observer_enabled.fill_(1 if enabled else 0)
        self._observing = enabled

    @torch.jit.export
    def disable_observer(self) -> None:
        self.enable_observer(False)

    @torch.jit.export
    def enable_fake_quant(self, enabled: bool = True) -> None:
        self.fake_quant_enabled.fill_(1 if enabled else 0)

    @torch.jit.export
    def disable_fake_quant(self) -> None:
        self.enable_fake_quant(False)

    @torch.jit.export
    def calculate_qparams(self) -> Tuple[Tensor, Tensor]:
        """The qparams fake quantization uses now: ``(scale float32, zero_point int32)``.

        For a learnable module, the learned ones (zero point rounded half to even and
        clamped to the range, scale clamped to the smallest normal float32).
        """
        lsq_scale = self.lsq_scale
        if lsq_scale is None:
            return self.scale.clone(), self.zero_point.clone()
        scale = lsq_scale.detach().clamp(min=1.1754943508222875e-38)
        lsq_zero_point = self.lsq_zero_point
        if lsq_zero_point is None:
            return scale, self.zero_point.clone()
        zp = torch.round(lsq_zero_point.detach()).clamp(self.quant_min, self.quant_max).to(torch.int32)
        return scale, zp

    @torch.jit.export
    def has_observed(self) -> bool:
        """Whether the observer has seen a finite value (in every channel). Reads the device."""
        return bool(torch.isfinite(self.running_min).all()) and bool(torch.isfinite(self.running_max).all())

    # ---- forward -------------------------------------------------------------------------
    def _axis(self) -> Optional[int]:
        return self.axis if self.per_channel else None

    def _batch_minmax(self, x: Tensor, on: Tensor) -> Tuple[Tensor, Tensor]:
        """Finite min / max of ``x`` (per channel), or +inf / -inf where ``on`` is 0 or nothing is finite."""
        bmin = torch.full_like(self.running_min, math.inf)
        bmax = torch.full_like(self.running_max, -math.inf)
        # The fused op's first observation is taken as is: a fresh state receives the
        # batch's finite min / max (its scale / zero point copies are discarded).
        torch.ops.q8.observe_fake_quantize(x.detach(), on, self._off, bmin, bmax, self.scale.clone(),
                                           self.zero_point.clone(), 1.0, self.quant_min, self.quant_max,
                                           self._axis(), self.symmetric)
        return bmin, bmax

    def _qparams_from_running(self, on: Tensor) -> None:
        """scale / zero_point from [running_min, running_max] where ``on`` (choose_qparams' formulas)."""
        ranges = torch.stack([self.running_min, self.running_max], dim=-1)
        axis: Optional[int] = 0 if self.per_channel else None
        scale, zero_point = torch.ops.q8.choose_qparams(ranges, self.quant_min, self.quant_max, self.symmetric,
                                                        axis)
        flag = on[0] != 0
        self.scale.copy_(torch.where(flag, scale, self.scale))
        self.zero_point.copy_(torch.where(flag, zero_point, self.zero_point))

    def _update_from_minmax(self, bmin: Tensor, bmax: Tensor, on: Tensor) -> None:
        """The minmax / current / moving-average update from a batch's min / max (already all-reduced)."""
        flag = on[0] != 0
        if self.observer == "moving_average":
            ranges = torch.stack([bmin, bmax], dim=-1)
            axis: Optional[int] = 0 if self.per_channel else None
            torch.ops.q8.observe_fake_quantize(ranges, on, self._off, self.running_min, self.running_max,
                                               self.scale, self.zero_point, self.averaging_constant,
                                               self.quant_min, self.quant_max, axis, self.symmetric)
            return
        if self.observer == "minmax":
            new_min = torch.fmin(self.running_min, bmin)
            new_max = torch.fmax(self.running_max, bmax)
        else:  # current
            new_min = bmin
            new_max = bmax
        self.running_min.copy_(torch.where(flag, new_min, self.running_min))
        self.running_max.copy_(torch.where(flag, new_max, self.running_max))
        self._qparams_from_running(on)

    def _percentile_qparams(self, histogram: Tensor, on: Tensor) -> None:
        scale, zero_point = torch.ops.q8.histogram_qparams(histogram, self.running_min, self.running_max,
                                                           self.percentile, self.quant_min, self.quant_max,
                                                           self.symmetric)
        flag = on[0] != 0
        self.scale.copy_(torch.where(flag, scale, self.scale))
        self.zero_point.copy_(torch.where(flag, zero_point, self.zero_point))

    def _check_input(self, x: Tensor) -> None:
        if self.per_channel:
            torch._assert(x.dim() > 0, "q8.nn.FakeQuantize: a per-channel input must have at least 1 dimension")
            ax = self.axis if self.axis >= 0 else self.axis + x.dim()
            torch._assert(0 <= ax < x.dim() and x.size(ax) == self.channels,
                          "q8.nn.FakeQuantize: the input's channel axis does not match `channels`")

    def _fake_quantize(self, x: Tensor) -> Tensor:
        """Fake quantization with the current qparams (observer off), gated by fake_quant_enabled."""
        lsq_scale = self.lsq_scale
        if lsq_scale is None:
            out, _ = torch.ops.q8.observe_fake_quantize(x, self._off, self.fake_quant_enabled, self.running_min,
                                                        self.running_max, self.scale, self.zero_point,
                                                        self.averaging_constant, self.quant_min, self.quant_max,
                                                        self._axis(), self.symmetric)
            return out
        with torch.no_grad():
            lsq_scale.clamp_(min=1.1754943508222875e-38)
        # LSQ's gradient scale g: the forward value stays exactly lsq_scale, the gradient is g times.
        per_scale = x.numel() // self.channels if self.per_channel else x.numel()
        g = 1.0 / math.sqrt(max(per_scale, 1) * max(self.quant_max, 1))
        scale = (lsq_scale - lsq_scale.detach()) * g + lsq_scale.detach()
        lsq_zero_point = self.lsq_zero_point
        if lsq_zero_point is None:
            zero_point = self.zero_point
        else:
            zero_point = (lsq_zero_point - lsq_zero_point.detach()) * g + lsq_zero_point.detach()
        if self.per_channel:
            out = torch.ops.q8.fake_quantize_per_channel(x, scale, zero_point, self.axis, self.quant_min,
                                                         self.quant_max)
        else:
            out = torch.ops.q8.fake_quantize_per_tensor(x, scale, zero_point, self.quant_min, self.quant_max)
        return torch.where(self.fake_quant_enabled[0] != 0, out, x)

    def _copy_to_learnable(self, on: Tensor) -> None:
        lsq_scale = self.lsq_scale
        if lsq_scale is not None:
            flag = on[0] != 0
            with torch.no_grad():
                lsq_scale.copy_(torch.where(flag, self.scale, lsq_scale))
                lsq_zero_point = self.lsq_zero_point
                if lsq_zero_point is not None:
                    lsq_zero_point.copy_(torch.where(flag, self.zero_point.to(torch.float32), lsq_zero_point))

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if not torch.jit.is_scripting():
            if self._should_sync():
                return self._forward_synced(x)
        on = self.observer_enabled
        if self.observer == "moving_average" and self.lsq_scale is None:
            out, _ = torch.ops.q8.observe_fake_quantize(x, on, self.fake_quant_enabled, self.running_min,
                                                        self.running_max, self.scale, self.zero_point,
                                                        self.averaging_constant, self.quant_min, self.quant_max,
                                                        self._axis(), self.symmetric)
            return out
        histogram = self.histogram
        if histogram is not None:
            torch.ops.q8.histogram_observe(x.detach(), on, histogram, self.running_min, self.running_max, None)
            self._percentile_qparams(histogram, on)
        elif self.observer == "moving_average":
            torch.ops.q8.observe_fake_quantize(x.detach(), on, self._off, self.running_min, self.running_max,
                                               self.scale, self.zero_point, self.averaging_constant,
                                               self.quant_min, self.quant_max, self._axis(), self.symmetric)
        else:
            bmin, bmax = self._batch_minmax(x, on)
            self._update_from_minmax(bmin, bmax, on)
        self._copy_to_learnable(on)
        return self._fake_quantize(x)

    @torch.jit.unused
    def _should_sync(self) -> bool:
        return self.sync and self._observing and _world_size() > 1

    @torch.jit.unused
    def _forward_synced(self, x: Tensor) -> Tensor:
        import torch.distributed as dist

        on = self.observer_enabled
        bmin, bmax = self._batch_minmax(x, on)
        dist.all_reduce(bmin, op=dist.ReduceOp.MIN)
        dist.all_reduce(bmax, op=dist.ReduceOp.MAX)
        histogram = self.histogram
        if histogram is not None:
            # Every rank grows its histogram to the same range, so the bins line up and add.
            torch.ops.q8.histogram_observe(x.detach(), on, histogram, self.running_min, self.running_max,
                                           torch.stack([bmin, bmax]))
            total = histogram.clone()
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
            self._percentile_qparams(total, on)
        else:
            self._update_from_minmax(bmin, bmax, on)
        self._copy_to_learnable(on)
        return self._fake_quantize(x)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self._observing = bool(self.observer_enabled.detach().cpu()[0] != 0)

    def extra_repr(self) -> str:
        s = (f"observer={self.observer!r}, qscheme={self.qscheme!r}, quant_min={self.quant_min}, "
             f"quant_max={self.quant_max}")
        if self.per_channel:
            s += f", channels={self.channels}, axis={self.axis}"
        if self.observer == "moving_average":
            s += f", averaging_constant={self.averaging_constant}"
        if self.observer == "percentile":
            s += f", percentile={self.percentile}, bins={self.histogram.numel()}"
        if self.lsq_scale is not None:
            s += ", learnable=True"
        return s


def _config(config: Optional[QConfig], where: str = "q8.nn") -> QConfig:
    """``config``, or the default :class:`q8.QConfig` for None; anything else is a TypeError."""
    if config is None:
        return QConfig()
    if not isinstance(config, QConfig):
        raise TypeError(f"{where}: config must be a q8.QConfig, got {type(config).__name__}")
    return config


def _around(qat, layer, out_channels: int, config: QConfig):
    """Give ``qat`` (built on the meta device) ``layer``'s own parameters and fake quantizers on their device."""
    device = layer.weight.device
    qat.weight = layer.weight
    qat.bias = layer.bias
    qat.weight_fake_quant = config.weight_fake_quant(out_channels, device=device)
    qat.input_fake_quant = config.activation_fake_quant(device=device)
    qat.train(layer.training)
    return qat


class QATLinear(torch.nn.Linear):
    """``nn.Linear`` with its weight fake-quantized per output channel and its input per tensor.

    ``weight`` and ``bias`` are ordinary parameters (the same names as
    ``nn.Linear``'s, so a float state_dict loads with ``strict=False``); the fake
    quantizers are the submodules ``weight_fake_quant`` and ``input_fake_quant``,
    built from ``config`` (default :class:`q8.QConfig`). :func:`q8.convert` turns
    the layer into a :class:`q8.nn.Int8Linear`.

    ``clamp_min`` / ``clamp_max`` (None: unbounded; set by the fusion of a following
    ReLU / ReLU6 / Hardtanh, ``docs/fusion.md``) clamp the output, before the next
    layer's input observer sees it, as the converted layer will.
    """

    clamp_min: Optional[float]
    clamp_max: Optional[float]

    def __init__(self, in_features: int, out_features: int, bias: bool = True, config: Optional[QConfig] = None,
                 device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        config = _config(config)
        self.clamp_min = None
        self.clamp_max = None
        self.weight_fake_quant = config.weight_fake_quant(out_features, device=device)
        self.input_fake_quant = config.activation_fake_quant(device=device)

    @classmethod
    def from_float(cls, linear: torch.nn.Linear, config: Optional[QConfig] = None) -> "QATLinear":
        """A ``QATLinear`` that **shares** ``linear``'s weight and bias parameters.

        An optimizer built over the float model keeps training the same tensors.
        """
        if not isinstance(linear, torch.nn.Linear):
            raise TypeError(f"QATLinear.from_float: expected a torch.nn.Linear, got {type(linear).__name__}")
        config = _config(config)
        qat = cls(linear.in_features, linear.out_features, linear.bias is not None, config, device="meta")
        return _around(qat, linear, linear.out_features, config)

    def extra_repr(self) -> str:
        return super().extra_repr() + _clamp_repr(self.clamp_min, self.clamp_max)

    def forward(self, input: Tensor) -> Tensor:
        y = F.linear(self.input_fake_quant(input), self.weight_fake_quant(self.weight), self.bias)
        return clamp(y, self.clamp_min, self.clamp_max)


class _QATConvNd:
    """The shared part of :class:`QATConv1d` / :class:`QATConv2d` (a mixin over ``nn.ConvNd``)."""

    def _qat_init(self, out_channels: int, config: Optional[QConfig], device) -> None:
        config = _config(config)
        self.clamp_min = None
        self.clamp_max = None
        self.weight_fake_quant = config.weight_fake_quant(out_channels, device=device)
        self.input_fake_quant = config.activation_fake_quant(device=device)


class QATConv2d(torch.nn.Conv2d):
    """``nn.Conv2d`` with its weight fake-quantized per output channel and its input per tensor.

    As :class:`QATLinear` (``clamp_min`` / ``clamp_max`` included); :func:`q8.convert`
    turns it into a :class:`q8.nn.Int8Conv2d`.
    """

    clamp_min: Optional[float]
    clamp_max: Optional[float]

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", config: Optional[QConfig] = None,
                 device=None, dtype=None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device=device, dtype=dtype)
        _QATConvNd._qat_init(self, out_channels, config, device)

    @classmethod
    def from_float(cls, conv: torch.nn.Conv2d, config: Optional[QConfig] = None) -> "QATConv2d":
        """A ``QATConv2d`` that **shares** ``conv``'s weight and bias parameters."""
        return _conv_from_float(cls, torch.nn.Conv2d, conv, config)

    def extra_repr(self) -> str:
        return super().extra_repr() + _clamp_repr(self.clamp_min, self.clamp_max)

    def forward(self, input: Tensor) -> Tensor:
        y = self._conv_forward(self.input_fake_quant(input), self.weight_fake_quant(self.weight), self.bias)
        return clamp(y, self.clamp_min, self.clamp_max)


class QATConv1d(torch.nn.Conv1d):
    """``nn.Conv1d`` for QAT, as :class:`QATConv2d`; :func:`q8.convert` turns it into a ``q8.nn.Int8Conv1d``."""

    clamp_min: Optional[float]
    clamp_max: Optional[float]

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", config: Optional[QConfig] = None,
                 device=None, dtype=None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device=device, dtype=dtype)
        _QATConvNd._qat_init(self, out_channels, config, device)

    @classmethod
    def from_float(cls, conv: torch.nn.Conv1d, config: Optional[QConfig] = None) -> "QATConv1d":
        """A ``QATConv1d`` that **shares** ``conv``'s weight and bias parameters."""
        return _conv_from_float(cls, torch.nn.Conv1d, conv, config)

    def extra_repr(self) -> str:
        return super().extra_repr() + _clamp_repr(self.clamp_min, self.clamp_max)

    def forward(self, input: Tensor) -> Tensor:
        y = self._conv_forward(self.input_fake_quant(input), self.weight_fake_quant(self.weight), self.bias)
        return clamp(y, self.clamp_min, self.clamp_max)


def _conv_from_float(cls, float_type, conv, config):
    if not isinstance(conv, float_type):
        raise TypeError(f"{cls.__name__}.from_float: expected a torch.nn.{float_type.__name__}, got "
                        f"{type(conv).__name__}")
    config = _config(config)
    qat = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
              conv.groups, conv.bias is not None, conv.padding_mode, config, device="meta")
    return _around(qat, conv, conv.out_channels, config)


def _clamp_repr(clamp_min, clamp_max) -> str:
    if clamp_min is None and clamp_max is None:
        return ""
    return f", clamp_min={clamp_min}, clamp_max={clamp_max}"


