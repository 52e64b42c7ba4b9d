// The host-side API of the CUDA twin: plain C++ (no CUDA headers), so that
// sim/, the tests and the stubs of a build without CUDA compile with g++.
//
// Everything here computes exactly what reference/ computes (DESIGN.md, the
// numeric contract): the kernels call the reference's KVSIM_HD scalar cores;
// only grids, tiles and loads live in cuda/. Every function throws
// std::runtime_error naming the failing CUDA call on any CUDA error.
//
// How methods plug in (the GPU replay's one-pass design). A method is two
// things on the GPU:
//   1. "quantize groups": every group of the whole trace is quantized once,
//      giving a dequantized twin of each token's key and value (K_hat, V_hat,
//      [T][Hkv][D] entry format) plus the compressed state (codes, scales);
//   2. "which view of token s at step t": at decode step t attention sees
//      K_hat for tokens s < kq(t) and the full-precision key otherwise (same
//      for values with vq(t)). view_at() gives (kq, vq) as a closed form of
//      the method's streaming rules; the tests check it against the
//      reference cache's quantized_keys()/quantized_values() at every step.
// This holds for every method whose quantized value of a token never changes
// once quantized (fp, KIVI). A method that revisits tokens needs its own view.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "reference/common.hpp"
#include "reference/quant/asym.hpp"
#include "reference/quant/kvlinc_fit.hpp"
#include "reference/quant/registry.hpp"

