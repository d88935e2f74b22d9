#include "checks.h"
#include "packed_weight.h"

#include <cfloat>
#include <cmath>

#include <ATen/ATen.h>

namespace q8::detail {

void check_float_input(const char* op, const at::Tensor& input) {
  TORCH_CHECK(input.defined(), "q8.", op, ": input must be a defined tensor");
  const auto dt = input.scalar_type();
  TORCH_CHECK(
      dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16,
      "q8.", op, ": input must be float32, float16 or bfloat16, got ", dt);
}

void check_quant_range(const char* op, int64_t quant_min, int64_t quant_max) {
  TORCH_CHECK(
      quant_min < quant_max,
      "q8.", op, ": quant_min must be less than quant_max, got quant_min=", quant_min,
      " and quant_max=", quant_max);
  TORCH_CHECK(
      quant_min >= kMinQuant && quant_max <= kMaxQuant,
      "q8.", op, ": [quant_min, quant_max] must lie inside the 16-bit range [", kMinQuant, ", ",
      kMaxQuant, "], got [", quant_min, ", ", quant_max, "]");
}

void check_quant_range_fits(const char* op, int64_t quant_min, int64_t quant_max, at::ScalarType dtype) {
  int64_t lo = 0;
  int64_t hi = 0;
  switch (dtype) {
    case at::kChar:
      lo = -128;
      hi = 127;
      break;
    case at::kByte:
      lo = 0;
      hi = 255;
      break;
    case at::kInt:
      lo = std::numeric_limits<int32_t>::min();
      hi = std::numeric_limits<int32_t>::max();
      break;
    default:
      TORCH_CHECK(false, "q8.", op, ": dtype must be torch.int8, torch.uint8 or torch.int32, got ", dtype);
  }
  TORCH_CHECK(
      quant_min >= lo && quant_max <= hi,
      "q8.", op, ": [quant_min, quant_max] = [", quant_min, ", ", quant_max, "] does not fit in dtype ",
      dtype, " (range [", lo, ", ", hi, "])");
}

std::optional<int64_t> check_axis(const char* op, const at::Tensor& input, std::optional<int64_t> axis) {
  if (!axis.has_value()) {
    return std::nullopt;
  }
  const int64_t dim = input.dim();
  TORCH_CHECK(
      dim > 0, "q8.", op, ": axis must be None for a 0-dim input (per-channel needs a dimension), got axis=",
      *axis);
  TORCH_CHECK(
      *axis >= -dim && *axis < dim,
      "q8.", op, ": axis must be in [", -dim, ", ", dim - 1, "] for a ", dim, "-dim input, got ", *axis);
  return *axis < 0 ? *axis + dim : *axis;
}

void check_same_device(const char* op, const at::Tensor& reference, const char* ref_name,
                       const at::Tensor& other, const char* other_name) {
  TORCH_CHECK(
      other.device() == reference.device(),
      "q8.", op, ": ", other_name, " must be on the same device as ", ref_name, " (", reference.device(),
      "), got ", other.device());
}

void check_qparams(
    const char* op,
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    std::optional<int64_t> axis) {
  TORCH_CHECK(scale.defined(), "q8.", op, ": scale must be a defined tensor");
  TORCH_CHECK(zero_point.defined(), "q8.", op, ": zero_point must be a defined tensor");
  TORCH_CHECK(
      scale.scalar_type() == at::kFloat, "q8.", op, ": scale must be float32, got ", scale.scalar_type());
  const auto zdt = zero_point.scalar_type();
  TORCH_CHECK(
      zdt == at::kInt || zdt == at::kLong || zdt == at::kFloat,
      "q8.", op, ": zero_point must be int32, int64 or float32, got ", zdt);
  check_same_device(op, input, "input", scale, "scale");
  check_same_device(op, input, "input", zero_point, "zero_point");
  if (!axis.has_value()) {
    TORCH_CHECK(
        scale.sym_numel() == 1, "q8.", op, ": scale must have exactly one element per tensor, got shape ",
        scale.sym_sizes());
    TORCH_CHECK(
        zero_point.sym_numel() == 1,
        "q8.", op, ": zero_point must have exactly one element per tensor, got shape ", zero_point.sym_sizes());
  } else {
    const auto channels = input.sym_size(*axis);
    TORCH_CHECK(
        scale.dim() == 1 && scale.sym_size(0) == channels,
        "q8.", op, ": scale must be 1-D with input.size(axis) = ", channels, " elements (axis ", *axis,
        "), got shape ", scale.sym_sizes());
    TORCH_CHECK(
        zero_point.dim() == 1 && zero_point.sym_size(0) == channels,
        "q8.", op, ": zero_point must be 1-D with input.size(axis) = ", channels, " elements (axis ", *axis,
        "), got shape ", zero_point.sym_sizes());
  }
}

void check_scale_values(const char* op, const at::Tensor& scale) {
  TORCH_INTERNAL_ASSERT(scale.device().is_cpu() && scale.scalar_type() == at::kFloat);
  const auto s = scale.contiguous();
  const float* p = s.const_data_ptr<float>();
  const int64_t n = s.numel();
  auto where = [n](int64_t i) { return n > 1 ? " at channel " + std::to_string(i) : std::string(); };
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(std::isfinite(p[i]) && p[i] > 0.0f, "q8.", op, ": scale must be finite and > 0, got ", p[i],
                where(i));
    // A subnormal scale has no finite float32 reciprocal: 0 * (1 / scale) would be NaN.
    TORCH_CHECK(p[i] >= FLT_MIN, "q8.", op, ": scale must be at least ", FLT_MIN,
                " (the smallest normal float32, so that 1 / scale is finite), got ", p[i], where(i));
  }
}

