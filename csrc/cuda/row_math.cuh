// Per-row math of the CUDA kernels: a row's std from its Welford state, the alpha blend, and the
// coefficients of the one elementwise map every output is (shared by every path and layout, so
// they cannot drift). Device code only; the host-side planning never needs it.
//
// Every elementwise output is out = A * g + B * (x - M) + C0 with per-row coefficients (Coef):
//   affine forward   A = 0, B = a, M = mean_x, C0 = T_m   (out = a * x + b, b = T_m - a * mean_x)
//   affine backward  A = k, B = c * sgx / D * rstd, M = mean_x, C0 = c * sg / L, c = (1-alpha) - k
//   mean_std backward  A = 0, B = gs / (D * std), M = mean, C0 = gm / L
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

#include "welford.h"

namespace adain {
namespace cuda {

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

// Coefficients of `row` in the [R, 4] workspace finalize_rows_kernel writes (A, B, M, C0).
template <typename acc_t>
C10_DEVICE __forceinline__ Coef<acc_t> load_coef(const acc_t* coef, int64_t row) {
  Coef<acc_t> c;
  c.A = coef[4 * row + 0];
  c.B = coef[4 * row + 1];
  c.M = coef[4 * row + 2];
  c.C0 = coef[4 * row + 3];
  return c;
}

}  // namespace cuda
}  // namespace adain
