// A file mapped as guest RAM (a template's memory file, MAP_PRIVATE) can shrink under the VM: its
// owner may truncate it (mode 0400 stops no owner), a network file system fail to read it. Linux
// then takes away every page past the new end, the ones the guest had written too (truncation
// unmaps private copies), and the VMM's next touch of one is a SIGBUS that kills it without a
// word, the guest's a KVM_RUN failing with EFAULT. The guest's memory is gone either way: a
// FaultGuard turns both into one line and an exit status.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "vmm/base/error.hpp"

namespace vmm {

class FaultGuard {
 public:
  FaultGuard() = default;
  /// Watches [start, start + size), a mapping of the file at `path` (device `dev`, inode `ino`):
  /// a SIGBUS for an address in it (BUS_ADRERR: past the file's end) prints `message` and a newline
  /// to stderr and ends the process with `status` (_exit: the VM cannot go on without its memory).
  /// Other SIGBUSes keep their default action. At most 16 at once. (By path, not by a descriptor:
  /// a fork's child closes every descriptor it does not know.)
  static Result<FaultGuard> watch(const void* start, size_t size, std::string_view path, uint64_t dev, uint64_t ino,
                                  std::string_view message, int status);

  /// After KVM_RUN's EFAULT: if a watched file is now shorter than its mapping, does what a
  /// SIGBUS in it would (prints its message and exits). Returns if none is.
  static void exit_if_shrunk();

  FaultGuard(FaultGuard&& o) noexcept : slot_(o.slot_) { o.slot_ = -1; }
  FaultGuard& operator=(FaultGuard&& o) noexcept;
  FaultGuard(const FaultGuard&) = delete;
  FaultGuard& operator=(const FaultGuard&) = delete;
  ~FaultGuard();

 private:
  explicit FaultGuard(int slot) : slot_(slot) {}
  int slot_ = -1;
};

}  // namespace vmm
