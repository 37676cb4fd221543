"""One folder per op. Each holds the public function and its checks (``api.py``), the registered
op with its fake kernel and autograd (``op.py``), and one module per implementation
(``<backend>_impl.py``: ``torch``, ``triton``, ``native``), which ``qa_kernels.backend``'s table
names; the head's folder also holds the eager reference (``reference.py``), decode_spans' its
ranking key (``keys.py``)."""
