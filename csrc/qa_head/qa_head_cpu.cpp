// CPU kernels of the fused QA head (registered for the CPU key of qa_kernels_native::qa_head_*).
//
// Where the time goes: hidden (B, S, H) is the only large tensor. The forward reads it once
// (2 fp32 FMAs per element for the logits; with one_pass, 2 more from L1 for the softmax-weighted
// sums that give the weight's gradient). The backward then only writes grad_hidden, reading the
// (B, S) logits; when the logits receive gradients (or without one_pass) it reads hidden once more
// for grad_weight, in the same sweep over the token rows. Everything else is O(B S) or O(H).
// Eager PyTorch spends ~90% of the same work in two skinny `aten::mm` calls (one side of width 2),
// which run far below memory bandwidth.
//
// Structure:
//   micro-kernels   (cpu_micro_kernels.h) on one (forward) or kRows (backward, and the forward's
//                   weighted sums) token rows at a time, fp32 math on fp32 or raw-bf16 rows,
//                   compiled for AVX-512, AVX2+FMA and baseline x86-64.
//   row loaders     fp16 / strided / autocast-rounded rows go through a small fp32 scratch tile;
//                   contiguous fp32 and bf16 rows are read (and their gradients written) in place.
//   drivers         threads take fixed items of token rows from a shared counter; per-item
//                   partials (the forward's weighted sums, the backward's grad_weight) are summed
//                   in item order, so the result is bitwise identical across runs and thread
//                   counts. grad_hidden comes from a one-slot cache of huge-page-advised buffers
//                   (grad_buffer_cache.h).
#include "qa_head/qa_head.h"

#include "qa_head/cpu_micro_kernels.h"
#include "qa_head/grad_buffer_cache.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

namespace qa_kernels {
namespace {

// ------------------------------------------------------------------------------------------------
// The drivers' work split (the micro-kernels' shape: cpu_micro_kernels.h).
// ------------------------------------------------------------------------------------------------
constexpr int64_t kChunkRows = 128;   // token rows per work item and per partial sum: FIXED, never per-thread
constexpr int64_t kGrainRows = 64;    // fewest token rows per thread (loss, d_logits)
constexpr int64_t kGrainH = 256;      // fewest features per thread in the partials' reduction

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Work items [0, n) handed out to the intra-op threads through an atomic counter, not split into
// equal static ranges: on a shared machine a thread that shares its core with another process
// simply takes fewer items instead of holding everyone up. Every item's result depends only on
// the item, so the output bits do not depend on the schedule.
//   WorkQueue queue(n);
//   at::parallel_for(0, queue.workers(), 1, [&](int64_t, int64_t) {
//     for (int64_t i; queue.pop(i);) ...
//   });
class WorkQueue {
 public:
  explicit WorkQueue(int64_t n) : n_(n) {}
  int64_t workers() const { return std::min<int64_t>(at::get_num_threads(), n_); }
  bool pop(int64_t& item) {
    item = next_.fetch_add(1, std::memory_order_relaxed);
    return item < n_;
  }

 private:
  const int64_t n_;
  std::atomic<int64_t> next_{0};
};

// ------------------------------------------------------------------------------------------------
// Row access: fp32 rows in place when possible, else converted into a scratch tile.
// ------------------------------------------------------------------------------------------------

// dst[h] = float(round_to(float(src[h * stride])))   for h < n
// round_to: the autocast dtype the values are rounded to; kFloat (or src's own dtype): none.
template <typename scalar_t>
void load_row(const scalar_t* src, int64_t stride, int64_t n, at::ScalarType round_to, float* dst) {
  if (round_to == c10::CppTypeToScalarType<scalar_t>::value) round_to = at::kFloat;  // exact
  if (std::is_same_v<scalar_t, float> && stride == 1 && round_to == at::kBFloat16) {
    round_through_bf16(reinterpret_cast<const float*>(src), dst, n);
  } else if (std::is_same_v<scalar_t, c10::Half> && stride == 1 && round_to == at::kFloat) {
    half_to_float(reinterpret_cast<const c10::Half*>(src), dst, n);
  } else if (round_to == at::kBFloat16) {
    for (int64_t h = 0; h < n; ++h) dst[h] = static_cast<float>(c10::BFloat16(static_cast<float>(src[h * stride])));
  } else if (round_to == at::kHalf) {
    for (int64_t h = 0; h < n; ++h) dst[h] = static_cast<float>(c10::Half(static_cast<float>(src[h * stride])));
  } else {
    for (int64_t h = 0; h < n; ++h) dst[h] = static_cast<float>(src[h * stride]);
  }
}

// dst[h] = scalar_t(src[h]): the one rounding of a gradient row, at the store.
template <typename scalar_t>
void store_row(const float* src, int64_t n, scalar_t* dst) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    float_to_bf16(src, reinterpret_cast<uint16_t*>(dst), n);
  } else if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    float_to_half(src, dst, n);
  } else {
    for (int64_t h = 0; h < n; ++h) dst[h] = static_cast<scalar_t>(src[h]);
  }
}

