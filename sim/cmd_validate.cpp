// kvsim validate: the CPU reference and the CUDA twin on the same trace,
// every integer compared (tolerance zero).
//
// Per method and layer: the reference caches (reference/quant, driven as
// sim::replay drives them: prefill, then append / attend / end_step) against
// the GPU's one-pass replay (cuda::LayerEngine). Compared:
//   - per evaluated step and query head: the attention output o [D] (Q.40)
//     and the softmax denominator W (Q.40);
//   - per step: the number of quantized keys / values (the view rule);
//   - after every key flush and at the end: the attention view K_hat, V_hat
//     of every token (entry format);
//   - at the end: codes and fp16 scales/minima of every quantized group;
//     for kvlinc also the fitted correction (alpha, beta integers).
// First mismatch: step, layer, head, element and both values are printed, a
// small HDF5 repro is written, and the exit status is 1.
#include <hdf5.h>

#include <boost/program_options.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "analysis/h5util.hpp"
#include "cuda/kvsim_cuda.hpp"
#include "reference/attention/decode_attention.hpp"
#include "reference/quant/gq.hpp"
#include "reference/quant/kivi.hpp"
#include "reference/quant/kvarn.hpp"
#include "reference/attention/linear_correction.hpp"
#include "reference/quant/kvlinc.hpp"
#include "reference/quant/observe.hpp"
#include "reference/quant/registry.hpp"
#include "sim/cli_common.hpp"
#include "sim/entry.hpp"
#include "sim/replay_cuda.hpp"
#include "traces/trace.hpp"

namespace po = boost::program_options;
using namespace kvsim;

