// CPU kernel of span decoding: qa_kernels_native::decode_spans (schema in ../schemas.cpp), the native
// implementation of the Python op qa_kernels::decode_spans (qa_kernels/ops/decode_spans/api.py
// states the contract; the Triton kernel in triton_impl.py beside it runs the same algorithm, one
// program per row).
//
// Per row, with L = min(max_answer_len, S) and K = top_k (at::parallel_for over rows):
//   a[i], b[j]   the start / end side values: the logits ("logit"), or their probabilities over the
//                row, x = logit where context or i == 0, -10000 elsewhere ("prob"):
//                p = exp(x - max x) / sum exp(x - max x)
//   key(i, j)    (ord(a[i] * b[j]  or  a[i] + b[j]) << 32) - 1 - (i * 2^16 + j); larger is better,
//                ord = float32 bits made order-preserving; unique per span, so the score order
//                and the tie rule (lower start, then lower end) are one integer comparison
//   best[i]      max over the band j = i .. i + L - 1 (both ends in the context) of key(i, j)
//   K rounds     the largest best[i] is the next span; refill best[i] from its band, below it
// Work O(S L + K (S + L)) per row, no S x S buffer; the float math is float32 like the other
// implementations, so scores agree with them to float32 rounding (exp may differ in the last ulp).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

