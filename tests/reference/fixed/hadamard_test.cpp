// Integer Hadamard transforms, for every supported order: the matrix built by
// transforming unit vectors is the pinned construction (re-derived here from
// the Paley/Sylvester definitions), has entries +-1, H H^T = n I, the
// transpose transform inverts it exactly (times n), growth stays within
// n |x|_inf <= 2^growth_bits |x|_inf, and random vectors agree with an
// explicit matrix-vector product. Tolerance: zero (all exact).
#include <catch2/catch.hpp>

#include <cstdlib>
#include <vector>

#include "fx_oracle.hpp"
#include "reference/fixed/fixed.hpp"

using namespace kvsim;
using namespace kvsim::fx;
using namespace kvsim::fx::test;

namespace {

using Mat = std::vector<std::vector<int>>;

std::vector<int> supported_orders() {
  std::vector<int> v;
  for (int n = 1; n <= 256; ++n) {
    bool ok = false;
    for (int m : {1, 12, 20, 28})
      for (int p = 1; m * p <= 256; p *= 2) ok = ok || m * p == n;
    if (ok) v.push_back(n);
  }
  return v;
}

int chi(int a, int q) {
  a = ((a % q) + q) % q;
  if (a == 0) return 0;
  for (int x = 1; x < q; ++x)
    if (x * x % q == a) return 1;
  return -1;
}
// The pinned base matrices, from their definitions (see hadamard.hpp).
Mat base_matrix(int m) {
  if (m == 1) return Mat{{1}};
  if (m == 12 || m == 20) {  // Paley I: I + [[0, 1^T], [-1, Q]], Q[a][b] = chi(a - b)
    const int q = m - 1;
    Mat h(m, std::vector<int>(m));
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < m; ++j) {
        const int s = (i == 0 && j == 0) ? 0 : i == 0 ? 1 : j == 0 ? -1 : chi(i - j, q);
        h[i][j] = s + (i == j);
      }
    return h;
  }
  // m == 28: Paley II from q = 13
  const int q = 13, k = q + 1;
  Mat h(m, std::vector<int>(m));
  for (int A = 0; A < k; ++A)
    for (int B = 0; B < k; ++B) {
      const int s = (A == 0 && B == 0) ? 0 : (A == 0 || B == 0) ? 1 : chi(A - B, q);
      const int blk[2][2] = {{s == 0 ? 1 : s, s == 0 ? -1 : s}, {s == 0 ? -1 : s, s == 0 ? -1 : -s}};
      for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 2; ++b) h[2 * A + a][2 * B + b] = blk[a][b];
    }
  return h;
}
int base_of(int n) {
  for (int m : {12, 20, 28})
    if (n % m == 0) return m;
  return 1;
}
// H_n[i][j] = H_m[i/p][j/p] * (-1)^popcount((i%p) & (j%p))
int expected_entry(const Mat& hm, int n, int i, int j) {
  const int p = n / static_cast<int>(hm.size());
  return hm[i / p][j / p] * ((__builtin_popcount((i % p) & (j % p)) & 1) ? -1 : 1);
}

template <class T> Mat matrix_by_unit_vectors(int n, bool transpose) {
  Mat h(n, std::vector<int>(n));
  std::vector<T> e(n);
  for (int j = 0; j < n; ++j) {
    std::fill(e.begin(), e.end(), T(0));
    e[j] = 1;
    if (transpose) hadamard_transpose_inplace(e.data(), n);
    else hadamard_inplace(e.data(), n);
    for (int i = 0; i < n; ++i) h[i][j] = static_cast<int>(e[i]);
  }
  return h;
}

}  // namespace

TEST_CASE("fx: hadamard_supported is exactly m * 2^k <= 256, m in {1,12,20,28}", "[fixed][hadamard]") {
  const auto orders = supported_orders();
  for (int n = -2; n <= 600; ++n) {
    const bool want = std::find(orders.begin(), orders.end(), n) != orders.end();
    INFO("n = " << n);
    CHECK(hadamard_supported(n) == want);
  }
  for (int n : {64, 80, 96, 112, 128, 256, 40, 48, 56, 160, 192, 224, 12, 20, 28, 1})
    CHECK(hadamard_supported(n));
  for (int n : {36, 44, 60, 72, 84, 100, 120, 240, 320, 384, 512, 0, 3})
    CHECK_FALSE(hadamard_supported(n));
  CHECK(hadamard_growth_bits(1) == 0);
  CHECK(hadamard_growth_bits(2) == 1);
  CHECK(hadamard_growth_bits(12) == 4);
  CHECK(hadamard_growth_bits(80) == 7);
  CHECK(hadamard_growth_bits(128) == 7);
  CHECK(hadamard_growth_bits(224) == 8);
  CHECK(hadamard_growth_bits(256) == 8);
}

