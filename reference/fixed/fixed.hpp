// The fixed-point core of the reference (umbrella header): everything the
// bit-exact path may use to drop bits, convert at the float boundaries, or
// evaluate a non-linear function. All of it is KVSIM_HD (host and device),
// integer-only, in namespace kvsim::fx; see reference/fixed/README.md.
//
//   check.hpp      KVSIM_CHECK and the range predicates it uses
//   rounding.hpp   shift_right_{rne,rna,floor,trunc}, div_{rne,rna,floor,trunc}, clamp
//   convert.hpp    entry_from_{fp16,bf16,fp32}, fp16/bf16 <-> fixed, to_double (host)
//   nonlinear.hpp  exp2_neg_q32, exp2_neg_q32_q40, exp2_q32, exp_q32, exp_neg_q32, log2_q32, ln_q32,
//                  recip_q, isqrt_floor, sqrt_rne, sqrt_q
//   hadamard.hpp   hadamard_inplace, hadamard_transpose_inplace (orders m * 2^k)
//   tables.inc     generated constants and tables (reference/fixed/gen)
#pragma once
#include "reference/fixed/check.hpp"
#include "reference/fixed/rounding.hpp"
#include "reference/fixed/convert.hpp"
#include "reference/fixed/nonlinear.hpp"
#include "reference/fixed/hadamard.hpp"
