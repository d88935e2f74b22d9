"""histogram_observe / histogram_qparams: the histogram (percentile) observer.

Against float64 plain-PyTorch references (below): torch.histc's binning with the
same edges, a re-binning written another way (differences of the piecewise-linear
CDF of the old histogram at the new edges), the quantiles of that CDF, then
choose_qparams of the clipped range. Then edge inputs, input_range (distributed
use), the flag, torch.quantile of the data, errors, TorchScript, and the CUDA
kernels against the CPU's (skipped without a GPU).
"""
import io

import pytest
import torch

import q8
import reference as ref
from test_fake_quantize import assert_same

OPS = torch.ops.q8
INF = float("inf")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
F32 = torch.finfo(torch.float32)


# ---------------------------------------------------------------------------
# References (float64, plain PyTorch)
# ---------------------------------------------------------------------------
def new_state(bins, device="cpu"):
    return dict(histogram=torch.zeros(bins, dtype=torch.float64, device=device),
                hist_min=torch.full((1,), INF, device=device), hist_max=torch.full((1,), -INF, device=device))


def clone_state(st):
    return {k: v.clone() for k, v in st.items()}


def on(v=1, device="cpu", dtype=torch.long):
    return torch.tensor([v], dtype=dtype, device=device)


def observe(x, st, flag=None, input_range=None):
    q8.histogram_observe(x, on(device=x.device) if flag is None else flag, st["histogram"], st["hist_min"],
                         st["hist_max"], input_range)


def qparams(st, p, qmin, qmax, symmetric=False):
    return q8.histogram_qparams(st["histogram"], st["hist_min"], st["hist_max"], p, qmin, qmax, symmetric)


def ref_counts(x, lo, hi, bins):
    """torch.histc's bins with the same edges, values outside [lo, hi] clamped in (histc drops them)."""
    v = x.detach().reshape(-1).double().cpu()
    v = v[torch.isfinite(v)]
    if hi == lo:
        out = torch.zeros(bins, dtype=torch.float64)
        out[0] = v.numel()
        return out
    v = v.clamp(lo, hi)
    return torch.histc(v, bins, lo, hi)


def ref_rebin(h, lo, hi, nlo, nhi):
    """Old counts over [lo, hi] into the bins of [nlo, nhi]: F_old(c_{j+1}) - F_old(c_j), F_old the
    piecewise-linear CDF of the old bins (uniform density), c_j the new edges."""
    bins = h.numel()
    if hi == lo:  # a point mass at lo
        out = torch.zeros_like(h)
        out[int(((lo - nlo) * bins / (nhi - nlo)) // 1) if nhi > nlo else 0] = h.sum()
        return out
    old_edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64) * (hi - lo) + lo
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(h, 0)])
    new_edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64) * (nhi - nlo) + nlo
    idx = torch.searchsorted(old_edges, new_edges.clamp(lo, hi), right=True).clamp(1, bins)
    x0, x1 = old_edges[idx - 1], old_edges[idx]
    f = cdf[idx - 1] + (cdf[idx] - cdf[idx - 1]) * ((new_edges.clamp(lo, hi) - x0) / (x1 - x0))
    return f[1:] - f[:-1]


class RefHistogram:
    """The observer's semantics replayed in float64."""

    def __init__(self, bins):
        self.h = torch.zeros(bins, dtype=torch.float64)
        self.lo, self.hi = INF, -INF

    def observe(self, x, input_range=None):
        src = (input_range.reshape(-1) if input_range is not None else x.detach().reshape(-1)).float().cpu()
        src = src[torch.isfinite(src)]
        if src.numel() == 0:
            return
        bmin, bmax = src.min().item(), src.max().item()
        if self.lo > self.hi:  # first observation
            self.lo, self.hi = bmin, bmax
            self.h.zero_()
        else:
            nlo, nhi = min(self.lo, bmin), max(self.hi, bmax)
            if (nlo, nhi) != (self.lo, self.hi):
                self.h = ref_rebin(self.h, self.lo, self.hi, nlo, nhi)
                self.lo, self.hi = nlo, nhi
        self.h += ref_counts(x, self.lo, self.hi, self.h.numel())