TEST_CASE("fx: Hadamard matrix of every supported order is the pinned construction, H H^T = n I",
          "[fixed][hadamard]") {
  for (int n : supported_orders()) {
    INFO("n = " << n);
    const int m = base_of(n);
    REQUIRE(hadamard_base(n) == m);
    const Mat hm = base_matrix(m);
    const Mat h = matrix_by_unit_vectors<i32>(n, false);
    const Mat ht = matrix_by_unit_vectors<i64>(n, true);
    long bad_entry = 0, bad_def = 0, bad_sign = 0, bad_t = 0, bad_orth = 0;
    bool symmetric = true;
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j) {
        bad_entry += h[i][j] != 1 && h[i][j] != -1;
        bad_def += h[i][j] != expected_entry(hm, n, i, j);
        bad_sign += h[i][j] != hadamard_sign(n, i, j);
        bad_t += ht[i][j] != h[j][i];
        symmetric = symmetric && h[i][j] == h[j][i];
        long dot = 0;
        for (int k = 0; k < n; ++k) dot += h[i][k] * h[j][k];
        bad_orth += dot != (i == j ? n : 0);
      }
    CHECK(bad_entry == 0);
    CHECK(bad_def == 0);
    CHECK(bad_sign == 0);
    CHECK(bad_t == 0);
    CHECK(bad_orth == 0);
    CHECK(symmetric == (m == 1 || m == 28));  // Paley I (12, 20) is not symmetric
  }
}

TEST_CASE("fx: Hadamard on random vectors: explicit product, exact inversion, growth bound",
          "[fixed][hadamard]") {
  const u64 seed = 0x5EED0301;
  INFO("seed " << seed);
  auto g = rng(seed);
  for (int n : supported_orders()) {
    INFO("n = " << n);
    const int growth = hadamard_growth_bits(n);
    long bad_mv = 0, bad_inv = 0, bad_bound = 0, bad_inv64 = 0;
    for (int rep = 0; rep < 20; ++rep) {
      // i32 with the largest amplitude that the round trip allows: |x| n^2 < 2^31
      const i64 amp = ((i64{1} << 31) - 1) / (static_cast<i64>(n) * n);
      std::vector<i32> x(n), y(n);
      i64 xinf = 0;
      for (int i = 0; i < n; ++i) {
        x[i] = static_cast<i32>(static_cast<i64>(g() % (2 * amp + 1)) - amp);
        xinf = std::max<i64>(xinf, std::abs(static_cast<i64>(x[i])));
      }
      y = x;
      hadamard_inplace(y.data(), n);
      i64 yinf = 0;
      for (int i = 0; i < n; ++i) {
        i64 want = 0;
        for (int j = 0; j < n; ++j) want += static_cast<i64>(hadamard_sign(n, i, j)) * x[j];
        bad_mv += y[i] != want;
        yinf = std::max<i64>(yinf, std::abs(static_cast<i64>(y[i])));
      }
      bad_bound += yinf > n * xinf || yinf > (xinf << growth);
      hadamard_transpose_inplace(y.data(), n);
      for (int i = 0; i < n; ++i) bad_inv += static_cast<i64>(y[i]) != static_cast<i64>(n) * x[i];
      // i64 with large values: |x| < 2^63 / n^2
      const i64 amp64 = (i64{1} << 46);
      std::vector<i64> u(n), v(n);
      for (int i = 0; i < n; ++i) u[i] = static_cast<i64>(g() % (2 * static_cast<u64>(amp64) + 1)) - amp64;
      v = u;
      hadamard_inplace(v.data(), n);
      hadamard_transpose_inplace(v.data(), n);
      for (int i = 0; i < n; ++i) bad_inv64 += v[i] != static_cast<i64>(n) * u[i];
    }
    CHECK(bad_mv == 0);
    CHECK(bad_inv == 0);
    CHECK(bad_inv64 == 0);
    CHECK(bad_bound == 0);
    // the bound is attained: x = row 0 of H times the largest i32 amplitude
    const i32 a = static_cast<i32>(((i64{1} << 31) - 1) / n);
    std::vector<i32> r(n);
    for (int j = 0; j < n; ++j) r[j] = a * hadamard_sign(n, 0, j);
    hadamard_inplace(r.data(), n);
    CHECK(static_cast<i64>(r[0]) == static_cast<i64>(n) * a);
    CHECK(fits_i32(static_cast<i64>(n) * a));
  }
}
