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

}  // namespace kvsim::cuda
