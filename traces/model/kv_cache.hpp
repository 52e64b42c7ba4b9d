// The quantized, bit-exact KV cache for closed-loop decodes: the model's
// float keys and values cross the entry boundary (fx::entry_from_fp32 on the
// float's bit pattern, round half to even into Q11.20), queries enter the
// query format Q.40 (ref::query_from_fp32), each (layer,
// KV head) is one of the reference's streaming caches (reference/quant,
// chosen from the method registry), attention is the fixed-point
// decode_attention_ref, and its Q.40 output leaves as fx::to_double(o, 40)
// rounded to float for the rest of the forward pass.
//
// Prefill: the runner computes the prompt's own attention in float (as the
// serving engine's prefill does, and as the replay assumes) and hands the
// prompt's keys and values to each head cache's prefill(); decode tokens go
// append -> attend -> end_step, exactly the replay's order.
#pragma once
#include <memory>
#include <vector>

#include "reference/quant/registry.hpp"
#include "traces/model/llama.hpp"

namespace kvsim::model {

class QuantKVCache final : public KVCache {
 public:
  // Throws ModelError when the method does not fit the model's head dim.
  QuantKVCache(const LlamaConfig& cfg, const ref::MethodConfig& method);
  void prefill(int layer, const float* K, const float* V, int64_t n) override;
  void append(int layer, const float* k, const float* v) override;
  void attend(int layer, const float* q, float* out) override;
  void end_step() override;
  int64_t size(int layer) const override;
  std::string describe() const override;
  const ref::MethodConfig& method() const { return method_; }
  const ref::HeadCache& head(int layer, int kv_head) const { return *heads_[layer][kv_head]; }
  // Bits held now over every (layer, head), and elements cached (2 * L * Hkv * T * D).
  double bits_per_element() const;

 private:
  // float -> Q11.20 with an error naming what could not enter.
  void to_entry(const float* x, int64_t n, i32* out, const char* what, int layer) const;
  int hq_, hkv_, d_, layers_;
  ref::MethodConfig method_;
  std::vector<std::vector<std::unique_ptr<ref::HeadCache>>> heads_;  // [L][Hkv]
  std::vector<i32> kbuf_, vbuf_;
  std::vector<i64> qbuf_;  // query format Q.40 (reference/attention/query.hpp)
  std::vector<i64> scratch_, out_;
};

}  // namespace kvsim::model
