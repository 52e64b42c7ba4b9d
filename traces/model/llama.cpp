// The Llama-family forward pass (see llama.hpp).
#include "traces/model/llama.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <random>

namespace kvsim::model {

namespace fs = std::filesystem;

void LlamaConfig::check(const std::string& what) const {
  auto bad = [&](const std::string& p) { throw ModelError(what + ": " + p); };
  if (dim <= 0 || hidden_dim <= 0 || n_layers <= 0 || n_heads <= 0 || n_kv_heads <= 0 || head_dim <= 0 ||
      vocab_size <= 0)
    bad("non-positive geometry (dim " + std::to_string(dim) + ", hidden " + std::to_string(hidden_dim) +
        ", layers " + std::to_string(n_layers) + ", heads " + std::to_string(n_heads) + "/" +
        std::to_string(n_kv_heads) + ", head dim " + std::to_string(head_dim) + ", vocab " +
        std::to_string(vocab_size) + ")");
  if (n_heads % n_kv_heads != 0)
    bad("query heads " + std::to_string(n_heads) + " not a multiple of KV heads " + std::to_string(n_kv_heads));
  if (head_dim % 2 != 0) bad("head dim " + std::to_string(head_dim) + " is odd (RoPE needs pairs)");
  if (max_seq_len <= 0) bad("non-positive context length");
  if (!(rope_theta > 0)) bad("rope_theta must be positive");
  if (rope_scaling_type != "none" && rope_scaling_type != "linear" && rope_scaling_type != "llama3")
    bad("rope scaling '" + rope_scaling_type + "' not supported (none, linear, llama3)");
  if (rope_scaling_type != "none" && !(rope_scaling_factor > 0)) bad("rope scaling factor must be positive");
  if (rope_scaling_type == "llama3" &&
      (rope_original_max_position <= 0 || !(rope_high_freq_factor > rope_low_freq_factor)))
    bad("llama3 rope scaling needs original_max_position_embeddings > 0 and high_freq_factor > low_freq_factor");
}

// ---------------------------------------------------------------- RoPE
std::vector<float> rope_inv_freq(const LlamaConfig& cfg) {
  const int half = cfg.head_dim / 2;
  std::vector<float> f(static_cast<size_t>(half));
  for (int i = 0; i < half; ++i)
    f[i] = 1.0f / std::pow(static_cast<float>(cfg.rope_theta),
                           static_cast<float>(2 * i) / static_cast<float>(cfg.head_dim));
  if (cfg.rope_scaling_type == "linear") {
    for (auto& x : f) x = static_cast<float>(x / cfg.rope_scaling_factor);
  } else if (cfg.rope_scaling_type == "llama3") {
    // transformers' _compute_llama3_parameters.
    const double factor = cfg.rope_scaling_factor, lo = cfg.rope_low_freq_factor, hi = cfg.rope_high_freq_factor;
    const double old_ctx = static_cast<double>(cfg.rope_original_max_position);
    const double low_wavelen = old_ctx / lo, high_wavelen = old_ctx / hi;
    for (auto& x : f) {
      const double inv = x;
      const double wavelen = 2.0 * M_PI / inv;
      double out = wavelen > low_wavelen ? inv / factor : inv;
      if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {
        const double s = (old_ctx / wavelen - lo) / (hi - lo);
        out = (1 - s) * out / factor + s * out;
      }
      x = static_cast<float>(out);
    }
  }
  return f;
}

namespace {

// cos/sin of every pair's angle at one position, [D/2] each, float32.
void rope_cos_sin(const std::vector<float>& inv_freq, int64_t pos, std::vector<float>& c, std::vector<float>& s) {
  c.resize(inv_freq.size());
  s.resize(inv_freq.size());
  for (size_t i = 0; i < inv_freq.size(); ++i) {
    const float a = static_cast<float>(pos) * inv_freq[i];
    c[i] = std::cos(a);
    s[i] = std::sin(a);
  }
}

void rope_rotate(RopeStyle style, int d, const float* c, const float* s, float* x) {
  const int half = d / 2;
  for (int i = 0; i < half; ++i) {
    const int a = style == RopeStyle::interleaved ? 2 * i : i;
    const int b = style == RopeStyle::interleaved ? 2 * i + 1 : i + half;
    const float v0 = x[a], v1 = x[b];
    x[a] = v0 * c[i] - v1 * s[i];
    x[b] = v0 * s[i] + v1 * c[i];
  }
}

// x * w / sqrt(mean(x^2) + eps) (run.c / transformers' LlamaRMSNorm, float32).
void rmsnorm(const float* x, const Vec& w, float eps, int n, float* out) {
  float ss = 0;
  for (int i = 0; i < n; ++i) ss += x[i] * x[i];
  ss = ss / static_cast<float>(n) + eps;
  const float r = 1.0f / std::sqrt(ss);
  for (int i = 0; i < n; ++i) out[i] = w[i] * (x[i] * r);
}

// One query head against T rows of keys/values with a row stride (floats).
// scores: scratch [T]. Softmax as run.c: max, expf, sum, divide.
void attend_head(const float* q, const float* K, const float* V, int64_t T, int64_t stride, int d, float* out,
                 std::vector<float>& scores) {
  using CMap = Eigen::Map<const Mat, 0, Eigen::OuterStride<>>;
  scores.resize(static_cast<size_t>(T));
  CMap Km(K, T, d, Eigen::OuterStride<>(stride));
  CMap Vm(V, T, d, Eigen::OuterStride<>(stride));
  Eigen::Map<const Vec> qv(q, d);
  Eigen::Map<Vec> sv(scores.data(), T);
  sv.noalias() = Km * qv;
  sv *= 1.0f / std::sqrt(static_cast<float>(d));
  const float mx = sv.maxCoeff();
  float sum = 0;
  for (int64_t t = 0; t < T; ++t) {
    scores[t] = std::exp(scores[t] - mx);
    sum += scores[t];
  }
  sv /= sum;
  Eigen::Map<Vec> ov(out, d);
  ov.noalias() = Vm.transpose() * sv;
}

}  // namespace

void apply_rope(const LlamaConfig& cfg, const std::vector<float>& inv_freq, float* x, int64_t pos) {
  std::vector<float> c, s;
  rope_cos_sin(inv_freq, pos, c, s);
  rope_rotate(cfg.rope_style, cfg.head_dim, c.data(), s.data(), x);
}

void causal_attention(const LlamaConfig& cfg, const float* q, const float* k, const float* v, int64_t n,
                      float* out) {
  const int d = cfg.head_dim, hq = cfg.n_heads, hkv = cfg.n_kv_heads, rep = hq / hkv;
  std::vector<float> scores;
  for (int64_t i = 0; i < n; ++i)
    for (int h = 0; h < hq; ++h) {
      const int g = h / rep;
      attend_head(q + (i * hq + h) * d, k + g * d, v + g * d, i + 1, static_cast<int64_t>(hkv) * d, d,
                  out + (i * hq + h) * d, scores);
    }
}

// ---------------------------------------------------------------- FloatKVCache
FloatKVCache::FloatKVCache(const LlamaConfig& cfg)
    : hq_(cfg.n_heads), hkv_(cfg.n_kv_heads), d_(cfg.head_dim), k_(cfg.n_layers), v_(cfg.n_layers) {}

void FloatKVCache::prefill(int layer, const float* K, const float* V, int64_t n) {
  const size_t e = static_cast<size_t>(n) * hkv_ * d_;
  k_[layer].insert(k_[layer].end(), K, K + e);
  v_[layer].insert(v_[layer].end(), V, V + e);
}
void FloatKVCache::append(int layer, const float* k, const float* v) { prefill(layer, k, v, 1); }
int64_t FloatKVCache::size(int layer) const {
  return static_cast<int64_t>(k_[layer].size()) / (static_cast<int64_t>(hkv_) * d_);
}
void FloatKVCache::attend(int layer, const float* q, float* out) {
  const int64_t T = size(layer);
  if (T < 1) throw ModelError("attention over an empty cache (layer " + std::to_string(layer) + ")");
  const int rep = hq_ / hkv_;
  for (int h = 0; h < hq_; ++h) {
    const int g = h / rep;
    attend_head(q + h * d_, k_[layer].data() + g * d_, v_[layer].data() + g * d_, T,
                static_cast<int64_t>(hkv_) * d_, d_, out + h * d_, scores_);
  }
}

// ---------------------------------------------------------------- runner
LlamaRunner::LlamaRunner(const LlamaModel& model, KVCache& cache)
    : m_(model), cache_(cache), inv_freq_(rope_inv_freq(model.cfg)) {
  hidden_.assign(model.cfg.n_layers, std::vector<float>(model.cfg.dim));
  attn_.assign(model.cfg.n_layers, std::vector<float>(model.cfg.q_dim()));
  logits_.resize(model.cfg.vocab_size);
}

void LlamaRunner::check_token(int32_t t) const {
  if (t < 0 || t >= m_.cfg.vocab_size)
    throw ModelError("token id " + std::to_string(t) + " outside the vocabulary [0, " +
                     std::to_string(m_.cfg.vocab_size) + ")");
}
void LlamaRunner::check_pos(int64_t end) const {
  if (end > m_.cfg.max_seq_len)
    throw ModelError("sequence of " + std::to_string(end) + " tokens exceeds the model's context " +
                     std::to_string(m_.cfg.max_seq_len));
  if (m_.cfg.sliding_window > 0 && end > m_.cfg.sliding_window)
    throw ModelError("sequence of " + std::to_string(end) + " tokens exceeds the sliding window " +
                     std::to_string(m_.cfg.sliding_window) + " (sliding-window attention is not modelled)");
}

namespace {

// Adds bias rows, applies qk-norm per head (in place): X [n][H*D].
void bias_and_norm(Mat& X, const Vec& bias, const Vec& norm, int heads, int d, float eps) {
  if (bias.size()) X.rowwise() += bias.transpose();
  if (norm.size()) {
    std::vector<float> tmp(static_cast<size_t>(d));
    for (Eigen::Index i = 0; i < X.rows(); ++i)
      for (int h = 0; h < heads; ++h) {
        float* p = X.row(i).data() + h * d;
        rmsnorm(p, norm, eps, d, tmp.data());
        std::copy(tmp.begin(), tmp.end(), p);
      }
  }
}

float silu(float x) { return x * (1.0f / (1.0f + std::exp(-x))); }

}  // namespace

const std::vector<float>& LlamaRunner::prefill(const std::vector<int32_t>& tokens) {
  const LlamaConfig& c = m_.cfg;
  if (pos_ != 0) throw ModelError("prefill after the first token");
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n < 1) throw ModelError("empty prompt");
  check_pos(n);
  for (int32_t t : tokens) check_token(t);
  const int d = c.head_dim;
  Mat X(n, c.dim);
  for (int64_t i = 0; i < n; ++i) X.row(i) = m_.tok_emb.row(tokens[i]);
  Mat Nm(n, c.dim), Q, K, V, Kpre, A(n, c.q_dim()), G, U;
  std::vector<float> cs, sn;
  std::vector<std::vector<float>> cos_t(n), sin_t(n);
  for (int64_t i = 0; i < n; ++i) rope_cos_sin(inv_freq_, i, cos_t[i], sin_t[i]);
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& w = m_.layers[l];
    for (int64_t i = 0; i < n; ++i) rmsnorm(X.row(i).data(), w.attn_norm, c.norm_eps, c.dim, Nm.row(i).data());
    Q.noalias() = Nm * w.wq.transpose();
    K.noalias() = Nm * w.wk.transpose();
    V.noalias() = Nm * w.wv.transpose();
    bias_and_norm(Q, w.bq, w.q_norm, c.n_heads, d, c.norm_eps);
    bias_and_norm(K, w.bk, w.k_norm, c.n_kv_heads, d, c.norm_eps);
    if (w.bv.size()) V.rowwise() += w.bv.transpose();
    Kpre = K;
    for (int64_t i = 0; i < n; ++i) {
      for (int h = 0; h < c.n_heads; ++h) rope_rotate(c.rope_style, d, cos_t[i].data(), sin_t[i].data(), Q.row(i).data() + h * d);
      for (int h = 0; h < c.n_kv_heads; ++h)
        rope_rotate(c.rope_style, d, cos_t[i].data(), sin_t[i].data(), K.row(i).data() + h * d);
    }
    if (observer_) observer_(l, 0, n, Q.data(), K.data(), V.data(), Kpre.data());
    causal_attention(c, Q.data(), K.data(), V.data(), n, A.data());
    cache_.prefill(l, K.data(), V.data(), n);
    X.noalias() += A * w.wo.transpose();
    if (w.bo.size()) X.rowwise() += w.bo.transpose();
    for (int64_t i = 0; i < n; ++i) rmsnorm(X.row(i).data(), w.ffn_norm, c.norm_eps, c.dim, Nm.row(i).data());
    G.noalias() = Nm * w.w1.transpose();
    U.noalias() = Nm * w.w3.transpose();
    for (Eigen::Index i = 0; i < G.size(); ++i) G.data()[i] = silu(G.data()[i]) * U.data()[i];
    X.noalias() += G * w.w2.transpose();
    std::copy(X.row(n - 1).data(), X.row(n - 1).data() + c.dim, hidden_[l].begin());
    std::copy(A.row(n - 1).data(), A.row(n - 1).data() + c.q_dim(), attn_[l].begin());
  }
  std::vector<float> xn(c.dim);
  rmsnorm(X.row(n - 1).data(), m_.final_norm, c.norm_eps, c.dim, xn.data());
  Eigen::Map<Vec>(logits_.data(), c.vocab_size).noalias() = m_.classifier() * Eigen::Map<const Vec>(xn.data(), c.dim);
  pos_ = n;
  return logits_;
}

