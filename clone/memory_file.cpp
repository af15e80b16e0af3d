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
#include "vmm/exit_status.hpp"

namespace vmm::clone {

namespace fs = std::filesystem;

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

/// Writes [data, data + len) at `offset`. The memory file is opened O_DIRECT where the file system
/// allows it (write_memory_file() says why); one that refuses an O_DIRECT write (EINVAL) gets this
/// write, and the rest, through the page cache.
Result<> write_all(int fd, const uint8_t* data, uint64_t len, uint64_t offset, const std::filesystem::path& path) {
  while (len) {
    const ssize_t n = ::pwrite(fd, data, std::min<uint64_t>(len, 1ull << 30), static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EINVAL) {
      const int flags = ::fcntl(fd, F_GETFL);
      if (flags >= 0 && (flags & O_DIRECT) && ::fcntl(fd, F_SETFL, flags & ~O_DIRECT) == 0) continue;
    }
    if (n <= 0) return fail("{}: write at {:#x}: {}", path.string(), offset, errno_text(n < 0 ? errno : EIO));
    data += n;
    len -= static_cast<uint64_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return {};
}

/// Which pages of guest RAM may hold data, so that the rest is skipped unread. /proc/self/pagemap
/// says which pages are mapped (present) or swapped out; a page that is neither was never touched
/// (anonymous RAM: zero) or, in RAM that maps a file privately (a clone's), still reads the file:
/// data where the file has an extent, zero in its holes. (mincore() cannot tell: for a file mapping
/// it reports the page cache, so a template page evicted from it looked untouched and was lost; an
/// anonymous page swapped out looks untouched too.) Whatever cannot be found out is read.
class PageScan {
 public:
  explicit PageScan(const GuestMemory& memory) {
    pagemap_ = Fd(::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC));
    if (const auto& f = memory.file()) {
      // The file the mapping was made from, if it is still the same file.
      Fd fd(::open(f->path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
      struct stat st {};
      if (fd && ::fstat(fd.get(), &st) == 0 && S_ISREG(st.st_mode) && static_cast<uint64_t>(st.st_dev) == f->dev &&
          static_cast<uint64_t>(st.st_ino) == f->ino) {
        file_ = std::move(fd);
      }
      file_backed_ = true;
    }
  }

  /// Marks in `out` (one entry per page) the pages of [host, host + len) that may hold data;
  /// `offset` is the first page's offset in the mapping (and in the file it maps).
  void scan(const uint8_t* host, uint64_t len, uint64_t offset, std::vector<uint8_t>& out) {
    const size_t pages = len / kPage;
    std::fill(out.begin(), out.begin() + static_cast<ptrdiff_t>(pages), 1);
    if (!pagemap_) return;
    entries_.resize(pages);
    const auto at = static_cast<off_t>(reinterpret_cast<uintptr_t>(host) / kPage * sizeof(uint64_t));
    const size_t want = pages * sizeof(uint64_t);
    if (::pread(pagemap_.get(), entries_.data(), want, at) != static_cast<ssize_t>(want)) return;
    constexpr uint64_t kPresent = 1ull << 63, kSwapped = 1ull << 62;
    for (size_t p = 0; p < pages; ++p) out[p] = (entries_[p] & (kPresent | kSwapped)) != 0;
    if (!file_backed_) return;
    // Pages not mapped read the file: data unless the file has a hole there.
    if (!file_) {
      for (size_t p = 0; p < pages; ++p) out[p] = 1;
      return;
    }
    const uint64_t end = offset + len;
    uint64_t pos = offset;
    while (pos < end) {
      const off_t data = ::lseek(file_.get(), static_cast<off_t>(pos), SEEK_DATA);
      if (data < 0 && errno == ENXIO) return;  // holes to the end of the file
      const off_t hole = data < 0 ? -1 : ::lseek(file_.get(), data, SEEK_HOLE);
      if (data < 0 || hole < 0) {  // cannot tell: read what is left
        for (uint64_t p = (pos - offset) / kPage; p < pages; ++p) out[p] = 1;
        return;
      }
      const uint64_t from = std::max<uint64_t>(static_cast<uint64_t>(data), pos) & ~(kPage - 1);
      const uint64_t to = std::min<uint64_t>(static_cast<uint64_t>(hole), end);
      for (uint64_t b = from; b < to; b += kPage) out[(b - offset) / kPage] = 1;
      pos = std::max<uint64_t>(to, pos + kPage);
    }
  }

 private:
  Fd pagemap_;
  Fd file_;
  bool file_backed_ = false;
  std::vector<uint64_t> entries_;
};

}  // namespace

Result<MemoryFileInfo> write_memory_file(const GuestMemory& memory, const std::filesystem::path& path) {
  // O_DIRECT: the guest's pages go from its RAM to the disk, not copied into the page cache first.
  // The copy doubled the memory the guest had dirtied for as long as the template stayed cached,
  // and cost most of a large template's save: 3000 MiB took 9.3 s buffered on a KVM host whose
  // new page-cache pages are slow to fault in, 1.2 s direct. (The fsync at the end is paid either
  // way; clones read the file into the page cache as they touch it.) Runs of whole pages of a
  // page-aligned mapping at page offsets meet O_DIRECT's alignment; a file system without O_DIRECT
  // gets buffered writes (F_SETFL refuses O_DIRECT there, and open() would have refused only once
  // the file was made).
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (!fd) return fail("{}: cannot create: {}", path.string(), errno_text(errno));
  if (const int flags = ::fcntl(fd.get(), F_GETFL); flags >= 0) (void)::fcntl(fd.get(), F_SETFL, flags | O_DIRECT);
  MemoryFileInfo info{.size = memory.size(), .data_bytes = 0, .checksum = 0};
  if (::ftruncate(fd.get(), static_cast<off_t>(info.size)) < 0) return fail("{}: ftruncate: {}", path.string(), errno_text(errno));
  // The regions are consecutive slices of one host mapping: file offset = host offset.
  const uint8_t* base = memory.regions().front().host;
  PageScan scan(memory);
  std::vector<uint8_t> may_hold(kChunk / kPage);
  for (const auto& region : memory.regions()) {
    for (uint64_t at = 0; at < region.size; at += kChunk) {
      const uint64_t len = std::min(kChunk, region.size - at);
      const uint8_t* chunk = region.host + at;
      scan.scan(chunk, len, static_cast<uint64_t>(chunk - base), may_hold);
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
        const bool data = may_hold[p / kPage] && !page_is_zero(chunk + p);
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
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
  if (!fd) return fail("{}: cannot open: {}", path.string(), errno_text(errno));
  return checksum_memory_file(fd.get(), path);
}

Result<MemoryFileInfo> checksum_memory_file(int fd, const std::filesystem::path& path) {
  struct stat st {};
  if (::fstat(fd, &st) < 0) return fail("{}: stat: {}", path.string(), errno_text(errno));
  if (!S_ISREG(st.st_mode)) return fail("{}: not a regular file", path.string());
  MemoryFileInfo info{.size = static_cast<uint64_t>(st.st_size), .data_bytes = 0, .checksum = 0};
  std::vector<uint8_t> buf(kChunk);
  off_t pos = 0;
  while (static_cast<uint64_t>(pos) < info.size) {
    const off_t data = ::lseek(fd, pos, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;  // only a hole is left
      return fail("{}: SEEK_DATA: {}", path.string(), errno_text(errno));
    }
    off_t hole = ::lseek(fd, data, SEEK_HOLE);
    if (hole < 0) return fail("{}: SEEK_HOLE: {}", path.string(), errno_text(errno));
    for (off_t at = data & ~static_cast<off_t>(kPage - 1); at < hole;) {
      const size_t want = static_cast<size_t>(std::min<off_t>(static_cast<off_t>(kChunk), hole - at));
      const ssize_t n = ::pread(fd, buf.data(), want, at);
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
  // Not a FIFO's open, which would wait for a writer; not through a symbolic link out of the template.
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
  if (!fd) return fail("{}: cannot open: {}", path.string(), errno_text(errno));
  return map_memory_file(fd.get(), path, size);
}

Result<GuestMemory> map_memory_file(int fd, const std::filesystem::path& path, uint64_t size) {
  struct stat st {};
  if (::fstat(fd, &st) < 0) return fail("{}: stat: {}", path.string(), errno_text(errno));
  if (!S_ISREG(st.st_mode)) return fail("{}: not a regular file", path.string());
  if (static_cast<uint64_t>(st.st_size) != size) {
    return fail("{}: memory file is {} bytes, the guest's RAM is {} bytes (truncated or replaced)", path.string(),
                st.st_size, size);
  }
  auto m = Mapping::file_private(fd, size);
  if (!m) return std::unexpected(m.error().context(path.string()));
  std::error_code ec;
  const fs::path absolute = fs::absolute(path, ec);
  auto memory = GuestMemory::from_mapping(std::move(*m), FileBacking{.path = ec ? path.string() : absolute.string(),
                                                                     .dev = static_cast<uint64_t>(st.st_dev),
                                                                     .ino = static_cast<uint64_t>(st.st_ino)});
  if (!memory) return memory;
  // A template's files never change; one whose memory file is truncated under its clones takes
  // their memory with it (fault_guard.hpp): each ends with this line, not a bare SIGBUS.
  const std::string message = fmt::format(
      "vmm: error: {}: the template's memory file shrank under the running VM (truncated, or unreadable): its memory is "
      "lost, stopping",
      printable(memory->file()->path));
  if (auto r = memory->exit_if_file_shrinks(message, exit_code::kImage); !r) return std::unexpected(r.error());
  return memory;
}

}  // namespace vmm::clone