def ref_quantile_range(h, lo, hi, p):
    """Asymmetric clipped range: the lower quantile at mass m from the left and from the right."""
    bins = h.numel()
    total = h.sum().item()
    if not lo <= hi:
        return 0.0, 0.0
    if p >= 100 or total <= 0 or hi == lo:
        return lo, hi
    m = total * ((1.0 - p / 100.0) / 2.0)
    w = (hi - lo) / bins

    def pos(hh):
        c = torch.cumsum(hh, 0)
        k = int(torch.searchsorted(c, torch.tensor([m], dtype=torch.float64)).item())
        before = c[k - 1].item() if k > 0 else 0.0
        return k + min(max((m - before) / hh[k].item(), 0.0), 1.0)

    t_lo = pos(h)
    t_hi = bins - pos(h.flip(0))
    a = torch.tensor(lo + t_lo * w, dtype=torch.float64).float().item()
    b = torch.tensor(lo + t_hi * w, dtype=torch.float64).float().item()
    a, b = min(max(a, lo), hi), min(max(b, lo), hi)
    return a, max(a, b)


def ref_abs_quantile(h, lo, hi, p):
    """a* with mass(|x| <= a*) = p/100 of the total (uniform density within a bin), float64 bisection."""
    bins = h.numel()
    e = torch.linspace(0, 1, bins + 1, dtype=torch.float64) * (hi - lo) + lo
    target = h.sum().item() * p / 100

    def g(a):
        ov = (torch.minimum(e[1:], torch.tensor(a)) - torch.maximum(e[:-1], torch.tensor(-a))).clamp(min=0)
        return (h * ov / (e[1:] - e[:-1])).sum().item()

    a0, a1 = 0.0, max(abs(lo), abs(hi))
    for _ in range(200):
        mid = (a0 + a1) / 2
        if g(mid) >= target:
            a1 = mid
        else:
            a0 = mid
    return a1


def f32_neighbors(a):
    t = torch.tensor([a], dtype=torch.float32)
    return [torch.nextafter(t, torch.tensor([-INF])).item(), t.item(), torch.nextafter(t, torch.tensor([INF])).item()]


def range_qparams(lo, hi, qmin, qmax, symmetric=False):
    return ref.choose_qparams(torch.tensor([lo, hi], dtype=torch.float32), qmin, qmax, symmetric)


def assert_state_close(st, r, exact=False):
    assert st["hist_min"].item() == r.lo and st["hist_max"].item() == r.hi
    h = st["histogram"].cpu()
    if exact:
        assert_same(h, r.h)
    else:
        torch.testing.assert_close(h, r.h, rtol=1e-9, atol=1e-9 * max(1.0, r.h.sum().item()))


# ---------------------------------------------------------------------------
# histogram_observe
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_first_observation_bins_like_histc(device, dtype):
    x = (torch.randn(40, 77) * 3 + 1).to(dtype)
    x[0, 0], x[1, 1], x[2, 2] = float("nan"), INF, -INF
    st = new_state(257, device)
    observe(x.to(device), st)
    fin = x.float()[torch.isfinite(x.float())]
    assert st["hist_min"].item() == fin.min().item() and st["hist_max"].item() == fin.max().item()
    expected = torch.histc(fin.double(), 257, fin.min().item(), fin.max().item())
    assert_same(st["histogram"].cpu(), expected)
    assert st["histogram"].sum().item() == 40 * 77 - 3
    assert st["histogram"][-1].item() >= 1  # the max is in the last bin


