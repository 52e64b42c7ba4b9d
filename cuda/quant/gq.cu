// gq group quantization on the GPU (see gq.cuh). The per-group math is
// reference/quant/gq.hpp's gq_quantize_group (scale rule, level set, packing),
// called exactly as GqCache::flush calls it; this file owns the grid only.
#include "cuda/quant/gq.cuh"

namespace kvsim::cuda {
namespace {

constexpr int kBlock = 128;

__global__ void GqGroupsKernel(ref::GqTensor c, int sinks, const i32* __restrict__ x, i32* __restrict__ xhat,
                               ref::AsymParams* __restrict__ params, u32* __restrict__ codes,
                               const i32* __restrict__ books, int Hkv, int D, i64 nblocks, int gpb, int wpg) {
  const i64 i = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x;  // (h, b, g)
  if (i >= static_cast<i64>(Hkv) * nblocks * gpb) return;
  const int g = static_cast<int>(i % gpb);
  const i64 b = (i / gpb) % nblocks;
  const int h = static_cast<int>(i / (static_cast<i64>(gpb) * nblocks));
  i64 t0;
  int nt, d0, nd;
  ref::gq_group_rect(c, D, sinks + b * c.block, g, &t0, &nt, &d0, &nd);
  const i64 off = (t0 * Hkv + h) * D + d0;
  const ref::GqGroup grp{x + off, xhat + off, static_cast<i64>(Hkv) * D, nt, nd};
  const i32* cb = books ? books + static_cast<i64>(h) * ref::gq_codebook_size(c) : nullptr;
  params[i] = ref::gq_quantize_group(c, grp, cb, codes + i * wpg);
}

}  // namespace

cudaError_t gq_quantize_tensor(const ref::GqTensor& c, int sinks, const i32* x, i32* xhat, ref::AsymParams* params,
                               u32* codes, const i32* books, int Hkv, int D, i64 nblocks, cudaStream_t stream) {
  const int gpb = ref::gq_groups_per_block(c, D), wpg = ref::gq_words_per_group(c, D);
  const i64 n = static_cast<i64>(Hkv) * nblocks * gpb;
  if (n <= 0) return cudaSuccess;
  GqGroupsKernel<<<static_cast<unsigned>((n + kBlock - 1) / kBlock), kBlock, 0, stream>>>(
      c, sinks, x, xhat, params, codes, books, Hkv, D, nblocks, gpb, wpg);
  return cudaGetLastError();
}

}  // namespace kvsim::cuda
