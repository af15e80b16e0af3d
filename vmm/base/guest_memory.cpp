#include "vmm/base/guest_memory.hpp"

#include "vmm/base/layout.hpp"

namespace vmm {

GuestMemory::GuestMemory(Mapping mapping) : mapping_(std::move(mapping)) {
  const uint64_t total = mapping_.size();
  const uint64_t low = std::min<uint64_t>(total, layout::kMmioHoleStart);
  regions_.push_back({.gpa = 0, .size = low, .host = mapping_.data()});
  if (total > low) {
    regions_.push_back({.gpa = layout::kMmioHoleEnd, .size = total - low, .host = mapping_.data() + low});
  }
}

Result<GuestMemory> GuestMemory::anonymous(uint64_t size) {
  if (size == 0 || size % 4096 != 0) return fail("guest memory size {:#x} is not a positive multiple of 4 KiB", size);
  auto m = Mapping::anonymous(size, /*huge_pages=*/true);
  if (!m) return std::unexpected(m.error().context("allocating guest memory"));
  return GuestMemory(std::move(*m));
}

Result<GuestMemory> GuestMemory::from_mapping(Mapping mapping, std::optional<FileBacking> file) {
  if (mapping.size() == 0 || mapping.size() % 4096 != 0) {
    return fail("guest memory size {:#x} is not a positive multiple of 4 KiB", mapping.size());
  }
  GuestMemory m(std::move(mapping));
  m.file_ = std::move(file);
  return m;
}

Result<> GuestMemory::exit_if_file_shrinks(std::string_view message, int status) {
  if (!file_) return fail("guest memory maps no file");
  auto g = FaultGuard::watch(mapping_.data(), mapping_.size(), file_->path, file_->dev, file_->ino, message, status);
  if (!g) return std::unexpected(g.error());
  guard_ = std::move(*g);
  return {};
}

const MemoryRegion* GuestMemory::find(Gpa gpa, uint64_t len) const {
  for (const auto& r : regions_) {
    // Overflow-safe: gpa >= r.gpa, then offset and len compared against what is left.
    if (gpa.value < r.gpa) continue;
    const uint64_t offset = gpa.value - r.gpa;
    if (offset > r.size) continue;
    if (len > r.size - offset) continue;
    return &r;
  }
  return nullptr;
}

Result<std::span<uint8_t>> GuestMemory::slice(Gpa gpa, uint64_t len) const {
  const MemoryRegion* r = find(gpa, len);
  if (!r) return fail("guest range {:#x}+{:#x} is outside RAM", gpa.value, len);
  return std::span<uint8_t>(r->host + (gpa.value - r->gpa), len);
}

Result<> GuestMemory::read(Gpa gpa, std::span<uint8_t> out) const {
  auto s = slice(gpa, out.size());
  if (!s) return std::unexpected(s.error());
  if (!out.empty()) std::memcpy(out.data(), s->data(), out.size());
  return {};
}

Result<> GuestMemory::write(Gpa gpa, std::span<const uint8_t> in) const {
  auto s = slice(gpa, in.size());
  if (!s) return std::unexpected(s.error());
  if (!in.empty()) std::memcpy(s->data(), in.data(), in.size());
  return {};
}

Result<> GuestMemory::fill_zero(Gpa gpa, uint64_t len) const {
  auto s = slice(gpa, len);
  if (!s) return std::unexpected(s.error());
  if (len) std::memset(s->data(), 0, len);
  return {};
}

}  // namespace vmm
