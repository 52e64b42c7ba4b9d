// The method registry: one enum, one table row per method. The CLI, the
// replay, `kvsim methods`, the tests and (later) the CUDA dispatch all read
// this table, so a new method is one header, one row and one CUDA file.
#pragma once
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <map>
#include <numeric>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "reference/quant/cache.hpp"
#include "reference/quant/fp.hpp"
#include "reference/quant/gq.hpp"
#include "reference/quant/kivi.hpp"
#include "reference/quant/kvarn.hpp"
#include "reference/quant/kvlinc.hpp"
#include "reference/quant/mixed.hpp"

namespace kvsim::ref {

enum class MethodId : int { fp, kivi, kvarn, kvlinc, gq };

// A method-specific option (beyond bits, group and residual): its key in a
// method spec ("kvarn:tile=64"), its default and a one-line help. Values are
// strings; the method's check() validates them, its make() reads them.
struct MethodOption {
  const char* key;
  const char* default_value;
  const char* help;
};

// The resolved options of one method instance. Fields a method does not use
// keep their defaults and are not printed in its label.
struct MethodConfig {
  MethodId id = MethodId::fp;
  int bits = 16;
  int group = 32;
  int residual = 128;
  std::map<std::string, std::string> opts;  // every MethodInfo::options key, resolved
  std::string row;  // the registry row it came from (a method or a preset name); "" = the method's own row
  // Mixed precision (reference/quant/mixed.hpp): per (layer, KV head) bits
  // from option bitmap=FILE, for methods with uses_bits; then bits = 0 and
  // each cache takes head_config(*this, layer, kv_head). Null: uniform bits.
  std::shared_ptr<const BitAlloc> bitmap;

