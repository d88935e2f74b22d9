"""q8.embedding / q8.embedding_bag and q8.nn.Int8Embedding / Int8EmbeddingBag: numerics against
F.embedding / F.embedding_bag on the dequantized table (float64), edge cases, errors, the
modules against the float layers, state_dict, TorchScript, pickling, torch.compile / torch.export
and opcheck."""
import copy
import io
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import q8
from q8.nn import Int8Embedding, Int8EmbeddingBag

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPS = torch.ops.q8
OUT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def table(rows, dim, device="cpu"):
    w = torch.randn(rows, dim, device=device) * 2
    return q8.quantize_weight(w)


def deq64(w8, ws):
    return w8.double() * ws.double()[:, None]


def deq32(w8, ws):
    # What the kernels compute per element: float(q) * s, one float32 rounding.
    return w8.float() * ws[:, None]


def ref_embedding(w8, ws, idx, dtype=torch.float32):
    # float(q) * s is exact in float64; rounding it to float32 gives the kernel's product.
    return F.embedding(idx.long(), deq64(w8, ws)).float().to(dtype)


def ref_bag(w8, ws, idx, offsets=None, mode="sum", psw=None, include_last_offset=False, padding_idx=None):
    """F.embedding_bag in float64 on the float32-dequantized table (the kernels' per-row values)."""
    if idx.dim() == 2 and idx.shape[1] == 0:
        # F.embedding_bag fails on [B, 0] ("step must be nonzero"); every bag is empty.
        return torch.zeros(idx.shape[0], w8.shape[1], dtype=torch.float64, device=idx.device)
    return F.embedding_bag(idx.long(), deq32(w8, ws).double(), None if offsets is None else offsets.long(),
                           mode=mode, per_sample_weights=None if psw is None else psw.double(),
                           include_last_offset=include_last_offset, padding_idx=padding_idx)


def assert_bag_close(got, want, n_terms=16):
    # float32 accumulation of up to n_terms rows of magnitude <= ~8: a few float32 ulps.
    torch.testing.assert_close(got.double(), want.double(), rtol=n_terms * 2 ** -23, atol=n_terms * 8 * 2 ** -23)


# ---------------------------------------------------------------------------- embedding

@pytest.mark.parametrize("dtype", OUT_DTYPES)
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_embedding_matches_f_embedding_exactly(device, dtype, index_dtype):
    w8, ws = table(300, 77, device)
    for shape in [(5,), (3, 4), (2, 3, 4), ()]:
        idx = torch.randint(0, 300, shape, device=device, dtype=index_dtype)
        out = q8.embedding(w8, ws, idx, dtype=dtype)
        assert out.shape == shape + (77,) and out.dtype == dtype and out.device == w8.device
        assert torch.equal(out, ref_embedding(w8, ws, idx, dtype))


@pytest.mark.parametrize("dim", [1, 15, 16, 31, 32, 64, 100, 1024])
def test_embedding_every_width_and_family(dim):
    w8, ws = table(40, dim)
    idx = torch.randint(0, 40, (9,))
    want = ref_embedding(w8, ws, idx)
    saved = q8.cpu_isa()
    try:
        for isa in q8.cpu_isas():
            q8.set_cpu_isa(isa)
            assert torch.equal(q8.embedding(w8, ws, idx), want), isa
            assert torch.equal(q8.embedding(w8, ws, idx, dtype=torch.bfloat16), want.bfloat16()), isa
    finally:
        q8.set_cpu_isa(saved)


