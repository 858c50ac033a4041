// What the CPU kernels of every op share: per-row reductions (Welford statistics, gradient sums)
// and the per-row map out = g_scale * g + slope * (x - mean) + shift, vectorised for contiguous
// rows and for channels_last images, plus one driver that parallelises "reduce every row, then map
// every row" over both layouts. The per-row math itself (std_of, blend, RowCoef and its
// coefficients, GradSums) is csrc/row_math.h, shared with the CUDA kernels.
//
// A "row" is one (n, c) plane of H*W = L elements. In contiguous tensors a row is contiguous; in
// channels_last tensors image n is an (L, C) matrix and a row is one of its columns, so those
// kernels vectorise across channels instead.
#pragma once

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "checks.h"
#include "cpu/output_cache.h"
#include "row_math.h"
#include "welford.h"

namespace adain::cpu {

// Elements per centred chunk: 8 KiB of fp32 stays in L1 between the chunk's two sweeps (mean,
// then squared deviations from that mean), so statistics read memory once yet never use the
// cancellation-prone sum-of-squares formula.
constexpr int64_t kChunk = 2048;
// Elements per chunk of channels_last positions: 128 KiB of fp32, in L2 between two sweeps.
constexpr int64_t kPositionChunk = 16 * kChunk;
// A task smaller than this costs more to schedule than to run.
constexpr int64_t kMinTaskElements = 16384;

template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// ---- Outputs.

// An output of x's (4-D rows) shape in `layout`, from the output cache (output_cache.h): the
// blocks of outputs freed since, so a loop of calls does not fault its outputs in afresh each
// time. Blocks from 4 MiB up are 2 MiB-aligned and advised for transparent huge pages before the
// first touch (64 MB fresh: ~16k faults, ~10 ms here, against ~30). With the cache off
// (ADAIN_EXT_OUTPUT_CACHE_MB=0), a plain at::empty_like with only the hint.
inline at::Tensor empty_output(const at::Tensor& x, Layout layout) {
  OutputCache& cache = OutputCache::get();
  if (cache.enabled()) {
    return at::detail::empty_generic(x.sizes(), &cache, c10::DispatchKeySet(c10::DispatchKey::CPU),
                                     x.scalar_type(), memory_format_of(layout));
  }
  at::Tensor out = at::empty_like(x, x.options(), memory_format_of(layout));
  advise_huge_pages(out.data_ptr(), out.nbytes());
  return out;
}

// ---- Loading and storing in the accumulation dtype: 16-bit types go through a float buffer.

template <typename scalar_t, typename acc_t>
inline const acc_t* load_acc(const scalar_t* src, int64_t n, acc_t* buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return src;
  } else {
    at::vec::convert(src, buf, n);
    return buf;
  }
}

// ---- Streaming outputs.
//
// An output much larger than the caches is evicted before anything reads it again. Written
// through the cache, each of its lines is first read from memory (read-for-ownership) and later
// written back: three transfers per line where non-temporal stores, which write whole lines
// straight to memory, need two. On this project's 2-core VM (one thread, 8x512x32x32 fp32, 16 MiB
// a tensor) the affine op's forward + backward went from ~7.5 to ~5.5 ms with its outputs
// streamed (benchmarks/bench_blocks.py, docs/kernels.md); in a loop whose data fits in the cache,
// streaming cost ~3%. Outputs of at least stream_threshold() bytes (ADAIN_EXT_STREAM_MB, default
// 4 MiB; 0: every output) are streamed; the values written are the same either way.
inline std::atomic<int64_t>& stream_threshold() {
  static std::atomic<int64_t> bytes = [] {
    const char* env = std::getenv("ADAIN_EXT_STREAM_MB");
    return static_cast<int64_t>(env == nullptr ? 4 : std::strtoll(env, nullptr, 10)) << 20;
  }();
  return bytes;
}

// Sets the threshold to `bytes` when it is >= 0; returns the threshold before the call.
inline int64_t set_stream_bytes(int64_t bytes) {
  return bytes >= 0 ? stream_threshold().exchange(bytes) : stream_threshold().load();
}

// n bytes from src (in L1: a chunk just computed) to dst with non-temporal stores, the unaligned
// head and tail of dst with ordinary ones. The stores are ordered by stream_fence, once a task.
inline void stream_copy(const void* src_v, void* dst_v, int64_t n) {
  const char* src = static_cast<const char*>(src_v);
  char* dst = static_cast<char*>(dst_v);
#if defined(__SSE2__)
  const int64_t head = std::min<int64_t>(n, (16 - (reinterpret_cast<uintptr_t>(dst) & 15)) & 15);
  std::memcpy(dst, src, head);
  int64_t i = head;
  for (; i + 16 <= n; i += 16) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
  }
  std::memcpy(dst + i, src + i, n - i);
#else
  std::memcpy(dst, src, n);
#endif
}

// Makes a task's streamed stores visible before the task reports itself done.
inline void stream_fence(bool streamed) {
#if defined(__SSE2__)
  if (streamed) _mm_sfence();
#endif
}

