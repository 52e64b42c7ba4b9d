// Float <-> fp16 / bf16 / fp32 bit conversions for writing and reading traces.
//
// Encoding rounds half to even on the bit pattern, with integer operations
// only (no float arithmetic, no FPU rounding mode involved):
//   - f16: IEEE binary16 (1 sign, 5 exponent, 10 mantissa bits, bias 15),
//     with subnormals; values at or above 65520 round to infinity;
//   - bf16: the upper 16 bits of the binary32 pattern, rounded;
//   - NaN stays NaN (quiet, sign kept); infinities stay infinities.
// Decoding is exact: every f16 and bf16 value is a float.
// The replay converts bits to fixed point itself (reference/); these helpers
// are for the writer, the generator and the tests.
#pragma once
#include <cstdint>
#include <cstring>

#include "traces/dtype.hpp"

namespace kvsim::traces {

inline std::uint32_t float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// float -> binary16 bits, round half to even.
inline std::uint16_t float_to_f16_bits(float f) {
  const std::uint32_t x = float_bits(f);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  const std::uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) {  // Inf or NaN
    if (ax == 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7c00u);
    return static_cast<std::uint16_t>(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
  }
  const int e = static_cast<int>(ax >> 23) - 127;  // unbiased exponent (-127 for float subnormals)
  if (e > 15) return static_cast<std::uint16_t>(sign | 0x7c00u);  // >= 65536: overflow
  const std::uint32_t mant = ax & 0x7fffffu;
  if (e >= -14) {  // normal binary16 range (before rounding)
    std::uint32_t h = (static_cast<std::uint32_t>(e + 15) << 10) | (mant >> 13);
    const std::uint32_t rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // may carry into Inf: correct
    return static_cast<std::uint16_t>(sign | h);
  }
  // Subnormal binary16: value / 2^-24 = m * 2^(e + 1), m the 24-bit significand.
  if (e < -25) return static_cast<std::uint16_t>(sign);  // below 2^-25: rounds to zero
  const std::uint32_t m = mant | 0x800000u;
  const int s = -(e + 1);  // 14 .. 24
  std::uint32_t h = m >> s;
  const std::uint32_t rem = m & ((1u << s) - 1u);
  const std::uint32_t half = 1u << (s - 1);
  if (rem > half || (rem == half && (h & 1u))) ++h;  // may become the smallest normal: correct
  return static_cast<std::uint16_t>(sign | h);
}

// float -> bfloat16 bits, round half to even.
inline std::uint16_t float_to_bf16_bits(float f) {
  const std::uint32_t x = float_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x40u);
  const std::uint32_t rounded = x + 0x7fffu + ((x >> 16) & 1u);
  return static_cast<std::uint16_t>(rounded >> 16);
}

// binary16 bits -> float, exact.
inline float f16_bits_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t e = (h >> 10) & 0x1fu;
  const std::uint32_t m = h & 0x3ffu;
  if (e == 0) {
    if (m == 0) return bits_float(sign);
    // subnormal: m * 2^-24; normalise m into a float significand.
    int shift = 0;
    std::uint32_t mm = m;
    while (!(mm & 0x400u)) {
      mm <<= 1;
      ++shift;
    }
    const std::uint32_t fe = static_cast<std::uint32_t>(127 - 15 + 1 - shift);
    return bits_float(sign | (fe << 23) | ((mm & 0x3ffu) << 13));
  }
  if (e == 31) return bits_float(sign | 0x7f800000u | (m << 13));
  return bits_float(sign | ((e - 15 + 127) << 23) | (m << 13));
}

// bfloat16 bits -> float, exact.
inline float bf16_bits_to_float(std::uint16_t b) {
  return bits_float(static_cast<std::uint32_t>(b) << 16);
}

// Dispatch on the file dtype; bits in the low 16 bits for f16 and bf16.
inline std::uint32_t encode_bits(DType t, float f) {
  switch (t) {
    case DType::f16: return float_to_f16_bits(f);
    case DType::bf16: return float_to_bf16_bits(f);
    case DType::f32: return float_bits(f);
  }
  return 0;
}
inline float decode_bits(DType t, std::uint32_t bits) {
  switch (t) {
    case DType::f16: return f16_bits_to_float(static_cast<std::uint16_t>(bits));
    case DType::bf16: return bf16_bits_to_float(static_cast<std::uint16_t>(bits));
    case DType::f32: return bits_float(bits);
  }
  return 0.0f;
}
// The value as it will be stored: float -> file dtype (RNE) -> float.
inline float round_to(DType t, float f) { return decode_bits(t, encode_bits(t, f)); }

}  // namespace kvsim::traces
