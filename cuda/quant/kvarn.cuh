// KVarN's tile quantization on the GPU: the twin of reference/quant/kvarn.hpp
// (KvarnCache::flush). Every complete tile of the trace except the sink
// (tile 0) is quantized once; the streaming rules only decide which tokens
// attention sees through the result (kvsim_cuda.hpp, view_at).
#pragma once
#include <cuda_runtime.h>

#include "reference/common.hpp"
#include "reference/quant/asym.hpp"
#include "reference/quant/kvarn.hpp"

namespace kvsim::cuda {

/// Outputs, nq = max(0, floor(T / G) - 1) quantized tiles per KV head (tile
/// kk covers tokens [(kk + 1) G, (kk + 2) G)); reference layouts per tile.
struct KvarnDeviceOut {
  i32* k_hat;                // [T][Hkv][D], holds the full-precision keys on entry
  i32* v_hat;                // [T][Hkv][D], holds the full-precision values on entry
  ref::AsymParams* kparams;  // [Hkv][nq][D]    per channel, row scale folded
  u16* kcol;                 // [Hkv][nq][G]    per token e^a (fp16)
  u32* kcodes;               // [Hkv][nq][D][wk], wk = words_per_row(G, kbits), zeroed
  ref::AsymParams* vparams;  // [Hkv][nq][G]    per token
  u16* vcol;                 // [Hkv][nq][D]    per channel
  u32* vcodes;               // [Hkv][nq][G][wv], wv = words_per_row(D, vbits), zeroed
};

/// Rotates the tokens of the quantized tiles (one thread per token row),
/// runs the per-tile core ref::kvarn::quantize_tile's steps (one thread block
/// per (K/V, head, tile), a thread per row/column, state in shared memory),
/// and writes the views rotated back (one thread per token row).
///   k, v   [T][Hkv][D] entry format
/// Throws std::runtime_error on an allocation failure; returns launch errors.
cudaError_t kvarn_quantize(const ref::KvarnConfig& c, const i32* k, const i32* v, const KvarnDeviceOut& o, int Hkv,
                           int D, i64 T, cudaStream_t stream = 0);

}  // namespace kvsim::cuda
