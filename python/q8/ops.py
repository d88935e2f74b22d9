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
from typing import List, Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "fake_quantize_per_tensor",
    "fake_quantize_per_channel",
    "choose_qparams",
    "quantize",
    "dequantize",
    "quantize_weight",
    "pack_weight",
    "unpack_weight",
    "int8_mm",
    "linear",
    "observe_fake_quantize",
    "cpu_isa",
    "cpu_isas",
    "set_cpu_isa",
    "histogram_observe",
    "histogram_qparams",
    "embedding",
    "embedding_bag",
    "pack_conv_weight",
    "unpack_conv_weight",
    "conv2d",
    "max_pool2d",
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


def quantize_weight(weight: Tensor) -> Tuple[Tensor, Tensor]:
    """Quantize a float weight ``[N, K]`` to q8's canonical int8 form.

    Symmetric, one scale per output channel (row), codes in ``[-127, 127]``::

        weight_scale[n] = max(max_k |weight[n, k]| / 127, float32 eps)
        weight_int8[n]  = clamp(nearbyint(weight[n] * (1 / weight_scale[n])), -127, 127)

    which is ``quantize(w, *choose_qparams(w, -127, 127, True, 0), 0, -127, 127, torch.int8)``.
    -128 is left unused so that the range is symmetric (``-w`` quantizes to ``-q``).
    The weight must be finite. Returns ``(weight_int8 int8 [N, K], weight_scale float32 [N])``.
    """
    return torch.ops.q8.quantize_weight(weight)


def pack_weight(weight_int8: Tensor) -> Tensor:
    """Pack an int8 weight ``[N, K]`` into the layout of its device's int8 kernels.

    The result is a plain 1-D uint8 tensor: a self-describing header (format
    version, device layout, N, K, checksum) followed by the weights in the
    kernel's blocked layout and the per-row sums the kernels need. It is rebuilt
    from the canonical form, never saved: :func:`unpack_weight` inverts it exactly.
    """
    return torch.ops.q8.pack_weight(weight_int8)


def unpack_weight(packed_weight: Tensor, out_features: int, in_features: int) -> Tensor:
    """The canonical int8 weight ``[N, K]`` of a packed weight (exact; verifies the whole tensor).

    ``out_features`` (N) and ``in_features`` (K) must match the packed header: they
    give the output shape without reading data (torch.compile / torch.export).
    """
    return torch.ops.q8.unpack_weight(packed_weight, out_features, in_features)


def int8_mm(
    input: Tensor, packed_weight: Tensor, out_features: int, input_zero_point: Optional[Tensor] = None
) -> Tensor:
    """Exact integer GEMM: ``out[m, n] = sum_k (input[m, k] - zp[m]) * weight_int8[n, k]`` as int64.

    ``input`` is uint8 ``[M, K]``; ``out_features`` (N) must match the packed weight;
    ``input_zero_point`` (int32/int64, one element or
    ``[M]``, values in [0, 255]) defaults to 0. Exact for any K (the kernels sum
    int32 partial products in chunks that cannot overflow, then in int64).
    """
    return torch.ops.q8.int8_mm(input, packed_weight, out_features, input_zero_point)


def linear(
    input: Tensor,
    packed_weight: Tensor,
    weight_scale: Tensor,
    bias: Optional[Tensor] = None,
    activation: str = "dynamic",
    input_scale: Optional[Tensor] = None,
    input_zero_point: Optional[Tensor] = None,
    clamp_min: Optional[float] = None,
    clamp_max: Optional[float] = None,
) -> Tensor:
    """``clamp(input · (weight_int8 · diag(weight_scale))ᵀ + bias, clamp_min, clamp_max)`` with int8 weights.

    ``input`` is ``[..., K]`` float32, bfloat16 or float16; the result ``[..., N]``
    has its dtype. ``bias`` (``[N]``) is float32 or the input's dtype. Modes:

    * ``"dynamic"``: each row of ``input`` is quantized at run time to asymmetric
      uint8, its scale and zero point from the row's min/max (``choose_qparams(row,
      0, 255)``); uint8 x int8 products accumulate exactly in integers, and the
      dequantization and bias are fused into the kernel's epilogue.
    * ``"static"``: as dynamic, with one calibrated ``input_scale`` (float32) and
      ``input_zero_point`` (int, in [0, 255]) for the whole tensor.
    * ``"weight_only"``: ``input`` stays float; the int8 weights are converted to
      float32 inside the kernel.

    In the int8 modes, a row of ``input`` holding NaN or +-Inf gives a row of NaN.

    ``clamp_min`` / ``clamp_max`` fuse an activation into the epilogue (ReLU:
    ``clamp_min=0``; ReLU6: ``0, 6``; None leaves a side open): ``torch.clamp`` in
    float32 before the cast to the input's dtype, NaN kept. Its gradient is zero
    where the output sits on a bound, as ``relu`` / ``hardtanh``'s.
    """
    return torch.ops.q8.linear(input, packed_weight, weight_scale, bias, activation, input_scale, input_zero_point,
                               clamp_min, clamp_max)


