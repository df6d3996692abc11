// Fused CPU kernels of the uGMM op (see ugmm/ops/cpu.py for the Python side and the math).
//
//   q[b,j,k] = c[j,k] - z^2 / 2,   z = (x[b,k] - mu[j,k]) * inv_sigma[j,k],
//   c[j,k]   = log pi[j,k] - log sigma[j,k] - log sqrt(2 pi)            (precomputed, n_out x n_in)
//   y[b,j]   = logsumexp_k q[b,j,k]
//
// Forward: one task per (j, tile of rows b); per row two vectorised passes over k (q and its max into a
// small buffer, then sum of exp(q - max)): exact, and never a (B, n_out, n_in) tensor.
// Backward recomputes the responsibilities r = exp(q - y) and, with G = g[b,j] * r and z as above,
//   dx[b,k] = -sum_j G z inv_sigma,  dmu[j,k] = sum_b G z inv_sigma,
//   dsigma[j,k] = sum_b G (z^2 - 1) inv_sigma,  dlog_pi[j,k] = sum_b G.
// Races are avoided by partitioning either the neurons j (parameter gradients owned by one thread, dx
// accumulated in per-thread buffers) or the rows b (dx owned, parameter gradients in per-thread buffers),
// whichever needs the smaller buffer; buffers are summed in a fixed order, so results are deterministic.
//
// Background inputs (MNIST: ~80% of pixels are exactly 0; standardised images: exactly -mean/std), used when
// at least half of x equals one value v (0, else the minimum of x): with a per-neuron shift m[j] = max_k c[j,k]
// (q <= c, so exp(q - m) <= 1 never overflows) every input equal to v contributes the per-(j,k) constant
// E[j,k] = exp(q(v; j,k) - m[j]); their sum over k is a matmul Z @ E^T with Z = [x == v]. Only the other
// inputs need per-term exponentials (vectorised over neurons j, parameters transposed to (n_in, n_out)). In
// the backward, with h = g exp(m - y), the background inputs' terms are matmuls as well (h^T Z for the
// parameters, h E' for dx), and the other inputs are swept column by column, parallel over inputs k, so every
// thread owns its dx[:, k] and its parameter-gradient columns: no races, no buffers.
// Rows whose shifted sum underflows (true max far below m[j]) are recomputed exactly by the dense path.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

// exp for float, branch-free so that loops calling it vectorise: Cephes' expf polynomial (about 1 ulp)
// after the range reduction x = n ln2 + r, |r| <= ln2 / 2. Exactly 0 below -87.3 (and for -inf), NaN for NaN.
inline __attribute__((always_inline)) float vexp(float x) {
  const float lo = -87.33654f, hi = 88.0f;  // e^lo: the least normal float
  const bool under = x < lo;  // -inf (a dropped component) gives 0; NaN stays NaN (it flows through p)
  float xc = x < lo ? lo : (x > hi ? hi : x);
  // round-to-nearest of x / ln2 via the 1.5 * 2^23 trick (exact for |v| < 2^22)
  const float magic = 12582912.0f;
  float n = (xc * 1.44269504088896341f + magic) - magic;
  float r = xc - n * 0.693359375f;  // ln2 split in two: hi part exact in float
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // scale by 2^n, n in [-126, 127] thanks to the clamps: a normal float built from its exponent bits
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(float));
  float out = p * scale;
  return under ? 0.0f : out;
}

inline double vexp(double x) { return std::exp(x); }

template <typename T>
constexpr T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

// y[b, j] for rows b in [b0, b1) of neuron j, exactly (two passes with the true max). q is scratch of n_in.
template <typename T>
inline void forward_rows(const T* __restrict x, const T* __restrict mu, const T* __restrict is,
                         const T* __restrict c, T* __restrict y, T* __restrict q, int64_t b0, int64_t b1,
                         int64_t j, int64_t n_out, int64_t n_in) {
  for (int64_t b = b0; b < b1; ++b) {
    const T* xb = x + b * n_in;
    T mx = neg_inf<T>();
#pragma omp simd reduction(max : mx)
    for (int64_t k = 0; k < n_in; ++k) {
      T z = (xb[k] - mu[k]) * is[k];
      T v = c[k] - T(0.5) * z * z;
      q[k] = v;
      mx = v > mx ? v : mx;
    }
    if (!(mx > neg_inf<T>())) {  // every component dropped: log 0, no NaN
      y[b * n_out + j] = neg_inf<T>();
      continue;
    }
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t k = 0; k < n_in; ++k) s += vexp(q[k] - mx);
    y[b * n_out + j] = mx + std::log(s);
  }
}

constexpr int64_t kRowTile = 8;  // rows per task: the neuron's parameters stay in L1 across them

// Fewest terms a thread's share should hold: below it, waking a second thread costs more than it saves
// (tiny layers such as Iris' would otherwise pay a parallel region per call), and on a loaded machine a
// parallel region waits for its slowest thread. at::parallel_for runs serially when one grain covers it.
constexpr int64_t kMinTermsPerTask = 32768;
inline int64_t grain(int64_t terms_per_item) { return std::max<int64_t>(1, kMinTermsPerTask / std::max<int64_t>(1, terms_per_item)); }

// Tasks 0..n_tasks-1 handed out one at a time from a shared counter (f(task) must not care which thread runs
// it): on a machine shared with other work a thread that loses its core delays only its current task,
// where a static split would make every thread wait for the slowest half. Threads: at most one per
// ``min_tasks_per_thread`` tasks (small problems run serially, no parallel region).
template <typename F>
void dynamic_for(int64_t n_tasks, int64_t min_tasks_per_thread, const F& f) {
  const int64_t n_threads =
      std::min<int64_t>(at::get_num_threads(), n_tasks / std::max<int64_t>(1, min_tasks_per_thread));
  if (n_threads <= 1 || at::in_parallel_region()) {
    for (int64_t t = 0; t < n_tasks; ++t) f(t);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, n_threads, 1, [&](int64_t, int64_t) {
    for (int64_t t = next.fetch_add(1, std::memory_order_relaxed); t < n_tasks;
         t = next.fetch_add(1, std::memory_order_relaxed)) {
      f(t);
    }
  });
}

// The microbenchmarks of the limit (scripts/limit.py): body(i0, i1) runs iterations [i0, i1) on registers and
// returns a checksum (so the compiler keeps the work); n iterations parallel over threads, checksums summed.
template <typename F>
double sum_over_threads(int64_t n, const F& body) {
  std::vector<double> sums(std::max(1, at::get_num_threads()), 0.0);
  at::parallel_for(0, n, 1024, [&](int64_t i0, int64_t i1) { sums[at::get_thread_num()] += body(i0, i1); });
  double s = 0;
  for (double v : sums) s += v;
  return s;
}

template <typename T>
void forward_dense(const T* x, const T* mu, const T* is, const T* c, T* y, int64_t B, int64_t n_out,
                   int64_t n_in) {
  const int64_t n_bt = (B + kRowTile - 1) / kRowTile;
  at::parallel_for(0, n_out * n_bt, grain(kRowTile * n_in), [&](int64_t begin, int64_t end) {
    std::vector<T> q(n_in);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t j = t / n_bt, bt = t % n_bt;
      const int64_t b0 = bt * kRowTile, b1 = std::min(B, b0 + kRowTile);
      forward_rows(x, mu + j * n_in, is + j * n_in, c + j * n_in, y, q.data(), b0, b1, j, n_out, n_in);
    }
  });
}

// Gradient contributions of rows [b0, b1) x neurons [j0, j1). dx rows are indexed by b (stride n_in),
// parameter-gradient rows by j. NEED_X / NEED_P select which are accumulated.
template <typename T, bool NEED_X, bool NEED_P>
void backward_block(const T* __restrict g, const T* __restrict x, const T* __restrict mu,
                    const T* __restrict is, const T* __restrict c, const T* __restrict y, T* __restrict dx,
                    T* __restrict dmu, T* __restrict dsig, T* __restrict dlw, int64_t b0, int64_t b1,
                    int64_t j0, int64_t j1, int64_t n_out, int64_t n_in) {
  for (int64_t j = j0; j < j1; ++j) {
    const T* muj = mu + j * n_in;
    const T* isj = is + j * n_in;
    const T* cj = c + j * n_in;
    T* dmuj = dmu + j * n_in;
    T* dsigj = dsig + j * n_in;
    T* dlwj = dlw + j * n_in;
    for (int64_t b = b0; b < b1; ++b) {
      const T gg = g[b * n_out + j], yy = y[b * n_out + j];
      // a neuron with every component dropped has y = -inf and no gradient
      if (gg == T(0) || !(yy > neg_inf<T>())) continue;
      const T* xb = x + b * n_in;
      T* dxb = dx + b * n_in;
#pragma omp simd
      for (int64_t k = 0; k < n_in; ++k) {
        T z = (xb[k] - muj[k]) * isj[k];
        T G = gg * vexp(cj[k] - T(0.5) * z * z - yy);
        T Gs = G * isj[k];  // G / sigma
        T Gzs = Gs * z;
        if (NEED_X) dxb[k] -= Gzs;
        if (NEED_P) {
          dmuj[k] += Gzs;
          dsigj[k] += Gzs * z - Gs;  // G (z^2 - 1) / sigma
          dlwj[k] += G;
        }
      }
    }
  }
}

template <typename T, bool NEED_X, bool NEED_P>
void backward_dense(const T* g, const T* x, const T* mu, const T* is, const T* c, const T* y, T* dx, T* dmu,
                    T* dsig, T* dlw, int64_t B, int64_t n_out, int64_t n_in) {
  const int64_t n_threads = std::max<int64_t>(1, at::get_num_threads());
  // partition the neurons when parameter gradients are needed and a dx buffer per thread is no larger than
  // the parameter-gradient buffers would be (or there are too few rows to share)
  bool by_neuron;
  if (!NEED_X) {
    by_neuron = true;
  } else if (!NEED_P) {
    by_neuron = false;
  } else {
    by_neuron = (B * n_in <= 3 * n_out * n_in && n_out >= n_threads) || B < n_threads;
  }
  if (n_threads == 1) {
    backward_block<T, NEED_X, NEED_P>(g, x, mu, is, c, y, dx, dmu, dsig, dlw, 0, B, 0, n_out, n_out, n_in);
    return;
  }
  if (by_neuron) {
    std::vector<T> buf(NEED_X ? n_threads * B * n_in : 0, T(0));
    at::parallel_for(0, n_out, grain(B * n_in), [&](int64_t j0, int64_t j1) {
      T* dxt = NEED_X ? buf.data() + at::get_thread_num() * B * n_in : dx;
      backward_block<T, NEED_X, NEED_P>(g, x, mu, is, c, y, dxt, dmu, dsig, dlw, 0, B, j0, j1, n_out, n_in);
    });
    if (NEED_X) {
      at::parallel_for(0, B * n_in, 4096, [&](int64_t i0, int64_t i1) {
        for (int64_t t = 0; t < n_threads; ++t) {
          const T* src = buf.data() + t * B * n_in;
          for (int64_t i = i0; i < i1; ++i) dx[i] += src[i];
        }
      });
    }
  } else {
    const int64_t P = n_out * n_in;
    std::vector<T> buf(NEED_P ? n_threads * 3 * P : 0, T(0));
    at::parallel_for(0, B, grain(n_out * n_in), [&](int64_t b0, int64_t b1) {
      T* base = NEED_P ? buf.data() + at::get_thread_num() * 3 * P : nullptr;
      T* dmut = NEED_P ? base : dmu;
      T* dsigt = NEED_P ? base + P : dsig;
      T* dlwt = NEED_P ? base + 2 * P : dlw;
      backward_block<T, NEED_X, NEED_P>(g, x, mu, is, c, y, dx, dmut, dsigt, dlwt, b0, b1, 0, n_out, n_out,
                                        n_in);
    });
    if (NEED_P) {
      at::parallel_for(0, P, 4096, [&](int64_t i0, int64_t i1) {
        for (int64_t t = 0; t < n_threads; ++t) {
          const T* src = buf.data() + t * 3 * P;
          for (int64_t i = i0; i < i1; ++i) {
            dmu[i] += src[i];
            dsig[i] += src[P + i];
            dlw[i] += src[2 * P + i];
          }
        }
      });
    }
  }
}

// Shifted sums below exp(kLogMin) are recomputed exactly: their terms would have lost precision to underflow.
template <typename T>
constexpr T kLogMin = T(-46);  // float: e^-46 ~ 1e-20, terms 1e-18 below the largest still normal
template <>
constexpr double kLogMin<double> = -460.0;  // ~1e-200

// ---- the frame of the vectorised dense forwards (AVX-512 and AVX2 below) ---------------------------------

constexpr float kLog2e = 1.4426950408889634f;
// The degree-5 2^t of the AVX2 kernels (exp2_avx2) and of the parameter passes (exp_poly): n = round(t) by adding
// kExp2Shift = 1.5 * 2^23 + 127 (the low bits of t + kExp2Shift are then n + 127), 2^f for f in [-1/2, 1/2] from
// kExp2Poly, highest degree first, fitted for relative error (2e-7 in float arithmetic; p(0) = 1 exactly).
constexpr float kExp2Shift = 12583039.0f;
constexpr float kExp2Poly[6] = {1.3308824791013127e-3f, 9.671516403894739e-3f, 5.55058245539046e-2f,
                                2.4022242028837643e-1f, 6.931470917132964e-1f, 1.0f};
// The degree-4 2^f of the AVX2 dense loops (relative error 3e-6 in float arithmetic, fitted as above; p(0) = 1):
// one FMA fewer per term, and 3e-6 is far inside the outputs' 1e-5 and the gradients' 1e-4.
constexpr float kExp2Poly4[5] = {9.582852944731712e-3f, 5.5906426161527634e-2f, 2.4024099111557007e-1f,
                                 6.931241750717163e-1f, 1.0f};
// The base-2 backward's per-(row, neuron) offset, with g folded into the exponent (see bwd_fast_step_avx2):
// g exp(q - y) = sign(g) 2^(C - zz^2 - o) for o = (y - m[j]) log2(e) - log2|g|; +inf for g = 0 (no terms).
inline float base2_offset(float g, float y_minus_m) { return y_minus_m * kLog2e - std::log2(std::fabs(g)); }
constexpr int64_t kFwdRows = 4;  // rows per tile: the neuron's parameters are loaded once per vector for all

// The per-neuron bound m[j] = max_k c[j,k] (0 for a neuron with every component dropped) and the base-2
// tables of the one-pass forward: a = inv_sigma sqrt(log2(e) / 2), C = (c - m[j]) log2(e). n_rows >= n_out rows:
// the ones past n_out are padding neurons (a = 0, C = -inf: no terms). (zz = x a - mu a in one fused
// multiply-subtract would save an instruction per term, but rounding mu a costs 1e-4 of a term for sigma ~1e-3.)
struct Base2Tables {
  std::vector<float> m, a, C;
};

