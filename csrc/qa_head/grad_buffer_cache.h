// The buffer of the CPU backward's grad_hidden: from a one-slot cache of huge-page-advised buffers
// when it is large (the rules, and why: grad_buffer_cache.cpp). QA_KERNELS_CPU_CACHE=0 turns the
// cache off.
#pragma once

#include <ATen/core/Tensor.h>

namespace qa_kernels {

// An uninitialized CPU tensor of `sizes` and `options`, for grad_hidden. Its buffer is reused only
// after the tensor is gone: no aliasing.
at::Tensor empty_grad_hidden(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace qa_kernels
