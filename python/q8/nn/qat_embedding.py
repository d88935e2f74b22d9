"""QAT / static-PTQ forms of ``nn.Embedding`` and ``nn.EmbeddingBag``.

:func:`q8.prepare_qat` and :func:`q8.prepare` swap a float embedding layer for
:class:`QATEmbedding` / :class:`QATEmbeddingBag`: the same layer, looking rows up in
its table fake-quantized per row (axis 0) by the config's weight fake quantizer
(symmetric, [-127, 127] at 8 bits, the ``"current"`` observer by default: the
scales :func:`q8.quantize_weight` gives). The table is the float layer's own
``Parameter`` (an optimizer built before keeps training it) and its gradient is the
straight-through one of fake quantization. Indices are not quantized, so there is no
input fake quantizer. :func:`q8.convert` turns them into :class:`q8.nn.Int8Embedding` /
:class:`q8.nn.Int8EmbeddingBag` holding exactly the codes and scales the fake-quantized
table used, so the converted layer returns what the QAT layer returned in eval mode.

Refused (``NotImplementedError``, so the converter leaves the layer float and says
why): ``max_norm`` (renormalizes rows in place at lookup; an int8 table cannot) and
``sparse=True`` (sparse gradients do not pass through the fake quantizer).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import QConfig
from .qat import _config

__all__ = ["QATEmbedding", "QATEmbeddingBag"]


def _check_float_layer(module, cls_name: str, where: str):
    if module.max_norm is not None:
        raise NotImplementedError(
            f"{where}: max_norm={module.max_norm} renormalizes the looked-up rows of the table in place at every "
            "lookup; the int8 table it converts to cannot reproduce that")
    if module.sparse:
        raise NotImplementedError(f"{where}: sparse=True gives the table a sparse gradient, which does not pass "
                                  "through the fake quantizer; use sparse=False for QAT")
    if not module.weight.is_floating_point():
        raise TypeError(f"{where}: the layer's weight must be floating point, got {module.weight.dtype}")


class QATEmbedding(torch.nn.Embedding):
    """``nn.Embedding`` whose table is fake-quantized per row (``weight_fake_quant``)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: Optional[int] = None,
                 scale_grad_by_freq: bool = False, config: Optional[QConfig] = None, device=None, dtype=None) -> None:
        super().__init__(num_embeddings, embedding_dim, padding_idx, None, 2.0, scale_grad_by_freq, False,
                         device=device, dtype=dtype)
        self.weight_fake_quant = _config(config).weight_fake_quant(num_embeddings, device=device)

    @classmethod
    def from_float(cls, module: torch.nn.Embedding, config: Optional[QConfig] = None) -> "QATEmbedding":
        """A ``QATEmbedding`` that **shares** ``module``'s weight parameter."""
        if not isinstance(module, torch.nn.Embedding):
            raise TypeError(f"QATEmbedding.from_float: expected a torch.nn.Embedding, got {type(module).__name__}")
        _check_float_layer(module, "QATEmbedding", "QATEmbedding.from_float")
        config = _config(config)
        qat = cls(module.num_embeddings, module.embedding_dim, module.padding_idx, module.scale_grad_by_freq,
                  config, device="meta")
        qat.weight = module.weight
        qat.weight_fake_quant = config.weight_fake_quant(module.num_embeddings, device=module.weight.device)
        qat.train(module.training)
        return qat

    def forward(self, input: Tensor) -> Tensor:
        return F.embedding(input, self.weight_fake_quant(self.weight), self.padding_idx, None, 2.0,
                           self.scale_grad_by_freq, False)


class QATEmbeddingBag(torch.nn.EmbeddingBag):
    """``nn.EmbeddingBag`` whose table is fake-quantized per row (``weight_fake_quant``)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, scale_grad_by_freq: bool = False, mode: str = "mean",
                 include_last_offset: bool = False, padding_idx: Optional[int] = None,
                 config: Optional[QConfig] = None, device=None, dtype=None) -> None:
        super().__init__(num_embeddings, embedding_dim, None, 2.0, scale_grad_by_freq, mode, False, None,
                         include_last_offset, padding_idx, device=device, dtype=dtype)
        self.weight_fake_quant = _config(config).weight_fake_quant(num_embeddings, device=device)

    @classmethod
    def from_float(cls, module: torch.nn.EmbeddingBag, config: Optional[QConfig] = None) -> "QATEmbeddingBag":
        """A ``QATEmbeddingBag`` that **shares** ``module``'s weight parameter."""
        if not isinstance(module, torch.nn.EmbeddingBag):
            raise TypeError(
                f"QATEmbeddingBag.from_float: expected a torch.nn.EmbeddingBag, got {type(module).__name__}")
        _check_float_layer(module, "QATEmbeddingBag", "QATEmbeddingBag.from_float")
        config = _config(config)
        qat = cls(module.num_embeddings, module.embedding_dim, module.scale_grad_by_freq, module.mode,
                  module.include_last_offset, module.padding_idx, config, device="meta")
        qat.weight = module.weight
        qat.weight_fake_quant = config.weight_fake_quant(module.num_embeddings, device=module.weight.device)
        qat.train(module.training)
        return qat

    def forward(self, input: Tensor, offsets: Optional[Tensor] = None,
                per_sample_weights: Optional[Tensor] = None) -> Tensor:
        return F.embedding_bag(input, self.weight_fake_quant(self.weight), offsets, None, 2.0,
                               self.scale_grad_by_freq, self.mode, False, per_sample_weights,
                               self.include_last_offset, self.padding_idx)
