// q8: int8 quantization operators for PyTorch.
//
// The public C++ API. Every function calls its operator through the PyTorch
// dispatcher, so the CPU, CUDA, Meta and Autograd kernels registered for
// `torch.ops.q8.*` are used exactly as they are from Python or TorchScript.
// Link against libq8 (CMake: find_package(q8) + target_link_libraries(app q8::q8));
// including this header is enough to keep the library, and so its operator
// registrations, linked in.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#if defined(_WIN32)
#define Q8_API __declspec(dllexport)
#else
#define Q8_API __attribute__((visibility("default")))
#endif

namespace q8 {

// Fake quantization (quantize, then dequantize) with one scale and zero point:
//   q   = clamp(nearbyint(x * (1 / scale)) + zero_point, quant_min, quant_max)
//   out = (q - zero_point) * scale
// input: float32, float16 or bfloat16 (math in float32, output in input's dtype).
// scale: float32 tensor with one element, finite and >= FLT_MIN (1 / scale finite).
// zero_point: int32, int64 or float32 tensor with one element; a float zero point
//   is rounded half to even and clamped to [quant_min, quant_max].
// Differentiable: straight-through for `input` inside the clamp range, and the
// learnable-scale (LSQ) gradients for `scale` / `zero_point` when they require grad.
Q8_API at::Tensor fake_quantize_per_tensor(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max);

// As above with one (scale, zero_point) per slice along `axis` (negative axes count
// from the end): scale and zero_point are 1-D with input.size(axis) elements.
Q8_API at::Tensor fake_quantize_per_channel(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max);

// Min/max calibration: returns (scale float32, zero_point int32). Per tensor
// (axis = nullopt) the results are 0-dim; per channel they have input.size(axis)
// elements. The range always includes 0; NaN and +-Inf are ignored. Symmetric mode
// gives zero_point 0 for signed ranges (quant_min < 0) and the midpoint
// (quant_min + quant_max + 1) / 2 for unsigned ones.
Q8_API std::tuple<at::Tensor, at::Tensor> choose_qparams(
    const at::Tensor& input,
    int64_t quant_min,
    int64_t quant_max,
    bool symmetric = false,
    std::optional<int64_t> axis = std::nullopt);

// Quantize to an integer tensor of `dtype` (int8, uint8 or int32); axis = nullopt
// is per tensor. NaN maps to zero_point (the code of 0.0).
Q8_API at::Tensor quantize(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    std::optional<int64_t> axis,
    int64_t quant_min,
    int64_t quant_max,
    at::ScalarType dtype);

// (q - zero_point) * scale, computed in float32, returned as `dtype`.
Q8_API at::Tensor dequantize(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    std::optional<int64_t> axis,
    at::ScalarType dtype = at::kFloat);

// ---------------------------------------------------------------------------
// Int8 linear layers
// ---------------------------------------------------------------------------
// The canonical int8 weight: symmetric per output channel, codes in [-127, 127],
//   weight_scale[n] = max(max_k |w[n][k]| / 127, float32 eps)
//   weight_int8[n]  = clamp(nearbyint(w[n] * (1 / weight_scale[n])), -127, 127).
// weight: float32 / float16 / bfloat16 [N, K], finite.
Q8_API std::tuple<at::Tensor, at::Tensor> quantize_weight(const at::Tensor& weight);

// The layout of the device's int8 kernels (a 1-D uint8 tensor with a
// self-describing header); rebuilt from weight_int8, never saved.
Q8_API at::Tensor pack_weight(const at::Tensor& weight_int8);

// The exact canonical weight of a packed one (N and K must match its header).
Q8_API at::Tensor unpack_weight(const at::Tensor& packed_weight, int64_t out_features, int64_t in_features);

// Exact integer GEMM: out[m][n] = sum_k (input[m][k] - zp[m]) * weight_int8[n][k],
// int64 [M, N]; input uint8 [M, K]; zp int32/int64, one element or [M], default 0.
Q8_API at::Tensor int8_mm(
    const at::Tensor& input,
    const at::Tensor& packed_weight,
    int64_t out_features,
    const std::optional<at::Tensor>& input_zero_point = std::nullopt);

// y = clamp(input . (weight_int8 . diag(weight_scale))^T + bias, clamp_min, clamp_max),
// in input's dtype. activation: "dynamic" (per-row uint8 activations quantized at
// run time), "static" (one calibrated input_scale / input_zero_point, zero point in
// [0, 255]) or "weight_only" (float activations, int8 weights converted in the
// kernel). The clamp is a fused activation (ReLU: clamp_min = 0; ReLU6: 0 and 6;
// nullopt leaves a side open), applied in float32 in the epilogue; NaN stays NaN.
Q8_API at::Tensor linear(
    const at::Tensor& input,
    const at::Tensor& packed_weight,
    const at::Tensor& weight_scale,
    const std::optional<at::Tensor>& bias = std::nullopt,
    c10::string_view activation = "dynamic",
    const std::optional<at::Tensor>& input_scale = std::nullopt,
    const std::optional<at::Tensor>& input_zero_point = std::nullopt,
    std::optional<double> clamp_min = std::nullopt,
    std::optional<double> clamp_max = std::nullopt);
// linear is differentiable with respect to input and bias (the int8 weight is
// frozen; weight_scale or input_scale requiring grad is an error): straight-through
// in "dynamic" and "weight_only", and with fake quantization's clamp mask in
// "static" (zero gradient where input quantizes outside [0, 255]). With a clamp,
// the gradient is zero where the output sits on a bound (output <= clamp_min or
// >= clamp_max), as torch's relu / hardtanh backward. Backward of backward is not
// supported.

// The input gradient of linear: grad_output [..., N] . (weight_int8 . diag(weight_scale)),
// [..., in_features] in grad_output's dtype (no clamp mask: the autograd kernel applies it).
Q8_API at::Tensor linear_grad_input(
    const at::Tensor& grad_output,
    const at::Tensor& packed_weight,
    const at::Tensor& weight_scale,
    int64_t in_features);

// ---------------------------------------------------------------------------
// Int8 convolution (docs/conv.md)
// ---------------------------------------------------------------------------
// The device's packed layout of a canonical conv weight, int8 [OC, C / groups, KH, KW]
// (symmetric per output channel: quantize_weight(weight.reshape(OC, -1)) reshaped).
Q8_API at::Tensor pack_conv_weight(const at::Tensor& weight_int8, int64_t groups);

// The exact canonical weight of a packed one (every size must match its header).
Q8_API at::Tensor unpack_conv_weight(const at::Tensor& packed_weight, int64_t out_channels,
                                     int64_t in_channels_per_group, at::IntArrayRef kernel_size, int64_t groups);

// The fused int8 2-D convolution, [N, C, H, W] -> [N, OC, OH, OW] (channels_last):
//   acc = sum over the receptive field of (xq - zp_x) * weight_int8 (exact int32;
//         zero padding reads zp_x, i.e. float 0),
//   y   = float(acc) * (sx * weight_scale[o]) + bias[o] (+ residual), then clamped to
//         [clamp_min, clamp_max] (NaN stays NaN),
//   out = y (float32, or input's float dtype), or, with output_scale / output_zero_point,
//         uint8 clamp(nearbyint(y * (1 / output_scale)) + output_zero_point, 0, 255).
// activation "dynamic": float input, uint8 qparams per sample from its min / max;
// "static": input_scale / input_zero_point given; a float input is quantized with
// them, a uint8 input holds the codes. residual: [N, OC, OH, OW], float, or uint8
// with residual_scale / residual_zero_point. A sample whose float input holds NaN or
// Inf gives NaN outputs (float output) or output_zero_point (uint8 output).
Q8_API at::Tensor conv2d(
    const at::Tensor& input,
    const at::Tensor& packed_weight,
    const at::Tensor& weight_scale,
    const std::optional<at::Tensor>& bias,
    at::IntArrayRef kernel_size,
    at::IntArrayRef stride = {1, 1},
    at::IntArrayRef padding = {0, 0},
    at::IntArrayRef dilation = {1, 1},
    int64_t groups = 1,
    c10::string_view activation = "dynamic",
    const std::optional<at::Tensor>& input_scale = std::nullopt,
    const std::optional<at::Tensor>& input_zero_point = std::nullopt,
    const std::optional<at::Tensor>& residual = std::nullopt,
    const std::optional<at::Tensor>& residual_scale = std::nullopt,
    const std::optional<at::Tensor>& residual_zero_point = std::nullopt,
    std::optional<double> clamp_min = std::nullopt,
    std::optional<double> clamp_max = std::nullopt,
    const std::optional<at::Tensor>& output_scale = std::nullopt,
    const std::optional<at::Tensor>& output_zero_point = std::nullopt);

// Max pooling of uint8 codes [N, C, H, W] (any layout) -> channels_last uint8 with the
// input's qparams: the codes of torch's max_pool2d of their values (quantization is
// monotone). stride empty: kernel_size. Padding (at most half the kernel) never wins.
Q8_API at::Tensor max_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride = {},
                             at::IntArrayRef padding = {0, 0}, at::IntArrayRef dilation = {1, 1},
                             bool ceil_mode = false);

