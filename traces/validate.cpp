// Full validation of a trace file (validate.hpp).
#include "traces/validate.hpp"

#include <cmath>
#include <cstdio>
#include <vector>

#include "reference/common.hpp"
#include "traces/half.hpp"

namespace kvsim::traces {

namespace {
constexpr double kEntryLimit = static_cast<double>(1 << kvsim::kEntryIntBits);  // 2048
}

ValidateReport validate_trace(const std::string& path, const ValidateOptions& opt) {
  TraceReader r(path);
  const TraceMeta& m = r.meta();
  ValidateReport rep;
  rep.meta = m;
  rep.chunk_tokens = r.chunk_tokens();
  if (!opt.check_values) {
    if (opt.progress) opt.progress(1.0);
    return rep;
  }
  const int64_t T = m.num_tokens;
  // Rows per read: one chunk, but never more than ~4M elements at once.
  const int64_t max_row = std::max<int64_t>(m.row_elems(Tensor::q), 1);
  const int64_t step =
      std::max<int64_t>(1, std::min<int64_t>(rep.chunk_tokens > 0 ? rep.chunk_tokens : 256,
                                             (int64_t{1} << 22) / max_row));

  std::vector<int32_t> ids;
  for (int64_t t0 = 0; t0 < T; t0 += step) {
    const int64_t n = std::min(step, T - t0);
    r.read_tokens(t0, n, ids);
    for (int64_t i = 0; i < n; ++i)
      if (ids[static_cast<size_t>(i)] < 0)
        throw TraceError(path + ": /tokens: negative token id " +
                         std::to_string(ids[static_cast<size_t>(i)]) + " at token " +
                         std::to_string(t0 + i));
  }

  int tensors = 0;
  for (Tensor t : kAllTensors)
    if (t != Tensor::k_pre_rope || m.has_k_pre_rope) ++tensors;
  const double total = static_cast<double>(m.num_layers) * tensors * static_cast<double>(T);
  double done = 0;
  std::vector<uint32_t> bits;
  for (int l = 0; l < m.num_layers; ++l) {
    for (Tensor t : kAllTensors) {
      if (t == Tensor::k_pre_rope && !m.has_k_pre_rope) continue;
      const int H = m.heads(t), D = m.head_dim;
      double& tmax = rep.max_abs_tensor[static_cast<size_t>(t)];
      for (int64_t t0 = 0; t0 < T; t0 += step) {
        const int64_t n = std::min(step, T - t0);
        r.read_bits(l, t, t0, n, bits);
        const size_t count = bits.size();
        for (size_t i = 0; i < count; ++i) {
          const float x = decode_bits(m.dtype, bits[i]);
          const double a = std::fabs(static_cast<double>(x));
          if (!(a < kEntryLimit)) {  // NaN, Inf or too large
            const int64_t row = static_cast<int64_t>(i) / (static_cast<int64_t>(H) * D);
            const int head = static_cast<int>((static_cast<int64_t>(i) / D) % H);
            const int ch = static_cast<int>(static_cast<int64_t>(i) % D);
            const std::string where = "at layer " + std::to_string(l) + " " + tensor_name(t) +
                                      " token " + std::to_string(t0 + row) + " head " +
                                      std::to_string(head) + " channel " + std::to_string(ch);
            std::string problem;
            if (std::isnan(x)) {
              problem = "NaN " + where;
            } else if (std::isinf(x)) {
              problem = std::string(x > 0 ? "+Inf " : "-Inf ") + where;
            } else {
              char buf[32];
              std::snprintf(buf, sizeof buf, "%.6g", static_cast<double>(x));
              problem = std::string("value ") + buf + " " + where +
                        " exceeds the fixed-point entry range |x| < 2048";
            }
            throw TraceError(path + ": " + TraceReader::dataset_name(l, t) + ": " + problem);
          }
          if (a > tmax) tmax = a;
        }
        rep.values_checked += static_cast<int64_t>(count);
        done += static_cast<double>(n);
        if (opt.progress) opt.progress(done / total);
      }
      if (tmax > rep.max_abs) rep.max_abs = tmax;
    }
  }
  return rep;
}

}  // namespace kvsim::traces