void check_zero_point_values(const char* op, const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max) {
  TORCH_INTERNAL_ASSERT(zero_point.device().is_cpu());
  const auto z = zero_point.contiguous();
  const int64_t n = z.numel();
  auto where = [n](int64_t i) { return n > 1 ? " at channel " + std::to_string(i) : std::string(); };
  if (z.scalar_type() == at::kFloat) {
    const float* p = z.const_data_ptr<float>();
    for (int64_t i = 0; i < n; ++i) {
      TORCH_CHECK(std::isfinite(p[i]), "q8.", op, ": zero_point must be finite, got ", p[i], where(i));
    }
    return;
  }
  auto check = [&](const auto* p) {
    for (int64_t i = 0; i < n; ++i) {
      TORCH_CHECK(
          p[i] >= quant_min && p[i] <= quant_max,
          "q8.", op, ": zero_point must lie in [quant_min, quant_max] = [", quant_min, ", ", quant_max, "], got ",
          static_cast<int64_t>(p[i]), where(i));
    }
  };
  if (z.scalar_type() == at::kInt) {
    check(z.const_data_ptr<int32_t>());
  } else {
    TORCH_INTERNAL_ASSERT(z.scalar_type() == at::kLong);
    check(z.const_data_ptr<int64_t>());
  }
}

} // namespace q8::detail

namespace q8::detail {

std::optional<int64_t> check_fake_quantize_args(
    const char* op,
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    std::optional<int64_t> axis,
    int64_t quant_min,
    int64_t quant_max) {
  check_float_input(op, input);
  check_quant_range(op, quant_min, quant_max);
  const auto wrapped = check_axis(op, input, axis);
  check_qparams(op, input, scale, zero_point, wrapped);
  return wrapped;
}

} // namespace q8::detail

namespace q8::detail {

std::pair<int64_t, int64_t> dequantize_zero_point_range(at::ScalarType qdtype) {
  switch (qdtype) {
    case at::kChar:
      return {-128, 127};
    case at::kByte:
      return {0, 255};
    default:
      return {kMinQuant, kMaxQuant};
  }
}

std::optional<int64_t> check_dequantize_args(
    const char* op,
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    std::optional<int64_t> axis,
    at::ScalarType dtype) {
  TORCH_CHECK(input.defined(), "q8.", op, ": input must be a defined tensor");
  const auto qdt = input.scalar_type();
  TORCH_CHECK(qdt == at::kChar || qdt == at::kByte || qdt == at::kInt,
              "q8.", op, ": input must be int8, uint8 or int32, got ", qdt);
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
              "q8.", op, ": dtype must be float32, float16 or bfloat16, got ", dtype);
  const auto wrapped = check_axis(op, input, axis);
  check_qparams(op, input, scale, zero_point, wrapped);
  return wrapped;
}

} // namespace q8::detail

namespace q8::detail {

std::optional<int64_t> check_choose_qparams_args(
    const char* op, const at::Tensor& input, int64_t quant_min, int64_t quant_max, std::optional<int64_t> axis) {
  check_float_input(op, input);
  check_quant_range(op, quant_min, quant_max);
  return check_axis(op, input, axis);
}

void check_mask_backward_args(const char* op, const at::Tensor& grad, const at::Tensor& mask) {
  check_float_input(op, grad);
  TORCH_CHECK(mask.scalar_type() == at::kBool, "q8.", op, ": mask must be bool, got ", mask.scalar_type());
  TORCH_CHECK(grad.sym_sizes() == mask.sym_sizes(), "q8.", op, ": grad and mask must have the same shape, got ",
              grad.sym_sizes(), " and ", mask.sym_sizes());
  check_same_device(op, grad, "grad", mask, "mask");
}

std::optional<int64_t> check_learnable_backward_args(
    const char* op,
    const at::Tensor& grad,
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    std::optional<int64_t> axis,
    int64_t quant_min,
    int64_t quant_max) {
  const auto wrapped = check_fake_quantize_args(op, input, scale, zero_point, axis, quant_min, quant_max);
  TORCH_CHECK(grad.scalar_type() == input.scalar_type(), "q8.", op, ": grad must have input's dtype ",
              input.scalar_type(), ", got ", grad.scalar_type());
  TORCH_CHECK(grad.sym_sizes() == input.sym_sizes(), "q8.", op, ": grad must have input's shape ",
              input.sym_sizes(), ", got ", grad.sym_sizes());
  check_same_device(op, input, "input", grad, "grad");
  return wrapped;
}

} // namespace q8::detail

namespace q8::detail {

void check_quantize_weight_args(const char* op, const at::Tensor& weight) {
  TORCH_CHECK(weight.defined(), "q8.", op, ": weight must be a defined tensor");
  const auto dt = weight.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16,
              "q8.", op, ": weight must be float32, float16 or bfloat16, got ", dt);
  TORCH_CHECK(weight.dim() == 2, "q8.", op, ": weight must be 2-D [out_features, in_features], got shape ",
              weight.sym_sizes());
}

void check_pack_weight_args(const char* op, const at::Tensor& weight_int8) {
  TORCH_CHECK(weight_int8.defined(), "q8.", op, ": weight_int8 must be a defined tensor");
  TORCH_CHECK(weight_int8.scalar_type() == at::kChar, "q8.", op, ": weight_int8 must be int8, got ",
              weight_int8.scalar_type());
  TORCH_CHECK(weight_int8.dim() == 2, "q8.", op, ": weight_int8 must be 2-D [out_features, in_features], got shape ",
              weight_int8.sym_sizes());
  TORCH_CHECK(weight_int8.sym_size(1) <= kMaxPackedK, "q8.", op, ": in_features must be at most ", kMaxPackedK,
              " (row sums are int32), got ", weight_int8.sym_size(1));
  TORCH_CHECK(weight_int8.sym_size(0) < (int64_t{1} << 31), "q8.", op, ": out_features must be below 2^31, got ",
              weight_int8.sym_size(0));
}

void check_packed_container(const char* op, const at::Tensor& packed_weight) {
  TORCH_CHECK(packed_weight.defined(), "q8.", op, ": packed_weight must be a defined tensor");
  TORCH_CHECK(packed_weight.scalar_type() == at::kByte && packed_weight.dim() == 1,
              "q8.", op, ": packed_weight must be a 1-D uint8 tensor made by q8.pack_weight, got ",
              packed_weight.scalar_type(), " of shape ", packed_weight.sym_sizes());
}