inline Base2Tables base2_tables(const float* is, const float* c, int64_t n_out, int64_t n_in, int64_t n_rows = -1) {
  n_rows = std::max(n_rows, n_out);
  Base2Tables t{std::vector<float>(n_out), std::vector<float>(n_rows * n_in, 0.0f),
                std::vector<float>(n_rows * n_in, neg_inf<float>())};
  const float half_l = std::sqrt(0.5f * kLog2e);
  at::parallel_for(0, n_out, grain(4 * n_in), [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      const float* cj = c + j * n_in;
      float mx = neg_inf<float>();
      for (int64_t k = 0; k < n_in; ++k) mx = cj[k] > mx ? cj[k] : mx;
      const float mj = mx > neg_inf<float>() ? mx : 0.0f;
      t.m[j] = mj;
      for (int64_t k = 0; k < n_in; ++k) {
        t.a[j * n_in + k] = is[j * n_in + k] * half_l;
        t.C[j * n_in + k] = (cj[k] - mj) * kLog2e;
      }
    }
  });
  return t;
}

// Tiles of one neuron x kFwdRows rows, handed out dynamically: tile(j, b0, rows, s), rows a
// std::integral_constant (the tile's row count as a template argument), writes the shifted sums
// s[r] = sum_k 2^(C[j,k] - zz^2) of rows b0 + r, and y = m[j] + log s; a row whose sum underflows (or is
// empty: every component dropped) is left to exact(b, j), which writes y[b, j] with the true max.
template <typename Tile, typename Exact>
void forward_dense_base2(const Base2Tables& t, float* y, int64_t B, int64_t n_out, int64_t n_in, const Tile& tile,
                         const Exact& exact) {
  const int64_t n_bt = (B + kFwdRows - 1) / kFwdRows, n_tiles = n_out * n_bt;
  const int64_t per_task = grain(kFwdRows * n_in), n_tasks = (n_tiles + per_task - 1) / per_task;
  dynamic_for(n_tasks, 2, [&](int64_t task) {
    float s[kFwdRows];
    for (int64_t i = task * per_task; i < std::min(n_tiles, (task + 1) * per_task); ++i) {
      const int64_t j = i / n_bt, b0 = (i % n_bt) * kFwdRows, nr = std::min(kFwdRows, B - b0);
      static_assert(kFwdRows == 4, "one case per tile height");
      switch (nr) {
        case 4: tile(j, b0, std::integral_constant<int, 4>{}, s); break;
        case 3: tile(j, b0, std::integral_constant<int, 3>{}, s); break;
        case 2: tile(j, b0, std::integral_constant<int, 2>{}, s); break;
        default: tile(j, b0, std::integral_constant<int, 1>{}, s); break;
      }
      for (int64_t r = 0; r < nr; ++r) {
        const float ls = std::log(s[r]);  // -inf for an empty sum, NaN for NaN inputs
        if (ls >= kLogMin<float> || std::isnan(ls)) {
          y[(b0 + r) * n_out + j] = t.m[j] + ls;
        } else {
          exact(b0 + r, j);
        }
      }
    }
  });
}

// The frame of the vectorised dense backwards: tiles of kBwdRows live rows x NN neurons, rows in a fixed
// number of blocks (two per thread, at least kMinTermsPerTask terms each) handed out dynamically; each block
// owns its dx rows and its parameter sums P = (sum G z, sum G z^2, sum G), added up in block order at the end:
// deterministic whichever thread ran which block. tile(rows, mu, is, c, row_ids, gl, yl, P, j0, n_pad, k0, k1),
// rows a std::integral_constant (the tile's row count), adds the terms of rows row_ids[0..rows) x neurons
// j0..j0+NN x inputs k0..k1 to dx and P. An n_out that is not a multiple of NN is padded with neurons of
// c = -inf and g = 0 (no contribution).
// Two kinds of tile. fast(b, j, gl, yl) is asked for every live pair (g != 0, y > -inf) with gl = g, yl = y:
// true if `tile` takes it (fast may rewrite gl and yl into that tile's own per-pair scalars), false if only
// `exact_tile` may: a row with such a pair goes to exact_tile with every neuron of the tile, and gl / yl = g / y
// (0 and 0 for a dead pair). Dead pairs of `tile`'s rows get dead_g / dead_y.
constexpr int64_t kBwdRows = 4;
// inputs per sweep: a neuron pair's parameters and sums over them stay in L1 across the block's row tiles
constexpr int64_t kBwdInputs = 256;
constexpr int kBwdNeurons = 2;  // neurons per tile in both vectorised backwards

template <int NN, bool NEED_P, typename Fast, typename Tile, typename ExactTile>
void backward_dense_tiles(const float* g, const float* mu, const float* is, const float* c, const float* y,
                          float* dmu, float* dsig, float* dlw, int64_t B, int64_t n_out, int64_t n_in,
                          const Fast& fast, float dead_g, float dead_y, const Tile& tile,
                          const ExactTile& exact_tile) {
  const int64_t n_pad = (n_out + NN - 1) / NN * NN, PN = n_pad * n_in;
  std::vector<float> pad;
  const float *mup = mu, *isp = is, *cp = c;
  if (n_pad != n_out) {
    pad.assign(3 * PN, 0.0f);
    std::copy(mu, mu + n_out * n_in, pad.begin());
    std::copy(is, is + n_out * n_in, pad.begin() + PN);
    std::copy(c, c + n_out * n_in, pad.begin() + 2 * PN);
    std::fill(pad.begin() + 2 * PN + n_out * n_in, pad.end(), neg_inf<float>());
    mup = pad.data();
    isp = pad.data() + PN;
    cp = pad.data() + 2 * PN;
  }
  const int64_t n_threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t n_rt = (B + kBwdRows - 1) / kBwdRows;
  const int64_t n_blocks = std::max<int64_t>(
      1, std::min<int64_t>(2 * n_threads, n_rt / std::max<int64_t>(1, grain(kBwdRows * n_out * n_in))));
  std::unique_ptr<float[]> sums(NEED_P ? new float[n_blocks * 3 * PN] : nullptr);  // zeroed by each block's task
  float* const P = sums.get();
  struct Rows {  // the rows of one tile being gathered, with their pairs' scalars
    int64_t ids[kBwdRows];
    float gl[kBwdRows][NN], yl[kBwdRows][NN];
    int64_t n = 0;
  };
  dynamic_for(n_blocks, 1, [&](int64_t blk) {
    const int64_t rt0 = n_rt * blk / n_blocks, rt1 = n_rt * (blk + 1) / n_blocks;
    float* Pt = NEED_P ? P + blk * 3 * PN : nullptr;
    if (NEED_P) std::fill(Pt, Pt + 3 * PN, 0.0f);
    const int64_t b_lo = rt0 * kBwdRows, b_hi = std::min(B, rt1 * kBwdRows);
    Rows fast_rows, exact_rows;
    for (int64_t k0 = 0; k0 < n_in; k0 += kBwdInputs) {
      const int64_t k1 = std::min(n_in, k0 + kBwdInputs);
      for (int64_t j0 = 0; j0 < n_pad; j0 += NN) {
        auto flush = [&](Rows& t, const auto& run) {
          static_assert(kBwdRows == 4, "one case per tile height");
          switch (t.n) {
            case 4: run(std::integral_constant<int, 4>{}, mup, isp, cp, t.ids, t.gl, t.yl, Pt, j0, n_pad, k0, k1); break;
            case 3: run(std::integral_constant<int, 3>{}, mup, isp, cp, t.ids, t.gl, t.yl, Pt, j0, n_pad, k0, k1); break;
            case 2: run(std::integral_constant<int, 2>{}, mup, isp, cp, t.ids, t.gl, t.yl, Pt, j0, n_pad, k0, k1); break;
            case 1: run(std::integral_constant<int, 1>{}, mup, isp, cp, t.ids, t.gl, t.yl, Pt, j0, n_pad, k0, k1); break;
            default: break;
          }
          t.n = 0;
        };
        for (int64_t b = b_lo; b < b_hi; ++b) {
          float ge[NN], ye[NN], gf[NN], yf[NN];
          bool any = false, all_fast = true;
          for (int64_t i = 0; i < NN; ++i) {
            const int64_t j = j0 + i;
            const float gg = j < n_out ? g[b * n_out + j] : 0.0f, yy = j < n_out ? y[b * n_out + j] : 0.0f;
            const bool live = gg != 0.0f && yy > neg_inf<float>();  // y = -inf: every component dropped
            ge[i] = live ? gg : 0.0f;
            ye[i] = live ? yy : 0.0f;
            gf[i] = live ? gg : dead_g;
            yf[i] = live ? yy : dead_y;
            if (live) all_fast = fast(b, j, gf[i], yf[i]) && all_fast;
            any = any || live;
          }
          if (!any) continue;  // nothing to add for these neurons
          Rows& t = all_fast ? fast_rows : exact_rows;
          const float *gs = all_fast ? gf : ge, *ys = all_fast ? yf : ye;
          std::copy(gs, gs + NN, t.gl[t.n]);
          std::copy(ys, ys + NN, t.yl[t.n]);
          t.ids[t.n++] = b;
          if (t.n == kBwdRows) {
            if (all_fast) {
              flush(t, tile);
            } else {
              flush(t, exact_tile);
            }
          }
        }
        flush(fast_rows, tile);
        flush(exact_rows, exact_tile);
      }
    }
  });
  if (NEED_P) {
    at::parallel_for(0, n_out * n_in, 4096, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        float s1 = 0, s2 = 0, s0 = 0;
        for (int64_t t = 0; t < n_blocks; ++t) {
          const float* Pt = P + t * 3 * PN;
          s1 += Pt[i];
          s2 += Pt[PN + i];
          s0 += Pt[2 * PN + i];
        }
        dmu[i] = is[i] * s1;
        dsig[i] = is[i] * (s2 - s0);
        dlw[i] = s0;
      }
    });
  }
}

// ---- AVX-512 float kernels of the dense path -------------------------------------------------------------
//
// Work in base 2: with L = log2(e), a = inv_sigma sqrt(L / 2) and zz = (x - mu) a, the exponent of a term is
//   q L = c L - zz^2,
// one subtraction, one multiplication and one fused multiply-add before the exponential. The exponential is
// 2^t = 2^n 2^f, n = round(t), f in [-1/2, 1/2], 2^f a degree-6 polynomial (relative error ~1e-7, 1-2 ulp),
// 2^n applied with vscalefps: ten vector instructions for sixteen terms.
//
// Forward: one pass, shifted by the per-neuron bound m[j] = max_k c[j,k] >= every q[b,j,k] (because
// -z^2/2 <= 0), so no term overflows and no max pass is needed; rows whose shifted sum falls below
// exp(kLogMin) (the true max far below m[j]) are recomputed exactly by forward_rows. Each task is one neuron
// and a tile of kFwdRows rows: the neuron's parameters are loaded once per 16 inputs for the whole tile.
//
// Backward: every term recomputed once, feeding all four gradients:
//   G = g exp(q - y),  dx -= G zz K a,  sum_b G zz,  sum_b G zz^2,  sum_b G     (K = sqrt(2 / L): z = zz K)
// and at the end dmu = K inv_sigma sum G zz, dsigma = inv_sigma (K^2 sum G zz^2 - sum G), dlog_pi = sum G.
// Threads own disjoint row ranges (dx written in place) and accumulate the parameter sums in private
// buffers, summed in thread order at the end (deterministic for a given thread count; no barrier per row).
// Inside a thread: a tile of 2 neurons x 4 rows per 16 inputs: the parameter sums stay in registers over
// the 4 rows, dx over the 2 neurons.

#ifdef __AVX512F__
}  // namespace
#include <immintrin.h>
namespace {

// 2^t, exactly 0 below -126 (and for -inf), NaN for NaN.
inline __attribute__((always_inline)) __m512 exp2_avx512(__m512 t) {
  const __m512 lo = _mm512_set1_ps(-126.0f);
  const __mmask16 live = _mm512_cmp_ps_mask(t, lo, _CMP_NLT_UQ);  // t >= -126 or NaN
  t = _mm512_max_ps(lo, t);  // the second operand is returned for NaN: NaN stays NaN
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(1.5337577497120947e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3399859890341759e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618519805371761e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550329014658928e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022646248340607e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931471824645996e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_maskz_scalef_ps(live, p, n);
}

inline __mmask16 tail_mask(int64_t rem) { return static_cast<__mmask16>((1u << rem) - 1u); }

// shifted sums of rows [b0, b0 + NR) of neuron j: out[r] = sum_k 2^(C[k] - ((x[b,k] - mu[k]) a[k])^2)
template <int NR>
inline void fwd_tile(const float* __restrict x, const float* __restrict mu, const float* __restrict a,
                     const float* __restrict C, int64_t b0, int64_t n_in, float* out) {
  __m512 acc[NR];
  for (int r = 0; r < NR; ++r) acc[r] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= n_in; k += 16) {
    const __m512 muv = _mm512_loadu_ps(mu + k), av = _mm512_loadu_ps(a + k), cv = _mm512_loadu_ps(C + k);
    for (int r = 0; r < NR; ++r) {
      const __m512 zz = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + (b0 + r) * n_in + k), muv), av);
      acc[r] = _mm512_add_ps(acc[r], exp2_avx512(_mm512_fnmadd_ps(zz, zz, cv)));
    }
  }
  if (k < n_in) {
    const __mmask16 mk = tail_mask(n_in - k);
    const __m512 muv = _mm512_maskz_loadu_ps(mk, mu + k), av = _mm512_maskz_loadu_ps(mk, a + k);
    const __m512 cv = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), mk, C + k);
    for (int r = 0; r < NR; ++r) {
      const __m512 zz = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, x + (b0 + r) * n_in + k), muv), av);
      acc[r] = _mm512_add_ps(acc[r], exp2_avx512(_mm512_fnmadd_ps(zz, zz, cv)));
    }
  }
  for (int r = 0; r < NR; ++r) out[r] = _mm512_reduce_add_ps(acc[r]);
}

// natural-unit q = c - z^2 / 2, z = (x - mu) inv_sigma, the same instructions wherever a q must agree with
// another: the exact forward rows and the backward (there exp(q - y) of a lone term must be exactly 1)
inline __attribute__((always_inline)) __m512 q_avx512(__m512 xv, __m512 muv, __m512 isv, __m512 cv) {
  const __m512 z = _mm512_mul_ps(_mm512_sub_ps(xv, muv), isv);
  return _mm512_fnmadd_ps(_mm512_mul_ps(z, _mm512_set1_ps(0.5f)), z, cv);  // z / 2 is exact: one rounding
}

