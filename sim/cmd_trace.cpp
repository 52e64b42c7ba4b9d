// `kvsim trace info|check|gen` (cmd_trace.hpp). One Options struct per
// subcommand, parsed with Boost.program_options; --help on each.
#include "sim/cmd_trace.hpp"

#include <boost/program_options.hpp>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <sstream>
#include <string>

#include "sim/cli_common.hpp"
#include "traces/synthetic.hpp"
#include "traces/trace.hpp"
#include "traces/validate.hpp"

namespace po = boost::program_options;
namespace tr = kvsim::traces;

namespace {

using kvsim::sim::UsageError;
using kvsim::sim::error_line;

// Parses argv[1..] (argv[1] is the subcommand); true if --help was given.
bool parse(int argc, char** argv, const po::options_description& visible,
           const po::positional_options_description* pos, po::variables_map& vm,
           const std::string& usage) {
  const std::string cmd = std::string("kvsim trace ") + argv[1];
  po::options_description all;
  all.add(visible);
  try {
    po::command_line_parser parser(argc - 1, argv + 1);
    parser.options(all);
    if (pos) parser.positional(*pos);
    po::store(parser.run(), vm);
    if (vm.count("help")) {
      std::cout << usage << "\n\n" << visible << "\n";
      return true;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    throw UsageError(std::string(e.what()) + " (see " + cmd + " --help)");
  }
  return false;
}

// ---- info -----------------------------------------------------------------

struct InfoOptions {
  std::string file;
};

int cmd_info(int argc, char** argv) {
  InfoOptions o;
  po::options_description desc("Options");
  desc.add_options()("help,h", "show this help")(
      "file", po::value(&o.file)->required(), "the trace file (also the positional argument)");
  po::positional_options_description pos;
  pos.add("file", 1);
  po::variables_map vm;
  if (parse(argc, argv, desc, &pos, vm,
            "usage: kvsim trace info FILE\n"
            "Prints a trace's geometry, RoPE parameters, storage and provenance. Checks the\n"
            "structure (not the values: see kvsim trace check)."))
    return 0;
  tr::TraceReader r(o.file);
  std::cout << tr::format_info(r);
  return 0;
}

// ---- check ----------------------------------------------------------------

struct CheckOptions {
  std::string file;
  bool structure_only = false;
  bool progress = false;
};

int cmd_check(int argc, char** argv) {
  CheckOptions o;
  po::options_description desc("Options");
  desc.add_options()("help,h", "show this help")(
      "file", po::value(&o.file)->required(), "the trace file (also the positional argument)")(
      "structure-only", po::bool_switch(&o.structure_only),
      "check attributes, datasets, shapes and dtypes only, not the values")(
      "progress", po::bool_switch(&o.progress), "show progress on stderr");
  po::positional_options_description pos;
  pos.add("file", 1);
  po::variables_map vm;
  if (parse(argc, argv, desc, &pos, vm,
            "usage: kvsim trace check FILE [--structure-only] [--progress]\n"
            "Validates a trace against schema v1 and reads every value: NaN, Inf and\n"
            "|x| >= 2048 (outside the Q11.20 fixed-point entry range) are errors.\n"
            "Exit status 0 if the trace is good, 1 with one error line otherwise."))
    return 0;
  tr::ValidateOptions vo;
  vo.check_values = !o.structure_only;
  int last = -1;
  if (o.progress)
    vo.progress = [&](double f) {
      const int pct = static_cast<int>(f * 100);
      if (pct != last) {
        std::fprintf(stderr, "\rcheck: %3d%%", pct);
        last = pct;
      }
    };
  const tr::ValidateReport rep = tr::validate_trace(o.file, vo);
  if (o.progress) std::fprintf(stderr, "\n");
  const tr::TraceMeta& m = rep.meta;
  std::ostringstream s;
  s << "ok: " << o.file << ": kvsim trace v" << m.version << ", " << m.num_layers << " layers, "
    << m.num_q_heads << "/" << m.num_kv_heads << " heads, head dim " << m.head_dim << ", "
    << m.num_tokens << " tokens, " << tr::dtype_name(m.dtype);
  if (vo.check_values) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "; %lld values checked, max |x| = %.6g (q %.4g, k %.4g, v %.4g",
                  static_cast<long long>(rep.values_checked), rep.max_abs, rep.max_abs_tensor[0],
                  rep.max_abs_tensor[1], rep.max_abs_tensor[2]);
    s << buf;
    if (m.has_k_pre_rope) {
      std::snprintf(buf, sizeof buf, ", k_pre_rope %.4g", rep.max_abs_tensor[3]);
      s << buf;
    }
    s << ")";
  } else {
    s << "; structure only";
  }
  std::cout << s.str() << "\n";
  return 0;
}

