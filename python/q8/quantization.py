"""Whole-model conversion to q8's int8 layers."""
from typing import Iterable

import torch

from .nn.linear import Int8Linear

__all__ = ["quantize_dynamic"]

_MODES = ("dynamic", "weight_only")


def quantize_dynamic(model: torch.nn.Module, activation: str = "dynamic", skip: Iterable[str] = ()) -> torch.nn.Module:
    """Replace every ``torch.nn.Linear`` of ``model`` (recursively, in place) by :class:`q8.nn.Int8Linear`.

    Args:
        model: the model; its ``nn.Linear`` modules are swapped for
            ``Int8Linear.from_float(linear, activation)`` on the linear's device.
        activation: ``"dynamic"`` (activations quantized per row at run time) or
            ``"weight_only"``. ``"static"`` is refused: it needs calibrated input
            qparams for each layer; build those layers with
            ``Int8Linear.from_float(linear, "static", input_scale, input_zero_point)``.
        skip: qualified module names (as in ``model.named_modules()``) to leave in
            float: a named ``nn.Linear`` is kept, and so is every ``nn.Linear`` inside a
            named container. Every name must exist in the model (a typo is an error,
            not a silently unquantized layer).

    Only modules whose type is exactly ``torch.nn.Linear`` are replaced: subclasses
    (e.g. the ``out_proj`` of ``nn.MultiheadAttention``, whose owner reads its
    ``.weight`` directly) are left alone. A linear shared by several parents is
    replaced by one shared ``Int8Linear``.

    Returns ``model``, or, when ``model`` itself is an ``nn.Linear`` (which cannot be
    replaced in place) and ``""`` is not in ``skip``, a new ``Int8Linear``.
    """
    if activation == "static":
        raise ValueError("q8.quantize_dynamic: activation='static' needs calibrated input_scale and "
                         "input_zero_point for each layer; use Int8Linear.from_float(linear, 'static', "
                         "input_scale, input_zero_point) for those layers, or activation='dynamic' / "
                         "'weight_only' here")
    if activation not in _MODES:
        raise ValueError(f"q8.quantize_dynamic: activation must be 'dynamic' or 'weight_only', got {activation!r}")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"q8.quantize_dynamic: expected a torch.nn.Module, got {type(model).__name__}")
    skip = {skip} if isinstance(skip, str) else set(skip)
    names = {name for name, _ in model.named_modules(remove_duplicate=False)}
    unknown = sorted(skip - names)
    if unknown:
        raise ValueError(f"q8.quantize_dynamic: skip names {unknown} are not modules of the model "
                         "(names are those of model.named_modules(), e.g. 'encoder.layers.0.fc1')")

    def skipped(qualified_name):
        if qualified_name in skip:
            return True
        parts = qualified_name.split(".")
        return any(".".join(parts[:i]) in skip for i in range(1, len(parts)))

    if "" in skip:  # the model itself
        return model
    if type(model) is torch.nn.Linear:
        return Int8Linear.from_float(model, activation)

    converted = {}  # id(linear) -> its Int8Linear, so that shared layers stay shared
    for parent_name, parent in list(model.named_modules(remove_duplicate=False)):
        if skipped(parent_name):
            continue
        for child_name, child in list(parent._modules.items()):  # named_children() would skip repeats
            if type(child) is not torch.nn.Linear:
                continue
            qualified = f"{parent_name}.{child_name}" if parent_name else child_name
            if skipped(qualified):
                continue
            if id(child) not in converted:
                converted[id(child)] = Int8Linear.from_float(child, activation)
            setattr(parent, child_name, converted[id(child)])
    return model