// Writes n accumulation-dtype results to the output: converted for 16-bit outputs (a float output
// already holds them, see out_acc), streamed if `stream`.
template <typename scalar_t, typename acc_t>
inline void store_acc(const acc_t* src, scalar_t* dst, int64_t n, bool stream = false) {
  if (!stream) {
    if constexpr (!std::is_same_v<scalar_t, acc_t>) at::vec::convert(src, dst, n);
    return;
  }
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    stream_copy(src, dst, n * static_cast<int64_t>(sizeof(scalar_t)));
  } else {
    scalar_t buf[kChunk];
    for (int64_t i = 0; i < n; i += kChunk) {
      const int64_t len = std::min(kChunk, n - i);
      at::vec::convert(src + i, buf, len);
      stream_copy(buf, dst + i, len * static_cast<int64_t>(sizeof(scalar_t)));
    }
  }
}

// Where a map writes its acc_t results: straight into a float output written through the cache,
// or a buffer that store_acc converts or streams from.
template <typename scalar_t, typename acc_t>
inline acc_t* out_acc(scalar_t* dst, acc_t* buf, bool stream = false) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return stream ? buf : dst;
  } else {
    return buf;
  }
}

// ---- The epilogue (row_math.h's activate / activation_grad), vectorised: the same `y <= 0` test.

template <typename acc_t>
C10_ALWAYS_INLINE at::vec::Vectorized<acc_t> activate_vec(const Epilogue<acc_t>& e,
                                                          at::vec::Vectorized<acc_t> y) {
  using Vec = at::vec::Vectorized<acc_t>;
  const Vec neg = e.kind == Activation::Relu ? Vec(0) : Vec(e.negative_slope) * y;
  return Vec::blendv(y, neg, y <= Vec(0));
}

template <typename acc_t>
C10_ALWAYS_INLINE at::vec::Vectorized<acc_t> activation_grad_vec(const Epilogue<acc_t>& e,
                                                                 at::vec::Vectorized<acc_t> y,
                                                                 at::vec::Vectorized<acc_t> g) {
  using Vec = at::vec::Vectorized<acc_t>;
  const Vec neg = e.kind == Activation::Relu ? Vec(0) : Vec(e.negative_slope) * g;
  return Vec::blendv(g, neg, y <= Vec(0));
}

// out = e(slope * (x - mean) + shift) over a chunk of n accumulation-dtype values, the activation
// in the same sweep (a second sweep over the chunk cost ~0.5 ms of a 2 ms forward at
// 8x512x32x32): one loop per activation kind, where activate_vec's kind test is a constant.
template <typename acc_t>
void map_forward_chunk(acc_t* out, const acc_t* x, int64_t n, const RowCoef<acc_t>& c,
                       const Epilogue<acc_t>& e) {
  using Vec = at::vec::Vectorized<acc_t>;
  const Vec slope(c.slope), mean(c.mean), shift(c.shift);
  const auto run = [&](auto kind) {
    const Epilogue<acc_t> act{decltype(kind)::value, e.negative_slope};
    at::vec::map([&](Vec xv) {
      const Vec y = at::vec::fmadd(slope, xv - mean, shift);
      if constexpr (decltype(kind)::value == Activation::None) {
        return y;
      } else {
        return activate_vec(act, y);
      }
    }, out, x, n);
  };
  switch (e.kind) {
    case Activation::None: return run(std::integral_constant<Activation, Activation::None>{});
    case Activation::Relu: return run(std::integral_constant<Activation, Activation::Relu>{});
    case Activation::LeakyRelu:
      return run(std::integral_constant<Activation, Activation::LeakyRelu>{});
  }
}

// ---- Contiguous rows.

// Sums f(x[i]) over a chunk with four independent vector accumulators: one accumulator would make
// every add wait for the previous one (4-cycle latency), halving throughput on rows in L1.
template <typename acc_t, typename F>
inline acc_t sum_over(const acc_t* x, int64_t n, F f) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  Vec a0(0), a1(0), a2(0), a3(0);
  int64_t i = 0;
  for (; i + 4 * V <= n; i += 4 * V) {
    a0 += f(Vec::loadu(x + i));
    a1 += f(Vec::loadu(x + i + V));
    a2 += f(Vec::loadu(x + i + 2 * V));
    a3 += f(Vec::loadu(x + i + 3 * V));
  }
  for (; i + V <= n; i += V) a0 += f(Vec::loadu(x + i));
  if (i < n) a1 += Vec::set(Vec(0), f(Vec::loadu(x + i, n - i)), n - i);  // tail lanes only
  return at::vec::vec_reduce_all<acc_t>([](Vec a, Vec b) { return a + b; }, (a0 + a1) + (a2 + a3));
}

template <typename acc_t>
inline WelfordState<acc_t> chunk_welford(const acc_t* x, int64_t n) {
  using Vec = at::vec::Vectorized<acc_t>;
  const acc_t mean = sum_over(x, n, [](Vec v) { return v; }) / static_cast<acc_t>(n);
  const Vec m(mean);
  const acc_t m2 = sum_over(x, n, [m](Vec v) {
    const Vec d = v - m;
    return d * d;
  });
  return {mean, m2, n};
}

// Welford statistics of n elements of a contiguous row, each chunk from load_x(i, len, buf) -> the
// chunk's elements in the accumulation dtype (x itself, or the prologue's p formed in buf).
template <typename acc_t, typename LoadX>
WelfordState<acc_t> welford_chunks(int64_t n, LoadX load_x) {
  acc_t buf[kChunk];
  WelfordState<acc_t> state;
  for (int64_t i = 0; i < n; i += kChunk) {
    const int64_t len = std::min(kChunk, n - i);
    state = welford_merge(state, chunk_welford(load_x(i, len, buf), len));
  }
  return state;
}

