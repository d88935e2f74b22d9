"""The quantization workflow: whole-model conversion to q8's layers.

* :func:`quantize_dynamic`: one-line post-training quantization (PTQ), no data;
* :func:`prepare` → :func:`calibrate` → :func:`convert`: static PTQ with calibrated
  activation ranges;
* :func:`prepare_qat` → train → :func:`convert`: quantization-aware training (QAT);
* :class:`q8.QConfig` chooses the scheme, the observers and the modules to skip.

Every swap goes through the converter registry (:mod:`q8.registry`,
:func:`q8.register_converter`; built-in converters are registered at the bottom of
this file): ``nn.Linear``, ``nn.Conv2d``, ``nn.MultiheadAttention`` and the
transformer layers, Hugging Face ``Conv1D``, RNNs and embeddings (when q8 has their
int8 modules). Types are matched exactly: subclasses are left float with a warning.
A layer shared by several parents is replaced by one shared layer. Every function
works in place and returns the model (or, when the model itself is a swapped layer,
the new layer); :func:`q8.conversion_report` tells what was converted and what was
left float, and why. See ``docs/converters.md``.
"""
from typing import Iterable, Optional

import torch

from . import registry
from .config import QConfig
from .nn.conv import Int8Conv2d
from .nn.linear import Int8Linear
from .nn.qat import FakeQuantize, QATConv2d, QATLinear, _config

__all__ = [
    "QConfig",
    "calibrate",
    "convert",
    "enable_fake_quant",
    "enable_observer",
    "freeze_observers",
    "prepare",
    "prepare_qat",
    "quantize_dynamic",
]

_MODES = ("dynamic", "weight_only")


def _skip_check(model: torch.nn.Module, skip, where: str):
    skip = {skip} if isinstance(skip, str) else set(skip)
    names = {name for name, _ in model.named_modules(remove_duplicate=False)}
    unknown = sorted(skip - names)
    if unknown:
        raise ValueError(f"{where}: skip names {unknown} are not modules of the model "
                         "(names are those of model.named_modules(), e.g. 'encoder.layers.0.fc1')")

    def skipped(qualified_name: str) -> bool:
        if qualified_name in skip:
            return True
        parts = qualified_name.split(".")
        return any(".".join(parts[:i]) in skip for i in range(1, len(parts)))

    return skipped


