// Synthetic results files with known error laws, for the report tests.
#pragma once
#include <hdf5.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "analysis/results.hpp"

namespace kvsim::test {

struct SynthMethod {
  std::string label, method;
  int bits = 2, group = 0, residual = 0;
  double bpe = 2.5;
  // err(t, s, layer slot, head, rng) for token t, decode step s = t - P + 1
  std::function<double(std::int64_t, double, int, int, std::mt19937_64&)> err;
};

struct SynthGeom {
  int layers = 2, q_heads = 4, kv_heads = 2, head_dim = 64;
  std::int64_t prefill = 64, decode = 2000, every = 1;
};

inline void write_synthetic(const std::string& path, const SynthGeom& g, const std::vector<SynthMethod>& ms,
                            std::uint64_t seed = 12345) {
  analysis::ResultsMeta meta;
  meta.text = {{"trace_path", "synthetic"}, {"trace_model", "synthetic-test"}, {"trace_source", "report_fixtures.hpp"},
               {"trace_dtype", "fp32"}, {"options", "synthetic, seed " + std::to_string(seed)},
               {"command_line", "report test"}, {"git_revision", "test"}};
  meta.ints = {{"num_layers", g.layers}, {"num_kv_heads", g.kv_heads}, {"head_dim", g.head_dim},
               {"num_tokens", g.prefill + g.decode}, {"prefill_len", g.prefill}, {"trace_seed", 1}, {"every", g.every}};
  for (std::int64_t t = g.prefill; t < g.prefill + g.decode; t += g.every) meta.steps.push_back(t);
  for (int l = 0; l < g.layers; ++l) meta.layers.push_back(l);
  meta.q_heads = g.q_heads;
  for (const auto& m : ms) {
    analysis::MethodColumns c;
    c.label = m.label;
    c.method = m.method;
    c.bits = m.bits;
    c.group = m.group;
    c.residual = m.residual;
    c.bits_per_element = m.bpe;
    c.summary = "synthetic " + m.label;
    c.origin = "test";
    meta.methods.push_back(c);
  }
  analysis::ResultsWriter w(path, meta);
  std::mt19937_64 rng(seed);
  const size_t E = meta.steps.size();
  for (size_t mi = 0; mi < ms.size(); ++mi)
    for (int l = 0; l < g.layers; ++l) {
      std::vector<analysis::StepMetrics> block(E * static_cast<size_t>(g.q_heads));
      for (size_t e = 0; e < E; ++e)
        for (int h = 0; h < g.q_heads; ++h) {
          const std::int64_t t = meta.steps[e];
          const double v = ms[mi].err(t, static_cast<double>(t - g.prefill + 1), l, h, rng);
          auto& s = block[e * static_cast<size_t>(g.q_heads) + static_cast<size_t>(h)];
          s.rel_l2 = v;
          s.cosine = 1 - v * v / 2;
          s.attn_kl = v * v;
          s.max_abs = v * 3;
        }
      w.write_block(static_cast<int>(mi), l, block);
    }
  w.close();
}

// Adds /methods/<label>/<name> f64 [E][L][Hkv] to an existing results file.
inline void add_dataset(const std::string& path, const std::string& label, const std::string& name, hsize_t E, hsize_t L,
                        hsize_t Hkv, const std::function<double(size_t, size_t, size_t)>& f) {
  hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  const hsize_t dims[3] = {E, L, Hkv};
  hid_t sp = H5Screate_simple(3, dims, nullptr);
  const std::string p = "/methods/" + label + "/" + name;
  hid_t ds = H5Dcreate2(file, p.c_str(), H5T_IEEE_F64LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  std::vector<double> v(E * L * Hkv);
  for (size_t e = 0; e < E; ++e)
    for (size_t l = 0; l < L; ++l)
      for (size_t k = 0; k < Hkv; ++k) v[(e * L + l) * Hkv + k] = f(e, l, k);
  H5Dwrite(ds, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data());
  H5Dclose(ds);
  H5Sclose(sp);
  H5Fclose(file);
}

// The four methods of the standard fixture; their laws are what the tests expect.
inline constexpr double kPowA = 0.01, kPowB = 0.3, kPowNoise = 0.05;  // err = a s^b e^N(0, noise) * head factor
inline constexpr double kLinC = 0.02, kLinD = 0.02, kLinNoise = 0.001;  // err = c + d s/1000 + N(0, noise)
inline constexpr int kSawPeriod = 32;                                    // err = 0.05 (1 + 1.5 (1 - (t mod 32)/31))

inline std::vector<SynthMethod> standard_methods() {
  std::vector<SynthMethod> ms;
  ms.push_back({"pow-b2", "pow", 2, 0, 0, 2.5, [](std::int64_t, double s, int l, int h, std::mt19937_64& r) {
                  std::normal_distribution<double> n(0, kPowNoise);
                  return kPowA * std::pow(s, kPowB) * std::exp(n(r)) * (1 + 0.3 * h + 0.5 * l);
                }});
  ms.push_back({"lin-b4", "lin", 4, 0, 0, 4.5, [](std::int64_t, double s, int, int, std::mt19937_64& r) {
                  std::normal_distribution<double> n(0, kLinNoise);
                  return kLinC + kLinD * s / 1000 + n(r);
                }});
  ms.push_back({"saw-b3", "saw", 3, 32, kSawPeriod, 3.5, [](std::int64_t t, double, int, int, std::mt19937_64&) {
                  return 0.05 * (1 + 1.5 * (1 - static_cast<double>(t % kSawPeriod) / (kSawPeriod - 1)));
                }});
  ms.push_back({"fp", "fp", 16, 0, 0, 16.0, [](std::int64_t, double, int, int h, std::mt19937_64& r) {
                  std::uniform_real_distribution<double> u(0.9, 1.1);
                  return 1e-8 * u(r) * (1 + h);
                }});
  return ms;
}

}  // namespace kvsim::test
