// Exact decode attention on the GPU: the twin of
// reference/attention/decode_attention.hpp (decode_attention_ref).
//
// One thread block per (item, query head); an item is one decode step of one
// sequence. Per block, kWarps warps take tokens s = warp, warp + kWarps, ...;
// in a warp, lane l holds channels [l*C, l*C + C) of the head (C = ceil(D/32),
// zero padded), so a token's key row is one coalesced read.
//   pass 1  z_s = logit_q32(dot_exact_q60(q, k_s)) (lane partial dots are
//           exact i128, summed by a butterfly), and the exact max m
//   pass 2  e_s = softmax_weight_q40(z_s, m); W = sum e_s; N_d = sum e_s v_sd,
//           every sum an exact i128 (or i64) integer sum
//   pass 3  o_d = output_q40(N_d, W)
// Every sum is exact and the max is exact, so the bits equal the serial
// reference's for any split (DESIGN.md, numeric contract 2); the kernel's
// split (kWarps, C) is a compile-time constant, never derived from the device.
//
// A View says where token s's key and value rows come from (the method's
// "which view of token s at step t"): RowView for the replay (dequantized
// twin below kq/vq, full precision above), packed-code views for the bench.
#pragma once
#include <cuda_runtime.h>

#include <climits>

#include "reference/attention/decode_attention.hpp"
#include "reference/attention/linear_correction.hpp"
#include "reference/common.hpp"

namespace kvsim::cuda {

inline constexpr int kAttnWarps = 8;
inline constexpr int kAttnThreads = kAttnWarps * 32;

/// Arguments of one launch: E items x Hq query heads.
// An additive linear-attention correction (reference/attention/
// linear_correction.hpp), for items with kq >= from: prefix state kq / R.
struct AttnLinear {
  int rank = 0;               // 0: none
  const i32* w = nullptr;     // [Hkv][r][D] Q.24
  const i64* b = nullptr;     // [Hkv][r]    Q.32 or ref::kLinearOff
  const i128* S = nullptr;    // [nb][Hkv][r][D] Q.44, state i = sums over tokens [0, i R)
  const i128* z = nullptr;    // [nb][Hkv][r]    Q.24
  i64 from = LLONG_MAX, R = 1;
  int Hkv = 0;
};

struct AttnArgs {
  const i64* q = nullptr;   // [*][Hq][D] query format (Q.40); row of (item e, head qh): q_index(e) * Hq * D + qh * D
  bool q_by_step = true;    // q_index(e) = t_e (replay: [T][Hq][D]) or e (bench: [E][Hq][D])
  int Hq = 0, group = 1, D = 0;  // group = Hq / Hkv (GQA ratio); KV head of qh = qh / group
  i64 c_q40 = 0;            // ref::logit_scale_q40(D)
  const i64* items = nullptr;  // [E][3]: t, kq, vq (n = t + 1 tokens)
  const i64* woff = nullptr;   // [E] offset of item e's block [Hq][n] in scratch
  i64* scratch = nullptr;      // logits, then softmax numerators e_s (Q.40)
  i64* out = nullptr;          // [E][Hq][D] Q.40
  i64* den = nullptr;          // [E][Hq] W, Q.40
  AttnLinear lin;              // optional correction
};

/// The replay's view: token s's key is K_hat for s < kq, else the full
/// precision key (values likewise with vq). Rows [T][Hkv][D]. A method whose
/// quantized keys change once (kvlinc's correction) gives k_dq_switched, seen
/// instead of k_dq in items with kq >= switch_kq. A method that protects
/// quantized tokens for a while (gq's heavy hitters) gives until [T][Hkv]:
/// token s is seen at full precision during the steps t < until[s][h].
struct RowView {
  const i32* k_fp = nullptr;
  const i32* k_dq = nullptr;
  const i32* k_dq_switched = nullptr;
  i64 switch_kq = LLONG_MAX;
  const i32* v_fp = nullptr;
  const i32* v_dq = nullptr;
  const i64* until = nullptr;
  int Hkv = 0, D = 0;
  // bound per block by begin()
  int h = 0;
  i64 t = 0, kq = 0, vq = 0;