def _swap(model: torch.nn.Module, mode: str, arg, skip, where: str) -> torch.nn.Module:
    """Convert ``model`` with the registry's ``mode`` converters (see :mod:`q8.registry`)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{where}: expected a torch.nn.Module, got {type(model).__name__}")
    return registry.walk(model, mode, arg, _skip_check(model, skip, where), where)


def quantize_dynamic(model: torch.nn.Module, activation: str = "dynamic", skip: Iterable[str] = ()) -> torch.nn.Module:
    """Replace every ``nn.Linear`` by :class:`q8.nn.Int8Linear` and every ``nn.Conv2d`` by :class:`q8.nn.Int8Conv2d`.

    Also every other registered type (``nn.MultiheadAttention`` and the transformer
    encoder, Hugging Face ``Conv1D``, RNNs and embeddings when q8 has their int8
    modules, a user's own: :func:`q8.register_converter`); :func:`q8.conversion_report`
    lists what was converted and what was left float, and why.

    Args:
        model: the model, changed in place; layers are converted on their device.
        activation: for the linear layers: ``"dynamic"`` (activations quantized per
            row at run time) or ``"weight_only"``. ``"static"`` is refused: it needs
            calibrated input qparams; use :func:`prepare` / :func:`calibrate` /
            :func:`convert`. Convolutions always keep float activations (their int8
            weights are dequantized to compute: a 4x smaller layer, not a faster one).
        skip: qualified module names (as in ``model.named_modules()``) to leave in
            float: a named layer is kept, and so is every layer inside a named
            container. Every name must exist in the model (a typo is an error, not a
            silently unquantized layer).
    """
    if activation == "static":
        raise ValueError("q8.quantize_dynamic: activation='static' needs calibrated input_scale and "
                         "input_zero_point for each layer; use q8.prepare, q8.calibrate and q8.convert, or "
                         "Int8Linear.from_float(linear, 'static', input_scale, input_zero_point), or "
                         "activation='dynamic' / 'weight_only' here")
    if activation not in _MODES:
        raise ValueError(f"q8.quantize_dynamic: activation must be 'dynamic' or 'weight_only', got {activation!r}")
    return _swap(model, "dynamic", activation, skip, "q8.quantize_dynamic")


def _swap_for_qat(model: torch.nn.Module, config: QConfig, where: str) -> torch.nn.Module:
    return _swap(model, "qat", config, config.skip, where)


def prepare_qat(model: torch.nn.Module, config: Optional[QConfig] = None) -> torch.nn.Module:
    """Swap every ``nn.Linear`` / ``nn.Conv2d`` for :class:`q8.nn.QATLinear` / :class:`q8.nn.QATConv2d`.

    The new layers share the float layers' weight and bias parameters (an optimizer
    built before still trains them) and fake-quantize weights (per output channel)
    and inputs (per tensor) as ``config`` (default :class:`q8.QConfig`) says, with
    their observers and fake quantization on. Train the model as usual, optionally
    :func:`freeze_observers` for the last epochs, then :func:`convert`.
    ``config.skip`` names modules to leave in float.
    """
    return _swap_for_qat(model, _config(config, "q8.prepare_qat"), "q8.prepare_qat")


#: :func:`prepare`'s default: min / max activation observers. A moving average
#: (QAT's default) with its constant of 0.01 would keep little more than the first
#: calibration batch's range.
PTQ_CONFIG = QConfig(activation_observer="minmax")


def prepare(model: torch.nn.Module, config: Optional[QConfig] = None) -> torch.nn.Module:
    """For static PTQ: :func:`prepare_qat`, with the observers on and fake quantization off.

    Then run :func:`calibrate` on representative data and :func:`convert`. The
    default ``config`` is :data:`PTQ_CONFIG` (``QConfig(activation_observer="minmax")``);
    ``QConfig(activation_observer="percentile")`` clips outliers instead.
    """
    config = PTQ_CONFIG if config is None else _config(config, "q8.prepare")
    model = _swap_for_qat(model, config, "q8.prepare")
    enable_observer(model, True)
    enable_fake_quant(model, False)
    return model


def _fake_quants(model: torch.nn.Module):
    return [m for m in model.modules() if isinstance(m, FakeQuantize)]


def enable_observer(model: torch.nn.Module, enabled: bool = True) -> torch.nn.Module:
    """Turn every :class:`q8.nn.FakeQuantize` observer of ``model`` on (or off)."""
    for fq in _fake_quants(model):
        fq.enable_observer(enabled)
    return model


def enable_fake_quant(model: torch.nn.Module, enabled: bool = True) -> torch.nn.Module:
    """Turn every :class:`q8.nn.FakeQuantize`'s fake quantization of ``model`` on (or off)."""
    for fq in _fake_quants(model):
        fq.enable_fake_quant(enabled)
    return model


def freeze_observers(model: torch.nn.Module) -> torch.nn.Module:
    """Stop every observer of ``model``: the qparams stay as they are (learnable ones keep learning)."""
    return enable_observer(model, False)


def _model_device(model: torch.nn.Module) -> Optional[torch.device]:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.device.type != "meta":
            return t.device
    return None


