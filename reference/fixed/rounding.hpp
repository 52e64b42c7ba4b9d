// Rounding shifts, rounding divisions and clamping: the only places where the
// reference drops bits of an integer. Every name says its rounding:
//   _rne   round to nearest, ties to even
//   _rna   round to nearest, ties away from zero
//   _floor toward -infinity
//   _trunc toward zero
// All results are exact roundings of the exact rational (error <= 1/2 LSB for
// the nearest modes, < 1 LSB for floor/trunc); nothing here approximates.
//
// Overloads exist for i64 and i128; other integer types are routed by a
// template front to the i64 overload when they fit it (i8..i64, u8..u32) and to
// the i128 overload otherwise (u64), so mixed calls are never ambiguous.
#pragma once
#include <type_traits>

#include "reference/common.hpp"
#include "reference/fixed/check.hpp"

namespace kvsim::fx {

namespace detail {

template <class T>
inline constexpr bool is_small_int =
    std::is_integral_v<T> && !std::is_same_v<T, bool> && sizeof(T) <= 8;
// Types sent to the i64 overloads: every integer type whose values all fit i64.
template <class T>
inline constexpr bool goes_i64 = is_small_int<T> && (std::is_signed_v<T> || sizeof(T) < 8);
// Types sent to the i128 overloads: u64 (and i128 itself).
template <class T>
inline constexpr bool goes_i128 = (is_small_int<T> && !goes_i64<T>) || std::is_same_v<T, i128>;
template <class T>
inline constexpr bool fx_int = goes_i64<T> || goes_i128<T>;

template <class T> struct unsigned_of;
template <> struct unsigned_of<i64> { using type = u64; };
template <> struct unsigned_of<i128> { using type = u128; };

template <class T> KVSIM_HD constexpr T min_of() {
  using U = typename unsigned_of<T>::type;
  return static_cast<T>(static_cast<U>(1) << (sizeof(T) * 8 - 1));
}

// |x| as the unsigned type (exact also for the minimum).
template <class T> KVSIM_HD constexpr typename unsigned_of<T>::type uabs(T x) {
  using U = typename unsigned_of<T>::type;
  return x < 0 ? static_cast<U>(0) - static_cast<U>(x) : static_cast<U>(x);
}

// Index of the highest set bit (0..63); x != 0.
KVSIM_HD inline int msb_index(u64 x) {
#if defined(__CUDA_ARCH__)
  return 63 - __clzll(static_cast<long long>(x));
#else
  return 63 - __builtin_clzll(x);
#endif
}
// Index of the highest set bit (0..127); x != 0.
KVSIM_HD inline int msb_index(u128 x) {
  const u64 hi = static_cast<u64>(x >> 64);
  return hi ? 64 + msb_index(hi) : msb_index(static_cast<u64>(x));
}

// Shared bodies, T in {i64, i128}; s in 0..(bits of T - 1).
template <class T> KVSIM_HD inline T shr_rne(T x, int s) {
  using U = typename unsigned_of<T>::type;
  KVSIM_CHECK(s >= 0 && s < static_cast<int>(sizeof(T) * 8), "shift count out of range");
  if (s == 0) return x;
  T q = x >> s;  // floor (arithmetic shift, defined in C++20)
  const U rem = static_cast<U>(x) & ((static_cast<U>(1) << s) - 1);
  const U half = static_cast<U>(1) << (s - 1);
  if (rem > half || (rem == half && (q & 1) != 0)) q += 1;  // cannot overflow: q <= max/2
  return q;
}
template <class T> KVSIM_HD inline T shr_rna(T x, int s) {
  using U = typename unsigned_of<T>::type;
  KVSIM_CHECK(s >= 0 && s < static_cast<int>(sizeof(T) * 8), "shift count out of range");
  if (s == 0) return x;
  T q = x >> s;
  const U rem = static_cast<U>(x) & ((static_cast<U>(1) << s) - 1);
  const U half = static_cast<U>(1) << (s - 1);
  // floor(x/2^s) + rem/2^s: a tie rounds up for x >= 0 and down (toward -inf) for x < 0.
  if (rem > half || (rem == half && x >= 0)) q += 1;
  return q;
}
template <class T> KVSIM_HD inline T shr_floor(T x, int s) {
  KVSIM_CHECK(s >= 0 && s < static_cast<int>(sizeof(T) * 8), "shift count out of range");
  return x >> s;
}
template <class T> KVSIM_HD inline T shr_trunc(T x, int s) {
  using U = typename unsigned_of<T>::type;
  KVSIM_CHECK(s >= 0 && s < static_cast<int>(sizeof(T) * 8), "shift count out of range");
  if (s == 0) return x;
  T q = x >> s;
  const U rem = static_cast<U>(x) & ((static_cast<U>(1) << s) - 1);
  if (x < 0 && rem != 0) q += 1;
  return q;
}

// Divisions: d != 0 and not (n == min && d == -1) (the only overflow).
template <class T> KVSIM_HD inline void div_check(T n, T d) {
  KVSIM_CHECK(d != 0, "division by zero");
  KVSIM_CHECK(!(n == min_of<T>() && d == -1), "division overflow (min / -1)");
  (void)n;
  (void)d;
}
template <class T> KVSIM_HD inline T div_trunc_t(T n, T d) {
  div_check(n, d);
  return n / d;
}
template <class T> KVSIM_HD inline T div_floor_t(T n, T d) {
  div_check(n, d);
  T q = n / d;
  const T r = n % d;
  if (r != 0 && ((r < 0) != (d < 0))) q -= 1;
  return q;
}
// Nearest; ties_even selects RNE, otherwise ties away from zero.
template <class T> KVSIM_HD inline T div_nearest_t(T n, T d, bool ties_even) {
  using U = typename unsigned_of<T>::type;
  div_check(n, d);
  T q = n / d;  // truncated
  const T r = n % d;
  if (r == 0) return q;
  const U ar = uabs(r);
  const U rest = uabs(d) - ar;  // distance to the next multiple, > 0
  const bool tie = ar == rest;
  if (ar > rest || (tie && (!ties_even || (q & 1) != 0))) {
    // away from zero: |q| <= max/2 here since |d| >= 2, so no overflow
    q += ((n < 0) != (d < 0)) ? T(-1) : T(1);
  }
  return q;
}

// Unsigned RNE shift for the non-linear kernels; s in 0..127.
KVSIM_HD inline u128 shr_rne_u128(u128 x, int s) {
  KVSIM_CHECK(s >= 0 && s < 128, "shift count out of range");
  if (s == 0) return x;
  u128 q = x >> s;
  const u128 rem = x & ((static_cast<u128>(1) << s) - 1);
  const u128 half = static_cast<u128>(1) << (s - 1);
  if (rem > half || (rem == half && (q & 1) != 0)) q += 1;
  return q;
}

}  // namespace detail

// ---------------------------------------------------------------------------
// Shifts: x * 2^-s rounded. i64: s in 0..63; i128: s in 0..127 (checked).
// s = 0 is the identity. Exact rounding (error <= 1/2 LSB; floor/trunc < 1).
KVSIM_HD inline i64 shift_right_rne(i64 x, int s) { return detail::shr_rne(x, s); }
KVSIM_HD inline i128 shift_right_rne(i128 x, int s) { return detail::shr_rne(x, s); }
KVSIM_HD inline i64 shift_right_rna(i64 x, int s) { return detail::shr_rna(x, s); }
KVSIM_HD inline i128 shift_right_rna(i128 x, int s) { return detail::shr_rna(x, s); }
KVSIM_HD inline i64 shift_right_floor(i64 x, int s) { return detail::shr_floor(x, s); }
KVSIM_HD inline i128 shift_right_floor(i128 x, int s) { return detail::shr_floor(x, s); }
KVSIM_HD inline i64 shift_right_trunc(i64 x, int s) { return detail::shr_trunc(x, s); }
KVSIM_HD inline i128 shift_right_trunc(i128 x, int s) { return detail::shr_trunc(x, s); }

// Fronts for other integer types (int, u32, u64, long long, ...).
template <class T>
  requires(detail::fx_int<T> && !std::is_same_v<T, i64> && !std::is_same_v<T, i128>)
KVSIM_HD inline auto shift_right_rne(T x, int s) {
  if constexpr (detail::goes_i64<T>) return shift_right_rne(static_cast<i64>(x), s);
  else return shift_right_rne(static_cast<i128>(x), s);
}
template <class T>
  requires(detail::fx_int<T> && !std::is_same_v<T, i64> && !std::is_same_v<T, i128>)
KVSIM_HD inline auto shift_right_rna(T x, int s) {
  if constexpr (detail::goes_i64<T>) return shift_right_rna(static_cast<i64>(x), s);
  else return shift_right_rna(static_cast<i128>(x), s);
}
template <class T>
  requires(detail::fx_int<T> && !std::is_same_v<T, i64> && !std::is_same_v<T, i128>)
KVSIM_HD inline auto shift_right_floor(T x, int s) {
  if constexpr (detail::goes_i64<T>) return shift_right_floor(static_cast<i64>(x), s);
  else return shift_right_floor(static_cast<i128>(x), s);
}
template <class T>
  requires(detail::fx_int<T> && !std::is_same_v<T, i64> && !std::is_same_v<T, i128>)
KVSIM_HD inline auto shift_right_trunc(T x, int s) {
  if constexpr (detail::goes_i64<T>) return shift_right_trunc(static_cast<i64>(x), s);
  else return shift_right_trunc(static_cast<i128>(x), s);
}

// ---------------------------------------------------------------------------
// Divisions: the exact rational n/d rounded; any signs; d != 0 and no
// overflow (min/-1) are checked. Exact rounding (<= 1/2 LSB; floor/trunc < 1).
KVSIM_HD inline i64 div_rne(i64 n, i64 d) { return detail::div_nearest_t(n, d, true); }
KVSIM_HD inline i128 div_rne(i128 n, i128 d) { return detail::div_nearest_t(n, d, true); }
KVSIM_HD inline i64 div_rna(i64 n, i64 d) { return detail::div_nearest_t(n, d, false); }
KVSIM_HD inline i128 div_rna(i128 n, i128 d) { return detail::div_nearest_t(n, d, false); }
KVSIM_HD inline i64 div_floor(i64 n, i64 d) { return detail::div_floor_t(n, d); }
KVSIM_HD inline i128 div_floor(i128 n, i128 d) { return detail::div_floor_t(n, d); }
KVSIM_HD inline i64 div_trunc(i64 n, i64 d) { return detail::div_trunc_t(n, d); }
KVSIM_HD inline i128 div_trunc(i128 n, i128 d) { return detail::div_trunc_t(n, d); }

// Fronts for mixed or other integer types: i64 when both fit i64, else i128.
namespace detail {
template <class A, class B>
inline constexpr bool div_front =
    detail::fx_int<A> && detail::fx_int<B> &&
    !(std::is_same_v<A, B> && (std::is_same_v<A, i64> || std::is_same_v<A, i128>));
template <class A, class B>
using div_common_t = std::conditional_t<detail::goes_i64<A> && detail::goes_i64<B>, i64, i128>;
}  // namespace detail

template <class A, class B>
  requires detail::div_front<A, B>
KVSIM_HD inline auto div_rne(A n, B d) {
  return div_rne(static_cast<detail::div_common_t<A, B>>(n), static_cast<detail::div_common_t<A, B>>(d));
}
template <class A, class B>
  requires detail::div_front<A, B>
KVSIM_HD inline auto div_rna(A n, B d) {
  return div_rna(static_cast<detail::div_common_t<A, B>>(n), static_cast<detail::div_common_t<A, B>>(d));
}
template <class A, class B>
  requires detail::div_front<A, B>
KVSIM_HD inline auto div_floor(A n, B d) {
  return div_floor(static_cast<detail::div_common_t<A, B>>(n), static_cast<detail::div_common_t<A, B>>(d));
}
template <class A, class B>
  requires detail::div_front<A, B>
KVSIM_HD inline auto div_trunc(A n, B d) {
  return div_trunc(static_cast<detail::div_common_t<A, B>>(n), static_cast<detail::div_common_t<A, B>>(d));
}

// ---------------------------------------------------------------------------
// Clamp x to [lo, hi]; lo <= hi (checked). Exact.
KVSIM_HD inline i64 clamp(i64 x, i64 lo, i64 hi) {
  KVSIM_CHECK(lo <= hi, "clamp with lo > hi");
  return x < lo ? lo : (x > hi ? hi : x);
}

}  // namespace kvsim::fx
