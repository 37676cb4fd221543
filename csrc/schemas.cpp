// The native ops' schemas: the one place where the `qa_kernels_native` namespace and its ops are
// defined. The kernels register themselves with TORCH_LIBRARY_IMPL (qa_head/qa_head_cpu.cpp: CPU,
// qa_head/qa_head_cuda.cu: CUDA, decode_spans/decode_spans_cpu.cpp: CPU). TORCH_LIBRARY, not
// FRAGMENT: a second definition of the namespace, anywhere in the process, fails at load time.
// Loading this library twice into one process aborts it (duplicate registration):
// qa_kernels/native.py loads it exactly once.
//
// The signatures mirror the Python custom ops qa_kernels::qa_head_fwd / qa_head_bwd
// (qa_kernels/ops/qa_head/op.py) and qa_kernels::decode_spans (qa_kernels/ops/decode_spans/op.py),
// whose native implementations (native_impl.py beside them) call these.
#include <torch/library.h>

TORCH_LIBRARY(qa_kernels_native, m) {
  m.def(
      "qa_head_fwd(Tensor hidden, Tensor weight, Tensor? bias, Tensor? start_positions, Tensor? end_positions, "
      "Tensor? num_items, float? num_items_value, ScalarType? cast_dtype, bool one_pass) "
      "-> (Tensor start_logits, Tensor end_logits, Tensor loss, Tensor lse, Tensor scale, Tensor grad_weight_loss, "
      "Tensor grad_bias_loss)");
  m.def(
      "qa_head_bwd(Tensor? grad_start, Tensor? grad_end, Tensor? grad_loss, Tensor hidden, Tensor weight, "
      "Tensor start_logits, Tensor end_logits, Tensor lse, Tensor scale, Tensor? start_positions, "
      "Tensor? end_positions, ScalarType? cast_dtype, bool needs_grad_hidden, bool needs_grad_weight, "
      "bool needs_grad_bias) -> (Tensor grad_hidden, Tensor grad_weight, Tensor grad_bias)");
  m.def(
      "decode_spans(Tensor start_logits, Tensor end_logits, Tensor? context_mask, int max_answer_len, "
      "int top_k, bool logit_score) -> (Tensor starts, Tensor ends, Tensor scores, Tensor null_scores)");
}