void check_int8_mm_args(const char* op, const at::Tensor& input, const at::Tensor& packed_weight,
                        const c10::SymInt& out_features, const std::optional<at::Tensor>& input_zero_point) {
  TORCH_CHECK(input.defined(), "q8.", op, ": input must be a defined tensor");
  TORCH_CHECK(input.scalar_type() == at::kByte, "q8.", op, ": input must be uint8, got ", input.scalar_type());
  TORCH_CHECK(input.dim() == 2, "q8.", op, ": input must be 2-D [M, K], got shape ", input.sym_sizes());
  check_packed_container(op, packed_weight);
  check_same_device(op, input, "input", packed_weight, "packed_weight");
  TORCH_CHECK(out_features >= 0, "q8.", op, ": out_features must be >= 0, got ", out_features);
  if (input_zero_point.has_value()) {
    const auto& z = *input_zero_point;
    TORCH_CHECK(z.scalar_type() == at::kInt || z.scalar_type() == at::kLong,
                "q8.", op, ": input_zero_point must be int32 or int64, got ", z.scalar_type());
    check_same_device(op, input, "input", z, "input_zero_point");
    TORCH_CHECK(z.sym_numel() == 1 || (z.dim() == 1 && z.sym_size(0) == input.sym_size(0)),
                "q8.", op, ": input_zero_point must have one element or one per row of input (",
                input.sym_size(0), "), got shape ", z.sym_sizes());
  }
}

void check_clamp(const char* op, std::optional<double> clamp_min, std::optional<double> clamp_max) {
  TORCH_CHECK(!clamp_min.has_value() || !std::isnan(*clamp_min), "q8.", op, ": clamp_min must not be NaN");
  TORCH_CHECK(!clamp_max.has_value() || !std::isnan(*clamp_max), "q8.", op, ": clamp_max must not be NaN");
  TORCH_CHECK(!clamp_min.has_value() || !clamp_max.has_value() || *clamp_min <= *clamp_max, "q8.", op,
              ": clamp_min must be <= clamp_max, got ", *clamp_min, " and ", *clamp_max);
}

LinearMode check_linear_args(const char* op, const at::Tensor& input, const at::Tensor& packed_weight,
                             const at::Tensor& weight_scale, const std::optional<at::Tensor>& bias,
                             c10::string_view activation, const std::optional<at::Tensor>& input_scale,
                             const std::optional<at::Tensor>& input_zero_point, std::optional<double> clamp_min,
                             std::optional<double> clamp_max) {
  check_float_input(op, input);
  TORCH_CHECK(input.dim() >= 1, "q8.", op, ": input must have at least 1 dimension [..., in_features], got a 0-dim tensor");
  check_packed_container(op, packed_weight);
  check_same_device(op, input, "input", packed_weight, "packed_weight");
  TORCH_CHECK(weight_scale.defined(), "q8.", op, ": weight_scale must be a defined tensor");
  TORCH_CHECK(weight_scale.scalar_type() == at::kFloat && weight_scale.dim() == 1,
              "q8.", op, ": weight_scale must be a 1-D float32 tensor [out_features], got ",
              weight_scale.scalar_type(), " of shape ", weight_scale.sym_sizes());
  check_same_device(op, input, "input", weight_scale, "weight_scale");
  if (bias.has_value()) {
    const auto& b = *bias;
    TORCH_CHECK(b.scalar_type() == at::kFloat || b.scalar_type() == input.scalar_type(),
                "q8.", op, ": bias must be float32 or the input's dtype (", input.scalar_type(), "), got ",
                b.scalar_type());
    TORCH_CHECK(b.dim() == 1 && b.sym_size(0) == weight_scale.sym_size(0),
                "q8.", op, ": bias must be 1-D with out_features = ", weight_scale.sym_size(0),
                " elements, got shape ", b.sym_sizes());
    check_same_device(op, input, "input", b, "bias");
  }
  LinearMode mode;
  if (activation == "dynamic") {
    mode = LinearMode::Dynamic;
  } else if (activation == "static") {
    mode = LinearMode::Static;
  } else if (activation == "weight_only") {
    mode = LinearMode::WeightOnly;
  } else {
    TORCH_CHECK(false, "q8.", op, ": activation must be 'dynamic', 'static' or 'weight_only', got '",
                std::string(activation), "'");
  }
  if (mode == LinearMode::Static) {
    TORCH_CHECK(input_scale.has_value() && input_zero_point.has_value(),
                "q8.", op, ": activation='static' needs the calibrated input_scale and input_zero_point, got ",
                input_scale.has_value() ? "input_scale only" : (input_zero_point.has_value() ? "input_zero_point only" : "neither"));
    const auto& s = *input_scale;
    const auto& z = *input_zero_point;
    TORCH_CHECK(s.scalar_type() == at::kFloat && s.sym_numel() == 1,
                "q8.", op, ": input_scale must be a float32 tensor with one element, got ", s.scalar_type(),
                " of shape ", s.sym_sizes());
    TORCH_CHECK((z.scalar_type() == at::kInt || z.scalar_type() == at::kLong) && z.sym_numel() == 1,
                "q8.", op, ": input_zero_point must be an int32 or int64 tensor with one element, got ",
                z.scalar_type(), " of shape ", z.sym_sizes());
    check_same_device(op, input, "input", s, "input_scale");
    check_same_device(op, input, "input", z, "input_zero_point");
  } else {
    TORCH_CHECK(!input_scale.has_value() && !input_zero_point.has_value(),
                "q8.", op, ": input_scale and input_zero_point are only used with activation='static', got them with '",
                std::string(activation), "'");
  }
  check_clamp(op, clamp_min, clamp_max);
  return mode;
}

