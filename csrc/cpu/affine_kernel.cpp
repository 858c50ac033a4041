// adain::_affine_forward and adain::_affine_backward on CPU (adain::affine calls the forward).
//
// Per row, with L = H*W, D = L - 1 (unbiased) or L, x_hat = (x - mean_x) / std_x and the target
// statistics blended with the row's own by alpha (target_mean, target_std):
//   forward   out = target_std * x_hat + target_mean;
//   backward  with sum_g = sum(g), sum_g_xhat = sum(g * x_hat) and k = target_std / std_x,
//             grad_x = k * g + ((1 - alpha) - k) * (sum_g_xhat / D * x_hat + sum_g / L),
//             grad_mean = alpha * sum_g, grad_std = alpha * sum_g_xhat.
// Both as per-row coefficients from csrc/row_math.h. With an activation (the epilogue), out =
// act(target_std * x_hat + target_mean), and the backward first replaces g by act'(y) * g, y
// recomputed from x with the forward's coefficients (row_math.h's activation_grad).
#include <torch/library.h>

#include <cmath>

#include "cpu/kernels.h"
#include "cpu/row_kernels.h"

namespace adain::cpu {

std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_forward(
    const at::Tensor& x_in, const at::Tensor& mean, const at::Tensor& std, double alpha,
    double eps, bool unbiased, c10::string_view activation, double negative_slope) {
  check_affine(x_in, mean, std, unbiased);
  check_eps(eps);
  check_alpha(alpha);
  check_activation(activation, negative_slope);
  auto [x, layout] = canonical_layout(x_in);
  const auto acc = acc_dtype(x.scalar_type());
  at::Tensor out = empty_output(x, layout);
  at::Tensor mean_x = at::empty({x.size(0), x.size(1)}, x.options().dtype(acc));
  at::Tensor std_x = at::empty_like(mean_x);
  if (out.numel() == 0) return {shaped_like(out, x_in), mean_x, std_x};
  const Geometry geo = geometry_of(x, layout);
  // The given target statistics (before the blend), flat in the accumulation dtype.
  const at::Tensor mean_t_acc = flat_stat(mean, acc), std_t_acc = flat_stat(std, acc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "adain_affine_forward_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const acc_t a_ = static_cast<acc_t>(alpha), eps_ = static_cast<acc_t>(eps);
    const Epilogue<acc_t> epilogue = epilogue_of<acc_t>(activation, negative_slope);
    const acc_t* mean_t = mean_t_acc.const_data_ptr<acc_t>();
    const acc_t* std_t = std_t_acc.const_data_ptr<acc_t>();
    acc_t* mean_out = mean_x.mutable_data_ptr<acc_t>();
    acc_t* std_out = std_x.mutable_data_ptr<acc_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const auto finish = [&](int64_t row, const WelfordState<acc_t>& s) {
      mean_out[row] = s.mean;
      std_out[row] = std_of(s, eps_, unbiased);
      return affine_forward_coef(s.mean, std_out[row], mean_t[row], std_t[row], a_);
    };
    const int64_t L = geo.L;
    const bool short_rows = for_each_short_row<acc_t>(geo, [&](int64_t row, auto nv) {
      ShortRow<acc_t, decltype(nv)::value> x_row;
      x_row.load(xp + row * L, L);
      x_row.store_map(op + row * L, finish(row, x_row.welford()), nullptr, epilogue);
    });
    if (short_rows) return;
    welford_then_map(geo, xp, finish,
                     [&](int64_t u, int64_t b, int64_t e, const RowCoef<acc_t>* unit_coefs) {
                       map_unit<scalar_t>(geo, u, b, e, op, xp, nullptr, unit_coefs, epilogue);
                     });
  });
  return {shaped_like(out, x_in), mean_x, std_x};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_backward(
    const at::Tensor& grad_out, const at::Tensor& x_in, const at::Tensor& mean_x,
    const at::Tensor& std_x, const at::Tensor& std, double alpha, bool unbiased,
    const std::optional<at::Tensor>& mean, c10::string_view activation, double negative_slope) {
  check_backward_mean(mean, activation, negative_slope);
  auto [x, layout] = canonical_layout(x_in);
  const at::Tensor g = as_rows(grad_out.to(x.scalar_type()), layout);
  const auto acc = acc_dtype(x.scalar_type());
  at::Tensor grad_x = empty_output(x, layout);
  at::Tensor grad_mean = at::empty({x.size(0), x.size(1)}, x.options().dtype(acc));
  at::Tensor grad_std = at::empty_like(grad_mean);
  if (grad_x.numel() == 0) return {shaped_like(grad_x, x_in), grad_mean, grad_std};
  const Geometry geo = geometry_of(x, layout);
  const at::Tensor m = flat_stat(mean_x, acc), sd = flat_stat(std_x, acc);
  const at::Tensor std_t_acc = flat_stat(std, acc);
  // The target mean, needed only to recompute the output before an activation.
  const at::Tensor mean_t_acc = activation != "none" ? flat_stat(*mean, acc) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "adain_affine_backward_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const acc_t a_ = static_cast<acc_t>(alpha);
    const Epilogue<acc_t> epilogue = epilogue_of<acc_t>(activation, negative_slope);
    const bool has_act = epilogue.kind != Activation::None;
    const acc_t* mp = m.const_data_ptr<acc_t>();
    const acc_t* sdp = sd.const_data_ptr<acc_t>();
    const acc_t* std_t = std_t_acc.const_data_ptr<acc_t>();
    const acc_t* mean_t = has_act ? mean_t_acc.const_data_ptr<acc_t>() : nullptr;
    // The forward's coefficients of a row: the same call the forward made, so y is bitwise its y.
    const auto forward_coef = [&](int64_t row) {
      return affine_forward_coef(mp[row], sdp[row], mean_t[row], std_t[row], a_);
    };
    acc_t* gmean = grad_mean.mutable_data_ptr<acc_t>();
    acc_t* gstd = grad_std.mutable_data_ptr<acc_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* out = grad_x.mutable_data_ptr<scalar_t>();
    const auto finish = [&](int64_t row, const GradSums<acc_t>& s) {
      const AffineGrads<acc_t> grads =
          affine_backward_coef(s, mp[row], sdp[row], std_t[row], a_, geo.L, unbiased);
      gmean[row] = grads.grad_mean_t;
      gstd[row] = grads.grad_std_t;
      return grads.grad_x;
    };
    const int64_t L = geo.L;
    const bool short_rows = for_each_short_row<acc_t>(geo, [&](int64_t row, auto nv) {
      ShortRow<acc_t, decltype(nv)::value> x_row, g_row;
      x_row.load(xp + row * L, L);
      g_row.load(gp + row * L, L);
      if (has_act) g_row.activation_grad(x_row, forward_coef(row), epilogue);
      x_row.store_map(out + row * L, finish(row, g_row.grad_sums(x_row, mp[row])), &g_row);
    });
    if (short_rows) return;
    // run(act) with the epilogue's backward for unit u (null without an activation): its rows'
    // forward coefficients, on the stack for a contiguous row (no allocation per row), in a
    // vector for a channels_last image's C rows.
    const int64_t rpu = rows_per_unit(geo);
    const auto with_act = [&](int64_t u, auto run) {
      if (!has_act) return run(nullptr);
      if (rpu == 1) {
        const RowCoef<acc_t> fwd = forward_coef(u);
        const ActGrad<acc_t> act{epilogue, &fwd};
        return run(&act);
      }
      std::vector<RowCoef<acc_t>> fwd(rpu);
      for (int64_t r = 0; r < rpu; ++r) fwd[r] = forward_coef(u * rpu + r);
      const ActGrad<acc_t> act{epilogue, fwd.data()};
      run(&act);
    };
    reduce_then_map<GradSums<acc_t>, RowCoef<acc_t>>(
        geo,
        [&](int64_t u, int64_t b, int64_t e, GradSums<acc_t>* sums) {
          with_act(u, [&](const ActGrad<acc_t>* act) {
            grad_sums_unit(geo, gp, xp, mp, u, b, e, sums, act);
          });
        },
        [](const GradSums<acc_t>& a, const GradSums<acc_t>& b) { return grad_sums_merge(a, b); },
        finish,
        [&](int64_t u, int64_t b, int64_t e, const RowCoef<acc_t>* unit_coefs) {
          with_act(u, [&](const ActGrad<acc_t>* act) {
            map_unit<scalar_t>(geo, u, b, e, out, xp, gp, unit_coefs, {}, act);
          });
        });
  });
  return {shaped_like(grad_x, x_in), grad_mean, grad_std};
}

