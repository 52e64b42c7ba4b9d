// KVarN (Muller et al. 2026, "Variance-Normalized KV-Cache Quantization
// Mitigates Error Accumulation in Reasoning Tasks"; huawei-csl/KVarN, the
// Ascend kernel ascend_kernel/kvarn_store_tile_k: kvarn_store_tile_k_kernel_vec.h,
// compute_{col,row}_std_vf.h, update_log_{col,row}_vf.h, update_best_vf.h,
// quantize_pack_{2,4}bit_vf.h, cast_log_to_half_vf.h).
//
// The algorithm, as the original does it:
//   Rotation  keys (post-RoPE) and values are rotated along channels by the
//             orthonormal Hadamard matrix H/sqrt(D) (plain Sylvester); the
//             query is rotated the same way and the attention output rotated
//             back.
//   Tiles     G = 128 tokens (64 in some presets), per KV head. A K tile is
//             the matrix M[D channels][G tokens], a V tile M[G tokens][D
//             channels]: rows are the quantization axis (per channel for K,
//             per token for V), columns the other axis.
//   Sinkhorn  log-domain dual scaling: column log scales a = 0, row log
//             scales b = 0; element (i, j) is balanced as M_ij e^-(a_j + b_i).
//             std = unbiased standard deviation (mean over n, sum of squares
//             over n - 1). Start: column and row stds of M, best := (a, b).
//             Each of `iters` iterations (upstream default 16 in the Ascend
//             API, 8 in the paper's setting, which is ours):
//               a_j <- clip(a_j + ln(clamp(colstd_j, 1e-3, 1e3)), -0.3, 10)
//               row stds at (a, b);  b_i <- clip(b_i + ln(clamp(rowstd_i, ...)), -0.3, 10)
//               column and row stds at (a, b); imbalance =
//                 max(colstd)/max(min(colstd), 1e-8) + max(rowstd)/max(min(rowstd), 1e-8)
//                 (stds not clamped); if imbalance <= best: best := (a, b)
//             (the clip applies to the accumulated log scale; no early exit).
//             Columns first: for K that is tokens first.
//   Quantizer per row of the balanced tile at the best (a, b): lo, hi = min,
//             max over the whole row; q = RINT(clamp((x - lo) L / (hi - lo), 0, L)),
//             L = 2^b - 1.
//   Stored    per tile: codes; per row an fp16 scale (hi - lo)/L * e^(b_i) and an
//             fp16 zero lo * e^(b_i) (the row's Sinkhorn scale folded in); per
//             column an fp16 scale e^(a_j). Dequant:
//               K^[d,t] = (q s_colK[d] + zpK[d]) s_rowK[t]   (upstream's names)
//               V^[t,d] = (q s_rowV[t] + zpV[t]) s_colV[d]
//             i.e. row-folded scale/zero times the column scale.
//   Streaming the first tile (attention sink) stays full precision for the
//             whole decode; the incomplete tail stays full precision; a tile
//             completed at step s is used quantized from step s + 1 (end_step
//             flushes it); prefill flushes every complete tile except the sink.
//
// The model (fixed point; decided with the lead):
//   * Quantization happens in the rotated domain. The view keys()/values() is
//     the dequantized tile rotated back to the original domain, entry format:
//       x^ = RNE(H^T y^ / sqrt(D))   (one rounding per element, kvarn::div_sqrt_rne)
//     with y^ the dequantized tile in orthonormal units. Attention over this
//     view is algebraically identical to "rotate the query, attend in the
//     rotated domain, rotate the output back" (H/sqrt(D) is orthogonal and
//     attention is linear in V and uses only inner products with K), so the
//     GPU's one-pass exact attention is unchanged. The extra rounding is
//     <= 2^-21 per element (the final RNE to Q11.20), plus < 2^-33 from y^
//     held in Q.36 before the rotation.
//   * The rotation itself is exact: y = H x in integers (Q.20, i64). The
//     1/sqrt(D) is never rounded per element: the Sinkhorn works in
//     orthonormal units by folding c = ln sqrt(D) into the column factor
//     (element = y e^-(a_j + c) e^-b_i), so every scale-dependent constant
//     (std clamps 1e-3..1e3, log clip -0.3..10, the 1e-8 floor) is the
//     original's; the stored fp16 values are exactly the original's
//     quantities (orthonormal units).
//   * Fixed-point formats: log scales Q.32 (ln_q32 of the clamped std); the
//     factors e^-(a_j + c), e^-b_i Q.50 (rounded once each, from the Q.32
//     log); balanced elements Q.32, computed as RNE(RNE(y f_j) g_i) (two
//     roundings: the original rounds e^-(a+b) and the product in fp32);
//     stds exact from integer sums: var = (n S2 - S1^2)/(n(n-1)) (i128, any
//     order gives the same bits), rounded once to Q.64, std = RNE sqrt in
//     Q.32; imbalance ratios Q.32 (i128). Codes: RNE of the exact rational
//     (x - lo) L / (hi - lo) (the original: RINT of an fp32 quotient); hi == lo
//     gives codes 0 (the original's 1e-10 floor gives the same). Stored fp16:
//     each rounded once from its exact fixed-point product (the original rounds
//     the fp32 product). Dequant: (q s + z) u exactly from the fp16 values, then
//     one RNE to Q.36.
//   * The original computes the mean and std in fp32 with a fixed 1/128
//     (and 1/127) and e^-(a+b) per element; our stds differ from its by the
//     float rounding only; a code differs only where that moves a value
//     across a rounding boundary. Measured on the default synthetic trace
//     (kvsim trace gen; layer 0, both KV heads, tiles 1..7, K and V, 2 and 4
//     bits): 917504 of 917504 codes equal those of a float64 model of the
//     algorithm above (same axes, clamps, clip, selection, RINT).
//   * Upstream quantize_pack_*bit_vf reads the row log scale of row 0 for
//     every row (the call passes ub_best_log_row without the row offset),
//     which looks like a slip of the generated code; we fold each row's own
//     scale, as the paper and the d256 kernel's dequant formula state.
//   * Codes are packed as everywhere in kvsim (asym.hpp: 32/b per u32, LSB
//     first), along columns within a row (K: along tokens per channel; V:
//     along channels per token); the Ascend kernel's byte layout differs.
#pragma once
#include <string>
#include <vector>

