"""Multi-head attention and transformer layers whose projections are q8 modules.

``torch.nn.MultiheadAttention`` keeps its input projection as one bare parameter
(``in_proj_weight``) and reads ``out_proj.weight`` directly, so its projections cannot
be swapped for int8 layers. :class:`Int8MultiheadAttention` has the same forward
contract but holds four linear *modules* (``q_proj``, ``k_proj``, ``v_proj``,
``out_proj``), as ``torch.ao.nn.quantizable.MultiheadAttention`` does:

* after :func:`q8.quantize_dynamic` they are :class:`q8.nn.Int8Linear` (``"dynamic"`` or
  ``"weight_only"``);
* after :func:`q8.prepare` / :func:`q8.prepare_qat` the module is a
  :class:`QATMultiheadAttention` whose projections are :class:`q8.nn.QATLinear`
  (fake-quantized weights and inputs); :func:`q8.convert` then gives an
  ``Int8MultiheadAttention`` with ``"static"`` int8 projections.

The attention itself (``q kᵀ``, softmax, ``· v``) stays in float: it has no weights.

:class:`Int8TransformerEncoderLayer` is ``nn.TransformerEncoderLayer`` without its
fused fast path (``torch._transformer_encoder_layer_fwd`` reads the float weights of
``self_attn``, ``linear1``, ``linear2``); the converters swap an encoder layer for it,
so an int8 layer never reaches the fused float kernel.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.transformer import _detect_is_causal_mask, _get_seq_len

__all__ = ["Int8MultiheadAttention", "QATMultiheadAttention", "Int8TransformerEncoder", "Int8TransformerEncoderLayer"]


def _float_projections(mha: torch.nn.MultiheadAttention):
    """Three float ``nn.Linear`` (q, k, v) holding ``mha``'s input projection (copies of the packed slices)."""
    e = mha.embed_dim
    if mha._qkv_same_embed_dim:
        w = mha.in_proj_weight.detach()
        weights = [(w[0:e], False), (w[e:2 * e], False), (w[2 * e:], False)]
    else:
        weights = [(mha.q_proj_weight, True), (mha.k_proj_weight, True), (mha.v_proj_weight, True)]
    b = mha.in_proj_bias
    biases = [None, None, None] if b is None else [b.detach()[0:e], b.detach()[e:2 * e], b.detach()[2 * e:]]
    out = []
    for (w, share), bias in zip(weights, biases):
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device="meta")
        # Separate q/k/v weights are parameters of their own: the projection shares them.
        lin.weight = w if share else torch.nn.Parameter(w.clone(), requires_grad=mha.in_proj_weight.requires_grad)
        if bias is not None:
            lin.bias = torch.nn.Parameter(bias.clone(), requires_grad=mha.in_proj_bias.requires_grad)
        lin.train(mha.training)
        out.append(lin)
    return out


def _check_mha(mha, where: str) -> None:
    if not isinstance(mha, torch.nn.MultiheadAttention):
        raise TypeError(f"{where}: expected a torch.nn.MultiheadAttention, got {type(mha).__name__}")
    for name, p in mha.named_parameters(recurse=True):
        if not p.is_floating_point():
            raise NotImplementedError(f"{where}: parameter {name} has dtype {p.dtype}, not a floating type")


