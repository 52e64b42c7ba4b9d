// traces/synthetic.hpp: determinism, streaming, geometry coverage, and that
// each statistic the generator claims is really in the data (double math).
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>

#include "tests/traces/test_util.hpp"
#include "tests/traces/trace_stats.hpp"
#include "traces/synthetic.hpp"
#include "traces/validate.hpp"

using namespace kvsim::traces;
using kvsim::traces::test::TempDir;

namespace {

SynthParams small_params() {
  SynthParams p;
  p.layers = 1;
  p.q_heads = 4;
  p.kv_heads = 2;
  p.head_dim = 64;
  p.prefill = 128;
  p.decode = 896;  // T = 1024
  p.threads = 2;
  return p;
}

// Every tensor and the tokens of two traces, bit for bit.
bool same_data(const std::string& a, const std::string& b) {
  TraceReader ra(a), rb(b);
  if (ra.tokens() != rb.tokens()) return false;
  const TraceMeta& m = ra.meta();
  std::vector<uint32_t> x, y;
  for (int l = 0; l < m.num_layers; ++l)
    for (Tensor t : kAllTensors) {
      if (t == Tensor::k_pre_rope && !m.has_k_pre_rope) continue;
      for (int64_t t0 = 0; t0 < m.num_tokens; t0 += 300) {
        const int64_t n = std::min<int64_t>(300, m.num_tokens - t0);
        ra.read_bits(l, t, t0, n, x);
        rb.read_bits(l, t, t0, n, y);
        if (x != y) return false;
      }
    }
  return true;
}

double correlation(const std::vector<float>& q, const TraceMeta& m, int ha, int hb) {
  double sa = 0, sb = 0, saa = 0, sbb = 0, sab = 0, n = 0;
  for (int64_t t = 0; t < m.num_tokens; ++t)
    for (int c = 0; c < m.head_dim; ++c) {
      const double a = q[static_cast<size_t>((t * m.num_q_heads + ha) * m.head_dim + c)];
      const double b = q[static_cast<size_t>((t * m.num_q_heads + hb) * m.head_dim + c)];
      sa += a, sb += b, saa += a * a, sbb += b * b, sab += a * b, n += 1;
    }
  const double ca = saa / n - (sa / n) * (sa / n), cb = sbb / n - (sb / n) * (sb / n);
  return (sab / n - (sa / n) * (sb / n)) / std::sqrt(ca * cb);
}

}  // namespace

TEST_CASE("same seed gives identical data, whatever the chunk size and thread count", "[synthetic]") {
  TempDir dir;
  SynthParams p = small_params();
  p.decode = 300;
  p.layers = 2;
  generate_synthetic(p, dir.file("a.h5"));
  SynthParams p2 = p;
  p2.chunk_tokens = 77;
  p2.threads = 1;
  generate_synthetic(p2, dir.file("b.h5"));
  CHECK(TraceReader(dir.file("b.h5")).chunk_tokens() == 77);
  CHECK(same_data(dir.file("a.h5"), dir.file("b.h5")));
  SynthParams p3 = p;
  p3.seed = 2;
  generate_synthetic(p3, dir.file("c.h5"));
  CHECK_FALSE(same_data(dir.file("a.h5"), dir.file("c.h5")));
  // The tokens differ too, and every id is in [0, vocab).
  const auto ta = TraceReader(dir.file("a.h5")).tokens(), tc = TraceReader(dir.file("c.h5")).tokens();
  CHECK(ta != tc);
  for (int32_t id : ta) REQUIRE((id >= 0 && id < 32000));
}

TEST_CASE("generated traces validate, with provenance and parameters stored", "[synthetic]") {
  TempDir dir;
  SynthParams p = small_params();
  p.decode = 100;
  p.tool_revision = "abc123";
  p.dtype = DType::bf16;
  const std::string f = dir.file("prov.h5");
  const SynthResult res = generate_synthetic(p, f);
  CHECK(res.clamped_values == 0);
  const ValidateReport rep = validate_trace(f);
  const TraceMeta& m = rep.meta;
  CHECK(m.num_tokens == 228);
  CHECK(m.prefill_len == 128);
  CHECK(m.dtype == DType::bf16);
  CHECK(m.model == "synthetic");
  CHECK(m.source == "kvsim trace gen");
  CHECK(m.tool_revision == "abc123");
  CHECK(m.seed == 1);
  CHECK(m.created.size() == 20);
  CHECK(m.has_k_pre_rope);
  auto extra = [&](const std::string& k) {
    for (const auto& kv : m.extra)
      if (kv.first == k) return kv.second;
    return std::string("(absent)");
  };
  CHECK(extra("synth_key_outlier_channels") == "4");
  CHECK(extra("synth_key_outlier_scale") == "15");
  CHECK(extra("synth_value_df") == "4");
  CHECK(extra("synth_sink_strength") == "3");
  CHECK(extra("synth_local_strength") == "3");
  CHECK(extra("synth_outlier_token_rate") == "0.01");
  CHECK(extra("synth_outlier_token_scale") == "5");
  CHECK(extra("synth_gqa_correlation") == "0.6");
  // Typical magnitudes O(1), everything well inside |x| < 2048.
  CHECK(rep.max_abs < 500);
  p.k_pre_rope = false;
  generate_synthetic(p, dir.file("nopre.h5"));
  CHECK_FALSE(TraceReader(dir.file("nopre.h5")).meta().has_k_pre_rope);
}