def test_embedding_edge_cases(device):
    w8, ws = table(20, 8, device)
    assert q8.embedding(w8, ws, torch.empty(0, dtype=torch.long, device=device)).shape == (0, 8)
    assert q8.embedding(w8, ws, torch.empty(3, 0, dtype=torch.long, device=device)).shape == (3, 0, 8)
    # Non-contiguous indices and table / scales.
    idx = torch.randint(0, 20, (6, 4), device=device).t()
    assert torch.equal(q8.embedding(w8, ws, idx), ref_embedding(w8, ws, idx))
    big8 = torch.randint(-127, 128, (20, 16), dtype=torch.int8, device=device)
    w8s, wss = big8[:, ::2], (torch.rand(40, device=device) + 0.01)[::2]
    assert not w8s.is_contiguous() and not wss.is_contiguous()
    assert torch.equal(q8.embedding(w8s, wss, idx), ref_embedding(w8s.contiguous(), wss.contiguous(), idx))
    # An empty table with no columns.
    e8, es = torch.empty(5, 0, dtype=torch.int8, device=device), torch.ones(5, device=device)
    assert q8.embedding(e8, es, torch.tensor([1, 4], device=device)).shape == (2, 0)
    # A zero row (what nn.Embedding(padding_idx=p) stores) stays exactly zero.
    w = torch.randn(6, 5, device=device)
    w[2] = 0
    z8, zs = q8.quantize_weight(w)
    out = q8.embedding(z8, zs, torch.tensor([2], device=device))
    assert torch.equal(out, torch.zeros(1, 5, device=device))


def test_embedding_errors():
    w8, ws = table(10, 4)
    with pytest.raises(RuntimeError, match=r"q8.embedding: index 10 \(at position 2 of the flattened indices\) is "
                                           r"out of range for a table of 10 rows \(valid: 0 to 9\)"):
        q8.embedding(w8, ws, torch.tensor([0, 9, 10]))
    with pytest.raises(RuntimeError, match=r"index -1 .* table of 10 rows"):
        q8.embedding(w8, ws, torch.tensor([-1], dtype=torch.int32))
    with pytest.raises(RuntimeError, match=r"index 10"):
        q8.embedding(w8[:, :0], ws, torch.tensor([10]))  # checked even without columns
    with pytest.raises(RuntimeError, match=r"indices must be int64 or int32, got Float"):
        q8.embedding(w8, ws, torch.tensor([1.0]))
    with pytest.raises(RuntimeError, match=r"indices must be int64 or int32, got Byte"):
        q8.embedding(w8, ws, torch.tensor([1], dtype=torch.uint8))
    with pytest.raises(RuntimeError, match=r"weight_int8 must be a 2-D int8 tensor \[num_embeddings, embedding_dim\], "
                                           r"got Float"):
        q8.embedding(w8.float(), ws, torch.tensor([1]))
    with pytest.raises(RuntimeError, match=r"weight_int8 must be a 2-D int8 tensor .* of shape \[40\]"):
        q8.embedding(w8.reshape(-1), ws, torch.tensor([1]))
    with pytest.raises(RuntimeError, match=r"weight_scale must be a 1-D float32 tensor \[num_embeddings\] = \[10\] .* "
                                           r"got Double of shape \[10\]"):
        q8.embedding(w8, ws.double(), torch.tensor([1]))
    with pytest.raises(RuntimeError, match=r"weight_scale must be .* got Float of shape \[9\]"):
        q8.embedding(w8, ws[:9], torch.tensor([1]))
    with pytest.raises(RuntimeError, match=r"weight_scale must be .* got Float of shape \[10, 1\]"):
        q8.embedding(w8, ws[:, None], torch.tensor([1]))
    with pytest.raises(RuntimeError, match=r"dtype must be torch.float32, torch.float64, torch.float16 or "
                                           r"torch.bfloat16, got Int"):
        q8.embedding(w8, ws, torch.tensor([1]), dtype=torch.int32)
    with pytest.raises(RuntimeError, match=r"indices must be on the same device as weight_int8 \(cpu\), got meta"):
        q8.embedding(w8, ws, torch.tensor([1], device="meta"))


# ---------------------------------------------------------------------------- embedding_bag

def _random_offsets(n, bags, device, dtype=torch.int64):
    cuts = torch.sort(torch.randint(0, n + 1, (bags - 1,))).values
    return torch.cat([torch.zeros(1, dtype=torch.int64), cuts]).to(device=device, dtype=dtype)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("index_dtype,offset_dtype", [(torch.int64, torch.int64), (torch.int32, torch.int32),
                                                      (torch.int32, torch.int64)])
