// `kvsim bench attention`: one decode step of batch x Hq query heads against
// a KIVI cache, codes read packed and dequantized on the fly by the shared
// cores (asym_dequantize(unpack_code(...))), through the exact attention
// kernel; and a plain fp16 attention (fp32 accumulation, not bit-exact, a
// speed reference only) at the same shapes.
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cuda/attention/decode_attention.cuh"
#include "cuda/common.cuh"
#include "cuda/kvsim_cuda.hpp"
#include "cuda/quant/kivi.cuh"

namespace kvsim::cuda {
namespace {

// KIVI's compressed state read directly: codes below kq/vq, full-precision
// windows (entry format) above. "Heads" hb = batch * Hkv + h.
struct KiviPackedView {
  const ref::AsymParams* kparams = nullptr;  // [HB][ng][D]
  const u32* kcodes = nullptr;               // [HB][ng][D][wpg]
  const ref::AsymParams* vparams = nullptr;  // [HB][T][D/G]
  const u32* vcodes = nullptr;               // [HB][T][wpt]
  const i32* k_fp = nullptr;                 // [T][HB][D]
  const i32* v_fp = nullptr;
  int HB = 0, Hkv = 0, D = 0, G = 32, bits = 2, wpg = 0, wpt = 0;
  i64 T = 0, ng = 0;
  int hb = 0;
  i64 kq = 0, vq = 0;

  __device__ void begin(i64 e, int h, const i64* item) {
    hb = static_cast<int>(e) * Hkv + h;
    kq = item[1];
    vq = item[2];
  }
  template <int C>
  __device__ void load_k(i64 s, int d0, i32 (&dst)[C]) const {
    if (s < kq) {
      const i64 g = s / G;
      const int j = static_cast<int>(s % G);
#pragma unroll
      for (int c = 0; c < C; ++c) {
        const int d = d0 + c;
        if (d < D) {
          const i64 i = (static_cast<i64>(hb) * ng + g) * D + d;
          dst[c] = ref::asym_dequantize(ref::unpack_code(kcodes + i * wpg, j, bits), kparams[i]);
        } else {
          dst[c] = 0;
        }
      }
    } else {
      const i32* row = k_fp + (s * HB + hb) * D;
#pragma unroll
      for (int c = 0; c < C; ++c) dst[c] = d0 + c < D ? row[d0 + c] : 0;
    }
  }
  template <int C>
  __device__ void load_v(i64 s, int d0, i32 (&dst)[C]) const {
    if (s < vq) {
      const i64 slot = static_cast<i64>(hb) * T + s;
      const u32* w = vcodes + slot * wpt;
      const ref::AsymParams* p = vparams + slot * (D / G);
#pragma unroll
      for (int c = 0; c < C; ++c) {
        const int d = d0 + c;
        dst[c] = d < D ? ref::asym_dequantize(ref::unpack_code(w, d, bits), p[d / G]) : 0;
      }
    } else {
      const i32* row = v_fp + (s * HB + hb) * D;
#pragma unroll
      for (int c = 0; c < C; ++c) dst[c] = d0 + c < D ? row[d0 + c] : 0;
    }
  }
};

__device__ inline u64 mix64(u64 x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
// Pseudo-random entry-format values in (-2, 2) (never zeros: see METHOD.md).
__global__ void FillEntryKernel(i32* p, i64 n, u64 seed) {
  const i64 i = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) p[i] = static_cast<i32>(static_cast<i64>(mix64(seed * 0x100000001B3ull + i) >> 42) - (i64{1} << 21));
}
// Queries: the entry values above moved to the query format (Q.40).
__global__ void EntryToQueryKernel(const i32* src, i64* dst, i64 n) {
  const i64 i = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) dst[i] = static_cast<i64>(src[i]) * (i64{1} << (ref::kQueryFrac - kEntryFrac));
}
__global__ void EntryToHalfKernel(const i32* src, __half* dst, i64 n) {
  const i64 i = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) dst[i] = __float2half_rn(static_cast<float>(src[i]) * (1.0f / (1 << kEntryFrac)));
}
// [T][HB][D] -> [HB][T][D]
__global__ void TransposeHalfKernel(const __half* src, __half* dst, i64 T, int HB, int D) {
  const i64 i = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= T * HB * D) return;
  const int d = static_cast<int>(i % D);
  const int hb = static_cast<int>((i / D) % HB);
  const i64 t = i / (static_cast<i64>(D) * HB);
  dst[(static_cast<i64>(hb) * T + t) * D + d] = src[i];
}

