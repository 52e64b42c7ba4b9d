// Double-precision statistics of a (small) trace, for the synthetic
// generator's tests: key outlier channels, attention sink and locality, value
// tails, RoPE consistency. Reads whole tensors of one layer, so only for
// small test traces.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "traces/half.hpp"
#include "traces/trace.hpp"

namespace kvsim::traces::test {

// All rows of one tensor of one layer, [T][H][D], read in chunks.
inline std::vector<float> read_all(const TraceReader& r, int layer, Tensor t) {
  const int64_t T = r.meta().num_tokens, step = 512;
  std::vector<float> all, part;
  all.reserve(static_cast<size_t>(T * r.meta().row_elems(t)));
  for (int64_t t0 = 0; t0 < T; t0 += step) {
    r.read_float(layer, t, t0, std::min(step, T - t0), part);
    all.insert(all.end(), part.begin(), part.end());
  }
  return all;
}

// Mean |x| of every channel of one head, over all tokens. x: [T][H][D].
inline std::vector<double> channel_mean_abs(const std::vector<float>& x, int64_t T, int H, int D,
                                            int head) {
  std::vector<double> m(static_cast<size_t>(D), 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int c = 0; c < D; ++c)
      m[static_cast<size_t>(c)] += std::fabs(x[static_cast<size_t>((t * H + head) * D + c)]);
  for (double& v : m) v /= static_cast<double>(T);
  return m;
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct AttentionStats {
  double sink_share = 0;     // mean softmax weight of token 0
  double recent16 = 0;       // mean total weight of s in (t-16, t]
  double back16_32 = 0;      // mean total weight of s in (t-32, t-16]
  double uniform_share = 0;  // mean 1/(t+1) over the evaluated t
  int64_t evaluated = 0;
};

// Causal softmax(q_t . k_s / sqrt(D)) for query head qh at t = t_begin, t_begin
// + stride, ... < T. q: [T][Hq][D], k: [T][Hkv][D].
inline AttentionStats attention_stats(const std::vector<float>& q, const std::vector<float>& k,
                                      const TraceMeta& m, int qh, int64_t t_begin, int64_t stride) {
  const int D = m.head_dim, Hq = m.num_q_heads, Hkv = m.num_kv_heads;
  const int g = qh / (Hq / Hkv);
  const double inv = 1.0 / std::sqrt(static_cast<double>(D));
  AttentionStats st;
  std::vector<double> z;
  for (int64_t t = t_begin; t < m.num_tokens; t += stride) {
    z.assign(static_cast<size_t>(t + 1), 0.0);
    const float* qt = &q[static_cast<size_t>((t * Hq + qh) * D)];
    double zmax = -1e300;
    for (int64_t s = 0; s <= t; ++s) {
      const float* ks = &k[static_cast<size_t>((s * Hkv + g) * D)];
      double d = 0;
      for (int c = 0; c < D; ++c) d += static_cast<double>(qt[c]) * ks[c];
      z[static_cast<size_t>(s)] = d * inv;
      zmax = std::max(zmax, d * inv);
    }
    double sum = 0;
    for (double& v : z) sum += (v = std::exp(v - zmax));
    double recent = 0, back = 0;
    for (int64_t s = 0; s <= t; ++s) {
      const double p = z[static_cast<size_t>(s)] / sum;
      if (t - s < 16) recent += p;
      else if (t - s < 32) back += p;
    }
    st.sink_share += z[0] / sum;
    st.recent16 += recent;
    st.back16_32 += back;
    st.uniform_share += 1.0 / static_cast<double>(t + 1);
    ++st.evaluated;
  }
  if (st.evaluated) {
    const double n = static_cast<double>(st.evaluated);
    st.sink_share /= n;
    st.recent16 /= n;
    st.back16_32 /= n;
    st.uniform_share /= n;
  }
  return st;
}

// Excess-free (Pearson) kurtosis m4 / m2^2 of all values (3 for a normal).
inline double kurtosis(const std::vector<float>& x) {
  double mean = 0;
  for (float v : x) mean += v;
  mean /= static_cast<double>(x.size());
  double m2 = 0, m4 = 0;
  for (float v : x) {
    const double d = v - mean, d2 = d * d;
    m2 += d2;
    m4 += d2 * d2;
  }
  m2 /= static_cast<double>(x.size());
  m4 /= static_cast<double>(x.size());
  return m4 / (m2 * m2);
}

// Largest |RoPE(k_pre) - k| / tolerance over all tokens/heads, where the
// tolerance allows one fp16/bf16 rounding of the stored k and of both stored
// k_pre inputs (rel. 2^-11 for f16, 2^-8 for bf16) plus a tiny absolute part.
inline double rope_mismatch(const std::vector<float>& kpre, const std::vector<float>& k,
                            const TraceMeta& m) {
  const int D = m.head_dim, P2 = D / 2, H = m.num_kv_heads;
  const double eps = m.dtype == DType::f16 ? 0x1.0p-11 : m.dtype == DType::bf16 ? 0x1.0p-8 : 0x1.0p-24;
  double worst = 0;
  for (int64_t t = 0; t < m.num_tokens; ++t)
    for (int h = 0; h < H; ++h) {
      const float* a = &kpre[static_cast<size_t>((t * H + h) * D)];
      const float* b = &k[static_cast<size_t>((t * H + h) * D)];
      for (int i = 0; i < P2; ++i) {
        const double w = std::pow(m.rope_theta, -2.0 * i / D) * static_cast<double>(t);
        const double c = std::cos(w), s = std::sin(w);
        const double x = a[i], y = a[i + P2];
        const double r0 = x * c - y * s, r1 = y * c + x * s;
        const double tol0 = eps * (std::fabs(b[i]) + std::fabs(x) + std::fabs(y)) + 1e-6;
        const double tol1 = eps * (std::fabs(b[i + P2]) + std::fabs(x) + std::fabs(y)) + 1e-6;
        worst = std::max(worst, std::fabs(r0 - b[i]) / tol0);
        worst = std::max(worst, std::fabs(r1 - b[i + P2]) / tol1);
      }
    }
  return worst;
}

}  // namespace kvsim::traces::test
