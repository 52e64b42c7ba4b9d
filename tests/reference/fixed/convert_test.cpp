// Float boundaries: entry conversions (fp16/bf16/fp32 bits -> Q11.20), fp16 and
// bf16 scale storage, and the host exit to_double, against oracles that decode
// the bit patterns through the compiler's float types and round with
// cpp_int/cpp_bin_float. Tolerance: zero (every conversion is an exact rounding).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <vector>

#include "fx_oracle.hpp"
#include "reference/fixed/fixed.hpp"

using namespace kvsim;
using namespace kvsim::fx;
using namespace kvsim::fx::test;

namespace {

struct Mismatches {
  long count = 0;
  std::string first;
  void add(const std::string& what) {
    if (count++ == 0) first = what;
  }
};

std::string hex(u64 v) {
  char b[32];
  std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}

// Oracle of an entry conversion from the exact value of a float.
struct EntryResult {
  ConvStatus status;
  i32 value;
};
EntryResult entry_oracle(double d) {
  if (std::isnan(d)) return {ConvStatus::nan, 0};
  if (std::isinf(d)) return {ConvStatus::inf, 0};
  const cpp_int r = rne_real(ldexp(exact(d), kEntryFrac));
  if (abs(r) >= (cpp_int(1) << 31)) return {ConvStatus::out_of_range, 0};
  return {ConvStatus::ok, r.convert_to<i32>()};
}
void check_entry(ConvStatus st, i32 got, double d, u64 bits, Mismatches& mm) {
  const EntryResult want = entry_oracle(d);
  if (st != want.status || got != want.value)
    mm.add("bits=" + hex(bits) + " value=" + std::to_string(d) + " status " +
           std::to_string(static_cast<int>(st)) + " want " + std::to_string(static_cast<int>(want.status)) +
           " got " + std::to_string(got) + " want " + std::to_string(want.value));
}

// Nearest-float oracle by search over the (monotone) positive bit patterns.
// value(b) for b in [0, max_finite] is increasing; ties go to the even pattern;
// |V| >= max finite value saturates; negative values keep their sign (-0 included).
u16 nearest_oracle(const BF& v, u16 max_finite, double (*value)(u16), u16 sign_bit) {
  const BF a = abs(v);
  u16 lo = 0, hi = max_finite;
  if (a >= exact(value(max_finite))) return static_cast<u16>((v < 0 ? sign_bit : 0) | max_finite);
  // largest b with value(b) <= a
  while (lo < hi) {
    const u16 mid = static_cast<u16>(lo + (hi - lo + 1) / 2);
    if (exact(value(mid)) <= a) lo = mid;
    else hi = static_cast<u16>(mid - 1);
  }
  const BF dlo = a - exact(value(lo)), dhi = exact(value(static_cast<u16>(lo + 1))) - a;
  u16 b = lo;
  if (dhi < dlo || (dhi == dlo && (lo & 1) != 0)) b = static_cast<u16>(lo + 1);
  return static_cast<u16>((v < 0 ? sign_bit : 0) | b);
}
u16 fp16_oracle(i64 v, int frac) { return nearest_oracle(exact_fixed(v, frac), 0x7BFF, fp16_value, 0x8000); }
u16 bf16_oracle(i64 v, int frac) { return nearest_oracle(exact_fixed(v, frac), 0x7F7F, bf16_value, 0x8000); }

i64 rand64(std::mt19937_64& g) {
  const u64 v = g();
  const int bits = static_cast<int>(g() % 64);
  const u64 masked = bits == 63 ? v : (v & ((u64{1} << (bits + 1)) - 1));
  return (g() & 1) ? -static_cast<i64>(masked >> 1) : static_cast<i64>(masked >> 1);
}

}  // namespace

