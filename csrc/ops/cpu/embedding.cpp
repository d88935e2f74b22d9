// CPU kernels of q8.embedding and q8.embedding_bag (schemas in ../embedding.cpp).
// Rows are gathered and dequantized in one pass (kernels/embedding_vec.cpp, one
// build per CPU family), bags accumulate in float32, and the lookups are split
// across threads with at::parallel_for. Index and offset values are validated
// before anything is computed, with an error naming the bad value.
#include <algorithm>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"
#include "isa.h"
#include "kernels/embedding.h"

namespace q8::cpu {

const EmbeddingKernelTable& embedding_kernels() {
  switch (active_isa()) {
    case Isa::AVX512_VNNI:
    case Isa::AVX512:
      return AVX512::embedding_kernel_table();
    case Isa::AVX_VNNI:
    case Isa::AVX2:
      return AVX2::embedding_kernel_table();
    case Isa::DEFAULT:
      break;
  }
  return DEFAULT::embedding_kernel_table();
}

namespace {

// Output elements per parallel task.
constexpr int64_t kGrainElements = 32768;
// Rows are prefetched this many lookups ahead: a random row of a table larger than
// the caches is a DRAM miss that the hardware prefetchers cannot predict, so
// without it each lookup waits for its row (latency-bound, not bandwidth-bound).
constexpr int64_t kPrefetchDistance = 8;

C10_ALWAYS_INLINE void prefetch_row(const int8_t* row, int64_t bytes, const float* scale) {
  for (int64_t b = 0; b < bytes; b += 64) {
    __builtin_prefetch(row + b, 0, 3);
  }
  __builtin_prefetch(scale, 0, 3);
}

// Reads indices of either integer dtype as int64.
struct IndexReader {
  const int32_t* i32 = nullptr;
  const int64_t* i64 = nullptr;
  explicit IndexReader(const at::Tensor& t) {
    if (t.scalar_type() == at::kInt) {
      i32 = t.const_data_ptr<int32_t>();
    } else {
      i64 = t.const_data_ptr<int64_t>();
    }
  }
  C10_ALWAYS_INLINE int64_t operator[](int64_t i) const { return i64 ? i64[i] : static_cast<int64_t>(i32[i]); }
};

void check_index_values(const char* op, const IndexReader& idx, int64_t n, int64_t rows) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t v = idx[i];
    TORCH_CHECK(v >= 0 && v < rows, "q8.", op, ": index ", v, " (at position ", i,
                " of the flattened indices) is out of range for a table of ", rows, " rows (valid: 0 to ", rows - 1,
                ")");
  }
}

at::Tensor embedding_cpu(const at::Tensor& weight_int8, const at::Tensor& weight_scale, const at::Tensor& indices,
                         std::optional<at::ScalarType> dtype) {
  const char* op = "embedding";
  const auto dt = detail::check_embedding_args(op, weight_int8, weight_scale, indices, dtype);
  const int64_t rows = weight_int8.size(0);
  const int64_t dim = weight_int8.size(1);
  auto sizes = indices.sizes().vec();
  sizes.push_back(dim);
  auto out = at::empty(sizes, weight_int8.options().dtype(dt));
  const int64_t n = indices.numel();
  if (n == 0 || dim == 0) {
    // Index values are still checked when there are any (a table with no columns).
    if (n > 0) {
      const auto ix = indices.contiguous();
      check_index_values(op, IndexReader(ix), n, rows);
    }
    return out;
  }
  const auto ix = indices.contiguous();
  const auto table = weight_int8.contiguous();
  const auto scale = weight_scale.contiguous();
  const IndexReader idx(ix);
  check_index_values(op, idx, n, rows);
  const int8_t* q = table.const_data_ptr<int8_t>();
  const float* s = scale.const_data_ptr<float>();
  char* o = static_cast<char*>(out.mutable_data_ptr());
  const int64_t row_bytes = dim * static_cast<int64_t>(c10::elementSize(dt));
  const auto& k = embedding_kernels();
  at::parallel_for(0, n, std::max<int64_t>(1, kGrainElements / dim), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (i + kPrefetchDistance < end) {
        const int64_t p = idx[i + kPrefetchDistance];
        prefetch_row(q + p * dim, dim, s + p);
      }
      const int64_t r = idx[i];
      k.dequantize_row(dt, q + r * dim, s[r], o + i * row_bytes, dim);
    }
  });
  return out;
}

