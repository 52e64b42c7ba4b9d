// Non-uniform level sets of the general quantizer (gq.hpp), per element, and
// the offline k-means fit of a scalar codebook. Survey (seed 001, section 3.4):
// logarithmic levels, power transform before uniform quantization, vector
// quantization against a learned codebook.
//
// Every function on the bit-exact path is integer-only and KVSIM_HD (shared
// with the CUDA twin). Formats: x, y, x_hat i32 Q11.20 (entry format); fp16
// scale/zero as in asym.hpp; Q.40 working values.
//
// log (symmetric, sign + magnitude): a b-bit code is a sign bit (bit b-1) and a
//   magnitude code c in [0, 2^(b-1) - 1]: c = 0 is 0, c >= 1 is the level
//   m 2^-(c-1), m = fp16(max |x| of the clipped range) (stored as the scale;
//   the zero field is 0). So b = 2 is {0, +-m}, b = 4 is {0, +-m, +-m/2, ...,
//   +-m/64}. Rounding is nearest in the log domain (the original's
//   round(log2|x|)): level j is chosen when |x| >= m 2^(-j-1/2), the geometric
//   midpoint, decided EXACTLY by the integer comparison 2 x^2 4^j >= m^2
//   (i128); below the last midpoint (as if the next level were 0) the code is
//   0. No log2/exp2 is evaluated; there are no ties except x = 0.
// pow<p> (power transform, 0.1 <= p <= 1): y = sign(x) |x|^p, computed as
//   exp2(p log2|x|) with fx::log2_q32 / fx::exp2_q32 (Q.32, error ~2^-31
//   relative) then rounded (RNE) to Q.20; y is quantized by the uniform
//   asymmetric quantizer (asym.hpp) and the dequantized y_hat mapped back by
//   x_hat = sign(y_hat) |y_hat|^(1/p) the same way, saturated to the entry
//   range. The transform is part of the model: a float original computes
//   pow() in fp32 (relative error ~2^-24); ours is 2^-31-accurate and rounded
//   to Q.20 (absolute 2^-21), far below any 2..8-bit step.
// kmeans (scalar codebook, KVQuant's NUQ): a group's clipped range [lo, hi]
//   is stored as zero z = fp16(lo) and scale s = fp16(hi - lo); a codebook of
//   K = 2^b levels c_k in [0, 1], Q.15 integers sorted ascending, is learned
//   offline (kmeans_fit below) on normalised calibration values; the code of
//   x is the k minimising |x - (z + c_k s)|, compared exactly in Q.55 (i128),
//   ties to the lower index; x_hat = RNE(z + c_k s) in Q.20.
// kmeans, vectors of dimension d > 1 (KVQuant's NUQ is scalar; vector
//   quantization against a learned codebook is the survey's, as in PQ/AQLM-style
//   VQ of the cache): d consecutive elements of a group (in the group's element
//   order) form one vector, each element normalised by the group's range (z, s)
//   as above; the codebook holds K = 2^(b d) centroids of dimension d in
//   [0, 1] (Q.15), so the rate stays b bits per element (one code of b d bits
//   per vector). The code is the k minimising the EXACT squared distance
//   sum_i (x_i - (z + c_ki s))^2 in the Q.55 scaling of the scalar path,
//   ties to the lower index: with A_i = x_i - z (Q.55) the distance is
//   sum_i A_i^2 + S g(k), g(k) = S sum_i c_ki^2 - 2 sum_i A_i c_ki (S = s in
//   Q.40 >= 0), so minimising g (i128, |g| < 2^92) is exactly minimising the
//   distance without squaring Q.55 values (which could pass 2^127); S = 0
//   makes every centroid equidistant: code 0. x_hat_i = RNE(z + c_ki s) as
//   the scalar path. With d = 1 this is the scalar path's choice bit for bit
//   (gq keeps the scalar kmeans_quantize for d = 1).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "reference/common.hpp"
#include "reference/fixed/fixed.hpp"
#include "reference/quant/asym.hpp"

