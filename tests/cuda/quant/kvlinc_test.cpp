// KVLinC on the GPU against reference/quant/kvlinc.hpp, tolerance zero: the
// KIVI state of (k, H v) (codes, fp16 scales/minima), the fitted affine
// correction (the host fit's integers), the view rule and the correction's
// switch (kq >= calib), the attention view of every token after the last
// step, and the exact decode attention (outputs, denominators, weights) of
// every step and query head. Head dims 64, 80, 96, 128, 256; GQA 1, 4, 8;
// bits 2 and 4; corrections none and affine with the switch before, inside
// and after the decode; guard bytes around every device buffer.
#include <catch2/catch.hpp>

#include <climits>
#include <cmath>
#include <random>
#include <sstream>
#include <vector>

#include "cuda/kvsim_cuda.hpp"
#include "tests/cuda/quant/compare.hpp"
#include "reference/attention/decode_attention.hpp"
#include "reference/attention/linear_correction.hpp"
#include "reference/quant/kvlinc.hpp"
#include "reference/quant/registry.hpp"

using namespace kvsim;

namespace {

struct Case {
  int D, Hq, Hkv, bits, G, R;
  i64 T, P;
  std::string correction;
  i64 calib;
  u64 seed;
};

std::string describe(const Case& c) {
  std::ostringstream s;
  s << "kvlinc D=" << c.D << " Hq=" << c.Hq << " Hkv=" << c.Hkv << " bits=" << c.bits << " G=" << c.G
    << " R=" << c.R << " T=" << c.T << " P=" << c.P << " correction=" << c.correction << " calib=" << c.calib
    << " seed=" << c.seed;
  return s.str();
}

// Rows [T][H][D] entry format; keys get outlier channels and per-channel offsets.
std::vector<i32> rows(std::mt19937_64& rng, i64 T, int H, int D, double scale, bool keys) {
  std::normal_distribution<double> nd(0.0, scale);
  std::vector<i32> v(static_cast<size_t>(T) * H * D);
  for (size_t i = 0; i < v.size(); ++i) {
    const int d = static_cast<int>(i % D);
    double x = nd(rng);
    if (keys) x = x * (d % 17 == 3 ? 8.0 : 1.0) + 0.05 * (d % 11);
    v[i] = static_cast<i32>(std::llround(x * (1 << kEntryFrac)));
  }
  if (T >= 2)  // one token equal to the previous one (all-equal groups)
    for (int j = 0; j < H * D; ++j) v[static_cast<size_t>(H) * D + j] = v[j];
  return v;
}

std::vector<i64> query_rows(std::mt19937_64& rng, i64 T, int H, int D, double scale) {
  std::normal_distribution<double> nd(0.0, scale);
  std::vector<i64> v(static_cast<size_t>(T) * H * D);
  for (auto& x : v) x = std::llround(nd(rng) * std::ldexp(1.0, ref::kQueryFrac));
  return v;
}

void run_case(const Case& c) {
  INFO(describe(c));
  std::mt19937_64 rng(c.seed);
  const std::vector<i64> q = query_rows(rng, c.T, c.Hq, c.D, 1.0);
  const std::vector<i32> k = rows(rng, c.T, c.Hkv, c.D, 1.0, true), v = rows(rng, c.T, c.Hkv, c.D, 0.5, false);
  const auto& info = ref::method_info(ref::MethodId::kvlinc);
  ref::MethodConfig mc = ref::default_config(info);
  mc.bits = c.bits;
  mc.group = c.G;
  mc.residual = c.R;
  ref::apply_options(mc, info, "correction=" + c.correction + ",calib=" + std::to_string(c.calib));
  REQUIRE(info.check(mc, c.D).empty());

  test::GpuCase gpu(mc, c.Hq, c.Hkv, c.D, c.T, c.P, q, k, v, true);
  const i64 corr_from = gpu.eng.correction_from(gpu.view);

  const int group = c.Hq / c.Hkv;
  bool nonzero = false, switched = false;
  for (int h = 0; h < c.Hkv; ++h) {
    auto cache = info.make(mc, c.D);
    const auto& kl = dynamic_cast<const ref::KvlincCache&>(*cache);
    const std::vector<i32> pk = test::head_rows(k, 0, c.P, c.Hkv, h, c.D), pv = test::head_rows(v, 0, c.P, c.Hkv, h, c.D);
    const bool linear = c.correction.rfind("linear", 0) == 0;
    auto observe = [&](i64 t) { cache->observe_queries(q.data() + (static_cast<size_t>(t) * c.Hq + h * group) * c.D, group); };
    for (i64 t = 0; t < c.P; ++t) observe(t);
    cache->prefill(pk.data(), pv.data(), c.P);
    for (i64 t = c.P; t < c.T; ++t) {
      const size_t r = (static_cast<size_t>(t) * c.Hkv + h) * c.D;
      observe(t);
      cache->append(k.data() + r, v.data() + r);
      const cuda::StepView sv = cuda::view_at(mc, t);
      {
        INFO("step " << t << " kv head " << h);
        REQUIRE(kl.kivi().quantized_keys() == sv.kq);
        REQUIRE(kl.kivi().quantized_values() == sv.vq);
        REQUIRE(kl.fitted() == (sv.kq >= (linear ? c.calib : corr_from)));
        switched |= kl.fitted() && sv.kq > 0;
      }
      test::require_same_attention(gpu.out, static_cast<size_t>(t - c.P), t, h, group, q, *cache, true, nonzero);
      cache->end_step();
    }
    const cuda::StepView fin = cuda::view_at(mc, c.T);
    REQUIRE(kl.kivi().quantized_keys() == fin.kq);
    REQUIRE(kl.kivi().quantized_values() == fin.vq);
    const cuda::KiviState s = gpu.eng.kivi_state(gpu.view, h, fin.kq, fin.vq);
    test::require_same_params(s.key_params, kl.kivi().key_params(), "key group param");
    test::require_same_params(s.value_params, kl.kivi().value_params(), "value group param");
    REQUIRE(s.key_codes == kl.kivi().key_codes());
    REQUIRE(s.value_codes == kl.kivi().value_codes());
    if (kl.fitted() && linear) {  // phi's parameters and the end state's S, z
      std::vector<i128> S, z;
      const ref::KvlincLinear L = gpu.eng.kvlinc_linear(gpu.view, h, fin.kq, S, z);
      REQUIRE(L.w == kl.linear_params().w);
      REQUIRE(L.c == kl.linear_params().c);
      REQUIRE(L.b == kl.linear_params().b);
      REQUIRE(S == kl.linear_S());
      REQUIRE(z == kl.linear_z());
    } else if (kl.fitted()) {
      const ref::KvlincAffine a = gpu.eng.kvlinc_affine(gpu.view, h);
      REQUIRE(a.alpha == kl.affine().alpha);
      REQUIRE(a.beta == kl.affine().beta);
    }
    test::require_same_view(gpu.eng, gpu.view, h, fin, c.T, *cache);
  }
  if (c.T > c.P) REQUIRE(nonzero);
  if (c.correction != "affine") REQUIRE(corr_from == LLONG_MAX);
  (void)switched;
}

}  // namespace

