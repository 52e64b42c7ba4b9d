// LayerEngine (kvsim_cuda.hpp): one layer of a trace on the device, each
// method's views, and the one-pass exact attention over many decode steps.
#include <algorithm>
#include <climits>
#include <cstdio>
#include <map>
#include <stdexcept>
#include <string>

#include "cuda/attention/decode_attention.cuh"
#include "cuda/common.cuh"
#include "cuda/kvsim_cuda.hpp"
#include "cuda/quant/gq.cuh"
#include "cuda/quant/kivi.cuh"
#include "cuda/quant/kvarn.cuh"
#include "cuda/quant/kvlinc.cuh"

namespace kvsim::cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

void warm_up() { KVSIM_CUDA_TRY(cudaFree(nullptr)); }

std::string device_description() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) return std::string("no CUDA device (") + cudaGetErrorString(e) + ")";
  if (n == 0) return "no CUDA device";
  cudaDeviceProp p{};
  KVSIM_CUDA_TRY(cudaGetDeviceProperties(&p, 0));
  char buf[640];
  std::snprintf(buf, sizeof buf, "%s (sm_%d%d, %d SMs, %.1f GiB)", p.name, p.major, p.minor, p.multiProcessorCount,
                static_cast<double>(p.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
  return buf;
}

StepView view_at(const ref::MethodConfig& m, i64 t) {
  switch (m.id) {
    case ref::MethodId::fp:
      return {t, 0, 0};
    case ref::MethodId::kivi:
    case ref::MethodId::kvlinc: {
      const i64 R = m.residual;
      return {t, (t / R) * R, std::max<i64>(0, t - R)};
    }
    case ref::MethodId::kvarn: {
      const i64 G = ref::kvarn_config(m).tile;
      return {t, (t / G) * G, (t / G) * G};
    }
    case ref::MethodId::gq: {
      ref::GqConfig c;
      if (const std::string why = ref::gq_config(m, 0, &c); !why.empty()) throw std::runtime_error(why);
      return {t, ref::gq_quantized_tokens(c.k, c.sinks, c.calib, t), ref::gq_quantized_tokens(c.v, c.sinks, c.calib, t)};
    }
  }
  throw std::runtime_error("view_at: method without a CUDA view rule");
}

namespace {
struct MethodViews {
  ref::MethodConfig m;
  bool quantized = false;           // false: K_hat = K (fp)
  DeviceBuffer<i32> k_hat, v_hat;   // [T][Hkv][D]
  DeviceBuffer<ref::AsymParams> kparams, vparams;  // [Hkv][ng][D], [Hkv][T][D/G]
  DeviceBuffer<u32> kcodes, vcodes;                // [Hkv][ng][D][wpg], [Hkv][T][wpt]
  DeviceBuffer<u16> kcol, vcol;                    // kvarn: [Hkv][ng][G], [Hkv][ng][D]
  i64 ng = 0;  // kivi: key groups; kvarn: quantized tiles
  int wpg = 0, wpt = 0;
  // kvlinc: corrected keys seen from states with kq >= corr_from; alpha/beta [Hkv][D] (host copies)
  DeviceBuffer<i32> k_corr, alpha, beta;
  i64 corr_from = LLONG_MAX;
  std::vector<i32> alpha_h, beta_h;
  // gq, per tensor (0 keys, 1 values): blocks quantized, groups per block, words per group, codebooks
  ref::GqConfig gq;
  i64 gq_nb[2] = {0, 0};
  int gq_gpb[2] = {0, 0}, gq_wpg[2] = {0, 0};
  DeviceBuffer<i32> gq_books[2];     // [Hkv][2^(b d)][d]
  std::vector<i32> gq_host_books[2];
  // gq heavy hitters (hh > 0): the pool's history (gq.cuh, GqPoolDevice)
  DeviceBuffer<i64> hh_until, hh_acc, hh_pool;  // [T][Hkv], [Hkv][T], [Hkv][T]
  DeviceBuffer<int> hh_n;                       // [Hkv]
  std::vector<int> head_view;  // mixed precision: KV head h's rows and state come from view head_view[h]
  // kvlinc correction=linear: w [Hkv][r][D], c, b [Hkv][r] (host fit), prefix states S, z per kq / R
  int lin_rank = 0;
  i64 lin_from = LLONG_MAX, lin_R = 1, lin_nb = 0;
  std::vector<i32> lin_w_h;
  std::vector<i64> lin_c_h, lin_b_h;
  DeviceBuffer<i32> lin_w;
  DeviceBuffer<i64> lin_c, lin_b, lin_phi;
  DeviceBuffer<i128> lin_S, lin_z;
};
}  // namespace

namespace {
struct EngineRows;
}  // namespace

struct LayerEngine::Impl {
  int Hq, Hkv, D;
  i64 T;
  i64 prefill = -1;  // set_prefill(); needed by step-sequential views (gq heavy hitters)
  std::size_t guard;
  DeviceBuffer<i64> q;  // [T][Hq][D] Q.40
  DeviceBuffer<i32> k, v;  // [T][Hkv][D] Q11.20
  std::vector<std::unique_ptr<MethodViews>> views;
  DeviceBuffer<i64> items, woff, scratch, out, den;

  template <class T>
  void ensure(DeviceBuffer<T>& b, std::size_t n) {
    if (b.size() < n) b.allocate(std::max(n, b.size() * 3 / 2), guard);
  }
  EngineRows rows() const;  // what the method builders read
};

LayerEngine::LayerEngine(int Hq, int Hkv, int D, i64 T, std::size_t guard_bytes) : impl_(new Impl) {
  if (Hkv <= 0 || Hq % Hkv != 0) throw std::runtime_error("LayerEngine: Hq must be a multiple of Hkv");
  if (D < 1 || D > kMaxHeadDim) throw std::runtime_error("LayerEngine: head dim out of range");
  Impl& I = *impl_;
  I.Hq = Hq;
  I.Hkv = Hkv;
  I.D = D;
  I.T = T;
  I.guard = guard_bytes;
  I.q.allocate(static_cast<std::size_t>(T) * Hq * D, guard_bytes);
  I.k.allocate(static_cast<std::size_t>(T) * Hkv * D, guard_bytes);
  I.v.allocate(static_cast<std::size_t>(T) * Hkv * D, guard_bytes);
}
LayerEngine::~LayerEngine() = default;

void LayerEngine::set_prefill(i64 P) {
  if (P < 0 || P > impl_->T) throw std::runtime_error("LayerEngine::set_prefill: prefill length out of range");
  impl_->prefill = P;
}

int LayerEngine::q_heads() const { return impl_->Hq; }
int LayerEngine::kv_heads() const { return impl_->Hkv; }
int LayerEngine::head_dim() const { return impl_->D; }
i64 LayerEngine::tokens() const { return impl_->T; }

void LayerEngine::upload(i64 t0, i64 n, const i64* q, const i32* k, const i32* v) {
  Impl& I = *impl_;
  if (t0 < 0 || t0 + n > I.T) throw std::runtime_error("LayerEngine::upload: rows out of range");
  I.q.upload(q, static_cast<std::size_t>(n) * I.Hq * I.D, static_cast<std::size_t>(t0) * I.Hq * I.D);
  I.k.upload(k, static_cast<std::size_t>(n) * I.Hkv * I.D, static_cast<std::size_t>(t0) * I.Hkv * I.D);
  I.v.upload(v, static_cast<std::size_t>(n) * I.Hkv * I.D, static_cast<std::size_t>(t0) * I.Hkv * I.D);
}

namespace {
// What the method builders read of the engine (LayerEngine::Impl is private).
struct EngineRows {
  int Hkv, D;
  i64 T;
  std::size_t guard;
  const DeviceBuffer<i32>& k;  // [T][Hkv][D]
  const DeviceBuffer<i32>& v;
  const DeviceBuffer<i64>& q;  // [T][Hq][D]
  int Hq;
  i64 prefill;  // -1: unknown
};

// The attention launch over a method's view: queries, geometry and the view
// rule (twins below kq/vq, kvlinc's switched keys and linear term, the tokens
// the heavy-hitter pool holds). The caller sets items, woff, scratch, out, den.
void view_launch(const EngineRows& I, const MethodViews& mv, AttnArgs& a, RowView& rv) {
  a.q = I.q.data();
  a.q_by_step = true;
  a.Hq = I.Hq;
  a.group = I.Hq / I.Hkv;
  a.D = I.D;
  a.c_q40 = ref::logit_scale_q40(I.D);
  if (mv.lin_rank > 0)
    a.lin = {mv.lin_rank, mv.lin_w.data(), mv.lin_b.data(), mv.lin_S.data(), mv.lin_z.data(), mv.lin_from, mv.lin_R,
             I.Hkv};
  rv.k_fp = I.k.data();
  rv.v_fp = I.v.data();
  rv.k_dq = mv.quantized ? mv.k_hat.data() : I.k.data();
  rv.v_dq = mv.quantized ? mv.v_hat.data() : I.v.data();
  rv.k_dq_switched = mv.k_corr.data();
  rv.switch_kq = mv.corr_from;
  rv.until = mv.hh_until.size() ? mv.hh_until.data() : nullptr;
  rv.Hkv = I.Hkv;
  rv.D = I.D;
}

// KIVI's groups over every token: keys from I.k, values from v_src (the raw
// values for kivi, the rotated ones for kvlinc). Asynchronous.
void build_kivi(const EngineRows& I, MethodViews& mv, const ref::KiviConfig& c, const i32* v_src) {
  mv.quantized = true;
  mv.ng = I.T / c.group;
  mv.wpg = (c.group * c.bits + 31) / 32;
  mv.wpt = (I.D * c.bits + 31) / 32;
  const std::size_t rows = static_cast<std::size_t>(I.T) * I.Hkv * I.D;
  mv.k_hat.allocate(rows, I.guard);
  mv.v_hat.allocate(rows, I.guard);
  mv.kparams.allocate(static_cast<std::size_t>(I.Hkv) * mv.ng * I.D, I.guard);
  mv.vparams.allocate(static_cast<std::size_t>(I.Hkv) * I.T * (I.D / c.group), I.guard);
  mv.kcodes.allocate(static_cast<std::size_t>(I.Hkv) * mv.ng * I.D * mv.wpg, I.guard);
  mv.vcodes.allocate(static_cast<std::size_t>(I.Hkv) * I.T * mv.wpt, I.guard);
  mv.kcodes.fill_bytes(0);
  mv.vcodes.fill_bytes(0);
  // tokens past the last full key group keep their full-precision key
  if (rows) KVSIM_CUDA_TRY(cudaMemcpy(mv.k_hat.data(), I.k.data(), rows * sizeof(i32), cudaMemcpyDeviceToDevice));
  KVSIM_CUDA_TRY(kivi_quantize_keys(c, I.k.data(), mv.k_hat.data(), mv.kparams.data(), mv.kcodes.data(), I.Hkv, I.D,
                                    mv.ng));
  KVSIM_CUDA_TRY(kivi_quantize_values(c, v_src, mv.v_hat.data(), mv.vparams.data(), mv.vcodes.data(), I.Hkv, I.D,
                                      I.T));
}

// KVLinC correction=linear: the host fit per KV head from the calibration
// prefix [0, N) (full-precision k, v, dequantized keys, the group's queries:
// the reference's fit function, same integers), then the prefix states S, z
// at every key-flush boundary i R on the device; seen from kq >= N.
void build_kvlinc_linear(const EngineRows& I, MethodViews& mv, const ref::KvlincConfig& c) {
  const i64 N = c.calib;
  const int r = c.rank, group = I.Hq / I.Hkv;
  const std::size_t slab = static_cast<std::size_t>(N) * I.Hkv * I.D;
  std::vector<i32> kf(slab), vf(slab), kh(slab), hk(static_cast<std::size_t>(N) * I.D), hv(hk.size()), hh(hk.size());
  std::vector<i64> qf(static_cast<std::size_t>(N) * I.Hq * I.D), hq(static_cast<std::size_t>(N) * group * I.D);
  I.k.download(kf.data(), slab);
  I.v.download(vf.data(), slab);
  mv.k_hat.download(kh.data(), slab);
  I.q.download(qf.data(), qf.size());
  mv.lin_w_h.resize(static_cast<std::size_t>(I.Hkv) * r * I.D);
  mv.lin_c_h.resize(static_cast<std::size_t>(I.Hkv) * r);
  mv.lin_b_h.resize(mv.lin_c_h.size());
  for (int h = 0; h < I.Hkv; ++h) {
    for (i64 t = 0; t < N; ++t) {
      for (int d = 0; d < I.D; ++d) {
        const std::size_t at = (static_cast<std::size_t>(t) * I.Hkv + h) * I.D + d;
        hk[t * I.D + d] = kf[at];
        hv[t * I.D + d] = vf[at];
        hh[t * I.D + d] = kh[at];
      }
      std::copy_n(qf.begin() + (t * I.Hq + static_cast<i64>(h) * group) * I.D, group * I.D,
                  hq.begin() + t * group * I.D);
    }
    const ref::KvlincLinear L =
        ref::kvlinc_fit_linear(hk.data(), hv.data(), hh.data(), hq.data(), group, N, I.D, r, c.seed,
                               {c.train.steps, c.train.lr, c.residual});
    std::copy(L.w.begin(), L.w.end(), mv.lin_w_h.begin() + static_cast<std::ptrdiff_t>(h) * r * I.D);
    std::copy(L.c.begin(), L.c.end(), mv.lin_c_h.begin() + static_cast<std::ptrdiff_t>(h) * r);
    std::copy(L.b.begin(), L.b.end(), mv.lin_b_h.begin() + static_cast<std::ptrdiff_t>(h) * r);
  }
  mv.lin_rank = r;
  mv.lin_R = c.residual;
  mv.lin_nb = I.T / c.residual + 1;
  mv.lin_w.allocate(mv.lin_w_h.size(), I.guard);
  mv.lin_c.allocate(mv.lin_c_h.size(), I.guard);
  mv.lin_b.allocate(mv.lin_b_h.size(), I.guard);
  mv.lin_w.upload(mv.lin_w_h.data(), mv.lin_w_h.size());
  mv.lin_c.upload(mv.lin_c_h.data(), mv.lin_c_h.size());
  mv.lin_b.upload(mv.lin_b_h.data(), mv.lin_b_h.size());
  mv.lin_phi.allocate(static_cast<std::size_t>(I.T) * I.Hkv * r, I.guard);
  mv.lin_S.allocate(static_cast<std::size_t>(mv.lin_nb) * I.Hkv * r * I.D, I.guard);
  mv.lin_z.allocate(static_cast<std::size_t>(mv.lin_nb) * I.Hkv * r, I.guard);
  KVSIM_CUDA_TRY(kvlinc_linear_states(I.k.data(), I.v.data(), mv.lin_w.data(), mv.lin_c.data(), mv.lin_phi.data(),
                                      mv.lin_S.data(), mv.lin_z.data(), I.T, I.Hkv, I.D, r, mv.lin_R, mv.lin_nb));
  KVSIM_CUDA_TRY(cudaDeviceSynchronize());
  mv.lin_from = N;
}

// KVLinC (reference/quant/kvlinc.hpp): KIVI on (k, H v), values rotated back;
// the affine correction fitted on the host from the calibration prefix
// [0, N) (the reference's own fit function, same integers), applied to every
// quantized key, seen from states with kq >= N.
void build_kvlinc(const EngineRows& I, MethodViews& mv) {
  std::string err;
  const ref::KvlincConfig c = ref::kvlinc_config(mv.m, &err);
  if (err.empty()) err = ref::kvlinc_check(c, I.D);
  if (!err.empty()) throw std::runtime_error(err);
  const std::size_t rows = static_cast<std::size_t>(I.T) * I.Hkv * I.D;
  DeviceBuffer<i32> rv;
  DeviceBuffer<int> bad;
  rv.allocate(rows, I.guard);
  bad.allocate(1);
  bad.fill_bytes(0);
  KVSIM_CUDA_TRY(kvlinc_rotate_values(I.v.data(), rv.data(), static_cast<i64>(I.T) * I.Hkv, I.D, bad.data()));
  int flag = 0;
  bad.download(&flag, 1);
  if (flag) throw ref::kvlinc_range_error();
  build_kivi(I, mv, {c.bits, c.group, c.residual}, rv.data());
  KVSIM_CUDA_TRY(kvlinc_unrotate_values(mv.v_hat.data(), static_cast<i64>(I.T) * I.Hkv, I.D));
  KVSIM_CUDA_TRY(cudaDeviceSynchronize());
  rv.check_guards("rotated values");
  const i64 nq = mv.ng * c.group;  // tokens with a dequantized key
  if (c.correction == ref::KvlincCorrection::linear) {
    if (c.calib <= nq) build_kvlinc_linear(I, mv, c);
    return;
  }
  if (c.correction != ref::KvlincCorrection::affine || c.calib > nq) return;
  // the fit, on the host: rows [0, N) of each head, full precision and dequantized
  const i64 N = c.calib;
  const std::size_t slab = static_cast<std::size_t>(N) * I.Hkv * I.D;
  std::vector<i32> kf(slab), kh(slab), hk(static_cast<std::size_t>(N) * I.D), hh(hk.size());
  I.k.download(kf.data(), slab);
  mv.k_hat.download(kh.data(), slab);
  mv.alpha_h.resize(static_cast<std::size_t>(I.Hkv) * I.D);
  mv.beta_h.resize(mv.alpha_h.size());
  for (int h = 0; h < I.Hkv; ++h) {
    for (i64 t = 0; t < N; ++t)
      for (int d = 0; d < I.D; ++d) {
        const std::size_t at = (static_cast<std::size_t>(t) * I.Hkv + h) * I.D + d;
        hk[t * I.D + d] = kf[at];
        hh[t * I.D + d] = kh[at];
      }
    const ref::KvlincAffine a = ref::kvlinc_fit_affine(hk.data(), hh.data(), N, I.D);
    std::copy(a.alpha.begin(), a.alpha.end(), mv.alpha_h.begin() + static_cast<std::ptrdiff_t>(h) * I.D);
    std::copy(a.beta.begin(), a.beta.end(), mv.beta_h.begin() + static_cast<std::ptrdiff_t>(h) * I.D);
  }
  mv.alpha.allocate(mv.alpha_h.size(), I.guard);
  mv.beta.allocate(mv.beta_h.size(), I.guard);
  mv.alpha.upload(mv.alpha_h.data(), mv.alpha_h.size());
  mv.beta.upload(mv.beta_h.data(), mv.beta_h.size());
  mv.k_corr.allocate(rows, I.guard);
  KVSIM_CUDA_TRY(cudaMemcpy(mv.k_corr.data(), mv.k_hat.data(), rows * sizeof(i32), cudaMemcpyDeviceToDevice));
  KVSIM_CUDA_TRY(kvlinc_correct_keys(mv.k_hat.data(), mv.k_corr.data(), mv.alpha.data(), mv.beta.data(), nq, I.Hkv,
                                     I.D));
  KVSIM_CUDA_TRY(cudaDeviceSynchronize());
  mv.corr_from = N;
}
// gq heavy hitters: the step-sequential pass. The pool after the prefill's
// flush point, then for every decode step t in order: the exact attention of
// step t through the view the pool gives (RowView::until: the tokens still in
// the pool are seen at full precision), its softmax numerators fed to the
// pool's flush point after n = t + 1 tokens (GqCache::observe, then
// flush_point). What it leaves is until[s][h], the step from which token s
// is seen quantized; with it the view of every step has a closed form again,
// and attend() computes any steps in one batch. Kernels only, in stream
// order; one synchronisation at the end.
void build_gq_pool(const EngineRows& I, MethodViews& mv) {
  const ref::GqConfig& c = mv.gq;
  const std::size_t cells = static_cast<std::size_t>(I.T) * I.Hkv;
  mv.hh_until.allocate(cells, I.guard);
  mv.hh_acc.allocate(cells, I.guard);
  mv.hh_pool.allocate(cells, I.guard);
  mv.hh_n.allocate(static_cast<std::size_t>(I.Hkv), I.guard);
  const std::vector<i64> never(cells, LLONG_MAX);
  mv.hh_until.upload(never.data(), cells);
  mv.hh_acc.fill_bytes(0);
  mv.hh_n.fill_bytes(0);
  const GqPoolDevice d{mv.hh_acc.data(), mv.hh_pool.data(), mv.hh_n.data(), mv.hh_until.data(), I.T, I.Hkv};
  const int group = I.Hq / I.Hkv;
  const i64 P = I.prefill, E = I.T - P;
  KVSIM_CUDA_TRY(gq_pool_flush(c, d, 0, P, nullptr, nullptr, group));
  // one item per decode step (t, kq, vq), the view rule's own counts
  std::vector<i64> it(static_cast<std::size_t>(3 * E));
  for (i64 e = 0; e < E; ++e) {
    const StepView sv = view_at(mv.m, P + e);
    it[3 * e] = sv.t;
    it[3 * e + 1] = sv.kq;
    it[3 * e + 2] = sv.vq;
  }
  DeviceBuffer<i64> items(it.size()), woff(1), scratch(static_cast<std::size_t>(I.Hq) * I.T),
      out(static_cast<std::size_t>(I.Hq) * I.D), den(static_cast<std::size_t>(I.Hq));
  items.upload(it.data(), it.size());
  woff.fill_bytes(0);
  AttnArgs a;
  RowView rv;
  view_launch(I, mv, a, rv);  // rv.until: the pool's history as it is being written
  a.woff = woff.data();
  a.scratch = scratch.data();
  a.out = out.data();
  a.den = den.data();
  for (i64 e = 0; e < E; ++e) {
    a.items = items.data() + 3 * e;
    KVSIM_CUDA_TRY(launch_decode_attention(a, rv, 1));
    KVSIM_CUDA_TRY(gq_pool_flush(c, d, P + e, P + e + 1, scratch.data(), den.data(), group));
  }
  KVSIM_CUDA_TRY(cudaDeviceSynchronize());  // before the temporaries are freed
}
}  // namespace

EngineRows LayerEngine::Impl::rows() const { return EngineRows{Hkv, D, T, guard, k, v, q, Hq, prefill}; }

int LayerEngine::add_method(const ref::MethodConfig& m) {
  Impl& I = *impl_;
  auto mv = std::make_unique<MethodViews>();
  mv->m = m;
  if (m.bitmap) {
    // Mixed precision (reference/quant/mixed.hpp): one view per distinct width
    // (every head quantized at it: per-head math is independent), then each
    // head's K_hat/V_hat rows gathered from its width's view.
    const ref::BitAlloc& a = *m.bitmap;
    if (a.layers != 1 || a.kv_heads != I.Hkv)
      throw std::runtime_error("LayerEngine::add_method: a bitmap must be one layer's (ref::layer_config) with " +
                               std::to_string(I.Hkv) + " KV heads");
    std::map<int, int> by_bits;
    for (int b : a.bits)
      if (!by_bits.count(b)) {
        ref::MethodConfig u = m;
        u.bitmap = nullptr;
        u.bits = b;
        by_bits[b] = add_method(u);
      }
    const std::size_t rows = static_cast<std::size_t>(I.T) * I.Hkv * I.D;
    mv->quantized = true;
    mv->k_hat.allocate(rows, I.guard);
    mv->v_hat.allocate(rows, I.guard);
    const std::size_t pitch = static_cast<std::size_t>(I.Hkv) * I.D * sizeof(i32), width = I.D * sizeof(i32);
    for (int h = 0; h < I.Hkv; ++h) {
      const int src = by_bits.at(a.bits[static_cast<size_t>(h)]);
      mv->head_view.push_back(src);
      const MethodViews& sv = *I.views[static_cast<size_t>(src)];
      const i32* ks = sv.quantized ? sv.k_hat.data() : I.k.data();
      const i32* vs = sv.quantized ? sv.v_hat.data() : I.v.data();
      if (rows == 0) continue;
      KVSIM_CUDA_TRY(cudaMemcpy2D(mv->k_hat.data() + h * I.D, pitch, ks + h * I.D, pitch, width,
                                  static_cast<std::size_t>(I.T), cudaMemcpyDeviceToDevice));
      KVSIM_CUDA_TRY(cudaMemcpy2D(mv->v_hat.data() + h * I.D, pitch, vs + h * I.D, pitch, width,
                                  static_cast<std::size_t>(I.T), cudaMemcpyDeviceToDevice));
    }
    KVSIM_CUDA_TRY(cudaDeviceSynchronize());
    I.views.push_back(std::move(mv));
    return static_cast<int>(I.views.size()) - 1;
  }
  switch (m.id) {
    case ref::MethodId::fp:
      break;
    case ref::MethodId::kivi: {
      const ref::KiviConfig c = ref::kivi_config(m);
      if (const std::string why = ref::kivi_check(c, I.D); !why.empty()) throw std::runtime_error(why);
      build_kivi(I.rows(), *mv, c, I.v.data());
      KVSIM_CUDA_TRY(cudaDeviceSynchronize());
      break;
    }
    case ref::MethodId::kvarn: {
      if (const std::string why = ref::method_info(m.id).check(m, I.D); !why.empty()) throw std::runtime_error(why);
      const ref::KvarnConfig c = ref::kvarn_config(m);
      const int G = c.tile;
      mv->quantized = true;
      mv->ng = std::max<i64>(0, I.T / G - 1);
      mv->wpg = ref::kvarn::words_per_row(G, c.kbits);
      mv->wpt = ref::kvarn::words_per_row(I.D, c.vbits);
      const std::size_t rows = static_cast<std::size_t>(I.T) * I.Hkv * I.D;
      const std::size_t tiles = static_cast<std::size_t>(I.Hkv) * mv->ng;
      mv->k_hat.allocate(rows, I.guard);
      mv->v_hat.allocate(rows, I.guard);
      mv->kparams.allocate(tiles * I.D, I.guard);
      mv->kcol.allocate(tiles * G, I.guard);
      mv->kcodes.allocate(tiles * I.D * mv->wpg, I.guard);
      mv->vparams.allocate(tiles * G, I.guard);
      mv->vcol.allocate(tiles * I.D, I.guard);
      mv->vcodes.allocate(tiles * G * mv->wpt, I.guard);
      mv->kcodes.fill_bytes(0);
      mv->vcodes.fill_bytes(0);
      // the sink tile and the incomplete tail keep their full-precision rows
      if (rows) {
        KVSIM_CUDA_TRY(cudaMemcpy(mv->k_hat.data(), I.k.data(), rows * sizeof(i32), cudaMemcpyDeviceToDevice));
        KVSIM_CUDA_TRY(cudaMemcpy(mv->v_hat.data(), I.v.data(), rows * sizeof(i32), cudaMemcpyDeviceToDevice));
      }
      const KvarnDeviceOut o{mv->k_hat.data(),  mv->v_hat.data(), mv->kparams.data(), mv->kcol.data(),
                             mv->kcodes.data(), mv->vparams.data(), mv->vcol.data(),  mv->vcodes.data()};
      KVSIM_CUDA_TRY(kvarn_quantize(c, I.k.data(), I.v.data(), o, I.Hkv, I.D, I.T));
      KVSIM_CUDA_TRY(cudaDeviceSynchronize());
      break;
    }
    case ref::MethodId::kvlinc:
      build_kvlinc(I.rows(), *mv);
      break;
    case ref::MethodId::gq: {
      ref::GqConfig& c = mv->gq;
      if (const std::string why = ref::gq_config(m, I.D, &c); !why.empty()) throw std::runtime_error(why);
      if (c.hh > 0 && I.prefill < 0)
        throw std::runtime_error("gq: hh=" + std::to_string(c.hh) +
                                 " (heavy hitters) needs the prefill length (LayerEngine::set_prefill): its pool "
                                 "follows the decode steps' attention");
      mv->quantized = true;
      const std::size_t rows = static_cast<std::size_t>(I.T) * I.Hkv * I.D;
      mv->k_hat.allocate(rows, I.guard);
      mv->v_hat.allocate(rows, I.guard);
      if (rows) {  // sinks and tokens past the last full block keep their full-precision rows
        KVSIM_CUDA_TRY(cudaMemcpy(mv->k_hat.data(), I.k.data(), rows * sizeof(i32), cudaMemcpyDeviceToDevice));
        KVSIM_CUDA_TRY(cudaMemcpy(mv->v_hat.data(), I.v.data(), rows * sizeof(i32), cudaMemcpyDeviceToDevice));
      }
      for (int w = 0; w < 2; ++w) {
        const ref::GqTensor& t = w ? c.v : c.k;
        const bool km = t.levels == ref::kLevelsKmeans;
        const i64 nb = (I.T > c.sinks && (!km || I.T >= c.calib)) ? (I.T - c.sinks) / t.block : 0;
        mv->gq_nb[w] = nb;
        mv->gq_gpb[w] = ref::gq_groups_per_block(t, I.D);
        mv->gq_wpg[w] = ref::gq_words_per_group(t, I.D);
        const std::size_t ngroups = static_cast<std::size_t>(I.Hkv) * nb * mv->gq_gpb[w];
        DeviceBuffer<ref::AsymParams>& params = w ? mv->vparams : mv->kparams;
        DeviceBuffer<u32>& codes = w ? mv->vcodes : mv->kcodes;
        params.allocate(ngroups, I.guard);
        codes.allocate(ngroups * mv->gq_wpg[w], I.guard);
        codes.fill_bytes(0);
        const i32* books = nullptr;
        if (km && nb > 0) {  // codebooks: fitted on the host (offline, double), as GqCache does
          const std::size_t pre = static_cast<std::size_t>(c.calib) * I.Hkv * I.D;
          std::vector<i32> x(pre);
          (w ? I.v : I.k).download(x.data(), pre);
          std::vector<i32>& hb = mv->gq_host_books[w];
          for (int h = 0; h < I.Hkv; ++h) {
            const std::vector<i32> cb = ref::gq_fit_codebook(t, c.sinks, c.calib, x.data() + static_cast<std::size_t>(h) * I.D,
                                                             static_cast<i64>(I.Hkv) * I.D, I.D, c.seed + static_cast<u64>(w));
            hb.insert(hb.end(), cb.begin(), cb.end());
          }
          mv->gq_books[w].allocate(hb.size(), I.guard);
          mv->gq_books[w].upload(hb.data(), hb.size());
          books = mv->gq_books[w].data();
        }
        KVSIM_CUDA_TRY(gq_quantize_tensor(t, c.sinks, (w ? I.v : I.k).data(), (w ? mv->v_hat : mv->k_hat).data(),
                                          params.data(), codes.data(), books, I.Hkv, I.D, nb));
      }
      KVSIM_CUDA_TRY(cudaDeviceSynchronize());
      if (c.hh > 0) build_gq_pool(I.rows(), *mv);
      break;
    }
    default:
      throw std::runtime_error("LayerEngine: method without a CUDA twin");
  }
  I.views.push_back(std::move(mv));
  return static_cast<int>(I.views.size()) - 1;
}

void LayerEngine::attend(int view, const std::vector<StepView>& items, bool with_weights, AttnOut& out) {
  Impl& I = *impl_;
  const MethodViews& mv = *I.views.at(static_cast<size_t>(view));
  const i64 E = static_cast<i64>(items.size());
  out.Hq = I.Hq;
  out.D = I.D;
  std::vector<i64> it(static_cast<size_t>(3 * E));
  out.woff.resize(static_cast<size_t>(E));
  i64 total = 0;
  for (i64 e = 0; e < E; ++e) {
    const StepView& s = items[static_cast<size_t>(e)];
    if (s.t < 0 || s.t >= I.T) throw std::runtime_error("LayerEngine::attend: step out of range");
    it[3 * e] = s.t;
    it[3 * e + 1] = s.kq;
    it[3 * e + 2] = s.vq;
    out.woff[static_cast<size_t>(e)] = total;
    total += static_cast<i64>(I.Hq) * (s.t + 1);
  }
  out.out.resize(static_cast<size_t>(E) * I.Hq * I.D);
  out.den.resize(static_cast<size_t>(E) * I.Hq);
  if (E == 0) {
    out.weights.clear();
    return;
  }
  I.ensure(I.items, it.size());
  I.ensure(I.woff, out.woff.size());
  I.ensure(I.scratch, static_cast<std::size_t>(total));
  I.ensure(I.out, out.out.size());
  I.ensure(I.den, out.den.size());
  I.items.upload(it.data(), it.size());
  I.woff.upload(out.woff.data(), out.woff.size());

  AttnArgs a;
  RowView rv;
  view_launch(I.rows(), mv, a, rv);
  a.items = I.items.data();
  a.woff = I.woff.data();
  a.scratch = I.scratch.data();
  a.out = I.out.data();
  a.den = I.den.data();
  KVSIM_CUDA_TRY(launch_decode_attention(a, rv, E));
  KVSIM_CUDA_TRY(cudaDeviceSynchronize());
  I.out.download(out.out.data(), out.out.size());
  I.den.download(out.den.data(), out.den.size());
  if (with_weights) {
    out.weights.resize(static_cast<size_t>(total));
    I.scratch.download(out.weights.data(), out.weights.size());
  } else {
    out.weights.clear();
  }
}

KiviState LayerEngine::kivi_state(int view, int h, i64 kq, i64 vq) const {
  const Impl& I = *impl_;
  const MethodViews& mv = *I.views.at(static_cast<size_t>(view));
  if (!mv.head_view.empty() && h >= 0 && h < I.Hkv) return kivi_state(mv.head_view[static_cast<size_t>(h)], h, kq, vq);
  if (mv.m.id != ref::MethodId::kivi && mv.m.id != ref::MethodId::kvlinc)
    throw std::runtime_error("kivi_state: not a KIVI or KVLinC view");
  const int G = mv.m.group;
  const i64 ngk = kq / G;
  if (kq % G != 0 || ngk > mv.ng || vq > I.T || h < 0 || h >= I.Hkv)
    throw std::runtime_error("kivi_state: (kq, vq) out of range");
  KiviState s;
  s.key_params.resize(static_cast<size_t>(ngk) * I.D);
  s.key_codes.resize(s.key_params.size() * mv.wpg);
  s.value_params.resize(static_cast<size_t>(vq) * (I.D / G));
  s.value_codes.resize(static_cast<size_t>(vq) * mv.wpt);
  mv.kparams.download(s.key_params.data(), s.key_params.size(), static_cast<std::size_t>(h) * mv.ng * I.D);
  mv.kcodes.download(s.key_codes.data(), s.key_codes.size(), static_cast<std::size_t>(h) * mv.ng * I.D * mv.wpg);
  mv.vparams.download(s.value_params.data(), s.value_params.size(), static_cast<std::size_t>(h) * I.T * (I.D / G));
  mv.vcodes.download(s.value_codes.data(), s.value_codes.size(), static_cast<std::size_t>(h) * I.T * mv.wpt);
  return s;
}

KvarnState LayerEngine::kvarn_state(int view, int h, i64 nq) const {
  const Impl& I = *impl_;
  const MethodViews& mv = *I.views.at(static_cast<size_t>(view));
  if (mv.m.id != ref::MethodId::kvarn) throw std::runtime_error("kvarn_state: not a KVarN view");
  if (nq < 0 || nq > mv.ng || h < 0 || h >= I.Hkv) throw std::runtime_error("kvarn_state: tiles out of range");
  const std::size_t G = static_cast<std::size_t>(ref::kvarn_config(mv.m).tile), D = static_cast<std::size_t>(I.D);
  const std::size_t n = static_cast<std::size_t>(nq), at = static_cast<std::size_t>(h) * mv.ng;
  KvarnState s;
  s.key_params.resize(n * D);
  s.key_col_scales.resize(n * G);
  s.key_codes.resize(n * D * mv.wpg);
  s.value_params.resize(n * G);
  s.value_col_scales.resize(n * D);
  s.value_codes.resize(n * G * mv.wpt);
  mv.kparams.download(s.key_params.data(), s.key_params.size(), at * D);
  mv.kcol.download(s.key_col_scales.data(), s.key_col_scales.size(), at * G);
  mv.kcodes.download(s.key_codes.data(), s.key_codes.size(), at * D * mv.wpg);
  mv.vparams.download(s.value_params.data(), s.value_params.size(), at * G);
  mv.vcol.download(s.value_col_scales.data(), s.value_col_scales.size(), at * D);
  mv.vcodes.download(s.value_codes.data(), s.value_codes.size(), at * G * mv.wpt);
  return s;
}

GqState LayerEngine::gq_state(int view, int h, i64 knq, i64 vnq) const {
  const Impl& I = *impl_;
  const MethodViews& mv = *I.views.at(static_cast<size_t>(view));
  if (mv.m.id != ref::MethodId::gq) throw std::runtime_error("gq_state: not a gq view");
  GqState s;
  for (int w = 0; w < 2; ++w) {
    const ref::GqTensor& t = w ? mv.gq.v : mv.gq.k;
    const i64 nq = w ? vnq : knq;
    if (nq % t.block != 0 || nq / t.block > mv.gq_nb[w] || h < 0 || h >= I.Hkv)
      throw std::runtime_error("gq_state: quantized token count out of range");
    const std::size_t per_head = static_cast<std::size_t>(mv.gq_nb[w]) * mv.gq_gpb[w];
    const std::size_t n = static_cast<std::size_t>(nq / t.block) * mv.gq_gpb[w];
    std::vector<ref::AsymParams>& p = w ? s.value_params : s.key_params;
    std::vector<u32>& c = w ? s.value_codes : s.key_codes;
    p.resize(n);
    c.resize(n * mv.gq_wpg[w]);
    (w ? mv.vparams : mv.kparams).download(p.data(), n, static_cast<std::size_t>(h) * per_head);
    (w ? mv.vcodes : mv.kcodes).download(c.data(), c.size(), static_cast<std::size_t>(h) * per_head * mv.gq_wpg[w]);
    const std::vector<i32>& hb = mv.gq_host_books[w];
    if (!hb.empty() && nq > 0) {
      const std::size_t K = hb.size() / I.Hkv;
      (w ? s.value_codebook : s.key_codebook).assign(hb.begin() + h * K, hb.begin() + (h + 1) * K);
    }
  }
  return s;
}

void LayerEngine::view_rows(int view, int h, const StepView& sv, i64 n, std::vector<i32>& K,
                            std::vector<i32>& V) const {
  const Impl& I = *impl_;
  const MethodViews& mv = *I.views.at(static_cast<size_t>(view));
  if (n > I.T || h < 0 || h >= I.Hkv) throw std::runtime_error("view_rows: out of range");
  K.resize(static_cast<size_t>(n) * I.D);
  V.resize(K.size());
  // the prefix [0, n) of each buffer, all heads: four copies, then pick rows
  const std::size_t slab = static_cast<std::size_t>(n) * I.Hkv * I.D;
  std::vector<i32> kf(slab), vf(slab), kd, vd;
  I.k.download(kf.data(), slab);
  I.v.download(vf.data(), slab);
  std::vector<i64> until;
  if (mv.quantized) {
    kd.resize(slab);
    vd.resize(slab);
    (sv.kq >= mv.corr_from ? mv.k_corr : mv.k_hat).download(kd.data(), slab);
    mv.v_hat.download(vd.data(), slab);
  }
  if (mv.hh_until.size()) {
    until.resize(static_cast<std::size_t>(n) * I.Hkv);
    mv.hh_until.download(until.data(), until.size());
  }
  for (i64 s = 0; s < n; ++s) {
    const std::size_t at = (static_cast<std::size_t>(s) * I.Hkv + h) * I.D;
    const bool held = !until.empty() && sv.t < until[static_cast<std::size_t>(s) * I.Hkv + h];
    const i32* kr = (mv.quantized && s < sv.kq && !held) ? kd.data() + at : kf.data() + at;
    const i32* vr = (mv.quantized && s < sv.vq && !held) ? vd.data() + at : vf.data() + at;
    std::copy(kr, kr + I.D, K.begin() + s * I.D);
    std::copy(vr, vr + I.D, V.begin() + s * I.D);
  }
}

void LayerEngine::hat_rows(int view, std::vector<i32>& k_hat, std::vector<i32>& v_hat) const {
  const Impl& I = *impl_;
  const MethodViews& mv = *I.views.at(static_cast<size_t>(view));
  const std::size_t rows = static_cast<std::size_t>(I.T) * I.Hkv * I.D;
  k_hat.resize(rows);
  v_hat.resize(rows);
  (mv.quantized ? mv.k_hat : I.k).download(k_hat.data(), rows);
  (mv.quantized ? mv.v_hat : I.v).download(v_hat.data(), rows);
}

void LayerEngine::heavy_hitters(int view, int h, std::vector<i64>& until, std::vector<i64>& acc) const {
  const Impl& I = *impl_;
  const MethodViews& mv = *I.views.at(static_cast<size_t>(view));
  if (h < 0 || h >= I.Hkv) throw std::runtime_error("heavy_hitters: head out of range");
  until.clear();
  acc.clear();
  if (!mv.hh_until.size()) return;
  std::vector<i64> all(static_cast<std::size_t>(I.T) * I.Hkv);
  mv.hh_until.download(all.data(), all.size());
  until.resize(static_cast<std::size_t>(I.T));
  for (i64 s = 0; s < I.T; ++s) until[static_cast<std::size_t>(s)] = all[static_cast<std::size_t>(s) * I.Hkv + h];
  acc.resize(static_cast<std::size_t>(I.T));
  mv.hh_acc.download(acc.data(), acc.size(), static_cast<std::size_t>(h) * I.T);
}

i64 LayerEngine::correction_from(int view) const { return impl_->views.at(static_cast<size_t>(view))->corr_from; }

void LayerEngine::corrected_key_rows(int view, std::vector<i32>& k_corr) const {
  const Impl& I = *impl_;
  const MethodViews& mv = *I.views.at(static_cast<size_t>(view));
  k_corr.clear();
  if (mv.corr_from == LLONG_MAX) return;
  k_corr.resize(static_cast<std::size_t>(I.T) * I.Hkv * I.D);
  mv.k_corr.download(k_corr.data(), k_corr.size());
}

ref::KvlincAffine LayerEngine::kvlinc_affine(int view, int h) const {
  const Impl& I = *impl_;
  const MethodViews& mv = *I.views.at(static_cast<size_t>(view));
  if (h < 0 || h >= I.Hkv) throw std::runtime_error("kvlinc_affine: head out of range");
  ref::KvlincAffine a;
  if (mv.alpha_h.empty()) return a;
  const auto at = static_cast<std::ptrdiff_t>(h) * I.D;
  a.alpha.assign(mv.alpha_h.begin() + at, mv.alpha_h.begin() + at + I.D);
  a.beta.assign(mv.beta_h.begin() + at, mv.beta_h.begin() + at + I.D);
  return a;
}

ref::KvlincLinear LayerEngine::kvlinc_linear(int view, int h, i64 kq, std::vector<i128>& S,
                                             std::vector<i128>& z) const {
  const Impl& I = *impl_;
  const MethodViews& mv = *I.views.at(static_cast<size_t>(view));
  if (h < 0 || h >= I.Hkv) throw std::runtime_error("kvlinc_linear: head out of range");
  ref::KvlincLinear L;
  S.clear();
  z.clear();
  if (mv.lin_rank == 0) return L;
  const int r = mv.lin_rank;
  L.rank = r;
  const auto at = static_cast<std::ptrdiff_t>(h) * r;
  L.w.assign(mv.lin_w_h.begin() + at * I.D, mv.lin_w_h.begin() + (at + r) * I.D);
  L.c.assign(mv.lin_c_h.begin() + at, mv.lin_c_h.begin() + at + r);
  L.b.assign(mv.lin_b_h.begin() + at, mv.lin_b_h.begin() + at + r);
  const i64 st = kq / mv.lin_R;
  if (kq % mv.lin_R != 0 || st >= mv.lin_nb) throw std::runtime_error("kvlinc_linear: kq is not a flush boundary");
  S.resize(static_cast<std::size_t>(r) * I.D);
  z.resize(static_cast<std::size_t>(r));
  mv.lin_S.download(S.data(), S.size(), static_cast<std::size_t>((st * I.Hkv + h) * r) * I.D);
  mv.lin_z.download(z.data(), z.size(), static_cast<std::size_t>((st * I.Hkv + h) * r));
  return L;
}

void LayerEngine::check_guards() const {
  const Impl& I = *impl_;
  I.q.check_guards("q");
  I.k.check_guards("k");
  I.v.check_guards("v");
  for (const auto& mv : I.views) {
    mv->k_hat.check_guards("k_hat");
    mv->v_hat.check_guards("v_hat");
    mv->kparams.check_guards("key params");
    mv->vparams.check_guards("value params");
    mv->kcodes.check_guards("key codes");
    mv->vcodes.check_guards("value codes");
    mv->kcol.check_guards("key column scales");
    mv->vcol.check_guards("value column scales");
    mv->k_corr.check_guards("corrected keys");
    mv->alpha.check_guards("kvlinc alpha");
    mv->beta.check_guards("kvlinc beta");
    mv->gq_books[0].check_guards("key codebooks");
    mv->gq_books[1].check_guards("value codebooks");
    mv->hh_until.check_guards("heavy-hitter until");
    mv->hh_acc.check_guards("heavy-hitter mass");
    mv->hh_pool.check_guards("heavy-hitter pool");
    mv->hh_n.check_guards("heavy-hitter pool size");
    mv->lin_w.check_guards("kvlinc linear w");
    mv->lin_c.check_guards("kvlinc linear c");
    mv->lin_b.check_guards("kvlinc linear b");
    mv->lin_phi.check_guards("kvlinc linear phi");
    mv->lin_S.check_guards("kvlinc linear S");
    mv->lin_z.check_guards("kvlinc linear z");
  }
  I.items.check_guards("items");
  I.woff.check_guards("woff");
  I.scratch.check_guards("scratch");
  I.out.check_guards("out");
  I.den.check_guards("den");
}

}  // namespace kvsim::cuda