def observe_fake_quantize(
    input: Tensor,
    observer_on: Tensor,
    fake_quant_on: Tensor,
    running_min: Tensor,
    running_max: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    averaging_constant: float,
    quant_min: int,
    quant_max: int,
    axis: Optional[int] = None,
    symmetric: bool = False,
) -> Tuple[Tensor, Tensor]:
    """One QAT step of a moving-average min/max observer fused with fake quantization.

    q8's counterpart of ``torch.fused_moving_avg_obs_fake_quant`` (the op of
    ``torch.ao.quantization.FusedMovingAvgObsFakeQuantize``). Returns
    ``(output, mask)`` and updates the four state tensors **in place**:

    * ``running_min`` / ``running_max``: float32, ``+inf`` / ``-inf`` before the
      first observation; ``scale``: float32; ``zero_point``: int32. Per tensor
      (``axis=None``) each has one element, per channel each is 1-D with
      ``input.size(axis)`` elements (any ``axis``, negative ones included).
    * ``observer_on`` / ``fake_quant_on``: one-element bool, integer or float
      tensors on ``input``'s device (non-zero is on), read on that device: a CUDA
      call never synchronizes with the host.

    When ``observer_on``: the min and max of the finite values of ``input`` (per
    channel; NaN and +-inf are ignored, a channel without a finite value keeps its
    state) become the running values the first time (a non-finite running value),
    and later ``running += averaging_constant * (current - running)`` (float32, as
    torch); then ``scale`` / ``zero_point`` are recomputed from
    ``[running_min, running_max]`` with :func:`choose_qparams`' formulas (the
    range extended to hold 0; ``symmetric`` as there).

    When ``fake_quant_on``: ``output`` is :func:`fake_quantize_per_tensor` /
    :func:`fake_quantize_per_channel` of ``input`` with the (new) ``scale`` /
    ``zero_point``, bit for bit, and ``mask`` its straight-through mask; otherwise
    ``output`` is a copy of ``input`` and ``mask`` is all true. ``output`` has
    ``input``'s dtype (float32, float16 or bfloat16) and layout.

    Gradient: ``input`` only, straight through (``grad * mask``). The state
    tensors get none and must not require grad (use buffers).

    Where it differs from torch's op: q8 recomputes ``scale`` / ``zero_point``
    when the *observer* runs (torch: when fake quantization runs, from the
    running values, and never when it is off), with q8's formulas (torch's
    ``ChooseQuantizationParams`` can differ in the last bit of the scale and by 1
    in the zero point, and its symmetric mode differs: a scale of
    ``max(-min / 128, max / 127)`` for [-128, 127] and an asymmetric zero point
    when the range does not straddle 0); non-finite inputs are ignored (torch lets
    them into the running values); any axis and float16 / bfloat16 inputs (torch:
    axis 0, float32). A stored scale / zero point that is invalid (set by hand,
    observer off) is an error on the CPU and gives NaN outputs on CUDA.
    ``averaging_constant`` must be in (0, 1].
    """
    return torch.ops.q8.observe_fake_quantize(
        input, observer_on, fake_quant_on, running_min, running_max, scale, zero_point, averaging_constant,
        quant_min, quant_max, axis, symmetric)


def cpu_isa() -> str:
    """The CPU kernel family in use: ``"avx512_vnni"``, ``"avx512"``, ``"avx_vnni"``, ``"avx2"`` or ``"default"``.

    ``default`` is the portable C++ path. The int8 GEMM uses 512-bit VNNI
    (``vpdpbusd``) under ``avx512_vnni``, 256-bit VNNI under ``avx_vnni``, exact
    int16 multiply-adds under ``avx512``/``avx2``, and plain C++ under ``default``.
    """
    return torch.ops.q8._get_cpu_isa()


def cpu_isas() -> List[str]:
    """Every CPU kernel family this CPU supports, best first (``set_cpu_isa`` accepts any of them)."""
    return torch.ops.q8._supported_cpu_isas()


