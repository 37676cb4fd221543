"""Triton kernels (CUDA; CPU tensors through Triton's interpreter, TRITON_INTERPRET=1)."""
