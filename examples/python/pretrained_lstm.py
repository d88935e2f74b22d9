"""A pretrained LSTM quantized with q8: Resemblyzer's speaker encoder (weights shipped in its PyPI wheel).

    pip install --no-deps resemblyzer        # only for resemblyzer/pretrained.pt (17 MB); not imported
    apt-get install espeak-ng                # synthetic speech in several voices (optional: --no-speech)
    python examples/python/pretrained_lstm.py [--quick] [--weights PATH]

The model (Resemblyzer's ``VoiceEncoder``, rebuilt here in plain torch from its state dict):
40-band mel frames (16 kHz, 25 ms window, 10 ms hop) -> LSTM(40, 256, 3 layers, batch_first) ->
final hidden state of the last layer -> Linear(256, 256) -> ReLU -> L2 normalization. An
utterance is cut into partials of 160 frames (1.6 s, a new one every ~0.77 s); its embedding
is the normalized mean of the partials' embeddings.

Four versions of the model: float32; q8 (``q8.nn.Int8LSTM.from_float`` + ``q8.nn.Int8Linear``,
dynamic int8 activations); torch.ao (``quantize_dynamic(model, {nn.LSTM, nn.Linear})``); q8 with
``activation="weight_only"`` (int8 weights, float activations). The model's input is a *power*
(not log) mel spectrogram whose bands span orders of magnitude within a frame: an 8-bit input row
(q8: one scale per frame; torch.ao: one scale for the whole tensor) loses the quiet bands, which is
where the dynamic versions' error comes from.
Quality against float32: cosine similarity of the utterance embeddings, and whether a
speaker-verification system built on them decides and ranks the same way (espeak-ng voices as
speakers, three sentences each). Speed: one batch of partials and a batch-1 (streaming) partial,
interleaved, median of the repetitions, 2 threads.
"""
import argparse
import copy
import importlib.metadata
import os
import statistics
import subprocess
import tempfile
import time
import wave
import warnings

import numpy as np
import torch
import torch.nn as nn

import q8
from q8.nn import Int8Linear, Int8LSTM

SR = 16000
N_FFT = 400          # 25 ms
HOP = 160            # 10 ms
N_MELS = 40
PARTIAL = 160        # frames per partial utterance
VOICES = ["en-us+m1", "en-us+m3", "en-us+f1", "en-us+f4", "en-gb+m2", "en-gb+f2", "en-gb-scotland+m4",
          "en-029+f3"]
SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the quiet river bank.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "A rainbow is a division of white light into many beautiful colors after the rain.",
]