@pytest.mark.parametrize("bins", [1, 2, 64, 2048, 10000])
def test_range_growth_matches_replayed_reference(device, bins):
    st, r = new_state(bins, device), RefHistogram(bins)
    total = 0
    for step, (scale, shift) in enumerate([(1, 0), (0.5, 0), (2, 1), (1, -4), (3, 0), (0.1, 10), (1, 0)]):
        x = torch.randn(3000) * scale + shift
        observe(x.to(device), st)
        r.observe(x)
        total += x.numel()
        assert_state_close(st, r, exact=step == 0)
        h = st["histogram"].cpu()
        assert abs(h.sum().item() - total) <= 1e-9 * total  # mass preserved
        assert h.min().item() >= -1e-9
    # One more batch inside the range: no re-binning, exact integer counts added.
    before = st["histogram"].cpu().clone()
    x = torch.rand(500) * (st["hist_max"].item() - st["hist_min"].item()) * 0.5 + st["hist_min"].item()
    observe(x.to(device), st)
    assert_same(st["histogram"].cpu(), before + ref_counts(x, st["hist_min"].item(), st["hist_max"].item(), bins))


def test_rebinning_by_overlap_by_hand():
    # [0, 4] in 4 bins of counts 1, 2, 3, 4, then a value at 8: [0, 8] in 4 bins of width 2:
    # old bins 0-1 into new bin 0, 2-3 into new bin 1; the 8 into the last bin.
    st = new_state(4)
    observe(torch.tensor([0.0, 1.5, 1.5, 2.5, 2.5, 2.5, 4.0, 3.5, 3.5, 3.5]), st)
    assert st["histogram"].tolist() == [1, 2, 3, 4]
    observe(torch.tensor([8.0]), st)
    assert st["histogram"].tolist() == [3, 7, 0, 1]
    # Growth by half a bin to the left: [-1, 8], width 2.25; old bin [0, 2] (3) overlaps new bin 0
    # ([-1, 1.25]) over 1.25 and bin 1 ([1.25, 3.5]) over 0.75.
    observe(torch.tensor([-1.0]), st)
    expected = [1 + 3 * 1.25 / 2, 3 * 0.75 / 2 + 7 * 1.5 / 2, 7 * 0.5 / 2, 1]
    torch.testing.assert_close(st["histogram"], torch.tensor(expected, dtype=torch.float64), rtol=1e-15, atol=0)
    assert st["histogram"].sum().item() == pytest.approx(12, rel=1e-15)


def test_constant_input_is_a_point_mass_that_rebins(device):
    st, r = new_state(16, device), RefHistogram(16)
    x = torch.full((7,), 3.0)
    observe(x.to(device), st)
    r.observe(x)
    assert st["hist_min"].item() == 3.0 and st["hist_max"].item() == 3.0
    assert st["histogram"].cpu().tolist() == [7.0] + [0.0] * 15
    # Every percentile gives the range [3, 3] (extended to hold 0).
    for p in (50.0, 99.0, 100.0):
        for symmetric, (qmin, qmax) in ((False, (0, 255)), (True, (-128, 127))):
            s, z = qparams(st, p, qmin, qmax, symmetric)
            s_ref, z_ref = range_qparams(3.0, 3.0, qmin, qmax, symmetric)
            assert_same(s.cpu(), s_ref)
            assert_same(z.cpu(), z_ref)
    # The range grows: the point mass moves whole into the bin of 3.0.
    y = torch.tensor([-1.0, 7.0])
    observe(y.to(device), st)
    r.observe(y)
    assert_state_close(st, r, exact=True)
    assert st["histogram"].cpu()[int((3.0 + 1) * 16 / 8)].item() == 7.0
    # The same constant again: the range stays; the counts go in the bin of 3.0 too.
    observe(x.to(device), st)
    assert st["histogram"].cpu()[8].item() == 14.0


def test_single_element_empty_nan_and_zero_dim(device):
    st = new_state(8, device)
    observe(torch.empty(0, 5, device=device), st)
    assert st["hist_min"].item() == INF and st["histogram"].abs().sum().item() == 0
    observe(torch.full((3, 4), float("nan"), device=device), st)
    observe(torch.tensor([INF, -INF], device=device), st)
    assert st["hist_min"].item() == INF and st["hist_max"].item() == -INF
    observe(torch.tensor([2.5], device=device), st)
    assert st["hist_min"].item() == 2.5 and st["hist_max"].item() == 2.5 and st["histogram"][0].item() == 1
    observe(torch.tensor(-0.5, device=device), st)  # 0-dim
    assert st["hist_min"].item() == -0.5 and st["histogram"].sum().item() == 2
    assert st["histogram"][0].item() == 1 and st["histogram"][-1].item() == 1
    before = clone_state(st)
    observe(torch.empty(0, device=device), st)
    for k in st:
        assert_same(st[k], before[k])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_equal_their_float32_values(device, dtype):
    x = (torch.randn(513) * 5).to(dtype)
    a, b = new_state(100, device), new_state(100, device)
    observe(x.to(device), a)
    observe(x.float().to(device), b)
    for k in a:
        assert_same(a[k], b[k])