// ---- The prologue: p = act_pre(x + weight * noise + bias) in place of x (row_math.h).
//
// No kernel stores pre or p. Where a kernel loads a chunk of x (a piece of a contiguous row, or
// one position's C channels of a channels_last image) it forms p in an L1 buffer instead; the
// forward then runs the affine op's own Welford and map loops on it (welford_chunks,
// map_forward_chunks, welford_positions, map_positions). The backward forms pre and p again
// and takes, in its one reduction sweep, the affine op's GradSums and the masked PrologueSums
// that give the bias and weight gradients; its map is the affine op's times act_pre'(pre).

namespace {

using at::vec::Vectorized;

// act(v), with "none" the identity (activate_vec assumes an activation).
template <typename acc_t>
C10_ALWAYS_INLINE Vectorized<acc_t> pre_activate(const Epilogue<acc_t>& act, Vectorized<acc_t> v) {
  return act.kind == Activation::None ? v : activate_vec(act, v);
}

// act'(pre) * g, with "none" g.
template <typename acc_t>
C10_ALWAYS_INLINE Vectorized<acc_t> pre_activation_grad(const Epilogue<acc_t>& act,
                                                        Vectorized<acc_t> pre,
                                                        Vectorized<acc_t> g) {
  return act.kind == Activation::None ? g : activation_grad_vec(act, pre, g);
}

// Vector loops over n elements: full vectors with plain loads and stores, then one tail vector
// with counted ones (at::vec's counted loadu/store go through a stack copy: in every iteration
// they made the prologue's loops 2-3x slower). body(j, io): io.load / io.store at j, and
// io.full (constexpr) false only for the tail, of io.k < V elements.
template <typename acc_t, bool kFull>
struct VecIO {
  static constexpr bool full = kFull;
  int64_t k;
  C10_ALWAYS_INLINE Vectorized<acc_t> load(const acc_t* ptr) const {
    if constexpr (kFull) {
      return Vectorized<acc_t>::loadu(ptr);
    } else {
      return Vectorized<acc_t>::loadu(ptr, k);
    }
  }
  C10_ALWAYS_INLINE void store(Vectorized<acc_t> v, acc_t* ptr) const {
    if constexpr (kFull) {
      v.store(ptr);
    } else {
      v.store(ptr, k);
    }
  }
};

template <typename acc_t, typename Body>
C10_ALWAYS_INLINE void for_vectors(int64_t n, Body body) {
  constexpr int64_t V = Vectorized<acc_t>::size();
  int64_t j = 0;
  for (; j + V <= n; j += V) body(j, VecIO<acc_t, true>{V});
  if (j < n) body(j, VecIO<acc_t, false>{n - j});
}

// The prologue of one unit (a contiguous row, or a channels_last image).
template <typename scalar_t>
struct UnitPrologue {
  using acc_t = acc_type<scalar_t>;
  Epilogue<acc_t> act;
  const scalar_t* noise = nullptr;  // the unit's noise, indexed as its x; null: no noise
  bool noise_per_channel = false;   // channels_last: (L, C) noise; else one value per position
  const acc_t* weight = nullptr;    // the unit's channels' weights (one for a row, C for an image)
  const acc_t* bias = nullptr;
};

// pre and p of n elements of a contiguous row: x and noise at the same offsets, one weight and
// bias. pre may be null (not wanted); returns the noise in the accumulation dtype (null: none).
template <typename scalar_t, typename acc_t = acc_type<scalar_t>>
const acc_t* form_row(const UnitPrologue<scalar_t>& pro, const scalar_t* x, const scalar_t* noise,
                      int64_t n, acc_t* pre, acc_t* p, acc_t* noise_buf) {
  using Vec = Vectorized<acc_t>;
  const Vec w(pro.weight[0]), b(pro.bias[0]);
  const acc_t* xc = load_acc(x, n, p);  // fp32: x itself; 16-bit: converted into p
  const acc_t* nc = noise ? load_acc(noise, n, noise_buf) : nullptr;
  for_vectors<acc_t>(n, [&](int64_t j, auto io) {
    Vec v = io.load(xc + j);
    if (nc) v = at::vec::fmadd(w, io.load(nc + j), v);
    v = v + b;
    if (pre) io.store(v, pre + j);
    io.store(pre_activate(pro.act, v), p + j);
  });
  return nc;
}

// The same for one position of a channels_last image: C values, a weight and bias per channel,
// the noise one value (broadcast) or C.
template <typename scalar_t, typename acc_t = acc_type<scalar_t>>
const acc_t* form_position(const UnitPrologue<scalar_t>& pro, const scalar_t* x_pos,
                           const scalar_t* noise_pos, int64_t C, acc_t* pre, acc_t* p,
                           acc_t* noise_buf) {
  using Vec = Vectorized<acc_t>;
  const acc_t* xc = load_acc(x_pos, C, p);
  const acc_t* nc = nullptr;
  if (noise_pos) {
    if (pro.noise_per_channel) {
      nc = load_acc(noise_pos, C, noise_buf);
    } else {
      std::fill(noise_buf, noise_buf + C, static_cast<acc_t>(noise_pos[0]));
      nc = noise_buf;
    }
  }
  for_vectors<acc_t>(C, [&](int64_t c, auto io) {
    Vec v = io.load(xc + c);
    if (nc) v = at::vec::fmadd(io.load(pro.weight + c), io.load(nc + c), v);
    v = v + io.load(pro.bias + c);
    if (pre) io.store(v, pre + c);
    io.store(pre_activate(pro.act, v), p + c);
  });
  return nc;
}

// The backward's reduction state of a row.
template <typename acc_t>
struct PrologueBackwardSums {
  GradSums<acc_t> affine;
  PrologueSums<acc_t> prologue;
};

template <typename acc_t>
PrologueBackwardSums<acc_t> merge(const PrologueBackwardSums<acc_t>& a,
                                  const PrologueBackwardSums<acc_t>& b) {
  return {grad_sums_merge(a.affine, b.affine), prologue_sums_merge(a.prologue, b.prologue)};
}

// The vector sums of one sweep: lanes past the data must come in as zero in g and m.
template <typename acc_t>
struct SumVecs {
  using Vec = Vectorized<acc_t>;
  Vec g{0}, g_dev{0}, mg{0}, mdev{0}, m{0}, mg_noise{0}, mdev_noise{0}, m_noise{0};

