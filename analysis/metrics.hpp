// Per-step error metrics of one attention output against the ideal oracle.
// These are computed at the exit boundary (float64), after the bit-exact path.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

namespace kvsim::analysis {

struct StepMetrics {
  double rel_l2 = 0;   // ||o - o_ref||_2 / ||o_ref||_2
  double cosine = 0;   // <o, o_ref> / (||o|| ||o_ref||)
  double attn_kl = 0;  // KL(p_ref || p) of the attention weights, nats
  double max_abs = 0;  // max_d |o_d - o_ref_d|
};

// o, o_ref: [D]. p: weights of the method (numerators e_t and their sum W;
// p_t = e_t / W), p_ref: oracle probabilities [n]. A method weight that
// underflowed to 0 is floored at half its least significant bit (0.5 / W), so
// the KL stays finite and reflects the format's resolution.
inline StepMetrics step_metrics(const double* o, const double* o_ref, int D, const std::int64_t* e,
                                std::int64_t W, const double* p_ref, std::int64_t n) {
  StepMetrics m;
  double err2 = 0, ref2 = 0, dot = 0, o2 = 0;
  for (int d = 0; d < D; ++d) {
    const double diff = o[d] - o_ref[d];
    err2 += diff * diff;
    ref2 += o_ref[d] * o_ref[d];
    o2 += o[d] * o[d];
    dot += o[d] * o_ref[d];
    m.max_abs = std::max(m.max_abs, std::fabs(diff));
  }
  m.rel_l2 = ref2 > 0 ? std::sqrt(err2 / ref2) : std::sqrt(err2);
  m.cosine = (o2 > 0 && ref2 > 0) ? dot / std::sqrt(o2 * ref2) : (o2 == ref2 ? 1.0 : 0.0);
  const double inv_w = 1.0 / static_cast<double>(W);
  double kl = 0;
  for (std::int64_t t = 0; t < n; ++t) {
    if (p_ref[t] <= 0) continue;
    const double p = std::max(static_cast<double>(e[t]), 0.5) * inv_w;
    kl += p_ref[t] * std::log(p_ref[t] / p);
  }
  m.attn_kl = std::max(kl, 0.0);  // rounding can give -1e-17 for identical weights
  return m;
}

}  // namespace kvsim::analysis
