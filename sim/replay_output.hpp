// The output side shared by the CPU and the CUDA replay: the results file's
// metadata, the CSV file (temporary, renamed when complete), and one layer's
// block of one method going to the results file, the CSV and the summary.
// Both replays call these, so their files are the same by construction.
#pragma once
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "analysis/results.hpp"
#include "sim/replay.hpp"
#include "traces/trace.hpp"

namespace kvsim::sim {

// What a replay will do, checked against the trace: the layers, each method's
// results row, the decode steps processed (t < t_end) and evaluated.
struct ReplayPlan {
  std::vector<int> layers;
  std::vector<analysis::MethodColumns> cols;
  std::int64_t t_end = 0;
  std::vector<std::int64_t> steps;
};
// Throws std::runtime_error naming the problem (geometry, options, layers,
// methods). bits_per_element is measured only when measure_bits (else 0).
ReplayPlan plan_replay(const ReplayOptions& opt, const traces::TraceMeta& M, bool measure_bits);

// The attributes, steps, layers and method rows of a results file.
analysis::ResultsMeta results_meta(const ReplayOptions& opt, const traces::TraceMeta& M,
                                   const std::vector<std::int64_t>& steps, const std::vector<int>& layers,
                                   const std::vector<analysis::MethodColumns>& cols);

// The CSV results: written to <path>.tmp, renamed by commit(); removed when
// destroyed uncommitted (an error never leaves a half-written CSV).
class CsvResults {
 public:
  explicit CsvResults(const std::string& path);  // empty path: no CSV
  ~CsvResults();
  CsvResults(const CsvResults&) = delete;
  CsvResults& operator=(const CsvResults&) = delete;
  bool enabled() const { return out_.is_open(); }
  std::ofstream& stream() { return out_; }
  void commit();

 private:
  std::string path_, tmp_;
  std::ofstream out_;
  bool done_ = false;
};

// One layer's metrics of one method, block [E][Hq]: to the results file (when
// writer), the CSV (when enabled) and the method's summary row.
void emit_layer(const analysis::MethodColumns& col, int method_index, int layer_slot, int layer,
                const std::vector<std::int64_t>& steps, int q_heads,
                const std::vector<analysis::StepMetrics>& block, analysis::ResultsWriter* writer,
                CsvResults& csv, MethodSummary& summary);

}  // namespace kvsim::sim
