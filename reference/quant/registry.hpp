// The method registry: one enum, one table row per method. The CLI, the
// replay, `kvsim methods`, the tests and (later) the CUDA dispatch all read
// this table, so a new method is one header, one row and one CUDA file.
#pragma once
#include <array>
#include <memory>
#include <string>
#include <vector>

#include "reference/quant/cache.hpp"
#include "reference/quant/fp.hpp"
#include "reference/quant/kivi.hpp"

namespace kvsim::ref {

enum class MethodId : int { fp, kivi };

// The resolved options of one method instance. Fields a method does not use
// keep their defaults and are not printed in its label.
struct MethodConfig {
  MethodId id = MethodId::fp;
  int bits = 16;
  int group = 32;
  int residual = 128;
};

struct MethodInfo {
  MethodId id;
  const char* name;
  const char* summary;
  const char* origin;  // where the algorithm comes from
  bool uses_bits, uses_group, uses_residual;
  int default_bits;
  std::string (*check)(const MethodConfig&, int head_dim);  // empty if usable
  std::unique_ptr<HeadCache> (*make)(const MethodConfig&, int head_dim);
};

inline KiviConfig kivi_config(const MethodConfig& m) { return {m.bits, m.group, m.residual}; }

inline constexpr std::array<MethodInfo, 2> kMethods{{
    {MethodId::fp, "fp", "no quantization, through the same fixed-point path (the reference's own error)",
     "kvsim", false, false, false, 16,
     [](const MethodConfig&, int) { return std::string{}; },
     [](const MethodConfig&, int d) -> std::unique_ptr<HeadCache> { return std::make_unique<FpCache>(d); }},
    {MethodId::kivi, "kivi",
     "keys per channel (groups of G tokens, window flushed at R), values per token (groups of G "
     "channels, FIFO window R), asymmetric, fp16 scale and min",
     "Liu et al. 2024, jy-yuan/KIVI", true, true, true, 2,
     [](const MethodConfig& m, int d) { return kivi_check(kivi_config(m), d); },
     [](const MethodConfig& m, int d) -> std::unique_ptr<HeadCache> {
       return std::make_unique<KiviCache>(kivi_config(m), d);
     }},
}};

inline const MethodInfo& method_info(MethodId id) { return kMethods[static_cast<size_t>(id)]; }

inline const MethodInfo* find_method(const std::string& name) {
  for (const auto& m : kMethods)
    if (name == m.name) return &m;
  return nullptr;
}

inline MethodConfig default_config(const MethodInfo& info) {
  MethodConfig c;
  c.id = info.id;
  c.bits = info.default_bits;
  return c;
}

// A short label naming the instance, e.g. "kivi-b2-g32-r128" or "fp".
inline std::string method_label(const MethodConfig& c) {
  const MethodInfo& i = method_info(c.id);
  std::string s = i.name;
  if (i.uses_bits) s += "-b" + std::to_string(c.bits);
  if (i.uses_group) s += "-g" + std::to_string(c.group);
  if (i.uses_residual) s += "-r" + std::to_string(c.residual);
  return s;
}

// Bits per cached element (keys and values averaged), counting codes, scales,
// zero points and full-precision windows (16 bits), measured on the real
// state machine after `context` decode tokens of a fixed pseudo-random fill.
inline double bits_per_element(const MethodConfig& c, int head_dim, i64 context) {
  auto cache = method_info(c.id).make(c, head_dim);
  std::vector<i32> k(static_cast<size_t>(head_dim)), v(k.size());
  u64 state = 0x9E3779B97F4A7C15ull;
  for (i64 t = 0; t < context; ++t) {
    for (int d = 0; d < head_dim; ++d) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      k[d] = static_cast<i32>(static_cast<i64>(state >> 44) - (i64{1} << 19));
      v[d] = static_cast<i32>(static_cast<i64>((state >> 20) & 0xFFFFF) - (i64{1} << 19));
    }
    cache->append(k.data(), v.data());
    cache->end_step();
  }
  return static_cast<double>(cache->stored_bits()) /
         (2.0 * static_cast<double>(context) * static_cast<double>(head_dim));
}

}  // namespace kvsim::ref
