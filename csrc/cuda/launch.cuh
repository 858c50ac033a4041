// The CUDA kernels behind every adain op, their launch geometry and their launchers. Each op's
// .cu file (mean_std_kernel.cu, affine_kernel.cu, fused_kernel.cu) composes these and instantiates
// only what it uses.
//
// A "row" is one (n, c) plane of H*W = L elements; R = N*C rows. Three paths:
//
// 1. rows path, contiguous input (contig_rows_kernel): a group of `group` threads owns a row.
//    group is a power of two chosen for about kSlotsPerThread 16-byte slots per thread: tiny rows
//    are packed several per warp (sub-warp shuffles), long rows get a whole block (up to 1024
//    threads). Statistics, then the per-row coefficients, then the output, all in one launch; the
//    row's slots are kept in shared memory between the two sweeps (up to a per-block budget), so
//    x is read from DRAM once. The fused op also reduces the style row in the same launch.
// 2. split path, contiguous input with few long rows (R < 2 * SMs and L >= kSplitMinLen): each
//    row is cut into segments, one per group/block. Launch 1 writes one partial state per
//    segment; launch 2 (finalize_rows_kernel, one thread per row) merges a row's partials in a
//    fixed order with welford_merge and writes the statistics and the row's coefficients;
//    launch 3 applies them. x is read twice (the second read hits L2 only when the tensor fits).
// 3. channels_last (cl_partial_kernel, finalize_rows_kernel, cl_apply_kernel): threads span
//    channels (VEC channels per thread, one 16-byte load) and positions; a block owns a tile of
//    channels x a segment of positions, reduces its positions column-wise in shared memory, and
//    writes per-channel partials; finalize and apply as in the split path.
//
// Path 1 and the contiguous half of path 2 live in rows_kernels.cuh, path 3 in
// channels_last_kernels.cuh, their parameters in params.cuh and the row math in ../row_math.h; this
// file holds the host side: the device's limits, the geometry of each path, the launchers, the
// record of the path an op took, and run_row_op, which picks the path.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <mutex>
#include <vector>

#include "checks.h"
#include "cuda/channels_last_kernels.cuh"
#include "cuda/params.cuh"
#include "cuda/rows_kernels.cuh"