def test_non_contiguous_input(device):
    base = torch.randn(64, 48, device=device) * 2
    for x in (base.t(), base[::3, 1::2], base.unsqueeze(0).expand(3, 64, 48)):
        a, b = new_state(50, device), new_state(50, device)
        observe(x, a)
        observe(x.contiguous(), b)
        for k in a:
            assert_same(a[k], b[k])


@pytest.mark.parametrize("flag_dtype", [torch.bool, torch.int32, torch.int64, torch.float32, torch.bfloat16])
def test_observer_off_changes_nothing(device, flag_dtype):
    st = new_state(32, device)
    observe(torch.randn(100, device=device), st)
    before = clone_state(st)
    for off in (torch.tensor(0, device=device).to(flag_dtype), torch.tensor([0], device=device).to(flag_dtype)):
        observe(torch.randn(100, device=device) * 50, st, flag=off)
        observe(torch.randn(100, device=device), st, flag=off, input_range=torch.tensor([-9.0, 9.0], device=device))
        for k in st:
            assert_same(st[k], before[k])
    if flag_dtype.is_floating_point:
        observe(torch.randn(100, device=device), st, flag=torch.tensor(-0.0, device=device).to(flag_dtype))
        assert_same(st["histogram"], before["histogram"])
    observe(torch.randn(100, device=device), st, flag=torch.tensor(1, device=device).to(flag_dtype))
    assert st["histogram"].sum().item() == 200


def test_input_range_makes_ranks_agree(device):
    """Two ranks with different data, the range from the all-reduced batch min / max: identical
    ranges at every step, and the sum of their histograms equals one observer of all the data
    with the same input_range."""
    bins = 128
    ranks = [new_state(bins, device) for _ in range(2)]
    union = new_state(bins, device)
    r = RefHistogram(bins)
    for step in range(5):
        xs = [torch.randn(400) * (1 + step + k) + k * step for k in range(2)]
        rng = torch.tensor([min(x.min().item() for x in xs), max(x.max().item() for x in xs)])
        for x, st in zip(xs, ranks):
            observe(x.to(device), st, input_range=rng.to(device))
        observe(torch.cat(xs).to(device), union, input_range=rng.to(device))
        r.observe(torch.cat(xs), input_range=rng)
        assert ranks[0]["hist_min"].item() == ranks[1]["hist_min"].item() == union["hist_min"].item()
        assert ranks[0]["hist_max"].item() == ranks[1]["hist_max"].item() == union["hist_max"].item()
        torch.testing.assert_close(ranks[0]["histogram"] + ranks[1]["histogram"], union["histogram"],
                                   rtol=1e-12, atol=1e-9)
        assert_state_close(union, r, exact=step == 0)