// The token rows of hidden (B, S, H), any strides, kRows at a time: in place where the micro-kernels
// read the dtype directly (fp32 or bf16, unit stride, no autocast rounding), else converted to fp32
// in a scratch tile.
template <typename scalar_t>
class HiddenRows {
 public:
  static constexpr bool kHasRaw = std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, c10::BFloat16>;
  // What the micro-kernels take in place of scalar_t: fp32 itself, or bf16's raw bits.
  using raw_t = std::conditional_t<std::is_same_v<scalar_t, c10::BFloat16>, uint16_t, float>;

  HiddenRows(const at::Tensor& hidden, at::ScalarType round_to)
      : base_(hidden.const_data_ptr<scalar_t>()),
        S_(hidden.size(1)),
        H_(hidden.size(2)),
        stride_b_(hidden.stride(0)),
        stride_s_(hidden.stride(1)),
        stride_h_(hidden.stride(2)),
        round_to_(round_to),
        in_place_(kHasRaw && hidden.stride(2) == 1 && (round_to == at::kFloat || round_to == hidden.scalar_type())) {}

  bool in_place() const { return in_place_; }

  // Points rows[r] at token row t0 + r (r < n; rows past n, up to kN, repeat the last one, so the
  // micro-kernels always see kN valid rows). R: raw_t when in place, else float (the rows are
  // converted into scratch, kN * H floats).
  template <int64_t kN, typename R>
  void get(int64_t t0, int64_t n, float* scratch, const R** rows) const {
    for (int64_t r = 0; r < kN; ++r) {
      if (r >= n) {
        rows[r] = rows[n - 1];
        continue;
      }
      const int64_t t = t0 + r;
      const scalar_t* src = base_ + (t / S_) * stride_b_ + (t % S_) * stride_s_;
      if constexpr (std::is_same_v<R, float>) {
        if (in_place_ && std::is_same_v<raw_t, float>) {
          rows[r] = reinterpret_cast<const float*>(src);
        } else {
          load_row(src, stride_h_, H_, round_to_, scratch + r * H_);
          rows[r] = scratch + r * H_;
        }
      } else {
        rows[r] = reinterpret_cast<const R*>(src);
      }
    }
  }

 private:
  const scalar_t* base_;
  int64_t S_, H_, stride_b_, stride_s_, stride_h_;
  at::ScalarType round_to_;
  bool in_place_;
};

// weight (2, H) or bias (2,) rounded to the mm dtype, as a contiguous fp32 tensor.
at::Tensor as_mm_fp32(const at::Tensor& t, at::ScalarType mm) {
  return t.to(mm).to(at::kFloat).contiguous();
}

// ------------------------------------------------------------------------------------------------
// Forward
// ------------------------------------------------------------------------------------------------

// The logit as stored: rounded to the logits' dtype (the loss and the softmax read these values).
float round_to_dtype(float x, at::ScalarType dtype) {
  switch (dtype) {
    case at::kHalf:
      return static_cast<float>(c10::Half(x));
    case at::kBFloat16:
      return static_cast<float>(c10::BFloat16(x));
    default:
      return x;
  }
}

// One step of the online softmax, for one side over a group of n <= kAddRows stored logits x: raises
// the running max m to cover them and sets e[r] = exp(x[r] - m) (0 for a -inf logit and for rows
// past n, which the micro-kernels still see). Returns the factor exp(m_before - m) by which the
// running weighted sum must be multiplied first (1 when the max did not grow).
float online_softmax_step(const float* x, int64_t n, float& m, float* e) {
  float m_new = m;
  for (int64_t r = 0; r < n; ++r) m_new = std::max(m_new, x[r]);
  const float factor = m_new > m ? std::exp(m - m_new) : 1.f;
  m = m_new;
  for (int64_t r = 0; r < kAddRows; ++r) {
    e[r] = r < n && x[r] != -std::numeric_limits<float>::infinity() ? std::exp(x[r] - m) : 0.f;
  }
  return factor;
}

// The one-pass forward's per-item results (item = b * items_per_row + c: the token rows
// [c * kChunkRows, (c + 1) * kChunkRows) of batch row b, clipped to S).
struct OnePassPartials {
  float* acc;  // (items, 2, H): sum over the item's rows s of exp(x_k[s] - m_k) * hidden[s, :]
  float* max;  // (items, 2): m_k, the largest stored logit of side k in the item
};