def test_embedding_bag_matches_f_embedding_bag(device, mode, index_dtype, offset_dtype):
    w8, ws = table(50, 33, device)
    idx = torch.randint(0, 50, (40,), device=device, dtype=index_dtype)
    offsets = _random_offsets(40, 9, device, offset_dtype)
    offsets[3] = offsets[4]  # at least one empty bag
    for pad in [None, int(idx[0]), -50 + int(idx[5])]:
        for last in [False, True]:
            offs = torch.cat([offsets, offsets.new_tensor([40])]) if last else offsets
            out = q8.embedding_bag(w8, ws, idx, offs, mode, None, last, pad)
            want = ref_bag(w8, ws, idx, offs, mode, None, last, pad)
            assert out.shape == want.shape and out.dtype == torch.float32
            assert_bag_close(out, want, 40)
            if mode == "max":
                assert torch.equal(out, want.float())  # max of float32 values is exact
    # include_last_offset with offsets[-1] < indices.numel(): the last offset ends the last bag
    # (CSR, as documented for F.embedding_bag; torch's own CPU kernels disagree there: its
    # float32 sum path stops at offsets[-1], its max and float64 paths run to the end).
    offs = torch.cat([offsets, offsets.new_tensor([35])])
    assert torch.equal(q8.embedding_bag(w8, ws, idx, offs, mode, include_last_offset=True),
                       q8.embedding_bag(w8, ws, idx[:35], offs, mode, include_last_offset=True))
    # 2-D indices.
    idx2 = torch.randint(0, 50, (7, 5), device=device, dtype=index_dtype)
    assert_bag_close(q8.embedding_bag(w8, ws, idx2, mode=mode), ref_bag(w8, ws, idx2, mode=mode))
    assert_bag_close(q8.embedding_bag(w8, ws, idx2, mode=mode, padding_idx=int(idx2[0, 0])),
                     ref_bag(w8, ws, idx2, mode=mode, padding_idx=int(idx2[0, 0])))


@pytest.mark.parametrize("dtype", OUT_DTYPES)
def test_embedding_bag_dtypes_and_per_sample_weights(device, dtype):
    w8, ws = table(30, 20, device)
    idx = torch.randint(0, 30, (25,), device=device)
    offsets = _random_offsets(25, 6, device)
    for psw_dtype in [torch.float32, torch.float64, torch.float16, torch.bfloat16]:
        psw = torch.randn(25, device=device).to(psw_dtype)
        out32 = q8.embedding_bag(w8, ws, idx, offsets, "sum", psw)
        want = ref_bag(w8, ws, idx, offsets, "sum", psw.float())
        assert_bag_close(out32, want, 25)
        out = q8.embedding_bag(w8, ws, idx, offsets, "sum", psw, dtype=dtype)
        assert out.dtype == dtype
        # Accumulated in float32, then converted once.
        assert torch.equal(out, out32.to(dtype))
    for mode in ["mean", "max"]:
        assert torch.equal(q8.embedding_bag(w8, ws, idx, offsets, mode, dtype=dtype),
                           q8.embedding_bag(w8, ws, idx, offsets, mode).to(dtype))


def test_embedding_bag_every_family():
    w8, ws = table(60, 70)
    idx = torch.randint(0, 60, (50,))
    offsets = _random_offsets(50, 8, "cpu")
    psw = torch.randn(50)
    saved = q8.cpu_isa()
    try:
        results = {}
        for isa in q8.cpu_isas():
            q8.set_cpu_isa(isa)
            results[isa] = [q8.embedding_bag(w8, ws, idx, offsets, m, psw if m == "sum" else None, dtype=d)
                            for m in ("sum", "mean", "max") for d in (torch.float32, torch.float16)]
        base = results[q8.cpu_isas()[-1]]
        for isa, r in results.items():
            for a, b in zip(r, base):
                assert torch.equal(a, b), isa  # bit-identical on every family
    finally:
        q8.set_cpu_isa(saved)


