// The ideal oracle: attention of one query against unquantized K/V in high
// precision. This is the measuring stick for every method's error, not part
// of the bit-exact path: it uses float64 and libm's exp.
//
// Inputs are the trace's own values (fp16/bf16/fp32, exact in float), so the
// oracle sees the model's cache as a full-precision engine would. Every sum
// is compensated (Neumaier), so the oracle's own error is a few ulps of
// float64 (about 1e-15 relative); tests/reference/attention checks it against
// Boost.Multiprecision (50 decimal digits) on small cases.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

namespace kvsim::ref {

// A compensated sum (Ogita, Rump and Oishi's Sum2: Knuth's TwoSum on every
// addition, the rounding errors summed apart). Branch-free, so the per-channel
// accumulators of the output vectorise. Its error is about one rounding of
// the total plus n * eps^2 * sum|x|: 1e-15 relative here.
struct CompensatedSum {
  double sum = 0.0, comp = 0.0;
  void add(double x) {
    const double t = sum + x;
    const double bp = t - sum;
    comp += (sum - (t - bp)) + (x - bp);
    sum = t;
  }
  double value() const { return sum + comp; }
};

// One query head against n tokens.
//   q [D], K [n][D], V [n][D] (float, exact trace values)
//   out [D]; probs [n] softmax weights (optional)
inline void oracle_attention(const float* q, const float* K, const float* V, std::int64_t n,
                             int D, std::vector<double>& scores, double* out, double* probs) {
  scores.resize(static_cast<size_t>(n));
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  double m = -INFINITY;
  for (std::int64_t t = 0; t < n; ++t) {
    CompensatedSum s;
    // a float*float product is exact in double (24+24 < 53 bits)
    for (int d = 0; d < D; ++d) s.add(static_cast<double>(q[d]) * K[t * D + d]);
    scores[t] = s.value() * scale;
    m = std::max(m, scores[t]);
  }
  CompensatedSum den;
  for (std::int64_t t = 0; t < n; ++t) {
    scores[t] = std::exp(scores[t] - m);
    den.add(scores[t]);
  }
  const double W = den.value();
  // Per-channel compensated sums, structure of arrays (the loop over d vectorises).
  std::vector<double> sum(static_cast<size_t>(D), 0.0), comp(static_cast<size_t>(D), 0.0);
  for (std::int64_t t = 0; t < n; ++t) {
    const double p = scores[t];
    const float* v = V + t * D;
    for (int d = 0; d < D; ++d) {
      const double x = p * v[d];
      const double s1 = sum[d] + x;
      const double bp = s1 - sum[d];
      comp[d] += (sum[d] - (s1 - bp)) + (x - bp);
      sum[d] = s1;
    }
  }
  for (int d = 0; d < D; ++d) out[d] = (sum[d] + comp[d]) / W;
  if (probs)
    for (std::int64_t t = 0; t < n; ++t) probs[t] = scores[t] / W;
}

}  // namespace kvsim::ref