  __device__ void begin(i64 /*e*/, int kv_head, const i64* item) {
    h = kv_head;
    t = item[0];
    kq = item[1];
    vq = item[2];
  }
  __device__ bool held(i64 s) const { return until != nullptr && t < until[s * Hkv + h]; }
  template <int C>
  __device__ void load_row(const i32* row, int d0, i32 (&dst)[C]) const {
    if constexpr (C % 4 == 0) {
      if ((D & 3) == 0 && d0 + C <= D) {
#pragma unroll
        for (int j = 0; j < C; j += 4) {
          const int4 x = *reinterpret_cast<const int4*>(row + d0 + j);
          dst[j] = x.x;
          dst[j + 1] = x.y;
          dst[j + 2] = x.z;
          dst[j + 3] = x.w;
        }
        return;
      }
    }
#pragma unroll
    for (int j = 0; j < C; ++j) dst[j] = d0 + j < D ? row[d0 + j] : 0;
  }
  template <int C>
  __device__ void load_k(i64 s, int d0, i32 (&dst)[C]) const {
    load_row<C>((s < kq && !held(s) ? (kq >= switch_kq ? k_dq_switched : k_dq) : k_fp) + (s * Hkv + h) * D, d0, dst);
  }
  template <int C>
  __device__ void load_v(i64 s, int d0, i32 (&dst)[C]) const {
    load_row<C>((s < vq && !held(s) ? v_dq : v_fp) + (s * Hkv + h) * D, d0, dst);
  }
};

namespace detail {
__device__ inline i128 shfl_xor_i128(i128 v, int mask) {
  const u128 u = static_cast<u128>(v);
  const unsigned long long lo = __shfl_xor_sync(0xffffffffu, static_cast<unsigned long long>(u), mask);
  const unsigned long long hi = __shfl_xor_sync(0xffffffffu, static_cast<unsigned long long>(u >> 64), mask);
  return static_cast<i128>((static_cast<u128>(hi) << 64) | lo);
}
}  // namespace detail

/// grid (E, Hq), block kAttnThreads. C: channels per lane, 32 * C >= D.
template <int C, class View>
__global__ void __launch_bounds__(kAttnThreads) DecodeAttentionKernel(AttnArgs a, View view) {
  static_assert(C >= 1 && C * 32 <= 256, "C * 32 must cover D <= kMaxHeadDim");
  __shared__ i128 red[kAttnWarps][32 * C];  // per-warp partial numerators N_d
  __shared__ i64 wred[kAttnWarps];          // per-warp max, then per-warp W
  __shared__ i64 gsh[1024];                 // linear correction: query weights g_j
  const i64 e = blockIdx.x;
  const int qh = static_cast<int>(blockIdx.y);
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int d0 = lane * C;
  const i64* item = a.items + 3 * e;
  const i64 n = item[0] + 1;
  view.begin(e, qh / a.group, item);

  const i64* qrow = a.q + ((a.q_by_step ? item[0] : e) * a.Hq + qh) * a.D;
  i64 qc[C];  // this lane's query channels, zero padded
#pragma unroll
  for (int j = 0; j < C; ++j) qc[j] = d0 + j < a.D ? qrow[d0 + j] : 0;
  i64* z = a.scratch + a.woff[e] + static_cast<i64>(qh) * n;  // [n]

  // pass 1: logits and the exact max
  i64 mloc = LLONG_MIN;
  for (i64 s = warp; s < n; s += kAttnWarps) {
    i32 kc[C];
    view.template load_k<C>(s, d0, kc);
    i128 dot = ref::dot_exact_q60(qc, kc, C);  // exact partial over this lane's channels
#pragma unroll
    for (int m = 16; m >= 1; m >>= 1) dot += detail::shfl_xor_i128(dot, m);
    const i64 zs = ref::logit_q32(dot, a.c_q40);
    if (lane == 0) z[s] = zs;
    mloc = zs > mloc ? zs : mloc;
  }
  if (lane == 0) wred[warp] = mloc;
  __syncthreads();
  i64 m = wred[0];
#pragma unroll
  for (int w = 1; w < kAttnWarps; ++w) m = wred[w] > m ? wred[w] : m;
  __syncthreads();  // wred is reused below

  // pass 2: weights, their sum, the numerators
  i128 acc[C];
#pragma unroll
  for (int j = 0; j < C; ++j) acc[j] = 0;
  i64 wsum = 0;
  for (i64 s = warp; s < n; s += kAttnWarps) {
    const i64 es = ref::softmax_weight_q40(z[s], m);
    __syncwarp();
    if (lane == 0) z[s] = es;  // the logit's slot now holds the weight
    wsum += es;
    i32 vc[C];
    view.template load_v<C>(s, d0, vc);
    // e_s <= 2^40 and |v| < 2^31: the product (< 2^71) needs i128, as in the reference
#pragma unroll
    for (int j = 0; j < C; ++j) acc[j] += static_cast<i128>(es) * vc[j];
  }
#pragma unroll
  for (int j = 0; j < C; ++j) red[warp][d0 + j] = acc[j];
  if (lane == 0) wred[warp] = wsum;
  __syncthreads();

  // pass 3: one rounding division per output element
  i64 W = 0;
#pragma unroll
  for (int w = 0; w < kAttnWarps; ++w) W += wred[w];
  const AttnLinear& L = a.lin;
  if (L.rank > 0 && item[1] >= L.from) {  // the correction: same per-term math as decode_attention_linear_ref
    const int kh = qh / a.group;
    const i64 st = item[1] / L.R;
    for (int j = static_cast<int>(threadIdx.x); j < L.rank; j += kAttnThreads)
      gsh[j] = ref::linear_query_weight_q40(L.w + (static_cast<i64>(kh) * L.rank + j) * a.D,
                                            L.b[static_cast<i64>(kh) * L.rank + j], qrow, m, a.D);
    __syncthreads();
    const i64 base = (st * L.Hkv + kh) * L.rank;
    i128 Wc = W;
    for (int j = 0; j < L.rank; ++j)
      if (gsh[j] != 0) Wc += ref::linear_den_term_q40(gsh[j], L.z[base + j]);
    for (int d = static_cast<int>(threadIdx.x); d < a.D; d += kAttnThreads) {
      i128 num = 0;
#pragma unroll
      for (int w = 0; w < kAttnWarps; ++w) num += red[w][d];
      for (int j = 0; j < L.rank; ++j)
        if (gsh[j] != 0) num += ref::linear_num_term_q60(gsh[j], L.S[(base + j) * a.D + d]);
      a.out[(e * a.Hq + qh) * a.D + d] = ref::output_q40(num, Wc);
    }
    if (threadIdx.x == 0) a.den[e * a.Hq + qh] = Wc > static_cast<i128>(LLONG_MAX) ? LLONG_MAX : static_cast<i64>(Wc);
    return;
  }
  for (int d = static_cast<int>(threadIdx.x); d < a.D; d += kAttnThreads) {
    i128 num = 0;
#pragma unroll
    for (int w = 0; w < kAttnWarps; ++w) num += red[w][d];
    a.out[(e * a.Hq + qh) * a.D + d] = ref::output_q40(num, W);
  }
  if (threadIdx.x == 0) a.den[e * a.Hq + qh] = W;
}

/// Launches DecodeAttentionKernel with the smallest C in {2, 3, 4, 8} that
/// covers D. Returns the launch error.
template <class View>
cudaError_t launch_decode_attention(const AttnArgs& a, const View& v, i64 E, cudaStream_t stream = 0) {
  if (E <= 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(E), static_cast<unsigned>(a.Hq));
  if (a.D <= 64)
    DecodeAttentionKernel<2, View><<<grid, kAttnThreads, 0, stream>>>(a, v);
  else if (a.D <= 96)
    DecodeAttentionKernel<3, View><<<grid, kAttnThreads, 0, stream>>>(a, v);
  else if (a.D <= 128)
    DecodeAttentionKernel<4, View><<<grid, kAttnThreads, 0, stream>>>(a, v);
  else
    DecodeAttentionKernel<8, View><<<grid, kAttnThreads, 0, stream>>>(a, v);
  return cudaGetLastError();
}

}  // namespace kvsim::cuda
