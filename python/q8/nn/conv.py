"""``Int8Conv2d`` / ``Int8Conv1d``: convolutions with int8 weights over ``q8.conv2d``.

Modes (``activation``):

* ``"dynamic"``: the float input is quantized per sample to uint8 at run time
  (min/max of the sample), the convolution accumulates exactly in integers
  (``torch.ops.q8.conv2d``), and the float epilogue applies the scales and the bias;
* ``"static"``: the input is quantized with the calibrated ``input_scale`` /
  ``input_zero_point`` (uint8 range [0, 255]); the layer also takes uint8 codes directly
  (e.g. from a previous layer that writes uint8, see :func:`q8.lower`), or a
  ``torch.quint8`` tensor whose qparams equal the layer's;
* ``"weight_only"``: the weight is dequantized (``weight_int8 * weight_scale``) and
  ``F.conv2d`` runs in the input's dtype (the pre-int8-kernel behaviour: a size, not a
  speed, optimization).

Epilogue (static / dynamic, in this order, float32): ``+ bias``, ``+ residual`` (a float
tensor, or uint8 codes dequantized with ``residual_scale`` / ``residual_zero_point``),
``clamp_min`` / ``clamp_max`` (a fused ReLU is ``(0, None)``, ReLU6 ``(0, 6)``), and, when
``output_scale`` / ``output_zero_point`` are set, requantization to uint8 codes
(channels_last). Otherwise the output is float32 (the input's dtype for fp16 / bf16
input), channels_last.

Two forms of the weight live on the module, as for :class:`q8.nn.Int8Linear`: the
canonical buffers (``weight_int8`` int8 ``[out, in / groups, kh, kw]`` — ``[out, in /
groups, k]`` for ``Int8Conv1d`` —, ``weight_scale`` float32 ``[out]``, ``bias`` float32
``[out]`` or None, and the optional 0-dim qparams ``input_scale`` / ``input_zero_point``,
``output_scale`` / ``output_zero_point``, ``residual_scale`` / ``residual_zero_point``,
float32 / int32), which the state_dict, pickle, deepcopy and ``torch.jit.save`` store;
and ``packed_weight`` (``q8.pack_conv_weight``), a plain tensor attribute (never saved;
lifted as a constant by ``torch.export``, as ``Int8Linear._packed``, see docs/export.md), rebuilt by
:meth:`repack` on construction, on assignment of ``weight_int8``, on ``load_state_dict``,
on ``.to()`` / ``_apply``, on unpickling and on TorchScript loading. The state_dict
carries ``_q8_format`` (version :data:`CONV_FORMAT_VERSION`); loading checks the version,
the dtypes and the shapes before copying anything. Optional qparams present in the
state_dict but absent from the layer are adopted (so a lowered layer's
``output_scale`` loads into a fresh layer); qparams the layer has but the state_dict
lacks are reported as missing keys.

Padding: ``padding="same"`` / ``"valid"`` are turned into explicit paddings; an
asymmetric ``"same"`` (even kernel) and ``padding_mode`` other than ``"zeros"`` pad the
input with ``F.pad`` first. For uint8 input this is exact too (padding commutes with an
elementwise quantization; zero padding of uint8 codes uses the input zero point).
"""
import copyreg
from typing import Dict, Final, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CONV_FORMAT_VERSION", "Int8Conv1d", "Int8Conv2d"]

#: Version of the canonical state_dict / TorchScript form of ``Int8Conv2d`` / ``Int8Conv1d``.
#: Version 1 was the float-computing layer before ``q8.conv2d`` (no version key).
CONV_FORMAT_VERSION = 2
_FORMAT_KEY = "_q8_format"
_ACTIVATIONS = ("dynamic", "static", "weight_only")
_FLT_MIN = torch.finfo(torch.float32).tiny
_QPARAM_PAIRS = (("input_scale", "input_zero_point"), ("output_scale", "output_zero_point"),
                 ("residual_scale", "residual_zero_point"))


