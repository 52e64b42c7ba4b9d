// Rounding shifts, divisions, clamp and the check predicates, against exact
// cpp_int oracles: exhaustive over small ranges, extremes, ties, and seeded
// random inputs. Tolerance: zero (these are exact roundings).
#include <catch2/catch.hpp>

#include <limits>
#include <vector>

#include "reference/fixed/fixed.hpp"
#include "fx_oracle.hpp"

using namespace kvsim;
using namespace kvsim::fx;
using namespace kvsim::fx::test;

namespace {

constexpr i64 kMin64 = std::numeric_limits<i64>::min();
constexpr i64 kMax64 = std::numeric_limits<i64>::max();
const i128 kMin128 = static_cast<i128>(static_cast<u128>(1) << 127);
const i128 kMax128 = static_cast<i128>((static_cast<u128>(1) << 127) - 1);

const Mode kModes[] = {Mode::rne, Mode::rna, Mode::floor, Mode::trunc};
const char* mode_name(Mode m) {
  switch (m) {
    case Mode::rne: return "rne";
    case Mode::rna: return "rna";
    case Mode::floor: return "floor";
    case Mode::trunc: return "trunc";
  }
  return "?";
}

i64 shr64(i64 x, int s, Mode m) {
  switch (m) {
    case Mode::rne: return shift_right_rne(x, s);
    case Mode::rna: return shift_right_rna(x, s);
    case Mode::floor: return shift_right_floor(x, s);
    case Mode::trunc: return shift_right_trunc(x, s);
  }
  return 0;
}
i128 shr128(i128 x, int s, Mode m) {
  switch (m) {
    case Mode::rne: return shift_right_rne(x, s);
    case Mode::rna: return shift_right_rna(x, s);
    case Mode::floor: return shift_right_floor(x, s);
    case Mode::trunc: return shift_right_trunc(x, s);
  }
  return 0;
}
i64 div64(i64 n, i64 d, Mode m) {
  switch (m) {
    case Mode::rne: return div_rne(n, d);
    case Mode::rna: return div_rna(n, d);
    case Mode::floor: return div_floor(n, d);
    case Mode::trunc: return div_trunc(n, d);
  }
  return 0;
}
i128 div128(i128 n, i128 d, Mode m) {
  switch (m) {
    case Mode::rne: return div_rne(n, d);
    case Mode::rna: return div_rna(n, d);
    case Mode::floor: return div_floor(n, d);
    case Mode::trunc: return div_trunc(n, d);
  }
  return 0;
}

// Collects mismatches; the first one is reported.
struct Mismatches {
  long count = 0;
  std::string first;
  void add(const std::string& what) {
    if (count++ == 0) first = what;
  }
};

i128 rand128(std::mt19937_64& g) {
  const u128 v = (static_cast<u128>(g()) << 64) | g();
  const int bits = static_cast<int>(g() % 128);  // spread magnitudes
  const u128 masked = bits == 127 ? v : (v & ((static_cast<u128>(1) << (bits + 1)) - 1));
  return (g() & 1) ? -static_cast<i128>(masked >> 1) : static_cast<i128>(masked >> 1);
}
i64 rand64(std::mt19937_64& g) {
  const u64 v = g();
  const int bits = static_cast<int>(g() % 64);
  const u64 masked = bits == 63 ? v : (v & ((u64{1} << (bits + 1)) - 1));
  return (g() & 1) ? -static_cast<i64>(masked >> 1) : static_cast<i64>(masked >> 1);
}

}  // namespace

TEST_CASE("fx: shift_right_* i64 exhaustive small range equals cpp_int", "[fixed][rounding]") {
  for (Mode m : kModes) {
    Mismatches mm;
    for (i64 x = -4096; x <= 4096; ++x)
      for (int s = 0; s <= 14; ++s) {
        const i64 got = shr64(x, s, m);
        if (cpp_int(got) != round_shift(cpp_int(x), s, m))
          mm.add("x=" + std::to_string(x) + " s=" + std::to_string(s) + " got=" + std::to_string(got));
      }
    INFO(mode_name(m) << ": " << mm.first);
    CHECK(mm.count == 0);
  }
}