void check_linear_grad_input_args(const char* op, const at::Tensor& grad_output, const at::Tensor& packed_weight,
                                  const at::Tensor& weight_scale, const c10::SymInt& in_features) {
  TORCH_CHECK(grad_output.defined(), "q8.", op, ": grad_output must be a defined tensor");
  const auto dt = grad_output.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16,
              "q8.", op, ": grad_output must be float32, float16 or bfloat16, got ", dt);
  TORCH_CHECK(grad_output.dim() >= 1,
              "q8.", op, ": grad_output must have at least 1 dimension [..., out_features], got a 0-dim tensor");
  check_packed_container(op, packed_weight);
  check_same_device(op, grad_output, "grad_output", packed_weight, "packed_weight");
  TORCH_CHECK(weight_scale.defined(), "q8.", op, ": weight_scale must be a defined tensor");
  TORCH_CHECK(weight_scale.scalar_type() == at::kFloat && weight_scale.dim() == 1,
              "q8.", op, ": weight_scale must be a 1-D float32 tensor [out_features], got ",
              weight_scale.scalar_type(), " of shape ", weight_scale.sym_sizes());
  check_same_device(op, grad_output, "grad_output", weight_scale, "weight_scale");
  TORCH_CHECK(grad_output.sym_size(-1) == weight_scale.sym_size(0),
              "q8.", op, ": grad_output.size(-1) must be out_features = weight_scale.size(0) = ",
              weight_scale.sym_size(0), ", got ", grad_output.sym_size(-1));
  TORCH_CHECK(in_features >= 0, "q8.", op, ": in_features must be >= 0, got ", in_features);
}

} // namespace q8::detail

namespace q8::detail {

namespace {

bool is_flag_dtype(at::ScalarType t) {
  switch (t) {
    case at::kBool:
    case at::kByte:
    case at::kChar:
    case at::kShort:
    case at::kInt:
    case at::kLong:
    case at::kHalf:
    case at::kBFloat16:
    case at::kFloat:
    case at::kDouble:
      return true;
    default:
      return false;
  }
}

void check_flag(const char* op, const at::Tensor& input, const at::Tensor& flag, const char* name) {
  TORCH_CHECK(flag.defined(), "q8.", op, ": ", name, " must be a defined tensor");
  TORCH_CHECK(is_flag_dtype(flag.scalar_type()), "q8.", op, ": ", name,
              " must be a bool, integer or floating-point tensor, got ", flag.scalar_type());
  TORCH_CHECK(flag.sym_numel() == 1, "q8.", op, ": ", name, " must have exactly one element, got shape ",
              flag.sym_sizes());
  check_same_device(op, input, "input", flag, name);
}

void check_state(const char* op, const at::Tensor& input, const at::Tensor& t, const char* name,
                 at::ScalarType dtype, const char* dtype_name, std::optional<int64_t> axis) {
  TORCH_CHECK(t.defined(), "q8.", op, ": ", name, " must be a defined tensor");
  TORCH_CHECK(t.scalar_type() == dtype, "q8.", op, ": ", name, " must be ", dtype_name, ", got ", t.scalar_type());
  check_same_device(op, input, "input", t, name);
  if (!axis.has_value()) {
    TORCH_CHECK(t.sym_numel() == 1, "q8.", op, ": ", name, " must have exactly one element per tensor, got shape ",
                t.sym_sizes());
  } else {
    const auto channels = input.sym_size(*axis);
    TORCH_CHECK(t.dim() == 1 && t.sym_size(0) == channels, "q8.", op, ": ", name,
                " must be 1-D with input.size(axis) = ", channels, " elements (axis ", *axis, "), got shape ",
                t.sym_sizes());
    // The op writes one element per channel: an expanded view (stride 0, e.g.
    // torch.full((1,), inf).expand(C)) would have every channel update the same
    // word (a data race on CUDA, the last channel wins on the CPU).
    TORCH_CHECK(t.sym_size(0) <= 1 || t.sym_stride(0) != 0, "q8.", op, ": ", name,
                " must have its own element for every channel, got an expanded view (stride 0) of shape ",
                t.sym_sizes(), ": pass a tensor with storage per channel (e.g. .clone() the expanded one)");
  }
}

} // namespace

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
    std::optional<int64_t> axis) {
  check_float_input(op, input);
  check_quant_range(op, quant_min, quant_max);
  // (The update runs in float32: a constant that rounds to 0 there is refused too.)
  TORCH_CHECK(averaging_constant <= 1.0 && static_cast<float>(averaging_constant) > 0.f,
              "q8.", op, ": averaging_constant must be in (0, 1], got ", averaging_constant);
  const auto wrapped = check_axis(op, input, axis);
  check_flag(op, input, observer_on, "observer_on");
  check_flag(op, input, fake_quant_on, "fake_quant_on");
  check_state(op, input, running_min, "running_min", at::kFloat, "float32", wrapped);
  check_state(op, input, running_max, "running_max", at::kFloat, "float32", wrapped);
  check_state(op, input, scale, "scale", at::kFloat, "float32", wrapped);
  check_state(op, input, zero_point, "zero_point", at::kInt, "int32", wrapped);
  return wrapped;
}

} // namespace q8::detail

