#include "sim/entry.hpp"

#include <cstdio>
#include <stdexcept>
#include <string>

#include "reference/attention/query.hpp"
#include "reference/fixed/fixed.hpp"

namespace kvsim::sim {
namespace {

// Reads the rows and converts each bit pattern with conv(bits, dtype, &out);
// the first failing element becomes an error naming dataset and position.
template <class T, class Conv>
void read_converted(const traces::TraceReader& tr, int layer, traces::Tensor which, std::int64_t t0,
                    std::int64_t n, std::vector<T>& out, std::vector<float>& exact, Conv conv) {
  std::vector<u32> bits;
  tr.read_bits(layer, which, t0, n, bits);
  tr.read_float(layer, which, t0, n, exact);
  out.resize(bits.size());
  const traces::DType dt = tr.meta().dtype;
  for (size_t i = 0; i < bits.size(); ++i) {
    const fx::ConvStatus st = conv(bits[i], dt, &out[i]);
    if (st == fx::ConvStatus::ok) continue;
    const int H = tr.meta().heads(which), D = tr.meta().head_dim;
    const std::int64_t row = static_cast<std::int64_t>(i) / (static_cast<std::int64_t>(H) * D);
    const int h = static_cast<int>((i / D) % H), d = static_cast<int>(i % D);
    char where[200];
    std::snprintf(where, sizeof where, "/layers/%d/%s: token %lld head %d channel %d: ", layer,
                  traces::tensor_name(which), static_cast<long long>(t0 + row), h, d);
    const std::string why = st == fx::ConvStatus::nan   ? "value is NaN"
                            : st == fx::ConvStatus::inf ? "value is Inf"
                                                        : "value " + std::to_string(exact[i]) +
                                                              " is outside the fixed-point entry range |x| < 2048";
    throw std::runtime_error(tr.path() + ": " + where + why);
  }
}

}  // namespace

void read_entry(const traces::TraceReader& tr, int layer, traces::Tensor which, std::int64_t t0,
                std::int64_t n, std::vector<i32>& entry, std::vector<float>& exact) {
  read_converted(tr, layer, which, t0, n, entry, exact, [](u32 b, traces::DType dt, i32* o) {
    switch (dt) {
      case traces::DType::f16: return fx::entry_from_fp16(static_cast<u16>(b), o);
      case traces::DType::bf16: return fx::entry_from_bf16(static_cast<u16>(b), o);
      default: return fx::entry_from_fp32(b, o);
    }
  });
}

void read_query(const traces::TraceReader& tr, int layer, std::int64_t t0, std::int64_t n,
                std::vector<i64>& query, std::vector<float>& exact) {
  read_converted(tr, layer, traces::Tensor::q, t0, n, query, exact, [](u32 b, traces::DType dt, i64* o) {
    switch (dt) {
      case traces::DType::f16: return ref::query_from_fp16(static_cast<u16>(b), o);
      case traces::DType::bf16: return ref::query_from_bf16(static_cast<u16>(b), o);
      default: return ref::query_from_fp32(b, o);
    }
  });
}

}  // namespace kvsim::sim
