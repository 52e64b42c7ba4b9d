// kvsim compare: one command for the methods study. Replays one or more
// traces (files, or the built-in "default" and "long" synthetic traces)
// through a set of methods (by default the seed set: KVarN, KIVI, KVLinC and
// survey combinations at 2 and 4 bits), on the GPU when one is present, and
// writes per trace a results file, a CSV and the HTML report with the per-step
// error curves; then checks that each method's higher-bit variant has the
// lower error (exit 3 when a check fails).
#include "sim/cmd_compare.hpp"

#include <boost/program_options.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "analysis/report.hpp"
#include "sim/cli_common.hpp"
#include "sim/replay.hpp"
#include "sim/replay_cuda.hpp"
#include "sim/replay_output.hpp"
#include "traces/trace.hpp"
#include "traces/synthetic.hpp"

namespace po = boost::program_options;

namespace kvsim::sim {

// The seed set: every method the project exists for, in the variants the
// issue names (KVarN K2V2/K4V2/K4V4, KIVI 2/4, KVLinC with and without its
// correction, survey combinations). Heavy hitters (gq-sink-hh) have no CUDA
// twin, so the GPU set leaves them out.
std::vector<std::string> seed_method_set() {
  std::vector<std::string> set = {
      "fp",          "kivi:bits=2", "kivi:bits=4", "kvarn-k2v2",          "kvarn-k4v2",
      "kvarn-k4v4",  "kvlinc:correction=none",     "kvlinc:correction=affine", "kvlinc:correction=linear",
      "kvlinc:bits=4,correction=none",             "gq-mse4", "gq-log4", "gq-pow", "gq-kmeans2",
      "gq-vq2",      "gq-sink-hh",
  };
  return set;
}

namespace {

// The bits-like options of a configuration: "bits" and every option whose key
// ends in "bits" (kbits, vbits), as integers; empty when it has none.
std::map<std::string, long long> bit_options(const ref::MethodConfig& c) {
  std::map<std::string, long long> out;
  const ref::MethodInfo& info = ref::method_info(c.id);
  if (info.uses_bits) out["bits"] = c.bits;
  for (const auto& [k, v] : c.opts)
    if (k.size() >= 4 && k.compare(k.size() - 4, 4, "bits") == 0) out[k] = c.opt_int(k);
  return out;
}

// a has more bits than b: same method and same options except bits-like
// ones, each of a's >= b's and at least one strictly greater.
bool more_bits(const ref::MethodConfig& a, const ref::MethodConfig& b) {
  if (a.id != b.id || a.group != b.group || a.residual != b.residual) return false;
  const auto ba = bit_options(a), bb = bit_options(b);
  if (ba.empty()) return false;
  for (const auto& [k, v] : a.opts)
    if (!ba.count(k) && b.opts.at(k) != v) return false;
  bool strict = false;
  for (const auto& [k, v] : ba) {
    if (v < bb.at(k)) return false;
    strict |= v > bb.at(k);
  }
  return strict;
}

struct CompareCli {
  std::vector<std::string> traces, methods;
  std::string out = "kvsim-compare", device = "auto", layers;
  std::int64_t every = 7, long_every = 13;
  int threads = 0;
  bool no_progress = false, no_plots = false;
};

}  // namespace

int cmd_compare(int argc, char** argv) {
  CompareCli o;
  po::options_description desc(
      "kvsim compare: replay traces through a set of methods and write one report per trace.\n"
      "  --trace default   the embedded default synthetic trace (2 layers, 8/2 heads, D 128, 4096 tokens)\n"
      "  --trace long      a long synthetic trace (1 layer, 16/4 heads, D 128, 16,640 tokens)\n"
      "  --trace FILE      a recorded trace\n"
      "Without --method: the seed set (kvsim compare --list-set prints it; heavy hitters only on the CPU).\n"
      "Checks that each method's "
      "higher-bit variant has the lower mean error on every layer (exit 3 otherwise).");
  bool list_set = false;
  desc.add_options()("help,h", "this help")
      ("trace", po::value(&o.traces)->multitoken(), "default, long or a trace file; repeatable (default: default)")
      ("method,m", po::value(&o.methods)->multitoken(), "method spec, repeatable (default: the seed set)")
      ("out", po::value(&o.out)->default_value(o.out), "output folder: OUT/<trace>/{results.h5,results.csv,report/}")
      ("device", po::value(&o.device)->default_value(o.device), "auto (cuda when a GPU is present), cpu or cuda")
      ("every", po::value(&o.every)->default_value(o.every), "evaluate every N-th decode step (coprime with 32, 64, 128)")
      ("long-every", po::value(&o.long_every)->default_value(o.long_every), "the same for the long trace")
      ("layers", po::value(&o.layers), "layers to replay (default all)")
      ("threads", po::value(&o.threads)->default_value(0), "worker threads (0: all cores)")
      ("list-set", po::bool_switch(&list_set), "print the seed method set and exit")
      ("no-plots", po::bool_switch(&o.no_plots), "reports as CSV and HTML only (no gnuplot needed)")
      ("no-progress", po::bool_switch(&o.no_progress), "no progress bar");
  po::variables_map vm;
  if (parse_command_line(argc, argv, desc, vm, "compare")) return 0;
  if (list_set) {
    for (const auto& m : seed_method_set()) std::printf("%s\n", m.c_str());
    return 0;
  }
  if (o.device != "auto" && o.device != "cpu" && o.device != "cuda")
    throw UsageError("compare: --device must be auto, cpu or cuda");
  if (o.every < 1 || o.long_every < 1) throw UsageError("compare: --every and --long-every must be >= 1");
  const bool gpu = o.device == "cuda" || (o.device == "auto" && cuda_available());
  if (o.traces.empty()) o.traces.push_back("default");
  if (o.methods.empty()) o.methods = seed_method_set();
  std::vector<ref::MethodConfig> methods;
  for (const auto& spec : o.methods) methods.push_back(parse_method_spec(spec, 0, 0, 0));
  // every trace file opens (and its geometry suits every method) before anything is written
  for (const std::string& spec : o.traces) {
    if (spec == "default" || spec == "long") continue;
    traces::TraceReader tr(spec);
    ReplayOptions probe;
    probe.trace = spec;
    probe.methods = methods;
    probe.layers = parse_layers(o.layers);
    plan_replay(probe, tr.meta(), /*measure_bits=*/false);
  }
  std::filesystem::create_directories(o.out);
  std::printf("kvsim compare (git %s): %zu methods, device %s, out %s\n", git_revision(), methods.size(),
              gpu ? "cuda" : "cpu", o.out.c_str());

  bool ok = true;
  for (const std::string& spec : o.traces) {
    std::string name = spec, trace = spec;
    std::int64_t every = o.every;
    if (spec == "default" || spec == "long") {
      traces::SynthParams sp;
      sp.tool_revision = git_revision();
      if (spec == "long") {
        sp.layers = 1;
        sp.q_heads = 16;
        sp.kv_heads = 4;
        sp.prefill = 1024;
        sp.decode = 15616;
        every = o.long_every;
      }
      std::filesystem::create_directories(o.out + "/" + name);
      trace = o.out + "/" + name + "/trace.h5";
      std::printf("\n== %s: generating %s\n", name.c_str(), trace.c_str());
      traces::generate_synthetic(sp, trace, {});
    } else {
      name = std::filesystem::path(spec).stem().string();
      std::filesystem::create_directories(o.out + "/" + name);
      std::printf("\n== %s: %s\n", name.c_str(), trace.c_str());
    }
    ReplayOptions r;
    r.trace = trace;
    r.methods = methods;
    r.layers = parse_layers(o.layers);
    r.every = every;
    r.threads = o.threads;
    r.progress = !o.no_progress;
    const std::string dir = o.out + "/" + name;
    r.out_h5 = dir + "/results.h5";
    r.out_csv = dir + "/results.csv";
    const std::string resolved = "trace=" + trace + " methods=" + describe_methods(r.methods) +
                                 " every=" + std::to_string(every) + " device=" + (gpu ? "cuda" : "cpu");
    r.provenance = {{"options", resolved}, {"command_line", join_args(argc, argv)}, {"git_revision", git_revision()}};
    const ReplaySummary s = gpu ? replay_cuda(r) : replay(r);
    print_replay_summary(s);
    analysis::ReportOptions ro;
    ro.plots = !o.no_plots;
    analysis::write_report({r.out_h5}, dir + "/report", ro);  // prints its path
    for (size_t a = 0; a < methods.size(); ++a)
      for (size_t b = 0; b < methods.size(); ++b) {
        if (!more_bits(methods[a], methods[b])) continue;
        for (size_t l = 0; l < s.layers.size(); ++l) {
          const double ea = s.methods[a].mean_rel_l2[l], eb = s.methods[b].mean_rel_l2[l];
          const bool pass = ea < eb;
          std::printf("check: %s layer %d: %s %.4e < %s %.4e: %s\n", name.c_str(), s.layers[l],
                      s.methods[a].label.c_str(), ea, s.methods[b].label.c_str(), eb, pass ? "yes" : "NO");
          ok &= pass;
        }
      }
  }
  if (!ok) {
    std::fprintf(stderr, "kvsim: error: a higher-bit variant did not have the lower error\n");
    return 3;
  }
  return 0;
}

}  // namespace kvsim::sim
