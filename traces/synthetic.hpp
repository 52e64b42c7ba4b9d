// Synthetic traces with the statistics of real LLM KV caches, seeded and
// deterministic, generated and written Tc tokens at a time (memory does not
// depend on T).
//
// What is modelled, per layer l and KV head g (README.md, "Synthetic traces"):
//  1. RoPE (HF Llama rotate_half, pairs (i, i + D/2), frequency theta^(-2i/D)):
//     q and k are made pre-RoPE, rotated, and stored post-RoPE; the pre-RoPE
//     keys are stored too (k_pre_rope) unless disabled.
//  2. Key outlier channels: key_outlier_channels channel pairs per (l, g),
//     chosen among the lowest-frequency pairs, carry a fixed per-channel bias
//     of key_outlier_scale times the median channel mean |k|.
//  3. Values: Student-t with value_df degrees of freedom, unit variance,
//     no channel outliers (truncated at 30 standard deviations).
//  4. Attention sink: token 0's key has a component kappa*u along the
//     lowest-frequency pairs; every query has a component a(t)*u (fixed in
//     the post-RoPE frame) with a(t) chosen so that token 0's logit exceeds
//     a typical key's by ln(1 + sink_strength * (1 + t)): token 0 then weighs
//     about sink_strength times all other tokens together, at every position
//     (share ~ S / (1 + S) before local and outlier effects; 0 disables).
//  5. Local attention: q and k share a fixed pre-RoPE direction w in the
//     pairs whose frequency lies in [0.03, 0.8] rad/token; post-RoPE,
//     q_t . k_s / sqrt(D) gains local_strength * sum_i |w_i|^2 cos((t-s) w_i),
//     largest for s near t.
//  6. Outlier tokens: a fraction outlier_token_rate of tokens (never token 0)
//     have their key content (noise and channel bias) and their value
//     multiplied by outlier_token_scale.
//  7. GQA: the query heads of one group share a component (correlation
//     gqa_correlation) plus head-specific noise.
// Random numbers: a counter-based generator (splitmix64 of seed, stream,
// layer, head, token), Box-Muller normals and Bailey's polar Student-t; the
// values depend only on the parameters and the seed, not on the chunk size
// or the thread count.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "traces/trace.hpp"

namespace kvsim::traces {

struct SynthParams {
  // Geometry.
  int layers = 2, q_heads = 8, kv_heads = 2, head_dim = 128;
  int64_t prefill = 512, decode = 3584;  // T = prefill + decode
  double rope_theta = 10000.0;
  DType dtype = DType::f16;
  uint64_t seed = 1;
  int64_t chunk_tokens = kDefaultChunkTokens;
  int gzip_level = 0;
  bool k_pre_rope = true;
  int vocab = 32000;  // token ids in [0, vocab)
  // Statistics.
  int key_outlier_channels = 4;      // channel pairs per (layer, KV head)
  double key_outlier_scale = 15.0;   // x median channel mean |k|
  double value_df = 4.0;             // Student-t degrees of freedom (> 2)
  double sink_strength = 3.0;        // token 0 weight / all other tokens' (0: no sink)
  double local_strength = 3.0;       // logit bump (nats) at distance 0
  double outlier_token_rate = 0.01;  // fraction of tokens
  double outlier_token_scale = 5.0;  // norm multiplier of those tokens' k and v
  double gqa_correlation = 0.6;      // correlation of the query heads of one group
  // Provenance and execution.
  std::string model = "synthetic";
  std::string tool_revision = "unknown";
  int threads = 0;  // 0: hardware concurrency
};

struct SynthResult {
  TraceMeta meta;
  double seconds = 0;
  int64_t clamped_values = 0;  // values clamped to |x| <= 1024 (0 with sane parameters)
};

// The channel bands the generator uses for one (layer, KV head): RoPE pair
// indices i (channels i and i + D/2), sorted ascending.
struct SynthLayout {
  std::vector<int> outlier_pairs, sink_pairs, local_pairs;
};
SynthLayout synthetic_layout(const SynthParams& p, int layer, int kv_head);

// Throws std::invalid_argument naming the parameter on a bad value.
void check_synth_params(const SynthParams& p);

// Writes the trace to out (via out.tmp, renamed at the end). progress is
// called with the fraction done. Throws std::invalid_argument or TraceError.
SynthResult generate_synthetic(const SynthParams& p, const std::string& out,
                               const std::function<void(double)>& progress = {});

}  // namespace kvsim::traces
