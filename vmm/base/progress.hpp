// A progress bar on the terminal for long copies (a full clone's memory file and disks).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace vmm {

/// One line on stderr, redrawn in place ("vmm: WHAT  DONE/TOTAL MiB [#####     ]  NN%"), at most
/// ten times a second, ended by finish() or the destructor. Drawn only when stderr is a terminal
/// and the work is at least `min_bytes` (a short copy, or output to a file or a pipe, gets none).
class Progress {
 public:
  static constexpr uint64_t kMinBytes = uint64_t{64} << 20;
  Progress(std::string what, uint64_t total, uint64_t min_bytes = kMinBytes);
  ~Progress() { finish(); }
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  bool shown() const { return shown_; }
  /// `done` bytes of the total so far.
  void update(uint64_t done);
  /// The work is complete: draws it so and ends the line.
  void complete() {
    done_ = total_;
    finish();
  }
  /// Draws the last state and ends the line (once; the destructor's, for work that failed).
  void finish();

 private:
  void draw(uint64_t done);
  std::string what_;
  uint64_t total_;
  uint64_t done_ = 0;
  bool shown_;
  bool finished_ = false;
  std::chrono::steady_clock::time_point last_{};
};

}  // namespace vmm
