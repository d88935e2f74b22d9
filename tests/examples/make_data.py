"""Models and data for the C++ example tests (scripts/test_examples.sh).

    python tests/examples/make_data.py --out DIR

Writes into DIR:

* ``digits.pt``: ``torch.save`` of a dict ``x_train``, ``y_train``, ``x_test``,
  ``y_test`` (scikit-learn's digits, 8x8 images standardized, a fixed split; a
  synthetic 10-class set of 8x8 "images" when scikit-learn is missing), read by
  ``qat_train --data``;
* ``inputs.pt`` / ``labels.pt``: the test images [N, 1, 8, 8] float32 and labels
  [N] int64 (``torch.save`` of a tensor each), and ``test.pt``: both in a dict
  ``{"inputs", "labels"}``;
* ``int8_qat.pt`` (``q8.prepare_qat`` -> train -> ``q8.convert``: ``Int8Conv2d`` and
  static ``Int8Linear``) and ``int8_dynamic.pt`` (``q8.quantize_dynamic``), each
  saved with ``torch.jit.save``;
* ``<model>.logits.pt``: the logits of the *reloaded* TorchScript model on the
  test inputs, computed in batches of 256 on one thread (what ``infer --threads 1``
  does), and ``<model>.accuracy.txt``.

Small and quick on purpose (a few seconds on one core): the test compares C++
with Python, not the quality of the model (q8-demo does that).

    python tests/examples/make_data.py --demo-out DIR

instead takes the TorchScript files that q8-demo wrote into DIR (``q8-demo --out
DIR``: float32.pt, int8_dynamic.pt, int8_static.pt, int8_qat.pt), and writes
beside them the demo's test set (``inputs.pt``, ``labels.pt``, ``test.pt``, from
``q8.demo.load_data``) and the same ``<model>.logits.pt`` / ``.accuracy.txt``.
"""
import argparse
import os
import warnings

import torch
from torch import nn

import q8

BATCH = 256


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc1 = nn.Linear(8 * 8 * 8, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


def load_digits_data():
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        return synthetic_data(), "synthetic (scikit-learn not installed)"
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    n_test = 540
    x_train, y_train, x_test, y_test = x[n_test:], y[n_test:], x[:n_test], y[:n_test]
    mean, std = x_train.mean(), x_train.std()
    return ((x_train - mean) / std, y_train, (x_test - mean) / std, y_test), "scikit-learn digits"


def synthetic_data():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(10, 1, 8, 8, generator=g)

    def make(n):
        y = torch.randint(0, 10, (n,), generator=g)
        return centers[y] + 0.8 * torch.randn(n, 1, 8, 8, generator=g), y

    x_train, y_train = make(1257)
    x_test, y_test = make(540)
    return x_train, y_train, x_test, y_test


def train(model, x, y, epochs, lr):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), 64):
            idx = perm[i:i + 64]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def batched_logits(model, x):
    return torch.cat([model(x[i:i + BATCH]) for i in range(0, len(x), BATCH)])


def save_reference(name, loaded, x_test, y_test, out, source):
    """Python's logits and accuracy of a reloaded TorchScript model, as ``infer --threads 1`` computes them."""
    logits = batched_logits(loaded, x_test)
    acc = 100.0 * int((logits.argmax(1) == y_test).sum()) / len(y_test)
    torch.save(logits, os.path.join(out, name + ".logits.pt"))
    with open(os.path.join(out, name + ".accuracy.txt"), "w") as f:
        f.write(f"{acc:.2f}\n")
    print(f"{name}: {source}, test accuracy {acc:.2f} % (Python, reloaded TorchScript)")


def save_test_set(out, x_test, y_test):
    torch.save(x_test, os.path.join(out, "inputs.pt"))
    torch.save(y_test, os.path.join(out, "labels.pt"))
    torch.save({"inputs": x_test, "labels": y_test}, os.path.join(out, "test.pt"))


def demo_references(out):
    from q8 import demo

    _, _, x_test, y_test, _ = demo.load_data()
    save_test_set(out, x_test, y_test)
    names = [n for n in ("int8_qat", "int8_static", "int8_dynamic", "float32")
             if os.path.exists(os.path.join(out, n + ".pt"))]
    if not names:
        raise SystemExit(f"no q8-demo TorchScript file in {out}")
    for name in names:
        save_reference(name, torch.jit.load(os.path.join(out, name + ".pt")).eval(), x_test, y_test, out,
                       "q8-demo's model and test set")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--out", help="train small models and write them, the data and Python's results here")
    g.add_argument("--demo-out", help="a q8-demo --out folder: write its test set and Python's results there")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.demo_out:
        demo_references(args.demo_out)
        return
    os.makedirs(args.out, exist_ok=True)

    (x_train, y_train, x_test, y_test), source = load_digits_data()
    torch.save({"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test},
               os.path.join(args.out, "digits.pt"))
    save_test_set(args.out, x_test, y_test)

    float_model = train(SmallCNN(), x_train, y_train, epochs=4, lr=3e-3)
    qat = q8.prepare_qat(SmallCNN().eval(), q8.QConfig())
    qat.load_state_dict(float_model.state_dict(), strict=False)
    train(qat, x_train, y_train, epochs=1, lr=2e-4)
    dyn = SmallCNN()
    dyn.load_state_dict(float_model.state_dict())
    models = {
        "int8_qat": q8.convert(qat.eval()).eval(),
        "int8_dynamic": q8.quantize_dynamic(dyn.eval()).eval(),
    }

    for name, model in models.items():
        path = os.path.join(args.out, name + ".pt")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(torch.jit.script(model), path)
            loaded = torch.jit.load(path).eval()
        save_reference(name, loaded, x_test, y_test, args.out, source)


if __name__ == "__main__":
    main()
