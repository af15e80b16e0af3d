// A kernel or initrd file opened for positioned reads: every read is bounds-checked against the
// file size and every error names the file.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "vmm/base/error.hpp"
#include "vmm/base/fd.hpp"
#include "vmm/base/guest_memory.hpp"

namespace vmm::boot {

/// A regular file, read with pread (no mmap: the file may change under us, a read cannot fault).
class ImageFile {
 public:
  /// Opens `path` read-only; refuses directories and other non-regular files.
  static Result<ImageFile> open(const std::filesystem::path& path);

  /// The path as given, for messages.
  const std::string& name() const { return name_; }
  uint64_t size() const { return size_; }

  /// True if [offset, offset+len) lies inside the file (overflow-safe).
  bool contains(uint64_t offset, uint64_t len) const { return offset <= size_ && len <= size_ - offset; }

  /// Reads exactly out.size() bytes at `offset`; "FILE: truncated ..." if the file is shorter.
  Result<> read_at(uint64_t offset, std::span<uint8_t> out, std::string_view what) const;
  /// Reads [offset, offset+len) into a new buffer.
  Result<std::vector<uint8_t>> read_vector(uint64_t offset, uint64_t len, std::string_view what) const;
  /// Copies [offset, offset+len) of the file straight into guest memory at `gpa`.
  Result<> read_into(const GuestMemory& memory, Gpa gpa, uint64_t offset, uint64_t len,
                     std::string_view what) const;

  /// "FILE: message" as an Error.
  template <typename... Args>
  std::unexpected<Error> error(fmt::format_string<Args...> format, Args&&... args) const {
    return std::unexpected(Error(fmt::format("{}: {}", name_, fmt::format(format, std::forward<Args>(args)...))));
  }

 private:
  ImageFile(Fd fd, std::string name, uint64_t size) : fd_(std::move(fd)), name_(std::move(name)), size_(size) {}

  Fd fd_;
  std::string name_;
  uint64_t size_ = 0;
};

}  // namespace vmm::boot
