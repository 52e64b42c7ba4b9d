// KVLinC correction=linear: the fixed-point linear-attention term, the exact
// S/z sums over the quantized tokens from full-precision rows, the switch-on
// rule kq >= calib, a deterministic fit, the attention error against
// correction=none on a synthetic case, bits, errors.
#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <vector>

#include "reference/attention/decode_attention.hpp"
#include "reference/attention/linear_correction.hpp"
#include "reference/quant/kvlinc.hpp"
#include "reference/quant/registry.hpp"

using namespace kvsim;

namespace {
std::vector<i32> rows(std::mt19937_64& rng, i64 n, int D, double scale) {
  std::normal_distribution<double> nd(0.0, scale);
  std::vector<i32> v(static_cast<size_t>(n * D));
  for (auto& x : v) x = static_cast<i32>(std::llround(nd(rng) * (1 << kEntryFrac)));
  return v;
}
std::unique_ptr<ref::HeadCache> make_lin(int bits, int G, int R, const std::string& opts, int D) {
  const auto& info = ref::method_info(ref::MethodId::kvlinc);
  ref::MethodConfig m = ref::default_config(info);
  m.bits = bits;
  m.group = G;
  m.residual = R;
  ref::apply_options(m, info, opts);
  REQUIRE(info.check(m, D).empty());
  return info.make(m, D);
}
// Synthetic data: keys with a shared direction the queries look along (so the
// logits spread widely and 2-bit keys bend the softmax), random values.
struct Data {
  std::vector<i32> K, V;
  std::vector<i64> Q;  // [n][group][D] Q.40
};
Data synth(i64 n, int D, int group, unsigned seed) {
  std::mt19937_64 rng(seed);
  Data x;
  x.K = rows(rng, n, D, 1.0);
  x.V = rows(rng, n, D, 1.0);
  const auto Qr = rows(rng, n * group, D, 0.5);
  x.Q.resize(Qr.size());
  for (size_t i = 0; i < Qr.size(); ++i) {
    const int d = static_cast<int>(i % D);
    x.Q[i] = (static_cast<i64>(Qr[i]) + (d < 4 ? (i64{3} << kEntryFrac) : 0)) << 20;
  }
  for (i64 i = 0; i < n * D; ++i)
    if (i % D < 4) x.K[i] += 1 << (kEntryFrac - 1);
  return x;
}
}  // namespace

TEST_CASE("linear correction: none or rank 0 gives decode_attention_ref's bits", "[kvlinc]") {
  const int D = 32;
  const i64 n = 50;
  const Data x = synth(n, D, 1, 3);
  std::vector<i64> s(n), o1(D), o2(D), w1(n), w2(n);
  i64 W1 = 0, W2 = 0;
  ref::decode_attention_ref(x.Q.data(), x.K.data(), x.V.data(), n, D, s.data(), o1.data(), w1.data(), &W1);
  ref::decode_attention_linear_ref(x.Q.data(), x.K.data(), x.V.data(), n, D, s.data(), o2.data(), w2.data(), &W2,
                                   nullptr);
  REQUIRE(o1 == o2);
  REQUIRE(w1 == w2);
  REQUIRE(W1 == W2);
  // one feature with g = 1 (b huge, clamped) and S = phi v_x, z = phi for a value v_x:
  // the output is the exact weighted mean with the extra token of weight phi.
  std::vector<i32> w(D, 0);
  std::vector<i128> S(D);
  const i64 b = i64{1} << 40;
  const i128 z = i128{1} << 24;  // phi = 1
  for (int d = 0; d < D; ++d) S[d] = z * x.V[d];
  const ref::LinearCorrection lc{1, w.data(), &b, S.data(), &z};
  ref::decode_attention_linear_ref(x.Q.data(), x.K.data(), x.V.data(), n, D, s.data(), o2.data(), nullptr, &W2, &lc);
  REQUIRE(W2 == W1 + (i64{1} << 40));
  i128 num[kMaxHeadDim] = {};
  for (i64 t = 0; t < n; ++t)
    for (int d = 0; d < D; ++d) num[d] += static_cast<i128>(w1[t]) * x.V[t * D + d];
  for (int d = 0; d < D; ++d)
    REQUIRE(o2[d] == static_cast<i64>(fx::div_rne((num[d] + (static_cast<i128>(x.V[d]) << 40)) << 20,
                                                   static_cast<i128>(W2))));
  // an off feature adds nothing
  const i64 off = ref::kLinearOff;
  const ref::LinearCorrection lc0{1, w.data(), &off, S.data(), &z};
  ref::decode_attention_linear_ref(x.Q.data(), x.K.data(), x.V.data(), n, D, s.data(), o2.data(), nullptr, &W2, &lc0);
  REQUIRE(o1 == o2);
}