namespace kvsim::ref {

// ------------------------------------------------------------ log levels
// Number of non-zero magnitudes of a b-bit log code.
KVSIM_HD inline int log_magnitudes(int bits) { return (1 << (bits - 1)) - 1; }

// The scale of a log group whose clipped range is [lo, hi] (entry format).
KVSIM_HD inline AsymParams log_params(i64 lo, i64 hi) {
  const i64 a = lo < 0 ? -lo : lo, b = hi < 0 ? -hi : hi;
  AsymParams p;
  p.scale = fx::fp16_from_fixed_rne(a > b ? a : b, kEntryFrac);
  p.zero = 0;
  return p;
}

KVSIM_HD inline u8 log_quantize(i32 x, AsymParams p, int bits) {
  const i64 M = fx::fixed_from_fp16(p.scale, kScaleFrac);  // Q.40, < 2^56 (fp16 max 65504)
  if (M <= 0 || x == 0) return 0;
  const i64 X = (x < 0 ? -static_cast<i64>(x) : static_cast<i64>(x)) * (i64{1} << (kScaleFrac - kEntryFrac));
  const i128 m2 = static_cast<i128>(M) * M;  // < 2^112
  i128 a = static_cast<i128>(X) * X * 2;     // < 2^103; stays < 4 m2 < 2^114 in the loop
  const int L = log_magnitudes(bits);
  for (int j = 0; j < L; ++j) {
    if (a >= m2) return static_cast<u8>(((x < 0 ? 1u : 0u) << (bits - 1)) | static_cast<u32>(j + 1));
    a *= 4;
  }
  return 0;
}

KVSIM_HD inline i32 log_dequantize(u8 q, AsymParams p, int bits) {
  const int c = q & ((1 << (bits - 1)) - 1);
  if (c == 0) return 0;
  const i64 M = fx::fixed_from_fp16(p.scale, kScaleFrac);
  const int sh = (kScaleFrac - kEntryFrac) + (c - 1);
  i64 v = sh > 62 ? 0 : fx::shift_right_rne(M, sh);
  v = v > 0x7FFFFFFF ? 0x7FFFFFFF : v;  // fp16 max 65504 > entry range: saturate
  return static_cast<i32>((q >> (bits - 1)) & 1 ? -v : v);
}

// ------------------------------------------------------------ power transform
// sign(x) |x|^(num/den), x and the result in Q.20, saturated to the entry range.
KVSIM_HD inline i32 pow_signed(i32 x, i64 num, i64 den) {
  if (x == 0) return 0;
  const u64 a = x < 0 ? static_cast<u64>(-static_cast<i64>(x)) : static_cast<u64>(x);
  const i64 l = fx::log2_q32(a, kEntryFrac);  // |l| < 32 * 2^32
  const i64 e = fx::div_rne(l * num, den);   // |l num| < 2^37 * 2^10
  i64 y;
  if (e >= (i64{12} << 32)) {
    y = 0x7FFFFFFF;  // |result| >= 2^12 > entry range
  } else {
    y = fx::shift_right_rne(fx::exp2_q32(e), 32 - kEntryFrac);
    y = y > 0x7FFFFFFF ? 0x7FFFFFFF : y;
  }
  return static_cast<i32>(x < 0 ? -y : y);
}

// ------------------------------------------------------------ k-means codebook
inline constexpr int kCodebookFrac = 15;  // codebook levels c_k in [0, 2^15] (Q.15)

// Nearest codebook level for x in the group (s, z); K levels sorted ascending.
KVSIM_HD inline u8 kmeans_quantize(i32 x, AsymParams p, const i32* cb, int K) {
  const i128 S = fx::fixed_from_fp16(p.scale, kScaleFrac);  // Q.40
  const i128 Z = fx::fixed_from_fp16(p.zero, kScaleFrac);
  const i128 T = static_cast<i128>(x) * (i128{1} << (kScaleFrac - kEntryFrac + kCodebookFrac));  // Q.55
  int best = 0;
  i128 bd = 0;
  for (int k = 0; k < K; ++k) {
    i128 d = T - (Z * (i128{1} << kCodebookFrac) + S * cb[k]);  // |.| < 2^72
    d = d < 0 ? -d : d;
    if (k == 0 || d < bd) {
      bd = d;
      best = k;
    }
  }
  return static_cast<u8>(best);
}

// RNE(z + c s) in Q.20 for one Q.15 codebook coordinate c, saturated to the entry range.
KVSIM_HD inline i32 kmeans_level_dequantize(i32 c, AsymParams p) {
  const i128 S = fx::fixed_from_fp16(p.scale, kScaleFrac);
  const i128 Z = fx::fixed_from_fp16(p.zero, kScaleFrac);
  i128 v = fx::shift_right_rne(Z * (i128{1} << kCodebookFrac) + S * c, kScaleFrac - kEntryFrac + kCodebookFrac);
  v = v > 0x7FFFFFFF ? 0x7FFFFFFF : (v < -0x7FFFFFFF ? -0x7FFFFFFF : v);
  return static_cast<i32>(v);
}

KVSIM_HD inline i32 kmeans_dequantize(u8 q, AsymParams p, const i32* cb) { return kmeans_level_dequantize(cb[q], p); }

inline constexpr int kMaxVqDim = 4;  // b >= 2 and b d <= 8 (codebooks of at most 256 vectors)

// Nearest centroid (exact squared distance, ties to the lower index) for the d
// values x[0..d) of one vector in the group (s, z); cb holds K centroids of d
// Q.15 coordinates each ([K][d]), K <= 256. See the header for the exactness.
KVSIM_HD inline u8 kmeans_vq_quantize(const i32* x, int d, AsymParams p, const i32* cb, int K) {
  KVSIM_CHECK(d >= 1 && d <= kMaxVqDim && K >= 1 && K <= 256, "vector k-means: d in [1, 4], at most 256 centroids");
  const i128 S = fx::fixed_from_fp16(p.scale, kScaleFrac);  // Q.40, |S| < 2^56 (fp16 max 65504)
  const i128 Z = fx::fixed_from_fp16(p.zero, kScaleFrac);
  if (S == 0) return 0;
  i128 A[kMaxVqDim];
  for (int i = 0; i < d; ++i)  // Q.55: |x 2^35| < 2^66, |Z 2^15| < 2^71
    A[i] = static_cast<i128>(x[i]) * (i128{1} << (kScaleFrac - kEntryFrac + kCodebookFrac)) - Z * (i128{1} << kCodebookFrac);
  int best = 0;
  i128 bg = 0;
  for (int k = 0; k < K; ++k) {
    const i32* ck = cb + k * d;
    i128 c2 = 0, ac = 0;
    for (int i = 0; i < d; ++i) {
      c2 += static_cast<i128>(ck[i]) * ck[i];  // <= d 2^30
      ac += A[i] * ck[i];                      // |.| < d 2^87
    }
    i128 g = S * c2 - 2 * ac;  // |S c2| < 2^88, |2 ac| < 2^91 (d <= 4)
    KVSIM_CHECK(fx::fits_signed_bits(g, 92), "vector k-means distance term beyond its bound");
    g = S > 0 ? g : -g;  // distance = sum A^2 + S g: S < 0 would reverse the order
    if (k == 0 || g < bg) {
      bg = g;
      best = k;
    }
  }
  return static_cast<u8>(best);
}

// Offline (host, double): K centroids of dim-dimensional samples in [0, 1]^dim
// (x: n vectors of dim coordinates, flattened) by Lloyd's algorithm, k-means++
// initialisation from a splitmix64 stream seeded with `seed`, at most 100
// iterations (stops when no assignment changes); assignment ties go to the
// lower index. Empty clusters: with dim = 1 they keep their centroid (the
// scalar codebooks of levels=kmeans, unchanged); with dim > 1 (where 2^(b d)
// centroids meet few samples far more often) each empty cluster, in index
// order, is re-seeded at the sample farthest from its assigned centroid (ties:
// the lower sample index; a sample re-seeds one cluster at most per
// iteration; none if every sample sits on its centroid), and the iteration
// counts as changed. The centroids are rounded once to Q.15 (clamped to
// [0, 2^15]) and sorted lexicographically on those integers (dim = 1:
// ascending), so the codebook does not depend on the initialisation order.
// Deterministic: same samples, K, dim and seed -> same integers. Returns [K][dim].
inline std::vector<i32> kmeans_fit(const std::vector<double>& x, int K, u64 seed, int dim = 1) {
  if (dim < 1 || x.size() % static_cast<size_t>(dim) != 0)
    throw std::runtime_error("kmeans_fit: the samples are not whole vectors of the dimension");
  if (x.empty()) throw std::runtime_error("kmeans_fit: no calibration samples");
  u64 st = seed;
  auto next = [&st]() {
    st += 0x9E3779B97F4A7C15ull;
    u64 z = st;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  auto unit = [&]() { return static_cast<double>(next() >> 11) * 0x1.0p-53; };
  const size_t n = x.size() / static_cast<size_t>(dim), dd = static_cast<size_t>(dim);
  // squared distance of sample i to centroid k; stops once it reaches `bound`
  // (the terms are >= 0, so a partial sum >= bound decides "not smaller")
  std::vector<double> c;  // [k][dim]
  auto dist = [&](size_t i, size_t k, double bound) {
    const double* a = x.data() + i * dd;
    const double* b = c.data() + k * dd;
    double s = (a[0] - b[0]) * (a[0] - b[0]);
    for (size_t j = 1; j < dd && s < bound; ++j) s += (a[j] - b[j]) * (a[j] - b[j]);
    return s;
  };
  auto push_sample = [&](size_t i) { c.insert(c.end(), x.begin() + static_cast<std::ptrdiff_t>(i * dd), x.begin() + static_cast<std::ptrdiff_t>((i + 1) * dd)); };
  push_sample(next() % n);
  std::vector<double> d2(n);  // squared distance to the nearest centroid chosen so far
  for (size_t i = 0; i < n; ++i) d2[i] = dist(i, 0, 1e300);
  for (size_t m = 1; m < static_cast<size_t>(K); ++m) {
    double tot = 0;
    for (size_t i = 0; i < n; ++i) tot += d2[i];
    if (tot <= 0) {  // fewer distinct vectors than K: repeat the last centroid
      c.insert(c.end(), c.end() - static_cast<std::ptrdiff_t>(dd), c.end());
      continue;
    }
    const double r = unit() * tot;
    double acc = 0;
    size_t pick = n - 1;
    for (size_t i = 0; i < n; ++i) {
      acc += d2[i];
      if (acc > r) {
        pick = i;
        break;
      }
    }
    push_sample(pick);
    for (size_t i = 0; i < n; ++i) d2[i] = std::min(d2[i], dist(i, m, 1e300));
  }
  std::vector<int> asg(n, -1);
  std::vector<double> far(n);  // squared distance to the assigned centroid
  for (int it = 0; it < 100; ++it) {
    bool changed = false;
    std::vector<double> sum(static_cast<size_t>(K) * dd, 0.0);
    std::vector<i64> cnt(static_cast<size_t>(K), 0);
    for (size_t i = 0; i < n; ++i) {
      int b = 0;
      double bd = dist(i, 0, 1e300);
      for (int k = 1; k < K; ++k) {
        const double d = dist(i, static_cast<size_t>(k), bd);
        if (d < bd) {
          bd = d;
          b = k;
        }
      }
      if (asg[i] != b) changed = true;
      asg[i] = b;
      far[i] = bd;
      for (size_t j = 0; j < dd; ++j) sum[static_cast<size_t>(b) * dd + j] += x[i * dd + j];
      ++cnt[static_cast<size_t>(b)];
    }
    for (int k = 0; k < K; ++k)
      if (cnt[static_cast<size_t>(k)] > 0)
        for (size_t j = 0; j < dd; ++j)
          c[static_cast<size_t>(k) * dd + j] = sum[static_cast<size_t>(k) * dd + j] / static_cast<double>(cnt[static_cast<size_t>(k)]);
    if (dim > 1)
      for (int k = 0; k < K; ++k) {
        if (cnt[static_cast<size_t>(k)] > 0) continue;
        size_t f = 0;
        for (size_t i = 1; i < n; ++i)
          if (far[i] > far[f]) f = i;
        if (!(far[f] > 0)) break;
        std::copy_n(x.begin() + static_cast<std::ptrdiff_t>(f * dd), dd, c.begin() + static_cast<std::ptrdiff_t>(static_cast<size_t>(k) * dd));
        far[f] = -1;
        changed = true;
      }
    if (!changed) break;
  }
  std::vector<i32> q(c.size());
  for (size_t e = 0; e < c.size(); ++e) {
    const long long v = std::llround(c[e] * static_cast<double>(1 << kCodebookFrac));
    q[e] = static_cast<i32>(std::clamp<long long>(v, 0, 1 << kCodebookFrac));
  }
  std::vector<size_t> order(static_cast<size_t>(K));
  for (size_t k = 0; k < order.size(); ++k) order[k] = k;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return std::lexicographical_compare(q.begin() + static_cast<std::ptrdiff_t>(a * dd), q.begin() + static_cast<std::ptrdiff_t>((a + 1) * dd),
                                        q.begin() + static_cast<std::ptrdiff_t>(b * dd), q.begin() + static_cast<std::ptrdiff_t>((b + 1) * dd));
  });
  std::vector<i32> out;
  out.reserve(q.size());
  for (size_t k : order) out.insert(out.end(), q.begin() + static_cast<std::ptrdiff_t>(k * dd), q.begin() + static_cast<std::ptrdiff_t>((k + 1) * dd));
  return out;
}

}  // namespace kvsim::ref