// y of one row b and neuron j exactly: the true max, then the sum shifted by it
float forward_row_exact_avx512(const float* __restrict xb, const float* __restrict mu, const float* __restrict is,
                               const float* __restrict c, int64_t n_in) {
  __m512 mx = _mm512_set1_ps(-INFINITY);
  for (int64_t k = 0; k < n_in; k += 16) {
    const __mmask16 mk = k + 16 <= n_in ? static_cast<__mmask16>(0xFFFF) : tail_mask(n_in - k);
    const __m512 q = q_avx512(_mm512_maskz_loadu_ps(mk, xb + k), _mm512_maskz_loadu_ps(mk, mu + k),
                              _mm512_maskz_loadu_ps(mk, is + k),
                              _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), mk, c + k));
    mx = _mm512_max_ps(mx, q);
  }
  const float M = _mm512_reduce_max_ps(mx);
  if (!(M > neg_inf<float>())) return std::isnan(M) ? M : neg_inf<float>();  // every component dropped: log 0
  const __m512 Mv = _mm512_set1_ps(M), L = _mm512_set1_ps(kLog2e);
  __m512 acc = _mm512_setzero_ps();
  for (int64_t k = 0; k < n_in; k += 16) {
    const __mmask16 mk = k + 16 <= n_in ? static_cast<__mmask16>(0xFFFF) : tail_mask(n_in - k);
    const __m512 q = q_avx512(_mm512_maskz_loadu_ps(mk, xb + k), _mm512_maskz_loadu_ps(mk, mu + k),
                              _mm512_maskz_loadu_ps(mk, is + k),
                              _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), mk, c + k));
    acc = _mm512_add_ps(acc, exp2_avx512(_mm512_mul_ps(_mm512_sub_ps(q, Mv), L)));
  }
  return M + std::log(_mm512_reduce_add_ps(acc));
}

void forward_dense_avx512(const float* x, const float* mu, const float* is, const float* c, float* y, int64_t B,
                          int64_t n_out, int64_t n_in) {
  const Base2Tables t = base2_tables(is, c, n_out, n_in);
  const auto tile = [&](int64_t j, int64_t b0, auto rows, float* s) {
    fwd_tile<decltype(rows)::value>(x, mu + j * n_in, t.a.data() + j * n_in, t.C.data() + j * n_in, b0, n_in, s);
  };
  const auto exact = [&](int64_t b, int64_t j) {
    y[b * n_out + j] = forward_row_exact_avx512(x + b * n_in, mu + j * n_in, is + j * n_in, c + j * n_in, n_in);
  };
  forward_dense_base2(t, y, B, n_out, n_in, tile, exact);
}

// rows rows[0..NR) x neurons j0, j0 + 1; gl / yl: g and y of each (row, neuron), 0 and 0 for a dead pair.
// P: the three parameter sums of this thread, sum G z, sum G z^2 and sum G.
template <int NR, bool NEED_X, bool NEED_P>
inline void bwd_tile(const float* __restrict x, const float* __restrict mu, const float* __restrict is,
                     const float* __restrict c, const int64_t* rows, const float (*gl)[kBwdNeurons],
                     const float (*yl)[kBwdNeurons], float* __restrict dx, float* __restrict P, int64_t j0,
                     int64_t n_out, int64_t n_in, int64_t k0, int64_t k1) {
  const int64_t PN = n_out * n_in;
  const __m512 L = _mm512_set1_ps(kLog2e);
  for (int64_t k = k0; k < k1; k += 16) {
    const __mmask16 mk = k + 16 <= n_in ? static_cast<__mmask16>(0xFFFF) : tail_mask(n_in - k);
    __m512 muv[kBwdNeurons], isv[kBwdNeurons], cv[kBwdNeurons];
    __m512 s1[kBwdNeurons], s2[kBwdNeurons], s0[kBwdNeurons];
    for (int i = 0; i < kBwdNeurons; ++i) {
      const int64_t o = (j0 + i) * n_in + k;
      muv[i] = _mm512_maskz_loadu_ps(mk, mu + o);
      isv[i] = _mm512_maskz_loadu_ps(mk, is + o);
      cv[i] = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), mk, c + o);
      s0[i] = s1[i] = s2[i] = _mm512_setzero_ps();
    }
    for (int r = 0; r < NR; ++r) {
      const __m512 xv = _mm512_maskz_loadu_ps(mk, x + rows[r] * n_in + k);
      __m512 dxv = _mm512_setzero_ps();
      for (int i = 0; i < kBwdNeurons; ++i) {
        const __m512 z = _mm512_mul_ps(_mm512_sub_ps(xv, muv[i]), isv[i]);
        const __m512 q = _mm512_fnmadd_ps(_mm512_mul_ps(z, _mm512_set1_ps(0.5f)), z, cv[i]);  // as q_avx512
        const __m512 t = _mm512_mul_ps(_mm512_sub_ps(q, _mm512_set1_ps(yl[r][i])), L);
        const __m512 G = _mm512_mul_ps(exp2_avx512(t), _mm512_set1_ps(gl[r][i]));
        const __m512 Gz = _mm512_mul_ps(G, z);
        if (NEED_X) dxv = _mm512_fmadd_ps(Gz, isv[i], dxv);
        if (NEED_P) {
          s0[i] = _mm512_add_ps(s0[i], G);
          s1[i] = _mm512_add_ps(s1[i], Gz);
          s2[i] = _mm512_fmadd_ps(Gz, z, s2[i]);
        }
      }
      if (NEED_X) {
        float* d = dx + rows[r] * n_in + k;
        _mm512_mask_storeu_ps(d, mk, _mm512_sub_ps(_mm512_maskz_loadu_ps(mk, d), dxv));
      }
    }
    if (NEED_P) {
      for (int i = 0; i < kBwdNeurons; ++i) {
        float* p = P + (j0 + i) * n_in + k;
        _mm512_mask_storeu_ps(p, mk, _mm512_add_ps(_mm512_maskz_loadu_ps(mk, p), s1[i]));
        _mm512_mask_storeu_ps(p + PN, mk, _mm512_add_ps(_mm512_maskz_loadu_ps(mk, p + PN), s2[i]));
        _mm512_mask_storeu_ps(p + 2 * PN, mk, _mm512_add_ps(_mm512_maskz_loadu_ps(mk, p + 2 * PN), s0[i]));
      }
    }
  }
}

template <bool NEED_X, bool NEED_P>
void backward_dense_avx512(const float* g, const float* x, const float* mu, const float* is, const float* c,
                           const float* y, float* dx, float* dmu, float* dsig, float* dlw, int64_t B, int64_t n_out,
                           int64_t n_in) {
  const auto tile = [&](auto rows_c, const float* mup, const float* isp, const float* cp, const int64_t* rows,
                        const float (*gl)[kBwdNeurons], const float (*yl)[kBwdNeurons], float* P, int64_t j0,
                        int64_t n_pad, int64_t k0, int64_t k1) {
    bwd_tile<decltype(rows_c)::value, NEED_X, NEED_P>(x, mup, isp, cp, rows, gl, yl, dx, P, j0, n_pad, n_in, k0, k1);
  };
  const auto every_pair = [](int64_t, int64_t, float&, float&) { return true; };
  backward_dense_tiles<kBwdNeurons, NEED_P>(g, mu, is, c, y, dmu, dsig, dlw, B, n_out, n_in, every_pair, 0.0f, 0.0f,
                                            tile, tile);
}

// microbenchmarks of the limit: n vectors of 16 lanes through the kernel's exp2, and n rounds of 12
// independent FMA chains
double bench_exp2(int64_t n) {
  return sum_over_threads(n, [](int64_t i0, int64_t i1) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    __m512 t0 = _mm512_setr_ps(0, -1, -2, -3, -4, -5, -6, -7, -8, -9, -10, -11, -12, -13, -14, -15);
    __m512 t1 = _mm512_sub_ps(t0, _mm512_set1_ps(0.5f));
    const __m512 step = _mm512_set1_ps(-1e-6f);
    for (int64_t i = i0; i < i1; i += 2) {
      acc0 = _mm512_add_ps(acc0, exp2_avx512(t0));
      acc1 = _mm512_add_ps(acc1, exp2_avx512(t1));
      t0 = _mm512_add_ps(t0, step);
      t1 = _mm512_add_ps(t1, step);
    }
    return static_cast<double>(_mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)));
  });
}

double bench_fma(int64_t n) {
  return sum_over_threads(n, [](int64_t i0, int64_t i1) {
    __m512 acc[12];
    for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_ps(1.0f + i);
    const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
    for (int64_t i = i0; i < i1; i += 12) {
      for (int j = 0; j < 12; ++j) acc[j] = _mm512_fmadd_ps(acc[j], a, b);
    }
    __m512 s = acc[0];
    for (int i = 1; i < 12; ++i) s = _mm512_add_ps(s, acc[i]);
    return static_cast<double>(_mm512_reduce_add_ps(s));
  });
}
constexpr bool kHaveAvx512 = true;
#else
constexpr bool kHaveAvx512 = false;
#endif

// ---- AVX2 float kernels of the dense path (CPUs without AVX-512) -----------------------------------------
//
// The AVX-512 kernels above on 8 lanes, in the same frames (forward_dense_base2, backward_dense_tiles): 2^n
// built from exponent bits in place of vscalefps (the exponents here are at most ~0), a degree-5 polynomial
// (AVX2 has half the registers and no free masking: every instruction of the exponential counts), and lane
// masks in place of mask registers. The exact forward rows and the backward compute q by the same
// instructions (q_avx2), so exp(q - y) of a row's lone dominant term is exactly 1 in the backward.

#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
}  // namespace
#include <immintrin.h>
namespace {

constexpr bool kHaveAvx2 = true;

// 2^t for t <= ~0: exactly 0 below -126.5 (and for -inf), NaN for NaN. n = round(t) by the 1.5 * 2^23 trick with
// the exponent bias folded in (the low bits of t + kShift are n + 127, shifted into the exponent field); t is
// clamped at -127, where the exponent field is 0 and so is 2^n: no mask needed. 2^f, f in [-1/2, 1/2], is a
// polynomial fitted for relative error: degree 5 (kExp2Poly, 2e-7) or 4 (kExp2Poly4, 3e-6). SIGNED: `sign`
// (+0 or -0 in every lane) is OR-ed into 2^n, so the result carries it without a multiplication.
template <int DEG = 5, bool SIGNED = false>
inline __attribute__((always_inline)) __m256 exp2_avx2(__m256 t, __m256 sign = _mm256_setzero_ps()) {
  static_assert(DEG == 4 || DEG == 5, "fitted degrees");
  const float* poly = DEG == 5 ? kExp2Poly : kExp2Poly4;
  const __m256 kShift = _mm256_set1_ps(kExp2Shift);
  t = _mm256_max_ps(_mm256_set1_ps(-127.0f), t);  // the second operand is returned for NaN: NaN stays NaN
  const __m256 nb = _mm256_add_ps(t, kShift);
  const __m256 f = _mm256_sub_ps(t, _mm256_sub_ps(nb, kShift));
  __m256 p = _mm256_set1_ps(poly[0]);
  for (int i = 1; i <= DEG; ++i) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(poly[i]));
  const __m256i e = _mm256_slli_epi32(_mm256_castps_si256(nb), 23);  // 2^n: (n + 127) << 23, 0 for n = -127
  const __m256 scale = _mm256_castsi256_ps(e);
  return _mm256_mul_ps(p, SIGNED ? _mm256_or_ps(scale, sign) : scale);
}

inline float reduce_add_avx2(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float reduce_max_avx2(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// lanes [0, rem) of 8 set (for masked loads and stores of a row's last rem < 8 inputs)
inline __m256i tail_mask_avx2(int64_t rem) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(rem)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// 8 lanes from p: all of them, or (TAIL) the lanes of mk and `fill` in the others
template <bool TAIL>
inline __attribute__((always_inline)) __m256 load_avx2(const float* p, __m256i mk, __m256 fill = _mm256_setzero_ps()) {
  if constexpr (TAIL) {
    return _mm256_blendv_ps(fill, _mm256_maskload_ps(p, mk), _mm256_castsi256_ps(mk));
  } else {
    return _mm256_loadu_ps(p);
  }
}

template <bool TAIL>
inline __attribute__((always_inline)) void store_avx2(float* p, __m256i mk, __m256 v) {
  if constexpr (TAIL) {
    _mm256_maskstore_ps(p, mk, v);
  } else {
    _mm256_storeu_ps(p, v);
  }
}

// natural-unit q = c - z^2 / 2, z = (x - mu) inv_sigma: the same instructions in the exact forward rows and the
// backward, so that exp(q - y) of a row's lone dominant term is exactly 1 there (as q_avx512)
inline __attribute__((always_inline)) __m256 q_avx2(__m256 xv, __m256 muv, __m256 isv, __m256 cv) {
  const __m256 z = _mm256_mul_ps(_mm256_sub_ps(xv, muv), isv);
  return _mm256_fnmadd_ps(_mm256_mul_ps(z, _mm256_set1_ps(0.5f)), z, cv);
}

// y of one row b and neuron j exactly: the true max, then the sum shifted by it (as forward_row_exact_avx512)
float forward_row_exact_avx2(const float* __restrict xb, const float* __restrict mu, const float* __restrict is,
                             const float* __restrict c, int64_t n_in) {
  const __m256 ninf = _mm256_set1_ps(-INFINITY);
  const auto q_at = [&](int64_t k) {
    if (k + 8 <= n_in) {
      return q_avx2(_mm256_loadu_ps(xb + k), _mm256_loadu_ps(mu + k), _mm256_loadu_ps(is + k), _mm256_loadu_ps(c + k));
    }
    const __m256i mk = tail_mask_avx2(n_in - k);
    return q_avx2(load_avx2<true>(xb + k, mk), load_avx2<true>(mu + k, mk), load_avx2<true>(is + k, mk),
                  load_avx2<true>(c + k, mk, ninf));
  };
  __m256 mx = ninf;
  for (int64_t k = 0; k < n_in; k += 8) mx = _mm256_max_ps(mx, q_at(k));
  const float M = reduce_max_avx2(mx);
  if (!(M > neg_inf<float>())) return std::isnan(M) ? M : neg_inf<float>();  // every component dropped: log 0
  const __m256 Mv = _mm256_set1_ps(M), L = _mm256_set1_ps(kLog2e);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t k = 0; k < n_in; k += 8) {
    acc = _mm256_add_ps(acc, exp2_avx2(_mm256_mul_ps(_mm256_sub_ps(q_at(k), Mv), L)));
  }
  return M + std::log(reduce_add_avx2(acc));
}

// shifted sums of rows [b0, b0 + NR) of neuron j: out[r] = sum_k 2^(C[k] - ((x[b,k] - mu[k]) a[k])^2)
template <int NR>
inline void fwd_tile_avx2(const float* __restrict x, const float* __restrict mu, const float* __restrict a,
                          const float* __restrict C, int64_t b0, int64_t n_in, float* out) {
  __m256 acc[NR];
  for (int r = 0; r < NR; ++r) acc[r] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= n_in; k += 8) {
    const __m256 muv = _mm256_loadu_ps(mu + k), av = _mm256_loadu_ps(a + k), cv = _mm256_loadu_ps(C + k);
    __m256 t[NR];  // in stages over the rows, as bwd_step_avx2: independent exponentials in the window
    for (int r = 0; r < NR; ++r) {
      const __m256 zz = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + (b0 + r) * n_in + k), muv), av);
      t[r] = _mm256_fnmadd_ps(zz, zz, cv);
    }
    for (int r = 0; r < NR; ++r) t[r] = exp2_avx2<4>(t[r]);
    for (int r = 0; r < NR; ++r) acc[r] = _mm256_add_ps(acc[r], t[r]);
  }
  if (k < n_in) {  // the last n_in - k < 8 inputs: masked loads read 0, and C = -inf drops the other lanes
    const __m256i mk = tail_mask_avx2(n_in - k);
    const __m256 muv = _mm256_maskload_ps(mu + k, mk), av = _mm256_maskload_ps(a + k, mk);
    const __m256 cv = load_avx2<true>(C + k, mk, _mm256_set1_ps(-INFINITY));
    for (int r = 0; r < NR; ++r) {
      const __m256 zz = _mm256_mul_ps(_mm256_sub_ps(_mm256_maskload_ps(x + (b0 + r) * n_in + k, mk), muv), av);
      acc[r] = _mm256_add_ps(acc[r], exp2_avx2<4>(_mm256_fnmadd_ps(zz, zz, cv)));
    }
  }
  for (int r = 0; r < NR; ++r) out[r] = reduce_add_avx2(acc[r]);
}