// ---------------------------------------------------------------------------
// Int8 embeddings
// ---------------------------------------------------------------------------
// A table in the canonical form of quantize_weight: weight_int8 int8
// [num_embeddings, embedding_dim] and weight_scale float32 [num_embeddings]; row r
// stands for weight_int8[r] * weight_scale[r]. Rows are dequantized as
// float(q) * scale in float32, then converted to `dtype` (float32 when not given;
// float64, float16 and bfloat16 too).

// F.embedding on the dequantized table: out = table[indices], shape
// indices.shape + [embedding_dim]. indices: int32 / int64, any shape (0-dim too).
// An index outside [0, num_embeddings) is an error (CPU: naming the index and the
// table size; CUDA: a device-side assert, as torch's embedding). F.embedding's
// padding_idx changes only the gradient, so there is none here: the padding row
// returns what is stored (zeros for a layer made by nn.Embedding(padding_idx=...)).
// Not differentiable: a backward through the result raises an error.
Q8_API at::Tensor embedding(
    const at::Tensor& weight_int8,
    const at::Tensor& weight_scale,
    const at::Tensor& indices,
    std::optional<at::ScalarType> dtype = std::nullopt);

// F.embedding_bag on the dequantized table, accumulated in float32: returns
// [bags, embedding_dim]. indices 2-D [bags, n] (no offsets), or 1-D with 1-D
// offsets (bag b is indices[offsets[b]:offsets[b + 1]], the last one running to
// the end, or to offsets[-1] with include_last_offset); offsets[0] == 0,
// non-decreasing, at most indices.numel(). mode "sum", "mean" or "max";
// per_sample_weights (sum only, indices' shape) multiply each dequantized row.
// Entries equal to padding_idx (negative counts from the end) are left out of the
// bag (and of the mean's count); an empty bag gives zeros.
Q8_API at::Tensor embedding_bag(
    const at::Tensor& weight_int8,
    const at::Tensor& weight_scale,
    const at::Tensor& indices,
    const std::optional<at::Tensor>& offsets = std::nullopt,
    c10::string_view mode = "sum",
    const std::optional<at::Tensor>& per_sample_weights = std::nullopt,
    bool include_last_offset = false,
    std::optional<int64_t> padding_idx = std::nullopt,
    std::optional<at::ScalarType> dtype = std::nullopt);

