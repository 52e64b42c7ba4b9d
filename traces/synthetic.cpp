// Synthetic trace generator (synthetic.hpp).
#include "traces/synthetic.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <stdexcept>
#include <thread>

namespace kvsim::traces {

namespace {

// ---- counter-based random numbers ----------------------------------------

constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ull;

inline uint64_t mix64(uint64_t z) {
  z += kGolden;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Streams: one per kind of random quantity.
enum Stream : uint64_t {
  kTokens = 1, kOutlierToken, kKeyFixed, kQueryFixed, kKeyNoise, kQueryShared, kQueryOwn, kValue
};

// splitmix64 sequence started from a hash of (seed, stream, a, b, c).
class Rng {
 public:
  Rng(uint64_t seed, uint64_t stream, uint64_t a, uint64_t b, uint64_t c) {
    uint64_t s = mix64(seed);
    s = mix64(s ^ (stream * 0xd1b54a32d192ed03ull));
    s = mix64(s ^ a);
    s = mix64(s ^ (b + 0x632be59bd9b4e019ull));
    s = mix64(s ^ (c + 0x8cb92ba72f3d8dd7ull));
    state_ = s;
  }
  uint64_t next() {
    state_ += kGolden;
    uint64_t z = state_;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in (0, 1): 53 random bits, never 0 or 1.
  double uniform() { return (static_cast<double>(next() >> 11) + 0.5) * 0x1.0p-53; }
  // Standard normal, Box-Muller (both outputs used).
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double r = std::sqrt(-2.0 * std::log(uniform()));
    const double phi = 6.283185307179586 * uniform();
    spare_ = r * std::sin(phi);
    has_spare_ = true;
    return r * std::cos(phi);
  }
  // Student-t with df degrees of freedom, Bailey's polar method (1994).
  double student_t(double df) {
    for (;;) {
      const double u = 2.0 * uniform() - 1.0, v = 2.0 * uniform() - 1.0;
      const double w = u * u + v * v;
      if (w > 1.0 || w == 0.0) continue;
      return u * std::sqrt(df * (std::pow(w, -2.0 / df) - 1.0) / w);
    }
  }

 private:
  uint64_t state_;
  double spare_ = 0;
  bool has_spare_ = false;
};

constexpr double kValueCap = 30.0;    // Student-t draws beyond 30 sd are redrawn
constexpr double kClamp = 1024.0;     // final safety clamp, far inside |x| < 2048
constexpr double kChannelSpread = 0.3;  // log-std of the per-channel noise scales
constexpr double kQueryScale = 0.5;     // median query noise per channel
constexpr double kSinkKeyPerChannel = 4.0;  // token 0's sink component per channel
constexpr double kSinkChannelNoise = 0.05;  // key noise in the sink channels, relative
constexpr double kQueryInOutlier = 0.1;     // query noise in key-outlier channels, relative
constexpr double kLocalKeyRms = 0.7;        // per-channel rms of the key's local component
constexpr double kLocalOmegaLo = 0.03, kLocalOmegaHi = 0.8;  // rad/token

// Everything fixed for one (layer, KV head): channel scales, bands, biases.
struct HeadFixed {
  std::vector<double> key_scale;   // [D] noise std per channel
  std::vector<double> key_bias;    // [D] outlier channel bias (0 elsewhere)
  std::vector<double> local_dir;   // [D] w, unit norm over the local channels
  std::vector<double> sink_dir;    // [D] u, unit norm over the sink channels
  std::vector<double> query_gain;  // [D] relative query noise per channel
  double local_key = 0, local_query = 0;  // lambda_k, lambda_q
  double sink_key = 0;                    // kappa
  SynthLayout layout;
};

double pair_omega(const SynthParams& p, int i) {
  return std::pow(p.rope_theta, -2.0 * i / p.head_dim);
}

SynthLayout make_layout(const SynthParams& p, Rng& rng) {
  const int P2 = p.head_dim / 2;
  SynthLayout L;
  const int ns = p.sink_strength > 0 ? std::max(1, P2 / 32) : 0;
  std::vector<char> used(static_cast<size_t>(P2), 0);
  for (int i = P2 - ns; i < P2; ++i) {
    L.sink_pairs.push_back(i);
    used[static_cast<size_t>(i)] = 1;
  }
  if (p.local_strength > 0) {
    for (int i = 0; i < P2; ++i) {
      const double w = pair_omega(p, i);
      if (!used[static_cast<size_t>(i)] && w >= kLocalOmegaLo && w <= kLocalOmegaHi)
        L.local_pairs.push_back(i);
    }
    if (L.local_pairs.empty()) {  // tiny head dims: take the free pair closest to 0.1 rad/token
      int best = -1;
      for (int i = 0; i < P2; ++i)
        if (!used[static_cast<size_t>(i)] &&
            (best < 0 || std::fabs(std::log(pair_omega(p, i) / 0.1)) <
                             std::fabs(std::log(pair_omega(p, best) / 0.1))))
          best = i;
      if (best >= 0) L.local_pairs.push_back(best);
    }
    for (int i : L.local_pairs) used[static_cast<size_t>(i)] = 1;
  }
  // Outlier pairs: random among the lowest-frequency free pairs.
  std::vector<int> pool;
  for (int i = P2 - 1; i >= 0; --i)
    if (!used[static_cast<size_t>(i)]) pool.push_back(i);
  const int n = std::min<int>(p.key_outlier_channels, static_cast<int>(pool.size()));
  const size_t pool_size =
      std::min(pool.size(), static_cast<size_t>(std::max(2 * n, std::max(P2 / 4, 1))));
  pool.resize(pool_size);
  for (int k = 0; k < n; ++k) {  // partial Fisher-Yates
    const size_t j = static_cast<size_t>(k) +
                     static_cast<size_t>(rng.next() % (pool.size() - static_cast<size_t>(k)));
    std::swap(pool[static_cast<size_t>(k)], pool[j]);
    L.outlier_pairs.push_back(pool[static_cast<size_t>(k)]);
  }
  std::sort(L.outlier_pairs.begin(), L.outlier_pairs.end());
  std::sort(L.local_pairs.begin(), L.local_pairs.end());
  return L;
}

// E|mu + sigma Z|, Z standard normal (folded normal mean).
double folded_mean(double mu, double sigma) {
  if (sigma <= 0) return std::fabs(mu);
  const double r = mu / sigma;
  return sigma * std::sqrt(2.0 / M_PI) * std::exp(-0.5 * r * r) + mu * std::erf(r / std::sqrt(2.0));
}

HeadFixed make_head(const SynthParams& p, int layer, int g) {
  const int D = p.head_dim, P2 = D / 2;
  Rng rng(p.seed, kKeyFixed, static_cast<uint64_t>(layer), static_cast<uint64_t>(g), 0);
  HeadFixed h;
  h.layout = make_layout(p, rng);
  h.key_scale.assign(static_cast<size_t>(D), 0);
  h.key_bias.assign(static_cast<size_t>(D), 0);
  h.local_dir.assign(static_cast<size_t>(D), 0);
  h.sink_dir.assign(static_cast<size_t>(D), 0);
  h.query_gain.assign(static_cast<size_t>(D), 1.0);
  for (int c = 0; c < D; ++c) h.key_scale[static_cast<size_t>(c)] = std::exp(kChannelSpread * rng.normal());
  for (int i : h.layout.sink_pairs)
    for (int c : {i, i + P2}) {
      h.key_scale[static_cast<size_t>(c)] *= kSinkChannelNoise;
      h.sink_dir[static_cast<size_t>(c)] = rng.uniform() < 0.5 ? -1.0 : 1.0;
    }
  const int ns = static_cast<int>(h.layout.sink_pairs.size());
  if (ns > 0) {
    for (double& u : h.sink_dir) u /= std::sqrt(2.0 * ns);
    h.sink_key = kSinkKeyPerChannel * std::sqrt(2.0 * ns);
  }
  const int nl = static_cast<int>(h.layout.local_pairs.size());
  if (nl > 0) {
    // Equal weight per pair, random phase: sum_i |w_i|^2 cos(d w_i) is then
    // (1/nl) sum_i cos(d w_i), 1 at d = 0 and small far away.
    for (int i : h.layout.local_pairs) {
      const double phi = 6.283185307179586 * rng.uniform();
      h.local_dir[static_cast<size_t>(i)] = std::cos(phi) / std::sqrt(static_cast<double>(nl));
      h.local_dir[static_cast<size_t>(i + P2)] = std::sin(phi) / std::sqrt(static_cast<double>(nl));
    }
    h.local_key = kLocalKeyRms * std::sqrt(2.0 * nl);
    h.local_query = p.local_strength * std::sqrt(static_cast<double>(D)) / h.local_key;
  }
  // Outlier bias: key_outlier_scale x the median over the other channels of E|k_c|.
  std::vector<char> is_out(static_cast<size_t>(D), 0);
  for (int i : h.layout.outlier_pairs) is_out[static_cast<size_t>(i)] = is_out[static_cast<size_t>(i + P2)] = 1;
  std::vector<double> means;
  for (int c = 0; c < D; ++c)
    if (!is_out[static_cast<size_t>(c)])
      means.push_back(folded_mean(h.local_key * h.local_dir[static_cast<size_t>(c)],
                                  h.key_scale[static_cast<size_t>(c)]));
  double median = 1.0;
  if (!means.empty()) {
    std::sort(means.begin(), means.end());
    const size_t m = means.size();
    median = m % 2 ? means[m / 2] : 0.5 * (means[m / 2 - 1] + means[m / 2]);
  }
  for (int i : h.layout.outlier_pairs)
    for (int c : {i, i + P2}) {
      // The bias alone makes the channel's mean |k| ~ scale x median.
      h.key_bias[static_cast<size_t>(c)] =
          (rng.uniform() < 0.5 ? -1.0 : 1.0) * p.key_outlier_scale * median;
      h.query_gain[static_cast<size_t>(c)] = kQueryInOutlier;
    }
  return h;
}

// Per query head: noise std per channel.
std::vector<double> make_query_scale(const SynthParams& p, int layer, int qh) {
  Rng rng(p.seed, kQueryFixed, static_cast<uint64_t>(layer), static_cast<uint64_t>(qh), 0);
  std::vector<double> s(static_cast<size_t>(p.head_dim));
  for (double& x : s) x = kQueryScale * std::exp(kChannelSpread * rng.normal());
  return s;
}

// HF Llama rotate_half: x'_i = x_i cos - x_{i+D/2} sin, x'_{i+D/2} = x_{i+D/2} cos + x_i sin.
inline void rope_rotate(const double* x, double* out, const double* cs, const double* sn, int P2) {
  for (int i = 0; i < P2; ++i) {
    out[i] = x[i] * cs[i] - x[i + P2] * sn[i];
    out[i + P2] = x[i + P2] * cs[i] + x[i] * sn[i];
  }
}

inline float clamp_value(double x, int64_t& clamped) {
  if (x > kClamp) {
    ++clamped;
    return static_cast<float>(kClamp);
  }
  if (x < -kClamp) {
    ++clamped;
    return static_cast<float>(-kClamp);
  }
  return static_cast<float>(x);
}

bool is_outlier_token(const SynthParams& p, int64_t t) {
  if (t == 0 || p.outlier_token_rate <= 0) return false;
  Rng r(p.seed, kOutlierToken, 0, 0, static_cast<uint64_t>(t));
  return r.uniform() < p.outlier_token_rate;
}

}  // namespace

void check_synth_params(const SynthParams& p) {
  auto bad = [](const std::string& what, const std::string& why) {
    throw std::invalid_argument("synthetic trace: " + what + " " + why);
  };
  if (p.layers < 1) bad("--layers", "must be >= 1");
  if (p.q_heads < 1 || p.kv_heads < 1) bad("--q-heads/--kv-heads", "must be >= 1");
  if (p.q_heads % p.kv_heads != 0) bad("--kv-heads", "must divide --q-heads");
  if (p.head_dim < 2 || p.head_dim % 2 || p.head_dim > 256) bad("--head-dim", "must be even, 2..256");
  if (p.prefill < 0 || p.decode < 0) bad("--prefill/--decode", "must be >= 0");
  if (p.prefill + p.decode < 1) bad("--prefill + --decode", "must be >= 1 token");
  if (!(p.rope_theta > 1.0) || !std::isfinite(p.rope_theta)) bad("--rope-theta", "must be > 1");
  if (p.chunk_tokens < 1) bad("--chunk", "must be >= 1");
  if (p.gzip_level < 0 || p.gzip_level > 9) bad("--gzip", "must be 0..9");
  if (p.vocab < 1) bad("--vocab", "must be >= 1");
  if (p.key_outlier_channels < 0) bad("--key-outlier-channels", "must be >= 0");
  if (!(p.key_outlier_scale >= 0) || p.key_outlier_scale > 200)
    bad("--key-outlier-scale", "must be in [0, 200]");
  if (!(p.value_df > 2.0) || !std::isfinite(p.value_df))
    bad("--value-df", "must be > 2 (finite variance)");
  if (!(p.sink_strength >= 0) || p.sink_strength > 1e6) bad("--sink-strength", "must be in [0, 1e6]");
  if (!(p.local_strength >= 0) || p.local_strength > 30) bad("--local-strength", "must be in [0, 30]");
  if (!(p.outlier_token_rate >= 0 && p.outlier_token_rate <= 1))
    bad("--outlier-token-rate", "must be in [0, 1]");
  if (!(p.outlier_token_scale > 0) || p.outlier_token_scale > 100)
    bad("--outlier-token-scale", "must be in (0, 100]");
  if (!(p.gqa_correlation >= 0 && p.gqa_correlation <= 1))
    bad("--gqa-correlation", "must be in [0, 1]");
  if (p.threads < 0) bad("--threads", "must be >= 0");
}

SynthLayout synthetic_layout(const SynthParams& p, int layer, int kv_head) {
  check_synth_params(p);
  return make_head(p, layer, kv_head).layout;
}

SynthResult generate_synthetic(const SynthParams& p, const std::string& out,
                               const std::function<void(double)>& progress) {
  check_synth_params(p);
  const auto start = std::chrono::steady_clock::now();
  const int L = p.layers, Hq = p.q_heads, Hkv = p.kv_heads, D = p.head_dim, P2 = D / 2;
  const int G = Hq / Hkv;
  const int64_t T = p.prefill + p.decode;

  TraceMeta m;
  m.num_layers = L;
  m.num_q_heads = Hq;
  m.num_kv_heads = Hkv;
  m.head_dim = D;
  m.num_tokens = T;
  m.prefill_len = p.prefill;
  m.rope_theta = p.rope_theta;
  m.dtype = p.dtype;
  m.has_k_pre_rope = p.k_pre_rope;
  m.model = p.model;
  m.source = "kvsim trace gen";
  m.tool_revision = p.tool_revision;
  m.created = iso_time_now();
  m.seed = static_cast<int64_t>(p.seed);

  TraceWriter w(out, m, p.chunk_tokens, p.gzip_level);
  w.set_attribute("synth_key_outlier_channels", static_cast<int64_t>(p.key_outlier_channels));
  w.set_attribute("synth_key_outlier_scale", p.key_outlier_scale);
  w.set_attribute("synth_value_df", p.value_df);
  w.set_attribute("synth_sink_strength", p.sink_strength);
  w.set_attribute("synth_local_strength", p.local_strength);
  w.set_attribute("synth_outlier_token_rate", p.outlier_token_rate);
  w.set_attribute("synth_outlier_token_scale", p.outlier_token_scale);
  w.set_attribute("synth_gqa_correlation", p.gqa_correlation);
  w.set_attribute("synth_vocab", static_cast<int64_t>(p.vocab));

  // Fixed parameters: O(L * H * D), independent of T.
  std::vector<HeadFixed> heads;  // [L * Hkv]
  std::vector<std::vector<double>> qscale;  // [L * Hq][D]
  for (int l = 0; l < L; ++l)
    for (int g = 0; g < Hkv; ++g) heads.push_back(make_head(p, l, g));
  for (int l = 0; l < L; ++l)
    for (int h = 0; h < Hq; ++h) qscale.push_back(make_query_scale(p, l, h));
  std::vector<double> omega(static_cast<size_t>(P2));
  for (int i = 0; i < P2; ++i) omega[static_cast<size_t>(i)] = pair_omega(p, i);

  const int64_t Tc = std::clamp<int64_t>(p.chunk_tokens, 1, T);
  const int nthreads = std::max(1, p.threads > 0 ? p.threads
                                                 : static_cast<int>(std::thread::hardware_concurrency()));
  const double rho = p.gqa_correlation, rho_own = std::sqrt(1.0 - rho * rho);
  const double vscale = std::sqrt((p.value_df - 2.0) / p.value_df);
  const double sqrtD = std::sqrt(static_cast<double>(D));

  // Buffers for one chunk of one layer: O(Tc * H * D).
  std::vector<float> qb, kb, vb, kpb;
  std::vector<double> cs, sn;  // [Tc][P2]
  std::vector<char> outlier;   // [Tc]
  std::vector<int32_t> ids;
  std::vector<int64_t> clamped(static_cast<size_t>(nthreads), 0);

  for (int64_t t0 = 0; t0 < T; t0 += Tc) {
    const int64_t n = std::min(Tc, T - t0);
    ids.resize(static_cast<size_t>(n));
    cs.resize(static_cast<size_t>(n * P2));
    sn.resize(static_cast<size_t>(n * P2));
    outlier.resize(static_cast<size_t>(n));
    for (int64_t r = 0; r < n; ++r) {
      const int64_t t = t0 + r;
      Rng tr(p.seed, kTokens, 0, 0, static_cast<uint64_t>(t));
      ids[static_cast<size_t>(r)] =
          static_cast<int32_t>(((tr.next() >> 32) * static_cast<uint64_t>(p.vocab)) >> 32);
      outlier[static_cast<size_t>(r)] = is_outlier_token(p, t) ? 1 : 0;
      for (int i = 0; i < P2; ++i) {
        const double a = static_cast<double>(t) * omega[static_cast<size_t>(i)];
        cs[static_cast<size_t>(r * P2 + i)] = std::cos(a);
        sn[static_cast<size_t>(r * P2 + i)] = std::sin(a);
      }
    }
    w.write_tokens(t0, n, ids.data());

    for (int l = 0; l < L; ++l) {
      qb.resize(static_cast<size_t>(n * Hq * D));
      kb.resize(static_cast<size_t>(n * Hkv * D));
      vb.resize(static_cast<size_t>(n * Hkv * D));
      kpb.resize(p.k_pre_rope ? static_cast<size_t>(n * Hkv * D) : 0);

      // Rows [r0, r1) of this chunk; independent per row, so split across threads.
      auto gen_rows = [&](int64_t r0, int64_t r1, int64_t& nclamped) {
        std::vector<double> pre(static_cast<size_t>(D)), post(static_cast<size_t>(D)),
            shared(static_cast<size_t>(D));
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t t = t0 + r;
          const uint64_t ut = static_cast<uint64_t>(t);
          const double* c = &cs[static_cast<size_t>(r * P2)];
          const double* s = &sn[static_cast<size_t>(r * P2)];
          const double tok_scale = outlier[static_cast<size_t>(r)] ? p.outlier_token_scale : 1.0;
          for (int g = 0; g < Hkv; ++g) {
            const HeadFixed& hf = heads[static_cast<size_t>(l * Hkv + g)];
            const size_t kv_off = static_cast<size_t>((r * Hkv + g) * D);
            // Key: (noise + outlier bias) x token scale + local direction (+ sink at t = 0).
            Rng kr(p.seed, kKeyNoise, static_cast<uint64_t>(l), static_cast<uint64_t>(g), ut);
            for (int ch = 0; ch < D; ++ch) {
              const size_t cc = static_cast<size_t>(ch);
              double x = (hf.key_scale[cc] * kr.normal() + hf.key_bias[cc]) * tok_scale +
                         hf.local_key * hf.local_dir[cc];
              if (t == 0) x += hf.sink_key * hf.sink_dir[cc];
              pre[cc] = x;
            }
            rope_rotate(pre.data(), post.data(), c, s, P2);
            for (int ch = 0; ch < D; ++ch) {
              kb[kv_off + static_cast<size_t>(ch)] = clamp_value(post[static_cast<size_t>(ch)], nclamped);
              if (p.k_pre_rope)
                kpb[kv_off + static_cast<size_t>(ch)] = clamp_value(pre[static_cast<size_t>(ch)], nclamped);
            }
            // Value: unit-variance Student-t, no channel structure.
            Rng vr(p.seed, kValue, static_cast<uint64_t>(l), static_cast<uint64_t>(g), ut);
            for (int ch = 0; ch < D; ++ch) {
              double x;
              do x = vscale * vr.student_t(p.value_df);
              while (std::fabs(x) > kValueCap);
              vb[kv_off + static_cast<size_t>(ch)] = clamp_value(x * tok_scale, nclamped);
            }
            // Queries of this group: shared + own noise, local direction, then
            // RoPE, then the sink component a(t) u in the post-RoPE frame.
            Rng sr(p.seed, kQueryShared, static_cast<uint64_t>(l), static_cast<uint64_t>(g), ut);
            for (int ch = 0; ch < D; ++ch) shared[static_cast<size_t>(ch)] = sr.normal();
            const double sink_logit = std::log1p(p.sink_strength * static_cast<double>(t + 1));
            const double a = hf.sink_key > 0 ? sink_logit * sqrtD / hf.sink_key : 0.0;
            for (int j = 0; j < G; ++j) {
              const int qh = g * G + j;
              const std::vector<double>& qs = qscale[static_cast<size_t>(l * Hq + qh)];
              Rng qr(p.seed, kQueryOwn, static_cast<uint64_t>(l), static_cast<uint64_t>(qh), ut);
              for (int ch = 0; ch < D; ++ch) {
                const size_t cc = static_cast<size_t>(ch);
                const double noise = rho * shared[cc] + rho_own * qr.normal();
                pre[cc] = qs[cc] * hf.query_gain[cc] * noise + hf.local_query * hf.local_dir[cc];
              }
              rope_rotate(pre.data(), post.data(), c, s, P2);
              const size_t q_off = static_cast<size_t>((r * Hq + qh) * D);
              for (int ch = 0; ch < D; ++ch) {
                const size_t cc = static_cast<size_t>(ch);
                qb[q_off + cc] = clamp_value(post[cc] + a * hf.sink_dir[cc], nclamped);
              }
            }
          }
        }
      };
      const int nt = static_cast<int>(std::min<int64_t>(nthreads, n));
      if (nt <= 1) {
        gen_rows(0, n, clamped[0]);
      } else {
        std::vector<std::thread> pool;
        for (int k = 0; k < nt; ++k) {
          const int64_t r0 = n * k / nt, r1 = n * (k + 1) / nt;
          pool.emplace_back([&, r0, r1, k] { gen_rows(r0, r1, clamped[static_cast<size_t>(k)]); });
        }
        for (auto& th : pool) th.join();
      }
      w.write_rows(l, Tensor::q, t0, n, qb.data());
      w.write_rows(l, Tensor::k, t0, n, kb.data());
      w.write_rows(l, Tensor::v, t0, n, vb.data());
      if (p.k_pre_rope) w.write_rows(l, Tensor::k_pre_rope, t0, n, kpb.data());
    }
    if (progress) progress(static_cast<double>(t0 + n) / static_cast<double>(T));
  }
  SynthResult res;
  for (int64_t c : clamped) res.clamped_values += c;
  w.set_attribute("synth_clamped_values", res.clamped_values);
  w.close();
  res.meta = m;
  res.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return res;
}

}  // namespace kvsim::traces
