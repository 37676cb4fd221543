// The one-slot cache of grad_hidden buffers (declared in grad_buffer_cache.h).
#include "qa_head/grad_buffer_cache.h"

#include <ATen/ATen.h>

#include <cstdlib>
#include <mutex>
#include <string>
#include <utility>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace qa_kernels {
namespace {

// grad_hidden, B*S*H elements written exactly once, is the backward's one big allocation, and on
// CPU its first touch costs more than the writes themselves: glibc serves blocks over 32 MiB with
// a fresh mmap every time, so each step page-faults in (and the kernel zeroes) the whole buffer,
// 12800 faults for bert-large's 50 MB; measured here at ~2x the cost of the writes. Two remedies:
//  * huge pages: on Linux the buffer is advised MADV_HUGEPAGE before its first touch (what torch's
//    THP_MEM_ALLOC_ENABLE=1 does for every allocation): 2 MiB per fault;
//  * a one-slot cache: when a grad_hidden tensor is freed (in training, as soon as the layer below
//    has consumed it), its buffer is kept for the next backward, like the CUDA caching allocator
//    does. At most one buffer is held: a released buffer is kept when the slot is empty or when it
//    is at least as large as the one held (the training-step size wins), and the held buffer
//    serves any request of at least half its size (kMinFill). Both rules keep a smaller steady
//    size from faulting its buffer in afresh (measured: bf16 steps after fp32 ones of the same
//    shape, 25 of 50 MB, with the previous step's gradient still alive, as in pytest-benchmark,
//    faulted every other step). QA_KERNELS_CPU_CACHE=0 turns it off. A buffer is only reused
//    after its tensor is gone: no aliasing.
class GradBufferCache {
 public:
  static constexpr size_t kMinBytes = size_t{4} << 20;  // smaller blocks come from malloc's heap
  static constexpr size_t kHugePage = size_t{2} << 20;
  static constexpr size_t kMinFill = 2;  // the cached buffer serves requests of >= 1/kMinFill its size

  static GradBufferCache& instance() {
    static GradBufferCache* cache = new GradBufferCache();  // leaked: tensors may outlive statics
    return *cache;
  }

  at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    const size_t bytes = static_cast<size_t>(c10::multiply_integers(sizes)) * options.dtype().itemsize();
    if (bytes < kMinBytes) return at::empty(sizes, options);
    auto [data, capacity] = take(bytes);
    if (data == nullptr) {
      data = allocate(bytes);
      capacity = bytes;
    }
    return at::from_blob(
        data, sizes, [this, capacity = capacity](void* p) { give_back(p, capacity); }, options);
  }

 private:
  GradBufferCache() {
    const char* env = std::getenv("QA_KERNELS_CPU_CACHE");
    enabled_ = env == nullptr || std::string(env) != "0";
  }

  static void* allocate(size_t bytes) {
    const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;  // aligned_alloc's rule
    void* data = std::aligned_alloc(kHugePage, rounded);
    TORCH_CHECK(data != nullptr, "qa_head_bwd: out of memory allocating ", bytes, " bytes for grad_hidden");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    madvise(data, rounded, MADV_HUGEPAGE);  // advice only: harmless where THP is off
#endif
    return data;
  }

  // The cached buffer and its capacity when it can hold `bytes` without wasting most of itself.
  std::pair<void*, size_t> take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (cached_ == nullptr || bytes > cached_bytes_ || bytes * kMinFill < cached_bytes_) return {nullptr, 0};
    return {std::exchange(cached_, nullptr), cached_bytes_};
  }

  void give_back(void* data, size_t bytes) {  // bytes: the buffer's capacity
    void* evicted = data;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (enabled_ && (cached_ == nullptr || bytes >= cached_bytes_)) {
        evicted = std::exchange(cached_, data);
        cached_bytes_ = bytes;
      }
    }
    std::free(evicted);
  }

  std::mutex mutex_;
  void* cached_ = nullptr;
  size_t cached_bytes_ = 0;
  bool enabled_ = true;
};

}  // namespace

at::Tensor empty_grad_hidden(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return GradBufferCache::instance().empty(sizes, options);
}

}  // namespace qa_kernels
