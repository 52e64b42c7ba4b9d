// The CPU-vs-GPU comparisons shared by the [cuda] quantizer tests (kivi,
// kvarn, kvlinc, gq _test.cpp), tolerance zero: the device run of a case
// (engine with guard bytes, the attention of every decode step), the
// reference's prefill rows of one KV head, the decode outputs, denominators
// and weights of one step and query head (and the reference attention of all
// query heads of a KV head), fp16 parameters, u16 words, and the
// attention view of a head. On a mismatch each names the first index and both
// bit patterns.
#pragma once
#include <catch2/catch.hpp>

#include <algorithm>
#include <sstream>
#include <string>
#include <vector>

#include "cuda/kvsim_cuda.hpp"
#include "reference/attention/decode_attention.hpp"
#include "reference/attention/linear_correction.hpp"
#include "reference/common.hpp"
#include "reference/quant/asym.hpp"
#include "reference/quant/cache.hpp"
#include "reference/quant/registry.hpp"

namespace kvsim::test {

/// The GPU side of a case: queries [T][Hq][D], keys/values [T][Hkv][D]
/// uploaded into an engine with 4096 guard bytes around every buffer, method
/// the prefill length P set, mc added, the attention of steps [P, T) (weights if asked), guards checked.
struct GpuCase {
  cuda::LayerEngine eng;
  int view = 0;
  cuda::AttnOut out;
  GpuCase(const ref::MethodConfig& mc, int Hq, int Hkv, int D, i64 T, i64 P, const std::vector<i64>& q,
          const std::vector<i32>& k, const std::vector<i32>& v, bool weights)
      : eng(Hq, Hkv, D, T, 4096) {
    eng.upload(0, T, q.data(), k.data(), v.data());
    eng.set_prefill(P);
    view = eng.add_method(mc);
    std::vector<cuda::StepView> items;
    for (i64 t = P; t < T; ++t) items.push_back(cuda::view_at(mc, t));
    eng.attend(view, items, weights, out);
    eng.check_guards();
  }
};

/// Rows [t0, t0 + n) of KV head h out of x [T][H][D]: [n][D].
inline std::vector<i32> head_rows(const std::vector<i32>& x, i64 t0, i64 n, int H, int h, int D) {
  std::vector<i32> r;
  r.reserve(static_cast<size_t>(n) * D);
  for (i64 t = t0; t < t0 + n; ++t) {
    const size_t at = (static_cast<size_t>(t) * H + h) * D;
    r.insert(r.end(), x.begin() + at, x.begin() + at + D);
  }
  return r;
}

/// The reference's attention of step t (n = t + 1 tokens) for query head qh:
/// outputs o[D], denominator W and, unless w is null, the weights w[n],
/// against the GPU's item e. Outputs and weights: a FAIL at the first
/// mismatch; the denominator: one assertion. nonzero |= any output != 0.
inline void require_same_step(const cuda::AttnOut& out, size_t e, int qh, i64 t, i64 n, const i64* o, i64 W,
                              const i64* w, bool& nonzero) {
  const int Hq = out.Hq, D = out.D;
  const i64* go = out.out.data() + (e * Hq + qh) * D;
  for (int d = 0; d < D; ++d) {
    if (o[d] != go[d])
      FAIL("output mismatch at step " << t << " q head " << qh << " element " << d << ": cpu " << o[d] << " (0x"
                                      << std::hex << o[d] << ") gpu " << std::dec << go[d] << " (0x" << std::hex
                                      << go[d] << ")");
    nonzero |= o[d] != 0;
  }
  const i64 gW = out.den[e * Hq + qh];
  INFO("denominator at step " << t << " q head " << qh);
  REQUIRE(W == gW);
  if (!w) return;
  const i64* gw = out.weights_of(e, qh, n);
  for (i64 s = 0; s < n; ++s)
    if (w[s] != gw[s])
      FAIL("weight mismatch at step " << t << " q head " << qh << " token " << s << ": cpu " << w[s] << " gpu "
                                      << gw[s]);
}

/// Step t (the GPU's item e) of KV head h: for each of its `group` query heads
/// (queries q [T][Hq][D]), the reference decode attention over the cache's
/// view (with the cache's linear correction, if any) against the GPU,
/// require_same_step; the weights too if asked.
inline void require_same_attention(const cuda::AttnOut& out, size_t e, i64 t, int h, int group,
                                   const std::vector<i64>& q, const ref::HeadCache& cache, bool weights,
                                   bool& nonzero) {
  const int Hq = out.Hq, D = out.D;
  const i64 n = t + 1;
  std::vector<i64> logits(static_cast<size_t>(n)), o(static_cast<size_t>(D)), w(weights ? static_cast<size_t>(n) : 0);
  i64* wp = weights ? w.data() : nullptr;
  for (int g = 0; g < group; ++g) {
    const int qh = h * group + g;
    const i64* qq = q.data() + (static_cast<size_t>(t) * Hq + qh) * D;
    i64 W = 0;
    if (const ref::LinearCorrection* lc = cache.linear_correction())
      ref::decode_attention_linear_ref(qq, cache.keys(), cache.values(), n, D, logits.data(), o.data(), wp, &W, lc);
    else
      ref::decode_attention_ref(qq, cache.keys(), cache.values(), n, D, logits.data(), o.data(), wp, &W);
    require_same_step(out, e, qh, t, n, o.data(), W, wp, nonzero);
  }
}

/// fp16 (scale, zero) pairs, GPU against CPU: two assertions per pair (the
/// message, built only on a mismatch, names the index and both pairs).
inline void require_same_params(const std::vector<ref::AsymParams>& gpu, const std::vector<ref::AsymParams>& cpu,
                                const char* what) {
  REQUIRE(gpu.size() == cpu.size());
  for (size_t i = 0; i < gpu.size(); ++i) {
    const auto diff = [&](bool same, const char* field) {
      if (same) return std::string();
      std::ostringstream s;
      s << what << " " << field << " mismatch at " << i << ": gpu " << gpu[i].scale << "/" << gpu[i].zero << " cpu "
        << cpu[i].scale << "/" << cpu[i].zero;
      return s.str();
    };
    REQUIRE(diff(gpu[i].scale == cpu[i].scale, "scale") == "");
    REQUIRE(diff(gpu[i].zero == cpu[i].zero, "zero") == "");
  }
}

/// u16 words (fp16 scales), GPU against CPU: a FAIL at the first mismatch.
inline void require_same_u16(const std::vector<u16>& gpu, const std::vector<u16>& cpu, const char* what) {
  REQUIRE(gpu.size() == cpu.size());
  for (size_t i = 0; i < gpu.size(); ++i)
    if (gpu[i] != cpu[i]) FAIL(what << " mismatch at " << i << ": gpu " << gpu[i] << " cpu " << cpu[i]);
}

/// The GPU's attention view of KV head h at sv over tokens [0, n) against the
/// reference cache's keys()/values().
inline void require_same_view(const cuda::LayerEngine& eng, int view, int h, cuda::StepView sv, i64 n,
                              const ref::HeadCache& cache) {
  std::vector<i32> K, V;
  eng.view_rows(view, h, sv, n, K, V);
  REQUIRE(std::equal(K.begin(), K.end(), cache.keys()));
  REQUIRE(std::equal(V.begin(), V.end(), cache.values()));
}

}  // namespace kvsim::test
