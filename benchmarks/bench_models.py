"""End-to-end inference latency of transformer models: q8.quantize_dynamic vs float32 vs torch.ao dynamic int8.

    python benchmarks/bench_models.py [--quick] [--threads N] [--profile] [--out FILE]

Models (random weights, eval, ``torch.no_grad()``): ``nn.TransformerEncoder`` and
Hugging Face BERT, GPT-2 and Llama (``transformers`` needed for those; rows skipped
without it), each at hidden 512, 2 layers, in two shapes: ``batch x seq >= 512`` rows
(prefill / encoder) and a small-M, decode-like call (a few rows; no KV cache, so it is
the whole model on a few tokens).

Contenders, interleaved in one loop (bench_fake_quantize.bench, median of the timed runs):

* float32: the model as built;
* torch.ao: ``torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, torch.qint8)``
  (per-tensor int8 weights, dynamic int8 activations; it converts no ``nn.MultiheadAttention``
  in-projection and no Hugging Face ``Conv1D``, so GPT-2 and the encoder's attention stay float);
* q8: ``q8.quantize_dynamic(model)`` (every projection, including MHA and ``Conv1D``).

Attention matmuls, softmax, norms, embeddings and activations stay float in both
quantized forms. ``--profile`` prints, for the 512-row case of each model, where the
q8 model's time goes (torch.profiler, self CPU time by op).
"""
import argparse
import copy
import os
import sys
import warnings

import torch
from torch import nn

import q8

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_fake_quantize import bench, header  # noqa: E402

HIDDEN, LAYERS, HEADS, FFN, VOCAB = 512, 2, 8, 2048, 8192


def encoder(h, ffn):
    layer = nn.TransformerEncoderLayer(h, HEADS, ffn, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)


def hf_models(h, ffn, vocab):
    try:
        import transformers as tf
    except ImportError:
        return {}
    return {
        "BERT": lambda: tf.BertModel(tf.BertConfig(hidden_size=h, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                                   intermediate_size=ffn, vocab_size=vocab,
                                                   max_position_embeddings=1024)),
        "GPT-2": lambda: tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=h, n_layer=LAYERS, n_head=HEADS, vocab_size=vocab,
                                                          n_positions=1024, bos_token_id=0, eos_token_id=0)),
        "Llama": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(hidden_size=h, intermediate_size=ffn * 2 // 3,
                                                            num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                                            num_key_value_heads=HEADS, vocab_size=vocab,
                                                            max_position_embeddings=1024)),
    }


def torch_ao(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)


def runner(model, inputs, hf, no_fastpath=False):
    if no_fastpath:
        # torch.ao's dynamic Linear has a weight() method, not a tensor: the encoder layer's fused
        # fast path crashes on it, so torch.ao's encoder runs the layer's non-fused path.
        def run():
            enabled = torch.backends.mha.get_fastpath_enabled()
            torch.backends.mha.set_fastpath_enabled(False)
            try:
                with torch.no_grad():
                    model(inputs)
            finally:
                torch.backends.mha.set_fastpath_enabled(enabled)
        return run
    if hf:
        def run():
            with torch.no_grad():
                model(inputs, use_cache=False)
        return run

    def run():
        with torch.no_grad():
            model(inputs)
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    h, ffn, vocab = (128, 512, 1024) if args.quick else (HIDDEN, FFN, VOCAB)
    big, small = ((4, 16), (2, 2)) if args.quick else ((4, 128), (4, 2))
    reps, target = (3, 0.01) if args.quick else (7, 0.15)

    builders = {"nn.TransformerEncoder": lambda: encoder(h, ffn)}
    builders.update(hf_models(h, ffn, vocab))
    lines = header(torch.get_num_threads(), "glibc defaults")
    lines[0] = "# Transformer inference: q8.quantize_dynamic vs float32 vs torch.ao dynamic int8 (CPU)"
    lines += [f"- models: hidden {h}, {LAYERS} layers, {HEADS} heads, FFN {ffn} (Llama: {ffn * 2 // 3} gated), "
              f"vocab {vocab}; median of {reps} timed runs",
              "",
              "| model | batch x seq (rows) | float32 ms | torch.ao ms | q8 ms | q8 vs float32 | q8 vs torch.ao "
              "| torch.ao vs float32 | noise |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    print("\n".join(lines), flush=True)
    profiles = []
    for name, build in builders.items():
        hf = name != "nn.TransformerEncoder"
        model = build().eval()
        ao_model = torch_ao(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q_model = q8.quantize_dynamic(copy.deepcopy(model))
        for batch, seq in (big, small):
            inputs = torch.randint(0, vocab, (batch, seq)) if hf else torch.randn(batch, seq, h)
            fns = [runner(model, inputs, hf), runner(ao_model, inputs, hf, no_fastpath=not hf),
                   runner(q_model, inputs, hf)]
            (t_f, t_ao, t_q), _, noise = bench(fns, reps, target)
            row = (f"| {name} | {batch} x {seq} ({batch * seq}) | {t_f * 1e3:.2f} | {t_ao * 1e3:.2f} | "
                   f"{t_q * 1e3:.2f} | {t_f / t_q:.2f}x | {t_ao / t_q:.2f}x | {t_f / t_ao:.2f}x | {noise:.0%} |")
            lines.append(row)
            print(row, flush=True)
            if args.profile and (batch, seq) == big:
                profiles.append((name, q_model, fns[2], model, fns[0]))
    notes = ["", "- ratios: time of the baseline / time of q8 (higher is better for q8); noise: largest "
             "interquartile range / median of a row's timed runs.",
             "- torch.ao converts no MHA in-projection and no HF Conv1D: on nn.TransformerEncoder its attention "
             "is float, on GPT-2 only lm_head is int8. torch.ao's encoder runs with the MHA fast path off (its dynamic "
             "Linear crashes the fused path); float32's encoder takes torch's fused fast path."]
    lines += notes
    print("\n".join(notes))
    for name, _, run_q, _, run_f in profiles:
        from torch.profiler import ProfilerActivity, profile

        for label, run in (("q8", run_q), ("float32", run_f)):
            run()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(3):
                    run()
            table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10)
            text = f"\n## {name} ({label}), {big[0]} x {big[1]} rows: top ops by self CPU time (3 calls)\n{table}"
            lines.append(text)
            print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
