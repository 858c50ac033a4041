// Path 3 (see launch.cuh): channels_last input. cl_partial_kernel writes per-channel partial
// states of (channel tile, position segment) tiles, finalize_rows_kernel (rows_kernels.cuh) merges
// them, cl_apply_kernel writes the output.
#pragma once

#include <algorithm>

#include "cuda/params.cuh"
#include "cuda/reduce.cuh"
#include "row_math.h"
#include "welford.h"

namespace adain {
namespace cuda {

// ---- Path 3: channels_last. Element (n, c, l) lives at (n * L + l) * C + c.

constexpr int kClBlock = 256;

struct ClTile {
  int64_t n, segment, c0, l_begin, l_end;
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

// Tiles of a channels_last launch: (image, channel tile, position segment), the same order in the
// partial and the apply kernel.
template <typename T, typename acc_t>
C10_HOST_DEVICE __forceinline__ int64_t cl_tile_count(const Params<T, acc_t>& p) {
  return (p.d.rows / p.channels) * p.channel_tiles * p.d.segments;
}

template <typename T, typename acc_t, int VEC>
C10_DEVICE __forceinline__ ClTile cl_tile(const Params<T, acc_t>& p, int64_t tile, int tc) {
  const RowData<acc_t>& d = p.d;
  const int64_t per_n = p.channel_tiles * d.segments;
  ClTile t;
  t.n = tile / per_n;
  const int64_t rem = tile % per_n;
  const int64_t ct = rem / d.segments;
  t.segment = rem % d.segments;
  t.c0 = (ct * p.threads_c + tc) * VEC;
  t.l_begin = t.segment * d.segment_len;
  t.l_end = std::min(d.L, t.l_begin + d.segment_len);
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

// Per-channel partial states of a (channel tile, position segment): Welford of x (a = mean, b =
// m2), or (kSums) the backward's GradSums (a = sum_g, b = sum_g_dev; of g_y with kEpilogue).
template <typename T, typename acc_t, bool kSums, bool kEpilogue = false>
__global__ void __launch_bounds__(kClBlock) cl_partial_kernel(const Params<T, acc_t> p) {
  static_assert(kSums || !kEpilogue, "the epilogue changes only the backward's sums");
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
    RowCoef<acc_t> fwd[VEC];  // kEpilogue: each channel's forward map
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      a[j] = b[j] = 0;
      mean[j] = (kSums && j < t.valid) ? d.mean_x[t.n * p.channels + t.c0 + j] : acc_t(0);
      if (kEpilogue && j < t.valid) fwd[j] = forward_coef_of(d, t.n * p.channels + t.c0 + j);
    }
    int64_t count = 0;
    if (t.valid > 0) {
      walk_cl_positions<T, acc_t, VEC, kSums>(
          p, t, lanes, [&](int64_t, const Vec<T, VEC>& vx, const Vec<T, VEC>& vg) {
            if constexpr (kSums) {
#pragma unroll
              for (int j = 0; j < VEC; ++j) {  // channels past C: x = g = 0, so g_y = 0
                const acc_t xj = static_cast<acc_t>(vx.v[j]);
                const acc_t gj = epilogue_grad<kEpilogue>(d.epilogue, fwd[j], xj,
                                                          static_cast<acc_t>(vg.v[j]));
                a[j] += gj;
                b[j] += gj * (xj - mean[j]);
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
        const int64_t entry = row * d.segments + t.segment;
        if constexpr (kSums) {
          d.partial_sum_g[entry] = sh_a[threadIdx.x * VEC + j];
          d.partial_sum_g_dev[entry] = sh_b[threadIdx.x * VEC + j];
        } else {
          d.partial_mean[entry] = sh_a[threadIdx.x * VEC + j];
          d.partial_m2[entry] = sh_b[threadIdx.x * VEC + j];
        }
      }
    }
    __syncthreads();  // shared memory is rewritten by the next tile
  }
}

// out = map_element(coef, x, g) per channel: the forward's map (activated with kEpilogue), or
// (kHasG) the backward's (with g_y for g with kEpilogue).
template <typename T, typename acc_t, bool kHasG, bool kEpilogue = false>
__global__ void __launch_bounds__(kClBlock) cl_apply_kernel(const Params<T, acc_t> p) {
  constexpr int VEC = vec_width<T>();
  const RowData<acc_t>& d = p.d;
  const ClLanes lanes = cl_lanes(p.threads_c);

  for (int64_t tile = blockIdx.x; tile < cl_tile_count(p); tile += gridDim.x) {
    const ClTile t = cl_tile<T, acc_t, VEC>(p, tile, lanes.tc);
    if (t.valid == 0) continue;  // no barrier in this kernel
    RowCoef<acc_t> c[VEC], fwd[VEC];  // fwd: the forward's map, read by the backward's epilogue
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      if (j < t.valid) c[j] = load_coef(d.coef, t.n * p.channels + t.c0 + j);
      if (kEpilogue && kHasG && j < t.valid) {
        fwd[j] = forward_coef_of(d, t.n * p.channels + t.c0 + j);
      }
    }
    walk_cl_positions<T, acc_t, VEC, kHasG>(
        p, t, lanes, [&](int64_t off, const Vec<T, VEC>& vx, const Vec<T, VEC>& vg) {
          Vec<T, VEC> y;
#pragma unroll
          for (int j = 0; j < VEC; ++j) {
            const acc_t gj = kHasG ? static_cast<acc_t>(vg.v[j]) : acc_t(0);
            y.v[j] = static_cast<T>(map_element<kHasG, kEpilogue>(
                c[j], d.epilogue, fwd[j], static_cast<acc_t>(vx.v[j]), gj));
          }
          store_slot<T, VEC>(p.out, off, 0, t.valid, y, p.channels_aligned);
        });
  }
}

}  // namespace cuda
}  // namespace adain
