// The per-row math of every C++ and CUDA kernel, written once for host and device code (as
// welford.h): a row's std from its Welford state, the alpha blend, the gradient sums of a row, and
// the coefficients of the one elementwise map every output of every op is,
//
//   out = g_scale * g + slope * (x - mean) + shift        (RowCoef, per row)
//
// with L = the row's length, D = the variance divisor (L - 1 unbiased, else L) and
//   affine / adain forward      g_scale = 0, slope = target_std / std_x, mean = mean_x,
//                               shift = target_mean
//   affine / adain backward     g_scale = k = target_std * rstd, slope = c * sum_g_xhat / D * rstd,
//                               mean = mean_x, shift = c * sum_g / L, c = (1 - alpha) - k
//   mean_std backward           g_scale = 0, slope = grad_std / (D * std), mean = mean,
//                               shift = grad_mean / L
// (docs/design.md, "Row math"). Centring on the row mean before scaling is deliberate:
// slope * x + (shift - slope * mean) would cancel two terms of size |slope * mean| on large-mean
// rows (x = 1e4 + N(0, 1) loses ~1e-3 absolute in fp32, 0.2 in bf16); x - mean is exact there.
//
// The CPU kernels apply the map with their own vector loops (at::vec) and the CUDA kernels with
// apply_coef; both take the coefficients from the functions below, so the backends cannot drift.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

#include "welford.h"

