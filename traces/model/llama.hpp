// A Llama-family decoder on the CPU (Eigen, float32): the model runner that
// records real traces (`kvsim record`) and drives closed-loop decodes with a
// quantized cache (`kvsim closed-loop`).
//
// Architectures: Llama (1/2/3, llama2.c checkpoints), Mistral, Qwen2 (q/k/v
// bias), Qwen3 (per-head RMSNorm of q and k before RoPE). Each layer:
//   h  = x + Wo · Attn(RoPE(norm_q(Wq·n1 + bq)), RoPE(norm_k(Wk·n1 + bk)), Wv·n1 + bv),
//        n1 = RMSNorm(x)
//   x' = h + W2 · (silu(W1·n2) ⊙ W3·n2),   n2 = RMSNorm(h)
// then logits = Wcls · RMSNorm(x_L) (Wcls = the embedding when tied).
//
// RoPE pairs: llama2.c checkpoints rotate adjacent pairs (2i, 2i+1) of each
// head (run.c); Hugging Face checkpoints rotate (i, i + D/2) (rotate_half).
// Frequencies theta^(-2i/D), with linear or llama3 scaling as in
// transformers' rope utilities; angles are computed in float32 as both
// originals do.
//
// Attention goes through a pluggable KVCache: the prompt is run as one
// block (causal float attention over its own keys and values, as a serving
// engine's prefill does), then handed to the cache in bulk (KVCache::prefill);
// every decode token is appended, attended through the cache, and the step
// is closed with end_step(). FloatKVCache is the full-precision path; the
// quantized, bit-exact path is in kv_cache.hpp (QuantKVCache).
#pragma once
#include <Eigen/Core>

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace kvsim::model {

// Every problem with a checkpoint, a tokenizer or a run, on one line.
class ModelError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Vec = Eigen::VectorXf;

enum class RopeStyle { interleaved, half };  // (2i, 2i+1) llama2.c | (i, i+D/2) Hugging Face

struct LlamaConfig {
  std::string architecture = "LlamaForCausalLM";
  int dim = 0;          // hidden size
  int hidden_dim = 0;   // FFN intermediate size
  int n_layers = 0;
  int n_heads = 0;      // query heads Hq
  int n_kv_heads = 0;   // KV heads Hkv (Hq % Hkv == 0)
  int head_dim = 0;     // D
  int vocab_size = 0;
  int64_t max_seq_len = 0;
  float norm_eps = 1e-5f;
  double rope_theta = 10000.0;
  RopeStyle rope_style = RopeStyle::half;
  std::string rope_scaling_type = "none";  // none | linear | llama3
  double rope_scaling_factor = 1.0;
  double rope_low_freq_factor = 1.0, rope_high_freq_factor = 4.0;
  int64_t rope_original_max_position = 0;
  bool tied_embeddings = true;
  bool qkv_bias = false;   // Qwen2, Llama attention_bias
  bool o_bias = false;     // Llama attention_bias also biases o_proj
  bool qk_norm = false;    // Qwen3
  int64_t sliding_window = 0;  // 0: none (Mistral/Qwen may set one)
  int bos_id = -1, eos_id = -1;

  // Throws ModelError("<what>: <problem>") for an inconsistent geometry.
  void check(const std::string& what) const;
  int q_dim() const { return n_heads * head_dim; }
  int kv_dim() const { return n_kv_heads * head_dim; }
};

struct LayerWeights {
  Vec attn_norm, ffn_norm;  // [dim]
  Mat wq;                   // [Hq*D, dim]
  Mat wk, wv;               // [Hkv*D, dim]
  Mat wo;                   // [dim, Hq*D]
  Vec bq, bk, bv, bo;       // biases (empty when absent)
  Vec q_norm, k_norm;       // [D] (Qwen3; empty when absent)
  Mat w1, w3;               // gate, up [hidden, dim]
  Mat w2;                   // down [dim, hidden]
};

struct LlamaModel {
  LlamaConfig cfg;
  Mat tok_emb;   // [vocab, dim]
  Vec final_norm;
  Mat lm_head;   // [vocab, dim]; empty when tied
  std::vector<LayerWeights> layers;
  std::string name;       // short name (file or folder name)
  std::string source;     // path it was loaded from
  std::string format;     // "llama2c" | "hf"
  std::string weight_dtype;  // f32 | f16 | bf16 (as stored)

  const Mat& classifier() const { return lm_head.size() ? lm_head : tok_emb; }
};

// Loaders. Throw ModelError with one line naming the file and the problem.
LlamaModel load_llama2c(const std::string& bin_path);
LlamaModel load_hf(const std::string& dir);
// DIR with config.json -> Hugging Face; a .bin file -> llama2.c; a
// config.json or .safetensors file -> its folder as Hugging Face.
LlamaModel load_model(const std::string& path);

// A model of random weights (tests): geometry from cfg, values uniform in
// [-scale, scale) from a seeded generator; norms around 1.
LlamaModel random_model(const LlamaConfig& cfg, uint64_t seed, float scale = 0.1f);

// The RoPE inverse frequencies of one head, [D/2], float32 as the originals.
std::vector<float> rope_inv_freq(const LlamaConfig& cfg);
// Rotates one head vector x [D] in place to position pos.
void apply_rope(const LlamaConfig& cfg, const std::vector<float>& inv_freq, float* x, int64_t pos);

// ---------------------------------------------------------------------------
// The KV cache seen by attention: per layer, Hkv heads of [D] keys and values.
// All vectors are post-RoPE floats, row-major [Hkv][D] (keys and values) and
// [Hq][D] (queries and outputs); query head h reads KV head h / (Hq/Hkv).
class KVCache {
 public:
  virtual ~KVCache() = default;
  // The prompt's n tokens of one layer, at once: K, V [n][Hkv][D].
  virtual void prefill(int layer, const float* K, const float* V, int64_t n) = 0;
  // One decode token of one layer: k, v [Hkv][D].
  virtual void append(int layer, const float* k, const float* v) = 0;
  // out [Hq][D] = softmax(q·K^T/sqrt(D))·V over every token held for the layer.
  virtual void attend(int layer, const float* q, float* out) = 0;
  // After every layer has appended and attended the step's token.
  virtual void end_step() = 0;
  virtual int64_t size(int layer) const = 0;
  virtual std::string describe() const = 0;
};

// Full precision: keys and values kept as float32, float attention.
class FloatKVCache final : public KVCache {
 public:
  explicit FloatKVCache(const LlamaConfig& cfg);
  void prefill(int layer, const float* K, const float* V, int64_t n) override;
  void append(int layer, const float* k, const float* v) override;
  void attend(int layer, const float* q, float* out) override;
  void end_step() override {}
  int64_t size(int layer) const override;
  std::string describe() const override { return "float32"; }

 private:
  int hq_, hkv_, d_;
  std::vector<std::vector<float>> k_, v_;  // per layer [T][Hkv][D]
  std::vector<float> scores_;
};

// Float causal attention of one layer's block: q [n][Hq][D] against k, v
// [n][Hkv][D] (row i sees rows 0..i), into out [n][Hq][D].
void causal_attention(const LlamaConfig& cfg, const float* q, const float* k, const float* v, int64_t n,
                      float* out);

// What the runner shows of every token it runs (recorder, closed loop):
// rows [t0, t0+n) of one layer, q [n][Hq][D], k, v, k_pre_rope [n][Hkv][D].
using QkvObserver = std::function<void(int layer, int64_t t0, int64_t n, const float* q, const float* k,
                                       const float* v, const float* k_pre_rope)>;

class LlamaRunner {
 public:
  // The model and the cache must outlive the runner.
  LlamaRunner(const LlamaModel& model, KVCache& cache);

  // Runs the prompt (positions 0..n-1, n >= 1) as one block; returns the
  // logits [vocab] of its last token. Only once, before any step().
  const std::vector<float>& prefill(const std::vector<int32_t>& tokens);
  // Runs one token at position pos(); returns its logits [vocab].
  const std::vector<float>& step(int32_t token);
  int64_t pos() const { return pos_; }

  void set_observer(QkvObserver obs) { observer_ = std::move(obs); }
  // Of the last token run: the residual stream after each layer [L][dim],
  // the attention output before Wo [L][Hq*D], the final normed state [dim].
  const std::vector<std::vector<float>>& hidden() const { return hidden_; }
  const std::vector<std::vector<float>>& attn_out() const { return attn_; }
  const std::vector<float>& logits() const { return logits_; }

 private:
  void check_token(int32_t t) const;
  void check_pos(int64_t end) const;
  const LlamaModel& m_;
  KVCache& cache_;
  QkvObserver observer_;
  std::vector<float> inv_freq_;
  int64_t pos_ = 0;
  std::vector<std::vector<float>> hidden_, attn_;
  std::vector<float> logits_;
};

// Index of the largest logit (the first one on ties), as run.c's argmax.
int argmax(const std::vector<float>& logits);

}  // namespace kvsim::model
