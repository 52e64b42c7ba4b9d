// gq: each mechanism on small hand cases (percentile rank, MSE search, log and
// pow levels, k-means determinism and ties), the streaming rules at axis /
// group / window / sink boundaries +-1, the heavy-hitter budget, the defaults
// against KIVI, and the rejection of bad combinations.
#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <vector>

#include "reference/quant/gq.hpp"
#include "reference/quant/kivi.hpp"
#include "reference/quant/observe.hpp"
#include "reference/quant/registry.hpp"
#include "tests/reference/quant/gq_util.hpp"

using namespace kvsim;
using gq_test::gq_spec;
using gq_test::random_rows;

namespace {
std::unique_ptr<ref::HeadCache> make(const ref::MethodConfig& c, int D) {
  const std::string why = ref::method_info(c.id).check(c, D);
  INFO(why);
  REQUIRE(why.empty());
  return ref::method_info(c.id).make(c, D);
}

ref::GqTensor uniform_tensor(int bits) {
  ref::GqTensor t;
  t.bits = bits;
  t.axis = ref::kAxisToken;
  return t;
}

// Quantizes one row of n values as one group; returns the params, fills xhat.
ref::AsymParams quantize_row(const ref::GqTensor& t, const std::vector<i32>& x, std::vector<i32>& xhat,
                             const i32* cb = nullptr) {
  xhat.assign(x.size(), 0);
  std::vector<u32> codes(x.size(), 0u);
  const ref::GqGroup g{x.data(), xhat.data(), 0, 1, static_cast<int>(x.size())};
  return ref::gq_quantize_group(t, g, cb, codes.data());
}

double sq_err(const std::vector<i32>& a, const std::vector<i32>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += std::pow(static_cast<double>(a[i]) - b[i], 2);
  return s;
}
}  // namespace

TEST_CASE("gq percentile: exact order statistics with rank ceil(p n / 100)", "[gq]") {
  ref::GqTensor t = uniform_tensor(4);
  t.scale = ref::kScalePct;
  std::vector<i32> x;
  for (int i = 1; i <= 10; ++i) x.push_back(i * 1000 * ((i % 2) ? 1 : 1));
  std::swap(x[0], x[7]);  // order must not matter
  std::vector<i32> xh;
  // p = 90: k = ceil(9) = 9 -> hi = 9th smallest (9000), lo = 2nd (2000)
  t.pct_num = 90;
  t.pct_den = 1;
  ref::AsymParams p = quantize_row(t, x, xh);
  REQUIRE(p.scale == ref::asym_params(2000, 9000, 4).scale);
  REQUIRE(p.zero == ref::asym_params(2000, 9000, 4).zero);
  // p = 90.1: k = ceil(9.01) = 10 -> no clipping
  t.pct_num = 901;
  t.pct_den = 10;
  p = quantize_row(t, x, xh);
  REQUIRE(p.scale == ref::asym_params(1000, 10000, 4).scale);
  // p = 89.9: k = ceil(8.99) = 9
  t.pct_num = 899;
  p = quantize_row(t, x, xh);
  REQUIRE(p.scale == ref::asym_params(2000, 9000, 4).scale);
  // clipped values are clamped to the range
  REQUIRE(xh[9] == ref::asym_dequantize(15, ref::asym_params(2000, 9000, 4)));  // 10000 -> top level
  // duplicates: order statistics of {5,5,5,5,1} at p=80: k=4 -> 5, lo = 2nd smallest = 5
  t.pct_num = 80;
  t.pct_den = 1;
  p = quantize_row(t, {5, 5, 5, 5, 1}, xh);
  REQUIRE(p.scale == ref::asym_params(5, 5, 4).scale);
}