// ---- gen ------------------------------------------------------------------

struct GenOptions {
  tr::SynthParams p;
  std::string out, dtype = "f16";
  bool no_pre_rope = false, force = false, progress = false;
};

int cmd_gen(int argc, char** argv) {
  GenOptions o;
  tr::SynthParams& p = o.p;
  po::options_description geo("Geometry and format");
  geo.add_options()("help,h", "show this help")(
      "out,o", po::value(&o.out)->required(), "output trace file (written as FILE.tmp, then renamed)")(
      "force", po::bool_switch(&o.force), "overwrite an existing output file")(
      "layers", po::value(&p.layers)->default_value(p.layers), "number of layers")(
      "q-heads", po::value(&p.q_heads)->default_value(p.q_heads), "query heads")(
      "kv-heads", po::value(&p.kv_heads)->default_value(p.kv_heads), "KV heads (divides --q-heads)")(
      "head-dim", po::value(&p.head_dim)->default_value(p.head_dim), "head dim (even, <= 256)")(
      "prefill", po::value(&p.prefill)->default_value(p.prefill), "prefill tokens P")(
      "decode", po::value(&p.decode)->default_value(p.decode), "decode tokens (T = P + decode)")(
      "rope-theta", po::value(&p.rope_theta)->default_value(p.rope_theta), "RoPE base")(
      "dtype", po::value(&o.dtype)->default_value(o.dtype), "element type: f16, bf16 or f32")(
      "seed", po::value(&p.seed)->default_value(p.seed), "random seed")(
      "chunk", po::value(&p.chunk_tokens)->default_value(p.chunk_tokens), "chunk length Tc along T")(
      "gzip", po::value(&p.gzip_level)->default_value(p.gzip_level), "gzip level 0 (none) .. 9")(
      "no-pre-rope", po::bool_switch(&o.no_pre_rope), "do not store k_pre_rope")(
      "vocab", po::value(&p.vocab)->default_value(p.vocab), "token ids in [0, vocab)")(
      "threads", po::value(&p.threads)->default_value(p.threads), "generator threads (0: all cores)")(
      "progress", po::bool_switch(&o.progress), "show progress on stderr");
  po::options_description stats("Statistics (see traces/README.md)");
  stats.add_options()(
      "key-outlier-channels", po::value(&p.key_outlier_channels)->default_value(p.key_outlier_channels),
      "key outlier channel pairs per (layer, KV head)")(
      "key-outlier-scale", po::value(&p.key_outlier_scale)->default_value(p.key_outlier_scale),
      "outlier channel magnitude / median channel magnitude")(
      "value-df", po::value(&p.value_df)->default_value(p.value_df),
      "Student-t degrees of freedom of the values (> 2)")(
      "sink-strength", po::value(&p.sink_strength)->default_value(p.sink_strength),
      "token 0's attention weight relative to all other tokens together (0: no sink)")(
      "local-strength", po::value(&p.local_strength)->default_value(p.local_strength),
      "logit bump in nats for the current token, decaying with distance (0: none)")(
      "outlier-token-rate", po::value(&p.outlier_token_rate)->default_value(p.outlier_token_rate),
      "fraction of tokens whose k and v norms are scaled up")(
      "outlier-token-scale", po::value(&p.outlier_token_scale)->default_value(p.outlier_token_scale),
      "norm multiplier of the outlier tokens")(
      "gqa-correlation", po::value(&p.gqa_correlation)->default_value(p.gqa_correlation),
      "correlation of the query heads of one KV group, 0..1");
  po::options_description all;
  all.add(geo).add(stats);
  po::variables_map vm;
  if (parse(argc, argv, all, nullptr, vm,
            "usage: kvsim trace gen [options] --out FILE\n"
            "Generates a seeded, deterministic synthetic trace with the statistics of real\n"
            "KV caches (RoPE, key outlier channels, heavy-tailed values, attention sink,\n"
            "local attention, outlier tokens, GQA), streaming Tc tokens at a time."))
    return 0;
  if (!tr::parse_dtype(o.dtype.c_str(), p.dtype))
    throw UsageError("--dtype '" + o.dtype + "' is not one of f16, bf16, f32");
  p.k_pre_rope = !o.no_pre_rope;
  p.tool_revision = kvsim::sim::git_revision();
  try {
    tr::check_synth_params(p);
  } catch (const std::invalid_argument& e) {
    throw UsageError(e.what());
  }
  if (!o.force && std::filesystem::exists(o.out))
    throw UsageError(o.out + " exists (use --force to overwrite)");

  // The resolved options, first (STYLE.md rule 12).
  std::printf("kvsim trace gen (revision %s)\n", p.tool_revision.c_str());
  std::printf("  out %s\n", o.out.c_str());
  std::printf("  geometry: layers %d, q-heads %d, kv-heads %d, head-dim %d\n", p.layers, p.q_heads,
              p.kv_heads, p.head_dim);
  std::printf("  tokens: prefill %lld, decode %lld (T = %lld); rope-theta %g; dtype %s\n",
              static_cast<long long>(p.prefill), static_cast<long long>(p.decode),
              static_cast<long long>(p.prefill + p.decode), p.rope_theta, tr::dtype_name(p.dtype));
  std::printf("  seed %llu, chunk %lld, gzip %d, k_pre_rope %s, vocab %d\n",
              static_cast<unsigned long long>(p.seed), static_cast<long long>(p.chunk_tokens),
              p.gzip_level, p.k_pre_rope ? "yes" : "no", p.vocab);
  std::printf(
      "  statistics: key-outlier-channels %d, key-outlier-scale %g, value-df %g, sink-strength %g,\n"
      "              local-strength %g, outlier-token-rate %g, outlier-token-scale %g, "
      "gqa-correlation %g\n",
      p.key_outlier_channels, p.key_outlier_scale, p.value_df, p.sink_strength, p.local_strength,
      p.outlier_token_rate, p.outlier_token_scale, p.gqa_correlation);
  std::fflush(stdout);
  int last = -1;
  std::function<void(double)> prog;
  if (o.progress)
    prog = [&](double f) {
      const int pct = static_cast<int>(f * 100);
      if (pct != last) {
        std::fprintf(stderr, "\rgen: %3d%%", pct);
        last = pct;
      }
    };
  const tr::SynthResult res = tr::generate_synthetic(p, o.out, prog);
  if (o.progress) std::fprintf(stderr, "\n");
  std::error_code ec;
  const auto bytes = std::filesystem::file_size(o.out, ec);
  std::printf("wrote %s: %lld tokens in %.2f s, %.2f MiB\n", o.out.c_str(),
              static_cast<long long>(res.meta.num_tokens), res.seconds,
              ec ? 0.0 : static_cast<double>(bytes) / 1048576.0);
  if (res.clamped_values > 0)
    std::fprintf(stderr, "kvsim: warning: %lld values were clamped to |x| <= 1024\n",
                 static_cast<long long>(res.clamped_values));
  return 0;
}

const char* kTraceUsage =
    "usage: kvsim trace <command> [options]\n"
    "  info FILE               geometry, RoPE, storage and provenance of a trace\n"
    "  check FILE              validate a trace (structure and every value)\n"
    "  gen [options] --out F   generate a synthetic trace\n"
    "Each command takes --help.\n";

}  // namespace

int kvsim_cmd_trace(int argc, char** argv) {
  if (argc < 2) {
    std::fputs(kTraceUsage, stderr);
    return 2;
  }
  const std::string sub = argv[1];
  return kvsim::sim::run_command([&]() -> int {
    if (sub == "info") return cmd_info(argc, argv);
    if (sub == "check") return cmd_check(argc, argv);
    if (sub == "gen") return cmd_gen(argc, argv);
    if (sub == "--help" || sub == "-h" || sub == "help") {
      std::fputs(kTraceUsage, stdout);
      return 0;
    }
    std::fputs(kTraceUsage, stderr);
    return error_line("unknown trace command '" + sub + "' (expected info, check or gen)", 2);
  });
}