void forward_dense_avx2(const float* x, const float* mu, const float* is, const float* c, float* y, int64_t B,
                        int64_t n_out, int64_t n_in) {
  const Base2Tables t = base2_tables(is, c, n_out, n_in);
  const auto tile = [&](int64_t j, int64_t b0, auto rows, float* s) {
    fwd_tile_avx2<decltype(rows)::value>(x, mu + j * n_in, t.a.data() + j * n_in, t.C.data() + j * n_in, b0, n_in, s);
  };
  const auto exact = [&](int64_t b, int64_t j) {
    y[b * n_out + j] = forward_row_exact_avx2(x + b * n_in, mu + j * n_in, is + j * n_in, c + j * n_in, n_in);
  };
  forward_dense_base2(t, y, B, n_out, n_in, tile, exact);
}

// AVX2 backward in the frame of backward_dense_tiles, kBwdNeuronsAvx2 neurons x 4 rows per 8 inputs, the parameter
// sums in registers over the rows. Two tiles:
// - fast (bwd_fast_step_avx2), every pair whose row did not underflow in the forward (y - m[j] >= kLogMin): in
//   base 2 with the forward's tables, zz = (x - mu) a, and g folded into the exponent,
//     G = g exp(q - y) = sign(g) 2^(C - zz^2 - o),   o = (y - m[j]) log2(e) - log2|g|   (per pair),
//   so a term costs (x - mu) a, an FNMA, a subtraction, the degree-4 2^t (sign OR-ed into 2^n) and the four
//   accumulations; with K = sqrt(2 / log2(e)) (z = K zz), sum G z = K sum G zz, sum G z^2 = K^2 sum G zz^2 and
//   dx -= (2 / log2(e)) sum_j G zz a. Every magnitude in t is below ~100 for the terms that matter, so float's
//   rounding of t costs ~1e-5 of a term at most.
// - exact (bwd_step_avx2), rows with a pair that underflowed (its y came from forward_row_exact_avx2): natural
//   units with q_avx2's instructions, so that exp(q - y) of such a row's lone dominant term is exactly 1.
constexpr int kBwdNeuronsAvx2 = 2;

// One row's terms against NN neurons, added to the parameter sums (s1 += G z, s2 += G z^2, s0 += G; both tiles,
// in their own units of z); returns the row's dx sum over the neurons of G z w (w: z's weight in dx per neuron).
template <int NN, bool NEED_X, bool NEED_P>
inline __attribute__((always_inline)) __m256 accumulate_row_avx2(const __m256* G, const __m256* z, const __m256* w,
                                                                 __m256* s0, __m256* s1, __m256* s2) {
  __m256 dxv = _mm256_setzero_ps();
  for (int i = 0; i < NN; ++i) {
    const __m256 Gz = _mm256_mul_ps(G[i], z[i]);
    if (NEED_X) dxv = _mm256_fmadd_ps(Gz, w[i], dxv);
    if (NEED_P) {
      s0[i] = _mm256_add_ps(s0[i], G[i]);
      s1[i] = _mm256_add_ps(s1[i], Gz);
      s2[i] = _mm256_fmadd_ps(Gz, z[i], s2[i]);
    }
  }
  return dxv;
}

template <int NR, int NN, bool NEED_X, bool NEED_P, bool TAIL>
inline __attribute__((always_inline)) void bwd_step_avx2(const float* __restrict x, const float* __restrict mu,
                                                         const float* __restrict is, const float* __restrict c,
                                                         const int64_t* rows, const float (*gl)[NN],
                                                         const float (*yl)[NN], float* __restrict dx,
                                                         float* __restrict P, int64_t j0, int64_t PN, int64_t n_in,
                                                         int64_t k) {
  const __m256i mk = TAIL ? tail_mask_avx2(n_in - k) : _mm256_set1_epi32(-1);
  const __m256 L = _mm256_set1_ps(kLog2e);
  __m256 muv[NN], isv[NN], cv[NN];
  __m256 s1[NN], s2[NN], s0[NN];
  for (int i = 0; i < NN; ++i) {
    const int64_t o = (j0 + i) * n_in + k;
    muv[i] = load_avx2<TAIL>(mu + o, mk);
    isv[i] = load_avx2<TAIL>(is + o, mk);
    cv[i] = load_avx2<TAIL>(c + o, mk, _mm256_set1_ps(-INFINITY));
    s0[i] = s1[i] = s2[i] = _mm256_setzero_ps();
  }
  // In stages over all NR x NN (row, neuron) pairs rather than pair by pair: each pair is one long dependent
  // chain (~60 cycles: z, q, the exponential's polynomial, G, the sums), and in source order the out-of-order
  // window holds only two or three of them; stage by stage it holds independent work (the extra live values
  // spill to L1, whose load and store ports are idle here).
  __m256 z[NR][NN], G[NR][NN];
  for (int r = 0; r < NR; ++r) {
    const __m256 xv = load_avx2<TAIL>(x + rows[r] * n_in + k, mk);
    for (int i = 0; i < NN; ++i) {
      z[r][i] = _mm256_mul_ps(_mm256_sub_ps(xv, muv[i]), isv[i]);
      const __m256 q = _mm256_fnmadd_ps(_mm256_mul_ps(z[r][i], _mm256_set1_ps(0.5f)), z[r][i], cv[i]);  // as q_avx2
      G[r][i] = _mm256_mul_ps(_mm256_sub_ps(q, _mm256_set1_ps(yl[r][i])), L);
    }
  }
  for (int r = 0; r < NR; ++r) {
    for (int i = 0; i < NN; ++i) G[r][i] = _mm256_mul_ps(exp2_avx2(G[r][i]), _mm256_set1_ps(gl[r][i]));
  }
  for (int r = 0; r < NR; ++r) {
    const __m256 dxv = accumulate_row_avx2<NN, NEED_X, NEED_P>(G[r], z[r], isv, s0, s1, s2);
    if (NEED_X) {
      float* d = dx + rows[r] * n_in + k;
      store_avx2<TAIL>(d, mk, _mm256_sub_ps(load_avx2<TAIL>(d, mk), dxv));
    }
  }
  if (NEED_P) {
    for (int i = 0; i < NN; ++i) {
      float* p = P + (j0 + i) * n_in + k;
      store_avx2<TAIL>(p, mk, _mm256_add_ps(load_avx2<TAIL>(p, mk), s1[i]));
      store_avx2<TAIL>(p + PN, mk, _mm256_add_ps(load_avx2<TAIL>(p + PN, mk), s2[i]));
      store_avx2<TAIL>(p + 2 * PN, mk, _mm256_add_ps(load_avx2<TAIL>(p + 2 * PN, mk), s0[i]));
    }
  }
}

// the fast tile's step (see above): sl = sign(g) as +0 / -0, ol = the pair's offset o (+inf for a dead pair: G = 0)
template <int NR, int NN, bool NEED_X, bool NEED_P, bool TAIL>
inline __attribute__((always_inline)) void bwd_fast_step_avx2(const float* __restrict x, const float* __restrict mu,
                                                              const float* __restrict a, const float* __restrict C,
                                                              const int64_t* rows, const float (*sl)[NN],
                                                              const float (*ol)[NN], float* __restrict dx,
                                                              float* __restrict P, int64_t j0, int64_t PN,
                                                              int64_t n_in, int64_t k) {
  const __m256i mk = TAIL ? tail_mask_avx2(n_in - k) : _mm256_set1_epi32(-1);
  __m256 muv[NN], av[NN], cv[NN];
  __m256 s1[NN], s2[NN], s0[NN];
  for (int i = 0; i < NN; ++i) {
    const int64_t o = (j0 + i) * n_in + k;
    muv[i] = load_avx2<TAIL>(mu + o, mk);
    av[i] = load_avx2<TAIL>(a + o, mk);
    cv[i] = load_avx2<TAIL>(C + o, mk, _mm256_set1_ps(-INFINITY));
    s0[i] = s1[i] = s2[i] = _mm256_setzero_ps();
  }
  // two rows at a time in stages (as bwd_step_avx2, with fewer live values: AVX2's 16 registers)
  static_assert(NR <= 4, "tiles of at most kBwdRows rows");
  for (int r0 = 0; r0 < NR; r0 += 2) {
    constexpr int kStage = 2;
    const int nr = NR - r0 < kStage ? NR - r0 : kStage;
    __m256 zz[kStage][NN], G[kStage][NN];
    for (int r = 0; r < nr; ++r) {
      const __m256 xv = load_avx2<TAIL>(x + rows[r0 + r] * n_in + k, mk);
      for (int i = 0; i < NN; ++i) {
        zz[r][i] = _mm256_mul_ps(_mm256_sub_ps(xv, muv[i]), av[i]);
        G[r][i] = _mm256_sub_ps(_mm256_fnmadd_ps(zz[r][i], zz[r][i], cv[i]), _mm256_set1_ps(ol[r0 + r][i]));
      }
    }
    for (int r = 0; r < nr; ++r) {
      for (int i = 0; i < NN; ++i) G[r][i] = exp2_avx2<4, true>(G[r][i], _mm256_set1_ps(sl[r0 + r][i]));
    }
    for (int r = 0; r < nr; ++r) {
      const __m256 dxv = accumulate_row_avx2<NN, NEED_X, NEED_P>(G[r], zz[r], av, s0, s1, s2);
      if (NEED_X) {
        float* d = dx + rows[r0 + r] * n_in + k;
        store_avx2<TAIL>(d, mk, _mm256_fnmadd_ps(dxv, _mm256_set1_ps(2.0f / kLog2e), load_avx2<TAIL>(d, mk)));
      }
    }
  }
  if (NEED_P) {  // in natural units, as the exact tile's
    const __m256 K = _mm256_set1_ps(std::sqrt(2.0f / kLog2e)), K2 = _mm256_set1_ps(2.0f / kLog2e);
    for (int i = 0; i < NN; ++i) {
      float* p = P + (j0 + i) * n_in + k;
      store_avx2<TAIL>(p, mk, _mm256_fmadd_ps(s1[i], K, load_avx2<TAIL>(p, mk)));
      store_avx2<TAIL>(p + PN, mk, _mm256_fmadd_ps(s2[i], K2, load_avx2<TAIL>(p + PN, mk)));
      store_avx2<TAIL>(p + 2 * PN, mk, _mm256_add_ps(load_avx2<TAIL>(p + 2 * PN, mk), s0[i]));
    }
  }
}

template <bool NEED_X, bool NEED_P>
void backward_dense_avx2(const float* g, const float* x, const float* mu, const float* is, const float* c,
                         const float* y, float* dx, float* dmu, float* dsig, float* dlw, int64_t B, int64_t n_out,
                         int64_t n_in) {
  constexpr int NN = kBwdNeuronsAvx2;
  const int64_t n_pad = (n_out + NN - 1) / NN * NN;
  const Base2Tables t = base2_tables(is, c, n_out, n_in, n_pad);
  // each pair's offset o, or +inf where the fast tile may not take it (its forward row underflowed)
  std::vector<float> offset(B * n_out);
  at::parallel_for(0, B, grain(16 * n_out), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t j = 0; j < n_out; ++j) {
        const float gg = g[b * n_out + j], ym = y[b * n_out + j] - t.m[j];
        offset[b * n_out + j] = ym >= kLogMin<float> ? base2_offset(gg, ym) : INFINITY;
      }
    }
  });
  const auto fast = [&](int64_t b, int64_t j, float& gl, float& yl) {
    const float o = offset[b * n_out + j];
    gl = std::copysign(0.0f, gl);
    yl = o;
    return o < INFINITY;
  };
  const auto fast_tile = [&](auto rows_c, const float* mup, const float*, const float*, const int64_t* rows,
                             const float (*sl)[NN], const float (*ol)[NN], float* P, int64_t j0, int64_t n_pad_,
                             int64_t k0, int64_t k1) {
    constexpr int NR = decltype(rows_c)::value;
    const int64_t PN = n_pad_ * n_in;
    const float *a = t.a.data(), *C = t.C.data();
    int64_t k = k0;
    for (; k + 8 <= k1; k += 8) {
      bwd_fast_step_avx2<NR, NN, NEED_X, NEED_P, false>(x, mup, a, C, rows, sl, ol, dx, P, j0, PN, n_in, k);
    }
    if (k < k1) bwd_fast_step_avx2<NR, NN, NEED_X, NEED_P, true>(x, mup, a, C, rows, sl, ol, dx, P, j0, PN, n_in, k);
  };
  const auto exact_tile = [&](auto rows_c, const float* mup, const float* isp, const float* cp, const int64_t* rows,
                              const float (*gl)[NN], const float (*yl)[NN], float* P, int64_t j0, int64_t n_pad_,
                              int64_t k0, int64_t k1) {
    constexpr int NR = decltype(rows_c)::value;
    const int64_t PN = n_pad_ * n_in;
    int64_t k = k0;
    for (; k + 8 <= k1; k += 8) {
      bwd_step_avx2<NR, NN, NEED_X, NEED_P, false>(x, mup, isp, cp, rows, gl, yl, dx, P, j0, PN, n_in, k);
    }
    if (k < k1) bwd_step_avx2<NR, NN, NEED_X, NEED_P, true>(x, mup, isp, cp, rows, gl, yl, dx, P, j0, PN, n_in, k);
  };
  backward_dense_tiles<NN, NEED_P>(g, mu, is, c, y, dmu, dsig, dlw, B, n_out, n_in, fast, 0.0f, INFINITY, fast_tile,
                                   exact_tile);
}

// the microbenchmarks of the limit on 8 lanes (as the AVX-512 ones)
double bench_exp2(int64_t n) {
  return sum_over_threads(n, [](int64_t i0, int64_t i1) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m256 t0 = _mm256_setr_ps(0, -1, -2, -3, -4, -5, -6, -7);
    __m256 t1 = _mm256_sub_ps(t0, _mm256_set1_ps(0.5f));
    const __m256 step = _mm256_set1_ps(-1e-6f);
    for (int64_t i = i0; i < i1; i += 2) {
      acc0 = _mm256_add_ps(acc0, exp2_avx2(t0));
      acc1 = _mm256_add_ps(acc1, exp2_avx2(t1));
      t0 = _mm256_add_ps(t0, step);
      t1 = _mm256_add_ps(t1, step);
    }
    return static_cast<double>(reduce_add_avx2(_mm256_add_ps(acc0, acc1)));
  });
}

