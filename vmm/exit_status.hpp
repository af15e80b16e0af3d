// How a vmm process ends: its exit statuses, a failure before the guest runs (a status and one
// line), and the status and words for how a VM stopped. Odd statuses come from the guest's
// debug-exit port (QEMU isa-debug-exit convention: status = (value << 1) | 1); even ones are the
// VMM's own.
#pragma once

#include <cstdint>
#include <string>

#include "vmm/vm.hpp"

namespace vmm::exit_code {

inline constexpr int kOk = 0;            ///< guest powered off (ACPI S5) or reset (i8042, ACPI reset)
inline constexpr int kUsage = 2;         ///< bad command line
inline constexpr int kKvm = 4;           ///< /dev/kvm missing, inaccessible or lacking a capability
inline constexpr int kImage = 6;         ///< kernel, initrd or disk image could not be loaded or opened
inline constexpr int kTripleFault = 8;   ///< the guest triple-faulted (KVM_EXIT_SHUTDOWN)
inline constexpr int kVmmError = 10;     ///< any other VMM or KVM failure (e.g. an emulation failure)
inline constexpr int kSignal = 12;       ///< stopped by SIGINT or SIGTERM
inline constexpr int kGuestPanic = 14;   ///< the guest kernel panicked (pvpanic device)

/// Process status for a debug-exit write of `value`.
constexpr int debug_exit(uint32_t value) { return static_cast<int>(((value << 1) | 1) & 0xff); }

}  // namespace vmm::exit_code

namespace vmm {

/// A failure before the guest runs: the exit status and one line.
struct Failure {
  int status = 0;
  std::string message;
};

/// Prints "vmm: error: MESSAGE" on stderr and returns `status`.
int report_error(int status, const std::string& message);
/// The same for a Failure.
int report_failure(const Failure& failure);
/// How a VM stopped, as a clause for an error message ("it exited through the debug port ...").
std::string describe_stop(const StopInfo& stop);
/// The exit status for how a VM stopped, and nothing printed.
int exit_status_of(const StopInfo& stop);
/// The exit status for how a VM stopped (prints what the stop needs said).
int stop_status(const StopInfo& stop);

}  // namespace vmm
