import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

import q8  # noqa: E402,F401  (loads the ops)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and hasattr(torch.ops.q8, "fake_quantize_per_tensor")
                     and torch._C._dispatch_has_kernel_for_dispatch_key("q8::fake_quantize_per_tensor", "CUDA")
                     else [])


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        params = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
            "cuda" not in DEVICES, reason="no GPU, or q8 built without CUDA kernels"))]
        metafunc.parametrize("device", params)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