template <typename scalar_t, typename acc_t = acc_type<scalar_t>>
WelfordState<acc_t> welford_contiguous(const scalar_t* x, int64_t n) {
  return welford_chunks<acc_t>(
      n, [x](int64_t i, int64_t len, acc_t* buf) { return load_acc(x + i, len, buf); });
}

// The backward of an epilogue for one unit: g becomes activation_grad(e, y, g), y recomputed with
// the forward coefficients `fwd` of the unit's rows (one for a contiguous row, C for a
// channels_last image). A null ActGrad: no activation, g as given.
template <typename acc_t>
struct ActGrad {
  Epilogue<acc_t> e;
  const RowCoef<acc_t>* fwd;
};

template <typename scalar_t, typename acc_t = acc_type<scalar_t>>
GradSums<acc_t> grad_sums_contiguous(const scalar_t* g, const scalar_t* x, int64_t n, acc_t mean,
                                     const ActGrad<acc_t>* act = nullptr) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  // The epilogue's backward inline (g -> act'(y) * g, y from x with the forward's coefficients),
  // one instantiation with it and one without, so "none" runs the loop as before.
  const RowCoef<acc_t> fwd = act ? act->fwd[0] : RowCoef<acc_t>{};
  const Epilogue<acc_t> e = act ? act->e : Epilogue<acc_t>{};
  const auto sums_of = [&](auto has_act) {
    constexpr bool kAct = decltype(has_act)::value;
    acc_t gbuf[kChunk], xbuf[kChunk];
    const Vec m(mean), f_slope(fwd.slope), f_mean(fwd.mean), f_shift(fwd.shift);
    const auto masked = [&](Vec gv, Vec xv) {
      if constexpr (kAct) {
        return activation_grad_vec(e, at::vec::fmadd(f_slope, xv - f_mean, f_shift), gv);
      } else {
        return gv;
      }
    };
    GradSums<acc_t> sums;
    for (int64_t i = 0; i < n; i += kChunk) {
      const int64_t len = std::min(kChunk, n - i);
      const acc_t* gc = load_acc(g + i, len, gbuf);
      const acc_t* xc = load_acc(x + i, len, xbuf);
      // One sweep for both sums, two accumulators each (see sum_over).
      Vec sum_g0(0), sum_g1(0), sum_dev0(0), sum_dev1(0);
      int64_t j = 0;
      for (; j + 2 * V <= len; j += 2 * V) {
        const Vec x0 = Vec::loadu(xc + j), x1 = Vec::loadu(xc + j + V);
        const Vec g0 = masked(Vec::loadu(gc + j), x0), g1 = masked(Vec::loadu(gc + j + V), x1);
        sum_g0 += g0;
        sum_g1 += g1;
        sum_dev0 = at::vec::fmadd(g0, x0 - m, sum_dev0);
        sum_dev1 = at::vec::fmadd(g1, x1 - m, sum_dev1);
      }
      for (; j < len; j += V) {  // the tail as vectors too, so y is the forward's y bit for bit
        const int64_t w = std::min<int64_t>(V, len - j);
        const Vec xv = Vec::loadu(xc + j, w), gv = masked(Vec::loadu(gc + j, w), xv);
        sum_g0 += gv;  // lanes past w: g = 0 stays 0 through the mask, adds 0
        sum_dev0 = at::vec::fmadd(gv, Vec::set(Vec(0), xv - m, w), sum_dev0);
      }
      const auto add = [](Vec a, Vec b) { return a + b; };
      sums.sum_g += at::vec::vec_reduce_all<acc_t>(add, sum_g0 + sum_g1);
      sums.sum_g_dev += at::vec::vec_reduce_all<acc_t>(add, sum_dev0 + sum_dev1);
    }
    return sums;
  };
  return act ? sums_of(std::true_type{}) : sums_of(std::false_type{});
}

// out = g_scale * g + slope * (x - mean) + shift (apply_coef, vectorised); g may be null (then
// g_scale is ignored).
// Without g, `e` is applied to the result (the forward's epilogue); with g and `act`, g is first
// replaced by its activation gradient (the epilogue's backward). stream: see store_acc.
template <typename scalar_t, typename acc_t = acc_type<scalar_t>>
void map_contiguous(scalar_t* out, const scalar_t* x, const scalar_t* g, int64_t n,
                    const RowCoef<acc_t>& c, const Epilogue<acc_t>& e = {},
                    const ActGrad<acc_t>* act = nullptr, bool stream = false) {
  using Vec = at::vec::Vectorized<acc_t>;
  acc_t xbuf[kChunk], gbuf[kChunk], obuf[kChunk];
  const Vec g_scale(c.g_scale), slope(c.slope), mean(c.mean), shift(c.shift);
  for (int64_t i = 0; i < n; i += kChunk) {
    const int64_t len = std::min(kChunk, n - i);
    const acc_t* xc = load_acc(x + i, len, xbuf);
    acc_t* oc = out_acc(out + i, obuf, stream);
    if (g == nullptr) {
      map_forward_chunk(oc, xc, len, c, e);
    } else {
      const acc_t* gc = load_acc(g + i, len, gbuf);
      if (act == nullptr) {
        at::vec::map2(
            [&](Vec gv, Vec xv) {
              return at::vec::fmadd(g_scale, gv, at::vec::fmadd(slope, xv - mean, shift));
            },
            oc, gc, xc, len);
      } else {  // g -> act'(y) * g inline, y from x with the forward's coefficients
        const Vec f_slope(act->fwd[0].slope), f_mean(act->fwd[0].mean), f_shift(act->fwd[0].shift);
        at::vec::map2(
            [&](Vec gv, Vec xv) {
              const Vec gy =
                  activation_grad_vec(act->e, at::vec::fmadd(f_slope, xv - f_mean, f_shift), gv);
              return at::vec::fmadd(g_scale, gy, at::vec::fmadd(slope, xv - mean, shift));
            },
            oc, gc, xc, len);
      }
    }
    store_acc(oc, out + i, len, stream);
  }
}

