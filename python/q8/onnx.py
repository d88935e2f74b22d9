"""ONNX export of fake-quantized and int8 q8 models as QuantizeLinear / DequantizeLinear (QDQ).

:func:`export` is ``torch.onnx.export(..., dynamo=True)`` (the exporter based on
``torch.export``, the default since torch 2.9 and the one maintained in torch 2.11
to 2.14) with translations of q8's quantization operators into standard ONNX
operators, so that ONNX Runtime, TensorRT and other QDQ consumers read the model
without any q8 code.

What is translated (``opset_version`` 18 or later; default 20):

* ``q8.fake_quantize_per_tensor`` / ``q8.fake_quantize_per_channel`` (and
  ``q8.observe_fake_quantize`` with its observer off): ``QuantizeLinear`` ->
  ``DequantizeLinear`` with a ``uint8`` zero point when ``[quant_min, quant_max]``
  lies in [0, 255] and an ``int8`` one when it lies in [-128, 127] (``axis`` set per
  channel). A range narrower than its ONNX type (``[-127, 127]``, any 2- to 7-bit
  range) is followed by ``Max`` / ``Min`` with the float values of ``quant_min`` and
  ``quant_max`` (``(q - zero_point) * scale``, computed as DequantizeLinear does), so
  that the result is q8's exactly; ``narrow_range="error"`` refuses such ranges
  instead (for consumers that only fuse bare Q/DQ pairs, e.g. TensorRT). Ranges
  outside [-128, 255] (9 to 16 bits) are refused.
* ``q8.dequantize`` of int8 / uint8 codes: ``DequantizeLinear``.
* Modules, replaced in a copy of the model before tracing (the model itself is not
  changed):

  - :class:`q8.nn.FakeQuantize`: its observer must be off
    (:func:`q8.freeze_observers`); fake quantization with the qparams it uses now
    (:meth:`~q8.nn.FakeQuantize.calculate_qparams`, learned ones for LSQ), or the
    identity when its fake quantization is off;
  - :class:`q8.nn.QATLinear` / :class:`q8.nn.QATConv2d`: the weight is quantized at
    export (``q8.quantize``) and stored as an **int8 initializer** followed by
    ``DequantizeLinear`` (per output channel, ``axis=0``); the input gets a Q/DQ pair;
  - :class:`q8.nn.Int8Linear` with ``activation="static"`` (a converted model) or
    ``"weight_only"``: int8 weight initializer + ``DequantizeLinear`` and a float
    ``Gemm``/``MatMul``; static inputs get a uint8 Q/DQ pair. ``"dynamic"`` is
    refused: its per-row run-time activation quantization has no standard QDQ form;
  - :class:`q8.nn.Int8Conv2d`: its weight is dequantized with ``q8.dequantize`` for
    the export (int8 initializer + ``DequantizeLinear``; eager ``Int8Conv2d`` uses the
    bit-identical plain ``codes * scale``, which AOTInductor can load), plus a Q/DQ
    pair on the input when it was converted.

Semantics and tolerance. ONNX ``QuantizeLinear`` computes
``saturate(round_half_even(x / scale) + zero_point)``; q8 computes
``x * (1 / scale)`` (float32). The two can differ in the last bit, which flips the
rounding of values within one ulp of a rounding boundary: such an element differs
by exactly one quantization step (``scale``), every other element is equal. The
tests check exactly that. NaN: q8 keeps NaN, ONNX Runtime's QuantizeLinear does
not (it is not defined by ONNX). float16 / bfloat16 inputs are quantized in float32
(as q8 does) and cast back.
"""
import copy
import operator
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .nn.conv import Int8Conv2d
from .nn.fused import clamp
from .nn.linear import Int8Linear
from .nn.qat import FakeQuantize, QATConv2d, QATLinear

__all__ = ["export", "prepare_for_onnx", "translation_table", "OnnxExportError"]

_NARROW = ("clip", "error")


class OnnxExportError(ValueError):
    """A q8 model or operator call that has no exact ONNX form (the message says why and what to do)."""


# ------------------------------------------------------------------------------------------ ranges

