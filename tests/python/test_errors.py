"""Bad input gives a RuntimeError that names the argument, never a crash or a wrong result."""
import pytest
import torch

import q8

X = torch.randn(4, 6)
S = torch.tensor(0.1)
Z = torch.tensor(0, dtype=torch.int32)
SC = torch.full((6,), 0.1)
ZC = torch.zeros(6, dtype=torch.int32)

CASES = [
    # (call, message pattern)
    (lambda: q8.fake_quantize_per_tensor(X, torch.tensor(0.0), Z, -128, 127), r"scale must be finite and > 0, got 0"),
    (lambda: q8.fake_quantize_per_tensor(X, torch.tensor(-1.0), Z, -128, 127), r"scale must be finite and > 0, got -1"),
    (lambda: q8.fake_quantize_per_tensor(X, torch.tensor(float("nan")), Z, -128, 127), r"scale must be finite"),
    (lambda: q8.fake_quantize_per_tensor(X, torch.tensor(float("inf")), Z, -128, 127), r"scale must be finite"),
    (lambda: q8.fake_quantize_per_tensor(X, torch.tensor(1e-39), Z, -128, 127),
     r"scale must be at least 1.17549e-38 \(the smallest normal float32, so that 1 / scale is finite\)"),
    (lambda: q8.quantize(X, torch.full((6,), 1e-40).index_fill_(0, torch.tensor([0]), 0.1), ZC, 1, -128, 127,
                         torch.int8), r"scale must be at least .* at channel 1"),
    (lambda: q8.fake_quantize_per_channel(X, SC.clone().index_fill_(0, torch.tensor([3]), 0.0), ZC, 1, -128, 127),
     r"scale must be finite and > 0, got 0 at channel 3"),
    (lambda: q8.fake_quantize_per_tensor(X, S.double(), Z, -128, 127), r"scale must be float32, got Double"),
    (lambda: q8.fake_quantize_per_tensor(X, S, Z.to(torch.int8), -128, 127), r"zero_point must be int32, int64 or float32"),
    (lambda: q8.fake_quantize_per_tensor(X, S, Z, 127, 127), r"quant_min must be less than quant_max"),
    (lambda: q8.fake_quantize_per_tensor(X, S, Z, 5, -5), r"quant_min must be less than quant_max"),
    (lambda: q8.fake_quantize_per_tensor(X, S, Z, -40000, 127), r"16-bit range"),
    (lambda: q8.fake_quantize_per_tensor(X, S, Z, 0, 70000), r"16-bit range"),
    (lambda: q8.fake_quantize_per_tensor(X, S, torch.tensor(300), 0, 255), r"zero_point must lie in \[quant_min, quant_max\]"),
    (lambda: q8.fake_quantize_per_tensor(X, S, torch.tensor(float("nan")), 0, 255), r"zero_point must be finite"),
    (lambda: q8.fake_quantize_per_tensor(X, torch.full((2,), 0.1), Z, -128, 127), r"scale must have exactly one element"),
    (lambda: q8.fake_quantize_per_tensor(X, S, torch.zeros(3, dtype=torch.int32), -128, 127), r"zero_point must have exactly one element"),
    (lambda: q8.fake_quantize_per_channel(X, SC, ZC, 2, -128, 127), r"axis must be in \[-2, 1\] for a 2-dim input, got 2"),
    (lambda: q8.fake_quantize_per_channel(X, SC, ZC, -3, -128, 127), r"axis must be in \[-2, 1\]"),
    (lambda: q8.fake_quantize_per_channel(torch.tensor(1.0), SC, ZC, 0, -128, 127), r"axis must be None for a 0-dim input"),
    (lambda: q8.fake_quantize_per_channel(X, SC[:5], ZC, 1, -128, 127), r"scale must be 1-D with input.size\(axis\) = 6"),
    (lambda: q8.fake_quantize_per_channel(X, SC, ZC[:4], 1, -128, 127), r"zero_point must be 1-D with input.size\(axis\) = 6"),
    (lambda: q8.fake_quantize_per_channel(X, SC.reshape(2, 3), ZC, 1, -128, 127), r"scale must be 1-D"),
    (lambda: q8.fake_quantize_per_tensor(X.to(torch.int32), S, Z, -128, 127), r"input must be float32, float16 or bfloat16, got Int"),
    (lambda: q8.fake_quantize_per_tensor(X > 0, S, Z, -128, 127), r"input must be float32, float16 or bfloat16, got Bool"),
    (lambda: q8.fake_quantize_per_tensor(X.double(), S, Z, -128, 127), r"input must be float32, float16 or bfloat16, got Double"),
    (lambda: q8.fake_quantize_per_tensor(X, S.to("meta"), Z, -128, 127), r"scale must be on the same device as input"),
    (lambda: q8.choose_qparams(X.long(), -128, 127), r"input must be float32"),
    (lambda: q8.choose_qparams(X, 10, 10), r"quant_min must be less than quant_max"),
    (lambda: q8.choose_qparams(X, -128, 127, False, 5), r"axis must be in"),
    (lambda: q8.quantize(X, S, Z, None, -128, 127, torch.uint8), r"does not fit in dtype"),
    (lambda: q8.quantize(X, S, Z, None, 0, 300, torch.uint8), r"does not fit in dtype"),
    (lambda: q8.quantize(X, S, Z, None, -128, 127, torch.float32), r"dtype must be torch.int8, torch.uint8 or torch.int32"),
    (lambda: q8.quantize(X, S, Z, None, -128, 127, torch.int16), r"dtype must be torch.int8"),
    (lambda: q8.dequantize(X, S, Z), r"input must be int8, uint8 or int32, got Float"),
    (lambda: q8.dequantize(X.to(torch.int8), S, Z, None, torch.int32), r"dtype must be float32, float16 or bfloat16"),
    (lambda: q8.dequantize(X.to(torch.int8), S, torch.tensor(200)), r"zero_point must lie in \[quant_min, quant_max\] = \[-128, 127\]"),
    (lambda: q8.dequantize(X.to(torch.int8), SC, ZC, 0), r"scale must be 1-D with input.size\(axis\) = 4"),
]


