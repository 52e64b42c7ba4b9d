// Statistics behind `kvsim report`: percentiles, ordinary-least-squares growth
// fits with t-distribution confidence intervals, the early level and the
// threshold-crossing step, rank correlation and the Pareto front.
//
// Definitions (used by the report, its CSV files and its tests):
//   decode step   s = t - P + 1 for the token index t of an evaluated step and
//                 the prefill length P (so the first decode step is s = 1 and
//                 log s is defined);
//   log-log slope b of ln(err) = ln(a) + b ln(s), fitted by OLS over the
//                 evaluated steps with err > 0 (a power law err = a s^b);
//   drift         the slope of err = c + d (s / 1000), by OLS: change of the
//                 error per 1000 decode steps, in the metric's units;
//   early level   the median of err over the first n_e = max(1, floor(f_e E))
//                 evaluated steps (f_e = 0.05 by default);
//   crossing step the first evaluated step at which the trailing median of
//                 err over the last n_e evaluated steps (the same window size
//                 as the early level, so a sawtooth or one noisy step does not
//                 trigger it) exceeds k times the early level; none if never.
// Confidence intervals: estimate +- t_{(1+c)/2, n-2} * SE with the OLS
// standard error. They assume independent residuals; a sawtooth makes the
// residuals correlated, so on real curves they are optimistic.
#pragma once
#include <cstdint>
#include <vector>

namespace kvsim::analysis {

// Quantile q in [0, 1] with linear interpolation between order statistics
// (type 7, as numpy.quantile's default). v is reordered. NaN when empty.
double quantile_inplace(std::vector<double>& v, double q);
double quantile(std::vector<double> v, double q);
double median(std::vector<double> v);
double mean(const std::vector<double>& v);

// Two-sided Student t quantile: the t with P(T <= t) = p for `dof` degrees
// of freedom (Boost.Math).
double t_quantile(double p, double dof);

struct OlsFit {
  std::int64_t n = 0;              // points used
  double slope = 0, intercept = 0;  // y = intercept + slope x
  double se_slope = 0, se_intercept = 0;
  double lo = 0, hi = 0;  // confidence interval of the slope
  double r2 = 0;
  bool ok = false;  // n >= 3 and x not constant
};

// y = intercept + slope x by OLS (Eigen), CI at `confidence` (e.g. 0.95).
OlsFit ols(const std::vector<double>& x, const std::vector<double>& y, double confidence);

// ln(err) against ln(s) over the points with err > 0 and finite.
OlsFit fit_loglog(const std::vector<double>& s, const std::vector<double>& err, double confidence);
// err against s / 1000 over the finite points: slope = drift per 1K steps.
OlsFit fit_drift(const std::vector<double>& s, const std::vector<double>& err, double confidence);

// Window sizes (in evaluated steps) for a curve of E points.
std::int64_t early_count(std::int64_t E, double early_fraction);
std::int64_t final_count(std::int64_t E, double final_fraction);

double early_level(const std::vector<double>& err, std::int64_t n_early);
// Index e of the crossing (see the header comment) or -1.
std::int64_t crossing_index(const std::vector<double>& err, std::int64_t n_early, double k);

double pearson(const std::vector<double>& x, const std::vector<double>& y);
double spearman(const std::vector<double>& x, const std::vector<double>& y);

// on_front[i]: no other point j has cost_j <= cost_i and err_j <= err_i with
// one of them strictly smaller (lower is better on both axes). Non-finite
// points are never on the front.
std::vector<bool> pareto_front(const std::vector<double>& cost, const std::vector<double>& err);

}  // namespace kvsim::analysis
