// The Catch2 main of the [cuda] tests: without a CUDA device it prints why
// and exits 77, which ctest reports as SKIP (SKIP_RETURN_CODE 77): never
// failed, never silently passed.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>

#include "cuda/kvsim_cuda.hpp"

int main(int argc, char** argv) {
  if (kvsim::cuda::device_count() == 0) {
    std::printf("no CUDA device: [cuda] tests skipped (%s)\n", kvsim::cuda::device_description().c_str());
    return 77;
  }
  std::printf("[cuda] tests on %s\n", kvsim::cuda::device_description().c_str());
  return Catch::Session().run(argc, argv);
}
