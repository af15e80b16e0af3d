// The guest's physical memory map, in the e820 form that both the Linux zero page
// (boot_params.e820_table) and the PVH memory map (hvm_memmap_table_entry) carry.
#pragma once

#include <cstdint>
#include <vector>

#include "vmm/base/guest_memory.hpp"

namespace vmm::boot {

/// e820 address range types (ACPI 6.4 §15.1; the same numbers in Xen's hvm_memmap_table_entry).
enum class E820Type : uint32_t {
  Ram = 1,
  Reserved = 2,
  Acpi = 3,  ///< ACPI reclaimable
};

/// One range of the map.
struct E820Entry {
  uint64_t addr = 0;
  uint64_t size = 0;
  E820Type type = E820Type::Ram;
  friend bool operator==(const E820Entry&, const E820Entry&) = default;
};

/// The map for `memory`: RAM [0, EBDA), reserved [EBDA, 1 MiB) (EBDA, ACPI tables, BIOS area), RAM
/// [1 MiB, low end), and RAM from 4 GiB when the memory extends above the MMIO hole.
std::vector<E820Entry> build_e820(const GuestMemory& memory);

}  // namespace vmm::boot
