// gq heavy hitters (hh > 0) on the GPU against reference/quant/gq.hpp,
// tolerance zero. The GPU's step-sequential pass (LayerEngine::add_method,
// gq_pool_flush) must leave, for every token, the step from which it is seen
// quantized: checked against the CPU cache's pool after EVERY step (the same
// set of held tokens), the accumulated masses at the end (every token), the
// exact attention outputs and denominators of every step and query head (which
// the held tokens change), and the final view. Budgets from 1 token to more
// than the trace; prefill lengths 0, 1, around block and window boundaries and
// longer than the budget (the prefill's flush evicts many tokens at once, all
// of mass 0: the order's tie rule); GQA 1 and 4; head dims 64 and 128; k-means
// levels (the pool waits for the calibration prefix). The queries are drawn
// towards a few keys so that masses differ and the pool really churns (the
// test requires evictions by mass, not only by age).
#include <catch2/catch.hpp>

#include <algorithm>
#include <climits>
#include <cmath>
#include <random>
#include <vector>

#include "cuda/kvsim_cuda.hpp"
#include "reference/quant/gq.hpp"
#include "reference/quant/observe.hpp"
#include "reference/quant/registry.hpp"
#include "tests/cuda/quant/compare.hpp"

using namespace kvsim;

namespace {

ref::MethodConfig gq_spec(const std::string& row, const std::string& opts) {
  const ref::MethodInfo* info = ref::find_method(row);
  REQUIRE(info != nullptr);
  ref::MethodConfig c = ref::default_config(*info);
  ref::apply_options(c, *info, opts);
  return c;
}

struct Rows {
  std::vector<i64> q;  // [T][Hq][D]
  std::vector<i32> k, v;  // [T][Hkv][D]
};

// Keys and values N(0, 1) with a few loud channels; each query leans towards
// one of 6 "anchor" tokens of its KV head (chosen per step), so that attention
// concentrates on a changing few.
Rows hh_rows(u64 seed, i64 T, int Hq, int Hkv, int D) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  Rows r;
  r.k.resize(static_cast<size_t>(T) * Hkv * D);
  r.v.resize(r.k.size());
  std::vector<double> kd(r.k.size());
  for (size_t i = 0; i < r.k.size(); ++i) {
    const double loud = (i % D) % 13 == 5 ? 6.0 : 1.0;
    kd[i] = std::max(-500.0, std::min(500.0, nd(rng) * loud));
    r.k[i] = static_cast<i32>(std::llround(kd[i] * (1 << kEntryFrac)));
    r.v[i] = static_cast<i32>(std::llround(std::max(-500.0, std::min(500.0, nd(rng))) * (1 << kEntryFrac)));
  }
  r.q.resize(static_cast<size_t>(T) * Hq * D);
  const int group = Hq / Hkv;
  for (i64 t = 0; t < T; ++t)
    for (int qh = 0; qh < Hq; ++qh) {
      const int h = qh / group;
      const i64 anchor = std::min<i64>(t, std::vector<i64>{3, 17, 40, 77, 150, 230}[static_cast<size_t>((t / 9 + qh) % 6)]);
      for (int d = 0; d < D; ++d) {
        const double x = 0.6 * kd[(static_cast<size_t>(anchor) * Hkv + h) * D + d] + 0.8 * nd(rng);
        r.q[(static_cast<size_t>(t) * Hq + qh) * D + d] =
            std::llround(std::max(-500.0, std::min(500.0, x)) * std::ldexp(1.0, ref::kQueryFrac));
      }
    }
  return r;
}

