// The kvsim trace format, schema v1: metadata, streaming reader, streaming
// writer and the one error type. The schema is documented in traces/README.md.
//
// A trace holds, for one recorded decode of T tokens (prefill P, decode T-P),
// the token ids and per layer the post-RoPE query, key and value of every
// token (optionally the pre-RoPE keys), chunked along T so that readers stream
// rows instead of loading whole tensors. Nothing here ever reads a whole
// tensor: every read is a hyperslab of rows [t0, t0+n).
//
// Threads: one TraceReader may be read from several threads at once (the
// HDF5 library here is built thread-safe; otherwise the reader serialises its
// HDF5 calls itself). A TraceWriter is for one thread.
#pragma once
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "traces/dtype.hpp"

namespace kvsim::traces {

inline constexpr int kTraceVersion = 1;
inline constexpr int64_t kDefaultChunkTokens = 256;

// Everything the root attributes of a trace say.
struct TraceMeta {
  int version = kTraceVersion;
  int num_layers = 0, num_q_heads = 0, num_kv_heads = 0, head_dim = 0;  // L, Hq, Hkv, D
  int64_t num_tokens = 0, prefill_len = 0;                                // T, P (0 <= P <= T)
  double rope_theta = 10000.0;
  std::string rope_scaling_type = "none";  // "none" | "linear" | "llama3"
  double rope_scaling_factor = 1.0;
  // llama3 scaling only (required in the file when rope_scaling_type == "llama3").
  double rope_low_freq_factor = 1.0, rope_high_freq_factor = 4.0;
  int64_t rope_original_max_position = 0;
  DType dtype = DType::f16;
  bool has_k_pre_rope = false;
  // Provenance.
  std::string model, source, tool_revision, created;  // created: ISO 8601 UTC
  int64_t seed = 0;
  // Every other root attribute, sorted by name; numbers are given as text.
  std::vector<std::pair<std::string, std::string>> extra;

  int heads(Tensor t) const { return t == Tensor::q ? num_q_heads : num_kv_heads; }
  // Elements of one token row of tensor t: heads(t) * head_dim.
  int64_t row_elems(Tensor t) const { return static_cast<int64_t>(heads(t)) * head_dim; }
};

// Every problem with a trace file, on one line:
// "<file>: <dataset or attribute>: <problem>".
class TraceError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Checks a TraceMeta as the writer and the reader both require it; throws
// TraceError("<file>: attribute <name>: <problem>").
void check_meta(const TraceMeta& meta, const std::string& file);

// ISO 8601 UTC time of now, e.g. "2025-01-31T12:00:00Z" (for TraceMeta::created).
std::string iso_time_now();

class TraceReader {
 public:
  // Opens the file and checks its structure: root attributes (presence, type,
  // ranges), /tokens, every /layers/<l>/<tensor> (presence, rank, shape,
  // element type, consistency between layers). Does not read tensor values
  // (validate_trace does). Throws TraceError.
  explicit TraceReader(const std::string& path);
  ~TraceReader();
  TraceReader(TraceReader&&) noexcept;
  TraceReader& operator=(TraceReader&&) noexcept;
  TraceReader(const TraceReader&) = delete;
  TraceReader& operator=(const TraceReader&) = delete;

  const TraceMeta& meta() const;
  const std::string& path() const;
  std::vector<int32_t> tokens() const;  // [T]
  // Rows [t0, t0+n) of /tokens.
  void read_tokens(int64_t t0, int64_t n, std::vector<int32_t>& out) const;
  // Tc: the chunk length along T of layer 0's q dataset (T when not chunked).
  int64_t chunk_tokens() const;
  // How layer 0's q is stored, e.g. "chunked [256, 8, 128], shuffle, gzip 4".
  std::string layout_description() const;

  // Rows [t0, t0+n) of one tensor, row-major [n][H][D], H = meta().heads(which).
  // read_bits: each element's bit pattern (f16/bf16 in the low 16 bits, f32 the
  // whole word). read_float: the exact value. Throws TraceError on a bad layer,
  // a tensor the file lacks, a row range outside [0, T), or an HDF5 read failure.
  void read_bits(int layer, Tensor which, int64_t t0, int64_t n, std::vector<uint32_t>& out) const;
  void read_float(int layer, Tensor which, int64_t t0, int64_t n, std::vector<float>& out) const;

  // The dataset name of a tensor, "/layers/<l>/<name>".
  static std::string dataset_name(int layer, Tensor which);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Streaming writer. Writes "<path>.tmp" and renames it to <path> on close();
// if destroyed without a successful close() (an error path), the tmp file is
// removed: a half-written trace never appears under <path>.
class TraceWriter {
 public:
  // chunk_tokens: Tc (clamped to [1, T]); gzip_level 0 (none) .. 9 (with shuffle).
  TraceWriter(const std::string& path, const TraceMeta& meta,
              int64_t chunk_tokens = kDefaultChunkTokens, int gzip_level = 0);
  ~TraceWriter();
  TraceWriter(TraceWriter&&) noexcept;
  TraceWriter& operator=(TraceWriter&&) noexcept;
  TraceWriter(const TraceWriter&) = delete;
  TraceWriter& operator=(const TraceWriter&) = delete;

  void write_tokens(const std::vector<int32_t>& ids);  // all T ids
  void write_tokens(int64_t t0, int64_t n, const int32_t* ids);
  // n rows [n][H][D] of one layer tensor at rows [t0, t0+n); each value is
  // rounded to the file dtype (round half to even).
  void write_rows(int layer, Tensor which, int64_t t0, int64_t n, const float* data);
  // The same with ready-made bit patterns (f16/bf16 in the low 16 bits).
  void write_bits(int layer, Tensor which, int64_t t0, int64_t n, const uint32_t* bits);
  // An extra root attribute (provenance, generator parameters). Text
  // attributes can also be passed in TraceMeta::extra.
  void set_attribute(const std::string& name, const std::string& value);
  void set_attribute(const std::string& name, double value);
  void set_attribute(const std::string& name, int64_t value);
  // Checks that every row of /tokens and of every tensor was written, flushes,
  // closes and renames. Throws TraceError (and leaves no file) otherwise.
  void close();
  const std::string& path() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The text printed by `kvsim trace info`.
std::string format_info(const TraceReader&);

}  // namespace kvsim::traces
