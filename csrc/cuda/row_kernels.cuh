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
//    row is cut into `chunks` segments, one per group/block. Launch 1 writes one partial state per
//    segment; launch 2 (finalize_rows_kernel, one thread per row) merges a row's partials in a
//    fixed order with welford_merge and writes the statistics and the row's coefficients;
//    launch 3 applies them. x is read twice (the second read hits L2 only when the tensor fits).
// 3. channels_last (cl_partial_kernel, finalize_rows_kernel, cl_apply_kernel): threads span
//    channels (VEC channels per thread, one 16-byte load) and positions; a block owns a tile of
//    channels x a chunk of positions, reduces its positions column-wise in shared memory, and
//    writes per-channel partials; finalize and apply as in the split path.
//
// Every elementwise output is out = A * g + B * (x - M) + C0 with per-row coefficients (Coef):
//   affine forward   A = 0, B = a, M = mean_x, C0 = T_m   (out = a * x + b, b = T_m - a * mean_x)
//   affine backward  A = k, B = c * sgx / D * rstd, M = mean_x, C0 = c * sg / L, c = (1-alpha) - k
//   mean_std backward  A = 0, B = gs / (D * std), M = mean, C0 = gm / L
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
#include "cuda/reduce.cuh"
#include "welford.h"

namespace adain {
namespace cuda {

// ---- Per-row math (shared by every path, so they cannot drift).

template <typename acc_t>
struct Coef {
  acc_t A = 0, B = 0, M = 0, C0 = 0;
};

template <typename acc_t>
C10_DEVICE __forceinline__ acc_t std_of(const WelfordState<acc_t>& s, acc_t eps, bool unbiased) {
  return sqrt(s.m2 / variance_divisor<acc_t>(s.count, unbiased) + eps);
}

// T_m = alpha*mean_t + (1-alpha)*mean_x, T_s = alpha*std_t + (1-alpha)*std_x; a = T_s / std_x,
// b = T_m - a*mean_x (as the CPU kernels: alpha == 1 skips the blend, so that an Inf/NaN row
// statistic is not multiplied by 0).
template <typename acc_t>
C10_DEVICE __forceinline__ acc_t blend(acc_t alpha, acc_t target, acc_t own) {
  return alpha == acc_t(1) ? target : alpha * target + (acc_t(1) - alpha) * own;
}

// Applied as a * (x - mean_x) + T_m, the same map as a * x + b without its cancellation: on
// large-mean rows (x = 1e4 + N(0, 1)) a * x and b are both ~1e4 * a and their sum loses ~1e-3
// absolute in fp32 (0.2 in bf16), while x - mean_x is exact there.
template <typename acc_t>
C10_DEVICE __forceinline__ Coef<acc_t> affine_forward_coef(acc_t mean_x, acc_t std_x, acc_t mean_t,
                                                           acc_t std_t, acc_t alpha) {
  Coef<acc_t> c;
  c.B = blend(alpha, std_t, std_x) / std_x;
  c.M = mean_x;
  c.C0 = blend(alpha, mean_t, mean_x);
  return c;
}

// sgxc = sum(g * (x - mean_x)), so sgx = rstd * sgxc = sum(g * x_hat) without cancellation.
template <typename acc_t>
C10_DEVICE __forceinline__ Coef<acc_t> affine_backward_coef(acc_t sg, acc_t sgxc, acc_t mean_x,
                                                            acc_t std_x, acc_t std_t, acc_t alpha,
                                                            int64_t L, bool unbiased,
                                                            acc_t& grad_mean, acc_t& grad_std) {
  const acc_t rstd = acc_t(1) / std_x;
  const acc_t sgx = rstd * sgxc;
  const acc_t k = blend(alpha, std_t, std_x) * rstd;
  const acc_t c = (acc_t(1) - alpha) - k;
  grad_mean = alpha * sg;
  grad_std = alpha * sgx;
  Coef<acc_t> out;
  out.A = k;
  out.B = c * (sgx / variance_divisor<acc_t>(L, unbiased)) * rstd;
  out.M = mean_x;
  out.C0 = c * (sg / static_cast<acc_t>(L));
  return out;
}

template <typename acc_t>
C10_DEVICE __forceinline__ Coef<acc_t> mean_std_backward_coef(acc_t gm, acc_t gs, acc_t mean,
                                                              acc_t std, int64_t L, bool unbiased) {
  Coef<acc_t> c;
  c.B = gs / (variance_divisor<acc_t>(L, unbiased) * std);
  c.M = mean;
  c.C0 = gm / static_cast<acc_t>(L);
  return c;
}

template <typename acc_t, bool kHasG>
C10_DEVICE __forceinline__ acc_t apply_coef(const Coef<acc_t>& c, acc_t x, acc_t g) {
  const acc_t y = c.B * (x - c.M) + c.C0;
  return kHasG ? c.A * g + y : y;
}

// ---- Kernel parameters.

// Per-row inputs and outputs (all (N, C) = R entries of the accumulation dtype, contiguous), and
// the partial / coefficient workspaces. Only the fields a mode uses are set.
template <typename acc_t>
struct RowData {
  int64_t rows = 0;       // R = N * C
  int64_t L = 0;          // elements per row of x (H * W)
  int64_t L_style = 0;    // elements per row of the style (fused)
  int64_t chunks = 1;     // segments per row (split and channels_last paths)
  int64_t chunk_len = 0;  // elements (contiguous) or positions (channels_last) per segment
  acc_t alpha = 1, eps = 0;
  bool unbiased = true;
  const acc_t* target_mean = nullptr;  // affine forward: the target statistics
  const acc_t* target_std = nullptr;
  const acc_t* x_mean = nullptr;  // backward: x's statistics (mean_std backward: mean, std)
  const acc_t* x_std = nullptr;
  const acc_t* std_target = nullptr;  // affine backward: the target std
  const acc_t* grad_mean_in = nullptr;  // mean_std backward: incoming gradients
  const acc_t* grad_std_in = nullptr;
  acc_t* partial0 = nullptr;  // [R, chunks]: Welford mean or sum(g)
  acc_t* partial1 = nullptr;  // [R, chunks]: Welford m2 or sum(g * (x - mean))
  acc_t* coef = nullptr;      // [R, 4]: A, B, M, C0
  acc_t* mean_out = nullptr;  // statistics of x
  acc_t* std_out = nullptr;
  acc_t* style_mean_out = nullptr;  // fused: statistics of the style
  acc_t* style_std_out = nullptr;
  acc_t* grad_mean_out = nullptr;  // affine backward
  acc_t* grad_std_out = nullptr;