  // gy: the gradient after the epilogue's backward; dev = p - mean; m = act_pre'(pre); nv: noise.
  void merge(const SumVecs& o) {
    g += o.g;
    g_dev += o.g_dev;
    mg += o.mg;
    mdev += o.mdev;
    m += o.m;
    mg_noise += o.mg_noise;
    mdev_noise += o.mdev_noise;
    m_noise += o.m_noise;
  }

  C10_ALWAYS_INLINE void add(Vec gy, Vec dev, Vec mv, const Vec* nv) {
    g += gy;
    g_dev = at::vec::fmadd(gy, dev, g_dev);
    mg = at::vec::fmadd(mv, gy, mg);
    mdev = at::vec::fmadd(mv, dev, mdev);
    m += mv;
    if (nv) {
      const Vec mn = mv * *nv;
      mg_noise = at::vec::fmadd(mn, gy, mg_noise);
      mdev_noise = at::vec::fmadd(mn, dev, mdev_noise);
      m_noise += mn;
    }
  }
};

template <typename acc_t>
acc_t lane_sum(Vectorized<acc_t> v) {
  return at::vec::vec_reduce_all<acc_t>([](auto a, auto b) { return a + b; }, v);
}

// One row piece's sums, from pre, p, noise (null: none) and g already in the accumulation dtype:
// GradSums over (p, gy) and the masked PrologueSums, added to `sv`.
template <typename acc_t>
void prologue_sums_of(const Epilogue<acc_t>& pre_act, const Epilogue<acc_t>& e,
                      const RowCoef<acc_t>& fwd, const acc_t* g, const acc_t* pre, const acc_t* p,
                      const acc_t* noise, int64_t n, acc_t mean, SumVecs<acc_t>& sv) {
  using Vec = Vectorized<acc_t>;
  const Vec m(mean), f_slope(fwd.slope), f_mean(fwd.mean), f_shift(fwd.shift);
  SumVecs<acc_t> local;  // in registers: `sv` is memory the loop would store to every time
  for_vectors<acc_t>(n, [&](int64_t j, auto io) {
    const Vec pv = io.load(p + j);
    Vec gy = io.load(g + j);  // zero past the data, and so after the epilogue's backward
    if (e.kind != Activation::None) {
      gy = activation_grad_vec(e, at::vec::fmadd(f_slope, pv - f_mean, f_shift), gy);
    }
    Vec dev = pv - m, mv = pre_activation_grad(pre_act, io.load(pre + j), Vec(1));
    if constexpr (!decltype(io)::full) {  // lanes past the data add nothing
      dev = Vec::set(Vec(0), dev, io.k);
      mv = Vec::set(Vec(0), mv, io.k);
    }
    if (noise) {
      const Vec nv = io.load(noise + j);
      local.add(gy, dev, mv, &nv);
    } else {
      local.add(gy, dev, mv, nullptr);
    }
  });
  sv.merge(local);
}

template <typename acc_t>
PrologueBackwardSums<acc_t> sums_of(const SumVecs<acc_t>& sv) {
  PrologueBackwardSums<acc_t> out;
  out.affine = {lane_sum(sv.g), lane_sum(sv.g_dev)};
  out.prologue = {lane_sum(sv.mg), lane_sum(sv.mdev), lane_sum(sv.m),
                  lane_sum(sv.mg_noise), lane_sum(sv.mdev_noise), lane_sum(sv.m_noise)};
  return out;
}

// grad_x = act_pre'(pre) * (k * gy + slope * (p - mean) + shift) over n elements in the
// accumulation dtype, into out_acc.
template <typename acc_t>
void prologue_map_of(const Epilogue<acc_t>& pre_act, const Epilogue<acc_t>& e,
                     const RowCoef<acc_t>& fwd, const RowCoef<acc_t>& c, acc_t* out,
                     const acc_t* g, const acc_t* pre, const acc_t* p, int64_t n) {
  using Vec = Vectorized<acc_t>;
  const Vec f_slope(fwd.slope), f_mean(fwd.mean), f_shift(fwd.shift);
  const Vec g_scale(c.g_scale), slope(c.slope), mean(c.mean), shift(c.shift);
  for_vectors<acc_t>(n, [&](int64_t j, auto io) {
    const Vec pv = io.load(p + j);
    Vec gy = io.load(g + j);
    if (e.kind != Activation::None) {
      gy = activation_grad_vec(e, at::vec::fmadd(f_slope, pv - f_mean, f_shift), gy);
    }
    const Vec gp = at::vec::fmadd(g_scale, gy, at::vec::fmadd(slope, pv - mean, shift));
    io.store(pre_activation_grad(pre_act, io.load(pre + j), gp), out + j);
  });
}

// A row piece's sums, pre and p formed chunk by chunk (rows too long for one buffer, segments).
template <typename scalar_t, typename acc_t = acc_type<scalar_t>>
PrologueBackwardSums<acc_t> prologue_sums_row(const UnitPrologue<scalar_t>& pro,
                                              const Epilogue<acc_t>& e, const RowCoef<acc_t>& fwd,
                                              const scalar_t* g, const scalar_t* x,
                                              const scalar_t* noise, int64_t n, acc_t mean) {
  acc_t pre[kChunk], p[kChunk], nbuf[kChunk], gbuf[kChunk];
  SumVecs<acc_t> sv;
  for (int64_t i = 0; i < n; i += kChunk) {
    const int64_t len = std::min(kChunk, n - i);
    const acc_t* nc = form_row(pro, x + i, noise ? noise + i : nullptr, len, pre, p, nbuf);
    prologue_sums_of(pro.act, e, fwd, load_acc(g + i, len, gbuf), pre, p, nc, len, mean, sv);
  }
  return sums_of(sv);
}

template <typename scalar_t, typename acc_t = acc_type<scalar_t>>
void prologue_map_row(const UnitPrologue<scalar_t>& pro, const Epilogue<acc_t>& e,
                      const RowCoef<acc_t>& fwd, const RowCoef<acc_t>& c, scalar_t* out,
                      const scalar_t* g, const scalar_t* x, const scalar_t* noise, int64_t n,
                      bool stream) {
  acc_t pre[kChunk], p[kChunk], nbuf[kChunk], gbuf[kChunk], obuf[kChunk];
  for (int64_t i = 0; i < n; i += kChunk) {
    const int64_t len = std::min(kChunk, n - i);
    form_row(pro, x + i, noise ? noise + i : nullptr, len, pre, p, nbuf);
    acc_t* oc = out_acc(out + i, obuf, stream);
    prologue_map_of(pro.act, e, fwd, c, oc, load_acc(g + i, len, gbuf), pre, p, len);
    store_acc(oc, out + i, len, stream);
  }
}

// Rows up to this many elements run whole: p (and in the backward pre, noise and g) formed once
// into per-task buffers (4 x 64 KiB of fp32, in L2), which the statistics and the map then read,
// instead of forming them again chunk by chunk in each pass. StyleGAN's rows (4x4 to 128x128)
// are all such rows.
constexpr int64_t kWholeRow = 16384;

// Calls body(row, buffers) for every contiguous row in parallel, buffers of L acc_t each, and
// returns true; false (nothing run) where the rows are channels_last, split or longer.
template <typename acc_t, typename Body>
bool for_each_whole_row(const Geometry& geo, int buffers, Body body) {
  if (geo.layout != Layout::Contiguous || geo.segments() != 1 || geo.L > kWholeRow) return false;
  log_segments(1);
  at::parallel_for(0, geo.units(), geo.grain(geo.units()), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> storage(buffers * geo.L);
    for (int64_t row = begin; row < end; ++row) body(row, storage.data());
    stream_fence(geo.stream);
  });
  return true;
}

