// KIVI on the GPU against reference/quant/kivi.hpp, tolerance zero: codes,
// fp16 scales/minima, the view rule (quantized token counts at every step),
// and the exact decode attention of every step and query head against
// decode_attention_ref over the reference cache's own view. Head dims 64, 80,
// 96, 128, 256; lengths 1, 3, 9, 27, 81, 129, 243 and group/window
// boundaries +-1; GQA ratios 1, 4, 8; bits 2 and 4; guard bytes around every
// device buffer; non-zero outputs required.
#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <sstream>
#include <vector>

#include "cuda/kvsim_cuda.hpp"
#include "tests/cuda/quant/compare.hpp"
#include "tests/cuda/quant/test_rows.hpp"
#include "reference/attention/decode_attention.hpp"
#include "reference/quant/kivi.hpp"
#include "reference/quant/registry.hpp"

using namespace kvsim;

namespace {

struct Case {
  int D, Hq, Hkv, bits, G, R;
  i64 T, P;
  u64 seed;
  bool fp = false;
};

std::string describe(const Case& c) {
  std::ostringstream s;
  s << (c.fp ? "fp" : "kivi") << " D=" << c.D << " Hq=" << c.Hq << " Hkv=" << c.Hkv << " bits=" << c.bits
    << " G=" << c.G << " R=" << c.R << " T=" << c.T << " P=" << c.P << " seed=" << c.seed;
  return s.str();
}

using test::query_rows;
using test::rows;

void run_case(const Case& c) {
  INFO(describe(c));
  std::mt19937_64 rng(c.seed);
  const std::vector<i64> q = query_rows(rng, c.T, c.Hq, c.D, 1.5);
  const std::vector<i32> k = rows(rng, c.T, c.Hkv, c.D, 1.0), v = rows(rng, c.T, c.Hkv, c.D, 1.0);
  ref::MethodConfig mc;
  mc.id = c.fp ? ref::MethodId::fp : ref::MethodId::kivi;
  mc.bits = c.fp ? 16 : c.bits;
  mc.group = c.G;
  mc.residual = c.R;
  REQUIRE(ref::method_info(mc.id).check(mc, c.D).empty());

  test::GpuCase gpu(mc, c.Hq, c.Hkv, c.D, c.T, c.P, q, k, v, true);

  const int group = c.Hq / c.Hkv;
  bool nonzero = false;
  for (int h = 0; h < c.Hkv; ++h) {
    auto cache = ref::method_info(mc.id).make(mc, c.D);
    const std::vector<i32> pk = test::head_rows(k, 0, c.P, c.Hkv, h, c.D), pv = test::head_rows(v, 0, c.P, c.Hkv, h, c.D);
    cache->prefill(pk.data(), pv.data(), c.P);
    const auto* kivi = dynamic_cast<const ref::KiviCache*>(cache.get());
    for (i64 t = c.P; t < c.T; ++t) {
      const size_t r = (static_cast<size_t>(t) * c.Hkv + h) * c.D;
      cache->append(k.data() + r, v.data() + r);
      const cuda::StepView sv = cuda::view_at(mc, t);
      if (kivi) {
        INFO("step " << t << " kv head " << h);
        REQUIRE(kivi->quantized_keys() == sv.kq);
        REQUIRE(kivi->quantized_values() == sv.vq);
      }
      test::require_same_attention(gpu.out, static_cast<size_t>(t - c.P), t, h, group, q, *cache, true, nonzero);
      cache->end_step();
    }
    if (kivi) {
      const cuda::StepView fin = cuda::view_at(mc, c.T);
      REQUIRE(kivi->quantized_keys() == fin.kq);
      REQUIRE(kivi->quantized_values() == fin.vq);
      const cuda::KiviState s = gpu.eng.kivi_state(gpu.view, h, fin.kq, fin.vq);
      test::require_same_params(s.key_params, kivi->key_params(), "key group param");
      test::require_same_params(s.value_params, kivi->value_params(), "value group param");
      REQUIRE(s.key_codes == kivi->key_codes());
      REQUIRE(s.value_codes == kivi->value_codes());
      // the attention view after the last step, every token
      test::require_same_view(gpu.eng, gpu.view, h, fin, c.T, *cache);
    }
  }
  if (c.T > c.P) REQUIRE(nonzero);
}

}  // namespace

TEST_CASE("CUDA KIVI quantization and decode attention equal the reference (head dims, bits, GQA, lengths)",
          "[cuda][kivi][attention]") {
  u64 seed = 1000;
  for (int D : {64, 80, 96, 128, 256}) {
    const int G = D % 32 == 0 ? 32 : 16;
    for (int bits : {2, 4})
      for (int ratio : {1, 4, 8}) {
        const int R = 2 * G;
        // lengths: powers of 3 and group/window boundaries +-1 (decode from P)
        for (i64 T : {i64{1}, i64{3}, i64{9}, i64{27}, i64{81}, i64{129}, i64{243}, i64{G - 1}, i64{G}, i64{G + 1},
                      i64{R - 1}, i64{R}, i64{R + 1}, i64{2 * R + 1}}) {
          if (D >= 128 && ratio == 8 && T > 129) continue;  // keep the checked CPU side quick
          const i64 P = T < 3 ? 0 : (T * 2) / 3;
          run_case({D, ratio * (ratio == 1 ? 2 : 1), ratio == 1 ? 2 : 1, bits, G, R, T, P, ++seed});
        }
      }
  }
}

TEST_CASE("CUDA decode attention equals the reference without quantization (fp), prefill 0 and long", "[cuda][attention]") {
  u64 seed = 5000;
  for (int D : {64, 80, 96, 128, 256})
    for (i64 T : {i64{1}, i64{2}, i64{129}, i64{700}}) run_case({D, 8, 2, 16, 32, 128, T, 0, ++seed, true});
}

TEST_CASE("CUDA KIVI with the default G 32, R 128 across prefill windows", "[cuda][kivi]") {
  u64 seed = 9000;
  for (i64 P : {i64{0}, i64{1}, i64{127}, i64{128}, i64{129}, i64{255}, i64{300}})
    for (int bits : {2, 4}) run_case({128, 4, 1, bits, 32, 128, P + 140, P, ++seed});
}