// start[t] = hidden[t] . w[0] + bias[0],  end[t] = hidden[t] . w[1] + bias[1]   (t < B*S), stored
// rounded to logit_dtype (as fp32 values). With `partials`, the same pass over each row also adds
// it, weighted by its online-softmax weight, to its item's running sums: the softmax-weighted sums
// of hidden that grad_weight_loss needs, without a second read of hidden. The row, just read for
// its logits, is added from L1. Items go to threads through a WorkQueue; each item's results depend
// only on its rows.
template <typename scalar_t>
void forward_rows_cpu(const at::Tensor& hidden,  // (B, S, H)
                      const float* w,             // (2, H) fp32, already rounded to the mm dtype
                      float bias0, float bias1, at::ScalarType round_to, at::ScalarType logit_dtype,
                      float* start, float* end,   // (B * S,) each
                      const OnePassPartials* partials) {
  const int64_t B = hidden.size(0), S = hidden.size(1), H = hidden.size(2);
  const int64_t items_per_row = ceil_div(S, kChunkRows);
  const HiddenRows<scalar_t> rows_of(hidden, round_to);
  using raw_t = typename HiddenRows<scalar_t>::raw_t;
  auto run = [&](auto row_type) {  // R: the element type the micro-kernels read
    using R = decltype(row_type);
    std::vector<float> w_storage;
    const float* wr = weights_for_rows<R>(w, H, w_storage);
    WorkQueue queue(B * items_per_row);
    at::parallel_for(0, queue.workers(), 1, [&](int64_t, int64_t) {
      std::vector<float> scratch(rows_of.in_place() ? 0 : kAddRows * H);
      std::vector<float> acc(partials != nullptr ? 2 * H : 0);  // the item's sums, in the rows' layout
      const R* rows[2 * kAddRows];  // this group's rows, then the next group's (to prefetch)
      float x0[kAddRows], x1[kAddRows], e0[kAddRows], e1[kAddRows];
      for (int64_t item; queue.pop(item);) {
        const int64_t b = item / items_per_row;
        const int64_t t_begin = b * S + (item % items_per_row) * kChunkRows;
        const int64_t t_end = std::min(b * S + S, t_begin + kChunkRows);
        float m0 = -std::numeric_limits<float>::infinity(), m1 = m0;
        std::fill(acc.begin(), acc.end(), 0.f);
        for (int64_t t0 = t_begin; t0 < t_end; t0 += kAddRows) {
          const int64_t n = std::min(kAddRows, t_end - t0);
          rows_of.template get<kAddRows>(t0, n, scratch.data(), rows);
          if (rows_of.in_place() && t0 + kAddRows < t_end) {
            rows_of.template get<kAddRows>(t0 + kAddRows, std::min(kAddRows, t_end - t0 - kAddRows), nullptr,
                                           rows + kAddRows);
          } else {  // scratch rows are in cache already
            std::copy(rows, rows + kAddRows, rows + kAddRows);
          }
          for (int64_t r = 0; r < n; ++r) {  // in memory order, each row prefetching the next
            dot2_rows(rows + r, rows + r + 1, wr, wr + H, H, x0 + r, x1 + r);
            x0[r] = round_to_dtype(x0[r] + bias0, logit_dtype);
            x1[r] = round_to_dtype(x1[r] + bias1, logit_dtype);
            start[t0 + r] = x0[r];
            end[t0 + r] = x1[r];
          }
          if (partials == nullptr) continue;
          const float f0 = online_softmax_step(x0, n, m0, e0), f1 = online_softmax_step(x1, n, m1, e1);
          if (f0 != 1.f) scale_row(acc.data(), f0, H);
          if (f1 != 1.f) scale_row(acc.data() + H, f1, H);
          // The group's rows again, from cache; the next group's are prefetched meanwhile.
          add_weighted_rows(rows, rows + kAddRows, e0, e1, acc.data(), acc.data() + H, H);
        }
        if (partials == nullptr) continue;
        partials->max[2 * item] = m0;
        partials->max[2 * item + 1] = m1;
        float* out = partials->acc + item * 2 * H;
        if constexpr (kPaired<R>) {
          from_paired(acc.data(), H, out);
          from_paired(acc.data() + H, H, out + H);
        } else {
          std::copy(acc.begin(), acc.end(), out);
        }
      }
    });
  };
  if (rows_of.in_place()) {
    run(raw_t{});
  } else {
    run(float{});
  }
}

