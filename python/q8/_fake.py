"""Fake (meta) kernels that must know the device, registered from Python.

Every q8 op has a C++ Meta kernel (csrc/ops/meta/) except ``pack_weight``: its
output size depends on the device's packed layout (csrc/ops/packed_weight.h), and
a C++ Meta kernel only sees meta tensors. Its fake kernel lives here, where
FakeTensors keep their device. It mirrors ``detail::check_pack_weight_args``.
"""
import torch

_MAX_K = (1 << 24) - 1


def _ceil_div(a, b):
    return (a + b - 1) // b


def packed_size(n, k, device_type):
    """Bytes of ``q8.pack_weight`` output for an [n, k] weight on ``device_type``."""
    if device_type == "cuda":
        # 128-byte header region, int8 [N16][K16], int32 row sums [N16].
        n16, k16 = _ceil_div(n, 16) * 16, _ceil_div(k, 16) * 16
        return 128 + n16 * k16 + n16 * 4
    # CPU: 64-byte header, 64 bytes per (panel of 16 columns, group of 4 k), row sums.
    panels, groups = _ceil_div(n, 16), _ceil_div(k, 4)
    return 64 + panels * groups * 64 + panels * 64


@torch.library.register_fake("q8::pack_weight")
def _pack_weight_fake(weight_int8):
    torch._check(weight_int8.dtype == torch.int8,
                 lambda: f"q8.pack_weight: weight_int8 must be int8, got {weight_int8.dtype}")
    torch._check(weight_int8.dim() == 2,
                 lambda: "q8.pack_weight: weight_int8 must be 2-D [out_features, in_features], got shape "
                 f"{list(weight_int8.shape)}")
    n, k = weight_int8.shape
    torch._check(k <= _MAX_K, lambda: f"q8.pack_weight: in_features must be at most {_MAX_K}, got {k}")
    return weight_int8.new_empty((packed_size(n, k, weight_int8.device.type),), dtype=torch.uint8)
