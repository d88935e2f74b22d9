"""``Int8Conv2d``: a 2-D convolution that stores int8 weights and computes in float.

q8 has no int8 convolution kernel. ``Int8Conv2d`` keeps the weight as int8 codes
(per output channel, symmetric, codes in [-127, 127], as ``q8.quantize_weight``)
plus one float32 scale per output channel: the layer takes a quarter of the memory
and of the file of a float32 ``nn.Conv2d``. Each forward dequantizes the weight
(``weight_int8 * weight_scale``, a pass over the int8 weight) and calls ``F.conv2d`` in the
input's dtype. It is therefore a *size* optimization, not a speed one: expect the
latency of the float convolution plus the dequantization.

A layer converted from a calibrated or QAT model (:func:`q8.convert`) also holds
the input's qparams (``input_scale`` / ``input_zero_point``, uint8 range [0, 255])
and fake-quantizes its input with them, so it computes exactly what the
fake-quantized model computed. A layer from :func:`q8.quantize_dynamic` (or
:meth:`Int8Conv2d.from_float` without qparams) takes its input as it is.

state_dict: ``weight_int8`` (int8 ``[out, in / groups, kh, kw]``), ``weight_scale``
(float32 ``[out]``), ``bias`` (float32 ``[out]``, when present), ``input_scale`` /
``input_zero_point`` (0-dim float32 / int32, when present). Plain buffers: pickle,
``copy.deepcopy``, ``.to()`` and ``torch.jit.save`` / ``torch::jit::load`` need nothing
special. dtype conversions (``.half()``) leave the buffers as they are.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Int8Conv2d"]

_FLT_TINY = torch.finfo(torch.float32).tiny


def _pair(v) -> Tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"q8.nn.Int8Conv2d: expected 2 values, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


class Int8Conv2d(torch.nn.Module):
    """``F.conv2d(x, dequantize(weight_int8, weight_scale), bias, ...)`` with int8 weights (see the module doc).

    The arguments are ``torch.nn.Conv2d``'s (``padding`` may be ``"same"`` or
    ``"valid"``; ``padding_mode`` any of its modes). A new layer has zero weights
    and unit scales: fill it with :meth:`from_float` or ``load_state_dict``.
    """

    in_channels: int
    out_channels: int
    kernel_size: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    padding_str: str
    dilation: Tuple[int, int]
    groups: int
    padding_mode: str
    _reversed_padding_repeated_twice: List[int]

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", static_input: bool = False,
                 device=None) -> None:
        super().__init__()
        # nn.Conv2d validates the configuration (groups, padding strings, modes) and
        # computes the reversed padding; it is built on the meta device (no memory).
        ref = torch.nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                              padding_mode, device="meta")
        self.in_channels = ref.in_channels
        self.out_channels = ref.out_channels
        self.kernel_size = _pair(ref.kernel_size)
        self.stride = _pair(ref.stride)
        if isinstance(ref.padding, str):
            self.padding_str = ref.padding
            self.padding = (0, 0)
        else:
            self.padding_str = ""
            self.padding = _pair(ref.padding)
        self.dilation = _pair(ref.dilation)
        self.groups = ref.groups
        self.padding_mode = ref.padding_mode
        self._reversed_padding_repeated_twice = [int(v) for v in ref._reversed_padding_repeated_twice]
        shape = tuple(ref.weight.shape)
        self.register_buffer("weight_int8", torch.zeros(shape, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(shape[0], dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(shape[0], dtype=torch.float32, device=device) if bias else None)
        self.register_buffer("input_scale",
                             torch.ones((), dtype=torch.float32, device=device) if static_input else None)
        self.register_buffer("input_zero_point",
                             torch.zeros((), dtype=torch.int32, device=device) if static_input else None)

    @classmethod
    def from_float(cls, conv: torch.nn.Conv2d, input_scale: Optional[Tensor] = None,
                   input_zero_point: Optional[Tensor] = None, weight_qparams: Optional[Tuple[Tensor, Tensor]] = None
                   ) -> "Int8Conv2d":
        """An ``Int8Conv2d`` computing ``conv`` with int8 weights; ``conv`` is not changed.

        The weight is quantized per output channel with ``weight_qparams`` (a
        ``(scale, zero_point)`` pair with zero points 0, e.g. a QAT layer's learned
        ones) or, by default, with :func:`q8.quantize_weight` (absmax / 127).
        ``input_scale`` / ``input_zero_point`` (both or neither; a positive scale and
        an integer zero point in [0, 255]) make the layer fake-quantize its input.
        """
        if not isinstance(conv, torch.nn.Conv2d):
            raise TypeError(f"Int8Conv2d.from_float: expected a torch.nn.Conv2d, got {type(conv).__name__}")
        if (input_scale is None) != (input_zero_point is None):
            raise ValueError("Int8Conv2d.from_float: give both input_scale and input_zero_point, or neither")
        weight = conv.weight.detach().to(torch.float32)
        device = weight.device
        module = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                     conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
                     static_input=input_scale is not None, device=device)
        if weight_qparams is None:
            codes, scale = torch.ops.q8.quantize_weight(weight.reshape(weight.size(0), -1))
            codes = codes.reshape(weight.shape)
        else:
            scale, zero_point = (t.detach() for t in weight_qparams)
            scale = scale.to(device=device, dtype=torch.float32).reshape(-1)
            zero_point = zero_point.to(device=device).reshape(-1)
            if scale.numel() != weight.size(0) or zero_point.numel() != weight.size(0):
                raise ValueError(f"Int8Conv2d.from_float: weight_qparams must have {weight.size(0)} elements "
                                 f"(one per output channel), got {scale.numel()} and {zero_point.numel()}")
            if bool((zero_point != 0).any()):
                raise ValueError("Int8Conv2d.from_float: weight zero points must be 0 (symmetric weights)")
            codes = torch.ops.q8.quantize(weight, scale, zero_point.to(torch.int32), 0, -127, 127, torch.int8)
        module.weight_int8 = codes.contiguous()
        module.weight_scale = scale.to(torch.float32).contiguous()
        if conv.bias is not None:
            module.bias = conv.bias.detach().to(torch.float32).clone()
        if input_scale is not None:
            s = torch.as_tensor(input_scale).detach().reshape(())
            z = torch.as_tensor(input_zero_point).detach().reshape(())
            if not s.is_floating_point() or not (float(s) >= _FLT_TINY and float(s) != float("inf")):
                raise ValueError(f"Int8Conv2d.from_float: input_scale must be a finite positive float, got {s}")
            if z.is_floating_point() or z.dtype == torch.bool or not 0 <= int(z) <= 255:
                raise ValueError(f"Int8Conv2d.from_float: input_zero_point must be an integer in [0, 255], got {z}")
            module.input_scale = s.to(device=device, dtype=torch.float32).clone()
            module.input_zero_point = z.to(device=device, dtype=torch.int32).clone()
        module.train(conv.training)
        return module

    def _apply(self, fn, recurse=True):
        # Devices move; dtypes stay (int8 codes, float32 scales and bias, int32 zero point).
        def keep_dtype(t):
            out = fn(t)
            return out.to(t.dtype) if out.dtype != t.dtype else out

        return super()._apply(keep_dtype, recurse)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The float weight the layer computes with: ``weight_int8 * weight_scale`` per output channel."""
        # q8.dequantize with zero points 0, written in plain ops: (q - 0) * scale is q * scale
        # bit for bit, and AOTInductor cannot load q8::dequantize's defaulted dtype argument
        # (docs/export.md).
        scale = self.weight_scale.reshape(-1, 1, 1, 1)
        return (self.weight_int8.to(torch.float32) * scale).to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        input_scale = self.input_scale
        input_zero_point = self.input_zero_point
        if input_scale is not None and input_zero_point is not None:
            x = torch.ops.q8.fake_quantize_per_tensor(x, input_scale, input_zero_point, 0, 255)
        weight = self.dequantized_weight(x.dtype)
        bias = self.bias
        if bias is not None:
            bias = bias.to(x.dtype)
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, weight, bias, self.stride, (0, 0), self.dilation, self.groups)
        if self.padding_str != "":
            return F.conv2d(x, weight, bias, self.stride, self.padding_str, self.dilation, self.groups)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        padding = repr(self.padding_str) if self.padding_str else str(self.padding)
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={padding}")
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        if self.bias is None:
            s += ", bias=False"
        if self.input_scale is not None:
            s += ", static_input=True"
        return s