double bench_fma(int64_t n) {
  return sum_over_threads(n, [](int64_t i0, int64_t i1) {
    __m256 acc[12];
    for (int i = 0; i < 12; ++i) acc[i] = _mm256_set1_ps(1.0f + i);
    const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
    for (int64_t i = i0; i < i1; i += 12) {
      for (int j = 0; j < 12; ++j) acc[j] = _mm256_fmadd_ps(acc[j], a, b);
    }
    __m256 s = acc[0];
    for (int i = 1; i < 12; ++i) s = _mm256_add_ps(s, acc[i]);
    return static_cast<double>(reduce_add_avx2(s));
  });
}
#else
constexpr bool kHaveAvx2 = false;
#endif
#if !defined(__AVX512F__) && !(defined(__AVX2__) && defined(__FMA__))
double bench_exp2(int64_t) { TORCH_CHECK(false, "built without AVX-512 or AVX2"); }
double bench_fma(int64_t) { TORCH_CHECK(false, "built without AVX-512 or AVX2"); }
#endif

// A vectorised float path in this build (AVX-512, else AVX2 with FMA): its dense forward's exact rows and its
// dense backward compute q with the same instructions, so the zero-input path sends the rows that need it there.
constexpr bool kHaveSimd = kHaveAvx512 || kHaveAvx2;

// y of one row b and neuron j exactly, by the vectorised path's own instructions
inline float forward_row_exact_simd(const float* xb, const float* mu, const float* is, const float* c, int64_t n_in) {
#if defined(__AVX512F__)
  return forward_row_exact_avx512(xb, mu, is, c, n_in);
#elif defined(__AVX2__) && defined(__FMA__)
  return forward_row_exact_avx2(xb, mu, is, c, n_in);
#else
  (void)xb, (void)mu, (void)is, (void)c, (void)n_in;
  TORCH_CHECK(false, "built without a vectorised path");
#endif
}

// the dense forward and backward of the vectorised path (the arguments as forward_dense / backward_dense)
inline void forward_dense_simd(const float* x, const float* mu, const float* is, const float* c, float* y, int64_t B,
                               int64_t n_out, int64_t n_in) {
#if defined(__AVX512F__)
  forward_dense_avx512(x, mu, is, c, y, B, n_out, n_in);
#elif defined(__AVX2__) && defined(__FMA__)
  forward_dense_avx2(x, mu, is, c, y, B, n_out, n_in);
#else
  (void)x, (void)mu, (void)is, (void)c, (void)y, (void)B, (void)n_out, (void)n_in;
  TORCH_CHECK(false, "built without a vectorised path");
#endif
}

template <bool NEED_X, bool NEED_P>
void backward_dense_simd(const float* g, const float* x, const float* mu, const float* is, const float* c,
                         const float* y, float* dx, float* dmu, float* dsig, float* dlw, int64_t B, int64_t n_out,
                         int64_t n_in) {
#if defined(__AVX512F__)
  backward_dense_avx512<NEED_X, NEED_P>(g, x, mu, is, c, y, dx, dmu, dsig, dlw, B, n_out, n_in);
#elif defined(__AVX2__) && defined(__FMA__)
  backward_dense_avx2<NEED_X, NEED_P>(g, x, mu, is, c, y, dx, dmu, dsig, dlw, B, n_out, n_in);
#else
  (void)g, (void)x, (void)mu, (void)is, (void)c, (void)y, (void)dx, (void)dmu, (void)dsig, (void)dlw;
  (void)B, (void)n_out, (void)n_in;
  TORCH_CHECK(false, "built without a vectorised path");
#endif
}

// ---- inputs that are exactly 0 (sparse-constant inputs) ---------------------------------------------------


// The zero-input path pays off when most inputs are exactly 0 (MNIST: ~80% of pixels).
constexpr double kSparseMinZeroFraction = 0.5;

// Per-neuron shift m[j] = max_k c[j,k] (0 for a neuron with every component dropped) and, for an input at the
// background value v, E = exp(q(v) - m), E z0 / sigma and E (z0^2 - 1) / sigma with z0 = (v - mu) / sigma.
struct ZeroTables {
  at::Tensor m, E, Ezs, Ez2s;
};

template <typename T>
ZeroTables zero_tables(const at::Tensor& mu, const at::Tensor& is, const at::Tensor& c, bool need_grads, T v) {
  const int64_t n_out = mu.size(0), n_in = mu.size(1);
  ZeroTables t{at::empty({n_out}, mu.options()), at::empty_like(mu), need_grads ? at::empty_like(mu) : at::Tensor(),
               need_grads ? at::empty_like(mu) : at::Tensor()};
  const T *pmu = mu.data_ptr<T>(), *pis = is.data_ptr<T>(), *pc = c.data_ptr<T>();
  T *pm = t.m.data_ptr<T>(), *pE = t.E.data_ptr<T>();
  T* pEzs = need_grads ? t.Ezs.data_ptr<T>() : nullptr;
  T* pEz2s = need_grads ? t.Ez2s.data_ptr<T>() : nullptr;
  at::parallel_for(0, n_out, grain(n_in), [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      const T *cj = pc + j * n_in, *muj = pmu + j * n_in, *isj = pis + j * n_in;
      T mx = neg_inf<T>();
#pragma omp simd reduction(max : mx)
      for (int64_t k = 0; k < n_in; ++k) mx = cj[k] > mx ? cj[k] : mx;
      const T mj = mx > neg_inf<T>() ? mx : T(0);
      pm[j] = mj;
      T* Ej = pE + j * n_in;
#pragma omp simd
      for (int64_t k = 0; k < n_in; ++k) {
        T z0 = (v - muj[k]) * isj[k];
        Ej[k] = vexp(cj[k] - T(0.5) * z0 * z0 - mj);
      }
      if (need_grads) {
        for (int64_t k = 0; k < n_in; ++k) {
          T z0 = (v - muj[k]) * isj[k];
          pEzs[j * n_in + k] = Ej[k] * z0 * isj[k];
          pEz2s[j * n_in + k] = Ej[k] * (z0 * z0 - T(1)) * isj[k];
        }
      }
    }
  });
  return t;
}

// The background value v of x: 0 when at least half of x is 0, else the minimum of x when at least half of x
// equals it (standardised images); false when neither holds (or x is empty), and the dense path runs.
template <typename T>
bool background_value(const at::Tensor& x, T* v) {
  const T* p = x.data_ptr<T>();
  const int64_t n = x.numel();
  if (n == 0) return false;
  int64_t zeros = 0;
  T mn = std::numeric_limits<T>::infinity();
#pragma omp simd reduction(+ : zeros) reduction(min : mn)
  for (int64_t i = 0; i < n; ++i) {
    zeros += p[i] == T(0);
    mn = p[i] < mn ? p[i] : mn;
  }
  if (zeros >= kSparseMinZeroFraction * n) {
    *v = T(0);
    return true;
  }
  if (!std::isfinite(mn)) return false;
  int64_t at_min = 0;
#pragma omp simd reduction(+ : at_min)
  for (int64_t i = 0; i < n; ++i) at_min += p[i] == mn;
  *v = mn;
  return at_min >= kSparseMinZeroFraction * n;
}

// Z = [x == v] as x's dtype, (B, n_in): which inputs sit at the background
template <typename T>
at::Tensor background_indicator(const at::Tensor& x, T v) {
  at::Tensor Z = at::empty_like(x);
  const T* p = x.data_ptr<T>();
  T* pz = Z.data_ptr<T>();
  const int64_t n = x.numel();
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) pz[i] = p[i] == v ? T(1) : T(0);
  return Z;
}

// Positions of row xb's inputs other than the background v, written to nz; returns their count.
template <typename T, typename I>
inline int64_t foreground(const T* xb, int64_t n_in, T v, I* nz) {
  int64_t n = 0;
  for (int64_t k = 0; k < n_in; ++k) {
    nz[n] = static_cast<I>(k);
    n += xb[k] != v;  // NaN counts: it propagates through its terms
  }
  return n;
}

// What the vectorised background backward reads, parameters transposed to (n_in, n_out): the AVX-512 loops take
// mu, inv_sigma, c and each row's g and y (ge, ye: 0 where the row is not handled here); the AVX2 ones mu,
// inv_sigma, c in base 2 shifted by m[j] (C, as the dense fast tile's) and each pair's sign of g (+0 / -0) and
// offset o.
struct SparseBackwardTables {
  const float *muT, *isT, *cT, *ge, *ye;
  const float *sign, *offset;
};

#ifdef __AVX512F__
// AVX-512 loops of the background path. Neurons are taken 16 NV at a time (NV vectors), so their sums stay
// in registers over a row's (forward) or a column's (backward) foreground inputs; lanes past n_out are masked.
constexpr int kSparseVectors = 4;

template <int NV>
inline void lane_masks(int64_t j0, int64_t n_out, __mmask16* mk) {
  for (int v = 0; v < NV; ++v) {
    const int64_t j = j0 + 16 * v;
    mk[v] = j + 16 <= n_out ? static_cast<__mmask16>(0xFFFF) : (j < n_out ? tail_mask(n_out - j) : 0);
  }
}

// Positions of row xb's inputs other than v (NaN included), as int32; nz needs n_in + 16 slots.
inline int64_t foreground_avx512(const float* __restrict xb, int64_t n_in, float v, int32_t* __restrict nz) {
  const __m512 vv = _mm512_set1_ps(v);
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  int64_t n = 0;
  for (int64_t k = 0; k < n_in; k += 16) {
    const __mmask16 mk = k + 16 <= n_in ? static_cast<__mmask16>(0xFFFF) : tail_mask(n_in - k);
    const __mmask16 fg = _mm512_mask_cmp_ps_mask(mk, _mm512_maskz_loadu_ps(mk, xb + k), vv, _CMP_NEQ_UQ);
    // compress in a register and store all 16 lanes: a compress straight to memory is microcoded on some CPUs
    const __m512i idx = _mm512_add_epi32(iota, _mm512_set1_epi32(static_cast<int32_t>(k)));
    _mm512_storeu_si512(nz + n, _mm512_maskz_compress_epi32(fg, idx));
    n += _mm_popcnt_u32(fg);
  }
  return n;
}

// acc[j0 : j0 + 16 NV] += sum over the row's foreground inputs k of 2^(cT - ((x - muT) aT)^2), with the tables
// transposed to (n_in, n_out) and in base 2 (aT = inv_sigma sqrt(L / 2), cT = (c - m) L; see forward_sparse)
template <int NV>
inline void sparse_forward_block(const float* __restrict xb, const int32_t* __restrict nz, int64_t n,
                                 const float* __restrict muT, const float* __restrict aT, const float* __restrict cT,
                                 int64_t n_out, int64_t j0, float* __restrict acc) {
  __mmask16 mk[NV];
  __m512 a[NV];
  lane_masks<NV>(j0, n_out, mk);
  for (int v = 0; v < NV; ++v) a[v] = _mm512_maskz_loadu_ps(mk[v], acc + j0 + 16 * v);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t k = nz[i];
    const __m512 xv = _mm512_set1_ps(xb[k]);
    const int64_t at = k * n_out + j0;
    for (int v = 0; v < NV; ++v) {
      const __m512 zz = _mm512_mul_ps(_mm512_sub_ps(xv, _mm512_maskz_loadu_ps(mk[v], muT + at + 16 * v)),
                                      _mm512_maskz_loadu_ps(mk[v], aT + at + 16 * v));
      const __m512 cv = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), mk[v], cT + at + 16 * v);
      a[v] = _mm512_add_ps(a[v], exp2_avx512(_mm512_fnmadd_ps(zz, zz, cv)));
    }
  }
  for (int v = 0; v < NV; ++v) _mm512_mask_storeu_ps(acc + j0 + 16 * v, mk[v], a[v]);
}

// Column k's gradient sums over its foreground rows, for neurons [j0, j0 + 16 NV): with G = g exp(q - y),
//   dx[b,k] -= sum_j G z inv_sigma,  dmu += G z inv_sigma,  dsigma += G (z^2 - 1) inv_sigma,  dlog_pi += G,
// the sums over rows kept in registers; q in natural units with the instructions of the exact rows.
template <int NV, bool NEED_X, bool NEED_P>
inline void sparse_backward_block(const int32_t* __restrict rows, const float* __restrict vals, int64_t nr,
                                  const float* __restrict muk, const float* __restrict isk,
                                  const float* __restrict ck, const float* __restrict ge,
                                  const float* __restrict ye, int64_t n_out, int64_t j0, int64_t n_in, int64_t k,
                                  float* __restrict dx, float* __restrict amu, float* __restrict asig,
                                  float* __restrict alw) {
  __mmask16 mk[NV];
  __m512 mu[NV], is[NV], c[NV], smu[NV], ssig[NV], slw[NV];
  lane_masks<NV>(j0, n_out, mk);
  for (int v = 0; v < NV; ++v) {
    mu[v] = _mm512_maskz_loadu_ps(mk[v], muk + j0 + 16 * v);
    is[v] = _mm512_maskz_loadu_ps(mk[v], isk + j0 + 16 * v);
    c[v] = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), mk[v], ck + j0 + 16 * v);
    smu[v] = ssig[v] = slw[v] = _mm512_setzero_ps();
  }
  const __m512 half = _mm512_set1_ps(0.5f), L = _mm512_set1_ps(kLog2e);
  for (int64_t r = 0; r < nr; ++r) {
    const int64_t b = rows[r];
    const __m512 xv = _mm512_set1_ps(vals[r]);
    const float *gb = ge + b * n_out + j0, *yb = ye + b * n_out + j0;
    __m512 sx = _mm512_setzero_ps();
    for (int v = 0; v < NV; ++v) {
      const __m512 z = _mm512_mul_ps(_mm512_sub_ps(xv, mu[v]), is[v]);
      const __m512 q = _mm512_fnmadd_ps(_mm512_mul_ps(z, half), z, c[v]);
      const __m512 t = _mm512_mul_ps(_mm512_sub_ps(q, _mm512_maskz_loadu_ps(mk[v], yb + 16 * v)), L);
      const __m512 G = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk[v], gb + 16 * v), exp2_avx512(t));
      const __m512 Gs = _mm512_mul_ps(G, is[v]), Gzs = _mm512_mul_ps(Gs, z);
      if (NEED_X) sx = _mm512_add_ps(sx, Gzs);
      if (NEED_P) {
        smu[v] = _mm512_add_ps(smu[v], Gzs);
        ssig[v] = _mm512_add_ps(ssig[v], _mm512_fmsub_ps(Gzs, z, Gs));
        slw[v] = _mm512_add_ps(slw[v], G);
      }
    }
    if (NEED_X) dx[b * n_in + k] -= _mm512_reduce_add_ps(sx);
  }
  if (NEED_P) {
    for (int v = 0; v < NV; ++v) {
      _mm512_mask_storeu_ps(amu + j0 + 16 * v, mk[v], smu[v]);
      _mm512_mask_storeu_ps(asig + j0 + 16 * v, mk[v], ssig[v]);
      _mm512_mask_storeu_ps(alw + j0 + 16 * v, mk[v], slw[v]);
    }
  }
}
#elif defined(__AVX2__) && defined(__FMA__)
// AVX2 loops of the background path: the AVX-512 ones above on 8 lanes (fewer neurons per block in the
// backward: AVX2 has 16 vector registers, not 32). TAIL: some lanes lie past n_out (masked loads and stores).