TEST_CASE("gq mse: the search picks the grid ratio of least exact error, ties to the smaller ratio", "[gq]") {
  std::mt19937_64 rng(5);
  for (int trial = 0; trial < 30; ++trial) {
    ref::GqTensor t = uniform_tensor(trial % 2 ? 2 : 4);
    t.scale = ref::kScaleMse;
    std::vector<i32> x = random_rows(rng, 1, 64, 1.0);
    if (trial % 3 == 0) x[5] = 12 << kEntryFrac;  // an outlier: clipping should help
    std::vector<i32> xh;
    const ref::AsymParams p = quantize_row(t, x, xh);
    // brute force over the stated grid
    i64 mn = x[0], mx = x[0];
    for (i32 v : x) mn = std::min<i64>(mn, v), mx = std::max<i64>(mx, v);
    double best = -1;
    ref::AsymParams bp{};
    for (int i = 0; i < 16; ++i) {
      const i64 r = 32 - i;
      const i64 lo = fx::div_rne((mn + mx) * 32 - r * (mx - mn), i64{64});
      const i64 hi = fx::div_rne((mn + mx) * 32 + r * (mx - mn), i64{64});
      const ref::AsymParams q = ref::asym_params(static_cast<i32>(lo), static_cast<i32>(hi), t.bits);
      double e = 0;
      for (i32 v : x) e += std::pow(static_cast<double>(v - ref::asym_dequantize(ref::asym_quantize(v, q, t.bits), q)), 2);
      if (best < 0 || e <= best) best = e, bp = q;
    }
    INFO("trial " << trial);
    REQUIRE(p.scale == bp.scale);
    REQUIRE(p.zero == bp.zero);
    REQUIRE(sq_err(x, xh) == best);
    if (trial % 3 == 0) {  // the outlier case does better than min-max
      ref::GqTensor m = t;
      m.scale = ref::kScaleMinMax;
      std::vector<i32> xm;
      quantize_row(m, x, xm);
      REQUIRE(sq_err(x, xh) <= sq_err(x, xm));
    }
  }
  // a constant group: every ratio is exact; the smallest ratio wins the tie
  ref::GqTensor t = uniform_tensor(2);
  t.scale = ref::kScaleMse;
  std::vector<i32> xh;
  const std::vector<i32> c(8, 777);
  quantize_row(t, c, xh);
  REQUIRE(xh == std::vector<i32>(8, ref::asym_dequantize(0, ref::asym_params(777, 777, 2))));
}

TEST_CASE("gq log levels: powers of two invert exactly, geometric midpoints decide", "[gq]") {
  const int bits = 4;  // magnitudes {0, m, m/2, ..., m/64}
  const i32 m = 1 << 22;  // 4.0, exact in fp16
  const ref::AsymParams p = ref::log_params(-m, m / 3);
  REQUIRE(fx::fixed_from_fp16(p.scale, kEntryFrac) == m);
  for (int j = 0; j < 7; ++j) {
    const i32 lv = m >> j;
    for (int s : {1, -1}) {
      const u8 q = ref::log_quantize(s * lv, p, bits);
      REQUIRE(ref::log_dequantize(q, p, bits) == s * lv);
      // midpoint m 2^(-j-1/2): just above -> level j, just below -> level j + 1 (or 0)
      const double mid = lv / std::sqrt(2.0);
      const i32 above = static_cast<i32>(std::ceil(mid)), below = static_cast<i32>(std::floor(mid));
      REQUIRE(ref::log_dequantize(ref::log_quantize(s * above, p, bits), p, bits) == s * lv);
      REQUIRE(ref::log_dequantize(ref::log_quantize(s * below, p, bits), p, bits) == (j < 6 ? s * (lv / 2) : 0));
    }
  }
  REQUIRE(ref::log_quantize(0, p, bits) == 0);
  REQUIRE(ref::log_dequantize(ref::log_quantize(1, p, bits), p, bits) == 0);
  // 2-bit: {0, +-m}
  REQUIRE(ref::log_dequantize(ref::log_quantize(-m / 2, p, 2), p, 2) == 0);
  REQUIRE(ref::log_dequantize(ref::log_quantize(-m / 4 * 3, p, 2), p, 2) == -m);
}

TEST_CASE("gq pow levels: the transform and its inverse agree within a few LSB", "[gq]") {
  std::mt19937_64 rng(9);
  std::uniform_int_distribution<i32> ud(-(1000 << kEntryFrac), 1000 << kEntryFrac);
  for (int i = 0; i < 500; ++i) {
    const i32 x = ud(rng);
    for (auto [n, d] : {std::pair<i64, i64>{1, 2}, {3, 4}, {1, 10}, {1, 1}}) {
      const i32 y = ref::pow_signed(x, n, d);
      const double want = std::copysign(std::pow(std::fabs(x / 1048576.0), static_cast<double>(n) / d), x) * 1048576.0;
      REQUIRE(std::fabs(y - want) <= 1.0 + 1e-8 * std::fabs(want));
      const i32 back = ref::pow_signed(y, d, n);  // 1/p amplifies y's rounding by |x|^(1-p)/p
      REQUIRE(std::fabs(static_cast<double>(back) - x) <= 2.0 + std::fabs(x) * 4e-6 * d / n);
    }
  }
  REQUIRE(ref::pow_signed(0, 1, 2) == 0);
  REQUIRE(ref::pow_signed(4 << kEntryFrac, 1, 2) == 2 << kEntryFrac);
}