TEST_CASE("fx: entry_from_fp16 on all 65536 patterns equals the oracle", "[fixed][convert]") {
  Mismatches mm;
  int nan = 0, inf = 0, oor = 0, ok = 0;
  for (u32 b = 0; b < 65536; ++b) {
    i32 v = 12345;
    const ConvStatus st = entry_from_fp16(static_cast<u16>(b), &v);
    check_entry(st, v, fp16_value(static_cast<u16>(b)), b, mm);
    nan += st == ConvStatus::nan;
    inf += st == ConvStatus::inf;
    oor += st == ConvStatus::out_of_range;
    ok += st == ConvStatus::ok;
  }
  INFO(mm.first);
  CHECK(mm.count == 0);
  CHECK(nan == 2 * 1023);
  CHECK(inf == 2);
  CHECK(oor > 0);
  CHECK(ok + nan + inf + oor == 65536);
  i32 v = 0;
  // boundaries: 2047 (0x67FF) is the largest fp16 below 2048
  CHECK(entry_from_fp16(0x67FF, &v) == ConvStatus::ok);
  CHECK(v == 2047 * (1 << 20));
  CHECK(entry_from_fp16(0x6800, &v) == ConvStatus::out_of_range);  // 2048
  CHECK(v == 0);
  CHECK(entry_from_fp16(0xE800, &v) == ConvStatus::out_of_range);  // -2048
  CHECK(entry_from_fp16(0x8000, &v) == ConvStatus::ok);            // -0
  CHECK(v == 0);
  // subnormals: 2^-24 -> 0, 2^-21 (a tie) -> 0, 3*2^-21 -> 2 (tie to even),
  // 2^-20 -> 1, 1023*2^-24 -> 63.9375 -> 64
  CHECK((entry_from_fp16(0x0001, &v) == ConvStatus::ok && v == 0));
  CHECK((entry_from_fp16(0x0008, &v) == ConvStatus::ok && v == 0));
  CHECK((entry_from_fp16(0x0018, &v) == ConvStatus::ok && v == 2));
  CHECK((entry_from_fp16(0x0010, &v) == ConvStatus::ok && v == 1));
  CHECK((entry_from_fp16(0x83FF, &v) == ConvStatus::ok && v == -64));
  CHECK(entry_from_fp16(0x7C00, &v) == ConvStatus::inf);
  CHECK(entry_from_fp16(0xFC00, &v) == ConvStatus::inf);
  CHECK(entry_from_fp16(0x7E00, &v) == ConvStatus::nan);
  CHECK(entry_from_fp16(0xFC01, &v) == ConvStatus::nan);
}

TEST_CASE("fx: entry_from_bf16 on all 65536 patterns equals the oracle", "[fixed][convert]") {
  Mismatches mm;
  for (u32 b = 0; b < 65536; ++b) {
    i32 v = 12345;
    const ConvStatus st = entry_from_bf16(static_cast<u16>(b), &v);
    check_entry(st, v, bf16_value(static_cast<u16>(b)), b, mm);
  }
  INFO(mm.first);
  CHECK(mm.count == 0);
  i32 v = 0;
  CHECK(entry_from_bf16(0x44FF, &v) == ConvStatus::ok);  // 2040, largest bf16 below 2048
  CHECK(v == 2040 * (1 << 20));
  CHECK(entry_from_bf16(0x4500, &v) == ConvStatus::out_of_range);  // 2048
  CHECK(entry_from_bf16(0xC500, &v) == ConvStatus::out_of_range);
  CHECK((entry_from_bf16(0x0001, &v) == ConvStatus::ok && v == 0));  // subnormal
  CHECK((entry_from_bf16(0x8000, &v) == ConvStatus::ok && v == 0));  // -0
  CHECK(entry_from_bf16(0x7F80, &v) == ConvStatus::inf);
  CHECK(entry_from_bf16(0x7FC0, &v) == ConvStatus::nan);
}

