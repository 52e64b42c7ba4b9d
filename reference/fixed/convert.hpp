// The float boundaries of the bit-exact path: trace values (fp16, bf16, fp32)
// enter the entry format, scales are stored as fp16/bf16, metrics leave as
// double. Entry and storage conversions work on the bit pattern with integer
// operations only, and round half to even.
//
// Binary16 (fp16): 1 sign, 5 exponent (bias 15), 10 mantissa bits.
// bfloat16 (bf16): 1 sign, 8 exponent (bias 127), 7 mantissa bits.
// Binary32 (fp32): 1 sign, 8 exponent (bias 127), 23 mantissa bits.
// Subnormals are decoded and produced exactly; -0 decodes to 0.
#pragma once
#include "reference/common.hpp"
#include "reference/fixed/check.hpp"
#include "reference/fixed/rounding.hpp"

#include <cmath>  // std::ldexp, for the host-only exit conversion to_double

namespace kvsim::fx {

enum class ConvStatus : int { ok, nan, inf, out_of_range };

namespace detail {

// A decoded binary float: value = (neg ? -1 : +1) * mant * 2^exp2.
struct FloatParts {
  bool neg;
  bool inf;
  bool nan;
  u64 mant;  // < 2^(mbits+1)
  int exp2;
};

KVSIM_HD inline FloatParts decode_float(u64 bits, int ebits, int mbits) {
  const int bias = (1 << (ebits - 1)) - 1;
  const u64 mmask = (u64{1} << mbits) - 1;
  const int e = static_cast<int>((bits >> mbits) & ((u64{1} << ebits) - 1));
  FloatParts f{};
  f.neg = ((bits >> (mbits + ebits)) & 1) != 0;
  const u64 m = bits & mmask;
  if (e == (1 << ebits) - 1) {
    f.inf = m == 0;
    f.nan = m != 0;
    return f;
  }
  if (e == 0) {  // zero or subnormal: m * 2^(1 - bias - mbits)
    f.mant = m;
    f.exp2 = 1 - bias - mbits;
  } else {
    f.mant = m | (u64{1} << mbits);
    f.exp2 = e - bias - mbits;
  }
  return f;
}

// mant * 2^sh rounded half to even, into out (as a magnitude); false if the
// result is >= 2^limit_bits. mant < 2^25.
KVSIM_HD inline bool scale_mag_rne(u64 mant, int sh, int limit_bits, u64* out) {
  if (mant == 0) {
    *out = 0;
    return true;
  }
  u64 v;
  if (sh >= 0) {
    if (msb_index(mant) + sh >= limit_bits) return false;
    v = mant << sh;
  } else {
    // mant < 2^25: any right shift by >= 27 gives a value < 1/4 -> 0.
    v = (-sh >= 27) ? 0 : static_cast<u64>(shift_right_rne(static_cast<i64>(mant), -sh));
  }
  if (v >> limit_bits) return false;
  *out = v;
  return true;
}

KVSIM_HD inline ConvStatus entry_from_bits(u64 bits, int ebits, int mbits, i32* out) {
  *out = 0;
  const FloatParts f = decode_float(bits, ebits, mbits);
  if (f.nan) return ConvStatus::nan;
  if (f.inf) return ConvStatus::inf;
  u64 mag;
  // |v| <= 2^31 - 1  <=>  mag < 2^31
  if (!scale_mag_rne(f.mant, f.exp2 + kEntryFrac, 31, &mag)) return ConvStatus::out_of_range;
  *out = f.neg ? -static_cast<i32>(mag) : static_cast<i32>(mag);
  return ConvStatus::ok;
}

// value h * 2^frac as a fixed-point integer (RNE), finite h; overflow checked.
KVSIM_HD inline i64 fixed_from_bits(u64 bits, int ebits, int mbits, int frac) {
  KVSIM_CHECK(frac >= 0 && frac <= 62, "fixed_from: frac out of range");
  const FloatParts f = decode_float(bits, ebits, mbits);
  KVSIM_CHECK(!f.nan && !f.inf, "fixed_from: NaN or Inf");
  if (f.nan || f.inf) return 0;
  u64 mag = 0;
  const bool fits = scale_mag_rne(f.mant, f.exp2 + frac, 63, &mag);
  KVSIM_CHECK(fits, "fixed_from: value does not fit i64");
  if (!fits) return 0;
  return f.neg ? -static_cast<i64>(mag) : static_cast<i64>(mag);
}

// The binary float (ebits, mbits) nearest to v * 2^-frac, ties to even;
// saturates to the largest finite magnitude (never Inf); a negative value
// that rounds to zero gives -0 (as IEEE rounding does). frac in [0, 62].
KVSIM_HD inline u64 bits_from_fixed_rne(i64 v, int frac, int ebits, int mbits) {
  KVSIM_CHECK(frac >= 0 && frac <= 62, "float_from_fixed: frac out of range");
  const u64 sign = v < 0 ? (u64{1} << (ebits + mbits)) : 0;
  const u64 a = uabs(v);
  if (a == 0) return 0;
  const int bias = (1 << (ebits - 1)) - 1;
  const int emin = 1 - bias;                                       // smallest normal exponent
  const u64 max_finite = ((u64{1} << ebits) - 2) << mbits | ((u64{1} << mbits) - 1);
  const int p = msb_index(a);
  const int e = p - frac;                                          // a*2^-frac in [2^e, 2^(e+1))
  if (e > bias) return sign | max_finite;                          // >= 2^(emax+1)
  const int q = (e < emin ? emin : e) - mbits;                     // quantum exponent
  const int t = frac + q;                                          // m = a * 2^-t
  u64 m;
  if (t <= 0) {
    m = a << (-t);                                                 // exact; m < 2^(mbits+1)
  } else {
    m = static_cast<u64>(detail::shr_rne_u128(a, t));              // t <= 63 + mbits
  }
  // Normal: bits = (e + bias - 1) << mbits + m with m in [2^mbits, 2^(mbits+1)]; a carry
  // to 2^(mbits+1) moves to the next exponent by itself. Subnormal: bits = m (m = 2^mbits
  // is the smallest normal).
  u64 mag = (e < emin) ? m : (static_cast<u64>(e + bias - 1) << mbits) + m;
  if (mag > max_finite) mag = max_finite;
  return sign | mag;
}

}  // namespace detail

// ---------------------------------------------------------------------------
// Entry conversions: the trace value's bit pattern -> entry format Q11.20
// (i32), value * 2^20 rounded half to even (error <= 1/2 LSB = 2^-21).
// Status: nan / inf for those patterns; out_of_range when the rounded result
// has |v| >= 2^31 (|x| >= 2048 after rounding). *out is 0 unless ok.
// -0 -> 0. Subnormal inputs are decoded exactly and rounded like any value
// (fp16 subnormals, multiples of 2^-24, round to multiples of 2^-20; every
// bf16/fp32 subnormal is below 2^-126 and gives 0).
KVSIM_HD inline ConvStatus entry_from_fp16(u16 bits, i32* out) {
  return detail::entry_from_bits(bits, 5, 10, out);
}
KVSIM_HD inline ConvStatus entry_from_bf16(u16 bits, i32* out) {
  return detail::entry_from_bits(bits, 8, 7, out);
}
KVSIM_HD inline ConvStatus entry_from_fp32(u32 bits, i32* out) {
  return detail::entry_from_bits(bits, 8, 23, out);
}

// ---------------------------------------------------------------------------
// Scale storage. fp16_from_fixed_rne: the fp16 nearest to v * 2^-frac, ties
// to even (error <= 1/2 ulp of fp16, subnormals exact-rounded); saturates to
// +-65504 (0x7BFF / 0xFBFF), never Inf; a negative v that rounds to zero gives
// -0 (0x8000). frac in [0, 62] (checked).
KVSIM_HD inline u16 fp16_from_fixed_rne(i64 v, int frac) {
  return static_cast<u16>(detail::bits_from_fixed_rne(v, frac, 5, 10));
}
// The same for bfloat16 (saturates to +-0x7F7F; every i64 * 2^-frac with
// frac <= 62 lies in bf16's normal range, so no subnormal or saturation occurs).
KVSIM_HD inline u16 bf16_from_fixed_rne(i64 v, int frac) {
  return static_cast<u16>(detail::bits_from_fixed_rne(v, frac, 8, 7));
}

// fixed_from_fp16: the value of h times 2^frac as i64, rounded half to even
// when frac < 24 (fp16 values are multiples of 2^-24), exact when frac >= 24.
// Checked: h finite, frac in [0, 62], result fits i64 (|h| * 2^frac < 2^63;
// always true for frac <= 47). Unchecked, NaN/Inf/overflow give 0.
KVSIM_HD inline i64 fixed_from_fp16(u16 h, int frac) { return detail::fixed_from_bits(h, 5, 10, frac); }
// The same for bfloat16: exact when frac >= 133, else rounded half to even.
KVSIM_HD inline i64 fixed_from_bf16(u16 h, int frac) { return detail::fixed_from_bits(h, 8, 7, frac); }

// ---------------------------------------------------------------------------
// Exit (HOST ONLY: not KVSIM_HD, so device code cannot call it): v * 2^-frac as a double, with
// one rounding (RNE) of the exact value: exact when v has <= 53 significant
// bits. frac in any int range that keeps the result normal.
inline double to_double(i64 v, int frac) { return std::ldexp(static_cast<double>(v), -frac); }
inline double to_double(i128 v, int frac) { return std::ldexp(static_cast<double>(v), -frac); }
template <class T>
  requires(detail::fx_int<T> && !std::is_same_v<T, i64> && !std::is_same_v<T, i128>)
inline double to_double(T v, int frac) {
  return std::ldexp(static_cast<double>(v), -frac);
}

}  // namespace kvsim::fx
