#include "vmm/base/progress.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <utility>

#include <fmt/format.h>

namespace vmm {

Progress::Progress(std::string what, uint64_t total, uint64_t min_bytes)
    : what_(std::move(what)), total_(total), shown_(total >= min_bytes && ::isatty(STDERR_FILENO) == 1) {
  if (shown_) draw(0);
}

void Progress::update(uint64_t done) {
  done_ = std::min(done, total_);
  if (!shown_ || finished_) return;
  const auto now = std::chrono::steady_clock::now();
  if (now - last_ < std::chrono::milliseconds(100)) return;
  draw(done_);
}

void Progress::finish() {
  if (!shown_ || finished_) return;
  draw(done_);
  finished_ = true;
  fmt::print(stderr, "\n");
}

void Progress::draw(uint64_t done) {
  constexpr unsigned kWidth = 30;
  last_ = std::chrono::steady_clock::now();
  const unsigned percent = total_ ? static_cast<unsigned>(done * 100 / total_) : 100;
  const unsigned filled = percent * kWidth / 100;
  fmt::print(stderr, "\rvmm: {}  {}/{} MiB [{}{}] {:3}%", what_, done >> 20, total_ >> 20, std::string(filled, '#'),
             std::string(kWidth - filled, ' '), percent);
  std::fflush(stderr);
}

}  // namespace vmm
