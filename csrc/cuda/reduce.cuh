// Device helpers every CUDA kernel of adain_ext shares: 16-byte vector slots with masked edges,
// per-slot Welford states, and deterministic warp / block reductions of Welford states and of
// GradSums.
//
// Determinism: every reduction here is a fixed tree (shuffle-down, then one warp over the warp
// partials) whose shape depends only on the launch geometry, and every merge keeps its operands in
// lane order, so the same input gives bitwise the same result on every run. The result is then
// broadcast from the tree's root, so all threads of a row use the very same statistics.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

#include "row_math.h"
#include "welford.h"

namespace adain {
namespace cuda {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;

// Elements of T in one 16-byte load: 4 float, 8 half/bfloat16, 2 double.
template <typename T>
constexpr int vec_width() {
  return static_cast<int>(16 / sizeof(T));
}

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Vec {
  T v[VEC];
};

// A contiguous run of `len` elements starting at flat offset `begin`, walked in slots of VEC
// elements aligned to VEC (the tensor's base pointer is 16-byte aligned: the host makes sure).
// Slot i covers flat offsets [first + i*VEC, first + i*VEC + VEC); only the first and the last
// slot can be partial, and partial slots are read and written element by element.
struct Segment {
  int64_t first;   // flat offset of slot 0 (begin rounded down to VEC)
  int64_t end;     // one past the last element, relative to `first`
  int lead;        // elements of slot 0 before the segment starts
  int64_t nslots;
};

template <int VEC>
C10_DEVICE __forceinline__ Segment make_segment(int64_t begin, int64_t len) {
  Segment s;
  s.lead = static_cast<int>(begin % VEC);
  s.first = begin - s.lead;
  s.end = s.lead + len;
  s.nslots = len > 0 ? (s.end + VEC - 1) / VEC : 0;
  return s;
}

// The valid elements [lo, hi) of slot i.
template <int VEC>
C10_DEVICE __forceinline__ void slot_bounds(const Segment& s, int64_t i, int& lo, int& hi) {
  lo = i == 0 ? s.lead : 0;
  const int64_t left = s.end - i * VEC;
  hi = left < VEC ? static_cast<int>(left) : VEC;
}

// Loads VEC elements at ptr[offset..]; elements outside [lo, hi) are not read and come back as 0.
// `aligned` says ptr + offset is 16-byte aligned (then a full slot is one vector load).
template <typename T, int VEC>
C10_DEVICE __forceinline__ Vec<T, VEC> load_slot(const T* __restrict__ ptr, int64_t offset, int lo,
                                                 int hi, bool aligned = true) {
  Vec<T, VEC> out;
  if (aligned && lo == 0 && hi == VEC) {
    out = *reinterpret_cast<const Vec<T, VEC>*>(ptr + offset);
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      out.v[j] = (j >= lo && j < hi) ? ptr[offset + j] : static_cast<T>(0.0f);
    }
  }
  return out;
}

// One 16-byte store of a full slot. Inline PTX (as CUTLASS's global_store does) because nvcc 13.0
// split a plain Vec or uint4 assignment into 2-8 narrower stores inside the row kernels, and the
// __stwb intrinsic, though 16 bytes wide, came out as a STRONG.SM store (both seen in the SASS;
// tests/test_cuda_sass.py keeps the 16-byte stores there). `ptr` points to global memory and is
// never read back by the kernel that writes it.
template <typename T, int VEC>
C10_DEVICE __forceinline__ void store_vec16(T* __restrict__ ptr, const Vec<T, VEC>& value) {
  static_assert(sizeof(Vec<T, VEC>) == sizeof(uint4), "slots are 16 bytes");
#if defined(__CUDA_ARCH__)
  const uint4 bits = *reinterpret_cast<const uint4*>(&value);
  asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(ptr), "r"(bits.x), "r"(bits.y),
               "r"(bits.z), "r"(bits.w));
#else
  *reinterpret_cast<Vec<T, VEC>*>(ptr) = value;
#endif
}