def test_embedding_bag_edge_cases(device):
    w8, ws = table(10, 6, device)
    L = torch.long
    # No bags, empty bags, bags of padding only.
    assert q8.embedding_bag(w8, ws, torch.empty(0, 3, dtype=L, device=device)).shape == (0, 6)
    assert q8.embedding_bag(w8, ws, torch.empty(0, dtype=L, device=device),
                            torch.empty(0, dtype=L, device=device)).shape == (0, 6)
    for mode in ["sum", "mean", "max"]:
        out = q8.embedding_bag(w8, ws, torch.empty(0, dtype=L, device=device),
                               torch.zeros(3, dtype=L, device=device), mode)
        assert torch.equal(out, torch.zeros(3, 6, device=device))
        out = q8.embedding_bag(w8, ws, torch.empty(4, 0, dtype=L, device=device), mode=mode)
        assert torch.equal(out, torch.zeros(4, 6, device=device))
        out = q8.embedding_bag(w8, ws, torch.tensor([[3, 3], [3, 1]], device=device), mode=mode, padding_idx=3)
        assert torch.equal(out[0], torch.zeros(6, device=device))
        assert torch.equal(out[1], deq32(w8, ws)[1])  # the mean's count leaves the padding out
        # include_last_offset with one offset: no bags.
        assert q8.embedding_bag(w8, ws, torch.tensor([1, 2], device=device), torch.tensor([0], device=device),
                                mode, include_last_offset=True).shape == (0, 6)
    # Non-contiguous indices, offsets and per_sample_weights.
    idx = torch.randint(0, 10, (8, 4), device=device).t()
    psw = torch.randn(8, 4, device=device).t()
    assert_bag_close(q8.embedding_bag(w8, ws, idx, per_sample_weights=psw), ref_bag(w8, ws, idx, psw=psw))
    flat = torch.randint(0, 10, (24,), device=device)[::2]
    offs = torch.tensor([0, 0, 3, 3, 7, 7], device=device)[::2]
    assert_bag_close(q8.embedding_bag(w8, ws, flat, offs, "mean"), ref_bag(w8, ws, flat, offs, "mean"))


def test_embedding_bag_errors():
    w8, ws = table(10, 4)
    idx = torch.tensor([1, 2, 3])
    off = torch.tensor([0, 1])
    cases = [
        (dict(indices=idx, offsets=torch.tensor([1, 2])), r"offsets\[0\] must be 0 \(the first bag starts at the first "
                                                          r"index\), got 1"),
        (dict(indices=idx, offsets=torch.tensor([0, 2, 1])), r"offsets must be non-decreasing, got offsets\[1\] = 2 and "
                                                             r"offsets\[2\] = 1"),
        (dict(indices=idx, offsets=torch.tensor([0, 4])), r"offsets\[-1\] must be at most the number of indices \(3\), "
                                                          r"got 4"),
        (dict(indices=idx), r"offsets must be given when indices is 1-D"),
        (dict(indices=idx[None], offsets=off), r"offsets must be None when indices is 2-D"),
        (dict(indices=idx[None, None]), r"indices must be 1-D \(with offsets\) or 2-D \[bags, indices per bag\], got "
                                        r"shape \[1, 1, 3\]"),
        (dict(indices=torch.tensor(1), offsets=off), r"indices must be 1-D .* got shape \[\]"),
        (dict(indices=idx, offsets=off[None]), r"offsets must be 1-D, got shape \[1, 2\]"),
        (dict(indices=idx, offsets=off.float()), r"offsets must be int64 or int32, got Float"),
        (dict(indices=idx.float(), offsets=off), r"indices must be int64 or int32, got Float"),
        (dict(indices=idx, offsets=off, mode="min"), r"mode must be 'sum', 'mean' or 'max', got 'min'"),
        (dict(indices=idx, offsets=off, mode="mean", per_sample_weights=torch.ones(3)),
         r"per_sample_weights is only supported with mode='sum' \(as F.embedding_bag\), got mode='mean'"),
        (dict(indices=idx, offsets=off, per_sample_weights=torch.ones(4)),
         r"per_sample_weights must have the shape of indices \(\[3\]\), got \[4\]"),
        (dict(indices=idx, offsets=off, per_sample_weights=torch.ones(3, dtype=torch.int32)),
         r"per_sample_weights must be float32, float64, float16 or bfloat16, got Int"),
        (dict(indices=idx, offsets=off, padding_idx=10), r"padding_idx must be in \[-num_embeddings, num_embeddings\) "
                                                         r"= \[-10, 10\), got 10"),
        (dict(indices=idx, offsets=off, padding_idx=-11), r"padding_idx must be in .* got -11"),
        (dict(indices=torch.tensor([1, 10]), offsets=off), r"q8.embedding_bag: index 10 \(at position 1 of the "
                                                           r"flattened indices\) is out of range for a table of 10 rows"),
        (dict(indices=torch.tensor([[-3]])), r"index -3 .* table of 10 rows"),
        (dict(indices=idx, offsets=off[:0], include_last_offset=True),
         r"offsets must hold at least one element with include_last_offset=True"),
        (dict(indices=idx, offsets=off, dtype=torch.int8), r"dtype must be torch.float32, .* got Char"),
    ]
    for kwargs, pattern in cases:
        with pytest.raises(RuntimeError, match=pattern):
            q8.embedding_bag(w8, ws, **kwargs)
        if "index" not in pattern and "offsets[" not in pattern.replace("\\", "") and "non-decreasing" not in pattern:
            # Argument checks (not value checks) are the same under FakeTensors.
            with pytest.raises(RuntimeError, match=pattern), torch._subclasses.FakeTensorMode(
                    allow_non_fake_inputs=True):
                q8.embedding_bag(w8, ws, **kwargs)


