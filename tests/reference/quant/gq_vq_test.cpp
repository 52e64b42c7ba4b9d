// gq vector k-means (kvdim/vvdim, levels.hpp kmeans_vq_quantize / kmeans_fit):
// d = 1 is the scalar path bit for bit (quantizer and fit, against a copy of
// the scalar fit as it was before vectors); the nearest centroid against an
// exact (cpp_int) and a long double brute force on random groups; ties to the
// lower index; a product codebook reproduces the scalar quantizer; packing of
// b d-bit codes; the fit is deterministic and independent of the sample order
// on separated clusters; option errors; stored bits.
#include <catch2/catch.hpp>

#include <boost/multiprecision/cpp_int.hpp>
#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "reference/quant/gq.hpp"
#include "reference/quant/registry.hpp"
#include "tests/reference/quant/gq_util.hpp"

using namespace kvsim;
using gq_test::gq_spec;
using gq_test::random_rows;
using boost::multiprecision::cpp_int;

namespace {

// The scalar fit exactly as levels.hpp had it before vectors (the pin for d = 1).
std::vector<i32> scalar_fit_before_vectors(const std::vector<double>& x, int K, u64 seed) {
  u64 st = seed;
  auto next = [&st]() {
    st += 0x9E3779B97F4A7C15ull;
    u64 z = st;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  auto unit = [&]() { return static_cast<double>(next() >> 11) * 0x1.0p-53; };
  const size_t n = x.size();
  std::vector<double> c;
  c.push_back(x[next() % n]);
  std::vector<double> d2(n);
  while (static_cast<int>(c.size()) < K) {
    double tot = 0;
    for (size_t i = 0; i < n; ++i) {
      double best = 1e300;
      for (double ck : c) best = std::min(best, (x[i] - ck) * (x[i] - ck));
      d2[i] = best;
      tot += best;
    }
    if (tot <= 0) {
      c.push_back(c.back());
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
    c.push_back(x[pick]);
  }
  std::vector<int> asg(n, -1);
  for (int it = 0; it < 100; ++it) {
    bool changed = false;
    std::vector<double> sum(static_cast<size_t>(K), 0.0);
    std::vector<i64> cnt(static_cast<size_t>(K), 0);
    for (size_t i = 0; i < n; ++i) {
      int b = 0;
      double bd = (x[i] - c[0]) * (x[i] - c[0]);
      for (int k = 1; k < K; ++k) {
        const double d = (x[i] - c[k]) * (x[i] - c[k]);
        if (d < bd) {
          bd = d;
          b = k;
        }
      }
      if (asg[i] != b) changed = true;
      asg[i] = b;
      sum[b] += x[i];
      ++cnt[b];
    }
    for (int k = 0; k < K; ++k)
      if (cnt[k] > 0) c[k] = sum[k] / static_cast<double>(cnt[k]);
    if (!changed) break;
  }
  std::sort(c.begin(), c.end());
  std::vector<i32> out(static_cast<size_t>(K));
  for (int k = 0; k < K; ++k) {
    const long long v = std::llround(c[k] * static_cast<double>(1 << ref::kCodebookFrac));
    out[k] = static_cast<i32>(std::clamp<long long>(v, 0, 1 << ref::kCodebookFrac));
  }
  return out;
}

// A random codebook of K vectors of d Q.15 levels, lexicographically sorted,
// with some repeated coordinates and one duplicated vector (ties).
std::vector<i32> random_book(std::mt19937_64& rng, int K, int d) {
  std::uniform_int_distribution<i32> u(0, 1 << ref::kCodebookFrac);
  std::vector<std::vector<i32>> v(static_cast<size_t>(K), std::vector<i32>(static_cast<size_t>(d)));
  for (auto& c : v)
    for (auto& x : c) x = rng() % 4 == 0 ? (1 << ref::kCodebookFrac) / 2 : u(rng);
  if (K > 2) v[1] = v[2];
  std::sort(v.begin(), v.end());
  std::vector<i32> out;
  for (const auto& c : v) out.insert(out.end(), c.begin(), c.end());
  return out;
}

// Exact argmin (ties: the lower index) of sum_i (x_i - (z + c_ki s))^2 in Q.55.
int exact_nearest(const i32* x, int d, ref::AsymParams p, const std::vector<i32>& cb, int K) {
  const cpp_int S = fx::fixed_from_fp16(p.scale, ref::kScaleFrac), Z = fx::fixed_from_fp16(p.zero, ref::kScaleFrac);
  int best = 0;
  cpp_int bd;
  for (int k = 0; k < K; ++k) {
    cpp_int s = 0;
    for (int i = 0; i < d; ++i) {
      const cpp_int e = (cpp_int(x[i]) << 35) - ((Z << 15) + S * cb[static_cast<size_t>(k * d + i)]);
      s += e * e;
    }
    if (k == 0 || s < bd) {
      bd = s;
      best = k;
    }
  }
  return best;
}

long double ld_dist(const i32* x, int d, ref::AsymParams p, const i32* c) {
  const long double s = std::ldexp(static_cast<long double>(fx::fixed_from_fp16(p.scale, ref::kScaleFrac)), -40);
  const long double z = std::ldexp(static_cast<long double>(fx::fixed_from_fp16(p.zero, ref::kScaleFrac)), -40);
  long double t = 0;
  for (int i = 0; i < d; ++i) {
    const long double e = std::ldexp(static_cast<long double>(x[i]), -kEntryFrac) -
                          (z + std::ldexp(static_cast<long double>(c[i]), -ref::kCodebookFrac) * s);
    t += e * e;
  }
  return t;
}

}  // namespace

TEST_CASE("gq vq: d = 1 fits the scalar codebook bit for bit", "[gq][vq]") {
  REQUIRE(ref::kmeans_fit({0.1, 0.1, 0.1, 0.9, 0.9, 0.9}, 2, 7) == std::vector<i32>{3277, 29491});
  std::mt19937_64 rng(77);
  std::uniform_real_distribution<double> u(0, 1);
  for (int trial = 0; trial < 40; ++trial) {
    const int K = 1 << (1 + trial % 4);
    const size_t n = trial % 5 == 0 ? static_cast<size_t>(K / 2 + 1) : 300 + static_cast<size_t>(trial) * 37;
    std::vector<double> x(n);
    for (auto& v : x) {
      v = trial % 3 == 0 ? u(rng) * u(rng) : u(rng);
      if (trial % 4 == 1) v = std::round(v * 5) / 5;  // few distinct values: repeated centroids
    }
    const u64 seed = 1000 + static_cast<u64>(trial);
    INFO("trial " << trial << " K " << K << " n " << n);
    REQUIRE(ref::kmeans_fit(x, K, seed, 1) == scalar_fit_before_vectors(x, K, seed));
  }
}

TEST_CASE("gq vq: d = 1 vector quantizer equals the scalar quantizer", "[gq][vq]") {
  std::mt19937_64 rng(5);
  std::uniform_int_distribution<i32> ux(-(40 << kEntryFrac), 40 << kEntryFrac);
  for (int trial = 0; trial < 400; ++trial) {
    const int bits = 2 + trial % 7, K = 1 << bits;
    const std::vector<i32> cb = random_book(rng, K, 1);
    i32 a = ux(rng), b = ux(rng);
    if (a > b) std::swap(a, b);
    const ref::AsymParams p = ref::asym_params(a, b, 1);
    for (int j = 0; j < 20; ++j) {
      // values on and around the levels (ties) and random ones
      i32 x = ux(rng);
      if (j % 2) x = ref::kmeans_level_dequantize(cb[static_cast<size_t>(rng() % K)], p) + static_cast<i32>(rng() % 3) - 1;
      REQUIRE(ref::kmeans_vq_quantize(&x, 1, p, cb.data(), K) == ref::kmeans_quantize(x, p, cb.data(), K));
    }
  }
}

TEST_CASE("gq vq: nearest centroid by brute force (exact and long double), ties to the lower index", "[gq][vq]") {
  std::mt19937_64 rng(11);
  for (int trial = 0; trial < 200; ++trial) {
    const int d = 2 + trial % 3, bits = d == 2 ? 2 + trial % 3 : 2, K = 1 << (bits * d);
    const std::vector<i32> cb = random_book(rng, K, d);
    const double scale = trial % 5 == 0 ? 200.0 : 1.0;  // wide ranges: the i128 bounds
    const std::vector<i32> g = random_rows(rng, 1, 32, scale);
    const i32 mn = *std::min_element(g.begin(), g.end()), mx = *std::max_element(g.begin(), g.end());
    const ref::AsymParams p = ref::asym_params(mn, mx, 1);
    for (int v = 0; v + d <= 32; v += d) {
      const i32* x = g.data() + v;
      const int q = ref::kmeans_vq_quantize(x, d, p, cb.data(), K);
      INFO("trial " << trial << " d " << d << " vector " << v / d);
      REQUIRE(q == exact_nearest(x, d, p, cb, K));
      long double lmin = ld_dist(x, d, p, cb.data());
      for (int k = 1; k < K; ++k) lmin = std::min(lmin, ld_dist(x, d, p, cb.data() + k * d));
      REQUIRE(ld_dist(x, d, p, cb.data() + q * d) <= lmin * (1 + 1e-15L) + 1e-30L);
    }
  }
  // ties: range [0, 2], centroids (0,0), (1,1), (1,1) (a duplicate), (2,2) in units of the range
  const ref::AsymParams p = ref::asym_params(0, 2 << kEntryFrac, 1);
  const i32 one = 1 << (ref::kCodebookFrac - 1), full = 1 << ref::kCodebookFrac;
  const i32 cb[8] = {0, 0, one, one, one, one, full, full};
  const i32 mid[2] = {1 << (kEntryFrac - 1), 1 << (kEntryFrac - 1)};  // (0.5, 0.5): between (0,0) and (1,1)
  REQUIRE(ref::kmeans_vq_quantize(mid, 2, p, cb, 4) == 0);
  const i32 above[2] = {(1 << (kEntryFrac - 1)) + 1, 1 << (kEntryFrac - 1)};
  REQUIRE(ref::kmeans_vq_quantize(above, 2, p, cb, 4) == 1);  // the duplicate (index 2) never wins
  const i32 cross[2] = {0, 2 << kEntryFrac};  // squared distances: (0,0) 4, (1,1) 2, (2,2) 4
  REQUIRE(ref::kmeans_vq_quantize(cross, 2, p, cb, 4) == 1);
  const i32 near1[2] = {(1 << kEntryFrac) + 1, (1 << kEntryFrac) - 1};  // (1,1) +- 1 LSB: index 1
  REQUIRE(ref::kmeans_vq_quantize(near1, 2, p, cb, 4) == 1);
  REQUIRE(ref::kmeans_level_dequantize(one, p) == 1 << kEntryFrac);
  // a zero scale: every centroid equidistant -> code 0
  const ref::AsymParams z = ref::asym_params(5, 5, 1);
  const i32 five[2] = {5, 5};
  REQUIRE(ref::kmeans_vq_quantize(five, 2, z, cb + 2, 3) == 0);
}

TEST_CASE("gq vq: a product codebook reproduces the scalar quantizer; codes pack b d bits", "[gq][vq]") {
  std::mt19937_64 rng(23);
  for (int trial = 0; trial < 60; ++trial) {
    const int bits = 2 + trial % 2, d = bits == 2 ? 2 + trial / 2 % 3 : 2;
    const int Ks = 1 << bits, K = 1 << (bits * d);
    const std::vector<i32> levels = random_book(rng, Ks, 1);
    std::vector<i32> prod(static_cast<size_t>(K * d));  // lexicographic product of the scalar levels
    for (int k = 0; k < K; ++k)
      for (int i = 0; i < d; ++i) prod[static_cast<size_t>(k * d + i)] = levels[static_cast<size_t>((k >> (bits * (d - 1 - i))) % Ks)];
    ref::GqTensor s;
    s.bits = bits;
    s.levels = ref::kLevelsKmeans;
    s.scale = trial % 3 == 0 ? ref::kScaleMse : trial % 3 == 1 ? ref::kScalePct : ref::kScaleMinMax;
    s.pct_num = 95;
    ref::GqTensor v = s;
    v.vdim = d;
    // a channel-axis group: G = 12 tokens of one channel (stride D = 5); vectors = d consecutive tokens
    const int G = 12, D = 5;
    const std::vector<i32> x = random_rows(rng, G, D, 2.0);
    std::vector<i32> xs(x.size(), 0), xv(x.size(), 0);
    s.group = v.group = G;
    const int ws = ref::gq_words_per_group(s, D), wv = ref::gq_words_per_group(v, D);
    REQUIRE(wv == (G / d + 32 / (bits * d) - 1) / (32 / (bits * d)));
    std::vector<u32> cs(static_cast<size_t>(ws) + 1, 0u), cv(static_cast<size_t>(wv) + 1, 0u);
    const ref::GqGroup gs{x.data() + 2, xs.data() + 2, D, G, 1}, gv{x.data() + 2, xv.data() + 2, D, G, 1};
    const ref::AsymParams ps = ref::gq_quantize_group(s, gs, levels.data(), cs.data());
    const ref::AsymParams pv = ref::gq_quantize_group(v, gv, prod.data(), cv.data());
    INFO("trial " << trial << " bits " << bits << " d " << d);
    REQUIRE(ps.scale == pv.scale);
    REQUIRE(ps.zero == pv.zero);
    REQUIRE(xs == xv);
    REQUIRE(cv[static_cast<size_t>(wv)] == 0u);  // nothing written past the group's words
    for (int u = 0; u < G / d; ++u) {
      int want = 0;
      for (int i = 0; i < d; ++i) want = want * Ks + ref::unpack_code(cs.data(), u * d + i, bits);
      REQUIRE(ref::unpack_code(cv.data(), u, bits * d) == want);
    }
    if (bits * d == 6)  // 5 codes of 6 bits per word: the top 2 bits stay 0
      for (int w = 0; w < wv; ++w) REQUIRE((cv[static_cast<size_t>(w)] >> 30) == 0u);
  }
}

TEST_CASE("gq vq: the fit is deterministic, sorted, and independent of the sample order", "[gq][vq]") {
  // 16 separated clusters of 2-D points: every seed and every sample order find them
  std::mt19937_64 rng(31);
  std::normal_distribution<double> noise(0, 0.003);
  std::vector<std::vector<double>> pts;
  for (int r = 0; r < 40; ++r)
    for (int a = 0; a < 4; ++a)
      for (int b = 0; b < 4; ++b) pts.push_back({0.1 + 0.25 * a + noise(rng), 0.05 + 0.3 * b + noise(rng)});
  auto flat = [](const std::vector<std::vector<double>>& p) {
    std::vector<double> f;
    for (const auto& v : p) f.insert(f.end(), v.begin(), v.end());
    return f;
  };
  const std::vector<i32> ref0 = ref::kmeans_fit(flat(pts), 16, 1, 2);
  REQUIRE(ref0.size() == 32);
  for (int k = 1; k < 16; ++k)
    REQUIRE(std::lexicographical_compare(ref0.begin() + (k - 1) * 2, ref0.begin() + k * 2, ref0.begin() + k * 2,
                                         ref0.begin() + (k + 1) * 2));
  for (int a = 0; a < 4; ++a)  // one centroid near each cluster centre
    for (int b = 0; b < 4; ++b) {
      int near = 0;
      for (size_t k = 0; k < 32; k += 2)
        near += std::abs(ref0[k] / 32768.0 - (0.1 + 0.25 * a)) < 0.01 && std::abs(ref0[k + 1] / 32768.0 - (0.05 + 0.3 * b)) < 0.01;
      REQUIRE(near == 1);
    }
  for (u64 seed : {2, 3, 99}) {
    std::shuffle(pts.begin(), pts.end(), rng);
    REQUIRE(ref::kmeans_fit(flat(pts), 16, seed, 2) == ref0);
  }
  // random data: same inputs, same integers; d = 4 with 256 centroids
  std::uniform_real_distribution<double> u(0, 1);
  std::vector<double> r(4 * 700);
  for (auto& v : r) v = u(rng) * u(rng);
  const std::vector<i32> a = ref::kmeans_fit(r, 256, 42, 4), b = ref::kmeans_fit(r, 256, 42, 4);
  REQUIRE(a == b);
  REQUIRE(a.size() == 1024);
  // fewer distinct vectors than centroids: every sample vector is a centroid
  const std::vector<double> few = {0.1, 0.2, 0.1, 0.2, 0.9, 0.3, 0.5, 0.5, 0.9, 0.3};
  const std::vector<i32> f = ref::kmeans_fit(few, 4, 7, 2);
  for (size_t i = 0; i < few.size(); i += 2) {
    bool found = false;
    for (size_t k = 0; k < f.size(); k += 2)
      found |= f[k] == std::llround(few[i] * 32768) && f[k + 1] == std::llround(few[i + 1] * 32768);
    REQUIRE(found);
  }
  REQUIRE_THROWS_WITH(ref::kmeans_fit({0.1, 0.2, 0.3}, 4, 1, 2), Catch::Contains("whole vectors"));
}

TEST_CASE("gq vq: caches fit [2^(b d)][d] codebooks, views are the groups' x_hat, stored bits count them", "[gq][vq]") {
  const int D = 32;
  std::mt19937_64 rng(41);
  const i64 T = 230;
  const std::vector<i32> K = random_rows(rng, T, D, 1.0), V = random_rows(rng, T, D, 1.0);
  const std::string o = "kgroup=16,kblock=16,vgroup=8,vwindow=4,calib=60,sinks=2";
  const ref::MethodConfig mv = gq_spec("gq-vq2", o), mk = gq_spec("gq-kmeans2", o);
  REQUIRE(ref::method_info(mv.id).check(mv, D).empty());
  auto bv = ref::method_info(mv.id).make(mv, D), bk = ref::method_info(mk.id).make(mk, D);
  auto& cv = dynamic_cast<ref::GqCache&>(*bv);
  auto& ck = dynamic_cast<ref::GqCache&>(*bk);
  cv.prefill(K.data(), V.data(), 20);
  ck.prefill(K.data(), V.data(), 20);
  for (i64 t = 20; t < T; ++t) {
    cv.append(K.data() + t * D, V.data() + t * D);
    ck.append(K.data() + t * D, V.data() + t * D);
    REQUIRE(cv.quantized_keys() == ck.quantized_keys());
    REQUIRE(cv.quantized_values() == ck.quantized_values());
    cv.end_step();
    ck.end_step();
  }
  const ref::GqConfig& c = cv.config();
  REQUIRE(c.k.vdim == 4);
  REQUIRE(c.v.vdim == 4);
  REQUIRE(cv.key_state().codebook.size() == 1024);
  REQUIRE(cv.value_state().codebook.size() == 1024);
  REQUIRE(cv.key_state().codebook ==
          ref::gq_fit_codebook(c.k, c.sinks, c.calib, K.data(), D, D, c.seed));
  // each key group re-quantized from the codebook gives the view's rows and the stored words
  const ref::GqTensorState& ks = cv.key_state();
  const int gpb = ref::gq_groups_per_block(c.k, D), wpg = ref::gq_words_per_group(c.k, D);
  REQUIRE(wpg == 1);  // 16 tokens = 4 vectors of 8-bit codes
  for (i64 b = 0; b < ks.nq / c.k.block; ++b)
    for (int i = 0; i < gpb; ++i) {
      i64 t0;
      int nt, d0, nd;
      ref::gq_group_rect(c.k, D, c.sinks + b * c.k.block, i, &t0, &nt, &d0, &nd);
      std::vector<i32> xh(static_cast<size_t>(T * D), 0);
      u32 w = 0;
      const ref::GqGroup g{K.data() + t0 * D + d0, xh.data() + t0 * D + d0, D, nt, nd};
      ref::gq_quantize_group(c.k, g, ks.codebook.data(), &w);
      REQUIRE(w == ks.codes[static_cast<size_t>((b * gpb + i) * wpg)]);
      for (int a = 0; a < nt; ++a) REQUIRE(cv.keys()[(t0 + a) * D + d0] == xh[static_cast<size_t>((t0 + a) * D + d0)]);
    }
  // stored bits: the same code bits (b per element) and params; the codebooks differ by 2 (1024 - 4) levels
  REQUIRE(ks.params.size() == ck.key_state().params.size());
  REQUIRE(ks.codes.size() == ck.key_state().codes.size());  // 16 codes of 2 bits = 4 codes of 8 bits: one word per group
  REQUIRE(cv.stored_bits() - ck.stored_bits() == 2u * (1024u - 4u) * 16u);
  REQUIRE(ref::bits_per_element(mv, 128, 700) > ref::bits_per_element(mk, 128, 700));
}

TEST_CASE("gq vq: bad vector dimensions are rejected with a reason", "[gq][vq]") {
  const int D = 96;
  auto why = [&](const std::string& o) { return ref::gq_config(gq_spec("gq", o), D, nullptr); };
  const std::string km = "klevels=kmeans,vlevels=kmeans,calib=256,";
  REQUIRE(why(km + "kvdim=4,vvdim=2").empty());
  REQUIRE(why(km + "kvdim=1,vvdim=1").empty());
  REQUIRE(why(km + "kbits=4,kvdim=2").empty());  // 256 centroids of 2
  REQUIRE(why(km + "kbits=3,kvdim=2,kgroup=32").empty());  // 6-bit codes, 5 per word
  REQUIRE(why("kvdim=2").find("klevels=kmeans") != std::string::npos);
  REQUIRE(why("klevels=kmeans,calib=256,vvdim=2").find("vlevels=kmeans") != std::string::npos);
  REQUIRE(why(km + "kbits=4,kvdim=4").find("at most 256") != std::string::npos);
  REQUIRE(why(km + "kbits=3,kvdim=3").find("at most 256") != std::string::npos);
  REQUIRE(why(km + "kvdim=3").find("does not divide") != std::string::npos);  // kgroup=32
  REQUIRE(why(km + "vvdim=3,vgroup=32").find("vgroup") != std::string::npos);
  REQUIRE(why(km + "kvdim=3,kgroup=33,kblock=99").empty());
  REQUIRE(why(km + "kaxis=tensor,kblock=1,kvdim=4").empty());  // 96 elements
  REQUIRE(why(km + "kaxis=tensor,kblock=1,kvdim=3").empty());
  REQUIRE(why(km + "kvdim=0").find("at least 1") != std::string::npos);
  REQUIRE(why(km + "vvdim=x").find("not an integer") != std::string::npos);
  // tensor axis with D = 97 elements per token, block 1: 2 does not divide 97
  REQUIRE(ref::gq_config(gq_spec("gq", km + "kaxis=tensor,kblock=1,kvdim=2,vgroup=97"), 97, nullptr).find("does not divide") !=
          std::string::npos);
  // kvsim methods: the preset is listed with its bits per element
  const ref::MethodInfo* vq = ref::find_method("gq-vq2");
  REQUIRE(vq != nullptr);
  REQUIRE(ref::method_info(vq->id).check(ref::default_config(*vq), 128).empty());
}