template <typename T, int VEC>
C10_DEVICE __forceinline__ void store_slot(T* __restrict__ ptr, int64_t offset, int lo, int hi,
                                           const Vec<T, VEC>& value, bool aligned = true) {
  if (aligned && lo == 0 && hi == VEC) {
    store_vec16<T, VEC>(ptr + offset, value);
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      if (j >= lo && j < hi) ptr[offset + j] = value.v[j];
    }
  }
}

// Welford state of the valid elements of one slot: a two-pass mean / m2 over at most VEC values
// held in registers, so the running state takes one Chan merge (one division) per slot instead of
// one division per element.
template <typename acc_t, typename T, int VEC>
C10_DEVICE __forceinline__ WelfordState<acc_t> slot_state(const Vec<T, VEC>& x, int lo, int hi) {
  acc_t sum = 0;
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    if (j >= lo && j < hi) sum += static_cast<acc_t>(x.v[j]);
  }
  WelfordState<acc_t> s;
  s.count = hi - lo;
  // A full slot divides by the constant VEC (a power of two: exact, and no division issued).
  s.mean = s.count == VEC ? sum * (acc_t(1) / VEC) : sum / static_cast<acc_t>(s.count);
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    if (j >= lo && j < hi) {
      const acc_t d = static_cast<acc_t>(x.v[j]) - s.mean;
      s.m2 += d * d;
    }
  }
  return s;
}

template <typename acc_t>
C10_DEVICE __forceinline__ WelfordState<acc_t> combine(const WelfordState<acc_t>& x,
                                                       const WelfordState<acc_t>& y) {
  return welford_merge(x, y);
}

template <typename acc_t>
C10_DEVICE __forceinline__ GradSums<acc_t> combine(const GradSums<acc_t>& x,
                                                   const GradSums<acc_t>& y) {
  return grad_sums_merge(x, y);
}

template <typename acc_t>
C10_DEVICE __forceinline__ WelfordState<acc_t> shfl_down(const WelfordState<acc_t>& s, int delta,
                                                         int width) {
  WelfordState<acc_t> out;
  out.mean = __shfl_down_sync(kFullMask, s.mean, delta, width);
  out.m2 = __shfl_down_sync(kFullMask, s.m2, delta, width);
  out.count = static_cast<int64_t>(
      __shfl_down_sync(kFullMask, static_cast<long long>(s.count), delta, width));
  return out;
}

template <typename acc_t>
C10_DEVICE __forceinline__ GradSums<acc_t> shfl_down(const GradSums<acc_t>& s, int delta,
                                                     int width) {
  GradSums<acc_t> out;
  out.sum_g = __shfl_down_sync(kFullMask, s.sum_g, delta, width);
  out.sum_g_dev = __shfl_down_sync(kFullMask, s.sum_g_dev, delta, width);
  return out;
}

template <typename acc_t>
C10_DEVICE __forceinline__ WelfordState<acc_t> shfl_first(const WelfordState<acc_t>& s,
                                                          int width) {
  WelfordState<acc_t> out;
  out.mean = __shfl_sync(kFullMask, s.mean, 0, width);
  out.m2 = __shfl_sync(kFullMask, s.m2, 0, width);
  out.count =
      static_cast<int64_t>(__shfl_sync(kFullMask, static_cast<long long>(s.count), 0, width));
  return out;
}

template <typename acc_t>
C10_DEVICE __forceinline__ GradSums<acc_t> shfl_first(const GradSums<acc_t>& s, int width) {
  GradSums<acc_t> out;
  out.sum_g = __shfl_sync(kFullMask, s.sum_g, 0, width);
  out.sum_g_dev = __shfl_sync(kFullMask, s.sum_g_dev, 0, width);
  return out;
}

// The backward's sums with a prologue: GradSums and PrologueSums of the same elements, reduced
// together (one tree, in the same order).
template <typename acc_t>
struct ProBackSums {
  GradSums<acc_t> g;
  PrologueSums<acc_t> p;
};

