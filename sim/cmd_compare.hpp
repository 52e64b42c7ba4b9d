// kvsim compare: replay traces through a method set, one report per trace,
// and check that higher-bit variants have the lower error.
#pragma once
#include <string>
#include <vector>

namespace kvsim::sim {

// The seed method set (the methods of issue 4 at 2 and 4 bits), the same on
// the CPU and the GPU.
std::vector<std::string> seed_method_set();

int cmd_compare(int argc, char** argv);

}  // namespace kvsim::sim
