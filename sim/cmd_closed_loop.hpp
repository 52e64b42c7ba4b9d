// `kvsim closed-loop`: run a real checkpoint twice from the same prompt and
// seed, once with the full-precision cache and once per method with the
// quantized cache through the bit-exact path, and measure per step how far
// the quantized run drifts (DESIGN.md, "closed loop").
#pragma once

// argv[0] is "closed-loop". Returns 0 on success, 1 on an error, 2 on a usage
// error; errors are printed to stderr as one line "kvsim: error: <message>".
int kvsim_cmd_closed_loop(int argc, char** argv);