  // Elements (or positions) of chunk k of a row: the count of its partial state.
  C10_HOST_DEVICE int64_t chunk_count(int64_t k) const {
    const int64_t left = L - k * chunk_len;
    return left < chunk_len ? left : chunk_len;
  }
};

template <typename T, typename acc_t>
struct Params {
  const T* x = nullptr;
  const T* g = nullptr;  // incoming gradient, same layout as x
  const T* style = nullptr;
  T* out = nullptr;
  RowData<acc_t> d;
  // contig_rows_kernel geometry
  int group = 1;             // threads per segment: power of two, == blockDim.x when > 32
  int64_t num_blocks = 0;    // blocks needed; the grid strides over them
  int64_t cache_slots = 0;   // slots of each segment kept in shared memory between sweeps
  // channels_last geometry
  int64_t channels = 0;       // C
  int threads_c = 1;          // threads across channels (power of two); blockDim.x / threads_c across positions
  int64_t channel_tiles = 0;  // ceil(C / (threads_c * VEC))
  bool channels_aligned = false;  // C % VEC == 0: every thread's channels are one aligned vector
};

enum class RowMode {
  Stats,           // mean / std of each row -> mean_out, std_out
  Affine,          // statistics + targets -> out (and mean_out, std_out), one launch
  Fused,           // style statistics, then Affine with them as targets, one launch
  AffineBackward,  // sum(g), sum(g*(x-mean)) -> grad_x (and grad_mean_out, grad_std_out)
  PartialWelford,  // one Welford state per segment -> partial0/1
  PartialSums,     // sum(g), sum(g*(x-mean)) per segment -> partial0/1
  Apply,           // out = B*(x-M) + C0 from coef
  ApplyGrad,       // out = A*g + B*(x-M) + C0 from coef
};

// A row gets about this many 16-byte slots per thread (sets the group size).
constexpr int kSlotsPerThread = 4;
// Slots a thread loads before using them. 2 keeps every kernel within the 64 registers of a
// 1024-thread block (4 spilled heavily for 16-bit types: ptxas -v, sm_90) while keeping 32-64
// bytes per thread in flight, plenty at 1-2K threads per SM.
constexpr int kUnroll = 2;
// Where a slot is two 16-byte loads of 16-bit data (x and g: 16 values to widen per slot), 1:
// at 2 those kernels spilled (ptxas -v, sm_90), and 32 bytes per thread are still in flight.
template <typename T, bool kTwoInputs>
constexpr int unroll_slots() {
  return (sizeof(T) == 2 && kTwoInputs) ? 1 : kUnroll;
}

// ---- Path 1 and the contiguous half of path 2.

// Walks this lane's slots of a segment, kU slots per step: loads all kU first (x, and g when
// kWithG; when kFromCache, slots below `cached` from the shared-memory cache, the rest from global
// memory; masked elements as 0), then calls use(s, lo, hi, x_slot, g_slot) on each in order.
// Loading before using keeps kU 16-byte loads per input in flight. (kFromCache is a template
// flag, not cached == 0: the compiler cannot drop an `s < 0` test, and at 64 registers the dead
// branch made the 16-bit kernels spill.)
template <typename T, int VEC, int kU, bool kWithG, bool kFromCache, typename Use>
C10_DEVICE __forceinline__ void walk_slots(const T* __restrict__ x, const T* __restrict__ g,
                                           const Segment& seg, int lane, int group,
                                           const Vec<T, VEC>* cache_x, const Vec<T, VEC>* cache_g,
                                           int64_t cached, Use&& use) {
  const int64_t step = static_cast<int64_t>(group);
  for (int64_t s0 = lane; s0 < seg.nslots; s0 += step * kU) {
    Vec<T, VEC> vx[kU], vg[kU];
    int lo[kU], hi[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int64_t s = s0 + u * step;
      lo[u] = hi[u] = 0;
      if (s < seg.nslots) {
        slot_bounds<VEC>(seg, s, lo[u], hi[u]);
        if (kFromCache && s < cached) {
          vx[u] = cache_x[s];
          if (kWithG) vg[u] = cache_g[s];
        } else {
          vx[u] = load_slot<T, VEC>(x, seg.first + s * VEC, lo[u], hi[u]);
          if (kWithG) vg[u] = load_slot<T, VEC>(g, seg.first + s * VEC, lo[u], hi[u]);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int64_t s = s0 + u * step;
      if (s < seg.nslots) use(s, lo[u], hi[u], vx[u], vg[u]);
    }
  }
}

// Welford state of this lane's slots of a segment; slots below cache_slots are kept in `cache`.
template <typename acc_t, typename T, int VEC, bool kCache>
C10_DEVICE __forceinline__ WelfordState<acc_t> lane_welford(const T* __restrict__ x,
                                                            const Segment& seg, int lane, int group,
                                                            Vec<T, VEC>* cache,
                                                            int64_t cache_slots) {
  WelfordState<acc_t> st;
  walk_slots<T, VEC, unroll_slots<T, false>(), false, false>(
      x, nullptr, seg, lane, group, nullptr, nullptr, 0,
      [&](int64_t s, int lo, int hi, const Vec<T, VEC>& vx, const Vec<T, VEC>&) {
        if (kCache && s < cache_slots) cache[s] = vx;
        st = welford_merge(st, slot_state<acc_t>(vx, lo, hi));
      });
  return st;
}

// sum(g) and sum(g * (x - mean)) of this lane's slots; both rows cached like lane_welford.
template <typename acc_t, typename T, int VEC, bool kCache>
C10_DEVICE __forceinline__ Sum2<acc_t> lane_grad_sums(const T* __restrict__ x,
                                                      const T* __restrict__ g, const Segment& seg,
                                                      int lane, int group, acc_t mean,
                                                      Vec<T, VEC>* cache_x, Vec<T, VEC>* cache_g,
                                                      int64_t cache_slots) {
  Sum2<acc_t> sums;
  walk_slots<T, VEC, unroll_slots<T, true>(), true, false>(
      x, g, seg, lane, group, nullptr, nullptr, 0,
      [&](int64_t s, int, int, const Vec<T, VEC>& vx, const Vec<T, VEC>& vg) {
        if (kCache && s < cache_slots) {
          cache_x[s] = vx;
          cache_g[s] = vg;
        }
        // Masked elements were loaded as 0 in g, so they add nothing.
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const acc_t gj = static_cast<acc_t>(vg.v[j]);
          sums.a += gj;
          sums.b += gj * (static_cast<acc_t>(vx.v[j]) - mean);
        }
      });
  return sums;
}

// Writes out = apply_coef(c, x, g) over this lane's slots, reading cached slots from shared
// memory (each lane reads back only the slots it cached itself, so no barrier is needed).
template <typename acc_t, typename T, int VEC, bool kHasG>
C10_DEVICE __forceinline__ void lane_apply(const T* __restrict__ x, const T* __restrict__ g,
                                           T* __restrict__ out, const Segment& seg, int lane,
                                           int group, const Coef<acc_t>& c,
                                           const Vec<T, VEC>* cache_x, const Vec<T, VEC>* cache_g,
                                           int64_t cache_slots) {
  walk_slots<T, VEC, unroll_slots<T, kHasG>(), kHasG, true>(
      x, g, seg, lane, group, cache_x, cache_g, cache_slots,
      [&](int64_t s, int lo, int hi, const Vec<T, VEC>& vx, const Vec<T, VEC>& vg) {
        Vec<T, VEC> y;
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const acc_t gj = kHasG ? static_cast<acc_t>(vg.v[j]) : acc_t(0);
          y.v[j] = static_cast<T>(apply_coef<acc_t, kHasG>(c, static_cast<acc_t>(vx.v[j]), gj));
        }
        store_slot<T, VEC>(out, seg.first + s * VEC, lo, hi, y);
      });
}

template <typename acc_t>
C10_DEVICE __forceinline__ Coef<acc_t> load_coef(const acc_t* coef, int64_t row) {
  Coef<acc_t> c;
  c.A = coef[4 * row + 0];
  c.B = coef[4 * row + 1];
  c.M = coef[4 * row + 2];
  c.C0 = coef[4 * row + 3];
  return c;
}

// One group of p.group threads per segment (row r, chunk k) of a contiguous tensor.
template <typename T, typename acc_t, RowMode kMode>
__global__ void __launch_bounds__(1024) contig_rows_kernel(const Params<T, acc_t> p) {
  constexpr int VEC = vec_width<T>();
  using V = Vec<T, VEC>;
  constexpr bool kCache =
      kMode == RowMode::Affine || kMode == RowMode::Fused || kMode == RowMode::AffineBackward;
  constexpr bool kTwoRows = kMode == RowMode::AffineBackward;  // caches x and g
  extern __shared__ __align__(16) unsigned char cache_bytes[];
  __shared__ ReduceScratch<acc_t> scratch;

  const RowData<acc_t>& d = p.d;
  const int group = p.group;
  const int segments_per_block = static_cast<int>(blockDim.x) / group;
  const int slot_in_block = static_cast<int>(threadIdx.x) / group;
  const int lane = static_cast<int>(threadIdx.x) % group;
  V* cache_x = reinterpret_cast<V*>(cache_bytes) +
               static_cast<int64_t>(slot_in_block) * p.cache_slots * (kTwoRows ? 2 : 1);
  V* cache_g = cache_x + p.cache_slots;
  const int64_t segments = d.rows * d.chunks;

  for (int64_t block = blockIdx.x; block < p.num_blocks; block += gridDim.x) {
    // Inactive groups (past the last segment) still take part in the reductions.
    const int64_t segment = block * segments_per_block + slot_in_block;
    const bool active = segment < segments;
    const int64_t row = active ? segment / d.chunks : 0;
    const int64_t chunk = active ? segment % d.chunks : 0;
    const int64_t begin = chunk * d.chunk_len;
    const int64_t len = active ? std::min(d.chunk_len, d.L - begin) : 0;
    const Segment seg = make_segment<VEC>(row * d.L + begin, len);

    if constexpr (kMode == RowMode::Stats || kMode == RowMode::PartialWelford) {
      WelfordState<acc_t> st = lane_welford<acc_t, T, VEC, false>(p.x, seg, lane, group, nullptr, 0);
      st = group_allreduce(st, group, scratch);
      if (active && lane == 0) {
        if constexpr (kMode == RowMode::Stats) {
          d.mean_out[row] = st.mean;
          d.std_out[row] = std_of(st, d.eps, d.unbiased);
        } else {
          d.partial0[segment] = st.mean;
          d.partial1[segment] = st.m2;
        }
      }
    } else if constexpr (kMode == RowMode::Affine || kMode == RowMode::Fused) {
      acc_t mean_t, std_t;
      if constexpr (kMode == RowMode::Fused) {
        const Segment style_seg = make_segment<VEC>(row * d.L_style, active ? d.L_style : 0);
        WelfordState<acc_t> ss =
            lane_welford<acc_t, T, VEC, false>(p.style, style_seg, lane, group, nullptr, 0);
        ss = group_allreduce(ss, group, scratch);
        mean_t = ss.mean;
        std_t = std_of(ss, d.eps, d.unbiased);
        if (active && lane == 0) {
          d.style_mean_out[row] = mean_t;
          d.style_std_out[row] = std_t;
        }
      } else {
        mean_t = active ? d.target_mean[row] : acc_t(0);
        std_t = active ? d.target_std[row] : acc_t(1);
      }
      WelfordState<acc_t> st =
          lane_welford<acc_t, T, VEC, kCache>(p.x, seg, lane, group, cache_x, p.cache_slots);
      st = group_allreduce(st, group, scratch);
      const acc_t mean_x = st.mean;
      const acc_t std_x = std_of(st, d.eps, d.unbiased);
      if (active && lane == 0) {
        d.mean_out[row] = mean_x;
        d.std_out[row] = std_x;
      }
      const Coef<acc_t> c = affine_forward_coef(mean_x, std_x, mean_t, std_t, d.alpha);
      lane_apply<acc_t, T, VEC, false>(p.x, nullptr, p.out, seg, lane, group, c, cache_x, nullptr,
                                       p.cache_slots);
    } else if constexpr (kMode == RowMode::AffineBackward || kMode == RowMode::PartialSums) {
      const acc_t mean_x = active ? d.x_mean[row] : acc_t(0);
      Sum2<acc_t> sums = lane_grad_sums<acc_t, T, VEC, kCache>(p.x, p.g, seg, lane, group, mean_x,
                                                               cache_x, cache_g, p.cache_slots);
      sums = group_allreduce(sums, group, scratch);
      if constexpr (kMode == RowMode::PartialSums) {
        if (active && lane == 0) {
          d.partial0[segment] = sums.a;
          d.partial1[segment] = sums.b;
        }
      } else {
        acc_t grad_mean = 0, grad_std = 0;
        const acc_t std_x = active ? d.x_std[row] : acc_t(1);
        const acc_t std_t = active ? d.std_target[row] : acc_t(1);
        const Coef<acc_t> c = affine_backward_coef(sums.a, sums.b, mean_x, std_x, std_t, d.alpha,
                                                   d.L, d.unbiased, grad_mean, grad_std);
        if (active && lane == 0) {
          d.grad_mean_out[row] = grad_mean;
          d.grad_std_out[row] = grad_std;
        }
        lane_apply<acc_t, T, VEC, true>(p.x, p.g, p.out, seg, lane, group, c, cache_x, cache_g,
                                        p.cache_slots);
      }
    } else {  // Apply, ApplyGrad: no reduction
      constexpr bool kHasG = kMode == RowMode::ApplyGrad;
      if (active) {
        const Coef<acc_t> c = load_coef(d.coef, row);
        lane_apply<acc_t, T, VEC, kHasG>(p.x, p.g, p.out, seg, lane, group, c, nullptr, nullptr, 0);
      }
    }
  }
}

// ---- Finalize: one thread per row merges the row's partials in chunk order.

enum class FinalMode { Stats, Affine, AffineBackward, MeanStdBackward };

template <typename acc_t, FinalMode kMode>
__global__ void finalize_rows_kernel(const RowData<acc_t> d) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; row < d.rows;
       row += stride) {
    Coef<acc_t> c;
    if constexpr (kMode == FinalMode::Stats || kMode == FinalMode::Affine) {
      WelfordState<acc_t> st;
      for (int64_t k = 0; k < d.chunks; ++k) {
        WelfordState<acc_t> part;
        part.mean = d.partial0[row * d.chunks + k];
        part.m2 = d.partial1[row * d.chunks + k];
        part.count = d.chunk_count(k);
        st = welford_merge(st, part);
      }
      const acc_t std_x = std_of(st, d.eps, d.unbiased);
      d.mean_out[row] = st.mean;
      d.std_out[row] = std_x;
      if constexpr (kMode == FinalMode::Stats) continue;
      c = affine_forward_coef(st.mean, std_x, d.target_mean[row], d.target_std[row], d.alpha);
    } else if constexpr (kMode == FinalMode::AffineBackward) {
      acc_t sg = 0, sgxc = 0;
      for (int64_t k = 0; k < d.chunks; ++k) {
        sg += d.partial0[row * d.chunks + k];
        sgxc += d.partial1[row * d.chunks + k];
      }
      acc_t grad_mean = 0, grad_std = 0;
      c = affine_backward_coef(sg, sgxc, d.x_mean[row], d.x_std[row], d.std_target[row], d.alpha,
                               d.L, d.unbiased, grad_mean, grad_std);
      d.grad_mean_out[row] = grad_mean;
      d.grad_std_out[row] = grad_std;
    } else {
      c = mean_std_backward_coef(d.grad_mean_in[row], d.grad_std_in[row], d.x_mean[row],
                                 d.x_std[row], d.L, d.unbiased);
    }
    d.coef[4 * row + 0] = c.A;
    d.coef[4 * row + 1] = c.B;
    d.coef[4 * row + 2] = c.M;
    d.coef[4 * row + 3] = c.C0;
  }
}

