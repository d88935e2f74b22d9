"""Modules built on the q8 operators.

* :class:`Int8Linear`: a drop-in ``torch.nn.Linear`` with int8 weights (per output
  channel, symmetric), kept packed for the int8 kernels;
* :class:`Int8Embedding`, :class:`Int8EmbeddingBag`: ``torch.nn.Embedding`` /
  ``torch.nn.EmbeddingBag`` with int8 rows (one symmetric scale per row);
* :class:`Int8Conv2d`: a ``torch.nn.Conv2d`` that stores int8 weights and
  dequantizes them to compute (4x smaller, not faster);
* :class:`FakeQuantize`: an observer + fake quantization (QAT and calibration);
* :class:`QATLinear`, :class:`QATConv2d`: layers with fake-quantized weights and inputs.

``q8.quantize_dynamic``, ``q8.prepare_qat``, ``q8.prepare``, ``q8.calibrate`` and
``q8.convert`` swap a model's layers for these.
"""
from .conv import Int8Conv2d
from .embedding import Int8Embedding, Int8EmbeddingBag
from .linear import FORMAT_VERSION, Int8Linear
from .qat import FakeQuantize, QATConv2d, QATLinear

__all__ = ["FORMAT_VERSION", "FakeQuantize", "Int8Conv2d", "Int8Embedding", "Int8EmbeddingBag", "Int8Linear",
           "QATConv2d", "QATLinear"]