TEST_CASE("linear features: phi <= 1 at the offset, exact powers of two", "[kvlinc]") {
  const int D = 4;
  const i32 w[D] = {1 << 24, 0, 0, 0};  // w.k = k_0
  const i32 k[D] = {3 << 20, 0, 0, 0};
  REQUIRE(ref::linear_proj_key_q32(w, k, D) == (i64{3} << 32));
  REQUIRE(ref::linear_key_feature_q24(w, i64{3} << 32, k, D) == (1 << 24));
  REQUIRE(ref::linear_key_feature_q24(w, i64{5} << 32, k, D) == (1 << 22));
  REQUIRE(ref::linear_key_feature_q24(w, i64{1} << 32, k, D) == (1 << 24));  // clamped at 1
  const i64 q[D] = {i64{2} << 40, 0, 0, 0};
  REQUIRE(ref::linear_proj_query_q32(w, q, D) == (i64{2} << 32));
  REQUIRE(ref::linear_query_weight_q40(w, i64{-1} << 32, q, i64{4} << 32, D) == (i64{1} << 37));
  REQUIRE(ref::linear_query_weight_q40(w, ref::kLinearOff, q, 0, D) == 0);
}

TEST_CASE("kvlinc linear: exact S/z over quantized tokens, switch-on rule, deterministic fit, lower error",
          "[kvlinc]") {
  const int D = 32, G = 16, R = 32, group = 2;
  const i64 n = 600;
  const Data x = synth(n, D, group, 11);
  for (i64 calib : {64, 100}) {
    for (i64 P : {0, 150}) {
      INFO("calib " << calib << " prefill " << P);
      const std::string o = "correction=linear,rank=16,seed=3,calib=" + std::to_string(calib);
      auto c1 = make_lin(2, G, R, o, D), c2 = make_lin(2, G, R, o, D);
      auto c0 = make_lin(2, G, R, "correction=none", D);
      auto& a1 = dynamic_cast<ref::KvlincCache&>(*c1);
      auto& a2 = dynamic_cast<ref::KvlincCache&>(*c2);
      for (i64 t = 0; t < P; ++t)
        for (auto* c : {c1.get(), c2.get(), c0.get()}) c->observe_queries(x.Q.data() + t * group * D, group);
      for (auto* c : {c1.get(), c2.get(), c0.get()}) c->prefill(x.K.data(), x.V.data(), P);
      double e0 = 0, e1 = 0;
      std::vector<i64> s(n), oe(D), o0(D), o1(D);
      for (i64 t = P; t < n; ++t) {
        for (auto* c : {c1.get(), c2.get(), c0.get()}) {
          c->observe_queries(x.Q.data() + t * group * D, group);
          c->append(x.K.data() + t * D, x.V.data() + t * D);
        }
        const i64 kq = a1.kivi().quantized_keys();
        REQUIRE(((c1->linear_correction() != nullptr) == (kq >= calib)));  // the GPU's closed form
        REQUIRE((c2->linear_correction() != nullptr) == (c1->linear_correction() != nullptr));
        for (i64 e = 0; e < (t + 1) * D; ++e) {
          REQUIRE(c1->keys()[e] == c0->keys()[e]);  // the view is untouched
          REQUIRE(c1->values()[e] == c0->values()[e]);
        }
        if (const ref::LinearCorrection* lc = c1->linear_correction()) {
          // S, z: exact sums over s < kq of phi(k_s) [v_s; 1] from the full-precision rows
          const auto& L = a1.linear_params();
          for (int j = 0; j < L.rank; ++j) {
            i128 z = 0, S0 = 0;
            for (i64 u = 0; u < kq; ++u) {
              const i64 phi = ref::linear_key_feature_q24(L.w.data() + j * D, L.c[j], x.K.data() + u * D, D);
              z += phi;
              S0 += static_cast<i128>(phi) * x.V[u * D];
            }
            REQUIRE(lc->z[j] == z);
            REQUIRE(lc->S[static_cast<size_t>(j) * D] == S0);
          }
          for (int g = 0; g < group; ++g) {
            const i64* q = x.Q.data() + (t * group + g) * D;
            ref::decode_attention_ref(q, x.K.data(), x.V.data(), t + 1, D, s.data(), oe.data(), nullptr, nullptr);
            ref::decode_attention_ref(q, c0->keys(), c0->values(), t + 1, D, s.data(), o0.data(), nullptr, nullptr);
            ref::decode_attention_linear_ref(q, c1->keys(), c1->values(), t + 1, D, s.data(), o1.data(), nullptr,
                                             nullptr, lc);
            double n2 = 0, d0 = 0, d1 = 0;
            for (int d = 0; d < D; ++d) {
              n2 += std::pow(static_cast<double>(oe[d]), 2);
              d0 += std::pow(static_cast<double>(o0[d] - oe[d]), 2);
              d1 += std::pow(static_cast<double>(o1[d] - oe[d]), 2);
            }
            e0 += std::sqrt(d0 / n2);
            e1 += std::sqrt(d1 / n2);
          }
        }
        for (auto* c : {c1.get(), c2.get(), c0.get()}) c->end_step();
      }
      REQUIRE(a1.fitted());
      REQUIRE(a1.linear_params().w == a2.linear_params().w);
      REQUIRE(a1.linear_params().c == a2.linear_params().c);
      REQUIRE(a1.linear_params().b == a2.linear_params().b);
      REQUIRE(a1.linear_S() == a2.linear_S());
      REQUIRE(a1.linear_z() == a2.linear_z());
      int on = 0;
      for (i64 b : a1.linear_params().b) on += b != ref::kLinearOff;
      WARN("calib " << calib << " P " << P << ": features on " << on << ", mean rel err none " << e0
                    << " linear " << e1);
      REQUIRE(e1 < e0);
      // bits: KIVI's state + S, z (i128) + w (32) + c, b (64 each)
      ref::MethodConfig k2 = ref::default_config(ref::method_info(ref::MethodId::kivi));
      REQUIRE(c1->stored_bits() == c0->stored_bits() + 16u * (D + 1) * 128 + 16u * D * 32 + 16u * 128);
    }
  }
}