template <typename acc_t>
C10_DEVICE __forceinline__ ProBackSums<acc_t> combine(const ProBackSums<acc_t>& x,
                                                      const ProBackSums<acc_t>& y) {
  ProBackSums<acc_t> out;
  out.g = grad_sums_merge(x.g, y.g);
  out.p = prologue_sums_merge(x.p, y.p);
  return out;
}

// Each field of s from lane + delta (down) or from the group's first lane.
template <bool kDown, typename acc_t>
C10_DEVICE __forceinline__ PrologueSums<acc_t> shfl_prologue(const PrologueSums<acc_t>& s,
                                                             int delta, int width) {
  const auto get = [&](acc_t v) {
    return kDown ? __shfl_down_sync(kFullMask, v, delta, width)
                 : __shfl_sync(kFullMask, v, 0, width);
  };
  PrologueSums<acc_t> out;
  out.sum_mg = get(s.sum_mg);
  out.sum_mdev = get(s.sum_mdev);
  out.sum_m = get(s.sum_m);
  out.sum_mg_noise = get(s.sum_mg_noise);
  out.sum_mdev_noise = get(s.sum_mdev_noise);
  out.sum_m_noise = get(s.sum_m_noise);
  return out;
}

template <typename acc_t>
C10_DEVICE __forceinline__ ProBackSums<acc_t> shfl_down(const ProBackSums<acc_t>& s, int delta,
                                                        int width) {
  ProBackSums<acc_t> out;
  out.g = shfl_down(s.g, delta, width);
  out.p = shfl_prologue<true>(s.p, delta, width);
  return out;
}

template <typename acc_t>
C10_DEVICE __forceinline__ ProBackSums<acc_t> shfl_first(const ProBackSums<acc_t>& s, int width) {
  ProBackSums<acc_t> out;
  out.g = shfl_first(s.g, width);
  out.p = shfl_prologue<false>(s.p, 0, width);
  return out;
}

// Shared scratch for block_allreduce: one state per warp. A raw buffer, because __shared__
// variables cannot have constructors (WelfordState has default member initialisers). Sized for
// the largest state the kernel reduces (`Largest`: WelfordState, or ProBackSums with a prologue).
template <typename acc_t, typename Largest = WelfordState<acc_t>>
struct alignas(16) ReduceScratch {
  unsigned char bytes[kWarpSize * sizeof(Largest)];
  template <typename S>
  C10_DEVICE S* as() {
    static_assert(sizeof(S) <= sizeof(Largest), "scratch too small");
    return reinterpret_cast<S*>(bytes);
  }
};

// Reduces the states of each group of `group` consecutive threads and returns the result to every
// thread of the group. group is a power of two; up to 32 the groups are sub-warps (several rows
// per warp, pure shuffles), above 32 it must equal blockDim.x (one row per block). Every thread of
// the block must call it (the shuffles use the full mask; the block path synchronises).
template <typename S, typename Scratch>
C10_DEVICE __forceinline__ S group_allreduce(S s, int group, Scratch& scratch) {
  if (group <= kWarpSize) {
    for (int offset = group / 2; offset > 0; offset /= 2) s = combine(s, shfl_down(s, offset, group));
    return shfl_first(s, group);
  }
  S* partial = scratch.template as<S>();
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    s = combine(s, shfl_down(s, offset, kWarpSize));
  }
  if (lane == 0) partial[warp] = s;
  __syncthreads();
  if (warp == 0) {
    const int warps = static_cast<int>(blockDim.x) / kWarpSize;
    S t = lane < warps ? partial[lane] : S{};
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
      t = combine(t, shfl_down(t, offset, kWarpSize));
    }
    if (lane == 0) partial[0] = t;  // every lane of warp 0 read its entry before the shuffles
  }
  __syncthreads();
  const S out = partial[0];
  __syncthreads();  // the scratch may be reused right after
  return out;
}

}  // namespace cuda
}  // namespace adain
