// Tokenizers (see tokenizer.hpp). The llama2.c encoder follows run.c's
// encode(): dummy prefix " ", UTF-8 code points looked up whole, byte
// fallback (+3), then repeatedly merge the adjacent pair whose merged piece
// has the highest score (first such pair on ties).
#include "traces/model/tokenizer.hpp"

#include <cctype>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace kvsim::model {

namespace fs = std::filesystem;

Llama2cTokenizer::Llama2cTokenizer(const std::string& path, int vocab_size) : path_(path) {
  vocab_ = vocab_size;
  bos_ = 1;
  eos_ = 2;
  std::ifstream f(path, std::ios::binary);
  if (!f) throw ModelError(path + ": cannot open tokenizer");
  int32_t max_len = 0;
  if (!f.read(reinterpret_cast<char*>(&max_len), 4)) throw ModelError(path + ": truncated tokenizer header");
  pieces_.resize(vocab_size);
  scores_.resize(vocab_size);
  for (int i = 0; i < vocab_size; ++i) {
    int32_t len = 0;
    if (!f.read(reinterpret_cast<char*>(&scores_[i]), 4) || !f.read(reinterpret_cast<char*>(&len), 4))
      throw ModelError(path + ": truncated tokenizer at token " + std::to_string(i) + " of " +
                       std::to_string(vocab_size) + " (does it belong to this model?)");
    if (len < 0 || len > 1024 || (max_len > 0 && len > max_len))
      throw ModelError(path + ": bad piece length " + std::to_string(len) + " at token " + std::to_string(i));
    pieces_[i].resize(len);
    if (len && !f.read(pieces_[i].data(), len))
      throw ModelError(path + ": truncated tokenizer at token " + std::to_string(i));
    index_.emplace(pieces_[i], i);
  }
}

int Llama2cTokenizer::lookup(const std::string& s) const {
  auto it = index_.find(s);
  return it == index_.end() ? -1 : it->second;
}

std::vector<int32_t> Llama2cTokenizer::encode(const std::string& text, bool bos) const {
  std::vector<int32_t> t;
  if (bos) t.push_back(bos_);
  if (!text.empty()) {
    const int sp = lookup(" ");
    if (sp >= 0) t.push_back(sp);
  }
  // Code points (a lead byte and up to 3 continuation bytes), as run.c.
  for (size_t i = 0; i < text.size();) {
    size_t j = i + 1;
    while (j < text.size() && (static_cast<unsigned char>(text[j]) & 0xC0) == 0x80 && j - i < 4) ++j;
    const std::string cp = text.substr(i, j - i);
    const int id = lookup(cp);
    if (id >= 0) {
      t.push_back(id);
    } else {
      for (unsigned char b : cp) t.push_back(static_cast<int32_t>(b) + 3);
    }
    i = j;
  }
  for (;;) {
    float best = -1e10f;
    int best_id = -1;
    size_t best_i = 0;
    for (size_t i = 0; i + 1 < t.size(); ++i) {
      const int id = lookup(pieces_[t[i]] + pieces_[t[i + 1]]);
      if (id >= 0 && scores_[id] > best) {
        best = scores_[id];
        best_id = id;
        best_i = i;
      }
    }
    if (best_id < 0) break;
    t[best_i] = best_id;
    t.erase(t.begin() + static_cast<std::ptrdiff_t>(best_i) + 1);
  }
  return t;
}

std::string Llama2cTokenizer::decode(int32_t prev, int32_t token) const {
  if (token < 0 || token >= vocab_) return "";
  std::string p = pieces_[token];
  if (prev == bos_ && !p.empty() && p[0] == ' ') p.erase(0, 1);
  unsigned int b = 0;
  char tail = 0;
  if (p.size() == 6 && std::sscanf(p.c_str(), "<0x%02X>%c", &b, &tail) == 1) p = std::string(1, static_cast<char>(b));
  if (p.size() == 1) {
    const unsigned char c = static_cast<unsigned char>(p[0]);
    if (!(std::isprint(c) || std::isspace(c))) return "";
  }
  return p;
}

ByteTokenizer::ByteTokenizer(int vocab_size, int bos, int eos) {
  vocab_ = vocab_size;
  bos_ = bos;
  eos_ = eos;
}

std::vector<int32_t> ByteTokenizer::encode(const std::string& text, bool bos) const {
  std::vector<int32_t> t;
  if (bos && bos_ >= 0) t.push_back(bos_);
  for (unsigned char c : text) t.push_back(c);
  return t;
}

std::string ByteTokenizer::decode(int32_t, int32_t token) const {
  if (token < 0 || token > 255) return "";
  return std::string(1, static_cast<char>(token));
}

std::unique_ptr<Tokenizer> tokenizer_for(const LlamaModel& model, const std::string& path, std::string* why) {
  const int V = model.cfg.vocab_size;
  if (!path.empty()) return std::make_unique<Llama2cTokenizer>(path, V);
  std::error_code ec;
  if (model.format == "llama2c") {
    const fs::path dir = fs::path(model.source).parent_path();
    for (const std::string& n : {std::string("tokenizer.bin"), "tok" + std::to_string(V) + ".bin"}) {
      const fs::path p = dir / n;
      if (fs::exists(p, ec)) return std::make_unique<Llama2cTokenizer>(p.string(), V);
    }
    if (why) *why = "no tokenizer.bin or tok" + std::to_string(V) + ".bin beside " + model.source + " (give --tokenizer)";
    return nullptr;
  }
  if (model.format == "hf") {
    const fs::path dir(model.source);
    for (const char* n : {"tokenizer.json", "tokenizer.model"})
      if (fs::exists(dir / n, ec)) {
        if (why) *why = std::string(n) + " tokenizers are not implemented in the C++ runner (give --prompt-ids, or use traces/record_hf.py)";
        return nullptr;
      }
    if (V >= 256 && V <= 1024 && model.cfg.bos_id >= 256)
      return std::make_unique<ByteTokenizer>(V, model.cfg.bos_id, model.cfg.eos_id);
    if (why) *why = "no tokenizer found in " + model.source + " (give --prompt-ids)";
    return nullptr;
  }
  if (why) *why = "no tokenizer for a " + model.format + " model";
  return nullptr;
}

std::vector<int32_t> parse_token_ids(const std::string& s) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && (s[i] == ' ' || s[i] == ',')) ++i;
    if (i >= s.size()) break;
    size_t j = i;
    while (j < s.size() && (std::isdigit(static_cast<unsigned char>(s[j])) || (j == i && s[j] == '-'))) ++j;
    if (j == i || (j < s.size() && s[j] != ',' && s[j] != ' '))
      throw ModelError("token ids: bad text '" + s + "' (expected e.g. 1,2,3)");
    const long long v = std::stoll(s.substr(i, j - i));
    if (v < 0 || v > INT32_MAX) throw ModelError("token ids: " + s.substr(i, j - i) + " out of range");
    ids.push_back(static_cast<int32_t>(v));
    i = j;
  }
  if (ids.empty()) throw ModelError("token ids: none given");
  return ids;
}

}  // namespace kvsim::model
