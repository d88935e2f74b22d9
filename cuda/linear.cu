// CUDA kernels of the int8 linear family (schemas: csrc/ops/linear.cpp; the CPU
// kernels, whose results these match, are in csrc/ops/cpu/linear.cpp; device
// code in linear_kernels.cuh).
//
// Packed layout (PackLayout::CudaRowMajor, packed_weight.h):
//   [0, 128)                    PackedHeader (64 bytes) + 64 zero bytes
//   [128, 128 + N16 K16)        int8 weights, row-major [N16][K16], zero padded
//   [.., + 4 N16)               int32 row sums [N16] (0 for padding rows)
// N16, K16: N and K rounded up to multiples of 16. Row-major with a 16-aligned
// row stride is what cuBLASLt's int8 GEMM reads (at::_int_mm(a, w.t()): the "TN"
// int8 layout) and what the small-M kernels stream with 16-byte loads. The header
// does not depend on the data, so pack_weight builds it on the host and a
// one-warp kernel writes it from its arguments: nothing is copied from host
// memory (a plain copy_ from pageable memory synchronizes the stream) and
// nothing is read back. Its checksum covers the header only for this layout (the
// row sums live on the device; the CPU layout's checksum also covers them).
//
// Per-call validation (linear, int8_mm) reads no device memory: dtypes, shapes,
// devices (the shared detail::check_* functions), contiguity, 16-byte alignment,
// and numel == cuda_packed_sizes(N, K).total_bytes with N = weight_scale.size(0)
// (linear) or out_features (int8_mm) and K from the input. A CPU-packed weight
// never has that size (packed_weight.h), so one moved to the GPU is refused with
// a message saying to repack on this device. A weight packed for another N x K of
// the same padded size passes this check; the kernels that write the outputs
// also compare the header (read on the device) with N x K and give NaN outputs
// (linear) or INT64_MIN outputs (int8_mm, whose int64 results cannot be NaN; no
// true result comes near it) when it does not match. unpack_weight, an offline op, copies the 128 header bytes to the
// host and checks them all (magic, version, layout, N, K, offsets, size,
// checksum), then verifies every weight against its row sum and the padding, as
// the CPU does (it synchronizes: it reads the result of that check).
//
// quantize_weight matches the CPU bit for bit, except that a row holding NaN or
// +-Inf is not an error (that would need a synchronization): its scale is NaN
// and its codes 0, so every output of that channel is NaN.
//
// linear (dynamic / static) and int8_mm:
//   1. one block per row quantizes the activations (dynamic: row min / max,
//      compute_qparams(min, max, 0, 255) as the CPU; static: the scale and zero
//      point read from device memory, no .item()) into int8 codes q - 128, K
//      padded to K16 with zeros, and records per row (s_x, z_x, non-finite);
//      int8_mm's uint8 input is shifted the same way;
//   2. M <= 16: one kernel on tensor cores (mma.sync m16n8k32 s8, exact int32,
//      8 warps splitting K, 16 columns per block, weights streamed once with
//      16-byte loads) with the epilogue fused; when N / 16 is small against the
//      SM count, K is also split over blocks (split_k_count: exact int64
//      partials, then the epilogue kernel adds them). at::_int_mm (cuBLASLt) refuses
//      M <= 16. M > 16: at::_int_mm(codes, w.t()) (int32 [M, N16]), in chunks of
//      65536 k summed in int64 when K16 > 65536, then an epilogue kernel;
//   3. epilogue, in the CPU's float32 order (no FMA):
//        v = acc + (128 - z_x) * rowsum (int64: sum_k (q - z_x) * w, exact)
//        t = float(v); s = s_x * s_w; y = t * s; y = y + bias; NaN for rows with
//        NaN / Inf; stored in the input dtype (one rounding, as the CPU's .to()).
//   Integer results are exact for every K, so dynamic / static outputs are
//   bit-identical to the CPU's whenever the CPU sums in int32 (K <= 65536) and
//   also beyond (the CPU sums int32 chunks in int64 there: the same integers).
//   On CUDA the static input_scale / input_zero_point and int8_mm's
//   input_zero_point are not range-checked (a host read); out-of-range values
//   give meaningless (but not undefined) results.
//
// linear (weight_only): float32 accumulation, tolerance against the CPU:
//   M <= 64, float16 / bfloat16: mma.sync m16n8k16 with the int8 weights
//     converted exactly to the input's 16-bit type in registers;
//   M <= 64, float32: CUDA-core float32 (no TF32), 4 columns per block;
//   M > 64: the weights converted (exactly) to the input dtype, at::mm with a
//     float32 result (cuBLAS; for float32 inputs TF32 only if the user enabled
//     torch.backends.cuda.matmul.allow_tf32), then the epilogue y = acc * s_w +
//     bias. This path allocates an N x K copy of the weight per call: it is not
//     tuned for large M (use "dynamic"), as on the CPU.
//
// Nothing in quantize_weight, pack_weight, int8_mm or linear reads device memory
// on the host or synchronizes (CUDA-graph capturable); every launch goes to the
// current stream under a CUDAGuard and is checked with
// C10_CUDA_KERNEL_LAUNCH_CHECK(); empty outputs launch nothing.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "linear_kernels.cuh"
#include "ops/checks.h"
#include "ops/packed_weight.h"

