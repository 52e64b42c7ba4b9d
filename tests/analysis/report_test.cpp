// kvsim report end to end on synthetic results files with known error laws:
// the fits, the crossing, the sawtooth, the Pareto flags, the images (valid
// PNGs with real pixel content), the HTML's links and the error cases.
#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <zlib.h>
#include <unistd.h>

#include <array>
#include <cmath>
#include <functional>
#include <sstream>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <vector>
#include <string>

#include "analysis/report.hpp"
#include "analysis/report_png.hpp"
#include "report_fixtures.hpp"

namespace fs = std::filesystem;
using namespace kvsim;
using namespace kvsim::analysis;

namespace {
// Temporary folders, removed when the test program exits (KVSIM_KEEP_TEST_FILES=1 keeps them).
struct TempDirs {
  std::vector<fs::path> dirs;
  ~TempDirs() {
    if (std::getenv("KVSIM_KEEP_TEST_FILES")) return;
    std::error_code ec;
    for (const auto& d : dirs) fs::remove_all(d, ec);
  }
} g_temp_dirs;

fs::path temp_dir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("kvsim_report_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  g_temp_dirs.dirs.push_back(p);
  return p;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

ReportOptions quiet() {
  ReportOptions o;
  o.log = nullptr;
  return o;
}

const ReportRow& row(const ReportResult& r, const std::string& label) {
  for (const auto& x : r.rows)
    if (x.label == label) return x;
  FAIL("no row " << label);
  return r.rows.front();
}

// The standard fixture, written once per test process.
const fs::path& standard_file() {
  static const fs::path p = [] {
    const fs::path d = temp_dir("fixture");
    const fs::path f = d / "std.h5";
    test::write_synthetic(f.string(), test::SynthGeom{}, test::standard_methods());
    return f;
  }();
  return p;
}

// A hand-made PNG (8-bit RGB, filter 0) for checking the inspector itself.
void write_png(const fs::path& p, int w, int h, const std::function<std::array<unsigned char, 3>(int, int)>& px) {
  std::vector<unsigned char> raw;
  for (int y = 0; y < h; ++y) {
    raw.push_back(0);
    for (int x = 0; x < w; ++x)
      for (unsigned char c : px(x, y)) raw.push_back(c);
  }
  uLongf n = compressBound(static_cast<uLong>(raw.size()));
  std::vector<unsigned char> z(n);
  REQUIRE(compress(z.data(), &n, raw.data(), static_cast<uLong>(raw.size())) == Z_OK);
  z.resize(n);
  std::ofstream o(p, std::ios::binary);
  auto be = [&](std::uint32_t v) {
    const unsigned char b[4] = {static_cast<unsigned char>(v >> 24), static_cast<unsigned char>(v >> 16),
                                static_cast<unsigned char>(v >> 8), static_cast<unsigned char>(v)};
    o.write(reinterpret_cast<const char*>(b), 4);
  };
  auto chunk = [&](const char* type, const std::vector<unsigned char>& d) {
    be(static_cast<std::uint32_t>(d.size()));
    std::vector<unsigned char> td(type, type + 4);
    td.insert(td.end(), d.begin(), d.end());
    o.write(reinterpret_cast<const char*>(td.data()), static_cast<std::streamsize>(td.size()));
    be(static_cast<std::uint32_t>(crc32(0, td.data(), static_cast<uInt>(td.size()))));
  };
  o.write("\x89PNG\r\n\x1a\n", 8);
  std::vector<unsigned char> ihdr = {0, 0, 0, 0, 0, 0, 0, 0, 8, 2, 0, 0, 0};
  for (int i = 0; i < 4; ++i) ihdr[i] = static_cast<unsigned char>(w >> (24 - 8 * i)), ihdr[4 + i] = static_cast<unsigned char>(h >> (24 - 8 * i));
  chunk("IHDR", ihdr);
  chunk("IDAT", z);
  chunk("IEND", {});
}

struct Run {
  int code;
  std::string out, err;
};
Run kvsim_run(const std::string& args, const fs::path& dir) {
  const char* bin = std::getenv("KVSIM_BIN");
  REQUIRE(bin != nullptr);
  const std::string o = (dir / "stdout.txt").string(), e = (dir / "stderr.txt").string();
  const int st = std::system((std::string(bin) + " " + args + " >" + o + " 2>" + e + " </dev/null").c_str());
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, slurp(o), slurp(e)};
}
}  // namespace