at::Tensor embedding_bag_cpu(const at::Tensor& weight_int8, const at::Tensor& weight_scale, const at::Tensor& indices,
                             const std::optional<at::Tensor>& offsets, c10::string_view mode,
                             const std::optional<at::Tensor>& per_sample_weights, bool include_last_offset,
                             std::optional<int64_t> padding_idx, std::optional<at::ScalarType> dtype) {
  const char* op = "embedding_bag";
  const auto m = detail::check_embedding_bag_args(op, weight_int8, weight_scale, indices, offsets, mode,
                                                  per_sample_weights, include_last_offset, padding_idx);
  const auto dt = detail::check_embedding_dtype(op, dtype);
  const int64_t rows = weight_int8.size(0);
  const int64_t dim = weight_int8.size(1);
  const int64_t bags = detail::embedding_bag_num_bags(indices, offsets, include_last_offset).expect_int();
  const int64_t n = indices.numel();
  const int64_t pad = padding_idx.has_value() ? (*padding_idx < 0 ? *padding_idx + rows : *padding_idx) : -1;

  const auto ix = indices.contiguous();
  const IndexReader idx(ix);
  check_index_values(op, idx, n, rows);

  // Bag b holds the flattened indices [start(b), end(b)).
  const bool two_d = indices.dim() == 2;
  const int64_t per_bag = two_d ? indices.size(1) : 0;
  at::Tensor off;
  std::optional<IndexReader> offs;
  int64_t last_end = n;
  if (!two_d) {
    off = offsets->contiguous();
    offs.emplace(off);
    const int64_t no = off.numel();
    if (no > 0) {
      TORCH_CHECK((*offs)[0] == 0, "q8.", op, ": offsets[0] must be 0 (the first bag starts at the first index), got ",
                  (*offs)[0]);
    }
    for (int64_t b = 1; b < no; ++b) {
      TORCH_CHECK((*offs)[b] >= (*offs)[b - 1], "q8.", op, ": offsets must be non-decreasing, got offsets[", b - 1,
                  "] = ", (*offs)[b - 1], " and offsets[", b, "] = ", (*offs)[b]);
    }
    if (no > 0) {
      TORCH_CHECK((*offs)[no - 1] <= n, "q8.", op, ": offsets[-1] must be at most the number of indices (", n,
                  "), got ", (*offs)[no - 1]);
    }
    if (include_last_offset) {
      last_end = (*offs)[no - 1];
    }
  }
  auto bag_range = [&](int64_t b) -> std::pair<int64_t, int64_t> {
    if (two_d) {
      return {b * per_bag, (b + 1) * per_bag};
    }
    const int64_t start = (*offs)[b];
    const int64_t end = b + 1 < off.numel() ? (*offs)[b + 1] : last_end;
    return {start, std::max(start, end)};
  };

  auto out = at::empty({bags, dim}, weight_int8.options().dtype(dt));
  if (bags == 0 || dim == 0) {
    return out;
  }
  const auto table = weight_int8.contiguous();
  const auto scale = weight_scale.contiguous();
  at::Tensor psw;
  if (per_sample_weights.has_value()) {
    psw = per_sample_weights->to(at::kFloat).contiguous();
  }
  const float* w = psw.defined() ? psw.const_data_ptr<float>() : nullptr;
  const int8_t* q = table.const_data_ptr<int8_t>();
  const float* s = scale.const_data_ptr<float>();
  char* o = static_cast<char*>(out.mutable_data_ptr());
  const int64_t row_bytes = dim * static_cast<int64_t>(c10::elementSize(dt));
  const bool direct = dt == at::kFloat;  // accumulate in the output row itself
  const auto& k = embedding_kernels();
  const int64_t avg = std::max<int64_t>(1, n / bags);
  at::parallel_for(0, bags, std::max<int64_t>(1, kGrainElements / (dim * avg)), [&](int64_t begin, int64_t end) {
    std::vector<float> buffer(direct ? 0 : dim);
    std::vector<int64_t> rows_buf;
    std::vector<float> weights_buf;
    // The flattened entries of this task's bags, prefetched kPrefetchDistance ahead.
    const int64_t first_entry = bag_range(begin).first;
    const int64_t last_entry = std::max(first_entry, bag_range(end - 1).second);
    int64_t prefetched = first_entry;
    for (int64_t b = begin; b < end; ++b) {
      float* acc = direct ? reinterpret_cast<float*>(o + b * row_bytes) : buffer.data();
      const auto [start, stop] = bag_range(b);
      const int64_t horizon = std::min(last_entry, stop + kPrefetchDistance);
      for (; prefetched < horizon; ++prefetched) {
        const int64_t p = idx[prefetched];
        prefetch_row(q + p * dim, dim, s + p);
      }
      // The bag's rows (padding left out) and weights, then one register-blocked pass.
      rows_buf.clear();
      weights_buf.clear();
      for (int64_t i = start; i < stop; ++i) {
        const int64_t r = idx[i];
        if (r == pad) {
          continue;
        }
        rows_buf.push_back(r);
        if (w != nullptr) {
          weights_buf.push_back(w[i]);
        }
      }
      const int64_t count = static_cast<int64_t>(rows_buf.size());
      k.bag_reduce(m == detail::EmbeddingBagMode::Max, q, s, dim, rows_buf.data(),
                   w != nullptr ? weights_buf.data() : nullptr, count, acc);
      const bool divide = m == detail::EmbeddingBagMode::Mean && count > 0;
      if (!direct || divide) {
        k.store_row(dt, acc, divide, static_cast<float>(count), o + b * row_bytes, dim);
      }
    }
  });
  return out;
}

} // namespace

TORCH_LIBRARY_IMPL(q8, CPU, m) {
  m.impl("embedding", &embedding_cpu);
  m.impl("embedding_bag", &embedding_bag_cpu);
}

} // namespace q8::cpu
