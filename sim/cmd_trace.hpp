// `kvsim trace ...`: inspect, check and generate trace files (traces/).
#pragma once

// argv[0] is "trace", argv[1] the sub-subcommand: info, check or gen.
// Returns the exit status: 0 success, 1 a bad or unreadable trace (or a
// failed generation), 2 a usage error. Errors are printed to stderr as one
// line "kvsim: error: <message>".
int kvsim_cmd_trace(int argc, char** argv);