TEST_CASE("the PNG inspector tells a blank image from a drawn one and rejects broken files", "[report][png]") {
  const fs::path d = temp_dir("png");
  write_png(d / "blank.png", 64, 48, [](int, int) { return std::array<unsigned char, 3>{255, 255, 255}; });
  write_png(d / "drawn.png", 64, 48, [](int x, int y) {
    return std::array<unsigned char, 3>{static_cast<unsigned char>(x * 4), static_cast<unsigned char>(y * 5), 0};
  });
  const PngInfo b = inspect_png((d / "blank.png").string());
  REQUIRE(b.ok);
  CHECK(b.width == 64);
  CHECK(b.height == 48);
  CHECK(b.distinct_colors == 1);
  CHECK(b.non_background == 0);
  const PngInfo g = inspect_png((d / "drawn.png").string());
  REQUIRE(g.ok);
  CHECK(g.distinct_colors == 64 * 48);
  // Truncated: no IEND; not a PNG at all.
  const std::string full = slurp(d / "drawn.png");
  std::ofstream(d / "trunc.png", std::ios::binary) << full.substr(0, full.size() / 2);
  CHECK_FALSE(inspect_png((d / "trunc.png").string()).ok);
  std::ofstream(d / "text.png") << "hello";
  CHECK_FALSE(inspect_png((d / "text.png").string()).ok);
}

TEST_CASE("report on known laws: fits, crossing, sawtooth, Pareto, images and links", "[report]") {
  // Built once for all sections (Catch re-enters the test case per section).
  static const fs::path d = temp_dir("std");
  static const fs::path out = d / "rep";
  static const ReportResult r = build_report({standard_file().string()}, out.string(), quiet());
  REQUIRE(r.rows.size() == 4);
  // Ordered by bits per element, most first.
  CHECK(r.rows[0].label == "fp");
  CHECK(r.rows[3].label == "pow-b2");

  SECTION("power law: the log-log slope of the mean is the exponent, within its interval") {
    const ReportRow& p = row(r, "pow-b2");
    CHECK(p.slope_lo <= test::kPowB);
    CHECK(test::kPowB <= p.slope_hi);
    CHECK(p.slope_hi - p.slope_lo < 0.02);
    CHECK(std::fabs(p.slope - test::kPowB) < 0.01);
  }
  SECTION("linear growth: the drift per 1K steps, within its interval; slope of a line is below 1") {
    const ReportRow& l = row(r, "lin-b4");
    CHECK(l.drift_lo <= test::kLinD);
    CHECK(test::kLinD <= l.drift_hi);
    CHECK(l.drift_hi - l.drift_lo < 0.001);
    // Crossing: early level ~ c + d 50.5/1000 = 0.02101, 2x at s ~ 1101, the trailing
    // median of 100 steps lags by ~49.5 steps: t = P + s - 1 ~ 64 + 1150.
    CHECK(l.crossing_step >= 1195);
    CHECK(l.crossing_step <= 1235);
    CHECK(l.heads_crossed == 8);
    // The mean is known too: c + d * mean(s)/1000, s = 1..2000.
    CHECK(l.mean == Approx(test::kLinC + test::kLinD * 1000.5 / 1000).epsilon(1e-3));
  }
  SECTION("the sawtooth's peak/trough ratio over its residual period") {
    const ReportRow& s = row(r, "saw-b3");
    CHECK(s.period == test::kSawPeriod);
    CHECK(s.sawtooth_ratio == Approx(2.5).epsilon(1e-9));
    CHECK(std::fabs(s.slope) < 0.05);
    CHECK(s.crossing_step == -1);
    CHECK(std::isnan(row(r, "pow-b2").sawtooth_ratio));
  }
  SECTION("Pareto flags: fp (16 bits, ~1e-8) and the cheapest are on the front") {
    // means: pow-b2 (2.5 bits) ~0.1, saw-b3 (3.5) ~0.087, lin-b4 (4.5) ~0.04, fp (16) ~2.5e-8
    CHECK(row(r, "fp").pareto_mean);
    CHECK(row(r, "pow-b2").pareto_mean);
    CHECK(row(r, "lin-b4").pareto_mean);
    CHECK(row(r, "saw-b3").mean < row(r, "pow-b2").mean);
    CHECK(row(r, "saw-b3").pareto_mean);
  }
  SECTION("every plot is a valid, non-blank PNG with an SVG twin") {
    int n = 0;
    for (const auto& e : fs::directory_iterator(out)) {
      if (e.path().extension() != ".png") continue;
      ++n;
      const PngInfo p = inspect_png(e.path().string());
      INFO(e.path() << ": " << p.error);
      REQUIRE(p.ok);
      CHECK(p.width >= 600);
      CHECK(p.height >= 300);
      CHECK(p.distinct_colors >= 16);     // lines, bands, text: not one flat colour
      CHECK(p.non_background > 0.01);     // more than a frame
      CHECK(fs::exists(fs::path(e.path()).replace_extension(".svg")));
      CHECK(slurp(fs::path(e.path()).replace_extension(".svg")).find("<svg") != std::string::npos);
    }
    // curves_linear, curves_loglog, curves_panels, sawtooth, 4 heatmaps, pareto
    CHECK(n == 9);
  }
  SECTION("index.html links only to files inside the report folder, all present") {
    const std::string html = slurp(out / "index.html");
    REQUIRE(html.find("</html>") != std::string::npos);
    std::regex link("(?:href|src)=\"([^\"]+)\"");
    std::set<std::string> targets;
    for (auto it = std::sregex_iterator(html.begin(), html.end(), link); it != std::sregex_iterator(); ++it)
      targets.insert((*it)[1].str());
    CHECK(targets.size() >= 20);
    for (const auto& t : targets) {
      INFO(t);
      CHECK(t.find("://") == std::string::npos);
      CHECK(t.find("..") == std::string::npos);
      CHECK(t.front() != '/');
      CHECK(fs::exists(out / t));
    }
    CHECK(targets.count("pareto.png"));
    CHECK(targets.count("summary.csv"));
    // The runs' options and the absence of token-scale data are stated.
    CHECK(html.find("synthetic, seed 12345") != std::string::npos);
    CHECK(html.find("Not available") != std::string::npos);
  }
  SECTION("CSV tables are tidy: one header, constant column count") {
    for (const char* f : {"summary.csv", "curves.csv", "fits.csv", "sawtooth.csv", "worst_heads.csv"}) {
      std::ifstream in(out / f);
      std::string line;
      REQUIRE(std::getline(in, line));
      const auto cols = std::count(line.begin(), line.end(), ',');
      size_t rows = 0;
      while (std::getline(in, line)) {
        ++rows;
        INFO(f << ": " << line);
        REQUIRE(std::count(line.begin(), line.end(), ',') == cols);
      }
      CHECK(rows > 0);
    }
    // curves: 4 methods x 2000 steps
    std::ifstream in(out / "curves.csv");
    CHECK(std::count(std::istreambuf_iterator<char>(in), {}, '\n') == 1 + 4 * 2000);
  }
  SECTION("a second run replaces the report; no temporary folder is left") {
    std::ofstream(out / "stale.txt") << "x";
    build_report({standard_file().string()}, out.string(), quiet());
    CHECK_FALSE(fs::exists(out / "stale.txt"));
    CHECK(fs::exists(out / "index.html"));
    for (const auto& e : fs::directory_iterator(d)) CHECK(e.path().filename().string().find(".tmp") == std::string::npos);
  }
}

