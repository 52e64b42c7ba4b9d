// The integer Hadamard transform on the GPU: twin of reference/fixed/hadamard.hpp.
// One thread per row calls fx::hadamard_inplace on the row in global memory:
// the transform's order of work is the reference's own (only the rows are
// spread over threads), so the bits are the reference's.
#include <stdexcept>
#include <string>

#include "cuda/common.cuh"
#include "cuda/kvsim_cuda.hpp"
#include "reference/fixed/fixed.hpp"

namespace kvsim::cuda {
namespace {
template <class T>
__global__ void HadamardRowsKernel(T* data, i64 rows, int n) {
  const i64 r = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r < rows) fx::hadamard_inplace(data + r * n, n);
}

template <class T>
void run(T* host, i64 rows, int n) {
  if (!fx::hadamard_supported(n)) throw std::runtime_error("hadamard_rows: order " + std::to_string(n) + " unsupported");
  if (rows <= 0) return;
  DeviceBuffer<T> d(static_cast<std::size_t>(rows) * n);
  d.upload(host, d.size());
  HadamardRowsKernel<T><<<static_cast<unsigned>((rows + 127) / 128), 128>>>(d.data(), rows, n);
  KVSIM_CUDA_LAUNCHED("hadamard");
  d.download(host, d.size());
}
}  // namespace

void hadamard_rows(i64* data, i64 rows, int n) { run(data, rows, n); }
void hadamard_rows(i32* data, i64 rows, int n) { run(data, rows, n); }

}  // namespace kvsim::cuda
