// Next-token choice for the model runner: greedy (argmax), or seeded
// sampling at a temperature with optional top-p, as llama2.c's run.c does it
// (xorshift64* generator, (u32 >> 8) / 2^24 uniforms, top-p over the
// probability-sorted tokens). The generator is our own, so a seed gives the
// same tokens on every platform for the same logits.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace kvsim::model {

class Sampler {
 public:
  // temperature <= 0: greedy. top_p outside (0, 1): plain multinomial.
  Sampler(float temperature, float top_p, uint64_t seed)
      : temp_(temperature), top_p_(top_p), state_(seed ? seed : 0x9E3779B97F4A7C15ull) {}

  bool greedy() const { return !(temp_ > 0); }

  int sample(const std::vector<float>& logits) {
    const int n = static_cast<int>(logits.size());
    if (greedy()) {
      int best = 0;
      for (int i = 1; i < n; ++i)
        if (logits[i] > logits[best]) best = i;
      return best;
    }
    probs_.resize(n);
    softmax(logits, temp_, probs_);
    const float coin = uniform();
    if (top_p_ <= 0 || top_p_ >= 1) {
      float cdf = 0;
      for (int i = 0; i < n; ++i) {
        cdf += probs_[i];
        if (coin < cdf) return i;
      }
      return n - 1;
    }
    // run.c sample_topp: keep tokens with p >= (1 - top_p)/(n - 1), sort
    // descending, cut where the cumulative mass first exceeds top_p.
    const float cutoff = (1.0f - top_p_) / static_cast<float>(n - 1);
    idx_.clear();
    for (int i = 0; i < n; ++i)
      if (probs_[i] >= cutoff) idx_.push_back(i);
    std::stable_sort(idx_.begin(), idx_.end(), [&](int a, int b) { return probs_[a] > probs_[b]; });
    float cum = 0;
    size_t last = idx_.size() - 1;
    for (size_t i = 0; i < idx_.size(); ++i) {
      cum += probs_[idx_[i]];
      if (cum > top_p_) {
        last = i;
        break;
      }
    }
    const float r = coin * cum;
    float cdf = 0;
    for (size_t i = 0; i <= last; ++i) {
      cdf += probs_[idx_[i]];
      if (r < cdf) return idx_[i];
    }
    return idx_[last];
  }

  // softmax(logits / temperature) into p (float, max subtracted).
  static void softmax(const std::vector<float>& logits, float temperature, std::vector<float>& p) {
    p.resize(logits.size());
    float mx = logits[0] / temperature;
    for (size_t i = 0; i < logits.size(); ++i) mx = std::max(mx, logits[i] / temperature);
    float sum = 0;
    for (size_t i = 0; i < logits.size(); ++i) {
      p[i] = std::exp(logits[i] / temperature - mx);
      sum += p[i];
    }
    for (auto& x : p) x /= sum;
  }

  uint32_t next_u32() {  // xorshift64*
    state_ ^= state_ >> 12;
    state_ ^= state_ << 25;
    state_ ^= state_ >> 27;
    return static_cast<uint32_t>((state_ * 0x2545F4914F6CDD1Dull) >> 32);
  }
  float uniform() { return static_cast<float>(next_u32() >> 8) / 16777216.0f; }

 private:
  float temp_, top_p_;
  uint64_t state_;
  std::vector<float> probs_;
  std::vector<int> idx_;
};

}  // namespace kvsim::model