def set_cpu_isa(isa: str) -> str:
    """Force a CPU kernel family (one this CPU supports); returns the previous one.

    Every family gives bit-identical results. ``Q8_CPU_ISA=<name>`` in the
    environment does the same for a whole process.
    """
    return torch.ops.q8._set_cpu_isa(isa)


def histogram_observe(
    input: Tensor,
    observer_on: Tensor,
    histogram: Tensor,
    hist_min: Tensor,
    hist_max: Tensor,
    input_range: Optional[Tensor] = None,
) -> None:
    """Add the finite values of ``input`` to a histogram observer's state, **in place**.

    State (buffers, all on ``input``'s device, must not require grad):

    * ``histogram``: contiguous 1-D float64 tensor of B >= 1 bins (the caller
      chooses B, e.g. 2048), zeros at the start;
    * ``hist_min`` / ``hist_max``: one-element float32 tensors, ``+inf`` / ``-inf``
      before the first observation (the histogram's content is then ignored).

    ``observer_on``: a one-element bool, integer or float tensor, read on the
    device (a CUDA call never synchronizes with the host); 0 leaves everything
    unchanged. ``input``: float32, float16 or bfloat16, any shape and strides.

    When on:

    1. The batch range is the min / max of the finite values of ``input`` (NaN
       and +-inf are ignored), or, when ``input_range`` is given (float32, one or
       two elements ``[lo, hi]``, one element ``v`` meaning ``[v, v]``), the
       min / max of its finite elements. Nothing finite: no change.
    2. The range becomes the batch range at the first observation, later the
       union of the current range and the batch range. When it grows, the old
       counts are re-binned into the new bins by overlap proportion (uniform
       density within a bin; the mass is preserved up to float64 rounding).
    3. Every finite value ``x`` adds 1 to bin
       ``clamp(floor((x - lo) * B / (hi - lo)), 0, B - 1)`` computed in float64
       (``torch.histc``'s formula: ``hi`` goes in the last bin; values outside an
       ``input_range`` clamp into the edge bins).

    A degenerate range ``lo == hi`` (a constant input) is a point mass at ``lo``
    stored in bin 0; when the range later grows, it moves whole into the bin of
    ``lo``.

    ``input_range`` is for distributed training: all-reduce the batch min / max
    (MIN / MAX) across ranks and pass them, so that every rank grows its range
    identically and the histograms can be summed (all-reduce SUM) at any time.
    With it, a rank whose batch is empty still grows its range.
    """
    torch.ops.q8.histogram_observe(input, observer_on, histogram, hist_min, hist_max, input_range)


def histogram_qparams(
    histogram: Tensor,
    hist_min: Tensor,
    hist_max: Tensor,
    percentile: float,
    quant_min: int,
    quant_max: int,
    symmetric: bool = False,
) -> Tuple[Tensor, Tensor]:
    """``(scale, zero_point)`` (0-dim float32 / int32) from a histogram observer's state.

    Computed on the histogram's device without a host synchronization, with
    :func:`choose_qparams`' formulas on a clipped range (extended to hold 0, as
    there). ``percentile`` ``p`` in (0, 100] is the percent of the mass kept; the
    density is uniform within each bin:

    * asymmetric: ``[lo, hi]`` with ``lo`` the quantile at ``(1 - p/100) / 2`` and
      ``hi`` the quantile at ``1 - (1 - p/100) / 2`` (searched from the right end,
      so both tails lose the same mass), linear inside the bin;
    * symmetric: ``[-a, a]`` with ``a`` the smallest float32 such that the mass of
      ``|x| <= a`` is at least ``p/100`` of the total (the exact quantile of ``|x|``
      rounded up to float32, by bisection);
    * ``p == 100``, a histogram without mass, or a degenerate range: the full
      ``[hist_min, hist_max]`` (``p == 100`` equals :func:`choose_qparams` on all
      the observed data when no ``input_range`` was used);
    * no observation yet: :func:`choose_qparams` of an empty input
      (``scale = float32 eps``, ``zero_point = quant_min`` asymmetric).
    """
    return torch.ops.q8.histogram_qparams(histogram, hist_min, hist_max, percentile, quant_min, quant_max, symmetric)


