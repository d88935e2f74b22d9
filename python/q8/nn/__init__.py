"""Modules built on the q8 operators.

* :class:`Int8Linear`: a drop-in ``torch.nn.Linear`` with int8 weights (per output
  channel, symmetric), kept packed for the int8 kernels;
* :class:`Int8Embedding`, :class:`Int8EmbeddingBag`: ``torch.nn.Embedding`` /
  ``torch.nn.EmbeddingBag`` with int8 rows (one symmetric scale per row);
* :class:`Int8Conv2d`, :class:`Int8Conv1d`: ``torch.nn.Conv2d`` / ``Conv1d`` on the int8
  convolution kernels (``q8.conv2d``: int8 weights and uint8 activations, int32
  accumulation, a fused bias / residual / ReLU epilogue, float or uint8 output;
  ``q8.lower`` keeps uint8 tensors between consecutive layers);
* :class:`Int8MultiheadAttention` (and :class:`QATMultiheadAttention`,
  :class:`Int8TransformerEncoderLayer`, :class:`Int8TransformerEncoder`,
  :class:`Int8TransformerDecoderLayer`): attention whose
  projections run on the int8 kernels (``q8/nn/attention.py``);
* :class:`QATConv1D`: Hugging Face's ``Conv1D`` (GPT-2) for QAT (``q8/nn/hf.py``);
* :class:`Int8LSTM`, :class:`Int8GRU`, :class:`Int8RNN` and their cells: dynamic int8
  recurrent layers (``q8/nn/rnn.py``);
* :class:`FusedConv2d`, :class:`FusedConv1d`, :class:`FusedLinear`: conv / linear -> BatchNorm ->
  activation chains fused for quantization (``q8.fuse_modules``, ``docs/fusion.md``);
  :class:`QATConvBn2d`, :class:`QATConvBn1d`, :class:`QATLinearBn1d`: QAT conv / linear + BN with
  ``freeze_bn_stats``;
* :class:`FakeQuantize`: an observer + fake quantization (QAT and calibration);
* :class:`QATLinear`, :class:`QATConv2d`: layers with fake-quantized weights and inputs;
  :class:`QATEmbedding`, :class:`QATEmbeddingBag`: tables fake-quantized per row.

``q8.quantize_dynamic``, ``q8.prepare_qat``, ``q8.prepare``, ``q8.calibrate`` and
``q8.convert`` swap a model's layers for these.
"""
from .attention import (Int8MultiheadAttention, Int8TransformerDecoderLayer, Int8TransformerEncoder,
                        Int8TransformerEncoderLayer, QATMultiheadAttention)
from .conv import Int8Conv1d, Int8Conv2d
from .embedding import Int8Embedding, Int8EmbeddingBag
from .fused import FusedConv1d, FusedConv2d, FusedLinear, Int8Clamped
from .hf import QATConv1D
from .linear import FORMAT_VERSION, Int8Linear
from .qat import FakeQuantize, QATConv1d, QATConv2d, QATLinear
from .qat_conv import QATConvBn1d, QATConvBn2d, QATLinearBn1d
from .qat_embedding import QATEmbedding, QATEmbeddingBag
from .rnn import RNN_FORMAT_VERSION, Int8GRU, Int8GRUCell, Int8LSTM, Int8LSTMCell, Int8RNN, Int8RNNCell

__all__ = ["FORMAT_VERSION", "RNN_FORMAT_VERSION", "FakeQuantize", "FusedConv1d", "FusedConv2d", "FusedLinear",
           "Int8Clamped", "Int8Conv1d", "Int8Conv2d", "Int8Embedding", "Int8EmbeddingBag",
           "Int8GRU", "Int8GRUCell", "Int8LSTM", "Int8LSTMCell", "Int8Linear", "Int8MultiheadAttention", "Int8RNN",
           "Int8RNNCell", "Int8TransformerDecoderLayer", "Int8TransformerEncoder", "Int8TransformerEncoderLayer", "QATConv1D", "QATConv1d", "QATConv2d", "QATConvBn1d", "QATConvBn2d", "QATEmbedding", "QATEmbeddingBag", "QATLinear", "QATLinearBn1d",
           "QATMultiheadAttention"]
