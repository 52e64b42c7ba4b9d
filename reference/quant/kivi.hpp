// KIVI (Liu et al., 2024; jy-yuan/KIVI, quant/new_pack.py and
// models/llama_kivi.py): keys per channel, values per token, asymmetric
// 2- or 4-bit, with full-precision windows of recent tokens.
//
// The algorithm, as the original does it:
//   Keys   quantized per channel in groups of G consecutive tokens (post-RoPE).
//          New keys collect in a full-precision window; when it holds R tokens
//          they are quantized together, R/G groups (window 0..R-1 tokens).
//   Values quantized per token in groups of G channels. A FIFO: when more than
//          R values are at full precision after a step, the oldest is quantized
//          alone (attention sees R+1 full-precision values: the current token
//          plus R; after the step, R).
//   Prefill (P tokens): keys: the first P - P mod R quantized, the rest kept;
//          values: all but the last R quantized. Prefill attention itself is
//          not measured (it uses unquantized K/V in the original).
//   Order within a decode step: append, attend, then flush (llama_kivi.py
//          quantizes the filled key window and the oldest value after
//          computing the step's attention).
//   Stored: codes packed 32/b per u32 word (LSB first; keys along tokens per
//          channel, values along channels per token); per group an fp16 scale
//          and an fp16 minimum.
//
// Where the fixed-point model departs from the original's fp16 arithmetic:
// see asym.hpp (each stored quantity is rounded once from its exact value;
// the original rounds (max - min), the division and (x - min)/s each in fp16).
// max == min gives scale 0, codes 0 and x_hat = min (the original divides by
// zero and produces NaN there).
#pragma once
#include <string>
#include <vector>

#include "reference/common.hpp"
#include "reference/quant/asym.hpp"
#include "reference/quant/cache.hpp"

namespace kvsim::ref {

struct KiviConfig {
  int bits = 2;       // b, for keys and values
  int group = 32;     // G
  int residual = 128; // R
};

// Empty when the configuration is usable with this head dim, else the reason.
inline std::string kivi_check(const KiviConfig& c, int head_dim) {
  if (c.bits != 2 && c.bits != 4) return "kivi: --bits must be 2 or 4";
  if (c.group < 1) return "kivi: --group must be positive";
  if (c.residual < 1) return "kivi: --residual must be positive";
  if (c.residual % c.group != 0)
    return "kivi: --residual " + std::to_string(c.residual) + " is not a multiple of --group " +
           std::to_string(c.group);
  if (head_dim % c.group != 0)
    return "kivi: --group " + std::to_string(c.group) + " does not divide the head dim " +
           std::to_string(head_dim) + " (values are grouped along channels)";
  return {};
}

class KiviCache final : public HeadCache {
 public:
  KiviCache(const KiviConfig& c, int head_dim) : HeadCache(head_dim), c_(c) {}

  void prefill(const i32* K, const i32* V, i64 n) override {
    for (i64 t = 0; t < n; ++t) push_view(K + t * d_, V + t * d_);
    const i64 kq = (n / c_.residual) * c_.residual;
    if (kq > 0) quantize_keys(0, kq);
    for (i64 t = 0; t < n - c_.residual; ++t) quantize_value(t);
  }
  void append(const i32* k, const i32* v) override { push_view(k, v); }
  void end_step() override {
    if (size() - kq_ == c_.residual) quantize_keys(kq_, c_.residual);
    if (size() - vq_ > c_.residual) quantize_value(vq_);
  }
  u64 stored_bits() const override {
    const u64 D = static_cast<u64>(d_), b = static_cast<u64>(c_.bits);
    const u64 kgroups = static_cast<u64>(kq_ / c_.group);
    const u64 vgroups = static_cast<u64>(vq_) * (D / static_cast<u64>(c_.group));
    return static_cast<u64>(kq_) * D * b + kgroups * D * 32 + static_cast<u64>(size() - kq_) * D * 16 +
           static_cast<u64>(vq_) * D * b + vgroups * 32 + static_cast<u64>(size() - vq_) * D * 16;
  }

  // The compressed state, for validation against the CUDA twin and for tests.
  i64 quantized_keys() const { return kq_; }    // tokens [0, kq) are quantized keys
  i64 quantized_values() const { return vq_; }  // tokens [0, vq) are quantized values
  int key_words_per_group() const { return (c_.group * c_.bits + 31) / 32; }
  int value_words_per_token() const { return (d_ * c_.bits + 31) / 32; }
  const std::vector<AsymParams>& key_params() const { return kparams_; }  // [kq/G][D]
  const std::vector<u32>& key_codes() const { return kcodes_; }  // [kq/G][D][key_words_per_group]
  const std::vector<AsymParams>& value_params() const { return vparams_; }  // [vq][D/G]
  const std::vector<u32>& value_codes() const { return vcodes_; }  // [vq][value_words_per_token]

 private:
  // Quantize keys of tokens [t0, t0 + n), n a multiple of G: per channel, per
  // group of G tokens.
  void quantize_keys(i64 t0, i64 n) {
    const int G = c_.group, wpg = key_words_per_group();
    for (i64 g0 = t0; g0 < t0 + n; g0 += G) {
      for (int d = 0; d < d_; ++d) {
        i32 mn = key_row(g0)[d], mx = mn;
        for (int j = 1; j < G; ++j) {
          const i32 x = key_row(g0 + j)[d];
          mn = x < mn ? x : mn;
          mx = x > mx ? x : mx;
        }
        const AsymParams p = asym_params(mn, mx, c_.bits);
        kparams_.push_back(p);
        const size_t w0 = kcodes_.size();
        kcodes_.resize(w0 + static_cast<size_t>(wpg), 0u);
        for (int j = 0; j < G; ++j) {
          i32& x = key_row(g0 + j)[d];
          const u8 q = asym_quantize(x, p, c_.bits);
          pack_code(kcodes_.data() + w0, j, q, c_.bits);
          x = asym_dequantize(q, p);
        }
      }
    }
    kq_ = t0 + n;
  }

  // Quantize the value of token t alone: per group of G channels.
  void quantize_value(i64 t) {
    const int G = c_.group;
    i32* row = value_row(t);
    const size_t w0 = vcodes_.size();
    vcodes_.resize(w0 + static_cast<size_t>(value_words_per_token()), 0u);
    for (int g0 = 0; g0 < d_; g0 += G) {
      i32 mn = row[g0], mx = mn;
      for (int j = 1; j < G; ++j) {
        mn = row[g0 + j] < mn ? row[g0 + j] : mn;
        mx = row[g0 + j] > mx ? row[g0 + j] : mx;
      }
      const AsymParams p = asym_params(mn, mx, c_.bits);
      vparams_.push_back(p);
      for (int j = 0; j < G; ++j) {
        const u8 q = asym_quantize(row[g0 + j], p, c_.bits);
        pack_code(vcodes_.data() + w0, g0 + j, q, c_.bits);
        row[g0 + j] = asym_dequantize(q, p);
      }
    }
    vq_ = t + 1;
  }

  KiviConfig c_;
  i64 kq_ = 0, vq_ = 0;
  std::vector<AsymParams> kparams_, vparams_;
  std::vector<u32> kcodes_, vcodes_;
};

}  // namespace kvsim::ref
