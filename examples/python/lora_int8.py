"""Low-rank adapters (LoRA) trained on a frozen int8 model.

    python examples/python/lora_int8.py            # a few seconds of training
    python examples/python/lora_int8.py --quick    # smoke run (for tests)

1. trains a float32 MLP on scikit-learn's bundled digits (no download) for the
   task "digit d";
2. converts it with ``q8.quantize_dynamic``: every ``nn.Linear`` becomes a
   ``q8.nn.Int8Linear`` (int8 weights in buffers, not parameters: frozen);
3. wraps each int8 layer in a ``LoRALinear``: ``base(x) + (x A^T) B^T * alpha / r``
   with float A (small random) and B (zeros, so the adapted model starts exactly
   as the int8 one);
4. fine-tunes only A and B on a shifted task, "(d + 1) mod 10" (the same images,
   relabelled): gradients flow through the int8 layers (q8.linear's backward,
   straight-through for the activation quantization) to the adapters below them;
5. prints that the int8 base is bit-for-bit unchanged, the loss before / after,
   the accuracy on both tasks before / after, and the memory of base and adapters.
"""
import argparse
import copy
import time

import torch
from torch import nn
import torch.nn.functional as F

import q8


class LoRALinear(nn.Module):
    """``base(x) + scaling * (x @ A^T) @ B^T`` around a frozen layer; only A and B train."""

    def __init__(self, base: nn.Module, rank: int = 8, alpha: float = 16.0):
        super().__init__()
        self.base = base
        self.scaling = alpha / rank
        self.lora_a = nn.Parameter(torch.randn(rank, base.in_features) / base.in_features**0.5)
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        return self.base(x) + F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scaling


def add_lora(model: nn.Module, rank: int) -> nn.Module:
    for name, child in model.named_children():
        if isinstance(child, q8.nn.Int8Linear):
            setattr(model, name, LoRALinear(child, rank))
        else:
            add_lora(child, rank)
    return model


def load_digits(seed=0):
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.tensor(d.data, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    x, y = x[perm], y[perm]
    n_train = int(0.8 * len(x))
    mean, std = x[:n_train].mean(0), x[:n_train].std(0) + 1e-3
    x = (x - mean) / std
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def train(model, params, x, y, epochs, lr, seed):
    opt = torch.optim.AdamW(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        total = 0.0
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(x))
    return losses


@torch.no_grad()
def evaluate(model, x, y):
    logits = model(x)
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item() * 100


def nbytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer epochs (smoke run)")
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    (xtr, ytr), (xte, yte) = load_digits(args.seed)
    shift = lambda y: (y + 1) % 10  # noqa: E731  the new task: the next digit
    float_epochs, lora_epochs = (2, 2) if args.quick else (30, 30)
    if args.quick:
        xtr, ytr = xtr[:512], ytr[:512]

    # 1. float model
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    train(model, model.parameters(), xtr, ytr, float_epochs, 3e-3, args.seed)
    print(f"float32 model: test accuracy {evaluate(model, xte, yte)[1]:.1f} % on 'digit d'")

    # 2. int8 base
    int8 = q8.quantize_dynamic(copy.deepcopy(model))
    base_state = {k: v.clone() for k, v in int8.state_dict().items()}
    print(f"int8 model (q8.quantize_dynamic): test accuracy {evaluate(int8, xte, yte)[1]:.1f} % on 'digit d'")

    # 3. adapters (the base's buffers are not parameters: only A and B train)
    lora = add_lora(int8, args.rank)
    params = [p for p in lora.parameters() if p.requires_grad]
    assert all(n.split(".")[-1] in ("lora_a", "lora_b") for n, _ in lora.named_parameters())
    loss0, acc_old0 = evaluate(lora, xte, yte)
    loss_new0, acc_new0 = evaluate(lora, xte, shift(yte))

    # 4. fine-tune on the shifted task
    losses = train(lora, params, xtr, shift(ytr), lora_epochs, 1e-2, args.seed + 1)
    loss_new1, acc_new1 = evaluate(lora, xte, shift(yte))
    _, acc_old1 = evaluate(lora, xte, yte)

    # 5. report
    unchanged = all(torch.equal(base_state[k], v) for k, v in lora.state_dict().items() if k in base_state) and \
        len([k for k in lora.state_dict() if "base." in k]) == len(base_state)
    base_bytes = nbytes(int8.buffers())
    adapter_bytes = nbytes(params)
    float_bytes = nbytes(model.parameters())
    print(f"int8 base unchanged: {unchanged}")
    print(f"train loss on 'digit d + 1' per epoch: {' '.join(f'{v:.3f}' for v in losses)}")
    print(f"test loss on 'digit d + 1': {loss_new0:.3f} -> {loss_new1:.3f}")
    print(f"test accuracy on 'digit d + 1': {acc_new0:.1f} % -> {acc_new1:.1f} %")
    print(f"test accuracy on 'digit d':     {acc_old0:.1f} % -> {acc_old1:.1f} %")
    print(f"memory: float32 model {float_bytes / 1024:.1f} KiB, int8 base {base_bytes / 1024:.1f} KiB, "
          f"adapters (rank {args.rank}) {adapter_bytes / 1024:.1f} KiB "
          f"({100 * adapter_bytes / base_bytes:.1f} % of the base)")
    print(f"({time.time() - t0:.1f} s)")
    if not unchanged:
        raise SystemExit("the int8 base changed")
    if not args.quick and not loss_new1 < loss_new0:
        raise SystemExit("the loss did not fall")


if __name__ == "__main__":
    main()