// ---- Path 3: channels_last. Element (n, c, l) lives at (n * L + l) * C + c.

constexpr int kClBlock = 256;

struct ClTile {
  int64_t n, chunk, c0, l_begin, l_end;
  int valid;  // channels of this thread inside C (0..VEC)
};

// This thread's lanes in a channels_last block: tc across channels (threads_c of them, VEC channels
// each), tl across positions (threads_l of them).
struct ClLanes {
  int tc, tl, threads_l;
};

C10_DEVICE __forceinline__ ClLanes cl_lanes(int threads_c) {
  const int t = static_cast<int>(threadIdx.x);
  return {t % threads_c, t / threads_c, static_cast<int>(blockDim.x) / threads_c};
}

// Tiles of a channels_last launch: (image, channel tile, position chunk), the same order in the
// partial and the apply kernel.
template <typename T, typename acc_t>
C10_HOST_DEVICE __forceinline__ int64_t cl_tile_count(const Params<T, acc_t>& p) {
  return (p.d.rows / p.channels) * p.channel_tiles * p.d.chunks;
}

template <typename T, typename acc_t, int VEC>
C10_DEVICE __forceinline__ ClTile cl_tile(const Params<T, acc_t>& p, int64_t tile, int tc) {
  const RowData<acc_t>& d = p.d;
  const int64_t per_n = p.channel_tiles * d.chunks;
  ClTile t;
  t.n = tile / per_n;
  const int64_t rem = tile % per_n;
  const int64_t ct = rem / d.chunks;
  t.chunk = rem % d.chunks;
  t.c0 = (ct * p.threads_c + tc) * VEC;
  t.l_begin = t.chunk * d.chunk_len;
  t.l_end = std::min(d.L, t.l_begin + d.chunk_len);
  const int64_t left = p.channels - t.c0;
  t.valid = left <= 0 ? 0 : (left < VEC ? static_cast<int>(left) : VEC);
  return t;
}