TEST_CASE("token-scale datasets, when present, are correlated with the error and drawn", "[report]") {
  const fs::path d = temp_dir("ts");
  const fs::path f = d / "ts.h5";
  test::SynthGeom g;
  g.decode = 600;
  auto ms = test::standard_methods();
  ms.resize(2);  // pow-b2 and lin-b4
  test::write_synthetic(f.string(), g, ms);
  // key scale error grows with the step like pow's error: rank correlation ~ 1 up to noise.
  test::add_dataset(f.string(), "pow-b2", "key_scale_err", 600, 2, 2,
                    [](size_t e, size_t, size_t) { return 0.1 * std::pow(e + 1.0, test::kPowB); });
  test::add_dataset(f.string(), "pow-b2", "value_scale_err", 600, 2, 2, [](size_t e, size_t, size_t) { return 0.05 + 1e-5 * e; });
  const ReportResult r = build_report({f.string()}, (d / "rep").string(), quiet());
  const std::string html = slurp(d / "rep" / "index.html");
  CHECK(fs::exists(d / "rep" / "token_scale.png"));
  CHECK(inspect_png((d / "rep" / "token_scale.png").string()).ok);
  CHECK(html.find("Not available") == std::string::npos);
  CHECK(html.find("lin-b4: no token-scale datasets") != std::string::npos);
  // Spearman of key_scale_err against each head's error: high (noise 5% vs growth 600^0.3).
  const std::string csv = slurp(d / "rep" / "token_scale.csv");
  std::istringstream in(csv);
  std::string line;
  std::getline(in, line);
  int n = 0;
  while (std::getline(in, line)) {
    if (line.find("key_scale_err") == std::string::npos) continue;
    ++n;
    const double rho = std::stod(line.substr(line.rfind(',') + 1));
    CHECK(rho > 0.8);
  }
  CHECK(n == 8);  // 2 layers x 4 query heads
  // Wrong shape: rejected with a message naming the dataset.
  test::add_dataset(f.string(), "lin-b4", "key_scale_err", 600, 2, 1, [](size_t, size_t, size_t) { return 1.0; });
  CHECK_THROWS_WITH(build_report({f.string()}, (d / "rep2").string(), quiet()), Catch::Contains("lin-b4/key_scale_err"));
  CHECK_FALSE(fs::exists(d / "rep2"));
}

