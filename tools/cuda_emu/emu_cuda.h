// Host emulation of the few CUDA features the adain kernels use, so that the kernel source in
// csrc/cuda can run (slowly) on a machine without a GPU: one OS thread per CUDA thread,
// std::barrier for __syncthreads, a per-warp exchange buffer for shuffles (a divergent shuffle
// deadlocks, like the real thing would misbehave), shared memory as statics, blocks run in turn.
// It checks indexing, reductions, caching and host orchestration; not the memory model, timing,
// alignment faults or anything nvcc-specific. See run.py.
#pragma once
#include <barrier>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <thread>
#include <vector>
#include <cuda_runtime_api.h>   // cudaDeviceProp, cudaError_t
#include <c10/cuda/CUDAException.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct EmuDim { unsigned x = 1, y = 1, z = 1; };
inline thread_local EmuDim threadIdx, blockIdx;
inline EmuDim blockDim, gridDim;

struct EmuWarp {
  std::unique_ptr<std::barrier<>> bar;
  uint64_t val[32];
};
inline std::vector<EmuWarp>* emu_warps = nullptr;
inline std::barrier<>* emu_block_barrier = nullptr;

inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }

template <typename V>
inline V emu_exchange(V v, int src_lane) {
  static_assert(sizeof(V) <= 8);
  EmuWarp& w = (*emu_warps)[threadIdx.x / 32];
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(V));
  w.val[threadIdx.x % 32] = bits;
  w.bar->arrive_and_wait();
  uint64_t got = w.val[src_lane];
  w.bar->arrive_and_wait();
  V out;
  std::memcpy(&out, &got, sizeof(V));
  return out;
}
template <typename V>
inline V __shfl_down_sync(unsigned, V v, int delta, int width = 32) {
  const int lane = threadIdx.x % 32, base = lane / width * width, r = lane - base;
  return emu_exchange(v, r + delta < width ? lane + delta : lane);
}
template <typename V>
inline V __shfl_sync(unsigned, V v, int src, int width = 32) {
  const int lane = threadIdx.x % 32, base = lane / width * width;
  return emu_exchange(v, base + src % width);
}

inline cudaDeviceProp emu_prop_storage{};
inline cudaDeviceProp* emu_props() { return &emu_prop_storage; }

// Per-kernel function attributes, as the runtime keeps them per kernel and device. Every kernel
// is given kEmuStaticSmem bytes of static shared memory (the real ones have 0.5-1.8 KiB), so a
// launcher that ignores static shared memory fails here as it would on a GPU.
constexpr int kEmuStaticSmem = 2048;
constexpr int kEmuDefaultSmem = 48 * 1024;  // static + dynamic per block without the opt-in
inline std::map<const void*, int> emu_max_dynamic;  // kernel -> cudaFuncAttributeMaxDynamicSharedMemorySize
inline int emu_device_index = 0;  // a new index per emulated device: per-device caches start over
inline bool emu_dry_run = false;  // check each launch's limits, execute nothing
inline int64_t emu_launches = 0;

inline void emu_set_device(int sms, int per_sm, int optin) {
  emu_prop_storage.multiProcessorCount = sms;
  emu_prop_storage.sharedMemPerMultiprocessor = per_sm;
  emu_prop_storage.sharedMemPerBlockOptin = optin;
  emu_max_dynamic.clear();
  ++emu_device_index;
}
inline void emu_set_dry_run(bool on) { emu_dry_run = on; }

template <typename K>
inline int emu_max_dynamic_of(K kernel) {
  auto it = emu_max_dynamic.find(reinterpret_cast<const void*>(kernel));
  return it == emu_max_dynamic.end() ? kEmuDefaultSmem - kEmuStaticSmem : it->second;
}
template <typename K>
inline cudaError_t emu_cudaFuncGetAttributes(cudaFuncAttributes* attr, K kernel) {
  *attr = cudaFuncAttributes{};
  attr->sharedSizeBytes = kEmuStaticSmem;
  attr->maxDynamicSharedSizeBytes = emu_max_dynamic_of(kernel);
  attr->maxThreadsPerBlock = 1024;
  return cudaSuccess;
}
template <typename K>
inline cudaError_t emu_cudaFuncSetAttribute(K kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaSuccess;
  if (value < 0 || value + kEmuStaticSmem > emu_prop_storage.sharedMemPerBlockOptin) {
    return cudaErrorInvalidValue;
  }
  emu_max_dynamic[reinterpret_cast<const void*>(kernel)] = value;
  return cudaSuccess;
}
#define EMU_CUDA_CHECK(expr)                                                              \
  do {                                                                                   \
    const cudaError_t emu_status = (expr);                                               \
    TORCH_CHECK(emu_status == cudaSuccess, "emu: ", #expr, " failed: invalid argument"); \
  } while (0)
// Stream capture does not exist here: the relaxed-mode guard is a no-op.
struct EmuCaptureModeGuard {
  explicit EmuCaptureModeGuard(int) {}
};

namespace adain { namespace cuda { alignas(16) inline unsigned char cache_bytes[1 << 20]; } }

// The launch limits of a real device (a GPU answers "invalid argument" or "too many resources"
// past them; the emulation would happily run anything).
template <typename K>
inline void emu_check_launch(K kernel, int64_t grid, int64_t block, size_t smem) {
  TORCH_CHECK(grid >= 1 && grid <= 2147483647, "emu: grid ", grid, " outside [1, 2^31 - 1]");
  TORCH_CHECK(block >= 1 && block <= 1024, "emu: block of ", block, " threads (at most 1024)");
  TORCH_CHECK(block % 32 == 0, "emu: block ", block, " is not whole warps (the emulation needs them)");
  const int64_t max_dynamic = emu_max_dynamic_of(kernel);
  TORCH_CHECK(static_cast<int64_t>(smem) <= max_dynamic, "emu: ", smem,
              " bytes of dynamic shared memory over the kernel's limit of ", max_dynamic,
              " (static ", kEmuStaticSmem, "; opt in with cudaFuncAttributeMaxDynamicSharedMemorySize)");
  TORCH_CHECK(static_cast<int64_t>(smem) + kEmuStaticSmem <= emu_prop_storage.sharedMemPerBlockOptin,
              "emu: shared memory over the device's per-block opt-in");
}

template <typename K, typename P>
inline void emu_launch(K kernel, int64_t grid, int64_t block, size_t smem, const P& params) {
  emu_check_launch(kernel, grid, block, smem);
  ++emu_launches;
  if (emu_dry_run) return;
  TORCH_CHECK(smem <= sizeof(adain::cuda::cache_bytes), "emu: smem over the emulation's buffer");
  blockDim.x = block; gridDim.x = grid;
  std::vector<EmuWarp> warps(block / 32);
  for (auto& w : warps) w.bar = std::make_unique<std::barrier<>>(32);
  std::barrier<> block_bar(block);
  emu_warps = &warps;
  emu_block_barrier = &block_bar;
  std::memset(adain::cuda::cache_bytes, 0xAB, smem);  // garbage, like real shared memory
  std::vector<std::thread> threads;
  for (int64_t t = 0; t < block; ++t) {
    threads.emplace_back([&, t] {
      threadIdx.x = t;
      for (int64_t b = 0; b < grid; ++b) {
        blockIdx.x = b;
        kernel(params);
        block_bar.arrive_and_wait();  // the next block reuses shared memory
      }
    });
  }
  for (auto& th : threads) th.join();
}
