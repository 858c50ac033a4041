// The one Welford merge of the C++ and CUDA kernels (Chan et al.'s pairwise update), shared by
// host and device code. Partial statistics of disjoint pieces of a row (vector lanes, chunks,
// threads, blocks) are combined with it; the raw sum-of-squares formula is never used because it
// cancels catastrophically on large-mean data (x = 1e4 + N(0, 1) in fp32).
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

namespace adain {

template <typename acc_t>
struct WelfordState {
  acc_t mean = 0;
  acc_t m2 = 0;  // sum of squared deviations from `mean`
  int64_t count = 0;
};

template <typename acc_t>
C10_HOST_DEVICE inline WelfordState<acc_t> welford_merge(const WelfordState<acc_t>& a,
                                                         const WelfordState<acc_t>& b) {
  if (a.count == 0) return b;
  if (b.count == 0) return a;
  const int64_t count = a.count + b.count;
  const acc_t delta = b.mean - a.mean;
  const acc_t b_share = static_cast<acc_t>(b.count) / static_cast<acc_t>(count);
  WelfordState<acc_t> out;
  out.mean = a.mean + delta * b_share;
  out.m2 = a.m2 + b.m2 + delta * delta * static_cast<acc_t>(a.count) * b_share;
  out.count = count;
  return out;
}

// var = m2 / (count - 1) (unbiased, the reference's calc_mean_std) or m2 / count; std =
// sqrt(var + eps) (std_of in row_math.h).
template <typename acc_t>
C10_HOST_DEVICE inline acc_t variance_divisor(int64_t count, bool unbiased) {
  return static_cast<acc_t>(unbiased ? count - 1 : count);
}

}  // namespace adain
