"""The quantization workflow: whole-model conversion to q8's layers.

* :func:`quantize_dynamic`: one-line post-training quantization (PTQ), no data;
* :func:`prepare` → :func:`calibrate` → :func:`convert`: static PTQ with calibrated
  activation ranges;
* :func:`prepare_qat` → train → :func:`convert`: quantization-aware training (QAT);
* :class:`q8.QConfig` chooses the scheme, the observers and the modules to skip;
* ``conv / linear -> BatchNorm -> ReLU`` chains are fused first (:mod:`q8.fuse`,
  ``docs/fusion.md``): BatchNorms folded (QAT: :class:`q8.nn.qat_conv.QATConvBn2d`),
  activations turned into the int8 layer's output clamp.

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
import torch.nn.functional as F

from . import registry
from .config import QConfig
from .fuse import auto_fuse
from .nn.conv import Int8Conv1d, Int8Conv2d
from .nn.fused import FusedConv1d, FusedConv2d, FusedLinear, Int8Clamped, _Fused
from .nn.linear import Int8Linear
from .nn.qat import FakeQuantize, QATConv1d, QATConv2d, QATLinear, _config
from .nn.qat_conv import QATConvBn1d, QATConvBn2d, QATLinearBn1d, _QATConvBnMixin

__all__ = [
    "QConfig",
    "calibrate",
    "freeze_bn_stats",
    "convert",
    "enable_fake_quant",
    "enable_observer",
    "freeze_observers",
    "prepare",
    "prepare_qat",
    "quantize_dynamic",
    "update_bn_stats",
]

from .nn.qat_conv import freeze_bn_stats, update_bn_stats  # noqa: E402

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


def _swap(model: torch.nn.Module, mode: str, arg, skip, where: str, fuse: bool = False,
          fold: bool = False) -> torch.nn.Module:
    """Convert ``model`` with the registry's ``mode`` converters (see :mod:`q8.registry`).

    ``fuse``: first fuse the conv / linear -> BN -> activation chains q8 finds (:func:`q8.fuse.auto_fuse`);
    ``fold``: fold every fused BatchNorm into its layer (running statistics), in place (static PTQ).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{where}: expected a torch.nn.Module, got {type(model).__name__}")
    skipped = _skip_check(model, skip, where)
    if fuse:
        auto_fuse(model, skipped)
    if fold:
        for name, m in model.named_modules():
            if isinstance(m, _Fused) and not skipped(name):
                m.fold_bn_()
    return registry.walk(model, mode, arg, skipped, where)