class SpeakerEncoder(nn.Module):
    """Resemblyzer's VoiceEncoder.forward in plain torch."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(N_MELS, 256, 3, batch_first=True)
        self.linear = nn.Linear(256, 256)
        self.relu = nn.ReLU()

    def forward(self, mels):
        _, (hidden, _) = self.lstm(mels)
        embeds_raw = self.relu(self.linear(hidden[-1]))
        return embeds_raw / torch.norm(embeds_raw, dim=1, keepdim=True)


def weights_path(explicit):
    if explicit:
        return explicit
    try:
        return str(importlib.metadata.distribution("resemblyzer").locate_file("resemblyzer/pretrained.pt"))
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit("resemblyzer is not installed: pip install --no-deps resemblyzer (or pass --weights)")


def load_float_model(path):
    state = torch.load(path, map_location="cpu")["model_state"]
    model = SpeakerEncoder()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not missing and set(unexpected) <= {"similarity_weight", "similarity_bias"}, (missing, unexpected)
    return model.eval()


# ------------------------------------------------------------------------------ audio features

def hz_to_mel(f):
    """Slaney's mel scale (librosa's default, htk=False)."""
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz = 1000.0
    logstep = np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_hz / f_sp + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mels)


def mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_mel = 1000.0 / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, 1000.0 * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filters():
    """librosa.filters.mel(sr=16000, n_fft=400, n_mels=40) (Slaney scale and area normalization)."""
    fft_freqs = np.linspace(0, SR / 2, N_FFT // 2 + 1)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(SR / 2), N_MELS + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:N_MELS + 2] - mel_f[:N_MELS]))[:, None]
    return torch.from_numpy(weights).float()


def mel_frames(wav):
    """librosa.feature.melspectrogram(y=wav, sr=16000, n_fft=400, hop_length=160, n_mels=40).T: power
    mel spectrogram (Resemblyzer's features; not log), centered frames, zero padding, Hann window."""
    x = torch.from_numpy(wav).float()
    spec = torch.stft(x, N_FFT, HOP, window=torch.hann_window(N_FFT, periodic=True), center=True,
                      pad_mode="constant", return_complex=True).abs() ** 2
    return (mel_filters() @ spec).T.contiguous()


def synthesize(voice, text, path):
    subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", path, text], check=True, capture_output=True)
    with wave.open(path) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float64) / 32768.0
    # Resample to 16 kHz (linear interpolation: enough for a demo) and normalize the volume to
    # Resemblyzer's -30 dBFS (increase only).
    t = np.arange(int(len(pcm) * SR / rate)) * (rate / SR)
    wav = np.interp(t, np.arange(len(pcm)), pcm)
    rms_db = 10 * np.log10(np.mean(wav ** 2) + 1e-12)
    gain = 10 ** ((-30 - rms_db) / 20)
    return (wav * max(gain, 1.0)).astype(np.float32)


def partials(mel):
    """Resemblyzer's compute_partial_slices(rate=1.3, min_coverage=0.75) on a mel spectrogram."""
    n_frames = mel.shape[0]
    step = int(round(SR / 1.3 / HOP))
    starts = list(range(0, max(1, n_frames - PARTIAL + step + 1), step))
    if len(starts) > 1 and (n_frames - starts[-1]) / PARTIAL < 0.75:
        starts = starts[:-1]
    padded = torch.cat([mel, mel.new_zeros(max(0, starts[-1] + PARTIAL - n_frames), N_MELS)])
    return torch.stack([padded[s:s + PARTIAL] for s in starts])


def embed_utterances(model, batch, owners, n_utts):
    with torch.inference_mode():
        e = model(batch)
    out = torch.zeros(n_utts, e.size(1))
    out.index_add_(0, owners, e)
    return out / out.norm(dim=1, keepdim=True)


# ------------------------------------------------------------------------------ models

def quantize_q8(model, activation="dynamic"):
    # One call converts the LSTM (q8.nn.Int8LSTM) and the Linear (q8.nn.Int8Linear).
    q = q8.quantize_dynamic(copy.deepcopy(model), activation=activation)
    assert isinstance(q.lstm, Int8LSTM) and isinstance(q.linear, Int8Linear), q8.conversion_report(q)
    return q.eval()


def quantize_ao(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {nn.LSTM, nn.Linear}, dtype=torch.qint8)