def _pair(v, name="value") -> Tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"q8.nn.Int8Conv2d: {name} must have 2 values, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _check_activation(activation, where):
    if activation not in _ACTIVATIONS:
        raise ValueError(f"{where}: activation must be one of {', '.join(map(repr, _ACTIVATIONS))}, "
                         f"got {activation!r}")


def _scale_value(value, name, where, device) -> Tensor:
    t = value.detach() if isinstance(value, Tensor) else torch.as_tensor(value)
    if t.numel() != 1:
        raise ValueError(f"{where}: {name} must have one element, got shape {list(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{where}: {name} must be a finite positive float, got dtype {t.dtype}")
    v = float(t)
    if not (v >= _FLT_MIN and v != float("inf")):
        raise ValueError(f"{where}: {name} must be a finite positive float (at least {_FLT_MIN}), got {v}")
    return t.reshape(()).to(device=device, dtype=torch.float32).clone()


def _zero_point_value(value, name, where, device) -> Tensor:
    t = value.detach() if isinstance(value, Tensor) else torch.as_tensor(value)
    if t.numel() != 1:
        raise ValueError(f"{where}: {name} must have one element, got shape {list(t.shape)}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{where}: {name} must be an integer in [0, 255], got dtype {t.dtype}")
    v = int(t)
    if not 0 <= v <= 255:
        raise ValueError(f"{where}: {name} must be an integer in [0, 255] (uint8 activations), got {v}")
    return t.reshape(()).to(device=device, dtype=torch.int32).clone()


