// Int8 embeddings: lookups in a table of int8 rows with one float32 scale per
// row (the canonical form of q8.quantize_weight). Schemas and the public C++ API.
//   kernels: cpu/embedding.cpp (+ cpu/kernels/embedding_vec.cpp), meta/embedding.cpp,
//            autograd/embedding.cpp, ../../cuda/embedding.cu
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <q8/q8.h>

namespace q8 {

TORCH_LIBRARY_FRAGMENT(q8, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  m.def("embedding(Tensor weight_int8, Tensor weight_scale, Tensor indices, ScalarType? dtype=None) -> Tensor", tags);
  m.def(
      "embedding_bag(Tensor weight_int8, Tensor weight_scale, Tensor indices, Tensor? offsets=None,"
      " str mode=\"sum\", Tensor? per_sample_weights=None, bool include_last_offset=False, int? padding_idx=None,"
      " ScalarType? dtype=None) -> Tensor",
      tags);
}

at::Tensor embedding(
    const at::Tensor& weight_int8,
    const at::Tensor& weight_scale,
    const at::Tensor& indices,
    std::optional<at::ScalarType> dtype) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("q8::embedding", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         std::optional<at::ScalarType>)>();
  return op.call(weight_int8, weight_scale, indices, dtype);
}

at::Tensor embedding_bag(
    const at::Tensor& weight_int8,
    const at::Tensor& weight_scale,
    const at::Tensor& indices,
    const std::optional<at::Tensor>& offsets,
    c10::string_view mode,
    const std::optional<at::Tensor>& per_sample_weights,
    bool include_last_offset,
    std::optional<int64_t> padding_idx,
    std::optional<at::ScalarType> dtype) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("q8::embedding_bag", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&, c10::string_view,
                                         const std::optional<at::Tensor>&, bool, std::optional<int64_t>,
                                         std::optional<at::ScalarType>)>();
  return op.call(weight_int8, weight_scale, indices, offsets, mode, per_sample_weights, include_last_offset,
                 padding_idx, dtype);
}

} // namespace q8
