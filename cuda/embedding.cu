// CUDA kernels of q8.embedding and q8.embedding_bag (schemas: csrc/ops/embedding.cpp;
// the CPU kernels, whose results these match, are in csrc/ops/cpu/embedding.cpp).
//
// One warp per output row (a lookup or a bag): the lanes walk the embedding
// dimension, each element dequantized as float(q) * scale in float32 (built with
// --fmad=false, so (q * s) * w + acc rounds as on the CPU; the bags add their rows
// in the same order as the CPU, so results are bit-identical). An index outside
// [0, num_embeddings) or an inconsistent offset trips CUDA_KERNEL_ASSERT, the
// device-side assert torch's own embedding gives: nothing is read back to the
// host (no synchronization).
//
// Unverified: compile-checked with nvcc (sm_80, sm_90), never run on a GPU.
#include <algorithm>
#include <cstdint>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include "ops/checks.h"

namespace q8::cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;

enum : int { kSum = 0, kMean = 1, kMax = 2 };

template <typename T, typename index_t>
__global__ void embedding_kernel(const int8_t* __restrict__ table, const float* __restrict__ scale,
                                 const index_t* __restrict__ indices, int64_t n, int64_t rows, int64_t dim,
                                 T* __restrict__ out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (i >= n) {
    return;
  }
  const int lane = threadIdx.x % kWarp;
  const int64_t r = static_cast<int64_t>(indices[i]);
  CUDA_KERNEL_ASSERT(r >= 0 && r < rows && "q8.embedding: index out of range");
  const int8_t* q = table + r * dim;
  const float s = scale[r];
  T* o = out + i * dim;
  if (dim % 4 == 0) {
    // Rows start 4-byte aligned: four codes per load.
    const char4* q4 = reinterpret_cast<const char4*>(q);
    for (int64_t j = lane; j < dim / 4; j += kWarp) {
      const char4 c = q4[j];
      o[4 * j + 0] = static_cast<T>(static_cast<float>(c.x) * s);
      o[4 * j + 1] = static_cast<T>(static_cast<float>(c.y) * s);
      o[4 * j + 2] = static_cast<T>(static_cast<float>(c.z) * s);
      o[4 * j + 3] = static_cast<T>(static_cast<float>(c.w) * s);
    }
  } else {
    for (int64_t j = lane; j < dim; j += kWarp) {
      o[j] = static_cast<T>(static_cast<float>(q[j]) * s);
    }
  }
}

// Bag b: entries [start, end) of the flattened indices: 2-D indices (per_bag > 0)
// or offsets (n_offsets entries; the last bag ends at last_end).
template <typename T, typename index_t>
__global__ void embedding_bag_kernel(const int8_t* __restrict__ table, const float* __restrict__ scale,
                                     const index_t* __restrict__ indices, int64_t n,
                                     const index_t* __restrict__ offsets, int64_t n_offsets, bool include_last_offset,
                                     int64_t per_bag, int64_t bags, int64_t rows, int64_t dim, int mode,
                                     const float* __restrict__ weights, int64_t pad, T* __restrict__ out) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (b >= bags) {
    return;
  }
  const int lane = threadIdx.x % kWarp;
  int64_t start, end;
  if (offsets == nullptr) {
    start = b * per_bag;
    end = start + per_bag;
  } else {
    start = static_cast<int64_t>(offsets[b]);
    const int64_t last_end = include_last_offset ? static_cast<int64_t>(offsets[n_offsets - 1]) : n;
    end = b + 1 < n_offsets ? static_cast<int64_t>(offsets[b + 1]) : last_end;
    CUDA_KERNEL_ASSERT(static_cast<int64_t>(offsets[0]) == 0 && "q8.embedding_bag: offsets[0] must be 0");
    CUDA_KERNEL_ASSERT(start >= 0 && start <= end && end <= n &&
                       "q8.embedding_bag: offsets must be non-decreasing and at most indices.numel()");
  }
  T* o = out + b * dim;
  for (int64_t j = lane; j < dim; j += kWarp) {
    float acc = 0.f;
    int64_t count = 0;
    for (int64_t e = start; e < end; ++e) {
      const int64_t r = static_cast<int64_t>(indices[e]);
      CUDA_KERNEL_ASSERT(r >= 0 && r < rows && "q8.embedding_bag: index out of range");
      if (r == pad) {
        continue;
      }
      const float v = static_cast<float>(table[r * dim + j]) * scale[r];
      if (mode == kMax) {
        acc = count == 0 ? v : fmaxf(acc, v);
      } else if (weights != nullptr) {
        acc = acc + v * weights[e];
      } else {
        acc = acc + v;
      }
      ++count;
    }
    if (mode == kMean && count > 0) {
      acc = acc / static_cast<float>(count);
    }
    o[j] = static_cast<T>(acc);
  }
}

