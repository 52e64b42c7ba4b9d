// A progress bar on stderr, drawn only when stderr is a terminal.
#pragma once
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace kvsim::sim {

class Progress {
 public:
  Progress(bool enabled, std::int64_t total, std::string label)
      : on_(enabled && total > 0 && isatty(2)), total_(total), label_(std::move(label)),
        t0_(std::chrono::steady_clock::now()) {}
  void advance(std::int64_t k) {
    done_ += k;
    if (!on_) return;
    const int pct = static_cast<int>(100 * done_ / total_);
    if (pct == last_) return;
    last_ = pct;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    const double eta = done_ > 0 ? s * static_cast<double>(total_ - done_) / static_cast<double>(done_) : 0;
    char bar[41];
    const int fill = pct * 40 / 100;
    for (int i = 0; i < 40; ++i) bar[i] = i < fill ? '#' : '.';
    bar[40] = '\0';
    std::fprintf(stderr, "\r%s [%s] %3d%%  %.0fs elapsed, %.0fs left ", label_.c_str(), bar, pct, s, eta);
    std::fflush(stderr);
  }
  void finish() {
    if (on_ && last_ >= 0) std::fprintf(stderr, "\n");
    on_ = false;
  }
  ~Progress() { finish(); }

 private:
  bool on_;
  std::int64_t total_, done_ = 0;
  int last_ = -1;
  std::string label_;
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace kvsim::sim