def embedding(
    weight_int8: Tensor, weight_scale: Tensor, indices: Tensor, dtype: Optional[torch.dtype] = None
) -> Tensor:
    """``F.embedding(indices, weight_int8 * weight_scale[:, None])`` without building the float table.

    The table is q8's canonical int8 form (:func:`quantize_weight` of the float table):
    ``weight_int8`` int8 ``[num_embeddings, embedding_dim]``, ``weight_scale`` float32
    ``[num_embeddings]``. Each row is dequantized as ``float(q) * scale`` in float32 and
    returned as ``dtype`` (float32 by default; float64, float16, bfloat16). ``indices``
    is int32 or int64 of any shape (0-dim too); the result has shape
    ``indices.shape + (embedding_dim,)``. An index outside ``[0, num_embeddings)`` is
    an error (on CUDA a device-side assert, as ``F.embedding``). There is no
    ``padding_idx``: ``F.embedding``'s changes only the gradient, and the table is frozen
    (a backward through the result raises).
    """
    return torch.ops.q8.embedding(weight_int8, weight_scale, indices, dtype)


def embedding_bag(
    weight_int8: Tensor,
    weight_scale: Tensor,
    indices: Tensor,
    offsets: Optional[Tensor] = None,
    mode: str = "sum",
    per_sample_weights: Optional[Tensor] = None,
    include_last_offset: bool = False,
    padding_idx: Optional[int] = None,
    dtype: Optional[torch.dtype] = None,
) -> Tensor:
    """``F.embedding_bag`` on the dequantized table (see :func:`embedding`), accumulated in float32.

    ``indices`` is 2-D ``[bags, n]`` (``offsets`` None) or 1-D with 1-D ``offsets`` (int32
    or int64; ``offsets[0] == 0``, non-decreasing, at most ``indices.numel()``); bag ``b``
    is ``indices[offsets[b]:offsets[b + 1]]``, the last one running to the end (or to
    ``offsets[-1]`` with ``include_last_offset``). ``mode`` is ``"sum"``, ``"mean"`` or
    ``"max"``; ``per_sample_weights`` (sum only, ``indices``' shape) multiply each row.
    Entries equal to ``padding_idx`` are left out (of the mean's count too) and an empty
    bag gives zeros. Returns ``[bags, embedding_dim]`` in ``dtype`` (float32 by default).
    """
    return torch.ops.q8.embedding_bag(weight_int8, weight_scale, indices, offsets, mode, per_sample_weights,
                                      include_last_offset, padding_idx, dtype)


def _pair(v) -> List[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(e) for e in v]


def pack_conv_weight(weight_int8: Tensor, groups: int = 1) -> Tensor:
    """Pack a canonical int8 conv weight ``[OC, C / groups, KH, KW]`` for its device's conv kernels.

    A plain 1-D uint8 tensor with a self-describing header (csrc/ops/conv_packed.h), rebuilt from the
    canonical form and never saved; :func:`unpack_conv_weight` inverts it exactly. On the CPU a depthwise
    weight (one input channel per group, ``OC == groups``) gets the depthwise layout, any other one a
    linear packed block per group over the channels-last im2col order.
    """
    return torch.ops.q8.pack_conv_weight(weight_int8, groups)


def unpack_conv_weight(packed_weight: Tensor, out_channels: int, in_channels_per_group: int, kernel_size,
                       groups: int = 1) -> Tensor:
    """The canonical int8 weight ``[OC, C / groups, KH, KW]`` of a packed conv weight (exact; verifies every byte)."""
    return torch.ops.q8.unpack_conv_weight(packed_weight, out_channels, in_channels_per_group, _pair(kernel_size),
                                           groups)


def conv2d(
    input: Tensor,
    packed_weight: Tensor,
    weight_scale: Tensor,
    bias: Optional[Tensor],
    kernel_size,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    activation: str = "dynamic",
    input_scale: Optional[Tensor] = None,
    input_zero_point: Optional[Tensor] = None,
    residual: Optional[Tensor] = None,
    residual_scale: Optional[Tensor] = None,
    residual_zero_point: Optional[Tensor] = None,
    clamp_min: Optional[float] = None,
    clamp_max: Optional[float] = None,
    output_scale: Optional[Tensor] = None,
    output_zero_point: Optional[Tensor] = None,
) -> Tensor:
    """The fused int8 2-D convolution ``[N, C, H, W] -> [N, OC, OH, OW]`` (channels_last output; docs/conv.md).

    ``acc = sum (xq - zp) * weight_int8`` exactly in integers (zero padding reads the input zero point), then in
    float32, in this order: ``y = float(acc) * (sx * weight_scale[o])``, ``+ bias[o]``, ``+ residual`` (float, or
    uint8 ``(r - residual_zero_point) * residual_scale``), ``clamp_min`` / ``clamp_max`` (NaN stays NaN). The output is
    float (the input's float dtype; float32 for a uint8 input) or, with ``output_scale`` / ``output_zero_point``, uint8
    ``clamp(nearbyint(y / output_scale) + output_zero_point, 0, 255)``.

    ``activation="dynamic"``: per-sample uint8 qparams from the sample's min / max; ``"static"``: the given
    ``input_scale`` / ``input_zero_point`` (a uint8 input holds the codes). A sample whose float input holds NaN or
    +-Inf gives NaN (or ``output_zero_point``). Inference only: no gradient flows through it.
    """
    return torch.ops.q8.conv2d(input, packed_weight, weight_scale, bias, _pair(kernel_size), _pair(stride),
                               _pair(padding), _pair(dilation), groups, activation, input_scale, input_zero_point,
                               residual, residual_scale, residual_zero_point, clamp_min, clamp_max, output_scale,
                               output_zero_point)


