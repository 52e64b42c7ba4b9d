// The GPU replay equals the CPU replay bit for bit: same results file (every
// metric compared as a bit pattern), same CSV bytes, on small synthetic
// traces (prefill inside and outside the window, every > 1).
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <hdf5.h>

#include "reference/quant/registry.hpp"
#include "analysis/results.hpp"
#include "sim/cli_common.hpp"
#include "sim/replay.hpp"
#include "sim/replay_cuda.hpp"
#include "traces/synthetic.hpp"

using namespace kvsim;
namespace fs = std::filesystem;

namespace {
std::string slurp(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}
// /methods/<label>/<metric> of a results file, f64 (read directly: the
// comparison needs nothing but the datasets).
std::vector<double> read_metric(const std::string& file, const std::string& label, const char* metric) {
  const hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  REQUIRE(f >= 0);
  const std::string name = "/methods/" + label + "/" + metric;
  const hid_t d = H5Dopen2(f, name.c_str(), H5P_DEFAULT);
  REQUIRE(d >= 0);
  const hid_t sp = H5Dget_space(d);
  const hssize_t n = H5Sget_simple_extent_npoints(sp);
  std::vector<double> v(static_cast<size_t>(n));
  REQUIRE(H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()) >= 0);
  H5Sclose(sp);
  H5Dclose(d);
  H5Fclose(f);
  return v;
}
bool same_bits(const std::vector<double>& a, const std::vector<double>& b, std::string* where) {
  if (a.size() != b.size()) {
    *where = "sizes differ";
    return false;
  }
  for (size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(double)) != 0) {
      std::ostringstream s;
      s.precision(17);
      s << "index " << i << ": cpu " << a[i] << " gpu " << b[i];
      *where = s.str();
      return false;
    }
  return true;
}
}  // namespace

TEST_CASE("GPU replay writes the same results as the CPU replay, bit for bit", "[cuda][replay]") {
  const fs::path dir = fs::temp_directory_path() / ("kvsim_cuda_replay_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  struct Shape {
    std::int64_t prefill, decode;
    int head_dim;
    std::int64_t every;
  };
  for (const Shape sh : {Shape{40, 300, 64, 1}, Shape{200, 180, 128, 3}, Shape{0, 150, 96, 1}}) {
    traces::SynthParams sp;
    sp.layers = 2;
    sp.q_heads = 8;
    sp.kv_heads = 2;
    sp.head_dim = sh.head_dim;
    sp.prefill = sh.prefill;
    sp.decode = sh.decode;
    const std::string trace = (dir / ("t" + std::to_string(sh.prefill) + ".h5")).string();
    traces::generate_synthetic(sp, trace, {});
    INFO("trace P=" << sh.prefill << " decode=" << sh.decode << " D=" << sh.head_dim << " every=" << sh.every);
    sim::ReplayOptions o;
    o.trace = trace;
    o.methods = {sim::parse_method_spec("fp", 0, 0, 0), sim::parse_method_spec("kivi", 2, sh.head_dim == 96 ? 16 : 0, 0),
                 sim::parse_method_spec("kivi", 4, sh.head_dim == 96 ? 16 : 0, 64),
                 sim::parse_method_spec("kvarn-k2v2:tile=64", 0, 0, 0),
                 sim::parse_method_spec("kvlinc:correction=affine,calib=100", 2, sh.head_dim == 96 ? 16 : 0, 0),
                 sim::parse_method_spec("kvlinc:correction=linear,calib=100,rank=16", 2, sh.head_dim == 96 ? 16 : 0,
                                        0),
                 sim::parse_method_spec("gq:sinks=2,hh=16,kblock=32,vwindow=16", 0, 0, 0)};
    o.every = sh.every;
    o.threads = 4;
    o.out_h5 = (dir / "cpu.h5").string();
    o.out_csv = (dir / "cpu.csv").string();
    const sim::ReplaySummary sc = sim::replay(o);
    o.out_h5 = (dir / "gpu.h5").string();
    o.out_csv = (dir / "gpu.csv").string();
    const sim::ReplaySummary sg = sim::replay_cuda(o);
    REQUIRE(sc.evaluated_steps == sg.evaluated_steps);
    REQUIRE(slurp((dir / "cpu.csv").string()) == slurp((dir / "gpu.csv").string()));
    bool nonzero = false;
    for (const auto& mc : o.methods) {
      const std::string label = ref::method_label(mc);
      INFO("method " << label);
      for (const char* metric : {"rel_l2", "cosine", "attn_kl", "max_abs"}) {
        const std::vector<double> a = read_metric((dir / "cpu.h5").string(), label, metric);
        const std::vector<double> b = read_metric((dir / "gpu.h5").string(), label, metric);
        REQUIRE(a.size() == static_cast<size_t>(sc.evaluated_steps) * 2 * 8);
        std::string where;
        if (!same_bits(a, b, &where)) FAIL(metric << ": " << where);
        if (std::string(metric) == "rel_l2")
          for (double x : a) nonzero |= x > 0;
      }
      bool ts_nonzero = false;
      for (const char* name : analysis::kTokenScaleDatasets) {
        const std::vector<double> a = read_metric((dir / "cpu.h5").string(), label, name);
        const std::vector<double> b = read_metric((dir / "gpu.h5").string(), label, name);
        REQUIRE(a.size() == static_cast<size_t>(sc.evaluated_steps) * 2 * 2);
        std::string where;
        if (!same_bits(a, b, &where)) FAIL(name << ": " << where);
        for (double x : a) ts_nonzero |= x != 0;
      }
      REQUIRE(ts_nonzero == (mc.id != ref::MethodId::fp));
    }
    REQUIRE(nonzero);
    for (size_t m = 0; m < sc.methods.size(); ++m) REQUIRE(sc.methods[m].mean_rel_l2 == sg.methods[m].mean_rel_l2);
  }
  fs::remove_all(dir);
}