namespace q8::detail {
namespace {

void check_histogram_state(const char* op, const at::Tensor& reference, const char* ref_name,
                           const at::Tensor& histogram, const at::Tensor& hist_min, const at::Tensor& hist_max) {
  TORCH_CHECK(histogram.defined(), "q8.", op, ": histogram must be a defined tensor");
  TORCH_CHECK(histogram.scalar_type() == at::kDouble, "q8.", op, ": histogram must be float64, got ",
              histogram.scalar_type());
  TORCH_CHECK(histogram.dim() == 1 && histogram.sym_size(0) >= 1, "q8.", op,
              ": histogram must be 1-D with at least one bin, got shape ", histogram.sym_sizes());
  TORCH_CHECK(histogram.is_contiguous(), "q8.", op, ": histogram must be contiguous, got strides ",
              histogram.sym_strides());
  check_same_device(op, reference, ref_name, histogram, "histogram");
  for (const auto& [t, name] : {std::pair<const at::Tensor*, const char*>{&hist_min, "hist_min"},
                                std::pair<const at::Tensor*, const char*>{&hist_max, "hist_max"}}) {
    TORCH_CHECK(t->defined(), "q8.", op, ": ", name, " must be a defined tensor");
    TORCH_CHECK(t->scalar_type() == at::kFloat, "q8.", op, ": ", name, " must be float32, got ", t->scalar_type());
    TORCH_CHECK(t->sym_numel() == 1, "q8.", op, ": ", name, " must have exactly one element, got shape ",
                t->sym_sizes());
    check_same_device(op, reference, ref_name, *t, name);
  }
}

} // namespace

void check_histogram_observe_args(
    const char* op,
    const at::Tensor& input,
    const at::Tensor& observer_on,
    const at::Tensor& histogram,
    const at::Tensor& hist_min,
    const at::Tensor& hist_max,
    const std::optional<at::Tensor>& input_range) {
  check_float_input(op, input);
  check_flag(op, input, observer_on, "observer_on");
  check_histogram_state(op, input, "input", histogram, hist_min, hist_max);
  if (input_range.has_value() && input_range->defined()) {
    const auto& r = *input_range;
    TORCH_CHECK(r.scalar_type() == at::kFloat, "q8.", op, ": input_range must be float32, got ", r.scalar_type());
    TORCH_CHECK(r.sym_numel() == 1 || r.sym_numel() == 2, "q8.", op,
                ": input_range must have one or two elements ([lo, hi]), got shape ", r.sym_sizes());
    check_same_device(op, input, "input", r, "input_range");
  }
}

void check_histogram_qparams_args(
    const char* op,
    const at::Tensor& histogram,
    const at::Tensor& hist_min,
    const at::Tensor& hist_max,
    double percentile,
    int64_t quant_min,
    int64_t quant_max) {
  TORCH_CHECK(histogram.defined(), "q8.", op, ": histogram must be a defined tensor");
  check_histogram_state(op, histogram, "histogram", histogram, hist_min, hist_max);
  TORCH_CHECK(percentile > 0.0 && percentile <= 100.0, "q8.", op, ": percentile must be in (0, 100], got ",
              percentile);
  check_quant_range(op, quant_min, quant_max);
}

} // namespace q8::detail

namespace q8::detail {

void check_embedding_table(const char* op, const at::Tensor& weight_int8, const at::Tensor& weight_scale) {
  TORCH_CHECK(weight_int8.defined(), "q8.", op, ": weight_int8 must be a defined tensor");
  TORCH_CHECK(weight_int8.scalar_type() == at::kChar && weight_int8.dim() == 2,
              "q8.", op, ": weight_int8 must be a 2-D int8 tensor [num_embeddings, embedding_dim], got ",
              weight_int8.scalar_type(), " of shape ", weight_int8.sym_sizes());
  TORCH_CHECK(weight_scale.defined(), "q8.", op, ": weight_scale must be a defined tensor");
  TORCH_CHECK(weight_scale.scalar_type() == at::kFloat && weight_scale.dim() == 1 &&
                  weight_scale.sym_size(0) == weight_int8.sym_size(0),
              "q8.", op, ": weight_scale must be a 1-D float32 tensor [num_embeddings] = [", weight_int8.sym_size(0),
              "] (one scale per row of weight_int8), got ", weight_scale.scalar_type(), " of shape ",
              weight_scale.sym_sizes());
  check_same_device(op, weight_int8, "weight_int8", weight_scale, "weight_scale");
}

at::ScalarType check_embedding_dtype(const char* op, std::optional<at::ScalarType> dtype) {
  const auto dt = dtype.value_or(at::kFloat);
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
              "q8.", op, ": dtype must be torch.float32, torch.float64, torch.float16 or torch.bfloat16, got ", dt);
  return dt;
}

namespace {
void check_index_tensor(const char* op, const at::Tensor& t, const char* name, const at::Tensor& weight_int8) {
  TORCH_CHECK(t.defined(), "q8.", op, ": ", name, " must be a defined tensor");
  TORCH_CHECK(t.scalar_type() == at::kLong || t.scalar_type() == at::kInt,
              "q8.", op, ": ", name, " must be int64 or int32, got ", t.scalar_type());
  check_same_device(op, weight_int8, "weight_int8", t, name);
}
} // namespace

at::ScalarType check_embedding_args(const char* op, const at::Tensor& weight_int8, const at::Tensor& weight_scale,
                                    const at::Tensor& indices, std::optional<at::ScalarType> dtype) {
  check_embedding_table(op, weight_int8, weight_scale);
  check_index_tensor(op, indices, "indices", weight_int8);
  return check_embedding_dtype(op, dtype);
}

