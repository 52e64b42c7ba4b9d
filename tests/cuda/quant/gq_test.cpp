// gq on the GPU against reference/quant/gq.hpp, tolerance zero: the fp16
// scales/zeros, code words and k-means codebooks of every flushed group, the
// view rule (quantized token counts at every step), the dequantized views and
// the exact decode attention of every step and query head. Head dims 64, 80,
// 96, 128, 256; GQA 1, 4, 8; bits 2 and 4; every preset without heavy
// hitters and a sample of combinations; vector k-means (presets at 2 bits,
// combinations with d = 2, 4) in its own case; lengths around block boundaries;
// guard bytes around every device buffer; non-zero outputs required.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <random>
#include <sstream>
#include <vector>

#include "cuda/kvsim_cuda.hpp"
#include "reference/attention/decode_attention.hpp"
#include "reference/quant/gq.hpp"
#include "reference/quant/registry.hpp"

using namespace kvsim;

namespace {

std::vector<i32> gq_rows(std::mt19937_64& rng, i64 T, int H, int D, double scale) {
  std::normal_distribution<double> nd(0.0, scale);
  std::vector<i32> v(static_cast<size_t>(T) * H * D);
  for (size_t i = 0; i < v.size(); ++i) {
    const int d = static_cast<int>(i % D);
    const double x = std::max(-2000.0, std::min(2000.0, nd(rng) * (d % 17 == 3 ? 12.0 : 1.0)));
    v[i] = static_cast<i32>(std::llround(x * (1 << kEntryFrac)));
  }
  if (T >= 2)  // an all-equal pair of tokens
    for (int j = 0; j < H * D; ++j) v[static_cast<size_t>(H) * D + j] = v[j];
  return v;
}

std::vector<i64> gq_queries(std::mt19937_64& rng, i64 T, int H, int D) {
  std::normal_distribution<double> nd(0.0, 1.5);
  std::vector<i64> v(static_cast<size_t>(T) * H * D);
  for (auto& x : v) x = std::llround(std::max(-2000.0, std::min(2000.0, nd(rng))) * std::ldexp(1.0, ref::kQueryFrac));
  return v;
}

bool is_vq(const ref::MethodInfo& info) {
  const ref::MethodConfig c = ref::default_config(info);
  return c.opt_int("kvdim") > 1 || c.opt_int("vvdim") > 1;
}

ref::MethodConfig spec(const std::string& row, const std::string& opts) {
  const ref::MethodInfo* info = ref::find_method(row);
  REQUIRE(info != nullptr);
  ref::MethodConfig c = ref::default_config(*info);
  ref::apply_options(c, *info, opts);
  return c;
}

void run_gq(const ref::MethodConfig& mc, int D, int Hq, int Hkv, i64 T, i64 P, u64 seed) {
  INFO(ref::method_label(mc) << " D=" << D << " Hq=" << Hq << " Hkv=" << Hkv << " T=" << T << " P=" << P
                             << " seed=" << seed);
  const std::string why = ref::method_info(mc.id).check(mc, D);
  INFO(why);
  REQUIRE(why.empty());
  std::mt19937_64 rng(seed);
  const std::vector<i64> q = gq_queries(rng, T, Hq, D);
  const std::vector<i32> k = gq_rows(rng, T, Hkv, D, 1.0), v = gq_rows(rng, T, Hkv, D, 1.0);
  cuda::LayerEngine eng(Hq, Hkv, D, T, 4096);
  eng.upload(0, T, q.data(), k.data(), v.data());
  const int view = eng.add_method(mc);
  std::vector<cuda::StepView> items;
  for (i64 t = P; t < T; ++t) items.push_back(cuda::view_at(mc, t));
  cuda::AttnOut out;
  eng.attend(view, items, false, out);
  eng.check_guards();
  const int group = Hq / Hkv;
  bool nonzero = false;
  for (int h = 0; h < Hkv; ++h) {
    auto base = ref::method_info(mc.id).make(mc, D);
    auto& cache = dynamic_cast<ref::GqCache&>(*base);
    std::vector<i32> pk, pv;
    for (i64 t = 0; t < P; ++t) {
      const size_t r = (static_cast<size_t>(t) * Hkv + h) * D;
      pk.insert(pk.end(), k.begin() + r, k.begin() + r + D);
      pv.insert(pv.end(), v.begin() + r, v.begin() + r + D);
    }
    cache.prefill(pk.data(), pv.data(), P);
    std::vector<i64> logits, o(static_cast<size_t>(D));
    for (i64 t = P; t < T; ++t) {
      const size_t r = (static_cast<size_t>(t) * Hkv + h) * D;
      cache.append(k.data() + r, v.data() + r);
      const cuda::StepView sv = cuda::view_at(mc, t);
      INFO("step " << t << " kv head " << h);
      REQUIRE(cache.quantized_keys() == sv.kq);
      REQUIRE(cache.quantized_values() == sv.vq);
      const i64 n = t + 1;
      const size_t e = static_cast<size_t>(t - P);
      logits.resize(static_cast<size_t>(n));
      for (int g = 0; g < group; ++g) {
        const int qh = h * group + g;
        i64 W = 0;
        ref::decode_attention_ref(q.data() + (static_cast<size_t>(t) * Hq + qh) * D, cache.keys(), cache.values(), n,
                                  D, logits.data(), o.data(), nullptr, &W);
        const i64* go = out.out.data() + (e * Hq + qh) * D;
        for (int d = 0; d < D; ++d) {
          if (o[d] != go[d])
            FAIL("output mismatch at step " << t << " q head " << qh << " element " << d << ": cpu " << o[d]
                                            << " gpu " << go[d]);
          nonzero |= o[d] != 0;
        }
        REQUIRE(W == out.den[e * Hq + qh]);
      }
      cache.end_step();
    }
    const cuda::StepView fin = cuda::view_at(mc, T);
    REQUIRE(cache.quantized_keys() == fin.kq);
    REQUIRE(cache.quantized_values() == fin.vq);
    const cuda::GqState s = eng.gq_state(view, h, cache.key_state().nq, cache.value_state().nq);
    auto same_params = [](const std::vector<ref::AsymParams>& a, const std::vector<ref::AsymParams>& b) {
      if (a.size() != b.size()) return false;
      for (size_t i = 0; i < a.size(); ++i)
        if (a[i].scale != b[i].scale || a[i].zero != b[i].zero) return false;
      return true;
    };
    REQUIRE(same_params(s.key_params, cache.key_state().params));
    REQUIRE(same_params(s.value_params, cache.value_state().params));
    REQUIRE(s.key_codes == cache.key_state().codes);
    REQUIRE(s.value_codes == cache.value_state().codes);
    REQUIRE(s.key_codebook == cache.key_state().codebook);
    REQUIRE(s.value_codebook == cache.value_state().codebook);
    std::vector<i32> K, V;
    eng.view_rows(view, h, fin, T, K, V);
    REQUIRE(std::equal(K.begin(), K.end(), cache.keys()));
    REQUIRE(std::equal(V.begin(), V.end(), cache.values()));
  }
  if (T > P) REQUIRE(nonzero);
}

}  // namespace

