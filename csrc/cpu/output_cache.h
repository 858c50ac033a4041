// A cache of the CPU kernels' large output blocks (outputs and input gradients of x's size).
//
// Why: glibc serves a block of a few MiB with a fresh mmap and unmaps it when freed, so every call
// of an op in a loop first-touches its outputs again: 512 page faults and 2 MiB of zeroing per
// 2 MiB output. Measured at 16x512x8x8 (one thread, fp32, adain forward + backward against
// torch.compile of the reference): 860 us with the faults pinned away, 1262 us with them; at
// 16x256x128, 881 vs 1486 us (the kernels themselves are at their memory floor). Reusing the
// blocks of the previous call's outputs, freed by then, removes that cost.
//
// What it does: blocks of at least kMinCachedBytes are taken from a free list of blocks of the
// same rounded size, or allocated (2 MiB-aligned and advised for transparent huge pages from
// 4 MiB up, see empty_output); a freed block goes back to its list while the lists hold at most
// the cap (ADAIN_EXT_OUTPUT_CACHE_MB, default 256; 0 turns the cache off), else to the system.
// Blocks are only ever handed out as outputs of these ops, whose kernels write every element.
// Tensors made from it are ordinary resizable CPU tensors (a resize allocates through the cache).
#pragma once

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace adain::cpu {

// Asks for transparent huge pages on the 2 MiB-aligned interior of [data, data + bytes) (blocks of
// 4 MiB and more), before the first touch; ignored where THP is off; ADAIN_EXT_HUGE_PAGES=0: never.
inline void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  static const bool enabled = [] {
    const char* env = std::getenv("ADAIN_EXT_HUGE_PAGES");
    return env == nullptr || env[0] != '0';
  }();
  if (!enabled || bytes < 2 * kHuge) return;
  const auto begin = reinterpret_cast<uintptr_t>(data);
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t last = (begin + bytes) & ~(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
}

class OutputCache final : public c10::Allocator {
 public:
  // Smaller blocks come from the CPU allocator as before: glibc keeps them in its heap.
  static constexpr size_t kMinCachedBytes = size_t(256) << 10;
  static constexpr size_t kGranule = size_t(64) << 10;  // sizes round up to this
  static constexpr size_t kHuge = size_t(2) << 20;

  // The one cache; never destroyed (a tensor freed during exit still finds it).
  static OutputCache& get() {
    static OutputCache* cache = new OutputCache();
    return *cache;
  }

  bool enabled() const { return cap_ > 0; }

  c10::DataPtr allocate(size_t nbytes) override {
    if (cap_ == 0 || nbytes < kMinCachedBytes) return c10::GetCPUAllocator()->allocate(nbytes);
    const size_t size = (nbytes + kGranule - 1) / kGranule * kGranule;
    void* block = take(size);
    if (block == nullptr) block = fresh(size);
    return {block, new Block{this, block, size}, &release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  // Bytes held in the free lists now (tests).
  size_t cached_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return cached_;
  }

 private:
  struct Block {  // the DataPtr's context: its deleter gets only this
    OutputCache* cache;
    void* data;
    size_t size;
  };

  OutputCache() {
    const char* env = std::getenv("ADAIN_EXT_OUTPUT_CACHE_MB");
    cap_ = (env == nullptr ? size_t(256) : static_cast<size_t>(std::strtoull(env, nullptr, 10))) << 20;
  }

  void* take(size_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = free_.find(size);
    if (it == free_.end() || it->second.empty()) return nullptr;
    void* block = it->second.back();
    it->second.pop_back();
    cached_ -= size;
    return block;
  }

  static void* fresh(size_t size) {
    const size_t alignment = size >= 2 * kHuge ? kHuge : 64;
    void* block = nullptr;
    if (posix_memalign(&block, alignment, size) != 0 || block == nullptr) {
      TORCH_CHECK(false, "adain: could not allocate ", size, " bytes for an output");
    }
    advise_huge_pages(block, size);
    return block;
  }

  static void release(void* ctx) {
    const Block block = *static_cast<Block*>(ctx);
    delete static_cast<Block*>(ctx);
    block.cache->give_back(block.data, block.size);
  }

  void give_back(void* data, size_t size) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (cached_ + size <= cap_) {
        free_[size].push_back(data);
        cached_ += size;
        return;
      }
    }
    std::free(data);
  }

  std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t cached_ = 0;
  size_t cap_ = 0;
};

// adain::_cpu_output_cache_bytes: the bytes the cache holds for reuse now (tests).
inline int64_t output_cache_bytes() { return static_cast<int64_t>(OutputCache::get().cached_bytes()); }

}  // namespace adain::cpu
