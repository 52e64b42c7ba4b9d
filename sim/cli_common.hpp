// Shared pieces of the kvsim command line: method specs, layer lists, the
// start-of-run banner.
#pragma once
#include <string>
#include <vector>

#include "reference/quant/registry.hpp"

namespace kvsim::sim {

// The git revision this program was built from.
const char* git_revision();

// Parses a method spec "name" or "name:key=value,key=value" (keys: bits,
// group, residual). Values given in the spec win over the global overrides
// (bits/group/residual > 0 when the user gave them on the command line).
ref::MethodConfig parse_method_spec(const std::string& spec, int bits, int group, int residual);

// "0,2,5" or "0-3" or "all" -> layer indices (empty for all).
std::vector<int> parse_layers(const std::string& s);

// One line per resolved option, for the banner and the files' attributes.
std::string describe_methods(const std::vector<ref::MethodConfig>& ms);

}  // namespace kvsim::sim
