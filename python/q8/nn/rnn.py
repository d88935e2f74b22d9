"""Dynamic int8 recurrent layers: ``Int8LSTM``, ``Int8GRU``, ``Int8RNN`` and their cells.

Each layer computes what its float counterpart (``torch.nn.LSTM`` / ``GRU`` / ``RNN`` /
``LSTMCell`` / ``GRUCell`` / ``RNNCell``) computes, with every weight matrix quantized
to int8 (symmetric, one float32 scale per row, :func:`q8.quantize_weight`) and every
matrix product run by ``torch.ops.q8.linear``:

* the **input projections** of a whole layer and direction are one ``q8.linear`` call
  over all timesteps (``M = T * B`` rows, or the total length of a ``PackedSequence``):
  this is where int8 is fast;
* the **hidden projection** is one ``q8.linear`` call per step (``M = batch``), and,
  with ``proj_size`` (LSTM), the projection of ``h`` another;
* the **gates** are computed in float32 with the same formulas as PyTorch's cells.

``activation="dynamic"`` (default) quantizes each row of each matrix-product input to
uint8 at run time; ``"weight_only"`` keeps the inputs in float and only the weights in
int8. ``"static"`` is refused (``NotImplementedError``): the hidden state changes at
every step, and one calibrated scale for it is not a faithful conversion.

Computation is in float32 whatever the input dtype (float32, float64, float16 or
bfloat16); outputs and states are returned in the input's dtype.

Canonical state (``state_dict``, pickling, ``torch.jit.save``): for every weight of the
float layer (``weight_ih_l0``, ``weight_hh_l1_reverse``, ``weight_hr_l0`` ...; ``weight_ih``
/ ``weight_hh`` for cells) an int8 buffer ``<name>_int8`` (same shape) and a float32 buffer
``<name>_scale`` (one scale per row); the biases as float32 buffers under the float
layer's names (``bias_ih_l0`` ...); and ``_q8_format``, a 0-dim int64 tensor holding
:data:`RNN_FORMAT_VERSION`. ``load_state_dict`` checks the version, dtypes and shapes of
every key before copying anything.

Packed weights: the kernels' layout (``q8.pack_weight``), kept in the submodule
``_packed`` as plain list-of-tensor attributes, never saved. They are rebuilt from
the canonical buffers on construction, ``from_float``, ``load_state_dict``, ``to()`` (and
every other ``_apply``), unpickling / ``copy.deepcopy`` and ``torch.jit.load``
(``__getstate__`` / ``__setstate__`` of ``_packed``, as in :class:`q8.nn.Int8Linear`). For
the LSTM the packed cell-gate rows compute twice the pre-activation (doubled scales and biases,
exact), so that one ``sigmoid`` covers the four gates (``tanh(x) = 2 sigmoid(2x) - 1``); the
canonical buffers are the plain quantized weights.
"""
import copyreg
from typing import Dict, Final, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

__all__ = ["RNN_FORMAT_VERSION", "Int8GRU", "Int8GRUCell", "Int8LSTM", "Int8LSTMCell", "Int8RNN", "Int8RNNCell"]

#: Version of the canonical form stored by ``state_dict()`` (key ``<prefix>_q8_format``)
#: and by ``torch.jit.save`` (first element of ``_packed``'s ``__getstate__`` tuple).
RNN_FORMAT_VERSION = 1
_FORMAT_KEY = "_q8_format"
_MODES = ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")
_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def _check_activation(activation, where):
    if activation == "static":
        raise NotImplementedError(
            f"{where}: activation='static' is not supported for recurrent layers: the hidden state changes at "
            "every step, so one calibrated input scale cannot quantize it faithfully; use 'dynamic' or "
            "'weight_only'")
    if activation not in ("dynamic", "weight_only"):
        raise ValueError(f"{where}: activation must be 'dynamic' or 'weight_only', got {activation!r}")


# ---------------------------------------------------------------------------------- recurrence (scriptable)

def _step(mode: str, gi: Tensor, h: Tensor, c: Tensor, w_hh: Tensor, s_hh: Tensor, b_hh: Tensor,
          w_hr: Optional[Tensor], s_hr: Optional[Tensor], activation: str) -> Tuple[Tensor, Tensor]:
    """One step of a cell from its precomputed input projection ``gi`` (bias included)."""
    gh = torch.ops.q8.linear(h, w_hh, s_hh, b_hh, activation, None, None)
    if mode == "LSTM":
        # The cell gate's pre-activation is doubled in the packed weights (see
        # _PackedRNNWeights.rebuild): with s = sigmoid(gates), g = tanh(x) = 2 s_g - 1, and
        # c' = f c + i g = f c + 2 i s_g - i. Nine ops a step instead of thirteen.
        gates = torch.add(gi, gh).sigmoid_()
        i, f, s_g, o = gates.unsafe_chunk(4, 1)
        c_new = torch.addcmul(f * c, i, s_g, value=2.0).sub_(i)
        h_new = o * torch.tanh(c_new)
        if w_hr is not None and s_hr is not None:
            h_new = torch.ops.q8.linear(h_new, w_hr, s_hr, None, activation, None, None)
        return h_new, c_new
    if mode == "GRU":
        hs = h.size(1)
        # r, z = sigmoid(x_rz + W_rz h + b_rz); n = tanh(x_n + r (W_n h + b_n)); h' = (1 - z) n + z h.
        r, z = torch.add(gi[:, :2 * hs], gh[:, :2 * hs]).sigmoid_().unsafe_chunk(2, 1)
        n = torch.addcmul(gi[:, 2 * hs:], r, gh[:, 2 * hs:]).tanh_()
        return torch.addcmul(n, z, h - n), c
    if mode == "RNN_TANH":
        return torch.tanh(gi + gh), c
    return torch.relu(gi + gh), c