// The forward map of a contiguous row: out = e(slope * (x - mean) + shift), each chunk of x from
// load_x(i, len, buf) (as welford_chunks); stream: see store_acc.
template <typename scalar_t, typename acc_t, typename LoadX>
void map_forward_chunks(scalar_t* out, int64_t n, const RowCoef<acc_t>& c, const Epilogue<acc_t>& e,
                        LoadX load_x, bool stream) {
  acc_t xbuf[kChunk], obuf[kChunk];
  for (int64_t i = 0; i < n; i += kChunk) {
    const int64_t len = std::min(kChunk, n - i);
    const acc_t* xc = load_x(i, len, xbuf);
    acc_t* oc = out_acc(out + i, obuf, stream);
    map_forward_chunk(oc, xc, len, c, e);
    store_acc(oc, out + i, len, stream);
  }
}

// ---- Short contiguous rows: a whole row in vector registers.
//
// A row of at most kShortRowVectors vectors (64 fp32 elements with AVX2) is loaded once; its
// statistics, gradient sums and map are computed from the registers. The general path's chunk
// buffers, four-accumulator sums and reloads cost more than the row itself there (16x512x8x8:
// ~40% of the forward). The vector count is a template argument, so each count gets its own
// fully unrolled loop: a runtime count spills the row to the stack (measured 2x slower).
constexpr int kShortRowVectors = 8;

template <typename acc_t, int NV>
struct ShortRow {
  using Vec = at::vec::Vectorized<acc_t>;
  static constexpr int64_t V = Vec::size();
  Vec v[NV];
  int64_t n = 0;  // (NV - 1) * V < n <= NV * V; lanes past n are zero

  template <typename scalar_t>
  C10_ALWAYS_INLINE void load(const scalar_t* x, int64_t n_) {
    n = n_;
    acc_t buf[NV * V];
    const acc_t* src = load_acc(x, n, buf);
    // Every load takes a count (full for all but the last vector, whose tail lanes it zero-fills):
    // a plain copy loop here is turned into a memcpy of the row to the stack in 16-byte pieces,
    // and reading those back as 32-byte vectors stalls store forwarding (measured 2x slower).
    for (int k = 0; k < NV; ++k) v[k] = Vec::loadu(src + k * V, std::min<int64_t>(V, n - k * V));
  }
  // d with the lanes past n zeroed (only the last vector has any).
  C10_ALWAYS_INLINE Vec tail_only(Vec d) const {
    const int64_t tail = n - (NV - 1) * V;
    return tail == V ? d : Vec::set(Vec(0), d, tail);
  }
  static C10_ALWAYS_INLINE acc_t reduce(Vec a) {
    return at::vec::vec_reduce_all<acc_t>([](Vec x, Vec y) { return x + y; }, a);
  }
  // The same two sweeps as chunk_welford (mean, then squared deviations from it), from registers.
  C10_ALWAYS_INLINE WelfordState<acc_t> welford() const {
    Vec sum(0);
    for (int k = 0; k < NV; ++k) sum += v[k];
    const acc_t mean = reduce(sum) / static_cast<acc_t>(n);
    const Vec m(mean);
    Vec m2(0);
    for (int k = 0; k + 1 < NV; ++k) m2 = at::vec::fmadd(v[k] - m, v[k] - m, m2);
    const Vec d = tail_only(v[NV - 1] - m);
    m2 = at::vec::fmadd(d, d, m2);
    return {mean, reduce(m2), n};
  }
  // This row is g: sum(g) and sum(g * (x - mean)) over the row x. The lanes past the row are zero
  // in both and add 0 * (0 - mean) = 0 (a non-finite mean makes the row's sums non-finite anyway).
  C10_ALWAYS_INLINE GradSums<acc_t> grad_sums(const ShortRow& x, acc_t mean) const {
    const Vec m(mean);
    Vec sum_g(0), sum_g_dev(0);
    for (int k = 0; k < NV; ++k) {
      sum_g += v[k];
      sum_g_dev = at::vec::fmadd(v[k], x.v[k] - m, sum_g_dev);
    }
    return {reduce(sum_g), reduce(sum_g_dev)};
  }
  // This row is g: g = activation_grad(e, y, g) with y recomputed from the row x with the
  // forward's coefficients (the epilogue's backward). Lanes past n stay zero.
  C10_ALWAYS_INLINE void activation_grad(const ShortRow& x, const RowCoef<acc_t>& fwd,
                                         const Epilogue<acc_t>& e) {
    const Vec slope(fwd.slope), mean(fwd.mean), shift(fwd.shift);
    for (int k = 0; k < NV; ++k) {
      v[k] = activation_grad_vec(e, at::vec::fmadd(slope, x.v[k] - mean, shift), v[k]);
    }
  }
  // out = c.g_scale * g + c.slope * (x - c.mean) + c.shift, this row being x (g may be null),
  // then the epilogue e.
  template <typename scalar_t>
  C10_ALWAYS_INLINE void store_map(scalar_t* out, const RowCoef<acc_t>& c, const ShortRow* g,
                                   const Epilogue<acc_t>& e = {}) const {
    const Vec g_scale(c.g_scale), slope(c.slope), mean(c.mean), shift(c.shift);
    acc_t buf[NV * V];
    acc_t* dst = out_acc(out, buf);
    for (int k = 0; k < NV; ++k) {
      Vec y = at::vec::fmadd(slope, v[k] - mean, shift);
      if (g != nullptr) y = at::vec::fmadd(g_scale, g->v[k], y);
      if (e.kind != Activation::None) y = activate_vec(e, y);
      if (k + 1 < NV) {
        y.store(dst + k * V);
      } else {
        y.store(dst + k * V, n - k * V);
      }
    }
    store_acc(dst, out, n);
  }
};

