#include "analysis/report_stats.hpp"

#include <Eigen/Dense>
#include <boost/math/distributions/students_t.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>

namespace kvsim::analysis {

namespace {
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
}

double quantile_inplace(std::vector<double>& v, double q) {
  if (v.empty()) return kNaN;
  q = std::clamp(q, 0.0, 1.0);
  const double pos = q * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const double frac = pos - static_cast<double>(lo);
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(lo), v.end());
  const double a = v[lo];
  if (frac == 0 || lo + 1 >= v.size()) return a;
  const double b = *std::min_element(v.begin() + static_cast<std::ptrdiff_t>(lo) + 1, v.end());
  return a + frac * (b - a);
}

double quantile(std::vector<double> v, double q) { return quantile_inplace(v, q); }
double median(std::vector<double> v) { return quantile_inplace(v, 0.5); }

double mean(const std::vector<double>& v) {
  if (v.empty()) return kNaN;
  double s = 0;
  for (double x : v) s += x;
  return s / static_cast<double>(v.size());
}

double t_quantile(double p, double dof) {
  if (!(dof > 0)) return kNaN;
  boost::math::students_t dist(dof);
  return boost::math::quantile(dist, p);
}

OlsFit ols(const std::vector<double>& x, const std::vector<double>& y, double confidence) {
  if (x.size() != y.size()) throw std::logic_error("ols: x and y differ in length");
  OlsFit f;
  const Eigen::Index n = static_cast<Eigen::Index>(x.size());
  f.n = n;
  if (n < 3) return f;
  // Centred x keeps X^T X well conditioned for large step numbers.
  double xm = 0;
  for (double v : x) xm += v;
  xm /= static_cast<double>(n);
  Eigen::MatrixXd X(n, 2);
  Eigen::VectorXd Y(n);
  for (Eigen::Index i = 0; i < n; ++i) {
    X(i, 0) = 1.0;
    X(i, 1) = x[static_cast<size_t>(i)] - xm;
    Y(i) = y[static_cast<size_t>(i)];
  }
  const Eigen::Matrix2d XtX = X.transpose() * X;
  if (!(XtX(1, 1) > 0)) return f;  // constant x
  const Eigen::Vector2d beta = XtX.ldlt().solve(X.transpose() * Y);
  const Eigen::VectorXd res = Y - X * beta;
  const double sse = res.squaredNorm();
  const double dof = static_cast<double>(n - 2);
  const double s2 = sse / dof;
  const Eigen::Matrix2d cov = s2 * XtX.inverse();
  f.slope = beta(1);
  f.intercept = beta(0) - beta(1) * xm;
  f.se_slope = std::sqrt(std::max(cov(1, 1), 0.0));
  // Var(b0 - b1 xm) = var0 + xm^2 var1 (the centred estimates are uncorrelated).
  f.se_intercept = std::sqrt(std::max(cov(0, 0) + xm * xm * cov(1, 1), 0.0));
  const double tq = t_quantile(0.5 + confidence / 2, dof);
  f.lo = f.slope - tq * f.se_slope;
  f.hi = f.slope + tq * f.se_slope;
  const double ym = Y.mean();
  const double sst = (Y.array() - ym).square().sum();
  f.r2 = sst > 0 ? 1.0 - sse / sst : 1.0;
  f.ok = std::isfinite(f.slope) && std::isfinite(f.se_slope);
  return f;
}

OlsFit fit_loglog(const std::vector<double>& s, const std::vector<double>& err, double confidence) {
  std::vector<double> x, y;
  for (size_t i = 0; i < s.size(); ++i)
    if (err[i] > 0 && std::isfinite(err[i]) && s[i] > 0) {
      x.push_back(std::log(s[i]));
      y.push_back(std::log(err[i]));
    }
  return ols(x, y, confidence);
}

OlsFit fit_drift(const std::vector<double>& s, const std::vector<double>& err, double confidence) {
  std::vector<double> x, y;
  for (size_t i = 0; i < s.size(); ++i)
    if (std::isfinite(err[i])) {
      x.push_back(s[i] / 1000.0);
      y.push_back(err[i]);
    }
  return ols(x, y, confidence);
}

std::int64_t early_count(std::int64_t E, double f) {
  return std::clamp<std::int64_t>(static_cast<std::int64_t>(std::floor(f * static_cast<double>(E))), 1,
                                  std::max<std::int64_t>(E, 1));
}
std::int64_t final_count(std::int64_t E, double f) { return early_count(E, f); }

double early_level(const std::vector<double>& err, std::int64_t n_early) {
  const size_t n = std::min(err.size(), static_cast<size_t>(std::max<std::int64_t>(n_early, 1)));
  std::vector<double> w;
  for (size_t i = 0; i < n; ++i)
    if (std::isfinite(err[i])) w.push_back(err[i]);
  return median(std::move(w));
}

std::int64_t crossing_index(const std::vector<double>& err, std::int64_t n_early, double k) {
  const double level = early_level(err, n_early);
  if (!std::isfinite(level)) return -1;
  const double thr = k * level;
  const size_t w = static_cast<size_t>(std::max<std::int64_t>(n_early, 1));
  std::vector<double> win;
  for (size_t e = w; e < err.size(); ++e) {  // windows ending after the early window
    win.clear();
    for (size_t j = e + 1 - w; j <= e; ++j)
      if (std::isfinite(err[j])) win.push_back(err[j]);
    const double m = median(win);
    if (m > thr) return static_cast<std::int64_t>(e);
  }
  return -1;
}

double pearson(const std::vector<double>& x, const std::vector<double>& y) {
  const size_t n = std::min(x.size(), y.size());
  if (n < 3) return kNaN;
  double mx = 0, my = 0;
  for (size_t i = 0; i < n; ++i) mx += x[i], my += y[i];
  mx /= static_cast<double>(n);
  my /= static_cast<double>(n);
  double sxy = 0, sxx = 0, syy = 0;
  for (size_t i = 0; i < n; ++i) {
    sxy += (x[i] - mx) * (y[i] - my);
    sxx += (x[i] - mx) * (x[i] - mx);
    syy += (y[i] - my) * (y[i] - my);
  }
  return (sxx > 0 && syy > 0) ? sxy / std::sqrt(sxx * syy) : kNaN;
}

namespace {
std::vector<double> ranks(const std::vector<double>& v) {
  std::vector<size_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), size_t{0});
  std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return v[a] < v[b]; });
  std::vector<double> r(v.size());
  for (size_t i = 0; i < idx.size();) {
    size_t j = i;
    while (j + 1 < idx.size() && v[idx[j + 1]] == v[idx[i]]) ++j;
    const double avg = 0.5 * static_cast<double>(i + j) + 1.0;  // ties share their mean rank
    for (size_t k = i; k <= j; ++k) r[idx[k]] = avg;
    i = j + 1;
  }
  return r;
}
}  // namespace

double spearman(const std::vector<double>& x, const std::vector<double>& y) { return pearson(ranks(x), ranks(y)); }

std::vector<bool> pareto_front(const std::vector<double>& cost, const std::vector<double>& err) {
  const size_t n = cost.size();
  std::vector<bool> on(n, false);
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(cost[i]) || !std::isfinite(err[i])) continue;
    bool dominated = false;
    for (size_t j = 0; j < n && !dominated; ++j) {
      if (j == i || !std::isfinite(cost[j]) || !std::isfinite(err[j])) continue;
      dominated = cost[j] <= cost[i] && err[j] <= err[i] && (cost[j] < cost[i] || err[j] < err[i]);
    }
    on[i] = !dominated;
  }
  return on;
}

}  // namespace kvsim::analysis