namespace q8::cuda {
namespace {

namespace lk = q8::cuda::linear_kernels;
using detail::LinearMode;

// float32, float16 and bfloat16 (check_float_input / check_quantize_weight_args
// refuse every other dtype).
#define Q8_LINEAR_DISPATCH_FLOAT_TYPES(TYPE, NAME, ...)         \
  AT_DISPATCH_SWITCH(                                           \
      TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)     \
                      AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)  \
                          AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

constexpr int64_t kMaxGridX = (int64_t{1} << 31) - 1;
constexpr int64_t kMaxGridY = 65535;
// The small-M kernels handle M <= this on the int8 path (at::_int_mm needs M > 16).
constexpr int64_t kInt8SmallM = 16;
// weight_only: the tiled kernels up to this M, cuBLAS above.
constexpr int64_t kWeightOnlyTiledMaxM = 64;

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

int64_t round_up(int64_t a, int64_t b) {
  return ceil_div(a, b) * b;
}

bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

void check_cuda(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), "q8.", op, ": ", name, " must be a CUDA tensor for the CUDA kernel, got ", t.device());
}

void check_rows(const char* op, int64_t rows, const char* what) {
  TORCH_CHECK(rows <= kMaxGridX, "q8.", op, ": ", what, " must be below 2^31 on CUDA, got ", rows);
}

// The per-call check of a packed weight: no device read (see the file comment).
detail::CudaPackedSizes check_cuda_packed(const char* op, const at::Tensor& packed, int64_t n, int64_t k,
                                          const char* n_name, const char* k_name) {
  check_cuda(op, packed, "packed_weight");
  TORCH_CHECK(packed.is_contiguous(), "q8.", op, ": packed_weight must be contiguous");
  TORCH_CHECK(n >= 0 && n < (int64_t{1} << 31) && k >= 0 && k <= detail::kMaxPackedK, "q8.", op, ": ", n_name, " = ",
              n, " and ", k_name, " = ", k, " cannot describe a packed weight (out_features < 2^31, in_features <= ",
              detail::kMaxPackedK, ")");
  const detail::CudaPackedSizes s = detail::cuda_packed_sizes(n, k);
  const int64_t numel = packed.numel();
  if (numel != s.total_bytes) {
    TORCH_CHECK(numel != detail::cpu_packed_sizes(n, k).total_bytes, "q8.", op,
                ": packed_weight was packed for the 'cpu' layout (its size is that of a CPU-packed ", n, " x ", k,
                " weight), but this is the CUDA kernel (", packed.device(),
                "): repack the canonical weight on this device with q8.pack_weight(weight_int8.to(device)) "
                "(q8.nn.Int8Linear repacks on module.to(device))");
    TORCH_CHECK(false, "q8.", op, ": packed_weight has ", numel, " bytes but the 'cuda' layout of ", n_name, " = ",
                n, " x ", k_name, " = ", k, " needs ", s.total_bytes, ": ", n_name, " and ", k_name,
                " must match the packed weight's out_features and in_features (or it was truncated or extended)");
  }
  TORCH_CHECK(aligned16(packed.const_data_ptr()), "q8.", op,
              ": packed_weight must start 16-byte aligned (use the tensor q8.pack_weight returned, not a slice of one)");
  return s;
}

// The weights of a CUDA-packed tensor as an int8 [N16, K16] view.
at::Tensor packed_weight_view(const at::Tensor& packed, const detail::CudaPackedSizes& s) {
  return packed.narrow(0, s.weight_offset, s.n16 * s.k16).view(at::kChar).view({s.n16, s.k16});
}

const int32_t* packed_rowsums(const at::Tensor& packed, const detail::CudaPackedSizes& s) {
  return reinterpret_cast<const int32_t*>(packed.const_data_ptr<uint8_t>() + s.rowsum_offset);
}

const int8_t* packed_weights(const at::Tensor& packed, const detail::CudaPackedSizes& s) {
  return reinterpret_cast<const int8_t*>(packed.const_data_ptr<uint8_t>() + s.weight_offset);
}