// Calls f(std::integral_constant<int, NV>{}) with NV the vector count of a row of L elements and
// returns true, or returns false (f not called) for rows longer than kShortRowVectors vectors.
template <typename acc_t, typename F>
bool with_short_row(int64_t L, F f) {
  constexpr int64_t V = at::vec::Vectorized<acc_t>::size();
  switch ((L + V - 1) / V) {
    case 1: f(std::integral_constant<int, 1>{}); return true;
    case 2: f(std::integral_constant<int, 2>{}); return true;
    case 3: f(std::integral_constant<int, 3>{}); return true;
    case 4: f(std::integral_constant<int, 4>{}); return true;
    case 5: f(std::integral_constant<int, 5>{}); return true;
    case 6: f(std::integral_constant<int, 6>{}); return true;
    case 7: f(std::integral_constant<int, 7>{}); return true;
    case 8: f(std::integral_constant<int, 8>{}); return true;
    default: return false;
  }
  static_assert(kShortRowVectors == 8, "with_short_row's cases end at kShortRowVectors");
}

// ---- channels_last images: positions [begin, end) of image n, all C channels at once.
// Loops run over channels with full vectors and one partial vector (loadu/store with a count).

// Welford states of the C rows of a channels_last image over positions [begin, end), position
// pos's C values from load_x(pos, buf) in the accumulation dtype (x, or the prologue's p).
template <typename acc_t, typename LoadX>
void welford_positions(LoadX load_x, int64_t C, int64_t begin, int64_t end,
                       WelfordState<acc_t>* states) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  // Chunks of positions small enough to stay in L2 between their two sweeps (kPositionChunk
  // elements), each channel's chunk no longer than a contiguous row's (kChunk values summed
  // plainly). Every chunk ends in C scalar merges: chunks of kChunk elements (4 positions at
  // C = 512) made those merges most of the statistics' time (8x512x32x32 forward + backward
  // 12.0 ms against 5.0 contiguous).
  const int64_t positions = std::clamp<int64_t>(kPositionChunk / C, 1, kChunk);
  std::vector<acc_t> buf(C), sum(C), m2(C);
  for (int64_t p0 = begin; p0 < end; p0 += positions) {
    const int64_t p1 = std::min(end, p0 + positions);
    const acc_t inv = acc_t(1) / static_cast<acc_t>(p1 - p0);
    std::fill(sum.begin(), sum.end(), acc_t(0));
    std::fill(m2.begin(), m2.end(), acc_t(0));
    for (int64_t pos = p0; pos < p1; ++pos) {
      const acc_t* xr = load_x(pos, buf.data());
      for (int64_t c = 0; c < C; c += V) {
        const int64_t w = std::min(V, C - c);
        (Vec::loadu(sum.data() + c, w) + Vec::loadu(xr + c, w)).store(sum.data() + c, w);
      }
    }
    for (int64_t pos = p0; pos < p1; ++pos) {
      const acc_t* xr = load_x(pos, buf.data());
      for (int64_t c = 0; c < C; c += V) {
        const int64_t w = std::min(V, C - c);
        const Vec d = Vec::loadu(xr + c, w) - Vec::loadu(sum.data() + c, w) * Vec(inv);
        (Vec::loadu(m2.data() + c, w) + d * d).store(m2.data() + c, w);
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      states[c] = welford_merge(states[c], WelfordState<acc_t>{sum[c] * inv, m2[c], p1 - p0});
    }
  }
}

template <typename scalar_t, typename acc_t = acc_type<scalar_t>>
void welford_channels_last(const scalar_t* image, int64_t C, int64_t begin, int64_t end,
                           WelfordState<acc_t>* states) {
  welford_positions<acc_t>(
      [image, C](int64_t pos, acc_t* buf) { return load_acc(image + pos * C, C, buf); }, C, begin,
      end, states);
}

