"""A packed weight used with the N x K of another weight that has the same padded size.

[20, 110] and [20, 100] both pad to 32 x 112 in the CUDA layout, so the per-call host check (the
byte count) passes there; the kernels read the header on the device and answer every output with
NaN (linear) or INT64_MIN (int8_mm: int64 cannot hold NaN; no true result comes near it), since
raising would need a synchronization. The CPU reads the header on the host and raises.
Before this check, CUDA int8_mm returned plausible numbers off by (128 - z) * (the weight's columns
100..109 summed).
"""
import pytest
import torch

import q8

INT64_MIN = torch.iinfo(torch.int64).min


def packed_for(n, k, device):
    g = torch.Generator().manual_seed(0)
    w8 = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g)
    return w8, q8.pack_weight(w8.to(device))


@pytest.mark.parametrize("m", [3, 16, 30])   # <= 16: q8's small-M kernel; > 16: cuBLASLt + epilogue
def test_int8_mm_with_a_weight_of_another_shape(device, m):
    w8, packed = packed_for(20, 110, device)
    a = torch.randint(0, 256, (m, 100), dtype=torch.uint8, device=device)
    zp = torch.full((m,), 3, dtype=torch.int32, device=device)
    if device == "cpu":
        with pytest.raises(RuntimeError, match=r"q8.int8_mm: input.size\(1\) must match packed_weight's in_features "
                                               r"\(110\), got 100"):
            q8.int8_mm(a, packed, 20, zp)
        with pytest.raises(RuntimeError, match=r"q8.linear: input.size\(-1\) must match packed_weight's in_features "
                                               r"\(110\), got 100"):
            q8.linear(torch.randn(m, 100), packed, torch.ones(20))
        return
    out = q8.int8_mm(a, packed, 20, zp)
    assert out.shape == (m, 20) and out.dtype == torch.int64
    assert out.eq(INT64_MIN).all()
    assert q8.linear(torch.randn(m, 100, device=device), packed, torch.ones(20, device=device)).isnan().all()
    # The weight with its own shape is exact (and never the marker).
    a110 = torch.randint(0, 256, (m, 110), dtype=torch.uint8, device=device)
    good = q8.int8_mm(a110, packed, 20, zp)
    expect = (a110.cpu().long() - 3) @ w8.long().t()
    assert torch.equal(good.cpu(), expect)