TEST_CASE("kvlinc linear: a fit without calibration queries is an error", "[kvlinc]") {
  const int D = 16;
  auto c = make_lin(2, 16, 32, "correction=linear,calib=10,rank=4", D);
  std::mt19937_64 rng(1);
  const auto K = rows(rng, 40, D, 1.0), V = rows(rng, 40, D, 1.0);
  REQUIRE_THROWS_WITH(c->prefill(K.data(), V.data(), 40), Catch::Contains("calibration queries"));
}

namespace {
// The calibration set of the fit tests: keys, values, coarse "dequantized"
// keys (low bits dropped), queries looking along two channels.
struct FitSet {
  int D = 32, group = 2;
  i64 n = 96;
  std::vector<i32> K, V, KH;
  std::vector<i64> Q;
};
FitSet fit_set(i64 n, int D, int group, unsigned seed, int drop) {
  FitSet f;
  f.n = n, f.D = D, f.group = group;
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  f.K.resize(n * D), f.V.resize(n * D), f.KH.resize(n * D), f.Q.resize(n * group * D);
  for (auto& x : f.K) x = static_cast<i32>(std::llround(nd(rng) * (1 << kEntryFrac)));
  for (auto& x : f.V) x = static_cast<i32>(std::llround(nd(rng) * (1 << kEntryFrac)));
  for (i64 i = 0; i < n * D; ++i) f.KH[i] = (f.K[i] >> drop) << drop;
  for (auto& x : f.Q) x = static_cast<i64>(std::llround(nd(rng) * 0.7 * (1 << kEntryFrac))) << 20;
  for (i64 i = 0; i < n * group * D; ++i)
    if (i % D < 2) f.Q[i] += i64{3} << 40;
  return f;
}
ref::KvlincLinear fit(const FitSet& f, int rank, u64 seed, ref::KvlincTrain t) {
  return ref::kvlinc_fit_linear(f.K.data(), f.V.data(), f.KH.data(), f.Q.data(), f.group, f.n, f.D, rank, seed, t);
}
double objective(const FitSet& f, const ref::KvlincLinear& L, bool held, int window) {
  return ref::kvlinc_linear_objective(f.K.data(), f.V.data(), f.KH.data(), f.Q.data(), f.group, f.n, f.D, L, held,
                                      window);
}
unsigned long long fnv(const ref::KvlincLinear& L) {
  unsigned long long h = 1469598103934665603ULL;
  auto mix = [&](unsigned long long x) {
    for (int i = 0; i < 8; ++i) h = (h ^ ((x >> (8 * i)) & 255)) * 1099511628211ULL;
  };
  for (auto x : L.w) mix(static_cast<unsigned long long>(static_cast<long long>(x)));
  for (auto x : L.c) mix(static_cast<unsigned long long>(x));
  for (auto x : L.b) mix(static_cast<unsigned long long>(x));
  return h;
}
}  // namespace

