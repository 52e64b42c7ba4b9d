// `kvsim record` end to end (needs the kvsim binary, env KVSIM_BIN, and the
// real checkpoints, env KVSIM_MODELS_DIR; skipped otherwise): the trace has
// the schema's geometry, prefill and tokens, its keys are its pre-RoPE keys
// rotated with the schema's rotate_half convention (also for a llama2.c
// model, whose adjacent-pair RoPE is stored permuted), and sampling with a
// seed is deterministic.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdlib>

#include "model_util.hpp"
#include "traces/model/json.hpp"
#include "traces/trace.hpp"

using namespace kvsim::model::test;
namespace tr = kvsim::traces;

namespace {

int run_cmd(const std::string& args, const std::string& log) {
  const std::string cmd = "'" + std::string(std::getenv("KVSIM_BIN")) + "' " + args + " >'" + log + "' 2>&1";
  return std::system(cmd.c_str());
}

}  // namespace

TEST_CASE("RecordWritesASchemaTraceWithRotateHalfKeys", "[model][real][cli]") {
  const std::string dir = models_dir();
  const char* bin = std::getenv("KVSIM_BIN");
  if (dir.empty() || !bin) {
    WARN((dir.empty() ? kSkipMessage : "KVSIM_BIN is not set: skipping the record CLI test"));
    return;
  }
  TempDir tmp("rec");
  const std::string out = tmp / "s.h5";
  REQUIRE(run_cmd("record --model '" + dir + "/stories260K.bin' --prompt 'Once upon' --steps 40 --dtype f32 --out '" +
                      out + "'",
                  tmp / "log") == 0);
  tr::TraceReader r(out);
  const tr::TraceMeta& m = r.meta();
  CHECK(m.num_layers == 5);
  CHECK(m.num_q_heads == 8);
  CHECK(m.num_kv_heads == 4);
  CHECK(m.head_dim == 8);
  CHECK(m.prefill_len == 3);  // BOS, " Once", " upon" as tok512 encodes it
  CHECK(m.num_tokens == m.prefill_len + 40);
  CHECK(m.has_k_pre_rope);
  CHECK(r.tokens()[0] == 1);
  const int D = m.head_dim;
  for (int layer : {0, 4}) {
    std::vector<float> k, kp;
    r.read_float(layer, tr::Tensor::k, 0, m.num_tokens, k);
    r.read_float(layer, tr::Tensor::k_pre_rope, 0, m.num_tokens, kp);
    double worst = 0;
    for (int64_t t = 0; t < m.num_tokens; ++t)
      for (int h = 0; h < m.num_kv_heads; ++h)
        for (int i = 0; i < D / 2; ++i) {
          const double a = t * std::pow(m.rope_theta, -2.0 * i / D);
          const size_t base = (static_cast<size_t>(t) * m.num_kv_heads + h) * D;
          const double x0 = kp[base + i], x1 = kp[base + i + D / 2];
          worst = std::max(worst, std::fabs(x0 * std::cos(a) - x1 * std::sin(a) - k[base + i]));
          worst = std::max(worst, std::fabs(x1 * std::cos(a) + x0 * std::sin(a) - k[base + i + D / 2]));
        }
    INFO("layer " << layer);
    CHECK(worst < 1e-3);
  }
}

TEST_CASE("RecordSamplingIsDeterministicForASeed", "[model][real][cli]") {
  const std::string dir = models_dir();
  if (dir.empty() || !std::getenv("KVSIM_BIN")) {
    WARN((dir.empty() ? kSkipMessage : "KVSIM_BIN is not set: skipping the record CLI test"));
    return;
  }
  TempDir tmp("seed");
  auto tokens = [&](const std::string& name, int seed) {
    const std::string out = tmp / name;
    REQUIRE(run_cmd("record --model '" + dir + "/stories260K.bin' --prompt '' --steps 60 --temperature 1.0 --seed " +
                        std::to_string(seed) + " --quiet --out '" + out + "'",
                    tmp / "log") == 0);
    return tr::TraceReader(out).tokens();
  };
  const auto a = tokens("a.h5", 5), b = tokens("b.h5", 5), c = tokens("c.h5", 6);
  CHECK(a == b);
  CHECK(a != c);
}

TEST_CASE("RecordRejectsBadInputsWithOneLine", "[model][cli]") {
  const char* bin = std::getenv("KVSIM_BIN");
  if (!bin) {
    WARN("KVSIM_BIN is not set: skipping the record CLI test");
    return;
  }
  TempDir tmp("recbad");
  CHECK(run_cmd("record --model '" + (tmp / "none") + "' --prompt x --steps 3 --out '" + (tmp / "o.h5") + "'",
                tmp / "log") != 0);
  const std::string log = kvsim::model::read_text_file(tmp / "log");
  CHECK_THAT(log, Catch::Contains("kvsim: error:") && Catch::Contains("no such file or folder"));
  CHECK(!fs::exists(tmp / "o.h5"));
}