def onnx_range_type(quant_min: int, quant_max: int) -> str:
    """``"uint8"`` or ``"int8"``: the ONNX zero-point type that holds ``[quant_min, quant_max]``."""
    quant_min, quant_max = int(quant_min), int(quant_max)
    if 0 <= quant_min and quant_max <= 255:
        return "uint8"
    if -128 <= quant_min and quant_max <= 127:
        return "int8"
    raise OnnxExportError(
        f"q8.onnx: the quantization range [{quant_min}, {quant_max}] fits neither uint8 [0, 255] nor int8 "
        "[-128, 127]; q8.onnx exports 8-bit (and narrower) ranges only")


def _is_narrow(quant_min: int, quant_max: int) -> bool:
    full = (0, 255) if onnx_range_type(quant_min, quant_max) == "uint8" else (-128, 127)
    return (int(quant_min), int(quant_max)) != full


def _check_narrow(quant_min: int, quant_max: int, narrow_range: str, where: str) -> None:
    if narrow_range == "error" and _is_narrow(quant_min, quant_max):
        kind = onnx_range_type(quant_min, quant_max)
        raise OnnxExportError(
            f"q8.onnx: {where} quantizes to [{quant_min}, {quant_max}], narrower than the {kind} range of ONNX "
            "QuantizeLinear; a bare Q/DQ pair would saturate to the full range instead (e.g. -128 for "
            "[-127, 127]). Use narrow_range='clip' (exact: Max/Min after DequantizeLinear) or an 8-bit full range")


# ----------------------------------------------------------------------------- export-time modules

class _QDQ(torch.nn.Module):
    """Fake quantization with fixed qparams: what a frozen ``FakeQuantize`` computes in eval mode."""

    def __init__(self, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int, axis: Optional[int]):
        super().__init__()
        self.register_buffer("scale", scale.detach().to(torch.float32).clone())
        self.register_buffer("zero_point", zero_point.detach().to(torch.int32).clone())
        self.quant_min, self.quant_max, self.axis = int(quant_min), int(quant_max), axis

    def forward(self, x: Tensor) -> Tensor:
        if self.axis is None:
            return torch.ops.q8.fake_quantize_per_tensor(x, self.scale.reshape(()), self.zero_point.reshape(()),
                                                         self.quant_min, self.quant_max)
        return torch.ops.q8.fake_quantize_per_channel(x, self.scale.reshape(-1), self.zero_point.reshape(-1),
                                                      self.axis, self.quant_min, self.quant_max)


class _WeightDQ(torch.nn.Module):
    """The fake-quantized constant weight of a QAT layer, as stored codes: ``dequantize(codes)``.

    ``fake_quantize(w) == dequantize(quantize(w))`` bit for bit (q8's definition), so
    the codes are computed once, at export, and the ONNX file holds int8 weights.
    """

    def __init__(self, codes: Tensor, scale: Tensor, zero_point: Tensor, axis: int):
        super().__init__()
        self.register_buffer("codes", codes)
        self.register_buffer("scale", scale.detach().to(torch.float32).reshape(-1).clone())
        self.register_buffer("zero_point", zero_point.detach().to(torch.int32).reshape(-1).clone())
        self.axis = axis

    def forward(self, weight: Tensor) -> Tensor:  # weight: the float parameter, replaced by the codes
        return torch.ops.q8.dequantize(self.codes, self.scale, self.zero_point, self.axis,
                                       torch.float32).to(weight.dtype)


class _Int8LinearQDQ(torch.nn.Module):
    """``Int8Linear`` (static / weight_only) as float math on dequantized int8 weights."""

    def __init__(self, layer: Int8Linear):
        super().__init__()
        self.register_buffer("weight_int8", layer.weight_int8.detach().clone())
        self.register_buffer("weight_scale", layer.weight_scale.detach().clone())
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())
        self.input = None
        if layer.activation == "static":
            self.input = _QDQ(layer.input_scale, layer.input_zero_point, 0, 255, None)
        self.clamp_min = layer.clamp_min
        self.clamp_max = layer.clamp_max

    def forward(self, x: Tensor) -> Tensor:
        if self.input is not None:
            x = self.input(x)
        zero_point = torch.zeros_like(self.weight_scale, dtype=torch.int32)
        weight = torch.ops.q8.dequantize(self.weight_int8, self.weight_scale, zero_point, 0, torch.float32)
        bias = self.bias
        y = F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))
        return clamp(y, self.clamp_min, self.clamp_max)