def test_input_range_clamps_and_grows_without_data(device):
    st = new_state(10, device)
    # Values outside the given range go into the edge bins.
    observe(torch.tensor([-5.0, 0.5, 1.0, 20.0], device=device), st, input_range=torch.tensor([0.0, 1.0], device=device))
    assert st["hist_min"].item() == 0.0 and st["hist_max"].item() == 1.0
    assert st["histogram"].cpu().tolist() == [1, 0, 0, 0, 0, 1, 0, 0, 0, 2]
    # An empty batch still grows the range (every rank grows the same way).
    observe(torch.empty(0, device=device), st, input_range=torch.tensor([-1.0, 1.0], device=device))
    assert st["hist_min"].item() == -1.0 and st["histogram"].sum().item() == 4
    assert st["histogram"].cpu().tolist() == [0, 0, 0, 0, 0, 1, 0, 1, 0, 2]
    # One element v is the range [v, v]; non-finite elements are ignored; a smaller range keeps the current one.
    observe(torch.tensor([3.0], device=device), st, input_range=torch.tensor([3.0], device=device))
    assert st["hist_max"].item() == 3.0 and st["histogram"][-1].item() == 1
    observe(torch.tensor([0.0], device=device), st, input_range=torch.tensor([float("nan"), 0.5], device=device))
    assert st["hist_min"].item() == -1.0 and st["hist_max"].item() == 3.0 and st["histogram"].sum().item() == 6
    # A fresh state with only a range: range set, no mass; qparams use the full range.
    st = new_state(10, device)
    observe(torch.empty(0, device=device), st, input_range=torch.tensor([-2.0, 6.0], device=device))
    assert st["hist_min"].item() == -2.0 and st["histogram"].abs().sum().item() == 0
    s, z = qparams(st, 99.0, 0, 255)
    s_ref, z_ref = range_qparams(-2.0, 6.0, 0, 255)
    assert_same(s.cpu(), s_ref)
    assert_same(z.cpu(), z_ref)


def test_content_before_first_observation_is_ignored():
    st = new_state(4)
    st["histogram"].fill_(5.0)
    observe(torch.tensor([0.0, 1.0]), st)
    assert st["histogram"].tolist() == [1, 0, 0, 1]


# ---------------------------------------------------------------------------
# histogram_qparams
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("qrange", [(0, 255), (-128, 127), (-8, 7), (0, 65535)])
def test_percentile_100_is_choose_qparams_of_all_data(device, qrange):
    qmin, qmax = qrange
    st, xs = new_state(2048, device), []
    for step in range(4):
        xs.append(torch.randn(700) * (1 + step) + 0.5 * step)
        observe(xs[-1].to(device), st)
    for symmetric in (False, True):
        s, z = qparams(st, 100.0, qmin, qmax, symmetric)
        s_ref, z_ref = q8.choose_qparams(torch.cat(xs), qmin, qmax, symmetric)
        assert s.dim() == 0 and z.dim() == 0 and s.dtype == torch.float32 and z.dtype == torch.int32
        assert s.device.type == device
        assert_same(s.cpu(), s_ref)
        assert_same(z.cpu(), z_ref)


@pytest.mark.parametrize("p", [99.99, 99.9, 99.0, 90.0, 50.0, 1.0])
def test_asymmetric_percentile_matches_reference(device, p):
    """Integer counts (no re-binning): every sum is exact, so the clipped range and the qparams are
    the reference's bit for bit."""
    g = torch.Generator().manual_seed(int(p * 100))
    x = torch.cat([torch.randn(5000, generator=g), torch.rand(300, generator=g) * 20 - 4])
    for bins in (7, 64, 2048):
        st = new_state(bins, device)
        observe(x.to(device), st)
        lo, hi = ref_quantile_range(st["histogram"].cpu(), st["hist_min"].item(), st["hist_max"].item(), p)
        for qmin, qmax in ((0, 255), (-128, 127)):
            s, z = qparams(st, p, qmin, qmax)
            s_ref, z_ref = range_qparams(lo, hi, qmin, qmax)
            assert_same(s.cpu(), s_ref)
            assert_same(z.cpu(), z_ref)


def recover_range(s, z):
    """[lo, hi] from qparams with the 16-bit range [0, 65535] (resolution (hi - lo) / 131070)."""
    s, z = s.item(), z.item()
    return -z * s, (65535 - z) * s


def test_asymmetric_percentile_after_rebinning_matches_reference(device):
    st, r = new_state(512, device), RefHistogram(512)
    for step in range(5):
        x = torch.randn(4000) * (1 + step) - step
        observe(x.to(device), st)
        r.observe(x)
    for p in (99.9, 99.0, 80.0):
        lo, hi = ref_quantile_range(r.h, r.lo, r.hi, p)
        got = recover_range(*qparams(st, p, 0, 65535))
        w = (r.hi - r.lo) / 512
        assert abs(got[0] - lo) <= 1e-3 * w + (hi - lo) / 131070 and abs(got[1] - hi) <= 1e-3 * w + (hi - lo) / 65535