def test_backward_through_the_frozen_table_raises():
    w8, ws = table(10, 4)
    psw = torch.rand(3, requires_grad=True)
    out = q8.embedding_bag(w8, ws, torch.tensor([1, 2, 3]), torch.tensor([0]), "sum", psw)
    assert out.requires_grad
    with pytest.raises(RuntimeError, match=r"not implemented"):
        out.sum().backward()
    scale = ws.clone().requires_grad_()
    with pytest.raises(RuntimeError, match=r"not implemented"):
        q8.embedding(w8, scale, torch.tensor([1])).sum().backward()
    # Without anything requiring grad the output is a plain tensor.
    assert not q8.embedding(w8, ws, torch.tensor([1])).requires_grad


# ---------------------------------------------------------------------------- modules

def _float_embedding(device, dtype=torch.float32, **kw):
    return nn.Embedding(100, 24, device=device, dtype=dtype, **kw)


@pytest.mark.parametrize("dtype", OUT_DTYPES)
def test_int8_embedding_from_float(device, dtype):
    emb = _float_embedding(device, dtype, padding_idx=-3)
    m = Int8Embedding.from_float(emb)
    assert m.padding_idx == emb.padding_idx == 97 and m.output_dtype == dtype
    assert m.weight_int8.dtype == torch.int8 and m.weight_scale.dtype == torch.float32
    w8, ws = q8.quantize_weight(emb.weight.detach().float())
    assert torch.equal(m.weight_int8, w8) and torch.equal(m.weight_scale, ws)
    idx = torch.randint(0, 100, (4, 7), device=device)
    idx[0, 0] = 97
    out = m(idx)
    assert out.dtype == dtype and out.shape == (4, 7, 24)
    assert torch.equal(out, ref_embedding(w8, ws, idx, dtype))
    assert torch.equal(out[0, 0], torch.zeros(24, dtype=dtype, device=device))  # the zero padding row
    # Close to the float layer: int8 rows, relative error <= half a step of 1/127 of the row's max.
    ref = emb(idx).float()
    err = (out.float() - ref).abs()
    bound = emb.weight.detach().float().abs().amax(1)[idx][..., None] / 127 * 0.5001
    tol = {torch.float16: 2 ** -10, torch.bfloat16: 2 ** -7}.get(dtype, 2 ** -22)
    assert bool((err <= bound + tol * ref.abs() + 1e-6).all())


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_int8_embedding_bag_from_float(device, mode):
    for dtype in [torch.float32, torch.bfloat16]:
        for last in [False, True]:
            bag = nn.EmbeddingBag(60, 16, mode=mode, include_last_offset=last, padding_idx=5, device=device,
                                  dtype=dtype)
            m = Int8EmbeddingBag.from_float(bag)
            assert (m.mode, m.include_last_offset, m.padding_idx, m.output_dtype) == (mode, last, 5, dtype)
            idx = torch.randint(0, 60, (30,), device=device)
            idx[:3] = 5
            offsets = _random_offsets(30, 5, device)
            if last:
                offsets = torch.cat([offsets, offsets.new_tensor([30])])
            psw = torch.rand(30, device=device, dtype=dtype) if mode == "sum" else None
            out = m(idx, offsets, psw)
            assert out.dtype == dtype
            want = ref_bag(m.weight_int8, m.weight_scale, idx, offsets, mode, None if psw is None else psw.float(),
                           last, 5)
            if dtype == torch.float32:
                assert_bag_close(out, want, 30)
            else:
                torch.testing.assert_close(out.double(), want, rtol=2 ** -7, atol=1e-3)
            # Against the float layer: each looked-up row within half an int8 step of its row's max.
            ref = bag(idx, offsets, psw).float()
            rowmax = bag.weight.detach().float().abs().amax(1).max()
            torch.testing.assert_close(out.float(), ref, rtol=0.02, atol=float(rowmax) / 127 * 30)
            # 2-D input: forward(input) with no offsets.
            two = torch.randint(0, 60, (4, 3), device=device)
            assert m(two).shape == (4, 16)


