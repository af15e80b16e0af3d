#include "vmm/boot/kernel.hpp"

#include <algorithm>
#include <array>
#include <cstring>

namespace vmm::boot {

Result<KernelFormat> detect_format(const ImageFile& file) {
  std::array<uint8_t, 0x206> head{};
  const uint64_t n = std::min<uint64_t>(file.size(), head.size());
  if (auto r = file.read_at(0, std::span(head.data(), n), "kernel header"); !r) return std::unexpected(r.error());
  if (n >= 4 && std::memcmp(head.data(), "\x7f" "ELF", 4) == 0) return KernelFormat::Elf;
  if (n >= 0x206 && head[0x1fe] == 0x55 && head[0x1ff] == 0xaa && std::memcmp(head.data() + 0x202, "HdrS", 4) == 0) {
    return KernelFormat::BzImage;
  }
  return file.error("not an ELF or bzImage kernel");
}

std::string describe_ram(const GuestMemory& memory) {
  std::string out;
  for (const auto& r : memory.regions()) {
    if (!out.empty()) out += " and ";
    out += fmt::format("[{:#x}, {:#x})", r.gpa, r.end());
  }
  return out;
}

}  // namespace vmm::boot