#include "reference/common.hpp"
#include "reference/fixed/fixed.hpp"
#include "reference/quant/asym.hpp"
#include "reference/quant/cache.hpp"

namespace kvsim::ref {

struct KvarnConfig {
  int kbits = 2;   // key code bits (2 or 4)
  int vbits = 2;   // value code bits (2 or 4)
  int tile = 128;  // G, tokens per tile
  int iters = 8;   // Sinkhorn iterations
};

// Empty when the configuration is usable with this head dim, else the reason.
inline std::string kvarn_check(const KvarnConfig& c, int head_dim) {
  if (c.kbits != 2 && c.kbits != 4) return "kvarn: kbits must be 2 or 4 (got " + std::to_string(c.kbits) + ")";
  if (c.vbits != 2 && c.vbits != 4) return "kvarn: vbits must be 2 or 4 (got " + std::to_string(c.vbits) + ")";
  if (c.tile < 2 || c.tile > kMaxHeadDim)
    return "kvarn: tile must be in [2, " + std::to_string(kMaxHeadDim) + "] tokens (got " + std::to_string(c.tile) +
           "; upstream uses 64 or 128)";
  if (c.iters < 0 || c.iters > 64) return "kvarn: iters must be in [0, 64] (got " + std::to_string(c.iters) + ")";
  if (head_dim < 2 || head_dim > kMaxHeadDim || !fx::hadamard_supported(head_dim))
    return "kvarn: head dim " + std::to_string(head_dim) + " has no Hadamard construction (fx::hadamard_supported)";
  return {};
}

namespace kvarn {

inline constexpr int kLogFrac = 32;     // log scales, natural log, Q.32
inline constexpr int kFactorFrac = 50;  // e^-(a + c), e^-b, Q.50
inline constexpr int kMidFrac = 40;     // y * e^-(a + c), Q.40
inline constexpr int kBalFrac = 32;     // balanced elements, orthonormal units, Q.32
inline constexpr int kHatFrac = 36;     // dequantized rotated tile y^, Q.36
inline constexpr int kScaleExpFrac = 40;  // e^b, e^a before fp16 rounding, Q.40
// The original's constants (orthonormal units), each rounded once (RNE) to Q.32.
inline constexpr i64 kStdMin = 4294967;                    // 1e-3
inline constexpr i64 kStdMax = i64{1000} << 32;            // 1e3
inline constexpr i64 kLogMin = -1288490189;                // -0.3
inline constexpr i64 kLogMax = i64{10} << 32;              // 10
inline constexpr i64 kImbFloor = 43;                       // 1e-8

// e^(x / 2^32) in Q.frac, RNE of fx's internal value (error as fx::exp_q32:
// <= 0.5 + 2^-30 LSB for x <= 0; x in [-32, 20] and the result < 2^63).
KVSIM_HD inline i64 exp_q32_to(i64 x, int frac) {
  KVSIM_CHECK(x >= -(i64{32} << 32) && x <= (i64{20} << 32), "kvarn: exp argument out of range");
  return static_cast<i64>(fx::detail::exp_scaled(x, frac));
}

// c = ln sqrt(D) in Q.32 (the orthonormal unit of H x).
KVSIM_HD inline i64 half_ln_dim(int D) { return fx::div_rne(fx::ln_q32(static_cast<u64>(D), 0), i64{2}); }

// The tile M[R][C] over y: element (i, j) at y[i * rs + j * cs].
struct Tile {
  int R, C;
  i64 rs, cs;
};

// Balanced element at column factor f (Q.50) and row factor g (Q.50): Q.32.
// |y| <= D 2^31 (Q.20), i.e. |y| / sqrt(D) <= sqrt(D) 2^11 <= 2^15 in orthonormal
// units; f <= e^0.3 2^50 / sqrt(D), g <= e^0.3 2^50: y f < 2^86 (i128), the
// Q.40 middle |t| < 2^55.5 (i64), t g < 2^106, the result |e| < 2^48.
KVSIM_HD inline i64 balanced(i64 y, i64 f, i64 g) {
  const i64 t = static_cast<i64>(fx::shift_right_rne(static_cast<i128>(y) * f, kEntryFrac + kFactorFrac - kMidFrac));
  const i128 e = fx::shift_right_rne(static_cast<i128>(t) * g, kMidFrac + kFactorFrac - kBalFrac);
  KVSIM_CHECK(e > -(static_cast<i128>(1) << 62) && e < (static_cast<i128>(1) << 62), "kvarn: balanced element overflow");
  return static_cast<i64>(e);
}

// Unbiased std (Q.32) of n >= 2 values with exact sums S1 = sum e, S2 = sum e^2
// (|e| < 2^49: S1 < 2^57, S2 < 2^106, n S2 and S1^2 < 2^114).
KVSIM_HD inline i64 std_from_sums(i64 S1, i128 S2, int n) {
  const i128 num = static_cast<i128>(n) * S2 - static_cast<i128>(S1) * S1;  // >= 0 (Cauchy-Schwarz)
  KVSIM_CHECK(num >= 0, "kvarn: negative variance");
  const i128 var = fx::div_rne(num, static_cast<i128>(n) * (n - 1));  // Q.64
  return static_cast<i64>(fx::sqrt_rne(static_cast<u128>(var)));       // Q.32
}

// The exact sums S1 += e, S2 += e^2 of the balanced elements of one line of
// the tile, over the other axis' indices [k0, k1): line o is column o (rows =
// false: k runs over the R rows) or row o (rows = true: k runs over the C
// columns). Integer sums: any split of [0, n) into ranges, added in any
// order, gives the same S1, S2 (the GPU splits a line over threads).
KVSIM_HD inline void line_sums(const i64* y, Tile t, const i64* f, const i64* g, bool rows, int o, int k0, int k1,
                               i64& S1, i128& S2) {
  for (int k = k0; k < k1; ++k) {
    const int i = rows ? o : k, j = rows ? k : o;
    const i64 e = balanced(y[i * t.rs + j * t.cs], f[j], g[i]);
    S1 += e;
    S2 += static_cast<i128>(e) * e;
  }
}

// Std of each column (rows = false: out[C], over the R elements of a column)
// or of each row (rows = true: out[R]) of the balanced tile at factors f[C], g[R].
KVSIM_HD inline void axis_stds(const i64* y, Tile t, const i64* f, const i64* g, bool rows, i64* out) {
  const int n_out = rows ? t.R : t.C, n_in = rows ? t.C : t.R;
  for (int o = 0; o < n_out; ++o) {
    i64 S1 = 0;
    i128 S2 = 0;
    line_sums(y, t, f, g, rows, o, 0, n_in, S1, S2);
    out[o] = std_from_sums(S1, S2, n_in);
  }
}

// One log scale: log <- clip(log + ln(clamp(std, 1e-3, 1e3)), -0.3, 10); returns
// the factor e^-(log + off) in Q.50.
KVSIM_HD inline i64 update_log(i64& log, i64 std, i64 off) {
  const i64 s = fx::clamp(std, kStdMin, kStdMax);
  log = fx::clamp(log + fx::ln_q32(static_cast<u64>(s), kBalFrac), kLogMin, kLogMax);
  return exp_q32_to(-(log + off), kFactorFrac);
}

// update_log of n log scales: logs[k], factors fac[k].
KVSIM_HD inline void update_logs(i64* logs, const i64* std, int n, i64 off, i64* fac) {
  for (int k = 0; k < n; ++k) fac[k] = update_log(logs[k], std[k], off);
}

// max/max(min, 1e-8) of stds whose exact max and min are mx, mn: Q.32 (i128:
// max < 2^57 shifted by 32).
KVSIM_HD inline i128 spread_of(i64 mx, i64 mn) {
  if (mn < kImbFloor) mn = kImbFloor;
  return fx::div_rne(static_cast<i128>(mx) << 32, static_cast<i128>(mn));
}

// spread_of the max and min of n stds.
KVSIM_HD inline i128 spread(const i64* std, int n) {
  i64 mx = std[0], mn = std[0];
  for (int k = 1; k < n; ++k) {
    mx = std[k] > mx ? std[k] : mx;
    mn = std[k] < mn ? std[k] : mn;
  }
  return spread_of(mx, mn);
}

// The outputs of one tile. Rows i: params[i] (fp16 scale and zero, the row's
// Sinkhorn scale folded in), codes[i * wpr ...] (row i's C codes packed, wpr
// words, zeroed by the caller). Columns j: col[j] (fp16 e^a_j). yhat: the
// dequantized tile, Q.36 orthonormal units, same layout as y.
struct TileOut {
  AsymParams* params;  // [R]
  u16* col;            // [C]
  u32* codes;          // [R][wpr]
  int wpr;
  i64* yhat;           // element (i, j) at yhat[i * rs + j * cs]
};

// Words per row of packed codes.
KVSIM_HD inline int words_per_row(int C, int bits) { return (C * bits + 31) / 32; }

// fp16 of v * 2^-frac, v an i128 that may exceed i64: shifted down with a
// sticky bit, and to at most 62 fraction bits (round to odd keeps >= 36 bits
// below fp16's finest quantum 2^-24, so the final RNE is correct).
KVSIM_HD inline u16 fp16_from_i128_rne(i128 v, int frac) {
  const bool neg = v < 0;
  u128 a = neg ? static_cast<u128>(-v) : static_cast<u128>(v);
  while (a >= (static_cast<u128>(1) << 62) || frac > 62) {
    if (frac == 0) return neg ? u16{0xFBFF} : u16{0x7BFF};  // >= 2^62: saturates
    a = (a >> 1) | (a & 1);
    --frac;
  }
  const i64 s = static_cast<i64>(a);
  return fx::fp16_from_fixed_rne(neg ? -s : s, frac);
}

// The scratch of one tile: 4 (R + C) i64.
KVSIM_HD inline int scratch_size(Tile t) { return 4 * (t.R + t.C); }

// The imbalance of the start state and of the state kept.
struct SinkhornResult {
  i128 start, best;  // Q.32
};

// The log-domain Sinkhorn of one tile. Leaves the best column log scales in
// scratch[0, C) and the best row log scales in scratch[C, C + R) (Q.32,
// orthonormal units).
//   y        the rotated tile, H x (unnormalised), Q.20
//   D        head dim (the orthonormal unit sqrt(D))
//   scratch  scratch_size(t) i64
KVSIM_HD inline SinkhornResult sinkhorn(const i64* y, Tile t, int D, int iters, i64* scratch) {
  const int R = t.R, C = t.C;
  i64* best_a = scratch;     // [C]
  i64* best_b = best_a + C;  // [R]
  i64* a = best_b + R;       // [C] column log scales
  i64* b = a + C;            // [R] row log scales
  i64* f = b + R;            // [C] e^-(a_j + c), Q.50
  i64* g = f + C;            // [R] e^-b_i
  i64* cstd = g + R;         // [C]
  i64* rstd = cstd + C;      // [R]
  const i64 c = half_ln_dim(D);
  const i64 f0 = exp_q32_to(-c, kFactorFrac), g0 = exp_q32_to(0, kFactorFrac);
  for (int j = 0; j < C; ++j) {
    a[j] = 0;
    f[j] = f0;
  }
  for (int i = 0; i < R; ++i) {
    b[i] = 0;
    g[i] = g0;
  }
  axis_stds(y, t, f, g, false, cstd);
  axis_stds(y, t, f, g, true, rstd);
  SinkhornResult r;
  r.start = r.best = spread(cstd, C) + spread(rstd, R);
  for (int j = 0; j < C; ++j) best_a[j] = a[j];
  for (int i = 0; i < R; ++i) best_b[i] = b[i];
  for (int it = 0; it < iters; ++it) {
    update_logs(a, cstd, C, c, f);
    axis_stds(y, t, f, g, true, rstd);
    update_logs(b, rstd, R, 0, g);
    axis_stds(y, t, f, g, false, cstd);
    axis_stds(y, t, f, g, true, rstd);
    const i128 imb = spread(cstd, C) + spread(rstd, R);
    if (imb <= r.best) {  // ties: the later state, as upstream's LE compare
      r.best = imb;
      for (int j = 0; j < C; ++j) best_a[j] = a[j];
      for (int i = 0; i < R; ++i) best_b[i] = b[i];
    }
  }
  return r;
}

// Column j at the best state: its factor e^-(a_j + c) (Q.50, returned), its
// stored fp16 scale e^a_j (col) and that scale exactly in Q.24 (u).
KVSIM_HD inline i64 best_column(i64 best_a, i64 c, u16& col, i64& u) {
  const i64 ea = exp_q32_to(best_a, kScaleExpFrac);
  col = fx::fp16_from_fixed_rne(ea, kScaleExpFrac);
  u = fx::fixed_from_fp16(col, 24);  // exact
  return exp_q32_to(-(best_a + c), kFactorFrac);
}

// Row i at the best state (row log scale best_b, column factors f[C] and
// fp16 column scales u[C] in Q.24 from best_column): min/max over the row,
// the fp16 scale and zero with e^b folded in (o.params[i]), the packed codes
// (o.codes row i, zeroed by the caller) and the dequantized row (o.yhat).
// Touches only row i's outputs.
KVSIM_HD inline void quantize_row(const i64* y, Tile t, int i, const i64* f, const i64* u, i64 best_b, int bits,
                                  TileOut o) {
  const int C = t.C;
  const i64 L = (i64{1} << bits) - 1;
  const i64 gi = exp_q32_to(-best_b, kFactorFrac);
  i64 lo = 0, hi = 0;
  for (int j = 0; j < C; ++j) {
    const i64 e = balanced(y[i * t.rs + j * t.cs], f[j], gi);
    lo = (j == 0 || e < lo) ? e : lo;
    hi = (j == 0 || e > hi) ? e : hi;
  }
  // stored: (hi - lo)/L e^b and lo e^b, fp16, each rounded once (sticky division)
  const i64 eb = exp_q32_to(best_b, kScaleExpFrac);  // < e^10 2^40 < 2^55
  const i128 rs = static_cast<i128>(hi - lo) * eb;   // Q.72, < 2^50 2^55
  i128 qs = rs / L;
  if (qs * L != rs) qs |= 1;
  AsymParams p;
  p.scale = fp16_from_i128_rne(qs, kBalFrac + kScaleExpFrac);
  p.zero = fp16_from_i128_rne(static_cast<i128>(lo) * eb, kBalFrac + kScaleExpFrac);
  o.params[i] = p;
  const i64 s24 = fx::fixed_from_fp16(p.scale, 24), z24 = fx::fixed_from_fp16(p.zero, 24);
  u32* w = o.codes + static_cast<i64>(i) * o.wpr;
  for (int j = 0; j < C; ++j) {
    const i64 at = i * t.rs + j * t.cs;
    const i64 e = balanced(y[at], f[j], gi);
    const i64 q = hi == lo ? 0 : fx::clamp(fx::div_rne((e - lo) * L, hi - lo), 0, L);
    pack_code(w, j, static_cast<u8>(q), bits);
    // (q s + z) u: Q.24 * Q.24 = Q.48, |.| < 2^45 2^40; one RNE to Q.36
    const i128 v = static_cast<i128>(q * s24 + z24) * u[j];
    const i128 yh = fx::shift_right_rne(v, 48 - kHatFrac);
    // |y^| ~ |y| / sqrt(D) <= 2^15 up to fp16 rounding: < 2^52 in Q.36, so H^T y^ < 2^60
    KVSIM_CHECK(yh > -(static_cast<i128>(1) << 52) && yh < (static_cast<i128>(1) << 52),
                "kvarn: dequantized value out of range");
    o.yhat[at] = static_cast<i64>(yh);
  }
}

// Sinkhorn balancing, per-row quantization and dequantization of one tile
// (the whole per-tile algorithm; the CPU calls exactly this, the GPU runs the
// same steps with a thread block per tile: cuda/quant/kvarn.cu). Arguments
// as sinkhorn().
KVSIM_HD inline SinkhornResult quantize_tile(const i64* y, Tile t, int D, int bits, int iters, i64* scratch,
                                             TileOut o) {
  const int R = t.R, C = t.C;
  const SinkhornResult res = sinkhorn(y, t, D, iters, scratch);
  const i64* best_a = scratch;
  const i64* best_b = best_a + C;
  i64* f = scratch + C + R;  // [C] reused: factors at the best state
  i64* u = f + C;            // [C] u_j = fp16 e^a_j, Q.24
  const i64 c = half_ln_dim(D);
  for (int j = 0; j < C; ++j) f[j] = best_column(best_a[j], c, o.col[j], u[j]);
  for (int i = 0; i < R; ++i) quantize_row(y, t, i, f, u, best_b[i], bits, o);
  return res;
}

// RNE(w / sqrt(M)) for M >= 1, |w| <= 2^61, exactly (ties, possible only when M
// is a perfect square, to even): n = floor(|w|/sqrt(M)) = isqrt(floor(w^2/M)),
// then n + 1 iff 4 w^2 > M (2n+1)^2 (M (2n+1)^2 <= (2|w| + sqrt(M))^2 < 2^124).
KVSIM_HD inline i64 div_sqrt_rne(i64 w, u64 M) {
  KVSIM_CHECK(M >= 1, "div_sqrt_rne: M == 0");
  const u128 a = static_cast<u128>(w < 0 ? -static_cast<i128>(w) : static_cast<i128>(w));
  KVSIM_CHECK(a <= (static_cast<u128>(1) << 61), "div_sqrt_rne: |w| > 2^61");
  const u128 a2 = a * a;
  u64 n = fx::isqrt_floor(a2 / M);
  const u128 m = 2 * static_cast<u128>(n) + 1;
  const u128 lhs = 4 * a2, rhs = static_cast<u128>(M) * m * m;
  if (lhs > rhs || (lhs == rhs && (n & 1))) ++n;
  return w < 0 ? -static_cast<i64>(n) : static_cast<i64>(n);
}

// One token's dequantized rotated row y^[D] (Q.36, orthonormal units;
// overwritten) back to the entry format: RNE(H^T y^ / sqrt(D)) into out[D].
// |y^| < 2^52 (asserted at dequant), so |H^T y^| < 2^60.
KVSIM_HD inline void unrotate_row(i64* yhat, int D, i32* out) {
  fx::hadamard_transpose_inplace(yhat, D);
  const u64 M = static_cast<u64>(D) << (2 * (kHatFrac - kEntryFrac));  // sqrt(M) = sqrt(D) 2^16
  for (int d = 0; d < D; ++d) {
    const i64 x = div_sqrt_rne(yhat[d], M);
    KVSIM_CHECK(fx::fits_i32(x), "kvarn: view value out of entry range");
    out[d] = static_cast<i32>(x);
  }
}

// One token's rotated row: y = H x (exact, Q.20, |y| <= D 2^31).
KVSIM_HD inline void rotate_row(const i32* x, int D, i64* y) {
  for (int d = 0; d < D; ++d) y[d] = x[d];
  fx::hadamard_inplace(y, D);
}

// The K and V tiles of G tokens, rows [t][D] contiguous (stride D):
//   K: rows = channels (R = D, rs = 1), columns = tokens (C = G, cs = D)
//   V: rows = tokens (R = G, rs = D), columns = channels (C = D, cs = 1)
KVSIM_HD inline Tile key_tile(int G, int D, i64 token_stride) { return {D, G, 1, token_stride}; }
KVSIM_HD inline Tile value_tile(int G, int D, i64 token_stride) { return {G, D, token_stride, 1}; }

}  // namespace kvarn

class KvarnCache final : public HeadCache {
 public:
  KvarnCache(const KvarnConfig& c, int head_dim) : HeadCache(head_dim), c_(c) {}