TEST_CASE("CUDA KVLinC quantization, correction and decode attention equal the reference", "[cuda][kvlinc]") {
  u64 seed = 21000;
  for (int D : {64, 80, 96, 128, 256}) {
    const int G = D % 32 == 0 ? 32 : 16;
    const int R = 2 * G;
    for (int bits : {2, 4})
      for (int ratio : {1, 4, 8})
        for (const char* corr : {"none", "affine"})
          for (i64 T : {i64{1}, i64{9}, i64{R - 1}, i64{R}, i64{R + 1}, i64{2 * R + 1}, i64{243}}) {
            if (D >= 128 && ratio == 8 && T > 2 * R + 1) continue;  // keep the checked CPU side quick
            const i64 P = T < 3 ? 0 : (T * 2) / 3;
            // calib: fitted at the prefill, inside the decode, or never
            const i64 calib = (seed % 3 == 0) ? 1 : (seed % 3 == 1 ? R + 1 : 3 * R);
            run_case({D, ratio * (ratio == 1 ? 2 : 1), ratio == 1 ? 2 : 1, bits, G, R, T, P, corr, calib, ++seed});
          }
  }
}

TEST_CASE("CUDA KVLinC default G 32, R 128: the correction switches on mid-decode", "[cuda][kvlinc]") {
  u64 seed = 23000;
  for (i64 P : {i64{0}, i64{127}, i64{129}, i64{300}})
    for (int bits : {2, 4}) run_case({128, 4, 1, bits, 32, 128, 420, P, "affine", 200, ++seed});
}

TEST_CASE("CUDA KVLinC correction=linear: S, z prefix states and the corrected attention equal the reference",
          "[cuda][kvlinc]") {
  u64 seed = 25000;
  for (int D : {64, 96, 128}) {
    const int G = D % 32 == 0 ? 32 : 16;
    const int R = 2 * G;
    for (int bits : {2, 4})
      for (int ratio : {1, 4})
        for (i64 T : {i64{9}, i64{R + 1}, i64{3 * R + 5}, i64{300}}) {
          const i64 P = (T * 2) / 3;
          const i64 calib = (seed % 3 == 0) ? 1 : (seed % 3 == 1 ? R + 1 : 2 * R);
          run_case({D, ratio * (ratio == 1 ? 2 : 1), ratio == 1 ? 2 : 1, bits, G, R, T, P, "linear,rank=16", calib,
                    ++seed});
        }
  }
  for (i64 P : {i64{0}, i64{129}})
    run_case({128, 4, 1, 2, 32, 128, 420, P, "linear,seed=5", 200, ++seed});  // default rank 64
}
