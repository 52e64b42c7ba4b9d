// Non-linear functions against a 128-bit cpp_bin_float oracle (exp2, exp,
// log2, ln: error in LSBs of the output format, within the bound each header
// comment states) and against cpp_int (recip, isqrt, sqrt: exact).
// Set KVSIM_FX_VERBOSE=1 to print the measured maximum errors.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "fx_oracle.hpp"
#include "reference/fixed/fixed.hpp"

using namespace kvsim;
using namespace kvsim::fx;
using namespace kvsim::fx::test;

namespace {

const BF& ln2() {
  static const BF v = log(BF(2));
  return v;
}

// Largest error seen (in LSB), its input, and how many results differ from
// the correctly rounded one.
struct ErrStat {
  double max_err = 0;
  double worst_excess = -1e300;  // max of (err - bound); must stay <= 0
  std::string at;
  long n = 0, not_cr = 0;
  void add(const BF& got, const BF& exact, double bound, const std::string& where) {
    ++n;
    const double e = std::fabs((got - exact).convert_to<double>());
    if (e > max_err) {
      max_err = e;
      at = where;
    }
    if (e - bound > worst_excess) worst_excess = e - bound;
    if (BF(rne_real(exact)) != got) ++not_cr;
  }
  void report(const char* name) const {
    if (std::getenv("KVSIM_FX_VERBOSE"))
      std::printf("%-16s n=%ld max_err=%.9f LSB at %s, not correctly rounded: %ld\n", name, n, max_err,
                  at.c_str(), not_cr);
  }
};

BF exact_exp2(i64 x_q32) { return exp(ldexp(BF(x_q32), -32) * ln2()); }

i64 rand_in(std::mt19937_64& g, i64 lo, i64 hi) {  // uniform in [lo, hi]
  return lo + static_cast<i64>(g() % static_cast<u64>(hi - lo + 1));
}

}  // namespace

TEST_CASE("fx: exp2 core 2^(f/2^64) in Q.64 within 3.6 LSB", "[fixed][nonlinear]") {
  const u64 seed = 0x5EED0201;
  INFO("seed " << seed);
  auto g = rng(seed);
  ErrStat st;
  auto one = [&](u64 f) {
    const u128 y = detail::exp2_unit_q64(f);
    const BF exact = ldexp(exp(ldexp(BF(f), -64) * ln2()), 64);
    st.add(BF(to_ci_u(y)), exact, 3.6, std::to_string(f));
  };
  for (int k = 0; k < 40000; ++k) one(g());
  for (u64 i = 0; i < 256; ++i)
    for (u64 j : {u64{0}, u64{1}, u64{128}, u64{255}}) {
      const u64 base = (i << 56) | (j << 48);
      one(base);
      one(base | ((u64{1} << 48) - 1));
      one(base | (g() & ((u64{1} << 48) - 1)));
    }
  one(0);
  one(~u64{0});
  st.report("exp2 core Q.64");
  INFO("max err " << st.max_err << " at f=" << st.at);
  CHECK(st.worst_excess <= 0);
  CHECK(detail::exp2_unit_q64(0) == (static_cast<u128>(1) << 64));
}

TEST_CASE("fx: exp2_neg_q32 over -40..0 within 0.5 + 2^-31 LSB of Q.30", "[fixed][nonlinear]") {
  const u64 seed = 0x5EED0202;
  INFO("seed " << seed);
  auto g = rng(seed);
  ErrStat st;
  const double bound = 0.5 + std::ldexp(1.0, -31);
  auto one = [&](i64 x) {
    const i64 got = exp2_neg_q32(x);
    st.add(BF(got), ldexp(exact_exp2(x), 30), bound, std::to_string(x));
  };
  const i64 lo = -(i64{40} << 32);
  for (i64 x = lo; x <= 0; x += i64{1} << 20) one(x);  // every 2^20-th value
  for (int k = 0; k < 30000; ++k) one(rand_in(g, lo, 0));
  for (int k = 0; k < 10000; ++k) one(-rand_in(g, 0, i64{1} << 28));  // near 0: results near 2^30
  for (int e = 0; e <= 40; ++e)
    for (i64 d : {i64{-1}, i64{0}, i64{1}}) {
      const i64 x = -(i64{e} << 32) + d;
      if (x <= 0) one(x);
    }
  st.report("exp2_neg_q32");
  INFO("max err " << st.max_err << " at x=" << st.at << ", not correctly rounded " << st.not_cr);
  CHECK(st.worst_excess <= 0);
  CHECK(st.not_cr == 0);
  // exact points
  CHECK(exp2_neg_q32(0) == (i64{1} << 30));
  CHECK(exp2_neg_q32(-1) == (i64{1} << 30));  // 2^30 * 2^(-2^-32) = 2^30 - 0.16
  for (int k = 0; k <= 30; ++k) CHECK(exp2_neg_q32(-(i64{k} << 32)) == (i64{1} << (30 - k)));
  CHECK(exp2_neg_q32(-(i64{31} << 32)) == 0);      // exactly 1/2: tie to even
  CHECK(exp2_neg_q32(-(i64{31} << 32) + 1) == 1);  // just above 1/2
  CHECK(exp2_neg_q32(-(i64{32} << 32)) == 0);
  CHECK(exp2_neg_q32(std::numeric_limits<i64>::min()) == 0);
  // monotone on the sweep grid
  i64 prev = 0;
  bool monotone = true;
  for (i64 x = lo; x <= 0; x += i64{1} << 24) {
    const i64 v = exp2_neg_q32(x);
    monotone = monotone && v >= prev;
    prev = v;
  }
  CHECK(monotone);
}

