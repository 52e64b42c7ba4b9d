// The statistics of `kvsim report` on inputs with known answers.
#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <vector>

#include "analysis/report_stats.hpp"

using namespace kvsim::analysis;

TEST_CASE("t quantile matches tabulated values", "[report][stats]") {
  CHECK(t_quantile(0.975, 1) == Approx(12.7062).epsilon(1e-4));
  CHECK(t_quantile(0.975, 10) == Approx(2.2281).epsilon(1e-4));
  CHECK(t_quantile(0.995, 30) == Approx(2.7500).epsilon(1e-4));
  CHECK(t_quantile(0.975, 1e6) == Approx(1.95996).epsilon(1e-4));
}

TEST_CASE("quantiles interpolate like numpy", "[report][stats]") {
  CHECK(quantile({1, 2, 3, 4}, 0.5) == Approx(2.5));
  CHECK(quantile({4, 1, 3, 2, 5}, 0.1) == Approx(1.4));
  CHECK(quantile({7}, 0.9) == 7);
  CHECK(std::isnan(quantile({}, 0.5)));
}

TEST_CASE("OLS on an exact line is exact, on noise its interval covers the truth", "[report][stats]") {
  std::vector<double> x, y;
  for (int i = 0; i < 50; ++i) x.push_back(i * 100.0 + 1e5), y.push_back(3.0 - 0.25 * x.back());
  const OlsFit f = ols(x, y, 0.95);
  REQUIRE(f.ok);
  CHECK(f.slope == Approx(-0.25).epsilon(1e-9));
  CHECK(f.intercept == Approx(3.0).epsilon(1e-6));
  CHECK(f.r2 == Approx(1.0));
  // Coverage: over 200 noisy replicates the 95% interval covers the true slope
  // about 95% of the time (binomial: 183..197 with overwhelming probability).
  std::mt19937_64 rng(7);
  std::normal_distribution<double> n(0, 1);
  int covered = 0;
  for (int rep = 0; rep < 200; ++rep) {
    std::vector<double> yy;
    for (double xi : x) yy.push_back(1.0 + 0.002 * xi + n(rng));
    const OlsFit g = ols(x, yy, 0.95);
    covered += g.lo <= 0.002 && 0.002 <= g.hi;
  }
  CHECK(covered >= 180);
  CHECK(covered <= 199);
}

TEST_CASE("power law: the log-log slope recovers the exponent within its interval", "[report][stats]") {
  std::mt19937_64 rng(11);
  std::normal_distribution<double> n(0, 0.05);
  std::vector<double> s, err;
  for (int i = 1; i <= 3000; i += 3) s.push_back(i), err.push_back(0.02 * std::pow(i, 0.42) * std::exp(n(rng)));
  err[5] = 0;  // zeros are left out of the log fit, not fatal
  const OlsFit f = fit_loglog(s, err, 0.95);
  REQUIRE(f.ok);
  CHECK(f.n == 999);
  CHECK(f.lo <= 0.42);
  CHECK(0.42 <= f.hi);
  CHECK(f.hi - f.lo < 0.01);
  CHECK(std::exp(f.intercept) == Approx(0.02).epsilon(0.05));
}

TEST_CASE("linear growth: the drift per 1K steps recovers the slope within its interval", "[report][stats]") {
  std::mt19937_64 rng(13);
  std::normal_distribution<double> n(0, 0.002);
  std::vector<double> s, err;
  for (int i = 1; i <= 4000; i += 5) s.push_back(i), err.push_back(0.05 + 0.004 * i / 1000.0 + n(rng));
  const OlsFit f = fit_drift(s, err, 0.95);
  REQUIRE(f.ok);
  CHECK(f.lo <= 0.004);
  CHECK(0.004 <= f.hi);
  CHECK(f.hi - f.lo < 0.0005);
}

TEST_CASE("too few points give no fit", "[report][stats]") {
  CHECK_FALSE(fit_drift({1, 2}, {1, 2}, 0.95).ok);
  CHECK_FALSE(fit_loglog({1, 2, 3}, {0, 0, 1}, 0.95).ok);
  CHECK_FALSE(ols({5, 5, 5, 5}, {1, 2, 3, 4}, 0.95).ok);
}

TEST_CASE("early level and the threshold crossing", "[report][stats]") {
  CHECK(early_count(2000, 0.05) == 100);
  CHECK(early_count(10, 0.05) == 1);
  CHECK(early_count(0, 0.05) == 1);
  std::vector<double> c(300, 1.0);
  c[1] = 0.5;  // the early level is a median: one low point does not move it
  for (size_t i = 150; i < c.size(); ++i) c[i] = 3.0;
  c[60] = 100;  // a lone spike does not trigger with a window of 5
  CHECK(early_level(c, 5) == 1.0);
  // Trailing median over 5 exceeds 2 once three of the five are 3.0: index 152.
  CHECK(crossing_index(c, 5, 2.0) == 152);
  CHECK(crossing_index(c, 5, 3.5) == -1);
  // Window 1: the raw curve, so the spike at 60 is the first crossing.
  CHECK(crossing_index(c, 1, 2.0) == 60);
  // A steady rise 1.005 + i/100: early level lin[2] = 1.025, threshold 2.05;
  // the trailing median of lin[e-4..e] is lin[e-2], first above 2.05 at e-2 = 105.
  std::vector<double> lin;
  for (int i = 0; i < 400; ++i) lin.push_back(1.005 + i / 100.0);
  CHECK(early_level(lin, 5) == Approx(1.025));
  CHECK(crossing_index(lin, 5, 2.0) == 107);
}

TEST_CASE("Pareto front of a known set", "[report][stats]") {
  //            A     B     C     D     E(dup of B)  F(NaN)
  const std::vector<double> bits{2.0, 3.0, 4.0, 3.5, 3.0, 1.0};
  const std::vector<double> err{0.30, 0.10, 0.05, 0.12, 0.10, NAN};
  const auto f = pareto_front(bits, err);
  CHECK(f == std::vector<bool>{true, true, true, false, true, false});
  // Strictly worse on one axis and equal on the other is dominated.
  CHECK(pareto_front({1, 1}, {0.1, 0.2}) == std::vector<bool>{true, false});
}

TEST_CASE("rank correlation", "[report][stats]") {
  std::vector<double> x, y;
  for (int i = 0; i < 50; ++i) x.push_back(i), y.push_back(std::exp(i / 10.0));
  CHECK(spearman(x, y) == Approx(1.0));
  CHECK(pearson(x, y) < 0.95);
  std::vector<double> yr(y.rbegin(), y.rend());
  CHECK(spearman(x, yr) == Approx(-1.0));
}
