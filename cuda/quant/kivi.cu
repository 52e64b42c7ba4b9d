// KIVI group quantization on the GPU (see kivi.cuh). The per-group math is
// reference/quant/asym.hpp's (asym_params, asym_quantize, pack_code,
// asym_dequantize), called exactly as KiviCache calls it; this file owns the
// grid only.
#include "cuda/quant/kivi.cuh"

namespace kvsim::cuda {
namespace {

constexpr int kBlock = 256;

__global__ void KiviKeysKernel(int bits, int G, const i32* __restrict__ k, i32* __restrict__ k_hat,
                               ref::AsymParams* __restrict__ params, u32* __restrict__ codes, int Hkv, int D,
                               i64 ng, int wpg) {
  const i64 i = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x;  // (h, g, d)
  if (i >= static_cast<i64>(Hkv) * ng * D) return;
  const int d = static_cast<int>(i % D);
  const i64 g = (i / D) % ng;
  const int h = static_cast<int>(i / (static_cast<i64>(D) * ng));
  const i64 row0 = g * G;
  auto at = [&](int j) { return ((row0 + j) * Hkv + h) * D + d; };
  i32 mn = k[at(0)], mx = mn;
  for (int j = 1; j < G; ++j) {
    const i32 x = k[at(j)];
    mn = x < mn ? x : mn;
    mx = x > mx ? x : mx;
  }
  const ref::AsymParams p = ref::asym_params(mn, mx, bits);
  params[i] = p;  // i = (h * ng + g) * D + d
  u32* w = codes + i * wpg;
  for (int j = 0; j < G; ++j) {
    const u8 q = ref::asym_quantize(k[at(j)], p, bits);
    ref::pack_code(w, j, q, bits);
    k_hat[at(j)] = ref::asym_dequantize(q, p);
  }
}

__global__ void KiviValuesKernel(int bits, int G, const i32* __restrict__ v, i32* __restrict__ v_hat,
                                 ref::AsymParams* __restrict__ params, u32* __restrict__ codes, int Hkv, int D,
                                 i64 T, int wpt) {
  const i64 i = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x;  // (t, h)
  if (i >= T * Hkv) return;
  const i64 t = i / Hkv;
  const int h = static_cast<int>(i % Hkv);
  const i32* row = v + i * D;  // (t * Hkv + h) * D
  i32* hat = v_hat + i * D;
  const i64 slot = static_cast<i64>(h) * T + t;  // [Hkv][T]
  ref::AsymParams* pp = params + slot * (D / G);
  u32* w = codes + slot * wpt;
  for (int g0 = 0; g0 < D; g0 += G) {
    i32 mn = row[g0], mx = mn;
    for (int j = 1; j < G; ++j) {
      mn = row[g0 + j] < mn ? row[g0 + j] : mn;
      mx = row[g0 + j] > mx ? row[g0 + j] : mx;
    }
    const ref::AsymParams p = ref::asym_params(mn, mx, bits);
    pp[g0 / G] = p;
    for (int j = 0; j < G; ++j) {
      const u8 q = ref::asym_quantize(row[g0 + j], p, bits);
      ref::pack_code(w, g0 + j, q, bits);
      hat[g0 + j] = ref::asym_dequantize(q, p);
    }
  }
}

unsigned blocks_for(i64 n) { return static_cast<unsigned>((n + kBlock - 1) / kBlock); }

}  // namespace

cudaError_t kivi_quantize_keys(const ref::KiviConfig& c, const i32* k, i32* k_hat, ref::AsymParams* params,
                               u32* codes, int Hkv, int D, i64 ng, cudaStream_t stream) {
  const i64 n = static_cast<i64>(Hkv) * ng * D;
  if (n <= 0) return cudaSuccess;
  const int wpg = (c.group * c.bits + 31) / 32;
  KiviKeysKernel<<<blocks_for(n), kBlock, 0, stream>>>(c.bits, c.group, k, k_hat, params, codes, Hkv, D, ng, wpg);
  return cudaGetLastError();
}

cudaError_t kivi_quantize_values(const ref::KiviConfig& c, const i32* v, i32* v_hat, ref::AsymParams* params,
                                 u32* codes, int Hkv, int D, i64 T, cudaStream_t stream) {
  const i64 n = T * Hkv;
  if (n <= 0) return cudaSuccess;
  const int wpt = (D * c.bits + 31) / 32;
  KiviValuesKernel<<<blocks_for(n), kBlock, 0, stream>>>(c.bits, c.group, v, v_hat, params, codes, Hkv, D, T, wpt);
  return cudaGetLastError();
}

}  // namespace kvsim::cuda
