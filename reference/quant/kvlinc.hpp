// KVLinC (Saxena & Roy, 2025, arXiv 2510.05373, "KV cache quantization with
// Hadamard rotation and linear correction"; no public code was available, so
// the algorithm follows the paper's text and the seed document
// shared/seeds/000_*).
//
// The algorithm, as the paper describes it:
//   Keys   quantized per channel, in groups of G tokens along tokens, on the
//          raw (not rotated, post-RoPE) keys, with a full-precision residual
//          window: KIVI's key rule (kivi.hpp).
//   Values rotated along channels by a Hadamard matrix, then quantized per
//          token in groups of G channels in the rotated domain: KIVI's value
//          rule (FIFO window of R) applied to H v. The paper rotates the
//          output back instead of each value; here the view of a quantized
//          value is the dequantized rotated value rotated back,
//              v_view = RNE(H^T r_hat / D)          (H H^T = H^T H = D I),
//          ONE rounding division per element. Attention is linear in the
//          values, so sum_s w_s H^T r_hat_s / D = H^T (sum_s w_s r_hat_s) / D:
//          rotating each value back is algebraically equal to rotating the
//          output back; only the place of the final rounding differs.
//          Full-precision values are seen as they are (H^T H v / D = v exactly).
//   Linear correction of the error that quantized keys cause. The seed's
//          simplified form, implemented here (correction=affine): per KV head
//          and channel, k~_d = alpha_d k^_d + beta_d, fitted by least squares
//          on a calibration prefix to map dequantized keys to full-precision
//          keys. Not the default (correction=none; registry.hpp gives the
//          measurement): a key-MSE fit is not an attention-error fit.
//          correction=linear: the paper's additive linear-attention term,
//          num_d += phi(q)^T S[:, d], den += phi(q)^T z, with
//          S = sum_s phi(k_s) v_s^T, z = sum_s phi(k_s) over the quantized
//          tokens s < kq, accumulated from the FULL-PRECISION keys and values
//          at each key flush (constant memory). The paper learns phi
//          (trainable feature maps fitted on calibration data). Here
//          phi_j(k) = 2^(min(w_j.k - c_j, 0)) and the query side
//          g_j = 2^(min(w_j.q + b_j - m, 0)) (a weight a_j = 2^(b_j + ...)
//          > 0 on the softmax's scale 2^-m), rank r; w, c, b are LEARNED
//          (train = N Adam steps, kvlinc_fit.hpp) on the corrected attention
//          output error of the calibration queries, through the streaming
//          view (KIVI's key window) and both clamps as the fixed-point path
//          applies them, starting from a seeded Gaussian w and NNLS weights
//          (train=0 stops there: random features); the best held-out iterate
//          is kept. Fixed-point formats and bounds:
//          reference/attention/linear_correction.hpp. Keys are seen
//          dequantized (no affine map). The calibration queries come through
//          HeadCache::observe_queries (the replay feeds every token's group
//          of query heads); a fit without them is an error.
//
// Streaming rules (those of KIVI, kivi.hpp): keys flushed R at a time when the
// window reaches R (prefill: all but P mod R), values a FIFO of R
// full-precision tokens (prefill: all but the last R); append, attend, then
// flush. The calibration prefix is the first `calib` = N tokens of the
// sequence as the method sees them (prefill and decode): their full-precision
// keys are kept (a calibration buffer) until the first key flush after which
// all N are quantized (quantized keys >= N). At that flush the affine
// parameters are fitted (kvlinc_fit.hpp: CPU, double, Eigen, deterministic)
// on tokens [0, N) and converted once to fixed point; from then on every
// quantized key - the earlier ones included - is seen corrected; before it,
// quantized keys are seen as dequantized. Closed form (the GPU's view rule):
// during step t the correction is active iff kq(t) >= N. A trace too short
// for that never gets a correction.
//
// Stored: KIVI's state on (k, H v): key codes and fp16 scale/min per channel
// per group, value codes and fp16 scale/min per token per channel group (of
// the rotated value), full-precision windows (16 bits per element); the
// affine parameters (alpha Q.24 and beta Q.20: 64 bits per channel) once
// fitted, and the calibration buffer (16 bits per element) while it is held.
// correction=linear instead: S [r][D] and z [r] (held as exact i128 sums:
// 128 bits each), w [r][D] (Q.24: 32 bits), c and b [r] (i64: 64 bits each),
// and until the fit the calibration data beyond KIVI's windows (keys, values
// and the group's queries, 16 bits per element). The GPU twin keeps S, z at
// every key-flush boundary kq = i R (the prefix states its one-pass design
// needs); the cache itself needs only the current one (constant memory).
//
// Fixed-point model and where it departs from the original's float arithmetic:
//   - the quantizer is asym.hpp's (each stored quantity rounded once from its
//     exact value; the original rounds in fp16 at every operation);
//   - the rotation is the unnormalised integer Hadamard H (fx::hadamard, the
//     pinned construction for D = 12*2^k, 20*2^k, 28*2^k), exact; the
//     original's orthonormal H/sqrt(D) is rounded to fp16 per element. The
//     quantizer is scale-invariant, so quantizing H v instead of H v/sqrt(D)
//     gives the same codes up to the fp16 rounding of the scales. Bound: the
//     rotated value must fit the entry format, |H v| < 2^11; a value beyond
//     that is an error (std::runtime_error naming it), never a wrap;
//   - linear: the feature map's FORM is ours (one exp2 of a projection per
//     feature, fixed point, phi <= 1 and a query weight g <= 1: the max
//     token's weight), not the paper's; its parameters are trained (train >
//     0), but on one (layer, KV head)'s own calibration prefix (the first
//     calib tokens of this trace, 4 query heads x up to 128 positions), not
//     on a calibration corpus, and on the attention output error of those
//     queries (the paper's exact objective could not be read here: only its
//     abstract was reachable; an end-to-end or layer-output loss is likely).
//     The fit is double (offline, deterministic); its integers are what both
//     paths use. On the default trace (2-bit, calib 512, rank 64, every 7th
//     step) training moves mean rel_l2 0.4016 -> 0.3969 (L0) and 0.4104 ->
//     0.4114 (L1), mean KL 0.059 -> 0.066: it fits the calibration queries
//     (training loss -30%) but generalises little (held-out -1..5%) to the
//     decode, whose S, z sum over many more tokens than any calibration
//     query saw. S, z are exact integer sums;
//   - the corrected key RNE(alpha * k^ / 2^24) + beta is saturated to the
//     i32 range of the entry format (alpha, beta are clamped at the fit).
#pragma once
#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "reference/attention/linear_correction.hpp"
#include "reference/common.hpp"
#include "reference/fixed/fixed.hpp"
#include "reference/quant/cache.hpp"
#include "reference/quant/kivi.hpp"
#include "reference/quant/kvlinc_fit.hpp"