def test_from_float_refuses_what_it_cannot_freeze():
    with pytest.raises(NotImplementedError, match=r"max_norm=1.0 renormalizes the looked-up rows"):
        Int8Embedding.from_float(nn.Embedding(10, 4, max_norm=1.0))
    with pytest.raises(NotImplementedError, match=r"max_norm=2.0"):
        Int8EmbeddingBag.from_float(nn.EmbeddingBag(10, 4, max_norm=2.0))
    bad = nn.Embedding(10, 4)
    bad.weight = nn.Parameter(torch.zeros(10, 4, dtype=torch.int64), requires_grad=False)
    with pytest.raises(TypeError, match=r"weight must be a floating-point tensor .* got torch.int64"):
        Int8Embedding.from_float(bad)
    with pytest.raises(TypeError, match=r"expected a torch.nn.Embedding, got Linear"):
        Int8Embedding.from_float(nn.Linear(2, 2))
    with pytest.raises(TypeError, match=r"expected a torch.nn.EmbeddingBag, got Embedding"):
        Int8EmbeddingBag.from_float(nn.Embedding(2, 2))
    with pytest.raises(ValueError, match=r"mode must be one of"):
        Int8EmbeddingBag(3, 2, mode="median")
    with pytest.raises(ValueError, match=r"padding_idx must be within num_embeddings"):
        Int8Embedding(3, 2, padding_idx=3)
    with pytest.raises(ValueError, match=r"dtype \(the output dtype\) must be one of"):
        Int8Embedding(3, 2, dtype=torch.int32)
    # Training-only options are accepted (a frozen table has no gradient).
    m = Int8EmbeddingBag.from_float(nn.EmbeddingBag(10, 4, sparse=True, scale_grad_by_freq=True, mode="sum"))
    assert m(torch.tensor([[1, 2]])).shape == (1, 4)


def test_to_keeps_buffer_dtypes_and_follows_float_conversions():
    m = Int8Embedding.from_float(nn.Embedding(10, 4))
    idx = torch.tensor([1, 2])
    want = m(idx)
    for conv, dtype in [(lambda x: x.half(), torch.float16), (lambda x: x.to(torch.bfloat16), torch.bfloat16),
                        (lambda x: x.double(), torch.float64), (lambda x: x.float(), torch.float32)]:
        conv(m)
        assert m.weight_int8.dtype == torch.int8 and m.weight_scale.dtype == torch.float32
        assert m.output_dtype == dtype
        assert torch.equal(m(idx), want.to(dtype))
    m.to("cpu")
    assert m.output_dtype == torch.float32