// The CPU kernel family in use: "avx512_vnni", "avx512", "avx_vnni", "avx2" or
// "default" (portable). Q8_CPU_ISA=<name> in the environment, or set_cpu_isa(),
// forces another one this CPU supports (cpu_isas()); every family gives
// bit-identical results (the weight-only linear, a float sum, excepted).
Q8_API const char* cpu_isa();
Q8_API void set_cpu_isa(const char* name);
Q8_API std::vector<std::string> cpu_isas();

// ---------------------------------------------------------------------------
// Fused observer + fake quantization (QAT)
// ---------------------------------------------------------------------------
// One training step of a moving-average min/max observer followed by fake
// quantization, q8's counterpart of torch.fused_moving_avg_obs_fake_quant. The
// four state tensors are updated IN PLACE:
//   running_min, running_max: float32; start at +Inf / -Inf ("not observed yet").
//   scale: float32; zero_point: int32.
// Per tensor (axis = nullopt) each has one element; per channel each is 1-D with
// input.size(axis) elements. observer_on / fake_quant_on: one-element bool,
// integer or floating-point tensors on input's device (non-zero = on), read on
// that device (no host synchronization on CUDA).
//   observer_on: cur_min / cur_max = min / max of the FINITE values of input (per
//     channel); running = cur the first time (running not finite), else
//     running += averaging_constant * (cur - running) (float32); a channel with
//     no finite value keeps its running values. Then scale / zero_point =
//     the q8.choose_qparams formulas on [running_min, running_max] (the range
//     extended to hold 0; `symmetric` as in choose_qparams).
//   fake_quant_on: output = fake_quantize(input, scale, zero_point) (the values
//     just computed) and mask = its straight-through mask; else output = a copy
//     of input and mask all true.
// Returns (output in input's dtype and layout, mask bool). Differentiable in
// input only (straight-through: grad * mask); the state gets no gradient and
// must not require grad.
// Differences from torch's op (which also reads both flags on the host): q8
// recomputes scale / zero_point when the OBSERVER runs (torch: when fake quant
// runs), with choose_qparams' formulas (torch: its ChooseQuantizationParams,
// which differs in the last bits of the scale, sometimes by 1 in the zero point,
// and in symmetric mode); NaN / +-Inf inputs are ignored by the observer (torch
// lets them into the running values); any axis, float16 / bfloat16 inputs.
// The CPU raises an error for an invalid stored scale / zero point (e.g. set by
// hand with the observer off); CUDA outputs NaN there instead.
Q8_API std::tuple<at::Tensor, at::Tensor> observe_fake_quantize(
    const at::Tensor& input,
    const at::Tensor& observer_on,
    const at::Tensor& fake_quant_on,
    const at::Tensor& running_min,
    const at::Tensor& running_max,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    double averaging_constant,
    int64_t quant_min,
    int64_t quant_max,
    std::optional<int64_t> axis = std::nullopt,
    bool symmetric = false);

