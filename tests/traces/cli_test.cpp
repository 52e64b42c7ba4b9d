// `kvsim trace gen|check|info` through the real program (KVSIM_BIN).
#include <catch2/catch.hpp>
#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "tests/traces/test_util.hpp"

using kvsim::traces::test::TempDir;
using kvsim::traces::test::read_text;

namespace {

struct Run {
  int status = -1;
  std::string out, err;
};

Run run(const TempDir& dir, const std::string& args) {
  const std::string out = dir.file("stdout.txt"), err = dir.file("stderr.txt");
  const std::string cmd =
      "'" + std::string(std::getenv("KVSIM_BIN")) + "' " + args + " >'" + out + "' 2>'" + err + "'";
  const int raw = std::system(cmd.c_str());
  Run r;
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  r.out = read_text(out);
  r.err = read_text(err);
  return r;
}

bool have_bin() {
  const char* b = std::getenv("KVSIM_BIN");
  if (!b || !*b) {
    WARN("KVSIM_BIN is not set: skipping the CLI test");
    return false;
  }
  return true;
}

// stderr is exactly one line starting with "kvsim: error:".
void check_one_error_line(const Run& r) {
  INFO("stderr: " << r.err);
  CHECK(r.err.rfind("kvsim: error:", 0) == 0);
  CHECK(r.err.find('\n') == r.err.size() - 1);
}

}  // namespace

TEST_CASE("kvsim trace gen, check and info on a small trace", "[cli]") {
  if (!have_bin()) return;
  TempDir dir;
  const std::string f = dir.file("small.h5");
  Run g = run(dir, "trace gen --layers 2 --q-heads 4 --kv-heads 2 --head-dim 64 --prefill 16 "
                   "--decode 48 --dtype bf16 --seed 7 --chunk 32 --out '" + f + "'");
  INFO("gen stdout: " << g.out << "\ngen stderr: " << g.err);
  REQUIRE(g.status == 0);
  CHECK_THAT(g.out, Catch::Contains("seed 7"));  // resolved options printed
  Run c = run(dir, "trace check '" + f + "'");
  INFO("check stdout: " << c.out << "\ncheck stderr: " << c.err);
  CHECK(c.status == 0);
  CHECK_THAT(c.out, Catch::StartsWith("ok: "));
  Run i = run(dir, "trace info '" + f + "'");
  CHECK(i.status == 0);
  CHECK_THAT(i.out, Catch::Contains("2 layers, 4 query heads, 2 KV heads (GQA group 2), head dim 64"));
  CHECK_THAT(i.out, Catch::Contains("64 (prefill 16, decode 48)"));
  CHECK_THAT(i.out, Catch::Contains("bf16"));
  CHECK_THAT(i.out, Catch::Contains("synth_sink_strength"));
  // Refuses to overwrite without --force.
  Run again = run(dir, "trace gen --decode 4 --prefill 0 --out '" + f + "'");
  CHECK(again.status == 2);
  check_one_error_line(again);
  // --help works on each subcommand.
  for (const char* sub : {"info", "check", "gen"}) {
    Run h = run(dir, std::string("trace ") + sub + " --help");
    CHECK(h.status == 0);
    CHECK_THAT(h.out, Catch::Contains("usage: kvsim trace"));
  }
}

TEST_CASE("kvsim trace check and info fail with one error line on bad files", "[cli]") {
  if (!have_bin()) return;
  TempDir dir;
  const std::string good = dir.file("good.h5");
  REQUIRE(run(dir, "trace gen --layers 1 --q-heads 2 --kv-heads 1 --head-dim 16 --prefill 8 "
                   "--decode 8 --out '" + good + "'").status == 0);
  const std::string all = read_text(good);
  const std::string trunc = dir.file("trunc.h5");
  std::ofstream(trunc, std::ios::binary).write(all.data(), 1000);
  const std::string text = dir.file("text.h5");
  std::ofstream(text) << "hello\n";
  for (const std::string& f : {trunc, text, dir.file("missing.h5")}) {
    for (const char* sub : {"check", "info"}) {
      Run r = run(dir, std::string("trace ") + sub + " '" + f + "'");
      INFO(sub << " " << f);
      CHECK(r.status == 1);
      check_one_error_line(r);
      CHECK_THAT(r.err, Catch::Contains(f));
    }
  }
  Run bad = run(dir, "trace gen --value-df 1 --out '" + dir.file("x.h5") + "'");
  CHECK(bad.status == 2);
  check_one_error_line(bad);
  CHECK_THAT(bad.err, Catch::Contains("--value-df"));
  Run unknown = run(dir, "trace frobnicate");
  CHECK(unknown.status == 2);
}
