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
// With kWithN (the prologue), also the noise of the slot's positions, use(offset, x, g, noise):
// (N, C, *) noise is read like x, (N, 1, *) noise once per position for all VEC channels, and no
// noise (null) reads as 0.
template <typename T, typename acc_t, int VEC, bool kWithG, bool kWithN = false, typename Use>
C10_DEVICE __forceinline__ void walk_cl_positions(const Params<T, acc_t>& p, const ClTile& t,
                                                  const ClLanes& lanes, Use&& use) {
  const int64_t step = static_cast<int64_t>(lanes.threads_l);
  for (int64_t l0 = t.l_begin + lanes.tl; l0 < t.l_end; l0 += step * kUnroll) {
    Vec<T, VEC> vx[kUnroll], vg[kUnroll], vn[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t l = l0 + u * step;
      if (l < t.l_end) {
        const int64_t off = (t.n * p.d.L + l) * p.channels + t.c0;
        vx[u] = load_slot<T, VEC>(p.x, off, 0, t.valid, p.channels_aligned);
        if (kWithG) vg[u] = load_slot<T, VEC>(p.g, off, 0, t.valid, p.channels_aligned);
        if constexpr (kWithN) {
          if (p.noise != nullptr && p.pro.noise_channels != 1) {
            vn[u] = load_slot<T, VEC>(p.noise, off, 0, t.valid, p.channels_aligned);
          } else {
            const T one = p.noise != nullptr ? p.noise[t.n * p.d.L + l] : static_cast<T>(0.0f);
#pragma unroll
            for (int j = 0; j < VEC; ++j) vn[u].v[j] = one;
          }
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t l = l0 + u * step;
      if (l < t.l_end) {
        if constexpr (kWithN) {
          use((t.n * p.d.L + l) * p.channels + t.c0, vx[u], vg[u], vn[u]);
        } else {
          use((t.n * p.d.L + l) * p.channels + t.c0, vx[u], vg[u]);
        }
      }
    }
  }
}

// The per-channel prologue of this thread's channels (kPrologue kernels).
template <typename T, typename acc_t, int VEC>
C10_DEVICE __forceinline__ void cl_prologue_of(const Params<T, acc_t>& p, const ClTile& t,
                                               RowPrologue<acc_t> (&r)[VEC]) {
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    if (j < t.valid) r[j] = channel_prologue(p.pro, t.c0 + j);
  }
}

// A column-wise tree of sh_a and sh_b over the threads_l position threads (a power of two), fixed
// order; the results sit in the tl == 0 threads' entries.
template <typename acc_t, int VEC>
C10_DEVICE __forceinline__ void cl_sum_tree(acc_t* sh_a, acc_t* sh_b, int tl, int threads_l,
                                            int threads_c) {
  __syncthreads();
  for (int stride = threads_l / 2; stride > 0; stride /= 2) {
    if (tl < stride) {
      const int other = static_cast<int>(threadIdx.x) + stride * threads_c;
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        sh_a[threadIdx.x * VEC + j] += sh_a[other * VEC + j];
        sh_b[threadIdx.x * VEC + j] += sh_b[other * VEC + j];
      }
    }
    __syncthreads();
  }
}