@pytest.mark.parametrize("p", [99.99, 99.0, 90.0, 30.0])
def test_symmetric_percentile_matches_reference(device, p):
    g = torch.Generator().manual_seed(7)
    x = torch.cat([torch.randn(6000, generator=g) * 2 + 0.7, torch.rand(100, generator=g) * 30 - 5])
    for bins in (33, 2048):
        st = new_state(bins, device)
        observe(x.to(device), st)
        a = ref_abs_quantile(st["histogram"].cpu(), st["hist_min"].item(), st["hist_max"].item(), p)
        a_up = torch.tensor([a], dtype=torch.float64).float()
        if a_up.item() < a:
            a_up = torch.nextafter(a_up, torch.tensor([INF]))
        for qmin, qmax in ((-128, 127), (0, 255)):
            s, z = qparams(st, p, qmin, qmax, True)
            # The kernel's a is the smallest float32 with G(a) >= target: a* rounded up, or a neighbour
            # when the float64 sums of G and of the reference round the other way at a*.
            allowed = [range_qparams(-v, v, qmin, qmax, True) for v in f32_neighbors(a_up.item())]
            assert any(torch.equal(s.cpu(), sa) and torch.equal(z.cpu(), za) for sa, za in allowed), (s, allowed)
            assert z.item() == (0 if qmin < 0 else 128)


def test_quantiles_within_one_bin_of_torch_quantile(device):
    g = torch.Generator().manual_seed(11)
    x = torch.cat([torch.randn(200000, generator=g), torch.randn(500, generator=g) * 40])
    bins = 2048
    st = new_state(bins, device)
    for chunk in x.chunk(4):
        observe(chunk.to(device), st)
    w = (st["hist_max"].item() - st["hist_min"].item()) / bins
    xs = x.double().sort().values
    n = xs.numel()

    def slack(q):
        # torch.quantile interpolates order statistics at rank q (n - 1); the histogram's quantile is
        # that of the (binned) empirical CDF at mass q n: the two definitions differ by up to one
        # order-statistic gap, which can exceed a bin in the sparse tails.
        k = min(max(int(q * (n - 1)), 1), n - 2)
        return w + (xs[k + 1] - xs[k - 1]).item()

    for p in (99.9, 99.0, 95.0):
        q = (1 - p / 100) / 2
        lo, hi = recover_range(*qparams(st, p, 0, 65535))
        t_lo, t_hi = torch.quantile(x.double(), torch.tensor([q, 1 - q], dtype=torch.float64)).tolist()
        assert abs(lo - t_lo) <= slack(q) and abs(hi - t_hi) <= slack(1 - q), (p, lo, t_lo, hi, t_hi, w)
        s, _ = qparams(st, p, 0, 65535, True)
        a = s.item() * 65535 / 2
        xa = x.double().abs()
        t_a = torch.quantile(xa, p / 100).item()
        ka = min(int(p / 100 * (n - 1)), n - 2)
        gap = (xa.sort().values[ka + 1] - xa.sort().values[ka - 1]).item()
        assert abs(a - t_a) <= w + gap, (p, a, t_a, w)
    # Where the data is dense (the body of the distribution) the gap is far below a bin: within one bin.
    for p in (80.0, 50.0):
        q = (1 - p / 100) / 2
        lo, hi = recover_range(*qparams(st, p, 0, 65535))
        t_lo, t_hi = torch.quantile(x.double(), torch.tensor([q, 1 - q], dtype=torch.float64)).tolist()
        assert abs(lo - t_lo) <= w and abs(hi - t_hi) <= w, (p, lo, t_lo, hi, t_hi, w)


def test_empty_histogram_gives_choose_qparams_of_an_empty_input(device):
    st = new_state(16, device)
    for qmin, qmax, symmetric in ((0, 255, False), (-128, 127, False), (-128, 127, True), (0, 255, True)):
        s, z = qparams(st, 99.0, qmin, qmax, symmetric)
        s_ref, z_ref = q8.choose_qparams(torch.empty(0), qmin, qmax, symmetric)
        assert_same(s.cpu(), s_ref)
        assert_same(z.cpu(), z_ref)
    assert qparams(st, 99.0, 0, 255)[0].item() == F32.eps


