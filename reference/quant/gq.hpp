// gq: the survey's compensation mechanisms (seed 001, "KV cache quantization
// error compensation"; METHODS.md "Compensation mechanisms surveyed") as
// composable options of one general quantizer, set separately for keys (k...)
// and values (v...). Mixed precision per layer/head is not part of gq.
//
// The algorithm (what the survey describes, made precise here):
//   axis      channel: per channel, groups of G consecutive tokens (KIVI keys);
//             token: per token, groups of G channels (KIVI values, per-token
//             dynamic scaling); tensor: one scale for the whole block being
//             flushed (B tokens x D channels: "per tensor" over a growing cache
//             is defined as per flushed block; G is not used).
//   flush     tokens arrive at full precision; at each flush point (after
//             prefill, and after each decode step's attention: end_step) while
//             the unquantized non-sink tokens number at least window + block,
//             the oldest `block` of them are quantized together. block = 1,
//             window = 0: dynamic per token at arrival (seen at full precision
//             only in its own step, as KIVI's current token); block = 128,
//             window = 0: per block of 128 tokens; block = 1, window = R: a
//             FIFO of R recent tokens (KIVI values); block = R, window = 0:
//             KIVI keys. Blocks of the channel axis hold whole groups (B % G == 0).
//   scale     the clipped range [lo, hi] of a group (in the level set's domain):
//             minmax: [min, max]. mse: the best of a fixed grid of 16 ratios
//             r = (32 - i)/32, i = 0..15, shrinking the range around its
//             midpoint, lo = RNE((mn + mx)/2 - r (mx - mn)/2), hi likewise,
//             judged by the exact integer sum of squared errors (i128) of the
//             group's quantize/dequantize round trip in that domain; ties go to
//             the smaller ratio. pct<p> (50 < p <= 100): with the group's n
//             values sorted, k = ceil(p n / 100) (exact rational, k in [1, n]),
//             hi = the k-th smallest, lo = the (n + 1 - k)-th smallest (found
//             exactly by bisection on the integer value); values beyond are
//             clamped by the quantizer.
//   levels    uniform (asymmetric, asym.hpp), log, pow<p>, kmeans (levels.hpp).
//   vdim=d    (kvdim/vvdim, levels=kmeans only; default 1 = scalar k-means)
//             vector quantization: a vector is d consecutive elements of a
//             group in its element order (token-major, then channel): d
//             consecutive channels of one token on the token axis, d
//             consecutive tokens of one channel on the channel axis; on the
//             tensor axis d consecutive elements of the block's row-major
//             order (channels of a token, running on into the next token
//             when d does not divide D). d divides the group's element
//             count and b d <= 8 (codebooks of 2^(b d) <= 256 vectors); one
//             code of b d bits per vector, so b bits per element.
//   sinks=N   the first N tokens are never quantized (not part of the blocks:
//             blocks start at token N).
//   hh=N      heavy hitters (H2O's accumulated attention, MiKV's "important
//             tokens at high precision"): each token's attention mass is
//             accumulated over the decode steps (observe(), from the replay: per
//             step, per token, the softmax probabilities RNE(e_s 2^30 / W) of
//             every query head of the KV group, summed; prefill attention is
//             not seen). A token becomes a candidate when it is first quantized
//             (key or value); its full-precision copy is kept while it is in the
//             pool; after each flush point, while the pool holds more than N
//             tokens, the one with the smallest accumulated mass (ties: the
//             older) leaves it for good and is seen quantized from then on.
//             Protection is an overlay: the groups' codes and scales are those
//             without protection (the quantized copy exists, as in MiKV).
//   calib=N   k-means codebooks (levels=kmeans) are learned per cache (KV head)
//             and tensor on the first N tokens, just before the tensor's first
//             block is quantized (which waits until N tokens have arrived):
//             the full blocks of [sinks, N), grouped as the tensor's own rule,
//             each value normalised to [0, 1] by its group's min-max range (in
//             double), then levels.hpp kmeans_fit with `seed` (vdim > 1: the
//             groups' vectors, as above).
//   Stored:   per group an fp16 scale and zero (log: scale only), codes of b bits
//             packed 32/b per u32 word (LSB first) in the group's own words, in
//             element order (token-major, then channel) (vdim = d: one code of
//             b d bits per vector, 32/(b d) per word, in vector order; b d in
//             {3, 5, 6, 7} leaves the word's top bits unused, codes never cross
//             words); k-means codebooks (2^(b d) vectors of d levels, 16 bits
//             per level); full-precision tokens (sinks, windows,
//             the heavy-hitter pool's copies) 16 bits per element; with hh > 0
//             the accumulated mass, 32 bits per token.
//
// Defaults reproduce KIVI (per-channel keys, block 128 / window 0; per-token
// values, FIFO window 128; min-max 2-bit, G = 32) bit for bit in the views.
//
// Where the fixed-point model departs from float originals: asym.hpp (each
// stored quantity rounded once); the MSE search uses an exact integer error
// and a fixed grid (GPTQ's float search uses 100 ratios toward 0 on a range
// containing 0; ours shrinks around the midpoint since the zero point is the
// group's minimum); the percentile is an exact order statistic (torch.quantile
// interpolates); log/pow/k-means as stated in levels.hpp.
#pragma once
#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "reference/common.hpp"
#include "reference/fixed/fixed.hpp"
#include "reference/quant/asym.hpp"
#include "reference/quant/cache.hpp"
#include "reference/quant/levels.hpp"