// ---------------------------------------------------------------------------
// Histogram (percentile) observer
// ---------------------------------------------------------------------------
// State, updated IN PLACE by histogram_observe: histogram (contiguous 1-D
// float64, B >= 1 bins chosen by the caller, zeros at the start), hist_min /
// hist_max (float32, one element each, +Inf / -Inf before the first observation),
// all on input's device. observer_on: one-element bool, integer or floating-point
// tensor on that device, read there (no host synchronization on CUDA); 0 = no change.
//   1. batch range = the finite min / max of input (NaN / +-Inf ignored), or of
//      input_range's one or two float32 elements ([lo, hi]; one element v is
//      [v, v]) when given: every distributed rank then grows its range the same
//      way (all-reduce the batch min / max first), and equal-range histograms can
//      be summed. Nothing finite: no change.
//   2. range = the batch range the first time (old counts discarded), else the
//      union; when it grows, the old counts are re-binned by overlap proportion
//      (uniform density within a bin, mass preserved up to float64 rounding).
//   3. each finite value x adds 1 to bin clamp(floor((x - lo) * B / (hi - lo)),
//      0, B - 1) (float64; x == hi in the last bin; values outside an input_range
//      clamp into the edge bins). A degenerate range (lo == hi, a constant input)
//      is a point mass at lo in bin 0; it moves whole to lo's bin when the range grows.
// Not differentiable (input may require grad; the state must not).
Q8_API void histogram_observe(
    const at::Tensor& input,
    const at::Tensor& observer_on,
    const at::Tensor& histogram,
    const at::Tensor& hist_min,
    const at::Tensor& hist_max,
    const std::optional<at::Tensor>& input_range = std::nullopt);

// (scale 0-dim float32, zero_point 0-dim int32) on the histogram's device, computed
// there (no sync) with choose_qparams' formulas from a clipped range (extended to
// hold 0 as choose_qparams does). percentile p in (0, 100] is the percent of the
// mass kept:
//   asymmetric: [lo, hi], lo = the quantile at (1 - p/100) / 2 and hi the one at
//     1 - (1 - p/100) / 2 (counted from the right end), linear inside a bin;
//   symmetric: [-a, a], a = the smallest float32 whose mass of |x| <= a is at
//     least p/100 of the total (uniform density within a bin).
// p = 100, a histogram without mass or a degenerate range give the full
// [hist_min, hist_max]; no observation yet gives choose_qparams of an empty input.
Q8_API std::tuple<at::Tensor, at::Tensor> histogram_qparams(
    const at::Tensor& histogram,
    const at::Tensor& hist_min,
    const at::Tensor& hist_max,
    double percentile,
    int64_t quant_min,
    int64_t quant_max,
    bool symmetric = false);

// Called by the inline variable below, so that any program that includes this
// header links libq8 and so runs its operator registrations.
Q8_API int64_t register_ops();
namespace detail {
inline const int64_t registered = register_ops();
} // namespace detail

} // namespace q8