const std::vector<float>& LlamaRunner::step(int32_t token) {
  const LlamaConfig& c = m_.cfg;
  if (pos_ == 0) throw ModelError("step before prefill (run the prompt first)");
  check_token(token);
  check_pos(pos_ + 1);
  const int d = c.head_dim;
  Vec x = m_.tok_emb.row(token).transpose();
  Vec xn(c.dim), q(c.q_dim()), k(c.kv_dim()), v(c.kv_dim()), kpre, a(c.q_dim()), g, u;
  std::vector<float> cs, sn;
  rope_cos_sin(inv_freq_, pos_, cs, sn);
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& w = m_.layers[l];
    rmsnorm(x.data(), w.attn_norm, c.norm_eps, c.dim, xn.data());
    q.noalias() = w.wq * xn;
    k.noalias() = w.wk * xn;
    v.noalias() = w.wv * xn;
    if (w.bq.size()) q += w.bq;
    if (w.bk.size()) k += w.bk;
    if (w.bv.size()) v += w.bv;
    if (w.q_norm.size()) {
      std::vector<float> tmp(d);
      for (int h = 0; h < c.n_heads; ++h) {
        rmsnorm(q.data() + h * d, w.q_norm, c.norm_eps, d, tmp.data());
        std::copy(tmp.begin(), tmp.end(), q.data() + h * d);
      }
      for (int h = 0; h < c.n_kv_heads; ++h) {
        rmsnorm(k.data() + h * d, w.k_norm, c.norm_eps, d, tmp.data());
        std::copy(tmp.begin(), tmp.end(), k.data() + h * d);
      }
    }
    kpre = k;
    for (int h = 0; h < c.n_heads; ++h) rope_rotate(c.rope_style, d, cs.data(), sn.data(), q.data() + h * d);
    for (int h = 0; h < c.n_kv_heads; ++h) rope_rotate(c.rope_style, d, cs.data(), sn.data(), k.data() + h * d);
    if (observer_) observer_(l, pos_, 1, q.data(), k.data(), v.data(), kpre.data());
    cache_.append(l, k.data(), v.data());
    cache_.attend(l, q.data(), a.data());
    x.noalias() += w.wo * a;
    if (w.bo.size()) x += w.bo;
    rmsnorm(x.data(), w.ffn_norm, c.norm_eps, c.dim, xn.data());
    g.noalias() = w.w1 * xn;
    u.noalias() = w.w3 * xn;
    for (Eigen::Index i = 0; i < g.size(); ++i) g[i] = silu(g[i]) * u[i];
    x.noalias() += w.w2 * g;
    std::copy(x.data(), x.data() + c.dim, hidden_[l].begin());
    std::copy(a.data(), a.data() + c.q_dim(), attn_[l].begin());
  }
  cache_.end_step();
  rmsnorm(x.data(), m_.final_norm, c.norm_eps, c.dim, xn.data());
  Eigen::Map<Vec>(logits_.data(), c.vocab_size).noalias() = m_.classifier() * xn;
  ++pos_;
  return logits_;
}