// Plain fp16 decode attention, D = 128: block per (b, qh), 8 warps over tokens,
// lane holds 4 channels, per-warp online softmax in fp32, merged in shared memory.
__global__ void __launch_bounds__(256) PlainHalfAttentionKernel(const __half* __restrict__ q,
                                                                const __half* __restrict__ K,
                                                                const __half* __restrict__ V, float* out, int Hq,
                                                                int Hkv, i64 T, float scale) {
  constexpr int D = 128;
  const int bq = blockIdx.x;  // b * Hq + qh
  const int b = bq / Hq, qh = bq % Hq, h = qh / (Hq / Hkv);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const __half* qr = q + static_cast<i64>(bq) * D + lane * 4;
  float qv[4];
  for (int j = 0; j < 4; ++j) qv[j] = __half2float(qr[j]) * scale;
  const i64 base = (static_cast<i64>(b) * Hkv + h) * T * D;
  float m = -INFINITY, l = 0, acc[4] = {0, 0, 0, 0};
  for (i64 s = warp; s < T; s += 8) {
    const uint2 kr = *reinterpret_cast<const uint2*>(K + base + s * D + lane * 4);
    const __half2 k01 = *reinterpret_cast<const __half2*>(&kr.x), k23 = *reinterpret_cast<const __half2*>(&kr.y);
    float dot = qv[0] * __low2float(k01) + qv[1] * __high2float(k01) + qv[2] * __low2float(k23) +
                qv[3] * __high2float(k23);
    for (int o = 16; o; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    const float mn = fmaxf(m, dot), corr = __expf(m - mn), p = __expf(dot - mn);
    const uint2 vr = *reinterpret_cast<const uint2*>(V + base + s * D + lane * 4);
    const __half2 v01 = *reinterpret_cast<const __half2*>(&vr.x), v23 = *reinterpret_cast<const __half2*>(&vr.y);
    acc[0] = acc[0] * corr + p * __low2float(v01);
    acc[1] = acc[1] * corr + p * __high2float(v01);
    acc[2] = acc[2] * corr + p * __low2float(v23);
    acc[3] = acc[3] * corr + p * __high2float(v23);
    l = l * corr + p;
    m = mn;
  }
  __shared__ float sm[8], sl[8], sacc[8][D];
  if (lane == 0) {
    sm[warp] = m;
    sl[warp] = l;
  }
  for (int j = 0; j < 4; ++j) sacc[warp][lane * 4 + j] = acc[j];
  __syncthreads();
  if (threadIdx.x < D) {
    float M = -INFINITY;
    for (int w = 0; w < 8; ++w) M = fmaxf(M, sm[w]);
    float L = 0, o = 0;
    for (int w = 0; w < 8; ++w) {
      if (sm[w] == -INFINITY) continue;
      const float c = __expf(sm[w] - M);
      L += sl[w] * c;
      o += sacc[w][threadIdx.x] * c;
    }
    out[static_cast<i64>(bq) * D + threadIdx.x] = o / L;
  }
}

unsigned blocks(i64 n) { return static_cast<unsigned>((n + 255) / 256); }

template <class F>
double median_ms(F&& launch, int warmup, int repeats) {
  for (int i = 0; i < warmup; ++i) launch();
  KVSIM_CUDA_TRY(cudaDeviceSynchronize());
  cudaEvent_t a, b;
  KVSIM_CUDA_TRY(cudaEventCreate(&a));
  KVSIM_CUDA_TRY(cudaEventCreate(&b));
  std::vector<float> ms;
  for (int i = 0; i < repeats; ++i) {
    KVSIM_CUDA_TRY(cudaEventRecord(a));
    launch();
    KVSIM_CUDA_TRY(cudaEventRecord(b));
    KVSIM_CUDA_TRY(cudaEventSynchronize(b));
    float x = 0;
    KVSIM_CUDA_TRY(cudaEventElapsedTime(&x, a, b));
    ms.push_back(x);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

std::vector<BenchRow> bench_attention(int B, i64 N, int Hq, int Hkv, int D, int warmup, int repeats) {
  if (D != 128) throw std::runtime_error("bench_attention: the plain fp16 kernel is written for head dim 128");
  const int HB = B * Hkv;
  const std::size_t rows = static_cast<std::size_t>(N) * HB * D;
  DeviceBuffer<i32> k(rows), v(rows), q(static_cast<std::size_t>(B) * Hq * D);
  FillEntryKernel<<<blocks(static_cast<i64>(rows)), 256>>>(k.data(), static_cast<i64>(rows), 1);
  FillEntryKernel<<<blocks(static_cast<i64>(rows)), 256>>>(v.data(), static_cast<i64>(rows), 2);
  FillEntryKernel<<<blocks(static_cast<i64>(q.size())), 256>>>(q.data(), static_cast<i64>(q.size()), 3);
  DeviceBuffer<i64> q40(q.size());
  EntryToQueryKernel<<<blocks(static_cast<i64>(q.size())), 256>>>(q.data(), q40.data(), static_cast<i64>(q.size()));
  KVSIM_CUDA_LAUNCHED("fill");

  std::vector<BenchRow> rowsout;
  const i64 t = N - 1;
  DeviceBuffer<i64> items(3 * static_cast<std::size_t>(B)), woff(static_cast<std::size_t>(B));
  DeviceBuffer<i64> scratch(static_cast<std::size_t>(B) * Hq * N), out(static_cast<std::size_t>(B) * Hq * D),
      den(static_cast<std::size_t>(B) * Hq);
  for (int bits : {2, 4}) {
    ref::MethodConfig mc;
    mc.id = ref::MethodId::kivi;
    mc.bits = bits;
    const ref::KiviConfig c = ref::kivi_config(mc);
    const StepView sv = view_at(mc, t);
    std::vector<i64> it, wo;
    for (int b = 0; b < B; ++b) {
      it.insert(it.end(), {t, sv.kq, sv.vq});
      wo.push_back(static_cast<i64>(b) * Hq * N);
    }
    items.upload(it.data(), it.size());
    woff.upload(wo.data(), wo.size());
    const i64 ng = N / c.group;
    const int wpg = (c.group * bits + 31) / 32, wpt = (D * bits + 31) / 32;
    DeviceBuffer<i32> k_hat(rows), v_hat(rows);
    DeviceBuffer<ref::AsymParams> kp(static_cast<std::size_t>(HB) * ng * D), vp(static_cast<std::size_t>(HB) * N * (D / c.group));
    DeviceBuffer<u32> kc(static_cast<std::size_t>(HB) * ng * D * wpg), vc(static_cast<std::size_t>(HB) * N * wpt);
    kc.fill_bytes(0);
    vc.fill_bytes(0);
    KVSIM_CUDA_TRY(kivi_quantize_keys(c, k.data(), k_hat.data(), kp.data(), kc.data(), HB, D, ng));
    KVSIM_CUDA_TRY(kivi_quantize_values(c, v.data(), v_hat.data(), vp.data(), vc.data(), HB, D, N));
    KVSIM_CUDA_LAUNCHED("kivi quantize");
    KiviPackedView pv;
    pv.kparams = kp.data();
    pv.kcodes = kc.data();
    pv.vparams = vp.data();
    pv.vcodes = vc.data();
    pv.k_fp = k.data();
    pv.v_fp = v.data();
    pv.HB = HB;
    pv.Hkv = Hkv;
    pv.D = D;
    pv.G = c.group;
    pv.bits = bits;
    pv.wpg = wpg;
    pv.wpt = wpt;
    pv.T = N;
    pv.ng = ng;
    AttnArgs a;
    a.q = q40.data();
    a.q_by_step = false;
    a.Hq = Hq;
    a.group = Hq / Hkv;
    a.D = D;
    a.c_q40 = ref::logit_scale_q40(D);
    a.items = items.data();
    a.woff = woff.data();
    a.scratch = scratch.data();
    a.out = out.data();
    a.den = den.data();
    const double ms = median_ms([&] { KVSIM_CUDA_TRY(launch_decode_attention(a, pv, B)); }, warmup, repeats);
    KVSIM_CUDA_TRY(cudaGetLastError());
    // bytes the step must read: codes, fp16 scale+min per group, entry-format windows, queries
    const double per_head = static_cast<double>(sv.kq) * D * bits / 8 + static_cast<double>(sv.kq / c.group) * D * 4 +
                            static_cast<double>(N - sv.kq) * D * 4 + static_cast<double>(sv.vq) * D * bits / 8 +
                            static_cast<double>(sv.vq) * (D / c.group) * 4 + static_cast<double>(N - sv.vq) * D * 4;
    const double bytes = per_head * HB + static_cast<double>(B) * Hq * D * 8;
    rowsout.push_back({"kivi-b" + std::to_string(bits) + " exact", B, N, ms, bytes / 1e9, bytes / 1e9 / (ms / 1e3)});
  }
  {
    DeviceBuffer<__half> kh(rows), vh(rows), kt(rows), vt(rows), qh(q.size());
    DeviceBuffer<float> o(q.size());
    EntryToHalfKernel<<<blocks(static_cast<i64>(rows)), 256>>>(k.data(), kh.data(), static_cast<i64>(rows));
    EntryToHalfKernel<<<blocks(static_cast<i64>(rows)), 256>>>(v.data(), vh.data(), static_cast<i64>(rows));
    EntryToHalfKernel<<<blocks(static_cast<i64>(q.size())), 256>>>(q.data(), qh.data(), static_cast<i64>(q.size()));
    TransposeHalfKernel<<<blocks(static_cast<i64>(rows)), 256>>>(kh.data(), kt.data(), N, HB, D);
    TransposeHalfKernel<<<blocks(static_cast<i64>(rows)), 256>>>(vh.data(), vt.data(), N, HB, D);
    KVSIM_CUDA_LAUNCHED("fp16 setup");
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    const double ms = median_ms(
        [&] {
          PlainHalfAttentionKernel<<<B * Hq, 256>>>(qh.data(), kt.data(), vt.data(), o.data(), Hq, Hkv, N, scale);
          KVSIM_CUDA_TRY(cudaGetLastError());
        },
        warmup, repeats);
    const double bytes = 2.0 * static_cast<double>(rows) * 2 + static_cast<double>(B) * Hq * D * 2;
    rowsout.push_back({"fp16 plain", B, N, ms, bytes / 1e9, bytes / 1e9 / (ms / 1e3)});
  }
  return rowsout;
}

}  // namespace kvsim::cuda
