// Integer Hadamard transform: the CUDA kernel against fx::hadamard_inplace for
// every supported order n <= 256, i32 and i64 rows, tolerance zero.
#include <catch2/catch.hpp>

#include <random>
#include <vector>

#include "cuda/kvsim_cuda.hpp"
#include "reference/fixed/fixed.hpp"

using namespace kvsim;

TEMPLATE_TEST_CASE("CUDA Hadamard equals the reference for every supported order", "[cuda][hadamard]", i32, i64) {
  const u64 seed = 77;
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  int orders = 0;
  for (int n = 1; n <= 256; ++n) {
    if (!fx::hadamard_supported(n)) continue;
    ++orders;
    const i64 rows = 37;
    // |x| * n must fit T: keep |x| < 2^(bits - 1 - 8)
    const i64 lim = (i64{1} << (sizeof(TestType) * 8 - 10)) - 1;
    std::uniform_int_distribution<i64> ud(-lim, lim);
    std::vector<TestType> x(static_cast<size_t>(rows * n));
    for (auto& e : x) e = static_cast<TestType>(ud(rng));
    std::vector<TestType> cpu = x, gpu = x;
    for (i64 r = 0; r < rows; ++r) fx::hadamard_inplace(cpu.data() + r * n, n);
    cuda::hadamard_rows(gpu.data(), rows, n);
    INFO("n " << n);
    bool nonzero = false;
    for (size_t i = 0; i < cpu.size(); ++i) {
      if (cpu[i] != gpu[i]) {
        FAIL("n " << n << " element " << i << ": cpu " << static_cast<long long>(cpu[i]) << " gpu "
                  << static_cast<long long>(gpu[i]));
      }
      nonzero |= cpu[i] != 0;
    }
    REQUIRE(nonzero);
  }
  REQUIRE(orders == 8 + 5 + 4 + 4 + 1);  // 2^0..2^8 (9 incl. 1), 12.., 20.., 28..
}
