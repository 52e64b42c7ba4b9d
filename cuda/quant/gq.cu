// gq group quantization on the GPU (see gq.cuh). The per-group math is
// reference/quant/gq.hpp's gq_quantize_group (scale rule, level set, packing),
// called exactly as GqCache::flush calls it; this file owns the grid only.
#include "cuda/quant/gq.cuh"

#include <climits>

#include "reference/quant/observe.hpp"

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

constexpr int kPoolThreads = 256;

__global__ void __launch_bounds__(kPoolThreads)
    GqPoolKernel(ref::GqConfig c, GqPoolDevice d, i64 n_prev, i64 n, const i64* __restrict__ e,
                 const i64* __restrict__ W, int group) {
  const int h = static_cast<int>(blockIdx.x);
  i64* acc = d.acc + static_cast<i64>(h) * d.T;
  i64* pool = d.pool + static_cast<i64>(h) * d.T;
  __shared__ int size;
  if (e) {  // observe: the step's mass of every token, summed over the group's query heads
    for (i64 s = threadIdx.x; s < n; s += blockDim.x) {
      i64 m = 0;
      for (int g = 0; g < group; ++g) {
        const i64 qh = static_cast<i64>(h) * group + g;
        m += ref::attention_mass_q30(e[qh * n + s], W[qh]);
      }
      acc[s] += m;
    }
  }
  if (threadIdx.x == 0) {  // new candidates: the tokens this flush quantized for the first time
    int k = d.pool_n[h];
    for (i64 s = ref::gq_pool_end(c, n_prev); s < ref::gq_pool_end(c, n); ++s) pool[k++] = s;
    size = k;
  }
  __syncthreads();
  const int drop = size - c.hh;
  if (drop <= 0) {
    if (threadIdx.x == 0) d.pool_n[h] = size;
    return;
  }
  // the token of rank r < drop in the eviction order leaves (rank: tokens before it)
  for (int i = static_cast<int>(threadIdx.x); i < size; i += blockDim.x) {
    const i64 a = pool[i], aa = acc[a];
    int rank = 0;
    for (int j = 0; j < size; ++j) rank += ref::gq_leaves_first(acc[pool[j]], pool[j], aa, a) ? 1 : 0;
    if (rank < drop) d.until[a * d.Hkv + h] = n;
  }
  __syncthreads();
  if (threadIdx.x == 0) {  // keep the rest, in order
    int k = 0;
    for (int i = 0; i < size; ++i)
      if (d.until[pool[i] * d.Hkv + h] == LLONG_MAX) pool[k++] = pool[i];
    d.pool_n[h] = k;
  }
}

}  // namespace

cudaError_t gq_pool_flush(const ref::GqConfig& c, const GqPoolDevice& d, i64 n_prev, i64 n, const i64* e,
                          const i64* W, int group, cudaStream_t stream) {
  if (d.Hkv <= 0) return cudaSuccess;
  GqPoolKernel<<<static_cast<unsigned>(d.Hkv), kPoolThreads, 0, stream>>>(c, d, n_prev, n, e, W, group);
  return cudaGetLastError();
}

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