TEST_CASE("fx: exp2_neg_q32_q40 over -50..0 within 0.5 + 2^-23 LSB of Q.40", "[fixed][nonlinear]") {
  const u64 seed = 0x5EED0208;
  INFO("seed " << seed);
  auto g = rng(seed);
  ErrStat st;
  const double bound = 0.5 + std::ldexp(1.0, -23);
  auto one = [&](i64 x) {
    st.add(BF(exp2_neg_q32_q40(x)), ldexp(exact_exp2(x), 40), bound, std::to_string(x));
  };
  const i64 lo = -(i64{50} << 32);
  for (i64 x = lo; x <= 0; x += i64{1} << 21) one(x);  // every 2^21-th value
  for (int k = 0; k < 20000; ++k) one(rand_in(g, lo, 0));
  for (int k = 0; k < 5000; ++k) one(-rand_in(g, 0, i64{1} << 28));
  st.report("exp2_neg_q32_q40");
  INFO("max err " << st.max_err << " at x=" << st.at << ", not correctly rounded " << st.not_cr);
  CHECK(st.worst_excess <= 0);
  CHECK(st.not_cr == 0);
  CHECK(exp2_neg_q32_q40(0) == (i64{1} << 40));
  for (int k = 0; k <= 40; ++k) CHECK(exp2_neg_q32_q40(-(i64{k} << 32)) == (i64{1} << (40 - k)));
  CHECK(exp2_neg_q32_q40(-(i64{41} << 32)) == 0);      // exactly 1/2: tie to even
  CHECK(exp2_neg_q32_q40(-(i64{41} << 32) + 1) == 1);
  CHECK(exp2_neg_q32_q40(std::numeric_limits<i64>::min()) == 0);
  // consistent with the Q.30 version: RNE(q40 / 2^10) differs by at most 1 (double rounding)
  long far = 0;
  for (int k = 0; k < 20000; ++k) {
    const i64 x = rand_in(g, -(i64{35} << 32), 0);
    const i64 d = shift_right_rne(exp2_neg_q32_q40(x), 10) - exp2_neg_q32(x);
    far += d > 1 || d < -1;
  }
  CHECK(far == 0);
}

TEST_CASE("fx: exp2_q32 over -40..30 within 0.5 + 3.6 * 2^(x-32) LSB of Q.32", "[fixed][nonlinear]") {
  const u64 seed = 0x5EED0203;
  INFO("seed " << seed);
  auto g = rng(seed);
  ErrStat st, st_neg;
  auto one = [&](i64 x) {
    const i64 got = exp2_q32(x);
    const i64 ip = x >> 32;
    const BF exact = ldexp(exact_exp2(x), 32);
    if (x <= 0) st_neg.add(BF(got), exact, 0.5 + std::ldexp(1.0, -31), std::to_string(x));
    st.add(BF(got), exact, 0.5 + 3.6 * std::ldexp(1.0, static_cast<int>(ip) - 32), std::to_string(x));
  };
  const i64 lo = -(i64{40} << 32), hi = (i64{30} << 32) - 1;
  for (i64 x = lo; x <= hi; x += i64{1} << 22) one(x);
  for (int k = 0; k < 30000; ++k) one(rand_in(g, lo, hi));
  for (int k = 0; k < 5000; ++k) one(rand_in(g, hi - (i64{1} << 34), hi));  // the top of the domain
  one(hi);
  st.report("exp2_q32");
  st_neg.report("exp2_q32 x<=0");
  INFO("max err " << st.max_err << " at x=" << st.at);
  CHECK(st.worst_excess <= 0);
  CHECK(st.max_err <= 1.0);
  CHECK(st_neg.worst_excess <= 0);
  for (int k = -32; k <= 29; ++k) CHECK(exp2_q32(i64{k} << 32) == (i64{1} << (32 + k)));
  CHECK(exp2_q32(-(i64{33} << 32)) == 0);  // 1/2 -> 0
}