// The forward coefficients of a channels_last image's C rows, field by field (slope, mean, shift,
// each across channels), for vector loads.
template <typename acc_t>
std::vector<acc_t> forward_fields(const RowCoef<acc_t>* fwd, int64_t C) {
  std::vector<acc_t> fields(3 * C);
  for (int64_t c = 0; c < C; ++c) {
    fields[c] = fwd[c].slope;
    fields[C + c] = fwd[c].mean;
    fields[2 * C + c] = fwd[c].shift;
  }
  return fields;
}

// dst = activation_grad(e, y, g) for one position's C channels; fields from forward_fields.
template <typename acc_t>
void activation_grad_channels(const Epilogue<acc_t>& e, const acc_t* fields, const acc_t* x,
                              const acc_t* g, acc_t* dst, int64_t C) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  for (int64_t c = 0; c < C; c += V) {
    const int64_t w = std::min(V, C - c);
    const Vec y = at::vec::fmadd(Vec::loadu(fields + c, w),
                                 Vec::loadu(x + c, w) - Vec::loadu(fields + C + c, w),
                                 Vec::loadu(fields + 2 * C + c, w));
    activation_grad_vec(e, y, Vec::loadu(g + c, w)).store(dst + c, w);
  }
}

template <typename scalar_t, typename acc_t = acc_type<scalar_t>>
void grad_sums_channels_last(const scalar_t* g_image, const scalar_t* x_image, int64_t C,
                             int64_t begin, int64_t end, const acc_t* mean, GradSums<acc_t>* sums,
                             const ActGrad<acc_t>* act = nullptr) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  std::vector<acc_t> gbuf(C), xbuf(C), gybuf(C), sum_g(C, 0), sum_g_dev(C, 0);
  const std::vector<acc_t> fields = act ? forward_fields(act->fwd, C) : std::vector<acc_t>();
  for (int64_t pos = begin; pos < end; ++pos) {
    const acc_t* gr = load_acc(g_image + pos * C, C, gbuf.data());
    const acc_t* xr = load_acc(x_image + pos * C, C, xbuf.data());
    if (act != nullptr) {
      activation_grad_channels(act->e, fields.data(), xr, gr, gybuf.data(), C);
      gr = gybuf.data();
    }
    for (int64_t c = 0; c < C; c += V) {
      const int64_t w = std::min(V, C - c);
      const Vec gv = Vec::loadu(gr + c, w);
      const Vec dev = Vec::loadu(xr + c, w) - Vec::loadu(mean + c, w);
      (Vec::loadu(sum_g.data() + c, w) + gv).store(sum_g.data() + c, w);
      at::vec::fmadd(gv, dev, Vec::loadu(sum_g_dev.data() + c, w)).store(sum_g_dev.data() + c, w);
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    sums[c] = grad_sums_merge(sums[c], GradSums<acc_t>{sum_g[c], sum_g_dev[c]});
  }
}

// coefs holds, per channel, g_scale (C values), then slope, then mean, then shift (RowCoef's
// fields, each across channels): vectors load them directly.
// Without g, `e` is applied to the result; with g and `act`, g is first replaced by its
// activation gradient (as map_contiguous).
// load_x(pos, buf): position pos's C values of x in the accumulation dtype (or the prologue's p).
template <typename scalar_t, typename acc_t, typename LoadX>
void map_positions(scalar_t* out_image, LoadX load_x, const scalar_t* g_image, int64_t C,
                   int64_t begin, int64_t end, const acc_t* coefs, const Epilogue<acc_t>& e = {},
                   const ActGrad<acc_t>* act = nullptr) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  std::vector<acc_t> xbuf(C), gbuf(C), obuf(C), gybuf(C);
  const acc_t *g_scale = coefs, *slope = coefs + C, *mean = coefs + 2 * C, *shift = coefs + 3 * C;
  const bool activate_out = g_image == nullptr && e.kind != Activation::None;
  const std::vector<acc_t> fields =
      g_image && act ? forward_fields(act->fwd, C) : std::vector<acc_t>();
  for (int64_t pos = begin; pos < end; ++pos) {
    const acc_t* xr = load_x(pos, xbuf.data());
    const acc_t* gr = g_image ? load_acc(g_image + pos * C, C, gbuf.data()) : nullptr;
    if (gr && act) {
      activation_grad_channels(act->e, fields.data(), xr, gr, gybuf.data(), C);
      gr = gybuf.data();
    }
    acc_t* orow = out_acc(out_image + pos * C, obuf.data());
    for (int64_t c = 0; c < C; c += V) {
      const int64_t w = std::min(V, C - c);
      const Vec centred = Vec::loadu(xr + c, w) - Vec::loadu(mean + c, w);
      Vec y = at::vec::fmadd(Vec::loadu(slope + c, w), centred, Vec::loadu(shift + c, w));
      if (gr) y = at::vec::fmadd(Vec::loadu(g_scale + c, w), Vec::loadu(gr + c, w), y);
      if (activate_out) y = activate_vec(e, y);
      y.store(orow + c, w);
    }
    store_acc(orow, out_image + pos * C, C);
  }
}

template <typename scalar_t, typename acc_t = acc_type<scalar_t>>
void map_channels_last(scalar_t* out_image, const scalar_t* x_image, const scalar_t* g_image,
                       int64_t C, int64_t begin, int64_t end, const acc_t* coefs,
                       const Epilogue<acc_t>& e = {}, const ActGrad<acc_t>* act = nullptr) {
  map_positions(
      out_image,
      [x_image, C](int64_t pos, acc_t* buf) { return load_acc(x_image + pos * C, C, buf); },
      g_image, C, begin, end, coefs, e, act);
}