int argmax(const std::vector<float>& logits) {
  int best = 0;
  for (size_t i = 1; i < logits.size(); ++i)
    if (logits[i] > logits[best]) best = static_cast<int>(i);
  return best;
}

// ---------------------------------------------------------------- random model
LlamaModel random_model(const LlamaConfig& cfg, uint64_t seed, float scale) {
  cfg.check("random model");
  std::mt19937_64 rng(seed);
  // Own uniform mapping (the standard distributions are not portable).
  auto uni = [&]() { return static_cast<float>(static_cast<double>(rng() >> 11) * 0x1.0p-53 * 2.0 - 1.0); };
  auto mat = [&](int r, int c) {
    Mat m(r, c);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = scale * uni();
    return m;
  };
  auto vec = [&](int n, float center, float s) {
    Vec v(n);
    for (int i = 0; i < n; ++i) v[i] = center + s * uni();
    return v;
  };
  LlamaModel m;
  m.cfg = cfg;
  m.name = "random";
  m.source = "random seed " + std::to_string(seed);
  m.format = "random";
  m.weight_dtype = "f32";
  m.tok_emb = mat(cfg.vocab_size, cfg.dim);
  for (int l = 0; l < cfg.n_layers; ++l) {
    LayerWeights w;
    w.attn_norm = vec(cfg.dim, 1.0f, 0.2f);
    w.ffn_norm = vec(cfg.dim, 1.0f, 0.2f);
    w.wq = mat(cfg.q_dim(), cfg.dim);
    w.wk = mat(cfg.kv_dim(), cfg.dim);
    w.wv = mat(cfg.kv_dim(), cfg.dim);
    w.wo = mat(cfg.dim, cfg.q_dim());
    if (cfg.qkv_bias) {
      w.bq = vec(cfg.q_dim(), 0, scale);
      w.bk = vec(cfg.kv_dim(), 0, scale);
      w.bv = vec(cfg.kv_dim(), 0, scale);
    }
    if (cfg.o_bias) w.bo = vec(cfg.dim, 0, scale);
    if (cfg.qk_norm) {
      w.q_norm = vec(cfg.head_dim, 1.0f, 0.2f);
      w.k_norm = vec(cfg.head_dim, 1.0f, 0.2f);
    }
    w.w1 = mat(cfg.hidden_dim, cfg.dim);
    w.w3 = mat(cfg.hidden_dim, cfg.dim);
    w.w2 = mat(cfg.dim, cfg.hidden_dim);
    m.layers.push_back(std::move(w));
  }
  m.final_norm = vec(cfg.dim, 1.0f, 0.2f);
  if (!cfg.tied_embeddings) m.lm_head = mat(cfg.vocab_size, cfg.dim);
  return m;
}

// ---------------------------------------------------------------- dispatch
LlamaModel load_model(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw ModelError(path + ": no such file or folder");
  if (fs::is_directory(path, ec)) {
    if (fs::exists(fs::path(path) / "config.json", ec)) return load_hf(path);
    throw ModelError(path + ": folder without config.json (expected a Hugging Face checkpoint)");
  }
  const fs::path p(path);
  const std::string ext = p.extension().string();
  if (p.filename() == "config.json" || ext == ".safetensors" || p.filename() == "model.safetensors.index.json")
    return load_hf(p.parent_path().empty() ? "." : p.parent_path().string());
  return load_llama2c(path);
}

}  // namespace kvsim::model
