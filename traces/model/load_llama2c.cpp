// llama.c checkpoints (karpathy/llama2.c, run.c's format, version 0):
//   header: 7 int32 dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
//           (vocab_size < 0: the classifier is stored separately, untied)
//   then float32, in this order (run.c memory_map_weights):
//     token_embedding [vocab][dim], rms_att [L][dim], wq [L][Hq*D][dim],
//     wk [L][Hkv*D][dim], wv [L][Hkv*D][dim], wo [L][dim][Hq*D], rms_ffn [L][dim],
//     w1 [L][hidden][dim], w2 [L][dim][hidden], w3 [L][hidden][dim], rms_final [dim],
//     freq_cis_real, freq_cis_imag [seq_len][D/2] (unused), wcls [vocab][dim] if untied.
// RoPE rotates adjacent pairs with theta 10000, RMSNorm eps 1e-5 (run.c).
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "traces/model/llama.hpp"

namespace kvsim::model {

namespace {

class BinReader {
 public:
  BinReader(const std::string& path, int64_t size) : path_(path), size_(size), f_(path, std::ios::binary) {
    if (!f_) throw ModelError(path + ": cannot open");
  }
  void read(void* dst, int64_t bytes, const std::string& what) {
    if (off_ + bytes > size_)
      throw ModelError(path_ + ": truncated: " + what + " needs bytes [" + std::to_string(off_) + ", " +
                       std::to_string(off_ + bytes) + ") but the file has " + std::to_string(size_));
    f_.read(static_cast<char*>(dst), bytes);
    if (!f_) throw ModelError(path_ + ": read error in " + what);
    off_ += bytes;
  }
  void skip(int64_t bytes, const std::string& what) {
    if (off_ + bytes > size_)
      throw ModelError(path_ + ": truncated: " + what + " needs " + std::to_string(bytes) + " bytes at offset " +
                       std::to_string(off_) + " but the file has " + std::to_string(size_));
    f_.seekg(bytes, std::ios::cur);
    off_ += bytes;
  }
  int64_t offset() const { return off_; }

 private:
  std::string path_;
  int64_t size_, off_ = 0;
  std::ifstream f_;
};

}  // namespace

LlamaModel load_llama2c(const std::string& path) {
  std::error_code ec;
  const auto fsize = std::filesystem::file_size(path, ec);
  if (ec) throw ModelError(path + ": cannot open (" + ec.message() + ")");
  BinReader r(path, static_cast<int64_t>(fsize));
  int32_t h[7];
  r.read(h, sizeof h, "the 7-int32 header");
  LlamaModel m;
  LlamaConfig& c = m.cfg;
  c.architecture = "llama2.c";
  c.dim = h[0];
  c.hidden_dim = h[1];
  c.n_layers = h[2];
  c.n_heads = h[3];
  c.n_kv_heads = h[4];
  c.tied_embeddings = h[5] > 0;
  c.vocab_size = h[5] < 0 ? -h[5] : h[5];
  c.max_seq_len = h[6];
  if (c.n_heads <= 0 || c.dim <= 0 || c.dim % c.n_heads != 0)
    throw ModelError(path + ": not a llama2.c checkpoint (header dim " + std::to_string(c.dim) + ", heads " +
                     std::to_string(c.n_heads) + ")");
  c.head_dim = c.dim / c.n_heads;
  c.rope_theta = 10000.0;
  c.rope_style = RopeStyle::interleaved;
  c.norm_eps = 1e-5f;
  c.bos_id = 1;  // llama2.c / sentencepiece convention
  c.eos_id = 2;
  c.check(path + ": header");
  // Guard against absurd headers before allocating: the size the header implies.
  const int64_t L = c.n_layers, D = c.dim, Hd = c.hidden_dim, V = c.vocab_size, kv = c.kv_dim(), qd = c.q_dim();
  const int64_t floats = V * D + L * D + L * qd * D + 2 * L * kv * D + L * D * qd + L * D + 3 * L * D * Hd + D +
                         c.max_seq_len * c.head_dim + (c.tied_embeddings ? 0 : V * D);
  const int64_t need = 28 + 4 * floats;
  if (need > static_cast<int64_t>(fsize))
    throw ModelError(path + ": truncated: the header (dim " + std::to_string(D) + ", hidden " + std::to_string(Hd) +
                     ", layers " + std::to_string(L) + ", vocab " + std::to_string(V) + ") needs " +
                     std::to_string(need) + " bytes but the file has " + std::to_string(fsize));
  auto mat = [&](Mat& dst, int64_t rows, int64_t cols, const std::string& what) {
    dst.resize(rows, cols);
    r.read(dst.data(), rows * cols * 4, what);
  };
  auto vec = [&](Vec& dst, int64_t n, const std::string& what) {
    dst.resize(n);
    r.read(dst.data(), n * 4, what);
  };
  mat(m.tok_emb, V, D, "token_embedding_table");
  m.layers.resize(L);
  for (int64_t l = 0; l < L; ++l) vec(m.layers[l].attn_norm, D, "rms_att_weight");
  for (int64_t l = 0; l < L; ++l) mat(m.layers[l].wq, qd, D, "wq");
  for (int64_t l = 0; l < L; ++l) mat(m.layers[l].wk, kv, D, "wk");
  for (int64_t l = 0; l < L; ++l) mat(m.layers[l].wv, kv, D, "wv");
  for (int64_t l = 0; l < L; ++l) mat(m.layers[l].wo, D, qd, "wo");
  for (int64_t l = 0; l < L; ++l) vec(m.layers[l].ffn_norm, D, "rms_ffn_weight");
  for (int64_t l = 0; l < L; ++l) mat(m.layers[l].w1, Hd, D, "w1");
  for (int64_t l = 0; l < L; ++l) mat(m.layers[l].w2, D, Hd, "w2");
  for (int64_t l = 0; l < L; ++l) mat(m.layers[l].w3, Hd, D, "w3");
  vec(m.final_norm, D, "rms_final_weight");
  r.skip(c.max_seq_len * c.head_dim * 4, "freq_cis_real/imag");
  if (!c.tied_embeddings) mat(m.lm_head, V, D, "wcls");
  if (r.offset() != static_cast<int64_t>(fsize))
    throw ModelError(path + ": " + std::to_string(fsize - r.offset()) +
                     " unexpected trailing bytes after the weights (not a version-0 llama2.c checkpoint?)");
  m.name = std::filesystem::path(path).stem().string();
  m.source = path;
  m.format = "llama2c";
  m.weight_dtype = "f32";
  return m;
}

}  // namespace kvsim::model