def timed(fns, reps):
    times = {k: [] for k in fns}
    keys = list(fns)
    for r in range(reps):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return {k: (statistics.median(v), (max(v) - min(v)) / statistics.median(v)) for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer voices and repetitions (seconds)")
    ap.add_argument("--weights", help="path to resemblyzer's pretrained.pt (default: the installed wheel's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    reps = 3 if args.quick else args.reps

    path = weights_path(args.weights)
    fp = load_float_model(path)
    models = {"fp32": fp, "q8": quantize_q8(fp), "torch.ao": quantize_ao(fp),
              "q8 weight_only": quantize_q8(fp, "weight_only")}
    print(f"weights: {path}; torch {torch.__version__}; threads {torch.get_num_threads()}; "
          f"q8 isa {q8.ops.cpu_isa()}")

    voices = VOICES[:4] if args.quick else VOICES
    sentences = SENTENCES[:2] if args.quick else SENTENCES
    mels, speakers = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for v, voice in enumerate(voices):
            for s, text in enumerate(sentences):
                wav = synthesize(voice, text, os.path.join(tmp, f"{v}_{s}.wav"))
                mels.append(mel_frames(wav))
                speakers.append(v)
    parts = [partials(m) for m in mels]
    owners = torch.cat([torch.full((len(p),), i) for i, p in enumerate(parts)])
    batch = torch.cat(parts)
    n = len(mels)
    print(f"{len(voices)} espeak-ng voices x {len(sentences)} sentences = {n} utterances, "
          f"{batch.size(0)} partials of {PARTIAL} frames ({batch.size(0) * PARTIAL} LSTM rows)")

    emb = {k: embed_utterances(m, batch, owners, n) for k, m in models.items()}
    spk = torch.tensor(speakers)
    same = spk[:, None] == spk[None, :]
    off_diag = ~torch.eye(n, dtype=torch.bool)

    def verification(e):
        sim = e @ e.T
        # Equal-error-rate threshold of the float model's scores is used for every model.
        return sim

    sim_f = verification(emb["fp32"])
    pos, neg = sim_f[same & off_diag], sim_f[~same]
    thresholds = torch.linspace(0, 1, 1001)
    frr = torch.stack([(pos < t).float().mean() for t in thresholds])
    far = torch.stack([(neg >= t).float().mean() for t in thresholds])
    i_eer = int(torch.argmin((frr - far).abs()))
    threshold = float(thresholds[i_eer])
    print(f"float32 model: EER {float((frr[i_eer] + far[i_eer]) / 2):.1%} at threshold {threshold:.3f} "
          f"(same-speaker mean cosine {pos.mean():.3f}, different {neg.mean():.3f})")

    print("\n| model | cosine to fp32 (min / mean) | decisions agreeing with fp32 | nearest-utterance "
          "agreement | speaker id top-1 | max abs sim diff |")
    print("|---|---|---|---|---|---|")
    dec_f = (sim_f >= threshold)[off_diag]
    nn_f = (sim_f - 2 * torch.eye(n)).argmax(1)
    for k, e in emb.items():
        cos = (e * emb["fp32"]).sum(1)
        sim = verification(e)
        dec = (sim >= threshold)[off_diag]
        nearest = (sim - 2 * torch.eye(n)).argmax(1)
        top1 = (spk[nearest] == spk).float().mean()
        print(f"| {k} | {cos.min():.5f} / {cos.mean():.5f} | {(dec == dec_f).float().mean():.1%} | "
              f"{(nearest == nn_f).float().mean():.1%} | {top1:.1%} | {(sim - sim_f).abs().max():.4f} |")

    one = batch[:1]
    with torch.inference_mode():
        for m in models.values():
            m(batch)
            m(one)
        big = timed({k: (lambda m=m: m(batch)) for k, m in models.items()}, reps)
        small = timed({k: (lambda m=m: m(one)) for k, m in models.items()}, reps)
    print(f"\n| model | batch of {batch.size(0)} partials (ms) | vs fp32 | batch 1 (ms) | vs fp32 |")
    print("|---|---|---|---|---|")
    for k in models:
        print(f"| {k} | {big[k][0] * 1e3:.1f} | {big['fp32'][0] / big[k][0]:.2f}x | {small[k][0] * 1e3:.2f} | "
              f"{small['fp32'][0] / small[k][0]:.2f}x |")
    print(f"(median of {reps} interleaved runs; spread (max-min)/median: "
          + ", ".join(f"{k} {big[k][1]:.0%}/{small[k][1]:.0%}" for k in models) + ")")
    print(f"q8 vs torch.ao: batch {big['torch.ao'][0] / big['q8'][0]:.2f}x, "
          f"batch 1 {small['torch.ao'][0] / small['q8'][0]:.2f}x")


if __name__ == "__main__":
    main()
