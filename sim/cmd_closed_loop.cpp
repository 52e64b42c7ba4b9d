// `kvsim closed-loop --model M --method X --steps N --csv out.csv`
//
// Two kinds of run from the same prompt and sampler seed, in lockstep:
//   reference  FloatKVCache (float32 keys and values, float attention);
//   method     QuantKVCache: the model's float k, v, q enter Q11.20
//              (fx::entry_from_fp32), the method's streaming cache holds them,
//              decode_attention_ref attends, the Q.40 output leaves as double.
// Prefill is float attention in both (the serving engine's prefill); the
// prompt's keys and values then enter each cache in bulk.
//
// Modes:
//   teacher  every run is fed the reference's tokens: the error at step s is
//            the quantized cache's accumulated effect on an identical context;
//   free     every run feeds back its own tokens (same seed): what a user sees.
//
// Per step s (decode position P + s), per method, one CSV row:
//   kl            KL(p_ref || p_method) of the next-token distributions (nats,
//                 softmax at temperature 1 of each run's logits)
//   top1_agree    argmax of both logits equal
//   hidden_rel_l  ||h_method - h_ref|| / ||h_ref||, residual stream after layer l
//   attn_rel_lL_hH  ||a_method - a_ref|| / ||a_ref||, attention output of query head
//                 H of layer L (everything upstream included: the closed-loop error)
//   local_rel_lL_hH  the cache's own error at this step: the method's attention
//                 output against float attention over the same run's unquantized
//                 keys and values with the same query (what the open-loop replay
//                 measures, here on the closed-loop trajectory)
#include "sim/cmd_closed_loop.hpp"

#include <boost/program_options.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "sim/cli_common.hpp"
#include "traces/model/kv_cache.hpp"
#include "traces/model/llama.hpp"
#include "traces/model/sampler.hpp"
#include "traces/model/tokenizer.hpp"

namespace po = boost::program_options;
namespace md = kvsim::model;
namespace ref = kvsim::ref;

namespace {

using kvsim::sim::UsageError;

// The quantized cache plus a float shadow of the same keys and values: every
// attend also measures the cache's own error per head (local_rel).
class MeasuringCache final : public md::KVCache {
 public:
  MeasuringCache(const md::LlamaConfig& c, const ref::MethodConfig& m)
      : q_(c, m), shadow_(c), hq_(c.n_heads), d_(c.head_dim), buf_(static_cast<size_t>(c.q_dim())),
        local_(c.n_layers, std::vector<double>(c.n_heads, 0.0)) {}
  void prefill(int l, const float* K, const float* V, int64_t n) override {
    q_.prefill(l, K, V, n);
    shadow_.prefill(l, K, V, n);
  }
  void append(int l, const float* k, const float* v) override {
    q_.append(l, k, v);
    shadow_.append(l, k, v);
  }
  void attend(int l, const float* q, float* out) override {
    q_.attend(l, q, out);
    shadow_.attend(l, q, buf_.data());
    for (int h = 0; h < hq_; ++h) local_[l][h] = rel_l2(out + h * d_, buf_.data() + h * d_, d_);
  }
  void end_step() override { q_.end_step(); }
  int64_t size(int l) const override { return q_.size(l); }
  std::string describe() const override { return q_.describe(); }
  const std::vector<std::vector<double>>& local() const { return local_; }
  double bits_per_element() const { return q_.bits_per_element(); }

  static double rel_l2(const float* a, const float* b, int n) {
    double num = 0, den = 0;
    for (int i = 0; i < n; ++i) {
      const double d = static_cast<double>(a[i]) - b[i];
      num += d * d;
      den += static_cast<double>(b[i]) * b[i];
    }
    return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  }

 private:
  md::QuantKVCache q_;
  md::FloatKVCache shadow_;
  int hq_, d_;
  std::vector<float> buf_;
  std::vector<std::vector<double>> local_;
};

struct Run {
  std::string label;
  std::unique_ptr<md::KVCache> cache;
  MeasuringCache* meas = nullptr;  // null for the reference
  std::unique_ptr<md::LlamaRunner> runner;
  md::Sampler sampler;
  int32_t last = -1;
  const std::vector<float>* logits = nullptr;
  Run(float t, float p, uint64_t s) : sampler(t, p, s) {}
};

// KL(p || q) of softmax(a) and softmax(b), in double.
double kl_logits(const std::vector<float>& a, const std::vector<float>& b) {
  auto lse = [](const std::vector<float>& x) {
    double m = x[0];
    for (float v : x) m = std::max(m, static_cast<double>(v));
    double s = 0;
    for (float v : x) s += std::exp(v - m);
    return m + std::log(s);
  };
  const double la = lse(a), lb = lse(b);
  double kl = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double lpa = a[i] - la, lpb = b[i] - lb;
    kl += std::exp(lpa) * (lpa - lpb);
  }
  return std::max(0.0, kl);
}