// acc[j0 : j0 + 8 NV] += sum over the row's foreground inputs of 2^(cT - ((x - muT) aT)^2) (as sparse_forward_block)
template <int NV, bool TAIL>
inline void sparse_forward_block_avx2(const float* __restrict xb, const int32_t* __restrict nz, int64_t n,
                                      const float* __restrict muT, const float* __restrict aT,
                                      const float* __restrict cT, int64_t n_out, int64_t j0, float* __restrict acc) {
  __m256i mk[NV];
  __m256 a[NV];
  const __m256 ninf = _mm256_set1_ps(-INFINITY);
  for (int v = 0; v < NV; ++v) {
    mk[v] = tail_mask_avx2(n_out - j0 - 8 * v);
    a[v] = load_avx2<TAIL>(acc + j0 + 8 * v, mk[v]);
  }
  for (int64_t i = 0; i < n; ++i) {
    const int64_t k = nz[i];
    const __m256 xv = _mm256_set1_ps(xb[k]);
    const int64_t at = k * n_out + j0;
    for (int v = 0; v < NV; ++v) {
      const __m256 zz = _mm256_mul_ps(_mm256_sub_ps(xv, load_avx2<TAIL>(muT + at + 8 * v, mk[v])),
                                      load_avx2<TAIL>(aT + at + 8 * v, mk[v]));
      const __m256 cv = load_avx2<TAIL>(cT + at + 8 * v, mk[v], ninf);
      a[v] = _mm256_add_ps(a[v], exp2_avx2<4>(_mm256_fnmadd_ps(zz, zz, cv)));
    }
  }
  for (int v = 0; v < NV; ++v) store_avx2<TAIL>(acc + j0 + 8 * v, mk[v], a[v]);
}

// column k's gradient sums over its foreground rows for neurons [j0, j0 + 8 NV), in base 2 as the fast tile of the
// dense AVX2 backward (bwd_fast_step_avx2): zz = (x - mu) a, G = sign(g) 2^(C - zz^2 - o) with the pair's offset o
// (+inf where the row is not handled here: G = 0); every live pair here did not underflow (backward_sparse sends
// rows that did to the dense path), so the magnitudes in t stay small. Sums in natural units at the end.
template <int NV, bool NEED_X, bool NEED_P, bool TAIL>
inline void sparse_backward_block_avx2(const int32_t* __restrict rows, const float* __restrict vals, int64_t nr,
                                       const SparseBackwardTables& tab, int64_t n_out, int64_t j0, int64_t n_in,
                                       int64_t k, float* __restrict dx, float* __restrict amu,
                                       float* __restrict asig, float* __restrict alw) {
  const int64_t at = k * n_out + j0;
  __m256i mk[NV];
  __m256 mu[NV], a[NV], C[NV], s1[NV], s2[NV], s0[NV];
  const __m256 half_l = _mm256_set1_ps(std::sqrt(0.5f * kLog2e));  // a = inv_sigma sqrt(log2(e) / 2)
  for (int v = 0; v < NV; ++v) {
    mk[v] = tail_mask_avx2(n_out - j0 - 8 * v);
    mu[v] = load_avx2<TAIL>(tab.muT + at + 8 * v, mk[v]);
    a[v] = _mm256_mul_ps(load_avx2<TAIL>(tab.isT + at + 8 * v, mk[v]), half_l);
    C[v] = load_avx2<TAIL>(tab.cT + at + 8 * v, mk[v], _mm256_set1_ps(-INFINITY));
    s1[v] = s2[v] = s0[v] = _mm256_setzero_ps();
  }
  for (int64_t r = 0; r < nr; ++r) {
    const int64_t b = rows[r];
    const __m256 xv = _mm256_set1_ps(vals[r]);
    const float *sb = tab.sign + b * n_out + j0, *ob = tab.offset + b * n_out + j0;
    __m256 sx = _mm256_setzero_ps();
    for (int v = 0; v < NV; ++v) {
      const __m256 zz = _mm256_mul_ps(_mm256_sub_ps(xv, mu[v]), a[v]);
      const __m256 t = _mm256_sub_ps(_mm256_fnmadd_ps(zz, zz, C[v]),
                                     load_avx2<TAIL>(ob + 8 * v, mk[v], _mm256_set1_ps(INFINITY)));
      const __m256 G = exp2_avx2<4, true>(t, load_avx2<TAIL>(sb + 8 * v, mk[v]));
      const __m256 Gz = _mm256_mul_ps(G, zz);
      if (NEED_X) sx = _mm256_fmadd_ps(Gz, a[v], sx);
      if (NEED_P) {
        s1[v] = _mm256_add_ps(s1[v], Gz);
        s2[v] = _mm256_fmadd_ps(Gz, zz, s2[v]);
        s0[v] = _mm256_add_ps(s0[v], G);
      }
    }
    if (NEED_X) dx[b * n_in + k] -= (2.0f / kLog2e) * reduce_add_avx2(sx);
  }
  if (NEED_P) {  // sum G z is = is K s1, sum (G z^2 - G) is = is (K^2 s2 - s0): z = K zz, K = sqrt(2 / log2(e))
    const __m256 K = _mm256_set1_ps(std::sqrt(2.0f / kLog2e)), K2 = _mm256_set1_ps(2.0f / kLog2e);
    for (int v = 0; v < NV; ++v) {
      const __m256 is = load_avx2<TAIL>(tab.isT + at + 8 * v, mk[v]);
      store_avx2<TAIL>(amu + j0 + 8 * v, mk[v], _mm256_mul_ps(is, _mm256_mul_ps(K, s1[v])));
      store_avx2<TAIL>(asig + j0 + 8 * v, mk[v], _mm256_mul_ps(is, _mm256_fmsub_ps(K2, s2[v], s0[v])));
      store_avx2<TAIL>(alw + j0 + 8 * v, mk[v], s0[v]);
    }
  }
}
#endif

// ---- the vectorised background loops of this build, whichever the instruction set ----------------------
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#define UGMM_SIMD_SPARSE 1

// Positions of row xb's inputs other than v (NaN included), as int32; nz needs n_in + 16 slots.
inline int64_t foreground_simd(const float* xb, int64_t n_in, float v, int32_t* nz) {
#ifdef __AVX512F__
  return foreground_avx512(xb, n_in, v, nz);
#else
  return foreground(xb, n_in, v, nz);
#endif
}

// acc[j] += the shifted base-2 terms of row xb's foreground inputs nz[0..n), for every neuron j
inline void sparse_forward_row(const float* xb, const int32_t* nz, int64_t n, const float* muT, const float* aT,
                               const float* cT, int64_t n_out, float* acc) {
#ifdef __AVX512F__
  for (int64_t j0 = 0; j0 < n_out; j0 += 16 * kSparseVectors) {
    sparse_forward_block<kSparseVectors>(xb, nz, n, muT, aT, cT, n_out, j0, acc);
  }
#else
  constexpr int NV = 4;
  int64_t j0 = 0;
  for (; j0 + 8 * NV <= n_out; j0 += 8 * NV) {
    sparse_forward_block_avx2<NV, false>(xb, nz, n, muT, aT, cT, n_out, j0, acc);
  }
  if (j0 < n_out) sparse_forward_block_avx2<NV, true>(xb, nz, n, muT, aT, cT, n_out, j0, acc);
#endif
}

// column k's gradient terms over its foreground rows (rows, vals: nr of them), every neuron
template <bool NEED_X, bool NEED_P>
inline void sparse_backward_column(const int32_t* rows, const float* vals, int64_t nr, const SparseBackwardTables& tab,
                                   int64_t n_out, int64_t n_in, int64_t k, float* dx, float* amu, float* asig,
                                   float* alw) {
#ifdef __AVX512F__
  const int64_t at = k * n_out;
  for (int64_t j0 = 0; j0 < n_out; j0 += 16 * kSparseVectors) {
    sparse_backward_block<kSparseVectors, NEED_X, NEED_P>(rows, vals, nr, tab.muT + at, tab.isT + at, tab.cT + at,
                                                          tab.ge, tab.ye, n_out, j0, n_in, k, dx, amu, asig, alw);
  }
#else
  constexpr int NV = 2;
  int64_t j0 = 0;
  for (; j0 + 8 * NV <= n_out; j0 += 8 * NV) {
    sparse_backward_block_avx2<NV, NEED_X, NEED_P, false>(rows, vals, nr, tab, n_out, j0, n_in, k, dx, amu, asig, alw);
  }
  if (j0 < n_out) {
    sparse_backward_block_avx2<NV, NEED_X, NEED_P, true>(rows, vals, nr, tab, n_out, j0, n_in, k, dx, amu, asig, alw);
  }
#endif
}
#endif

// f(j, k) for every j < n_out, k < n_in, in 32 x 32 blocks (parallel over blocks): a transposed copy
// (n_out, n_in) <-> (n_in, n_out) made through f reads and writes each block's lines from L1, where a plain
// strided copy misses the cache on every element of one side.
template <typename F>
void for_each_block(int64_t n_out, int64_t n_in, const F& f) {
  constexpr int64_t kB = 32;
  const int64_t nbj = (n_out + kB - 1) / kB, nbk = (n_in + kB - 1) / kB;
  at::parallel_for(0, nbj * nbk, std::max<int64_t>(1, 16384 / (kB * kB)), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t j0 = t / nbk * kB, k0 = t % nbk * kB;
      const int64_t j1 = std::min(n_out, j0 + kB), k1 = std::min(n_in, k0 + kB);
      for (int64_t k = k0; k < k1; ++k) {
        for (int64_t j = j0; j < j1; ++j) f(j, k);
      }
    }
  });
}

// Forward with the shift m[j]: S = Z @ E^T for the background inputs plus per-term exponentials of the others,
// vectorised over neurons j with the parameters transposed to (n_in, n_out). Underflowed sums: exact path.
template <typename T>
void forward_sparse(const at::Tensor& x, const at::Tensor& mu, const at::Tensor& is, const at::Tensor& c,
                    at::Tensor& y, bool simd, T v) {
  const int64_t B = x.size(0), n_out = mu.size(0), n_in = mu.size(1);
  ZeroTables tab = zero_tables<T>(mu, is, c, false, v);
  at::Tensor S0 = at::mm(background_indicator<T>(x, v), tab.E.t());  // (B, n_out)
  // c shifted by m[j] once, transposed: one subtraction less per term
  // the parameters transposed to (n_in, n_out), c shifted by m[j]; in base 2 for the vectorised loops
  at::Tensor muT = at::empty({n_in, n_out}, mu.options()), isT = at::empty_like(muT), cT = at::empty_like(muT);
  {
    const T sa = simd ? std::sqrt(T(0.5) * T(1.4426950408889634)) : T(1), sc = simd ? T(1.4426950408889634) : T(1);
    const T *pmu = mu.data_ptr<T>(), *pis = is.data_ptr<T>(), *pc = c.data_ptr<T>(), *pm = tab.m.data_ptr<T>();
    T *tmu = muT.data_ptr<T>(), *tis = isT.data_ptr<T>(), *tc = cT.data_ptr<T>();
    for_each_block(n_out, n_in, [&](int64_t j, int64_t k) {
      tmu[k * n_out + j] = pmu[j * n_in + k];
      tis[k * n_out + j] = pis[j * n_in + k] * sa;
      tc[k * n_out + j] = (pc[j * n_in + k] - pm[j]) * sc;
    });
  }
  const T *px = x.data_ptr<T>(), *pS0 = S0.data_ptr<T>(), *pm = tab.m.data_ptr<T>();
  const T *pmuT = muT.data_ptr<T>(), *pisT = isT.data_ptr<T>(), *pcT = cT.data_ptr<T>();
  const T *pmu = mu.data_ptr<T>(), *pis = is.data_ptr<T>(), *pc = c.data_ptr<T>();
  T* py = y.data_ptr<T>();
  const int64_t rows_per_task = 8, n_tasks = (B + rows_per_task - 1) / rows_per_task;
  dynamic_for(n_tasks, grain(rows_per_task * n_out * n_in), [&](int64_t task) {
    const int64_t b0 = task * rows_per_task, b1 = std::min(B, b0 + rows_per_task);
    std::vector<T> acc(n_out), q(n_in);
    std::vector<int32_t> nz(n_in + 16);
    for (int64_t b = b0; b < b1; ++b) {
      const T* xb = px + b * n_in;
      std::copy(pS0 + b * n_out, pS0 + (b + 1) * n_out, acc.begin());
      T* __restrict a = acc.data();
      bool done = false;
#ifdef UGMM_SIMD_SPARSE
      if constexpr (std::is_same_v<T, float>) {
        if (simd) {
          sparse_forward_row(xb, nz.data(), foreground_simd(xb, n_in, v, nz.data()), pmuT, pisT, pcT, n_out, a);
          done = true;
        }
      }
#endif
      if (!done) {
        const int64_t n = foreground(xb, n_in, v, nz.data());
        for (int64_t i = 0; i < n; ++i) {
          const int64_t k = nz[i];
          const T xv = xb[k];
          const T *__restrict muk = pmuT + k * n_out, *__restrict isk = pisT + k * n_out,
                              *__restrict ck = pcT + k * n_out;
#pragma omp simd
          for (int64_t j = 0; j < n_out; ++j) {
            T z = (xv - muk[j]) * isk[j];
            a[j] += vexp(ck[j] - T(0.5) * z * z);
          }
        }
      }
      for (int64_t j = 0; j < n_out; ++j) {
        const T ls = std::log(a[j]);  // -inf for an empty sum
        if (ls >= kLogMin<T>) {
          py[b * n_out + j] = pm[j] + ls;
        } else {
          if constexpr (std::is_same_v<T, float>) {
            if (simd) {  // the exact rows agree with the vectorised backward to the last bit
              py[b * n_out + j] = forward_row_exact_simd(xb, pmu + j * n_in, pis + j * n_in, pc + j * n_in, n_in);
              continue;
            }
          }
          forward_rows(px, pmu + j * n_in, pis + j * n_in, pc + j * n_in, py, q.data(), b, b + 1, j, n_out, n_in);
        }
      }
    }
  });
}