TEST_CASE("CUDA gq presets equal the reference (head dims, GQA, bits)", "[cuda][gq]") {
  u64 seed = 20000;
  for (const auto& info : ref::kMethods) {
    if (info.id != ref::MethodId::gq || ref::default_config(info).opt_int("hh") > 0 || is_vq(info)) continue;
    const ref::MethodConfig dc = ref::default_config(info);
    for (int D : {64, 80, 96, 128, 256}) {
      const std::string g = D % 32 == 0 ? "" : "kgroup=16,vgroup=16,";
      for (int bits : {2, 4})
        for (int ratio : {1, 4, 8}) {
          if (D >= 128 && ratio == 8 && bits == 4) continue;  // keep the checked CPU side quick
          const std::string calib = dc.opt("klevels") == "kmeans" ? "calib=140," : "";
          const ref::MethodConfig mc =
              spec(info.name, g + calib + "kbits=" + std::to_string(bits) + ",vbits=" + std::to_string(bits));
          const i64 T = D >= 128 ? 200 : 260;
          run_gq(mc, D, ratio == 1 ? 2 : ratio, ratio == 1 ? 2 : 1, T, ++seed % 3 == 0 ? 0 : 130, seed);
        }
    }
  }
}

TEST_CASE("CUDA gq combinations and block/window/sink boundaries equal the reference", "[cuda][gq]") {
  u64 seed = 30000;
  const std::vector<std::string> combos = {
      "kblock=16,kgroup=8,kwindow=5,vblock=4,vwindow=3,sinks=3",
      "kaxis=tensor,kblock=16,vaxis=tensor,vblock=8,vwindow=2,sinks=1,kscale=pct99,vscale=pct95",
      "kaxis=token,kblock=1,vaxis=channel,vgroup=4,vblock=8,vwindow=0,kscale=mse,vscale=mse",
      "klevels=log,vlevels=pow0.75,kbits=3,vbits=4,kscale=mse,vscale=pct97.5",
      "klevels=kmeans,vlevels=kmeans,kbits=3,vbits=2,calib=70,kblock=32,sinks=4,kscale=pct99.9,vscale=mse",
      "klevels=pow0.25,vlevels=log,kaxis=tensor,kblock=8,vbits=8",
      "klevels=kmeans,calib=40,kgroup=8,kblock=8,vlevels=uniform,vbits=5",
  };
  for (const auto& o : combos)
    for (i64 P : {i64{0}, i64{1}, i64{15}, i64{16}, i64{17}, i64{69}, i64{70}, i64{71}})
      for (int D : {64, 96}) {
        const std::string g = D % 32 == 0 || o.find("kgroup") != std::string::npos ? "" : "kgroup=16,";
        const std::string vg = o.find("vgroup") != std::string::npos ? "" : "vgroup=16,";
        run_gq(spec("gq", g + vg + o), D, 8, 2, P + 90, P, ++seed);
      }
}