def calibrate(model: torch.nn.Module, data: Iterable, num_batches: Optional[int] = None,
              progress: bool = True) -> torch.nn.Module:
    """Run ``model`` on ``data`` with its observers on, to set the activation ranges of static PTQ.

    Args:
        model: a model from :func:`prepare` (or :func:`prepare_qat`).
        data: an iterable of batches: input tensors, or tuples / lists whose first
            element is the input (e.g. ``(input, target)`` from a ``DataLoader``).
            Tensors are moved to the model's device.
        num_batches: stop after this many batches (default: all of ``data``).
        progress: show a progress bar (``tqdm``, when installed).

    The model runs in eval mode under ``torch.no_grad()``, with every observer on
    and fake quantization off (the observers see float activations, as in the
    float model). Afterwards the observers are frozen, fake quantization is on
    (the model now computes what :func:`convert` will) and the model's train /
    eval mode is restored. Under ``torch.distributed`` every rank must call it on
    the same number of batches: the observers all-reduce their statistics.
    """
    if not _fake_quants(model):
        raise ValueError("q8.calibrate: the model has no q8.nn.FakeQuantize modules; call q8.prepare(model) first")
    if num_batches is not None and int(num_batches) < 1:
        raise ValueError(f"q8.calibrate: num_batches must be positive, got {num_batches!r}")
    device = _model_device(model)
    total = num_batches
    if total is None:
        try:
            total = len(data)
        except TypeError:
            total = None
    iterator = iter(data)
    if progress:
        try:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, total=total, desc="q8 calibrate", unit="batch")
        except ImportError:
            pass
    was_training = model.training
    model.eval()
    enable_observer(model, True)
    enable_fake_quant(model, False)
    seen = 0
    try:
        with torch.no_grad():
            for batch in iterator:
                if isinstance(batch, (tuple, list)):
                    if not batch:
                        raise ValueError("q8.calibrate: got an empty batch tuple")
                    batch = batch[0]
                if isinstance(batch, torch.Tensor) and device is not None:
                    batch = batch.to(device)
                model(batch)
                seen += 1
                if num_batches is not None and seen >= num_batches:
                    break
    finally:
        if hasattr(iterator, "close"):
            iterator.close()
        freeze_observers(model)
        enable_fake_quant(model, True)
        model.train(was_training)
    if seen == 0:
        raise ValueError("q8.calibrate: data gave no batches")
    return model


def _weight_qparams(layer, where: str):
    """The weight's (scale, zero_point) for conversion: those the QAT layer fake-quantizes with now."""
    fq = layer.weight_fake_quant
    if not fq.per_channel or fq.axis not in (0, -layer.weight.dim()):
        raise ValueError(f"{where}: the weight must be quantized per output channel (axis 0), got "
                         f"qscheme={fq.qscheme!r}, axis={fq.axis}")
    if not (-127 <= fq.quant_min and fq.quant_max <= 127):
        raise ValueError(f"{where}: int8 layers take weight codes in [-127, 127], got [{fq.quant_min}, "
                         f"{fq.quant_max}]")
    sync = fq.sync
    fq.sync = False  # convert runs on one rank: no collective
    try:
        with torch.no_grad():
            fq(layer.weight)  # re-observes the final weight when the weight observer is still on
    finally:
        fq.sync = sync
    scale, zero_point = fq.calculate_qparams()
    if bool((zero_point != 0).any()):
        raise ValueError(f"{where}: int8 layers need symmetric weights (zero point 0), got qscheme="
                         f"{fq.qscheme!r} with quant range [{fq.quant_min}, {fq.quant_max}]")
    if not bool(torch.isfinite(scale).all()):
        raise ValueError(f"{where}: the weight scale is not finite (a non-finite weight?)")
    weight = layer.weight.detach().to(torch.float32)
    codes = torch.ops.q8.quantize(weight, scale, zero_point, 0, fq.quant_min, fq.quant_max, torch.int8)
    return codes, scale.to(torch.float32)


def _input_qparams(layer, where: str):
    fq = layer.input_fake_quant
    if fq.per_channel or fq.quant_min != 0 or fq.quant_max != 255:
        raise ValueError(f"{where}: int8 layers take uint8 activations quantized per tensor in [0, 255]; the "
                         f"input fake quantizer has qscheme={fq.qscheme!r} and range [{fq.quant_min}, "
                         f"{fq.quant_max}] (use QConfig(activation_bits=8, activation_qscheme='per_tensor_affine'))")
    if fq.lsq_scale is None and not fq.has_observed():
        raise ValueError(f"{where}: the input observer has seen no data; run q8.calibrate (static PTQ) or train "
                         "(QAT) before q8.convert")
    return fq.calculate_qparams()