// Backward matching forward_sparse. Rows (b, j) whose shifted sum underflowed take the exact dense path;
// when they are more than a few percent, returns false before writing anything and the caller goes dense.
template <typename T, bool NEED_X, bool NEED_P>
bool backward_sparse(const at::Tensor& g, const at::Tensor& x, const at::Tensor& mu, const at::Tensor& is,
                     const at::Tensor& c, const at::Tensor& y, at::Tensor& dx, at::Tensor& dmu, at::Tensor& dsig,
                     at::Tensor& dlw, bool simd, T v) {
  const int64_t B = x.size(0), n_out = mu.size(0), n_in = mu.size(1);
  ZeroTables tab = zero_tables<T>(mu, is, c, true, v);
  const T *pg = g.data_ptr<T>(), *py = y.data_ptr<T>(), *pm = tab.m.data_ptr<T>();
  // h = g exp(m - y) = g / S: G = h E for a zero input. geff, yeff: g and y of the rows handled here, else 0
  at::Tensor h = at::empty({B, n_out}, x.options()), geff = at::empty_like(h), yeff = at::empty_like(h);
  T *ph = h.data_ptr<T>(), *pge = geff.data_ptr<T>(), *pye = yeff.data_ptr<T>();
  at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
#pragma omp simd
      for (int64_t j = 0; j < n_out; ++j) {
        const int64_t i = b * n_out + j;
        const T gg = pg[i], yy = py[i], ym = yy - pm[j];
        const bool here = gg != T(0) && yy > neg_inf<T>() && ym >= kLogMin<T>;
        const T e = vexp(here ? -ym : T(0));
        ph[i] = here ? gg * e : T(0);
        pge[i] = here ? gg : T(0);
        pye[i] = here ? yy : T(0);
      }
    }
  });
  std::vector<std::pair<int64_t, int64_t>> exact;  // live rows whose shifted sum underflowed
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t j = 0; j < n_out; ++j) {
      const int64_t i = b * n_out + j;
      if (pg[i] != T(0) && py[i] > neg_inf<T>() && !(py[i] - pm[j] >= kLogMin<T>)) exact.emplace_back(b, j);
    }
  }
  if (static_cast<double>(exact.size()) > 0.05 * static_cast<double>(B * n_out)) return false;
  // the vectorised forward computed those rows with its own instructions: its backward recomputes them alike
  if (simd && !exact.empty()) return false;
  bool simd_done = false;

  at::Tensor Z = background_indicator<T>(x, v);
  // (n_out, n_in): sum of h over the rows where input k is v; times E, E z is, ... in the last pass below
  at::Tensor H0 = NEED_P ? at::mm(h.t(), Z) : at::Tensor();
  if (NEED_X) at::mul_out(dx, at::mm(h, tab.Ezs), Z).neg_();

  // foreground inputs: column by column (parallel over inputs k), so each thread owns its dx[:, k] and the
  // parameter gradients of its inputs, and the column's parameters and accumulators stay in L1 over the rows
  // (the AVX2 loops take c in base 2, shifted by m[j]: C = (c - m[j]) log2(e); see sparse_backward_block_avx2)
  const bool base2 = kHaveAvx2 && simd && std::is_same_v<T, float> && B * n_in < std::numeric_limits<int32_t>::max();
  at::Tensor muT = at::empty({n_in, n_out}, mu.options()), isT = at::empty_like(muT), cT = at::empty_like(muT);
  {
    const T *pmu = mu.data_ptr<T>(), *pis = is.data_ptr<T>(), *pc = c.data_ptr<T>();
    T *tmu = muT.data_ptr<T>(), *tis = isT.data_ptr<T>(), *tc = cT.data_ptr<T>();
    const T c_scale = base2 ? T(1.4426950408889634) : T(1);
    for_each_block(n_out, n_in, [&](int64_t j, int64_t k) {
      tmu[k * n_out + j] = pmu[j * n_in + k];
      tis[k * n_out + j] = pis[j * n_in + k];
      tc[k * n_out + j] = base2 ? (pc[j * n_in + k] - pm[j]) * c_scale : pc[j * n_in + k];
    });
  }
  const T *px = x.data_ptr<T>(), *pmuT = muT.data_ptr<T>(), *pisT = isT.data_ptr<T>(), *pcT = cT.data_ptr<T>();
  T* pdx = NEED_X ? dx.data_ptr<T>() : nullptr;
  at::Tensor dT = NEED_P ? at::empty({3, n_in, n_out}, x.options()) : at::Tensor();  // transposed gradients
  T* pdT = NEED_P ? dT.data_ptr<T>() : nullptr;
  const int64_t P = n_out * n_in;
  const int64_t cols_per_task = 4, n_col_tasks = (n_in + cols_per_task - 1) / cols_per_task;
#ifdef UGMM_SIMD_SPARSE
  if constexpr (std::is_same_v<T, float>) {
    if (simd && B * n_in < std::numeric_limits<int32_t>::max()) {  // int32 positions below
      // each column's foreground rows and values, contiguous (a counting sort of the rows' foreground lists)
      // kept between calls (a training step reuses them): fresh pages of this size would cost page faults
      thread_local std::vector<int32_t> row_nz, row_start, col_start, col_rows, fill;
      thread_local std::vector<float> col_vals;
      row_nz.resize(B * n_in + 16);
      row_start.assign(B + 1, 0);
      col_start.assign(n_in + 1, 0);
      for (int64_t b = 0; b < B; ++b) {
        row_start[b + 1] = row_start[b] + foreground_simd(px + b * n_in, n_in, v, row_nz.data() + row_start[b]);
      }
      for (int64_t i = 0; i < row_start[B]; ++i) ++col_start[row_nz[i] + 1];
      for (int64_t k = 0; k < n_in; ++k) col_start[k + 1] += col_start[k];
      col_rows.resize(row_start[B]);
      col_vals.resize(row_start[B]);
      fill.assign(col_start.begin(), col_start.end() - 1);
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t i = row_start[b]; i < row_start[b + 1]; ++i) {
          const int32_t k = row_nz[i], at = fill[k]++;
          col_rows[at] = static_cast<int32_t>(b);
          col_vals[at] = px[b * n_in + k];
        }
      }
      // plain pointers for the worker threads: a thread_local named inside the lambda would be the worker's own
      const int32_t *starts = col_start.data(), *rows = col_rows.data();
      const float* vals = col_vals.data();
      SparseBackwardTables tabs{pmuT, pisT, pcT, pge, pye, nullptr, nullptr};
      std::vector<float> sign, offset;
      if (base2) {  // each pair's sign of g and offset o (see sparse_backward_block_avx2)
        sign.resize(B * n_out);
        offset.resize(B * n_out);
        at::parallel_for(0, B, grain(16 * n_out), [&](int64_t b0, int64_t b1) {
          for (int64_t i = b0 * n_out; i < b1 * n_out; ++i) {  // pge = 0: a pair not handled here
            const float gg = pge[i];
            sign[i] = std::copysign(0.0f, gg);
            offset[i] = gg != 0.0f ? base2_offset(gg, pye[i] - pm[i % n_out]) : INFINITY;
          }
        });
        tabs.sign = sign.data();
        tabs.offset = offset.data();
      }
      dynamic_for(n_col_tasks, grain(cols_per_task * B * n_out / 4), [&](int64_t task) {
        const int64_t k0 = task * cols_per_task, k1 = std::min(n_in, k0 + cols_per_task);
        std::vector<float> unused(NEED_P ? 0 : 3 * n_out);  // accumulators when parameter gradients are not wanted
        for (int64_t k = k0; k < k1; ++k) {
          float* amu = NEED_P ? pdT + k * n_out : unused.data();
          float* asig = NEED_P ? pdT + P + k * n_out : unused.data() + n_out;
          float* alw = NEED_P ? pdT + 2 * P + k * n_out : unused.data() + 2 * n_out;
          const int64_t r0 = starts[k], nr = starts[k + 1] - r0;
          sparse_backward_column<NEED_X, NEED_P>(rows + r0, vals + r0, nr, tabs, n_out, n_in, k, pdx, amu, asig, alw);
        }
      });
      simd_done = true;
    }
  }
#endif
  if (!simd_done) {
    dynamic_for(n_col_tasks, grain(cols_per_task * B * n_out / 4), [&](int64_t task) {
      const int64_t k0 = task * cols_per_task, k1 = std::min(n_in, k0 + cols_per_task);
      std::vector<T> unused(NEED_P ? 0 : 3 * n_out);  // accumulators when parameter gradients are not wanted
      for (int64_t k = k0; k < k1; ++k) {
        const T *__restrict muk = pmuT + k * n_out, *__restrict isk = pisT + k * n_out,
                            *__restrict ck = pcT + k * n_out;
        T* __restrict amu = NEED_P ? pdT + k * n_out : unused.data();
        T* __restrict asig = NEED_P ? pdT + P + k * n_out : unused.data() + n_out;
        T* __restrict alw = NEED_P ? pdT + 2 * P + k * n_out : unused.data() + 2 * n_out;
        std::fill(amu, amu + n_out, T(0));
        std::fill(asig, asig + n_out, T(0));
        std::fill(alw, alw + n_out, T(0));
        for (int64_t b = 0; b < B; ++b) {
          const T xv = px[b * n_in + k];
          if (xv == v) continue;
          const T *__restrict gb = pge + b * n_out, *__restrict yb = pye + b * n_out;
          T sx = 0;
#pragma omp simd reduction(+ : sx)
          for (int64_t j = 0; j < n_out; ++j) {
            T z = (xv - muk[j]) * isk[j];
            T G = gb[j] * vexp(ck[j] - T(0.5) * z * z - yb[j]);
            T Gs = G * isk[j];
            T Gzs = Gs * z;
            sx += Gzs;
            if (NEED_P) {
              amu[j] += Gzs;
              asig[j] += Gzs * z - Gs;
              alw[j] += G;
            }
          }
          if (NEED_X) pdx[b * n_in + k] -= sx;
        }
      }
    });
  }
  if (NEED_P) {  // the background inputs' terms plus the others' (transposed back)
    T *gmu = dmu.data_ptr<T>(), *gsig = dsig.data_ptr<T>(), *glw = dlw.data_ptr<T>();
    const T *pH0 = H0.data_ptr<T>(), *pE = tab.E.data_ptr<T>(), *pEzs = tab.Ezs.data_ptr<T>(),
            *pEz2s = tab.Ez2s.data_ptr<T>();
    for_each_block(n_out, n_in, [&](int64_t j, int64_t k) {
      const int64_t i = j * n_in + k;
      gmu[i] = pEzs[i] * pH0[i] + pdT[k * n_out + j];
      gsig[i] = pEz2s[i] * pH0[i] + pdT[P + k * n_out + j];
      glw[i] = pE[i] * pH0[i] + pdT[2 * P + k * n_out + j];
    });
  }
  const T *pmu = mu.data_ptr<T>(), *pis = is.data_ptr<T>(), *pc = c.data_ptr<T>();
  T* pdmu = NEED_P ? dmu.data_ptr<T>() : nullptr;
  T* pdsig = NEED_P ? dsig.data_ptr<T>() : nullptr;
  T* pdlw = NEED_P ? dlw.data_ptr<T>() : nullptr;
  for (const auto& [b, j] : exact) {  // few (see above): serially, owning every output
    backward_block<T, NEED_X, NEED_P>(pg, px, pmu, pis, pc, py, pdx, pdmu, pdsig, pdlw, b, b + 1, j, j + 1, n_out,
                                      n_in);
  }
  return true;
}

void check_inputs(const at::Tensor& x, const at::Tensor& mu, const at::Tensor& is, const at::Tensor& c) {
  TORCH_CHECK(x.device().is_cpu(), "ugmm cpu kernel: tensors must be on the CPU");
  TORCH_CHECK(x.dim() == 2 && mu.dim() == 2, "ugmm cpu kernel: x must be (B, n_in), parameters (n_out, n_in)");
  TORCH_CHECK(mu.sizes() == is.sizes() && mu.sizes() == c.sizes(), "ugmm cpu kernel: parameter shapes differ");
  TORCH_CHECK(x.size(1) == mu.size(1), "ugmm cpu kernel: x has ", x.size(1), " inputs, parameters ", mu.size(1));
  for (const auto* t : {&x, &mu, &is, &c}) {
    TORCH_CHECK(t->is_contiguous(), "ugmm cpu kernel: inputs must be contiguous");
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), "ugmm cpu kernel: inputs must share one dtype");
  }
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "ugmm cpu kernel: float32 or float64 only");
}

at::Tensor forward(const at::Tensor& x, const at::Tensor& mu, const at::Tensor& inv_sigma, const at::Tensor& c,
                   bool use_sparse, bool use_simd) {
  check_inputs(x, mu, inv_sigma, c);
  const int64_t B = x.size(0), n_out = mu.size(0), n_in = mu.size(1);
  at::Tensor y = at::empty({B, n_out}, x.options());
  if (B == 0 || n_out == 0) return y;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ugmm_forward", [&] {
    const bool simd = use_simd && kHaveSimd && std::is_same_v<scalar_t, float>;
    scalar_t v;
    if (use_sparse && background_value<scalar_t>(x, &v)) {
      forward_sparse<scalar_t>(x, mu, inv_sigma, c, y, simd, v);
      return;
    }
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (simd) {
        forward_dense_simd(x.data_ptr<float>(), mu.data_ptr<float>(), inv_sigma.data_ptr<float>(),
                           c.data_ptr<float>(), y.data_ptr<float>(), B, n_out, n_in);
        return;
      }
    }
    forward_dense<scalar_t>(x.data_ptr<scalar_t>(), mu.data_ptr<scalar_t>(), inv_sigma.data_ptr<scalar_t>(),
                            c.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), B, n_out, n_in);
  });
  return y;
}

// Returns (dx, dmu, dsigma, dlog_weights); the ones not asked for are empty tensors.
std::vector<at::Tensor> backward(const at::Tensor& g, const at::Tensor& x, const at::Tensor& mu,
                                 const at::Tensor& inv_sigma, const at::Tensor& c, const at::Tensor& y,
                                 bool need_x, bool need_params, bool use_sparse, bool use_simd) {
  check_inputs(x, mu, inv_sigma, c);
  TORCH_CHECK(g.is_contiguous() && y.is_contiguous() && g.sizes() == y.sizes() &&
                  g.scalar_type() == x.scalar_type() && y.scalar_type() == x.scalar_type(),
              "ugmm cpu kernel: grad and output must be contiguous (B, n_out) of the inputs' dtype");
  const int64_t B = x.size(0), n_out = mu.size(0), n_in = mu.size(1);
  // uninitialised: the zero-input path writes every gradient before adding to it, the vectorised dense
  // backwards write the parameter gradients and add to dx, the portable one adds to all four; the dense
  // branch below zeroes what its kernel adds to
  at::Tensor dx = need_x ? at::empty_like(x) : at::Tensor();
  at::Tensor dmu = need_params ? at::empty_like(mu) : at::Tensor();
  at::Tensor dsig = need_params ? at::empty_like(mu) : at::Tensor();
  at::Tensor dlw = need_params ? at::empty_like(mu) : at::Tensor();
  if (B == 0 || n_out == 0 || !(need_x || need_params)) {
    for (at::Tensor* t : {&dx, &dmu, &dsig, &dlw}) {
      if (t->defined()) t->zero_();
    }
    return {dx, dmu, dsig, dlw};
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ugmm_backward", [&] {
    auto ptr = [](const at::Tensor& t) { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };
    auto args = std::make_tuple(g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), mu.data_ptr<scalar_t>(),
                                inv_sigma.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                                ptr(dx), ptr(dmu), ptr(dsig), ptr(dlw), B, n_out, n_in);
    scalar_t v = 0;
    const bool sparse = use_sparse && background_value<scalar_t>(x, &v);
    const bool simd = use_simd && kHaveSimd && std::is_same_v<scalar_t, float>;
    auto dense = [&](auto need_x_c, auto need_p_c) {
      constexpr bool NX = decltype(need_x_c)::value, NP = decltype(need_p_c)::value;
      if (NX) dx.zero_();
      if (NP && !simd) {  // the portable kernel adds to the parameter gradients
        dmu.zero_();
        dsig.zero_();
        dlw.zero_();
      }
      if constexpr (std::is_same_v<scalar_t, float>) {
        if (simd) {
          std::apply(backward_dense_simd<NX, NP>, args);
          return;
        }
      }
      std::apply(backward_dense<scalar_t, NX, NP>, args);
    };
    using True = std::true_type;
    using False = std::false_type;
    if (need_x && need_params) {
      if (sparse && backward_sparse<scalar_t, true, true>(g, x, mu, inv_sigma, c, y, dx, dmu, dsig, dlw, simd, v)) return;
      dense(True{}, True{});
    } else if (need_x) {
      if (sparse && backward_sparse<scalar_t, true, false>(g, x, mu, inv_sigma, c, y, dx, dmu, dsig, dlw, simd, v)) return;
      dense(True{}, False{});
    } else {
      if (sparse && backward_sparse<scalar_t, false, true>(g, x, mu, inv_sigma, c, y, dx, dmu, dsig, dlw, simd, v)) return;
      dense(False{}, True{});
    }
  });
  return {dx, dmu, dsig, dlw};
}

