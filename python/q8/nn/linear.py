"""``Int8Linear``: a linear layer with int8 weights, kept packed for q8's int8 kernels.

Two forms of the weight live on the module:

* the **canonical** form, the buffers ``weight_int8`` (int8 ``[out, in]``, codes in
  [-127, 127]) and ``weight_scale`` (float32 ``[out]``, one symmetric scale per output
  channel), with ``bias`` (float32 ``[out]`` or None) and, for ``activation="static"``,
  ``input_scale`` (0-dim float32) and ``input_zero_point`` (0-dim int32, in [0, 255]).
  This is what the state_dict, ``pickle`` / ``torch.save(module)``, ``copy.deepcopy``
  and ``torch.jit.save`` store;
* the **packed** form, ``_packed = q8.pack_weight(weight_int8)``: a plain tensor
  attribute (not a buffer, never saved) in the layout of the kernels of the weight's
  device. It is built once, when the canonical form changes (construction,
  ``from_float``, ``load_state_dict``, ``to()`` / ``cuda()`` / ``cpu()`` / ``half()`` or
  any other ``_apply``, unpickling, TorchScript loading), and ``forward`` only reads
  it: it never repacks. If you modify ``weight_int8`` in place, call :meth:`repack`.

A fused activation (what ``q8.fuse`` / ``q8.convert`` make of ``Linear -> ReLU`` or
``ReLU6``) is the layer's ``clamp_min`` / ``clamp_max`` (floats, or None for an open
side; ReLU is ``(0, None)``, ReLU6 ``(0, 6)``): the op clamps in its epilogue, in
float32, NaN kept. Like ``activation``, they are configuration: ``torch.jit.save``,
``pickle`` and ``deepcopy`` keep them; the state_dict holds tensors only.

state_dict format (version :data:`FORMAT_VERSION`): the keys ``weight_int8``,
``weight_scale``, ``bias`` (when the layer has one), ``input_scale`` and
``input_zero_point`` (static only), plus ``_q8_format``, a 0-dim int64 tensor holding
the format version. The version is an explicit key rather than the state_dict's
``_metadata`` so that it survives copying the state_dict into a plain dict or
another file format. ``load_state_dict`` checks the version, every dtype and every
shape before copying anything, and names the key, the expected and the found value
in its error; a missing key (``_q8_format`` included) is reported by the usual
strict check.

dtype conversions: ``module.half()``, ``module.to(torch.bfloat16)``, ``.double()``
and the like leave every buffer's dtype as it is (int8 weights, float32 scales and
bias, int32 zero point); only devices change. The layer computes in the dtype of its
input (float32, bfloat16 or float16 in, the same dtype out), so a model converted
with ``model.half()`` runs with half inputs as expected.

TorchScript: ``torch.jit.script`` works. ``__getstate__`` / ``__setstate__`` are
exported TorchScript methods (the pattern of
``torch.ao.nn.quantized.modules.linear.LinearPackedParams``): when a scripted
module is saved, TorchScript's pickler stores what ``__getstate__`` returns (the
canonical form, the format version and the configuration) *instead of* the
module's attributes, so the file holds no packed copy; ``torch.jit.load`` (Python)
and ``torch::jit::load`` (C++, with libq8 linked) call ``__setstate__``, which
packs the weight again for the device it was loaded on (use
``torch.jit.load(path, map_location=device)`` to pick the device; calling ``.to()``
on an already scripted module moves the buffers but does not repack, so move the
eager module before scripting, or load with ``map_location``). A scripted layer's
``state_dict()`` holds the canonical buffers but not ``_q8_format`` (TorchScript
does not run the eager ``_save_to_state_dict``).

In eager Python, ``copy.deepcopy`` and ``pickle`` do not go through that tuple:
:meth:`__reduce_ex__` hands them the module's ``__dict__`` (hooks and extra
attributes included) without the packed tensor, and ``__setstate__`` recognizes a
dict (a branch TorchScript drops at compile time, since its ``state`` is a tuple
there), restores it as ``nn.Module.__setstate__`` does, then repacks.
"""
import copyreg
from typing import Dict, Final, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["FORMAT_VERSION", "Int8Linear"]

#: Version of the canonical form stored by ``state_dict()`` (key ``<prefix>_q8_format``)
#: and by ``torch.jit.save`` (first element of the ``__getstate__`` tuple).
FORMAT_VERSION = 1
_FORMAT_KEY = "_q8_format"
_ACTIVATIONS = ("dynamic", "static", "weight_only")
_FLT_MIN = torch.finfo(torch.float32).tiny