def max_pool2d(input: Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False) -> Tensor:
    """Max pooling of uint8 codes ``[N, C, H, W]`` (channels_last output, the input's qparams).

    The codes of ``torch.nn.functional.max_pool2d`` of the dequantized values (quantization is monotone, so the
    max of the codes is the code of the max), for the layout int8 convolutions write (torch's CPU ``max_pool2d``
    refuses a channels_last uint8 input of more than 255 elements per sample). ``stride=None``: ``kernel_size``.
    """
    return torch.ops.q8.max_pool2d(input, _pair(kernel_size), [] if stride is None else _pair(stride),
                                   _pair(padding), _pair(dilation), ceil_mode)


# --- fake kernel of pack_conv_weight (its size depends on the device's layout) ---
_MAX_CONV_K = (1 << 24) - 1


def _conv_packed_size_cpu(oc: int, cg: int, kh: int, kw: int, groups: int) -> int:
    """Bytes of the CPU ``pack_conv_weight`` output (csrc/ops/cpu/conv.cpp)."""
    def cdiv(a, b):
        return (a + b - 1) // b

    if cg == 1 and oc == groups:  # Depthwise: header, int8 [KH*KW][ldw], int32 [ldw]
        ldw = cdiv(max(oc, 1), 64) * 64
        return 64 + kh * kw * ldw + 4 * ldw
    k = kh * kw * cdiv(cg, 4) * 4
    panels, kgroups = cdiv(oc // groups, 16), cdiv(k, 4)
    block = cdiv(64 + panels * kgroups * 64 + panels * 64, 64) * 64
    return 64 + groups * block


def _conv_packed_size_cuda(oc: int, cg: int, kh: int, kw: int, groups: int) -> int:
    """Bytes of the CUDA ``pack_conv_weight`` output (the layout at the top of cuda/conv.cu)."""
    def rup(a, b):
        return (a + b - 1) // b * b

    if cg == 1 and oc == groups:  # Depthwise: header, int8 [KH*KW][ldw] (64-aligned end), int32 [ldw]
        ldw = rup(oc, 64)
        return 64 + rup(kh * kw * ldw, 64) + 4 * ldw
    ocg16, k16 = rup(oc // groups, 16), rup(kh * kw * cg, 16)  # GemmBlocks
    return 64 + groups * rup(ocg16 * k16 + 4 * ocg16, 64)


# Per device type: f(oc, cg, kh, kw, groups) -> bytes.
conv_packed_size = {"cpu": _conv_packed_size_cpu, "cuda": _conv_packed_size_cuda}


@torch.library.register_fake("q8::pack_conv_weight")
def _pack_conv_weight_fake(weight_int8, groups):
    torch._check(weight_int8.dtype == torch.int8,
                 lambda: f"q8.pack_conv_weight: weight_int8 must be int8, got {weight_int8.dtype}")
    torch._check(weight_int8.dim() == 4, lambda: "q8.pack_conv_weight: weight_int8 must be 4-D "
                 f"[out_channels, in_channels / groups, kernel_h, kernel_w], got shape {list(weight_int8.shape)}")
    torch._check(groups >= 1, lambda: f"q8.pack_conv_weight: groups must be positive, got {groups}")
    oc, cg, kh, kw = weight_int8.shape
    torch._check(oc % groups == 0,
                 lambda: f"q8.pack_conv_weight: out_channels ({oc}) must be divisible by groups = {groups}")
    size_fn = conv_packed_size.get(weight_int8.device.type)
    torch._check(size_fn is not None,
                 lambda: f"q8.pack_conv_weight: no fake kernel for device type {weight_int8.device.type}")
    return weight_int8.new_empty((size_fn(oc, cg, kh, kw, groups),), dtype=torch.uint8)
