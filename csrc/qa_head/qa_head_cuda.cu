// CUDA kernels of the fused QA head (registered for the CUDA key of qa_kernels_native::qa_head_*).
// A hand-written peer of the Triton kernels (qa_kernels/ops/qa_head/triton_impl.py), same math, same passes:
//
// Forward (2 launches; 3 with one_pass):
//   logits_kernel    one warp per token row: both dot products over H, written to the two (B, S)
//                    outputs in their dtype.
//   one_pass_logits_kernel   (one_pass, instead of logits_kernel) one block per (b, kOnePassRows
//                    rows): the same per-row dot products, then the block's softmax-weighted sum of
//                    its rows (fp32 partials, shifted by the block's max), re-reading the tile it
//                    just read (from L1/L2).
//   loss_kernel      one block: per-row logsumexp (fp32, from the stored logits), clamp/ignore, the
//                    per-side mean (or sum / num_items), the loss and the gradient scale. The row
//                    sums go warp by warp in a fixed order: deterministic, no host sync.
//   one_pass_combine_kernel  (one_pass) the partials rescaled by exp(max - lse), minus the target
//                    rows, over valid rows in a fixed order, times the scale: d loss / d weight.
// Backward (3 launches):
//   bwd_kernel       one block per (b, kBwdRows rows): d_logits for its rows (shared memory), then
//                    one pass over H writing grad_hidden and fp32 partials of grad_weight / grad_bias.
//   reduce_kernel    sums the partials in a fixed order (twice: grad_weight, grad_bias). No atomics.
//
// Only the headers the kernels need: ATen/cuda/CUDAContext.h would pull in cusparse.h / cublas.h.
#include "qa_head/qa_head.h"

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <cstdint>