struct Acc {  // per (mode, method): quarter means for the summary
  std::vector<double> kl, hid, local, top1;
};

double mean_range(const std::vector<double>& v, size_t a, size_t b) {
  if (b <= a) return 0;
  double s = 0;
  for (size_t i = a; i < b; ++i) s += v[i];
  return s / static_cast<double>(b - a);
}

std::string join_args(int argc, char** argv) {
  std::string s;
  for (int i = 0; i < argc; ++i) s += (i ? " " : "") + std::string(argv[i]);
  return s;
}

int run(int argc, char** argv) {
  std::string model_path, tokenizer, prompt, prompt_file, prompt_ids, csv, mode = "both";
  std::vector<std::string> methods;
  int bits = 0, group = 0, residual = 0;
  int64_t steps = 0;
  float temperature = 0, top_p = 1;
  uint64_t seed = 42;
  bool no_bos = false, quiet = false;
  po::options_description desc(
      "kvsim closed-loop: run a model with the full-precision cache and with quantized caches (bit-exact\n"
      "path) from the same prompt and seed, and write per-step divergence (KL, top-1 agreement, hidden-state\n"
      "and attention-output errors) in teacher-forced and free-running modes");
  desc.add_options()("help,h", "this help")
      ("model", po::value(&model_path)->required(), "Hugging Face folder or llama2.c .bin")
      ("tokenizer", po::value(&tokenizer), "llama2.c tokenizer.bin (see kvsim record --help)")
      ("prompt", po::value(&prompt), "prompt text (BOS prepended)")
      ("prompt-file", po::value(&prompt_file), "prompt text from a file")
      ("prompt-ids", po::value(&prompt_ids), "prompt as token ids 1,2,3")
      ("no-bos", po::bool_switch(&no_bos), "do not prepend BOS to a text prompt")
      ("steps", po::value(&steps)->required(), "decode steps N")
      ("method,m", po::value(&methods)->multitoken(), "method spec, repeatable (kvsim methods); default kivi")
      ("bits", po::value(&bits), "bits for every method that takes bits")
      ("group", po::value(&group), "group size for methods that take it")
      ("residual", po::value(&residual), "full-precision window for methods that take it")
      ("mode", po::value(&mode)->default_value("both"), "teacher, free or both")
      ("temperature", po::value(&temperature)->default_value(0.0f), "sampling temperature (0: greedy)")
      ("top-p", po::value(&top_p)->default_value(1.0f), "nucleus mass (1: off)")
      ("seed", po::value(&seed)->default_value(42), "sampling seed (every run uses it)")
      ("csv", po::value(&csv)->required(), "per-step results (CSV, one row per mode, method and step)")
      ("quiet", po::bool_switch(&quiet), "no progress lines");
  po::variables_map vm;
  if (kvsim::sim::parse_command_line(argc, argv, desc, vm, "closed-loop")) return 0;
  if (!prompt_ids.empty() + !prompt_file.empty() + (vm.count("prompt") > 0) != 1)
    throw UsageError("closed-loop: give exactly one of --prompt, --prompt-file, --prompt-ids");
  if (steps < 1) throw UsageError("closed-loop: --steps must be >= 1");
  std::vector<std::string> modes;
  if (mode == "both") modes = {"teacher", "free"};
  else if (mode == "teacher" || mode == "free") modes = {mode};
  else throw UsageError("closed-loop: --mode must be teacher, free or both");
  if (methods.empty()) methods.push_back("kivi");
  std::vector<ref::MethodConfig> mcfg;
  for (const auto& s : methods) mcfg.push_back(kvsim::sim::parse_method_spec(s, bits, group, residual));

  const md::LlamaModel model = md::load_model(model_path);
  const md::LlamaConfig& c = model.cfg;
  std::string why;
  std::unique_ptr<md::Tokenizer> tok = md::tokenizer_for(model, tokenizer, &why);
  std::vector<int32_t> p;
  if (!prompt_ids.empty()) {
    p = md::parse_token_ids(prompt_ids);
  } else {
    if (!tok) throw UsageError("closed-loop: " + why);
    std::string text = prompt;
    if (!prompt_file.empty()) {
      std::ifstream f(prompt_file, std::ios::binary);
      if (!f) throw UsageError("closed-loop: cannot read " + prompt_file);
      std::ostringstream ss;
      ss << f.rdbuf();
      text = ss.str();
    }
    p = tok->encode(text, !no_bos);
  }
  const int64_t P = static_cast<int64_t>(p.size());
  if (P < 1) throw UsageError("closed-loop: empty prompt");
  if (P + steps > c.max_seq_len)
    throw UsageError("closed-loop: prompt + steps exceeds the model's context " + std::to_string(c.max_seq_len));

  const std::string sampling = temperature > 0 ? "temperature=" + std::to_string(temperature) + " top_p=" +
                                                     std::to_string(top_p) + " seed=" + std::to_string(seed)
                                               : "greedy";
  std::printf("kvsim closed-loop (git %s)\n  model=%s (%s, %d layers, %d/%d heads, head dim %d)\n"
              "  prompt=%lld tokens, steps=%lld, %s, modes=%s, methods=%s\n  csv=%s\n",
              kvsim::sim::git_revision(), model.source.c_str(), c.architecture.c_str(), c.n_layers, c.n_heads,
              c.n_kv_heads, c.head_dim, static_cast<long long>(P), static_cast<long long>(steps), sampling.c_str(),
              mode.c_str(), kvsim::sim::describe_methods(mcfg).c_str(), csv.c_str());

  std::ofstream out(csv + ".tmp");
  if (!out) throw std::runtime_error(csv + ": cannot write");
  out << "# kvsim closed-loop; git " << kvsim::sim::git_revision() << "; model " << model.source << "; "
      << sampling << "; command: " << join_args(argc, argv) << "\n";
  out << "mode,method,bits_per_element,step,position,token_ref,token_method,top1_agree,kl";
  for (int l = 0; l < c.n_layers; ++l) out << ",hidden_rel_l" << l;
  for (int l = 0; l < c.n_layers; ++l)
    for (int h = 0; h < c.n_heads; ++h) out << ",attn_rel_l" << l << "_h" << h;
  for (int l = 0; l < c.n_layers; ++l)
    for (int h = 0; h < c.n_heads; ++h) out << ",local_rel_l" << l << "_h" << h;
  out << "\n";
  out.precision(6);

  struct SummaryRow {
    std::string mode, label;
    double bpe;
    Acc acc;
    int64_t first_divergence = -1;
    std::string text;
  };
  std::vector<SummaryRow> summary;
  const auto t_start = std::chrono::steady_clock::now();
  std::string ref_text_free;

  for (const std::string& md_name : modes) {
    const bool teacher = md_name == "teacher";
    std::vector<std::unique_ptr<Run>> runs;  // [0] reference, then one per method
    runs.push_back(std::make_unique<Run>(temperature, top_p, seed));
    runs[0]->label = "float32";
    runs[0]->cache = std::make_unique<md::FloatKVCache>(c);
    for (const auto& m : mcfg) {
      auto r = std::make_unique<Run>(temperature, top_p, seed);
      r->label = ref::method_label(m);
      auto mc = std::make_unique<MeasuringCache>(c, m);
      r->meas = mc.get();
      r->cache = std::move(mc);
      runs.push_back(std::move(r));
    }
    for (auto& r : runs) {
      r->runner = std::make_unique<md::LlamaRunner>(model, *r->cache);
      r->logits = &r->runner->prefill(p);
      r->last = p.back();
    }
    std::vector<SummaryRow> rows(runs.size());
    std::vector<std::string> texts(runs.size());
    for (int64_t s = 0; s < steps; ++s) {
      // Choose the tokens of this step.
      const int32_t ref_next = runs[0]->sampler.sample(*runs[0]->logits);
      std::vector<int32_t> next(runs.size(), ref_next);
      if (!teacher)
        for (size_t i = 1; i < runs.size(); ++i) next[i] = runs[i]->sampler.sample(*runs[i]->logits);
      for (size_t i = 0; i < runs.size(); ++i) {
        if (tok) texts[i] += tok->decode(runs[i]->last, next[i]);
        runs[i]->last = next[i];
        runs[i]->logits = &runs[i]->runner->step(next[i]);
      }
      // Compare every method's state at position P + s with the reference's.
      const md::LlamaRunner& R = *runs[0]->runner;
      for (size_t i = 1; i < runs.size(); ++i) {
        const md::LlamaRunner& M = *runs[i]->runner;
        const int a0 = md::argmax(*runs[0]->logits), a1 = md::argmax(*runs[i]->logits);
        const double kl = kl_logits(*runs[0]->logits, *runs[i]->logits);
        SummaryRow& sr = rows[i];
        if (!teacher && sr.first_divergence < 0 && next[i] != ref_next) sr.first_divergence = s;
        out << md_name << "," << runs[i]->label << "," << runs[i]->meas->bits_per_element() << "," << s << ","
            << P + s << "," << ref_next << "," << (teacher ? a1 : next[i]) << "," << (a0 == a1) << "," << kl;
        double hid_last = 0;
        for (int l = 0; l < c.n_layers; ++l) {
          const double e = MeasuringCache::rel_l2(M.hidden()[l].data(), R.hidden()[l].data(), c.dim);
          out << "," << e;
          hid_last = e;
        }
        for (int l = 0; l < c.n_layers; ++l)
          for (int h = 0; h < c.n_heads; ++h)
            out << "," << MeasuringCache::rel_l2(M.attn_out()[l].data() + h * c.head_dim,
                                                 R.attn_out()[l].data() + h * c.head_dim, c.head_dim);
        double loc = 0;
        for (int l = 0; l < c.n_layers; ++l)
          for (int h = 0; h < c.n_heads; ++h) {
            out << "," << runs[i]->meas->local()[l][h];
            loc += runs[i]->meas->local()[l][h];
          }
        out << "\n";
        sr.acc.kl.push_back(kl);
        sr.acc.hid.push_back(hid_last);
        sr.acc.local.push_back(loc / (c.n_layers * c.n_heads));
        sr.acc.top1.push_back(a0 == a1);
      }
      if (!quiet && ((s + 1) % 500 == 0 || s + 1 == steps)) {
        const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
        std::fprintf(stderr, "  %s: step %lld/%lld (%.0f s)\n", md_name.c_str(), static_cast<long long>(s + 1),
                     static_cast<long long>(steps), el);
      }
    }
    for (size_t i = 1; i < runs.size(); ++i) {
      rows[i].mode = md_name;
      rows[i].label = runs[i]->label;
      rows[i].bpe = runs[i]->meas->bits_per_element();
      rows[i].text = texts[i];
      summary.push_back(std::move(rows[i]));
    }
    if (!teacher) ref_text_free = texts[0];
  }
  out.close();
  if (!out) throw std::runtime_error(csv + ": write failed");
  std::rename((csv + ".tmp").c_str(), csv.c_str());

  std::printf("\nquarters of the decode (Q1..Q4): mean KL(ref||method), mean hidden-state rel error of the last\n"
              "layer, mean local attention rel error (the cache's own error), top-1 agreement\n");
  std::printf("%-8s %-20s %6s %-39s %-39s %-39s %7s %s\n", "mode", "method", "bits", "KL Q1 Q2 Q3 Q4",
              "hidden_rel(last) Q1 Q2 Q3 Q4", "local_attn_rel Q1 Q2 Q3 Q4", "top1", "diverges");
  for (const auto& r : summary) {
    const size_t n = r.acc.kl.size();
    auto q4 = [&](const std::vector<double>& v) {
      char b[128];
      std::snprintf(b, sizeof b, "%9.2e %9.2e %9.2e %9.2e", mean_range(v, 0, n / 4), mean_range(v, n / 4, n / 2),
                    mean_range(v, n / 2, 3 * n / 4), mean_range(v, 3 * n / 4, n));
      return std::string(b);
    };
    char div[32] = "-";
    if (r.mode == "free") {
      if (r.first_divergence >= 0) std::snprintf(div, sizeof div, "step %lld", static_cast<long long>(r.first_divergence));
      else std::snprintf(div, sizeof div, "never");
    }
    std::printf("%-8s %-20s %6.3f %-39s %-39s %-39s %6.1f%% %s\n", r.mode.c_str(), r.label.c_str(), r.bpe,
                q4(r.acc.kl).c_str(), q4(r.acc.hid).c_str(), q4(r.acc.local).c_str(),
                100.0 * mean_range(r.acc.top1, 0, n), div);
  }
  if (tok && !ref_text_free.empty()) {
    auto head = [](const std::string& s) {
      std::string t = s.substr(0, 160);
      for (char& ch : t)
        if (ch == '\n') ch = ' ';
      return t;
    };
    std::printf("\nfree-running text (first 160 bytes):\n  %-20s %s\n", "float32", head(ref_text_free).c_str());
    for (const auto& r : summary)
      if (r.mode == "free") std::printf("  %-20s %s\n", r.label.c_str(), head(r.text).c_str());
  }
  const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  std::printf("\ncsv: %s (%.1f s)\n", csv.c_str(), el);
  return 0;
}

}  // namespace

int kvsim_cmd_closed_loop(int argc, char** argv) {
  return kvsim::sim::run_command([&] { return run(argc, argv); });
}
