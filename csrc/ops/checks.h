// Argument checks shared by every q8 op and every kernel (CPU, CUDA, Meta), so
// that bad input gives the same clear RuntimeError on every device and under
// torch.compile. Messages read "q8.<op>: <argument> must be ..., got ...".
// None of these reads tensor data (that would sync a GPU); the CPU kernels also
// validate values with check_scale_values / check_zero_point_values.
#pragma once

#include <optional>

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

namespace q8::detail {

// The widest quantization range any q8 op accepts: signed and unsigned 16-bit.
constexpr int64_t kMinQuant = -32768;
constexpr int64_t kMaxQuant = 65535;

// input is float32, float16 or bfloat16.
void check_float_input(const char* op, const at::Tensor& input);

// quant_min < quant_max, both inside [kMinQuant, kMaxQuant].
void check_quant_range(const char* op, int64_t quant_min, int64_t quant_max);

// [quant_min, quant_max] fits in `dtype` (int8, uint8 or int32).
void check_quant_range_fits(const char* op, int64_t quant_min, int64_t quant_max, at::ScalarType dtype);

// Wraps a (possibly negative) axis into [0, input.dim()); nullopt stays nullopt.
std::optional<int64_t> check_axis(const char* op, const at::Tensor& input, std::optional<int64_t> axis);

// scale (float32) and zero_point (int32, int64 or float32) have the right dtype,
// live on input's device, and have one element (per tensor) or input.size(axis)
// elements in one dimension (per channel). `axis` is already wrapped.
void check_qparams(
    const char* op,
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    std::optional<int64_t> axis);

// Tensors that must all be on `reference`'s device.
void check_same_device(const char* op, const at::Tensor& reference, const char* ref_name,
                       const at::Tensor& other, const char* other_name);

// Data checks for host (CPU) scale / zero_point tensors: every scale is finite and
// > 0, every integer zero point lies in [quant_min, quant_max], every float zero
// point is finite.
void check_scale_values(const char* op, const at::Tensor& scale);
void check_zero_point_values(const char* op, const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max);

} // namespace q8::detail

namespace q8::detail {

// Everything the fake-quantize / quantize ops check before touching data:
// input dtype, quantization range, axis and the shapes / dtypes / devices of
// scale and zero_point. Returns the wrapped axis (nullopt per tensor).
std::optional<int64_t> check_fake_quantize_args(
    const char* op,
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    std::optional<int64_t> axis,
    int64_t quant_min,
    int64_t quant_max);

} // namespace q8::detail

namespace q8::detail {

// dequantize: input int8 / uint8 / int32, output dtype float32 / float16 /
// bfloat16, plus the axis and qparams checks. Returns the wrapped axis.
std::optional<int64_t> check_dequantize_args(
    const char* op,
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    std::optional<int64_t> axis,
    at::ScalarType dtype);

// The zero points a dequantize input of `qdtype` accepts: the dtype's range within
// the 16-bit range every q8 op supports.
std::pair<int64_t, int64_t> dequantize_zero_point_range(at::ScalarType qdtype);

} // namespace q8::detail

namespace q8::detail {

// choose_qparams: float input, quantization range, axis. Returns the wrapped axis.
std::optional<int64_t> check_choose_qparams_args(
    const char* op, const at::Tensor& input, int64_t quant_min, int64_t quant_max, std::optional<int64_t> axis);

// _fake_quantize_mask_backward: float grad, bool mask of grad's shape and device.
void check_mask_backward_args(const char* op, const at::Tensor& grad, const at::Tensor& mask);

// _fake_quantize_learnable_backward: the forward's checks plus grad of input's
// dtype, shape and device. Returns the wrapped axis.
std::optional<int64_t> check_learnable_backward_args(
    const char* op,
    const at::Tensor& grad,
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    std::optional<int64_t> axis,
    int64_t quant_min,
    int64_t quant_max);

} // namespace q8::detail

