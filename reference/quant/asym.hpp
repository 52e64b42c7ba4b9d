// Asymmetric min-max quantization of one group, with the scale and the zero
// point stored as fp16 (as KIVI and most peers store them).
//
// The per-group core shared by every asymmetric round-to-nearest quantizer
// (KIVI now; the survey's min-max variants later) and by the CUDA twin.
//
//   x        i32  Q11.20 entry format
//   scale s  u16  fp16 bits of (max - min) / (2^b - 1), rounded once (RNE) from
//                 the exact rational
//   zero z   u16  fp16 bits of min, RNE
//   code q   u8   clamp(RNE((x - z) / s), 0, 2^b - 1), an exact rational rounded
//                 once; q = 0 when s == 0 (max == min, or a range too small
//                 for fp16: the original divides by zero there)
//   x_hat    i32  Q11.20: RNE(q * s + z), computed exactly in Q.40
//
// Where this departs from the float originals: KIVI computes (mx - mn) in fp16,
// divides in fp16 and rounds twice; here each stored quantity is the exact
// value rounded once. Codes agree except where the original's double
// rounding falls on the other side of a tie.
#pragma once
#include "reference/common.hpp"
#include "reference/fixed/fixed.hpp"

namespace kvsim::ref {

inline constexpr int kScaleFrac = 40;  // Q.40 working format of fp16 scales/zeros

struct AsymParams {
  u16 scale;  // fp16 bits
  u16 zero;   // fp16 bits
};

// Scale and zero of a group with minimum mn and maximum mx (entry format).
KVSIM_HD inline AsymParams asym_params(i32 mn, i32 mx, int bits) {
  KVSIM_CHECK(mn <= mx, "group min above max");
  KVSIM_CHECK(bits >= 1 && bits <= 8, "bits out of range");
  const i64 levels = (i64{1} << bits) - 1;
  // range in Q.50 = (mx - mn) << 30  (< 2^32 * 2^30 = 2^62)
  const i64 range_q50 = (static_cast<i64>(mx) - mn) * (i64{1} << 30);
  // Round to odd (sticky bit) then RNE to fp16: a single correct rounding of
  // range/levels, since Q.50 keeps >= 26 bits below fp16's smallest ulp.
  i64 quot = range_q50 / levels;
  if (quot * levels != range_q50) quot |= 1;
  AsymParams p;
  p.scale = fx::fp16_from_fixed_rne(quot, 50);
  p.zero = fx::fp16_from_fixed_rne(mn, kEntryFrac);
  return p;
}

// The code of one value.
KVSIM_HD inline u8 asym_quantize(i32 x, AsymParams p, int bits) {
  const i64 s = fx::fixed_from_fp16(p.scale, kScaleFrac);
  if (s == 0) return 0;
  const i64 z = fx::fixed_from_fp16(p.zero, kScaleFrac);
  const i64 num = static_cast<i64>(x) * (i64{1} << (kScaleFrac - kEntryFrac)) - z;  // Q.40
  const i64 q = fx::div_rne(num, s);
  return static_cast<u8>(fx::clamp(q, 0, (i64{1} << bits) - 1));
}

// The dequantized value of one code, entry format.
KVSIM_HD inline i32 asym_dequantize(u8 q, AsymParams p) {
  const i64 s = fx::fixed_from_fp16(p.scale, kScaleFrac);
  const i64 z = fx::fixed_from_fp16(p.zero, kScaleFrac);
  const i64 v = fx::shift_right_rne(static_cast<i64>(q) * s + z, kScaleFrac - kEntryFrac);
  KVSIM_CHECK(v > -(i64{1} << 31) && v < (i64{1} << 31), "dequantized value out of entry range");
  return static_cast<i32>(v);
}

// Packing: 32/b codes per u32 word, least significant bits first (KIVI's layout).
KVSIM_HD inline int codes_per_word(int bits) { return 32 / bits; }
KVSIM_HD inline void pack_code(u32* words, i64 i, u8 q, int bits) {
  const int per = codes_per_word(bits);
  const int shift = static_cast<int>(i % per) * bits;
  u32& w = words[i / per];
  w = (w & ~(((u32{1} << bits) - 1) << shift)) | (static_cast<u32>(q) << shift);
}
KVSIM_HD inline u8 unpack_code(const u32* words, i64 i, int bits) {
  const int per = codes_per_word(bits);
  return static_cast<u8>((words[i / per] >> (static_cast<int>(i % per) * bits)) & ((u32{1} << bits) - 1));
}

}  // namespace kvsim::ref
