// The committed reference/fixed/tables.inc is exactly what the generator
// (reference/fixed/gen, built as kvsim_gen_tables) prints, byte for byte, and
// its constants agree with an independent cpp_bin_float_100 computation.
#include <catch2/catch.hpp>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>

#include "fx_oracle.hpp"
#include "reference/fixed/fixed.hpp"

#ifndef KVSIM_SOURCE_DIR
#error "KVSIM_SOURCE_DIR must be defined by the build"
#endif
#ifndef KVSIM_BINARY_DIR
#error "KVSIM_BINARY_DIR must be defined by the build"
#endif

using namespace kvsim;
using namespace kvsim::fx::test;

TEST_CASE("fx: committed tables.inc equals the generator's output byte for byte", "[fixed][tables]") {
  const std::string gen = KVSIM_BINARY_DIR "/reference/fixed/gen/kvsim_gen_tables";
  const std::string inc = KVSIM_SOURCE_DIR "/reference/fixed/tables.inc";
  {
    std::ifstream probe(gen);
    if (!probe) FAIL("generator not built: " << gen << " (build target kvsim_gen_tables)");
  }
  std::ifstream f(inc, std::ios::binary);
  REQUIRE(f.good());
  const std::string committed((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  FILE* p = popen(("\"" + gen + "\"").c_str(), "r");
  REQUIRE(p != nullptr);
  std::string out;
  char buf[4096];
  size_t k;
  while ((k = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, k);
  const int rc = pclose(p);
  CHECK(rc == 0);
  REQUIRE(!out.empty());
  if (out != committed) {
    size_t i = 0;
    while (i < out.size() && i < committed.size() && out[i] == committed[i]) ++i;
    FAIL("tables.inc differs from the generator's output at byte " << i
         << "; regenerate with: cmake --build <build> --target kvsim_regen_tables");
  }
  CHECK(out == committed);
}

TEST_CASE("fx: table constants agree with an independent computation", "[fixed][tables]") {
  const BF100 ln2 = log(BF100(2));
  auto rne64 = [](const BF100& v) { return rne_real(v); };
  CHECK(cpp_int(static_cast<u64>(KVSIM_FX_LN2_Q64)) == rne64(ldexp(ln2, 64)));
  CHECK(cpp_int(static_cast<u64>(KVSIM_FX_LN2_Q63)) == rne64(ldexp(ln2, 63)));
  CHECK(cpp_int(static_cast<i64>(KVSIM_FX_LOG2E_Q62)) == rne64(ldexp(1 / ln2, 62)));
  // the logit scale constant hard-coded in reference/attention uses the same value
  CHECK(static_cast<i64>(KVSIM_FX_LOG2E_Q62) == 6653256548922161246LL);
  const BF100 hl = BF100(cpp_int(static_cast<u64>(KVSIM_FX_LOG2E_HI_Q63))) * ldexp(BF100(1), -63) +
                   BF100(cpp_int(static_cast<u64>(KVSIM_FX_LOG2E_LO_Q127))) * ldexp(BF100(1), -127);
  CHECK(abs(hl - 1 / ln2) <= ldexp(BF100(1), -128));
  const u64 t1[256] = KVSIM_FX_EXP2_T1_Q64;
  const u64 r[256] = KVSIM_FX_LOG2_R_Q64;
  long bad = 0;
  for (int i = 0; i < 256; ++i) {
    bad += cpp_int(t1[i]) != rne64(ldexp(exp(ln2 * i / 256) - 1, 64));
    bad += cpp_int(r[i]) != round_div(cpp_int(1) << 73, cpp_int(513 + 2 * i), Mode::rne);
  }
  CHECK(bad == 0);
}
