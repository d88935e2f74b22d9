// Shared helpers of the q8 C++ tests: naive scalar references (plain loops in
// float / double over the tensor data, independent of the q8 kernels and of
// torch's own fake-quantize ops), bit-exact comparisons, error-message checks and
// a guard that restores the CPU kernel family.
#pragma once

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <q8/q8.h>

namespace q8_test {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// ---------------------------------------------------------------------------
// Errors: the statement throws c10::Error and the message names `substr`.
// ---------------------------------------------------------------------------
inline void expect_error_message(const std::function<void()>& f, const std::string& substr, const char* stmt) {
  try {
    f();
    ADD_FAILURE() << stmt << ": expected a c10::Error naming '" << substr << "', nothing was thrown";
  } catch (const c10::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(substr), std::string::npos)
        << stmt << ": the message does not contain '" << substr << "':\n" << e.what_without_backtrace();
  } catch (const std::exception& e) {
    ADD_FAILURE() << stmt << ": expected c10::Error, got another exception: " << e.what();
  }
}

#define Q8_EXPECT_ERROR(statement, substr)                                                    \
  do {                                                                                        \
    EXPECT_THROW((void)(statement), c10::Error);                                              \
    ::q8_test::expect_error_message([&] { (void)(statement); }, (substr), #statement);        \
  } while (0)

// ---------------------------------------------------------------------------
// CPU kernel families.
// ---------------------------------------------------------------------------

// Restores the kernel family that was active when it was created.
class IsaGuard {
 public:
  IsaGuard() : saved_(q8::cpu_isa()) {}
  ~IsaGuard() { q8::set_cpu_isa(saved_.c_str()); }
  IsaGuard(const IsaGuard&) = delete;
  IsaGuard& operator=(const IsaGuard&) = delete;
  const std::string& saved() const { return saved_; }

 private:
  std::string saved_;
};

// The families this CPU supports, best first.
inline std::vector<std::string> supported_isas() {
  return q8::cpu_isas();
}

// ---------------------------------------------------------------------------
// Reading and writing tensor data as float, element by element.
// ---------------------------------------------------------------------------
inline std::vector<float> as_floats(const at::Tensor& t) {
  const auto c = t.contiguous();
  const int64_t n = c.numel();
  std::vector<float> out(n);
  switch (c.scalar_type()) {
    case at::kFloat: {
      const float* p = c.const_data_ptr<float>();
      for (int64_t i = 0; i < n; ++i) out[i] = p[i];
      break;
    }
    case at::kHalf: {
      const c10::Half* p = c.const_data_ptr<c10::Half>();
      for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(p[i]);
      break;
    }
    case at::kBFloat16: {
      const c10::BFloat16* p = c.const_data_ptr<c10::BFloat16>();
      for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(p[i]);
      break;
    }
    case at::kInt: {
      const int32_t* p = c.const_data_ptr<int32_t>();
      for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(p[i]);
      break;
    }
    case at::kLong: {
      const int64_t* p = c.const_data_ptr<int64_t>();
      for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(p[i]);
      break;
    }
    default:
      throw std::runtime_error("as_floats: unsupported dtype");
  }
  return out;
}

inline std::vector<int64_t> as_int64s(const at::Tensor& t) {
  const auto c = t.contiguous();
  const int64_t n = c.numel();
  std::vector<int64_t> out(n);
  switch (c.scalar_type()) {
    case at::kChar: {
      const int8_t* p = c.const_data_ptr<int8_t>();
      for (int64_t i = 0; i < n; ++i) out[i] = p[i];
      break;
    }
    case at::kByte: {
      const uint8_t* p = c.const_data_ptr<uint8_t>();
      for (int64_t i = 0; i < n; ++i) out[i] = p[i];
      break;
    }
    case at::kInt: {
      const int32_t* p = c.const_data_ptr<int32_t>();
      for (int64_t i = 0; i < n; ++i) out[i] = p[i];
      break;
    }
    case at::kLong: {
      const int64_t* p = c.const_data_ptr<int64_t>();
      for (int64_t i = 0; i < n; ++i) out[i] = p[i];
      break;
    }
    default:
      throw std::runtime_error("as_int64s: unsupported dtype");
  }
  return out;
}

// A contiguous tensor of `dtype` holding `values` (float -> half / bfloat16 by the
// scalar c10 conversions, round to nearest even).
inline at::Tensor from_floats(const std::vector<float>& values, at::IntArrayRef sizes, at::ScalarType dtype) {
  auto t = at::empty(sizes, at::TensorOptions().dtype(dtype));
  const int64_t n = t.numel();
  if (static_cast<int64_t>(values.size()) != n) {
    throw std::runtime_error("from_floats: size mismatch");
  }
  switch (dtype) {
    case at::kFloat: {
      float* p = t.mutable_data_ptr<float>();
      for (int64_t i = 0; i < n; ++i) p[i] = values[i];
      break;
    }
    case at::kHalf: {
      c10::Half* p = t.mutable_data_ptr<c10::Half>();
      for (int64_t i = 0; i < n; ++i) p[i] = c10::Half(values[i]);
      break;
    }
    case at::kBFloat16: {
      c10::BFloat16* p = t.mutable_data_ptr<c10::BFloat16>();
      for (int64_t i = 0; i < n; ++i) p[i] = c10::BFloat16(values[i]);
      break;
    }
    default:
      throw std::runtime_error("from_floats: unsupported dtype");
  }
  return t;
}

inline at::Tensor from_int64s(const std::vector<int64_t>& values, at::IntArrayRef sizes, at::ScalarType dtype) {
  auto t = at::empty(sizes, at::TensorOptions().dtype(dtype));
  const int64_t n = t.numel();
  for (int64_t i = 0; i < n; ++i) {
    switch (dtype) {
      case at::kChar: t.mutable_data_ptr<int8_t>()[i] = static_cast<int8_t>(values[i]); break;
      case at::kByte: t.mutable_data_ptr<uint8_t>()[i] = static_cast<uint8_t>(values[i]); break;
      case at::kInt: t.mutable_data_ptr<int32_t>()[i] = static_cast<int32_t>(values[i]); break;
      case at::kLong: t.mutable_data_ptr<int64_t>()[i] = values[i]; break;
      default: throw std::runtime_error("from_int64s: unsupported dtype");
    }
  }
  return t;
}

inline const char* dtype_name(at::ScalarType t) { return c10::toString(t); }

// ---------------------------------------------------------------------------
// Bit-exact comparison (NaN matches NaN whatever its payload).
// ---------------------------------------------------------------------------
inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

inline ::testing::AssertionResult same_bits(const at::Tensor& got, const at::Tensor& want) {
  if (got.scalar_type() != want.scalar_type()) {
    return ::testing::AssertionFailure() << "dtype " << got.scalar_type() << " != expected " << want.scalar_type();
  }
  if (got.sizes() != want.sizes()) {
    return ::testing::AssertionFailure() << "shape " << got.sizes() << " != expected " << want.sizes();
  }
  const auto g = got.contiguous();
  const auto w = want.contiguous();
  const int64_t n = g.numel();
  int64_t bad = 0;
  std::ostringstream first;
  auto note = [&](int64_t i, const std::string& a, const std::string& b) {
    if (bad < 5) first << "\n  [" << i << "] got " << a << " expected " << b;
    ++bad;
  };
  const auto dt = g.scalar_type();
  if (dt == at::kFloat) {
    const float* a = g.const_data_ptr<float>();
    const float* b = w.const_data_ptr<float>();
    for (int64_t i = 0; i < n; ++i) {
      const bool ok = (std::isnan(a[i]) && std::isnan(b[i])) || float_bits(a[i]) == float_bits(b[i]);
      if (!ok) {
        std::ostringstream sa, sb;
        sa.precision(9);
        sb.precision(9);
        sa << a[i] << " (0x" << std::hex << float_bits(a[i]) << ")";
        sb << b[i] << " (0x" << std::hex << float_bits(b[i]) << ")";
        note(i, sa.str(), sb.str());
      }
    }
  } else if (dt == at::kHalf || dt == at::kBFloat16) {
    const auto* a = static_cast<const uint16_t*>(g.const_data_ptr());
    const auto* b = static_cast<const uint16_t*>(w.const_data_ptr());
    const auto fa = as_floats(g);
    const auto fb = as_floats(w);
    for (int64_t i = 0; i < n; ++i) {
      const bool ok = (std::isnan(fa[i]) && std::isnan(fb[i])) || a[i] == b[i];
      if (!ok) {
        std::ostringstream sa, sb;
        sa.precision(9);
        sb.precision(9);
        sa << fa[i] << " (0x" << std::hex << a[i] << ")";
        sb << fb[i] << " (0x" << std::hex << b[i] << ")";
        note(i, sa.str(), sb.str());
      }
    }
  } else {
    const auto a = as_int64s(g);
    const auto b = as_int64s(w);
    for (int64_t i = 0; i < n; ++i) {
      if (a[i] != b[i]) note(i, std::to_string(a[i]), std::to_string(b[i]));
    }
  }
  if (bad == 0) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << bad << " of " << n << " elements differ (" << g.scalar_type() << ")"
                                       << first.str();
}

// Value equality for gradients (+0 == -0, NaN matches NaN).
inline ::testing::AssertionResult same_values(const at::Tensor& got, const std::vector<float>& want) {
  const auto a = as_floats(got);
  if (a.size() != want.size()) {
    return ::testing::AssertionFailure() << "numel " << a.size() << " != expected " << want.size();
  }
  int64_t bad = 0;
  std::ostringstream first;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!(a[i] == want[i] || (std::isnan(a[i]) && std::isnan(want[i])))) {
      if (bad < 5) first << "\n  [" << i << "] got " << a[i] << " expected " << want[i];
      ++bad;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << a.size() << " elements differ" << first.str();
}

// ---------------------------------------------------------------------------
// Quantization parameters and the channel of each element.
// ---------------------------------------------------------------------------
struct RefParams {
  std::vector<float> scale;
  std::vector<float> zero_point;  // rounded half to even and clamped (float zero points)
  float qmin = 0.f;
  float qmax = 0.f;
};

inline RefParams ref_params(const at::Tensor& scale, const at::Tensor& zero_point, int64_t qmin, int64_t qmax) {
  RefParams p;
  p.scale = as_floats(scale);
  p.qmin = static_cast<float>(qmin);
  p.qmax = static_cast<float>(qmax);
  if (zero_point.is_floating_point()) {
    for (float z : as_floats(zero_point)) {
      p.zero_point.push_back(std::min(std::max(std::nearbyint(z), p.qmin), p.qmax));
    }
  } else {
    for (int64_t z : as_int64s(zero_point)) p.zero_point.push_back(static_cast<float>(z));
  }
  return p;
}

// Index of the quantization parameters of each element of the contiguous tensor.
inline std::vector<int64_t> channel_index(at::IntArrayRef sizes, std::optional<int64_t> axis) {
  int64_t numel = 1;
  for (auto s : sizes) numel *= s;
  std::vector<int64_t> idx(numel, 0);
  if (!axis.has_value()) return idx;
  const int64_t dim = static_cast<int64_t>(sizes.size());
  const int64_t a = *axis < 0 ? *axis + dim : *axis;
  int64_t inner = 1;
  for (int64_t d = a + 1; d < dim; ++d) inner *= sizes[d];
  const int64_t channels = sizes[a];
  for (int64_t i = 0; i < numel; ++i) idx[i] = (i / inner) % channels;
  return idx;
}

// q = nearbyint(x * (1 / s)) + z (unclamped), in float32.
inline float ref_q(float x, float s, float z) {
  const float inv = 1.0f / s;
  const float r = std::nearbyint(x * inv);
  return r + z;
}

inline float ref_clamp(float q, float qmin, float qmax) {
  if (std::isnan(q)) return q;
  return std::min(std::max(q, qmin), qmax);
}

inline float ref_fq(float x, float s, float z, float qmin, float qmax) {
  const float qc = ref_clamp(ref_q(x, s, z), qmin, qmax);
  const float d = qc - z;
  return d * s;
}

inline bool ref_in_range(float x, float s, float z, float qmin, float qmax) {
  const float q = ref_q(x, s, z);
  return q >= qmin && q <= qmax;  // false for NaN
}

// The fake-quantized tensor, contiguous, in x's dtype.
inline at::Tensor ref_fake_quantize(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point,
                                    std::optional<int64_t> axis, int64_t qmin, int64_t qmax) {
  const auto p = ref_params(scale, zero_point, qmin, qmax);
  const auto xs = as_floats(x);
  const auto ch = channel_index(x.sizes(), axis);
  std::vector<float> out(xs.size());
  for (size_t i = 0; i < xs.size(); ++i) {
    const int64_t c = ch[i];
    out[i] = ref_fq(xs[i], p.scale[c], p.zero_point[c], p.qmin, p.qmax);
  }
  return from_floats(out, x.sizes(), x.scalar_type());
}

// The straight-through mask.
inline std::vector<bool> ref_mask(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point,
                                  std::optional<int64_t> axis, int64_t qmin, int64_t qmax) {
  const auto p = ref_params(scale, zero_point, qmin, qmax);
  const auto xs = as_floats(x);
  const auto ch = channel_index(x.sizes(), axis);
  std::vector<bool> m(xs.size());
  for (size_t i = 0; i < xs.size(); ++i) {
    const int64_t c = ch[i];
    m[i] = ref_in_range(xs[i], p.scale[c], p.zero_point[c], p.qmin, p.qmax);
  }
  return m;
}

// Integer codes clamp(nearbyint(x * (1/s)) + z), NaN -> z.
inline std::vector<int64_t> ref_quantize(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point,
                                         std::optional<int64_t> axis, int64_t qmin, int64_t qmax) {
  const auto p = ref_params(scale, zero_point, qmin, qmax);
  const auto xs = as_floats(x);
  const auto ch = channel_index(x.sizes(), axis);
  std::vector<int64_t> q(xs.size());
  for (size_t i = 0; i < xs.size(); ++i) {
    const int64_t c = ch[i];
    const float v = ref_clamp(ref_q(xs[i], p.scale[c], p.zero_point[c]), p.qmin, p.qmax);
    q[i] = std::isnan(v) ? static_cast<int64_t>(p.zero_point[c]) : static_cast<int64_t>(v);
  }
  return q;
}

// ---------------------------------------------------------------------------
// Inputs.
// ---------------------------------------------------------------------------

// Special values for a quantization step `s`: exact .5 ties around zero, huge
// values, infinities, NaN and signed zeros.
inline std::vector<float> special_values(float s) {
  std::vector<float> v;
  for (int k = -140; k <= 140; ++k) v.push_back((static_cast<float>(k) + 0.5f) * s);
  for (float f : {0.f, -0.f, 1e30f, -1e30f, FLT_MAX, -FLT_MAX, kInf, -kInf, kNaN, -kNaN, FLT_MIN, -FLT_MIN,
                  1e-40f, -1e-40f, 0.5f * s, -0.5f * s, 1.5f * s, -1.5f * s, 2.5f * s, -2.5f * s}) {
    v.push_back(f);
  }
  return v;
}

// randn * mul, with `specials` written over evenly spaced positions.
inline at::Tensor random_input(at::IntArrayRef sizes, at::ScalarType dtype, float mul,
                               const std::vector<float>& specials = {}) {
  auto x = (torch::randn(sizes) * mul).contiguous();
  float* p = x.mutable_data_ptr<float>();
  const int64_t n = x.numel();
  if (n > 0 && !specials.empty()) {
    const int64_t step = std::max<int64_t>(1, n / static_cast<int64_t>(specials.size()));
    for (size_t k = 0; k < specials.size(); ++k) {
      const int64_t i = (static_cast<int64_t>(k) * step + 3) % n;
      p[i] = specials[k];
    }
  }
  return x.to(dtype);
}

inline at::Tensor f32(std::vector<float> v) {
  return torch::tensor(v, torch::kFloat);
}
inline at::Tensor f32_scalar(float v) {
  return torch::tensor(v, torch::kFloat);
}
inline at::Tensor i32_scalar(int32_t v) {
  return torch::tensor(v, torch::kInt);
}

// Random per-channel parameters: scales in [lo, hi), integer zero points in [qmin, qmax].
inline at::Tensor random_scales(int64_t channels, float lo, float hi) {
  return (torch::rand({channels}) * (hi - lo) + lo).to(torch::kFloat);
}
inline at::Tensor random_zero_points(int64_t channels, int64_t qmin, int64_t qmax, at::ScalarType dtype) {
  return torch::randint(qmin, qmax + 1, {channels}, torch::TensorOptions().dtype(torch::kLong)).to(dtype);
}

struct QRange {
  int64_t qmin;
  int64_t qmax;
};
inline const std::vector<QRange>& all_ranges() {
  static const std::vector<QRange> r{{-128, 127}, {0, 255}, {-127, 127}, {0, 15}, {-8, 7}, {0, 1}};
  return r;
}

inline const std::vector<at::ScalarType>& float_dtypes() {
  static const std::vector<at::ScalarType> d{at::kFloat, at::kHalf, at::kBFloat16};
  return d;
}

inline std::string describe(at::IntArrayRef sizes, std::optional<int64_t> axis, at::ScalarType dtype, QRange r) {
  std::ostringstream os;
  os << "shape " << sizes << " axis " << (axis ? std::to_string(*axis) : std::string("none")) << " dtype "
     << dtype << " range [" << r.qmin << ", " << r.qmax << "]";
  return os.str();
}

// Runs `f` under each supported CPU family and checks that every family's tensors
// are bit-identical to the first family's.
inline void expect_same_on_every_isa(const std::function<std::vector<at::Tensor>()>& f, const std::string& what) {
  IsaGuard guard;
  std::vector<at::Tensor> first;
  std::string first_name;
  for (const auto& name : supported_isas()) {
    q8::set_cpu_isa(name.c_str());
    auto outs = f();
    if (first.empty()) {
      first = std::move(outs);
      first_name = name;
      continue;
    }
    ASSERT_EQ(outs.size(), first.size());
    for (size_t k = 0; k < outs.size(); ++k) {
      EXPECT_TRUE(same_bits(outs[k], first[k]))
          << what << ": output " << k << " of '" << name << "' differs from '" << first_name << "'";
    }
  }
}

struct AxisCase {
  std::vector<int64_t> shape;
  int64_t axis;
};

// Every axis (positive and negative) of 3-D and 4-D shapes whose inner size
// (product of the dims after axis) is 1, small (2..63) or large (>= 64), plus a
// single channel.
inline std::vector<AxisCase> axis_cases() {
  std::vector<AxisCase> cases;
  const std::vector<std::vector<int64_t>> shapes{
      {3, 5, 70},     // inner 350, 70, 1
      {2, 3, 4, 5},   // inner 60, 20, 5, 1
      {4, 64, 3},     // inner 192, 3, 1
      {2, 7, 64},     // inner 448, 64 (exactly the vector threshold), 1
      {5, 63, 1},     // inner 63, 1, 1
      {1, 5, 3},      // a single channel on axis 0
      {3, 2, 33, 2},  // inner 132, 66, 2, 1
      {2, 65, 1, 9},  // inner 585, 9, 9, 1 (axis of size 1)
  };
  for (const auto& s : shapes) {
    const int64_t dim = static_cast<int64_t>(s.size());
    for (int64_t a = 0; a < dim; ++a) {
      cases.push_back({s, a});
      cases.push_back({s, a - dim});
    }
  }
  return cases;
}

}  // namespace q8_test