namespace {

struct Mismatch {
  bool found = false;
  std::string what;  // "attention output", "denominator", "key view", ...
  std::int64_t step = -1;
  int layer = -1, kv_head = -1, q_head = -1;
  std::int64_t element = -1;
  long long cpu = 0, gpu = 0;
  std::string method;
  // repro inputs
  std::vector<i64> q;
  std::vector<i32> k_cpu, v_cpu, k_gpu, v_gpu;
  std::vector<i64> out_cpu, out_gpu;
  i64 den_cpu = 0, den_gpu = 0;
  std::int64_t n = 0;
  int D = 0;
  ref::MethodConfig mc;
};

// Keeps the mismatch with the smallest (step, kv head) found by any thread.
struct FirstMismatch {
  std::mutex mu;
  Mismatch m;
  std::atomic<bool> any{false};
  void offer(Mismatch&& x) {
    std::lock_guard<std::mutex> lk(mu);
    if (!m.found || x.step < m.step || (x.step == m.step && x.kv_head < m.kv_head)) m = std::move(x);
    m.found = true;
    any = true;
  }
};

template <class T>
void write_ds(hid_t f, const char* name, hid_t type, const std::vector<T>& v, hsize_t rows, hsize_t cols) {
  if (v.empty()) return;
  const hsize_t dims[2] = {rows, cols};
  h5::Handle space(H5Screate_simple(cols ? 2 : 1, dims, nullptr), H5Sclose);
  h5::Handle ds(H5Dcreate2(f, name, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
  if (!ds.valid() || H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()) < 0)
    throw std::runtime_error(std::string("repro: cannot write ") + name);
}

void write_repro(const std::string& path, const Mismatch& m, const std::string& trace) {
  h5::Handle f(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose);
  if (!f.valid()) throw std::runtime_error(path + ": cannot create the repro file");
  h5::write_attr(f, "what", m.what);
  h5::write_attr(f, "trace", trace);
  h5::write_attr(f, "method", m.method);
  h5::write_attr(f, "bits", static_cast<std::int64_t>(m.mc.bits));
  h5::write_attr(f, "group", static_cast<std::int64_t>(m.mc.group));
  h5::write_attr(f, "residual", static_cast<std::int64_t>(m.mc.residual));
  h5::write_attr(f, "options", ref::method_options_text(m.mc));
  h5::write_attr(f, "step", m.step);
  h5::write_attr(f, "layer", static_cast<std::int64_t>(m.layer));
  h5::write_attr(f, "kv_head", static_cast<std::int64_t>(m.kv_head));
  h5::write_attr(f, "q_head", static_cast<std::int64_t>(m.q_head));
  h5::write_attr(f, "element", m.element);
  h5::write_attr(f, "value_cpu", static_cast<std::int64_t>(m.cpu));
  h5::write_attr(f, "value_gpu", static_cast<std::int64_t>(m.gpu));
  h5::write_attr(f, "den_cpu", static_cast<std::int64_t>(m.den_cpu));
  h5::write_attr(f, "den_gpu", static_cast<std::int64_t>(m.den_gpu));
  h5::write_attr(f, "formats", std::string("q: i64 Q.40 [D]; K, V: i32 Q11.20 [n][D]; out: i64 Q.40 [D]; den: Q.40"));
  const hsize_t n = static_cast<hsize_t>(m.n), D = static_cast<hsize_t>(m.D);
  write_ds(f, "q", H5T_NATIVE_INT64, m.q, D, 0);
  write_ds(f, "K_cpu", H5T_NATIVE_INT32, m.k_cpu, n, D);
  write_ds(f, "V_cpu", H5T_NATIVE_INT32, m.v_cpu, n, D);
  write_ds(f, "K_gpu", H5T_NATIVE_INT32, m.k_gpu, n, D);
  write_ds(f, "V_gpu", H5T_NATIVE_INT32, m.v_gpu, n, D);
  write_ds(f, "out_cpu", H5T_NATIVE_INT64, m.out_cpu, D, 0);
  write_ds(f, "out_gpu", H5T_NATIVE_INT64, m.out_gpu, D, 0);
}

struct ValidateCli {
  std::string trace, layers, repro = "kvsim_validate_repro.h5";
  std::vector<std::string> methods;
  int bits = 0, group = 0, residual = 0, threads = 0;
  std::int64_t every = 1, max_steps = -1;
  bool all_methods = false;
};

// The view of KV head h at (kq, vq), tokens [0, n): from the full-precision
// rows and the GPU's dequantized twins, all [T][Hkv][D].
// `until` (gq heavy hitters, LayerEngine::heavy_hitters; else empty): token s
// is seen at full precision during the steps t < until[s].
void gpu_view(const std::vector<i32>& k, const std::vector<i32>& v, const std::vector<i32>& kh,
              const std::vector<i32>& vh, const std::vector<i64>& until, int Hkv, int D, int h,
              const cuda::StepView& sv, std::int64_t n, std::vector<i32>& K, std::vector<i32>& V) {
  K.resize(static_cast<size_t>(n) * D);
  V.resize(K.size());
  for (std::int64_t s = 0; s < n; ++s) {
    const size_t at = (static_cast<size_t>(s) * Hkv + h) * D;
    const bool held = !until.empty() && sv.t < until[static_cast<size_t>(s)];
    const i32* kr = (s < sv.kq && !held ? kh.data() : k.data()) + at;
    const i32* vr = (s < sv.vq && !held ? vh.data() : v.data()) + at;
    std::copy(kr, kr + D, K.begin() + s * D);
    std::copy(vr, vr + D, V.begin() + s * D);
  }
}

// Validates one method on one layer. Returns the number of values compared.
std::uint64_t validate_layer(const traces::TraceReader& tr, const ref::MethodConfig& mc, int layer,
                             std::int64_t t_end, std::int64_t every, int threads, FirstMismatch& first) {
  const traces::TraceMeta& M = tr.meta();
  const int D = M.head_dim, Hq = M.num_q_heads, Hkv = M.num_kv_heads, group = Hq / Hkv;
  const std::int64_t P = M.prefill_len;
  const std::string label = ref::method_label(mc);

  // the layer's rows, entry format, all heads
  std::vector<i64> q(static_cast<size_t>(t_end) * Hq * D);
  std::vector<i32> k(static_cast<size_t>(t_end) * Hkv * D), v(k.size());
  {
    const std::int64_t tc = std::max<std::int64_t>(1, tr.chunk_tokens());
    std::vector<i64> cq;
    std::vector<i32> ck, cv;
    std::vector<float> f;
    for (std::int64_t t0 = 0; t0 < t_end; t0 += tc) {
      const std::int64_t n = std::min(tc, t_end - t0);
      sim::read_query(tr, layer, t0, n, cq, f);
      sim::read_entry(tr, layer, traces::Tensor::k, t0, n, ck, f);
      sim::read_entry(tr, layer, traces::Tensor::v, t0, n, cv, f);
      std::copy(cq.begin(), cq.end(), q.begin() + t0 * Hq * D);
      std::copy(ck.begin(), ck.end(), k.begin() + t0 * Hkv * D);
      std::copy(cv.begin(), cv.end(), v.begin() + t0 * Hkv * D);
    }
  }

  // GPU: upload, quantize groups, attend every evaluated step (batched)
  cuda::LayerEngine eng(Hq, Hkv, D, t_end);
  eng.set_prefill(std::min(P, t_end));
  eng.upload(0, t_end, q.data(), k.data(), v.data());
  const int view = eng.add_method(ref::layer_config(mc, layer));
  std::vector<i32> k_hat, v_hat, k_corr;
  eng.hat_rows(view, k_hat, v_hat);
  // a view whose quantized keys switch once (kvlinc's correction): corrected keys from kq >= corr_from
  const std::int64_t corr_from = eng.correction_from(view);
  eng.corrected_key_rows(view, k_corr);
  auto keys_at = [&](const cuda::StepView& sv) -> const std::vector<i32>& {
    return sv.kq >= corr_from ? k_corr : k_hat;
  };
  std::vector<std::int64_t> steps;
  for (std::int64_t t = P; t < t_end; t += every) steps.push_back(t);
  const size_t E = steps.size();
  std::vector<i64> gout(E * Hq * D), gden(E * Hq);
  {
    const std::int64_t kMaxScratch = std::int64_t{64} << 20;
    size_t e0 = 0;
    while (e0 < E) {
      size_t e1 = e0;
      std::int64_t w = 0;
      while (e1 < E && (e1 == e0 || w + Hq * (steps[e1] + 1) <= kMaxScratch)) w += Hq * (steps[e1++] + 1);
      std::vector<cuda::StepView> items;
      for (size_t e = e0; e < e1; ++e) items.push_back(cuda::view_at(mc, steps[e]));
      cuda::AttnOut out;
      eng.attend(view, items, false, out);
      std::copy(out.out.begin(), out.out.end(), gout.begin() + e0 * Hq * D);
      std::copy(out.den.begin(), out.den.end(), gden.begin() + e0 * Hq);
      e0 = e1;
    }
  }

  // CPU: the reference caches, one KV head per task
  std::atomic<std::uint64_t> compared{0};
  auto run_head = [&](int h) {
    std::uint64_t cnt = 0;
    auto cache = ref::make_cache(mc, layer, h, D);
    std::vector<i64> until, gacc, mass;  // gq heavy hitters: the GPU pool's history, final masses
    eng.heavy_hitters(view, h, until, gacc);
    std::vector<i32> pk(static_cast<size_t>(P) * D), pv(pk.size());
    for (std::int64_t t = 0; t < P; ++t)
      for (int d = 0; d < D; ++d) {
        pk[t * D + d] = k[(static_cast<size_t>(t) * Hkv + h) * D + d];
        pv[t * D + d] = v[(static_cast<size_t>(t) * Hkv + h) * D + d];
      }
    // the queries of a token's group of heads (calibration of kvlinc correction=linear)
    auto observe = [&](std::int64_t t) {
      cache->observe_queries(q.data() + (static_cast<size_t>(t) * Hq + static_cast<size_t>(h) * group) * D, group);
    };
    for (std::int64_t t = 0; t < P; ++t) observe(t);
    cache->prefill(P ? pk.data() : nullptr, P ? pv.data() : nullptr, P);
    const ref::KvlincCache* kvlinc = dynamic_cast<const ref::KvlincCache*>(cache.get());
    const ref::KiviCache* kivi = kvlinc ? &kvlinc->kivi() : dynamic_cast<const ref::KiviCache*>(cache.get());
    const ref::KvarnCache* kvarn = dynamic_cast<const ref::KvarnCache*>(cache.get());
    const ref::GqCache* gqc = dynamic_cast<const ref::GqCache*>(cache.get());
    auto cpu_kq = [&] { return kivi ? kivi->quantized_keys() : gqc ? gqc->quantized_keys() : 0; };
    auto cpu_vq = [&] { return kivi ? kivi->quantized_values() : gqc ? gqc->quantized_values() : 0; };
    // tokens seen through the method's quantized view (kivi, kvlinc, gq: keys; kvarn: keys and values)
    auto flushed = [&]() -> std::int64_t { return kvarn ? kvarn->flushed_tokens() : cpu_kq(); };
    std::vector<i64> logits, out(static_cast<size_t>(D));
    std::vector<i32> K, V;
    auto fail = [&](Mismatch&& m) {
      m.method = label;
      m.mc = mc;
      m.layer = layer;
      m.kv_head = h;
      m.D = D;
      first.offer(std::move(m));
    };
    // the view of all tokens [0, n) at state sv, compared element by element
    auto check_view = [&](const cuda::StepView& sv, std::int64_t n) -> bool {
      gpu_view(k, v, keys_at(sv), v_hat, until, Hkv, D, h, sv, n, K, V);
      for (int which = 0; which < 2; ++which) {
        const i32* c = which == 0 ? cache->keys() : cache->values();
        const std::vector<i32>& g = which == 0 ? K : V;
        for (std::int64_t i = 0; i < n * D; ++i)
          if (c[i] != g[static_cast<size_t>(i)]) {
            Mismatch m;
            m.what = which == 0 ? "key view" : "value view";
            m.step = sv.t;
            m.element = i;
            m.cpu = c[i];
            m.gpu = g[static_cast<size_t>(i)];
            fail(std::move(m));
            return false;
          }
      }
      cnt += static_cast<std::uint64_t>(2 * n * D);
      return true;
    };
    size_t e = 0;
    for (std::int64_t t = P; t < t_end; ++t) {
      if (first.any) return;
      const size_t row = (static_cast<size_t>(t) * Hkv + h) * D;
      observe(t);
      cache->append(k.data() + row, v.data() + row);
      const cuda::StepView sv = cuda::view_at(mc, t);
      if ((kivi || gqc) && (cpu_kq() != sv.kq || cpu_vq() != sv.vq)) {
        Mismatch m;
        m.what = "quantized token counts (kq, vq)";
        m.step = t;
        m.cpu = cpu_kq() * 1000000 + cpu_vq();
        m.gpu = sv.kq * 1000000 + sv.vq;
        fail(std::move(m));
        return;
      }
      if (kvarn && (kvarn->flushed_tokens() != sv.kq || sv.vq != sv.kq)) {
        Mismatch m;
        m.what = "flushed token count (kq = vq)";
        m.step = t;
        m.cpu = kvarn->flushed_tokens();
        m.gpu = sv.kq * 1000000 + sv.vq;
        fail(std::move(m));
        return;
      }
      const std::int64_t n = t + 1;
      if (e < E && steps[e] == t) {
        logits.resize(static_cast<size_t>(n));
        for (int g = 0; g < group; ++g) {
          const int qh = h * group + g;
          const i64* qr = q.data() + (static_cast<size_t>(t) * Hq + qh) * D;
          i64 W = 0;
          if (const ref::LinearCorrection* lc = cache->linear_correction())
            ref::decode_attention_linear_ref(qr, cache->keys(), cache->values(), n, D, logits.data(), out.data(),
                                             nullptr, &W, lc);
          else
            ref::decode_attention_ref(qr, cache->keys(), cache->values(), n, D, logits.data(), out.data(), nullptr,
                                      &W);
          const i64* go = gout.data() + (e * Hq + qh) * D;
          const i64 gW = gden[e * Hq + qh];
          std::int64_t bad = -1;
          for (int d = 0; d < D && bad < 0; ++d)
            if (out[d] != go[d]) bad = d;
          if (bad >= 0 || W != gW) {
            Mismatch m;
            m.what = bad >= 0 ? "attention output" : "softmax denominator";
            m.step = t;
            m.q_head = qh;
            m.element = bad;
            m.cpu = bad >= 0 ? out[bad] : W;
            m.gpu = bad >= 0 ? go[bad] : gW;
            m.q.assign(qr, qr + D);
            m.n = n;
            m.k_cpu.assign(cache->keys(), cache->keys() + n * D);
            m.v_cpu.assign(cache->values(), cache->values() + n * D);
            gpu_view(k, v, keys_at(sv), v_hat, until, Hkv, D, h, sv, n, m.k_gpu, m.v_gpu);
            m.out_cpu = out;
            m.out_gpu.assign(go, go + D);
            m.den_cpu = W;
            m.den_gpu = gW;
            fail(std::move(m));
            return;
          }
          cnt += static_cast<std::uint64_t>(D + 1);
        }
        ++e;
      }
      if (cache->observes())  // attention feedback (heavy hitters), every decode step, as the replay does
        ref::observe_step(*cache, q.data() + (static_cast<size_t>(t) * Hq + static_cast<size_t>(h) * group) * D,
                          group, mass);
      const std::int64_t kq_before = flushed();
      cache->end_step();
      if (gqc && gqc->config().hh > 0) {  // the pool after every step: the tokens the GPU holds at step t + 1
        std::int64_t held = 0, missing = -1;
        for (std::int64_t s : gqc->pool())
          if (!(t + 1 < until[static_cast<size_t>(s)])) missing = s;
        const std::int64_t end = ref::gq_pool_end(gqc->config(), n);
        for (std::int64_t s = gqc->config().sinks; s < end; ++s) held += t + 1 < until[static_cast<size_t>(s)] ? 1 : 0;
        if (missing >= 0 || held != static_cast<std::int64_t>(gqc->pool().size())) {
          Mismatch m;
          m.what = missing >= 0 ? "heavy-hitter pool (a CPU pool token the GPU does not hold)"
                                : "heavy-hitter pool size";
          m.step = t;
          m.element = missing;
          m.cpu = static_cast<long long>(gqc->pool().size());
          m.gpu = held;
          fail(std::move(m));
          return;
        }
        cnt += static_cast<std::uint64_t>(end);
      }
      // after a key flush, and after the last step: the whole view
      if (flushed() != kq_before || t == t_end - 1)
        if (!check_view(cuda::view_at(mc, t + 1), n)) return;
    }
    if (t_end == P && P > 0 && !check_view(cuda::view_at(mc, P), P)) return;
    // the compressed state at the end
    if (kivi || kvarn || gqc) {
      auto cmp_params = [&](const std::vector<ref::AsymParams>& c, const std::vector<ref::AsymParams>& g,
                            const char* what) -> bool {
        if (c.size() != g.size()) {
          Mismatch m;
          m.what = std::string(what) + " count";
          m.step = t_end;
          m.cpu = static_cast<long long>(c.size());
          m.gpu = static_cast<long long>(g.size());
          fail(std::move(m));
          return false;
        }
        for (size_t i = 0; i < c.size(); ++i)
          if (c[i].scale != g[i].scale || c[i].zero != g[i].zero) {
            Mismatch m;
            m.what = what;
            m.step = t_end;
            m.element = static_cast<std::int64_t>(i);
            m.cpu = (static_cast<long long>(c[i].scale) << 16) | c[i].zero;
            m.gpu = (static_cast<long long>(g[i].scale) << 16) | g[i].zero;
            fail(std::move(m));
            return false;
          }
        cnt += 2 * c.size();
        return true;
      };
      auto cmp_codes = [&](const std::vector<u32>& c, const std::vector<u32>& g, const char* what) -> bool {
        const size_t nmin = std::min(c.size(), g.size());
        for (size_t i = 0; i < std::max(c.size(), g.size()); ++i)
          if (i >= nmin || c[i] != g[i]) {
            Mismatch m;
            m.what = what;
            m.step = t_end;
            m.element = static_cast<std::int64_t>(i);
            m.cpu = i < c.size() ? static_cast<long long>(c[i]) : -1;
            m.gpu = i < g.size() ? static_cast<long long>(g[i]) : -1;
            fail(std::move(m));
            return false;
          }
        cnt += c.size();
        return true;
      };
      if (kivi) {
        const cuda::StepView fin = cuda::view_at(mc, t_end);
        const cuda::KiviState gs = eng.kivi_state(view, h, fin.kq, fin.vq);
        if (!cmp_params(kivi->key_params(), gs.key_params, "key scale/min (fp16 bits)")) return;
        if (!cmp_codes(kivi->key_codes(), gs.key_codes, "key code words")) return;
        if (!cmp_params(kivi->value_params(), gs.value_params, "value scale/min (fp16 bits)")) return;
        if (!cmp_codes(kivi->value_codes(), gs.value_codes, "value code words")) return;
        if (kvlinc) {  // the fitted correction: the same integers (empty on both sides when not fitted)
          const ref::KvlincAffine ga = eng.kvlinc_affine(view, h);
          const bool gfit = cuda::view_at(mc, t_end).kq >= corr_from;
          std::vector<u32> ca, cb, gaw, gbw;
          if (kvlinc->fitted()) {
            ca.assign(kvlinc->affine().alpha.begin(), kvlinc->affine().alpha.end());
            cb.assign(kvlinc->affine().beta.begin(), kvlinc->affine().beta.end());
          }
          if (gfit) {
            gaw.assign(ga.alpha.begin(), ga.alpha.end());
            gbw.assign(ga.beta.begin(), ga.beta.end());
          }
          if (!cmp_codes(ca, gaw, "kvlinc alpha (Q.24)")) return;
          if (!cmp_codes(cb, gbw, "kvlinc beta (Q.20)")) return;
          if (kvlinc->linear_correction()) {  // correction=linear: phi's parameters, then S and z at the end state
            std::vector<i128> gS, gz;
            const ref::KvlincLinear gl = eng.kvlinc_linear(view, h, cuda::view_at(mc, t_end).kq, gS, gz);
            const ref::KvlincLinear& cl = kvlinc->linear_params();
            auto words = [](const auto& x) {  // any integer vector as 32-bit words
              std::vector<u32> w;
              for (const auto& e : x) {
                const u128 u = static_cast<u128>(static_cast<i128>(e));
                for (size_t i = 0; i < sizeof(e) / 4; ++i) w.push_back(static_cast<u32>(u >> (32 * i)));
              }
              return w;
            };
            if (!cmp_codes(words(cl.w), words(gl.w), "kvlinc linear w (Q.24)")) return;
            if (!cmp_codes(words(cl.c), words(gl.c), "kvlinc linear c (Q.32)")) return;
            if (!cmp_codes(words(cl.b), words(gl.b), "kvlinc linear b (Q.32)")) return;
            if (!cmp_codes(words(kvlinc->linear_S()), words(gS), "kvlinc linear S (Q.44)")) return;
            if (!cmp_codes(words(kvlinc->linear_z()), words(gz), "kvlinc linear z (Q.24)")) return;
          }
        }
      } else if (kvarn) {
        const cuda::KvarnState gs = eng.kvarn_state(view, h, kvarn->quantized_tiles());
        auto u32s = [](const std::vector<u16>& x) { return std::vector<u32>(x.begin(), x.end()); };
        if (!cmp_params(kvarn->key_params(), gs.key_params, "key row scale/zero (fp16 bits)")) return;
        if (!cmp_codes(u32s(kvarn->key_col_scales()), u32s(gs.key_col_scales), "key column scales (fp16 bits)"))
          return;
        if (!cmp_codes(kvarn->key_codes(), gs.key_codes, "key code words")) return;
        if (!cmp_params(kvarn->value_params(), gs.value_params, "value row scale/zero (fp16 bits)")) return;
        if (!cmp_codes(u32s(kvarn->value_col_scales()), u32s(gs.value_col_scales), "value column scales (fp16 bits)"))
          return;
        if (!cmp_codes(kvarn->value_codes(), gs.value_codes, "value code words")) return;
      } else {
        const ref::GqTensorState &ks = gqc->key_state(), &vs = gqc->value_state();
        const cuda::GqState gs = eng.gq_state(view, h, ks.nq, vs.nq);
        auto words = [](const std::vector<i32>& b) { return std::vector<u32>(b.begin(), b.end()); };
        if (!cmp_params(ks.params, gs.key_params, "key scale/zero (fp16 bits)")) return;
        if (!cmp_codes(ks.codes, gs.key_codes, "key code words")) return;
        if (!cmp_params(vs.params, gs.value_params, "value scale/zero (fp16 bits)")) return;
        if (!cmp_codes(vs.codes, gs.value_codes, "value code words")) return;
        if (!cmp_codes(words(ks.codebook), words(gs.key_codebook), "key codebook (Q.15)")) return;
        if (!cmp_codes(words(vs.codebook), words(gs.value_codebook), "value codebook (Q.15)")) return;
        if (gqc->config().hh > 0) {  // the accumulated attention mass of every token (Q.30 sums)
          std::vector<u32> cw, gw;
          for (i64 x : gqc->accumulated()) cw.push_back(static_cast<u32>(x)), cw.push_back(static_cast<u32>(x >> 32));
          for (std::int64_t s = 0; s < t_end; ++s)
            gw.push_back(static_cast<u32>(gacc[s])), gw.push_back(static_cast<u32>(gacc[s] >> 32));
          if (!cmp_codes(cw, gw, "heavy-hitter accumulated mass (Q.30, lo/hi words)")) return;
        }
      }
    }
    compared += cnt;
  };
  std::vector<std::thread> pool;
  std::atomic<int> next{0};
  std::vector<std::exception_ptr> errs(static_cast<size_t>(Hkv));
  const int w = std::max(1, std::min(threads, Hkv));
  for (int i = 0; i < w; ++i)
    pool.emplace_back([&] {
      for (int h; (h = next.fetch_add(1)) < Hkv;) {
        try {
          run_head(h);
        } catch (...) {
          errs[static_cast<size_t>(h)] = std::current_exception();
        }
      }
    });
  for (auto& th : pool) th.join();
  for (auto& ep : errs)
    if (ep) std::rethrow_exception(ep);
  eng.check_guards();
  return compared;
}

}  // namespace

int kvsim_cmd_validate(int argc, char** argv) {
  ValidateCli o;
  po::options_description desc(
      "kvsim validate: replay a trace on the CPU reference and on the GPU and compare every integer\n"
      "(attention outputs Q.40, softmax denominators, quantized-token counts, attention views after\n"
      "every key flush and at the end, codes and fp16 scales of every group). Exit 1 on a mismatch.");
  desc.add_options()("help,h", "this help")
      ("trace", po::value(&o.trace)->required(), "trace file (HDF5, schema v1)")
      ("method,m", po::value(&o.methods)->multitoken(), "method spec, repeatable: NAME or NAME:key=value,...")
      ("all-methods", po::bool_switch(&o.all_methods), "every registry row (bits 2 and 4 where it takes bits)")
      ("bits", po::value(&o.bits), "bits for every method that takes bits")
      ("group", po::value(&o.group), "group size G")
      ("residual", po::value(&o.residual), "full-precision window R")
      ("layers", po::value(&o.layers), "layers: 0,2,5 or 0-3 (default all)")
      ("every", po::value(&o.every)->default_value(1), "compare the attention of every N-th decode step")
      ("max-steps", po::value(&o.max_steps)->default_value(-1), "stop after this many decode steps")
      ("threads", po::value(&o.threads)->default_value(0), "CPU threads (0: all cores)")
      ("repro", po::value(&o.repro)->default_value(o.repro), "HDF5 repro file written on a mismatch");
  po::variables_map vm;
  if (kvsim::sim::parse_command_line(argc, argv, desc, vm, "validate")) return 0;
  if (o.every < 1) {
    std::fprintf(stderr, "kvsim: error: validate: --every must be at least 1\n");
    return 2;
  }
  std::vector<ref::MethodConfig> methods;
  if (o.all_methods) {
    for (const auto& info : ref::kMethods) {
      if (info.uses_bits) {
        for (int b : {2, 4}) {
          ref::MethodConfig c = ref::default_config(info);
          c.bits = b;
          if (o.group > 0 && info.uses_group) c.group = o.group;
          if (o.residual > 0 && info.uses_residual) c.residual = o.residual;
          methods.push_back(c);
        }
      } else {
        methods.push_back(ref::default_config(info));
      }
    }
  }
  for (const auto& spec : o.methods) methods.push_back(sim::parse_method_spec(spec, o.bits, o.group, o.residual));
  if (methods.empty()) methods.push_back(sim::parse_method_spec("kivi", o.bits, o.group, o.residual));
  if (cuda::device_count() == 0) throw std::runtime_error("validate: " + cuda::device_description());

  traces::TraceReader tr(o.trace);
  const traces::TraceMeta& M = tr.meta();
  if (M.num_kv_heads <= 0 || M.num_q_heads % M.num_kv_heads != 0)
    throw std::runtime_error(o.trace + ": num_q_heads is not a multiple of num_kv_heads");
  std::vector<int> layers = sim::parse_layers(o.layers);
  if (layers.empty())
    for (int l = 0; l < M.num_layers; ++l) layers.push_back(l);
  for (int l : layers)
    if (l < 0 || l >= M.num_layers) throw std::runtime_error("--layers: layer " + std::to_string(l) + " is not in the trace");
  const std::int64_t t_end =
      o.max_steps >= 0 ? std::min(M.num_tokens, M.prefill_len + o.max_steps) : M.num_tokens;
  const int threads =
      o.threads > 0 ? o.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::printf("kvsim validate (git %s) on %s\n  trace=%s (L=%d Hq=%d Hkv=%d D=%d T=%lld P=%lld) layers=%s every=%lld "
              "max_steps=%lld methods=%s\n",
              sim::git_revision(), cuda::device_description().c_str(), o.trace.c_str(), M.num_layers, M.num_q_heads,
              M.num_kv_heads, M.head_dim, static_cast<long long>(M.num_tokens),
              static_cast<long long>(M.prefill_len), o.layers.empty() ? "all" : o.layers.c_str(),
              static_cast<long long>(o.every), static_cast<long long>(o.max_steps),
              sim::describe_methods(methods).c_str());
  std::uint64_t total = 0;
  for (const auto& mc : methods) {
    if (const std::string why = ref::check_method(mc, M.head_dim, M.num_layers, M.num_kv_heads); !why.empty())
      throw std::runtime_error(why);
    const auto t0 = std::chrono::steady_clock::now();
    std::uint64_t cnt = 0;
    for (int layer : layers) {
      FirstMismatch first;
      cnt += validate_layer(tr, mc, layer, t_end, o.every, threads, first);
      if (first.any) {
        const Mismatch& m = first.m;
        std::printf("MISMATCH %s: %s at step %lld, layer %d, kv head %d, q head %d, element %lld: cpu %lld (0x%llx) "
                    "gpu %lld (0x%llx)\n",
                    m.method.c_str(), m.what.c_str(), static_cast<long long>(m.step), m.layer, m.kv_head, m.q_head,
                    static_cast<long long>(m.element), m.cpu, static_cast<unsigned long long>(m.cpu), m.gpu,
                    static_cast<unsigned long long>(m.gpu));
        write_repro(o.repro, m, o.trace);
        std::printf("repro: %s\n", o.repro.c_str());
        return 1;
      }
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("  %-22s match: %llu values compared (%.1f s)\n", ref::method_label(mc).c_str(),
                static_cast<unsigned long long>(cnt), s);
    total += cnt;
  }
  std::printf("validate: full match, %llu values compared\n", static_cast<unsigned long long>(total));
  return 0;
}