namespace qa_kernels {
namespace {

// ------------------------------------------------------------------------------------------------
// Launch configuration, in one place.
// ------------------------------------------------------------------------------------------------
constexpr int kWarp = 32;
constexpr int kLogitsWarps = 8;    // token rows per logits block (one warp each)
constexpr int kLossWarps = 16;     // warps of the single loss block
constexpr int kBwdRows = 32;       // token rows per backward block (one partial each)
constexpr int kBwdThreads = 256;   // threads of a backward block, striding over H
constexpr int kReduceThreads = 256;
constexpr int kOnePassRows = 32;      // token rows per one-pass logits block (one partial each)
constexpr int kOnePassThreads = 256;  // its 8 warps take 4 rows each, then stride over H together
constexpr int kCombineWarps = 8;      // a combine block: 32 columns (a lane each) x 8 warps over rows

// Full-warp butterfly sum: the same order in every call (deterministic).
__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// x rounded to round_t (the autocast dtype) and widened to fp32. With round_t = hidden's dtype (no
// autocast) or fp32 it is exact.
template <typename round_t, typename scalar_t>
__device__ __forceinline__ float rounded(scalar_t x) {
  return static_cast<float>(static_cast<round_t>(static_cast<float>(x)));
}

__device__ __forceinline__ int64_t clamp_target(int64_t pos, int64_t S) {
  return pos < 0 ? 0 : (pos > S ? S : pos);  // S: the ignore index
}

// ------------------------------------------------------------------------------------------------
// Forward
// ------------------------------------------------------------------------------------------------

// One token row's two logits, as one warp computes them (lanes stride over H, then a butterfly
// sum): both logits kernels call this, so the one-pass forward's logits are bitwise the plain one's.
// Every lane returns the full sums.
template <typename out_t, typename scalar_t>
__device__ __forceinline__ float2 row_logits(const scalar_t* __restrict__ row,  // (H,) strided
                                             const float* __restrict__ w,       // (2, H) fp32
                                             const float* __restrict__ bias,    // (2,) fp32, or nullptr
                                             int64_t H, int64_t stride_h, int lane) {
  float acc0 = 0.f, acc1 = 0.f;
  for (int64_t h = lane; h < H; h += kWarp) {
    const float x = rounded<out_t>(row[h * stride_h]);
    acc0 = fmaf(x, w[h], acc0);
    acc1 = fmaf(x, w[H + h], acc1);
  }
  acc0 = warp_sum(acc0);
  acc1 = warp_sum(acc1);
  if (bias != nullptr) {
    acc0 += bias[0];
    acc1 += bias[1];
  }
  return make_float2(acc0, acc1);
}

// start[t] = sum_h round(hidden[t, h]) * w[0, h] + bias[0];  end[t] likewise with w[1], bias[1]
// (t = b * S + s; fp32 accumulation; w and bias already rounded to the mm dtype, fp32).
template <typename scalar_t, typename out_t>
__global__ void logits_kernel(const scalar_t* __restrict__ hidden,  // (B, S, H) strided
                              const float* __restrict__ w,          // (2, H) fp32 contiguous
                              const float* __restrict__ bias,       // (2,) fp32, or nullptr
                              out_t* __restrict__ start, out_t* __restrict__ end,  // (B * S,) each
                              int64_t N, int64_t S, int64_t H,  // sizes
                              int64_t stride_b, int64_t stride_s, int64_t stride_h) {  // strides
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kLogitsWarps + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (t >= N) return;  // whole warps leave together
  const float2 x = row_logits<out_t>(hidden + (t / S) * stride_b + (t % S) * stride_s, w, bias, H, stride_h, lane);
  if (lane == 0) {
    start[t] = static_cast<out_t>(x.x);
    end[t] = static_cast<out_t>(x.y);
  }
}

// The one-pass forward (one_pass with labels). Block (b, j) owns rows s in
// [j * kOnePassRows, (j + 1) * kOnePassRows) of batch row b; p = b * gridDim.y + j. Per side k:
//   x_k[s]          the logits, as logits_kernel computes and stores them (x_k is the stored value)
//   m[p, k]         = max_s x_k[s] over the block's rows; 0 when that is -inf (then every e is 0)
//   acc[p, k, h]    = sum_s exp(x_k[s] - m[p, k]) * round(hidden[b, s, h])        (s ascending)
// so that sum_p exp(m[p, k] - lse[b, k]) * acc[p, k] = sum_s softmax_k[b, s] * hidden[b, s] once
// lse is known (one_pass_combine_kernel). A +inf or NaN logit makes its block's partials NaN, as
// the eager loss and gradients are.
template <typename scalar_t, typename out_t>
__global__ void one_pass_logits_kernel(const scalar_t* __restrict__ hidden,  // (B, S, H) strided
                                       const float* __restrict__ w,          // (2, H) fp32 contiguous
                                       const float* __restrict__ bias,       // (2,) fp32, or nullptr
                                       out_t* __restrict__ start, out_t* __restrict__ end,  // (B, S) each
                                       float* __restrict__ partial_max,      // (P, 2)
                                       float* __restrict__ partial_acc,      // (P, 2, H)
                                       int64_t S, int64_t H,  // sizes
                                       int64_t stride_b, int64_t stride_s, int64_t stride_h) {  // strides
  __shared__ float e[2][kOnePassRows];  // the logits, then exp(x - m)
  __shared__ float block_max[2];
  const int64_t b = blockIdx.x;
  const int64_t s0 = static_cast<int64_t>(blockIdx.y) * kOnePassRows;
  const int64_t p = b * gridDim.y + blockIdx.y;
  const int rows = static_cast<int>(S - s0 < kOnePassRows ? S - s0 : kOnePassRows);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const scalar_t* x_rows = hidden + b * stride_b + s0 * stride_s;

  for (int r = warp; r < kOnePassRows; r += kOnePassThreads / kWarp) {
    float x0 = -INFINITY, x1 = -INFINITY;  // rows past S: weight exp(-inf) = 0
    if (r < rows) {
      const float2 x = row_logits<out_t>(x_rows + r * stride_s, w, bias, H, stride_h, lane);
      const out_t l0 = static_cast<out_t>(x.x), l1 = static_cast<out_t>(x.y);
      if (lane == 0) {
        start[b * S + s0 + r] = l0;
        end[b * S + s0 + r] = l1;
      }
      x0 = static_cast<float>(l0);
      x1 = static_cast<float>(l1);
    }
    if (lane == 0) {
      e[0][r] = x0;
      e[1][r] = x1;
    }
  }
  __syncthreads();
  if (threadIdx.x < 2) {
    float m = -INFINITY;
    for (int r = 0; r < rows; ++r) m = fmaxf(m, e[threadIdx.x][r]);
    if (m == -INFINITY) m = 0.f;  // every logit -inf: shift by 0, so that exp(-inf - m) = 0, not NaN
    block_max[threadIdx.x] = m;
    partial_max[p * 2 + threadIdx.x] = m;
  }
  __syncthreads();
  if (threadIdx.x < 2 * kOnePassRows) {
    const int k = threadIdx.x / kOnePassRows, r = threadIdx.x % kOnePassRows;
    e[k][r] = expf(e[k][r] - block_max[k]);
  }
  __syncthreads();
  // The second sweep over the tile the warps just read (kOnePassRows x H): from L1/L2, not DRAM.
  for (int64_t h = threadIdx.x; h < H; h += kOnePassThreads) {
    float acc0 = 0.f, acc1 = 0.f;
    for (int r = 0; r < rows; ++r) {
      const float x = rounded<out_t>(x_rows[r * stride_s + h * stride_h]);
      acc0 = fmaf(e[0][r], x, acc0);
      acc1 = fmaf(e[1][r], x, acc1);
    }
    partial_acc[(p * 2) * H + h] = acc0;
    partial_acc[(p * 2 + 1) * H + h] = acc1;
  }
}

// Per side k of row b (warp w takes rows w, w + kLossWarps, ...):
//   lse[b, k] = m + log sum_s exp(x_k[b, s] - m),  m = max_s x_k[b, s]
//   nll_k[b]  = lse[b, k] - x_k[b, target_k[b]]   on valid rows (target != S)
// side_k = sum_b nll_k[b] / n_k;  loss = (side_0 + side_1) / 2;  scale[k] = 1 / (2 n_k), with
// n_k = valid rows (mode 0; none: 0/0 = NaN, as eager), num_items_value (1) or *num_items (2).
// With grad_bias_loss: grad_bias_loss[k] = scale_k * sum_b valid (psum_k[b] - 1), 0 for a side with
// no valid row, psum = sum_s exp(x - lse) = (the logsumexp's sum) * exp(m - lse).
template <typename out_t>
__global__ void loss_kernel(const out_t* __restrict__ start, const out_t* __restrict__ end,  // (B, S)
                            const int64_t* __restrict__ start_pos, const int64_t* __restrict__ end_pos,  // (B,)
                            const float* __restrict__ num_items,  // () fp32, read in mode 2
                            float* __restrict__ loss, float* __restrict__ lse, float* __restrict__ scale,
                            float* __restrict__ grad_bias_loss,  // (2,), or nullptr
                            int64_t B, int64_t S, float num_items_value, int mode) {
  __shared__ float warp_nll[kLossWarps][2];
  __shared__ float warp_count[kLossWarps][2];
  __shared__ float warp_psum[kLossWarps][2];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const out_t* logits[2] = {start, end};
  const int64_t* pos[2] = {start_pos, end_pos};
  float nll_sum[2] = {0.f, 0.f}, count[2] = {0.f, 0.f}, psum_sum[2] = {0.f, 0.f};
  for (int64_t b = warp; b < B; b += kLossWarps) {
    for (int k = 0; k < 2; ++k) {
      const out_t* row = logits[k] + b * S;
      float m = -INFINITY;
      for (int64_t s = lane; s < S; s += kWarp) m = fmaxf(m, static_cast<float>(row[s]));
      m = warp_max(m);
      float l = 0.f;
      for (int64_t s = lane; s < S; s += kWarp) l += expf(static_cast<float>(row[s]) - m);
      l = warp_sum(l);
      const float row_lse = m + logf(l);
      if (lane == 0) {
        lse[b * 2 + k] = row_lse;
        const int64_t target = clamp_target(pos[k][b], S);
        if (target != S) {
          nll_sum[k] += row_lse - static_cast<float>(row[target]);
          psum_sum[k] += l * expf(m - row_lse) - 1.f;
          count[k] += 1.f;
        }
      }
    }
  }
  if (lane == 0) {
    for (int k = 0; k < 2; ++k) {
      warp_nll[warp][k] = nll_sum[k];
      warp_count[warp][k] = count[k];
      warp_psum[warp][k] = psum_sum[k];
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float side[2], denom[2];
    for (int k = 0; k < 2; ++k) {
      float nll = 0.f, n = 0.f, psum = 0.f;
      for (int w = 0; w < kLossWarps; ++w) {  // warp order: deterministic
        nll += warp_nll[w][k];
        n += warp_count[w][k];
        psum += warp_psum[w][k];
      }
      denom[k] = mode == 0 ? n : (mode == 1 ? num_items_value : *num_items);
      side[k] = nll / denom[k];
      scale[k] = 0.5f / denom[k];
      if (grad_bias_loss != nullptr) grad_bias_loss[k] = n > 0.f ? psum * scale[k] : 0.f;
    }
    *loss = (side[0] + side[1]) / 2;
  }
}

// grad_weight_loss[k, h] = coef_k * sum over valid rows b of
//     (sum_j exp(m[b, j, k] - lse[b, k]) * acc[b, j, k, h]  -  round(hidden[b, target_k[b], h]))
// with coef_k = scale[k], or 0 for a side with no valid row (its loss is NaN; this gradient is 0).
// Both factors of each product are at most 1 in size (m <= lse), so nothing overflows. Block
// (i, k) takes 32 columns (a lane each) of side k; warp w takes rows b = w, w + kCombineWarps, ...,
// and the warps' sums are added in warp order: the same order on every call, no atomics.
template <typename scalar_t, typename out_t>
__global__ void one_pass_combine_kernel(const scalar_t* __restrict__ hidden,  // (B, S, H) strided
                                        const float* __restrict__ partial_max,  // (B * NB, 2)
                                        const float* __restrict__ partial_acc,  // (B * NB, 2, H)
                                        const float* __restrict__ lse, const float* __restrict__ scale,  // (B, 2), (2,)
                                        const int64_t* __restrict__ start_pos, const int64_t* __restrict__ end_pos,
                                        float* __restrict__ out,  // (2, H)
                                        int64_t B, int64_t NB, int64_t S, int64_t H,  // sizes
                                        int64_t stride_b, int64_t stride_s, int64_t stride_h) {  // strides
  __shared__ float warp_total[kCombineWarps][kWarp];
  __shared__ int warp_valid[kCombineWarps];
  const int k = blockIdx.y;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t h = static_cast<int64_t>(blockIdx.x) * kWarp + lane;
  const int64_t* pos = k == 0 ? start_pos : end_pos;
  float total = 0.f;
  int valid = 0;
  for (int64_t b = warp; b < B; b += kCombineWarps) {
    const int64_t target = clamp_target(pos[b], S);
    if (target == S) continue;  // ignored row (the same for the whole warp)
    valid = 1;
    if (h >= H) continue;
    const float row_lse = lse[b * 2 + k];
    float row = 0.f;
    for (int64_t j = 0; j < NB; ++j) {
      const int64_t p = b * NB + j;
      row = fmaf(expf(partial_max[p * 2 + k] - row_lse), partial_acc[(p * 2 + k) * H + h], row);
    }
    total += row - rounded<out_t>(hidden[b * stride_b + target * stride_s + h * stride_h]);
  }
  warp_total[warp][lane] = total;
  if (lane == 0) warp_valid[warp] = valid;
  __syncthreads();
  if (warp == 0 && h < H) {
    float sum = 0.f;
    int any_valid = 0;
    for (int v = 0; v < kCombineWarps; ++v) {  // warp order: deterministic
      sum += warp_total[v][lane];
      any_valid |= warp_valid[v];
    }
    out[k * H + h] = any_valid ? sum * scale[k] : 0.f;
  }
}

// ------------------------------------------------------------------------------------------------
// Backward
// ------------------------------------------------------------------------------------------------

// Block (b, j) owns rows s in [j * kBwdRows, (j + 1) * kBwdRows) of batch row b; p = b * gridDim.y + j.
//   d_k[s]          = grad_k[b, s] + grad_loss * scale[k] * (exp(x_k[b, s] - lse[b, k]) - [s == target_k]),
//                     the cross-entropy term 0 on ignored rows (fp32, never rounded)
//   grad_hidden[t,h] = d_0[s] * w[0, h] + d_1[s] * w[1, h]
//   partial_w[p,k,h] = sum_s d_k[s] * round(hidden[b, s, h])       (s ascending)
//   partial_b[p, k]  = sum_s d_k[s]
template <typename scalar_t, typename out_t>
__global__ void bwd_kernel(const scalar_t* __restrict__ hidden,  // (B, S, H) strided
                           const float* __restrict__ w,          // (2, H) fp32, rounded to the mm dtype
                           const out_t* __restrict__ start, const out_t* __restrict__ end,  // (B, S) logits
                           const float* __restrict__ grad_start, const float* __restrict__ grad_end,  // (B, S) or null
                           const float* __restrict__ grad_loss,  // () or null (no loss term)
                           const float* __restrict__ lse, const float* __restrict__ scale,  // (B, 2), (2,)
                           const int64_t* __restrict__ start_pos, const int64_t* __restrict__ end_pos,  // (B,)
                           scalar_t* __restrict__ grad_hidden,  // (B, S, H) contiguous, or null
                           float* __restrict__ partial_w,       // (P, 2, H), or null
                           float* __restrict__ partial_b,       // (P, 2), or null
                           int64_t S, int64_t H,  // sizes
                           int64_t stride_b, int64_t stride_s, int64_t stride_h) {  // strides
  __shared__ float d[2][kBwdRows];
  const int64_t b = blockIdx.x;
  const int64_t s0 = static_cast<int64_t>(blockIdx.y) * kBwdRows;
  const int64_t p = b * gridDim.y + blockIdx.y;
  const int64_t rows = S - s0 < kBwdRows ? S - s0 : kBwdRows;

  if (threadIdx.x < 2 * kBwdRows) {
    const int k = threadIdx.x / kBwdRows, r = threadIdx.x % kBwdRows;
    const int64_t s = s0 + r, t = b * S + s;
    float dk = 0.f;
    if (r < rows) {
      const float* g = k == 0 ? grad_start : grad_end;
      if (g != nullptr) dk = g[t];
      if (grad_loss != nullptr) {
        const int64_t target = clamp_target((k == 0 ? start_pos : end_pos)[b], S);
        if (target != S) {
          const float x = static_cast<float>((k == 0 ? start : end)[t]);
          const float prob = expf(x - lse[b * 2 + k]);
          dk += (prob - (s == target ? 1.f : 0.f)) * (scale[k] * *grad_loss);
        }
      }
    }
    d[k][r] = dk;
  }
  __syncthreads();
  if (partial_b != nullptr && threadIdx.x < 2) {
    float sum = 0.f;
    for (int r = 0; r < rows; ++r) sum += d[threadIdx.x][r];
    partial_b[p * 2 + threadIdx.x] = sum;
  }

  const scalar_t* x_rows = hidden + b * stride_b + s0 * stride_s;
  scalar_t* g_rows = grad_hidden != nullptr ? grad_hidden + (b * S + s0) * H : nullptr;
  for (int64_t h = threadIdx.x; h < H; h += kBwdThreads) {
    const float w0 = w[h], w1 = w[H + h];
    float acc0 = 0.f, acc1 = 0.f;
    for (int r = 0; r < rows; ++r) {
      const float d0 = d[0][r], d1 = d[1][r];
      if (g_rows != nullptr) g_rows[r * H + h] = static_cast<scalar_t>(fmaf(d0, w0, d1 * w1));
      if (partial_w != nullptr) {
        const float x = rounded<out_t>(x_rows[r * stride_s + h * stride_h]);
        acc0 = fmaf(d0, x, acc0);
        acc1 = fmaf(d1, x, acc1);
      }
    }
    if (partial_w != nullptr) {
      partial_w[(p * 2) * H + h] = acc0;
      partial_w[(p * 2 + 1) * H + h] = acc1;
    }
  }
}

// out[j] = sum_p partial[p, j]  for p = 0, 1, ..., P - 1 (that order), j < width
template <typename out_t>
__global__ void reduce_kernel(const float* __restrict__ partial,  // (P, width)
                              out_t* __restrict__ out,            // (width,)
                              int64_t P, int64_t width) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kReduceThreads + threadIdx.x;
  if (j >= width) return;
  float acc = 0.f;
  for (int64_t p = 0; p < P; ++p) acc += partial[p * width + j];
  out[j] = static_cast<out_t>(acc);
}

// ------------------------------------------------------------------------------------------------
// Host side: same contract as the CPU kernels (qa_head.h).
// ------------------------------------------------------------------------------------------------

unsigned int blocks(int64_t work, int64_t per_block) {
  return static_cast<unsigned int>((work + per_block - 1) / per_block);
}

const float* data_or_null(const at::Tensor& t) { return t.defined() ? t.const_data_ptr<float>() : nullptr; }

FwdOutputs qa_head_fwd_cuda(const at::Tensor& hidden,  // (B, S, H)
                            const at::Tensor& weight,  // (2, H)
                            const std::optional<at::Tensor>& bias,  // (2,)
                            const std::optional<at::Tensor>& start_positions,  // (B,) or (B, 1)
                            const std::optional<at::Tensor>& end_positions,  // (B,) or (B, 1)
                            const std::optional<at::Tensor>& num_items,  // ()
                            std::optional<double> num_items_value,
                            std::optional<at::ScalarType> cast_dtype,
                            bool one_pass) {  // with labels: also grad_weight_loss and grad_bias_loss
  check_fwd_inputs(hidden, weight, bias, start_positions, end_positions);
  const bool has_labels = start_positions.has_value() && end_positions.has_value();
  one_pass = one_pass && has_labels;
  const c10::cuda::CUDAGuard guard(hidden.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t B = hidden.size(0), S = hidden.size(1), H = hidden.size(2), N = B * S;
  const at::ScalarType mm = mm_dtype(hidden, weight, cast_dtype);
  const at::ScalarType out_dtype = cast_dtype.value_or(hidden.scalar_type());
  const at::Tensor w = weight.to(mm).to(at::kFloat).contiguous();  // (2, H) fp32
  const at::Tensor bias_f = bias.has_value() ? bias->to(mm).to(at::kFloat).contiguous() : at::Tensor();
  at::Tensor start = at::empty({B, S}, hidden.options().dtype(out_dtype));
  at::Tensor end = at::empty({B, S}, hidden.options().dtype(out_dtype));
  const unsigned int s_blocks = blocks(S, kOnePassRows);  // one_pass: partials per batch row
  const at::TensorOptions f32 = hidden.options().dtype(at::kFloat);
  const at::Tensor partial_max = one_pass ? at::empty({B * s_blocks, 2}, f32) : at::Tensor();
  const at::Tensor partial_acc = one_pass ? at::empty({B * s_blocks, 2, H}, f32) : at::Tensor();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hidden.scalar_type(), "qa_head_fwd_cuda", [&] {
    using hidden_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_dtype, "qa_head_fwd_cuda_out", [&] {
      if (N > 0 && one_pass) {
        one_pass_logits_kernel<hidden_t, scalar_t>
            <<<dim3(static_cast<unsigned int>(B), s_blocks), kOnePassThreads, 0, stream>>>(
                hidden.const_data_ptr<hidden_t>(), w.const_data_ptr<float>(), data_or_null(bias_f),
                start.data_ptr<scalar_t>(), end.data_ptr<scalar_t>(), partial_max.data_ptr<float>(),
                partial_acc.data_ptr<float>(), S, H, hidden.stride(0), hidden.stride(1), hidden.stride(2));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      } else if (N > 0) {
        logits_kernel<hidden_t, scalar_t><<<blocks(N, kLogitsWarps), kLogitsWarps * kWarp, 0, stream>>>(
            hidden.const_data_ptr<hidden_t>(), w.const_data_ptr<float>(), data_or_null(bias_f),
            start.data_ptr<scalar_t>(), end.data_ptr<scalar_t>(), N, S, H, hidden.stride(0), hidden.stride(1),
            hidden.stride(2));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  });
  if (!has_labels) {
    return {start, end, empty_output(hidden), empty_output(hidden), empty_output(hidden), empty_output(hidden),
            empty_output(hidden)};
  }

  at::Tensor loss = at::empty({}, f32);
  at::Tensor lse = at::empty({B, 2}, f32);
  at::Tensor scale = at::empty({2}, f32);
  at::Tensor grad_bias_loss = one_pass ? at::empty({2}, f32) : empty_output(hidden);
  const at::Tensor start_pos = positions_as_int64(*start_positions);
  const at::Tensor end_pos = positions_as_int64(*end_positions);
  const at::Tensor num_items_f = num_items.has_value() ? num_items->to(at::kFloat) : at::Tensor();  // stays on device
  const int mode = num_items.has_value() ? 2 : (num_items_value.has_value() ? 1 : 0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_dtype, "qa_head_loss_cuda", [&] {
    loss_kernel<scalar_t><<<1, kLossWarps * kWarp, 0, stream>>>(
        start.const_data_ptr<scalar_t>(), end.const_data_ptr<scalar_t>(), start_pos.const_data_ptr<int64_t>(),
        end_pos.const_data_ptr<int64_t>(), data_or_null(num_items_f), loss.data_ptr<float>(), lse.data_ptr<float>(),
        scale.data_ptr<float>(), one_pass ? grad_bias_loss.data_ptr<float>() : nullptr, B, S,
        static_cast<float>(num_items_value.value_or(1.0)), mode);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (!one_pass) return {start, end, loss, lse, scale, empty_output(hidden), grad_bias_loss};

  at::Tensor grad_weight_loss = at::empty({2, H}, f32);
  if (H > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hidden.scalar_type(), "qa_head_combine_cuda", [&] {
      using hidden_t = scalar_t;
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_dtype, "qa_head_combine_cuda_out", [&] {
        one_pass_combine_kernel<hidden_t, scalar_t><<<dim3(blocks(H, kWarp), 2), kCombineWarps * kWarp, 0, stream>>>(
            hidden.const_data_ptr<hidden_t>(), partial_max.const_data_ptr<float>(),
            partial_acc.const_data_ptr<float>(), lse.const_data_ptr<float>(), scale.const_data_ptr<float>(),
            start_pos.const_data_ptr<int64_t>(), end_pos.const_data_ptr<int64_t>(), grad_weight_loss.data_ptr<float>(),
            B, s_blocks, S, H, hidden.stride(0), hidden.stride(1), hidden.stride(2));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  return {start, end, loss, lse, scale, grad_weight_loss, grad_bias_loss};
}

BwdOutputs qa_head_bwd_cuda(const std::optional<at::Tensor>& grad_start,  // (B, S)
                            const std::optional<at::Tensor>& grad_end,  // (B, S)
                            const std::optional<at::Tensor>& grad_loss,  // ()
                            const at::Tensor& hidden,  // (B, S, H)
                            const at::Tensor& weight,  // (2, H)
                            const at::Tensor& start_logits,  // (B, S)
                            const at::Tensor& end_logits,  // (B, S)
                            const at::Tensor& lse,  // (B, 2) fp32, or (0,)
                            const at::Tensor& scale,  // (2,) fp32, or (0,)
                            const std::optional<at::Tensor>& start_positions,  // (B,)
                            const std::optional<at::Tensor>& end_positions,  // (B,)
                            std::optional<at::ScalarType> cast_dtype, bool needs_grad_hidden,
                            bool needs_grad_weight, bool needs_grad_bias) {
  const bool has_loss = grad_loss.has_value() && lse.numel() > 0;
  check_bwd_inputs(hidden, weight, start_logits, end_logits, lse, scale, has_loss);
  TORCH_CHECK(!has_loss || (start_positions.has_value() && end_positions.has_value()),
              "qa_head_bwd: grad_loss needs start_positions and end_positions");
  const c10::cuda::CUDAGuard guard(hidden.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t B = hidden.size(0), S = hidden.size(1), H = hidden.size(2);
  const unsigned int s_blocks = blocks(S, kBwdRows);
  const int64_t P = B * s_blocks;
  const at::TensorOptions f32 = hidden.options().dtype(at::kFloat);
  const at::ScalarType mm = mm_dtype(hidden, weight, cast_dtype);

  at::Tensor grad_hidden = needs_grad_hidden ? at::empty({B, S, H}, hidden.options()) : empty_output(hidden);
  at::Tensor grad_weight = needs_grad_weight ? at::empty({2, H}, weight.options()) : empty_output(hidden);
  at::Tensor grad_bias = needs_grad_bias ? at::empty({2}, f32) : empty_output(hidden);
  at::Tensor partial_w = needs_grad_weight ? at::empty({P, 2, H}, f32) : at::Tensor();
  at::Tensor partial_b = needs_grad_bias ? at::empty({P, 2}, f32) : at::Tensor();
  if (!(needs_grad_hidden || needs_grad_weight || needs_grad_bias)) return {grad_hidden, grad_weight, grad_bias};

  const at::Tensor w = weight.to(mm).to(at::kFloat).contiguous();
  // Small (B, S) / () tensors in fp32, contiguous: autograd hands gradients over with any strides.
  const at::Tensor gs = grad_start.has_value() ? grad_start->to(at::kFloat).contiguous() : at::Tensor();
  const at::Tensor ge = grad_end.has_value() ? grad_end->to(at::kFloat).contiguous() : at::Tensor();
  const at::Tensor gl = has_loss ? grad_loss->to(at::kFloat) : at::Tensor();
  const at::Tensor start_pos = has_loss ? positions_as_int64(*start_positions) : at::Tensor();
  const at::Tensor end_pos = has_loss ? positions_as_int64(*end_positions) : at::Tensor();
  const at::Tensor start_c = start_logits.contiguous(), end_c = end_logits.contiguous();

  if (P > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hidden.scalar_type(), "qa_head_bwd_cuda", [&] {
      using hidden_t = scalar_t;
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, start_c.scalar_type(), "qa_head_bwd_cuda_out", [&] {
        bwd_kernel<hidden_t, scalar_t><<<dim3(static_cast<unsigned int>(B), s_blocks), kBwdThreads, 0, stream>>>(
            hidden.const_data_ptr<hidden_t>(), w.const_data_ptr<float>(), start_c.const_data_ptr<scalar_t>(),
            end_c.const_data_ptr<scalar_t>(), data_or_null(gs), data_or_null(ge), data_or_null(gl),
            has_loss ? lse.const_data_ptr<float>() : nullptr, has_loss ? scale.const_data_ptr<float>() : nullptr,
            has_loss ? start_pos.const_data_ptr<int64_t>() : nullptr,
            has_loss ? end_pos.const_data_ptr<int64_t>() : nullptr,
            needs_grad_hidden ? grad_hidden.data_ptr<hidden_t>() : nullptr,
            needs_grad_weight ? partial_w.data_ptr<float>() : nullptr,
            needs_grad_bias ? partial_b.data_ptr<float>() : nullptr, S, H, hidden.stride(0), hidden.stride(1),
            hidden.stride(2));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  if (needs_grad_weight) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "qa_head_reduce_cuda", [&] {
      reduce_kernel<scalar_t><<<blocks(2 * H, kReduceThreads), kReduceThreads, 0, stream>>>(
          partial_w.const_data_ptr<float>(), grad_weight.data_ptr<scalar_t>(), P, 2 * H);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  if (needs_grad_bias) {
    reduce_kernel<float><<<1, kReduceThreads, 0, stream>>>(partial_b.const_data_ptr<float>(),
                                                          grad_bias.data_ptr<float>(), P, 2);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {grad_hidden, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(qa_kernels_native, CUDA, m) {
  m.impl("qa_head_fwd", &qa_head_fwd_cuda);
  m.impl("qa_head_bwd", &qa_head_bwd_cuda);
}

}  // namespace qa_kernels