// The channels_last image's versions: positions [begin, end), all C channels; fwd_fields and
// coefs field by field across channels (forward_fields; g_scale, slope, mean, shift).
template <typename scalar_t, typename acc_t = acc_type<scalar_t>>
void prologue_sums_positions(const UnitPrologue<scalar_t>& pro, const Epilogue<acc_t>& e,
                             const acc_t* fwd_fields, const scalar_t* g_image,
                             const scalar_t* x_image, int64_t C, int64_t begin, int64_t end,
                             const acc_t* mean, PrologueBackwardSums<acc_t>* sums) {
  using Vec = Vectorized<acc_t>;
  const int64_t noise_stride = pro.noise_per_channel ? C : 1;
  std::vector<acc_t> pre(C), p(C), nbuf(C), gbuf(C);
  std::vector<acc_t> acc(8 * C, acc_t(0));  // the 8 sums, each across channels
  for (int64_t pos = begin; pos < end; ++pos) {
    const acc_t* nc = form_position(pro, x_image + pos * C,
                                    pro.noise ? pro.noise + pos * noise_stride : nullptr, C,
                                    pre.data(), p.data(), nbuf.data());
    const acc_t* gr = load_acc(g_image + pos * C, C, gbuf.data());
    for_vectors<acc_t>(C, [&](int64_t c, auto io) {
      const Vec pv = io.load(p.data() + c);
      Vec gy = io.load(gr + c);
      if (e.kind != Activation::None) {
        const Vec y = at::vec::fmadd(io.load(fwd_fields + c),
                                     pv - io.load(fwd_fields + C + c),
                                     io.load(fwd_fields + 2 * C + c));
        gy = activation_grad_vec(e, y, gy);
      }
      const Vec dev = pv - io.load(mean + c);
      const Vec mv = pre_activation_grad(pro.act, io.load(pre.data() + c), Vec(1));
      const Vec terms[8] = {gy, gy * dev, mv * gy, mv * dev, mv,
                            nc ? mv * io.load(nc + c) * gy : Vec(0),
                            nc ? mv * io.load(nc + c) * dev : Vec(0),
                            nc ? mv * io.load(nc + c) : Vec(0)};
      for (int t = 0; t < 8; ++t) {
        acc_t* a = acc.data() + t * C + c;
        io.store((io.load(a) + terms[t]), a);
      }
    });
  }
  for (int64_t c = 0; c < C; ++c) {
    PrologueBackwardSums<acc_t> s;
    s.affine = {acc[c], acc[C + c]};
    s.prologue = {acc[2 * C + c], acc[3 * C + c], acc[4 * C + c],
                  acc[5 * C + c], acc[6 * C + c], acc[7 * C + c]};
    sums[c] = merge(sums[c], s);
  }
}

