// KVarN tile quantization on the GPU (see kvarn.cuh). The per-row and
// per-line math is reference/quant/kvarn.hpp's (rotate_row; line_sums,
// std_from_sums, update_log, spread_of, best_column, quantize_row of
// quantize_tile; unrotate_row); a tile is one thread block that runs
// quantize_tile's steps with a thread (or a few) per line. Every sum is an
// exact integer sum and max/min are exact, so the bits do not depend on the
// work split. This file owns the grids, the shared memory and the
// temporaries only.
#include "cuda/common.cuh"
#include "cuda/quant/kvarn.cuh"

namespace kvsim::cuda {
namespace {

constexpr int kRowBlock = 128;
constexpr int kTileBlock = 256;  // threads per tile

// Rotated rows: y[kind][tq][h][D] = H x of token G + tq (kind 0: keys, 1: values).
__global__ void KvarnRotateKernel(const i32* __restrict__ k, const i32* __restrict__ v, i64* __restrict__ y, int Hkv,
                                  int D, int G, i64 nrows) {
  const i64 i = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x;  // (kind, tq, h)
  if (i >= 2 * nrows) return;
  const int kind = static_cast<int>(i / nrows);
  const i64 r = i % nrows;  // tq * Hkv + h
  const i32* x = (kind == 0 ? k : v) + (static_cast<i64>(G) * Hkv + r) * D;
  ref::kvarn::rotate_row(x, D, y + i * D);
}

// One thread block per tile. Every line (row or column) of a tile has at most
// kMaxHeadDim elements (kvarn_check: tile <= kMaxHeadDim, D <= kMaxHeadDim), so
// a thread per line always exists and the per-line state fits in shared memory.
static_assert(kMaxHeadDim <= kTileBlock, "a KVarN tile needs a thread per row and per column");

// The per-line state of one tile (as ref::kvarn::sinkhorn's scratch, plus the
// partial sums and the max/min reduction), 28 KiB.
struct TileShared {
  i64 a[kMaxHeadDim], b[kMaxHeadDim];            // column, row log scales, Q.32
  i64 f[kMaxHeadDim], g[kMaxHeadDim];            // e^-(a_j + c), e^-b_i, Q.50
  i64 cstd[kMaxHeadDim], rstd[kMaxHeadDim];      // column, row stds, Q.32
  i64 best_a[kMaxHeadDim], best_b[kMaxHeadDim];  // the state kept
  i64 u[kMaxHeadDim];                            // fp16 e^a_j in Q.24 (quantization)
  i64 S1[kTileBlock];                            // partial sums of (line, part)
  i128 S2[kTileBlock];
  i64 mx[kTileBlock], mn[kTileBlock];            // max/min reduction
};

// ref::kvarn::axis_stds with the block: line o's elements split into `split`
// contiguous parts (thread p * n_out + o sums part p, ref::kvarn::line_sums),
// then a thread per line adds the parts (exact integer sums: the same S1, S2
// as the reference's one loop) and takes the std. Ends synchronised.
__device__ void block_axis_stds(const i64* y, ref::kvarn::Tile t, const i64* f, const i64* g, bool rows, i64* out,
                                TileShared& s) {
  const int n_out = rows ? t.R : t.C, n_in = rows ? t.C : t.R;
  const int split = kTileBlock / n_out;  // >= 1
  const int tid = static_cast<int>(threadIdx.x);
  if (tid < n_out * split) {
    const int o = tid % n_out, p = tid / n_out;  // neighbouring threads: neighbouring lines
    i64 S1 = 0;
    i128 S2 = 0;
    ref::kvarn::line_sums(y, t, f, g, rows, o, n_in * p / split, n_in * (p + 1) / split, S1, S2);
    s.S1[tid] = S1;
    s.S2[tid] = S2;
  }
  __syncthreads();
  if (tid < n_out) {
    i64 S1 = 0;
    i128 S2 = 0;
    for (int p = 0; p < split; ++p) {
      S1 += s.S1[p * n_out + tid];
      S2 += s.S2[p * n_out + tid];
    }
    out[tid] = ref::kvarn::std_from_sums(S1, S2, n_in);
  }
  __syncthreads();
}

// ref::kvarn::spread with the block: exact max/min tree reduction, then
// spread_of; every thread returns the same value. Ends synchronised.
__device__ i128 block_spread(const i64* std, int n, TileShared& s) {
  const int tid = static_cast<int>(threadIdx.x);
  s.mx[tid] = s.mn[tid] = std[tid < n ? tid : 0];
  __syncthreads();
  for (int w = kTileBlock / 2; w > 0; w >>= 1) {
    if (tid < w) {
      s.mx[tid] = s.mx[tid + w] > s.mx[tid] ? s.mx[tid + w] : s.mx[tid];
      s.mn[tid] = s.mn[tid + w] < s.mn[tid] ? s.mn[tid + w] : s.mn[tid];
    }
    __syncthreads();
  }
  const i128 r = ref::kvarn::spread_of(s.mx[0], s.mn[0]);
  __syncthreads();
  return r;
}

// ref::kvarn::quantize_tile of tile (kind, h, kk) = blockIdx.x, step for step:
// the Sinkhorn of ref::kvarn::sinkhorn (a thread per line for the log updates
// and the stds, the best-state copy by the thread owning the line), then
// ref::kvarn::best_column per column and ref::kvarn::quantize_row per row.
__global__ void __launch_bounds__(kTileBlock)
    KvarnTileKernel(ref::KvarnConfig c, const i64* __restrict__ y, i64* __restrict__ yhat, KvarnDeviceOut o, int Hkv,
                    int D, i64 nq, i64 nrows) {
  __shared__ TileShared s;
  const i64 i = blockIdx.x;  // (kind, h, kk)
  const int kind = static_cast<int>(i / (Hkv * nq));
  const i64 hk = i % (Hkv * nq);  // h * nq + kk
  const int h = static_cast<int>(hk / nq);
  const i64 kk = hk % nq;
  const int G = c.tile;
  const i64 stride = static_cast<i64>(Hkv) * D;  // between tokens of one head
  const i64 base = kind * nrows * D + (kk * G * Hkv + h) * static_cast<i64>(D);
  const bool key = kind == 0;
  const ref::kvarn::Tile t = key ? ref::kvarn::key_tile(G, D, stride) : ref::kvarn::value_tile(G, D, stride);
  const int R = t.R, C = t.C;
  const int bits = key ? c.kbits : c.vbits;
  const int wpr = ref::kvarn::words_per_row(t.C, bits);
  ref::kvarn::TileOut out;
  out.params = (key ? o.kparams : o.vparams) + hk * t.R;
  out.col = (key ? o.kcol : o.vcol) + hk * t.C;
  out.codes = (key ? o.kcodes : o.vcodes) + hk * t.R * wpr;
  out.wpr = wpr;
  out.yhat = yhat + base;
  const i64* yt = y + base;
  const int tid = static_cast<int>(threadIdx.x);
  const i64 cc = ref::kvarn::half_ln_dim(D);

  // Sinkhorn (ref::kvarn::sinkhorn): start at a = 0, b = 0
  if (tid < C) {
    s.a[tid] = 0;
    s.f[tid] = ref::kvarn::exp_q32_to(-cc, ref::kvarn::kFactorFrac);
  }
  if (tid < R) {
    s.b[tid] = 0;
    s.g[tid] = ref::kvarn::exp_q32_to(0, ref::kvarn::kFactorFrac);
  }
  __syncthreads();
  block_axis_stds(yt, t, s.f, s.g, false, s.cstd, s);
  block_axis_stds(yt, t, s.f, s.g, true, s.rstd, s);
  i128 best = block_spread(s.cstd, C, s) + block_spread(s.rstd, R, s);
  if (tid < C) s.best_a[tid] = s.a[tid];
  if (tid < R) s.best_b[tid] = s.b[tid];
  for (int it = 0; it < c.iters; ++it) {
    if (tid < C) s.f[tid] = ref::kvarn::update_log(s.a[tid], s.cstd[tid], cc);
    __syncthreads();
    block_axis_stds(yt, t, s.f, s.g, true, s.rstd, s);
    if (tid < R) s.g[tid] = ref::kvarn::update_log(s.b[tid], s.rstd[tid], 0);
    __syncthreads();
    block_axis_stds(yt, t, s.f, s.g, false, s.cstd, s);
    block_axis_stds(yt, t, s.f, s.g, true, s.rstd, s);
    const i128 imb = block_spread(s.cstd, C, s) + block_spread(s.rstd, R, s);  // the same in every thread
    if (imb <= best) {  // ties: the later state, as the reference
      best = imb;
      if (tid < C) s.best_a[tid] = s.a[tid];  // a[tid], b[tid] are written by this thread only
      if (tid < R) s.best_b[tid] = s.b[tid];
    }
  }
  __syncthreads();
  // quantization at the best state (ref::kvarn::quantize_tile)
  if (tid < C) s.f[tid] = ref::kvarn::best_column(s.best_a[tid], cc, out.col[tid], s.u[tid]);
  __syncthreads();
  if (tid < R) ref::kvarn::quantize_row(yt, t, tid, s.f, s.u, s.best_b[tid], bits, out);
}

// Views: the dequantized rotated rows back to the entry format.
__global__ void KvarnUnrotateKernel(i64* __restrict__ yhat, i32* __restrict__ k_hat, i32* __restrict__ v_hat, int Hkv,
                                    int D, int G, i64 nrows) {
  const i64 i = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x;  // (kind, tq, h)
  if (i >= 2 * nrows) return;
  const int kind = static_cast<int>(i / nrows);
  const i64 r = i % nrows;
  i32* out = (kind == 0 ? k_hat : v_hat) + (static_cast<i64>(G) * Hkv + r) * D;
  ref::kvarn::unrotate_row(yhat + i * D, D, out);
}

unsigned blocks_for(i64 n, int block) { return static_cast<unsigned>((n + block - 1) / block); }

}  // namespace

cudaError_t kvarn_quantize(const ref::KvarnConfig& c, const i32* k, const i32* v, const KvarnDeviceOut& o, int Hkv,
                           int D, i64 T, cudaStream_t stream) {
  const int G = c.tile;
  const i64 nq = T / G - 1;
  if (nq <= 0 || Hkv <= 0) return cudaSuccess;
  if (G < 2 || G > kMaxHeadDim || D < 2 || D > kMaxHeadDim) return cudaErrorInvalidValue;  // kvarn_check
  const i64 nrows = nq * G * Hkv;  // token rows of the quantized tiles, per kind
  DeviceBuffer<i64> y(static_cast<std::size_t>(2 * nrows) * D), yhat(y.size());
  KvarnRotateKernel<<<blocks_for(2 * nrows, kRowBlock), kRowBlock, 0, stream>>>(k, v, y.data(), Hkv, D, G, nrows);
  if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  KvarnTileKernel<<<static_cast<unsigned>(2 * Hkv * nq), kTileBlock, 0, stream>>>(c, y.data(), yhat.data(), o, Hkv, D,
                                                                                 nq, nrows);
  if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  KvarnUnrotateKernel<<<blocks_for(2 * nrows, kRowBlock), kRowBlock, 0, stream>>>(yhat.data(), o.k_hat, o.v_hat, Hkv,
                                                                                  D, G, nrows);
  if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  // the temporaries are freed on return: finish with them first
  return cudaStreamSynchronize(stream);
}

}  // namespace kvsim::cuda