class Int8MultiheadAttention(torch.nn.Module):
    """``nn.MultiheadAttention`` with its four projections as modules (int8 layers after conversion).

    Build it with :meth:`from_float` (or let :func:`q8.quantize_dynamic` / :func:`q8.convert`
    do it). ``forward`` takes the arguments of ``nn.MultiheadAttention.forward`` and
    returns ``(attn_output, attn_weights or None)`` with the same shapes and layout:
    ``batch_first`` either way, unbatched inputs, bool or float ``attn_mask`` (2-D
    ``(L, S)`` or 3-D ``(N * num_heads, L, S)``) and ``key_padding_mask``, ``is_causal``
    (a hint that needs ``attn_mask``, as in torch), ``need_weights`` /
    ``average_attn_weights``, ``kdim`` / ``vdim``, ``add_bias_kv`` (``bias_k`` / ``bias_v``
    stay float parameters), ``add_zero_attn`` and dropout on the attention weights
    in training. It never takes torch's fused fast path (which reads float weights).
    With ``need_weights=False`` the core is ``F.scaled_dot_product_attention``;
    otherwise an explicit softmax.
    """

    embed_dim: int
    kdim: int
    vdim: int
    num_heads: int
    head_dim: int
    dropout: float
    batch_first: bool
    add_zero_attn: bool
    _qkv_same_embed_dim: bool

    def __init__(self, embed_dim: int, num_heads: int, q_proj: torch.nn.Module, k_proj: torch.nn.Module,
                 v_proj: torch.nn.Module, out_proj: torch.nn.Module, dropout: float = 0.0,
                 bias_k: Optional[torch.nn.Parameter] = None, bias_v: Optional[torch.nn.Parameter] = None,
                 add_zero_attn: bool = False, kdim: Optional[int] = None, vdim: Optional[int] = None,
                 batch_first: bool = False) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"{type(self).__name__}: embed_dim ({embed_dim}) must be divisible by num_heads "
                             f"({num_heads})")
        self.embed_dim = int(embed_dim)
        self.kdim = int(kdim) if kdim is not None else self.embed_dim
        self.vdim = int(vdim) if vdim is not None else self.embed_dim
        self._qkv_same_embed_dim = self.kdim == self.embed_dim and self.vdim == self.embed_dim
        self.num_heads = int(num_heads)
        self.head_dim = self.embed_dim // self.num_heads
        self.dropout = float(dropout)
        self.batch_first = bool(batch_first)
        self.add_zero_attn = bool(add_zero_attn)
        self.q_proj = q_proj
        self.k_proj = k_proj
        self.v_proj = v_proj
        self.out_proj = out_proj
        self.bias_k = bias_k
        self.bias_v = bias_v

    @classmethod
    def _shell(cls, mha, q_proj, k_proj, v_proj, out_proj):
        module = cls(mha.embed_dim, mha.num_heads, q_proj, k_proj, v_proj, out_proj, dropout=mha.dropout,
                     bias_k=mha.bias_k, bias_v=mha.bias_v, add_zero_attn=mha.add_zero_attn, kdim=mha.kdim,
                     vdim=mha.vdim, batch_first=mha.batch_first)
        module.train(mha.training)
        return module

    @classmethod
    def from_float(cls, mha: torch.nn.MultiheadAttention, activation: str = "dynamic") -> "Int8MultiheadAttention":
        """Quantize ``mha``'s projections to :class:`q8.nn.Int8Linear` (``"dynamic"`` or ``"weight_only"``).

        ``mha`` is not changed; ``bias_k`` / ``bias_v`` (float) are shared with it.
        """
        from .linear import Int8Linear

        where = f"{cls.__name__}.from_float"
        _check_mha(mha, where)
        if activation not in ("dynamic", "weight_only"):
            raise ValueError(f"{where}: activation must be 'dynamic' or 'weight_only' (static projections come "
                             f"from q8.prepare / q8.calibrate / q8.convert), got {activation!r}")
        q, k, v = (Int8Linear.from_float(lin, activation) for lin in _float_projections(mha))
        out = torch.nn.Linear(mha.embed_dim, mha.embed_dim, bias=mha.out_proj.bias is not None, device="meta")
        out.weight, out.bias = mha.out_proj.weight, mha.out_proj.bias
        return cls._shell(mha, q, k, v, Int8Linear.from_float(out, activation))

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True, attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError("Int8MultiheadAttention: query, key and value must all be 2-D (unbatched) or 3-D "
                             f"(batched), got {query.dim()}-D, {key.dim()}-D and {value.dim()}-D")
        is_batched = query.dim() == 3
        key_padding_mask = F._canonical_mask(mask=key_padding_mask, mask_name="key_padding_mask",
                                             other_type=F._none_or_dtype(attn_mask), other_name="attn_mask",
                                             target_type=query.dtype)
        attn_mask = F._canonical_mask(mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="",
                                      target_type=query.dtype, check_other=False)
        if is_causal and attn_mask is None:
            raise RuntimeError("Int8MultiheadAttention: need attn_mask if specifying the is_causal hint (as "
                               "nn.MultiheadAttention); pass e.g. nn.Transformer.generate_square_subsequent_mask")
        if is_causal and key_padding_mask is None and not need_weights:
            attn_mask = None  # scaled_dot_product_attention applies the causal mask itself
        else:
            is_causal = False
        if is_batched:
            if not self.batch_first:
                query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        else:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        bsz, tgt_len = query.shape[0], query.shape[1]
        if query.shape[2] != self.embed_dim:
            raise ValueError(f"Int8MultiheadAttention: query's embedding size must be embed_dim={self.embed_dim}, "
                             f"got {query.shape[2]}")
        q = self.q_proj(query)
        k = self.k_proj(key)
        v = self.v_proj(value)
        bias_k = self.bias_k
        bias_v = self.bias_v
        if bias_k is not None and bias_v is not None:
            k = torch.cat([k, bias_k.to(k.dtype).expand(bsz, 1, self.embed_dim)], dim=1)
            v = torch.cat([v, bias_v.to(v.dtype).expand(bsz, 1, self.embed_dim)], dim=1)
            if attn_mask is not None:
                attn_mask = F.pad(attn_mask, (0, 1))
            if key_padding_mask is not None:
                key_padding_mask = F.pad(key_padding_mask, (0, 1))
        src_len = k.shape[1]
        heads, head_dim = self.num_heads, self.head_dim
        q = q.reshape(bsz, tgt_len, heads, head_dim).transpose(1, 2)
        k = k.reshape(bsz, src_len, heads, head_dim).transpose(1, 2)
        v = v.reshape(bsz, src_len, heads, head_dim).transpose(1, 2)
        if self.add_zero_attn:
            zeros = torch.zeros(bsz, heads, 1, head_dim, dtype=k.dtype, device=k.device)
            k = torch.cat([k, zeros], dim=2)
            v = torch.cat([v, zeros], dim=2)
            src_len += 1
            if attn_mask is not None:
                attn_mask = F.pad(attn_mask, (0, 1))
            if key_padding_mask is not None:
                key_padding_mask = F.pad(key_padding_mask, (0, 1))
        if attn_mask is not None:
            if attn_mask.dim() == 2:
                if attn_mask.shape[0] != tgt_len or attn_mask.shape[1] != src_len:
                    raise ValueError(f"Int8MultiheadAttention: a 2-D attn_mask must have shape ({tgt_len}, "
                                     f"{src_len}), got {list(attn_mask.shape)}")
                attn_mask = attn_mask.view(1, 1, tgt_len, src_len)
            elif attn_mask.dim() == 3:
                if attn_mask.shape[0] != bsz * heads or attn_mask.shape[1] != tgt_len or \
                        attn_mask.shape[2] != src_len:
                    raise ValueError(f"Int8MultiheadAttention: a 3-D attn_mask must have shape ({bsz * heads}, "
                                     f"{tgt_len}, {src_len}), got {list(attn_mask.shape)}")
                attn_mask = attn_mask.view(bsz, heads, tgt_len, src_len)
            else:
                raise ValueError(f"Int8MultiheadAttention: attn_mask must be 2-D or 3-D, got {attn_mask.dim()}-D")
        if key_padding_mask is not None:
            if key_padding_mask.shape[0] != bsz or key_padding_mask.shape[-1] != src_len:
                raise ValueError(f"Int8MultiheadAttention: key_padding_mask must have shape ({bsz}, "
                                 f"{src_len}), got {list(key_padding_mask.shape)}")
            kpm = key_padding_mask.view(bsz, 1, 1, src_len)
            attn_mask = kpm if attn_mask is None else attn_mask + kpm
        dropout_p = self.dropout if self.training else 0.0
        weights: Optional[Tensor] = None
        if need_weights:
            scores = torch.matmul(q * math.sqrt(1.0 / float(head_dim)), k.transpose(-2, -1))
            if attn_mask is not None:
                scores = scores + attn_mask
            w = torch.softmax(scores, dim=-1)
            if dropout_p > 0.0:
                w = F.dropout(w, p=dropout_p)
            out = torch.matmul(w, v)
            weights = w.mean(dim=1) if average_attn_weights else w
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal)
        out = self.out_proj(out.transpose(1, 2).reshape(bsz, tgt_len, self.embed_dim))
        if not is_batched:
            out = out.squeeze(0)
            if weights is not None:
                weights = weights.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    def extra_repr(self) -> str:
        s = f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"
        if not self._qkv_same_embed_dim:
            s += f", kdim={self.kdim}, vdim={self.vdim}"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.add_zero_attn:
            s += ", add_zero_attn=True"
        return s