EmbeddingBagMode check_embedding_bag_args(
    const char* op,
    const at::Tensor& weight_int8,
    const at::Tensor& weight_scale,
    const at::Tensor& indices,
    const std::optional<at::Tensor>& offsets,
    c10::string_view mode,
    const std::optional<at::Tensor>& per_sample_weights,
    bool include_last_offset,
    std::optional<int64_t> padding_idx) {
  check_embedding_table(op, weight_int8, weight_scale);
  check_index_tensor(op, indices, "indices", weight_int8);
  EmbeddingBagMode m;
  if (mode == "sum") {
    m = EmbeddingBagMode::Sum;
  } else if (mode == "mean") {
    m = EmbeddingBagMode::Mean;
  } else if (mode == "max") {
    m = EmbeddingBagMode::Max;
  } else {
    TORCH_CHECK(false, "q8.", op, ": mode must be 'sum', 'mean' or 'max', got '", std::string(mode), "'");
  }
  if (indices.dim() == 2) {
    TORCH_CHECK(!offsets.has_value(),
                "q8.", op, ": offsets must be None when indices is 2-D (each row of indices is one bag), got a tensor "
                "of shape ", offsets->sym_sizes());
  } else {
    TORCH_CHECK(indices.dim() == 1, "q8.", op,
                ": indices must be 1-D (with offsets) or 2-D [bags, indices per bag], got shape ", indices.sym_sizes());
    TORCH_CHECK(offsets.has_value(), "q8.", op,
                ": offsets must be given when indices is 1-D (the start of each bag in indices)");
    check_index_tensor(op, *offsets, "offsets", weight_int8);
    TORCH_CHECK(offsets->dim() == 1, "q8.", op, ": offsets must be 1-D, got shape ", offsets->sym_sizes());
    TORCH_CHECK(!include_last_offset || offsets->sym_size(0) >= 1, "q8.", op,
                ": offsets must hold at least one element with include_last_offset=True (the end of the last bag), "
                "got none");
  }
  if (per_sample_weights.has_value()) {
    const auto& w = *per_sample_weights;
    TORCH_CHECK(m == EmbeddingBagMode::Sum, "q8.", op,
                ": per_sample_weights is only supported with mode='sum' (as F.embedding_bag), got mode='",
                std::string(mode), "'");
    const auto dt = w.scalar_type();
    TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
                "q8.", op, ": per_sample_weights must be float32, float64, float16 or bfloat16, got ", dt);
    TORCH_CHECK(w.sym_sizes() == indices.sym_sizes(), "q8.", op,
                ": per_sample_weights must have the shape of indices (", indices.sym_sizes(), "), got ",
                w.sym_sizes());
    check_same_device(op, weight_int8, "weight_int8", w, "per_sample_weights");
  }
  if (padding_idx.has_value()) {
    const auto n = weight_int8.sym_size(0);
    TORCH_CHECK(-n <= *padding_idx && n > *padding_idx, "q8.", op,
                ": padding_idx must be in [-num_embeddings, num_embeddings) = [", -n, ", ", n, "), got ",
                *padding_idx);
  }
  return m;
}

c10::SymInt embedding_bag_num_bags(const at::Tensor& indices, const std::optional<at::Tensor>& offsets,
                                   bool include_last_offset) {
  if (indices.dim() == 2) {
    return indices.sym_size(0);
  }
  TORCH_INTERNAL_ASSERT(offsets.has_value());
  return include_last_offset ? offsets->sym_size(0) - 1 : offsets->sym_size(0);
}

} // namespace q8::detail