  const std::string& opt(const std::string& key) const {
    const auto it = opts.find(key);
    if (it == opts.end()) throw std::logic_error("method option '" + key + "' is not defined");
    return it->second;
  }
  // The option as an integer; throws std::runtime_error naming it when it is not one.
  long long opt_int(const std::string& key) const {
    const std::string& v = opt(key);
    size_t used = 0;
    long long x = 0;
    try {
      x = std::stoll(v, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != v.size()) throw std::runtime_error("option " + key + "=" + v + " is not an integer");
    return x;
  }
  // The option as a finite number (offline settings only: never on the bit-exact path).
  double opt_double(const std::string& key) const {
    const std::string& v = opt(key);
    size_t used = 0;
    double x = 0.0;
    try {
      x = std::stod(v, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != v.size() || !std::isfinite(x))
      throw std::runtime_error("option " + key + "=" + v + " is not a finite number");
    return x;
  }
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
  std::span<const MethodOption> options = {};  // method-specific options
  // A preset row ("kvarn-k2v2"): options applied over the defaults,
  // "key=value,key=value" (bits, group, residual or an option key); "" if none.
  const char* preset = "";
  // The token period of the method's flushes (sawtooth of the error curve);
  // 0 when the method has none. Reports mark the position within it.
  int (*period)(const MethodConfig&) = nullptr;
};

inline KiviConfig kivi_config(const MethodConfig& m) { return {m.bits, m.group, m.residual}; }

inline constexpr MethodOption kKvarnOptions[] = {
    {"kbits", "2", "key code bits, 2 or 4"},
    {"vbits", "2", "value code bits, 2 or 4"},
    {"tile", "128", "tokens per tile G (upstream: 128 or 64); the first tile is the full-precision sink"},
    {"iters", "8", "Sinkhorn iterations of the dual-scaling variance normalisation"},
};
// Throws std::runtime_error naming a non-integer option.
inline KvarnConfig kvarn_config(const MethodConfig& m) {
  return {static_cast<int>(m.opt_int("kbits")), static_cast<int>(m.opt_int("vbits")),
          static_cast<int>(m.opt_int("tile")), static_cast<int>(m.opt_int("iters"))};
}
inline std::string kvarn_check_config(const MethodConfig& m, int d) {
  try {
    return kvarn_check(kvarn_config(m), d);
  } catch (const std::exception& e) {
    return std::string("kvarn: ") + e.what();
  }
}
inline std::unique_ptr<HeadCache> kvarn_make(const MethodConfig& m, int d) {
  return std::make_unique<KvarnCache>(kvarn_config(m), d);
}
inline int kvarn_period(const MethodConfig& m) { return static_cast<int>(m.opt_int("tile")); }
inline constexpr const char* kKvarnSummary =
    "Hadamard on K and V, tiles of G tokens balanced by a log-domain Sinkhorn (dual scaling), per-row "
    "asymmetric RTN (K per channel, V per token), fp16 folded scales; sink tile and tail in fp16";
inline constexpr const char* kKvarnOrigin = "Muller et al. 2026, huawei-csl/KVarN";

inline constexpr MethodOption kKvlincOptions[] = {
    // Default none: the affine key fit minimises the key error, not the attention error, and on the default
    // trace it makes attention worse (2-bit, calib 512, every step: mean rel_l2 0.403 -> 0.451 in layer 0,
    // KL 0.045 -> 0.128): least squares shrinks the noisy 2-bit keys (alpha ~ 0.82), flattening the softmax.
    // correction=linear (rank 64, calib 512, every 7th step, default trace), none -> random features + NNLS
    // (train=0) -> trained feature map (train=200, lr=0.1, the default): mean rel_l2 0.4023 -> 0.4016 -> 0.3969
    // (L0), 0.4165 -> 0.4104 -> 0.4114 (L1); mean KL 0.045 -> 0.059 -> 0.066; 4.47 bits/elem (S, z held as
    // i128) vs 3.20. The training fits the calibration queries (loss -30%) but generalises little to the decode.
    // Fit: ~0.08 s (train=0) / ~1.4 s (train=200) per (layer, KV head); replay of correction=linear on the
    // default trace, every 7th step, one thread: 14.3 s (train=0) -> 20.9 s.
    {"correction", "none",
     "key-error correction: none, affine (per-channel k~ = alpha k^ + beta, least squares on the calibration "
     "prefix) or linear (the paper's additive linear-attention term num += phi(q)^T S, den += phi(q)^T z, "
     "phi learned on the calibration prefix's queries: option train)"},
    {"calib", "512", "calibration prefix: the first N tokens of the sequence (fit at the first key flush covering them)"},
    {"rank", "64", "feature-map rank of correction=linear"},
    {"seed", "0", "seed of the randomness of correction=linear"},
    {"train", "200",
     "correction=linear: Adam steps training the feature map w, c and the weights b on the calibration queries "
     "(clamps modelled; best held-out iterate); 0 = random features + NNLS only"},
    {"lr", "0.1", "correction=linear: peak Adam step (w in units of its initial scale, c and b in log2 units)"},
};

// The KVLinC configuration of an instance; *err receives the reason when an
// option value is not valid (then the returned config must not be used).
inline KvlincConfig kvlinc_config(const MethodConfig& m, std::string* err = nullptr) {
  KvlincConfig c;
  c.bits = m.bits;
  c.group = m.group;
  c.residual = m.residual;
  try {
    const std::string& corr = m.opt("correction");
    if (corr == "none") c.correction = KvlincCorrection::none;
    else if (corr == "affine") c.correction = KvlincCorrection::affine;
    else if (corr == "linear") c.correction = KvlincCorrection::linear;
    else throw std::runtime_error("correction=" + corr + " is not one of none, affine, linear");
    c.calib = m.opt_int("calib");
    const long long rank = m.opt_int("rank"), seed = m.opt_int("seed");
    if (rank < 1 || rank > 1024) throw std::runtime_error("rank must be in [1, 1024]");
    if (seed < 0) throw std::runtime_error("seed must be non-negative");
    c.rank = static_cast<int>(rank);
    c.seed = static_cast<u64>(seed);
    const long long train = m.opt_int("train");
    if (train < 0 || train > 100000) throw std::runtime_error("train must be in [0, 100000] steps");
    c.train.steps = static_cast<int>(train);
    c.train.lr = m.opt_double("lr");
    if (!(c.train.lr > 0.0 && c.train.lr <= 1.0)) throw std::runtime_error("lr must be in (0, 1]");
  } catch (const std::runtime_error& e) {
    if (!err) throw;
    *err = std::string("kvlinc: ") + e.what();
  }
  return c;
}

// gq (reference/quant/gq.hpp): k-/v-prefixed options per tensor, then shared ones.
inline constexpr MethodOption kGqOptions[] = {
    {"kbits", "2", "key bits, 2..8"},
    {"vbits", "2", "value bits, 2..8"},
    {"kaxis", "channel", "key scale axis: channel (groups of kgroup tokens), token (groups of kgroup channels), tensor (one per block)"},
    {"vaxis", "token", "value scale axis: channel, token or tensor"},
    {"kgroup", "32", "key group size G (tokens for axis=channel, channels for axis=token; unused for tensor)"},
    {"vgroup", "32", "value group size G"},
    {"kblock", "128", "keys quantized per flush, B tokens (1 = per token at arrival)"},
    {"vblock", "1", "values quantized per flush, B tokens"},
    {"kwindow", "0", "key full-precision recent window R kept after a flush (flush when R + B are unquantized)"},
    {"vwindow", "128", "value full-precision recent window R"},
    {"kscale", "minmax", "key range: minmax, mse (16-ratio exact-error search) or pct<p> (order statistic, e.g. pct99.9)"},
    {"vscale", "minmax", "value range: minmax, mse or pct<p>"},
    {"klevels", "uniform", "key levels: uniform, log, pow<p> (|x|^p transform, e.g. pow0.5) or kmeans (needs calib)"},
    {"vlevels", "uniform", "value levels: uniform, log, pow<p> or kmeans"},
    {"sinks", "0", "first N tokens kept at full precision"},
    {"hh", "0", "heavy-hitter budget: N quantized tokens with the largest accumulated attention kept at full precision"},
    {"calib", "0", "k-means calibration prefix: the codebook is learned on the first N tokens"},
    {"seed", "1", "k-means initialisation seed"},
    {"kvdim", "1", "key k-means vector dimension d (klevels=kmeans): d consecutive group elements share one code of kbits*d bits (codebook of 2^(kbits*d) vectors, kbits*d <= 8)"},
    {"vvdim", "1", "value k-means vector dimension d (vlevels=kmeans)"},
};

inline std::string gq_check(const MethodConfig& m, int d) { return gq_config(m, d, nullptr); }
inline std::unique_ptr<HeadCache> gq_make(const MethodConfig& m, int d) {
  GqConfig c;
  if (const std::string why = gq_config(m, d, &c); !why.empty()) throw std::runtime_error(why);
  return std::make_unique<GqCache>(c, d);
}
inline int gq_period(const MethodConfig& m) {
  return static_cast<int>(std::lcm(m.opt_int("kblock"), m.opt_int("vblock")));
}
inline constexpr const char* kGqOrigin = "survey of KV-cache quantization error compensation (seed 001); KIVI, KVQuant, H2O/MiKV";

inline constexpr std::array<MethodInfo, 16> kMethods{{
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
     },
     {}, "", [](const MethodConfig& m) { return m.residual; }},
    {MethodId::kvarn, "kvarn", kKvarnSummary, kKvarnOrigin, false, false, false, 16, kvarn_check_config, kvarn_make,
     kKvarnOptions, "", kvarn_period},
    {MethodId::kvarn, "kvarn-k2v2", kKvarnSummary, kKvarnOrigin, false, false, false, 16, kvarn_check_config,
     kvarn_make, kKvarnOptions, "kbits=2,vbits=2", kvarn_period},
    {MethodId::kvarn, "kvarn-k4v2", kKvarnSummary, kKvarnOrigin, false, false, false, 16, kvarn_check_config,
     kvarn_make, kKvarnOptions, "kbits=4,vbits=2", kvarn_period},
    {MethodId::kvarn, "kvarn-k4v4", kKvarnSummary, kKvarnOrigin, false, false, false, 16, kvarn_check_config,
     kvarn_make, kKvarnOptions, "kbits=4,vbits=4", kvarn_period},
    {MethodId::kvlinc, "kvlinc",
     "keys KIVI-style per channel on raw keys, values Hadamard-rotated then per token; optional corrections "
     "fitted on a calibration prefix: affine keys, or the linear-attention term with a learned feature map",
     "Saxena & Roy 2025, arXiv 2510.05373 (KVLinC)", true, true, true, 2,
     [](const MethodConfig& m, int d) {
       std::string err;
       const KvlincConfig c = kvlinc_config(m, &err);
       return err.empty() ? kvlinc_check(c, d) : err;
     },
     [](const MethodConfig& m, int d) -> std::unique_ptr<HeadCache> {
       return std::make_unique<KvlincCache>(kvlinc_config(m), d);
     },
     kKvlincOptions, "", [](const MethodConfig& m) { return m.residual; }},
    {MethodId::gq, "gq",
     "general quantizer: per-tensor axis/group/block/window, scale minmax|mse|pct, levels "
     "uniform|log|pow|kmeans, sinks, heavy hitters (defaults: KIVI-like 2-bit)",
     kGqOrigin, false, false, false, 16, gq_check, gq_make, kGqOptions, "", gq_period},
    {MethodId::gq, "gq-mse4",
     "gq 4-bit, MSE-optimal clipping search per group",
     kGqOrigin, false, false, false, 16, gq_check, gq_make, kGqOptions, "kbits=4,vbits=4,kscale=mse,vscale=mse", gq_period},
    {MethodId::gq, "gq-pct4",
     "gq 4-bit, per-tensor (per 128-token block) scales clipped at the 99.9th percentile",
     kGqOrigin, false, false, false, 16, gq_check, gq_make, kGqOptions, "kbits=4,vbits=4,kaxis=tensor,vaxis=tensor,vblock=128,vwindow=0,kscale=pct99.9,vscale=pct99.9", gq_period},
    {MethodId::gq, "gq-dyn4",
     "gq 4-bit, dynamic per-token scales at arrival (keys and values, groups of 32 channels)",
     kGqOrigin, false, false, false, 16, gq_check, gq_make, kGqOptions, "kbits=4,vbits=4,kaxis=token,kblock=1,vwindow=0", gq_period},
    {MethodId::gq, "gq-log4",
     "gq 4-bit logarithmic levels",
     kGqOrigin, false, false, false, 16, gq_check, gq_make, kGqOptions, "kbits=4,vbits=4,klevels=log,vlevels=log", gq_period},
    {MethodId::gq, "gq-pow",
     "gq 4-bit, power transform |x|^0.5 before uniform quantization",
     kGqOrigin, false, false, false, 16, gq_check, gq_make, kGqOptions, "kbits=4,vbits=4,klevels=pow0.5,vlevels=pow0.5", gq_period},
    {MethodId::gq, "gq-kmeans2",
     "gq 2-bit k-means codebooks learned on the first 256 tokens",
     kGqOrigin, false, false, false, 16, gq_check, gq_make, kGqOptions, "klevels=kmeans,vlevels=kmeans,calib=256", gq_period},
    {MethodId::gq, "gq-vq2",
     "gq 2-bit vector k-means: vectors of 4 elements, codebooks of 256 learned on the first 256 tokens",
     kGqOrigin, false, false, false, 16, gq_check, gq_make, kGqOptions, "klevels=kmeans,vlevels=kmeans,calib=256,kvdim=4,vvdim=4", gq_period},
    {MethodId::gq, "gq-sink-hh",
     "gq 2-bit with 4 attention sinks and 64 heavy hitters kept at full precision",
     kGqOrigin, false, false, false, 16, gq_check, gq_make, kGqOptions, "sinks=4,hh=64", gq_period},
}};

// The method's own row (the first row of its id; preset rows follow it).
inline const MethodInfo& method_info(MethodId id) {
  for (const auto& m : kMethods)
    if (m.id == id) return m;
  throw std::logic_error("method id without a registry row");
}

inline const MethodInfo* find_method(const std::string& name) {
  for (const auto& m : kMethods)
    if (name == m.name) return &m;
  return nullptr;
}

// Sets one option of c ("bits", "group", "residual" or one of the method's
// option keys) from text; throws std::runtime_error naming what is wrong.
inline void apply_option(MethodConfig& c, const MethodInfo& info, const std::string& key, const std::string& value) {
  auto as_int = [&]() {
    size_t used = 0;
    int x = 0;
    try {
      x = std::stoi(value, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != value.size())
      throw std::runtime_error(std::string(info.name) + ": option " + key + "=" + value + " is not an integer");
    return x;
  };
  if (key == "bits" && info.uses_bits) {
    if (c.bitmap) throw std::runtime_error(std::string(info.name) + ": give either bits or bitmap, not both");
    c.bits = as_int();
  } else if (key == "bitmap" && info.uses_bits) {
    if (value.empty()) throw std::runtime_error(std::string(info.name) + ": option bitmap= needs a file");
    c.bitmap = std::make_shared<const BitAlloc>(load_bit_alloc(value));
    c.bits = 0;  // per (layer, KV head): head_config()
  } else if (key == "group" && info.uses_group) {
    c.group = as_int();
  } else if (key == "residual" && info.uses_residual) {
    c.residual = as_int();
  } else if (c.opts.count(key)) {
    c.opts[key] = value;
  } else {
    std::string known;
    if (info.uses_bits) known += " bits bitmap";
    if (info.uses_group) known += " group";
    if (info.uses_residual) known += " residual";
    for (const MethodOption& o : info.options) known += std::string(" ") + o.key;
    throw std::runtime_error(std::string("method ") + info.name + " has no option '" + key + "' (it has:" +
                             (known.empty() ? std::string(" none") : known) + ")");
  }
}

// Applies "key=value,key=value" (empty: nothing).
inline void apply_options(MethodConfig& c, const MethodInfo& info, const std::string& list) {
  size_t at = 0;
  while (at < list.size()) {
    size_t end = list.find(',', at);
    if (end == std::string::npos) end = list.size();
    const std::string kv = list.substr(at, end - at);
    const size_t eq = kv.find('=');
    if (eq == std::string::npos) throw std::runtime_error("method option '" + kv + "' is not key=value");
    apply_option(c, info, kv.substr(0, eq), kv.substr(eq + 1));
    at = end + 1;
  }
}

// The row's defaults: bits, group, residual, every option's default, then its preset.
inline MethodConfig default_config(const MethodInfo& info) {
  MethodConfig c;
  c.id = info.id;
  c.bits = info.default_bits;
  for (const MethodOption& o : info.options) c.opts[o.key] = o.default_value;
  apply_options(c, info, info.preset);
  if (*info.preset) c.row = info.name;
  return c;
}

// A short label naming the instance, e.g. "kivi-b2-g32-r128", "fp" or
// "kvarn-k2v2-tile64": the row's name (method or preset), then bits, group
// and residual when the method uses them, then each method option that
// differs from the row's default, as -<key><value>.
inline std::string method_label(const MethodConfig& c) {
  const MethodInfo& base = method_info(c.id);
  const MethodInfo* row = c.row.empty() ? &base : find_method(c.row);
  if (!row || row->id != c.id) row = &base;
  const MethodConfig d = default_config(*row);
  std::string s = row->name;
  if (base.uses_bits && c.bitmap) {
    char avg[32];
    std::snprintf(avg, sizeof avg, "%.2f", c.bitmap->average());
    s += std::string("-bmix") + avg + "@" + c.bitmap->stem();
  } else if (base.uses_bits) {
    s += "-b" + std::to_string(c.bits);
  }
  if (base.uses_group) s += "-g" + std::to_string(c.group);
  if (base.uses_residual) s += "-r" + std::to_string(c.residual);
  for (const MethodOption& o : base.options) {
    const std::string& v = c.opt(o.key);
    if (v != d.opt(o.key)) s += std::string("-") + o.key + v;
  }
  return s;
}

// Every option of the instance as "key=value,..." (bits/group/residual when
// used, then the method's options), for results files and reports.
inline std::string method_options_text(const MethodConfig& c) {
  const MethodInfo& i = method_info(c.id);
  std::string s;
  auto add = [&](const std::string& k, const std::string& v) { s += (s.empty() ? "" : ",") + k + "=" + v; };
  if (i.uses_bits && c.bitmap) {
    add("bits", "mixed");
    add("bitmap", c.bitmap->source);
    add("head_bits", c.bitmap->compact());  // layers '/', KV heads '.'
  } else if (i.uses_bits) {
    add("bits", std::to_string(c.bits));
  }
  if (i.uses_group) add("group", std::to_string(c.group));
  if (i.uses_residual) add("residual", std::to_string(c.residual));
  for (const MethodOption& o : i.options) add(o.key, c.opt(o.key));
  return s;
}

// The flush period in tokens (0: none).
inline int method_period(const MethodConfig& c) {
  const MethodInfo& i = method_info(c.id);
  return i.period ? i.period(c) : 0;
}

// Bits per cached element (keys and values averaged), counting codes, scales,
// zero points and full-precision windows (16 bits), measured on the real
// state machine after `context` decode tokens of a fixed pseudo-random fill.
// With a bitmap: the mean over every (layer, KV head) of its width's count.
inline double bits_per_element(const MethodConfig& c, int head_dim, i64 context) {
  if (c.bitmap) {
    double s = 0;
    for (const auto& [b, n] : c.bitmap->histogram()) {
      MethodConfig u = c;
      u.bitmap = nullptr;
      u.bits = b;
      s += static_cast<double>(n) * bits_per_element(u, head_dim, context);
    }
    return s / static_cast<double>(c.bitmap->bits.size());
  }
  auto cache = method_info(c.id).make(c, head_dim);
  std::vector<i32> k(static_cast<size_t>(head_dim)), v(k.size());
  u64 state = 0x9E3779B97F4A7C15ull;
  for (i64 t = 0; t < context; ++t) {
    for (int d = 0; d < head_dim; ++d) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      k[d] = static_cast<i32>(static_cast<i64>(state >> 44) - (i64{1} << 19));
      v[d] = static_cast<i32>(static_cast<i64>((state >> 20) & 0xFFFFF) - (i64{1} << 19));
    }
    std::vector<i64> q(k.begin(), k.end());  // a query for methods that calibrate on queries
    for (auto& x : q) x *= i64{1} << 20;
    cache->observe_queries(q.data(), 1);
    cache->append(k.data(), v.data());
    cache->end_step();
  }
  return static_cast<double>(cache->stored_bits()) /
         (2.0 * static_cast<double>(context) * static_cast<double>(head_dim));
}

// ---------------------------------------------------------------- mixed precision
// (reference/quant/mixed.hpp) Every cache is made through these, so a method
// that takes bits takes a bitmap with no code of its own.

// The configuration of the cache of (layer, KV head): m itself without a
// bitmap, else m with that entry's bits.
inline MethodConfig head_config(const MethodConfig& m, int layer, int kv_head) {
  if (!m.bitmap) return m;
  MethodConfig c = m;
  c.bits = m.bitmap->at(layer, kv_head);
  c.bitmap = nullptr;
  return c;
}

// One layer's configuration: m without a bitmap; with one, the uniform
// config when every KV head of the layer has the same width, else m with the
// bitmap reduced to that layer (cuda::LayerEngine::add_method takes these).
inline MethodConfig layer_config(const MethodConfig& m, int layer) {
  if (!m.bitmap) return m;
  const BitAlloc s = m.bitmap->layer_slice(layer);
  if (std::all_of(s.bits.begin(), s.bits.end(), [&](int b) { return b == s.bits[0]; }))
    return head_config(m, layer, 0);
  MethodConfig c = m;
  c.bitmap = std::make_shared<const BitAlloc>(s);
  return c;
}

inline std::unique_ptr<HeadCache> make_cache(const MethodConfig& m, int layer, int kv_head, int head_dim) {
  const MethodConfig c = head_config(m, layer, kv_head);
  return method_info(c.id).make(c, head_dim);
}

// The method's check, for every width of its bitmap; with layers >= 0 also
// that the bitmap covers exactly layers x kv_heads. Empty if usable.
inline std::string check_method(const MethodConfig& m, int head_dim, int layers = -1, int kv_heads = -1) {
  const MethodInfo& info = method_info(m.id);
  if (!m.bitmap) return info.check(m, head_dim);
  const BitAlloc& a = *m.bitmap;
  if (layers >= 0 && (a.first_layer != 0 || a.layers != layers || a.kv_heads != kv_heads))
    return "bitmap " + a.source + " covers " + std::to_string(a.layers) + " layers x " + std::to_string(a.kv_heads) +
           " KV heads, the trace has " + std::to_string(layers) + " x " + std::to_string(kv_heads);
  for (const auto& hb : a.histogram()) {
    MethodConfig u = m;
    u.bitmap = nullptr;
    u.bits = hb.first;
    if (std::string why = info.check(u, head_dim); !why.empty())
      return "bitmap " + a.source + ": width " + std::to_string(hb.first) + ": " + why;
  }
  return {};
}

}  // namespace kvsim::ref
