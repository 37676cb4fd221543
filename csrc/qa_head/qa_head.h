// The fused QA head's native kernels: declarations shared by the CPU (qa_head_cpu.cpp) and CUDA
// (qa_head_cuda.cu) implementations of the ops defined in ../schemas.cpp.
//
// Semantics (qa_kernels/ops/qa_head/torch_impl.py is the executable statement of them):
//   mm dtype     = cast_dtype (autocast) if given, else hidden's dtype if weight has it, else fp32;
//                  hidden, weight and bias are rounded to it, products accumulate in fp32.
//   logits_k     = hidden @ weight[k] + bias[k], stored in cast_dtype or hidden's dtype, (B, S) each.
//   target_k[b]  = clamp(positions_k[b], 0, S); a row with target == S is ignored.
//   lse[b, k]    = logsumexp_s logits_k[b, s] (fp32, from the stored logits)
//   side_k       = sum_b valid (lse - logits_k[b, target]) / n_k,  n_k = valid rows or num_items
//   loss         = (side_0 + side_1) / 2;   scale[k] = 1 / (2 n_k)
//   grad_weight_loss[k] = d loss / d weight[k]
//                = scale_k * sum_b valid (sum_s p_k[b, s] hidden[b, s] - hidden[b, target_k[b]]),
//                  p_k[b] = softmax of the stored logits; 0 for a side with no valid row.
//   grad_bias_loss[k] = d loss / d bias[k] = scale_k * sum_b valid (sum_s p_k[b, s] - 1): 0 in exact
//                  arithmetic; sum_s p_k[b, s] is taken from the logsumexp's own running sum.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace qa_kernels {

// (start_logits (B, S), end_logits (B, S), loss () fp32, lse (B, 2) fp32, scale (2,) fp32,
// grad_weight_loss (2, H) fp32, grad_bias_loss (2,) fp32); without labels the last five are empty
// (0,) fp32 tensors, and the last two are empty unless one_pass was asked.
using FwdOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
// (grad_hidden (B, S, H), grad_weight (2, H), grad_bias (2,) fp32); each (0,) when not needed.
using BwdOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// Argument checks with messages that name the argument (the Python API checks first; these guard
// direct calls of torch.ops.qa_kernels_native.*). Defined in qa_head_checks.cpp.
void check_fwd_inputs(const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      const std::optional<at::Tensor>& start_positions,
                      const std::optional<at::Tensor>& end_positions);
void check_bwd_inputs(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& start_logits,
                      const at::Tensor& end_logits, const at::Tensor& lse, const at::Tensor& scale,
                      bool has_loss);

// The dtype the projection multiplies in (see above).
at::ScalarType mm_dtype(const at::Tensor& hidden, const at::Tensor& weight,
                        std::optional<at::ScalarType> cast_dtype);

// hidden's values rounded to this dtype before use: cast_dtype when it is narrower than hidden's
// dtype (autocast over fp32 activations), else hidden's dtype itself (no rounding).
at::ScalarType hidden_round_dtype(const at::Tensor& hidden, std::optional<at::ScalarType> cast_dtype);

// Positions (B,) or (B, 1), int32/int64, as a contiguous (B,) int64 tensor on the same device.
at::Tensor positions_as_int64(const at::Tensor& positions);

// An empty (0,) fp32 tensor on `like`'s device: the placeholder for an absent output.
at::Tensor empty_output(const at::Tensor& like);

}  // namespace qa_kernels