template <typename scalar_t, typename acc_t = acc_type<scalar_t>>
void prologue_map_positions(const UnitPrologue<scalar_t>& pro, const Epilogue<acc_t>& e,
                            const acc_t* fwd_fields, const acc_t* coefs, scalar_t* out_image,
                            const scalar_t* g_image, const scalar_t* x_image, int64_t C,
                            int64_t begin, int64_t end) {
  using Vec = Vectorized<acc_t>;
  const int64_t noise_stride = pro.noise_per_channel ? C : 1;
  const acc_t *g_scale = coefs, *slope = coefs + C, *mean = coefs + 2 * C, *shift = coefs + 3 * C;
  std::vector<acc_t> pre(C), p(C), nbuf(C), gbuf(C), obuf(C);
  for (int64_t pos = begin; pos < end; ++pos) {
    form_position(pro, x_image + pos * C, pro.noise ? pro.noise + pos * noise_stride : nullptr, C,
                  pre.data(), p.data(), nbuf.data());
    const acc_t* gr = load_acc(g_image + pos * C, C, gbuf.data());
    acc_t* orow = out_acc(out_image + pos * C, obuf.data());
    for_vectors<acc_t>(C, [&](int64_t c, auto io) {
      const Vec pv = io.load(p.data() + c);
      Vec gy = io.load(gr + c);
      if (e.kind != Activation::None) {
        const Vec y = at::vec::fmadd(io.load(fwd_fields + c),
                                     pv - io.load(fwd_fields + C + c),
                                     io.load(fwd_fields + 2 * C + c));
        gy = activation_grad_vec(e, y, gy);
      }
      const Vec gp = at::vec::fmadd(
          io.load(g_scale + c), gy,
          at::vec::fmadd(io.load(slope + c), pv - io.load(mean + c),
                         io.load(shift + c)));
      io.store(pre_activation_grad(pro.act, io.load(pre.data() + c), gp), orow + c);
    });
    store_acc(orow, out_image + pos * C, C);
  }
}

