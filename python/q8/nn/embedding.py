"""``Int8Embedding`` and ``Int8EmbeddingBag``: embedding tables with int8 rows.

The table is stored in q8's canonical int8 form, the buffers ``weight_int8`` (int8
``[num_embeddings, embedding_dim]``, codes in [-127, 127]) and ``weight_scale``
(float32 ``[num_embeddings]``, one symmetric scale per row), exactly what
``q8.quantize_weight(weight)`` returns: 4x smaller than a float32 table. A lookup
gathers the int8 rows and dequantizes them in one pass (``torch.ops.q8.embedding`` /
``torch.ops.q8.embedding_bag``); bags accumulate in float32. Unlike ``Int8Linear``
there is no device-specific packed copy: the canonical buffers are what the kernels read.

The layers keep the float layers' forward contract: ``Int8Embedding.forward(input)``
(int32 / int64 indices of any shape, output ``input.shape + (embedding_dim,)``) and
``Int8EmbeddingBag.forward(input, offsets=None, per_sample_weights=None)`` (the
semantics of ``F.embedding_bag``: modes sum / mean / max, ``include_last_offset``,
``padding_idx`` entries left out of the bag and of the mean's count, empty bags give
zeros). The output dtype is the float layer's weight dtype (``output_dtype``):
``from_float`` records it, and a float conversion of the module (``.half()``,
``.to(torch.bfloat16)``, ``.double()``, ``.float()``) changes it as it would change
the float layer's weight, while every buffer keeps its dtype (int8 codes, float32
scales); ``.to(device)`` moves the buffers.

The table is frozen: the output never carries a gradient to it. ``per_sample_weights``
may require grad in the forward, but a backward through it raises an error (its
gradient is not implemented) rather than silently dropping the gradient.

state_dict format (version :data:`FORMAT_VERSION`): ``weight_int8``, ``weight_scale``
and ``_q8_format`` (a 0-dim int64 tensor holding the version, as ``Int8Linear``).
``load_state_dict`` checks the version, every dtype and every shape before copying
anything, and names the key, the expected and the found value in its error; with
``strict=True`` (the default) a state_dict without ``_q8_format`` is refused (as a
missing key) before anything is copied.
``padding_idx``, ``mode``, ``include_last_offset`` and ``output_dtype`` are
configuration (constructor arguments), not state.

TorchScript: ``torch.jit.script`` works, and the scripted module saves and loads
(``torch.jit.save`` / ``torch.jit.load``, or ``torch::jit::load`` from C++ with libq8
linked) like any module with plain buffers. ``copy.deepcopy`` and ``pickle`` work as
for any module.
"""
from typing import Dict, Final, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["FORMAT_VERSION", "Int8Embedding", "Int8EmbeddingBag"]

#: Version of the canonical form stored by ``state_dict()`` (key ``<prefix>_q8_format``).
FORMAT_VERSION = 1
_FORMAT_KEY = "_q8_format"
_OUTPUT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_MODES = ("sum", "mean", "max")


def _check_output_dtype(dtype, where):
    if dtype not in _OUTPUT_DTYPES:
        raise ValueError(f"{where}: dtype (the output dtype) must be one of "
                         f"{', '.join(map(str, _OUTPUT_DTYPES))}, got {dtype}")


def _normalize_padding_idx(padding_idx, num_embeddings, where):
    if padding_idx is None:
        return None
    padding_idx = int(padding_idx)
    if not -num_embeddings <= padding_idx < num_embeddings:
        raise ValueError(f"{where}: padding_idx must be within num_embeddings ([{-num_embeddings}, "
                         f"{num_embeddings})), got {padding_idx}")
    return padding_idx + num_embeddings if padding_idx < 0 else padding_idx


def _quantized_table(module, where):
    """(weight_int8, weight_scale, output dtype) of a float embedding layer, or a clear error."""
    if module.max_norm is not None:
        raise NotImplementedError(
            f"{where}: max_norm={module.max_norm} renormalizes the looked-up rows of the float table in place at "
            "every lookup; a frozen int8 table cannot reproduce that")
    weight = module.weight
    if not isinstance(weight, Tensor):
        raise TypeError(f"{where}: the layer's weight must be a tensor, got {type(weight).__name__}")
    if not weight.is_floating_point():
        raise TypeError(f"{where}: the layer's weight must be a floating-point tensor (float32, float64, float16 "
                        f"or bfloat16), got {weight.dtype}")
    if weight.dtype not in _OUTPUT_DTYPES:
        raise TypeError(f"{where}: the layer's weight must be float32, float64, float16 or bfloat16, "
                        f"got {weight.dtype}")
    if weight.dim() != 2 or tuple(weight.shape) != (module.num_embeddings, module.embedding_dim):
        raise ValueError(f"{where}: the layer's weight must have shape [num_embeddings, embedding_dim] = "
                         f"[{module.num_embeddings}, {module.embedding_dim}], got {list(weight.shape)}")
    w = weight.detach()
    # float64 tables are quantized from their float32 rounding (the scales are float32).
    weight_int8, weight_scale = torch.ops.q8.quantize_weight(w if w.dtype != torch.float64 else w.float())
    return weight_int8, weight_scale, weight.dtype