TEST_CASE("fx: entry_from_fp32 on random and boundary patterns equals the oracle", "[fixed][convert]") {
  const u64 seed = 0x5EED0101;
  INFO("seed " << seed);
  auto g = rng(seed);
  Mismatches mm;
  auto one = [&](u32 b) {
    i32 v = 12345;
    const ConvStatus st = entry_from_fp32(b, &v);
    check_entry(st, v, fp32_value(b), b, mm);
  };
  for (int k = 0; k < (1 << 18); ++k) {
    one(static_cast<u32>(g()));  // uniform bit patterns
    // exponents where the rounding matters: value in [2^-26, 2^12)
    const u32 e = 127 - 26 + static_cast<u32>(g() % 38);
    one((static_cast<u32>(g() & 1) << 31) | (e << 23) | static_cast<u32>(g() & 0x7FFFFF));
  }
  // every tie pattern around 2^-21 .. 2^-1: mantissas ending in 100..0 at the rounding bit
  for (u32 e = 127 - 21; e <= 127 + 2; ++e)
    for (u32 m = 0; m < 64; ++m)
      for (u32 s = 0; s < 2; ++s) {
        const int drop = static_cast<int>(23 - (e + 20 - 127));  // mantissa bits below 2^-20
        if (drop <= 0 || drop > 23) continue;
        const u32 tie = (m << drop) | (1u << (drop - 1));
        one((s << 31) | (e << 23) | (tie & 0x7FFFFF));
        one((s << 31) | (e << 23) | ((tie + 1) & 0x7FFFFF));
        one((s << 31) | (e << 23) | ((tie - 1) & 0x7FFFFF));
      }
  const u32 edges[] = {0x00000000u, 0x80000000u, 0x00000001u, 0x007FFFFFu, 0x00800000u, 0x35000000u,
                       0x35400000u, 0x35800000u, 0x44FFFFFFu, 0x45000000u, 0xC4FFFFFFu, 0xC5000000u,
                       0x7F7FFFFFu, 0xFF7FFFFFu, 0x7F800000u, 0xFF800000u, 0x7FC00000u, 0x7F800001u};
  for (u32 b : edges) one(b);
  INFO(mm.first);
  CHECK(mm.count == 0);
  i32 v = 0;
  CHECK(entry_from_fp32(0x44FFFFFF, &v) == ConvStatus::ok);  // 2048 - 2^-13
  CHECK(v == (i64{1} << 31) - (1 << 7));
  CHECK(entry_from_fp32(0x45000000, &v) == ConvStatus::out_of_range);  // 2048
  CHECK(entry_from_fp32(0xC4FFFFFF, &v) == ConvStatus::ok);
  CHECK(v == -((i64{1} << 31) - (1 << 7)));
  CHECK((entry_from_fp32(0x35000000, &v) == ConvStatus::ok && v == 0));  // 2^-21: tie -> 0
  CHECK((entry_from_fp32(0x35C00000, &v) == ConvStatus::ok && v == 2));  // 3*2^-21 -> 2
  CHECK((entry_from_fp32(0x35A00000, &v) == ConvStatus::ok && v == 1));  // 5*2^-22 -> 1
  CHECK(entry_from_fp32(0x7F800000, &v) == ConvStatus::inf);
  CHECK(entry_from_fp32(0xFFC00000, &v) == ConvStatus::nan);
}

TEST_CASE("fx: fixed_from_fp16 on every finite pattern equals the oracle", "[fixed][convert]") {
  Mismatches mm;
  const int fracs[] = {0, 1, 10, 14, 20, 23, 24, 25, 40, 47};
  for (int frac : fracs)
    for (u32 b = 0; b < 65536; ++b) {
      const double d = fp16_value(static_cast<u16>(b));
      if (!std::isfinite(d)) continue;
      const i64 got = fixed_from_fp16(static_cast<u16>(b), frac);
      const cpp_int want = rne_real(ldexp(exact(d), frac));
      if (cpp_int(got) != want)
        mm.add("h=" + hex(b) + " frac=" + std::to_string(frac) + " got " + std::to_string(got));
    }
  INFO(mm.first);
  CHECK(mm.count == 0);
  CHECK(fixed_from_fp16(0x7BFF, 47) == i64{65504} << 47);
  CHECK(fixed_from_fp16(0x0001, 24) == 1);
  CHECK(fixed_from_fp16(0x0001, 23) == 0);  // 1/2 -> 0 (even)
  CHECK(fixed_from_fp16(0x0003, 23) == 2);  // 3/2 -> 2
  CHECK(fixed_from_fp16(0x8003, 23) == -2);
  CHECK(fixed_from_fp16(0x8000, 40) == 0);
}

TEST_CASE("fx: fixed_from_bf16 on every finite representable pattern equals the oracle",
          "[fixed][convert]") {
  Mismatches mm;
  const int fracs[] = {0, 20, 40, 62};
  long tested = 0;
  for (int frac : fracs)
    for (u32 b = 0; b < 65536; ++b) {
      const double d = bf16_value(static_cast<u16>(b));
      if (!std::isfinite(d)) continue;
      const cpp_int want = rne_real(ldexp(exact(d), frac));
      if (abs(want) >= (cpp_int(1) << 63)) continue;  // checked overflow; not called
      ++tested;
      const i64 got = fixed_from_bf16(static_cast<u16>(b), frac);
      if (cpp_int(got) != want)
        mm.add("h=" + hex(b) + " frac=" + std::to_string(frac) + " got " + std::to_string(got));
    }
  INFO(mm.first);
  CHECK(mm.count == 0);
  CHECK(tested > 100000);
}

