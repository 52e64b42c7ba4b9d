// The real checkpoints (../shared/models via env KVSIM_MODELS_DIR; skipped
// without it): stories260K greedy from BOS reproduces karpathy's published
// sample; bytelm-24m (sharded bf16) loads and writes text; the llama2.c
// tokenizer encodes and decodes.
#include <catch2/catch.hpp>

#include "model_util.hpp"
#include "traces/model/llama.hpp"
#include "traces/model/sampler.hpp"
#include "traces/model/tokenizer.hpp"

using namespace kvsim::model;
using namespace kvsim::model::test;

namespace {

std::string generate(const LlamaModel& m, const Tokenizer& tok, std::vector<int32_t> prompt, int steps,
                     float temperature = 0, uint64_t seed = 1) {
  FloatKVCache c(m.cfg);
  LlamaRunner r(m, c);
  Sampler s(temperature, 1.0f, seed);
  const std::vector<float>* lg = &r.prefill(prompt);
  std::string text;
  int32_t prev = prompt.back();
  for (int i = 0; i < steps; ++i) {
    const int32_t next = s.sample(*lg);
    text += tok.decode(prev, next);
    prev = next;
    lg = &r.step(next);
  }
  return text;
}

}  // namespace

TEST_CASE("Stories260kGreedyReproducesThePublishedSample", "[model][real]") {
  const std::string dir = models_dir();
  if (dir.empty()) {
    WARN(kSkipMessage);
    return;
  }
  const LlamaModel m = load_model(dir + "/stories260K.bin");
  CHECK(m.cfg.n_layers == 5);
  CHECK(m.cfg.n_heads == 8);
  CHECK(m.cfg.n_kv_heads == 4);
  CHECK(m.cfg.head_dim == 8);
  std::string why;
  const auto tok = tokenizer_for(m, "", &why);
  REQUIRE(tok);
  const std::string text = generate(m, *tok, {1}, 60);
  INFO(text);
  // karpathy/llama2.c README, stories260K at temperature 0.
  CHECK(text.rfind("Once upon a time, there was a little girl named Lily. She loved to play outside in the park.", 0) == 0);
}

TEST_CASE("Llama2cTokenizerEncodesLikeRunC", "[model][real]") {
  const std::string dir = models_dir();
  if (dir.empty()) {
    WARN(kSkipMessage);
    return;
  }
  Llama2cTokenizer tok(dir + "/tok512.bin", 512);
  const std::string s = "Once upon a time, Lily saw a big red ball.";
  const auto ids = tok.encode(s, true);
  REQUIRE(ids.size() > 3);
  CHECK(ids[0] == 1);
  CHECK(ids.size() < s.size());  // merges happened
  std::string back;
  for (size_t i = 1; i < ids.size(); ++i) back += tok.decode(ids[i - 1], ids[i]);
  CHECK(back == s);
  // Byte fallback: a character outside the vocabulary becomes its bytes + 3.
  const auto e = tok.encode("\xe2\x82\xac", false);  // the euro sign
  std::string eb;
  for (size_t i = 0; i < e.size(); ++i) eb += tok.decode(i ? e[i - 1] : -1, e[i]);
  CHECK(eb.find("\xe2\x82\xac") != std::string::npos);
}

TEST_CASE("Bytelm24mLoadsShardedBf16AndWritesText", "[model][real]") {
  const std::string dir = models_dir();
  if (dir.empty()) {
    WARN(kSkipMessage);
    return;
  }
  const LlamaModel m = load_model(dir + "/bytelm-24m");
  CHECK(m.cfg.n_layers == 8);
  CHECK(m.cfg.n_heads == 4);
  CHECK(m.cfg.n_kv_heads == 2);
  CHECK(m.cfg.head_dim == 128);
  CHECK(m.weight_dtype == "bf16");
  std::string why;
  const auto tok = tokenizer_for(m, "", &why);
  REQUIRE(tok);
  CHECK(tok->bos_id() == 256);
  const std::string text = generate(m, *tok, tok->encode("The old man walked to the", true), 120, 0.7f, 3);
  INFO(text);
  // Sensible text: mostly lower-case letters and spaces, several real words.
  int letters = 0, spaces = 0;
  for (char ch : text) letters += std::isalpha(static_cast<unsigned char>(ch)) != 0, spaces += ch == ' ';
  CHECK(letters > 70);
  CHECK(spaces > 12);
  int words = 0;
  for (const char* w : {" the ", " and ", " of ", " to ", " a ", " in ", " was ", " he "}) words += text.find(w) != std::string::npos;
  CHECK(words >= 2);
}
