"""_fake_quantize_learnable_backward (LSQ) against the float64 reference on every memory layout
the kernels walk differently, on the CPU and on CUDA (skipped without a GPU).

The CUDA kernel reads grad / input in memory order as [outer, C, inner] and sums the LSQ terms
per channel in one pass (no per-element temporaries): long runs of one channel (per tensor, axis 0,
inner >= 32) go to the "runs" kernel, short ones (channels_last with axis 1, the last axis) to the
"columns" kernel; a grad of another layout (the expanded scalar of out.sum()) is copied first.
grad_input is exact; the sums agree with float64 within 1e-4 of the sum of |terms|.
"""
import pytest
import torch

import reference as ref

OPS = torch.ops.q8


def magnitudes(g, x, scale, zero_point, axis, qmin, qmax):
    """Sums of |terms| per channel (the tolerance scale)."""
    _, ms, mz = ref.lsq_grads(g.abs(), x, scale, zero_point, axis, qmin, qmax)
    _, ms2, _ = ref.lsq_grads(-g.abs(), x, scale, zero_point, axis, qmin, qmax)
    return torch.maximum(ms.abs(), ms2.abs()), mz.abs()


CASES = {
    # name: (shape, axis, layout of x)
    "per tensor": ((6, 5, 7), None, "contiguous"),
    "one channel": ((1, 40), 0, "contiguous"),
    "axis 0, long runs": ((5, 3, 40), 0, "contiguous"),
    "axis 1, long runs": ((3, 4, 50), 1, "contiguous"),
    "axis 1, channels_last": ((3, 4, 5, 6), 1, "channels_last"),
    "last axis": ((37, 9), 1, "contiguous"),
    "last axis, many rows": ((300, 5), 1, "contiguous"),
    "axis 1, transposed input": ((6, 40), 1, "transposed"),
    "axis 2, sliced input": ((4, 6, 10), 2, "sliced"),
}


def make_x(shape, layout, dtype, device):
    if layout == "channels_last":
        x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        x = torch.randn(tuple(reversed(shape))).t()
    elif layout == "sliced":
        x = torch.randn(shape[:-1] + (2 * shape[-1],))[..., ::2]
    else:
        x = torch.randn(shape)
    x = (x * 3).to(dtype)
    return x.to(device) if device == "cpu" else torch.empty_strided(x.shape, x.stride(), dtype=dtype,
                                                                     device=device).copy_(x)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("grad_kind", ["dense", "expanded scalar"])
def test_learnable_backward_layouts(device, case, dtype, grad_kind):
    shape, axis, layout = CASES[case]
    x = make_x(shape, layout, dtype, device)
    channels = 1 if axis is None else shape[axis]
    pshape = () if axis is None else (channels,)
    scale = (torch.rand(pshape) * 0.3 + 0.05).to(device)
    zero_point = (torch.randint(-3, 4, pshape).float() + 0.25).to(device)
    if grad_kind == "dense":
        g = torch.randn(shape).to(dtype).to(device)
    else:
        g = torch.ones((), dtype=dtype, device=device).expand(shape)   # what out.sum().backward() passes
    dx, ds, dz = OPS._fake_quantize_learnable_backward(g, x, scale, zero_point, axis, -8, 7)
    edx, eds, edz = ref.lsq_grads(g.cpu(), x.cpu(), scale.cpu(), zero_point.cpu(), axis, -8, 7)
    assert dx.shape == x.shape and dx.dtype == dtype and ds.shape == scale.shape and dz.shape == zero_point.shape
    assert torch.equal(dx.cpu(), edx.to(dtype))
    ms, mz = magnitudes(g.cpu(), x.cpu(), scale.cpu(), zero_point.cpu(), axis, -8, 7)
    torch.testing.assert_close(ds.cpu().double(), eds, rtol=0, atol=float(1e-4 * ms.max() + 1e-5))
    torch.testing.assert_close(dz.cpu().double(), edz, rtol=0, atol=float(1e-4 * mz.max() + 1e-5))


def test_learnable_backward_invalid_channel_is_nan(device):
    """A channel with an invalid scale: NaN sums for it only (CUDA); the CPU raises."""
    x = torch.randn(50, 4, device=device)
    g = torch.randn(50, 4, device=device)
    scale = torch.tensor([0.1, 0.0, 0.2, 0.3], device=device)
    zero_point = torch.zeros(4, device=device)
    if device == "cpu":
        with pytest.raises(RuntimeError, match="scale"):
            OPS._fake_quantize_learnable_backward(g, x, scale, zero_point, 1, -128, 127)
        return
    dx, ds, dz = OPS._fake_quantize_learnable_backward(g, x, scale, zero_point, 1, -128, 127)
    assert ds.isnan().tolist() == [False, True, False, False]
    assert dz.isnan().tolist() == [False, True, False, False]
    assert dx[:, 1].isnan().all() and not dx[:, [0, 2, 3]].isnan().any()