// ---------------------------------------------------------------------------
// Int8 convolution
// ---------------------------------------------------------------------------
namespace q8::detail {

namespace {

int64_t sym_hint(const c10::SymInt& s) {
  // A concrete value, or -1 for a symbolic size (the meta kernel then uses ConvArgs' sym_* fields).
  return s.maybe_as_int().value_or(-1);
}

void check_pair(const char* op, at::IntArrayRef v, const char* name, int64_t min_value) {
  TORCH_CHECK(v.size() == 2, "q8.", op, ": ", name, " must have 2 values (height, width), got ", v);
  TORCH_CHECK(v[0] >= min_value && v[1] >= min_value, "q8.", op, ": ", name, " must be ",
              min_value == 0 ? "non-negative" : "positive", ", got ", v);
}

void check_one_element(const char* op, const at::Tensor& input, const at::Tensor& t, const char* name, bool is_scale) {
  if (is_scale) {
    TORCH_CHECK(t.scalar_type() == at::kFloat && t.sym_numel() == 1, "q8.", op, ": ", name,
                " must be a float32 tensor with one element, got ", t.scalar_type(), " of shape ", t.sym_sizes());
  } else {
    TORCH_CHECK((t.scalar_type() == at::kInt || t.scalar_type() == at::kLong) && t.sym_numel() == 1, "q8.", op,
                ": ", name, " must be an int32 or int64 tensor with one element, got ", t.scalar_type(), " of shape ",
                t.sym_sizes());
  }
  check_same_device(op, input, "input", t, name);
}

void check_conv_kernel_size(const char* op, at::IntArrayRef kernel_size) {
  check_pair(op, kernel_size, "kernel_size", 1);
  TORCH_CHECK(kernel_size[0] <= 65535 && kernel_size[1] <= 65535, "q8.", op,
              ": kernel_size must be at most 65535 per dimension, got ", kernel_size);
}

} // namespace

ConvArgs check_conv2d_args(const char* op, const at::Tensor& input, const at::Tensor& packed_weight,
                           const at::Tensor& weight_scale, const std::optional<at::Tensor>& bias,
                           at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation, int64_t groups, c10::string_view activation,
                           const std::optional<at::Tensor>& input_scale,
                           const std::optional<at::Tensor>& input_zero_point,
                           const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& residual_scale,
                           const std::optional<at::Tensor>& residual_zero_point, std::optional<double> clamp_min,
                           std::optional<double> clamp_max, const std::optional<at::Tensor>& output_scale,
                           const std::optional<at::Tensor>& output_zero_point) {
  ConvArgs a{};
  TORCH_CHECK(input.defined(), "q8.", op, ": input must be a defined tensor");
  const auto dt = input.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kByte, "q8.", op,
              ": input must be float32, float16, bfloat16 or uint8 (codes, activation='static'), got ", dt);
  TORCH_CHECK(input.dim() == 4, "q8.", op, ": input must be 4-D [N, C, H, W], got shape ", input.sym_sizes());
  check_packed_container(op, packed_weight);
  check_same_device(op, input, "input", packed_weight, "packed_weight");
  TORCH_CHECK(weight_scale.defined(), "q8.", op, ": weight_scale must be a defined tensor");
  TORCH_CHECK(weight_scale.scalar_type() == at::kFloat && weight_scale.dim() == 1, "q8.", op,
              ": weight_scale must be a 1-D float32 tensor [out_channels], got ", weight_scale.scalar_type(),
              " of shape ", weight_scale.sym_sizes());
  check_same_device(op, input, "input", weight_scale, "weight_scale");
  check_conv_kernel_size(op, kernel_size);
  check_pair(op, stride, "stride", 1);
  check_pair(op, padding, "padding", 0);
  check_pair(op, dilation, "dilation", 1);
  TORCH_CHECK(groups >= 1, "q8.", op, ": groups must be positive, got ", groups);
  const c10::SymInt C = input.sym_size(1);
  const c10::SymInt OC = weight_scale.sym_size(0);
  TORCH_CHECK(C % groups == 0, "q8.", op, ": input channels (input.size(1) = ", C, ") must be divisible by groups = ",
              groups);
  TORCH_CHECK(C >= groups, "q8.", op, ": input must have at least groups = ", groups,
              " channels (input.size(1)), got ", C);
  TORCH_CHECK(OC % groups == 0, "q8.", op, ": out_channels (weight_scale.size(0) = ", OC,
              ") must be divisible by groups = ", groups);
  if (bias.has_value()) {
    const auto& b = *bias;
    TORCH_CHECK(b.scalar_type() == at::kFloat || (dt != at::kByte && b.scalar_type() == dt), "q8.", op,
                ": bias must be float32 or the input's float dtype, got ", b.scalar_type());
    TORCH_CHECK(b.dim() == 1 && b.sym_size(0) == OC, "q8.", op, ": bias must be 1-D with out_channels = ", OC,
                " elements, got shape ", b.sym_sizes());
    check_same_device(op, input, "input", b, "bias");
  }
  if (activation == "dynamic") {
    a.mode = ConvMode::Dynamic;
  } else if (activation == "static") {
    a.mode = ConvMode::Static;
  } else {
    TORCH_CHECK(false, "q8.", op, ": activation must be 'dynamic' or 'static', got '", std::string(activation),
                "' (weight-only convolution is q8.nn.Int8Conv2d's dequantize + F.conv2d)");
  }
  a.uint8_input = dt == at::kByte;
  if (a.mode == ConvMode::Static) {
    TORCH_CHECK(input_scale.has_value() && input_zero_point.has_value(), "q8.", op,
                ": activation='static' needs the calibrated input_scale and input_zero_point, got ",
                input_scale.has_value() ? "input_scale only"
                                        : (input_zero_point.has_value() ? "input_zero_point only" : "neither"));
    check_one_element(op, input, *input_scale, "input_scale", true);
    check_one_element(op, input, *input_zero_point, "input_zero_point", false);
  } else {
    TORCH_CHECK(!a.uint8_input, "q8.", op,
                ": a uint8 input holds codes and needs activation='static' with input_scale and input_zero_point");
    TORCH_CHECK(!input_scale.has_value() && !input_zero_point.has_value(), "q8.", op,
                ": input_scale and input_zero_point are only used with activation='static', got them with '",
                std::string(activation), "'");
  }
  // Geometry (as torch: floor division of a non-negative numerator).
  const c10::SymInt H = input.sym_size(2), W = input.sym_size(3);
  const int64_t kh = kernel_size[0], kw = kernel_size[1];
  const c10::SymInt eff_h = H + 2 * padding[0] - dilation[0] * (kh - 1) - 1;
  const c10::SymInt eff_w = W + 2 * padding[1] - dilation[1] * (kw - 1) - 1;
  TORCH_CHECK(eff_h >= 0 && eff_w >= 0, "q8.", op, ": the padded input (", H, " x ", W, " + padding ", padding,
              ") is smaller than the dilated kernel (kernel_size ", kernel_size, ", dilation ", dilation, ")");
  const c10::SymInt OH = eff_h / stride[0] + 1;
  const c10::SymInt OW = eff_w / stride[1] + 1;
  if (residual.has_value()) {
    const auto& r = *residual;
    const auto rdt = r.scalar_type();
    TORCH_CHECK(rdt == at::kFloat || rdt == at::kHalf || rdt == at::kBFloat16 || rdt == at::kByte, "q8.", op,
                ": residual must be float32, float16, bfloat16 or uint8, got ", rdt);
    check_same_device(op, input, "input", r, "residual");
    const std::vector<c10::SymInt> want{input.sym_size(0), OC, OH, OW};
    TORCH_CHECK(r.dim() == 4 && r.sym_sizes() == c10::SymIntArrayRef(want), "q8.", op,
                ": residual must have the output's shape [N, OC, OH, OW] = ", c10::SymIntArrayRef(want), ", got ",
                r.sym_sizes());
    a.uint8_residual = rdt == at::kByte;
    if (a.uint8_residual) {
      TORCH_CHECK(residual_scale.has_value() && residual_zero_point.has_value(), "q8.", op,
                  ": a uint8 residual needs residual_scale and residual_zero_point");
    } else {
      TORCH_CHECK(!residual_scale.has_value() && !residual_zero_point.has_value(), "q8.", op,
                  ": residual_scale / residual_zero_point are only used with a uint8 residual, got a ", rdt,
                  " residual");
    }
  } else {
    TORCH_CHECK(!residual_scale.has_value() && !residual_zero_point.has_value(), "q8.", op,
                ": residual_scale / residual_zero_point given without a residual");
  }
  if (residual_scale.has_value()) {
    check_one_element(op, input, *residual_scale, "residual_scale", true);
  }
  if (residual_zero_point.has_value()) {
    check_one_element(op, input, *residual_zero_point, "residual_zero_point", false);
  }
  check_clamp(op, clamp_min, clamp_max);
  TORCH_CHECK(output_scale.has_value() == output_zero_point.has_value(), "q8.", op,
              ": output_scale and output_zero_point must be given together (uint8 output) or not at all, got ",
              output_scale.has_value() ? "output_scale only" : "output_zero_point only");
  a.uint8_output = output_scale.has_value();
  if (a.uint8_output) {
    check_one_element(op, input, *output_scale, "output_scale", true);
    check_one_element(op, input, *output_zero_point, "output_zero_point", false);
  }
  a.n = sym_hint(input.sym_size(0));
  a.c = sym_hint(C);
  a.h = sym_hint(H);
  a.w = sym_hint(W);
  a.oc = sym_hint(OC);
  a.oh = sym_hint(OH);
  a.ow = sym_hint(OW);
  a.kh = kh;
  a.kw = kw;
  a.sh = stride[0];
  a.sw = stride[1];
  a.ph = padding[0];
  a.pw = padding[1];
  a.dh = dilation[0];
  a.dw = dilation[1];
  a.groups = groups;
  a.sym_oh = OH;
  a.sym_ow = OW;
  return a;
}