TEST_CASE("fx: shift_right_* ties and extremes", "[fixed][rounding]") {
  // ties: RNE to even, RNA away from zero
  CHECK(shift_right_rne(i64{1}, 1) == 0);
  CHECK(shift_right_rne(i64{3}, 1) == 2);
  CHECK(shift_right_rne(i64{5}, 1) == 2);
  CHECK(shift_right_rne(i64{-1}, 1) == 0);
  CHECK(shift_right_rne(i64{-3}, 1) == -2);
  CHECK(shift_right_rne(i64{-5}, 1) == -2);
  CHECK(shift_right_rna(i64{5}, 1) == 3);
  CHECK(shift_right_rna(i64{-5}, 1) == -3);
  CHECK(shift_right_trunc(i64{-5}, 1) == -2);
  CHECK(shift_right_floor(i64{-5}, 1) == -3);
  CHECK(shift_right_rne(i64{6}, 2) == 2);   // 1.5 -> 2
  CHECK(shift_right_rne(i64{10}, 2) == 2);  // 2.5 -> 2
  CHECK(shift_right_rne(kMax64, 0) == kMax64);
  CHECK(shift_right_rne(kMin64, 0) == kMin64);
  const i64 xs[] = {kMin64, kMin64 + 1, -(i64{1} << 62), -3, -1, 0, 1, 3, (i64{1} << 62), kMax64 - 1, kMax64};
  for (Mode m : kModes) {
    Mismatches mm;
    for (i64 x : xs)
      for (int s = 0; s <= 63; ++s)
        if (cpp_int(shr64(x, s, m)) != round_shift(cpp_int(x), s, m))
          mm.add("x=" + std::to_string(x) + " s=" + std::to_string(s));
    const i128 ys[] = {kMin128, kMin128 + 1, -1, 0, 1, kMax128 - 1, kMax128,
                       static_cast<i128>(kMin64), static_cast<i128>(kMax64)};
    for (i128 x : ys)
      for (int s = 0; s <= 127; ++s)
        if (to_ci(shr128(x, s, m)) != round_shift(to_ci(x), s, m))
          mm.add("i128 x=" + str128(x) + " s=" + std::to_string(s));
    INFO(mode_name(m) << ": " << mm.first);
    CHECK(mm.count == 0);
  }
}

TEST_CASE("fx: shift_right_* random i64 and i128 equal cpp_int", "[fixed][rounding]") {
  const u64 seed = 0x5EED0001;
  INFO("seed " << seed);
  auto g = rng(seed);
  for (Mode m : kModes) {
    Mismatches mm;
    for (int k = 0; k < 20000; ++k) {
      const i64 x = rand64(g);
      const int s = static_cast<int>(g() % 64);
      if (cpp_int(shr64(x, s, m)) != round_shift(cpp_int(x), s, m))
        mm.add("x=" + std::to_string(x) + " s=" + std::to_string(s));
      const i128 y = rand128(g);
      const int t = static_cast<int>(g() % 128);
      if (to_ci(shr128(y, t, m)) != round_shift(to_ci(y), t, m))
        mm.add("y=" + str128(y) + " s=" + std::to_string(t));
      // ties at a random shift
      if (s >= 1) {
        const i64 tie = ((x >> s) << s) | (i64{1} << (s - 1));
        if (cpp_int(shr64(tie, s, m)) != round_shift(cpp_int(tie), s, m))
          mm.add("tie=" + std::to_string(tie) + " s=" + std::to_string(s));
      }
    }
    INFO(mode_name(m) << ": " << mm.first);
    CHECK(mm.count == 0);
  }
}