def test_state_dict_round_trip_and_errors():
    bag = Int8EmbeddingBag.from_float(nn.EmbeddingBag(12, 5, mode="sum"))
    sd = bag.state_dict()
    assert set(sd) == {"weight_int8", "weight_scale", "_q8_format"} and int(sd["_q8_format"]) == 1
    fresh = Int8EmbeddingBag(12, 5, mode="sum")
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.weight_int8, bag.weight_int8) and torch.equal(fresh.weight_scale, bag.weight_scale)
    buf = io.BytesIO()
    torch.save(dict(sd), buf)
    buf.seek(0)
    fresh2 = Int8EmbeddingBag(12, 5, mode="sum")
    fresh2.load_state_dict(torch.load(buf))
    idx = torch.tensor([[1, 2, 3]])
    assert torch.equal(fresh2(idx), bag(idx))

    def expect(sd2, pattern):
        target = Int8EmbeddingBag(12, 5)
        before = target.weight_scale.clone()
        with pytest.raises(RuntimeError, match=pattern):
            target.load_state_dict(sd2)
        assert torch.equal(target.weight_scale, before)  # nothing copied

    expect({**sd, "_q8_format": torch.tensor(2)}, r"_q8_format: Int8EmbeddingBag\(num_embeddings=12, "
                                                  r"embedding_dim=5\) reads state_dict format version 1, found 2")
    expect({**sd, "weight_int8": sd["weight_int8"][:11]}, r"size mismatch for weight_int8: expected shape \[12, 5\] "
                                                          r".* found shape \[11, 5\]")
    expect({**sd, "weight_scale": sd["weight_scale"].double()}, r"weight_scale: expected dtype torch.float32, found "
                                                                r"torch.float64")
    expect({k: v for k, v in sd.items() if k != "_q8_format"}, r"Missing key\(s\) in state_dict: \"_q8_format\"")
    # A float nn.Embedding checkpoint is refused with the missing keys named.
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*weight_int8"):
        Int8Embedding(12, 5).load_state_dict(nn.Embedding(12, 5).state_dict())


def test_deepcopy_and_pickle():
    m = nn.Sequential(Int8Embedding.from_float(nn.Embedding(20, 6, padding_idx=0)),
                      Int8EmbeddingBag.from_float(nn.EmbeddingBag(20, 6, mode="max")))
    idx = torch.tensor([[1, 0, 3]])
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert torch.equal(clone[0](idx), m[0](idx)) and torch.equal(clone[1](idx), m[1](idx))
        assert clone[0].padding_idx == 0 and clone[1].mode == "max"
        assert clone[0].weight_int8 is not m[0].weight_int8


class _Model(nn.Module):
    def __init__(self, device="cpu"):
        super().__init__()
        self.emb = Int8Embedding.from_float(nn.Embedding(50, 8, padding_idx=1, device=device))
        self.bag = Int8EmbeddingBag.from_float(nn.EmbeddingBag(50, 8, mode="sum", device=device,
                                                               dtype=torch.bfloat16))

    def forward(self, idx, flat, offsets, psw):
        return self.emb(idx), self.bag(flat, offsets, psw)


def _inputs(device):
    return (torch.randint(0, 50, (3, 4), device=device), torch.randint(0, 50, (10,), device=device),
            torch.tensor([0, 4, 4, 7], device=device), torch.rand(10, device=device))


