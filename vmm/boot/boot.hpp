// Boot loaders: put a kernel (PVH ELF, ELF vmlinux or bzImage — detected from the content, never
// the name), an initrd, the command line, the e820 map and the ACPI tables into guest memory, and
// say how the boot vCPU must enter the guest.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include "vmm/base/error.hpp"
#include "vmm/base/guest_memory.hpp"

namespace vmm::boot {

/// How the boot vCPU enters the guest.
enum class EntryMode {
  /// PVH: 32-bit protected mode, paging off, flat segments, EBX = GPA of struct hvm_start_info.
  Pvh32,
  /// Linux 64-bit boot protocol: long mode with identity-mapped page tables, RSI = GPA of
  /// struct boot_params (Documentation/arch/x86/boot.rst, "64-bit Boot Protocol").
  Linux64,
};

/// What to load.
struct BootConfig {
  std::filesystem::path kernel;
  std::optional<std::filesystem::path> initrd;
  std::string cmdline;
  uint32_t vcpus = 1;
};

/// Where and how to start.
struct BootEntry {
  EntryMode mode = EntryMode::Pvh32;
  uint64_t entry = 0;      ///< guest-physical entry point (RIP/EIP)
  uint64_t boot_info = 0;  ///< GPA of hvm_start_info (Pvh32, in RBX) or boot_params (Linux64, in RSI)
};

/// Loads everything into `memory`. Errors name the file and the problem.
Result<BootEntry> load(const GuestMemory& memory, const BootConfig& config);

}  // namespace vmm::boot