class QATMultiheadAttention(Int8MultiheadAttention):
    """The QAT / calibration form: the projections are :class:`q8.nn.QATLinear`.

    :meth:`from_float` copies the packed ``in_proj_weight`` / ``in_proj_bias`` into three
    new parameters (``q_proj``, ``k_proj``, ``v_proj``; separate ``q/k/v_proj_weight``
    of a ``kdim``/``vdim`` module and ``out_proj``'s parameters are shared): build the
    optimizer after :func:`q8.prepare_qat`. :func:`q8.convert` gives an
    :class:`Int8MultiheadAttention` with static int8 projections.
    """

    @classmethod
    def from_float(cls, mha: torch.nn.MultiheadAttention,  # type: ignore[override]
                   config=None) -> "QATMultiheadAttention":
        from .qat import QATLinear, _config

        where = f"{cls.__name__}.from_float"
        _check_mha(mha, where)
        config = _config(config, where)
        q, k, v = (QATLinear.from_float(lin, config) for lin in _float_projections(mha))
        return cls._shell(mha, q, k, v, QATLinear.from_float(mha.out_proj, config))


class Int8TransformerEncoderLayer(torch.nn.TransformerEncoderLayer):
    """``nn.TransformerEncoderLayer`` without the fused fast path (its children may be int8 layers).

    Same attributes, state_dict keys and forward contract as the float layer; the
    computation is the float layer's own non-fused path (``_sa_block``, ``_ff_block``).
    When q8's converters fused the layer's ReLU into ``linear1`` (``q8_relu_in_linear1``:
    ``linear1`` is then a ``FusedLinear`` with the ReLU, or an int8 / QAT linear clamping at
    0 in its epilogue), the feed-forward block calls no separate activation.
    """

    q8_relu_in_linear1: bool = False  # (a layer converted by a q8 without the fusion has no such attribute)

    def _ff_block(self, x: Tensor) -> Tensor:
        if self.q8_relu_in_linear1:
            return self.dropout2(self.linear2(self.dropout(self.linear1(x))))
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def forward(self, src: Tensor, src_mask: Optional[Tensor] = None, src_key_padding_mask: Optional[Tensor] = None,
                is_causal: bool = False) -> Tensor:
        src_key_padding_mask = F._canonical_mask(mask=src_key_padding_mask, mask_name="src_key_padding_mask",
                                                 other_type=F._none_or_dtype(src_mask), other_name="src_mask",
                                                 target_type=src.dtype)
        src_mask = F._canonical_mask(mask=src_mask, mask_name="src_mask", other_type=None, other_name="",
                                     target_type=src.dtype, check_other=False)
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal)
            x = x + self._ff_block(self.norm2(x))
        else:
            x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal))
            x = self.norm2(x + self._ff_block(x))
        return x