namespace q8::detail {

// The activation modes of q8.linear.
enum class LinearMode { Dynamic, Static, WeightOnly };

// quantize_weight: a defined 2-D float32 / float16 / bfloat16 weight.
void check_quantize_weight_args(const char* op, const at::Tensor& weight);

// pack_weight: a 2-D int8 weight with K <= kMaxPackedK and N < 2^31.
void check_pack_weight_args(const char* op, const at::Tensor& weight_int8);

// The packed tensor's container: defined, 1-D, uint8.
void check_packed_container(const char* op, const at::Tensor& packed_weight);

// int8_mm: input uint8 [M, K]; out_features >= 0; input_zero_point int32 / int64
// with one or M elements; everything on input's device.
void check_int8_mm_args(const char* op, const at::Tensor& input, const at::Tensor& packed_weight,
                        const c10::SymInt& out_features, const std::optional<at::Tensor>& input_zero_point);

// A fused activation's bounds (conv2d, linear): neither NaN, clamp_min <= clamp_max
// when both are given.
void check_clamp(const char* op, std::optional<double> clamp_min, std::optional<double> clamp_max);

// linear: input float [..., K] (at least 1-D); weight_scale float32 [N]; bias [N]
// in float32 or input's dtype; activation one of "dynamic", "static",
// "weight_only"; input_scale (float32) and input_zero_point (int32 / int64), one
// element each, given exactly in static mode; everything on input's device; the
// clamp as check_clamp.
LinearMode check_linear_args(const char* op, const at::Tensor& input, const at::Tensor& packed_weight,
                             const at::Tensor& weight_scale, const std::optional<at::Tensor>& bias,
                             c10::string_view activation, const std::optional<at::Tensor>& input_scale,
                             const std::optional<at::Tensor>& input_zero_point, std::optional<double> clamp_min,
                             std::optional<double> clamp_max);

// linear_grad_input: grad_output float32 / float16 / bfloat16 [..., N] (at least
// 1-D) with N = weight_scale.size(0); weight_scale float32 [N]; in_features >= 0;
// everything on grad_output's device.
void check_linear_grad_input_args(const char* op, const at::Tensor& grad_output, const at::Tensor& packed_weight,
                                  const at::Tensor& weight_scale, const c10::SymInt& in_features);

} // namespace q8::detail

namespace q8::detail {

// observe_fake_quantize: float input; observer_on / fake_quant_on one-element
// bool, integer or floating-point tensors; averaging_constant in (0, 1]; the
// quantization range; axis; running_min / running_max / scale float32 and
// zero_point int32, each with one element (per tensor) or 1-D with
// input.size(axis) elements (per channel; not an expanded stride-0 view, whose
// channels would all update one element); everything on input's device.
// Returns the wrapped axis (nullopt per tensor).
std::optional<int64_t> check_observe_fake_quantize_args(
    const char* op,
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
    std::optional<int64_t> axis);

} // namespace q8::detail

namespace q8::detail {

// histogram_observe: float input; observer_on a one-element bool, integer or
// floating-point tensor; histogram a contiguous 1-D float64 tensor with at least
// one bin; hist_min / hist_max float32 with one element; input_range (when given)
// float32 with one or two elements; everything on input's device.
void check_histogram_observe_args(
    const char* op,
    const at::Tensor& input,
    const at::Tensor& observer_on,
    const at::Tensor& histogram,
    const at::Tensor& hist_min,
    const at::Tensor& hist_max,
    const std::optional<at::Tensor>& input_range);

// histogram_qparams: the histogram state as above (on histogram's device),
// percentile in (0, 100], the quantization range.
void check_histogram_qparams_args(
    const char* op,
    const at::Tensor& histogram,
    const at::Tensor& hist_min,
    const at::Tensor& hist_max,
    double percentile,
    int64_t quant_min,
    int64_t quant_max);

} // namespace q8::detail

namespace q8::detail {

// The reductions of q8.embedding_bag (those of F.embedding_bag).
enum class EmbeddingBagMode { Sum, Mean, Max };

// The int8 table of q8.embedding / q8.embedding_bag: weight_int8 a defined 2-D
// int8 tensor [num_embeddings, embedding_dim]; weight_scale a 1-D float32 tensor
// [num_embeddings] on the same device.
void check_embedding_table(const char* op, const at::Tensor& weight_int8, const at::Tensor& weight_scale);

// The output dtype (float32 when not given): float32, float64, float16 or bfloat16.
at::ScalarType check_embedding_dtype(const char* op, std::optional<at::ScalarType> dtype);

// embedding: the table, int32 / int64 indices of any shape on its device, the dtype.
at::ScalarType check_embedding_args(const char* op, const at::Tensor& weight_int8, const at::Tensor& weight_scale,
                                    const at::Tensor& indices, std::optional<at::ScalarType> dtype);

// embedding_bag, as F.embedding_bag: int32 / int64 indices either 2-D [bags, n]
// without offsets or 1-D with 1-D int32 / int64 offsets (at least one when
// include_last_offset); mode "sum", "mean" or "max"; per_sample_weights only in
// sum mode, float32 / float64 / float16 / bfloat16 of indices' shape; padding_idx
// in [-num_embeddings, num_embeddings); the dtype; everything on the table's
// device. Offsets' values (offsets[0] == 0, non-decreasing, the last at most
// indices.numel()) and index values are checked by the CPU kernel, which reads
// them (CUDA: device-side asserts).
EmbeddingBagMode check_embedding_bag_args(
    const char* op,
    const at::Tensor& weight_int8,
    const at::Tensor& weight_scale,
    const at::Tensor& indices,
    const std::optional<at::Tensor>& offsets,
    c10::string_view mode,
    const std::optional<at::Tensor>& per_sample_weights,
    bool include_last_offset,
    std::optional<int64_t> padding_idx);

// The number of bags: indices.size(0) for 2-D indices, else offsets.size(0)
// (minus one with include_last_offset).
c10::SymInt embedding_bag_num_bags(const at::Tensor& indices, const std::optional<at::Tensor>& offsets,
                                   bool include_last_offset);

} // namespace q8::detail

