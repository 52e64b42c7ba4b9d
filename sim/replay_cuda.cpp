#include "sim/replay_cuda.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <future>
#include <cstdlib>
#include <climits>
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <stdexcept>
#include <thread>

#include "analysis/metrics.hpp"
#include "analysis/results.hpp"
#include "cuda/kvsim_cuda.hpp"
#include "reference/attention/decode_attention.hpp"
#include "reference/attention/oracle.hpp"
#include "reference/fixed/fixed.hpp"
#include "sim/entry.hpp"
#include "sim/progress.hpp"
#include "sim/replay_output.hpp"
#include "traces/trace.hpp"

namespace kvsim::sim {
namespace {

using traces::Tensor;

}  // namespace

bool cuda_available() { return cuda::device_count() > 0; }

ReplaySummary replay_cuda(const ReplayOptions& opt) {
  const auto wall0 = std::chrono::steady_clock::now();
  if (cuda::device_count() == 0) throw std::runtime_error("--device cuda: " + cuda::device_description());
  // the CUDA context is created while the host opens the trace and counts bits
  std::exception_ptr warm_err;
  std::thread warm([&] {
    try {
      cuda::warm_up();
    } catch (...) {
      warm_err = std::current_exception();
    }
  });
  struct Joiner {
    std::thread& t;
    ~Joiner() {
      if (t.joinable()) t.join();
    }
  } joiner{warm};
  const bool timing = std::getenv("KVSIM_TIMING") != nullptr;
  auto lap = [&, last = wall0](const char* what) mutable {
    if (!timing) return;
    const auto now = std::chrono::steady_clock::now();
    std::fprintf(stderr, "[timing] %-28s %8.3f s\n", what, std::chrono::duration<double>(now - last).count());
    last = now;
  };
  traces::TraceReader tr(opt.trace);
  const traces::TraceMeta& M = tr.meta();
  const int D = M.head_dim, Hq = M.num_q_heads, Hkv = M.num_kv_heads;
  const std::int64_t T = M.num_tokens, P = M.prefill_len;
  const ReplayPlan plan = plan_replay(opt, M, /*measure_bits=*/false);  // bits measured below, in parallel
  const std::vector<int>& layers = plan.layers;
  std::vector<analysis::MethodColumns> cols = plan.cols;
  const int NM = static_cast<int>(cols.size());
  const std::int64_t t_end = plan.t_end;
  const std::vector<std::int64_t>& steps = plan.steps;
  const size_t E = steps.size();

  // bits per element: the reference state machine run over T tokens, one
  // thread per method, joined before anything that reports it
  std::vector<std::future<double>> bpe;
  for (const auto& mc : opt.methods)
    bpe.push_back(std::async(std::launch::async, [mc, D, T] {
      return ref::bits_per_element(mc, D, std::max<std::int64_t>(T, 1));
    }));
  auto join_bits = [&] {
    for (size_t m = 0; m < bpe.size(); ++m)
      if (bpe[m].valid()) cols[m].bits_per_element = bpe[m].get();
  };
  std::unique_ptr<analysis::ResultsWriter> writer;
  auto open_writer = [&] {
    if (writer || opt.out_h5.empty()) return;
    join_bits();
    writer = std::make_unique<analysis::ResultsWriter>(opt.out_h5, results_meta(opt, M, steps, layers, cols));
  };
  CsvResults csv(opt.out_csv);

  const int threads = opt.threads > 0 ? opt.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const std::int64_t tc = std::max<std::int64_t>(1, tr.chunk_tokens());
  Progress bar(opt.progress, static_cast<std::int64_t>(layers.size()) * static_cast<std::int64_t>(E), "replay (cuda)");

  ReplaySummary summary = start_summary(plan, P);

  // One layer's rows on the host, read chunk by chunk from the trace: the
  // next layer is read on a worker thread while the current one computes
  // (and the first while the CUDA context is created).
  struct LayerRows {
    std::vector<i64> q;               // [T][Hq][D] query format
    std::vector<i32> k, v;            // [T][Hkv][D] entry format
    std::vector<float> qf, kf, vf;    // exact values, same shapes
  };
  auto read_layer = [&tr, &tc, t_end, Hq, Hkv, D](int layer) {
    LayerRows r;
    const size_t qrow = static_cast<size_t>(Hq) * D, row = static_cast<size_t>(Hkv) * D;
    r.q.resize(static_cast<size_t>(t_end) * qrow);
    r.qf.resize(r.q.size());
    r.k.resize(static_cast<size_t>(t_end) * row);
    r.v.resize(r.k.size());
    r.kf.resize(r.k.size());
    r.vf.resize(r.k.size());
    std::vector<i64> q;
    std::vector<i32> k, v;
    std::vector<float> qf, kf, vf;
    for (std::int64_t t0 = 0; t0 < t_end; t0 += tc) {
      const std::int64_t n = std::min(tc, t_end - t0);
      read_query(tr, layer, t0, n, q, qf);
      read_entry(tr, layer, Tensor::k, t0, n, k, kf);
      read_entry(tr, layer, Tensor::v, t0, n, v, vf);
      std::copy(q.begin(), q.end(), r.q.begin() + static_cast<std::ptrdiff_t>(t0 * qrow));
      std::copy(qf.begin(), qf.end(), r.qf.begin() + static_cast<std::ptrdiff_t>(t0 * qrow));
      std::copy(k.begin(), k.end(), r.k.begin() + static_cast<std::ptrdiff_t>(t0 * row));
      std::copy(v.begin(), v.end(), r.v.begin() + static_cast<std::ptrdiff_t>(t0 * row));
      std::copy(kf.begin(), kf.end(), r.kf.begin() + static_cast<std::ptrdiff_t>(t0 * row));
      std::copy(vf.begin(), vf.end(), r.vf.begin() + static_cast<std::ptrdiff_t>(t0 * row));
    }
    return r;
  };
  const bool any_rows = t_end > 0 && E > 0;
  std::future<LayerRows> next_rows;
  if (any_rows && !layers.empty()) next_rows = std::async(std::launch::async, read_layer, layers[0]);

  lap("setup (trace, bits/element)");
  warm.join();
  if (warm_err) std::rethrow_exception(warm_err);
  lap("CUDA context");
  for (size_t li = 0; li < layers.size(); ++li) {
    const int layer = layers[li];
    std::vector<std::vector<analysis::StepMetrics>> block(NM, std::vector<analysis::StepMetrics>(E * Hq));
    std::vector<std::array<std::vector<double>, 4>> ts(static_cast<size_t>(NM));  // [m][k]: [E][Hkv]
    for (auto& a : ts)
      for (auto& x : a) x.assign(E * Hkv, 0.0);
    if (any_rows) {
      // 1. the layer's rows onto the device (read ahead on a worker thread);
      //    the exact floats go to the oracle, the entry rows stay for the token scale
      LayerRows rows = next_rows.get();
      if (li + 1 < layers.size()) next_rows = std::async(std::launch::async, read_layer, layers[li + 1]);
      cuda::LayerEngine eng(Hq, Hkv, D, t_end);
      eng.set_prefill(std::min(P, t_end));
      cuda::OracleEngine orc(Hq, Hkv, D, t_end);
      eng.upload(0, t_end, rows.q.data(), rows.k.data(), rows.v.data());
      orc.upload(0, t_end, rows.qf.data(), rows.kf.data(), rows.vf.data());
      const size_t row = static_cast<size_t>(Hkv) * D;
      const std::vector<i32>& kx = rows.k;  // entry rows [T][Hkv][D]
      const std::vector<i32>& vx = rows.v;
      lap("read + upload layer");
      // 2. each method quantizes all its groups once
      std::vector<int> view(static_cast<size_t>(NM));
      for (int m = 0; m < NM; ++m) view[m] = eng.add_method(ref::layer_config(opt.methods[m], layer));
      lap("quantize groups");
      // token scale: r of every token's dequantized twin (0 where the twin is
      // the full-precision row), prefix sums per KV head; during step t the
      // view shows the twin of tokens s < kq (keys) and s < vq (values), so the
      // sums over the view are prefix sums: the same integers the CPU scan adds.
      parallel_for(NM, threads, [&](std::int64_t mm) {
        const int m = static_cast<int>(mm);
        std::vector<i32> kh, vh, kc;
        eng.hat_rows(view[m], kh, vh);
        // a view whose quantized keys switch once (kvlinc's correction): corrected keys from kq >= corr_from
        const i64 corr_from = eng.correction_from(view[m]);
        if (corr_from != INT64_MAX) eng.corrected_key_rows(view[m], kc);
        // r of every token's twin, and its prefix sums
        struct Scan {
          std::vector<i64> r;
          std::vector<analysis::TokenScaleSum> p;
        };
        auto prefix = [&](const std::vector<i32>& hat, const std::vector<i32>& full, int h) {
          Scan sc{std::vector<i64>(static_cast<size_t>(t_end)),
                  std::vector<analysis::TokenScaleSum>(static_cast<size_t>(t_end) + 1)};
          for (std::int64_t s = 0; s < t_end; ++s) {
            const size_t at = static_cast<size_t>(s) * row + static_cast<size_t>(h) * D;
            sc.r[s] = analysis::log_norm_ratio_q40(hat.data() + at, full.data() + at, D);
            sc.p[s + 1] = sc.p[s];
            sc.p[s + 1].add(sc.r[s]);
          }
          return sc;
        };
        std::vector<i64> until, acc;
        for (int h = 0; h < Hkv; ++h) {
          const Scan pk = prefix(kh, kx, h), pv = prefix(vh, vx, h);
          const Scan pc = kc.empty() ? Scan{} : prefix(kc, kx, h);
          eng.heavy_hitters(view[m], h, until, acc);  // gq hh: tokens held at full precision (r = 0 then)
          for (size_t e = 0; e < E; ++e) {
            const cuda::StepView sv = cuda::view_at(opt.methods[m], steps[e]);
            const size_t at = e * Hkv + static_cast<size_t>(h);
            const Scan& keys = sv.kq >= corr_from ? pc : pk;
            analysis::TokenScaleSum ks = keys.p[static_cast<size_t>(sv.kq)], vs = pv.p[static_cast<size_t>(sv.vq)];
            if (!until.empty())
              for (std::int64_t s = 0; s < std::max(sv.kq, sv.vq); ++s)
                if (steps[e] < until[static_cast<size_t>(s)]) {
                  if (s < sv.kq) ks.sub(keys.r[static_cast<size_t>(s)]);
                  if (s < sv.vq) vs.sub(pv.r[static_cast<size_t>(s)]);
                }
            ks.finish(steps[e] + 1, ts[m][0][at], ts[m][2][at]);
            vs.finish(steps[e] + 1, ts[m][1][at], ts[m][3][at]);
          }
        }
      });
      lap("token scale");
      // 3. evaluated steps in batches bounded by the weights they return
      //    (a batch's attention runs on a worker thread while the host computes
      //    the previous batch's oracle and metrics; each slot is written once)
      const std::int64_t kMaxWeights = std::int64_t{4} << 20;  // per method, 32 MiB of i64
      std::vector<std::pair<size_t, size_t>> batches;
      for (size_t b0 = 0; b0 < E;) {
        size_t b1 = b0;
        std::int64_t w = 0;
        while (b1 < E && (b1 == b0 || w + Hq * (steps[b1] + 1) <= kMaxWeights)) w += Hq * (steps[b1++] + 1);
        batches.emplace_back(b0, b1);
        b0 = b1;
      }
      auto attend_batch = [&](size_t b) {
        return std::async(std::launch::async, [&, b] {
          std::vector<cuda::AttnOut> o(static_cast<size_t>(NM));
          for (int m = 0; m < NM; ++m) {
            std::vector<cuda::StepView> items;
            for (size_t e = batches[b].first; e < batches[b].second; ++e)
              items.push_back(cuda::view_at(opt.methods[m], steps[e]));
            eng.attend(view[m], items, true, o[m]);
          }
          return o;
        });
      };
      auto next = attend_batch(0);
      for (size_t b = 0; b < batches.size(); ++b) {
        const size_t e0 = batches[b].first, e1 = batches[b].second;
        const std::vector<cuda::AttnOut> outs = next.get();
        if (b + 1 < batches.size()) next = attend_batch(b + 1);
        lap("attention (GPU) + download");
        // 4. the oracle (ref::oracle_attention split: GPU loops, host exp), then the metrics
        const std::int64_t pairs = static_cast<std::int64_t>(e1 - e0) * Hq;
        const std::vector<i64> bsteps(steps.begin() + static_cast<std::ptrdiff_t>(e0),
                                      steps.begin() + static_cast<std::ptrdiff_t>(e1));
        std::vector<i64> soff;
        std::vector<double> sc, numer;
        orc.scores(bsteps, 1.0 / std::sqrt(static_cast<double>(D)), soff, sc);
        std::vector<double> den(static_cast<size_t>(pairs));
        parallel_for(pairs, threads, [&](std::int64_t p) {
          const size_t eb = static_cast<size_t>(p / Hq);
          const int qh = static_cast<int>(p % Hq);
          const std::int64_t n = bsteps[eb] + 1;
          double* s = sc.data() + soff[eb] + static_cast<std::int64_t>(qh) * n;
          double m = -INFINITY;
          for (std::int64_t t = 0; t < n; ++t) m = std::max(m, s[t]);
          ref::CompensatedSum cs;
          for (std::int64_t t = 0; t < n; ++t) {
            s[t] = std::exp(s[t] - m);
            cs.add(s[t]);
          }
          den[static_cast<size_t>(p)] = cs.value();
        });
        lap("oracle scores + host exp");
        orc.numerators(bsteps, sc, numer);
        lap("oracle numerators");
        parallel_for(pairs, threads, [&](std::int64_t p) {
          const size_t eb = static_cast<size_t>(p / Hq);  // index within the batch
          const int qh = static_cast<int>(p % Hq);
          const size_t e = e0 + eb;
          const std::int64_t n = steps[e] + 1;
          const double W = den[static_cast<size_t>(p)];
          const double* ex = sc.data() + soff[eb] + static_cast<std::int64_t>(qh) * n;
          thread_local std::vector<double> probs, o_ref, o;
          probs.resize(static_cast<size_t>(n));
          o_ref.resize(static_cast<size_t>(D));
          o.resize(static_cast<size_t>(D));
          for (int d = 0; d < D; ++d) o_ref[d] = numer[static_cast<size_t>(p) * D + d] / W;
          for (std::int64_t t = 0; t < n; ++t) probs[t] = ex[t] / W;
          for (int m = 0; m < NM; ++m) {
            const cuda::AttnOut& A = outs[m];
            const i64* of = A.out.data() + (eb * Hq + qh) * D;
            for (int d = 0; d < D; ++d) o[d] = fx::to_double(of[d], ref::kOutFrac);
            block[m][e * Hq + qh] = analysis::step_metrics(o.data(), o_ref.data(), D, A.weights_of(eb, qh, n),
                                                           A.den[eb * Hq + qh], probs.data(), n);
          }
        });
        lap("metrics (host)");
        bar.advance(static_cast<std::int64_t>(e1 - e0));
      }
    }

    open_writer();
    for (int m = 0; m < NM; ++m)
      emit_layer(cols[m], m, static_cast<int>(li), layer, steps, Hq, block[m], ts[m], writer.get(), csv,
                 summary.methods[m]);
  }
  bar.finish();
  join_bits();
  open_writer();  // (no layer: the file still gets its metadata)
  for (int m = 0; m < NM; ++m) summary.methods[m].bits_per_element = cols[m].bits_per_element;
  lap("results written");

  csv.commit();
  if (writer) writer->close();
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
  return summary;
}

}  // namespace kvsim::sim