// grad_weight_loss[k, :] = coef_k * sum_b valid (sum_c exp(max[b, c, k] - lse[b, k]) * acc[b, c, k, :]
//                                               - hidden[b, target_k[b], :])
// (b, then c, ascending, for every element: the bits depend neither on the thread count nor on the
// split over H), coef_k = scale[k], or 0 for a side with no valid row (whose scale is inf).
template <typename scalar_t>
void combine_one_pass_cpu(const at::Tensor& hidden, at::ScalarType round_to,  // (B, S, H)
                          const OnePassPartials& partials, const float* lse,  // (B, 2)
                          const int64_t* const* pos, const float* scale,      // (B,) x 2, (2,)
                          float* out) {                                        // (2, H)
  const int64_t B = hidden.size(0), S = hidden.size(1), H = hidden.size(2);
  const int64_t items_per_row = ceil_div(S, kChunkRows);
  const scalar_t* base = hidden.const_data_ptr<scalar_t>();
  float coef[2];
  for (int k = 0; k < 2; ++k) {
    bool any_valid = false;
    for (int64_t b = 0; b < B && !any_valid; ++b) any_valid = std::clamp<int64_t>(pos[k][b], 0, S) != S;
    coef[k] = any_valid ? scale[k] : 0.f;
  }
  at::parallel_for(0, H, kGrainH, [&](int64_t h0, int64_t h1) {
    std::vector<float> target_row(h1 - h0);
    for (int k = 0; k < 2; ++k) {
      float* o = out + k * H;
      std::fill(o + h0, o + h1, 0.f);
      for (int64_t b = 0; b < B; ++b) {
        const int64_t target = std::clamp<int64_t>(pos[k][b], 0, S);
        if (target == S) continue;  // ignored row
        for (int64_t c = 0; c < items_per_row; ++c) {
          const int64_t item = b * items_per_row + c;
          const float f = std::exp(partials.max[2 * item + k] - lse[2 * b + k]);
          const float* a = partials.acc + (item * 2 + k) * H;
          for (int64_t h = h0; h < h1; ++h) o[h] += f * a[h];
        }
        const scalar_t* src = base + b * hidden.stride(0) + target * hidden.stride(1) + h0 * hidden.stride(2);
        load_row(src, hidden.stride(2), h1 - h0, round_to, target_row.data());
        for (int64_t h = h0; h < h1; ++h) o[h] -= target_row[h - h0];
      }
      for (int64_t h = h0; h < h1; ++h) o[h] *= coef[k];
    }
  });
}

// Per side k of row b:  lse = m + log sum_s exp(x[s] - m)  (m = max_s x[s]);
// nll = lse - x[target] when 0 <= target = clamp(pos, 0, S) < S, else the row is ignored.
// loss = (sum_b nll_0 / n_0 + sum_b nll_1 / n_1) / 2,  scale[k] = 1 / (2 n_k): see qa_head.h.
// With grad_bias_loss: grad_bias_loss[k] = scale_k * sum_b valid (psum_k[b] - 1), 0 for a side with
// no valid row, where psum = sum_s exp(x[s] - lse) = (the logsumexp's sum) * exp(m - lse).
// Row sums are in row order (deterministic); a side with no valid row gives 0 / 0 = NaN.
void loss_cpu(const at::Tensor& start_f, const at::Tensor& end_f,  // (B, S) fp32 contiguous
              const at::Tensor& start_pos, const at::Tensor& end_pos,  // (B,) int64 contiguous
              const std::optional<float>& denominator,  // num_items, or nullopt: the mean
              at::Tensor& loss, at::Tensor& lse, at::Tensor& scale,  // () (B, 2) (2,) fp32
              float* grad_bias_loss) {  // (2,), or nullptr
  const int64_t B = start_f.size(0), S = start_f.size(1);
  const float* x[2] = {start_f.const_data_ptr<float>(), end_f.const_data_ptr<float>()};
  const int64_t* pos[2] = {start_pos.const_data_ptr<int64_t>(), end_pos.const_data_ptr<int64_t>()};
  float* lse_p = lse.data_ptr<float>();
  std::vector<float> psum(2 * B);
  at::parallel_for(0, B, std::max<int64_t>(1, kGrainRows * 16 / S), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      for (int k = 0; k < 2; ++k) {
        const float* row = x[k] + b * S;
        float m = -std::numeric_limits<float>::infinity();
        for (int64_t s = 0; s < S; ++s) m = std::max(m, row[s]);
        float sum = 0.f;
        for (int64_t s = 0; s < S; ++s) sum += std::exp(row[s] - m);
        const float row_lse = m + std::log(sum);
        lse_p[b * 2 + k] = row_lse;
        psum[b * 2 + k] = sum * std::exp(m - row_lse);
      }
    }
  });
  float nll_sum[2] = {0.f, 0.f}, count[2] = {0.f, 0.f}, psum_sum[2] = {0.f, 0.f};
  for (int64_t b = 0; b < B; ++b) {
    for (int k = 0; k < 2; ++k) {
      const int64_t target = std::clamp<int64_t>(pos[k][b], 0, S);
      if (target == S) continue;
      nll_sum[k] += lse_p[b * 2 + k] - x[k][b * S + target];
      psum_sum[k] += psum[b * 2 + k] - 1.f;
      count[k] += 1.f;
    }
  }
  float denom[2];
  for (int k = 0; k < 2; ++k) denom[k] = denominator.has_value() ? *denominator : count[k];
  *loss.data_ptr<float>() = (nll_sum[0] / denom[0] + nll_sum[1] / denom[1]) / 2;
  float* scale_p = scale.data_ptr<float>();
  for (int k = 0; k < 2; ++k) scale_p[k] = 0.5f / denom[k];
  if (grad_bias_loss != nullptr) {
    for (int k = 0; k < 2; ++k) grad_bias_loss[k] = count[k] > 0.f ? psum_sum[k] * scale_p[k] : 0.f;
  }
}