namespace adain {

// std = sqrt(m2 / D + eps): eps is added to the variance, as in the reference's calc_mean_std.
template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE acc_t std_of(const WelfordState<acc_t>& s, acc_t eps,
                                               bool unbiased) {
  const acc_t var_eps = s.m2 / variance_divisor<acc_t>(s.count, unbiased) + eps;
  // Device code takes CUDA's sqrt overloads; host code std::sqrt, since an unqualified sqrt may
  // find only C's sqrt(double) there.
#if defined(__CUDA_ARCH__)
  return sqrt(var_eps);
#else
  return std::sqrt(var_eps);
#endif
}

// The target statistics moved towards by alpha: alpha * target + (1 - alpha) * own. alpha == 1
// returns the target itself, not as an optimisation: an Inf/NaN statistic of the row's own would
// otherwise be multiplied by 0 (0 * Inf = NaN), and alpha = 1 must give the reference's AdaIN.
template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE acc_t blend(acc_t alpha, acc_t target, acc_t own) {
  return alpha == acc_t(1) ? target : alpha * target + (acc_t(1) - alpha) * own;
}

// out = g_scale * g + slope * (x - mean) + shift for every element of a row (g_scale is 0 where
// the map has no g). The field order is the order of the CUDA kernels' [R, 4] workspace.
template <typename acc_t>
struct RowCoef {
  acc_t g_scale = 0;
  acc_t slope = 0;
  acc_t mean = 0;
  acc_t shift = 0;
};

template <bool kHasG, typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE acc_t apply_coef(const RowCoef<acc_t>& c, acc_t x, acc_t g) {
  const acc_t y = c.slope * (x - c.mean) + c.shift;
  return kHasG ? c.g_scale * g + y : y;
}

// The activation applied to the map's result (the "epilogue" of the affine op), as the models
// that follow AdaIN with one write it: StarGAN v2's AdainResBlk LeakyReLU(0.2), MUNIT's and
// AdaIN-VC's ReLU. Both take `y <= 0` as the test, so a NaN y passes through unchanged (as
// F.relu and F.leaky_relu give NaN) and relu(-Inf) is 0, not 0 * -Inf. The backward recomputes y
// from the forward's coefficients (never saves it) and passes g through activation_grad, which is
// PyTorch's threshold_backward for relu and leaky_relu_backward for leaky_relu.
enum class Activation : int { None = 0, Relu = 1, LeakyRelu = 2 };

template <typename acc_t>
struct Epilogue {
  Activation kind = Activation::None;
  acc_t negative_slope = 0;  // leaky_relu's slope for y <= 0
};

template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE acc_t activate(const Epilogue<acc_t>& e, acc_t y) {
  if (e.kind == Activation::None || !(y <= acc_t(0))) return y;
  return e.kind == Activation::Relu ? acc_t(0) : e.negative_slope * y;
}

// d activate(y) / dy times g.
template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE acc_t activation_grad(const Epilogue<acc_t>& e, acc_t y,
                                                        acc_t g) {
  if (e.kind == Activation::None || !(y <= acc_t(0))) return g;
  return e.kind == Activation::Relu ? acc_t(0) : e.negative_slope * g;
}

// The prologue: the op's input side, as StyleGAN (rosinality) writes it before every AdaIN,
// noise injection then LeakyReLU(0.2):
//   pre = x + weight * noise + bias,   p = act_pre(pre)    (act_pre an Epilogue: none/relu/leaky)
// with weight and bias per channel and noise per (n, position), broadcast over channels, or per
// element. The statistics are taken over p and the map is applied to p. No kernel stores pre or
// p: the forward forms p where it loads x, the backward forms both again from x.
template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE acc_t prologue_pre(acc_t x, acc_t noise, acc_t weight,
                                                     acc_t bias) {
  return x + weight * noise + bias;
}

// The prologue's backward. With g the gradient at the map's output after the epilogue's backward
// and grad_p = g_scale * g + slope * (p - mean) + shift (the row's grad_x RowCoef applied to p),
// dL/dx = m * grad_p where m = act_pre'(pre) (activation_grad(act_pre, pre, 1)); the per-row
// gradients of bias and weight are its sums, sum(m * grad_p) and sum(m * grad_p * noise). Both
// are linear in the map's coefficients, so they come from masked sums taken in the same sweep as
// GradSums (no sum in the map pass, and segments merge them as they merge GradSums):
//   grad_bias   = g_scale * sum_mg       + slope * sum_mdev       + shift * sum_m
//   grad_weight = g_scale * sum_mg_noise + slope * sum_mdev_noise + shift * sum_m_noise
template <typename acc_t>
struct PrologueSums {
  acc_t sum_mg = 0;          // sum(m * g)
  acc_t sum_mdev = 0;        // sum(m * (p - mean))
  acc_t sum_m = 0;           // sum(m)
  acc_t sum_mg_noise = 0;    // sum(m * g * noise)
  acc_t sum_mdev_noise = 0;  // sum(m * (p - mean) * noise)
  acc_t sum_m_noise = 0;     // sum(m * noise)
};

template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE PrologueSums<acc_t> prologue_sums_merge(
    const PrologueSums<acc_t>& a, const PrologueSums<acc_t>& b) {
  PrologueSums<acc_t> out;
  out.sum_mg = a.sum_mg + b.sum_mg;
  out.sum_mdev = a.sum_mdev + b.sum_mdev;
  out.sum_m = a.sum_m + b.sum_m;
  out.sum_mg_noise = a.sum_mg_noise + b.sum_mg_noise;
  out.sum_mdev_noise = a.sum_mdev_noise + b.sum_mdev_noise;
  out.sum_m_noise = a.sum_m_noise + b.sum_m_noise;
  return out;
}

// The row's gradients of bias and weight (before the sum over N), from its masked sums and its
// grad_x coefficients.
template <typename acc_t>
struct PrologueGrads {
  acc_t grad_bias = 0;
  acc_t grad_weight = 0;
};

template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE PrologueGrads<acc_t> prologue_grads(const PrologueSums<acc_t>& s,
                                                                      const RowCoef<acc_t>& c) {
  PrologueGrads<acc_t> out;
  out.grad_bias = c.g_scale * s.sum_mg + c.slope * s.sum_mdev + c.shift * s.sum_m;
  out.grad_weight = c.g_scale * s.sum_mg_noise + c.slope * s.sum_mdev_noise + c.shift * s.sum_m_noise;
  return out;
}

// The gradient sums of a row (or of a piece of it): sum(g * (x - mean)), not sum(g * x) -
// mean * sum(g), which cancels on large-mean rows; sum_g_xhat = rstd * sum_g_dev.
template <typename acc_t>
struct GradSums {
  acc_t sum_g = 0;      // sum(g)
  acc_t sum_g_dev = 0;  // sum(g * (x - mean))
};

template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE GradSums<acc_t> grad_sums_merge(const GradSums<acc_t>& a,
                                                                  const GradSums<acc_t>& b) {
  GradSums<acc_t> out;
  out.sum_g = a.sum_g + b.sum_g;
  out.sum_g_dev = a.sum_g_dev + b.sum_g_dev;
  return out;
}

// Forward of affine and adain: out = target_std * (x - mean_x) / std_x + target_mean, the targets
// (mean_t, std_t) blended with the row's own statistics by alpha.
template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE RowCoef<acc_t> affine_forward_coef(acc_t mean_x, acc_t std_x,
                                                                     acc_t mean_t, acc_t std_t,
                                                                     acc_t alpha) {
  RowCoef<acc_t> c;
  c.slope = blend(alpha, std_t, std_x) / std_x;
  c.mean = mean_x;
  c.shift = blend(alpha, mean_t, mean_x);
  return c;
}

// The backward of affine_forward_coef's map: the map that gives grad_x, and the gradients of the
// target statistics mean_t and std_t.
template <typename acc_t>
struct AffineGrads {
  RowCoef<acc_t> grad_x;
  acc_t grad_mean_t = 0;  // alpha * sum_g
  acc_t grad_std_t = 0;   // alpha * sum_g_xhat
};

// c = (1 - alpha) - k is the gradient through the row's own statistics inside target_mean and
// target_std (x's mean and std depend on x too).
template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE AffineGrads<acc_t> affine_backward_coef(
    const GradSums<acc_t>& sums, acc_t mean_x, acc_t std_x, acc_t std_t, acc_t alpha, int64_t L,
    bool unbiased) {
  const acc_t rstd = acc_t(1) / std_x;
  const acc_t sum_g_xhat = rstd * sums.sum_g_dev;
  const acc_t k = blend(alpha, std_t, std_x) * rstd;
  const acc_t c = (acc_t(1) - alpha) - k;
  AffineGrads<acc_t> out;
  out.grad_mean_t = alpha * sums.sum_g;
  out.grad_std_t = alpha * sum_g_xhat;
  out.grad_x.g_scale = k;
  out.grad_x.slope = c * (sum_g_xhat / variance_divisor<acc_t>(L, unbiased)) * rstd;
  out.grad_x.mean = mean_x;
  out.grad_x.shift = c * (sums.sum_g / static_cast<acc_t>(L));
  return out;
}

// Backward of mean_std: grad_x = grad_mean / L + grad_std * (x - mean) / (D * std).
template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE RowCoef<acc_t> mean_std_backward_coef(acc_t grad_mean,
                                                                        acc_t grad_std, acc_t mean,
                                                                        acc_t std, int64_t L,
                                                                        bool unbiased) {
  RowCoef<acc_t> c;
  c.slope = grad_std / (variance_divisor<acc_t>(L, unbiased) * std);
  c.mean = mean;
  c.shift = grad_mean / static_cast<acc_t>(L);
  return c;
}

}  // namespace adain
