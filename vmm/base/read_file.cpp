#include "vmm/base/read_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "vmm/base/fd.hpp"

namespace vmm {

Result<std::string> read_file(const std::filesystem::path& path, size_t max_bytes, std::string_view what) {
  const std::string name = path.string();
  // Not a FIFO's open, which waits for a writer (a FIFO named clone.json hung `template ls`):
  // opened without waiting, then refused as not a regular file.
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (!fd) return fail("{}: cannot open: {}", name, errno_text(errno));
  return read_file(fd.get(), path, max_bytes, what);
}

Result<std::string> read_file(int fd, const std::filesystem::path& path, size_t max_bytes, std::string_view what) {
  const std::string name = path.string();
  struct stat st {};
  if (::fstat(fd, &st) != 0) return fail("{}: cannot stat: {}", name, errno_text(errno));
  if (!S_ISREG(st.st_mode)) return fail("{}: not a regular file", name);
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    const std::string limit = max_bytes % (1u << 20) == 0 ? fmt::format("{} MiB", max_bytes >> 20)
                              : max_bytes % 1024 == 0     ? fmt::format("{} KiB", max_bytes >> 10)
                                                          : fmt::format("{} bytes", max_bytes);
    return fail("{}: {} bytes is over the {} limit of {}", name, st.st_size, what, limit);
  }
  // One byte more than fstat said, so that a file that grew meanwhile is seen.
  std::string bytes(static_cast<size_t>(st.st_size) + 1, '\0');
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::pread(fd, bytes.data() + done, bytes.size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail("{}: cannot read: {}", name, errno_text(errno));
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  if (done > static_cast<size_t>(st.st_size)) return fail("{}: changed while it was read", name);
  bytes.resize(done);
  return bytes;
}

}  // namespace vmm
