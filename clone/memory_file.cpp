#include "clone/memory_file.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "vmm/base/crc32c.hpp"
#include "vmm/base/fd.hpp"
#include "vmm/base/mapping.hpp"

namespace vmm::clone {

namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kChunk = 2ull << 20;

bool page_is_zero(const uint8_t* p) {
  const auto* w = reinterpret_cast<const uint64_t*>(p);
  for (size_t i = 0; i < kPage / 8; i += 8) {
    if (w[i] | w[i + 1] | w[i + 2] | w[i + 3] | w[i + 4] | w[i + 5] | w[i + 6] | w[i + 7]) return false;
  }
  return true;
}

uint32_t add_page(uint32_t crc, uint64_t offset, const uint8_t* page) {
  crc = crc32c(crc, std::span(reinterpret_cast<const uint8_t*>(&offset), sizeof offset));
  return crc32c(crc, std::span(page, kPage));
}

Result<> write_all(int fd, const uint8_t* data, uint64_t len, uint64_t offset, const std::filesystem::path& path) {
  while (len) {
    const ssize_t n = ::pwrite(fd, data, std::min<uint64_t>(len, 1ull << 30), static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return fail("{}: write at {:#x}: {}", path.string(), offset, errno_text(n < 0 ? errno : EIO));
    data += n;
    len -= static_cast<uint64_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return {};
}

}  // namespace

Result<MemoryFileInfo> write_memory_file(const GuestMemory& memory, const std::filesystem::path& path) {
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (!fd) return fail("{}: cannot create: {}", path.string(), errno_text(errno));
  MemoryFileInfo info{.size = memory.size(), .data_bytes = 0, .checksum = 0};
  if (::ftruncate(fd.get(), static_cast<off_t>(info.size)) < 0) return fail("{}: ftruncate: {}", path.string(), errno_text(errno));
  // The regions are consecutive slices of one host mapping: file offset = host offset.
  const uint8_t* base = memory.regions().front().host;
  std::vector<unsigned char> resident(kChunk / kPage);
  for (const auto& region : memory.regions()) {
    for (uint64_t at = 0; at < region.size; at += kChunk) {
      const uint64_t len = std::min(kChunk, region.size - at);
      const uint8_t* chunk = region.host + at;
      // Pages never touched are not resident in an anonymous mapping: skip them unread.
      if (::mincore(const_cast<uint8_t*>(chunk), len, resident.data()) < 0) {
        std::fill(resident.begin(), resident.end(), 1);  // cannot tell: read them
      }
      uint64_t run_start = 0, run_len = 0;
      auto flush = [&]() -> Result<> {
        if (!run_len) return {};
        const uint64_t off = static_cast<uint64_t>(chunk + run_start - base);
        if (auto r = write_all(fd.get(), chunk + run_start, run_len, off, path); !r) return r;
        info.data_bytes += run_len;
        run_len = 0;
        return {};
      };
      for (uint64_t p = 0; p < len; p += kPage) {
        const bool data = (resident[p / kPage] & 1) && !page_is_zero(chunk + p);
        if (!data) {
          if (auto r = flush(); !r) return std::unexpected(r.error());
          continue;
        }
        if (!run_len) run_start = p;
        run_len += kPage;
        info.checksum = add_page(info.checksum, static_cast<uint64_t>(chunk + p - base), chunk + p);
      }
      if (auto r = flush(); !r) return std::unexpected(r.error());
    }
  }
  if (::fsync(fd.get()) < 0) return fail("{}: fsync: {}", path.string(), errno_text(errno));
  return info;
}

Result<MemoryFileInfo> checksum_memory_file(const std::filesystem::path& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return fail("{}: cannot open: {}", path.string(), errno_text(errno));
  struct stat st {};
  if (::fstat(fd.get(), &st) < 0) return fail("{}: stat: {}", path.string(), errno_text(errno));
  MemoryFileInfo info{.size = static_cast<uint64_t>(st.st_size), .data_bytes = 0, .checksum = 0};
  std::vector<uint8_t> buf(kChunk);
  off_t pos = 0;
  while (static_cast<uint64_t>(pos) < info.size) {
    const off_t data = ::lseek(fd.get(), pos, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;  // only a hole is left
      return fail("{}: SEEK_DATA: {}", path.string(), errno_text(errno));
    }
    off_t hole = ::lseek(fd.get(), data, SEEK_HOLE);
    if (hole < 0) return fail("{}: SEEK_HOLE: {}", path.string(), errno_text(errno));
    for (off_t at = data & ~static_cast<off_t>(kPage - 1); at < hole;) {
      const size_t want = static_cast<size_t>(std::min<off_t>(static_cast<off_t>(kChunk), hole - at));
      const ssize_t n = ::pread(fd.get(), buf.data(), want, at);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return fail("{}: read at {:#x}: {}", path.string(), at, errno_text(errno));
      if (n == 0) break;
      const size_t pages = static_cast<size_t>(n) / kPage;
      for (size_t p = 0; p < pages; ++p) {
        const uint8_t* page = buf.data() + p * kPage;
        if (page_is_zero(page)) continue;
        info.data_bytes += kPage;
        info.checksum = add_page(info.checksum, static_cast<uint64_t>(at) + p * kPage, page);
      }
      if (pages == 0) break;  // a partial page at the end of a file that is not page-sized
      at += static_cast<off_t>(pages * kPage);
    }
    pos = hole;
  }
  return info;
}

Result<GuestMemory> map_memory_file(const std::filesystem::path& path, uint64_t size) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return fail("{}: cannot open: {}", path.string(), errno_text(errno));
  struct stat st {};
  if (::fstat(fd.get(), &st) < 0) return fail("{}: stat: {}", path.string(), errno_text(errno));
  if (!S_ISREG(st.st_mode)) return fail("{}: not a regular file", path.string());
  if (static_cast<uint64_t>(st.st_size) != size) {
    return fail("{}: memory file is {} bytes, the guest's RAM is {} bytes (truncated or replaced)", path.string(),
                st.st_size, size);
  }
  auto m = Mapping::file_private(fd.get(), size);
  if (!m) return std::unexpected(m.error().context(path.string()));
  return GuestMemory::from_mapping(std::move(*m));
}

}  // namespace vmm::clone