TEST_CASE("fx: div_* i64 exhaustive small range equals cpp_int", "[fixed][rounding]") {
  for (Mode m : kModes) {
    Mismatches mm;
    for (i64 n = -600; n <= 600; ++n)
      for (i64 d = -64; d <= 64; ++d) {
        if (d == 0) continue;
        const i64 got = div64(n, d, m);
        if (cpp_int(got) != round_div(cpp_int(n), cpp_int(d), m))
          mm.add("n=" + std::to_string(n) + " d=" + std::to_string(d) + " got=" + std::to_string(got));
        const i128 got2 = div128(n, d, m);
        if (to_ci(got2) != round_div(cpp_int(n), cpp_int(d), m))
          mm.add("i128 n=" + std::to_string(n) + " d=" + std::to_string(d));
      }
    INFO(mode_name(m) << ": " << mm.first);
    CHECK(mm.count == 0);
  }
}

TEST_CASE("fx: div_* ties, extremes and random equal cpp_int", "[fixed][rounding]") {
  CHECK(div_rne(i64{5}, i64{2}) == 2);
  CHECK(div_rne(i64{7}, i64{2}) == 4);
  CHECK(div_rne(i64{-5}, i64{2}) == -2);
  CHECK(div_rne(i64{5}, i64{-2}) == -2);
  CHECK(div_rne(i64{-7}, i64{-2}) == 4);
  CHECK(div_rna(i64{-5}, i64{2}) == -3);
  CHECK(div_floor(i64{-5}, i64{2}) == -3);
  CHECK(div_floor(i64{5}, i64{-2}) == -3);
  CHECK(div_trunc(i64{-5}, i64{2}) == -2);
  const i64 ns[] = {kMin64, kMin64 + 1, kMin64 / 2, -3, -1, 0, 1, 3, kMax64 / 2, kMax64 - 1, kMax64};
  const i64 ds[] = {kMin64, kMin64 + 1, -(i64{1} << 32), -3, -2, -1, 1, 2, 3, (i64{1} << 32), kMax64};
  const u64 seed = 0x5EED0002;
  INFO("seed " << seed);
  auto g = rng(seed);
  for (Mode m : kModes) {
    Mismatches mm;
    for (i64 n : ns)
      for (i64 d : ds) {
        if (n == kMin64 && d == -1) continue;  // the one overflow (checked)
        if (cpp_int(div64(n, d, m)) != round_div(cpp_int(n), cpp_int(d), m))
          mm.add("n=" + std::to_string(n) + " d=" + std::to_string(d));
      }
    for (int k = 0; k < 20000; ++k) {
      const i64 n = rand64(g);
      i64 d = rand64(g);
      if (d == 0) d = 7;
      if (n == kMin64 && d == -1) continue;
      if (cpp_int(div64(n, d, m)) != round_div(cpp_int(n), cpp_int(d), m))
        mm.add("n=" + std::to_string(n) + " d=" + std::to_string(d));
      // an exact tie: n = (2q+1) * d/2 with even d
      const i64 dd = (d / 2) * 2 == 0 ? 2 : (d / 2) * 2;
      const i64 q = static_cast<i64>(g() % 2000001) - 1000000;
      if (dd > -(i64{1} << 40) && dd < (i64{1} << 40)) {
        const i64 tie = (2 * q + 1) * (dd / 2);
        if (cpp_int(div64(tie, dd, m)) != round_div(cpp_int(tie), cpp_int(dd), m))
          mm.add("tie n=" + std::to_string(tie) + " d=" + std::to_string(dd));
      }
      i128 a = rand128(g), b = rand128(g);
      if (b == 0) b = 3;
      if (a == kMin128 && b == -1) continue;
      if (to_ci(div128(a, b, m)) != round_div(to_ci(a), to_ci(b), m))
        mm.add("a=" + str128(a) + " b=" + str128(b));
      // small divisors of big numerators (the common case: Q.50 / Q.30)
      const i128 c = rand128(g);
      const i128 e = static_cast<i128>(rand64(g) | 1);
      if (to_ci(div128(c, e, m)) != round_div(to_ci(c), to_ci(e), m))
        mm.add("c=" + str128(c) + " e=" + str128(e));
    }
    const i128 bigs[] = {kMin128, kMin128 + 1, -1, 1, kMax128};
    for (i128 n : bigs)
      for (i128 d : bigs) {
        if (n == kMin128 && d == -1) continue;
        if (to_ci(div128(n, d, m)) != round_div(to_ci(n), to_ci(d), m))
          mm.add("big n=" + str128(n) + " d=" + str128(d));
      }
    INFO(mode_name(m) << ": " << mm.first);
    CHECK(mm.count == 0);
  }
}

