// fp: no quantization. Keys and values enter the cache in the entry format
// (Q11.20) and go through the same fixed-point attention as every method, so
// its error against the oracle is the reference's own arithmetic error
// (entry rounding, logit rounding, exp2, the final division). The bar
// is a relative output error <= 1e-6 at every step of the default trace.
// stored_bits counts fp16 storage (16 bits per element), as a serving engine
// would hold the unquantized cache.
#pragma once
#include "reference/quant/cache.hpp"

namespace kvsim::ref {

class FpCache final : public HeadCache {
 public:
  explicit FpCache(int head_dim) : HeadCache(head_dim) {}
  void prefill(const i32* K, const i32* V, i64 n) override {
    for (i64 t = 0; t < n; ++t) push_view(K + t * d_, V + t * d_);
  }
  void append(const i32* k, const i32* v) override { push_view(k, v); }
  void end_step() override {}
  u64 stored_bits() const override { return static_cast<u64>(size()) * static_cast<u64>(d_) * 32; }
};

}  // namespace kvsim::ref