namespace q8::detail {

// The activation modes of q8.conv2d.
enum class ConvMode { Dynamic, Static };

// Everything q8.conv2d checks before touching data, and the geometry it implies.
struct ConvArgs {
  ConvMode mode;
  int64_t n, c, h, w;         // input [N, C, H, W]
  int64_t oc, oh, ow;         // output [N, OC, OH, OW]
  int64_t kh, kw, sh, sw, ph, pw, dh, dw, groups;
  bool uint8_input;           // input holds uint8 codes (static mode)
  bool uint8_residual;        // residual holds uint8 codes (residual_scale / _zero_point given)
  bool uint8_output;          // output_scale / output_zero_point given
  // Added by the CPU implementation: the output size as SymInts (the int64 fields
  // above hold -1 for a symbolic size, e.g. in the meta kernel under dynamic shapes).
  c10::SymInt sym_oh, sym_ow;
};

// conv2d: input float32 / float16 / bfloat16 or uint8 (static mode only), 4-D
// [N, C, H, W] with C = in_channels_per_group * groups; weight_scale float32 [OC];
// bias [OC]; kernel_size, stride, dilation positive and padding non-negative (2
// values each); groups positive, dividing C and OC; activation "dynamic" or "static"
// (input_scale float32 and input_zero_point int32 / int64, one element each, given
// exactly in static mode); residual [N, OC, OH, OW] float or uint8 (then with
// residual_scale / residual_zero_point); clamp_min <= clamp_max, not NaN;
// output_scale / output_zero_point both or neither; everything on input's device.
// packed_weight's container only (its header is checked by the device kernel).
ConvArgs check_conv2d_args(const char* op, const at::Tensor& input, const at::Tensor& packed_weight,
                           const at::Tensor& weight_scale, const std::optional<at::Tensor>& bias,
                           at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation, int64_t groups, c10::string_view activation,
                           const std::optional<at::Tensor>& input_scale,
                           const std::optional<at::Tensor>& input_zero_point,
                           const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& residual_scale,
                           const std::optional<at::Tensor>& residual_zero_point, std::optional<double> clamp_min,
                           std::optional<double> clamp_max, const std::optional<at::Tensor>& output_scale,
                           const std::optional<at::Tensor>& output_zero_point);

// pack_conv_weight: int8 [OC, C / groups, KH, KW], groups >= 1 dividing OC, sizes
// within the packed format's limits.
void check_pack_conv_weight_args(const char* op, const at::Tensor& weight_int8, int64_t groups);

// max_pool2d over uint8 codes: input uint8 4-D [N, C, H, W] (any layout); kernel_size
// and dilation positive, stride positive or empty (= kernel_size), padding
// non-negative and at most half the kernel (2 values each); the output size as
// torch's max_pool2d (ceil_mode: rounded up, but the last window starts inside the
// input or its left padding), at least 1.
struct PoolArgs {
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  c10::SymInt oh, ow;
};
PoolArgs check_max_pool2d_args(const char* op, const at::Tensor& input, at::IntArrayRef kernel_size,
                               at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                               bool ceil_mode);

// unpack_conv_weight: the container (1-D uint8) and the sizes (non-negative, groups
// dividing out_channels).
void check_unpack_conv_weight_args(const char* op, const at::Tensor& packed_weight, const c10::SymInt& out_channels,
                                   const c10::SymInt& in_channels_per_group, at::IntArrayRef kernel_size,
                                   int64_t groups);

} // namespace q8::detail