def test_qparams_do_not_touch_the_state_and_accept_any_one_element_shape():
    st = new_state(64)
    observe(torch.randn(300), st)
    before = clone_state(st)
    s1, z1 = qparams(st, 99.0, 0, 255)
    s2, z2 = q8.histogram_qparams(st["histogram"], st["hist_min"].reshape(()), st["hist_max"].reshape(1, 1), 99.0,
                                  0, 255)
    assert_same(s1, s2)
    assert_same(z1, z2)
    for k in st:
        assert_same(st[k], before[k])


# ---------------------------------------------------------------------------
# Autograd, errors, TorchScript
# ---------------------------------------------------------------------------
def test_input_requiring_grad_and_version_counter():
    st = new_state(32)
    x = torch.randn(50, requires_grad=True)
    v = st["histogram"]._version
    observe(x, st)
    assert st["histogram"]._version > v and st["histogram"].sum().item() == 50
    s, z = qparams(st, 99.0, 0, 255)
    assert not s.requires_grad
    st["hist_min"].requires_grad_()
    with pytest.raises(RuntimeError, match="hist_min must not require grad"):
        observe(x, st)
    with torch.no_grad():
        observe(x, st)
    assert st["histogram"].sum().item() == 100


def _obs(x=None, flag=None, h=None, lo=None, hi=None, rng=None):
    st = new_state(8)
    return q8.histogram_observe(torch.randn(4) if x is None else x, on() if flag is None else flag,
                                st["histogram"] if h is None else h, st["hist_min"] if lo is None else lo,
                                st["hist_max"] if hi is None else hi, rng)


def _qp(h=None, lo=None, hi=None, p=99.0, qmin=0, qmax=255):
    st = new_state(8)
    return q8.histogram_qparams(st["histogram"] if h is None else h, st["hist_min"] if lo is None else lo,
                                st["hist_max"] if hi is None else hi, p, qmin, qmax)


ERRORS = [
    (lambda: _obs(x=torch.randn(4).double()), r"q8.histogram_observe: input must be float32, float16 or bfloat16"),
    (lambda: _obs(x=torch.randint(0, 3, (4,))), r"input must be float32, float16 or bfloat16"),
    (lambda: _obs(flag=torch.tensor([1, 1])), r"observer_on must have exactly one element, got shape \[2\]"),
    (lambda: _obs(flag=torch.tensor([1j])), r"observer_on must be a bool, integer or floating-point tensor"),
    (lambda: _obs(h=torch.zeros(8)), r"histogram must be float64, got Float"),
    (lambda: _obs(h=torch.zeros(0, dtype=torch.float64)), r"histogram must be 1-D with at least one bin, got shape \[0\]"),
    (lambda: _obs(h=torch.zeros(2, 4, dtype=torch.float64)), r"histogram must be 1-D with at least one bin"),
    (lambda: _obs(h=torch.zeros(16, dtype=torch.float64)[::2]), r"histogram must be contiguous"),
    (lambda: _obs(lo=torch.full((1,), INF).double()), r"hist_min must be float32, got Double"),
    (lambda: _obs(hi=torch.full((2,), -INF)), r"hist_max must have exactly one element, got shape \[2\]"),
    (lambda: _obs(hi=torch.full((1,), -INF, device="meta")), r"hist_max must be on the same device as input"),
    (lambda: _obs(h=torch.zeros(8, dtype=torch.float64, device="meta")), r"histogram must be on the same device as input"),
    (lambda: _obs(rng=torch.zeros(3)), r"input_range must have one or two elements \(\[lo, hi\]\), got shape \[3\]"),
    (lambda: _obs(rng=torch.zeros(2).double()), r"input_range must be float32, got Double"),
    (lambda: _obs(rng=torch.zeros(2, device="meta")), r"input_range must be on the same device as input"),
    (lambda: _qp(p=0.0), r"q8.histogram_qparams: percentile must be in \(0, 100\], got 0"),
    (lambda: _qp(p=100.5), r"percentile must be in \(0, 100\], got 100.5"),
    (lambda: _qp(p=float("nan")), r"percentile must be in \(0, 100\]"),
    (lambda: _qp(qmin=5, qmax=5), r"quant_min must be less than quant_max"),
    (lambda: _qp(qmin=0, qmax=70000), r"must lie inside the 16-bit range"),
    (lambda: _qp(h=torch.zeros(8, dtype=torch.int64)), r"histogram must be float64, got Long"),
    (lambda: _qp(lo=torch.zeros(1, dtype=torch.float16)), r"hist_min must be float32, got Half"),
    (lambda: _qp(hi=torch.zeros(1, device="meta")), r"hist_max must be on the same device as histogram"),
]


