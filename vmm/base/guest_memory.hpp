// Guest RAM: one host mapping presented as one or two guest-physical regions (RAM above the
// 32-bit MMIO hole moves to 4 GiB). Every access is bounds- and overflow-checked.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "vmm/base/error.hpp"
#include "vmm/base/fault_guard.hpp"
#include "vmm/base/mapping.hpp"

namespace vmm {

/// A guest-physical address (strong type: never mixed up with host pointers or offsets).
struct Gpa {
  uint64_t value = 0;
  constexpr Gpa() = default;
  constexpr explicit Gpa(uint64_t v) : value(v) {}
  friend constexpr auto operator<=>(Gpa, Gpa) = default;
};

/// One contiguous range of guest RAM and where it lives in this process.
struct MemoryRegion {
  uint64_t gpa = 0;
  uint64_t size = 0;
  uint8_t* host = nullptr;
  uint64_t end() const { return gpa + size; }
};

/// The file a MAP_PRIVATE guest RAM mapping reads where the guest has not written (a clone's
/// template memory file, from offset 0), named by path and identified by device and inode, so that
/// whoever reads the RAM back can tell the file's holes without reading them.
struct FileBacking {
  std::string path;
  uint64_t dev = 0, ino = 0;
};

/// Guest RAM. Not copyable; the regions' host pointers stay valid for its lifetime.
class GuestMemory {
 public:
  /// Anonymous private memory with THP advice, `size` bytes of RAM (a multiple of 4 KiB).
  static Result<GuestMemory> anonymous(uint64_t size);
  /// RAM backed by an existing mapping (e.g. a template's memory file mapped MAP_PRIVATE, with the
  /// file it maps in `file`; nothing for anonymous memory).
  static Result<GuestMemory> from_mapping(Mapping mapping, std::optional<FileBacking> file = std::nullopt);

  /// The file this RAM maps privately, or nothing (anonymous memory).
  const std::optional<FileBacking>& file() const { return file_; }
  /// For RAM that maps a file: if the file shrinks under it, the process ends with `message` and
  /// `status` at the first touch of a page it lost, by the VMM or the guest (fault_guard.hpp).
  Result<> exit_if_file_shrinks(std::string_view message, int status);

  GuestMemory(GuestMemory&&) noexcept = default;
  GuestMemory& operator=(GuestMemory&&) noexcept = default;

  std::span<const MemoryRegion> regions() const { return regions_; }
  /// Total bytes of RAM.
  uint64_t size() const { return mapping_.size(); }
  /// Highest guest-physical address + 1 below the MMIO hole (the "low" RAM end).
  uint64_t low_end() const { return regions_.front().end(); }

  /// True if [gpa, gpa+len) lies inside one RAM region (len 0: gpa inside or at a region's end).
  bool contains(Gpa gpa, uint64_t len) const { return find(gpa, len) != nullptr; }
  /// Host view of [gpa, gpa+len), or an error naming the range.
  Result<std::span<uint8_t>> slice(Gpa gpa, uint64_t len) const;

  Result<> read(Gpa gpa, std::span<uint8_t> out) const;
  Result<> write(Gpa gpa, std::span<const uint8_t> in) const;
  /// Writes `len` zero bytes at gpa.
  Result<> fill_zero(Gpa gpa, uint64_t len) const;

  template <typename T>
    requires std::is_trivially_copyable_v<T>
  Result<T> read_obj(Gpa gpa) const {
    T value;
    auto r = read(gpa, std::span(reinterpret_cast<uint8_t*>(&value), sizeof(T)));
    if (!r) return std::unexpected(r.error());
    return value;
  }
  template <typename T>
    requires std::is_trivially_copyable_v<T>
  Result<> write_obj(Gpa gpa, const T& value) const {
    return write(gpa, std::span(reinterpret_cast<const uint8_t*>(&value), sizeof(T)));
  }

  /// Leaves the RAM mapped when this goes (Mapping::leak): I/O abandoned in flight writes into it.
  void leak() { mapping_.leak(); }

 private:
  explicit GuestMemory(Mapping mapping);
  const MemoryRegion* find(Gpa gpa, uint64_t len) const;

  Mapping mapping_;
  std::vector<MemoryRegion> regions_;
  std::optional<FileBacking> file_;
  FaultGuard guard_;  // after mapping_: given back before it is unmapped
};

}  // namespace vmm