  void prefill(const i32* K, const i32* V, i64 n) override {
    for (i64 t = 0; t < n; ++t) push_view(K + t * d_, V + t * d_);
    for (i64 k = 1; k < n / c_.tile; ++k) flush(k);
    boundary_ = (n / c_.tile) * c_.tile;
  }
  void append(const i32* k, const i32* v) override { push_view(k, v); }
  void end_step() override {
    if (size() % c_.tile != 0 || size() == boundary_) return;
    if (size() / c_.tile >= 2) flush(size() / c_.tile - 1);
    boundary_ = size();
  }
  u64 stored_bits() const override {
    const u64 D = static_cast<u64>(d_), G = static_cast<u64>(c_.tile);
    const u64 nq = static_cast<u64>(tiles_);  // quantized tiles
    const u64 fp_tokens = static_cast<u64>(size()) - nq * G;  // sink + tail
    // per tile: codes; K: fp16 scale+zero per channel, fp16 per token; V: scale+zero per token, fp16 per channel
    return nq * (G * D * static_cast<u64>(c_.kbits + c_.vbits) + 16 * (2 * D + G) + 16 * (2 * G + D)) +
           fp_tokens * D * 2 * 16;
  }

  // Tokens [0, flushed_tokens()) are seen through the tiles' views (the sink
  // tile's view is its full-precision rows): G * floor(t / G) during step t.
  i64 flushed_tokens() const { return boundary_; }
  i64 quantized_tiles() const { return tiles_; }  // tiles 1 .. tiles_
  int key_words_per_row() const { return kvarn::words_per_row(c_.tile, c_.kbits); }
  int value_words_per_row() const { return kvarn::words_per_row(d_, c_.vbits); }
  const std::vector<AsymParams>& key_params() const { return kparams_; }  // [tiles][D]
  const std::vector<u16>& key_col_scales() const { return kcol_; }       // [tiles][G]
  const std::vector<u32>& key_codes() const { return kcodes_; }          // [tiles][D][key_words_per_row]
  const std::vector<AsymParams>& value_params() const { return vparams_; }  // [tiles][G]
  const std::vector<u16>& value_col_scales() const { return vcol_; }        // [tiles][D]
  const std::vector<u32>& value_codes() const { return vcodes_; }  // [tiles][G][value_words_per_row]