namespace qa_kernels {
namespace {

constexpr int64_t kMaxSequenceLength = 65535;                    // i and j take 16 bits each in a key
constexpr int64_t kNoKey = -9200000000000000000LL;               // below every span's key
constexpr float kMaskedLogit = -10000.0f;                        // transformers' value outside the context
constexpr int64_t kGrainRows = 4;                                // fewest rows worth handing to a thread

// The ranking key of a span: see the header comment and qa_kernels/ops/decode_spans/keys.py.
inline int64_t span_key(float score, int64_t code) {
  if (score == 0.0f) score = 0.0f;                                          // -0.0 -> +0.0
  if (std::isnan(score)) score = std::numeric_limits<float>::quiet_NaN();  // one NaN
  int32_t bits;
  std::memcpy(&bits, &score, sizeof(bits));
  bits ^= (bits >> 31) & 0x7FFFFFFF;  // negative floats: flip the magnitude bits
  return (static_cast<int64_t>(bits) << 32) - 1 - code;
}

inline float key_score(int64_t key) {
  const int64_t hi = (key >> 32) + 1;
  int32_t bits = static_cast<int32_t>(hi);
  bits ^= (bits >> 31) & 0x7FFFFFFF;
  float score;
  std::memcpy(&score, &bits, sizeof(score));
  return score;
}

inline int64_t key_code(int64_t key) {
  const int64_t hi = (key >> 32) + 1;
  return (hi << 32) - 1 - key;  // (hi << 32) cannot overflow: hi < 2^31
}

// values[t] = x[t] ("logit"), or the probability of t over the row with the tokens outside `keep`
// set to -10000 ("prob").
void side_values(const float* x, const uint8_t* keep, int64_t S, bool logit_score, float* values) {
  if (logit_score) {
    std::copy(x, x + S, values);
    return;
  }
  float row_max = -std::numeric_limits<float>::infinity();
  for (int64_t t = 0; t < S; ++t) {
    values[t] = keep[t] ? x[t] : kMaskedLogit;
    row_max = std::max(row_max, values[t]);
  }
  float row_sum = 0.0f;
  for (int64_t t = 0; t < S; ++t) {
    values[t] = std::exp(values[t] - row_max);
    row_sum += values[t];
  }
  for (int64_t t = 0; t < S; ++t) values[t] /= row_sum;
}

// The best key of start i over ends j in [i, j_end) in the context and with key < below.
template <bool kLogitScore>
inline int64_t best_in_band(float a_i, const float* b, const uint8_t* ctx, int64_t i, int64_t j_end,
                            int64_t below) {
  int64_t best = kNoKey;
  for (int64_t j = i; j < j_end; ++j) {
    const int64_t key = span_key(kLogitScore ? a_i + b[j] : a_i * b[j], (i << 16) + j);
    best = (ctx[j] && key < below && key > best) ? key : best;
  }
  return best;
}

template <bool kLogitScore>
void decode_row(const float* s, const float* e, const uint8_t* ctx, int64_t S, int64_t L, int64_t K,
                int64_t* out_start, int64_t* out_end, float* out_score, float* out_null) {
  std::vector<float> a(S), b(S);
  std::vector<uint8_t> keep(ctx, ctx + S);
  keep[0] = 1;  // the first token stays in the softmax: the null answer's probability
  side_values(s, keep.data(), S, kLogitScore, a.data());
  side_values(e, keep.data(), S, kLogitScore, b.data());
  *out_null = kLogitScore ? a[0] + b[0] : a[0] * b[0];

  // best[i], fast path: a float argmax over the band (first maximum = lowest j, and -0.0 == +0.0,
  // exactly the key order) with the ends outside the context at -inf, then one key per start.
  // Rows with a NaN or an infinity, and starts whose best is -inf, take the key path.
  std::vector<int64_t> best(S, kNoKey);
  std::vector<int64_t> ctx_before(S + 1, 0);  // ctx_before[t] = context tokens in [0, t)
  std::vector<float> b_ctx(S);
  bool finite = true;
  for (int64_t t = 0; t < S; ++t) {
    ctx_before[t + 1] = ctx_before[t] + (ctx[t] != 0);
    b_ctx[t] = ctx[t] ? b[t] : -std::numeric_limits<float>::infinity();
    finite = finite && std::isfinite(a[t]) && std::isfinite(b[t]);
  }
  int64_t num_spans = 0;
  for (int64_t i = 0; i < S; ++i) {
    if (!ctx[i]) continue;
    const int64_t j_end = std::min(S, i + L);
    num_spans += ctx_before[j_end] - ctx_before[i];
    const float a_i = a[i];
    float best_v = -std::numeric_limits<float>::infinity();
    int64_t best_j = -1;
    for (int64_t j = i; finite && j < j_end; ++j) {
      const float v = kLogitScore ? a_i + b_ctx[j] : a_i * b_ctx[j];
      if (v > best_v) {
        best_v = v;
        best_j = j;
      }
    }
    best[i] = best_j >= 0 ? span_key(best_v, (i << 16) + best_j)
                          : best_in_band<kLogitScore>(a_i, b.data(), ctx, i, j_end, std::numeric_limits<int64_t>::max());
  }

  const int64_t rounds = std::min(K, num_spans);
  for (int64_t r = 0; r < rounds; ++r) {
    const int64_t i_top = std::max_element(best.begin(), best.end()) - best.begin();
    const int64_t top = best[i_top];
    const int64_t code = key_code(top);
    out_start[r] = code >> 16;
    out_end[r] = code & 0xFFFF;
    out_score[r] = key_score(top);
    best[i_top] = best_in_band<kLogitScore>(a[i_top], b.data(), ctx, i_top, std::min(S, i_top + L), top);
  }
  for (int64_t r = rounds; r < K; ++r) {
    out_start[r] = -1;
    out_end[r] = -1;
    out_score[r] = -std::numeric_limits<float>::infinity();
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> decode_spans_cpu(
    const at::Tensor& start_logits,                   // (B, S) float
    const at::Tensor& end_logits,                     // (B, S) float
    const std::optional<at::Tensor>& context_mask,    // (B, S) bool
    int64_t max_answer_len, int64_t top_k, bool logit_score) {
  TORCH_CHECK(start_logits.dim() == 2, "start_logits must have shape (B, S); got ", start_logits.sizes());
  TORCH_CHECK(end_logits.sizes() == start_logits.sizes(), "start_logits and end_logits must have the same shape (B, S); got ",
              start_logits.sizes(), " and ", end_logits.sizes());
  TORCH_CHECK(start_logits.is_floating_point() && end_logits.is_floating_point(),
              "start_logits and end_logits must be floating-point tensors");
  const int64_t B = start_logits.size(0), S = start_logits.size(1);
  TORCH_CHECK(S >= 1 && S <= kMaxSequenceLength, "decode_spans supports 1 <= S <= ", kMaxSequenceLength, "; got S = ", S);
  TORCH_CHECK(max_answer_len >= 1, "max_answer_len must be >= 1; got ", max_answer_len);
  TORCH_CHECK(top_k >= 1, "top_k must be >= 1; got ", top_k);
  if (context_mask.has_value()) {
    TORCH_CHECK(context_mask->sizes() == start_logits.sizes(), "context_mask must have the logits' shape ",
                start_logits.sizes(), "; got ", context_mask->sizes());
    TORCH_CHECK(context_mask->scalar_type() == at::kBool, "context_mask must be a bool tensor; got ",
                context_mask->scalar_type());
  }
  const int64_t L = std::min(max_answer_len, S);

  const at::Tensor s = start_logits.to(at::kFloat).contiguous();
  const at::Tensor e = end_logits.to(at::kFloat).contiguous();
  const at::Tensor ctx = context_mask.has_value() ? context_mask->contiguous().view(at::kByte)
                                                  : at::ones({B, S}, start_logits.options().dtype(at::kByte));
  const auto int_options = start_logits.options().dtype(at::kLong);
  at::Tensor starts = at::empty({B, top_k}, int_options);
  at::Tensor ends = at::empty({B, top_k}, int_options);
  at::Tensor scores = at::empty({B, top_k}, start_logits.options().dtype(at::kFloat));
  at::Tensor null_scores = at::empty({B}, start_logits.options().dtype(at::kFloat));

  const float* s_ptr = s.const_data_ptr<float>();
  const float* e_ptr = e.const_data_ptr<float>();
  const uint8_t* ctx_ptr = ctx.const_data_ptr<uint8_t>();
  int64_t* starts_ptr = starts.mutable_data_ptr<int64_t>();
  int64_t* ends_ptr = ends.mutable_data_ptr<int64_t>();
  float* scores_ptr = scores.mutable_data_ptr<float>();
  float* null_ptr = null_scores.mutable_data_ptr<float>();
  at::parallel_for(0, B, kGrainRows, [&](int64_t lo, int64_t hi) {
    for (int64_t row = lo; row < hi; ++row) {
      auto decode = logit_score ? decode_row<true> : decode_row<false>;
      decode(s_ptr + row * S, e_ptr + row * S, ctx_ptr + row * S, S, L, top_k, starts_ptr + row * top_k,
             ends_ptr + row * top_k, scores_ptr + row * top_k, null_ptr + row);
    }
  });
  return {starts, ends, scores, null_scores};
}

}  // namespace
}  // namespace qa_kernels

TORCH_LIBRARY_IMPL(qa_kernels_native, CPU, m) { m.impl("decode_spans", &qa_kernels::decode_spans_cpu); }
