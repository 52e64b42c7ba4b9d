#include "sim/replay_output.hpp"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <stdexcept>

namespace kvsim::sim {
namespace {
double mean_of(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}
}  // namespace

analysis::ResultsMeta results_meta(const ReplayOptions& opt, const traces::TraceMeta& M,
                                   const std::vector<std::int64_t>& steps, const std::vector<int>& layers,
                                   const std::vector<analysis::MethodColumns>& cols) {
  analysis::ResultsMeta rm;
  rm.text = {{"trace_path", opt.trace},
             {"trace_model", M.model},
             {"trace_source", M.source},
             {"trace_dtype", traces::dtype_name(M.dtype)}};
  for (const auto& kv : opt.provenance) rm.text.push_back(kv);
  rm.ints = {{"num_layers", M.num_layers}, {"num_kv_heads", M.num_kv_heads}, {"head_dim", M.head_dim},
             {"num_tokens", M.num_tokens}, {"prefill_len", M.prefill_len},   {"every", opt.every},
             {"trace_seed", M.seed}};
  rm.steps = steps;
  rm.layers = layers;
  rm.q_heads = M.num_q_heads;
  rm.methods = cols;
  return rm;
}

CsvResults::CsvResults(const std::string& path) : path_(path) {
  if (path.empty()) return;
  tmp_ = path + ".tmp";
  out_.open(tmp_);
  if (!out_) throw std::runtime_error(path + ": cannot create the CSV file");
  out_ << "method,bits,layer,q_head,step,rel_l2,cosine,attn_kl,max_abs\n";
}

CsvResults::~CsvResults() {
  if (!done_ && !tmp_.empty()) {
    out_.close();
    std::error_code ec;
    std::filesystem::remove(tmp_, ec);
  }
}

void CsvResults::commit() {
  if (tmp_.empty() || done_) return;
  out_.close();
  if (!out_) throw std::runtime_error(path_ + ": write failed");
  std::filesystem::rename(tmp_, path_);
  done_ = true;
}

void emit_layer(const analysis::MethodColumns& col, int method_index, int layer_slot, int layer,
                const std::vector<std::int64_t>& steps, int q_heads,
                const std::vector<analysis::StepMetrics>& block, analysis::ResultsWriter* writer,
                CsvResults& csv, MethodSummary& ms) {
  const size_t E = steps.size();
  const int Hq = q_heads;
  if (writer) writer->write_block(method_index, layer_slot, block);
  if (csv.enabled()) {
    char buf[256];
    for (int qh = 0; qh < Hq; ++qh)
      for (size_t e = 0; e < E; ++e) {
        const auto& s = block[e * Hq + qh];
        std::snprintf(buf, sizeof buf, "%s,%d,%d,%d,%lld,%.9g,%.12g,%.9g,%.9g\n", col.label.c_str(), col.bits,
                      layer, qh, static_cast<long long>(steps[e]), s.rel_l2, s.cosine, s.attn_kl, s.max_abs);
        csv.stream() << buf;
      }
  }
  std::vector<double> rel, cosv, kl, fin;
  double mx = 0;
  const size_t tail_from = E - std::min(E, std::max<size_t>(1, E / 10));  // the last 10% (at least one)
  for (size_t e = 0; e < E; ++e)
    for (int qh = 0; qh < Hq; ++qh) {
      const auto& s = block[e * Hq + qh];
      rel.push_back(s.rel_l2);
      cosv.push_back(s.cosine);
      kl.push_back(s.attn_kl);
      mx = std::max(mx, s.rel_l2);
      if (e >= tail_from) fin.push_back(s.rel_l2);
    }
  ms.mean_rel_l2.push_back(mean_of(rel));
  ms.max_rel_l2.push_back(mx);
  ms.final_rel_l2.push_back(mean_of(fin));
  ms.mean_cosine.push_back(mean_of(cosv));
  ms.mean_kl.push_back(mean_of(kl));
}

}  // namespace kvsim::sim