// The prologue's tensors as the kernels read them: noise as rows in x's layout ((N, Cn, L, 1)),
// weight and bias (C) in the accumulation dtype.
struct PrologueInputs {
  at::Tensor noise, weight, bias;
  int64_t noise_channels = 0;

  PrologueInputs(const at::Tensor& x, Layout layout, const std::optional<at::Tensor>& noise_in,
                 const std::optional<at::Tensor>& noise_weight,
                 const std::optional<at::Tensor>& bias_in, at::ScalarType acc) {
    const int64_t C = x.size(1);
    if (noise_in.has_value()) {
      noise = as_rows(*noise_in, layout);
      noise_channels = noise.size(1);
    }
    weight = channel_param(noise_weight, C, acc, x.options(), 1.0);
    bias = channel_param(bias_in, C, acc, x.options(), 0.0);
  }

  // Unit u's prologue (geo's unit: a contiguous row n * C + c, or a channels_last image n).
  template <typename scalar_t>
  UnitPrologue<scalar_t> unit(const Geometry& geo, int64_t u,
                              const Epilogue<acc_type<scalar_t>>& act) const {
    using acc_t = acc_type<scalar_t>;
    UnitPrologue<scalar_t> pro;
    pro.act = act;
    const acc_t* w = weight.const_data_ptr<acc_t>();
    const acc_t* b = bias.const_data_ptr<acc_t>();
    const scalar_t* np = noise.defined() ? noise.const_data_ptr<scalar_t>() : nullptr;
    if (geo.layout == Layout::Contiguous) {
      const int64_t n = u / geo.C, c = u % geo.C;
      pro.weight = w + c;
      pro.bias = b + c;
      if (np) pro.noise = np + (n * noise_channels + (noise_channels == 1 ? 0 : c)) * geo.L;
    } else {
      pro.weight = w;
      pro.bias = b;
      pro.noise_per_channel = noise_channels > 1;
      if (np) pro.noise = np + u * geo.L * noise_channels;
    }
    return pro;
  }
};

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> prologue_affine_forward(
    const at::Tensor& x_in, const std::optional<at::Tensor>& noise,
    const std::optional<at::Tensor>& noise_weight, const std::optional<at::Tensor>& bias,
    c10::string_view pre_activation, double pre_negative_slope, const at::Tensor& mean,
    const at::Tensor& std, double eps, bool unbiased, c10::string_view activation,
    double negative_slope) {
  check_affine(x_in, mean, std, unbiased);
  check_prologue(x_in, noise, noise_weight, bias, pre_activation, pre_negative_slope);
  check_eps(eps);
  check_activation(activation, negative_slope);
  auto [x, layout] = canonical_layout(x_in);
  const auto acc = acc_dtype(x.scalar_type());
  at::Tensor out = empty_output(x, layout);
  at::Tensor mean_p = at::empty({x.size(0), x.size(1)}, x.options().dtype(acc));
  at::Tensor std_p = at::empty_like(mean_p);
  if (out.numel() == 0) return {shaped_like(out, x_in), mean_p, std_p};
  const Geometry geo = geometry_of(x, layout);
  const PrologueInputs inputs(x, layout, noise, noise_weight, bias, acc);
  const at::Tensor mean_t_acc = flat_stat(mean, acc), std_t_acc = flat_stat(std, acc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "adain_prologue_affine_forward_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const acc_t eps_ = static_cast<acc_t>(eps);
    const Epilogue<acc_t> epilogue = epilogue_of<acc_t>(activation, negative_slope);
    const Epilogue<acc_t> pre_act = epilogue_of<acc_t>(pre_activation, pre_negative_slope);
    const acc_t* mean_t = mean_t_acc.const_data_ptr<acc_t>();
    const acc_t* std_t = std_t_acc.const_data_ptr<acc_t>();
    acc_t* mean_out = mean_p.mutable_data_ptr<acc_t>();
    acc_t* std_out = std_p.mutable_data_ptr<acc_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const int64_t L = geo.L, C = geo.C;
    const bool contiguous = geo.layout == Layout::Contiguous;
    // p of unit u's chunk at offset i (a contiguous row) or of position pos (a channels_last image).
    const auto row_loader = [&](const UnitPrologue<scalar_t>& pro, int64_t u) {
      return [&, pro, u](int64_t i, int64_t len, acc_t* buf) -> const acc_t* {
        acc_t nbuf[kChunk];
        form_row(pro, xp + u * L + i, pro.noise ? pro.noise + i : nullptr, len,
                 static_cast<acc_t*>(nullptr), buf, nbuf);
        return buf;
      };
    };
    const auto position_loader = [&](const UnitPrologue<scalar_t>& pro, int64_t u) {
      const int64_t noise_stride = pro.noise_per_channel ? C : 1;
      return [&, pro, u, noise_stride, nbuf = std::vector<acc_t>(C)](
                 int64_t pos, acc_t* buf) mutable -> const acc_t* {
        form_position(pro, xp + (u * L + pos) * C,
                      pro.noise ? pro.noise + pos * noise_stride : nullptr, C,
                      static_cast<acc_t*>(nullptr), buf, nbuf.data());
        return buf;
      };
    };
    const auto finish = [&](int64_t row, const WelfordState<acc_t>& s) {
      mean_out[row] = s.mean;
      std_out[row] = std_of(s, eps_, unbiased);
      return affine_forward_coef(s.mean, std_out[row], mean_t[row], std_t[row], acc_t(1));
    };
    const bool whole_rows = for_each_whole_row<acc_t>(geo, 2, [&](int64_t row, acc_t* buffers) {
      const auto pro = inputs.unit<scalar_t>(geo, row, pre_act);
      acc_t *p = buffers, *noise_buf = buffers + L;
      form_row(pro, xp + row * L, pro.noise, L, static_cast<acc_t*>(nullptr), p, noise_buf);
      const auto in_p = [p](int64_t i, int64_t, acc_t*) -> const acc_t* { return p + i; };
      map_forward_chunks(op + row * L, L, finish(row, welford_chunks<acc_t>(L, in_p)), epilogue,
                         in_p, geo.stream);
    });
    if (whole_rows) return;
    reduce_then_map<WelfordState<acc_t>, RowCoef<acc_t>>(
        geo,
        [&](int64_t u, int64_t b, int64_t e, WelfordState<acc_t>* states) {
          const auto pro = inputs.unit<scalar_t>(geo, u, pre_act);
          if (contiguous) {
            const auto load = row_loader(pro, u);
            states[0] = welford_merge(
                states[0], welford_chunks<acc_t>(e - b, [&](int64_t i, int64_t len, acc_t* buf) {
                  return load(b + i, len, buf);
                }));
          } else {
            welford_positions<acc_t>(position_loader(pro, u), C, b, e, states);
          }
        },
        [](const WelfordState<acc_t>& a, const WelfordState<acc_t>& b) { return welford_merge(a, b); },
        finish,
        [&](int64_t u, int64_t b, int64_t e, const RowCoef<acc_t>* unit_coefs) {
          const auto pro = inputs.unit<scalar_t>(geo, u, pre_act);
          if (contiguous) {
            const auto load = row_loader(pro, u);
            map_forward_chunks(op + u * L + b, e - b, unit_coefs[0], epilogue,
                               [&](int64_t i, int64_t len, acc_t* buf) {
                                 return load(b + i, len, buf);
                               },
                               geo.stream);
          } else {
            std::vector<acc_t> by_field(4 * C);
            for (int64_t c = 0; c < C; ++c) {
              by_field[C + c] = unit_coefs[c].slope;
              by_field[2 * C + c] = unit_coefs[c].mean;
              by_field[3 * C + c] = unit_coefs[c].shift;
            }
            map_positions(op + u * L * C, position_loader(pro, u), static_cast<const scalar_t*>(nullptr),
                          C, b, e, by_field.data(), epilogue);
          }
        });
  });
  return {shaped_like(out, x_in), mean_p, std_p};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> prologue_affine_backward(
    const at::Tensor& grad_out, const at::Tensor& x_in, const std::optional<at::Tensor>& noise,
    const std::optional<at::Tensor>& noise_weight, const std::optional<at::Tensor>& bias,
    c10::string_view pre_activation, double pre_negative_slope, const at::Tensor& mean_p,
    const at::Tensor& std_p, const at::Tensor& mean, const at::Tensor& std, bool unbiased,
    c10::string_view activation, double negative_slope) {
  check_prologue(x_in, noise, noise_weight, bias, pre_activation, pre_negative_slope);
  check_activation(activation, negative_slope);
  auto [x, layout] = canonical_layout(x_in);
  const at::Tensor g = as_rows(grad_out.to(x.scalar_type()), layout);
  const auto acc = acc_dtype(x.scalar_type());
  at::Tensor grad_x = empty_output(x, layout);
  const auto stat_options = x.options().dtype(acc);
  at::Tensor grad_mean = at::empty({x.size(0), x.size(1)}, stat_options);
  at::Tensor grad_std = at::empty_like(grad_mean);
  at::Tensor grad_bias = at::empty_like(grad_mean);
  at::Tensor grad_weight = at::empty_like(grad_mean);
  if (grad_x.numel() == 0) {
    return {shaped_like(grad_x, x_in), grad_mean, grad_std, grad_bias, grad_weight};
  }
  const Geometry geo = geometry_of(x, layout);
  const PrologueInputs inputs(x, layout, noise, noise_weight, bias, acc);
  const at::Tensor m = flat_stat(mean_p, acc), sd = flat_stat(std_p, acc);
  const at::Tensor mean_t_acc = flat_stat(mean, acc), std_t_acc = flat_stat(std, acc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "adain_prologue_affine_backward_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const Epilogue<acc_t> epilogue = epilogue_of<acc_t>(activation, negative_slope);
    const Epilogue<acc_t> pre_act = epilogue_of<acc_t>(pre_activation, pre_negative_slope);
    const acc_t* mp = m.const_data_ptr<acc_t>();
    const acc_t* sdp = sd.const_data_ptr<acc_t>();
    const acc_t* mean_t = mean_t_acc.const_data_ptr<acc_t>();
    const acc_t* std_t = std_t_acc.const_data_ptr<acc_t>();
    acc_t* gmean = grad_mean.mutable_data_ptr<acc_t>();
    acc_t* gstd = grad_std.mutable_data_ptr<acc_t>();
    acc_t* gbias = grad_bias.mutable_data_ptr<acc_t>();
    acc_t* gweight = grad_weight.mutable_data_ptr<acc_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* out = grad_x.mutable_data_ptr<scalar_t>();
    const int64_t L = geo.L, C = geo.C;
    const bool contiguous = geo.layout == Layout::Contiguous;
    // The forward's coefficients of a row: the same call the forward made, so y is its y.
    const auto forward_coef = [&](int64_t row) {
      return affine_forward_coef(mp[row], sdp[row], mean_t[row], std_t[row], acc_t(1));
    };
    const auto image_fields = [&](int64_t u) {
      std::vector<RowCoef<acc_t>> fwd(C);
      for (int64_t c = 0; c < C; ++c) fwd[c] = forward_coef(u * C + c);
      return forward_fields(fwd.data(), C);
    };
    const auto finish = [&](int64_t row, const PrologueBackwardSums<acc_t>& s) {
      const AffineGrads<acc_t> grads =
          affine_backward_coef(s.affine, mp[row], sdp[row], std_t[row], acc_t(1), L, unbiased);
      const PrologueGrads<acc_t> pg = prologue_grads(s.prologue, grads.grad_x);
      gmean[row] = grads.grad_mean_t;
      gstd[row] = grads.grad_std_t;
      gbias[row] = pg.grad_bias;
      gweight[row] = pg.grad_weight;
      return grads.grad_x;
    };
    const bool whole_rows = for_each_whole_row<acc_t>(geo, 5, [&](int64_t row, acc_t* buffers) {
      const auto pro = inputs.unit<scalar_t>(geo, row, pre_act);
      acc_t *pre = buffers, *p = buffers + L, *noise_buf = buffers + 2 * L;
      acc_t *g_buf = buffers + 3 * L, *out_buf = buffers + 4 * L;
      const acc_t* noise = form_row(pro, xp + row * L, pro.noise, L, pre, p, noise_buf);
      const acc_t* g_acc = load_acc(gp + row * L, L, g_buf);
      const RowCoef<acc_t> fwd = forward_coef(row);
      SumVecs<acc_t> sv;
      prologue_sums_of(pre_act, epilogue, fwd, g_acc, pre, p, noise, L, mp[row], sv);
      acc_t* o = out_acc(out + row * L, out_buf, geo.stream);
      prologue_map_of(pre_act, epilogue, fwd, finish(row, sums_of(sv)), o, g_acc, pre, p, L);
      store_acc(o, out + row * L, L, geo.stream);
    });
    if (whole_rows) return;
    reduce_then_map<PrologueBackwardSums<acc_t>, RowCoef<acc_t>>(
        geo,
        [&](int64_t u, int64_t b, int64_t e, PrologueBackwardSums<acc_t>* sums) {
          const auto pro = inputs.unit<scalar_t>(geo, u, pre_act);
          if (contiguous) {
            sums[0] = merge(sums[0], prologue_sums_row(pro, epilogue, forward_coef(u),
                                                       gp + u * L + b, xp + u * L + b,
                                                       pro.noise ? pro.noise + b : nullptr,
                                                       e - b, mp[u]));
          } else {
            prologue_sums_positions(pro, epilogue, image_fields(u).data(), gp + u * L * C,
                                    xp + u * L * C, C, b, e, mp + u * C, sums);
          }
        },
        [](const PrologueBackwardSums<acc_t>& a, const PrologueBackwardSums<acc_t>& b) {
          return merge(a, b);
        },
        finish,
        [&](int64_t u, int64_t b, int64_t e, const RowCoef<acc_t>* unit_coefs) {
          const auto pro = inputs.unit<scalar_t>(geo, u, pre_act);
          if (contiguous) {
            prologue_map_row(pro, epilogue, forward_coef(u), unit_coefs[0], out + u * L + b,
                             gp + u * L + b, xp + u * L + b, pro.noise ? pro.noise + b : nullptr,
                             e - b, geo.stream);
          } else {
            std::vector<acc_t> by_field(4 * C);
            for (int64_t c = 0; c < C; ++c) {
              by_field[c] = unit_coefs[c].g_scale;
              by_field[C + c] = unit_coefs[c].slope;
              by_field[2 * C + c] = unit_coefs[c].mean;
              by_field[3 * C + c] = unit_coefs[c].shift;
            }
            prologue_map_positions(pro, epilogue, image_fields(u).data(), by_field.data(),
                                   out + u * L * C, gp + u * L * C, xp + u * L * C, C, b, e);
          }
        });
  });
  return {shaped_like(grad_x, x_in), grad_mean, grad_std, grad_bias, grad_weight};
}

}  // namespace adain::cpu

TORCH_LIBRARY_IMPL(adain, CPU, m) {
  m.impl("_affine_forward", &adain::cpu::affine_forward);
  m.impl("_affine_backward", &adain::cpu::affine_backward);
  m.impl("_prologue_affine_forward", &adain::cpu::prologue_affine_forward);
  m.impl("_prologue_affine_backward", &adain::cpu::prologue_affine_backward);
}
