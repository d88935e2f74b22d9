"""Typed wrappers of the ``torch.ops.q8`` operators.

Each function is a thin call of the C++ operator: the same schema, kernels and
autograd serve Python, TorchScript (``torch.ops.q8.*`` inside scripted code) and
C++ (``#include <q8/q8.h>``).

Semantics shared by the quantization ops (those of
``torch.fake_quantize_per_tensor_affine`` / ``torch.fake_quantize_per_channel_affine``)::

    q   = clamp(nearbyint(x * (1 / scale)) + zero_point, quant_min, quant_max)   # half to even
    out = (q - zero_point) * scale

Inputs are float32, float16 or bfloat16; the math is float32 and the result has
the input's dtype. ``scale`` is float32, finite and at least the smallest normal
float32 (so that 1 / scale is finite). ``zero_point`` is int32,
int64 or float32; a float zero point is rounded half to even and clamped to the
range. Any ``quant_min < quant_max`` inside [-32768, 65535] works.

Non-finite values: NaN stays NaN in fake-quant output (with a zero input
gradient); +-Inf clamps to quant_max / quant_min like any large value.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "fake_quantize_per_tensor",
    "fake_quantize_per_channel",
    "choose_qparams",
    "quantize",
    "dequantize",
    "cpu_isa",
    "set_cpu_isa",
]


def fake_quantize_per_tensor(
    input: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int
) -> Tensor:
    """Fake-quantize ``input`` with one ``scale`` / ``zero_point`` (one-element tensors).

    Gradients: ``input`` gets the straight-through gradient (the incoming gradient
    inside the clamp range, 0 outside). When ``scale`` or a float ``zero_point``
    requires grad, they get the learnable-scale (LSQ) gradients of
    ``torch._fake_quantize_learnable_per_tensor_affine`` with ``grad_factor=1``.
    """
    return torch.ops.q8.fake_quantize_per_tensor(input, scale, zero_point, quant_min, quant_max)


def fake_quantize_per_channel(
    input: Tensor, scale: Tensor, zero_point: Tensor, axis: int, quant_min: int, quant_max: int
) -> Tensor:
    """Fake-quantize ``input`` with one ``scale`` / ``zero_point`` per slice along ``axis``.

    ``scale`` and ``zero_point`` are 1-D with ``input.size(axis)`` elements; ``axis``
    may be negative. Gradients as in :func:`fake_quantize_per_tensor`, summed per channel.
    """
    return torch.ops.q8.fake_quantize_per_channel(input, scale, zero_point, axis, quant_min, quant_max)


def choose_qparams(
    input: Tensor,
    quant_min: int,
    quant_max: int,
    symmetric: bool = False,
    axis: Optional[int] = None,
) -> Tuple[Tensor, Tensor]:
    """Min/max calibration: returns ``(scale float32, zero_point int32)``.

    Per tensor (``axis=None``) both are 0-dim; per channel they have
    ``input.size(axis)`` elements. The range always includes 0, NaN and +-Inf are
    ignored, and the scale is at least float32 eps (a constant or all-zero input
    still gives a valid scale). ``symmetric=True`` gives zero_point 0 for a signed
    range (``quant_min < 0``) and ``(quant_min + quant_max + 1) // 2`` otherwise.
    """
    return torch.ops.q8.choose_qparams(input, quant_min, quant_max, symmetric, axis)


def quantize(
    input: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    axis: Optional[int],
    quant_min: int,
    quant_max: int,
    dtype: torch.dtype,
) -> Tensor:
    """Quantize to ``dtype`` (torch.int8, torch.uint8 or torch.int32); ``axis=None`` is per tensor.

    ``[quant_min, quant_max]`` must fit in ``dtype``. NaN maps to ``zero_point``
    (the code of 0.0). Not differentiable: use the fake-quantize ops to train.
    """
    return torch.ops.q8.quantize(input, scale, zero_point, axis, quant_min, quant_max, dtype)


def dequantize(
    input: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    axis: Optional[int] = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``(input - zero_point) * scale`` in float32, returned as ``dtype``; inverts :func:`quantize`."""
    return torch.ops.q8.dequantize(input, scale, zero_point, axis, dtype)


def cpu_isa() -> str:
    """The CPU kernel family in use: ``"avx512"``, ``"avx2"`` or ``"default"`` (portable)."""
    return torch.ops.q8._get_cpu_isa()


def set_cpu_isa(isa: str) -> str:
    """Force a CPU kernel family (one this CPU supports); returns the previous one.

    Every family gives bit-identical results. ``Q8_CPU_ISA=<name>`` in the
    environment does the same for a whole process.
    """
    return torch.ops.q8._set_cpu_isa(isa)