namespace kvsim::ref {

enum GqAxis : int { kAxisChannel = 0, kAxisToken = 1, kAxisTensor = 2 };
enum GqScale : int { kScaleMinMax = 0, kScaleMse = 1, kScalePct = 2 };
enum GqLevels : int { kLevelsUniform = 0, kLevelsLog = 1, kLevelsPow = 2, kLevelsKmeans = 3 };

inline constexpr int kMseGrid = 16;  // ratios (32 - i)/32, i = 0..15

// The resolved options of one tensor (keys or values); plain data (device too).
struct GqTensor {
  int bits = 2;
  int axis = kAxisChannel;
  int group = 32;   // G: tokens (channel axis) or channels (token axis)
  int block = 128;  // B: tokens quantized per flush
  int window = 0;   // R: unquantized recent tokens kept after a flush
  int scale = kScaleMinMax;
  i64 pct_num = 100, pct_den = 1;  // p = num/den percent
  int levels = kLevelsUniform;
  i64 pow_num = 1, pow_den = 1;  // exponent p = num/den
  int vdim = 1;  // d: elements per k-means vector (levels=kmeans; 1 = scalar)
};

struct GqConfig {
  GqTensor k, v;
  int sinks = 0, hh = 0, calib = 0;
  u64 seed = 1;
};

// ------------------------------------------------------------ group geometry
KVSIM_HD inline int gq_groups_per_block(const GqTensor& c, int D) {
  return c.axis == kAxisChannel ? (c.block / c.group) * D : c.axis == kAxisToken ? c.block * (D / c.group) : 1;
}
// Group i of the block starting at token t0: tokens [*gt0, *gt0 + *nt), channels [*d0, *d0 + *nd).
KVSIM_HD inline void gq_group_rect(const GqTensor& c, int D, i64 t0, int i, i64* gt0, int* nt, int* d0, int* nd) {
  if (c.axis == kAxisChannel) {
    *gt0 = t0 + static_cast<i64>(i / D) * c.group;
    *nt = c.group;
    *d0 = i % D;
    *nd = 1;
  } else if (c.axis == kAxisToken) {
    const int per = D / c.group;
    *gt0 = t0 + i / per;
    *nt = 1;
    *d0 = (i % per) * c.group;
    *nd = c.group;
  } else {
    *gt0 = t0;
    *nt = c.block;
    *d0 = 0;
    *nd = D;
  }
}
KVSIM_HD inline int gq_group_size(const GqTensor& c, int D) {
  return c.axis == kAxisChannel ? c.group : c.axis == kAxisToken ? c.group : c.block * D;
}
// Bits of one code: b per element, b d per k-means vector.
KVSIM_HD inline int gq_code_bits(const GqTensor& c) { return c.bits * c.vdim; }
KVSIM_HD inline int gq_words_per_group(const GqTensor& c, int D) {
  const i64 n = gq_group_size(c, D) / c.vdim;  // codes per group
  const int per = codes_per_word(gq_code_bits(c));
  return static_cast<int>((n + per - 1) / per);
}
// Q.15 entries of one k-means codebook: 2^(b d) vectors of d levels (0 without k-means).
KVSIM_HD inline int gq_codebook_size(const GqTensor& c) {
  return c.levels == kLevelsKmeans ? (1 << gq_code_bits(c)) * c.vdim : 0;
}

// One group's elements: element e (token-major, then channel) is
// base[(e / nd) * tstride + e % nd].
struct GqGroup {
  const i32* x;  // first element
  i32* xhat;     // same layout, receives the dequantized values
  i64 tstride;   // elements between consecutive tokens
  int nt, nd;
  KVSIM_HD i64 n() const { return static_cast<i64>(nt) * nd; }
  KVSIM_HD i64 at(i64 e) const { return (e / nd) * tstride + e % nd; }
};

// ------------------------------------------------------------ the per-group core
// The value of element x in the level set's domain (pow: the transformed value).
KVSIM_HD inline i32 gq_domain(const GqTensor& c, i32 x) {
  return c.levels == kLevelsPow ? pow_signed(x, c.pow_num, c.pow_den) : x;
}
KVSIM_HD inline AsymParams gq_params(const GqTensor& c, i64 lo, i64 hi) {
  if (c.levels == kLevelsLog) return log_params(lo, hi);
  return asym_params(static_cast<i32>(lo), static_cast<i32>(hi), c.levels == kLevelsKmeans ? 1 : c.bits);
}
// Code of a domain value y.
KVSIM_HD inline u8 gq_code(const GqTensor& c, i32 y, AsymParams p, const i32* cb) {
  switch (c.levels) {
    case kLevelsLog: return log_quantize(y, p, c.bits);
    case kLevelsKmeans: return kmeans_quantize(y, p, cb, 1 << c.bits);
    default: return asym_quantize(y, p, c.bits);
  }
}
// Dequantized domain value of a code.
KVSIM_HD inline i32 gq_decode(const GqTensor& c, u8 q, AsymParams p, const i32* cb) {
  switch (c.levels) {
    case kLevelsLog: return log_dequantize(q, p, c.bits);
    case kLevelsKmeans: return kmeans_dequantize(q, p, cb);
    default: return asym_dequantize(q, p);
  }
}
// Code of one vector (d = c.vdim > 1: k-means vector quantization) or of one
// element (d = 1) from its domain values y[0..d).
KVSIM_HD inline u8 gq_unit_code(const GqTensor& c, const i32* y, AsymParams p, const i32* cb) {
  return c.vdim > 1 ? kmeans_vq_quantize(y, c.vdim, p, cb, 1 << gq_code_bits(c)) : gq_code(c, y[0], p, cb);
}
// Dequantized domain value of coordinate i of a unit's code.
KVSIM_HD inline i32 gq_unit_decode(const GqTensor& c, u8 q, int i, AsymParams p, const i32* cb) {
  return c.vdim > 1 ? kmeans_level_dequantize(cb[q * c.vdim + i], p) : gq_decode(c, q, p, cb);
}
// The domain values of unit u (elements u d .. u d + d - 1) of the group.
KVSIM_HD inline void gq_unit_values(const GqTensor& c, const GqGroup& g, i64 u, i32* y) {
  KVSIM_CHECK(c.vdim >= 1 && c.vdim <= kMaxVqDim, "gq: vdim beyond the vector buffer (gq_config checks b d <= 8)");
  for (int i = 0; i < c.vdim; ++i) y[i] = gq_domain(c, g.x[g.at(u * c.vdim + i)]);
}

// Domain value back to the entry format.
KVSIM_HD inline i32 gq_undomain(const GqTensor& c, i32 y) {
  return c.levels == kLevelsPow ? pow_signed(y, c.pow_den, c.pow_num) : y;
}

// k-th smallest (1-based) domain value of the group, by bisection on the value.
KVSIM_HD inline i64 gq_order_stat(const GqTensor& c, const GqGroup& g, i64 k, i64 mn, i64 mx) {
  i64 lo = mn, hi = mx;  // invariant: count(<= hi) >= k
  while (lo < hi) {
    const i64 mid = fx::shift_right_floor(lo + hi, 1);
    i64 cnt = 0;
    for (i64 e = 0; e < g.n(); ++e) cnt += gq_domain(c, g.x[g.at(e)]) <= mid ? 1 : 0;
    if (cnt >= k) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

// Exact sum of squared domain errors of the group for params p.
KVSIM_HD inline u128 gq_sq_error(const GqTensor& c, const GqGroup& g, AsymParams p, const i32* cb) {
  u128 s = 0;
  i32 y[kMaxVqDim];
  for (i64 u = 0; u < g.n() / c.vdim; ++u) {
    gq_unit_values(c, g, u, y);
    const u8 q = gq_unit_code(c, y, p, cb);
    for (int i = 0; i < c.vdim; ++i) {
      const i64 d = static_cast<i64>(y[i]) - gq_unit_decode(c, q, i, p, cb);  // |d| < 2^33
      s += static_cast<u128>(static_cast<i128>(d) * d);  // n < 2^16 terms of < 2^66: < 2^82
    }
  }
  return s;
}

// Quantizes one group: chooses its params by the scale rule, writes its codes
// (words zeroed by the caller, `codes` = the group's first word) and x_hat.
KVSIM_HD inline AsymParams gq_quantize_group(const GqTensor& c, const GqGroup& g, const i32* cb, u32* codes) {
  i64 mn = gq_domain(c, g.x[0]), mx = mn;
  for (i64 e = 1; e < g.n(); ++e) {
    const i64 y = gq_domain(c, g.x[g.at(e)]);
    mn = y < mn ? y : mn;
    mx = y > mx ? y : mx;
  }
  i64 lo = mn, hi = mx;
  if (c.scale == kScalePct) {
    const i64 n = g.n();
    // ceil(p n / 100): pct_num < 10^12 (12 digits), n <= 2^16: < 2^57
    i64 k = fx::div_floor(c.pct_num * n + c.pct_den * 100 - 1, c.pct_den * 100);
    k = k < 1 ? 1 : (k > n ? n : k);
    hi = gq_order_stat(c, g, k, mn, mx);
    lo = gq_order_stat(c, g, n + 1 - k, mn, mx);
  }
  AsymParams p = gq_params(c, lo, hi);
  if (c.scale == kScaleMse) {
    u128 best = gq_sq_error(c, g, p, cb);
    for (int i = 1; i < kMseGrid; ++i) {
      const i64 r = 32 - i;  // ratio r / 32
      const i64 lo_r = fx::div_rne((mn + mx) * 32 - r * (mx - mn), i64{64});
      const i64 hi_r = fx::div_rne((mn + mx) * 32 + r * (mx - mn), i64{64});
      const AsymParams pr = gq_params(c, lo_r, hi_r);
      const u128 err = gq_sq_error(c, g, pr, cb);
      if (err <= best) {  // ties: the smaller ratio
        best = err;
        p = pr;
      }
    }
  }
  i32 y[kMaxVqDim];
  for (i64 u = 0; u < g.n() / c.vdim; ++u) {
    gq_unit_values(c, g, u, y);
    const u8 q = gq_unit_code(c, y, p, cb);
    pack_code(codes, u, q, gq_code_bits(c));
    for (int i = 0; i < c.vdim; ++i) g.xhat[g.at(u * c.vdim + i)] = gq_undomain(c, gq_unit_decode(c, q, i, p, cb));
  }
  return p;
}

// Tokens seen through their quantized twin during the attention of step t
// (t tokens were present at the last flush point, prefill or step t - 1):
// min(t, sinks) sinks (the twin of a sink is its full-precision row) plus the
// flushed blocks (none while a k-means tensor waits for its calibration prefix).
// Independent of the prefill length.
KVSIM_HD inline i64 gq_quantized_tokens(const GqTensor& c, int sinks, int calib, i64 t) {
  const i64 s = t < sinks ? t : sinks;
  if (c.levels == kLevelsKmeans && t < calib) return s;
  const i64 free = t - sinks - c.window;
  return s + (free >= c.block ? (free / c.block) * c.block : 0);
}

// Heavy hitters (hh > 0): after the flush point with n tokens, the tokens
// [sinks, gq_pool_end(c, n)) have entered the pool (each when it was first
// quantized, key or value). Closed form of GqCache's max(ks.nq, vs.nq).
KVSIM_HD inline i64 gq_pool_end(const GqConfig& c, i64 n) {
  const i64 s = n < c.sinks ? n : c.sinks;
  const i64 kn = gq_quantized_tokens(c.k, c.sinks, c.calib, n) - s;
  const i64 vn = gq_quantized_tokens(c.v, c.sinks, c.calib, n) - s;
  return c.sinks + (kn > vn ? kn : vn);
}
// The pool's eviction order: token a (accumulated mass acc_a) leaves before
// token b when its mass is smaller, or equal and a is older. A total order on
// distinct tokens, so "remove the minimum while the pool holds more than hh"
// removes exactly the (size - hh) first tokens of this order.
KVSIM_HD inline bool gq_leaves_first(i64 acc_a, i64 a, i64 acc_b, i64 b) {
  return acc_a < acc_b || (acc_a == acc_b && a < b);
}

// ------------------------------------------------------------ options
// Parses "pct99.9" / "pow0.5" style decimals: the digits after `prefix` as num/den.
inline bool gq_parse_decimal(const std::string& s, const std::string& prefix, i64* num, i64* den) {
  if (s.rfind(prefix, 0) != 0) return false;
  const std::string d = s.substr(prefix.size());
  if (d.empty() || d.size() > 12) return false;
  i64 n = 0, q = 1;
  bool dot = false, digit = false;
  for (char ch : d) {
    if (ch == '.' && !dot) {
      dot = true;
    } else if (ch >= '0' && ch <= '9') {
      n = n * 10 + (ch - '0');
      if (dot) q *= 10;
      digit = true;
    } else {
      return false;
    }
  }
  if (!digit) return false;
  *num = n;
  *den = q;
  return true;
}

// Parses one tensor's options; returns "" or the reason.
inline std::string gq_parse_tensor(GqTensor& t, const std::string& pre, const std::string& axis,
                                   const std::string& scale, const std::string& levels) {
  if (axis == "channel") t.axis = kAxisChannel;
  else if (axis == "token") t.axis = kAxisToken;
  else if (axis == "tensor") t.axis = kAxisTensor;
  else return "gq: " + pre + "axis=" + axis + " (use channel, token or tensor)";
  if (scale == "minmax") {
    t.scale = kScaleMinMax;
  } else if (scale == "mse") {
    t.scale = kScaleMse;
  } else if (gq_parse_decimal(scale, "pct", &t.pct_num, &t.pct_den)) {
    t.scale = kScalePct;
    if (t.pct_num * 2 <= t.pct_den * 100 || t.pct_num > t.pct_den * 100)
      return "gq: " + pre + "scale=" + scale + ": the percentile must be in (50, 100]";
  } else {
    return "gq: " + pre + "scale=" + scale + " (use minmax, mse or pct<p>, e.g. pct99.9)";
  }
  if (levels == "uniform") {
    t.levels = kLevelsUniform;
  } else if (levels == "log") {
    t.levels = kLevelsLog;
  } else if (levels == "kmeans") {
    t.levels = kLevelsKmeans;
  } else if (gq_parse_decimal(levels, "pow", &t.pow_num, &t.pow_den)) {
    t.levels = kLevelsPow;
    if (t.pow_num * 10 < t.pow_den || t.pow_num > t.pow_den || t.pow_num > 1000)
      return "gq: " + pre + "levels=" + levels + ": the exponent p must be in [0.1, 1] with at most 3 decimals";
  } else {
    return "gq: " + pre + "levels=" + levels + " (use uniform, log, pow<p> e.g. pow0.5, or kmeans)";
  }
  return {};
}

inline std::string gq_check_tensor(const GqTensor& t, const std::string& pre, int D) {
  const std::string tag = "gq: " + pre;
  if (t.bits < 2 || t.bits > 8) return tag + "bits=" + std::to_string(t.bits) + " must be in [2, 8]";
  if (t.block < 1) return tag + "block must be at least 1";
  if (t.window < 0) return tag + "window must be >= 0";
  if (t.axis == kAxisChannel) {
    if (t.group < 1) return tag + "group must be positive";
    if (t.block % t.group != 0)
      return tag + "block=" + std::to_string(t.block) + " is not a multiple of " + pre + "group=" +
             std::to_string(t.group) + " (axis=channel: a flush quantizes whole groups of tokens)";
  } else if (t.axis == kAxisToken && D > 0) {  // D = 0: head-dim checks skipped
    if (t.group < 1 || D % t.group != 0)
      return tag + "group=" + std::to_string(t.group) + " does not divide the head dim " + std::to_string(D) +
             " (axis=token groups channels)";
  }
  if (t.axis == kAxisToken && t.group < 1) return tag + "group must be positive";
  const i64 n = t.axis == kAxisTensor ? static_cast<i64>(t.block) * D : t.group;  // elements per group
  if (n > 65536)
    return tag + "a group would hold " + std::to_string(n) + " elements (at most 65536: the exact error sums' bound)";
  const std::string vd = pre + "vdim=" + std::to_string(t.vdim);
  if (t.vdim < 1) return tag + "vdim must be at least 1";
  if (t.vdim > 1 && t.levels != kLevelsKmeans)
    return tag + vd + " needs " + pre + "levels=kmeans (vectors are quantized against a learned codebook; the other "
                 "level sets are per element)";
  if (t.bits * t.vdim > 8)
    return tag + "bits=" + std::to_string(t.bits) + " x " + vd + " = " + std::to_string(t.bits * t.vdim) +
           " bits per code: the codebook would hold 2^" + std::to_string(t.bits * t.vdim) +
           " vectors (at most 256: b d <= 8)";
  if (t.vdim > 1 && (t.axis != kAxisTensor || D > 0) && n % t.vdim != 0)
    return tag + vd + " does not divide the group's " + std::to_string(n) + " elements (" +
           (t.axis == kAxisTensor ? pre + "block x head dim" : pre + "group") + "): a vector is " + std::to_string(t.vdim) +
           " consecutive elements of one group";
  return {};
}

// Resolves and checks gq's registry options (kGqOptions in registry.hpp) (head_dim 0: the head-dim checks are skipped);
// "" or the reason. *out is written only when usable.
template <class Config>  // ref::MethodConfig (registry.hpp): opt(key), opt_int(key)
inline std::string gq_config(const Config& m, int head_dim, GqConfig* out) {
  GqConfig c;
  try {
    c.k.bits = static_cast<int>(m.opt_int("kbits"));
    c.v.bits = static_cast<int>(m.opt_int("vbits"));
    c.k.group = static_cast<int>(m.opt_int("kgroup"));
    c.v.group = static_cast<int>(m.opt_int("vgroup"));
    c.k.block = static_cast<int>(m.opt_int("kblock"));
    c.v.block = static_cast<int>(m.opt_int("vblock"));
    c.k.window = static_cast<int>(m.opt_int("kwindow"));
    c.v.window = static_cast<int>(m.opt_int("vwindow"));
    c.sinks = static_cast<int>(m.opt_int("sinks"));
    c.hh = static_cast<int>(m.opt_int("hh"));
    c.calib = static_cast<int>(m.opt_int("calib"));
    c.seed = static_cast<u64>(m.opt_int("seed"));
    c.k.vdim = static_cast<int>(m.opt_int("kvdim"));
    c.v.vdim = static_cast<int>(m.opt_int("vvdim"));
  } catch (const std::exception& e) {
    return std::string("gq: ") + e.what();
  }
  for (const char* key : {"kbits", "vbits", "kgroup", "vgroup", "kblock", "vblock", "kwindow", "vwindow", "sinks", "hh",
                          "calib", "kvdim", "vvdim"})
    if (m.opt_int(key) < 0 || m.opt_int(key) > (1 << 20))
      return std::string("gq: ") + key + "=" + m.opt(key) + " is out of range [0, 2^20]";
  if (std::string w = gq_parse_tensor(c.k, "k", m.opt("kaxis"), m.opt("kscale"), m.opt("klevels")); !w.empty()) return w;
  if (std::string w = gq_parse_tensor(c.v, "v", m.opt("vaxis"), m.opt("vscale"), m.opt("vlevels")); !w.empty()) return w;
  if (std::string w = gq_check_tensor(c.k, "k", head_dim); !w.empty()) return w;
  if (std::string w = gq_check_tensor(c.v, "v", head_dim); !w.empty()) return w;
  const bool km = c.k.levels == kLevelsKmeans || c.v.levels == kLevelsKmeans;
  if (km && c.calib < 1) return "gq: levels=kmeans needs calib=N > 0 (the calibration prefix, tokens)";
  if (!km && c.calib != 0) return "gq: calib=" + m.opt("calib") + " is only used by klevels/vlevels=kmeans";
  for (const GqTensor* t : {&c.k, &c.v})
    if (t->levels == kLevelsKmeans && c.calib < c.sinks + t->block)
      return "gq: calib=" + m.opt("calib") + " must cover at least one flush block after the sinks (sinks + " +
             (t == &c.k ? "k" : "v") + "block = " + std::to_string(c.sinks + t->block) + ")";
  if (out) *out = c;
  return {};
}

// ------------------------------------------------------------ calibration
// The k-means codebook of one tensor from the first `calib` tokens of rows
// X (row t at X + t * tstride, D channels): see the header.
inline std::vector<i32> gq_fit_codebook(const GqTensor& c, int sinks, int calib, const i32* X, i64 tstride, int D,
                                        u64 seed) {
  std::vector<double> samples;
  const i64 nb = calib > sinks ? (calib - sinks) / c.block : 0;
  const int gpb = gq_groups_per_block(c, D);
  for (i64 b = 0; b < nb; ++b)
    for (int i = 0; i < gpb; ++i) {
      i64 t0;
      int nt, d0, nd;
      gq_group_rect(c, D, sinks + b * c.block, i, &t0, &nt, &d0, &nd);
      const i32* g = X + t0 * tstride + d0;
      i64 mn = g[0], mx = g[0];
      for (int a = 0; a < nt; ++a)
        for (int d = 0; d < nd; ++d) {
          mn = std::min<i64>(mn, g[a * tstride + d]);
          mx = std::max<i64>(mx, g[a * tstride + d]);
        }
      if (mx == mn) continue;
      for (int a = 0; a < nt; ++a)
        for (int d = 0; d < nd; ++d)
          samples.push_back(static_cast<double>(g[a * tstride + d] - mn) / static_cast<double>(mx - mn));
    }
  if (samples.empty()) samples.assign(static_cast<size_t>(c.vdim), 0.5);  // constant calibration data: one level
  return kmeans_fit(samples, 1 << gq_code_bits(c), seed, c.vdim);
}

// ------------------------------------------------------------ the cache
// Compressed state of one tensor, in flush order: block b's group i is entry
// b * groups_per_block + i; its words start at entry * words_per_group.
struct GqTensorState {
  i64 nq = 0;  // non-sink tokens quantized: [sinks, sinks + nq)
  std::vector<AsymParams> params;
  std::vector<u32> codes;
  std::vector<i32> codebook;  // k-means: [2^(b d)][d] Q.15 levels (empty until fitted)
};

class GqCache final : public HeadCache {
 public:
  GqCache(const GqConfig& c, int head_dim) : HeadCache(head_dim), c_(c) {}

  void prefill(const i32* K, const i32* V, i64 n) override {
    for (i64 t = 0; t < n; ++t) add_token(K + t * d_, V + t * d_);
    flush_point();
  }
  void append(const i32* k, const i32* v) override { add_token(k, v); }
  void end_step() override { flush_point(); }
  bool observes() const override { return c_.hh > 0; }
  void observe(const i64* w, i64 n) override {
    for (i64 s = 0; s < n && s < size(); ++s) acc_[static_cast<size_t>(s)] += w[s];
  }

  u64 stored_bits() const override {
    const u64 D = static_cast<u64>(d_), n = static_cast<u64>(size());
    u64 bits = 0;
    for (int w = 0; w < 2; ++w) {
      const GqTensor& c = w ? c_.v : c_.k;
      const GqTensorState& s = w ? vs_ : ks_;
      bits += static_cast<u64>(s.nq) * D * static_cast<u64>(c.bits);
      bits += static_cast<u64>(s.params.size()) * (c.levels == kLevelsLog ? 16u : 32u);
      bits += static_cast<u64>(s.codebook.size()) * 16u;
      bits += (n - static_cast<u64>(s.nq)) * D * 16u;
      for (i64 t : pool_)
        if (t < c_.sinks + s.nq) bits += D * 16u;  // the pool's full-precision copy
    }
    if (c_.hh > 0) bits += n * 32u;
    return bits;
  }

  const GqConfig& config() const { return c_; }
  const GqTensorState& key_state() const { return ks_; }
  const GqTensorState& value_state() const { return vs_; }
  // tokens seen through the quantized twin (sinks count, as in gq_quantized_tokens)
  i64 quantized_keys() const { return std::min<i64>(flushed_n_, c_.sinks) + ks_.nq; }
  i64 quantized_values() const { return std::min<i64>(flushed_n_, c_.sinks) + vs_.nq; }
  const std::vector<i64>& pool() const { return pool_; }  // heavy hitters kept at full precision
  const std::vector<i64>& accumulated() const { return acc_; }

 private:
  void add_token(const i32* k, const i32* v) {
    kfp_.insert(kfp_.end(), k, k + d_);
    vfp_.insert(vfp_.end(), v, v + d_);
    khq_.insert(khq_.end(), k, k + d_);
    vhq_.insert(vhq_.end(), v, v + d_);
    acc_.push_back(0);
    prot_.push_back(0);
    push_view(k, v);
  }

  // Quantizes as many blocks of tensor w as the flush rule allows.
  void flush(int w) {
    const GqTensor& c = w ? c_.v : c_.k;
    GqTensorState& s = w ? vs_ : ks_;
    std::vector<i32>& fp = w ? vfp_ : kfp_;
    std::vector<i32>& hq = w ? vhq_ : khq_;
    const i64 n = size();
    if (c.levels == kLevelsKmeans && s.codebook.empty()) {  // fitted just before the first block is quantized
      if (n < c_.calib || n - c_.sinks - s.nq < static_cast<i64>(c.window) + c.block) return;
      s.codebook = gq_fit_codebook(c, c_.sinks, c_.calib, fp.data(), d_, d_, c_.seed + static_cast<u64>(w));
    }
    const int gpb = gq_groups_per_block(c, d_), wpg = gq_words_per_group(c, d_);
    while (n - c_.sinks - s.nq >= static_cast<i64>(c.window) + c.block) {
      const i64 b0 = c_.sinks + s.nq;
      for (int i = 0; i < gpb; ++i) {
        i64 t0;
        int nt, d0, nd;
        gq_group_rect(c, d_, b0, i, &t0, &nt, &d0, &nd);
        const size_t w0 = s.codes.size();
        s.codes.resize(w0 + static_cast<size_t>(wpg), 0u);
        const GqGroup g{fp.data() + t0 * d_ + d0, hq.data() + t0 * d_ + d0, d_, nt, nd};
        s.params.push_back(gq_quantize_group(c, g, s.codebook.data(), s.codes.data() + w0));
      }
      s.nq += c.block;
    }
  }

  void set_view(i64 t) {
    const bool p = prot_[static_cast<size_t>(t)] != 0;
    const bool kq = t >= c_.sinks && t < c_.sinks + ks_.nq && !p;
    const bool vq = t >= c_.sinks && t < c_.sinks + vs_.nq && !p;
    const size_t at = static_cast<size_t>(t) * d_;
    std::copy_n((kq ? khq_ : kfp_).data() + at, d_, key_row(t));
    std::copy_n((vq ? vhq_ : vfp_).data() + at, d_, value_row(t));
  }

  void flush_point() {
    flushed_n_ = size();
    const i64 k0 = ks_.nq, v0 = vs_.nq, first0 = std::max(k0, v0);
    flush(0);
    flush(1);
    const i64 first1 = std::max(ks_.nq, vs_.nq);
    KVSIM_CHECK(c_.sinks + first1 == gq_pool_end(c_, size()), "gq: pool end off its closed form");
    // new heavy-hitter candidates: tokens quantized for the first time
    for (i64 t = c_.sinks + first0; t < c_.sinks + first1; ++t) {
      pool_.push_back(t);
      prot_[static_cast<size_t>(t)] = 1;
    }
    std::vector<i64> dropped;
    while (static_cast<i64>(pool_.size()) > c_.hh) {
      size_t m = 0;
      for (size_t i = 1; i < pool_.size(); ++i) {
        if (gq_leaves_first(acc_[static_cast<size_t>(pool_[i])], pool_[i], acc_[static_cast<size_t>(pool_[m])],
                            pool_[m]))
          m = i;
      }
      prot_[static_cast<size_t>(pool_[m])] = 0;
      dropped.push_back(pool_[m]);
      pool_.erase(pool_.begin() + static_cast<std::ptrdiff_t>(m));
    }
    for (i64 t = c_.sinks + k0; t < c_.sinks + ks_.nq; ++t) set_view(t);
    for (i64 t = c_.sinks + v0; t < c_.sinks + vs_.nq; ++t) set_view(t);
    for (i64 t : dropped) set_view(t);
  }

  GqConfig c_;
  GqTensorState ks_, vs_;
  std::vector<i32> kfp_, vfp_, khq_, vhq_;  // [n][D]: full precision; quantized twin (fp until quantized)
  std::vector<i64> acc_;                    // [n] accumulated attention mass (Q.30 sums)
  std::vector<char> prot_;                  // [n] in the heavy-hitter pool
  std::vector<i64> pool_;
  i64 flushed_n_ = 0;  // tokens present at the last flush point
};

}  // namespace kvsim::ref
