// KVSIM_CHECK: the checked build's assertion, and the range predicates it uses.
//
// With KVSIM_CHECKED defined (the test binaries), KVSIM_CHECK(cond, msg)
// evaluates cond and, if it is false, reports file:line and msg and stops:
// on the host it prints to stderr and calls std::abort(); in device code it
// prints with printf and executes a trap. Without KVSIM_CHECKED it compiles
// to nothing and cond is not evaluated (so cond must have no side effects).
//
// The predicates below are the conditions the fixed-point core checks; they
// are ordinary functions so that tests can call them directly (a failing
// check aborts, which a test cannot observe without forking).
#pragma once
#include "reference/common.hpp"

#if !defined(__CUDA_ARCH__)
#include <cstdio>
#include <cstdlib>
#endif

namespace kvsim::fx {

// Report a failed check and stop. Never returns.
[[noreturn]] KVSIM_HD inline void check_failed(const char* file, int line, const char* cond,
                                               const char* msg) {
#if defined(__CUDA_ARCH__)
  printf("%s:%d: KVSIM_CHECK(%s) failed: %s\n", file, line, cond, msg);
  __trap();
  __builtin_unreachable();
#else
  std::fprintf(stderr, "%s:%d: KVSIM_CHECK(%s) failed: %s\n", file, line, cond, msg);
  std::fflush(stderr);
  std::abort();
#endif
}

// ---- range predicates (exact; usable in KVSIM_CHECK and in tests) ----
KVSIM_HD constexpr bool fits_i32(i64 v) { return v >= -(i64{1} << 31) && v < (i64{1} << 31); }
KVSIM_HD constexpr bool fits_i64(i128 v) {
  return v >= -(static_cast<i128>(1) << 63) && v < (static_cast<i128>(1) << 63);
}
KVSIM_HD constexpr bool fits_u64(u128 v) { return (v >> 64) == 0; }
// |v| < 2^bits, i.e. v fits a signed integer of bits+1 bits, symmetric range. bits in 0..126.
KVSIM_HD constexpr bool fits_signed_bits(i128 v, int bits) {
  return v > -(static_cast<i128>(1) << bits) && v < (static_cast<i128>(1) << bits);
}
// The entry format's range: |v| <= 2^31 - 1 (symmetric; -2^31 is rejected).
KVSIM_HD constexpr bool fits_entry(i64 v) { return v > -(i64{1} << 31) && v < (i64{1} << 31); }

}  // namespace kvsim::fx

#if defined(KVSIM_CHECKED)
#define KVSIM_CHECK(cond, msg)                                          \
  do {                                                                  \
    if (!(cond)) ::kvsim::fx::check_failed(__FILE__, __LINE__, #cond, msg); \
  } while (0)
#else
// Unchecked: cond is neither evaluated nor warned about as unused.
#define KVSIM_CHECK(cond, msg) \
  do {                         \
    (void)sizeof(!(cond));     \
  } while (0)
#endif