TEST_CASE("fx: fp16 round trip of every pattern through fixed Q.24, Q.40, Q.47", "[fixed][convert]") {
  Mismatches mm;
  int finite = 0;
  for (int frac : {24, 40, 47})
    for (u32 b = 0; b < 65536; ++b) {
      const u16 h = static_cast<u16>(b);
      const double d = fp16_value(h);
      if (!std::isfinite(d)) {
        i32 v = 0;
        const ConvStatus st = entry_from_fp16(h, &v);
        if (st != (std::isnan(d) ? ConvStatus::nan : ConvStatus::inf)) mm.add("status of " + hex(b));
        continue;
      }
      ++finite;
      const u16 back = fp16_from_fixed_rne(fixed_from_fp16(h, frac), frac);
      const u16 want = h == 0x8000 ? 0 : h;  // -0 comes back as +0 (the integer 0)
      if (back != want) mm.add("h=" + hex(b) + " frac=" + std::to_string(frac) + " back " + hex(back));
    }
  INFO(mm.first);
  CHECK(mm.count == 0);
  CHECK(finite == 3 * (65536 - 2048));
}

TEST_CASE("fx: bf16 round trip of every pattern exactly representable in Q.62/Q.20",
          "[fixed][convert]") {
  Mismatches mm;
  long n = 0;
  for (int frac : {20, 62})
    for (u32 b = 0; b < 65536; ++b) {
      const u16 h = static_cast<u16>(b);
      const double d = bf16_value(h);
      if (!std::isfinite(d) || d == 0) continue;
      const BF x = ldexp(exact(d), frac);
      if (abs(x) >= BF(ldexp(1.0, 63)) || x != floor(x)) continue;  // not an exact i64
      ++n;
      const u16 back = bf16_from_fixed_rne(fixed_from_bf16(h, frac), frac);
      if (back != h) mm.add("h=" + hex(b) + " frac=" + std::to_string(frac) + " back " + hex(back));
    }
  INFO(mm.first);
  CHECK(mm.count == 0);
  CHECK(n > 20000);
}

