// The parameters every CUDA kernel of adain_ext takes, and the one enum of kernel modes.
//
// One Params per launch (RowData inside it is all finalize_rows_kernel takes): the kernels are
// shared by the ops, so one struct serves them all and each mode reads only its own fields; the
// comment on each field says which modes set or read it. The op files fill the per-row inputs and
// outputs; the launchers (launch.cuh) fill the workspaces and the geometry.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

#include "row_math.h"

namespace adain {
namespace cuda {

// ---- The kernel modes: one enum for every templated kernel.
//
// contig_rows_kernel<kMode> takes the first eight (Affine, AffineBackward, PartialSums, Apply and
// ApplyGrad also with kEpilogue, the affine op's activation: RowData::epilogue);
// finalize_rows_kernel<kMode> takes Stats, Affine, AffineBackward (merging the split partials of
// that op) and MeanStdBackward. An op is named by its one-launch mode (Stats, Affine,
// AffineBackward: run_row_op in launch.cuh), from which its split modes follow. The values are
// part of the kernel symbols tests/test_cuda_sass.py decodes: append new modes, do not reorder.
enum class RowMode {
  Stats,            // mean / std of each row -> mean_out, std_out (finalize: from Welford partials)
  Affine,           // statistics + targets -> out (and mean_out, std_out), one launch (finalize:
                    // statistics and coefficients from Welford partials)
  Fused,            // style statistics, then Affine with them as targets, one launch
  AffineBackward,   // sum(g), sum(g*(x-mean)) -> grad_x (and grad_mean_out, grad_std_out)
                    // (finalize: coefficients and grad_*_out from gradient-sum partials)
  PartialWelford,   // one Welford state per segment -> partial_mean, partial_m2
  PartialSums,      // GradSums per segment -> partial_sum_g, partial_sum_g_dev
  Apply,            // out = slope*(x-mean) + shift from coef (activated with an epilogue)
  ApplyGrad,        // out = g_scale*g + slope*(x-mean) + shift from coef (g_y for g: epilogue)
  MeanStdBackward,  // finalize only: coefficients of mean_std's backward from grad_*_in -> coef
};

// ---- Kernel parameters.

// Per-row inputs and outputs (all (N, C) = R entries of the accumulation dtype, contiguous), and
// the partial / coefficient workspaces. Only the fields a mode uses are set. "Split" below means
// the partial and apply modes of a split row (PartialWelford, PartialSums, Apply, ApplyGrad) and
// the channels_last kernels; "finalize" means finalize_rows_kernel.
template <typename acc_t>
struct RowData {
  int64_t rows = 0;         // R = N * C; every mode
  int64_t L = 0;            // elements per row of x (H * W); every mode
  int64_t L_style = 0;      // elements per row of the style; Fused
  int64_t segments = 1;     // segments per row: set by the launchers for split and finalize, else 1
  int64_t segment_len = 0;  // elements (contiguous) or positions (channels_last) per segment;
                            // every mode (L when segments == 1)
  acc_t alpha = 1;          // Affine, Fused, AffineBackward; finalize Affine, AffineBackward
  acc_t eps = 0;            // Stats, Affine, Fused; finalize Stats, Affine
  bool unbiased = true;     // every mode that computes a std or a coefficient
  // The given target statistics, before the alpha blend (Fused computes its own from the style).
  const acc_t* mean_t = nullptr;  // Affine; finalize Affine; the backward with an epilogue
  const acc_t* std_t = nullptr;   // Affine, AffineBackward; finalize Affine, AffineBackward
  const acc_t* mean_x = nullptr;  // AffineBackward, PartialSums, cl_partial_kernel<kSums>;
                                  // finalize AffineBackward, MeanStdBackward: x's mean
  const acc_t* std_x = nullptr;   // AffineBackward; finalize AffineBackward, MeanStdBackward;
                                  // the backward with an epilogue
  // The affine op's output activation (row_math.h), read only by the kernels instantiated with
  // kEpilogue (run_row_op takes them when its kind is not None; the other instantiations are the
  // kernels without it). Forward (Affine, Apply, cl_apply_kernel): out = activate(e, y). Backward
  // (AffineBackward, PartialSums, ApplyGrad, cl_partial_kernel<kSums>, cl_apply_kernel<kHasG>): g
  // is replaced everywhere by g_y = activation_grad(e, y, g), y recomputed per element with the
  // forward's coefficients (forward_coef_of: mean_x, std_x, mean_t, std_t, alpha).
  Epilogue<acc_t> epilogue;
  const acc_t* grad_mean_in = nullptr;  // finalize MeanStdBackward: incoming gradients
  const acc_t* grad_std_in = nullptr;   // finalize MeanStdBackward
  // The partial states of the segments, [R, segments] each (attach_partials in launch.cuh): a
  // Welford state (mean, m2) per segment, written by PartialWelford / cl_partial_kernel and read
  // by finalize Stats, Affine; or GradSums (sum_g, sum_g_dev), written by PartialSums /
  // cl_partial_kernel<kSums> and read by finalize AffineBackward. One op uses one of the pairs.
  union {
    acc_t* partial_mean = nullptr;
    acc_t* partial_sum_g;
  };
  union {
    acc_t* partial_m2 = nullptr;
    acc_t* partial_sum_g_dev;
  };
  acc_t* coef = nullptr;      // [R, 4]: RowCoef's g_scale, slope, mean, shift (store_coef); written
                              // by finalize Affine, AffineBackward, MeanStdBackward; read by
                              // Apply, ApplyGrad, cl_apply_kernel
  acc_t* mean_out = nullptr;  // statistics of x: Stats, Affine, Fused; finalize Stats, Affine
  acc_t* std_out = nullptr;   // as mean_out
  acc_t* style_mean_out = nullptr;  // statistics of the style: Fused
  acc_t* style_std_out = nullptr;   // Fused
  acc_t* grad_mean_out = nullptr;   // AffineBackward; finalize AffineBackward
  acc_t* grad_std_out = nullptr;    // AffineBackward; finalize AffineBackward