class _Int8EmbeddingBase(torch.nn.Module):
    # A TorchScript constant (scripted code cannot read the module-level global).
    _format_version: Final[int] = FORMAT_VERSION
    num_embeddings: int
    embedding_dim: int
    padding_idx: Optional[int]
    output_dtype: torch.dtype
    weight_int8: Tensor
    weight_scale: Tensor

    def _init_table(self, num_embeddings, embedding_dim, padding_idx, dtype, device, where):
        _check_output_dtype(dtype, where)
        if int(num_embeddings) < 0 or int(embedding_dim) < 0:
            raise ValueError(f"{where}: num_embeddings and embedding_dim must be >= 0, got {num_embeddings} and "
                             f"{embedding_dim}")
        self.num_embeddings = int(num_embeddings)
        self.embedding_dim = int(embedding_dim)
        self.padding_idx = _normalize_padding_idx(padding_idx, self.num_embeddings, where)
        self.output_dtype = dtype
        self.register_buffer("weight_int8",
                             torch.zeros(self.num_embeddings, self.embedding_dim, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(self.num_embeddings, dtype=torch.float32, device=device))

    def _set_table(self, weight_int8, weight_scale):
        self.weight_int8 = weight_int8
        self.weight_scale = weight_scale

    def dequantized_weight(self) -> Tensor:
        """The float table the layer computes with (``weight_int8 * weight_scale[:, None]``, in ``output_dtype``)."""
        return (self.weight_int8.to(torch.float32) * self.weight_scale.unsqueeze(1)).to(self.output_dtype)

    # ------------------------------------------------------------------ devices and dtypes

    def _apply(self, fn, recurse=True):
        # Buffers keep their dtype (int8 codes, float32 scales) and only move to the
        # device fn picks. A conversion that would change the float table's dtype
        # (module.half(), .to(torch.bfloat16), .double(), ...) changes the output
        # dtype instead, as it would change the float layer's output.
        # What fn does to a float table of the output dtype (an empty probe tensor).
        probe = fn(torch.empty(0, dtype=self.output_dtype, device=self.weight_scale.device))

        def keep_dtype(t):
            out = fn(t)
            if isinstance(out, Tensor) and out.dtype != t.dtype:
                out = t.to(device=out.device)
            return out

        super()._apply(keep_dtype, recurse)
        if isinstance(probe, Tensor) and probe.dtype in _OUTPUT_DTYPES:
            self.output_dtype = probe.dtype
        return self

    # ------------------------------------------------------------------ state_dict

    def _canonical_specs(self) -> Dict[str, Tuple[torch.dtype, Tuple[int, ...]]]:
        return {
            "weight_int8": (torch.int8, (self.num_embeddings, self.embedding_dim)),
            "weight_scale": (torch.float32, (self.num_embeddings,)),
        }

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + _FORMAT_KEY] = torch.tensor(FORMAT_VERSION, dtype=torch.int64)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        where = f"{type(self).__name__}(num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim})"
        errors = []
        version_key = prefix + _FORMAT_KEY
        version = state_dict.pop(version_key, None)
        if version is None:
            missing_keys.append(version_key)
            if strict:
                # load_state_dict raises for the missing key: copy nothing of an unversioned
                # checkpoint, but name every missing and unexpected key (as torch would).
                local = set(self._canonical_specs())
                missing_keys.extend(prefix + name for name in local if prefix + name not in state_dict)
                unexpected_keys.extend(k for k in state_dict if k.startswith(prefix)
                                       and k[len(prefix):].split(".", 1)[0] not in local)
                return
        else:
            found = version.reshape(-1).tolist() if isinstance(version, Tensor) else [version]
            if len(found) != 1 or found[0] != FORMAT_VERSION:
                errors.append(f"{version_key}: {where} reads state_dict format version {FORMAT_VERSION}, found "
                              f"{found[0] if len(found) == 1 else found} (a checkpoint written by another q8 "
                              f"release, or not by q8.nn.{type(self).__name__})")
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
                              f"({type(self).__name__} stores the canonical form: int8 codes, float32 scales)")
        if errors:
            # Nothing of this layer is loaded: load_state_dict raises with these messages.
            error_msgs.extend(errors)
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