// Walks this thread's positions of tile t (VEC channels each), kUnroll positions per step: loads
// all first (x, and g when kWithG; channels past C as 0), then calls use(offset, x_slot, g_slot)
// on each in order, offset being the flat index of the slot's first channel.
template <typename T, typename acc_t, int VEC, bool kWithG, typename Use>
C10_DEVICE __forceinline__ void walk_cl_positions(const Params<T, acc_t>& p, const ClTile& t,
                                                  const ClLanes& lanes, Use&& use) {
  const int64_t step = static_cast<int64_t>(lanes.threads_l);
  for (int64_t l0 = t.l_begin + lanes.tl; l0 < t.l_end; l0 += step * kUnroll) {
    Vec<T, VEC> vx[kUnroll], vg[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t l = l0 + u * step;
      if (l < t.l_end) {
        const int64_t off = (t.n * p.d.L + l) * p.channels + t.c0;
        vx[u] = load_slot<T, VEC>(p.x, off, 0, t.valid, p.channels_aligned);
        if (kWithG) vg[u] = load_slot<T, VEC>(p.g, off, 0, t.valid, p.channels_aligned);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t l = l0 + u * step;
      if (l < t.l_end) use((t.n * p.d.L + l) * p.channels + t.c0, vx[u], vg[u]);
    }
  }
}

// Per-channel partial states of a (channel tile, position chunk): Welford of x, or (kSums) the
// backward's sum(g) and sum(g * (x - mean)).
template <typename T, typename acc_t, bool kSums>
__global__ void __launch_bounds__(kClBlock) cl_partial_kernel(const Params<T, acc_t> p) {
  constexpr int VEC = vec_width<T>();
  __shared__ acc_t sh_a[kClBlock * VEC];
  __shared__ acc_t sh_b[kClBlock * VEC];
  __shared__ int64_t sh_n[kClBlock];
  const RowData<acc_t>& d = p.d;
  const ClLanes lanes = cl_lanes(p.threads_c);
  const int tl = lanes.tl, threads_l = lanes.threads_l;

  for (int64_t tile = blockIdx.x; tile < cl_tile_count(p); tile += gridDim.x) {
    const ClTile t = cl_tile<T, acc_t, VEC>(p, tile, lanes.tc);
    acc_t a[VEC], b[VEC], mean[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      a[j] = b[j] = 0;
      mean[j] = (kSums && j < t.valid) ? d.x_mean[t.n * p.channels + t.c0 + j] : acc_t(0);
    }
    int64_t count = 0;
    if (t.valid > 0) {
      walk_cl_positions<T, acc_t, VEC, kSums>(
          p, t, lanes, [&](int64_t, const Vec<T, VEC>& vx, const Vec<T, VEC>& vg) {
            if constexpr (kSums) {
#pragma unroll
              for (int j = 0; j < VEC; ++j) {
                const acc_t gj = static_cast<acc_t>(vg.v[j]);
                a[j] += gj;
                b[j] += gj * (static_cast<acc_t>(vx.v[j]) - mean[j]);
              }
            } else {  // Welford, one division per VEC channels
              ++count;
              const acc_t inv = acc_t(1) / static_cast<acc_t>(count);
#pragma unroll
              for (int j = 0; j < VEC; ++j) {
                const acc_t xj = static_cast<acc_t>(vx.v[j]);
                const acc_t delta = xj - a[j];
                a[j] += delta * inv;
                b[j] += delta * (xj - a[j]);
              }
            }
          });
    }
    // Column-wise tree over the threads_l position threads (a power of two), fixed order.
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      sh_a[threadIdx.x * VEC + j] = a[j];
      sh_b[threadIdx.x * VEC + j] = b[j];
    }
    sh_n[threadIdx.x] = count;
    __syncthreads();
    for (int stride = threads_l / 2; stride > 0; stride /= 2) {
      if (tl < stride) {
        const int other = static_cast<int>(threadIdx.x) + stride * p.threads_c;
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          if constexpr (kSums) {
            sh_a[threadIdx.x * VEC + j] += sh_a[other * VEC + j];
            sh_b[threadIdx.x * VEC + j] += sh_b[other * VEC + j];
          } else {
            WelfordState<acc_t> x, y;
            x.mean = sh_a[threadIdx.x * VEC + j];
            x.m2 = sh_b[threadIdx.x * VEC + j];
            x.count = sh_n[threadIdx.x];
            y.mean = sh_a[other * VEC + j];
            y.m2 = sh_b[other * VEC + j];
            y.count = sh_n[other];
            const WelfordState<acc_t> z = welford_merge(x, y);
            sh_a[threadIdx.x * VEC + j] = z.mean;
            sh_b[threadIdx.x * VEC + j] = z.m2;
          }
        }
        if (!kSums) sh_n[threadIdx.x] += sh_n[other];
      }
      __syncthreads();
    }
    if (tl == 0) {
      for (int j = 0; j < t.valid; ++j) {
        const int64_t row = t.n * p.channels + t.c0 + j;
        d.partial0[row * d.chunks + t.chunk] = sh_a[threadIdx.x * VEC + j];
        d.partial1[row * d.chunks + t.chunk] = sh_b[threadIdx.x * VEC + j];
      }
    }
    __syncthreads();  // shared memory is rewritten by the next tile
  }
}

