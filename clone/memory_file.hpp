// The memory file: guest RAM byte for byte as one host mapping holds it (low RAM, then RAM above
// the 32-bit hole), so that a clone maps it MAP_PRIVATE as its RAM. Sparse: pages that are zero or
// were never touched are holes, so its allocated size and the time to write it follow the memory
// the guest touched, not its RAM size.
#pragma once

#include <filesystem>

#include "vmm/base/guest_memory.hpp"

namespace vmm::clone {

struct MemoryFileInfo {
  uint64_t size = 0;           ///< logical size: the guest's RAM
  uint64_t data_bytes = 0;     ///< bytes written (non-zero pages)
  uint32_t checksum = 0;       ///< see memory_checksum()
};

/// Writes `memory` to a new file at `path` (must not exist), skipping pages that were never
/// touched (/proc/self/pagemap; for RAM that maps a file, the file's holes too) and pages that are
/// all zero; fsyncs it.
Result<MemoryFileInfo> write_memory_file(const GuestMemory& memory, const std::filesystem::path& path);

/// Recomputes the checksum of a memory file: CRC-32C over (offset, page) of every non-zero 4 KiB
/// page, in order, reading only its data extents (SEEK_DATA/SEEK_HOLE).
Result<MemoryFileInfo> checksum_memory_file(const std::filesystem::path& path);
/// The same on an open file (`path` for messages).
Result<MemoryFileInfo> checksum_memory_file(int fd, const std::filesystem::path& path);

/// Maps a memory file MAP_PRIVATE as guest RAM of `size` bytes: the file is opened read-only and
/// must be exactly `size` bytes (a shorter file would fault the guest with SIGBUS).
Result<GuestMemory> map_memory_file(const std::filesystem::path& path, uint64_t size);
/// The same on an open file (`path` for messages and the mapping's record).
Result<GuestMemory> map_memory_file(int fd, const std::filesystem::path& path, uint64_t size);

}  // namespace vmm::clone