TEST_CASE("kvlinc linear fit: train=0 gives the random-feature integers of before the training", "[kvlinc]") {
  // The hash was taken from the fit before the trained feature map existed
  // (commit 3e5465b); train = 0 must reproduce it bit for bit.
  const FitSet f = fit_set(96, 32, 2, 7, 18);
  const ref::KvlincLinear L = fit(f, 16, 5, {0, 0.1, 0});
  REQUIRE(fnv(L) == 0x3ec1127b84adc7fdULL);
  REQUIRE(fnv(fit(f, 16, 5, {0, 0.5, 32})) == fnv(L));  // lr and window unused without training
}

TEST_CASE("kvlinc linear fit: training is deterministic and lowers the held-out objective", "[kvlinc]") {
  const int window = 32;
  const FitSet f = fit_set(256, 32, 2, 21, 19);
  const ref::KvlincLinear L0 = fit(f, 16, 3, {0, 0.1, window});
  const ref::KvlincLinear L1 = fit(f, 16, 3, {60, 0.3, window});
  const ref::KvlincLinear L2 = fit(f, 16, 3, {60, 0.3, window});
  REQUIRE(L1.w == L2.w);
  REQUIRE(L1.c == L2.c);
  REQUIRE(L1.b == L2.b);
  REQUIRE(L1.w != L0.w);  // it trained (the start is not the best held-out iterate here)
  const double h0 = objective(f, L0, true, window), h1 = objective(f, L1, true, window);
  const double t0 = objective(f, L0, false, window), t1 = objective(f, L1, false, window);
  WARN("objective held-out " << h0 << " -> " << h1 << ", training " << t0 << " -> " << t1);
  REQUIRE(h0 > 0.0);
  REQUIRE(h1 < 0.98 * h0);
  REQUIRE(t1 < t0);
  // the formats: |w| < 128 in Q.24, offsets within +-2^18 in Q.32 (or off)
  for (i32 w : L1.w) REQUIRE(w != INT32_MIN);
  for (i64 c : L1.c) REQUIRE(std::llabs(c) <= (i64{1} << 50));
  for (i64 b : L1.b) REQUIRE((b == ref::kLinearOff || std::llabs(b) <= (i64{1} << 50)));
}