TEST_CASE("CUDA gq vector k-means presets and combinations equal the reference", "[cuda][gq][vq]") {
  u64 seed = 40000;
  for (const auto& info : ref::kMethods) {  // the vq presets: 2-bit (b d <= 8); fits of 256 centroids kept small
    if (info.id != ref::MethodId::gq || !is_vq(info)) continue;
    for (int D : {64, 80, 96, 128, 256})
      for (int ratio : {1, 8}) {
        if (D == 256 && ratio == 1) continue;
        const std::string g = D % 32 == 0 ? "" : "kgroup=16,vgroup=16,";
        const i64 T = D >= 128 ? 200 : 260;
        run_gq(spec(info.name, g + "calib=140"), D, ratio == 1 ? 2 : ratio, ratio == 1 ? 2 : 1, T,
               ++seed % 3 == 0 ? 0 : 130, seed);
      }
  }
  const std::vector<std::string> combos = {
      // 6-bit key codes (5 per word) with the MSE search; 8-bit value codes with percentile clipping
      "klevels=kmeans,vlevels=kmeans,kvdim=2,vvdim=4,kbits=3,calib=70,kblock=32,kgroup=16,sinks=3,kscale=mse,vscale=pct99",
      // tensor axis (vectors of 4 along the block's rows); channel-axis values, vectors of 2 tokens, 8-bit codes
      "kaxis=tensor,kblock=8,klevels=kmeans,kvdim=4,vaxis=channel,vgroup=8,vblock=8,vwindow=0,vlevels=kmeans,vvdim=2,"
      "vbits=4,calib=40",
  };
  for (const auto& o : combos)
    for (i64 P : {i64{0}, i64{1}, i64{31}, i64{32}, i64{33}, i64{69}, i64{70}, i64{71}})
      for (int D : {64, 96}) {
        const std::string vg = o.find("vgroup") != std::string::npos ? "" : "vgroup=16,";
        run_gq(spec("gq", vg + o), D, 8, 2, P + 90, P, ++seed);
      }
}

TEST_CASE("CUDA gq rejects heavy hitters with a message", "[cuda][gq]") {
  cuda::LayerEngine eng(4, 1, 64, 10);
  REQUIRE_THROWS_WITH(eng.add_method(spec("gq-sink-hh", "")), Catch::Contains("no CUDA twin"));
}
