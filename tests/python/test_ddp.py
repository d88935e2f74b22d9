"""QAT and calibration under torch.distributed: 2 processes, gloo backend, CPU.

With ``sync`` on (the default), every rank must end with bit-identical observer
state and qparams, equal to one process observing the union of the ranks'
batches; with ``sync`` off, the ranks' states differ (the control that shows the
test can fail). DDP runs with ``broadcast_buffers=False``, so that DDP itself does
not copy rank 0's buffers to the other rank and hide a missing all-reduce.
"""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import q8

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

WORLD = 2
STEPS = 6


def model_fn():
    torch.manual_seed(0)  # the same initial weights on every rank
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 16), nn.ReLU(),
                         nn.Linear(16, 3))


def batch(step, rank):
    g = torch.Generator().manual_seed(1000 * step + rank)
    # the ranks see different ranges, so unsynchronized observers would disagree
    return torch.randn(8, 1, 8, 8, generator=g) * (1 + rank + step % 3), torch.randint(0, 3, (8,), generator=g)


def observer_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "fake_quant" in k}


SCENARIOS = [  # (mode, sync, activation observer)
    ("qat", True, "moving_average"),
    ("qat", True, "minmax"),
    ("calibrate", True, "moving_average"),
    ("calibrate", True, "minmax"),
    ("calibrate", True, "percentile"),
    ("qat", False, "moving_average"),
]


def _run_scenario(rank, mode, sync, observer):
    cfg = q8.QConfig(sync=sync, activation_observer=observer)
    if mode == "qat":
        model = q8.prepare_qat(model_fn(), cfg)
        ddp = nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
        for step in range(STEPS):
            x, y = batch(step, rank)
            loss = F.cross_entropy(ddp(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    else:
        model = q8.prepare(model_fn(), cfg)
        q8.calibrate(model, [batch(step, rank) for step in range(STEPS)], progress=False)
    state = observer_state(model)
    state.update({f"param.{k}": v.detach().clone() for k, v in model.named_parameters()})
    return state


def _worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        results = [_run_scenario(rank, *scenario) for scenario in SCENARIOS]
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Every scenario's final state on each rank: one 2-process run serves every test."""
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
    per_rank = [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]
    return {scenario: [per_rank[r][i] for r in range(WORLD)] for i, scenario in enumerate(SCENARIOS)}


def first_input_reference(observer):
    """The first layer's input observer fed, at each step, with the union of the ranks' batches."""
    fq = q8.nn.FakeQuantize(observer)
    for step in range(STEPS):
        fq(torch.cat([batch(step, r)[0] for r in range(WORLD)]))
    return fq


@pytest.mark.parametrize("mode,observer", [(m, o) for m, sync, o in SCENARIOS if sync])
def test_synced_observers_are_identical_on_every_rank(ranks, mode, observer):
    states = ranks[(mode, True, observer)]
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        if not key.endswith("histogram"):  # each rank keeps its own counts; their sum gives the qparams
            assert torch.equal(states[0][key], states[1][key]), key
    ref = first_input_reference(observer)
    for name in ("running_min", "running_max", "scale", "zero_point"):
        assert torch.equal(states[0][f"0.input_fake_quant.{name}"], getattr(ref, name)), name
    if observer == "percentile":
        # the ranks' histograms add up to the histogram of the union
        total = states[0]["0.input_fake_quant.histogram"] + states[1]["0.input_fake_quant.histogram"]
        torch.testing.assert_close(total, ref.histogram, rtol=1e-12, atol=1e-9)


def test_unsynced_observers_differ(ranks):
    states = ranks[("qat", False, "moving_average")]
    assert not torch.equal(states[0]["0.input_fake_quant.running_max"], states[1]["0.input_fake_quant.running_max"])
    assert not torch.equal(states[0]["0.input_fake_quant.scale"], states[1]["0.input_fake_quant.scale"])
    # DDP still keeps the parameters equal
    assert torch.equal(states[0]["param.0.weight"], states[1]["param.0.weight"])

