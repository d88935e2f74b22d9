"""Property-based tests: hypothesis looks for inputs where q8 and the reference disagree."""
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
