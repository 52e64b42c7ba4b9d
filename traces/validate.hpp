// Full validation of a trace file: structure (TraceReader) plus every value.
//
// A value is rejected when it is NaN or infinite, or when |x| >= 2048: the
// bit-exact path enters every value as a Q11.20 fixed-point integer
// (reference/common.hpp, kEntryIntBits), which cannot hold it. Token ids must
// be >= 0. The first problem found is thrown as a TraceError naming the
// dataset, the layer, tensor, token, head and channel.
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <string>

#include "traces/trace.hpp"

namespace kvsim::traces {

struct ValidateOptions {
  bool check_values = true;                 // false: structure only (what TraceReader checks)
  std::function<void(double)> progress;     // called with the fraction done, in [0, 1]
};

struct ValidateReport {
  TraceMeta meta;
  int64_t chunk_tokens = 0;
  int64_t values_checked = 0;               // tensor elements read and checked
  double max_abs = 0;                       // over every tensor
  std::array<double, kNumTensors> max_abs_tensor{};  // per Tensor (q, k, v, k_pre_rope)
};

// Throws TraceError("<file>: <dataset>: <problem>") on the first problem.
ValidateReport validate_trace(const std::string& path, const ValidateOptions& opt = {});

}  // namespace kvsim::traces