@pytest.mark.parametrize("call,pattern", CASES, ids=[str(i) for i in range(len(CASES))])
def test_bad_input_raises_clear_error(call, pattern):
    with pytest.raises(RuntimeError, match=pattern) as info:
        call()
    assert str(info.value).startswith("q8.")


def test_errors_under_meta_and_compile():
    """The Meta kernels check the same things, so torch.compile reports the same error."""
    with pytest.raises(RuntimeError, match=r"axis must be in"):
        q8.fake_quantize_per_channel(X.to("meta"), SC.to("meta"), ZC.to("meta"), 3, -128, 127)
    with pytest.raises(RuntimeError, match=r"quant_min must be less than quant_max"):
        torch.ops.q8.fake_quantize_per_tensor(X.to("meta"), S.to("meta"), Z.to("meta"), 3, 3)

    torch._dynamo.reset()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(x, s, z):
        return torch.ops.q8.fake_quantize_per_channel(x, s, z, 1, -128, 127)

    with pytest.raises(Exception, match=r"scale must be 1-D with input.size\(axis\) = 6"):
        f(X, SC[:5], ZC)


def test_bad_gradient_arguments():
    with pytest.raises(RuntimeError, match=r"grad and mask must have the same shape"):
        torch.ops.q8._fake_quantize_mask_backward(X, torch.ones(3, dtype=torch.bool))
    with pytest.raises(RuntimeError, match=r"mask must be bool"):
        torch.ops.q8._fake_quantize_mask_backward(X, torch.ones(4, 6))
    with pytest.raises(RuntimeError, match=r"grad must have input's shape"):
        torch.ops.q8._fake_quantize_learnable_backward(X[:2], X, S, Z, None, -128, 127)
    with pytest.raises(RuntimeError, match=r"grad must have input's dtype"):
        torch.ops.q8._fake_quantize_learnable_backward(X.half(), X, S, Z, None, -128, 127)