def _check_activation(activation, where):
    if activation not in _ACTIVATIONS:
        raise ValueError(f"{where}: activation must be one of {', '.join(map(repr, _ACTIVATIONS))}, "
                         f"got {activation!r}")


def _check_clamp(clamp_min, clamp_max, where):
    """The clamp as floats (None kept); NaN or clamp_min > clamp_max is a ValueError."""
    lo = None if clamp_min is None else float(clamp_min)
    hi = None if clamp_max is None else float(clamp_max)
    if lo != lo or hi != hi:
        raise ValueError(f"{where}: clamp_min / clamp_max must not be NaN, got ({clamp_min}, {clamp_max})")
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"{where}: clamp_min must be <= clamp_max, got {lo} and {hi}")
    return lo, hi


def _one_element(value, name):
    t = value.detach() if isinstance(value, Tensor) else torch.as_tensor(value)
    if t.numel() != 1:
        raise ValueError(f"Int8Linear.from_float: {name} must have one element, got shape {list(t.shape)}")
    return t.reshape(())


def _static_input_scale(value, device):
    t = _one_element(value, "input_scale")
    if not t.is_floating_point():
        raise ValueError(f"Int8Linear.from_float: input_scale must be a float, got dtype {t.dtype}")
    v = float(t)
    if not (v >= _FLT_MIN and v != float("inf")):
        raise ValueError(f"Int8Linear.from_float: input_scale must be finite and at least {_FLT_MIN} "
                         f"(the smallest normal float32), got {v}")
    return t.to(device=device, dtype=torch.float32).clone()


def _static_input_zero_point(value, device):
    t = _one_element(value, "input_zero_point")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"Int8Linear.from_float: input_zero_point must be an integer, got dtype {t.dtype}")
    v = int(t)
    if not 0 <= v <= 255:
        raise ValueError(f"Int8Linear.from_float: input_zero_point must be in [0, 255] (uint8 activations), got {v}")
    return t.to(device=device, dtype=torch.int32).clone()


