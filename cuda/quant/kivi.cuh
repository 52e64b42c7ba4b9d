// KIVI's group quantization on the GPU: the twin of reference/quant/kivi.hpp
// (KiviCache::quantize_keys / quantize_value). Every group of the trace is
// quantized once; the streaming rules only decide which tokens attention sees
// through the result (kvsim_cuda.hpp, view_at).
#pragma once
#include <cuda_runtime.h>

#include "reference/common.hpp"
#include "reference/quant/asym.hpp"
#include "reference/quant/kivi.hpp"

namespace kvsim::cuda {

/// Key groups: per KV head h, per group g of G consecutive tokens, per channel d.
/// One thread per (h, g, d).
///   k       [T][Hkv][D] entry format (full precision)
///   k_hat   [T][Hkv][D] receives the dequantized key of tokens [0, ng * G)
///   params  [Hkv][ng][D]
///   codes   [Hkv][ng][D][wpg], wpg = ceil(G * bits / 32), zeroed by the caller
cudaError_t kivi_quantize_keys(const ref::KiviConfig& c, const i32* k, i32* k_hat, ref::AsymParams* params,
                               u32* codes, int Hkv, int D, i64 ng, cudaStream_t stream = 0);

/// Value groups: per token, per KV head, groups of G channels. One thread per
/// (token, h) (its groups may share a code word).
///   v       [T][Hkv][D]
///   v_hat   [T][Hkv][D] receives the dequantized value of tokens [0, T)
///   params  [Hkv][T][D/G]
///   codes   [Hkv][T][wpt], wpt = ceil(D * bits / 32), zeroed by the caller
cudaError_t kivi_quantize_values(const ref::KiviConfig& c, const i32* v, i32* v_hat, ref::AsymParams* params,
                                 u32* codes, int Hkv, int D, i64 T, cudaStream_t stream = 0);

}  // namespace kvsim::cuda
