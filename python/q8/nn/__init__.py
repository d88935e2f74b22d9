"""Modules built on the q8 operators.

:class:`Int8Linear` is a drop-in replacement for ``torch.nn.Linear`` with int8
weights (per output channel, symmetric), kept packed for the int8 kernels.
``q8.quantize_dynamic`` swaps every ``nn.Linear`` of a model for one.
"""
from .linear import FORMAT_VERSION, Int8Linear

__all__ = ["FORMAT_VERSION", "Int8Linear"]
