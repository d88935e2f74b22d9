"""q8: int8 quantization operators for PyTorch.

``import q8`` loads libq8, which registers the ``torch.ops.q8.*`` operators
(CPU, CUDA when built with it, Meta and Autograd kernels). The functions below
are typed, documented wrappers of those operators.
"""
import os
import re

import torch

__version__ = "0.1.0"

_HERE = os.path.dirname(os.path.abspath(__file__))
_LIB = os.path.join(_HERE, "libq8.so")


def _built_for_torch(path):
    """The torch version libq8 was built against, from the marker csrc/library.cpp puts in the file."""
    with open(path, "rb") as f:
        match = re.search(rb"Q8_BUILD_INFO:torch=([0-9A-Za-z.+_-]*);", f.read())
    return match.group(1).decode() if match else None


def _load_library():
    if not os.path.exists(_LIB):
        raise ImportError(
            f"q8: the compiled library {_LIB} is missing. Build it with "
            "`pip install --no-build-isolation -e .` from the q8 checkout (or run scripts/setup.sh)."
        )
    built = _built_for_torch(_LIB)
    running = torch.__version__.split("+")[0]
    if built is None or built.split("+")[0] != running:
        raise ImportError(
            f"q8: {_LIB} was built against torch {built or 'unknown'}, but torch {torch.__version__} is "
            "installed. Rebuild q8 (`pip install --no-build-isolation -e .`) with the torch you use."
        )
    try:
        torch.ops.load_library(_LIB)
    except OSError as e:
        raise ImportError(f"q8: could not load {_LIB} ({e}). Rebuild q8 with the torch you use.") from e


_load_library()

from . import _fake  # noqa: E402,F401  (device-aware fake kernels)

# The workflow lives in q8.quantization (not q8/quantize.py: that submodule would
# shadow the q8.quantize op).
from . import nn  # noqa: E402
from . import onnx, serialization  # noqa: E402,F401  (q8.onnx.export, q8.serialization)
from .serialization import load  # noqa: E402
from .config import QConfig  # noqa: E402
from .registry import (  # noqa: E402
    ConversionReport,
    conversion_report,
    register_converter,
    registered_converters,
    unregister_converter,
)
from .quantization import (  # noqa: E402
    calibrate,
    convert,
    enable_fake_quant,
    enable_observer,
    freeze_bn_stats,
    freeze_observers,
    prepare,
    prepare_qat,
    quantize_dynamic,
    update_bn_stats,
)
from .fuse import fuse_modules  # noqa: E402
from .lower import lower  # noqa: E402
from .ops import (  # noqa: E402
    choose_qparams,
    conv2d,
    max_pool2d,
    cpu_isa,
    cpu_isas,
    dequantize,
    embedding,
    embedding_bag,
    fake_quantize_per_channel,
    fake_quantize_per_tensor,
    histogram_observe,
    histogram_qparams,
    int8_mm,
    linear,
    observe_fake_quantize,
    pack_conv_weight,
    pack_weight,
    quantize,
    quantize_weight,
    set_cpu_isa,
    unpack_conv_weight,
    unpack_weight,
)

__all__ = [
    "ConversionReport",
    "QConfig",
    "conversion_report",
    "register_converter",
    "registered_converters",
    "unregister_converter",
    "calibrate",
    "choose_qparams",
    "conv2d",
    "max_pool2d",
    "convert",
    "enable_fake_quant",
    "enable_observer",
    "freeze_bn_stats",
    "freeze_observers",
    "fuse_modules",
    "update_bn_stats",
    "histogram_observe",
    "histogram_qparams",
    "cpu_isa",
    "cpu_isas",
    "dequantize",
    "embedding",
    "embedding_bag",
    "fake_quantize_per_channel",
    "fake_quantize_per_tensor",
    "int8_mm",
    "linear",
    "load",
    "lower",
    "nn",
    "observe_fake_quantize",
    "pack_conv_weight",
    "pack_weight",
    "prepare",
    "prepare_qat",
    "quantize",
    "quantize_dynamic",
    "quantize_weight",
    "set_cpu_isa",
    "unpack_conv_weight",
    "unpack_weight",
]
