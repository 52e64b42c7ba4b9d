// The entry boundary: trace rows -> fixed-point integers by round-half-to-even
// on the bit pattern (keys and values: the cache's Q11.20 entry format;
// queries: the finer Q23.40 query format), plus the exact float values the
// oracle uses. A value that cannot enter (NaN, Inf, |x| >= 2048) is an error
// naming the dataset and the element.
#pragma once
#include <cstdint>
#include <vector>

#include "reference/common.hpp"
#include "traces/trace.hpp"

namespace kvsim::sim {

// Rows [t0, t0+n) of a key or value tensor: entry integers and exact floats, [n][H][D].
void read_entry(const traces::TraceReader& tr, int layer, traces::Tensor which, std::int64_t t0,
                std::int64_t n, std::vector<i32>& entry, std::vector<float>& exact);

// Rows [t0, t0+n) of the query tensor: query-format integers and exact floats, [n][Hq][D].
void read_query(const traces::TraceReader& tr, int layer, std::int64_t t0, std::int64_t n,
                std::vector<i64>& query, std::vector<float>& exact);

}  // namespace kvsim::sim
