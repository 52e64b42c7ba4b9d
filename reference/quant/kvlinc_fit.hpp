// KVLinC's offline fits (reference/quant/kvlinc.hpp): the only place where
// the method uses floating point. They run on the CPU only, once per (layer,
// KV head), in double with Eigen, single-threaded and in a fixed order, so
// the same integers in give the same integers out; the results enter the
// bit-exact path as fixed-point integers, and the CUDA twin receives the very
// same integers (cuda/layer_engine.cu calls these functions on the host).
#pragma once
#include <vector>

#include "reference/common.hpp"

namespace kvsim::ref {

// The affine key correction of one KV head: k~_d = alpha_d * k^_d + beta_d.
//   alpha  i32 Q.24  [D]  clamped to [-64, 64]
//   beta   i32 Q.20  [D]  (entry format) clamped to the i32 range
inline constexpr int kKvlincAlphaFrac = 24;

struct KvlincAffine {
  std::vector<i32> alpha;  // [D] Q.24
  std::vector<i32> beta;   // [D] Q.20
};

// Least squares per channel d over the n calibration tokens:
//   (alpha_d, beta_d) = argmin sum_t (alpha k_hat[t][d] + beta - k[t][d])^2,
// solved in double (Eigen, 2x2 normal equations by LDLT on centred data);
// a channel whose dequantized keys are all equal gets alpha = 1 and
// beta = mean(k - k_hat). Converted once to fixed point by round-half-to-even
// (std::nearbyint in the default rounding mode), after clamping.
//   k, k_hat  [n][D] entry format (full-precision keys, dequantized keys)
KvlincAffine kvlinc_fit_affine(const i32* k, const i32* k_hat, i64 n, int D);

// The linear-attention correction of one KV head (correction=linear; formats:
// reference/attention/linear_correction.hpp):
//   w  i32 Q.24 [r][D]  projection rows
//   c  i64 Q.32 [r]     key offsets:   phi_j(k) = 2^(min(w_j.k - c_j, 0))
//   b  i64 Q.32 [r]     query offsets: g_j(q)   = 2^(min(w_j.q + b_j - m, 0)),
//                       or kLinearOff (feature off, g_j = 0)
//
// train = 0 (random features, as before): w seeded Gaussian rows
// (mt19937_64(seed), Box-Muller) scaled by 1/(sqrt(D) * rms of the calibration
// keys); c_j = max over the calibration keys of w_j.k (fixed point), so
// phi_j <= 1 there; a_j = 2^(b_j + cq_j) >= 0 (cq_j: max over the calibration
// queries of w_j.q) by NNLS (Lawson-Hanson on the normal equations) of the
// LINEARISED attention error, without the clamp g <= 1: for a query q at
// position p (all n tokens quantized), relative to the quantized max logit m^
// and divided by the quantized denominator,
//   target  [sum_{s<=p} (2^(l_s-m^) - 2^(l^_s-m^)) v_s ; sum_{s<=p} (...)]
//   model   sum_j a_j 2^(w_j.q - cq_j - m^) [S_j(p) ; z_j(p)]
// with l (l^) the base-2 logits of the full-precision (dequantized) keys, over
// up to 64 query positions evenly spaced in [n/8, n), all heads of the group.
//
// train = N > 0 (the learned feature map): from that solution, N steps of Adam
// (beta 0.9/0.999, eps 1e-8, cosine-decayed step lr; w in units of its initial
// rms, c and b in log2 units; the loss normalised by its value at the start)
// on w, c and b TOGETHER, on the corrected attention OUTPUT error, squared and
// relative, of the calibration queries:
//   loss = sum_q |o^(q) - o(q)|^2 / |o(q)|^2,
//   o^   = (sum_{s<kq} e^_s v_s + sum_{s in [kq,p]} e_s v_s + sum_j g_j S_j)
//        / (sum_{s<kq} e^_s     + sum_{s in [kq,p]} e_s     + sum_j g_j z_j),
// o the exact output (full-precision keys and values), e^ (e) the softmax
// weights of the dequantized (full-precision) keys on the view's max logit m,
// S_j, z_j over the quantized tokens s < kq, and the streaming view of the
// cache at p: kq = R floor(p / R) (KIVI's key flush, window R; R = 0: kq = p+1).
// Both clamps are modelled exactly as the fixed-point path applies them,
//   phi_j(k) = 2^(min(w_j.k - c_j, 0)),  g_j(q) = 2^(min(w_j.q + b_j - m, 0)),
// with subgradient 0 where a clamp binds (or sits at 0); a_j = 2^(b_j + ...)
// stays positive by construction; features the NNLS left off start at 2^-8 of
// the smallest weight on. Training queries: up to 128 positions evenly spaced
// in [n/8, n - n/4); held-out: up to 32 in [n - n/4, n) (all heads of the
// group; positions with kq = 0 are left out: no correction there). Every 10
// steps (and after the last) the parameters are rounded to their fixed-point
// formats and scored on the held-out queries; the best (the first on ties),
// or the untrained integers when none beats them, is returned. Values enter
// as full precision (the value quantization is not the correction's to fix).
// Single-threaded, fixed order: the same inputs give the same integers.
struct KvlincLinear {
  int rank = 0;
  std::vector<i32> w;  // [r][D]
  std::vector<i64> c;  // [r]
  std::vector<i64> b;  // [r]
};
struct KvlincTrain {
  int steps = 0;      // Adam steps (0: random features + NNLS)
  double lr = 0.1;    // peak step size (cosine decay to 0)
  int window = 0;     // the cache's key window R (KIVI's flush rule) for the training's view; 0: all quantized
};
//   k, v, k_hat  [n][D] entry format;  q  [n][group][D] query format (Q.40)
KvlincLinear kvlinc_fit_linear(const i32* k, const i32* v, const i32* k_hat, const i64* q, int group, i64 n,
                               int D, int rank, u64 seed, const KvlincTrain& train = {});

// The training loss above for the fixed-point parameters L (clamps included),
// on the training queries (held_out = false) or on the held-out ones (true),
// with key window `window`: the score the trained fit minimises and selects
// by. For tests and measurement.
double kvlinc_linear_objective(const i32* k, const i32* v, const i32* k_hat, const i64* q, int group, i64 n,
                               int D, const KvlincLinear& L, bool held_out, int window = 0);

}  // namespace kvsim::ref