FwdOutputs qa_head_fwd_cpu(const at::Tensor& hidden,  // (B, S, H)
                           const at::Tensor& weight,  // (2, H)
                           const std::optional<at::Tensor>& bias,  // (2,)
                           const std::optional<at::Tensor>& start_positions,  // (B,) or (B, 1)
                           const std::optional<at::Tensor>& end_positions,  // (B,) or (B, 1)
                           const std::optional<at::Tensor>& num_items,  // () any numeric dtype
                           std::optional<double> num_items_value,
                           std::optional<at::ScalarType> cast_dtype,
                           bool one_pass) {  // with labels: grad_weight_loss (same pass), grad_bias_loss
  check_fwd_inputs(hidden, weight, bias, start_positions, end_positions);
  const int64_t B = hidden.size(0), S = hidden.size(1), H = hidden.size(2);
  const bool has_labels = start_positions.has_value() && end_positions.has_value();
  one_pass = one_pass && has_labels;
  const at::ScalarType mm = mm_dtype(hidden, weight, cast_dtype);
  const at::ScalarType out_dtype = cast_dtype.value_or(hidden.scalar_type());
  const at::ScalarType round_to = hidden_round_dtype(hidden, cast_dtype);
  const at::TensorOptions f32 = hidden.options().dtype(at::kFloat);
  const at::Tensor w = as_mm_fp32(weight, mm);  // (2, H) fp32
  float bias0 = 0.f, bias1 = 0.f;
  if (bias.has_value()) {
    const at::Tensor bf = as_mm_fp32(*bias, mm);
    bias0 = bf.const_data_ptr<float>()[0];
    bias1 = bf.const_data_ptr<float>()[1];
  }

  at::Tensor start_f = at::empty({B, S}, f32), end_f = at::empty({B, S}, f32);  // rounded values
  at::Tensor acc_partials, max_partials;
  OnePassPartials partials{};
  if (one_pass) {
    const int64_t items = B * ceil_div(S, kChunkRows);
    acc_partials = at::empty({items, 2, H}, f32);
    max_partials = at::empty({items, 2}, f32);
    partials = {acc_partials.data_ptr<float>(), max_partials.data_ptr<float>()};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hidden.scalar_type(), "qa_head_fwd_cpu", [&] {
    forward_rows_cpu<scalar_t>(hidden, w.const_data_ptr<float>(), bias0, bias1, round_to, out_dtype,
                               start_f.data_ptr<float>(), end_f.data_ptr<float>(), one_pass ? &partials : nullptr);
  });
  at::Tensor start = start_f.to(out_dtype), end = end_f.to(out_dtype);  // exact: already rounded
  if (!has_labels) {
    return {start, end, empty_output(hidden), empty_output(hidden), empty_output(hidden), empty_output(hidden),
            empty_output(hidden)};
  }

  at::Tensor loss = at::empty({}, f32);
  at::Tensor lse = at::empty({B, 2}, f32);
  at::Tensor scale = at::empty({2}, f32);
  std::optional<float> denominator;
  if (num_items.has_value()) {
    denominator = num_items->to(at::kFloat).item<float>();  // a CPU tensor: no device sync
  } else if (num_items_value.has_value()) {
    denominator = static_cast<float>(*num_items_value);
  }
  const at::Tensor pos[2] = {positions_as_int64(*start_positions), positions_as_int64(*end_positions)};
  at::Tensor grad_weight_loss = empty_output(hidden);
  at::Tensor grad_bias_loss = one_pass ? at::empty({2}, f32) : empty_output(hidden);
  loss_cpu(start_f, end_f, pos[0], pos[1], denominator, loss, lse, scale,
           one_pass ? grad_bias_loss.data_ptr<float>() : nullptr);
  if (one_pass) {
    grad_weight_loss = at::empty({2, H}, f32);
    const int64_t* pos_p[2] = {pos[0].const_data_ptr<int64_t>(), pos[1].const_data_ptr<int64_t>()};
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hidden.scalar_type(), "qa_head_fwd_cpu_one_pass", [&] {
      combine_one_pass_cpu<scalar_t>(hidden, round_to, partials, lse.const_data_ptr<float>(), pos_p,
                                     scale.const_data_ptr<float>(), grad_weight_loss.data_ptr<float>());
    });
  }
  return {start, end, loss, lse, scale, grad_weight_loss, grad_bias_loss};
}