template <typename T, typename acc_t, bool kHasG>
__global__ void __launch_bounds__(kClBlock) cl_apply_kernel(const Params<T, acc_t> p) {
  constexpr int VEC = vec_width<T>();
  const RowData<acc_t>& d = p.d;
  const ClLanes lanes = cl_lanes(p.threads_c);

  for (int64_t tile = blockIdx.x; tile < cl_tile_count(p); tile += gridDim.x) {
    const ClTile t = cl_tile<T, acc_t, VEC>(p, tile, lanes.tc);
    if (t.valid == 0) continue;  // no barrier in this kernel
    Coef<acc_t> c[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      if (j < t.valid) c[j] = load_coef(d.coef, t.n * p.channels + t.c0 + j);
    }
    walk_cl_positions<T, acc_t, VEC, kHasG>(
        p, t, lanes, [&](int64_t off, const Vec<T, VEC>& vx, const Vec<T, VEC>& vg) {
          Vec<T, VEC> y;
#pragma unroll
          for (int j = 0; j < VEC; ++j) {
            const acc_t gj = kHasG ? static_cast<acc_t>(vg.v[j]) : acc_t(0);
            y.v[j] = static_cast<T>(
                apply_coef<acc_t, kHasG>(c[j], static_cast<acc_t>(vx.v[j]), gj));
          }
          store_slot<T, VEC>(p.out, off, 0, t.valid, y, p.channels_aligned);
        });
  }
}

