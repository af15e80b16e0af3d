// The initial ramdisk: placed page-aligned as high as the kernel allows, above the kernel.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>

#include "vmm/base/error.hpp"
#include "vmm/base/guest_memory.hpp"

namespace vmm::boot {

/// Where the initrd went.
struct Initrd {
  uint64_t addr = 0;
  uint64_t size = 0;
};

/// Guest-physical [start, end); empty when end <= start.
struct GpaRange {
  uint64_t start = 0;
  uint64_t end = 0;
};

/// The highest 4 KiB-aligned start for `size` bytes that ends at or below `end_max`, starts at or
/// above `lowest` and does not overlap `avoid`; nullopt if there is no such place.
std::optional<uint64_t> place_initrd(uint64_t size, uint64_t lowest, uint64_t end_max, GpaRange avoid = {});

/// Reads the initrd at `path` into guest memory, placed by place_initrd above `kernel_end` and
/// outside `avoid` (Linux boot protocol: "as high as possible" below initrd_addr_max). Too large:
/// "initrd FILE (N bytes) does not fit in guest RAM below X ...".
Result<Initrd> load_initrd(const GuestMemory& memory, const std::filesystem::path& path, uint64_t kernel_end,
                           uint64_t end_max, GpaRange avoid = {});

}  // namespace vmm::boot
