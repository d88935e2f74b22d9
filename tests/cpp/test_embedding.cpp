// The int8 embedding ops through the public C++ API (q8/q8.h): lookups and bags
// against plain loops over the dequantized table (double), on every CPU kernel
// family, and the argument / index errors.
#include "q8_test_utils.h"

namespace {

using namespace q8_test;

struct Table {
  at::Tensor w8, ws;
  std::vector<int64_t> q;
  std::vector<float> s;
  int64_t rows, dim;
};

Table make_table(int64_t rows, int64_t dim) {
  const auto w = torch::randn({rows, dim}) * 3;
  auto [w8, ws] = q8::quantize_weight(w);
  return {w8, ws, as_int64s(w8), as_floats(ws), rows, dim};
}

// The dequantized element as the kernels compute it: float(q) * s in float32.
float deq(const Table& t, int64_t r, int64_t j) {
  return static_cast<float>(t.q[r * t.dim + j]) * t.s[r];
}

TEST(Int8Embedding, LookupIsTheDequantizedRowOnEveryFamily) {
  IsaGuard guard;
  torch::manual_seed(3);
  const auto t = make_table(50, 37);
  for (const auto& isa : supported_isas()) {
    q8::set_cpu_isa(isa.c_str());
    for (auto idx_dtype : {at::kLong, at::kInt}) {
      const auto idx = torch::randint(0, 50, {4, 6}, idx_dtype);
      const auto iv = as_int64s(idx);
      for (auto dt : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) {
        const auto out = q8::embedding(t.w8, t.ws, idx, dt);
        ASSERT_EQ(out.sizes(), at::IntArrayRef({4, 6, 37}));
        ASSERT_EQ(out.scalar_type(), dt);
        std::vector<float> want;
        for (int64_t i = 0; i < 24; ++i) {
          for (int64_t j = 0; j < 37; ++j) {
            want.push_back(deq(t, iv[i], j));
          }
        }
        // float -> dtype rounding of the float32 product.
        const auto ref = from_floats(want, {4, 6, 37}, at::kFloat).to(dt);
        EXPECT_TRUE(torch::equal(out, ref)) << isa << " " << dtype_name(dt);
      }
    }
  }
}

TEST(Int8Embedding, DefaultDtypeAndZeroDimIndex) {
  torch::manual_seed(4);
  const auto t = make_table(9, 5);
  const auto out = q8::embedding(t.w8, t.ws, torch::tensor(int64_t{7}));
  ASSERT_EQ(out.scalar_type(), at::kFloat);
  ASSERT_EQ(out.sizes(), at::IntArrayRef({5}));
  for (int64_t j = 0; j < 5; ++j) {
    EXPECT_EQ(out[j].item<float>(), deq(t, 7, j));
  }
  EXPECT_EQ(q8::embedding(t.w8, t.ws, torch::empty({0, 3}, at::kLong)).sizes(), at::IntArrayRef({0, 3, 5}));
}

TEST(Int8Embedding, Errors) {
  const auto t = make_table(9, 5);
  Q8_EXPECT_ERROR(q8::embedding(t.w8, t.ws, torch::tensor({1, 9})), "index 9 (at position 1");
  Q8_EXPECT_ERROR(q8::embedding(t.w8, t.ws, torch::tensor({-1})), "table of 9 rows");
  Q8_EXPECT_ERROR(q8::embedding(t.w8, t.ws, torch::tensor({1.f})), "indices must be int64 or int32");
  Q8_EXPECT_ERROR(q8::embedding(t.w8.to(at::kFloat), t.ws, torch::tensor({1})), "weight_int8 must be a 2-D int8");
  Q8_EXPECT_ERROR(q8::embedding(t.w8, t.ws.slice(0, 0, 8), torch::tensor({1})), "weight_scale must be a 1-D float32");
  Q8_EXPECT_ERROR(q8::embedding(t.w8, t.ws, torch::tensor({1}), at::kInt), "dtype must be torch.float32");
}

// F.embedding_bag on the dequantized table, in double.
std::vector<double> ref_bag(const Table& t, const std::vector<int64_t>& idx, const std::vector<int64_t>& starts,
                            const std::vector<int64_t>& ends, const std::string& mode, const std::vector<float>* psw,
                            int64_t pad) {
  std::vector<double> out;
  for (size_t b = 0; b < starts.size(); ++b) {
    std::vector<double> acc(t.dim, 0.0);
    int64_t count = 0;
    for (int64_t i = starts[b]; i < ends[b]; ++i) {
      const int64_t r = idx[i];
      if (r == pad) {
        continue;
      }
      for (int64_t j = 0; j < t.dim; ++j) {
        const double v = static_cast<double>(deq(t, r, j)) * (psw ? (*psw)[i] : 1.0);
        acc[j] = mode == "max" ? (count == 0 ? v : std::max(acc[j], v)) : acc[j] + v;
      }
      ++count;
    }
    for (int64_t j = 0; j < t.dim; ++j) {
      out.push_back(mode == "mean" && count > 0 ? acc[j] / count : acc[j]);
    }
  }
  return out;
}

void expect_close(const at::Tensor& got, const std::vector<double>& want, const std::string& what) {
  const auto g = as_floats(got.to(at::kFloat));
  ASSERT_EQ(g.size(), want.size()) << what;
  for (size_t i = 0; i < g.size(); ++i) {
    // float32 accumulation of a few terms of magnitude <= ~12.
    EXPECT_NEAR(g[i], want[i], 1e-5 * (1.0 + std::abs(want[i])) * 8) << what << " at " << i;
  }
}

TEST(Int8EmbeddingBag, EveryModeAgainstPlainLoops) {
  IsaGuard guard;
  torch::manual_seed(5);
  const auto t = make_table(30, 21);
  // Bags: [0,3), [3,3) empty, [3,7), [7,12)
  const auto idx = torch::randint(0, 30, {12}, at::kLong);
  auto iv = as_int64s(idx);
  const int64_t pad = iv[4];
  const auto offsets = torch::tensor({0, 3, 3, 7}, at::kInt);
  const std::vector<int64_t> starts{0, 3, 3, 7}, ends{3, 3, 7, 12};
  const auto psw = torch::randn({12});
  const auto pv = as_floats(psw);
  for (const auto& isa : supported_isas()) {
    q8::set_cpu_isa(isa.c_str());
    for (const std::string mode : {"sum", "mean", "max"}) {
      for (std::optional<int64_t> p : {std::optional<int64_t>{}, std::optional<int64_t>{pad},
                                       std::optional<int64_t>{pad - 30}}) {
        const auto out = q8::embedding_bag(t.w8, t.ws, idx, offsets, mode, std::nullopt, false, p);
        ASSERT_EQ(out.sizes(), at::IntArrayRef({4, 21}));
        expect_close(out, ref_bag(t, iv, starts, ends, mode, nullptr, p.has_value() ? pad : -1),
                     isa + " " + mode);
      }
    }
    const auto weighted = q8::embedding_bag(t.w8, t.ws, idx, offsets, "sum", psw, false, std::nullopt, at::kBFloat16);
    ASSERT_EQ(weighted.scalar_type(), at::kBFloat16);
    const auto want = ref_bag(t, iv, starts, ends, "sum", &pv, -1);
    const auto f32 = q8::embedding_bag(t.w8, t.ws, idx, offsets, "sum", psw);
    expect_close(f32, want, isa + " weighted");
    EXPECT_TRUE(torch::equal(weighted, f32.to(at::kBFloat16)));
    // include_last_offset: the last offset ends the last bag (index 11 left out).
    const auto last = q8::embedding_bag(t.w8, t.ws, idx, torch::tensor({0, 3, 3, 7, 11}), "sum", std::nullopt, true);
    expect_close(last, ref_bag(t, iv, starts, {3, 3, 7, 11}, "sum", nullptr, -1), isa + " include_last_offset");
    // 2-D indices: one bag per row.
    const auto two = q8::embedding_bag(t.w8, t.ws, idx.view({3, 4}), std::nullopt, "mean");
    expect_close(two, ref_bag(t, iv, {0, 4, 8}, {4, 8, 12}, "mean", nullptr, -1), isa + " 2-D");
  }
}

TEST(Int8EmbeddingBag, Errors) {
  const auto t = make_table(9, 5);
  const auto idx = torch::tensor({1, 2, 3});
  Q8_EXPECT_ERROR(q8::embedding_bag(t.w8, t.ws, idx, torch::tensor({1, 2})), "offsets[0] must be 0");
  Q8_EXPECT_ERROR(q8::embedding_bag(t.w8, t.ws, idx, torch::tensor({0, 2, 1})), "offsets must be non-decreasing");
  Q8_EXPECT_ERROR(q8::embedding_bag(t.w8, t.ws, idx, torch::tensor({0, 4})), "offsets[-1] must be at most");
  Q8_EXPECT_ERROR(q8::embedding_bag(t.w8, t.ws, idx), "offsets must be given");
  Q8_EXPECT_ERROR(q8::embedding_bag(t.w8, t.ws, idx.view({1, 3}), torch::tensor({0})), "offsets must be None");
  Q8_EXPECT_ERROR(q8::embedding_bag(t.w8, t.ws, idx, torch::tensor({0}), "min"), "mode must be 'sum'");
  Q8_EXPECT_ERROR(q8::embedding_bag(t.w8, t.ws, idx, torch::tensor({0}), "max", torch::ones({3})),
                  "per_sample_weights is only supported with mode='sum'");
  Q8_EXPECT_ERROR(q8::embedding_bag(t.w8, t.ws, idx, torch::tensor({0}), "sum", torch::ones({2})),
                  "per_sample_weights must have the shape of indices");
  Q8_EXPECT_ERROR(q8::embedding_bag(t.w8, t.ws, idx, torch::tensor({0}), "sum", std::nullopt, false, 9),
                  "padding_idx must be in [-num_embeddings, num_embeddings)");
  Q8_EXPECT_ERROR(q8::embedding_bag(t.w8, t.ws, torch::tensor({1, 12}), torch::tensor({0})), "index 12");
  Q8_EXPECT_ERROR(q8::embedding_bag(t.w8, t.ws, idx, torch::empty({0}, at::kLong), "sum", std::nullopt, true),
                  "at least one element with include_last_offset");
}

TEST(Int8EmbeddingBag, BackwardThroughTheFrozenTableRaises) {
  const auto t = make_table(9, 5);
  const auto psw = torch::ones({3}, torch::requires_grad());
  const auto out = q8::embedding_bag(t.w8, t.ws, torch::tensor({1, 2, 3}), torch::tensor({0}), "sum", psw);
  ASSERT_TRUE(out.requires_grad());
  EXPECT_THROW(out.sum().backward(), c10::Error);
  const auto scale = t.ws.clone().requires_grad_(true);
  const auto e = q8::embedding(t.w8, scale, torch::tensor({1}));
  EXPECT_THROW(e.sum().backward(), c10::Error);
}

} // namespace
