#include "vmm/boot/initrd.hpp"

#include "vmm/boot/image_file.hpp"

namespace vmm::boot {

namespace {
constexpr uint64_t kPage = 4096;
}  // namespace

std::optional<uint64_t> place_initrd(uint64_t size, uint64_t lowest, uint64_t end_max, GpaRange avoid) {
  if (lowest > UINT64_MAX - (kPage - 1)) return std::nullopt;
  const uint64_t floor = (lowest + kPage - 1) & ~(kPage - 1);
  if (size > end_max) return std::nullopt;
  uint64_t start = (end_max - size) & ~(kPage - 1);
  if (avoid.end > avoid.start && start < avoid.end && start + size > avoid.start) {
    if (size > avoid.start) return std::nullopt;  // below it, then
    start = (avoid.start - size) & ~(kPage - 1);
  }
  if (start < floor) return std::nullopt;
  return start;
}

Result<Initrd> load_initrd(const GuestMemory& memory, const std::filesystem::path& path, uint64_t kernel_end,
                           uint64_t end_max, GpaRange avoid) {
  auto file = ImageFile::open(path);
  if (!file) return std::unexpected(file.error().context("initrd"));
  const auto start = place_initrd(file->size(), kernel_end, end_max, avoid);
  if (!start) {
    return fail("initrd {} ({} bytes) does not fit in guest RAM below {:#x} (above the kernel, which ends at {:#x}{})",
                file->name(), file->size(), end_max, kernel_end,
                avoid.end > avoid.start ? fmt::format(", and outside [{:#x}, {:#x}), where it runs", avoid.start, avoid.end) : "");
  }
  if (auto r = file->read_into(memory, Gpa(*start), 0, file->size(), "initrd"); !r) {
    return std::unexpected(r.error().context("initrd"));
  }
  return Initrd{.addr = *start, .size = file->size()};
}

}  // namespace vmm::boot
