// Path 1 and the contiguous half of path 2 (see launch.cuh): contig_rows_kernel, a group of
// threads per row segment of a contiguous tensor, and finalize_rows_kernel, which merges the
// partial states of a split row (of either layout) and writes its statistics and coefficients.
#pragma once

#include <algorithm>
#include <type_traits>

#include "cuda/params.cuh"
#include "cuda/reduce.cuh"
#include "row_math.h"
#include "welford.h"

namespace adain {
namespace cuda {

// Walks this lane's slots of a segment, kU slots per step: loads all kU first (x, and g when
// kWithG; when kFromCache, slots below `cached` from the shared-memory cache, the rest from global
// memory; masked elements as 0), then calls use(s, lo, hi, x_slot, g_slot) on each in order.
// Loading before using keeps kU 16-byte loads per input in flight. (kFromCache is a template
// flag, not cached == 0: the compiler cannot drop an `s < 0` test, and at 64 registers the dead
// branch made the 16-bit kernels spill.)
// The prologue's noise along a row segment (kWithN): the noise element of x's flat offset o is at
// o + shift (shift = (noise row - x's row) * L), a 16-byte load only when `aligned` (shift a
// multiple of VEC); no noise (null) reads as 0 and loads nothing. Cached like x.
template <typename T, int VEC>
struct NoiseRow {
  const T* noise = nullptr;
  int64_t shift = 0;
  bool aligned = true;
  Vec<T, VEC>* cache = nullptr;
};

// (with kWithN, also the noise of each slot: use(s, lo, hi, x_slot, g_slot, noise_slot).)
template <typename T, int VEC, int kU, bool kWithG, bool kFromCache, bool kWithN = false,
          typename Use>
C10_DEVICE __forceinline__ void walk_slots(const T* __restrict__ x, const T* __restrict__ g,
                                           const Segment& seg, int lane, int group,
                                           const Vec<T, VEC>* cache_x, const Vec<T, VEC>* cache_g,
                                           int64_t cached, Use&& use,
                                           const NoiseRow<T, VEC>& nr = NoiseRow<T, VEC>{}) {
  const int64_t step = static_cast<int64_t>(group);
  for (int64_t s0 = lane; s0 < seg.nslots; s0 += step * kU) {
    Vec<T, VEC> vx[kU], vg[kU], vn[kU];
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
        if constexpr (kWithN) {
          if (nr.noise == nullptr) {
#pragma unroll
            for (int j = 0; j < VEC; ++j) vn[u].v[j] = static_cast<T>(0.0f);
          } else if (kFromCache && s < cached) {
            vn[u] = nr.cache[s];
          } else {
            vn[u] = load_slot<T, VEC>(nr.noise, seg.first + s * VEC + nr.shift, lo[u], hi[u],
                                      nr.aligned);
          }
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int64_t s = s0 + u * step;
      if (s < seg.nslots) {
        if constexpr (kWithN) {
          use(s, lo[u], hi[u], vx[u], vg[u], vn[u]);
        } else {
          use(s, lo[u], hi[u], vx[u], vg[u]);
        }
      }
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

// lane_welford of p = act_pre(x + weight * noise + bias) (the prologue); x and the noise cached.
template <typename acc_t, typename T, int VEC, bool kCache>
C10_DEVICE __forceinline__ WelfordState<acc_t> lane_welford_prologue(
    const T* __restrict__ x, const Segment& seg, int lane, int group, Vec<T, VEC>* cache,
    int64_t cache_slots, const NoiseRow<T, VEC>& nr, const Epilogue<acc_t>& act,
    const RowPrologue<acc_t>& r) {
  WelfordState<acc_t> st;
  walk_slots<T, VEC, unroll_slots<T, true>(), false, false, true>(
      x, nullptr, seg, lane, group, nullptr, nullptr, 0,
      [&](int64_t s, int lo, int hi, const Vec<T, VEC>& vx, const Vec<T, VEC>&,
          const Vec<T, VEC>& vn) {
        if (kCache && s < cache_slots) {
          cache[s] = vx;
          if (nr.noise != nullptr) nr.cache[s] = vn;
        }
        Vec<acc_t, VEC> pv;
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          pv.v[j] = prologue_element(act, r, static_cast<acc_t>(vx.v[j]),
                                     static_cast<acc_t>(vn.v[j])).p;
        }
        st = welford_merge(st, slot_state<acc_t>(pv, lo, hi));
      },
      nr);
  return st;
}

// The backward's sums with the prologue: GradSums of (p, g_y) and the masked PrologueSums
// (prologue_sums_add) of this lane's slots, the elements outside the segment left out; x, g and
// the noise cached like lane_grad_sums.
template <typename acc_t, typename T, int VEC, bool kCache, bool kEpilogue>
C10_DEVICE __forceinline__ ProBackSums<acc_t> lane_prologue_sums(
    const T* __restrict__ x, const T* __restrict__ g, const Segment& seg, int lane, int group,
    acc_t mean, const Epilogue<acc_t>& e, const RowCoef<acc_t>& fwd, Vec<T, VEC>* cache_x,
    Vec<T, VEC>* cache_g, int64_t cache_slots, const NoiseRow<T, VEC>& nr,
    const Epilogue<acc_t>& act, const RowPrologue<acc_t>& r) {
  ProBackSums<acc_t> sums;
  walk_slots<T, VEC, 1, true, false, true>(
      x, g, seg, lane, group, nullptr, nullptr, 0,
      [&](int64_t s, int lo, int hi, const Vec<T, VEC>& vx, const Vec<T, VEC>& vg,
          const Vec<T, VEC>& vn) {
        if (kCache && s < cache_slots) {
          cache_x[s] = vx;
          cache_g[s] = vg;
          if (nr.noise != nullptr) nr.cache[s] = vn;
        }
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          if (j >= lo && j < hi) {
            const acc_t nj = static_cast<acc_t>(vn.v[j]);
            const PreP<acc_t> pp = prologue_element(act, r, static_cast<acc_t>(vx.v[j]), nj);
            const acc_t gj = epilogue_grad<kEpilogue>(e, fwd, pp.p, static_cast<acc_t>(vg.v[j]));
            const acc_t dev = pp.p - mean;
            sums.g.sum_g += gj;
            sums.g.sum_g_dev += gj * dev;
            prologue_sums_add(sums.p, activation_grad(act, pp.pre, acc_t(1)), gj, dev, nj);
          }
        }
      },
      nr);
  return sums;
}

// GradSums of this lane's slots (of g_y with kEpilogue: epilogue_grad); both rows cached like
// lane_welford (g as read: the map recomputes g_y).
template <typename acc_t, typename T, int VEC, bool kCache, bool kEpilogue>
C10_DEVICE __forceinline__ GradSums<acc_t> lane_grad_sums(const T* __restrict__ x,
                                                      const T* __restrict__ g, const Segment& seg,
                                                      int lane, int group, acc_t mean,
                                                      const Epilogue<acc_t>& e,
                                                      const RowCoef<acc_t>& fwd,
                                                      Vec<T, VEC>* cache_x, Vec<T, VEC>* cache_g,
                                                      int64_t cache_slots) {
  GradSums<acc_t> sums;
  walk_slots<T, VEC, unroll_slots<T, true>(), true, false>(
      x, g, seg, lane, group, nullptr, nullptr, 0,
      [&](int64_t s, int, int, const Vec<T, VEC>& vx, const Vec<T, VEC>& vg) {
        if (kCache && s < cache_slots) {
          cache_x[s] = vx;
          cache_g[s] = vg;
        }
        // Masked elements were loaded as 0 in g, so they add nothing (g_y of g = 0 is 0).
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const acc_t xj = static_cast<acc_t>(vx.v[j]);
          const acc_t gj = epilogue_grad<kEpilogue>(e, fwd, xj, static_cast<acc_t>(vg.v[j]));
          sums.sum_g += gj;
          sums.sum_g_dev += gj * (xj - mean);
        }
      });
  return sums;
}

// Writes out = map_element(c, x, g) over this lane's slots (apply_coef, with the epilogue when
// kEpilogue), reading cached slots from shared memory (each lane reads back only the slots it
// cached itself, so no barrier is needed).
template <typename acc_t, typename T, int VEC, bool kHasG, bool kEpilogue>
C10_DEVICE __forceinline__ void lane_apply(const T* __restrict__ x, const T* __restrict__ g,
                                           T* __restrict__ out, const Segment& seg, int lane,
                                           int group, const RowCoef<acc_t>& c,
                                           const Epilogue<acc_t>& e, const RowCoef<acc_t>& fwd,
                                           const Vec<T, VEC>* cache_x, const Vec<T, VEC>* cache_g,
                                           int64_t cache_slots) {
  walk_slots<T, VEC, unroll_slots<T, kHasG>(), kHasG, true>(
      x, g, seg, lane, group, cache_x, cache_g, cache_slots,
      [&](int64_t s, int lo, int hi, const Vec<T, VEC>& vx, const Vec<T, VEC>& vg) {
        Vec<T, VEC> y;
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const acc_t gj = kHasG ? static_cast<acc_t>(vg.v[j]) : acc_t(0);
          y.v[j] = static_cast<T>(
              map_element<kHasG, kEpilogue>(c, e, fwd, static_cast<acc_t>(vx.v[j]), gj));
        }
        store_slot<T, VEC>(out, seg.first + s * VEC, lo, hi, y);
      });
}

// lane_apply with the prologue: the map of p (and, kHasG, its gradient times act_pre'(pre)).
template <typename acc_t, typename T, int VEC, bool kHasG, bool kEpilogue>
C10_DEVICE __forceinline__ void lane_apply_prologue(
    const T* __restrict__ x, const T* __restrict__ g, T* __restrict__ out, const Segment& seg,
    int lane, int group, const RowCoef<acc_t>& c, const Epilogue<acc_t>& e,
    const RowCoef<acc_t>& fwd, const Vec<T, VEC>* cache_x, const Vec<T, VEC>* cache_g,
    int64_t cache_slots, const NoiseRow<T, VEC>& nr, const Epilogue<acc_t>& act,
    const RowPrologue<acc_t>& r) {
  walk_slots<T, VEC, 1, kHasG, true, true>(
      x, g, seg, lane, group, cache_x, cache_g, cache_slots,
      [&](int64_t s, int lo, int hi, const Vec<T, VEC>& vx, const Vec<T, VEC>& vg,
          const Vec<T, VEC>& vn) {
        Vec<T, VEC> y;
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          y.v[j] = static_cast<T>(prologue_map_element<kHasG, kEpilogue>(
              c, e, fwd, act, r, static_cast<acc_t>(vx.v[j]), static_cast<acc_t>(vn.v[j]),
              kHasG ? static_cast<acc_t>(vg.v[j]) : acc_t(0)));
        }
        store_slot<T, VEC>(out, seg.first + s * VEC, lo, hi, y);
      },
      nr);
}

