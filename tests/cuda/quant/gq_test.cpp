// gq on the GPU against reference/quant/gq.hpp, tolerance zero: the fp16
// scales/zeros, code words and k-means codebooks of every flushed group, the
// view rule (quantized token counts at every step), the dequantized views and
// the exact decode attention of every step and query head. Head dims 64, 80,
// 96, 128, 256; GQA 1, 4, 8; bits 2 and 4; every preset without heavy
// hitters (gq_hh_test.cpp) and a sample of combinations; vector k-means
// (presets at 2 bits, combinations with d = 2, 4) in its own case; lengths
// around block boundaries;
// guard bytes around every device buffer; non-zero outputs required.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <random>
#include <sstream>
#include <vector>

#include "cuda/kvsim_cuda.hpp"
#include "tests/cuda/quant/compare.hpp"
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
  test::GpuCase gpu(mc, Hq, Hkv, D, T, P, q, k, v, false);
  const int group = Hq / Hkv;
  bool nonzero = false;
  for (int h = 0; h < Hkv; ++h) {
    auto base = ref::method_info(mc.id).make(mc, D);
    auto& cache = dynamic_cast<ref::GqCache&>(*base);
    const std::vector<i32> pk = test::head_rows(k, 0, P, Hkv, h, D), pv = test::head_rows(v, 0, P, Hkv, h, D);
    cache.prefill(pk.data(), pv.data(), P);
    for (i64 t = P; t < T; ++t) {
      const size_t r = (static_cast<size_t>(t) * Hkv + h) * D;
      cache.append(k.data() + r, v.data() + r);
      const cuda::StepView sv = cuda::view_at(mc, t);
      INFO("step " << t << " kv head " << h);
      REQUIRE(cache.quantized_keys() == sv.kq);
      REQUIRE(cache.quantized_values() == sv.vq);
      test::require_same_attention(gpu.out, static_cast<size_t>(t - P), t, h, group, q, cache, false, nonzero);
      cache.end_step();
    }
    const cuda::StepView fin = cuda::view_at(mc, T);
    REQUIRE(cache.quantized_keys() == fin.kq);
    REQUIRE(cache.quantized_values() == fin.vq);
    const cuda::GqState s = gpu.eng.gq_state(gpu.view, h, cache.key_state().nq, cache.value_state().nq);
    test::require_same_params(s.key_params, cache.key_state().params, "key param");
    test::require_same_params(s.value_params, cache.value_state().params, "value param");
    REQUIRE(s.key_codes == cache.key_state().codes);
    REQUIRE(s.value_codes == cache.value_state().codes);
    REQUIRE(s.key_codebook == cache.key_state().codebook);
    REQUIRE(s.value_codebook == cache.value_state().codebook);
    test::require_same_view(gpu.eng, gpu.view, h, fin, T, cache);
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
          ++seed;
          run_gq(mc, D, ratio == 1 ? 2 : ratio, ratio == 1 ? 2 : 1, T, seed % 3 == 0 ? 0 : 130, seed);
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
        ++seed;
        run_gq(spec(info.name, g + "calib=140"), D, ratio == 1 ? 2 : ratio, ratio == 1 ? 2 : 1, T,
               seed % 3 == 0 ? 0 : 130, seed);
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