unsigned blocks_for(int64_t rows) {
  return static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

void check_grid(const char* op, int64_t rows, const char* what) {
  TORCH_CHECK(rows <= static_cast<int64_t>(kWarpsPerBlock) * 0x7fffffff, "q8.", op, ": too many ", what,
              " for one launch, got ", rows);
}

at::Tensor embedding_cuda(const at::Tensor& weight_int8, const at::Tensor& weight_scale, const at::Tensor& indices,
                          std::optional<at::ScalarType> dtype) {
  const char* op = "embedding";
  const auto dt = detail::check_embedding_args(op, weight_int8, weight_scale, indices, dtype);
  c10::cuda::CUDAGuard guard(weight_int8.device());
  const int64_t rows = weight_int8.size(0), dim = weight_int8.size(1);
  auto sizes = indices.sizes().vec();
  sizes.push_back(dim);
  auto out = at::empty(sizes, weight_int8.options().dtype(dt));
  const int64_t n = indices.numel();
  if (n == 0 || dim == 0) {
    return out;
  }
  check_grid(op, n, "indices");
  const auto table = weight_int8.contiguous();
  const auto scale = weight_scale.contiguous();
  const auto ix = indices.contiguous();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "q8_embedding_cuda", [&] {
    AT_DISPATCH_INDEX_TYPES(ix.scalar_type(), "q8_embedding_cuda_index", [&] {
      embedding_kernel<scalar_t, index_t><<<blocks_for(n), kWarpsPerBlock * kWarp, 0, stream>>>(
          table.const_data_ptr<int8_t>(), scale.const_data_ptr<float>(), ix.const_data_ptr<index_t>(), n, rows, dim,
          out.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

at::Tensor embedding_bag_cuda(const at::Tensor& weight_int8, const at::Tensor& weight_scale, const at::Tensor& indices,
                              const std::optional<at::Tensor>& offsets, c10::string_view mode,
                              const std::optional<at::Tensor>& per_sample_weights, bool include_last_offset,
                              std::optional<int64_t> padding_idx, std::optional<at::ScalarType> dtype) {
  const char* op = "embedding_bag";
  const auto m = detail::check_embedding_bag_args(op, weight_int8, weight_scale, indices, offsets, mode,
                                                  per_sample_weights, include_last_offset, padding_idx);
  const auto dt = detail::check_embedding_dtype(op, dtype);
  c10::cuda::CUDAGuard guard(weight_int8.device());
  const int64_t rows = weight_int8.size(0), dim = weight_int8.size(1);
  const int64_t bags = detail::embedding_bag_num_bags(indices, offsets, include_last_offset).expect_int();
  const int64_t n = indices.numel();
  const int64_t pad = padding_idx.has_value() ? (*padding_idx < 0 ? *padding_idx + rows : *padding_idx) : -1;
  auto out = at::empty({bags, dim}, weight_int8.options().dtype(dt));
  if (bags == 0 || dim == 0) {
    return out;
  }
  check_grid(op, bags, "bags");
  const auto table = weight_int8.contiguous();
  const auto scale = weight_scale.contiguous();
  const auto ix = indices.contiguous();
  // Offsets in the indices' integer type (a device-side conversion, no sync).
  at::Tensor off;
  if (offsets.has_value()) {
    off = offsets->to(ix.scalar_type()).contiguous();
  }
  at::Tensor psw;
  if (per_sample_weights.has_value()) {
    psw = per_sample_weights->to(at::kFloat).contiguous();
  }
  const int mode_code = m == detail::EmbeddingBagMode::Sum ? kSum : (m == detail::EmbeddingBagMode::Mean ? kMean : kMax);
  const int64_t per_bag = indices.dim() == 2 ? indices.size(1) : 0;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "q8_embedding_bag_cuda", [&] {
    AT_DISPATCH_INDEX_TYPES(ix.scalar_type(), "q8_embedding_bag_cuda_index", [&] {
      embedding_bag_kernel<scalar_t, index_t><<<blocks_for(bags), kWarpsPerBlock * kWarp, 0, stream>>>(
          table.const_data_ptr<int8_t>(), scale.const_data_ptr<float>(), ix.const_data_ptr<index_t>(), n,
          off.defined() ? off.const_data_ptr<index_t>() : nullptr, off.defined() ? off.numel() : 0,
          include_last_offset, per_bag, bags, rows, dim, mode_code,
          psw.defined() ? psw.const_data_ptr<float>() : nullptr, pad, out.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

} // namespace

TORCH_LIBRARY_IMPL(q8, CUDA, m) {
  m.impl("embedding", &embedding_cuda);
  m.impl("embedding_bag", &embedding_bag_cuda);
}

} // namespace q8::cuda
