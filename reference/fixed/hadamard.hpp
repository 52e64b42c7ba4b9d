// Integer Hadamard transforms: exact, unnormalised (the 1/sqrt(n) is folded
// into scales or a final division by the caller; DESIGN.md rule 3).
//
// Supported orders n = m * 2^k <= 256 with m in {1, 12, 20, 28}:
//   1, 2, 4, ..., 256;  12, 24, 48, 96, 192;  20, 40, 80, 160;  28, 56, 112, 224.
// Construction (pinned; CPU and CUDA use exactly this matrix):
//   H_n = H_m (x) H_p,  p = 2^k  (Kronecker product), i.e.
//   H_n[i][j] = H_m[i / p][j / p] * H_p[i % p][j % p].
//   H_p: Sylvester, natural order, H_2 = [[1,1],[1,-1]]:
//        H_p[a][b] = (-1)^popcount(a & b); symmetric.
//   H_12, H_20: Paley construction I with q = 11, 19: H = I + S,
//        S = [[0, 1^T], [-1, Q]], Q[a][b] = chi(a - b) (Jacobsthal, GF(q) in
//        natural order, chi the quadratic character). NOT symmetric
//        (H + H^T = 2I).
//   H_28: Paley construction II with q = 13: S = [[0, 1^T], [1, Q]], each 0 of
//        S replaced by [[1,-1],[-1,-1]] and each +-1 by +-[[1,1],[1,-1]].
//        Symmetric.
//   (H_1 = [1].) The sign tables are generated and verified by gen_tables.
// H_n H_n^T = n I for every supported n, so
//   hadamard_transpose_inplace(hadamard_inplace(x)) = n x   exactly,
// and H_n is symmetric (hadamard_inplace = its own transpose) iff m is 1 or 28.
//
// Growth: |H x|_inf <= n |x|_inf <= 2^hadamard_growth_bits(n) |x|_inf.
// Order of work: H_p on each of the m contiguous blocks of p elements
// (butterflies, log2 p stages of one bit each), then H_m across the blocks
// (a dense m x m product per column, accumulated in a wider type). Every
// stored intermediate is checked to fit T in the checked build; the
// arithmetic is done in the wider type and never overflows silently.
#pragma once
#include <type_traits>

#include "reference/common.hpp"
#include "reference/fixed/check.hpp"
#include "reference/fixed/tables.inc"