// ---------------------------------------------------------------------------
// quantize_weight, pack_weight, unpack_weight
// ---------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor> quantize_weight_cuda(const at::Tensor& weight) {
  const char* op = "quantize_weight";
  detail::check_quantize_weight_args(op, weight);
  check_cuda(op, weight, "weight");
  c10::cuda::CUDAGuard guard(weight.device());
  const auto w = weight.contiguous();
  const int64_t n = w.size(0), k = w.size(1);
  auto q = at::empty({n, k}, w.options().dtype(at::kChar));
  auto scale = at::empty({n}, w.options().dtype(at::kFloat));
  if (n == 0) {
    return {q, scale};
  }
  check_rows(op, n, "out_features");
  auto stream = at::cuda::getCurrentCUDAStream();
  Q8_LINEAR_DISPATCH_FLOAT_TYPES(w.scalar_type(), "q8_quantize_weight_cuda", [&] {
    lk::quantize_weight_kernel<scalar_t><<<static_cast<unsigned>(n), lk::kRowThreads, 0, stream>>>(
        w.const_data_ptr<scalar_t>(), k, q.mutable_data_ptr<int8_t>(), scale.mutable_data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {q, scale};
}

lk::HeaderWords make_header(int64_t n, int64_t k, const detail::CudaPackedSizes& s) {
  detail::PackedHeader h{};
  h.magic = detail::kPackMagic;
  h.version = detail::kPackVersion;
  h.layout = static_cast<uint32_t>(detail::PackLayout::CudaRowMajor);
  h.n = n;
  h.k = k;
  h.weight_offset = s.weight_offset;
  h.rowsum_offset = s.rowsum_offset;
  h.total_bytes = s.total_bytes;
  h.checksum = detail::packed_checksum(h, nullptr, 0);  // the header only (see the file comment)
  lk::HeaderWords words{};
  static_assert(sizeof(h) <= sizeof(words), "the header fits its region");
  std::memcpy(words.w, &h, sizeof(h));
  return words;
}

at::Tensor pack_weight_cuda(const at::Tensor& weight_int8) {
  const char* op = "pack_weight";
  detail::check_pack_weight_args(op, weight_int8);
  check_cuda(op, weight_int8, "weight_int8");
  c10::cuda::CUDAGuard guard(weight_int8.device());
  const auto w = weight_int8.contiguous();
  const int64_t n = w.size(0), k = w.size(1);
  const detail::CudaPackedSizes s = detail::cuda_packed_sizes(n, k);
  check_rows(op, s.n16, "out_features rounded up to a multiple of 16");
  auto out = at::empty({s.total_bytes}, w.options().dtype(at::kByte));
  uint8_t* base = out.mutable_data_ptr<uint8_t>();
  auto stream = at::cuda::getCurrentCUDAStream();
  lk::write_header_kernel<<<1, 1, 0, stream>>>(make_header(n, k, s), reinterpret_cast<uint64_t*>(base));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (s.n16 > 0) {
    lk::pack_weight_kernel<<<static_cast<unsigned>(s.n16), lk::kRowThreads, 0, stream>>>(
        w.const_data_ptr<int8_t>(), n, k, s.k16, reinterpret_cast<int8_t*>(base + s.weight_offset),
        reinterpret_cast<int32_t*>(base + s.rowsum_offset));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

// unpack_weight is offline: it copies the header to the host and reads back the
// result of the weight check (two synchronizations).
at::Tensor unpack_weight_cuda(const at::Tensor& packed, c10::SymInt out_features, c10::SymInt in_features) {
  const char* op = "unpack_weight";
  detail::check_packed_container(op, packed);
  check_cuda(op, packed, "packed_weight");
  c10::cuda::CUDAGuard guard(packed.device());
  TORCH_CHECK(packed.is_contiguous(), "q8.", op, ": packed_weight must be contiguous");
  const int64_t numel = packed.numel();
  TORCH_CHECK(numel >= detail::kCudaPackHeaderBytes, "q8.", op, ": packed_weight has ", numel, " bytes, fewer than its ",
              detail::kCudaPackHeaderBytes, "-byte header region: not a q8 packed weight (or truncated)");
  TORCH_CHECK(aligned16(packed.const_data_ptr()), "q8.", op,
              ": packed_weight must start 16-byte aligned (use the tensor q8.pack_weight returned, not a slice of one)");
  const auto host = packed.narrow(0, 0, detail::kCudaPackHeaderBytes).to(at::kCPU);
  const uint8_t* hb = host.const_data_ptr<uint8_t>();
  detail::PackedHeader h{};
  std::memcpy(&h, hb, sizeof(h));
  TORCH_CHECK(h.magic == detail::kPackMagic, "q8.", op,
              ": packed_weight does not start with the q8 packed-weight magic: make it with q8.pack_weight");
  TORCH_CHECK(h.version == detail::kPackVersion, "q8.", op, ": packed_weight has format version ", h.version,
              ", this q8 reads version ", detail::kPackVersion, ": repack the canonical weight with q8.pack_weight");
  TORCH_CHECK(h.layout == static_cast<uint32_t>(detail::PackLayout::CudaRowMajor), "q8.", op,
              ": packed_weight was packed for the '",
              h.layout == static_cast<uint32_t>(detail::PackLayout::CpuPanel16x4) ? "cpu" : "unknown",
              "' layout but this is the 'cuda' kernel (", packed.device(),
              "): repack the canonical weight on this device with q8.pack_weight");
  TORCH_CHECK(h.n >= 0 && h.n < (int64_t{1} << 31) && h.k >= 0 && h.k <= detail::kMaxPackedK, "q8.", op,
              ": packed_weight header is corrupt (out_features=", h.n, ", in_features=", h.k, ")");
  const detail::CudaPackedSizes s = detail::cuda_packed_sizes(h.n, h.k);
  TORCH_CHECK(h.weight_offset == s.weight_offset && h.rowsum_offset == s.rowsum_offset &&
                  h.total_bytes == s.total_bytes,
              "q8.", op, ": packed_weight header is corrupt (offsets do not match ", h.n, " x ", h.k, ")");
  bool reserved_zero = true;
  for (int64_t i = static_cast<int64_t>(sizeof(h)); i < detail::kCudaPackHeaderBytes; ++i) {
    reserved_zero = reserved_zero && hb[i] == 0;
  }
  TORCH_CHECK(reserved_zero, "q8.", op, ": packed_weight header is corrupt (its reserved bytes are not zero)");
  TORCH_CHECK(numel == s.total_bytes, "q8.", op, ": packed_weight has ", numel, " bytes but its header (", h.n, " x ",
              h.k, ") needs ", s.total_bytes, ": truncated or extended");
  TORCH_CHECK(detail::packed_checksum(h, nullptr, 0) == h.checksum, "q8.", op,
              ": packed_weight checksum mismatch (the header was modified): repack with q8.pack_weight");
  const int64_t n = out_features.expect_int(), k = in_features.expect_int();
  TORCH_CHECK(h.n == n, "q8.", op, ": out_features must match packed_weight's out_features (", h.n, "), got ", n);
  TORCH_CHECK(h.k == k, "q8.", op, ": in_features must match packed_weight's in_features (", h.k, "), got ", k);
  auto out = at::empty({n, k}, packed.options().dtype(at::kChar));
  check_rows(op, s.n16, "out_features rounded up to a multiple of 16");
  if (s.n16 == 0) {
    return out;
  }
  constexpr auto kNone = std::numeric_limits<unsigned long long>::max();
  auto bad = at::full({1}, static_cast<int64_t>(-1), packed.options().dtype(at::kLong));  // all ones = kNone
  auto stream = at::cuda::getCurrentCUDAStream();
  lk::unpack_weight_kernel<<<static_cast<unsigned>(s.n16), lk::kRowThreads, 0, stream>>>(
      packed_weights(packed, s), packed_rowsums(packed, s), n, k, s.k16, out.mutable_data_ptr<int8_t>(),
      reinterpret_cast<unsigned long long*>(bad.mutable_data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const auto bad_row = static_cast<unsigned long long>(bad.item<int64_t>());  // synchronizes (offline op)
  TORCH_CHECK(bad_row == kNone, "q8.", op, ": packed_weight is corrupt: the weights of output channel ", bad_row,
              " do not match their row sum or padding (the tensor was modified after q8.pack_weight)");
  return out;
}

// ---------------------------------------------------------------------------
// The int8 path: activation codes, GEMM, epilogue
// ---------------------------------------------------------------------------
// One allocation per call: codes [M, K16] int8, s_x [M], z_x [M], bad [M].
struct Int8Scratch {
  at::Tensor buf;
  at::Tensor codes;  // int8 [M, K16] view of buf
  int8_t* a8;
  float* sx;
  int32_t* zx;
  uint8_t* bad;
};

Int8Scratch make_scratch(int64_t m, int64_t k16, const at::TensorOptions& options) {
  const int64_t a_bytes = round_up(m * k16, 16);
  const int64_t f_bytes = round_up(m * 4, 16);
  const int64_t total = a_bytes + 2 * f_bytes + round_up(m, 16);
  Int8Scratch s;
  s.buf = at::empty({total}, options.dtype(at::kByte));
  uint8_t* base = s.buf.mutable_data_ptr<uint8_t>();
  s.codes = s.buf.narrow(0, 0, m * k16).view(at::kChar).view({m, k16});
  s.a8 = reinterpret_cast<int8_t*>(base);
  s.sx = reinterpret_cast<float*>(base + a_bytes);
  s.zx = reinterpret_cast<int32_t*>(base + a_bytes + f_bytes);
  s.bad = base + a_bytes + 2 * f_bytes;
  return s;
}

// acc = codes [M, K16] x w [N16, K16]^T on tensor cores (cuBLASLt through
// at::_int_mm: M > 16, K16 and N16 multiples of 8; w.t() is the column-major
// operand, so cuBLASLt runs its "TN" int8 layout without a copy). One int32
// result when K16 <= 65536 (exact: |sum| <= 2^30); otherwise int32 chunks of
// 65536 k summed into int64 (the chunks are strided views: no copy). Undefined
// when K16 = 0 (the epilogue then reads zeros).
at::Tensor int_mm_exact(const at::Tensor& codes, const at::Tensor& w) {
  const int64_t k16 = codes.size(1);
  if (k16 == 0) {
    return at::Tensor();
  }
  if (k16 <= lk::kIntChunk) {
    return at::_int_mm(codes, w.t());
  }
  at::Tensor acc;
  for (int64_t k0 = 0; k0 < k16; k0 += lk::kIntChunk) {
    const int64_t len = std::min(lk::kIntChunk, k16 - k0);
    const auto part = at::_int_mm(codes.narrow(1, k0, len), w.narrow(1, k0, len).t());
    if (!acc.defined()) {
      acc = part.to(at::kLong);
    } else {
      acc.add_(part);
    }
  }
  return acc;
}

// The epilogue over acc [M, ld_acc], or over `splits` split-K partials
// acc + s * split_stride that it adds first.
template <typename Acc, typename Epi>
void launch_epilogue_typed(const Acc* acc, int64_t ld_acc, int64_t m, int64_t n, const Epi& epi,
                           int64_t splits = 1, int64_t split_stride = 0) {
  const bool vec_in = acc != nullptr && ld_acc % lk::kEpiCols == 0 && split_stride % lk::kEpiCols == 0 &&
      aligned16(acc);
  const bool vec_out = n % lk::kEpiCols == 0 && aligned16(epi.out);
  const dim3 grid(static_cast<unsigned>(ceil_div(n, int64_t{lk::kEpiThreads} * lk::kEpiCols)),
                  static_cast<unsigned>(std::min(m, kMaxGridY)));
  lk::gemm_epilogue_kernel<Acc, Epi><<<grid, lk::kEpiThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      acc, ld_acc, m, n, vec_in, vec_out, splits, split_stride, epi);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Split K for the small-M kernels. They give a block 16 (tensor cores) or 4
// (float32) columns, so N = 256..1024 at M <= 16 launches only 16..64 blocks:
// a quarter to a half of an H100's 132 SMs. When the grid has at most half as
// many blocks as the GPU has SMs, K is split so that about two blocks per SM
// run (at most kMaxSplitK splits, each at least max_splits-th of K: one warp
// step per warp), each split writes its partial sums ([splits, M, N], int64 or
// float32) and the epilogue kernel adds them in split order and applies the
// epilogue. Integer partials are exact, so the int8 modes stay bit-identical to
// the CPU; float32 partials (weight_only) change the summation order only.
constexpr int64_t kMaxSplitK = 16;

int64_t split_k_count(int64_t blocks, int64_t max_splits) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  if (blocks * 2 > sms || max_splits < 2) {
    return 1;
  }
  return std::max<int64_t>(1, std::min({ceil_div(2 * sms, blocks), max_splits, kMaxSplitK}));
}

// acc: int32 / int64 [M, >= N] (or undefined: zeros) for the int8 epilogues.
template <typename Epi>
void launch_int_epilogue(const at::Tensor& acc, int64_t m, int64_t n, const Epi& epi) {
  if (!acc.defined()) {
    launch_epilogue_typed<int32_t>(nullptr, 0, m, n, epi);
  } else if (acc.scalar_type() == at::kInt) {
    launch_epilogue_typed<int32_t>(acc.const_data_ptr<int32_t>(), acc.stride(0), m, n, epi);
  } else {
    TORCH_INTERNAL_ASSERT(acc.scalar_type() == at::kLong);
    launch_epilogue_typed<int64_t>(acc.const_data_ptr<int64_t>(), acc.stride(0), m, n, epi);
  }
}

// The GEMM of the int8 path and its epilogue (fused for small M).
template <typename Epi>
void int8_gemm(const Int8Scratch& sc, int64_t m, const at::Tensor& packed, const detail::CudaPackedSizes& s,
               int64_t n, const Epi& epi) {
  if (m <= kInt8SmallM) {
    const int64_t col_blocks = s.n16 / lk::kMmaCols, row_blocks = ceil_div(m, lk::kMmaRows);
    const int64_t nchunks = ceil_div(s.k16, lk::kMmaChunk);
    int64_t splits = split_k_count(col_blocks * row_blocks, nchunks / lk::kMmaWarps);
    const int64_t per_split = std::max<int64_t>(1, ceil_div(nchunks, splits));
    splits = std::max<int64_t>(1, ceil_div(nchunks, per_split));  // no empty split
    at::Tensor partial;
    if (splits > 1) {
      partial = at::empty({splits, m, n}, sc.buf.options().dtype(at::kLong));
    }
    const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(row_blocks),
                    static_cast<unsigned>(splits));
    lk::int8_mma_small_m_kernel<Epi><<<grid, lk::kMmaThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        sc.a8, m, packed_weights(packed, s), s.k16, n, epi, per_split,
        splits > 1 ? partial.mutable_data_ptr<int64_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (splits > 1) {
      launch_epilogue_typed<int64_t>(partial.const_data_ptr<int64_t>(), n, m, n, epi, splits, m * n);
    }
    return;
  }
  const at::Tensor acc = int_mm_exact(sc.codes, packed_weight_view(packed, s));
  launch_int_epilogue(acc, m, n, epi);
}

template <typename T>
void linear_int8(const at::Tensor& x2, int64_t m, int64_t k, int64_t n, LinearMode mode, const at::Tensor& packed,
                 const detail::CudaPackedSizes& s, const float* sw, const float* bias,
                 const std::optional<at::Tensor>& input_scale, const std::optional<at::Tensor>& input_zero_point,
                 const lk::EpilogueClamp& clamp, at::Tensor& out) {
  const Int8Scratch sc = make_scratch(m, s.k16, x2.options());
  const T* xp = x2.const_data_ptr<T>();
  const int64_t ldx = x2.stride(0);
  const bool vec = k % 8 == 0 && ldx % 8 == 0 && aligned16(xp);
  const float* scale_p = nullptr;
  const void* zp_p = nullptr;
  bool zp_long = false;
  if (mode == LinearMode::Static) {
    // Read on the device by the kernel (no .item()): graph-capturable.
    scale_p = input_scale->const_data_ptr<float>();
    zp_p = input_zero_point->const_data_ptr();
    zp_long = input_zero_point->scalar_type() == at::kLong;
  }
  const lk::RowParams rp{sc.sx, sc.zx, sc.bad};
  auto stream = at::cuda::getCurrentCUDAStream();
  const auto grid = static_cast<unsigned>(m);
  // Few long rows (decode): wider blocks shorten this step, which the GEMM waits for.
  const int threads = (m < 64 && k >= 2048) ? lk::kQuantRowsMaxThreads : lk::kRowThreads;
  if (mode == LinearMode::Dynamic) {
    if (vec) {
      lk::quantize_rows_kernel<T, true, true><<<grid, threads, 0, stream>>>(xp, ldx, k, s.k16, scale_p, zp_p,
                                                                             zp_long, sc.a8, rp);
    } else {
      lk::quantize_rows_kernel<T, true, false><<<grid, threads, 0, stream>>>(xp, ldx, k, s.k16, scale_p, zp_p,
                                                                              zp_long, sc.a8, rp);
    }
  } else {
    if (vec) {
      lk::quantize_rows_kernel<T, false, true><<<grid, threads, 0, stream>>>(xp, ldx, k, s.k16, scale_p, zp_p,
                                                                              zp_long, sc.a8, rp);
    } else {
      lk::quantize_rows_kernel<T, false, false><<<grid, threads, 0, stream>>>(xp, ldx, k, s.k16, scale_p, zp_p,
                                                                               zp_long, sc.a8, rp);
    }
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const lk::LinearEpilogue<T> epi{out.mutable_data_ptr<T>(), sc.sx, sc.zx, sc.bad, packed_rowsums(packed, s),
                                  sw, bias, packed.const_data_ptr<uint8_t>(), n, k, clamp};
  int8_gemm(sc, m, packed, s, n, epi);
}

// ---------------------------------------------------------------------------
// weight_only
// ---------------------------------------------------------------------------
// x with K padded to K16 by zeros and rows aligned for 16-byte loads: x2 itself
// when it already is, else a zero-filled copy (two async ATen kernels).
at::Tensor padded_rows(const at::Tensor& x2, int64_t k, int64_t k16, int64_t elems_per_16_bytes) {
  if (k == k16 && x2.stride(0) % elems_per_16_bytes == 0 && aligned16(x2.const_data_ptr())) {
    return x2;
  }
  auto xp = at::zeros({x2.size(0), k16}, x2.options());
  if (k > 0) {
    xp.narrow(1, 0, k).copy_(x2);
  }
  return xp;
}

template <typename T>
void linear_weight_only(const at::Tensor& x2, int64_t m, int64_t k, int64_t n, const at::Tensor& packed,
                        const detail::CudaPackedSizes& s, const float* sw, const float* bias,
                        const lk::EpilogueClamp& clamp, at::Tensor& out) {
  const lk::WeightOnlyEpilogue<T> epi{out.mutable_data_ptr<T>(), sw, bias, packed.const_data_ptr<uint8_t>(), n, k,
                                      clamp};
  auto stream = at::cuda::getCurrentCUDAStream();
  if (m > kWeightOnlyTiledMaxM) {
    // Exact int8 -> T conversion of the weights, float32 results from cuBLAS.
    const auto wt = packed_weight_view(packed, s).narrow(0, 0, n).narrow(1, 0, k).to(x2.scalar_type());
    const auto acc = std::is_same_v<T, float> ? at::mm(x2, wt.t()) : at::mm(x2, wt.t(), at::kFloat);
    launch_epilogue_typed<float>(acc.const_data_ptr<float>(), acc.stride(0), m, n, epi);
    return;
  }
  const int8_t* w = packed_weights(packed, s);
  if constexpr (std::is_same_v<T, float>) {
    const auto xs = padded_rows(x2, k, s.k16, 4);
    const float* xp = xs.const_data_ptr<float>();
    const int64_t ldx = xs.stride(0);
    auto launch = [&](auto km) {
      constexpr int kM = decltype(km)::value;
      const int64_t col_blocks = s.n16 / lk::kFmaCols, row_blocks = ceil_div(m, kM);
      constexpr int64_t kStep = int64_t{lk::kFmaThreads} * 4;  // k of one block step
      const int64_t steps = ceil_div(s.k16, kStep);
      int64_t splits = split_k_count(col_blocks * row_blocks, steps);
      const int64_t per_split = std::max<int64_t>(1, ceil_div(steps, splits)) * kStep;
      splits = std::max<int64_t>(1, ceil_div(s.k16, per_split));
      at::Tensor partial;
      if (splits > 1) {
        partial = at::empty({splits, m, n}, x2.options().dtype(at::kFloat));
      }
      const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(row_blocks),
                      static_cast<unsigned>(splits));
      lk::weight_only_fma_kernel<kM><<<grid, lk::kFmaThreads, 0, stream>>>(
          xp, ldx, m, w, s.k16, n, epi, per_split, splits > 1 ? partial.mutable_data_ptr<float>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (splits > 1) {
        launch_epilogue_typed<float>(partial.const_data_ptr<float>(), n, m, n, epi, splits, m * n);
      }
    };
    if (m == 1) {
      launch(std::integral_constant<int, 1>{});
    } else if (m == 2) {
      launch(std::integral_constant<int, 2>{});
    } else if (m <= 4) {
      launch(std::integral_constant<int, 4>{});
    } else if (m <= 8) {
      launch(std::integral_constant<int, 8>{});
    } else {
      launch(std::integral_constant<int, 16>{});
    }
  } else {
    const auto xs = padded_rows(x2, k, s.k16, 8);
    const int64_t col_blocks = s.n16 / lk::kMmaCols, row_blocks = ceil_div(m, lk::kMmaRows);
    const int64_t nchunks = ceil_div(s.k16, lk::kMmaChunk);
    int64_t splits = split_k_count(col_blocks * row_blocks, nchunks / lk::kMmaWarps);
    const int64_t per_split = std::max<int64_t>(1, ceil_div(nchunks, splits));
    splits = std::max<int64_t>(1, ceil_div(nchunks, per_split));
    at::Tensor partial;
    if (splits > 1) {
      partial = at::empty({splits, m, n}, x2.options().dtype(at::kFloat));
    }
    const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(row_blocks),
                    static_cast<unsigned>(splits));
    lk::weight_only_mma_kernel<T><<<grid, lk::kMmaThreads, 0, stream>>>(
        xs.const_data_ptr<T>(), xs.stride(0), m, w, s.k16, n, epi, per_split,
        splits > 1 ? partial.mutable_data_ptr<float>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (splits > 1) {
      launch_epilogue_typed<float>(partial.const_data_ptr<float>(), n, m, n, epi, splits, m * n);
    }
  }
}

// ---------------------------------------------------------------------------
// The ops
// ---------------------------------------------------------------------------
at::Tensor int8_mm_cuda(const at::Tensor& input, const at::Tensor& packed, c10::SymInt out_features,
                        const std::optional<at::Tensor>& input_zero_point) {
  const char* op = "int8_mm";
  detail::check_int8_mm_args(op, input, packed, out_features, input_zero_point);
  check_cuda(op, input, "input");
  c10::cuda::CUDAGuard guard(input.device());
  const int64_t m = input.size(0), k = input.size(1), n = out_features.expect_int();
  const detail::CudaPackedSizes s = check_cuda_packed(op, packed, n, k, "out_features", "input.size(1)");
  auto out = at::empty({m, n}, input.options().dtype(at::kLong));
  if (m == 0 || n == 0) {
    return out;
  }
  check_rows(op, m, "input.size(0)");
  const auto a = (k == 0 || input.stride(1) == 1) ? input : input.contiguous();
  const Int8Scratch sc = make_scratch(m, s.k16, a.options());
  const void* zp = nullptr;
  int zp_kind = 0;
  int64_t zp_stride = 0;
  if (input_zero_point.has_value()) {
    // Not range-checked on CUDA (a host read); one element or one per row.
    const auto& z = *input_zero_point;
    zp = z.const_data_ptr();
    zp_kind = z.scalar_type() == at::kInt ? 1 : 2;
    zp_stride = z.numel() == 1 ? 0 : z.stride(0);
  }
  lk::shift_uint8_kernel<<<static_cast<unsigned>(m), lk::kRowThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      a.const_data_ptr<uint8_t>(), a.stride(0), k, s.k16, zp, zp_kind, zp_stride, sc.a8, sc.zx);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const lk::MmEpilogue epi{out.mutable_data_ptr<int64_t>(), sc.zx, packed_rowsums(packed, s),
                           packed.const_data_ptr<uint8_t>(), n, k};
  int8_gemm(sc, m, packed, s, n, epi);
  return out;
}

at::Tensor linear_cuda(const at::Tensor& input, const at::Tensor& packed, const at::Tensor& weight_scale,
                       const std::optional<at::Tensor>& bias, c10::string_view activation,
                       const std::optional<at::Tensor>& input_scale,
                       const std::optional<at::Tensor>& input_zero_point, std::optional<double> clamp_min,
                       std::optional<double> clamp_max) {
  const char* op = "linear";
  const LinearMode mode = detail::check_linear_args(op, input, packed, weight_scale, bias, activation, input_scale,
                                                    input_zero_point, clamp_min, clamp_max);
  const lk::EpilogueClamp clamp{clamp_min.has_value(), clamp_max.has_value(),
                                clamp_min.has_value() ? static_cast<float>(*clamp_min) : 0.f,
                                clamp_max.has_value() ? static_cast<float>(*clamp_max) : 0.f};
  check_cuda(op, input, "input");
  c10::cuda::CUDAGuard guard(input.device());
  const int64_t k = input.size(-1);
  const int64_t n = weight_scale.size(0);
  const detail::CudaPackedSizes s = check_cuda_packed(op, packed, n, k, "weight_scale.size(0)", "input.size(-1)");
  auto sizes = input.sizes().vec();
  sizes.back() = n;
  int64_t m = 1;
  for (size_t d = 0; d + 1 < sizes.size(); ++d) {
    m *= sizes[d];
  }
  auto out = at::empty(sizes, input.options());
  if (m == 0 || n == 0) {
    return out;
  }
  check_rows(op, m, "the number of rows of input");
  auto x2 = input.reshape({m, k});
  if (k > 0 && x2.stride(1) != 1) {
    x2 = x2.contiguous();
  }
  const auto sw = weight_scale.contiguous();
  at::Tensor b;
  if (bias.has_value()) {
    b = bias->scalar_type() == at::kFloat ? bias->contiguous() : bias->to(at::kFloat).contiguous();
  }
  const float* swp = sw.const_data_ptr<float>();
  const float* bp = b.defined() ? b.const_data_ptr<float>() : nullptr;
  Q8_LINEAR_DISPATCH_FLOAT_TYPES(input.scalar_type(), "q8_linear_cuda", [&] {
    if (mode == LinearMode::WeightOnly) {
      linear_weight_only<scalar_t>(x2, m, k, n, packed, s, swp, bp, clamp, out);
    } else {
      linear_int8<scalar_t>(x2, m, k, n, mode, packed, s, swp, bp, input_scale, input_zero_point, clamp, out);
    }
  });
  return out;
}

} // namespace

TORCH_LIBRARY_IMPL(q8, CUDA, m) {
  m.impl("quantize_weight", &quantize_weight_cuda);
  m.impl("pack_weight", &pack_weight_cuda);
  m.impl("unpack_weight", &unpack_weight_cuda);
  m.impl("int8_mm", &int8_mm_cuda);
  m.impl("linear", &linear_cuda);
}

} // namespace q8::cuda
