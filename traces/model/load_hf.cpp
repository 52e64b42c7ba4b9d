// Hugging Face checkpoints: config.json + safetensors (one file, or shards
// listed by model.safetensors.index.json), tensors in bf16, f16 or f32
// (converted to float32 exactly). Architectures: LlamaForCausalLM,
// MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM.
//
// safetensors: u64 little-endian header length N, N bytes of JSON
//   {"<name>": {"dtype": "BF16", "shape": [r, c], "data_offsets": [b, e]}, "__metadata__": {...}}
// then the data; offsets are relative to the end of the header.
#include <cctype>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "traces/model/json.hpp"
#include "traces/model/llama.hpp"

namespace kvsim::model {

namespace fs = std::filesystem;

namespace {

struct TensorEntry {
  std::string file;  // full path of its shard
  std::string dtype;
  std::vector<int64_t> shape;
  int64_t begin = 0, end = 0;  // absolute byte offsets in the file
};

// Reads the header of one safetensors file into `out`.
void read_safetensors_header(const std::string& path, std::map<std::string, TensorEntry>& out) {
  std::error_code ec;
  const auto fsize = fs::file_size(path, ec);
  if (ec) throw ModelError(path + ": cannot open (" + ec.message() + ")");
  std::ifstream f(path, std::ios::binary);
  if (!f) throw ModelError(path + ": cannot open");
  unsigned char lenb[8];
  if (fsize < 8 || !f.read(reinterpret_cast<char*>(lenb), 8)) throw ModelError(path + ": truncated safetensors header");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | lenb[i];
  if (n > 100u * 1024 * 1024 || 8 + n > fsize)
    throw ModelError(path + ": bad safetensors header length " + std::to_string(n) + " (file has " +
                     std::to_string(fsize) + " bytes)");
  std::string hdr(n, '\0');
  if (!f.read(hdr.data(), static_cast<std::streamsize>(n))) throw ModelError(path + ": truncated safetensors header");
  Json j;
  try {
    j = Json::parse(hdr, path + ": safetensors header");
  } catch (const JsonError& e) {
    throw ModelError(e.what());
  }
  if (!j.is_object()) throw ModelError(path + ": safetensors header is not a JSON object");
  const int64_t base = 8 + static_cast<int64_t>(n);
  for (const auto& [name, v] : j.members()) {
    if (name == "__metadata__") continue;
    try {
      TensorEntry e;
      e.file = path;
      e.dtype = v.find("dtype") ? v.find("dtype")->as_string() : "";
      const Json* shp = v.find("shape");
      const Json* offs = v.find("data_offsets");
      if (!shp || !offs || offs->size() != 2) throw ModelError("missing shape or data_offsets");
      for (const auto& d : shp->items()) e.shape.push_back(d.as_int());
      e.begin = base + offs->items()[0].as_int();
      e.end = base + offs->items()[1].as_int();
      if (e.end < e.begin || e.end > static_cast<int64_t>(fsize))
        throw ModelError("data [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                         ") beyond the file's " + std::to_string(fsize) + " bytes (truncated?)");
      out[name] = std::move(e);
    } catch (const std::exception& ex) {
      throw ModelError(path + ": tensor " + name + ": " + ex.what());
    }
  }
}

float bf16_to_float(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
float f16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const int e = (h >> 10) & 0x1f;
  uint32_t m = h & 0x3ffu;
  uint32_t u;
  if (e == 0x1f) {
    u = sign | 0x7f800000u | (m << 13);
  } else if (e != 0) {
    u = sign | (static_cast<uint32_t>(e - 15 + 127) << 23) | (m << 13);
  } else if (m == 0) {
    u = sign;
  } else {  // subnormal: normalise
    int ee = -14;
    while (!(m & 0x400u)) {
      m <<= 1;
      --ee;
    }
    u = sign | (static_cast<uint32_t>(ee + 127) << 23) | ((m & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

class TensorSource {
 public:
  TensorSource(std::string dir, std::map<std::string, TensorEntry> t) : dir_(std::move(dir)), t_(std::move(t)) {}
  bool has(const std::string& name) const { return t_.count(name) != 0; }
  const std::string& dtype_of(const std::string& name) const { return t_.at(name).dtype; }

  // Reads a tensor of exactly `shape` into dst (row-major, float32).
  void read(const std::string& name, const std::vector<int64_t>& shape, float* dst) {
    auto it = t_.find(name);
    if (it == t_.end()) throw ModelError(dir_ + ": missing tensor " + name);
    const TensorEntry& e = it->second;
    if (e.shape != shape)
      throw ModelError(e.file + ": tensor " + name + " has shape " + shape_str(e.shape) + ", expected " +
                       shape_str(shape));
    int64_t count = 1;
    for (int64_t s : shape) count *= s;
    int esize = 0;
    if (e.dtype == "BF16" || e.dtype == "F16") esize = 2;
    else if (e.dtype == "F32") esize = 4;
    else throw ModelError(e.file + ": tensor " + name + " has dtype " + e.dtype + " (supported: BF16, F16, F32)");
    if (e.end - e.begin != count * esize)
      throw ModelError(e.file + ": tensor " + name + ": " + std::to_string(e.end - e.begin) + " bytes for shape " +
                       shape_str(shape) + " of " + e.dtype);
    std::ifstream& f = stream(e.file);
    f.seekg(e.begin);
    if (esize == 4) {
      f.read(reinterpret_cast<char*>(dst), count * 4);
    } else {
      buf_.resize(static_cast<size_t>(count));
      f.read(reinterpret_cast<char*>(buf_.data()), count * 2);
      if (e.dtype == "BF16")
        for (int64_t i = 0; i < count; ++i) dst[i] = bf16_to_float(buf_[i]);
      else
        for (int64_t i = 0; i < count; ++i) dst[i] = f16_to_float(buf_[i]);
    }
    if (!f) throw ModelError(e.file + ": read error in tensor " + name);
  }
  void mat(const std::string& name, Mat& m, int64_t rows, int64_t cols) {
    m.resize(rows, cols);
    read(name, {rows, cols}, m.data());
  }
  void vec(const std::string& name, Vec& v, int64_t n) {
    v.resize(n);
    read(name, {n}, v.data());
  }

 private:
  std::ifstream& stream(const std::string& file) {
    auto it = files_.find(file);
    if (it == files_.end()) {
      it = files_.emplace(file, std::ifstream(file, std::ios::binary)).first;
      if (!it->second) throw ModelError(file + ": cannot open");
    }
    it->second.clear();
    return it->second;
  }
  std::string dir_;
  std::map<std::string, TensorEntry> t_;
  std::map<std::string, std::ifstream> files_;
  std::vector<uint16_t> buf_;
};

Json read_json(const std::string& path) {
  try {
    return Json::parse(read_text_file(path), path);
  } catch (const JsonError& e) {
    throw ModelError(e.what());
  }
}

// config.json -> LlamaConfig.
LlamaConfig parse_config(const Json& j, const std::string& path) {
  auto need = [&](const char* key) -> const Json& {
    const Json* v = j.find(key);
    if (!v || v->is_null()) throw ModelError(path + ": missing " + key);
    return *v;
  };
  auto get_int = [&](const char* key, int64_t def) -> int64_t {
    const Json* v = j.find(key);
    return (v && !v->is_null()) ? v->as_int() : def;
  };
  auto get_bool = [&](const char* key, bool def) -> bool {
    const Json* v = j.find(key);
    return (v && !v->is_null()) ? v->as_bool() : def;
  };
  LlamaConfig c;
  try {
    if (!j.is_object()) throw ModelError("not a JSON object");
    const Json* arch = j.find("architectures");
    if (!arch || !arch->is_array() || arch->size() < 1) throw ModelError(path + ": missing architectures");
    c.architecture = arch->items()[0].as_string();
    static const char* kKnown[] = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"};
    bool known = false;
    for (const char* k : kKnown) known |= c.architecture == k;
    if (!known)
      throw ModelError(path + ": architecture " + c.architecture +
                       " is not supported (supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, "
                       "Qwen3ForCausalLM)");
    const bool qwen2 = c.architecture == "Qwen2ForCausalLM", qwen3 = c.architecture == "Qwen3ForCausalLM";
    if (const Json* act = j.find("hidden_act"); act && act->is_string() && act->as_string() != "silu")
      throw ModelError(path + ": hidden_act " + act->as_string() + " is not supported (silu only)");
    c.dim = static_cast<int>(need("hidden_size").as_int());
    c.hidden_dim = static_cast<int>(need("intermediate_size").as_int());
    c.n_layers = static_cast<int>(need("num_hidden_layers").as_int());
    c.n_heads = static_cast<int>(need("num_attention_heads").as_int());
    c.n_kv_heads = static_cast<int>(get_int("num_key_value_heads", c.n_heads));
    c.head_dim = static_cast<int>(get_int("head_dim", c.n_heads > 0 ? c.dim / c.n_heads : 0));
    c.vocab_size = static_cast<int>(need("vocab_size").as_int());
    c.max_seq_len = get_int("max_position_embeddings", 2048);
    if (const Json* e = j.find("rms_norm_eps"); e && !e->is_null()) c.norm_eps = static_cast<float>(e->as_double());
    if (const Json* t = j.find("rope_theta"); t && !t->is_null()) c.rope_theta = t->as_double();
    c.rope_style = RopeStyle::half;
    c.tied_embeddings = get_bool("tie_word_embeddings", false);
    c.qkv_bias = qwen2 || get_bool("attention_bias", false);
    c.o_bias = !qwen2 && !qwen3 && get_bool("attention_bias", false);
    if (qwen3 && get_bool("attention_bias", false)) c.qkv_bias = c.o_bias = true;
    if (get_bool("mlp_bias", false)) throw ModelError(path + ": mlp_bias is not supported");
    c.qk_norm = qwen3;
    const bool use_sw = c.architecture == "MistralForCausalLM" ? true : get_bool("use_sliding_window", false);
    if (use_sw) c.sliding_window = get_int("sliding_window", 0);
    c.bos_id = static_cast<int>(get_int("bos_token_id", -1));
    if (const Json* e = j.find("eos_token_id"); e && e->is_array())  // Llama 3: a list; the first
      c.eos_id = e->size() ? static_cast<int>(e->items()[0].as_int()) : -1;
    else
      c.eos_id = static_cast<int>(get_int("eos_token_id", -1));
    if (const Json* rs = j.find("rope_scaling"); rs && !rs->is_null()) {
      std::string type;
      if (const Json* t = rs->find("rope_type")) type = t->as_string();
      else if (const Json* t2 = rs->find("type")) type = t2->as_string();
      if (type == "default" || type.empty()) {
        type = "none";
      } else if (type != "linear" && type != "llama3") {
        throw ModelError(path + ": rope_scaling type " + type + " is not supported (linear, llama3)");
      }
      c.rope_scaling_type = type;
      if (type != "none") c.rope_scaling_factor = rs->find("factor") ? rs->find("factor")->as_double() : 1.0;
      if (type == "llama3") {
        if (const Json* v = rs->find("low_freq_factor")) c.rope_low_freq_factor = v->as_double();
        if (const Json* v = rs->find("high_freq_factor")) c.rope_high_freq_factor = v->as_double();
        if (const Json* v = rs->find("original_max_position_embeddings")) c.rope_original_max_position = v->as_int();
      }
    }
  } catch (const ModelError&) {
    throw;
  } catch (const std::exception& e) {
    throw ModelError(path + ": " + e.what());
  }
  c.check(path);
  return c;
}

}  // namespace

LlamaModel load_hf(const std::string& dir) {
  const std::string cfg_path = (fs::path(dir) / "config.json").string();
  if (!fs::exists(cfg_path)) throw ModelError(dir + ": no config.json");
  const LlamaConfig c = parse_config(read_json(cfg_path), cfg_path);

  // Tensor headers: the index's shards, or model.safetensors.
  std::map<std::string, TensorEntry> tensors;
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  if (fs::exists(index)) {
    Json ij = read_json(index.string());
    const Json* wm = ij.find("weight_map");
    if (!wm || !wm->is_object()) throw ModelError(index.string() + ": missing weight_map");
    std::map<std::string, std::vector<std::string>> by_file;
    for (const auto& [name, file] : wm->members()) by_file[file.as_string()].push_back(name);
    for (const auto& [file, names] : by_file) {
      const fs::path shard = fs::path(dir) / file;
      if (!fs::exists(shard))
        throw ModelError(dir + ": shard " + file + " (listed in model.safetensors.index.json for " +
                         std::to_string(names.size()) + " tensors, e.g. " + names[0] + ") not found");
      std::map<std::string, TensorEntry> here;
      read_safetensors_header(shard.string(), here);
      for (const auto& n : names) {
        auto it = here.find(n);
        if (it == here.end())
          throw ModelError(shard.string() + ": tensor " + n + " listed in the index is not in the shard");
        tensors[n] = it->second;
      }
    }
  } else {
    const fs::path single = fs::path(dir) / "model.safetensors";
    if (!fs::exists(single))
      throw ModelError(dir + ": neither model.safetensors.index.json nor model.safetensors found");
    read_safetensors_header(single.string(), tensors);
  }

  LlamaModel m;
  m.cfg = c;
  TensorSource src(dir, std::move(tensors));
  const int64_t D = c.dim, Hd = c.hidden_dim, V = c.vocab_size, qd = c.q_dim(), kv = c.kv_dim(), hd = c.head_dim;
  src.mat("model.embed_tokens.weight", m.tok_emb, V, D);
  m.weight_dtype = src.dtype_of("model.embed_tokens.weight");
  for (auto& ch : m.weight_dtype) ch = static_cast<char>(std::tolower(ch));
  m.layers.resize(c.n_layers);
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerWeights& w = m.layers[l];
    src.vec(p + "input_layernorm.weight", w.attn_norm, D);
    src.vec(p + "post_attention_layernorm.weight", w.ffn_norm, D);
    src.mat(p + "self_attn.q_proj.weight", w.wq, qd, D);
    src.mat(p + "self_attn.k_proj.weight", w.wk, kv, D);
    src.mat(p + "self_attn.v_proj.weight", w.wv, kv, D);
    src.mat(p + "self_attn.o_proj.weight", w.wo, D, qd);
    if (c.qkv_bias) {
      src.vec(p + "self_attn.q_proj.bias", w.bq, qd);
      src.vec(p + "self_attn.k_proj.bias", w.bk, kv);
      src.vec(p + "self_attn.v_proj.bias", w.bv, kv);
    }
    if (c.o_bias) src.vec(p + "self_attn.o_proj.bias", w.bo, D);
    if (c.qk_norm) {
      src.vec(p + "self_attn.q_norm.weight", w.q_norm, hd);
      src.vec(p + "self_attn.k_norm.weight", w.k_norm, hd);
    }
    src.mat(p + "mlp.gate_proj.weight", w.w1, Hd, D);
    src.mat(p + "mlp.up_proj.weight", w.w3, Hd, D);
    src.mat(p + "mlp.down_proj.weight", w.w2, D, Hd);
  }
  src.vec("model.norm.weight", m.final_norm, D);
  if (!c.tied_embeddings) {
    if (!src.has("lm_head.weight"))
      throw ModelError(dir + ": missing tensor lm_head.weight (config says tie_word_embeddings is false)");
    src.mat("lm_head.weight", m.lm_head, V, D);
  }
  m.name = fs::path(dir).lexically_normal().filename().string();
  if (m.name.empty()) m.name = fs::path(dir).lexically_normal().parent_path().filename().string();
  m.source = dir;
  m.format = "hf";
  return m;
}

}  // namespace kvsim::model
