// The fixed-point decode attention against a high-precision evaluation of the
// same integer inputs, the oracle against Boost.Multiprecision, and the
// order-freedom the CUDA twin relies on.
#include <catch2/catch.hpp>

#include <boost/multiprecision/cpp_bin_float.hpp>
#include <boost/multiprecision/cpp_int.hpp>
#include <random>
#include <vector>

#include "reference/attention/decode_attention.hpp"
#include "reference/attention/oracle.hpp"

using namespace kvsim;
using big = boost::multiprecision::cpp_bin_float_50;

namespace {
// Random query-format values with rms about `scale`.
std::vector<i64> random_query(std::mt19937_64& rng, size_t n, double scale) {
  std::normal_distribution<double> nd(0.0, scale);
  std::vector<i64> v(n);
  for (auto& x : v) x = std::llround(nd(rng) * std::ldexp(1.0, ref::kQueryFrac));
  return v;
}

// Random entry-format values with rms about `scale` (real units).
std::vector<i32> random_entry(std::mt19937_64& rng, size_t n, double scale) {
  std::normal_distribution<double> nd(0.0, scale);
  std::vector<i32> v(n);
  for (auto& x : v) x = static_cast<i32>(std::llround(nd(rng) * (1 << kEntryFrac)));
  return v;
}

// softmax(q.K/sqrt(D)) V of integer inputs, in 50 decimal digits.
std::vector<big> exact_attention(const std::vector<i64>& q, const std::vector<i32>& K, const std::vector<i32>& V,
                                 int n, int D) {
  const big one = big(1) / big(1 << kEntryFrac);
  std::vector<big> s(n);
  big m = -1e300;
  for (int t = 0; t < n; ++t) {
    big acc = 0;
    for (int d = 0; d < D; ++d) acc += big(q[d]) * big(K[t * D + d]);
    s[t] = acc * one / pow(big(2), ref::kQueryFrac) / sqrt(big(D));
    if (s[t] > m) m = s[t];
  }
  big W = 0;
  for (int t = 0; t < n; ++t) {
    s[t] = exp(s[t] - m);
    W += s[t];
  }
  std::vector<big> o(D, big(0));
  for (int t = 0; t < n; ++t)
    for (int d = 0; d < D; ++d) o[d] += s[t] * big(V[t * D + d]) * one;
  for (auto& x : o) x /= W;
  return o;
}
}  // namespace

TEST_CASE("logit scale log2(e)/sqrt(D) in Q.40 is within 1 LSB for every head dim", "[attention]") {
  const big log2e = big(1) / log(big(2));
  for (int D = 1; D <= kMaxHeadDim; ++D) {
    const big want = log2e / sqrt(big(D)) * big(1ll << 40);
    const big got = big(ref::logit_scale_q40(D));
    INFO("D = " << D);
    REQUIRE(abs(got - want) < big(1));  // sqrt rounded, then one rounding division
  }
  // the Q.62 constant itself
  const big c62 = log2e * pow(big(2), 62);
  REQUIRE(abs(big(6653256548922161246LL) - c62) <= big(0.5));
}

TEST_CASE("fixed-point decode attention matches 50-digit evaluation of the same integers", "[attention]") {
  for (int D : {8, 64, 80, 96, 128, 256}) {
    for (int n : {1, 3, 9, 27, 81, 129}) {
      const unsigned seed = static_cast<unsigned>(D * 1000 + n);
      std::mt19937_64 rng(seed);
      const auto q = random_query(rng, D, 1.0);
      const auto K = random_entry(rng, static_cast<size_t>(n) * D, 1.0);
      const auto V = random_entry(rng, static_cast<size_t>(n) * D, 1.0);
      std::vector<i64> scratch(n), out(D), w(n);
      i64 W = 0;
      ref::decode_attention_ref(q.data(), K.data(), V.data(), n, D, scratch.data(), out.data(), w.data(), &W);
      const auto want = exact_attention(q, K, V, n, D);
      big err2 = 0, ref2 = 0;
      bool nonzero = false;
      for (int d = 0; d < D; ++d) {
        const big got = big(out[d]) / pow(big(2), ref::kOutFrac);
        err2 += (got - want[d]) * (got - want[d]);
        ref2 += want[d] * want[d];
        nonzero |= out[d] != 0;
      }
      INFO("D = " << D << " n = " << n << " seed = " << seed);
      REQUIRE(nonzero);
      // exp2 (<= 1 LSB of Q.40) and the logit rounding (2^-33) dominate.
      REQUIRE(static_cast<double>(sqrt(err2 / ref2)) < 1e-9);
    }
  }
}

