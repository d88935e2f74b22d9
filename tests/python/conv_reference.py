"""Exact plain-PyTorch reference of q8.conv2d (docs/conv.md), written independently of the kernels.

- Input quantization as the op does it: "dynamic" = per-sample uint8 qparams from the sample's min / max with
  csrc/ops/qparams_math.h compute_qparams(lo, hi, 0, 255, symmetric=False) (reference.choose_qparams implements
  the same float32 formulas), then q = clamp(nearbyint(x * (1 / s)) + z, 0, 255) in float32; "static" = the given
  scale / zero point; a uint8 input holds the codes.
- Integer accumulation: F.conv2d in float64 over integer-valued tensors (xq - zp, weight_int8). Every partial sum
  is an integer of magnitude < 255 * 128 * K < 2^53 for the sizes tested (K = C/groups * KH * KW), so float64 holds
  it exactly whatever the summation order; padding contributes 0 = zp - zp, as the op's padding reads zp.
- Float32 epilogue in the op's exact order (each a separate, correctly rounded float32 tensor op, no contraction):
    y = float(acc) * (sx * sw[o]); y = y + bias[o]; y = y + r; clamp_min; clamp_max
  with r = residual.float() or float(ru - rzp) * rscale (uint8 residual); then the output dtype, or uint8
  q = clamp(nearbyint(y * (1 / os)) + oz, 0, 255) with NaN -> oz.
- A sample whose float input holds NaN / Inf: all its outputs NaN (float) or oz (uint8).
The op's acc_u - zp * wsum equals sum (xq - zp) * w exactly, so the results must match bit for bit.
"""
import torch
import torch.nn.functional as F

from reference import choose_qparams


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def quantize_input(x, activation="dynamic", input_scale=None, input_zero_point=None):
    """Returns (codes uint8 [N, C, H, W], scale float32 [N], zero point int64 [N], bad bool [N])."""
    n = x.shape[0]
    if x.dtype == torch.uint8:
        assert activation == "static"
        s = torch.full((n,), float(input_scale.reshape(())), dtype=torch.float32)
        z = torch.full((n,), int(input_zero_point.reshape(())), dtype=torch.int64)
        return x.clone(), s, z, torch.zeros(n, dtype=torch.bool)
    xf = x.to(torch.float32)
    bad = ~torch.isfinite(xf.reshape(n, -1)).all(1) if n else torch.zeros(0, dtype=torch.bool)
    if activation == "dynamic":
        if xf[0].numel() if n else 0:
            s, z = choose_qparams(xf.reshape(n, -1), 0, 255, symmetric=False, axis=0)
        else:
            s, z = torch.full((n,), torch.finfo(torch.float32).eps), torch.zeros(n, dtype=torch.int32)
        # a bad sample's qparams do not matter (its outputs are NaN); the op uses (1, 0)
        s = torch.where(bad, torch.ones_like(s), s)
        z = torch.where(bad, torch.zeros_like(z), z).to(torch.int64)
    else:
        s = torch.full((n,), float(input_scale.reshape(())), dtype=torch.float32)
        z = torch.full((n,), int(input_zero_point.reshape(())), dtype=torch.int64)
    inv = (1.0 / s).reshape(n, 1, 1, 1)
    q = torch.round(xf * inv) + z.to(torch.float32).reshape(n, 1, 1, 1)
    q = q.clamp(0, 255)
    q = torch.where(torch.isnan(q), torch.zeros_like(q), q)  # bad samples only
    return q.to(torch.uint8), s, z, bad


def int_conv(xq, zp, weight_int8, stride=1, padding=0, dilation=1, groups=1):
    """acc[n, o, y, x] = sum (xq - zp[n]) * w, int64, exact."""
    xd = xq.to(torch.float64) - zp.to(torch.float64).reshape(-1, 1, 1, 1)
    acc = F.conv2d(xd, weight_int8.to(torch.float64), None, _pair(stride), _pair(padding), _pair(dilation), groups)
    return acc.round().to(torch.int64)


def conv2d(x, weight_int8, weight_scale, bias=None, stride=1, padding=0, dilation=1, groups=1, activation="dynamic",
           input_scale=None, input_zero_point=None, residual=None, residual_scale=None, residual_zero_point=None,
           clamp_min=None, clamp_max=None, output_scale=None, output_zero_point=None):
    """The exact expected output of q8.conv2d (logical [N, OC, OH, OW], channels_last)."""
    xq, sx, zx, bad = quantize_input(x, activation, input_scale, input_zero_point)
    acc = int_conv(xq, zx, weight_int8, stride, padding, dilation, groups)
    n, oc = acc.shape[0], acc.shape[1]
    scale = sx.reshape(n, 1, 1, 1) * weight_scale.to(torch.float32).reshape(1, oc, 1, 1)
    y = acc.to(torch.float32) * scale
    if bias is not None:
        y = y + bias.to(torch.float32).reshape(1, oc, 1, 1)
    if residual is not None:
        if residual.dtype == torch.uint8:
            rz = int(residual_zero_point.reshape(()))
            r = (residual.to(torch.int64) - rz).to(torch.float32) * float(residual_scale.reshape(()))
            # float(...) of a float32 scalar is exact; torch multiplies in float32 (a 0-dim python scalar
            # does not promote a float32 tensor)
        else:
            r = residual.to(torch.float32)
        y = y + r
    if clamp_min is not None:
        lo = torch.tensor(clamp_min, dtype=torch.float32)
        y = torch.where(y < lo, lo, y)
    if clamp_max is not None:
        hi = torch.tensor(clamp_max, dtype=torch.float32)
        y = torch.where(y > hi, hi, y)
    if n:
        y = torch.where(bad.reshape(n, 1, 1, 1), torch.full_like(y, float("nan")), y)
    if output_scale is not None:
        oz = float(int(output_zero_point.reshape(())))
        inv = 1.0 / output_scale.to(torch.float32).reshape(())
        q = torch.round(y * inv) + oz
        q = q.clamp(0, 255)
        q = torch.where(torch.isnan(q), torch.full_like(q, oz), q)
        out = q.to(torch.uint8)
    else:
        out = y if x.dtype in (torch.float32, torch.uint8) else y.to(x.dtype)
    return out.contiguous(memory_format=torch.channels_last)


def dequantized_conv2d(x, weight_int8, weight_scale, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Float reference: F.conv2d with the dequantized weight (for float-tolerance checks)."""
    w = weight_int8.to(torch.float32) * weight_scale.reshape(-1, 1, 1, 1)
    b = bias.to(torch.float32) if bias is not None else None
    return F.conv2d(x.to(torch.float32), w, b, _pair(stride), _pair(padding), _pair(dilation), groups)