namespace kvsim::ref {

enum class KvlincCorrection : int { none, affine, linear };

struct KvlincConfig {
  int bits = 2;
  int group = 32;
  int residual = 128;
  KvlincCorrection correction = KvlincCorrection::none;  // the registry's default, and why: registry.hpp
  i64 calib = 512;  // N calibration tokens
  int rank = 64;    // feature-map rank (correction=linear)
  u64 seed = 0;     // seed of any randomness (correction=linear)
  KvlincTrain train{200, 0.1};  // feature-map training (correction=linear; registry.hpp's defaults)
};

// Empty when the configuration is usable with this head dim, else the reason.
inline std::string kvlinc_check(const KvlincConfig& c, int head_dim) {
  std::string why = kivi_check({c.bits, c.group, c.residual}, head_dim);
  if (!why.empty()) return "kvlinc" + why.substr(4);  // "kivi: ..." -> "kvlinc: ..."
  if (!fx::hadamard_supported(head_dim))
    return "kvlinc: head dim " + std::to_string(head_dim) +
           " has no pinned Hadamard construction (supported: m * 2^k <= 256, m in {1, 12, 20, 28})";
  if (c.calib < 1) return "kvlinc: calib must be at least 1 token";
  if (c.rank < 1 || c.rank > 1024) return "kvlinc: rank must be in [1, 1024]";
  if (c.train.steps < 0 || c.train.steps > 100000) return "kvlinc: train must be in [0, 100000] steps";
  if (!(c.train.lr > 0.0 && c.train.lr <= 1.0)) return "kvlinc: lr must be in (0, 1]";
  return {};
}

// H v of one value row: exact, in i64, then checked against the entry range.
// Returns false (r untouched past the failing element) when |H v| >= 2^11.
KVSIM_HD inline bool kvlinc_rotate_row(const i32* v, i32* r, int D) {
  i64 w[kMaxHeadDim];
  for (int d = 0; d < D; ++d) w[d] = v[d];
  fx::hadamard_inplace(w, D);  // |w| < D * 2^31 <= 2^39: exact in i64
  for (int d = 0; d < D; ++d) {
    if (w[d] <= -(i64{1} << 31) || w[d] >= (i64{1} << 31)) return false;
    r[d] = static_cast<i32>(w[d]);
  }
  return true;
}

// The view of a quantized value: RNE(H^T r_hat / D), one rounding per element.
// |H^T r_hat| < D * 2^31 <= 2^39 (i64, exact); the quotient is below 2^31.
KVSIM_HD inline void kvlinc_unrotate_row(const i32* r_hat, i32* out, int D) {
  i64 w[kMaxHeadDim];
  for (int d = 0; d < D; ++d) w[d] = r_hat[d];
  fx::hadamard_transpose_inplace(w, D);
  for (int d = 0; d < D; ++d) out[d] = static_cast<i32>(fx::div_rne(w[d], static_cast<i64>(D)));
}

// The corrected key of one element: RNE(alpha * k_hat / 2^24) + beta,
// saturated to i32. |alpha * k_hat| < 2^31 * 2^31 = 2^62 (i64, exact).
KVSIM_HD inline i32 kvlinc_affine_key(i32 k_hat, i32 alpha_q24, i32 beta_q20) {
  const i64 y = fx::shift_right_rne(static_cast<i64>(alpha_q24) * k_hat, kKvlincAlphaFrac) + beta_q20;
  const i64 lim = (i64{1} << 31) - 1;
  return static_cast<i32>(fx::clamp(y, -lim, lim));
}

// The error thrown when a rotated value leaves the entry range.
inline std::runtime_error kvlinc_range_error() {
  return std::runtime_error(
      "kvlinc: a Hadamard-rotated value H v is outside the entry format (|H v| >= 2^11); the values of this "
      "trace are too large for the unnormalised rotation");
}

class KvlincCache final : public HeadCache {
 public:
  KvlincCache(const KvlincConfig& c, int head_dim)
      : HeadCache(head_dim), c_(c), inner_({c.bits, c.group, c.residual}, head_dim) {}

