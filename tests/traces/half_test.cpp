// traces/half.hpp: float -> fp16 / bf16 bits with round-half-to-even, and back.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>

#include "traces/half.hpp"

using namespace kvsim::traces;

namespace {

// Checks that `bits` is the round-half-to-even encoding of x among its
// neighbours bits-1 and bits+1 (same sign, finite): x is at least as close to
// decode(bits) as to either neighbour, and on a tie the mantissa is even.
void check_nearest_even(DType dt, float x, uint32_t bits) {
  const double v = decode_bits(dt, bits);
  const double err = std::fabs(static_cast<double>(x) - v);
  const uint32_t mag = bits & 0x7fffu;
  for (int d : {-1, +1}) {
    if (mag == 0 && d < 0) continue;
    const uint32_t nb = (bits & 0x8000u) | (mag + static_cast<uint32_t>(d));
    const double nv = decode_bits(dt, nb);
    if (!std::isfinite(nv)) continue;
    const double nerr = std::fabs(static_cast<double>(x) - nv);
    INFO("x = " << x << " bits = " << bits << " neighbour " << nb);
    REQUIRE(err <= nerr);
    if (err == nerr) REQUIRE((bits & 1u) == 0u);
  }
}

}  // namespace

TEST_CASE("f16 decode then encode gives back every non-NaN bit pattern", "[half]") {
  int checked = 0;
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = f16_bits_to_float(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      REQUIRE(std::isnan(f16_bits_to_float(float_to_f16_bits(f))));
      continue;
    }
    REQUIRE(float_to_f16_bits(f) == h);
    ++checked;
  }
  REQUIRE(checked == 65536 - 2 * 1023);
}

TEST_CASE("bf16 decode then encode gives back every non-NaN bit pattern", "[half]") {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = bf16_bits_to_float(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    REQUIRE(float_to_bf16_bits(f) == h);
  }
}

TEST_CASE("f16 decode matches the IEEE binary16 values", "[half]") {
  REQUIRE(f16_bits_to_float(0x3c00) == 1.0f);
  REQUIRE(f16_bits_to_float(0xc000) == -2.0f);
  REQUIRE(f16_bits_to_float(0x7bff) == 65504.0f);
  REQUIRE(f16_bits_to_float(0x0001) == std::ldexp(1.0f, -24));
  REQUIRE(f16_bits_to_float(0x03ff) == std::ldexp(1023.0f, -24));
  REQUIRE(f16_bits_to_float(0x0400) == std::ldexp(1.0f, -14));
  REQUIRE(std::isinf(f16_bits_to_float(0x7c00)));
  REQUIRE(std::signbit(f16_bits_to_float(0x8000)));
}

TEST_CASE("f16 encode rounds half to even at ties, overflow and subnormals", "[half]") {
  CHECK(float_to_f16_bits(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);       // tie -> even (1)
  CHECK(float_to_f16_bits(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02);   // tie -> even (1 + 2^-9)
  CHECK(float_to_f16_bits(1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20)) == 0x3c01);
  CHECK(float_to_f16_bits(65504.0f) == 0x7bff);
  CHECK(float_to_f16_bits(65519.0f) == 0x7bff);
  CHECK(float_to_f16_bits(65520.0f) == 0x7c00);  // tie between 65504 and 2^16 -> Inf
  CHECK(float_to_f16_bits(-1e9f) == 0xfc00);
  CHECK(float_to_f16_bits(std::ldexp(1.0f, -25)) == 0x0000);               // tie -> 0
  CHECK(float_to_f16_bits(std::ldexp(1.0f, -25) * 1.0000001f) == 0x0001);
  CHECK(float_to_f16_bits(3 * std::ldexp(1.0f, -25)) == 0x0002);           // tie -> 2
  CHECK(float_to_f16_bits(std::ldexp(1023.5f, -24)) == 0x0400);            // tie -> smallest normal
  CHECK(float_to_f16_bits(std::ldexp(1.0f, -30)) == 0x0000);
  CHECK(float_to_f16_bits(-std::ldexp(1.0f, -30)) == 0x8000);
  CHECK(float_to_f16_bits(std::numeric_limits<float>::denorm_min()) == 0x0000);
  CHECK(float_to_f16_bits(std::numeric_limits<float>::infinity()) == 0x7c00);
  const uint16_t n = float_to_f16_bits(std::numeric_limits<float>::quiet_NaN());
  CHECK((n & 0x7c00) == 0x7c00);
  CHECK((n & 0x03ff) != 0);
}

TEST_CASE("bf16 encode rounds half to even", "[half]") {
  CHECK(float_to_bf16_bits(1.0f) == 0x3f80);
  CHECK(float_to_bf16_bits(1.0f + std::ldexp(1.0f, -8)) == 0x3f80);       // tie -> even
  CHECK(float_to_bf16_bits(1.0f + 3 * std::ldexp(1.0f, -8)) == 0x3f82);   // tie -> even
  CHECK(float_to_bf16_bits(std::numeric_limits<float>::max()) == 0x7f80);  // rounds to Inf
  const uint16_t n = float_to_bf16_bits(std::numeric_limits<float>::quiet_NaN());
  CHECK((n & 0x7f80) == 0x7f80);
  CHECK((n & 0x007f) != 0);
}

TEST_CASE("f16 and bf16 encodings are the nearest value, ties to even (random floats)", "[half]") {
  std::mt19937_64 rng(12345);
  std::uniform_int_distribution<int> exp16(-26, 16), exp8(-120, 120);
  std::uniform_int_distribution<uint32_t> mant(0, (1u << 23) - 1);
  for (int i = 0; i < 200000; ++i) {
    const uint32_t sign = (rng() & 1) << 31;
    const float x16 = bits_float(sign | (static_cast<uint32_t>(exp16(rng) + 127) << 23) | mant(rng));
    if (std::fabs(x16) < 65504.0f) check_nearest_even(DType::f16, x16, float_to_f16_bits(x16));
    const float x8 = bits_float(sign | (static_cast<uint32_t>(exp8(rng) + 127) << 23) | mant(rng));
    check_nearest_even(DType::bf16, x8, float_to_bf16_bits(x8));
  }
}