// ------------------------------------------------------------------------------------------------
// Backward
// ------------------------------------------------------------------------------------------------

// d[t, k] = grad_logits_k[t] + grad_loss * scale[k] * (exp(x_k[t] - lse[b, k]) - [s == target_k[b]])
// with t = b * S + s; the cross-entropy term is 0 on ignored rows (where, not a product: with no
// valid row the scale is inf). Kept in fp32 (eager rounds it to the logits' dtype).
void d_logits_cpu(const std::optional<at::Tensor>& grad_start, const std::optional<at::Tensor>& grad_end,
                  const std::optional<at::Tensor>& grad_loss, const at::Tensor& start_logits,
                  const at::Tensor& end_logits, const at::Tensor& lse, const at::Tensor& scale,
                  const std::optional<at::Tensor>& start_positions, const std::optional<at::Tensor>& end_positions,
                  bool has_loss, float* d) {  // (B * S, 2) fp32
  const int64_t B = start_logits.size(0), S = start_logits.size(1);
  const at::Tensor g_opt[2] = {grad_start.has_value() ? grad_start->to(at::kFloat).contiguous() : at::Tensor(),
                               grad_end.has_value() ? grad_end->to(at::kFloat).contiguous() : at::Tensor()};
  const float* g[2] = {g_opt[0].defined() ? g_opt[0].const_data_ptr<float>() : nullptr,
                       g_opt[1].defined() ? g_opt[1].const_data_ptr<float>() : nullptr};
  at::Tensor x_t[2], pos_t[2];
  const float* x[2] = {nullptr, nullptr};
  const int64_t* pos[2] = {nullptr, nullptr};
  float coef[2] = {0.f, 0.f};
  const float* lse_p = nullptr;
  if (has_loss) {
    x_t[0] = start_logits.to(at::kFloat).contiguous();
    x_t[1] = end_logits.to(at::kFloat).contiguous();
    pos_t[0] = positions_as_int64(*start_positions);
    pos_t[1] = positions_as_int64(*end_positions);
    const float gl = grad_loss->to(at::kFloat).item<float>();
    const at::Tensor scale_f = scale.contiguous();
    for (int k = 0; k < 2; ++k) {
      x[k] = x_t[k].const_data_ptr<float>();
      pos[k] = pos_t[k].const_data_ptr<int64_t>();
      coef[k] = scale_f.const_data_ptr<float>()[k] * gl;
    }
    lse_p = lse.const_data_ptr<float>();
  }
  at::parallel_for(0, B, std::max<int64_t>(1, kGrainRows / S), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      for (int k = 0; k < 2; ++k) {
        float* dk = d + b * S * 2 + k;
        for (int64_t s = 0; s < S; ++s) dk[2 * s] = g[k] != nullptr ? g[k][b * S + s] : 0.f;
        if (!has_loss) continue;
        const int64_t target = std::clamp<int64_t>(pos[k][b], 0, S);
        if (target == S) continue;  // ignored row
        const float* xk = x[k] + b * S;
        const float row_lse = lse_p[b * 2 + k];
        for (int64_t s = 0; s < S; ++s) {
          dk[2 * s] += (std::exp(xk[s] - row_lse) - (s == target ? 1.f : 0.f)) * coef[k];
        }
      }
    }
  });
}