// ---- Host side: geometry and launchers.

// Few long rows are split across blocks below this many rows per SM ...
constexpr int64_t kSplitRowsPerSM = 2;
// ... when a row has at least this many elements (shorter rows are cheap on one block anyway).
constexpr int64_t kSplitMinLen = 16384;
// A split segment has at least this many elements (a block's worth of 16-byte loads, 4 deep).
constexpr int64_t kMinChunk = 4096;
// Blocks to aim for: this many per SM.
constexpr int64_t kBlocksPerSM = 4;
// Shared-memory row cache per block. Rows that fit in kCacheBudget (and in half an SM's shared
// memory) are cached whole with two blocks per SM. Longer rows get as much as one block may take
// (one block per SM): what does not fit is read again right after the first sweep, from L2, and
// one block per SM keeps that in-flight remainder small next to L2.
constexpr int64_t kCacheBudget = 96 * 1024;

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

// Segments per row on the split path: enough blocks for the device, each at least kMinChunk.
template <typename T>
inline void choose_chunks(int64_t rows, int64_t L, const Device& dev, int64_t& chunks,
                          int64_t& chunk_len) {
  constexpr int VEC = vec_width<T>();
  const int64_t want = std::max<int64_t>(1, ceil_div(kBlocksPerSM * dev.sms, rows));
  chunks = std::max<int64_t>(1, std::min(want, L / kMinChunk));
  chunk_len = ceil_div(ceil_div(L, chunks), VEC) * VEC;  // chunk starts stay on the row's slot grid
  chunks = ceil_div(L, chunk_len);
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
template <typename T>
inline RowsLaunch plan_rows(int64_t segments, int64_t seg_len, bool aligned, int cached_rows,
                            const Device& dev) {
  constexpr int VEC = vec_width<T>();
  RowsLaunch r;
  const int64_t max_slots = aligned ? ceil_div(seg_len, VEC) : ceil_div(seg_len + VEC - 1, VEC);
  r.row_slots = max_slots;
  r.group = std::min(1024, next_pow2(ceil_div(max_slots, kSlotsPerThread)));
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

template <typename T, typename acc_t, RowMode kMode>
inline void launch_rows(Params<T, acc_t> p, const RowsLaunch& r) {
  p.group = r.group;
  p.num_blocks = r.num_blocks;
  p.cache_slots = r.cache_slots;
  auto kernel = contig_rows_kernel<T, acc_t, kMode>;
  if (r.smem > 0) ensure_dynamic_smem(reinterpret_cast<const void*>(kernel), r.smem);
  kernel<<<r.grid, r.block, r.smem, at::cuda::getCurrentCUDAStream()>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename acc_t, FinalMode kMode>
inline void launch_finalize(const RowData<acc_t>& d, const Device& dev) {
  constexpr int kBlock = 128;
  const int grid = static_cast<int>(std::min<int64_t>(ceil_div(d.rows, kBlock), 32 * dev.sms));
  finalize_rows_kernel<acc_t, kMode><<<grid, kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(d);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// channels_last geometry: threads_c threads across channels, the rest of the block across
// positions; positions cut into chunks until there are enough tiles for the device.
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
  int64_t chunks = std::max<int64_t>(1, std::min(want, L / (threads_l * kUnroll)));
  p.d.chunk_len = ceil_div(L, chunks);
  p.d.chunks = ceil_div(L, p.d.chunk_len);
  return static_cast<int>(std::min<int64_t>(base * p.d.chunks, 32 * dev.sms));
}

template <typename T, typename acc_t, bool kSums>
inline void launch_cl_partial(const Params<T, acc_t>& p, int grid) {
  cl_partial_kernel<T, acc_t, kSums><<<grid, kClBlock, 0, at::cuda::getCurrentCUDAStream()>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, typename acc_t, bool kHasG>
inline void launch_cl_apply(const Params<T, acc_t>& p, int grid) {
  cl_apply_kernel<T, acc_t, kHasG><<<grid, kClBlock, 0, at::cuda::getCurrentCUDAStream()>>>(p);
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
  int64_t chunks = 1;    // segments per row
};

inline std::mutex launch_record_mutex;
inline LaunchRecord last_launch_record;

inline void record_launch(LaunchPath path, int64_t launches, int64_t grid, int64_t block,
                          int64_t smem, int64_t chunks) {
  const std::lock_guard<std::mutex> lock(launch_record_mutex);
  last_launch_record = LaunchRecord{path, launches, grid, block, smem, chunks};
}

inline void record_rows_launch(const RowsLaunch& r, int cached_rows, int64_t launches,
                               int64_t chunks) {
  LaunchPath path = LaunchPath::Rows;
  if (chunks > 1) {
    path = LaunchPath::Split;
  } else if (r.block > r.group) {
    path = LaunchPath::Packed;
  } else if (cached_rows > 0 && r.cache_slots < r.row_slots) {
    path = LaunchPath::RowsPartialCache;
  }
  record_launch(path, launches, r.grid, r.block, static_cast<int64_t>(r.smem), chunks);
}

inline std::vector<int64_t> last_launch() {
  const std::lock_guard<std::mutex> lock(launch_record_mutex);
  const LaunchRecord& r = last_launch_record;
  return {static_cast<int64_t>(r.path), r.launches, r.grid, r.block, r.smem, r.chunks};
}

// ---- Host helpers for the op files.

// The kernels walk 16-byte slots from the base pointer: an input that is a view starting off a
// 16-byte boundary (rare: a slice) is copied once.
inline at::Tensor aligned16(const at::Tensor& t, at::MemoryFormat format) {
  if (reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0) return t;
  return t.clone(format);
}

// Partial-state workspace of a split or channels_last launch: [R, chunks] twice.
template <typename acc_t>
inline at::Tensor attach_partials(RowData<acc_t>& d, const at::TensorOptions& acc_options) {
  at::Tensor ws = at::empty({2, d.rows * d.chunks}, acc_options);
  d.partial0 = ws.data_ptr<acc_t>();
  d.partial1 = d.partial0 + d.rows * d.chunks;
  return ws;
}

template <typename acc_t>
inline at::Tensor attach_coef(RowData<acc_t>& d, const at::TensorOptions& acc_options) {
  at::Tensor coef = at::empty({d.rows, 4}, acc_options);
  d.coef = coef.data_ptr<acc_t>();
  return coef;
}


// ---- The three paths, once for every reduce-then-map op.

// The reductions an op needs per row, and whether it then maps the rows to an output.
enum class RowOp {
  Stats,           // mean_std: statistics only
  Affine,          // affine forward: statistics, then out
  AffineBackward,  // affine backward: gradient sums, then grad_x
};

template <RowOp kOp>
struct RowOpKernels {
  static constexpr bool kGrad = kOp == RowOp::AffineBackward;  // reduces (g, x), maps with g
  static constexpr bool kMaps = kOp != RowOp::Stats;
  static constexpr RowMode kOneLaunch =
      kOp == RowOp::Stats ? RowMode::Stats : kGrad ? RowMode::AffineBackward : RowMode::Affine;
  static constexpr RowMode kPartial = kGrad ? RowMode::PartialSums : RowMode::PartialWelford;
  static constexpr RowMode kApply = kGrad ? RowMode::ApplyGrad : RowMode::Apply;
  static constexpr FinalMode kFinal =
      kOp == RowOp::Stats ? FinalMode::Stats : kGrad ? FinalMode::AffineBackward : FinalMode::Affine;
  static constexpr int kCachedRows = kOp == RowOp::Stats ? 0 : kGrad ? 2 : 1;  // tensors cached
};

// Runs op kOp over the R = p.d.rows rows of length L = p.d.L that p describes (pointers and
// per-row inputs set by the op file) by the path the layout and shape select:
//   channels_last:  partial states per (image, channel tile, chunk), finalize, apply   (3 launches)
//   few long rows:  partial states per row segment, finalize, apply                     (3 launches)
//   otherwise:      one launch, each row reduced and mapped while cached on chip        (1 launch)
// The workspaces are freed on return; the caching allocator keeps them for this stream's work.
template <RowOp kOp, typename T, typename acc_t>
inline void run_row_op(Params<T, acc_t>& p, Layout layout, int64_t N, int64_t C,
                       const at::TensorOptions& acc_options, const Device& dev) {
  using K = RowOpKernels<kOp>;
  constexpr int VEC = vec_width<T>();
  const int64_t R = p.d.rows, L = p.d.L;
  at::Tensor partials, coef;
  if (layout == Layout::ChannelsLast) {
    const int grid = plan_channels_last(p, N, C, L, dev);
    partials = attach_partials(p.d, acc_options);
    if (K::kMaps) coef = attach_coef(p.d, acc_options);
    launch_cl_partial<T, acc_t, K::kGrad>(p, grid);
    launch_finalize<acc_t, K::kFinal>(p.d, dev);
    if (K::kMaps) launch_cl_apply<T, acc_t, K::kGrad>(p, grid);
    record_launch(LaunchPath::ChannelsLast, K::kMaps ? 3 : 2, grid, kClBlock, 0, p.d.chunks);
  } else if (use_split(R, L, dev)) {
    choose_chunks<T>(R, L, dev, p.d.chunks, p.d.chunk_len);
    partials = attach_partials(p.d, acc_options);
    if (K::kMaps) coef = attach_coef(p.d, acc_options);
    const RowsLaunch geometry = plan_rows<T>(R * p.d.chunks, p.d.chunk_len, L % VEC == 0, 0, dev);
    launch_rows<T, acc_t, K::kPartial>(p, geometry);
    launch_finalize<acc_t, K::kFinal>(p.d, dev);
    if (K::kMaps) launch_rows<T, acc_t, K::kApply>(p, geometry);
    record_rows_launch(geometry, 0, K::kMaps ? 3 : 2, p.d.chunks);
  } else {
    const RowsLaunch geometry = plan_rows<T>(R, L, L % VEC == 0, K::kCachedRows, dev);
    launch_rows<T, acc_t, K::kOneLaunch>(p, geometry);
    record_rows_launch(geometry, K::kCachedRows, 1, 1);
  }
}

}  // namespace cuda
}  // namespace adain
