#include "vmm/boot/e820.hpp"

#include <algorithm>

#include "vmm/base/layout.hpp"

namespace vmm::boot {

std::vector<E820Entry> build_e820(const GuestMemory& memory) {
  std::vector<E820Entry> map;
  const auto regions = memory.regions();
  const uint64_t low_end = memory.low_end();
  // Below 1 MiB: conventional memory up to the EBDA, then the reserved EBDA/ROM area (where the
  // ACPI tables live: Linux scans 0xE0000..0xFFFFF for the RSDP, ACPI 6.4 §5.2.5.1).
  const uint64_t conventional_end = std::min(low_end, layout::kEbdaStart);
  map.push_back({.addr = 0, .size = conventional_end, .type = E820Type::Ram});
  if (low_end > layout::kEbdaStart) {
    map.push_back({.addr = layout::kEbdaStart,
                   .size = layout::kHighMemStart - layout::kEbdaStart,
                   .type = E820Type::Reserved});
  }
  if (low_end > layout::kHighMemStart) {
    map.push_back({.addr = layout::kHighMemStart, .size = low_end - layout::kHighMemStart, .type = E820Type::Ram});
  }
  // The PCI ECAM window: Linux uses the MCFG's range only if the firmware reserved it.
  map.push_back({.addr = layout::kPciEcamStart, .size = layout::kPciEcamSize, .type = E820Type::Reserved});
  for (size_t i = 1; i < regions.size(); ++i) {
    map.push_back({.addr = regions[i].gpa, .size = regions[i].size, .type = E820Type::Ram});
  }
  return map;
}

}  // namespace vmm::boot