// One group of p.group threads per segment (segment s of row r) of a contiguous tensor; with
// kEpilogue, the affine op's activation (RowData::epilogue) in the modes that map or sum g.
// With kPrologue, the affine op's prologue (Params::pro, Params::noise): every mode reduces and maps
// p = act_pre(x + weight * noise + bias) in place of x, the backward's modes also sum the masked
// PrologueSums, and the noise is cached with x.
// The prologue kernels take blocks of at most kPrologueBlock threads (plan_rows' max_group), so
// that their extra state fits in registers: at 1024 threads (64 registers) they spilled (ptxas,
// sm_90).
template <typename T, typename acc_t, RowMode kMode, bool kEpilogue = false, bool kPrologue = false>
__global__ void __launch_bounds__(kPrologue ? kPrologueBlock : 1024)
    contig_rows_kernel(const Params<T, acc_t> p) {
  static_assert(!kEpilogue || kMode == RowMode::Affine || kMode == RowMode::AffineBackward ||
                    kMode == RowMode::PartialSums || kMode == RowMode::Apply ||
                    kMode == RowMode::ApplyGrad,
                "the epilogue belongs to the affine op's modes");
  static_assert(!kPrologue || (kMode != RowMode::Stats && kMode != RowMode::Fused),
                "the prologue belongs to the affine op's modes");
  constexpr int VEC = vec_width<T>();
  using V = Vec<T, VEC>;
  constexpr bool kCache =
      kMode == RowMode::Affine || kMode == RowMode::Fused || kMode == RowMode::AffineBackward;
  constexpr bool kTwoRows = kMode == RowMode::AffineBackward;  // caches x and g
  extern __shared__ __align__(16) unsigned char cache_bytes[];
  __shared__ ReduceScratch<acc_t, std::conditional_t<kPrologue, ProBackSums<acc_t>,
                                                     WelfordState<acc_t>>> scratch;

  const RowData<acc_t>& d = p.d;
  const int group = p.group;
  const int segments_per_block = static_cast<int>(blockDim.x) / group;
  const int slot_in_block = static_cast<int>(threadIdx.x) / group;
  const int lane = static_cast<int>(threadIdx.x) % group;
  int64_t cached_rows = kTwoRows ? 2 : 1;  // tensors cached per segment
  if constexpr (kPrologue) cached_rows += p.noise != nullptr ? 1 : 0;  // the noise after them
  V* cache_x = reinterpret_cast<V*>(cache_bytes) +
               static_cast<int64_t>(slot_in_block) * p.cache_slots * cached_rows;
  V* cache_g = cache_x + p.cache_slots;
  const int64_t all_segments = d.rows * d.segments;

  for (int64_t block = blockIdx.x; block < p.num_blocks; block += gridDim.x) {
    // Inactive groups (past the last segment) still take part in the reductions.
    const int64_t segment = block * segments_per_block + slot_in_block;  // over all rows
    const bool active = segment < all_segments;
    const int64_t row = active ? segment / d.segments : 0;
    const int64_t segment_in_row = active ? segment % d.segments : 0;
    const int64_t begin = segment_in_row * d.segment_len;
    const int64_t len = active ? std::min(d.segment_len, d.L - begin) : 0;
    const Segment seg = make_segment<VEC>(row * d.L + begin, len);

    if constexpr (kPrologue) {
      const PrologueData<acc_t>& pro = p.pro;
      const Epilogue<acc_t>& act = pro.act;
      int64_t noise_row = row;
      const RowPrologue<acc_t> r =
          active ? row_prologue_of(pro, row, noise_row) : RowPrologue<acc_t>{};
      NoiseRow<T, VEC> nr;
      nr.noise = p.noise;
      nr.shift = (noise_row - row) * d.L;
      nr.aligned = nr.shift % VEC == 0;
      nr.cache = cache_x + (kTwoRows ? 2 : 1) * p.cache_slots;
      if constexpr (kMode == RowMode::PartialWelford || kMode == RowMode::Affine) {
        WelfordState<acc_t> st = lane_welford_prologue<acc_t, T, VEC, kCache>(
            p.x, seg, lane, group, cache_x, p.cache_slots, nr, act, r);
        st = group_allreduce(st, group, scratch);
        if constexpr (kMode == RowMode::PartialWelford) {
          if (active && lane == 0) {
            d.partial_mean[segment] = st.mean;
            d.partial_m2[segment] = st.m2;
          }
        } else {
          const acc_t mean_t = active ? d.mean_t[row] : acc_t(0);
          const acc_t std_t = active ? d.std_t[row] : acc_t(1);
          const acc_t mean_p = st.mean;
          const acc_t std_p = std_of(st, d.eps, d.unbiased);
          if (active && lane == 0) {
            d.mean_out[row] = mean_p;
            d.std_out[row] = std_p;
          }
          const RowCoef<acc_t> c = affine_forward_coef(mean_p, std_p, mean_t, std_t, d.alpha);
          lane_apply_prologue<acc_t, T, VEC, false, kEpilogue>(
              p.x, nullptr, p.out, seg, lane, group, c, d.epilogue, c, cache_x, nullptr,
              p.cache_slots, nr, act, r);
        }
      } else if constexpr (kMode == RowMode::AffineBackward || kMode == RowMode::PartialSums) {
        const acc_t mean_p = active ? d.mean_x[row] : acc_t(0);
        RowCoef<acc_t> fwd;  // inactive groups walk no slot
        if (kEpilogue && active) fwd = forward_coef_of(d, row);
        ProBackSums<acc_t> sums = lane_prologue_sums<acc_t, T, VEC, kCache, kEpilogue>(
            p.x, p.g, seg, lane, group, mean_p, d.epilogue, fwd, cache_x, cache_g, p.cache_slots,
            nr, act, r);
        sums = group_allreduce(sums, group, scratch);
        if constexpr (kMode == RowMode::PartialSums) {
          if (active && lane == 0) {
            d.partial_sum_g[segment] = sums.g.sum_g;
            d.partial_sum_g_dev[segment] = sums.g.sum_g_dev;
            store_prologue_partial(pro.partial, all_segments, segment, sums.p);
          }
        } else {
          const acc_t std_p = active ? d.std_x[row] : acc_t(1);
          const acc_t std_t = active ? d.std_t[row] : acc_t(1);
          const AffineGrads<acc_t> grads =
              affine_backward_coef(sums.g, mean_p, std_p, std_t, d.alpha, d.L, d.unbiased);
          if (active && lane == 0) {
            const PrologueGrads<acc_t> pg = prologue_grads(sums.p, grads.grad_x);
            d.grad_mean_out[row] = grads.grad_mean_t;
            d.grad_std_out[row] = grads.grad_std_t;
            pro.grad_bias_out[row] = pg.grad_bias;
            pro.grad_weight_out[row] = pg.grad_weight;
          }
          lane_apply_prologue<acc_t, T, VEC, true, kEpilogue>(
              p.x, p.g, p.out, seg, lane, group, grads.grad_x, d.epilogue, fwd, cache_x, cache_g,
              p.cache_slots, nr, act, r);
        }
      } else {  // Apply, ApplyGrad
        constexpr bool kHasG = kMode == RowMode::ApplyGrad;
        if (active) {
          const RowCoef<acc_t> c = load_coef(d.coef, row);
          RowCoef<acc_t> fwd;
          if (kEpilogue && kHasG) fwd = forward_coef_of(d, row);
          lane_apply_prologue<acc_t, T, VEC, kHasG, kEpilogue>(
              p.x, p.g, p.out, seg, lane, group, c, d.epilogue, fwd, nullptr, nullptr, 0, nr, act,
              r);
        }
      }
    } else if constexpr (kMode == RowMode::Stats || kMode == RowMode::PartialWelford) {
      WelfordState<acc_t> st = lane_welford<acc_t, T, VEC, false>(p.x, seg, lane, group, nullptr, 0);
      st = group_allreduce(st, group, scratch);
      if (active && lane == 0) {
        if constexpr (kMode == RowMode::Stats) {
          d.mean_out[row] = st.mean;
          d.std_out[row] = std_of(st, d.eps, d.unbiased);
        } else {
          d.partial_mean[segment] = st.mean;
          d.partial_m2[segment] = st.m2;
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
        mean_t = active ? d.mean_t[row] : acc_t(0);
        std_t = active ? d.std_t[row] : acc_t(1);
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
      const RowCoef<acc_t> c = affine_forward_coef(mean_x, std_x, mean_t, std_t, d.alpha);
      lane_apply<acc_t, T, VEC, false, kEpilogue>(p.x, nullptr, p.out, seg, lane, group, c,
                                                  d.epilogue, c, cache_x, nullptr, p.cache_slots);
    } else if constexpr (kMode == RowMode::AffineBackward || kMode == RowMode::PartialSums) {
      const acc_t mean_x = active ? d.mean_x[row] : acc_t(0);
      RowCoef<acc_t> fwd;  // inactive groups walk no slot
      if (kEpilogue && active) fwd = forward_coef_of(d, row);
      GradSums<acc_t> sums = lane_grad_sums<acc_t, T, VEC, kCache, kEpilogue>(
          p.x, p.g, seg, lane, group, mean_x, d.epilogue, fwd, cache_x, cache_g, p.cache_slots);
      sums = group_allreduce(sums, group, scratch);
      if constexpr (kMode == RowMode::PartialSums) {
        if (active && lane == 0) {
          d.partial_sum_g[segment] = sums.sum_g;
          d.partial_sum_g_dev[segment] = sums.sum_g_dev;
        }
      } else {
        const acc_t std_x = active ? d.std_x[row] : acc_t(1);
        const acc_t std_t = active ? d.std_t[row] : acc_t(1);
        const AffineGrads<acc_t> grads =
            affine_backward_coef(sums, mean_x, std_x, std_t, d.alpha, d.L, d.unbiased);
        if (active && lane == 0) {
          d.grad_mean_out[row] = grads.grad_mean_t;
          d.grad_std_out[row] = grads.grad_std_t;
        }
        lane_apply<acc_t, T, VEC, true, kEpilogue>(p.x, p.g, p.out, seg, lane, group,
                                                   grads.grad_x, d.epilogue, fwd, cache_x, cache_g,
                                                   p.cache_slots);
      }
    } else {  // Apply, ApplyGrad: no reduction
      constexpr bool kHasG = kMode == RowMode::ApplyGrad;
      if (active) {
        const RowCoef<acc_t> c = load_coef(d.coef, row);
        RowCoef<acc_t> fwd;
        if (kEpilogue && kHasG) fwd = forward_coef_of(d, row);
        lane_apply<acc_t, T, VEC, kHasG, kEpilogue>(p.x, p.g, p.out, seg, lane, group, c,
                                                    d.epilogue, fwd, nullptr, nullptr, 0);
      }
    }
  }
}

// ---- Finalize: one thread per row merges the row's partials in segment order.

template <typename acc_t, RowMode kMode>
__global__ void finalize_rows_kernel(const RowData<acc_t> d) {
  static_assert(kMode == RowMode::Stats || kMode == RowMode::Affine ||
                    kMode == RowMode::AffineBackward || kMode == RowMode::MeanStdBackward,
                "finalize_rows_kernel merges the partials of Stats, Affine or AffineBackward, or "
                "computes MeanStdBackward's coefficients");
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; row < d.rows;
       row += stride) {
    RowCoef<acc_t> c;
    if constexpr (kMode == RowMode::Stats || kMode == RowMode::Affine) {
      WelfordState<acc_t> st;
      for (int64_t s = 0; s < d.segments; ++s) {
        WelfordState<acc_t> part;
        part.mean = d.partial_mean[row * d.segments + s];
        part.m2 = d.partial_m2[row * d.segments + s];
        part.count = d.segment_count(s);
        st = welford_merge(st, part);
      }
      const acc_t std_x = std_of(st, d.eps, d.unbiased);
      d.mean_out[row] = st.mean;
      d.std_out[row] = std_x;
      if constexpr (kMode == RowMode::Stats) continue;
      c = affine_forward_coef(st.mean, std_x, d.mean_t[row], d.std_t[row], d.alpha);
    } else if constexpr (kMode == RowMode::AffineBackward) {
      GradSums<acc_t> sums;
      for (int64_t s = 0; s < d.segments; ++s) {
        GradSums<acc_t> part;
        part.sum_g = d.partial_sum_g[row * d.segments + s];
        part.sum_g_dev = d.partial_sum_g_dev[row * d.segments + s];
        sums = grad_sums_merge(sums, part);
      }
      const AffineGrads<acc_t> grads = affine_backward_coef(
          sums, d.mean_x[row], d.std_x[row], d.std_t[row], d.alpha, d.L, d.unbiased);
      d.grad_mean_out[row] = grads.grad_mean_t;
      d.grad_std_out[row] = grads.grad_std_t;
      c = grads.grad_x;
    } else {
      c = mean_std_backward_coef(d.grad_mean_in[row], d.grad_std_in[row], d.mean_x[row],
                                 d.std_x[row], d.L, d.unbiased);
    }
    store_coef(d.coef, row, c);
  }
}

// The split backward's finalize with the prologue: finalize_rows_kernel<AffineBackward>'s work,
// and the row's PrologueSums merged in the same order into its bias and weight gradients.
template <typename acc_t>
struct PrologueFinalize {
  RowData<acc_t> d;
  PrologueData<acc_t> pro;
};

template <typename acc_t>
__global__ void finalize_prologue_backward_kernel(const PrologueFinalize<acc_t> a) {
  const RowData<acc_t>& d = a.d;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t entries = d.rows * d.segments;
  for (int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; row < d.rows;
       row += stride) {
    GradSums<acc_t> sums;
    PrologueSums<acc_t> psums;
    for (int64_t s = 0; s < d.segments; ++s) {
      const int64_t entry = row * d.segments + s;
      GradSums<acc_t> part;
      part.sum_g = d.partial_sum_g[entry];
      part.sum_g_dev = d.partial_sum_g_dev[entry];
      sums = grad_sums_merge(sums, part);
      psums = prologue_sums_merge(psums, load_prologue_partial(a.pro.partial, entries, entry));
    }
    const AffineGrads<acc_t> grads = affine_backward_coef(
        sums, d.mean_x[row], d.std_x[row], d.std_t[row], d.alpha, d.L, d.unbiased);
    const PrologueGrads<acc_t> pg = prologue_grads(psums, grads.grad_x);
    d.grad_mean_out[row] = grads.grad_mean_t;
    d.grad_std_out[row] = grads.grad_std_t;
    a.pro.grad_bias_out[row] = pg.grad_bias;
    a.pro.grad_weight_out[row] = pg.grad_weight;
    store_coef(d.coef, row, grads.grad_x);
  }
}

}  // namespace cuda
}  // namespace adain
