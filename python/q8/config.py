"""``QConfig``: how :func:`q8.prepare_qat` / :func:`q8.prepare` quantize a model."""
from dataclasses import dataclass, field
from typing import Tuple

__all__ = ["QConfig", "OBSERVERS", "QSCHEMES", "quant_range"]

#: Observers of :class:`q8.nn.FakeQuantize`.
OBSERVERS = ("current", "minmax", "moving_average", "percentile")
#: Quantization schemes of :class:`q8.nn.FakeQuantize`.
QSCHEMES = ("per_tensor_affine", "per_tensor_symmetric", "per_channel_affine", "per_channel_symmetric")


def quant_range(bits: int, qscheme: str) -> Tuple[int, int]:
    """The default integer range of ``bits``-bit codes for ``qscheme``.

    Affine schemes use unsigned codes ``[0, 2**bits - 1]`` (uint8 for 8 bits, what
    ``Int8Linear``'s static activations take). Symmetric schemes use the restricted
    signed range ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]`` (``[-127, 127]`` for 8
    bits, what ``q8.quantize_weight`` and ``Int8Linear`` use: ``-w`` quantizes to
    ``-q`` and the zero point is exactly 0).
    """
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 8:
        raise ValueError(f"q8: bits must be an integer from 2 to 8, got {bits!r}")
    if qscheme not in QSCHEMES:
        raise ValueError(f"q8: qscheme must be one of {', '.join(map(repr, QSCHEMES))}, got {qscheme!r}")
    if qscheme.endswith("symmetric"):
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


@dataclass(frozen=True)
class QConfig:
    """What to quantize and how; the argument of :func:`q8.prepare_qat` and :func:`q8.prepare`.

    Weights (of every swapped ``nn.Linear`` / ``nn.Conv2d``) are fake-quantized per
    output channel, input activations per tensor.

    Args:
        weight_bits, activation_bits: 2 to 8. :func:`q8.convert` to int8 layers
            needs ``activation_bits=8`` with ``per_tensor_affine`` (uint8 activations);
            weights of fewer bits are stored in int8 containers.
        weight_qscheme, activation_qscheme: one of :data:`QSCHEMES`. The weight
            scheme must be per channel, the activation scheme per tensor.
        weight_observer, activation_observer: one of :data:`OBSERVERS`:
            ``"current"`` (the min/max of the current input only: right for weights,
            which change while training, and what ``q8.quantize_weight`` does at
            conversion), ``"minmax"`` (running min / max over every observation, as
            ``torch.ao.quantization.MinMaxObserver``), ``"moving_average"`` (an
            exponential moving average of the min / max, as
            ``torch.ao.quantization.MovingAverageMinMaxObserver``; fused with fake
            quantization in one op) or ``"percentile"`` (a histogram kept on the
            device; the range keeps ``percentile`` percent of the values; per tensor
            only).
        averaging_constant: the moving average's constant, in (0, 1].
        percentile: percent of the observed values the percentile observer keeps,
            in (0, 100].
        bins: histogram bins of the percentile observer.
        learnable: learn scale and zero point by gradient descent (LSQ, Esser et
            al. 2020), with the gradient scaled by ``1 / sqrt(numel * quant_max)``.
            The observer initializes them while it is on.
        skip: qualified module names (as in ``model.named_modules()``) to leave in
            float; everything inside a named container is kept too.
        sync: under ``torch.distributed`` with more than one process, all-reduce the
            observers' statistics so that every rank holds identical qparams.
        fuse: before swapping, fuse ``conv / linear -> BatchNorm -> ReLU`` chains that
            q8 finds (:func:`q8.fuse.auto_fuse`, ``docs/fusion.md``): BatchNorms folded,
            activations turned into the int8 layer's clamp. ``False`` leaves the model's
            structure as it is (fuse by hand with :func:`q8.fuse_modules`).
    """

    weight_bits: int = 8
    weight_qscheme: str = "per_channel_symmetric"
    weight_observer: str = "current"
    activation_bits: int = 8
    activation_qscheme: str = "per_tensor_affine"
    activation_observer: str = "moving_average"
    averaging_constant: float = 0.01
    percentile: float = 99.99
    bins: int = 2048
    learnable: bool = False
    skip: Tuple[str, ...] = field(default_factory=tuple)
    sync: bool = True
    fuse: bool = True

    def __post_init__(self):
        if isinstance(self.skip, str):
            object.__setattr__(self, "skip", (self.skip,))
        else:
            object.__setattr__(self, "skip", tuple(self.skip))
        quant_range(self.weight_bits, self.weight_qscheme)
        quant_range(self.activation_bits, self.activation_qscheme)
        if not self.weight_qscheme.startswith("per_channel"):
            raise ValueError(f"q8.QConfig: weight_qscheme must be per channel, got {self.weight_qscheme!r}")
        if not self.activation_qscheme.startswith("per_tensor"):
            raise ValueError(f"q8.QConfig: activation_qscheme must be per tensor, got {self.activation_qscheme!r}")
        for name in ("weight_observer", "activation_observer"):
            if getattr(self, name) not in OBSERVERS:
                raise ValueError(f"q8.QConfig: {name} must be one of {', '.join(map(repr, OBSERVERS))}, "
                                 f"got {getattr(self, name)!r}")
        if self.weight_observer == "percentile":
            raise ValueError("q8.QConfig: weight_observer='percentile' is not supported (the percentile observer "
                             "is per tensor and weights are quantized per channel)")
        if not 0.0 < float(self.averaging_constant) <= 1.0:
            raise ValueError(f"q8.QConfig: averaging_constant must be in (0, 1], got {self.averaging_constant!r}")
        if not 0.0 < float(self.percentile) <= 100.0:
            raise ValueError(f"q8.QConfig: percentile must be in (0, 100], got {self.percentile!r}")
        if not isinstance(self.bins, int) or self.bins < 1:
            raise ValueError(f"q8.QConfig: bins must be a positive integer, got {self.bins!r}")

    def weight_fake_quant(self, channels: int, device=None):
        """A new :class:`q8.nn.FakeQuantize` for a weight with ``channels`` output channels (axis 0)."""
        from .nn.qat import FakeQuantize

        return FakeQuantize(observer=self.weight_observer, qscheme=self.weight_qscheme, bits=self.weight_bits,
                            channels=channels, axis=0, averaging_constant=self.averaging_constant,
                            learnable=self.learnable, sync=self.sync, device=device)

    def activation_fake_quant(self, device=None):
        """A new per-tensor :class:`q8.nn.FakeQuantize` for a layer's input."""
        from .nn.qat import FakeQuantize

        return FakeQuantize(observer=self.activation_observer, qscheme=self.activation_qscheme,
                            bits=self.activation_bits, averaging_constant=self.averaging_constant,
                            percentile=self.percentile, bins=self.bins, learnable=self.learnable, sync=self.sync,
                            device=device)