class Int8TransformerDecoderLayer(torch.nn.TransformerDecoderLayer):
    """``nn.TransformerDecoderLayer`` whose ReLU q8's converters fused into ``linear1``.

    The float layer's code, except that the feed-forward block calls no separate
    activation (``linear1`` clamps at 0 in its epilogue, or is a ``FusedLinear`` with the
    ReLU). Decoder layers with another activation are not rebranded.
    """

    q8_relu_in_linear1: bool = True

    def _ff_block(self, x: Tensor) -> Tensor:
        if self.q8_relu_in_linear1:
            return self.dropout3(self.linear2(self.dropout(self.linear1(x))))
        return self.dropout3(self.linear2(self.dropout(self.activation(self.linear1(x)))))


class Int8TransformerEncoder(torch.nn.TransformerEncoder):
    """``nn.TransformerEncoder`` without the nested-tensor fast path (its layers may be int8).

    The float encoder turns a padded batch into a nested tensor and reads the first
    layer's float weights (also when scripting, so it cannot even compile around int8
    layers); this one runs the layers as the float encoder's non-fast path does.
    """

    def forward(self, src: Tensor, mask: Optional[Tensor] = None, src_key_padding_mask: Optional[Tensor] = None,
                is_causal: Optional[bool] = None) -> Tensor:
        src_key_padding_mask = F._canonical_mask(mask=src_key_padding_mask, mask_name="src_key_padding_mask",
                                                 other_type=F._none_or_dtype(mask), other_name="mask",
                                                 target_type=src.dtype)
        mask = F._canonical_mask(mask=mask, mask_name="mask", other_type=None, other_name="",
                                 target_type=src.dtype, check_other=False)
        batch_first = self.layers[0].self_attn.batch_first
        is_causal = _detect_is_causal_mask(mask, is_causal, _get_seq_len(src, batch_first))
        output = src
        for mod in self.layers:
            output = mod(output, src_mask=mask, is_causal=is_causal, src_key_padding_mask=src_key_padding_mask)
        if self.norm is not None:
            output = self.norm(output)
        return output