class Int8Linear(torch.nn.Module):
    """``y = x · (weight_int8 · diag(weight_scale))ᵀ + bias`` with int8 weights (``torch.ops.q8.linear``).

    Args:
        in_features, out_features: as ``torch.nn.Linear``.
        bias: whether the layer has a (float32) bias.
        activation: how the input is handled, see :func:`q8.linear`: ``"dynamic"``
            (per-row uint8 quantization at run time), ``"static"`` (one calibrated
            ``input_scale`` / ``input_zero_point``) or ``"weight_only"`` (float input).
        device: where the buffers (and the packed weight) are created.
        clamp_min, clamp_max: a fused activation (ReLU: ``clamp_min=0``; ReLU6:
            ``0, 6``), applied in the op's epilogue; None leaves a side open.

    A new layer has zero weights, unit scales, a zero bias and, for ``"static"``,
    ``input_scale = 1`` and ``input_zero_point = 0``: it is meant to be filled by
    :meth:`from_float` or ``load_state_dict``. See the module docstring for the
    state_dict format, what ``.to()`` does and how TorchScript saves the layer.
    """

    # A TorchScript constant (scripted code cannot read the module-level global).
    _format_version: Final[int] = FORMAT_VERSION
    # bias / input_scale / input_zero_point are deliberately not annotated: TorchScript
    # then types each from its value (Tensor, or NoneType when absent), so present ones
    # stay real buffers of the scripted module (in its state_dict, moved by its .to()),
    # which an Optional[Tensor] annotation would prevent.
    in_features: int
    out_features: int
    activation: str
    clamp_min: Optional[float]
    clamp_max: Optional[float]
    weight_int8: Tensor
    weight_scale: Tensor
    _packed: Tensor

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "dynamic",
                 device=None, clamp_min: Optional[float] = None, clamp_max: Optional[float] = None) -> None:
        super().__init__()
        _check_activation(activation, "Int8Linear")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.activation = activation
        self.clamp_min, self.clamp_max = _check_clamp(clamp_min, clamp_max, "Int8Linear")
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32, device=device) if bias else None)
        static = activation == "static"
        self.register_buffer("input_scale", torch.ones((), dtype=torch.float32, device=device) if static else None)
        self.register_buffer("input_zero_point",
                             torch.zeros((), dtype=torch.int32, device=device) if static else None)
        self._packed = torch.ops.q8.pack_weight(self.weight_int8)

    @classmethod
    def from_float(cls, linear: torch.nn.Linear, activation: str = "dynamic", input_scale=None,
                   input_zero_point=None, clamp_min: Optional[float] = None,
                   clamp_max: Optional[float] = None) -> "Int8Linear":
        """An ``Int8Linear`` computing ``linear`` with its weight quantized by :func:`q8.quantize_weight`.

        The layer is created on ``linear``'s device; ``linear`` itself is not changed.
        ``activation="static"`` needs ``input_scale`` (a positive float) and
        ``input_zero_point`` (an integer in [0, 255]), e.g. from
        ``q8.choose_qparams(calibration_input, 0, 255)``; the other modes take neither.
        The bias is kept in float32. ``clamp_min`` / ``clamp_max``: a fused activation
        (``linear`` followed by ReLU: ``clamp_min=0``).
        """
        if not isinstance(linear, torch.nn.Linear):
            raise TypeError(f"Int8Linear.from_float: expected a torch.nn.Linear, got {type(linear).__name__}")
        _check_activation(activation, "Int8Linear.from_float")
        if activation == "static":
            missing = [name for name, v in (("input_scale", input_scale), ("input_zero_point", input_zero_point))
                       if v is None]
            if missing:
                raise ValueError(
                    "Int8Linear.from_float: activation='static' needs the calibrated input_scale and "
                    "input_zero_point (e.g. q8.choose_qparams(calibration_input, 0, 255)); missing: "
                    + ", ".join(missing))
        elif input_scale is not None or input_zero_point is not None:
            raise ValueError(f"Int8Linear.from_float: input_scale and input_zero_point are only used with "
                             f"activation='static', got activation={activation!r}")

        weight = linear.weight.detach()
        device = weight.device
        weight_int8, weight_scale = torch.ops.q8.quantize_weight(weight.to(torch.float32))
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, activation=activation,
                     device=device, clamp_min=clamp_min, clamp_max=clamp_max)
        module.weight_int8 = weight_int8
        module.weight_scale = weight_scale
        if linear.bias is not None:
            module.bias = linear.bias.detach().to(torch.float32).clone()
        if activation == "static":
            module.input_scale = _static_input_scale(input_scale, device)
            module.input_zero_point = _static_input_zero_point(input_zero_point, device)
        module.train(linear.training)
        module.repack()
        return module

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.q8.linear(x, self._packed, self.weight_scale, self.bias, self.activation,
                                   self.input_scale, self.input_zero_point, self.clamp_min, self.clamp_max)

    def extra_repr(self) -> str:
        r = (f"in_features={self.in_features}, out_features={self.out_features}, "
             f"bias={self.bias is not None}, activation={self.activation!r}")
        if self.clamp_min is not None or self.clamp_max is not None:
            r += f", clamp=({self.clamp_min}, {self.clamp_max})"
        return r

    def repack(self) -> None:
        """Rebuild the packed weight from ``weight_int8`` (after changing it in place)."""
        self._packed = torch.ops.q8.pack_weight(self.weight_int8)

    # ------------------------------------------------------------------ devices and dtypes

    def _apply(self, fn, recurse=True):
        # Buffers keep their dtype: a conversion that would change one (module.half(),
        # .to(torch.float64), ...) only moves it to the device fn picked, from the
        # original values (no float32 -> half -> float32 round trip of the scales).
        def keep_dtype(t):
            out = fn(t)
            if isinstance(out, Tensor) and out.dtype != t.dtype:
                out = t.to(device=out.device)
            return out

        super()._apply(keep_dtype, recurse)
        self.repack()
        return self

    # ------------------------------------------------------------------ state_dict

    def _canonical_specs(self) -> Dict[str, Tuple[torch.dtype, Tuple[int, ...]]]:
        specs = {
            "weight_int8": (torch.int8, (self.out_features, self.in_features)),
            "weight_scale": (torch.float32, (self.out_features,)),
        }
        if self.bias is not None:
            specs["bias"] = (torch.float32, (self.out_features,))
        if self.input_scale is not None:
            specs["input_scale"] = (torch.float32, ())
        if self.input_zero_point is not None:
            specs["input_zero_point"] = (torch.int32, ())
        return specs

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + _FORMAT_KEY] = torch.tensor(FORMAT_VERSION, dtype=torch.int64)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        where = (f"Int8Linear(in_features={self.in_features}, out_features={self.out_features}, "
                 f"activation={self.activation!r})")
        errors = []
        version_key = prefix + _FORMAT_KEY
        version = state_dict.pop(version_key, None)
        if version is None:
            missing_keys.append(version_key)
        else:
            found = version.reshape(-1).tolist() if isinstance(version, Tensor) else [version]
            if len(found) != 1 or found[0] != FORMAT_VERSION:
                errors.append(f"{version_key}: {where} reads state_dict format version {FORMAT_VERSION}, found "
                              f"{found[0] if len(found) == 1 else found} (a checkpoint written by another q8 "
                              "release, or not by q8.nn.Int8Linear)")
        for name, (dtype, shape) in self._canonical_specs().items():
            key = prefix + name
            if key not in state_dict:
                continue
            value = state_dict[key]
            if not isinstance(value, Tensor):
                errors.append(f"{key}: expected a {dtype} tensor of shape {list(shape)}, found {type(value).__name__}")
            elif tuple(value.shape) != shape:
                errors.append(f"size mismatch for {key}: expected shape {list(shape)} for {where}, "
                              f"found shape {list(value.shape)} in the state_dict")
            elif value.dtype != dtype:
                errors.append(f"{key}: expected dtype {dtype}, found {value.dtype} in the state_dict "
                              f"(Int8Linear stores the canonical form: int8 weights, float32 scales and bias, "
                              f"int32 zero point)")
        if errors:
            # Nothing of this layer is loaded: load_state_dict raises with these messages.
            error_msgs.extend(errors)
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self.repack()

    # ------------------------------------------------------------------ serialization

    @torch.jit.export
    def __getstate__(self) -> Tuple[int, Tensor, Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor], str,
                                    int, int, bool, Optional[float], Optional[float]]:
        # What torch.jit.save stores for this module instead of its attributes: the
        # canonical form only, never the packed weight. (The clamp came after the
        # first release, at the end: a TorchScript file carries the __setstate__ of the
        # q8 that wrote it, so files of that release still load.)
        return (self._format_version, self.weight_int8, self.weight_scale, self.bias, self.input_scale,
                self.input_zero_point, self.activation, self.in_features, self.out_features, self.training,
                self.clamp_min, self.clamp_max)

    @torch.jit.export
    def __setstate__(self, state: Tuple[int, Tensor, Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor],
                                        str, int, int, bool, Optional[float], Optional[float]]) -> None:
        if not torch.jit.is_scripting():
            if isinstance(state, dict):
                # Eager unpickling / deepcopy (see __reduce_ex__); TorchScript's state
                # is the tuple, so it compiles none of this branch. A layer pickled
                # before the fused clamp existed has none.
                state.setdefault("clamp_min", None)
                state.setdefault("clamp_max", None)
                torch.nn.Module.__setstate__(self, state)
                self.repack()
                return
        if state[0] != self._format_version:
            raise RuntimeError("q8.nn.Int8Linear: this q8 reads the TorchScript format version "
                               + str(self._format_version) + " of Int8Linear, the file holds version " + str(state[0]))
        self.weight_int8 = state[1]
        self.weight_scale = state[2]
        # Each branch is compiled only where the attribute is a Tensor (TorchScript
        # drops `if <NoneType attribute> is not None` at compile time).
        if self.bias is not None:
            bias = state[3]
            assert bias is not None, "q8.nn.Int8Linear: the saved layer has no bias"
            self.bias = bias
        if self.input_scale is not None:
            input_scale = state[4]
            assert input_scale is not None, "q8.nn.Int8Linear: the saved layer has no input_scale"
            self.input_scale = input_scale
        if self.input_zero_point is not None:
            input_zero_point = state[5]
            assert input_zero_point is not None, "q8.nn.Int8Linear: the saved layer has no input_zero_point"
            self.input_zero_point = input_zero_point
        self.activation = state[6]
        self.in_features = state[7]
        self.out_features = state[8]
        self.training = state[9]
        self.clamp_min = state[10]
        self.clamp_max = state[11]
        self._packed = torch.ops.q8.pack_weight(state[1])

    def __reduce_ex__(self, protocol):
        # pickle / copy / deepcopy in eager Python: the module's __dict__ without the
        # packed weight (it is device-specific and rebuilt by __setstate__).
        state = self.__dict__.copy()
        state.pop("_compiled_call_impl", None)
        state.pop("_packed", None)
        return (copyreg.__newobj__, (type(self),), state)