TEST_CASE("fx: exp_q32 and exp_neg_q32 within their stated bounds", "[fixed][nonlinear]") {
  const u64 seed = 0x5EED0204;
  INFO("seed " << seed);
  auto g = rng(seed);
  ErrStat st, st_neg, st30;
  auto one = [&](i64 x) {
    const BF ex = exp(ldexp(BF(x), -32));
    // ip <= floor(x log2 e) bounds the internal shift; bound 0.5 + 4.3 * 2^(ip - 32)
    const int ip = static_cast<int>(std::floor(std::ldexp(static_cast<double>(x), -32) * 1.4426950408889634)) + 1;
    st.add(BF(exp_q32(x)), ldexp(ex, 32), 0.5 + 4.3 * std::ldexp(1.0, ip - 32), std::to_string(x));
    if (x <= 0) {
      st_neg.add(BF(exp_q32(x)), ldexp(ex, 32), 0.5 + std::ldexp(1.0, -30), std::to_string(x));
      st30.add(BF(exp_neg_q32(x)), ldexp(ex, 30), 0.5 + std::ldexp(1.0, -32), std::to_string(x));
    }
  };
  const i64 lo = -(i64{34} << 32), hi = i64{20} << 32;
  for (i64 x = lo; x <= hi; x += i64{1} << 22) one(x);
  for (int k = 0; k < 30000; ++k) one(rand_in(g, lo, hi));
  for (int k = 0; k < 5000; ++k) one(rand_in(g, hi - (i64{1} << 32), hi));
  one(hi);
  one(0);
  st.report("exp_q32");
  st_neg.report("exp_q32 x<=0");
  st30.report("exp_neg_q32");
  INFO("max err " << st.max_err << " at x=" << st.at);
  CHECK(st.worst_excess <= 0);
  CHECK(st.max_err <= 0.8);
  CHECK(st_neg.worst_excess <= 0);
  CHECK(st30.worst_excess <= 0);
  CHECK(exp_q32(0) == (i64{1} << 32));
  CHECK(exp_neg_q32(0) == (i64{1} << 30));
  CHECK(exp_neg_q32(std::numeric_limits<i64>::min()) == 0);
  CHECK(exp_q32(-(i64{40} << 32)) == 0);
}

TEST_CASE("fx: log2_q32 and ln_q32 within 0.5 + 2^-30 / 2^-23 LSB of Q.32", "[fixed][nonlinear]") {
  const u64 seed = 0x5EED0205;
  INFO("seed " << seed);
  auto g = rng(seed);
  ErrStat sl, sn, sm;
  auto one = [&](u64 x, int frac) {
    const BF lx = log(BF(x)) - frac * ln2();  // ln(x 2^-frac)
    const std::string where = std::to_string(x) + " frac " + std::to_string(frac);
    sl.add(BF(log2_q32(x, frac)), ldexp(lx / ln2(), 32), 0.5 + std::ldexp(1.0, -30), where);
    sn.add(BF(ln_q32(x, frac)), ldexp(lx, 32), 0.5 + std::ldexp(1.0, -23), where);
  };
  for (u64 x = 1; x <= 70000; ++x) one(x, 0);
  for (int k = 0; k < 40000; ++k) {
    const int bits = 1 + static_cast<int>(g() % 64);
    u64 x = g() >> (64 - bits);
    if (x == 0) x = 1;
    one(x, static_cast<int>(g() % 1025) - 512);
  }
  for (int p = 0; p < 64; ++p)
    for (i64 d : {i64{-2}, i64{-1}, i64{1}, i64{2}, i64{1000}}) {
      const u64 x = (u64{1} << p) + static_cast<u64>(d);
      if (x != 0 && ((d < 0 && p > 1) || (d > 0 && p < 63))) one(x, 20);
    }
  one(~u64{0}, 0);
  one(~u64{0}, -512);
  one(1, 512);
  sl.report("log2_q32");
  sn.report("ln_q32");
  INFO("log2 max err " << sl.max_err << " at " << sl.at << "; ln max err " << sn.max_err << " at " << sn.at);
  CHECK(sl.worst_excess <= 0);
  CHECK(sn.worst_excess <= 0);
  CHECK(sl.not_cr == 0);
  // exact at powers of two
  bool exact = true;
  for (int p = 0; p < 64; ++p)
    for (int frac : {-512, -3, 0, 20, 64, 512})
      exact = exact && log2_q32(u64{1} << p, frac) == (static_cast<i64>(p - frac) << 32);
  CHECK(exact);
  CHECK(ln_q32(1, 0) == 0);
  // the internal mantissa log: within 2.2 LSB of Q.64
  ErrStat sm64;
  for (int k = 0; k < 20000; ++k) {
    const u64 x = g() | (u64{1} << 63);
    int p = 0;
    const i128 lm = detail::log2_mant_q64(x, &p);
    sm64.add(BF(to_ci(lm)), ldexp(log(ldexp(BF(x), -63)) / ln2(), 64), 2.2, std::to_string(x));
  }
  sm64.report("log2 mant Q.64");
  CHECK(sm64.worst_excess <= 0);
}

