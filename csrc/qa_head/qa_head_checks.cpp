// Argument checks and dtype rules shared by the CPU and CUDA kernels (declared in qa_head.h).
#include "qa_head/qa_head.h"

#include <ATen/ATen.h>

namespace qa_kernels {
namespace {

bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

void check_positions(const char* name, const std::optional<at::Tensor>& positions, const at::Tensor& hidden) {
  if (!positions.has_value()) return;
  const at::Tensor& p = *positions;
  const int64_t B = hidden.size(0);
  TORCH_CHECK(p.scalar_type() == at::kLong || p.scalar_type() == at::kInt, name,
              " must be an int64 (or int32) tensor; got ", p.scalar_type());
  TORCH_CHECK(p.numel() == B && (p.dim() == 1 || (p.dim() == 2 && p.size(1) == 1)), name, " must have shape (", B,
              ",) or (", B, ", 1) to match hidden's batch of ", B, "; got shape ", p.sizes());
  TORCH_CHECK(p.device() == hidden.device(), name, " must be on hidden's device ", hidden.device(), "; got ",
              p.device());
}

}  // namespace

void check_fwd_inputs(const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      const std::optional<at::Tensor>& start_positions,
                      const std::optional<at::Tensor>& end_positions) {
  TORCH_CHECK(hidden.dim() == 3, "hidden must be 3-D (B, S, H); got shape ", hidden.sizes());
  TORCH_CHECK(is_float_dtype(hidden.scalar_type()), "hidden must be float32, float16 or bfloat16; got ",
              hidden.scalar_type());
  const int64_t H = hidden.size(2);
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == 2 && weight.size(1) == H, "weight must have shape (2, ", H,
              ") for hidden size ", H, "; got shape ", weight.sizes());
  TORCH_CHECK(is_float_dtype(weight.scalar_type()), "weight must be float32, float16 or bfloat16; got ",
              weight.scalar_type());
  TORCH_CHECK(weight.device() == hidden.device(), "weight must be on hidden's device ", hidden.device(), "; got ",
              weight.device());
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == 2, "bias must have shape (2,); got shape ", bias->sizes());
    TORCH_CHECK(is_float_dtype(bias->scalar_type()), "bias must be float32, float16 or bfloat16; got ",
                bias->scalar_type());
    TORCH_CHECK(bias->device() == hidden.device(), "bias must be on hidden's device ", hidden.device(), "; got ",
                bias->device());
  }
  check_positions("start_positions", start_positions, hidden);
  check_positions("end_positions", end_positions, hidden);
}

void check_bwd_inputs(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& start_logits,
                      const at::Tensor& end_logits, const at::Tensor& lse, const at::Tensor& scale,
                      bool has_loss) {
  check_fwd_inputs(hidden, weight, std::nullopt, std::nullopt, std::nullopt);
  const int64_t B = hidden.size(0), S = hidden.size(1);
  TORCH_CHECK(start_logits.sizes() == at::IntArrayRef({B, S}) && end_logits.sizes() == at::IntArrayRef({B, S}),
              "start_logits and end_logits must have shape (", B, ", ", S, "); got ", start_logits.sizes(), " and ",
              end_logits.sizes());
  if (has_loss) {
    TORCH_CHECK(lse.scalar_type() == at::kFloat && lse.sizes() == at::IntArrayRef({B, 2}),
                "lse must be a float32 (", B, ", 2) tensor; got ", lse.scalar_type(), " ", lse.sizes());
    TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.numel() == 2,
                "scale must be a float32 (2,) tensor; got ", scale.scalar_type(), " ", scale.sizes());
  }
}

at::ScalarType mm_dtype(const at::Tensor& hidden, const at::Tensor& weight,
                        std::optional<at::ScalarType> cast_dtype) {
  if (cast_dtype.has_value()) return *cast_dtype;
  return weight.scalar_type() == hidden.scalar_type() ? hidden.scalar_type() : at::kFloat;
}

at::ScalarType hidden_round_dtype(const at::Tensor& hidden, std::optional<at::ScalarType> cast_dtype) {
  if (!cast_dtype.has_value()) return hidden.scalar_type();
  TORCH_CHECK(is_float_dtype(*cast_dtype), "cast_dtype must be float32, float16 or bfloat16; got ", *cast_dtype);
  // Casting to fp32 is exact; to fp16 or bf16 it rounds (fp16 <-> bf16 too: different exponent ranges).
  return *cast_dtype == at::kFloat ? hidden.scalar_type() : *cast_dtype;
}

at::Tensor positions_as_int64(const at::Tensor& positions) {
  return positions.reshape({-1}).to(at::kLong).contiguous();
}

at::Tensor empty_output(const at::Tensor& like) {
  return at::empty({0}, like.options().dtype(at::kFloat));
}

}  // namespace qa_kernels