def _convert_linear(layer, name: str) -> Int8Linear:
    where = f"q8.convert: layer {name or '<model>'!r}"
    codes, scale = _weight_qparams(layer, where)
    input_scale, input_zero_point = _input_qparams(layer, where)
    device = layer.weight.device
    module = Int8Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, activation="static",
                        device=device)
    module.weight_int8 = codes.contiguous()
    module.weight_scale = scale.contiguous()
    if layer.bias is not None:
        module.bias = layer.bias.detach().to(torch.float32).clone()
    module.input_scale = input_scale.reshape(()).to(device=device, dtype=torch.float32).clone()
    module.input_zero_point = input_zero_point.reshape(()).to(device=device, dtype=torch.int32).clone()
    module.train(layer.training)
    module.repack()
    return module


def _convert_conv(layer: QATConv2d, name: str) -> Int8Conv2d:
    where = f"q8.convert: layer {name or '<model>'!r}"
    codes, scale = _weight_qparams(layer, where)
    input_scale, input_zero_point = _input_qparams(layer, where)
    module = Int8Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                        layer.dilation, layer.groups, layer.bias is not None, layer.padding_mode,
                        static_input=True, device=layer.weight.device)
    module.weight_int8 = codes.contiguous()
    module.weight_scale = scale.contiguous()
    if layer.bias is not None:
        module.bias = layer.bias.detach().to(torch.float32).clone()
    module.input_scale = input_scale.reshape(()).to(torch.float32).clone()
    module.input_zero_point = input_zero_point.reshape(()).to(torch.int32).clone()
    module.train(layer.training)
    return module


def convert(model: torch.nn.Module) -> torch.nn.Module:
    """Turn the QAT / calibrated layers of ``model`` into int8 layers, in place.

    * :class:`q8.nn.QATLinear` → :class:`q8.nn.Int8Linear` with ``activation="static"``:
      int8 weights with the weight fake quantizer's per-channel scales (re-observed
      on the final weight when its observer is still on; learned ones for LSQ) and
      the input fake quantizer's scale / zero point;
    * :class:`q8.nn.QATConv2d` → :class:`q8.nn.Int8Conv2d`: int8 weights likewise,
      dequantized to compute (4x smaller, not faster), the input fake-quantized with
      the calibrated qparams.

    The converted model computes what the fake-quantized model computed in eval
    mode, up to float rounding. Requirements (checked, with an error naming the
    layer): symmetric per-channel weights with codes in [-127, 127] and uint8
    per-tensor activations ([0, 255]) that have been observed.
    """
    return _swap(model, "convert", None, (), "q8.convert")


# ---------------------------------------------------------------------------------------------- built-in converters
# Every built-in conversion is registered here, through the same q8.register_converter
# that users call (docs/converters.md lists what each does).

def _name() -> str:
    return registry.current_name()


def _rebrand(module: torch.nn.Module, cls: type) -> torch.nn.Module:
    """``module`` itself, now of class ``cls`` (a subclass adding no state: only ``forward`` differs).

    In place, as for any container, so that ``q8.quantize_dynamic(encoder)`` without using
    the result converts ``encoder`` itself; its children are then converted (``descend``).
    """
    if type(module) is not cls:
        module.__class__ = cls
    return module


def _encoder_layer(module, _arg=None):
    from .nn.attention import Int8TransformerEncoderLayer

    return _rebrand(module, Int8TransformerEncoderLayer)


def _encoder(module, _arg=None):
    # nn.TransformerEncoder's sparsity fast path turns the input into a nested tensor and
    # reads the first layer's float weights: Int8TransformerEncoder has none.
    from .nn.attention import Int8TransformerEncoder

    module = _rebrand(module, Int8TransformerEncoder)
    module.use_nested_tensor = False
    return module


def _convert_qat_mha(layer) -> torch.nn.Module:
    from .nn.attention import Int8MultiheadAttention

    name = _name()
    projections = [_convert_linear(getattr(layer, p), f"{name}.{p}" if name else p)
                   for p in ("q_proj", "k_proj", "v_proj", "out_proj")]
    return Int8MultiheadAttention._shell(layer, *projections)