  void prefill(const i32* K, const i32* V, i64 n) override {
    std::vector<i32> r(static_cast<size_t>(n) * d_);
    for (i64 t = 0; t < n; ++t) {
      if (!kvlinc_rotate_row(V + t * d_, r.data() + t * d_, d_)) throw kvlinc_range_error();
      push_view(K + t * d_, V + t * d_);
      keep_calib(K + t * d_);
      keep_fp(K + t * d_, V + t * d_);
    }
    inner_.prefill(K, r.data(), n);
    sync();
  }
  void append(const i32* k, const i32* v) override {
    i32 r[kMaxHeadDim];
    if (!kvlinc_rotate_row(v, r, d_)) throw kvlinc_range_error();
    inner_.append(k, r);
    push_view(k, v);
    keep_calib(k);
    keep_fp(k, v);
  }
  void observe_queries(const i64* q, int n) override {
    if (!linear() || fitted_ || q_seen_ >= c_.calib) return;
    if (group_ == 0) group_ = n;
    if (n != group_) throw std::logic_error("kvlinc: observe_queries with a changing number of heads");
    calib_q_.insert(calib_q_.end(), q, q + static_cast<i64>(n) * d_);
    ++q_seen_;
  }
  const LinearCorrection* linear_correction() const override { return fitted_ && linear() ? &lc_ : nullptr; }
  void end_step() override {
    inner_.end_step();
    sync();
  }
  u64 stored_bits() const override {
    const u64 D = static_cast<u64>(d_);
    u64 b = inner_.stored_bits();
    if (fitted_ && !linear()) b += D * 64;                       // alpha, beta
    b += static_cast<u64>(calib_k_.size()) * 16;                 // calibration buffer while held
    if (linear()) {
      const u64 r = static_cast<u64>(c_.rank);
      if (fitted_) b += r * (D + 1) * 128 + r * D * 32 + r * 128;  // S, z (i128); w (Q.24); c, b (i64)
      // full-precision rows held beyond KIVI's windows (before the fit: the calibration data)
      const i64 beyond_k = std::max<i64>(0, inner_.quantized_keys() - acc_);
      const i64 beyond_v = std::max<i64>(0, inner_.quantized_values() - acc_);
      b += static_cast<u64>(beyond_k + beyond_v) * D * 16 + static_cast<u64>(calib_q_.size()) * 16;
    }
    return b;
    return b;
  }

  // The compressed state, for validation and tests.
  const KiviCache& kivi() const { return inner_; }  // codes and scales of (k, H v)
  bool fitted() const { return fitted_; }
  const KvlincAffine& affine() const { return affine_; }  // empty until fitted
  const KvlincLinear& linear_params() const { return linear_; }  // empty until fitted
  const std::vector<i128>& linear_S() const { return S_; }   // [r][D] Q.44
  const std::vector<i128>& linear_z() const { return z_; }   // [r] Q.24