class Int8Conv2d(torch.nn.Module):
    """A ``torch.nn.Conv2d`` with int8 weights computed by ``torch.ops.q8.conv2d`` (see the module doc).

    The arguments are ``torch.nn.Conv2d``'s (``padding`` may be ``"same"`` / ``"valid"``,
    ``padding_mode`` any of its modes) plus ``activation`` (``"dynamic"``, ``"static"``,
    ``"weight_only"``; ``static_input=True`` is ``"static"``). A new layer has zero weights,
    unit scales and, when static, ``input_scale = 1`` / ``input_zero_point = 0``: fill it
    with :meth:`from_float`, ``load_state_dict``, or by assigning the buffers.

    ``forward(x, residual=None)``: ``x`` float (any mode) or uint8 codes (static only);
    ``residual`` (static / dynamic: added in the epilogue before the clamp) has the output's
    shape, float, or uint8 with ``residual_scale`` / ``residual_zero_point`` set.
    """

    _format_version: Final[int] = CONV_FORMAT_VERSION
    _one_d: Final[bool] = False
    in_channels: int
    out_channels: int
    kernel_size: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    dilation: Tuple[int, int]
    groups: int
    padding_mode: str
    activation: str
    clamp_min: Optional[float]
    clamp_max: Optional[float]
    padding_str: str
    _pre_pad: List[int]
    _pre_pad_mode: str
    weight_int8: Tensor
    weight_scale: Tensor
    packed_weight: Tensor

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", activation: str = "dynamic",
                 static_input: bool = False, device=None) -> None:
        super().__init__()
        if static_input:
            if activation not in ("dynamic", "static"):
                raise ValueError(f"{type(self).__name__}: static_input=True is activation='static', "
                                 f"got activation={activation!r}")
            activation = "static"
        _check_activation(activation, type(self).__name__)
        self._init_config(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                          padding_mode)
        self.activation = activation
        self.clamp_min = None
        self.clamp_max = None
        shape = self._weight_shape()
        self.register_buffer("weight_int8", torch.zeros(shape, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(self.out_channels, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(self.out_channels, dtype=torch.float32, device=device)
                             if bias else None)
        static = activation == "static"
        self.register_buffer("input_scale", torch.ones((), dtype=torch.float32, device=device) if static else None)
        self.register_buffer("input_zero_point",
                             torch.zeros((), dtype=torch.int32, device=device) if static else None)
        self.register_buffer("output_scale", None)
        self.register_buffer("output_zero_point", None)
        self.register_buffer("residual_scale", None)
        self.register_buffer("residual_zero_point", None)
        self.packed_weight = torch.empty(0, dtype=torch.int8, device=device)
        self.repack()

    # ------------------------------------------------------------------ configuration

    def _init_config(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                     padding_mode):
        # nn.Conv2d validates the configuration; built on the meta device (no memory).
        ref = torch.nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                              padding_mode, device="meta")
        self._adopt_config(ref, _pair(ref.kernel_size), _pair(ref.stride), _pair(ref.dilation), ref.padding)

    def _adopt_config(self, ref, kernel_size, stride, dilation, padding):
        self.in_channels = int(ref.in_channels)
        self.out_channels = int(ref.out_channels)
        self.kernel_size = kernel_size
        self.stride = stride
        self.dilation = dilation
        self.groups = int(ref.groups)
        self.padding_mode = ref.padding_mode
        self.padding_str = padding if isinstance(padding, str) else ""
        # Explicit (left, right, top, bottom) padding of the 2-D problem.
        if isinstance(padding, str):
            if padding == "valid":
                ph = pw = (0, 0)
            else:  # "same" (nn.Conv2d puts the odd extra element on the right / bottom)
                th = dilation[0] * (kernel_size[0] - 1)
                tw = dilation[1] * (kernel_size[1] - 1)
                ph = (th // 2, th - th // 2)
                pw = (tw // 2, tw - tw // 2)
        else:
            p = _pair(padding) if not self._one_d else (0, int(padding[0] if isinstance(padding, (tuple, list))
                                                               else padding))
            ph = (p[0], p[0])
            pw = (p[1], p[1])
        if self.padding_mode == "zeros" and ph[0] == ph[1] and pw[0] == pw[1]:
            self.padding = (ph[0], pw[0])
            self._pre_pad = []
        else:
            self.padding = (0, 0)
            self._pre_pad = [pw[0], pw[1], ph[0], ph[1]]
        self._pre_pad_mode = "constant" if self.padding_mode == "zeros" else self.padding_mode

    def _weight_shape(self) -> Tuple[int, ...]:
        return (self.out_channels, self.in_channels // self.groups) + tuple(self.kernel_size)

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        # Converters assign the canonical buffers: keep the packed form in step.
        if name == "weight_int8" and "packed_weight" in self.__dict__:
            self.repack()

    def repack(self) -> None:
        """Rebuild ``packed_weight`` from ``weight_int8`` (after changing it in place)."""
        w = self.weight_int8
        if w.dim() == 3:
            w = w.unsqueeze(2)
        self.packed_weight = torch.ops.q8.pack_conv_weight(w.contiguous(), self.groups)

    # ------------------------------------------------------------------ construction from float

    @classmethod
    def from_float(cls, conv, activation: str = "dynamic", input_scale=None, input_zero_point=None,
                   weight_qparams: Optional[Tuple[Tensor, Tensor]] = None):
        """An int8 layer computing ``conv`` (not changed), on ``conv``'s device.

        The weight is quantized per output channel with ``weight_qparams`` (a ``(scale,
        zero_point)`` pair with zero points 0, e.g. a QAT layer's) or by
        :func:`q8.quantize_weight` (absmax / 127). ``activation="static"`` needs
        ``input_scale`` (positive float) and ``input_zero_point`` (integer in [0, 255]).
        """
        name = cls.__name__
        float_type = torch.nn.Conv1d if cls._one_d else torch.nn.Conv2d
        if not isinstance(conv, float_type):
            raise TypeError(f"{name}.from_float: expected a torch.nn.{float_type.__name__}, "
                            f"got {type(conv).__name__}")
        _check_activation(activation, f"{name}.from_float")
        if (input_scale is None) != (input_zero_point is None):
            raise ValueError(f"{name}.from_float: give both input_scale and input_zero_point, or neither")
        if activation == "static" and input_scale is None:
            raise ValueError(f"{name}.from_float: activation='static' needs the calibrated input_scale and "
                             "input_zero_point (e.g. q8.choose_qparams(calibration_input, 0, 255))")
        if activation != "static" and input_scale is not None:
            raise ValueError(f"{name}.from_float: input_scale and input_zero_point are only used with "
                             f"activation='static', got activation={activation!r}")
        weight = conv.weight.detach().to(torch.float32)
        device = weight.device
        module = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                     conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode, activation=activation,
                     device=device)
        if weight_qparams is None:
            codes, scale = torch.ops.q8.quantize_weight(weight.reshape(weight.size(0), -1))
            codes = codes.reshape(weight.shape)
        else:
            scale, zero_point = (t.detach() for t in weight_qparams)
            scale = scale.to(device=device, dtype=torch.float32).reshape(-1)
            zero_point = zero_point.to(device=device).reshape(-1)
            if scale.numel() != weight.size(0) or zero_point.numel() != weight.size(0):
                raise ValueError(f"{name}.from_float: weight_qparams must have {weight.size(0)} elements "
                                 f"(one per output channel), got {scale.numel()} and {zero_point.numel()}")
            if bool((zero_point != 0).any()):
                raise ValueError(f"{name}.from_float: weight zero points must be 0 (symmetric weights)")
            codes = torch.ops.q8.quantize(weight, scale, zero_point.to(torch.int32), 0, -127, 127, torch.int8)
        module.weight_scale = scale.to(torch.float32).contiguous()
        if conv.bias is not None:
            module.bias = conv.bias.detach().to(torch.float32).clone()
        if input_scale is not None:
            module.input_scale = _scale_value(input_scale, "input_scale", f"{name}.from_float", device)
            module.input_zero_point = _zero_point_value(input_zero_point, "input_zero_point",
                                                        f"{name}.from_float", device)
        module.weight_int8 = codes.contiguous()  # repacks
        module.train(conv.training)
        return module

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The float weight the layer computes with: ``weight_int8 * weight_scale`` per output channel."""
        scale = self.weight_scale.reshape([-1] + [1] * (self.weight_int8.dim() - 1))
        return (self.weight_int8.to(torch.float32) * scale).to(dtype)

    # ------------------------------------------------------------------ forward

    @torch.jit.unused
    def _from_quantized(self, x: Tensor) -> Tensor:
        # Eager only: a torch.quint8 tensor is accepted when its qparams are the layer's.
        if x.dtype != torch.quint8:
            raise TypeError(f"q8.nn.{type(self).__name__}: a quantized input must be torch.quint8, got {x.dtype}")
        if x.qscheme() not in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            raise ValueError(f"q8.nn.{type(self).__name__}: a quantized input must be quantized per tensor, "
                             f"got {x.qscheme()}")
        s, z = self.input_scale, self.input_zero_point
        if s is None or z is None:
            raise ValueError(f"q8.nn.{type(self).__name__}: a torch.quint8 input needs a layer with static input "
                             f"qparams (activation='static'), this one has activation={self.activation!r}")
        xs = torch.tensor(x.q_scale(), dtype=torch.float32)
        if float(xs) != float(s) or int(x.q_zero_point()) != int(z):
            raise ValueError(f"q8.nn.{type(self).__name__}: the quantized input's scale and zero point "
                             f"({x.q_scale()}, {x.q_zero_point()}) do not match the layer's input qparams "
                             f"({float(s)}, {int(z)}); requantize it (torch.quantize_per_tensor(x.dequantize(), "
                             f"{float(s)}, {int(z)}, torch.quint8)) or pass float input")
        return x.int_repr()

    def forward(self, x: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        if not torch.jit.is_scripting():
            if x.is_quantized:
                x = self._from_quantized(x)
        if self._one_d:
            x = x.unsqueeze(2)
            if residual is not None:
                residual = residual.unsqueeze(2)
        if torch.jit.is_scripting():
            y = self._forward2d(x, residual)
        else:
            y = self._eager_forward2d(x, residual)
        if self._one_d:
            y = y.squeeze(2)
        return y

    def _forward2d(self, x: Tensor, residual: Optional[Tensor]) -> Tensor:
        return self._conv2d(x, residual, self.weight_scale, self.bias, self.input_scale, self.input_zero_point,
                            self.residual_scale, self.residual_zero_point, self.output_scale, self.output_zero_point)

    @torch.jit.unused
    def _eager_forward2d(self, x: Tensor, residual: Optional[Tensor]) -> Tensor:
        # _forward2d with the buffers read from self._buffers: nn.Module.__getattr__ costs about
        # 0.6 us per buffer, which made the layer's Python about 7 us a call (as much as a small
        # convolution). A buffer replaced by a parameter (not in _buffers) takes the general path.
        b = self._buffers
        try:
            args = (b["weight_scale"], b["bias"], b["input_scale"], b["input_zero_point"], b["residual_scale"],
                    b["residual_zero_point"], b["output_scale"], b["output_zero_point"])
        except KeyError:
            return self._forward2d(x, residual)
        if residual is None:
            return self._conv2d(x, residual, *args)
        # The residual's shape is checked (~2 us of Python, 2 % of a small model) only when the
        # op refuses the call: with the check, a residual of another shape then takes _conv2d's
        # unfused path, and any other error is raised again.
        try:
            return self._conv2d(x, residual, *args, check_residual=False)
        except RuntimeError:
            return self._conv2d(x, residual, *args)

    def _conv2d(self, x: Tensor, residual: Optional[Tensor], weight_scale: Tensor, bias: Optional[Tensor],
                input_scale: Optional[Tensor], input_zero_point: Optional[Tensor], residual_scale: Optional[Tensor],
                residual_zero_point: Optional[Tensor], output_scale: Optional[Tensor],
                output_zero_point: Optional[Tensor], check_residual: bool = True) -> Tensor:
        name = "q8.nn.Int8Conv1d" if self._one_d else "q8.nn.Int8Conv2d"
        if x.dtype == torch.uint8:
            if input_scale is None or input_zero_point is None:
                raise ValueError(name + ": uint8 input holds codes of unknown qparams: it needs a layer with "
                                 "static input qparams (activation='static'), this one has activation='"
                                 + self.activation + "'")
        if len(self._pre_pad) > 0:
            if x.dtype == torch.uint8 and self._pre_pad_mode == "constant":
                assert input_zero_point is not None
                x = F.pad(x, self._pre_pad, mode="constant", value=float(int(input_zero_point)))
            elif self._pre_pad_mode == "constant":
                x = F.pad(x, self._pre_pad, mode="constant", value=0.0)
            else:
                x = F.pad(x, self._pre_pad, mode=self._pre_pad_mode)
        if self.activation == "weight_only":
            return self._weight_only(x, residual)
        if check_residual and residual is not None and not self._residual_fits(x, residual):
            # A residual of another shape (q8.lower fused ``conv(x) + t`` where t broadcasts, e.g.
            # a per-sample mean): the op takes only the output's shape, so the add, the clamp and
            # the requantization run after it, as eager's ops would.
            y = torch.ops.q8.conv2d(x, self.packed_weight, weight_scale, bias, self.kernel_size, self.stride,
                                    self.padding, self.dilation, self.groups, self.activation, input_scale,
                                    input_zero_point, None, None, None, None, None, None, None)
            ys, rs = y.shape, residual.shape
            ok = len(rs) <= len(ys)
            for i in range(min(len(rs), len(ys))):
                ok = ok and (rs[len(rs) - 1 - i] == 1 or rs[len(rs) - 1 - i] == ys[len(ys) - 1 - i])
            if not ok:
                raise ValueError(name + ": residual must have the output's shape " + str(list(ys))
                                 + " or broadcast to it, got " + str(list(rs)))
            return self._epilogue_after(y, residual)
        return torch.ops.q8.conv2d(x, self.packed_weight, weight_scale, bias, self.kernel_size, self.stride,
                                   self.padding, self.dilation, self.groups, self.activation, input_scale,
                                   input_zero_point, residual, residual_scale, residual_zero_point, self.clamp_min,
                                   self.clamp_max, output_scale, output_zero_point)

    @torch.jit.unused
    def _reference_forward(self, x: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        # Float formulation (for graph exporters without q8.conv2d, e.g. ONNX QDQ): a static
        # layer fake-quantizes its input with its qparams, then the weight-only computation.
        # Equal to forward up to float rounding (float sums instead of exact integer ones).
        s, z = self.input_scale, self.input_zero_point
        if self._one_d:
            x = x.unsqueeze(2)
            residual = None if residual is None else residual.unsqueeze(2)
        if self._pre_pad:
            x = F.pad(x, self._pre_pad, mode=self._pre_pad_mode) if self._pre_pad_mode != "constant" else \
                F.pad(x, self._pre_pad, value=float(int(z)) if x.dtype == torch.uint8 else 0.0)
        if s is not None and z is not None and x.dtype != torch.uint8:
            x = torch.ops.q8.fake_quantize_per_tensor(x, s, z, 0, 255)
        y = self._weight_only(x, residual)
        return y.squeeze(2) if self._one_d else y

    def _residual_fits(self, x: Tensor, residual: Tensor) -> bool:
        """Whether residual has the conv output's shape [N, OC, OH, OW] (x: the op's 4-D input)."""
        if residual.dim() != 4 or x.dim() != 4:
            return False
        oh = (x.size(2) + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) // self.stride[0] + 1
        ow = (x.size(3) + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) // self.stride[1] + 1
        return residual.size(0) == x.size(0) and residual.size(1) == self.out_channels and \
            residual.size(2) == oh and residual.size(3) == ow

    def _weight_only(self, x: Tensor, residual: Optional[Tensor]) -> Tensor:
        if x.dtype == torch.uint8:
            s = self.input_scale
            z = self.input_zero_point
            assert s is not None and z is not None
            x = (x.to(torch.int32) - z).to(torch.float32) * s
        w = self.dequantized_weight(torch.float32)
        if w.dim() == 3:
            w = w.unsqueeze(2)
        w = w.to(x.dtype)
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
        y = F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)
        return self._epilogue_after(y, residual)

    def _epilogue_after(self, y: Tensor, residual: Optional[Tensor]) -> Tensor:
        # The epilogue's steps after bias, on a float conv output y: + residual (broadcast as
        # eager's add), clamp, requantization to uint8 codes, in the op's float32 formulas.
        if residual is not None:
            if residual.dtype == torch.uint8:
                rs = self.residual_scale
                rz = self.residual_zero_point
                assert rs is not None and rz is not None, "q8.nn.Int8Conv2d: a uint8 residual needs residual_scale"
                residual = (residual.to(torch.int32) - rz).to(torch.float32) * rs
            y = y + residual.to(y.dtype)
        lo = self.clamp_min
        hi = self.clamp_max
        # torch.clamp keeps NaN, as the kernel's epilogue (and exports as one ONNX Clip, with
        # no tensor-sized constant).
        if lo is not None:
            y = torch.clamp(y, min=lo)
        if hi is not None:
            y = torch.clamp(y, max=hi)
        os_ = self.output_scale
        oz = self.output_zero_point
        if os_ is not None and oz is not None:
            q = torch.round(y.float() * (1.0 / os_)) + oz
            q = torch.where(torch.isnan(q), oz.to(q.dtype).expand_as(q), q)
            y = q.clamp(0, 255).to(torch.uint8)
        return y

    def extra_repr(self) -> str:
        if self._one_d:
            k, s, d = self.kernel_size[1], self.stride[1], self.dilation[1]
            p = self.padding_str if self.padding_str else (self._pre_pad[0] if self._pre_pad else self.padding[1])
        else:
            k, s, d = self.kernel_size, self.stride, self.dilation
            p = self.padding_str if self.padding_str else (
                (self._pre_pad[2], self._pre_pad[0]) if self._pre_pad else self.padding)
        r = (f"{self.in_channels}, {self.out_channels}, kernel_size={k}, stride={s}, padding={p!r}")
        if d not in ((1, 1), 1):
            r += f", dilation={d}"
        if self.groups != 1:
            r += f", groups={self.groups}"
        if self.padding_mode != "zeros":
            r += f", padding_mode={self.padding_mode!r}"
        if self.bias is None:
            r += ", bias=False"
        r += f", activation={self.activation!r}"
        if self.clamp_min is not None or self.clamp_max is not None:
            r += f", clamp=({self.clamp_min}, {self.clamp_max})"
        if self.residual_scale is not None:
            r += ", uint8_residual"
        if self.output_scale is not None:
            r += f", output=uint8(scale={float(self.output_scale):.6g}, zero_point={int(self.output_zero_point)})"
        return r

    # ------------------------------------------------------------------ devices and dtypes

    def _apply(self, fn, recurse=True):
        def keep_dtype(t):
            out = fn(t)
            if isinstance(out, Tensor) and out.dtype != t.dtype:
                out = t.to(device=out.device)
            return out

        super()._apply(keep_dtype, recurse)
        self.repack()
        return self

    # ------------------------------------------------------------------ state_dict

    def _canonical_specs(self) -> Dict[str, Tuple[torch.dtype, Tuple[int, ...]]]:
        specs = {"weight_int8": (torch.int8, self._weight_shape()),
                 "weight_scale": (torch.float32, (self.out_channels,))}
        if self.bias is not None:
            specs["bias"] = (torch.float32, (self.out_channels,))
        for s, z in _QPARAM_PAIRS:
            specs[s] = (torch.float32, ())
            specs[z] = (torch.int32, ())
        return specs

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + _FORMAT_KEY] = torch.tensor(CONV_FORMAT_VERSION, dtype=torch.int64)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        where = f"{type(self).__name__}({self.extra_repr()})"
        errors = []
        version_key = prefix + _FORMAT_KEY
        version = state_dict.pop(version_key, None)
        if version is None:
            missing_keys.append(version_key)
        else:
            found = version.reshape(-1).tolist() if isinstance(version, Tensor) else [version]
            if len(found) != 1 or found[0] != CONV_FORMAT_VERSION:
                errors.append(f"{version_key}: {where} reads state_dict format version {CONV_FORMAT_VERSION}, "
                              f"found {found[0] if len(found) == 1 else found} (a checkpoint written by another "
                              f"q8 release, or not by q8.nn.{type(self).__name__})")
        adopt = []
        for name, (dtype, shape) in self._canonical_specs().items():
            key = prefix + name
            if key not in state_dict:
                continue
            value = state_dict[key]
            if name != "bias" and getattr(self, name) is None:
                adopt.append(name)
            elif name == "bias" and self.bias is None:
                continue  # reported as unexpected by the usual strict check
            if not isinstance(value, Tensor):
                errors.append(f"{key}: expected a {dtype} tensor of shape {list(shape)}, found {type(value).__name__}")
            elif tuple(value.shape) != shape:
                errors.append(f"size mismatch for {key}: expected shape {list(shape)} for {where}, "
                              f"found shape {list(value.shape)} in the state_dict")
            elif value.dtype != dtype:
                errors.append(f"{key}: expected dtype {dtype}, found {value.dtype} in the state_dict "
                              f"({type(self).__name__} stores int8 weights, float32 scales and bias, int32 zero "
                              "points)")
        for s, z in _QPARAM_PAIRS:
            if (s in adopt) != (z in adopt):
                errors.append(f"{prefix}{s} / {prefix}{z}: the state_dict holds only one of the pair")
        if "input_scale" in adopt and self.activation == "dynamic":
            errors.append(f"{prefix}input_scale: the state_dict holds static input qparams, {where} is dynamic "
                          "(build it with activation='static')")
        if errors:
            error_msgs.extend(errors)
            return
        for name in adopt:
            self._buffers[name] = state_dict[prefix + name].detach().to(self.weight_scale.device).clone()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self.repack()

    # ------------------------------------------------------------------ serialization

    @torch.jit.export
    def __getstate__(self) -> Tuple[int, Tensor, Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor],
                                    Optional[Tensor], Optional[Tensor], Optional[Tensor], Optional[Tensor],
                                    Optional[float], Optional[float], str, bool, List[int], List[int], List[str]]:
        return (self._format_version, self.weight_int8, self.weight_scale, self.bias, self.input_scale,
                self.input_zero_point, self.output_scale, self.output_zero_point, self.residual_scale,
                self.residual_zero_point, self.clamp_min, self.clamp_max, self.activation, self.training,
                [self.in_channels, self.out_channels, self.groups, self.kernel_size[0], self.kernel_size[1],
                 self.stride[0], self.stride[1], self.padding[0], self.padding[1], self.dilation[0],
                 self.dilation[1]], self._pre_pad, [self.padding_mode, self._pre_pad_mode, self.padding_str])

    @torch.jit.export
    def __setstate__(self, state: Tuple[int, Tensor, Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor],
                                        Optional[Tensor], Optional[Tensor], Optional[Tensor], Optional[Tensor],
                                        Optional[float], Optional[float], str, bool, List[int], List[int], List[str]]) -> None:
        if not torch.jit.is_scripting():
            if isinstance(state, dict):
                torch.nn.Module.__setstate__(self, state)
                self.repack()
                return
        if state[0] != self._format_version:
            raise RuntimeError("q8.nn.Int8Conv2d: this q8 reads the TorchScript format version "
                               + str(self._format_version) + ", the file holds version " + str(state[0]))
        self.weight_int8 = state[1]
        self.weight_scale = state[2]
        if self.bias is not None:
            v = state[3]
            assert v is not None
            self.bias = v
        if self.input_scale is not None:
            v = state[4]
            assert v is not None
            self.input_scale = v
        if self.input_zero_point is not None:
            v = state[5]
            assert v is not None
            self.input_zero_point = v
        if self.output_scale is not None:
            v = state[6]
            assert v is not None
            self.output_scale = v
        if self.output_zero_point is not None:
            v = state[7]
            assert v is not None
            self.output_zero_point = v
        if self.residual_scale is not None:
            v = state[8]
            assert v is not None
            self.residual_scale = v
        if self.residual_zero_point is not None:
            v = state[9]
            assert v is not None
            self.residual_zero_point = v
        self.clamp_min = state[10]
        self.clamp_max = state[11]
        self.activation = state[12]
        self.training = state[13]
        c = state[14]
        self.in_channels = c[0]
        self.out_channels = c[1]
        self.groups = c[2]
        self.kernel_size = (c[3], c[4])
        self.stride = (c[5], c[6])
        self.padding = (c[7], c[8])
        self.dilation = (c[9], c[10])
        self._pre_pad = state[15]
        self.padding_mode = state[16][0]
        self._pre_pad_mode = state[16][1]
        self.padding_str = state[16][2]
        w = state[1]
        if w.dim() == 3:
            w = w.unsqueeze(2)
        self.packed_weight = torch.ops.q8.pack_conv_weight(w.contiguous(), self.groups)

    def __reduce_ex__(self, protocol):
        state = self.__dict__.copy()
        state.pop("_compiled_call_impl", None)
        state.pop("packed_weight", None)
        return (copyreg.__newobj__, (type(self),), state)


class Int8Conv1d(Int8Conv2d):
    """A ``torch.nn.Conv1d`` with int8 weights: ``q8.conv2d`` over ``[N, C, 1, L]`` (see :class:`Int8Conv2d`).

    ``weight_int8`` is ``[out, in / groups, k]``; input ``[N, C, L]`` float or uint8 codes.
    """

    _one_d: Final[bool] = True

    def _init_config(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                     padding_mode):
        ref = torch.nn.Conv1d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                              padding_mode, device="meta")
        self._adopt_config(ref, (1, int(ref.kernel_size[0])), (1, int(ref.stride[0])), (1, int(ref.dilation[0])),
                           ref.padding)

    def _weight_shape(self) -> Tuple[int, ...]:
        return (self.out_channels, self.in_channels // self.groups, self.kernel_size[1])


# TorchScript reads the attribute types from the class's own annotations.
Int8Conv1d.__annotations__ = {**Int8Conv2d.__annotations__, **Int8Conv1d.__annotations__}