TEST_CASE("kvlinc linear fit: the objective models the clamps g <= 1 and phi <= 1", "[kvlinc]") {
  // Beyond the clamp a parameter change changes nothing: b so large that
  // g = 1 for every query, c so low that phi = 1 for every key. Without the
  // clamps (a_j unbounded, phi > 1) the two objectives would differ.
  const int window = 16;
  const FitSet f = fit_set(64, 16, 2, 5, 19);
  ref::KvlincLinear L = fit(f, 4, 1, {0, 0.1, window});
  ref::KvlincLinear A = L, B = L, C = L;
  for (int j = 0; j < L.rank; ++j) {
    A.b[j] = i64{1000} << 32, A.c[j] = i64{-1000} << 32;
    B.b[j] = i64{2000} << 32, B.c[j] = i64{-1000} << 32;
    C.b[j] = i64{1000} << 32, C.c[j] = i64{-3000} << 32;
  }
  const double a = objective(f, A, false, window);
  REQUIRE(a > 0.0);
  REQUIRE(objective(f, B, false, window) == a);
  REQUIRE(objective(f, C, false, window) == a);
  // and in the fixed-point path the same: g = 2^40 (Q.40), phi = 2^24 (Q.24)
  REQUIRE(ref::linear_query_weight_q40(A.w.data(), A.b[0], f.Q.data(), 0, f.D) == (i64{1} << 40));
  REQUIRE(ref::linear_key_feature_q24(A.w.data(), A.c[0], f.K.data(), f.D) == (i64{1} << 24));
  // one feature only on, w = 0 (phi = 1 at c = 0), g = 2^(b - m) below the
  // clamp (m, the max logit, is well above b - 0 here): doubling its weight
  // changes the objective
  ref::KvlincLinear E = L, F = L;
  for (int j = 0; j < L.rank; ++j) E.b[j] = F.b[j] = ref::kLinearOff;
  for (int d = 0; d < f.D; ++d) E.w[d] = F.w[d] = 0;
  E.b[0] = i64{-4} << 32, F.b[0] = i64{-3} << 32;
  E.c[0] = F.c[0] = 0;
  REQUIRE(objective(f, E, false, window) != objective(f, F, false, window));
}

TEST_CASE("kvlinc linear: bad train and lr options are clear errors", "[kvlinc]") {
  const auto& info = ref::method_info(ref::MethodId::kvlinc);
  for (const char* bad : {"train=-1", "train=x", "train=100001", "lr=0", "lr=-0.1", "lr=2", "lr=abc", "lr=0.1x"}) {
    INFO(bad);
    ref::MethodConfig m = ref::default_config(info);
    ref::apply_options(m, info, std::string("correction=linear,") + bad);
    const std::string why = info.check(m, 32);
    REQUIRE_THAT(why, Catch::StartsWith("kvlinc: "));
    REQUIRE_THAT(why, Catch::Contains(std::string(bad).substr(0, 2) == "tr" ? "train" : "lr"));
  }
  ref::MethodConfig m = ref::default_config(info);
  ref::apply_options(m, info, "correction=linear,train=0,lr=0.5");
  REQUIRE(info.check(m, 32).empty());
  REQUIRE(ref::kvlinc_config(m).train.steps == 0);
  REQUIRE(ref::kvlinc_config(m).train.lr == 0.5);
}