TEST_CASE("gq kmeans: deterministic fit, known clusters, nearest-level ties to the lower index", "[gq]") {
  std::vector<double> s = {0.1, 0.1, 0.1, 0.9, 0.9, 0.9};
  const std::vector<i32> cb = ref::kmeans_fit(s, 2, 7);
  REQUIRE(cb == std::vector<i32>{3277, 29491});
  std::mt19937_64 rng(3);
  std::uniform_real_distribution<double> u(0, 1);
  std::vector<double> r(2000);
  for (auto& x : r) x = u(rng) * u(rng);
  const std::vector<i32> a = ref::kmeans_fit(r, 4, 42), b = ref::kmeans_fit(r, 4, 42);
  REQUIRE(a == b);
  REQUIRE(std::is_sorted(a.begin(), a.end()));
  // ties: levels 0 and 1 of range [0, 2.0]: x = 1.0 is equidistant -> index 0
  const ref::AsymParams p = ref::asym_params(0, 2 << kEntryFrac, 1);
  const i32 cb2[2] = {0, 1 << ref::kCodebookFrac};
  REQUIRE(ref::kmeans_quantize(1 << kEntryFrac, p, cb2, 2) == 0);
  REQUIRE(ref::kmeans_quantize((1 << kEntryFrac) + 1, p, cb2, 2) == 1);
  REQUIRE(ref::kmeans_dequantize(1, p, cb2) == 2 << kEntryFrac);
  // the same calibration data gives the same cache state
  const int D = 32;
  auto c = gq_spec("gq-kmeans2", "calib=160");
  std::mt19937_64 g(1);
  const std::vector<i32> K = random_rows(g, 300, D, 1.0), V = random_rows(g, 300, D, 1.0);
  auto c1 = make(c, D), c2 = make(c, D);
  c1->prefill(K.data(), V.data(), 300);
  c2->prefill(K.data(), V.data(), 300);
  const auto& s1 = dynamic_cast<ref::GqCache&>(*c1).key_state();
  const auto& s2 = dynamic_cast<ref::GqCache&>(*c2).key_state();
  REQUIRE(s1.codebook.size() == 4);
  REQUIRE(s1.codebook == s2.codebook);
  REQUIRE(s1.codes == s2.codes);
  // a different seed may move the levels but stays deterministic
  auto c3 = make(gq_spec("gq-kmeans2", "calib=160,seed=99"), D);
  c3->prefill(K.data(), V.data(), 300);
  REQUIRE(dynamic_cast<ref::GqCache&>(*c3).key_state().codebook.size() == 4);
}

TEST_CASE("gq defaults reproduce KIVI 2-bit views at every step", "[gq]") {
  const int D = 64;
  std::mt19937_64 rng(21);
  for (i64 P : {0, 1, 127, 128, 129, 300}) {
    const std::vector<i32> K = random_rows(rng, P + 300, D, 1.0), V = random_rows(rng, P + 300, D, 1.0);
    auto g = make(gq_spec("gq"), D);
    ref::MethodConfig kc = ref::default_config(*ref::find_method("kivi"));
    auto k = make(kc, D);
    g->prefill(K.data(), V.data(), P);
    k->prefill(K.data(), V.data(), P);
    for (i64 t = P; t < P + 300; ++t) {
      g->append(K.data() + t * D, V.data() + t * D);
      k->append(K.data() + t * D, V.data() + t * D);
      INFO("P " << P << " t " << t);
      REQUIRE(std::equal(g->keys(), g->keys() + (t + 1) * D, k->keys()));
      REQUIRE(std::equal(g->values(), g->values() + (t + 1) * D, k->values()));
      g->end_step();
      k->end_step();
    }
  }
}

