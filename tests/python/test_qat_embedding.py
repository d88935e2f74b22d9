"""QATEmbedding / QATEmbeddingBag (q8.prepare_qat, q8.prepare) and their conversion to Int8Embedding(Bag).

Reference: the float layer looking rows up in its table fake-quantized per row with
q8.quantize_weight's codes and scales (symmetric, [-127, 127]); the straight-through
gradient of a table that never clamps (the "current" observer's scale covers each row)
is the float layer's gradient exactly.
"""
import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import q8
from q8.nn import Int8Embedding, Int8EmbeddingBag, QATEmbedding, QATEmbeddingBag


def _fq_table(weight):
    w8, s = q8.quantize_weight(weight.detach().float())
    return (w8.float() * s[:, None]).to(weight.dtype)


class TextModel(nn.Module):
    def __init__(self, vocab=50, dim=16, classes=3, padding_idx=0):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=padding_idx)
        self.bag = nn.EmbeddingBag(vocab, dim, mode="mean")
        self.fc = nn.Linear(2 * dim, classes)

    def forward(self, ids):
        b = ids.size(0)
        offsets = torch.arange(0, ids.numel(), ids.size(1), device=ids.device)
        return self.fc(torch.cat([self.emb(ids).mean(1), self.bag(ids.reshape(-1), offsets)], 1).reshape(b, -1))


def test_qat_embedding_forward_and_straight_through_gradient():
    emb = nn.Embedding(40, 12, padding_idx=3)
    qat = QATEmbedding.from_float(emb)
    assert qat.weight is emb.weight and qat.padding_idx == 3
    idx = torch.tensor([[1, 3, 39], [0, 7, 7]])
    out = qat(idx)
    assert torch.equal(out, F.embedding(idx, _fq_table(emb.weight), padding_idx=3))
    out.square().sum().backward()
    ref_w = emb.weight.detach().clone().requires_grad_(True)
    F.embedding(idx, ref_w, padding_idx=3).square().sum().backward()
    # d/dw of (fq(w)[idx])^2 straight through: 2 fq(w)[idx] at the looked-up rows, 0 for padding_idx.
    expected = torch.zeros_like(emb.weight)
    expected.index_add_(0, idx.reshape(-1), 2 * out.detach().reshape(-1, 12))
    expected[3] = 0
    torch.testing.assert_close(emb.weight.grad, expected)
    assert emb.weight.grad[3].abs().sum() == 0 and ref_w.grad[3].abs().sum() == 0


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_qat_embedding_bag_forward(mode):
    bag = nn.EmbeddingBag(30, 8, mode=mode, include_last_offset=True)
    qat = QATEmbeddingBag.from_float(bag)
    idx = torch.randint(0, 30, (10,))
    offsets = torch.tensor([0, 4, 4, 10])
    psw = torch.rand(10) if mode == "sum" else None
    out = qat(idx, offsets, per_sample_weights=psw)
    ref = F.embedding_bag(idx, _fq_table(bag.weight), offsets, mode=mode, per_sample_weights=psw,
                          include_last_offset=True)
    assert torch.equal(out, ref)


def test_prepare_qat_train_convert_embeddings():
    torch.manual_seed(0)
    model = TextModel()
    ids = torch.randint(1, 50, (32, 6))
    target = (ids[:, 0] % 3)
    qat = q8.prepare_qat(copy.deepcopy(model))
    assert isinstance(qat.emb, QATEmbedding) and isinstance(qat.bag, QATEmbeddingBag)
    report = q8.conversion_report(qat)
    assert {e.name for e in report.converted} == {"emb", "bag", "fc"} and report.left_float == []
    opt = torch.optim.SGD(qat.parameters(), lr=0.5)
    losses = []
    for _ in range(20):
        loss = F.cross_entropy(qat(ids), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    q8.freeze_observers(qat)
    qat.eval()
    with torch.no_grad():
        fake = qat(ids)
    # The observers are frozen: the scales are those of the last training step, the codes the
    # final table's under them (what the eval forward above used).
    scale, zero_point = qat.emb.weight_fake_quant.calculate_qparams()
    w8 = q8.quantize(qat.emb.weight.detach(), scale, zero_point, 0, -127, 127, torch.int8)
    int8 = q8.convert(qat)  # in place
    assert type(int8.emb) is Int8Embedding and type(int8.bag) is Int8EmbeddingBag
    assert int8.emb.padding_idx == 0 and int8.bag.mode == "mean"
    with torch.no_grad():
        out = int8(ids)
    torch.testing.assert_close(out, fake, rtol=1e-4, atol=1e-5)
    # The converted tables are exactly the codes and scales the QAT tables used.
    assert torch.equal(int8.emb.weight_int8, w8) and torch.equal(int8.emb.weight_scale, scale)
    # And they script, save and load.
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(int8), buf)
    buf.seek(0)
    assert torch.equal(torch.jit.load(buf)(ids), out)


def test_prepare_calibrate_convert_embeddings():
    torch.manual_seed(1)
    model = TextModel().eval()
    ids = torch.randint(0, 50, (8, 5))
    with torch.no_grad():
        ref = model(ids)
    prepared = q8.prepare(copy.deepcopy(model))
    q8.calibrate(prepared, [torch.randint(0, 50, (8, 5)) for _ in range(4)], progress=False)
    int8 = q8.convert(prepared)
    assert type(int8.emb) is Int8Embedding and type(int8.bag) is Int8EmbeddingBag
    assert q8.conversion_report(int8).left_float == []
    with torch.no_grad():
        out = int8(ids)
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


@pytest.mark.parametrize("kwargs, reason", [({"max_norm": 1.0}, "max_norm"), ({"sparse": True}, "sparse")])
def test_refused_tables_stay_float_with_reason(kwargs, reason):
    model = nn.Sequential(nn.Embedding(20, 4, **kwargs), nn.Linear(4, 2))
    with pytest.warns(UserWarning):
        q8.prepare_qat(model)
    assert type(model[0]) is nn.Embedding
    (entry,) = q8.conversion_report(model).left_float
    assert entry.name == "0" and entry.status == "refused" and reason in entry.reason


def test_qat_embedding_bfloat16_table_converts_to_bfloat16_output():
    emb = nn.Embedding(16, 8).to(torch.bfloat16)
    model = q8.prepare_qat(nn.Sequential(emb))
    idx = torch.tensor([1, 5, 9])
    with torch.no_grad():
        fake = model(idx)
    assert fake.dtype == torch.bfloat16
    int8 = q8.convert(model.eval())
    out = int8(idx)
    assert type(int8[0]) is Int8Embedding and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), fake.float(), rtol=1e-2, atol=1e-2)


def test_qat_embedding_from_float_errors():
    with pytest.raises(TypeError, match="expected a torch.nn.Embedding"):
        QATEmbedding.from_float(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="expected a torch.nn.EmbeddingBag"):
        QATEmbeddingBag.from_float(nn.Embedding(2, 2))