def _convert_embedding(layer) -> torch.nn.Module:
    """QATEmbedding / QATEmbeddingBag -> Int8Embedding / Int8EmbeddingBag with the codes and scales it used."""
    from .nn.embedding import Int8Embedding, Int8EmbeddingBag
    from .nn.qat_embedding import QATEmbedding

    where = f"q8.convert: layer {_name() or '<model>'!r}"
    codes, scale = _weight_qparams(layer, where)
    device, dtype = layer.weight.device, layer.weight.dtype
    if isinstance(layer, QATEmbedding):
        module = Int8Embedding(layer.num_embeddings, layer.embedding_dim, padding_idx=layer.padding_idx, dtype=dtype,
                               device=device)
    else:
        module = Int8EmbeddingBag(layer.num_embeddings, layer.embedding_dim, mode=layer.mode,
                                  include_last_offset=layer.include_last_offset, padding_idx=layer.padding_idx,
                                  dtype=dtype, device=device)
    module._set_table(codes.contiguous(), scale.contiguous())
    module.train(layer.training)
    return module


def _lazy(class_name: str, takes_activation: bool):
    """A converter to ``q8.nn.<class_name>.from_float``, looked up when it runs (other q8 parts provide it)."""

    def convert_lazily(module, activation):
        from . import nn as q8nn

        cls = getattr(q8nn, class_name, None)
        if cls is None:
            raise registry.Unavailable(f"q8.nn.{class_name} is not available in this q8 build")
        try:
            if takes_activation:
                return cls.from_float(module, activation=activation)
            return cls.from_float(module)
        except (TypeError, ValueError) as e:
            # e.g. a mode or a module option that class does not take: the module stays float,
            # reported and warned about, rather than failing the whole model's conversion.
            raise NotImplementedError(f"q8.nn.{class_name}.from_float: {e}") from e

    return convert_lazily


def _register_builtins() -> None:
    from .nn import hf
    from .nn.qat_embedding import QATEmbedding, QATEmbeddingBag
    from .nn.attention import (Int8MultiheadAttention, Int8TransformerEncoder, Int8TransformerEncoderLayer,
                               QATMultiheadAttention)

    reg = registry.register_converter
    nn = torch.nn
    reg(nn.Linear, dynamic=lambda m, a: Int8Linear.from_float(m, a), qat=lambda m, c: QATLinear.from_float(m, c))
    reg(QATLinear, convert=lambda m: _convert_linear(m, _name()))
    reg(nn.Conv2d, dynamic=lambda m, a: Int8Conv2d.from_float(m), qat=lambda m, c: QATConv2d.from_float(m, c))
    reg(QATConv2d, convert=lambda m: _convert_conv(m, _name()))
    reg(nn.MultiheadAttention, dynamic=lambda m, a: Int8MultiheadAttention.from_float(m, a),
        qat=lambda m, c: QATMultiheadAttention.from_float(m, c))
    reg(QATMultiheadAttention, convert=_convert_qat_mha)
    for t in (nn.TransformerEncoderLayer, Int8TransformerEncoderLayer):
        reg(t, dynamic=_encoder_layer, qat=_encoder_layer, convert=_encoder_layer, descend=True)
    for t in (nn.TransformerEncoder, Int8TransformerEncoder):
        reg(t, dynamic=_encoder, qat=_encoder, convert=_encoder, descend=True)
    reg(hf.HF_CONV1D, dynamic=lambda m, a: Int8Linear.from_float(hf.conv1d_as_linear(m), a),
        qat=lambda m, c: hf.QATConv1D.from_float(m, c))
    reg(hf.QATConv1D, convert=lambda m: _convert_linear(hf._linear_view(m), _name()))
    for t, cls in ((nn.LSTM, "Int8LSTM"), (nn.GRU, "Int8GRU"), (nn.RNN, "Int8RNN"), (nn.LSTMCell, "Int8LSTMCell"),
                   (nn.GRUCell, "Int8GRUCell"), (nn.RNNCell, "Int8RNNCell")):
        reg(t, dynamic=_lazy(cls, True))
    reg(nn.Embedding, dynamic=_lazy("Int8Embedding", False), qat=lambda m, c: QATEmbedding.from_float(m, c))
    reg(nn.EmbeddingBag, dynamic=_lazy("Int8EmbeddingBag", False),
        qat=lambda m, c: QATEmbeddingBag.from_float(m, c))
    reg(QATEmbedding, convert=_convert_embedding)
    reg(QATEmbeddingBag, convert=_convert_embedding)


_register_builtins()
