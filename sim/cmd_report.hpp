// `kvsim report`: the error-accumulation report over results files
// (analysis/report.hpp). argv[0] = "report".
#pragma once

int kvsim_cmd_report(int argc, char** argv);