 private:
  bool wants_fit() const { return c_.correction == KvlincCorrection::affine; }
  bool linear() const { return c_.correction == KvlincCorrection::linear; }
  void keep_fp(const i32* k, const i32* v) {
    if (!linear()) return;
    fp_k_.insert(fp_k_.end(), k, k + d_);
    fp_v_.insert(fp_v_.end(), v, v + d_);
  }
  // Accumulate S, z over the full-precision rows [acc_, kq) and drop them.
  void accumulate(i64 kq) {
    const int r = c_.rank;
    for (i64 t = acc_; t < kq; ++t) {
      const i32* k = fp_k_.data() + (t - acc_) * d_;
      const i32* v = fp_v_.data() + (t - acc_) * d_;
      for (int j = 0; j < r; ++j) {
        const i64 phi = linear_key_feature_q24(linear_.w.data() + static_cast<size_t>(j) * d_, linear_.c[j], k, d_);
        z_[j] += phi;
        for (int d = 0; d < d_; ++d) S_[static_cast<size_t>(j) * d_ + d] += static_cast<i128>(phi) * v[d];
      }
    }
    fp_k_.erase(fp_k_.begin(), fp_k_.begin() + (kq - acc_) * d_);
    fp_v_.erase(fp_v_.begin(), fp_v_.begin() + (kq - acc_) * d_);
    acc_ = kq;
  }
  void fit_linear(i64 kq) {
    if (q_seen_ < c_.calib)
      throw std::runtime_error("kvlinc: correction=linear needs the calibration queries (HeadCache::observe_queries) "
                               "of the first calib tokens");
    linear_ = kvlinc_fit_linear(fp_k_.data(), fp_v_.data(), inner_.keys(), calib_q_.data(), group_, c_.calib, d_,
                                c_.rank, c_.seed, {c_.train.steps, c_.train.lr, c_.residual});
    std::vector<i64>().swap(calib_q_);
    S_.assign(static_cast<size_t>(c_.rank) * d_, 0);
    z_.assign(static_cast<size_t>(c_.rank), 0);
    fitted_ = true;
    accumulate(kq);
    lc_ = {c_.rank, linear_.w.data(), linear_.b.data(), S_.data(), z_.data()};
  }
  void keep_calib(const i32* k) {
    if (wants_fit() && !fitted_ && size() <= c_.calib) calib_k_.insert(calib_k_.end(), k, k + d_);
  }
  // Copy newly quantized rows of the inner cache into the view; fit when due.
  void sync() {
    const i64 kq = inner_.quantized_keys(), vq = inner_.quantized_values();
    for (i64 t = vq_; t < vq; ++t) kvlinc_unrotate_row(inner_.values() + t * d_, value_row(t), d_);
    vq_ = vq;
    i64 from = kq_;
    if (linear()) {
      if (!fitted_ && kq >= c_.calib) fit_linear(kq);
      else if (fitted_) accumulate(kq);
    }
    if (wants_fit() && !fitted_ && kq >= c_.calib) {
      affine_ = kvlinc_fit_affine(calib_k_.data(), inner_.keys(), c_.calib, d_);
      fitted_ = true;
      std::vector<i32>().swap(calib_k_);
      from = 0;
    }
    for (i64 t = from; t < kq; ++t) {
      const i32* src = inner_.keys() + t * d_;
      i32* dst = key_row(t);
      for (int d = 0; d < d_; ++d) dst[d] = fitted_ && wants_fit() ? kvlinc_affine_key(src[d], affine_.alpha[d], affine_.beta[d]) : src[d];
    }
    kq_ = kq;
  }

  KvlincConfig c_;
  KiviCache inner_;           // KIVI on (k, H v)
  i64 kq_ = 0, vq_ = 0;       // rows of the view already synced
  bool fitted_ = false;
  KvlincAffine affine_;
  std::vector<i32> calib_k_;  // [min(size, N)][D] full-precision keys until the fit
  // correction=linear
  KvlincLinear linear_;
  std::vector<i128> S_, z_;        // exact sums over the quantized tokens [0, acc_)
  LinearCorrection lc_;
  i64 acc_ = 0;                    // tokens summed into S, z (= kq after the fit)
  std::vector<i32> fp_k_, fp_v_;   // [size - acc_][D] full-precision rows not yet summed
  std::vector<i64> calib_q_;       // [calib][group][D] calibration queries until the fit
  i64 q_seen_ = 0;
  int group_ = 0;
};

}  // namespace kvsim::ref
