// KVLinC's offline fits; see kvlinc_fit.hpp.
#include "reference/quant/kvlinc_fit.hpp"

#include <Eigen/Dense>
#include <algorithm>
#include <cfenv>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <random>
#include <vector>

#include "reference/attention/linear_correction.hpp"

namespace kvsim::ref {

namespace {
// RNE of x clamped to [lo, hi] (offline conversion of a fitted parameter).
i32 to_fixed(double x, int frac, double lo, double hi) {
  if (!std::isfinite(x)) x = 0.0;
  x = std::clamp(x, lo, hi);
  if (std::fegetround() != FE_TONEAREST) throw std::logic_error("kvlinc fit: rounding mode is not to-nearest");
  const double r = std::nearbyint(std::ldexp(x, frac));
  const double lim = 2147483647.0;
  return static_cast<i32>(std::clamp(r, -lim, lim));
}
// An offset (log2 units) in Q.32, clamped to +-2^18 (so |x| < 2^51, far
// inside linear_correction.hpp's 2^59 bounds).
i64 to_q32(double x) {
  return std::clamp<i64>(static_cast<i64>(std::nearbyint(std::ldexp(std::clamp(x, -262144.0, 262144.0), 32))),
                         -(i64{1} << 50), i64{1} << 50);
}
}  // namespace

KvlincAffine kvlinc_fit_affine(const i32* k, const i32* k_hat, i64 n, int D) {
  if (n < 1 || D < 1) throw std::logic_error("kvlinc_fit_affine: empty calibration set");
  KvlincAffine a;
  a.alpha.resize(static_cast<size_t>(D));
  a.beta.resize(static_cast<size_t>(D));
  const double u = std::ldexp(1.0, -kEntryFrac);
  Eigen::VectorXd x(n), y(n);
  for (int d = 0; d < D; ++d) {
    for (i64 t = 0; t < n; ++t) {
      x(t) = static_cast<double>(k_hat[t * D + d]) * u;
      y(t) = static_cast<double>(k[t * D + d]) * u;
    }
    const double mx = x.mean(), my = y.mean();
    const Eigen::VectorXd xc = x.array() - mx, yc = y.array() - my;
    // normal equations of the centred problem: [sxx] alpha = [sxy]
    Eigen::Matrix<double, 1, 1> A, b;
    A(0, 0) = xc.dot(xc);
    b(0, 0) = xc.dot(yc);
    double alpha = 1.0;
    if (A(0, 0) > 0.0) alpha = A.ldlt().solve(b)(0, 0);
    const double beta = my - alpha * mx;
    a.alpha[static_cast<size_t>(d)] = to_fixed(alpha, kKvlincAlphaFrac, -64.0, 64.0);
    a.beta[static_cast<size_t>(d)] = to_fixed(beta, kEntryFrac, -2048.0, 2048.0);
  }
  return a;
}

}  // namespace kvsim::ref

