"""Property-based tests: hypothesis looks for inputs where q8 and the reference disagree."""
import pytest
import torch
from hypothesis import given, settings, HealthCheck
from hypothesis import strategies as st

import q8
import reference as ref
from test_fake_quantize import assert_same

SETTINGS = dict(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

finite_or_special = st.one_of(
    st.floats(width=32, allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e4, max_value=1e4, width=32),
    st.integers(-300, 300).map(lambda k: k * 0.125 + 0.0625),  # exact ties for power-of-two scales
)


@st.composite
def problem(draw):
    ndim = draw(st.integers(0, 4))
    shape = draw(st.lists(st.integers(0, 9), min_size=ndim, max_size=ndim))
    n = 1
    for d in shape:
        n *= d
    values = draw(st.lists(finite_or_special, min_size=n, max_size=n))
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    x = torch.tensor(values, dtype=torch.float32).reshape(shape).to(dtype)
    bits = draw(st.integers(2, 16))
    signed = draw(st.booleans())
    narrow = draw(st.booleans())
    qmin = -(2 ** (bits - 1)) + int(narrow) if signed else 0
    qmax = 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1
    axis = draw(st.one_of(st.none(), st.integers(-ndim, ndim - 1))) if ndim else None
    c = 1 if axis is None else shape[axis]
    scales = draw(st.lists(st.one_of(st.floats(0.0009765625, 1024.0, width=32), st.sampled_from([0.125, 0.25, 1.0])),
                           min_size=c, max_size=c))
    zps = draw(st.lists(st.integers(qmin, qmax), min_size=c, max_size=c))
    zp_dtype = draw(st.sampled_from([torch.int32, torch.int64, torch.float32]))
    scale = torch.tensor(scales, dtype=torch.float32)
    zp = torch.tensor(zps).to(zp_dtype)
    if axis is None:
        scale, zp = scale.reshape(()), zp.reshape(())
    return x, scale, zp, axis, qmin, qmax


@settings(**SETTINGS)
@given(problem())
def test_fake_quantize_matches_reference(p):
    x, scale, zp, axis, qmin, qmax = p
    if axis is None:
        out = q8.fake_quantize_per_tensor(x, scale, zp, qmin, qmax)
    else:
        out = q8.fake_quantize_per_channel(x, scale, zp, axis, qmin, qmax)
    expected, mask = ref.fake_quantize(x, scale, zp, None if axis is None else axis % x.dim(), qmin, qmax)
    assert_same(out, expected)
    # Output values are on the grid and inside the representable range.
    assert not torch.isnan(out[~torch.isnan(x)]).any()


@settings(**SETTINGS)
@given(problem())
def test_quantize_dequantize_matches_reference(p):
    x, scale, zp, axis, qmin, qmax = p
    a = None if axis is None else axis % x.dim()
    qdtype = torch.int32 if qmax > 255 or qmin < -128 else (torch.uint8 if qmin >= 0 else torch.int8)
    q = q8.quantize(x, scale, zp, axis, qmin, qmax, qdtype)
    assert_same(q, ref.quantize(x, scale, zp, a, qmin, qmax, qdtype))
    d = q8.dequantize(q, scale, zp, axis, x.dtype)
    assert_same(d, ref.dequantize(q, scale, zp, a, x.dtype))


@settings(**SETTINGS)
@given(problem(), st.booleans())
def test_choose_qparams_valid_and_matches_reference(p, symmetric):
    x, _, _, axis, qmin, qmax = p
    s, z = q8.choose_qparams(x, qmin, qmax, symmetric, axis)
    es, ez = ref.choose_qparams(x, qmin, qmax, symmetric, None if axis is None else axis % x.dim())
    assert_same(s, es)
    assert_same(z, ez)
    assert torch.all(torch.isfinite(s)) and torch.all(s > 0)
    assert torch.all((z >= qmin) & (z <= qmax))


# ---------------------------------------------------------------------------
# Int8 linear: exact integer GEMM and the per-row quantized linear.
# ---------------------------------------------------------------------------
@st.composite
def gemm_problem(draw):
    m, k, n = draw(st.integers(0, 14)), draw(st.integers(0, 80)), draw(st.integers(0, 40))
    w = torch.tensor(draw(st.lists(st.integers(-128, 127), min_size=n * k, max_size=n * k)), dtype=torch.int8)
    a = torch.tensor(draw(st.lists(st.sampled_from([0, 1, 127, 128, 254, 255]) | st.integers(0, 255),
                                   min_size=m * k, max_size=m * k)), dtype=torch.uint8)
    zp = torch.tensor(draw(st.lists(st.integers(0, 255), min_size=m, max_size=m)), dtype=torch.int32)
    return a.reshape(m, k), w.reshape(n, k), zp


@pytest.mark.single_torch  # long; exactness does not depend on the torch release
@given(gemm_problem(), st.sampled_from(q8.cpu_isas()))
@settings(**SETTINGS)
def test_int8_mm_is_exact(problem, isa):
    a, w, zp = problem
    best = q8.set_cpu_isa(isa)
    try:
        got = q8.int8_mm(a, q8.pack_weight(w), w.shape[0], zp)
    finally:
        q8.set_cpu_isa(best)
    assert_same(got, (a.long() - zp.long()[:, None]) @ w.long().t())


@st.composite
def linear_input(draw):
    m, k = draw(st.integers(1, 9)), draw(st.integers(1, 70))
    values = draw(st.lists(finite_or_special, min_size=m * k, max_size=m * k))
    return torch.tensor(values, dtype=torch.float32).reshape(m, k)


@given(linear_input(), st.integers(1, 33), st.sampled_from(q8.cpu_isas()))
@settings(**SETTINGS)
def test_dynamic_linear_matches_integer_reference(x, n, isa):
    k = x.shape[1]
    w8, ws = q8.quantize_weight(torch.randn(n, k))
    best = q8.set_cpu_isa(isa)
    try:
        y = q8.linear(x, q8.pack_weight(w8), ws)
    finally:
        q8.set_cpu_isa(best)
    bad = ~x.isfinite().all(1)
    assert y[bad].isnan().all()
    if (~bad).any():
        xg = x[~bad]
        s, z = q8.choose_qparams(xg, 0, 255, False, 0)
        xq = q8.quantize(xg, s, z, 0, 0, 255, torch.uint8)
        acc = ((xq.long() - z.long()[:, None]) @ w8.long().t()).double()
        ref = acc * s.double()[:, None] * ws.double()
        # Beyond float32's range the output is +-inf, as float32 F.linear's would be.
        over = ref.float().isinf()
        assert_same(y[~bad][over], ref.float()[over])
        err = (y[~bad].double() - ref).abs()[~over]
        assert (err <= 2e-6 * (ref.abs()[~over] + ref.abs()[~over].mean() + 1e-30)).all(), err.max()