// For the token rows of fixed chunk c = [c * kChunkRows, (c + 1) * kChunkRows):
//   grad_hidden[t, :]  = d[t, 0] * w[0, :] + d[t, 1] * w[1, :]            (stored in hidden's dtype)
//   partial_w[c, k, :] = sum_{t in c} d[t, k] * hidden[t, :]              (fp32, t ascending)
//   partial_b[c, k]    = sum_{t in c} d[t, k]
// One pass over hidden and grad_hidden. Chunks go to threads through a WorkQueue; each chunk's
// partial depends only on its rows, so the bits depend neither on the thread count nor on timing.
template <typename scalar_t>
void grad_rows_cpu(const at::Tensor& hidden,  // (B, S, H)
                   const float* w,             // (2, H) fp32, rounded to the mm dtype
                   const float* d,             // (B * S, 2) fp32
                   at::ScalarType round_to,
                   scalar_t* grad_hidden,      // (B * S, H) contiguous, or nullptr
                   float* partial_w,           // (num_chunks, 2, H), or nullptr
                   float* partial_b) {         // (num_chunks, 2), or nullptr
  const int64_t N = hidden.size(0) * hidden.size(1), H = hidden.size(2);
  const int64_t num_chunks = ceil_div(N, kChunkRows);
  const HiddenRows<scalar_t> rows_of(hidden, round_to);
  using raw_t = typename HiddenRows<scalar_t>::raw_t;
  auto run = [&](auto row_type) {  // R: the element type the micro-kernels read (and write, in place)
    using R = decltype(row_type);
    // grad_hidden rows are written in place when they have the element type R; else into a fp32
    // scratch tile, then rounded to hidden's dtype.
    constexpr bool kGradInPlace = HiddenRows<scalar_t>::kHasRaw && std::is_same_v<R, raw_t>;
    using G = std::conditional_t<kGradInPlace, R, float>;
    std::vector<float> w_storage;
    const float* wr = weights_for_rows<R>(w, H, w_storage);
    WorkQueue queue(num_chunks);
    at::parallel_for(0, queue.workers(), 1, [&](int64_t, int64_t) {
      std::vector<float> x_scratch(partial_w != nullptr && !rows_of.in_place() ? kRows * H : 0);
      // Rows past the chunk's end (a partial block of kRows) write their (zero) gradient here.
      std::vector<G> g_scratch(grad_hidden != nullptr ? kRows * H : 0);
      // A chunk's partials in the paired layout, unpaired into partial_w when the chunk is done.
      std::vector<float> pw_paired(partial_w != nullptr && kPaired<R> ? 2 * H : 0);
      const R *x_rows[kRows], *next[kRows];
      G* g_rows[kRows];
      float d0[kRows], d1[kRows];
      for (int64_t c; queue.pop(c);) {
        const int64_t t_begin = c * kChunkRows, t_end = std::min(N, t_begin + kChunkRows);
        if (partial_b != nullptr) {
          float b0 = 0.f, b1 = 0.f;
          for (int64_t t = t_begin; t < t_end; ++t) {
            b0 += d[2 * t];
            b1 += d[2 * t + 1];
          }
          partial_b[2 * c] = b0;
          partial_b[2 * c + 1] = b1;
        }
        float* pw = partial_w == nullptr ? nullptr : kPaired<R> ? pw_paired.data() : partial_w + c * 2 * H;
        if (pw != nullptr) std::fill(pw, pw + 2 * H, 0.f);
        for (int64_t t0 = t_begin; t0 < t_end; t0 += kRows) {
          const int64_t n = std::min(kRows, t_end - t0);
          for (int64_t r = 0; r < kRows; ++r) {  // rows past n get d = 0: they add nothing
            d0[r] = r < n ? d[2 * (t0 + r)] : 0.f;
            d1[r] = r < n ? d[2 * (t0 + r) + 1] : 0.f;
          }
          if (grad_hidden != nullptr) {
            for (int64_t r = 0; r < kRows; ++r) {
              g_rows[r] = kGradInPlace && r < n ? reinterpret_cast<G*>(grad_hidden + (t0 + r) * H)
                                                : g_scratch.data() + r * H;
            }
          }
          if (pw != nullptr) {
            rows_of.template get<kRows>(t0, n, x_scratch.data(), x_rows);
            // The chunk's next rows, to prefetch: in place only (as in forward_rows_cpu).
            if (rows_of.in_place() && t0 + kRows < t_end) {
              rows_of.template get<kRows>(t0 + kRows, std::min(kRows, t_end - t0 - kRows), nullptr, next);
            } else {
              std::copy(x_rows, x_rows + kRows, next);
            }
          }
          if (grad_hidden != nullptr && pw != nullptr) {
            grad_rows(x_rows, g_rows, next, d0, d1, wr, wr + H, pw, pw + H, H);
          } else if (grad_hidden != nullptr) {
            grad_hidden_rows(g_rows, d0, d1, wr, wr + H, H);
          } else if (pw != nullptr) {
            grad_weight_rows(x_rows, next, d0, d1, pw, pw + H, H);
          }
          if constexpr (!kGradInPlace) {
            if (grad_hidden != nullptr) {
              for (int64_t r = 0; r < n; ++r) store_row(g_rows[r], H, grad_hidden + (t0 + r) * H);
            }
          }
        }
        if (kPaired<R> && pw != nullptr) {
          from_paired(pw, H, partial_w + c * 2 * H);
          from_paired(pw + H, H, partial_w + c * 2 * H + H);
        }
      }
    });
  };
  if (rows_of.in_place()) {
    run(raw_t{});
  } else {
    run(float{});
  }
}