TEST_CASE("every supported geometry generates and validates", "[synthetic]") {
  TempDir dir;
  for (int D : {64, 80, 96, 112, 128, 256}) {
    SynthParams p;
    p.layers = 1;
    p.q_heads = 32;
    p.kv_heads = 8;
    p.head_dim = D;
    p.prefill = 5;
    p.decode = 4;
    p.threads = 2;
    const std::string f = dir.file("geo" + std::to_string(D) + ".h5");
    INFO("head dim " << D);
    generate_synthetic(p, f);
    const ValidateReport rep = validate_trace(f);
    CHECK(rep.values_checked == 9 * (32 + 3 * 8) * D);
    const SynthLayout lay = synthetic_layout(p, 0, 7);
    CHECK(lay.outlier_pairs.size() == 4);
    CHECK(!lay.sink_pairs.empty());
    CHECK(!lay.local_pairs.empty());
  }
  SynthParams one;
  one.prefill = 0;
  one.decode = 1;  // T = 1
  one.head_dim = 16;
  generate_synthetic(one, dir.file("one.h5"));
  CHECK(validate_trace(dir.file("one.h5")).meta.num_tokens == 1);
}

TEST_CASE("a 128K-token trace of a small geometry streams through", "[synthetic][long]") {
  // Memory is bounded by design (buffers of one chunk of one layer); this
  // checks that T = 131072 works end to end.
  TempDir dir;
  SynthParams p;
  p.layers = 1;
  p.q_heads = 1;
  p.kv_heads = 1;
  p.head_dim = 16;
  p.prefill = 1024;
  p.decode = 131072 - 1024;
  p.threads = 2;
  const std::string f = dir.file("long.h5");
  generate_synthetic(p, f);
  const ValidateReport rep = validate_trace(f);
  CHECK(rep.meta.num_tokens == 131072);
  CHECK(rep.values_checked == 131072LL * 4 * 16);
  CHECK(rep.max_abs < 500);
  TraceReader r(f);
  std::vector<float> last;
  r.read_float(0, Tensor::k, 131071, 1, last);
  double norm = 0;
  for (float x : last) norm += x * x;
  CHECK(norm > 0);
}

