// Oracles for the fixed-point core tests: exact integer and rational rounding
// with cpp_int, transcendental values with a 128-bit-mantissa cpp_bin_float,
// and an independent decoding of fp16/bf16/fp32 bit patterns (through the
// compiler's float types, not through reference/fixed).
#pragma once
#include <boost/multiprecision/cpp_bin_float.hpp>
#include <boost/multiprecision/cpp_int.hpp>
#include <cmath>
#include <cstdint>
#include <limits>
#include <cstring>
#include <random>
#include <sstream>
#include <string>

#include "reference/common.hpp"

namespace kvsim::fx::test {

namespace mp = boost::multiprecision;
using mp::cpp_int;
// 128-bit mantissa: enough to measure errors of 64-bit fixed-point results to
// ~2^-60 LSB, and ~8x faster than cpp_bin_float_100 for exp/log.
using BF = mp::number<mp::cpp_bin_float<128, mp::digit_base_2>>;
using BF100 = mp::cpp_bin_float_100;

inline cpp_int to_ci(i128 v) {
  const bool neg = v < 0;
  const u128 a = neg ? static_cast<u128>(0) - static_cast<u128>(v) : static_cast<u128>(v);
  cpp_int r = static_cast<u64>(a >> 64);
  r <<= 64;
  r += static_cast<u64>(a);
  return neg ? cpp_int(-r) : r;
}
inline cpp_int to_ci_u(u128 a) {
  cpp_int r = static_cast<u64>(a >> 64);
  r <<= 64;
  r += static_cast<u64>(a);
  return r;
}
inline std::string str128(i128 v) {
  std::ostringstream s;
  s << to_ci(v);
  return s.str();
}

enum class Mode { rne, rna, floor, trunc };

// n/d rounded by mode, exactly; d != 0.
inline cpp_int round_div(cpp_int n, cpp_int d, Mode mode) {
  if (d < 0) {
    n = -n;
    d = -d;
  }
  cpp_int q, r;
  mp::divide_qr(n, d, q, r);  // truncated
  if (r < 0) {  // to floor
    q -= 1;
    r += d;
  }
  // now n = q d + r, 0 <= r < d
  switch (mode) {
    case Mode::floor: return q;
    case Mode::trunc: return (r != 0 && n < 0) ? cpp_int(q + 1) : q;
    case Mode::rne: {
      const cpp_int t = 2 * r;
      if (t > d || (t == d && (q & 1) != 0)) q += 1;
      return q;
    }
    case Mode::rna: {
      const cpp_int t = 2 * r;
      if (t > d || (t == d && n >= 0)) q += 1;
      return q;
    }
  }
  return q;
}
inline cpp_int round_shift(const cpp_int& x, int s, Mode mode) {
  return round_div(x, cpp_int(1) << s, mode);
}

// Round half to even of a real (exact in its binary representation).
template <class F> cpp_int rne_real(const F& v) {
  const F fl = floor(v);
  cpp_int r = fl.template convert_to<cpp_int>();
  const F d = v - fl;
  if (d > F(0.5) || (d == F(0.5) && (r & 1) != 0)) ++r;
  return r;
}

// Independent decoders (host compiler float types; all exact in double).
inline double fp16_value(u16 bits) {
#if defined(__FLT16_MAX__)
  _Float16 h;
  std::memcpy(&h, &bits, 2);
  return static_cast<double>(h);
#else
  const int e = (bits >> 10) & 31, m = bits & 1023;
  const double s = (bits & 0x8000) ? -1.0 : 1.0;
  if (e == 31) return m ? std::numeric_limits<double>::quiet_NaN() : s * INFINITY;
  if (e == 0) return s * std::ldexp(m, -24);
  return s * std::ldexp(m + 1024, e - 25);
#endif
}
inline double bf16_value(u16 bits) {
  const u32 w = static_cast<u32>(bits) << 16;
  float f;
  std::memcpy(&f, &w, 4);
  return static_cast<double>(f);
}
inline double fp32_value(u32 bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return static_cast<double>(f);
}

// Exact value of a finite double as BF (BF's 128-bit mantissa holds it).
inline BF exact(double d) { return BF(d); }
inline BF exact_fixed(i128 v, int frac) { return ldexp(BF(to_ci(v)), -frac); }

// Seeded generator; the seed is printed by the tests with INFO.
inline std::mt19937_64 rng(u64 seed) { return std::mt19937_64(seed); }

}  // namespace kvsim::fx::test