TEST_CASE("decode attention is independent of token order (exact sums, exact max)", "[attention]") {
  const int D = 128, n = 300;
  std::mt19937_64 rng(7);
  const auto q = random_query(rng, D, 2.0);
  auto K = random_entry(rng, static_cast<size_t>(n) * D, 2.0);
  auto V = random_entry(rng, static_cast<size_t>(n) * D, 1.0);
  std::vector<i64> s(n), a(D), b(D);
  ref::decode_attention_ref(q.data(), K.data(), V.data(), n, D, s.data(), a.data(), nullptr, nullptr);
  // reverse the tokens
  std::vector<i32> K2(K.size()), V2(V.size());
  for (int t = 0; t < n; ++t)
    for (int d = 0; d < D; ++d) {
      K2[(n - 1 - t) * D + d] = K[t * D + d];
      V2[(n - 1 - t) * D + d] = V[t * D + d];
    }
  ref::decode_attention_ref(q.data(), K2.data(), V2.data(), n, D, s.data(), b.data(), nullptr, nullptr);
  REQUIRE(a == b);
}

TEST_CASE("extreme logits: one dominant token and underflowing weights stay defined", "[attention]") {
  const int D = 64, n = 5;
  std::vector<i64> q(D, i64{125} << ref::kQueryFrac);
  std::vector<i32> K(n * D, 0), V(n * D, 0);
  for (int d = 0; d < D; ++d) {
    K[0 * D + d] = 2000 << kEntryFrac >> 4;  // huge score for token 0
    V[0 * D + d] = 1 << kEntryFrac;
    V[3 * D + d] = -(1 << kEntryFrac);
  }
  std::vector<i64> s(n), out(D), w(n);
  i64 W = 0;
  ref::decode_attention_ref(q.data(), K.data(), V.data(), n, D, s.data(), out.data(), w.data(), &W);
  REQUIRE(w[0] == (i64{1} << ref::kWeightFrac));
  REQUIRE(w[3] == 0);  // underflowed
  REQUIRE(out[0] == (i64{1} << ref::kOutFrac));
}

TEST_CASE("oracle attention agrees with 50-digit arithmetic on small cases", "[attention][oracle]") {
  for (int n : {1, 2, 17, 200}) {
    const int D = 32;
    std::mt19937_64 rng(static_cast<unsigned>(n));
    std::normal_distribution<float> nd(0.0f, 3.0f);
    std::vector<float> q(D), K(n * D), V(n * D);
    for (auto& x : q) x = nd(rng);
    for (auto& x : K) x = nd(rng);
    for (auto& x : V) x = nd(rng);
    std::vector<double> scores, out(D), probs(n);
    ref::oracle_attention(q.data(), K.data(), V.data(), n, D, scores, out.data(), probs.data());
    std::vector<big> s(n);
    big m = -1e300, W = 0;
    for (int t = 0; t < n; ++t) {
      big acc = 0;
      for (int d = 0; d < D; ++d) acc += big(q[d]) * big(K[t * D + d]);
      s[t] = acc / sqrt(big(D));
      if (s[t] > m) m = s[t];
    }
    for (auto& x : s) {
      x = exp(x - m);
      W += x;
    }
    double psum = 0;
    for (int d = 0; d < D; ++d) {
      big o = 0;
      for (int t = 0; t < n; ++t) o += s[t] * big(V[t * D + d]);
      o /= W;
      INFO("n = " << n << " d = " << d);
      REQUIRE(std::abs(out[d] - static_cast<double>(o)) <= 1e-13 * (1 + std::abs(static_cast<double>(o))));
    }
    for (double p : probs) psum += p;
    REQUIRE(psum == Approx(1.0).epsilon(1e-14));
  }
}
