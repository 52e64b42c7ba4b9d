// Helpers shared by the gq reference tests (gq_test.cpp, gq_vq_test.cpp).
#pragma once
#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "reference/quant/registry.hpp"

namespace kvsim::gq_test {

// n rows of D entry-format values drawn from N(0, scale).
inline std::vector<i32> random_rows(std::mt19937_64& rng, i64 n, int D, double scale) {
  std::normal_distribution<double> nd(0.0, scale);
  std::vector<i32> v(static_cast<size_t>(n * D));
  for (auto& x : v) x = static_cast<i32>(std::llround(nd(rng) * (1 << kEntryFrac)));
  return v;
}

// A registry row (method or preset) with extra options applied.
inline ref::MethodConfig gq_spec(const std::string& row, const std::string& opts = "") {
  const ref::MethodInfo* info = ref::find_method(row);
  REQUIRE(info != nullptr);
  ref::MethodConfig c = ref::default_config(*info);
  ref::apply_options(c, *info, opts);
  return c;
}

}  // namespace kvsim::gq_test