def quantize_dynamic(model: torch.nn.Module, activation: str = "dynamic", skip: Iterable[str] = (),
                     fuse: bool = True) -> torch.nn.Module:
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
            :func:`convert`. Convolutions get the same ``activation``
            (``Int8Conv2d.from_float(conv, activation=a)``: ``"dynamic"`` quantizes each
            sample at run time and runs the int8 convolution kernel).
        skip: qualified module names (as in ``model.named_modules()``) to leave in
            float: a named layer is kept, and so is every layer inside a named
            container. Every name must exist in the model (a typo is an error, not a
            silently unquantized layer).
        fuse: first fuse ``conv / linear -> BatchNorm -> ReLU`` chains (either of the
            last two optional) q8 finds (``docs/fusion.md``): the BatchNorm is folded into
            the weight and bias (its running statistics: the model should be in eval
            mode) and the activation becomes the int8 layer's output clamp. ``False`` keeps
            the model's structure; :func:`q8.fuse_modules` fuses by hand.
    """
    if activation == "static":
        raise ValueError("q8.quantize_dynamic: activation='static' needs calibrated input_scale and "
                         "input_zero_point for each layer; use q8.prepare, q8.calibrate and q8.convert, or "
                         "Int8Linear.from_float(linear, 'static', input_scale, input_zero_point), or "
                         "activation='dynamic' / 'weight_only' here")
    if activation not in _MODES:
        raise ValueError(f"q8.quantize_dynamic: activation must be 'dynamic' or 'weight_only', got {activation!r}")
    return _swap(model, "dynamic", activation, skip, "q8.quantize_dynamic", fuse=bool(fuse))


def _swap_for_qat(model: torch.nn.Module, config: QConfig, where: str, fold: bool) -> torch.nn.Module:
    # QAT keeps BatchNorms training (QATConvBn2d, QATLinearBn1d); static PTQ (fold) folds them first.
    return _swap(model, "qat", config, config.skip, where, fuse=config.fuse, fold=fold)


def prepare_qat(model: torch.nn.Module, config: Optional[QConfig] = None) -> torch.nn.Module:
    """Swap every ``nn.Linear`` / ``nn.Conv2d`` for :class:`q8.nn.QATLinear` / :class:`q8.nn.QATConv2d`.

    The new layers share the float layers' weight and bias parameters (an optimizer
    built before still trains them) and fake-quantize weights (per output channel)
    and inputs (per tensor) as ``config`` (default :class:`q8.QConfig`) says, with
    their observers and fake quantization on. Train the model as usual, optionally
    :func:`freeze_observers` for the last epochs, then :func:`convert`.
    ``config.skip`` names modules to leave in float.

    With ``config.fuse`` (the default) ``conv -> BatchNorm (-> ReLU)`` chains are fused
    first (``docs/fusion.md``): a chain with a BatchNorm becomes a
    :class:`q8.nn.QATConvBn2d` (or ``QATLinearBn1d``: the folded weight fake-quantized
    while the BN statistics keep updating; :func:`freeze_bn_stats` freezes them, usually
    for the last epochs), one without a :class:`q8.nn.QATConv2d` / ``QATLinear`` whose
    output is clamped by the activation.
    """
    return _swap_for_qat(model, _config(config, "q8.prepare_qat"), "q8.prepare_qat", fold=False)


#: :func:`prepare`'s default: min / max activation observers. A moving average
#: (QAT's default) with its constant of 0.01 would keep little more than the first
#: calibration batch's range.
PTQ_CONFIG = QConfig(activation_observer="minmax")


def prepare(model: torch.nn.Module, config: Optional[QConfig] = None) -> torch.nn.Module:
    """For static PTQ: :func:`prepare_qat`, with the observers on and fake quantization off.

    Then run :func:`calibrate` on representative data and :func:`convert`. The
    default ``config`` is :data:`PTQ_CONFIG` (``QConfig(activation_observer="minmax")``);
    ``QConfig(activation_observer="percentile")`` clips outliers instead.

    With ``config.fuse`` (the default) ``conv / linear -> BatchNorm -> ReLU`` chains are
    fused and their BatchNorms folded into the layers' weights and biases with the
    running statistics (PTQ assumes the model is in eval mode); the activation becomes
    the prepared layer's output clamp, applied before the next layer's input observer,
    as the converted int8 layer will (``docs/fusion.md``).
    """
    config = PTQ_CONFIG if config is None else _config(config, "q8.prepare")
    model = _swap_for_qat(model, config, "q8.prepare", fold=True)
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


def _run_batches(model: torch.nn.Module, batches: Iterable, where: str, num_batches: Optional[int] = None) -> int:
    """Run ``model`` under ``torch.no_grad()`` on each batch (an input tensor, or a tuple / list whose first
    element is the input; tensors moved to the model's device), at most ``num_batches``; how many ran."""
    device = _model_device(model)
    seen = 0
    with torch.no_grad():
        for batch in batches:
            if isinstance(batch, (tuple, list)):
                if not batch:
                    raise ValueError(f"{where}: got an empty batch tuple")
                batch = batch[0]
            if isinstance(batch, torch.Tensor) and device is not None:
                batch = batch.to(device)
            model(batch)
            seen += 1
            if num_batches is not None and seen >= num_batches:
                break
    return seen


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
        seen = _run_batches(model, iterator, "q8.calibrate", num_batches)
    finally:
        if hasattr(iterator, "close"):
            iterator.close()
        freeze_observers(model)
        enable_fake_quant(model, True)
        model.train(was_training)
    if seen == 0:
        raise ValueError("q8.calibrate: data gave no batches")
    return model


def _weight_qparams(layer, where: str, weight: Optional[torch.Tensor] = None):
    """The weight's (codes, scale) for conversion: those the QAT layer fake-quantizes with now.

    ``weight``: the weight the fake quantizer sees (default ``layer.weight``; the folded one for conv-BN).
    """
    if weight is None:
        weight = layer.weight
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
            fq(weight)  # re-observes the final weight when the weight observer is still on
    finally:
        fq.sync = sync
    scale, zero_point = fq.calculate_qparams()
    if bool((zero_point != 0).any()):
        raise ValueError(f"{where}: int8 layers need symmetric weights (zero point 0), got qscheme="
                         f"{fq.qscheme!r} with quant range [{fq.quant_min}, {fq.quant_max}]")
    if not bool(torch.isfinite(scale).all()):
        raise ValueError(f"{where}: the weight scale is not finite (a non-finite weight?)")
    weight = weight.detach().to(torch.float32)
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
    """QATLinear / QATLinearBn1d (folded with the running statistics) -> a static Int8Linear with the clamp."""
    where = f"q8.convert: layer {name or '<model>'!r}"
    if isinstance(layer, _QATConvBnMixin):
        weight, bias = layer.folded_weight_and_bias()
    else:
        weight, bias = layer.weight, layer.bias
    codes, scale = _weight_qparams(layer, where, weight)
    input_scale, input_zero_point = _input_qparams(layer, where)
    device = layer.weight.device
    module = Int8Linear(layer.in_features, layer.out_features, bias=bias is not None, activation="static",
                        device=device)
    module.weight_int8 = codes.contiguous()
    module.weight_scale = scale.contiguous()
    if bias is not None:
        module.bias = bias.detach().to(torch.float32).clone()
    module.input_scale = input_scale.reshape(()).to(device=device, dtype=torch.float32).clone()
    module.input_zero_point = input_zero_point.reshape(()).to(device=device, dtype=torch.int32).clone()
    module.train(layer.training)
    module.repack()
    return _clamped(module, getattr(layer, "clamp_min", None), getattr(layer, "clamp_max", None))


def _conv_class(layer):
    """``q8.nn.Int8Conv2d`` / ``Int8Conv1d`` for a (QAT) conv layer."""
    return Int8Conv2d if isinstance(layer, torch.nn.Conv2d) else Int8Conv1d


def _clamped(module: torch.nn.Module, clamp_min, clamp_max) -> torch.nn.Module:
    """``module`` with the fused activation: in its own epilogue (``clamp_min`` / ``clamp_max``: q8's int8 linear
    and conv layers), or in an ``Int8Clamped`` after a layer without one."""
    if clamp_min is None and clamp_max is None:
        return module
    if hasattr(module, "clamp_min") and hasattr(module, "clamp_max"):
        module.clamp_min = None if clamp_min is None else float(clamp_min)
        module.clamp_max = None if clamp_max is None else float(clamp_max)
        return module
    return Int8Clamped(module, clamp_min, clamp_max)


def _convert_conv(layer, name: str) -> torch.nn.Module:
    """QATConv1d / QATConv2d / QATConvBn1d / QATConvBn2d -> a static Int8Conv (folded weight, clamp)."""
    where = f"q8.convert: layer {name or '<model>'!r}"
    cls = _conv_class(layer)
    if isinstance(layer, _QATConvBnMixin):
        weight, bias = layer.folded_weight_and_bias()
    else:
        weight, bias = layer.weight, layer.bias
    codes, scale = _weight_qparams(layer, where, weight)
    input_scale, input_zero_point = _input_qparams(layer, where)
    device = layer.weight.device
    args = (layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
            layer.groups, bias is not None, layer.padding_mode)
    module = cls(*args, activation="static", device=device)
    module.weight_int8 = codes.contiguous()
    module.weight_scale = scale.contiguous()
    if bias is not None:
        module.bias = bias.detach().to(torch.float32).clone()
    module.input_scale = input_scale.reshape(()).to(device=device, dtype=torch.float32).clone()
    module.input_zero_point = input_zero_point.reshape(()).to(device=device, dtype=torch.int32).clone()
    module = _clamped(module, layer.clamp_min, layer.clamp_max)
    module.repack()
    module.train(layer.training)
    return module


def _dynamic_conv(conv, activation: str, clamp=(None, None)) -> torch.nn.Module:
    """A float conv (BN already folded) -> Int8Conv2d / Int8Conv1d.from_float with the clamp in its epilogue
    (every mode of the int8 conv clamps, weight_only included)."""
    cls = _conv_class(conv)
    try:
        module = cls.from_float(conv, activation=activation)
    except (TypeError, ValueError) as e:
        raise NotImplementedError(f"q8.nn.{cls.__name__}.from_float: {e}") from e
    return _clamped(module, *clamp)


def _dynamic_fused(fused, activation: str) -> torch.nn.Module:
    layer = fused.folded_layer()
    clamp = fused.clamp()
    if isinstance(fused, FusedLinear):
        return _clamped(Int8Linear.from_float(layer, activation), *clamp)
    return _dynamic_conv(layer, activation, clamp)


def _qat_fused(fused, config: QConfig) -> torch.nn.Module:
    """FusedConv / FusedLinear -> QATConvBn / QATLinearBn1d (BN kept, training) or a QAT layer with the clamp
    (no BN)."""
    if isinstance(fused, FusedLinear):
        if fused.has_bn:
            return QATLinearBn1d.from_fused(fused, config)
        qat = QATLinear.from_float(fused.linear, config)
    elif fused.has_bn:
        cls = QATConvBn2d if isinstance(fused, FusedConv2d) else QATConvBn1d
        return cls.from_fused(fused, config)
    else:
        cls = QATConv2d if isinstance(fused, FusedConv2d) else QATConv1d
        qat = cls.from_float(fused.conv, config)
    qat.clamp_min, qat.clamp_max = fused.clamp()
    return qat


def convert(model: torch.nn.Module) -> torch.nn.Module:
    """Turn the QAT / calibrated layers of ``model`` into int8 layers, in place.

    * :class:`q8.nn.QATLinear` → :class:`q8.nn.Int8Linear` with ``activation="static"``:
      int8 weights with the weight fake quantizer's per-channel scales (re-observed
      on the final weight when its observer is still on; learned ones for LSQ) and
      the input fake quantizer's scale / zero point;
    * :class:`q8.nn.QATConv2d` (and the fused / conv-BN QAT layers) → :class:`q8.nn.Int8Conv2d`
      with ``activation="static"`` on the int8 convolution kernel: int8 weights likewise
      (BatchNorm folded), the calibrated input qparams, a fused ReLU / ReLU6 as its clamp.
      :func:`q8.lower` then keeps uint8 tensors between consecutive int8 layers.

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


def _relu_into_linear1(module) -> bool:
    """Make a transformer layer's ``linear1`` a FusedLinear with its ReLU feed-forward activation (converted next
    with the clamp in its epilogue); False when the activation is not ReLU or linear1 no plain nn.Linear."""
    act = module.activation
    if not (act is F.relu or isinstance(act, torch.nn.ReLU)) or type(module.linear1) is not torch.nn.Linear:
        return False
    module.linear1 = FusedLinear(module.linear1, None, torch.nn.ReLU())
    return True


def _encoder_layer_fusing(module, arg=None):
    """Rebranded, with a ReLU feed-forward activation fused into ``linear1``. GELU and other activations stay
    calls."""
    module = _encoder_layer(module, arg)
    # (always an instance attribute: TorchScript reads those)
    module.q8_relu_in_linear1 = module.q8_relu_in_linear1 or _relu_into_linear1(module)
    return module


def _decoder_layer_fusing(module, arg=None):
    """A decoder layer with a ReLU feed-forward activation: Int8TransformerDecoderLayer, the ReLU fused into
    ``linear1``; any other stays as it is (its children are converted either way)."""
    from .nn.attention import Int8TransformerDecoderLayer

    if _relu_into_linear1(module):
        module = _rebrand(module, Int8TransformerDecoderLayer)
        module.q8_relu_in_linear1 = True
    return module


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
    for t in (QATLinear, QATLinearBn1d):
        reg(t, convert=lambda m: _convert_linear(m, _name()))
    reg(nn.Conv2d, dynamic=_dynamic_conv, qat=lambda m, c: QATConv2d.from_float(m, c))
    reg(nn.Conv1d, dynamic=_dynamic_conv, qat=lambda m, c: QATConv1d.from_float(m, c))
    for t in (QATConv2d, QATConv1d, QATConvBn2d, QATConvBn1d):
        reg(t, convert=lambda m: _convert_conv(m, _name()))
    for t in (FusedConv2d, FusedConv1d, FusedLinear):
        reg(t, dynamic=_dynamic_fused, qat=_qat_fused)
    reg(nn.MultiheadAttention, dynamic=lambda m, a: Int8MultiheadAttention.from_float(m, a),
        qat=lambda m, c: QATMultiheadAttention.from_float(m, c))
    reg(QATMultiheadAttention, convert=_convert_qat_mha)
    for t in (nn.TransformerEncoderLayer, Int8TransformerEncoderLayer):
        reg(t, dynamic=_encoder_layer_fusing, qat=_encoder_layer_fusing, convert=_encoder_layer, descend=True)
    reg(nn.TransformerDecoderLayer, dynamic=_decoder_layer_fusing, qat=_decoder_layer_fusing, descend=True)
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
