// Meta (fake) kernels of the int8 embedding ops: shapes and dtypes only, with
// symbolic sizes; the same argument checks as the device kernels.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../checks.h"

namespace q8::meta {
namespace {

at::Tensor embedding_meta(const at::Tensor& weight_int8, const at::Tensor& weight_scale, const at::Tensor& indices,
                          std::optional<at::ScalarType> dtype) {
  const auto dt = detail::check_embedding_args("embedding", weight_int8, weight_scale, indices, dtype);
  auto sizes = indices.sym_sizes().vec();
  sizes.push_back(weight_int8.sym_size(1));
  return at::empty_symint(sizes, weight_int8.options().dtype(dt));
}

at::Tensor embedding_bag_meta(const at::Tensor& weight_int8, const at::Tensor& weight_scale, const at::Tensor& indices,
                              const std::optional<at::Tensor>& offsets, c10::string_view mode,
                              const std::optional<at::Tensor>& per_sample_weights, bool include_last_offset,
                              std::optional<int64_t> padding_idx, std::optional<at::ScalarType> dtype) {
  const char* op = "embedding_bag";
  detail::check_embedding_bag_args(op, weight_int8, weight_scale, indices, offsets, mode, per_sample_weights,
                                   include_last_offset, padding_idx);
  const auto dt = detail::check_embedding_dtype(op, dtype);
  return at::empty_symint({detail::embedding_bag_num_bags(indices, offsets, include_last_offset),
                           weight_int8.sym_size(1)},
                          weight_int8.options().dtype(dt));
}

} // namespace

TORCH_LIBRARY_IMPL(q8, Meta, m) {
  m.impl("embedding", &embedding_meta);
  m.impl("embedding_bag", &embedding_bag_meta);
}

} // namespace q8::meta
