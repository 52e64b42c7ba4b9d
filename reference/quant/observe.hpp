// The attention feedback of HeadCache::observe (heavy hitters): the mass of
// each token in one decode step, in an exact integer form shared by the CPU
// replay and the CUDA replay.
//
//   mass[s] = sum over the query heads h of the KV group of
//             RNE(e_hs * 2^30 / W_h)     (Q.30 probability, <= 2^30 each)
// with e_hs the exact softmax numerators (Q.40) and W_h = sum_s e_hs of
// reference/attention/decode_attention.hpp. Bound: mass[s] <= group * 2^30.
#pragma once
#include <vector>

#include "reference/attention/decode_attention.hpp"
#include "reference/common.hpp"
#include "reference/fixed/fixed.hpp"
#include "reference/quant/cache.hpp"

namespace kvsim::ref {

inline constexpr int kMassFrac = 30;

// One query head's probability of one token: RNE(e * 2^30 / W), Q.30 (e <= W).
KVSIM_HD inline i64 attention_mass_q30(i64 e, i64 W) {
  return static_cast<i64>(fx::div_rne(static_cast<i128>(e) * (i128{1} << kMassFrac), static_cast<i128>(W)));
}

// Adds one query head's probabilities (numerators e[n], their sum W) to mass[n].
inline void add_attention_mass(const i64* e, i64 W, i64 n, i64* mass) {
  for (i64 s = 0; s < n; ++s) mass[s] += attention_mass_q30(e[s], W);
}

// Runs the cache's current view against the `group` query rows q[group][D]
// (query format) and hands the step's mass to cache.observe(). n = size().
inline void observe_step(HeadCache& cache, const i64* q, int group, std::vector<i64>& scratch) {
  const i64 n = cache.size();
  const int D = cache.head_dim();
  scratch.assign(static_cast<size_t>(3 * n + D), 0);
  i64* mass = scratch.data();
  i64* logits = mass + n;
  i64* e = logits + n;
  i64* out = e + n;
  for (int g = 0; g < group; ++g) {
    i64 W = 0;
    decode_attention_ref(q + static_cast<size_t>(g) * D, cache.keys(), cache.values(), n, D, logits, out, e, &W);
    add_attention_mass(e, W, n, mass);
  }
  cache.observe(mass, n);
}

}  // namespace kvsim::ref
