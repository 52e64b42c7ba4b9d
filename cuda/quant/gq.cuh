// gq's group quantization on the GPU: the twin of reference/quant/gq.hpp
// (GqCache::flush). Every full block of the trace is quantized once per
// tensor; the streaming rules (gq_quantized_tokens) only decide which tokens
// attention sees through the result (kvsim_cuda.hpp, view_at).
#pragma once
#include <cuda_runtime.h>

#include "reference/common.hpp"
#include "reference/quant/asym.hpp"
#include "reference/quant/gq.hpp"

namespace kvsim::cuda {

/// The groups of one tensor (keys or values): per KV head h, per block b of
/// c.block tokens starting at token sinks + b * c.block, per group i of the
/// block (gq_group_rect). One thread per (h, b, i), calling gq_quantize_group.
///   x       [T][Hkv][D] entry format (full precision)
///   xhat    [T][Hkv][D] receives the dequantized twin of tokens of the blocks
///   params  [Hkv][nblocks][gpb], gpb = gq_groups_per_block
///   codes   [Hkv][nblocks][gpb][wpg], wpg = gq_words_per_group, zeroed by the caller
///   books   [Hkv][2^(bits d)][d] Q.15 k-means codebooks (levels=kmeans, d = c.vdim;
///           gq_codebook_size entries per head), else null
cudaError_t gq_quantize_tensor(const ref::GqTensor& c, int sinks, const i32* x, i32* xhat, ref::AsymParams* params,
                               u32* codes, const i32* books, int Hkv, int D, i64 nblocks, cudaStream_t stream = 0);

/// Heavy hitters (hh > 0), the step-sequential part: GqCache::observe and the
/// pool update of GqCache::flush_point, one thread block per KV head.
///   acc      [Hkv][T] accumulated mass (Q.30 sums), zeroed by the caller
///   pool     [Hkv][T] tokens in the pool (first pool_n[h] entries)
///   pool_n   [Hkv]
///   until    [T][Hkv] token s of head h is seen at full precision during the
///            steps t < until (it is in the pool); LLONG_MAX (set by the
///            caller) while it has not left. The view rule: s is seen through
///            its quantized twin at step t iff s < kq(t) (vq) and t >= until.
struct GqPoolDevice {
  i64* acc = nullptr;
  i64* pool = nullptr;
  int* pool_n = nullptr;
  i64* until = nullptr;
  i64 T = 0;
  int Hkv = 0;
};

/// The flush point after n tokens (prefill: n = P, weights null; decode step
/// t: n = t + 1 with the step's softmax numerators e [Hq][n] (Q.40, item
/// block of the attention scratch) and denominators W [Hq]): adds the step's
/// mass (observe_step's sum over the group's query heads) to acc, the tokens
/// first quantized by this flush (gq_pool_end(n_prev) .. gq_pool_end(n)) to
/// the pool, then evicts in gq_leaves_first order down to hh tokens: each
/// evicted token gets until = n.
cudaError_t gq_pool_flush(const ref::GqConfig& c, const GqPoolDevice& d, i64 n_prev, i64 n, const i64* e,
                          const i64* W, int group, cudaStream_t stream = 0);

}  // namespace kvsim::cuda
