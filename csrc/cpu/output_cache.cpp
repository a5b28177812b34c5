// The cache behind cpu_output_like (output_cache.h): an allocator whose freed blocks wait, by size, for
// the next output of the same size, so that they are reused warm instead of faulted in afresh.
#include "output_cache.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/impl/alloc_cpu.h>

#include <mutex>
#include <unordered_map>
#include <vector>

namespace ganfast {
namespace {

class OutputCache final : public at::Allocator {
 public:
  static constexpr size_t kMaxCachedBytes = size_t(256) << 20;

  at::DataPtr allocate(size_t n) override {
    void* p = nullptr;
    if (n > 0) {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.find(n);
      if (it != free_.end() && !it->second.empty()) {
        p = it->second.back();
        it->second.pop_back();
        cached_bytes_ -= n;
      }
    }
    if (p == nullptr) p = c10::alloc_cpu(n);
    return {p, new Block{this, p, n}, &release, at::Device(at::kCPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  static OutputCache& get() {
    static OutputCache* cache = new OutputCache();  // never destroyed: tensors may outlive static destructors
    return *cache;
  }

 private:
  struct Block {
    OutputCache* cache;
    void* data;
    size_t bytes;
  };

  static void release(void* ctx) {  // the deleter of every block: back to the cache, or to the OS when full
    Block* b = static_cast<Block*>(ctx);
    b->cache->put(b->data, b->bytes);
    delete b;
  }

  void put(void* p, size_t n) {
    if (p == nullptr) return;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (n > 0 && cached_bytes_ + n <= kMaxCachedBytes) {
        free_[n].push_back(p);
        cached_bytes_ += n;
        return;
      }
    }
    c10::free_cpu(p);
  }

  std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t cached_bytes_ = 0;
};

}  // namespace

at::Tensor cpu_output_like(const at::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu(), "cpu_output_like: ", t.device(), " tensor");
  if (size_t(t.numel()) * t.element_size() < kCachedOutputBytes)
    return at::empty(t.sizes(), t.options().memory_format(at::MemoryFormat::Contiguous));
  return at::detail::empty_generic(t.sizes(), &OutputCache::get(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   t.scalar_type(), at::MemoryFormat::Contiguous);
}

}  // namespace ganfast