// ---- What the kernels did, for tests (adain::_cpu_segment_log).
//
// Splitting a unit into segments only happens with few units and several threads, so a test cannot
// tell from the result whether the split path ran. While recording is on, every reduction and map
// logs the number of segments it split each unit into (1: whole units); off, logging costs one
// relaxed atomic load per kernel call.
struct SegmentLog {
  std::atomic<bool> recording{false};
  std::mutex mutex;
  std::vector<int64_t> entries;
};

inline SegmentLog& segment_log() {
  static SegmentLog log;
  return log;
}

inline void log_segments(int64_t segments) {
  SegmentLog& log = segment_log();
  if (!log.recording.load(std::memory_order_relaxed)) return;
  std::lock_guard<std::mutex> lock(log.mutex);
  log.entries.push_back(segments);
}

// ---- The driver.
//
// Work is split into "units" (a contiguous row, or a whole channels_last image) and, when units
// are too few to keep every thread busy, each unit into segments whose partial states are merged.
// With one segment per unit the reduction, the coefficients and the map of a unit run in the same
// task, so the unit is re-read from cache rather than memory.
struct Geometry {
  Layout layout;
  int64_t N, C, L;
  // Outputs of x's size are streamed (store_acc). Contiguous rows longer than a short row only:
  // channels_last positions and short rows are written through the cache.
  bool stream = false;
  int64_t units() const { return layout == Layout::Contiguous ? N * C : N; }
  int64_t unit_elements() const { return layout == Layout::Contiguous ? L : L * C; }
  int64_t segments() const {
    const int64_t threads = at::get_num_threads();
    if (threads <= 1 || units() >= 2 * threads) return 1;
    const int64_t wanted = (2 * threads + units() - 1) / units();
    const int64_t most = std::max<int64_t>(1, unit_elements() / kMinTaskElements);
    return std::max<int64_t>(1, std::min(wanted, std::min(most, L)));
  }
  std::pair<int64_t, int64_t> segment_range(int64_t s, int64_t S) const {  // along L
    return {L * s / S, L * (s + 1) / S};
  }
  int64_t grain(int64_t tasks) const {
    const int64_t per_task = unit_elements();
    return std::max<int64_t>(1, std::min(tasks, kMinTaskElements / std::max<int64_t>(1, per_task)));
  }
};

// map(unit, begin, end) over every unit, split like reduce_then_map splits it.
template <typename Map>
void map_units(const Geometry& geo, Map map) {
  const int64_t units = geo.units(), S = geo.segments();
  log_segments(S);
  at::parallel_for(0, units * S, S == 1 ? geo.grain(units) : 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const auto [b, e] = geo.segment_range(t % S, S);
      map(t / S, b, e);
    }
    stream_fence(geo.stream);
  });
}

inline int64_t rows_per_unit(const Geometry& geo) {
  return geo.layout == Layout::Contiguous ? 1 : geo.C;
}

// Reduces every row to a State, turns it into the row's map coefficients with finish(row, state)
// -> RowCoef (which may also store the row's statistics), then calls map(unit, begin, end,
// unit_coefs) over every unit, unit_coefs holding the coefficients of that unit's rows. The
// callbacks:
//   reduce_rows(unit, begin, end, State* out): merge the states of `unit`'s rows over positions
//     [begin, end) into out (one State for a contiguous row, C States for a channels_last image);
//   merge(State, State) -> State.
// Whole units keep their coefficients in a per-task buffer: an (N*C)-row array per call would be
// a fresh allocation of 16 bytes a row (256 KiB for 16x512 rows), paid in page faults every call.
template <typename State, typename Coef, typename Reduce, typename Merge, typename Finish, typename Map>
void reduce_then_map(const Geometry& geo, Reduce reduce_rows, Merge merge, Finish finish, Map map) {
  const int64_t units = geo.units(), S = geo.segments(), L = geo.L;
  const int64_t rpu = rows_per_unit(geo);
  log_segments(S);
  if (S == 1) {
    at::parallel_for(0, units, geo.grain(units), [&](int64_t begin, int64_t end) {
      std::vector<State> states(rpu);
      std::vector<Coef> coefs(rpu);
      for (int64_t u = begin; u < end; ++u) {
        std::fill(states.begin(), states.end(), State{});
        reduce_rows(u, 0, L, states.data());
        for (int64_t r = 0; r < rpu; ++r) coefs[r] = finish(u * rpu + r, states[r]);
        map(u, 0, L, coefs.data());
      }
      stream_fence(geo.stream);
    });
    return;
  }
  // Few units, split into segments: every row's coefficients are needed by every segment's map.
  std::vector<State> partial(units * S * rpu);
  at::parallel_for(0, units * S, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const auto [b, e] = geo.segment_range(t % S, S);
      reduce_rows(t / S, b, e, partial.data() + t * rpu);
    }
  });
  std::vector<Coef> coefs(units * rpu);
  at::parallel_for(0, units, 1, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      for (int64_t r = 0; r < rpu; ++r) {
        State state{};
        for (int64_t s = 0; s < S; ++s) state = merge(state, partial[(u * S + s) * rpu + r]);
        coefs[u * rpu + r] = finish(u * rpu + r, state);
      }
    }
  });
  map_units(geo, [&](int64_t u, int64_t b, int64_t e) { map(u, b, e, coefs.data() + u * rpu); });
}