TEST_CASE("the statistics are in the data", "[synthetic][stats]") {
  TempDir dir;
  const SynthParams p = small_params();
  const std::string f = dir.file("stats.h5");
  generate_synthetic(p, f);
  TraceReader r(f);
  const TraceMeta& m = r.meta();
  const auto q = test::read_all(r, 0, Tensor::q);
  const auto k = test::read_all(r, 0, Tensor::k);
  const auto kpre = test::read_all(r, 0, Tensor::k_pre_rope);
  const auto v = test::read_all(r, 0, Tensor::v);

  SECTION("key outlier channels: mean |k| about 15x the median channel, pre and post RoPE") {
    for (int g = 0; g < m.num_kv_heads; ++g) {
      const SynthLayout lay = synthetic_layout(p, 0, g);
      REQUIRE(lay.outlier_pairs.size() == 4);
      for (const auto* x : {&k, &kpre}) {
        const auto cm = test::channel_mean_abs(*x, m.num_tokens, m.num_kv_heads, m.head_dim, g);
        double out = 0;
        for (int i : lay.outlier_pairs) out += cm[static_cast<size_t>(i)] + cm[static_cast<size_t>(i + m.head_dim / 2)];
        out /= 2.0 * static_cast<double>(lay.outlier_pairs.size());
        const double ratio = out / test::median(cm);
        INFO("kv head " << g << (x == &k ? " post-RoPE" : " pre-RoPE") << " ratio " << ratio);
        CHECK(ratio >= 10.0);
        CHECK(ratio <= 20.0);
      }
    }
  }
  SECTION("attention sink and local attention") {
    for (int h = 0; h < m.num_q_heads; ++h) {
      const test::AttentionStats st = test::attention_stats(q, k, m, h, 256, 16);
      INFO("query head " << h << ": sink " << st.sink_share << " uniform " << st.uniform_share
                         << " recent16 " << st.recent16 << " back16_32 " << st.back16_32);
      CHECK(st.sink_share > 0.1);
      CHECK(st.sink_share > 20 * st.uniform_share);
      CHECK(st.recent16 > 1.5 * st.back16_32);
      // Per token, the last 16 get well above the uniform share of what the sink leaves.
      CHECK(st.recent16 > 1.5 * 16 * st.uniform_share * (1 - st.sink_share));
    }
  }
  SECTION("values are heavy tailed (kurtosis), RoPE is consistent with k_pre_rope") {
    CHECK(test::kurtosis(v) > 3.5);
    CHECK(test::rope_mismatch(kpre, k, m) <= 1.05);
  }
  SECTION("GQA: query heads of one group are correlated, across groups much less") {
    // Heads 0, 1 share KV head 0; heads 2, 3 share KV head 1.
    const double within = correlation(q, m, 0, 1), across = correlation(q, m, 1, 2);
    INFO("within " << within << " across " << across);
    CHECK(within > 0.3);
    CHECK(std::fabs(across) < within - 0.2);
  }
  SECTION("outlier tokens: about 1% of the rows of v have a norm several times the median") {
    std::vector<double> norms;
    for (int64_t t = 0; t < m.num_tokens; ++t) {
      double s = 0;
      for (int c = 0; c < m.head_dim; ++c) {
        const double x = v[static_cast<size_t>(t * m.num_kv_heads * m.head_dim + c)];
        s += x * x;
      }
      norms.push_back(std::sqrt(s));
    }
    const double med = test::median(norms);
    int big = 0;
    for (double n : norms) big += n > 3.0 * med;
    INFO("rows with norm > 3x median: " << big << " of " << m.num_tokens);
    CHECK(big >= 4);
    CHECK(big <= 25);
  }
}

TEST_CASE("each statistic follows its parameter", "[synthetic][stats]") {
  TempDir dir;
  SynthParams p = small_params();
  p.decode = 384;  // T = 512
  p.key_outlier_channels = 0;
  p.sink_strength = 0;
  p.local_strength = 0;
  p.outlier_token_rate = 0;
  p.value_df = 200;  // nearly normal
  p.gqa_correlation = 0;
  const std::string f = dir.file("plain.h5");
  generate_synthetic(p, f);
  TraceReader r(f);
  const TraceMeta& m = r.meta();
  const auto q = test::read_all(r, 0, Tensor::q), k = test::read_all(r, 0, Tensor::k),
             v = test::read_all(r, 0, Tensor::v);
  const auto cm = test::channel_mean_abs(k, m.num_tokens, m.num_kv_heads, m.head_dim, 0);
  CHECK(*std::max_element(cm.begin(), cm.end()) / test::median(cm) < 4.0);
  const test::AttentionStats st = test::attention_stats(q, k, m, 0, 256, 16);
  INFO("sink " << st.sink_share << " uniform " << st.uniform_share << " recent16 " << st.recent16);
  CHECK(st.sink_share < 3 * st.uniform_share);
  CHECK(st.recent16 < 2 * 16 * st.uniform_share);
  CHECK(test::kurtosis(v) < 3.3);
  CHECK(std::fabs(correlation(q, m, 0, 1)) < 0.1);
}

TEST_CASE("bad generator parameters are rejected by name", "[synthetic]") {
  SynthParams p;
  p.value_df = 2;
  CHECK_THROWS_WITH(check_synth_params(p), Catch::Contains("--value-df"));
  p = SynthParams{};
  p.kv_heads = 3;
  CHECK_THROWS_WITH(check_synth_params(p), Catch::Contains("--kv-heads"));
  p = SynthParams{};
  p.prefill = 0;
  p.decode = 0;
  CHECK_THROWS_WITH(check_synth_params(p), Catch::Contains("at least") || Catch::Contains(">= 1"));
  p = SynthParams{};
  p.outlier_token_rate = 1.5;
  CHECK_THROWS_WITH(check_synth_params(p), Catch::Contains("--outlier-token-rate"));
}