class Int8Embedding(_Int8EmbeddingBase):
    """``torch.nn.Embedding`` with an int8 table (``torch.ops.q8.embedding``).

    Args:
        num_embeddings, embedding_dim, padding_idx: as ``torch.nn.Embedding``
            (``padding_idx`` only marks the row: the forward returns what is stored in it).
        dtype: the output dtype (float32, float64, float16 or bfloat16), the float
            layer's weight dtype.
        device: where the buffers are created.

    A new layer has a zero table with unit scales: it is meant to be filled by
    :meth:`from_float` or ``load_state_dict``. See the module docstring.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: Optional[int] = None,
                 dtype: torch.dtype = torch.float32, device=None) -> None:
        super().__init__()
        self._init_table(num_embeddings, embedding_dim, padding_idx, dtype, device, "Int8Embedding")

    @classmethod
    def from_float(cls, module: torch.nn.Embedding) -> "Int8Embedding":
        """An ``Int8Embedding`` computing ``module`` with its table quantized by :func:`q8.quantize_weight`.

        Created on the layer's device; ``module`` itself is not changed. Raises
        ``NotImplementedError`` for ``max_norm`` (rows renormalized at lookup) and
        ``TypeError`` for a weight that is not float32 / float64 / float16 / bfloat16.
        ``sparse`` and ``scale_grad_by_freq`` only shape the table's gradient, which
        a frozen table has none of: they are accepted and dropped.
        """
        if not isinstance(module, torch.nn.Embedding):
            raise TypeError(f"Int8Embedding.from_float: expected a torch.nn.Embedding, got {type(module).__name__}")
        weight_int8, weight_scale, dtype = _quantized_table(module, "Int8Embedding.from_float")
        out = cls(module.num_embeddings, module.embedding_dim, padding_idx=module.padding_idx, dtype=dtype,
                  device=weight_int8.device)
        out._set_table(weight_int8, weight_scale)
        out.train(module.training)
        return out

    def forward(self, input: Tensor) -> Tensor:
        return torch.ops.q8.embedding(self.weight_int8, self.weight_scale, input, self.output_dtype)

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        if self.padding_idx is not None:
            s += f", padding_idx={self.padding_idx}"
        return s + f", dtype={self.output_dtype}"


class Int8EmbeddingBag(_Int8EmbeddingBase):
    """``torch.nn.EmbeddingBag`` with an int8 table (``torch.ops.q8.embedding_bag``).

    Args:
        num_embeddings, embedding_dim, mode, include_last_offset, padding_idx: as
            ``torch.nn.EmbeddingBag`` (``mode`` defaults to ``"mean"`` as there).
        dtype: the output dtype (float32, float64, float16 or bfloat16), the float
            layer's weight dtype.
        device: where the buffers are created.

    ``forward(input, offsets=None, per_sample_weights=None)`` as the float layer's.
    """

    mode: str
    include_last_offset: bool

    def __init__(self, num_embeddings: int, embedding_dim: int, mode: str = "mean", include_last_offset: bool = False,
                 padding_idx: Optional[int] = None, dtype: torch.dtype = torch.float32, device=None) -> None:
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"Int8EmbeddingBag: mode must be one of 'sum', 'mean', 'max', got {mode!r}")
        self._init_table(num_embeddings, embedding_dim, padding_idx, dtype, device, "Int8EmbeddingBag")
        self.mode = mode
        self.include_last_offset = bool(include_last_offset)

    @classmethod
    def from_float(cls, module: torch.nn.EmbeddingBag) -> "Int8EmbeddingBag":
        """An ``Int8EmbeddingBag`` computing ``module`` with its table quantized by :func:`q8.quantize_weight`.

        As :meth:`Int8Embedding.from_float` (``max_norm``: ``NotImplementedError``;
        ``sparse`` / ``scale_grad_by_freq`` dropped); ``mode``,
        ``include_last_offset`` and ``padding_idx`` are kept.
        """
        if not isinstance(module, torch.nn.EmbeddingBag):
            raise TypeError(
                f"Int8EmbeddingBag.from_float: expected a torch.nn.EmbeddingBag, got {type(module).__name__}")
        weight_int8, weight_scale, dtype = _quantized_table(module, "Int8EmbeddingBag.from_float")
        out = cls(module.num_embeddings, module.embedding_dim, mode=module.mode,
                  include_last_offset=module.include_last_offset, padding_idx=module.padding_idx, dtype=dtype,
                  device=weight_int8.device)
        out._set_table(weight_int8, weight_scale)
        out.train(module.training)
        return out

    def forward(self, input: Tensor, offsets: Optional[Tensor] = None,
                per_sample_weights: Optional[Tensor] = None) -> Tensor:
        return torch.ops.q8.embedding_bag(self.weight_int8, self.weight_scale, input, offsets, self.mode,
                                          per_sample_weights, self.include_last_offset, self.padding_idx,
                                          self.output_dtype)

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}, mode={self.mode!r}"
        if self.include_last_offset:
            s += ", include_last_offset=True"
        if self.padding_idx is not None:
            s += f", padding_idx={self.padding_idx}"
        return s + f", dtype={self.output_dtype}"