// Returns the number of evictions of tokens with a non-zero mass (churn by mass).
i64 run_hh(const ref::MethodConfig& mc, int D, int Hq, int Hkv, i64 T, i64 P, u64 seed) {
  INFO(ref::method_label(mc) << " D=" << D << " Hq=" << Hq << " Hkv=" << Hkv << " T=" << T << " P=" << P);
  REQUIRE(ref::method_info(mc.id).check(mc, D).empty());
  const Rows r = hh_rows(seed, T, Hq, Hkv, D);
  test::GpuCase gpu(mc, Hq, Hkv, D, T, P, r.q, r.k, r.v, false);
  cuda::LayerEngine& eng = gpu.eng;
  const int view = gpu.view;
  const int group = Hq / Hkv;
  i64 churn = 0;
  for (int h = 0; h < Hkv; ++h) {
    std::vector<i64> until, acc;
    eng.heavy_hitters(view, h, until, acc);
    REQUIRE(until.size() == static_cast<size_t>(T));
    REQUIRE(acc.size() == static_cast<size_t>(T));
    auto base = ref::method_info(mc.id).make(mc, D);
    auto& cache = dynamic_cast<ref::GqCache&>(*base);
    const ref::GqConfig& c = cache.config();
    const std::vector<i32> pk = test::head_rows(r.k, 0, P, Hkv, h, D), pv = test::head_rows(r.v, 0, P, Hkv, h, D);
    cache.prefill(pk.data(), pv.data(), P);
    auto same_pool = [&](i64 step) {  // the CPU pool == the tokens the GPU holds during `step`
      std::vector<i64> cpu = cache.pool(), held;
      for (i64 s = c.sinks; s < ref::gq_pool_end(c, cache.size()); ++s)
        if (step < until[static_cast<size_t>(s)]) held.push_back(s);
      std::sort(cpu.begin(), cpu.end());
      INFO("pool before step " << step << " kv head " << h);
      REQUIRE(cpu == held);
      REQUIRE(static_cast<int>(cpu.size()) <= c.hh);
    };
    same_pool(P);
    std::vector<i64> mass;
    bool nonzero = false;
    for (i64 t = P; t < T; ++t) {
      const size_t at = (static_cast<size_t>(t) * Hkv + h) * D;
      cache.append(r.k.data() + at, r.v.data() + at);
      const cuda::StepView sv = cuda::view_at(mc, t);
      REQUIRE(cache.quantized_keys() == sv.kq);
      REQUIRE(cache.quantized_values() == sv.vq);
      test::require_same_attention(gpu.out, static_cast<size_t>(t - P), t, h, group, r.q, cache, false, nonzero);
      ref::observe_step(cache, r.q.data() + (static_cast<size_t>(t) * Hq + static_cast<size_t>(h) * group) * D, group,
                        mass);
      const std::vector<i64> before = cache.pool();
      cache.end_step();
      for (i64 s : before)  // left the pool at this flush, with attention mass behind it
        if (std::find(cache.pool().begin(), cache.pool().end(), s) == cache.pool().end() &&
            cache.accumulated()[static_cast<size_t>(s)] > 0)
          ++churn;
      same_pool(t + 1);
    }
    REQUIRE(cache.accumulated() == acc);
    test::require_same_view(eng, view, h, cuda::view_at(mc, T), T, cache);
    if (T > P) REQUIRE(nonzero);
    const cuda::GqState s = eng.gq_state(view, h, cache.key_state().nq, cache.value_state().nq);
    REQUIRE(s.key_codes == cache.key_state().codes);
    REQUIRE(s.value_codes == cache.value_state().codes);
  }
  return churn;
}

}  // namespace

TEST_CASE("CUDA gq heavy hitters equal the reference step by step (pool, masses, outputs)", "[cuda][gq][hh]") {
  u64 seed = 50000;
  i64 churn = 0;
  // the registry preset, then budgets from 1 token to more than the trace, windows and blocks of every kind
  const std::vector<std::string> combos = {
      "sinks=4,hh=64",
      "hh=1,kblock=16,kgroup=16,vwindow=8",
      "sinks=2,hh=7,kblock=16,kgroup=8,kwindow=5,vblock=4,vwindow=3",
      "sinks=3,hh=20,kaxis=token,kblock=1,vwindow=0,kbits=4",
      "hh=40,kaxis=tensor,kblock=32,vaxis=tensor,vblock=8,vwindow=2,kscale=pct99,vscale=mse",
      "hh=1000,kblock=32,vwindow=16",
      "sinks=1,hh=12,klevels=kmeans,vlevels=kmeans,calib=70,kblock=32,vwindow=16,kbits=3",
  };
  for (const auto& o : combos)
    for (i64 P : {i64{0}, i64{1}, i64{31}, i64{33}, i64{150}})
      for (int D : {64, 128}) {
        if (D == 128 && P != 33) continue;  // keep the checked CPU side quick
        const ref::MethodConfig mc = gq_spec("gq", o);
        churn += run_hh(mc, D, D == 64 ? 8 : 4, D == 64 ? 2 : 1, P + 260, P, ++seed);
      }
  REQUIRE(churn > 100);  // evictions decided by accumulated mass, not only by the prefill's ties
}

TEST_CASE("CUDA gq heavy hitters need the prefill length", "[cuda][gq][hh]") {
  cuda::LayerEngine eng(4, 1, 64, 10);
  REQUIRE_THROWS_WITH(eng.add_method(gq_spec("gq-sink-hh", "")), Catch::Contains("prefill length"));
  REQUIRE_THROWS_WITH(eng.set_prefill(11), Catch::Contains("out of range"));
}
