// The query's entry format: i64 Q23.40 (|q| < 2^11, like the cache entries,
// but 20 more fraction bits).
//
// Why the query gets its own, finer format: a query is never cached or
// quantized, it only meets the keys in one dot product; rounded to the cache's
// Q11.20 its error (2^-21 per element) is multiplied by the largest keys
// (outlier channels of 80 and more), and on the default trace that alone gave
// a 2.5e-6 relative output error. In Q.40, every fp16 and bf16 value down to
// 2^-40 is exact, fp32 values are rounded half to even.
#pragma once
#include "reference/common.hpp"
#include "reference/fixed/fixed.hpp"

namespace kvsim::ref {

inline constexpr int kQueryFrac = 40;

// One query element from its bit pattern (ebits/mbits: 5/10 fp16, 8/7 bf16,
// 8/23 fp32). Status as the cache's entry conversion: NaN, Inf, or
// out_of_range when |x| >= 2^11.
KVSIM_HD inline fx::ConvStatus query_from_bits(u64 bits, int ebits, int mbits, i64* out) {
  *out = 0;
  const fx::detail::FloatParts f = fx::detail::decode_float(bits, ebits, mbits);
  if (f.nan) return fx::ConvStatus::nan;
  if (f.inf) return fx::ConvStatus::inf;
  u64 mag;
  if (!fx::detail::scale_mag_rne(f.mant, f.exp2 + kQueryFrac, kEntryIntBits + kQueryFrac, &mag))
    return fx::ConvStatus::out_of_range;
  *out = f.neg ? -static_cast<i64>(mag) : static_cast<i64>(mag);
  return fx::ConvStatus::ok;
}
KVSIM_HD inline fx::ConvStatus query_from_fp16(u16 b, i64* out) { return query_from_bits(b, 5, 10, out); }
KVSIM_HD inline fx::ConvStatus query_from_bf16(u16 b, i64* out) { return query_from_bits(b, 8, 7, out); }
KVSIM_HD inline fx::ConvStatus query_from_fp32(u32 b, i64* out) { return query_from_bits(b, 8, 23, out); }

}  // namespace kvsim::ref