def _run_direction(mode: str, gi: Tensor, h0: Tensor, c0: Tensor, batch_sizes: List[int], reverse: bool,
                   w_hh: Tensor, s_hh: Tensor, b_hh: Tensor, w_hr: Optional[Tensor], s_hr: Optional[Tensor],
                   activation: str) -> Tuple[Tensor, Tensor, Tensor]:
    """Run one layer/direction over time-major rows ``gi`` (``sum(batch_sizes)`` rows, batch sizes not
    increasing, as in a ``PackedSequence``; a padded batch has ``[B] * T``).

    Returns ``(output rows, h_n, c_n)``; ``c0`` / ``c_n`` are only meaningful for the LSTM.
    """
    steps = len(batch_sizes)
    outputs: List[Tensor] = []
    h = h0
    c = c0
    if not reverse:
        finished_h: List[Tensor] = []
        finished_c: List[Tensor] = []
        offset = 0
        last = h0.size(0)
        for t in range(steps):
            bs = batch_sizes[t]
            if bs < last:
                # Sequences that ended before step t: keep their final state.
                finished_h.append(h[bs:last])
                finished_c.append(c[bs:last])
                h = h[:bs]
                c = c[:bs]
            last = bs
            h, c = _step(mode, gi[offset:offset + bs], h, c, w_hh, s_hh, b_hh, w_hr, s_hr, activation)
            offset += bs
            outputs.append(h)
        finished_h.append(h)
        finished_c.append(c)
        finished_h.reverse()
        finished_c.reverse()
        h_n = torch.cat(finished_h, 0) if len(finished_h) > 1 else h
        c_n = torch.cat(finished_c, 0) if len(finished_c) > 1 else c
    else:
        offset = gi.size(0)
        last = batch_sizes[steps - 1] if steps > 0 else h0.size(0)
        h = h0[:last]
        c = c0[:last]
        for i in range(steps):
            t = steps - 1 - i
            bs = batch_sizes[t]
            if bs > last:
                # Sequences that start (from their end) at step t join with their initial state.
                h = torch.cat([h, h0[last:bs]], 0)
                c = torch.cat([c, c0[last:bs]], 0)
            last = bs
            offset -= bs
            h, c = _step(mode, gi[offset:offset + bs], h, c, w_hh, s_hh, b_hh, w_hr, s_hr, activation)
            outputs.append(h)
        outputs.reverse()
        h_n = h
        c_n = c
    if len(outputs) == 0:
        out = gi.new_empty((0, h0.size(1)))
    elif len(outputs) == 1:
        out = outputs[0]
    else:
        out = torch.cat(outputs, 0)
    return out, h_n, c_n


