"""Plain-PyTorch references for the q8 ops, written independently of the kernels.

Fake quantization follows torch's own CPU kernel step by step, in float32:
multiply by the float32 reciprocal of the scale, round half to even, add the
zero point, clamp, subtract the zero point, multiply by the scale.
"""
import torch


def _bcast(t, x, axis):
    if axis is None:
        return t.reshape([1] * x.dim()) if x.dim() else t.reshape(())
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


def rounded_zero_point(zero_point, quant_min, quant_max):
    zp = zero_point.to(torch.float32)
    if zero_point.is_floating_point():
        zp = torch.round(zp)
    return zp.clamp(quant_min, quant_max)


def fake_quantize(x, scale, zero_point, axis, quant_min, quant_max):
    """Returns (output in x's dtype, straight-through mask)."""
    xf = x.to(torch.float32)
    s = _bcast(scale.to(torch.float32), x, axis)
    inv = 1.0 / s
    z = _bcast(rounded_zero_point(zero_point, quant_min, quant_max), x, axis)
    q = torch.round(xf * inv) + z
    mask = (q >= quant_min) & (q <= quant_max)
    qc = q.clamp(quant_min, quant_max)  # clamp propagates NaN
    return ((qc - z) * s).to(x.dtype), mask


def quantize(x, scale, zero_point, axis, quant_min, quant_max, dtype):
    xf = x.to(torch.float32)
    s = _bcast(scale.to(torch.float32), x, axis)
    z = _bcast(rounded_zero_point(zero_point, quant_min, quant_max), x, axis)
    q = (torch.round(xf * (1.0 / s)) + z).clamp(quant_min, quant_max)
    q = torch.where(torch.isnan(q), z.expand_as(q), q)
    return q.to(dtype)


def dequantize(q, scale, zero_point, axis, dtype=torch.float32):
    s = _bcast(scale.to(torch.float32), q, axis)
    z = _bcast(torch.round(zero_point.to(torch.float64)).to(torch.int64), q, axis)
    return ((q.to(torch.int64) - z).to(torch.float32) * s).to(dtype)


def lsq_grads(grad, x, scale, zero_point, axis, quant_min, quant_max):
    """Learnable-scale gradients in float64 sums (the formulas of torch's
    _fake_quantize_learnable_per_*_affine_backward with grad_factor=1)."""
    xf = x.to(torch.float32)
    g = grad.to(torch.float32)
    s = _bcast(scale.to(torch.float32), x, axis)
    inv = 1.0 / s
    z = _bcast(rounded_zero_point(zero_point, quant_min, quant_max), x, axis)
    q = torch.round(xf * inv) + z
    below, above = q < quant_min, q > quant_max
    inside = ~(below | above)
    xfq = (q.clamp(quant_min, quant_max) - z) * s
    ds = torch.where(inside, g * (xfq - xf) * inv, torch.where(below, g * (quant_min - z), g * (quant_max - z)))
    dz = torch.where(inside, torch.zeros_like(g), -g * s)
    dims = [d for d in range(x.dim()) if d != axis] if axis is not None else list(range(x.dim()))
    ds, dz = ds.double(), dz.double()
    if dims:
        ds, dz = ds.sum(dims), dz.sum(dims)
    dx = (grad * ((q >= quant_min) & (q <= quant_max)).to(grad.dtype))
    return dx, ds.reshape(scale.shape), dz.reshape(zero_point.shape)


def choose_qparams(x, quant_min, quant_max, symmetric=False, axis=None):
    """MinMaxObserver's formulas, with non-finite values ignored."""
    xf = x.to(torch.float32)
    xf = torch.where(torch.isfinite(xf), xf, torch.zeros_like(xf))
    if axis is None:
        mn, mx = (xf.min(), xf.max()) if xf.numel() else (torch.tensor(0.0), torch.tensor(0.0))
    else:
        if xf.numel():
            moved = xf.movedim(axis, 0).reshape(xf.shape[axis], -1)
            mn, mx = moved.min(1).values, moved.max(1).values
        else:
            mn = mx = torch.zeros(xf.shape[axis])
    mn, mx = torch.clamp(mn, max=0.0), torch.clamp(mx, min=0.0)
    eps = torch.tensor(torch.finfo(torch.float32).eps)
    levels = float(quant_max - quant_min)
    if symmetric:
        amax = torch.maximum(-mn, mx)
        scale = amax / (levels / 2)
        scale = torch.where(torch.isfinite(scale), scale, (amax.double() / (levels / 2)).clamp(max=torch.finfo(torch.float32).max).float())
        scale = torch.maximum(scale, eps)
        zp = torch.full_like(scale, 0 if quant_min < 0 else (quant_min + quant_max + 1) // 2, dtype=torch.int32)
    else:
        scale = (mx - mn) / levels
        wide = ((mx.double() - mn.double()) / levels).clamp(max=torch.finfo(torch.float32).max).float()
        scale = torch.where(torch.isfinite(scale), scale, wide)
        scale = torch.maximum(scale, eps)
        zp = (quant_min - torch.round(mn / scale)).clamp(quant_min, quant_max).to(torch.int32)
    return scale, zp
