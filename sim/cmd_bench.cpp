// kvsim bench attention: time per decode step of the exact quantized decode
// attention (KIVI 2 and 4 bit, packed codes dequantized on the fly through
// the shared cores) and of a plain fp16 attention, at batch 1 and 16,
// context 4K and 32K, 32 query heads, 8 KV heads, head dim 128 (defaults).
#include <boost/program_options.hpp>
#include <cstdio>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/kvsim_cuda.hpp"
#include "sim/cli_common.hpp"
#include "sim/replay_cuda.hpp"

namespace po = boost::program_options;
using namespace kvsim;

int kvsim_cmd_bench(int argc, char** argv) {
  std::string what;
  std::vector<int> batches{1, 16};
  std::vector<std::int64_t> contexts{4096, 32768};
  int hq = 32, hkv = 8, d = 128, warmup = 5, repeats = 50;
  po::options_description desc(
      "kvsim bench attention: time per decode step (CUDA events, warm-up, median) and GB/s over the\n"
      "bytes the step must read, for the exact KIVI decode attention and a plain fp16 attention");
  desc.add_options()("help,h", "this help")
      ("what", po::value(&what), "what to benchmark: attention")
      ("batch", po::value(&batches)->multitoken(), "batch sizes (default 1 16)")
      ("context", po::value(&contexts)->multitoken(), "context lengths (default 4096 32768)")
      ("q-heads", po::value(&hq)->default_value(32), "query heads")
      ("kv-heads", po::value(&hkv)->default_value(8), "KV heads")
      ("head-dim", po::value(&d)->default_value(128), "head dim (the fp16 kernel needs 128)")
      ("warmup", po::value(&warmup)->default_value(5), "warm-up launches")
      ("repeats", po::value(&repeats)->default_value(50), "timed launches (median reported)");
  po::positional_options_description pos;
  pos.add("what", 1);
  po::variables_map vm;
  if (kvsim::sim::parse_command_line(argc, argv, desc, vm, "bench", &pos)) return 0;
  if (what != "attention") {
    std::fprintf(stderr, "kvsim: error: bench: say what to benchmark: 'kvsim bench attention'\n");
    return 2;
  }
  if (hkv <= 0 || hq % hkv != 0 || warmup < 0 || repeats < 1) {
    std::fprintf(stderr, "kvsim: error: bench: bad heads or repeats\n");
    return 2;
  }
  if (cuda::device_count() == 0) throw std::runtime_error("bench: " + cuda::device_description());
  std::printf("kvsim bench attention (git %s) on %s\n  Hq=%d Hkv=%d D=%d, KIVI G=32 R=128, warm-up %d, median of %d\n\n",
              sim::git_revision(), cuda::device_description().c_str(), hq, hkv, d, warmup, repeats);
  std::printf("%-16s %6s %8s %12s %10s %10s\n", "kernel", "batch", "context", "ms/step", "GB read", "GB/s");
  for (int b : batches)
    for (std::int64_t n : contexts)
      for (const auto& r : cuda::bench_attention(b, n, hq, hkv, d, warmup, repeats)) {
        std::printf("%-16s %6d %8lld %12.4f %10.4f %10.1f\n", r.kernel.c_str(), r.batch,
                    static_cast<long long>(r.context), r.ms_per_step, r.gbytes, r.gb_per_s);
        std::fflush(stdout);
      }
  return 0;
}