// Short contiguous rows (see ShortRow), never split: body(row, nv) for every row in parallel, one
// loop per vector count nv (a std::integral_constant). Returns false, running nothing, where the
// rows are channels_last or longer than kShortRowVectors vectors: the general path applies.
template <typename acc_t, typename Body>
bool for_each_short_row(const Geometry& geo, Body body) {
  if (geo.layout != Layout::Contiguous || geo.segments() != 1) return false;
  return with_short_row<acc_t>(geo.L, [&](auto nv) {
    log_segments(1);
    at::parallel_for(0, geo.units(), geo.grain(geo.units()), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) body(row, nv);
    });
  });
}

// Welford states of unit u's rows over positions [b, e), merged into out (one state for a
// contiguous row, C for a channels_last image).
template <typename scalar_t>
void welford_unit(const Geometry& geo, const scalar_t* x, int64_t u, int64_t b, int64_t e,
                  WelfordState<acc_type<scalar_t>>* out) {
  const int64_t L = geo.L, C = geo.C;
  if (geo.layout == Layout::Contiguous) {
    out[0] = welford_merge(out[0], welford_contiguous(x + u * L + b, e - b));
  } else {
    welford_channels_last(x + u * L * C, C, b, e, out);
  }
}

// sum(g) and sum(g * (x - mean)) of unit u's rows over [b, e); mean holds every row's mean.
// act: the epilogue's backward for unit u (null: none).
template <typename scalar_t>
void grad_sums_unit(const Geometry& geo, const scalar_t* g, const scalar_t* x,
                    const acc_type<scalar_t>* mean, int64_t u, int64_t b, int64_t e,
                    GradSums<acc_type<scalar_t>>* out,
                    const ActGrad<acc_type<scalar_t>>* act = nullptr) {
  const int64_t L = geo.L, C = geo.C;
  if (geo.layout == Layout::Contiguous) {
    out[0] = grad_sums_merge(
        out[0], grad_sums_contiguous(g + u * L + b, x + u * L + b, e - b, mean[u], act));
  } else {
    grad_sums_channels_last(g + u * L * C, x + u * L * C, C, b, e, mean + u * C, out, act);
  }
}

// Welford statistics of every row of x (a tensor in `geo`'s layout), handed to finish(row, state)
// -> RowCoef; then map(unit, begin, end, unit_coefs) as reduce_then_map.
template <typename scalar_t, typename Finish, typename Map>
void welford_then_map(const Geometry& geo, const scalar_t* x, Finish finish, Map map) {
  using acc_t = acc_type<scalar_t>;
  reduce_then_map<WelfordState<acc_t>, RowCoef<acc_t>>(
      geo,
      [&](int64_t u, int64_t b, int64_t e, WelfordState<acc_t>* out) { welford_unit(geo, x, u, b, e, out); },
      [](const WelfordState<acc_t>& a, const WelfordState<acc_t>& b) { return welford_merge(a, b); },
      finish, map);
}

// Applies every row's map out = g_scale * g + slope * (x - mean) + shift to positions [b, e) of
// unit u; unit_coefs holds the RowCoefs of u's rows (one for a contiguous row, C for a
// channels_last image; g_scale is ignored where g is null).
// epilogue: applied to the result where g is null; act: the epilogue's backward where g is given.
template <typename scalar_t>
void map_unit(const Geometry& geo, int64_t u, int64_t b, int64_t e, scalar_t* out,
              const scalar_t* x, const scalar_t* g, const RowCoef<acc_type<scalar_t>>* unit_coefs,
              const Epilogue<acc_type<scalar_t>>& epilogue = {},
              const ActGrad<acc_type<scalar_t>>* act = nullptr) {
  using acc_t = acc_type<scalar_t>;
  const int64_t L = geo.L, C = geo.C;
  if (geo.layout == Layout::Contiguous) {
    map_contiguous(out + u * L + b, x + u * L + b, g ? g + u * L + b : nullptr, e - b, unit_coefs[0],
                   epilogue, act, geo.stream);
    return;
  }
  // map_channels_last wants image u's coefficients field by field, each across channels.
  std::vector<acc_t> by_field(4 * C);
  for (int64_t c = 0; c < C; ++c) {
    const RowCoef<acc_t>& row = unit_coefs[c];
    by_field[c] = row.g_scale;
    by_field[C + c] = row.slope;
    by_field[2 * C + c] = row.mean;
    by_field[3 * C + c] = row.shift;
  }
  const int64_t offset = u * L * C;
  map_channels_last(out + offset, x + offset, g ? g + offset : nullptr, C, b, e, by_field.data(),
                    epilogue, act);
}

inline Geometry geometry_of(const at::Tensor& x, Layout layout) {
  const int64_t L = x.size(2) * x.size(3);
  const bool stream = layout == Layout::Contiguous &&
                      L > kShortRowVectors * at::vec::Vectorized<acc_type<float>>::size() &&
                      static_cast<int64_t>(x.nbytes()) >= stream_threshold().load();
  return {layout, x.size(0), x.size(1), L, stream};
}

}  // namespace adain::cpu