namespace kvsim::ref {

namespace {
// The untrained fit (train = 0): random features, NNLS weights. *a_out gets
// the NNLS weights a_j (double), for the training's start.
KvlincLinear fit_linear_random(const i32* k, const i32* v, const i32* k_hat, const i64* q, int group, i64 n, int D,
                               int rank, u64 seed, std::vector<double>* a_out, std::vector<double>* cq_out) {
  if (n < 1 || D < 1 || rank < 1 || group < 1) throw std::logic_error("kvlinc_fit_linear: empty calibration set");
  if (std::fegetround() != FE_TONEAREST) throw std::logic_error("kvlinc fit: rounding mode is not to-nearest");
  const double uk = std::ldexp(1.0, -kEntryFrac), uq = std::ldexp(1.0, -40), u32 = std::ldexp(1.0, -32);
  KvlincLinear L;
  L.rank = rank;
  L.w.resize(static_cast<size_t>(rank) * D);
  L.c.resize(static_cast<size_t>(rank));
  L.b.assign(static_cast<size_t>(rank), kLinearOff);
  // 1. projection: Gaussian rows (Box-Muller on mt19937_64, fully specified by the standard).
  double ss = 0.0;
  for (i64 i = 0; i < n * D; ++i) ss += (k[i] * uk) * (k[i] * uk);
  const double rms = std::sqrt(ss / static_cast<double>(n * D));
  const double scale = 1.0 / (std::sqrt(static_cast<double>(D)) * (rms > 1e-6 ? rms : 1e-6));
  std::mt19937_64 rng(seed);
  auto unif = [&] { return (static_cast<double>(rng() >> 11) + 0.5) * std::ldexp(1.0, -53); };
  for (size_t i = 0; i < L.w.size(); i += 2) {
    const double r1 = std::sqrt(-2.0 * std::log(unif())), th = 2.0 * 3.14159265358979323846 * unif();
    L.w[i] = to_fixed(r1 * std::cos(th) * scale, kLinearWFrac, -127.0, 127.0);
    if (i + 1 < L.w.size()) L.w[i + 1] = to_fixed(r1 * std::sin(th) * scale, kLinearWFrac, -127.0, 127.0);
  }
  // 2. offsets (fixed point) and the key features phi_j(k_s).
  std::vector<i64> cq(static_cast<size_t>(rank));
  Eigen::MatrixXd phi(n, rank);
  for (int j = 0; j < rank; ++j) {
    const i32* wj = L.w.data() + static_cast<size_t>(j) * D;
    i64 mk = 0, mq = 0;
    for (i64 s = 0; s < n; ++s) {
      const i64 x = linear_proj_key_q32(wj, k + s * D, D);
      if (s == 0 || x > mk) mk = x;
      for (int g = 0; g < group; ++g) {
        const i64 y = linear_proj_query_q32(wj, q + (s * group + g) * D, D);
        if ((s == 0 && g == 0) || y > mq) mq = y;
      }
    }
    L.c[static_cast<size_t>(j)] = mk;
    cq[static_cast<size_t>(j)] = mq;
    for (i64 s = 0; s < n; ++s)
      phi(s, j) = static_cast<double>(linear_key_feature_q24(wj, mk, k + s * D, D)) * std::ldexp(1.0, -kLinearPhiFrac);
  }
  // 3. normal equations over the calibration queries.
  const double lsc = 1.4426950408889634 / std::sqrt(static_cast<double>(D));
  Eigen::MatrixXd K(n, D), Kh(n, D), V(n, D);
  for (i64 s = 0; s < n; ++s)
    for (int d = 0; d < D; ++d) {
      K(s, d) = k[s * D + d] * uk;
      Kh(s, d) = k_hat[s * D + d] * uk;
      V(s, d) = v[s * D + d] * uk;
    }
  const i64 p0 = n / 8, np = std::min<i64>(64, n - p0);
  Eigen::MatrixXd G = Eigen::MatrixXd::Zero(rank, rank);
  Eigen::VectorXd h = Eigen::VectorXd::Zero(rank);
  Eigen::MatrixXd P = Eigen::MatrixXd::Zero(D + 1, rank);  // [S_j ; z_j] prefix sums, columns j
  i64 done = 0;                                             // tokens summed into P
  for (i64 ip = 0; ip < np; ++ip) {
    const i64 p = p0 + (ip * (n - p0)) / np;
    for (; done <= p; ++done) {
      for (int j = 0; j < rank; ++j) {
        for (int d = 0; d < D; ++d) P(d, j) += phi(done, j) * V(done, d);
        P(D, j) += phi(done, j);
      }
    }
    for (int g = 0; g < group; ++g) {
      Eigen::VectorXd qd(D);
      const i64* qr = q + (p * group + g) * D;
      for (int d = 0; d < D; ++d) qd(d) = qr[d] * uq;
      const Eigen::VectorXd l = K.topRows(p + 1) * qd * lsc, lh = Kh.topRows(p + 1) * qd * lsc;
      const double mh = lh.maxCoeff();
      Eigen::VectorXd diff(p + 1);
      double den = 0.0;
      for (i64 s = 0; s <= p; ++s) {
        const double eh = std::exp2(lh(s) - mh);
        den += eh;
        diff(s) = std::exp2(l(s) - mh) - eh;
      }
      Eigen::VectorXd t(D + 1);
      t.head(D) = V.topRows(p + 1).transpose() * diff;
      t(D) = diff.sum();
      t /= den;
      Eigen::MatrixXd A = P;
      for (int j = 0; j < rank; ++j) {
        const i32* wj = L.w.data() + static_cast<size_t>(j) * D;
        const double wq = static_cast<double>(linear_proj_query_q32(wj, qr, D) - cq[static_cast<size_t>(j)]) * u32;
        A.col(j) *= std::exp2(wq - mh) / den;
      }
      G.noalias() += A.transpose() * A;
      h.noalias() += A.transpose() * t;
    }
  }
  // 4. NNLS (Lawson-Hanson) on G a = h, with a tiny ridge for conditioning.
  const double ridge = 1e-9 * (G.trace() / rank + 1e-300);
  G.diagonal().array() += ridge;
  Eigen::VectorXd a = Eigen::VectorXd::Zero(rank);
  std::vector<bool> act(static_cast<size_t>(rank), false);  // passive set membership
  for (int outer = 0; outer < 3 * rank; ++outer) {
    const Eigen::VectorXd grad = h - G * a;
    int best = -1;
    double bg = 1e-12 * (h.cwiseAbs().maxCoeff() + 1e-300);
    for (int j = 0; j < rank; ++j)
      if (!act[static_cast<size_t>(j)] && grad(j) > bg) bg = grad(j), best = j;
    if (best < 0) break;
    act[static_cast<size_t>(best)] = true;
    for (int inner = 0; inner < 3 * rank; ++inner) {
      std::vector<int> idx;
      for (int j = 0; j < rank; ++j)
        if (act[static_cast<size_t>(j)]) idx.push_back(j);
      const int m = static_cast<int>(idx.size());
      Eigen::MatrixXd Gs(m, m);
      Eigen::VectorXd hs(m);
      for (int i = 0; i < m; ++i) {
        hs(i) = h(idx[i]);
        for (int jj = 0; jj < m; ++jj) Gs(i, jj) = G(idx[i], idx[jj]);
      }
      const Eigen::VectorXd zs = Gs.ldlt().solve(hs);
      if (zs.minCoeff() > 0.0) {
        for (int i = 0; i < m; ++i) a(idx[i]) = zs(i);
        break;
      }
      double alpha = 1.0;
      for (int i = 0; i < m; ++i)
        if (zs(i) <= 0.0) alpha = std::min(alpha, a(idx[i]) / (a(idx[i]) - zs(i)));
      for (int i = 0; i < m; ++i) {
        a(idx[i]) += alpha * (zs(i) - a(idx[i]));
        if (a(idx[i]) <= 1e-15 * (1.0 + std::abs(zs(i)))) a(idx[i]) = 0.0, act[static_cast<size_t>(idx[i])] = false;
      }
    }
  }
  // 5. to fixed point: b_j = log2(a_j) - cq_j, clamped to +-2^18.
  a_out->assign(a.data(), a.data() + rank);
  cq_out->resize(static_cast<size_t>(rank));
  for (int j = 0; j < rank; ++j) (*cq_out)[static_cast<size_t>(j)] = static_cast<double>(cq[static_cast<size_t>(j)]) * u32;
  for (int j = 0; j < rank; ++j) {
    const double aj = a(j);
    if (!(aj > 0.0) || !std::isfinite(aj) || std::log2(aj) < -100.0) continue;
    const double bj = std::log2(aj) - static_cast<double>(cq[static_cast<size_t>(j)]) * u32;
    L.b[static_cast<size_t>(j)] = to_q32(bj);
  }
  return L;
}

// ---------------------------------------------------------------------------
// The trained feature map (train > 0): Adam on w, c, b through both clamps.

constexpr double kLn2 = 0.69314718055994530942;
constexpr double kOffsetLim = 262144.0;  // |b|, |c| (log2 units), as to_q32

// The constants of the objective at one query (position p, one head), all on
// the scale 2^-mh of the quantized max logit mh (base 2).
struct LinQuery {
  i64 p = 0;
  i64 kq = 0;           // tokens [0, kq) quantized (and summed by the correction), [kq, p] full precision
  double mh = 0.0;
  double wt = 0.0;      // 1 / |o|^2: the loss is the squared relative error
  Eigen::VectorXd q;    // [D]   the query (real)
  Eigen::VectorXd nw;   // [D+1] quantized attention: [sum 2^(l^_s-mh) v_s ; sum 2^(l^_s-mh)]
  Eigen::VectorXd o;    // [D]   exact attention output (full-precision keys)
};
struct LinData {
  int D = 0;
  i64 n = 0;
  Eigen::MatrixXd K;                  // [n][D]   full-precision keys (real)
  Eigen::MatrixXd V1;                 // [n][D+1] values, then a column of ones
  std::vector<LinQuery> train, held;  // each ordered by position
};
// The parameters in double: W [r][D] real, c and b log2 units (b = -inf: off).
struct LinPar {
  Eigen::MatrixXd W;
  Eigen::VectorXd c, b;
};

// Up to `most` positions evenly spaced in [lo, hi).
std::vector<i64> spaced(i64 lo, i64 hi, i64 most) {
  std::vector<i64> p;
  const i64 cnt = std::min(most, hi - lo);
  for (i64 i = 0; i < cnt; ++i) p.push_back(lo + (i * (hi - lo)) / cnt);
  return p;
}

LinData lin_data(const i32* k, const i32* v, const i32* k_hat, const i64* q, int group, i64 n, int D, int window) {
  const double uk = std::ldexp(1.0, -kEntryFrac), uq = std::ldexp(1.0, -40);
  const double lsc = 1.4426950408889634 / std::sqrt(static_cast<double>(D));
  LinData X;
  X.D = D;
  X.n = n;
  X.K.resize(n, D);
  X.V1.resize(n, D + 1);
  Eigen::MatrixXd Kh(n, D);
  for (i64 s = 0; s < n; ++s) {
    for (int d = 0; d < D; ++d) {
      X.K(s, d) = k[s * D + d] * uk;
      Kh(s, d) = k_hat[s * D + d] * uk;
      X.V1(s, d) = v[s * D + d] * uk;
    }
    X.V1(s, D) = 1.0;
  }
  const i64 split = n - n / 4;
  for (int part = 0; part < 2; ++part) {
    std::vector<LinQuery>& out = part == 0 ? X.train : X.held;
    for (const i64 p : part == 0 ? spaced(n / 8, split, 128) : spaced(split, n, 32)) {
      for (int g = 0; g < group; ++g) {
        LinQuery Q;
        Q.p = p;
        Q.q.resize(D);
        const i64* qr = q + (p * group + g) * D;
        for (int d = 0; d < D; ++d) Q.q(d) = qr[d] * uq;
        // the streaming view at p: KIVI's keys, flushed R at a time after the step
        Q.kq = window > 0 ? (p / window) * window : p + 1;
        if (Q.kq == 0) continue;  // nothing quantized: the correction is off, the loss a constant
        const Eigen::VectorXd l = X.K.topRows(p + 1) * Q.q * lsc;
        Eigen::VectorXd lh = l;
        lh.head(Q.kq) = Kh.topRows(Q.kq) * Q.q * lsc;
        Q.mh = lh.maxCoeff();
        const double M = l.maxCoeff();
        Eigen::VectorXd e(p + 1), eh(p + 1);
        for (i64 s = 0; s <= p; ++s) {
          e(s) = std::exp2(l(s) - M);
          eh(s) = std::exp2(lh(s) - Q.mh);
        }
        Q.nw = X.V1.topRows(p + 1).transpose() * eh;
        const Eigen::VectorXd ex = X.V1.topRows(p + 1).transpose() * e;
        Q.o = ex.head(D) / ex(D);
        const double o2 = Q.o.squaredNorm();
        Q.wt = o2 > 1e-30 ? 1.0 / o2 : 0.0;
        out.push_back(std::move(Q));
      }
    }
  }
  return X;
}

// 2^(min(x, 0)), as the fixed-point path clamps (-inf -> 0).
double exp2_clamped(double x) { return std::exp2(std::min(x, 0.0)); }

// The objective over the queries Qs; with G, also its gradient (added into G,
// which must be zero-sized like P). Subgradient 0 where a clamp binds.
// Per query: y = sum_j g_j P_j(p) ([D+1]), the corrected output
// o^ = (nw[:D] + y[:D]) / (nw[D] + y[D]) and the loss wt |o^ - o|^2.
double lin_loss(const LinData& X, const std::vector<LinQuery>& Qs, const LinPar& P, LinPar* G) {
  const int r = static_cast<int>(P.W.rows()), D = X.D, D1 = X.D + 1;
  const Eigen::MatrixXd A = (X.K * P.W.transpose()).rowwise() - P.c.transpose();  // [n][r] w_j.k_s - c_j
  const Eigen::MatrixXd Phi = A.unaryExpr(&exp2_clamped);                           // [n][r] phi_j(k_s)
  Eigen::MatrixXd Pc = Eigen::MatrixXd::Zero(r, D1);  // P_j(p): prefix sums up to the current query
  i64 done = 0;
  double loss = 0.0;
  std::vector<Eigen::VectorXd> gq, dy;  // per query: g and d loss / d y (for the key side)
  for (const LinQuery& Q : Qs) {
    if (Q.kq > done) {
      Pc.noalias() += Phi.middleRows(done, Q.kq - done).transpose() * X.V1.middleRows(done, Q.kq - done);
      done = Q.kq;
    }
    const Eigen::VectorXd e = (P.W * Q.q + P.b).array() - Q.mh;
    const Eigen::VectorXd g = e.unaryExpr(&exp2_clamped);
    const Eigen::VectorXd nw = Q.nw + Pc.transpose() * g;  // corrected [num ; den]
    const Eigen::VectorXd oc = nw.head(D) / nw(D);
    const Eigen::VectorXd res = oc - Q.o;
    loss += Q.wt * res.squaredNorm();
    if (!G) continue;
    Eigen::VectorXd d(D1);  // d loss / d [num ; den]
    d.head(D) = (2.0 * Q.wt / nw(D)) * res;
    d(D) = -d.head(D).dot(oc);
    const Eigen::VectorXd dg = Pc * d;
    Eigen::VectorXd de(r);
    for (int j = 0; j < r; ++j) de(j) = e(j) < 0.0 ? dg(j) * kLn2 * g(j) : 0.0;
    G->W.noalias() += de * Q.q.transpose();
    G->b += de;
    gq.push_back(g);
    dy.push_back(d);
  }
  if (!G || Qs.empty()) return loss;
  // key side: d loss / d phi_j(k_s) = [v_s ; 1] . U_j, U = sum over the queries
  // with p >= s of g d^T (suffix sums, walking the queries backwards).
  Eigen::MatrixXd U = Eigen::MatrixXd::Zero(r, D1), dA = Eigen::MatrixXd::Zero(X.n, r);
  for (size_t i = Qs.size(); i-- > 0;) {
    U.noalias() += gq[i] * dy[i].transpose();
    const i64 lo = i > 0 ? Qs[i - 1].kq : 0, cnt = Qs[i].kq - lo;
    if (cnt > 0) dA.middleRows(lo, cnt).noalias() = X.V1.middleRows(lo, cnt) * U.transpose();
  }
  for (i64 s = 0; s < X.n; ++s)
    for (int j = 0; j < r; ++j) dA(s, j) = A(s, j) < 0.0 ? dA(s, j) * kLn2 * Phi(s, j) : 0.0;
  G->W.noalias() += dA.transpose() * X.K;
  G->c -= dA.colwise().sum().transpose();
  return loss;
}

LinPar from_fixed(const KvlincLinear& L, int D) {
  const int r = L.rank;
  LinPar P;
  P.W.resize(r, D);
  P.c.resize(r);
  P.b.resize(r);
  for (int j = 0; j < r; ++j) {
    for (int d = 0; d < D; ++d) P.W(j, d) = std::ldexp(static_cast<double>(L.w[static_cast<size_t>(j) * D + d]), -kLinearWFrac);
    P.c(j) = std::ldexp(static_cast<double>(L.c[static_cast<size_t>(j)]), -32);
    const i64 b = L.b[static_cast<size_t>(j)];
    P.b(j) = b == kLinearOff ? -std::numeric_limits<double>::infinity() : std::ldexp(static_cast<double>(b), -32);
  }
  return P;
}
KvlincLinear to_fixed_par(const LinPar& P) {
  const int r = static_cast<int>(P.W.rows()), D = static_cast<int>(P.W.cols());
  KvlincLinear L;
  L.rank = r;
  L.w.resize(static_cast<size_t>(r) * D);
  L.c.resize(static_cast<size_t>(r));
  L.b.resize(static_cast<size_t>(r));
  for (int j = 0; j < r; ++j) {
    for (int d = 0; d < D; ++d) L.w[static_cast<size_t>(j) * D + d] = to_fixed(P.W(j, d), kLinearWFrac, -127.0, 127.0);
    L.c[static_cast<size_t>(j)] = to_q32(P.c(j));
    L.b[static_cast<size_t>(j)] = std::isinf(P.b(j)) && P.b(j) < 0 ? kLinearOff : to_q32(P.b(j));
  }
  return L;
}

// One Adam step on x with gradient g (moments m, v; bias corrections c1, c2).
template <class M>
void adam(M& x, const M& g, M& m, M& v, double step, double c1, double c2) {
  m = 0.9 * m + 0.1 * g;
  v = 0.999 * v + 0.001 * g.cwiseProduct(g);
  x.array() -= step * (m.array() / c1) / ((v.array() / c2).sqrt() + 1e-8);
}
}  // namespace

KvlincLinear kvlinc_fit_linear(const i32* k, const i32* v, const i32* k_hat, const i64* q, int group, i64 n,
                               int D, int rank, u64 seed, const KvlincTrain& train) {
  std::vector<double> a0, cq;
  KvlincLinear L0 = fit_linear_random(k, v, k_hat, q, group, n, D, rank, seed, &a0, &cq);
  if (train.steps <= 0) return L0;
  if (!(train.lr > 0.0) || !(train.lr <= 1.0)) throw std::logic_error("kvlinc_fit_linear: lr out of (0, 1]");
  const LinData X = lin_data(k, v, k_hat, q, group, n, D, train.window);
  const std::vector<LinQuery>& sel = X.held.empty() ? X.train : X.held;  // the selection split
  KvlincLinear best = L0;
  double best_score = lin_loss(X, sel, from_fixed(L0, D), nullptr);
  // the start: the untrained integers; features left off start at 2^-8 of the
  // smallest weight on (2^-20 when none is on)
  LinPar P = from_fixed(L0, D);
  double amin = 0.0;
  for (int j = 0; j < rank; ++j)
    if (L0.b[static_cast<size_t>(j)] != kLinearOff && (amin == 0.0 || a0[static_cast<size_t>(j)] < amin))
      amin = a0[static_cast<size_t>(j)];
  const double boff = amin > 0.0 ? std::log2(amin) - 8.0 : -20.0;
  for (int j = 0; j < rank; ++j)
    if (L0.b[static_cast<size_t>(j)] == kLinearOff) P.b(j) = boff - cq[static_cast<size_t>(j)];
  const double norm = lin_loss(X, X.train, P, nullptr);
  if (!(norm > 0.0) || !std::isfinite(norm) || !std::isfinite(best_score)) return L0;
  const double sw = std::sqrt(P.W.squaredNorm() / static_cast<double>(P.W.size()));  // w's step unit
  LinPar m{Eigen::MatrixXd::Zero(rank, D), Eigen::VectorXd::Zero(rank), Eigen::VectorXd::Zero(rank)};
  LinPar vv = m;
  double c1 = 1.0, c2 = 1.0;
  for (int step = 1; step <= train.steps; ++step) {
    LinPar G{Eigen::MatrixXd::Zero(rank, D), Eigen::VectorXd::Zero(rank), Eigen::VectorXd::Zero(rank)};
    const double loss = lin_loss(X, X.train, P, &G);
    if (!std::isfinite(loss)) break;
    G.W /= norm;
    G.c /= norm;
    G.b /= norm;
    const double lr = train.lr * 0.5 * (1.0 + std::cos(3.14159265358979323846 * (step - 1) / train.steps));
    c1 *= 0.9;
    c2 *= 0.999;
    adam(P.W, G.W, m.W, vv.W, lr * (sw > 0.0 ? sw : 1.0), 1.0 - c1, 1.0 - c2);
    adam(P.c, G.c, m.c, vv.c, lr, 1.0 - c1, 1.0 - c2);
    adam(P.b, G.b, m.b, vv.b, lr, 1.0 - c1, 1.0 - c2);
    P.c = P.c.cwiseMax(-kOffsetLim).cwiseMin(kOffsetLim);
    P.b = P.b.cwiseMax(-kOffsetLim).cwiseMin(kOffsetLim);
    if (step % 10 == 0 || step == train.steps) {
      KvlincLinear Lf = to_fixed_par(P);
      const double score = lin_loss(X, sel, from_fixed(Lf, D), nullptr);
      if (score < best_score) best_score = score, best = std::move(Lf);
    }
  }
  return best;
}

double kvlinc_linear_objective(const i32* k, const i32* v, const i32* k_hat, const i64* q, int group, i64 n,
                               int D, const KvlincLinear& L, bool held_out, int window) {
  if (n < 1 || D < 1 || group < 1 || L.rank < 1) throw std::logic_error("kvlinc_linear_objective: empty input");
  const LinData X = lin_data(k, v, k_hat, q, group, n, D, window);
  return lin_loss(X, held_out ? X.held : X.train, from_fixed(L, D), nullptr);
}

}  // namespace kvsim::ref