namespace kvsim::cuda {

// ------------------------------------------------------------ the device
/// Number of CUDA devices (0 with no device or no driver; never throws).
int device_count();
/// Creates the CUDA context now (cudaFree(0)), so that a caller can overlap
/// its cost (a few hundred ms) with host work. Throws on a CUDA error.
void warm_up();
/// "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs)" or the reason there is none.
std::string device_description();

// ------------------------------------------------------------ entry (fixed/entry.cu)
/// Converts n trace bit patterns to the entry format on the GPU.
/// dtype: 0 fp16, 1 bf16, 2 fp32 (traces::DType order). Returns the smallest
/// failing index (NaN, Inf, out of range), or -1 when every value entered.
i64 entry_convert(int dtype, const u32* bits, i32* out, i64 n);
/// The same for queries, to the query format (Q.40 i64, reference/attention/query.hpp).
i64 query_convert(int dtype, const u32* bits, i64* out, i64 n);

// ------------------------------------------------------------ Hadamard (fixed/hadamard.cu)
/// In-place fx::hadamard_inplace on each of `rows` rows of n elements (host
/// arrays; one GPU thread per row). Throws when !fx::hadamard_supported(n).
void hadamard_rows(i64* data, i64 rows, int n);
void hadamard_rows(i32* data, i64 rows, int n);

// ------------------------------------------------------------ the views of a method
/// (kq, vq) at decode step t: during the attention of step t, tokens s < kq
/// are seen through K_hat, s < vq through V_hat.
struct StepView {
  i64 t = 0, kq = 0, vq = 0;
};

/// The view rule of each registry method, closed form of its streaming rules.
///   fp:   nothing is quantized.
///   kivi: keys: prefill quantizes the first P - P mod R, then after the step
///         at which the window holds R tokens it is flushed; during step t
///         (t >= P, after the append) kq = R * floor(t / R). Values: FIFO of
///         R full-precision tokens after each step; during step t
///         vq = max(0, t - R). Both are independent of P for t >= P.
///   kvarn: tiles of G tokens flushed after the step that completes them
///         (prefill: every complete tile); kq = vq = G * floor(t / G), the
///         sink tile's K_hat/V_hat being its full-precision rows.
///   kvlinc: KIVI's rule (its keys and rotated values follow KIVI's windows);
///         its key correction is seen from the first state with kq >= calib
///         (LayerEngine::correction_from).
///   gq:   ref::gq_quantized_tokens for keys and values (sinks, then the
///         flushed blocks: sinks + B floor((t - sinks - R) / B) once that is
///         positive; none before the k-means calibration prefix). With hh > 0
///         (heavy hitters) the tokens still in the pool are seen at full
///         precision: that part has no closed form, so add_method runs the
///         decode steps once in order (LayerEngine::set_prefill) and keeps,
///         per token, the step from which it is seen quantized
///         (heavy_hitters(); RowView::until); kq and vq stay these counts.
/// The state after the last step t_end - 1 is view_at(t_end) (also when no
/// decode step ran: then t_end = P and it is the prefill's state).
StepView view_at(const ref::MethodConfig& m, i64 t);

// ------------------------------------------------------------ KIVI (quant/kivi.cu)
/// The compressed state of one KV head, in the reference's layouts
/// (reference/quant/kivi.hpp, KiviCache accessors).
struct KiviState {
  std::vector<ref::AsymParams> key_params;    // [kq/G][D]
  std::vector<u32> key_codes;                 // [kq/G][D][key_words_per_group]
  std::vector<ref::AsymParams> value_params;  // [vq][D/G]
  std::vector<u32> value_codes;               // [vq][value_words_per_token]
};

// ------------------------------------------------------------ KVarN (quant/kvarn.cu)
/// The compressed state of one KV head for its tiles 1 .. nq (nq quantized
/// tiles), in the reference's layouts (reference/quant/kvarn.hpp, KvarnCache).
struct KvarnState {
  std::vector<ref::AsymParams> key_params;  // [nq][D]
  std::vector<u16> key_col_scales;          // [nq][G]
  std::vector<u32> key_codes;               // [nq][D][key words per row]
  std::vector<ref::AsymParams> value_params;  // [nq][G]
  std::vector<u16> value_col_scales;          // [nq][D]
  std::vector<u32> value_codes;               // [nq][G][value words per row]
};

// ------------------------------------------------------------ gq (quant/gq.cu)
/// The compressed state of one KV head, in the reference's layouts
/// (reference/quant/gq.hpp, GqTensorState; flush order).
struct GqState {
  std::vector<ref::AsymParams> key_params, value_params;  // [nq/B][groups per block]
  std::vector<u32> key_codes, value_codes;                // [nq/B][groups per block][words per group]
  std::vector<i32> key_codebook, value_codebook;          // [2^(b d)][d] Q.15 (levels=kmeans, d = vdim), else empty
};

// ------------------------------------------------------------ attention outputs
/// Outputs of the exact decode attention for E items (steps) x Hq query heads
/// (reference/attention/decode_attention.hpp formats).
struct AttnOut {
  int Hq = 0, D = 0;
  std::vector<i64> out;      // [E][Hq][D] Q.40
  std::vector<i64> den;      // [E][Hq]    W, Q.40
  std::vector<i64> woff;     // [E] start of item e's weights block in `weights`
  std::vector<i64> weights;  // block e: [Hq][t_e + 1] softmax numerators e_s, Q.40
  const i64* weights_of(size_t e, int qh, i64 n) const { return weights.data() + woff[e] + qh * n; }
};

/// One layer of a trace on the device: Q (query format, i64 Q.40), K, V
/// (entry format, i32 Q11.20) of every token
/// and each method's views, for the one-pass replay and for validation.
class LayerEngine {
 public:
  /// Allocates [T][Hq][D] queries and [T][Hkv][D] keys/values. With
  /// guard_bytes > 0 every device buffer is surrounded by that many bytes of
  /// a fixed pattern (check_guards() verifies them).
  LayerEngine(int Hq, int Hkv, int D, i64 T, std::size_t guard_bytes = 0);
  ~LayerEngine();
  LayerEngine(const LayerEngine&) = delete;
  LayerEngine& operator=(const LayerEngine&) = delete;

  /// Rows [t0, t0 + n): q [n][Hq][D] query format, k and v [n][Hkv][D] entry format.
  void upload(i64 t0, i64 n, const i64* q, const i32* k, const i32* v);

  /// The trace's prefill length P (decode steps are t = P .. T-1). Needed
  /// before add_method() by views that follow the decode steps' attention
  /// (gq with hh > 0: its pass over every step runs inside add_method).
  void set_prefill(i64 P);

  /// Builds a method's views over every uploaded token (quantize groups).
  /// Returns the view index for attend()/state queries. A mixed-precision
  /// config must be one layer's (ref::layer_config): each KV head then gets
  /// its own width (one view per width, rows gathered per head).
  int add_method(const ref::MethodConfig& m);

  /// Exact decode attention of every query head at each item's step, each
  /// token seen through the item's view. `with_weights`: also return every
  /// softmax numerator (needed by the KL metric).
  void attend(int view, const std::vector<StepView>& items, bool with_weights, AttnOut& out);

  /// KIVI compressed state of KV head h restricted to (kq, vq), reference
  /// layout (for kvlinc: the KIVI state of (k, H v)).
  KiviState kivi_state(int view, int h, i64 kq, i64 vq) const;
  /// KVarN compressed state of KV head h for its first nq quantized tiles.
  KvarnState kvarn_state(int view, int h, i64 nq) const;