// out[k, h] = sum_c partial[c, k, h]  for c = 0, 1, ..., num_chunks - 1 (in that order)
void reduce_partials_cpu(const float* partial, int64_t num_chunks, int64_t width,  // (num_chunks, width)
                         float* out) {  // (width,)
  at::parallel_for(0, width, kGrainH, [&](int64_t h0, int64_t h1) {
    std::fill(out + h0, out + h1, 0.f);
    for (int64_t c = 0; c < num_chunks; ++c) add_rows(out + h0, partial + c * width + h0, h1 - h0);
  });
}

BwdOutputs qa_head_bwd_cpu(const std::optional<at::Tensor>& grad_start,  // (B, S)
                           const std::optional<at::Tensor>& grad_end,  // (B, S)
                           const std::optional<at::Tensor>& grad_loss,  // ()
                           const at::Tensor& hidden,  // (B, S, H)
                           const at::Tensor& weight,  // (2, H)
                           const at::Tensor& start_logits,  // (B, S)
                           const at::Tensor& end_logits,  // (B, S)
                           const at::Tensor& lse,  // (B, 2) fp32, or (0,) without labels
                           const at::Tensor& scale,  // (2,) fp32, or (0,) without labels
                           const std::optional<at::Tensor>& start_positions,  // (B,)
                           const std::optional<at::Tensor>& end_positions,  // (B,)
                           std::optional<at::ScalarType> cast_dtype, bool needs_grad_hidden,
                           bool needs_grad_weight, bool needs_grad_bias) {
  const bool has_loss = grad_loss.has_value() && lse.numel() > 0;
  check_bwd_inputs(hidden, weight, start_logits, end_logits, lse, scale, has_loss);
  TORCH_CHECK(!has_loss || (start_positions.has_value() && end_positions.has_value()),
              "qa_head_bwd: grad_loss needs start_positions and end_positions");
  const int64_t B = hidden.size(0), S = hidden.size(1), H = hidden.size(2), N = B * S;
  const int64_t num_chunks = ceil_div(N, kChunkRows);
  const at::ScalarType mm = mm_dtype(hidden, weight, cast_dtype);
  const at::TensorOptions f32 = hidden.options().dtype(at::kFloat);

  at::Tensor grad_hidden = needs_grad_hidden ? empty_grad_hidden({B, S, H}, hidden.options()) : empty_output(hidden);
  at::Tensor partial_w = needs_grad_weight ? at::empty({num_chunks, 2, H}, f32) : at::Tensor();
  at::Tensor partial_b = needs_grad_bias ? at::empty({num_chunks, 2}, f32) : at::Tensor();
  if (needs_grad_hidden || needs_grad_weight || needs_grad_bias) {
    at::Tensor d = at::empty({N, 2}, f32);
    d_logits_cpu(grad_start, grad_end, grad_loss, start_logits, end_logits, lse, scale, start_positions,
                 end_positions, has_loss, d.data_ptr<float>());
    const at::Tensor w = as_mm_fp32(weight, mm);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hidden.scalar_type(), "qa_head_bwd_cpu", [&] {
      grad_rows_cpu<scalar_t>(hidden, w.const_data_ptr<float>(), d.const_data_ptr<float>(),
                              hidden_round_dtype(hidden, cast_dtype),
                              needs_grad_hidden ? grad_hidden.data_ptr<scalar_t>() : nullptr,
                              needs_grad_weight ? partial_w.data_ptr<float>() : nullptr,
                              needs_grad_bias ? partial_b.data_ptr<float>() : nullptr);
    });
  }
  at::Tensor grad_weight = empty_output(hidden), grad_bias = empty_output(hidden);
  if (needs_grad_weight) {
    at::Tensor gw = at::empty({2, H}, f32);
    reduce_partials_cpu(partial_w.const_data_ptr<float>(), num_chunks, 2 * H, gw.data_ptr<float>());
    grad_weight = gw.to(weight.scalar_type());
  }
  if (needs_grad_bias) {
    grad_bias = at::empty({2}, f32);
    reduce_partials_cpu(partial_b.const_data_ptr<float>(), num_chunks, 2, grad_bias.data_ptr<float>());
  }
  return {grad_hidden, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(qa_kernels_native, CPU, m) {
  m.impl("qa_head_fwd", &qa_head_fwd_cpu);
  m.impl("qa_head_bwd", &qa_head_bwd_cpu);
}

}  // namespace qa_kernels