namespace kvsim::fx {

namespace detail {

// Row i of the base matrix H_m (m in {12, 20, 28}): bit j set <=> H_m[i][j] = -1.
KVSIM_HD inline u32 hadamard_base_row(int m, int i) {
  static constexpr u32 h12[12] = KVSIM_FX_HADAMARD12;
  static constexpr u32 h20[20] = KVSIM_FX_HADAMARD20;
  static constexpr u32 h28[28] = KVSIM_FX_HADAMARD28;
  switch (m) {
    case 12: return h12[i];
    case 20: return h20[i];
    case 28: return h28[i];
    default: return 0;  // m = 1: H_1 = [1]
  }
}

KVSIM_HD inline int parity(u32 x) {
#if defined(__CUDA_ARCH__)
  return __popc(x) & 1;
#else
  return __builtin_popcount(x) & 1;
#endif
}

template <class T> struct hadamard_wide;
template <> struct hadamard_wide<i32> { using type = i64; };
template <> struct hadamard_wide<i64> { using type = i128; };

// v (in the wide type W) is representable in T.
template <class W, class T> KVSIM_HD constexpr bool fits_type(W v) {
  constexpr int bits = static_cast<int>(sizeof(T)) * 8 - 1;
  return v >= -(static_cast<W>(1) << bits) && v < (static_cast<W>(1) << bits);
}

template <class T> KVSIM_HD inline void hadamard_apply(T* x, int n, int m, bool transpose);

}  // namespace detail

// The base order m of n (1, 12, 20 or 28), or 0 when n is not supported.
KVSIM_HD inline int hadamard_base(int n) {
  if (n < 1 || n > 256) return 0;
  const int bases[4] = {1, 12, 20, 28};
  for (int b = 0; b < 4; ++b) {
    const int m = bases[b];
    if (n % m != 0) continue;
    const int p = n / m;
    if ((p & (p - 1)) == 0) return m;
  }
  return 0;
}

KVSIM_HD inline bool hadamard_supported(int n) { return hadamard_base(n) != 0; }

// ceil(log2(n)) for n >= 1: the bound |H x|_inf <= 2^growth |x|_inf (from n).
KVSIM_HD inline int hadamard_growth_bits(int n) {
  KVSIM_CHECK(n >= 1, "hadamard_growth_bits: n < 1");
  int b = 0;
  while ((i64{1} << b) < n) ++b;
  return b;
}

// Entry (i, j) of H_n, +1 or -1; n supported, 0 <= i, j < n (checked).
KVSIM_HD inline int hadamard_sign(int n, int i, int j) {
  const int m = hadamard_base(n);
  KVSIM_CHECK(m != 0, "hadamard: unsupported order");
  KVSIM_CHECK(i >= 0 && i < n && j >= 0 && j < n, "hadamard: index out of range");
  const int p = n / m;
  const int neg_p = detail::parity(static_cast<u32>((i % p) & (j % p)));
  const int neg_m = static_cast<int>((detail::hadamard_base_row(m, i / p) >> (j / p)) & 1u);
  return (neg_p ^ neg_m) ? -1 : 1;
}

// x <- H_n x, in place; x[n], T in {i32, i64}. Exact; the caller guarantees
// |x|_inf * n fits T (checked build: every intermediate is asserted to fit).
template <class T> KVSIM_HD inline void hadamard_inplace(T* x, int n) {
  const int m = hadamard_base(n);
  KVSIM_CHECK(m != 0, "hadamard: unsupported order");
  if (m == 0) return;
  detail::hadamard_apply(x, n, m, false);
}

// x <- H_n^T x, in place (the exact inverse of hadamard_inplace up to the
// factor n: H^T H = n I). Same contract as hadamard_inplace.
template <class T> KVSIM_HD inline void hadamard_transpose_inplace(T* x, int n) {
  const int m = hadamard_base(n);
  KVSIM_CHECK(m != 0, "hadamard: unsupported order");
  if (m == 0) return;
  detail::hadamard_apply(x, n, m, true);
}

namespace detail {

template <class T> KVSIM_HD inline void hadamard_apply(T* x, int n, int m, bool transpose) {
  static_assert(std::is_same_v<T, i32> || std::is_same_v<T, i64>, "hadamard: T must be i32 or i64");
  using W = typename hadamard_wide<T>::type;
  const int p = n / m;
  // 1. H_p on each block of p contiguous elements (symmetric: same for H^T).
  for (int blk = 0; blk < m; ++blk) {
    T* y = x + blk * p;
    for (int h = 1; h < p; h <<= 1) {
      for (int i = 0; i < p; i += 2 * h) {
        for (int j = i; j < i + h; ++j) {
          const W a = y[j], b = y[j + h];
          const W s = a + b, d = a - b;
          KVSIM_CHECK((fits_type<W, T>(s) && fits_type<W, T>(d)), "hadamard: overflow");
          y[j] = static_cast<T>(s);
          y[j + h] = static_cast<T>(d);
        }
      }
    }
  }
  if (m == 1) return;
  // 2. H_m (or H_m^T) across the blocks: column c holds x[b*p + c], b = 0..m-1.
  for (int c = 0; c < p; ++c) {
    W col[28];
    for (int b = 0; b < m; ++b) col[b] = x[b * p + c];
    for (int a = 0; a < m; ++a) {
      W acc = 0;
      for (int b = 0; b < m; ++b) {
        const u32 neg = transpose ? (hadamard_base_row(m, b) >> a) & 1u
                                  : (hadamard_base_row(m, a) >> b) & 1u;
        acc += neg ? -col[b] : col[b];
      }
      KVSIM_CHECK((fits_type<W, T>(acc)), "hadamard: overflow");
      x[a * p + c] = static_cast<T>(acc);
    }
  }
}

}  // namespace detail

}  // namespace kvsim::fx