def test_torchscript_save_load_in_new_process(tmp_path, device):
    model = _Model(device).eval()
    args = _inputs(device)
    eager = model(*args)
    scripted = torch.jit.script(model)
    for a, b in zip(scripted(*args), eager):
        assert torch.equal(a, b) and a.dtype == b.dtype
    path = tmp_path / "m.ts"
    scripted.save(str(path))
    loaded = torch.jit.load(str(path), map_location=device)
    for a, b in zip(loaded(*args), eager):
        assert torch.equal(a, b)
    torch.save(([a.cpu() for a in args], [e.cpu() for e in eager]), tmp_path / "io.pt")
    code = f"""
        import torch, q8
        m = torch.jit.load({str(path)!r}, map_location={device!r})
        args, expected = torch.load({str(tmp_path / 'io.pt')!r})
        got = m(*[a.to({device!r}) for a in args])
        for g, e in zip(got, expected):
            assert g.dtype == e.dtype
            torch.testing.assert_close(g.cpu(), e, rtol=0, atol=0)
        print("ok")
    """
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         env=dict(os.environ), cwd=ROOT, timeout=300)
    assert res.returncode == 0 and res.stdout.split() == ["ok"], res.stdout + res.stderr


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph(device, backend):
    torch._dynamo.reset()
    model = _Model(device).eval()
    args = _inputs(device)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    for a, b in zip(compiled(*args), model(*args)):
        assert torch.equal(a, b)
    args2 = (torch.randint(0, 50, (5, 2), device=device), torch.randint(0, 50, (13,), device=device),
             torch.tensor([0, 1, 9], device=device), torch.rand(13, device=device))
    for a, b in zip(compiled(*args2), model(*args2)):
        assert torch.equal(a, b)


def test_export(device):
    model = _Model(device).eval()
    args = _inputs(device)
    ep = torch.export.export(model, args)
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert OPS.embedding.default in targets and OPS.embedding_bag.default in targets
    for a, b in zip(ep.module()(*args), model(*args)):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------- opcheck

def sample_inputs(device, requires_grad):
    w8, ws = table(40, 12, device)
    L = torch.long

    def psw(*shape):
        return torch.rand(shape, device=device).requires_grad_(requires_grad)

    idx = torch.randint(0, 40, (9,), device=device)
    offs = torch.tensor([0, 2, 2, 6], device=device)
    return [
        (OPS.embedding.default, (w8, ws, torch.randint(0, 40, (3, 5), device=device), None)),
        (OPS.embedding.default, (w8, ws, torch.randint(0, 40, (), device=device, dtype=torch.int32),
                                 torch.bfloat16)),
        (OPS.embedding.default, (w8, ws, torch.randint(0, 40, (6, 2), device=device).t(), torch.float16)),
        (OPS.embedding.default, (w8, ws.clone().requires_grad_(requires_grad), torch.empty(0, dtype=L, device=device),
                                 torch.float64)),
        (OPS.embedding_bag.default, (w8, ws, idx, offs, "sum", psw(9), False, None, None)),
        (OPS.embedding_bag.default, (w8, ws, idx.int(), offs, "mean", None, True, int(idx[0]), torch.float16)),
        (OPS.embedding_bag.default, (w8, ws, idx.view(3, 3), None, "max", None, False, -3, torch.bfloat16)),
        (OPS.embedding_bag.default, (w8, ws, idx.view(3, 3), None, "sum", psw(3, 3), False, None, torch.float64)),
        (OPS.embedding_bag.default, (w8, ws, torch.empty(0, dtype=L, device=device), torch.zeros(2, dtype=L,
                                     device=device), "mean", None, False, None, None)),
    ]


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(device, requires_grad):
    for op, args in sample_inputs(device, requires_grad):
        if requires_grad and not any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            continue
        if requires_grad:
            # The forward with inputs that require grad is checked (schema, autograd
            # registration, fake tensors); test_aot_dispatch_dynamic would run the backward,
            # which raises by design (test_backward_through_the_frozen_table_raises).
            torch.library.opcheck(op, args, test_utils=("test_schema", "test_autograd_registration",
                                                        "test_faketensor"))
            with pytest.raises(RuntimeError, match=r"derivative for q8::embedding(_bag)? is not implemented"):
                torch.autograd.grad(op(*args).sum(), [a for a in args if isinstance(a, torch.Tensor)
                                                      and a.requires_grad])
        else:
            torch.library.opcheck(op, args)


def test_ops_carry_pt2_compliant_tag():
    for op in (OPS.embedding.default, OPS.embedding_bag.default):
        assert torch.Tag.pt2_compliant_tag in op.tags
