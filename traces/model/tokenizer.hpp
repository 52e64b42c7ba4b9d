// Tokenizers for the model runner: llama2.c's tokenizer.bin (sentencepiece
// BPE by merge scores, byte fallback, as run.c encodes and decodes), and the
// byte-level vocabulary of byte models (ids 0..255 are the bytes, specials
// above). Token ids can always be given directly (no tokenizer needed).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "traces/model/llama.hpp"

namespace kvsim::model {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // The ids of text, with BOS first when bos (and bos_id() >= 0).
  virtual std::vector<int32_t> encode(const std::string& text, bool bos) const = 0;
  // The text of token after prev (run.c: a leading space after BOS is dropped;
  // raw-byte tokens become their byte; unprintable lone bytes and specials print
  // nothing).
  virtual std::string decode(int32_t prev, int32_t token) const = 0;
  virtual std::string describe() const = 0;
  int bos_id() const { return bos_; }
  int eos_id() const { return eos_; }
  int vocab_size() const { return vocab_; }

 protected:
  int bos_ = -1, eos_ = -1, vocab_ = 0;
};

// llama2.c tokenizer.bin: int32 max_token_length, then per token float32
// score, int32 length, bytes. BOS = 1, EOS = 2, byte fallback ids = byte + 3.
class Llama2cTokenizer final : public Tokenizer {
 public:
  Llama2cTokenizer(const std::string& path, int vocab_size);
  std::vector<int32_t> encode(const std::string& text, bool bos) const override;
  std::string decode(int32_t prev, int32_t token) const override;
  std::string describe() const override { return "llama2.c BPE (" + path_ + ")"; }
  const std::string& piece(int32_t id) const { return pieces_[id]; }

 private:
  int lookup(const std::string& s) const;
  std::string path_;
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int> index_;  // piece -> first id
};

// Byte level: text bytes are the ids; BOS/EOS from the model's config.
class ByteTokenizer final : public Tokenizer {
 public:
  ByteTokenizer(int vocab_size, int bos, int eos);
  std::vector<int32_t> encode(const std::string& text, bool bos) const override;
  std::string decode(int32_t prev, int32_t token) const override;
  std::string describe() const override { return "byte-level (ids 0..255 = bytes)"; }
};

// The tokenizer of a model: `path` if given (a llama2.c tokenizer.bin);
// otherwise, for a llama2.c checkpoint, tokenizer.bin or tok<vocab>.bin beside
// it; for a Hugging Face folder without tokenizer.json/tokenizer.model whose
// vocabulary is 256 bytes plus specials (bos >= 256), the byte tokenizer.
// Returns nullptr when none applies, with the reason in *why (token ids must
// then be given directly).
std::unique_ptr<Tokenizer> tokenizer_for(const LlamaModel& model, const std::string& path, std::string* why);

// "1,2,3" -> ids (spaces allowed); throws ModelError on bad text.
std::vector<int32_t> parse_token_ids(const std::string& s);

}  // namespace kvsim::model