TEST_CASE("bad inputs give one clear error and no report folder", "[report][errors]") {
  const fs::path d = temp_dir("err");
  const fs::path out = d / "rep";
  auto expect = [&](const std::vector<std::string>& files, const std::string& msg) {
    INFO(msg);
    CHECK_THROWS_WITH(build_report(files, out.string(), quiet()), Catch::Contains(msg));
    CHECK_FALSE(fs::exists(out));
    for (const auto& e : fs::directory_iterator(d)) CHECK(e.path().filename().string().find("rep.tmp") == std::string::npos);
  };
  expect({(d / "missing.h5").string()}, "no such file");
  std::ofstream(d / "empty.h5").close();
  expect({(d / "empty.h5").string()}, "not an HDF5 file");
  {  // an HDF5 file that is not a results file
    hid_t f = H5Fcreate((d / "other.h5").c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    H5Fclose(f);
  }
  expect({(d / "other.h5").string()}, "not a kvsim results file");
  test::SynthGeom g;
  g.decode = 0;
  test::write_synthetic((d / "zero.h5").string(), g, test::standard_methods());
  expect({(d / "zero.h5").string()}, "zero evaluated steps");
  test::write_synthetic((d / "nomethods.h5").string(), test::SynthGeom{}, {});
  expect({(d / "nomethods.h5").string()}, "holds no methods");
  test::SynthGeom g2;
  g2.q_heads = 8;
  g2.decode = 50;
  test::write_synthetic((d / "other_geom.h5").string(), g2, test::standard_methods());
  expect({standard_file().string(), (d / "other_geom.h5").string()}, "one model geometry");
  // An existing folder that is not a report is never replaced.
  fs::create_directories(out);
  std::ofstream(out / "precious.txt") << "keep";
  CHECK_THROWS_WITH(build_report({standard_file().string()}, out.string(), quiet()), Catch::Contains("not a kvsim report"));
  CHECK(fs::exists(out / "precious.txt"));
}

TEST_CASE("two results files: same labels are told apart by file", "[report]") {
  const fs::path d = temp_dir("two");
  test::SynthGeom g;
  g.decode = 300;
  auto ms = test::standard_methods();
  test::write_synthetic((d / "a.h5").string(), g, ms, 1);
  g.every = 7;
  ms.resize(2);
  test::write_synthetic((d / "b.h5").string(), g, ms, 2);
  const ReportResult r = build_report({(d / "a.h5").string(), (d / "b.h5").string()}, (d / "rep").string(), quiet());
  CHECK(r.rows.size() == 6);
  std::set<std::string> names;
  for (const auto& x : r.rows) names.insert(x.label);
  CHECK(names.size() == 6);
  CHECK(names.count("pow-b2 [a#1]"));
  CHECK(names.count("lin-b4 [b#2]"));
  CHECK(names.count("fp"));
}

TEST_CASE("kvsim report: exit codes and one-line errors", "[report][cli]") {
  const fs::path d = temp_dir("cli");
  const Run ok = kvsim_run("report " + standard_file().string() + " --out " + (d / "rep").string() + " --no-svg", d);
  INFO(ok.out << ok.err);
  REQUIRE(ok.code == 0);
  CHECK(ok.out.find("log-log slope") != std::string::npos);
  CHECK(ok.out.find("pow-b2") != std::string::npos);
  CHECK(fs::exists(d / "rep" / "index.html"));
  CHECK_FALSE(fs::exists(d / "rep" / "pareto.svg"));
  const Run miss = kvsim_run("report " + (d / "nope.h5").string() + " --out " + (d / "rep2").string(), d);
  CHECK(miss.code != 0);
  CHECK(miss.err.rfind("kvsim: error: ", 0) == 0);
  CHECK(std::count(miss.err.begin(), miss.err.end(), '\n') == 1);
  CHECK(miss.err.find("nope.h5") != std::string::npos);
  CHECK_FALSE(fs::exists(d / "rep2"));
  const Run noout = kvsim_run("report " + standard_file().string(), d);
  CHECK(noout.code == 2);
  CHECK(noout.err.rfind("kvsim: error: ", 0) == 0);
  const Run nofiles = kvsim_run("report --out " + (d / "rep3").string(), d);
  CHECK(nofiles.code == 2);
  CHECK(nofiles.err.find("no results files") != std::string::npos);
  const Run badgp = kvsim_run("report " + standard_file().string() + " --out " + (d / "rep4").string() +
                                  " --gnuplot /nonexistent/gnuplot", d);
  CHECK(badgp.code == 1);
  CHECK(badgp.err.find("gnuplot") != std::string::npos);
  CHECK_FALSE(fs::exists(d / "rep4"));
}