TEST_CASE("fx: overload fronts route other integer types", "[fixed][rounding]") {
  // int -> i64 overloads; u64 -> i128 overloads; mixed i64/i128 -> i128.
  STATIC_REQUIRE(std::is_same_v<decltype(shift_right_rne(3, 1)), i64>);
  STATIC_REQUIRE(std::is_same_v<decltype(shift_right_rne(u64{3}, 1)), i128>);
  STATIC_REQUIRE(std::is_same_v<decltype(div_rne(7, 2)), i64>);
  STATIC_REQUIRE(std::is_same_v<decltype(div_rne(i64{7}, 2)), i64>);
  STATIC_REQUIRE(std::is_same_v<decltype(div_rne(i64{7}, i128{2})), i128>);
  STATIC_REQUIRE(std::is_same_v<decltype(div_floor(u64{7}, 2)), i128>);
  CHECK(shift_right_rne(3, 1) == 2);
  CHECK(shift_right_rne(~u64{0}, 1) == (static_cast<i128>(1) << 63));
  CHECK(div_rne(7, 2) == 4);
  CHECK(div_rne(i64{-7}, i128{2}) == -4);
  CHECK(div_floor(~u64{0}, 2) == static_cast<i128>(~u64{0} / 2));
  CHECK(div_trunc(-7, 2) == -3);
  CHECK(div_rna(-7, 2) == -4);
}

TEST_CASE("fx: clamp", "[fixed][rounding]") {
  CHECK(clamp(-5, 0, 15) == 0);
  CHECK(clamp(16, 0, 15) == 15);
  CHECK(clamp(7, 0, 15) == 7);
  CHECK(clamp(kMin64, kMin64, kMax64) == kMin64);
  CHECK(clamp(3, 3, 3) == 3);
}

TEST_CASE("fx: check predicates used by KVSIM_CHECK", "[fixed][check]") {
  // The checked build (this binary) asserts these; a failing KVSIM_CHECK aborts,
  // so the predicates themselves are tested at their boundaries.
#if !defined(KVSIM_CHECKED)
  FAIL("the reference tests must be built with KVSIM_CHECKED");
#endif
  CHECK(fits_i32((i64{1} << 31) - 1));
  CHECK_FALSE(fits_i32(i64{1} << 31));
  CHECK(fits_i32(-(i64{1} << 31)));
  CHECK_FALSE(fits_i32(-(i64{1} << 31) - 1));
  CHECK(fits_entry((i64{1} << 31) - 1));
  CHECK(fits_entry(-(i64{1} << 31) + 1));
  CHECK_FALSE(fits_entry(-(i64{1} << 31)));  // the entry range is symmetric
  CHECK_FALSE(fits_entry(i64{1} << 31));
  CHECK(fits_i64(static_cast<i128>(kMax64)));
  CHECK(fits_i64(static_cast<i128>(kMin64)));
  CHECK_FALSE(fits_i64(static_cast<i128>(kMax64) + 1));
  CHECK_FALSE(fits_i64(static_cast<i128>(kMin64) - 1));
  CHECK(fits_u64(static_cast<u128>(~u64{0})));
  CHECK_FALSE(fits_u64(static_cast<u128>(~u64{0}) + 1));
  CHECK(fits_signed_bits((static_cast<i128>(1) << 70) - 1, 70));
  CHECK_FALSE(fits_signed_bits(static_cast<i128>(1) << 70, 70));
  CHECK_FALSE(fits_signed_bits(-(static_cast<i128>(1) << 70), 70));
  // KVSIM_CHECK evaluates its condition in the checked build (and only there).
  int evaluated = 0;
  KVSIM_CHECK((++evaluated, true), "never fails");
  CHECK(evaluated == 1);
}