def _run_layers(mode: str, activation: str, num_layers: int, dirs: int, dropout: float, training: bool, x: Tensor,
                batch_sizes: List[int], h0: Tensor, c0: Tensor, ih: List[Tensor], s_ih: List[Tensor],
                b_ih: List[Tensor], hh: List[Tensor], s_hh: List[Tensor], b_hh: List[Tensor], hr: List[Tensor],
                s_hr: List[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    """All layers and directions: x float32 time-major rows; h0 [L*D, B, H_out], c0 [L*D, B, H]."""
    h_n: List[Tensor] = []
    c_n: List[Tensor] = []
    layer_in = x
    for layer in range(num_layers):
        outs: List[Tensor] = []
        for d in range(dirs):
            k = layer * dirs + d
            w_hr: Optional[Tensor] = None
            sc_hr: Optional[Tensor] = None
            if len(hr) > 0:
                w_hr = hr[k]
                sc_hr = s_hr[k]
            # One q8.linear over every timestep (all rows of the layer input).
            gi = torch.ops.q8.linear(layer_in, ih[k], s_ih[k], b_ih[k], activation, None, None)
            out, h, c = _run_direction(mode, gi, h0[k], c0[k], batch_sizes, d == 1, hh[k], s_hh[k], b_hh[k], w_hr,
                                       sc_hr, activation)
            outs.append(out)
            h_n.append(h)
            c_n.append(c)
        layer_in = outs[0] if dirs == 1 else torch.cat(outs, 1)
        if training and layer < num_layers - 1:
            layer_in = F.dropout(layer_in, dropout, True)
    return layer_in, torch.stack(h_n, 0), torch.stack(c_n, 0)


_scripted_run_layers = None


def _run_layers_eager(*args):
    """``_run_layers`` in eager mode: through its TorchScript compilation (one interpreter call for the
    whole step loop, several times faster than Python at small batch), or as Python under
    torch.compile / torch.export (which trace it)."""
    global _scripted_run_layers
    if torch.compiler.is_compiling():
        return _run_layers(*args)
    if _scripted_run_layers is None:
        _scripted_run_layers = torch.jit.script(_run_layers)
    # The plain interpreter: no profiling runs, no re-specialization per input shape (the
    # profiling executor's first calls on each new shape are many times slower).
    with torch.jit.optimized_execution(False):
        return _scripted_run_layers(*args)


class _PackedRNNWeights(torch.nn.Module):
    """The packed weights of a recurrent layer (``_packed`` submodule; no buffers, never saved packed).

    For each layer/direction ``k``: ``ih[k]``, ``hh[k]``, ``hr[k]`` (packed int8), their
    per-row scales and the float32 biases (LSTM: cell-gate scales and biases doubled). ``canonical``
    holds the parent's canonical tensors (int8 weights, scales, biases, by name order)
    so that ``torch.jit.save`` stores them through ``__getstate__`` (shared with the
    parent's buffers, so stored once) and ``torch.jit.load`` repacks.
    """

    _format_version: Final[int] = RNN_FORMAT_VERSION
    mode: str
    hidden_size: int
    count: int
    has_bias: bool
    has_proj: bool
    canonical: List[Tensor]
    ih: List[Tensor]
    hh: List[Tensor]
    hr: List[Tensor]
    s_ih: List[Tensor]
    s_hh: List[Tensor]
    s_hr: List[Tensor]
    b_ih: List[Tensor]
    b_hh: List[Tensor]

    def __init__(self, mode: str, hidden_size: int, count: int, has_bias: bool, has_proj: bool) -> None:
        super().__init__()
        self.mode = mode
        self.hidden_size = hidden_size
        self.count = count
        self.has_bias = has_bias
        self.has_proj = has_proj
        self.canonical = []
        self.ih = []
        self.hh = []
        self.hr = []
        self.s_ih = []
        self.s_hh = []
        self.s_hr = []
        self.b_ih = []
        self.b_hh = []

    def per_direction(self) -> int:
        # Canonical tensors per layer/direction: w_ih, s_ih, w_hh, s_hh, [b_ih, b_hh], [w_hr, s_hr].
        return 4 + (2 if self.has_bias else 0) + (2 if self.has_proj else 0)

    def rebuild(self, canonical: List[Tensor]) -> None:
        self.canonical = canonical
        n = self.per_direction()
        ih: List[Tensor] = []
        hh: List[Tensor] = []
        hr: List[Tensor] = []
        s_ih: List[Tensor] = []
        s_hh: List[Tensor] = []
        s_hr: List[Tensor] = []
        b_ih: List[Tensor] = []
        b_hh: List[Tensor] = []
        h = self.hidden_size
        for k in range(self.count):
            base = k * n
            w_ih = canonical[base]
            w_hh = canonical[base + 2]
            sc_ih = canonical[base + 1]
            sc_hh = canonical[base + 3]
            device = w_ih.device
            rows = w_ih.size(0)
            if self.has_bias:
                bi = canonical[base + 4]
                bh = canonical[base + 5]
            else:
                bi = torch.zeros(rows, dtype=torch.float32, device=device)
                bh = torch.zeros(rows, dtype=torch.float32, device=device)
            if self.mode == "LSTM":
                # The cell gate's rows (g, rows [2h, 3h)) compute 2x (scales and biases doubled:
                # exact in float), so one sigmoid covers all four gates: tanh(x) = 2 sigmoid(2x) - 1.
                two = torch.ones(rows, dtype=torch.float32, device=device)
                two[2 * h:3 * h] = 2.0
                sc_ih = sc_ih * two
                sc_hh = sc_hh * two
                bi = bi * two
                bh = bh * two
            ih.append(torch.ops.q8.pack_weight(w_ih.contiguous()))
            hh.append(torch.ops.q8.pack_weight(w_hh.contiguous()))
            s_ih.append(sc_ih.contiguous())
            s_hh.append(sc_hh.contiguous())
            b_ih.append(bi.contiguous())
            b_hh.append(bh.contiguous())
            if self.has_proj:
                p = base + (6 if self.has_bias else 4)
                hr.append(torch.ops.q8.pack_weight(canonical[p].contiguous()))
                s_hr.append(canonical[p + 1].contiguous())
        self.ih = ih
        self.hh = hh
        self.hr = hr
        self.s_ih = s_ih
        self.s_hh = s_hh
        self.s_hr = s_hr
        self.b_ih = b_ih
        self.b_hh = b_hh

    def _apply(self, fn, recurse=True):
        # The parent rebuilds this module from its buffers after its own _apply.
        return self

    @torch.jit.export
    def __getstate__(self) -> Tuple[int, str, int, int, bool, bool, List[Tensor], bool]:
        return (self._format_version, self.mode, self.hidden_size, self.count, self.has_bias, self.has_proj,
                self.canonical, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[int, str, int, int, bool, bool, List[Tensor], bool]) -> None:
        if not torch.jit.is_scripting():
            if isinstance(state, dict):
                # Eager unpickling / deepcopy (see __reduce_ex__).
                torch.nn.Module.__setstate__(self, state)
                self.rebuild(self.canonical)
                return
        if state[0] != self._format_version:
            raise RuntimeError("q8.nn recurrent layers: this q8 reads the TorchScript format version "
                               + str(self._format_version) + ", the file holds version " + str(state[0]))
        self.mode = state[1]
        self.hidden_size = state[2]
        self.count = state[3]
        self.has_bias = state[4]
        self.has_proj = state[5]
        self.training = state[7]
        self.rebuild(state[6])

    def __reduce_ex__(self, protocol):
        state = self.__dict__.copy()
        state.pop("_compiled_call_impl", None)
        for name in ("ih", "hh", "hr", "s_ih", "s_hh", "s_hr", "b_ih", "b_hh"):
            state[name] = []
        return (copyreg.__newobj__, (type(self),), state)


# ---------------------------------------------------------------------------------- shared module machinery

class _Int8RecurrentBase(torch.nn.Module):
    """Canonical buffers, state_dict checks, device moves and repacking, shared by layers and cells."""

    def _canonical_names(self) -> List[str]:
        names = []
        for suffix in self._suffixes():
            names += [f"weight_ih{suffix}_int8", f"weight_ih{suffix}_scale",
                      f"weight_hh{suffix}_int8", f"weight_hh{suffix}_scale"]
            if self.bias:
                names += [f"bias_ih{suffix}", f"bias_hh{suffix}"]
            if getattr(self, "proj_size", 0) > 0:
                names += [f"weight_hr{suffix}_int8", f"weight_hr{suffix}_scale"]
        return names

    def _register_canonical(self, device) -> None:
        h = self.hidden_size
        for name, (dtype, shape) in self._canonical_specs().items():
            if dtype == torch.int8:
                self.register_buffer(name, torch.zeros(shape, dtype=dtype, device=device))
            elif name.endswith("_scale"):
                self.register_buffer(name, torch.ones(shape, dtype=dtype, device=device))
            else:
                self.register_buffer(name, torch.zeros(shape, dtype=dtype, device=device))
        self._packed = _PackedRNNWeights(self.mode, h, len(self._suffixes()), bool(self.bias),
                                         getattr(self, "proj_size", 0) > 0)
        self.repack()

    def repack(self) -> None:
        """Rebuild the packed weights from the canonical buffers (after changing them in place)."""
        self._packed.rebuild([getattr(self, name) for name in self._canonical_names()])

    def _fill_from_float(self, module, activation) -> None:
        for suffix in self._suffixes():
            names = ["weight_ih", "weight_hh"] + (["weight_hr"] if getattr(self, "proj_size", 0) > 0 else [])
            for name in names:
                w = getattr(module, name + suffix).detach()
                if not torch.isfinite(w).all():
                    raise NotImplementedError(
                        f"{type(self).__name__}.from_float: {name + suffix} holds NaN or Inf, which int8 weights "
                        "cannot represent")
                w_int8, w_scale = torch.ops.q8.quantize_weight(w.to(torch.float32).contiguous())
                setattr(self, name + suffix + "_int8", w_int8)
                setattr(self, name + suffix + "_scale", w_scale)
            if self.bias:
                for name in ("bias_ih", "bias_hh"):
                    setattr(self, name + suffix, getattr(module, name + suffix).detach().to(torch.float32).clone())
        self.train(module.training)
        self.repack()

    # ------------------------------------------------------------------ devices and dtypes

    def _apply(self, fn, recurse=True):
        # Buffers keep their dtype (int8 weights, float32 scales and biases): .half(),
        # .double() ... only move them; the layer computes in float32 and returns the
        # input's dtype.
        def keep_dtype(t):
            out = fn(t)
            if isinstance(out, Tensor) and out.dtype != t.dtype:
                out = t.to(device=out.device)
            return out

        super()._apply(keep_dtype, recurse)
        self.repack()
        return self

    # ------------------------------------------------------------------ state_dict

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + _FORMAT_KEY] = torch.tensor(RNN_FORMAT_VERSION, dtype=torch.int64)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        where = f"{type(self).__name__}({self.extra_repr()})"
        errors = []
        version_key = prefix + _FORMAT_KEY
        version = state_dict.pop(version_key, None)
        if version is None:
            missing_keys.append(version_key)
        else:
            found = version.reshape(-1).tolist() if isinstance(version, Tensor) else [version]
            if len(found) != 1 or found[0] != RNN_FORMAT_VERSION:
                errors.append(f"{version_key}: {where} reads state_dict format version {RNN_FORMAT_VERSION}, found "
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
                              f"({type(self).__name__} stores the canonical form: int8 weights, float32 scales "
                              "and biases)")
        if errors:
            error_msgs.extend(errors)
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self.repack()

    def _canonical_specs(self) -> Dict[str, Tuple[torch.dtype, Tuple[int, ...]]]:
        specs = {}
        g = _GATES[self.mode] * self.hidden_size
        proj = getattr(self, "proj_size", 0)
        real_h = proj if proj > 0 else self.hidden_size
        for layer_in, suffix in zip(self._layer_inputs(), self._suffixes()):
            specs[f"weight_ih{suffix}_int8"] = (torch.int8, (g, layer_in))
            specs[f"weight_ih{suffix}_scale"] = (torch.float32, (g,))
            specs[f"weight_hh{suffix}_int8"] = (torch.int8, (g, real_h))
            specs[f"weight_hh{suffix}_scale"] = (torch.float32, (g,))
            if self.bias:
                specs[f"bias_ih{suffix}"] = (torch.float32, (g,))
                specs[f"bias_hh{suffix}"] = (torch.float32, (g,))
            if proj > 0:
                specs[f"weight_hr{suffix}_int8"] = (torch.int8, (proj, self.hidden_size))
                specs[f"weight_hr{suffix}_scale"] = (torch.float32, (proj,))
        return specs


def _no_static_args(input_scale, input_zero_point, activation, where):
    if input_scale is not None or input_zero_point is not None:
        raise ValueError(f"{where}.from_float: input_scale and input_zero_point are only used with "
                         f"activation='static' (which recurrent layers do not support), got activation={activation!r}")


def _check_float_type(module, expected, where):
    if not isinstance(module, expected):
        raise TypeError(f"{where}.from_float: expected a torch.nn.{expected.__name__}, got {type(module).__name__}")
    if type(module).forward is not expected.forward:
        raise NotImplementedError(
            f"{where}.from_float: {type(module).__name__} overrides {expected.__name__}.forward; converting it "
            "would drop its own computation")


def _compute_dtype(x: Tensor, name: str) -> torch.dtype:
    if not x.is_floating_point():
        raise ValueError(name + " must be a floating-point tensor (float32, float64, float16 or bfloat16), got "
                         + str(x.dtype))
    return x.dtype


# ---------------------------------------------------------------------------------- layers

class _Int8RNNLayerBase(_Int8RecurrentBase):
    _format_version: Final[int] = RNN_FORMAT_VERSION
    mode: str
    input_size: int
    hidden_size: int
    num_layers: int
    bias: bool
    batch_first: bool
    dropout: float
    bidirectional: bool
    proj_size: int
    activation: str

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 activation: str = "dynamic", device=None) -> None:
        super().__init__()
        name = type(self).__name__
        _check_activation(activation, name)
        if mode not in _MODES:
            raise ValueError(f"{name}: unknown mode {mode!r}")
        if input_size <= 0 or hidden_size <= 0 or num_layers <= 0:
            raise ValueError(f"{name}: input_size, hidden_size and num_layers must be positive, got "
                             f"{input_size}, {hidden_size}, {num_layers}")
        if proj_size < 0 or (proj_size > 0 and (mode != "LSTM" or proj_size >= hidden_size)):
            raise ValueError(f"{name}: proj_size must be 0, or (LSTM only) in [1, hidden_size), got {proj_size}")
        if not 0 <= dropout <= 1:
            raise ValueError(f"{name}: dropout must be in [0, 1], got {dropout}")
        self.mode = mode
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self.proj_size = int(proj_size)
        self.activation = activation
        self._register_canonical(device)

    def _suffixes(self) -> List[str]:
        dirs = ["", "_reverse"] if self.bidirectional else [""]
        return [f"_l{layer}{d}" for layer in range(self.num_layers) for d in dirs]

    def _layer_inputs(self) -> List[int]:
        real_h = self.proj_size if self.proj_size > 0 else self.hidden_size
        dirs = 2 if self.bidirectional else 1
        return [self.input_size if layer == 0 else real_h * dirs for layer in range(self.num_layers) for _ in
                range(dirs)]

    @classmethod
    def _from_float(cls, module, float_type, activation, input_scale=None, input_zero_point=None):
        where = cls.__name__
        _check_float_type(module, float_type, where)
        _check_activation(activation, where + ".from_float")
        _no_static_args(input_scale, input_zero_point, activation, where)
        mode = module.mode
        kwargs = dict(num_layers=module.num_layers, bias=module.bias, batch_first=module.batch_first,
                      dropout=float(module.dropout), bidirectional=module.bidirectional, activation=activation,
                      device=module.weight_ih_l0.device)
        if mode == "LSTM":
            kwargs["proj_size"] = module.proj_size
        elif mode in ("RNN_TANH", "RNN_RELU"):
            kwargs["nonlinearity"] = "tanh" if mode == "RNN_TANH" else "relu"
        q = cls(module.input_size, module.hidden_size, **kwargs)
        q._fill_from_float(module, activation)
        return q

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size != 0:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.batch_first is not False:
            s += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            s += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            s += f", bidirectional={self.bidirectional}"
        if self.mode == "RNN_RELU":
            s += ", nonlinearity='relu'"
        return s + f", activation={self.activation!r}"

    def _name(self) -> str:
        if self.mode == "LSTM":
            return "LSTM"
        if self.mode == "GRU":
            return "GRU"
        return "RNN"

    def _prepare_tensor_input(self, input: Tensor) -> Tuple[Tensor, bool, int, int]:
        """Checks a padded input; returns (time-major rows [T*B, I], is_batched, T, B)."""
        if input.dim() not in (2, 3):
            # The float layers' messages (nn.RNN says "tensor").
            raise ValueError(self._name() + ": Expected input to be 2D or 3D, got " + str(input.dim())
                             + ("D tensor instead" if self._name() == "RNN" else "D instead"))
        _compute_dtype(input, self._name() + ": input")
        if input.size(-1) != self.input_size:
            raise RuntimeError("input.size(-1) must be equal to input_size. Expected " + str(self.input_size)
                               + ", got " + str(input.size(-1)))
        is_batched = input.dim() == 3
        if not is_batched:
            x = input.unsqueeze(1)
        elif self.batch_first:
            x = input.transpose(0, 1)
        else:
            x = input
        steps = x.size(0)
        batch = x.size(1)
        return x.reshape(steps * batch, self.input_size), is_batched, steps, batch

    def _check_state(self, hx: Tensor, expected: List[int], what: str, in_dtype: torch.dtype) -> Tensor:
        if hx.dim() != 3 or list(hx.shape) != expected:
            raise RuntimeError("Expected " + what + " size (" + str(expected[0]) + ", " + str(expected[1]) + ", "
                               + str(expected[2]) + "), got " + str(list(hx.shape)))
        if hx.dtype != in_dtype:
            raise ValueError(self._name() + ": " + what + " must have the input's dtype " + str(in_dtype)
                             + ", got " + str(hx.dtype))
        return hx.to(torch.float32)

    def _run(self, x: Tensor, batch_sizes: List[int], h0: Tensor, c0: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """x: float32 time-major rows; h0 [L*D, B, H_out], c0 [L*D, B, H] (float32, sorted batch order)."""
        p = self._packed
        dirs = 2 if self.bidirectional else 1
        training = self.training and self.dropout > 0
        if torch.jit.is_scripting():
            return _run_layers(self.mode, self.activation, self.num_layers, dirs, self.dropout, training, x,
                               batch_sizes, h0, c0, p.ih, p.s_ih, p.b_ih, p.hh, p.s_hh, p.b_hh, p.hr, p.s_hr)
        return _run_layers_eager(self.mode, self.activation, self.num_layers, dirs, self.dropout, training, x,
                                 batch_sizes, h0, c0, p.ih, p.s_ih, p.b_ih, p.hh, p.s_hh, p.b_hh, p.hr, p.s_hr)

    def _forward_impl(self, input: Tensor, batch_sizes: Optional[Tensor], sorted_indices: Optional[Tensor],
                      hx: Optional[Tensor], cx: Optional[Tensor], has_cell: bool
                      ) -> Tuple[Tensor, Tensor, Tensor]:
        """The whole layer; hx/cx in the user's batch order. Returns (output, h_n, c_n) in the input's dtype."""
        dirs = 2 if self.bidirectional else 1
        real_h = self.proj_size if self.proj_size > 0 else self.hidden_size
        in_dtype = input.dtype
        if batch_sizes is not None:
            _compute_dtype(input, self._name() + ": input")
            if input.dim() != 2:
                raise RuntimeError("input must have 2 dimensions, got " + str(input.dim()))
            if input.size(-1) != self.input_size:
                raise RuntimeError("input.size(-1) must be equal to input_size. Expected " + str(self.input_size)
                                   + ", got " + str(input.size(-1)))
            sizes: List[int] = batch_sizes.tolist()
            batch = sizes[0] if len(sizes) > 0 else 0
            x = input
            is_batched = True
            steps = len(sizes)
        else:
            x, is_batched, steps, batch = self._prepare_tensor_input(input)
            sizes = [batch] * steps
        expected_h = [self.num_layers * dirs, batch, real_h]
        expected_c = [self.num_layers * dirs, batch, self.hidden_size]
        h_name = "hidden[0]" if has_cell else "hidden"
        if hx is None:
            h0 = torch.zeros(expected_h, dtype=torch.float32, device=input.device)
        else:
            if batch_sizes is None:
                if is_batched and hx.dim() != 3:
                    raise RuntimeError("For batched 3-D input, hx should also be 3-D but got " + str(hx.dim())
                                       + "-D tensor")
                if not is_batched:
                    if hx.dim() != 2:
                        raise RuntimeError("For unbatched 2-D input, hx should also be 2-D but got "
                                           + str(hx.dim()) + "-D tensor")
                    hx = hx.unsqueeze(1)
            h0 = self._check_state(hx, expected_h, h_name, in_dtype)
            if sorted_indices is not None:
                h0 = h0.index_select(1, sorted_indices)
        if cx is None:
            c0 = torch.zeros(expected_c, dtype=torch.float32, device=input.device)
        else:
            if batch_sizes is None:
                if is_batched and cx.dim() != 3:
                    raise RuntimeError("For batched 3-D input, cx should also be 3-D but got " + str(cx.dim())
                                       + "-D tensor")
                if not is_batched:
                    if cx.dim() != 2:
                        raise RuntimeError("For unbatched 2-D input, cx should also be 2-D but got "
                                           + str(cx.dim()) + "-D tensor")
                    cx = cx.unsqueeze(1)
            c0 = self._check_state(cx, expected_c, "hidden[1]", in_dtype)
            if sorted_indices is not None:
                c0 = c0.index_select(1, sorted_indices)
        out, h_n, c_n = self._run(x.to(torch.float32), sizes, h0, c0)
        out = out.to(in_dtype)
        h_n = h_n.to(in_dtype)
        c_n = c_n.to(in_dtype)
        if batch_sizes is None:
            out = out.view(steps, batch, out.size(-1))
            if not is_batched:
                out = out.squeeze(1)
                h_n = h_n.squeeze(1)
                c_n = c_n.squeeze(1)
            elif self.batch_first:
                out = out.transpose(0, 1)
        return out, h_n, c_n


class Int8LSTM(_Int8RNNLayerBase):
    """``torch.nn.LSTM`` with int8 weights (see the module docstring).

    Takes the arguments of ``torch.nn.LSTM`` (no ``dtype``: buffers are int8 / float32)
    plus ``activation`` (``"dynamic"`` or ``"weight_only"``); a new layer has zero
    weights and is meant to be filled by :meth:`from_float` or ``load_state_dict``.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 activation: str = "dynamic", device=None) -> None:
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, activation, device)

    @classmethod
    def from_float(cls, module: torch.nn.LSTM, activation: str = "dynamic", input_scale=None,
                   input_zero_point=None) -> "Int8LSTM":
        """An ``Int8LSTM`` computing ``module`` (a ``torch.nn.LSTM``) with int8 weights; ``module`` is unchanged."""
        return cls._from_float(module, torch.nn.LSTM, activation, input_scale, input_zero_point)

    @torch._jit_internal._overload_method  # noqa: F811
    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None
                ) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        pass

    @torch._jit_internal._overload_method  # noqa: F811
    def forward(self, input: PackedSequence, hx: Optional[Tuple[Tensor, Tensor]] = None
                ) -> Tuple[PackedSequence, Tuple[Tensor, Tensor]]:
        pass

    def forward(self, input, hx=None):  # noqa: F811
        h0: Optional[Tensor] = None
        c0: Optional[Tensor] = None
        if hx is not None:
            h0 = hx[0]
            c0 = hx[1]
            if not isinstance(input, PackedSequence):
                # The float layer's message for a wrong state rank.
                if input.dim() == 3 and (h0.dim() != 3 or c0.dim() != 3):
                    raise RuntimeError("For batched 3-D input, hx and cx should also be 3-D but got ("
                                       + str(h0.dim()) + "-D, " + str(c0.dim()) + "-D) tensors")
                if input.dim() == 2 and (h0.dim() != 2 or c0.dim() != 2):
                    raise RuntimeError("For unbatched 2-D input, hx and cx should also be 2-D but got ("
                                       + str(h0.dim()) + "-D, " + str(c0.dim()) + "-D) tensors")
        if isinstance(input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = input
            out, h_n, c_n = self._forward_impl(data, batch_sizes, sorted_indices, h0, c0, True)
            if unsorted_indices is not None:
                h_n = h_n.index_select(1, unsorted_indices)
                c_n = c_n.index_select(1, unsorted_indices)
            return PackedSequence(out, batch_sizes, sorted_indices, unsorted_indices), (h_n, c_n)
        else:
            out, h_n, c_n = self._forward_impl(input, None, None, h0, c0, True)
            return out, (h_n, c_n)


class Int8GRU(_Int8RNNLayerBase):
    """``torch.nn.GRU`` with int8 weights (see the module docstring and :class:`Int8LSTM`)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 activation: str = "dynamic", device=None) -> None:
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0,
                         activation, device)

    @classmethod
    def from_float(cls, module: torch.nn.GRU, activation: str = "dynamic", input_scale=None,
                   input_zero_point=None) -> "Int8GRU":
        """An ``Int8GRU`` computing ``module`` (a ``torch.nn.GRU``) with int8 weights; ``module`` is unchanged."""
        return cls._from_float(module, torch.nn.GRU, activation, input_scale, input_zero_point)

    @torch._jit_internal._overload_method  # noqa: F811
    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        pass

    @torch._jit_internal._overload_method  # noqa: F811
    def forward(self, input: PackedSequence, hx: Optional[Tensor] = None) -> Tuple[PackedSequence, Tensor]:
        pass

    def forward(self, input, hx=None):  # noqa: F811
        if isinstance(input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = input
            out, h_n, _ = self._forward_impl(data, batch_sizes, sorted_indices, hx, None, False)
            if unsorted_indices is not None:
                h_n = h_n.index_select(1, unsorted_indices)
            return PackedSequence(out, batch_sizes, sorted_indices, unsorted_indices), h_n
        else:
            out, h_n, _ = self._forward_impl(input, None, None, hx, None, False)
            return out, h_n


class Int8RNN(_Int8RNNLayerBase):
    """``torch.nn.RNN`` (``nonlinearity`` ``"tanh"`` or ``"relu"``) with int8 weights."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 activation: str = "dynamic", device=None) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Int8RNN: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size, hidden_size, num_layers,
                         bias, batch_first, dropout, bidirectional, 0, activation, device)

    @property
    def nonlinearity(self) -> str:
        return "tanh" if self.mode == "RNN_TANH" else "relu"

    @classmethod
    def from_float(cls, module: torch.nn.RNN, activation: str = "dynamic", input_scale=None,
                   input_zero_point=None) -> "Int8RNN":
        """An ``Int8RNN`` computing ``module`` (a ``torch.nn.RNN``) with int8 weights; ``module`` is unchanged."""
        return cls._from_float(module, torch.nn.RNN, activation, input_scale, input_zero_point)

    @torch._jit_internal._overload_method  # noqa: F811
    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        pass

    @torch._jit_internal._overload_method  # noqa: F811
    def forward(self, input: PackedSequence, hx: Optional[Tensor] = None) -> Tuple[PackedSequence, Tensor]:
        pass

    def forward(self, input, hx=None):  # noqa: F811
        if isinstance(input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = input
            out, h_n, _ = self._forward_impl(data, batch_sizes, sorted_indices, hx, None, False)
            if unsorted_indices is not None:
                h_n = h_n.index_select(1, unsorted_indices)
            return PackedSequence(out, batch_sizes, sorted_indices, unsorted_indices), h_n
        else:
            out, h_n, _ = self._forward_impl(input, None, None, hx, None, False)
            return out, h_n


# ---------------------------------------------------------------------------------- cells

class _Int8CellBase(_Int8RecurrentBase):
    _format_version: Final[int] = RNN_FORMAT_VERSION
    mode: str
    input_size: int
    hidden_size: int
    bias: bool
    activation: str

    def __init__(self, mode: str, input_size: int, hidden_size: int, bias: bool, activation: str, device) -> None:
        super().__init__()
        name = type(self).__name__
        _check_activation(activation, name)
        if input_size <= 0 or hidden_size <= 0:
            raise ValueError(f"{name}: input_size and hidden_size must be positive, got {input_size}, {hidden_size}")
        self.mode = mode
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.bias = bool(bias)
        self.activation = activation
        self._register_canonical(device)

    def _suffixes(self) -> List[str]:
        return [""]

    def _layer_inputs(self) -> List[int]:
        return [self.input_size]

    @classmethod
    def _from_float(cls, module, float_type, activation, input_scale=None, input_zero_point=None):
        where = cls.__name__
        _check_float_type(module, float_type, where)
        _check_activation(activation, where + ".from_float")
        _no_static_args(input_scale, input_zero_point, activation, where)
        kwargs = dict(bias=module.bias, activation=activation, device=module.weight_ih.device)
        if float_type is torch.nn.RNNCell:
            kwargs["nonlinearity"] = module.nonlinearity
        q = cls(module.input_size, module.hidden_size, **kwargs)
        q._fill_from_float(module, activation)
        return q

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.mode == "RNN_RELU":
            s += ", nonlinearity='relu'"
        return s + f", activation={self.activation!r}"

    def _cell_name(self) -> str:
        if self.mode == "LSTM":
            return "LSTMCell"
        if self.mode == "GRU":
            return "GRUCell"
        return "RNNCell"

    def _cell_forward(self, input: Tensor, hx: Optional[Tensor], cx: Optional[Tensor]
                      ) -> Tuple[Tensor, Tensor]:
        name = self._cell_name()
        if input.dim() not in (1, 2):
            raise ValueError(name + ": Expected input to be 1D or 2D, got " + str(input.dim()) + "D instead")
        in_dtype = _compute_dtype(input, name + ": input")
        if input.size(-1) != self.input_size:
            raise RuntimeError("input has inconsistent input_size: got " + str(input.size(-1)) + " expected "
                               + str(self.input_size))
        is_batched = input.dim() == 2
        x = input if is_batched else input.unsqueeze(0)
        batch = x.size(0)
        states: List[Tensor] = []
        for i, s in enumerate([hx, cx]):
            what = "hidden" if i == 0 else "cell"
            if s is None:
                states.append(torch.zeros(batch, self.hidden_size, dtype=torch.float32, device=input.device))
            else:
                if s.dim() not in (1, 2):
                    raise ValueError(name + ": Expected " + what + " to be 1D or 2D, got " + str(s.dim())
                                     + "D instead")
                if s.dim() != input.dim():
                    raise RuntimeError(name + ": " + what + " must be " + str(input.dim()) + "-D like the input, got "
                                       + str(s.dim()) + "-D")
                s2 = s if is_batched else s.unsqueeze(0)
                if s2.size(0) != batch:
                    raise RuntimeError("Input batch size " + str(batch) + " doesn't match hidden" + str(i)
                                       + " batch size " + str(s2.size(0)))
                if s2.size(1) != self.hidden_size:
                    raise RuntimeError("hidden" + str(i) + " has inconsistent hidden_size: got " + str(s2.size(1))
                                       + ", expected " + str(self.hidden_size))
                if s2.dtype != in_dtype:
                    raise ValueError(name + ": " + what + " state must have the input's dtype " + str(in_dtype)
                                     + ", got " + str(s2.dtype))
                states.append(s2.to(torch.float32))
        p = self._packed
        gi = torch.ops.q8.linear(x.to(torch.float32), p.ih[0], p.s_ih[0], p.b_ih[0], self.activation, None, None)
        h, c = _step(self.mode, gi, states[0], states[1], p.hh[0], p.s_hh[0], p.b_hh[0], None, None,
                     self.activation)
        h = h.to(in_dtype)
        c = c.to(in_dtype)
        if not is_batched:
            h = h.squeeze(0)
            c = c.squeeze(0)
        return h, c


class Int8LSTMCell(_Int8CellBase):
    """``torch.nn.LSTMCell`` with int8 weights: ``forward(input, (h, c)=None) -> (h', c')``."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, activation: str = "dynamic",
                 device=None) -> None:
        super().__init__("LSTM", input_size, hidden_size, bias, activation, device)

    @classmethod
    def from_float(cls, module: torch.nn.LSTMCell, activation: str = "dynamic", input_scale=None,
                   input_zero_point=None) -> "Int8LSTMCell":
        return cls._from_float(module, torch.nn.LSTMCell, activation, input_scale, input_zero_point)

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tensor]:
        if hx is None:
            return self._cell_forward(input, None, None)
        return self._cell_forward(input, hx[0], hx[1])


