// Process exit statuses of `vmm run`. Odd statuses come from the guest's debug-exit port (QEMU
// isa-debug-exit convention: status = (value << 1) | 1); even ones are the VMM's own.
#pragma once

#include <cstdint>

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