PoolArgs check_max_pool2d_args(const char* op, const at::Tensor& input, at::IntArrayRef kernel_size,
                               at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                               bool ceil_mode) {
  TORCH_CHECK(input.defined(), "q8.", op, ": input must be a defined tensor");
  TORCH_CHECK(input.scalar_type() == at::kByte, "q8.", op,
              ": input must be uint8 (the codes of an int8 layer's output), got ", input.scalar_type(),
              " (pool float tensors with torch.nn.functional.max_pool2d)");
  TORCH_CHECK(input.dim() == 4, "q8.", op, ": input must be 4-D [N, C, H, W], got shape ", input.sym_sizes());
  check_conv_kernel_size(op, kernel_size);
  const at::IntArrayRef st = stride.empty() ? kernel_size : stride;
  check_pair(op, st, "stride", 1);
  check_pair(op, padding, "padding", 0);
  check_pair(op, dilation, "dilation", 1);
  TORCH_CHECK(padding[0] <= kernel_size[0] / 2 && padding[1] <= kernel_size[1] / 2, "q8.", op,
              ": padding must be at most half the kernel size, got padding ", padding, " for kernel_size ",
              kernel_size);
  PoolArgs a{kernel_size[0], kernel_size[1], st[0], st[1], padding[0], padding[1], dilation[0], dilation[1], {}, {}};
  const auto out_size = [&](const c10::SymInt& in, int64_t k, int64_t s, int64_t p, int64_t d) {
    const c10::SymInt num = in + 2 * p - d * (k - 1) - 1 + (ceil_mode ? s - 1 : 0);
    // (floor division, as torch's div_rtn: num may be negative)
    c10::SymInt o = (num >= 0 ? num / s : (num - (s - 1)) / s) + 1;
    if (ceil_mode && (o - 1) * s >= in + p) {
      o = o - 1;  // the last window must start inside the input or its left padding
    }
    return o;
  };
  const c10::SymInt H = input.sym_size(2), W = input.sym_size(3);
  a.oh = out_size(H, a.kh, a.sh, a.ph, a.dh);
  a.ow = out_size(W, a.kw, a.sw, a.pw, a.dw);
  TORCH_CHECK(a.oh >= 1 && a.ow >= 1, "q8.", op, ": the output would be ", a.oh, " x ", a.ow, " for an input of ", H,
              " x ", W, " (kernel_size ", kernel_size, ", stride ", st, ", padding ", padding, ", dilation ", dilation,
              "): the input is too small");
  return a;
}

void check_pack_conv_weight_args(const char* op, const at::Tensor& weight_int8, int64_t groups) {
  TORCH_CHECK(weight_int8.defined(), "q8.", op, ": weight_int8 must be a defined tensor");
  TORCH_CHECK(weight_int8.scalar_type() == at::kChar, "q8.", op, ": weight_int8 must be int8, got ",
              weight_int8.scalar_type());
  TORCH_CHECK(weight_int8.dim() == 4, "q8.", op, ": weight_int8 must be 4-D [out_channels, in_channels / groups, ",
              "kernel_h, kernel_w], got shape ", weight_int8.sym_sizes());
  TORCH_CHECK(groups >= 1, "q8.", op, ": groups must be positive, got ", groups);
  const auto OC = weight_int8.sym_size(0);
  TORCH_CHECK(OC % groups == 0, "q8.", op, ": out_channels (weight_int8.size(0) = ", OC,
              ") must be divisible by groups = ", groups);
  TORCH_CHECK(weight_int8.sym_size(1) >= 1 && weight_int8.sym_size(2) >= 1 && weight_int8.sym_size(3) >= 1, "q8.",
              op, ": weight_int8 must have at least one input channel and a kernel of at least 1 x 1, got shape ",
              weight_int8.sym_sizes());
  TORCH_CHECK(weight_int8.sym_size(2) <= 65535 && weight_int8.sym_size(3) <= 65535, "q8.", op,
              ": kernel_size must be at most 65535 per dimension, got shape ", weight_int8.sym_sizes());
  const auto cg4 = (weight_int8.sym_size(1) + 3) / 4 * 4;
  TORCH_CHECK(cg4 * weight_int8.sym_size(2) * weight_int8.sym_size(3) <= kMaxPackedK, "q8.", op,
              ": in_channels / groups * kernel_h * kernel_w must be at most ", kMaxPackedK,
              " (weight sums are int32), got shape ", weight_int8.sym_sizes());
  TORCH_CHECK(OC < (int64_t{1} << 31) && groups < (int64_t{1} << 31) && weight_int8.sym_size(1) < (int64_t{1} << 31),
              "q8.", op, ": sizes must be below 2^31, got shape ", weight_int8.sym_sizes());
}

void check_unpack_conv_weight_args(const char* op, const at::Tensor& packed_weight, const c10::SymInt& out_channels,
                                   const c10::SymInt& in_channels_per_group, at::IntArrayRef kernel_size,
                                   int64_t groups) {
  check_packed_container(op, packed_weight);
  TORCH_CHECK(out_channels >= 0, "q8.", op, ": out_channels must be >= 0, got ", out_channels);
  TORCH_CHECK(in_channels_per_group >= 1, "q8.", op, ": in_channels_per_group must be >= 1, got ",
              in_channels_per_group);
  check_conv_kernel_size(op, kernel_size);
  TORCH_CHECK(groups >= 1, "q8.", op, ": groups must be positive, got ", groups);
  TORCH_CHECK(out_channels % groups == 0, "q8.", op, ": out_channels (", out_channels,
              ") must be divisible by groups = ", groups);
}

} // namespace q8::detail