 private:
  // Quantize tile k (tokens [kG, (k+1)G)), k >= 1; tiles are flushed in order.
  void flush(i64 k) {
    const int G = c_.tile, D = d_;
    const i64 t0 = k * G;
    std::vector<i64> y(static_cast<size_t>(G) * D), yhat(y.size());
    std::vector<i64> scratch(static_cast<size_t>(4 * (G + D)));
    std::vector<i32> row(static_cast<size_t>(D));
    for (int which = 0; which < 2; ++which) {
      const bool key = which == 0;
      for (int j = 0; j < G; ++j)
        kvarn::rotate_row(key ? key_row(t0 + j) : value_row(t0 + j), D, y.data() + static_cast<size_t>(j) * D);
      const kvarn::Tile t = key ? kvarn::key_tile(G, D, D) : kvarn::value_tile(G, D, D);
      const int bits = key ? c_.kbits : c_.vbits;
      const int wpr = kvarn::words_per_row(t.C, bits);
      auto& params = key ? kparams_ : vparams_;
      auto& col = key ? kcol_ : vcol_;
      auto& codes = key ? kcodes_ : vcodes_;
      const size_t p0 = params.size(), c0 = col.size(), w0 = codes.size();
      params.resize(p0 + static_cast<size_t>(t.R));
      col.resize(c0 + static_cast<size_t>(t.C));
      codes.resize(w0 + static_cast<size_t>(t.R) * wpr, 0u);
      kvarn::quantize_tile(y.data(), t, D, bits, c_.iters, scratch.data(),
                           {params.data() + p0, col.data() + c0, codes.data() + w0, wpr, yhat.data()});
      for (int j = 0; j < G; ++j)
        kvarn::unrotate_row(yhat.data() + static_cast<size_t>(j) * D, D, key ? key_row(t0 + j) : value_row(t0 + j));
    }
    tiles_ = k;
  }

  KvarnConfig c_;
  i64 tiles_ = 0, boundary_ = 0;
  std::vector<AsymParams> kparams_, vparams_;
  std::vector<u16> kcol_, vcol_;
  std::vector<u32> kcodes_, vcodes_;
};

}  // namespace kvsim::ref
