"""Modules built on the q8 operators.

* :class:`Int8Linear`: a drop-in ``torch.nn.Linear`` with int8 weights (per output
  channel, symmetric), kept packed for the int8 kernels;
* :class:`Int8Embedding`, :class:`Int8EmbeddingBag`: ``torch.nn.Embedding`` /
  ``torch.nn.EmbeddingBag`` with int8 rows (one symmetric scale per row);
* :class:`Int8Conv2d`: a ``torch.nn.Conv2d`` that stores int8 weights and
  dequantizes them to compute (4x smaller, not faster);
* :class:`Int8MultiheadAttention` (and :class:`QATMultiheadAttention`,
  :class:`Int8TransformerEncoderLayer`, :class:`Int8TransformerEncoder`): attention whose
  projections run on the int8 kernels (``q8/nn/attention.py``);
* :class:`QATConv1D`: Hugging Face's ``Conv1D`` (GPT-2) for QAT (``q8/nn/hf.py``);
* :class:`Int8LSTM`, :class:`Int8GRU`, :class:`Int8RNN` and their cells: dynamic int8
  recurrent layers (``q8/nn/rnn.py``);
* :class:`FakeQuantize`: an observer + fake quantization (QAT and calibration);
* :class:`QATLinear`, :class:`QATConv2d`: layers with fake-quantized weights and inputs;
  :class:`QATEmbedding`, :class:`QATEmbeddingBag`: tables fake-quantized per row.

``q8.quantize_dynamic``, ``q8.prepare_qat``, ``q8.prepare``, ``q8.calibrate`` and
``q8.convert`` swap a model's layers for these.
"""
from .attention import (Int8MultiheadAttention, Int8TransformerEncoder, Int8TransformerEncoderLayer,
                        QATMultiheadAttention)
from .conv import Int8Conv2d
from .embedding import Int8Embedding, Int8EmbeddingBag
from .hf import QATConv1D
from .linear import FORMAT_VERSION, Int8Linear
from .qat import FakeQuantize, QATConv2d, QATLinear
from .qat_embedding import QATEmbedding, QATEmbeddingBag
from .rnn import RNN_FORMAT_VERSION, Int8GRU, Int8GRUCell, Int8LSTM, Int8LSTMCell, Int8RNN, Int8RNNCell

__all__ = ["FORMAT_VERSION", "RNN_FORMAT_VERSION", "FakeQuantize", "Int8Conv2d", "Int8Embedding", "Int8EmbeddingBag",
           "Int8GRU", "Int8GRUCell", "Int8LSTM", "Int8LSTMCell", "Int8Linear", "Int8MultiheadAttention", "Int8RNN",
           "Int8RNNCell", "Int8TransformerEncoder", "Int8TransformerEncoderLayer", "QATConv1D", "QATConv2d", "QATEmbedding", "QATEmbeddingBag", "QATLinear",
           "QATMultiheadAttention"]