class _Int8Conv2dQDQ(Int8Conv2d):
    """``Int8Conv2d`` whose weight goes through ``q8.dequantize`` (exported as ``DequantizeLinear``)."""

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> Tensor:
        zero_point = torch.zeros_like(self.weight_scale, dtype=torch.int32)
        return torch.ops.q8.dequantize(self.weight_int8, self.weight_scale, zero_point, 0, torch.float32).to(dtype)

    def forward(self, x: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        # q8.conv2d has no ONNX translation: the float formulation (QDQ input, DQ weight, Conv).
        return self._reference_forward(x, residual)


def _fake_quant_module(fq: FakeQuantize, name: str, narrow_range: str) -> torch.nn.Module:
    if bool(fq.observer_enabled.detach().cpu().reshape(-1)[0] != 0):
        raise OnnxExportError(
            f"q8.onnx: the observer of {name!r} is on: an ONNX graph cannot update observer state. Call "
            "q8.freeze_observers(model) (after calibration or training) before exporting")
    if not bool(fq.fake_quant_enabled.detach().cpu().reshape(-1)[0] != 0):
        return torch.nn.Identity()
    _check_narrow(fq.quant_min, fq.quant_max, narrow_range, repr(name))
    scale, zero_point = fq.calculate_qparams()
    return _QDQ(scale, zero_point, fq.quant_min, fq.quant_max, fq.axis if fq.per_channel else None)


def _weight_module(layer: torch.nn.Module, name: str, narrow_range: str) -> torch.nn.Module:
    fq = layer.weight_fake_quant
    module = _fake_quant_module(fq, name + ".weight_fake_quant", "clip")
    if not isinstance(module, _QDQ):
        return module  # fake quantization off: the float weight
    axis = fq.axis if fq.per_channel else None
    kind = onnx_range_type(fq.quant_min, fq.quant_max)
    dtype = torch.uint8 if kind == "uint8" else torch.int8
    weight = layer.weight.detach().to(torch.float32)
    codes = torch.ops.q8.quantize(weight, module.scale, module.zero_point, axis, fq.quant_min, fq.quant_max, dtype)
    if axis is None:
        # DequantizeLinear's per-tensor form: one-element qparams along any axis work; use axis 0 with a
        # broadcast copy so that one module serves both.
        scale = module.scale.reshape(1).expand(weight.size(0))
        zero_point = module.zero_point.reshape(1).expand(weight.size(0))
        return _WeightDQ(codes, scale, zero_point, 0)
    return _WeightDQ(codes, module.scale, module.zero_point, axis)


def prepare_for_onnx(model: torch.nn.Module, narrow_range: str = "clip") -> torch.nn.Module:
    """A copy of ``model`` in eval mode whose q8 modules are replaced by their export forms (module doc).

    ``model`` is not changed. Raises :class:`OnnxExportError` for modules that have
    no exact QDQ form (observers on, ``Int8Linear(activation="dynamic")``).
    """
    if narrow_range not in _NARROW:
        raise ValueError(f"q8.onnx: narrow_range must be 'clip' or 'error', got {narrow_range!r}")
    model = copy.deepcopy(model).eval()
    if isinstance(model, (FakeQuantize, Int8Linear)):
        wrapper = torch.nn.Sequential(model)
        return prepare_for_onnx(wrapper, narrow_range)
    for name, module in list(model.named_modules()):
        for child_name, child in list(module._modules.items()):
            if child is None:
                continue
            qualified = f"{name}.{child_name}" if name else child_name
            if isinstance(child, (QATLinear, QATConv2d)):
                child.weight_fake_quant = _weight_module(child, qualified, narrow_range)
                child.input_fake_quant = _fake_quant_module(child.input_fake_quant,
                                                            qualified + ".input_fake_quant", narrow_range)
            elif isinstance(child, FakeQuantize):
                setattr(module, child_name, _fake_quant_module(child, qualified, narrow_range))
            elif isinstance(child, Int8Linear):
                if child.activation == "dynamic":
                    raise OnnxExportError(
                        f"q8.onnx: {qualified!r} is an Int8Linear with activation='dynamic': its per-row run-time "
                        "quantization of the input has no standard ONNX QDQ form. Export the float model and "
                        "quantize it with onnxruntime.quantization.quantize_dynamic, or use q8.prepare / "
                        "q8.calibrate / q8.convert (static) or activation='weight_only'")
                setattr(module, child_name, _Int8LinearQDQ(child))
            elif type(child) is Int8Conv2d:
                if child.activation == "dynamic":
                    raise OnnxExportError(
                        f"q8.onnx: {qualified!r} is an Int8Conv2d with activation='dynamic': its per-sample run-time "
                        "quantization of the input has no standard ONNX QDQ form. Use q8.prepare / q8.calibrate / "
                        "q8.convert (static) or activation='weight_only'")
                child.__class__ = _Int8Conv2dQDQ  # a deep copy: the caller's layer is unchanged
    return model


# --------------------------------------------------------------------------- ONNX translations

def translation_table(narrow_range: str = "clip") -> Dict[Any, Any]:
    """``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``: q8 ops -> ONNX Q/DQ."""
    import numpy as np
    import onnx_ir as ir
    from onnxscript import opset18 as op

    def scalar_shape():
        return op.Constant(value=ir.tensor(np.zeros((0,), dtype=np.int64), name="q8_scalar_shape"))

    def zp_type(quant_min: int, quant_max: int):
        return ir.DataType.UINT8 if onnx_range_type(quant_min, quant_max) == "uint8" else ir.DataType.INT8

    def as_zero_point(zero_point, quant_min: int, quant_max: int):
        # q8: a float zero point is rounded half to even and clamped to the range; an integer one is in it.
        zp = op.Cast(zero_point, to=ir.DataType.FLOAT)
        zp = op.Clip(op.Round(zp), op.Constant(value_float=float(quant_min)),
                     op.Constant(value_float=float(quant_max)))
        return op.Cast(zp, to=zp_type(quant_min, quant_max))

    def float_in(x):
        dtype = x.dtype
        if dtype is not None and dtype != ir.DataType.FLOAT:
            return op.Cast(x, to=ir.DataType.FLOAT), dtype
        return x, None

    def float_out(y, dtype):
        return y if dtype is None else op.Cast(y, to=dtype)

    def clip(y, scale, zp, quant_min: int, quant_max: int, shape):
        # The float values of quant_min / quant_max as DequantizeLinear computes them:
        # float(q - zero_point) * scale in float32.
        zp_i = op.Cast(zp, to=ir.DataType.INT32)
        lo = op.Mul(op.Cast(op.Sub(op.Constant(value_int=quant_min), op.Cast(zp_i, to=ir.DataType.INT64)),
                            to=ir.DataType.FLOAT), scale)
        hi = op.Mul(op.Cast(op.Sub(op.Constant(value_int=quant_max), op.Cast(zp_i, to=ir.DataType.INT64)),
                            to=ir.DataType.FLOAT), scale)
        if shape is not None:
            lo = op.Reshape(lo, op.Constant(value_ints=shape))
            hi = op.Reshape(hi, op.Constant(value_ints=shape))
        return op.Max(op.Min(y, hi), lo)

    def qdq(x, scale, zero_point, quant_min: int, quant_max: int, axis: Optional[int]):
        if narrow_range == "error" and _is_narrow(quant_min, quant_max):
            _check_narrow(quant_min, quant_max, "error", "a q8 fake-quantize op")
        xf, dtype = float_in(x)
        scale = op.Cast(scale, to=ir.DataType.FLOAT)
        zp = as_zero_point(zero_point, quant_min, quant_max)
        shape = None
        if axis is None:
            scale, zp = op.Reshape(scale, scalar_shape()), op.Reshape(zp, scalar_shape())
            y = op.DequantizeLinear(op.QuantizeLinear(xf, scale, zp), scale, zp)
        else:
            rank = len(x.shape)
            axis = axis + rank if axis < 0 else axis
            scale, zp = op.Reshape(scale, op.Constant(value_ints=[-1])), op.Reshape(zp, op.Constant(value_ints=[-1]))
            y = op.DequantizeLinear(op.QuantizeLinear(xf, scale, zp, axis=axis), scale, zp, axis=axis)
            shape = [-1] + [1] * (rank - 1 - axis)
        if _is_narrow(quant_min, quant_max):
            y = clip(y, scale, zp, quant_min, quant_max, shape)
        return float_out(y, dtype)

    def fake_quantize_per_tensor(x, scale, zero_point, quant_min: int, quant_max: int):
        return qdq(x, scale, zero_point, quant_min, quant_max, None)

    def fake_quantize_per_channel(x, scale, zero_point, axis: int, quant_min: int, quant_max: int):
        return qdq(x, scale, zero_point, quant_min, quant_max, axis)

    def dequantize(codes, scale, zero_point, axis: Optional[int] = None, dtype: int = 6):
        if codes.dtype not in (ir.DataType.INT8, ir.DataType.UINT8):
            raise OnnxExportError(f"q8.onnx: q8.dequantize of {codes.dtype} codes is not exported (int8 / uint8 only)")
        scale = op.Cast(scale, to=ir.DataType.FLOAT)
        zp = op.Cast(zero_point, to=codes.dtype)
        if axis is None:
            scale, zp = op.Reshape(scale, scalar_shape()), op.Reshape(zp, scalar_shape())
            y = op.DequantizeLinear(codes, scale, zp)
        else:
            rank = len(codes.shape)
            axis = axis + rank if axis < 0 else axis
            y = op.DequantizeLinear(codes, scale, zp, axis=axis)
        return y  # float32; a non-float32 dtype is cast by the graph's own .to() when traced

    return {
        torch.ops.q8.fake_quantize_per_tensor.default: fake_quantize_per_tensor,
        torch.ops.q8.fake_quantize_per_channel.default: fake_quantize_per_channel,
        torch.ops.q8.dequantize.default: dequantize,
    }


# ------------------------------------------------------------------- graph rewrite (raw op calls)

_SUPPORTED = {"fake_quantize_per_tensor", "fake_quantize_per_channel", "dequantize", "observe_fake_quantize"}


def _const_value(ep: torch.export.ExportedProgram, node) -> Optional[Tensor]:
    """The value of a placeholder that is a parameter, buffer or constant of ``ep`` (None otherwise)."""
    if not isinstance(node, torch.fx.Node) or node.op != "placeholder":
        return None
    sig = ep.graph_signature
    for table in (sig.inputs_to_buffers, sig.inputs_to_parameters, sig.inputs_to_lifted_tensor_constants):
        if node.name in table:
            key = table[node.name]
            if key in ep.state_dict:
                return ep.state_dict[key]
            return ep.constants.get(key)
    return None


def _rewrite_observers(ep: torch.export.ExportedProgram, narrow_range: str) -> None:
    """Replace ``q8.observe_fake_quantize`` calls (observer off) by functional fake quantization."""
    graph = ep.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        ns, _, name = node.target.name().partition("::")
        if ns != "q8":
            continue
        name = name.split(".")[0]
        if name not in _SUPPORTED:
            raise OnnxExportError(
                f"q8.onnx: the graph calls q8.{name}, which has no ONNX translation (translated: "
                "fake_quantize_per_tensor, fake_quantize_per_channel, dequantize, observe_fake_quantize with its "
                "observer off). Int8Linear layers are exported by q8.onnx.export itself (static and weight_only)")
        schema_args = [a.name for a in node.target._schema.arguments]
        values = dict(zip(schema_args, node.args))
        values.update(node.kwargs)
        if "quant_min" in values:
            onnx_range_type(values["quant_min"], values["quant_max"])
            _check_narrow(values["quant_min"], values["quant_max"], narrow_range, f"q8.{name}")
        if name != "observe_fake_quantize":
            continue
        on = _const_value(ep, values["observer_on"])
        fq_on = _const_value(ep, values["fake_quant_on"])
        if on is None or fq_on is None:
            raise OnnxExportError(
                "q8.onnx: q8.observe_fake_quantize's observer_on / fake_quant_on must be buffers or constants of "
                "the model (their values decide the exported graph)")
        if bool(on.reshape(-1)[0] != 0):
            raise OnnxExportError(
                "q8.onnx: q8.observe_fake_quantize is called with its observer on: an ONNX graph cannot update "
                "observer state. Turn the observer off (q8.freeze_observers(model) for q8.nn modules) first")
        users = list(node.users)
        for user in users:
            if user.target is not operator.getitem or user.args[1] != 0:
                if user.users:
                    raise OnnxExportError("q8.onnx: the mask output of q8.observe_fake_quantize is not exported")
        x = values["input"]
        qmin, qmax = int(values["quant_min"]), int(values["quant_max"])
        axis = values.get("axis")
        with graph.inserting_before(node):
            if not bool(fq_on.reshape(-1)[0] != 0):
                new = x
            elif axis is None:
                new = graph.call_function(torch.ops.q8.fake_quantize_per_tensor.default,
                                          (x, values["scale"], values["zero_point"], qmin, qmax))
            else:
                new = graph.call_function(torch.ops.q8.fake_quantize_per_channel.default,
                                          (x, values["scale"], values["zero_point"], axis, qmin, qmax))
            if new is not x:
                new.meta["val"] = node.meta["val"][0]
        for user in users:
            if user.args[1] == 0:
                user.replace_all_uses_with(new)
            graph.erase_node(user)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    ep.graph_module.recompile()


# ---------------------------------------------------------------------------------- the export

def export(model: torch.nn.Module, args: Tuple[Any, ...], f=None, *, kwargs: Optional[Dict[str, Any]] = None,
           narrow_range: str = "clip", opset_version: int = 20, dynamic_shapes=None, input_names=None,
           output_names=None, optimize: bool = True, verbose: bool = False, **export_kwargs):
    """Export ``model`` (fake-quantized or int8 q8 layers, or raw q8 op calls) to ONNX with Q/DQ nodes.

    Args:
        model: a ``torch.nn.Module`` (not changed: q8 modules are replaced in a copy,
            see the module docstring). Its observers must be off.
        args, kwargs: example inputs, as for ``torch.export.export``.
        f: a path to save the model to (optional).
        narrow_range: ``"clip"`` (default: ranges narrower than int8 / uint8 get an
            exact ``Max``/``Min`` after ``DequantizeLinear``) or ``"error"`` (refuse them,
            for runtimes that fuse only bare Q/DQ pairs).
        opset_version: 18 or later (``QuantizeLinear`` with ``axis`` and int8 / uint8).
        dynamic_shapes, input_names, output_names, optimize, verbose, export_kwargs:
            passed to ``torch.onnx.export``.

    Returns the ``torch.onnx.ONNXProgram`` (``.model_proto``, ``.save(path)``).
    Requires the ``onnxscript`` package (and ``onnx``).
    """
    if opset_version < 18:
        raise ValueError(f"q8.onnx.export: opset_version must be at least 18, got {opset_version}")
    if not isinstance(args, tuple):
        args = (args,)
    prepared = prepare_for_onnx(model, narrow_range)
    ep = torch.export.export(prepared, args, kwargs=kwargs, dynamic_shapes=dynamic_shapes)
    _rewrite_observers(ep, narrow_range)
    program = torch.onnx.export(ep, args, kwargs=kwargs, dynamo=True, opset_version=opset_version,
                                custom_translation_table=translation_table(narrow_range), input_names=input_names,
                                output_names=output_names, optimize=optimize, verbose=verbose, **export_kwargs)
    if f is not None:
        program.save(str(f))
    return program