  // Elements (or positions) of segment s of a row: the count of its partial state.
  C10_HOST_DEVICE int64_t segment_count(int64_t s) const {
    const int64_t left = L - s * segment_len;
    return left < segment_len ? left : segment_len;
  }
};

// The coefficients of `row` in RowData::coef.
template <typename acc_t>
C10_DEVICE __forceinline__ RowCoef<acc_t> load_coef(const acc_t* coef, int64_t row) {
  RowCoef<acc_t> c;
  c.g_scale = coef[4 * row + 0];
  c.slope = coef[4 * row + 1];
  c.mean = coef[4 * row + 2];
  c.shift = coef[4 * row + 3];
  return c;
}

template <typename acc_t>
C10_DEVICE __forceinline__ void store_coef(acc_t* coef, int64_t row, const RowCoef<acc_t>& c) {
  coef[4 * row + 0] = c.g_scale;
  coef[4 * row + 1] = c.slope;
  coef[4 * row + 2] = c.mean;
  coef[4 * row + 3] = c.shift;
}

// ---- The affine op's epilogue, per element. With kEpilogue false these are the plain map, so the
// kernels without an activation compile to exactly what they were before it existed.

// The forward's coefficients of `row`, recomputed by the backward from the forward's statistics
// with the call the forward made (affine_forward_coef), so that its y is bitwise the forward's.
template <typename acc_t>
C10_DEVICE __forceinline__ RowCoef<acc_t> forward_coef_of(const RowData<acc_t>& d, int64_t row) {
  return affine_forward_coef(d.mean_x[row], d.std_x[row], d.mean_t[row], d.std_t[row], d.alpha);
}

// g_y: the incoming gradient g through the activation, at y = the forward's map of x.
template <bool kEpilogue, typename acc_t>
C10_DEVICE __forceinline__ acc_t epilogue_grad(const Epilogue<acc_t>& e, const RowCoef<acc_t>& fwd,
                                               acc_t x, acc_t g) {
  if constexpr (kEpilogue) {
    return activation_grad(e, apply_coef<false>(fwd, x, acc_t(0)), g);
  } else {
    return g;
  }
}

// One element of an output map c: the forward's y, activated (kHasG false); or grad_x, the map
// with g_y in place of g (kHasG). `fwd` is read only by the backward with an epilogue.
template <bool kHasG, bool kEpilogue, typename acc_t>
C10_DEVICE __forceinline__ acc_t map_element(const RowCoef<acc_t>& c, const Epilogue<acc_t>& e,
                                             const RowCoef<acc_t>& fwd, acc_t x, acc_t g) {
  if constexpr (kHasG) {
    return apply_coef<true>(c, x, epilogue_grad<kEpilogue>(e, fwd, x, g));
  } else if constexpr (kEpilogue) {
    return activate(e, apply_coef<false>(c, x, g));
  } else {
    return apply_coef<false>(c, x, g);
  }
}

// Most threads per block of the prologue's contig_rows_kernel (its launch bound).
constexpr int kPrologueBlock = 512;

// ---- The affine op's prologue (row_math.h: pre = x + weight * noise + bias, p = act_pre(pre)),
// read only by the kernels instantiated with kPrologue (run_prologue_op in launch.cuh); the other
// instantiations are the kernels without it. Its fields sit at the end of Params (and are a
// second argument of finalize_rows_kernel), so that the kernels without it keep their parameter
// offsets and compile to what they were.
template <typename acc_t>
struct PrologueData {
  Epilogue<acc_t> act;            // pre_activation (an Epilogue: none, relu or leaky_relu)
  const acc_t* weight = nullptr;  // (C) noise_weight (1 where not given)
  const acc_t* bias = nullptr;    // (C) bias (0 where not given)
  int64_t channels = 1;           // C: row r is channel r % C
  int64_t noise_channels = 0;     // 0: no noise (none loaded), 1: (N, 1, *), C: (N, C, *)
  // The backward's PrologueSums per segment, [6, R * segments] in PrologueSums' field order
  // (attach_partials), written by PartialSums / cl_partial_kernel<kSums>, merged by finalize.
  acc_t* partial = nullptr;
  acc_t* grad_bias_out = nullptr;    // (N, C): prologue_grads(...).grad_bias per row; backward
  acc_t* grad_weight_out = nullptr;  // (N, C): prologue_grads(...).grad_weight per row

};

// One row's (or channel's) prologue parameters.
template <typename acc_t>
struct RowPrologue {
  acc_t weight = 1;
  acc_t bias = 0;
};

// The parameters of channel c.
template <typename acc_t>
C10_DEVICE __forceinline__ RowPrologue<acc_t> channel_prologue(const PrologueData<acc_t>& pro,
                                                               int64_t c) {
  RowPrologue<acc_t> r;
  r.weight = pro.weight[c];
  r.bias = pro.bias[c];
  return r;
}

// The parameters of row `row` = n * C + c and its noise row (n with (N, 1, *) noise, else row),
// from one division (a 64-bit division is a call whose register saves made a stack frame).
template <typename acc_t>
C10_DEVICE __forceinline__ RowPrologue<acc_t> row_prologue_of(const PrologueData<acc_t>& pro,
                                                              int64_t row, int64_t& noise_row) {
  const int64_t n = row / pro.channels;
  noise_row = pro.noise_channels == 1 ? n : row;
  return channel_prologue(pro, row - n * pro.channels);
}

// One element's prologue: pre and p.
template <typename acc_t>
struct PreP {
  acc_t pre, p;
};

template <typename acc_t>
C10_DEVICE __forceinline__ PreP<acc_t> prologue_element(const Epilogue<acc_t>& act,
                                                        const RowPrologue<acc_t>& r, acc_t x,
                                                        acc_t noise) {
  PreP<acc_t> e;
  e.pre = prologue_pre(x, noise, r.weight, r.bias);
  e.p = activate(act, e.pre);
  return e;
}

// A segment's PrologueSums in PrologueData::partial (entry = row * segments + segment).
template <typename acc_t>
C10_DEVICE __forceinline__ void store_prologue_partial(acc_t* partial, int64_t stride,
                                                       int64_t entry,
                                                       const PrologueSums<acc_t>& s) {
  partial[0 * stride + entry] = s.sum_mg;
  partial[1 * stride + entry] = s.sum_mdev;
  partial[2 * stride + entry] = s.sum_m;
  partial[3 * stride + entry] = s.sum_mg_noise;
  partial[4 * stride + entry] = s.sum_mdev_noise;
  partial[5 * stride + entry] = s.sum_m_noise;
}

template <typename acc_t>
C10_DEVICE __forceinline__ PrologueSums<acc_t> load_prologue_partial(const acc_t* partial,
                                                                     int64_t stride,
                                                                     int64_t entry) {
  PrologueSums<acc_t> s;
  s.sum_mg = partial[0 * stride + entry];
  s.sum_mdev = partial[1 * stride + entry];
  s.sum_m = partial[2 * stride + entry];
  s.sum_mg_noise = partial[3 * stride + entry];
  s.sum_mdev_noise = partial[4 * stride + entry];
  s.sum_m_noise = partial[5 * stride + entry];
  return s;
}

// Adds one element to a row's PrologueSums: m = act_pre'(pre), g_y the gradient at the map's
// output (after the epilogue's backward), dev = p - mean_p, noise the element's noise (0 without).
template <typename acc_t>
C10_DEVICE __forceinline__ void prologue_sums_add(PrologueSums<acc_t>& s, acc_t m, acc_t gy,
                                                  acc_t dev, acc_t noise) {
  const acc_t mg = m * gy, mdev = m * dev;
  s.sum_mg += mg;
  s.sum_mdev += mdev;
  s.sum_m += m;
  s.sum_mg_noise += mg * noise;
  s.sum_mdev_noise += mdev * noise;
  s.sum_m_noise += m * noise;
}

// One element of an output map c with the prologue: map_element of p; the backward's (kHasG)
// times act_pre'(pre).
template <bool kHasG, bool kEpilogue, typename acc_t>
C10_DEVICE __forceinline__ acc_t prologue_map_element(const RowCoef<acc_t>& c,
                                                      const Epilogue<acc_t>& e,
                                                      const RowCoef<acc_t>& fwd,
                                                      const Epilogue<acc_t>& act,
                                                      const RowPrologue<acc_t>& r, acc_t x,
                                                      acc_t noise, acc_t g) {
  const PreP<acc_t> pp = prologue_element(act, r, x, noise);
  const acc_t v = map_element<kHasG, kEpilogue>(c, e, fwd, pp.p, g);
  return kHasG ? activation_grad(act, pp.pre, v) : v;
}

// The tensors and the geometry of one contig_rows_kernel, cl_partial_kernel or cl_apply_kernel
// launch. The tensors are set by the op file, the geometry by the launcher (launch_rows) or the
// planner (plan_channels_last).
template <typename T, typename acc_t>
struct Params {
  const T* x = nullptr;      // every mode
  const T* g = nullptr;      // incoming gradient, same layout as x: AffineBackward, PartialSums,
                             // ApplyGrad, cl_partial_kernel<kSums>, cl_apply_kernel<kHasG>
  const T* style = nullptr;  // Fused
  T* out = nullptr;          // Affine, Fused, AffineBackward, Apply, ApplyGrad, cl_apply_kernel
  RowData<acc_t> d;          // per-row inputs, outputs and workspaces
  // contig_rows_kernel geometry
  int group = 1;             // threads per segment: power of two, == blockDim.x when > 32
  int64_t num_blocks = 0;    // blocks needed; the grid strides over them
  int64_t cache_slots = 0;   // slots of each segment kept in shared memory between sweeps
  // channels_last geometry
  int64_t channels = 0;       // C
  int threads_c = 1;          // threads across channels (power of two); blockDim.x / threads_c across positions
  int64_t channel_tiles = 0;  // ceil(C / (threads_c * VEC))
  bool channels_aligned = false;  // C % VEC == 0: every thread's channels are one aligned vector
  // The prologue (kPrologue kernels only): noise in x's layout as (N, noise_channels, L, 1) rows,
  // null without noise; the per-row parameters and outputs.
  const T* noise = nullptr;
  PrologueData<acc_t> pro;
};

// ---- Slots per step, shared by the kernels and the planning.

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

}  // namespace cuda
}  // namespace adain