TEST_CASE("fx: recip_q equals the exactly rounded quotient", "[fixed][nonlinear]") {
  const u64 seed = 0x5EED0206;
  INFO("seed " << seed);
  auto g = rng(seed);
  long bad = 0, n = 0;
  std::string first;
  for (int k = 0; k < 50000; ++k) {
    const int fi = static_cast<int>(g() % 63), fo = static_cast<int>(g() % 64);
    const int bits = 1 + static_cast<int>(g() % 64);
    u64 x = g() >> (64 - bits);
    if (x == 0) x = 1;
    const cpp_int want = round_div(cpp_int(1) << (fi + fo), cpp_int(x), Mode::rne);
    if (want >= (cpp_int(1) << 64)) continue;  // checked: does not fit u64
    ++n;
    if (cpp_int(recip_q(x, fi, fo)) != want && bad++ == 0)
      first = std::to_string(x) + " " + std::to_string(fi) + " " + std::to_string(fo);
  }
  INFO(first);
  CHECK(bad == 0);
  CHECK(n > 20000);
  CHECK(recip_q(u64{1} << 10, 4, 5) == 0);  // 1/2: tie to even
  CHECK(recip_q(u64{1} << 8, 4, 5) == 2);
  CHECK(recip_q(3, 0, 1) == 1);             // 2/3 -> 1
  CHECK(recip_q(1, 0, 63) == (u64{1} << 63));
  CHECK(recip_q(1u << 20, 20, 30) == (u64{1} << 30));  // 1/1.0 in Q.30
}

TEST_CASE("fx: isqrt_floor, sqrt_rne, sqrt_q are exact", "[fixed][nonlinear]") {
  const u64 seed = 0x5EED0207;
  INFO("seed " << seed);
  auto g = rng(seed);
  long bad = 0;
  std::string first;
  auto one = [&](u128 x) {
    const cpp_int cx = to_ci_u(x);
    const cpp_int r = boost::multiprecision::sqrt(cx);
    bool ok = cpp_int(isqrt_floor(x)) == r;
    if (cx <= (cpp_int(1) << 128) - (cpp_int(1) << 64)) {
      const cpp_int want = (4 * cx >= (2 * r + 1) * (2 * r + 1)) ? cpp_int(r + 1) : r;
      ok = ok && cpp_int(sqrt_rne(x)) == want;
    }
    if (!ok && bad++ == 0) first = cx.str();
  };
  for (u64 v = 0; v < 5000; ++v) one(v);
  for (int k = 0; k < 20000; ++k) {
    const u128 v = (static_cast<u128>(g()) << 64) | g();
    const int sh = static_cast<int>(g() % 128);
    one(v >> sh);
    const u64 r = g() >> (g() % 64);
    const u128 sq = static_cast<u128>(r) * r;
    one(sq);
    one(sq + r);      // largest value rounding down
    one(sq + r + 1);  // smallest value rounding up
    if (sq) one(sq - 1);
  }
  const u128 top = ~static_cast<u128>(0);
  one(top);
  one(top - (static_cast<u128>(1) << 64) + 1);  // 2^128 - 2^64: sqrt_rne = 2^64 - 1
  one(static_cast<u128>(~u64{0}) * ~u64{0});
  INFO(first);
  CHECK(bad == 0);
  CHECK(isqrt_floor(top) == ~u64{0});
  CHECK(sqrt_rne(0) == 0);
  CHECK(sqrt_rne(2) == 1);
  CHECK(sqrt_rne(3) == 2);
  CHECK(sqrt_rne(static_cast<u128>(128) << 62) == 24296004000ull);  // sqrt(128) in Q.31
  // sqrt_q: RNE(sqrt(x 2^frac))
  long bad_q = 0;
  for (int k = 0; k < 20000; ++k) {
    const int frac = static_cast<int>(g() % 63);
    const u64 x = g() >> (g() % 64);
    const cpp_int v = cpp_int(x) << frac;
    const cpp_int r = boost::multiprecision::sqrt(v);
    const cpp_int want = (4 * v >= (2 * r + 1) * (2 * r + 1)) ? cpp_int(r + 1) : r;
    if (want >= (cpp_int(1) << 63)) continue;
    if (cpp_int(sqrt_q(x, frac)) != want) ++bad_q;
  }
  CHECK(bad_q == 0);
  CHECK(sqrt_q(u64{4} << 20, 20) == (i64{2} << 20));
  CHECK(sqrt_q(u64{2} << 40, 40) == 1554944255988LL);  // RNE(sqrt(2) 2^40)
}