TEST_CASE("gq streaming: quantized counts at axis/group/block/window/sink boundaries +-1", "[gq]") {
  const int D = 32;
  std::mt19937_64 rng(8);
  const std::vector<std::string> specs = {
      "",
      "kaxis=token,kgroup=8,kblock=1,kwindow=0,vwindow=0",
      "kblock=16,kgroup=8,kwindow=5,vblock=4,vwindow=3,sinks=3",
      "kaxis=tensor,kblock=16,vaxis=tensor,vblock=8,vwindow=2,sinks=1",
      "kgroup=4,kblock=12,vgroup=16,vblock=2,vwindow=7,sinks=5,kscale=mse,vscale=pct95",
      "klevels=kmeans,vlevels=log,vbits=3,calib=40,kblock=16,kgroup=16,sinks=2",
  };
  for (const auto& sp : specs)
    for (i64 P : {0, 1, 15, 16, 17, 41}) {
      const ref::MethodConfig mc = gq_spec("gq", sp);
      ref::GqConfig gc;
      REQUIRE(ref::gq_config(mc, D, &gc).empty());
      const i64 T = P + 150;
      const std::vector<i32> K = random_rows(rng, T, D, 1.0), V = random_rows(rng, T, D, 1.0);
      auto base = make(mc, D);
      auto& c = dynamic_cast<ref::GqCache&>(*base);
      c.prefill(K.data(), V.data(), P);
      for (i64 t = P; t < T; ++t) {
        c.append(K.data() + t * D, V.data() + t * D);
        INFO(sp << " P " << P << " t " << t);
        const i64 kq = ref::gq_quantized_tokens(gc.k, gc.sinks, gc.calib, t);
        const i64 vq = ref::gq_quantized_tokens(gc.v, gc.sinks, gc.calib, t);
        REQUIRE(c.quantized_keys() == kq);
        REQUIRE(c.quantized_values() == vq);
        // tokens past the quantized prefix and the sinks are full precision
        for (i64 s = 0; s <= t; ++s) {
          const bool kfp = s < gc.sinks || s >= kq, vfp = s < gc.sinks || s >= vq;
          if (kfp) REQUIRE(std::equal(c.keys() + s * D, c.keys() + (s + 1) * D, K.data() + s * D));
          if (vfp) REQUIRE(std::equal(c.values() + s * D, c.values() + (s + 1) * D, V.data() + s * D));
        }
        c.end_step();
      }
      // stored state: one params entry per group of each flushed block
      REQUIRE(static_cast<i64>(c.key_state().params.size()) ==
              c.key_state().nq / gc.k.block * ref::gq_groups_per_block(gc.k, D));
      REQUIRE(static_cast<i64>(c.value_state().codes.size()) ==
              c.value_state().nq / gc.v.block * ref::gq_groups_per_block(gc.v, D) *
                  ref::gq_words_per_group(gc.v, D));
    }
}

TEST_CASE("gq heavy hitters: the budget holds, the heaviest tokens stay at full precision", "[gq]") {
  const int D = 16, group = 2;
  std::mt19937_64 rng(4);
  const i64 P = 40, T = 400;
  const std::vector<i32> K = random_rows(rng, T, D, 1.0), V = random_rows(rng, T, D, 1.0);
  const std::vector<i64> Q = [&] {
    std::vector<i64> q(static_cast<size_t>(T * group * D));
    std::normal_distribution<double> nd(0, 1);
    for (auto& x : q) x = static_cast<i64>(nd(rng) * 0x1p40);
    return q;
  }();
  for (int hh : {0, 1, 7, 20}) {
    const ref::MethodConfig mc = gq_spec("gq", "kblock=16,kgroup=16,vgroup=8,vwindow=8,sinks=2,hh=" + std::to_string(hh));
    auto base = make(mc, D);
    auto& c = dynamic_cast<ref::GqCache&>(*base);
    REQUIRE(c.observes() == (hh > 0));
    c.prefill(K.data(), V.data(), P);
    std::vector<i64> scratch;
    for (i64 t = P; t < T; ++t) {
      c.append(K.data() + t * D, V.data() + t * D);
      if (c.observes()) ref::observe_step(c, Q.data() + t * group * D, group, scratch);
      c.end_step();
      INFO("hh " << hh << " t " << t);
      REQUIRE(static_cast<int>(c.pool().size()) <= hh);
      // pool members: seen at full precision; quantized non-members: not protected
      for (i64 s : c.pool()) {
        REQUIRE(std::equal(c.keys() + s * D, c.keys() + (s + 1) * D, K.data() + s * D));
        REQUIRE(std::equal(c.values() + s * D, c.values() + (s + 1) * D, V.data() + s * D));
      }
      // every quantized token outside the pool has at most the pool's least mass... unless it left earlier
    }
    if (hh > 0) REQUIRE(static_cast<int>(c.pool().size()) == hh);
  }
  // a token fed a dominant mass is never dropped
  const ref::MethodConfig mc = gq_spec("gq", "kblock=8,kgroup=8,vgroup=8,vwindow=4,hh=3");
  auto base = make(mc, D);
  auto& c = dynamic_cast<ref::GqCache&>(*base);
  c.prefill(K.data(), V.data(), 10);
  for (i64 t = 10; t < 100; ++t) {
    c.append(K.data() + t * D, V.data() + t * D);
    std::vector<i64> w(static_cast<size_t>(t + 1), 1);
    w[7] = 1000;
    c.observe(w.data(), t + 1);
    c.end_step();
  }
  REQUIRE(std::find(c.pool().begin(), c.pool().end(), 7) != c.pool().end());
  REQUIRE(std::equal(c.keys() + 7 * D, c.keys() + 8 * D, K.data() + 7 * D));
}

