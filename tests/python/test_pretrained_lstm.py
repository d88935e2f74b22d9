"""examples/python/pretrained_lstm.py on real pretrained weights: Resemblyzer's speaker encoder (3-layer LSTM +
Linear, shipped in its PyPI wheel), quantized with q8.quantize_dynamic, on speech synthesized by espeak-ng.

scripts/setup.sh installs both (resemblyzer with --no-deps: only its weights file is read). The bounds come from
the full run in docs/rnn.md (24 utterances: q8 dynamic cosine to float >= 0.951, weight_only >= 0.988, torch.ao's
dynamic LSTM 0.557-0.678): a regression in the int8 LSTM (a wrong gate, scale or state) drops the cosine far below.
"""
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _example():
    spec = importlib.util.spec_from_file_location(
        "pretrained_lstm", os.path.join(ROOT, "examples", "python", "pretrained_lstm.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _have_resemblyzer():
    try:
        importlib.metadata.distribution("resemblyzer")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


pytestmark = [
    pytest.mark.single_torch,  # a long numerics run; the torch matrix's other releases deselect it
    pytest.mark.skipif(not _have_resemblyzer(), reason="resemblyzer's weights are not installed "
                       "(scripts/setup.sh installs them: pip install --no-deps resemblyzer==0.1.4)"),
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (scripts/setup.sh "
                       "installs it)"),
]


def test_pretrained_speaker_encoder_int8_keeps_embeddings():
    ex = _example()
    torch.manual_seed(0)
    fp = ex.load_float_model(ex.weights_path(None))
    models = {"fp32": fp, "q8": ex.quantize_q8(fp), "q8_wo": ex.quantize_q8(fp, "weight_only"),
              "ao": ex.quantize_ao(fp)}
    mels = []
    with tempfile.TemporaryDirectory() as tmp:
        for v, voice in enumerate(ex.VOICES[:3]):
            mels.append(ex.mel_frames(ex.synthesize(voice, ex.SENTENCES[0], os.path.join(tmp, f"{v}.wav"))))
    parts = [ex.partials(m) for m in mels]
    owners = torch.cat([torch.full((len(p),), i) for i, p in enumerate(parts)])
    batch = torch.cat(parts)
    emb = {k: ex.embed_utterances(m, batch, owners, len(mels)) for k, m in models.items()}
    cos = {k: (e * emb["fp32"]).sum(1) for k, e in emb.items()}
    assert float(cos["q8"].min()) >= 0.93, cos["q8"]
    assert float(cos["q8_wo"].min()) >= 0.98, cos["q8_wo"]
    # q8 (per-row activation scales) stays closer to float than torch.ao (one scale per tensor).
    assert float(cos["q8"].mean()) > float(cos["ao"].mean()), (cos["q8"], cos["ao"])