TEST_CASE("fx: fp16_from_fixed_rne and bf16_from_fixed_rne equal the nearest-value oracle",
          "[fixed][convert]") {
  const u64 seed = 0x5EED0102;
  INFO("seed " << seed);
  auto g = rng(seed);
  Mismatches m16, mb16;
  auto one = [&](i64 v, int frac) {
    const u16 a = fp16_from_fixed_rne(v, frac);
    const u16 wa = fp16_oracle(v, frac);
    if (a != wa)
      m16.add("v=" + std::to_string(v) + " frac=" + std::to_string(frac) + " got " + hex(a) + " want " + hex(wa));
    const u16 b = bf16_from_fixed_rne(v, frac);
    const u16 wb = bf16_oracle(v, frac);
    if (b != wb)
      mb16.add("v=" + std::to_string(v) + " frac=" + std::to_string(frac) + " got " + hex(b) + " want " + hex(wb));
  };
  for (int k = 0; k < 40000; ++k) one(rand64(g), static_cast<int>(g() % 63));
  // ties and their neighbours: midpoints of consecutive fp16 values, in Q.40
  for (int k = 0; k < 20000; ++k) {
    const u16 lo = static_cast<u16>(g() % 0x7BFF);
    const BF mid = (exact(fp16_value(lo)) + exact(fp16_value(static_cast<u16>(lo + 1)))) / 2;
    const i64 v = ldexp(mid, 40).convert_to<i64>();  // exact: mid is a multiple of 2^-25
    for (i64 dv : {i64{-1}, i64{0}, i64{1}}) {
      one(v + dv, 40);
      one(-(v + dv), 40);
    }
    // bf16 ties: midpoints of consecutive bf16 values in [2^-30, 2^30), in Q.62 scaled down
    const u16 blo = static_cast<u16>(0x3080 + g() % (0x4E80 - 0x3080));
    const BF bmid = (exact(bf16_value(blo)) + exact(bf16_value(static_cast<u16>(blo + 1)))) / 2;
    const int be = ((blo >> 7) & 0xFF) - 127;  // bmid in [2^be, 2^(be+1)), a multiple of 2^(be-8)
    const int bf = be >= 18 ? 0 : 18 - be;      // exact in Q.bf, below 2^63
    const i64 bv = ldexp(bmid, bf).convert_to<i64>();
    for (i64 dv : {i64{-1}, i64{0}, i64{1}}) one(bv + dv, bf);
  }
  // extremes: zero, smallest magnitudes, subnormal boundary, saturation
  const i64 vs[] = {0, 1, -1, 2, 3, (i64{1} << 62), -(i64{1} << 62), std::numeric_limits<i64>::max(),
                    std::numeric_limits<i64>::min(), std::numeric_limits<i64>::min() + 1, 65504, 65519,
                    65520, 65536, -65520, 1 << 16, (1 << 16) - 1};
  for (i64 v : vs)
    for (int frac = 0; frac <= 62; ++frac) one(v, frac);
  INFO("fp16: " << m16.first);
  CHECK(m16.count == 0);
  INFO("bf16: " << mb16.first);
  CHECK(mb16.count == 0);
  // documented behaviour
  CHECK(fp16_from_fixed_rne(65520, 0) == 0x7BFF);        // IEEE would give Inf: saturates
  CHECK(fp16_from_fixed_rne(-(i64{1} << 40), 0) == 0xFBFF);
  CHECK(fp16_from_fixed_rne(65519, 0) == 0x7BFF);
  CHECK(fp16_from_fixed_rne(1, 25) == 0x0000);           // 2^-25: tie with 0 -> 0
  CHECK(fp16_from_fixed_rne(3, 25) == 0x0002);           // 1.5 * 2^-24 -> 2 * 2^-24
  CHECK(fp16_from_fixed_rne(-1, 30) == 0x8000);          // negative underflow -> -0
  CHECK(fp16_from_fixed_rne(1, 14) == 0x0400);           // 2^-14, smallest normal
  CHECK(fp16_from_fixed_rne((i64{1} << 30) - 1, 44) == 0x0400);  // just below rounds up to it
  CHECK(fp16_from_fixed_rne(1 << 20, 20) == 0x3C00);     // 1.0
  CHECK(bf16_from_fixed_rne(1 << 20, 20) == 0x3F80);
  CHECK(bf16_from_fixed_rne(std::numeric_limits<i64>::max(), 0) == 0x5F00);  // 2^63
}

TEST_CASE("fx: to_double rounds once, to nearest even", "[fixed][convert]") {
  CHECK(to_double(i64{3}, 1) == 1.5);
  CHECK(to_double(i64{-3}, 1) == -1.5);
  CHECK(to_double(i64{0}, 40) == 0.0);
  CHECK(to_double(std::numeric_limits<i64>::max(), 0) == std::ldexp(1.0, 63));
  CHECK(to_double(std::numeric_limits<i64>::min(), 63) == -1.0);
  CHECK(to_double((i64{1} << 53) + 1, 0) == std::ldexp(1.0, 53));          // tie -> even
  CHECK(to_double((i64{1} << 53) + 3, 0) == std::ldexp(1.0, 53) + 4.0);    // tie -> even
  CHECK(to_double(static_cast<i128>(3) << 80, 81) == 1.5);
  CHECK(to_double((static_cast<i128>(1) << 100) + 1, 100) == 1.0);
  CHECK(to_double(-(static_cast<i128>(1) << 120), 20) == -std::ldexp(1.0, 100));
  CHECK(to_double(7, 2) == 1.75);      // int front
  CHECK(to_double(~u64{0}, 64) == 1.0);  // u64 front, rounded
  const u64 seed = 0x5EED0103;
  INFO("seed " << seed);
  auto g = rng(seed);
  long bad = 0;
  for (int k = 0; k < 10000; ++k) {
    const i64 v = static_cast<i64>(g());
    const int frac = static_cast<int>(g() % 100);
    const BF want = exact_fixed(v, frac);
    const BF got = exact(to_double(v, frac));
    // one RNE rounding to 53 bits: |got - want| <= 2^-53 |want|, and exact when |v| < 2^53
    if (abs(got - want) > abs(want) * BF(std::ldexp(1.0, -53))) ++bad;
    if ((v < (i64{1} << 53) && v > -(i64{1} << 53)) && got != want) ++bad;
  }
  CHECK(bad == 0);
}