TEST_CASE("gq presets: 4-bit error below 2-bit, every level set", "[gq]") {
  const int D = 64;
  std::mt19937_64 rng(12);
  const i64 T = 600;
  const std::vector<i32> K = random_rows(rng, T, D, 1.0), V = random_rows(rng, T, D, 1.0);
  for (const std::string lv : {"uniform", "log", "pow0.5", "kmeans"})
    for (const std::string sc : {"minmax", "mse", "pct99"}) {
      double err[2];
      for (int bi = 0; bi < 2; ++bi) {
        const int b = bi ? 4 : 2;
        std::string o = "kbits=" + std::to_string(b) + ",vbits=" + std::to_string(b) + ",klevels=" + lv +
                         ",vlevels=" + lv + ",kscale=" + sc + ",vscale=" + sc + ",kaxis=token,vwindow=0,kblock=1";
        if (lv == "kmeans") o += ",calib=200";
        auto c = make(gq_spec("gq", o), D);
        c->prefill(K.data(), V.data(), T);
        err[bi] = 0;
        for (i64 i = 0; i < T * D; ++i)
          err[bi] += std::pow(static_cast<double>(c->keys()[i]) - K[i], 2) +
                     std::pow(static_cast<double>(c->values()[i]) - V[i], 2);
      }
      INFO(lv << " " << sc << ": 2-bit " << err[0] << " 4-bit " << err[1]);
      REQUIRE(err[1] < err[0]);
      REQUIRE(err[1] > 0);
    }
  // every preset row builds, runs and counts its bits
  for (const auto& info : ref::kMethods)
    if (info.id == ref::MethodId::gq) {
      const ref::MethodConfig c = ref::default_config(info);
      INFO(info.name);
      REQUIRE(ref::method_info(c.id).check(c, 128).empty());
      const double bpe = ref::bits_per_element(c, 128, 700);
      REQUIRE(bpe > 2.0);
      REQUIRE(bpe < 16.0);
    }
}

TEST_CASE("gq check: bad combinations are rejected with a message", "[gq]") {
  const int D = 96;
  auto why = [&](const std::string& o) { return ref::gq_config(gq_spec("gq", o), D, nullptr); };
  REQUIRE(why("").empty());
  REQUIRE(why("kaxis=row").find("kaxis") != std::string::npos);
  REQUIRE(why("kblock=100").find("multiple") != std::string::npos);
  REQUIRE(why("vgroup=64").find("does not divide") != std::string::npos);
  REQUIRE(why("klevels=kmeans").find("calib") != std::string::npos);
  REQUIRE(why("calib=200").find("only used") != std::string::npos);
  REQUIRE(why("klevels=kmeans,calib=100").find("flush block") != std::string::npos);
  REQUIRE(why("kscale=pct40").find("(50, 100]") != std::string::npos);
  REQUIRE(why("kscale=pct").find("kscale") != std::string::npos);
  REQUIRE(why("vlevels=pow2").find("[0.1, 1]") != std::string::npos);
  REQUIRE(why("vlevels=powx").find("vlevels") != std::string::npos);
  REQUIRE(why("kbits=1").find("[2, 8]") != std::string::npos);
  REQUIRE(why("vbits=9").find("[2, 8]") != std::string::npos);
  REQUIRE(why("kblock=0").find("block") != std::string::npos);
  REQUIRE(why("sinks=-1").find("out of range") != std::string::npos);
  REQUIRE(why("hh=abc").find("not an integer") != std::string::npos);
  REQUIRE(why("kaxis=tensor,kblock=1024").find("65536") != std::string::npos);
  REQUIRE(why("kaxis=tensor,kblock=1,kgroup=7").empty());  // group unused for axis=tensor
  // through the registry: unknown keys name the method's options
  ref::MethodConfig c = gq_spec("gq");
  REQUIRE_THROWS_WITH(ref::apply_options(c, *ref::find_method("gq"), "bits=4"), Catch::Contains("kbits"));
}
