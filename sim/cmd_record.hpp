// `kvsim record`: run a real checkpoint (traces/model) on a prompt and write
// the decode as a trace (schema v1, traces/README.md), streaming.
#pragma once

// argv[0] is "record". Returns 0 on success, 1 on an error (bad checkpoint,
// trace write failure), 2 on a usage error; errors are printed to stderr as
// one line "kvsim: error: <message>".
int kvsim_cmd_record(int argc, char** argv);