// cl_partial_kernel with the affine op's prologue (Params::pro, Params::noise): the same tiles and
// trees over p = act_pre(x + weight * noise + bias); the backward (kSums) also sums the masked
// PrologueSums, whose six fields are reduced after its GradSums, two at a time through the same
// shared arrays, into Params::pro.partial.
template <typename T, typename acc_t, bool kSums, bool kEpilogue>
__global__ void __launch_bounds__(kClBlock) cl_partial_prologue_kernel(const Params<T, acc_t> p) {
  static_assert(kSums || !kEpilogue, "the epilogue changes only the backward's sums");
  constexpr int VEC = vec_width<T>();
  __shared__ acc_t sh_a[kClBlock * VEC];
  __shared__ acc_t sh_b[kClBlock * VEC];
  __shared__ int64_t sh_n[kClBlock];
  const RowData<acc_t>& d = p.d;
  const PrologueData<acc_t>& pro = p.pro;
  const ClLanes lanes = cl_lanes(p.threads_c);
  const int tl = lanes.tl, threads_l = lanes.threads_l;
  const int64_t entries = d.rows * d.segments;

  for (int64_t tile = blockIdx.x; tile < cl_tile_count(p); tile += gridDim.x) {
    const ClTile t = cl_tile<T, acc_t, VEC>(p, tile, lanes.tc);
    acc_t a[VEC], b[VEC], mean[VEC];
    PrologueSums<acc_t> ps[VEC];
    RowCoef<acc_t> fwd[VEC];  // kEpilogue: each channel's forward map
    RowPrologue<acc_t> r[VEC];
    cl_prologue_of<T, acc_t, VEC>(p, t, r);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      a[j] = b[j] = 0;
      mean[j] = (kSums && j < t.valid) ? d.mean_x[t.n * p.channels + t.c0 + j] : acc_t(0);
      if (kEpilogue && j < t.valid) fwd[j] = forward_coef_of(d, t.n * p.channels + t.c0 + j);
    }
    int64_t count = 0;
    if (t.valid > 0) {
      walk_cl_positions<T, acc_t, VEC, kSums, true>(
          p, t, lanes,
          [&](int64_t, const Vec<T, VEC>& vx, const Vec<T, VEC>& vg, const Vec<T, VEC>& vn) {
            if constexpr (kSums) {
#pragma unroll
              for (int j = 0; j < VEC; ++j) {  // channels past C: never written out
                const acc_t nj = static_cast<acc_t>(vn.v[j]);
                const PreP<acc_t> pp =
                    prologue_element(pro.act, r[j], static_cast<acc_t>(vx.v[j]), nj);
                const acc_t gj = epilogue_grad<kEpilogue>(d.epilogue, fwd[j], pp.p,
                                                          static_cast<acc_t>(vg.v[j]));
                const acc_t dev = pp.p - mean[j];
                a[j] += gj;
                b[j] += gj * dev;
                prologue_sums_add(ps[j], activation_grad(pro.act, pp.pre, acc_t(1)), gj, dev,
                                  nj);
              }
            } else {  // Welford, one division per VEC channels
              ++count;
              const acc_t inv = acc_t(1) / static_cast<acc_t>(count);
#pragma unroll
              for (int j = 0; j < VEC; ++j) {
                const acc_t pj = prologue_element(pro.act, r[j], static_cast<acc_t>(vx.v[j]),
                                                  static_cast<acc_t>(vn.v[j])).p;
                const acc_t delta = pj - a[j];
                a[j] += delta * inv;
                b[j] += delta * (pj - a[j]);
              }
            }
          });
    }
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      sh_a[threadIdx.x * VEC + j] = a[j];
      sh_b[threadIdx.x * VEC + j] = b[j];
    }
    sh_n[threadIdx.x] = count;
    if constexpr (kSums) {
      cl_sum_tree<acc_t, VEC>(sh_a, sh_b, tl, threads_l, p.threads_c);
    } else {
      __syncthreads();
      for (int stride = threads_l / 2; stride > 0; stride /= 2) {
        if (tl < stride) {
          const int other = static_cast<int>(threadIdx.x) + stride * p.threads_c;
#pragma unroll
          for (int j = 0; j < VEC; ++j) {
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
          sh_n[threadIdx.x] += sh_n[other];
        }
        __syncthreads();
      }
    }
    if (tl == 0) {
      for (int j = 0; j < t.valid; ++j) {
        const int64_t entry = (t.n * p.channels + t.c0 + j) * d.segments + t.segment;
        if constexpr (kSums) {
          d.partial_sum_g[entry] = sh_a[threadIdx.x * VEC + j];
          d.partial_sum_g_dev[entry] = sh_b[threadIdx.x * VEC + j];
        } else {
          d.partial_mean[entry] = sh_a[threadIdx.x * VEC + j];
          d.partial_m2[entry] = sh_b[threadIdx.x * VEC + j];
        }
      }
    }
    if constexpr (kSums) {
      // The PrologueSums, two fields per tree: (sum_mg, sum_mdev), (sum_m, sum_mg_noise),
      // (sum_mdev_noise, sum_m_noise), fields 2k and 2k + 1 of the partial workspace.
#pragma unroll
      for (int k = 0; k < 3; ++k) {
        __syncthreads();  // the previous tree's results were read
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const PrologueSums<acc_t>& q = ps[j];
          sh_a[threadIdx.x * VEC + j] = k == 0 ? q.sum_mg : k == 1 ? q.sum_m : q.sum_mdev_noise;
          sh_b[threadIdx.x * VEC + j] = k == 0 ? q.sum_mdev : k == 1 ? q.sum_mg_noise
                                                                     : q.sum_m_noise;
        }
        cl_sum_tree<acc_t, VEC>(sh_a, sh_b, tl, threads_l, p.threads_c);
        if (tl == 0) {
          for (int j = 0; j < t.valid; ++j) {
            const int64_t entry = (t.n * p.channels + t.c0 + j) * d.segments + t.segment;
            pro.partial[(2 * k) * entries + entry] = sh_a[threadIdx.x * VEC + j];
            pro.partial[(2 * k + 1) * entries + entry] = sh_b[threadIdx.x * VEC + j];
          }
        }
      }
    }
    __syncthreads();  // shared memory is rewritten by the next tile
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
// cl_apply_kernel with the prologue: the map of p (and, kHasG, its gradient times
// act_pre'(pre)).
template <typename T, typename acc_t, bool kHasG, bool kEpilogue>
__global__ void __launch_bounds__(kClBlock) cl_apply_prologue_kernel(const Params<T, acc_t> p) {
  constexpr int VEC = vec_width<T>();
  const RowData<acc_t>& d = p.d;
  const ClLanes lanes = cl_lanes(p.threads_c);
  {
    for (int64_t tile = blockIdx.x; tile < cl_tile_count(p); tile += gridDim.x) {
      const ClTile t = cl_tile<T, acc_t, VEC>(p, tile, lanes.tc);
      if (t.valid == 0) continue;  // no barrier in this kernel
      RowCoef<acc_t> c[VEC], fwd[VEC];
      RowPrologue<acc_t> r[VEC];
      cl_prologue_of<T, acc_t, VEC>(p, t, r);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        if (j < t.valid) c[j] = load_coef(d.coef, t.n * p.channels + t.c0 + j);
        if (kEpilogue && kHasG && j < t.valid) {
          fwd[j] = forward_coef_of(d, t.n * p.channels + t.c0 + j);
        }
      }
      walk_cl_positions<T, acc_t, VEC, kHasG, true>(
          p, t, lanes,
          [&](int64_t off, const Vec<T, VEC>& vx, const Vec<T, VEC>& vg, const Vec<T, VEC>& vn) {
            Vec<T, VEC> y;
#pragma unroll
            for (int j = 0; j < VEC; ++j) {
              y.v[j] = static_cast<T>(prologue_map_element<kHasG, kEpilogue>(
                  c[j], d.epilogue, fwd[j], p.pro.act, r[j], static_cast<acc_t>(vx.v[j]),
                  static_cast<acc_t>(vn.v[j]), kHasG ? static_cast<acc_t>(vg.v[j]) : acc_t(0)));
            }
            store_slot<T, VEC>(p.out, off, 0, t.valid, y, p.channels_aligned);
          });
    }
  }
}

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
