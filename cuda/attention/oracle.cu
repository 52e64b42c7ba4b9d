// The float64 oracle's two heavy loops on the GPU, bit-identical to
// reference/attention/oracle.hpp (oracle_attention): the same IEEE double
// operations in the same order per output (--fmad=false: no contraction), so
// the results are the CPU's to the last bit. What libm computes (exp) stays on
// the host; the driver (sim/replay_cuda.cpp) does it between the two kernels.
//
//   scores   s_t = value(compensated sum over d, in order, of double(q_d) * k_td) * scale
//   numer.   a_d = value(compensated sum over t, in order, of e_t * double(v_td))
// The compensated step is ref::CompensatedSum::add (TwoSum), repeated here because the
// reference's struct is host-only (oracle.hpp is not KVSIM_HD); the replay
// test compares the metrics bit for bit, which checks that the two agree.
#include "cuda/common.cuh"
#include "cuda/kvsim_cuda.hpp"

namespace kvsim::cuda {
namespace {

struct Neumaier {  // Knuth's TwoSum step, as ref::CompensatedSum::add
  double sum = 0.0, comp = 0.0;
  __device__ void add(double x) {
    const double t = __dadd_rn(sum, x);
    const double bp = __dsub_rn(t, sum);
    comp = __dadd_rn(comp, __dadd_rn(__dsub_rn(sum, __dsub_rn(t, bp)), __dsub_rn(x, bp)));
    sum = t;
  }
  __device__ double value() const { return __dadd_rn(sum, comp); }
};

// block per (item, query head); threads over tokens, each token serial over d.
__global__ void OracleScoresKernel(const float* __restrict__ qf, const float* __restrict__ kf, int Hq, int Hkv, int D,
                                   const i64* __restrict__ steps, const i64* __restrict__ woff, double scale,
                                   double* __restrict__ scores) {
  __shared__ float qs[256];
  const i64 e = blockIdx.x / Hq;
  const int qh = static_cast<int>(blockIdx.x % Hq), h = qh / (Hq / Hkv);
  const i64 t = steps[e], n = t + 1;
  for (int d = threadIdx.x; d < D; d += blockDim.x) qs[d] = qf[(t * Hq + qh) * D + d];
  __syncthreads();
  double* out = scores + woff[e] + static_cast<i64>(qh) * n;
  for (i64 s = threadIdx.x; s < n; s += blockDim.x) {
    const float* k = kf + (s * Hkv + h) * D;
    Neumaier acc;
    for (int d = 0; d < D; ++d) acc.add(__dmul_rn(static_cast<double>(qs[d]), static_cast<double>(k[d])));
    out[s] = __dmul_rn(acc.value(), scale);
  }
}

// block per (item, query head); thread per channel d, serial over tokens.
__global__ void OracleNumeratorKernel(const float* __restrict__ vf, int Hq, int Hkv, int D,
                                      const i64* __restrict__ steps, const i64* __restrict__ woff,
                                      const double* __restrict__ ex, double* __restrict__ numer) {
  const i64 e = blockIdx.x / Hq;
  const int qh = static_cast<int>(blockIdx.x % Hq), h = qh / (Hq / Hkv);
  const int d = threadIdx.x;
  if (d >= D) return;
  const i64 n = steps[e] + 1;
  const double* w = ex + woff[e] + static_cast<i64>(qh) * n;
  Neumaier acc;
  for (i64 s = 0; s < n; ++s) acc.add(__dmul_rn(w[s], static_cast<double>(vf[(s * Hkv + h) * D + d])));
  numer[(e * Hq + qh) * D + d] = acc.value();
}

}  // namespace

struct OracleEngine::Impl {
  int Hq, Hkv, D;
  i64 T;
  DeviceBuffer<float> q, k, v;
  DeviceBuffer<i64> steps, woff;
  DeviceBuffer<double> buf, numer;
  template <class T>
  void ensure(DeviceBuffer<T>& b, std::size_t n) {
    if (b.size() < n) b.allocate(std::max(n, b.size() * 3 / 2));
  }
};

OracleEngine::OracleEngine(int Hq, int Hkv, int D, i64 T) : impl_(new Impl) {
  Impl& I = *impl_;
  I.Hq = Hq;
  I.Hkv = Hkv;
  I.D = D;
  I.T = T;
  I.q.allocate(static_cast<std::size_t>(T) * Hq * D);
  I.k.allocate(static_cast<std::size_t>(T) * Hkv * D);
  I.v.allocate(static_cast<std::size_t>(T) * Hkv * D);
}
OracleEngine::~OracleEngine() = default;

void OracleEngine::upload(i64 t0, i64 n, const float* q, const float* k, const float* v) {
  Impl& I = *impl_;
  I.q.upload(q, static_cast<std::size_t>(n) * I.Hq * I.D, static_cast<std::size_t>(t0) * I.Hq * I.D);
  I.k.upload(k, static_cast<std::size_t>(n) * I.Hkv * I.D, static_cast<std::size_t>(t0) * I.Hkv * I.D);
  I.v.upload(v, static_cast<std::size_t>(n) * I.Hkv * I.D, static_cast<std::size_t>(t0) * I.Hkv * I.D);
}

void OracleEngine::scores(const std::vector<i64>& steps, double scale, std::vector<i64>& woff,
                          std::vector<double>& out) {
  Impl& I = *impl_;
  const i64 E = static_cast<i64>(steps.size());
  woff.resize(steps.size());
  i64 total = 0;
  for (i64 e = 0; e < E; ++e) {
    woff[e] = total;
    total += static_cast<i64>(I.Hq) * (steps[e] + 1);
  }
  out.resize(static_cast<std::size_t>(total));
  if (E == 0) return;
  I.ensure(I.steps, steps.size());
  I.ensure(I.woff, woff.size());
  I.ensure(I.buf, static_cast<std::size_t>(total));
  I.steps.upload(steps.data(), steps.size());
  I.woff.upload(woff.data(), woff.size());
  OracleScoresKernel<<<static_cast<unsigned>(E * I.Hq), 128>>>(I.q.data(), I.k.data(), I.Hq, I.Hkv, I.D,
                                                                I.steps.data(), I.woff.data(), scale, I.buf.data());
  KVSIM_CUDA_LAUNCHED("oracle scores");
  I.buf.download(out.data(), out.size());
}

void OracleEngine::numerators(const std::vector<i64>& steps, const std::vector<double>& ex,
                              std::vector<double>& numer) {
  Impl& I = *impl_;
  const i64 E = static_cast<i64>(steps.size());
  numer.resize(static_cast<std::size_t>(E) * I.Hq * I.D);
  if (E == 0) return;
  // steps and woff of the preceding scores() call are still on the device
  I.buf.upload(ex.data(), ex.size());
  I.ensure(I.numer, numer.size());
  const int threads = (I.D + 31) / 32 * 32;
  OracleNumeratorKernel<<<static_cast<unsigned>(E * I.Hq), threads>>>(I.v.data(), I.Hq, I.Hkv, I.D, I.steps.data(),
                                                                       I.woff.data(), I.buf.data(), I.numer.data());
  KVSIM_CUDA_LAUNCHED("oracle numerators");
  I.numer.download(numer.data(), numer.size());
}

}  // namespace kvsim::cuda