@pytest.mark.parametrize("call,pattern", ERRORS)
def test_bad_arguments_raise_clear_errors(call, pattern):
    with pytest.raises(RuntimeError, match=pattern):
        call()


def test_errors_leave_the_state_untouched():
    st = new_state(8)
    with pytest.raises(RuntimeError):
        q8.histogram_observe(torch.randn(5), on(), st["histogram"], st["hist_min"], st["hist_max"], torch.zeros(3))
    assert st["hist_min"].item() == INF and st["histogram"].abs().sum().item() == 0


@torch.jit.script
def _scripted_calibration(xs: list[torch.Tensor], h: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                          p: float) -> tuple[torch.Tensor, torch.Tensor]:
    flag = torch.ones(1, dtype=torch.long)
    for x in xs:
        torch.ops.q8.histogram_observe(x, flag, h, lo, hi)
    return torch.ops.q8.histogram_qparams(h, lo, hi, p, -128, 127, True)


def test_torchscript_function_save_load():
    xs = [torch.randn(100) * (i + 1) for i in range(3)]
    st_a, st_b = new_state(256), new_state(256)
    for x in xs:
        observe(x, st_a)
    expected = qparams(st_a, 99.5, -128, 127, True)
    buf = io.BytesIO()
    torch.jit.save(_scripted_calibration, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    assert "q8::histogram_observe" in str(loaded.graph) and "q8::histogram_qparams" in str(loaded.graph)
    got = loaded(xs, st_b["histogram"], st_b["hist_min"], st_b["hist_max"], 99.5)
    for k in st_a:
        assert_same(st_b[k], st_a[k])
    assert_same(got[0], expected[0])
    assert_same(got[1], expected[1])


# ---------------------------------------------------------------------------
# Devices and threads: the same bits everywhere
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("bins", [1, 100, 2048, 9000])
def test_device_and_threads_match_cpu(device, bins):
    """The same steps on `device` and on the CPU with one thread: every state bit and every qparams equal
    (on the CPU itself: the result does not depend on the thread count)."""
    old = torch.get_num_threads()
    st_cpu, st_dev = new_state(bins), new_state(bins, device)
    steps = [(torch.randn(5000) * (1 + i) - i, None) for i in range(4)]
    steps += [(torch.randn(70000) * 3, torch.tensor([-20.0, 25.0])), (torch.full((10,), 30.0), None),
              (torch.randn(3, 5).to(torch.bfloat16), None)]
    for x, rng in steps:
        x.view(-1)[::97] = float("nan")
        torch.set_num_threads(1)
        try:
            observe(x, st_cpu, input_range=rng)
        finally:
            torch.set_num_threads(old)
        torch.set_num_threads(2 if device == "cpu" else old)
        try:
            observe(x.to(device), st_dev, input_range=None if rng is None else rng.to(device))
        finally:
            torch.set_num_threads(old)
        for k in st_cpu:
            assert_same(st_dev[k].cpu(), st_cpu[k])
        for p in (100.0, 99.9, 97.0):
            for qmin, qmax, symmetric in ((0, 255, False), (-128, 127, True)):
                a = qparams(st_cpu, p, qmin, qmax, symmetric)
                b = qparams(st_dev, p, qmin, qmax, symmetric)
                assert_same(b[0].cpu(), a[0])
                assert_same(b[1].cpu(), a[1])