namespace adain {
namespace cuda {

// ---- Host side: geometry and launchers.

// Few long rows are split across blocks below this many rows per SM ...
constexpr int64_t kSplitRowsPerSM = 2;
// ... when a row has at least this many elements (shorter rows are cheap on one block anyway).
constexpr int64_t kSplitMinLen = 16384;
// A split segment has at least this many elements (a block's worth of 16-byte loads, 4 deep).
constexpr int64_t kMinSegment = 4096;
// Blocks to aim for: this many per SM.
constexpr int64_t kBlocksPerSM = 4;
// Shared-memory row cache per block. Rows that fit in kCacheBudget (and in half an SM's shared
// memory) are cached whole with two blocks per SM. Longer rows get as much as one block may take
// (one block per SM): what does not fit is read again right after the first sweep, from L2, and
// one block per SM keeps that in-flight remainder small next to L2.
constexpr int64_t kCacheBudget = 96 * 1024;

// A row gets about this many 16-byte slots per thread (sets the group size).
constexpr int kSlotsPerThread = 4;

struct Device {
  int64_t sms;
  int64_t cache_budget;      // bytes of row cache per block at two blocks per SM
  int64_t cache_budget_max;  // bytes of row cache a single block may take
};

inline Device device_info() {
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  Device dev;
  dev.sms = prop->multiProcessorCount;
  const int64_t per_sm = static_cast<int64_t>(prop->sharedMemPerMultiprocessor);
  const int64_t per_block = static_cast<int64_t>(prop->sharedMemPerBlockOptin);
  // Leave room for the reduction scratch (static) and the 1 KiB the runtime reserves per block.
  dev.cache_budget = std::max<int64_t>(0, std::min({kCacheBudget, per_sm / 2 - 4096, per_block - 4096}));
  dev.cache_budget_max = std::max<int64_t>(0, std::min(per_sm, per_block) - 4096);
  dev.cache_budget -= dev.cache_budget % 16;
  dev.cache_budget_max -= dev.cache_budget_max % 16;
  return dev;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int next_pow2(int64_t v) {
  int p = 1;
  while (p < v && p < (1 << 30)) p *= 2;
  return p;
}

inline bool use_split(int64_t rows, int64_t L, const Device& dev) {
  return rows < kSplitRowsPerSM * dev.sms && L >= kSplitMinLen;
}

// Segments per row on the split path: enough blocks for the device, each at least kMinSegment.
template <typename T>
inline void choose_segments(int64_t rows, int64_t L, const Device& dev, int64_t& segments,
                            int64_t& segment_len) {
  constexpr int VEC = vec_width<T>();
  const int64_t want = std::max<int64_t>(1, ceil_div(kBlocksPerSM * dev.sms, rows));
  segments = std::max<int64_t>(1, std::min(want, L / kMinSegment));
  // Segment starts stay on the row's slot grid.
  segment_len = ceil_div(ceil_div(L, segments), VEC) * VEC;
  segments = ceil_div(L, segment_len);
}

struct RowsLaunch {
  int group = 1;
  int block = 256;
  int64_t num_blocks = 0;
  int grid = 1;
  int64_t row_slots = 0;    // slots of the longest segment
  int64_t cache_slots = 0;  // of which kept in shared memory
  size_t smem = 0;
};

// Geometry of contig_rows_kernel for `segments` segments of at most `seg_len` elements, starting
// on the slot grid when `aligned` (L % VEC == 0), keeping `cached_rows` tensors (0, 1 or 2) of each
// segment in shared memory.
// Groups have at most max_group threads (the kernel's launch bound).
template <typename T>
inline RowsLaunch plan_rows(int64_t segments, int64_t seg_len, bool aligned, int cached_rows,
                            const Device& dev, int max_group = 1024) {
  constexpr int VEC = vec_width<T>();
  RowsLaunch r;
  const int64_t max_slots = aligned ? ceil_div(seg_len, VEC) : ceil_div(seg_len + VEC - 1, VEC);
  r.row_slots = max_slots;
  r.group = std::min(max_group, next_pow2(ceil_div(max_slots, kSlotsPerThread)));
  if (r.group > kWarpSize) {
    r.block = r.group;
  } else {
    // Packed rows: 256-thread blocks, fewer threads when that leaves the SMs without blocks.
    r.block = 256;
    while (r.block > 64 && r.block > r.group &&
           ceil_div(segments * r.group, r.block) < kBlocksPerSM * dev.sms) {
      r.block /= 2;
    }
    r.block = std::max(r.block, r.group);
  }
  const int64_t per_block = r.block / r.group;
  r.num_blocks = ceil_div(segments, per_block);
  r.grid = static_cast<int>(std::min<int64_t>(r.num_blocks, 32 * dev.sms));
  if (cached_rows > 0) {
    const int64_t slot_bytes = static_cast<int64_t>(sizeof(Vec<T, VEC>)) * cached_rows;
    const int64_t whole = per_block * max_slots * slot_bytes;
    const int64_t budget = whole <= dev.cache_budget ? dev.cache_budget : dev.cache_budget_max;
    r.cache_slots = std::min(max_slots, budget / (per_block * slot_bytes));
    r.smem = static_cast<size_t>(per_block * r.cache_slots * slot_bytes);
  }
  return r;
}

// Makes `kernel` launchable with `bytes` of dynamic shared memory on the current device. A kernel
// may take 48 KiB of shared memory per block, static and dynamic together, until it opts in to
// more with cudaFuncAttributeMaxDynamicSharedMemorySize (per kernel and device): so the limit on
// its dynamic part depends on its static part, which only the runtime knows
// (cudaFuncGetAttributes). Opts in once, to all the device allows, and remembers the limit.
// Both calls can touch the context, so they run in relaxed stream-capture mode: a first launch
// inside CUDA graph capture then works too (the attribute is not a stream operation).
inline void ensure_dynamic_smem(const void* kernel, size_t bytes) {
  struct Key {
    const void* kernel;
    int device;
    bool operator<(const Key& o) const {
      return kernel != o.kernel ? std::less<const void*>()(kernel, o.kernel) : device < o.device;
    }
  };
  static std::mutex mutex;
  static std::map<Key, size_t> limit;  // the kernel's max dynamic shared memory, once known
  const Key key{kernel, static_cast<int>(c10::cuda::current_device())};
  const std::lock_guard<std::mutex> lock(mutex);
  auto it = limit.find(key);
  if (it != limit.end() && bytes <= it->second) return;
  const c10::cuda::CUDAStreamCaptureModeGuard relaxed(cudaStreamCaptureModeRelaxed);
  cudaFuncAttributes attr;
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  size_t allowed = static_cast<size_t>(attr.maxDynamicSharedSizeBytes);
  if (bytes > allowed) {
    const int64_t most = static_cast<int64_t>(
        at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin) -
        static_cast<int64_t>(attr.sharedSizeBytes);
    TORCH_CHECK(static_cast<int64_t>(bytes) <= most, "adain: a launch asks for ", bytes,
                " bytes of dynamic shared memory; this device allows ", most);
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(most)));
    allowed = static_cast<size_t>(most);
  }
  limit[key] = allowed;
}

template <typename T, typename acc_t, RowMode kMode, bool kEpilogue = false, bool kPrologue = false>
inline void launch_rows(Params<T, acc_t> p, const RowsLaunch& r) {
  p.group = r.group;
  p.num_blocks = r.num_blocks;
  p.cache_slots = r.cache_slots;
  auto kernel = contig_rows_kernel<T, acc_t, kMode, kEpilogue, kPrologue>;
  if (r.smem > 0) ensure_dynamic_smem(reinterpret_cast<const void*>(kernel), r.smem);
  kernel<<<r.grid, r.block, r.smem, at::cuda::getCurrentCUDAStream()>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename acc_t, RowMode kMode>
inline void launch_finalize(const RowData<acc_t>& d, const Device& dev) {
  constexpr int kBlock = 128;
  const int grid = static_cast<int>(std::min<int64_t>(ceil_div(d.rows, kBlock), 32 * dev.sms));
  finalize_rows_kernel<acc_t, kMode><<<grid, kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(d);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The split backward's finalize with the prologue (finalize_prologue_backward_kernel).
template <typename acc_t>
inline void launch_finalize_prologue(const RowData<acc_t>& d, const PrologueData<acc_t>& pro,
                                     const Device& dev) {
  constexpr int kBlock = 128;
  const int grid = static_cast<int>(std::min<int64_t>(ceil_div(d.rows, kBlock), 32 * dev.sms));
  const PrologueFinalize<acc_t> args{d, pro};
  finalize_prologue_backward_kernel<acc_t><<<grid, kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// channels_last geometry: threads_c threads across channels, the rest of the block across
// positions; positions cut into segments until there are enough tiles for the device.
template <typename T, typename acc_t>
inline int plan_channels_last(Params<T, acc_t>& p, int64_t N, int64_t C, int64_t L,
                              const Device& dev) {
  constexpr int VEC = vec_width<T>();
  p.channels = C;
  p.channels_aligned = C % VEC == 0;
  p.threads_c = std::min(kWarpSize, next_pow2(ceil_div(C, VEC)));
  const int64_t threads_l = kClBlock / p.threads_c;
  p.channel_tiles = ceil_div(C, static_cast<int64_t>(p.threads_c) * VEC);
  const int64_t base = N * p.channel_tiles;
  const int64_t want = std::max<int64_t>(1, ceil_div(kBlocksPerSM * dev.sms, base));
  const int64_t segments = std::max<int64_t>(1, std::min(want, L / (threads_l * kUnroll)));
  p.d.segment_len = ceil_div(L, segments);
  p.d.segments = ceil_div(L, p.d.segment_len);
  return static_cast<int>(std::min<int64_t>(base * p.d.segments, 32 * dev.sms));
}

template <typename T, typename acc_t, bool kSums, bool kEpilogue = false, bool kPrologue = false>
inline void launch_cl_partial(const Params<T, acc_t>& p, int grid) {
  if constexpr (kPrologue) {
    auto kernel = cl_partial_prologue_kernel<T, acc_t, kSums, kEpilogue>;
    kernel<<<grid, kClBlock, 0, at::cuda::getCurrentCUDAStream()>>>(p);
  } else {
    auto kernel = cl_partial_kernel<T, acc_t, kSums, kEpilogue>;
    kernel<<<grid, kClBlock, 0, at::cuda::getCurrentCUDAStream()>>>(p);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, typename acc_t, bool kHasG, bool kEpilogue = false, bool kPrologue = false>
inline void launch_cl_apply(const Params<T, acc_t>& p, int grid) {
  if constexpr (kPrologue) {
    auto kernel = cl_apply_prologue_kernel<T, acc_t, kHasG, kEpilogue>;
    kernel<<<grid, kClBlock, 0, at::cuda::getCurrentCUDAStream()>>>(p);
  } else {
    auto kernel = cl_apply_kernel<T, acc_t, kHasG, kEpilogue>;
    kernel<<<grid, kClBlock, 0, at::cuda::getCurrentCUDAStream()>>>(p);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---- The path an op took, kept for tests (a debug hook: tests/test_cuda.py asserts that each
// shape takes the path it is meant to exercise). One record per process, the last op's.

enum class LaunchPath : int64_t {
  None = 0,
  Packed = 1,            // one launch, several rows per block
  Rows = 2,              // one launch, a block per row, the row cached whole (or not needed)
  RowsPartialCache = 3,  // one launch, a block per row, part of the row read again from L2
  Split = 4,             // partials per row segment, finalize, apply
  ChannelsLast = 5,      // partials per channel tile, finalize, apply
};

struct LaunchRecord {
  LaunchPath path = LaunchPath::None;
  int64_t launches = 0;  // kernel launches of the op
  int64_t grid = 0, block = 0, smem = 0;  // of its main (row or channel-tile) kernel
  int64_t segments = 1;  // segments per row (the key "segments" of _extension.last_cuda_launch())
};

inline std::mutex launch_record_mutex;
inline LaunchRecord last_launch_record;

inline void record_launch(LaunchPath path, int64_t launches, int64_t grid, int64_t block,
                          int64_t smem, int64_t segments) {
  const std::lock_guard<std::mutex> lock(launch_record_mutex);
  last_launch_record = LaunchRecord{path, launches, grid, block, smem, segments};
}

inline void record_rows_launch(const RowsLaunch& r, int cached_rows, int64_t launches,
                               int64_t segments) {
  LaunchPath path = LaunchPath::Rows;
  if (segments > 1) {
    path = LaunchPath::Split;
  } else if (r.block > r.group) {
    path = LaunchPath::Packed;
  } else if (cached_rows > 0 && r.cache_slots < r.row_slots) {
    path = LaunchPath::RowsPartialCache;
  }
  record_launch(path, launches, r.grid, r.block, static_cast<int64_t>(r.smem), segments);
}

inline std::vector<int64_t> last_launch() {
  const std::lock_guard<std::mutex> lock(launch_record_mutex);
  const LaunchRecord& r = last_launch_record;
  return {static_cast<int64_t>(r.path), r.launches, r.grid, r.block, r.smem, r.segments};
}

// ---- Host helpers for the op files.

// The kernels walk 16-byte slots from the base pointer: an input that is a view starting off a
// 16-byte boundary (rare: a slice) is copied once.
inline at::Tensor aligned16(const at::Tensor& t, at::MemoryFormat format) {
  if (reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0) return t;
  return t.clone(format);
}

// Partial-state workspace of a split or channels_last launch: [R, segments] twice, the Welford
// states' means and m2s or (kGradSums) the GradSums' sum_g and sum_g_dev.
template <bool kGradSums, typename acc_t>
inline at::Tensor attach_partials(RowData<acc_t>& d, const at::TensorOptions& acc_options) {
  at::Tensor ws = at::empty({2, d.rows * d.segments}, acc_options);
  acc_t* first = ws.data_ptr<acc_t>();
  acc_t* second = first + d.rows * d.segments;
  if (kGradSums) {
    d.partial_sum_g = first;
    d.partial_sum_g_dev = second;
  } else {
    d.partial_mean = first;
    d.partial_m2 = second;
  }
  return ws;
}

// The prologue backward's PrologueSums partials, [6, R * segments] (PrologueData::partial).
template <typename acc_t>
inline at::Tensor attach_prologue_partials(const RowData<acc_t>& d, PrologueData<acc_t>& pro,
                                           const at::TensorOptions& acc_options) {
  at::Tensor ws = at::empty({6, d.rows * d.segments}, acc_options);
  pro.partial = ws.data_ptr<acc_t>();
  return ws;
}

template <typename acc_t>
inline at::Tensor attach_coef(RowData<acc_t>& d, const at::TensorOptions& acc_options) {
  at::Tensor coef = at::empty({d.rows, 4}, acc_options);
  d.coef = coef.data_ptr<acc_t>();
  return coef;
}


// ---- The three paths, once for every reduce-then-map op.

// The modes an op runs in on each path. An op is named by its one-launch mode: Stats (mean_std:
// statistics only), Affine (affine forward: statistics, then out) or AffineBackward (gradient
// sums, then grad_x); finalize_rows_kernel takes the same mode.
template <RowMode kOp>
struct RowOpKernels {
  static_assert(kOp == RowMode::Stats || kOp == RowMode::Affine || kOp == RowMode::AffineBackward,
                "run_row_op runs Stats, Affine or AffineBackward");
  static constexpr bool kGrad = kOp == RowMode::AffineBackward;  // reduces (g, x), maps with g
  static constexpr bool kMaps = kOp != RowMode::Stats;
  static constexpr RowMode kOneLaunch = kOp;
  static constexpr RowMode kPartial = kGrad ? RowMode::PartialSums : RowMode::PartialWelford;
  static constexpr RowMode kApply = kGrad ? RowMode::ApplyGrad : RowMode::Apply;
  static constexpr RowMode kFinal = kOp;
  static constexpr int kCachedRows = kOp == RowMode::Stats ? 0 : kGrad ? 2 : 1;  // tensors cached
};

// Runs op kOp over the R = p.d.rows rows of length L = p.d.L that p describes (pointers and
// per-row inputs set by the op file) by the path the layout and shape select:
//   channels_last:  partial states per (image, channel tile, segment), finalize, apply (3 launches)
//   few long rows:  partial states per row segment, finalize, apply                     (3 launches)
//   otherwise:      one launch, each row reduced and mapped while cached on chip        (1 launch)
// kEpilogue: the kernels that apply p.d.epilogue (the forward's partial states and finalize are
// statistics of x alone, and the backward's finalize merges sums already taken of g_y).
// The workspaces are freed on return; the caching allocator keeps them for this stream's work.
// kPrologue: the kernels of the affine op's prologue (p.pro, p.noise), each mode over p in place
// of x; the forward's finalize is the one without it (statistics of p), the backward's also
// merges the PrologueSums partials; the noise is cached with x on the one-launch path.
template <RowMode kOp, bool kEpilogue, typename T, typename acc_t, bool kPrologue = false>
inline void run_row_op_paths(Params<T, acc_t>& p, Layout layout, int64_t N, int64_t C,
                             const at::TensorOptions& acc_options, const Device& dev) {
  using K = RowOpKernels<kOp>;
  static_assert(!kPrologue || K::kMaps, "the prologue belongs to the affine op");
  constexpr int VEC = vec_width<T>();
  constexpr bool kPartialEpilogue = kEpilogue && K::kGrad;
  constexpr int kMaxGroup = kPrologue ? kPrologueBlock : 1024;
  const int64_t R = p.d.rows, L = p.d.L;
  at::Tensor partials, prologue_partials, coef;
  if (layout == Layout::ChannelsLast) {
    const int grid = plan_channels_last(p, N, C, L, dev);
    partials = attach_partials<K::kGrad>(p.d, acc_options);
    if (kPrologue && K::kGrad) prologue_partials = attach_prologue_partials(p.d, p.pro, acc_options);
    if (K::kMaps) coef = attach_coef(p.d, acc_options);
    launch_cl_partial<T, acc_t, K::kGrad, kPartialEpilogue, kPrologue>(p, grid);
    if constexpr (kPrologue && K::kGrad) {
      launch_finalize_prologue(p.d, p.pro, dev);
    } else {
      launch_finalize<acc_t, K::kFinal>(p.d, dev);
    }
    if (K::kMaps) launch_cl_apply<T, acc_t, K::kGrad, kEpilogue, kPrologue>(p, grid);
    record_launch(LaunchPath::ChannelsLast, K::kMaps ? 3 : 2, grid, kClBlock, 0, p.d.segments);
  } else if (use_split(R, L, dev)) {
    choose_segments<T>(R, L, dev, p.d.segments, p.d.segment_len);
    partials = attach_partials<K::kGrad>(p.d, acc_options);
    if (kPrologue && K::kGrad) prologue_partials = attach_prologue_partials(p.d, p.pro, acc_options);
    if (K::kMaps) coef = attach_coef(p.d, acc_options);
    const RowsLaunch geometry =
        plan_rows<T>(R * p.d.segments, p.d.segment_len, L % VEC == 0, 0, dev, kMaxGroup);
    launch_rows<T, acc_t, K::kPartial, kPartialEpilogue, kPrologue>(p, geometry);
    if constexpr (kPrologue && K::kGrad) {
      launch_finalize_prologue(p.d, p.pro, dev);
    } else {
      launch_finalize<acc_t, K::kFinal>(p.d, dev);
    }
    if (K::kMaps) launch_rows<T, acc_t, K::kApply, kEpilogue, kPrologue>(p, geometry);
    record_rows_launch(geometry, 0, K::kMaps ? 3 : 2, p.d.segments);
  } else {
    const int cached_rows = K::kCachedRows + (kPrologue && p.noise != nullptr ? 1 : 0);
    const RowsLaunch geometry = plan_rows<T>(R, L, L % VEC == 0, cached_rows, dev, kMaxGroup);
    launch_rows<T, acc_t, K::kOneLaunch, kEpilogue, kPrologue>(p, geometry);
    record_rows_launch(geometry, cached_rows, 1, 1);
  }
}

// run_row_op_paths with the kernels of p.d.epilogue: those without one (the very kernels of the
// ops that have no activation) when its kind is None, whose cost is this one test per op.
template <RowMode kOp, typename T, typename acc_t>
inline void run_row_op(Params<T, acc_t>& p, Layout layout, int64_t N, int64_t C,
                       const at::TensorOptions& acc_options, const Device& dev) {
  if constexpr (RowOpKernels<kOp>::kMaps) {
    if (p.d.epilogue.kind != Activation::None) {
      run_row_op_paths<kOp, true>(p, layout, N, C, acc_options, dev);
      return;
    }
  } else {
    TORCH_INTERNAL_ASSERT(p.d.epilogue.kind == Activation::None,
                          "adain: statistics have no epilogue");
  }
  run_row_op_paths<kOp, false>(p, layout, N, C, acc_options, dev);
}

// The affine op with its prologue (Affine or AffineBackward; p.pro and p.noise set): the prologue
// kernels, with or without the epilogue.
template <RowMode kOp, typename T, typename acc_t>
inline void run_prologue_op(Params<T, acc_t>& p, Layout layout, int64_t N, int64_t C,
                            const at::TensorOptions& acc_options, const Device& dev) {
  static_assert(kOp == RowMode::Affine || kOp == RowMode::AffineBackward,
                "the prologue belongs to the affine op");
  if (p.d.epilogue.kind != Activation::None) {
    run_row_op_paths<kOp, true, T, acc_t, true>(p, layout, N, C, acc_options, dev);
  } else {
    run_row_op_paths<kOp, false, T, acc_t, true>(p, layout, N, C, acc_options, dev);
  }
}

}  // namespace cuda
}  // namespace adain