class Int8GRUCell(_Int8CellBase):
    """``torch.nn.GRUCell`` with int8 weights: ``forward(input, h=None) -> h'``."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, activation: str = "dynamic",
                 device=None) -> None:
        super().__init__("GRU", input_size, hidden_size, bias, activation, device)

    @classmethod
    def from_float(cls, module: torch.nn.GRUCell, activation: str = "dynamic", input_scale=None,
                   input_zero_point=None) -> "Int8GRUCell":
        return cls._from_float(module, torch.nn.GRUCell, activation, input_scale, input_zero_point)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        return self._cell_forward(input, hx, None)[0]


class Int8RNNCell(_Int8CellBase):
    """``torch.nn.RNNCell`` (``nonlinearity`` ``"tanh"`` or ``"relu"``) with int8 weights."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 activation: str = "dynamic", device=None) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Int8RNNCell: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size, hidden_size, bias,
                         activation, device)

    @property
    def nonlinearity(self) -> str:
        return "tanh" if self.mode == "RNN_TANH" else "relu"

    @classmethod
    def from_float(cls, module: torch.nn.RNNCell, activation: str = "dynamic", input_scale=None,
                   input_zero_point=None) -> "Int8RNNCell":
        return cls._from_float(module, torch.nn.RNNCell, activation, input_scale, input_zero_point)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        return self._cell_forward(input, hx, None)[0]
