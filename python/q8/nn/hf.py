"""Hugging Face ``transformers.pytorch_utils.Conv1D`` (GPT-2 family), recognized by duck typing.

``Conv1D`` is a linear layer with its weight stored transposed (``[in, out]``, ``nf``
output features): ``y = x @ weight + bias``. q8 never imports ``transformers``: a module
is taken for one when its class is named ``Conv1D``, it has an int ``nf`` and a 2-D
``weight`` of shape ``[in, nf]`` (and a ``bias`` of ``[nf]`` or None).
"""
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["QATConv1D", "conv1d_as_linear", "is_hf_conv1d"]

HF_CONV1D = "transformers.pytorch_utils.Conv1D"


def is_hf_conv1d(module: torch.nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    nf = getattr(module, "nf", None)
    return (type(module).__name__ == "Conv1D" and isinstance(nf, int) and isinstance(weight, Tensor)
            and weight.dim() == 2 and weight.shape[1] == nf)


def _check(module, where: str) -> None:
    if not is_hf_conv1d(module):
        raise NotImplementedError(f"{where}: {type(module).__name__} does not look like transformers' Conv1D "
                                  "(expected an int nf and a 2-D weight of shape [in, nf])")
    bias = getattr(module, "bias", None)
    if bias is not None and (not isinstance(bias, Tensor) or tuple(bias.shape) != (module.nf,)):
        raise NotImplementedError(f"{where}: the Conv1D bias must be None or of shape [{module.nf}]")


def conv1d_as_linear(module: torch.nn.Module) -> torch.nn.Linear:
    """A float ``nn.Linear`` computing ``module`` (a copy of the weight, transposed to ``[out, in]``)."""
    _check(module, "q8: Conv1D")
    weight = module.weight.detach()
    linear = torch.nn.Linear(weight.shape[0], weight.shape[1], bias=module.bias is not None, device="meta")
    linear.weight = torch.nn.Parameter(weight.t().contiguous(), requires_grad=False)
    if module.bias is not None:
        linear.bias = torch.nn.Parameter(module.bias.detach(), requires_grad=False)
    linear.train(module.training)
    return linear


class QATConv1D(torch.nn.Module):
    """QAT / calibration form of ``Conv1D``: **shares** its ``weight`` (``[in, out]``) and ``bias``.

    The weight is fake-quantized per output channel (the rows of ``weight.t()``), the
    input per tensor, as :class:`q8.nn.QATLinear`; :func:`q8.convert` turns it into a
    static :class:`q8.nn.Int8Linear`. ``in_features`` / ``out_features`` / ``nf`` / ``nx``
    are kept.
    """

    in_features: int
    out_features: int

    def __init__(self, conv1d: torch.nn.Module, config=None) -> None:
        super().__init__()
        from .qat import _config

        _check(conv1d, "QATConv1D")
        config = _config(config, "QATConv1D")
        device = conv1d.weight.device
        self.in_features, self.out_features = int(conv1d.weight.shape[0]), int(conv1d.weight.shape[1])
        self.nf, self.nx = self.out_features, self.in_features
        self.weight = conv1d.weight
        self.bias = conv1d.bias
        self.weight_fake_quant = config.weight_fake_quant(self.out_features, device=device)
        self.input_fake_quant = config.activation_fake_quant(device=device)
        self.train(conv1d.training)

    @classmethod
    def from_float(cls, conv1d: torch.nn.Module, config=None) -> "QATConv1D":
        return cls(conv1d, config)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.input_fake_quant(x), self.weight_fake_quant(self.weight.t()), self.bias)

    def extra_repr(self) -> str:
        return f"nf={self.nf}, nx={self.nx}"


def _linear_view(layer: QATConv1D):
    """An object with what ``q8.quantization._convert_linear`` reads, with the weight as ``[out, in]``."""

    class _View:
        pass

    view = _View()
    view.weight = layer.weight.t()
    view.bias = layer.bias
    view.weight_fake_quant = layer.weight_fake_quant
    view.input_fake_quant = layer.input_fake_quant
    view.in_features, view.out_features = layer.in_features, layer.out_features
    view.training = layer.training
    return view
