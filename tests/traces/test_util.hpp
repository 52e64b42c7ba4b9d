// Shared helpers of the trace tests: a self-removing temp folder, a small
// deterministic trace writer, and whole-file comparisons.
#pragma once
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "traces/half.hpp"
#include "traces/trace.hpp"

namespace kvsim::traces::test {

// A fresh folder under the system temp dir, removed with its contents.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            ("kvsim_traces_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// A deterministic value for (layer, tensor, token, head, channel), covering
// signs, magnitudes from 2^-20 to ~1000, and exact ties of fp16 rounding.
inline float test_value(int l, int t, int64_t tok, int h, int c) {
  uint64_t z = static_cast<uint64_t>(l) * 1000003u + static_cast<uint64_t>(t) * 10007u +
               static_cast<uint64_t>(tok) * 101u + static_cast<uint64_t>(h) * 13u +
               static_cast<uint64_t>(c);
  z = (z + 0x9e3779b97f4a7c15ull) * 0xbf58476d1ce4e5b9ull;
  z ^= z >> 29;
  z *= 0x94d049bb133111ebull;
  z ^= z >> 32;
  const int kind = static_cast<int>(z % 8);
  const double u = static_cast<double>((z >> 8) & 0xffffff) / 16777216.0;  // [0, 1)
  const double sign = (z >> 40) & 1 ? -1.0 : 1.0;
  switch (kind) {
    case 0: return static_cast<float>(sign * (1.0 + 1.0 / 2048.0));      // fp16 tie -> 1
    case 1: return static_cast<float>(sign * (1.0 + 3.0 / 2048.0));      // fp16 tie -> 1 + 2^-9
    case 2: return static_cast<float>(sign * u * 1e-5);                  // fp16 subnormal range
    case 3: return static_cast<float>(sign * u * 1000.0);
    default: return static_cast<float>(sign * u * 4.0);
  }
}

inline TraceMeta small_meta(DType dt, int64_t T = 37, bool pre = true) {
  TraceMeta m;
  m.num_layers = 2;
  m.num_q_heads = 4;
  m.num_kv_heads = 2;
  m.head_dim = 8;
  m.num_tokens = T;
  m.prefill_len = T / 2;
  m.dtype = dt;
  m.has_k_pre_rope = pre;
  m.model = "unit-test";
  m.source = "test";
  m.tool_revision = "test-rev";
  m.seed = 42;
  return m;
}

// Writes every row with test_value, in pieces of `piece` rows (not aligned
// with the chunks on purpose).
inline void write_test_trace(const std::string& path, const TraceMeta& m, int64_t chunk,
                             int64_t piece = 5, int gzip = 0) {
  TraceWriter w(path, m, chunk, gzip);
  std::vector<int32_t> ids(static_cast<size_t>(m.num_tokens));
  for (int64_t t = 0; t < m.num_tokens; ++t) ids[static_cast<size_t>(t)] = static_cast<int32_t>(t * 7 % 1000);
  w.write_tokens(ids);
  for (int l = 0; l < m.num_layers; ++l)
    for (Tensor t : kAllTensors) {
      if (t == Tensor::k_pre_rope && !m.has_k_pre_rope) continue;
      const int H = m.heads(t), D = m.head_dim;
      for (int64_t t0 = 0; t0 < m.num_tokens; t0 += piece) {
        const int64_t n = std::min(piece, m.num_tokens - t0);
        std::vector<float> buf(static_cast<size_t>(n * H * D));
        for (int64_t r = 0; r < n; ++r)
          for (int h = 0; h < H; ++h)
            for (int c = 0; c < D; ++c)
              buf[static_cast<size_t>((r * H + h) * D + c)] =
                  test_value(l, static_cast<int>(t), t0 + r, h, c);
        w.write_rows(l, t, t0, n, buf.data());
      }
    }
  w.close();
}

inline void copy_file(const std::string& from, const std::string& to) {
  std::filesystem::copy_file(from, to, std::filesystem::copy_options::overwrite_existing);
}

inline std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

}  // namespace kvsim::traces::test
