// Common definitions shared by the reference (CPU) and the CUDA twin.
//
// Every per-element or per-group function of the bit-exact path is written
// once, marked KVSIM_HD, and included by both sides (DESIGN.md, rule 7).
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define KVSIM_HD __host__ __device__
#else
#define KVSIM_HD
#endif

namespace kvsim {

using i8 = std::int8_t;
using i16 = std::int16_t;
using i32 = std::int32_t;
using i64 = std::int64_t;
using u8 = std::uint8_t;
using u16 = std::uint16_t;
using u32 = std::uint32_t;
using u64 = std::uint64_t;
__extension__ typedef __int128 i128;
__extension__ typedef unsigned __int128 u128;

// The entry format: every trace value (fp16, bf16, fp32) enters the bit-exact
// path as a signed 32-bit integer with kEntryFrac fraction bits (Q11.20), by
// round-half-to-even on its bit pattern. |x| must be below 2^11 = 2048;
// larger values are rejected with an error naming the dataset and index.
inline constexpr int kEntryFrac = 20;
inline constexpr int kEntryIntBits = 11;

// Maximum supported head dimension (bounds of every accumulator assume it).
inline constexpr int kMaxHeadDim = 256;

}  // namespace kvsim
