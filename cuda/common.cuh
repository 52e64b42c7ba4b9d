// CUDA plumbing shared by the kernels' host launchers: error checks and an
// owning device buffer with optional guard bytes (tests detect out-of-bounds
// writes by checking that the guards kept their pattern).
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "reference/common.hpp"

namespace kvsim::cuda {

[[noreturn]] inline void throw_cuda(cudaError_t e, const char* what, const char* file, int line) {
  throw std::runtime_error(std::string("CUDA error: ") + what + ": " + cudaGetErrorString(e) + " (" + file + ":" +
                           std::to_string(line) + ")");
}

#define KVSIM_CUDA_TRY(expr)                                                        \
  do {                                                                              \
    const cudaError_t kvsim_e_ = (expr);                                            \
    if (kvsim_e_ != cudaSuccess) ::kvsim::cuda::throw_cuda(kvsim_e_, #expr, __FILE__, __LINE__); \
  } while (0)

// After a launch: the launch error, then (synchronously) the kernel's own.
#define KVSIM_CUDA_LAUNCHED(name)                           \
  do {                                                      \
    KVSIM_CUDA_TRY(cudaGetLastError());                     \
    KVSIM_CUDA_TRY(cudaDeviceSynchronize());                \
  } while (0)

inline constexpr unsigned char kGuardByte = 0xA5;

// n elements of T on the device, with `guard` bytes of kGuardByte before and
// after (guard is rounded up to 256 so that data() stays aligned).
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t n, std::size_t guard = 0) { allocate(n, guard); }
  ~DeviceBuffer() { release(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept { *this = std::move(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      base_ = std::exchange(o.base_, nullptr);
      n_ = std::exchange(o.n_, 0);
      guard_ = std::exchange(o.guard_, 0);
    }
    return *this;
  }

  void allocate(std::size_t n, std::size_t guard = 0) {
    release();
    guard_ = (guard + 255) / 256 * 256;
    n_ = n;
    const std::size_t bytes = n * sizeof(T) + 2 * guard_;
    KVSIM_CUDA_TRY(cudaMalloc(&base_, bytes == 0 ? 1 : bytes));
    if (guard_) {
      KVSIM_CUDA_TRY(cudaMemset(base_, kGuardByte, guard_));
      KVSIM_CUDA_TRY(cudaMemset(base_ + guard_ + n * sizeof(T), kGuardByte, guard_));
    }
  }
  void release() {
    if (base_) cudaFree(base_);
    base_ = nullptr;
    n_ = 0;
  }
  T* data() { return reinterpret_cast<T*>(base_ + guard_); }
  const T* data() const { return reinterpret_cast<const T*>(base_ + guard_); }
  std::size_t size() const { return n_; }
  std::size_t bytes() const { return n_ * sizeof(T); }

  void upload(const T* h, std::size_t n, std::size_t at = 0) {
    if (at + n > n_) throw std::runtime_error("DeviceBuffer::upload out of range");
    if (n) KVSIM_CUDA_TRY(cudaMemcpy(data() + at, h, n * sizeof(T), cudaMemcpyHostToDevice));
  }
  void download(T* h, std::size_t n, std::size_t at = 0) const {
    if (at + n > n_) throw std::runtime_error("DeviceBuffer::download out of range");
    if (n) KVSIM_CUDA_TRY(cudaMemcpy(h, data() + at, n * sizeof(T), cudaMemcpyDeviceToHost));
  }
  std::vector<T> to_host() const {
    std::vector<T> v(n_);
    download(v.data(), n_);
    return v;
  }
  void fill_bytes(int byte) {
    if (n_) KVSIM_CUDA_TRY(cudaMemset(data(), byte, n_ * sizeof(T)));
  }
  // Throws naming `what` when a guard byte changed.
  void check_guards(const char* what) const {
    if (!guard_) return;
    std::vector<unsigned char> g(guard_);
    for (int side = 0; side < 2; ++side) {
      const unsigned char* p = side == 0 ? base_ : base_ + guard_ + n_ * sizeof(T);
      KVSIM_CUDA_TRY(cudaMemcpy(g.data(), p, guard_, cudaMemcpyDeviceToHost));
      for (std::size_t i = 0; i < guard_; ++i)
        if (g[i] != kGuardByte)
          throw std::runtime_error(std::string("guard bytes of ") + what + " overwritten (" +
                                   (side == 0 ? "before" : "after") + " the buffer, byte " + std::to_string(i) +
                                   ")");
    }
  }

 private:
  unsigned char* base_ = nullptr;
  std::size_t n_ = 0, guard_ = 0;
};

}  // namespace kvsim::cuda