  /// A view whose quantized keys change once (kvlinc's fitted correction):
  /// from states with kq >= correction_from(view) on, tokens s < kq are seen
  /// through corrected_key_rows() instead of hat_rows()'s keys. INT64_MAX
  /// when the view has no such switch (or the trace never reaches it).
  i64 correction_from(int view) const;
  /// The corrected keys, [T][Hkv][D] entry format (empty without a switch).
  void corrected_key_rows(int view, std::vector<i32>& k_corr) const;
  /// kvlinc's fitted affine parameters of KV head h (the integers the host fit
  /// gave, as uploaded); empty vectors without a fit.
  ref::KvlincAffine kvlinc_affine(int view, int h) const;
  /// gq compressed state of KV head h: the first knq / vnq non-sink quantized
  /// tokens (GqTensorState::nq), reference layout.
  GqState gq_state(int view, int h, i64 knq, i64 vnq) const;
  /// kvlinc correction=linear: the fitted parameters of KV head h (host
  /// integers, as uploaded) and its prefix state S [r][D], z [r] at the flush
  /// boundary kq (a multiple of R); all empty without a fit. The correction is
  /// seen from states with kq >= calib (LayerEngine::linear_from).
  ref::KvlincLinear kvlinc_linear(int view, int h, i64 kq, std::vector<i128>& S, std::vector<i128>& z) const;
  /// gq heavy hitters of KV head h: until [T] (token s is seen at full
  /// precision during the steps t < until[s] even when quantized; INT64_MAX
  /// while it stays in the pool) and the accumulated attention mass acc [T]
  /// after the last step (GqCache::accumulated()). Empty without hh.
  void heavy_hitters(int view, int h, std::vector<i64>& until, std::vector<i64>& acc) const;
  /// The attention view of KV head h at state sv: K, V [n][D], tokens [0, n).
  void view_rows(int view, int h, const StepView& sv, i64 n, std::vector<i32>& K, std::vector<i32>& V) const;

  /// The dequantized twins of every token (all heads), [T][Hkv][D] each; for
  /// a method without quantization, the full-precision rows.
  void hat_rows(int view, std::vector<i32>& k_hat, std::vector<i32>& v_hat) const;

  /// Throws when a guard byte of any device buffer changed.
  void check_guards() const;

  int q_heads() const;
  int kv_heads() const;
  int head_dim() const;
  i64 tokens() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ------------------------------------------------------------ the oracle's heavy loops (attention/oracle.cu)
/// The float64 oracle (reference/attention/oracle.hpp) of one layer, split so
/// that the GPU does its two O(n D) loops bit-identically and the host does
/// what needs libm (exp) exactly as oracle_attention does:
///   scores(steps)            s_t for every item and query head ([Hq][n] blocks at woff[e])
///   host                     m = max s_t; e_t = std::exp(s_t - m); W = compensated sum of e_t
///   numerators(steps, e)     a_d = compensated sum_t e_t v_td   [E][Hq][D]; o_d = a_d / W
/// Call numerators() right after scores() with the same steps.
class OracleEngine {
 public:
  OracleEngine(int Hq, int Hkv, int D, i64 T);
  ~OracleEngine();
  OracleEngine(const OracleEngine&) = delete;
  OracleEngine& operator=(const OracleEngine&) = delete;
  /// Rows [t0, t0 + n): exact trace values, q [n][Hq][D], k and v [n][Hkv][D].
  void upload(i64 t0, i64 n, const float* q, const float* k, const float* v);
  void scores(const std::vector<i64>& steps, double scale, std::vector<i64>& woff, std::vector<double>& out);
  void numerators(const std::vector<i64>& steps, const std::vector<double>& ex, std::vector<double>& numer);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ------------------------------------------------------------ benchmark (attention/bench.cu)
struct BenchRow {
  std::string kernel;  // "kivi-b2 exact", "kivi-b4 exact", "fp16 plain"
  int batch = 0;
  i64 context = 0;
  double ms_per_step = 0;  // median over repeats
  double gbytes = 0;       // bytes the step must read, GB
  double gb_per_s = 0;
};
/// Times one decode step (all batch x Hq query heads) of each kernel at the
/// given shape; warm-up `warmup`, median of `repeats` CUDA-event timings.
std::vector<BenchRow> bench_attention(int batch, i64 context, int Hq, int Hkv, int D, int warmup, int repeats);

}  // namespace kvsim::cuda