// ---- component parameters: sigma and log pi from a layer's raw parameters, and the kernels' constants ------
//
//   sigma = floor + exp(raw)  (or floor + softplus(raw), torch's threshold 20),
//   log pi[j, :] = log_softmax(logits[j, :] with the dropped components at -inf),
//   inv_sigma = 1 / sigma,  c = log pi - log sigma - log sqrt(2 pi),
// and the backward of the first two. One pass per row of neurons instead of a dozen elementwise torch ops each
// way (with threads that sleep between ops, those cost a training step as much as the kernels did). exp and
// log are bit tricks plus short polynomials in plain loops the compiler vectorises (no libm call per element;
// relative error ~2e-7, float's own rounding of the sums they feed); float64 calls libm.

inline float exp_poly(float x) {  // e^x; 0 below ~-88, inf above ~88.7, NaN for NaN
  const float t = std::min(std::max(x * kLog2e, -127.0f), 128.0f);
  const float nb = t + kExp2Shift;
  const float f = t - (nb - kExp2Shift);
  float p = kExp2Poly[0];
  for (int i = 1; i < 6; ++i) p = p * f + kExp2Poly[i];
  uint32_t bits;
  std::memcpy(&bits, &nb, sizeof bits);
  bits <<= 23;  // 2^n: (n + 127) << 23; 0 at n = -127, inf at n = 128
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}
inline double exp_poly(double x) { return std::exp(x); }

// log x for a positive normal float: x = 2^e m, m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(s), s = (m - 1) / (m + 1),
// |s| < 0.172, by its series to s^9 (the next term < 1e-9). Zero, subnormal, inf and NaN are left to log_fixup.
inline float log_poly(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  int32_t e = static_cast<int32_t>((bits >> 23) & 0xff) - 127;
  const uint32_t mbits = (bits & 0x7fffffu) | 0x3f800000u;
  float m;
  std::memcpy(&m, &mbits, sizeof m);
  const bool high = m > 1.41421356f;
  m = high ? 0.5f * m : m;
  e += high ? 1 : 0;
  const float s = (m - 1.0f) / (m + 1.0f), s2 = s * s;
  const float series = 1.0f + s2 * (1.0f / 3 + s2 * (1.0f / 5 + s2 * (1.0f / 7 + s2 * (1.0f / 9))));
  return static_cast<float>(e) * 0.6931471805599453f + 2.0f * s * series;
}
inline double log_poly(double x) { return std::log(x); }

template <typename T>
inline void log_fixup(const T* x, T* out, int64_t n) {  // the inputs log_poly does not cover
  for (int64_t k = 0; k < n; ++k) {
    if (!(x[k] >= std::numeric_limits<T>::min() && x[k] <= std::numeric_limits<T>::max())) out[k] = std::log(x[k]);
  }
}

template <typename T>
inline T softplus_of(T r) {
  return r > T(20) ? r : std::log1p(std::exp(r));
}

constexpr double kLogSqrt2Pi = 0.91893853320467274178;


// one neuron's row of component_params (outside the dispatch macro: OpenMP pragmas cannot sit in a macro argument)
template <typename T>
void params_row(const T* __restrict r, const T* __restrict l, const bool* d, T fl, bool softplus, T* __restrict sj,
                T* __restrict w, int64_t n_in) {
  if (softplus) {
    for (int64_t k = 0; k < n_in; ++k) sj[k] = fl + softplus_of(r[k]);
  } else {
    for (int64_t k = 0; k < n_in; ++k) sj[k] = fl + exp_poly(r[k]);
  }
  if (d) {
    for (int64_t k = 0; k < n_in; ++k) w[k] = d[k] ? -std::numeric_limits<T>::infinity() : l[k];
  } else {
    std::copy(l, l + n_in, w);
  }
  T mx = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : mx)
  for (int64_t k = 0; k < n_in; ++k) mx = std::max(mx, w[k]);
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t k = 0; k < n_in; ++k) sum += exp_poly(w[k] - mx);
  const T lse = mx + std::log(sum);
  for (int64_t k = 0; k < n_in; ++k) w[k] -= lse;
}

// one neuron's row of component_params_backward
template <typename T>
void params_backward_row(const T* __restrict gs, const T* __restrict gw, const T* __restrict r, const T* __restrict w,
                         const bool* d, bool softplus, T* __restrict dr, T* __restrict dl, int64_t n_in) {
  if (softplus) {  // torch's softplus_backward: g z / (z + 1), z = e^raw, or g above the threshold
    for (int64_t k = 0; k < n_in; ++k) {
      const T z = std::exp(r[k]);
      dr[k] = r[k] > T(20) ? gs[k] : gs[k] * z / (z + T(1));
    }
  } else {
    for (int64_t k = 0; k < n_in; ++k) dr[k] = gs[k] * exp_poly(r[k]);
  }
  T total = 0;  // log_softmax's backward: g - softmax * sum(g), over every component as torch sums it
#pragma omp simd reduction(+ : total)
  for (int64_t k = 0; k < n_in; ++k) total += gw[k];
  for (int64_t k = 0; k < n_in; ++k) dl[k] = gw[k] - exp_poly(w[k]) * total;
  if (d) {
    for (int64_t k = 0; k < n_in; ++k) dl[k] = d[k] ? T(0) : dl[k];
  }
}

// (sigma, log pi) of every component; drop: a (n_out, n_in) bool mask (True = dropped), or undefined for none
std::vector<at::Tensor> component_params(const at::Tensor& raw_std, const at::Tensor& logits,
                                         const std::optional<at::Tensor>& drop, double std_floor, bool softplus) {
  TORCH_CHECK(raw_std.dim() == 2 && raw_std.sizes() == logits.sizes(), "component_params: raw_std and logits (n_out, n_in)");
  TORCH_CHECK(raw_std.scalar_type() == logits.scalar_type(), "component_params: one dtype");
  const at::Tensor raw = raw_std.contiguous(), lg = logits.contiguous();
  const bool masked = drop.has_value() && drop->defined();
  at::Tensor dm;
  if (masked) {
    TORCH_CHECK(drop->sizes() == raw.sizes() && drop->scalar_type() == at::kBool, "component_params: drop (n_out, n_in) bool");
    dm = drop->contiguous();
  }
  at::Tensor sig = at::empty_like(raw), lw = at::empty_like(raw);
  const int64_t n_out = raw.size(0), n_in = raw.size(1);
  AT_DISPATCH_FLOATING_TYPES(raw.scalar_type(), "ugmm_component_params", [&] {
    using T = scalar_t;
    const T *pr = raw.data_ptr<T>(), *pl = lg.data_ptr<T>();
    const bool* pd = masked ? dm.data_ptr<bool>() : nullptr;
    T *ps = sig.data_ptr<T>(), *pw = lw.data_ptr<T>();
    const T fl = static_cast<T>(std_floor);
    at::parallel_for(0, n_out, grain(2 * n_in), [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j) {
        params_row(pr + j * n_in, pl + j * n_in, pd ? pd + j * n_in : nullptr, fl, softplus, ps + j * n_in,
                   pw + j * n_in, n_in);
      }
    });
  });
  return {sig, lw};
}

// (d raw_std, d logits) from (d sigma, d log pi); lw: the forward's log pi (dropped components at -inf)
std::vector<at::Tensor> component_params_backward(const at::Tensor& g_sig, const at::Tensor& g_lw, const at::Tensor& raw_std,
                                                  const at::Tensor& lw, const std::optional<at::Tensor>& drop,
                                                  bool softplus) {
  const at::Tensor gs = g_sig.contiguous(), gw = g_lw.contiguous(), raw = raw_std.contiguous(), w = lw.contiguous();
  const bool masked = drop.has_value() && drop->defined();
  const at::Tensor dm = masked ? drop->contiguous() : at::Tensor();
  at::Tensor draw = at::empty_like(raw), dlogits = at::empty_like(raw);
  const int64_t n_out = raw.size(0), n_in = raw.size(1);
  AT_DISPATCH_FLOATING_TYPES(raw.scalar_type(), "ugmm_component_params_backward", [&] {
    using T = scalar_t;
    const T *pgs = gs.data_ptr<T>(), *pgw = gw.data_ptr<T>(), *pr = raw.data_ptr<T>(), *pw = w.data_ptr<T>();
    const bool* pd = masked ? dm.data_ptr<bool>() : nullptr;
    T *pdr = draw.data_ptr<T>(), *pdl = dlogits.data_ptr<T>();
    at::parallel_for(0, n_out, grain(2 * n_in), [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j) {
        const int64_t o = j * n_in;
        params_backward_row(pgs + o, pgw + o, pr + o, pw + o, pd ? pd + o : nullptr, softplus, pdr + o, pdl + o, n_in);
      }
    });
  });
  return {draw, dlogits};
}

// Component dropout's mask from its random draws (u ~ U(0, 1) per component, one rescue index per neuron):
// dropped = u < p, except that a neuron with every component dropped keeps its rescue component. One pass for
// what takes seven elementwise torch ops; the same mask, bit for bit.
at::Tensor dropout_mask(const at::Tensor& u, const at::Tensor& rescue, double p) {
  TORCH_CHECK(u.dim() == 2 && u.scalar_type() == at::kFloat, "dropout_mask: u (n_out, n_in) float32");
  TORCH_CHECK(rescue.numel() == u.size(0) && rescue.scalar_type() == at::kLong, "dropout_mask: rescue (n_out,) int64");
  const at::Tensor uc = u.contiguous(), rc = rescue.contiguous();
  at::Tensor drop = at::empty(u.sizes(), u.options().dtype(at::kBool));
  const int64_t n_out = u.size(0), n_in = u.size(1);
  const float* pu = uc.data_ptr<float>();
  const int64_t* pr = rc.data_ptr<int64_t>();
  bool* pd = drop.data_ptr<bool>();
  const float pf = static_cast<float>(p);  // torch compares the float32 draws with p rounded to float32 too
  // one thread: a compare per component is far cheaper than waking a sleeping OpenMP worker (~50-100 us here)
  for (int64_t j = 0; j < n_out; ++j) {
    const float* uj = pu + j * n_in;
    bool* dj = pd + j * n_in;
    int64_t kept = 0;
    for (int64_t k = 0; k < n_in; ++k) {
      dj[k] = uj[k] < pf;
      kept += dj[k] ? 0 : 1;
    }
    if (kept == 0) dj[pr[j]] = false;
  }
  return drop;
}

// (inv_sigma, c) the kernels read, in one pass
std::vector<at::Tensor> derived(const at::Tensor& sigma, const at::Tensor& log_weights) {
  const at::Tensor s = sigma.contiguous(), lw = log_weights.contiguous();
  at::Tensor inv = at::empty_like(s), c = at::empty_like(s);
  const int64_t n_out = s.size(0), n_in = s.size(1);
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "ugmm_derived", [&] {
    using T = scalar_t;
    const T *ps = s.data_ptr<T>(), *pw = lw.data_ptr<T>();
    T *pi = inv.data_ptr<T>(), *pc = c.data_ptr<T>();
    at::parallel_for(0, n_out, grain(2 * n_in), [&](int64_t j0, int64_t j1) {
      const int64_t o = j0 * n_in, n = (j1 - j0) * n_in;
      for (int64_t k = 0; k < n; ++k) pc[o + k] = log_poly(ps[o + k]);
      log_fixup(ps + o, pc + o, n);
      for (int64_t k = 0; k < n; ++k) {
        pi[o + k] = T(1) / ps[o + k];
        pc[o + k] = pw[o + k] - pc[o + k] - static_cast<T>(kLogSqrt2Pi);
      }
    });
  });
  return {inv, c};
}

// The background value the zero-input path would use for x, or None when it takes the dense path.
std::optional<double> background(const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "ugmm cpu kernel: float32 or float64 only");
  const at::Tensor xc = x.contiguous();
  std::optional<double> out;
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "ugmm_background", [&] {
    scalar_t v;
    if (background_value<scalar_t>(xc, &v)) out = static_cast<double>(v);
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "uGMM log-likelihood forward (B, n_out)", py::arg("x"), py::arg("mu"),
        py::arg("inv_sigma"), py::arg("c"), py::arg("use_sparse") = true, py::arg("use_simd") = true);
  m.def("backward", &backward, "uGMM log-likelihood backward: (dx, dmu, dsigma, dlog_weights)", py::arg("g"),
        py::arg("x"), py::arg("mu"), py::arg("inv_sigma"), py::arg("c"), py::arg("y"), py::arg("need_x"),
        py::arg("need_params"), py::arg("use_sparse") = true, py::arg("use_simd") = true);
  m.def("component_params", &component_params, "(sigma, log pi) from (raw_std, logits, drop mask or None)",
        py::arg("raw_std"), py::arg("logits"), py::arg("drop"), py::arg("std_floor"), py::arg("softplus"));
  m.def("component_params_backward", &component_params_backward, "(d raw_std, d logits) of component_params",
        py::arg("g_sigma"), py::arg("g_log_weights"), py::arg("raw_std"), py::arg("log_weights"), py::arg("drop"),
        py::arg("softplus"));
  m.def("dropout_mask", &dropout_mask, "component dropout's mask from its draws (u, rescue index per neuron)",
        py::arg("u"), py::arg("rescue"), py::arg("p"));
  m.def("derived", &derived, "(1 / sigma, log pi - log sigma - log sqrt(2 pi))", py::arg("sigma"),
        py::arg("log_weights"));
  m.def("background", &background, "the zero-input path's background value of x, or None (dense path)",
        py::arg("x"));
  m.def("bench_exp2", &bench_exp2, "time n simd_lanes-wide exp2 evaluations (microbenchmark)", py::arg("n"));
  m.def("bench_fma", &bench_fma, "time n simd_lanes-wide FMAs (microbenchmark)", py::arg("n"));
  m.attr("has_avx512") = kHaveAvx512;
  m.attr("has_avx2") = kHaveAvx2;
  m.attr("simd_lanes") = kHaveAvx512 ? 16 : (kHaveAvx2 ? 8 : 0);
}
